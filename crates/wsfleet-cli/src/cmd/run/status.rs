//! The live status of `wsfleet run`: one line refreshed in place on a
//! terminal, a log line every few seconds otherwise.

use std::time::Duration;

use tokio::time::Instant;
use wsfleet::fleet::{ConnState, FleetStats};

use crate::logging;
use crate::units::format_size;

/// Status refresh on a terminal.
const TTY_EVERY: Duration = Duration::from_secs(1);
/// Status log line when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Fleet-wide numbers at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// Connections wanted (this shard's slots).
    pub(crate) target: usize,
    /// Connections ready now.
    pub(crate) ready: usize,
    /// Messages sent since start.
    pub(crate) sent: u64,
    /// Messages received since start.
    pub(crate) received: u64,
    /// Reconnects since start.
    pub(crate) reconnects: u64,
    /// Bytes all connections' buffers hold now (what the memory budget
    /// counts; exact, unlike the sum of the per-connection numbers, which
    /// are refreshed only when a connection has traffic).
    pub(crate) budget_used: u64,
    /// The budget.
    pub(crate) budget_max: u64,
    /// Of `budget_used`: received messages not yet written out.
    pub(crate) budget_handed: u64,
    /// Connections not reading until the budget has room.
    pub(crate) paused: usize,
}

impl Snapshot {
    /// Two pools' numbers together (they share one budget: its figures are
    /// the larger of the two, not a sum).
    #[must_use]
    pub(crate) fn add(self, other: Self) -> Self {
        Self {
            target: self.target + other.target,
            ready: self.ready + other.ready,
            sent: self.sent + other.sent,
            received: self.received + other.received,
            reconnects: self.reconnects + other.reconnects,
            budget_used: self.budget_used.max(other.budget_used),
            budget_max: self.budget_max.max(other.budget_max),
            budget_handed: self.budget_handed.max(other.budget_handed),
            paused: self.paused + other.paused,
        }
    }

    pub(crate) fn of(stats: &FleetStats) -> Self {
        let bytes = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        Self {
            target: stats.target,
            ready: stats.ready,
            sent: stats.totals.msgs_out,
            received: stats.totals.msgs_in,
            reconnects: stats.reconnects,
            budget_used: bytes(stats.budget_used),
            budget_max: bytes(stats.budget_max),
            budget_handed: bytes(stats.budget_handed),
            paused: stats
                .connections
                .iter()
                .filter(|c| c.state == ConnState::Paused)
                .count(),
        }
    }
}

/// The status display.
pub(crate) struct Status {
    tty: bool,
    /// How often to show it.
    pub(crate) every: Duration,
    /// When the rate was last measured, and the messages received then.
    last: (Instant, u64),
    /// The rate measured then, in messages per second.
    rate: f64,
}

impl Status {
    pub(crate) fn new(tty: bool) -> Self {
        Self {
            tty,
            every: if tty { TTY_EVERY } else { LOG_EVERY },
            last: (Instant::now(), 0),
            rate: 0.0,
        }
    }

    pub(crate) fn show(&mut self, now: &Snapshot) {
        let line = self.line(now);
        if self.tty {
            logging::show_status(line);
        } else {
            tracing::info!("{line}");
        }
    }

    /// Shows the final numbers and ends the in-place line, so later output
    /// starts on a fresh one.
    pub(crate) fn finish(&mut self, now: &Snapshot) {
        if self.tty {
            self.show(now);
            logging::end_status();
        }
    }

    pub(crate) fn line(&mut self, now: &Snapshot) -> String {
        let at = Instant::now();
        let (then, received) = self.last;
        let secs = at.duration_since(then).as_secs_f64();
        // A line made right after the previous one (the final one, at
        // stop) keeps the rate measured over the last full period.
        if secs >= self.every.as_secs_f64() / 2.0 {
            #[allow(clippy::cast_precision_loss)]
            let delta = now.received.saturating_sub(received) as f64;
            self.rate = delta / secs;
            self.last = (at, now.received);
        }
        let rate = self.rate;
        let rss = rss_bytes().map_or_else(|| "?".to_owned(), format_size);
        format!(
            "ready {}/{} | sent {} | received {} | {rate:.0} msgs/s | reconnects {} | buffered {} of {} budget ({} in messages) | paused {} | rss {rss}",
            now.ready,
            now.target,
            now.sent,
            now.received,
            now.reconnects,
            format_size(now.budget_used),
            format_size(now.budget_max),
            format_size(now.budget_handed),
            now.paused,
        )
    }
}

/// Resident set size of this process: `/proc/self/statm`'s second field
/// (pages) × 4096. `None` where there is no such file.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    parse_statm_rss(&statm)
}

fn parse_statm_rss(statm: &str) -> Option<u64> {
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    pages.checked_mul(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statm() {
        assert_eq!(
            parse_statm_rss("1000 250 100 1 0 300 0\n"),
            Some(250 * 4096)
        );
        assert_eq!(parse_statm_rss("1000"), None);
        assert_eq!(parse_statm_rss(""), None);
        assert_eq!(parse_statm_rss("1 x"), None);
    }

    #[test]
    fn rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(rss_bytes().is_some_and(|b| b > 0));
        }
    }

    #[test]
    fn status_line_has_every_field() {
        let mut status = Status::new(false);
        let line = status.line(&Snapshot {
            target: 20,
            ready: 19,
            sent: 100,
            received: 99,
            reconnects: 3,
            budget_used: 2048,
            budget_max: 1 << 30,
            budget_handed: 1024,
            paused: 2,
        });
        for part in [
            "ready 19/20",
            "sent 100",
            "received 99",
            "msgs/s",
            "reconnects 3",
            "buffered 2.0 KiB of 1.0 GiB budget (1.0 KiB in messages)",
            "paused 2",
            "rss ",
        ] {
            assert!(line.contains(part), "{part:?} missing in {line:?}");
        }
    }
}
