//! Thousands of rotations: heap and descriptors must not grow, and every
//! buffer byte must come back.

use std::time::Duration;

use tokio::time::Instant;
use wsfleet::fleet::{EventKind, Fleet};

use crate::report::{Report, kib};
use crate::sample::{Sample, Sampler, back_to, median};
use crate::servers::Servers;

/// Lifetime of each connection before it is rotated (± 10 %).
const LIFETIME: Duration = Duration::from_millis(250);
/// Allowed growth of the live heap between the first and the last window
/// of the run (medians of the samples in each), and after shutdown against
/// before the fleet: tokio's own slabs and timer wheel keep some pages.
const HEAP_TOLERANCE: f64 = 128.0 * 1024.0;
/// Allowed growth of the descriptor count between the windows (rotations in
/// flight hold two sockets per slot for a moment).
const FD_TOLERANCE_SHARE: f64 = 0.25;

/// Runs `connections` rotating every [`LIFETIME`] for `duration`.
pub(crate) async fn run(connections: usize, duration: Duration) -> Report {
    let mut report = Report::new(&format!(
        "rotation: {connections} connections, lifetime {LIFETIME:?}, {duration:?}"
    ));
    // Descriptors and tasks are counted from before the server process
    // (whose pipes this process holds until it stops).
    let baseline = Sample::now(None);
    let servers = match Servers::start(0, false).await {
        Ok(s) => s,
        Err(e) => {
            report.check(false, || e);
            return report;
        }
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = Sample {
        fds: baseline.fds,
        tasks: baseline.tasks,
        ..Sample::now(None)
    };
    let mut fleet = match Fleet::builder(servers.echo.clone())
        .connections(connections)
        .connect_rate(5000.0)
        .max_lifetime(LIFETIME)
        .spawn()
    {
        Ok(f) => f,
        Err(e) => {
            report.check(false, || format!("fleet config: {e}"));
            return report;
        }
    };
    let monitor = fleet.monitor();
    let mut events = fleet.events().expect("first call");
    let failures = tokio::spawn(async move {
        let (mut failures, mut first) = (0u64, None);
        while let Some(e) = events.recv().await {
            if let EventKind::Disconnected(r) = e.kind {
                if r.is_failure() {
                    failures += 1;
                    first.get_or_insert_with(|| r.to_string());
                }
            }
        }
        (failures, first)
    });
    let sampler = Sampler::start(monitor.clone(), Duration::from_millis(100));
    tokio::time::sleep(duration).await;
    let samples = sampler.stop().await;
    let ready = monitor.ready();
    fleet.shutdown().await;
    let (failures, first_failure) = failures.await.unwrap_or((0, None));
    let totals = monitor.stats();
    drop(monitor);
    servers.stop().await;
    let after = back_to(&before).await;

    // The first window starts after the ramp-up and the first rotations.
    let start = samples.first().map_or_else(Instant::now, |s| s.at);
    let window = |from: Duration, to: Duration| -> Vec<&Sample> {
        samples
            .iter()
            .filter(|s| s.at >= start + from && s.at < start + to)
            .collect()
    };
    let w = (duration / 5).max(Duration::from_secs(1));
    let first = window(w, 2 * w);
    let last = window(duration - w, duration + w);
    let med = |v: &[&Sample], f: fn(&Sample) -> f64| median(v.iter().map(|s| f(s)).collect());
    let heap_first = med(&first, |s| s.heap as f64);
    let heap_last = med(&last, |s| s.heap as f64);
    let fds_first = med(&first, |s| s.fds as f64);
    let fds_last = med(&last, |s| s.fds as f64);
    let rot_first = med(&first, |s| s.rotations as f64);
    let rot_last = med(&last, |s| s.rotations as f64);
    let rotations_between = (rot_last - rot_first).max(1.0);
    let heap_growth = heap_last - heap_first;
    let fd_growth = fds_last - fds_first;

    report.figure(
        "rotations",
        format!(
            "{} ({:.0}/s)",
            totals.totals.rotations,
            totals.totals.rotations as f64 / duration.as_secs_f64()
        ),
    );
    report.check(totals.totals.rotations >= (connections as u64) * 4, || {
        format!("only {} rotations", totals.totals.rotations)
    });
    report.figure("ready at the end", format!("{ready}/{connections}"));
    report.check(ready == connections, || {
        format!("{ready}/{connections} ready at the end")
    });
    report.figure(
        "failures (not rotation/shutdown)",
        format!("{failures} {}", first_failure.clone().unwrap_or_default()),
    );
    report.check(failures == 0, || {
        format!("{failures} failures, first: {first_failure:?}")
    });
    report.figure(
        "heap first / last window (median)",
        format!(
            "{} / {}: {:+.1} KiB over {rotations_between:.0} rotations ({:+.1} B per rotation; tolerance {})",
            kib(heap_first),
            kib(heap_last),
            heap_growth / 1024.0,
            heap_growth / rotations_between,
            kib(HEAP_TOLERANCE)
        ),
    );
    report.check(heap_growth <= HEAP_TOLERANCE, || {
        format!("heap grew {} between the windows", kib(heap_growth))
    });
    let fd_tolerance = (connections as f64 * FD_TOLERANCE_SHARE).max(4.0);
    report.figure(
        "fds first / last window (median)",
        format!(
            "{fds_first:.0} / {fds_last:.0} ({:+.4} per rotation; tolerance +{fd_tolerance:.0})",
            fd_growth / rotations_between
        ),
    );
    report.check(fd_growth <= fd_tolerance, || {
        format!("fds grew by {fd_growth:.0}")
    });
    let heap_left = after.heap as f64 - before.heap as f64;
    report.figure(
        "heap before fleet / after shutdown",
        format!(
            "{} / {} ({:+.1} KiB)",
            kib(before.heap as f64),
            kib(after.heap as f64),
            heap_left / 1024.0
        ),
    );
    report.check(heap_left <= HEAP_TOLERANCE, || {
        format!("heap after shutdown {} above before", kib(heap_left))
    });
    report.figure(
        "fds / tasks before, after",
        format!(
            "{} / {}, {} / {}",
            before.fds, before.tasks, after.fds, after.tasks
        ),
    );
    report.check(
        after.fds == before.fds && after.tasks == before.tasks,
        || {
            format!(
                "after shutdown fds {} tasks {} != before {} / {}",
                after.fds, after.tasks, before.fds, before.tasks
            )
        },
    );
    report.figure(
        "budget peak; after shutdown",
        format!(
            "{}; {} B",
            kib(totals.budget_peak as f64),
            totals.budget_used
        ),
    );
    report.check(totals.budget_used == 0, || {
        format!("{} budget bytes not returned", totals.budget_used)
    });
    report
}
