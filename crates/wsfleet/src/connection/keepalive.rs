//! Keepalive policy: ping after a quiet interval, fail if nothing comes back
//! within the pong timeout. Any received byte counts as a sign of life, so a
//! busy connection sends no pings. The other way round, a peer that pings
//! far more often than any keepalive needs is flooding: past
//! [`Keepalive::peer_ping_limit`] pings in a second the connection ends.

use std::time::Duration;

use tokio::time::Instant;

use super::Error;

/// When to ping and how long to wait for an answer.
///
/// ```
/// use std::time::Duration;
/// use wsfleet::Keepalive;
/// let k = Keepalive::default().with_interval(Some(Duration::from_secs(5)));
/// assert_eq!(k.interval, Some(Duration::from_secs(5)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Keepalive {
    /// Quiet time (nothing received) after which a ping is sent. `None`
    /// disables pings (a silent peer is then never detected). Default 20 s.
    pub interval: Option<Duration>,
    /// How long after a ping some byte must arrive before the connection is
    /// declared dead. Default 10 s.
    pub pong_timeout: Duration,
    /// Most pings the peer may send within one second; one more ends the
    /// connection with [`Error::PingFlood`](crate::Error::PingFlood) (close
    /// 1008). Each ping costs a pong and the CPU to parse both, so an
    /// unbounded flood would let one server starve every other connection
    /// of the process. `None`: no limit. Default 100, far above any
    /// keepalive (servers ping every few seconds).
    pub peer_ping_limit: Option<u32>,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            interval: Some(Duration::from_secs(20)),
            pong_timeout: Duration::from_secs(10),
            peer_ping_limit: Some(100),
        }
    }
}

impl Keepalive {
    /// Sets [`Keepalive::interval`].
    #[must_use]
    pub fn with_interval(mut self, interval: Option<Duration>) -> Self {
        self.interval = interval;
        self
    }

    /// Sets [`Keepalive::pong_timeout`].
    #[must_use]
    pub fn with_pong_timeout(mut self, timeout: Duration) -> Self {
        self.pong_timeout = timeout;
        self
    }

    /// Sets [`Keepalive::peer_ping_limit`].
    #[must_use]
    pub fn with_peer_ping_limit(mut self, per_second: Option<u32>) -> Self {
        self.peer_ping_limit = per_second;
        self
    }
}

/// What the timer asks the driver to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Nothing now; sleep until the returned deadline.
    Wait(Instant),
    /// Send a ping, then sleep until the returned deadline.
    Ping(Instant),
    /// No sign of life within the pong timeout.
    Dead,
}

/// The keepalive state machine: plain data, driven with `now`.
#[derive(Debug, Clone)]
pub(crate) struct KeepaliveState {
    config: Keepalive,
    last_rx: Instant,
    ping_sent: Option<Instant>,
    /// Start of the current one-second window of peer pings, and how many
    /// arrived in it.
    peer_pings: (Instant, u32),
}

/// The window [`Keepalive::peer_ping_limit`] counts over.
const PEER_PING_WINDOW: Duration = Duration::from_secs(1);

/// The wait of a timer with nothing to wait for: a day, far enough to never
/// fire in practice, near enough to stay a valid `Instant`.
pub(crate) const NOTHING_DUE: Duration = Duration::from_secs(86_400);

impl KeepaliveState {
    pub(crate) fn new(config: Keepalive, now: Instant) -> Self {
        Self {
            config,
            last_rx: now,
            ping_sent: None,
            peer_pings: (now, 0),
        }
    }

    /// The connection resumes reading after a pause for memory at `now`:
    /// silence while it did not read proves nothing, so the quiet interval
    /// starts again (and a ping sent before the pause is forgotten).
    pub(crate) fn on_resume(&mut self, now: Instant) {
        self.last_rx = now;
        self.ping_sent = None;
    }

    /// The peer sent a ping at `now`. [`Error::PingFlood`] once more than
    /// the limit arrived within one window (fixed windows: a burst
    /// straddling two may reach twice the limit before it is refused, which
    /// is still bounded).
    pub(crate) fn on_peer_ping(&mut self, now: Instant) -> Result<(), Error> {
        let Some(limit) = self.config.peer_ping_limit else {
            return Ok(());
        };
        let (start, count) = &mut self.peer_pings;
        if now.duration_since(*start) >= PEER_PING_WINDOW {
            *start = now;
            *count = 0;
        }
        *count += 1;
        if *count > limit {
            Err(Error::PingFlood {
                pings: *count,
                limit,
            })
        } else {
            Ok(())
        }
    }

    /// The first deadline, or `None` when keepalive is off.
    pub(crate) fn first_deadline(&self) -> Option<Instant> {
        self.config.interval.map(|i| self.last_rx + i)
    }

