//! Configuring a fleet: a by-value builder validated once, in `spawn`.

use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use wsfleet_proto::{ConfigError, Limits};

use super::SlowConsumer;
use super::backoff::Backoff;
use super::budget::FleetBudget;
use super::intensity::{IntensityWindow, RestartIntensity};
use super::orders::Orders;
use super::rate::Pacer;
use super::send_rate::{PoolBucket, SendRate};
use super::slots::SlotTable;
use super::subscriptions::{SubscribeError, Subscription, Table};
use super::{ConnIds, EventSender, Events, Fleet, Shared};
use crate::connect::{Deadlines, Target};
use crate::{Connection, ConnectionConfig, Keepalive};

/// Per-connection initialisation (auth, subscribe), run after the handshake
/// and before the connection counts as ready. An error or a panic is a
/// connection failure like any other; it must finish within the handshake
/// deadline. The error is kept whole in
/// [`DisconnectReason::HookFailed`](super::DisconnectReason::HookFailed)
/// (any error converts with `?`, a `String` or `&str` too).
pub type OnConnect = Arc<
    dyn for<'a> Fn(
            &'a mut Connection,
        ) -> Pin<
            Box<dyn Future<Output = Result<(), Box<dyn Error + Send + Sync>>> + Send + 'a>,
        > + Send
        + Sync,
>;

/// The shortest [`FleetBuilder::max_lifetime`] accepted: shorter, a fleet
/// would spend its time rotating.
const MIN_LIFETIME: Duration = Duration::from_millis(100);
/// The shortest `stale_after`: shorter would replace connections between
/// two messages of any ordinary feed.
const MIN_STALE: Duration = Duration::from_millis(100);

/// Everything a fleet runs with, after validation.
#[derive(Clone)]
pub(crate) struct Settings {
    /// The pool name (see [`FleetBuilder::name`]).
    pub(crate) name: Arc<str>,
    pub(crate) connection: ConnectionConfig,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) lifetime_jitter: f64,
    pub(crate) backoff: Backoff,
    pub(crate) healthy_after: Duration,
    pub(crate) on_connect: Option<OnConnect>,
    pub(crate) inbox_capacity: usize,
    pub(crate) seed: Option<u64>,
    pub(crate) slow_consumer: SlowConsumer,
    pub(crate) stale_after: Option<Duration>,
    pub(crate) streams: Option<Arc<super::Streams>>,
    pub(crate) heartbeat: Option<Arc<super::Heartbeat>>,
    pub(crate) send_rate: Option<SendRate>,
}

/// Builds a [`Fleet`]. Every setting has a default a user would expect;
/// nothing is checked until [`spawn`](Self::spawn), which returns a
/// [`ConfigError`] naming the field instead of panicking.
#[must_use]
pub struct FleetBuilder {
    urls: Vec<String>,
    connections: usize,
    shard: (usize, usize),
    budget: usize,
    connect_rate: f64,
    pool_send_rate: Option<SendRate>,
    intensity: RestartIntensity,
    event_capacity: usize,
    settings: Settings,
    subscriptions: Vec<Subscription>,
    /// Set by `shared_budget`: the budget of several fleets.
    shared_budget: Option<Arc<FleetBudget>>,
    /// Set by `events_to`: an event stream several fleets share.
    events_to: Option<EventSender>,
    /// Set by `conn_ids`: ids unique across several fleets.
    conn_ids: Option<ConnIds>,
    /// Set by `coordinated`: no slot runs until held.
    coordinated: bool,
}

impl FleetBuilder {
    pub(crate) fn new(url: impl Into<String>) -> Self {
        Self {
            urls: vec![url.into()],
            connections: 1,
            shard: (0, 1),
            budget: 1 << 30,
            connect_rate: 200.0,
            pool_send_rate: None,
            intensity: RestartIntensity::default(),
            event_capacity: 1024,
            settings: Settings {
                name: super::pool::default_name(),
                connection: ConnectionConfig::default(),
                max_lifetime: None,
                lifetime_jitter: 0.1,
                backoff: Backoff::default(),
                healthy_after: Duration::from_secs(10),
                on_connect: None,
                inbox_capacity: 64,
                slow_consumer: SlowConsumer::default(),
                stale_after: None,
                streams: None,
                heartbeat: None,
                send_rate: None,
                seed: None,
            },
            subscriptions: Vec::new(),
            shared_budget: None,
            events_to: None,
            coordinated: false,
            conn_ids: None,
        }
    }

