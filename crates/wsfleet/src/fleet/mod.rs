//! The fleet: N supervised connections kept ready, rotated make-before-break,
//! restarted with backoff, all charged to one memory budget.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use wsfleet::fleet::{EventKind, Fleet};
//! use wsfleet::Message;
//! let mut fleet = Fleet::builder("ws://127.0.0.1:9001/")
//!     .connections(100)
//!     .max_lifetime(Duration::from_secs(55 * 60))
//!     .memory_budget(512 << 20)
//!     .spawn()?;
//! let mut events = fleet.events().expect("taken once");
//! fleet.send(Message::text("hello")).await?;
//! while let Some(event) = events.recv().await {
//!     if let EventKind::Message(m) = event.kind {
//!         println!("{}: {m:?}", event.conn);
//!     }
//! }
//! # Ok(()) }
//! ```

mod backoff;
pub(crate) mod budget;
mod builder;
mod conn_task;
mod coordinated;
mod counters;
mod drain;
mod extras;
mod heartbeat;
mod held;
mod inbox;
mod intake;
mod intensity;
mod orders;
mod pool;
mod rate;
mod reason;
mod room;
mod rotation;
mod running;
mod scale;
mod send_gate;
mod send_rate;
mod slots;
mod stale;
mod stats;
mod streams;
mod subscriptions;
mod supervisor;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use wsfleet_proto::Message;

pub use backoff::Backoff;
pub use budget::FleetBudget;
pub use builder::{FleetBuilder, OnConnect};
pub use counters::{HANDSHAKE_BUCKETS_MS, Histogram, RTT_BUCKETS_US, Totals};
pub use heartbeat::Heartbeat;
pub use intensity::RestartIntensity;
pub use pool::{DEFAULT_POOL, MAX_POOL_NAME, PoolInfo};
pub use reason::DisconnectReason;
pub use scale::{ControlError, MAX_CONNECTIONS, Scaled};
pub use send_rate::SendRate;
pub use stats::{ConnState, ConnectionInfo, FleetStats};
pub use streams::{Gap, GapCause, GapPolicy, MAX_HELD_PER_SLOT, MAX_STREAMS_PER_SLOT, Streams};
pub use subscriptions::{Placement, SubscribeError, Subscription};

use inbox::{Inbox, TrySendError};
use stats::ConnRecord;

/// Beyond the close deadline, how long [`Fleet::shutdown`] waits for the
/// slots before aborting them: longer than a slot's own [`drain::DRAIN_GRACE`],
/// so each slot reports its connection's end (or its abort) first.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
const _: () = assert!(SHUTDOWN_GRACE.as_millis() > drain::DRAIN_GRACE.as_millis());

/// A connection's id, unique within a fleet (a slot's successive
/// connections get new ids).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// A slot's index in the fleet.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct SlotId(pub u32);

impl fmt::Display for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// Something that happened to a connection of the fleet.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Event {
    /// The connection.
    pub conn: ConnId,
    /// Its slot.
    pub slot: SlotId,
    /// What happened.
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum EventKind {
    /// The connection is ready (handshake and on-connect hook done).
    Connected {
        /// The subprotocol the server chose.
        protocol: Option<String>,
    },
    /// A message arrived.
    Message(Message),
    /// The connection ended (or an attempt failed), and why.
    Disconnected(DisconnectReason),
    /// A message accepted by `send` that never reached the socket.
    Undelivered(Message),
    /// Sequence numbers of a stream were never delivered (see
    /// [`Streams::sequence`]); reported once per gap, on the connection
    /// whose message revealed it.
    Gap(Gap),
    /// Too many restarts fleet-wide: reconnects pause for this long.
    RestartIntensityTripped {
        /// How long reconnects pause.
        paused_for: Duration,
    },
}

/// What the fleet does with a received message when the consumer of
/// [`Fleet::events`] has fallen behind (the event queue is full).
///
/// Whatever the policy, the memory budget bounds what is held: received
/// messages carry their charge until dropped, and a spent budget pauses
/// reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SlowConsumer {
    /// Wait for the consumer: the connection stops reading, TCP pushes
    /// back on the server, nothing is lost. A consumer that never resumes
    /// stalls the fleet (the servers may then drop the connections).
    #[default]
    Backpressure,
    /// Drop the message that does not fit and count it
    /// ([`FleetStats::events_dropped`]); the connection keeps reading. For
    /// feeds where only fresh data matters (a newer quote replaces an
    /// older one): the consumer sees gaps, the servers never see a stall.
    DropNewest,
    /// Wait at most this long for the consumer; then drop the message
    /// (counted) and close the connection (reason `slow_consumer`, 1008):
    /// its slot reconnects after its backoff. Sheds the connections the
    /// consumer cannot keep up with instead of stalling them all.
    Disconnect(Duration),
}

