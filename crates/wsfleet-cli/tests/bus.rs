//! `wsfleet run --sink` and `--source` against a real `nats-server -js`
//! (wsfleet-testkit's NatsServer) and upstreams on loopback.

mod common;

use std::time::Duration;

use assert_cmd::Command;
use async_nats::jetstream;
use futures_util::StreamExt as _;
use wsfleet::ConnectionConfig;
use wsfleet::serve::{ChaosMode, ChaosServer, ChaosSettings, EchoServer};
use wsfleet_testkit::NatsServer;

use common::{BIN, Running, free_port, http_until};

/// Runs `wsfleet` with `args` off the async runtime (the upstreams run on
/// it); returns (success, stdout, stderr).
async fn run(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(BIN)
            .env_remove("RUST_LOG")
            .args(&args)
            .timeout(Duration::from_secs(35))
            .output()
            .expect("run wsfleet");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("wsfleet ran")
}

/// An upstream streaming numbered binary messages of `size` bytes, one
/// every `interval` per connection.
async fn stream_upstream(size: usize, interval: Duration) -> ChaosServer {
    ChaosServer::bind_with(
        "127.0.0.1:0",
        ChaosMode::Stream,
        ChaosSettings::default()
            .with_message_size(size)
            .with_interval(interval),
    )
    .await
    .expect("chaos stream server")
}

/// `key=N` from the summary line.
fn summary(stdout: &str, key: &str) -> u64 {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("sent="))
        .expect("summary line");
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} in {line:?}"))
        .parse()
        .expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_sink_stores_every_received_message_in_jetstream() {
    let nats = NatsServer::start().await.expect("nats-server");
    let upstream = stream_upstream(64, Duration::from_millis(5)).await;
    let sink = format!("{}/feeds.{{slot}}", nats.url());
    let (ok, stdout, stderr) = run(vec![
        "run".into(),
        "--url".into(),
        upstream.url(),
        "--connections".into(),
        "2".into(),
        "--duration".into(),
        "3s".into(),
        "--sink".into(),
        sink,
        "--sink-stream".into(),
        "FEEDS".into(),
    ])
    .await;
    assert!(ok, "wsfleet run failed:\n{stdout}\n{stderr}");
    let received = summary(&stdout, "received");
    assert!(received > 100, "too little traffic: {stdout}");
    assert_eq!(summary(&stdout, "sink_acked"), received, "{stdout}");
    assert_eq!(summary(&stdout, "sink_unacked"), 0);
    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let mut stream = js
        .get_stream("FEEDS")
        .await
        .expect("the sink created FEEDS");
    let stored = stream.info().await.expect("info").state.messages;
    assert_eq!(stored, received, "stored vs received");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_source_sends_through_the_fleet_and_answers_the_undeliverable() {
    let nats = NatsServer::start().await.expect("nats-server");
    let echo = EchoServer::bind("127.0.0.1:0", ConnectionConfig::default())
        .await
        .expect("echo server");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let mut dead = client.subscribe("out.dead").await.expect("subscribe");
    let js = jetstream::new(client.clone());
    let source = format!("{}/out.fleet", nats.url());
    let running = tokio::spawn(run(vec![
        "run".into(),
        "--url".into(),
        echo.url(),
        "--connections".into(),
        "2".into(),
        "--duration".into(),
        "5s".into(),
        "--output".into(),
        "jsonl".into(),
        "--source".into(),
        source,
        "--source-dead-letter".into(),
        "out.dead".into(),
    ]));
    // The source creates its stream at start; connections come up meanwhile.
    let started = std::time::Instant::now();
    while js.get_stream("WSFLEET_OUT").await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the source never created its stream"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let publish = |key: &'static str, value: &'static str, body: &'static str| {
        let js = js.clone();
        async move {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(key, value);
            js.publish_with_headers("out.fleet", headers, body.into())
                .await
                .expect("publish")
                .await
                .expect("stored");
        }
    };
    publish("Wsfleet-Target", "all", "hello-all").await;
    publish("Wsfleet-Conn", "999999", "hello-nobody").await;
    let answer = tokio::time::timeout(Duration::from_secs(10), dead.next())
        .await
        .expect("an answer on the dead-letter subject")
        .expect("subscribed");
    let reason = answer
        .headers
        .as_ref()
        .and_then(|h| h.get("Wsfleet-Error"))
        .expect("reason");
    assert!(reason.as_str().contains("unknown connection"), "{reason:?}");
    let (ok, stdout, stderr) = running.await.expect("wsfleet ran");
    assert!(ok, "wsfleet run failed:\n{stdout}\n{stderr}");
    // The echo server sent it back on both connections.
    let echoed = stdout.lines().filter(|l| l.contains("hello-all")).count();
    assert_eq!(echoed, 2, "{stdout}\n{stderr}");
    assert!(!stdout.contains("hello-nobody"));
}

