use std::fmt;
use std::io;
use std::time::Duration;

use wsfleet_proto::{ConfigError, ProtocolError, SendError};

/// Why a connection ended or an operation on it failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The peer broke RFC 6455 or one of our limits; a close frame with
    /// [`ProtocolError::close_code`] was sent.
    Protocol(ProtocolError),
    /// The socket failed.
    Io(io::Error),
    /// A ping went unanswered (nothing at all received) for this long.
    PongTimeout(Duration),
    /// The peer sent more pings within a second than
    /// [`Keepalive::peer_ping_limit`](crate::Keepalive::peer_ping_limit)
    /// allows; a close frame with 1008 (policy violation) was sent.
    PingFlood {
        /// Pings counted in the window when the limit was passed.
        pings: u32,
        /// The limit per second.
        limit: u32,
    },
    /// The peer did not finish the close handshake within the deadline.
    CloseTimeout(Duration),
    /// A message under way stopped arriving: after
    /// [`Progress::message`](crate::Progress::message) of waiting, fewer
    /// bytes came than [`Progress::min_rate`](crate::Progress::min_rate)
    /// asks; a close frame with 1008 was sent and its memory released.
    MessageStalled {
        /// Time spent waiting for the message's bytes.
        waited: Duration,
        /// Bytes that arrived meanwhile.
        received: u64,
    },
    /// Nothing could be written for this long (the peer stopped reading):
    /// see [`Progress::write`](crate::Progress::write).
    WriteStalled(Duration),
    /// TCP ended without a close frame (close code 1006).
    AbnormalClosure {
        /// A frame or message was partly received when it ended.
        mid_message: bool,
    },
    /// The message was not queued; it is handed back inside.
    Send(SendError),
    /// `close` was given a code that may not be sent.
    InvalidCloseCode(ConfigError),
}

impl Error {
    /// The protocol error, if that is what ended the connection.
    pub fn protocol_error(&self) -> Option<&ProtocolError> {
        match self {
            Self::Protocol(e) => Some(e),
            _ => None,
        }
    }

    /// True for the deadline errors.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Self::PongTimeout(_)
                | Self::CloseTimeout(_)
                | Self::MessageStalled { .. }
                | Self::WriteStalled(_)
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Not the peer's fault: no "protocol error" in front of it.
            Self::Protocol(e @ ProtocolError::BudgetExhausted { .. }) => {
                write!(f, "{e}; closed with {}", e.close_code())
            }
            Self::Protocol(e) => write!(f, "protocol error (closed with {}): {e}", e.close_code()),
            Self::Io(e) => write!(f, "socket error: {e}"),
            Self::PongTimeout(d) => write!(f, "peer silent: no answer to ping within {d:?}"),
            Self::PingFlood { pings, limit } => write!(
                f,
                "ping flood: peer sent {pings} pings within a second (limit {limit}); closed with 1008"
            ),
            Self::CloseTimeout(d) => {
                write!(f, "peer did not finish the close handshake within {d:?}")
            }
            Self::MessageStalled { waited, received } => write!(
                f,
                "message stalled: {received} bytes in {:.1} s of waiting, below the minimum rate; closed with 1008",
                waited.as_secs_f64()
            ),
            Self::WriteStalled(d) => {
                write!(f, "write stalled: the peer took nothing for {d:?}")
            }
            Self::AbnormalClosure { mid_message: true } => {
                write!(
                    f,
                    "peer ended TCP without a close frame, in the middle of a message (1006)"
                )
            }
            Self::AbnormalClosure { mid_message: false } => {
                write!(f, "peer ended TCP without a close frame (1006)")
            }
            Self::Send(e) => e.fmt(f),
            Self::InvalidCloseCode(e) => e.fmt(f),
        }
    }
}

/// No `source()`: the message already includes the inner error's text (it
/// is what a disconnect reason and a log line show alone), and a reporter
/// walking the chain would print it twice. Match the variant to reach it.
impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}
