//! Lease timing and one lease's bookkeeping, sans I/O (times are passed
//! in): when to renew, and when to stop serving because renewals have not
//! succeeded for too long (the fence).

use std::time::Duration;

use tokio::time::Instant;

/// The shortest lease accepted: below it, the fence leaves no room for a
/// NATS round trip.
pub const MIN_LEASE: Duration = Duration::from_millis(500);

/// The times derived from the lease (the bucket's TTL), in one place.
///
/// With `T` the TTL: renewals every `R = T/3`, a margin `M = T/10`, the
/// fence `F = T − R − M` (≈ 0.57 T), and the driver's tick
/// `t = T/20` (between 10 ms and 250 ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    ttl: Duration,
}

impl LeaseTiming {
    /// Timing for a lease of `ttl`; `None` below [`MIN_LEASE`].
    pub fn new(ttl: Duration) -> Option<Self> {
        (ttl >= MIN_LEASE).then_some(Self { ttl })
    }

    /// `T`: how long a key lives after its last write (the bucket's
    /// `max_age`).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// `R = T/3`: how often a held key is renewed.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// `M = T/10`: what the fence keeps back for the tick, the abort and
    /// the difference in clock rates.
    pub fn margin(&self) -> Duration {
        self.ttl / 10
    }

    /// `F = T − R − M`: a slot is no longer served once this long has
    /// passed since the last successful write of its key was *sent*.
    pub fn fence(&self) -> Duration {
        self.ttl - self.renew_every() - self.margin()
    }

    /// `t`: how often the driver looks at its leases (the fence is
    /// enforced within one tick).
    pub fn tick(&self) -> Duration {
        (self.ttl / 20).clamp(Duration::from_millis(10), Duration::from_millis(250))
    }

    /// How long one request to NATS may take before it counts as failed
    /// (a renewal is then retried at the next tick; the fence still
    /// applies).
    pub fn request_timeout(&self) -> Duration {
        self.renew_every()
    }
}

/// One key this process holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lease {
    /// The key's revision after our last write (the next update's
    /// expected revision).
    pub(crate) revision: u64,
    /// When the last successful write was sent: the key cannot expire
    /// before `confirmed + T` (the server stamps it on receipt, later).
    pub(crate) confirmed: Instant,
    /// A write (renewal or delete) is in flight.
    pub(crate) in_flight: bool,
    /// Being given up: its connection closes, then the key is deleted.
    pub(crate) releasing: bool,
}

impl Lease {
    /// A lease written (created) at `sent`, now at `revision`.
    pub(crate) fn new(revision: u64, sent: Instant) -> Self {
        Self {
            revision,
            confirmed: sent,
            in_flight: false,
            releasing: false,
        }
    }

    /// Whether a renewal should be sent now.
    pub(crate) fn renewal_due(&self, timing: &LeaseTiming, now: Instant) -> bool {
        !self.in_flight && now >= self.confirmed + timing.renew_every()
    }

    /// Whether the slot must stop being served now.
    pub(crate) fn fenced(&self, timing: &LeaseTiming, now: Instant) -> bool {
        now >= self.confirmed + timing.fence()
    }

    /// A renewal sent at `sent` succeeded with `revision`.
    pub(crate) fn renewed(&mut self, revision: u64, sent: Instant) {
        self.revision = revision;
        self.confirmed = self.confirmed.max(sent);
        self.in_flight = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_leaves_room_for_the_tick_before_the_ttl() {
        for ms in [500, 2_000, 10_000, 60_000] {
            let t = LeaseTiming::new(Duration::from_millis(ms)).unwrap();
            assert!(t.fence() + t.tick() < t.ttl(), "{t:?}");
            assert!(t.renew_every() < t.fence());
        }
        assert!(LeaseTiming::new(Duration::from_millis(499)).is_none());
        let t = LeaseTiming::new(Duration::from_secs(10)).unwrap();
        let fence = t.fence().as_secs_f64();
        assert!((fence - 5.6667).abs() < 0.001, "{fence}");
    }

    #[test]
    fn a_lease_is_renewed_after_r_and_fenced_after_f() {
        let t = LeaseTiming::new(Duration::from_secs(3)).unwrap();
        let start = Instant::now();
        let mut lease = Lease::new(7, start);
        assert!(!lease.renewal_due(&t, start + Duration::from_millis(999)));
        assert!(lease.renewal_due(&t, start + Duration::from_secs(1)));
        lease.in_flight = true;
        assert!(!lease.renewal_due(&t, start + Duration::from_secs(1)));
        assert!(!lease.fenced(&t, start + Duration::from_millis(1_699)));
        assert!(lease.fenced(&t, start + Duration::from_millis(1_700)));
        lease.renewed(9, start + Duration::from_secs(1));
        assert_eq!(lease.revision, 9);
        assert!(!lease.fenced(&t, start + Duration::from_millis(2_699)));
        // A late answer to an older renewal never moves the fence back.
        lease.renewed(10, start);
        assert_eq!(lease.confirmed, start + Duration::from_secs(1));
    }
}