/// The unlabelled sample `name` in Prometheus text.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.parse().ok()
    })
}

/// Polls the admin endpoint's `/metrics` (off the runtime, at most 15 s)
/// until `done` says yes to it.
async fn metrics_until(admin: &str, done: impl Fn(&str) -> bool + Send + 'static) -> String {
    let admin = admin.to_owned();
    tokio::task::spawn_blocking(move || {
        http_until(&admin, "/metrics", |status, body| {
            status == 200 && done(body)
        })
        .1
    })
    .await
    .expect("polled /metrics")
}

/// Sink and source counters are on `/metrics` and move with the traffic:
/// every message the fleet received was published and acknowledged, the
/// one message from the source was delivered; the end summary agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_admin_metrics_show_the_sink_and_source_counters() {
    let nats = NatsServer::start().await.expect("nats-server");
    let echo = EchoServer::bind("127.0.0.1:0", ConnectionConfig::default())
        .await
        .expect("echo server");
    let admin = format!("127.0.0.1:{}", free_port());
    let sink = format!("{}/feeds.{{slot}}", nats.url());
    let source = format!("{}/out.fleet", nats.url());
    let url = echo.url();
    // Each connection sends two messages when it comes up; the echo server
    // returns them: 4 received, nothing more until the source sends.
    let (mut run, lines) = Running::start(&[
        "run",
        "--url",
        &url,
        "--connections",
        "2",
        "--send-on-connect",
        "one",
        "--send-on-connect",
        "two",
        "--output",
        "none",
        "--duration",
        "60s",
        "--admin",
        &admin,
        "--sink",
        &sink,
        "--sink-stream",
        "FEEDS",
        "--source",
        &source,
    ]);

    let settled = |at_least: f64| {
        move |m: &str| {
            let published = sample(m, "wsfleet_sink_published_total").unwrap_or(0.0);
            published >= at_least
                && sample(m, "wsfleet_sink_acknowledged_total") == Some(published)
                && sample(m, "wsfleet_sink_in_flight") == Some(0.0)
        }
    };
    let metrics = metrics_until(&admin, settled(4.0)).await;
    for (name, kind) in [
        ("wsfleet_sink_published_total", "counter"),
        ("wsfleet_sink_acknowledged_total", "counter"),
        ("wsfleet_sink_duplicates_total", "counter"),
        ("wsfleet_sink_retried_total", "counter"),
        ("wsfleet_sink_rejected_total", "counter"),
        ("wsfleet_sink_reordered_total", "counter"),
        ("wsfleet_sink_in_flight", "gauge"),
        ("wsfleet_sink_in_flight_bytes", "gauge"),
        ("wsfleet_sink_paused_seconds_total", "counter"),
        ("wsfleet_source_received_total", "counter"),
        ("wsfleet_source_delivered_total", "counter"),
        ("wsfleet_source_answered_total", "counter"),
        ("wsfleet_source_unanswered_total", "counter"),
    ] {
        let declared = format!("# TYPE {name} {kind}\n");
        assert_eq!(
            metrics.matches(&declared).count(),
            1,
            "{declared:?} in\n{metrics}"
        );
        assert!(sample(&metrics, name).is_some(), "{name} in\n{metrics}");
    }
    // The fleet's own metrics are still there, before the bus's.
    assert!(
        metrics.contains("wsfleet_connections_ready{pool=\"default\"} 2"),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "wsfleet_sink_rejected_total"), Some(0.0));
    assert_eq!(sample(&metrics, "wsfleet_source_received_total"), Some(0.0));

    // One message through the source to both connections, echoed back.
    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Wsfleet-Target", "all");
    js.publish_with_headers("out.fleet", headers, "hello-all".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let before = sample(&metrics, "wsfleet_sink_published_total").unwrap_or(0.0);
    let settled_after = settled(before + 2.0);
    let metrics = metrics_until(&admin, move |m| {
        settled_after(m) && sample(m, "wsfleet_source_delivered_total") == Some(1.0)
    })
    .await;
    assert_eq!(sample(&metrics, "wsfleet_source_received_total"), Some(1.0));
    let acked = sample(&metrics, "wsfleet_sink_acknowledged_total").expect("acked");

    run.signal("TERM");
    let status = run.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "wsfleet run: {status}");
    // Its stdout ends with the summary line; the reader thread may still
    // be passing it on.
    let mut stdout = Vec::new();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
        stdout.push(line);
    }
    let stdout = stdout.join("\n");
    // No traffic since the last scrape: the summary says the same.
    assert_eq!(summary(&stdout, "sink_acked") as f64, acked, "{stdout}");
    assert_eq!(summary(&stdout, "received") as f64, acked, "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_stops_within_the_sink_grace_while_nats_is_down() {
    let mut nats = NatsServer::start().await.expect("nats-server");
    let upstream = stream_upstream(64, Duration::from_millis(1)).await;
    let sink = format!("{}/feeds.{{slot}}", nats.url());
    let started = std::time::Instant::now();
    let running = tokio::spawn(run(vec![
        "run".into(),
        "--url".into(),
        upstream.url(),
        "--connections".into(),
        "2".into(),
        "--duration".into(),
        "3s".into(),
        "--sink".into(),
        sink,
        "--sink-stream".into(),
        "FEEDS".into(),
    ]));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Down for good: the sink's window fills and stays full.
    nats.kill().await.expect("SIGKILL nats-server");
    let (ok, stdout, stderr) = running.await.expect("run finished");
    let took = started.elapsed();
    // 3 s, the fleet's close deadline and grace, then one 10 s sink grace
    // for everything left (each message waited its own 10 s before).
    assert!(
        took < Duration::from_secs(25),
        "stopping took {took:?}\n{stderr}"
    );
    assert!(ok, "{stdout}\n{stderr}");
    let left = summary(&stdout, "sink_unacked") + summary(&stdout, "sink_not_published");
    assert!(left > 0, "nothing left unacknowledged: {stdout}");
    assert!(
        stderr.contains("stopping with messages unacknowledged")
            || stderr.contains("never published"),
        "{stderr}"
    );
}

