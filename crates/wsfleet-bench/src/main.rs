//! `wsfleet-bench`: wsfleet against tokio-tungstenite, fastwebsockets and
//! tokio-websockets, same echo server, same run.
//!
//! ```text
//! wsfleet-bench all [--quick] [--reps N] [--write-docs] [--json FILE]
//! wsfleet-bench idle|echo-small|echo-large|connect|fleet [same options]
//! wsfleet-bench server --listen 127.0.0.1:0 [--impl wsfleet|tokio-websockets]
//! wsfleet-bench client --lib L --scenario S --url ws://127.0.0.1:PORT/ [params]
//! ```
//!
//! The orchestrator (`all` or one scenario) starts one echo server process,
//! then one client process per (scenario, library, repetition), libraries
//! alternating, so each client's heap, RSS and CPU time are its own. Each
//! client process prints one JSON line; the orchestrator prints median and
//! min–max per library and the ratio against the best peer, and with
//! `--write-docs` rewrites docs/benchmarks.md and docs/benchmarks.svg.
//! Loopback only; every loop is bounded in count and in time.

mod libs;
mod orchestrate;
mod report;
mod scenarios;
mod server;
mod sys;

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};

use crate::libs::Lib;
use crate::scenarios::{Params, Scenario};
use crate::server::ServerImpl;

#[global_allocator]
static GLOBAL: wsfleet_testkit::measure::CountingAlloc = wsfleet_testkit::measure::CountingAlloc;

#[derive(Debug, Parser)]
#[command(about = "Benchmarks wsfleet against other tokio WebSocket clients")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Every scenario, every client.
    All(RunOpts),
    /// Idle connections: heap and RSS per connection.
    Idle(RunOpts),
    /// Small text round trips over 100 connections.
    EchoSmall(RunOpts),
    /// 1 MiB and 16 MiB binary round trips over one connection.
    EchoLarge(RunOpts),
    /// Handshakes at bounded concurrency.
    Connect(RunOpts),
    /// The wsfleet Fleet of 10,000 connections.
    Fleet(RunOpts),
    /// The echo server process (started by the orchestrator).
    Server {
        /// Address to listen on (loopback).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// Which implementation serves.
        #[arg(long = "impl", value_enum, default_value = "tokio-websockets")]
        which: ServerImpl,
    },
    /// One client process (started by the orchestrator): prints one JSON line.
    Client {
        /// The client library.
        #[arg(long, value_enum)]
        lib: Lib,
        /// The scenario.
        #[arg(long, value_enum)]
        scenario: Scenario,
        /// The echo server's URL.
        #[arg(long)]
        url: String,
        #[command(flatten)]
        params: Params,
    },
}

#[derive(Debug, Args)]
struct RunOpts {
    /// Small N and short caps: a few seconds per scenario (CI, development).
    #[arg(long)]
    quick: bool,
    /// Repetitions per client (default 5, or 1 with --quick).
    #[arg(long)]
    reps: Option<usize>,
    /// Rewrite docs/benchmarks.md and docs/benchmarks.svg from this run.
    #[arg(long)]
    write_docs: bool,
    /// Also write every run's raw JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The echo server implementation.
    #[arg(long, value_enum, default_value = "tokio-websockets")]
    server_impl: ServerImpl,
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Cmd::Server { listen, which } => match server::run(&listen, which) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("server: {e}");
                1
            }
        },
        Cmd::Client {
            lib,
            scenario,
            url,
            params,
        } => client(lib, scenario, &url, &params),
        Cmd::All(o) => orchestrate(None, &o),
        Cmd::Idle(o) => orchestrate(Some(Scenario::Idle), &o),
        Cmd::EchoSmall(o) => orchestrate(Some(Scenario::EchoSmall), &o),
        Cmd::EchoLarge(o) => orchestrate(Some(Scenario::EchoLarge), &o),
        Cmd::Connect(o) => orchestrate(Some(Scenario::Connect), &o),
        Cmd::Fleet(o) => orchestrate(Some(Scenario::Fleet), &o),
    };
    std::process::exit(code);
}

fn client(lib: Lib, scenario: Scenario, url: &str, params: &Params) -> i32 {
    let nofile = sys::raise_nofile();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("client: runtime: {e}");
            return 1;
        }
    };
    let mut v = rt.block_on(scenarios::run(lib, scenario, url, params));
    v["nofile"] = serde_json::json!(nofile);
    println!("{v}");
    // Exit without tearing down thousands of connections one by one.
    0
}

