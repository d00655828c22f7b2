//! The `wsfleet` binary's transport flags against real peers on loopback:
//! the Python `websockets` server with permessage-deflate, tinyproxy (HTTP
//! CONNECT) and microsocks (SOCKS5) with credentials, nginx requiring a client
//! certificate and answering with redirects.

use std::time::Duration;

use assert_cmd::Command;
use wsfleet::serve::EchoServer;
use wsfleet::{ConnectionConfig, connect::Deadlines};
use wsfleet_testkit::{Mode, Nginx, NginxOptions, ProxyServer, PyServer, ServerOptions};

const BIN: &str = env!("CARGO_BIN_EXE_wsfleet");

fn wsfleet() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("RUST_LOG")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("http_proxy")
        .timeout(Duration::from_secs(30));
    cmd
}

async fn echo_server() -> EchoServer {
    let config = ConnectionConfig::default()
        .deadlines(Deadlines::default().with_handshake(Duration::from_secs(5)));
    EchoServer::bind("127.0.0.1:0", config)
        .await
        .expect("bind wsfleet's echo server")
}

/// Runs `wsfleet` with `args`, expecting it to refuse them as a usage
/// error (exit 2) before connecting anywhere; returns its stderr.
fn usage_error(args: &[&str]) -> String {
    let out = wsfleet().args(args).output().expect("run wsfleet");
    assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `wsfleet connect` with `lines` on stdin (in a blocking thread, so
/// the in-process servers keep running); returns (success, stdout, stderr).
async fn connect(args: Vec<String>, lines: &str, log: bool) -> (bool, String, String) {
    let stdin = lines.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut cmd = wsfleet();
        if log {
            cmd.env("RUST_LOG", "debug");
        }
        let out = cmd
            .arg("connect")
            .args(&args)
            .write_stdin(stdin)
            .output()
            .expect("run wsfleet connect");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_deflate_negotiates_compression_with_python_websockets() {
    let server = PyServer::start_with(
        Mode::Echo,
        ServerOptions {
            deflate: true,
            ..ServerOptions::default()
        },
    )
    .await
    .expect("start the Python websockets server");
    let big = "compressible ".repeat(400);
    let input = format!("hello\n{big}\nbye ☃\n");
    // The Python server may drop the last echo when stdin ends at once:
    // linger for the answers.
    let args = |deflate: bool| {
        let mut a = vec!["--linger".to_owned(), "300ms".to_owned()];
        if deflate {
            a.push("--deflate".to_owned());
        }
        a.push(server.url());
        a
    };
    let (ok, stdout, stderr) = connect(args(true), &input, true).await;
    assert!(ok, "stderr: {stderr}");
    assert_eq!(stdout, input, "every line echoed, in order");
    assert!(
        stderr.contains("deflate=Some("),
        "compression not negotiated: {stderr}"
    );
    let (ok, stdout, stderr) = connect(args(false), &input, true).await;
    assert!(ok, "stderr: {stderr}");
    assert_eq!(stdout, input);
    assert!(stderr.contains("deflate=None"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_through_http_connect_and_socks5_proxies() {
    let server = echo_server().await;
    let url = format!("ws://{}/", server.local_addr());
    let http = ProxyServer::tinyproxy(Some(("alice", "wonder")))
        .await
        .expect("start tinyproxy");
    let socks = ProxyServer::microsocks(Some(("bob", "builder")))
        .await
        .expect("start microsocks");
    for proxy in [&http, &socks] {
        let (ok, stdout, stderr) = connect(
            vec!["--proxy".into(), proxy.url(), url.clone()],
            "through\n",
            false,
        )
        .await;
        assert!(ok, "via {}: {stderr}", proxy.url());
        assert_eq!(stdout, "through\n");
        // Wrong credentials: refused by the proxy, so it was in the path.
        let wrong = proxy.url_with(Some(("eve", "guess")));
        let (ok, _, stderr) =
            connect(vec!["--proxy".into(), wrong, url.clone()], "x\n", false).await;
        assert!(!ok, "wrong proxy credentials were accepted");
        assert!(stderr.contains("proxy"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_uses_the_proxy_and_deflate_for_every_connection() {
    let server = echo_server().await;
    let url = format!("ws://{}/", server.local_addr());
    let proxy = ProxyServer::tinyproxy(Some(("alice", "wonder")))
        .await
        .expect("start tinyproxy");
    let run = |proxy_url: String| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            wsfleet()
                .args(["run", "--url", &url, "--proxy", &proxy_url, "--deflate"])
                .args([
                    "--connections",
                    "3",
                    "--duration",
                    "2s",
                    "--output",
                    "jsonl",
                ])
                .args(["--send-on-connect", "hi"])
                .output()
                .expect("run wsfleet run")
        })
    };
    let out = run(proxy.url()).await.expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let echoes = stdout
        .lines()
        .filter(|l| l.contains(r#""payload":"hi""#))
        .count();
    assert!(
        echoes >= 3,
        "each of 3 connections gets its echo: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(proxy.url_with(Some(("alice", "nope"))))
        .await
        .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stdout.contains("payload"), "nothing got through: {stdout}");
    assert!(stdout.contains("connections=0"), "{stdout}");
    assert!(stderr.contains("proxy"), "why it fails is logged: {stderr}");
}

#[test]
fn bad_or_contradictory_proxy_flags_are_usage_errors() {
    usage_error(&[
        "connect",
        "--proxy",
        "ftp://127.0.0.1:21",
        "ws://127.0.0.1:9/",
    ]);
    usage_error(&[
        "connect",
        "--proxy",
        "http://127.0.0.1:1",
        "--no-proxy",
        "ws://127.0.0.1:9/",
    ]);
}

#[test]
fn a_malformed_proxy_url_never_shows_its_password() {
    let bad = "http://u:secret@h:99999";
    let stderr = usage_error(&["connect", "--proxy", bad, "ws://127.0.0.1:9/"]);
    assert!(!stderr.contains("secret"), "{stderr}");
    assert!(stderr.contains("***@h:99999"), "{stderr}");
    // From the environment, the error ends the connection instead.
    let out = wsfleet()
        .env("HTTPS_PROXY", bad)
        .args(["connect", "wss://feed.example.invalid/"])
        .write_stdin("")
        .output()
        .expect("run wsfleet");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("proxy"), "{stderr}");
    assert!(!stderr.contains("secret"), "{stderr}");
}

/// A file of wsfleet's test TLS material (`crates/wsfleet/tests/data`).
fn tls_data(name: &str) -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../wsfleet/tests/data/").to_owned() + name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_presents_a_client_certificate() {
    let upstream = echo_server().await;
    let mut options = NginxOptions::default();
    options.client_ca = Some(tls_data("client-ca.pem").into());
    let nginx = Nginx::start_with(upstream.local_addr().port(), options)
        .await
        .expect("start nginx");
    let base = vec![
        "--ca".to_owned(),
        tls_data("ca.pem"),
        "--origin".to_owned(),
        "https://example.com".to_owned(),
    ];
    let mut with_identity = base.clone();
    with_identity.extend([
        "--client-cert".to_owned(),
        tls_data("client.pem"),
        "--client-key".to_owned(),
        tls_data("client.key"),
        nginx.wss_url(),
    ]);
    let (ok, stdout, stderr) = connect(with_identity, "signed\n", false).await;
    assert!(ok, "stderr: {stderr}; nginx: {}", nginx.logs());
    assert_eq!(stdout, "signed\n");

    let mut without = base;
    without.push(nginx.wss_url());
    let (ok, _, stderr) = connect(without, "signed\n", false).await;
    assert!(!ok, "nginx let a client without certificate in");
    assert!(stderr.contains("400"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_follows_redirects_only_when_asked() {
    let upstream = echo_server().await;
    let mut options = NginxOptions::default();
    options.extra =
        "        absolute_redirect off;\n        location = /old { return 302 /; }\n".into();
    let nginx = Nginx::start_with(upstream.local_addr().port(), options)
        .await
        .expect("start nginx");
    let old = format!("{}old", nginx.ws_url());
    let (ok, stdout, stderr) = connect(
        vec!["--max-redirects".into(), "1".into(), old.clone()],
        "moved\n",
        false,
    )
    .await;
    assert!(ok, "stderr: {stderr}");
    assert_eq!(stdout, "moved\n");

    let (ok, _, stderr) = connect(vec![old], "moved\n", false).await;
    assert!(!ok, "followed a redirect without --max-redirects");
    assert!(stderr.contains("302"), "{stderr}");
}

#[test]
fn unusable_tls_identity_flags_are_usage_errors() {
    // A certificate without its key.
    usage_error(&[
        "connect",
        "--client-cert",
        &tls_data("client.pem"),
        "wss://127.0.0.1:9/",
    ]);
    // A key that is not the certificate's: named before any connection is tried.
    let stderr = usage_error(&[
        "connect",
        "--client-cert",
        &tls_data("client.pem"),
        "--client-key",
        &tls_data("server.key"),
        "wss://127.0.0.1:9/",
    ]);
    assert!(stderr.contains("server.key"), "{stderr}");
    // Too many redirects for the flag.
    usage_error(&["connect", "--max-redirects", "99", "ws://127.0.0.1:9/"]);
}

/// `run` with a header from a command and a query value from a file: the
/// server reports both on each connection; a command that fails is a
/// failed connect in the credential phase, logged, and the run goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_header_command_and_query_file_reach_the_server() {
    let server = PyServer::start(Mode::Headers)
        .await
        .expect("start the Python websockets server");
    let dir = std::env::temp_dir().join(format!("wsfleet-cli-credentials-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (token, query) = (dir.join("token"), dir.join("query"));
    std::fs::write(&token, "cli-token\n").unwrap();
    std::fs::write(&query, "q 1\n").unwrap();
    let header = format!(
        "Authorization: printf 'Bearer %s' \"$(cat {})\"",
        token.display()
    );
    let query_arg = format!("token={}", query.display());
    let url = server.url();
    let out = tokio::task::spawn_blocking(move || {
        wsfleet()
            .args([
                "run",
                "--url",
                &url,
                "--connections",
                "2",
                "--duration",
                "2s",
            ])
            .args(["--output", "jsonl", "--header-command", &header])
            .args(["--query-file", &query_arg, "--credential-cache", "0s"])
            .output()
            .expect("run wsfleet")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let reports: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| serde_json::from_str(v["payload"].as_str()?).ok())
        .collect();
    assert_eq!(reports.len(), 2, "{stdout}");
    for report in &reports {
        assert_eq!(report["authorization"], "Bearer cli-token", "{report}");
        assert_eq!(report[":path"], "/?token=q%201", "{report}");
    }

    let url = server.url();
    let out = tokio::task::spawn_blocking(move || {
        wsfleet()
            .args([
                "run",
                "--url",
                &url,
                "--connections",
                "1",
                "--duration",
                "1s",
            ])
            .args([
                "--header-command",
                "Authorization: echo expired >&2; exit 3",
            ])
            .output()
            .expect("run wsfleet")
    })
    .await
    .expect("join");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stderr.contains("connect failed")
            && stderr.contains(
                "credential header \"Authorization\" (command `echo expired >&2; exit 3`): \
                 exited with status 3: expired"
            ),
        "{stderr}"
    );
}
