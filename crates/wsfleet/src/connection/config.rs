//! Everything one connection is opened with.

use std::sync::Arc;

use wsfleet_proto::deflate::DeflateConfig;
use wsfleet_proto::{Limits, MemoryBudget};

use super::Keepalive;
use crate::connect::{Credential, Deadlines, LocalAddresses, ProxySetting};

/// How to open and run one connection. `Default` is what most users want:
/// default [`Limits`], deadlines and keepalive, webpki roots for `wss`.
///
/// ```
/// use wsfleet::ConnectionConfig;
/// let config = ConnectionConfig::default()
///     .protocol("mqtt")
///     .header("Authorization", "Bearer token");
/// assert_eq!(config.protocols, ["mqtt"]);
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct ConnectionConfig {
    /// Bounds on everything the peer can push against.
    pub limits: Limits,
    /// Deadlines for DNS, TCP, TLS, the handshake and the close handshake.
    pub deadlines: Deadlines,
    /// Ping interval and pong timeout.
    pub keepalive: Keepalive,
    /// How fast a started message must arrive, and how long a write may
    /// wait (see [`Progress`](crate::Progress)).
    pub progress: crate::Progress,
    /// TLS client configuration for `wss`; `None` uses webpki roots
    /// (built once per process). See [`crate::connect::TlsOptions`].
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Subprotocols to offer, in order of preference.
    pub protocols: Vec<String>,
    /// Extra request headers (for example `Authorization`).
    pub headers: Vec<(String, String)>,
    /// Header and query values fetched at each connection attempt from a
    /// command or a file (cached, shared by every connection of this
    /// configuration and its clones): see [`Credential`]. Fetched before
    /// anything is opened, each within its own timeout, so an attempt
    /// takes at most their timeouts plus the [`Deadlines`]; a failure is a
    /// [`Phase::Credential`](crate::connect::Phase::Credential) error. A
    /// header one replaces a [`headers`](Self::headers) entry of the same
    /// name; a query one is set on the configured URL (not on a redirect's
    /// `Location`).
    pub credentials: Vec<Credential>,
    /// `Origin` header, if any.
    pub origin: Option<String>,
    /// Shared budget every buffer growth is charged to, if any.
    pub budget: Option<Arc<dyn MemoryBudget>>,
    /// The fleet's view of this connection's budget (set by the fleet):
    /// decides whether a refused charge pauses the connection or ends it.
    /// `None`: a refusal ends it (close 1009).
    pub(crate) gate: Option<Arc<crate::fleet::budget::ConnBudget>>,
    /// Offer permessage-deflate (RFC 7692). Default: not offered. The
    /// default [`DeflateConfig`] asks for no context takeover both ways, so
    /// compression contexts exist only while a message is (de)compressed.
    pub deflate: Option<DeflateConfig>,
    /// Proxy: from the environment as curl reads it (default), none, or a
    /// given one. See [`ProxySetting`].
    pub proxy: ProxySetting,
    /// How many redirect answers (301, 302, 303, 307, 308) to the handshake
    /// to follow in a row. Default 0: a redirect is an error naming its
    /// `Location` (query redacted). A redirect from `wss` to `ws` is never
    /// followed; all hops together get one attempt's deadlines (the sum of
    /// [`Deadlines`]' dns, tcp, proxy, tls and handshake); and once a
    /// redirect has left the configured origin (scheme, host, port), none
    /// of [`headers`](Self::headers) and no subprotocol is sent unless
    /// named in [`forward_on_redirect`](Self::forward_on_redirect), and
    /// `wss` there uses the default TLS (webpki roots, verified, no client
    /// certificate) unless [`keep_tls_on_redirect`](Self::keep_tls_on_redirect).
    pub max_redirects: u8,
    /// Header names (any case) still sent after a redirect left the
    /// configured origin; `Sec-WebSocket-Protocol` keeps the subprotocols.
    /// Default: none (any of them may carry a credential).
    pub forward_on_redirect: Vec<String>,
    /// Use [`tls`](Self::tls) (its client certificate, its roots, its
    /// `insecure_skip_verify`) on hops that left the configured origin too.
    /// Default false.
    pub keep_tls_on_redirect: bool,
    /// Source addresses to connect from (see [`LocalAddresses`]), shared by
    /// every connection of this configuration. `None` (the default): the
    /// system chooses. A fleet spreads its slots over them
    /// ([`FleetBuilder::local_addresses`](crate::fleet::FleetBuilder::local_addresses));
    /// bare connections take them in turn.
    pub local_addresses: Option<Arc<LocalAddresses>>,
    /// Which of [`local_addresses`](Self::local_addresses) this connection
    /// uses: address `slot % n` of the `n` of its destination's family (set
    /// by the fleet to the slot's number, so a slot keeps its source
    /// address across reconnects). `None`: the next in turn.
    pub local_slot: Option<usize>,
}

