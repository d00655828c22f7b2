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

use super::inbox::{Inbox, Receiver};
use super::reason::DisconnectReason;
use super::stale::{StaleWatch, stale};
use super::stats::{ConnRecord, ConnState};
use super::{ConnId, Shared, SlotId};
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
    pub(super) slot: SlotId,
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
            slot,
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
                event = conn.recv() => match event {
                    Some(Ok(m)) => {
                        let delivered = shared.deliver(&record, id, slot, m).await;
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
        TaskEnd {
            reason,
            undelivered,
        }
    }
}