/// A message the fleet did not take; the message is handed back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FleetSendError {
    /// No connection is ready.
    NoReadyConnection(Message),
    /// `send_to` named a connection that is not (or no longer) ready.
    UnknownConnection(Message),
}

impl FleetSendError {
    /// The message that was not sent.
    pub fn into_message(self) -> Message {
        match self {
            Self::NoReadyConnection(m) | Self::UnknownConnection(m) => m,
        }
    }
}

impl fmt::Display for FleetSendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoReadyConnection(_) => f.write_str("no connection of the fleet is ready"),
            Self::UnknownConnection(_) => {
                f.write_str("that connection is not ready (closed or rotated)")
            }
        }
    }
}

impl std::error::Error for FleetSendError {}

/// The receiving end of the fleet's events: bounded; a consumer that falls
/// behind makes connections stop reading (backpressure), never a queue grow.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
    /// Turns true when `shutdown` has finished: no event follows those queued.
    finished: watch::Receiver<bool>,
}

/// The sending side of an event stream several fleets share: from
/// [`Events::channel`], given to each with
/// [`FleetBuilder::events_to`].
#[derive(Debug, Clone)]
pub struct EventSender {
    tx: mpsc::Sender<Event>,
    /// The stream ends (after its queued events) once every sender and
    /// every fleet holding one is gone.
    _open: Arc<watch::Sender<bool>>,
}

/// Connection ids several fleets share, so that an id names one
/// connection across them: give each fleet a clone with
/// [`FleetBuilder::conn_ids`].
#[derive(Debug, Clone, Default)]
pub struct ConnIds(Arc<AtomicU64>);

impl ConnIds {
    /// Ids from 1.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Events {
    /// A stream of at most `capacity` queued events that several fleets
    /// send to (the pools of one process), and its sender. Ends once every
    /// [`EventSender`] clone and every fleet built with one is gone; until
    /// then a consumer stops it itself.
    ///
    /// # Panics
    /// If `capacity` is 0.
    pub fn channel(capacity: usize) -> (EventSender, Events) {
        let (tx, rx) = mpsc::channel(capacity);
        let (open, finished) = watch::channel(false);
        let sender = EventSender {
            tx,
            _open: Arc::new(open),
        };
        (sender, Events { rx, finished })
    }

    /// The next event; `None` once the fleet has shut down (or was dropped)
    /// and every event was taken — even while a [`FleetMonitor`] is alive.
    ///
    /// Cancel-safe: dropping the future loses no event.
    pub async fn recv(&mut self) -> Option<Event> {
        loop {
            if *self.finished.borrow() {
                return self.rx.try_recv().ok();
            }
            tokio::select! {
                biased;
                event = self.rx.recv() => return event,
                changed = self.finished.changed() => {
                    if changed.is_err() {
                        // The fleet handle is gone: drain what is queued.
                        return self.rx.try_recv().ok();
                    }
                }
            }
        }
    }

    /// An event if one is waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

/// One slot: its current connection's record and inbox.
#[derive(Debug)]
pub(crate) struct SlotShared {
    pub(crate) id: SlotId,
    /// Its index in [`Shared::slots`] (the id counts every shard's slots;
    /// 32 bits like the id, so the two share a word).
    pub(crate) index: u32,
    pub(crate) url: Arc<str>,
    pub(crate) current: Mutex<Arc<ConnRecord>>,
    /// Inbox of the ready connection; `None` when none is ready. Written
    /// only by [`Shared::open_inbox`] and [`Shared::close_inbox`], which
    /// keep the id-to-slot index with it.
    inbox: Mutex<Option<(ConnId, Arc<Inbox>)>>,
    /// Its streams' state, only with [`Streams`] configured (boxed: an
    /// idle slot without it carries a pointer).
    pub(crate) streams: Option<Box<SlotStreamsCell>>,
    /// A pending drop or rotation of its connection.
    pub(crate) requests: orders::Requests,
}

/// A slot's stream tracker and the lock that orders its deliveries.
#[derive(Debug, Default)]
pub(crate) struct SlotStreamsCell {
    /// Its streams' sequence state, shared by its successive connections.
    tracker: Mutex<streams::SlotStreams>,
    /// Held from a sequence check to the last delivery it allows, so the
    /// slot's two connections during a rotation hand their messages to the
    /// consumer in the order the tracker decided.
    pub(crate) delivery: tokio::sync::Mutex<()>,
}

impl SlotStreamsCell {
    pub(crate) fn tracker(&self) -> std::sync::MutexGuard<'_, streams::SlotStreams> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SlotShared {
    /// Its index in [`Shared::slots`].
    pub(crate) fn index(&self) -> usize {
        self.index as usize
    }

