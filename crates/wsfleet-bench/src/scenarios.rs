//! What one client process does: one scenario, one library, one JSON line.
//!
//! Every loop is bounded twice: by a count and by a time cap.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{Barrier, Semaphore};

use crate::libs::{Client, Kind, Lib};
use crate::sys::{cpu_time, minor_faults, rss_bytes};
use wsfleet_testkit::measure::live_heap_bytes as live_bytes;

/// Which scenario a client process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Scenario {
    /// N idle connections: heap and RSS per connection.
    Idle,
    /// Many connections, small text round trips: rate and CPU.
    EchoSmall,
    /// One connection, large binary round trips: throughput and CPU.
    EchoLarge,
    /// Handshakes at bounded concurrency: rate and CPU.
    Connect,
    /// The wsfleet Fleet (wsfleet only): ramp, idle, echo.
    Fleet,
}

impl Scenario {
    pub(crate) fn arg(self) -> &'static str {
        match self {
            Scenario::Idle => "idle",
            Scenario::EchoSmall => "echo-small",
            Scenario::EchoLarge => "echo-large",
            Scenario::Connect => "connect",
            Scenario::Fleet => "fleet",
        }
    }
}

/// Parameters of one client run (what the command line gave).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Params {
    /// Connections (idle, echo-small, fleet).
    #[arg(long, default_value_t = 100)]
    pub(crate) n: usize,
    /// Payload bytes (echo-small, echo-large, fleet).
    #[arg(long, default_value_t = 32)]
    pub(crate) size: usize,
    /// Round trips (echo-*) or handshakes (connect) or fleet echoes.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) total: u64,
    /// Time cap of the measured loop, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) cap_secs: f64,
    /// Handshakes in flight at once (idle ramp, connect).
    #[arg(long, default_value_t = 64)]
    pub(crate) concurrency: usize,
    /// Fleet connect rate, per second.
    #[arg(long, default_value_t = 2000.0)]
    pub(crate) rate: f64,
    /// Fleet echoes in flight per connection (the window is this times
    /// `n`, at least 1): equal at every fleet size, so fleets of different
    /// sizes batch the same number of messages per system call.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) in_flight: f64,
    /// The fleet's event queue (`FleetBuilder::event_capacity`).
    #[arg(long, default_value_t = 1024)]
    pub(crate) event_capacity: usize,
    /// How the fleet scenario sends.
    #[arg(long, value_enum, default_value = "any")]
    pub(crate) send: FleetSend,
}

/// How the fleet scenario hands its messages to the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum FleetSend {
    /// `Fleet::send`: the next ready connection, round robin.
    Any,
    /// `Fleet::send_to`: each connection by id in turn.
    To,
    /// `Fleet::broadcast`: one message to every connection, then wait for
    /// every echo (one in flight per connection, `in_flight` ignored).
    Broadcast,
}

impl FleetSend {
    pub(crate) fn arg(self) -> &'static str {
        match self {
            FleetSend::Any => "any",
            FleetSend::To => "to",
            FleetSend::Broadcast => "broadcast",
        }
    }

    /// The `Fleet` method it measures, for reports.
    pub(crate) fn method(self) -> &'static str {
        match self {
            FleetSend::Any => "send",
            FleetSend::To => "send_to",
            FleetSend::Broadcast => "broadcast",
        }
    }
}

/// Upper bound on any wait for connections to come up.
const SETUP_CAP: Duration = Duration::from_secs(120);

pub(crate) async fn run(lib: Lib, scenario: Scenario, url: &str, p: &Params) -> Value {
    let url: Arc<str> = Arc::from(url);
    if scenario == Scenario::Fleet && lib != Lib::Wsfleet {
        return json!({ "error": "the fleet scenario is wsfleet only", "lib": lib.display() });
    }
    let result = match lib {
        Lib::Wsfleet => dispatch::<wsfleet::Connection>(scenario, url, p).await,
        Lib::Tungstenite => dispatch::<crate::libs::Tungstenite>(scenario, url, p).await,
        Lib::Fastwebsockets => dispatch::<crate::libs::Fastwebsockets>(scenario, url, p).await,
        Lib::TokioWebsockets => dispatch::<crate::libs::TokioWebsockets>(scenario, url, p).await,
    };
    let mut v = match result {
        Ok(v) => v,
        Err(e) => json!({ "error": e }),
    };
    v["lib"] = json!(lib.display());
    v["scenario"] = json!(scenario.arg());
    v
}

async fn dispatch<C: Client>(
    scenario: Scenario,
    url: Arc<str>,
    p: &Params,
) -> Result<Value, String> {
    match scenario {
        Scenario::Idle => idle::<C>(url, p).await,
        Scenario::EchoSmall => echo_small::<C>(url, p).await,
        Scenario::EchoLarge => echo_large::<C>(url, p).await,
        Scenario::Connect => connect::<C>(url, p).await,
        Scenario::Fleet => fleet(url, p).await,
    }
}

