//! A consumer of the fleet's events that falls behind, under each
//! [`SlowConsumer`] policy, against a real server streaming numbered
//! messages as fast as they are read (`ChaosMode::Stream`).

use std::collections::HashMap;
use std::time::Duration;

use wsfleet::fleet::{ConnState, EventKind, Events, Fleet, FleetBuilder, SlowConsumer};
use wsfleet::serve::{ChaosMode, ChaosServer, ChaosSettings};
use wsfleet::{Limits, Message};
use wsfleet_testkit::bounded;

const MESSAGE: usize = 64 << 10;

async fn stream_server() -> ChaosServer {
    let settings = ChaosSettings::default().with_message_size(MESSAGE);
    ChaosServer::bind_with("127.0.0.1:0", ChaosMode::Stream, settings)
        .await
        .expect("bind")
}

fn fleet(server: &ChaosServer, budget: usize, queue: usize) -> FleetBuilder {
    Fleet::builder(server.url())
        .connections(4)
        .connect_rate(1000.0)
        .memory_budget(budget)
        .event_capacity(queue)
        .limits(
            Limits::default()
                .with_max_message(1 << 20)
                .with_max_frame_payload(1 << 20),
        )
}

fn seq(m: &Message) -> u64 {
    u64::from_be_bytes(m.payload()[..8].try_into().unwrap())
}

/// Takes `n` messages, returning per-connection sequence numbers seen and
/// the disconnect labels met on the way.
async fn take(events: &mut Events, n: usize) -> (HashMap<u64, Vec<u64>>, Vec<&'static str>) {
    let mut seen: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut drops = Vec::new();
    let mut got = 0;
    while got < n {
        let event = events.recv().await.expect("event");
        match event.kind {
            EventKind::Message(m) => {
                seen.entry(event.conn.0).or_default().push(seq(&m));
                got += 1;
            }
            EventKind::Disconnected(reason) => drops.push(reason.label()),
            _ => {}
        }
    }
    (seen, drops)
}

#[tokio::test]
async fn backpressure_loses_nothing_and_holds_the_budget() {
    let server = stream_server().await;
    // A queue that could hold 64 MiB: the 2 MiB budget is what binds.
    let budget = 2 << 20;
    let mut fleet = fleet(&server, budget, 1024).spawn().expect("spawn");
    let mut events = fleet.events().expect("events");
    let _ = bounded("first messages", take(&mut events, 8)).await;
    // The consumer stalls: the fleet fills its budget, then pauses.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stats = fleet.stats();
    assert!(
        stats.budget_pauses > 0,
        "connections paused: {}",
        stats.budget_pauses
    );
    assert!(
        stats.budget_peak <= budget + 4 * (4096 + 128),
        "peak {}",
        stats.budget_peak
    );
    assert_eq!(stats.events_dropped, 0);
    // It resumes: every connection's numbers go on without a gap.
    let (seen, drops) = bounded("after the stall", take(&mut events, 400)).await;
    assert!(drops.is_empty(), "{drops:?}");
    for (conn, numbers) in &seen {
        for pair in numbers.windows(2) {
            assert_eq!(pair[1], pair[0] + 1, "conn {conn}: gap in {numbers:?}");
        }
    }
    fleet.shutdown().await;
}

#[tokio::test]
async fn connections_waiting_for_the_consumer_show_as_paused() {
    let server = stream_server().await;
    // A budget far above what a 4-event queue holds: only the queue binds.
    let mut fleet = fleet(&server, 256 << 20, 4).spawn().expect("spawn");
    let mut events = fleet.events().expect("events");
    let _ = bounded("first messages", take(&mut events, 8)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let stats = fleet.stats();
    let paused = stats
        .connections
        .iter()
        .filter(|c| c.state == ConnState::Paused)
        .count();
    assert!(paused > 0, "{:?}", stats.connections);
    assert_eq!(stats.ready, 4, "paused connections are ready");
    assert_eq!(stats.budget_pauses, 0, "not a pause for memory");
    // Reading again, they go back to ready.
    let _ = bounded("after the stall", take(&mut events, 200)).await;
    fleet.shutdown().await;
}

#[tokio::test]
async fn drop_newest_counts_what_it_drops_and_keeps_reading() {
    let server = stream_server().await;
    let mut fleet = fleet(&server, 64 << 20, 8)
        .slow_consumer(SlowConsumer::DropNewest)
        .spawn()
        .expect("spawn");
    let mut events = fleet.events().expect("events");
    let _ = bounded("first messages", take(&mut events, 8)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let dropped = fleet.stats().events_dropped;
    assert!(dropped > 0, "a full queue drops the newest");
    let (seen, drops) = bounded("after the stall", take(&mut events, 100)).await;
    assert!(drops.is_empty(), "{drops:?}");
    // Gaps are the policy; the numbers still only go up.
    let gaps: u64 = seen
        .values()
        .flat_map(|n| n.windows(2).map(|p| p[1] - p[0] - 1))
        .sum();
    assert!(gaps > 0, "dropped {dropped}, yet no gap seen");
    fleet.shutdown().await;
}

#[tokio::test]
async fn disconnect_closes_the_connections_the_consumer_cannot_keep_up_with() {
    let server = stream_server().await;
    let mut fleet = fleet(&server, 64 << 20, 8)
        .slow_consumer(SlowConsumer::Disconnect(Duration::from_millis(200)))
        .spawn()
        .expect("spawn");
    let mut events = fleet.events().expect("events");
    let _ = bounded("first messages", take(&mut events, 8)).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let labels = bounded("slow_consumer disconnects", async {
        let mut labels = Vec::new();
        while !labels.contains(&"slow_consumer") {
            if let EventKind::Disconnected(r) = events.recv().await.expect("event").kind {
                labels.push(r.label());
            }
        }
        labels
    })
    .await;
    assert!(labels.iter().all(|l| *l == "slow_consumer"), "{labels:?}");
    assert!(fleet.stats().events_dropped > 0);
    fleet.shutdown().await;
}
