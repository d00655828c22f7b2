//! [`NatsSink`]: received messages to JetStream, each held until acknowledged.
//!
//! The pipeline: [`NatsSink::publish`] takes room in the window (count and
//! bytes), numbers the message on its connection and hands it to a
//! background task through a channel as long as the window (so handing
//! over never waits once room is taken). The task publishes in the order
//! taken, keeps each message until JetStream's ack, and on a timeout or an
//! error re-publishes, after a backoff, every unacknowledged message of
//! that connection in order; the `Nats-Msg-Id` header makes JetStream store
//! a message that was already stored only once (within the stream's
//! duplicate window). An ack frees the message (its budget charge goes
//! back with the last reference to its payload) and its room in the window.
//!
//! Order per connection: one NATS connection delivers publishes in order,
//! and a lost connection loses a tail of them, which is re-sent in order.
//! Nothing is handed to a client that is not connected: it would queue the
//! message and write it right after the reconnect, ahead of the earlier
//! ones the old connection lost. What can still reorder is a publish handed
//! over in the instant between the socket's death and the client noticing
//! it, or refused while a later one was stored (JetStream restarting
//! between the two); that is detected from the stream sequences in the
//! acks and counted in [`SinkMetrics::reordered`], never hidden.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, stream};
use async_nats::{HeaderMap, connection::State};
use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use wsfleet::Message;
use wsfleet::fleet::{Backoff, ConnId, FleetMonitor, SlotId};

use crate::headers;
use crate::{BusUrl, Kind, Received, Sink, SinkError, SinkMetricsHandle, SubjectTemplate};

/// Bytes counted per message on top of its payload: subject and headers.
const HEADER_ALLOWANCE: usize = 256;

/// How the sink delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// JetStream: each publish is acknowledged once stored; unacknowledged
    /// ones are retried (at least once, de-duplicated by message id).
    JetStream(StreamPolicy),
    /// Core NATS: handed to the client and forgotten (at most once; lost if
    /// the connection drops before the client wrote it, or no subscriber
    /// listens).
    Core,
}

/// Which JetStream stream stores the messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamPolicy {
    /// This stream, which must exist (checked at connect).
    Existing(String),
    /// This stream, created if missing (file storage, subjects: the subject
    /// template with each placeholder as `*`, the configured duplicate
    /// window); an existing one is used as it is.
    CreateIfMissing(String),
}

/// How to reach the bus and how much to hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfig {
    /// Server and subject template.
    pub url: BusUrl,
    /// JetStream (default, stream `WSFLEET` created if missing) or core.
    pub delivery: Delivery,
    /// Most messages held unacknowledged (default 256). When reached,
    /// `publish` waits: backpressure.
    pub max_in_flight: usize,
    /// Most payload bytes held unacknowledged (default 32 MiB). One message
    /// larger than this still goes, alone.
    pub max_in_flight_bytes: usize,
    /// How long to wait for one ack before re-publishing (default 5 s).
    pub ack_timeout: Duration,
    /// Wait before re-publishing a connection's unacknowledged messages,
    /// full jitter (default 100 ms doubling to 5 s).
    pub retry: Backoff,
    /// The duplicate window of a stream the sink creates (default 10 min):
    /// a message retried later than this after it was first stored would
    /// be stored twice.
    pub duplicate_window: Duration,
}

impl SinkConfig {
    /// JetStream into stream `WSFLEET` (created if missing), 256 messages
    /// and 32 MiB in flight, 5 s ack timeout.
    pub fn new(url: BusUrl) -> Self {
        Self {
            url,
            delivery: Delivery::JetStream(StreamPolicy::CreateIfMissing("WSFLEET".into())),
            max_in_flight: 256,
            max_in_flight_bytes: 32 << 20,
            ack_timeout: Duration::from_secs(5),
            retry: Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
                .unwrap_or_default(),
            duplicate_window: Duration::from_secs(600),
        }
    }
}

/// Why the sink could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum SinkSetupError {
    /// A setting is out of range.
    Config {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The server could not be reached.
    Connect {
        /// The server (password redacted).
        server: String,
        /// The client's error.
        error: String,
    },
    /// The stream is missing, or could not be created.
    Stream {
        /// The stream.
        name: String,
        /// What went wrong, and what to do.
        problem: String,
    },
}