/// A payload of `size` bytes of ASCII text (valid as text and as binary).
fn payload(size: usize) -> Bytes {
    Bytes::from(
        (0..size)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn per(total: f64, n: usize) -> f64 {
    if n == 0 { 0.0 } else { total / n as f64 }
}

/// Connects, does one 32-byte round trip, then parks each connection in its
/// own task waiting in `recv` (as an idle connection of an application
/// waits). Measures live heap and RSS growth per connection.
async fn idle<C: Client>(url: Arc<str>, p: &Params) -> Result<Value, String> {
    let n = p.n;
    let msg = C::prepare(Kind::Text, &payload(32));
    let heap0 = live_bytes();
    let rss0 = rss_bytes();
    let t0 = Instant::now();
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    // Sizes of the idle task's future and of one `recv` future (both live
    // inline in the task's heap cell).
    let sizes = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let gate = Arc::new(Semaphore::new(p.concurrency.max(1)));
    for _ in 0..n {
        if t0.elapsed() > SETUP_CAP {
            break;
        }
        let permit = gate
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let (url, msg, ok, failed, first_error, sizes) = (
            url.clone(),
            msg.clone(),
            ok.clone(),
            failed.clone(),
            first_error.clone(),
            sizes.clone(),
        );
        tokio::spawn(async move {
            let warm = async {
                let mut c = C::connect(&url).await?;
                c.send(&msg).await?;
                match c.recv().await? {
                    Some(32) => Ok(c),
                    other => Err(format!("warm-up echo: got {other:?}")),
                }
            };
            let warm = tokio::time::timeout(Duration::from_secs(30), warm).await;
            drop(permit);
            match warm {
                Ok(Ok(mut c)) => {
                    ok.fetch_add(1, Ordering::Relaxed);
                    sizes.1.store(size_of_val(&c.recv()), Ordering::Relaxed);
                    // The idle connection: its own task, waiting for a message.
                    // (No `let mut c = c;` inside: that would store it twice.)
                    let task = async move { while let Ok(Some(_)) = c.recv().await {} };
                    sizes.0.store(size_of_val(&task), Ordering::Relaxed);
                    tokio::spawn(task);
                }
                Ok(Err(e)) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    first_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(e);
                }
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < n
        && t0.elapsed() < SETUP_CAP
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ramp = t0.elapsed().as_secs_f64();
    drop(msg);
    // Let the last tasks settle into their recv.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let heap = live_bytes().saturating_sub(heap0);
    let rss = rss_bytes().saturating_sub(rss0);
    let connected = ok.load(Ordering::Relaxed);
    let err = first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(json!({
        "n": n,
        "connected": connected,
        "failed": failed.load(Ordering::Relaxed),
        "first_error": err,
        "ramp_s": ramp,
        "heap_per_conn": per(heap as f64, connected),
        "rss_per_conn": per(rss as f64, connected),
        "rss_total": rss_bytes(),
        "conn_size_of": size_of::<C>(),
        "task_future_size": sizes.0.load(Ordering::Relaxed),
        "recv_future_size": sizes.1.load(Ordering::Relaxed),
    }))
}

async fn connect_all<C: Client>(url: &str, n: usize) -> Result<Vec<C>, String> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let c = tokio::time::timeout(Duration::from_secs(30), C::connect(url))
            .await
            .map_err(|_| "connect timed out".to_string())??;
        conns.push(c);
    }
    Ok(conns)
}

/// `n` connections, each with one `size`-byte text message in flight,
/// until `total` round trips or the cap.
async fn echo_small<C: Client>(url: Arc<str>, p: &Params) -> Result<Value, String> {
    const WARMUP: usize = 20;
    let conns = connect_all::<C>(&url, p.n).await?;
    let msg = C::prepare(Kind::Text, &payload(p.size));
    let barrier = Arc::new(Barrier::new(conns.len() + 1));
    let counter = Arc::new(AtomicU64::new(0));
    let cap = Duration::from_secs_f64(p.cap_secs);
    let (total, size) = (p.total, p.size);
    let mut tasks = Vec::with_capacity(conns.len());
    for mut c in conns {
        let (msg, barrier, counter) = (msg.clone(), barrier.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let mut warm_err = None;
            for _ in 0..WARMUP {
                if let Err(e) = round_trip(&mut c, &msg, size).await {
                    warm_err = Some(e);
                    break;
                }
            }
            barrier.wait().await;
            if let Some(e) = warm_err {
                return Err(e);
            }
            let deadline = Instant::now() + cap;
            let mut done = 0u64;
            while counter.fetch_add(1, Ordering::Relaxed) < total && Instant::now() < deadline {
                round_trip(&mut c, &msg, size).await?;
                done += 1;
            }
            Ok::<u64, String>(done)
        }));
    }
    barrier.wait().await;
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let mut done = 0;
    for t in tasks {
        done += t.await.map_err(|e| e.to_string())??;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu0).as_secs_f64();
    Ok(json!({
        "n": p.n,
        "size": size,
        "round_trips": done,
        "secs": secs,
        "cpu_s": cpu,
        "msgs_per_s": done as f64 / secs,
        "cpu_s_per_million": cpu / done.max(1) as f64 * 1e6,
    }))
}

async fn round_trip<C: Client>(c: &mut C, msg: &C::Msg, size: usize) -> Result<(), String> {
    c.send(msg).await?;
    match c.recv().await? {
        Some(len) if len == size => Ok(()),
        other => Err(format!("echo: expected {size} bytes, got {other:?}")),
    }
}

/// One connection, `size`-byte binary round trips, until `total` or the cap.
async fn echo_large<C: Client>(url: Arc<str>, p: &Params) -> Result<Value, String> {
    let mut conns = connect_all::<C>(&url, 1).await?;
    let mut c = conns.pop().ok_or("no connection")?;
    let msg = C::prepare(Kind::Binary, &payload(p.size));
    for _ in 0..2 {
        round_trip(&mut c, &msg, p.size).await?;
    }
    let cap = Duration::from_secs_f64(p.cap_secs);
    let faults0 = minor_faults();
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let mut done = 0u64;
    while done < p.total && t0.elapsed() < cap {
        round_trip(&mut c, &msg, p.size).await?;
        done += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu0).as_secs_f64();
    let bytes = done as f64 * p.size as f64;
    Ok(json!({
        "size": p.size,
        "round_trips": done,
        "secs": secs,
        "cpu_s": cpu,
        "mb_per_s": bytes / secs / 1e6,
        "cpu_s_per_gb": cpu / (bytes / 1e9).max(1e-12),
        "minor_faults_per_mb": (minor_faults() - faults0) as f64 / (bytes / 1e6).max(1e-12),
    }))
}

/// `total` handshakes, `concurrency` at a time; each connection is dropped
/// once open (no close handshake: the same for every library).
async fn connect<C: Client>(url: Arc<str>, p: &Params) -> Result<Value, String> {
    let counter = Arc::new(AtomicU64::new(0));
    let cap = Duration::from_secs_f64(p.cap_secs);
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..p.concurrency.max(1) {
        let (url, counter, total) = (url.clone(), counter.clone(), p.total);
        workers.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut first_error) = (0u64, 0u64, None);
            while counter.fetch_add(1, Ordering::Relaxed) < total && t0.elapsed() < cap {
                match tokio::time::timeout(Duration::from_secs(10), C::connect(&url)).await {
                    Ok(Ok(c)) => {
                        drop(c);
                        ok += 1;
                    }
                    Ok(Err(e)) => {
                        failed += 1;
                        first_error.get_or_insert(e);
                    }
                    Err(_) => failed += 1,
                }
            }
            (ok, failed, first_error)
        }));
    }
    let (mut ok, mut failed, mut first_error) = (0, 0, None);
    for w in workers {
        let (o, f, e) = w.await.map_err(|e| e.to_string())?;
        ok += o;
        failed += f;
        if first_error.is_none() {
            first_error = e;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu0).as_secs_f64();
    Ok(json!({
        "handshakes": ok,
        "failed": failed,
        "first_error": first_error,
        "concurrency": p.concurrency,
        "secs": secs,
        "cpu_s": cpu,
        "handshakes_per_s": ok as f64 / secs,
        "cpu_us_per_handshake": cpu / ok.max(1) as f64 * 1e6,
    }))
}

