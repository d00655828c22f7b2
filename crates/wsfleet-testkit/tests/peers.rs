//! The test peers start, listen on loopback and behave as their mode says.
//!
//! The client is tokio-tungstenite, so these tests do not depend on wsfleet. The
//! Python tests (`py_*`, `aiohttp_*`) need the venv, the Node tests (`node_*`)
//! `scripts/setup-node`, the nginx tests (`nginx_*`) `scripts/setup-debian`:
//! without them they fail with "run scripts/test (or scripts/setup-...) first"
//! rather than skip.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wsfleet_testkit::{
    AiohttpServer, MAX_MESSAGE_SIZE, Mode, Nginx, NodeServer, PyOptions, PyServer, RustServer,
    ServerOptions, bounded, free_port,
};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(url: &str) -> Client {
    connect_with(url, &[]).await.expect("connect")
}

async fn connect_with(url: &str, headers: &[(&'static str, &str)]) -> Result<Client, Error> {
    let mut request = url.into_client_request()?;
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(*name, HeaderValue::from_str(value).unwrap());
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_SIZE))
        .max_frame_size(Some(MAX_MESSAGE_SIZE));
    let (ws, _response) =
        tokio_tungstenite::connect_async_with_config(request, Some(config), true).await?;
    Ok(ws)
}

/// The next text or binary message (pings and pongs skipped).
async fn next_data(ws: &mut Client) -> Message {
    loop {
        match ws.next().await.expect("connection ended").expect("read") {
            m @ (Message::Text(_) | Message::Binary(_)) => return m,
            Message::Close(frame) => panic!("closed by server: {frame:?}"),
            _ => {}
        }
    }
}

/// Text stays text, binary stays binary, 8 MiB fits, and the close handshake completes.
async fn check_echo(url: &str) {
    let mut ws = connect(url).await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("hello"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        next_data(&mut ws).await,
        Message::binary(vec![0u8, 1, 2, 255])
    );
    let big: Vec<u8> = (0..8 << 20).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::binary(big));
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
}

/// A message in 5000 fragments: more than websockets' default cap of 4096.
async fn check_many_fragments(url: &str) {
    let mut ws = connect(url).await;
    let n = 5000;
    for i in 0..n {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        ws.feed(Message::Frame(Frame::message(
            "abcdefgh",
            opcode,
            i == n - 1,
        )))
        .await
        .unwrap();
    }
    ws.flush().await.unwrap();
    assert_eq!(
        next_data(&mut ws).await,
        Message::text("abcdefgh".repeat(n))
    );
}

async fn check_silent(url: &str) {
    let mut ws = connect(url).await;
    ws.send(Message::Ping("are you there".into()))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_millis(700), ws.next()).await;
    assert!(got.is_err(), "a silent server sent something: {got:?}");
}

async fn check_close(url: &str, code: u16, reason: &str) {
    let mut ws = connect(url).await;
    match ws.next().await.expect("a close frame").expect("read") {
        Message::Close(Some(frame)) => {
            assert_eq!(frame.code, CloseCode::from(code));
            assert_eq!(frame.reason.as_str(), reason);
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}

async fn check_subprotocol(url: &str) {
    let (mut ws, response) = tokio_tungstenite::connect_async({
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("other, chat.v2"),
        );
        request
    })
    .await
    .expect("connect offering the subprotocol");
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "chat.v2"
    );
    ws.send(Message::text("x")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("x"));

    match connect_with(url, &[]).await {
        Err(Error::Http(response)) => assert_eq!(response.status(), 400),
        other => panic!(
            "a client without the subprotocol must get HTTP 400, got {:?}",
            other.map(|_| ())
        ),
    }
}

async fn check_headers(url: &str) {
    let mut ws = connect_with(url, &[("x-wsfleet-test", "42")])
        .await
        .unwrap();
    let Message::Text(json) = next_data(&mut ws).await else {
        panic!("expected a text message")
    };
    let headers: serde_json::Value = serde_json::from_str(json.as_str()).unwrap();
    assert_eq!(headers["x-wsfleet-test"], "42", "{headers}");
    assert!(
        headers[":path"]
            .as_str()
            .is_some_and(|p| p.starts_with('/')),
        "{headers}"
    );
    assert_eq!(
        headers["upgrade"]
            .as_str()
            .map(str::to_lowercase)
            .as_deref(),
        Some("websocket")
    );
    // The client (or the proxy in front) as the server saw it.
    let peer = headers[":peer"].as_str().unwrap_or_default();
    assert!(
        peer.parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback() && a.port() != 0),
        "{headers}"
    );
    ws.send(Message::text("then echo")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("then echo"));
}

