//! Stream integrity against the feed server (`wsfleet_testkit::FeedServer`,
//! Python `websockets`): numbered messages per channel, numbers it skips on
//! purpose (and reports), connections it kills, subscriptions it silences.
//! The fleet must report every skipped number once and nothing else as
//! skipped, deliver no number twice across rotations and reconnects, and
//! renew a silent subscription within its threshold.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;
use wsfleet::Message;
use wsfleet::fleet::{
    DisconnectReason, EventKind, Fleet, Gap, GapCause, GapPolicy, Placement, Streams, Subscription,
};
use wsfleet_testkit::{FeedOptions, FeedServer, bounded};

/// Channels, spread `PER_CONNECTION` to a connection.
fn channels(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("c{i}")).collect()
}

fn subscription(channel: &str, per_connection: usize) -> Subscription {
    Subscription::new(
        channel,
        Message::text(format!(r#"{{"op":"subscribe","channel":"{channel}"}}"#)),
    )
    .end(Message::text(format!(
        r#"{{"op":"unsubscribe","channel":"{channel}"}}"#
    )))
    .placement(Placement::Spread { per_connection })
}

/// What the consumer saw: numbers delivered per channel, gaps reported.
#[derive(Debug, Default)]
struct Seen {
    delivered: BTreeMap<String, Vec<u64>>,
    last_at: BTreeMap<String, Instant>,
    gaps: Vec<Gap>,
    connected: usize,
}

/// Runs `fleet` for `run`, taking every event.
async fn consume(fleet: &mut Fleet, run: Duration) -> Seen {
    let mut events = fleet.events().expect("events");
    let mut seen = Seen::default();
    let end = Instant::now() + run;
    while let Ok(Some(event)) = tokio::time::timeout_at(end, events.recv()).await {
        match event.kind {
            EventKind::Message(m) => {
                let v: serde_json::Value = serde_json::from_slice(m.payload()).expect("json");
                if let (Some(ch), Some(seq)) = (v["channel"].as_str(), v["seq"].as_u64()) {
                    seen.delivered.entry(ch.to_owned()).or_default().push(seq);
                    seen.last_at.insert(ch.to_owned(), Instant::now());
                }
            }
            EventKind::Gap(gap) => seen.gaps.push(gap),
            EventKind::Connected { .. } => seen.connected += 1,
            _ => {}
        }
    }
    seen
}

/// The checks every run ends with: no number twice, numbers rising, and
/// every number the server skipped within what a channel delivered reported
/// in exactly one gap; returns the gap numbers that were not skips, by
/// cause.
fn check_integrity(
    seen: &Seen,
    skipped: &BTreeMap<String, BTreeSet<u64>>,
) -> BTreeMap<&'static str, u64> {
    for (ch, seqs) in &seen.delivered {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{ch}: numbers delivered twice or out of order: {:?}",
            seqs.windows(2).find(|w| w[0] >= w[1])
        );
    }
    let mut covered: BTreeMap<(&str, u64), u32> = BTreeMap::new();
    let mut not_skipped = BTreeMap::new();
    for gap in &seen.gaps {
        for n in gap.missed.clone() {
            *covered.entry((&gap.stream, n)).or_default() += 1;
            let skip = skipped.get(&*gap.stream).is_some_and(|s| s.contains(&n));
            if !skip {
                let cause = match gap.cause {
                    GapCause::InStream => "in stream",
                    _ => "handover",
                };
                *not_skipped.entry(cause).or_default() += 1;
            }
        }
    }
    let mut in_range = 0;
    for (ch, numbers) in skipped {
        let Some(seqs) = seen.delivered.get(ch) else {
            continue;
        };
        let (first, last) = (seqs[0], seqs[seqs.len() - 1]);
        for n in numbers.range(first + 1..last) {
            in_range += 1;
            assert_eq!(
                covered.get(&(ch.as_str(), *n)),
                Some(&1),
                "skipped {ch} #{n} reported {:?} times",
                covered.get(&(ch.as_str(), *n))
            );
        }
    }
    assert!(in_range > 0, "the run saw no skip: nothing was checked");
    not_skipped
}

