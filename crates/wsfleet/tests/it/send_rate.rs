//! Outbound rate limits ([`SendRate`]) against a real server that closes
//! with 1008 any connection sending more than 5 messages within any second
//! (`wsfleet_testkit::RateServer`), as exchanges do.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wsfleet::admin::AdminServer;
use wsfleet::fleet::{DisconnectReason, EventKind, Events, Fleet, FleetBuilder, SendRate};
use wsfleet::{CloseCode, Message};
use wsfleet_testkit::{RateOptions, RateServer, bounded};

/// Arrival jitter the server forgives, on top of the fleet's 5 % headroom
/// (six messages 1.05 s apart at 5/s): on this shared 2-core machine, under
/// a parallel test run, six messages written 204 ms apart were seen to
/// arrive as close as 999.6 ms, an arrival delayed by the load.
/// A fleet at 6/s (833 ms for six), or 5/s with a burst of 5 (nine in the
/// first second), is still closed.
const SLACK: Duration = Duration::from_millis(30);

async fn server(limit: u32) -> RateServer {
    RateServer::start(RateOptions {
        limit,
        slack: SLACK,
        ..Default::default()
    })
    .await
    .expect("start the rate server")
}

fn fleet(server: &RateServer, connections: usize) -> FleetBuilder {
    Fleet::builder(server.url())
        .connections(connections)
        .connect_rate(1000.0)
        .connection_config(crate::config())
}

/// Consumes events until `n` connections are ready.
async fn ready(events: &mut Events, n: usize) {
    let mut ready = 0;
    while ready < n {
        if let EventKind::Connected { .. } = events.recv().await.expect("event").kind {
            ready += 1;
        }
    }
}

/// Keeps consuming events in the background (so no connection pauses for
/// the consumer); hands back the disconnect reasons seen.
fn drain_events(mut events: Events) -> tokio::task::JoinHandle<Vec<DisconnectReason>> {
    tokio::spawn(async move {
        let mut gone = Vec::new();
        while let Some(event) = events.recv().await {
            if let EventKind::Disconnected(reason) = event.kind {
                gone.push(reason);
            }
        }
        gone
    })
}

#[tokio::test]
async fn without_a_send_rate_a_burst_is_closed_with_1008() {
    let server = server(5).await;
    let mut fleet = fleet(&server, 1).spawn().expect("spawn");
    let mut events = fleet.events().expect("events");
    bounded("ready", ready(&mut events, 1)).await;
    for i in 0..10 {
        fleet
            .send(Message::text(format!("m{i}")))
            .await
            .expect("send");
    }
    let close = bounded("the server's close", server.first_close())
        .await
        .expect("rate close");
    assert!(close.in_window > 5, "{close:?}");
    // The fleet sees the 1008 as the connection's end.
    let reason = bounded("the disconnect", async {
        loop {
            if let EventKind::Disconnected(reason) = events.recv().await.expect("event").kind {
                break reason;
            }
        }
    })
    .await;
    assert!(
        matches!(reason, DisconnectReason::ClosedByPeer { code: Some(c), .. } if c == CloseCode::POLICY_VIOLATION),
        "{reason:?}"
    );
    fleet.shutdown().await;
}

