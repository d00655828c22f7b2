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
    assert!(fleet.stats().totals.rotations >= rotations as u64);
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
                conn.send(Message::text("subscribe")).await?;
                Ok(())
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

/// The hook's own error type, to find again in the disconnect reason.
#[derive(Debug)]
struct Denied(std::io::Error);

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("subscription denied")
    }
}

impl std::error::Error for Denied {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[tokio::test]
async fn a_failing_hook_reports_its_own_error_and_a_late_one_times_out() {
    let server = echo_server().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let hook_calls = calls.clone();
    let deadlines =
        wsfleet::connect::Deadlines::default().with_handshake(Duration::from_millis(300));
    let mut fleet = Fleet::builder(server.url())
        .deadlines(deadlines)
        .backoff(Backoff::new(Duration::from_millis(10), Duration::from_millis(20)).unwrap())
        .on_connect(move |_conn| {
            let call = hook_calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                match call {
                    0 => Err(Denied(std::io::Error::other("token expired")).into()),
                    1 => std::future::pending().await,
                    _ => Ok(()),
                }
            })
        })
        .spawn()
        .expect("spawn");
    let mut events = fleet.events().expect("events");
    let mut reasons = Vec::new();
    bounded("two hook failures, then ready", async {
        loop {
            match events.recv().await.expect("event").kind {
                EventKind::Disconnected(reason) => reasons.push(reason),
                EventKind::Connected { .. } => break,
                _ => {}
            }
        }
    })
    .await;
    let [
        DisconnectReason::HookFailed(denied),
        DisconnectReason::HookFailed(late),
    ] = &reasons[..]
    else {
        panic!("expected two hook failures, got {reasons:?}");
    };
    // Kept whole: the hook's type, its source in the text.
    assert!(denied.downcast_ref::<Denied>().is_some(), "{denied:?}");
    assert_eq!(
        reasons[0].to_string(),
        "on-connect hook failed: subscription denied: token expired"
    );
    let late = late.downcast_ref::<std::io::Error>().expect("an io::Error");
    assert_eq!(late.kind(), std::io::ErrorKind::TimedOut, "{late}");
    assert_eq!(reasons[0].label(), "hook_failed");
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
    // Only bytes already in hand may pass the budget: the close frames owed
    // to dropped peers (a close must go out to close cleanly) and at most
    // one small stack read per connection (docs/memory.md).
    let slack = 8 * (4096 + 128);
    assert!(
        stats.budget_peak <= budget + slack,
        "peak {} > budget {budget} + {slack}",
        stats.budget_peak
    );
    assert!(dropped_for_budget > 0, "the test must push past the budget");
    // Which connections win the race for the budget varies; that the
    // losers alone are dropped (1009) and the peak never passes it does not.
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
    let monitor = fleet.monitor();
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
    // Every buffer byte went back to the budget.
    let after = monitor.stats();
    assert_eq!(
        after.budget_used, 0,
        "budget still holds {} bytes",
        after.budget_used
    );
    assert!(
        after
            .connections
            .iter()
            .all(|c| c.state == ConnState::Closed)
    );
}

/// A server whose answer changes over time: for each accepted connection it
/// records the time and asks `behave(attempt_number)` what to do.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// Accept TCP, then drop it (the handshake fails).
    Drop,
    /// Answer `503` with `Retry-After: N`.
    Busy(u32),
    /// Upgrade and echo.
    Echo,
}

