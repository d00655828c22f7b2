//! Per-connection records, updated with relaxed atomics on the hot path and
//! read without any global lock. A snapshot is therefore only eventually
//! consistent across connections (as deadpool's `Status` says of its pool):
//! each number is exact for its connection at the moment it was read.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::budget::ConnBudget;
use super::counters::{Counters, Totals};
use super::{ConnId, SlotId};
use crate::ConnectionStats;

/// Where a slot's connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ConnState {
    /// Dialling, TLS, handshake or the on-connect hook.
    Connecting,
    /// Handshake and on-connect hook done: counts as ready.
    Ready,
    /// Closing after rotation or shutdown, still delivering what was in flight.
    Draining,
    /// Waiting before the next attempt.
    Backoff,
    /// Ready, but not reading: until the memory budget has room (the
    /// application holds the memory, or another connection is closing to
    /// free it), or until the consumer takes the next event (a full event
    /// queue under [`SlowConsumer::Backpressure`](super::SlowConsumer)).
    Paused,
    /// Finished (after shutdown).
    Closed,
}

impl ConnState {
    /// The lowercase word used by `/connections` and `wsfleet top`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Ready => "ready",
            Self::Draining => "draining",
            Self::Backoff => "backoff",
            Self::Paused => "paused",
            Self::Closed => "closed",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Connecting,
            1 => Self::Ready,
            2 => Self::Draining,
            3 => Self::Backoff,
            5 => Self::Paused,
            _ => Self::Closed,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Self::Connecting => 0,
            Self::Ready => 1,
            Self::Draining => 2,
            Self::Backoff => 3,
            Self::Closed => 4,
            Self::Paused => 5,
        }
    }
}

/// The live record of one connection (or of a slot between connections).
#[derive(Debug)]
pub(crate) struct ConnRecord {
    pub(crate) slot: SlotId,
    pub(crate) url: Arc<str>,
    id: AtomicU64,
    state: AtomicU8,
    connected_since_ms: AtomicU64,
    reconnects: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    msgs_in: AtomicU64,
    msgs_out: AtomicU64,
    /// The connection's budget: its bytes held (exact at every growth and
    /// release, handed-out messages included) and its pauses for memory.
    budget: Option<Arc<ConnBudget>>,
    /// Waiting for room in the event queue (the consumer is behind).
    waiting_for_consumer: AtomicBool,
    peak_buffered: AtomicUsize,
    last_error: Mutex<Option<String>>,
    /// Pongs seen so far (to notice a new round trip), and the last round
    /// trips in µs (0: none yet).
    pongs: AtomicU32,
    ping_rtt_us: AtomicU32,
    heartbeat_rtt_us: AtomicU32,
}

impl ConnRecord {
    pub(crate) fn new(slot: SlotId, url: Arc<str>) -> Self {
        Self {
            slot,
            url,
            id: AtomicU64::new(0),
            state: AtomicU8::new(ConnState::Connecting.to_u8()),
            connected_since_ms: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            msgs_in: AtomicU64::new(0),
            msgs_out: AtomicU64::new(0),
            budget: None,
            waiting_for_consumer: AtomicBool::new(false),
            peak_buffered: AtomicUsize::new(0),
            last_error: Mutex::new(None),
            pongs: AtomicU32::new(0),
            ping_rtt_us: AtomicU32::new(0),
            heartbeat_rtt_us: AtomicU32::new(0),
        }
    }

