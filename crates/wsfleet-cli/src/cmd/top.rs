//! `wsfleet top`: fetches the admin endpoint in a tokio task and runs the
//! view on a blocking thread, until a quit key or SIGINT/SIGTERM.

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{anyhow, bail};
use tokio::sync::mpsc;

use super::Signals;
use crate::cli::TopArgs;
use crate::top::{self, AdminClient};

/// Shows the fleet behind `--admin` until quit; the terminal is restored
/// however it ends.
///
/// # Errors
/// If stdout is not a terminal, or the terminal fails.
pub(crate) async fn run(args: TopArgs) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() {
        bail!(
            "wsfleet top draws a full-screen view and needs a terminal on stdout; \
             scripts can read http://{}/connections and /metrics directly",
            args.admin
        );
    }
    let mut signals = Signals::install()?;
    // Holds at most one fetched snapshot: the fetcher waits for the view.
    let (updates, received) = mpsc::channel(1);
    let fetcher = tokio::spawn(top::poll(
        AdminClient::new(args.admin.clone()),
        args.interval,
        updates,
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let mut ui = tokio::task::spawn_blocking({
        let stop = stop.clone();
        move || top::run_ui(args.admin, args.interval, args.pool, received, &stop)
    });
    let joined = tokio::select! {
        joined = &mut ui => joined,
        _ = signals.recv() => {
            // The view notices within its input poll and restores the terminal.
            stop.store(true, Ordering::Relaxed);
            ui.await
        }
    };
    fetcher.abort();
    joined.map_err(|e| anyhow!("the view crashed: {e}"))?
}