    pub(crate) fn record(&self) -> Arc<ConnRecord> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn inbox(&self) -> Option<(ConnId, Arc<Inbox>)> {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// State shared by the fleet handle and every slot task.
pub(crate) struct Shared {
    /// Every slot made (positions `0..`); those below the active count run.
    pub(crate) slots: slots::SlotTable,
    /// This process's share of the fleet: slot `p` has id `p·count + index`.
    pub(crate) shard: (usize, usize),
    /// The URLs, slots spread over them round robin by id.
    pub(crate) targets: Vec<crate::connect::Target>,
    /// Connections wanted (all shards).
    pub(crate) wanted: AtomicUsize,
    /// Shutdown, the active slot count, pause: every slot task watches it.
    pub(crate) orders: watch::Sender<orders::Orders>,
    /// A coordinated fleet's held slots ([`FleetBuilder::coordinated`]);
    /// `None`: every active slot runs.
    pub(crate) held: Option<Arc<held::HeldSet>>,
    /// Each slot position's task.
    pub(crate) slot_tasks: Mutex<Vec<Option<JoinHandle<()>>>>,
    /// Where slot tasks run.
    pub(crate) runtime: tokio::runtime::Handle,
    /// Held by a change of the slot count or pause, one at a time.
    pub(crate) scaling: tokio::sync::Mutex<()>,
    pub(crate) settings: builder::Settings,
    pub(crate) events: mpsc::Sender<Event>,
    pub(crate) budget: Arc<FleetBudget>,
    pub(crate) pacer: rate::Pacer,
    /// The fleet-wide send rate's bucket, if one is set.
    pub(crate) send_pool: Option<send_rate::PoolBucket>,
    pub(crate) intensity: Mutex<intensity::IntensityWindow>,
    pub(crate) draining: Mutex<Vec<Arc<ConnRecord>>>,
    /// Shared with other fleets through [`FleetBuilder::conn_ids`].
    pub(crate) next_id: Arc<AtomicU64>,
    round_robin: AtomicUsize,
    /// The slot of every ready connection, so `send_to` finds it without
    /// a walk over the fleet (kept with each slot's inbox).
    ready_slots: Mutex<HashMap<ConnId, u32>>,
    pub(crate) reconnects: AtomicU64,
    /// Received messages the slow-consumer policy dropped.
    pub(crate) events_dropped: AtomicU64,
    pub(crate) counters: counters::Counters,
    /// Rotated-out connections still closing, awaited by `shutdown`.
    pub(crate) draining_tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The subscriptions each slot carries.
    pub(crate) subscriptions: Mutex<subscriptions::Table>,
    /// Held by `subscribe`/`unsubscribe` from the table change to the last
    /// message sent, so changes reach every connection in the order made.
    pub(crate) subscription_changes: tokio::sync::Mutex<()>,
}

impl Shared {
    /// The connections this process keeps, with `active` slots running:
    /// in a coordinated fleet, the slots it holds among them.
    pub(crate) fn target_now(&self, active: usize) -> usize {
        match &self.held {
            Some(held) if active > 0 => held.held(),
            _ => active,
        }
    }

    pub(crate) fn subscriptions(&self) -> std::sync::MutexGuard<'_, subscriptions::Table> {
        self.subscriptions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `inbox` the ready connection `id`'s inbox on `slot`.
    pub(crate) fn open_inbox(&self, slot: &SlotShared, id: ConnId, inbox: Arc<Inbox>) {
        let mut current = slot.inbox.lock().unwrap_or_else(|p| p.into_inner());
        let mut ready = self.ready_slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((gone, _)) = current.replace((id, inbox)) {
            ready.remove(&gone);
        }
        ready.insert(id, slot.index);
    }

    /// `slot` has no ready connection any more: nothing more is sent to it.
    pub(crate) fn close_inbox(&self, slot: &SlotShared) {
        let mut current = slot.inbox.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((gone, _)) = current.take() {
            let mut ready = self.ready_slots.lock().unwrap_or_else(|p| p.into_inner());
            ready.remove(&gone);
            // An emptied map gives its room back (a fleet scaled down).
            if ready.capacity() > 64 && ready.len() < ready.capacity() / 4 {
                let keep = ready.len() * 2;
                ready.shrink_to(keep);
            }
        }
    }

    pub(crate) fn next_conn_id(&self) -> ConnId {
        ConnId(self.next_id.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Hands a received message to the consumer under the fleet's
    /// [`SlowConsumer`] policy; while it waits for room, `record` shows the
    /// connection paused. `false`: the policy gave up on this connection
    /// (close it as `slow_consumer`).
    pub(crate) async fn deliver(
        &self,
        record: &ConnRecord,
        conn: ConnId,
        slot: SlotId,
        message: Message,
    ) -> bool {
        let event = Event {
            conn,
            slot,
            kind: EventKind::Message(message),
        };
        let event = match self.events.try_send(event) {
            Err(mpsc::error::TrySendError::Full(event)) => event,
            // Sent, or nobody listens any more.
            _ => return true,
        };
        match self.settings.slow_consumer {
            SlowConsumer::Backpressure => {
                let _waiting = record.wait_for_consumer();
                let _ = self.events.send(event).await;
                true
            }
            SlowConsumer::DropNewest => {
                drop(event);
                self.events_dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            SlowConsumer::Disconnect(patience) => {
                let _waiting = record.wait_for_consumer();
                match tokio::time::timeout(patience, self.events.send(event)).await {
                    Ok(_) => true,
                    Err(_) => {
                        self.events_dropped.fetch_add(1, Ordering::Relaxed);
                        false
                    }
                }
            }
        }
    }

    /// Charges a message the application sends to the fleet budget until
    /// its last reference is dropped (written and forgotten, or handed back
    /// as `Undelivered` and dropped there). Forced: the application already
    /// holds the memory, and making `send` wait for budget that only its
    /// own consumer can free would deadlock a task that both sends and
    /// consumes. Counted, it makes readers pause instead of growing.
    fn charge_outbound(&self, message: Message) -> Message {
        let len = message.len();
        if len == 0 {
            return message;
        }
        let charge = len + OUTBOUND_OVERHEAD;
        wsfleet_proto::MemoryBudget::force_reserve(&*self.budget, charge);
        let owner = Outbound {
            bytes: message.payload().clone(),
            budget: self.budget.clone(),
            charge,
        };
        let payload = bytes::Bytes::from_owner(owner);
        match &message {
            // Still the same valid UTF-8: checked again only because the
            // core's unchecked constructor is not public. Should it ever
            // fail, the message goes out uncharged rather than panicking
            // (the owner, dropped, gives its charge back).
            Message::Text(_) => wsfleet_proto::Utf8Bytes::try_from(payload)
                .map(Message::Text)
                .unwrap_or(message),
            Message::Binary(_) => Message::Binary(payload),
        }
    }

    pub(crate) async fn emit(&self, conn: ConnId, slot: SlotId, kind: EventKind) {
        if let EventKind::Disconnected(reason) = &kind {
            self.counters.disconnect(reason.kind());
        }
        // Fails only once the fleet handle (and its receiver) is gone.
        let _ = self.events.send(Event { conn, slot, kind }).await;
    }
}

/// What an outbound message's charge counts beyond its payload: the owner
/// allocation that carries the charge.
const OUTBOUND_OVERHEAD: usize = 64;

/// The owner of an outbound payload: the application's bytes and their
/// charge to the fleet budget, given back when the last reference drops.
struct Outbound {
    bytes: bytes::Bytes,
    budget: Arc<FleetBudget>,
    charge: usize,
}

impl AsRef<[u8]> for Outbound {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        wsfleet_proto::MemoryBudget::release(&*self.budget, self.charge);
    }
}

/// A running fleet. Dropping it without [`shutdown`](Self::shutdown) aborts
/// every task (connections end without a close handshake).
pub struct Fleet {
    shared: Arc<Shared>,
    events: Option<Events>,
    finished: watch::Sender<bool>,
    /// Keeps a shared event stream open while the fleet lives.
    _shared_events: Option<EventSender>,
}

impl Fleet {
    /// A builder for a fleet connecting to `url`.
    pub fn builder(url: impl Into<String>) -> FleetBuilder {
        FleetBuilder::new(url)
    }

    /// The event stream; `Some` the first time only.
    pub fn events(&mut self) -> Option<Events> {
        self.events.take()
    }

    /// Sends to a ready connection: the first, in round-robin order, whose
    /// inbox has room; if every ready inbox is full, waits on the next one in
    /// round-robin order (backpressure).
    ///
    /// Cancel-safe only while it does not wait: with room somewhere it
    /// queues the message on its first poll. Dropped while waiting for room,
    /// the message is dropped with the future, never queued. Once queued, a
    /// message is written or comes back as [`EventKind::Undelivered`].
    ///
    /// # Errors
    /// [`FleetSendError::NoReadyConnection`] with the message when none is ready.
    pub async fn send(&self, message: Message) -> Result<ConnId, FleetSendError> {
        self.shared.send(message).await
    }

    /// Sends to one connection, waiting while its inbox is full.
    ///
    /// Cancel-safe as [`send`](Self::send): dropped while waiting for room,
    /// the message is dropped with the future, never queued.
    ///
    /// # Errors
    /// [`FleetSendError::UnknownConnection`] if it is not ready.
    pub async fn send_to(&self, conn: ConnId, message: Message) -> Result<(), FleetSendError> {
        self.shared.send_to(conn, message).await
    }

    /// Sends a copy to every ready connection (payloads are shared, not
    /// copied), waiting on each full inbox in turn. Returns how many took it.
    ///
    /// Not cancel-safe: dropped midway (while waiting on a full inbox), the
    /// connections before that one have the message and the rest do not,
    /// and the count is lost.
    pub async fn broadcast(&self, message: Message) -> usize {
        self.shared.broadcast(message).await
    }

    /// Adds a subscription: its start messages go to the ready connections
    /// that carry it now (every one, or one slot's: see [`Placement`]), and
    /// every later connection of those slots replays it before it counts as
    /// ready. Returns how many connections took the start messages now (0
    /// when none is ready: the next ones replay it).
    ///
    /// Waits while an inbox is full (backpressure), like [`send`](Self::send).
    ///
    /// # Errors
    /// [`SubscribeError::Duplicate`] or [`SubscribeError::NoRoom`]; the
    /// table is unchanged.
    pub async fn subscribe(&self, subscription: Subscription) -> Result<usize, SubscribeError> {
        self.shared.subscribe(subscription).await
    }

    /// Removes the subscription `key`: its end message (if it has one) goes
    /// to the ready connections carrying it, and no later connection
    /// replays it. Returns how many connections took the end message.
    ///
    /// # Errors
    /// [`SubscribeError::Unknown`] if no subscription has this key.
    pub async fn unsubscribe(&self, key: &str) -> Result<usize, SubscribeError> {
        self.shared.unsubscribe(key).await
    }

    /// The keys of every subscription, in the order they were added.
    pub fn subscriptions(&self) -> Vec<String> {
        let table = self.shared.subscriptions();
        table.keys()
    }

    /// Connections ready now.
    pub fn ready(&self) -> usize {
        self.monitor().ready()
    }

    /// A snapshot of every connection and the totals.
    pub fn stats(&self) -> FleetStats {
        self.monitor().stats()
    }

    /// A cheap, clonable read-only view of the fleet for observers (the
    /// admin endpoint, a status line).
    pub fn monitor(&self) -> FleetMonitor {
        FleetMonitor(self.shared.clone())
    }

    /// A cheap, clonable handle that changes the fleet while it runs (an
    /// admin control API, an operator task): send, scale, pause, drop or
    /// rotate one connection.
    pub fn control(&self) -> FleetControl {
        FleetControl(self.shared.clone())
    }

    /// The memory budget every connection charges.
    pub fn budget(&self) -> &FleetBudget {
        &self.shared.budget
    }

    /// Closes every connection with a close handshake (1001), delivering
    /// what was in flight, within the close deadline plus one second; tasks
    /// still running then are aborted.
    ///
    /// Cancel-safe in effect: once polled, dropping the future does not stop
    /// the close handshakes it started; each slot still ends its connection
    /// within the close deadline and a grace, with no one waiting for it.
    /// (Dropped unpolled, it is dropping the `Fleet`: every task aborted.)
    pub async fn shutdown(self) {
        // No scaling starts slots past this point.
        let _scaling = self.shared.scaling.lock().await;
        self.shared.orders.send_modify(|o| o.shutdown = true);
        let limit = self.shared.settings.connection.deadlines.close + SHUTDOWN_GRACE;
        let mut tasks: Vec<JoinHandle<()>> = self
            .shared
            .slot_tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        tasks.extend(std::mem::take(
            &mut *self
                .shared
                .draining_tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        ));
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        let all = futures_join_all(tasks);
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!(
                "fleet shutdown: some connections did not close within {limit:?}; aborting them"
            );
            for a in aborts {
                a.abort();
            }
        }
        let _ = self.finished.send(true);
    }
}

/// A handle that changes a running fleet: from [`Fleet::control`]; clones
/// share the fleet. Every change is whole or refused with a
/// [`ControlError`] that leaves the fleet as it was.
#[derive(Clone)]
pub struct FleetControl(Arc<Shared>);

impl FleetControl {
    /// As [`Fleet::send`].
    ///
    /// # Errors
    /// [`FleetSendError::NoReadyConnection`] with the message when none is ready.
    pub async fn send(&self, message: Message) -> Result<ConnId, FleetSendError> {
        self.0.send(message).await
    }

    /// As [`Fleet::send_to`].
    ///
    /// # Errors
    /// [`FleetSendError::UnknownConnection`] if it is not ready.
    pub async fn send_to(&self, conn: ConnId, message: Message) -> Result<(), FleetSendError> {
        self.0.send_to(conn, message).await
    }

    /// Sends to the ready connection of slot `slot`, waiting while its
    /// inbox is full; the connection that took it.
    ///
    /// # Errors
    /// [`FleetSendError::UnknownConnection`] if the slot has no ready
    /// connection.
    pub async fn send_to_slot(
        &self,
        slot: SlotId,
        message: Message,
    ) -> Result<ConnId, FleetSendError> {
        self.0.send_to_slot(slot, message).await
    }

    /// As [`Fleet::broadcast`].
    pub async fn broadcast(&self, message: Message) -> usize {
        self.0.broadcast(message).await
    }

    /// Sets how many connections the fleet keeps (all shards, like
    /// [`FleetBuilder::connections`]). Up: the new slots dial at the connect
    /// rate. Down: the newest slots go (the highest positions, added last),
    /// each connection closing with 1001 after what was in flight, its
    /// queued messages coming back as [`EventKind::Undelivered`]; spread
    /// subscriptions move to the slots that stay. Paused, the count is kept
    /// for [`resume`](Self::resume).
    ///
    /// # Errors
    /// [`ControlError::Target`] for 0, more than [`MAX_CONNECTIONS`] or
    /// none for this shard; [`ControlError::Subscriptions`] when a spread
    /// subscription would find no room. The fleet is unchanged.
    pub async fn set_connections(&self, n: usize) -> Result<Scaled, ControlError> {
        self.0.set_target(n).await
    }

    /// Pauses the fleet: every connection closes with 1001 and none dials
    /// until [`resume`](Self::resume); the connection count and the
    /// subscriptions are kept. False if it was paused already.
    pub async fn pause(&self) -> bool {
        self.0.set_paused(true).await
    }

    /// Resumes a paused fleet: its slots dial again at the connect rate.
    /// False if it was not paused.
    pub async fn resume(&self) -> bool {
        self.0.set_paused(false).await
    }

    /// Whether the fleet is paused.
    pub fn is_paused(&self) -> bool {
        self.0.orders.borrow().paused
    }

    /// Closes connection `conn` (1001, after what was in flight); its slot
    /// connects again. Returns its slot.
    ///
    /// # Errors
    /// [`ControlError::UnknownConnection`] if no ready connection has this id.
    pub fn drop_connection(&self, conn: ConnId) -> Result<SlotId, ControlError> {
        self.0.request_conn(conn, orders::Request::Drop)
    }

    /// Replaces connection `conn` now, make-before-break, as its lifetime
    /// would. Returns its slot.
    ///
    /// # Errors
    /// [`ControlError::UnknownConnection`] if no ready connection has this id.
    pub fn rotate_connection(&self, conn: ConnId) -> Result<SlotId, ControlError> {
        self.0.request_conn(conn, orders::Request::Rotate)
    }

    /// Closes the connection of slot `slot` (its slot connects again);
    /// the connection it had, if one was ready.
    ///
    /// # Errors
    /// [`ControlError::UnknownSlot`] if no running slot has this id.
    pub fn drop_slot(&self, slot: SlotId) -> Result<Option<ConnId>, ControlError> {
        self.0.request_slot(slot, orders::Request::Drop)
    }

    /// Replaces the connection of slot `slot` now, make-before-break.
    ///
    /// # Errors
    /// [`ControlError::UnknownSlot`] if no running slot has this id.
    pub fn rotate_slot(&self, slot: SlotId) -> Result<Option<ConnId>, ControlError> {
        self.0.request_slot(slot, orders::Request::Rotate)
    }

    /// The read-only view of the same fleet.
    pub fn monitor(&self) -> FleetMonitor {
        FleetMonitor(self.0.clone())
    }
}

impl fmt::Debug for FleetControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetControl")
            .field("slots", &self.0.slots.len())
            .finish_non_exhaustive()
    }
}

impl Shared {
    async fn send(&self, message: Message) -> Result<ConnId, FleetSendError> {
        let message = self.charge_outbound(message);
        let n = self.slots.len();
        let start = self.round_robin.fetch_add(1, Ordering::Relaxed);
        let mut message = message;
        let mut first_ready = None;
        for i in 0..n {
            let slot = &self.slots[(start + i) % n];
            if let Some((id, inbox)) = slot.inbox() {
                match inbox.try_send(message) {
                    Ok(()) => return Ok(id),
                    Err(TrySendError::Full(back)) => {
                        message = back;
                        first_ready.get_or_insert((id, inbox));
                    }
                    Err(TrySendError::Closed(back)) => message = back,
                }
            }
        }
        match first_ready {
            Some((id, inbox)) => match inbox.send(message).await {
                Ok(()) => Ok(id),
                Err(back) => Err(FleetSendError::NoReadyConnection(back)),
            },
            None => Err(FleetSendError::NoReadyConnection(message)),
        }
    }

