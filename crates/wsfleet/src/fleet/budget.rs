//! The fleet-wide memory budget: one atomic counter every connection
//! charges, the rule that decides who waits and who goes when it is spent,
//! and the wake-up for connections paused until memory comes back.
//!
//! # The rule
//!
//! Every byte a connection's buffers hold is charged before it is
//! allocated, and every received message keeps its charge until the
//! application drops it ([`MemoryBudget::hand_over`]). When a charge is
//! refused, [`FleetBudget`] decides between *wait* (the connection stops
//! reading until memory is released: TCP pushes back on the server) and
//! *go* (the connection is closed with 1009):
//!
//! 1. At least half the budget is held outside the connections' buffers
//!    (received messages the consumers have not dropped, or memory the
//!    application reserved): wait. A slow consumer means backpressure,
//!    never drops.
//! 2. Otherwise the connection holding the most *in-flight* bytes (what its
//!    peer made it buffer: partial frames, reassembly, inflate) goes, if it
//!    holds more than its fair share (`budget / connections`): the
//!    requester itself (refused), or another one (evicted, and the
//!    requester waits for the memory it frees). A connection under its
//!    share is never the one refused while one over its share holds memory.
//! 3. Nobody is over their share: wait while memory is held outside the
//!    connections' buffers (it comes back as consumers consume); with
//!    nothing to wait for, the largest holder goes, so the fleet never
//!    deadlocks on half-received messages.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use wsfleet_proto::MemoryBudget;

/// How long a paused connection sleeps at most before looking at the budget
/// again, should a wake-up be missed (releases wake waiters directly).
const RECHECK: Duration = Duration::from_millis(100);

/// A byte budget shared by every connection of a fleet. A buffer growth
/// that would pass `max` is refused; the fleet then pauses the connection
/// or closes it with 1009 (see the module docs for the rule) — never the
/// process.
///
/// It bounds what peers and consumers can make the fleet hold: read
/// buffers, message reassembly, inflate output, outbound queues, and every
/// received message until the application drops it. The fixed cost of a
/// connection (its task, socket, TLS state and records) is not charged:
/// size the budget on top of `connections ×` that (see `docs/memory.md`).
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
    /// Bytes of `used` held in messages handed to the application.
    handed: AtomicUsize,
    /// Connections waiting for memory: releases wake them only then.
    waiters: AtomicUsize,
    released: Notify,
    /// Live connections, for the fair share and the largest holder (and
    /// ended ones not yet pruned: see `member`).
    members: Mutex<Members>,
    pauses: AtomicU64,
    paused_ns: AtomicU64,
    evictions: AtomicU64,
}

/// The fleet's connections, as weak references, pruned now and then.
#[derive(Debug, Default)]
struct Members {
    list: Vec<Weak<ConnBudget>>,
    /// Prune ended connections once the list is this long.
    prune_at: usize,
}

/// The shortest member list worth a pruning pass.
const MIN_PRUNE: usize = 64;

/// What the fleet decided for a connection whose charge was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Stop reading until memory is released.
    Wait,
    /// Close with 1009: this connection holds the most.
    Refuse,
}

impl FleetBudget {
    /// A budget of `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            max,
            handed: AtomicUsize::new(0),
            waiters: AtomicUsize::new(0),
            released: Notify::new(),
            members: Mutex::new(Members::default()),
            pauses: AtomicU64::new(0),
            paused_ns: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
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

    /// Bytes held now in received messages the application has not
    /// dropped yet (part of [`used`](Self::used)).
    pub fn handed(&self) -> usize {
        self.handed.load(Ordering::Relaxed)
    }

    /// How many times a connection paused for memory.
    pub fn pauses(&self) -> u64 {
        self.pauses.load(Ordering::Relaxed)
    }

    /// Total time connections spent paused for memory (summed over
    /// connections: two paused for a second each count two seconds),
    /// pauses still under way included.
    pub fn paused_time(&self) -> Duration {
        let members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        let ongoing: Duration = members
            .list
            .iter()
            .filter_map(Weak::upgrade)
            .map(|m| m.pause_so_far())
            .sum();
        drop(members);
        Duration::from_nanos(self.paused_ns.load(Ordering::Relaxed)) + ongoing
    }

