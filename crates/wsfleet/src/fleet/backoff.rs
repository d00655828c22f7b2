//! Per-slot exponential backoff with full jitter: plain data, driven by the
//! supervisor, testable without a clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// A small, seedable generator (SplitMix64) for jitter. Not for secrets.
#[derive(Debug, Clone)]
pub(crate) struct Jitter(u64);

impl Jitter {
    pub(crate) fn seeded(seed: u64) -> Self {
        Self(seed)
    }

    /// Seeded by the OS generator (see [`Jitter::from_source`]).
    pub(crate) fn from_os() -> Self {
        Self::from_source(getrandom::fill)
    }

    /// Seeded by `fill`. If it fails (never seen on Linux), says so once
    /// and seeds from what still differs between calls and processes: the
    /// clock, a call counter and the address of a local (ASLR). Each slot
    /// keeps its own seed, so the fleet's reconnects stay spread out.
    fn from_source(fill: impl FnOnce(&mut [u8]) -> Result<(), getrandom::Error>) -> Self {
        let mut seed = [0u8; 8];
        match fill(&mut seed) {
            Ok(()) => Self(u64::from_le_bytes(seed)),
            Err(error) => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(%error, "OS random generator failed; backoff jitter is seeded from the clock instead");
                });
                Self(fallback_seed())
            }
        }
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A seed that differs on every call (a counter) and between processes
/// (the clock, the address of a local), for when the OS generator fails.
fn fallback_seed() -> u64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let local = 0u8;
    let address = std::ptr::addr_of!(local) as usize as u64;
    nanos ^ call.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ address.rotate_left(32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn delays_stay_within_zero_and_cap_and_ceilings_never_shrink(
            base_ms in 1u64..5_000, extra_ms in 0u64..120_000, seed: u64,
        ) {
            let b = Backoff::new(Duration::from_millis(base_ms), Duration::from_millis(base_ms + extra_ms)).unwrap();
            let mut jitter = Jitter::seeded(seed);
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

    #[test]
    fn a_failing_os_generator_still_gives_each_slot_its_own_seed() {
        let failing = |_: &mut [u8]| Err(getrandom::Error::UNSUPPORTED);
        let mut firsts: Vec<u64> = (0..64)
            .map(|_| Jitter::from_source(failing).unit().to_bits())
            .collect();
        firsts.sort_unstable();
        firsts.dedup();
        assert_eq!(firsts.len(), 64, "slots share seeds");
        let fixed = |buf: &mut [u8]| {
            buf.fill(7);
            Ok(())
        };
        assert_eq!(Jitter::from_source(fixed).0, u64::from_le_bytes([7; 8]));
    }

    #[test]
    fn jitter_is_uniform_enough() {
        let mut j = Jitter::seeded(7);
        let draws: Vec<f64> = (0..10_000).map(|_| j.unit()).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
    }
}
