//! Each `ChaosServer` mode against one `Connection`: the failure is typed,
//! bounded in time and memory, and ends only that connection.

use std::time::Duration;

use wsfleet::connect::{ConnectErrorKind, Deadlines, Phase};
use wsfleet::proto::{HandshakeError, ProtocolError};
use wsfleet::serve::{ChaosMode, ChaosServer};
use wsfleet::{Connection, ConnectionConfig, Error, Limits};
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
}
