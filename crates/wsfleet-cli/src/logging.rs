//! Logs to stderr (`tracing-subscriber`): human lines or JSON
//! (`--log-format`), filtered by `RUST_LOG`; and the one-line live status
//! of `wsfleet run`, which shares the terminal with them.
//!
//! While a status line is shown (stderr is a terminal), every log line is
//! written over it and the status line is drawn again below, so the two
//! never end up on one line.

use std::io::{self, IsTerminal as _, Write};
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Log filter when `RUST_LOG` is not set.
pub(crate) const DEFAULT_LOG_FILTER: &str = "warn,wsfleet=info";

/// Erases the current terminal line and returns to its start.
const CLEAR_LINE: &[u8] = b"\r\x1b[2K";

/// The status line on screen now, if any.
static STATUS: Mutex<Option<String>> = Mutex::new(None);

/// Installs the global subscriber: `format` lines on stderr, filtered by
/// `RUST_LOG` (or [`DEFAULT_LOG_FILTER`]).
pub(crate) fn init(format: LogFormat) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("wsfleet: ignoring RUST_LOG={spec:?} ({e}); using {DEFAULT_LOG_FILTER:?}");
            EnvFilter::new(DEFAULT_LOG_FILTER)
        }),
        Err(_) => EnvFilter::new(DEFAULT_LOG_FILTER),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| StatusAwareStderr);
    match format {
        LogFormat::Text => builder.with_ansi(io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .with_ansi(false)
            .with_current_span(true)
            .init(),
    }
}

/// Shows `line` as the status line, replacing the previous one in place.
pub(crate) fn show_status(line: String) {
    let mut status = STATUS.lock().unwrap_or_else(|p| p.into_inner());
    let mut stderr = io::stderr().lock();
    // Nothing sensible to do if stderr is gone.
    let _ = stderr
        .write_all(CLEAR_LINE)
        .and_then(|()| stderr.write_all(line.as_bytes()))
        .and_then(|()| stderr.flush());
    *status = Some(line);
}

/// Leaves the status line on screen as it is and moves to a fresh line;
/// later log lines no longer redraw it.
pub(crate) fn end_status() {
    let mut status = STATUS.lock().unwrap_or_else(|p| p.into_inner());
    if status.take().is_some() {
        let _ = writeln!(io::stderr());
    }
}

/// Stderr for log lines: erases the status line first and draws it again
/// after the log line.
struct StatusAwareStderr;

impl Write for StatusAwareStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let status = STATUS.lock().unwrap_or_else(|p| p.into_inner());
        let mut stderr = io::stderr().lock();
        match status.as_deref() {
            None => stderr.write_all(buf)?,
            Some(line) => {
                stderr.write_all(CLEAR_LINE)?;
                stderr.write_all(buf)?;
                stderr.write_all(line.as_bytes())?;
            }
        }
        stderr.flush()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}
