//! The hostile-server soak: one fleet, a share of it on an echo server with
//! sequence-numbered traffic, the rest spread over every chaos mode.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use wsfleet::connect::{Deadlines, Phase};
use wsfleet::fleet::{
    Backoff, ConnId, DisconnectReason, EventKind, Events, Fleet, RestartIntensity, SlotId,
};
use wsfleet::proto::ProtocolError;
use wsfleet::serve::ChaosMode;
use wsfleet::{Keepalive, Limits, Message};

use crate::report::{Report, kib, mib};
use crate::sample::{Sample, Sampler, back_to};
use crate::servers::Servers;

/// Fleet-wide memory budget of the soak.
pub(crate) const BUDGET: usize = 64 << 20;
/// Stated cost of one connection outside the budget (task, socket, records,
/// allocator slack): the idle heap is about 4.5 KiB and idle RSS about
/// 12 KiB per connection (idle_heap example); busy connections hold more.
pub(crate) const PER_CONNECTION_BASELINE: u64 = 64 << 10;
/// Message and frame limit: endless fragments reach it in a fraction of a
/// second, and the chaos connections holding a message that large at once
/// stay well inside [`BUDGET`] at 1,000 connections.
const MAX_MESSAGE: usize = 256 << 10;
/// Weight of each kind in the round robin over URLs (times one per 300
/// connections): echo gets the largest share, every chaos mode the same
/// smaller one.
const ECHO_WEIGHT: usize = 12;
const CHAOS_WEIGHT: usize = 2;
/// How long the echoes still in flight may take once sending stops.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// Gaps are timed where events are consumed, which may lag the fleet under
/// load: a `Retry-After` counts as respected within this much.
const EVENT_LAG_SLACK: f64 = 1.0;
/// How often each echo connection sends one message...
const SEND_EVERY: Duration = Duration::from_millis(100);
/// ... unless that adds up to more than this many messages a second over
/// all echo connections: on 2 cores, shared with the hostile servers, more
/// would measure the machine's queueing rather than the fleet.
const MAX_ECHO_RATE: f64 = 1500.0;

/// What a slot is pointed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Echo,
    Chaos(ChaosMode),
}

impl PartialOrd for Kind {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Kind {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name().cmp(other.name())
    }
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Echo => "echo",
            Kind::Chaos(m) => m.name(),
        }
    }
}

/// The expected end of a connection to each chaos mode, as text and test.
fn expected(mode: ChaosMode) -> (&'static str, fn(&DisconnectReason) -> bool) {
    match mode {
        ChaosMode::LyingLength => ("protocol: FrameTooLarge (1009)", |r| {
            matches!(
                r,
                DisconnectReason::Protocol(ProtocolError::FrameTooLarge { .. })
            )
        }),
        ChaosMode::EndlessFragments => ("protocol: MessageTooLarge (1009)", |r| {
            matches!(
                r,
                DisconnectReason::Protocol(ProtocolError::MessageTooLarge { .. })
            )
        }),
        ChaosMode::PartialThenSilence | ChaosMode::Silent => ("pong timeout", |r| {
            matches!(r, DisconnectReason::PongTimeout)
        }),
        ChaosMode::Junk => (
            "protocol error closed with 1002",
            |r| matches!(r, DisconnectReason::Protocol(e) if e.close_code().as_u16() == 1002),
        ),
        ChaosMode::InvalidUtf8 => ("protocol: InvalidUtf8 (1007)", |r| {
            matches!(r, DisconnectReason::Protocol(ProtocolError::InvalidUtf8))
        }),
        ChaosMode::StallHandshake => ("connect failed: handshake timeout", |r| {
            matches!(r, DisconnectReason::ConnectFailed { phase: Phase::Handshake, error, .. }
                if error.is_timeout())
        }),
        ChaosMode::EndlessHandshake => ("connect failed: handshake response too large", |r| {
            matches!(r, DisconnectReason::ConnectFailed { phase: Phase::Handshake, error, .. }
                if !error.is_timeout())
        }),
        ChaosMode::Busy => ("connect failed: 503 with Retry-After 5 s", |r| {
            matches!(r, DisconnectReason::ConnectFailed { phase: Phase::Handshake, retry_after: Some(d), .. }
                if *d == Duration::from_secs(5))
        }),
        // Past Keepalive::peer_ping_limit pings in a second: dropped at once.
        ChaosMode::PingFlood => ("ping flood (1008)", |r| {
            matches!(r, DisconnectReason::PingFlood)
        }),
        _ => ("(unknown mode)", |_| false),
    }
}

