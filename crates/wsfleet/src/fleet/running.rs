//! One connection of a slot from dial to end: opened (connected, its
//! on-connect hook run, its slot's subscriptions replayed) in a task of its
//! own, started as the slot's current connection in another, and reported
//! when that task ends.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use super::budget::ConnBudget;
use super::conn_task::{ConnTask, Drain, TaskEnd};
use super::inbox::{Inbox, Receiver};
use super::reason::DisconnectReason;
use super::stats::ConnRecord;
use super::subscriptions::Subscription;
use super::{ConnId, EventKind, Shared, SlotId, SlotShared};
use crate::Connection;
use crate::connect::Target;

/// A task aborted when its handle is dropped, so nothing outlives its owner.
pub(super) struct Task<T>(JoinHandle<T>);

impl<T> Future for Task<T> {
    type Output = Result<T, tokio::task::JoinError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Task<T> {
    /// Whether the task has ended (its output waits to be taken).
    pub(super) fn is_finished(&self) -> bool {
        self.0.is_finished()
    }

    /// Aborts the task (its future is dropped at its next poll; awaiting
    /// the task then returns once it was).
    pub(super) fn abort(&self) {
        self.0.abort();
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A connection ready to serve, with the live count of its buffer bytes.
pub(super) struct Opened {
    /// Boxed: an `Opened` passes through several futures (dial, rotation,
    /// start) whose state would each reserve room for a whole connection.
    conn: Box<Connection>,
    protocol: Option<String>,
    budget: Arc<ConnBudget>,
    /// The subscriptions it replayed while opening.
    replayed: Vec<Arc<Subscription>>,
}

/// A connection task the supervisor watches.
pub(super) struct Running {
    pub(super) id: ConnId,
    pub(super) slot: SlotId,
    pub(super) record: Arc<ConnRecord>,
    pub(super) task: Task<TaskEnd>,
    /// Whether it was asked to drain (asked once).
    drained: bool,
    pub(super) inbox: Arc<Inbox>,
    pub(super) since: Instant,
}

impl Running {
    /// Asks the task to close (once): `forward` takes the messages still
    /// waiting in its inbox.
    pub(super) fn drain(&mut self, reason: DisconnectReason, forward: Option<Arc<Inbox>>) {
        if !std::mem::replace(&mut self.drained, true) {
            self.inbox.request_drain(Drain { reason, forward });
        }
    }

    /// Reports how the task ended: undelivered messages, then the
    /// disconnect, with one log line.
    pub(super) async fn report(
        &self,
        shared: &Shared,
        end: Result<TaskEnd, tokio::task::JoinError>,
    ) {
        let (id, slot) = (self.id, self.slot);
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
        // Its streams pass to the slot's next connection; what a successor
        // held behind them goes out now (also after a panic or an abort).
        if let Some(slot_shared) = shared.slot_of(slot) {
            if slot_shared.streams.is_some() {
                Box::pin(super::intake::ended(shared, slot_shared, &self.record, id)).await;
            }
        }
        if end.reason.is_failure() {
            tracing::warn!(conn = %id, reason = %end.reason, undelivered = end.undelivered.len(), "connection dropped");
            self.record.set_error(end.reason.to_string());
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
}

/// Connects, runs the on-connect hook and replays the subscriptions `slot`
/// carries, in a task of its own, so a panic in the hook is caught here as
/// that connection's failure. The hook and the replay share one handshake
/// deadline.
pub(super) async fn open(
    shared: &Arc<Shared>,
    slot: &SlotShared,
    target: &Target,
) -> Result<Box<Opened>, DisconnectReason> {
    let mut config = shared.settings.connection.clone();
    let budget = shared.budget.member();
    config.budget = Some(budget.clone());
    config.gate = Some(budget.clone());
    // The slot's number across shards: its source address is the same
    // whichever process runs it, and the fleet's slots spread evenly.
    config.local_slot = Some(slot.id.0 as usize);
    let hook = shared.settings.on_connect.clone();
    let replayed = shared.subscriptions().carried(slot.index());
    let target = target.clone();
    let started = Instant::now();
    let task = Task(tokio::spawn(async move {
        let mut conn = Box::new(
            Connection::connect_target(target, &config)
                .await
                .map_err(DisconnectReason::from_connect)?,
        );
        let limit = config.deadlines.handshake;
        let prepare = async {
            if let Some(hook) = hook {
                hook(&mut conn)
                    .await
                    .map_err(|e| DisconnectReason::HookFailed(Arc::from(e)))?;
            }
            replay(&mut conn, &replayed).await
        };
        match tokio::time::timeout(limit, prepare).await {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return Err(reason),
            Err(_) => {
                let late = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the on-connect hook and the subscriptions did not finish within {limit:?}"
                    ),
                );
                return Err(DisconnectReason::HookFailed(Arc::new(late)));
            }
        }
        let protocol = conn.protocol().map(str::to_owned);
        // Boxed: it waits in every slot's future while the slot starts it.
        Ok(Box::new(Opened {
            conn,
            protocol,
            budget,
            replayed,
        }))
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

/// Sends the start messages of `subscriptions`, in order.
async fn replay(
    conn: &mut Connection,
    subscriptions: &[Arc<Subscription>],
) -> Result<(), DisconnectReason> {
    for sub in subscriptions {
        for message in sub.start_messages() {
            if let Err(e) = conn.send(message.clone()).await {
                tracing::warn!(subscription = sub.key(), error = %e, "replaying a subscription failed");
                return Err(DisconnectReason::from_error(&e));
            }
        }
    }
    if !subscriptions.is_empty() {
        tracing::debug!(
            subscriptions = subscriptions.len(),
            "subscriptions replayed"
        );
    }
    Ok(())
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
pub(super) async fn start(
    shared: &Arc<Shared>,
    slot: &SlotShared,
    id: ConnId,
    opened: Box<Opened>,
) -> Running {
    let Opened {
        conn,
        protocol,
        budget,
        replayed,
    } = *opened;
    let record = Arc::new(ConnRecord::successor(&slot.record(), id, budget));
    let inbox = Arc::new(Inbox::new(shared.settings.inbox_capacity));
    let span = tracing::info_span!("conn", conn = %id);
    let task = Task(tokio::spawn(
        ConnTask {
            shared: shared.clone(),
            index: slot.index,
            id,
            conn,
            inbox: Receiver::new(inbox.clone()),
            record: record.clone(),
        }
        .run()
        .instrument(span),
    ));
    {
        // Registered under the table's lock: a subscription changed after
        // the replay is caught up with here, or reaches this inbox through
        // `Fleet::subscribe`, never both.
        let table = shared.subscriptions();
        let catchup = table.catch_up(slot.index(), &replayed);
        let ends = catchup.end.iter().filter_map(|s| s.end_message());
        let starts = catchup.start.iter().flat_map(|s| s.start_messages());
        for message in ends.chain(starts) {
            // A new inbox is open; the catch-up is bounded by the table.
            let _ = inbox.force_send(message.clone());
        }
        *slot.current.lock().unwrap_or_else(|p| p.into_inner()) = record.clone();
        shared.open_inbox(slot, id, inbox.clone());
    }
    tracing::debug!(conn = %id, "connection ready");
    shared
        .emit(id, slot.id, EventKind::Connected { protocol })
        .await;
    Running {
        id,
        slot: slot.id,
        record,
        task,
        drained: false,
        inbox,
        since: Instant::now(),
    }
}
