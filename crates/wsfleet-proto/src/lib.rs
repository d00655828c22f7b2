//! Sans-I/O RFC 6455 WebSocket protocol core with hard memory bounds.
//!
//! Bytes in, events out; bytes out for what we send. No sockets, no async
//! runtime, no clock, no randomness: [`Protocol`] is driven by a runtime
//! (the `wsfleet` crate on tokio) or by a test.
//!
//! # Threat model: what each limit stops
//!
//! A peer controls every byte we read. The machine never lets those bytes
//! decide how much memory it allocates:
//!
//! - **A header that lies about its length** (`2^62` bytes) is rejected at the
//!   header by [`Limits::max_frame_payload`], before any payload is buffered.
//!   Below the limit, the read buffer still grows only with bytes that
//!   *arrived*, so a peer that claims 16 MiB and trickles one byte a second
//!   costs what it sent, not what it claimed.
//! - **An endless fragmented message** is cut by [`Limits::max_message`]
//!   (checked at each continuation header) and [`Limits::max_fragments`].
//! - **Invalid UTF-8** fails as soon as the first bad sequence arrives, even
//!   mid-frame, not at the end of a large message.
//! - **A ping flood** keeps one pong slot (newest wins): 125 bytes at most.
//! - **A peer that never reads** fills the outbound queue to
//!   [`Limits::max_outbound_bytes`]; then `send` hands messages back and
//!   [`Protocol::wants_read`] turns false, so nothing grows.
//! - **A huge or endless handshake response** is cut by
//!   [`Limits::max_handshake_bytes`] and [`Limits::max_handshake_headers`].
//! - **Many connections at once**: every buffer growth is charged to an
//!   optional shared [`MemoryBudget`]; a refused charge fails that one
//!   connection with close 1009.

//!
//! # Public surface
//!
//! The machine and its vocabulary are at the crate root. Three modules hold
//! what a user of a part needs on its own: [`frame`] (header codec, close
//! codes and the RFC's constants), [`handshake`] (the opening handshake,
//! both roles) and [`deflate`] (permessage-deflate offer, answer and the
//! context costs for sizing a budget). Masking and UTF-8 validation are
//! internals: not API, and free to change.

pub mod deflate;
pub mod frame;
pub mod handshake;

mod budget;
mod error;
mod event;
mod keys;
mod limits;
mod mask;
mod message;
mod protocol;
mod utf8;

pub use budget::MemoryBudget;
pub use error::{ConfigError, ProtocolError, SendError};
pub use event::Event;
pub use frame::{CloseCode, CloseFrame, OpCode};
pub use handshake::HandshakeError;
pub use keys::{FixedKey, MaskKeys};
pub use limits::Limits;
pub use message::{Message, Utf8Bytes};
pub use protocol::{Protocol, Role};
pub use utf8::InvalidUtf8;

pub use bytes::Bytes;

/// Not API: the helpers `wsfleet`'s own test servers and this crate's
/// benchmarks use (masking, UTF-8 validation). They may change or go in any
/// release; nothing outside this workspace should name them.
#[doc(hidden)]
pub mod internals {
    pub use crate::mask::{apply_mask, mask_into_uninit};
    pub use crate::utf8::{Utf8Validator, validate};
}
