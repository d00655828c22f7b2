//! Changing a running fleet through [`FleetControl`] against the Python
//! `websockets` echo server: scaling up and down keeps the connections that
//! need not go (same ids), pausing closes and resuming reopens, one
//! connection is dropped or rotated on request, and spread subscriptions
//! move off slots that are scaled away.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;
use wsfleet::Message;
use wsfleet::fleet::{
    ConnId, ControlError, DisconnectReason, EventKind, Events, Fleet, Placement, SlotId,
    Subscription,
};
use wsfleet_testkit::{PyServer, bounded};

/// The fleet's connections as its events tell: which are up, on which
/// slot, why the others ended, and what each sent (its echoes).
#[derive(Debug, Default)]
struct Book {
    up: BTreeMap<ConnId, SlotId>,
    ended: BTreeMap<ConnId, DisconnectReason>,
    echoes: BTreeMap<ConnId, Vec<String>>,
}

impl Book {
    fn take(&mut self, event: wsfleet::fleet::Event) {
        match event.kind {
            EventKind::Connected { .. } => {
                self.up.insert(event.conn, event.slot);
            }
            EventKind::Disconnected(reason) if self.up.remove(&event.conn).is_some() => {
                self.ended.insert(event.conn, reason);
            }
            EventKind::Message(m) => self
                .echoes
                .entry(event.conn)
                .or_default()
                .push(String::from_utf8_lossy(m.payload()).into_owned()),
            _ => {}
        }
    }

