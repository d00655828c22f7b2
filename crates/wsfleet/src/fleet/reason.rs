//! Why a connection of the fleet ended: a typed, cloneable record (not an
//! error type) carried by events and stats.

use std::fmt;
use std::time::Duration;

use wsfleet_proto::{CloseCode, ProtocolError};

use crate::Error;
use crate::connect::{ConnectError, ConnectErrorKind, Phase};
use crate::proto::HandshakeError;

/// Why a fleet connection ended (or never started).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// Opening failed in `phase`; `retry_after` if the server asked for it.
    ConnectFailed {
        /// Where it failed.
        phase: Phase,
        /// What happened, as the error displays it.
        error: String,
        /// A `Retry-After` from a 429 or 503 answer.
        retry_after: Option<Duration>,
    },
    /// The on-connect hook returned an error.
    HookFailed(String),
    /// The peer closed the connection with a close frame.
    ClosedByPeer {
        /// The code, if the frame had one.
        code: Option<CloseCode>,
        /// The reason text.
        reason: String,
    },
    /// The peer broke the protocol or a limit (the memory budget included).
    Protocol(ProtocolError),
    /// A ping went unanswered.
    PongTimeout,
    /// A started message stopped arriving (see [`crate::Progress`]).
    MessageStalled,
    /// The peer stopped taking what we write (see [`crate::Progress`]).
    WriteStalled,
    /// The consumer of the fleet's events fell behind for longer than
    /// [`SlowConsumer::Disconnect`](super::SlowConsumer::Disconnect) allows.
    SlowConsumer,
    /// The peer sent pings faster than
    /// [`Keepalive::peer_ping_limit`](crate::Keepalive::peer_ping_limit).
    PingFlood,
    /// TCP ended without a close frame.
    Abnormal {
        /// In the middle of a message.
        mid_message: bool,
    },
    /// A socket error.
    Io(String),
    /// The close handshake did not finish in time.
    CloseTimeout,
    /// Replaced after its lifetime (make-before-break).
    Rotated,
    /// The fleet shut down.
    Shutdown,
    /// User code (the on-connect hook) panicked.
    Panicked(String),
}

impl DisconnectReason {
    /// Short lowercase label for metrics (`connect_failed`, `protocol`, …).
    pub fn label(&self) -> &'static str {
        match self {
            Self::ConnectFailed { .. } => "connect_failed",
            Self::HookFailed(_) => "hook_failed",
            Self::ClosedByPeer { .. } => "closed_by_peer",
            Self::Protocol(ProtocolError::BudgetExhausted { .. }) => "budget_exhausted",
            Self::Protocol(_) => "protocol",
            Self::PongTimeout => "pong_timeout",
            Self::MessageStalled => "message_stalled",
            Self::WriteStalled => "write_stalled",
            Self::SlowConsumer => "slow_consumer",
            Self::PingFlood => "ping_flood",
            Self::Abnormal { .. } => "abnormal",
            Self::Io(_) => "io",
            Self::CloseTimeout => "close_timeout",
            Self::Rotated => "rotated",
            Self::Shutdown => "shutdown",
            Self::Panicked(_) => "panicked",
        }
    }

    /// False for the planned ends (rotation, shutdown); true otherwise.
    pub fn is_failure(&self) -> bool {
        !matches!(self, Self::Rotated | Self::Shutdown)
    }

    /// The close code we sent for it, where we sent one.
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            Self::Protocol(e) => Some(e.close_code()),
            Self::Rotated | Self::Shutdown => Some(CloseCode::GOING_AWAY),
            Self::PongTimeout | Self::PingFlood | Self::MessageStalled | Self::SlowConsumer => {
                Some(CloseCode::POLICY_VIOLATION)
            }
            _ => None,
        }
    }

    pub(crate) fn from_connect(e: &ConnectError) -> Self {
        let retry_after = match e.kind() {
            ConnectErrorKind::Handshake(HandshakeError::Status {
                retry_after: Some(r),
                ..
            }) => r.trim().parse::<u64>().ok().map(Duration::from_secs),
            _ => None,
        };
        Self::ConnectFailed {
            phase: e.phase(),
            error: e.to_string(),
            retry_after,
        }
    }

    pub(crate) fn from_error(e: &Error) -> Self {
        match e {
            Error::Protocol(p) => Self::Protocol(p.clone()),
            Error::Io(io) => Self::Io(io.to_string()),
            Error::PongTimeout(_) => Self::PongTimeout,
            Error::MessageStalled { .. } => Self::MessageStalled,
            Error::WriteStalled(_) => Self::WriteStalled,
            Error::PingFlood { .. } => Self::PingFlood,
            Error::CloseTimeout(_) => Self::CloseTimeout,
            Error::AbnormalClosure { mid_message } => Self::Abnormal {
                mid_message: *mid_message,
            },
            other => Self::Io(other.to_string()),
        }
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ConnectFailed { error, .. } => f.write_str(error),
            Self::HookFailed(e) => write!(f, "on-connect hook failed: {e}"),
            Self::ClosedByPeer {
                code: Some(code),
                reason,
            } if !reason.is_empty() => {
                write!(f, "closed by peer with {code}: {reason:?}")
            }
            Self::ClosedByPeer {
                code: Some(code), ..
            } => write!(f, "closed by peer with {code}"),
            Self::ClosedByPeer { code: None, .. } => {
                write!(f, "closed by peer without a status code")
            }
            Self::Protocol(e) => write!(f, "protocol error (closed with {}): {e}", e.close_code()),
            Self::PongTimeout => f.write_str("peer silent: ping unanswered"),
            Self::MessageStalled => f.write_str("message stalled: below the minimum rate (1008)"),
            Self::WriteStalled => f.write_str("write stalled: the peer stopped reading"),
            Self::SlowConsumer => {
                f.write_str("the event consumer fell behind (slow-consumer policy)")
            }
            Self::PingFlood => f.write_str("ping flood: too many pings from the peer (1008)"),
            Self::Abnormal { mid_message: true } => {
                f.write_str("TCP ended without a close frame, mid-message")
            }
            Self::Abnormal { mid_message: false } => f.write_str("TCP ended without a close frame"),
            Self::Io(e) => write!(f, "socket error: {e}"),
            Self::CloseTimeout => f.write_str("close handshake timed out"),
            Self::Rotated => f.write_str("rotated after its lifetime"),
            Self::Shutdown => f.write_str("fleet shut down"),
            Self::Panicked(what) => write!(f, "user code panicked: {what}"),
        }
    }
}
