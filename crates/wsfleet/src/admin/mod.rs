//! The admin endpoint: `/metrics` (Prometheus text), `/connections` (JSON,
//! one object per connection), `/healthz`. Off unless asked for; bind it to
//! loopback unless you mean to expose it.

mod metrics;

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

impl AdminServer {
    /// Serves `monitor` on `addr`. `/healthz` answers 200 while at least
    /// `healthy_share` (0.0–1.0) of the target connections are ready.
    /// Cancel-safe: dropped before it returns, it leaves nothing listening.
    ///
    /// # Errors
    /// The bind error.
    pub async fn bind(
        addr: impl ToSocketAddrs,
        monitor: FleetMonitor,
        healthy_share: f64,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let task = tokio::spawn(serve(listener, monitor, healthy_share.clamp(0.0, 1.0)));
        Ok(Self { local_addr, task })
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

async fn serve(listener: TcpListener, monitor: FleetMonitor, healthy_share: f64) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    accept_loop(listener, permits, "admin", move |tcp, _| {
        let monitor = monitor.clone();
        async move {
            let service = hyper::service::service_fn(move |req| {
                let monitor = monitor.clone();
                async move { Ok::<_, Infallible>(route(&req, &monitor, healthy_share)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .max_buf_size(MAX_REQUEST_BUFFER)
                .serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(IDLE, conn).await;
        }
    })
    .await;
}

fn route(
    req: &Request<Incoming>,
    monitor: &FleetMonitor,
    healthy_share: f64,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut response = text(StatusCode::OK, metrics::render(&monitor.stats()));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        "/connections" => {
            let body = serde_json::to_vec(&monitor.stats().connections).unwrap_or_default();
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            response
        }
        "/healthz" => {
            let (ready, target) = (monitor.ready(), monitor.target());
            let healthy = ready as f64 >= healthy_share * target as f64;
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

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
