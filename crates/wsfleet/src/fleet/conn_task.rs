//! The task that drives one ready connection of the fleet: its messages
//! become events, what the fleet sends it is written, and it drains on
//! request with a close handshake that still delivers what was in flight.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use wsfleet_proto::{CloseCode, Message};

use super::extras::{Extra, Extras};
use super::heartbeat::Due;
use super::inbox::{Inbox, Next, Receiver};
use super::intake;
use super::reason::DisconnectReason;
use super::room;
use super::send_gate::{Admit, SendGate};
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
    /// The slot's index in `shared.slots` (32 bits, as a slot id: a word
    /// less in every connection's task).
    pub(super) index: u32,
    pub(super) id: ConnId,
    pub(super) conn: Box<Connection>,
    /// What the fleet sends this connection, and the supervisor's request
    /// to close (rotation or shutdown).
    pub(super) inbox: Receiver,
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
            record,
        } = self;
        let mut inflight: VecDeque<(u64, Message)> = VecDeque::new();
        let mut held: Option<Message> = None;
        let mut undelivered = Vec::new();
        let mut draining: Option<DisconnectReason> = None;
        let mut inbox_open = true;
        let budget = record.budget();
        let mut evicted = false;
        // The stale watch, the heartbeat and the stream checks: boxed, and
        // only when configured (a connection without them carries one
        // pointer and polls nothing for them).
        let mut extras = Extras::new(&shared, budget.clone());
        // The send rates: boxed, and only when set.
        let mut gate = SendGate::new(&shared);
        let reason = loop {
            let (_, written) = conn.outbound_offsets();
            while inflight.front().is_some_and(|(end, _)| *end <= written) {
                inflight.pop_front();
            }
            room::give_back(&mut inflight);
            if let Some(m) = held.take() {
                // A message refused for lack of room: retry now that there may be some.
                match conn.try_send(m.clone()) {
                    Ok(()) => room::push_back(&mut inflight, (conn.outbound_offsets().0, m)),
                    Err(Error::Send(e)) => held = Some(e.into_message()),
                    Err(e) => break DisconnectReason::from_error(&e),
                }
            }
            record.update(&conn.stats(), &shared.counters);
            let can_take = inbox_open
                && draining.is_none()
                && held.is_none()
                && conn.has_room()
                && inflight.len() < MAX_INFLIGHT
                && !SendGate::blocked(&gate);
            tokio::select! {
                biased;
                // The drain request first, then a message to write.
                next = std::future::poll_fn(|cx| inbox.poll_next(cx, can_take)), if draining.is_none() => match next {
                    Next::Drain(command) => {
                        let command = *command;
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
                        let why = match command.reason {
                            DisconnectReason::Rotated => "rotation",
                            DisconnectReason::ScaledDown => "scaled down",
                            DisconnectReason::Paused => "paused",
                            DisconnectReason::Dropped => "dropped",
                            DisconnectReason::Released => "released",
                            _ => "shutdown",
                        };
                        if let Err(e) = conn.begin_close(CloseCode::GOING_AWAY, why) {
                            break DisconnectReason::from_error(&e);
                        }
                        draining = Some(command.reason);
                    }
                    // Over the rate: it waits at the inbox's front.
                    Next::Message(m) if SendGate::admit(&mut gate, &shared, tokio::time::Instant::now()) == Admit::Wait => inbox.put_back(m),
                    Next::Message(m) => match conn.try_send(m.clone()) {
                        Ok(()) => room::push_back(&mut inflight, (conn.outbound_offsets().0, m)),
                        Err(Error::Send(e)) => held = Some(e.into_message()),
                        Err(e) => {
                            undelivered.push(m);
                            break DisconnectReason::from_error(&e);
                        }
                    },
                    Next::Closed => inbox_open = false,
                },
                // A token is due: the loop takes the waiting message again.
                () = std::future::poll_fn(|cx| SendGate::poll_wake(&mut gate, cx)), if SendGate::blocked(&gate) => {}
                // The retry itself is at the top of the loop.
                () = HeldRetry::new(held.is_some()), if held.is_some() => {}
                // Another connection needs the memory this one holds: close
                // with 1009; `recv` finishes the close and reports it.
                () = std::future::poll_fn(|cx| match &budget { Some(b) => b.poll_evicted(cx), None => Poll::Pending }), if !evicted => {
                    evicted = true;
                    conn.fail_for_budget(0);
                }
                extra = std::future::poll_fn(|cx| Extras::poll(&mut extras, cx)), if draining.is_none() => match extra {
                    // No data for too long: replace it (1001), as for rotation.
                    Extra::Stale(after) => {
                        tracing::warn!(conn = %id, ?after, "no data message: replacing this stale connection");
                        record.set_state(ConnState::Draining);
                        if let Err(e) = conn.begin_close(CloseCode::GOING_AWAY, "stale: no data") {
                            break DisconnectReason::from_error(&e);
                        }
                        draining = Some(DisconnectReason::Stale { after });
                    }
                    Extra::Heartbeat(Due::Send) => {
                        if let Some((x, beat)) = extras.as_deref_mut().and_then(|x| x.heartbeat_message().map(|m| (x, m))) {
                            match conn.try_send(beat) {
                                // No room now: the next interval tries again.
                                Ok(()) => {
                                    x.heartbeat_sent();
                                    SendGate::charge(&mut gate, &shared, tokio::time::Instant::now());
                                }
                                Err(Error::Send(_)) => x.heartbeat_sent(),
                                Err(e) => break DisconnectReason::from_error(&e),
                            }
                        }
                    }
                    Extra::Heartbeat(Due::TimedOut(after)) => {
                        tracing::warn!(conn = %id, ?after, "application heartbeat unanswered: replacing this connection");
                        record.set_state(ConnState::Draining);
                        if let Err(e) = conn.begin_close(CloseCode::POLICY_VIOLATION, "heartbeat timeout") {
                            break DisconnectReason::from_error(&e);
                        }
                        draining = Some(DisconnectReason::HeartbeatTimeout { after });
                    }
                    // Streams of this connection's subscriptions without
                    // data: renew them here (end, start).
                    Extra::StreamsCheck => {
                        if let Some(x) = extras.as_deref_mut() {
                            x.renew_stale(&shared, &shared.slots[index as usize], &inbox);
                        }
                    }
                },
                event = conn.recv() => match event {
                    Some(Ok(m)) => {
                        if let Some(x) = extras.as_deref_mut() {
                            if x.is_heartbeat_answer(&m, &record, &shared.counters) {
                                // Not data: the stale watch does not see it.
                                continue;
                            }
                        }
                        // The stream checks' future is boxed: a connection
                        // without them keeps the small one it had.
                        // (The slot is looked up, not kept across the wait:
                        // a word less in every connection's task.)
                        // One lookup a message (the table locates a slot
                        // by arithmetic); copies, so nothing borrowed waits.
                        let (with_streams, slot_id) = {
                            let slot = &shared.slots[index as usize];
                            (slot.streams.is_some(), slot.id)
                        };
                        let intake = if with_streams {
                            Box::pin(intake::take(&shared, &shared.slots[index as usize], &record, id, &inbox, m)).await
                        } else {
                            intake::Intake {
                                gave_up: !shared.deliver(&record, id, slot_id, m).await,
                                reconnect: None,
                            }
                        };
                        if let Some(gap) = intake.reconnect {
                            if draining.is_none() {
                                record.set_state(ConnState::Draining);
                                if let Err(e) = conn.begin_close(CloseCode::GOING_AWAY, "sequence gap") {
                                    break DisconnectReason::from_error(&e);
                                }
                                draining = Some(*gap);
                            }
                        }
                        let delivered = !intake.gave_up;
                        // After the delivery: time waiting for the consumer
                        // is ours, not the upstream's silence.
                        if let Some(x) = extras.as_deref_mut() {
                            x.on_data();
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
        SendGate::finish(&mut gate, &shared.counters);
        TaskEnd {
            reason,
            undelivered,
        }
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;
    use crate::ConnectionConfig;
    use crate::fleet::{ConnId, Fleet, SlotId};

    /// Every ready connection's task holds this future all its life: the
    /// rare paths (stream checks, their end, the watches) are boxed so it
    /// stays the size it had before them.
    #[tokio::test]
    async fn the_task_of_a_ready_connection_stays_small() {
        let server = crate::serve::EchoServer::bind("127.0.0.1:0", ConnectionConfig::default())
            .await
            .expect("bind");
        let fleet = Fleet::builder(server.url()).connections(1).spawn().unwrap();
        let conn = Connection::connect(&server.url(), &ConnectionConfig::default())
            .await
            .expect("connect");
        let task = ConnTask {
            shared: fleet.shared.clone(),
            index: 0,
            id: ConnId(1),
            conn: Box::new(conn),
            inbox: Receiver::new(Arc::new(Inbox::new(4))),
            record: Arc::new(ConnRecord::new(SlotId(0), Arc::from("ws://x/"))),
        };
        let size = size_of_val(&task.run());
        eprintln!(
            "ConnTask::run future: {size} B; DisconnectReason {} B, Intake {} B",
            size_of::<DisconnectReason>(),
            size_of::<intake::Intake>()
        );
        // Measured: 896 B before the stream features, 920 B with them
        // (one pointer and one branch for the stale watch, heartbeat and
        // stream checks, which took the stale watch's own branch).
        assert!(size <= 960, "ConnTask::run future is {size} B");
    }
}
