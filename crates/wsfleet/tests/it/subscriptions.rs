//! Subscriptions as state against the Python `websockets` echo server:
//! every connection — the first, a rotated one, a reconnected one — sends
//! the subscriptions its slot carries, and runtime changes reach the live
//! connections. The echo shows what each connection sent.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;
use wsfleet::Message;
use wsfleet::fleet::{
    ConnId, EventKind, Events, Fleet, Placement, SlotId, SubscribeError, Subscription,
};
use wsfleet_testkit::{Mode, PyServer, bounded};

fn sub(key: &str) -> Subscription {
    Subscription::new(key, Message::text(format!("sub {key}")))
        .end(Message::text(format!("unsub {key}")))
}

/// What each connection sent (its echoes), its slot, and when it was ready.
#[derive(Debug, Default)]
struct Seen {
    sent: BTreeMap<ConnId, Vec<String>>,
    slot: BTreeMap<ConnId, SlotId>,
    ready_at: BTreeMap<ConnId, Instant>,
    ended: BTreeSet<ConnId>,
}

impl Seen {
    /// Takes events until `connected` connections were ready in all.
    async fn until(&mut self, events: &mut Events, connected: usize) {
        bounded("connections ready", async {
            while self.ready_at.len() < connected {
                self.take(events.recv().await.expect("fleet runs"));
            }
        })
        .await;
    }

    /// Takes events for `d`.
    async fn for_(&mut self, events: &mut Events, d: Duration) {
        let end = Instant::now() + d;
        while let Ok(Some(event)) = tokio::time::timeout_at(end, events.recv()).await {
            self.take(event);
        }
    }

    fn take(&mut self, event: wsfleet::fleet::Event) {
        match event.kind {
            EventKind::Connected { .. } => {
                self.ready_at.insert(event.conn, Instant::now());
                self.slot.insert(event.conn, event.slot);
            }
            EventKind::Message(m) => self
                .sent
                .entry(event.conn)
                .or_default()
                .push(String::from_utf8_lossy(m.payload()).into_owned()),
            EventKind::Disconnected(_) => {
                self.ended.insert(event.conn);
            }
            _ => {}
        }
    }

    /// The keys `conn` is subscribed to after what it sent.
    fn subscribed(&self, conn: ConnId) -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        for m in self.sent.get(&conn).into_iter().flatten() {
            if let Some(k) = m.strip_prefix("sub ") {
                assert!(
                    keys.insert(k.to_owned()),
                    "{conn} subscribed to {k} twice: {m:?}"
                );
            } else if let Some(k) = m.strip_prefix("unsub ") {
                assert!(keys.remove(k), "{conn} ended {k}, which it did not carry");
            }
        }
        keys
    }

    fn live(&self) -> Vec<ConnId> {
        self.ready_at
            .keys()
            .filter(|c| !self.ended.contains(c))
            .copied()
            .collect()
    }
}

#[tokio::test]
async fn every_connection_replays_and_runtime_changes_reach_the_live_ones() {
    let server = PyServer::start(Mode::Echo).await.expect("python server");
    let mut fleet = Fleet::builder(server.url())
        .connections(3)
        .connect_rate(1000.0)
        // Rotations: every slot gets new connections throughout.
        .max_lifetime(Duration::from_millis(400))
        .subscribe(
            Subscription::new("a", Message::text("sub a"))
                .then(Message::text("a, second message"))
                .end(Message::text("unsub a")),
        )
        .spawn()
        .expect("spawn");
    let mut events = fleet.events().expect("events");
    let mut seen = Seen::default();
    seen.until(&mut events, 6).await;

    assert_eq!(fleet.subscribe(sub("b")).await, Ok(3));
    assert_eq!(
        fleet.subscribe(sub("b")).await,
        Err(SubscribeError::Duplicate { key: "b".into() })
    );
    let added = Instant::now();
    seen.until(&mut events, 12).await;
    assert_eq!(fleet.unsubscribe("a").await, Ok(3));
    let removed = Instant::now();
    seen.until(&mut events, 18).await;
    seen.for_(&mut events, Duration::from_millis(100)).await;
    assert_eq!(fleet.subscriptions(), ["b"]);

    for (conn, sent) in &seen.sent {
        let ready = seen.ready_at[conn];
        // What a connection opened before the change replayed comes first.
        if ready < added {
            assert_eq!(sent[..2], ["sub a", "a, second message"], "{conn}");
        }
        // Opened well after a change: it replayed the table as changed.
        if ready > removed + Duration::from_millis(100) {
            assert_eq!(
                sent.first().map(String::as_str),
                Some("sub b"),
                "{conn}: {sent:?}"
            );
            assert!(!sent.iter().any(|m| m.contains(" a")), "{conn}: {sent:?}");
        } else if ready > added + Duration::from_millis(100) {
            assert_eq!(sent[..3], ["sub a", "a, second message", "sub b"], "{conn}");
        }
        seen.subscribed(*conn);
    }
    let live = seen.live();
    assert_eq!(live.len(), 3, "{seen:?}");
    for conn in live {
        assert_eq!(
            seen.subscribed(conn),
            BTreeSet::from(["b".to_owned()]),
            "{conn}"
        );
    }
    fleet.shutdown().await;
}

#[tokio::test]
async fn spread_placement_keeps_each_subscription_on_one_slot_across_reconnects() {
    let server = PyServer::start(Mode::Echo).await.expect("python server");
    let mut builder = Fleet::builder(server.url())
        .connections(3)
        .connect_rate(1000.0)
        .max_lifetime(Duration::from_millis(300));
    let spread = |k: &str| sub(k).placement(Placement::Spread { per_connection: 2 });
    for k in 0..5 {
        builder = builder.subscribe(spread(&format!("k{k}")));
    }
    let mut fleet = builder.spawn().expect("spawn");
    let mut events = fleet.events().expect("events");
    let mut seen = Seen::default();
    seen.until(&mut events, 12).await;
    assert_eq!(
        fleet.subscribe(spread("k5")).await,
        Ok(1),
        "the last free place, on the slot with one"
    );
    assert!(matches!(
        fleet.subscribe(spread("k6")).await,
        Err(SubscribeError::NoRoom {
            per_connection: 2,
            slots: 3,
            ..
        })
    ));
    seen.until(&mut events, 18).await;
    seen.for_(&mut events, Duration::from_millis(100)).await;

    // Each slot's connections, first to last, carried the same keys.
    let mut by_slot: BTreeMap<SlotId, BTreeSet<String>> = BTreeMap::new();
    for (conn, slot) in &seen.slot {
        let keys: BTreeSet<String> = seen
            .subscribed(*conn)
            .into_iter()
            .filter(|k| k != "k5")
            .collect();
        let first = by_slot.entry(*slot).or_insert_with(|| keys.clone());
        assert_eq!(*first, keys, "{conn} of {slot}");
    }
    let all: Vec<String> = by_slot.values().flatten().cloned().collect();
    assert_eq!(all.len(), 5, "each key on one slot: {by_slot:?}");
    assert!(by_slot.values().all(|keys| keys.len() <= 2), "{by_slot:?}");
    // k5 is on the slot that had one, on its live connection.
    let live_with_k5: Vec<_> = seen
        .live()
        .into_iter()
        .filter(|c| seen.subscribed(*c).contains("k5"))
        .collect();
    assert_eq!(live_with_k5.len(), 1, "{seen:?}");
    assert_eq!(by_slot[&seen.slot[&live_with_k5[0]]].len(), 1);
    fleet.shutdown().await;
}
