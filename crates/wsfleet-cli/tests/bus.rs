//! `wsfleet run --sink` and `--source` against a real `nats-server -js`
//! (wsfleet-testkit's NatsServer) and upstreams on loopback.

use std::time::Duration;

use assert_cmd::Command;
use async_nats::jetstream;
use futures_util::StreamExt as _;
use wsfleet::ConnectionConfig;
use wsfleet::serve::{ChaosMode, ChaosServer, ChaosSettings, EchoServer};
use wsfleet_testkit::NatsServer;

const BIN: &str = env!("CARGO_BIN_EXE_wsfleet");

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
    let upstream = ChaosServer::bind_with(
        "127.0.0.1:0",
        ChaosMode::Stream,
        ChaosSettings::default()
            .with_message_size(64)
            .with_interval(Duration::from_millis(5)),
    )
    .await
    .expect("chaos stream server");
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
