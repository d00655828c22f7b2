//! Application heartbeats and round trips: against the feed server, which
//! answers `{"op":"ping","id":N}` with `{"op":"pong","id":N}`, and the
//! Python echo server, which answers transport pings but sends the
//! heartbeat back unchanged (no answer at the application level).

use std::time::{Duration, Instant};

use wsfleet::Message;
use wsfleet::fleet::{DisconnectReason, EventKind, Fleet, Heartbeat};
use wsfleet_testkit::{FeedOptions, FeedServer, Mode, PyServer, bounded};

fn heartbeat(interval: Duration) -> Heartbeat {
    Heartbeat::new(Message::text(r#"{"op":"ping","id":1}"#), interval)
        .answer_field("/op", "pong")
        .timeout(Duration::from_millis(400))
}

#[tokio::test]
async fn heartbeats_are_answered_and_both_round_trips_are_measured() {
    let feed = FeedServer::start(FeedOptions::default())
        .await
        .expect("feed server");
    let mut fleet = Fleet::builder(feed.url())
        .connections(3)
        .connect_rate(1000.0)
        // No subscription, and heartbeats rarer than the keepalive's quiet
        // interval (200 ms): keepalive pings go out between them.
        .keepalive(crate::fast_keepalive())
        .heartbeat(heartbeat(Duration::from_millis(350)))
        .spawn()
        .expect("spawn");
    let mut events = fleet.events().expect("events");
    let mut delivered = 0;
    let end = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Some(event)) = tokio::time::timeout_at(end, events.recv()).await {
        match event.kind {
            EventKind::Message(_) => delivered += 1,
            EventKind::Disconnected(reason) => panic!("{}: {reason}", event.conn),
            _ => {}
        }
    }
    let stats = fleet.stats();
    fleet.shutdown().await;
    assert_eq!(delivered, 0, "answers are consumed, not delivered");
    let (pings, beats) = (
        stats.totals.ping_rtt.count(),
        stats.totals.heartbeat_rtt.count(),
    );
    assert!(beats >= 3 * 4, "{beats} heartbeat round trips");
    assert!(pings >= 3, "{pings} ping round trips");
    for c in &stats.connections {
        let (Some(hb), Some(ping)) = (c.heartbeat_rtt_us, c.ping_rtt_us) else {
            panic!("{} has no round trip: {c:?}", c.id);
        };
        assert!(
            hb < 200_000 && ping < 200_000,
            "loopback round trips {hb} / {ping} µs"
        );
    }
    eprintln!(
        "heartbeat round trips {beats} (mean {:?}), ping round trips {pings} (mean {:?})",
        stats.totals.heartbeat_rtt.sum / beats as u32,
        stats.totals.ping_rtt.sum / pings as u32
    );
}

#[tokio::test]
async fn an_unanswered_heartbeat_replaces_the_connection_while_pings_are_answered() {
    let server = PyServer::start(Mode::Echo).await.expect("python server");
    let mut fleet = Fleet::builder(server.url())
        .connections(1)
        .keepalive(crate::fast_keepalive())
        .heartbeat(heartbeat(Duration::from_millis(100)))
        .spawn()
        .expect("spawn");
    let mut events = fleet.events().expect("events");
    let started = Instant::now();
    let (reason, lived) = bounded("a heartbeat timeout", async {
        let mut ready = None;
        loop {
            let event = events.recv().await.expect("fleet runs");
            match event.kind {
                EventKind::Connected { .. } => ready = Some(Instant::now()),
                EventKind::Disconnected(reason) => {
                    return (reason, ready.map(|r| r.elapsed()));
                }
                _ => {}
            }
        }
    })
    .await;
    assert!(
        matches!(reason, DisconnectReason::HeartbeatTimeout { .. }),
        "{reason}"
    );
    assert_eq!(reason.label(), "heartbeat_timeout");
    let lived = lived.expect("was ready");
    // First heartbeat at 100 ms, unanswered by 500 ms, checked each interval.
    assert!(
        lived >= Duration::from_millis(450) && lived < Duration::from_millis(1500),
        "replaced after {lived:?} (started {:?} ago)",
        started.elapsed()
    );
    fleet.shutdown().await;
}
