//! The peers, in a child process (this same executable run with `--serve`),
//! so their memory, sockets and tasks are not counted as the fleet's, and so
//! killing the child is a real upstream outage: listener gone, every
//! connection reset.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use wsfleet::ConnectionConfig;
use wsfleet::serve::{ChaosMode, ChaosServer, EchoServer};

/// The servers a run asked for, and their URLs.
pub(crate) struct Servers {
    child: Child,
    /// The echo server, `ws://127.0.0.1:PORT/`.
    pub(crate) echo: String,
    /// Each chaos mode's server, if asked for.
    pub(crate) chaos: Vec<(ChaosMode, String)>,
}

impl Servers {
    /// Starts the child: an echo server on `echo_port` (0: any), and with
    /// `chaos` one server per chaos mode.
    pub(crate) async fn start(echo_port: u16, chaos: bool) -> Result<Self, String> {
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
        let mut command = Command::new(exe);
        command.arg("--serve").arg(echo_port.to_string());
        if chaos {
            command.arg("chaos");
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the server process: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut echo = None;
        let mut modes = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut words = line.split_whitespace();
                match (words.next(), words.next(), words.next()) {
                    (Some("echo"), Some(url), None) => echo = Some(url.to_owned()),
                    (Some("chaos"), Some(mode), Some(url)) => {
                        if let Ok(mode) = mode.parse::<ChaosMode>() {
                            modes.push((mode, url.to_owned()));
                        }
                    }
                    (Some("ready"), None, None) => return true,
                    _ => {}
                }
            }
            false
        })
        .await;
        match (read, echo) {
            (Ok(true), Some(echo)) => Ok(Self {
                child,
                echo,
                chaos: modes,
            }),
            _ => Err(format!(
                "the server process did not report its URLs (echo port {echo_port})"
            )),
        }
    }

    /// Kills the child at once: every connection to it is reset and its
    /// ports refuse connections.
    pub(crate) async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }

    /// Stops the child: closing its stdin ends it; killed if it lingers.
    pub(crate) async fn stop(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(3), self.child.wait())
            .await
            .is_err()
        {
            self.kill().await;
        }
    }
}

/// The child's side (`--serve PORT [chaos]`): binds, prints one line per
/// server and `ready`, serves until stdin closes.
pub(crate) async fn serve_child(args: &[String]) -> std::process::ExitCode {
    let port: u16 = args.first().and_then(|p| p.parse().ok()).unwrap_or(0);
    let chaos = args.get(1).map(String::as_str) == Some("chaos");
    // Echo messages up to the fleet's message limit in every scenario.
    let echo = match EchoServer::bind(("127.0.0.1", port), ConnectionConfig::default()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wsfleet-soak --serve: cannot bind the echo server on port {port}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!("echo {}", echo.url());
    let mut hostile = Vec::new();
    if chaos {
        // `stream` and `pin` are peers for memory-budget tests: what a
        // sound client does about them depends on their settings and the
        // budget, so they have no single expected drop reason here.
        let modes = ChaosMode::ALL
            .into_iter()
            .filter(|m| !matches!(m, ChaosMode::Stream | ChaosMode::Pin));
        for mode in modes {
            match ChaosServer::bind("127.0.0.1:0", mode).await {
                Ok(s) => {
                    println!("chaos {mode} {}", s.url());
                    hostile.push(s);
                }
                Err(e) => {
                    eprintln!("wsfleet-soak --serve: cannot bind the {mode} server: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
    }
    println!("ready");
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    drop(hostile);
    drop(echo);
    std::process::ExitCode::SUCCESS
}
