//! [`PhaseTimer`]: one timer for the phases of a connect, re-armed at each
//! phase's deadline.
//!
//! `tokio::time::timeout` per phase makes, registers, fires or clears, and
//! drops a timer entry for each: the TCP attempt and the handshake were two
//! of the three timers of a loopback connect. A connect runs one phase at a
//! time, so one timer serves them all; every phase keeps its own deadline.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// A connect's timer, pinned where the connect starts and lent to each
/// phase in turn.
pub(crate) struct PhaseTimer<'a>(Pin<&'a mut Sleep>);

impl<'a> PhaseTimer<'a> {
    /// Lends `sleep` (any deadline: each phase sets its own).
    pub(crate) fn new(sleep: Pin<&'a mut Sleep>) -> Self {
        Self(sleep)
    }

    /// Runs `fut` for at most `limit` from now: its output, or `None` if
    /// the time ran out first. As `tokio::time::timeout`, `fut` is polled
    /// before the timer, so one that is ready passes even with a zero
    /// `limit`, and a `limit` past the clock's range never ends it.
    pub(crate) async fn within<F: Future>(&mut self, limit: Duration, fut: F) -> Option<F::Output> {
        let Some(deadline) = Instant::now().checked_add(limit) else {
            return Some(fut.await);
        };
        self.0.as_mut().reset(deadline);
        let mut fut = pin!(fut);
        let timer = &mut self.0;
        poll_fn(|cx| {
            if let Poll::Ready(output) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(output));
            }
            timer.as_mut().poll(cx).map(|()| None)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::{pending, ready};

    #[tokio::test(start_paused = true)]
    async fn each_phase_gets_its_own_limit() {
        let mut sleep = pin!(tokio::time::sleep(Duration::ZERO));
        let mut timer = PhaseTimer::new(sleep.as_mut());
        let started = Instant::now();
        assert_eq!(
            timer.within(Duration::from_secs(3), pending::<()>()).await,
            None
        );
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        // Re-armed from now, not from the first phase's start.
        assert_eq!(
            timer.within(Duration::from_secs(5), pending::<()>()).await,
            None
        );
        assert_eq!(started.elapsed(), Duration::from_secs(8));
        let later = async {
            tokio::time::sleep(Duration::from_secs(4)).await;
            7
        };
        assert_eq!(timer.within(Duration::from_secs(5), later).await, Some(7));
        assert_eq!(started.elapsed(), Duration::from_secs(12));
    }

    #[tokio::test(start_paused = true)]
    async fn a_ready_phase_passes_a_zero_limit_and_a_huge_one_never_ends() {
        let mut sleep = pin!(tokio::time::sleep(Duration::ZERO));
        let mut timer = PhaseTimer::new(sleep.as_mut());
        assert_eq!(timer.within(Duration::ZERO, ready(1)).await, Some(1));
        assert_eq!(timer.within(Duration::ZERO, pending::<()>()).await, None);
        let slow = async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            2
        };
        assert_eq!(timer.within(Duration::MAX, slow).await, Some(2));
    }
}
