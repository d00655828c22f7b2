//! Every bound a peer can push against, in one place.
//!
//! Each field says its unit, its default, why that default, and what happens
//! when a peer exceeds it. Spec constants (such as the 125-byte control frame
//! payload) are `const`s in [`crate::frame`], not settings.

use crate::error::ConfigError;
use crate::frame::MAX_CONTROL_PAYLOAD;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// The smallest `max_message`: a message must be able to hold what a
/// control frame can (a ping's payload is echoed, a close reason read).
const MIN_MESSAGE: usize = MAX_CONTROL_PAYLOAD;
/// The smallest `max_handshake_bytes`: a minimal 101 answer with its three
/// required headers is about 130 bytes.
const MIN_HANDSHAKE_BYTES: usize = 256;
/// The fewest `max_handshake_headers`: the three a 101 needs, and room for
/// a subprotocol, an extension and a few a server adds.
const MIN_HANDSHAKE_HEADERS: usize = 8;
/// The smallest `max_outbound_bytes`: the largest control frame (a close or
/// pong: header and 125 bytes) fits, with room to spare.
const MIN_OUTBOUND_BYTES: usize = 256;
/// The smallest `read_chunk`: a small message and its header fit.
const MIN_READ_CHUNK: usize = 64;
/// The largest `read_chunk`: the default `max_frame_payload`; a larger step
/// gains nothing.
const MAX_READ_CHUNK: usize = 16 * MIB;

/// Bounds on everything a peer can influence.
///
/// ```
/// use wsfleet_proto::Limits;
/// let limits = Limits::default()
///     .with_max_message(1 << 20)
///     .with_max_frame_payload(1 << 20);
/// assert!(limits.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest payload of one frame, in bytes. Default 16 MiB: the largest
    /// single frame the Autobahn suite sends, and tungstenite's default.
    /// Checked against the length the header *declares*, before a byte of
    /// payload is buffered; exceeding it closes with 1009.
    pub max_frame_payload: usize,
    /// Largest message (all fragments together; for a compressed message,
    /// its inflated size too), in bytes. Default 64 MiB. Checked at each frame
    /// header against what is already reassembled, and while inflating
    /// (a deflate bomb stops here); exceeding it closes with 1009.
    pub max_message: usize,
    /// Most frames one message may be split into. Default 131,072 (Autobahn
    /// 9.3.1 sends 4 MiB in 65,536 frames of 64 bytes). Empty continuation
    /// frames cost CPU but no memory; this stops a peer that streams them
    /// forever. Exceeding it closes with 1008.
    pub max_fragments: usize,
    /// Largest handshake response (status line and headers), in bytes.
    /// Default 16 KiB, far above any real server's 101 answer. Exceeding it
    /// fails the handshake.
    pub max_handshake_bytes: usize,
    /// Most headers in the handshake response. Default 64. Exceeding it fails
    /// the handshake.
    pub max_handshake_headers: usize,
    /// Outbound bytes queued but not yet written. Default 1 MiB. When the
    /// queue holds more, `send` hands the message back (`SendError::Full`)
    /// and the runtime stops reading until the queue drains. A single message
    /// larger than this is accepted only into an empty queue.
    pub max_outbound_bytes: usize,
    /// Step by which the read buffer grows when it is full and more bytes are
    /// due, in bytes. Default 4 KiB (as rustls). While one frame is arriving
    /// the buffer grows at most by doubling what has *arrived*, never by what
    /// the header claims; it is released when empty.
    pub read_chunk: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_payload: 16 * MIB,
            max_message: 64 * MIB,
            max_fragments: 131_072,
            max_handshake_bytes: 16 * KIB,
            max_handshake_headers: 64,
            max_outbound_bytes: MIB,
            read_chunk: 4 * KIB,
        }
    }
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident, $field:ident) => {
        $(#[$doc])*
        #[must_use]
        pub const fn $name(mut self, value: usize) -> Self {
            self.$field = value;
            self
        }
    };
}

impl Limits {
    setter!(
        /// Sets [`Limits::max_frame_payload`].
        with_max_frame_payload,
        max_frame_payload
    );
    setter!(
        /// Sets [`Limits::max_message`].
        with_max_message,
        max_message
    );
    setter!(
        /// Sets [`Limits::max_fragments`].
        with_max_fragments,
        max_fragments
    );
    setter!(
        /// Sets [`Limits::max_handshake_bytes`].
        with_max_handshake_bytes,
        max_handshake_bytes
    );
    setter!(
        /// Sets [`Limits::max_handshake_headers`].
        with_max_handshake_headers,
        max_handshake_headers
    );
    setter!(
        /// Sets [`Limits::max_outbound_bytes`].
        with_max_outbound_bytes,
        max_outbound_bytes
    );
    setter!(
        /// Sets [`Limits::read_chunk`].
        with_read_chunk,
        read_chunk
    );

