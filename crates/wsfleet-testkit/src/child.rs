//! A server peer run as a child process that reports its port on stdout
//! (`LISTENING <port>`): the Python `websockets`, aiohttp and Node `ws` peers.

use std::io;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

use crate::capture::Captured;

/// A running child server; killed when dropped.
#[derive(Debug)]
pub(crate) struct ChildServer {
    child: Child,
    // Held open: the child exits when it closes (the servers watch their stdin).
    stdin: Option<ChildStdin>,
    port: u16,
    stderr: Captured,
}

impl ChildServer {
    /// Spawns `cmd` (stdio is set up here) and waits at most `startup_timeout`
    /// for its `LISTENING <port>` line.
    ///
    /// `what` names the server in errors; `hint` may add a line to a startup
    /// error, given the child's stderr.
    pub(crate) async fn spawn(
        cmd: Command,
        what: &str,
        startup_timeout: Duration,
        hint: fn(&str) -> Option<String>,
    ) -> io::Result<ChildServer> {
        let (server, mut lines) = Self::spawn_with_stdout(cmd, what, startup_timeout, hint).await?;
        // Drain stdout so a chatty server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(server)
    }

    /// As [`ChildServer::spawn`], but hands back the rest of stdout (after the
    /// `LISTENING` line) instead of draining it: the caller must keep reading it,
    /// or the child blocks once the pipe is full.
    pub(crate) async fn spawn_with_stdout(
        mut cmd: Command,
        what: &str,
        startup_timeout: Duration,
        hint: fn(&str) -> Option<String>,
    ) -> io::Result<(ChildServer, Lines<BufReader<ChildStdout>>)> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("spawning {what} ({:?}): {e}", cmd.as_std()),
            )
        })?;
        let stdin = child.stdin.take();
        let (stderr, stderr_done) =
            Captured::spawn_reader(child.stderr.take().expect("stderr is piped"));
        let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();

        let startup = tokio::time::timeout(startup_timeout, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(port) = line.strip_prefix("LISTENING ") {
                    return port.trim().parse::<u16>().map(Some).map_err(|e| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("bad port line {line:?}: {e}"),
                        )
                    });
                }
            }
            Ok(None) // stdout closed: the server exited
        })
        .await;
        let problem = match startup {
            Ok(Ok(Some(port))) => {
                let server = ChildServer {
                    child,
                    stdin,
                    port,
                    stderr,
                };
                return Ok((server, lines));
            }
            Ok(Ok(None)) => "exited before it reported its port".to_owned(),
            Ok(Err(e)) => format!("failed while starting: {e}"),
            Err(_) => format!("did not report its port within {startup_timeout:?}"),
        };
        Err(startup_error(what, &problem, child, &stderr, stderr_done, hint).await)
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// The child's stdin, for peers that take commands there. Whoever takes it
    /// must keep it open as long as the child should run.
    pub(crate) fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.stdin.take()
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub(crate) fn stderr(&self) -> String {
        self.stderr.text()
    }

    pub(crate) async fn kill(&mut self) -> io::Result<()> {
        self.child.kill().await
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        // kill_on_drop does the same; being explicit costs nothing.
        let _ = self.child.start_kill();
    }
}

/// Kills `child` and builds an error with `what`, `problem`, the exit status,
/// the captured stderr and a hint.
pub(crate) async fn startup_error(
    what: &str,
    problem: &str,
    mut child: Child,
    stderr: &Captured,
    stderr_done: JoinHandle<()>,
    hint: fn(&str) -> Option<String>,
) -> io::Error {
    let _ = child.start_kill();
    let status: Option<ExitStatus> = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .ok()
        .and_then(Result::ok);
    let _ = tokio::time::timeout(Duration::from_secs(2), stderr_done).await;
    let text = stderr.text();
    let hint = hint(&text).map_or_else(String::new, |h| format!("\nhint: {h}"));
    io::Error::other(format!(
        "{what} {problem} ({}); its stderr:\n{}{hint}",
        status.map_or_else(|| "exit status unknown".to_owned(), |s| s.to_string()),
        if text.trim().is_empty() {
            "(empty)"
        } else {
            text.trim_end()
        },
    ))
}