/// A short, stable form of a reason for the per-mode table.
fn summary(reason: &DisconnectReason) -> String {
    match reason {
        DisconnectReason::Protocol(e) => {
            let debug = format!("{e:?}");
            let name = debug.split([' ', '(', '{']).next().unwrap_or("").to_owned();
            format!("protocol:{name}({})", e.close_code().as_u16())
        }
        DisconnectReason::ConnectFailed {
            phase, retry_after, ..
        } => match retry_after {
            Some(d) => format!("connect_failed:{phase:?}(retry-after {}s)", d.as_secs()),
            None => format!("connect_failed:{phase:?}"),
        },
        other => other.label().to_owned(),
    }
}

#[derive(Default)]
struct SlotLog {
    /// When each failure was reported.
    failures: Vec<Instant>,
}

#[derive(Default)]
struct EchoLog {
    conn: Option<ConnId>,
    next_seq: u64,
    next_expected: u64,
    sent: u64,
    echoed: u64,
    out_of_order: u64,
    undelivered: u64,
    /// Send to echo event, as the consumer sees it.
    latency_max_us: u64,
    latency_sum_us: u64,
}

struct State {
    /// Zero of the send timestamps in the messages.
    epoch: std::time::Instant,
    kinds: HashMap<SlotId, Kind>,
    slots: HashMap<SlotId, SlotLog>,
    echo: BTreeMap<SlotId, EchoLog>,
    /// Per kind, per reason summary, how many.
    reasons: BTreeMap<Kind, BTreeMap<String, u64>>,
    /// Unexpected reasons (first few, with their slot's kind).
    unexpected: Vec<String>,
    unexpected_count: u64,
    intensity_trips: u64,
    undelivered_other: u64,
}

impl Default for State {
    fn default() -> Self {
        Self {
            epoch: std::time::Instant::now(),
            kinds: HashMap::new(),
            slots: HashMap::new(),
            echo: BTreeMap::new(),
            reasons: BTreeMap::new(),
            unexpected: Vec::new(),
            unexpected_count: 0,
            intensity_trips: 0,
            undelivered_other: 0,
        }
    }
}

/// `SLOT:SEQ:SENT_US:padding` -> (slot, seq, microseconds since the epoch
/// of the run when it was sent).
fn parse_seq(m: &Message) -> Option<(u32, u64, u64)> {
    let text = m.as_text()?;
    let mut parts = text.splitn(4, ':');
    Some((
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    ))
}

async fn consume(mut events: Events, state: Arc<Mutex<State>>) {
    while let Some(event) = events.recv().await {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        let kind = s.kinds.get(&event.slot).copied();
        match event.kind {
            EventKind::Connected { .. } => {
                s.slots.entry(event.slot).or_default();
                if kind == Some(Kind::Echo) {
                    let log = s.echo.entry(event.slot).or_default();
                    log.conn = Some(event.conn);
                }
            }
            EventKind::Message(m) => {
                let epoch = s.epoch;
                if let (Some(log), Some((slot, seq, sent_us))) =
                    (s.echo.get_mut(&event.slot), parse_seq(&m))
                {
                    let now_us = epoch.elapsed().as_micros() as u64;
                    let latency = now_us.saturating_sub(sent_us);
                    log.latency_max_us = log.latency_max_us.max(latency);
                    log.latency_sum_us += latency;
                    if slot == event.slot.0 && seq == log.next_expected {
                        log.echoed += 1;
                        log.next_expected += 1;
                    } else {
                        log.out_of_order += 1;
                        log.next_expected = seq + 1;
                    }
                }
            }
            EventKind::Undelivered(m) => match s.echo.get_mut(&event.slot) {
                Some(log) => log.undelivered += 1,
                None => {
                    let _ = m;
                    s.undelivered_other += 1;
                }
            },
            EventKind::Disconnected(reason) => {
                if matches!(
                    reason,
                    DisconnectReason::Shutdown | DisconnectReason::Rotated
                ) {
                    continue;
                }
                let Some(kind) = kind else { continue };
                let now = Instant::now();
                let log = s.slots.entry(event.slot).or_default();
                log.failures.push(now);
                if let Some(echo) = s.echo.get_mut(&event.slot) {
                    echo.conn = None;
                }
                *s.reasons
                    .entry(kind)
                    .or_default()
                    .entry(summary(&reason))
                    .or_default() += 1;
                let ok = match kind {
                    Kind::Echo => false,
                    Kind::Chaos(mode) => (expected(mode).1)(&reason),
                };
                if !ok {
                    s.unexpected_count += 1;
                    if s.unexpected.len() < 10 {
                        s.unexpected
                            .push(format!("{} slot {}: {reason}", kind.name(), event.slot));
                    }
                }
            }
            EventKind::RestartIntensityTripped { .. } => s.intensity_trips += 1,
            _ => {}
        }
    }
}

