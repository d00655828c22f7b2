//! [`NatsSource`]: outbound messages from NATS, and [`deliver`], which hands
//! one to the fleet and settles it with the bus.
//!
//! What "taken" means: [`deliver`] acknowledges a message to NATS once the
//! fleet *took* it — `Fleet::send_to` / `Fleet::send` returned `Ok`, i.e.
//! the message is queued in the bounded inbox of a ready connection (for
//! [`Target::All`]: in the inbox of at least one). It has not necessarily
//! been written to the socket yet. If that connection closes before writing
//! it, the fleet hands the message back on its event stream as
//! `EventKind::Undelivered` (with its payload): nothing is dropped silently,
//! but the bus has already been acknowledged, so from the bus's side that
//! delivery is at most once past this point. A message the fleet did not
//! take (unknown or closed connection, no ready connection, bad headers) is
//! answered with the reason (header `Wsfleet-Error`, the original body) on
//! its reply subject — a core request's own, or the `Wsfleet-Reply` header
//! — or else on the configured dead-letter subject, and then acknowledged
//! (JetStream: terminated) so it is not redelivered forever. With neither,
//! it is logged at error level and counted in
//! [`SourceMetrics::unanswered`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use wsfleet::fleet::{ConnId, ConnState, FleetControl, FleetMonitor, SlotId};
use wsfleet::{Message, Utf8Bytes};

use crate::sink::{SinkSetupError, connect_client};
use crate::{BusUrl, Kind, Source, SourceMetricsHandle, Target, headers};

/// Messages fetched from JetStream ahead of delivery (and JetStream's
/// `max_ack_pending` for the consumer): bounds what the source holds.
const PULL_BATCH: usize = 64;

/// Why an outbound message was not delivered (the `Wsfleet-Error` answer).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Undeliverable {
    /// `Wsfleet-Conn` named a connection that is not ready (closed, rotated,
    /// or never existed).
    UnknownConnection(ConnId),
    /// `Wsfleet-Slot` named a slot with no ready connection now, or none at all.
    SlotNotReady(SlotId),
    /// No connection of the fleet is ready.
    NoReadyConnection,
    /// The headers do not say a valid target or kind.
    BadHeaders(String),
}

impl fmt::Display for Undeliverable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownConnection(c) => {
                write!(
                    f,
                    "unknown connection: {c} is not ready (closed, rotated or never existed)"
                )
            }
            Self::SlotNotReady(s) => write!(f, "slot {s} has no ready connection"),
            Self::NoReadyConnection => f.write_str("no connection of the fleet is ready"),
            Self::BadHeaders(why) => write!(f, "bad headers: {why}"),
        }
    }
}

/// What [`deliver`] did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliverOutcome {
    /// The fleet took it: this many connections (1, or the ready count for
    /// [`Target::All`]).
    Taken(usize),
    /// It was not delivered; it has been answered (or logged) with this.
    Undeliverable(Undeliverable),
}

/// An outbound message as a [`Source`] yields it: what to send where (or why
/// it cannot be sent), and how to settle it with the bus.
pub struct Inbound {
    /// The target and message, or why the headers do not make one.
    pub outbound: Result<(Target, Message), Undeliverable>,
    /// The body as received (shared with the message, not a copy), for an answer.
    body: Bytes,
    settle: Box<dyn Settle>,
}

impl fmt::Debug for Inbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbound")
            .field("outbound", &self.outbound)
            .finish_non_exhaustive()
    }
}

impl Inbound {
    /// An outbound message with how to settle it (for other buses).
    pub fn new(
        outbound: Result<(Target, Message), Undeliverable>,
        body: Bytes,
        settle: Box<dyn Settle>,
    ) -> Self {
        Self {
            outbound,
            body,
            settle,
        }
    }
}

/// Tells the bus what became of one message: acknowledge it, or answer it
/// with the reason it was not delivered.
pub trait Settle: Send {
    /// Settles the message. `body` is the original payload (for an answer).
    fn settle(self: Box<Self>, outcome: &DeliverOutcome, body: Bytes) -> BoxFuture<'static, ()>;
}

/// The source's counters, a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SourceMetrics {
    /// Messages taken from the bus.
    pub received: u64,
    /// Handed to the fleet and acknowledged.
    pub delivered: u64,
    /// Not delivered, answered with the reason.
    pub answered: u64,
    /// Not delivered, with nowhere to answer (logged).
    pub unanswered: u64,
}