    /// The configured pong timeout.
    pub(crate) fn pong_timeout(&self) -> Duration {
        self.config.pong_timeout
    }

    /// When bytes last arrived (or the connection opened).
    pub(crate) fn last_rx(&self) -> Instant {
        self.last_rx
    }

    /// Bytes arrived at `now`.
    pub(crate) fn on_receive(&mut self, now: Instant) {
        self.last_rx = now;
    }

    /// A pong arrived at `now`: the round trip of our outstanding ping, if
    /// one is (an unsolicited pong, or a second one, measures nothing).
    pub(crate) fn on_pong(&mut self, now: Instant) -> Option<Duration> {
        let sent = self.ping_sent.take()?;
        self.last_rx = now;
        Some(now.saturating_duration_since(sent))
    }

    /// The timer fired at `now`.
    pub(crate) fn on_timer(&mut self, now: Instant) -> Action {
        let Some(interval) = self.config.interval else {
            return Action::Wait(now + NOTHING_DUE);
        };
        if let Some(sent) = self.ping_sent {
            if self.last_rx >= sent {
                self.ping_sent = None;
            } else if now >= sent + self.config.pong_timeout {
                return Action::Dead;
            } else {
                return Action::Wait(sent + self.config.pong_timeout);
            }
        }
        let due = self.last_rx + interval;
        if now >= due {
            self.ping_sent = Some(now);
            Action::Ping(now + self.config.pong_timeout)
        } else {
            Action::Wait(due)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_pings_are_counted_per_second() {
        let t0 = Instant::now();
        let mut k = KeepaliveState::new(Keepalive::default().with_peer_ping_limit(Some(3)), t0);
        for _ in 0..3 {
            assert!(k.on_peer_ping(t0).is_ok());
        }
        assert!(matches!(
            k.on_peer_ping(t0 + Duration::from_millis(999)),
            Err(Error::PingFlood { pings: 4, limit: 3 })
        ));
        // A new window starts afresh.
        let mut k = KeepaliveState::new(Keepalive::default().with_peer_ping_limit(Some(3)), t0);
        for i in 0..30u64 {
            // Three a second, for ten seconds: never too many.
            assert!(k.on_peer_ping(t0 + Duration::from_millis(i * 334)).is_ok());
        }
        let mut off = KeepaliveState::new(Keepalive::default().with_peer_ping_limit(None), t0);
        for _ in 0..10_000 {
            assert!(off.on_peer_ping(t0).is_ok());
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn quiet_connection_pings_then_dies_without_answer() {
        let t0 = Instant::now();
        let mut k = KeepaliveState::new(Keepalive::default(), t0);
        assert_eq!(k.first_deadline(), Some(t0 + secs(20)));
        assert_eq!(k.on_timer(t0 + secs(20)), Action::Ping(t0 + secs(30)));
        assert_eq!(k.on_timer(t0 + secs(25)), Action::Wait(t0 + secs(30)));
        assert_eq!(k.on_timer(t0 + secs(30)), Action::Dead);
    }

    #[test]
    fn an_answer_resets_the_cycle() {
        let t0 = Instant::now();
        let mut k = KeepaliveState::new(Keepalive::default(), t0);
        assert_eq!(k.on_timer(t0 + secs(20)), Action::Ping(t0 + secs(30)));
        k.on_receive(t0 + secs(21));
        assert_eq!(k.on_timer(t0 + secs(30)), Action::Wait(t0 + secs(41)));
        assert_eq!(k.on_timer(t0 + secs(41)), Action::Ping(t0 + secs(51)));
    }

    #[test]
    fn a_pong_measures_the_round_trip_of_the_ping_once() {
        let t0 = Instant::now();
        let mut k = KeepaliveState::new(Keepalive::default(), t0);
        assert_eq!(k.on_pong(t0 + secs(1)), None, "no ping outstanding");
        assert_eq!(k.on_timer(t0 + secs(20)), Action::Ping(t0 + secs(30)));
        let rtt = k.on_pong(t0 + secs(20) + Duration::from_millis(7));
        assert_eq!(rtt, Some(Duration::from_millis(7)));
        assert_eq!(k.on_pong(t0 + secs(21)), None);
        // The answer reset the cycle.
        let answered = t0 + secs(20) + Duration::from_millis(7);
        assert_eq!(k.on_timer(t0 + secs(30)), Action::Wait(answered + secs(20)));
    }

    #[test]
    fn busy_connection_never_pings() {
        let t0 = Instant::now();
        let mut k = KeepaliveState::new(Keepalive::default(), t0);
        for s in 1..100 {
            k.on_receive(t0 + secs(s * 10));
            assert!(matches!(k.on_timer(t0 + secs(s * 10 + 5)), Action::Wait(_)));
        }
    }
}
