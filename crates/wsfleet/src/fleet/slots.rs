//! The fleet's slots: a table that grows while connections read it, without
//! a lock on the read side.
//!
//! Scaling a fleet up adds slots; scaling it down parks the last ones (their
//! connections close, their memory stays for the next scale-up). A slot,
//! once made, keeps its address for the fleet's life, so a slot task, a
//! connection task and `Fleet::send` hold a plain `&SlotShared` while the
//! table grows: the table is a list of segments, each allocated once and
//! never moved, the first as large as the fleet's first size, each next one
//! as large as all before it (like a `Vec`'s doublings, without the move).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use super::SlotShared;

/// Segments: enough for `u32::MAX` slots from a first segment of one.
const SEGMENTS: usize = 33;

/// The fleet's slots, indexed by position (`0..len()`).
pub(crate) struct SlotTable {
    /// Size of the first segment (at least 1).
    first: usize,
    segments: [OnceLock<Box<[OnceLock<SlotShared>]>>; SEGMENTS],
    /// Slots made so far; every index below is readable.
    len: AtomicUsize,
    /// Serialises growth (reads never take it).
    grow: Mutex<()>,
}

impl SlotTable {
    /// A table whose first segment holds `first` slots (the fleet's size at
    /// spawn: a fleet that never grows allocates exactly that).
    pub(crate) fn new(first: usize) -> Self {
        Self {
            first: first.max(1),
            segments: std::array::from_fn(|_| OnceLock::new()),
            len: AtomicUsize::new(0),
            grow: Mutex::new(()),
        }
    }

    /// Slots made so far.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// The slot at `index`, if made.
    pub(crate) fn get(&self, index: usize) -> Option<&SlotShared> {
        if index >= self.len() {
            return None;
        }
        let (segment, offset) = self.locate(index);
        self.segments[segment].get()?[offset].get()
    }

    /// Every slot made, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &SlotShared> {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// Makes slots until there are `n`, each from `make(index)`; returns
    /// the index of the first new one. Slots are never removed.
    pub(crate) fn grow_to(&self, n: usize, mut make: impl FnMut(usize) -> SlotShared) -> usize {
        let _one_at_a_time = self.grow.lock().unwrap_or_else(|p| p.into_inner());
        let start = self.len();
        for index in start..n {
            let (segment, offset) = self.locate(index);
            let size = self.segment_size(segment);
            let cells =
                self.segments[segment].get_or_init(|| (0..size).map(|_| OnceLock::new()).collect());
            // Unset: indices are made once, under the growth lock.
            let _ = cells[offset].set(make(index));
            self.len.store(index + 1, Ordering::Release);
        }
        start
    }

    /// Segment 0 holds `first` slots; segment k ≥ 1 holds `first·2^(k−1)`,
    /// starting at `first·2^(k−1)`.
    fn locate(&self, index: usize) -> (usize, usize) {
        let j = index / self.first;
        if j == 0 {
            return (0, index);
        }
        let k = (usize::BITS - j.leading_zeros()) as usize; // floor(log2 j) + 1
        let start = self.first << (k - 1);
        (k, index - start)
    }

    fn segment_size(&self, segment: usize) -> usize {
        if segment == 0 {
            self.first
        } else {
            self.first << (segment - 1)
        }
    }
}

impl std::ops::Index<usize> for SlotTable {
    type Output = SlotShared;

    /// # Panics
    /// If no slot was made at `index` (a bug: callers index made slots).
    fn index(&self, index: usize) -> &SlotShared {
        self.get(index)
            .unwrap_or_else(|| panic!("slot {index} of {} not made", self.len()))
    }
}

impl std::fmt::Debug for SlotTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotTable")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(first: usize) -> SlotTable {
        SlotTable::new(first)
    }

    #[test]
    fn positions_cover_every_index_once_in_order() {
        for first in [1, 3, 64, 100] {
            let t = table(first);
            let mut expected = (0, 0);
            for index in 0..5_000 {
                let (segment, offset) = t.locate(index);
                assert_eq!((segment, offset), expected, "first {first}, index {index}");
                assert!(offset < t.segment_size(segment));
                expected = if offset + 1 == t.segment_size(segment) {
                    (segment + 1, 0)
                } else {
                    (segment, offset + 1)
                };
            }
        }
    }

    #[test]
    fn the_last_segment_reaches_past_u32() {
        let t = table(1);
        let (segment, _) = t.locate(u32::MAX as usize);
        assert!(segment < SEGMENTS);
    }
}
