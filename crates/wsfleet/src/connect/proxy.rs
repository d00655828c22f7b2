//! Proxies: HTTP CONNECT (with basic auth) and SOCKS5 (with username and
//! password), chosen from the environment as curl does or set explicitly.
//! Both tunnel raw TCP, so TLS for `wss` runs end to end through them.

use std::fmt;
use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{ConnectError, ConnectErrorKind, Phase, Scheme, Target};

/// Largest proxy CONNECT response head we read.
const MAX_PROXY_RESPONSE: usize = 16 << 10;

/// Most header lines a proxy's CONNECT answer may carry.
const MAX_PROXY_HEADERS: usize = 64;

/// The version byte that starts every SOCKS5 message but the auth exchange.
const SOCKS5: u8 = 0x05;

/// A proxy server.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Proxy {
    /// HTTP CONNECT or SOCKS5.
    pub kind: ProxyKind,
    /// Proxy host.
    pub host: String,
    /// Proxy port.
    pub port: u16,
    /// Username and password, if any.
    pub auth: Option<(String, String)>,
}

/// The proxy protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyKind {
    /// `http://` — an HTTP proxy, used with `CONNECT host:port`.
    Http,
    /// `socks5://` or `socks5h://` — the proxy resolves the target's name.
    Socks5,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the password.
        f.debug_struct("Proxy")
            .field("kind", &self.kind)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("auth", &self.auth.as_ref().map(|(user, _)| (user, "***")))
            .finish()
    }
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.kind {
            ProxyKind::Http => "http",
            ProxyKind::Socks5 => "socks5",
        };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

