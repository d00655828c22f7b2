//! The opening handshake over an open stream, bounded in bytes and time;
//! the bounded read of a handshake head, for both ends.

use std::io;

use bytes::{BufMut, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use wsfleet_proto::handshake::{ClientHandshake, HandshakeRequest, Negotiated};

use super::ConnectionConfig;
use crate::connect::credential::Resolved;
use crate::connect::{ConnectError, ConnectErrorKind, MaybeTlsStream, Phase, PhaseTimer, Target};
use crate::keys;

/// Sends the upgrade request and validates the answer. Returns what it
/// settled and any WebSocket bytes that arrived with it. With `same_origin` false
/// (a redirect has left the configured origin), only the headers and
/// subprotocols named in `forward_on_redirect` go. `authority` is
/// `target`'s, as errors name it. `credentials`' headers go as configured
/// headers do, in place of any of the same name. `timer` bounds the
/// exchange at the handshake deadline.
pub(crate) async fn client_handshake(
    stream: &mut MaybeTlsStream,
    target: &Target,
    authority: &str,
    config: &ConnectionConfig,
    credentials: &Resolved,
    same_origin: bool,
    timer: &mut PhaseTimer<'_>,
) -> Result<(Negotiated, Bytes), ConnectError> {
    let sent = |name: &str| {
        same_origin
            || config
                .forward_on_redirect
                .iter()
                .any(|f| f.trim().eq_ignore_ascii_case(name.trim()))
    };
    let fail = |kind| ConnectError::new(Phase::Handshake, authority, kind);
    let mut request = HandshakeRequest::new(
        target.host_header_with(authority),
        target.path_and_query.clone(),
        keys::nonce(),
    );
    if let Some(origin) = &config.origin {
        request = request.origin(origin.clone());
    }
    if sent("sec-websocket-protocol") {
        for p in &config.protocols {
            request = request.protocol(p.clone());
        }
    }
    for (k, v) in config
        .headers
        .iter()
        .filter(|(k, _)| sent(k) && !credentials.replaces(k))
    {
        request = request.header(k.clone(), v.clone());
    }
    for (k, v) in credentials.headers.iter().filter(|(k, _)| sent(k)) {
        request = request.header(k.clone(), String::from(&**v));
    }
    if let Some(deflate) = config.deflate {
        request = request.deflate(deflate);
    }
    let bytes = request
        .encode()
        .map_err(|e| fail(ConnectErrorKind::Handshake(e)))?;
    let expect = ClientHandshake::new(&request, &config.limits);
    let max = config.limits.max_handshake_bytes;
    let exchange = async {
        stream
            .write_all(&bytes)
            .await
            .map_err(|e| fail(ConnectErrorKind::Io(e)))?;
        stream
            .flush()
            .await
            .map_err(|e| fail(ConnectErrorKind::Io(e)))?;
        read_head(stream, max, |buf| expect.validate_response(buf))
            .await
            .map_err(|e| match e {
                HeadError::Io(e) => fail(ConnectErrorKind::Io(e)),
                HeadError::Eof(read) => fail(ConnectErrorKind::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "server closed the connection after {read} bytes of handshake response"
                    ),
                ))),
                HeadError::Invalid(e) => fail(ConnectErrorKind::Handshake(e)),
            })
    };
    match timer.within(config.deadlines.handshake, exchange).await {
        Some(result) => result,
        None => Err(fail(ConnectErrorKind::Timeout(config.deadlines.handshake))),
    }
}

/// The first allocation for a handshake head: most heads fit.
const HEAD_START: usize = 1024;

/// Why reading a handshake head stopped short.
pub(crate) enum HeadError<E> {
    /// The socket failed.
    Io(io::Error),
    /// The peer ended TCP after this many bytes, before the head was whole.
    Eof(usize),
    /// The head is malformed or over its limits, as `parse` says.
    Invalid(E),
}

/// Reads an HTTP head (a handshake request or response) from `stream` until
/// `parse` finds it whole: what `parse` made of it, and the bytes that came
/// after it. Holds at most `max` bytes and one more: `parse` reports a head
/// over its byte limit once they are in, so no peer makes this grow.
pub(crate) async fn read_head<S, T, E>(
    stream: &mut S,
    max: usize,
    parse: impl Fn(&[u8]) -> Result<Option<(T, usize)>, E>,
) -> Result<(T, Bytes), HeadError<E>>
where
    S: AsyncRead + Unpin,
{
    let mut buf: Vec<u8> = Vec::with_capacity(HEAD_START.min(max));
    loop {
        let room = max.saturating_sub(buf.len()).max(1);
        let n = stream
            .read_buf(&mut (&mut buf).limit(room))
            .await
            .map_err(HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Eof(buf.len()));
        }
        match parse(&buf) {
            Ok(None) => {}
            Ok(Some((head, used))) => return Ok((head, Bytes::copy_from_slice(&buf[used..]))),
            Err(e) => return Err(HeadError::Invalid(e)),
        }
    }
}
