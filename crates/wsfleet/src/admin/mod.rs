//! The admin endpoint: `/metrics` (Prometheus text), `/connections` (JSON,
//! one object per connection), `/pools` (JSON, one object per pool),
//! `/healthz`. Off unless asked for; bind it to loopback unless you mean to
//! expose it.
//!
//! One server shows one or more pools (fleets, each built with its own
//! [`name`](crate::fleet::FleetBuilder::name)): every connection on
//! `/connections` says its `pool`, every per-fleet family on `/metrics`
//! carries a `pool` label, and `/healthz` is healthy when every pool is.
//!
//! `/metrics` is produced by the `prometheus-client` crate in the
//! Prometheus text format, version 0.0.4 (`Content-Type:` [`CONTENT_TYPE`]):
//! the format and the escaping of label values (pool names) are the
//! crate's. It serves the fleets' metrics and then whatever each added
//! [`MetricsSource`] writes: the way a crate the fleet knows nothing of (a
//! bus sink, the application) puts its counters on the same endpoint.

mod control;
mod exposition;
mod metrics;
mod pools;

pub use control::{ControlAuth, ControlPools, MAX_CONTROL_BODY, ReloadHook};
pub use exposition::{CONTENT_TYPE, MetricKind, MetricsSource, render, write_metric};
pub use pools::DuplicatePool;
/// The `prometheus-client` crate `/metrics` is encoded with, for sources
/// that write labelled families or histograms through the encoder.
pub use prometheus_client;
/// The encoder a [`MetricsSource`] writes through (`prometheus-client`'s).
pub use prometheus_client::encoding::DescriptorEncoder;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use prometheus_client::registry::Registry;

use crate::fleet::FleetMonitor;
use crate::listen::accept_loop;

/// Most admin requests served at once; more wait in the backlog.
const MAX_CONNECTIONS: usize = 64;
/// An admin connection idle this long is closed.
const IDLE: std::time::Duration = std::time::Duration::from_secs(30);
/// Most bytes of a request hyper buffers for an admin connection: a GET
/// needs far less.
const MAX_REQUEST_BUFFER: usize = 16 << 10;

/// The admin HTTP server of a fleet. Stops when dropped.
///
/// ```no_run
/// # async fn demo(fleet: &wsfleet::fleet::Fleet) -> std::io::Result<()> {
/// let admin = wsfleet::admin::AdminServer::bind("127.0.0.1:9100", fleet.monitor(), 0.9).await?;
/// println!("metrics on http://{}/metrics", admin.local_addr());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct AdminServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

/// Settings of an [`AdminServer`] before it binds: the pools (fleets) it
/// serves, the `/healthz` threshold, and the [`MetricsSource`]s added to
/// `/metrics`. From [`AdminServer::builder`].
///
/// ```no_run
/// # async fn demo(spot: &wsfleet::fleet::Fleet, futures: &wsfleet::fleet::Fleet) -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use wsfleet::admin::{AdminServer, DescriptorEncoder, MetricKind, write_metric};
///
/// let started = std::time::Instant::now();
/// let admin = AdminServer::builder(spot.monitor())
///     .pool(futures.monitor())? // another pool: its name must differ
///     .healthy_share(0.5)
///     .metrics_source(Arc::new(move |e: &mut DescriptorEncoder<'_>| {
///         let up = started.elapsed().as_secs_f64();
///         write_metric(e, "myapp_uptime_seconds", MetricKind::Gauge, "Time since start.", up)
///     }))
///     .bind("127.0.0.1:9100")
///     .await?;
/// println!("metrics on http://{}/metrics", admin.local_addr());
/// # Ok(()) }
/// ```
#[must_use = "nothing listens until `bind`"]
pub struct AdminBuilder {
    pools: pools::Pools,
    healthy_share: f64,
    sources: Vec<Arc<dyn MetricsSource>>,
    control: Option<(ControlPools, ControlAuth)>,
    reload: Option<ReloadHook>,
}

impl std::fmt::Debug for AdminBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminBuilder")
            .field("pools", &self.pools.monitors().len())
            .field("healthy_share", &self.healthy_share)
            .field("metrics_sources", &self.sources.len())
            .finish_non_exhaustive()
    }
}

impl AdminBuilder {
    /// Serves another pool (fleet) beside those added before.
    ///
    /// # Errors
    /// [`DuplicatePool`] if a pool of the same
    /// [`name`](FleetMonitor::name) is served already.
    pub fn pool(mut self, monitor: FleetMonitor) -> Result<Self, DuplicatePool> {
        self.pools.add(monitor)?;
        Ok(self)
    }

    /// `/healthz` answers 200 while every pool has at least this share
    /// (0.0–1.0, clamped) of its target connections ready. Default 0.9.
    pub fn healthy_share(mut self, share: f64) -> Self {
        self.healthy_share = share;
        self
    }

    /// Adds `source` to `/metrics`: it renders after the fleet's metrics
    /// and the sources added before it, on every scrape.
    pub fn metrics_source(mut self, source: Arc<dyn MetricsSource>) -> Self {
        self.sources.push(source);
        self
    }