    async fn send_to(&self, conn: ConnId, message: Message) -> Result<(), FleetSendError> {
        let message = self.charge_outbound(message);
        let index = self
            .ready_slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&conn)
            .copied();
        let inbox = index
            .and_then(|i| self.slots.get(i as usize))
            .and_then(SlotShared::inbox)
            .filter(|(id, _)| *id == conn);
        match inbox {
            Some((_, inbox)) => inbox
                .send(message)
                .await
                .map_err(FleetSendError::UnknownConnection),
            None => Err(FleetSendError::UnknownConnection(message)),
        }
    }

    async fn send_to_slot(&self, slot: SlotId, message: Message) -> Result<ConnId, FleetSendError> {
        let message = self.charge_outbound(message);
        let ready = self
            .slots
            .iter()
            .find(|s| s.id == slot)
            .and_then(SlotShared::inbox);
        match ready {
            Some((id, inbox)) => inbox
                .send(message)
                .await
                .map(|()| id)
                .map_err(FleetSendError::UnknownConnection),
            None => Err(FleetSendError::UnknownConnection(message)),
        }
    }

    async fn broadcast(&self, message: Message) -> usize {
        // Charged once: every inbox shares the one payload.
        let message = self.charge_outbound(message);
        let mut sent = 0;
        for slot in self.slots.iter() {
            if let Some((_, inbox)) = slot.inbox() {
                if inbox.send(message.clone()).await.is_ok() {
                    sent += 1;
                }
            }
        }
        sent
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<usize, SubscribeError> {
        let _order = self.subscription_changes.lock().await;
        let messages = subscription.start_messages().to_vec();
        let inboxes = {
            let mut table = self.subscriptions();
            let slot = table.add(subscription)?;
            self.carrying_inboxes(slot)
        };
        Ok(send_all(&inboxes, &messages).await)
    }

    async fn unsubscribe(&self, key: &str) -> Result<usize, SubscribeError> {
        let _order = self.subscription_changes.lock().await;
        let (removed, inboxes) = {
            let mut table = self.subscriptions();
            let (removed, slot) = table.remove(key)?;
            (removed, self.carrying_inboxes(slot))
        };
        let messages: Vec<Message> = removed.end_message().cloned().into_iter().collect();
        if messages.is_empty() {
            return Ok(0);
        }
        Ok(send_all(&inboxes, &messages).await)
    }

    /// The inboxes of the ready connections of `slot` (every slot when
    /// `None`). Called under the table lock: a connection registers its
    /// inbox under it too, so each one is reached here or catches up when
    /// it starts, never both, never neither.
    fn carrying_inboxes(&self, slot: Option<usize>) -> Vec<Arc<Inbox>> {
        match slot {
            Some(i) => self
                .slots
                .get(i)
                .and_then(SlotShared::inbox)
                .into_iter()
                .map(|(_, inbox)| inbox)
                .collect(),
            None => self
                .slots
                .iter()
                .filter_map(|s| s.inbox().map(|(_, inbox)| inbox))
                .collect(),
        }
    }
}

/// A read-only view of a fleet: stats without owning the [`Fleet`].
#[derive(Clone)]
pub struct FleetMonitor(Arc<Shared>);

impl FleetMonitor {
    /// Connections ready now, paused ones included (connected, waiting
    /// for room in the memory budget).
    pub fn ready(&self) -> usize {
        self.0
            .slots
            .iter()
            .filter(|s| matches!(s.record().state(), ConnState::Ready | ConnState::Paused))
            .count()
    }

