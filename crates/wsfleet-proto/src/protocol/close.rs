//! The close handshake (RFC 6455 §5.5.1, §7) as one state, kept by value.
//!
//! Two facts make up the handshake: how far our close frame is (not yet,
//! due, queued) and whether the peer's has arrived. Not every combination
//! exists: receiving the peer's close makes our reply due at once, so "the
//! peer closed and ours is not even due" never happens. [`Close`] names the
//! five that do, and its transitions are the only way between them.
//!
//! A fatal [`ProtocolError`](crate::ProtocolError) is a close too: it moves
//! the state exactly as [`Protocol::close`](crate::Protocol::close) would,
//! with the error's code. So "may we still send?" is one question to the
//! state, whether the end came from the user, the peer or an error; the
//! error value itself is kept once, for `poll_event` to return.

use crate::frame::CloseFrame;

/// Where the close handshake stands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) enum Close {
    /// Neither side has closed: data may flow both ways.
    #[default]
    Open,
    /// We close first (by request or for an error): our frame waits for
    /// `poll_transmit`.
    Due(CloseFrame),
    /// Our close frame is queued; the peer's has not arrived.
    Sent,
    /// The peer's close arrived; our frame (the echo of its code, `None`
    /// for an empty close, or the frame that was already due) waits for
    /// `poll_transmit`.
    ReplyDue(Option<CloseFrame>),
    /// Close frames went both ways (ours queued, perhaps not yet written).
    Closed,
}

impl Close {
    /// Our close frame is due or queued: nothing more may be sent.
    pub(super) fn started(&self) -> bool {
        *self != Self::Open
    }

    /// The peer's close frame arrived.
    pub(super) fn received(&self) -> bool {
        matches!(self, Self::ReplyDue(_) | Self::Closed)
    }

    /// Our close frame waits for `poll_transmit`.
    pub(super) fn is_due(&self) -> bool {
        matches!(self, Self::Due(_) | Self::ReplyDue(_))
    }

    /// We close with `frame`; nothing changes once ours is due or queued
    /// (the first close wins, as RFC 6455 §5.5.1 allows only one).
    pub(super) fn start(&mut self, frame: CloseFrame) {
        if *self == Self::Open {
            *self = Self::Due(frame);
        }
    }

    /// The peer's close frame (`None`: empty payload) arrived: echo its code
    /// unless ours is already due or queued.
    pub(super) fn receive(&mut self, peer: Option<&CloseFrame>) {
        *self = match std::mem::take(self) {
            Self::Open => Self::ReplyDue(peer.map(|f| CloseFrame::new(f.code, ""))),
            Self::Due(ours) => Self::ReplyDue(Some(ours)),
            Self::Sent => Self::Closed,
            done @ (Self::ReplyDue(_) | Self::Closed) => done,
        };
    }

    /// Takes the due close frame for writing (`Some(None)`: an empty
    /// close), marking ours queued.
    pub(super) fn take_due(&mut self) -> Option<Option<CloseFrame>> {
        let (next, frame) = match std::mem::take(self) {
            Self::Due(frame) => (Self::Sent, Some(frame)),
            Self::ReplyDue(frame) => (Self::Closed, frame),
            other => {
                *self = other;
                return None;
            }
        };
        *self = next;
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CloseCode;

    fn frame(code: u16, reason: &str) -> CloseFrame {
        CloseFrame::new(CloseCode::from(code), reason)
    }

    #[test]
    fn we_close_first() {
        let mut c = Close::Open;
        c.start(frame(1000, "bye"));
        c.start(frame(1001, "ignored: the first close wins"));
        assert!(c.started() && c.is_due() && !c.received());
        assert_eq!(c.take_due(), Some(Some(frame(1000, "bye"))));
        assert_eq!((c.clone(), c.take_due()), (Close::Sent, None));
        c.receive(Some(&frame(1000, "")));
        assert_eq!(c, Close::Closed);
        assert!(c.received() && !c.is_due());
    }

    #[test]
    fn the_peer_closes_first_and_we_echo_its_code() {
        let mut c = Close::Open;
        c.receive(Some(&frame(4001, "peer's reason")));
        assert!(c.received() && c.is_due());
        c.start(frame(1000, "too late: the echo is due"));
        assert_eq!(c.take_due(), Some(Some(frame(4001, ""))));
        assert_eq!(c, Close::Closed);

        let mut empty = Close::Open;
        empty.receive(None);
        assert_eq!(
            empty.take_due(),
            Some(None),
            "an empty close is echoed empty"
        );
    }

    #[test]
    fn closes_crossing_send_ours_not_an_echo() {
        let mut c = Close::Open;
        c.start(frame(1001, "going"));
        c.receive(Some(&frame(1000, "")));
        assert_eq!(c.take_due(), Some(Some(frame(1001, "going"))));
        assert_eq!(c, Close::Closed);
    }
}
