//! nginx as a WebSocket reverse proxy on loopback, as a child process.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, Command};

use crate::capture::Captured;
use crate::{free_port, workspace_root};

/// What to do when nginx is missing.
const NGINX_SETUP_HINT: &str = "run scripts/test (or scripts/setup-debian) first";

/// How many times [`Nginx::start`] picks new ports after a lost race for one.
const BIND_ATTEMPTS: usize = 5;

/// The path nginx answers itself (not proxied), to tell that it is up.
const READY_PATH: &str = "/__wsfleet_testkit_ready";

/// How to start [`Nginx`] beyond its upstream.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NginxOptions {
    /// PEM certificate chain for the TLS listener. Default: wsfleet's test
    /// certificate, `crates/wsfleet/tests/data/server.pem` (SAN `localhost`,
    /// `127.0.0.1`, issued by `ca.pem` beside it).
    pub cert: PathBuf,
    /// PEM private key of [`NginxOptions::cert`]. Default: `server.key` beside it.
    pub key: PathBuf,
    /// How long to wait for nginx to answer. Default: 20 s.
    pub startup_timeout: Duration,
    /// PEM file of the CA that issues client certificates: with it, the TLS
    /// listener requires one (`ssl_verify_client on`) and answers 400
    /// without. Default: none (no client authentication).
    pub client_ca: Option<PathBuf>,
    /// More nginx directives for the server block (both listeners), such as
    /// `location` blocks that redirect; `@HTTP_PORT@` and `@HTTPS_PORT@`
    /// are replaced by the ports nginx listens on. Default: empty.
    pub extra: String,
}

impl Default for NginxOptions {
    fn default() -> Self {
        let data = workspace_root().join("crates/wsfleet/tests/data");
        NginxOptions {
            cert: data.join("server.pem"),
            key: data.join("server.key"),
            startup_timeout: Duration::from_secs(20),
            client_ca: None,
            extra: String::new(),
        }
    }
}

/// nginx on 127.0.0.1, reverse-proxying WebSocket upgrades to an upstream
/// server on `127.0.0.1:<upstream_port>`, over plain HTTP ([`Nginx::ws_url`])
/// and TLS ([`Nginx::wss_url`]). Killed when dropped; its temporary directory
/// (configuration, logs, pid file) is removed.
///
/// nginx runs in the foreground as one process (`master_process off`, `daemon
/// off`), with everything it writes in that directory. It cannot bind port 0,
/// so the ports come from [`free_port`]; when another process takes one first,
/// `start` tries again with new ports. A watchdog shell kills nginx when the
/// test process dies, so no nginx outlives a killed test run.
///
/// Needs the `nginx` binary: `$WSFLEET_NGINX`, else `nginx` on `PATH` or in
/// `/usr/sbin`. `scripts/setup-debian` installs the Debian package.
#[derive(Debug)]
pub struct Nginx {
    // Dropped (closed) before `child` is killed: the watchdog then kills it too.
    watchdog: Option<ChildStdin>,
    child: Child,
    http_port: u16,
    https_port: u16,
    stderr: Captured,
    dir: TempDir,
}

impl Nginx {
    /// Starts nginx in front of `127.0.0.1:<upstream_port>` with default
    /// [`NginxOptions`] (wsfleet's test certificate).
    ///
    /// # Errors
    ///
    /// When nginx is missing (the message says to run `scripts/setup-debian`),
    /// when it exits or does not answer within the startup timeout (the message
    /// has its stderr and error log), or when every attempt to bind lost a race.
    pub async fn start(upstream_port: u16) -> io::Result<Nginx> {
        Self::start_with(upstream_port, NginxOptions::default()).await
    }

    /// Starts nginx in front of `127.0.0.1:<upstream_port>` with `options`.
    ///
    /// # Errors
    ///
    /// As [`Nginx::start`].
    pub async fn start_with(upstream_port: u16, options: NginxOptions) -> io::Result<Nginx> {
        let nginx = find_nginx()?;
        for file in [&options.cert, &options.key]
            .into_iter()
            .chain(options.client_ca.as_ref())
        {
            if !file.is_file() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("nginx TLS file {} is missing", file.display()),
                ));
            }
        }
        let mut last = None;
        for _ in 0..BIND_ATTEMPTS {
            match start_once(&nginx, upstream_port, &options).await? {
                Ok(server) => return Ok(server),
                Err(lost_race) => last = Some(lost_race),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "nginx could not bind its ports in {BIND_ATTEMPTS} attempts; the last:\n{}",
                last.unwrap_or_default()
            ),
        ))
    }

    /// The plain-HTTP port on 127.0.0.1.
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The TLS port on 127.0.0.1.
    pub fn https_port(&self) -> u16 {
        self.https_port
    }

    /// `ws://127.0.0.1:HTTP_PORT/`.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.http_port)
    }

    /// `wss://localhost:HTTPS_PORT/`: `localhost`, a name the test certificate
    /// carries, so that the client's name check is exercised.
    pub fn wss_url(&self) -> String {
        format!("wss://localhost:{}/", self.https_port)
    }

    /// The directory with `nginx.conf`, `error.log` and the pid file.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// nginx's error log so far plus what it wrote to stderr (the last 64 KiB
    /// of each), for assertion messages.
    pub fn logs(&self) -> String {
        format!(
            "error.log:\n{}\nstderr:\n{}",
            tail(&self.dir.0.join("error.log")),
            self.stderr.text()
        )
    }

    /// Kills nginx now and waits for it to exit.
    ///
    /// # Errors
    ///
    /// If the process cannot be killed or waited for.
    pub async fn kill(&mut self) -> io::Result<()> {
        self.watchdog = None;
        self.child.kill().await
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // Closing the pipe lets the watchdog kill nginx too; kill_on_drop does
        // the same as start_kill.
        self.watchdog = None;
        let _ = self.child.start_kill();
    }
}

