//! The rate-limiting server peer (`py/rate_server.py`): closes with 1008 any
//! connection that sends too fast, as exchanges do, and reports it, for the
//! outbound rate tests (issue 16).

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::watch;

use crate::child::ChildServer;

/// How many [`RateClose`] reports a [`RateServer`] keeps (more are counted
/// in [`RateStats::rate_closes`] only).
const CLOSE_CAP: usize = 1 << 16;

/// How to start a [`RateServer`].
#[derive(Debug, Clone)]
pub struct RateOptions {
    /// Messages a connection may send within one window (`--limit`). Default: 5.
    pub limit: u32,
    /// The sliding window (`--window`). Default: 1 s.
    pub window: Duration,
    /// How much shorter the window of the close rule is (`--slack`): a
    /// loaded test machine delays some arrivals (the server's own
    /// scheduling included) and bunches them up, so a client spacing its
    /// messages at exactly the limit can seem over it. Default: 0.
    pub slack: Duration,
    /// How long to wait for the server to report its port. Default: 20 s.
    pub startup_timeout: Duration,
}

impl Default for RateOptions {
    fn default() -> Self {
        Self {
            limit: 5,
            window: Duration::from_secs(1),
            slack: Duration::ZERO,
            startup_timeout: Duration::from_secs(20),
        }
    }
}

/// A connection the server closed for its rate (`{"rate_close":...}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateClose {
    /// The server's id of the connection (from 1, in accept order).
    pub conn: u64,
    /// Messages within the window when it closed it (above the limit).
    pub in_window: u64,
}

/// One connection in [`RateStats`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RateConn {
    /// Messages received from it.
    pub received: u64,
    /// The shortest time it took for `limit + 1` consecutive messages
    /// (`None` with fewer): below the window, it was closed.
    pub tightest: Option<Duration>,
    /// Whether the server closed it for its rate.
    pub closed_for_rate: bool,
}

/// The server's counters at one moment ([`RateServer::stats`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RateStats {
    /// Connections accepted since the start.
    pub accepted: u64,
    /// Connections open now.
    pub open: u64,
    /// Messages received, all connections.
    pub received: u64,
    /// Connections closed for their rate.
    pub rate_closes: u64,
    /// The most messages of all connections together within one window.
    pub peak_window: u64,
    /// The first and the last message's arrival, since the server started.
    pub first: Option<Duration>,
    /// See [`first`](Self::first).
    pub last: Option<Duration>,
    /// By the server's connection id.
    pub conns: BTreeMap<u64, RateConn>,
}

