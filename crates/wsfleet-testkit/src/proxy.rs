//! Real proxies on loopback, as child processes: tinyproxy (HTTP CONNECT,
//! optional basic auth) and microsocks (SOCKS5, optional username and
//! password), both Debian packages that `scripts/setup-debian` installs.

use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::free_port;

/// How long a proxy may take to listen.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Which proxy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    /// tinyproxy: HTTP CONNECT.
    HttpConnect,
    /// microsocks: SOCKS5.
    Socks5,
}

/// A proxy on `127.0.0.1`, killed when dropped (its temporary directory,
/// if any, removed).
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use wsfleet_testkit::ProxyServer;
/// let http = ProxyServer::tinyproxy(Some(("alice", "wonder"))).await?;
/// let socks = ProxyServer::microsocks(None).await?;
/// println!("{} {}", http.url(), socks.url()); // http://alice:wonder@127.0.0.1:PORT socks5h://127.0.0.1:PORT
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ProxyServer {
    _child: Child,
    dir: Option<PathBuf>,
    kind: ProxyKind,
    port: u16,
    auth: Option<(String, String)>,
}

impl ProxyServer {
    /// Starts tinyproxy, requiring `auth` (user, password) when given.
    ///
    /// # Errors
    /// tinyproxy missing (with the script to run), or not listening in time.
    pub async fn tinyproxy(auth: Option<(&str, &str)>) -> io::Result<Self> {
        let binary = require("tinyproxy")?;
        let port = free_port().await;
        let dir =
            std::env::temp_dir().join(format!("wsfleet-tinyproxy-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 64\nAllow 127.0.0.1\nLogLevel Warning\nLogFile \"{}/log\"\n",
            dir.display()
        );
        if let Some((user, pass)) = auth {
            conf.push_str(&format!("BasicAuth {user} {pass}\n"));
        }
        let path = dir.join("tinyproxy.conf");
        std::fs::write(&path, conf)?;
        let child = Command::new(binary)
            .arg("-d")
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        Self::started(child, Some(dir), ProxyKind::HttpConnect, port, auth).await
    }

    /// Starts microsocks, requiring `auth` (user, password) when given.
    ///
    /// # Errors
    /// microsocks missing (with the script to run), or not listening in time.
    pub async fn microsocks(auth: Option<(&str, &str)>) -> io::Result<Self> {
        let binary = require("microsocks")?;
        let port = free_port().await;
        let mut cmd = Command::new(binary);
        cmd.args(["-i", "127.0.0.1", "-p", &port.to_string()]);
        if let Some((user, pass)) = auth {
            cmd.args(["-u", user, "-P", pass]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        Self::started(child, None, ProxyKind::Socks5, port, auth).await
    }

    async fn started(
        child: Child,
        dir: Option<PathBuf>,
        kind: ProxyKind,
        port: u16,
        auth: Option<(&str, &str)>,
    ) -> io::Result<Self> {
        let proxy = ProxyServer {
            _child: child,
            dir,
            kind,
            port,
            auth: auth.map(|(u, p)| (u.to_owned(), p.to_owned())),
        };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if start.elapsed() > STARTUP_TIMEOUT {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{kind:?} proxy not listening on 127.0.0.1:{port} after {STARTUP_TIMEOUT:?}"
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(proxy)
    }

    /// Which proxy this is.
    pub fn kind(&self) -> ProxyKind {
        self.kind
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its URL with the credentials it requires: `http://[user:pass@]127.0.0.1:PORT`
    /// or `socks5h://[user:pass@]127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.url_with(self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str())))
    }

    /// Its URL with other credentials (or none), to test refusals.
    pub fn url_with(&self, auth: Option<(&str, &str)>) -> String {
        let scheme = match self.kind {
            ProxyKind::HttpConnect => "http",
            ProxyKind::Socks5 => "socks5h",
        };
        match auth {
            Some((user, pass)) => format!("{scheme}://{user}:{pass}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }
}

impl Drop for ProxyServer {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The binary's path, or an error naming the script that installs it.
fn require(binary: &str) -> io::Result<PathBuf> {
    let path = PathBuf::from(format!("/usr/bin/{binary}"));
    if path.exists() {
        Ok(path)
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{binary} is not installed: run scripts/setup-debian (or scripts/test)"),
        ))
    }
}
