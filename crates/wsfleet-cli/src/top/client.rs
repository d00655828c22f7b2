//! Reading a fleet's admin endpoint: `GET /connections` straight into the
//! library's own [`ConnectionInfo`] (one type at both ends) and `GET
//! /metrics`, of which the header needs a few unlabelled lines.
//!
//! Both requests go over one HTTP/1.1 connection per refresh, with hyper's
//! client (the endpoint is hyper's server), bounded in time and size.

use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use wsfleet::fleet::{ConnectionInfo, PoolInfo};

use super::state::Update;

/// Longest wait for both answers; then the fetch counts as failed.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest body read: `/connections` is about 300 bytes a connection, so
/// this is room for well over 100,000 of them.
const MAX_BODY: usize = 64 << 20;

/// The `/metrics` values the header shows; `None` when a line is missing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Metrics {
    /// `wsfleet_connections_target`.
    pub(crate) target: Option<u64>,
    /// `wsfleet_connections_ready`.
    pub(crate) ready: Option<u64>,
    /// `wsfleet_reconnects_total`.
    pub(crate) reconnects_total: Option<u64>,
    /// `wsfleet_messages_in_total`.
    pub(crate) messages_in_total: Option<u64>,
    /// `wsfleet_messages_out_total`.
    pub(crate) messages_out_total: Option<u64>,
    /// `wsfleet_bytes_in_total`.
    pub(crate) bytes_in_total: Option<u64>,
    /// `wsfleet_bytes_out_total`.
    pub(crate) bytes_out_total: Option<u64>,
    /// `wsfleet_buffered_bytes`.
    pub(crate) buffered_bytes: Option<u64>,
    /// `wsfleet_budget_used_bytes`.
    pub(crate) budget_used_bytes: Option<u64>,
    /// `wsfleet_budget_peak_bytes`.
    pub(crate) budget_peak_bytes: Option<u64>,
    /// `wsfleet_budget_max_bytes`.
    pub(crate) budget_max_bytes: Option<u64>,
}

impl Metrics {
    /// Reads the samples it knows from Prometheus text, whole process:
    /// a family labelled by `pool` (or by budget) is summed over its
    /// samples; comments, other labels (`state`, `reason`, `le`) and other
    /// names are skipped.
    pub(crate) fn parse(text: &str) -> Self {
        let mut m = Self::default();
        for line in text.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, Some(labels)),
                None => (series, None),
            };
            // Only the pool label (written first) splits these families.
            if labels.is_some_and(|l| !l.starts_with("pool=\"") || l.contains("\",")) {
                continue;
            }
            let slot = match name {
                "wsfleet_connections_target" => &mut m.target,
                "wsfleet_connections_ready" => &mut m.ready,
                "wsfleet_reconnects_total" => &mut m.reconnects_total,
                "wsfleet_messages_in_total" => &mut m.messages_in_total,
                "wsfleet_messages_out_total" => &mut m.messages_out_total,
                "wsfleet_bytes_in_total" => &mut m.bytes_in_total,
                "wsfleet_bytes_out_total" => &mut m.bytes_out_total,
                "wsfleet_buffered_bytes" => &mut m.buffered_bytes,
                "wsfleet_budget_used_bytes" => &mut m.budget_used_bytes,
                "wsfleet_budget_peak_bytes" => &mut m.budget_peak_bytes,
                "wsfleet_budget_max_bytes" => &mut m.budget_max_bytes,
                _ => continue,
            };
            if let Some(v) = parse_sample(value) {
                *slot = Some(slot.unwrap_or(0).saturating_add(v));
            }
        }
        m
    }
}

/// A sample value as a count: integers as they are, floats (`1e+06`)
/// truncated; negative, NaN and infinite values are no count.
fn parse_sample(value: &str) -> Option<u64> {
    value.parse::<u64>().ok().or_else(|| {
        let v: f64 = value.parse().ok()?;
        // Truncation is the point; out-of-range values were filtered above.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        (0.0..1.8e19).contains(&v).then_some(v as u64)
    })
}

/// One fetch of both routes.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// `/connections`.
    pub(crate) connections: Vec<ConnectionInfo>,
    /// `/metrics`.
    pub(crate) metrics: Metrics,
    /// `/pools`; empty from a server without that route (one pool).
    pub(crate) pools: Vec<PoolInfo>,
}

/// Fetches snapshots from one admin endpoint.
#[derive(Debug, Clone)]
pub(crate) struct AdminClient {
    addr: String,
}

