//! The peers, in a child process (this same executable run with `--serve`),
//! so their memory, sockets and tasks are not counted as the fleet's, and so
//! killing the child is a real upstream outage: listener gone, every
//! connection reset.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use wsfleet::ConnectionConfig;
use wsfleet::serve::{ChaosMode, ChaosServer, ChaosSettings, EchoServer};

/// A peer of the memory-budget runs (`crate::budget`): a chaos mode with
/// settings that fit a budget test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BudgetPeer {
    /// `stream`: 1 MiB binary messages, sequence-numbered, as fast as the
    /// client reads them (the stalled consumer's upstream).
    Flood,
    /// `stream`: 1 MiB every 200 ms (a healthy busy upstream).
    Paced,
    /// `pin`: 12 MiB of a 16 MiB frame, then a byte every 5 s.
    Pin,
}

impl BudgetPeer {
    const ALL: [BudgetPeer; 3] = [Self::Flood, Self::Paced, Self::Pin];

    fn name(self) -> &'static str {
        match self {
            Self::Flood => "flood",
            Self::Paced => "paced",
            Self::Pin => "pin",
        }
    }

    fn server(self) -> (ChaosMode, ChaosSettings) {
        let stream = ChaosSettings::default().with_message_size(1 << 20);
        match self {
            Self::Flood => (ChaosMode::Stream, stream),
            Self::Paced => (
                ChaosMode::Stream,
                stream.with_interval(Duration::from_millis(200)),
            ),
            Self::Pin => (
                ChaosMode::Pin,
                ChaosSettings::default()
                    .with_pin_frame(16 << 20)
                    .with_pin_prefix(12 << 20)
                    .with_trickle(Duration::from_secs(5)),
            ),
        }
    }
}

/// The servers a run asked for, and their URLs.
pub(crate) struct Servers {
    child: Child,
    /// The echo server, `ws://127.0.0.1:PORT/`.
    pub(crate) echo: String,
    /// Each chaos mode's server, if asked for.
    pub(crate) chaos: Vec<(ChaosMode, String)>,
    /// Each memory-budget peer, if asked for.
    pub(crate) budget: Vec<(BudgetPeer, String)>,
}

/// Which servers the child runs besides the echo server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peers {
    /// The echo server only.
    Echo,
    /// One server per chaos mode of the every-mode soak.
    Chaos,
    /// The memory-budget peers ([`BudgetPeer`]).
    Budget,
}

impl Servers {
    /// Starts the child: an echo server on `echo_port` (0: any), and with
    /// `chaos` one server per chaos mode.
    pub(crate) async fn start(echo_port: u16, chaos: bool) -> Result<Self, String> {
        Self::start_with(echo_port, if chaos { Peers::Chaos } else { Peers::Echo }).await
    }

    /// Starts the child: an echo server on `echo_port` (0: any) and `peers`.
    pub(crate) async fn start_with(echo_port: u16, peers: Peers) -> Result<Self, String> {
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
        let mut command = Command::new(exe);
        command.arg("--serve").arg(echo_port.to_string());
        match peers {
            Peers::Echo => {}
            Peers::Chaos => {
                command.arg("chaos");
            }
            Peers::Budget => {
                command.arg("budget");
            }
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
        let mut budget = Vec::new();
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
                    (Some("budget"), Some(name), Some(url)) => {
                        if let Some(peer) = BudgetPeer::ALL.into_iter().find(|p| p.name() == name) {
                            budget.push((peer, url.to_owned()));
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
                budget,
            }),
            _ => Err(format!(
                "the server process did not report its URLs (echo port {echo_port})"
            )),
        }
    }

    /// The URL of a memory-budget peer (started with [`Peers::Budget`]).
    pub(crate) fn budget_url(&self, peer: BudgetPeer) -> Result<String, String> {
        self.budget
            .iter()
            .find(|(p, _)| *p == peer)
            .map(|(_, url)| url.clone())
            .ok_or_else(|| format!("the server process runs no {} peer", peer.name()))
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

/// The child's side (`--serve PORT [chaos|budget]`): binds, prints one line
/// per server and `ready`, serves until stdin closes.
pub(crate) async fn serve_child(args: &[String]) -> std::process::ExitCode {
    let port: u16 = args.first().and_then(|p| p.parse().ok()).unwrap_or(0);
    let chaos = args.get(1).map(String::as_str) == Some("chaos");
    let budget = args.get(1).map(String::as_str) == Some("budget");
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
        // `stream` and `pin` are peers for memory-budget tests, run in
        // phases of their own with settings that fit the budget (budget.rs:
        // stalled consumer, pinning). Here, at the soak's 256 KiB frame
        // limit, both would only repeat lying-length: their 4 and 16 MiB
        // frame headers are refused at the header (FrameTooLarge, 1009).
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
    if budget {
        for peer in BudgetPeer::ALL {
            let (mode, settings) = peer.server();
            match ChaosServer::bind_with("127.0.0.1:0", mode, settings).await {
                Ok(s) => {
                    println!("budget {} {}", peer.name(), s.url());
                    hostile.push(s);
                }
                Err(e) => {
                    eprintln!(
                        "wsfleet-soak --serve: cannot bind the {} server: {e}",
                        peer.name()
                    );
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
