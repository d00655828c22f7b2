//! Masking keys and handshake nonces from the operating system's CSPRNG,
//! drawn in batches so a frame costs no system call.

use std::cell::RefCell;

use wsfleet_proto::MaskKeys;

use crate::rng::SmallRng;

/// Bytes drawn from the OS per refill: 256 masking keys per `getrandom` call.
const POOL: usize = 1024;

struct Pool {
    bytes: [u8; POOL],
    used: usize,
    /// Used if the OS generator ever fails, so keys still vary: seeded from
    /// the clock on first use.
    fallback: Option<SmallRng>,
}

thread_local! {
    static RNG: RefCell<Pool> = const { RefCell::new(Pool { bytes: [0; POOL], used: POOL, fallback: None }) };
}

fn take<const N: usize>() -> [u8; N] {
    RNG.with(|pool| {
        let mut pool = pool.borrow_mut();
        let pool = &mut *pool;
        if pool.used + N > POOL {
            if let Err(e) = getrandom::fill(&mut pool.bytes) {
                // Never observed on Linux; do not take the process down for it.
                tracing::warn!(error = %e, "OS random generator failed; masking keys fall back to a weaker generator");
                pool.fallback
                    .get_or_insert_with(SmallRng::from_clock)
                    .fill(&mut pool.bytes);
            }
            pool.used = 0;
        }
        let start = pool.used;
        pool.used += N;
        let mut out = [0; N];
        out.copy_from_slice(&pool.bytes[start..start + N]);
        out
    })
}

/// Masking keys from the OS CSPRNG (RFC 6455 §5.3 asks for unpredictable
/// keys). Zero-sized: the batch lives in a thread-local pool shared by all
/// connections on the thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsRngKeys;

impl MaskKeys for OsRngKeys {
    fn next_key(&mut self) -> [u8; 4] {
        take()
    }
}

/// A 16-byte nonce for `Sec-WebSocket-Key`.
pub(crate) fn nonce() -> [u8; 16] {
    take()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_vary_across_refills() {
        let mut keys = OsRngKeys;
        let drawn: std::collections::HashSet<[u8; 4]> =
            (0..1000).map(|_| keys.next_key()).collect();
        // 1000 draws from 2^32: a collision is possible but not 50 of them.
        assert!(drawn.len() > 950, "{} distinct keys", drawn.len());
        assert_ne!(nonce(), nonce());
    }
}
