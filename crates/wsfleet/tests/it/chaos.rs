//! Each `ChaosServer` mode against one `Connection`: the failure is typed,
//! bounded in time and memory, and ends only that connection.

use std::time::Duration;

use wsfleet::connect::{ConnectErrorKind, Deadlines, Phase};
use wsfleet::proto::{HandshakeError, ProtocolError};
use wsfleet::serve::{ChaosMode, ChaosServer, ChaosSettings};
use wsfleet::{CloseCode, Connection, ConnectionConfig, Error, Limits, Message};
use wsfleet_testkit::bounded;

fn config() -> ConnectionConfig {
    crate::config()
        .keepalive(crate::fast_keepalive())
        .limits(
            Limits::default()
                .with_max_message(256 << 10)
                .with_max_frame_payload(256 << 10),
        )
        .deadlines(
            Deadlines::default()
                .with_handshake(Duration::from_millis(500))
                .with_close(Duration::from_millis(500)),
        )
}

async fn end_of(mode: ChaosMode) -> Result<Error, wsfleet::connect::ConnectError> {
    let server = ChaosServer::bind("127.0.0.1:0", mode).await.expect("bind");
    let mut conn = bounded("connect", Connection::connect(&server.url(), &config())).await?;
    let end = bounded("recv", async {
        loop {
            match conn.recv().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return e,
                None => panic!("{mode}: closed cleanly instead of failing"),
            }
        }
    })
    .await;
    assert!(
        conn.stats().peak_buffered_bytes <= 2 * (256 << 10) + (64 << 10),
        "{mode}: peak {} bytes",
        conn.stats().peak_buffered_bytes
    );
    Ok(end)
}

#[tokio::test]
async fn lying_length() {
    let e = end_of(ChaosMode::LyingLength).await.expect("connect");
    assert!(
        matches!(
            e.protocol_error(),
            Some(ProtocolError::FrameTooLarge { .. })
        ),
        "{e}"
    );
}

#[tokio::test]
async fn endless_fragments() {
    let e = end_of(ChaosMode::EndlessFragments).await.expect("connect");
    assert!(
        matches!(
            e.protocol_error(),
            Some(ProtocolError::MessageTooLarge { .. })
        ),
        "{e}"
    );
}

#[tokio::test]
async fn partial_then_silence_and_silent() {
    for mode in [ChaosMode::PartialThenSilence, ChaosMode::Silent] {
        let e = end_of(mode).await.expect("connect");
        assert!(matches!(e, Error::PongTimeout(_)), "{mode}: {e}");
    }
}

#[tokio::test]
async fn junk_and_invalid_utf8() {
    let e = end_of(ChaosMode::Junk).await.expect("connect");
    assert!(e.protocol_error().is_some(), "{e}");
    let e = end_of(ChaosMode::InvalidUtf8).await.expect("connect");
    assert_eq!(e.protocol_error(), Some(&ProtocolError::InvalidUtf8));
}

