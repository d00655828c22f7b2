//! From a `ws://` / `wss://` URL to a connected byte stream, each phase bounded by
//! its own deadline.
//!
//! The pipeline is [`Target::parse`] (once, up front), then [`open`]:
//!
//! 1. **DNS**: `tokio::net::lookup_host`, bounded by [`Deadlines::dns`]; IP
//!    literals skip it.
//! 2. **TCP**: each resolved address in resolver order (IPv6 and IPv4), all within
//!    [`Deadlines::tcp`], with `TCP_NODELAY` on; from a chosen source address
//!    when [`LocalAddresses`] are configured
//!    ([`ConnectionConfig::local_addresses`](crate::ConnectionConfig::local_addresses)).
//! 3. **TLS** for `wss`: rustls, bounded by [`Deadlines::tls`], SNI from the URL host.
//!
//! Before any of it, [`Connection::connect_target`](crate::Connection::connect_target)
//! fetches the configuration's [`Credential`]s ([`Phase::Credential`]):
//! header and query values from a command or a file, cached and fetched
//! once at a time for every connection sharing them (see [`credential`]).
//!
//! The WebSocket handshake ([`Phase::Handshake`]) runs on the returned
//! [`MaybeTlsStream`] and is not part of this module. Every failure is a
//! [`ConnectError`] that names its [`Phase`] and target.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wsfleet::connect::ConnectError> {
//! use wsfleet::connect::{open, Deadlines, Target, TlsOptions};
//!
//! let target = Target::parse("wss://example.com/feed")?;
//! let tls = TlsOptions::default().build()?; // once, shared by all connections
//! let stream = open(&target, Some(&tls), &Deadlines::default()).await?;
//! # drop(stream); Ok(()) }
//! ```

pub mod credential;
mod error;
mod local;
mod plain_url;
mod proxy;
mod stream;
mod tcp;
mod timer;
mod tls;
mod url;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub use self::credential::{Credential, CredentialError, CredentialSource, Placement};
pub(crate) use self::error::Chain;
pub use self::error::{ConnectError, ConnectErrorKind, Phase};
pub use self::local::{
    LocalAddressError, LocalAddressProblem, LocalAddresses, MAX_LOCAL_ADDRESSES,
};
pub use self::proxy::{Proxy, ProxyError, ProxyKind, ProxySetting};
pub use self::stream::MaybeTlsStream;
pub(crate) use self::tcp::LocalPick;
pub(crate) use self::timer::PhaseTimer;
pub use self::tls::{ClientIdentity, Roots, TlsOptions};
pub use self::url::{Scheme, Target};

/// Per-phase deadlines (deadpool's `Timeouts` idea): each phase of connecting and
/// closing has its own bound, so a log line says where a connection stalled.
///
/// Build from [`Deadlines::default`] and adjust with the `with_*` setters. A zero
/// duration still lets the phase be polled once, so only an already-finished phase
/// passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Deadlines {
    /// DNS resolution. Default 5s: a healthy resolver answers in milliseconds and
    /// retries its own servers within a few seconds; longer means it is down.
    pub dns: Duration,
    /// TCP connect, across all resolved addresses. Default 10s: covers the
    /// initial SYN plus two retransmissions (1s, 3s) on a lossy path, while an
    /// unreachable server is given up on long before the OS's ~2 minute limit.
    pub tcp: Duration,
    /// TLS handshake. Default 10s: a few round trips plus certificate work on a
    /// loaded server.
    pub tls: Duration,
    /// Proxy tunnel set-up (HTTP CONNECT or SOCKS5 exchange, after TCP to
    /// the proxy). Default 10s.
    pub proxy: Duration,
    /// WebSocket opening handshake (request sent to response read). Default 10s.
    pub handshake: Duration,
    /// Close handshake: waiting for the peer's close frame and the TCP close.
    /// Default 5s: a well-behaved peer answers at once; a slow one must not hold
    /// a connection slot during rotation or shutdown.
    pub close: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            dns: Duration::from_secs(5),
            tcp: Duration::from_secs(10),
            tls: Duration::from_secs(10),
            proxy: Duration::from_secs(10),
            handshake: Duration::from_secs(10),
            close: Duration::from_secs(5),
        }
    }
}

