//! Stream integrity under faults (issue 17): a fleet holding spread
//! subscriptions (10 channels a connection) to the feed server
//! (`wsfleet_testkit::FeedServer`, Python `websockets`), which skips 1 % of
//! the numbers, kills connections, silences subscriptions, while the fleet
//! rotates its connections make-before-break. Every skipped number must be
//! reported exactly once, nothing else reported as skipped within a stream,
//! no number delivered twice, every subscription restored after every
//! reconnect, and every silent subscription renewed within its threshold
//! plus a second.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use wsfleet::Message;
use wsfleet::fleet::{Backoff, EventKind, Fleet, GapCause, Placement, Streams, Subscription};
use wsfleet_testkit::{FeedOptions, FeedServer, RestoredBy};

use crate::report::{Report, mib};
use crate::sample::Sample;

/// Channels each connection carries.
const PER_CONNECTION: usize = 10;
/// Numbers the feed skips, as a share.
const SKIP_RATIO: f64 = 0.01;
/// Slack on a silent subscription's renewal beyond its threshold (the
/// issue's bound): the check runs every quarter threshold, and the
/// unsubscribe and subscribe make a round trip.
const RENEWAL_SLACK: Duration = Duration::from_secs(1);

/// One run's shape.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub(crate) connections: usize,
    /// Messages a second per channel.
    pub(crate) rate: f64,
    pub(crate) duration: Duration,
    pub(crate) lifetime: Duration,
    /// Share of the live connections the feed kills a minute.
    pub(crate) kills_per_minute: f64,
    pub(crate) silence_every: Duration,
    pub(crate) stale_after: Duration,
}

impl Shape {
    /// The issue's campaign: 1,000 connections × 10 channels, 10 % killed a
    /// minute, rotation every 30 s, for `duration` (default 5 minutes).
    pub(crate) fn long(connections: Option<usize>, duration: Option<Duration>) -> Self {
        Self {
            connections: connections.unwrap_or(1000),
            rate: 5.0,
            duration: duration.unwrap_or(Duration::from_secs(300)),
            lifetime: Duration::from_secs(30),
            kills_per_minute: 0.1,
            silence_every: Duration::from_secs(5),
            stale_after: Duration::from_secs(3),
        }
    }

    /// The CI form: 100 connections × 10 channels for 40 s, faster faults.
    pub(crate) fn short() -> Self {
        Self {
            connections: 100,
            rate: 10.0,
            duration: Duration::from_secs(40),
            lifetime: Duration::from_secs(8),
            kills_per_minute: 0.6,
            silence_every: Duration::from_secs(2),
            stale_after: Duration::from_secs(2),
        }
    }
}

/// What the consumer saw of one channel.
#[derive(Debug)]
struct Channel {
    first: u64,
    last: u64,
    messages: u64,
    /// Numbers at or below one delivered before.
    out_of_order: u64,
    last_at: Instant,
}

/// What the consumer saw.
#[derive(Debug, Default)]
struct Seen {
    channels: HashMap<Arc<str>, Channel>,
    /// How many gap reports covered each number, and whether one of them
    /// was an in-stream gap.
    covered: HashMap<(Arc<str>, u64), (u32, bool)>,
    in_stream_numbers: u64,
    handover_numbers: u64,
    gaps: u64,
    ready: u64,
    /// Errors the feed answered (`too_many_channels` and the like).
    errors: u64,
    /// The first numbers delivered twice or out of order.
    disorder: Vec<String>,
}

impl Seen {
    fn message(&mut self, payload: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
            return;
        };
        if v["event"] == "error" {
            self.errors += 1;
            return;
        }
        let (Some(ch), Some(seq)) = (v["channel"].as_str(), v["seq"].as_u64()) else {
            return;
        };
        let now = Instant::now();
        match self.channels.get_mut(ch) {
            Some(c) => {
                if seq <= c.last {
                    c.out_of_order += 1;
                    if self.disorder.len() < 5 {
                        self.disorder
                            .push(format!("{ch}: #{seq} after #{}", c.last));
                    }
                } else {
                    c.last = seq;
                }
                c.messages += 1;
                c.last_at = now;
            }
            None => {
                self.channels.insert(
                    Arc::from(ch),
                    Channel {
                        first: seq,
                        last: seq,
                        messages: 1,
                        out_of_order: 0,
                        last_at: now,
                    },
                );
            }
        }
    }
}

