//! [`ConnectError`]: what went wrong while opening a connection, in which phase, to where.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Phases of establishing a connection, for errors and logs.
///
/// Displays in lowercase (`dns`, `tcp`, `tls`, ...), which is also what
/// [`Phase::as_str`] returns, so it can be used as a log field or metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Checking the connection's configuration (its [`Limits`](crate::Limits))
    /// before anything is opened.
    Config,
    /// Parsing and validating the `ws://` / `wss://` URL.
    Url,
    /// Resolving the host name to addresses.
    Dns,
    /// Opening the TCP connection.
    Tcp,
    /// Building the TLS configuration or running the TLS handshake.
    Tls,
    /// Tunnelling through a proxy (HTTP CONNECT, SOCKS5).
    Proxy,
    /// The WebSocket opening handshake (HTTP Upgrade).
    Handshake,
    /// Fetching a [`Credential`](super::Credential) (a header or query
    /// value from a command or a file), before anything is opened.
    Credential,
}

impl Phase {
    /// The lowercase name of the phase, as displayed.
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Config => "config",
            Phase::Url => "url",
            Phase::Dns => "dns",
            Phase::Tcp => "tcp",
            Phase::Tls => "tls",
            Phase::Proxy => "proxy",
            Phase::Handshake => "handshake",
            Phase::Credential => "credential",
        }
    }

    /// What the phase does to its target, as the start of an error message
    /// ("tcp connect to 127.0.0.1:9 ...").
    const fn action(self) -> &'static str {
        match self {
            Phase::Config => "checking the configuration for",
            Phase::Url => "parsing url",
            Phase::Dns => "dns lookup of",
            Phase::Tcp => "tcp connect to",
            Phase::Tls => "tls handshake with",
            Phase::Proxy => "proxy tunnel to",
            Phase::Handshake => "websocket handshake with",
            Phase::Credential => "fetching a credential for",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong, without the where (that is [`ConnectError::phase`] and
/// [`ConnectError::target`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum ConnectErrorKind {
    /// The URL (or a host taken from it) is not usable; the string says why.
    InvalidUrl(String),
    /// The phase did not finish within its deadline (the duration shown is the deadline).
    Timeout(Duration),
    /// The resolver failed to look up the host.
    Resolve(io::Error),
    /// The resolver succeeded but returned no addresses.
    NoAddresses,
    /// A socket error (connect refused, reset during the TLS handshake, ...).
    Io(io::Error),
    /// No source port is left to connect from `local` to `remote` (the
    /// socket call failed with `EADDRNOTAVAIL` or `EADDRINUSE`): each
    /// source address has one range of ephemeral ports (about 28,000 on
    /// Linux) per destination. More source addresses
    /// ([`LocalAddresses`](super::LocalAddresses)) make more room.
    SourcePortsExhausted {
        /// The source address bound to; `None`: the one the system chose.
        local: Option<IpAddr>,
        /// The destination.
        remote: SocketAddr,
    },
    /// A configured [`LocalAddresses`](super::LocalAddresses) entry is not an
    /// address of this host: binding to it failed with `EADDRNOTAVAIL`.
    LocalAddressNotAvailable {
        /// The address.
        local: IpAddr,
    },
    /// [`LocalAddresses`](super::LocalAddresses) are configured, but none of
    /// the destination's family (IPv4 or IPv6), so no address of the target
    /// was dialled.
    NoLocalAddressOfFamily {
        /// The first destination left out.
        remote: SocketAddr,
    },
    /// rustls refused the peer (certificate, protocol) or the configuration.
    Tls(rustls::Error),
    /// A CA file from [`TlsOptions::extra_ca_files`](super::TlsOptions::extra_ca_files)
    /// could not be read or used.
    CaFile {
        /// The file, as configured.
        path: PathBuf,
        /// Why it was not usable.
        problem: String,
    },
    /// The client certificate or key of
    /// [`TlsOptions::client_identity`](super::TlsOptions::client_identity) could
    /// not be read or used.
    ClientIdentity {
        /// The file at fault, as configured.
        path: PathBuf,
        /// Why it was not usable.
        problem: String,
    },
    /// The TLS configuration would trust no certificate at all; the string says why.
    NoTrustAnchors(String),
    /// The proxy did not open the tunnel: its answer, status or SOCKS5 code.
    Proxy(super::ProxyError),
    /// The server's HTTP answer was not a valid WebSocket upgrade (a non-101
    /// status with its code and `Retry-After`, a redirect, a bad accept key…).
    Handshake(wsfleet_proto::HandshakeError),
    /// A redirect answer to the handshake that is not followed: the status is
    /// not 301/302/303/307/308, `Location` is missing or unusable, or it
    /// would leave TLS (`wss` to `ws`). Only reported when redirects are on
    /// ([`ConnectionConfig::max_redirects`](crate::ConnectionConfig::max_redirects));
    /// with them off, a redirect is a [`Handshake`](Self::Handshake) error.
    Redirect {
        /// The status code.
        status: u16,
        /// The `Location` header as sent (empty if missing).
        location: String,
        /// Why it is not followed.
        reason: String,
    },
    /// More redirects in a row than
    /// [`ConnectionConfig::max_redirects`](crate::ConnectionConfig::max_redirects)
    /// allows; the target is the one that redirected once too often.
    TooManyRedirects {
        /// The limit.
        limit: u8,
    },
    /// A [`Credential`](super::Credential) could not be fetched (phase
    /// [`Phase::Credential`]); the error names it, its source and why
    /// (boxed: connect errors stay small).
    Credential(Box<super::CredentialError>),
    /// Any other error, e.g. an invalid configuration.
    Other(Box<dyn StdError + Send + Sync + 'static>),
}

/// An error while opening a connection: the [`Phase`] it happened in, the target
/// (`host:port`, the host for DNS, or the URL for [`Phase::Url`]) and the
/// [`ConnectErrorKind`].
///
/// The display says where it failed, as something to act on, e.g.
/// `tcp connect to 127.0.0.1:9 failed` or
/// `tls handshake with example.com:443 timed out after 10s`. The underlying
/// error (`Connection refused (os error 111)`, rustls' reason, the handshake
/// error) is not repeated in it: it is the [`source`](StdError::source), which
/// error reporters that walk the chain print after it (`{:#}` of `anyhow`,
/// or [`DisconnectReason`](crate::fleet::DisconnectReason)'s display).
#[derive(Debug)]
pub struct ConnectError {
    phase: Phase,
    target: String,
    kind: ConnectErrorKind,
}

impl ConnectError {
    /// Creates an error. `target` is what the phase was working on
    /// (`host:port`, or the URL); it may be empty for configuration errors.
    pub fn new(phase: Phase, target: impl Into<String>, kind: ConnectErrorKind) -> Self {
        Self {
            phase,
            target: target.into(),
            kind,
        }
    }

    /// The phase the error happened in.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// What the phase was working on: `host:port`, the host (DNS), the URL
    /// ([`Phase::Url`]), or empty for a TLS configuration error.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// What went wrong.
    pub fn kind(&self) -> &ConnectErrorKind {
        &self.kind
    }

    /// Consumes the error, returning what went wrong.
    pub fn into_kind(self) -> ConnectErrorKind {
        self.kind
    }

    /// The socket or resolver error, if that is what failed
    /// ([`ConnectErrorKind::Io`], [`ConnectErrorKind::Resolve`]): its kind
    /// and OS error number say what to do (`ConnectionRefused`, EMFILE …).
    pub fn io_error(&self) -> Option<&io::Error> {
        match &self.kind {
            ConnectErrorKind::Io(e) | ConnectErrorKind::Resolve(e) => Some(e),
            _ => None,
        }
    }

    /// Whether a phase deadline expired ([`ConnectErrorKind::Timeout`]).
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, ConnectErrorKind::Timeout(_))
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            // These carry their own context; no target is involved.
            ConnectErrorKind::CaFile { path, problem } => {
                return write!(f, "cannot use CA file {}: {problem}", path.display());
            }
            ConnectErrorKind::ClientIdentity { path, problem } => {
                return write!(
                    f,
                    "cannot use client certificate file {}: {problem}",
                    path.display()
                );
            }
            ConnectErrorKind::NoTrustAnchors(why) => {
                return write!(f, "tls config trusts no certificate: {why}");
            }
            // Names the credential and its source; the target is any that
            // uses it.
            ConnectErrorKind::Credential(e) => return write!(f, "{e}"),
            ConnectErrorKind::InvalidUrl(why) if self.phase == Phase::Url => {
                return write!(f, "invalid url {:?}: {why}", self.target);
            }
            _ => {}
        }
        if self.target.is_empty() {
            write!(f, "{} setup", self.phase)?;
        } else {
            write!(f, "{} {}", self.phase.action(), self.target)?;
        }
        match &self.kind {
            ConnectErrorKind::Timeout(after) => write!(f, " timed out after {after:?}"),
            ConnectErrorKind::NoAddresses => f.write_str(" returned no addresses"),
            ConnectErrorKind::InvalidUrl(why) => write!(f, " failed: {why}"),
            // The cause is the source: reporters print it next.
            ConnectErrorKind::Resolve(_)
            | ConnectErrorKind::Io(_)
            | ConnectErrorKind::Tls(_)
            | ConnectErrorKind::Other(_)
            | ConnectErrorKind::Proxy(_)
            | ConnectErrorKind::Handshake(_) => f.write_str(" failed"),
            ConnectErrorKind::Redirect {
                status,
                location,
                reason,
            } => write!(
                f,
                " failed: not following the redirect ({status}) to {:?}: {reason}",
                wsfleet_proto::handshake::redact_query(location)
            ),
            ConnectErrorKind::TooManyRedirects { limit } => {
                write!(f, " failed: more than {limit} redirects in a row")
            }
            ConnectErrorKind::SourcePortsExhausted { local, remote } => {
                f.write_str(" failed: no source port left from ")?;
                match local {
                    Some(local) => write!(f, "{local}")?,
                    None => f.write_str("this host's default source address")?,
                }
                write!(
                    f,
                    " to {remote} (about 28,000 per source address); \
                     add addresses with --local-address"
                )
            }
            ConnectErrorKind::LocalAddressNotAvailable { local } => write!(
                f,
                " failed: local address {local} is not an address of this host"
            ),
            ConnectErrorKind::NoLocalAddressOfFamily { remote } => write!(
                f,
                " failed: no local address is configured for an {} destination ({remote})",
                if remote.is_ipv4() { "IPv4" } else { "IPv6" }
            ),
            ConnectErrorKind::CaFile { .. }
            | ConnectErrorKind::ClientIdentity { .. }
            | ConnectErrorKind::NoTrustAnchors(_)
            | ConnectErrorKind::Credential(_) => Ok(()),
        }
    }
}