/// Sends one sequence-numbered message per echo connection every
/// [`SEND_EVERY`] (slower when that would pass [`MAX_ECHO_RATE`]) until
/// `stop` turns true.
async fn send_loop(
    fleet: Arc<Fleet>,
    state: Arc<Mutex<State>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut period = SEND_EVERY;
    loop {
        tokio::time::sleep(period).await;
        if *stop.borrow() {
            return;
        }
        let (epoch, targets): (std::time::Instant, Vec<(SlotId, ConnId, u64)>) = {
            let s = state.lock().unwrap_or_else(|p| p.into_inner());
            let targets = s
                .echo
                .iter()
                .filter_map(|(slot, log)| log.conn.map(|c| (*slot, c, log.next_seq)))
                .collect();
            (s.epoch, targets)
        };
        #[allow(clippy::cast_precision_loss)] // counts far below 2^52
        let capped = Duration::from_secs_f64(targets.len() as f64 / MAX_ECHO_RATE);
        period = SEND_EVERY.max(capped);
        for (slot, conn, seq) in targets {
            // Sizes from a few bytes to 1.5 KiB, varying by message.
            let pad = "x".repeat(((seq as usize) * 37 + slot.0 as usize) % 1500);
            let sent_us = epoch.elapsed().as_micros();
            let message = Message::text(format!("{}:{seq}:{sent_us}:{pad}", slot.0));
            if fleet.send_to(conn, message).await.is_ok() {
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(log) = s.echo.get_mut(&slot) {
                    log.sent += 1;
                    log.next_seq += 1;
                }
            }
        }
    }
}

/// Gap growth of one mode: the mean gap between a slot's first two
/// failures, and the mean of its later gaps (index 3 on).
fn gaps(slots: &[&SlotLog]) -> (f64, f64, f64) {
    let (mut first, mut later, mut min) = (Vec::new(), Vec::new(), f64::MAX);
    for log in slots {
        for (i, pair) in log.failures.windows(2).enumerate() {
            let gap = (pair[1] - pair[0]).as_secs_f64();
            min = min.min(gap);
            if i == 0 {
                first.push(gap);
            } else if i >= 3 {
                later.push(gap);
            }
        }
    }
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    (
        mean(&first),
        mean(&later),
        if min == f64::MAX { 0.0 } else { min },
    )
}

