//! The fast path of [`Target::parse`]: a plain `ws://host[:port][/path][?query]`
//! read without the WHATWG parser, to the very [`Target`] that parser gives.
//!
//! A connect parses its URL every time (`Connection::connect(url)`), and the
//! `url` crate's general parser (normalisation, IDNA, percent-encoding,
//! serialisation) was a third of a loopback handshake's instructions. Most
//! configured URLs need none of that: a lowercase scheme, a lowercase ASCII
//! host name or dotted-quad IPv4 address, an optional port, and a path and
//! query of characters no WHATWG rule rewrites. [`parse`] takes exactly
//! those and returns `None` for anything else, which then goes to the full
//! parser: uppercase, IPv6 literals, IDNA (`xn--`), the WHATWG IPv4 forms
//! (`0x7f.1`, `127.1`), dot segments, characters that get percent-encoded,
//! whitespace, userinfo, fragments, and every error. So the accepted inputs,
//! the results and the error texts are those of the full parser; the test
//! below compares the two on every input it generates.

use super::url::{Scheme, Target, server_name};

/// `url`, parsed without the WHATWG parser when it is plain (see the module
/// docs); `None` when it is not, or when it is invalid.
pub(super) fn parse(url: &str) -> Option<Target> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("ws://") {
        (Scheme::Ws, rest)
    } else {
        (Scheme::Wss, url.strip_prefix("wss://")?)
    };
    // Byte scans throughout: `str`'s char searches cost more than the
    // whole check on strings this short.
    let end = position(rest, |b| b == b'/' || b == b'?').unwrap_or(rest.len());
    let (authority, path_and_query) = rest.split_at(end);
    let (host, port) = match position(authority, |b| b == b':') {
        Some(colon) => (&authority[..colon], explicit_port(&authority[colon + 1..])?),
        None => (authority, scheme.default_port()),
    };
    if !plain_host(host) {
        return None;
    }
    if scheme == Scheme::Wss && server_name(host).is_err() {
        return None;
    }
    let (path, query) = match position(path_and_query, |b| b == b'?') {
        Some(mark) => (&path_and_query[..mark], Some(&path_and_query[mark + 1..])),
        None => (path_and_query, None),
    };
    if !plain_path(path) || !query.is_none_or(|q| q.bytes().all(is_plain_query_byte)) {
        return None;
    }
    let mut request_target = String::with_capacity(path_and_query.len() + 1);
    if path.is_empty() {
        request_target.push('/');
    }
    request_target.push_str(path_and_query);
    Some(Target {
        scheme,
        host: host.to_owned(),
        port,
        path_and_query: request_target,
    })
}

/// Where the first byte of `s` that `is` picks is.
fn position(s: &str, is: impl Fn(u8) -> bool) -> Option<usize> {
    s.bytes().position(is)
}

/// `s`'s parts between the `separator` bytes.
fn parts(s: &str, separator: u8) -> impl DoubleEndedIterator<Item = &[u8]> {
    s.as_bytes().split(move |&b| b == separator)
}

/// A port of one to five digits, 1 to 65535 (the WHATWG parser reads
/// leading zeros as decimal too); `None` otherwise (empty, 0, too large).
fn explicit_port(digits: &str) -> Option<u16> {
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u16>().ok().filter(|&port| port != 0)
}

/// A host the WHATWG parser keeps as it is: lowercase ASCII letters, digits
/// and hyphens in non-empty dot-separated labels, none an IDNA `xn--` label,
/// and the last label not a number (then the host is IPv4, kept only as a
/// canonical dotted quad) nor `0x`-prefixed (a hexadecimal IPv4 part).
fn plain_host(host: &str) -> bool {
    let plain_label = |label: &[u8]| {
        !label.is_empty()
            && !label.starts_with(b"xn--")
            && label
                .iter()
                .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if !parts(host, b'.').all(plain_label) {
        return false;
    }
    let last = parts(host, b'.').next_back().unwrap_or_default();
    if last.iter().all(u8::is_ascii_digit) {
        return canonical_dotted_quad(host);
    }
    !last.starts_with(b"0x")
}

/// Four decimal parts of 0 to 255 without leading zeros: an IPv4 address
/// the WHATWG parser writes back unchanged.
fn canonical_dotted_quad(host: &str) -> bool {
    let canonical_part = |digits: &[u8]| match *digits {
        [b'0'..=b'9'] | [b'1'..=b'9', b'0'..=b'9'] => true,
        [a @ b'1'..=b'2', b @ b'0'..=b'9', c @ b'0'..=b'9'] => {
            u32::from(a - b'0') * 100 + u32::from(b - b'0') * 10 + u32::from(c - b'0') <= 255
        }
        _ => false,
    };
    parts(host, b'.').count() == 4 && parts(host, b'.').all(canonical_part)
}

/// A path the WHATWG parser keeps as it is: empty or starting with `/`, of
/// [`is_plain_path_byte`]s, with no `.` or `..` segment (which it removes).
fn plain_path(path: &str) -> bool {
    (path.is_empty() || path.starts_with('/'))
        && path.bytes().all(is_plain_path_byte)
        && parts(path, b'/').all(|segment| segment != b"." && segment != b"..")
    // `%2e` spellings of dot segments cannot occur: `%` is not plain.
}

/// RFC 3986 `pchar` without `%` and `'`, plus `/`: bytes no WHATWG path rule
/// percent-encodes or interprets (`%2e` is a dot).
fn is_plain_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&()*+,;=:@/".contains(&b)
}

