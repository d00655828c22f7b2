//! The four clients behind one small trait, each used at its defaults and in
//! the way its documentation shows: connect to a `ws://` URL, send a message
//! made from a shared buffer, receive the next data message.

use std::future::Future;

use bytes::Bytes;

/// Text or binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Text,
    Binary,
}

/// Which client library.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Lib {
    /// wsfleet's `Connection`.
    Wsfleet,
    /// tokio-tungstenite's `connect_async` stream.
    Tungstenite,
    /// fastwebsockets' client handshake (hyper) and `FragmentCollector`.
    Fastwebsockets,
    /// tokio-websockets' `ClientBuilder`.
    TokioWebsockets,
}

impl Lib {
    pub(crate) const ALL: [Lib; 4] = [
        Lib::Wsfleet,
        Lib::Tungstenite,
        Lib::Fastwebsockets,
        Lib::TokioWebsockets,
    ];

    /// The name on the command line.
    pub(crate) fn arg(self) -> &'static str {
        match self {
            Lib::Wsfleet => "wsfleet",
            Lib::Tungstenite => "tungstenite",
            Lib::Fastwebsockets => "fastwebsockets",
            Lib::TokioWebsockets => "tokio-websockets",
        }
    }

    /// The crate's name, for reports.
    pub(crate) fn display(self) -> &'static str {
        match self {
            Lib::Wsfleet => "wsfleet",
            Lib::Tungstenite => "tokio-tungstenite",
            Lib::Fastwebsockets => "fastwebsockets",
            Lib::TokioWebsockets => "tokio-websockets",
        }
    }
}

/// One client connection, as the scenarios use it.
pub(crate) trait Client: Sized + Send + 'static {
    /// The library's own message (or what it sends from), made once and
    /// cloned (cheaply: a reference count) for every send.
    type Msg: Clone + Send + Sync + 'static;

    /// Makes a message from a shared buffer, the library's cheapest way.
    fn prepare(kind: Kind, payload: &Bytes) -> Self::Msg;

    /// Opens a connection (TCP and WebSocket handshake).
    fn connect(url: &str) -> impl Future<Output = Result<Self, String>> + Send;

    /// Sends one message.
    fn send(&mut self, msg: &Self::Msg) -> impl Future<Output = Result<(), String>> + Send;

    /// The next data message's payload length; `None` once the peer closed.
    fn recv(&mut self) -> impl Future<Output = Result<Option<usize>, String>> + Send;
}

// ---------------------------------------------------------------- wsfleet

impl Client for wsfleet::Connection {
    type Msg = wsfleet::Message;

    fn prepare(kind: Kind, payload: &Bytes) -> Self::Msg {
        match kind {
            Kind::Text => wsfleet::Message::text(
                wsfleet::Utf8Bytes::try_from(payload.clone()).expect("UTF-8 text"),
            ),
            Kind::Binary => wsfleet::Message::binary(payload.clone()),
        }
    }

    async fn connect(url: &str) -> Result<Self, String> {
        wsfleet::Connection::connect(url, &wsfleet::ConnectionConfig::default())
            .await
            .map_err(|e| e.to_string())
    }

    async fn send(&mut self, msg: &Self::Msg) -> Result<(), String> {
        wsfleet::Connection::send(self, msg.clone())
            .await
            .map_err(|e| e.to_string())
    }

    async fn recv(&mut self) -> Result<Option<usize>, String> {
        match wsfleet::Connection::recv(self).await {
            None => Ok(None),
            Some(Ok(m)) => Ok(Some(m.len())),
            Some(Err(e)) => Err(e.to_string()),
        }
    }
}

// ------------------------------------------------------- tokio-tungstenite

pub(crate) type Tungstenite =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Client for Tungstenite {
    type Msg = tokio_tungstenite::tungstenite::Message;

    fn prepare(kind: Kind, payload: &Bytes) -> Self::Msg {
        use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
        match kind {
            Kind::Text => Message::Text(Utf8Bytes::try_from(payload.clone()).expect("UTF-8 text")),
            Kind::Binary => Message::Binary(payload.clone()),
        }
    }

    async fn connect(url: &str) -> Result<Self, String> {
        tokio_tungstenite::connect_async(url)
            .await
            .map(|(ws, _response)| ws)
            .map_err(|e| e.to_string())
    }

    async fn send(&mut self, msg: &Self::Msg) -> Result<(), String> {
        use futures_util::SinkExt;
        SinkExt::send(self, msg.clone())
            .await
            .map_err(|e| e.to_string())
    }

    async fn recv(&mut self) -> Result<Option<usize>, String> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            match self.next().await {
                None | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(Message::Text(t))) => return Ok(Some(t.len())),
                Some(Ok(Message::Binary(b))) => return Ok(Some(b.len())),
                Some(Ok(_control)) => continue,
                Some(Err(e)) => return Err(e.to_string()),
            }
        }
    }
}

