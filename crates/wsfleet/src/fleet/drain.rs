//! A slot stopping (the fleet shuts down, is scaled down below it or
//! paused): its current connection closes with a close handshake (1001),
//! delivering what was in flight, within the close deadline plus a grace; a
//! connection still open then is aborted. Messages still queued for it come
//! back as `Undelivered`.

use std::time::Duration;

use super::DisconnectReason;
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
        *self.slot.inbox.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let reason = match stop {
            Stop::Shutdown => DisconnectReason::Shutdown,
            Stop::ScaledDown => DisconnectReason::ScaledDown,
            Stop::Paused => DisconnectReason::Paused,
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
}