impl Deadlines {
    /// Sets [`Deadlines::dns`].
    #[must_use]
    pub fn with_dns(mut self, d: Duration) -> Self {
        self.dns = d;
        self
    }

    /// Sets [`Deadlines::tcp`].
    #[must_use]
    pub fn with_tcp(mut self, d: Duration) -> Self {
        self.tcp = d;
        self
    }

    /// Sets [`Deadlines::tls`].
    #[must_use]
    pub fn with_tls(mut self, d: Duration) -> Self {
        self.tls = d;
        self
    }

    /// Sets [`Deadlines::proxy`].
    #[must_use]
    pub fn with_proxy(mut self, d: Duration) -> Self {
        self.proxy = d;
        self
    }

    /// Sets [`Deadlines::handshake`].
    #[must_use]
    pub fn with_handshake(mut self, d: Duration) -> Self {
        self.handshake = d;
        self
    }

    /// Sets [`Deadlines::close`].
    #[must_use]
    pub fn with_close(mut self, d: Duration) -> Self {
        self.close = d;
        self
    }
}

/// Opens the transport for `target`: DNS, TCP, then TLS if the scheme is `wss`,
/// each phase bounded by its deadline in `deadlines`.
///
/// - DNS: `tokio::net::lookup_host`, bounded by `deadlines.dns`; skipped for an IP
///   literal.
/// - TCP: each resolved address in order (IPv6 and IPv4), the whole phase bounded by
///   `deadlines.tcp`; while more addresses wait, one attempt gets an equal share of
///   the remaining time (at least 2s), so a black-holed address does not starve the
///   next. `TCP_NODELAY` is set.
/// - TLS (only for `wss`): bounded by `deadlines.tls`. SNI is the URL host; an IP
///   literal host is verified as an IP address (no SNI is sent). `tls` is the client
///   configuration; `None` uses `TlsOptions::default().build()`, built once per
///   process and cached. `tls` is ignored for `ws`.
///
/// # Errors
///
/// A [`ConnectError`] whose [`phase`](ConnectError::phase) is where it failed:
/// [`Phase::Dns`] (resolve failure, no addresses, timeout), [`Phase::Tcp`] (I/O
/// error of the last address tried, or timeout), [`Phase::Tls`] (certificate or
/// protocol error from rustls as [`ConnectErrorKind::Tls`], I/O error such as a
/// reset, or timeout).
pub async fn open(
    target: &Target,
    tls: Option<&Arc<rustls::ClientConfig>>,
    deadlines: &Deadlines,
) -> Result<MaybeTlsStream, ConnectError> {
    open_via(target, None, tls, deadlines).await
}

/// As [`open`], through `proxy` when one is given: DNS and TCP go to the
/// proxy, then the tunnel to `target` is set up ([`Phase::Proxy`], bounded by
/// [`Deadlines::proxy`]), then TLS runs end to end with the target through it.
///
/// # Errors
/// As [`open`], plus [`Phase::Proxy`] errors (refused, auth, timeout).
pub async fn open_via(
    target: &Target,
    proxy: Option<&Proxy>,
    tls: Option<&Arc<rustls::ClientConfig>>,
    deadlines: &Deadlines,
) -> Result<MaybeTlsStream, ConnectError> {
    let local = LocalPick::default();
    let sleep = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
    let mut timer = PhaseTimer::new(sleep);
    let authority = target.authority();
    open_at(target, &authority, proxy, tls, deadlines, local, &mut timer).await
}

