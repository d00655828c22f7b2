//! The feed server (`FeedServer`, `py/feed_server.py`) serves what its protocol
//! says and reports every fault it injects.
//!
//! The client is tokio-tungstenite, as in `peers.rs`, so these tests do not
//! depend on wsfleet. They need the venv (`scripts/setup-venv`); each takes a
//! few seconds. `feed_load` (ignored) is the issue-17 shape: 1,000 connections
//! × 10 channels at 10 messages a second, 1 % skipped; run it with
//! `cargo test --release -p wsfleet-testkit --test feed feed_load -- --ignored
//! --nocapture` (and `ulimit -n` above 2,100). On 2 cores its 30 s took the
//! server 4.5 s of CPU (15 %) and received 2,835,674 messages with 36
//! reported skips and no unreported hole.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wsfleet_testkit::{FeedOptions, FeedServer, RestoredBy, bounded};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn start(options: FeedOptions) -> FeedServer {
    FeedServer::start(options).await.expect("start feed server")
}

async fn connect(server: &FeedServer) -> Client {
    let (ws, _) = tokio_tungstenite::connect_async(server.url())
        .await
        .expect("connect");
    ws
}

async fn send(ws: &mut Client, value: Value) {
    ws.send(Message::text(value.to_string()))
        .await
        .expect("send");
}

/// The next text message as JSON (control frames skipped).
async fn next_json(ws: &mut Client) -> Value {
    loop {
        match ws.next().await.expect("connection ended").expect("read") {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON"),
            Message::Binary(_) => panic!("binary message from the feed server"),
            Message::Close(frame) => panic!("closed by server: {frame:?}"),
            _ => {}
        }
    }
}

/// The next message that is not a data message (`seq` absent).
async fn next_reply(ws: &mut Client) -> Value {
    loop {
        let v = next_json(ws).await;
        if v.get("seq").is_none() {
            return v;
        }
    }
}

async fn subscribe(ws: &mut Client, channel: &str) -> Value {
    send(ws, json!({"op": "subscribe", "channel": channel})).await;
    next_reply(ws).await
}

fn seq_of(v: &Value) -> Option<(String, u64)> {
    Some((
        v.get("channel")?.as_str()?.to_owned(),
        v.get("seq")?.as_u64()?,
    ))
}

/// Numbers are consecutive from a subscribe on; a second connection sees the
/// same numbers (one counter per channel); application pings are answered
/// between data messages; `data` has the configured size.
#[tokio::test]
async fn feed_numbers_in_order_shared_and_ping() {
    let server = start(FeedOptions {
        rate: 100.0,
        size: 40,
        ..Default::default()
    })
    .await;
    bounded("numbers", async {
        let mut a = connect(&server).await;
        assert_eq!(
            subscribe(&mut a, "btc").await,
            json!({"event": "subscribed", "channel": "btc"})
        );
        let mut seen = Vec::new();
        while seen.len() < 20 {
            let v = next_json(&mut a).await;
            assert_eq!(v["data"].as_str().map(str::len), Some(40), "{v}");
            seen.push(seq_of(&v).expect("data message").1);
        }
        assert_eq!(seen, (1..=20).collect::<Vec<_>>());

        let mut b = connect(&server).await;
        subscribe(&mut b, "btc").await;
        let first_b = seq_of(&next_json(&mut b).await).unwrap().1;
        assert!(first_b > 20, "b started at {first_b}");
        // a sees the same number, then both go on in step.
        let mut a_seq = 0;
        while a_seq < first_b {
            a_seq = seq_of(&next_json(&mut a).await).unwrap().1;
        }
        assert_eq!(a_seq, first_b);
        for _ in 0..5 {
            assert_eq!(
                seq_of(&next_json(&mut a).await),
                seq_of(&next_json(&mut b).await)
            );
        }

        // The id comes back as is, whatever its type.
        for id in [json!(7), json!("hb-1"), json!({"t": [1, 2]})] {
            send(&mut a, json!({"op": "ping", "id": id})).await;
            assert_eq!(next_reply(&mut a).await, json!({"op": "pong", "id": id}));
        }
        send(&mut a, json!({"op": "ping"})).await;
        assert_eq!(next_reply(&mut a).await, json!({"op": "pong"}));
        send(&mut a, json!({"op": "nope"})).await;
        let err = next_reply(&mut a).await;
        assert_eq!(err["event"], "error");
        assert_eq!(err["code"], "bad_request");
    })
    .await;
}

