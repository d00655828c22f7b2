use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::connect::MaybeTlsStream;
use crate::{Connection, ConnectionConfig};

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
}

impl EchoServer {
    /// Listens on `addr` and serves each connection with `config` (limits,
    /// handshake deadline, keepalive, subprotocols it accepts).
    ///
    /// # Errors
    /// The bind error.
    pub async fn bind(addr: impl ToSocketAddrs, config: ConnectionConfig) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let task = tokio::spawn(accept_loop(listener, Arc::new(config)));
        Ok(Self { local_addr, task })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `ws://ADDR/`.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.local_addr)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, config: Arc<ConnectionConfig>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: say so, wait a little, keep serving.
                tracing::warn!(error = %e, "echo server: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let config = config.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match Connection::accept(MaybeTlsStream::Plain(tcp), peer.to_string(), &config).await {
                Ok(mut conn) => {
                    while let Some(Ok(message)) = conn.recv().await {
                        if conn.send(message).await.is_err() {
                            break;
                        }
                    }
                    let _ = conn.flush().await;
                }
                Err(e) => tracing::debug!(error = %e, "echo server: handshake failed"),
            }
        });
    }
}