    /// Serves the control API (`POST /control/...`: send, scale, pause,
    /// resume, drop, rotate; see `docs/admin.md`) over `pools`, to requests
    /// that `auth` lets in. Without it, `/control/` answers 404.
    pub fn control(mut self, pools: ControlPools, auth: ControlAuth) -> Self {
        self.control = Some((pools, auth));
        self
    }

    /// What `POST /control/reload` runs (with [`control`](Self::control)).
    pub fn reload(mut self, hook: ReloadHook) -> Self {
        self.reload = Some(hook);
        self
    }

    /// Listens on `addr` and serves. Cancel-safe: dropped before it
    /// returns, it leaves nothing listening.
    ///
    /// # Errors
    /// The bind error.
    pub async fn bind(self, addr: impl ToSocketAddrs) -> io::Result<AdminServer> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let mut registry = Registry::default();
        registry.register_collector(Box::new(metrics::FleetCollector(self.pools.clone())));
        for source in self.sources {
            registry.register_collector(Box::new(exposition::SourceCollector(source)));
        }
        let routes = Arc::new(Routes {
            pools: self.pools,
            healthy_share: self.healthy_share.clamp(0.0, 1.0),
            registry,
            control: self.control.map(|(pools, auth)| control::Control {
                pools,
                auth,
                reload: self.reload,
            }),
        });
        let task = tokio::spawn(serve(listener, routes));
        Ok(AdminServer { local_addr, task })
    }
}

impl AdminServer {
    /// Serves `monitor` on `addr`. `/healthz` answers 200 while at least
    /// `healthy_share` (0.0–1.0) of the target connections are ready.
    /// Cancel-safe: dropped before it returns, it leaves nothing listening.
    /// [`builder`](Self::builder) adds metrics of other sources.
    ///
    /// # Errors
    /// The bind error.
    pub async fn bind(
        addr: impl ToSocketAddrs,
        monitor: FleetMonitor,
        healthy_share: f64,
    ) -> io::Result<Self> {
        Self::builder(monitor)
            .healthy_share(healthy_share)
            .bind(addr)
            .await
    }

    /// An admin server for the pools of `registry`, read at each request:
    /// pools the application adds, replaces or removes while it runs (a
    /// reload) show at once. Each pool's fleet must be
    /// [named](crate::fleet::FleetBuilder::name) as its key.
    pub fn builder_for(registry: ControlPools) -> AdminBuilder {
        AdminBuilder {
            pools: pools::Pools::live(registry),
            healthy_share: 0.9,
            sources: Vec::new(),
            control: None,
            reload: None,
        }
    }

    /// An admin server for `monitor`'s fleet (its first pool; add more
    /// with [`pool`](AdminBuilder::pool)), to configure and then
    /// [`bind`](AdminBuilder::bind).
    pub fn builder(monitor: FleetMonitor) -> AdminBuilder {
        AdminBuilder {
            pools: pools::Pools::new(monitor),
            healthy_share: 0.9,
            sources: Vec::new(),
            control: None,
            reload: None,
        }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the routes serve, shared by every admin connection.
struct Routes {
    pools: pools::Pools,
    healthy_share: f64,
    /// The fleets' collector, then each source's, in the order added.
    registry: Registry,
    control: Option<control::Control>,
}

async fn serve(listener: TcpListener, routes: Arc<Routes>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    accept_loop(listener, permits, "admin", move |tcp, _| {
        let routes = routes.clone();
        async move {
            let service = hyper::service::service_fn(move |req| {
                let routes = routes.clone();
                async move { Ok::<_, Infallible>(routes.handle(req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .max_buf_size(MAX_REQUEST_BUFFER)
                .serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(IDLE, conn).await;
        }
    })
    .await;
}

impl Routes {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match &self.control {
            Some(control) if req.uri().path().starts_with("/control/") => control.handle(req).await,
            _ => self.route(&req),
        }
    }

    fn route(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
        }
        match req.uri().path() {
            "/metrics" => match exposition::encode(&self.registry) {
                Ok(body) => with_type(text(StatusCode::OK, body), CONTENT_TYPE),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "a metrics source failed to encode\n".into(),
                ),
            },
            "/connections" => json(&self.pools.connections()),
            "/pools" => json(&self.pools.summaries()),
            "/healthz" => {
                let monitors = self.pools.monitors();
                let counts: Vec<(&str, usize, usize)> = monitors
                    .iter()
                    .map(|m| (m.name(), m.ready(), m.target()))
                    .collect();
                let (healthy, body) = pools::health(&counts, self.healthy_share);
                let status = if healthy {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                text(status, body)
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "routes: /metrics /connections /pools /healthz\n".into(),
            ),
        }
    }
}

/// `value` as a JSON answer.
fn json(value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    with_type(
        Response::new(Full::new(Bytes::from(body))),
        "application/json",
    )
}

fn with_type(
    mut response: Response<Full<Bytes>>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