/// Sends a raw upgrade request offering permessage-deflate; returns the response head.
async fn raw_handshake_offering_deflate(port: u16) -> String {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let request = format!(
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(
            tcp.read(&mut byte).await.unwrap(),
            1,
            "eof in response head"
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap().to_lowercase()
}

fn py_error(e: std::io::Error) -> ! {
    panic!("{e}")
}

// ---- Python `websockets` server ----

#[tokio::test]
async fn py_echo_keeps_type_and_size() {
    bounded("py echo", async {
        let server = PyServer::echo().await.unwrap_or_else(|e| py_error(e));
        assert!(server.url().starts_with("ws://127.0.0.1:"));
        check_echo(&server.url()).await;
        check_many_fragments(&server.url()).await;
    })
    .await;
}

#[tokio::test]
async fn py_deflate_only_when_asked() {
    bounded("py deflate", async {
        let plain = PyServer::echo().await.unwrap_or_else(|e| py_error(e));
        let head = raw_handshake_offering_deflate(plain.port()).await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(!head.contains("permessage-deflate"), "{head}");

        let options = PyOptions {
            deflate: true,
            ..PyOptions::default()
        };
        let deflate = PyServer::start_with(Mode::Echo, options)
            .await
            .unwrap_or_else(|e| py_error(e));
        let head = raw_handshake_offering_deflate(deflate.port()).await;
        assert!(
            head.contains("sec-websocket-extensions: permessage-deflate"),
            "{head}"
        );
        // A client that offers no extension still gets plain echo.
        check_echo(&deflate.url()).await;
    })
    .await;
}

#[tokio::test]
async fn py_silent_never_answers_ping() {
    bounded("py silent", async {
        let server = PyServer::start(Mode::Silent)
            .await
            .unwrap_or_else(|e| py_error(e));
        check_silent(&server.url()).await;
    })
    .await;
}

#[tokio::test]
async fn py_close_sends_code_and_reason() {
    bounded("py close", async {
        let server = PyServer::start(Mode::close(4001, "bye now"))
            .await
            .unwrap_or_else(|e| py_error(e));
        check_close(&server.url(), 4001, "bye now").await;
    })
    .await;
}

#[tokio::test]
async fn py_close_can_send_a_forbidden_code() {
    bounded("py close 1005", async {
        let server = PyServer::start(Mode::close(1005, ""))
            .await
            .unwrap_or_else(|e| py_error(e));
        let mut ws = connect(&server.url()).await;
        // tungstenite reports a received close code that is not allowed on the wire
        // as its own reply, 1002 "Protocol violation": so the raw 1005 frame arrived.
        match ws.next().await {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(frame.code, CloseCode::Protocol);
                assert_eq!(frame.reason.as_str(), "Protocol violation");
            }
            other => panic!("expected tungstenite's reply to close code 1005, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn py_subprotocol_is_selected() {
    bounded("py subprotocol", async {
        let server = PyServer::start(Mode::subprotocol("chat.v2"))
            .await
            .unwrap_or_else(|e| py_error(e));
        check_subprotocol(&server.url()).await;
    })
    .await;
}

#[tokio::test]
async fn py_headers_are_reported() {
    bounded("py headers", async {
        let server = PyServer::start(Mode::Headers)
            .await
            .unwrap_or_else(|e| py_error(e));
        check_headers(&server.url()).await;
    })
    .await;
}

#[tokio::test]
async fn py_server_dies_with_its_handle_and_restarts_on_its_port() {
    bounded("py lifecycle", async {
        let mut server = PyServer::echo().await.unwrap_or_else(|e| py_error(e));
        let port = server.port();
        server.kill().await.unwrap();
        assert!(
            TcpStream::connect(("127.0.0.1", port)).await.is_err(),
            "killed server still accepts"
        );

        let options = PyOptions {
            port,
            ..PyOptions::default()
        };
        let again = PyServer::start_with(Mode::Echo, options)
            .await
            .unwrap_or_else(|e| py_error(e));
        assert_eq!(again.port(), port);
        check_echo(&again.url()).await;
        drop(again);
        // Killed on drop: the port stops accepting (reaping is asynchronous).
        let mut refused = false;
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(refused, "dropped server still accepts on {port}");
    })
    .await;
}

#[tokio::test]
async fn py_startup_failure_reports_stderr() {
    bounded("py bad close code", async {
        // The script refuses a reason over 123 bytes; the error must carry its stderr.
        let err = PyServer::start(Mode::close(1000, "x".repeat(200)))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("exited before it reported its port"),
            "{text}"
        );
        assert!(text.contains("123 bytes"), "{text}");
    })
    .await;
}

// ---- tokio-tungstenite server ----

#[tokio::test]
async fn rust_echo_keeps_type_and_size() {
    bounded("rust echo", async {
        let server = RustServer::echo().await.unwrap();
        check_echo(&server.url()).await;
        check_many_fragments(&server.url()).await;
        assert!(server.errors().is_empty(), "{:?}", server.errors());
    })
    .await;
}

#[tokio::test]
async fn rust_silent_never_answers_ping() {
    bounded("rust silent", async {
        let server = RustServer::start(Mode::Silent).await.unwrap();
        check_silent(&server.url()).await;
    })
    .await;
}

#[tokio::test]
async fn rust_close_sends_code_and_reason() {
    bounded("rust close", async {
        let server = RustServer::start(Mode::close(1001, "going away"))
            .await
            .unwrap();
        check_close(&server.url(), 1001, "going away").await;
    })
    .await;
}

#[tokio::test]
async fn rust_subprotocol_is_selected() {
    bounded("rust subprotocol", async {
        let server = RustServer::start(Mode::subprotocol("chat.v2"))
            .await
            .unwrap();
        check_subprotocol(&server.url()).await;
    })
    .await;
}

#[tokio::test]
async fn rust_headers_are_reported() {
    bounded("rust headers", async {
        let server = RustServer::start(Mode::Headers).await.unwrap();
        check_headers(&server.url()).await;
    })
    .await;
}

#[tokio::test]
async fn rust_server_stops_on_drop_and_restarts_on_its_port() {
    bounded("rust lifecycle", async {
        let server = RustServer::echo().await.unwrap();
        let port = server.port();
        drop(server);
        tokio::task::yield_now().await;
        let again = RustServer::start_on(port, Mode::Echo).await.unwrap();
        check_echo(&again.url()).await;
    })
    .await;
}

#[tokio::test]
async fn free_port_can_be_bound() {
    let port = free_port().await;
    assert_ne!(port, 0);
    tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the free port");
}

/// Polls until nothing accepts on `port` (a killed child is reaped asynchronously).
async fn wait_refused(port: u16) {
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("a dropped server still accepts on {port}");
}

fn deflate_options() -> ServerOptions {
    ServerOptions {
        deflate: true,
        ..ServerOptions::default()
    }
}

// ---- Node.js `ws` server ----

#[tokio::test]
async fn node_echo_keeps_type_and_size() {
    bounded("node echo", async {
        let server = NodeServer::echo().await.unwrap_or_else(|e| py_error(e));
        assert!(server.url().starts_with("ws://127.0.0.1:"));
        check_echo(&server.url()).await;
        check_many_fragments(&server.url()).await;
    })
    .await;
}

#[tokio::test]
async fn node_deflate_only_when_asked() {
    bounded("node deflate", async {
        let plain = NodeServer::echo().await.unwrap_or_else(|e| py_error(e));
        let head = raw_handshake_offering_deflate(plain.port()).await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(!head.contains("permessage-deflate"), "{head}");

        let deflate = NodeServer::start_with(Mode::Echo, deflate_options())
            .await
            .unwrap_or_else(|e| py_error(e));
        let head = raw_handshake_offering_deflate(deflate.port()).await;
        assert!(
            head.contains("sec-websocket-extensions: permessage-deflate"),
            "{head}"
        );
        check_echo(&deflate.url()).await;
    })
    .await;
}

#[tokio::test]
async fn node_silent_never_answers_ping() {
    bounded("node silent", async {
        let server = NodeServer::start(Mode::Silent)
            .await
            .unwrap_or_else(|e| py_error(e));
        check_silent(&server.url()).await;
    })
    .await;
}

#[tokio::test]
async fn node_close_sends_code_and_reason() {
    bounded("node close", async {
        let server = NodeServer::start(Mode::close(4001, "bye now"))
            .await
            .unwrap_or_else(|e| py_error(e));
        check_close(&server.url(), 4001, "bye now").await;
    })
    .await;
}

#[tokio::test]
async fn node_close_can_send_a_forbidden_code() {
    bounded("node close 1005", async {
        let server = NodeServer::start(Mode::close(1005, ""))
            .await
            .unwrap_or_else(|e| py_error(e));
        let mut ws = connect(&server.url()).await;
        match ws.next().await {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Protocol),
            other => panic!("expected tungstenite's reply to close code 1005, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn node_subprotocol_is_selected() {
    bounded("node subprotocol", async {
        let server = NodeServer::start(Mode::subprotocol("chat.v2"))
            .await
            .unwrap_or_else(|e| py_error(e));
        check_subprotocol(&server.url()).await;
    })
    .await;
}

#[tokio::test]
async fn node_headers_are_reported() {
    bounded("node headers", async {
        let server = NodeServer::start(Mode::Headers)
            .await
            .unwrap_or_else(|e| py_error(e));
        check_headers(&server.url()).await;
    })
    .await;
}

#[tokio::test]
async fn node_server_dies_with_its_handle() {
    bounded("node lifecycle", async {
        let server = NodeServer::echo().await.unwrap_or_else(|e| py_error(e));
        let port = server.port();
        check_echo(&server.url()).await;
        drop(server);
        wait_refused(port).await;
    })
    .await;
}

// ---- aiohttp server ----

#[tokio::test]
async fn aiohttp_echo_keeps_type_and_size() {
    bounded("aiohttp echo", async {
        let server = AiohttpServer::start(Mode::Echo)
            .await
            .unwrap_or_else(|e| py_error(e));
        check_echo(&server.url()).await;
        check_many_fragments(&server.url()).await;
    })
    .await;
}

#[tokio::test]
async fn aiohttp_deflate_only_when_asked() {
    bounded("aiohttp deflate", async {
        let plain = AiohttpServer::start(Mode::Echo)
            .await
            .unwrap_or_else(|e| py_error(e));
        let head = raw_handshake_offering_deflate(plain.port()).await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(!head.contains("permessage-deflate"), "{head}");

        let deflate = AiohttpServer::start_with(Mode::Echo, deflate_options())
            .await
            .unwrap_or_else(|e| py_error(e));
        let head = raw_handshake_offering_deflate(deflate.port()).await;
        assert!(
            head.contains("sec-websocket-extensions: permessage-deflate"),
            "{head}"
        );
        check_echo(&deflate.url()).await;
    })
    .await;
}

#[tokio::test]
async fn aiohttp_modes_behave() {
    bounded("aiohttp modes", async {
        let silent = AiohttpServer::start(Mode::Silent)
            .await
            .unwrap_or_else(|e| py_error(e));
        check_silent(&silent.url()).await;
        let close = AiohttpServer::start(Mode::close(4001, "bye now"))
            .await
            .unwrap_or_else(|e| py_error(e));
        check_close(&close.url(), 4001, "bye now").await;
        let subprotocol = AiohttpServer::start(Mode::subprotocol("chat.v2"))
            .await
            .unwrap_or_else(|e| py_error(e));
        check_subprotocol(&subprotocol.url()).await;
        let headers = AiohttpServer::start(Mode::Headers)
            .await
            .unwrap_or_else(|e| py_error(e));
        check_headers(&headers.url()).await;
    })
    .await;
}

#[tokio::test]
async fn aiohttp_server_dies_with_its_handle() {
    bounded("aiohttp lifecycle", async {
        let server = AiohttpServer::start(Mode::Echo)
            .await
            .unwrap_or_else(|e| py_error(e));
        let port = server.port();
        drop(server);
        wait_refused(port).await;
    })
    .await;
}

// ---- nginx reverse proxy ----

#[tokio::test]
async fn nginx_proxies_websocket_upgrades() {
    bounded("nginx proxy", async {
        let upstream = RustServer::start(Mode::Headers).await.unwrap();
        let nginx = Nginx::start(upstream.port())
            .await
            .unwrap_or_else(|e| py_error(e));
        assert!(nginx.ws_url().starts_with("ws://127.0.0.1:"));
        assert!(nginx.wss_url().starts_with("wss://localhost:"));
        // The upstream reports what nginx forwarded: the upgrade headers it was
        // configured to send and the client's own.
        check_headers(&nginx.ws_url()).await;
        assert!(upstream.errors().is_empty(), "{:?}", upstream.errors());
        assert!(nginx.dir().join("nginx.conf").is_file());
    })
    .await;
}

#[tokio::test]
async fn nginx_proxies_8_mib_and_dies_with_its_handle() {
    bounded("nginx echo and lifecycle", async {
        let upstream = RustServer::echo().await.unwrap();
        let nginx = Nginx::start(upstream.port())
            .await
            .unwrap_or_else(|e| py_error(e));
        let (http, https, dir) = (
            nginx.http_port(),
            nginx.https_port(),
            nginx.dir().to_owned(),
        );
        check_echo(&nginx.ws_url()).await;
        let logs = nginx.logs();
        assert!(logs.contains("error.log"), "{logs}");
        drop(nginx);
        wait_refused(http).await;
        wait_refused(https).await;
        assert!(!dir.exists(), "{} left behind", dir.display());
    })
    .await;
}

#[tokio::test]
async fn nginx_startup_failure_reports_its_log() {
    bounded("nginx bad certificate", async {
        let upstream = RustServer::echo().await.unwrap();
        let mut options = wsfleet_testkit::NginxOptions::default();
        // A key that does not match: nginx refuses to start.
        options.cert = options.cert.with_file_name("ca.pem");
        let err = Nginx::start_with(upstream.port(), options)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("nginx exited while starting"), "{text}");
        assert!(text.contains("key values mismatch"), "{text}");
    })
    .await;
}