/// One attempt: `Ok(Err(text))` when nginx lost a race for a port.
async fn start_once(
    nginx: &Path,
    upstream_port: u16,
    options: &NginxOptions,
) -> io::Result<Result<Nginx, String>> {
    let http_port = free_port().await;
    let mut https_port = free_port().await;
    while https_port == http_port {
        https_port = free_port().await;
    }
    let dir = TempDir::new("wsfleet-nginx")?;
    let nonce = format!("wsfleet-testkit-ready-{}", unique());
    let conf = dir.0.join("nginx.conf");
    std::fs::write(
        &conf,
        config(
            &dir.0,
            upstream_port,
            http_port,
            https_port,
            options,
            &nonce,
        ),
    )?;

    // The shell keeps a copy of its stdin on fd 3 for a background watchdog that
    // kills the shell's pid when the pipe closes, then becomes nginx (exec), so
    // `child` is nginx itself.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(
            "exec 3<&0; (cat <&3 >/dev/null; kill -KILL $$) >/dev/null 2>&1 & \
             exec \"$0\" \"$@\" 3<&-",
        )
        .arg(nginx)
        .arg("-p")
        .arg(&dir.0)
        .arg("-c")
        .arg(&conf)
        .args(["-e", "stderr", "-g"])
        .arg(format!(
            "daemon off; pid {};",
            quote(&dir.0.join("nginx.pid"))
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("spawning sh to run {}: {e}", nginx.display()),
        )
    })?;
    let watchdog = child.stdin.take();
    let (stderr, stderr_done) =
        Captured::spawn_reader(child.stderr.take().expect("stderr is piped"));
    let mut server = Nginx {
        watchdog,
        child,
        http_port,
        https_port,
        stderr,
        dir,
    };

    let deadline = Instant::now() + options.startup_timeout;
    loop {
        if let Some(status) = server.child.try_wait()? {
            let _ = tokio::time::timeout(Duration::from_secs(2), stderr_done).await;
            let logs = server.logs();
            if logs.contains("Address already in use") {
                return Ok(Err(logs));
            }
            return Err(io::Error::other(format!(
                "nginx exited while starting ({status}); {logs}"
            )));
        }
        if ready(http_port, &nonce).await {
            return Ok(Ok(server));
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "nginx did not answer on 127.0.0.1:{http_port} within {:?}; {}",
                    options.startup_timeout,
                    server.logs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether nginx answers its ready path with `nonce` on `port`: then it runs
/// and holds both ports (it binds every listener before it serves any).
async fn ready(port: u16, nonce: &str) -> bool {
    let probe = async {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.write_all(format!("GET {READY_PATH} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        tcp.read_to_end(&mut response).await?;
        io::Result::Ok(String::from_utf8_lossy(&response).contains(nonce))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(true))
    )
}

fn config(
    dir: &Path,
    upstream_port: u16,
    http_port: u16,
    https_port: u16,
    options: &NginxOptions,
    nonce: &str,
) -> String {
    let path = |name: &str| quote(&dir.join(name));
    format!(
        r#"# Written by wsfleet-testkit (Nginx::start): a WebSocket reverse proxy on loopback.
master_process off;
error_log {error_log} info;

events {{
    worker_connections 1024;
}}

http {{
    access_log {access_log};
    client_body_temp_path {client_body};
    proxy_temp_path {proxy};
    fastcgi_temp_path {fastcgi};
    uwsgi_temp_path {uwsgi};
    scgi_temp_path {scgi};

    server {{
        listen 127.0.0.1:{http_port};
        listen 127.0.0.1:{https_port} ssl;
        server_name localhost;
        ssl_certificate {cert};
        ssl_certificate_key {key};
{client_auth}
        location = {READY_PATH} {{
            return 200 "{nonce}\n";
        }}

        location / {{
            proxy_pass http://127.0.0.1:{upstream_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $http_host;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            proxy_buffering off;
        }}
{extra}
    }}
}}
"#,
        error_log = path("error.log"),
        access_log = path("access.log"),
        client_body = path("client_body_temp"),
        proxy = path("proxy_temp"),
        fastcgi = path("fastcgi_temp"),
        uwsgi = path("uwsgi_temp"),
        scgi = path("scgi_temp"),
        cert = quote(&options.cert),
        key = quote(&options.key),
        client_auth = match &options.client_ca {
            Some(ca) => format!(
                "        ssl_client_certificate {};\n        ssl_verify_client on;\n",
                quote(ca)
            ),
            None => String::new(),
        },
        extra = options
            .extra
            .replace("@HTTP_PORT@", &http_port.to_string())
            .replace("@HTTPS_PORT@", &https_port.to_string()),
    )
}

/// A path as a double-quoted nginx string.
fn quote(path: &Path) -> String {
    let text = path.display().to_string();
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The nginx binary: `$WSFLEET_NGINX`, else `nginx` on `PATH`, else `/usr/sbin/nginx`.
fn find_nginx() -> io::Result<PathBuf> {
    if let Some(path) = std::env::var_os("WSFLEET_NGINX").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("nginx"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin/nginx")])
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "nginx is not installed (not on PATH nor /usr/sbin; set WSFLEET_NGINX \
                     to use another binary); {NGINX_SETUP_HINT}"
                ),
            )
        })
}

/// The last 64 KiB of a file (lossy UTF-8), or a note that it cannot be read.
fn tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(64 << 10);
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// A string unique within this machine for a while: pid, counter, clock.
fn unique() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh directory under the system's temporary directory, removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> io::Result<TempDir> {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", unique()));
        std::fs::create_dir(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