/// Runs the soak: `connections` for `duration`.
pub(crate) async fn run(connections: usize, duration: Duration, long: bool) -> Report {
    let mut report = Report::new(&format!(
        "soak: {connections} connections, {:?}, echo + every chaos mode",
        duration
    ));
    // Descriptors and tasks are counted from before the server process
    // (whose pipes this process holds until it stops).
    let baseline = Sample::now(None);
    let servers = match Servers::start(0, true).await {
        Ok(s) => s,
        Err(e) => {
            report.check(false, || e);
            return report;
        }
    };
    // The round-robin cycle of URLs; each URL's path names its kind.
    let mut cycle: Vec<(Kind, String)> = Vec::new();
    let scale = (connections / 300).max(1);
    for _ in 0..ECHO_WEIGHT * scale {
        cycle.push((Kind::Echo, format!("{}echo", servers.echo)));
    }
    for (mode, url) in &servers.chaos {
        for _ in 0..CHAOS_WEIGHT * scale {
            cycle.push((Kind::Chaos(*mode), format!("{url}{mode}")));
        }
    }
    let by_url: HashMap<String, Kind> = cycle.iter().map(|(k, u)| (u.clone(), *k)).collect();

    tokio::time::sleep(Duration::from_millis(200)).await;
    let heap_before = wsfleet_testkit::measure::live_heap_bytes();
    wsfleet_testkit::measure::reset_heap_peak();
    let before = Sample {
        fds: baseline.fds,
        tasks: baseline.tasks,
        ..Sample::now(None)
    };

    let backoff_cap = if long {
        Duration::from_secs(15)
    } else {
        Duration::from_secs(4)
    };
    let mut builder = Fleet::builder(cycle[0].1.clone())
        .connections(connections)
        .connect_rate(1000.0)
        .memory_budget(BUDGET)
        .limits(
            Limits::default()
                .with_max_message(MAX_MESSAGE)
                .with_max_frame_payload(MAX_MESSAGE),
        )
        .deadlines(
            Deadlines::default()
                .with_handshake(Duration::from_secs(2))
                .with_close(Duration::from_secs(1)),
        )
        .keepalive(
            Keepalive::default()
                .with_interval(Some(Duration::from_secs(1)))
                .with_pong_timeout(Duration::from_secs(1)),
        )
        .backoff(Backoff::new(Duration::from_millis(250), backoff_cap).expect("valid backoff"))
        // The soak's failures are the point: the intensity window is
        // exercised by the exhaustion run, not here.
        .restart_intensity(RestartIntensity {
            max_restarts: u32::try_from(connections * 20).unwrap_or(u32::MAX),
            period: Duration::from_secs(10),
            pause: Duration::from_secs(1),
        });
    for (_, url) in &cycle[1..] {
        builder = builder.url(url.clone());
    }
    let mut fleet = match builder.spawn() {
        Ok(f) => f,
        Err(e) => {
            report.check(false, || format!("fleet config: {e}"));
            return report;
        }
    };
    let monitor = fleet.monitor();
    let state = Arc::new(Mutex::new(State::default()));
    {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        for c in monitor.stats().connections {
            let kind = by_url.get(&c.url).copied().unwrap_or(Kind::Echo);
            s.kinds.insert(c.slot, kind);
            if kind == Kind::Echo {
                s.echo.entry(c.slot).or_default();
            }
        }
    }
    let events = fleet.events().expect("first call");
    let consumer = tokio::spawn(consume(events, state.clone()));
    let fleet = Arc::new(fleet);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sender = tokio::spawn(send_loop(fleet.clone(), state.clone(), stop_rx));
    let sampler = Sampler::start(monitor.clone(), Duration::from_millis(250));

    let started = Instant::now();
    let mut last_note = Instant::now();
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if last_note.elapsed() >= Duration::from_secs(if long { 30 } else { 10 }) {
            last_note = Instant::now();
            let s = Sample::now(Some(&monitor));
            eprintln!(
                "soak: {:>4.0} s  ready {}/{connections}  rss {}  fds {}  tasks {}  budget {}",
                started.elapsed().as_secs_f64(),
                s.ready,
                mib(s.rss),
                s.fds,
                s.tasks,
                kib(s.budget_used as f64)
            );
        }
    }
    // Stop sending, let the last echoes come back.
    let _ = stop_tx.send(true);
    let _ = sender.await;
    let drain_started = Instant::now();
    let drained = tokio::time::timeout(DRAIN_LIMIT, async {
        loop {
            let done = {
                let s = state.lock().unwrap_or_else(|p| p.into_inner());
                s.echo
                    .values()
                    .all(|l| l.sent == l.echoed + l.undelivered + l.out_of_order)
            };
            if done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .is_ok();
    let drain_took = drain_started.elapsed();
    let during = sampler.stop().await;
    let heap_peak = wsfleet_testkit::measure::peak_heap_bytes();
    let ready_at_end = monitor.ready();
    let stats_at_end = monitor.stats();
    match Arc::try_unwrap(fleet) {
        Ok(fleet) => fleet.shutdown().await,
        Err(_) => report.check(false, || {
            "the fleet handle is still shared at shutdown".into()
        }),
    }
    let _ = consumer.await;
    let budget_after = monitor.stats().budget_used;
    drop(monitor);
    servers.stop().await;
    let after = back_to(&before).await;

    // Figures and checks.
    let peak = |f: fn(&Sample) -> u64| during.iter().map(f).max().unwrap_or(0);
    let rss_peak = peak(|s| s.rss);
    let rss_limit = before.rss + BUDGET as u64 + connections as u64 * PER_CONNECTION_BASELINE;
    report.figure(
        "RSS before / peak / limit",
        format!(
            "{} / {} / {} (before + budget {} + {} x {})",
            mib(before.rss),
            mib(rss_peak),
            mib(rss_limit),
            mib(BUDGET as u64),
            connections,
            kib(PER_CONNECTION_BASELINE as f64)
        ),
    );
    report.check(rss_peak <= rss_limit, || {
        format!(
            "RSS peak {} above the limit {}",
            mib(rss_peak),
            mib(rss_limit)
        )
    });
    let heap_limit = heap_before + BUDGET + connections * PER_CONNECTION_BASELINE as usize;
    report.figure(
        "live heap before / peak / limit",
        format!(
            "{} / {} / {}",
            mib(heap_before as u64),
            mib(heap_peak as u64),
            mib(heap_limit as u64)
        ),
    );
    report.check(heap_peak <= heap_limit, || {
        format!(
            "live heap peak {} above the limit {}",
            mib(heap_peak as u64),
            mib(heap_limit as u64)
        )
    });
    report.figure(
        "budget peak / max; after shutdown",
        format!(
            "{} / {}; {} B",
            kib(stats_at_end.budget_peak as f64),
            mib(BUDGET as u64),
            budget_after
        ),
    );
    report.check(budget_after == 0, || {
        format!("{budget_after} budget bytes held after shutdown")
    });
    report.figure(
        "fds before / peak / after",
        format!(
            "{} / {} / {}",
            before.fds,
            peak(|s| s.fds as u64),
            after.fds
        ),
    );
    report.check(after.fds == before.fds, || {
        format!("fds after shutdown {} != before {}", after.fds, before.fds)
    });
    report.figure(
        "tokio tasks before / peak / after",
        format!(
            "{} / {} / {}",
            before.tasks,
            peak(|s| s.tasks as u64),
            after.tasks
        ),
    );
    report.check(after.tasks == before.tasks, || {
        format!(
            "tokio tasks after shutdown {} != before {}",
            after.tasks, before.tasks
        )
    });

    let s = state.lock().unwrap_or_else(|p| p.into_inner());
    let (sent, echoed, ooo, undelivered) = s.echo.values().fold((0, 0, 0, 0), |a, l| {
        (
            a.0 + l.sent,
            a.1 + l.echoed,
            a.2 + l.out_of_order,
            a.3 + l.undelivered,
        )
    });
    report.figure(
        "echo: connections / sent / echoed",
        format!(
            "{} / {sent} / {echoed} (out of order {ooo}, undelivered {undelivered})",
            s.echo.len()
        ),
    );
    let latency_max = s.echo.values().map(|l| l.latency_max_us).max().unwrap_or(0);
    let latency_mean =
        s.echo.values().map(|l| l.latency_sum_us).sum::<u64>() as f64 / (echoed.max(1)) as f64;
    report.figure(
        "echo latency mean / max; drained in",
        format!(
            "{:.1} ms / {:.1} ms; {drain_took:.2?}{}",
            latency_mean / 1000.0,
            latency_max as f64 / 1000.0,
            if drained { "" } else { " (NOT drained)" }
        ),
    );
    report.check(
        drained && sent == echoed && ooo == 0 && undelivered == 0 && sent > 0,
        || {
            format!(
                "echo: sent {sent}, echoed {echoed}, out of order {ooo}, undelivered {undelivered}"
            )
        },
    );
    let echo_ready = s.echo.values().filter(|l| l.conn.is_some()).count();
    report.figure(
        "ready at end (all / echo)",
        format!(
            "{ready_at_end}/{connections} / {echo_ready}/{}",
            s.echo.len()
        ),
    );
    report.check(echo_ready == s.echo.len(), || {
        format!(
            "only {echo_ready} of {} echo connections ready at the end",
            s.echo.len()
        )
    });

    let mut modes: Vec<ChaosMode> = s
        .kinds
        .values()
        .filter_map(|k| match k {
            Kind::Chaos(m) => Some(*m),
            Kind::Echo => None,
        })
        .collect();
    modes.sort_by_key(|m| m.name());
    modes.dedup();
    for mode in modes {
        let slots: Vec<&SlotLog> = s
            .kinds
            .iter()
            .filter(|(_, k)| **k == Kind::Chaos(mode))
            .filter_map(|(slot, _)| s.slots.get(slot))
            .collect();
        let n_slots = s
            .kinds
            .values()
            .filter(|k| **k == Kind::Chaos(mode))
            .count();
        let drops: usize = slots.iter().map(|l| l.failures.len()).sum();
        let reasons = s
            .reasons
            .get(&Kind::Chaos(mode))
            .map(|r| {
                r.iter()
                    .map(|(k, v)| format!("{k} x{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_else(|| "-".into());
        let (first, later, min) = gaps(&slots);
        report.figure(
            format!("{mode} ({n_slots} slots)"),
            format!(
                "{drops} drops: {reasons}; gap 1st {first:.2} s -> 4th+ {later:.2} s (min {min:.2} s); expected {}",
                expected(mode).0
            ),
        );
        let dropped_slots = slots.iter().filter(|l| l.failures.len() >= 2).count();
        report.check(dropped_slots == n_slots, || {
            format!(
                "{mode}: only {dropped_slots} of {n_slots} slots dropped and reconnected (2+ drops)"
            )
        });
        if mode == ChaosMode::Busy {
            report.check(min >= 5.0 - EVENT_LAG_SLACK, || {
                format!("{mode}: a reconnect came {min:.2} s after a Retry-After of 5 s")
            });
        } else {
            report.check(later > first, || {
                format!("{mode}: reconnect gaps did not grow ({first:.2} s -> {later:.2} s)")
            });
        }
    }
    report.figure(
        "unexpected reasons",
        format!("{} {:?}", s.unexpected_count, s.unexpected),
    );
    report.check(s.unexpected_count == 0, || {
        format!(
            "{} disconnects with an unexpected reason, e.g. {:?}",
            s.unexpected_count, s.unexpected
        )
    });
    report.figure("restart intensity trips", s.intensity_trips.to_string());
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsfleet::connect::{ConnectError, ConnectErrorKind};

    #[test]
    fn every_mode_expects_its_own_reason_only() {
        let frame_too_large = DisconnectReason::Protocol(ProtocolError::FrameTooLarge {
            len: 1 << 62,
            max: 1 << 20,
        });
        let handshake = |kind| Arc::new(ConnectError::new(Phase::Handshake, "127.0.0.1:1", kind));
        let busy = DisconnectReason::ConnectFailed {
            phase: Phase::Handshake,
            error: handshake(ConnectErrorKind::Other("status 503".into())),
            retry_after: Some(Duration::from_secs(5)),
        };
        let stalled = DisconnectReason::ConnectFailed {
            phase: Phase::Handshake,
            error: handshake(ConnectErrorKind::Timeout(Duration::from_secs(2))),
            retry_after: None,
        };
        assert!((expected(ChaosMode::LyingLength).1)(&frame_too_large));
        assert!(!(expected(ChaosMode::LyingLength).1)(
            &DisconnectReason::PongTimeout
        ));
        assert!((expected(ChaosMode::Silent).1)(
            &DisconnectReason::PongTimeout
        ));
        assert!((expected(ChaosMode::Busy).1)(&busy));
        assert!(!(expected(ChaosMode::Busy).1)(&stalled));
        assert!((expected(ChaosMode::StallHandshake).1)(&stalled));
        assert!(!(expected(ChaosMode::EndlessHandshake).1)(&stalled));
        assert!((expected(ChaosMode::InvalidUtf8).1)(
            &DisconnectReason::Protocol(ProtocolError::InvalidUtf8)
        ));
        assert!((expected(ChaosMode::Junk).1)(&DisconnectReason::Protocol(
            ProtocolError::UnknownOpcode(3)
        )));
        assert!(!(expected(ChaosMode::PingFlood).1)(
            &DisconnectReason::PongTimeout
        ));
        assert!((expected(ChaosMode::PingFlood).1)(
            &DisconnectReason::PingFlood
        ));
        assert_eq!(summary(&frame_too_large), "protocol:FrameTooLarge(1009)");
        assert_eq!(summary(&busy), "connect_failed:Handshake(retry-after 5s)");
    }

    #[test]
    fn sequence_numbers_parse_and_gaps_average() {
        assert_eq!(
            parse_seq(&Message::text("7:42:1000:xxx")),
            Some((7, 42, 1000))
        );
        assert_eq!(parse_seq(&Message::text("junk")), None);
        assert_eq!(parse_seq(&Message::binary(vec![1, 2])), None);
        let t0 = Instant::now();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let log = SlotLog {
            failures: vec![at(0.0), at(1.0), at(3.0), at(7.0), at(15.0), at(31.0)],
        };
        let (first, later, min) = gaps(&[&log]);
        assert_eq!((first, min), (1.0, 1.0));
        assert_eq!(later, 12.0, "gaps 8 and 16");
    }
}
