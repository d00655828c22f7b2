//! `wsfleet run`: a fleet of connections with live status.
//!
//! Until the library's `Fleet` exists, [`DemoFleet`] stands in for it: one
//! task per connection slot that connects (at most [`CONNECT_CONCURRENCY`]
//! at a time), sends a short text message every `--interval`, counts what
//! comes back, and reconnects after [`RECONNECT_DELAY`] when it fails. The
//! rest of this module (status, shutdown, summary) only sees its
//! [`Snapshot`]s and `shutdown`, so the fleet can replace it.

use std::io::{IsTerminal as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use wsfleet::serve::EchoServer;
use wsfleet::{CloseCode, Connection, ConnectionConfig, Message};

use super::Signals;
use crate::cli::RunArgs;
use crate::units::format_size;

/// Most connection attempts in flight at once (no thundering herd).
const CONNECT_CONCURRENCY: usize = 50;
/// Wait before reconnecting a slot whose connection failed.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// Time given to close every connection (1001) on shutdown.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Status refresh on a terminal.
const STATUS_TTY_EVERY: Duration = Duration::from_secs(1);
/// Status log line when stderr is not a terminal.
const STATUS_LOG_EVERY: Duration = Duration::from_secs(5);

/// Runs the fleet until a signal or `--duration`, then prints the summary.
///
/// # Errors
/// If the embedded server cannot start, the limits are invalid, or stdout
/// is gone.
pub(crate) async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    let config = ConnectionConfig::default().limits(super::limits(args.max_message)?);

    // Kept alive until the fleet has closed its connections.
    let (server, urls) = if args.urls.is_empty() {
        let server = EchoServer::bind("127.0.0.1:0", ConnectionConfig::default())
            .await
            .context("cannot start the embedded echo server")?;
        let url = server.url();
        tracing::info!(%url, "no --url: demo fleet against an embedded echo server");
        (Some(server), vec![url])
    } else {
        (None, args.urls)
    };

    let target = usize::try_from(args.connections).context("--connections too large")?;
    let fleet = DemoFleet::spawn(urls, target, args.interval, config);

    let mut status = Status::new(std::io::stderr().is_terminal());
    let mut ticker = tokio::time::interval_at(Instant::now() + status.every, status.every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let deadline = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let reason = loop {
        tokio::select! {
            signal = signals.recv() => break signal,
            () = &mut deadline => break "--duration elapsed",
            _ = ticker.tick() => status.show(&fleet.snapshot()),
        }
    };
    let at_stop = fleet.snapshot();
    status.finish(&at_stop);
    tracing::info!(
        reason,
        "stopping: closing {} connections (1001)",
        at_stop.connected
    );
    let done = fleet.shutdown(CLOSE_GRACE).await;
    drop(server);

    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "sent={} received={} connections={}",
        done.sent, done.received, at_stop.connected
    )
    .and_then(|()| stdout.flush())
    .context("cannot write to stdout")?;
    Ok(())
}

/// Fleet-wide counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Snapshot {
    /// Connections asked for.
    target: usize,
    /// Connections open now.
    connected: usize,
    /// Messages sent.
    sent: u64,
    /// Messages received.
    received: u64,
    /// Reconnect attempts after a failure.
    reconnects: u64,
    /// Sum of every open connection's buffered bytes.
    buffered_bytes: u64,
}

/// Counters shared by the slot tasks.
#[derive(Debug)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    reconnects: AtomicU64,
    connected: AtomicUsize,
    /// Buffered bytes per slot (0 while not connected).
    buffered: Box<[AtomicUsize]>,
}

/// Stand-in for the library's fleet: one task per slot.
struct DemoFleet {
    counters: Arc<Counters>,
    tasks: JoinSet<()>,
    stop: CancellationToken,
}

impl DemoFleet {
    /// Starts `target` slots spread round robin over `urls`.
    fn spawn(
        urls: Vec<String>,
        target: usize,
        interval: Duration,
        config: ConnectionConfig,
    ) -> Self {
        let counters = Arc::new(Counters {
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            connected: AtomicUsize::new(0),
            buffered: (0..target).map(|_| AtomicUsize::new(0)).collect(),
        });
        let shared = Arc::new(Shared {
            config,
            interval,
            counters: counters.clone(),
            connect_gate: Semaphore::new(CONNECT_CONCURRENCY),
            stop: CancellationToken::new(),
        });
        let mut tasks = JoinSet::new();
        for slot in 0..target {
            let url = urls[slot % urls.len()].clone();
            // Spread the sends of all slots evenly over one interval.
            #[allow(clippy::cast_precision_loss)]
            let offset = interval.mul_f64(slot as f64 / target as f64);
            tasks.spawn(run_slot(slot, url, offset, shared.clone()));
        }
        Self {
            counters,
            tasks,
            stop: shared.stop.clone(),
        }
    }

