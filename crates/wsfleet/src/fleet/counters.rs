//! Fleet-wide monotonic counters for metrics: traffic totals, disconnects by
//! reason, and the handshake latency histogram. All relaxed atomics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::reason::{DisconnectReason, Label};

/// Upper bounds of the handshake latency buckets, in milliseconds.
pub const HANDSHAKE_BUCKETS_MS: [u64; 11] =
    [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000];

/// Upper bounds of the round-trip buckets (keepalive pings, application
/// heartbeats), in microseconds: 0.5 ms to 2.5 s.
pub const RTT_BUCKETS_US: [u64; 12] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000,
];

/// A fleet-wide round-trip histogram (one per kind: bounded cardinality,
/// never per connection).
#[derive(Debug, Default)]
pub(crate) struct RttHistogram {
    buckets: [AtomicU64; RTT_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl RttHistogram {
    pub(crate) fn observe(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let i = RTT_BUCKETS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(RTT_BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Histogram {
        Histogram {
            counts: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum: Duration::from_micros(self.sum_us.load(Ordering::Relaxed)),
        }
    }
}

/// A round-trip histogram's snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Histogram {
    /// Observations per bucket: bucket `i` counts those at most
    /// [`RTT_BUCKETS_US`]`[i]` µs (not cumulative); the last, the rest.
    pub counts: Vec<u64>,
    /// Sum of all observations.
    pub sum: Duration,
}

impl Histogram {
    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) msgs_in: AtomicU64,
    pub(crate) msgs_out: AtomicU64,
    pub(crate) rotations: AtomicU64,
    /// Stream integrity (see `streams`).
    pub(crate) gaps: AtomicU64,
    pub(crate) missed: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) late: AtomicU64,
    pub(crate) renewals: AtomicU64,
    pub(crate) ping_rtt: RttHistogram,
    pub(crate) heartbeat_rtt: RttHistogram,
    /// Messages that waited for the send rate, and how long in all (µs).
    pub(crate) send_rate_waits: AtomicU64,
    pub(crate) send_rate_wait_us: AtomicU64,
    /// By [`Label`], at its index.
    disconnects: [AtomicU64; Label::COUNT],
    buckets: [AtomicU64; HANDSHAKE_BUCKETS_MS.len() + 1],
    handshake_sum_us: AtomicU64,
}

impl Counters {
    pub(crate) fn disconnect(&self, kind: Label) {
        self.disconnects[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn handshake(&self, took: Duration) {
        let ms = took.as_millis() as u64;
        let i = HANDSHAKE_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(HANDSHAKE_BUCKETS_MS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.handshake_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Totals {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Totals {
            bytes_in: load(&self.bytes_in),
            bytes_out: load(&self.bytes_out),
            msgs_in: load(&self.msgs_in),
            msgs_out: load(&self.msgs_out),
            rotations: load(&self.rotations),
            sequence_gaps: load(&self.gaps),
            sequence_missed: load(&self.missed),
            duplicates_dropped: load(&self.duplicates),
            late_messages: load(&self.late),
            renewals: load(&self.renewals),
            ping_rtt: self.ping_rtt.snapshot(),
            heartbeat_rtt: self.heartbeat_rtt.snapshot(),
            send_rate_waits: load(&self.send_rate_waits),
            send_rate_wait: Duration::from_micros(load(&self.send_rate_wait_us)),
            disconnects: DisconnectReason::LABELS
                .into_iter()
                .zip(&self.disconnects)
                .map(|(label, n)| (label, load(n)))
                .collect(),
            handshake_buckets: self.buckets.iter().map(load).collect(),
            handshake_sum: Duration::from_micros(load(&self.handshake_sum_us)),
        }
    }
}

/// Fleet-wide totals since start (monotonic: they survive rotations).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Totals {
    /// Bytes read, all connections.
    pub bytes_in: u64,
    /// Bytes written, all connections.
    pub bytes_out: u64,
    /// Messages received.
    pub msgs_in: u64,
    /// Messages sent.
    pub msgs_out: u64,
    /// Connections replaced after their lifetime (make-before-break).
    pub rotations: u64,
    /// Gaps in streams' sequence numbers (see [`Streams`](super::Streams)).
    pub sequence_gaps: u64,
    /// Sequence numbers those gaps missed.
    pub sequence_missed: u64,
    /// Messages dropped as duplicates of a number delivered already.
    pub duplicates_dropped: u64,
    /// Messages delivered out of order (older than one delivered before).
    pub late_messages: u64,
    /// Subscriptions renewed (stale stream, or a gap under
    /// [`GapPolicy::Renew`](super::GapPolicy::Renew)).
    pub renewals: u64,
    /// Round trips of keepalive pings answered by a pong.
    pub ping_rtt: Histogram,
    /// Round trips of application heartbeats answered (see
    /// [`Heartbeat`](super::Heartbeat)).
    pub heartbeat_rtt: Histogram,
    /// Messages that waited in their inbox for a token of the send rate
    /// ([`FleetBuilder::send_rate`](super::FleetBuilder::send_rate) or
    /// [`pool_send_rate`](super::FleetBuilder::pool_send_rate)).
    pub send_rate_waits: u64,
    /// How long they waited in all (from the first refusal to the write
    /// or the connection's end).
    pub send_rate_wait: Duration,
    /// Ended connections and failed attempts, by
    /// [`DisconnectReason::label`], in the order of [`DisconnectReason::LABELS`].
    pub disconnects: Vec<(&'static str, u64)>,
    /// Handshakes per latency bucket: bucket `i` counts those at most
    /// [`HANDSHAKE_BUCKETS_MS`]`[i]` ms (not cumulative); the last, the rest.
    pub handshake_buckets: Vec<u64>,
    /// Sum of all handshake latencies.
    pub handshake_sum: Duration,
}