fn orchestrate(only: Option<Scenario>, o: &RunOpts) -> i32 {
    let t0 = Instant::now();
    let nofile = sys::raise_nofile();
    let load_before = sys::loadavg();
    // At the start: with `cargo run` the binary was built from this tree just now.
    let revision = revision();
    let reps = o.reps.unwrap_or(if o.quick { 1 } else { 5 }).max(1);
    let variants = orchestrate::plan(only, o.quick);
    let server = match orchestrate::ServerProcess::start(o.server_impl) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wsfleet-bench: {e}");
            return 1;
        }
    };
    eprintln!(
        "wsfleet-bench: echo server ({}) at {}, RLIMIT_NOFILE {} (server {}), {} repetitions{}",
        o.server_impl.name(),
        server.url(),
        nofile,
        server.nofile,
        reps,
        if o.quick { ", quick" } else { "" }
    );
    let results = orchestrate::run_all(&variants, reps, &server, nofile);
    eprintln!("server RSS at the end: {:.1} MB", server.rss() as f64 / 1e6);
    drop(server);
    let machine = report::Machine {
        cpu: sys::cpu_model(),
        ncpus: sys::ncpus(),
        mem_gib: sys::mem_gib(),
        kernel: sys::kernel(),
        rustc: rustc_version(),
        revision,
        load_before,
        load_after: sys::loadavg(),
        nofile,
        server: o.server_impl.name(),
        quick: o.quick,
        reps,
        wall_s: t0.elapsed().as_secs_f64(),
    };
    println!("{}", report::tables(&results));
    println!(
        "## Targets\n\n{}",
        report::targets_table(&report::targets(&results))
    );
    println!(
        "machine: {} ({} CPUs), load {} -> {}, {:.0} s",
        machine.cpu, machine.ncpus, machine.load_before, machine.load_after, machine.wall_s
    );
    if let Some(path) = &o.json {
        let raw: Vec<serde_json::Value> = results
            .iter()
            .map(|v| {
                serde_json::json!({
                    "variant": v.variant.title,
                    "runs": v.runs.iter().map(|(l, r)| (l.display().to_string(), serde_json::json!(r)))
                        .collect::<serde_json::Map<_, _>>(),
                })
            })
            .collect();
        if let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&raw).unwrap_or_default())
        {
            eprintln!("wsfleet-bench: writing {}: {e}", path.display());
        }
    }
    if o.write_docs {
        let docs = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs"));
        let docs = docs.canonicalize().unwrap_or(docs);
        // The multi-process run's figures (`scripts/scale --json`), if any.
        let scale = std::fs::read_to_string(docs.join("scale.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
        let written = std::fs::create_dir_all(&docs)
            .and_then(|()| {
                std::fs::write(
                    docs.join("benchmarks.md"),
                    report::document(&results, &machine, scale.as_ref()),
                )
            })
            .and_then(|()| std::fs::write(docs.join("benchmarks.svg"), report::svg(&results)));
        match written {
            Ok(()) => eprintln!("wrote {}/benchmarks.{{md,svg}}", docs.display()),
            Err(e) => {
                eprintln!("wsfleet-bench: writing docs: {e}");
                return 1;
            }
        }
    }
    let failed = results
        .iter()
        .flat_map(|v| v.runs.iter().flat_map(|(_, r)| r.iter()))
        .filter(|r| r.get("error").is_some())
        .count();
    if failed > 0 {
        eprintln!("wsfleet-bench: {failed} client runs failed");
        return 1;
    }
    0
}

/// The workspace's git commit, and whether the library crates measured had
/// uncommitted changes (read-only git commands).
fn revision() -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(head) => {
            let dirty = git(&[
                "status",
                "--porcelain",
                "--",
                "crates/wsfleet",
                "crates/wsfleet-proto",
            ])
            .is_some_and(|s| !s.trim().is_empty());
            format!(
                "commit {}{}",
                head.trim(),
                if dirty {
                    " with uncommitted changes in crates/wsfleet*"
                } else {
                    ""
                }
            )
        }
        None => "commit unknown".into(),
    }
}

fn rustc_version() -> String {
    std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "rustc (unknown)".into())
}
