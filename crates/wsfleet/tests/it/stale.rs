//! The stale-stream watchdog against the Python `websockets` server, which
//! answers pings by itself and sends data only when it echoes: a feed that
//! "stays up" while nothing comes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use wsfleet::Message;
use wsfleet::fleet::{DisconnectReason, EventKind, Fleet};
use wsfleet_testkit::{Mode, PyServer, bounded};

const STALE: Duration = Duration::from_millis(600);

fn fleet(url: String) -> Fleet {
    Fleet::builder(url)
        .connections(2)
        .connect_rate(1000.0)
        // Pongs arrive every 100 ms: the transport looks alive throughout.
        .keepalive(crate::fast_keepalive().with_interval(Some(Duration::from_millis(100))))
        .stale_after(STALE)
        .spawn()
        .expect("spawn")
}

#[tokio::test]
async fn a_connection_without_data_is_replaced_within_its_threshold() {
    let server = PyServer::start(Mode::Echo).await.expect("python server");
    let mut fleet = fleet(server.url());
    let mut events = fleet.events().expect("events");
    let mut connected: HashMap<u64, Instant> = HashMap::new();
    let mut stale = Vec::new();
    let mut reconnected = 0;
    bounded("two stale ends and their replacements", async {
        while stale.len() < 2 || reconnected < 2 {
            let event = events.recv().await.expect("fleet runs");
            match event.kind {
                EventKind::Connected { .. } => {
                    if connected.len() >= 2 {
                        reconnected += 1;
                    }
                    connected.insert(event.conn.0, Instant::now());
                }
                EventKind::Disconnected(reason) => {
                    let lived = connected[&event.conn.0].elapsed();
                    stale.push((reason, lived));
                }
                _ => {}
            }
        }
    })
    .await;
    for (reason, lived) in &stale {
        assert!(
            matches!(reason, DisconnectReason::Stale { after } if *after == STALE),
            "{reason}"
        );
        assert_eq!(reason.label(), "stale");
        assert!(
            *lived >= STALE && *lived < STALE + Duration::from_secs(1),
            "replaced after {lived:?}"
        );
    }
    let counted = fleet
        .stats()
        .totals
        .disconnects
        .iter()
        .find(|(label, _)| *label == "stale")
        .map(|(_, n)| *n);
    assert!(counted >= Some(2), "counted {counted:?}");
    fleet.shutdown().await;
}

#[tokio::test]
async fn data_keeps_a_connection_from_going_stale() {
    let server = PyServer::start(Mode::Echo).await.expect("python server");
    let mut fleet = fleet(server.url());
    let mut events = fleet.events().expect("events");
    let mut echoes = 0;
    bounded("three thresholds of echoes", async {
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(150));
        while started.elapsed() < 3 * STALE {
            tokio::select! {
                _ = tick.tick() => {
                    fleet.broadcast(Message::text("tick")).await;
                }
                event = events.recv() => match event.expect("fleet runs").kind {
                    EventKind::Message(_) => echoes += 1,
                    EventKind::Disconnected(reason) => panic!("ended: {reason}"),
                    _ => {}
                },
            }
        }
    })
    .await;
    assert!(echoes >= 10, "only {echoes} echoes");
    fleet.shutdown().await;
}
