//! Pacing takes, sans I/O: free slots are taken at the fleet's connect
//! rate on average, with jittered gaps (so processes that see the same
//! free slots at the same moment spread out), and at most one tick's worth
//! at once after an idle spell.

use std::time::Duration;

use tokio::time::Instant;

/// When the next take may go.
#[derive(Debug, Clone)]
pub(crate) struct TakePacer {
    next: Instant,
    gap: Duration,
    burst: Duration,
}

impl TakePacer {
    /// `rate` takes per second (a bad rate counts as 200, the fleet's
    /// default connect rate), bursts of at most `burst`'s worth.
    pub(crate) fn new(rate: f64, burst: Duration, now: Instant) -> Self {
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            200.0
        };
        Self {
            next: now,
            gap: Duration::from_secs_f64(1.0 / rate),
            burst,
        }
    }

    /// Whether a take may go at `now`.
    pub(crate) fn ready(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// A take went at `now`; `unit` in `[0, 1)` jitters the gap to the
    /// next (0.5 to 1.5 gaps, one on average).
    pub(crate) fn took(&mut self, now: Instant, unit: f64) {
        let gap = self.gap.mul_f64(0.5 + unit.clamp(0.0, 1.0));
        let floor = now.checked_sub(self.burst).unwrap_or(now);
        self.next = self.next.max(floor) + gap;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes as many as allowed at each tick of `tick` for `span`.
    fn count(pacer: &mut TakePacer, start: Instant, tick: Duration, span: Duration) -> usize {
        let mut n = 0;
        let mut now = start;
        while now < start + span {
            while pacer.ready(now) {
                pacer.took(now, 0.5);
                n += 1;
            }
            now += tick;
        }
        n
    }

    #[test]
    fn takes_follow_the_rate_with_bursts_of_one_tick() {
        let start = Instant::now();
        let tick = Duration::from_millis(100);
        let mut pacer = TakePacer::new(200.0, tick, start);
        let n = count(&mut pacer, start, tick, Duration::from_secs(2));
        // Ticks at 0, 0.1, … 1.9 s: one at the start, then 20 a tick.
        assert!((370..=401).contains(&n), "{n} takes in 2 s at 200/s");
        // After an idle second, one tick's worth at once, not a second's.
        let later = start + Duration::from_secs(3);
        let mut burst = 0;
        while pacer.ready(later) {
            pacer.took(later, 0.5);
            burst += 1;
        }
        assert!((20..=21).contains(&burst), "burst of {burst}");
    }

    #[test]
    fn a_bad_rate_falls_back_to_the_default() {
        let start = Instant::now();
        let tick = Duration::from_millis(10);
        let mut pacer = TakePacer::new(f64::NAN, tick, start);
        let n = count(&mut pacer, start, tick, Duration::from_secs(1));
        assert!((190..=201).contains(&n), "{n}");
    }
}
