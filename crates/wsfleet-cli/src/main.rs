//! The `wsfleet` command: `run` a fleet of WebSocket client connections,
//! `connect` one to stdin/stdout, `serve` an echo server.
//!
//! This file only parses the command line, sets up logging and reports
//! errors; the commands live in [`cmd`], the flags in [`cli`].
//!
//! Dependencies: `clap` (command line), `tokio` (runtime, signals, stdio),
//! `tokio-util` (cancellation), `tracing-subscriber` (logs to stderr, text
//! or JSON), `serde` + `toml` (`run --config`), `serde_json` + `base64`
//! (`run --output jsonl`), `anyhow` (error reporting, in this binary only),
//! `libc` (glibc's malloc settings and trim, in [`memory`]).

// The flags' doc comments are clap's --help text, read in a terminal: URLs
// and `[user:pass@]` stay plain text there, not rustdoc links.
#![allow(rustdoc::bare_urls, rustdoc::broken_intra_doc_links)]

mod cli;
mod cmd;
mod credentials;
mod logging;
mod memory;
mod top;
mod units;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before any thread starts (glibc reads these settings without a lock).
    let tuned = memory::tune_allocator();
    // Usage errors, --help and --version exit here (2, 0, 0).
    let cli = cli::Cli::parse();
    logging::init(cli.log_format);
    if let Err(e) = tuned {
        tracing::warn!("{e}");
    }
    match cmd::execute(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            report(&error);
            // A bad config file or setting found after parsing is a usage
            // error too.
            if error.is::<cmd::UsageError>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Prints an error and its causes on one line of stderr. The library's
/// errors either show their cause or return it as `source()`, never both,
/// so each text appears once.
fn report(error: &anyhow::Error) {
    eprintln!("wsfleet: error: {error:#}");
}