/// Issue 15's outage: nats-server killed for 30 s under a steady stream.
/// The process's RSS (not the budget's accounting) stays within the budget
/// plus the idle process, and once NATS is back every message received is
/// stored, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_30_s_nats_outage_keeps_rss_within_the_budget_and_loses_nothing() {
    const OUTAGE: Duration = Duration::from_secs(30);
    const BUDGET: u64 = 16 << 20;
    let mut nats = NatsServer::start_with(wsfleet_testkit::NatsOptions { sync_always: true })
        .await
        .expect("nats-server");
    let upstream = stream_upstream(4096, Duration::from_millis(1)).await;
    let sink = format!("{}/feeds.{{slot}}", nats.url());
    let url = upstream.url();
    let (mut run, lines) = Running::start(&[
        "run",
        "--url",
        &url,
        "--connections",
        "4",
        "--memory-budget",
        "16MiB",
        "--output",
        "none",
        "--sink",
        &sink,
        "--sink-stream",
        "FEEDS",
    ]);
    let pid = run.pid();
    let rss = move || {
        wsfleet_testkit::measure::proc_status_bytes_of(pid, "VmRSS:").expect("VmRSS of the run")
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = rss();
    nats.kill().await.expect("SIGKILL nats-server");
    let mut peak = 0;
    let outage = std::time::Instant::now();
    while outage.elapsed() < OUTAGE {
        peak = peak.max(rss());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nats.restart()
        .await
        .expect("nats-server back on the same store");
    tokio::time::sleep(Duration::from_secs(5)).await;
    run.signal("INT");
    let status = tokio::task::spawn_blocking(move || run.wait_exit(Duration::from_secs(30)))
        .await
        .expect("waited");
    assert!(status.success(), "{status:?}");
    let stdout: Vec<String> = lines.try_iter().collect();
    let stdout = stdout.join("\n");
    let received = summary(&stdout, "received");
    eprintln!(
        "outage: RSS {} KiB before, peak {} KiB during {OUTAGE:?} (budget {} KiB); {stdout}",
        before >> 10,
        peak >> 10,
        BUDGET >> 10
    );
    // The budget bounds what the fleet holds (the sink's window and the
    // event queue included, so RSS may rise toward it while NATS is gone);
    // the process adds its idle size on top (this debug binary: ~18 MiB).
    assert!(
        peak <= BUDGET + (24 << 20),
        "peak RSS {peak} during the outage"
    );
    assert!(received > 1000, "too little traffic: {stdout}");
    assert_eq!(summary(&stdout, "sink_acked"), received, "{stdout}");
    assert_eq!(summary(&stdout, "sink_unacked"), 0, "{stdout}");
    assert_eq!(summary(&stdout, "sink_not_published"), 0, "{stdout}");
    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let stored = js
        .get_stream("FEEDS")
        .await
        .expect("FEEDS")
        .info()
        .await
        .expect("info")
        .state
        .messages;
    assert_eq!(
        stored, received,
        "stored vs received (no loss, no duplicate)"
    );
}
