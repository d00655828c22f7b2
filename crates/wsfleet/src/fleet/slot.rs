//! The supervisor of one slot, and the task that runs each connection.
//!
//! A slot runs one connection at a time in its own task (two, briefly, while
//! rotating make-before-break). The supervisor awaits that task's join
//! handle, so a panic in user code ends that connection only; it then waits
//! out the slot's backoff and the fleet-wide restart intensity, paces its
//! dial with the fleet's connect rate, and connects again.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;
use wsfleet_proto::{CloseCode, Message};

use super::backoff::Jitter;
use super::budget::ConnBudget;
use super::inbox::{Inbox, Receiver};
use super::intensity::Verdict;
use super::reason::DisconnectReason;
use super::stats::{ConnRecord, ConnState};
use super::{ConnId, EventKind, Shared, SlotId, SlotShared};
use crate::connect::Target;
use crate::{Connection, Error};

/// Messages sent but not yet seen written, per connection: with the
/// outbound byte limit, bounds what can be handed back when a connection dies.
const MAX_INFLIGHT: usize = 1024;

/// How often a message refused for lack of budget (or room) is retried while
/// nothing else wakes its connection: budget freed by another connection
/// sends no signal here.
const HELD_RETRY: Duration = Duration::from_millis(20);

/// A timer that exists only while a message is held, so an idle
/// connection's task carries a pointer, not a whole timer.
struct HeldRetry(Option<Pin<Box<tokio::time::Sleep>>>);

impl HeldRetry {
    fn new(held: bool) -> Self {
        Self(held.then(|| Box::pin(tokio::time::sleep(HELD_RETRY))))
    }
}

impl Future for HeldRetry {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.0 {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

/// A task aborted when its handle is dropped, so nothing outlives its owner.
struct Task<T>(JoinHandle<T>);

impl<T> Future for Task<T> {
    type Output = Result<T, tokio::task::JoinError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why and how a connection task should stop.
struct Drain {
    reason: DisconnectReason,
    /// Where to move messages still waiting in its inbox.
    forward: Option<Arc<Inbox>>,
}

/// What a connection task leaves behind.
struct TaskEnd {
    reason: DisconnectReason,
    undelivered: Vec<Message>,
}

/// A connection task the supervisor watches.
struct Running {
    id: ConnId,
    record: Arc<ConnRecord>,
    task: Task<TaskEnd>,
    drain: Option<oneshot::Sender<Drain>>,
    inbox: Arc<Inbox>,
    since: Instant,
}

impl Running {
    fn drain(&mut self, reason: DisconnectReason, forward: Option<Arc<Inbox>>) {
        if let Some(tx) = self.drain.take() {
            let _ = tx.send(Drain { reason, forward });
        }
    }
}

/// A connection ready to serve, with the live count of its buffer bytes.
struct Opened {
    /// Boxed: an `Opened` passes through several futures (dial, rotation,
    /// start) whose state would each reserve room for a whole connection.
    conn: Box<Connection>,
    protocol: Option<String>,
    budget: Arc<ConnBudget>,
}

/// What ended the wait for a replacement connection (a transient value on
/// the stack, so the large variant costs nothing).
#[allow(clippy::large_enum_variant)]
enum Rotation {
    Opened(Result<Opened, DisconnectReason>),
    OldEnded(Result<TaskEnd, tokio::task::JoinError>),
    Shutdown,
}

enum Outcome {
    Shutdown,
    Ended { lived: Duration },
}

pub(crate) async fn run_slot(
    shared: Arc<Shared>,
    index: usize,
    target: Target,
    shutdown: watch::Receiver<bool>,
) {
    let slot = &shared.slots[index];
    let span = tracing::info_span!("slot", slot = %slot.id, url = %slot.url);
    supervise(&shared, slot, target, shutdown)
        .instrument(span)
        .await;
    slot.record().set_state(ConnState::Closed);
    *slot.inbox.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

async fn supervise(
    shared: &Arc<Shared>,
    slot: &SlotShared,
    target: Target,
    mut shutdown: watch::Receiver<bool>,
) {
    let settings = &shared.settings;
    let mut jitter = match settings.seed {
        Some(seed) => {
            Jitter::seeded(seed ^ u64::from(slot.id.0).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        }
        None => Jitter::from_os(),
    };
    let mut failures: u32 = 0;
    let mut wait = Duration::ZERO;
    let mut first = true;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if !wait.is_zero() {
            slot.record().set_state(ConnState::Backoff);
            if !sleep_or_shutdown(Instant::now() + wait, &mut shutdown).await {
                return;
            }
        }
        if !first {
            if !Box::pin(restart_allowed(shared, slot, &mut shutdown)).await {
                return;
            }
            shared.reconnects.fetch_add(1, Ordering::Relaxed);
            slot.record().count_reconnect();
        }
        first = false;
        slot.record().set_state(ConnState::Connecting);
        let turn = shared.pacer.reserve(Instant::now());
        if !sleep_or_shutdown(turn, &mut shutdown).await {
            return;
        }
        let id = shared.next_conn_id();
        let opened = tokio::select! {
            r = Box::pin(open(shared, &target)) => r,
            _ = shutdown.changed() => return,
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
                    .delay(failures, jitter.unit())
                    .max(retry_after.unwrap_or_default());
                failures = failures.saturating_add(1);
            }
            Ok(opened) => {
                match Box::pin(serve(
                    shared,
                    slot,
                    &target,
                    id,
                    opened,
                    &mut shutdown,
                    &mut jitter,
                ))
                .await
                {
                    Outcome::Shutdown => return,
                    Outcome::Ended { lived } => {
                        if lived >= settings.healthy_after {
                            failures = 0;
                        }
                        wait = settings.backoff.delay(failures, jitter.unit());
                        failures = failures.saturating_add(1);
                    }
                }
            }
        }
    }
}

/// Waits out a fleet-wide pause if the restart intensity is exceeded.
async fn restart_allowed(
    shared: &Shared,
    slot: &SlotShared,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
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
                if !sleep_or_shutdown(until, shutdown).await {
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
                if !sleep_or_shutdown(until, shutdown).await {
                    return false;
                }
            }
        }
    }
}

/// Sleeps until `at`; false if the fleet shuts down first.
async fn sleep_or_shutdown(at: Instant, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep_until(at) => true,
        _ = shutdown.changed() => false,
    }
}

