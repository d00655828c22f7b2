//! [`Target`]: a `ws://` / `wss://` URL, parsed and validated once.

use std::fmt;
use std::fmt::Write as _;
use std::net::IpAddr;

use rustls_pki_types::ServerName;

use super::error::{ConnectError, ConnectErrorKind, Phase};

/// The URL scheme: plain WebSocket or WebSocket over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `ws://`, default port 80.
    Ws,
    /// `wss://`, default port 443.
    Wss,
}

impl Scheme {
    /// The port used when the URL names none: 80 for `ws`, 443 for `wss`.
    pub const fn default_port(self) -> u16 {
        match self {
            Scheme::Ws => 80,
            Scheme::Wss => 443,
        }
    }

    /// `"ws"` or `"wss"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scheme::Ws => "ws",
            Scheme::Wss => "wss",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where to connect: parsed and validated from a `ws://` or `wss://` URL.
///
/// Build it with [`Target::parse`]; the fields are public for reading. The host is
/// normalised by the WHATWG URL rules (lowercase, IDNA to punycode) and IPv6
/// literals are stored without brackets.
///
/// ```
/// use wsfleet::connect::{Scheme, Target};
///
/// let t = Target::parse("wss://[::1]:9001/feed?v=2").unwrap();
/// assert_eq!(t.scheme, Scheme::Wss);
/// assert_eq!(t.host, "::1");
/// assert_eq!(t.port, 9001);
/// assert_eq!(t.path_and_query, "/feed?v=2");
/// assert_eq!(t.host_header(), "[::1]:9001");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Target {
    /// `ws` or `wss`.
    pub scheme: Scheme,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// Port: explicit in the URL, or the scheme's default.
    pub port: u16,
    /// The request target for the HTTP request line: path plus `?query`; `"/"` if the URL has no path.
    pub path_and_query: String,
}

impl Target {
    /// Parses and validates a `ws://` or `wss://` URL.
    ///
    /// # Errors
    ///
    /// A [`ConnectError`] with [`Phase::Url`] and [`ConnectErrorKind::InvalidUrl`] if the
    /// URL does not parse, its scheme is not `ws`/`wss`, it has no host, port 0, a
    /// fragment (RFC 6455 §3 forbids them), or credentials (`user:pass@`; send an
    /// `Authorization` header instead), or, for `wss`, a host that is not a valid TLS
    /// server name.
    pub fn parse(url: &str) -> Result<Target, ConnectError> {
        match super::plain_url::parse(url) {
            Some(target) => Ok(target),
            None => Self::parse_whatwg(url),
        }
    }

