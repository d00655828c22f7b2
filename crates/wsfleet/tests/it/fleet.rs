//! The fleet against real servers on loopback: readiness, rotation without a
//! dip, isolation of failures, backoff, the budget, shutdown.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use wsfleet::fleet::{Backoff, ConnState, DisconnectReason, EventKind, Events, Fleet};
use wsfleet::serve::EchoServer;
use wsfleet::{Limits, Message};
use wsfleet_testkit::bounded;

async fn echo_server() -> EchoServer {
    EchoServer::bind("127.0.0.1:0", crate::config())
        .await
        .expect("bind")
}

/// Waits until `n` connections are ready, consuming events meanwhile.
async fn until_ready(fleet: &Fleet, events: &mut Events, n: usize) {
    bounded("ramp-up", async {
        while fleet.ready() < n {
            tokio::select! {
                _ = events.recv() => {}
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    })
    .await;
}

#[tokio::test]
async fn keeps_n_ready_and_routes_messages() {
    let server = echo_server().await;
    let mut fleet = Fleet::builder(server.url())
        .connections(50)
        .connect_rate(1000.0)
        .spawn()
        .expect("spawn");
    let mut events = fleet.events().expect("events");
    until_ready(&fleet, &mut events, 50).await;
    let mut expected = HashSet::new();
    for i in 0..500 {
        fleet
            .send(Message::text(format!("m{i}")))
            .await
            .expect("send");
        expected.insert(format!("m{i}"));
    }
    let mut used_conns = HashSet::new();
    bounded("echoes", async {
        while !expected.is_empty() {
            let event = events.recv().await.expect("event");
            if let EventKind::Message(m) = event.kind {
                assert!(expected.remove(m.as_text().unwrap()), "unexpected {m:?}");
                used_conns.insert(event.conn);
            }
        }
    })
    .await;
    assert_eq!(
        used_conns.len(),
        50,
        "round robin spreads over every connection"
    );
    let stats = fleet.stats();
    assert_eq!((stats.target, stats.ready), (50, 50));
    assert!(
        stats
            .connections
            .iter()
            .all(|c| c.msgs_out >= 10 && c.url.starts_with("ws://127.0.0.1"))
    );
    fleet.shutdown().await;
}

#[tokio::test]
async fn rotation_keeps_every_slot_ready_and_loses_nothing() {
    let server = echo_server().await;
    let n = 20;
    let mut fleet = Fleet::builder(server.url())
        .connections(n)
        .max_lifetime(Duration::from_millis(700))
        .lifetime_jitter(0.3)
        .connect_rate(1000.0)
        .seed(1)
        .spawn()
        .expect("spawn");
    let mut events = fleet.events().expect("events");
    until_ready(&fleet, &mut events, n).await;
    let fleet = Arc::new(fleet);
    let sender = {
        let fleet = fleet.clone();
        tokio::spawn(async move {
            for i in 0..3000u32 {
                fleet
                    .send(Message::text(i.to_string()))
                    .await
                    .expect("a connection is ready");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let mut echoed = HashSet::new();
    let mut undelivered = 0;
    let mut rotations = 0;
    let mut min_ready = n;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while echoed.len() + undelivered < 3000 && tokio::time::Instant::now() < deadline {
        min_ready = min_ready.min(fleet.ready());
        tokio::select! {
            Some(event) = events.recv() => match event.kind {
                EventKind::Message(m) => {
                    echoed.insert(m.as_text().unwrap().to_owned());
                }
                EventKind::Undelivered(_) => undelivered += 1,
                EventKind::Disconnected(DisconnectReason::Rotated) => rotations += 1,
                EventKind::Disconnected(other) => panic!("unexpected disconnect: {other}"),
                _ => {}
            },
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
    sender.await.expect("sender");
    assert_eq!(min_ready, n, "a slot dipped during rotation");
    assert!(rotations >= n, "only {rotations} rotations");
    assert_eq!((echoed.len(), undelivered), (3000, 0));
    Arc::try_unwrap(fleet)
        .expect("only handle")
        .shutdown()
        .await;
}

#[tokio::test]
async fn a_panicking_hook_ends_only_its_connection() {
    let server = echo_server().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let hook_calls = calls.clone();
    let mut fleet = Fleet::builder(server.url())
        .connections(10)
        .connect_rate(1000.0)
        .backoff(Backoff::new(Duration::from_millis(10), Duration::from_millis(50)).unwrap())
        .on_connect(move |conn| {
            let call = hook_calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if call == 3 {
                    panic!("hook bug on call 3");
                }
                conn.send(Message::text("subscribe"))
                    .await
                    .map_err(|e| e.to_string())
            })
        })
        .spawn()
        .expect("spawn");
    let mut events = fleet.events().expect("events");
    let mut panicked = 0;
    let mut subscribed = 0;
    bounded("ten ready after a panic", async {
        while subscribed < 10 || panicked == 0 || fleet.ready() < 10 {
            let event = events.recv().await.expect("event");
            match event.kind {
                EventKind::Disconnected(DisconnectReason::Panicked(what)) => {
                    assert!(what.contains("hook bug"), "{what}");
                    panicked += 1;
                }
                EventKind::Message(m) => {
                    assert_eq!(m, Message::text("subscribe"));
                    subscribed += 1;
                }
                EventKind::Disconnected(other) => panic!("unexpected: {other}"),
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(panicked, 1);
    assert_eq!(calls.load(Ordering::SeqCst), 11);
    fleet.shutdown().await;
}

/// Every connection gets the first 2 MiB of a 3 MiB frame at once, then a
/// pause, then the rest: all of them hold large partial frames together.
async fn large_frame_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                crate::script::accept_upgrade(&mut tcp).await;
                let wire =
                    crate::script::frame(true, wsfleet::proto::OpCode::Binary, &vec![7u8; 3 << 20]);
                let (head, tail) = wire.split_at(2 << 20);
                if tcp.write_all(head).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                let _ = tcp.write_all(tail).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn budget_holds_when_every_connection_gets_a_large_message() {
    let addr = large_frame_server().await;
    let budget = 8 << 20;
    let mut fleet = Fleet::builder(format!("ws://{addr}/"))
        .connections(8)
        .connect_rate(1000.0)
        .memory_budget(budget)
        .backoff(Backoff::new(Duration::from_secs(5), Duration::from_secs(5)).unwrap())
        .limits(
            Limits::default()
                .with_max_message(4 << 20)
                .with_max_frame_payload(4 << 20),
        )
        .spawn()
        .expect("spawn");
    let mut events = fleet.events().expect("events");
    let mut delivered = 0;
    let mut dropped_for_budget = 0;
    bounded("all answered or dropped", async {
        while delivered + dropped_for_budget < 8 {
            let event = events.recv().await.expect("event");
            match event.kind {
                EventKind::Message(m) => {
                    assert_eq!(m.len(), 3 << 20);
                    delivered += 1;
                }
                EventKind::Disconnected(reason) => {
                    assert_eq!(reason.label(), "budget_exhausted", "{reason}");
                    assert_eq!(reason.close_code().map(|c| c.as_u16()), Some(1009));
                    assert!(reason.to_string().contains("memory budget"), "{reason}");
                    dropped_for_budget += 1;
                }
                _ => {}
            }
        }
    })
    .await;
    let stats = fleet.stats();
    assert!(
        stats.budget_peak <= budget,
        "peak {} > budget {budget}",
        stats.budget_peak
    );
    assert!(dropped_for_budget > 0, "the test must push past the budget");
    assert!(delivered > 0, "some connections fit");
    for c in stats
        .connections
        .iter()
        .filter(|c| c.state == ConnState::Backoff)
    {
        let error = c.last_error.as_deref().unwrap_or_default();
        assert!(
            error.contains("memory budget"),
            "slot {} in backoff with {error:?}",
            c.slot
        );
    }
    fleet.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_every_connection_cleanly() {
    let server = echo_server().await;
    let mut fleet = Fleet::builder(server.url())
        .connections(20)
        .connect_rate(1000.0)
        .spawn()
        .expect("spawn");
    let mut events = fleet.events().expect("events");
    until_ready(&fleet, &mut events, 20).await;
    let budget = fleet.stats();
    bounded("shutdown", fleet.shutdown()).await;
    let mut closed = 0;
    while let Some(event) = events.try_recv() {
        match event.kind {
            EventKind::Disconnected(DisconnectReason::Shutdown) => closed += 1,
            EventKind::Disconnected(other) => panic!("unclean: {other}"),
            _ => {}
        }
    }
    assert_eq!(closed, 20);
    assert_eq!(budget.target, 20);
}
