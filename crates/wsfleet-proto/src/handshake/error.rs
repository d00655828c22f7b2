use std::fmt;

use crate::deflate::DeflateError;

/// Why an opening handshake failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The response (or request) headers exceed `max_handshake_bytes`.
    TooLarge {
        /// Bytes received without finding the end of the headers.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// More headers than `max_handshake_headers`.
    TooManyHeaders {
        /// The limit.
        max: usize,
    },
    /// Not an HTTP/1.1 message (a 101 in HTTP/1.0 included).
    Malformed(String),
    /// The server redirected (3xx); following is the caller's choice.
    Redirect {
        /// The status code.
        status: u16,
        /// The `Location` header, if any.
        location: Option<String>,
    },
    /// The server answered with a status other than 101.
    Status {
        /// The status code.
        status: u16,
        /// The reason phrase.
        reason: String,
        /// The `Retry-After` header (seconds or an HTTP date), for 429 and 503.
        retry_after: Option<String>,
    },
    /// A header required by RFC 6455 is missing or has the wrong value, or
    /// `Sec-WebSocket-Protocol` / `Sec-WebSocket-Extensions` is not token
    /// text (RFC 6455 §4.1: an unreadable answer is not an absent one).
    BadHeader {
        /// The header name.
        name: &'static str,
        /// What was received (empty if it was missing).
        value: String,
    },
    /// `Sec-WebSocket-Accept` does not match our key.
    BadAccept {
        /// What we expected.
        expected: String,
        /// What the server sent.
        got: String,
    },
    /// The server chose a subprotocol we did not offer.
    UnexpectedProtocol(String),
    /// The server accepted an extension we did not offer.
    UnexpectedExtension(String),
    /// The server's permessage-deflate answer breaks RFC 7692 or our offer.
    BadExtension(DeflateError),
    /// A header name or value we were asked to send contains CR, LF or NUL.
    InvalidRequestHeader(String),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { bytes, max } => write!(
                f,
                "handshake headers exceed max_handshake_bytes ({max} bytes; {bytes} received)"
            ),
            Self::TooManyHeaders { max } => {
                write!(
                    f,
                    "handshake has more than max_handshake_headers ({max}) headers"
                )
            }
            Self::Malformed(why) => write!(f, "malformed HTTP in handshake: {why}"),
            Self::Redirect { status, location } => match location {
                Some(l) => write!(f, "server redirected with {status} to {}", redact_query(l)),
                None => write!(f, "server redirected with {status} without a Location"),
            },
            Self::Status {
                status,
                reason,
                retry_after,
            } => {
                write!(f, "server answered {status} {reason} instead of 101")?;
                if let Some(r) = retry_after {
                    write!(f, " (Retry-After: {r})")?;
                }
                Ok(())
            }
            Self::BadHeader { name, value } if value.is_empty() => {
                write!(f, "handshake response lacks a valid {name} header")
            }
            Self::BadHeader { name, value } => {
                write!(f, "handshake header {name}: {value:?} is not valid")
            }
            Self::BadAccept { expected, got } => {
                write!(
                    f,
                    "Sec-WebSocket-Accept {got:?} does not match the key (expected {expected:?})"
                )
            }
            Self::UnexpectedProtocol(p) => {
                write!(f, "server chose subprotocol {p:?}, which was not offered")
            }
            Self::UnexpectedExtension(e) => {
                write!(f, "server accepted extension {e:?}, which was not offered")
            }
            Self::BadExtension(why) => write!(f, "permessage-deflate answer refused: {why}"),
            Self::InvalidRequestHeader(h) => {
                write!(f, "request header {h:?} contains CR, LF or NUL")
            }
        }
    }
}

impl std::error::Error for HandshakeError {}

/// `url` with its query replaced by `?…`: tokens often live there, and
/// error texts end up in logs.
///
/// ```
/// use wsfleet_proto::handshake::redact_query;
/// assert_eq!(redact_query("wss://h/feed?token=s3cret#x"), "wss://h/feed?…#x");
/// assert_eq!(redact_query("/relative"), "/relative");
/// ```
pub fn redact_query(url: &str) -> std::borrow::Cow<'_, str> {
    let Some(q) = url.find('?') else {
        return url.into();
    };
    let end = url[q..].find('#').map_or(url.len(), |h| q + h);
    format!("{}?…{}", &url[..q], &url[end..]).into()
}
