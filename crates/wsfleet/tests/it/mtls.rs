//! Mutual TLS: wsfleet presents a client certificate
//! ([`TlsOptions::client_identity`]) to servers that require one: a rustls
//! server and nginx (`ssl_verify_client on`), both trusting only the test
//! client CA (`tests/data/client-ca.pem`).

use wsfleet::connect::{ClientIdentity, ConnectErrorKind, Phase};
use wsfleet::proto::HandshakeError;
use wsfleet::serve::EchoServer;
use wsfleet::{Connection, ConnectionConfig, Message};
use wsfleet_testkit::{Nginx, NginxOptions, bounded};

use crate::tls::{data, wss_echo_server_with};

/// Trusts the test server CA; presents the test client certificate if `identity`.
fn config(identity: bool) -> ConnectionConfig {
    let mut tls = crate::tls::test_ca();
    if identity {
        tls.client_identity = Some(ClientIdentity::new(data("client.pem"), data("client.key")));
    }
    crate::config().tls(tls.build().expect("TLS config"))
}

async fn round_trips_and_closes(url: &str, config: &ConnectionConfig) {
    let messages = vec![
        Message::text("signed ☃"),
        Message::binary(vec![7u8; 64 << 10]),
    ];
    crate::peers::echo_and_close(url, config, messages, String::new).await;
}

#[tokio::test]
async fn rustls_server_accepts_the_client_certificate() {
    let url = wss_echo_server_with(Some(&data("client-ca.pem"))).await;
    round_trips_and_closes(&url, &config(true)).await;
}

#[tokio::test]
async fn rustls_server_refuses_a_client_without_certificate() {
    let url = wss_echo_server_with(Some(&data("client-ca.pem"))).await;
    // TLS 1.3: the client finishes its side before the server checks it, so the
    // refusal (an alert) may arrive during the TLS phase or as the handshake
    // response is awaited. Either way the connection must not open.
    let err = bounded("connect", Connection::connect(&url, &config(false)))
        .await
        .expect_err("a server that requires a client certificate let us in without one");
    assert!(
        matches!(err.phase(), Phase::Tls | Phase::Handshake),
        "{err}"
    );
    assert!(
        crate::report(&err).to_lowercase().contains("certificate"),
        "the error should say a certificate was required: {err}"
    );
}

async fn nginx_with_client_auth() -> (EchoServer, Nginx) {
    let upstream = EchoServer::bind("127.0.0.1:0", crate::config())
        .await
        .expect("bind wsfleet's echo server");
    let mut options = NginxOptions::default();
    options.client_ca = Some(data("client-ca.pem"));
    let nginx = Nginx::start_with(upstream.local_addr().port(), options)
        .await
        .expect("start nginx");
    (upstream, nginx)
}

#[tokio::test]
async fn nginx_accepts_the_client_certificate() {
    let (_upstream, nginx) = nginx_with_client_auth().await;
    round_trips_and_closes(&nginx.wss_url(), &config(true)).await;
}

#[tokio::test]
async fn nginx_answers_400_without_a_client_certificate() {
    let (_upstream, nginx) = nginx_with_client_auth().await;
    let err = bounded(
        "connect",
        Connection::connect(&nginx.wss_url(), &config(false)),
    )
    .await
    .expect_err("nginx let us in without a client certificate");
    assert_eq!(err.phase(), Phase::Handshake, "{err}");
    match err.kind() {
        ConnectErrorKind::Handshake(HandshakeError::Status { status, .. }) => {
            assert_eq!(*status, 400, "{err}");
        }
        other => panic!(
            "expected status 400, got {other:?}; nginx: {}",
            nginx.logs()
        ),
    }
}
