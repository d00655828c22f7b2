//! Peers that lie, stall, trickle and send junk: each failure ends only the
//! connection, with a typed error, the right close code and bounded memory.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use wsfleet::connect::{ConnectErrorKind, Deadlines, Phase};
use wsfleet::proto::frame::OpCode;
use wsfleet::proto::{HandshakeError, ProtocolError};
use wsfleet::{Connection, Error, Message};
use wsfleet_testkit::bounded;

use crate::script::{ScriptServer, frame, read_until_close};
use crate::{config, fast_keepalive};

async fn connect(url: &str) -> Connection {
    bounded("connect", Connection::connect(url, &config()))
        .await
        .expect("connect")
}

#[tokio::test]
async fn lying_length_header_is_refused_at_the_header() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let server = ScriptServer::start(true, |mut tcp| async move {
        let mut header = vec![0x82, 127];
        header.extend_from_slice(&(1u64 << 62).to_be_bytes());
        tcp.write_all(&header).await.unwrap();
        tcp.write_all(&[0u8; 1000]).await.unwrap();
        let _ = tx.send(read_until_close(&mut tcp).await.0);
    })
    .await;
    let mut conn = connect(&server.url()).await;
    match bounded("recv", conn.recv()).await {
        Some(Err(Error::Protocol(ProtocolError::FrameTooLarge { len, .. }))) => {
            assert_eq!(len, 1 << 62)
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert!(conn.stats().peak_buffered_bytes <= 2 * wsfleet::Limits::default().read_chunk);
    assert_eq!(bounded("close code", rx).await.unwrap(), Some(1009));
}

/// A peer that sends its close frame and then resets TCP (SO_LINGER 0), as
/// ejabberd's close often ends: once that close frame has arrived, a reset
/// while we answer it or wait for the end of TCP is still a clean close with
/// the peer's code. Many rounds, so the race shows whichever way it goes.
#[tokio::test]
async fn a_close_frame_followed_by_a_reset_is_a_clean_close() {
    let mut close = 1001u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    for round in 0..50 {
        // The peer closes first.
        let close_frame = frame(true, OpCode::Close, &close);
        let server = ScriptServer::start(true, |tcp| async move {
            tcp.set_zero_linger().expect("SO_LINGER 0");
            let mut tcp = tcp;
            tcp.write_all(&close_frame).await.expect("write close");
            drop(tcp);
        })
        .await;
        let mut conn = connect(&server.url()).await;
        if let Some(other) = bounded("recv", conn.recv()).await {
            panic!("round {round}, peer's close: expected a clean end, got {other:?}");
        }
        let frame_code = conn.close_frame().map(|f| f.code.as_u16());
        assert_eq!(frame_code, Some(1001), "round {round}");

        // We close first; the peer answers and resets.
        let close_frame = frame(true, OpCode::Close, &close);
        let server = ScriptServer::start(true, |tcp| async move {
            tcp.set_zero_linger().expect("SO_LINGER 0");
            let mut tcp = tcp;
            read_until_close(&mut tcp).await;
            tcp.write_all(&close_frame).await.expect("write close");
            drop(tcp);
        })
        .await;
        let mut conn = connect(&server.url()).await;
        let closed = bounded("close", conn.close(wsfleet::CloseCode::NORMAL, "")).await;
        assert!(closed.is_ok(), "round {round}, our close: {closed:?}");
    }
}

#[tokio::test]
async fn fragmented_message_with_interleaved_ping() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let server = ScriptServer::start(true, |mut tcp| async move {
        let mut wire = frame(false, OpCode::Text, "Hél".as_bytes());
        wire.extend(frame(true, OpCode::Ping, b"are you there"));
        wire.extend(frame(false, OpCode::Continuation, &[]));
        wire.extend(frame(true, OpCode::Continuation, "lo ☃".as_bytes()));
        // Byte by byte, to cross every boundary on the real socket.
        for b in wire {
            tcp.write_all(&[b]).await.unwrap();
        }
        tcp.write_all(&frame(true, OpCode::Close, &1000u16.to_be_bytes()))
            .await
            .unwrap();
        let _ = tx.send(read_until_close(&mut tcp).await);
    })
    .await;
    let mut conn = connect(&server.url()).await;
    let m = bounded("recv", conn.recv())
        .await
        .expect("ended")
        .expect("recv");
    assert_eq!(m, Message::text("Héllo ☃"));
    assert!(bounded("recv", conn.recv()).await.is_none());
    let (code, pongs) = bounded("peer", rx).await.unwrap();
    assert_eq!(code, Some(1000), "close echoed");
    assert_eq!(pongs, vec![b"are you there".to_vec()]);
}

