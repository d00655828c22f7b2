//! Which slots a coordinated fleet holds: one cell per slot, set by whoever
//! hands slots out (a lease coordinator, through
//! [`FleetControl::hold`](super::FleetControl::hold) and its siblings) and
//! read by each slot task with its other orders.
//!
//! A fleet built [`coordinated`](super::FleetBuilder::coordinated) starts
//! with every slot free: none dials until it is held. Releasing a slot
//! closes its connection gracefully (1001, what was in flight delivered);
//! revoking it aborts the connection at once, because another process may
//! take the slot next.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

/// What this process may do with one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Holding {
    /// Not ours: the slot task stops gracefully (or never starts).
    Free = 0,
    /// Ours: the slot task runs.
    Held = 1,
    /// Ours no longer, and maybe someone else's already: the slot task
    /// aborts its connection without a close handshake.
    Lost = 2,
}

/// One [`Holding`] per slot position, fixed in size at spawn, and how
/// many are held.
#[derive(Debug)]
pub(crate) struct HeldSet(Box<[AtomicU8]>, AtomicUsize);

impl HeldSet {
    /// `n` slots, every one free.
    pub(crate) fn new(n: usize) -> Self {
        Self(
            (0..n).map(|_| AtomicU8::new(Holding::Free as u8)).collect(),
            AtomicUsize::new(0),
        )
    }

    /// How many slots it covers.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// How many are held now.
    pub(crate) fn held(&self) -> usize {
        self.1.load(Ordering::Acquire)
    }

    /// The holding of `position` (a position past the end is free).
    pub(crate) fn get(&self, position: usize) -> Holding {
        match self.0.get(position).map(|c| c.load(Ordering::Acquire)) {
            Some(1) => Holding::Held,
            Some(2) => Holding::Lost,
            _ => Holding::Free,
        }
    }

    /// Sets `position` to `holding`; the holding it had (`None` past the
    /// end: nothing changed).
    pub(crate) fn set(&self, position: usize, holding: Holding) -> Option<Holding> {
        let before = self.0.get(position)?.swap(holding as u8, Ordering::AcqRel);
        match (before == Holding::Held as u8, holding == Holding::Held) {
            (false, true) => self.1.fetch_add(1, Ordering::AcqRel),
            (true, false) => self.1.fetch_sub(1, Ordering::AcqRel),
            _ => 0,
        };
        Some(match before {
            1 => Holding::Held,
            2 => Holding::Lost,
            _ => Holding::Free,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_start_free_and_remember_the_last_holding() {
        let set = HeldSet::new(3);
        assert_eq!(set.get(1), Holding::Free);
        assert_eq!(set.set(1, Holding::Held), Some(Holding::Free));
        assert_eq!(set.set(1, Holding::Held), Some(Holding::Held));
        assert_eq!(set.held(), 1);
        assert_eq!(set.set(1, Holding::Lost), Some(Holding::Held));
        assert_eq!(set.get(1), Holding::Lost);
        assert_eq!(set.held(), 0);
        assert_eq!((set.get(0), set.get(2)), (Holding::Free, Holding::Free));
        assert_eq!(set.set(3, Holding::Held), None);
        assert_eq!(set.get(3), Holding::Free);
    }
}
