//! A fleet of N connections under a steady trickle of traffic: ramps the
//! fleet up, sends sequence-numbered text messages through `Fleet::send` at
//! a bounded rate, counts the echoes, and prints the totals with the
//! process's peak and current RSS.
//!
//! ```text
//! cargo run --release -p wsfleet --example fleet -- [--connections N] [--seconds S] [--url URL] [--rate R]
//! ```
//!
//! Defaults: 1,000 connections, 20 seconds, 2,000 messages per second in
//! total. Without `--url` an echo server runs in this process, so its
//! per-connection memory counts in the RSS printed too; to measure the
//! client alone, run the server in another process (`wsfleet serve`, for
//! instance) and pass its URL. Many connections need many descriptors:
//! `ulimit -n 65536` first (about N, plus N again for an in-process server).
//!
//! Exits non-zero unless every message sent was either echoed or reported
//! undelivered.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wsfleet::fleet::{DisconnectReason, EventKind, Events, Fleet};
use wsfleet::serve::EchoServer;
use wsfleet::{ConnectionConfig, Message};

/// Command-line options.
struct Args {
    connections: usize,
    seconds: u64,
    url: Option<String>,
    rate: u64,
}

fn usage() -> &'static str {
    "usage: fleet [--connections N=1000] [--seconds S=20] [--url ws://HOST:PORT/] [--rate MSGS_PER_SEC=2000]"
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        connections: 1000,
        seconds: 20,
        url: None,
        rate: 2000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--connections" => {
                args.connections = value("--connections")?
                    .parse()
                    .map_err(|e| format!("--connections: {e}"))?;
            }
            "--seconds" => {
                args.seconds = value("--seconds")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?;
            }
            "--rate" => {
                args.rate = value("--rate")?
                    .parse()
                    .map_err(|e| format!("--rate: {e}"))?;
            }
            "--url" => args.url = Some(value("--url")?),
            "-h" | "--help" => return Err(usage().to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    if args.connections == 0 || args.rate == 0 {
        return Err("--connections and --rate must be at least 1".to_owned());
    }
    Ok(args)
}

