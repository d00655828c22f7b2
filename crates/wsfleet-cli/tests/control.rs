//! The control API of `wsfleet run` through real HTTP, against the Python
//! `websockets` echo server: scaling reaches each target within its ramp
//! and closes only the connections that must go (ids checked), a request
//! without the token does nothing, a bad one names its field, a message
//! sent to one connection arrives on it only, and reloads apply only the
//! difference.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Running, free_port, http_get, http_post, http_until, lines_of};
use serde_json::Value;
use wsfleet_testkit::PyServer;

const TOKEN: &str = "test-token-0123456789";

/// A scratch folder for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wsfleet-control-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `wsfleet run` with the control API on, its stdout lines.
struct Run {
    _process: Running,
    admin: String,
    stdout: mpsc::Receiver<String>,
}

impl Run {
    fn start(dir: &std::path::Path, args: &[&str]) -> Self {
        let token_file = dir.join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let admin = format!("127.0.0.1:{}", free_port());
        let token_file = token_file.to_str().unwrap().to_owned();
        let mut all = vec!["run", "--admin", &admin, "--admin-token-file", &token_file];
        all.extend_from_slice(args);
        let mut process = Running::spawn(&all, Stdio::piped(), Stdio::inherit());
        let stdout = lines_of(process.0.stdout.take().expect("piped stdout"));
        http_until(&admin, "/healthz", |status, _| status != 0);
        Self {
            _process: process,
            admin,
            stdout,
        }
    }

