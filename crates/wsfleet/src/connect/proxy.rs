//! Proxies: HTTP CONNECT (with basic auth) and SOCKS5 (with username and
//! password), chosen from the environment as curl does or set explicitly.
//! Both tunnel raw TCP, so TLS for `wss` runs end to end through them.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{ConnectError, ConnectErrorKind, Phase, Scheme, Target};

/// Largest proxy CONNECT response head we read.
const MAX_PROXY_RESPONSE: usize = 16 * 1024;

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
        let bad =
            |why: String| ConnectError::new(Phase::Proxy, "", ConnectErrorKind::InvalidUrl(why));
        let with_scheme = if url.contains("://") {
            url.to_owned()
        } else {
            format!("http://{url}")
        };
        let parsed =
            url::Url::parse(&with_scheme).map_err(|e| bad(format!("proxy {url:?}: {e}")))?;
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
            .ok_or_else(|| bad(format!("proxy {url:?} has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let decode = |s: &str| {
            url::form_urlencoded::parse(s.as_bytes())
                .map(|(k, v)| {
                    if v.is_empty() {
                        k.into_owned()
                    } else {
                        format!("{k}={v}")
                    }
                })
                .collect::<String>()
        };
        let auth = (!parsed.username().is_empty()).then(|| {
            (
                decode(parsed.username()),
                decode(parsed.password().unwrap_or("")),
            )
        });
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

/// Where a connection's proxy comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxySetting {
    /// From the environment, as curl reads it (the default): `wss` uses
    /// `HTTPS_PROXY`/`https_proxy`, `ws` uses `http_proxy` (lowercase only,
    /// as curl does, because CGI servers set `HTTP_PROXY` from a request
    /// header), then `ALL_PROXY`/`all_proxy`; `NO_PROXY`/`no_proxy` lists
    /// hosts, domains (`.example.com` or `example.com` match subdomains),
    /// IP addresses or `*` to skip. Loopback targets never use a proxy.
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
            .parse::<std::net::IpAddr>()
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

fn no_proxy_matches(list: &str, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            // Drop a port (`example.com:443`), keep IPv6 literals intact.
            let entry = match entry.rsplit_once(':') {
                Some((h, port)) if !h.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => {
                    h
                }
                _ => entry,
            };
            let entry = entry.trim_start_matches('.').to_ascii_lowercase();
            host == entry || host.ends_with(&format!(".{entry}"))
        })
}

/// Opens the tunnel to `target` over `tcp`, a connection to `proxy`.
pub(crate) async fn tunnel(
    mut tcp: TcpStream,
    proxy: &Proxy,
    target: &Target,
) -> Result<TcpStream, ConnectError> {
    let fail = |kind| ConnectError::new(Phase::Proxy, proxy.authority(), kind);
    let io = |e: std::io::Error| fail(ConnectErrorKind::Io(e));
    let refused = |why: String| fail(ConnectErrorKind::Other(why.into()));
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
                    return Err(refused(format!(
                        "proxy answer exceeds {MAX_PROXY_RESPONSE} bytes"
                    )));
                }
                let byte = tcp.read_u8().await.map_err(io)?;
                head.push(byte);
            }
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut headers);
            response
                .parse(&head)
                .map_err(|e| refused(format!("malformed proxy answer: {e}")))?;
            match response.code {
                Some(200..=299) => Ok(tcp),
                // 407 is the standard answer; some proxies (tinyproxy) send 401.
                Some(code @ (401 | 407)) => Err(refused(format!(
                    "proxy authentication failed or missing ({code}): check the proxy user and password"
                ))),
                Some(code) => Err(refused(format!(
                    "proxy refused CONNECT {authority}: {code} {}",
                    response.reason.unwrap_or("")
                ))),
                None => Err(refused("proxy answer has no status".into())),
            }
        }
        ProxyKind::Socks5 => {
            let methods: &[u8] = if proxy.auth.is_some() {
                &[0x00, 0x02]
            } else {
                &[0x00]
            };
            let mut hello = vec![0x05, methods.len() as u8];
            hello.extend_from_slice(methods);
            tcp.write_all(&hello).await.map_err(io)?;
            let mut choice = [0u8; 2];
            tcp.read_exact(&mut choice).await.map_err(io)?;
            match choice {
                [0x05, 0x00] => {}
                [0x05, 0x02] => {
                    let (user, pass) = proxy.auth.clone().unwrap_or_default();
                    if user.len() > 255 || pass.len() > 255 {
                        return Err(refused(
                            "SOCKS5 username or password longer than 255 bytes".into(),
                        ));
                    }
                    let mut auth = vec![0x01, user.len() as u8];
                    auth.extend_from_slice(user.as_bytes());
                    auth.push(pass.len() as u8);
                    auth.extend_from_slice(pass.as_bytes());
                    tcp.write_all(&auth).await.map_err(io)?;
                    let mut status = [0u8; 2];
                    tcp.read_exact(&mut status).await.map_err(io)?;
                    if status[1] != 0 {
                        return Err(refused(
                            "SOCKS5 proxy rejected the username or password".into(),
                        ));
                    }
                }
                [0x05, 0xFF] => {
                    return Err(refused(
                        "SOCKS5 proxy accepts none of our auth methods".into(),
                    ));
                }
                other => return Err(refused(format!("not a SOCKS5 answer: {other:02x?}"))),
            }
            let mut request = vec![0x05, 0x01, 0x00];
            match target.host.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(ip)) => {
                    request.push(0x01);
                    request.extend_from_slice(&ip.octets());
                }
                Ok(std::net::IpAddr::V6(ip)) => {
                    request.push(0x04);
                    request.extend_from_slice(&ip.octets());
                }
                Err(_) => {
                    if target.host.len() > 255 {
                        return Err(refused("host name longer than 255 bytes".into()));
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
            if reply[1] != 0 {
                let why = match reply[1] {
                    1 => "general failure",
                    2 => "not allowed by ruleset",
                    3 => "network unreachable",
                    4 => "host unreachable",
                    5 => "connection refused",
                    6 => "TTL expired",
                    7 => "command not supported",
                    8 => "address type not supported",
                    _ => "unknown error",
                };
                return Err(refused(format!(
                    "SOCKS5 proxy could not reach {}: {why}",
                    target.authority()
                )));
            }
            let skip = match reply[3] {
                0x01 => 4 + 2,
                0x04 => 16 + 2,
                0x03 => usize::from(tcp.read_u8().await.map_err(io)?) + 2,
                other => return Err(refused(format!("SOCKS5 reply with address type {other}"))),
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
}