/// One `VmXXX:` line of `/proc/self/status`, in bytes.
fn proc_status_bytes(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// What the event consumer saw.
#[derive(Default)]
struct Tally {
    /// Distinct sequence numbers echoed back.
    echoed: u64,
    /// Echoes of a sequence number already seen.
    duplicates: u64,
    /// Messages that were not ours (should be none).
    strangers: u64,
    undelivered: u64,
    connected: u64,
    disconnects: BTreeMap<&'static str, u64>,
    first_failure: Option<String>,
    intensity_trips: u64,
    seen: Vec<bool>,
}

impl Tally {
    fn note_seq(&mut self, text: Option<&str>) -> bool {
        let Some(seq) = text
            .and_then(|t| t.strip_prefix("seq "))
            .and_then(|s| s.parse::<usize>().ok())
        else {
            self.strangers += 1;
            return false;
        };
        if seq >= self.seen.len() {
            self.seen.resize(seq + 1, false);
        }
        if std::mem::replace(&mut self.seen[seq], true) {
            self.duplicates += 1;
            false
        } else {
            true
        }
    }
}

/// Counters the main task reads while the consumer runs.
#[derive(Default)]
struct Live {
    /// Echoed plus undelivered: messages whose fate is known.
    settled: AtomicU64,
    /// A connect failed with EMFILE.
    out_of_fds: AtomicBool,
}

/// The soft limit on open files, from `/proc/self/limits`.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Consumes every event (the fleet stops reading when nobody does) until
/// the stream ends at shutdown.
async fn consume(mut events: Events, live: Arc<Live>) -> Tally {
    let mut tally = Tally::default();
    while let Some(event) = events.recv().await {
        match event.kind {
            EventKind::Message(m) => {
                let fresh = u64::from(tally.note_seq(m.as_text()));
                tally.echoed += fresh;
                live.settled.fetch_add(fresh, Ordering::Relaxed);
            }
            EventKind::Undelivered(m) => {
                let fresh = u64::from(tally.note_seq(m.as_text()));
                tally.undelivered += fresh;
                live.settled.fetch_add(fresh, Ordering::Relaxed);
            }
            EventKind::Connected { .. } => tally.connected += 1,
            EventKind::Disconnected(reason) => {
                if reason.is_failure() && tally.first_failure.is_none() {
                    tally.first_failure = Some(reason.to_string());
                }
                *tally.disconnects.entry(reason.label()).or_default() += 1;
                if let DisconnectReason::ConnectFailed { error, .. } = &reason {
                    // 24: EMFILE, too many open files.
                    if error.io_error().and_then(std::io::Error::raw_os_error) == Some(24)
                        && !live.out_of_fds.swap(true, Ordering::Relaxed)
                    {
                        eprintln!(
                            "fleet: out of file descriptors ({reason}); raise the limit with `ulimit -n 65536`"
                        );
                    }
                }
            }
            EventKind::RestartIntensityTripped { paused_for } => {
                tally.intensity_trips += 1;
                eprintln!("fleet: restart intensity tripped, reconnects paused for {paused_for:?}");
            }
            _ => {}
        }
    }
    tally
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let n = args.connections;
    // One descriptor per connection, two with the server in this process.
    let needed = n as u64 * if args.url.is_some() { 1 } else { 2 } + 256;
    if let Some(limit) = open_files_limit().filter(|&l| l < needed) {
        eprintln!(
            "fleet: the open-files limit is {limit}, {n} connections need about {needed}; \
             raise it in this shell with `ulimit -n 65536` and rerun"
        );
        return ExitCode::FAILURE;
    }

    let (url, server) = match args.url.clone() {
        Some(url) => (url, None),
        None => match EchoServer::bind("127.0.0.1:0", ConnectionConfig::default()).await {
            Ok(server) => {
                eprintln!(
                    "fleet: echo server in this process at {}; note: its per-connection memory \
                     counts in the RSS below too (pass --url of a server in another process, \
                     e.g. `wsfleet serve`, to measure the client alone)",
                    server.url()
                );
                (server.url(), Some(server))
            }
            Err(e) => {
                eprintln!("fleet: cannot start the echo server: {e}");
                return ExitCode::FAILURE;
            }
        },
    };

    let rss_before = proc_status_bytes("VmRSS:").unwrap_or(0);
    let mut fleet = match Fleet::builder(url.clone())
        .connections(n)
        .connect_rate(2000.0)
        .spawn()
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("fleet: {e}");
            return ExitCode::FAILURE;
        }
    };
    let live = Arc::new(Live::default());
    let consumer = tokio::spawn(consume(fleet.events().expect("first call"), live.clone()));

    // Ramp-up: 2,000 connections per second, plus slack for a slow server.
    let started = Instant::now();
    let ramp_limit = Duration::from_secs(30) + Duration::from_secs_f64(n as f64 / 2000.0 * 2.0);
    let mut last_report = Instant::now();
    eprintln!("fleet: ramping up {n} connections to {url}");
    loop {
        let ready = fleet.ready();
        if ready >= n {
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            eprintln!("fleet: ready {ready}/{n}");
            last_report = Instant::now();
        }
        if live.out_of_fds.load(Ordering::Relaxed) {
            eprintln!("fleet: only {ready}/{n} ready: out of file descriptors");
            fleet.shutdown().await;
            return ExitCode::FAILURE;
        }
        if started.elapsed() > ramp_limit {
            eprintln!("fleet: only {ready}/{n} ready after {ramp_limit:?}; giving up");
            fleet.shutdown().await;
            return ExitCode::FAILURE;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ramp = started.elapsed();
    eprintln!("fleet: ready {n}/{n} after {ramp:.2?}");

    // Traffic: `rate` messages per second in 10 ms batches.
    let fleet = Arc::new(fleet);
    let per_tick = (args.rate / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let traffic_until = Instant::now() + Duration::from_secs(args.seconds);
    let mut sent: u64 = 0;
    let mut refused: u64 = 0;
    let mut last_report = Instant::now();
    while Instant::now() < traffic_until {
        tick.tick().await;
        for _ in 0..per_tick {
            match fleet.send(Message::text(format!("seq {sent}"))).await {
                Ok(_) => sent += 1,
                Err(_) => refused += 1,
            }
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "fleet: ready {}/{n}, sent {sent}, echoed or undelivered {}",
                fleet.ready(),
                live.settled.load(Ordering::Relaxed)
            );
            last_report = Instant::now();
        }
    }
    // Let the last echoes arrive.
    let settle_until = Instant::now() + Duration::from_secs(10);
    while live.settled.load(Ordering::Relaxed) < sent && Instant::now() < settle_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let stats = fleet.stats();
    let rss_peak = proc_status_bytes("VmHWM:").unwrap_or(0);
    let rss_now = proc_status_bytes("VmRSS:").unwrap_or(0);
    let fleet = Arc::into_inner(fleet).expect("the only handle");
    fleet.shutdown().await;
    let tally = consumer.await.expect("event consumer");

    println!("connections      {n}");
    println!(
        "ready            {} (after ramp-up in {ramp:.2?})",
        stats.ready
    );
    println!("sent             {sent} ({refused} refused: no ready connection)");
    println!("echoed           {}", tally.echoed);
    println!("undelivered      {}", tally.undelivered);
    println!(
        "duplicates       {} (strangers {})",
        tally.duplicates, tally.strangers
    );
    println!("reconnects       {}", stats.reconnects);
    println!("disconnects      {:?}", tally.disconnects);
    if let Some(f) = &tally.first_failure {
        println!("first failure    {f}");
    }
    println!(
        "budget peak      {:.1} MiB ({} B per connection)",
        mib(stats.budget_peak as u64),
        stats.budget_peak / n
    );
    println!(
        "rss before fleet {:.1} MiB{}",
        mib(rss_before),
        if server.is_some() {
            " (echo server in this process: its connections count below too)"
        } else {
            ""
        }
    );
    println!(
        "rss peak (VmHWM) {:.1} MiB ({:.1} KiB per connection above the start)",
        mib(rss_peak),
        rss_peak.saturating_sub(rss_before) as f64 / 1024.0 / n as f64
    );
    println!("rss now          {:.1} MiB", mib(rss_now));

    if tally.echoed + tally.undelivered != sent {
        eprintln!(
            "fleet: LOST {} messages: sent {sent}, echoed {}, undelivered {}",
            sent as i64 - (tally.echoed + tally.undelivered) as i64,
            tally.echoed,
            tally.undelivered
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
