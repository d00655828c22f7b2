//! The fleet's connect rate: a pacer every slot passes before it dials, so
//! 10,000 slots do not stampede the upstream.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Spaces connection attempts `1 / per_second` apart, fleet-wide.
#[derive(Debug)]
pub(crate) struct Pacer {
    interval: Duration,
    next: Mutex<Option<Instant>>,
}

impl Pacer {
    pub(crate) fn new(per_second: f64) -> Self {
        Self {
            interval: Duration::from_secs_f64(1.0 / per_second),
            next: Mutex::new(None),
        }
    }

    /// The instant the caller may dial at (reserving it).
    pub(crate) fn reserve(&self, now: Instant) -> Instant {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let at = next.map_or(now, |n| n.max(now));
        *next = Some(at + self.interval);
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_spaced_by_the_interval() {
        let pacer = Pacer::new(100.0);
        let t0 = Instant::now();
        let slots: Vec<Instant> = (0..5).map(|_| pacer.reserve(t0)).collect();
        for (i, at) in slots.iter().enumerate() {
            assert_eq!(*at, t0 + Duration::from_millis(10 * i as u64));
        }
        // After a quiet spell, the next caller goes at once.
        let later = t0 + Duration::from_secs(5);
        assert_eq!(pacer.reserve(later), later);
    }
}
