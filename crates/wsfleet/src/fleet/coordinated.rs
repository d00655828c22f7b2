//! Holding and releasing the slots of a coordinated fleet
//! ([`FleetBuilder::coordinated`](super::FleetBuilder::coordinated)): the
//! fleet's slots are shared by several processes, and something outside
//! the fleet (a lease coordinator, such as `wsfleet-bus`'s) decides which
//! of them this process runs. The fleet only obeys: a held slot dials (at
//! the connect rate), a released one closes gracefully, a revoked one is
//! aborted at once.

use super::held::{HeldSet, Holding};
use super::scale::ControlError;
use super::{FleetControl, SlotId};

const NOT_COORDINATED: &str =
    "the fleet is not coordinated (FleetBuilder::coordinated): its slots are not held or released";

impl FleetControl {
    /// Whether the fleet was built [`coordinated`](super::FleetBuilder::coordinated).
    pub fn is_coordinated(&self) -> bool {
        self.0.held.is_some()
    }

    /// Takes slot `slot`: it dials at the connect rate and runs until
    /// released or revoked. False if it was held already.
    ///
    /// # Errors
    /// [`ControlError::Coordination`] if the fleet is not coordinated;
    /// [`ControlError::UnknownSlot`] past its slot count.
    pub fn hold(&self, slot: SlotId) -> Result<bool, ControlError> {
        let (held, position) = self.position(slot)?;
        let before = held.set(position, Holding::Held);
        if before == Some(Holding::Held) {
            return Ok(false);
        }
        // After its previous task (still closing, if it was just released)
        // has ended; a paused or stopping fleet's task ends at once.
        self.0.spawn_slot(position);
        Ok(true)
    }

    /// Gives slot `slot` up gracefully: its connection closes with 1001
    /// after what was in flight ([`DisconnectReason::Released`](super::DisconnectReason::Released));
    /// [`is_stopped`](Self::is_stopped) says when it is gone. False if it
    /// was not held.
    ///
    /// # Errors
    /// As [`hold`](Self::hold).
    pub fn release(&self, slot: SlotId) -> Result<bool, ControlError> {
        self.set(slot, Holding::Free)
    }

    /// Gives slot `slot` up at once: its connection is aborted without a
    /// close handshake ([`DisconnectReason::LeaseLost`](super::DisconnectReason::LeaseLost)),
    /// because another process may hold the slot now. False if it was not
    /// held.
    ///
    /// # Errors
    /// As [`hold`](Self::hold).
    pub fn revoke(&self, slot: SlotId) -> Result<bool, ControlError> {
        self.set(slot, Holding::Lost)
    }

    /// Whether slot `slot` runs nothing (no task: never held, or its
    /// connection has closed since it was released or revoked).
    ///
    /// # Errors
    /// As [`hold`](Self::hold).
    pub fn is_stopped(&self, slot: SlotId) -> Result<bool, ControlError> {
        let (_, position) = self.position(slot)?;
        let tasks = self.0.slot_tasks.lock().unwrap_or_else(|p| p.into_inner());
        Ok(tasks
            .get(position)
            .and_then(Option::as_ref)
            .is_none_or(tokio::task::JoinHandle::is_finished))
    }

    /// The slots this process holds now, in order.
    pub fn held_slots(&self) -> Vec<SlotId> {
        let Some(held) = &self.0.held else {
            return Vec::new();
        };
        (0..held.len())
            .filter(|&p| held.get(p) == Holding::Held)
            .filter_map(|p| self.0.slots.get(p).map(|s| s.id))
            .collect()
    }

    fn set(&self, slot: SlotId, holding: Holding) -> Result<bool, ControlError> {
        let (held, position) = self.position(slot)?;
        let before = held.set(position, holding);
        // Wakes every slot task; the one at `position` sees its holding.
        self.0.orders.send_modify(|_| {});
        Ok(before == Some(Holding::Held))
    }

    /// The held set and the position of `slot` in it.
    fn position(&self, slot: SlotId) -> Result<(&HeldSet, usize), ControlError> {
        let held = self
            .0
            .held
            .as_deref()
            .ok_or(ControlError::Coordination(NOT_COORDINATED))?;
        // Not sharded: a slot's position is its id.
        let position = slot.0 as usize;
        if position >= held.len() {
            return Err(ControlError::UnknownSlot(slot));
        }
        Ok((held, position))
    }
}