    /// Takes events until `done` holds (bounded).
    async fn until(&mut self, events: &mut Events, what: &str, done: impl Fn(&Self) -> bool) {
        bounded(what, async {
            while !done(self) {
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

    fn ids(&self) -> BTreeSet<ConnId> {
        self.up.keys().copied().collect()
    }
}

#[tokio::test]
async fn scaling_keeps_the_connections_that_stay_and_closes_the_newest() {
    let server = PyServer::echo().await.expect("python echo server");
    let rate = 200.0;
    let mut fleet = Fleet::builder(server.url())
        .connections(20)
        .connect_rate(rate)
        .spawn()
        .unwrap();
    let control = fleet.control();
    let mut events = fleet.events().unwrap();
    let mut book = Book::default();
    book.until(&mut events, "20 up", |b| b.up.len() == 20).await;
    let first: BTreeSet<ConnId> = book.ids();

    // Up to 60: paced at the connect rate, the first 20 untouched.
    let t0 = Instant::now();
    let scaled = control.set_connections(60).await.unwrap();
    assert_eq!((scaled.before, scaled.after), (20, 60));
    book.until(&mut events, "60 up", |b| b.up.len() == 60).await;
    let took = t0.elapsed();
    let bound = Duration::from_secs_f64(40.0 / rate) + Duration::from_secs(2);
    assert!(took <= bound, "40 more took {took:?} (bound {bound:?})");
    assert!(
        first.is_subset(&book.ids()),
        "a connection went while scaling up"
    );
    assert!(
        book.ended.is_empty(),
        "ended while scaling up: {:?}",
        book.ended
    );
    assert_eq!(fleet.monitor().target(), 60);

    // Down to 5: the 55 newest slots close (1001, scaled down); the 5 on
    // the first slots keep their ids.
    let kept: BTreeSet<ConnId> = book
        .up
        .iter()
        .filter(|(_, slot)| slot.0 < 5)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(kept.len(), 5);
    control.set_connections(5).await.unwrap();
    book.until(&mut events, "5 left", |b| b.up.len() == 5).await;
    assert_eq!(book.ids(), kept);
    assert_eq!(book.ended.len(), 55);
    for (id, reason) in &book.ended {
        assert!(
            matches!(reason, DisconnectReason::ScaledDown),
            "{id} ended with {reason}"
        );
    }
    // Nothing more ends or connects afterwards.
    book.for_(&mut events, Duration::from_millis(500)).await;
    assert_eq!((book.ids(), book.ended.len()), (kept, 55));
    assert_eq!(fleet.stats().connections.len(), 5);

    // Refused whole, the fleet as it was.
    let err = control.set_connections(0).await.unwrap_err();
    assert!(
        matches!(err, ControlError::Target { asked: 0, .. }),
        "{err}"
    );
    assert_eq!(fleet.monitor().target(), 5);
    fleet.shutdown().await;
}

#[tokio::test]
async fn pause_closes_everything_and_resume_reopens() {
    let server = PyServer::echo().await.expect("python echo server");
    let mut fleet = Fleet::builder(server.url()).connections(8).spawn().unwrap();
    let control = fleet.control();
    let mut events = fleet.events().unwrap();
    let mut book = Book::default();
    book.until(&mut events, "8 up", |b| b.up.len() == 8).await;

    assert!(control.pause().await);
    assert!(!control.pause().await, "paused twice");
    book.until(&mut events, "all closed", |b| b.up.is_empty())
        .await;
    assert!(
        book.ended
            .values()
            .all(|r| matches!(r, DisconnectReason::Paused))
    );
    assert!(fleet.monitor().is_paused());
    // Paused: nothing dials, sends find no connection.
    book.for_(&mut events, Duration::from_millis(300)).await;
    assert!(book.up.is_empty());
    assert!(fleet.send(Message::text("x")).await.is_err());
    // The count can change while paused; it applies on resume.
    control.set_connections(10).await.unwrap();
    book.for_(&mut events, Duration::from_millis(200)).await;
    assert!(book.up.is_empty(), "dialled while paused");

    assert!(control.resume().await);
    book.until(&mut events, "10 up again", |b| b.up.len() == 10)
        .await;
    assert!(!fleet.monitor().is_paused());
    fleet.shutdown().await;
}

#[tokio::test]
async fn drop_and_rotate_touch_one_connection_only() {
    let server = PyServer::echo().await.expect("python echo server");
    let mut fleet = Fleet::builder(server.url()).connections(6).spawn().unwrap();
    let control = fleet.control();
    let mut events = fleet.events().unwrap();
    let mut book = Book::default();
    book.until(&mut events, "6 up", |b| b.up.len() == 6).await;
    let before = book.ids();
    let victim = *before.iter().next().unwrap();
    let slot = control.drop_connection(victim).unwrap();
    assert_eq!(slot, book.up[&victim]);
    book.until(&mut events, "victim replaced", |b| {
        b.ended.contains_key(&victim) && b.up.len() == 6
    })
    .await;
    assert!(matches!(book.ended[&victim], DisconnectReason::Dropped));
    let after_drop = book.ids();
    assert_eq!(
        before.difference(&after_drop).collect::<Vec<_>>(),
        [&victim]
    );

    // Rotate: make-before-break on its slot, the others untouched.
    let rotated = *after_drop.iter().last().unwrap();
    let rotated_slot = book.up[&rotated];
    control.rotate_connection(rotated).unwrap();
    book.until(&mut events, "rotated", |b| b.ended.contains_key(&rotated))
        .await;
    assert!(matches!(book.ended[&rotated], DisconnectReason::Rotated));
    assert_eq!(book.up.len(), 6);
    assert_eq!(book.up.values().filter(|s| **s == rotated_slot).count(), 1);
    assert_eq!(book.ended.len(), 2, "{:?}", book.ended);

    // Unknown ids are refused.
    let err = control.drop_connection(ConnId(999_999)).unwrap_err();
    assert_eq!(err, ControlError::UnknownConnection(ConnId(999_999)));
    let err = control.rotate_slot(SlotId(77)).unwrap_err();
    assert_eq!(err, ControlError::UnknownSlot(SlotId(77)));

    // Send to one slot's connection: only it echoes.
    let target_slot = SlotId(2);
    let conn = control
        .send_to_slot(target_slot, Message::text("only-you"))
        .await
        .unwrap();
    book.until(&mut events, "echo", |b| b.echoes.contains_key(&conn))
        .await;
    book.for_(&mut events, Duration::from_millis(200)).await;
    let echoed: Vec<&ConnId> = book
        .echoes
        .iter()
        .filter(|(_, e)| e.iter().any(|m| m == "only-you"))
        .map(|(c, _)| c)
        .collect();
    assert_eq!(echoed, [&conn]);
    assert_eq!(book.up[&conn], target_slot);
    fleet.shutdown().await;
}

/// `send_to` reaches exactly the connection named, and only while it is
/// ready: after a drop (its slot reconnects) or a scale-down the old id is
/// unknown and the slot's new connection takes its own id.
#[tokio::test]
async fn send_to_names_one_ready_connection_across_reconnects_and_scaling() {
    let server = PyServer::echo().await.expect("python echo server");
    let mut fleet = Fleet::builder(server.url())
        .connections(6)
        .connect_rate(200.0)
        .spawn()
        .unwrap();
    let control = fleet.control();
    let mut events = fleet.events().unwrap();
    let mut book = Book::default();
    book.until(&mut events, "6 up", |b| b.up.len() == 6).await;
    for (n, conn) in book.ids().into_iter().enumerate() {
        control
            .send_to(conn, Message::text(format!("to-{n}")))
            .await
            .unwrap();
    }
    book.until(&mut events, "6 echoes", |b| b.echoes.len() == 6)
        .await;
    for (n, conn) in book.ids().into_iter().enumerate() {
        assert_eq!(book.echoes[&conn], [format!("to-{n}")], "{conn}");
    }

    // Dropped: its id is gone, the slot's next connection answers to its own.
    let victim = *book.up.keys().next().unwrap();
    let slot = control.drop_connection(victim).unwrap();
    book.until(&mut events, "slot back", |b| {
        !b.up.contains_key(&victim) && b.up.values().filter(|s| **s == slot).count() == 1
    })
    .await;
    let err = control
        .send_to(victim, Message::text("late"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, wsfleet::fleet::FleetSendError::UnknownConnection(_)),
        "{err:?}"
    );
    let successor = *book.up.iter().find(|(_, s)| **s == slot).unwrap().0;
    control
        .send_to(successor, Message::text("new"))
        .await
        .unwrap();
    book.until(&mut events, "successor echo", |b| {
        b.echoes.contains_key(&successor)
    })
    .await;

    // Scaled away: the highest slots' ids are unknown, the rest still answer.
    let before = book.up.clone();
    control.set_connections(3).await.unwrap();
    book.until(&mut events, "3 up", |b| b.up.len() == 3).await;
    for (conn, slot) in before {
        let sent = control.send_to(conn, Message::text("still")).await;
        assert_eq!(sent.is_ok(), slot.0 < 3, "{conn} on {slot}: {sent:?}");
    }
    fleet.shutdown().await;
}

#[tokio::test]
async fn scaling_down_moves_spread_subscriptions_to_the_slots_that_stay() {
    let server = PyServer::echo().await.expect("python echo server");
    let spread = |key: &str| {
        Subscription::new(key, Message::text(format!("sub {key}")))
            .placement(Placement::Spread { per_connection: 2 })
    };
    let mut fleet = Fleet::builder(server.url())
        .connections(4)
        .subscribe(spread("a"))
        .subscribe(spread("b"))
        .subscribe(spread("c"))
        .subscribe(spread("d"))
        .spawn()
        .unwrap();
    let control = fleet.control();
    let mut events = fleet.events().unwrap();
    let mut book = Book::default();
    book.until(&mut events, "4 subscribed", |b| {
        b.up.len() == 4 && b.echoes.values().map(Vec::len).sum::<usize>() == 4
    })
    .await;
    // One per slot; down to 2 slots: "c" and "d" move, one each.
    let scaled = control.set_connections(2).await.unwrap();
    assert_eq!(scaled.moved_subscriptions, 2);
    book.until(&mut events, "moved subscriptions echoed", |b| {
        b.up.len() == 2
            && b.up
                .keys()
                .all(|c| b.echoes.get(c).is_some_and(|e| e.len() == 2))
    })
    .await;
    let mut carried: Vec<String> = book
        .up
        .keys()
        .flat_map(|c| book.echoes[c].clone())
        .collect();
    carried.sort();
    assert_eq!(carried, ["sub a", "sub b", "sub c", "sub d"]);
    // One slot cannot carry four at two each: refused, nothing closes.
    let err = control.set_connections(1).await.unwrap_err();
    assert!(matches!(err, ControlError::Subscriptions(_)), "{err}");
    book.for_(&mut events, Duration::from_millis(300)).await;
    assert_eq!(book.up.len(), 2);
    fleet.shutdown().await;
}

#[tokio::test]
async fn a_coordinated_fleet_runs_only_the_slots_it_holds() {
    let server = PyServer::echo().await.expect("python echo server");
    let mut fleet = Fleet::builder(server.url())
        .connections(4)
        .coordinated()
        .spawn()
        .unwrap();
    let control = fleet.control();
    let mut events = fleet.events().unwrap();
    let mut book = Book::default();
    book.for_(&mut events, Duration::from_millis(300)).await;
    assert!(book.up.is_empty(), "nothing held, yet {:?} up", book.up);
    assert!(control.is_stopped(SlotId(1)).unwrap());

    assert!(control.hold(SlotId(1)).unwrap());
    assert!(control.hold(SlotId(3)).unwrap());
    assert!(!control.hold(SlotId(3)).unwrap(), "held twice");
    book.until(&mut events, "2 up", |b| b.up.len() == 2).await;
    let slots: BTreeSet<SlotId> = book.up.values().copied().collect();
    assert_eq!(slots, BTreeSet::from([SlotId(1), SlotId(3)]));
    assert_eq!(control.held_slots(), [SlotId(1), SlotId(3)]);
    assert_eq!(control.monitor().target(), 2, "its target is what it holds");

    // Released: closed gracefully; revoked: aborted, each with its reason.
    let conn_of = |book: &Book, slot| *book.up.iter().find(|(_, s)| **s == slot).unwrap().0;
    let (one, three) = (conn_of(&book, SlotId(1)), conn_of(&book, SlotId(3)));
    assert!(control.release(SlotId(1)).unwrap());
    assert!(control.revoke(SlotId(3)).unwrap());
    book.until(&mut events, "both ended", |b| b.up.is_empty())
        .await;
    assert!(matches!(book.ended[&one], DisconnectReason::Released));
    assert!(matches!(book.ended[&three], DisconnectReason::LeaseLost));
    bounded("slot tasks end", async {
        while !(control.is_stopped(SlotId(1)).unwrap() && control.is_stopped(SlotId(3)).unwrap()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(control.held_slots().is_empty());

    // Held again: it dials again.
    assert!(control.hold(SlotId(1)).unwrap());
    book.until(&mut events, "1 up again", |b| b.up.len() == 1)
        .await;
    assert!(matches!(
        control.set_connections(8).await,
        Err(ControlError::Target { .. })
    ));
    assert!(matches!(
        control.hold(SlotId(4)),
        Err(ControlError::UnknownSlot(SlotId(4)))
    ));
    fleet.shutdown().await;

    let plain = Fleet::builder(server.url()).connections(1).spawn().unwrap();
    assert!(matches!(
        plain.control().hold(SlotId(0)),
        Err(ControlError::Coordination(_))
    ));
    plain.shutdown().await;
}
