//! Why a connection of the fleet ended: a typed, cloneable record (not an
//! error type) carried by events and stats.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use wsfleet_proto::{CloseCode, ProtocolError};

use crate::Error;
use crate::connect::{Chain, ConnectError, ConnectErrorKind, Phase};
use crate::proto::HandshakeError;

/// Why a fleet connection ended (or never started).
///
/// Cloneable (every event and the stats carry one) and typed: the errors
/// behind a failed connect or on-connect hook are kept whole, shared behind
/// an [`Arc`], so they can be matched on (phase, kind, status, I/O kind) or
/// downcast, not only read. Errors are not comparable, so neither is this:
/// match on it with `matches!`.
///
/// Its display is the whole story on one line, the errors' sources
/// included: `tcp connect to 127.0.0.1:9 failed: Connection refused (os
/// error 111)`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// Opening failed in `phase`; `retry_after` if the server asked for it.
    ConnectFailed {
        /// Where it failed (the error's [`ConnectError::phase`], here to
        /// match on).
        phase: Phase,
        /// What happened.
        error: Arc<ConnectError>,
        /// A `Retry-After` from a 429 or 503 answer.
        retry_after: Option<Duration>,
    },
    /// The on-connect hook returned this error, or did not finish within the
    /// handshake deadline (an [`io::Error`] of kind
    /// [`TimedOut`](io::ErrorKind::TimedOut)).
    HookFailed(Arc<dyn StdError + Send + Sync>),
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
    /// No data message arrived for
    /// [`FleetBuilder::stale_after`](super::FleetBuilder::stale_after)
    /// (pings and pongs do not count): replaced, closed with 1001.
    Stale {
        /// The threshold that passed.
        after: Duration,
    },
    /// An application heartbeat went unanswered (see
    /// [`Heartbeat`](super::Heartbeat)): closed with 1008, like a pong
    /// timeout.
    HeartbeatTimeout {
        /// How long the answer was waited for.
        after: Duration,
    },
    /// A stream of this connection skipped sequence numbers and the gap
    /// policy is [`GapPolicy::Reconnect`](super::GapPolicy::Reconnect):
    /// replaced, closed with 1001.
    SequenceGap {
        /// The stream.
        stream: Arc<str>,
        /// The first number it skipped.
        first: u64,
        /// The last number it skipped (a range, kept as two numbers so the
        /// reason stays as small as its other variants).
        last: u64,
    },
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
    Io {
        /// Its kind (`ConnectionReset`, `BrokenPipe`, …).
        kind: io::ErrorKind,
        /// The error's text (with the OS error number, where there is one).
        message: String,
    },
    /// The close handshake did not finish in time.
    CloseTimeout,
    /// Replaced after its lifetime (make-before-break).
    Rotated,
    /// The fleet shut down.
    Shutdown,
    /// Its slot was scaled away (the fleet's target went below it): closed
    /// with 1001, not replaced.
    ScaledDown,
    /// Its fleet was paused: closed with 1001, replaced when resumed.
    Paused,
    /// Dropped on request (the control API): closed with 1001, replaced.
    Dropped,
    /// Its slot was released (a coordinated fleet handed it to another
    /// process): closed with 1001, not replaced here.
    Released,
    /// Its slot's lease was lost (a coordinated fleet could not renew it in
    /// time): aborted at once without a close handshake, so that two
    /// processes never serve the slot together.
    LeaseLost,
    /// User code (the on-connect hook) panicked.
    Panicked(String),
}

/// Declares [`Label`] from one list: each kind with its metric label, in
/// the order the metrics list them.
macro_rules! labels {
    ($($kind:ident => $text:literal,)*) => {
        /// The kinds of disconnect reason that metrics count; a kind's
        /// index (`as usize`) is its counter's.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Label {
            $($kind,)*
        }

        impl Label {
            /// Every kind, in declaration order: `ALL[k as usize] == k`.
            const ALL: &'static [Label] = &[$(Label::$kind,)*];

            /// How many kinds there are.
            pub(crate) const COUNT: usize = Self::ALL.len();

            /// The metric label.
            pub(crate) const fn as_str(self) -> &'static str {
                match self {
                    $(Label::$kind => $text,)*
                }
            }
        }
    };
}