/// Every skipped number is reported once and never sent; every number not
/// received between the first and the last sent was reported.
#[tokio::test]
async fn feed_skips_are_reported_and_absent() {
    let server = start(FeedOptions {
        rate: 200.0,
        skip_ratio: 0.1,
        seed: Some(17),
        ..Default::default()
    })
    .await;
    bounded("skips", async {
        let mut ws = connect(&server).await;
        subscribe(&mut ws, "eth").await;
        let mut received = BTreeSet::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(1500) {
            let (_, seq) = seq_of(&next_json(&mut ws).await).unwrap();
            assert!(received.insert(seq), "seq {seq} received twice");
        }
        let stats = server.stats().await.expect("stats");
        let eth = stats.channels["eth"];
        // Read what was in flight when the stats were taken.
        while received.last().copied().unwrap() < eth.sent {
            let (_, seq) = seq_of(&next_json(&mut ws).await).unwrap();
            assert!(received.insert(seq), "seq {seq} received twice");
        }
        let skipped = server.skipped().remove("eth").unwrap_or_default();
        assert!(skipped.len() >= 5, "too few skips to test: {skipped:?}");
        assert_eq!(skipped.len() as u64, eth.skipped);
        assert!(received.is_disjoint(&skipped), "a skipped number was sent");
        let first = *received.first().unwrap();
        for seq in first..=eth.sent {
            assert!(
                received.contains(&seq) || skipped.contains(&seq),
                "{seq} neither received nor reported"
            );
        }
        assert!(eth.seq >= eth.sent);
        assert_eq!(server.reports().unparsed, 0);
    })
    .await;
}

/// A subscribe beyond `max_channels` is refused with `too_many_channels`;
/// after an unsubscribe there is room again.
#[tokio::test]
async fn feed_max_channels() {
    let server = start(FeedOptions {
        max_channels: Some(2),
        ..Default::default()
    })
    .await;
    bounded("max channels", async {
        let mut ws = connect(&server).await;
        assert_eq!(subscribe(&mut ws, "a").await["event"], "subscribed");
        assert_eq!(subscribe(&mut ws, "b").await["event"], "subscribed");
        assert_eq!(
            subscribe(&mut ws, "c").await,
            json!({"event": "error", "channel": "c", "code": "too_many_channels"})
        );
        // Subscribing again to one it has is not a new channel.
        assert_eq!(subscribe(&mut ws, "a").await["event"], "subscribed");
        send(&mut ws, json!({"op": "unsubscribe", "channel": "a"})).await;
        assert_eq!(
            next_reply(&mut ws).await,
            json!({"event": "unsubscribed", "channel": "a"})
        );
        assert_eq!(subscribe(&mut ws, "c").await["event"], "subscribed");
        // The cap is per connection.
        let mut other = connect(&server).await;
        assert_eq!(subscribe(&mut other, "d").await["event"], "subscribed");
        assert_eq!(subscribe(&mut other, "e").await["event"], "subscribed");
    })
    .await;
}

/// After `unsubscribed`, the channel is not sent any more; others go on.
#[tokio::test]
async fn feed_unsubscribe_stops_delivery() {
    let server = start(FeedOptions {
        rate: 100.0,
        ..Default::default()
    })
    .await;
    bounded("unsubscribe", async {
        let mut ws = connect(&server).await;
        subscribe(&mut ws, "a").await;
        subscribe(&mut ws, "b").await;
        send(&mut ws, json!({"op": "unsubscribe", "channel": "a"})).await;
        // Messages of a before the acknowledgement are fine, none after it.
        loop {
            let v = next_json(&mut ws).await;
            if v.get("event").is_some() {
                assert_eq!(v, json!({"event": "unsubscribed", "channel": "a"}));
                break;
            }
        }
        let mut b = 0;
        while b < 30 {
            let (channel, _) = seq_of(&next_json(&mut ws).await).unwrap();
            assert_eq!(channel, "b", "a message of an unsubscribed channel");
            b += 1;
        }
        let stats = server.stats().await.unwrap();
        assert_eq!(stats.channels["a"].subscribers, 0);
        assert_eq!(stats.channels["b"].subscribers, 1);
    })
    .await;
}

/// A silenced subscription stops only that channel on that connection; pings
/// are still answered; subscribing again restores it, and the restore is
/// reported.
#[tokio::test]
async fn feed_silence_one_channel_then_resubscribe() {
    let server = start(FeedOptions {
        rate: 100.0,
        silence_every: Some(Duration::from_secs(2)),
        seed: Some(3),
        ..Default::default()
    })
    .await;
    bounded("silence", async {
        let mut ws = connect(&server).await;
        subscribe(&mut ws, "a").await;
        subscribe(&mut ws, "b").await;
        send(&mut ws, json!({"op": "stats"})).await;
        let conn = next_reply(&mut ws).await["conn"].as_u64().expect("conn id");

        let silence = server
            .wait_for(|r| r.silences.first().cloned())
            .await
            .unwrap();
        assert_eq!(silence.conn, conn);
        let quiet = silence.channel.clone();
        let loud = if quiet == "a" { "b" } else { "a" };
        // The pong is written after the silence began: nothing of `quiet`
        // may follow it.
        send(&mut ws, json!({"op": "ping", "id": 1})).await;
        assert_eq!(next_reply(&mut ws).await, json!({"op": "pong", "id": 1}));
        let mut last_loud = 0;
        for _ in 0..30 {
            let (channel, seq) = seq_of(&next_json(&mut ws).await).unwrap();
            assert_eq!(channel, loud, "a silenced channel was sent");
            assert!(seq > last_loud);
            last_loud = seq;
        }
        send(&mut ws, json!({"op": "ping", "id": 2})).await;
        assert_eq!(next_reply(&mut ws).await, json!({"op": "pong", "id": 2}));

        assert_eq!(subscribe(&mut ws, &quiet).await["event"], "subscribed");
        let before = server.stats().await.unwrap().channels[quiet.as_str()].sent;
        loop {
            let (channel, seq) = seq_of(&next_json(&mut ws).await).unwrap();
            if channel == quiet {
                assert!(seq > before, "{seq} was sent before the resubscribe");
                break;
            }
        }
        let restored = server.wait_for(|r| r.silences[0].restored).await.unwrap();
        assert_eq!(restored.by, RestoredBy::Subscribe);
        assert!(restored.after >= Duration::from_millis(100));
    })
    .await;
}