/// [`open_via`], given `target`'s [`authority`](Target::authority) (a
/// connection has it at hand already: it names the peer), so a connect
/// formats it once. The TCP connection (to the target, or to the proxy)
/// comes from the source address `local` picks. `timer` bounds the TCP
/// attempts and TLS, each at its own deadline.
pub(crate) async fn open_at(
    target: &Target,
    authority: &str,
    proxy: Option<&Proxy>,
    tls: Option<&Arc<rustls::ClientConfig>>,
    deadlines: &Deadlines,
    local: LocalPick<'_>,
    timer: &mut PhaseTimer<'_>,
) -> Result<MaybeTlsStream, ConnectError> {
    // Resolve the TLS configuration first, so a configuration problem costs no
    // DNS lookup or connection.
    let tls_config = if target.is_tls() {
        Some(match tls {
            Some(config) => Arc::clone(config),
            None => tls::default_config()?,
        })
    } else {
        None
    };

    // With a proxy (HTTP CONNECT or SOCKS5), DNS and TCP below go to the proxy
    // instead of the target, and the tunnel to `target` is set up right after the
    // TCP connect, as its own phase (`Phase::Proxy`, with its own deadline). TLS then
    // runs end to end with the target through the tunnel, unchanged.
    let tcp = match proxy {
        None => {
            let literal = target.host.parse().ok();
            let mut addrs = tcp::resolve(&target.host, literal, target.port, deadlines.dns).await?;
            local.keep_reachable(authority, &mut addrs)?;
            let host_is_ip = literal.is_some();
            tcp::connect_tcp(authority, host_is_ip, &addrs, deadlines.tcp, local, timer).await?
        }
        Some(proxy) => {
            let literal = proxy.host.parse().ok();
            let mut addrs = tcp::resolve(&proxy.host, literal, proxy.port, deadlines.dns).await?;
            let host_is_ip = literal.is_some();
            let label = format!("{}:{}", proxy.host, proxy.port);
            local.keep_reachable(&label, &mut addrs)?;
            let tcp =
                tcp::connect_tcp(&label, host_is_ip, &addrs, deadlines.tcp, local, timer).await?;
            tcp::with_deadline(
                Phase::Proxy,
                &label,
                deadlines.proxy,
                proxy::tunnel(tcp, proxy, target),
            )
            .await?
        }
    };

    match tls_config {
        None => Ok(MaybeTlsStream::Plain(tcp)),
        Some(config) => {
            // Boxed: the TLS handshake's state is large, and every connect's
            // future (ws:// too) would otherwise carry room for it.
            let stream = Box::pin(tls_handshake(
                tcp,
                target,
                authority,
                config,
                deadlines.tls,
                timer,
            ))
            .await?;
            Ok(MaybeTlsStream::Tls(Box::new(stream)))
        }
    }
}

/// Runs the TLS client handshake over `tcp`, bounded by `limit` on `timer`.
async fn tls_handshake(
    tcp: TcpStream,
    target: &Target,
    authority: &str,
    config: Arc<rustls::ClientConfig>,
    limit: Duration,
    timer: &mut PhaseTimer<'_>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
    let name = url::server_name(&target.host).map_err(|why| {
        ConnectError::new(
            Phase::Tls,
            authority,
            ConnectErrorKind::InvalidUrl(format!("host is not a valid TLS server name: {why}")),
        )
    })?;
    let started = tokio::time::Instant::now();
    let connector = TlsConnector::from(config);
    let stream = timer
        .within(limit, connector.connect(name, tcp))
        .await
        .ok_or_else(|| ConnectError::new(Phase::Tls, authority, ConnectErrorKind::Timeout(limit)))?
        .map_err(|e| ConnectError::new(Phase::Tls, authority, tls_error_kind(e)))?;
    tracing::debug!(
        target = %authority,
        version = ?stream.get_ref().1.protocol_version(),
        elapsed = ?started.elapsed(),
        "tls established"
    );
    Ok(stream)
}