/// The source's counters, shared by the source, the settling of each
/// message and any [`SourceMetricsHandle`]; [`SourceMetrics`] documents each.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) received: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) answered: AtomicU64,
    pub(crate) unanswered: AtomicU64,
}

/// How the source reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceMode {
    /// A durable JetStream pull consumer on the subject, in this stream
    /// (created if missing, listening on the subject): at least once.
    JetStream {
        /// The stream.
        stream: String,
        /// The durable consumer's name (several fleets with the same name
        /// share the work).
        durable: String,
    },
    /// A core subscription (at most once): nothing is kept while no fleet
    /// listens.
    Core,
}

/// Where outbound messages come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    /// Server and subject.
    pub url: BusUrl,
    /// JetStream (default: stream `WSFLEET_OUT`, consumer `wsfleet`) or core.
    pub mode: SourceMode,
    /// Where to answer an undeliverable message that has no reply subject.
    pub dead_letter: Option<String>,
}

impl SourceConfig {
    /// JetStream, stream `WSFLEET_OUT`, durable consumer `wsfleet`, no
    /// dead-letter subject.
    pub fn new(url: BusUrl) -> Self {
        Self {
            url,
            mode: SourceMode::JetStream {
                stream: "WSFLEET_OUT".into(),
                durable: "wsfleet".into(),
            },
            dead_letter: None,
        }
    }
}

/// Reads outbound messages from NATS; see the [module docs](self).
pub struct NatsSource {
    client: async_nats::Client,
    messages: Messages,
    dead_letter: Option<Arc<str>>,
    counters: Arc<Counters>,
}

enum Messages {
    // Boxed: one per source, and the stream's state is large.
    JetStream(Box<consumer::pull::Stream>),
    Core(async_nats::Subscriber),
}

impl fmt::Debug for NatsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSource")
            .field("dead_letter", &self.dead_letter)
            .finish_non_exhaustive()
    }
}

impl NatsSource {
    /// Connects, and for JetStream makes sure the stream and the durable
    /// consumer exist.
    ///
    /// # Errors
    /// A [`SinkSetupError`] naming the server, the stream or the setting.
    pub async fn connect(config: SourceConfig) -> Result<Self, SinkSetupError> {
        let subject = config.url.subject().to_owned();
        if subject.contains(['{', '}']) {
            return Err(SinkSetupError::Config {
                field: "source subject",
                problem: format!(
                    "{subject:?}: a source subject has no placeholders (wildcards * > are fine)"
                ),
            });
        }
        let client = connect_client(config.url.server(), "wsfleet source", PULL_BATCH).await?;
        let messages = match &config.mode {
            SourceMode::Core => {
                Messages::Core(client.subscribe(subject.clone()).await.map_err(|e| {
                    SinkSetupError::Config {
                        field: "source subject",
                        problem: format!("cannot subscribe to {subject:?}: {e}"),
                    }
                })?)
            }
            SourceMode::JetStream { stream, durable } => {
                let js = jetstream::new(client.clone());
                let stream_err = |problem: String| SinkSetupError::Stream {
                    name: stream.clone(),
                    problem,
                };
                let handle = js
                    .get_or_create_stream(stream::Config {
                        name: stream.clone(),
                        subjects: vec![subject.clone()],
                        storage: stream::StorageType::File,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| stream_err(format!("cannot get or create it: {e}")))?;
                let mut consumer: consumer::PullConsumer = handle
                    .get_or_create_consumer(
                        durable,
                        consumer::pull::Config {
                            durable_name: Some(durable.clone()),
                            filter_subject: subject.clone(),
                            ack_policy: consumer::AckPolicy::Explicit,
                            ack_wait: Duration::from_secs(30),
                            // Bounds what the server hands this fleet unacknowledged.
                            max_ack_pending: PULL_BATCH as i64,
                            ..Default::default()
                        },
                    )
                    .await
                    .map_err(|e| {
                        stream_err(format!("cannot get or create consumer {durable:?}: {e}"))
                    })?;
                // An existing consumer is used as it is: one listening on
                // another subject would hand this fleet other fleets' messages.
                let info = consumer
                    .info()
                    .await
                    .map_err(|e| stream_err(format!("cannot read consumer {durable:?}: {e}")))?;
                let filter = &info.config.filter_subject;
                if *filter != subject {
                    return Err(stream_err(format!(
                        "consumer {durable:?} exists and listens on {filter:?}, not {subject:?}: \
                         give this fleet its own consumer (--source-durable) or delete that one"
                    )));
                }
                let messages = consumer
                    .stream()
                    .max_messages_per_batch(PULL_BATCH)
                    .messages()
                    .await
                    .map_err(|e| {
                        stream_err(format!("cannot pull from consumer {durable:?}: {e}"))
                    })?;
                Messages::JetStream(Box::new(messages))
            }
        };
        Ok(Self {
            client,
            messages,
            dead_letter: config.dead_letter.map(Arc::from),
            counters: Arc::new(Counters::default()),
        })
    }

    /// A read-only handle on this source's counters, live for as long as
    /// the handle is kept (the source itself may be moved or dropped): what
    /// the admin endpoint's `/metrics` serves, as a
    /// [`MetricsSource`](wsfleet::admin::MetricsSource).
    pub fn metrics_handle(&self) -> SourceMetricsHandle {
        SourceMetricsHandle::new(self.counters.clone())
    }
}

impl Source for NatsSource {
    async fn next(&mut self) -> Option<Inbound> {
        loop {
            let (message, acker) = match &mut self.messages {
                Messages::Core(sub) => (sub.next().await?, None),
                Messages::JetStream(stream) => match stream.next().await? {
                    Ok(m) => {
                        let (message, acker) = m.split();
                        (message, Some(acker))
                    }
                    Err(e) => {
                        // Heartbeats missed, a reconnect: the client resumes.
                        tracing::warn!(error = %e, "NATS source: pull interrupted; resuming");
                        continue;
                    }
                },
            };
            self.counters.received.fetch_add(1, Ordering::Relaxed);
            let reply = message
                .headers
                .as_ref()
                .and_then(|h| h.get(headers::REPLY))
                .map(|v| v.as_str().to_owned())
                .or_else(|| {
                    // A JetStream message's own reply subject is its ack subject.
                    acker
                        .is_none()
                        .then(|| message.reply.as_ref().map(|r| r.to_string()))
                        .flatten()
                });
            let outbound = parse(message.headers.as_ref(), message.payload.clone());
            let settle = NatsSettle {
                client: self.client.clone(),
                acker,
                reply,
                dead_letter: self.dead_letter.clone(),
                counters: self.counters.clone(),
                subject: message.subject.to_string(),
            };
            return Some(Inbound::new(outbound, message.payload, Box::new(settle)));
        }
    }

