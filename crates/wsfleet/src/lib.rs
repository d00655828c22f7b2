//! Fleets of persistent WebSocket client connections on tokio: bounded,
//! supervised, observable.
//!
//! The protocol lives in [`wsfleet_proto`] (sans-I/O); this crate moves its
//! bytes: [`connect`] opens the transport (DNS, TCP, TLS, proxies) with a
//! deadline per phase, [`Connection`] runs one WebSocket on it, [`fleet`]
//! keeps many of them ready under one memory budget, [`admin`] serves their
//! metrics and state over HTTP, and [`serve`] has the echo and hostile
//! servers that tests and demos talk to.
//!
//! Dependencies, and what each saves us from writing: `tokio` (runtime,
//! sockets, timers), `tokio-util` (reading into uninitialised buffer space
//! without `unsafe` here), `rustls` + `tokio-rustls` + `webpki-roots` /
//! `rustls-native-certs` (TLS and its trust roots), `url` and
//! `percent-encoding` (URL parsing, proxy userinfo), `httparse` + `base64`
//! (the HTTP CONNECT proxy's answer and basic auth), `getrandom` (the OS
//! CSPRNG: masking keys, nonces, jitter seeds), `hyper` (the admin HTTP
//! server), `serde` + `serde_json` (`/connections`), `tracing` (structured
//! logs).

pub mod admin;
pub mod connect;
mod connection;
pub mod fleet;
mod keys;
mod listen;
mod rng;
pub mod serve;

pub use connection::{Connection, ConnectionConfig, ConnectionStats, Error, Keepalive, Progress};
pub use keys::OsRngKeys;
pub use wsfleet_proto::{self as proto, CloseCode, CloseFrame, Limits, Message, Role, Utf8Bytes};

// What users move into tasks or share between them is `Send`, and `Sync`
// where it can be; checked when the crate compiles. `Connection` is `Send`
// only (its masking-key source is): one task drives it, by `&mut self`.
const _: () = {
    const fn send<T: Send + 'static>() {}
    const fn send_sync<T: Send + Sync + 'static>() {}
    send::<Connection>();
    send_sync::<fleet::Fleet>();
    send_sync::<fleet::FleetMonitor>();
    send_sync::<fleet::Events>();
    send_sync::<fleet::Event>();
    send_sync::<Error>();
    send_sync::<fleet::DisconnectReason>();
    send_sync::<connect::ConnectError>();
};
