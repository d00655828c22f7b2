//! The headers of the bus, in one place.
//!
//! On every message a [`Sink`](crate::Sink) publishes:
//!
//! | header | value |
//! |---|---|
//! | [`CONN`] `Wsfleet-Conn` | the connection id, a number (`c12` in logs is `12` here) |
//! | [`SLOT`] `Wsfleet-Slot` | the slot index, a number |
//! | [`URL`] `Wsfleet-Url` | the upstream URL, query and password replaced by `REDACTED` |
//! | [`RECEIVED`] `Wsfleet-Received-Ms` | when the fleet handed it over, Unix milliseconds |
//! | [`KIND`] `Wsfleet-Kind` | `text` or `binary` |
//! | [`SEQ`] `Wsfleet-Seq` | its number among the messages of its connection, from 1 |
//! | `Nats-Msg-Id` | `<instance>-<conn>-<seq>`: JetStream stores a retried publish once |
//!
//! `<instance>` is random per sink (per `wsfleet run`), so two runs never
//! share ids. On an outbound message a [`Source`](crate::Source) reads:
//!
//! | header | meaning |
//! |---|---|
//! | [`CONN`] `Wsfleet-Conn` | send to this connection (`12` or `c12`) |
//! | [`SLOT`] `Wsfleet-Slot` | send to this slot's ready connection (`3` or `s3`) |
//! | [`TARGET`] `Wsfleet-Target` | `any` (default: a ready connection, round robin) or `all` |
//! | [`KIND`] `Wsfleet-Kind` | `text` (default; the body must be UTF-8) or `binary` |
//! | [`REPLY`] `Wsfleet-Reply` | where to answer if it cannot be delivered (JetStream messages have no reply subject of their own) |
//!
//! An answer about an undeliverable message carries [`ERROR`]
//! `Wsfleet-Error` (the reason) and the original body.

/// The connection id.
pub const CONN: &str = "Wsfleet-Conn";
/// The slot index.
pub const SLOT: &str = "Wsfleet-Slot";
/// The upstream URL, redacted.
pub const URL: &str = "Wsfleet-Url";
/// Receive time, Unix milliseconds.
pub const RECEIVED: &str = "Wsfleet-Received-Ms";
/// `text` or `binary`.
pub const KIND: &str = "Wsfleet-Kind";
/// The message's number on its connection, from 1.
pub const SEQ: &str = "Wsfleet-Seq";
/// `any` or `all` (outbound).
pub const TARGET: &str = "Wsfleet-Target";
/// Where to answer an undeliverable outbound message.
pub const REPLY: &str = "Wsfleet-Reply";
/// Why an outbound message was not delivered (on the answer).
pub const ERROR: &str = "Wsfleet-Error";
