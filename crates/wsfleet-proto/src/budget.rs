//! The memory budget a connection's buffers, and the messages it hands out,
//! are charged against.

use std::fmt::Debug;
use std::sync::Arc;

use bytes::Bytes;

/// A shared byte budget. The protocol machine reserves every buffer growth
/// before allocating and releases it when the buffer shrinks or is dropped.
/// The fleet implements it with one atomic counter for all connections.
///
/// A received message keeps its charge after the machine hands it out: its
/// payload's owner gives the bytes back (with
/// [`release_handed`](Self::release_handed)) when the application drops the
/// last reference, wherever the message went meanwhile (event queues,
/// output writers, sinks). So the budget bounds what is *held*, not only
/// what is being parsed.
///
/// Implementations must be cheap: `try_reserve` is called on every buffer
/// growth and every received message (not on every byte).
pub trait MemoryBudget: Send + Sync + Debug {
    /// Reserves `bytes`; false if that would exceed the budget (nothing is
    /// reserved then).
    fn try_reserve(&self, bytes: usize) -> bool;
    /// Reserves `bytes` even beyond the budget. Used only for a few bytes
    /// whose memory is already in hand (a close frame that must go out, a
    /// read that already happened) and to mirror bytes held before the
    /// budget was attached.
    fn force_reserve(&self, bytes: usize);
    /// Returns `bytes` previously reserved.
    fn release(&self, bytes: usize);
    /// `bytes` already reserved now belong to a message handed to the
    /// application rather than to the connection's buffers. Nothing is
    /// reserved or released; a budget that tells the two apart (to pause
    /// readers while consumers hold the memory) counts them here.
    fn hand_over(&self, bytes: usize) {
        let _ = bytes;
    }
    /// A handed-out message holding `bytes` was dropped. Defaults to
    /// [`release`](Self::release).
    fn release_handed(&self, bytes: usize) {
        self.release(bytes);
    }
}

/// The owner of a handed-out payload: its bytes and their charge, given
/// back when the last [`Bytes`] referring to it is dropped.
struct Charged<B> {
    buf: B,
    budget: Arc<dyn MemoryBudget>,
    bytes: usize,
}

impl<B: AsRef<[u8]>> AsRef<[u8]> for Charged<B> {
    fn as_ref(&self) -> &[u8] {
        self.buf.as_ref()
    }
}

impl<B> Drop for Charged<B> {
    fn drop(&mut self) {
        self.budget.release_handed(self.bytes);
    }
}

/// Wraps `buf` as [`Bytes`] that keep `bytes` (already reserved and handed
/// over) charged to `budget` until the last clone is dropped.
pub(crate) fn charged_bytes<B>(buf: B, budget: Arc<dyn MemoryBudget>, bytes: usize) -> Bytes
where
    B: AsRef<[u8]> + Send + 'static,
{
    Bytes::from_owner(Charged { buf, budget, bytes })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[derive(Debug, Default)]
    struct Count(AtomicUsize);

    impl MemoryBudget for Count {
        fn try_reserve(&self, bytes: usize) -> bool {
            self.0.fetch_add(bytes, Ordering::Relaxed);
            true
        }
        fn force_reserve(&self, bytes: usize) {
            self.0.fetch_add(bytes, Ordering::Relaxed);
        }
        fn release(&self, bytes: usize) {
            self.0.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    #[test]
    fn the_charge_lives_until_the_last_clone_and_slice_is_dropped() {
        let budget = Arc::new(Count::default());
        budget.force_reserve(100);
        let payload = charged_bytes(vec![7u8; 100], budget.clone(), 100);
        let copy = payload.clone();
        let tail = payload.slice(90..);
        drop(payload);
        drop(copy);
        assert_eq!(
            budget.0.load(Ordering::Relaxed),
            100,
            "a slice still holds it"
        );
        assert_eq!(&tail[..], &[7u8; 10]);
        drop(tail);
        assert_eq!(budget.0.load(Ordering::Relaxed), 0);
    }
}
