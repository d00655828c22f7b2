//! `wsfleet-soak`: the reliability runs of issue 7, on loopback only.
//!
//! - `soak`: one fleet, a share on an echo server with sequence-numbered
//!   traffic, the rest on every `wsfleet serve --chaos` mode; checks RSS
//!   against the budget plus a stated per-connection baseline, the typed
//!   reason of every drop per mode, growing reconnect gaps, sent == echoed
//!   in order, and fds, tasks and budget back to their baseline.
//! - `rotation`: thousands of make-before-break rotations; the live heap
//!   (a counting allocator) and the fd count must not grow.
//! - `exhaustion`: EMFILE, DNS failure, the budget overrun at once, the
//!   upstream refusing every connection.
//! - `stalled`: a consumer that stops taking events: the fleet pauses
//!   reading within its budget, drops nothing, loses no sequence number.
//! - `pinning`: connections pinning 12 MiB frames next to healthy busy
//!   ones under one budget: the pinning ones go, the healthy ones stay.
//!
//! The peers run in a child process (this executable with `--serve`). Run
//! it through `scripts/soak` (see `--help`); exit status 1 on any violation.

mod allocator;
mod budget;
mod exhaustion;
mod hostile;
mod report;
mod rotation;
mod sample;
mod servers;
mod streams;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[global_allocator]
static ALLOC: wsfleet_testkit::measure::CountingAlloc = wsfleet_testkit::measure::CountingAlloc;

/// Which runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    All,
    Soak,
    Rotation,
    Exhaustion,
    Stalled,
    Pinning,
    Streams,
}

/// Hostile-server soak, rotation leak check and resource exhaustion for
/// wsfleet, on loopback.
#[derive(Debug, Parser)]
#[command(name = "wsfleet-soak")]
struct Args {
    /// The short form (about 300 connections for 40 s; about 100 s in all).
    #[arg(long)]
    short: bool,
    /// Minutes of the soak run (default 10, or under a minute with --short).
    #[arg(long)]
    minutes: Option<f64>,
    /// Connections of the soak run (default 1000, 300 with --short).
    #[arg(long)]
    connections: Option<usize>,
    /// Which runs.
    #[arg(value_enum, default_value = "all")]
    scenario: Scenario,
}

fn main() -> ExitCode {
    // Before any thread starts: glibc reads these settings without a lock.
    if let Err(e) = allocator::tune() {
        eprintln!("wsfleet-soak: {e}; RSS figures will not be the wsfleet binary's");
    }
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wsfleet-soak: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if raw.first().map(String::as_str) == Some("--serve") {
        return runtime.block_on(servers::serve_child(&raw[1..]));
    }
    let args = Args::parse();
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let long = !args.short;
    let connections = args.connections.unwrap_or(if long { 1000 } else { 300 });
    let duration = match args.minutes {
        Some(m) if m > 0.0 && m <= 24.0 * 60.0 => Duration::from_secs_f64(m * 60.0),
        Some(m) => {
            eprintln!("wsfleet-soak: --minutes {m} is out of range (0, 1440]");
            return ExitCode::from(2);
        }
        None if long => Duration::from_secs(600),
        None => Duration::from_secs(40),
    };
    if connections == 0 || connections > 20_000 {
        eprintln!("wsfleet-soak: --connections {connections} is out of range 1..=20000");
        return ExitCode::from(2);
    }
    let needed = connections as u64 * 2 + 512;
    if let Some(limit) = wsfleet_testkit::measure::open_files_limit() {
        if limit < needed {
            eprintln!(
                "wsfleet-soak: the open-files limit is {limit}; {connections} connections need about {needed}: raise it with `ulimit -n {needed}`"
            );
            return ExitCode::from(2);
        }
    }
    let started = std::time::Instant::now();
    let mut reports = Vec::new();
    let which = args.scenario;
    if matches!(which, Scenario::All | Scenario::Soak) {
        eprintln!("wsfleet-soak: soak, {connections} connections for {duration:?}");
        reports.push(hostile::run(connections, duration, long).await);
    }
    if matches!(which, Scenario::All | Scenario::Rotation) {
        let (n, d) = if long {
            (100, Duration::from_secs(60))
        } else {
            (50, Duration::from_secs(10))
        };
        eprintln!("wsfleet-soak: rotation, {n} connections for {d:?}");
        reports.push(rotation::run(n, d).await);
    }
    if matches!(which, Scenario::All | Scenario::Exhaustion) {
        eprintln!("wsfleet-soak: exhaustion");
        reports.push(exhaustion::run(long).await);
    }
    if matches!(which, Scenario::All | Scenario::Stalled) {
        eprintln!("wsfleet-soak: stalled consumer");
        reports.push(budget::stalled(long).await);
    }
    if matches!(which, Scenario::All | Scenario::Pinning) {
        eprintln!("wsfleet-soak: pinning next to healthy");
        reports.push(budget::pinning(long).await);
    }
    if matches!(which, Scenario::All | Scenario::Streams) {
        let shape = if long {
            streams::Shape::long(args.connections, args.minutes.map(|_| duration))
        } else {
            streams::Shape::short()
        };
        eprintln!(
            "wsfleet-soak: streams, {} connections for {:?}",
            shape.connections, shape.duration
        );
        reports.push(streams::run(shape).await);
    }
    for r in &reports {
        r.print();
    }
    let failed = reports.iter().filter(|r| !r.passed()).count();
    println!(
        "\nwsfleet-soak: {} in {:.0?}",
        if failed == 0 {
            "PASS".to_owned()
        } else {
            format!("FAIL ({failed} runs with violations)")
        },
        started.elapsed()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
