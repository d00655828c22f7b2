//! Fleet-wide restart intensity, as OTP supervisors bound it: at most
//! `max_restarts` in any `period`.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;
use wsfleet_proto::ConfigError;

/// At most `max_restarts` restarts in any window of `period`; past that the
/// whole fleet pauses its reconnects for `pause`.
///
/// Why a budget of restarts and not a retry count per slot: per-slot backoff
/// already spaces one slot's attempts, but 10,000 slots each politely
/// backing off still make a storm against an upstream that is down. A
/// fleet-wide window caps the total rate (tower's retry budget makes the same
/// argument for requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartIntensity {
    /// Restarts allowed in one window.
    pub max_restarts: u32,
    /// The window.
    pub period: Duration,
    /// How long the fleet pauses reconnecting once tripped.
    pub pause: Duration,
}

impl Default for RestartIntensity {
    /// 1,000 restarts per 10 s, then a 5 s pause.
    fn default() -> Self {
        Self {
            max_restarts: 1000,
            period: Duration::from_secs(10),
            pause: Duration::from_secs(5),
        }
    }
}

impl RestartIntensity {
    /// Checks the values.
    ///
    /// # Errors
    /// Zero restarts or a zero period.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_restarts == 0 {
            return Err(ConfigError {
                field: "restart intensity max_restarts",
                value: "0".into(),
                problem: "must be at least 1",
            });
        }
        if self.period.is_zero() {
            return Err(ConfigError {
                field: "restart intensity period",
                value: "0s".into(),
                problem: "must be above zero",
            });
        }
        Ok(())
    }
}

/// The sliding window. Memory is bounded by `max_restarts` timestamps.
#[derive(Debug)]
pub(crate) struct IntensityWindow {
    limits: RestartIntensity,
    recent: VecDeque<Instant>,
    paused_until: Option<Instant>,
}

/// What a recorded restart means for the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Go ahead.
    Allowed,
    /// Wait until then (the fleet is paused).
    PausedUntil(Instant),
    /// This restart tripped the limit: pause until then, and tell the user.
    Tripped(Instant),
}

impl IntensityWindow {
    pub(crate) fn new(limits: RestartIntensity) -> Self {
        Self {
            limits,
            recent: VecDeque::new(),
            paused_until: None,
        }
    }

    /// Records a restart attempt at `now`.
    pub(crate) fn record(&mut self, now: Instant) -> Verdict {
        if let Some(until) = self.paused_until {
            if now < until {
                return Verdict::PausedUntil(until);
            }
            self.paused_until = None;
            self.recent.clear();
        }
        while self
            .recent
            .front()
            .is_some_and(|&t| now.duration_since(t) >= self.limits.period)
        {
            self.recent.pop_front();
        }
        if self.recent.len() as u32 >= self.limits.max_restarts {
            let until = now + self.limits.pause;
            self.paused_until = Some(until);
            return Verdict::Tripped(until);
        }
        self.recent.push_back(now);
        Verdict::Allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_after_max_in_period_then_recovers_after_pause() {
        let limits = RestartIntensity {
            max_restarts: 3,
            period: Duration::from_secs(10),
            pause: Duration::from_secs(5),
        };
        let t0 = Instant::now();
        let mut w = IntensityWindow::new(limits);
        for i in 0..3 {
            assert_eq!(w.record(t0 + Duration::from_secs(i)), Verdict::Allowed);
        }
        let t = t0 + Duration::from_secs(3);
        assert_eq!(w.record(t), Verdict::Tripped(t + Duration::from_secs(5)));
        assert_eq!(
            w.record(t + Duration::from_secs(1)),
            Verdict::PausedUntil(t + Duration::from_secs(5))
        );
        assert_eq!(w.record(t + Duration::from_secs(5)), Verdict::Allowed);
    }

    #[test]
    fn old_restarts_leave_the_window() {
        let limits = RestartIntensity {
            max_restarts: 2,
            period: Duration::from_secs(1),
            pause: Duration::from_secs(5),
        };
        let t0 = Instant::now();
        let mut w = IntensityWindow::new(limits);
        for i in 0..100 {
            // One restart every 600 ms never trips a 2-per-second limit.
            assert_eq!(
                w.record(t0 + Duration::from_millis(600 * i)),
                Verdict::Allowed
            );
        }
        assert!(w.recent.len() <= 2);
    }
}
