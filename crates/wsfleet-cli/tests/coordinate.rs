//! `wsfleet run --coordinate`: three processes share 30 slots through NATS
//! JetStream key-value leases (a real `nats-server -js` from the testkit).
//!
//! The upstream is an echo server behind a counting proxy, and each slot
//! dials its own path (`--url …/slot<N>`, slots spread over the URLs by
//! id), so the proxy knows which slot every live connection is for. It
//! records, at every connection it accepts, the live connections of that
//! slot and of the whole fleet: a slot served twice at any moment would
//! show there. Besides, every 100 ms the test reads each process's
//! `/connections` and checks that no ready slot appears in two of them.
//!
//! The overlap bound at the server is 0 here, and asserted so: a SIGKILLed
//! process's sockets close with it (the kernel closes them), and a slot
//! given back is deleted from the bucket only once its connection has
//! closed, so the proxy never sees more than 30 connections nor one slot
//! twice. (A *paused* process would be another matter: see
//! `wsfleet_bus::coordinate`.)
//!
//! The scenario: all 30 slots held exactly once, 10 per process; one
//! process SIGKILLed; the survivors serve every slot again within the
//! documented bound (lease + a scan + the ramp), measured and printed; the
//! killed process started again takes its share (10) back, and no more
//! than that many connections are closed elsewhere.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use wsfleet::ConnectionConfig;
use wsfleet::serve::EchoServer;
use wsfleet_testkit::NatsServer;

use common::{Running, free_port, http_get};

const SLOTS: usize = 30;
const LEASE: Duration = Duration::from_secs(2);

/// What the proxy saw.
#[derive(Debug, Default)]
struct Seen {
    /// Live connections per slot now.
    live: BTreeMap<usize, u32>,
    /// The most live connections one slot had at once.
    max_per_slot: u32,
    /// The most live connections at once.
    max_total: u32,
    opened: u64,
    closed: u64,
}

impl Seen {
    fn total(&self) -> u32 {
        self.live.values().sum()
    }

    fn served(&self) -> usize {
        self.live.values().filter(|n| **n > 0).count()
    }
}

/// A TCP proxy to `upstream` that reads each request line's `/slot<N>`.
async fn counting_proxy(upstream: std::net::SocketAddr) -> (String, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("proxy address");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shared = seen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(relay(client, upstream, shared.clone()));
        }
    });
    (format!("ws://{addr}"), seen)
}

async fn relay(mut client: TcpStream, upstream: std::net::SocketAddr, seen: Arc<Mutex<Seen>>) {
    // The request line, at most 1 KiB.
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") && head.len() < 1024 {
        match client.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let line = String::from_utf8_lossy(&head);
    let Some(slot) = line
        .split_whitespace()
        .nth(1)
        .and_then(|path| path.strip_prefix("/slot"))
        .and_then(|n| n.parse::<usize>().ok())
    else {
        return;
    };
    {
        let mut s = seen.lock().unwrap();
        *s.live.entry(slot).or_default() += 1;
        s.opened += 1;
        s.max_per_slot = s.max_per_slot.max(s.live[&slot]);
        s.max_total = s.max_total.max(s.total());
    }
    if let Ok(mut server) = TcpStream::connect(upstream).await
        && server.write_all(&head).await.is_ok()
    {
        let (mut cr, mut cw) = client.split();
        let (mut sr, mut sw) = server.split();
        // The connection ends for the count when the client's side
        // ends (it closed, or was killed).
        let up = async {
            let _ = tokio::io::copy(&mut cr, &mut sw).await;
        };
        // The server's close reaches the client (which waits for it
        // after a close handshake).
        let down = async {
            let _ = tokio::io::copy(&mut sr, &mut cw).await;
            let _ = cw.shutdown().await;
            std::future::pending::<()>().await;
        };
        tokio::select! {
            () = up => {}
            () = down => {}
        }
    }
    let mut s = seen.lock().unwrap();
    *s.live.entry(slot).or_default() -= 1;
    s.closed += 1;
}

/// The ready slots a process's `/connections` lists (`None`: no answer).
fn ready_slots(admin: &str) -> Option<Vec<usize>> {
    let (status, body) = http_get(admin, "/connections").ok()?;
    if status != 200 {
        return None;
    }
    let rows: Vec<serde_json::Value> = serde_json::from_str(&body).ok()?;
    Some(
        rows.iter()
            .filter(|r| r["state"] == "ready")
            .filter_map(|r| r["slot"].as_u64().map(|s| s as usize))
            .collect(),
    )
}

