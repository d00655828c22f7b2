//! `wsfleet serve`: an echo server until SIGINT/SIGTERM.

use std::io::Write as _;

use anyhow::Context as _;
use wsfleet::ConnectionConfig;
use wsfleet::serve::EchoServer;

use super::Signals;
use crate::cli::ServeArgs;

/// Serves until a signal; prints `listening on ws://ADDR/` once bound.
///
/// # Errors
/// If the address cannot be bound or stdout is gone.
pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    let server = EchoServer::bind(args.listen, ConnectionConfig::default())
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {}", server.url())
            .and_then(|()| stdout.flush())
            .context("cannot write to stdout")?;
    }
    tracing::info!(addr = %server.local_addr(), "echo server started");
    let signal = signals.recv().await;
    tracing::info!(signal, "stopping the echo server");
    drop(server);
    Ok(())
}
