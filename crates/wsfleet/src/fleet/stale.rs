//! The stale-stream watchdog: a connection that receives no data message
//! for [`FleetBuilder::stale_after`](super::FleetBuilder::stale_after) is
//! replaced. Pings and pongs do not count: an upstream can answer them long
//! after its feed stopped.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// One connection's watchdog. A data message costs a clock read; the timer
/// is re-armed only when it fires early (data came meanwhile).
pub(super) struct StaleWatch {
    after: Duration,
    last_data: Instant,
    timer: Pin<Box<Sleep>>,
}

impl StaleWatch {
    /// A watchdog started now, or none when `after` is unset.
    pub(super) fn new(after: Option<Duration>) -> Option<Self> {
        let after = after?;
        let now = Instant::now();
        Some(Self {
            after,
            last_data: now,
            timer: Box::pin(tokio::time::sleep_until(now + after)),
        })
    }

    /// A data message arrived.
    pub(super) fn on_data(&mut self) {
        self.last_data = Instant::now();
    }

    /// Ready with `after` once `after` passed without data. While `paused`
    /// (we do not read, so silence means nothing) the clock starts again.
    /// Registers the waker for the next deadline when not ready.
    pub(super) fn poll_stale(
        &mut self,
        cx: &mut Context<'_>,
        paused: impl Fn() -> bool,
    ) -> Poll<Duration> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            if paused() {
                self.last_data = now;
            }
            let due = self.last_data + self.after;
            if due <= now {
                // Fired: the next poll (if any) waits a whole threshold.
                self.last_data = now;
                self.timer.as_mut().reset(now + self.after);
                return Poll::Ready(self.after);
            }
            self.timer.as_mut().reset(due);
        }
    }
}

/// Resolves when `watch` finds its connection stale (tests).
#[cfg(test)]
async fn stale(watch: &mut Option<StaleWatch>, paused: impl Fn() -> bool) -> Duration {
    match watch {
        Some(w) => std::future::poll_fn(|cx| w.poll_stale(cx, &paused)).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fires_after_the_last_data_message_not_the_first_timer() {
        let mut watch = StaleWatch::new(Some(Duration::from_secs(10)));
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(6)).await;
        watch.as_mut().expect("on").on_data();
        let after = stale(&mut watch, || false).await;
        assert_eq!(after, Duration::from_secs(10));
        assert_eq!(started.elapsed(), Duration::from_secs(16));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_restarts_the_clock() {
        let mut watch = StaleWatch::new(Some(Duration::from_secs(10)));
        let started = Instant::now();
        let paused = std::cell::Cell::new(true);
        // Paused at the first deadline: not stale; 10 s more from there.
        let after = stale(&mut watch, || paused.replace(false)).await;
        assert_eq!(after, Duration::from_secs(10));
        assert_eq!(started.elapsed(), Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_threshold_it_never_fires() {
        let mut watch = StaleWatch::new(None);
        let never =
            tokio::time::timeout(Duration::from_secs(3600), stale(&mut watch, || false)).await;
        assert!(never.is_err());
    }
}
