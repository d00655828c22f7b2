//! Progress deadlines: a message that has started must keep arriving, and a
//! write must keep being taken.
//!
//! A peer that declares a large frame and then sends a byte every few
//! seconds keeps TCP and keepalive happy while it pins the half-received
//! frame's memory for as long as it likes. `MessageProgress` measures,
//! while a message is under way, the time spent *waiting for the socket*
//! and the bytes that arrived meanwhile, in windows of
//! [`Progress::message`] of waiting: a window in which less than
//! [`Progress::min_rate`] arrived on average ends the connection
//! ([`Error::MessageStalled`](crate::Error::MessageStalled)). Windows, not
//! the average since the message began: a peer that sends 12 MiB at once
//! and then a byte every five seconds is caught in the first window of
//! trickling, not after an hour.
//!
//! Only waiting counts: time the connection did not read because the
//! application had not taken the previous message, or the memory budget
//! paused it, is ours, not the peer's. Plain data driven with `now`.

use std::time::Duration;

use tokio::time::Instant;

/// How fast a started message must arrive, and how long a write may wait.
///
/// ```
/// use std::time::Duration;
/// use wsfleet::Progress;
/// let p = Progress::default().with_message(Duration::from_secs(10));
/// assert_eq!(p.message, Duration::from_secs(10));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// The window over which a started message's arrival rate is checked,
    /// in time spent waiting for it. Default 30 s: far longer than any
    /// network hiccup, short enough that a trickling peer gives its memory
    /// back within a minute.
    pub message: Duration,
    /// The least average rate, in bytes per second of waiting, a message
    /// under way must keep over each [`message`](Self::message) window.
    /// Default 4 KiB/s: a 16 MiB frame may take over an hour at that rate;
    /// a peer sending a byte every few seconds is ended after 30 s.
    pub min_rate: u64,
    /// Longest a `send` or `flush` waits with nothing written (a peer that
    /// stopped reading, a zero TCP window). Default 30 s.
    pub write: Duration,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            message: Duration::from_secs(30),
            min_rate: 4096,
            write: Duration::from_secs(30),
        }
    }
}

impl Progress {
    /// Sets [`Progress::message`].
    #[must_use]
    pub fn with_message(mut self, d: Duration) -> Self {
        self.message = d;
        self
    }

    /// Sets [`Progress::min_rate`] (bytes per second).
    #[must_use]
    pub fn with_min_rate(mut self, bytes_per_second: u64) -> Self {
        self.min_rate = bytes_per_second;
        self
    }

    /// Sets [`Progress::write`].
    #[must_use]
    pub fn with_write(mut self, d: Duration) -> Self {
        self.write = d;
        self
    }
}

/// [`Progress`] as a connection keeps it: every idle connection carries
/// one, so 12 bytes rather than 40.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProgressLimits {
    message_ms: u32,
    min_rate: u32,
    write_ms: u32,
}

impl From<Progress> for ProgressLimits {
    fn from(p: Progress) -> Self {
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        Self {
            message_ms: ms(p.message),
            min_rate: u32::try_from(p.min_rate).unwrap_or(u32::MAX),
            write_ms: ms(p.write),
        }
    }
}

impl ProgressLimits {
    pub(crate) fn write(self) -> Duration {
        Duration::from_millis(u64::from(self.write_ms))
    }
}

/// The message under way stalled: waited this long, got this many bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stalled {
    pub(crate) waited: Duration,
    pub(crate) received: u64,
}

/// Waiting time and bytes of the message under way: boxed, and only while
/// a message is under way, so an idle connection carries a null pointer.
#[derive(Debug, Default)]
pub(crate) struct MessageProgress(Option<Box<Tracking>>);

#[derive(Debug, Default)]
struct Tracking {
    /// Since when the socket has been waited on (read returned pending).
    waiting_since: Option<Instant>,
    /// The message under way: waiting time and bytes in the current window.
    current: Option<(Duration, u64)>,
}

