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
        "wsfleet_connections_target{pool=\"default\"} 5",
        "wsfleet_connections_ready{pool=\"default\"} 5",
        "wsfleet_connections{pool=\"default\",state=\"ready\"} 5",
        "wsfleet_handshake_seconds_count{pool=\"default\"} 5",
        "wsfleet_handshake_seconds_bucket{pool=\"default\",le=\"+Inf\"} 5",
        "# TYPE wsfleet_reconnects_total counter",
        "wsfleet_disconnects_total{pool=\"default\",reason=\"pong_timeout\"} 0",
        "\nwsfleet_budget_max_bytes ",
        "wsfleet_sequence_gaps_total{pool=\"default\"} 0",
        "wsfleet_duplicates_dropped_total{pool=\"default\"} 0",
        "wsfleet_subscription_renewals_total{pool=\"default\"} 0",
        "# TYPE wsfleet_ping_rtt_seconds histogram",
        "wsfleet_heartbeat_rtt_seconds_bucket{pool=\"default\",le=\"+Inf\"} 0",
        "wsfleet_disconnects_total{pool=\"default\",reason=\"heartbeat_timeout\"} 0",
        "wsfleet_disconnects_total{pool=\"default\",reason=\"sequence_gap\"} 0",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }

    let (status, body) = get(addr, "/connections").await;
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&body).expect("json");
    let list = list.as_array().expect("array");
    assert_eq!(list.len(), 5);
    for field in [
        "pool",
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
    assert_eq!(list[0]["pool"], "default");
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
    use wsfleet::admin::{DescriptorEncoder, MetricKind, write_metric};

    let port = wsfleet_testkit::free_port().await;
    let fleet = Fleet::builder(format!("ws://127.0.0.1:{port}/"))
        .connections(1)
        .spawn()
        .expect("spawn");
    let scrapes = Arc::new(AtomicU64::new(0));
    let counted = scrapes.clone();
    let admin = AdminServer::builder(fleet.monitor())
        .healthy_share(0.0)
        .metrics_source(Arc::new(move |e: &mut DescriptorEncoder<'_>| {
            let n = counted.fetch_add(1, Ordering::Relaxed) + 1;
            write_metric(e, "test_scrapes", MetricKind::Counter, "Scrapes.", n)
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
            metrics[..at].contains("wsfleet_handshake_seconds_count{pool=\"default\"}"),
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

/// Polls `fleet` until `n` of its connections are ready (at most the
/// testkit's bound).
async fn until_ready(fleet: &Fleet, n: usize) {
    bounded("ready", async {
        while fleet.ready() < n {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Two pools on one admin server against a real echo server: each
/// connection says its pool, each per-fleet family is labelled by pool, and
/// `/healthz` names the pool that is short of ready connections.
#[tokio::test]
async fn two_pools_on_one_admin_server() {
    let server = EchoServer::bind("127.0.0.1:0", crate::config())
        .await
        .expect("bind");
    let spot = Fleet::builder(server.url())
        .name("spot")
        .connections(2)
        .connect_rate(1000.0)
        .spawn()
        .expect("spawn spot");
    let futures = Fleet::builder(server.url())
        .name("futures")
        .connections(3)
        .connect_rate(1000.0)
        .spawn()
        .expect("spawn futures");
    // Nothing listens here: this pool never becomes ready.
    let port = wsfleet_testkit::free_port().await;
    let down = Fleet::builder(format!("ws://127.0.0.1:{port}/"))
        .name("down")
        .connections(1)
        .spawn()
        .expect("spawn down");
    until_ready(&spot, 2).await;
    until_ready(&futures, 3).await;

    // A second pool of a name served already is refused.
    let same_name = Fleet::builder(server.url())
        .name("spot")
        .spawn()
        .expect("spawn");
    let err = AdminServer::builder(spot.monitor())
        .pool(same_name.monitor())
        .expect_err("duplicate");
    assert_eq!(err.name, "spot");
    assert!(err.to_string().contains("\"spot\""), "{err}");
    drop(same_name);

    let admin = AdminServer::builder(spot.monitor())
        .pool(futures.monitor())
        .expect("futures")
        .healthy_share(1.0)
        .bind("127.0.0.1:0")
        .await
        .expect("bind admin");
    let addr = admin.local_addr();

    let (status, body) = get(addr, "/connections").await;
    assert_eq!(status, 200);
    let list: Vec<wsfleet::fleet::ConnectionInfo> = serde_json::from_str(&body).expect("json");
    let mut pools: Vec<&str> = list.iter().map(|c| c.pool.as_str()).collect();
    pools.sort_unstable();
    assert_eq!(pools, ["futures", "futures", "futures", "spot", "spot"]);

    let (status, metrics) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "\nwsfleet_connections_ready{pool=\"spot\"} 2\n",
        "\nwsfleet_connections_ready{pool=\"futures\"} 3\n",
        "\nwsfleet_connections_target{pool=\"futures\"} 3\n",
        "\nwsfleet_handshake_seconds_count{pool=\"spot\"} 2\n",
        "\nwsfleet_handshake_seconds_count{pool=\"futures\"} 3\n",
        "\nwsfleet_connections{pool=\"spot\",state=\"ready\"} 2\n",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    assert_eq!(
        metrics
            .matches("# TYPE wsfleet_connections_ready gauge\n")
            .count(),
        1,
        "{metrics}"
    );
    let (status, body) = get(addr, "/pools").await;
    assert_eq!(status, 200);
    let summaries: Vec<wsfleet::fleet::PoolInfo> = serde_json::from_str(&body).expect("json");
    assert_eq!(
        summaries,
        [
            wsfleet::fleet::PoolInfo::new("spot", 2, 2, false),
            wsfleet::fleet::PoolInfo::new("futures", 3, 3, false),
        ]
    );
    let (status, body) = get(addr, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    drop(admin);

    // With the pool that cannot connect: unhealthy, and it says which.
    let admin = AdminServer::builder(spot.monitor())
        .pool(futures.monitor())
        .and_then(|b| b.pool(down.monitor()))
        .expect("pools")
        .healthy_share(1.0)
        .bind("127.0.0.1:0")
        .await
        .expect("bind admin");
    let (status, body) = get(admin.local_addr(), "/healthz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("unhealthy: pool down below 100% ready\n"),
        "{body}"
    );
    assert!(body.contains("pool down: 0/1 ready\n"), "{body}");
    assert!(body.contains("pool spot: 2/2 ready\n"), "{body}");

    spot.shutdown().await;
    futures.shutdown().await;
}
