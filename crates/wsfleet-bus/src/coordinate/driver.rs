//! The coordinator's task: one loop that never waits on NATS itself. Every
//! request (take, renew, delete, scan) runs in a task of its own with a
//! timeout and reports back; the loop ticks, enforces the fence, and
//! decides. So a slow NATS delays answers, never the fence.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use bytes::Bytes;
use futures_util::TryStreamExt as _;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use wsfleet::fleet::{FleetControl, SlotId};

use super::CoordinatorState;
use super::lease::{Lease, LeaseTiming};
use super::pace::TakePacer;
use super::share::{Scan, fair_share, plan};

/// Takes in flight at once, at most (each also paced).
const MAX_TAKES_IN_FLIGHT: usize = 16;

/// The key of slot `slot`.
fn slot_key(slot: u32) -> String {
    format!("slot.{slot}")
}

/// A request's outcome: done, refused by the bucket (the key exists, or
/// the revision moved on), or failed (timed out, transport).
enum Answer {
    Done(u64),
    Refused,
    Failed(String),
}

/// A finished request.
enum Done {
    Took {
        slot: u32,
        sent: Instant,
        answer: Answer,
    },
    /// `slot: None` is the member key.
    Renewed {
        slot: Option<u32>,
        sent: Instant,
        answer: Answer,
    },
    Registered {
        sent: Instant,
        answer: Answer,
    },
    Deleted {
        slot: u32,
    },
    Scanned(Result<Scan, String>),
}

pub(super) struct Driver {
    kv: kv::Store,
    control: FleetControl,
    timing: LeaseTiming,
    slots: usize,
    /// The value of every key we write.
    value: Bytes,
    member_key: String,
    member_value: Bytes,
    member: Option<Lease>,
    registering: bool,
    leases: BTreeMap<u32, Lease>,
    taking: BTreeSet<u32>,
    /// Free slots to try, paced.
    queue: VecDeque<u32>,
    /// Slots released a moment ago, not retaken before the instant.
    cooldown: BTreeMap<u32, Instant>,
    pacer: TakePacer,
    no_take_before: Instant,
    scan_at: Instant,
    scanning: bool,
    last_members: Option<usize>,
    ops: JoinSet<Done>,
    rng: u64,
    draining: Option<Instant>,
    state: watch::Sender<CoordinatorState>,
}

impl Driver {
    pub(super) fn new(
        kv: kv::Store,
        control: FleetControl,
        timing: LeaseTiming,
        slots: usize,
        instance: String,
        take_rate: f64,
        state: watch::Sender<CoordinatorState>,
    ) -> Self {
        let now = Instant::now();
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        Self {
            kv,
            control,
            timing,
            slots,
            member_key: format!("member.{instance}"),
            member_value: Bytes::from(format!("slots={slots}")),
            value: Bytes::from(instance),
            member: None,
            registering: false,
            leases: BTreeMap::new(),
            taking: BTreeSet::new(),
            queue: VecDeque::new(),
            cooldown: BTreeMap::new(),
            pacer: TakePacer::new(take_rate, timing.tick(), now),
            no_take_before: now + timing.renew_every(),
            scan_at: now,
            scanning: false,
            last_members: None,
            ops: JoinSet::new(),
            rng: u64::from_le_bytes(seed) | 1,
            draining: None,
            state,
        }
    }