labels! {
    ConnectFailed => "connect_failed",
    HookFailed => "hook_failed",
    ClosedByPeer => "closed_by_peer",
    BudgetExhausted => "budget_exhausted",
    Protocol => "protocol",
    PongTimeout => "pong_timeout",
    MessageStalled => "message_stalled",
    WriteStalled => "write_stalled",
    SlowConsumer => "slow_consumer",
    Stale => "stale",
    SequenceGap => "sequence_gap",
    HeartbeatTimeout => "heartbeat_timeout",
    PingFlood => "ping_flood",
    Abnormal => "abnormal",
    Io => "io",
    CloseTimeout => "close_timeout",
    Rotated => "rotated",
    Shutdown => "shutdown",
    ScaledDown => "scaled_down",
    Paused => "paused",
    Dropped => "dropped",
    Panicked => "panicked",
    Released => "released",
    LeaseLost => "lease_lost",
}

impl DisconnectReason {
    /// Every [`label`](Self::label), in the order
    /// [`Totals::disconnects`](super::Totals::disconnects) lists them.
    pub const LABELS: [&'static str; Label::COUNT] = {
        let mut labels = [""; Label::COUNT];
        let mut i = 0;
        while i < Label::COUNT {
            labels[i] = Label::ALL[i].as_str();
            i += 1;
        }
        labels
    };