impl MessageProgress {
    /// A read found nothing while a message is under way: waiting for the
    /// peer starts (if not already). Between messages nothing is tracked.
    pub(crate) fn on_pending(&mut self, mid_message: bool) {
        if mid_message {
            let tracking = self.0.get_or_insert_default();
            if tracking.waiting_since.is_none() {
                tracking.waiting_since = Some(Instant::now());
            }
        }
    }

    /// We stop reading for our own reasons (consumer, budget): that time is
    /// not the peer's.
    pub(crate) fn pause(&mut self) {
        if let Some(tracking) = &mut self.0 {
            tracking.waiting_since = None;
        }
    }

    /// `n` bytes arrived at `now`; `mid_message` tells whether a message
    /// was under way while we waited for them.
    pub(crate) fn on_read(
        &mut self,
        now: Instant,
        n: usize,
        mid_message: bool,
        limits: &ProgressLimits,
    ) -> Result<(), Stalled> {
        if !mid_message {
            self.0 = None;
            return Ok(());
        }
        let tracking = self.0.get_or_insert_default();
        let waited = tracking
            .waiting_since
            .take()
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        let (total, bytes) = tracking.current.get_or_insert((Duration::ZERO, 0));
        *total += waited;
        *bytes += n as u64;
        if *total >= Duration::from_millis(u64::from(limits.message_ms)) {
            let floor = (f64::from(limits.min_rate) * total.as_secs_f64()) as u64;
            if *bytes < floor {
                return Err(Stalled {
                    waited: *total,
                    received: *bytes,
                });
            }
            // Fast enough in this window: the next one starts.
            tracking.current = Some((Duration::ZERO, 0));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// `on_pending` at a chosen time, as the driver does at `Instant::now()`.
    fn pending_at(p: &mut MessageProgress, now: Instant) {
        p.0.get_or_insert_default().waiting_since = Some(now);
    }

    #[test]
    fn a_trickle_into_a_started_message_is_stalled_after_the_deadline() {
        let limits = ProgressLimits::from(Progress::default());
        let mut p = MessageProgress::default();
        let mut now = Instant::now();
        // A header, 12 MiB at once, then a byte every 5 s.
        pending_at(&mut p, now);
        p.on_read(now, 14, false, &limits).unwrap();
        pending_at(&mut p, now);
        now += S;
        p.on_read(now, 12 << 20, true, &limits).unwrap();
        let mut reads = 0;
        let stalled = loop {
            pending_at(&mut p, now);
            now += 5 * S;
            reads += 1;
            if let Err(s) = p.on_read(now, 1, true, &limits) {
                break s;
            }
            assert!(reads < 100);
        };
        // The burst filled the first window; the next 30 s brought 6 bytes.
        assert_eq!(stalled.waited, 30 * S);
        assert_eq!(stalled.received, 6);
        assert!(reads <= 12, "{reads} trickles");
    }

    #[test]
    fn a_slow_but_steady_message_and_waits_between_messages_pass() {
        let limits = ProgressLimits::from(Progress::default());
        let mut p = MessageProgress::default();
        let mut now = Instant::now();
        // Five minutes of 8 KiB/s into one message.
        for _ in 0..300 {
            pending_at(&mut p, now);
            now += S;
            p.on_read(now, 8192, true, &limits).unwrap();
        }
        // A minute of silence between messages counts for nothing.
        pending_at(&mut p, now);
        now += 60 * S;
        p.on_read(now, 10, false, &limits).unwrap();
        pending_at(&mut p, now);
        now += S;
        p.on_read(now, 10, true, &limits).unwrap();
    }

    #[test]
    fn time_not_spent_waiting_on_the_peer_does_not_count() {
        let limits = ProgressLimits::from(Progress::default());
        let mut p = MessageProgress::default();
        let mut now = Instant::now();
        pending_at(&mut p, now);
        now += S;
        p.on_read(now, 100, true, &limits).unwrap();
        // Paused for memory (or the consumer) for ten minutes.
        pending_at(&mut p, now);
        p.pause();
        now += 600 * S;
        p.on_read(now, 100, true, &limits).unwrap();
    }
}
