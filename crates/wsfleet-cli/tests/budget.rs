//! The memory budget end to end, from outside, as a user sees it (issue
//! 13): the real `wsfleet` binary as hostile servers (`serve --chaos`) and
//! as `wsfleet run`, on 127.0.0.1 only. The `run` process's peak and current
//! RSS come from `/proc/PID/status` (`VmHWM`, `VmRSS`), its state from its
//! admin endpoint (`/connections`, `/metrics`).
//!
//! The allowance every scenario checks peak RSS against is
//! `budget + idle + connections × PER_CONNECTION + SLACK`, where `idle` is
//! measured first: the same binary with the same number of connections to
//! an echo server, nothing flowing (the binary, its runtime, the fixed cost
//! of each connection). `PER_CONNECTION` and `SLACK` are below, with what
//! they cover.
//!
//! Every measured number is printed on stderr, one `budget:` line each, so
//! it can be quoted: `cargo test -p wsfleet-cli --test budget --
//! --nocapture` (`docs/memory-measurements.md`). The tests of this file run
//! one at a time (a lock here; a nextest test group in
//! `.config/nextest.toml`): each loads both cores for up to 30 s.

mod common;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead as _, BufReader};
use std::process::{ChildStdout, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Running, free_port, http_get, http_until};
use wsfleet_testkit::measure::proc_status_bytes_of;

const MIB: u64 = 1 << 20;
/// What a busy connection may hold outside the budget on top of its idle
/// cost: the per-connection baseline the soak states too (task, socket
/// records, allocator rounding of its buffers).
const PER_CONNECTION: u64 = 64 << 10;
/// Process-wide slack on top of the budget and the idle process: what the
/// budget does not charge and busy threads touch (the output writer's
/// 48 KiB piece, tokio worker stacks grown under load, heap fragments
/// between frees). Measured at most about 5 MiB over budget + idle here.
const SLACK: u64 = 16 * MIB;
/// How far above the idle process RSS may stay a few seconds after an
/// attack that held the whole budget has been dropped: the binary's malloc
/// settings unmap large buffers on free and its trimmer gives the heap back
/// (`crates/wsfleet-cli/src/memory.rs`). Measured within 1 MiB of idle.
const RSS_AFTER_ATTACK_ABOVE_IDLE: u64 = 16 * MIB;

/// One scenario at a time: they measure RSS and load both cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// Peak RSS (`VmHWM`) of process `pid`.
fn peak_rss(pid: u32) -> u64 {
    proc_status_bytes_of(pid, "VmHWM:").expect("VmHWM of the run process")
}

/// Current RSS (`VmRSS`) of process `pid`.
fn rss(pid: u32) -> u64 {
    proc_status_bytes_of(pid, "VmRSS:").expect("VmRSS of the run process")
}

/// Prints one measured figure of `scenario`.
fn figure(scenario: &str, name: &str, value: impl std::fmt::Display) {
    eprintln!("budget: {scenario}: {name} = {value}");
}

/// The last lines of a child's stderr, for failure messages.
#[derive(Clone, Default)]
struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    const LINES: usize = 40;

    fn of(stderr: impl std::io::Read + Send + 'static) -> Self {
        let tail = Self::default();
        let lines = tail.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut lines = lines.lock().unwrap_or_else(|p| p.into_inner());
                if lines.len() == Self::LINES {
                    lines.pop_front();
                }
                lines.push_back(line);
            }
        });
        tail
    }

    fn text(&self) -> String {
        let lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }
}

/// `wsfleet run` with an admin endpoint; stderr kept (its last lines) for
/// failure messages.
struct Run {
    process: Running,
    admin: String,
    log: Tail,
}

