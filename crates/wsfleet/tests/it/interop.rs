//! Interop with server implementations we did not write, each started on
//! loopback by the test itself (issue 5, "Interop with real servers on
//! loopback"): Python `websockets`, Node.js `ws`, aiohttp, and nginx as a
//! reverse proxy for `ws` and `wss` in front of an echo server.
//!
//! Every test runs the same [`exchange`]: the client offers permessage-deflate
//! (and, where the server compresses, once more asking for context takeover),
//! checks that it was negotiated exactly when the server offers it, echoes
//! short, Unicode, 64 KiB and 1 MiB messages one by one and then pipelined
//! (they must come back in order and unchanged), and closes cleanly.

use crate::tls::with_test_ca;
use wsfleet::proto::deflate::DeflateConfig;
use wsfleet::{CloseCode, Connection, ConnectionConfig, Message};
use wsfleet_testkit::{ServerOptions, bounded};

/// Whether the server offers permessage-deflate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    Offered,
    NotOffered,
}

fn deflate_on() -> ServerOptions {
    ServerOptions {
        deflate: true,
        ..ServerOptions::default()
    }
}

/// The short deadlines of the suite, offering permessage-deflate (defaults).
fn client_config() -> ConnectionConfig {
    crate::config().deflate(DeflateConfig::default())
}

/// [`client_config`], asking for context takeover both ways: the
/// compression contexts then live across messages.
fn takeover_config() -> ConnectionConfig {
    crate::config().deflate(DeflateConfig::default().with_context_takeover())
}

/// `len` bytes that do not compress (xorshift64).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

/// Exactly `len` bytes of UTF-8 text, mostly multi-byte characters.
fn unicode_text(len: usize) -> String {
    let mut text = String::with_capacity(len);
    for c in "héllo wörld ☃ 😀 𝄞 ελληνικά 日本語 عربى ".chars().cycle() {
        if text.len() + c.len_utf8() > len {
            break;
        }
        text.push(c);
    }
    while text.len() < len {
        text.push('.');
    }
    text
}

/// The messages echoed one by one.
fn one_by_one() -> Vec<Message> {
    vec![
        Message::text("hello"),
        Message::text("héllo wörld ☃ 😀 𝄞"),
        Message::text(""),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::binary(Vec::new()),
        Message::text(unicode_text(64 << 10)),
        Message::binary(noise(64 << 10, 1)),
        Message::binary(noise(1 << 20, 2)),
        Message::text(unicode_text(1 << 20)),
    ]
}

/// The messages sent back to back before reading any echo.
fn pipelined() -> Vec<Message> {
    let mut messages: Vec<Message> = (0..200u32)
        .map(|i| {
            if i % 2 == 0 {
                Message::text(format!("message {i}"))
            } else {
                Message::text(format!("сообщение {i} ☃"))
            }
        })
        .collect();
    for i in 0..4 {
        messages.insert(50 * i + 25, Message::text(unicode_text((64 << 10) - i)));
    }
    messages
}

fn describe(message: &Message) -> String {
    match message.as_text() {
        Some(text) => format!("text of {} bytes", text.len()),
        None => format!("binary of {} bytes", message.len()),
    }
}

async fn recv_echo(conn: &mut Connection, url: &str, sent: &Message, index: usize) {
    let back = bounded("recv an echo", conn.recv())
        .await
        .unwrap_or_else(|| panic!("{url}: connection ended before echo #{index}"))
        .unwrap_or_else(|e| panic!("{url}: receiving echo #{index}: {e}"));
    assert!(
        back == *sent,
        "{url}: echo #{index} differs: sent {}, got {}",
        describe(sent),
        describe(&back)
    );
}

/// [`exchange`] with the default offer and, where the server compresses, once
/// more with context takeover.
async fn exchanges(url: &str, compression: Compression, tls: bool) {
    let mut configs = vec![client_config()];
    if compression == Compression::Offered {
        configs.push(takeover_config());
    }
    for config in configs {
        let config = if tls { with_test_ca(config) } else { config };
        exchange(url, &config, compression).await;
    }
}

/// Connects to `url`, checks compression, echoes [`one_by_one`] and
/// [`pipelined`] in order, closes cleanly.
async fn exchange(url: &str, config: &ConnectionConfig, compression: Compression) {
    let mut conn = bounded("connect", Connection::connect(url, config))
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    assert_eq!(
        conn.deflate().is_some(),
        compression == Compression::Offered,
        "{url}: permessage-deflate negotiated: {:?}",
        conn.deflate()
    );

    let mut payload = 0usize;
    for (index, message) in one_by_one().into_iter().enumerate() {
        payload += message.len();
        bounded("send", conn.send(message.clone()))
            .await
            .unwrap_or_else(|e| panic!("{url}: sending #{index}: {e}"));
        recv_echo(&mut conn, url, &message, index).await;
    }

    let batch = pipelined();
    for message in &batch {
        payload += message.len();
        bounded("send", conn.send(message.clone()))
            .await
            .unwrap_or_else(|e| panic!("{url}: pipelined send: {e}"));
    }
    for (index, message) in batch.iter().enumerate() {
        recv_echo(&mut conn, url, message, index).await;
    }

    let stats = conn.stats();
    assert_eq!(
        stats.msgs_in,
        (one_by_one().len() + batch.len()) as u64,
        "{url}"
    );
    if compression == Compression::Offered {
        // Two thirds of the payload compresses well: both directions must show it.
        let bound = (payload * 3 / 4) as u64;
        assert!(
            stats.bytes_in < bound && stats.bytes_out < bound,
            "{url}: {} bytes in, {} bytes out for {payload} bytes of payload each way: \
             not compressed?",
            stats.bytes_in,
            stats.bytes_out
        );
    }

    bounded("close", conn.close(CloseCode::NORMAL, ""))
        .await
        .unwrap_or_else(|e| panic!("{url}: clean close: {e}"));
    assert!(
        bounded("recv after close", conn.recv()).await.is_none(),
        "{url}: a message after the close"
    );
}