    fn metrics(&self) -> SourceMetrics {
        SourceMetrics::read(&self.counters)
    }
}

/// The target and message the headers ask for.
fn parse(headers: Option<&HeaderMap>, body: Bytes) -> Result<(Target, Message), Undeliverable> {
    let get = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str().trim());
    let bad = |why: String| Undeliverable::BadHeaders(why);
    let number = |name: &str, value: &str, prefix: char| {
        value
            .strip_prefix(prefix)
            .unwrap_or(value)
            .parse::<u64>()
            .map_err(|_| bad(format!("{name}: {value:?} is not a number")))
    };
    let target = match (get(headers::CONN), get(headers::SLOT), get(headers::TARGET)) {
        (Some(c), None, None) => Target::Conn(ConnId(number(headers::CONN, c, 'c')?)),
        (None, Some(s), None) => {
            let n = number(headers::SLOT, s, 's')?;
            Target::Slot(SlotId(u32::try_from(n).map_err(|_| {
                bad(format!("{}: {s:?} is too large", headers::SLOT))
            })?))
        }
        (None, None, None) => Target::Any,
        (None, None, Some(t)) if t.eq_ignore_ascii_case("any") => Target::Any,
        (None, None, Some(t)) if t.eq_ignore_ascii_case("all") => Target::All,
        (None, None, Some(t)) => {
            return Err(bad(format!("{}: {t:?} is not any or all", headers::TARGET)));
        }
        _ => {
            return Err(bad(format!(
                "give one of {}, {}, {}",
                headers::CONN,
                headers::SLOT,
                headers::TARGET
            )));
        }
    };
    let message = match get(headers::KIND) {
        None => text(body)?,
        Some(k) if k.eq_ignore_ascii_case(Kind::Text.as_str()) => text(body)?,
        Some(k) if k.eq_ignore_ascii_case(Kind::Binary.as_str()) => Message::Binary(body),
        Some(k) => {
            return Err(bad(format!(
                "{}: {k:?} is not text or binary",
                headers::KIND
            )));
        }
    };
    Ok((target, message))
}

