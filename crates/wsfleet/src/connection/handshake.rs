//! The opening handshake over an open stream, bounded in bytes and time.

use bytes::{BufMut, Bytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wsfleet_proto::handshake::{ClientHandshake, HandshakeRequest, HandshakeResponse};

use super::ConnectionConfig;
use crate::connect::{ConnectError, ConnectErrorKind, MaybeTlsStream, Phase, Target};
use crate::keys;

/// Sends the upgrade request and validates the answer. Returns the response
/// and any WebSocket bytes that arrived with it. With `credentials` false,
/// the configured headers that carry credentials are left out (a redirect
/// has left the configured origin).
pub(crate) async fn client_handshake(
    stream: &mut MaybeTlsStream,
    target: &Target,
    config: &ConnectionConfig,
    credentials: bool,
) -> Result<(HandshakeResponse, Bytes), ConnectError> {
    let authority = target.authority();
    let fail = |kind| ConnectError::new(Phase::Handshake, authority.clone(), kind);
    let mut request = HandshakeRequest::new(
        target.host_header(),
        target.path_and_query.clone(),
        keys::nonce(),
    );
    if let Some(origin) = &config.origin {
        request = request.origin(origin.clone());
    }
    for p in &config.protocols {
        request = request.protocol(p.clone());
    }
    for (k, v) in &config.headers {
        if !credentials && super::redirect::is_credential(k) {
            continue;
        }
        request = request.header(k.clone(), v.clone());
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
        let mut buf: Vec<u8> = Vec::with_capacity(1024.min(max));
        loop {
            // Never read past the limit: parse_response reports TooLarge once full.
            let room = max.saturating_sub(buf.len()).max(1);
            let n = stream
                .read_buf(&mut (&mut buf).limit(room))
                .await
                .map_err(|e| fail(ConnectErrorKind::Io(e)))?;
            if n == 0 {
                return Err(fail(ConnectErrorKind::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "server closed the connection after {} bytes of handshake response",
                        buf.len()
                    ),
                ))));
            }
            match expect.parse_response(&buf) {
                Ok(None) => {}
                Ok(Some((response, used))) => {
                    let leftover = Bytes::copy_from_slice(&buf[used..]);
                    return Ok((response, leftover));
                }
                Err(e) => return Err(fail(ConnectErrorKind::Handshake(e))),
            }
        }
    };
    match tokio::time::timeout(config.deadlines.handshake, exchange).await {
        Ok(result) => result,
        Err(_) => Err(fail(ConnectErrorKind::Timeout(config.deadlines.handshake))),
    }
}
