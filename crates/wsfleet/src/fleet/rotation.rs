//! Rotation, make before break: after its lifetime (± jitter) a slot's
//! connection is replaced by a new one, which must be ready before the old
//! one stops serving; the old one then drains in a task of its own.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::builder::Settings;
use super::conn_task::TaskEnd;
use super::reason::DisconnectReason;
use super::running::{Opened, Running, open, start};
use super::stats::ConnState;
use super::supervisor::{Outcome, Supervisor};
use super::{EventKind, Shared};
use crate::rng::SmallRng;

/// The least wait before trying again to open a replacement: full jitter
/// may make the backoff's delay zero, and the old connection serves anyway.
const MIN_REPLACEMENT_RETRY: Duration = Duration::from_millis(10);

/// When the current connection is next replaced, and how many replacements
/// in a row failed to open.
pub(super) struct RotationSchedule {
    at: Option<Instant>,
    failures: u32,
}

impl RotationSchedule {
    /// The first rotation of a new connection (never without a lifetime).
    pub(super) fn new(settings: &Settings, jitter: &mut SmallRng) -> Self {
        Self {
            at: next_rotation(settings.max_lifetime, settings.lifetime_jitter, jitter),
            failures: 0,
        }
    }

    /// Resolves when a rotation is due; never without a lifetime.
    pub(super) async fn due(&self) {
        match self.at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }
}

/// What ended the wait for a replacement connection (a transient value on
/// the stack, so the large variant costs nothing).
#[allow(clippy::large_enum_variant)]
enum Rotation {
    Opened(Result<Box<Opened>, DisconnectReason>),
    OldEnded(Result<TaskEnd, tokio::task::JoinError>),
    Stopped,
}

impl Supervisor<'_> {
    /// Replaces the current connection, make before break: the old one serves
    /// until the new one is ready, then drains in a task of its own. `Some`
    /// when the slot's serving ends here (the old connection died while
    /// dialling, or the slot stops: the caller drains). Boxed by the caller:
    /// rotation is rare, and its state would otherwise sit in every idle
    /// slot's future.
    pub(super) async fn rotate(
        &mut self,
        current: &mut Running,
        schedule: &mut RotationSchedule,
    ) -> Option<Outcome> {
        let (shared, target) = (self.shared, self.target);
        let settings = &shared.settings;
        // Make before break: the old connection serves until the new one is ready.
        let turn = shared.pacer.reserve(Instant::now());
        let new_id = shared.next_conn_id();
        // The old connection may die while the new one dials: watch it.
        let opened = tokio::select! {
            r = async {
                tokio::time::sleep_until(turn).await;
                Box::pin(open(shared, self.slot, target)).await
            } => Rotation::Opened(r),
            end = &mut current.task => Rotation::OldEnded(end),
            _ = self.orders.stopped() => Rotation::Stopped,
        };
        let opened = match opened {
            Rotation::Opened(r) => r,
            Rotation::OldEnded(end) => return Some(Box::pin(self.ended(current, end)).await),
            Rotation::Stopped => return Some(Outcome::Stopped),
        };
        match opened {
            Ok(opened) => {
                let fresh = Box::pin(start(shared, self.slot, new_id, opened)).await;
                let old = std::mem::replace(current, fresh);
                Box::pin(self.overlap(&old)).await;
                retire(shared, old, current.inbox.clone());
                schedule.failures = 0;
                schedule.at = next_rotation(
                    settings.max_lifetime,
                    settings.lifetime_jitter,
                    &mut self.jitter,
                );
            }
            Err(reason) => {
                // The old connection keeps serving; try again after a backoff.
                tracing::warn!(conn = %new_id, %reason, "replacement connection failed; keeping the current one");
                shared
                    .emit(new_id, self.slot.id, EventKind::Disconnected(reason))
                    .await;
                let wait = settings
                    .backoff
                    .delay(schedule.failures, self.jitter.unit())
                    .max(MIN_REPLACEMENT_RETRY);
                schedule.failures = schedule.failures.saturating_add(1);
                schedule.at = Some(Instant::now() + wait);
            }
        }
        None
    }
}

impl Supervisor<'_> {
    /// With sequence numbers configured, keeps the old connection `old`
    /// serving until the new one has caught up with every stream it owns
    /// (the slot's tracker holds the new one's messages that run ahead, and
    /// drops the overlap's duplicates), at most
    /// [`Streams::max_overlap`](super::Streams::max_overlap) or until
    /// shutdown, or until the old one ends (killed meanwhile: it is retired
    /// at once, and its report hands its streams to the new one). Without
    /// them, the two overlap only for the close handshake.
    async fn overlap(&mut self, old: &Running) {
        let (Some(streams), Some(cell)) =
            (&self.shared.settings.streams, self.slot.streams.as_deref())
        else {
            return;
        };
        if streams.seq_pointer().is_none() {
            return;
        }
        let until = Instant::now() + streams.overlap();
        // Polled, not awaited: `changed()` here would consume the shutdown
        // notice the serving loop waits for.
        while cell.tracker().owned_by(old.id) > 0
            && !old.task.is_finished()
            && Instant::now() < until
            && self.orders.stop().is_none()
        {
            tokio::time::sleep_until((Instant::now() + OVERLAP_POLL).min(until)).await;
        }
    }
}

/// How often a rotation looks whether the new connection has caught up.
const OVERLAP_POLL: Duration = Duration::from_millis(10);

/// Breaks the replaced connection: it drains (close handshake, its inbox
/// forwarded to `successor`) in a task that `Fleet::shutdown` awaits, and
/// shows in the stats as draining until it has ended.
fn retire(shared: &Arc<Shared>, mut old: Running, successor: Arc<super::inbox::Inbox>) {
    old.record.set_state(ConnState::Draining);
    shared
        .draining
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(old.record.clone());
    old.drain(DisconnectReason::Rotated, Some(successor));
    shared.counters.rotations.fetch_add(1, Ordering::Relaxed);
    let watcher_shared = shared.clone();
    let watcher = tokio::spawn(async move {
        let end = (&mut old.task).await;
        Box::pin(old.report(&watcher_shared, end)).await;
        watcher_shared
            .draining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|r| !Arc::ptr_eq(r, &old.record));
    });
    let mut tasks = shared
        .draining_tasks
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    tasks.retain(|t| !t.is_finished());
    tasks.push(watcher);
}

fn next_rotation(lifetime: Option<Duration>, share: f64, jitter: &mut SmallRng) -> Option<Instant> {
    lifetime.map(|l| {
        // Uniform in [l·(1 − share), l·(1 + share)].
        let factor = 1.0 + share * (2.0 * jitter.unit() - 1.0);
        Instant::now() + l.mul_f64(factor)
    })
}