    /// Connections closed because another one needed the memory they held.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    fn note_peak(&self, now: usize) {
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    fn wake_waiters(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.released.notify_waiters();
        }
    }

    /// A new connection's view of the budget, counted for the fair share.
    pub(crate) fn member(self: &Arc<Self>) -> Arc<ConnBudget> {
        let conn = Arc::new(ConnBudget {
            fleet: self.clone(),
            held: Arc::new(AtomicUsize::new(0)),
            handed: AtomicUsize::new(0),
            evicted: AtomicBool::new(false),
            evict: Mutex::new(None),
            paused: AtomicBool::new(false),
            paused_ns: AtomicU64::new(0),
            paused_since: Mutex::new(None),
        });
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        // Pruning ended connections costs a pass over all: done when the
        // list has doubled since the last pass, so each connection pays
        // O(1) on average (a pass per attempt made a 10k ramp quadratic).
        if members.list.len() >= members.prune_at {
            members.list.retain(|m| m.strong_count() > 0);
            members.prune_at = (members.list.len() * 2).max(MIN_PRUNE);
        }
        members.list.push(Arc::downgrade(&conn));
        conn
    }

    /// Applies the rule (module docs) for `me`, refused `requested` bytes.
    pub(crate) fn on_refused(&self, me: &ConnBudget, requested: usize) -> Verdict {
        if me.is_evicted() {
            return Verdict::Refuse;
        }
        // The common case under a slow consumer, decided without a pass
        // over every connection (paused connections ask again every
        // recheck).
        if self.handed() >= self.max / 2 {
            return Verdict::Wait;
        }
        let members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        let mut live = 0usize;
        let mut leaving = false;
        let mut inflight_total = 0usize;
        let mut largest: Option<(usize, Arc<ConnBudget>)> = None;
        for m in members.list.iter().filter_map(Weak::upgrade) {
            live += 1;
            let inflight = m.inflight();
            inflight_total += inflight;
            if m.is_evicted() {
                // Already going: its memory is on its way back.
                leaving |= inflight > 0;
                continue;
            }
            if largest.as_ref().is_none_or(|(most, _)| inflight > *most) {
                largest = Some((inflight, m));
            }
        }
        drop(members);
        // Received messages not yet dropped, and what the application
        // reserved itself: it comes back without anyone being closed.
        let outside = self.used().saturating_sub(inflight_total);
        if leaving || outside >= self.max / 2 {
            return Verdict::Wait;
        }
        let share = self.max / live.max(1);
        let Some((most, holder)) = largest else {
            return Verdict::Refuse;
        };
        let mine = me.inflight();
        if most <= share && outside > 0 {
            return Verdict::Wait;
        }
        if std::ptr::eq(&*holder, me) || mine >= most {
            tracing::debug!(
                held = mine,
                requested,
                share,
                "memory budget spent: this connection holds the most in flight"
            );
            return Verdict::Refuse;
        }
        tracing::info!(
            evicted_holds = most,
            share,
            requested,
            "memory budget spent: closing the connection that holds the most so others can go on"
        );
        holder.evict();
        self.evictions.fetch_add(1, Ordering::Relaxed);
        Verdict::Wait
    }

    /// Waits until `requested` bytes may fit (or a bounded recheck time has
    /// passed): the caller retries its reservation after.
    pub(crate) async fn room_for(&self, requested: usize) {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let released = self.released.notified();
        tokio::pin!(released);
        released.as_mut().enable();
        if self.used().saturating_add(requested) > self.max {
            let _ = tokio::time::timeout(RECHECK, released).await;
        }
        self.waiters.fetch_sub(1, Ordering::SeqCst);
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
        self.wake_waiters();
    }

    fn hand_over(&self, bytes: usize) {
        self.handed.fetch_add(bytes, Ordering::Relaxed);
    }

    fn release_handed(&self, bytes: usize) {
        self.handed.fetch_sub(bytes, Ordering::Relaxed);
        self.release(bytes);
    }
}