impl Proxy {
    /// Parses `http://[user:pass@]host[:port]` (port 1080 for SOCKS, 80 for
    /// HTTP by default) or `socks5://…` / `socks5h://…`. A bare `host:port`
    /// is an HTTP proxy, as curl reads it.
    ///
    /// ```
    /// use wsfleet::connect::{Proxy, ProxyKind};
    /// let p = Proxy::parse("socks5://bob:s3cret@127.0.0.1:1080").unwrap();
    /// assert_eq!((p.kind, p.port), (ProxyKind::Socks5, 1080));
    /// assert!(!format!("{p:?}").contains("s3cret"));
    /// ```
    ///
    /// # Errors
    /// A [`ConnectError`] in [`Phase::Proxy`] for an unusable URL.
    pub fn parse(url: &str) -> Result<Self, ConnectError> {
        // Every message names the URL without its user and password.
        let shown = redact_userinfo(url);
        let bad =
            |why: String| ConnectError::new(Phase::Proxy, "", ConnectErrorKind::InvalidUrl(why));
        let with_scheme = if url.contains("://") {
            url.to_owned()
        } else {
            format!("http://{url}")
        };
        let parsed =
            url::Url::parse(&with_scheme).map_err(|e| bad(format!("proxy {shown:?}: {e}")))?;
        let (kind, default_port) = match parsed.scheme() {
            "http" => (ProxyKind::Http, 80),
            "socks5" | "socks5h" => (ProxyKind::Socks5, 1080),
            other => {
                return Err(bad(format!(
                    "proxy scheme {other:?} is not supported (use http, socks5, socks5h)"
                )));
            }
        };
        let host = parsed
            .host_str()
            .ok_or_else(|| bad(format!("proxy {shown:?} has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        // RFC 3986 userinfo: percent-decoding only (`+` stays `+`, `%26` is `&`).
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(std::borrow::Cow::into_owned)
                .map_err(|_| {
                    bad(format!(
                        "proxy {shown:?}: user or password is not UTF-8 once percent-decoded"
                    ))
                })
        };
        let auth = if parsed.username().is_empty() {
            None
        } else {
            Some((
                decode(parsed.username())?,
                decode(parsed.password().unwrap_or(""))?,
            ))
        };
        Ok(Self {
            kind,
            host,
            port: parsed.port().unwrap_or(default_port),
            auth,
        })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `url` with its userinfo (all before the last `@` of the authority)
/// replaced by `***`, for messages. It does not rely on the URL parsing: a
/// malformed URL is exactly the one that ends up in an error.
fn redact_userinfo(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    // The last `@` anywhere: a password may hold an unencoded `/`, `?` or
    // `#`, and hiding a path that contains `@` as well costs nothing.
    match url[start..].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &url[start + at..]),
        None => url.to_owned(),
    }
}

/// Where a connection's proxy comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxySetting {
    /// From the environment, as curl reads it (the default): `wss` uses
    /// `HTTPS_PROXY`/`https_proxy`, `ws` uses `http_proxy` (lowercase only,
    /// as curl does, because CGI servers set `HTTP_PROXY` from a request
    /// header), then `ALL_PROXY`/`all_proxy`; `NO_PROXY`/`no_proxy` lists
    /// hosts, domains (`.example.com` or `example.com` match subdomains),
    /// IP addresses (IPv6 bracketed or not), CIDR ranges (`10.0.0.0/8`,
    /// `fd00::/8`) or `*` to skip. Loopback targets never use a proxy.
    #[default]
    Environment,
    /// No proxy.
    Direct,
    /// This proxy for every target.
    Use(Proxy),
}

impl ProxySetting {
    /// The proxy to use for `target`, if any.
    ///
    /// # Errors
    /// A proxy variable that is set but unusable.
    pub fn for_target(&self, target: &Target) -> Result<Option<Proxy>, ConnectError> {
        match self {
            Self::Direct => Ok(None),
            Self::Use(p) => Ok(Some(p.clone())),
            Self::Environment => from_env(target, &|name| std::env::var(name).ok()),
        }
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            // An IPv4-mapped IPv6 address (::ffff:127.0.0.1) is loopback too.
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// curl's rules, with `var` reading the environment (injectable for tests).
fn from_env(
    target: &Target,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Proxy>, ConnectError> {
    if is_loopback(&target.host) {
        return Ok(None);
    }
    let first = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| var(n).filter(|v| !v.trim().is_empty()))
    };
    let no_proxy = first(&["no_proxy", "NO_PROXY"]).unwrap_or_default();
    if no_proxy_matches(&no_proxy, &target.host) {
        return Ok(None);
    }
    let chosen = match target.scheme {
        Scheme::Wss => first(&["https_proxy", "HTTPS_PROXY"]),
        Scheme::Ws => first(&["http_proxy"]),
    }
    .or_else(|| first(&["all_proxy", "ALL_PROXY"]));
    chosen.map(|url| Proxy::parse(url.trim())).transpose()
}

/// Whether `host` (a name, or an IP address with IPv6 unbracketed) is in a
/// `NO_PROXY` list, as curl reads it: `*` matches every host; a name matches
/// itself and its subdomains (a leading `.` is optional); an IP address
/// (IPv6 bracketed or not) matches that address and a CIDR range
/// (`10.0.0.0/8`, `fd00::/8`) the addresses in it. A `:port` after an entry
/// is ignored.
fn no_proxy_matches(list: &str, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let host_ip = host.parse::<IpAddr>().ok();
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let entry = without_port(entry);
            if let Some((net, bits)) = entry.split_once('/') {
                return host_ip.is_some_and(|ip| in_cidr(ip, net, bits));
            }
            if let Ok(ip) = entry.parse::<IpAddr>() {
                return host_ip == Some(ip);
            }
            let entry = entry.trim_start_matches('.').to_ascii_lowercase();
            host == entry || host.ends_with(&format!(".{entry}"))
        })
}

/// A `NO_PROXY` entry without its `:port` and without the brackets around
/// an IPv6 address (`[::1]:443` is `::1`, `[fd00::]/8` is `fd00::/8`).
fn without_port(entry: &str) -> std::borrow::Cow<'_, str> {
    if let Some((ip, rest)) = entry.strip_prefix('[').and_then(|e| e.split_once(']')) {
        return match rest.strip_prefix('/') {
            Some(bits) => format!("{ip}/{bits}").into(),
            None => ip.into(),
        };
    }
    match entry.rsplit_once(':') {
        // Only one colon: a name or IPv4 address with a port (a bare IPv6
        // address has more).
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h.into(),
        _ => entry.into(),
    }
}

