use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;
use tokio::net::{TcpListener, ToSocketAddrs};

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::connect::{Chain, MaybeTlsStream};
use crate::listen::accept_loop;
use crate::{CloseCode, Connection, ConnectionConfig};

/// Most connections an echo server serves at once; further clients wait in
/// the listen backlog.
const MAX_CONNECTIONS: usize = 50_000;

/// A WebSocket echo server on a tokio task: every message comes back as it
/// came (text as text, binary as binary). Stops when dropped.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use wsfleet::serve::EchoServer;
/// use wsfleet::{Connection, ConnectionConfig, Message};
/// let server = EchoServer::bind("127.0.0.1:0", ConnectionConfig::default()).await?;
/// let mut conn = Connection::connect(&server.url(), &ConnectionConfig::default()).await?;
/// conn.send(Message::text("ping?")).await?;
/// assert_eq!(conn.recv().await.unwrap()?, Message::text("ping?"));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct EchoServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
    connections: Arc<Semaphore>,
}

impl EchoServer {
    /// Listens on `addr` and serves each connection with `config` (limits,
    /// handshake deadline, keepalive, subprotocols it accepts).
    /// Cancel-safe: dropped before it returns, it leaves nothing listening.
    ///
    /// # Errors
    /// The bind error.
    pub async fn bind(addr: impl ToSocketAddrs, config: ConnectionConfig) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let task = tokio::spawn(serve(
            listener,
            Arc::new(config),
            connections.clone(),
            stopped,
        ));
        Ok(Self {
            local_addr,
            task,
            stop,
            connections,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `ws://ADDR/`.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.local_addr)
    }

    /// Stops accepting and closes every connection with 1001 (going away),
    /// waiting at most `within` for the close handshakes. Cancel-safe:
    /// dropping the future only stops the wait; the connections, told to
    /// close on its first poll, still close.
    pub async fn shutdown(self, within: Duration) {
        let _ = self.stop.send(true);
        self.task.abort();
        let all = u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX);
        // Every connection holds a permit until it has closed.
        let _ = tokio::time::timeout(within, self.connections.acquire_many(all)).await;
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Echoes on every connection until the client closes or the server stops.
async fn serve(
    listener: TcpListener,
    config: Arc<ConnectionConfig>,
    permits: Arc<Semaphore>,
    stopped: watch::Receiver<bool>,
) {
    accept_loop(listener, permits, "echo server", move |tcp, peer| {
        let _ = tcp.set_nodelay(true);
        let config = config.clone();
        let mut stopped = stopped.clone();
        async move {
            match Connection::accept(MaybeTlsStream::Plain(tcp), peer.to_string(), &config).await {
                Ok(mut conn) => {
                    let mut closing = false;
                    loop {
                        tokio::select! {
                            message = conn.recv() => match message {
                                Some(Ok(message)) => {
                                    if !closing && conn.send(message).await.is_err() {
                                        break;
                                    }
                                }
                                _ => break,
                            },
                            _ = stopped.changed(), if !closing => {
                                closing = true;
                                if conn.begin_close(CloseCode::GOING_AWAY, "server shutting down").is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    // A client that stopped reading must not pin this task
                    // (and its connection permit) forever.
                    let _ = tokio::time::timeout(config.deadlines.close, conn.flush()).await;
                }
                Err(e) => tracing::debug!(error = %Chain(&e), "echo server: handshake failed"),
            }
        }
    })
    .await;
}
