//! Credentials fetched at connection attempts, against the Python
//! `websockets` server that reports each request's headers and target
//! ([`Mode::Headers`]): a rotated token reaches new connections without a
//! restart, a failing or slow command is a failed connect phase the fleet
//! retries, and connections connecting together run the command once.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use wsfleet::connect::credential::Problem;
use wsfleet::connect::{ConnectErrorKind, Credential, CredentialSource, Phase, Placement};
use wsfleet::fleet::{Backoff, ConnId, DisconnectReason, EventKind, Events, Fleet};
use wsfleet::{Connection, ConnectionConfig};
use wsfleet_testkit::{Mode, PyServer, bounded};

/// A fresh folder for a test's token, flag and count files, removed after.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "wsfleet-it-credentials-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch folder");
        Self(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Replaces `path`'s contents at once (a rename), as a token rotation
/// should: a reader never sees the file half written.
fn replace(path: &Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).expect("write");
    std::fs::rename(&next, path).expect("rename");
}

/// How many lines `path` has (0 when it does not exist): a command appends
/// one per run.
fn runs(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

fn header(command: String) -> Credential {
    Credential::new(
        Placement::Header("Authorization".into()),
        CredentialSource::Command(command),
    )
}

/// The headers report (the first message) of each new connection, by
/// connection, until `done` says so; any disconnect but a rotation fails
/// the test.
async fn reports(
    events: &mut Events,
    seen: &mut HashMap<ConnId, serde_json::Value>,
    done: impl Fn(&HashMap<ConnId, serde_json::Value>) -> bool,
) {
    let mut first = HashSet::new();
    bounded("header reports", async {
        while !done(seen) {
            let event = events.recv().await.expect("event");
            match event.kind {
                EventKind::Message(m) if first.insert(event.conn) => {
                    let report = serde_json::from_str(m.as_text().expect("text")).expect("json");
                    seen.insert(event.conn, report);
                }
                EventKind::Disconnected(DisconnectReason::Rotated) => {}
                EventKind::Disconnected(other) => panic!("unexpected disconnect: {other}"),
                _ => {}
            }
        }
    })
    .await;
}

fn count_with(seen: &HashMap<ConnId, serde_json::Value>, key: &str, value: &str) -> usize {
    seen.values().filter(|r| r[key] == value).count()
}

#[tokio::test]
async fn a_rotated_token_reaches_new_connections_without_a_restart() {
    let server = PyServer::start(Mode::Headers).await.expect("start");
    let scratch = Scratch::new("rotate");
    let (token, query) = (scratch.path("token"), scratch.path("query"));
    std::fs::write(&token, "t1\n").unwrap();
    std::fs::write(&query, "q 1&x\n").unwrap();
    let cache = Duration::from_millis(300);
    let config = crate::config()
        // A configured header of the same name is replaced, not doubled.
        .header("Authorization", "Bearer static")
        .credential(
            header(format!("printf 'Bearer %s' \"$(cat {})\"", token.display())).cache(cache),
        )
        .credential(
            Credential::new(
                Placement::Query("token".into()),
                CredentialSource::File(query.clone()),
            )
            .cache(cache),
        );
    let n = 4;
    let mut fleet = Fleet::builder(format!("{}feed?token=old&v=2", server.url()))
        .connections(n)
        .connection_config(config)
        .max_lifetime(Duration::from_millis(600))
        .lifetime_jitter(0.2)
        .connect_rate(1000.0)
        .seed(7)
        .spawn()
        .expect("spawn");
    let mut events = fleet.events().expect("events");
    let mut seen = HashMap::new();
    reports(&mut events, &mut seen, |s| s.len() >= n).await;
    for report in seen.values() {
        assert_eq!(report["authorization"], "Bearer t1", "{report}");
        assert_eq!(report[":path"], "/feed?token=q%201%26x&v=2", "{report}");
    }

    replace(&token, "t2\n");
    replace(&query, "q2\n");
    // Rotations (make-before-break) bring new connections: once the cache
    // has run out they carry the new values, and the fleet never stopped.
    reports(&mut events, &mut seen, |s| {
        count_with(s, "authorization", "Bearer t2") >= 2 * n
    })
    .await;
    assert_eq!(
        count_with(&seen, ":path", "/feed?token=q2&v=2"),
        count_with(&seen, "authorization", "Bearer t2"),
        "the query value changed with the header: {seen:?}"
    );
    assert!(
        seen.values()
            .all(|r| r["authorization"] == "Bearer t1" || r["authorization"] == "Bearer t2"),
        "{seen:?}"
    );
    let stats = fleet.stats();
    assert_eq!(stats.ready, n, "every slot stayed ready");
    fleet.shutdown().await;
}

/// Waits for `count` failed connects whose problem `want` accepts (others,
/// of the mode before, may still come first); each is in the credential
/// phase, its text starting with `expected` (the credential and its
/// command). A connection that connects fails the test.
async fn failures(events: &mut Events, count: usize, expected: &str, want: fn(&Problem) -> bool) {
    let mut failed = 0;
    while failed < count {
        let event = events.recv().await.expect("event");
        match event.kind {
            EventKind::Disconnected(DisconnectReason::ConnectFailed { phase, error, .. }) => {
                assert_eq!(phase, Phase::Credential, "{error}");
                let ConnectErrorKind::Credential(e) = error.kind() else {
                    panic!("{error:?}")
                };
                assert!(error.to_string().starts_with(expected), "{error}");
                if want(e.problem()) {
                    failed += 1;
                }
            }
            EventKind::Connected { .. } => panic!("connected without a credential"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_failing_or_slow_command_is_a_credential_phase_retried_with_backoff() {
    let server = PyServer::start(Mode::Headers).await.expect("start");
    let scratch = Scratch::new("fail");
    let (mode, count) = (scratch.path("mode"), scratch.path("runs"));
    std::fs::write(&mode, "fail").unwrap();
    let command = format!(
        "echo run >> {count}; m=$(cat {mode}); \
         if [ \"$m\" = slow ]; then sleep 5; fi; \
         if [ \"$m\" = fail ]; then echo 'no session' >&2; exit 1; fi; \
         echo 'Bearer ok'",
        count = count.display(),
        mode = mode.display()
    );
    let timeout = Duration::from_millis(300);
    let config = crate::config().credential(header(command.clone()).timeout(timeout));
    let n = 3;
    let mut fleet = Fleet::builder(server.url())
        .connections(n)
        .connection_config(config)
        .backoff(Backoff::new(Duration::from_millis(50), Duration::from_millis(200)).unwrap())
        .connect_rate(1000.0)
        .spawn()
        .expect("spawn");
    let mut events = fleet.events().expect("events");

    let expected = format!("credential header \"Authorization\" (command `{command}`): ");
    bounded(
        "failures",
        failures(&mut events, 2 * n, &expected, |p| {
            matches!(p, Problem::Exited { status, stderr } if status == "status 1" && stderr == "no session")
        }),
    )
    .await;
    assert_eq!(fleet.ready(), 0);
    replace(&mode, "slow");
    bounded(
        "timeouts",
        failures(&mut events, 2 * n, &expected, |p| {
            *p == Problem::Timeout(Duration::from_millis(300))
        }),
    )
    .await;
    let retried = runs(&count);
    assert!(retried >= 2, "the command ran {retried} times");

    replace(&mode, "ok");
    let mut seen = HashMap::new();
    let mut first = HashSet::new();
    bounded("recovery", async {
        while seen.len() < n {
            let event = events.recv().await.expect("event");
            if let EventKind::Message(m) = event.kind
                && first.insert(event.conn)
            {
                let report: serde_json::Value =
                    serde_json::from_str(m.as_text().expect("text")).expect("json");
                seen.insert(event.conn, report);
            }
        }
    })
    .await;
    assert_eq!(count_with(&seen, "authorization", "Bearer ok"), n);
    assert_eq!(fleet.ready(), n);
    fleet.shutdown().await;
}

#[tokio::test]
async fn connections_connecting_together_run_the_command_once() {
    let server = PyServer::start(Mode::Headers).await.expect("start");
    let scratch = Scratch::new("single");
    let count = scratch.path("runs");
    // Cache zero: only waiting for the fetch under way can share it.
    let credential = header(format!(
        "echo run >> {}; sleep 1; echo 'Bearer shared'",
        count.display()
    ))
    .cache(Duration::ZERO);
    let n = 50;
    let mut fleet = Fleet::builder(server.url())
        .connections(n)
        .connection_config(crate::config().credential(credential))
        .connect_rate(10_000.0)
        .spawn()
        .expect("spawn");
    let mut events = fleet.events().expect("events");
    let mut seen = HashMap::new();
    reports(&mut events, &mut seen, |s| s.len() >= n).await;
    assert_eq!(count_with(&seen, "authorization", "Bearer shared"), n);
    assert_eq!(runs(&count), 1, "{n} connections connecting together");
    fleet.shutdown().await;
}

#[tokio::test]
async fn a_header_value_with_a_line_break_is_refused_before_connecting() {
    let scratch = Scratch::new("crlf");
    let token = scratch.path("token");
    std::fs::write(&token, "a\r\nX-Injected: 1\n").unwrap();
    let config = ConnectionConfig::default().credential(Credential::new(
        Placement::Header("Authorization".into()),
        CredentialSource::File(token),
    ));
    // Nothing listens on port 9: the credential fails before any dial.
    let err = bounded("connect", Connection::connect("ws://127.0.0.1:9/", &config))
        .await
        .unwrap_err();
    assert_eq!(err.phase(), Phase::Credential, "{err}");
    assert!(
        err.to_string()
            .ends_with("(CR, LF and NUL cannot go in a header)"),
        "{err}"
    );
}
