//! Changing a running fleet: its connection count (up, paced at the connect
//! rate; down, the newest slots first, each closing gracefully), pausing
//! and resuming it, and dropping or rotating one connection.
//!
//! Scaling down takes the slots of the highest positions: they were added
//! last, so the connections that stay are the ones the fleet had longest
//! (their subscriptions, their place upstream). A subscription spread onto
//! a slot that goes moves to the emptiest slot that stays, which sends its
//! start messages; a change that would leave one without room is refused
//! whole.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::orders::{Request, SlotOrders};
use super::stats::ConnRecord;
use super::subscriptions::SubscribeError;
use super::supervisor::run_slot;
use super::{ConnId, Shared, SlotId, SlotShared};

/// The most connections a fleet can be scaled to (all shards): far above
/// what one process holds (file descriptors run out first), low enough that
/// a typo cannot make the slot table allocate gigabytes.
pub const MAX_CONNECTIONS: usize = 1 << 20;

/// Why a change to a running fleet was refused; the fleet is unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ControlError {
    /// The connection count is outside `1..=MAX_CONNECTIONS`, or gives this
    /// shard no slot.
    Target {
        /// The count asked for.
        asked: usize,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// Scaling down would leave a spread subscription no slot with room.
    Subscriptions(SubscribeError),
    /// No ready connection has this id.
    UnknownConnection(ConnId),
    /// No running slot has this id.
    UnknownSlot(SlotId),
    /// The fleet is not [`coordinated`](super::FleetBuilder::coordinated)
    /// (holding and releasing slots), or is (its slot count is fixed).
    Coordination(&'static str),
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Target { asked, problem } => write!(f, "connections {asked}: {problem}"),
            Self::Subscriptions(e) => write!(f, "cannot move the subscriptions: {e}"),
            Self::UnknownConnection(id) => write!(f, "no connection {id} is running"),
            Self::UnknownSlot(id) => write!(f, "no slot {id} is running"),
            Self::Coordination(problem) => f.write_str(problem),
        }
    }
}

impl std::error::Error for ControlError {}

/// What a change of the connection count did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Scaled {
    /// Connections wanted before (all shards).
    pub before: usize,
    /// Connections wanted now (all shards).
    pub after: usize,
    /// This process's slots before.
    pub slots_before: usize,
    /// This process's slots now.
    pub slots_after: usize,
    /// Spread subscriptions moved off slots that went.
    pub moved_subscriptions: usize,
}

impl Shared {
    /// This process's slots for a fleet of `n` connections (all shards).
    pub(crate) fn positions_for(&self, n: usize) -> usize {
        let (index, count) = self.shard;
        if n > index {
            (n - index).div_ceil(count)
        } else {
            0
        }
    }

    /// The slot with id `id`, if made.
    pub(crate) fn slot_of(&self, id: SlotId) -> Option<&SlotShared> {
        let (index, count) = self.shard;
        let global = id.0 as usize;
        if global % count != index {
            return None;
        }
        self.slots.get(global / count)
    }

    /// The slot at `position` (global id `position·count + index`).
    pub(crate) fn make_slot(&self, position: usize) -> SlotShared {
        let (index, count) = self.shard;
        let global = position * count + index;
        let target = &self.targets[global % self.targets.len()];
        let url: Arc<str> = Arc::from(target.to_string());
        let id = SlotId(global as u32);
        SlotShared {
            id,
            index: position as u32,
            url: url.clone(),
            current: Mutex::new(Arc::new(ConnRecord::new(id, url))),
            inbox: Mutex::new(None),
            streams: self.settings.streams.is_some().then(Box::default),
            requests: Default::default(),
        }
    }

    /// Starts the slot task of `position`, after the one it had (still
    /// closing, after a scale-down or a pause) has ended.
    pub(crate) fn spawn_slot(self: &Arc<Self>, position: usize) {
        let (index, count) = self.shard;
        let target = self.targets[(position * count + index) % self.targets.len()].clone();
        let orders =
            SlotOrders::new(self.orders.subscribe(), position).with_held(self.held.clone());
        let mut tasks = self.slot_tasks.lock().unwrap_or_else(|p| p.into_inner());
        if tasks.len() <= position {
            tasks.resize_with(position + 1, || None);
        }
        let shared = self.clone();
        // The common case (a slot's first task) spawns the slot future
        // alone: a waiting wrapper would make every slot's task larger.
        let task = match tasks[position].take() {
            None => self
                .runtime
                .spawn(run_slot(shared, position, target, orders)),
            Some(previous) => {
                let mut previous = AbortOnDrop(previous);
                self.runtime.spawn(async move {
                    let _ = (&mut previous.0).await;
                    run_slot(shared, position, target, orders).await;
                })
            }
        };
        tasks[position] = Some(task);
    }