#[tokio::test]
async fn rotation_delivers_each_number_once_and_every_skip_is_reported_once() {
    let feed = FeedServer::start(FeedOptions {
        rate: 20.0,
        skip_ratio: 0.02,
        seed: Some(17),
        ..FeedOptions::default()
    })
    .await
    .expect("feed server");
    let mut builder = Fleet::builder(feed.url())
        .connections(10)
        .connect_rate(1000.0)
        .max_lifetime(Duration::from_millis(1500))
        .streams(Streams::new("/channel").sequence("/seq"));
    for ch in channels(50) {
        builder = builder.subscribe(subscription(&ch, 5));
    }
    let mut fleet = builder.spawn().expect("spawn");
    let seen = bounded("8 s of feed", consume(&mut fleet, Duration::from_secs(8))).await;
    let totals = fleet.stats().totals;
    fleet.shutdown().await;
    let skipped = feed.skipped();
    let not_skipped = check_integrity(&seen, &skipped);
    eprintln!(
        "rotations {}, connections {}, gaps {}, duplicates dropped {}, late {}, not skipped {not_skipped:?}",
        totals.rotations,
        seen.connected,
        seen.gaps.len(),
        totals.duplicates_dropped,
        totals.late_messages
    );
    assert!(
        totals.rotations >= 20,
        "only {} rotations",
        totals.rotations
    );
    assert!(
        not_skipped.is_empty(),
        "numbers the server sent were reported missing: {not_skipped:?}"
    );
    assert_eq!(seen.delivered.len(), 50, "every channel delivered");
    assert_eq!(totals.late_messages, 0);
}

#[tokio::test]
async fn killed_connections_resubscribe_and_no_number_comes_twice() {
    let feed = FeedServer::start(FeedOptions {
        rate: 20.0,
        skip_ratio: 0.02,
        // About one kill a second among 10 connections.
        kill_ratio_per_minute: 6.0,
        seed: Some(23),
        ..FeedOptions::default()
    })
    .await
    .expect("feed server");
    let mut builder = Fleet::builder(feed.url())
        .connections(10)
        .connect_rate(1000.0)
        .backoff(
            wsfleet::fleet::Backoff::new(Duration::from_millis(20), Duration::from_millis(200))
                .expect("backoff"),
        )
        .max_lifetime(Duration::from_secs(2))
        .streams(Streams::new("/channel").sequence("/seq"));
    for ch in channels(50) {
        builder = builder.subscribe(subscription(&ch, 5));
    }
    let mut fleet = builder.spawn().expect("spawn");
    let run = Duration::from_secs(8);
    let seen = bounded("8 s of feed", consume(&mut fleet, run)).await;
    let end = Instant::now();
    fleet.shutdown().await;
    let kills = feed.kills().len();
    assert!(kills >= 3, "only {kills} kills");
    let not_skipped = check_integrity(&seen, &feed.skipped());
    assert!(
        !not_skipped.contains_key("in stream"),
        "in-stream gaps the server did not skip: {not_skipped:?}"
    );
    // Every channel was restored after every kill: all flowed in the last second.
    for (ch, at) in &seen.last_at {
        assert!(
            end - *at < Duration::from_secs(1),
            "{ch} quiet since {:?}",
            end - *at
        );
    }
    assert_eq!(seen.delivered.len(), 50);
    eprintln!(
        "kills {kills}, gaps {}, lost in kills {not_skipped:?}",
        seen.gaps.len()
    );
}

