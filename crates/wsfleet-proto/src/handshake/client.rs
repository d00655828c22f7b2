use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::{HandshakeError, accept_key, has_token, header};
use crate::deflate::{DeflateConfig, DeflateParams};
use crate::limits::Limits;

/// Headers the handshake sets itself; a caller may not send them again.
const RESERVED: [&str; 5] = [
    "host",
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
];

/// A client's opening handshake request (RFC 6455 §4.1).
///
/// ```
/// use wsfleet_proto::handshake::HandshakeRequest;
/// let req = HandshakeRequest::new("example.com", "/chat", [7; 16]).protocol("mqtt");
/// let bytes = req.encode().unwrap();
/// assert!(bytes.starts_with(b"GET /chat HTTP/1.1\r\nHost: example.com\r\n"));
/// ```
#[derive(Debug, Clone)]
pub struct HandshakeRequest {
    host: String,
    path: String,
    key: String,
    origin: Option<String>,
    protocols: Vec<String>,
    headers: Vec<(String, String)>,
    deflate: Option<DeflateConfig>,
}

impl HandshakeRequest {
    /// A request for `path` (with query) on `host` (the `Host` header value,
    /// with a non-default port). `nonce` must be 16 random bytes: it becomes
    /// `Sec-WebSocket-Key`.
    pub fn new(host: impl Into<String>, path: impl Into<String>, nonce: [u8; 16]) -> Self {
        Self {
            host: host.into(),
            path: path.into(),
            key: STANDARD.encode(nonce),
            origin: None,
            protocols: Vec::new(),
            headers: Vec::new(),
            deflate: None,
        }
    }

    /// Offers permessage-deflate (RFC 7692).
    #[must_use]
    pub fn deflate(mut self, config: DeflateConfig) -> Self {
        self.deflate = Some(config);
        self
    }

    /// Sends an `Origin` header.
    #[must_use]
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// Offers a subprotocol (in order of preference).
    #[must_use]
    pub fn protocol(mut self, protocol: impl Into<String>) -> Self {
        self.protocols.push(protocol.into());
        self
    }

    /// Adds a header (for example `Authorization`).
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The `Sec-WebSocket-Key` value.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The subprotocols offered.
    pub fn protocols(&self) -> &[String] {
        &self.protocols
    }

    /// The request bytes.
    ///
    /// # Errors
    /// [`HandshakeError::InvalidRequestHeader`] for a header name or value
    /// with CR, LF or NUL (header injection), an empty or non-token name, or a
    /// header the handshake sets itself.
    pub fn encode(&self) -> Result<Vec<u8>, HandshakeError> {
        // Control bytes (but tab) would corrupt the request or smuggle headers.
        let bad = |s: &str| s.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f);
        let bad_name = |s: &str| s.is_empty() || s.bytes().any(|b| !is_token_byte(b));
        for (name, value) in &self.headers {
            if bad_name(name)
                || bad(value)
                || RESERVED.contains(&name.to_ascii_lowercase().as_str())
            {
                return Err(HandshakeError::InvalidRequestHeader(name.clone()));
            }
        }
        for (what, value) in [("Host", &self.host), ("path", &self.path)] {
            if value.is_empty() || bad(value) || value.contains([' ', '\t']) {
                return Err(HandshakeError::InvalidRequestHeader(what.to_owned()));
            }
        }
        if !self.path.starts_with('/') {
            return Err(HandshakeError::InvalidRequestHeader("path".to_owned()));
        }
        if let Some(origin) = &self.origin {
            if bad(origin) {
                return Err(HandshakeError::InvalidRequestHeader("Origin".to_owned()));
            }
        }
        if self.protocols.iter().any(|p| bad_name(p)) {
            return Err(HandshakeError::InvalidRequestHeader(
                "Sec-WebSocket-Protocol".to_owned(),
            ));
        }
        let mut out = String::with_capacity(256);
        out.push_str("GET ");
        out.push_str(&self.path);
        out.push_str(" HTTP/1.1\r\nHost: ");
        out.push_str(&self.host);
        out.push_str("\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ");
        out.push_str(&self.key);
        out.push_str("\r\nSec-WebSocket-Version: 13\r\n");
        if let Some(origin) = &self.origin {
            out.push_str("Origin: ");
            out.push_str(origin);
            out.push_str("\r\n");
        }
        if !self.protocols.is_empty() {
            out.push_str("Sec-WebSocket-Protocol: ");
            out.push_str(&self.protocols.join(", "));
            out.push_str("\r\n");
        }
        if let Some(deflate) = &self.deflate {
            out.push_str("Sec-WebSocket-Extensions: ");
            out.push_str(&deflate.offer());
            out.push_str("\r\n");
        }
        for (name, value) in &self.headers {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        Ok(out.into_bytes())
    }
}

