//! Resource exhaustion: out of descriptors, DNS failing, the budget
//! overrun by large messages at once, the upstream refusing everything.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use wsfleet::connect::Phase;
use wsfleet::fleet::{Backoff, DisconnectReason, EventKind, Events, Fleet, RestartIntensity};
use wsfleet::{Limits, Message};

use crate::report::{Report, kib, mib};
use crate::sample::Sample;
use crate::servers::Servers;

/// "Too many open files": the process is out of descriptors.
const EMFILE: i32 = 24;

/// Waits until `fleet` has `n` ready, up to `limit`; how long it took.
async fn ready_within(fleet: &Fleet, n: usize, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while fleet.ready() < n {
        if started.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some(started.elapsed())
}

/// Failure events seen, by a consumer task.
#[derive(Default)]
struct Tally {
    failures: AtomicU64,
    emfile: AtomicU64,
    dns: AtomicU64,
    other_phase: AtomicU64,
    budget: AtomicU64,
    budget_not_1009: AtomicU64,
    refused: AtomicU64,
    trips: AtomicU64,
    messages: AtomicU64,
    undelivered: AtomicU64,
    first: std::sync::Mutex<Option<String>>,
    first_emfile: std::sync::Mutex<Option<String>>,
}

fn tally(mut events: Events) -> (Arc<Tally>, tokio::task::JoinHandle<()>) {
    let t = Arc::new(Tally::default());
    let t2 = t.clone();
    let task = tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            match e.kind {
                EventKind::Disconnected(r) if r.is_failure() => {
                    t2.failures.fetch_add(1, Ordering::Relaxed);
                    let text = r.to_string();
                    match &r {
                        DisconnectReason::ConnectFailed { phase, error, .. } => {
                            let io = error.io_error();
                            if io.is_some_and(|e| e.raw_os_error() == Some(EMFILE)) {
                                t2.emfile.fetch_add(1, Ordering::Relaxed);
                                t2.first_emfile
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .get_or_insert_with(|| format!("{phase:?}: {text}"));
                            } else if *phase == Phase::Dns {
                                t2.dns.fetch_add(1, Ordering::Relaxed);
                            } else if io
                                .is_some_and(|e| e.kind() == io::ErrorKind::ConnectionRefused)
                            {
                                t2.refused.fetch_add(1, Ordering::Relaxed);
                            } else {
                                t2.other_phase.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        _ if r.label() == "budget_exhausted" => {
                            t2.budget.fetch_add(1, Ordering::Relaxed);
                            if r.close_code().map(|c| c.as_u16()) != Some(1009) {
                                t2.budget_not_1009.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        _ => {}
                    }
                    t2.first
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(text);
                }
                EventKind::RestartIntensityTripped { .. } => {
                    t2.trips.fetch_add(1, Ordering::Relaxed);
                }
                EventKind::Message(_) => {
                    t2.messages.fetch_add(1, Ordering::Relaxed);
                }
                EventKind::Undelivered(_) => {
                    t2.undelivered.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    });
    (t, task)
}

/// The soft and hard open-files limits.
fn nofile() -> Option<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a valid pointer to a
    // local; no other memory is touched.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0).then_some((lim.rlim_cur, lim.rlim_max))
}

/// Sets the soft open-files limit (the hard one unchanged).
fn set_nofile_soft(soft: u64) -> bool {
    let Some((_, hard)) = nofile() else {
        return false;
    };
    let lim = libc::rlimit {
        rlim_cur: soft.min(hard),
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads one `rlimit` through a valid pointer to a
    // local; lowering the soft limit below the open count is allowed (open
    // descriptors stay valid, new ones fail with EMFILE).
    #[allow(unsafe_code)]
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    rc == 0
}

/// (i) The fd limit: connecting hits EMFILE, the fleet keeps running and
/// recovers once the limit is restored.
async fn fd_limit(report: &mut Report, connections: usize) {
    let servers = match Servers::start(0, false).await {
        Ok(s) => s,
        Err(e) => return report.check(false, || e),
    };
    let Some((soft, _)) = nofile() else {
        return report.check(false, || "cannot read RLIMIT_NOFILE".into());
    };
    let open = Sample::now(None).fds as u64;
    let room = 8;
    let mut fleet = match Fleet::builder(servers.echo.clone())
        .connections(connections)
        .connect_rate(1000.0)
        .backoff(Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).expect("valid"))
        .spawn()
    {
        Ok(f) => f,
        Err(e) => return report.check(false, || format!("fleet config: {e}")),
    };
    let (t, consumer) = tally(fleet.events().expect("first call"));
    // Lowered before the first dial (the fleet's tasks have not run yet).
    let lowered = set_nofile_soft(open + room);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ready_starved = fleet.ready();
    let restored = set_nofile_soft(soft);
    let recovered = ready_within(&fleet, connections, Duration::from_secs(15)).await;
    fleet.shutdown().await;
    let _ = consumer.await;
    servers.stop().await;
    let emfile = t.emfile.load(Ordering::Relaxed);
    let first = t
        .first_emfile
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    report.figure(
        "(i) fd limit",
        format!(
            "soft limit {soft} -> {} for 3 s: {ready_starved}/{connections} ready, {emfile} EMFILE connect failures ({}); restored: all ready after {}",
            open + room,
            first.clone().unwrap_or_else(|| "-".into()),
            recovered.map_or("NEVER".into(), |d| format!("{d:.2?}"))
        ),
    );
    report.check(lowered && restored, || {
        "setrlimit(RLIMIT_NOFILE) failed".into()
    });
    report.check(emfile > 0 && ready_starved < connections, || {
        format!("EMFILE never reported ({emfile}), {ready_starved} ready")
    });
    report.check(
        first.as_deref().is_some_and(|f| f.starts_with("Tcp")),
        || format!("EMFILE not reported as a TCP-phase connect failure: {first:?}"),
    );
    report.check(recovered.is_some(), || {
        "connections not recovered after the limit was restored".into()
    });
}

/// UDP datagrams this network namespace has sent (`/proc/net/snmp`).
fn udp_out() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = udp.next()?.split_whitespace().collect();
    let values: Vec<&str> = udp.next()?.split_whitespace().collect();
    let at = names.iter().position(|n| *n == "OutDatagrams")?;
    values.get(at)?.parse().ok()
}

/// (ii) DNS failing for a name the resolver refuses locally: a 64-byte label
/// (DNS allows 63) under `.invalid`, so no query can leave the machine.
async fn dns(report: &mut Report, connections: usize, window: Duration) {
    let host = format!("{}.invalid", "a".repeat(64));
    let base = Duration::from_millis(200);
    let cap = Duration::from_secs(2);
    let udp_before = udp_out();
    let mut fleet = match Fleet::builder(format!("ws://{host}/"))
        .connections(connections)
        .connect_rate(1000.0)
        .backoff(Backoff::new(base, cap).expect("valid"))
        .spawn()
    {
        Ok(f) => f,
        Err(e) => return report.check(false, || format!("fleet config: {e}")),
    };
    let (t, consumer) = tally(fleet.events().expect("first call"));
    tokio::time::sleep(window).await;
    fleet.shutdown().await;
    let _ = consumer.await;
    let udp_after = udp_out();
    let (failures, dns) = (
        t.failures.load(Ordering::Relaxed),
        t.dns.load(Ordering::Relaxed),
    );
    let first = t.first.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // Without backoff a failing lookup retries as fast as it fails (tens of
    // thousands a second). With full jitter each slot waits U[0, ceiling]
    // with the ceiling doubling to the cap: this bound is about twice the
    // expected count.
    let bound =
        connections as u64 * (2 * window.as_millis() as u64 / (cap.as_millis() as u64 / 2) + 16);
    report.figure(
        "(ii) DNS failure",
        format!(
            "{connections} conns to {}…invalid for {window:?}: {failures} attempts ({:.1}/s, bound {bound}), all DNS phase: {}; UDP datagrams sent {:?}; e.g. {}",
            &host[..8],
            failures as f64 / window.as_secs_f64(),
            dns == failures,
            udp_after.zip(udp_before).map(|(a, b)| a - b),
            first.clone().unwrap_or_default()
        ),
    );
    report.check(failures >= connections as u64 && dns == failures, || {
        format!("{failures} failures, {dns} in the DNS phase: {first:?}")
    });
    report.check(failures <= bound, || {
        format!("{failures} DNS attempts: a storm (bound {bound})")
    });
    report.check(udp_before.is_some() && udp_before == udp_after, || {
        format!("UDP datagrams were sent during the DNS run: {udp_before:?} -> {udp_after:?}")
    });
}

/// (iii) The budget overrun by large messages at once: the connections that
/// cannot reserve are dropped with 1009, the process stays bounded, every
/// connection comes back.
async fn budget(report: &mut Report, connections: usize) {
    let servers = match Servers::start(0, false).await {
        Ok(s) => s,
        Err(e) => return report.check(false, || e),
    };
    let budget = 8 << 20;
    let size = 512 << 10;
    let before = Sample::now(None);
    let mut fleet = match Fleet::builder(servers.echo.clone())
        .connections(connections)
        .connect_rate(1000.0)
        .memory_budget(budget)
        .limits(
            Limits::default()
                .with_max_message(2 << 20)
                .with_max_frame_payload(2 << 20),
        )
        .backoff(Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).expect("valid"))
        .spawn()
    {
        Ok(f) => f,
        Err(e) => return report.check(false, || format!("fleet config: {e}")),
    };
    let monitor = fleet.monitor();
    let (t, consumer) = tally(fleet.events().expect("first call"));
    let ready = ready_within(&fleet, connections, Duration::from_secs(10)).await;
    // One payload shared by every send: the fleet's copies are what count.
    let payload = Message::binary(vec![0x5a_u8; size]);
    let mut sent = 0u64;
    let mut rss_peak = 0;
    let heap_before = wsfleet_testkit::measure::live_heap_bytes();
    wsfleet_testkit::measure::reset_heap_peak();
    let mut last_broadcast = Instant::now();
    for _round in 0..3 {
        last_broadcast = Instant::now();
        sent += fleet.broadcast(payload.clone()).await as u64;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            rss_peak = rss_peak.max(Sample::now(None).rss);
        }
    }
    let heap_peak = wsfleet_testkit::measure::peak_heap_bytes();
    let dropped = t.budget.load(Ordering::Relaxed);
    // The last round's drops reconnect while the loop above samples: the
    // recovery time counts from the last broadcast.
    let recovered = ready_within(&fleet, connections, Duration::from_secs(10))
        .await
        .map(|_| last_broadcast.elapsed());
    let budget_peak = monitor.stats().budget_peak;
    fleet.shutdown().await;
    let _ = consumer.await;
    let budget_after = monitor.stats().budget_used;
    servers.stop().await;
    // Live heap: what the fleet holds (budgeted buffers, the shared payload,
    // per-connection state). RSS adds what the allocator keeps of freed
    // chunks in its per-thread arenas (main thread and two workers here):
    // stated as two more budgets' worth.
    let heap_limit = heap_before
        + budget
        + connections * crate::hostile::PER_CONNECTION_BASELINE as usize
        + size;
    let rss_limit = before.rss
        + 3 * budget as u64
        + connections as u64 * crate::hostile::PER_CONNECTION_BASELINE
        + size as u64;
    let (echoed, undelivered) = (
        t.messages.load(Ordering::Relaxed),
        t.undelivered.load(Ordering::Relaxed),
    );
    report.figure(
        "(iii) budget overrun",
        format!(
            "{connections} conns, budget {}, 3 x broadcast of {}: sent {sent}, echoed {echoed}, handed back {undelivered}, {dropped} dropped for the budget (1009); budget peak {}; live heap peak {} (limit {}); RSS peak {} (limit {}); all ready again after {}; budget after shutdown {budget_after} B",
            mib(budget as u64),
            kib(size as f64),
            kib(budget_peak as f64),
            mib(heap_peak as u64),
            mib(heap_limit as u64),
            mib(rss_peak),
            mib(rss_limit),
            recovered.map_or("NEVER".into(), |d| format!("{d:.2?}"))
        ),
    );
    report.check(ready.is_some(), || "the budget run never got ready".into());
    report.check(t.budget_not_1009.load(Ordering::Relaxed) == 0, || {
        "a budget drop closed with a code other than 1009".into()
    });
    report.check(dropped > 0, || {
        "no connection was dropped for the budget: the run did not overrun it".into()
    });
    report.check(budget_peak <= budget + connections * 64, || {
        format!("budget peak {budget_peak} above the budget {budget}")
    });
    report.check(heap_peak <= heap_limit, || {
        format!(
            "live heap peak {} above {}",
            mib(heap_peak as u64),
            mib(heap_limit as u64)
        )
    });
    report.check(rss_peak <= rss_limit, || {
        format!("RSS peak {} above {}", mib(rss_peak), mib(rss_limit))
    });
    report.check(recovered.is_some(), || {
        "connections not recovered after the overrun".into()
    });
    report.check(budget_after == 0, || {
        format!("{budget_after} budget bytes held after shutdown")
    });
}

/// (iv) The upstream down (process killed: every connection reset, the port
/// refusing) for `outage`, then back on the same port.
async fn outage(report: &mut Report, connections: usize, outage: Duration) {
    let port = wsfleet_testkit::free_port().await;
    let servers = match Servers::start(port, false).await {
        Ok(s) => s,
        Err(e) => return report.check(false, || e),
    };
    let intensity = RestartIntensity {
        max_restarts: u32::try_from(connections).unwrap_or(u32::MAX),
        period: Duration::from_secs(2),
        pause: Duration::from_secs(2),
    };
    let cap = Duration::from_secs(2);
    let mut fleet = match Fleet::builder(servers.echo.clone())
        .connections(connections)
        .connect_rate(1000.0)
        .backoff(Backoff::new(Duration::from_millis(100), cap).expect("valid"))
        .restart_intensity(intensity)
        .spawn()
    {
        Ok(f) => f,
        Err(e) => return report.check(false, || format!("fleet config: {e}")),
    };
    let (t, consumer) = tally(fleet.events().expect("first call"));
    let ready = ready_within(&fleet, connections, Duration::from_secs(10)).await;
    let failures_before = t.failures.load(Ordering::Relaxed);
    servers.kill().await;
    let down_at = Instant::now();
    tokio::time::sleep(outage).await;
    let attempts = t.failures.load(Ordering::Relaxed) - failures_before;
    let servers = Servers::start(port, false).await;
    let back = match &servers {
        Ok(_) => ready_within(&fleet, connections, Duration::from_secs(30)).await,
        Err(_) => None,
    };
    let down_for = down_at.elapsed();
    fleet.shutdown().await;
    let _ = consumer.await;
    if let Ok(s) = servers {
        s.stop().await;
    }
    // Every attempt after the first drop is a restart: at most max_restarts
    // per period, plus one window's worth at the edge.
    let windows = outage.as_secs_f64() / intensity.period.as_secs_f64();
    let bound = (intensity.max_restarts as f64 * (windows + 1.0)) as u64 + connections as u64;
    let recover_bound = intensity.pause + cap + Duration::from_secs(5);
    report.figure(
        "(iv) upstream refusing",
        format!(
            "{connections} conns, killed for {outage:?}: {attempts} attempts ({:.1}/s; bound {bound} = {} per {:?} + {connections}), {} refused, intensity tripped {} times; all ready {} after the upstream returned (bound {recover_bound:?}); down {down_for:.1?}",
            attempts as f64 / outage.as_secs_f64(),
            intensity.max_restarts,
            intensity.period,
            t.refused.load(Ordering::Relaxed),
            t.trips.load(Ordering::Relaxed),
            back.map_or("NEVER".into(), |d| format!("{d:.2?}"))
        ),
    );
    report.check(ready.is_some(), || "the outage run never got ready".into());
    report.check(attempts <= bound, || {
        format!("{attempts} attempts during the outage (bound {bound})")
    });
    report.check(t.trips.load(Ordering::Relaxed) > 0, || {
        "restart intensity never engaged".into()
    });
    report.check(back.is_some_and(|d| d <= recover_bound), || {
        format!("not all ready within {recover_bound:?} of the upstream's return: {back:?}")
    });
}

/// Runs the four scenarios.
pub(crate) async fn run(long: bool) -> Report {
    let mut report = Report::new("exhaustion");
    let n = if long { 200 } else { 40 };
    fd_limit(&mut report, n).await;
    dns(
        &mut report,
        10,
        Duration::from_secs(if long { 30 } else { 5 }),
    )
    .await;
    budget(&mut report, n).await;
    outage(
        &mut report,
        if long { 500 } else { 100 },
        Duration::from_secs(if long { 120 } else { 8 }),
    )
    .await;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_counters_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(udp_out().is_some());
            let (soft, hard) = nofile().expect("getrlimit");
            assert!(soft > 0 && soft <= hard);
        }
    }
}
