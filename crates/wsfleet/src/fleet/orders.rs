//! What a running fleet asks of its slots: to stop (the fleet shuts down,
//! or it is scaled down or paused below the slot's position), or, for one
//! slot, to drop or rotate its connection now.
//!
//! One `watch` channel carries the fleet-wide part to every slot task; a
//! request for one slot waits in that slot's [`Requests`] cell and the
//! channel's version is bumped so the slot task looks at it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::watch;

use super::held::{HeldSet, Holding};

/// The fleet-wide orders every slot task watches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Orders {
    /// The fleet shuts down.
    pub(crate) shutdown: bool,
    /// Slots at positions `>= active` stop (scaled down or paused).
    pub(crate) active: usize,
    /// The fleet is paused (`active` is then 0).
    pub(crate) paused: bool,
}

/// Why a slot stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    Shutdown,
    ScaledDown,
    Paused,
    /// A coordinated fleet no longer holds the slot: close gracefully.
    Released,
    /// A coordinated fleet lost the slot's lease: abort at once.
    LeaseLost,
}

/// A one-off request for one slot's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    /// Close it (1001); the slot connects again.
    Drop = 1,
    /// Replace it make-before-break now.
    Rotate = 2,
}

/// What woke a serving slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    Stop(Stop),
    Request(Request),
}

/// A slot's pending request (at most one: a newer one replaces it).
#[derive(Debug, Default)]
pub(crate) struct Requests(AtomicU8);

impl Requests {
    pub(crate) fn put(&self, request: Request) {
        self.0.store(request as u8, Ordering::Release);
    }

    fn take(&self) -> Option<Request> {
        match self.0.swap(0, Ordering::AcqRel) {
            1 => Some(Request::Drop),
            2 => Some(Request::Rotate),
            _ => None,
        }
    }
}

/// A slot task's view of the orders: the fleet's, for its position.
#[derive(Debug)]
pub(crate) struct SlotOrders {
    rx: watch::Receiver<Orders>,
    position: usize,
    /// A coordinated fleet's held slots (`None`: every active slot runs).
    held: Option<Arc<HeldSet>>,
}

impl SlotOrders {
    pub(crate) fn new(rx: watch::Receiver<Orders>, position: usize) -> Self {
        Self {
            rx,
            position,
            held: None,
        }
    }

    /// The same, in a coordinated fleet: the slot also stops when `held`
    /// says it is not this process's.
    pub(crate) fn with_held(mut self, held: Option<Arc<HeldSet>>) -> Self {
        self.held = held;
        self
    }

    /// Whether, and why, the slot must stop now.
    pub(crate) fn stop(&self) -> Option<Stop> {
        let orders = *self.rx.borrow();
        if orders.shutdown {
            Some(Stop::Shutdown)
        } else if self.position < orders.active {
            match self.held.as_ref().map(|h| h.get(self.position)) {
                None | Some(Holding::Held) => None,
                Some(Holding::Free) => Some(Stop::Released),
                Some(Holding::Lost) => Some(Stop::LeaseLost),
            }
        } else if orders.paused {
            Some(Stop::Paused)
        } else {
            Some(Stop::ScaledDown)
        }
    }

    /// Resolves when the slot must stop (requests stay pending for
    /// [`wake`](Self::wake)).
    pub(crate) async fn stopped(&mut self) -> Stop {
        loop {
            if let Some(stop) = self.stop() {
                return stop;
            }
            if self.rx.changed().await.is_err() {
                // The fleet handle is gone: nothing will run the slot.
                return Stop::Shutdown;
            }
        }
    }

    /// Resolves when the slot must stop or a request for it is pending.
    pub(crate) async fn wake(&mut self, requests: &Requests) -> Wake {
        loop {
            if let Some(stop) = self.stop() {
                return Wake::Stop(stop);
            }
            if let Some(request) = requests.take() {
                return Wake::Request(request);
            }
            if self.rx.changed().await.is_err() {
                return Wake::Stop(Stop::Shutdown);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slot_stops_below_its_position_and_says_why() {
        let (tx, rx) = watch::channel(Orders {
            active: 3,
            ..Orders::default()
        });
        let (second, third) = (SlotOrders::new(rx.clone(), 1), SlotOrders::new(rx, 2));
        assert_eq!((second.stop(), third.stop()), (None, None));
        tx.send_modify(|o| o.active = 2);
        assert_eq!(
            (second.stop(), third.stop()),
            (None, Some(Stop::ScaledDown))
        );
        tx.send_modify(|o| {
            o.active = 0;
            o.paused = true;
        });
        assert_eq!(second.stop(), Some(Stop::Paused));
        tx.send_modify(|o| o.shutdown = true);
        assert_eq!(second.stop(), Some(Stop::Shutdown));
    }

    #[tokio::test]
    async fn a_request_wakes_only_its_slot_and_is_taken_once() {
        let (tx, rx) = watch::channel(Orders {
            active: 2,
            ..Orders::default()
        });
        let (mut first, mut second) = (SlotOrders::new(rx.clone(), 0), SlotOrders::new(rx, 1));
        let (mine, theirs) = (Requests::default(), Requests::default());
        mine.put(Request::Rotate);
        tx.send_modify(|_| {});
        assert_eq!(first.wake(&mine).await, Wake::Request(Request::Rotate));
        // The other slot saw the version change, found nothing for it, and
        // keeps waiting.
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(20), second.wake(&theirs)).await;
        assert!(waited.is_err(), "woke without a request: {waited:?}");
        // Taken once: a second wake waits for the next order.
        tx.send_modify(|o| o.active = 0);
        assert_eq!(first.wake(&mine).await, Wake::Stop(Stop::ScaledDown));
    }

    #[tokio::test]
    async fn stopped_leaves_requests_pending() {
        let (tx, rx) = watch::channel(Orders {
            active: 1,
            ..Orders::default()
        });
        let mut slot = SlotOrders::new(rx, 0);
        let requests = Requests::default();
        requests.put(Request::Drop);
        tx.send_modify(|_| {});
        let early =
            tokio::time::timeout(std::time::Duration::from_millis(20), slot.stopped()).await;
        assert!(early.is_err(), "a request is not a stop");
        assert_eq!(slot.wake(&requests).await, Wake::Request(Request::Drop));
    }
}
