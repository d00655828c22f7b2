//! End-to-end tests of the `wsfleet` binary, on loopback only. Every child
//! process is bounded by a timeout and killed if a test fails.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command as StdCommand, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use predicates::prelude::*;

const BIN: &str = env!("CARGO_BIN_EXE_wsfleet");

fn wsfleet() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("RUST_LOG").timeout(Duration::from_secs(30));
    cmd
}

/// Kills the child when dropped (a failing test leaves nothing running).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    /// Starts `wsfleet ARGS` with stdout piped; returns it and a channel of
    /// its stdout lines.
    fn start(args: &[&str]) -> (Self, mpsc::Receiver<String>) {
        let mut child = StdCommand::new(BIN)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn wsfleet");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (Self(child), rx)
    }

    fn signal(&self, name: &str) {
        let status = StdCommand::new("kill")
            .arg(format!("-{name}"))
            .arg(self.0.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return status;
            }
            assert!(t0.elapsed() < within, "did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Reads `sent=N received=N connections=N`.
fn summary(stdout: &str) -> (u64, u64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("sent="))
        .unwrap_or_else(|| panic!("no summary line in {stdout:?}"));
    let mut values = line.split(' ').map(|kv| {
        let (_, v) = kv.split_once('=').expect("key=value");
        v.parse::<u64>().expect("a number")
    });
    let mut next = || {
        values
            .next()
            .unwrap_or_else(|| panic!("short summary {line:?}"))
    };
    (next(), next(), next())
}

#[test]
fn version() {
    wsfleet()
        .arg("--version")
        .assert()
        .success()
        .stdout(predicate::str::starts_with(concat!(
            "wsfleet ",
            env!("CARGO_PKG_VERSION")
        )));
}

#[test]
fn help_documents_every_subcommand() {
    wsfleet().arg("--help").assert().success().stdout(
        predicate::str::contains("run")
            .and(predicate::str::contains("connect"))
            .and(predicate::str::contains("serve"))
            .and(predicate::str::contains("RUST_LOG")),
    );
    wsfleet().args(["run", "--help"]).assert().success().stdout(
        predicate::str::contains("--connections").and(predicate::str::contains("--duration")),
    );
    wsfleet()
        .args(["connect", "--help"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("--binary").and(predicate::str::contains("lowercase hex")),
        );
    wsfleet()
        .args(["serve", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("--listen"));
}

#[test]
fn run_demo_for_a_while_echoes_everything() {
    let output = wsfleet()
        .args(["run", "--duration", "3s", "--connections", "20"])
        .assert()
        .success()
        .get_output()
        .clone();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (sent, received, connections) = summary(&stdout);
    assert_eq!(connections, 20, "{stdout}");
    assert!(sent >= 20, "every connection sends at least once: {stdout}");
    assert!(received <= sent, "{stdout}");
    assert!(received + connections >= sent, "{stdout}");
}

#[test]
fn run_stops_gracefully_on_sigint() {
    let (mut run, lines) = Running::start(&["run", "--connections", "5", "--interval", "200ms"]);
    std::thread::sleep(Duration::from_secs(2));
    run.signal("INT");
    let status = run.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    let stdout: Vec<String> = lines.try_iter().collect();
    let (sent, received, connections) = summary(&stdout.join("\n"));
    assert_eq!(connections, 5);
    assert!(sent > 0 && received + connections >= sent, "{stdout:?}");
}

#[test]
fn serve_echoes_to_connect_and_stops_on_sigterm() {
    let (mut serve, lines) = Running::start(&["serve", "--listen", "127.0.0.1:0"]);
    let first = lines
        .recv_timeout(Duration::from_secs(15))
        .expect("serve prints its address");
    let url = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    assert!(
        url.starts_with("ws://127.0.0.1:") && url.ends_with('/'),
        "{url}"
    );

    wsfleet()
        .args(["connect", &url])
        .write_stdin("hello\nworld\n")
        .assert()
        .success()
        .stdout("hello\nworld\n");

    wsfleet()
        .args(["connect", "--binary", &url])
        .write_stdin("hi\n\u{e9}\n")
        .assert()
        .success()
        .stdout("6869\nc3a9\n");

    serve.signal("TERM");
    let status = serve.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}

#[test]
fn connect_to_nothing_fails_in_the_tcp_phase() {
    wsfleet()
        .args(["connect", "ws://127.0.0.1:1/"])
        .write_stdin("")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("tcp connect to 127.0.0.1:1"));
}

#[test]
fn bad_duration_is_a_usage_error_naming_it() {
    wsfleet()
        .args(["run", "--duration", "5x"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("5x").and(predicate::str::contains("unknown unit")));
}

#[test]
fn bad_size_and_header_are_usage_errors() {
    wsfleet()
        .args(["connect", "ws://127.0.0.1:1/", "--max-message", "5XB"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "invalid size \"5XB\": unknown unit \"XB\" (use B, KiB, MiB, GiB, KB, MB, GB)",
        ));
    wsfleet()
        .args(["connect", "ws://127.0.0.1:1/", "--header", "no-colon"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("Name: value"));
}
