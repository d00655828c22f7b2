//! What permessage-deflate costs per connection, measured: heap bytes per
//! connection (a counting global allocator) for N connections to the Python
//! `websockets` server (compression on), without deflate, with the default
//! offer (no context takeover) and with context takeover both ways; after
//! each connection exchanged two compressible messages (similar, not equal),
//! and again after the connections stayed quiet long enough to free what
//! they may free.
//!
//! ```text
//! scripts/setup-venv   # the Python websockets server (scripts/test runs it too)
//! cargo run --release -p wsfleet --example deflate_memory -- [CONNECTIONS] [MESSAGE_BYTES]
//! ```
//!
//! Defaults: 1,000 connections, 4 KiB JSON-like text messages. The numbers
//! are in docs/deflate.md.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};
use wsfleet::proto::deflate::DeflateConfig;
use wsfleet::{CloseCode, Connection, ConnectionConfig, Message};
use wsfleet_testkit::measure::{CountingAlloc, live_heap_bytes};
use wsfleet_testkit::{Mode, PyServer, ServerOptions};

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

/// Handshakes in flight at once.
const CONNECT_CONCURRENCY: usize = 64;
/// Longer than the connection's idle-release delay (200 ms).
const QUIET: Duration = Duration::from_millis(400);
/// Bound on every wait of a connection task.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// What one connection reports after its exchange.
struct Exchanged {
    /// Bytes our second message took on the wire (header, mask, payload).
    wire_out: u64,
    /// Whether permessage-deflate was negotiated.
    deflate: bool,
}

/// The phases the main task steps the connections through.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Exchange,
    Quiet,
    Close,
}

async fn connection(
    url: String,
    config: Arc<ConnectionConfig>,
    messages: Arc<(Message, Message)>,
    connect_slots: Arc<Semaphore>,
    mut phase: watch::Receiver<Phase>,
    report: mpsc::Sender<Result<Exchanged, String>>,
) {
    let outcome = async {
        let permit = connect_slots.acquire().await.map_err(|e| e.to_string())?;
        let mut conn = tokio::time::timeout(STEP_TIMEOUT, Connection::connect(&url, &config))
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        drop(permit);
        let mut wire_out = 0;
        for message in [&messages.0, &messages.1] {
            let before = conn.stats().bytes_out;
            conn.send(message.clone())
                .await
                .map_err(|e| e.to_string())?;
            wire_out = conn.stats().bytes_out - before;
            let echo = tokio::time::timeout(STEP_TIMEOUT, conn.recv())
                .await
                .map_err(|_| "echo timed out".to_owned())?
                .ok_or("closed before the echo")?
                .map_err(|e| e.to_string())?;
            if echo != *message {
                return Err("the echo differs".to_owned());
            }
        }
        Ok((conn, wire_out))
    }
    .await;
    let mut conn = match outcome {
        Ok((conn, wire_out)) => {
            let deflate = conn.deflate().is_some();
            let _ = report.send(Ok(Exchanged { wire_out, deflate })).await;
            conn
        }
        Err(e) => {
            let _ = report.send(Err(e)).await;
            return;
        }
    };
    // Held without being polled until the main task has measured.
    let _ = phase.wait_for(|p| *p >= Phase::Quiet).await;
    // Waiting in recv drives the idle-release timer.
    let _ = tokio::time::timeout(QUIET, conn.recv()).await;
    let _ = report
        .send(Ok(Exchanged {
            wire_out: 0,
            deflate: false,
        }))
        .await;
    let _ = phase.wait_for(|p| *p >= Phase::Close).await;
    let _ = tokio::time::timeout(STEP_TIMEOUT, conn.close(CloseCode::NORMAL, "")).await;
}

/// Heap per connection after the exchange and after the quiet time, wire
/// bytes of the message, and whether deflate was negotiated.
async fn measure(
    url: &str,
    n: usize,
    config: ConnectionConfig,
    messages: &Arc<(Message, Message)>,
) -> Result<(f64, f64, u64, bool), String> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let heap0 = live_heap_bytes();
    let config = Arc::new(config);
    let slots = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let (phase_tx, phase_rx) = watch::channel(Phase::Exchange);
    let (report_tx, mut reports) = mpsc::channel(n);
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(connection(
                url.to_owned(),
                config.clone(),
                messages.clone(),
                slots.clone(),
                phase_rx.clone(),
                report_tx.clone(),
            ))
        })
        .collect();
    drop(report_tx);
    let (mut wire, mut deflate) = (0, true);
    for _ in 0..n {
        match reports.recv().await {
            Some(Ok(r)) => {
                wire = r.wire_out;
                deflate &= r.deflate;
            }
            Some(Err(e)) => return Err(e),
            None => return Err("a connection task ended early".into()),
        }
    }
    let after_exchange = (live_heap_bytes() - heap0) as f64 / n as f64;
    let _ = phase_tx.send(Phase::Quiet);
    for _ in 0..n {
        if reports.recv().await.is_none() {
            return Err("a connection task ended early".into());
        }
    }
    let after_quiet = (live_heap_bytes() - heap0) as f64 / n as f64;
    let _ = phase_tx.send(Phase::Close);
    for task in tasks {
        let _ = task.await;
    }
    Ok((after_exchange, after_quiet, wire, deflate))
}

/// A JSON-like text that compresses about as market data does.
fn json_message(bytes: usize, first_seq: u64) -> String {
    let mut s = String::from("[");
    let mut i = first_seq;
    while s.len() < bytes {
        s.push_str(&format!(
            r#"{{"seq":{i},"symbol":"BTC-USD","bid":{},"ask":{},"size":{}}},"#,
            40_000 + i % 97,
            40_001 + i % 89,
            1 + i % 13
        ));
        i += 1;
    }
    s.truncate(bytes);
    s
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let size: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(4096);
    let server = match PyServer::start_with(
        Mode::Echo,
        ServerOptions {
            deflate: true,
            ..ServerOptions::default()
        },
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("deflate_memory: cannot start the Python websockets server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let messages = Arc::new((
        Message::text(json_message(size, 0)),
        Message::text(json_message(size, 1_000)),
    ));
    println!(
        "{n} connections to the Python websockets server (compression on), two {size}-byte text messages each (the second's size on the wire shown)\n"
    );
    println!(
        "| client offer | negotiated | heap/conn after the exchange | heap/conn after {} ms quiet | message on the wire |",
        QUIET.as_millis()
    );
    println!("|---|---|---:|---:|---:|");
    let modes: [(&str, Option<DeflateConfig>); 3] = [
        ("no deflate", None),
        (
            "deflate, defaults (no context takeover)",
            Some(DeflateConfig::default()),
        ),
        (
            "deflate, context takeover both ways",
            Some(DeflateConfig::default().with_context_takeover()),
        ),
    ];
    for (name, deflate) in modes {
        let mut config = ConnectionConfig::default();
        if let Some(d) = deflate {
            config = config.deflate(d);
        }
        match measure(&server.url(), n, config, &messages).await {
            Ok((exchanged, quiet, wire, negotiated)) => println!(
                "| {name} | {} | {:.1} KiB | {:.1} KiB | {wire} B |",
                if negotiated { "yes" } else { "no" },
                exchanged / 1024.0,
                quiet / 1024.0
            ),
            Err(e) => {
                eprintln!("deflate_memory: {name}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
