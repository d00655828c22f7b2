//! `wss://` end to end: a rustls server on loopback with the test CA
//! (`tests/data`), wsfleet's client on the other side.

use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use wsfleet::connect::{MaybeTlsStream, Phase, Roots, TlsOptions};
use wsfleet::{Connection, Message};
use wsfleet_testkit::bounded;

pub(crate) fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// TLS options trusting the test CA (`tests/data/ca.pem`) and nothing else.
pub(crate) fn test_ca() -> TlsOptions {
    let mut tls = TlsOptions::default();
    tls.roots = Roots::None;
    tls.extra_ca_files = vec![data("ca.pem")];
    tls
}

/// `config`, trusting the test CA and nothing else.
pub(crate) fn with_test_ca(config: wsfleet::ConnectionConfig) -> wsfleet::ConnectionConfig {
    config.tls(test_ca().build().expect("TLS config with the test CA"))
}

/// A wss echo server; returns its `wss://localhost:PORT/` URL.
pub(crate) async fn wss_echo_server() -> String {
    wss_echo_server_with(None).await
}

/// A wss echo server that, with `client_ca`, requires a client certificate
/// issued by that CA; returns its `wss://localhost:PORT/` URL.
pub(crate) async fn wss_echo_server_with(client_ca: Option<&std::path::Path>) -> String {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(data("server.pem"))
        .expect("server.pem")
        .collect::<Result<_, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(data("server.key")).expect("server.key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).expect("client CA") {
                roots
                    .add(cert.expect("client CA cert"))
                    .expect("add client CA");
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(certs, key).expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let stream = MaybeTlsStream::ServerTls(Box::new(tls));
                let Ok(mut conn) =
                    Connection::accept(stream, peer.to_string(), &crate::config()).await
                else {
                    return;
                };
                while let Some(Ok(m)) = conn.recv().await {
                    if conn.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    format!("wss://localhost:{port}/")
}

#[tokio::test]
async fn wss_round_trips_with_a_custom_ca() {
    let url = wss_echo_server().await;
    let config = with_test_ca(crate::config());
    let messages = vec![
        Message::text("over TLS ☃"),
        Message::binary(vec![9u8; 1 << 20]),
    ];
    crate::peers::echo_and_close(&url, &config, messages, String::new).await;
}

#[tokio::test]
async fn wss_with_default_roots_refuses_an_unknown_issuer() {
    let url = wss_echo_server().await;
    let err = bounded("connect", Connection::connect(&url, &crate::config()))
        .await
        .unwrap_err();
    assert_eq!(err.phase(), Phase::Tls);
    let text = crate::report(&err);
    assert!(
        text.contains("UnknownIssuer") || text.contains("issuer"),
        "{text}"
    );
}
