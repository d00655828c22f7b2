//! End-to-end tests of the `wsfleet` binary, on loopback only. Every child
//! process is bounded by a timeout and killed if a test fails.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use assert_cmd::Command;
use common::{BIN, Running, free_port, http_until, listening_url};
use predicates::prelude::*;
use wsfleet::serve::ChaosMode;

fn wsfleet() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("RUST_LOG").timeout(Duration::from_secs(30));
    cmd
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
    // No URL, no config: the embedded echo server and 100 connections.
    let output = wsfleet()
        .args(["run", "--duration", "3s"])
        .assert()
        .success()
        .get_output()
        .clone();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (sent, received, connections) = summary(&stdout);
    assert_eq!(connections, 100, "{stdout}");
    assert!(
        sent >= 100,
        "every connection sends at least once: {stdout}"
    );
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
    let url = listening_url(&lines);
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
fn a_peers_control_characters_reach_the_terminal_escaped_unless_raw() {
    let (mut serve, lines) = Running::start(&["serve", "--listen", "127.0.0.1:0"]);
    let url = listening_url(&lines);
    // The echo server sends back what would retitle the window, ring the
    // bell and clear the screen (CSI as C1).
    let hostile = "a\x1b]0;pwned\x07b\u{9b}2J\tc\\n\n";
    wsfleet()
        .args(["connect", &url])
        .write_stdin(hostile)
        .assert()
        .success()
        .stdout("a\\x1b]0;pwned\\x07b\\u{9b}2J\tc\\n\n");
    wsfleet()
        .args(["connect", "--raw", &url])
        .write_stdin(hostile)
        .assert()
        .success()
        .stdout(hostile);
    serve.signal("TERM");
    let status = serve.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");

    let run = |raw: bool| {
        let mut cmd = wsfleet();
        cmd.args(["run", "--duration", "1s", "--connections", "1"])
            .args(["--send-on-connect", "x\x1b[2Jy\nz", "--output", "text"]);
        if raw {
            cmd.arg("--raw");
        }
        let out = cmd.assert().success().get_output().stdout.clone();
        String::from_utf8(out).unwrap()
    };
    let stdout = run(false);
    assert!(stdout.contains(" text x\\x1b[2Jy\\nz\n"), "{stdout:?}");
    assert!(!stdout.contains('\x1b'), "{stdout:?}");
    assert!(run(true).contains(" text x\x1b[2Jy\nz\n"));
    wsfleet()
        .args(["run", "--raw", "--output", "jsonl"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--output text only"));
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

/// A config file in a fresh temporary folder, removed when dropped.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(name: &str, text: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("wsfleet-cli-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("wsfleet.toml");
        std::fs::write(&path, text).expect("write config");
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[test]
fn run_config_file_and_flags_over_it() {
    let config = TempConfig::new(
        "precedence",
        "# a small demo\nconnections = 4\nduration = \"2s\"\ninterval = \"200ms\"\n",
    );
    let stdout = |extra: &[&str]| {
        let mut args = vec!["run", "--config", config.path()];
        args.extend_from_slice(extra);
        let output = wsfleet().args(args).assert().success().get_output().clone();
        String::from_utf8(output.stdout).unwrap()
    };
    let from_file = stdout(&[]);
    assert_eq!(summary(&from_file).2, 4, "{from_file}");
    let overridden = stdout(&["--connections", "6"]);
    assert_eq!(summary(&overridden).2, 6, "{overridden}");
}

#[test]
fn bad_config_key_is_a_usage_error_naming_file_line_and_key() {
    let config = TempConfig::new("badkey", "connections = 4\n\nconections = 5\n");
    wsfleet()
        .args(["run", "--config", config.path()])
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains(format!("{}:3: unknown key `conections`", config.path()))
                .and(predicate::str::contains("panicked").not()),
        );
    let config = TempConfig::new("badsize", "max-message = \"5XB\"\n");
    wsfleet()
        .args(["run", "--config", config.path()])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!(
            "{}:1: max-message: invalid size \"5XB\"",
            config.path()
        )));
    wsfleet()
        .args(["run", "--config", "/nonexistent/wsfleet.toml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "cannot read config file /nonexistent/wsfleet.toml",
        ));
}

