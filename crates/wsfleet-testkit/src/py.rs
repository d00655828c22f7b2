//! The Python server peers, as child processes run by the test venv's
//! interpreter: `websockets` (`py/ws_server.py`) and aiohttp
//! (`py/aiohttp_server.py`).

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use tokio::io::{BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout, Command};

use crate::child::ChildServer;
use crate::venv::{SETUP_HINT, require_python};
use crate::{Mode, ServerOptions};

/// How to start a [`PyServer`] beyond its [`Mode`]: the options every child
/// server peer takes (the name predates [`ServerOptions`]).
pub type PyOptions = ServerOptions;

/// A Python `websockets` server on 127.0.0.1, killed when dropped.
///
/// The child also exits by itself when the test process dies (it watches its stdin),
/// so no server outlives a killed test run.
#[derive(Debug)]
pub struct PyServer {
    server: ChildServer,
}

/// An aiohttp server (`aiohttp.web.WebSocketResponse`) on 127.0.0.1, killed
/// when dropped; permessage-deflate (aiohttp's `compress=True`) via
/// [`ServerOptions::deflate`].
///
/// Runs in the same venv as [`PyServer`] and, like it, exits when the test
/// process dies.
#[derive(Debug)]
pub struct AiohttpServer {
    server: ChildServer,
}

/// `crates/wsfleet-testkit/py/NAME`.
fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("py")
        .join(name)
}

pub(crate) fn mode_args(mode: &Mode) -> Vec<String> {
    match mode {
        Mode::Echo => vec!["echo".into()],
        Mode::Silent => vec!["silent".into()],
        Mode::Close { code, reason } => vec!["close".into(), code.to_string(), reason.clone()],
        Mode::Subprotocol(name) => vec!["subprotocol".into(), name.clone()],
        Mode::Headers => vec!["headers".into()],
    }
}

fn venv_hint(stderr: &str) -> Option<String> {
    (stderr.contains("ModuleNotFoundError") || stderr.contains("ImportError"))
        .then(|| format!("the venv lacks a package: {SETUP_HINT}"))
}

/// Starts `py/<script_name>` with `args` (after `--exit-on-stdin-eof`), for
/// the peers that report on stdout and take commands on stdin
/// ([`FeedServer`](crate::FeedServer), [`RateServer`](crate::RateServer)):
/// hands back the child, the rest of its stdout (which the caller must keep
/// reading) and its stdin (which must stay open while the child runs).
pub(crate) async fn start_reporting(
    script_name: &str,
    what: &str,
    args: Vec<String>,
    startup_timeout: std::time::Duration,
) -> io::Result<(ChildServer, Lines<BufReader<ChildStdout>>, ChildStdin)> {
    let python = require_python()?;
    let mut cmd = Command::new(&python);
    cmd.arg("-u")
        .arg(script(script_name))
        .arg("--exit-on-stdin-eof")
        .args(args);
    let (mut server, lines) =
        ChildServer::spawn_with_stdout(cmd, what, startup_timeout, venv_hint).await?;
    let stdin = server
        .take_stdin()
        .ok_or_else(|| io::Error::other(format!("{what}: stdin is not piped")))?;
    Ok((server, lines, stdin))
}

/// Starts `py/<script_name>` in `mode` with `options` (the scripts share their
/// command line).
async fn start_script(
    script_name: &str,
    label: &str,
    mode: &Mode,
    options: &ServerOptions,
) -> io::Result<ChildServer> {
    let python = require_python()?;
    let mut cmd = Command::new(&python);
    cmd.arg("-u")
        .arg(script(script_name))
        .arg("--exit-on-stdin-eof")
        .args(["--port", &options.port.to_string()]);
    if options.deflate {
        cmd.arg("--deflate");
    }
    cmd.args(mode_args(mode));
    // websockets caps a message at 4096 fragments by default; the harness wants
    // `max_size` (64 MiB) to be the only limit.
    if std::env::var_os("WEBSOCKETS_MAX_FRAGMENTS").is_none() {
        cmd.env("WEBSOCKETS_MAX_FRAGMENTS", "1048576");
    }
    let what = format!("{label} ({})", mode_args(mode).join(" "));
    ChildServer::spawn(cmd, &what, options.startup_timeout, venv_hint).await
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
        let server = start_script("ws_server.py", "Python test server", &mode, &options).await?;
        Ok(PyServer { server })
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.port()).into()
    }

    /// `ws://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port())
    }

    /// What the server wrote to stderr so far (its last 64 KiB): handler
    /// exceptions and `websockets` warnings. Handy in assertion messages.
    pub fn stderr(&self) -> String {
        self.server.stderr()
    }

    /// Kills the server now and waits for it to exit (the port is released).
    /// For tests of a peer that goes away; dropping the handle also kills it.
    ///
    /// # Errors
    ///
    /// If the process cannot be killed or waited for.
    pub async fn kill(&mut self) -> io::Result<()> {
        self.server.kill().await
    }
}

impl AiohttpServer {
    /// Starts a server in `mode` with default [`ServerOptions`] (no compression).
    ///
    /// # Errors
    ///
    /// As [`PyServer::start`]; a venv without aiohttp gets the same hint.
    pub async fn start(mode: Mode) -> io::Result<AiohttpServer> {
        Self::start_with(mode, ServerOptions::default()).await
    }

    /// Starts a server in `mode` with `options`.
    ///
    /// # Errors
    ///
    /// As [`AiohttpServer::start`].
    pub async fn start_with(mode: Mode, options: ServerOptions) -> io::Result<AiohttpServer> {
        let server =
            start_script("aiohttp_server.py", "aiohttp test server", &mode, &options).await?;
        Ok(AiohttpServer { server })
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.port()).into()
    }

    /// `ws://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port())
    }

    /// What the server wrote to stderr so far (its last 64 KiB).
    pub fn stderr(&self) -> String {
        self.server.stderr()
    }

    /// Kills the server now and waits for it to exit.
    ///
    /// # Errors
    ///
    /// If the process cannot be killed or waited for.
    pub async fn kill(&mut self) -> io::Result<()> {
        self.server.kill().await
    }
}