impl std::fmt::Display for SinkSetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config { field, problem } => write!(f, "sink setting {field}: {problem}"),
            Self::Connect { server, error } => {
                write!(f, "cannot connect to NATS at {server}: {error}")
            }
            Self::Stream { name, problem } => write!(f, "JetStream stream {name:?}: {problem}"),
        }
    }
}

impl std::error::Error for SinkSetupError {}

/// The sink's counters, a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SinkMetrics {
    /// Messages published (first attempts).
    pub published: u64,
    /// Messages JetStream acknowledged (delivered). Core NATS: 0.
    pub acked: u64,
    /// Of `acked`: acknowledged as duplicates (a retry of a message that had
    /// been stored; stored once).
    pub duplicates: u64,
    /// Re-publishes after a timeout or an error.
    pub retried: u64,
    /// Messages refused for good, each logged with its connection: larger
    /// than the server's max_payload, or (core NATS) not taken by the
    /// client.
    pub rejected: u64,
    /// Acks showing a message stored out of order with another of its
    /// connection (a consumer can restore the order by `Wsfleet-Seq`).
    pub reordered: u64,
    /// Messages held now, awaiting their ack.
    pub in_flight: usize,
    /// Their payload bytes.
    pub in_flight_bytes: usize,
    /// Time `publish` waited for room in the window (the fleet was paused
    /// for the sink meanwhile).
    pub paused: Duration,
}

/// The sink's counters, shared by the sink, its publishing task and any
/// [`SinkMetricsHandle`]; [`SinkMetrics`] documents each.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) published: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) reordered: AtomicU64,
    pub(crate) paused_ns: AtomicU64,
}

/// Room for unacknowledged messages: a count and a byte bound.
#[derive(Debug)]
pub(crate) struct Window {
    held: Mutex<(usize, usize)>,
    changed: Notify,
    max_count: usize,
    max_bytes: usize,
}

impl Window {
    /// An empty window of `max_count` messages and `max_bytes` bytes (at
    /// least 1).
    pub(crate) fn new(max_count: usize, max_bytes: usize) -> Self {
        Self {
            held: Mutex::new((0, 0)),
            changed: Notify::new(),
            max_count,
            max_bytes: max_bytes.max(1),
        }
    }

    /// Messages and bytes held now.
    pub(crate) fn held(&self) -> (usize, usize) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes room for `bytes`; false if there is none now.
    pub(crate) fn try_take(&self, bytes: usize) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let (count, used) = *held;
        // An empty window takes any one message, else a huge one would wait forever.
        if count == 0 || (count < self.max_count && used + bytes <= self.max_bytes) {
            *held = (count + 1, used + bytes);
            true
        } else {
            false
        }
    }

    /// Waits for room for `bytes`; returns how long it waited.
    async fn take(&self, bytes: usize) -> Duration {
        let mut started = None;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.try_take(bytes) {
                return started.map_or(Duration::ZERO, |s: Instant| s.elapsed());
            }
            started.get_or_insert_with(Instant::now);
            changed.await;
        }
    }

    fn give_back(&self, bytes: usize) {
        {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            held.0 = held.0.saturating_sub(1);
            held.1 = held.1.saturating_sub(bytes);
        }
        self.changed.notify_waiters();
    }

    async fn empty(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.held().0 == 0 {
                return;
            }
            changed.await;
        }
    }
}

/// Publishes received messages to NATS; see the [module docs](self).
#[derive(Debug)]
pub struct NatsSink {
    client: async_nats::Client,
    template: SubjectTemplate,
    /// Per slot: its upstream URL (redacted) and host (for `{host}`).
    slots: HashMap<SlotId, (String, String)>,
    instance: String,
    /// Per live connection: the last sequence number given. Bounded by the
    /// connections the fleet has, as long as `connection_ended` is called.
    seqs: HashMap<ConnId, u64>,
    core: bool,
    window: Arc<Window>,
    counters: Arc<Counters>,
    to_driver: Option<mpsc::Sender<(ConnId, Entry)>>,
    driver: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    subject: String,
    headers: HeaderMap,
    /// The received payload itself (not a copy): its charge stays with it.
    payload: Bytes,
    bytes: usize,
}

