//! Errors of the protocol core, and the one place that maps them to close codes.

use std::fmt;

use crate::frame::{CloseCode, MAX_CONTROL_PAYLOAD};
use crate::message::Message;

/// A violation of RFC 6455 or of a [`crate::Limits`] bound by the peer (or a
/// failed budget reservation). Fatal for the connection: the machine keeps it
/// (later calls return it again) and schedules a close frame with
/// [`ProtocolError::close_code`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// RSV bits set without a negotiated extension that defines them.
    ReservedBits(u8),
    /// A reserved opcode.
    UnknownOpcode(u8),
    /// A 64-bit payload length with the most significant bit set.
    InvalidLength,
    /// A server received an unmasked frame from a client.
    UnmaskedFrame,
    /// A client received a masked frame from a server.
    MaskedFrame,
    /// A control frame with more than [`MAX_CONTROL_PAYLOAD`] (125) bytes of
    /// payload.
    ControlFrameTooLarge {
        /// Declared length.
        len: u64,
    },
    /// A control frame without FIN.
    FragmentedControlFrame,
    /// A continuation frame with no message in progress.
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is in progress.
    ExpectedContinuation,
    /// A frame header declared more payload than `max_frame_payload`.
    FrameTooLarge {
        /// Declared payload length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A message would grow beyond `max_message`.
    MessageTooLarge {
        /// Size the message would reach.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The read buffer would pass its hard cap, one whole frame and one read
    /// chunk of the next (`max_frame_payload` + the largest header +
    /// `read_chunk`): more than any frame can need, so more bytes were handed
    /// in than `poll_event` was given the chance to parse (not drained between
    /// reads, or one huge [`feed`](crate::Protocol::feed)).
    ReadBufferFull {
        /// Bytes the buffer held unparsed.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// A message was split into more than `max_fragments` frames.
    TooManyFragments {
        /// The limit.
        max: usize,
    },
    /// A text message or close reason that is not UTF-8.
    InvalidUtf8,
    /// A close frame with a code that may not appear on the wire.
    InvalidCloseCode(u16),
    /// A close frame with a 1-byte payload.
    InvalidClosePayload,
    /// A compressed message that does not inflate.
    InvalidCompressedData,
    /// The memory budget refused a buffer growth, or took the connection's
    /// memory back for others (`requested` 0).
    BudgetExhausted {
        /// Bytes the connection asked for; 0 when it was evicted.
        requested: usize,
        /// Bytes the connection already held.
        held: usize,
    },
}

impl ProtocolError {
    /// The close code this error deserves on the wire: the one exhaustive
    /// mapping (as rustls maps errors to alerts).
    pub const fn close_code(&self) -> CloseCode {
        match self {
            Self::ReservedBits(_)
            | Self::UnknownOpcode(_)
            | Self::InvalidLength
            | Self::UnmaskedFrame
            | Self::MaskedFrame
            | Self::ControlFrameTooLarge { .. }
            | Self::FragmentedControlFrame
            | Self::UnexpectedContinuation
            | Self::ExpectedContinuation
            | Self::InvalidCloseCode(_)
            | Self::InvalidClosePayload => CloseCode::PROTOCOL_ERROR,
            Self::InvalidUtf8 | Self::InvalidCompressedData => CloseCode::INVALID_PAYLOAD,
            Self::TooManyFragments { .. } => CloseCode::POLICY_VIOLATION,
            Self::FrameTooLarge { .. }
            | Self::MessageTooLarge { .. }
            | Self::ReadBufferFull { .. }
            | Self::BudgetExhausted { .. } => CloseCode::MESSAGE_TOO_BIG,
        }
    }

    /// A short reason for the close frame (fits
    /// [`MAX_CLOSE_REASON`](crate::frame::MAX_CLOSE_REASON)).
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::ReservedBits(_) => "reserved bits set",
            Self::UnknownOpcode(_) => "reserved opcode",
            Self::InvalidLength => "invalid payload length",
            Self::UnmaskedFrame => "unmasked client frame",
            Self::MaskedFrame => "masked server frame",
            Self::ControlFrameTooLarge { .. } => "control frame too large",
            Self::FragmentedControlFrame => "fragmented control frame",
            Self::UnexpectedContinuation => "continuation without a message",
            Self::ExpectedContinuation => "new message inside a fragmented message",
            Self::FrameTooLarge { .. } => "frame too large",
            Self::MessageTooLarge { .. } => "message too large",
            Self::ReadBufferFull { .. } => "read buffer full",
            Self::TooManyFragments { .. } => "too many fragments",
            Self::InvalidUtf8 => "invalid UTF-8",
            Self::InvalidCompressedData => "invalid compressed data",
            Self::InvalidCloseCode(_) => "invalid close code",
            Self::InvalidClosePayload => "invalid close payload",
            Self::BudgetExhausted { .. } => "memory budget exhausted",
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReservedBits(bits) => {
                write!(f, "reserved bits {bits:#05b} set without an extension")
            }
            Self::UnknownOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            Self::ControlFrameTooLarge { len } => {
                write!(
                    f,
                    "control frame of {len} bytes (at most {MAX_CONTROL_PAYLOAD} allowed)"
                )
            }
            Self::FrameTooLarge { len, max } => {
                write!(
                    f,
                    "frame of {len} bytes exceeds max_frame_payload ({max} bytes)"
                )
            }
            Self::MessageTooLarge { len, max } => {
                write!(
                    f,
                    "message of at least {len} bytes exceeds max_message ({max} bytes)"
                )
            }
            Self::ReadBufferFull { len, max } => write!(
                f,
                "read buffer holds {len} unparsed bytes and may not grow past {max} \
                 (one max_frame_payload frame, its header and one read_chunk)"
            ),
            Self::TooManyFragments { max } => {
                write!(
                    f,
                    "message split into more than max_fragments ({max}) frames"
                )
            }
            Self::InvalidCloseCode(code) => write!(f, "invalid close code {code}"),
            // 0 requested: evicted, another connection needed the memory.
            Self::BudgetExhausted { requested: 0, held } => write!(
                f,
                "memory budget exhausted: closed so other connections could read (this one held {held} bytes)"
            ),
            Self::BudgetExhausted { requested, held } => write!(
                f,
                "memory budget exhausted: could not reserve {requested} more bytes (connection holds {held})"
            ),
            other => f.write_str(other.as_str()),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// A message the protocol machine did not accept; the message is handed back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The outbound queue holds `max_outbound_bytes` already: flush and retry.
    Full(Message),
    /// A close frame was sent (or the connection failed): nothing more can go out.
    Closed(Message),
    /// The memory budget refused the bytes the message needs.
    BudgetExhausted(Message),
}

impl SendError {
    /// The message that was not sent.
    pub fn into_message(self) -> Message {
        match self {
            Self::Full(m) | Self::Closed(m) | Self::BudgetExhausted(m) => m,
        }
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(m) => write!(
                f,
                "outbound queue full; message of {} bytes not queued",
                m.len()
            ),
            Self::Closed(m) => write!(
                f,
                "connection closing; message of {} bytes not sent",
                m.len()
            ),
            Self::BudgetExhausted(m) => {
                write!(
                    f,
                    "memory budget exhausted; message of {} bytes not queued",
                    m.len()
                )
            }
        }
    }
}

impl std::error::Error for SendError {}

/// A configuration value out of range: which field, which value, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The field.
    pub field: &'static str,
    /// The value given.
    pub value: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} = {}: {}",
            self.field, self.value, self.problem
        )
    }
}

impl std::error::Error for ConfigError {}
