//! Through real proxies on loopback: tinyproxy (HTTP CONNECT, basic auth)
//! and microsocks (SOCKS5, username and password), both Debian packages
//! that `scripts/setup-debian` installs.

use wsfleet::connect::{ConnectErrorKind, Phase, Proxy, ProxyError, ProxySetting};
use wsfleet::serve::EchoServer;
use wsfleet::{Connection, ConnectionConfig, Message};
use wsfleet_testkit::{ProxyServer, bounded};

async fn tinyproxy(auth: Option<(&str, &str)>) -> ProxyServer {
    ProxyServer::tinyproxy(auth).await.expect("start tinyproxy")
}

async fn microsocks(auth: Option<(&str, &str)>) -> ProxyServer {
    ProxyServer::microsocks(auth)
        .await
        .expect("start microsocks")
}

fn via(proxy: &str) -> ConnectionConfig {
    crate::config().proxy(ProxySetting::Use(Proxy::parse(proxy).expect("proxy url")))
}

async fn echo_through(url: &str, config: &ConnectionConfig) {
    let messages = vec![
        Message::text("through the proxy ☃"),
        Message::binary(vec![5u8; 256 << 10]),
    ];
    crate::peers::echo_and_close(url, config, messages, String::new).await;
}

#[tokio::test]
async fn ws_through_http_connect() {
    let proxy = tinyproxy(None).await;
    let server = EchoServer::bind("127.0.0.1:0", crate::config())
        .await
        .expect("bind");
    echo_through(
        &server.url(),
        &via(&format!("http://127.0.0.1:{}", proxy.port())),
    )
    .await;
}

#[tokio::test]
async fn wss_through_http_connect_with_basic_auth() {
    let proxy = tinyproxy(Some(("alice", "wonder"))).await;
    let url = crate::tls::wss_echo_server().await;
    let config = crate::tls::with_test_ca(via(&format!(
        "http://alice:wonder@127.0.0.1:{}",
        proxy.port()
    )));
    echo_through(&url, &config).await;
    // Wrong password: the proxy refuses (tinyproxy says 401), reported in the proxy phase.
    let wrong = via(&format!("http://alice:nope@127.0.0.1:{}", proxy.port()));
    let err = bounded("connect", Connection::connect(&url, &wrong))
        .await
        .unwrap_err();
    assert_eq!(err.phase(), Phase::Proxy, "{err}");
    assert!(
        matches!(
            err.kind(),
            ConnectErrorKind::Proxy(ProxyError::AuthFailed { status: 401 | 407 })
        ),
        "{err:?}"
    );
    assert!(
        crate::report(&err).contains("proxy authentication failed"),
        "{err}"
    );
}

#[tokio::test]
async fn ws_through_socks5_with_password() {
    let proxy = microsocks(Some(("bob", "builder"))).await;
    let server = EchoServer::bind("127.0.0.1:0", crate::config())
        .await
        .expect("bind");
    echo_through(
        &server.url(),
        &via(&format!("socks5://bob:builder@127.0.0.1:{}", proxy.port())),
    )
    .await;
    let err = bounded(
        "connect",
        Connection::connect(
            &server.url(),
            &via(&format!("socks5://bob:wrong@127.0.0.1:{}", proxy.port())),
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(err.phase(), Phase::Proxy, "{err}");
    assert!(
        matches!(
            err.kind(),
            ConnectErrorKind::Proxy(ProxyError::Socks5AuthRejected { .. })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn wss_through_socks5() {
    let proxy = microsocks(None).await;
    let url = crate::tls::wss_echo_server().await;
    let config = crate::tls::with_test_ca(via(&format!("socks5h://127.0.0.1:{}", proxy.port())));
    echo_through(&url, &config).await;
}