/// Query bytes no WHATWG rule percent-encodes for `ws`/`wss`: the path's,
/// plus `?` and `%` (an escape in a query is kept verbatim).
fn is_plain_query_byte(b: u8) -> bool {
    is_plain_path_byte(b) || b == b'?' || b == b'%'
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The fast path's answer, checked against the full parser: where it
    /// answers, it answers exactly as the full parser does.
    fn agrees(url: &str) -> Option<Target> {
        let fast = parse(url);
        if let Some(fast) = &fast {
            match Target::parse_whatwg(url) {
                Ok(full) => assert_eq!(fast, &full, "{url:?}"),
                Err(e) => panic!("{url:?}: the fast path took it as {fast:?}, the parser: {e}"),
            }
        }
        fast
    }

    #[test]
    fn plain_urls_take_the_fast_path() {
        for url in [
            "ws://127.0.0.1:9001/",
            "ws://127.0.0.1:9001",
            "ws://localhost/",
            "wss://example.com/feed?v=2&token=a%2Fb",
            "ws://example.com:80/",
            "ws://example.com:0080/x",
            "ws://a-b.example-1.com:65535/a/b/c",
            "ws://h?q",
            "ws://h/?",
            "ws://h//x",
            "ws://-h-.x-/",
            "ws://ab--cd.example/",
            "ws://h/a:b@c;d=e,f(g)*h+i$j!k~l",
            "ws://h/x?a=/b?c:d@e%zz",
            "wss://1.2.3.4:443/",
            "ws://255.255.255.255/",
            "ws://0.0.0.0:1/",
            "ws://10.200.0.99/",
            "ws://199.249.250.255/",
        ] {
            assert!(agrees(url).is_some(), "{url}");
        }
    }

    #[test]
    fn everything_else_takes_the_full_parser() {
        for url in [
            "WS://h/",
            "ws://Example.com/",
            "ws://[::1]:9001/",
            "ws://xn--nxasmq6b.com/",
            "ws://ab.xn--p1ai/",
            "ws://0x7f.1/",
            "ws://127.1/",
            "ws://127.0.0.01/",
            "ws://1.2.3.4.5/",
            "ws://1.2.3/",
            "ws://1.2.3.256/",
            "ws://1.2.3.300/",
            "ws://1.2.3.260/",
            "ws://01.2.3.4/",
            "ws://a.2.3.4/",
            "ws://1.2.3.4./",
            "ws://256.1.1.1/",
            "ws://a.0x1/",
            "ws://a.1/",
            "ws://a..b/",
            "ws://a./",
            "ws://.a/",
            "ws:///path",
            "ws://",
            "ws://h:/",
            "ws://h:0/",
            "ws://h:65536/",
            "ws://h:123456/",
            "ws://h:8a/",
            "ws://h/a/../b",
            "ws://h/a/./b",
            "ws://h/..",
            "ws://h/.",
            "ws://h/%2e%2e/x",
            "ws://h/a b",
            "ws://h/a\tb",
            " ws://h/",
            "ws://h/\n",
            "ws://h/a#f",
            "ws://h/?a#f",
            "ws://u:p@h/",
            "ws://h\\a",
            "ws://h/a\\b",
            "ws://h/a'b",
            "ws://h/?a'b",
            "ws://h/a\"b",
            "ws://h/{x}",
            "ws://h/é",
            "ws://h_x/",
            "wss://h_x/",
            "http://h/",
            "ws:h/",
        ] {
            assert!(agrees(url).is_none(), "{url}");
        }
    }

    /// Pieces that trip WHATWG rules, so generated URLs reach every branch.
    const PIECES: &[&str] = &[
        "ws://", "wss://", "WS://", "ws:", "a", "Z", "0", "1", "9", "-", ".", "..", ":", "/", "?",
        "%", "%2e", "%2E", "#", "@", "'", "\"", " ", "\t", "\\", "x", "xn--", "0x", "00", "01",
        "127", "255", "256", "65535", "65536", "80", "443", "~", "é", "[", "]", "::1",
    ];

    /// Host pieces: mostly plain, some not.
    const HOST: &[&str] = &[
        "a", "b", "z", "ab", "a", "b", "z", "0", "1", "9", "127", "255", "-", ".", ".", "xn--",
        "0x", "00", "01", "256", "A", "_",
    ];

    /// Path and query pieces: mostly plain, some not.
    const REST: &[&str] = &[
        "/", "/", "/", "a", "b", "1", "=", "&", "?", ":", "@", "~", "+", "-", "_", "!", "*", ".",
        "..", "%", "%2e", "'", " ", "#", "{", "é", "\\",
    ];

    proptest! {
        #[test]
        fn the_fast_path_agrees_with_the_full_parser(
            pieces in proptest::collection::vec(proptest::sample::select(PIECES), 0..12),
            plain_scheme in any::<bool>(),
        ) {
            let mut url = String::new();
            if plain_scheme {
                url.push_str("ws://");
            }
            for piece in pieces {
                url.push_str(piece);
            }
            agrees(&url);
        }

        /// Shaped like a URL, so more of them take the fast path.
        #[test]
        fn url_shaped_inputs_agree_too(
            tls in any::<bool>(),
            host in proptest::collection::vec(proptest::sample::select(HOST), 1..5),
            port in proptest::option::of(proptest::sample::select(&["0", "1", "80", "0080", "65535", "65536", "", "x"][..])),
            rest in proptest::collection::vec(proptest::sample::select(REST), 0..6),
            slash in proptest::bool::weighted(0.8),
        ) {
            let mut url = String::from(if tls { "wss://" } else { "ws://" });
            url.push_str(&host.concat());
            if let Some(port) = port {
                url.push(':');
                url.push_str(port);
            }
            if slash {
                url.push('/');
            }
            url.push_str(&rest.concat());
            agrees(&url);
        }
    }
}