/// tokio-rustls reports rustls errors wrapped in `io::Error`; unwrap them so callers
/// can match on e.g. `CertificateError::UnknownIssuer`.
fn tls_error_kind(e: std::io::Error) -> ConnectErrorKind {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => ConnectErrorKind::Tls(tls.clone()),
        None => ConnectErrorKind::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::path::{Path, PathBuf};

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn data(file: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(file)
    }

    fn short() -> Deadlines {
        Deadlines::default()
            .with_dns(Duration::from_secs(5))
            .with_tcp(Duration::from_secs(5))
            .with_tls(Duration::from_secs(5))
    }

    fn test_ca_only() -> Arc<rustls::ClientConfig> {
        TlsOptions {
            roots: Roots::None,
            extra_ca_files: vec![data("ca.pem")],
            ..TlsOptions::default()
        }
        .build()
        .unwrap()
    }

    /// A TLS echo server for one connection on 127.0.0.1 with the test
    /// certificate; returns the port and the SNI it saw (if the handshake completed).
    async fn tls_echo_server() -> (u16, tokio::task::JoinHandle<Option<Option<String>>>) {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(data("server.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(data("server.key")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.ok()?;
            let mut tls = acceptor.accept(tcp).await.ok()?;
            let sni = tls.get_ref().1.server_name().map(str::to_owned);
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).await.ok()?;
            tls.write_all(&buf).await.ok()?;
            tls.shutdown().await.ok()?;
            Some(sni)
        });
        (port, task)
    }

    async fn echo_roundtrip(stream: &mut MaybeTlsStream) {
        stream.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
    }

    fn assert_unknown_issuer(e: &ConnectError) {
        assert_eq!(e.phase(), Phase::Tls, "{e}");
        assert!(
            matches!(
                e.kind(),
                ConnectErrorKind::Tls(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                ))
            ),
            "{e:?}"
        );
        assert!(Chain(e).to_string().contains("UnknownIssuer"), "{e}");
    }

    /// Each setter changes its own phase and no other (the defaults are
    /// `Default`'s to state, not this test's).
    #[test]
    fn each_deadline_setter_sets_its_own_phase_only() {
        type Field = fn(&Deadlines) -> Duration;
        type Setter = fn(Deadlines, Duration) -> Deadlines;
        let fields: [(&str, Field, Setter); 6] = [
            ("dns", |d| d.dns, Deadlines::with_dns),
            ("tcp", |d| d.tcp, Deadlines::with_tcp),
            ("tls", |d| d.tls, Deadlines::with_tls),
            ("proxy", |d| d.proxy, Deadlines::with_proxy),
            ("handshake", |d| d.handshake, Deadlines::with_handshake),
            ("close", |d| d.close, Deadlines::with_close),
        ];
        let base = Deadlines::default();
        let new = Duration::from_millis(1234);
        for (name, _, set) in fields {
            let d = set(base, new);
            for (other, get, _) in fields {
                let want = if other == name { new } else { get(&base) };
                assert_eq!(get(&d), want, "with_{name} and {other}");
            }
        }
    }

    #[tokio::test]
    async fn open_plain_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let target = Target::parse(&format!("ws://127.0.0.1:{port}/")).unwrap();
        let mut stream = open(&target, None, &short()).await.unwrap();
        assert!(matches!(stream, MaybeTlsStream::Plain(_)));
        assert!(stream.tcp().nodelay().unwrap());
        assert_eq!(stream.tcp().peer_addr().unwrap().port(), port);
        echo_roundtrip(&mut stream).await;
        server.await.unwrap();
    }

    #[tokio::test]
    async fn open_plain_ipv6_loopback() {
        let Ok(listener) = TcpListener::bind("[::1]:0").await else {
            eprintln!("no IPv6 loopback here; skipping");
            return;
        };
        let port = listener.local_addr().unwrap().port();
        let target = Target::parse(&format!("ws://[::1]:{port}/x?y=1")).unwrap();
        let deadlines = short();
        let (stream, accepted) = tokio::join!(open(&target, None, &deadlines), listener.accept());
        let stream = stream.unwrap();
        accepted.unwrap();
        assert!(stream.tcp().peer_addr().unwrap().is_ipv6());
    }

    #[tokio::test]
    async fn open_by_name_resolves() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Target::parse(&format!("ws://localhost:{port}/")).unwrap();
        // If localhost also resolves to ::1 (nothing listens there), that address is
        // refused first and 127.0.0.1 is tried next.
        let deadlines = short();
        let (stream, accepted) = tokio::join!(open(&target, None, &deadlines), listener.accept());
        stream.unwrap();
        accepted.unwrap();
    }

    #[tokio::test]
    async fn open_closed_port_is_refused() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap().port()
        };
        let target = Target::parse(&format!("ws://127.0.0.1:{port}/")).unwrap();
        let e = open(&target, None, &short()).await.unwrap_err();
        assert_eq!(e.phase(), Phase::Tcp);
        assert!(!e.is_timeout());
        match e.kind() {
            ConnectErrorKind::Io(io) => assert_eq!(io.kind(), io::ErrorKind::ConnectionRefused),
            other => panic!("expected Io, got {other:?}"),
        }
        let msg = Chain(&e).to_string();
        assert!(
            msg.starts_with(&format!("tcp connect to 127.0.0.1:{port} failed: ")),
            "{msg}"
        );
        assert!(msg.to_lowercase().contains("refused"), "{msg}");
    }

    #[tokio::test]
    async fn tls_with_extra_ca_by_ip() {
        let (port, server) = tls_echo_server().await;
        let target = Target::parse(&format!("wss://127.0.0.1:{port}/")).unwrap();
        let mut stream = open(&target, Some(&test_ca_only()), &short())
            .await
            .unwrap();
        assert!(matches!(stream, MaybeTlsStream::Tls(_)));
        assert!(stream.tcp().nodelay().unwrap());
        echo_roundtrip(&mut stream).await;
        // An IP literal is verified against the IP SAN and sends no SNI.
        assert_eq!(server.await.unwrap(), Some(None));
    }

    #[tokio::test]
    async fn tls_with_extra_ca_by_name_sends_sni() {
        let (port, server) = tls_echo_server().await;
        let target = Target::parse(&format!("wss://localhost:{port}/")).unwrap();
        let mut stream = open(&target, Some(&test_ca_only()), &short())
            .await
            .unwrap();
        echo_roundtrip(&mut stream).await;
        assert_eq!(server.await.unwrap(), Some(Some("localhost".to_owned())));
    }

    #[tokio::test]
    async fn tls_with_webpki_roots_rejects_unknown_issuer() {
        let (port, _server) = tls_echo_server().await;
        let target = Target::parse(&format!("wss://127.0.0.1:{port}/")).unwrap();
        let webpki = TlsOptions::default().build().unwrap();
        let e = open(&target, Some(&webpki), &short()).await.unwrap_err();
        assert_unknown_issuer(&e);
        assert!(
            Chain(&e)
                .to_string()
                .starts_with(&format!("tls handshake with 127.0.0.1:{port} failed: ")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn tls_none_uses_the_cached_default() {
        let (port, _server) = tls_echo_server().await;
        let target = Target::parse(&format!("wss://127.0.0.1:{port}/")).unwrap();
        let e = open(&target, None, &short()).await.unwrap_err();
        assert_unknown_issuer(&e);
    }

    #[tokio::test]
    async fn tls_insecure_skip_verify_connects_without_the_ca() {
        let (port, server) = tls_echo_server().await;
        let target = Target::parse(&format!("wss://localhost:{port}/")).unwrap();
        let insecure = TlsOptions {
            insecure_skip_verify: true,
            ..TlsOptions::default()
        }
        .build()
        .unwrap();
        let mut stream = open(&target, Some(&insecure), &short()).await.unwrap();
        echo_roundtrip(&mut stream).await;
        assert!(server.await.unwrap().is_some());
    }

    #[tokio::test]
    async fn tls_silent_server_hits_the_tls_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            // Accept, then say nothing until the client gives up.
            let (mut s, _) = listener.accept().await.unwrap();
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink).await;
        });
        let target = Target::parse(&format!("wss://127.0.0.1:{port}/")).unwrap();
        let deadlines = short().with_tls(Duration::from_millis(300));
        let started = std::time::Instant::now();
        let e = open(&target, Some(&test_ca_only()), &deadlines)
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert!(e.is_timeout(), "{e}");
        assert_eq!(e.phase(), Phase::Tls);
        assert_eq!(
            e.to_string(),
            format!("tls handshake with 127.0.0.1:{port} timed out after 300ms")
        );
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        // Dropping the client closed the socket, so the server sees EOF.
        server.await.unwrap();
    }

    #[tokio::test]
    async fn tls_config_is_ignored_for_ws() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Target::parse(&format!("ws://127.0.0.1:{port}/")).unwrap();
        let (config, deadlines) = (test_ca_only(), short());
        let (stream, accepted) =
            tokio::join!(open(&target, Some(&config), &deadlines), listener.accept());
        assert!(matches!(stream.unwrap(), MaybeTlsStream::Plain(_)));
        accepted.unwrap();
    }
}
