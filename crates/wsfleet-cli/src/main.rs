//! The `wsfleet` command: `run` a fleet of WebSocket client connections,
//! `connect` one to stdin/stdout, `serve` an echo server.
//!
//! This file only parses the command line, sets up logging and reports
//! errors; the commands live in [`cmd`], the flags in [`cli`].
//!
//! Dependencies: `clap` (command line), `tokio` (runtime, signals, stdio),
//! `tokio-util` (cancellation), `tracing-subscriber` (logs to stderr),
//! `anyhow` (error reporting, in this binary only).

mod cli;
mod cmd;
mod units;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Log filter when `RUST_LOG` is not set.
const DEFAULT_LOG_FILTER: &str = "warn,wsfleet=info";

fn main() -> ExitCode {
    // Usage errors, --help and --version exit here (2, 0, 0).
    let cli = cli::Cli::parse();
    init_logging();
    match cmd::execute(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            report(&error);
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (or [`DEFAULT_LOG_FILTER`]).
fn init_logging() {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("wsfleet: ignoring RUST_LOG={spec:?} ({e}); using {DEFAULT_LOG_FILTER:?}");
            EnvFilter::new(DEFAULT_LOG_FILTER)
        }),
        Err(_) => EnvFilter::new(DEFAULT_LOG_FILTER),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Prints an error and its causes on one line of stderr. A cause whose text
/// the message already contains is left out (several library errors include
/// their source's text in their own).
fn report(error: &anyhow::Error) {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !message.contains(&cause) {
            message.push_str(": ");
            message.push_str(&cause);
        }
    }
    eprintln!("wsfleet: error: {message}");
}