mod python_websockets {
    use wsfleet_testkit::{Mode, PyServer};

    use super::{Compression, deflate_on, exchanges};

    #[tokio::test]
    async fn without_compression() {
        let server = PyServer::start(Mode::Echo)
            .await
            .expect("start the Python websockets server");
        exchanges(&server.url(), Compression::NotOffered, false).await;
    }

    #[tokio::test]
    async fn with_compression() {
        let server = PyServer::start_with(Mode::Echo, deflate_on())
            .await
            .expect("start the Python websockets server");
        exchanges(&server.url(), Compression::Offered, false).await;
    }
}

mod node_ws {
    use wsfleet_testkit::{Mode, NodeServer};

    use super::{Compression, deflate_on, exchanges};

    #[tokio::test]
    async fn without_compression() {
        let server = NodeServer::start(Mode::Echo)
            .await
            .expect("start the Node.js ws server");
        exchanges(&server.url(), Compression::NotOffered, false).await;
    }

    /// `ws` compresses every message, even empty ones (threshold 0).
    #[tokio::test]
    async fn with_compression() {
        let server = NodeServer::start_with(Mode::Echo, deflate_on())
            .await
            .expect("start the Node.js ws server");
        exchanges(&server.url(), Compression::Offered, false).await;
    }
}

mod aiohttp {
    use wsfleet_testkit::{AiohttpServer, Mode};

    use super::{Compression, deflate_on, exchanges};

    #[tokio::test]
    async fn without_compression() {
        let server = AiohttpServer::start(Mode::Echo)
            .await
            .expect("start the aiohttp server");
        exchanges(&server.url(), Compression::NotOffered, false).await;
    }

    #[tokio::test]
    async fn with_compression() {
        let server = AiohttpServer::start_with(Mode::Echo, deflate_on())
            .await
            .expect("start the aiohttp server");
        exchanges(&server.url(), Compression::Offered, false).await;
    }
}

/// nginx proxies the upgrade (and `Sec-WebSocket-Extensions` with it) to the
/// upstream, then tunnels bytes: compression is negotiated end to end.
mod nginx {
    use wsfleet::serve::EchoServer;
    use wsfleet_testkit::{Mode, Nginx, PyServer};

    use super::{Compression, deflate_on, exchanges};

    async fn wsfleet_echo() -> EchoServer {
        EchoServer::bind("127.0.0.1:0", crate::config())
            .await
            .expect("bind wsfleet's echo server")
    }

    #[tokio::test]
    async fn ws_to_wsfleet_echo() {
        let upstream = wsfleet_echo().await;
        let nginx = Nginx::start(upstream.local_addr().port())
            .await
            .expect("start nginx");
        exchanges(&nginx.ws_url(), Compression::NotOffered, false).await;
    }

    #[tokio::test]
    async fn wss_to_wsfleet_echo() {
        let upstream = wsfleet_echo().await;
        let nginx = Nginx::start(upstream.local_addr().port())
            .await
            .expect("start nginx");
        exchanges(&nginx.wss_url(), Compression::NotOffered, true).await;
    }

    #[tokio::test]
    async fn wss_to_python_websockets_with_compression() {
        let upstream = PyServer::start_with(Mode::Echo, deflate_on())
            .await
            .expect("start the Python websockets server");
        let nginx = Nginx::start(upstream.port()).await.expect("start nginx");
        exchanges(&nginx.wss_url(), Compression::Offered, true).await;
    }
}

/// The peer-agnostic suite of `peers.rs`, mounted for the peers added here
/// (STYLE 2.7: write the suites once, mount them per peer).
macro_rules! peer_suite {
    ($name:ident, $echo:expr, $close:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use wsfleet_testkit::{AiohttpServer, Mode, NodeServer};

            use crate::peers;

            #[tokio::test]
            async fn text_binary_and_unicode() {
                let server = $echo;
                peers::text_binary_and_unicode(&server.url()).await;
            }

            #[tokio::test]
            async fn sizes_across_length_encodings() {
                let server = $echo;
                peers::sizes_across_length_encodings(&server.url()).await;
            }

            #[tokio::test]
            async fn sixteen_mib_message() {
                let server = $echo;
                peers::sixteen_mib_message(&server.url()).await;
            }

            #[tokio::test]
            async fn many_messages_in_order() {
                let server = $echo;
                peers::many_messages_in_order(&server.url()).await;
            }

            #[tokio::test]
            async fn keepalive_pings_are_answered() {
                let server = $echo;
                peers::keepalive_pings_are_answered(&server.url()).await;
            }

            #[tokio::test]
            async fn peer_close_code_is_reported() {
                let server = $close;
                peers::peer_close_code_is_reported(&server.url()).await;
            }
        }
    };
}

peer_suite!(
    node_ws_suite,
    NodeServer::start(Mode::Echo)
        .await
        .expect("start the Node.js ws server"),
    NodeServer::start(Mode::close(4000, "bye"))
        .await
        .expect("start the Node.js ws server")
);

peer_suite!(
    aiohttp_suite,
    AiohttpServer::start(Mode::Echo)
        .await
        .expect("start the aiohttp server"),
    AiohttpServer::start(Mode::close(4000, "bye"))
        .await
        .expect("start the aiohttp server")
);
