//! Masking keys and handshake nonces from the operating system's CSPRNG,
//! drawn in batches so a frame costs no system call.

use std::cell::RefCell;

use wsfleet_proto::MaskKeys;

/// Bytes drawn from the OS per refill: 256 masking keys per `getrandom` call.
const POOL: usize = 1024;

struct Pool {
    bytes: [u8; POOL],
    used: usize,
    /// Mixed in if the OS generator ever fails, so keys still vary.
    fallback: u64,
}

thread_local! {
    static RNG: RefCell<Pool> = const { RefCell::new(Pool { bytes: [0; POOL], used: POOL, fallback: 0 }) };
}

fn take<const N: usize>() -> [u8; N] {
    RNG.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.used + N > POOL {
            if let Err(e) = getrandom::fill(&mut pool.bytes) {
                // Never observed on Linux; do not take the process down for it.
                tracing::warn!(error = %e, "OS random generator failed; masking keys fall back to a weaker generator");
                let mut x = pool.fallback ^ 0x9E37_79B9_7F4A_7C15;
                for chunk in pool.bytes.chunks_mut(8) {
                    // splitmix64
                    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let mut z = x;
                    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                    chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes()[..chunk.len()]);
                }
                pool.fallback = x;
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