/// The elements of every `name` header, joined as one comma-separated list
/// would be (trimmed, empty ones skipped).
///
/// # Errors
/// [`HandshakeError::BadHeader`] if an element has a byte `allowed` refuses
/// (non-ASCII included): a value we cannot read fails the handshake rather
/// than counting as absent (RFC 6455 §4.1).
fn list_header<'a>(
    headers: &'a [httparse::Header<'a>],
    name: &'static str,
    allowed: fn(u8) -> bool,
) -> Result<Vec<&'a str>, HandshakeError> {
    let mut elements = Vec::new();
    for h in headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)) {
        let text = std::str::from_utf8(h.value)
            .ok()
            .filter(|v| v.bytes().all(|b| b",\t ".contains(&b) || allowed(b)))
            .ok_or_else(|| HandshakeError::BadHeader {
                name,
                value: String::from_utf8_lossy(h.value).into_owned(),
            })?;
        for element in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            // Whitespace inside an element (not around it) is valid only
            // where `allowed` says so.
            if !element.bytes().all(allowed) {
                return Err(HandshakeError::BadHeader {
                    name,
                    value: text.to_owned(),
                });
            }
            elements.push(element);
        }
    }
    Ok(elements)
}

/// Header slots a response is parsed with on the stack: the default
/// [`Limits::max_handshake_headers`]. A larger limit takes a heap buffer.
const STACK_HEADERS: usize = 64;

/// RFC 7230 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What a successful handshake response told us.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandshakeResponse {
    /// The subprotocol the server chose, if any.
    pub protocol: Option<String>,
    /// permessage-deflate as negotiated, if the server accepted it.
    pub deflate: Option<DeflateParams>,
    /// All response headers, names as sent.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// What a successful handshake response settled: the
/// [`HandshakeResponse`] without the copy of every header, as
/// [`ClientHandshake::validate_response`] gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Negotiated {
    /// The subprotocol the server chose, if any.
    pub protocol: Option<String>,
    /// permessage-deflate as negotiated, if the server accepted it.
    pub deflate: Option<DeflateParams>,
}

/// Validates the server's answer to a [`HandshakeRequest`].
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    expected_accept: String,
    protocols: Vec<String>,
    deflate: Option<DeflateConfig>,
    max_bytes: usize,
    max_headers: usize,
}

impl ClientHandshake {
    /// Expects the answer to `request`, within `limits`' handshake bounds.
    pub fn new(request: &HandshakeRequest, limits: &Limits) -> Self {
        Self {
            expected_accept: accept_key(request.key().as_bytes()),
            protocols: request.protocols.clone(),
            deflate: request.deflate,
            max_bytes: limits.max_handshake_bytes,
            max_headers: limits.max_handshake_headers,
        }
    }

    /// Parses the response from the start of `buf` (everything received so
    /// far). `Ok(None)`: incomplete, read more. On success, also returns how
    /// many bytes the response used: the rest is the first WebSocket data.
    ///
    /// # Errors
    /// Every way the response can fail RFC 6455 §4.1 or the limits; a 3xx
    /// is [`HandshakeError::Redirect`], any other non-101 status
    /// [`HandshakeError::Status`].
    pub fn parse_response(
        &self,
        buf: &[u8],
    ) -> Result<Option<(HandshakeResponse, usize)>, HandshakeError> {
        self.parse_with(buf, |negotiated, headers| HandshakeResponse {
            protocol: negotiated.protocol,
            deflate: negotiated.deflate,
            headers: headers
                .iter()
                .map(|h| (h.name.to_owned(), h.value.to_vec()))
                .collect(),
        })
    }

