//! One peer-agnostic suite, mounted once per real server implementation.

use std::time::Duration;

use wsfleet::{CloseCode, Connection, ConnectionConfig, Message};
use wsfleet_testkit::bounded;

use crate::{config, fast_keepalive};

pub(crate) async fn connect(url: &str) -> Connection {
    bounded("connect", Connection::connect(url, &config()))
        .await
        .expect("connect")
}

/// Connects to `url` with `config`, echoes each of `messages` once and
/// closes cleanly; `context` (logs of the peer, say) goes into a failed
/// connect's panic message.
pub(crate) async fn echo_and_close(
    url: &str,
    config: &ConnectionConfig,
    messages: Vec<Message>,
    context: impl FnOnce() -> String,
) {
    let mut conn = match bounded("connect", Connection::connect(url, config)).await {
        Ok(conn) => conn,
        Err(e) => panic!("connect to {url}: {e}; {}", context()),
    };
    for message in messages {
        round_trip(&mut conn, message).await;
    }
    bounded("close", conn.close(CloseCode::NORMAL, ""))
        .await
        .expect("clean close");
}

pub(crate) async fn round_trip(conn: &mut Connection, message: Message) {
    bounded("send", conn.send(message.clone()))
        .await
        .expect("send");
    let back = bounded("recv", conn.recv())
        .await
        .expect("connection ended")
        .expect("recv");
    assert_eq!(back.len(), message.len());
    assert!(back == message, "echo differs ({} bytes)", message.len());
}

pub(crate) async fn text_binary_and_unicode(url: &str) {
    let mut conn = connect(url).await;
    round_trip(&mut conn, Message::text("hello")).await;
    round_trip(&mut conn, Message::text("héllo wörld ☃ 😀 𝄞")).await;
    round_trip(&mut conn, Message::text("")).await;
    round_trip(&mut conn, Message::binary(vec![0u8, 1, 2, 255])).await;
    round_trip(&mut conn, Message::binary(Vec::new())).await;
    bounded("close", conn.close(CloseCode::NORMAL, "done"))
        .await
        .expect("clean close");
}

pub(crate) async fn sizes_across_length_encodings(url: &str) {
    let mut conn = connect(url).await;
    for len in [125usize, 126, 127, 65_535, 65_536, 1 << 20] {
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        round_trip(&mut conn, Message::binary(payload)).await;
    }
    bounded("close", conn.close(CloseCode::NORMAL, ""))
        .await
        .expect("clean close");
}

pub(crate) async fn sixteen_mib_message(url: &str) {
    let mut conn = connect(url).await;
    let payload: Vec<u8> = (0..16usize << 20).map(|i| (i % 253) as u8).collect();
    round_trip(&mut conn, Message::binary(payload)).await;
    let text = "0123456789abcdef".repeat(1 << 20);
    round_trip(&mut conn, Message::text(text)).await;
    bounded("close", conn.close(CloseCode::NORMAL, ""))
        .await
        .expect("clean close");
    assert!(conn.stats().peak_buffered_bytes >= 16 << 20);
    assert_eq!(conn.stats().buffered_bytes, 0);
}

pub(crate) async fn many_messages_in_order(url: &str) {
    let mut conn = connect(url).await;
    for i in 0..1000u32 {
        conn.send(Message::text(i.to_string())).await.expect("send");
    }
    for i in 0..1000u32 {
        let m = bounded("recv", conn.recv())
            .await
            .expect("ended")
            .expect("recv");
        assert_eq!(m.as_text(), Some(i.to_string().as_str()));
    }
    assert_eq!(conn.stats().msgs_in, 1000);
    bounded("close", conn.close(CloseCode::NORMAL, ""))
        .await
        .expect("clean close");
}

pub(crate) async fn keepalive_pings_are_answered(url: &str) {
    let cfg = config().keepalive(fast_keepalive());
    let mut conn = bounded("connect", Connection::connect(url, &cfg))
        .await
        .expect("connect");
    // Idle for several ping intervals: the peer answers, nothing fails.
    let idle = tokio::time::timeout(Duration::from_millis(1500), conn.recv()).await;
    assert!(idle.is_err(), "connection ended while idle: {idle:?}");
    round_trip(&mut conn, Message::text("still here")).await;
    bounded("close", conn.close(CloseCode::NORMAL, ""))
        .await
        .expect("clean close");
}

pub(crate) async fn peer_close_code_is_reported(url: &str) {
    let mut conn = connect(url).await;
    assert!(
        bounded("recv", conn.recv()).await.is_none(),
        "expected a clean close"
    );
    let frame = conn.close_frame().expect("peer close frame");
    assert_eq!(
        (frame.code, frame.reason.as_str()),
        (CloseCode::from(4000), "bye")
    );
}

macro_rules! suite {
    ($name:ident, $echo:expr, $close:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use wsfleet_testkit::{Mode, PyServer, RustServer};

            #[tokio::test]
            async fn text_binary_and_unicode() {
                let server = $echo;
                super::text_binary_and_unicode(&server.url()).await;
            }

            #[tokio::test]
            async fn sizes_across_length_encodings() {
                let server = $echo;
                super::sizes_across_length_encodings(&server.url()).await;
            }

            #[tokio::test]
            async fn sixteen_mib_message() {
                let server = $echo;
                super::sixteen_mib_message(&server.url()).await;
            }

            #[tokio::test]
            async fn many_messages_in_order() {
                let server = $echo;
                super::many_messages_in_order(&server.url()).await;
            }

            #[tokio::test]
            async fn keepalive_pings_are_answered() {
                let server = $echo;
                super::keepalive_pings_are_answered(&server.url()).await;
            }

            #[tokio::test]
            async fn peer_close_code_is_reported() {
                let server = $close;
                super::peer_close_code_is_reported(&server.url()).await;
            }
        }
    };
}

