//! The admin endpoint over real HTTP: /metrics, /connections, /healthz.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wsfleet::admin::AdminServer;
use wsfleet::fleet::Fleet;
use wsfleet::serve::EchoServer;
use wsfleet_testkit::bounded;

/// GET `path`; returns (status, body).
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.expect("read");
    let status = response[9..12].parse().expect("status");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn metrics_connections_and_healthz() {
    let server = EchoServer::bind("127.0.0.1:0", crate::config())
        .await
        .expect("bind");
    let mut fleet = Fleet::builder(server.url())
        .connections(5)
        .connect_rate(1000.0)
        .spawn()
        .expect("spawn");
    let mut events = fleet.events().expect("events");
    bounded("ready", async {
        while fleet.ready() < 5 {
            let _ = tokio::time::timeout(std::time::Duration::from_millis(20), events.recv()).await;
        }
    })
    .await;
    let admin = AdminServer::bind("127.0.0.1:0", fleet.monitor(), 1.0)
        .await
        .expect("bind admin");
    let addr = admin.local_addr();

    let (status, metrics) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "wsfleet_connections_target 5",
        "wsfleet_connections_ready 5",
        "wsfleet_connections{state=\"ready\"} 5",
        "wsfleet_handshake_seconds_count 5",
        "wsfleet_handshake_seconds_bucket{le=\"+Inf\"} 5",
        "# TYPE wsfleet_reconnects_total counter",
        "wsfleet_disconnects_total{reason=\"pong_timeout\"} 0",
        "wsfleet_budget_max_bytes",
        "wsfleet_sequence_gaps_total 0",
        "wsfleet_duplicates_dropped_total 0",
        "wsfleet_subscription_renewals_total 0",
        "# TYPE wsfleet_ping_rtt_seconds histogram",
        "wsfleet_heartbeat_rtt_seconds_bucket{le=\"+Inf\"} 0",
        "wsfleet_disconnects_total{reason=\"heartbeat_timeout\"} 0",
        "wsfleet_disconnects_total{reason=\"sequence_gap\"} 0",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }

    let (status, body) = get(addr, "/connections").await;
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&body).expect("json");
    let list = list.as_array().expect("array");
    assert_eq!(list.len(), 5);
    for field in [
        "id",
        "slot",
        "state",
        "url",
        "connected_since",
        "reconnects",
        "bytes_in",
        "bytes_out",
        "msgs_in",
        "msgs_out",
        "buffered_bytes",
        "peak_buffered_bytes",
        "last_error",
    ] {
        assert!(
            list[0].get(field).is_some(),
            "missing field {field} in {}",
            list[0]
        );
    }
    assert_eq!(list[0]["state"], "ready");
    // The same type reads back (what `wsfleet top` does).
    let back: Vec<wsfleet::fleet::ConnectionInfo> =
        serde_json::from_str(&body).expect("round trip");
    assert_eq!(back.len(), 5);

    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(get(addr, "/nope").await.0, 404);
    fleet.shutdown().await;
}

#[tokio::test]
async fn healthz_is_503_when_too_few_are_ready() {
    // Nothing listens on this port: nothing becomes ready.
    let port = wsfleet_testkit::free_port().await;
    let fleet = Fleet::builder(format!("ws://127.0.0.1:{port}/"))
        .connections(3)
        .spawn()
        .expect("spawn");
    let admin = AdminServer::bind("127.0.0.1:0", fleet.monitor(), 0.5)
        .await
        .expect("bind admin");
    let (status, body) = get(admin.local_addr(), "/healthz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("0/3"), "{body}");
}

#[tokio::test]
async fn metrics_sources_are_served_after_the_fleets_metrics() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use wsfleet::admin::{MetricKind, write_metric};

    let port = wsfleet_testkit::free_port().await;
    let fleet = Fleet::builder(format!("ws://127.0.0.1:{port}/"))
        .connections(1)
        .spawn()
        .expect("spawn");
    let scrapes = Arc::new(AtomicU64::new(0));
    let counted = scrapes.clone();
    let admin = AdminServer::builder(fleet.monitor())
        .healthy_share(0.0)
        .metrics_source(Arc::new(move |out: &mut String| {
            let n = counted.fetch_add(1, Ordering::Relaxed) + 1;
            write_metric(
                out,
                "test_scrapes_total",
                MetricKind::Counter,
                "Scrapes.",
                n,
            );
        }))
        .bind("127.0.0.1:0")
        .await
        .expect("bind admin");
    let addr = admin.local_addr();
    for n in 1..=2 {
        let (status, metrics) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        let sample = format!("\ntest_scrapes_total {n}\n");
        let at = metrics
            .find(&sample)
            .unwrap_or_else(|| panic!("{sample:?} in\n{metrics}"));
        assert!(
            metrics[..at].contains("wsfleet_handshake_seconds_count"),
            "{metrics}"
        );
        assert_eq!(
            metrics
                .matches("# TYPE test_scrapes_total counter\n")
                .count(),
            1
        );
    }
    // healthy_share 0.0: healthy with nothing ready.
    assert_eq!(get(addr, "/healthz").await.0, 200);
}
