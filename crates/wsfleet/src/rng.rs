//! The crate's one small generator, SplitMix64 (Steele, Lea and Flood, "Fast
//! splittable pseudorandom number generators", 2014): backoff and lifetime
//! jitter, and masking keys should the OS generator ever fail. Fast, one
//! word of state, seedable for tests; not for secrets (masking keys and
//! handshake nonces come from the OS generator, see `keys`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// SplitMix64's increment, 2^64 / φ: also spreads seeds apart (slot `i` of a
/// seeded fleet starts from `seed ^ i · GAMMA`).
pub(crate) const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64: one `u64` of state, every output once per 2^64 draws.
#[derive(Debug, Clone)]
pub(crate) struct SmallRng(u64);

impl SmallRng {
    pub(crate) const fn seeded(seed: u64) -> Self {
        Self(seed)
    }

    /// Seeded by the OS generator (see [`SmallRng::from_source`]).
    pub(crate) fn from_os() -> Self {
        Self::from_source(getrandom::fill)
    }

    /// Seeded from what differs between calls and processes, for when the
    /// OS generator fails: the clock, a call counter and the address of a
    /// local (ASLR).
    pub(crate) fn from_clock() -> Self {
        static CALLS: AtomicU64 = AtomicU64::new(0);
        let call = CALLS.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let local = 0u8;
        let address = std::ptr::addr_of!(local) as usize as u64;
        Self(nanos ^ call.wrapping_mul(GAMMA) ^ address.rotate_left(32))
    }

    /// Seeded by `fill`. If it fails (never seen on Linux), says so once
    /// and seeds [`from_clock`](Self::from_clock): each slot keeps its own
    /// seed, so the fleet's reconnects stay spread out.
    fn from_source(fill: impl FnOnce(&mut [u8]) -> Result<(), getrandom::Error>) -> Self {
        let mut seed = [0u8; 8];
        match fill(&mut seed) {
            Ok(()) => Self(u64::from_le_bytes(seed)),
            Err(error) => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(%error, "OS random generator failed; backoff jitter is seeded from the clock instead");
                });
                Self::from_clock()
            }
        }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Fills `bytes`, eight at a time.
    pub(crate) fn fill(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes()[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_os_generator_still_gives_each_slot_its_own_seed() {
        let failing = |_: &mut [u8]| Err(getrandom::Error::UNSUPPORTED);
        let mut firsts: Vec<u64> = (0..64)
            .map(|_| SmallRng::from_source(failing).next_u64())
            .collect();
        firsts.sort_unstable();
        firsts.dedup();
        assert_eq!(firsts.len(), 64, "slots share seeds");
        let fixed = |buf: &mut [u8]| {
            buf.fill(7);
            Ok(())
        };
        assert_eq!(SmallRng::from_source(fixed).0, u64::from_le_bytes([7; 8]));
    }

    #[test]
    fn unit_draws_are_uniform_enough() {
        let mut rng = SmallRng::seeded(7);
        let draws: Vec<f64> = (0..10_000).map(|_| rng.unit()).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
    }

    #[test]
    fn fill_is_the_words_in_order_and_covers_a_ragged_end() {
        let mut words = SmallRng::seeded(1);
        let expected: Vec<u8> = (0..2)
            .flat_map(|_| words.next_u64().to_le_bytes())
            .take(13)
            .collect();
        let mut bytes = [0u8; 13];
        SmallRng::seeded(1).fill(&mut bytes);
        assert_eq!(bytes[..], expected[..]);
    }
}
