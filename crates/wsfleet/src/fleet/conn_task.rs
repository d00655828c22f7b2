//! The task that drives one ready connection of the fleet: its messages
//! become events, what the fleet sends it is written, and it drains on
//! request with a close handshake that still delivers what was in flight.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::oneshot;
use wsfleet_proto::{CloseCode, Message};

use super::heartbeat::{self, Due, HeartbeatWatch};
use super::inbox::{Inbox, Receiver};
use super::intake;
use super::reason::DisconnectReason;
use super::stale::{StaleWatch, stale};
use super::stats::{ConnRecord, ConnState};
use super::{ConnId, Shared};
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

/// Why and how a connection task should stop.
pub(super) struct Drain {
    pub(super) reason: DisconnectReason,
    /// Where to move messages still waiting in its inbox.
    pub(super) forward: Option<Arc<Inbox>>,
}

/// What a connection task leaves behind.
pub(super) struct TaskEnd {
    pub(super) reason: DisconnectReason,
    pub(super) undelivered: Vec<Message>,
}

/// One ready connection and what its task talks to.
pub(super) struct ConnTask {
    pub(super) shared: Arc<Shared>,
    /// The slot's index in `shared.slots`.
    pub(super) index: usize,
    pub(super) id: ConnId,
    pub(super) conn: Box<Connection>,
    /// What the fleet sends this connection.
    pub(super) inbox: Receiver,
    /// The supervisor's request to close (rotation or shutdown).
    pub(super) drain: oneshot::Receiver<Drain>,
    pub(super) record: Arc<ConnRecord>,
}

