//! The bus of a wsfleet: what the fleet receives goes out to a message
//! system, and what the message system sends comes in through the fleet's
//! connections. NATS (JetStream) is the one implemented; the two traits here
//! are what a second bus (Redis Streams, Kafka) would implement.
//!
//! - [`Sink`]: takes each received message and publishes it. It holds a
//!   message until the bus acknowledged it, a bounded number at a time;
//!   when that window is full, [`Sink::publish`] waits, the consumer stops
//!   taking events, and the fleet stops reading its sockets (backpressure).
//!   A held message keeps its memory-budget charge (the charge travels with
//!   the payload's `Bytes`), so a slow or absent bus costs at most the
//!   window, inside the fleet's budget. [`NatsSink`] publishes to JetStream
//!   (or core NATS, at most once).
//! - [`Source`]: yields outbound messages with a [`Target`]; [`deliver`]
//!   hands one to the fleet and settles it with the bus: acknowledged once
//!   the fleet took it, answered with the reason when it cannot be
//!   delivered. [`NatsSource`] reads a JetStream pull consumer or a core
//!   subscription.
//!
//! The dependency direction is wsfleet ← this crate ← the CLI: the fleet
//! knows nothing about NATS. `async-nats` (the official client) does the
//! protocol; nothing of NATS's wire format is written here.
//!
//! Headers written on every published message: see [`headers`].
//!
//! [`coordinate`]: several processes share one fleet's slots through
//! JetStream key-value leases, with failover (`--coordinate`).
//!
//! # Metrics
//!
//! [`NatsSink::metrics_handle`] and [`NatsSource::metrics_handle`] give
//! read-only handles on the counters that stay valid wherever the sink or
//! source goes; each is a [`wsfleet::admin::MetricsSource`], so the admin
//! endpoint's `/metrics` serves them beside the fleet's
//! ([`AdminServer::builder`](wsfleet::admin::AdminServer::builder)):
//!
//! | metric | type | from |
//! |---|---|---|
//! | `wsfleet_sink_published_total` | counter | [`SinkMetrics::published`] |
//! | `wsfleet_sink_acknowledged_total` | counter | [`SinkMetrics::acked`] |
//! | `wsfleet_sink_duplicates_total` | counter | [`SinkMetrics::duplicates`] |
//! | `wsfleet_sink_retried_total` | counter | [`SinkMetrics::retried`] |
//! | `wsfleet_sink_rejected_total` | counter | [`SinkMetrics::rejected`] |
//! | `wsfleet_sink_reordered_total` | counter | [`SinkMetrics::reordered`] |
//! | `wsfleet_sink_in_flight` | gauge | [`SinkMetrics::in_flight`] |
//! | `wsfleet_sink_in_flight_bytes` | gauge | [`SinkMetrics::in_flight_bytes`] |
//! | `wsfleet_sink_paused_seconds_total` | counter | [`SinkMetrics::paused`] |
//! | `wsfleet_source_received_total` | counter | [`SourceMetrics::received`] |
//! | `wsfleet_source_delivered_total` | counter | [`SourceMetrics::delivered`] |
//! | `wsfleet_source_answered_total` | counter | [`SourceMetrics::answered`] |
//! | `wsfleet_source_unanswered_total` | counter | [`SourceMetrics::unanswered`] |

pub mod coordinate;
pub mod headers;
mod metrics;
mod nats_url;
pub mod sink;
pub mod source;
mod subject;

use std::fmt;
use std::future::Future;
use std::time::{Duration, SystemTime};

use wsfleet::Message;
use wsfleet::fleet::{ConnId, SlotId};

pub use metrics::{SinkMetricsHandle, SourceMetricsHandle};
pub use nats_url::{BusUrl, BusUrlError, redact_url};
pub use sink::{Delivery, NatsSink, SinkConfig, SinkMetrics, SinkSetupError, StreamPolicy};
pub use source::{
    DeliverOutcome, Inbound, NatsSource, Settle, SourceConfig, SourceMetrics, SourceMode,
    Undeliverable, deliver,
};
pub use subject::{SubjectTemplate, SubjectTemplateError};