/// Connects and runs the on-connect hook in a task of its own, so a panic
/// in the hook is caught here as that connection's failure.
async fn open(shared: &Arc<Shared>, target: &Target) -> Result<Opened, DisconnectReason> {
    let mut config = shared.settings.connection.clone();
    let budget = shared.budget.member();
    config.budget = Some(budget.clone());
    config.gate = Some(budget.clone());
    let hook = shared.settings.on_connect.clone();
    let target = target.clone();
    let started = Instant::now();
    let task = Task(tokio::spawn(async move {
        let mut conn = Box::new(
            Connection::connect_target(target, &config)
                .await
                .map_err(|e| DisconnectReason::from_connect(&e))?,
        );
        if let Some(hook) = hook {
            let limit = config.deadlines.handshake;
            match tokio::time::timeout(limit, hook(&mut conn)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(DisconnectReason::HookFailed(e)),
                Err(_) => {
                    return Err(DisconnectReason::HookFailed(format!(
                        "did not finish within {limit:?}"
                    )));
                }
            }
        }
        let protocol = conn.protocol().map(str::to_owned);
        Ok(Opened {
            conn,
            protocol,
            budget,
        })
    }));
    let result = task.await;
    if matches!(result, Ok(Ok(_))) {
        shared.counters.handshake(started.elapsed());
    }
    match result {
        Ok(result) => result,
        Err(e) if e.is_panic() => Err(DisconnectReason::Panicked(panic_message(e.into_panic()))),
        Err(_) => Err(DisconnectReason::Shutdown),
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Starts the task of a ready connection and makes it the slot's current one.
async fn start(shared: &Arc<Shared>, slot: &SlotShared, id: ConnId, opened: Opened) -> Running {
    let Opened {
        conn,
        protocol,
        budget,
    } = opened;
    let record = Arc::new(ConnRecord::successor(&slot.record(), id, budget));
    let inbox = Arc::new(Inbox::new(shared.settings.inbox_capacity));
    let (drain_tx, drain_rx) = oneshot::channel();
    let span = tracing::info_span!("conn", conn = %id);
    let task = Task(tokio::spawn(
        conn_task(
            shared.clone(),
            slot.id,
            id,
            conn,
            Receiver::new(inbox.clone()),
            drain_rx,
            record.clone(),
        )
        .instrument(span),
    ));
    *slot.current.lock().unwrap_or_else(|p| p.into_inner()) = record.clone();
    *slot.inbox.lock().unwrap_or_else(|p| p.into_inner()) = Some((id, inbox.clone()));
    tracing::debug!(conn = %id, "connection ready");
    shared
        .emit(id, slot.id, EventKind::Connected { protocol })
        .await;
    Running {
        id,
        record,
        task,
        drain: Some(drain_tx),
        inbox,
        since: Instant::now(),
    }
}

/// Reports how a connection task ended: undelivered messages, then the
/// disconnect, with one log line.
async fn report(
    shared: &Shared,
    slot: SlotId,
    id: ConnId,
    record: &ConnRecord,
    end: Result<TaskEnd, tokio::task::JoinError>,
) {
    let end = match end {
        Ok(end) => end,
        Err(e) if e.is_panic() => TaskEnd {
            reason: DisconnectReason::Panicked(panic_message(e.into_panic())),
            undelivered: Vec::new(),
        },
        Err(_) => TaskEnd {
            reason: DisconnectReason::Shutdown,
            undelivered: Vec::new(),
        },
    };
    if end.reason.is_failure() {
        tracing::warn!(conn = %id, reason = %end.reason, undelivered = end.undelivered.len(), "connection dropped");
        record.set_error(end.reason.to_string());
    } else {
        tracing::debug!(conn = %id, reason = %end.reason, "connection closed");
    }
    for message in end.undelivered {
        shared.emit(id, slot, EventKind::Undelivered(message)).await;
    }
    shared
        .emit(id, slot, EventKind::Disconnected(end.reason))
        .await;
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    shared: &Arc<Shared>,
    slot: &SlotShared,
    target: &Target,
    id: ConnId,
    opened: Opened,
    shutdown: &mut watch::Receiver<bool>,
    jitter: &mut Jitter,
) -> Outcome {
    let settings = &shared.settings;
    let mut current = Box::pin(start(shared, slot, id, opened)).await;
    let mut rotate_at = next_rotation(settings.max_lifetime, settings.lifetime_jitter, jitter);
    let mut rotation_failures: u32 = 0;
    loop {
        tokio::select! {
            end = &mut current.task => {
                *slot.inbox.lock().unwrap_or_else(|p| p.into_inner()) = None;
                current.record.set_state(ConnState::Backoff);
                Box::pin(report(shared, slot.id, current.id, &current.record, end)).await;
                return Outcome::Ended { lived: current.since.elapsed() };
            }
            _ = sleep_until_opt(rotate_at) => {
                let rotated = Box::pin(rotate(
                    shared,
                    slot,
                    target,
                    &mut current,
                    shutdown,
                    jitter,
                    &mut rotation_failures,
                    &mut rotate_at,
                ))
                .await;
                match rotated {
                    None => {}
                    Some(Outcome::Shutdown) => {
                        return Box::pin(drain_for_shutdown(shared, slot, current)).await;
                    }
                    Some(ended) => return ended,
                }
            }
            _ = shutdown.changed() => return Box::pin(drain_for_shutdown(shared, slot, current)).await,
        }
    }
}

/// Replaces the current connection, make before break: the old one serves
/// until the new one is ready, then drains in a task of its own. `Some` when
/// the slot's serving ends here (the old connection died while dialling, or
/// shutdown: the caller drains). Boxed by the caller: rotation is rare, and
/// its state would otherwise sit in every idle slot's future.
#[allow(clippy::too_many_arguments)]
async fn rotate(
    shared: &Arc<Shared>,
    slot: &SlotShared,
    target: &Target,
    current: &mut Running,
    shutdown: &mut watch::Receiver<bool>,
    jitter: &mut Jitter,
    rotation_failures: &mut u32,
    rotate_at: &mut Option<Instant>,
) -> Option<Outcome> {
    let settings = &shared.settings;
    // Make before break: the old connection serves until the new one is ready.
    let turn = shared.pacer.reserve(Instant::now());
    let new_id = shared.next_conn_id();
    // The old connection may die while the new one dials: watch it.
    let opened = tokio::select! {
        r = async {
            tokio::time::sleep_until(turn).await;
            Box::pin(open(shared, target)).await
        } => Rotation::Opened(r),
        end = &mut current.task => Rotation::OldEnded(end),
        _ = shutdown.changed() => Rotation::Shutdown,
    };
    let opened = match opened {
        Rotation::Opened(r) => Some(r),
        Rotation::OldEnded(end) => {
            *slot.inbox.lock().unwrap_or_else(|p| p.into_inner()) = None;
            current.record.set_state(ConnState::Backoff);
            Box::pin(report(shared, slot.id, current.id, &current.record, end)).await;
            return Some(Outcome::Ended {
                lived: current.since.elapsed(),
            });
        }
        Rotation::Shutdown => None,
    };
    match opened {
        None => return Some(Outcome::Shutdown),
        Some(Ok(opened)) => {
            let fresh = Box::pin(start(shared, slot, new_id, opened)).await;
            let mut old = std::mem::replace(current, fresh);
            old.record.set_state(ConnState::Draining);
            shared
                .draining
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(old.record.clone());
            old.drain(DisconnectReason::Rotated, Some(current.inbox.clone()));
            shared.counters.rotations.fetch_add(1, Ordering::Relaxed);
            let watcher_shared = shared.clone();
            let slot_id = slot.id;
            let watcher = tokio::spawn(async move {
                let end = (&mut old.task).await;
                Box::pin(report(&watcher_shared, slot_id, old.id, &old.record, end)).await;
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
            *rotation_failures = 0;
            *rotate_at = next_rotation(settings.max_lifetime, settings.lifetime_jitter, jitter);
        }
        Some(Err(reason)) => {
            // The old connection keeps serving; try again after a backoff.
            tracing::warn!(conn = %new_id, %reason, "replacement connection failed; keeping the current one");
            shared
                .emit(new_id, slot.id, EventKind::Disconnected(reason))
                .await;
            let wait = settings
                .backoff
                .delay(*rotation_failures, jitter.unit())
                .max(Duration::from_millis(10));
            *rotation_failures = rotation_failures.saturating_add(1);
            *rotate_at = Some(Instant::now() + wait);
        }
    }
    None
}

async fn drain_for_shutdown(shared: &Shared, slot: &SlotShared, mut current: Running) -> Outcome {
    *slot.inbox.lock().unwrap_or_else(|p| p.into_inner()) = None;
    current.drain(DisconnectReason::Shutdown, None);
    let limit = shared.settings.connection.deadlines.close + Duration::from_millis(500);
    match tokio::time::timeout(limit, &mut current.task).await {
        Ok(end) => Box::pin(report(shared, slot.id, current.id, &current.record, end)).await,
        Err(_) => tracing::warn!(conn = %current.id, "connection did not close in time; aborted"),
    }
    current.record.set_state(ConnState::Closed);
    Outcome::Shutdown
}

fn next_rotation(lifetime: Option<Duration>, share: f64, jitter: &mut Jitter) -> Option<Instant> {
    lifetime.map(|l| {
        // Uniform in [l·(1 − share), l·(1 + share)].
        let factor = 1.0 + share * (2.0 * jitter.unit() - 1.0);
        Instant::now() + l.mul_f64(factor)
    })
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs one ready connection: delivers its messages as events (waiting for
/// the consumer: backpressure), writes what the fleet sends it, and drains
/// on request with a close handshake that still delivers what was in flight.
async fn conn_task(
    shared: Arc<Shared>,
    slot: SlotId,
    id: ConnId,
    mut conn: Box<Connection>,
    inbox: Receiver,
    mut drain: oneshot::Receiver<Drain>,
    record: Arc<ConnRecord>,
) -> TaskEnd {
    let mut inflight: VecDeque<(u64, Message)> = VecDeque::new();
    let mut held: Option<Message> = None;
    let mut undelivered = Vec::new();
    let mut draining: Option<DisconnectReason> = None;
    let mut inbox_open = true;
    let budget = record.budget();
    let mut evicted = false;
    let reason = loop {
        let (_, written) = conn.outbound_offsets();
        while inflight.front().is_some_and(|(end, _)| *end <= written) {
            inflight.pop_front();
        }
        if let Some(m) = held.take() {
            // A message refused for lack of room: retry now that there may be some.
            match conn.try_send(m.clone()) {
                Ok(()) => inflight.push_back((conn.outbound_offsets().0, m)),
                Err(Error::Send(e)) => held = Some(e.into_message()),
                Err(e) => break DisconnectReason::from_error(&e),
            }
        }
        record.update(&conn.stats(), &shared.counters);
        let can_take = inbox_open
            && draining.is_none()
            && held.is_none()
            && conn.has_room()
            && inflight.len() < MAX_INFLIGHT;
        tokio::select! {
            biased;
            command = &mut drain, if draining.is_none() => {
                let command = command.unwrap_or(Drain { reason: DisconnectReason::Shutdown, forward: None });
                inbox.close();
                while let Some(m) = inbox.try_recv() {
                    match &command.forward {
                        Some(next) => {
                            if let Err(back) = next.send(m).await {
                                undelivered.push(back);
                            }
                        }
                        None => undelivered.push(m),
                    }
                }
                inbox_open = false;
                record.set_state(ConnState::Draining);
                let why = if command.reason == DisconnectReason::Rotated { "rotation" } else { "shutdown" };
                if let Err(e) = conn.begin_close(CloseCode::GOING_AWAY, why) {
                    break DisconnectReason::from_error(&e);
                }
                draining = Some(command.reason);
            }
            message = inbox.recv(), if can_take => match message {
                Some(m) => match conn.try_send(m.clone()) {
                    Ok(()) => inflight.push_back((conn.outbound_offsets().0, m)),
                    Err(Error::Send(e)) => held = Some(e.into_message()),
                    Err(e) => {
                        undelivered.push(m);
                        break DisconnectReason::from_error(&e);
                    }
                },
                None => inbox_open = false,
            },
            // The retry itself is at the top of the loop.
            () = HeldRetry::new(held.is_some()), if held.is_some() => {}
            // Another connection needs the memory this one holds: close
            // with 1009; `recv` finishes the close and reports it.
            () = async { match &budget { Some(b) => b.evicted().await, None => std::future::pending().await } }, if !evicted => {
                evicted = true;
                conn.fail_for_budget(0);
            }
            event = conn.recv() => match event {
                Some(Ok(m)) => {
                    if !shared.deliver(id, slot, m).await && draining.is_none() {
                        tracing::warn!(conn = %id, "the event consumer fell behind: closing this connection");
                        record.set_state(ConnState::Draining);
                        if let Err(e) = conn.begin_close(CloseCode::POLICY_VIOLATION, "slow consumer") {
                            break DisconnectReason::from_error(&e);
                        }
                        draining = Some(DisconnectReason::SlowConsumer);
                    }
                }
                None => {
                    break draining.clone().unwrap_or_else(|| {
                        let frame = conn.close_frame();
                        DisconnectReason::ClosedByPeer {
                            code: frame.map(|f| f.code),
                            reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                        }
                    });
                }
                Some(Err(e)) => break draining.clone().unwrap_or_else(|| DisconnectReason::from_error(&e)),
            },
        }
    };
    let (_, written) = conn.outbound_offsets();
    undelivered.extend(
        inflight
            .into_iter()
            .filter(|(end, _)| *end > written)
            .map(|(_, m)| m),
    );
    undelivered.extend(held);
    inbox.close();
    while let Some(m) = inbox.try_recv() {
        undelivered.push(m);
    }
    record.update(&conn.stats(), &shared.counters);
    TaskEnd {
        reason,
        undelivered,
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    #[tokio::test]
    async fn task_futures_stay_small() {
        let fleet = super::super::Fleet::builder("ws://127.0.0.1:9/")
            .connections(1)
            .spawn()
            .unwrap();
        let shared = fleet.shared.clone();
        let (_tx, rx) = watch::channel(false);
        let target = Target::parse("ws://127.0.0.1:9/").unwrap();
        let slot_future = run_slot(shared.clone(), 0, target.clone(), rx);
        let open_future = open(&shared, &target);
        let (slot_size, open_size) = (size_of_val(&slot_future), size_of_val(&open_future));
        eprintln!("run_slot {slot_size} B, open {open_size} B");
        // Rare paths (dialling, reporting, draining) are boxed: the future
        // every slot holds all its life stays small.
        assert!(slot_size <= 2048, "run_slot future is {slot_size} B");
    }
}