impl ConnTask {
    /// Runs the connection until it ends: delivers its messages as events
    /// (waiting for the consumer: backpressure), writes what the fleet sends
    /// it, and drains on request.
    pub(super) async fn run(self) -> TaskEnd {
        let Self {
            shared,
            index,
            id,
            mut conn,
            inbox,
            mut drain,
            record,
        } = self;
        let mut inflight: VecDeque<(u64, Message)> = VecDeque::new();
        let mut held: Option<Message> = None;
        let mut undelivered = Vec::new();
        let mut draining: Option<DisconnectReason> = None;
        let mut inbox_open = true;
        let budget = record.budget();
        let mut evicted = false;
        let mut watch = StaleWatch::new(shared.settings.stale_after);
        let slot_shared = &shared.slots[index];
        let mut streams_watch = StreamsWatch::new(&shared);
        let heartbeat = shared.settings.heartbeat.clone();
        let mut heartbeat_watch = heartbeat
            .as_deref()
            .map(|h| HeartbeatWatch::new(h, tokio::time::Instant::now()));
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
                    let why = if matches!(command.reason, DisconnectReason::Rotated) { "rotation" } else { "shutdown" };
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
                // No data for too long: replace it (1001), as for rotation.
                after = stale(&mut watch, || budget.as_ref().is_some_and(|b| b.is_paused())), if draining.is_none() => {
                    tracing::warn!(conn = %id, ?after, "no data message: replacing this stale connection");
                    record.set_state(ConnState::Draining);
                    if let Err(e) = conn.begin_close(CloseCode::GOING_AWAY, "stale: no data") {
                        break DisconnectReason::from_error(&e);
                    }
                    draining = Some(DisconnectReason::Stale { after });
                }
                due = heartbeat::due(&mut heartbeat_watch, || budget.as_ref().is_some_and(|b| b.is_paused())), if draining.is_none() => match due {
                    Due::Send => {
                        if let (Some(h), Some(w)) = (&heartbeat, &mut heartbeat_watch) {
                            match conn.try_send(h.message().clone()) {
                                // No room now: the next interval tries again.
                                Ok(()) | Err(Error::Send(_)) => w.sent(tokio::time::Instant::now()),
                                Err(e) => break DisconnectReason::from_error(&e),
                            }
                        }
                    }
                    Due::TimedOut(after) => {
                        tracing::warn!(conn = %id, ?after, "application heartbeat unanswered: replacing this connection");
                        record.set_state(ConnState::Draining);
                        if let Err(e) = conn.begin_close(CloseCode::POLICY_VIOLATION, "heartbeat timeout") {
                            break DisconnectReason::from_error(&e);
                        }
                        draining = Some(DisconnectReason::HeartbeatTimeout { after });
                    }
                },
                // Streams of this connection's subscriptions without data:
                // renew them here (end, start).
                () = streams_watch.tick() => {
                    streams_watch.renew_stale(&shared, slot_shared, &inbox);
                }
                event = conn.recv() => match event {
                    Some(Ok(m)) => {
                        if let (Some(h), Some(w)) = (&heartbeat, &mut heartbeat_watch) {
                            if h.is_answer(m.payload()) {
                                if let Some(rtt) = w.answered(tokio::time::Instant::now()) {
                                    record.heartbeat_rtt(rtt, &shared.counters);
                                }
                                if !h.delivers_answers() {
                                    // Not data: the stale watch does not see it.
                                    continue;
                                }
                            }
                        }
                        let intake = intake::take(&shared, slot_shared, &record, id, &inbox, m).await;
                        if let Some((stream, missed)) = intake.reconnect {
                            if draining.is_none() {
                                record.set_state(ConnState::Draining);
                                if let Err(e) = conn.begin_close(CloseCode::GOING_AWAY, "sequence gap") {
                                    break DisconnectReason::from_error(&e);
                                }
                                draining = Some(DisconnectReason::SequenceGap { stream, missed });
                            }
                        }
                        let delivered = !intake.gave_up;
                        // After the delivery: time waiting for the consumer
                        // is ours, not the upstream's silence.
                        if let Some(w) = &mut watch {
                            w.on_data();
                        }
                        if !delivered && draining.is_none() {
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
        intake::ended(&shared, slot_shared, &record, id).await;
        TaskEnd {
            reason,
            undelivered,
        }
    }
}

/// The per-stream staleness check of one connection (see
/// [`Streams::stale_after`](super::Streams::stale_after)): every quarter of
/// the threshold, the streams of the subscriptions its slot carries that had
/// no message for the threshold — since the connection started or the
/// stream's last renewal — are renewed. Absent without a threshold or
/// subscriptions.
struct StreamsWatch {
    after: Duration,
    started: tokio::time::Instant,
    ticker: Option<tokio::time::Interval>,
    /// When each stream was last renewed on this connection.
    renewed: std::collections::HashMap<Arc<str>, tokio::time::Instant>,
}

impl StreamsWatch {
    fn new(shared: &Shared) -> Self {
        let after = shared
            .settings
            .streams
            .as_ref()
            .and_then(|s| s.stream_stale_after());
        let ticker = after.map(|after| {
            let every = (after / 4).max(Duration::from_millis(50));
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        Self {
            after: after.unwrap_or(Duration::MAX),
            started: tokio::time::Instant::now(),
            ticker,
            renewed: std::collections::HashMap::new(),
        }
    }

    async fn tick(&mut self) {
        match &mut self.ticker {
            Some(t) => {
                t.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    fn renew_stale(&mut self, shared: &Shared, slot: &super::SlotShared, inbox: &Inbox) {
        let keys: Vec<Arc<str>> = shared
            .subscriptions()
            .carried(slot.index)
            .iter()
            .map(|s| s.shared_key().clone())
            .collect();
        if keys.is_empty() {
            return;
        }
        let now = tokio::time::Instant::now();
        let stale = slot.streams().stale(
            &keys,
            |k| {
                self.renewed
                    .get(k)
                    .copied()
                    .unwrap_or(self.started)
                    .max(self.started)
            },
            now,
            self.after,
        );
        for key in stale {
            intake::renew(shared, slot, inbox, &key, "stale stream");
            self.renewed.insert(key, now);
        }
    }
}