    /// The pool name this fleet is shown under: the `pool` of each of its
    /// connections on `/connections` and the `pool` label of its metrics
    /// (default `"default"`). 1 to 64 characters of `[A-Za-z0-9_.-]`,
    /// checked by [`spawn`](Self::spawn).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.settings.name = name.into();
        self
    }

    /// Another URL; slots are spread over the URLs round robin.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.urls.push(url.into());
        self
    }

    /// How many connections to keep ready (default 1).
    pub fn connections(mut self, n: usize) -> Self {
        self.connections = n;
        self
    }

    /// Runs only the slots `i, i + n, i + 2n, …` of the fleet: shard `index`
    /// of `count`, for fleets too large for one machine (default `0/1`).
    pub fn shard(mut self, index: usize, count: usize) -> Self {
        self.shard = (index, count);
        self
    }

    /// Rotate each connection after this lifetime (± jitter), make before
    /// break. Default: never.
    pub fn max_lifetime(mut self, lifetime: Duration) -> Self {
        self.settings.max_lifetime = Some(lifetime);
        self
    }

    /// Jitter of the lifetime as a share of it, so rotations spread out
    /// (default 0.1: ± 10 %).
    pub fn lifetime_jitter(mut self, share: f64) -> Self {
        self.settings.lifetime_jitter = share;
        self
    }

    /// Bytes all connections' buffers may hold together (default 1 GiB).
    pub fn memory_budget(mut self, bytes: usize) -> Self {
        self.budget = bytes;
        self
    }

    /// Charges this fleet's connections to `budget`, shared with other
    /// fleets (the pools of one process): one limit over all of them, and
    /// the budget's fair share counts every connection of every fleet.
    /// Replaces [`memory_budget`](Self::memory_budget).
    pub fn shared_budget(mut self, budget: Arc<FleetBudget>) -> Self {
        self.shared_budget = Some(budget);
        self
    }

    /// Sends this fleet's events to a stream shared with other fleets (see
    /// [`Events::channel`]); [`Fleet::events`](super::Fleet::events) is then
    /// `None`. Replaces [`event_capacity`](Self::event_capacity).
    pub fn events_to(mut self, sender: EventSender) -> Self {
        self.events_to = Some(sender);
        self
    }

    /// Draws connection ids from `ids`, shared with other fleets, so an id
    /// names one connection across all of them (on a shared event stream).
    pub fn conn_ids(mut self, ids: ConnIds) -> Self {
        self.conn_ids = Some(ids);
        self
    }

    /// New connections per second, fleet-wide (default 200): the ramp-up rate.
    pub fn connect_rate(mut self, per_second: f64) -> Self {
        self.connect_rate = per_second;
        self
    }

    /// Limits how fast each connection sends application messages (what
    /// [`Fleet::send`](super::Fleet::send), `send_to`, `broadcast` and
    /// subscription changes queue in its inbox); see [`SendRate`]. A
    /// message over the rate waits in the inbox — never dropped; a full
    /// inbox makes `send` wait — while the connection keeps reading. Not
    /// counted: control frames (ping, pong, close) and the subscriptions a
    /// new connection replays before it is ready (written directly, before
    /// its task starts). Counted without waiting: application heartbeats.
    /// Default: no limit.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), wsfleet::proto::ConfigError> {
    /// use wsfleet::fleet::{Fleet, SendRate};
    /// // The upstream closes (1008) a connection sending over 5 a second.
    /// let fleet = Fleet::builder("wss://exchange.example/ws")
    ///     .connections(100)
    ///     .send_rate(SendRate::per_second(5.0))
    ///     .spawn()?;
    /// # Ok(()) }
    /// ```
    pub fn send_rate(mut self, rate: SendRate) -> Self {
        self.settings.send_rate = Some(rate);
        self
    }

    /// Limits how fast the whole fleet sends application messages: one
    /// bucket shared by all its connections, on top of
    /// [`send_rate`](Self::send_rate) (a message needs a token of both).
    /// Same rules otherwise. Default: no limit.
    pub fn pool_send_rate(mut self, rate: SendRate) -> Self {
        self.pool_send_rate = Some(rate);
        self
    }

    /// Per-slot reconnect backoff (default 100 ms base, 30 s cap).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.settings.backoff = backoff;
        self
    }

    /// A connection alive this long resets its slot's backoff (default 10 s).
    pub fn healthy_after(mut self, after: Duration) -> Self {
        self.settings.healthy_after = after;
        self
    }

    /// Fleet-wide restart limit (default 1,000 per 10 s, then a 5 s pause).
    pub fn restart_intensity(mut self, intensity: RestartIntensity) -> Self {
        self.intensity = intensity;
        self
    }

    /// Protocol limits of every connection.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.settings.connection.limits = limits;
        self
    }

    /// Deadlines of every connection.
    pub fn deadlines(mut self, deadlines: Deadlines) -> Self {
        self.settings.connection.deadlines = deadlines;
        self
    }

    /// Keepalive of every connection.
    pub fn keepalive(mut self, keepalive: Keepalive) -> Self {
        self.settings.connection.keepalive = keepalive;
        self
    }

    /// Progress deadlines of every connection: how fast a started message
    /// must arrive, how long a write may wait (see [`crate::Progress`]).
    pub fn progress(mut self, progress: crate::Progress) -> Self {
        self.settings.connection.progress = progress;
        self
    }

    /// The whole per-connection configuration (TLS, headers, subprotocols,
    /// limits, deadlines, keepalive). Its budget is replaced by the fleet's.
    pub fn connection_config(mut self, config: ConnectionConfig) -> Self {
        self.settings.connection = config;
        self
    }

    /// Source addresses to connect from, spread over the slots: slot `i`
    /// uses address `i % n` of the `n` of its destination's family, the
    /// same across reconnects (see [`LocalAddresses`](crate::connect::LocalAddresses)).
    /// Each address gives about 28,000 connections to one destination.
    /// Default: the system chooses.
    pub fn local_addresses(mut self, addresses: crate::connect::LocalAddresses) -> Self {
        self.settings.connection.local_addresses = Some(Arc::new(addresses));
        self
    }

    /// Per-connection initialisation; see [`OnConnect`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use wsfleet::fleet::Fleet;
    /// use wsfleet::Message;
    /// let fleet = Fleet::builder("ws://127.0.0.1:9001/")
    ///     .on_connect(|conn| {
    ///         Box::pin(async move {
    ///             conn.send(Message::text(r#"{"subscribe":"trades"}"#)).await?;
    ///             Ok(())
    ///         })
    ///     })
    ///     .spawn()?;
    /// # Ok(()) }
    /// ```
    pub fn on_connect<F>(mut self, hook: F) -> Self
    where
        F: for<'a> Fn(
                &'a mut Connection,
            ) -> Pin<
                Box<dyn Future<Output = Result<(), Box<dyn Error + Send + Sync>>> + Send + 'a>,
            > + Send
            + Sync
            + 'static,
    {
        self.settings.on_connect = Some(Arc::new(hook));
        self
    }

    /// A subscription every connection carrying it sends when it opens —
    /// after the on-connect hook, before it counts as ready — and again on
    /// every reconnect and rotation. Add more while running with
    /// [`Fleet::subscribe`](super::Fleet::subscribe). Which connections
    /// carry it: [`Subscription::placement`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use wsfleet::fleet::{Fleet, Placement, Subscription};
    /// use wsfleet::Message;
    /// let mut builder = Fleet::builder("ws://127.0.0.1:9001/")
    ///     .connections(10)
    ///     .subscribe(Subscription::new("login", Message::text(r#"{"op":"login"}"#)));
    /// for channel in 0..100 {
    ///     let start = Message::text(format!(r#"{{"op":"subscribe","channel":"c{channel}"}}"#));
    ///     let spread = Placement::Spread { per_connection: 10 };
    ///     builder = builder
    ///         .subscribe(Subscription::new(format!("c{channel}"), start).placement(spread));
    /// }
    /// let fleet = builder.spawn()?;
    /// # Ok(()) }
    /// ```
    pub fn subscribe(mut self, subscription: Subscription) -> Self {
        self.subscriptions.push(subscription);
        self
    }

    /// Attributes messages to streams and checks their sequence numbers;
    /// see [`Streams`](super::Streams).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use wsfleet::fleet::{Fleet, Streams};
    /// let fleet = Fleet::builder("ws://127.0.0.1:9001/")
    ///     .streams(Streams::new("/channel").sequence("/seq"))
    ///     .spawn()?;
    /// # Ok(()) }
    /// ```
    pub fn streams(mut self, streams: super::Streams) -> Self {
        self.settings.streams = Some(Arc::new(streams));
        self
    }

    /// An application heartbeat on every connection; see
    /// [`Heartbeat`](super::Heartbeat).
    pub fn heartbeat(mut self, heartbeat: super::Heartbeat) -> Self {
        self.settings.heartbeat = Some(Arc::new(heartbeat));
        self
    }

    /// Capacity of the event stream (default 1,024 events).
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.event_capacity = n;
        self
    }

    /// What happens when the consumer of [`Fleet::events`](super::Fleet::events)
    /// falls behind (default: backpressure). See [`SlowConsumer`].
    pub fn slow_consumer(mut self, policy: SlowConsumer) -> Self {
        self.settings.slow_consumer = policy;
        self
    }

    /// Replace a connection that received no data message (text or
    /// binary) for this long since it became ready or since its last one:
    /// an upstream that answers pings but stopped sending is as dead as a
    /// silent one for a feed. The connection closes with 1001 and ends as
    /// [`DisconnectReason::Stale`](super::DisconnectReason::Stale); its
    /// slot reconnects (with its backoff). Default: off. At least 100 ms.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), wsfleet::proto::ConfigError> {
    /// use std::time::Duration;
    /// let fleet = wsfleet::fleet::Fleet::builder("wss://feed.example/ws")
    ///     .connections(100)
    ///     .stale_after(Duration::from_secs(30))
    ///     .spawn()?;
    /// # Ok(()) }
    /// ```
    pub fn stale_after(mut self, after: Duration) -> Self {
        self.settings.stale_after = Some(after);
        self
    }

    /// Capacity of each connection's inbox of messages to send (default 64).
    pub fn inbox_capacity(mut self, n: usize) -> Self {
        self.settings.inbox_capacity = n;
        self
    }

    /// Seeds the backoff and lifetime jitter (for reproducible tests).
    pub fn seed(mut self, seed: u64) -> Self {
        self.settings.seed = Some(seed);
        self
    }

    /// Makes every slot wait until it is held: the fleet's slots are shared
    /// with other processes, and whoever hands them out (a lease
    /// coordinator) calls [`FleetControl::hold`](super::FleetControl::hold),
    /// [`release`](super::FleetControl::release) and
    /// [`revoke`](super::FleetControl::revoke). The slot count is fixed
    /// (`set_connections` is refused) and the fleet is not sharded.
    pub fn coordinated(mut self) -> Self {
        self.coordinated = true;
        self
    }

    /// Validates everything and starts the slots on the current tokio runtime.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first bad field.
    pub fn spawn(self) -> Result<Fleet, ConfigError> {
        let bad = |field, value: String, problem| {
            Err(ConfigError {
                field,
                value,
                problem,
            })
        };
        super::pool::validate(&self.settings.name)?;
        let mut targets = Vec::with_capacity(self.urls.len());
        for url in &self.urls {
            match Target::parse(url) {
                Ok(t) => targets.push(t),
                Err(_) => return bad("url", url.clone(), "not a valid ws:// or wss:// URL"),
            }
        }
        if self.connections == 0 {
            return bad("connections", "0".into(), "must be at least 1");
        }
        let (index, count) = self.shard;
        if count == 0 || index >= count {
            return bad(
                "shard",
                format!("{index}/{count}"),
                "index must be below count, count at least 1",
            );
        }
        if self.coordinated && count != 1 {
            return bad(
                "shard",
                format!("{index}/{count}"),
                "a coordinated fleet is not sharded: its processes share every slot",
            );
        }
        if !(self.connect_rate > 0.0 && self.connect_rate.is_finite()) {
            return bad(
                "connect_rate",
                self.connect_rate.to_string(),
                "must be above zero",
            );
        }
        if let Some(rate) = &self.settings.send_rate {
            rate.validate("send_rate")?;
        }
        if let Some(rate) = &self.pool_send_rate {
            rate.validate("pool_send_rate")?;
        }
        if !(0.0..1.0).contains(&self.settings.lifetime_jitter) {
            return bad(
                "lifetime_jitter",
                self.settings.lifetime_jitter.to_string(),
                "must be in [0, 1)",
            );
        }
        if self.settings.max_lifetime.is_some_and(|l| l < MIN_LIFETIME) {
            return bad(
                "max_lifetime",
                format!("{:?}", self.settings.max_lifetime),
                "must be at least 100ms",
            );
        }
        if self.settings.stale_after.is_some_and(|s| s < MIN_STALE) {
            return bad(
                "stale_after",
                format!("{:?}", self.settings.stale_after),
                "must be at least 100ms",
            );
        }
        if self.event_capacity == 0 {
            return bad("event_capacity", "0".into(), "must be at least 1");
        }
        if self.settings.inbox_capacity == 0 {
            return bad("inbox_capacity", "0".into(), "must be at least 1");
        }
        self.intensity.validate()?;
        self.settings.connection.limits.validate()?;
        let min_budget = self.settings.connection.limits.read_chunk * 4;
        let budget_max = self.shared_budget.as_ref().map_or(self.budget, |b| b.max());
        if budget_max < min_budget {
            return bad(
                "memory_budget",
                budget_max.to_string(),
                "must hold a few read chunks at least",
            );
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConfigError {
            field: "runtime",
            value: String::new(),
            problem: "spawn must be called inside a tokio runtime",
        })?;

        if let Some(streams) = &self.settings.streams {
            if let Err((field, value)) = streams.validate() {
                return bad(
                    field,
                    value,
                    "must be a JSON pointer: empty, or starting with '/'",
                );
            }
        }
        if let Some(heartbeat) = &self.settings.heartbeat {
            if let Err((field, value, problem)) = heartbeat.validate() {
                return bad(field, value, problem);
            }
        }
        if self.connections > super::MAX_CONNECTIONS {
            return bad(
                "connections",
                self.connections.to_string(),
                "above the most a fleet holds (1,048,576)",
            );
        }
        let budget = match self.shared_budget {
            Some(shared) => shared,
            None => Arc::new(FleetBudget::new(self.budget)),
        };
        let mut settings = self.settings;
        settings.connection.budget = Some(budget.clone());
        let (finished_tx, finished_rx) = watch::channel(false);
        let (events_tx, events) = match &self.events_to {
            Some(shared) => (shared.tx.clone(), None),
            None => {
                let (tx, rx) = mpsc::channel(self.event_capacity);
                let events = Events {
                    rx,
                    finished: finished_rx,
                };
                (tx, Some(events))
            }
        };
        let (orders, _) = watch::channel(Orders::default());
        let mut shared = Shared {
            slots: SlotTable::new(0),
            shard: (index, count),
            targets,
            wanted: AtomicUsize::new(self.connections),
            orders,
            held: None,
            slot_tasks: Mutex::new(Vec::new()),
            runtime,
            scaling: tokio::sync::Mutex::new(()),
            settings,
            events: events_tx,
            budget,
            pacer: Pacer::new(self.connect_rate),
            send_pool: self.pool_send_rate.as_ref().map(PoolBucket::new),
            intensity: Mutex::new(IntensityWindow::new(self.intensity)),
            draining: Mutex::new(Vec::new()),
            next_id: self.conn_ids.unwrap_or_default().0,
            round_robin: AtomicUsize::new(0),
            ready_slots: Mutex::default(),
            reconnects: AtomicU64::new(0),
            events_dropped: AtomicU64::new(0),
            counters: Default::default(),
            draining_tasks: Mutex::new(Vec::new()),
            subscriptions: Mutex::new(Table::new(0)),
            subscription_changes: tokio::sync::Mutex::new(()),
        };
        let positions = shared.positions_for(self.connections);
        if positions == 0 {
            return bad(
                "shard",
                format!("{index}/{count}"),
                "this shard gets no slot: it needs more connections than shards",
            );
        }
        let mut table = Table::new(positions);
        for sub in self.subscriptions {
            if let Err(e) = table.add(sub) {
                let (value, problem) = match e {
                    SubscribeError::NoRoom { key, .. } => (
                        key,
                        "no slot has room: add connections or raise per_connection",
                    ),
                    SubscribeError::ZeroPerConnection { key } => {
                        (key, "spread placement needs per_connection of at least 1")
                    }
                    SubscribeError::Duplicate { key } | SubscribeError::Unknown { key } => {
                        (key, "a subscription with this key was added already")
                    }
                };
                return Err(ConfigError {
                    field: "subscribe",
                    value,
                    problem,
                });
            }
        }
        shared.subscriptions = Mutex::new(table);
        // The first segment holds exactly the fleet's first size.
        shared.slots = SlotTable::new(positions);
        shared.orders.send_modify(|o| o.active = positions);
        if self.coordinated {
            shared.held = Some(Arc::new(super::held::HeldSet::new(positions)));
        }
        let shared = Arc::new(shared);
        shared.slots.grow_to(positions, |p| shared.make_slot(p));
        if self.coordinated {
            // Shown closed until held (not "connecting").
            for slot in shared.slots.iter() {
                slot.record().set_state(super::ConnState::Closed);
            }
        } else {
            for position in 0..positions {
                shared.spawn_slot(position);
            }
        }
        Ok(Fleet {
            shared,
            events,
            finished: finished_tx,
            _shared_events: self.events_to,
        })
    }
}