/// Every 100 ms until `done` or `within`: the processes' ready slots must
/// never overlap. Returns how long it took.
fn sample_until(
    admins: &[&str],
    seen: &Mutex<Seen>,
    within: Duration,
    what: &str,
    done: impl Fn(&[Vec<usize>], &Seen) -> bool,
) -> Duration {
    let t0 = Instant::now();
    loop {
        let held: Vec<Vec<usize>> = admins
            .iter()
            .map(|a| ready_slots(a).unwrap_or_default())
            .collect();
        let mut union = BTreeSet::new();
        for (i, slots) in held.iter().enumerate() {
            for s in slots {
                assert!(
                    union.insert(*s),
                    "slot {s} ready in two processes at once (process {i}): {held:?}"
                );
            }
        }
        if done(&held, &seen.lock().unwrap()) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < within,
            "{what}: not within {within:?}; processes hold {held:?}, proxy saw {:?}",
            seen.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_process(urls: &[String], coordinate: &str, admin: &str) -> Running {
    let mut args = vec![
        "run".to_owned(),
        "--connections".into(),
        SLOTS.to_string(),
        "--coordinate".into(),
        coordinate.into(),
        "--lease".into(),
        "2s".into(),
        "--admin".into(),
        admin.into(),
        "--output".into(),
        "none".into(),
        "--duration".into(),
        "85s".into(),
    ];
    for url in urls {
        args.push("--url".into());
        args.push(url.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Running::spawn(
        &args,
        std::process::Stdio::null(),
        std::process::Stdio::inherit(),
    )
}

#[test]
fn three_processes_share_the_slots_and_take_over_a_killed_ones() {
    let test_start = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (nats, _echo, base, seen) = rt.block_on(async {
        let nats = NatsServer::start().await.expect("nats-server");
        let echo = EchoServer::bind("127.0.0.1:0", ConnectionConfig::default())
            .await
            .expect("echo server");
        let (base, seen) = counting_proxy(echo.local_addr()).await;
        (nats, echo, base, seen)
    });
    let urls: Vec<String> = (0..SLOTS).map(|i| format!("{base}/slot{i}")).collect();
    let coordinate = format!("{}/failover", nats.url());
    let admins: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let admin_refs: Vec<&str> = admins.iter().map(String::as_str).collect();
    let mut procs: Vec<Running> = admins
        .iter()
        .map(|a| start_process(&urls, &coordinate, a))
        .collect();

    // 1. Every slot held exactly once, 10 per process.
    let took = sample_until(
        &admin_refs,
        &seen,
        Duration::from_secs(20),
        "30 slots held, 10 each",
        |held, seen| {
            held.iter().all(|h| h.len() == SLOTS / 3)
                && seen.served() == SLOTS
                && seen.total() == SLOTS as u32
        },
    );
    eprintln!("all {SLOTS} slots held, 10 per process, after {took:?}");

    // 2. SIGKILL one: the survivors take its slots.
    let victim = procs[1].pid();
    procs[1].0.kill().expect("SIGKILL");
    let killed_at = Instant::now();
    procs[1].0.wait().expect("reaped");
    let survivors = [admin_refs[0], admin_refs[2]];
    // T + 1.2 R (expiry, then the next scan) + the ramp of 10 slots and
    // their handshakes (1.5 s on a loaded 2-core machine).
    let bound = LEASE + LEASE.mul_f64(1.2 / 3.0) + Duration::from_millis(1_500);
    sample_until(
        &survivors,
        &seen,
        Duration::from_secs(15),
        "survivors serve every slot",
        |held, seen| held.iter().map(Vec::len).sum::<usize>() == SLOTS && seen.served() == SLOTS,
    );
    let failover = killed_at.elapsed();
    eprintln!(
        "process {victim} SIGKILLed: every slot served again after {failover:?} (bound {bound:?})"
    );
    assert!(
        failover <= bound,
        "failover took {failover:?}, over {bound:?}"
    );

    // 3. It comes back: takes its share, and the others close no more
    // than that.
    let closed_before = seen.lock().unwrap().closed;
    procs[1] = start_process(&urls, &coordinate, admin_refs[1]);
    let rebalance = sample_until(
        &admin_refs,
        &seen,
        Duration::from_secs(20),
        "the returning process holds its share",
        |held, seen| {
            held[1].len() == SLOTS / 3
                && held.iter().map(Vec::len).sum::<usize>() == SLOTS
                && seen.served() == SLOTS
        },
    );
    // Settled: nothing more moves for a lease.
    std::thread::sleep(LEASE);
    let closed = seen.lock().unwrap().closed - closed_before;
    eprintln!(
        "the returning process took its share after {rebalance:?}; {closed} connections closed elsewhere"
    );
    assert!(
        closed <= (SLOTS / 3) as u64,
        "{closed} closed to give back 10"
    );
    let held: Vec<usize> = admin_refs
        .iter()
        .map(|a| ready_slots(a).unwrap_or_default().len())
        .collect();
    assert_eq!(held, [10, 10, 10]);
    // Healthy: each process's target is what it holds, not all 30.
    for admin in &admin_refs {
        let (status, body) = http_get(admin, "/healthz").expect("healthz");
        assert_eq!(status, 200, "{admin}: {body}");
    }

    // The proxy never saw a slot twice, nor more than 30 at once.
    {
        let s = seen.lock().unwrap();
        eprintln!("proxy: {s:?}");
        assert_eq!(s.max_per_slot, 1, "a slot was served twice at once");
        assert_eq!(s.max_total, SLOTS as u32);
    }

    // `wsfleet status` shows the whole fleet from NATS.
    let out = std::process::Command::new(common::BIN)
        .args(["status", "--coordinate", &coordinate])
        .env_remove("RUST_LOG")
        .output()
        .expect("wsfleet status");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(out.status.success(), "status failed: {text}");
    assert!(
        text.starts_with("fleet failover: 30 slots, 30 held, 0 free, 3 members"),
        "{text}"
    );

    // Graceful exits leave the bucket empty.
    for p in &procs {
        p.signal("TERM");
    }
    for p in &mut procs {
        assert!(p.wait_exit(Duration::from_secs(15)).success());
    }
    let out = std::process::Command::new(common::BIN)
        .args(["status", "--coordinate", &coordinate])
        .env_remove("RUST_LOG")
        .output()
        .expect("wsfleet status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("fleet failover: 0 slots, 0 held, 0 free, 0 members"),
        "{text}"
    );
    assert!(test_start.elapsed() < Duration::from_secs(90));
    drop(nats);
}
