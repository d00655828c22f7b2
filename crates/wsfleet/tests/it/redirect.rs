//! Redirect answers to the opening handshake, from nginx (`return 30x`) in
//! front of wsfleet's echo server: refused by default, followed up to
//! [`ConnectionConfig::max_redirects`], never from wss to ws, and
//! credentials never carried to another origin.

use wsfleet::connect::{ConnectErrorKind, Phase};
use wsfleet::proto::HandshakeError;
use wsfleet::serve::EchoServer;
use wsfleet::{Connection, ConnectionConfig, Message};
use wsfleet_testkit::{Nginx, NginxOptions, bounded};

/// A WebSocket proxy location to the upstream, refused with `refuse` when
/// `condition` (an nginx `if` condition) holds.
fn guarded(path: &str, condition: &str, refuse: u16, upstream: u16) -> String {
    format!(
        "        location = {path} {{
            if ({condition}) {{ return {refuse}; }}
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection \"upgrade\";
        }}
"
    )
}

/// nginx with the redirects of these tests, in front of an echo server.
async fn redirecting_nginx() -> (EchoServer, Nginx) {
    let upstream = EchoServer::bind("127.0.0.1:0", crate::config())
        .await
        .expect("bind wsfleet's echo server");
    let port = upstream.local_addr().port();
    let mut extra = String::from(
        "        absolute_redirect off;
        location = /hop1 { return 302 /hop2; }
        location = /hop2 { return 307 hop3; }
        location = /hop3 { return 308 /; }
        location = /loop { return 302 /loop; }
        location = /http { return 301 http://127.0.0.1:@HTTP_PORT@/; }
        location = /to-ws { return 301 ws://127.0.0.1:@HTTP_PORT@/; }
        location = /same-origin { return 302 /needs-auth; }
        location = /other-origin { return 302 wss://localhost:@HTTPS_PORT@/no-credentials; }
        location = /other-origin-token { return 302 wss://localhost:@HTTPS_PORT@/no-token; }
        location = /other-origin-forward { return 302 wss://localhost:@HTTPS_PORT@/needs-token; }
        location = /other-origin-protocol { return 302 wss://localhost:@HTTPS_PORT@/no-protocol; }
",
    );
    extra += &guarded("/needs-auth", "$http_authorization = \"\"", 401, port);
    extra += &guarded("/no-credentials", "$http_authorization", 403, port);
    extra += &guarded("/no-token", "$http_x_token", 403, port);
    extra += &guarded("/needs-token", "$http_x_token = \"\"", 401, port);
    extra += &guarded("/no-protocol", "$http_sec_websocket_protocol", 403, port);
    let mut options = NginxOptions::default();
    options.extra = extra;
    let nginx = Nginx::start_with(port, options).await.expect("start nginx");
    (upstream, nginx)
}

/// Trusts the test CA; follows up to `max_redirects`.
fn config(max_redirects: u8) -> ConnectionConfig {
    crate::tls::with_test_ca(crate::config()).max_redirects(max_redirects)
}

async fn connects_and_echoes(url: &str, config: &ConnectionConfig, nginx: &Nginx) {
    let messages = vec![Message::text("after the redirects")];
    crate::peers::echo_and_close(url, config, messages, || nginx.logs()).await;
}

async fn fails(url: &str, config: &ConnectionConfig) -> wsfleet::connect::ConnectError {
    let err = bounded("connect", Connection::connect(url, config))
        .await
        .expect_err("the connection should not open");
    assert_eq!(err.phase(), Phase::Handshake, "{err}");
    err
}

#[tokio::test]
async fn a_redirect_is_an_error_by_default() {
    let (_upstream, nginx) = redirecting_nginx().await;
    let err = fails(&format!("{}hop1", nginx.ws_url()), &config(0)).await;
    match err.kind() {
        ConnectErrorKind::Handshake(HandshakeError::Redirect { status, location }) => {
            assert_eq!((*status, location.as_deref()), (302, Some("/hop2")));
        }
        other => panic!("expected a redirect error, got {other:?}"),
    }
    assert!(crate::report(&err).contains("/hop2"), "{err}");
}

#[tokio::test]
async fn a_chain_of_relative_redirects_is_followed() {
    let (_upstream, nginx) = redirecting_nginx().await;
    let url = format!("{}hop1", nginx.ws_url());
    connects_and_echoes(&url, &config(3), &nginx).await;
    // The same chain over TLS stays on TLS.
    let url = format!("{}hop1", nginx.wss_url());
    connects_and_echoes(&url, &config(3), &nginx).await;
}

#[tokio::test]
async fn an_http_location_names_the_ws_endpoint() {
    let (_upstream, nginx) = redirecting_nginx().await;
    connects_and_echoes(&format!("{}http", nginx.ws_url()), &config(1), &nginx).await;
}

#[tokio::test]
async fn the_limit_holds() {
    let (_upstream, nginx) = redirecting_nginx().await;
    // Three hops are needed: two allowed is too few.
    let err = fails(&format!("{}hop1", nginx.ws_url()), &config(2)).await;
    assert!(
        matches!(err.kind(), ConnectErrorKind::TooManyRedirects { limit: 2 }),
        "{err:?}"
    );
    let err = fails(&format!("{}loop", nginx.ws_url()), &config(5)).await;
    assert!(
        matches!(err.kind(), ConnectErrorKind::TooManyRedirects { limit: 5 }),
        "{err:?}"
    );
    assert!(err.to_string().contains("more than 5 redirects"), "{err}");
}

#[tokio::test]
async fn wss_never_redirects_to_ws() {
    let (_upstream, nginx) = redirecting_nginx().await;
    for path in ["to-ws", "http"] {
        let err = fails(&format!("{}{path}", nginx.wss_url()), &config(5)).await;
        match err.kind() {
            ConnectErrorKind::Redirect { status, reason, .. } => {
                assert_eq!(*status, 301);
                assert!(reason.contains("leaves TLS"), "{err}");
            }
            other => panic!("expected a refused redirect, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn credentials_stay_with_the_configured_origin() {
    let (_upstream, nginx) = redirecting_nginx().await;
    let with_credentials = config(2)
        .header("Authorization", "Bearer secret")
        .header("Cookie", "session=secret");
    // The guards work: the target refuses credentials, the other demands them.
    let err = fails(
        &format!("{}no-credentials", nginx.wss_url()),
        &with_credentials,
    )
    .await;
    assert!(crate::report(&err).contains("403"), "{err}");
    let err = fails(&format!("{}needs-auth", nginx.ws_url()), &config(2)).await;
    assert!(crate::report(&err).contains("401"), "{err}");

    // Same origin: the Authorization header is still sent.
    let url = format!("{}same-origin", nginx.ws_url());
    connects_and_echoes(&url, &with_credentials, &nginx).await;
    // Another origin (ws to wss, another port): it is not.
    let url = format!("{}other-origin", nginx.ws_url());
    connects_and_echoes(
        &url,
        &with_credentials.clone().keep_tls_on_redirect(true),
        &nginx,
    )
    .await;
    // And the configured TLS (here: the test CA) stays behind unless kept:
    // the default roots do not know the test CA.
    let err = bounded("connect", Connection::connect(&url, &with_credentials))
        .await
        .expect_err("the test CA is not trusted off the configured origin");
    assert_eq!(err.phase(), Phase::Tls, "{err}");
}

#[tokio::test]
async fn every_header_and_subprotocol_stays_behind_unless_forwarded() {
    let (_upstream, nginx) = redirecting_nginx().await;
    let base = config(2)
        .keep_tls_on_redirect(true)
        .header("X-Token", "secret")
        .protocol("token.secret");
    // The guards work: each refuses what it must not see.
    let err = fails(&format!("{}no-token", nginx.wss_url()), &base).await;
    assert!(crate::report(&err).contains("403"), "{err}");
    let err = fails(&format!("{}no-protocol", nginx.wss_url()), &base).await;
    assert!(crate::report(&err).contains("403"), "{err}");
    // Off the configured origin, neither goes.
    for path in ["other-origin-token", "other-origin-protocol"] {
        connects_and_echoes(&format!("{}{path}", nginx.ws_url()), &base, &nginx).await;
    }
    let url = format!("{}other-origin-forward", nginx.ws_url());
    let err = fails(&url, &base).await;
    assert!(crate::report(&err).contains("401"), "{err}");
    // Unless the user names it.
    connects_and_echoes(&url, &base.clone().forward_on_redirect("x-token"), &nginx).await;
}