/// Whether `ip` is in `net`/`bits` (same address family, `bits` within it).
fn in_cidr(ip: IpAddr, net: &str, bits: &str) -> bool {
    let (Ok(net), Ok(bits)) = (net.parse::<IpAddr>(), bits.parse::<u32>()) else {
        return false;
    };
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// Why a proxy did not open the tunnel: what it answered, with its status
/// or code. Socket errors and deadlines are reported as such
/// ([`ConnectErrorKind::Io`], [`ConnectErrorKind::Timeout`]), not here.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyError {
    /// The HTTP proxy's answer head did not end within this many bytes.
    ResponseTooLarge {
        /// The limit.
        max: usize,
    },
    /// The HTTP proxy's answer is not HTTP; the parser's reason.
    Malformed(String),
    /// The HTTP proxy wants credentials, or refused ours: 407 (or 401, as
    /// tinyproxy sends).
    AuthFailed {
        /// The status code.
        status: u16,
    },
    /// The HTTP proxy answered `CONNECT` with a status other than 2xx.
    Status {
        /// The status code.
        status: u16,
        /// The reason phrase.
        reason: String,
        /// The `host:port` we asked for.
        target: String,
    },
    /// A SOCKS5 answer with the wrong version byte.
    Socks5Version {
        /// Which answer: `answer` (to our greeting), `username/password
        /// answer` or `reply` (to the connect request).
        answer: &'static str,
        /// The version byte received.
        version: u8,
    },
    /// The SOCKS5 proxy accepts none of the auth methods we offered (0xFF).
    Socks5NoAcceptableMethod,
    /// The SOCKS5 proxy chose an auth method we did not offer.
    Socks5UnofferedMethod(u8),
    /// The SOCKS5 proxy rejected the username or password (RFC 1929 status).
    Socks5AuthRejected {
        /// The status byte (non-zero).
        status: u8,
    },
    /// The SOCKS5 username or password is longer than 255 bytes.
    Socks5CredentialsTooLong,
    /// The target host name is longer than the 255 bytes SOCKS5 can carry.
    Socks5HostTooLong,
    /// The SOCKS5 proxy could not connect to the target (RFC 1928 §6 reply
    /// code, non-zero).
    Socks5Reply {
        /// The reply code.
        code: u8,
        /// The `host:port` we asked for.
        target: String,
    },
    /// A SOCKS5 reply with an address type RFC 1928 does not define.
    Socks5AddressType(u8),
}

impl ProxyError {
    /// What a SOCKS5 reply code (RFC 1928 §6) means.
    fn socks5_reply_meaning(code: u8) -> &'static str {
        match code {
            1 => "general failure",
            2 => "not allowed by ruleset",
            3 => "network unreachable",
            4 => "host unreachable",
            5 => "connection refused",
            6 => "TTL expired",
            7 => "command not supported",
            8 => "address type not supported",
            _ => "unknown error",
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ResponseTooLarge { max } => write!(f, "proxy answer exceeds {max} bytes"),
            Self::Malformed(why) => write!(f, "malformed proxy answer: {why}"),
            Self::AuthFailed { status } => write!(
                f,
                "proxy authentication failed or missing ({status}): check the proxy user and password"
            ),
            Self::Status {
                status,
                reason,
                target,
            } => write!(f, "proxy refused CONNECT {target}: {status} {reason}"),
            Self::Socks5Version { answer, version } => {
                write!(f, "not a SOCKS5 {answer}: version {version:#04x}")
            }
            Self::Socks5NoAcceptableMethod => {
                f.write_str("SOCKS5 proxy accepts none of our auth methods")
            }
            Self::Socks5UnofferedMethod(m) => write!(
                f,
                "SOCKS5 proxy chose auth method {m:#04x}, which we did not offer"
            ),
            Self::Socks5AuthRejected { status } => write!(
                f,
                "SOCKS5 proxy rejected the username or password (status {status})"
            ),
            Self::Socks5CredentialsTooLong => {
                f.write_str("SOCKS5 username or password longer than 255 bytes")
            }
            Self::Socks5HostTooLong => f.write_str("host name longer than 255 bytes"),
            Self::Socks5Reply { code, target } => write!(
                f,
                "SOCKS5 proxy could not reach {target}: {} (reply {code})",
                Self::socks5_reply_meaning(*code)
            ),
            Self::Socks5AddressType(t) => write!(f, "SOCKS5 reply with address type {t}"),
        }
    }
}

impl std::error::Error for ProxyError {}

/// Longest SOCKS5 username, password or host name (a one-byte length).
const SOCKS5_MAX_FIELD: usize = 255;