// ---------------------------------------------------------- fastwebsockets

pub(crate) type Fastwebsockets =
    fastwebsockets::FragmentCollector<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// Ties hyper's executor to tokio, as fastwebsockets' client example does.
struct SpawnExecutor;

impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::task::spawn(fut);
    }
}

impl Client for Fastwebsockets {
    type Msg = (Kind, Bytes);

    fn prepare(kind: Kind, payload: &Bytes) -> Self::Msg {
        (kind, payload.clone())
    }

    async fn connect(url: &str) -> Result<Self, String> {
        use http_body_util::Empty;
        use hyper::header::{CONNECTION, UPGRADE};
        let authority = url
            .strip_prefix("ws://")
            .ok_or("fastwebsockets: only ws:// here")?
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let stream = tokio::net::TcpStream::connect(&authority)
            .await
            .map_err(|e| e.to_string())?;
        let req = hyper::Request::builder()
            .method("GET")
            .uri("/")
            .header("Host", &authority)
            .header(UPGRADE, "websocket")
            .header(CONNECTION, "upgrade")
            .header(
                "Sec-WebSocket-Key",
                fastwebsockets::handshake::generate_key(),
            )
            .header("Sec-WebSocket-Version", "13")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let (ws, _response) = fastwebsockets::handshake::client(&SpawnExecutor, req, stream)
            .await
            .map_err(|e| e.to_string())?;
        Ok(fastwebsockets::FragmentCollector::new(ws))
    }

    async fn send(&mut self, msg: &Self::Msg) -> Result<(), String> {
        use fastwebsockets::{Frame, Payload};
        let payload = Payload::Borrowed(&msg.1);
        let frame = match msg.0 {
            Kind::Text => Frame::text(payload),
            Kind::Binary => Frame::binary(payload),
        };
        self.write_frame(frame).await.map_err(|e| e.to_string())
    }

    async fn recv(&mut self) -> Result<Option<usize>, String> {
        use fastwebsockets::OpCode;
        loop {
            let frame = self.read_frame().await.map_err(|e| e.to_string())?;
            match frame.opcode {
                OpCode::Text | OpCode::Binary => return Ok(Some(frame.payload.len())),
                OpCode::Close => return Ok(None),
                _ => continue,
            }
        }
    }
}

// -------------------------------------------------------- tokio-websockets

pub(crate) type TokioWebsockets =
    tokio_websockets::WebSocketStream<tokio_websockets::MaybeTlsStream<tokio::net::TcpStream>>;

impl Client for TokioWebsockets {
    type Msg = tokio_websockets::Message;

    fn prepare(kind: Kind, payload: &Bytes) -> Self::Msg {
        match kind {
            Kind::Text => tokio_websockets::Message::text(payload.clone()),
            Kind::Binary => tokio_websockets::Message::binary(payload.clone()),
        }
    }

    async fn connect(url: &str) -> Result<Self, String> {
        let builder = tokio_websockets::ClientBuilder::new()
            .uri(url)
            .map_err(|e| e.to_string())?;
        builder
            .connect()
            .await
            .map(|(ws, _response)| ws)
            .map_err(|e| e.to_string())
    }

    async fn send(&mut self, msg: &Self::Msg) -> Result<(), String> {
        use futures_util::SinkExt;
        SinkExt::send(self, msg.clone())
            .await
            .map_err(|e| e.to_string())
    }

    async fn recv(&mut self) -> Result<Option<usize>, String> {
        use futures_util::StreamExt;
        loop {
            match self.next().await {
                None => return Ok(None),
                Some(Ok(m)) if m.is_text() || m.is_binary() => {
                    return Ok(Some(m.as_payload().len()));
                }
                Some(Ok(m)) if m.is_close() => return Ok(None),
                Some(Ok(_control)) => continue,
                Some(Err(e)) => return Err(e.to_string()),
            }
        }
    }
}
