//! The server end: accept a WebSocket on an accepted stream.

use bytes::{BufMut, Bytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wsfleet_proto::Protocol;
use wsfleet_proto::handshake::{accept_response, parse_request, reject_response};

use super::{Connection, ConnectionConfig};
use crate::connect::{ConnectError, ConnectErrorKind, MaybeTlsStream, Phase};

impl Connection {
    /// Runs the server side of the opening handshake on an accepted stream
    /// (within `config.deadlines.handshake` and the handshake limits), choosing
    /// the first subprotocol the client offers that is in `config.protocols`.
    /// A bad request is answered with `400 Bad Request`.
    ///
    /// # Errors
    /// A [`ConnectError`] in [`Phase::Handshake`] naming `peer`.
    pub async fn accept(
        mut stream: MaybeTlsStream,
        peer: impl Into<String>,
        config: &ConnectionConfig,
    ) -> Result<Self, ConnectError> {
        let peer = peer.into();
        let fail = |kind| ConnectError::new(Phase::Handshake, peer.clone(), kind);
        let max = config.limits.max_handshake_bytes;
        let exchange = async {
            let mut buf: Vec<u8> = Vec::with_capacity(1024.min(max));
            loop {
                let room = max.saturating_sub(buf.len()).max(1);
                let n = stream
                    .read_buf(&mut (&mut buf).limit(room))
                    .await
                    .map_err(|e| fail(ConnectErrorKind::Io(e)))?;
                if n == 0 {
                    return Err(fail(ConnectErrorKind::Io(
                        std::io::ErrorKind::UnexpectedEof.into(),
                    )));
                }
                match parse_request(&buf, &config.limits) {
                    Ok(None) => {}
                    Ok(Some((request, used))) => {
                        let protocol = request
                            .protocols
                            .iter()
                            .find(|p| config.protocols.contains(p))
                            .cloned();
                        let answer = accept_response(&request, protocol.as_deref());
                        stream
                            .write_all(&answer)
                            .await
                            .map_err(|e| fail(ConnectErrorKind::Io(e)))?;
                        return Ok((protocol, Bytes::copy_from_slice(&buf[used..])));
                    }
                    Err(e) => {
                        let _ = stream.write_all(&reject_response(400, "Bad Request")).await;
                        return Err(fail(ConnectErrorKind::Handshake(e)));
                    }
                }
            }
        };
        let (protocol, leftover) =
            match tokio::time::timeout(config.deadlines.handshake, exchange).await {
                Ok(result) => result?,
                Err(_) => return Err(fail(ConnectErrorKind::Timeout(config.deadlines.handshake))),
            };
        let mut proto = Protocol::server(config.limits);
        if let Some(budget) = &config.budget {
            proto = proto.with_budget(budget.clone());
        }
        Ok(Self::from_parts(
            stream, proto, peer, protocol, leftover, config,
        ))
    }
}
