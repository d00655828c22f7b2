//! A slot stopping (the fleet shuts down, is scaled down below it or
//! paused, or a coordinated fleet releases it): its current connection closes with a close handshake (1001),
//! delivering what was in flight, within the close deadline plus a grace; a
//! connection still open then is aborted. Messages still queued for it come
//! back as `Undelivered`. A slot whose lease was lost is the exception: its
//! connection is aborted at once (see `abort_for_lost_lease`).

use std::time::Duration;

use super::DisconnectReason;
use super::conn_task::TaskEnd;
use super::orders::Stop;
use super::running::Running;
use super::stats::ConnState;
use super::supervisor::{Outcome, Supervisor};

/// Beyond the close deadline, what a draining connection's task gets to
/// report its end before it is aborted.
pub(super) const DRAIN_GRACE: Duration = Duration::from_millis(500);

impl Supervisor<'_> {
    /// Drains `current` because the slot stops. Boxed by the caller: it
    /// runs once per slot task, at the end.
    pub(super) async fn drain_to_stop(&self, mut current: Running, stop: Stop) -> Outcome {
        self.shared.close_inbox(self.slot);
        let reason = match stop {
            Stop::Shutdown => DisconnectReason::Shutdown,
            Stop::ScaledDown => DisconnectReason::ScaledDown,
            Stop::Paused => DisconnectReason::Paused,
            Stop::Released => DisconnectReason::Released,
            Stop::LeaseLost => return Box::pin(self.abort_for_lost_lease(current)).await,
        };
        current.drain(reason, None);
        let limit = self.shared.settings.connection.deadlines.close + DRAIN_GRACE;
        match tokio::time::timeout(limit, &mut current.task).await {
            Ok(end) => Box::pin(current.report(self.shared, end)).await,
            Err(_) => {
                tracing::warn!(conn = %current.id, "connection did not close in time; aborted")
            }
        }
        current.record.set_state(ConnState::Closed);
        Outcome::Stopped
    }

    /// Ends `current` at once, without a close handshake: its slot's lease
    /// is lost and another process may serve the slot next. Returns once
    /// the connection's task (and its socket) is gone; what waited in its
    /// inbox comes back as `Undelivered`.
    async fn abort_for_lost_lease(&self, mut current: Running) -> Outcome {
        current.task.abort();
        let _ = (&mut current.task).await;
        current.inbox.close();
        let undelivered = std::iter::from_fn(|| current.inbox.try_recv()).collect();
        let end = TaskEnd {
            reason: DisconnectReason::LeaseLost,
            undelivered,
        };
        current.report(self.shared, Ok(end)).await;
        current.record.set_state(ConnState::Closed);
        Outcome::Stopped
    }
}
