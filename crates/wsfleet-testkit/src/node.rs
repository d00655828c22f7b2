//! The Node.js `ws` server peer (`node/ws_server.js`), as a child process.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use tokio::process::Command;

use crate::child::ChildServer;
use crate::py::mode_args;
use crate::{Mode, ServerOptions};

/// How to start a [`NodeServer`] beyond its [`Mode`].
pub type NodeOptions = ServerOptions;

/// What to do when Node.js or the `ws` package is missing.
const NODE_SETUP_HINT: &str = "run scripts/test (or scripts/setup-node) first";

/// A Node.js `ws` server on 127.0.0.1, killed when dropped.
///
/// The same [`Mode`]s as [`crate::PyServer`]; with [`ServerOptions::deflate`]
/// it offers permessage-deflate and compresses every message, however short.
/// The child exits by itself when the test process dies (it watches its stdin).
///
/// Needs `node` (>= 18; `$WSFLEET_NODE` overrides the one on `PATH`) and the
/// `ws` package in `crates/wsfleet-testkit/node/node_modules`, which
/// `scripts/setup-node` installs from the committed lockfile.
#[derive(Debug)]
pub struct NodeServer {
    server: ChildServer,
}

/// `crates/wsfleet-testkit/node`: the server script, `package.json`, the
/// lockfile and (after `scripts/setup-node`) `node_modules`.
pub fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("node")
}

/// The Node.js binary: `$WSFLEET_NODE` if set and not empty, else `node`.
pub fn node() -> PathBuf {
    match std::env::var_os("WSFLEET_NODE") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from("node"),
    }
}

fn node_hint(stderr: &str) -> Option<String> {
    stderr
        .contains("Cannot find module")
        .then(|| format!("node_modules is incomplete: {NODE_SETUP_HINT}"))
}

impl NodeServer {
    /// Starts a server in `mode` with default [`NodeOptions`] (no compression).
    ///
    /// # Errors
    ///
    /// When `ws` is not installed or `node` cannot be spawned (the messages say
    /// to run `scripts/setup-node`), or when the server exits or does not report
    /// its port in time (the message has its stderr).
    pub async fn start(mode: Mode) -> io::Result<NodeServer> {
        Self::start_with(mode, NodeOptions::default()).await
    }

    /// Starts an echo server: `NodeServer::start(Mode::Echo)`.
    ///
    /// # Errors
    ///
    /// As [`NodeServer::start`].
    pub async fn echo() -> io::Result<NodeServer> {
        Self::start(Mode::Echo).await
    }

    /// Starts a server in `mode` with `options`.
    ///
    /// # Errors
    ///
    /// As [`NodeServer::start`].
    pub async fn start_with(mode: Mode, options: NodeOptions) -> io::Result<NodeServer> {
        let dir = node_dir();
        let ws = dir.join("node_modules").join("ws").join("package.json");
        if !ws.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "the Node.js `ws` package is missing (no {}); {NODE_SETUP_HINT}",
                    ws.display()
                ),
            ));
        }
        let node = node();
        let mut cmd = Command::new(&node);
        cmd.current_dir(&dir)
            .arg(dir.join("ws_server.js"))
            .arg("--exit-on-stdin-eof")
            .args(["--port", &options.port.to_string()]);
        if options.deflate {
            cmd.arg("--deflate");
        }
        cmd.args(mode_args(&mode));
        let what = format!("Node.js ws test server ({})", mode_args(&mode).join(" "));
        let server = ChildServer::spawn(cmd, &what, options.startup_timeout, node_hint)
            .await
            .map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "{e}; is Node.js installed (set WSFLEET_NODE to use another \
                             binary)? {NODE_SETUP_HINT}"
                        ),
                    )
                } else {
                    e
                }
            })?;
        Ok(NodeServer { server })
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
