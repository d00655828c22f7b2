//! The feed server peer (`py/feed_server.py`): numbered messages on named
//! channels, with faults it injects on purpose and reports on stdout, for
//! stream-integrity tests (issue 17).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::watch;

use crate::child::ChildServer;

/// How many reports of each kind (skipped numbers, silences, kills) a
/// [`FeedServer`] keeps; more are counted in [`FeedReports::dropped`].
///
/// The feed server is a test peer sized for runs of minutes: 1,000
/// connections × 10 channels at 10 messages a second with 1 % skipped make
/// about one skip report a second. The cap only bounds memory if a run goes
/// far beyond that.
pub const REPORT_CAP: usize = 1 << 20;

/// How to start a [`FeedServer`]. Every fault is off by default.
#[derive(Debug, Clone)]
pub struct FeedOptions {
    /// Messages a second per channel (`--rate`). Default: 10.
    pub rate: f64,
    /// Length of each message's `data` string, in bytes (`--size`). Default: 16.
    pub size: usize,
    /// At most this many channels per connection (`--max-channels`); a
    /// subscribe beyond it gets a `too_many_channels` error. Default: no cap.
    pub max_channels: Option<usize>,
    /// Each sequence number of a channel is skipped with this probability
    /// (`--skip-ratio`, in `[0, 1)`). Default: 0.
    pub skip_ratio: f64,
    /// Every this often one random live subscription goes silent
    /// (`--silence-every`). Default: never.
    pub silence_every: Option<Duration>,
    /// This share of the live connections is dropped each minute, spread over
    /// the minute (`--kill-ratio-per-minute`; may exceed 1). Default: 0.
    pub kill_ratio_per_minute: f64,
    /// Seed of the server's random choices (`--seed`). Default: none (random).
    pub seed: Option<u64>,
    /// Port on 127.0.0.1; 0 (the default) lets the OS pick one.
    pub port: u16,
    /// How long to wait for the server to report its port. Default: 20 s.
    pub startup_timeout: Duration,
}

impl Default for FeedOptions {
    fn default() -> Self {
        FeedOptions {
            rate: 10.0,
            size: 16,
            max_channels: None,
            skip_ratio: 0.0,
            silence_every: None,
            kill_ratio_per_minute: 0.0,
            seed: None,
            port: 0,
            startup_timeout: Duration::from_secs(20),
        }
    }
}

impl FeedOptions {
    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--port".to_owned(),
            self.port.to_string(),
            "--rate".to_owned(),
            self.rate.to_string(),
            "--size".to_owned(),
            self.size.to_string(),
            "--skip-ratio".to_owned(),
            self.skip_ratio.to_string(),
            "--kill-ratio-per-minute".to_owned(),
            self.kill_ratio_per_minute.to_string(),
        ];
        if let Some(max) = self.max_channels {
            args.extend(["--max-channels".to_owned(), max.to_string()]);
        }
        if let Some(every) = self.silence_every {
            args.extend([
                "--silence-every".to_owned(),
                every.as_secs_f64().to_string(),
            ]);
        }
        if let Some(seed) = self.seed {
            args.extend(["--seed".to_owned(), seed.to_string()]);
        }
        args
    }
}

/// A subscription the server silenced (`{"silence":...}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Silence {
    /// The server's id of the connection (from 1, in accept order).
    pub conn: u64,
    /// The channel no longer sent to that connection.
    pub channel: String,
    /// When the report was read.
    pub at: Instant,
    /// How and when it ended, once it has (`{"restore":...}`).
    pub restored: Option<Restored>,
}

/// How a silenced subscription ended (`{"restore":...}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// What ended it.
    pub by: RestoredBy,
    /// How long it was silent, as the server measured it.
    pub after: Duration,
}

/// What ended a silenced subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoredBy {
    /// The connection subscribed the channel again: delivery resumed.
    Subscribe,
    /// The connection unsubscribed the channel.
    Unsubscribe,
    /// The connection closed (or was killed).
    Closed,
}

