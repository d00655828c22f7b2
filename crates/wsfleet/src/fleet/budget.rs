//! The fleet-wide memory budget: one atomic counter all connections charge.

use std::sync::atomic::{AtomicUsize, Ordering};

use wsfleet_proto::MemoryBudget;

/// A byte budget shared by every connection of a fleet. A buffer growth that
/// would pass `max` is refused, and the connection that asked is dropped
/// with close 1009 — not the process.
///
/// It bounds what peers can make us hold: read buffers, message reassembly
/// and outbound queues. The fixed cost of a connection (its task, socket,
/// TLS state and channels: about 9 KiB per idle plain connection today) is
/// not charged; size the budget on top of `connections ×` that.
///
/// ```
/// use wsfleet::fleet::FleetBudget;
/// use wsfleet::proto::MemoryBudget;
/// let budget = FleetBudget::new(1000);
/// assert!(budget.try_reserve(600));
/// assert!(!budget.try_reserve(600));
/// budget.release(600);
/// assert_eq!(budget.used(), 0);
/// ```
#[derive(Debug)]
pub struct FleetBudget {
    used: AtomicUsize,
    peak: AtomicUsize,
    max: usize,
}

impl FleetBudget {
    /// A budget of `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            max,
        }
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Most bytes ever reserved at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// The budget.
    pub fn max(&self) -> usize {
        self.max
    }

    fn note_peak(&self, now: usize) {
        self.peak.fetch_max(now, Ordering::Relaxed);
    }
}

impl MemoryBudget for FleetBudget {
    fn try_reserve(&self, bytes: usize) -> bool {
        let result = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.max)
            });
        match result {
            Ok(before) => {
                self.note_peak(before + bytes);
                true
            }
            Err(_) => false,
        }
    }

    fn force_reserve(&self, bytes: usize) {
        let before = self.used.fetch_add(bytes, Ordering::AcqRel);
        self.note_peak(before.saturating_add(bytes));
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// One connection's view of the fleet budget: charges the fleet and keeps
/// the connection's own total, which its stats record reads (exact even
/// while the connection sits idle in `recv`).
#[derive(Debug)]
pub(crate) struct ConnBudget {
    pub(crate) fleet: std::sync::Arc<FleetBudget>,
    pub(crate) held: std::sync::Arc<AtomicUsize>,
}

impl MemoryBudget for ConnBudget {
    fn try_reserve(&self, bytes: usize) -> bool {
        let ok = self.fleet.try_reserve(bytes);
        if ok {
            self.held.fetch_add(bytes, Ordering::Relaxed);
        }
        ok
    }

    fn force_reserve(&self, bytes: usize) {
        self.fleet.force_reserve(bytes);
        self.held.fetch_add(bytes, Ordering::Relaxed);
    }

    fn release(&self, bytes: usize) {
        self.fleet.release(bytes);
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }
}