impl ConnectionConfig {
    /// Sets the limits.
    #[must_use]
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the deadlines.
    #[must_use]
    pub fn deadlines(mut self, deadlines: Deadlines) -> Self {
        self.deadlines = deadlines;
        self
    }

    /// Sets the progress deadlines (see [`Progress`](crate::Progress)).
    #[must_use]
    pub fn progress(mut self, progress: crate::Progress) -> Self {
        self.progress = progress;
        self
    }

    /// Sets the keepalive policy.
    #[must_use]
    pub fn keepalive(mut self, keepalive: Keepalive) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// Uses this TLS configuration for `wss`.
    #[must_use]
    pub fn tls(mut self, tls: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Offers a subprotocol.
    #[must_use]
    pub fn protocol(mut self, protocol: impl Into<String>) -> Self {
        self.protocols.push(protocol.into());
        self
    }

    /// Adds a request header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds a credential: a header or query value fetched at connection
    /// attempts (see [`credentials`](Self::credentials)).
    #[must_use]
    pub fn credential(mut self, credential: Credential) -> Self {
        self.credentials.push(credential);
        self
    }

    /// Sets the `Origin` header.
    #[must_use]
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// Offers permessage-deflate.
    #[must_use]
    pub fn deflate(mut self, config: DeflateConfig) -> Self {
        self.deflate = Some(config);
        self
    }

    /// Sets the proxy.
    #[must_use]
    pub fn proxy(mut self, proxy: ProxySetting) -> Self {
        self.proxy = proxy;
        self
    }

    /// Follows up to `n` redirects in a row (see
    /// [`max_redirects`](Self::max_redirects)).
    #[must_use]
    pub fn max_redirects(mut self, n: u8) -> Self {
        self.max_redirects = n;
        self
    }

    /// Keeps sending header `name` (or, for `Sec-WebSocket-Protocol`, the
    /// subprotocols) after a redirect left the configured origin.
    #[must_use]
    pub fn forward_on_redirect(mut self, name: impl Into<String>) -> Self {
        self.forward_on_redirect.push(name.into());
        self
    }

    /// Uses the configured TLS on every hop (see
    /// [`keep_tls_on_redirect`](Self::keep_tls_on_redirect)).
    #[must_use]
    pub fn keep_tls_on_redirect(mut self, keep: bool) -> Self {
        self.keep_tls_on_redirect = keep;
        self
    }

    /// Connects from these source addresses (see
    /// [`local_addresses`](Self::local_addresses)).
    #[must_use]
    pub fn local_addresses(mut self, addresses: LocalAddresses) -> Self {
        self.local_addresses = Some(Arc::new(addresses));
        self
    }

    /// Charges buffers to `budget`.
    #[must_use]
    pub fn budget(mut self, budget: Arc<dyn MemoryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }
}

impl std::fmt::Debug for ConnectionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionConfig")
            .field("limits", &self.limits)
            .field("deadlines", &self.deadlines)
            .field("keepalive", &self.keepalive)
            .field("tls", &self.tls.as_ref().map(|_| "custom"))
            .field("protocols", &self.protocols)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("credentials", &self.credentials)
            .field("origin", &self.origin)
            .field("budget", &self.budget)
            .field("deflate", &self.deflate)
            .field("proxy", &self.proxy)
            .field("max_redirects", &self.max_redirects)
            .field("forward_on_redirect", &self.forward_on_redirect)
            .field("keep_tls_on_redirect", &self.keep_tls_on_redirect)
            .field(
                "local_addresses",
                &self.local_addresses.as_ref().map(|a| a.len()),
            )
            .field("local_slot", &self.local_slot)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Connection;
    use crate::connect::Phase;

    #[tokio::test]
    async fn invalid_limits_are_a_config_error_not_a_url_error() {
        let config = ConnectionConfig::default().limits(Limits::default().with_read_chunk(8));
        let err = Connection::connect("ws://127.0.0.1:9/", &config)
            .await
            .unwrap_err();
        assert_eq!(err.phase(), Phase::Config, "{err}");
        let text = crate::connect::Chain(&err).to_string();
        assert!(
            text.contains("read_chunk") && !text.contains("url"),
            "{text}"
        );
    }
}