impl std::fmt::Debug for FleetBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetBuilder")
            .field("name", &self.settings.name)
            .field("urls", &self.urls)
            .field("connections", &self.connections)
            .field("shard", &self.shard)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_zero_capacity_is_named_as_it_was_set() {
        let err = Fleet::builder("ws://127.0.0.1:9/")
            .inbox_capacity(0)
            .spawn()
            .unwrap_err();
        assert_eq!((err.field, err.value.as_str()), ("inbox_capacity", "0"));
        let err = Fleet::builder("ws://127.0.0.1:9/")
            .event_capacity(0)
            .spawn()
            .unwrap_err();
        assert_eq!((err.field, err.value.as_str()), ("event_capacity", "0"));
    }

    #[tokio::test]
    async fn a_bad_send_rate_is_named_by_its_field() {
        let err = Fleet::builder("ws://127.0.0.1:9/")
            .send_rate(SendRate::per_second(0.0))
            .spawn()
            .unwrap_err();
        assert_eq!((err.field, err.value.as_str()), ("send_rate", "0/s"));
        let err = Fleet::builder("ws://127.0.0.1:9/")
            .pool_send_rate(SendRate::per_second(5.0).burst(0))
            .spawn()
            .unwrap_err();
        assert_eq!(
            (err.field, err.value.as_str()),
            ("pool_send_rate", "5/s,burst=0")
        );
    }

    #[tokio::test]
    async fn a_bad_pool_name_is_refused_and_a_good_one_is_shown() {
        let err = Fleet::builder("ws://127.0.0.1:9/")
            .name("a b")
            .spawn()
            .unwrap_err();
        assert_eq!((err.field, err.value.as_str()), ("name", "a b"));
        let fleet = Fleet::builder("ws://127.0.0.1:9/").spawn().unwrap();
        assert_eq!(fleet.monitor().name(), "default");
        let fleet = Fleet::builder("ws://127.0.0.1:9/")
            .name("eu-1")
            .spawn()
            .unwrap();
        assert_eq!(fleet.monitor().name(), "eu-1");
        let stats = fleet.stats();
        assert!(stats.connections.iter().all(|c| c.pool == "eu-1"));
        assert!(!stats.paused);
    }
}
