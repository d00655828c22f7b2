//! The memory budget a connection's buffers are charged against.

use std::fmt::Debug;

/// A shared byte budget. The protocol machine reserves every buffer growth
/// before allocating and releases it when the buffer shrinks or is dropped.
/// The fleet implements it with one atomic counter for all connections.
///
/// Implementations must be cheap: `try_reserve` is called on every buffer
/// growth (not on every byte).
pub trait MemoryBudget: Send + Sync + Debug {
    /// Reserves `bytes`; false if that would exceed the budget (nothing is
    /// reserved then).
    fn try_reserve(&self, bytes: usize) -> bool;
    /// Reserves `bytes` even beyond the budget. Used only for the few bytes
    /// of a mandatory control reply (a close frame must go out to close
    /// cleanly) and to mirror bytes held before the budget was attached.
    fn force_reserve(&self, bytes: usize);
    /// Returns `bytes` previously reserved.
    fn release(&self, bytes: usize);
}