impl AdminClient {
    /// A client of `addr` (`HOST:PORT`).
    pub(crate) fn new(addr: String) -> Self {
        Self { addr }
    }

    /// Both routes, within [`FETCH_TIMEOUT`].
    ///
    /// # Errors
    /// Connecting, an HTTP error status, a body that is not what the
    /// library sends, or the timeout.
    pub(crate) async fn fetch(&self) -> anyhow::Result<Snapshot> {
        tokio::time::timeout(FETCH_TIMEOUT, self.fetch_untimed())
            .await
            .map_err(|_| anyhow!("no answer within {FETCH_TIMEOUT:?}"))?
    }

    async fn fetch_untimed(&self) -> anyhow::Result<Snapshot> {
        let tcp = TcpStream::connect(&self.addr).await?;
        tcp.set_nodelay(true)?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp)).await?;
        let requests = async {
            let body = self.get(&mut sender, "/connections").await?;
            let connections: Vec<ConnectionInfo> = serde_json::from_slice(&body)
                .context("GET /connections: not a JSON array of connections")?;
            let body = self.get(&mut sender, "/metrics").await?;
            let text = std::str::from_utf8(&body).context("GET /metrics: not UTF-8")?;
            let metrics = Metrics::parse(text);
            let pools = match self.get_optional(&mut sender, "/pools").await? {
                Some(body) => serde_json::from_slice(&body)
                    .context("GET /pools: not a JSON array of pools")?,
                None => Vec::new(),
            };
            Ok(Snapshot {
                connections,
                metrics,
                pools,
            })
        };
        // The connection task does the I/O (its errors reach the requests);
        // aborting it closes the socket, also when the timeout drops us.
        let connection = AbortOnDrop(tokio::spawn(connection));
        let snapshot = requests.await;
        drop(connection);
        snapshot
    }

    async fn get(
        &self,
        sender: &mut SendRequest<Empty<Bytes>>,
        path: &str,
    ) -> anyhow::Result<Bytes> {
        self.get_optional(sender, path)
            .await?
            .ok_or_else(|| anyhow!("GET {path}: HTTP 404 Not Found"))
    }

    /// `GET path`; `None` on 404 (a route an older server does not have).
    async fn get_optional(
        &self,
        sender: &mut SendRequest<Empty<Bytes>>,
        path: &str,
    ) -> anyhow::Result<Option<Bytes>> {
        let request = Request::get(path)
            .header(header::HOST, &self.addr)
            .header(header::USER_AGENT, "wsfleet-top")
            .body(Empty::new())?;
        sender.ready().await?;
        let response = sender
            .send_request(request)
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| anyhow!("GET {path}: reading the body: {e}"))?
            .to_bytes();
        if status == hyper::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
            bail!("GET {path}: HTTP {status}: {}", text.trim());
        }
        Ok(Some(body))
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Fetches every `every` (the first at once) and hands each result over,
/// until the receiver is gone. A fetch slower than `every` delays the next
/// one instead of piling up.
pub(crate) async fn poll(client: AdminClient, every: Duration, updates: mpsc::Sender<Update>) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = client.fetch().await.map_err(|e| format!("{e:#}"));
        let update = Update {
            at: Instant::now(),
            result,
        };
        if updates.send(update).await.is_err() {
            return;
        }
    }
}

