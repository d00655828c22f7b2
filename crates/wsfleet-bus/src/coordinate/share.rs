//! Fair shares, sans I/O: from the last scan of the bucket (which slots
//! have a lease, how many processes are live), what this process takes and
//! what it gives up.
//!
//! Each process aims for `ceil(slots / live processes)` slots. Because the
//! shares round up, they add up to at least the slot count: every slot
//! finds a holder, and no process ever has to give up a slot another one
//! below its share could not take. A process above its share releases the
//! surplus (gracefully: see the module's parent); a process below it takes
//! free slots in random order (so processes racing for the same free slots
//! rarely collide; when they do, the bucket's create refuses all but one).

use std::collections::BTreeSet;

/// What the bucket held at the last scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Scan {
    /// Slots with a live lease (anyone's, ours included).
    pub(crate) leased: BTreeSet<u32>,
    /// Live processes (member keys), this one included once registered.
    pub(crate) members: usize,
}

/// The slots this process should hold: `ceil(slots / members)`.
pub(crate) fn fair_share(slots: usize, members: usize) -> usize {
    slots.div_ceil(members.max(1))
}

/// What to do after a scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Free slots to try to take, in the order to try them.
    pub(crate) take: Vec<u32>,
    /// Held slots to give up.
    pub(crate) release: Vec<u32>,
}

/// The plan for a process holding `mine` of `slots`, after `scan`.
/// `busy` are slots it must not try now (takes in flight, released a
/// moment ago); `shuffle` orders the free ones (random in production).
/// `settled` is false while the member count just changed: surplus is
/// only released once two scans agree, so a member key renewed late does
/// not make the others shed and retake slots.
pub(crate) fn plan(
    slots: usize,
    mine: &BTreeSet<u32>,
    busy: &BTreeSet<u32>,
    scan: &Scan,
    settled: bool,
    shuffle: impl FnOnce(&mut [u32]),
) -> Plan {
    let share = fair_share(slots, scan.members);
    if mine.len() > share {
        if !settled {
            return Plan::default();
        }
        // The highest first: deterministic, and the lowest stay put.
        let release = mine
            .iter()
            .rev()
            .take(mine.len() - share)
            .copied()
            .collect();
        return Plan {
            take: Vec::new(),
            release,
        };
    }
    let deficit = share - mine.len();
    let mut free: Vec<u32> = (0..slots as u32)
        .filter(|s| !scan.leased.contains(s) && !mine.contains(s) && !busy.contains(s))
        .collect();
    shuffle(&mut free);
    free.truncate(deficit);
    Plan {
        take: free,
        release: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: impl IntoIterator<Item = u32>) -> BTreeSet<u32> {
        v.into_iter().collect()
    }

    #[test]
    fn shares_round_up_and_cover_every_slot() {
        assert_eq!(fair_share(30, 3), 10);
        assert_eq!(fair_share(31, 3), 11);
        assert_eq!(fair_share(30, 0), 30);
        for slots in 1..200 {
            for members in 1..12 {
                assert!(fair_share(slots, members) * members >= slots);
            }
        }
    }

    #[test]
    fn a_process_below_its_share_takes_only_free_slots() {
        let scan = Scan {
            leased: set(0..20),
            members: 3,
        };
        let p = plan(30, &set([]), &set([25]), &scan, true, |_| {});
        assert_eq!(p.take, (20..30).filter(|s| *s != 25).collect::<Vec<_>>());
        assert!(p.release.is_empty());
        // At its share: nothing.
        let mine = set(20..30);
        let scan = Scan {
            leased: set(0..30),
            members: 3,
        };
        assert_eq!(
            plan(30, &mine, &set([]), &scan, true, |_| {}),
            Plan::default()
        );
    }

    #[test]
    fn a_process_above_its_share_releases_the_surplus_once_settled() {
        // Two survivors held 15 each; the third came back.
        let mine = set(0..15);
        let scan = Scan {
            leased: set(0..30),
            members: 3,
        };
        assert_eq!(
            plan(30, &mine, &set([]), &scan, false, |_| {}),
            Plan::default()
        );
        let p = plan(30, &mine, &set([]), &scan, true, |_| {});
        assert_eq!(p.release, (10..15).rev().collect::<Vec<_>>());
        assert!(p.take.is_empty());
    }

    #[test]
    fn the_shuffle_orders_the_takes() {
        let scan = Scan {
            leased: set([]),
            members: 2,
        };
        let p = plan(4, &set([]), &set([]), &scan, true, |v| v.reverse());
        assert_eq!(p.take, [3, 2]);
    }
}