    /// This process's slots: the connections it keeps (0 while paused;
    /// the slots it holds, in a coordinated fleet).
    pub fn target(&self) -> usize {
        self.0.target_now(self.0.orders.borrow().active)
    }

    /// Connections wanted of the whole fleet (all shards), kept while paused.
    pub fn connections(&self) -> usize {
        self.0.wanted.load(Ordering::Relaxed)
    }

    /// Whether the fleet is paused (see [`FleetControl::pause`]).
    pub fn is_paused(&self) -> bool {
        self.0.orders.borrow().paused
    }

    /// The pool name the fleet was built with
    /// ([`FleetBuilder::name`]; `"default"` unless set).
    pub fn name(&self) -> &str {
        &self.0.settings.name
    }

    /// The memory budget every connection charges: its used and peak bytes
    /// are two atomic loads, cheaper than a [`stats`](Self::stats) snapshot
    /// for an observer that polls them often.
    pub fn budget(&self) -> &FleetBudget {
        &self.0.budget
    }

    /// A snapshot of every connection and the totals.
    pub fn stats(&self) -> FleetStats {
        let orders = *self.0.orders.borrow();
        // The running slots, and parked ones still closing.
        let mut connections: Vec<ConnectionInfo> = self
            .0
            .slots
            .iter()
            .map(|s| s.record())
            .enumerate()
            .filter(|(position, r)| *position < orders.active || r.state() != ConnState::Closed)
            .map(|(_, r)| r.snapshot(self.name()))
            .collect();
        // Paused is ready, waiting for the budget: counted as /healthz
        // and `ready()` count it.
        let ready = connections
            .iter()
            .filter(|c| matches!(c.state, ConnState::Ready | ConnState::Paused))
            .count();
        connections.extend(
            self.0
                .draining
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|r| r.snapshot(self.name())),
        );
        FleetStats {
            target: self.0.target_now(orders.active),
            paused: orders.paused,
            ready,
            reconnects: self.0.reconnects.load(Ordering::Relaxed),
            budget_used: self.0.budget.used(),
            budget_peak: self.0.budget.peak(),
            budget_max: self.0.budget.max(),
            budget_handed: self.0.budget.handed(),
            budget_pauses: self.0.budget.pauses(),
            budget_paused: self.0.budget.paused_time(),
            budget_evictions: self.0.budget.evictions(),
            events_dropped: self.0.events_dropped.load(Ordering::Relaxed),
            totals: self.0.counters.snapshot(),
            connections,
        }
    }
}

impl fmt::Debug for FleetMonitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetMonitor")
            .field("name", &self.name())
            .field("slots", &self.0.slots.len())
            .finish_non_exhaustive()
    }
}

/// Sends `messages` in order to each inbox; how many took them all.
async fn send_all(inboxes: &[Arc<Inbox>], messages: &[Message]) -> usize {
    let mut took = 0;
    for inbox in inboxes {
        let mut all = true;
        for m in messages {
            all &= inbox.send(m.clone()).await.is_ok();
        }
        took += usize::from(all);
    }
    took
}

async fn futures_join_all(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Anything that outlives the aborts below (a task between polls)
        // stops at its next look at the orders.
        self.shared.orders.send_modify(|o| o.shutdown = true);
        let tasks = self
            .shared
            .slot_tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for t in tasks.iter().flatten() {
            t.abort();
        }
    }
}

impl fmt::Debug for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("slots", &self.shared.slots.len())
            .field("ready", &self.ready())
            .finish_non_exhaustive()
    }
}