    fn snapshot(&self) -> Snapshot {
        let c = &self.counters;
        Snapshot {
            target: c.buffered.len(),
            connected: c.connected.load(Ordering::Relaxed),
            sent: c.sent.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            buffered_bytes: c
                .buffered
                .iter()
                .map(|b| b.load(Ordering::Relaxed) as u64)
                .sum(),
        }
    }

    /// Closes every connection with 1001, waiting at most `grace` (plus a
    /// little); slots still busy then are dropped. Returns the final counts.
    async fn shutdown(mut self, grace: Duration) -> Snapshot {
        self.stop.cancel();
        let all_done = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace + Duration::from_millis(500), all_done)
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.tasks.len(),
                "connections did not close within {grace:?}; dropping them"
            );
            self.tasks.abort_all();
        }
        self.snapshot()
    }
}

/// What every slot task shares.
struct Shared {
    config: ConnectionConfig,
    interval: Duration,
    counters: Arc<Counters>,
    connect_gate: Semaphore,
    stop: CancellationToken,
}

/// How a connection's run ended.
enum Ended {
    /// Shutdown: closed (or tried to) with 1001.
    Stopped,
    /// The connection failed or the peer closed it: reconnect.
    Failed,
}

/// One slot: connect, exchange messages, reconnect after a failure, until
/// shutdown.
async fn run_slot(slot: usize, url: String, offset: Duration, shared: Arc<Shared>) {
    let counters = &shared.counters;
    // Connect failures in a row, and whether the next attempt is a retry.
    let mut failures = 0u64;
    let mut retry = false;
    loop {
        if retry {
            tokio::select! {
                () = shared.stop.cancelled() => return,
                () = tokio::time::sleep(RECONNECT_DELAY) => {}
            }
            counters.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        let connected = tokio::select! {
            () = shared.stop.cancelled() => return,
            result = async {
                // The gate is never closed, so acquire cannot fail.
                let _permit = shared.connect_gate.acquire().await;
                Connection::connect(&url, &shared.config).await
            } => result,
        };
        let conn = match connected {
            Ok(conn) => conn,
            Err(e) => {
                // The first failure of a streak is worth a warning; the
                // retries after it show in the reconnect count.
                if failures == 0 {
                    tracing::warn!(slot, error = %e, "connect failed; retrying every {RECONNECT_DELAY:?}");
                } else {
                    tracing::debug!(slot, error = %e, "connect failed");
                }
                failures += 1;
                retry = true;
                continue;
            }
        };
        failures = 0;
        counters.connected.fetch_add(1, Ordering::Relaxed);
        let ended = exchange(slot, conn, offset, &shared).await;
        counters.connected.fetch_sub(1, Ordering::Relaxed);
        counters.buffered[slot].store(0, Ordering::Relaxed);
        match ended {
            Ended::Stopped => return,
            Ended::Failed => retry = true,
        }
    }
}

/// Sends a message every interval and counts what arrives, in one task:
/// `recv` is cancel-safe, and `send` runs after the select dropped it.
async fn exchange(slot: usize, mut conn: Connection, offset: Duration, shared: &Shared) -> Ended {
    let counters = &shared.counters;
    let mut tick = tokio::time::interval_at(Instant::now() + offset, shared.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut seq = 0u64;
    loop {
        tokio::select! {
            () = shared.stop.cancelled() => {
                match tokio::time::timeout(CLOSE_GRACE, conn.close(CloseCode::GOING_AWAY, "shutting down")).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(slot, error = %e, "close failed"),
                    Err(_) => tracing::debug!(slot, "close timed out"),
                }
                return Ended::Stopped;
            }
            _ = tick.tick() => {
                seq += 1;
                let message = Message::text(format!("wsfleet demo slot {slot} #{seq}"));
                if let Err(e) = conn.send(message).await {
                    tracing::warn!(slot, peer = conn.peer(), error = %e, "send failed; reconnecting");
                    return Ended::Failed;
                }
                counters.sent.fetch_add(1, Ordering::Relaxed);
            }
            received = conn.recv() => match received {
                Some(Ok(_)) => {
                    counters.received.fetch_add(1, Ordering::Relaxed);
                }
                Some(Err(e)) => {
                    tracing::warn!(slot, peer = conn.peer(), error = %e, "connection failed; reconnecting");
                    return Ended::Failed;
                }
                None => {
                    let close = conn.close_frame().map(ToString::to_string);
                    tracing::warn!(slot, peer = conn.peer(), close = close.as_deref().unwrap_or("no status"), "peer closed the connection; reconnecting");
                    return Ended::Failed;
                }
            },
        }
        counters.buffered[slot].store(conn.stats().buffered_bytes, Ordering::Relaxed);
    }
}

/// The status display: a line refreshed in place on a terminal, a log line
/// otherwise.
struct Status {
    tty: bool,
    every: Duration,
    last: Option<(Instant, u64)>,
}

impl Status {
    fn new(tty: bool) -> Self {
        Self {
            tty,
            every: if tty {
                STATUS_TTY_EVERY
            } else {
                STATUS_LOG_EVERY
            },
            last: None,
        }
    }

    fn show(&mut self, now: &Snapshot) {
        let line = self.line(now);
        if self.tty {
            let mut stderr = std::io::stderr().lock();
            // Nothing sensible to do if stderr is gone.
            let _ = write!(stderr, "\r\x1b[2K{line}").and_then(|()| stderr.flush());
        } else {
            tracing::info!("{line}");
        }
    }

    /// Ends the in-place line, so later output starts on a fresh one.
    fn finish(&mut self, now: &Snapshot) {
        if self.tty {
            self.show(now);
            let _ = writeln!(std::io::stderr());
        }
    }

    fn line(&mut self, now: &Snapshot) -> String {
        let at = Instant::now();
        let rate = match self.last {
            Some((then, received)) => {
                let secs = at.duration_since(then).as_secs_f64();
                #[allow(clippy::cast_precision_loss)]
                let delta = now.received.saturating_sub(received) as f64;
                if secs > 0.0 { delta / secs } else { 0.0 }
            }
            None => 0.0,
        };
        self.last = Some((at, now.received));
        let rss = rss_bytes().map_or_else(|| "?".to_owned(), format_size);
        format!(
            "connected {}/{} | sent {} | received {} | {rate:.0} msgs/s | reconnects {} | buffered {} | rss {rss}",
            now.connected,
            now.target,
            now.sent,
            now.received,
            now.reconnects,
            format_size(now.buffered_bytes),
        )
    }
}

/// Resident set size of this process: `/proc/self/statm`'s second field
/// (pages) × 4096. `None` where there is no such file.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    parse_statm_rss(&statm)
}

