//! The bus against a real `nats-server -js` (wsfleet-testkit's
//! [`NatsServer`]) and real upstreams (`wsfleet serve --chaos stream`'s
//! server, numbering its messages; the echo server), all on loopback.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures_util::StreamExt as _;
use wsfleet::fleet::{ConnId, EventKind, Events, Fleet, FleetMonitor};
use wsfleet::serve::{ChaosMode, ChaosServer, ChaosSettings, EchoServer};
use wsfleet::{ConnectionConfig, Message};
use wsfleet_bus::{
    BusUrl, DeliverOutcome, NatsSink, NatsSource, Received, Sink, SinkConfig, Source, SourceConfig,
    SourceMode, Undeliverable, deliver, headers,
};
use wsfleet_testkit::{NatsOptions, NatsServer};

/// Every test ends within this, whatever happens.
const TEST_LIMIT: Duration = Duration::from_secs(40);

async fn limited<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(TEST_LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: did not finish within {TEST_LIMIT:?}"))
}

/// The per-connection sequence numbers the chaos stream server wrote.
fn chaos_seq(payload: &[u8]) -> u64 {
    u64::from_be_bytes(payload[..8].try_into().expect("8-byte sequence number"))
}

/// What the test saw come out of the fleet: per connection, the upstream's
/// sequence numbers in order.
type Seen = HashMap<u64, Vec<u64>>;

/// Takes events into `sink` until the fleet's events end (after its
/// shutdown), recording what was received; hands back the sink.
fn pump(mut events: Events, mut sink: NatsSink) -> tokio::task::JoinHandle<(NatsSink, Seen)> {
    tokio::spawn(async move {
        let mut seen = Seen::new();
        while let Some(event) = events.recv().await {
            match event.kind {
                EventKind::Message(message) => {
                    let payload: Bytes = match &message {
                        Message::Binary(b) => b.clone(),
                        Message::Text(t) => t.as_bytes().clone(),
                    };
                    seen.entry(event.conn.0)
                        .or_default()
                        .push(chaos_seq(&payload));
                    drop(payload);
                    sink.publish(Received {
                        conn: event.conn,
                        slot: event.slot,
                        message,
                        received_at: SystemTime::now(),
                    })
                    .await
                    .expect("sink publishes");
                }
                EventKind::Disconnected(_) => sink.connection_ended(event.conn),
                _ => {}
            }
        }
        (sink, seen)
    })
}