    /// Short lowercase label for metrics (`connect_failed`, `protocol`, …).
    pub fn label(&self) -> &'static str {
        self.kind().as_str()
    }

    /// What kind of end it is, for counting.
    pub(crate) fn kind(&self) -> Label {
        match self {
            Self::ConnectFailed { .. } => Label::ConnectFailed,
            Self::HookFailed(_) => Label::HookFailed,
            Self::ClosedByPeer { .. } => Label::ClosedByPeer,
            Self::Protocol(ProtocolError::BudgetExhausted { .. }) => Label::BudgetExhausted,
            Self::Protocol(_) => Label::Protocol,
            Self::PongTimeout => Label::PongTimeout,
            Self::MessageStalled => Label::MessageStalled,
            Self::WriteStalled => Label::WriteStalled,
            Self::SlowConsumer => Label::SlowConsumer,
            Self::Stale { .. } => Label::Stale,
            Self::SequenceGap { .. } => Label::SequenceGap,
            Self::HeartbeatTimeout { .. } => Label::HeartbeatTimeout,
            Self::PingFlood => Label::PingFlood,
            Self::Abnormal { .. } => Label::Abnormal,
            Self::Io { .. } => Label::Io,
            Self::CloseTimeout => Label::CloseTimeout,
            Self::Rotated => Label::Rotated,
            Self::Shutdown => Label::Shutdown,
            Self::ScaledDown => Label::ScaledDown,
            Self::Paused => Label::Paused,
            Self::Dropped => Label::Dropped,
            Self::Panicked(_) => Label::Panicked,
            Self::Released => Label::Released,
            Self::LeaseLost => Label::LeaseLost,
        }
    }

    /// False for the planned ends (rotation, shutdown, scaling, pause, a
    /// requested drop); true otherwise.
    pub fn is_failure(&self) -> bool {
        !self.is_planned()
    }

    /// The ends the fleet chose (rotation, shutdown, scaling, pause, a
    /// requested drop, a released lease): each closed with 1001.
    fn is_planned(&self) -> bool {
        matches!(
            self,
            Self::Rotated
                | Self::Shutdown
                | Self::ScaledDown
                | Self::Paused
                | Self::Dropped
                | Self::Released
        )
    }

    /// The close code we sent for it, where we sent one.
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            Self::Protocol(e) => Some(e.close_code()),
            planned if planned.is_planned() => Some(CloseCode::GOING_AWAY),
            Self::Stale { .. } | Self::SequenceGap { .. } => Some(CloseCode::GOING_AWAY),
            Self::PongTimeout
            | Self::HeartbeatTimeout { .. }
            | Self::PingFlood
            | Self::MessageStalled
            | Self::SlowConsumer => Some(CloseCode::POLICY_VIOLATION),
            _ => None,
        }
    }

    pub(crate) fn from_connect(e: ConnectError) -> Self {
        let retry_after = match e.kind() {
            ConnectErrorKind::Handshake(HandshakeError::Status {
                retry_after: Some(r),
                ..
            }) => r.trim().parse::<u64>().ok().map(Duration::from_secs),
            _ => None,
        };
        Self::ConnectFailed {
            phase: e.phase(),
            error: Arc::new(e),
            retry_after,
        }
    }

    pub(crate) fn from_error(e: &Error) -> Self {
        match e {
            Error::Protocol(p) => Self::Protocol(p.clone()),
            Error::Io(io) => Self::Io {
                kind: io.kind(),
                message: io.to_string(),
            },
            Error::PongTimeout(_) => Self::PongTimeout,
            Error::MessageStalled { .. } => Self::MessageStalled,
            Error::WriteStalled(_) => Self::WriteStalled,
            Error::PingFlood { .. } => Self::PingFlood,
            Error::CloseTimeout(_) => Self::CloseTimeout,
            Error::AbnormalClosure { mid_message } => Self::Abnormal {
                mid_message: *mid_message,
            },
            // A refused send or close code never ends a fleet connection;
            // should one, it is reported as what it is, not lost.
            other => Self::Io {
                kind: io::ErrorKind::Other,
                message: other.to_string(),
            },
        }
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ConnectFailed { error, .. } => write!(f, "{}", Chain(&**error)),
            Self::HookFailed(e) => write!(f, "on-connect hook failed: {}", Chain(&**e)),
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
            // Not the peer's fault: no "protocol error" in front of it.
            Self::Protocol(e @ ProtocolError::BudgetExhausted { .. }) => {
                write!(f, "{e}; closed with {}", e.close_code())
            }
            Self::Protocol(e) => write!(f, "protocol error (closed with {}): {e}", e.close_code()),
            Self::PongTimeout => f.write_str("peer silent: ping unanswered"),
            Self::Stale { after } => {
                write!(f, "stale: no data message for {after:?} (closed with 1001)")
            }
            Self::HeartbeatTimeout { after } => {
                write!(
                    f,
                    "heartbeat timeout: no answer within {after:?} (closed with 1008)"
                )
            }
            Self::SequenceGap {
                stream,
                first,
                last,
            } => write!(
                f,
                "sequence gap in stream {stream:?}: {first}..={last} missed (closed with 1001)"
            ),
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
            Self::Io { message, .. } => write!(f, "socket error: {message}"),
            Self::CloseTimeout => f.write_str("close handshake timed out"),
            Self::Rotated => f.write_str("rotated after its lifetime"),
            Self::Shutdown => f.write_str("fleet shut down"),
            Self::ScaledDown => f.write_str("scaled down (closed with 1001)"),
            Self::Paused => f.write_str("fleet paused (closed with 1001)"),
            Self::Dropped => f.write_str("dropped on request (closed with 1001)"),
            Self::Panicked(what) => write!(f, "user code panicked: {what}"),
            Self::Released => f.write_str("slot released to another process (closed with 1001)"),
            Self::LeaseLost => f.write_str(
                "slot lease lost (not renewed in time): aborted without a close handshake",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_counts_under_its_own_label() {
        for (i, kind) in Label::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, i, "{kind:?}");
            assert_eq!(DisconnectReason::LABELS[i], kind.as_str());
        }
        let mut unique = DisconnectReason::LABELS.to_vec();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), Label::COUNT, "a label used twice");
        let budget = DisconnectReason::Protocol(ProtocolError::BudgetExhausted {
            requested: 1,
            held: 2,
        });
        assert_eq!(budget.label(), "budget_exhausted");
        assert_eq!(
            DisconnectReason::LABELS[budget.kind() as usize],
            "budget_exhausted"
        );
        assert_eq!(DisconnectReason::Rotated.label(), "rotated");
    }

    #[test]
    fn a_failed_connect_keeps_its_error_and_says_its_cause_once() {
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused");
        let e = ConnectError::new(Phase::Tcp, "127.0.0.1:9", ConnectErrorKind::Io(refused));
        let reason = DisconnectReason::from_connect(e);
        let DisconnectReason::ConnectFailed { phase, error, .. } = reason.clone() else {
            panic!("{reason:?}");
        };
        assert_eq!(phase, Phase::Tcp);
        assert!(
            matches!(error.kind(), ConnectErrorKind::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused),
            "{error:?}"
        );
        assert_eq!(
            reason.to_string(),
            "tcp connect to 127.0.0.1:9 failed: connection refused"
        );
    }

    #[test]
    fn a_socket_error_keeps_its_kind() {
        let reset = io::Error::new(io::ErrorKind::ConnectionReset, "reset by peer");
        let reason = DisconnectReason::from_error(&Error::Io(reset));
        assert!(
            matches!(
                reason,
                DisconnectReason::Io {
                    kind: io::ErrorKind::ConnectionReset,
                    ..
                }
            ),
            "{reason:?}"
        );
        assert_eq!(reason.to_string(), "socket error: reset by peer");
    }
}