impl StdError for ConnectError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.kind {
            ConnectErrorKind::Resolve(e) | ConnectErrorKind::Io(e) => Some(e),
            ConnectErrorKind::Tls(e) => Some(e),
            ConnectErrorKind::Other(e) => Some(e.as_ref()),
            ConnectErrorKind::Handshake(e) => Some(e),
            ConnectErrorKind::Proxy(e) => Some(e),
            ConnectErrorKind::InvalidUrl(_)
            | ConnectErrorKind::Timeout(_)
            | ConnectErrorKind::NoAddresses
            | ConnectErrorKind::Redirect { .. }
            | ConnectErrorKind::TooManyRedirects { .. }
            | ConnectErrorKind::SourcePortsExhausted { .. }
            | ConnectErrorKind::LocalAddressNotAvailable { .. }
            | ConnectErrorKind::NoLocalAddressOfFamily { .. }
            | ConnectErrorKind::CaFile { .. }
            | ConnectErrorKind::ClientIdentity { .. }
            | ConnectErrorKind::NoTrustAnchors(_)
            | ConnectErrorKind::Credential(_) => None,
        }
    }
}

/// Displays an error and its sources, `: `-separated (`tcp connect to
/// 127.0.0.1:9 failed: Connection refused (os error 111)`), for the places
/// that keep or log an error's text rather than the error.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn StdError + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_reads_like_an_action() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        let e = ConnectError::new(Phase::Tcp, "127.0.0.1:9", ConnectErrorKind::Io(refused));
        // The cause is the source, not repeated in the display.
        assert_eq!(e.to_string(), "tcp connect to 127.0.0.1:9 failed");
        assert_eq!(
            Chain(&e).to_string(),
            format!("tcp connect to 127.0.0.1:9 failed: {}", e.source().unwrap())
        );
        assert!(!e.is_timeout());

        let e = ConnectError::new(
            Phase::Tls,
            "example.com:443",
            ConnectErrorKind::Timeout(Duration::from_secs(10)),
        );
        assert_eq!(
            e.to_string(),
            "tls handshake with example.com:443 timed out after 10s"
        );
        assert!(e.is_timeout());

        let e = ConnectError::new(
            Phase::Dns,
            "nosuch.invalid",
            ConnectErrorKind::Resolve(io::Error::other("no such host")),
        );
        assert_eq!(e.to_string(), "dns lookup of nosuch.invalid failed");
        assert_eq!(
            Chain(&e).to_string(),
            "dns lookup of nosuch.invalid failed: no such host"
        );

        let e = ConnectError::new(Phase::Dns, "empty.example", ConnectErrorKind::NoAddresses);
        assert_eq!(
            e.to_string(),
            "dns lookup of empty.example returned no addresses"
        );

        let e = ConnectError::new(
            Phase::Url,
            "http://x/",
            ConnectErrorKind::InvalidUrl("scheme must be ws or wss".into()),
        );
        assert_eq!(
            e.to_string(),
            "invalid url \"http://x/\": scheme must be ws or wss"
        );

        let e = ConnectError::new(
            Phase::Tls,
            "",
            ConnectErrorKind::CaFile {
                path: "/etc/x/ca.pem".into(),
                problem: "No such file or directory".into(),
            },
        );
        assert_eq!(
            e.to_string(),
            "cannot use CA file /etc/x/ca.pem: No such file or directory"
        );

        let e = ConnectError::new(
            Phase::Handshake,
            "example.com:443",
            ConnectErrorKind::Other("status 403".into()),
        );
        assert_eq!(
            e.to_string(),
            "websocket handshake with example.com:443 failed"
        );
        assert_eq!(
            e.source().map(|s| s.to_string()).as_deref(),
            Some("status 403")
        );
    }

    #[test]
    fn phase_display_is_lowercase() {
        let all = [
            (Phase::Config, "config"),
            (Phase::Url, "url"),
            (Phase::Dns, "dns"),
            (Phase::Tcp, "tcp"),
            (Phase::Tls, "tls"),
            (Phase::Proxy, "proxy"),
            (Phase::Handshake, "handshake"),
            (Phase::Credential, "credential"),
        ];
        for (phase, name) in all {
            assert_eq!(phase.to_string(), name);
        }
    }
}