fn parse_statm_rss(statm: &str) -> Option<u64> {
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    pages.checked_mul(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statm() {
        assert_eq!(
            parse_statm_rss("1000 250 100 1 0 300 0\n"),
            Some(250 * 4096)
        );
        assert_eq!(parse_statm_rss("1000"), None);
        assert_eq!(parse_statm_rss(""), None);
        assert_eq!(parse_statm_rss("1 x"), None);
    }

    #[test]
    fn rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(rss_bytes().is_some_and(|b| b > 0));
        }
    }

    #[test]
    fn status_line_has_every_field() {
        let mut status = Status::new(false);
        let line = status.line(&Snapshot {
            target: 20,
            connected: 19,
            sent: 100,
            received: 99,
            reconnects: 3,
            buffered_bytes: 2048,
        });
        for part in [
            "connected 19/20",
            "sent 100",
            "received 99",
            "msgs/s",
            "reconnects 3",
            "buffered 2.0 KiB",
            "rss ",
        ] {
            assert!(line.contains(part), "{part:?} missing in {line:?}");
        }
    }

    #[tokio::test]
    async fn demo_fleet_echoes_and_shuts_down() {
        let server = EchoServer::bind("127.0.0.1:0", ConnectionConfig::default())
            .await
            .unwrap();
        let fleet = DemoFleet::spawn(
            vec![server.url()],
            5,
            Duration::from_millis(50),
            ConnectionConfig::default(),
        );
        let t0 = Instant::now();
        while fleet.snapshot().received < 20 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{:?}",
                fleet.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(fleet.snapshot().connected, 5);
        let done = fleet.shutdown(CLOSE_GRACE).await;
        assert_eq!(done.connected, 0);
        assert_eq!(done.reconnects, 0);
        assert!(done.received + 5 >= done.sent, "{done:?}");
    }

    #[tokio::test]
    async fn failed_slots_reconnect() {
        // Bind and drop, so nothing listens on the port.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let fleet = DemoFleet::spawn(
            vec![format!("ws://127.0.0.1:{port}/")],
            2,
            Duration::from_secs(1),
            ConnectionConfig::default(),
        );
        let t0 = Instant::now();
        while fleet.snapshot().reconnects < 2 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{:?}",
                fleet.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let done = fleet.shutdown(CLOSE_GRACE).await;
        assert_eq!(done.connected, 0);
        assert_eq!(done.sent, 0);
    }
}