impl RateStats {
    /// From the first message's arrival to the last's (zero with fewer
    /// than two).
    pub fn span(&self) -> Duration {
        match (self.first, self.last) {
            (Some(first), Some(last)) => last.saturating_sub(first),
            _ => Duration::ZERO,
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    closes: Mutex<Vec<RateClose>>,
    stats: Mutex<BTreeMap<u64, RateStats>>,
    unparsed: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The rate-limiting server (`py/rate_server.py`) on 127.0.0.1, killed when
/// dropped.
///
/// A Python `websockets` server that counts every message it receives and
/// closes with 1008 any connection sending more than
/// [`RateOptions::limit`] messages within any [`RateOptions::window`]
/// (sliding, measured on arrival). It never answers a message. Closes are
/// reported on the child's stdout ([`RateServer::closes`]); counters come
/// from [`RateServer::stats`].
///
/// Like [`PyServer`](crate::PyServer) it runs in the test venv and exits by
/// itself when the test process dies.
#[derive(Debug)]
pub struct RateServer {
    server: ChildServer,
    shared: Arc<Shared>,
    // Bumped on every report line; closed when the child's stdout ends.
    changed: watch::Receiver<u64>,
    stdin: tokio::sync::Mutex<ChildStdin>,
    next_stats: AtomicU64,
}

impl RateServer {
    /// Starts a rate-limiting server with `options`.
    ///
    /// # Errors
    ///
    /// When the venv is missing (the message says which script to run), when
    /// Python cannot be spawned, or when the server exits or does not report
    /// its port in time (the message has its stderr).
    pub async fn start(options: RateOptions) -> io::Result<RateServer> {
        let args = vec![
            "--limit".to_owned(),
            options.limit.to_string(),
            "--window".to_owned(),
            options.window.as_secs_f64().to_string(),
            "--slack".to_owned(),
            options.slack.as_secs_f64().to_string(),
        ];
        let (server, lines, stdin) = crate::py::start_reporting(
            "rate_server.py",
            "rate server",
            args,
            options.startup_timeout,
        )
        .await?;
        let shared = Arc::new(Shared::default());
        let (tx, changed) = watch::channel(0);
        tokio::spawn(read_reports(lines, Arc::clone(&shared), tx));
        Ok(RateServer {
            server,
            shared,
            changed,
            stdin: tokio::sync::Mutex::new(stdin),
            next_stats: AtomicU64::new(1),
        })
    }

    /// `ws://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.server.port())
    }

    /// What the server wrote to stderr so far (its last 64 KiB).
    pub fn stderr(&self) -> String {
        self.server.stderr()
    }

    /// The connections closed for their rate so far, in report order.
    pub fn closes(&self) -> Vec<RateClose> {
        lock(&self.shared.closes).clone()
    }

    /// Report lines that could not be understood (should stay 0).
    pub fn unparsed(&self) -> u64 {
        self.shared.unparsed.load(Ordering::Relaxed)
    }

    /// Waits until the server has closed at least one connection for its
    /// rate and returns the first. Not bounded in time: wrap it in
    /// [`bounded`](crate::bounded) or a timeout.
    ///
    /// # Errors
    ///
    /// If the server exits first.
    pub async fn first_close(&self) -> io::Result<RateClose> {
        self.wait_for(|s| lock(&s.closes).first().copied()).await
    }

    /// The server's counters now, asked on its stdin (`stats ID`); they
    /// count every message that reached it before the question.
    ///
    /// # Errors
    ///
    /// If writing to the server fails or it exits before it answers.
    pub async fn stats(&self) -> io::Result<RateStats> {
        let id = self.next_stats.fetch_add(1, Ordering::Relaxed);
        {
            let mut stdin = self.stdin.lock().await;
            stdin.write_all(format!("stats {id}\n").as_bytes()).await?;
            stdin.flush().await?;
        }
        self.wait_for(|s| lock(&s.stats).remove(&id)).await
    }

    async fn wait_for<T>(&self, mut pick: impl FnMut(&Shared) -> Option<T>) -> io::Result<T> {
        let mut changed = self.changed.clone();
        loop {
            changed.borrow_and_update();
            if let Some(found) = pick(&self.shared) {
                return Ok(found);
            }
            if changed.changed().await.is_err() {
                return pick(&self.shared).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("rate server exited; its stderr:\n{}", self.stderr()),
                    )
                });
            }
        }
    }
}

/// Reads the report lines until stdout ends, then drops `changed`.
async fn read_reports(
    mut lines: Lines<BufReader<ChildStdout>>,
    shared: Arc<Shared>,
    changed: watch::Sender<u64>,
) {
    while let Ok(Some(line)) = lines.next_line().await {
        let parsed = serde_json::from_str::<Value>(&line).ok();
        if !parsed.as_ref().is_some_and(|v| record(&shared, v)) {
            shared.unparsed.fetch_add(1, Ordering::Relaxed);
        }
        changed.send_modify(|n| *n += 1);
    }
}

fn record(shared: &Shared, line: &Value) -> bool {
    let n = |v: &Value, key: &str| v.get(key).and_then(Value::as_u64);
    let ms = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_f64)
            .filter(|ms| *ms >= 0.0 && ms.is_finite())
            .map(|ms| Duration::from_secs_f64(ms / 1000.0))
    };
    if let Some(close) = line.get("rate_close") {
        let (Some(conn), Some(in_window)) = (n(close, "conn"), n(close, "in_window")) else {
            return false;
        };
        let mut closes = lock(&shared.closes);
        if closes.len() < CLOSE_CAP {
            closes.push(RateClose { conn, in_window });
        }
    } else if let Some(stats) = line.get("stats") {
        let Some(id) = n(stats, "id") else {
            return false;
        };
        let conns = stats
            .get("conns")
            .and_then(Value::as_object)
            .map(|conns| {
                conns
                    .iter()
                    .filter_map(|(id, c)| {
                        let conn = RateConn {
                            received: n(c, "received").unwrap_or(0),
                            tightest: ms(c, "tightest_ms"),
                            closed_for_rate: c
                                .get("closed_for_rate")
                                .and_then(Value::as_bool)
                                .unwrap_or(false),
                        };
                        Some((id.parse().ok()?, conn))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let parsed = RateStats {
            accepted: n(stats, "accepted").unwrap_or(0),
            open: n(stats, "open").unwrap_or(0),
            received: n(stats, "received").unwrap_or(0),
            rate_closes: n(stats, "rate_closes").unwrap_or(0),
            peak_window: n(stats, "peak_window").unwrap_or(0),
            first: ms(stats, "first_ms"),
            last: ms(stats, "last_ms"),
            conns,
        };
        lock(&shared.stats).insert(id, parsed);
    } else {
        return false;
    }
    true
}