    /// As [`parse_response`](Self::parse_response), with the same checks
    /// and errors, keeping only what the response settled: no copy of its
    /// headers (two allocations each), for a caller that does not read them.
    ///
    /// # Errors
    /// As [`parse_response`](Self::parse_response).
    pub fn validate_response(
        &self,
        buf: &[u8],
    ) -> Result<Option<(Negotiated, usize)>, HandshakeError> {
        self.parse_with(buf, |negotiated, _headers| negotiated)
    }

    /// Parses and checks the response; a valid one becomes `finish`'s answer
    /// to what it settled and its headers (borrowed from `buf`).
    fn parse_with<T>(
        &self,
        buf: &[u8],
        finish: impl FnOnce(Negotiated, &[httparse::Header<'_>]) -> T,
    ) -> Result<Option<(T, usize)>, HandshakeError> {
        // Up to the default limit the header slots live on the stack: no
        // 2 KiB allocation per answer (or per partial read of one).
        let mut on_stack = [httparse::EMPTY_HEADER; STACK_HEADERS];
        let mut on_heap = Vec::new();
        let headers = if self.max_headers <= STACK_HEADERS {
            &mut on_stack[..self.max_headers]
        } else {
            on_heap.resize(self.max_headers, httparse::EMPTY_HEADER);
            &mut on_heap[..]
        };
        let mut response = httparse::Response::new(headers);
        let used = match response.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if buf.len() >= self.max_bytes {
                    return Err(HandshakeError::TooLarge {
                        bytes: buf.len(),
                        max: self.max_bytes,
                    });
                }
                return Ok(None);
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(HandshakeError::TooManyHeaders {
                    max: self.max_headers,
                });
            }
            Err(e) => return Err(HandshakeError::Malformed(e.to_string())),
        };
        if used > self.max_bytes {
            return Err(HandshakeError::TooLarge {
                bytes: used,
                max: self.max_bytes,
            });
        }
        let status = response.code.unwrap_or(0);
        let headers = response.headers;
        let text = |name| header(headers, name).map(|v| String::from_utf8_lossy(v).into_owned());
        match status {
            // RFC 6455 §4.1: the upgrade is an HTTP/1.1 exchange (httparse
            // reads only 1.0 and 1.1). A refusal is reported as such below,
            // whatever its version.
            101 if response.version != Some(1) => {
                return Err(HandshakeError::Malformed(format!(
                    "101 answer in HTTP/1.{}, not HTTP/1.1",
                    response.version.unwrap_or(0)
                )));
            }
            101 => {}
            300..=399 => {
                return Err(HandshakeError::Redirect {
                    status,
                    location: text("location"),
                });
            }
            _ => {
                return Err(HandshakeError::Status {
                    status,
                    reason: response.reason.unwrap_or("").to_owned(),
                    retry_after: text("retry-after"),
                });
            }
        }
        let require = |name: &'static str, token: &str| match header(headers, name) {
            Some(v) if has_token(v, token) => Ok(()),
            v => Err(HandshakeError::BadHeader {
                name,
                value: v
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default(),
            }),
        };
        require("Upgrade", "websocket")?;
        require("Connection", "upgrade")?;
        match header(headers, "sec-websocket-accept") {
            Some(got) if got.trim_ascii() == self.expected_accept.as_bytes() => {}
            got => {
                return Err(HandshakeError::BadAccept {
                    expected: self.expected_accept.clone(),
                    got: got
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default(),
                });
            }
        }
        let chosen = list_header(headers, "Sec-WebSocket-Protocol", is_token_byte)?;
        let protocol = chosen.first().map(|&p| p.to_owned());
        if let Some(p) = &protocol {
            if chosen.len() > 1 || !self.protocols.iter().any(|o| o == p) {
                return Err(HandshakeError::UnexpectedProtocol(p.clone()));
            }
        }
        // Parameters may be quoted strings: any visible ASCII is allowed here,
        // the negotiation reads the rest.
        let extensions = list_header(headers, "Sec-WebSocket-Extensions", |b| {
            b.is_ascii_graphic() || b == b' ' || b == b'\t'
        })?;
        let deflate = match (extensions.is_empty(), &self.deflate) {
            (true, _) => None,
            (false, None) => {
                return Err(HandshakeError::UnexpectedExtension(extensions.join(", ")));
            }
            (false, Some(offer)) => Some(
                offer
                    .accept(&extensions.join(", "))
                    .map_err(HandshakeError::BadExtension)?,
            ),
        };
        Ok(Some((
            finish(Negotiated { protocol, deflate }, headers),
            used,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deflate::DeflateError;

    fn pair() -> (HandshakeRequest, ClientHandshake) {
        let req = HandshakeRequest::new("h", "/", [0; 16])
            .protocol("a")
            .protocol("b");
        let hs = ClientHandshake::new(&req, &Limits::default());
        (req, hs)
    }

    fn ok_response(req: &HandshakeRequest, extra: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: WebSocket\r\nconnection: keep-alive, Upgrade\r\nSec-WebSocket-Accept: {}\r\n{extra}\r\n",
            accept_key(req.key().as_bytes())
        )
        .into_bytes()
    }

    #[test]
    fn accepts_valid_response_and_reports_leftover() {
        let (req, hs) = pair();
        let mut bytes = ok_response(&req, "Sec-WebSocket-Protocol: b\r\n");
        let n = bytes.len();
        bytes.extend_from_slice(&[0x81, 0x00]);
        let (resp, used) = hs.parse_response(&bytes).unwrap().unwrap();
        assert_eq!((resp.protocol.as_deref(), used), (Some("b"), n));
    }

    /// The lean answer is the full one without the headers, on success and
    /// on every error.
    #[test]
    fn validate_response_agrees_with_parse_response() {
        let (req, hs) = pair();
        let good = ok_response(&req, "Sec-WebSocket-Protocol: a\r\nX-Extra: 1\r\n");
        let bad = ok_response(&req, "Sec-WebSocket-Protocol: c\r\n");
        for bytes in [
            &good[..],
            &good[..good.len() - 1],
            &bad[..],
            b"HTTP/1.1 404 No\r\n\r\n",
        ] {
            let full = hs.parse_response(bytes).map(|r| {
                r.map(|(resp, used)| {
                    assert_eq!(resp.headers.len(), 5, "all headers kept");
                    ((resp.protocol, resp.deflate), used)
                })
            });
            let lean = hs
                .validate_response(bytes)
                .map(|r| r.map(|(n, used)| ((n.protocol, n.deflate), used)));
            assert_eq!(full, lean, "{:?}", String::from_utf8_lossy(bytes));
        }
        assert_eq!(
            hs.validate_response(&good)
                .unwrap()
                .unwrap()
                .0
                .protocol
                .as_deref(),
            Some("a")
        );
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let (req, hs) = pair();
        let bytes = ok_response(&req, "");
        for cut in 0..bytes.len() {
            assert_eq!(hs.parse_response(&bytes[..cut]).unwrap(), None, "cut {cut}");
        }
    }

    #[test]
    fn rejects_wrong_accept_protocol_extension_and_headers() {
        let (req, hs) = pair();
        let bad_accept = b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n";
        assert!(matches!(
            hs.parse_response(bad_accept),
            Err(HandshakeError::BadAccept { .. })
        ));
        let proto = ok_response(&req, "Sec-WebSocket-Protocol: c\r\n");
        assert_eq!(
            hs.parse_response(&proto),
            Err(HandshakeError::UnexpectedProtocol("c".into()))
        );
        let ext = ok_response(&req, "Sec-WebSocket-Extensions: permessage-deflate\r\n");
        assert!(matches!(
            hs.parse_response(&ext),
            Err(HandshakeError::UnexpectedExtension(_))
        ));
        let no_upgrade = b"HTTP/1.1 101 OK\r\nConnection: upgrade\r\n\r\n";
        assert!(matches!(
            hs.parse_response(no_upgrade),
            Err(HandshakeError::BadHeader {
                name: "Upgrade",
                ..
            })
        ));
    }

    #[test]
    fn unreadable_protocol_or_extensions_fail_instead_of_counting_as_absent() {
        let (req, hs) = pair();
        let cases: [(&[u8], &str); 5] = [
            (
                b"Sec-WebSocket-Protocol: \xffa\r\n",
                "Sec-WebSocket-Protocol",
            ),
            (b"Sec-WebSocket-Protocol: a b\r\n", "Sec-WebSocket-Protocol"),
            (
                b"Sec-WebSocket-Protocol: \xc3\xa9\r\n",
                "Sec-WebSocket-Protocol",
            ),
            (
                b"Sec-WebSocket-Extensions: \xff\r\n",
                "Sec-WebSocket-Extensions",
            ),
            (
                b"Sec-WebSocket-Extensions: x\xc3\xa9\r\n",
                "Sec-WebSocket-Extensions",
            ),
        ];
        for (extra, header) in cases {
            let mut bytes = ok_response(&req, "");
            bytes.truncate(bytes.len() - 2);
            bytes.extend_from_slice(extra);
            bytes.extend_from_slice(b"\r\n");
            match hs.parse_response(&bytes) {
                Err(HandshakeError::BadHeader { name, .. }) => assert_eq!(name, header),
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(extra)),
            }
        }
        // Quoted parameter values and spaces around separators stay fine.
        let deflate = HandshakeRequest::new("h", "/", [0; 16]).deflate(DeflateConfig::default());
        let hs = ClientHandshake::new(&deflate, &Limits::default());
        let bytes = ok_response(
            &deflate,
            "Sec-WebSocket-Extensions: permessage-deflate ; server_no_context_takeover;server_max_window_bits=\"10\"\r\n",
        );
        assert!(
            hs.parse_response(&bytes)
                .unwrap()
                .unwrap()
                .0
                .deflate
                .is_some()
        );
    }

    #[test]
    fn a_refused_deflate_answer_names_the_parameter() {
        let deflate = HandshakeRequest::new("h", "/", [0; 16]).deflate(DeflateConfig::default());
        let hs = ClientHandshake::new(&deflate, &Limits::default());
        let bytes = ok_response(
            &deflate,
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; server_max_window_bits=99\r\n",
        );
        let e = hs.parse_response(&bytes).unwrap_err();
        assert_eq!(
            e,
            HandshakeError::BadExtension(DeflateError::InvalidWindowBits {
                parameter: "server_max_window_bits",
                value: Some("99".into()),
            })
        );
        assert_eq!(
            e.to_string(),
            "permessage-deflate answer refused: server_max_window_bits needs a value from 8 to 15, got \"99\""
        );
    }

    #[test]
    fn a_101_must_be_http_1_1() {
        let (req, hs) = pair();
        let mut bytes = ok_response(&req, "");
        bytes[..8].copy_from_slice(b"HTTP/1.0");
        assert!(
            matches!(hs.parse_response(&bytes), Err(HandshakeError::Malformed(ref why)) if why.contains("HTTP/1.0")),
            "{:?}",
            hs.parse_response(&bytes)
        );
        // A refusal from an HTTP/1.0 server still reports its status.
        let old = b"HTTP/1.0 404 Not Found\r\n\r\n";
        assert!(matches!(
            hs.parse_response(old),
            Err(HandshakeError::Status { status: 404, .. })
        ));
    }

    #[test]
    fn reports_redirect_and_status_with_retry_after() {
        let (_, hs) = pair();
        let redirect = b"HTTP/1.1 302 Found\r\nLocation: ws://other/\r\n\r\n";
        assert_eq!(
            hs.parse_response(redirect),
            Err(HandshakeError::Redirect {
                status: 302,
                location: Some("ws://other/".into())
            })
        );
        let busy = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\n\r\n";
        assert_eq!(
            hs.parse_response(busy),
            Err(HandshakeError::Status {
                status: 503,
                reason: "Service Unavailable".into(),
                retry_after: Some("7".into())
            })
        );
    }

    #[test]
    fn endless_headers_hit_the_byte_limit() {
        let req = HandshakeRequest::new("h", "/", [0; 16]);
        let limits = Limits::default().with_max_handshake_bytes(1024);
        let hs = ClientHandshake::new(&req, &limits);
        let mut bytes = b"HTTP/1.1 101 OK\r\n".to_vec();
        while bytes.len() < 2000 {
            bytes.extend_from_slice(b"X-Junk: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert!(matches!(
            hs.parse_response(&bytes),
            Err(HandshakeError::TooLarge { max: 1024, .. })
        ));
    }

    #[test]
    fn too_many_headers_is_reported() {
        let req = HandshakeRequest::new("h", "/", [0; 16]);
        let hs = ClientHandshake::new(&req, &Limits::default().with_max_handshake_headers(8));
        let mut bytes = b"HTTP/1.1 101 OK\r\n".to_vec();
        for i in 0..9 {
            bytes.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
        }
        bytes.extend_from_slice(b"\r\n");
        assert_eq!(
            hs.parse_response(&bytes),
            Err(HandshakeError::TooManyHeaders { max: 8 })
        );
    }

    /// The header limit holds on both sides of the stack/heap switch.
    #[test]
    fn header_limits_around_the_stack_slots() {
        let req = HandshakeRequest::new("h", "/", [0; 16]);
        for (max, sent, fits) in [
            (STACK_HEADERS, STACK_HEADERS, true),
            (STACK_HEADERS, STACK_HEADERS + 1, false),
            (STACK_HEADERS + 36, STACK_HEADERS + 36, true),
            (STACK_HEADERS + 36, STACK_HEADERS + 37, false),
        ] {
            let limits = Limits::default()
                .with_max_handshake_headers(max)
                .with_max_handshake_bytes(64 * 1024);
            let hs = ClientHandshake::new(&req, &limits);
            // The three required headers, then fillers up to `sent`.
            let mut bytes = ok_response(&req, "");
            bytes.truncate(bytes.len() - 2);
            for i in 3..sent {
                bytes.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
            }
            bytes.extend_from_slice(b"\r\n");
            let got = hs.parse_response(&bytes);
            if fits {
                assert_eq!(got.unwrap().unwrap().0.headers.len(), sent, "{max}/{sent}");
            } else {
                assert_eq!(
                    got,
                    Err(HandshakeError::TooManyHeaders { max }),
                    "{max}/{sent}"
                );
            }
        }
    }

    #[test]
    fn header_injection_is_refused() {
        let req = HandshakeRequest::new("h", "/", [0; 16]).header("X-A", "1\r\nEvil: 2");
        assert!(req.encode().is_err());
        let req = HandshakeRequest::new("h", "/", [0; 16]).header("Sec-WebSocket-Key", "x");
        assert!(req.encode().is_err());
        assert!(
            HandshakeRequest::new("h", "", [0; 16]).encode().is_err(),
            "empty path"
        );
        assert!(
            HandshakeRequest::new("h", "/a\x01", [0; 16])
                .encode()
                .is_err(),
            "control byte"
        );
        assert!(
            HandshakeRequest::new("h", "/", [0; 16])
                .header("X", "a\x7fb")
                .encode()
                .is_err()
        );
        let req = HandshakeRequest::new("h", "/", [0; 16]).header("Authorization", "Bearer t");
        assert!(
            String::from_utf8(req.encode().unwrap())
                .unwrap()
                .contains("\r\nAuthorization: Bearer t\r\n")
        );
    }
}
