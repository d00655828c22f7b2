//! `wsfleet serve`: an echo server (the same one `run` embeds for its demo)
//! or, with `--chaos MODE`, a hostile one, until SIGINT/SIGTERM.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use wsfleet::ConnectionConfig;
use wsfleet::serve::{ChaosServer, EchoServer};

use super::Signals;
use crate::cli::ServeArgs;

/// Time given to the echo server's close handshakes (1001) on shutdown.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serves until a signal; prints `listening on ws://ADDR/` once bound.
///
/// # Errors
/// If the address cannot be bound or stdout is gone.
pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    match args.chaos {
        None => {
            let server = EchoServer::bind(args.listen, ConnectionConfig::default())
                .await
                .with_context(|| format!("cannot listen on {}", args.listen))?;
            announce(&server.url())?;
            tracing::info!(addr = %server.local_addr(), "echo server started");
            let signal = signals.recv().await;
            tracing::info!(
                signal,
                "stopping the echo server: closing connections (1001)"
            );
            server.shutdown(CLOSE_GRACE).await;
        }
        Some(mode) => {
            let server = ChaosServer::bind(args.listen, mode)
                .await
                .with_context(|| format!("cannot listen on {}", args.listen))?;
            announce(&server.url())?;
            tracing::warn!(
                addr = %server.local_addr(),
                mode = mode.name(),
                "chaos server started: every connection misbehaves ({})",
                mode.describe()
            );
            let signal = signals.recv().await;
            tracing::info!(signal, "stopping the chaos server");
            drop(server);
        }
    }
    Ok(())
}

/// The first stdout line, which scripts and tests read: `listening on URL`.
fn announce(url: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {url}")
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")
}