    /// The record of a slot's next connection: the slot's history
    /// (reconnects, last error, peak buffer) carries over, traffic starts at 0.
    pub(crate) fn successor(previous: &Self, id: ConnId, budget: Arc<ConnBudget>) -> Self {
        let mut next = Self::new(previous.slot, previous.url.clone());
        next.budget = Some(budget);
        next.reconnects.store(
            previous.reconnects.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        next.peak_buffered.store(
            previous.peak_buffered.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        *next.last_error.lock().unwrap_or_else(|p| p.into_inner()) = previous
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        next.start(id);
        next
    }

    pub(crate) fn budget(&self) -> Option<Arc<ConnBudget>> {
        self.budget.clone()
    }

    pub(crate) fn state(&self) -> ConnState {
        ConnState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub(crate) fn set_state(&self, state: ConnState) {
        self.state.store(state.to_u8(), Ordering::Relaxed);
    }

    /// A new connection took over this record.
    pub(crate) fn start(&self, id: ConnId) {
        self.id.store(id.0, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.connected_since_ms
            .store(now.as_millis() as u64, Ordering::Relaxed);
        for counter in [
            &self.bytes_in,
            &self.bytes_out,
            &self.msgs_in,
            &self.msgs_out,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        self.set_state(ConnState::Ready);
    }

    pub(crate) fn id(&self) -> ConnId {
        ConnId(self.id.load(Ordering::Relaxed))
    }

    pub(crate) fn count_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Copies a connection's counters in (cheap relaxed stores) and adds
    /// what changed to the fleet totals. Only the connection's task writes
    /// its record, so a load and a store suffice; a counter that did not
    /// change costs no write to the totals, which every task shares.
    pub(crate) fn update(&self, s: &ConnectionStats, totals: &Counters) {
        for (mine, total, now) in [
            (&self.bytes_in, &totals.bytes_in, s.bytes_in),
            (&self.bytes_out, &totals.bytes_out, s.bytes_out),
            (&self.msgs_in, &totals.msgs_in, s.msgs_in),
            (&self.msgs_out, &totals.msgs_out, s.msgs_out),
        ] {
            let before = mine.load(Ordering::Relaxed);
            if now != before {
                mine.store(now, Ordering::Relaxed);
                total.fetch_add(now.saturating_sub(before), Ordering::Relaxed);
            }
        }
        if s.peak_buffered_bytes > self.peak_buffered.load(Ordering::Relaxed) {
            self.peak_buffered
                .store(s.peak_buffered_bytes, Ordering::Relaxed);
        }
        if s.pongs != self.pongs.load(Ordering::Relaxed) {
            self.pongs.store(s.pongs, Ordering::Relaxed);
            if s.last_ping_rtt_us > 0 {
                let rtt = Duration::from_micros(u64::from(s.last_ping_rtt_us));
                totals.ping_rtt.observe(rtt);
                self.ping_rtt_us
                    .store(s.last_ping_rtt_us, Ordering::Relaxed);
            }
        }
    }

    /// An application heartbeat was answered after `rtt`.
    pub(crate) fn heartbeat_rtt(&self, rtt: Duration, totals: &Counters) {
        totals.heartbeat_rtt.observe(rtt);
        self.heartbeat_rtt_us.store(micros(rtt), Ordering::Relaxed);
    }

    /// Marks this connection as waiting for the consumer until the guard
    /// is dropped (shown as [`ConnState::Paused`]).
    pub(crate) fn wait_for_consumer(&self) -> ConsumerWait<'_> {
        self.waiting_for_consumer.store(true, Ordering::Relaxed);
        ConsumerWait(&self.waiting_for_consumer)
    }

    pub(crate) fn set_error(&self, error: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }

    /// What the record shows now, as a connection of the pool `pool`.
    pub(crate) fn snapshot(&self, pool: &str) -> ConnectionInfo {
        let since = self.connected_since_ms.load(Ordering::Relaxed);
        let mut state = self.state();
        let budget = self.budget.as_deref();
        if state == ConnState::Ready
            && (budget.is_some_and(ConnBudget::is_paused)
                || self.waiting_for_consumer.load(Ordering::Relaxed))
        {
            state = ConnState::Paused;
        }
        ConnectionInfo {
            pool: pool.to_owned(),
            id: self.id(),
            slot: self.slot,
            state,
            url: self.url.to_string(),
            connected_since: (since > 0
                && matches!(
                    state,
                    ConnState::Ready | ConnState::Paused | ConnState::Draining
                ))
            .then(|| UNIX_EPOCH + Duration::from_millis(since)),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            msgs_in: self.msgs_in.load(Ordering::Relaxed),
            msgs_out: self.msgs_out.load(Ordering::Relaxed),
            buffered_bytes: budget.map_or(0, |b| b.held.load(Ordering::Relaxed)),
            paused_ms: budget.map_or(0, |b| {
                u64::try_from(b.paused_time().as_millis()).unwrap_or(u64::MAX)
            }),
            peak_buffered_bytes: self.peak_buffered.load(Ordering::Relaxed),
            ping_rtt_us: nonzero(&self.ping_rtt_us),
            heartbeat_rtt_us: nonzero(&self.heartbeat_rtt_us),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

/// Whole microseconds, at least 1 (0 means "none yet" in the records; 32
/// bits hold 71 minutes).
fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX).max(1)
}

fn nonzero(a: &AtomicU32) -> Option<u64> {
    Some(u64::from(a.load(Ordering::Relaxed))).filter(|v| *v > 0)
}

/// A snapshot of one connection: what `wsfleet top` and `/connections` show
/// (serialised with the same field names; `connected_since` as Unix
/// milliseconds).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// The pool (fleet) it belongs to ([`FleetMonitor::name`](super::FleetMonitor::name));
    /// `"default"` when read from a server that does not say.
    #[serde(default = "default_pool")]
    pub pool: String,
    /// The connection's id (a slot's successive connections get new ids).
    pub id: ConnId,
    /// The slot that owns it.
    pub slot: SlotId,
    /// Its state.
    pub state: ConnState,
    /// The URL it connects to.
    pub url: String,
    /// When the current connection became ready.
    #[serde(with = "unix_ms")]
    pub connected_since: Option<SystemTime>,
    /// How many times the slot has reconnected.
    pub reconnects: u64,
    /// Bytes read on the current connection.
    pub bytes_in: u64,
    /// Bytes written on the current connection.
    pub bytes_out: u64,
    /// Messages received on the current connection.
    pub msgs_in: u64,
    /// Messages sent on the current connection.
    pub msgs_out: u64,
    /// Bytes held now: buffers and received messages the application has
    /// not dropped yet (what the connection is charged in the budget).
    pub buffered_bytes: usize,
    /// Time the connection spent paused for memory (the budget was spent),
    /// in milliseconds.
    #[serde(default)]
    pub paused_ms: u64,
    /// Most buffer bytes the slot has held.
    pub peak_buffered_bytes: usize,
    /// The last keepalive ping's round trip, in µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping_rtt_us: Option<u64>,
    /// The last application heartbeat's round trip, in µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_rtt_us: Option<u64>,
    /// Why the previous connection ended.
    pub last_error: Option<String>,
}

fn default_pool() -> String {
    super::DEFAULT_POOL.to_owned()
}

/// Fleet totals and every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FleetStats {
    /// The fleet is paused: its connections closed, none dials until it
    /// resumes.
    pub paused: bool,
    /// Slots (the number of connections this process keeps; 0 while
    /// paused).
    pub target: usize,
    /// Connections ready now, paused ones included (see
    /// [`ConnState::Paused`]).
    pub ready: usize,
    /// Reconnects since start, all slots.
    pub reconnects: u64,
    /// Budget bytes reserved now.
    pub budget_used: usize,
    /// Most budget bytes ever reserved.
    pub budget_peak: usize,
    /// The budget.
    pub budget_max: usize,
    /// Of `budget_used`: bytes in received messages the application has
    /// not dropped yet (event queue, consumers, sinks).
    pub budget_handed: usize,
    /// Times a connection paused reading for memory.
    pub budget_pauses: u64,
    /// Time connections spent paused for memory, summed over connections.
    pub budget_paused: Duration,
    /// Connections closed (1009) so that others could have the memory
    /// they held.
    pub budget_evictions: u64,
    /// Received messages dropped by the [`SlowConsumer`](super::SlowConsumer)
    /// policy (never under the default, backpressure).
    pub events_dropped: u64,
    /// Monotonic totals since start.
    pub totals: Totals,
    /// One entry per slot, plus connections draining after rotation.
    pub connections: Vec<ConnectionInfo>,
}

/// `Option<SystemTime>` as Unix milliseconds (or null).
mod unix_ms {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)))
    }
}

/// A connection waiting for room in the event queue; see
/// [`ConnRecord::wait_for_consumer`]. Ends when dropped, cancelled or not.
pub(crate) struct ConsumerWait<'a>(&'a AtomicBool);

impl Drop for ConsumerWait<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}