/// wsfleet's Fleet: `n` connections ramped at `rate`, idle, then `total`
/// small echoes through `fleet.send` with `in_flight` per connection.
async fn fleet(url: Arc<str>, p: &Params) -> Result<Value, String> {
    use wsfleet::fleet::{EventKind, Fleet};
    let heap0 = live_bytes();
    let rss0 = rss_bytes();
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let mut fleet = Fleet::builder(url.to_string())
        .connections(p.n)
        .connect_rate(p.rate)
        .event_capacity(p.event_capacity)
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut events = fleet.events().ok_or("events taken")?;
    let window_size = ((p.n as f64 * p.in_flight).round() as usize).max(1);
    let window = Arc::new(Semaphore::new(window_size));
    let echoed = Arc::new(AtomicU64::new(0));
    let disconnects = Arc::new(AtomicU64::new(0));
    let ids = Arc::new(std::sync::Mutex::new(Vec::with_capacity(p.n)));
    // A broadcast round ends when the echoes reach `round_end`.
    let round_end = Arc::new(AtomicU64::new(u64::MAX));
    let round_done = Arc::new(tokio::sync::Notify::new());
    let consumer = {
        let (window, echoed, disconnects, ids) = (
            window.clone(),
            echoed.clone(),
            disconnects.clone(),
            ids.clone(),
        );
        let (round_end, round_done) = (round_end.clone(), round_done.clone());
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                match ev.kind {
                    EventKind::Message(_) => {
                        let now = echoed.fetch_add(1, Ordering::Relaxed) + 1;
                        window.add_permits(1);
                        if now == round_end.load(Ordering::Relaxed) {
                            round_done.notify_one();
                        }
                    }
                    EventKind::Connected { .. } => {
                        ids.lock().unwrap_or_else(|e| e.into_inner()).push(ev.conn);
                    }
                    EventKind::Disconnected(_) => {
                        disconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        })
    };
    let ramp_cap = SETUP_CAP.min(Duration::from_secs_f64(p.n as f64 / p.rate * 3.0 + 30.0));
    // Counted from the events, not `fleet.ready()` (a pass over every
    // slot): the ramp's own cost does not depend on how long it takes.
    let connected = || ids.lock().unwrap_or_else(|e| e.into_inner()).len();
    while connected() < p.n && t0.elapsed() < ramp_cap {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ramp = t0.elapsed().as_secs_f64();
    let ready = fleet.ready();
    let ramp_cpu = (cpu_time() - cpu0).as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let heap_idle = live_bytes().saturating_sub(heap0);
    let rss_idle = rss_bytes().saturating_sub(rss0);
    let rss_idle_total = rss_bytes();

    let msg = wsfleet::Message::text(
        wsfleet::Utf8Bytes::try_from(payload(p.size)).map_err(|e| format!("{e:?}"))?,
    );
    let cap = Duration::from_secs_f64(p.cap_secs);
    let cpu1 = cpu_time();
    let t1 = Instant::now();
    let ids = std::mem::take(&mut *ids.lock().unwrap_or_else(|e| e.into_inner()));
    let mut sent = 0u64;
    while sent < p.total && t1.elapsed() < cap {
        if p.send == FleetSend::Broadcast {
            // A round: every connection one message, then every echo
            // (the consumer signals the round's last; a lost echo ends the
            // wait at the cap's grace).
            let took = fleet.broadcast(msg.clone()).await as u64;
            if took == 0 {
                break;
            }
            sent += took;
            round_end.store(sent, Ordering::Relaxed);
            while echoed.load(Ordering::Relaxed) < sent
                && t1.elapsed() < cap + Duration::from_secs(5)
            {
                let _ =
                    tokio::time::timeout(Duration::from_millis(100), round_done.notified()).await;
            }
            continue;
        }
        let Ok(Ok(permit)) = tokio::time::timeout(Duration::from_secs(5), window.acquire()).await
        else {
            break;
        };
        permit.forget();
        let took = match p.send {
            FleetSend::To if !ids.is_empty() => fleet
                .send_to(ids[sent as usize % ids.len()], msg.clone())
                .await
                .is_ok(),
            _ => fleet.send(msg.clone()).await.is_ok(),
        };
        if !took {
            break;
        }
        sent += 1;
    }
    while echoed.load(Ordering::Relaxed) < sent && t1.elapsed() < cap + Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let echo_secs = t1.elapsed().as_secs_f64();
    let echo_cpu = (cpu_time() - cpu1).as_secs_f64();
    let got = echoed.load(Ordering::Relaxed);
    let heap_busy = live_bytes().saturating_sub(heap0);
    let rss_busy_total = rss_bytes();
    let out = json!({
        "n": p.n,
        "ready": ready,
        "disconnects": disconnects.load(Ordering::Relaxed),
        "ramp_s": ramp,
        "ramp_cpu_us_per_conn": per(ramp_cpu * 1e6, ready),
        "heap_per_conn": per(heap_idle as f64, ready),
        "rss_per_conn": per(rss_idle as f64, ready),
        "rss_total_mb": rss_idle_total as f64 / 1e6,
        "in_flight": if p.send == FleetSend::Broadcast { ready } else { window_size },
        "send": p.send.arg(),
        "echo_sent": sent,
        "echoed": got,
        "echo_msgs_per_s": got as f64 / echo_secs,
        "echo_cpu_s_per_million": echo_cpu / got.max(1) as f64 * 1e6,
        "heap_per_conn_busy": per(heap_busy as f64, ready),
        "rss_total_busy_mb": rss_busy_total as f64 / 1e6,
    });
    consumer.abort();
    drop(fleet);
    Ok(out)
}