    /// Checks that the limits make sense together.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first field that is out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, value: usize, problem| {
            Err(ConfigError {
                field,
                value: value.to_string(),
                problem,
            })
        };
        if self.max_message < MIN_MESSAGE {
            return err(
                "max_message",
                self.max_message,
                "must be at least 125 bytes",
            );
        }
        if self.max_frame_payload == 0 || self.max_frame_payload > self.max_message {
            return err(
                "max_frame_payload",
                self.max_frame_payload,
                "must be between 1 and max_message",
            );
        }
        if self.max_fragments == 0 {
            return err("max_fragments", self.max_fragments, "must be at least 1");
        }
        if self.max_handshake_bytes < MIN_HANDSHAKE_BYTES {
            return err(
                "max_handshake_bytes",
                self.max_handshake_bytes,
                "must be at least 256 bytes",
            );
        }
        if self.max_handshake_headers < MIN_HANDSHAKE_HEADERS {
            return err(
                "max_handshake_headers",
                self.max_handshake_headers,
                "must be at least 8",
            );
        }
        if self.max_outbound_bytes < MIN_OUTBOUND_BYTES {
            return err(
                "max_outbound_bytes",
                self.max_outbound_bytes,
                "must be at least 256 bytes",
            );
        }
        if !(MIN_READ_CHUNK..=MAX_READ_CHUNK).contains(&self.read_chunk) {
            return err(
                "read_chunk",
                self.read_chunk,
                "must be between 64 bytes and 16 MiB",
            );
        }
        Ok(())
    }

    /// The most bytes one connection's protocol buffers can hold at once
    /// without compression: a frame being read, a message being
    /// reassembled, and the outbound queue (plus one read chunk of slack).
    /// With permessage-deflate add [`crate::deflate::INFLATE_CONTEXT_BYTES`],
    /// `max_message` + [`crate::deflate::INFLATE_CHUNK`] for the inflated
    /// output, and the compressor ([`crate::deflate::deflate_context_bytes`]).
    /// Every byte of it is charged to the budget either way.
    pub const fn max_buffered(&self) -> usize {
        self.max_frame_payload
            .saturating_mul(2)
            .saturating_add(self.max_message)
            .saturating_add(self.max_outbound_bytes)
            .saturating_add(self.read_chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Limits::default().validate(), Ok(()));
    }

    #[test]
    fn frame_above_message_is_rejected_with_field() {
        let e = Limits::default()
            .with_max_message(1000)
            .with_max_frame_payload(2000)
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "max_frame_payload");
        assert_eq!(e.value, "2000");
    }

    #[test]
    fn each_bound_is_enforced_at_the_value_its_message_names() {
        let d = Limits::default();
        for (below, at, field, min) in [
            (
                d.with_max_message(MIN_MESSAGE - 1),
                d.with_max_message(MIN_MESSAGE)
                    .with_max_frame_payload(MIN_MESSAGE),
                "max_message",
                MIN_MESSAGE,
            ),
            (
                d.with_max_handshake_bytes(MIN_HANDSHAKE_BYTES - 1),
                d.with_max_handshake_bytes(MIN_HANDSHAKE_BYTES),
                "max_handshake_bytes",
                MIN_HANDSHAKE_BYTES,
            ),
            (
                d.with_max_handshake_headers(MIN_HANDSHAKE_HEADERS - 1),
                d.with_max_handshake_headers(MIN_HANDSHAKE_HEADERS),
                "max_handshake_headers",
                MIN_HANDSHAKE_HEADERS,
            ),
            (
                d.with_max_outbound_bytes(MIN_OUTBOUND_BYTES - 1),
                d.with_max_outbound_bytes(MIN_OUTBOUND_BYTES),
                "max_outbound_bytes",
                MIN_OUTBOUND_BYTES,
            ),
            (
                d.with_read_chunk(MIN_READ_CHUNK - 1),
                d.with_read_chunk(MIN_READ_CHUNK),
                "read_chunk",
                MIN_READ_CHUNK,
            ),
        ] {
            let e = below.validate().unwrap_err();
            assert_eq!(e.field, field);
            assert!(e.problem.contains(&min.to_string()), "{e}");
            assert_eq!(at.validate(), Ok(()), "{field} = {min}");
        }
        assert_eq!(d.with_read_chunk(MAX_READ_CHUNK).validate(), Ok(()));
        let e = d
            .with_read_chunk(MAX_READ_CHUNK + 1)
            .validate()
            .unwrap_err();
        assert!(e.problem.contains("16 MiB"), "{e}");
    }
}