/// One connection's view of the fleet budget: charges the fleet and keeps
/// the connection's own totals, which its stats record reads (exact even
/// while the connection sits idle in `recv`), and carries the fleet's
/// decisions about it (evicted, paused).
#[derive(Debug)]
pub(crate) struct ConnBudget {
    pub(crate) fleet: Arc<FleetBudget>,
    /// Everything this connection holds, handed-out messages included.
    pub(crate) held: Arc<AtomicUsize>,
    /// Of `held`: bytes in messages handed to the application.
    handed: AtomicUsize,
    evicted: AtomicBool,
    /// Its task's waker while it waits to hear of an eviction: polled on
    /// every turn of the task, so a kept waker, not a registration in a
    /// `Notify`'s list made and removed each time.
    evict: Mutex<Option<Waker>>,
    paused: AtomicBool,
    /// Time spent in pauses that ended.
    paused_ns: AtomicU64,
    /// When the pause under way began.
    paused_since: Mutex<Option<Instant>>,
}

impl ConnBudget {
    /// Bytes its peer made it buffer (not yet handed out as messages).
    fn inflight(&self) -> usize {
        self.held
            .load(Ordering::Relaxed)
            .saturating_sub(self.handed.load(Ordering::Relaxed))
    }

    pub(crate) fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Relaxed)
    }

    fn evict(&self) {
        self.evicted.store(true, Ordering::Relaxed);
        let waiting = self.evict.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(waker) = waiting {
            waker.wake();
        }
    }

    /// Ready once the fleet asked this connection to go; until then keeps
    /// the waker to wake.
    pub(crate) fn poll_evicted(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_evicted() {
            return Poll::Ready(());
        }
        let mut waiting = self.evict.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *waiting {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        // Under the lock `evict` takes after setting the flag: either it
        // finds this waker or the flag is seen here.
        if self.is_evicted() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Resolves once the fleet asked this connection to go.
    pub(crate) async fn evicted(&self) {
        std::future::poll_fn(|cx| self.poll_evicted(cx)).await;
    }

    /// True while the connection waits for memory.
    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Total time this connection spent paused for memory, the pause
    /// under way included (a connection paused for good still counts).
    pub(crate) fn paused_time(&self) -> Duration {
        let since = self.paused_since.lock().unwrap_or_else(|p| p.into_inner());
        let ongoing = since.map_or(Duration::ZERO, |t| t.elapsed());
        Duration::from_nanos(self.paused_ns.load(Ordering::Relaxed)) + ongoing
    }

    /// How long the pause under way has lasted (zero when not paused).
    fn pause_so_far(&self) -> Duration {
        let since = self.paused_since.lock().unwrap_or_else(|p| p.into_inner());
        since.map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// Marks the start (true) or end (false) of a pause; an ended pause's
    /// length is added to this connection's and the fleet's totals.
    pub(crate) fn set_paused(&self, paused: bool) {
        let mut since = self.paused_since.lock().unwrap_or_else(|p| p.into_inner());
        let was = self.paused.swap(paused, Ordering::Relaxed);
        if paused && !was {
            *since = Some(Instant::now());
            self.fleet.pauses.fetch_add(1, Ordering::Relaxed);
        }
        if !paused && was {
            let elapsed = since.take().map_or(Duration::ZERO, |t| t.elapsed());
            let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
            self.paused_ns.fetch_add(ns, Ordering::Relaxed);
            self.fleet.paused_ns.fetch_add(ns, Ordering::Relaxed);
        }
    }
}

impl ConnBudget {
    /// The connection stops reading for memory; true if it was reading.
    pub(crate) fn begin_pause(&self) -> bool {
        let was = self.is_paused();
        self.set_paused(true);
        !was
    }

    /// The connection reads again; true if it was paused.
    pub(crate) fn end_pause(&self) -> bool {
        let was = self.is_paused();
        self.set_paused(false);
        was
    }
}

impl Drop for ConnBudget {
    /// A connection that ends while paused (evicted, shut down) ends its
    /// pause: the fleet's total keeps it.
    fn drop(&mut self) {
        self.set_paused(false);
    }
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
        self.held.fetch_sub(bytes, Ordering::Relaxed);
        self.fleet.release(bytes);
    }

    fn hand_over(&self, bytes: usize) {
        self.handed.fetch_add(bytes, Ordering::Relaxed);
        self.fleet.hand_over(bytes);
    }

    fn release_handed(&self, bytes: usize) {
        self.handed.fetch_sub(bytes, Ordering::Relaxed);
        self.held.fetch_sub(bytes, Ordering::Relaxed);
        self.fleet.release_handed(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(max: usize) -> Arc<FleetBudget> {
        Arc::new(FleetBudget::new(max))
    }

    #[test]
    fn the_largest_in_flight_holder_goes_first() {
        let fleet = budget(1000);
        let pinner = fleet.member();
        let healthy = fleet.member();
        assert!(pinner.try_reserve(900));
        assert!(healthy.try_reserve(50));
        assert!(!healthy.try_reserve(100));
        // Under its share (500): the pinner is evicted and the healthy one waits.
        assert_eq!(fleet.on_refused(&healthy, 100), Verdict::Wait);
        assert!(pinner.is_evicted() && !healthy.is_evicted());
        assert_eq!(fleet.evictions(), 1);
        // The pinner asking for more is refused itself.
        assert_eq!(fleet.on_refused(&pinner, 10), Verdict::Refuse);
    }

    #[test]
    fn the_requester_holding_the_most_is_refused() {
        let fleet = budget(1000);
        let hog = fleet.member();
        let other = fleet.member();
        assert!(hog.try_reserve(700));
        assert!(other.try_reserve(200));
        assert_eq!(fleet.on_refused(&hog, 200), Verdict::Refuse);
        assert!(!other.is_evicted());
    }

    #[test]
    fn memory_held_by_consumers_means_wait_not_drop() {
        let fleet = budget(1000);
        let a = fleet.member();
        let b = fleet.member();
        assert!(a.try_reserve(600));
        a.hand_over(600);
        assert!(b.try_reserve(300));
        assert_eq!(fleet.handed(), 600);
        // b holds 300 in flight (over nobody's share: 500), consumers hold 600.
        assert_eq!(fleet.on_refused(&b, 200), Verdict::Wait);
        assert_eq!(fleet.on_refused(&a, 200), Verdict::Wait);
        assert!(!a.is_evicted() && !b.is_evicted());
        // The consumer lets go: handed and held fall, the fleet is free again.
        a.release_handed(600);
        assert_eq!((fleet.handed(), a.held.load(Ordering::Relaxed)), (0, 0));
        assert!(b.try_reserve(600));
    }

    #[test]
    fn with_nothing_to_wait_for_the_largest_goes() {
        let fleet = budget(1000);
        let members: Vec<_> = (0..4).map(|_| fleet.member()).collect();
        for (m, n) in members.iter().zip([240, 250, 230, 240]) {
            assert!(m.try_reserve(n));
        }
        // Nobody over the 250 share, nothing handed out: no one would ever
        // release; the largest (250) is evicted instead of a deadlock.
        assert_eq!(fleet.on_refused(&members[0], 100), Verdict::Wait);
        assert!(members[1].is_evicted());
        // While it leaves, the others wait for its memory.
        assert_eq!(fleet.on_refused(&members[2], 100), Verdict::Wait);
        assert_eq!(fleet.evictions(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_wakes_a_waiter() {
        let fleet = budget(100);
        assert!(fleet.try_reserve(100));
        let waiter = tokio::spawn({
            let fleet = fleet.clone();
            async move {
                let start = Instant::now();
                fleet.room_for(50).await;
                start.elapsed()
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        fleet.release(60);
        let waited = waiter.await.unwrap();
        assert!(waited < RECHECK, "woken by the release after {waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_under_way_counts_before_it_ends() {
        let fleet = budget(100);
        let stuck = fleet.member();
        let done = fleet.member();
        stuck.set_paused(true);
        done.set_paused(true);
        tokio::time::sleep(Duration::from_secs(2)).await;
        done.set_paused(false);
        tokio::time::sleep(Duration::from_secs(3)).await;
        // A consumer stalled for good: its connection is paused for good,
        // and the stats say so while it lasts.
        assert_eq!(stuck.paused_time(), Duration::from_secs(5));
        assert_eq!(done.paused_time(), Duration::from_secs(2));
        assert_eq!(fleet.paused_time(), Duration::from_secs(7));
        assert_eq!(fleet.pauses(), 2);
        // A connection that goes while paused keeps its time in the total.
        drop(stuck);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(fleet.paused_time(), Duration::from_secs(7));
    }
}
