//! Heap bytes per idle fleet connection, counted by a global allocator that
//! tracks live bytes, and RSS per connection.
//!
//! ```text
//! ulimit -n 65536   # 10,000 connections need more than 10,000 descriptors
//! cargo run --release -p wsfleet --example idle_heap -- [--connections 1000,10000]
//! ```
//!
//! The echo server runs in a child process (this same executable, run with
//! `--serve`), so its allocations and pages are not counted. For each
//! fleet size N the parent measures the live heap and RSS, ramps a fleet of
//! N connections up, lets it sit idle for 2 s (default keepalive), measures
//! again and reports the difference divided by N, then shuts the fleet down
//! and reports what heap is left over.
//!
//! RSS counts user-space pages only: the kernel's socket buffers are not in
//! it, and freed heap is not always returned to the OS, so RSS of a second,
//! larger run starts from the high-water mark of the first.

use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use wsfleet::ConnectionConfig;
use wsfleet::fleet::{DisconnectReason, EventKind, Events, Fleet};
use wsfleet::serve::EchoServer;
use wsfleet_testkit::measure::{
    CountingAlloc, live_heap_bytes, open_files_limit, peak_heap_bytes, proc_status_bytes,
    reset_heap_peak,
};

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

fn kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

/// `--serve`: an echo server on loopback; prints its URL, serves until
/// stdin closes (the parent exited or is done).
async fn serve() -> ExitCode {
    let server = match EchoServer::bind("127.0.0.1:0", ConnectionConfig::default()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("idle_heap --serve: cannot bind: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", server.url());
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    drop(server);
    ExitCode::SUCCESS
}

/// What the event consumer saw.
#[derive(Default)]
struct Seen {
    failures: AtomicUsize,
    out_of_fds: AtomicBool,
    first_failure: std::sync::Mutex<Option<String>>,
}

async fn consume(mut events: Events, seen: Arc<Seen>) {
    while let Some(event) = events.recv().await {
        if let EventKind::Disconnected(reason) = event.kind {
            if !reason.is_failure() {
                continue;
            }
            seen.failures.fetch_add(1, Ordering::Relaxed);
            if let DisconnectReason::ConnectFailed { error, .. } = &reason {
                // 24: EMFILE, too many open files.
                if error.io_error().and_then(std::io::Error::raw_os_error) == Some(24) {
                    seen.out_of_fds.store(true, Ordering::Relaxed);
                }
            }
            seen.first_failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert_with(|| reason.to_string());
        }
    }
}

/// One fleet of `n`: returns false on failure (after saying why).
async fn measure(url: &str, n: usize) -> bool {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let heap_before = live_heap_bytes();
    let rss_before = proc_status_bytes("VmRSS:").unwrap_or(0);
    reset_heap_peak();

    let mut fleet = match Fleet::builder(url)
        .connections(n)
        .connect_rate(2000.0)
        .spawn()
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("idle_heap: {e}");
            return false;
        }
    };
    let seen = Arc::new(Seen::default());
    let consumer = tokio::spawn(consume(fleet.events().expect("first call"), seen.clone()));
    let started = Instant::now();
    let limit = Duration::from_secs(30) + Duration::from_secs_f64(n as f64 / 1000.0);
    let mut last_report = Instant::now();
    while fleet.ready() < n {
        if seen.out_of_fds.load(Ordering::Relaxed) {
            eprintln!(
                "idle_heap: connect failed with EMFILE (too many open files) at {} of {n} \
                 connections; raise the limit in this shell with `ulimit -n 65536` and rerun",
                fleet.ready()
            );
            fleet.shutdown().await;
            return false;
        }
        if started.elapsed() > limit {
            eprintln!(
                "idle_heap: only {}/{n} ready after {limit:?}; first failure: {:?}",
                fleet.ready(),
                seen.first_failure.lock().unwrap_or_else(|p| p.into_inner())
            );
            fleet.shutdown().await;
            return false;
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            eprintln!("idle_heap: ready {}/{n}", fleet.ready());
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ramp = started.elapsed();
    let ramp_peak = peak_heap_bytes();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let heap_after = live_heap_bytes();
    let rss_after = proc_status_bytes("VmRSS:").unwrap_or(0);
    // Taken after the heap reading: the snapshot holds a record per connection.
    let budget_used = fleet.stats().budget_used;
    let still_ready = fleet.ready();

    fleet.shutdown().await;
    let _ = consumer.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let heap_end = live_heap_bytes();

    let per = |bytes: usize| bytes as f64 / n as f64;
    println!("connections {n} (ramp-up {ramp:.2?}, {still_ready} ready after 2 s idle)");
    println!(
        "  heap per idle connection {} ({} B); fleet heap {:.2} MiB",
        kib(per(heap_after.saturating_sub(heap_before))),
        heap_after.saturating_sub(heap_before) / n,
        heap_after.saturating_sub(heap_before) as f64 / 1048576.0
    );
    println!(
        "  heap peak during ramp-up {} per connection",
        kib(per(ramp_peak.saturating_sub(heap_before)))
    );
    println!(
        "  budget charged per connection {} (fleet budget used {} B)",
        kib(per(budget_used)),
        budget_used
    );
    println!(
        "  RSS per connection {} (RSS {:.1} -> {:.1} MiB)",
        kib(rss_after.saturating_sub(rss_before) as f64 / n as f64),
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0
    );
    println!(
        "  heap left after shutdown {} B ({} per connection)",
        heap_end as i64 - heap_before as i64,
        kib(per(heap_end.saturating_sub(heap_before)))
    );
    let failures = seen.failures.load(Ordering::Relaxed);
    if failures > 0 {
        println!(
            "  {failures} connection failures; first: {:?}",
            seen.first_failure.lock().unwrap_or_else(|p| p.into_inner())
        );
    }
    true
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--serve") {
        return serve().await;
    }
    let mut sizes = vec![1000usize];
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match (flag.as_str(), it.next()) {
            ("--connections", Some(list)) => {
                let parsed: Result<Vec<usize>, _> =
                    list.split(',').map(|s| s.trim().parse::<usize>()).collect();
                match parsed {
                    Ok(v) if !v.is_empty() && v.iter().all(|&n| n > 0) => sizes = v,
                    _ => {
                        eprintln!("idle_heap: --connections takes a list like 1000,10000");
                        return ExitCode::FAILURE;
                    }
                }
            }
            _ => {
                eprintln!("usage: idle_heap [--connections 1000,10000]");
                return ExitCode::FAILURE;
            }
        }
    }
    let largest = sizes.iter().copied().max().unwrap_or(0) as u64;
    // This process holds one descriptor per connection; the server child
    // (same limit, inherited) one per connection too.
    let needed = largest + 512;
    match open_files_limit() {
        Some(limit) if limit < needed => {
            eprintln!(
                "idle_heap: the open-files limit is {limit}, {largest} connections need about \
                 {needed}; raise it in this shell with `ulimit -n 65536` and rerun"
            );
            return ExitCode::FAILURE;
        }
        _ => {}
    }

    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("idle_heap: cannot find this executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut child = match tokio::process::Command::new(exe)
        .arg("--serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("idle_heap: cannot start the server process: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        BufReader::new(stdout).read_line(&mut line),
    )
    .await;
    let url = line.trim().to_owned();
    if !matches!(read, Ok(Ok(_))) || !url.starts_with("ws://") {
        eprintln!("idle_heap: the server process did not print its URL (got {url:?})");
        return ExitCode::FAILURE;
    }
    eprintln!(
        "idle_heap: echo server in child process {} at {url}",
        child.id().unwrap_or(0)
    );

    let mut ok = true;
    for &n in &sizes {
        if !measure(&url, n).await {
            ok = false;
            break;
        }
    }
    // Closing its stdin stops the server; kill it if it lingers.
    drop(child.stdin.take());
    if tokio::time::timeout(Duration::from_secs(3), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
