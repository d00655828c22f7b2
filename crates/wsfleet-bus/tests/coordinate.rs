//! The lease coordinator against a real `nats-server -js` and an echo
//! server on loopback: when NATS stops answering, every held slot is
//! aborted within the fence (no slot is served without a lease that could
//! still be live); when NATS is back, the slots are taken again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;
use wsfleet::ConnectionConfig;
use wsfleet::fleet::{ConnId, DisconnectReason, EventKind, Events, Fleet, SlotId};
use wsfleet::serve::EchoServer;
use wsfleet_bus::coordinate::{CoordinateConfig, Coordinator, LeaseTiming};
use wsfleet_testkit::NatsServer;

const SLOTS: usize = 4;
const LEASE: Duration = Duration::from_secs(2);

/// Up connections by slot, and how the others ended.
#[derive(Debug, Default)]
struct Book {
    up: BTreeMap<ConnId, SlotId>,
    ended: Vec<(ConnId, DisconnectReason, Instant)>,
}

impl Book {
    /// Takes events until `done` holds, within `limit`.
    async fn until(
        &mut self,
        events: &mut Events,
        limit: Duration,
        what: &str,
        done: impl Fn(&Self) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        while !done(self) {
            let event = tokio::time::timeout_at(deadline, events.recv())
                .await
                .unwrap_or_else(|_| panic!("{what}: not within {limit:?}: {self:?}"))
                .expect("fleet runs");
            match event.kind {
                EventKind::Connected { .. } => {
                    self.up.insert(event.conn, event.slot);
                }
                EventKind::Disconnected(reason) if self.up.remove(&event.conn).is_some() => {
                    self.ended.push((event.conn, reason, Instant::now()));
                }
                _ => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_are_aborted_within_the_fence_when_nats_is_gone_and_taken_again_after() {
    let mut nats = NatsServer::start().await.expect("nats-server");
    let echo = EchoServer::bind("127.0.0.1:0", ConnectionConfig::default())
        .await
        .expect("echo server");
    let mut fleet = Fleet::builder(echo.url())
        .connections(SLOTS)
        .coordinated()
        .spawn()
        .unwrap();
    let mut events = fleet.events().unwrap();
    let timing = LeaseTiming::new(LEASE).unwrap();
    let config = CoordinateConfig {
        url: format!("{}/fence", nats.url()).parse().unwrap(),
        timing,
        take_rate: 100.0,
    };
    let coordinator = Coordinator::start(config, fleet.control())
        .await
        .expect("coordinator");
    let mut book = Book::default();
    book.until(&mut events, Duration::from_secs(10), "every slot up", |b| {
        b.up.len() == SLOTS
    })
    .await;
    let slots: BTreeSet<SlotId> = book.up.values().copied().collect();
    assert_eq!(slots.len(), SLOTS, "a slot twice: {book:?}");
    assert_eq!(coordinator.state().held, SLOTS);

    // NATS gone: each key's last successful write was sent at most a
    // renewal (R) before the kill, so every slot must be aborted by
    // kill + F + a tick (plus slack for a loaded machine): before
    // kill + T − R, the earliest any key could expire.
    nats.kill().await.expect("kill nats");
    let killed = Instant::now();
    let limit = timing.fence() + timing.tick() + Duration::from_millis(300);
    book.until(&mut events, limit, "every slot aborted", |b| {
        b.up.is_empty()
    })
    .await;
    let worst = book
        .ended
        .iter()
        .map(|(_, _, at)| at.duration_since(killed))
        .max()
        .unwrap();
    eprintln!(
        "NATS killed: every slot aborted after at most {worst:?} (fence {:?}, limit {limit:?})",
        timing.fence()
    );
    for (conn, reason, _) in &book.ended {
        assert!(
            matches!(reason, DisconnectReason::LeaseLost),
            "{conn} ended with {reason:?}"
        );
    }
    assert!(fleet.control().held_slots().is_empty());
    assert_eq!(coordinator.state().lost, SLOTS as u64);

    // NATS back (same store): our old keys expire, and the slots are taken
    // again.
    nats.restart().await.expect("restart nats");
    let restarted = Instant::now();
    book.until(
        &mut events,
        Duration::from_secs(15),
        "every slot up again",
        |b| b.up.len() == SLOTS,
    )
    .await;
    eprintln!(
        "NATS restarted: every slot up again after {:?}",
        restarted.elapsed()
    );
    coordinator.shutdown(Duration::from_secs(5)).await;
    fleet.shutdown().await;
}