#[tokio::test]
async fn invalid_utf8_is_closed_with_1007() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let server = ScriptServer::start(true, |mut tcp| async move {
        tcp.write_all(&frame(true, OpCode::Text, &[b'o', b'k', 0xC0, 0x80]))
            .await
            .unwrap();
        let _ = tx.send(read_until_close(&mut tcp).await.0);
    })
    .await;
    let mut conn = connect(&server.url()).await;
    match bounded("recv", conn.recv()).await {
        Some(Err(Error::Protocol(ProtocolError::InvalidUtf8))) => {}
        other => panic!("expected InvalidUtf8, got {other:?}"),
    }
    assert_eq!(bounded("close code", rx).await.unwrap(), Some(1007));
}

#[tokio::test]
async fn junk_after_handshake_is_a_protocol_error() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let server = ScriptServer::start(true, |mut tcp| async move {
        tcp.write_all(b"\xff\xfe this is not a websocket frame")
            .await
            .unwrap();
        let _ = tx.send(read_until_close(&mut tcp).await.0);
    })
    .await;
    let mut conn = connect(&server.url()).await;
    assert!(matches!(
        bounded("recv", conn.recv()).await,
        Some(Err(Error::Protocol(_)))
    ));
    assert_eq!(bounded("close code", rx).await.unwrap(), Some(1002));
}

#[tokio::test]
async fn a_ping_burst_past_the_limit_is_closed_with_1008() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let server = ScriptServer::start(true, |mut tcp| async move {
        let burst: Vec<u8> = (0..150)
            .flat_map(|_| frame(true, OpCode::Ping, b"flood"))
            .collect();
        tcp.write_all(&burst).await.unwrap();
        let _ = tx.send(read_until_close(&mut tcp).await);
    })
    .await;
    let mut conn = connect(&server.url()).await;
    match bounded("recv", conn.recv()).await {
        Some(Err(Error::PingFlood {
            pings: 101,
            limit: 100,
        })) => {}
        other => panic!("expected a ping flood, got {other:?}"),
    }
    let (code, pongs) = bounded("close code", rx).await.unwrap();
    assert_eq!(code, Some(1008));
    // Pings up to the limit were answered (newest wins, so maybe not each);
    // none past the one that ended the connection.
    assert!(
        (1..=101).contains(&pongs.len()),
        "{} pongs for 101 pings read",
        pongs.len()
    );
}

#[tokio::test]
async fn pings_at_a_keepalive_rate_are_answered() {
    let server = ScriptServer::start(true, |mut tcp| async move {
        // 60 pings a second for two seconds: over the limit in total, not
        // within any second.
        for i in 0..120u32 {
            tcp.write_all(&frame(true, OpCode::Ping, &i.to_be_bytes()))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_micros(16_700)).await;
        }
        tcp.write_all(&frame(true, OpCode::Text, b"still here"))
            .await
            .unwrap();
        let _ = read_until_close(&mut tcp).await;
    })
    .await;
    let mut conn = connect(&server.url()).await;
    match bounded("recv", conn.recv()).await {
        Some(Ok(m)) => assert_eq!(m.as_text(), Some("still here")),
        other => panic!("expected the message, got {other:?}"),
    }
    assert!(conn.stats().bytes_out > 0, "pongs were written");
}

