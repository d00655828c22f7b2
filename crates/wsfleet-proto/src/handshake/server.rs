use base64::Engine;

use super::{HandshakeError, accept_key, has_token, header, header_tokens};
use crate::limits::Limits;

/// A client's opening handshake as a server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerRequest {
    /// Request target (path and query).
    pub path: String,
    /// `Sec-WebSocket-Key`.
    pub key: String,
    /// Subprotocols offered, in order.
    pub protocols: Vec<String>,
    /// All request headers, names as sent.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Parses a client's handshake request from the start of `buf`; `Ok(None)`
/// while incomplete. Returns the request and the bytes it used.
///
/// # Errors
/// The byte and header limits, a method other than GET, a missing or wrong
/// `Upgrade`, `Connection`, `Sec-WebSocket-Version` (13) or
/// `Sec-WebSocket-Key`.
pub fn parse_request(
    buf: &[u8],
    limits: &Limits,
) -> Result<Option<(ServerRequest, usize)>, HandshakeError> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_handshake_headers];
    let mut request = httparse::Request::new(&mut headers);
    let used = match request.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= limits.max_handshake_bytes {
                return Err(HandshakeError::TooLarge {
                    bytes: buf.len(),
                    max: limits.max_handshake_bytes,
                });
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HandshakeError::TooManyHeaders {
                max: limits.max_handshake_headers,
            });
        }
        Err(e) => return Err(HandshakeError::Malformed(e.to_string())),
    };
    if used > limits.max_handshake_bytes {
        return Err(HandshakeError::TooLarge {
            bytes: used,
            max: limits.max_handshake_bytes,
        });
    }
    if request.method != Some("GET") {
        return Err(HandshakeError::Malformed(format!(
            "method {} instead of GET",
            request.method.unwrap_or("")
        )));
    }
    let headers = request.headers;
    let require = |name: &'static str, ok: &dyn Fn(&[u8]) -> bool| match header(headers, name) {
        Some(v) if ok(v) => Ok(v),
        v => Err(HandshakeError::BadHeader {
            name,
            value: v
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default(),
        }),
    };
    require("Upgrade", &|v| has_token(v, "websocket"))?;
    require("Connection", &|v| has_token(v, "upgrade"))?;
    require("Sec-WebSocket-Version", &|v| v.trim_ascii() == b"13")?;
    // A key is 16 random bytes in base64 (RFC 6455 §4.1).
    let key = require("Sec-WebSocket-Key", &|v| {
        base64::engine::general_purpose::STANDARD
            .decode(v.trim_ascii())
            .is_ok_and(|k| k.len() == 16)
    })?;
    Ok(Some((
        ServerRequest {
            path: request.path.unwrap_or("/").to_owned(),
            key: String::from_utf8_lossy(key.trim_ascii()).into_owned(),
            protocols: header_tokens(headers, "sec-websocket-protocol")
                .map(str::to_owned)
                .collect(),
            headers: headers
                .iter()
                .map(|h| (h.name.to_owned(), h.value.to_vec()))
                .collect(),
        },
        used,
    )))
}

/// The `101 Switching Protocols` answer to `request`, choosing `protocol`.
pub fn accept_response(request: &ServerRequest, protocol: Option<&str>) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        accept_key(request.key.as_bytes())
    );
    if let Some(p) = protocol {
        out.push_str("Sec-WebSocket-Protocol: ");
        out.push_str(p);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// A plain HTTP refusal (for example `400`, or `503` with a reason).
pub fn reject_response(status: u16, reason: &str) -> Vec<u8> {
    let reason: String = reason.chars().filter(|c| !c.is_control()).collect();
    format!(
        "HTTP/1.1 {status} {reason}\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::{ClientHandshake, HandshakeRequest};

    #[test]
    fn client_request_is_accepted_and_answer_validates() {
        let limits = Limits::default();
        let req = HandshakeRequest::new("localhost:9", "/x?y=1", [3; 16]).protocol("chat");
        let bytes = req.encode().unwrap();
        let (sr, used) = parse_request(&bytes, &limits).unwrap().unwrap();
        assert_eq!((sr.path.as_str(), used), ("/x?y=1", bytes.len()));
        assert_eq!(sr.protocols, vec!["chat".to_owned()]);
        let answer = accept_response(&sr, Some("chat"));
        let (resp, _) = ClientHandshake::new(&req, &limits)
            .parse_response(&answer)
            .unwrap()
            .unwrap();
        assert_eq!(resp.protocol.as_deref(), Some("chat"));
    }

    #[test]
    fn a_key_that_is_not_16_base64_bytes_is_refused() {
        let request = |key: &str| {
            format!(
                "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
            )
        };
        assert!(
            parse_request(
                request("AAAAAAAAAAAAAAAAAAAAAA==").as_bytes(),
                &Limits::default()
            )
            .is_ok()
        );
        for bad in ["!!!!!!!!!!!!!!!!!!!!!!!!", "AAAAAAAAAAAAAAAAAAAAAAAA"] {
            assert!(
                matches!(
                    parse_request(request(bad).as_bytes(), &Limits::default()),
                    Err(HandshakeError::BadHeader {
                        name: "Sec-WebSocket-Key",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn wrong_version_is_refused() {
        let bytes = b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n";
        assert!(matches!(
            parse_request(bytes, &Limits::default()),
            Err(HandshakeError::BadHeader {
                name: "Sec-WebSocket-Version",
                ..
            })
        ));
    }
}
