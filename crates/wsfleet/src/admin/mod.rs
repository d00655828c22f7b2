//! The admin endpoint: `/metrics` (Prometheus text), `/connections` (JSON,
//! one object per connection), `/healthz`. Off unless asked for; bind it to
//! loopback unless you mean to expose it.
//!
//! `/metrics` serves the fleet's metrics and then whatever each added
//! [`MetricsSource`] writes: the way a crate the fleet knows nothing of (a
//! bus sink, the application) puts its counters on the same endpoint.

mod control;
mod exposition;
mod metrics;

pub use control::{ControlAuth, ControlPools, MAX_CONTROL_BODY, ReloadHook};
pub use exposition::{MetricKind, MetricsSource, write_family, write_metric};

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

/// Settings of an [`AdminServer`] before it binds: the fleet it serves,
/// the `/healthz` threshold, and the [`MetricsSource`]s added to
/// `/metrics`. From [`AdminServer::builder`].
///
/// ```no_run
/// # async fn demo(fleet: &wsfleet::fleet::Fleet) -> std::io::Result<()> {
/// use std::sync::Arc;
/// use wsfleet::admin::{AdminServer, MetricKind, write_metric};
///
/// let started = std::time::Instant::now();
/// let admin = AdminServer::builder(fleet.monitor())
///     .healthy_share(0.5)
///     .metrics_source(Arc::new(move |out: &mut String| {
///         let up = started.elapsed().as_secs_f64();
///         write_metric(out, "myapp_uptime_seconds", MetricKind::Gauge, "Time since start.", up);
///     }))
///     .bind("127.0.0.1:9100")
///     .await?;
/// println!("metrics on http://{}/metrics", admin.local_addr());
/// # Ok(()) }
/// ```
#[must_use = "nothing listens until `bind`"]
pub struct AdminBuilder {
    monitor: FleetMonitor,
    healthy_share: f64,
    sources: Vec<Arc<dyn MetricsSource>>,
    control: Option<(ControlPools, ControlAuth)>,
    reload: Option<ReloadHook>,
}

impl std::fmt::Debug for AdminBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminBuilder")
            .field("healthy_share", &self.healthy_share)
            .field("metrics_sources", &self.sources.len())
            .finish_non_exhaustive()
    }
}

impl AdminBuilder {
    /// `/healthz` answers 200 while at least this share (0.0–1.0, clamped)
    /// of the target connections are ready. Default 0.9.
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
        let routes = Arc::new(Routes {
            monitor: self.monitor,
            healthy_share: self.healthy_share.clamp(0.0, 1.0),
            sources: self.sources,
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

    /// An admin server for `monitor`'s fleet, to configure and then
    /// [`bind`](AdminBuilder::bind).
    pub fn builder(monitor: FleetMonitor) -> AdminBuilder {
        AdminBuilder {
            monitor,
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
    monitor: FleetMonitor,
    healthy_share: f64,
    sources: Vec<Arc<dyn MetricsSource>>,
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
            "/metrics" => {
                let mut response = text(StatusCode::OK, self.metrics());
                response.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(
                        "text/plain; version=0.0.4; charset=utf-8",
                    ),
                );
                response
            }
            "/connections" => {
                let body =
                    serde_json::to_vec(&self.monitor.stats().connections).unwrap_or_default();
                let mut response = Response::new(Full::new(Bytes::from(body)));
                response.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/json"),
                );
                response
            }
            "/healthz" => {
                let (ready, target) = (self.monitor.ready(), self.monitor.target());
                let healthy = ready as f64 >= self.healthy_share * target as f64;
                let status = if healthy {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                let word = if healthy { "ok" } else { "unhealthy" };
                text(status, format!("{word}: {ready}/{target} ready\n"))
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "routes: /metrics /connections /healthz\n".into(),
            ),
        }
    }

    /// The fleet's metrics, then each source's.
    fn metrics(&self) -> String {
        let mut out = metrics::render(&self.monitor.stats());
        render_sources(&mut out, &self.sources);
        out
    }
}

/// Appends what each source writes, in order; a source that leaves its
/// last line open gets it closed, so the next one starts on a line of its
/// own.
fn render_sources(out: &mut String, sources: &[Arc<dyn MetricsSource>]) {
    for source in sources {
        source.render(out);
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_render_in_order_each_on_lines_of_its_own() {
        let sources: Vec<Arc<dyn MetricsSource>> = vec![
            Arc::new(|out: &mut String| {
                write_metric(out, "a_total", MetricKind::Counter, "A.", 1);
            }),
            // Forgets its last line ending.
            Arc::new(|out: &mut String| out.push_str("b 2")),
            Arc::new(|out: &mut String| out.push_str("c 3\n")),
        ];
        let mut out = String::from("wsfleet_x 0\n");
        render_sources(&mut out, &sources);
        assert_eq!(
            out,
            "wsfleet_x 0\n# HELP a_total A.\n# TYPE a_total counter\na_total 1\nb 2\nc 3\n"
        );
    }
}