    fn connections(&self) -> Vec<Value> {
        let (status, body) = http_get(&self.admin, "/connections").expect("GET /connections");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body)
            .expect("JSON")
            .as_array()
            .expect("an array")
            .clone()
    }

    /// Ready connections: id → (slot, url).
    fn ready(&self) -> BTreeMap<u64, (u64, String)> {
        self.connections()
            .iter()
            .filter(|c| c["state"] == "ready")
            .map(|c| {
                let id = c["id"].as_u64().expect("id");
                let slot = c["slot"].as_u64().expect("slot");
                (id, (slot, c["url"].as_str().unwrap_or("").to_owned()))
            })
            .collect()
    }

    /// Polls until exactly `n` connections are listed and all are ready;
    /// how long it took.
    fn until_ready(&self, n: usize, within: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            let all = self.connections();
            if all.len() == n && all.iter().all(|c| c["state"] == "ready") {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < within,
                "{} listed, {} ready, not {n} within {within:?}",
                all.len(),
                all.iter().filter(|c| c["state"] == "ready").count()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn post(&self, path: &str, body: &str) -> (u16, Value) {
        self.post_as(Some(TOKEN), path, body)
    }

    fn post_as(&self, token: Option<&str>, path: &str, body: &str) -> (u16, Value) {
        let (status, text) = http_post(&self.admin, path, token, body).expect("POST");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }
}

fn echo_server(runtime: &tokio::runtime::Runtime) -> PyServer {
    runtime
        .block_on(PyServer::echo())
        .expect("python echo server")
}

#[test]
fn scaling_through_the_api_keeps_the_connections_that_stay() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = echo_server(&runtime);
    let dir = scratch("scale");
    let rate = 200.0;
    let run = Run::start(
        &dir,
        &[
            "--url",
            &server.url(),
            "--connections",
            "100",
            "--connect-rate",
            "200",
            "--output",
            "jsonl",
        ],
    );
    run.until_ready(100, Duration::from_secs(15));
    let first = run.ready();

    // Refused without the token, with a wrong one, and with a bad field:
    // each changes nothing.
    let (status, _) = run.post_as(None, "/control/scale", r#"{"connections": 500}"#);
    assert_eq!(status, 401);
    let (status, _) = run.post_as(Some("nope"), "/control/scale", r#"{"connections": 500}"#);
    assert_eq!(status, 401);
    let (status, answer) = run.post("/control/scale", r#"{"connections": "lots"}"#);
    assert_eq!(
        (status, &answer["field"]),
        (400, &Value::from("connections"))
    );
    let (status, answer) = run.post("/control/scale", r#"{"connections": 0}"#);
    assert_eq!(
        (status, &answer["field"]),
        (400, &Value::from("connections"))
    );
    let (status, answer) = run.post("/control/scale", r#"{"pool": "nope", "connections": 5}"#);
    assert_eq!((status, &answer["field"]), (404, &Value::from("pool")));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(run.ready(), first, "a refused request changed the fleet");

    // 100 → 500: within 400 ÷ rate + 2 s, the first 100 untouched.
    let (status, answer) = run.post("/control/scale", r#"{"connections": 500}"#);
    assert_eq!(status, 200, "{answer}");
    let up = run.until_ready(500, Duration::from_secs(30));
    let bound = Duration::from_secs_f64(400.0 / rate) + Duration::from_secs(2);
    eprintln!("control: scale 100 -> 500 took {up:?} (bound {bound:?})");
    assert!(up <= bound, "scale-up took {up:?}, bound {bound:?}");
    let at_500 = run.ready();
    for (id, slot) in &first {
        assert_eq!(
            at_500.get(id),
            Some(slot),
            "connection {id} went while scaling up"
        );
    }

    // 500 → 50: the 50 on the first slots stay, ids unchanged.
    let staying: BTreeMap<u64, (u64, String)> = at_500
        .iter()
        .filter(|(_, (slot, _))| *slot < 50)
        .map(|(id, v)| (*id, v.clone()))
        .collect();
    let (status, answer) = run.post("/control/scale", r#"{"connections": 50}"#);
    assert_eq!(status, 200, "{answer}");
    let down = run.until_ready(50, Duration::from_secs(15));
    eprintln!("control: scale 500 -> 50 took {down:?}");
    assert!(down <= Duration::from_secs(2), "scale-down took {down:?}");
    assert_eq!(run.ready(), staying);

    // Send to one connection: its echo comes back on it alone.
    let (&target, _) = staying.iter().nth(7).unwrap();
    let body = format!(r#"{{"to": {{"connection": {target}}}, "text": "only-for-{target}"}}"#);
    let (status, answer) = run.post("/control/send", &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["sent_to"]["connection"], target);
    let t0 = Instant::now();
    let mut echoed = Vec::new();
    while t0.elapsed() < Duration::from_secs(3) {
        if let Ok(line) = run.stdout.recv_timeout(Duration::from_millis(100)) {
            let event: Value = serde_json::from_str(&line).expect("jsonl");
            if event["payload"] == format!("only-for-{target}") {
                echoed.push(event["conn"].as_u64().unwrap());
            }
        }
    }
    assert_eq!(echoed, [target]);
    // An unknown connection: 404 naming `to`, nothing sent.
    let (status, answer) = run.post(
        "/control/send",
        r#"{"to": {"connection": 999999}, "text": "x"}"#,
    );
    assert_eq!((status, &answer["field"]), (404, &Value::from("to")));
    drop(server);
}

#[test]
fn drop_rotate_pause_and_resume_through_the_api() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = echo_server(&runtime);
    let dir = scratch("ops");
    let run = Run::start(&dir, &["--url", &server.url(), "--connections", "4"]);
    run.until_ready(4, Duration::from_secs(15));
    let before = run.ready();
    let (&victim, _) = before.iter().next().unwrap();
    let (status, answer) = run.post("/control/drop", &format!(r#"{{"connection": {victim}}}"#));
    assert_eq!(status, 200, "{answer}");
    let t0 = Instant::now();
    while run.ready().contains_key(&victim) || run.ready().len() < 4 {
        assert!(t0.elapsed() < Duration::from_secs(10), "not replaced");
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = run.ready();
    let kept: BTreeSet<&u64> = before.keys().filter(|id| **id != victim).collect();
    assert!(
        kept.iter().all(|id| after.contains_key(id)),
        "others were touched"
    );

    let (status, answer) = run.post("/control/rotate", r#"{"slot": 2}"#);
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = run.post("/control/rotate", r#"{"slot": 2, "connection": 1}"#);
    assert_eq!(
        (status, &answer["field"]),
        (400, &Value::from("connection"))
    );

    let (status, answer) = run.post("/control/pause", "");
    assert_eq!((status, &answer["paused"]), (200, &Value::Bool(true)));
    run.until_ready(0, Duration::from_secs(10));
    let (status, answer) = run.post("/control/resume", "{}");
    assert_eq!((status, &answer["paused"]), (200, &Value::Bool(false)));
    run.until_ready(4, Duration::from_secs(10));
    // GET on a control route: 405.
    let (status, _) = http_get(&run.admin, "/control/pause").unwrap();
    assert_eq!(status, 405);
    drop(server);
}

#[test]
fn the_control_api_needs_a_token_or_a_trusted_listener() {
    let admin = format!("127.0.0.1:{}", free_port());
    let output = std::process::Command::new(common::BIN)
        .args([
            "run",
            "--admin",
            &admin,
            "--admin-control",
            "--duration",
            "1s",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--admin-token-file"), "{stderr}");
}

/// Ready connection ids of each pool, from `/connections`.
fn ids_by_pool(run: &Run) -> BTreeMap<String, BTreeSet<u64>> {
    let mut pools: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for c in run.connections() {
        if c["state"] == "ready" {
            let pool = c["pool"].as_str().expect("pool").to_owned();
            pools
                .entry(pool)
                .or_default()
                .insert(c["id"].as_u64().unwrap());
        }
    }
    pools
}

/// Polls until each pool has the given number of ready connections (and
/// no other is listed).
fn until_pools(run: &Run, want: &[(&str, usize)]) -> BTreeMap<String, BTreeSet<u64>> {
    let t0 = Instant::now();
    loop {
        let listed = run.connections().len();
        let pools = ids_by_pool(run);
        let counts: Vec<(&str, usize)> = pools
            .iter()
            .map(|(p, ids)| (p.as_str(), ids.len()))
            .collect();
        let total: usize = want.iter().map(|(_, n)| n).sum();
        if counts == want && listed == total {
            return pools;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "pools {counts:?} ({listed} listed), not {want:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pools_file(url: &str, a_header: &str, b_connections: &str) -> String {
    format!(
        "[pool.a]\nurl = [\"{url}\"]\nconnections = 4\nheader = [\"X-Pool: {a_header}\"]\n\
         [pool.b]\nurl = [\"{url}\"]\nconnections = {b_connections}\n"
    )
}

#[test]
fn a_reload_applies_only_the_difference() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = echo_server(&runtime);
    let url = server.url();
    let dir = scratch("reload");
    let config = dir.join("wsfleet.toml");
    std::fs::write(&config, pools_file(&url, "one", "4")).unwrap();
    let run = Run::start(&dir, &["--config", config.to_str().unwrap()]);
    let start = until_pools(&run, &[("a", 4), ("b", 4)]);

    // The same file: nothing closes, every id stays.
    let (status, answer) = run.post("/control/reload", "");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["reloaded"], "a unchanged; b unchanged");
    std::thread::sleep(Duration::from_millis(500));
    let same = until_pools(&run, &[("a", 4), ("b", 4)]);
    assert_eq!(
        same, start,
        "a reload that changed nothing closed connections"
    );
    eprintln!("control: connections closed by a reload that changed nothing: 0");

    // A bad file, then a changed process key: refused whole, nothing moves.
    std::fs::write(&config, pools_file(&url, "one", "\"many\"")).unwrap();
    let (status, answer) = run.post("/control/reload", "");
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("connections"),
        "{answer}"
    );
    std::fs::write(
        &config,
        format!("output = \"jsonl\"\n{}", pools_file(&url, "one", "4")),
    )
    .unwrap();
    let (status, answer) = run.post("/control/reload", "");
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("restart"),
        "{answer}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(until_pools(&run, &[("a", 4), ("b", 4)]), start);

    // Pool a's header changes: a is replaced (new ids), b keeps its ids.
    std::fs::write(&config, pools_file(&url, "two", "4")).unwrap();
    let (status, answer) = run.post("/control/reload", "");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["reloaded"], "a replaced; b unchanged");
    let t0 = Instant::now();
    let replaced = loop {
        let pools = until_pools(&run, &[("a", 4), ("b", 4)]);
        if pools["a"].is_disjoint(&start["a"]) {
            break pools;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "pool a not replaced: {pools:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(replaced["b"], start["b"], "pool b was touched");

    // Pool b's count alone changes, by SIGHUP: scaled, its ids kept.
    std::fs::write(&config, pools_file(&url, "two", "6")).unwrap();
    run._process.signal("HUP");
    let scaled = until_pools(&run, &[("a", 4), ("b", 6)]);
    assert!(
        start["b"].is_subset(&scaled["b"]),
        "scaling b replaced some"
    );
    assert_eq!(scaled["a"], replaced["a"], "pool a was touched");
    drop(server);
}
