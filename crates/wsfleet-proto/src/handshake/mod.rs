//! The opening handshake (RFC 6455 §4): its own small machine, bounded in
//! bytes and header count. Time bounds are the runtime's.

mod accept_key;
mod client;
mod error;
mod server;

pub use accept_key::accept_key;
pub use client::{ClientHandshake, HandshakeRequest, HandshakeResponse, Negotiated};
pub use error::{HandshakeError, redact_query};
pub use server::{ServerRequest, accept_response, parse_request, reject_response};

/// Finds `token` in a comma-separated header value, case-insensitively.
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The first header named `name` (case-insensitive).
fn header<'a>(headers: &'a [httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// Every header named `name`, joined as one comma-separated list would be.
fn header_tokens<'a>(
    headers: &'a [httparse::Header<'a>],
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}