/// A connection the server dropped on purpose (`{"kill":...}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kill {
    /// The server's id of the connection.
    pub conn: u64,
    /// When the report was read.
    pub at: Instant,
}

/// Everything the server reported so far.
#[derive(Debug, Clone, Default)]
pub struct FeedReports {
    /// Skipped sequence numbers by channel: each was sent to no one.
    pub skipped: BTreeMap<String, BTreeSet<u64>>,
    /// Silenced subscriptions, in report order.
    pub silences: Vec<Silence>,
    /// Dropped connections, in report order.
    pub kills: Vec<Kill>,
    /// Reports not kept because their kind reached [`REPORT_CAP`].
    pub dropped: u64,
    /// Report lines that could not be understood (should stay 0).
    pub unparsed: u64,
    skip_count: usize,
}

/// One channel in [`FeedStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChannelStats {
    /// The channel's last sequence number, sent or skipped.
    pub seq: u64,
    /// The last sequence number sent (the highest broadcast).
    pub sent: u64,
    /// How many numbers were skipped.
    pub skipped: u64,
    /// Its subscriptions now, silenced ones included.
    pub subscribers: u64,
}

/// The server's counters at one moment ([`FeedServer::stats`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FeedStats {
    /// Connections open now.
    pub connections: u64,
    /// Connections accepted since the start.
    pub accepted: u64,
    /// Connections dropped on purpose since the start.
    pub kills: u64,
    /// Subscriptions silenced since the start.
    pub silences: u64,
    /// Every channel that was ever subscribed.
    pub channels: BTreeMap<String, ChannelStats>,
}

#[derive(Debug, Default)]
struct Shared {
    reports: Mutex<FeedReports>,
    stats: Mutex<HashMap<u64, FeedStats>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The feed server (`py/feed_server.py`) on 127.0.0.1, killed when dropped.
///
/// A Python `websockets` server that serves numbered JSON messages on named
/// channels, like a market feed:
///
/// - `{"op":"subscribe","channel":NAME}` is answered with
///   `{"event":"subscribed","channel":NAME}`, then every message of the
///   channel: `{"channel":NAME,"seq":N,"data":"..."}`. A channel has one
///   counter shared by all connections, ticking [`FeedOptions::rate`] times a
///   second while it has subscriptions; it exists from its first subscribe.
/// - `{"op":"unsubscribe","channel":NAME}`: `{"event":"unsubscribed","channel":NAME}`,
///   and delivery stops.
/// - `{"op":"ping","id":X}`: `{"op":"pong","id":X}` (an application heartbeat).
/// - `{"op":"stats"}`: `{"event":"stats","conn":ID,...}`, the [`FeedStats`]
///   fields plus the connection's server id.
/// - A subscribe beyond [`FeedOptions::max_channels`]:
///   `{"event":"error","channel":NAME,"code":"too_many_channels"}`.
///
/// The faults of [`FeedOptions`] (skipped numbers, silenced subscriptions,
/// killed connections) are reported on the child's stdout, read here in a
/// background task: see [`FeedServer::reports`] and [`FeedServer::wait_for`].
/// The module documentation of `py/feed_server.py` has the whole protocol.
///
/// Like [`PyServer`](crate::PyServer) it runs in the test venv and exits by
/// itself when the test process dies.
#[derive(Debug)]
pub struct FeedServer {
    server: ChildServer,
    shared: Arc<Shared>,
    // Bumped on every report line; closed when the child's stdout ends.
    changed: watch::Receiver<u64>,
    stdin: tokio::sync::Mutex<ChildStdin>,
    next_stats: AtomicU64,
}

impl FeedServer {
    /// Starts a feed server with `options`.
    ///
    /// # Errors
    ///
    /// When the venv is missing (the message says to run `scripts/test` or
    /// `scripts/setup-venv`), when Python cannot be spawned, or when the server
    /// exits or does not report its port in time (the message has its stderr).
    pub async fn start(options: FeedOptions) -> io::Result<FeedServer> {
        let (server, lines, stdin) = crate::py::start_reporting(
            "feed_server.py",
            "feed server",
            options.args(),
            options.startup_timeout,
        )
        .await?;
        let shared = Arc::new(Shared::default());
        let (tx, changed) = watch::channel(0);
        tokio::spawn(read_reports(lines, Arc::clone(&shared), tx));
        Ok(FeedServer {
            server,
            shared,
            changed,
            stdin: tokio::sync::Mutex::new(stdin),
            next_stats: AtomicU64::new(1),
        })
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.port()).into()
    }