#[test]
fn admin_endpoint_answers_while_running() {
    let addr = format!("127.0.0.1:{}", free_port());
    let (mut run, _lines) = Running::start(&["run", "--admin", &addr, "--connections", "10"]);

    let (status, body) = http_until(&addr, "/healthz", |status, body| {
        status == 200 && body.contains("10/10 ready")
    });
    assert!(body.contains("10/10 ready"), "{status} {body}");

    let (_, body) = http_until(&addr, "/connections", |status, _| status == 200);
    let connections: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let connections = connections.as_array().expect("an array");
    assert_eq!(connections.len(), 10, "{body}");
    for conn in connections {
        for field in [
            "id",
            "slot",
            "state",
            "url",
            "connected_since",
            "reconnects",
            "bytes_in",
            "bytes_out",
            "msgs_in",
            "msgs_out",
            "buffered_bytes",
            "peak_buffered_bytes",
            "last_error",
        ] {
            assert!(conn.get(field).is_some(), "{field} missing in {conn}");
        }
        assert_eq!(conn["state"], "ready", "{conn}");
    }

    let (_, metrics) = http_until(&addr, "/metrics", |status, _| status == 200);
    assert!(
        metrics.contains("wsfleet_connections_ready{pool=\"default\"} 10"),
        "{metrics}"
    );

    run.signal("INT");
    let status = run.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
}

#[test]
fn shard_runs_its_share_of_the_slots() {
    let addr = format!("127.0.0.1:{}", free_port());
    let (mut run, _lines) = Running::start(&[
        "run",
        "--admin",
        &addr,
        "--shard",
        "1/2",
        "--connections",
        "10",
    ]);
    let (_, body) = http_until(&addr, "/connections", |status, _| status == 200);
    let connections: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let slots: Vec<u64> = connections
        .as_array()
        .expect("an array")
        .iter()
        .map(|c| c["slot"].as_u64().expect("slot number"))
        .collect();
    assert_eq!(slots, [1, 3, 5, 7, 9], "{body}");
    run.signal("TERM");
    let status = run.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
}

#[test]
fn output_jsonl_is_one_object_per_message() {
    let output = wsfleet()
        .args([
            "run",
            "--duration",
            "2s",
            "--connections",
            "3",
            "--interval",
            "200ms",
            "--send-on-connect",
            "hello",
            "--output",
            "jsonl",
        ])
        .assert()
        .success()
        .get_output()
        .clone();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (_, received, _) = summary(&stdout);
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.starts_with("sent=")).collect();
    assert_eq!(lines.len() as u64, received, "{stdout}");
    let mut hellos = 0;
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert!(
            v["conn"].is_u64() && v["slot"].is_u64() && v["ts"].is_u64(),
            "{line}"
        );
        assert_eq!(v["kind"], "text", "{line}");
        let payload = v["payload"].as_str().expect("text payload");
        if payload == "hello" {
            hellos += 1;
        } else {
            assert!(payload.starts_with("wsfleet demo #"), "{line}");
        }
    }
    assert_eq!(
        hellos, 3,
        "each connection's --send-on-connect comes back: {stdout}"
    );
}

#[test]
fn log_format_json_writes_json_lines() {
    let output = wsfleet()
        .args([
            "run",
            "--duration",
            "1s",
            "--connections",
            "2",
            "--log-format",
            "json",
        ])
        .assert()
        .success()
        .get_output()
        .clone();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.lines().count() >= 2, "{stderr}");
    for line in stderr.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    // RUST_LOG filters: nothing below warn, and nothing is wrong here.
    wsfleet()
        .env("RUST_LOG", "warn")
        .args(["run", "--duration", "1s", "--connections", "2"])
        .assert()
        .success()
        .stderr("");
}

#[test]
fn run_against_nothing_logs_why_and_keeps_trying() {
    let url = format!("ws://127.0.0.1:{}/", free_port());
    let output = wsfleet()
        .args([
            "run",
            "--url",
            &url,
            "--connections",
            "2",
            "--duration",
            "2s",
        ])
        .assert()
        .success()
        .get_output()
        .clone();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("connect failed") && stderr.contains("tcp connect to 127.0.0.1:"),
        "{stderr}"
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(summary(&stdout), (0, 0, 0), "{stdout}");
    assert!(stdout.contains("reconnects="), "{stdout}");
}

#[test]
fn bad_run_values_are_usage_errors() {
    for (args, needle) in [
        (
            &["run", "--memory-budget", "5XB"][..],
            "invalid size \"5XB\"",
        ),
        (&["run", "--shard", "2/2"], "invalid shard"),
        (
            &["run", "--conections", "5"],
            "unexpected argument '--conections'",
        ),
        (&["run", "--max-message", "5"], "invalid --max-message"),
        (
            &["run", "--connections", "2", "--shard", "3/4"],
            "would run none",
        ),
    ] {
        wsfleet().args(args).assert().code(2).stderr(
            predicate::str::contains(needle).and(predicate::str::contains("panicked").not()),
        );
    }
}

#[test]
fn serve_help_lists_every_chaos_mode() {
    let output = wsfleet()
        .args(["serve", "--help"])
        .assert()
        .success()
        .get_output()
        .clone();
    let help = String::from_utf8(output.stdout).unwrap();
    for mode in ChaosMode::ALL {
        assert!(help.contains(mode.name()), "{mode} missing:\n{help}");
        assert!(
            help.contains(mode.describe()),
            "{mode} unexplained:\n{help}"
        );
    }
}