#[tokio::test]
async fn a_per_connection_rate_sends_1000_messages_without_a_close() {
    const CONNECTIONS: usize = 100;
    const MESSAGES: usize = 1000;
    let server = server(5).await;
    let mut fleet = fleet(&server, CONNECTIONS)
        .send_rate(SendRate::per_second(5.0))
        .spawn()
        .expect("spawn");
    let mut events = fleet.events().expect("events");
    bounded("ready", ready(&mut events, CONNECTIONS)).await;
    let gone = drain_events(events);
    let admin = AdminServer::bind("127.0.0.1:0", fleet.monitor(), 1.0)
        .await
        .expect("admin");
    let started = Instant::now();
    // Round robin over ready connections: 10 each, queued at once (the
    // inboxes hold 64, so `send` does not wait here).
    for i in 0..MESSAGES {
        fleet
            .send(Message::text(format!("m{i}")))
            .await
            .expect("send");
    }
    let queued = started.elapsed();
    let stats = bounded("every message arrives", async {
        loop {
            let stats = server.stats().await.expect("stats");
            if stats.received >= MESSAGES as u64 || stats.rate_closes > 0 {
                break stats;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let took = started.elapsed();
    let tightest = stats.conns.values().filter_map(|c| c.tightest).min();
    eprintln!(
        "queued in {queued:?}, all arrived in {took:?} (span {:?}); tightest 6 messages of one connection: {tightest:?}",
        stats.span()
    );
    assert_eq!(
        stats.rate_closes,
        0,
        "closed for rate: {:?}",
        server.closes()
    );
    assert_eq!(stats.received, MESSAGES as u64);
    assert_eq!(stats.conns.len(), CONNECTIONS, "one server connection each");
    assert!(stats.conns.values().all(|c| c.received == 10), "{stats:?}");
    // 10 each at 5 a second: the tenth goes 1.8 s after the first.
    assert!(
        stats.span() >= Duration::from_millis(1700),
        "span {:?}",
        stats.span()
    );
    assert!(tightest.is_some_and(|t| t >= Duration::from_secs(1) - SLACK));
    let totals = fleet.stats().totals;
    // 9 of every connection's 10 waited at the inbox's front, 0.2 s each
    // (the wait counts from the message's first refusal).
    assert_eq!(totals.send_rate_waits, 900, "{totals:?}");
    assert!(
        totals.send_rate_wait >= Duration::from_millis(900 * 190),
        "{:?}",
        totals.send_rate_wait
    );
    let metrics = get_metrics(admin.local_addr()).await;
    assert!(
        metrics.contains("wsfleet_send_rate_waits_total{pool=\"default\"} 900"),
        "{metrics}"
    );
    assert!(metrics.contains("# TYPE wsfleet_send_rate_wait_seconds_total counter"));
    fleet.shutdown().await;
    let gone = gone.await.expect("events task");
    assert!(
        gone.iter().all(|r| matches!(r, DisconnectReason::Shutdown)),
        "{gone:?}"
    );
}

#[tokio::test]
async fn a_pool_rate_caps_the_whole_fleet() {
    const MESSAGES: usize = 60;
    // A server that only counts: the pool's rate is the only limit here.
    let server = server(1000).await;
    let mut fleet = fleet(&server, 10)
        .pool_send_rate(SendRate::per_second(20.0))
        .spawn()
        .expect("spawn");
    let mut events = fleet.events().expect("events");
    bounded("ready", ready(&mut events, 10)).await;
    let _gone = drain_events(events);
    for i in 0..MESSAGES {
        fleet
            .send(Message::text(format!("m{i}")))
            .await
            .expect("send");
    }
    let stats = bounded("every message arrives", async {
        loop {
            let stats = server.stats().await.expect("stats");
            if stats.received >= MESSAGES as u64 {
                break stats;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    eprintln!(
        "pool of 10 at 20/s: {} messages over {:?}, at most {} in one second",
        stats.received,
        stats.span(),
        stats.peak_window
    );
    // 60 at 20 a second, one at a time: the last 2.95 s after the first.
    let span = stats.span();
    assert!(
        span >= Duration::from_millis(2800) && span <= Duration::from_secs(6),
        "span {span:?}"
    );
    // Any second holds at most 20 (and a little for arrival jitter).
    assert!(stats.peak_window <= 21, "peak {}", stats.peak_window);
    // Spread over the connections (not one connection's rate).
    assert!(stats.conns.values().filter(|c| c.received > 0).count() >= 5);
    assert!(fleet.stats().totals.send_rate_waits > 0);
    fleet.shutdown().await;
}

async fn get_metrics(addr: std::net::SocketAddr) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.expect("read");
    response
}
