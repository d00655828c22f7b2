//! A thousand connections rotating every ~3 s under steady traffic for 30 s:
//! the ready count never dips and no message is lost.
//!
//! Needs about 4,000 descriptors (1,000 clients and 1,000 server ends, twice
//! that while rotating); fails with a clear message if `ulimit -n` is low.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use wsfleet::Message;
use wsfleet::fleet::{DisconnectReason, EventKind, Fleet};
use wsfleet::serve::EchoServer;

const CONNECTIONS: usize = 1000;
const TRAFFIC: Duration = Duration::from_secs(30);
/// Messages per 10 ms tick: about 1,000 per second.
const PER_TICK: u64 = 10;

/// The soft limit on open files, from `/proc/self/limits`.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_connections_rotate_without_dipping_or_losing() {
    if let Some(limit) = open_files_limit() {
        assert!(
            limit >= 8192,
            "the open-files limit is {limit}; this test needs about 4,000 descriptors: \
             raise it with `ulimit -n 65536` before running the tests"
        );
    }
    tokio::time::timeout(Duration::from_secs(90), run())
        .await
        .expect("the whole test must finish within 90 s");
}

async fn run() {
    let server = EchoServer::bind("127.0.0.1:0", crate::config())
        .await
        .expect("bind");
    let mut fleet = Fleet::builder(server.url())
        .connections(CONNECTIONS)
        .max_lifetime(Duration::from_secs(3))
        .lifetime_jitter(0.3)
        .connect_rate(2000.0)
        .seed(1000)
        .spawn()
        .expect("spawn");
    let mut events = fleet.events().expect("events");

    let started = Instant::now();
    while fleet.ready() < CONNECTIONS {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "ramp-up: only {}/{CONNECTIONS} ready after 20 s",
            fleet.ready()
        );
        tokio::select! {
            _ = events.recv() => {}
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    let ramp = started.elapsed();

    let fleet = Arc::new(fleet);
    let sender = {
        let fleet = fleet.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let until = Instant::now() + TRAFFIC;
            let mut sent: u64 = 0;
            while Instant::now() < until {
                tick.tick().await;
                for _ in 0..PER_TICK {
                    fleet
                        .send(Message::text(sent.to_string()))
                        .await
                        .expect("a connection is always ready");
                    sent += 1;
                }
            }
            sent
        })
    };

    let mut echoed = vec![false; 64 * 1024];
    let mut echoed_count: u64 = 0;
    let mut duplicates: u64 = 0;
    let mut undelivered: u64 = 0;
    let mut rotations: u64 = 0;
    let mut other_disconnects: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut first_other: Option<String> = None;
    let mut min_ready = CONNECTIONS;
    let mut samples: u64 = 0;
    let mut sample = tokio::time::interval(Duration::from_millis(50));
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut sender = Some(sender);
    let mut sent: Option<u64> = None;
    let mut settle_deadline: Option<Instant> = None;
    loop {
        if let Some(sent) = sent {
            if echoed_count + undelivered >= sent {
                break;
            }
            if settle_deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
        }
        tokio::select! {
            event = events.recv() => match event.expect("the fleet is running").kind {
                EventKind::Message(m) => {
                    let seq: usize = m.as_text().and_then(|t| t.parse().ok()).expect("our message");
                    if seq >= echoed.len() {
                        echoed.resize(seq + 1, false);
                    }
                    if std::mem::replace(&mut echoed[seq], true) {
                        duplicates += 1;
                    } else {
                        echoed_count += 1;
                    }
                }
                EventKind::Undelivered(_) => undelivered += 1,
                EventKind::Disconnected(DisconnectReason::Rotated) => rotations += 1,
                EventKind::Disconnected(other) => {
                    *other_disconnects.entry(other.label()).or_default() += 1;
                    first_other.get_or_insert_with(|| other.to_string());
                }
                _ => {}
            },
            _ = sample.tick() => {
                min_ready = min_ready.min(fleet.ready());
                samples += 1;
            }
            done = async { sender.as_mut().expect("still sending").await }, if sender.is_some() => {
                sender = None;
                sent = Some(done.expect("sender"));
                settle_deadline = Some(Instant::now() + Duration::from_secs(10));
            }
        }
    }
    let sent = sent.expect("the sender finished");
    let stats = fleet.stats();
    println!(
        "fleet_1k: ramp-up {ramp:.2?}; min ready {min_ready} over {samples} samples; \
         sent {sent}, echoed {echoed_count}, undelivered {undelivered}, duplicates {duplicates}; \
         rotations {rotations}; other disconnects {other_disconnects:?} (first: {first_other:?}); \
         reconnects {}; budget peak {} B; total {:.1?}",
        stats.reconnects,
        stats.budget_peak,
        started.elapsed()
    );

    assert_eq!(min_ready, CONNECTIONS, "the ready count dipped");
    assert_eq!(undelivered, 0, "messages came back undelivered");
    assert_eq!(duplicates, 0, "messages echoed twice");
    assert_eq!(echoed_count, sent, "not every message was echoed");
    assert!(
        rotations >= CONNECTIONS as u64,
        "only {rotations} rotations"
    );
    assert!(
        other_disconnects.is_empty(),
        "unexpected disconnects {other_disconnects:?}, first: {first_other:?}"
    );
    Arc::into_inner(fleet)
        .expect("the only handle")
        .shutdown()
        .await;
}
