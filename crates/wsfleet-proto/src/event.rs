//! What the protocol machine reports to its driver.

use bytes::Bytes;

use crate::frame::CloseFrame;
use crate::message::Message;

/// An event produced by [`crate::Protocol::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A complete data message.
    Message(Message),
    /// A ping arrived; the pong reply is already scheduled (newest wins).
    Ping(Bytes),
    /// A pong arrived.
    Pong(Bytes),
    /// The peer sent a close frame (`None`: without a status code). If we had
    /// not sent one, our reply is scheduled. No event follows this one.
    Close(Option<CloseFrame>),
}
