//! Per-connection byte accounting against an optional shared budget.

use std::sync::Arc;

use crate::budget::MemoryBudget;
use crate::error::ProtocolError;

/// Bytes this connection holds, mirrored into the shared budget.
#[derive(Debug, Default)]
pub(super) struct Account {
    budget: Option<Arc<dyn MemoryBudget>>,
    held: usize,
    peak: usize,
}

impl Account {
    pub(super) fn set_budget(&mut self, budget: Arc<dyn MemoryBudget>) {
        // Mirror what is already held so release() stays balanced.
        budget.force_reserve(self.held);
        self.budget = Some(budget);
    }

    pub(super) fn held(&self) -> usize {
        self.held
    }

    pub(super) fn peak(&self) -> usize {
        self.peak
    }

    /// Reserves `n` bytes before they are allocated.
    pub(super) fn charge(&mut self, n: usize) -> Result<(), ProtocolError> {
        if n == 0 {
            return Ok(());
        }
        if let Some(budget) = &self.budget {
            if !budget.try_reserve(n) {
                return Err(ProtocolError::BudgetExhausted {
                    requested: n,
                    held: self.held,
                });
            }
        }
        self.add(n);
        Ok(())
    }

    /// Reserves `n` bytes if the budget has them: false (nothing reserved)
    /// when it refuses. For growth the caller can retry later.
    pub(super) fn try_charge(&mut self, n: usize) -> bool {
        if n == 0 {
            return true;
        }
        if let Some(budget) = &self.budget {
            if !budget.try_reserve(n) {
                return false;
            }
        }
        self.add(n);
        true
    }

    /// Moves `n` charged bytes out of this connection's buffers into a
    /// message handed to the application: the charge stays with the
    /// payload (see [`crate::budget::charged_bytes`]). `None` without a
    /// budget (nothing to carry).
    pub(super) fn hand_over(&mut self, n: usize) -> Option<Arc<dyn MemoryBudget>> {
        debug_assert!(n <= self.held, "hand over {n} > held {}", self.held);
        let n = n.min(self.held);
        self.held -= n;
        let budget = self.budget.as_ref()?;
        budget.hand_over(n);
        Some(budget.clone())
    }

    /// True when a budget is attached.
    pub(super) fn has_budget(&self) -> bool {
        self.budget.is_some()
    }

    /// Counts `n` bytes even if the budget is spent: only for the few bytes
    /// of a control frame reply, which must go out to close cleanly.
    pub(super) fn charge_forced(&mut self, n: usize) {
        if let Some(budget) = &self.budget {
            budget.force_reserve(n);
        }
        self.add(n);
    }

    fn add(&mut self, n: usize) {
        self.held += n;
        self.peak = self.peak.max(self.held);
    }

    pub(super) fn refund(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        debug_assert!(n <= self.held, "refund {n} > held {}", self.held);
        let n = n.min(self.held);
        self.held -= n;
        if let Some(budget) = &self.budget {
            budget.release(n);
        }
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        let held = self.held;
        self.refund(held);
    }
}