/// One message a connection of the fleet received, as a sink takes it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The connection it came from.
    pub conn: ConnId,
    /// That connection's slot.
    pub slot: SlotId,
    /// The message; its payload carries its budget charge until dropped.
    pub message: Message,
    /// When the consumer took it from the fleet's events.
    pub received_at: SystemTime,
}

/// Whether a message is text or binary (the `Wsfleet-Kind` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A text message (valid UTF-8).
    Text,
    /// A binary message.
    Binary,
}

impl Kind {
    /// `"text"` or `"binary"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Binary => "binary",
        }
    }

    /// The kind of `message`.
    pub fn of(message: &Message) -> Self {
        if message.is_text() {
            Self::Text
        } else {
            Self::Binary
        }
    }
}

/// Which connection(s) an outbound message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// This connection (`Wsfleet-Conn`); undeliverable once it closed or
    /// rotated.
    Conn(ConnId),
    /// The ready connection of this slot, whichever it is now (`Wsfleet-Slot`).
    Slot(SlotId),
    /// Any ready connection, round robin (`Wsfleet-Target: any`, the default).
    Any,
    /// Every ready connection (`Wsfleet-Target: all`).
    All,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Conn(c) => write!(f, "connection {c}"),
            Self::Slot(s) => write!(f, "slot {s}"),
            Self::Any => f.write_str("any ready connection"),
            Self::All => f.write_str("every ready connection"),
        }
    }
}

/// Why a sink failed as a whole (a single message's trouble is retried, or
/// counted and logged, never an error here).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SinkError {
    /// The sink's background task has stopped (the runtime is shutting
    /// down, or it panicked): nothing more can be published.
    Closed,
    /// [`Sink::flush`] gave up with messages still unacknowledged.
    FlushTimedOut {
        /// Messages published but not acknowledged when it gave up.
        unacknowledged: usize,
        /// How long it waited.
        waited: Duration,
    },
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed => f.write_str("the sink's publishing task has stopped"),
            Self::FlushTimedOut {
                unacknowledged,
                waited,
            } => write!(
                f,
                "{unacknowledged} messages still unacknowledged after waiting {waited:?} \
                 (is the bus reachable? they may or may not have been stored)"
            ),
        }
    }
}

impl std::error::Error for SinkError {}

/// Where received messages go: a bus that acknowledges, or pushes back.
///
/// A sink is driven by one consumer of the fleet's events. It holds what it
/// took until its bus acknowledged it (or, for an at-most-once sink, until
/// it was handed to the client), a bounded amount at a time.
pub trait Sink: Send {
    /// Takes `message`. Returns once the sink holds it; waits while the
    /// sink's window is full (the consumer then takes no events: the fleet
    /// pauses reading — backpressure, not loss).
    ///
    /// # Errors
    /// [`SinkError::Closed`] if the sink can no longer publish.
    fn publish(&mut self, message: Received) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// The connection ended: forget its per-connection state (sequence
    /// numbers). Messages of it already taken are still delivered.
    fn connection_ended(&mut self, conn: ConnId);

    /// Waits until everything taken was acknowledged, at most `within`.
    ///
    /// # Errors
    /// [`SinkError::FlushTimedOut`] with how many are left.
    fn flush(&mut self, within: Duration) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// The counters now.
    fn metrics(&self) -> SinkMetrics;
}

/// Where outbound messages come from.
pub trait Source: Send {
    /// The next outbound message; `None` once the source has ended. Waits
    /// until one arrives (cancel-safe: a message is never half-taken).
    fn next(&mut self) -> impl Future<Output = Option<Inbound>> + Send;

    /// The counters now.
    fn metrics(&self) -> SourceMetrics;
}
