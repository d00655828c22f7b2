//! An in-process tokio-tungstenite server peer.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{self, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::{MAX_MESSAGE_SIZE, Mode};

/// A tokio-tungstenite server on 127.0.0.1, running as tasks of the current
/// runtime; every task is aborted when the handle drops.
///
/// Messages and frames up to [`MAX_MESSAGE_SIZE`]. No permessage-deflate.
#[derive(Debug)]
pub struct RustServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl RustServer {
    /// Starts a server in `mode` on a port the OS picks.
    ///
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// If binding 127.0.0.1 fails.
    pub async fn start(mode: Mode) -> io::Result<RustServer> {
        Self::start_on(0, mode).await
    }

    /// Starts an echo server: `RustServer::start(Mode::Echo)`.
    ///
    /// # Errors
    ///
    /// As [`RustServer::start`].
    pub async fn echo() -> io::Result<RustServer> {
        Self::start(Mode::Echo).await
    }

    /// Starts a server in `mode` on `port` (0: any), e.g. to bring a server back
    /// where a client expects it.
    ///
    /// # Errors
    ///
    /// If binding `127.0.0.1:port` fails (for instance, the port is taken).
    pub async fn start_on(port: u16, mode: Mode) -> io::Result<RustServer> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await?;
        let addr = listener.local_addr()?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(accept_loop(listener, Arc::new(mode), errors.clone()));
        Ok(RustServer { addr, task, errors })
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.addr.port())
    }

    /// Errors the server saw so far, one line each (`PEER: ERROR`): failed
    /// handshakes, protocol errors, resets. A clean close is not an error.
    pub fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for RustServer {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, mode: Arc<Mode>, errors: Arc<Mutex<Vec<String>>>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let (mode, errors) = (mode.clone(), errors.clone());
                    connections.spawn(async move {
                        if let Err(e) = serve(tcp, peer, &mode).await {
                            errors.lock().unwrap_or_else(|e| e.into_inner()).push(format!("{peer}: {e}"));
                        }
                    });
                }
                Err(e) => {
                    errors.lock().unwrap_or_else(|e| e.into_inner()).push(format!("accept: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await; // e.g. out of fds
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve(tcp: TcpStream, peer: SocketAddr, mode: &Mode) -> Result<(), tungstenite::Error> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_SIZE))
        .max_frame_size(Some(MAX_MESSAGE_SIZE));
    let mut headers_json = None;
    // The signature is tungstenite's `Callback`; its error type is what it is.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
        match mode {
            Mode::Headers => headers_json = Some(headers_to_json(request, peer)),
            Mode::Subprotocol(name) => {
                let offered = request
                    .headers()
                    .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .any(|p| p.trim() == name);
                if !offered {
                    let mut refused =
                        ErrorResponse::new(Some(format!("missing subprotocol {name}")));
                    *refused.status_mut() = StatusCode::BAD_REQUEST;
                    return Err(refused);
                }
                let value =
                    HeaderValue::from_str(name).expect("subprotocol name is a header value");
                response
                    .headers_mut()
                    .insert(http::header::SEC_WEBSOCKET_PROTOCOL, value);
            }
            _ => {}
        }
        Ok(response)
    };
    let mut ws =
        tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(config)).await?;

    match mode {
        Mode::Silent => {
            // Never poll the socket again: no pong, no close reply. Parked until aborted.
            let _ws = ws;
            std::future::pending::<()>().await;
            Ok(())
        }
        Mode::Close { code, reason } => {
            let frame = CloseFrame {
                code: CloseCode::from(*code),
                reason: reason.as_str().into(),
            };
            ws.close(Some(frame)).await?;
            // Let the peer answer; tungstenite finishes the handshake while we read.
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
            Ok(())
        }
        Mode::Echo | Mode::Subprotocol(_) | Mode::Headers => {
            if let Some(json) = headers_json {
                ws.send(Message::text(json)).await?;
            }
            while let Some(message) = ws.next().await {
                match message {
                    Ok(m @ (Message::Text(_) | Message::Binary(_))) => ws.send(m).await?,
                    // Pings are answered and closes replied to by tungstenite itself.
                    Ok(_) => {}
                    Err(tungstenite::Error::ConnectionClosed) => break,
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
    }
}

/// The request's headers, its target as `":path"` and the client's address
/// as `":peer"` (see [`Mode::Headers`]).
fn headers_to_json(request: &Request, peer: SocketAddr) -> String {
    let mut table = serde_json::Map::new();
    for (name, value) in request.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match table.get_mut(name.as_str()) {
            Some(serde_json::Value::String(joined)) => {
                joined.push_str(", ");
                joined.push_str(&value);
            }
            _ => {
                table.insert(name.as_str().to_owned(), value.into());
            }
        }
    }
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    table.insert(":path".to_owned(), path.into());
    table.insert(":peer".to_owned(), peer.to_string().into());
    serde_json::Value::Object(table).to_string()
}