/// Samples the budget's use every 10 ms for `period`: the highest seen.
async fn budget_peak(monitor: &FleetMonitor, period: Duration) -> usize {
    let until = Instant::now() + period;
    let mut peak = 0;
    while Instant::now() < until {
        peak = peak.max(monitor.budget().used());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    peak
}

/// Shuts the fleet down, lets the pump take what is left, flushes the sink.
async fn finish(fleet: Fleet, pump: tokio::task::JoinHandle<(NatsSink, Seen)>) -> (NatsSink, Seen) {
    fleet.shutdown().await;
    let (mut sink, seen) = pump.await.expect("the pump ends with the events");
    sink.flush(Duration::from_secs(15))
        .await
        .expect("everything acknowledged");
    (sink, seen)
}

/// Every message of `stream`: (conn, Wsfleet-Seq, chaos sequence, msg id).
async fn stored(server: &NatsServer, stream: &str) -> Vec<(u64, u64, u64, String)> {
    let client = async_nats::connect(server.url())
        .await
        .expect("connect to read back");
    let js = jetstream::new(client);
    let mut handle = js.get_stream(stream).await.expect("the stream exists");
    let count = handle.info().await.expect("stream info").state.messages;
    let consumer = handle
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await
        .expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut out = Vec::new();
    while (out.len() as u64) < count {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("stored messages arrive")
            .expect("stream goes on")
            .expect("a message");
        let h = m.headers.as_ref().expect("headers");
        let num = |name: &str| {
            h.get(name)
                .expect(name)
                .as_str()
                .parse::<u64>()
                .expect(name)
        };
        out.push((
            num(headers::CONN),
            num(headers::SEQ),
            chaos_seq(&m.payload),
            h.get("Nats-Msg-Id").expect("msg id").as_str().to_owned(),
        ));
    }
    out
}

/// What [`check_exactly_once`] found.
#[derive(Debug)]
struct Stored {
    received: usize,
    stored: usize,
    duplicates: usize,
    /// Messages stored after a later one of their connection.
    misplaced: usize,
}

/// Checks that `stored` holds exactly what `seen` received, once each
/// (compared in `Wsfleet-Seq` order per connection), and counts the
/// messages stored out of order.
fn check_exactly_once(seen: &Seen, stored: &[(u64, u64, u64, String)]) -> Stored {
    let mut ids = HashSet::new();
    let duplicates = stored.iter().filter(|s| !ids.insert(s.3.clone())).count();
    let mut by_conn: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
    for (conn, seq, chaos, _) in stored {
        by_conn.entry(*conn).or_default().push((*seq, *chaos));
    }
    let mut misplaced = 0;
    for (conn, list) in &mut by_conn {
        let mut high = 0;
        let mut first = Vec::new();
        for (i, (seq, _)) in list.iter().enumerate() {
            if *seq < high {
                misplaced += 1;
                if first.len() < 12 {
                    first.push((i, *seq));
                }
            }
            high = high.max(*seq);
        }
        if !first.is_empty() {
            eprintln!(
                "connection {conn}: {} stored, first misplaced (index, Wsfleet-Seq): {first:?}",
                list.len()
            );
        }
        list.sort_unstable();
        for (i, (seq, _)) in list.iter().enumerate() {
            assert_eq!(
                *seq as usize,
                i + 1,
                "connection {conn}: Wsfleet-Seq {} missing or doubled",
                i + 1
            );
        }
    }
    for (conn, got) in seen {
        let stored: Vec<u64> = by_conn
            .get(conn)
            .map(|l| l.iter().map(|(_, chaos)| *chaos).collect())
            .unwrap_or_default();
        assert_eq!(
            &stored, got,
            "connection {conn}: stored differs from received"
        );
    }
    assert_eq!(
        by_conn.len(),
        seen.len(),
        "a connection stored that never received"
    );
    Stored {
        received: seen.values().map(Vec::len).sum(),
        stored: stored.len(),
        duplicates,
        misplaced,
    }
}

async fn stream_fleet(budget: usize, interval: Duration) -> (ChaosServer, Fleet) {
    let upstream = ChaosServer::bind_with(
        "127.0.0.1:0",
        ChaosMode::Stream,
        ChaosSettings::default()
            .with_message_size(1024)
            .with_interval(interval),
    )
    .await
    .expect("chaos stream server");
    let fleet = Fleet::builder(upstream.url())
        .connections(4)
        .memory_budget(budget)
        .spawn()
        .expect("fleet");
    (upstream, fleet)
}

fn sink_config(server: &NatsServer, subject: &str, stream: &str) -> SinkConfig {
    let mut config = SinkConfig::new(BusUrl::new(server.url(), subject));
    config.delivery =
        wsfleet_bus::Delivery::JetStream(wsfleet_bus::StreamPolicy::CreateIfMissing(stream.into()));
    config.ack_timeout = Duration::from_secs(1);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_received_message_is_stored_once_in_order() {
    limited("exactly once", async {
        let nats = NatsServer::start().await.expect("nats-server");
        let (_upstream, mut fleet) = stream_fleet(64 << 20, Duration::from_millis(2)).await;
        let monitor = fleet.monitor();
        let events = fleet.events().expect("events");
        let sink = NatsSink::connect(sink_config(&nats, "feeds.{slot}", "FEEDS"), &monitor)
            .await
            .expect("sink connects");
        let pumping = pump(events, sink);
        tokio::time::sleep(Duration::from_secs(4)).await;
        let (sink, seen) = finish(fleet, pumping).await;
        let stored = stored(&nats, "FEEDS").await;
        let found = check_exactly_once(&seen, &stored);
        let m = sink.metrics();
        eprintln!("{found:?}, metrics {m:?}");
        assert!(
            found.received > 1000,
            "the upstream sent too little: {found:?}"
        );
        assert_eq!(found.duplicates, 0);
        assert_eq!(found.misplaced, 0, "stored out of order");
        assert_eq!(m.reordered, 0);
        assert_eq!(found.stored, found.received, "stored differs from received");
        assert_eq!(m.acked as usize, found.received);
        assert_eq!(m.in_flight, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_and_restarted_loses_nothing_and_stores_no_duplicate() {
    limited("kill and restart", async {
        // With the server's default sync interval, JetStream acknowledges
        // messages it has not written yet, and a SIGKILL loses them (seen:
        // 4-5 acknowledged messages per connection). Synced writes are what
        // "acknowledged means stored" needs from the server.
        let mut nats = NatsServer::start_with(NatsOptions { sync_always: true })
            .await
            .expect("nats-server");
        let budget = 4 << 20;
        let (_upstream, mut fleet) = stream_fleet(budget, Duration::from_millis(1)).await;
        let monitor = fleet.monitor();
        let events = fleet.events().expect("events");
        let sink = NatsSink::connect(sink_config(&nats, "feeds.{conn}", "FEEDS"), &monitor)
            .await
            .expect("sink connects");
        let pumping = pump(events, sink);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let received_before = monitor.stats().totals.msgs_in;
        nats.kill().await.expect("SIGKILL nats-server");
        // The outage: the sink's window fills, the fleet pauses.
        let outage_peak = budget_peak(&monitor, Duration::from_secs(5)).await;
        let received_during = monitor.stats().totals.msgs_in;
        nats.restart().await.expect("restart nats-server on the same store");
        tokio::time::sleep(Duration::from_secs(4)).await;
        let (sink, seen) = finish(fleet, pumping).await;
        let stored = stored(&nats, "FEEDS").await;
        let found = check_exactly_once(&seen, &stored);
        let m = sink.metrics();
        eprintln!(
            "{found:?}; \
             budget peak during the outage {outage_peak} of {budget} (fleet peak {}); \
             fleet received {received_before} before the outage, {received_during} at its end; metrics {m:?}",
            monitor.budget().peak()
        );
        assert_eq!(found.duplicates, 0);
        // The sink holds new messages while it is disconnected, so the
        // window for a reorder is the instant between the socket's death
        // and the client noticing; whatever happens, it is never hidden.
        assert!(
            found.misplaced == 0 || m.reordered > 0,
            "{} messages stored out of order and the sink counted none",
            found.misplaced
        );
        assert!(outage_peak <= budget, "budget exceeded during the outage");
        assert!(monitor.budget().peak() <= budget);
        assert!(m.retried > 0, "the outage made the sink retry");
        assert_eq!(found.stored, found.received, "stored differs from received");
        assert_eq!(m.acked as usize, found.received);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_messages_reach_their_connection_and_undeliverable_ones_are_answered() {
    limited("source", async {
        let nats = NatsServer::start().await.expect("nats-server");
        let echo = EchoServer::bind("127.0.0.1:0", ConnectionConfig::default())
            .await
            .expect("echo server");
        let mut fleet = Fleet::builder(echo.url())
            .connections(3)
            .spawn()
            .expect("fleet");
        let monitor = fleet.monitor();
        let mut events = fleet.events().expect("events");
        let mut ready = Vec::new();
        while ready.len() < 3 {
            let e = tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await
                .expect("connections come up")
                .expect("fleet runs");
            if let EventKind::Connected { .. } = e.kind {
                ready.push((e.conn, e.slot));
            }
        }
        let mut config = SourceConfig::new(BusUrl::new(nats.url(), "out.fleet"));
        config.mode = SourceMode::JetStream {
            stream: "OUT".into(),
            durable: "wsfleet".into(),
        };
        config.dead_letter = Some("out.dead".into());
        let mut source = NatsSource::connect(config).await.expect("source connects");

        let client = async_nats::connect(nats.url()).await.expect("client");
        let mut dead = client
            .subscribe("out.dead")
            .await
            .expect("subscribe dead letters");
        let js = jetstream::new(client.clone());
        let send = |headers: Vec<(&'static str, String)>, body: &'static str| {
            let js = js.clone();
            async move {
                let mut h = async_nats::HeaderMap::new();
                for (k, v) in headers {
                    h.insert(k, v.as_str());
                }
                js.publish_with_headers("out.fleet", h, Bytes::from_static(body.as_bytes()))
                    .await
                    .expect("publish")
                    .await
                    .expect("stored");
            }
        };
        // One for each connection by id, one by slot, one to a closed id.
        for (conn, _) in &ready {
            send(vec![(headers::CONN, conn.0.to_string())], "to-conn").await;
        }
        let (slot_conn, slot) = ready[1];
        send(vec![(headers::SLOT, slot.0.to_string())], "to-slot").await;
        send(vec![(headers::CONN, "999999".into())], "to-nobody").await;

        let mut outcomes = Vec::new();
        for _ in 0..5 {
            let inbound = tokio::time::timeout(Duration::from_secs(10), source.next())
                .await
                .expect("the source yields")
                .expect("source open");
            outcomes.push(deliver(&fleet.control(), &monitor, inbound).await);
        }
        assert_eq!(outcomes[..4], vec![DeliverOutcome::Taken(1); 4]);
        assert_eq!(
            outcomes[4],
            DeliverOutcome::Undeliverable(Undeliverable::UnknownConnection(ConnId(999_999)))
        );
        // The echo server answers each on the connection it was sent to.
        let mut echoed: HashMap<ConnId, Vec<String>> = HashMap::new();
        while echoed.values().map(Vec::len).sum::<usize>() < 4 {
            let e = tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await
                .expect("echoes arrive")
                .expect("fleet runs");
            if let EventKind::Message(m) = e.kind {
                echoed
                    .entry(e.conn)
                    .or_default()
                    .push(m.as_text().expect("text").to_owned());
            }
        }
        for (conn, _) in &ready {
            let mut want = vec!["to-conn".to_owned()];
            if *conn == slot_conn {
                want.push("to-slot".into());
            }
            assert_eq!(echoed.get(conn), Some(&want), "connection {conn}");
        }
        let answer = tokio::time::timeout(Duration::from_secs(10), dead.next())
            .await
            .expect("the dead letter arrives")
            .expect("subscription open");
        let reason = answer
            .headers
            .as_ref()
            .and_then(|h| h.get(headers::ERROR))
            .expect("reason");
        assert!(reason.as_str().contains("unknown connection"), "{reason:?}");
        assert_eq!(&answer.payload[..], b"to-nobody");
        let m = source.metrics();
        assert_eq!(
            (m.received, m.delivered, m.answered, m.unanswered),
            (5, 4, 1, 0)
        );
        fleet.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_consumer_listening_on_another_subject_is_refused() {
    limited("durable filter", async {
        let nats = NatsServer::start().await.expect("nats-server");
        let client = async_nats::connect(nats.url()).await.expect("client");
        jetstream::new(client)
            .create_stream(jetstream::stream::Config {
                name: "OUT".into(),
                subjects: vec!["out.*".into()],
                ..Default::default()
            })
            .await
            .expect("stream");
        let source = |subject: &str, durable: &str| {
            let mut config = SourceConfig::new(BusUrl::new(nats.url(), subject));
            config.mode = SourceMode::JetStream {
                stream: "OUT".into(),
                durable: durable.into(),
            };
            NatsSource::connect(config)
        };
        let _shard0 = source("out.0", "shared").await.expect("first shard");
        let Err(e) = source("out.1", "shared").await else {
            panic!("a second shard on the same consumer is refused");
        };
        let e = e.to_string();
        assert!(
            e.contains("\"shared\"") && e.contains("out.0") && e.contains("--source-durable"),
            "{e}"
        );
        source("out.1", "shard-1")
            .await
            .expect("its own consumer is fine");
    })
    .await;
}
