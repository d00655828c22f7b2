//! Through real proxies on loopback: tinyproxy (HTTP CONNECT, basic auth)
//! and microsocks (SOCKS5, username and password), both Debian packages
//! that `scripts/setup-debian` installs.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use wsfleet::connect::{Phase, Proxy, ProxySetting, Roots, TlsOptions};
use wsfleet::serve::EchoServer;
use wsfleet::{CloseCode, Connection, ConnectionConfig, Message};
use wsfleet_testkit::{bounded, free_port};

/// A proxy process, killed on drop.
struct ProxyProcess {
    _child: Child,
    _dir: Option<std::path::PathBuf>,
    port: u16,
}

async fn wait_listening(port: u16) {
    bounded("proxy listening", async {
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

fn require(binary: &str) {
    assert!(
        std::path::Path::new(&format!("/usr/bin/{binary}")).exists(),
        "{binary} is not installed: run scripts/setup-debian (or scripts/test)"
    );
}

async fn tinyproxy(auth: Option<(&str, &str)>) -> ProxyProcess {
    require("tinyproxy");
    let port = free_port().await;
    let dir = std::env::temp_dir().join(format!("wsfleet-tinyproxy-{port}"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut conf = format!(
        "Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 64\nAllow 127.0.0.1\nLogLevel Warning\nLogFile \"{}/log\"\n",
        dir.display()
    );
    if let Some((user, pass)) = auth {
        conf.push_str(&format!("BasicAuth {user} {pass}\n"));
    }
    let path = dir.join("tinyproxy.conf");
    std::fs::write(&path, conf).expect("write conf");
    let child = Command::new("tinyproxy")
        .arg("-d")
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start tinyproxy");
    wait_listening(port).await;
    ProxyProcess {
        _child: child,
        _dir: Some(dir),
        port,
    }
}

async fn microsocks(auth: Option<(&str, &str)>) -> ProxyProcess {
    require("microsocks");
    let port = free_port().await;
    let mut cmd = Command::new("microsocks");
    cmd.args(["-i", "127.0.0.1", "-p", &port.to_string()]);
    if let Some((user, pass)) = auth {
        cmd.args(["-u", user, "-P", pass]);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start microsocks");
    wait_listening(port).await;
    ProxyProcess {
        _child: child,
        _dir: None,
        port,
    }
}

fn via(proxy: &str) -> ConnectionConfig {
    crate::config().proxy(ProxySetting::Use(Proxy::parse(proxy).expect("proxy url")))
}

async fn echo_through(url: &str, config: &ConnectionConfig) {
    let mut conn = bounded("connect", Connection::connect(url, config))
        .await
        .expect("connect through proxy");
    crate::peers::round_trip(&mut conn, Message::text("through the proxy ☃")).await;
    crate::peers::round_trip(&mut conn, Message::binary(vec![5u8; 256 << 10])).await;
    bounded("close", conn.close(CloseCode::NORMAL, ""))
        .await
        .expect("clean close");
}

#[tokio::test]
async fn ws_through_http_connect() {
    let proxy = tinyproxy(None).await;
    let server = EchoServer::bind("127.0.0.1:0", crate::config())
        .await
        .expect("bind");
    echo_through(
        &server.url(),
        &via(&format!("http://127.0.0.1:{}", proxy.port)),
    )
    .await;
}

#[tokio::test]
async fn wss_through_http_connect_with_basic_auth() {
    let proxy = tinyproxy(Some(("alice", "wonder"))).await;
    let url = crate::tls::wss_echo_server().await;
    let mut tls = TlsOptions::default();
    tls.roots = Roots::None;
    tls.extra_ca_files = vec![crate::tls::data("ca.pem")];
    let config = via(&format!("http://alice:wonder@127.0.0.1:{}", proxy.port))
        .tls(tls.build().expect("tls"));
    echo_through(&url, &config).await;
    // Wrong password: the proxy refuses (tinyproxy says 401), reported in the proxy phase.
    let wrong = via(&format!("http://alice:nope@127.0.0.1:{}", proxy.port));
    let err = bounded("connect", Connection::connect(&url, &wrong))
        .await
        .unwrap_err();
    assert_eq!(err.phase(), Phase::Proxy, "{err}");
    assert!(
        err.to_string().contains("proxy authentication failed"),
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
        &via(&format!("socks5://bob:builder@127.0.0.1:{}", proxy.port)),
    )
    .await;
    let err = bounded(
        "connect",
        Connection::connect(
            &server.url(),
            &via(&format!("socks5://bob:wrong@127.0.0.1:{}", proxy.port)),
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(err.phase(), Phase::Proxy, "{err}");
}

#[tokio::test]
async fn wss_through_socks5() {
    let proxy = microsocks(None).await;
    let url = crate::tls::wss_echo_server().await;
    let mut tls = TlsOptions::default();
    tls.roots = Roots::None;
    tls.extra_ca_files = vec![crate::tls::data("ca.pem")];
    let config = via(&format!("socks5h://127.0.0.1:{}", proxy.port)).tls(tls.build().expect("tls"));
    echo_through(&url, &config).await;
}