suite!(
    python_websockets,
    PyServer::start(Mode::Echo)
        .await
        .expect("start the Python websockets server"),
    PyServer::start(Mode::close(4000, "bye"))
        .await
        .expect("start the Python websockets server")
);

suite!(
    rust_tungstenite,
    RustServer::start(Mode::Echo)
        .await
        .expect("start the Rust server"),
    RustServer::start(Mode::close(4000, "bye"))
        .await
        .expect("start the Rust server")
);

mod wsfleet_echo {
    use wsfleet::serve::EchoServer;

    async fn server() -> EchoServer {
        EchoServer::bind("127.0.0.1:0", crate::config())
            .await
            .expect("bind")
    }

    #[tokio::test]
    async fn text_binary_and_unicode() {
        super::text_binary_and_unicode(&server().await.url()).await;
    }

    #[tokio::test]
    async fn sixteen_mib_message() {
        super::sixteen_mib_message(&server().await.url()).await;
    }

    #[tokio::test]
    async fn many_messages_in_order() {
        super::many_messages_in_order(&server().await.url()).await;
    }

    #[tokio::test]
    async fn shutdown_closes_clients_with_going_away() {
        let server = server().await;
        let mut conn = super::connect(&server.url()).await;
        super::round_trip(&mut conn, wsfleet::Message::text("before")).await;
        let stop = tokio::spawn(server.shutdown(std::time::Duration::from_secs(2)));
        assert!(
            wsfleet_testkit::bounded("recv", conn.recv())
                .await
                .is_none()
        );
        assert_eq!(
            conn.close_frame().map(|f| f.code),
            Some(wsfleet::CloseCode::GOING_AWAY)
        );
        stop.await.expect("shutdown");
    }
}

mod python_specific {
    use wsfleet::{Connection, Error, Message};
    use wsfleet_testkit::{Mode, PyServer, bounded};

    use crate::{config, fast_keepalive};

    #[tokio::test]
    async fn silent_peer_is_detected_by_keepalive() {
        let server = PyServer::start(Mode::Silent).await.expect("start");
        let cfg = config().keepalive(fast_keepalive());
        let mut conn = bounded("connect", Connection::connect(&server.url(), &cfg))
            .await
            .expect("connect");
        let started = std::time::Instant::now();
        match bounded("recv", conn.recv()).await {
            Some(Err(Error::PongTimeout(_))) => {}
            other => panic!("expected a pong timeout, got {other:?}"),
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(3));
    }

    #[tokio::test]
    async fn invalid_close_code_from_peer_is_a_protocol_error() {
        let server = PyServer::start(Mode::close(1005, "")).await.expect("start");
        let mut conn = bounded("connect", Connection::connect(&server.url(), &config()))
            .await
            .expect("connect");
        match bounded("recv", conn.recv()).await {
            Some(Err(Error::Protocol(e))) => assert_eq!(e.close_code().as_u16(), 1002),
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn subprotocol_is_negotiated() {
        let server = PyServer::start(Mode::subprotocol("chat.v2"))
            .await
            .expect("start");
        let cfg = config().protocol("chat.v1").protocol("chat.v2");
        let conn = bounded("connect", Connection::connect(&server.url(), &cfg))
            .await
            .expect("connect");
        assert_eq!(conn.protocol(), Some("chat.v2"));
    }

    #[tokio::test]
    async fn extra_headers_and_origin_reach_the_server() {
        let server = PyServer::start(Mode::Headers).await.expect("start");
        let cfg = config()
            .header("X-Token", "abc 123")
            .origin("http://localhost");
        let mut conn = bounded("connect", Connection::connect(&server.url(), &cfg))
            .await
            .expect("connect");
        let first = bounded("recv", conn.recv())
            .await
            .expect("ended")
            .expect("recv");
        let headers: serde_json::Value =
            serde_json::from_str(first.as_text().expect("text")).expect("json");
        assert_eq!(headers["x-token"], "abc 123");
        assert_eq!(headers["origin"], "http://localhost");
        super::round_trip(&mut conn, Message::text("after headers")).await;
    }
}

mod python_deflate {
    use wsfleet::proto::deflate::DeflateConfig;
    use wsfleet::{CloseCode, Connection, Message};
    use wsfleet_testkit::{Mode, PyOptions, PyServer, bounded};

    #[tokio::test]
    async fn compression_is_negotiated_and_round_trips() {
        let options = PyOptions {
            deflate: true,
            ..PyOptions::default()
        };
        let server = PyServer::start_with(Mode::Echo, options)
            .await
            .expect("start");
        for config in [
            DeflateConfig::default(),
            DeflateConfig::default().with_context_takeover(),
        ] {
            let cfg = crate::config().deflate(config);
            let mut conn = bounded("connect", Connection::connect(&server.url(), &cfg))
                .await
                .expect("connect");
            let params = *conn.deflate().expect("deflate negotiated");
            assert_eq!(
                params.server_no_context_takeover,
                config.server_no_context_takeover
            );
            for message in [
                Message::text("short"),
                Message::text("héllo wörld ☃ ".repeat(5000)),
                Message::binary(vec![42u8; 1 << 20]),
                Message::binary(
                    (0..65_536u32)
                        .map(|i| (i * 7 % 251) as u8)
                        .collect::<Vec<u8>>(),
                ),
            ] {
                super::round_trip(&mut conn, message).await;
            }
            assert!(
                conn.stats().bytes_in < 200_000,
                "{} bytes read: compressed?",
                conn.stats().bytes_in
            );
            bounded("close", conn.close(CloseCode::NORMAL, ""))
                .await
                .expect("clean close");
        }
    }
}