    /// Sets the connection count (all shards).
    pub(crate) async fn set_target(self: &Arc<Self>, n: usize) -> Result<Scaled, ControlError> {
        let refuse = |problem| Err(ControlError::Target { asked: n, problem });
        if n == 0 {
            return refuse("must be at least 1 (pause the fleet to close every connection)");
        }
        if n > MAX_CONNECTIONS {
            return refuse("above the most a fleet holds (1,048,576)");
        }
        if self.held.is_some() {
            return refuse("a coordinated fleet's slot count is fixed (its processes share it)");
        }
        let after = self.positions_for(n);
        if after == 0 {
            return refuse("gives this shard no slot: it needs more connections than shards");
        }
        // One change at a time; subscription changes wait (the table and
        // the slots change together).
        let _scaling = self.scaling.lock().await;
        let _subscriptions = self.subscription_changes.lock().await;
        let before = self.wanted.load(Ordering::Relaxed);
        let slots_before = self.positions_for(before);
        // The moved subscriptions' new carriers, taken under the table
        // lock: a connection registers its inbox under it too, so each is
        // reached here or catches up when it starts, never both.
        let moved: Vec<_> = {
            let mut table = self.subscriptions();
            let moved = table.resize(after).map_err(ControlError::Subscriptions)?;
            moved
                .into_iter()
                .map(|(sub, slot)| {
                    let inbox = self.slots.get(slot).and_then(|s| s.inbox());
                    (sub, inbox.map(|(_, inbox)| inbox))
                })
                .collect()
        };
        if after > self.slots.len() {
            self.slots.grow_to(after, |p| self.make_slot(p));
        }
        self.wanted.store(n, Ordering::Relaxed);
        let paused = self.orders.borrow().paused;
        if !paused {
            self.orders.send_modify(|o| o.active = after);
            for position in slots_before..after {
                self.spawn_slot(position);
            }
        }
        // The moved subscriptions start on their new slots' ready
        // connections (the rest replay them when they open).
        for (sub, inbox) in &moved {
            let inboxes: Vec<_> = inbox.iter().cloned().collect();
            super::send_all(&inboxes, sub.start_messages()).await;
        }
        tracing::info!(
            before,
            after = n,
            slots_before,
            slots_after = after,
            "fleet scaled"
        );
        Ok(Scaled {
            before,
            after: n,
            slots_before,
            slots_after: after,
            moved_subscriptions: moved.len(),
        })
    }

    /// Pauses (`true`: every connection closes with 1001 and none dials
    /// until resumed; the connection count is kept) or resumes the fleet.
    /// Returns whether it changed anything.
    pub(crate) async fn set_paused(self: &Arc<Self>, pause: bool) -> bool {
        let _scaling = self.scaling.lock().await;
        if self.orders.borrow().paused == pause {
            return false;
        }
        let active = self.positions_for(self.wanted.load(Ordering::Relaxed));
        if pause {
            self.orders.send_modify(|o| {
                o.paused = true;
                o.active = 0;
            });
            tracing::info!("fleet paused: closing its connections");
        } else {
            self.orders.send_modify(|o| {
                o.paused = false;
                o.active = active;
            });
            for position in 0..active {
                self.spawn_slot(position);
            }
            tracing::info!(slots = active, "fleet resumed");
        }
        true
    }

    /// Asks the slot running connection `conn` to drop or rotate it.
    pub(crate) fn request_conn(
        &self,
        conn: ConnId,
        request: Request,
    ) -> Result<SlotId, ControlError> {
        let active = self.orders.borrow().active;
        let slot = self
            .slots
            .iter()
            .take(active)
            .find(|s| s.inbox().is_some_and(|(id, _)| id == conn))
            .ok_or(ControlError::UnknownConnection(conn))?;
        self.request(slot, request);
        Ok(slot.id)
    }

    /// Asks slot `id` to drop or rotate its connection; the connection it
    /// runs now (if one is ready).
    pub(crate) fn request_slot(
        &self,
        id: SlotId,
        request: Request,
    ) -> Result<Option<ConnId>, ControlError> {
        let active = self.orders.borrow().active;
        let slot = self
            .slots
            .iter()
            .take(active)
            .find(|s| s.id == id)
            .ok_or(ControlError::UnknownSlot(id))?;
        self.request(slot, request);
        Ok(slot.inbox().map(|(conn, _)| conn))
    }

    fn request(&self, slot: &SlotShared, request: Request) {
        slot.requests.put(request);
        // Wakes every slot task; each looks at its own request cell.
        self.orders.send_modify(|_| {});
    }
}

/// A task aborted with its handle: a slot's previous task, awaited by its
/// successor, ends with it when the fleet is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
