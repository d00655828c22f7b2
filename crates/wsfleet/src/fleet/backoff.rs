//! Per-slot exponential backoff with full jitter: plain data, driven by the
//! supervisor, testable without a clock.

use std::time::Duration;

use wsfleet_proto::ConfigError;

/// Exponential backoff with full jitter (AWS architecture blog, "Exponential
/// Backoff and Jitter"): the n-th consecutive failure waits a uniformly random
/// time in `[0, min(cap, base · 2ⁿ)]`. Full jitter spreads a whole fleet's
/// reconnects over the window instead of synchronising them.
///
/// ```
/// use std::time::Duration;
/// use wsfleet::fleet::Backoff;
/// let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(30)).unwrap();
/// assert_eq!(b.ceiling(0), Duration::from_millis(100));
/// assert_eq!(b.ceiling(20), Duration::from_secs(30));
/// assert!(Backoff::new(Duration::ZERO, Duration::from_secs(1)).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
}

impl Default for Backoff {
    /// 100 ms base, 30 s cap.
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// A backoff from `base` (first ceiling) doubling up to `cap`.
    ///
    /// # Errors
    /// A zero `base`, or `cap < base`.
    pub fn new(base: Duration, cap: Duration) -> Result<Self, ConfigError> {
        if base.is_zero() {
            return Err(ConfigError {
                field: "backoff base",
                value: format!("{base:?}"),
                problem: "must be above zero",
            });
        }
        if cap < base {
            return Err(ConfigError {
                field: "backoff cap",
                value: format!("{cap:?}"),
                problem: "must be at least the base",
            });
        }
        Ok(Self { base, cap })
    }

    /// The base delay.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The cap.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// The upper bound of the wait after `failures` consecutive failures
    /// (0 for the first): `min(cap, base · 2^failures)`.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The wait after `failures` consecutive failures, with `unit` uniform
    /// in `[0, 1)`.
    pub fn delay(&self, failures: u32, unit: f64) -> Duration {
        self.ceiling(failures).mul_f64(unit.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SmallRng;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn delays_stay_within_zero_and_cap_and_ceilings_never_shrink(
            base_ms in 1u64..5_000, extra_ms in 0u64..120_000, seed: u64,
        ) {
            let b = Backoff::new(Duration::from_millis(base_ms), Duration::from_millis(base_ms + extra_ms)).unwrap();
            let mut jitter = SmallRng::seeded(seed);
            let mut previous = Duration::ZERO;
            for failures in 0..64 {
                let ceiling = b.ceiling(failures);
                prop_assert!(ceiling >= previous, "ceiling shrank at {failures}");
                prop_assert!(ceiling <= b.cap());
                let d = b.delay(failures, jitter.unit());
                prop_assert!(d <= ceiling);
                previous = ceiling;
            }
        }
    }
}