/// Runs one campaign of `shape`.
pub(crate) async fn run(shape: Shape) -> Report {
    let channels = shape.connections * PER_CONNECTION;
    let mut report = Report::new(&format!(
        "streams: {} connections x {PER_CONNECTION} channels at {}/s, {:.0} % skipped, {:.0} % killed a minute, rotation every {:?}, a silence every {:?} (renewal after {:?}), {:?}",
        shape.connections,
        shape.rate,
        SKIP_RATIO * 100.0,
        shape.kills_per_minute * 100.0,
        shape.lifetime,
        shape.silence_every,
        shape.stale_after,
        shape.duration,
    ));
    let feed = match FeedServer::start(FeedOptions {
        rate: shape.rate,
        skip_ratio: SKIP_RATIO,
        kill_ratio_per_minute: shape.kills_per_minute,
        silence_every: Some(shape.silence_every),
        // The upstream's cap: a connection subscribing an eleventh channel
        // gets an error (counted below; must never happen).
        max_channels: Some(PER_CONNECTION),
        seed: Some(1017),
        ..FeedOptions::default()
    })
    .await
    {
        Ok(f) => f,
        Err(e) => {
            report.check(false, || format!("the feed server did not start: {e}"));
            return report;
        }
    };
    let before = Sample::now(None);
    let mut builder = Fleet::builder(feed.url())
        .connections(shape.connections)
        .connect_rate(500.0)
        .max_lifetime(shape.lifetime)
        .streams(
            Streams::new("/channel")
                .sequence("/seq")
                .stale_after(shape.stale_after),
        );
    if let Ok(backoff) = Backoff::new(Duration::from_millis(50), Duration::from_secs(2)) {
        builder = builder.backoff(backoff);
    }
    for i in 0..channels {
        let ch = format!("c{i}");
        builder = builder.subscribe(
            Subscription::new(
                ch.clone(),
                Message::text(format!(r#"{{"op":"subscribe","channel":"{ch}"}}"#)),
            )
            .end(Message::text(format!(
                r#"{{"op":"unsubscribe","channel":"{ch}"}}"#
            )))
            .placement(Placement::Spread {
                per_connection: PER_CONNECTION,
            }),
        );
    }
    let mut fleet = match builder.spawn() {
        Ok(f) => f,
        Err(e) => {
            report.check(false, || format!("the fleet did not start: {e}"));
            return report;
        }
    };
    let monitor = fleet.monitor();
    let mut events = fleet.events().expect("events are taken once");
    let started = Instant::now();
    let end = started + shape.duration;
    let mut seen = Seen::default();
    let mut rss_peak = 0;
    let mut next_sample = started;
    let mut next_progress = started + Duration::from_secs(30);
    while let Ok(Some(event)) = tokio::time::timeout_at(end, events.recv()).await {
        match event.kind {
            EventKind::Message(m) => seen.message(m.payload()),
            EventKind::Gap(gap) => {
                seen.gaps += 1;
                let n = gap.missed.end() - gap.missed.start() + 1;
                match gap.cause {
                    GapCause::InStream => seen.in_stream_numbers += n,
                    _ => seen.handover_numbers += n,
                }
                let in_stream = gap.cause == GapCause::InStream;
                for number in gap.missed.clone() {
                    let c = seen
                        .covered
                        .entry((gap.stream.clone(), number))
                        .or_default();
                    c.0 += 1;
                    c.1 |= in_stream;
                }
            }
            EventKind::Connected { .. } => seen.ready += 1,
            _ => {}
        }
        let now = Instant::now();
        if now >= next_sample {
            rss_peak = rss_peak.max(Sample::now(Some(&monitor)).rss);
            next_sample = now + Duration::from_millis(500);
        }
        if now >= next_progress {
            eprintln!(
                "wsfleet-soak: streams: {:?} in, {} ready, {} channels seen, {} gaps",
                now - started,
                monitor.ready(),
                seen.channels.len(),
                seen.gaps
            );
            next_progress = now + Duration::from_secs(30);
        }
    }
    let finished = Instant::now();
    let totals = fleet.stats().totals;
    fleet.shutdown().await;
    let reports = feed.reports();

    // Every skip within what a channel delivered, reported exactly once;
    // every number an in-stream gap reports, a skip.
    let mut skips_checked = 0u64;
    let mut unreported = Vec::new();
    let mut twice = Vec::new();
    for (ch, numbers) in &reports.skipped {
        let Some(c) = seen.channels.get(ch.as_str()) else {
            continue;
        };
        for n in numbers.range(c.first + 1..c.last) {
            skips_checked += 1;
            match seen.covered.get(&(Arc::from(ch.as_str()), *n)) {
                Some((1, _)) => {}
                None => unreported.push(format!("{ch} #{n}")),
                Some((k, _)) => twice.push(format!("{ch} #{n} ({k} times)")),
            }
        }
    }
    let skipped: HashMap<&str, &BTreeSet<u64>> = reports
        .skipped
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    // A silenced subscription misses numbers the feed counts as sent (to
    // nobody): those channels' in-stream gaps are true, but not skips.
    let silenced: BTreeSet<&str> = reports
        .silences
        .iter()
        .map(|s| s.channel.as_str())
        .collect();
    let sent = |(ch, n): &(Arc<str>, u64)| !skipped.get(&**ch).is_some_and(|s| s.contains(n));
    // Numbers the feed did send that a gap reported: lost with a killed
    // connection (between connections), while silenced, or a false report.
    let not_skipped = seen.covered.keys().filter(|k| sent(k)).count() as u64;
    let false_reports = seen
        .covered
        .iter()
        .filter(|(k, (_, in_stream))| *in_stream && sent(k) && !silenced.contains(&*k.0))
        .count() as u64;
    let out_of_order: u64 = seen.channels.values().map(|c| c.out_of_order).sum();
    let messages: u64 = seen.channels.values().map(|c| c.messages).sum();
    let quiet_at_end = seen
        .channels
        .values()
        .filter(|c| finished - c.last_at > shape.stale_after + RENEWAL_SLACK)
        .count();
    let due_silences: Vec<_> = reports
        .silences
        .iter()
        .filter(|s| s.at + shape.stale_after + RENEWAL_SLACK * 2 < finished.into_std())
        .collect();
    // A silence ends by the fleet's renewal (unsubscribe, subscribe) or by
    // its connection closing: rotated (its successor subscribed afresh) or
    // killed. Only a renewal is the fleet's doing, and must be in time.
    let late_renewals: Vec<String> = due_silences
        .iter()
        .filter(|s| {
            s.restored.as_ref().is_none_or(|r| {
                r.by != RestoredBy::Closed && r.after > shape.stale_after + RENEWAL_SLACK
            })
        })
        .map(|s| {
            format!(
                "{} on conn {}: {:?}",
                s.channel,
                s.conn,
                s.restored.as_ref().map(|r| (r.by, r.after))
            )
        })
        .collect();

    report.figure(
        "messages / per second / channels seen",
        format!(
            "{messages} / {:.0} / {} of {channels}",
            messages as f64 / shape.duration.as_secs_f64(),
            seen.channels.len()
        ),
    );
    report.figure(
        "connections ready / rotations / kills",
        format!(
            "{} / {} / {}",
            seen.ready,
            totals.rotations,
            reports.kills.len()
        ),
    );
    report.figure(
        "skipped numbers checked / reported once / unreported / twice",
        format!(
            "{skips_checked} / {} / {} / {}",
            skips_checked - unreported.len() as u64 - twice.len() as u64,
            unreported.len(),
            twice.len()
        ),
    );
    report.figure(
        "gaps / numbers in stream / between connections / sent (lost in kills or silences)",
        format!(
            "{} / {} / {} / {not_skipped}",
            seen.gaps, seen.in_stream_numbers, seen.handover_numbers
        ),
    );
    report.figure(
        "duplicates dropped / delivered twice or out of order / late",
        format!(
            "{} / {out_of_order} / {}",
            totals.duplicates_dropped, totals.late_messages
        ),
    );
    let by_close = due_silences
        .iter()
        .filter(|s| {
            s.restored
                .as_ref()
                .is_some_and(|r| r.by == RestoredBy::Closed)
        })
        .count();
    report.figure(
        "silences due / renewed in time / ended by their connection's close / renewals",
        format!(
            "{} / {} / {by_close} / {}",
            due_silences.len(),
            due_silences.len() - late_renewals.len() - by_close,
            totals.renewals
        ),
    );
    report.figure(
        "errors from the feed (over its 10-channel cap)",
        seen.errors.to_string(),
    );
    report.figure(
        "RSS before / peak",
        format!("{} / {}", mib(before.rss), mib(rss_peak)),
    );

    report.check(skips_checked > 0, || "no skipped number was checked".into());
    report.check(seen.errors == 0, || {
        format!(
            "the feed refused {} subscriptions (over its cap of {PER_CONNECTION} a connection)",
            seen.errors
        )
    });
    report.check(unreported.is_empty(), || {
        format!(
            "{} skipped numbers never reported: {:?}",
            unreported.len(),
            first(&unreported)
        )
    });
    report.check(twice.is_empty(), || {
        format!(
            "{} skipped numbers reported more than once: {:?}",
            twice.len(),
            first(&twice)
        )
    });
    // A kill loses what was in flight to the dead socket: reported as a gap
    // between connections, never as one within a stream.
    report.check(false_reports == 0, || {
        format!("{false_reports} numbers reported missing within a stream were sent")
    });
    report.check(out_of_order == 0, || {
        format!(
            "{out_of_order} numbers delivered twice or out of order: {:?}",
            seen.disorder
        )
    });
    report.check(seen.channels.len() == channels, || {
        format!(
            "only {} of {channels} channels delivered",
            seen.channels.len()
        )
    });
    report.check(quiet_at_end == 0, || {
        format!("{quiet_at_end} channels were not flowing at the end (a subscription not restored)")
    });
    report.check(!due_silences.is_empty(), || "no silence to renew".into());
    report.check(late_renewals.is_empty(), || {
        format!(
            "{} silent subscriptions not renewed within {:?}: {:?}",
            late_renewals.len(),
            shape.stale_after + RENEWAL_SLACK,
            first(&late_renewals)
        )
    });
    report.check(totals.rotations > 0, || "no rotation happened".into());
    report.check(!reports.kills.is_empty(), || "no kill happened".into());
    report
}

/// The first few items, for a violation's text.
fn first(items: &[String]) -> &[String] {
    &items[..items.len().min(5)]
}