impl Run {
    fn start(args: &[&str], stdout: Stdio) -> Self {
        let admin = format!("127.0.0.1:{}", free_port());
        let mut all = vec!["run", "--admin", &admin];
        all.extend_from_slice(args);
        let mut process = Running::spawn(&all, stdout, Stdio::piped());
        let log = Tail::of(process.0.stderr.take().expect("piped stderr"));
        http_until(&admin, "/healthz", |status, _| status != 0);
        Self {
            process,
            admin,
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }

    fn metrics(&self) -> Metrics {
        let (status, body) = http_get(&self.admin, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200, "{body}");
        Metrics::parse(&body)
    }

    fn connections(&self) -> Vec<serde_json::Value> {
        let (status, body) = http_get(&self.admin, "/connections").expect("GET /connections");
        assert_eq!(status, 200, "{body}");
        let value: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        value.as_array().expect("an array").clone()
    }

    /// Waits until all `n` connections have been connected once.
    fn until_connected(&self, n: usize) {
        let t0 = Instant::now();
        loop {
            let connected = self
                .connections()
                .iter()
                .filter(|c| !c["connected_since"].is_null())
                .count();
            if connected == n {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "only {connected} of {n} connected\n{}",
                self.log.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn take_stdout(&mut self) -> ChildStdout {
        self.process.0.stdout.take().expect("piped stdout")
    }
}

/// `/metrics`, by series (name with labels).
struct Metrics(HashMap<String, f64>);

impl Metrics {
    fn parse(text: &str) -> Self {
        Self(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (series, value) = l.rsplit_once(' ')?;
                    Some((series.to_owned(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    fn get(&self, series: &str) -> f64 {
        *self
            .0
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in /metrics"))
    }

    fn count(&self, series: &str) -> u64 {
        self.get(series) as u64
    }

    /// Ended connections and failed attempts by reason (nonzero ones),
    /// shutdowns and rotations left out.
    fn drops(&self) -> BTreeMap<String, u64> {
        self.0
            .iter()
            .filter_map(|(series, value)| {
                let reason = series
                    .strip_prefix("wsfleet_disconnects_total{pool=\"default\",reason=\"")?
                    .strip_suffix("\"}")?;
                (*value > 0.0 && reason != "shutdown" && reason != "rotated")
                    .then(|| (reason.to_owned(), *value as u64))
            })
            .collect()
    }
}

/// RSS of `wsfleet run` with `connections` idle connections to an echo
/// server (the binary, its runtime and the fixed cost of the connections):
/// the base of every allowance.
fn idle_rss(scenario: &str, connections: usize) -> u64 {
    let (_echo, url) = Running::serve(&[]);
    let n = connections.to_string();
    let run = Run::start(
        &["--url", &url, "--connections", &n, "--output", "jsonl"],
        Stdio::null(),
    );
    let ready = format!("{n}/{n} ready");
    http_until(&run.admin, "/healthz", |status, body| {
        status == 200 && body.contains(&ready)
    });
    std::thread::sleep(Duration::from_secs(1));
    let idle = peak_rss(run.pid());
    figure(
        scenario,
        &format!("idle peak RSS with {connections} connections"),
        mib(idle),
    );
    idle
}

/// The most RSS a run with `budget` and `connections` may reach.
fn allowance(scenario: &str, idle: u64, budget: u64, connections: usize) -> u64 {
    let limit = budget + idle + connections as u64 * PER_CONNECTION + SLACK;
    figure(
        scenario,
        "RSS allowance",
        format!(
            "{} (budget {} + idle {} + {connections} x {} KiB + slack {})",
            mib(limit),
            mib(budget),
            mib(idle),
            PER_CONNECTION >> 10,
            mib(SLACK)
        ),
    );
    limit
}

/// What the reader of `--output jsonl` saw of `stream` messages: per
/// connection, the sequence numbers in order, from 0, or the first gap.
#[derive(Default)]
struct Sequences {
    /// Connection id -> next sequence number expected.
    next: BTreeMap<u64, u64>,
    lines: u64,
    bytes: u64,
    errors: Vec<String>,
}

/// `"conn":N` and the sequence number in the first 8 bytes of a binary
/// payload, from one `--output jsonl` line.
fn conn_and_seq(line: &[u8]) -> Result<(u64, u64), String> {
    let text = |what: &str| {
        format!(
            "{what} in {:?}",
            String::from_utf8_lossy(&line[..line.len().min(120)])
        )
    };
    let find = |key: &[u8]| {
        line.windows(key.len())
            .position(|w| w == key)
            .map(|at| at + key.len())
    };
    let at = find(b"\"conn\":").ok_or_else(|| text("no conn"))?;
    let digits: Vec<u8> = line[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    let conn = std::str::from_utf8(&digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| text("bad conn"))?;
    if find(b"\"kind\":\"binary\"").is_none() {
        return Err(text("not binary"));
    }
    let at = find(b"\"payload\":\"").ok_or_else(|| text("no payload"))?;
    // 12 base64 characters are 9 bytes: the 8-byte sequence number first.
    let head = line.get(at..at + 12).ok_or_else(|| text("short payload"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(head)
        .map_err(|e| text(&format!("base64 {e}")))?;
    let seq = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
    Ok((conn, seq))
}

/// Reads `--output jsonl` from `stdout` in a thread, checking sequences.
fn read_sequences(stdout: ChildStdout) -> Arc<Mutex<Sequences>> {
    let seen = Arc::new(Mutex::new(Sequences::default()));
    let state = seen.clone();
    std::thread::spawn(move || {
        let mut reader = BufReader::with_capacity(1 << 20, stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let mut guard = state.lock().unwrap_or_else(|p| p.into_inner());
            let s = &mut *guard;
            s.lines += 1;
            s.bytes += line.len() as u64;
            match conn_and_seq(&line) {
                Ok((conn, seq)) => {
                    let next = s.next.entry(conn).or_insert(0);
                    if seq != *next && s.errors.len() < 10 {
                        s.errors
                            .push(format!("conn {conn}: seq {seq}, expected {next}"));
                    }
                    *next = seq + 1;
                }
                Err(_) if line.starts_with(b"sent=") => {}
                Err(e) if s.errors.len() < 10 => s.errors.push(e),
                Err(_) => {}
            }
        }
    });
    seen
}

/// A stalled consumer: `wsfleet run --output jsonl` into a pipe nobody
/// reads for `stall`, against `stream` messages of `message_size`; then
/// the pipe is read for `read`. Peak RSS within the allowance, every
/// connection paused by the budget (when `budget_binds`) or held back by
/// the event queue, no connection dropped, and on reading every
/// connection's messages from sequence number 0 with none missing.
struct Stalled<'a> {
    scenario: &'a str,
    message_size: &'a str,
    budget: u64,
    connections: usize,
    extra: &'a [&'a str],
    stall: Duration,
    read: Duration,
    /// The budget, not the event queue's count, is what stops reading.
    budget_binds: bool,
}

impl Stalled<'_> {
    fn run(&self) {
        let scenario = self.scenario;
        let idle = idle_rss(scenario, self.connections);
        let limit = allowance(scenario, idle, self.budget, self.connections);
        let (_server, url) =
            Running::serve(&["--chaos", "stream", "--message-size", self.message_size]);
        let n = self.connections.to_string();
        let budget = format!("{}B", self.budget);
        let mut args = vec![
            "--url",
            &url,
            "--connections",
            &n,
            "--memory-budget",
            &budget,
            "--output",
            "jsonl",
        ];
        args.extend_from_slice(self.extra);
        let mut run = Run::start(&args, Stdio::piped());
        run.until_connected(self.connections);

        // Stalled: nothing reads the pipe.
        let t0 = Instant::now();
        let mut rss_max = 0;
        while t0.elapsed() < self.stall {
            std::thread::sleep(Duration::from_millis(250));
            rss_max = rss_max.max(rss(run.pid()));
        }
        let before = run.metrics();
        std::thread::sleep(Duration::from_secs(1));
        let stalled = run.metrics();
        let conns = run.connections();
        let hwm_stalled = peak_rss(run.pid());
        let log = run.log.text();
        figure(scenario, "peak RSS while stalled", mib(hwm_stalled));
        figure(
            scenario,
            "budget used / handed / peak while stalled",
            format!(
                "{} / {} / {}",
                mib(stalled.count("wsfleet_budget_used_bytes")),
                mib(stalled.count("wsfleet_budget_handed_bytes")),
                mib(stalled.count("wsfleet_budget_peak_bytes"))
            ),
        );
        let states: Vec<String> = conns
            .iter()
            .map(|c| {
                format!(
                    "slot {} {} msgs_in {} buffered {} paused_ms {}",
                    c["slot"], c["state"], c["msgs_in"], c["buffered_bytes"], c["paused_ms"]
                )
            })
            .collect();
        figure(scenario, "connections while stalled", states.join("; "));
        figure(
            scenario,
            "pauses / paused seconds",
            format!(
                "{} / {:.1}",
                stalled.count("wsfleet_budget_pauses_total"),
                stalled.get("wsfleet_budget_paused_seconds_total")
            ),
        );
        let received = stalled.count("wsfleet_messages_in_total{pool=\"default\"}");
        figure(scenario, "messages received while stalled", received);

        assert!(
            hwm_stalled <= limit,
            "{scenario}: peak RSS {} over the allowance {}\n{log}",
            mib(hwm_stalled),
            mib(limit)
        );
        assert_eq!(
            before.count("wsfleet_messages_in_total{pool=\"default\"}"),
            received,
            "{scenario}: still receiving with the consumer stalled: no backpressure\n{log}"
        );
        assert!(received > 0, "{scenario}: nothing received\n{log}");
        if self.budget_binds {
            assert!(
                conns.iter().all(|c| c["state"] == "paused"),
                "{scenario}: every connection pauses: {states:?}\n{log}"
            );
            assert_eq!(
                stalled.count("wsfleet_connections{pool=\"default\",state=\"paused\"}"),
                self.connections as u64
            );
            assert!(stalled.count("wsfleet_budget_pauses_total") >= self.connections as u64);
            assert!(
                stalled.get("wsfleet_budget_paused_seconds_total") > 0.0,
                "{scenario}: paused time counts pauses under way"
            );
        }
        assert_eq!(
            stalled.drops(),
            BTreeMap::new(),
            "{scenario}: connections dropped\n{log}"
        );
        assert_eq!(
            stalled.count("wsfleet_reconnects_total{pool=\"default\"}"),
            0
        );

        // The consumer resumes.
        let seen = read_sequences(run.take_stdout());
        std::thread::sleep(self.read);
        let flowing = run.metrics();
        let hwm = peak_rss(run.pid());
        let rss_end = rss(run.pid());
        let conns = run.connections();
        let log = run.log.text();
        // Locked before the kill: the line the kill cuts in half is not a
        // sequence error.
        let s = seen.lock().unwrap_or_else(|p| p.into_inner());
        drop(run);
        figure(
            scenario,
            "read after resuming",
            format!(
                "{} lines, {}, {} connections, next seq per connection {:?}",
                s.lines,
                mib(s.bytes),
                s.next.len(),
                s.next
            ),
        );
        figure(scenario, "peak RSS over the whole run", mib(hwm));
        figure(scenario, "RSS at the end, reading", mib(rss_end));
        figure(scenario, "sequence errors", format!("{:?}", s.errors));
        assert!(s.errors.is_empty(), "{scenario}: {:?}", s.errors);
        assert_eq!(
            s.next.len(),
            self.connections,
            "{scenario}: every connection's messages come out"
        );
        assert!(
            s.lines > received,
            "{scenario}: it keeps flowing past the {received} messages held while stalled ({} read)\n{log}",
            s.lines
        );
        assert!(
            hwm <= limit,
            "{scenario}: peak RSS {} over the allowance {}\n{log}",
            mib(hwm),
            mib(limit)
        );
        assert_eq!(flowing.drops(), BTreeMap::new(), "{scenario}\n{log}");
        assert!(
            conns.iter().all(|c| c["reconnects"] == 0),
            "{scenario}: {conns:?}"
        );
    }
}

#[test]
fn stalled_consumer_large_messages_pauses_within_the_budget_and_loses_nothing() {
    let _serial = serial();
    Stalled {
        scenario: "stalled consumer, 4 MiB messages",
        message_size: "4MiB",
        budget: 64 * MIB,
        connections: 4,
        extra: &[],
        stall: Duration::from_secs(8),
        read: Duration::from_secs(8),
        budget_binds: true,
    }
    .run();
}

/// Small messages and a budget smaller than the event queue holds of them
/// (1,024 messages of 4 KiB): the budget stops reading. Connections open
/// half a second apart, so the later ones connect while the first ones'
/// messages already hold the budget: they pause too, they are not dropped.
#[test]
fn stalled_consumer_small_messages_pauses_within_the_budget_and_loses_nothing() {
    let _serial = serial();
    Stalled {
        scenario: "stalled consumer, 4 KiB messages, small budget",
        message_size: "4KiB",
        budget: 2 * MIB,
        connections: 4,
        extra: &["--connect-rate", "2"],
        stall: Duration::from_secs(5),
        read: Duration::from_secs(4),
        budget_binds: true,
    }
    .run();
}

/// Small messages and a large budget: the event queue's bound (1,024
/// events) stops reading before the budget does; RSS stays near idle.
#[test]
fn stalled_consumer_small_messages_is_held_back_by_the_event_queue() {
    let _serial = serial();
    Stalled {
        scenario: "stalled consumer, 1 KiB messages",
        message_size: "1KiB",
        budget: 64 * MIB,
        connections: 4,
        extra: &[],
        stall: Duration::from_secs(4),
        read: Duration::from_secs(4),
        budget_binds: false,
    }
    .run();
}

/// 10 connections to peers that pin 12 MiB of a 16 MiB frame and trickle
/// a byte every 5 s, 10 to peers sending 1 MiB every 200 ms, one fleet,
/// 96 MiB budget: the healthy ones are never dropped and keep receiving;
/// the pinning ones are closed and reconnect; RSS within the allowance.
#[test]
fn pinning_connections_go_and_healthy_ones_stay() {
    let _serial = serial();
    let scenario = "pinning next to healthy";
    let (budget, connections) = (96 * MIB, 20);
    let duration = Duration::from_secs(25);
    let idle = idle_rss(scenario, connections);
    let limit = allowance(scenario, idle, budget, connections);
    let (_pin, pin_url) = Running::serve(&[
        "--chaos",
        "pin",
        "--pin-frame",
        "16MiB",
        "--pin-prefix",
        "12MiB",
        "--trickle",
        "5s",
    ]);
    let (_stream, stream_url) = Running::serve(&[
        "--chaos",
        "stream",
        "--message-size",
        "1MiB",
        "--interval",
        "200ms",
    ]);
    let run = Run::start(
        &[
            "--url",
            &pin_url,
            "--url",
            &stream_url,
            "--connections",
            "20",
            "--memory-budget",
            "96MiB",
            "--output",
            "none",
        ],
        Stdio::null(),
    );
    let t0 = Instant::now();
    let mut healthy_errors = Vec::new();
    while t0.elapsed() < duration {
        std::thread::sleep(Duration::from_secs(1));
        for c in run.connections() {
            if c["url"] == stream_url.as_str()
                && (!c["last_error"].is_null() || c["reconnects"] != 0)
            {
                healthy_errors.push(format!("{c}"));
            }
        }
    }
    let metrics = run.metrics();
    let conns = run.connections();
    let hwm = peak_rss(run.pid());
    let rss_end = rss(run.pid());
    let log = run.log.text();
    drop(run);
    let (healthy, pinning): (Vec<_>, Vec<_>) =
        conns.iter().partition(|c| c["url"] == stream_url.as_str());
    let per = |list: &[&serde_json::Value], field: &str| -> Vec<u64> {
        list.iter()
            .map(|c| c[field].as_u64().unwrap_or(0))
            .collect()
    };
    let healthy_drops: u64 = per(&healthy, "reconnects").iter().sum();
    figure(scenario, "peak RSS", mib(hwm));
    figure(scenario, "RSS at the end", mib(rss_end));
    figure(scenario, "healthy drops (reconnects)", healthy_drops);
    figure(
        scenario,
        "healthy messages received per connection",
        format!("{:?}", per(&healthy, "msgs_in")),
    );
    figure(
        scenario,
        "pinning reconnects per connection",
        format!("{:?}", per(&pinning, "reconnects")),
    );
    figure(
        scenario,
        "drops by reason",
        format!("{:?}", metrics.drops()),
    );
    figure(
        scenario,
        "evictions / pauses / budget peak",
        format!(
            "{} / {} / {}",
            metrics.count("wsfleet_budget_evictions_total"),
            metrics.count("wsfleet_budget_pauses_total"),
            mib(metrics.count("wsfleet_budget_peak_bytes"))
        ),
    );
    assert_eq!((healthy.len(), pinning.len()), (10, 10), "{conns:?}");
    assert!(
        hwm <= limit,
        "peak RSS {} over the allowance {}\n{log}",
        mib(hwm),
        mib(limit)
    );
    assert_eq!(healthy_drops, 0, "healthy connections dropped\n{log}");
    assert!(healthy_errors.is_empty(), "{healthy_errors:?}\n{log}");
    // 5 messages a second for 25 s is 125; a third of it at least, on a
    // loaded machine.
    assert!(
        per(&healthy, "msgs_in").iter().all(|n| *n >= 40),
        "healthy connections keep receiving: {:?}\n{log}",
        per(&healthy, "msgs_in")
    );
    // A pinning connection paused with nothing held (its peer's frame
    // waits in the socket) harms no one and is not closed: as many closes
    // as pinning connections, not one each, is the bound.
    let pin_reconnects: u64 = per(&pinning, "reconnects").iter().sum();
    assert!(
        pin_reconnects >= 10,
        "pinning connections are closed and reconnect: {:?}\n{log}",
        per(&pinning, "reconnects")
    );
    let drops = metrics.drops();
    let for_memory = drops.get("budget_exhausted").copied().unwrap_or(0)
        + drops.get("message_stalled").copied().unwrap_or(0);
    assert!(
        for_memory >= 10,
        "pinning connections are closed for the budget or the progress deadline: {drops:?}\n{log}"
    );
}

/// 20 connections to peers sending one endless fragmented message each,
/// 160 MiB budget: peak RSS within the allowance; once the attack stops,
/// RSS comes back down near the idle process.
#[test]
fn endless_fragments_stay_within_the_budget_and_memory_comes_back() {
    let _serial = serial();
    let scenario = "endless fragments";
    let (budget, connections) = (160 * MIB, 20);
    let idle = idle_rss(scenario, connections);
    let limit = allowance(scenario, idle, budget, connections);
    let (server, url) = Running::serve(&["--chaos", "endless-fragments"]);
    let run = Run::start(
        &[
            "--url",
            &url,
            "--connections",
            "20",
            "--memory-budget",
            "160MiB",
            "--output",
            "none",
        ],
        Stdio::null(),
    );
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_secs(1));
    }
    let during = run.metrics();
    let hwm = peak_rss(run.pid());
    let rss_during = rss(run.pid());
    drop(server);
    std::thread::sleep(Duration::from_secs(5));
    let after = run.metrics();
    let rss_after = rss(run.pid());
    let log = run.log.text();
    drop(run);
    figure(scenario, "peak RSS", mib(hwm));
    figure(scenario, "RSS when the attack stopped", mib(rss_during));
    figure(scenario, "RSS 5 s after the attack stopped", mib(rss_after));
    figure(
        scenario,
        "budget peak / used after",
        format!(
            "{} / {}",
            mib(during.count("wsfleet_budget_peak_bytes")),
            mib(after.count("wsfleet_budget_used_bytes"))
        ),
    );
    figure(
        scenario,
        "evictions; drops by reason during the attack",
        format!(
            "{}; {:?}",
            during.count("wsfleet_budget_evictions_total"),
            during.drops()
        ),
    );
    assert!(
        during.count("wsfleet_budget_peak_bytes") >= budget / 2,
        "the attack must fill the budget: peak {}\n{log}",
        mib(during.count("wsfleet_budget_peak_bytes"))
    );
    assert!(
        hwm <= limit,
        "peak RSS {} over the allowance {}\n{log}",
        mib(hwm),
        mib(limit)
    );
    assert_eq!(after.count("wsfleet_budget_used_bytes"), 0, "{log}");
    assert!(
        rss_after <= idle + RSS_AFTER_ATTACK_ABOVE_IDLE,
        "RSS {} 5 s after the attack, idle {}\n{log}",
        mib(rss_after),
        mib(idle)
    );
}

#[test]
fn jsonl_lines_give_connection_and_sequence() {
    let line = br#"{"conn":12,"slot":3,"ts":1,"kind":"binary","payload":"AAAAAAAAAAcA"}"#;
    assert_eq!(conn_and_seq(line), Ok((12, 7)));
    assert!(conn_and_seq(br#"{"conn":1,"kind":"text","payload":"AAAAAAAAAAcA"}"#).is_err());
    assert!(conn_and_seq(b"sent=1 received=1").is_err());
}