impl NatsSink {
    /// Connects to the server, checks or creates the stream, and starts the
    /// publishing task. Slot URLs (for headers and `{host}`) are read from
    /// `fleet` once: a slot's URL never changes.
    ///
    /// # Errors
    /// A [`SinkSetupError`] naming the setting, the server or the stream.
    pub async fn connect(config: SinkConfig, fleet: &FleetMonitor) -> Result<Self, SinkSetupError> {
        let template =
            SubjectTemplate::parse(config.url.subject()).map_err(|e| SinkSetupError::Config {
                field: "subject",
                problem: e.to_string(),
            })?;
        if config.max_in_flight == 0 || config.max_in_flight > 1 << 20 {
            return Err(SinkSetupError::Config {
                field: "max_in_flight",
                problem: format!("{} is not in 1..=1048576", config.max_in_flight),
            });
        }
        if config.ack_timeout.is_zero() {
            return Err(SinkSetupError::Config {
                field: "ack_timeout",
                problem: "must be above zero".into(),
            });
        }
        let client =
            connect_client(config.url.server(), "wsfleet sink", config.max_in_flight).await?;
        let core = matches!(config.delivery, Delivery::Core);
        let mut js = jetstream::ContextBuilder::new()
            .timeout(config.ack_timeout)
            // Our window bounds what is in flight; this only has to exceed
            // it (stale attempts of retried messages included).
            .max_ack_inflight(config.max_in_flight.saturating_mul(4))
            .backpressure_on_inflight(true)
            .build(client.clone());
        js.set_timeout(config.ack_timeout);
        if let Delivery::JetStream(policy) = &config.delivery {
            setup_stream(&js, policy, &template, config.duplicate_window).await?;
        }
        let mut slots = HashMap::new();
        for info in fleet.stats().connections {
            let host = url::Url::parse(&info.url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_default();
            slots.insert(info.slot, (crate::redact_url(&info.url), host));
        }
        let window = Arc::new(Window::new(
            config.max_in_flight,
            config.max_in_flight_bytes,
        ));
        let counters = Arc::new(Counters::default());
        let (to_driver, driver) = if core {
            (None, None)
        } else {
            // As long as the window: a message with room never waits here.
            let (tx, rx) = mpsc::channel(config.max_in_flight);
            let driver = Driver {
                js,
                client: client.clone(),
                rx,
                queues: HashMap::new(),
                acks: FuturesUnordered::new(),
                window: window.clone(),
                counters: counters.clone(),
                retry: config.retry,
            };
            (Some(tx), Some(tokio::spawn(driver.run())))
        };
        Ok(Self {
            client,
            template,
            slots,
            instance: instance_id(),
            seqs: HashMap::new(),
            core,
            window,
            counters,
            to_driver,
            driver,
        })
    }

    /// This sink's instance id, the first part of every `Nats-Msg-Id`.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// A read-only handle on this sink's counters, live for as long as the
    /// handle is kept (the sink itself may be moved or dropped): what the
    /// admin endpoint's `/metrics` serves, as a
    /// [`MetricsSource`](wsfleet::admin::MetricsSource).
    pub fn metrics_handle(&self) -> SinkMetricsHandle {
        SinkMetricsHandle::new(self.counters.clone(), self.window.clone())
    }

    fn entry(&mut self, received: Received) -> Entry {
        let seq = self.seqs.entry(received.conn).or_insert(0);
        *seq += 1;
        let seq = *seq;
        let (url, host) = self
            .slots
            .get(&received.slot)
            .map_or(("", ""), |(u, h)| (u.as_str(), h.as_str()));
        let subject = self.template.render(received.conn, received.slot, host);
        let kind = Kind::of(&received.message);
        let mut headers = HeaderMap::new();
        headers.insert(headers::CONN, received.conn.0.to_string().as_str());
        headers.insert(headers::SLOT, received.slot.0.to_string().as_str());
        headers.insert(headers::URL, url);
        let ms = received
            .received_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        headers.insert(headers::RECEIVED, ms.to_string().as_str());
        headers.insert(headers::KIND, kind.as_str());
        headers.insert(headers::SEQ, seq.to_string().as_str());
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("{}-{}-{}", self.instance, received.conn.0, seq).as_str(),
        );
        let payload = match received.message {
            Message::Text(t) => t.into_bytes(),
            Message::Binary(b) => b,
        };
        let bytes = payload.len() + HEADER_ALLOWANCE;
        Entry {
            seq,
            subject,
            headers,
            payload,
            bytes,
        }
    }
}

