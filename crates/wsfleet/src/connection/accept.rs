//! The server end: accept a WebSocket on an accepted stream.

use tokio::io::AsyncWriteExt;
use wsfleet_proto::Protocol;
use wsfleet_proto::handshake::{accept_response, parse_request, reject_response};

use super::handshake::{HeadError, read_head};
use super::{Connection, ConnectionConfig};
use crate::connect::{ConnectError, ConnectErrorKind, MaybeTlsStream, Phase};

impl Connection {
    /// Runs the server side of the opening handshake on an accepted stream
    /// (within `config.deadlines.handshake` and the handshake limits), choosing
    /// the first subprotocol the client offers that is in `config.protocols`.
    /// A bad request is answered with `400 Bad Request`.
    ///
    /// Cancel-safe: dropping the future abandons the handshake and closes
    /// `stream`.
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
            let parse = |buf: &[u8]| parse_request(buf, &config.limits);
            let (request, leftover) = match read_head(&mut stream, max, parse).await {
                Ok(found) => found,
                Err(HeadError::Invalid(e)) => {
                    let _ = stream.write_all(&reject_response(400, "Bad Request")).await;
                    return Err(fail(ConnectErrorKind::Handshake(e)));
                }
                Err(HeadError::Io(e)) => return Err(fail(ConnectErrorKind::Io(e))),
                Err(HeadError::Eof(_)) => {
                    return Err(fail(ConnectErrorKind::Io(
                        std::io::ErrorKind::UnexpectedEof.into(),
                    )));
                }
            };
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
            Ok((protocol, leftover))
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
