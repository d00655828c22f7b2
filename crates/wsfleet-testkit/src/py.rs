//! The Python `websockets` server peer (`py/ws_server.py`), as a child process.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::task::JoinHandle;

use crate::Mode;
use crate::capture::Captured;
use crate::venv::{SETUP_HINT, require_python};

/// How to start a [`PyServer`] beyond its [`Mode`].
#[derive(Debug, Clone)]
pub struct PyOptions {
    /// Offer permessage-deflate (`compression="deflate"`). Default: off.
    pub deflate: bool,
    /// Port on 127.0.0.1; 0 (the default) lets the OS pick one. A fixed port is
    /// for restarting a server where a client expects it (reconnect tests).
    pub port: u16,
    /// How long to wait for the server to report its port. Default: 20 s.
    pub startup_timeout: Duration,
}

impl Default for PyOptions {
    fn default() -> Self {
        PyOptions {
            deflate: false,
            port: 0,
            startup_timeout: Duration::from_secs(20),
        }
    }
}

/// A Python `websockets` server on 127.0.0.1, killed when dropped.
///
/// The child also exits by itself when the test process dies (it watches its stdin),
/// so no server outlives a killed test run.
#[derive(Debug)]
pub struct PyServer {
    child: Child,
    // Held open: the child exits when it closes.
    _stdin: Option<ChildStdin>,
    port: u16,
    stderr: Captured,
}

/// `crates/wsfleet-testkit/py/ws_server.py`.
fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("py")
        .join("ws_server.py")
}

fn mode_args(mode: &Mode) -> Vec<String> {
    match mode {
        Mode::Echo => vec!["echo".into()],
        Mode::Silent => vec!["silent".into()],
        Mode::Close { code, reason } => vec!["close".into(), code.to_string(), reason.clone()],
        Mode::Subprotocol(name) => vec!["subprotocol".into(), name.clone()],
        Mode::Headers => vec!["headers".into()],
    }
}

impl PyServer {
    /// Starts a server in `mode` with default [`PyOptions`] (no compression).
    ///
    /// # Errors
    ///
    /// When the venv is missing (the message says to run `scripts/test` or
    /// `scripts/setup-venv`), when Python cannot be spawned, or when the server
    /// exits or does not report its port in time (the message has its stderr).
    pub async fn start(mode: Mode) -> io::Result<PyServer> {
        Self::start_with(mode, PyOptions::default()).await
    }

    /// Starts an echo server: `PyServer::start(Mode::Echo)`.
    ///
    /// # Errors
    ///
    /// As [`PyServer::start`].
    pub async fn echo() -> io::Result<PyServer> {
        Self::start(Mode::Echo).await
    }

    /// Starts a server in `mode` with `options`.
    ///
    /// # Errors
    ///
    /// As [`PyServer::start`].
    pub async fn start_with(mode: Mode, options: PyOptions) -> io::Result<PyServer> {
        let python = require_python()?;
        let script = script();
        let mut cmd = Command::new(&python);
        cmd.arg("-u")
            .arg(&script)
            .arg("--exit-on-stdin-eof")
            .args(["--port", &options.port.to_string()]);
        if options.deflate {
            cmd.arg("--deflate");
        }
        cmd.args(mode_args(&mode));
        // websockets caps a message at 4096 fragments by default; the harness wants
        // `max_size` (64 MiB) to be the only limit.
        if std::env::var_os("WEBSOCKETS_MAX_FRAGMENTS").is_none() {
            cmd.env("WEBSOCKETS_MAX_FRAGMENTS", "1048576");
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("spawning {} {}: {e}", python.display(), script.display()),
            )
        })?;
        let stdin = child.stdin.take();
        let (stderr, stderr_done) =
            Captured::spawn_reader(child.stderr.take().expect("stderr is piped"));
        let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();

        let what = format!("Python test server ({})", mode_args(&mode).join(" "));
        let startup = tokio::time::timeout(options.startup_timeout, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(port) = line.strip_prefix("LISTENING ") {
                    return port.trim().parse::<u16>().map(Some).map_err(|e| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("bad port line {line:?}: {e}"),
                        )
                    });
                }
            }
            Ok(None) // stdout closed: the server exited
        })
        .await;
        let problem = match startup {
            Ok(Ok(Some(port))) => {
                // Drain stdout so a chatty server never blocks on a full pipe.
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                return Ok(PyServer {
                    child,
                    _stdin: stdin,
                    port,
                    stderr,
                });
            }
            Ok(Ok(None)) => "exited before it reported its port".to_owned(),
            Ok(Err(e)) => format!("failed while starting: {e}"),
            Err(_) => format!(
                "did not report its port within {:?}",
                options.startup_timeout
            ),
        };
        Err(startup_error(&what, &problem, child, &stderr, stderr_done).await)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.port).into()
    }

    /// `ws://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }

    /// What the server wrote to stderr so far (its last 64 KiB): handler
    /// exceptions and `websockets` warnings. Handy in assertion messages.
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// Kills the server now and waits for it to exit (the port is released).
    /// For tests of a peer that goes away; dropping the handle also kills it.
    ///
    /// # Errors
    ///
    /// If the process cannot be killed or waited for.
    pub async fn kill(&mut self) -> io::Result<()> {
        self.child.kill().await
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        // kill_on_drop does the same; being explicit costs nothing.
        let _ = self.child.start_kill();
    }
}

async fn startup_error(
    what: &str,
    problem: &str,
    mut child: Child,
    stderr: &Captured,
    stderr_done: JoinHandle<()>,
) -> io::Error {
    let _ = child.start_kill();
    let status: Option<ExitStatus> = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .ok()
        .and_then(Result::ok);
    let _ = tokio::time::timeout(Duration::from_secs(2), stderr_done).await;
    let text = stderr.text();
    let hint = if text.contains("ModuleNotFoundError") || text.contains("ImportError") {
        format!("\nhint: the venv lacks a package: {SETUP_HINT}")
    } else {
        String::new()
    };
    io::Error::other(format!(
        "{what} {problem} ({}); its stderr:\n{}{hint}",
        status.map_or_else(|| "exit status unknown".to_owned(), |s| s.to_string()),
        if text.trim().is_empty() {
            "(empty)"
        } else {
            text.trim_end()
        },
    ))
}
