//! The orchestrator: starts the echo server once, then one client process
//! per (scenario, library, repetition), libraries alternating
//! (A B C D A B C D …), and collects each process's JSON line.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::libs::Lib;
use crate::scenarios::{FleetSend, Scenario};
use crate::server::ServerImpl;

/// One measured configuration: a scenario with fixed parameters.
#[derive(Debug, Clone)]
pub(crate) struct Variant {
    pub(crate) scenario: Scenario,
    /// Short title, e.g. `idle, N = 10,000`.
    pub(crate) title: String,
    /// Arguments after `--scenario`.
    pub(crate) args: Vec<String>,
    pub(crate) libs: Vec<Lib>,
    /// Kill the client process after this long.
    pub(crate) timeout: Duration,
    /// The connections the scenario opens (for the descriptor check).
    pub(crate) conns: usize,
}

/// What one variant measured: per library, one JSON object per repetition.
#[derive(Debug, Clone)]
pub(crate) struct VariantResult {
    pub(crate) variant: Variant,
    pub(crate) runs: Vec<(Lib, Vec<Value>)>,
}

fn args(pairs: &[(&str, String)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(k, v)| [format!("--{k}"), v.clone()])
        .collect()
}

pub(crate) fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The variants of `scenario` (or of all scenarios), full or quick.
pub(crate) fn plan(only: Option<Scenario>, quick: bool) -> Vec<Variant> {
    let all = Lib::ALL.to_vec();
    let mut v = Vec::new();
    let want = |s: Scenario| only.is_none_or(|o| o == s);
    if want(Scenario::Idle) {
        let sizes: &[usize] = if quick { &[200] } else { &[1_000, 10_000] };
        for &n in sizes {
            v.push(Variant {
                scenario: Scenario::Idle,
                title: format!("idle, N = {}", thousands(n as u64)),
                args: args(&[("n", n.to_string()), ("concurrency", "100".into())]),
                libs: all.clone(),
                timeout: Duration::from_secs(if quick { 30 } else { 150 }),
                conns: n,
            });
        }
    }
    if want(Scenario::EchoSmall) {
        // The second size shows what 10,000 connections cost each library
        // without a fleet, one message in flight per connection: the floor
        // the fleet's own rows at 10,000 compare with.
        let sizes: &[(usize, u64, f64)] = if quick {
            &[(20, 20_000, 1.0)]
        } else {
            &[(100, 1_000_000, 5.0), (10_000, 300_000, 10.0)]
        };
        for &(n, total, cap) in sizes {
            v.push(Variant {
                scenario: Scenario::EchoSmall,
                title: format!(
                    "echo-small, {n} connections, 32-byte text, {} round trips or {cap} s",
                    thousands(total)
                ),
                args: args(&[
                    ("n", n.to_string()),
                    ("size", "32".into()),
                    ("total", total.to_string()),
                    ("cap-secs", cap.to_string()),
                ]),
                libs: all.clone(),
                timeout: Duration::from_secs(if n > 1_000 { 150 } else { 60 }),
                conns: n,
            });
        }
    }
    if want(Scenario::EchoLarge) {
        for (mib, total_full, total_quick) in [(1usize, 1024u64, 32u64), (16, 64, 4)] {
            let (total, cap) = if quick {
                (total_quick, 1.0)
            } else {
                (total_full, 5.0)
            };
            v.push(Variant {
                scenario: Scenario::EchoLarge,
                title: format!(
                    "echo-large, 1 connection, {mib} MiB binary, {total} round trips or {cap} s"
                ),
                args: args(&[
                    ("size", (mib << 20).to_string()),
                    ("total", total.to_string()),
                    ("cap-secs", cap.to_string()),
                ]),
                libs: all.clone(),
                timeout: Duration::from_secs(60),
                conns: 1,
            });
        }
    }
    if want(Scenario::Connect) {
        let (total, conc, cap) = if quick {
            (300u64, 16, 2.0)
        } else {
            (10_000, 32, 10.0)
        };
        v.push(Variant {
            scenario: Scenario::Connect,
            title: format!(
                "connect, {} handshakes, {conc} at a time, or {cap} s",
                thousands(total)
            ),
            args: args(&[
                ("total", total.to_string()),
                ("concurrency", conc.to_string()),
                ("cap-secs", cap.to_string()),
            ]),
            libs: all.clone(),
            timeout: Duration::from_secs(60),
            conns: conc,
        });
    }
    if want(Scenario::Fleet) {
        // The first is the fleet of record (memory, ramp, RSS target); the
        // others measure the cost per message by fleet size at the same
        // messages in flight per connection (one), through `Fleet::send`
        // and through `Fleet::broadcast` (what `scripts/scale` sends at
        // 100,000, so its figure compares with these).
        // (connections, echoes, per-connection in flight, how).
        let sizes: &[(usize, u64, f64, FleetSend)] = if quick {
            &[(300, 3_000, 1.0, FleetSend::Any)]
        } else {
            &[
                // The fleet of record, as issue 6 set it: 1,000 in flight.
                (10_000, 100_000, 0.1, FleetSend::Any),
                (100, 200_000, 1.0, FleetSend::Any),
                (10_000, 200_000, 1.0, FleetSend::Any),
                (100, 200_000, 1.0, FleetSend::Broadcast),
                (10_000, 200_000, 1.0, FleetSend::Broadcast),
            ]
        };
        let cap = if quick { 2.0 } else { 10.0 };
        for &(n, total, in_flight, send) in sizes {
            let rounds = if send == FleetSend::Broadcast {
                " rounds"
            } else {
                ""
            };
            v.push(Variant {
                scenario: Scenario::Fleet,
                title: format!(
                    "fleet (wsfleet only), {} connections ramped at 2,000/s, then {} echoes \
                     through `{}`{rounds}, {}",
                    thousands(n as u64),
                    thousands(total),
                    send.method(),
                    if in_flight == 1.0 {
                        "one in flight per connection".to_string()
                    } else {
                        format!("{} in flight", thousands((n as f64 * in_flight) as u64))
                    }
                ),
                args: args(&[
                    ("n", n.to_string()),
                    ("rate", "2000".into()),
                    ("size", "32".into()),
                    ("total", total.to_string()),
                    ("cap-secs", cap.to_string()),
                    ("in-flight", in_flight.to_string()),
                    ("send", send.arg().into()),
                ]),
                libs: vec![Lib::Wsfleet],
                timeout: Duration::from_secs(if quick { 30 } else { 150 }),
                conns: n,
            });
        }
    }
    v
}