    /// [`parse`](Self::parse) by the WHATWG parser: every input the fast path
    /// ([`plain_url`](super::plain_url)) does not take, and every error.
    pub(super) fn parse_whatwg(url: &str) -> Result<Target, ConnectError> {
        let invalid = |why: String| {
            ConnectError::new(
                Phase::Url,
                redact_userinfo(url),
                ConnectErrorKind::InvalidUrl(why),
            )
        };
        let parsed = ::url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        let scheme = match parsed.scheme() {
            "ws" => Scheme::Ws,
            "wss" => Scheme::Wss,
            "http" => {
                return Err(invalid(
                    "scheme \"http\" is not a WebSocket scheme; use ws://".into(),
                ));
            }
            "https" => {
                return Err(invalid(
                    "scheme \"https\" is not a WebSocket scheme; use wss://".into(),
                ));
            }
            other => {
                return Err(invalid(format!(
                    "scheme {other:?} is not supported; use ws:// or wss://"
                )));
            }
        };
        // WHATWG parsing is lenient for ws/wss (`ws:host`, `ws:///path` with host
        // "path"); a configured URL that lacks `//host` is a mistake, not a host.
        if !has_explicit_authority(url) {
            return Err(invalid(format!(
                "missing host; expected {scheme}://host[:port]/path"
            )));
        }
        let host = match parsed.host() {
            Some(::url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
            // The URL's serialisation of an IPv4 host is the dotted quad
            // already: no second formatting.
            Some(::url::Host::Ipv4(_)) => parsed.host_str().unwrap_or_default().to_owned(),
            Some(::url::Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err(invalid("missing host".into())),
        };
        if parsed.fragment().is_some() {
            return Err(invalid(
                "fragments (#...) are not allowed in WebSocket URLs (RFC 6455 section 3)".into(),
            ));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(invalid(
                "credentials in the URL are not supported; send an Authorization header instead"
                    .into(),
            ));
        }
        let port = parsed.port().unwrap_or(scheme.default_port());
        if port == 0 {
            return Err(invalid("port 0 cannot be connected to".into()));
        }
        if scheme == Scheme::Wss {
            if let Err(e) = server_name(&host) {
                return Err(invalid(format!(
                    "host {host:?} is not a valid TLS server name: {e}"
                )));
            }
        }
        let mut path_and_query = parsed.path().to_owned();
        if path_and_query.is_empty() {
            path_and_query.push('/');
        }
        if let Some(q) = parsed.query() {
            path_and_query.push('?');
            path_and_query.push_str(q);
        }
        Ok(Target {
            scheme,
            host,
            port,
            path_and_query,
        })
    }

    /// Value for the HTTP `Host` header: the host, plus `:port` if the port is not
    /// the scheme's default; an IPv6 literal in brackets.
    pub fn host_header(&self) -> String {
        if self.port == self.scheme.default_port() {
            self.bracketed_host()
        } else {
            self.authority()
        }
    }

    /// [`host_header`](Self::host_header), given this target's
    /// [`authority`](Self::authority): a connect has that at hand already,
    /// so it is not formatted twice.
    pub(crate) fn host_header_with(&self, authority: &str) -> String {
        if self.port == self.scheme.default_port() {
            self.bracketed_host()
        } else {
            authority.to_owned()
        }
    }

    /// Whether the scheme is `wss`.
    pub fn is_tls(&self) -> bool {
        self.scheme == Scheme::Wss
    }

    /// `host:port` with the port always present and IPv6 in brackets, for logs and errors.
    pub fn authority(&self) -> String {
        // Into one sized buffer: `format!` was a tenth of a URL's share of
        // a connect, and every connect names its peer with this.
        let ipv6 = self.host.as_bytes().contains(&b':');
        let mut out = String::with_capacity(self.host.len() + 8);
        if ipv6 {
            out.push('[');
        }
        out.push_str(&self.host);
        if ipv6 {
            out.push(']');
        }
        out.push(':');
        let _ = write!(out, "{}", self.port);
        out
    }

    fn bracketed_host(&self) -> String {
        if self.host.as_bytes().contains(&b':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

impl Target {
    /// The URL with its query shown as `?…` (tokens live there), for logs
    /// and error texts.
    pub fn redacted(&self) -> String {
        wsfleet_proto::handshake::redact_query(&self.to_string()).into_owned()
    }
}

impl fmt::Display for Target {
    /// The normalised URL, e.g. `wss://example.com/feed`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme,
            self.host_header(),
            self.path_and_query
        )
    }
}

/// The TLS server name for `host`: an IP address for an IP literal (no SNI is sent
/// then), otherwise a DNS name.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())
}

/// Whether `url` spells out `scheme://` followed by a non-empty authority.
fn has_explicit_authority(url: &str) -> bool {
    let url = url.trim_matches(|c: char| c <= ' ');
    let Some(colon) = url.find(':') else {
        return false;
    };
    match url[colon + 1..].strip_prefix("//") {
        Some(after) => !matches!(after.chars().next(), None | Some('/' | '\\' | '?' | '#')),
        None => false,
    }
}

/// Replaces `user:pass@` in a URL-ish string with `***@`, so errors and logs do not
/// carry credentials.
fn redact_userinfo(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &rest[at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str) -> Target {
        Target::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    fn err(url: &str) -> ConnectError {
        match Target::parse(url) {
            Ok(t) => panic!("{url} parsed as {t:?}"),
            Err(e) => {
                assert_eq!(e.phase(), Phase::Url, "{e}");
                assert!(matches!(e.kind(), ConnectErrorKind::InvalidUrl(_)), "{e}");
                e
            }
        }
    }

    #[test]
    fn parse_table() {
        // (url, scheme, host, port, path_and_query, host_header)
        let table = [
            (
                "ws://example.com",
                Scheme::Ws,
                "example.com",
                80,
                "/",
                "example.com",
            ),
            (
                "wss://example.com",
                Scheme::Wss,
                "example.com",
                443,
                "/",
                "example.com",
            ),
            (
                "ws://example.com:80/",
                Scheme::Ws,
                "example.com",
                80,
                "/",
                "example.com",
            ),
            (
                "wss://example.com:443/a",
                Scheme::Wss,
                "example.com",
                443,
                "/a",
                "example.com",
            ),
            (
                "ws://example.com:443/",
                Scheme::Ws,
                "example.com",
                443,
                "/",
                "example.com:443",
            ),
            (
                "wss://example.com:80/",
                Scheme::Wss,
                "example.com",
                80,
                "/",
                "example.com:80",
            ),
            (
                "ws://127.0.0.1:9001",
                Scheme::Ws,
                "127.0.0.1",
                9001,
                "/",
                "127.0.0.1:9001",
            ),
            // WHATWG IPv4 forms are stored as the dotted quad.
            (
                "ws://0x7f.1/",
                Scheme::Ws,
                "127.0.0.1",
                80,
                "/",
                "127.0.0.1",
            ),
            (
                "ws://[::1]:9001/x?y=1",
                Scheme::Ws,
                "::1",
                9001,
                "/x?y=1",
                "[::1]:9001",
            ),
            ("wss://[::1]/", Scheme::Wss, "::1", 443, "/", "[::1]"),
            (
                "wss://[2001:db8::1]:8443/",
                Scheme::Wss,
                "2001:db8::1",
                8443,
                "/",
                "[2001:db8::1]:8443",
            ),
            (
                "ws://h/a/b?c=d&e=f",
                Scheme::Ws,
                "h",
                80,
                "/a/b?c=d&e=f",
                "h",
            ),
            ("ws://h?q", Scheme::Ws, "h", 80, "/?q", "h"),
            (
                "WS://Example.COM/Path",
                Scheme::Ws,
                "example.com",
                80,
                "/Path",
                "example.com",
            ),
        ];
        for (url, scheme, host, port, pq, host_header) in table {
            let t = ok(url);
            assert_eq!(t.scheme, scheme, "{url}");
            assert_eq!(t.host, host, "{url}");
            assert_eq!(t.port, port, "{url}");
            assert_eq!(t.path_and_query, pq, "{url}");
            assert_eq!(t.host_header(), host_header, "{url}");
            assert_eq!(t.host_header_with(&t.authority()), host_header, "{url}");
            assert_eq!(t.is_tls(), scheme == Scheme::Wss, "{url}");
        }
    }

    #[test]
    fn display_and_authority() {
        let t = ok("wss://[::1]:9001/x?y=1");
        assert_eq!(t.to_string(), "wss://[::1]:9001/x?y=1");
        assert_eq!(t.authority(), "[::1]:9001");
        let t = ok("ws://example.com/chat");
        assert_eq!(t.to_string(), "ws://example.com/chat");
        assert_eq!(t.authority(), "example.com:80");
    }

    #[test]
    fn authority_ports_read_as_display_writes_them() {
        for port in [1, 9, 10, 99, 100, 8080, 9999, 10000, 65535] {
            let t = ok(&format!("ws://h:{port}/"));
            assert_eq!(t.authority(), format!("h:{port}"));
            let t = ok(&format!("ws://[::1]:{port}/"));
            assert_eq!(t.authority(), format!("[::1]:{port}"));
        }
    }

    #[test]
    fn fragment_rejected() {
        let e = err("ws://example.com/x#frag");
        assert!(e.to_string().contains("fragment"), "{e}");
        err("ws://example.com/#");
    }

    #[test]
    fn other_schemes_rejected_clearly() {
        let e = err("http://example.com/");
        assert_eq!(
            e.to_string(),
            "invalid url \"http://example.com/\": scheme \"http\" is not a WebSocket scheme; use ws://"
        );
        let e = err("https://example.com/");
        assert!(e.to_string().contains("use wss://"), "{e}");
        let e = err("ftp://example.com/");
        assert!(e.to_string().contains("use ws:// or wss://"), "{e}");
    }

    #[test]
    fn missing_host_and_garbage_rejected() {
        err("ws://");
        err("ws:///path");
        err("ws:example.com/path");
        err("wss:/example.com/");
        err("ws://?q");
        err("not a url");
        err("ws://example.com:0/");
        err("ws://example.com:99999/");
    }

    #[test]
    fn credentials_rejected_and_redacted() {
        let e = err("wss://user:s3cret@example.com/");
        let msg = e.to_string();
        assert!(!msg.contains("s3cret"), "{msg}");
        assert!(msg.contains("credentials"), "{msg}");
        assert_eq!(e.target(), "wss://***@example.com/");
    }

    #[test]
    fn redacted_hides_the_query() {
        assert_eq!(
            ok("wss://h:9/feed?token=s3cret").redacted(),
            "wss://h:9/feed?…"
        );
        assert_eq!(ok("ws://h/feed").redacted(), "ws://h/feed");
        let e = crate::proto::HandshakeError::Redirect {
            status: 302,
            location: Some("wss://other/x?key=s3cret".into()),
        };
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn redact_userinfo_cases() {
        assert_eq!(redact_userinfo("ws://a:b@h/p@q"), "ws://***@h/p@q");
        assert_eq!(redact_userinfo("ws://h/p@q"), "ws://h/p@q");
        assert_eq!(redact_userinfo("no scheme@all"), "no scheme@all");
    }

    #[test]
    fn server_name_ip_vs_dns() {
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("::1"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(
            server_name("localhost"),
            Ok(ServerName::DnsName(_))
        ));
    }
}