async fn changing_server(
    behave: impl Fn(usize) -> Answer + Send + Sync + 'static,
) -> (
    std::net::SocketAddr,
    Arc<std::sync::Mutex<Vec<tokio::time::Instant>>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let attempts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = attempts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let n = {
                let mut log = log.lock().unwrap();
                log.push(tokio::time::Instant::now());
                log.len() - 1
            };
            let answer = behave(n);
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                match answer {
                    Answer::Drop => drop(tcp),
                    Answer::Busy(secs) => {
                        let mut buf = [0u8; 2048];
                        let _ = tcp.read(&mut buf).await;
                        let reply = format!(
                            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: {secs}\r\nContent-Length: 0\r\n\r\n"
                        );
                        let _ = tcp.write_all(reply.as_bytes()).await;
                    }
                    Answer::Echo => {
                        let conn = wsfleet::Connection::accept(
                            wsfleet::connect::MaybeTlsStream::Plain(tcp),
                            "client",
                            &crate::config(),
                        )
                        .await;
                        if let Ok(mut conn) = conn {
                            while let Some(Ok(m)) = conn.recv().await {
                                if conn.send(m).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, attempts)
}

#[tokio::test]
async fn outage_is_survived_with_reconnects_spaced_by_backoff() {
    let outage = Duration::from_secs(2);
    let started = tokio::time::Instant::now();
    let (addr, attempts) = changing_server(move |_| {
        if started.elapsed() < outage {
            Answer::Drop
        } else {
            Answer::Echo
        }
    })
    .await;
    let mut fleet = Fleet::builder(format!("ws://{addr}/"))
        .connections(1)
        .backoff(Backoff::new(Duration::from_millis(50), Duration::from_millis(800)).unwrap())
        .seed(7)
        .spawn()
        .expect("spawn");
    let mut events = fleet.events().expect("events");
    let mut failures = 0;
    bounded("reconnected after the outage", async {
        loop {
            match events.recv().await.expect("event").kind {
                EventKind::Connected { .. } => break,
                EventKind::Disconnected(DisconnectReason::ConnectFailed { .. }) => failures += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    let times = attempts.lock().unwrap().clone();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    println!("outage attempts: {}, gaps: {gaps:?}", times.len());
    // Without backoff a 2 s outage costs thousands of attempts; with a
    // 50 ms base doubling to an 800 ms cap it costs a handful.
    assert!((3..=40).contains(&times.len()), "{} attempts", times.len());
    assert_eq!(failures, times.len() - 1);
    assert!(
        gaps.iter().all(|g| *g <= Duration::from_millis(900)),
        "a gap above the cap: {gaps:?}"
    );
    assert!(
        started.elapsed() < outage + Duration::from_secs(2),
        "slow to come back"
    );
    fleet.shutdown().await;
}

#[tokio::test]
async fn retry_after_from_a_busy_server_is_respected() {
    let (addr, attempts) = changing_server(|n| {
        if n == 0 {
            Answer::Busy(1)
        } else {
            Answer::Echo
        }
    })
    .await;
    let mut fleet = Fleet::builder(format!("ws://{addr}/"))
        .connections(1)
        .backoff(Backoff::new(Duration::from_millis(10), Duration::from_millis(20)).unwrap())
        .spawn()
        .expect("spawn");
    let mut events = fleet.events().expect("events");
    bounded("connected after Retry-After", async {
        loop {
            match events.recv().await.expect("event").kind {
                EventKind::Connected { .. } => break,
                EventKind::Disconnected(DisconnectReason::ConnectFailed {
                    retry_after, ..
                }) => {
                    assert_eq!(retry_after, Some(Duration::from_secs(1)));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    let times = attempts.lock().unwrap().clone();
    assert_eq!(times.len(), 2);
    assert!(
        times[1] - times[0] >= Duration::from_millis(990),
        "retried after {:?}",
        times[1] - times[0]
    );
    fleet.shutdown().await;
}

#[tokio::test]
async fn restart_intensity_pauses_a_reconnect_storm() {
    let (addr, attempts) = changing_server(|_| Answer::Drop).await;
    let mut fleet = Fleet::builder(format!("ws://{addr}/"))
        .connections(20)
        .connect_rate(10_000.0)
        .backoff(Backoff::new(Duration::from_millis(1), Duration::from_millis(5)).unwrap())
        .restart_intensity(wsfleet::fleet::RestartIntensity {
            max_restarts: 30,
            period: Duration::from_secs(10),
            pause: Duration::from_secs(60),
        })
        .spawn()
        .expect("spawn");
    let mut events = fleet.events().expect("events");
    let tripped = bounded("intensity tripped", async {
        loop {
            if let EventKind::RestartIntensityTripped { paused_for } =
                events.recv().await.expect("event").kind
            {
                return paused_for;
            }
        }
    })
    .await;
    assert!(tripped > Duration::from_secs(50));
    let at_trip = attempts.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = attempts.lock().unwrap().len();
    // 20 first attempts + 30 restarts at most, then silence.
    assert!(
        at_trip <= 51 && later <= 51,
        "attempts {at_trip} then {later}"
    );
    drop(fleet);
}

#[tokio::test]
async fn events_end_after_shutdown_even_with_a_monitor_alive() {
    let server = echo_server().await;
    let mut fleet = Fleet::builder(server.url())
        .connections(3)
        .connect_rate(1000.0)
        .spawn()
        .expect("spawn");
    let mut events = fleet.events().expect("events");
    until_ready(&fleet, &mut events, 3).await;
    let monitor = fleet.monitor();
    fleet.shutdown().await;
    let mut shutdowns = 0;
    while let Some(event) = bounded("events end", events.recv()).await {
        if matches!(
            event.kind,
            EventKind::Disconnected(DisconnectReason::Shutdown)
        ) {
            shutdowns += 1;
        }
    }
    assert_eq!(shutdowns, 3);
    assert_eq!(monitor.target(), 3);
}

#[test]
fn a_shard_without_slots_is_refused() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let err = Fleet::builder("ws://127.0.0.1:9/")
        .connections(2)
        .shard(3, 4)
        .spawn()
        .unwrap_err();
    assert_eq!(err.field, "shard");
}

/// Issue 7: a message the fleet accepted but the connection could not queue
/// for lack of budget is held, and goes out once the budget frees — even
/// when nothing else happens on that connection to wake it.
#[tokio::test]
async fn a_send_refused_by_the_budget_goes_out_once_it_frees() {
    use wsfleet::proto::MemoryBudget;
    let server = echo_server().await;
    let budget = 256 << 10;
    let mut fleet = Fleet::builder(server.url())
        .connections(1)
        .connect_rate(1000.0)
        .memory_budget(budget)
        .keepalive(wsfleet::Keepalive::default().with_interval(None))
        .spawn()
        .expect("spawn");
    let mut events = fleet.events().expect("events");
    until_ready(&fleet, &mut events, 1).await;
    // Someone else holds the whole budget: the message cannot be queued.
    let held = budget - fleet.budget().used();
    assert!(
        fleet.budget().try_reserve(held),
        "take the rest of the budget"
    );
    fleet
        .send(Message::text("held back"))
        .await
        .expect("the fleet accepts it");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        events.try_recv().is_none(),
        "nothing can go out while the budget is full"
    );
    fleet.budget().release(held);
    let echoed = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match events.recv().await.expect("event").kind {
                EventKind::Message(m) => return m,
                EventKind::Disconnected(reason) => panic!("dropped: {reason}"),
                _ => {}
            }
        }
    })
    .await
    .expect("the held message goes out once the budget frees");
    assert_eq!(echoed, Message::text("held back"));
    // A received message carries its charge until it is dropped.
    assert!(fleet.budget().used() >= echoed.len());
    drop(echoed);
    let monitor = fleet.monitor();
    fleet.shutdown().await;
    assert_eq!(monitor.stats().budget_used, 0, "every byte came back");
}

/// What the application sends is charged too, from `send` until the last
/// reference is dropped: written and forgotten, or handed back.
#[tokio::test]
async fn sent_messages_are_charged_until_written_or_handed_back() {
    let server = echo_server().await;
    let mut fleet = Fleet::builder(server.url())
        .connections(1)
        .connect_rate(1000.0)
        .spawn()
        .expect("spawn");
    let mut events = fleet.events().expect("events");
    until_ready(&fleet, &mut events, 1).await;
    let base = fleet.budget().used();
    let big = Message::binary(vec![3u8; 300_000]);
    fleet.send(big.clone()).await.expect("sent");
    drop(big);
    let held = fleet.budget().used();
    assert!(
        held >= base + 300_000,
        "a queued message holds {held} - {base} B"
    );
    let echoed = bounded("echo", async {
        loop {
            if let EventKind::Message(m) = events.recv().await.expect("event").kind {
                return m;
            }
        }
    })
    .await;
    assert_eq!(echoed.len(), 300_000);
    drop(echoed);
    // Written, echoed and dropped: every byte is back (buffers may linger
    // until the connection goes quiet).
    bounded("budget back", async {
        while fleet.budget().used() > base + 64 * 1024 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    fleet.shutdown().await;
}

/// A connection opened while the budget is spent pauses until it has room;
/// it is not dropped. The peer sends its first frame in the same write as
/// the handshake response, so the client holds bytes past the response
/// before it has ever read: feeding them waits for memory like a read does.
#[tokio::test]
async fn a_connection_opened_while_the_budget_is_spent_waits_for_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use wsfleet::proto::MemoryBudget;
    use wsfleet::proto::handshake::{accept_response, parse_request};
    let server = crate::script::ScriptServer::start(false, |mut tcp| async move {
        let mut request = Vec::new();
        let response = loop {
            let mut chunk = [0u8; 1024];
            let n = tcp.read(&mut chunk).await.expect("read request");
            assert!(n > 0, "client closed during handshake");
            request.extend_from_slice(&chunk[..n]);
            if let Some((r, _)) = parse_request(&request, &Limits::default()).expect("valid") {
                break accept_response(&r, None);
            }
        };
        let first = crate::script::frame(true, wsfleet::proto::OpCode::Text, b"first");
        tcp.write_all(&[response, first].concat())
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let budget = 64 << 10;
    let mut fleet = Fleet::builder(server.url())
        .connections(1)
        .memory_budget(budget)
        .keepalive(wsfleet::Keepalive::default().with_interval(None))
        // The scripted peer never answers our close.
        .deadlines(wsfleet::connect::Deadlines::default().with_close(Duration::from_millis(200)))
        .spawn()
        .expect("spawn");
    let mut events = fleet.events().expect("events");
    // The application holds the whole budget before the connection runs
    // (the test runtime is single-threaded: nothing ran yet).
    assert!(fleet.budget().try_reserve(budget), "take the whole budget");
    bounded("the connection pauses", async {
        while fleet.budget().pauses() == 0 {
            if let Some(event) = events.try_recv() {
                assert!(
                    !matches!(event.kind, EventKind::Disconnected(_)),
                    "dropped while the budget was spent: {:?}",
                    event.kind
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    fleet.budget().release(budget);
    let first = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match events.recv().await.expect("event").kind {
                EventKind::Message(m) => return m,
                EventKind::Disconnected(reason) => panic!("dropped: {reason}"),
                _ => {}
            }
        }
    })
    .await
    .expect("the first message arrives once the budget frees");
    assert_eq!(first, Message::text("first"));
    assert_eq!(fleet.stats().reconnects, 0);
    fleet.shutdown().await;
}
