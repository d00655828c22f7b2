//! What a real exchange leaves in a connection's buffers: small messages
//! keep small buffers, and a quiet connection holds none.

use std::time::Duration;

use wsfleet::serve::EchoServer;
use wsfleet::{Connection, Message};
use wsfleet_testkit::bounded;

async fn echo_server() -> EchoServer {
    EchoServer::bind("127.0.0.1:0", crate::config())
        .await
        .expect("bind wsfleet's echo server")
}

async fn round_trip(conn: &mut Connection, message: Message) {
    bounded("send", conn.send(message.clone()))
        .await
        .expect("send");
    let back = bounded("recv", conn.recv())
        .await
        .expect("connection ended")
        .expect("recv");
    assert!(back == message, "echo differs");
}

/// 32-byte messages are read through the stack: the read buffer kept is of
/// their size, not a 4 KiB read chunk, which at 10,000 busy connections is
/// the difference between tens of megabytes and a few.
#[tokio::test]
async fn small_messages_keep_small_buffers() {
    let server = echo_server().await;
    let url = format!("ws://{}/", server.local_addr());
    let mut conn = bounded("connect", Connection::connect(&url, &crate::config()))
        .await
        .expect("connect");
    let text = "x".repeat(32);
    for _ in 0..100 {
        round_trip(&mut conn, Message::text(text.clone())).await;
        let held = conn.stats().buffered_bytes;
        assert!(held <= 512, "{held} bytes buffered after a 32-byte echo");
    }
    // A larger message still grows the buffer as it needs.
    round_trip(&mut conn, Message::binary(vec![1u8; 100_000])).await;
    assert!(conn.stats().peak_buffered_bytes >= 100_000);
}

/// Once nothing has arrived for a while, the buffers are freed, while the
/// connection stays open and usable.
#[tokio::test]
async fn a_quiet_connection_frees_its_buffers() {
    let server = echo_server().await;
    let url = format!("ws://{}/", server.local_addr());
    let mut conn = bounded("connect", Connection::connect(&url, &crate::config()))
        .await
        .expect("connect");
    round_trip(&mut conn, Message::binary(vec![2u8; 200_000])).await;
    assert!(conn.stats().buffered_bytes >= 200_000);
    // recv is cancel-safe: waiting in it drives the release timer.
    let waited = tokio::time::timeout(Duration::from_millis(600), conn.recv()).await;
    assert!(waited.is_err(), "nothing should arrive: {waited:?}");
    assert_eq!(conn.stats().buffered_bytes, 0);
    round_trip(&mut conn, Message::text("still open")).await;
}