    /// `ws://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port())
    }

    /// The child's process id (for CPU and memory figures), `None` once it exited.
    pub fn pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// What the server wrote to stderr so far (its last 64 KiB).
    pub fn stderr(&self) -> String {
        self.server.stderr()
    }

    /// A copy of everything reported so far.
    pub fn reports(&self) -> FeedReports {
        lock(&self.shared.reports).clone()
    }

    /// The skipped sequence numbers reported so far, by channel.
    pub fn skipped(&self) -> BTreeMap<String, BTreeSet<u64>> {
        lock(&self.shared.reports).skipped.clone()
    }

    /// The silenced subscriptions reported so far, in report order.
    pub fn silences(&self) -> Vec<Silence> {
        lock(&self.shared.reports).silences.clone()
    }

    /// The killed connections reported so far, in report order.
    pub fn kills(&self) -> Vec<Kill> {
        lock(&self.shared.reports).kills.clone()
    }

    /// Waits until `pick` returns `Some` for the reports so far (it is called
    /// now and after every new report line) and returns that value.
    ///
    /// Not bounded in time: wrap it in [`bounded`](crate::bounded) or a timeout.
    ///
    /// # Errors
    ///
    /// If the server's stdout ends (it exited) before `pick` returned `Some`.
    pub async fn wait_for<T>(
        &self,
        mut pick: impl FnMut(&FeedReports) -> Option<T>,
    ) -> io::Result<T> {
        let mut changed = self.changed.clone();
        loop {
            changed.borrow_and_update();
            if let Some(found) = pick(&lock(&self.shared.reports)) {
                return Ok(found);
            }
            if changed.changed().await.is_err() {
                // One last look: the final lines may have come with the end.
                return pick(&lock(&self.shared.reports)).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("feed server exited; its stderr:\n{}", self.stderr()),
                    )
                });
            }
        }
    }

    /// The server's counters now, asked on its stdin (`stats ID`).
    ///
    /// The answer comes after the reports of everything that happened before
    /// it, so once this returns, [`FeedServer::reports`] has every skip up to
    /// each channel's [`ChannelStats::seq`]: a client that received up to
    /// [`ChannelStats::sent`] can check that every number it missed was reported.
    ///
    /// # Errors
    ///
    /// If writing to the server fails or it exits before it answers.
    pub async fn stats(&self) -> io::Result<FeedStats> {
        let id = self.next_stats.fetch_add(1, Ordering::Relaxed);
        {
            let mut stdin = self.stdin.lock().await;
            stdin.write_all(format!("stats {id}\n").as_bytes()).await?;
            stdin.flush().await?;
        }
        self.wait_for(|_| lock(&self.shared.stats).remove(&id))
            .await
    }

    /// Kills the server now and waits for it to exit.
    ///
    /// # Errors
    ///
    /// If the process cannot be killed or waited for.
    pub async fn kill(&mut self) -> io::Result<()> {
        self.server.kill().await
    }
}

