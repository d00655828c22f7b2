//! The supervisor of one slot.
//!
//! A slot runs one connection at a time in its own task (two, briefly, while
//! rotating make-before-break: see `rotation`). The supervisor awaits that
//! task's join handle, so a panic in user code ends that connection only; it
//! then waits out the slot's backoff and the fleet-wide restart intensity,
//! paces its dial with the fleet's connect rate, and connects again.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use super::conn_task::TaskEnd;
use super::intensity::Verdict;
use super::orders::{Request, SlotOrders, Stop, Wake};
use super::reason::DisconnectReason;
use super::rotation::RotationSchedule;
use super::running::{Opened, Running, open, start};
use super::stats::ConnState;
use super::{ConnId, EventKind, Shared, SlotShared};
use crate::connect::Target;
use crate::rng::{GAMMA, SmallRng};

/// What a slot's supervisor works with: the fleet, its slot and target, and
/// what lives as long as the slot (the shutdown signal, the jitter).
pub(super) struct Supervisor<'a> {
    pub(super) shared: &'a Arc<Shared>,
    pub(super) slot: &'a SlotShared,
    pub(super) target: &'a Target,
    /// Stop, scale-down, pause, and this slot's drop or rotate requests.
    pub(super) orders: SlotOrders,
    /// Backoff and lifetime jitter.
    pub(super) jitter: SmallRng,
}

/// How serving a connection ended.
pub(super) enum Outcome {
    /// The slot stops (shutdown, scaled down, paused).
    Stopped,
    Ended {
        lived: Duration,
    },
}

pub(crate) async fn run_slot(
    shared: Arc<Shared>,
    index: usize,
    target: Target,
    orders: SlotOrders,
) {
    let slot = &shared.slots[index];
    let span = tracing::info_span!("slot", slot = %slot.id, url = %slot.url);
    let jitter = match shared.settings.seed {
        Some(seed) => SmallRng::seeded(seed ^ u64::from(slot.id.0).wrapping_mul(GAMMA)),
        None => SmallRng::from_os(),
    };
    let mut supervisor = Supervisor {
        shared: &shared,
        slot,
        target: &target,
        orders,
        jitter,
    };
    supervisor.supervise().instrument(span).await;
    slot.record().set_state(ConnState::Closed);
    shared.close_inbox(slot);
}