/// A killed connection ends without a close frame, and the kill is reported.
#[tokio::test]
async fn feed_kill_drops_the_connection() {
    let server = start(FeedOptions {
        rate: 50.0,
        kill_ratio_per_minute: 120.0, // one connection: killed after about 0.5 s
        ..Default::default()
    })
    .await;
    bounded("kill", async {
        let mut ws = connect(&server).await;
        subscribe(&mut ws, "a").await;
        send(&mut ws, json!({"op": "stats"})).await;
        let conn = next_reply(&mut ws).await["conn"].as_u64().unwrap();
        let ending = loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => panic!("a close frame: {frame:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => break Some(e),
                None => break None,
            }
        };
        println!("the killed connection ended with {ending:?}");
        let kill = server.wait_for(|r| r.kills.first().copied()).await.unwrap();
        assert_eq!(kill.conn, conn);
        let stats = server.stats().await.unwrap();
        assert_eq!(stats.kills, 1);
        assert_eq!(stats.connections, 0);
        assert_eq!(stats.channels["a"].subscribers, 0);
    })
    .await;
}

/// The issue-17 load: `FEED_CONNS` connections (1,000) × 10 channels at
/// 10 messages a second for `FEED_SECS` (30), 1 % skipped. Every connection
/// must see each channel's numbers from its first on, less exactly the
/// reported skips. Prints the server's CPU time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load: 30 s of 1,000 connections; run with --ignored"]
async fn feed_load() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (conns, secs) = (env("FEED_CONNS", 1000), env("FEED_SECS", 30));
    let channels: Vec<String> = (0..10).map(|i| format!("ch{i}")).collect();
    let server = start(FeedOptions {
        rate: 10.0,
        skip_ratio: 0.01,
        seed: Some(1),
        ..Default::default()
    })
    .await;
    let cpu_before = cpu_ticks(server.pid().unwrap());
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut ws = connect(&server).await;
        for ch in &channels {
            send(&mut ws, json!({"op": "subscribe", "channel": ch})).await;
        }
        tasks.push(tokio::spawn(async move {
            let mut seen: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
            while Instant::now() < deadline {
                let text = match tokio::time::timeout_at(deadline.into(), ws.next()).await {
                    Ok(Some(Ok(Message::Text(text)))) => text,
                    Ok(Some(Ok(_))) | Err(_) => continue,
                    Ok(Some(Err(e))) => panic!("connection failed: {e}"),
                    Ok(None) => panic!("connection ended"),
                };
                let v: Value = serde_json::from_str(&text).unwrap();
                if let Some((ch, seq)) = seq_of(&v) {
                    assert!(seen.entry(ch).or_default().insert(seq), "duplicate");
                }
            }
            (ws, seen)
        }));
    }
    let connected = Instant::now();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    let cpu = cpu_ticks(server.pid().unwrap()) - cpu_before;
    let stats = server.stats().await.unwrap();
    let skipped = server.skipped();
    let (mut received, mut holes) = (0u64, 0u64);
    for (_, seen) in &results {
        for (ch, seqs) in seen {
            received += seqs.len() as u64;
            let none = BTreeSet::new();
            let skips = skipped.get(ch).unwrap_or(&none);
            assert!(seqs.is_disjoint(skips), "a skipped number was received");
            let (first, last) = (*seqs.first().unwrap(), *seqs.last().unwrap());
            holes += (first..=last)
                .filter(|s| !seqs.contains(s) && !skips.contains(s))
                .count() as u64;
        }
    }
    let skips: usize = skipped.values().map(BTreeSet::len).sum();
    println!(
        "{conns} connections x {} channels, {secs} s ({:.1} s after the last connect): \
         {received} messages received, {skips} numbers skipped and reported, {holes} unreported holes; \
         server CPU {:.1} s ({:.0} %); stats {stats:?}",
        channels.len(),
        connected.elapsed().as_secs_f64(),
        cpu as f64 / 100.0,
        cpu as f64 / secs as f64,
    );
    assert_eq!(holes, 0);
    assert_eq!(
        skips as u64,
        stats.channels.values().map(|c| c.skipped).sum::<u64>()
    );
}

/// utime + stime of `pid` in clock ticks (100 a second on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let n = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    n(11) + n(12) // fields 14 and 15 of stat, counted after the name
}