    /// Runs until told to stop and every lease is given back (or the
    /// deadline passed), then leaves the fleet.
    pub(super) async fn run(mut self, mut stop: oneshot::Receiver<Duration>) {
        let mut ticker = tokio::time::interval(self.timing.tick());
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => self.on_tick(Instant::now()),
                Some(done) = self.ops.join_next(), if !self.ops.is_empty() => {
                    if let Ok(done) = done {
                        self.on_done(done, Instant::now());
                    }
                }
                within = &mut stop, if self.draining.is_none() => {
                    let within = within.unwrap_or(Duration::ZERO);
                    self.start_draining(Instant::now() + within);
                }
            }
            if let Some(deadline) = self.draining {
                let idle = self.leases.is_empty() && self.taking.is_empty();
                if idle || Instant::now() >= deadline {
                    break;
                }
            }
        }
        for slot in self.leases.keys() {
            let _ = self.control.revoke(SlotId(*slot));
        }
        if let Some(member) = self.member {
            let _ = tokio::time::timeout(
                self.timing.request_timeout(),
                self.kv
                    .delete_expect_revision(&self.member_key, Some(member.revision)),
            )
            .await;
        }
        tracing::info!(left = self.leases.len(), "left the coordinated fleet");
    }

    fn random(&mut self) -> f64 {
        // xorshift64*: jitter only.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn start_draining(&mut self, deadline: Instant) {
        self.draining = Some(deadline);
        self.queue.clear();
        for (slot, lease) in &mut self.leases {
            lease.releasing = true;
            let _ = self.control.release(SlotId(*slot));
        }
        tracing::info!(slots = self.leases.len(), "releasing every slot");
    }

    fn on_tick(&mut self, now: Instant) {
        let timing = self.timing;
        // 1. The fence, before anything else.
        let fenced: Vec<u32> = self
            .leases
            .iter()
            .filter(|(_, l)| l.fenced(&timing, now))
            .map(|(s, _)| *s)
            .collect();
        for slot in fenced {
            self.lose(slot, "not renewed in time (fenced)");
        }
        if self.member.is_some_and(|m| m.fenced(&timing, now)) {
            tracing::warn!("membership not renewed in time: registering again");
            self.member = None;
        }
        // 2. Renewals and the graceful ends of released slots.
        let mut renew = Vec::new();
        let mut delete = Vec::new();
        for (slot, lease) in &mut self.leases {
            if lease.in_flight {
                continue;
            }
            if lease.releasing && self.control.is_stopped(SlotId(*slot)).unwrap_or(true) {
                lease.in_flight = true;
                delete.push((*slot, lease.revision));
            } else if lease.renewal_due(&timing, now) {
                lease.in_flight = true;
                renew.push((*slot, lease.revision));
            }
        }
        for (slot, revision) in renew {
            self.renew(Some(slot), revision, now);
        }
        for (slot, revision) in delete {
            self.delete(slot, revision);
        }
        match &mut self.member {
            Some(m) if m.renewal_due(&timing, now) => {
                m.in_flight = true;
                let revision = m.revision;
                self.renew(None, revision, now);
            }
            None if !self.registering && self.draining.is_none() => self.register(now),
            _ => {}
        }
        if self.draining.is_some() {
            return;
        }
        // 3. Takes, paced with jitter.
        self.cooldown.retain(|_, until| *until > now);
        while self.pacer.ready(now)
            && now >= self.no_take_before
            && self.taking.len() < MAX_TAKES_IN_FLIGHT
        {
            let Some(slot) = self.queue.pop_front() else {
                break;
            };
            if self.leases.contains_key(&slot) || self.taking.contains(&slot) {
                continue;
            }
            self.take(slot, now);
            let unit = self.random();
            self.pacer.took(now, unit);
        }
        // 4. The next scan.
        if !self.scanning && now >= self.scan_at {
            self.scan();
            let every = timing.renew_every().mul_f64(0.8 + 0.4 * self.random());
            self.scan_at = now + every;
        }
    }

    fn on_done(&mut self, done: Done, now: Instant) {
        match done {
            Done::Took { slot, sent, answer } => {
                self.taking.remove(&slot);
                let Answer::Done(revision) = answer else {
                    if let Answer::Failed(why) = answer {
                        tracing::debug!(slot, %why, "take failed");
                    }
                    return;
                };
                let mut lease = Lease::new(revision, sent);
                if self.draining.is_some() || lease.fenced(&self.timing, now) {
                    // Not served: give it straight back.
                    lease.releasing = true;
                    self.leases.insert(slot, lease);
                    return;
                }
                self.leases.insert(slot, lease);
                match self.control.hold(SlotId(slot)) {
                    Ok(_) => tracing::debug!(slot, revision, "slot taken"),
                    Err(e) => tracing::warn!(slot, %e, "slot taken but cannot run"),
                }
                self.publish_state(None);
            }
            Done::Renewed {
                slot: Some(slot),
                sent,
                answer,
            } => {
                let Some(lease) = self.leases.get_mut(&slot) else {
                    return; // fenced meanwhile
                };
                match answer {
                    Answer::Done(revision) => lease.renewed(revision, sent),
                    Answer::Refused => self.lose(slot, "renewal refused (revision moved on)"),
                    Answer::Failed(why) => {
                        lease.in_flight = false;
                        tracing::debug!(slot, %why, "renewal failed; retrying");
                    }
                }
            }
            Done::Renewed {
                slot: None,
                sent,
                answer,
            } => {
                let Some(member) = &mut self.member else {
                    return;
                };
                match answer {
                    Answer::Done(revision) => member.renewed(revision, sent),
                    Answer::Refused => self.member = None,
                    Answer::Failed(_) => member.in_flight = false,
                }
            }
            Done::Registered { sent, answer } => {
                self.registering = false;
                match answer {
                    Answer::Done(revision) => self.member = Some(Lease::new(revision, sent)),
                    Answer::Refused | Answer::Failed(_) => {
                        tracing::debug!("registering failed; retrying");
                    }
                }
            }
            Done::Deleted { slot } => {
                self.leases.remove(&slot);
                self.cooldown.insert(slot, now + self.timing.ttl());
                tracing::debug!(slot, "slot released");
                self.publish_state(None);
            }
            Done::Scanned(Ok(scan)) => {
                self.scanning = false;
                self.after_scan(&scan);
            }
            Done::Scanned(Err(why)) => {
                self.scanning = false;
                tracing::debug!(%why, "scan failed");
            }
        }
    }

    fn after_scan(&mut self, scan: &Scan) {
        let settled = self.last_members == Some(scan.members);
        self.last_members = Some(scan.members);
        self.publish_state(Some(scan.members));
        if self.draining.is_some() {
            return;
        }
        let mine: BTreeSet<u32> = self
            .leases
            .iter()
            .filter(|(_, l)| !l.releasing)
            .map(|(s, _)| *s)
            .chain(self.taking.iter().copied())
            .collect();
        let busy: BTreeSet<u32> = self
            .cooldown
            .keys()
            .copied()
            .chain(self.leases.keys().copied())
            .collect();
        let mut rng = self.rng;
        let decided = plan(self.slots, &mine, &busy, scan, settled, |free| {
            // Fisher–Yates with the driver's generator.
            for i in (1..free.len()).rev() {
                rng ^= rng >> 12;
                rng ^= rng << 25;
                rng ^= rng >> 27;
                let j = (rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % (i as u64 + 1)) as usize;
                free.swap(i, j);
            }
        });
        self.rng = rng;
        self.queue = decided.take.into();
        if !decided.release.is_empty() {
            tracing::info!(
                slots = decided.release.len(),
                members = scan.members,
                "above the fair share: releasing the surplus"
            );
        }
        for slot in decided.release {
            if let Some(lease) = self.leases.get_mut(&slot) {
                lease.releasing = true;
                let _ = self.control.release(SlotId(slot));
            }
        }
    }

    fn publish_state(&self, members: Option<usize>) {
        let held = self.leases.len();
        self.state.send_modify(|s| {
            s.held = held;
            if let Some(m) = members {
                s.members = m;
                s.share = fair_share(self.slots, m);
            }
        });
    }

    /// The lease of `slot` is lost: abort its connection now.
    fn lose(&mut self, slot: u32, why: &str) {
        self.leases.remove(&slot);
        let _ = self.control.revoke(SlotId(slot));
        tracing::warn!(slot, why, "slot lease lost: connection aborted");
        self.state.send_modify(|s| {
            s.lost += 1;
            s.held = self.leases.len();
        });
    }

    fn take(&mut self, slot: u32, sent: Instant) {
        self.taking.insert(slot);
        let (kv, value, limit) = (
            self.kv.clone(),
            self.value.clone(),
            self.timing.request_timeout(),
        );
        self.ops.spawn(async move {
            let answer = match tokio::time::timeout(limit, kv.create(slot_key(slot), value)).await {
                Ok(Ok(revision)) => Answer::Done(revision),
                Ok(Err(e)) if e.kind() == CreateErrorKind::AlreadyExists => Answer::Refused,
                Ok(Err(e)) => Answer::Failed(e.to_string()),
                Err(_) => Answer::Failed(format!("no answer in {limit:?}")),
            };
            Done::Took { slot, sent, answer }
        });
    }

    fn renew(&mut self, slot: Option<u32>, revision: u64, sent: Instant) {
        let (key, value) = match slot {
            Some(s) => (slot_key(s), self.value.clone()),
            None => (self.member_key.clone(), self.member_value.clone()),
        };
        let (kv, limit) = (self.kv.clone(), self.timing.request_timeout());
        self.ops.spawn(async move {
            let answer = match tokio::time::timeout(limit, kv.update(key, value, revision)).await {
                Ok(Ok(revision)) => Answer::Done(revision),
                Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => Answer::Refused,
                Ok(Err(e)) => Answer::Failed(e.to_string()),
                Err(_) => Answer::Failed(format!("no answer in {limit:?}")),
            };
            Done::Renewed { slot, sent, answer }
        });
    }

    fn register(&mut self, sent: Instant) {
        self.registering = true;
        let (kv, key, value, limit) = (
            self.kv.clone(),
            self.member_key.clone(),
            self.member_value.clone(),
            self.timing.request_timeout(),
        );
        self.ops.spawn(async move {
            let answer = match tokio::time::timeout(limit, kv.create(key, value)).await {
                Ok(Ok(revision)) => Answer::Done(revision),
                Ok(Err(e)) if e.kind() == CreateErrorKind::AlreadyExists => Answer::Refused,
                Ok(Err(e)) => Answer::Failed(e.to_string()),
                Err(_) => Answer::Failed(format!("no answer in {limit:?}")),
            };
            Done::Registered { sent, answer }
        });
    }

    fn delete(&mut self, slot: u32, revision: u64) {
        let (kv, limit) = (self.kv.clone(), self.timing.request_timeout());
        self.ops.spawn(async move {
            // Refused or failed, the key expires by itself within the TTL.
            let _ = tokio::time::timeout(
                limit,
                kv.delete_expect_revision(slot_key(slot), Some(revision)),
            )
            .await;
            Done::Deleted { slot }
        });
    }

    fn scan(&mut self) {
        self.scanning = true;
        let (kv, limit, me) = (
            self.kv.clone(),
            self.timing.request_timeout(),
            self.member_key.clone(),
        );
        self.ops.spawn(async move {
            let scanned = async {
                let keys: Vec<String> = kv
                    .keys()
                    .await
                    .map_err(|e| e.to_string())?
                    .try_collect()
                    .await
                    .map_err(|e| e.to_string())?;
                let mut scan = Scan::default();
                let mut me_seen = false;
                for key in keys {
                    if let Some(slot) = key.strip_prefix("slot.") {
                        if let Ok(slot) = slot.parse() {
                            scan.leased.insert(slot);
                        }
                    } else if key.starts_with("member.") {
                        scan.members += 1;
                        me_seen |= key == me;
                    }
                }
                // Counted even before its key is written.
                scan.members += usize::from(!me_seen);
                Ok(scan)
            };
            let result = match tokio::time::timeout(limit, scanned).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer in {limit:?}")),
            };
            Done::Scanned(result)
        });
    }
}