impl Supervisor<'_> {
    /// Connects, serves, backs off and connects again, until shutdown.
    async fn supervise(&mut self) {
        let (shared, slot) = (self.shared, self.slot);
        let settings = &shared.settings;
        let mut failures: u32 = 0;
        let mut wait = Duration::ZERO;
        let mut first = true;
        loop {
            if self.orders.stop().is_some() {
                return;
            }
            if !wait.is_zero() {
                slot.record().set_state(ConnState::Backoff);
                if !sleep_or_stop(Instant::now() + wait, &mut self.orders).await {
                    return;
                }
            }
            if !first {
                if !Box::pin(self.restart_allowed()).await {
                    return;
                }
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                slot.record().count_reconnect();
            }
            first = false;
            slot.record().set_state(ConnState::Connecting);
            let turn = shared.pacer.reserve(Instant::now());
            if !sleep_or_stop(turn, &mut self.orders).await {
                return;
            }
            let id = shared.next_conn_id();
            let opened = tokio::select! {
                r = Box::pin(open(shared, slot, self.target)) => r,
                _ = self.orders.stopped() => return,
            };
            match opened {
                Err(reason) => {
                    tracing::warn!(conn = %id, %reason, "connect failed");
                    slot.record().set_error(reason.to_string());
                    let retry_after = match &reason {
                        DisconnectReason::ConnectFailed { retry_after, .. } => *retry_after,
                        _ => None,
                    };
                    shared
                        .emit(id, slot.id, EventKind::Disconnected(reason))
                        .await;
                    wait = settings
                        .backoff
                        .delay(failures, self.jitter.unit())
                        .max(retry_after.unwrap_or_default());
                    failures = failures.saturating_add(1);
                }
                Ok(opened) => match Box::pin(self.serve(id, opened)).await {
                    Outcome::Stopped => return,
                    Outcome::Ended { lived } => {
                        if lived >= settings.healthy_after {
                            failures = 0;
                        }
                        wait = settings.backoff.delay(failures, self.jitter.unit());
                        failures = failures.saturating_add(1);
                    }
                },
            }
        }
    }

    /// Waits out a fleet-wide pause if the restart intensity is exceeded;
    /// false if the fleet shuts down first.
    async fn restart_allowed(&mut self) -> bool {
        let (shared, slot) = (self.shared, self.slot);
        loop {
            let verdict = shared
                .intensity
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(Instant::now());
            match verdict {
                Verdict::Allowed => return true,
                Verdict::PausedUntil(until) => {
                    slot.record().set_state(ConnState::Backoff);
                    if !sleep_or_stop(until, &mut self.orders).await {
                        return false;
                    }
                }
                Verdict::Tripped(until) => {
                    let paused_for = until.saturating_duration_since(Instant::now());
                    tracing::warn!(
                        ?paused_for,
                        "restart intensity exceeded: the whole fleet pauses reconnecting"
                    );
                    shared
                        .emit(
                            ConnId(0),
                            slot.id,
                            EventKind::RestartIntensityTripped { paused_for },
                        )
                        .await;
                    slot.record().set_state(ConnState::Backoff);
                    if !sleep_or_stop(until, &mut self.orders).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Serves a ready connection until it ends or the fleet shuts down,
    /// replacing it whenever its lifetime is up.
    async fn serve(&mut self, id: ConnId, opened: Box<Opened>) -> Outcome {
        let mut current = Box::pin(start(self.shared, self.slot, id, opened)).await;
        let mut rotation = RotationSchedule::new(&self.shared.settings, &mut self.jitter);
        loop {
            tokio::select! {
                end = &mut current.task => return Box::pin(self.ended(&current, end)).await,
                _ = rotation.due() => {
                    if let Some(ended) = Box::pin(self.rotate(&mut current, &mut rotation)).await {
                        return self.after_rotation(current, ended).await;
                    }
                }
                wake = self.orders.wake(&self.slot.requests) => match wake {
                    Wake::Stop(stop) => return Box::pin(self.drain_to_stop(current, stop)).await,
                    Wake::Request(Request::Drop) => {
                        // Its end (the task's branch above) reconnects the slot.
                        self.shared.close_inbox(self.slot);
                        current.drain(DisconnectReason::Dropped, None);
                    }
                    Wake::Request(Request::Rotate) => {
                        if let Some(ended) = Box::pin(self.rotate(&mut current, &mut rotation)).await {
                            return self.after_rotation(current, ended).await;
                        }
                    }
                },
            }
        }
    }

    /// A rotation ended the serving: the slot stops (drain the current
    /// connection), or the old connection had ended (already reported).
    async fn after_rotation(&mut self, current: Running, ended: Outcome) -> Outcome {
        match ended {
            Outcome::Stopped => {
                let stop = self.orders.stop().unwrap_or(Stop::Shutdown);
                Box::pin(self.drain_to_stop(current, stop)).await
            }
            ended => ended,
        }
    }

    /// The current connection's task ended: the slot has no ready
    /// connection until the next one; reports how it ended.
    pub(super) async fn ended(
        &self,
        current: &Running,
        end: Result<TaskEnd, tokio::task::JoinError>,
    ) -> Outcome {
        self.shared.close_inbox(self.slot);
        current.record.set_state(ConnState::Backoff);
        current.report(self.shared, end).await;
        Outcome::Ended {
            lived: current.since.elapsed(),
        }
    }
}

/// Sleeps until `at`; false if the slot must stop first.
pub(super) async fn sleep_or_stop(at: Instant, orders: &mut SlotOrders) -> bool {
    if orders.stop().is_some() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep_until(at) => true,
        _ = orders.stopped() => false,
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;
    use crate::Connection;

    #[tokio::test]
    async fn task_futures_stay_small() {
        let fleet = super::super::Fleet::builder("ws://127.0.0.1:9/")
            .connections(1)
            .spawn()
            .unwrap();
        let shared = fleet.shared.clone();
        let rx = SlotOrders::new(shared.orders.subscribe(), 0);
        let target = Target::parse("ws://127.0.0.1:9/").unwrap();
        let slot_future = run_slot(shared.clone(), 0, target.clone(), rx);
        let open_future = open(&shared, &shared.slots[0], &target);
        let connect_future =
            Connection::connect_target(target.clone(), &shared.settings.connection);
        let (slot_size, open_size, connect_size) = (
            size_of_val(&slot_future),
            size_of_val(&open_future),
            size_of_val(&connect_future),
        );
        eprintln!("run_slot {slot_size} B, open {open_size} B, connect {connect_size} B");
        // Rare paths (dialling, reporting, draining) are boxed: the future
        // every slot holds all its life stays small.
        assert!(slot_size <= 2048, "run_slot future is {slot_size} B");
        // The dial runs in a task of its own (a panic in the hook is caught
        // there): waiting for it costs less than one connection, not the
        // whole dial's state.
        assert!(
            open_size < size_of::<Connection>() && open_size < connect_size,
            "open future is {open_size} B; a connection is {} B, its dial {connect_size} B",
            size_of::<Connection>()
        );
    }
}