/// Reads the report lines until stdout ends, then drops `changed` (which ends
/// every [`FeedServer::wait_for`]).
async fn read_reports(
    mut lines: Lines<BufReader<ChildStdout>>,
    shared: Arc<Shared>,
    changed: watch::Sender<u64>,
) {
    while let Ok(Some(line)) = lines.next_line().await {
        let at = Instant::now();
        let parsed = serde_json::from_str::<Value>(&line).ok();
        if !parsed.as_ref().is_some_and(|v| record(&shared, v, at)) {
            lock(&shared.reports).unparsed += 1;
        }
        changed.send_modify(|n| *n += 1);
    }
}

/// Records one report; false if it is not one this wrapper knows.
fn record(shared: &Shared, line: &Value, at: Instant) -> bool {
    let u64_at = |v: &Value, key: &str| v.get(key).and_then(Value::as_u64);
    let str_at = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    if let Some(skip) = line.get("skip") {
        let (Some(channel), Some(seq)) = (str_at(skip, "channel"), u64_at(skip, "seq")) else {
            return false;
        };
        let mut reports = lock(&shared.reports);
        if reports.skip_count >= REPORT_CAP {
            reports.dropped += 1;
        } else if reports.skipped.entry(channel).or_default().insert(seq) {
            reports.skip_count += 1;
        }
    } else if let Some(silence) = line.get("silence") {
        let (Some(conn), Some(channel)) = (u64_at(silence, "conn"), str_at(silence, "channel"))
        else {
            return false;
        };
        let mut reports = lock(&shared.reports);
        if reports.silences.len() >= REPORT_CAP {
            reports.dropped += 1;
        } else {
            reports.silences.push(Silence {
                conn,
                channel,
                at,
                restored: None,
            });
        }
    } else if let Some(restore) = line.get("restore") {
        let (Some(conn), Some(channel), Some(after_ms)) = (
            u64_at(restore, "conn"),
            str_at(restore, "channel"),
            u64_at(restore, "after_ms"),
        ) else {
            return false;
        };
        let by = match restore.get("by").and_then(Value::as_str) {
            Some("subscribe") => RestoredBy::Subscribe,
            Some("unsubscribe") => RestoredBy::Unsubscribe,
            Some("closed") => RestoredBy::Closed,
            _ => return false,
        };
        let mut reports = lock(&shared.reports);
        // The silence may have been dropped at the cap: then there is nothing to mend.
        if let Some(silence) = reports
            .silences
            .iter_mut()
            .rev()
            .find(|s| s.conn == conn && s.channel == channel && s.restored.is_none())
        {
            silence.restored = Some(Restored {
                by,
                after: Duration::from_millis(after_ms),
            });
        }
    } else if let Some(kill) = line.get("kill") {
        let Some(conn) = u64_at(kill, "conn") else {
            return false;
        };
        let mut reports = lock(&shared.reports);
        if reports.kills.len() >= REPORT_CAP {
            reports.dropped += 1;
        } else {
            reports.kills.push(Kill { conn, at });
        }
    } else if let Some(stats) = line.get("stats") {
        let Some(id) = u64_at(stats, "id") else {
            return false;
        };
        lock(&shared.stats).insert(id, parse_stats(stats));
    } else {
        return false;
    }
    true
}

fn parse_stats(stats: &Value) -> FeedStats {
    let n = |v: &Value, key: &str| v.get(key).and_then(Value::as_u64).unwrap_or(0);
    let channels = stats
        .get("channels")
        .and_then(Value::as_object)
        .map(|channels| {
            channels
                .iter()
                .map(|(name, c)| {
                    let c = ChannelStats {
                        seq: n(c, "seq"),
                        sent: n(c, "sent"),
                        skipped: n(c, "skipped"),
                        subscribers: n(c, "subscribers"),
                    };
                    (name.clone(), c)
                })
                .collect()
        })
        .unwrap_or_default();
    FeedStats {
        connections: n(stats, "connections"),
        accepted: n(stats, "accepted"),
        kills: n(stats, "kills"),
        silences: n(stats, "silences"),
        channels,
    }
}