impl Sink for NatsSink {
    async fn publish(&mut self, received: Received) -> Result<(), SinkError> {
        let conn = received.conn;
        let entry = self.entry(received);
        if self.core {
            if entry.payload.len() + HEADER_ALLOWANCE > self.client.server_info().max_payload
                && self.client.server_info().max_payload > 0
            {
                reject(
                    &self.counters,
                    conn,
                    &entry,
                    self.client.server_info().max_payload,
                );
                return Ok(());
            }
            let paused = Instant::now();
            // Waits while the client's command queue (bounded) is full.
            let result = self
                .client
                .publish_with_headers(entry.subject, entry.headers, entry.payload)
                .await;
            self.counters
                .paused_ns
                .fetch_add(nanos(paused.elapsed()), Ordering::Relaxed);
            return match result {
                Ok(()) => {
                    self.counters.published.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
                Err(e) => {
                    self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%conn, error = %e, "core NATS publish failed; message dropped (at most once)");
                    Ok(())
                }
            };
        }
        let waited = self.window.take(entry.bytes).await;
        if !waited.is_zero() {
            self.counters
                .paused_ns
                .fetch_add(nanos(waited), Ordering::Relaxed);
        }
        let bytes = entry.bytes;
        let Some(tx) = &self.to_driver else {
            return Err(SinkError::Closed);
        };
        if tx.send((conn, entry)).await.is_err() {
            self.window.give_back(bytes);
            return Err(SinkError::Closed);
        }
        // Counted when handed over, as its room in the window was taken.
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn connection_ended(&mut self, conn: ConnId) {
        self.seqs.remove(&conn);
    }

    async fn flush(&mut self, within: Duration) -> Result<(), SinkError> {
        let started = Instant::now();
        let done = async {
            if self.core {
                let _ = self.client.flush().await;
            } else {
                self.window.empty().await;
            }
        };
        match tokio::time::timeout(within, done).await {
            Ok(()) => Ok(()),
            Err(_) => Err(SinkError::FlushTimedOut {
                unacknowledged: self.window.held().0,
                waited: started.elapsed(),
            }),
        }
    }

    fn metrics(&self) -> SinkMetrics {
        SinkMetrics::read(&self.counters, &self.window)
    }
}

impl Drop for NatsSink {
    fn drop(&mut self) {
        // Whatever is unacknowledged now is given up: call `flush` first.
        if let Some(driver) = &self.driver {
            driver.abort();
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn reject(counters: &Counters, conn: ConnId, entry: &Entry, max_payload: usize) {
    counters.rejected.fetch_add(1, Ordering::Relaxed);
    tracing::error!(
        %conn,
        seq = entry.seq,
        bytes = entry.payload.len(),
        max_payload,
        "message larger than the NATS server's max_payload: not published \
         (raise max_payload on the server, or lower --max-message)"
    );
}

/// A random id for this sink: message ids of two runs never collide.
fn instance_id() -> String {
    let mut buf = [0u8; 8];
    if getrandom::fill(&mut buf).is_err() {
        // No OS randomness: the clock and pid still separate runs.
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        buf = (t ^ u64::from(std::process::id()) << 32).to_be_bytes();
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) async fn connect_client(
    server: &str,
    name: &str,
    capacity: usize,
) -> Result<async_nats::Client, SinkSetupError> {
    async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        // Bounded: the client's queue of commands not yet written.
        .client_capacity(capacity.saturating_mul(4).clamp(64, 1 << 16))
        // Reconnect forever, quickly at first, at most every 2 s.
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            let shift = u32::try_from(attempts.min(5)).unwrap_or(5);
            Duration::from_millis(50u64 << shift).min(Duration::from_secs(2))
        })
        .event_callback(|event| async move {
            tracing::info!(%event, "NATS connection");
        })
        .connect(server)
        .await
        .map_err(|e| SinkSetupError::Connect {
            server: crate::redact_url(server),
            error: e.to_string(),
        })
}

async fn setup_stream(
    js: &jetstream::Context,
    policy: &StreamPolicy,
    template: &SubjectTemplate,
    duplicate_window: Duration,
) -> Result<(), SinkSetupError> {
    match policy {
        StreamPolicy::Existing(name) => {
            js.get_stream(name)
                .await
                .map_err(|e| SinkSetupError::Stream {
                    name: name.clone(),
                    problem: format!(
                        "{e}; create it (covering the sink's subject) or let the sink create it"
                    ),
                })?;
        }
        StreamPolicy::CreateIfMissing(name) => {
            let config = stream::Config {
                name: name.clone(),
                subjects: vec![template.wildcard()],
                duplicate_window,
                storage: stream::StorageType::File,
                ..Default::default()
            };
            js.get_or_create_stream(config)
                .await
                .map_err(|e| SinkSetupError::Stream {
                    name: name.clone(),
                    problem: format!(
                        "cannot create it: {e} (an existing stream may already take subject {})",
                        template.wildcard()
                    ),
                })?;
        }
    }
    Ok(())
}

/// One connection's unacknowledged messages, in order.
#[derive(Debug, Default)]
struct ConnQueue {
    entries: BTreeMap<u64, Entry>,
    /// Bumped on each failure: an error from an older attempt is stale.
    generation: u64,
    failures: u32,
    retry_at: Option<tokio::time::Instant>,
    /// The highest sequence acknowledged and its stream sequence.
    acked_high: (u64, u64),
}

struct AckDone {
    conn: ConnId,
    seq: u64,
    generation: u64,
    result: Result<PublishAck, PublishError>,
}

struct Driver {
    js: jetstream::Context,
    client: async_nats::Client,
    rx: mpsc::Receiver<(ConnId, Entry)>,
    queues: HashMap<ConnId, ConnQueue>,
    /// Bounded by the window (plus stale attempts, each ending within the
    /// ack timeout).
    acks: FuturesUnordered<BoxFuture<'static, AckDone>>,
    window: Arc<Window>,
    counters: Arc<Counters>,
    retry: Backoff,
}

impl Driver {
    async fn run(mut self) {
        let mut open = true;
        loop {
            let next_retry = self.queues.values().filter_map(|q| q.retry_at).min();
            tokio::select! {
                biased;
                Some(done) = self.acks.next(), if !self.acks.is_empty() => self.on_ack(done),
                () = sleep_until(next_retry), if next_retry.is_some() => self.resend_due().await,
                taken = self.rx.recv(), if open => match taken {
                    Some((conn, entry)) => self.on_new(conn, entry).await,
                    None => open = false,
                },
                else => return,
            }
        }
    }

    async fn on_new(&mut self, conn: ConnId, entry: Entry) {
        let seq = entry.seq;
        let queue = self.queues.entry(conn).or_default();
        let waiting = queue.retry_at.is_some();
        let generation = queue.generation;
        let publish = attempt(&entry);
        queue.entries.insert(seq, entry);
        // While a retry is pending, it goes with the retry, in order.
        if !waiting {
            self.send(conn, seq, generation, publish).await;
        }
    }

    /// Publishes one attempt; on a refusal, schedules the connection's retry.
    async fn send(&mut self, conn: ConnId, seq: u64, generation: u64, publish: Attempt) {
        if self.client.connection_state() != State::Connected {
            // The client would queue it and write it first thing after the
            // reconnect, ahead of the earlier messages lost with the old
            // connection: stored out of order. It waits for the retry.
            self.failed(conn, generation, &Failure::Disconnected);
            return;
        }
        match self.js.send_publish(publish.subject, publish.message).await {
            Ok(ack) => self.acks.push(Box::pin(async move {
                AckDone {
                    conn,
                    seq,
                    generation,
                    result: ack.await,
                }
            })),
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                if let Some(queue) = self.queues.get_mut(&conn)
                    && let Some(entry) = queue.entries.remove(&seq)
                {
                    let max_payload = self.client.server_info().max_payload;
                    reject(&self.counters, conn, &entry, max_payload);
                    self.window.give_back(entry.bytes);
                }
            }
            Err(e) => self.failed(conn, generation, &Failure::Publish(e)),
        }
    }

    fn on_ack(&mut self, done: AckDone) {
        let Some(queue) = self.queues.get_mut(&done.conn) else {
            return; // a stale attempt of messages acknowledged since
        };
        match done.result {
            Ok(ack) => {
                let Some(entry) = queue.entries.remove(&done.seq) else {
                    return;
                };
                self.window.give_back(entry.bytes);
                self.counters.acked.fetch_add(1, Ordering::Relaxed);
                if ack.duplicate {
                    self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                let (high, high_stream) = queue.acked_high;
                // Acks are handled in any order: an inversion shows either
                // way round against the highest acknowledged so far.
                let inverted = (done.seq < high && ack.sequence > high_stream)
                    || (done.seq > high && ack.sequence < high_stream);
                if inverted {
                    self.counters.reordered.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(conn = %done.conn, seq = done.seq, "message stored out of order with another of its connection");
                }
                if done.seq > high {
                    queue.acked_high = (done.seq, ack.sequence);
                }
                queue.failures = 0;
                if queue.entries.is_empty() && queue.retry_at.is_none() {
                    self.queues.remove(&done.conn);
                }
            }
            Err(e) => {
                if queue.entries.contains_key(&done.seq) {
                    self.failed(done.conn, done.generation, &Failure::Publish(e));
                }
            }
        }
    }

    /// An attempt of `conn` failed: once per generation, schedule a resend
    /// of all its unacknowledged messages.
    fn failed(&mut self, conn: ConnId, generation: u64, error: &Failure) {
        let Some(queue) = self.queues.get_mut(&conn) else {
            return;
        };
        if generation != queue.generation || queue.retry_at.is_some() {
            return;
        }
        queue.generation += 1;
        let delay = self.retry.delay(queue.failures, unit_random());
        queue.failures = queue.failures.saturating_add(1);
        queue.retry_at = Some(tokio::time::Instant::now() + delay);
        if queue.failures == 1 {
            tracing::warn!(%conn, %error, unacknowledged = queue.entries.len(), ?delay, "publish not acknowledged; re-publishing in order");
        } else {
            tracing::debug!(%conn, %error, failures = queue.failures, ?delay, "publish not acknowledged again");
        }
    }

    async fn resend_due(&mut self) {
        let now = tokio::time::Instant::now();
        let due: Vec<ConnId> = self
            .queues
            .iter()
            .filter(|(_, q)| q.retry_at.is_some_and(|t| t <= now))
            .map(|(c, _)| *c)
            .collect();
        let connected = self.client.connection_state() == State::Connected;
        for conn in due {
            let Some(queue) = self.queues.get_mut(&conn) else {
                continue;
            };
            if !connected {
                // Re-sending into a disconnected client would only queue
                // copies of the same messages: wait for the server.
                let delay = self.retry.delay(queue.failures, unit_random());
                queue.failures = queue.failures.saturating_add(1);
                queue.retry_at = Some(now + delay.max(Duration::from_millis(100)));
                continue;
            }
            queue.retry_at = None;
            let generation = queue.generation;
            let attempts: Vec<(u64, Attempt)> = queue
                .entries
                .iter()
                .map(|(s, e)| (*s, attempt(e)))
                .collect();
            self.counters
                .retried
                .fetch_add(attempts.len() as u64, Ordering::Relaxed);
            for (seq, publish) in attempts {
                self.send(conn, seq, generation, publish).await;
                if self
                    .queues
                    .get(&conn)
                    .is_none_or(|q| q.generation != generation)
                {
                    break; // failed again: the rest goes with the next retry
                }
            }
        }
    }
}

/// Why a connection's unacknowledged messages are re-published.
#[derive(Debug)]
enum Failure {
    /// A publish or its ack failed (timeout, refusal, lost connection).
    Publish(PublishError),
    /// The client was found disconnected before handing a message over.
    Disconnected,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Publish(e) => e.fmt(f),
            Self::Disconnected => f.write_str("disconnected from the NATS server"),
        }
    }
}

struct Attempt {
    subject: String,
    message: PublishMessage,
}

/// One publish of `entry`: shares its payload and headers, copies nothing.
fn attempt(entry: &Entry) -> Attempt {
    Attempt {
        subject: entry.subject.clone(),
        message: PublishMessage::build()
            .payload(entry.payload.clone())
            .headers(entry.headers.clone()),
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Uniform in [0, 1) for the backoff's jitter; the clock's nanoseconds are
/// random enough to spread retries.
fn unit_random() -> f64 {
    let mut buf = [0u8; 4];
    let bits = if getrandom::fill(&mut buf).is_ok() {
        u32::from_be_bytes(buf)
    } else {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    };
    f64::from(bits) / (f64::from(u32::MAX) + 1.0)
}