#[test]
fn bad_chaos_settings_are_usage_errors_naming_the_field() {
    for (args, needles) in [
        (
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--chaos",
                "pin",
                "--pin-prefix",
                "20MiB",
                "--pin-frame",
                "16MiB",
            ][..],
            &["--pin-prefix", "pin_prefix", "below pin_frame"][..],
        ),
        (
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--chaos",
                "stream",
                "--pin-frame",
                "1MiB",
            ],
            &["--pin-frame applies to --chaos pin only"],
        ),
        (
            &["serve", "--listen", "127.0.0.1:0", "--trickle", "1s"],
            &["--chaos"],
        ),
    ] {
        let assert = wsfleet().args(args).assert().code(2);
        let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{args:?}: {needle:?} not in {stderr}"
            );
        }
    }
}

#[test]
fn connect_to_a_lying_length_server_fails_with_a_protocol_error() {
    let (mut serve, lines) = Running::start(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--chaos",
        "lying-length",
    ]);
    let url = listening_url(&lines);
    wsfleet()
        .args(["connect", &url])
        .write_stdin("")
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("protocol error")
                .and(predicate::str::contains("1009"))
                .and(predicate::str::contains("max_frame_payload")),
        );
    serve.signal("TERM");
    let status = serve.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}

#[test]
fn stale_after_replaces_connections_that_receive_no_data() {
    // An echo server sends nothing unless spoken to: a stream gone quiet.
    let (mut serve, lines) = Running::start(&["serve", "--listen", "127.0.0.1:0"]);
    let url = listening_url(&lines);
    let output = wsfleet()
        .args([
            "run",
            "--url",
            &url,
            "--connections",
            "2",
            "--stale-after",
            "300ms",
            "--duration",
            "2s",
        ])
        .assert()
        .success()
        .get_output()
        .clone();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("replacing this stale connection"),
        "{stderr}"
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(!stdout.contains("reconnects=0"), "{stdout}");
    serve.signal("TERM");
    assert!(serve.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn run_keeps_subscriptions_and_checks_sequences_from_the_config_file() {
    // The feed server: numbered messages per channel after a subscribe,
    // 5 % of the numbers skipped (and reported on its stdout).
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let feed = runtime
        .block_on(wsfleet_testkit::FeedServer::start(
            wsfleet_testkit::FeedOptions {
                rate: 50.0,
                skip_ratio: 0.05,
                seed: Some(3),
                ..Default::default()
            },
        ))
        .expect("feed server");
    let mut config = format!(
        "url = [\"{}\"]\nconnections = 2\nmax-lifetime = \"700ms\"\noutput = \"jsonl\"\n",
        feed.url()
    );
    for ch in ["a", "b", "c", "d"] {
        config.push_str(&format!(
            "\n[[subscription]]\nkey = \"{ch}\"\nsend = '{{\"op\":\"subscribe\",\"channel\":\"{ch}\"}}'\nend = '{{\"op\":\"unsubscribe\",\"channel\":\"{ch}\"}}'\nper-connection = 2\n"
        ));
    }
    config.push_str("\n[streams]\nkey = \"/channel\"\nsequence = \"/seq\"\n");
    let dir = std::env::temp_dir().join(format!("wsfleet-cli-streams-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("wsfleet.toml");
    std::fs::write(&path, &config).unwrap();
    let output = wsfleet()
        .args([
            "run",
            "--config",
            path.to_str().unwrap(),
            "--duration",
            "3s",
        ])
        .assert()
        .success()
        .get_output()
        .clone();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    let mut seqs: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for line in stdout.lines().filter(|l| l.starts_with('{')) {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        let Some(payload) = event["payload"].as_str() else {
            continue;
        };
        let Ok(message) = serde_json::from_str::<serde_json::Value>(payload) else {
            continue;
        };
        if let (Some(ch), Some(seq)) = (message["channel"].as_str(), message["seq"].as_u64()) {
            seqs.entry(ch.to_owned()).or_default().push(seq);
        }
    }
    assert_eq!(seqs.len(), 4, "every subscription flowed: {stdout}");
    for (ch, numbers) in &seqs {
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "{ch} delivered a number twice across rotations: {numbers:?}"
        );
    }
    // Gaps are logged, one line per gap, naming the stream and the range.
    let skipped = feed.skipped();
    let logged = stderr.matches("sequence gap").count();
    let within: usize = skipped
        .iter()
        .map(|(ch, numbers)| {
            let seen = &seqs[ch];
            numbers.range(seen[0] + 1..seen[seen.len() - 1]).count()
        })
        .sum();
    assert!(within > 0, "no skip within the run");
    assert!(
        logged >= 1 && logged <= within,
        "{logged} gap lines for {within} skipped numbers:\n{stderr}"
    );
}
