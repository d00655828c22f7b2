//! Integration tests of `wsfleet::Connection` against real peers on
//! loopback: the Python `websockets` server, a Rust server (tokio-tungstenite),
//! wsfleet's own echo server, and scripted raw-TCP peers that misbehave.
//! One binary (rustls' `tests/api.rs` layout) to keep link time low.

mod admin;
mod buffers;
mod chaos;
mod control;
mod credentials;
mod fleet;
mod fleet_1k;
mod heartbeat;
mod hostile;
mod interop;
mod local_address;
mod mtls;
mod peers;
mod proxy;
mod redirect;
mod script;
mod send_rate;
mod slow_consumer;
mod stale;
mod streams;
mod subscriptions;
mod tls;

use std::time::Duration;

use wsfleet::connect::Deadlines;
use wsfleet::{ConnectionConfig, Keepalive};

/// A config with short deadlines, so a failing test fails fast.
pub(crate) fn config() -> ConnectionConfig {
    ConnectionConfig::default().deadlines(
        Deadlines::default()
            .with_handshake(Duration::from_secs(5))
            .with_close(Duration::from_secs(2)),
    )
}

/// An error and its sources, `: `-separated, as a reporter prints it (a
/// `ConnectError` names where it failed; the cause is its source).
pub(crate) fn report(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Keepalive that notices a silent peer within about a second.
pub(crate) fn fast_keepalive() -> Keepalive {
    Keepalive::default()
        .with_interval(Some(Duration::from_millis(200)))
        .with_pong_timeout(Duration::from_millis(400))
}
