//! The whole coordinated fleet as NATS sees it: its members, the slots
//! each holds, and the free ones (`wsfleet status --coordinate`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use futures_util::TryStreamExt as _;

use super::{CoordinateError, CoordinateUrl};

/// One live process of a coordinated fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Member {
    /// Its instance id (`host-pid-random`).
    pub instance: String,
    /// The fleet's slot count as it was started with.
    pub slots: Option<usize>,
    /// The slots it holds.
    pub held: Vec<u32>,
}

/// The fleet at one moment, read from its lease bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetStatus {
    /// The fleet's name.
    pub fleet: String,
    /// The slot count (the largest the members report).
    pub slots: usize,
    /// Live members, by instance id; holders whose member key expired are
    /// listed too (their slots expire soon).
    pub members: Vec<Member>,
    /// Slots nobody holds.
    pub free: Vec<u32>,
}

/// Reads the fleet's bucket: every key and its holder, within `within`.
///
/// # Errors
/// [`CoordinateError::Connect`], or [`CoordinateError::Bucket`] when the
/// bucket does not exist (no process coordinates that fleet) or cannot be
/// read in time.
pub async fn fleet_status(
    url: &CoordinateUrl,
    within: Duration,
) -> Result<FleetStatus, CoordinateError> {
    let bucket = url.bucket();
    let problem = |p: String| CoordinateError::Bucket {
        bucket: bucket.clone(),
        problem: p,
    };
    let read = async {
        let kv = super::open_bucket(url, None).await?;
        let keys: Vec<String> = kv
            .keys()
            .await
            .map_err(|e| problem(e.to_string()))?
            .try_collect()
            .await
            .map_err(|e| problem(e.to_string()))?;
        let mut members: BTreeMap<String, Member> = BTreeMap::new();
        let mut held = BTreeSet::new();
        for key in keys {
            // Gone between the listing and the read: skipped.
            let Some(value) = kv
                .get(key.as_str())
                .await
                .map_err(|e| problem(e.to_string()))?
            else {
                continue;
            };
            let value = String::from_utf8_lossy(&value).into_owned();
            if let Some(instance) = key.strip_prefix("member.") {
                let member = members.entry(instance.to_owned()).or_default();
                member.instance = instance.to_owned();
                member.slots = value
                    .strip_prefix("slots=")
                    .and_then(|n| n.trim().parse().ok());
            } else if let Some(Ok(slot)) = key.strip_prefix("slot.").map(str::parse::<u32>) {
                held.insert(slot);
                let member = members.entry(value.clone()).or_default();
                member.instance = value;
                member.held.push(slot);
            }
        }
        let slots = members
            .values()
            .filter_map(|m| m.slots)
            .max()
            .unwrap_or(0)
            .max(held.last().map_or(0, |s| *s as usize + 1));
        let free = (0..slots as u32).filter(|s| !held.contains(s)).collect();
        Ok(FleetStatus {
            fleet: url.fleet().to_owned(),
            slots,
            members: members.into_values().collect(),
            free,
        })
    };
    tokio::time::timeout(within, read)
        .await
        .map_err(|_| problem(format!("no answer in {within:?}")))?
}

impl fmt::Display for FleetStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held: usize = self.members.iter().map(|m| m.held.len()).sum();
        writeln!(
            f,
            "fleet {}: {} slots, {} held, {} free, {} members",
            self.fleet,
            self.slots,
            held,
            self.free.len(),
            self.members.iter().filter(|m| m.slots.is_some()).count()
        )?;
        writeln!(f, "{:<40} {:>6}  SLOTS", "MEMBER", "HELD")?;
        for m in &self.members {
            let name = if m.slots.is_some() {
                m.instance.clone()
            } else {
                format!("{} (gone)", m.instance)
            };
            writeln!(f, "{name:<40} {:>6}  {}", m.held.len(), Ranges(&m.held))?;
        }
        writeln!(
            f,
            "{:<40} {:>6}  {}",
            "(free)",
            self.free.len(),
            Ranges(&self.free)
        )
    }
}

/// Sorted slot ids as ranges: `0-3,7,9-10`.
struct Ranges<'a>(&'a [u32]);

impl fmt::Display for Ranges<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sorted = self.0.to_vec();
        sorted.sort_unstable();
        let mut first = true;
        let mut i = 0;
        while i < sorted.len() {
            let start = sorted[i];
            let mut end = start;
            while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
                i += 1;
                end = sorted[i];
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
            i += 1;
        }
        if first {
            f.write_str("-")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_print_as_ranges() {
        assert_eq!(Ranges(&[3, 0, 1, 2, 7, 9, 10]).to_string(), "0-3,7,9-10");
        assert_eq!(Ranges(&[]).to_string(), "-");
        assert_eq!(Ranges(&[5]).to_string(), "5");
    }
}