/// The echo server child; killed (by its own pid) when dropped.
pub(crate) struct ServerProcess {
    child: Child,
    pub(crate) port: u16,
    pub(crate) nofile: u64,
}

impl ServerProcess {
    pub(crate) fn start(which: ServerImpl) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .args([
                "server",
                "--listen",
                "127.0.0.1:0",
                "--impl",
                match which {
                    ServerImpl::Wsfleet => "wsfleet",
                    ServerImpl::TokioWebsockets => "tokio-websockets",
                },
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn server: {e}"))?;
        let stdout = child.stdout.take().ok_or("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut port = None;
        let mut nofile = 0;
        for line in lines.by_ref().take(2) {
            let line = line.map_err(|e| e.to_string())?;
            if let Some(p) = line.strip_prefix("LISTENING ") {
                port = p.trim().parse().ok();
            } else if let Some(n) = line.strip_prefix("NOFILE ") {
                nofile = n.trim().parse().unwrap_or(0);
            }
        }
        let Some(port) = port else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("server did not say LISTENING".into());
        };
        Ok(Self {
            child,
            port,
            nofile,
        })
    }

    pub(crate) fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }

    /// Server RSS in bytes (from /proc/PID/status).
    pub(crate) fn rss(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Closing its stdin ends it; kill in case it is stuck.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs one client process and returns its JSON line (or an error object).
pub(crate) fn run_client(lib: Lib, v: &Variant, url: &str) -> Value {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return serde_json::json!({ "error": e.to_string() }),
    };
    let mut child = match Command::new(exe)
        .args([
            "client",
            "--lib",
            lib.arg(),
            "--scenario",
            v.scenario.arg(),
            "--url",
            url,
        ])
        .args(&v.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return serde_json::json!({ "error": format!("spawn client: {e}") }),
    };
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + v.timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let out = reader.join().unwrap_or_default();
    let Some(status) = status else {
        return serde_json::json!({ "error": format!("timed out after {:?}", v.timeout) });
    };
    match out.lines().rev().find(|l| l.starts_with('{')) {
        Some(line) => serde_json::from_str(line)
            .unwrap_or_else(|e| serde_json::json!({ "error": format!("bad JSON: {e}") })),
        None => serde_json::json!({ "error": format!("no result ({status})") }),
    }
}

/// Runs every variant, `reps` times, libraries alternating.
pub(crate) fn run_all(
    variants: &[Variant],
    reps: usize,
    server: &ServerProcess,
    client_nofile: u64,
) -> Vec<VariantResult> {
    let url = server.url();
    let mut results = Vec::new();
    for v in variants {
        let limit = client_nofile.min(server.nofile.max(1));
        if (v.conns as u64) + 64 > limit {
            eprintln!(
                "WARNING: {}: needs about {} open files per process but RLIMIT_NOFILE is {} \
                 (client {client_nofile}, server {}); connections beyond it will fail",
                v.title,
                v.conns + 64,
                limit,
                server.nofile
            );
        }
        let mut runs: Vec<(Lib, Vec<Value>)> = v.libs.iter().map(|&l| (l, Vec::new())).collect();
        for rep in 0..reps {
            for (lib, out) in runs.iter_mut() {
                let t0 = Instant::now();
                let r = run_client(*lib, v, &url);
                eprintln!(
                    "[{}] rep {}/{} {:<17} {:>5.1}s {}",
                    v.title,
                    rep + 1,
                    reps,
                    lib.display(),
                    t0.elapsed().as_secs_f64(),
                    crate::report::summary(v.scenario, &r)
                );
                out.push(r);
                // Let the server finish closing the last client's sockets.
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        results.push(VariantResult {
            variant: v.clone(),
            runs,
        });
    }
    results
}