#[tokio::test]
async fn a_silent_subscription_is_renewed_within_its_threshold() {
    let feed = FeedServer::start(FeedOptions {
        rate: 20.0,
        silence_every: Some(Duration::from_millis(700)),
        seed: Some(5),
        ..FeedOptions::default()
    })
    .await
    .expect("feed server");
    let threshold = Duration::from_secs(1);
    let mut builder = Fleet::builder(feed.url())
        .connections(4)
        .connect_rate(1000.0)
        // Pings keep the transport alive: only the channel is silent.
        .keepalive(crate::fast_keepalive())
        .streams(
            Streams::new("/channel")
                .sequence("/seq")
                .stale_after(threshold),
        );
    for ch in channels(20) {
        builder = builder.subscribe(subscription(&ch, 5));
    }
    let mut fleet = builder.spawn().expect("spawn");
    let started = std::time::Instant::now();
    let seen = bounded("6 s of feed", consume(&mut fleet, Duration::from_secs(6))).await;
    let totals = fleet.stats().totals;
    let silences = feed.silences();
    fleet.shutdown().await;
    // Silences with time to be renewed before the end.
    let due: Vec<_> = silences
        .iter()
        .filter(|s| s.at.duration_since(started) < Duration::from_secs(4))
        .collect();
    assert!(due.len() >= 3, "only {} silences", due.len());
    for s in &due {
        let restored = s.restored.as_ref().unwrap_or_else(|| {
            panic!(
                "{} on conn {} silent since {:?}, never renewed",
                s.channel, s.conn, s.at
            )
        });
        assert!(
            restored.after <= threshold + Duration::from_secs(1),
            "{} renewed after {:?}",
            s.channel,
            restored.after
        );
    }
    assert!(
        totals.renewals >= due.len() as u64,
        "{} renewals",
        totals.renewals
    );
    assert!(seen.gaps.is_empty() || seen.gaps.iter().all(|g| g.cause == GapCause::InStream));
    eprintln!("silences {}, renewals {}", due.len(), totals.renewals);
}

/// A fleet on `feed` with `per_connection` channels on each of 2
/// connections and `policy` for gaps.
fn gap_fleet(feed: &FeedServer, policy: GapPolicy) -> Fleet {
    let mut builder = Fleet::builder(feed.url())
        .connections(2)
        .connect_rate(1000.0)
        .streams(Streams::new("/channel").sequence("/seq").on_gap(policy));
    for ch in channels(4) {
        builder = builder.subscribe(subscription(&ch, 2));
    }
    builder.spawn().expect("spawn")
}

#[tokio::test]
async fn the_gap_policy_renews_the_subscription_or_replaces_the_connection() {
    let feed = FeedServer::start(FeedOptions {
        rate: 50.0,
        skip_ratio: 0.05,
        seed: Some(29),
        ..FeedOptions::default()
    })
    .await
    .expect("feed server");

    // Renew: each in-stream gap sends unsubscribe, subscribe on that
    // connection; the connections stay.
    let mut fleet = gap_fleet(&feed, GapPolicy::Renew);
    let seen = bounded("2 s of feed", consume(&mut fleet, Duration::from_secs(2))).await;
    let totals = fleet.stats().totals;
    fleet.shutdown().await;
    let gaps = seen
        .gaps
        .iter()
        .filter(|g| g.cause == GapCause::InStream)
        .count() as u64;
    assert!(gaps >= 2, "{gaps} gaps");
    assert_eq!(totals.renewals, gaps, "one renewal per in-stream gap");
    assert_eq!(seen.connected, 2, "no connection replaced");

    // Reconnect: the connection that skipped is replaced (1001, reason
    // sequence_gap) and its channels come back on its successor.
    let mut fleet = gap_fleet(&feed, GapPolicy::Reconnect);
    let mut events = fleet.events().expect("events");
    let reason = bounded("a sequence_gap disconnect", async {
        loop {
            if let EventKind::Disconnected(reason) = events.recv().await.expect("runs").kind {
                return reason;
            }
        }
    })
    .await;
    assert!(
        matches!(&reason, DisconnectReason::SequenceGap { first, last, .. } if first <= last),
        "{reason}"
    );
    assert_eq!(reason.label(), "sequence_gap");
    assert_eq!(reason.close_code(), Some(wsfleet::CloseCode::GOING_AWAY));
    let back = bounded("its successor ready", async {
        loop {
            if let EventKind::Connected { .. } = events.recv().await.expect("runs").kind {
                return true;
            }
        }
    })
    .await;
    assert!(back);
    fleet.shutdown().await;
}