/// Opens the tunnel to `target` over `tcp`, a connection to `proxy`.
pub(crate) async fn tunnel(
    mut tcp: TcpStream,
    proxy: &Proxy,
    target: &Target,
) -> Result<TcpStream, ConnectError> {
    let fail = |kind| ConnectError::new(Phase::Proxy, proxy.authority(), kind);
    let io = |e: std::io::Error| fail(ConnectErrorKind::Io(e));
    let refused = |why: ProxyError| fail(ConnectErrorKind::Proxy(why));
    match proxy.kind {
        ProxyKind::Http => {
            let authority = target.authority();
            let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
            if let Some((user, pass)) = &proxy.auth {
                let token = STANDARD.encode(format!("{user}:{pass}"));
                request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
            }
            request.push_str("\r\n");
            tcp.write_all(request.as_bytes()).await.map_err(io)?;
            // Read byte by byte up to the end of the head: nothing of the
            // tunnel may be consumed here (it is the target's first bytes).
            let mut head = Vec::with_capacity(256);
            while !head.ends_with(b"\r\n\r\n") {
                if head.len() >= MAX_PROXY_RESPONSE {
                    return Err(refused(ProxyError::ResponseTooLarge {
                        max: MAX_PROXY_RESPONSE,
                    }));
                }
                let byte = tcp.read_u8().await.map_err(io)?;
                head.push(byte);
            }
            let mut headers = [httparse::EMPTY_HEADER; MAX_PROXY_HEADERS];
            let mut response = httparse::Response::new(&mut headers);
            response
                .parse(&head)
                .map_err(|e| refused(ProxyError::Malformed(e.to_string())))?;
            match response.code {
                Some(200..=299) => Ok(tcp),
                // 407 is the standard answer; some proxies (tinyproxy) send 401.
                Some(status @ (401 | 407)) => Err(refused(ProxyError::AuthFailed { status })),
                Some(status) => Err(refused(ProxyError::Status {
                    status,
                    reason: response.reason.unwrap_or("").to_owned(),
                    target: authority,
                })),
                None => Err(refused(ProxyError::Malformed("no status".into()))),
            }
        }
        ProxyKind::Socks5 => {
            let methods: &[u8] = if proxy.auth.is_some() {
                &[0x00, 0x02]
            } else {
                &[0x00]
            };
            let mut hello = vec![SOCKS5, methods.len() as u8];
            hello.extend_from_slice(methods);
            tcp.write_all(&hello).await.map_err(io)?;
            let mut choice = [0u8; 2];
            tcp.read_exact(&mut choice).await.map_err(io)?;
            if choice[0] != SOCKS5 {
                return Err(refused(ProxyError::Socks5Version {
                    answer: "answer",
                    version: choice[0],
                }));
            }
            match choice[1] {
                0x00 => {}
                0x02 if proxy.auth.is_some() => {
                    let (user, pass) = proxy.auth.clone().unwrap_or_default();
                    if user.len() > SOCKS5_MAX_FIELD || pass.len() > SOCKS5_MAX_FIELD {
                        return Err(refused(ProxyError::Socks5CredentialsTooLong));
                    }
                    let mut auth = vec![0x01, user.len() as u8];
                    auth.extend_from_slice(user.as_bytes());
                    auth.push(pass.len() as u8);
                    auth.extend_from_slice(pass.as_bytes());
                    tcp.write_all(&auth).await.map_err(io)?;
                    let mut status = [0u8; 2];
                    tcp.read_exact(&mut status).await.map_err(io)?;
                    // RFC 1929: the answer to username/password auth is version 1.
                    if status[0] != 0x01 {
                        return Err(refused(ProxyError::Socks5Version {
                            answer: "username/password answer",
                            version: status[0],
                        }));
                    }
                    if status[1] != 0 {
                        return Err(refused(ProxyError::Socks5AuthRejected {
                            status: status[1],
                        }));
                    }
                }
                0xFF => return Err(refused(ProxyError::Socks5NoAcceptableMethod)),
                other => return Err(refused(ProxyError::Socks5UnofferedMethod(other))),
            }
            let mut request = vec![SOCKS5, 0x01, 0x00];
            match target.host.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) => {
                    request.push(0x01);
                    request.extend_from_slice(&ip.octets());
                }
                Ok(IpAddr::V6(ip)) => {
                    request.push(0x04);
                    request.extend_from_slice(&ip.octets());
                }
                Err(_) => {
                    if target.host.len() > SOCKS5_MAX_FIELD {
                        return Err(refused(ProxyError::Socks5HostTooLong));
                    }
                    request.push(0x03);
                    request.push(target.host.len() as u8);
                    request.extend_from_slice(target.host.as_bytes());
                }
            }
            request.extend_from_slice(&target.port.to_be_bytes());
            tcp.write_all(&request).await.map_err(io)?;
            let mut reply = [0u8; 4];
            tcp.read_exact(&mut reply).await.map_err(io)?;
            if reply[0] != SOCKS5 {
                return Err(refused(ProxyError::Socks5Version {
                    answer: "reply",
                    version: reply[0],
                }));
            }
            if reply[1] != 0 {
                return Err(refused(ProxyError::Socks5Reply {
                    code: reply[1],
                    target: target.authority(),
                }));
            }
            let skip = match reply[3] {
                0x01 => 4 + 2,
                0x04 => 16 + 2,
                0x03 => usize::from(tcp.read_u8().await.map_err(io)?) + 2,
                other => return Err(refused(ProxyError::Socks5AddressType(other))),
            };
            let mut rest = vec![0u8; skip];
            tcp.read_exact(&mut rest).await.map_err(io)?;
            Ok(tcp)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn target(url: &str) -> Target {
        Target::parse(url).unwrap()
    }

    #[test]
    fn environment_follows_curl() {
        let e = env(&[
            ("https_proxy", "http://p1:3128"),
            ("http_proxy", "socks5://p2"),
            ("HTTP_PROXY", "http://ignored:1"),
            ("no_proxy", "internal.example, .corp.test:443, 10.0.0.7"),
        ]);
        let p = from_env(&target("wss://feed.example.com/"), &e)
            .unwrap()
            .unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.kind),
            ("p1", 3128, ProxyKind::Http)
        );
        let p = from_env(&target("ws://feed.example.com/"), &e)
            .unwrap()
            .unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.kind),
            ("p2", 1080, ProxyKind::Socks5)
        );
        for direct in [
            "wss://internal.example/",
            "wss://a.internal.example/",
            "wss://x.corp.test/",
            "ws://10.0.0.7/",
        ] {
            assert_eq!(from_env(&target(direct), &e).unwrap(), None, "{direct}");
        }
        // Loopback never goes through a proxy.
        assert_eq!(from_env(&target("ws://127.0.0.1:9/"), &e).unwrap(), None);
        assert_eq!(from_env(&target("ws://localhost:9/"), &e).unwrap(), None);
        assert_eq!(from_env(&target("ws://[::1]:9/"), &e).unwrap(), None);
        assert_eq!(
            from_env(&target("ws://[::ffff:127.0.0.1]:9/"), &e).unwrap(),
            None
        );
        assert!(
            from_env(&target("ws://[::ffff:10.0.0.8]:9/"), &e)
                .unwrap()
                .is_some()
        );
        // Uppercase HTTP_PROXY alone is ignored, ALL_PROXY is the fallback.
        let e = env(&[
            ("HTTP_PROXY", "http://ignored:1"),
            ("ALL_PROXY", "socks5h://all:9"),
        ]);
        assert_eq!(
            from_env(&target("ws://x.test/"), &e).unwrap().unwrap().host,
            "all"
        );
        let e = env(&[("NO_PROXY", "*"), ("ALL_PROXY", "http://p:1")]);
        assert_eq!(from_env(&target("wss://x.test/"), &e).unwrap(), None);
    }

    #[test]
    fn proxy_urls_parse_with_credentials_hidden() {
        let p = Proxy::parse("http://user%40corp:p%3Ass@proxy.local:8080").unwrap();
        assert_eq!(p.auth, Some(("user@corp".to_owned(), "p:ss".to_owned())));
        assert_eq!(p.to_string(), "http://proxy.local:8080");
        assert_eq!(
            Proxy::parse("proxy.local:3128").unwrap().kind,
            ProxyKind::Http
        );
        assert!(Proxy::parse("ftp://x").is_err());
    }

    #[test]
    fn userinfo_is_percent_decoded_not_form_decoded() {
        let p = Proxy::parse("http://a+b%26c:p+w%26d%25e%20@proxy.local:8080").unwrap();
        assert_eq!(p.auth, Some(("a+b&c".to_owned(), "p+w&d%e ".to_owned())));
        let p = Proxy::parse("socks5://bob:x=y&z@proxy.local").unwrap();
        assert_eq!(p.auth, Some(("bob".to_owned(), "x=y&z".to_owned())));
        assert!(
            Proxy::parse("http://u:%ff@proxy.local").is_err(),
            "not UTF-8"
        );
    }

    #[test]
    fn errors_never_show_the_password() {
        for url in [
            "http://u:secret@h:99999",
            "u:secret@h:99999",
            "http://u:sec/ret@h:1",
            "http://u:sec#ret@h:99999",
            "socks5://u:secret@",
            "http://u:secret@h:99999/a@b",
        ] {
            let e = Proxy::parse(url).expect_err(url).to_string();
            assert!(!e.contains("secret") && !e.contains("ret@"), "{url}: {e}");
            assert!(e.contains("***"), "{url}: {e}");
        }
        let e = env(&[("HTTPS_PROXY", "http://u:secret@h:99999")]);
        let err = from_env(&target("wss://feed.example.com/"), &e).unwrap_err();
        assert!(!format!("{err} {err:?}").contains("secret"), "{err}");
        assert_eq!(redact_userinfo("http://h:1/"), "http://h:1/");
    }

    #[test]
    fn no_proxy_reads_bracketed_ipv6_and_cidr_as_curl_does() {
        let list = "[2001:db8::1], [2001:db8::2]:443, 10.0.0.0/8, fd00::/8, [fe80::]/10, 192.168.1.1, example.com";
        for host in [
            "2001:db8::1",
            "2001:db8::2",
            "10.200.3.4",
            "fd12::1",
            "fe80::1",
            "192.168.1.1",
            "api.example.com",
        ] {
            assert!(no_proxy_matches(list, host), "{host} should go direct");
        }
        for host in [
            "2001:db8::3",
            "11.0.0.1",
            "fc00::1",
            "192.168.1.2",
            "example.org",
        ] {
            assert!(!no_proxy_matches(list, host), "{host} should use the proxy");
        }
        assert!(no_proxy_matches("0.0.0.0/0", "203.0.113.9"));
        assert!(
            no_proxy_matches("2001:db8::1", "2001:db8::1"),
            "unbracketed"
        );
        // Malformed ranges match nothing.
        for bad in ["10.0.0.0/33", "10.0.0.0/x", "fd00::/129", "10.0.0.0/8:80x"] {
            assert!(!no_proxy_matches(bad, "10.1.1.1"), "{bad}");
        }
        assert!(!no_proxy_matches("fd00::/8", "10.1.1.1"), "other family");
    }

    /// A fake SOCKS5 proxy that answers `script` to whatever it is sent;
    /// returns what the tunnel setup made of it.
    async fn socks5_answering(script: Vec<u8>, auth: bool) -> Result<(), ConnectError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut peer, _) = listener.accept().await.unwrap();
            peer.write_all(&script).await.unwrap();
            // Keep the socket open until the client is done.
            let mut sink = Vec::new();
            let _ = peer.read_to_end(&mut sink).await;
        });
        let proxy = Proxy {
            kind: ProxyKind::Socks5,
            host: "127.0.0.1".into(),
            port: addr.port(),
            auth: auth.then(|| ("u".to_owned(), "p".to_owned())),
        };
        let tcp = TcpStream::connect(addr).await.unwrap();
        tunnel(tcp, &proxy, &target("ws://feed.example.com/"))
            .await
            .map(drop)
    }

    #[tokio::test]
    async fn socks5_answers_are_checked_for_version_and_offered_method() {
        const REPLY_OK: [u8; 10] = [5, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        let ok = [&[5, 0][..], &REPLY_OK].concat();
        socks5_answering(ok, false).await.expect("a good answer");
        let with_auth = [&[5, 2, 1, 0][..], &REPLY_OK].concat();
        socks5_answering(with_auth, true)
            .await
            .expect("a good auth answer");
        let cases: [(&[u8], bool, ProxyError); 5] = [
            (
                &[4, 0],
                false,
                ProxyError::Socks5Version {
                    answer: "answer",
                    version: 4,
                },
            ),
            (&[5, 2], false, ProxyError::Socks5UnofferedMethod(2)),
            (
                &[5, 2, 5, 0],
                true,
                ProxyError::Socks5Version {
                    answer: "username/password answer",
                    version: 5,
                },
            ),
            (
                &[5, 0, 4, 0, 0, 1, 0, 0, 0, 0, 0, 0],
                false,
                ProxyError::Socks5Version {
                    answer: "reply",
                    version: 4,
                },
            ),
            (
                &[5, 0, 5, 5, 0, 1, 0, 0, 0, 0, 0, 0],
                false,
                ProxyError::Socks5Reply {
                    code: 5,
                    target: "feed.example.com:80".into(),
                },
            ),
        ];
        for (script, auth, expect) in cases {
            let e = socks5_answering(script.to_vec(), auth).await.unwrap_err();
            assert_eq!(e.phase(), Phase::Proxy);
            match e.kind() {
                ConnectErrorKind::Proxy(why) => assert_eq!(why, &expect, "{script:?}"),
                other => panic!("{script:?}: {other:?}"),
            }
            let chain = super::super::Chain(&e).to_string();
            assert!(chain.contains(&expect.to_string()), "{chain}");
        }
    }
}