/// `--admin`: `HOST:PORT`, with an optional `http://` prefix and trailing
/// `/` (so a URL copied from a browser works), normalised to `HOST:PORT`.
pub(crate) fn parse_admin_addr(input: &str) -> Result<String, String> {
    let addr = input.trim();
    let addr = addr.strip_prefix("http://").unwrap_or(addr);
    let addr = addr.strip_suffix('/').unwrap_or(addr);
    let bad = || format!("expected HOST:PORT such as 127.0.0.1:9100, got {input:?}");
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && (host.starts_with('[') && host.ends_with(']')
            || host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'));
    if !host_ok || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(addr.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    use wsfleet::ConnectionConfig;
    use wsfleet::admin::AdminServer;
    use wsfleet::fleet::{ConnState, Fleet};
    use wsfleet::serve::EchoServer;

    #[test]
    fn admin_addresses() {
        for (input, want) in [
            ("127.0.0.1:9100", "127.0.0.1:9100"),
            ("http://127.0.0.1:9100/", "127.0.0.1:9100"),
            ("localhost:80", "localhost:80"),
            ("[::1]:9100", "[::1]:9100"),
        ] {
            assert_eq!(parse_admin_addr(input).as_deref(), Ok(want), "{input}");
        }
        for bad in [
            "127.0.0.1",
            "127.0.0.1:x",
            ":9100",
            "a b:1",
            "h:70000",
            "https://h:1",
        ] {
            assert!(parse_admin_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn metrics_text() {
        let m = Metrics::parse(
            "# HELP wsfleet_connections_target Connections the fleet keeps (slots).\n\
             # TYPE wsfleet_connections_target gauge\n\
             wsfleet_connections_target 1000\n\
             wsfleet_connections_ready 998\n\
             wsfleet_connections{state=\"ready\"} 998\n\
             wsfleet_reconnects_total{pool=\"a\"} 12\n\
             wsfleet_reconnects_total{pool=\"b\"} 3\n\
             wsfleet_connections{pool=\"b\",state=\"ready\"} 7\n\
             wsfleet_budget_peak_bytes{pool=\"a,b\"} 9\n\
             wsfleet_messages_in_total 1e+06\n\
             wsfleet_budget_used_bytes 4096\n\
             wsfleet_budget_max_bytes -1\n\
             wsfleet_unknown 5\n\
             garbage\n",
        );
        assert_eq!(
            m,
            Metrics {
                target: Some(1000),
                ready: Some(998),
                reconnects_total: Some(15),
                budget_peak_bytes: Some(9),
                messages_in_total: Some(1_000_000),
                budget_used_bytes: Some(4096),
                ..Metrics::default()
            }
        );
    }

    /// A real fleet of three connections to a real echo server, its real
    /// admin endpoint, all on loopback: both routes fetched and parsed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fetches_a_real_admin_endpoint() {
        let echo = EchoServer::bind("127.0.0.1:0", ConnectionConfig::default())
            .await
            .unwrap();
        let fleet = Fleet::builder(echo.url())
            .connections(3)
            .memory_budget(8 << 20)
            .spawn()
            .unwrap();
        let admin = AdminServer::bind("127.0.0.1:0", fleet.monitor(), 0.5)
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while fleet.ready() < 3 {
            assert!(tokio::time::Instant::now() < deadline, "fleet not ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let client = AdminClient::new(admin.local_addr().to_string());
        let snapshot = client.fetch().await.unwrap();
        assert_eq!(snapshot.connections.len(), 3);
        let mut slots: Vec<u32> = snapshot.connections.iter().map(|c| c.slot.0).collect();
        slots.sort_unstable();
        assert_eq!(slots, [0, 1, 2]);
        for c in &snapshot.connections {
            assert_eq!(c.state, ConnState::Ready);
            assert_eq!(c.url, echo.url());
            assert!(c.connected_since.is_some());
        }
        let m = snapshot.metrics;
        assert_eq!((m.target, m.ready), (Some(3), Some(3)));
        assert_eq!(m.budget_max_bytes, Some(8 << 20));
        assert_eq!(snapshot.pools, [PoolInfo::new("default", 3, 3, false)]);
        assert!(snapshot.connections.iter().all(|c| c.pool == "default"));
        assert!(m.reconnects_total.is_some());
        assert!(m.messages_in_total.is_some() && m.bytes_out_total.is_some());
        assert!(m.buffered_bytes.is_some() && m.budget_used_bytes.is_some());

        // The polling task delivers the same, again and again.
        let (tx, mut rx) = mpsc::channel(1);
        let poller = tokio::spawn(poll(client, Duration::from_millis(50), tx));
        for _ in 0..3 {
            let update = rx.recv().await.unwrap();
            assert_eq!(update.result.unwrap().connections.len(), 3);
        }
        drop(rx);
        poller.await.unwrap();

        drop(admin);
        fleet.shutdown().await;
    }

    #[tokio::test]
    async fn an_endpoint_that_is_down_is_an_error_not_a_hang() {
        // A port that was free a moment ago: nothing listens there.
        let addr = {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap()
        };
        let started = Instant::now();
        let e = AdminClient::new(addr.to_string())
            .fetch()
            .await
            .unwrap_err();
        assert!(started.elapsed() < FETCH_TIMEOUT);
        assert!(format!("{e:#}").to_lowercase().contains("refused"), "{e:#}");
    }

    #[tokio::test]
    async fn a_server_that_is_not_the_admin_endpoint_is_a_clear_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut buf = [0; 1024];
            let _ = tcp.read(&mut buf).await;
            let _ = tcp
                .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 5\r\n\r\nnope\n")
                .await;
        });
        let e = AdminClient::new(addr.to_string())
            .fetch()
            .await
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("GET /connections: HTTP 404"),
            "{e:#}"
        );
    }
}