fn text(body: Bytes) -> Result<Message, Undeliverable> {
    Utf8Bytes::try_from(body).map(Message::Text).map_err(|_| {
        Undeliverable::BadHeaders(format!(
            "the body is not UTF-8; send it with {}: binary",
            headers::KIND
        ))
    })
}

struct NatsSettle {
    client: async_nats::Client,
    /// JetStream messages only.
    acker: Option<jetstream::message::Acker>,
    reply: Option<String>,
    dead_letter: Option<Arc<str>>,
    counters: Arc<Counters>,
    subject: String,
}

impl Settle for NatsSettle {
    fn settle(self: Box<Self>, outcome: &DeliverOutcome, body: Bytes) -> BoxFuture<'static, ()> {
        let outcome = outcome.clone();
        Box::pin(async move {
            match outcome {
                DeliverOutcome::Taken(_) => {
                    self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    if let Some(acker) = &self.acker
                        && let Err(e) = acker.ack().await
                    {
                        // Redelivered after ack_wait: the upstream may see it twice.
                        tracing::warn!(error = %e, "NATS source: ack failed; JetStream will redeliver");
                    }
                }
                DeliverOutcome::Undeliverable(why) => {
                    let to = self
                        .reply
                        .clone()
                        .or_else(|| self.dead_letter.as_deref().map(str::to_owned));
                    match to {
                        Some(to) => {
                            let mut headers = HeaderMap::new();
                            headers.insert(headers::ERROR, why.to_string().as_str());
                            headers.insert("Wsfleet-Subject", self.subject.as_str());
                            match self
                                .client
                                .publish_with_headers(to.clone(), headers, body)
                                .await
                            {
                                Ok(()) => {
                                    self.counters.answered.fetch_add(1, Ordering::Relaxed);
                                    tracing::info!(reason = %why, answered_on = %to, "outbound message not delivered; answered");
                                }
                                Err(e) => {
                                    self.counters.unanswered.fetch_add(1, Ordering::Relaxed);
                                    tracing::error!(reason = %why, error = %e, "outbound message not delivered, and the answer failed");
                                }
                            }
                        }
                        None => {
                            self.counters.unanswered.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(reason = %why, subject = %self.subject, "outbound message not delivered, with no reply subject and no dead-letter subject to answer on");
                        }
                    }
                    if let Some(acker) = &self.acker {
                        // Answered (or logged): redelivering would not help.
                        if let Err(e) = acker.ack_with(AckKind::Term).await {
                            tracing::warn!(error = %e, "NATS source: term failed; JetStream will redeliver");
                        }
                    }
                }
            }
        })
    }
}

/// Hands `inbound` to the fleet and settles it with the bus (acknowledged
/// when taken, answered when not; see the [module docs](self)). Waits while
/// the target's inbox is full (backpressure on the source).
pub async fn deliver(
    fleet: &FleetControl,
    monitor: &FleetMonitor,
    inbound: Inbound,
) -> DeliverOutcome {
    let Inbound {
        outbound,
        body,
        settle,
    } = inbound;
    let outcome = match outbound {
        Err(why) => DeliverOutcome::Undeliverable(why),
        Ok((target, message)) => {
            match target {
                Target::Conn(conn) => match fleet.send_to(conn, message).await {
                    Ok(()) => DeliverOutcome::Taken(1),
                    Err(_) => DeliverOutcome::Undeliverable(Undeliverable::UnknownConnection(conn)),
                },
                Target::Slot(slot) => {
                    let ready = monitor
                        .stats()
                        .connections
                        .into_iter()
                        .find(|c| c.slot == slot && c.state == ConnState::Ready)
                        .map(|c| c.id);
                    match ready {
                        Some(conn) => match fleet.send_to(conn, message).await {
                            Ok(()) => DeliverOutcome::Taken(1),
                            // It closed between the look-up and the send.
                            Err(_) => {
                                DeliverOutcome::Undeliverable(Undeliverable::SlotNotReady(slot))
                            }
                        },
                        None => DeliverOutcome::Undeliverable(Undeliverable::SlotNotReady(slot)),
                    }
                }
                Target::Any => match fleet.send(message).await {
                    Ok(_) => DeliverOutcome::Taken(1),
                    Err(_) => DeliverOutcome::Undeliverable(Undeliverable::NoReadyConnection),
                },
                Target::All => match fleet.broadcast(message).await {
                    0 => DeliverOutcome::Undeliverable(Undeliverable::NoReadyConnection),
                    n => DeliverOutcome::Taken(n),
                },
            }
        }
    };
    settle.settle(&outcome, body).await;
    outcome
}