#[tokio::test]
async fn ping_flood_is_refused_within_a_second() {
    let server = ChaosServer::bind("127.0.0.1:0", ChaosMode::PingFlood)
        .await
        .expect("bind");
    let mut conn = bounded("connect", Connection::connect(&server.url(), &config()))
        .await
        .expect("connect");
    let started = std::time::Instant::now();
    let end = bounded("the flood to be refused", conn.recv()).await;
    match end {
        Some(Err(Error::PingFlood { pings, limit })) => {
            assert_eq!(limit, 100);
            assert_eq!(pings, 101);
        }
        other => panic!("expected a ping flood error, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let peak = conn.stats().peak_buffered_bytes;
    assert!(
        peak <= (1 << 20) + (64 << 10),
        "peak {peak} bytes under a ping flood"
    );
}

#[tokio::test]
async fn without_a_ping_limit_a_flood_is_answered_with_bounded_memory() {
    let server = ChaosServer::bind("127.0.0.1:0", ChaosMode::PingFlood)
        .await
        .expect("bind");
    let config = config().keepalive(wsfleet::Keepalive::default().with_peer_ping_limit(None));
    let mut conn = bounded("connect", Connection::connect(&server.url(), &config))
        .await
        .expect("connect");
    // Nothing but pings for a second: no message, no error.
    let quiet = tokio::time::timeout(Duration::from_secs(1), conn.recv()).await;
    assert!(quiet.is_err(), "flood ended the connection: {quiet:?}");
    let peak = conn.stats().peak_buffered_bytes;
    assert!(
        peak <= (1 << 20) + (64 << 10),
        "peak {peak} bytes under a ping flood"
    );
    assert!(conn.stats().bytes_out > 1000, "pongs were written");
}

#[tokio::test]
async fn handshake_modes_fail_in_the_handshake_phase() {
    for mode in [
        ChaosMode::StallHandshake,
        ChaosMode::EndlessHandshake,
        ChaosMode::Busy,
    ] {
        let err = end_of(mode).await.expect_err("handshake must fail");
        assert_eq!(err.phase(), Phase::Handshake, "{mode}: {err}");
        match (mode, err.kind()) {
            (ChaosMode::StallHandshake, ConnectErrorKind::Timeout(_)) => {}
            (
                ChaosMode::EndlessHandshake,
                ConnectErrorKind::Handshake(HandshakeError::TooLarge { .. }),
            ) => {}
            (
                ChaosMode::EndlessHandshake,
                ConnectErrorKind::Handshake(HandshakeError::TooManyHeaders { .. }),
            ) => {}
            (
                ChaosMode::Busy,
                ConnectErrorKind::Handshake(HandshakeError::Status {
                    status: 503,
                    retry_after,
                    ..
                }),
            ) => {
                assert_eq!(retry_after.as_deref(), Some("5"));
            }
            (mode, kind) => panic!("{mode}: unexpected {kind:?}"),
        }
    }
}

/// The sequence number a `stream` message starts with.
fn seq_of(message: &Message) -> u64 {
    let Message::Binary(payload) = message else {
        panic!("stream sent a text message");
    };
    let head: [u8; 8] = payload[..8].try_into().expect("8 bytes");
    u64::from_be_bytes(head)
}

#[tokio::test]
async fn stream_numbers_every_message_through_a_pause_and_answers_a_close() {
    let settings = ChaosSettings::default().with_message_size(64 << 10);
    let server = ChaosServer::bind_with("127.0.0.1:0", ChaosMode::Stream, settings)
        .await
        .expect("bind");
    let mut conn = bounded("connect", Connection::connect(&server.url(), &config()))
        .await
        .expect("connect");
    for expected in 0..50u64 {
        if expected == 10 {
            // Not reading for a while: the server waits on TCP
            // backpressure, then goes on where it was.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let message = bounded("a stream message", conn.recv())
            .await
            .expect("open")
            .expect("a message");
        assert_eq!(message.len(), 64 << 10);
        assert_eq!(seq_of(&message), expected);
    }
    // Mid-stream, the server still answers the close handshake in time.
    bounded("close", conn.close(CloseCode::NORMAL, "enough"))
        .await
        .expect("a clean close");
}

#[tokio::test]
async fn stream_with_an_interval_paces_its_messages() {
    let settings = ChaosSettings::default()
        .with_message_size(1 << 10)
        .with_interval(Duration::from_millis(100));
    let server = ChaosServer::bind_with("127.0.0.1:0", ChaosMode::Stream, settings)
        .await
        .expect("bind");
    let mut conn = bounded("connect", Connection::connect(&server.url(), &config()))
        .await
        .expect("connect");
    let mut first_at = None;
    for expected in 0..6u64 {
        let message = bounded("a paced message", conn.recv())
            .await
            .expect("open")
            .expect("a message");
        first_at.get_or_insert_with(std::time::Instant::now);
        assert_eq!(seq_of(&message), expected);
    }
    // Five intervals between the first and the sixth: the lower bound is
    // the server's pacing, the upper one only a generous stall guard.
    let took = first_at.expect("a first message").elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn pin_holds_a_client_mid_message() {
    let settings = ChaosSettings::default()
        .with_pin_frame(1 << 20)
        .with_pin_prefix(512 << 10)
        .with_trickle(Duration::from_millis(100));
    let server = ChaosServer::bind_with("127.0.0.1:0", ChaosMode::Pin, settings)
        .await
        .expect("bind");
    // Default limits accept the 1 MiB header; the fast keepalive shows the
    // trickle alone keeps the connection alive.
    let config = crate::config().keepalive(crate::fast_keepalive());
    let mut conn = bounded("connect", Connection::connect(&server.url(), &config))
        .await
        .expect("connect");
    let quiet = tokio::time::timeout(Duration::from_secs(1), conn.recv()).await;
    assert!(quiet.is_err(), "pin ended or finished: {quiet:?}");
    let stats = conn.stats();
    assert_eq!(stats.msgs_in, 0);
    // The prefix is held. (Not checked with `bytes_in`: it leaves out the
    // bytes that arrived with the handshake response.)
    assert!(stats.buffered_bytes >= 512 << 10, "{stats:?}");
    // Still trickling, still unfinished.
    let quiet = tokio::time::timeout(Duration::from_millis(500), conn.recv()).await;
    assert!(quiet.is_err(), "pin ended or finished: {quiet:?}");
    let later = conn.stats();
    assert_eq!(later.msgs_in, 0);
    assert!(later.bytes_in > stats.bytes_in, "{stats:?} then {later:?}");
}

#[tokio::test]
async fn settings_out_of_range_are_refused_naming_the_field() {
    for (settings, field) in [
        (
            ChaosSettings::default().with_message_size(7),
            "message_size",
        ),
        (
            ChaosSettings::default()
                .with_pin_frame(16 << 20)
                .with_pin_prefix(20 << 20),
            "pin_prefix",
        ),
        (
            ChaosSettings::default().with_trickle(Duration::ZERO),
            "trickle",
        ),
    ] {
        let err = ChaosServer::bind_with("127.0.0.1:0", ChaosMode::Pin, settings)
            .await
            .expect_err("invalid settings");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains(field), "{field}: {err}");
    }
}

#[test]
fn every_mode_parses_from_its_name() {
    for mode in ChaosMode::ALL {
        assert_eq!(mode.name().parse::<ChaosMode>(), Ok(mode));
        assert!(!mode.describe().is_empty());
    }
    assert!(
        "nope"
            .parse::<ChaosMode>()
            .unwrap_err()
            .contains("lying-length")
    );
    assert_eq!("stream".parse::<ChaosMode>(), Ok(ChaosMode::Stream));
    assert_eq!("pin".parse::<ChaosMode>(), Ok(ChaosMode::Pin));
}

/// The progress deadline: a peer trickling into a started frame is ended
/// with a typed error once it has waited past the deadline below the
/// minimum rate, and the half-received frame's memory goes back.
#[tokio::test]
async fn pin_is_ended_by_the_message_progress_deadline() {
    let settings = ChaosSettings::default()
        .with_pin_frame(1 << 20)
        .with_pin_prefix(512 << 10)
        .with_trickle(Duration::from_millis(200));
    let server = ChaosServer::bind_with("127.0.0.1:0", ChaosMode::Pin, settings)
        .await
        .expect("bind");
    let config = crate::config().keepalive(crate::fast_keepalive()).progress(
        wsfleet::Progress::default()
            .with_message(Duration::from_secs(1))
            .with_min_rate(4096),
    );
    let mut conn = bounded("connect", Connection::connect(&server.url(), &config))
        .await
        .expect("connect");
    let started = tokio::time::Instant::now();
    match bounded("recv", conn.recv()).await {
        Some(Err(Error::MessageStalled { waited, received })) => {
            assert!(waited >= Duration::from_secs(1), "{waited:?}");
            assert!(received < 4096 * 2, "{received} B");
        }
        other => panic!("expected MessageStalled, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    let left = conn.stats().buffered_bytes;
    assert!(
        left < 256,
        "the frame's memory went back ({left} B left: the close frame)"
    );
}

/// A steady stream is never mistaken for a stall, however long it runs.
#[tokio::test]
async fn a_steady_stream_passes_the_progress_deadline() {
    let settings = ChaosSettings::default()
        .with_message_size(256 << 10)
        .with_interval(Duration::from_millis(20));
    let server = ChaosServer::bind_with("127.0.0.1:0", ChaosMode::Stream, settings)
        .await
        .expect("bind");
    let config = crate::config().progress(
        wsfleet::Progress::default()
            .with_message(Duration::from_millis(300))
            .with_min_rate(4096),
    );
    let mut conn = bounded("connect", Connection::connect(&server.url(), &config))
        .await
        .expect("connect");
    for expected in 0..60 {
        let m = bounded("message", conn.recv()).await.unwrap().unwrap();
        assert_eq!(seq_of(&m), expected);
    }
}

/// The write progress deadline: against a peer that never reads, `send`
/// does not wait forever once the socket and the outbound queue are full.
#[tokio::test]
async fn send_to_a_peer_that_stopped_reading_ends_with_write_stalled() {
    let server = ChaosServer::bind("127.0.0.1:0", ChaosMode::Silent)
        .await
        .expect("bind");
    let config = crate::config()
        .keepalive(wsfleet::Keepalive::default().with_interval(None))
        .progress(wsfleet::Progress::default().with_write(Duration::from_millis(500)));
    let mut conn = bounded("connect", Connection::connect(&server.url(), &config))
        .await
        .expect("connect");
    let chunk = Message::binary(vec![0u8; 256 << 10]);
    let end = bounded("send until stalled", async {
        for _ in 0..10_000 {
            if let Err(e) = conn.send(chunk.clone()).await {
                return e;
            }
        }
        panic!("a peer that never reads took 2.5 GB");
    })
    .await;
    assert!(
        matches!(end, Error::WriteStalled(d) if d == Duration::from_millis(500)),
        "{end}"
    );
}

/// A `recv()` cancelled over and over (as in a `select!` with a busy
/// other branch) still reports why the connection ended: the ending is
/// recorded before the close frame's flush is awaited.
#[tokio::test]
async fn a_ping_flood_is_reported_to_a_recv_cancelled_every_millisecond() {
    let server = ChaosServer::bind("127.0.0.1:0", ChaosMode::PingFlood)
        .await
        .expect("bind");
    let mut conn = bounded("connect", Connection::connect(&server.url(), &config()))
        .await
        .expect("connect");
    let end = bounded("flood reported", async {
        loop {
            tokio::select! {
                r = conn.recv() => match r {
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Some(e),
                    None => return None,
                },
                () = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
    })
    .await;
    assert!(matches!(end, Some(Error::PingFlood { .. })), "{end:?}");
    assert!(conn.recv().await.is_none(), "reported once");
}