#[tokio::test]
async fn partial_frame_then_silence_is_detected() {
    let server = ScriptServer::start(true, |mut tcp| async move {
        let mut wire = frame(true, OpCode::Binary, &[7u8; 100]);
        wire.truncate(20);
        tcp.write_all(&wire).await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let cfg = config().keepalive(fast_keepalive());
    let mut conn = bounded("connect", Connection::connect(&server.url(), &cfg))
        .await
        .expect("connect");
    match bounded("recv", conn.recv()).await {
        Some(Err(Error::PongTimeout(_))) => {}
        other => panic!("expected a pong timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn eof_in_the_middle_of_a_message_is_abnormal() {
    let server = ScriptServer::start(true, |mut tcp| async move {
        tcp.write_all(&frame(false, OpCode::Binary, b"first half"))
            .await
            .unwrap();
        // Dropping the socket ends TCP without a close frame.
    })
    .await;
    let mut conn = connect(&server.url()).await;
    match bounded("recv", conn.recv()).await {
        Some(Err(Error::AbnormalClosure { mid_message: true })) => {}
        other => panic!("expected an abnormal closure mid-message, got {other:?}"),
    }
    assert!(conn.recv().await.is_none(), "nothing after the end");
}

#[tokio::test]
async fn stalled_handshake_times_out_in_the_handshake_phase() {
    let server = ScriptServer::start(false, |tcp| async move {
        let _open = tcp;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let cfg = config().deadlines(Deadlines::default().with_handshake(Duration::from_millis(300)));
    let err = bounded("connect", Connection::connect(&server.url(), &cfg))
        .await
        .unwrap_err();
    assert_eq!(err.phase(), Phase::Handshake);
    assert!(err.is_timeout(), "{err}");
}

#[tokio::test]
async fn busy_server_status_and_retry_after_are_reported() {
    let server = ScriptServer::start(false, |mut tcp| async move {
        let mut buf = [0u8; 2048];
        let _ = tokio::io::AsyncReadExt::read(&mut tcp, &mut buf).await;
        tcp.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n",
        )
        .await
        .unwrap();
    })
    .await;
    let err = bounded("connect", Connection::connect(&server.url(), &config()))
        .await
        .unwrap_err();
    assert_eq!(err.phase(), Phase::Handshake);
    match err.kind() {
        ConnectErrorKind::Handshake(HandshakeError::Status {
            status: 503,
            retry_after,
            ..
        }) => {
            assert_eq!(retry_after.as_deref(), Some("7"));
        }
        other => panic!("expected a 503 status, got {other:?}"),
    }
    assert!(crate::report(&err).contains("503"), "{err}");
}

#[tokio::test]
async fn endless_handshake_headers_hit_the_byte_limit() {
    let server = ScriptServer::start(false, |mut tcp| async move {
        let mut buf = [0u8; 2048];
        let _ = tokio::io::AsyncReadExt::read(&mut tcp, &mut buf).await;
        let _ = tcp.write_all(b"HTTP/1.1 101 Switching Protocols\r\n").await;
        for _ in 0..100_000 {
            let line = format!("X-Junk: {}\r\n", "a".repeat(1000));
            if tcp.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let err = bounded("connect", Connection::connect(&server.url(), &config()))
        .await
        .unwrap_err();
    match err.kind() {
        ConnectErrorKind::Handshake(HandshakeError::TooLarge { max, .. }) => {
            assert_eq!(*max, 16 * 1024)
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

/// Reads what the client sends for as long as the test runs, never closing
/// the socket and never answering a close: counts the client's close frames.
async fn count_closes_and_stall(
    mut tcp: tokio::net::TcpStream,
    closes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::AsyncReadExt;
    let mut server = wsfleet::proto::Protocol::server(wsfleet::Limits::default());
    let mut chunk = [0u8; 4096];
    loop {
        let n = tcp.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            // Keep our end open: a stalled peer does not end TCP.
            tokio::time::sleep(Duration::from_secs(30)).await;
            return;
        }
        // After the client's close, a server machine refuses more input:
        // count close frames on the raw bytes too (opcode 0x8, FIN set).
        let _ = server.feed(&chunk[..n]);
        while let Ok(Some(event)) = server.poll_event() {
            if matches!(event, wsfleet::proto::Event::Close(_)) {
                closes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }
}

/// Calls `recv()` under a short timeout again and again (each call's future
/// dropped when it fires), as a `select!` loop does, until one call returns.
/// The outcome and when it came.
async fn recv_with_cancellations(
    conn: &mut Connection,
    every: Duration,
) -> (Option<Result<Message, Error>>, std::time::Instant) {
    bounded("recv ends despite cancellations", async {
        loop {
            if let Ok(result) = tokio::time::timeout(every, conn.recv()).await {
                return (result, std::time::Instant::now());
            }
        }
    })
    .await
}

/// Issue 7: a `recv()` dropped during the close handshake (here every
/// 300 ms, with a 2 s close deadline) must resume the close where it
/// stopped: the deadline counts from when the close began, and a single
/// close frame goes out.
#[tokio::test]
async fn cancelled_recv_resumes_a_close_the_peer_began() {
    let closes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = closes.clone();
    let server = ScriptServer::start(true, |mut tcp| async move {
        // The peer closes, then never ends TCP.
        tcp.write_all(&frame(true, OpCode::Close, &1000u16.to_be_bytes()))
            .await
            .unwrap();
        count_closes_and_stall(tcp, counter).await;
    })
    .await;
    let mut conn = connect(&server.url()).await;
    let began = std::time::Instant::now();
    let (result, ended) = recv_with_cancellations(&mut conn, Duration::from_millis(300)).await;
    let took = ended - began;
    assert!(
        matches!(result, Some(Err(Error::CloseTimeout(_)))),
        "{result:?}"
    );
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_millis(3000),
        "the 2 s close deadline counts from the close, took {took:?}"
    );
    assert_eq!(conn.close_frame().map(|f| f.code.as_u16()), Some(1000));
    assert!(bounded("after the end", conn.recv()).await.is_none());
    assert_eq!(closes.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// Issue 7: after a protocol error the close (1002) is under way; a
/// cancelled `recv()` must not lose the error, restart the deadline or send
/// a second close frame.
#[tokio::test]
async fn cancelled_recv_resumes_the_close_after_a_protocol_error() {
    let closes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = closes.clone();
    let server = ScriptServer::start(true, |mut tcp| async move {
        tcp.write_all(b"\xff\xfe junk that is no frame")
            .await
            .unwrap();
        count_closes_and_stall(tcp, counter).await;
    })
    .await;
    let mut conn = connect(&server.url()).await;
    let began = std::time::Instant::now();
    let (result, ended) = recv_with_cancellations(&mut conn, Duration::from_millis(300)).await;
    let took = ended - began;
    assert!(
        matches!(result, Some(Err(Error::Protocol(_)))),
        "{result:?}"
    );
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_millis(3000),
        "the 2 s close deadline counts from the error, took {took:?}"
    );
    assert!(bounded("after the end", conn.recv()).await.is_none());
    assert_eq!(closes.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// Issue 7: a close we began (`begin_close`) against a peer that never
/// answers ends at the close deadline however often `recv()` is cancelled.
#[tokio::test]
async fn cancelled_recv_keeps_the_deadline_of_a_close_we_began() {
    let closes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = closes.clone();
    let server = ScriptServer::start(true, |tcp| async move {
        count_closes_and_stall(tcp, counter).await;
    })
    .await;
    let mut conn = connect(&server.url()).await;
    let began = std::time::Instant::now();
    conn.begin_close(wsfleet::proto::CloseCode::NORMAL, "bye")
        .expect("begin close");
    let (result, ended) = recv_with_cancellations(&mut conn, Duration::from_millis(300)).await;
    let took = ended - began;
    assert!(
        matches!(result, Some(Err(Error::CloseTimeout(_)))),
        "{result:?}"
    );
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_millis(3000),
        "took {took:?}"
    );
    assert!(bounded("after the end", conn.recv()).await.is_none());
    assert_eq!(closes.load(std::sync::atomic::Ordering::SeqCst), 1);
}
