//! The pools an admin server shows: one [`FleetMonitor`] each, named
//! uniquely, and what `/connections`, `/pools` and `/healthz` make of them.

use std::fmt;

use super::ControlPools;
use crate::fleet::{ConnectionInfo, FleetMonitor, PoolInfo};

/// A second pool of a name an admin server shows already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicatePool {
    /// The name both pools have.
    pub name: String,
}

impl fmt::Display for DuplicatePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pool {:?} is served already: each pool needs a name of its own \
             (FleetBuilder::name)",
            self.name
        )
    }
}

impl std::error::Error for DuplicatePool {}

/// The pools served: fixed when the server is built, and those of a
/// [`ControlPools`] registry, read at each request (a reload adds and
/// replaces pools while the server runs).
#[derive(Debug, Clone)]
pub(super) struct Pools {
    fixed: Vec<FleetMonitor>,
    live: Option<ControlPools>,
}

impl Pools {
    pub(super) fn new(first: FleetMonitor) -> Self {
        Self {
            fixed: vec![first],
            live: None,
        }
    }

    /// The pools of `registry`, as they are at each request.
    pub(super) fn live(registry: ControlPools) -> Self {
        Self {
            fixed: Vec::new(),
            live: Some(registry),
        }
    }

    /// Adds `monitor`'s pool unless one of its name is there.
    pub(super) fn add(&mut self, monitor: FleetMonitor) -> Result<(), DuplicatePool> {
        if self.monitors().iter().any(|m| m.name() == monitor.name()) {
            return Err(DuplicatePool {
                name: monitor.name().to_owned(),
            });
        }
        self.fixed.push(monitor);
        Ok(())
    }

    /// Every pool now: the fixed ones, then the registry's by name.
    pub(super) fn monitors(&self) -> Vec<FleetMonitor> {
        let mut all = self.fixed.clone();
        if let Some(live) = &self.live {
            all.extend(live.monitors());
        }
        all
    }

    /// Every pool's connections, pool after pool.
    pub(super) fn connections(&self) -> Vec<ConnectionInfo> {
        self.monitors()
            .iter()
            .flat_map(|m| m.stats().connections)
            .collect()
    }

    /// Every pool's summary.
    pub(super) fn summaries(&self) -> Vec<PoolInfo> {
        self.monitors()
            .iter()
            .map(|m| {
                let s = m.stats();
                PoolInfo::new(m.name(), s.target, s.ready, s.paused)
            })
            .collect()
    }
}

/// The `/healthz` verdict on `pools` (name, ready, target): healthy when
/// every pool has at least `share` of its target ready. The text names the
/// pools that fall short; with more than one pool it lists each.
pub(super) fn health(pools: &[(&str, usize, usize)], share: f64) -> (bool, String) {
    let short: Vec<&str> = pools
        .iter()
        .filter(|(_, ready, target)| (*ready as f64) < share * *target as f64)
        .map(|(name, ..)| *name)
        .collect();
    let healthy = short.is_empty();
    let word = if healthy { "ok" } else { "unhealthy" };
    if let [(_, ready, target)] = pools {
        return (healthy, format!("{word}: {ready}/{target} ready\n"));
    }
    let mut text = if healthy {
        format!("{word}: every pool has {:.0}% ready\n", share * 100.0)
    } else {
        format!(
            "{word}: pool {} below {:.0}% ready\n",
            short.join(", pool "),
            share * 100.0
        )
    };
    for (name, ready, target) in pools {
        text.push_str(&format!("pool {name}: {ready}/{target} ready\n"));
    }
    (healthy, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pool_reads_as_before() {
        assert_eq!(
            health(&[("default", 5, 5)], 0.9),
            (true, "ok: 5/5 ready\n".into())
        );
        assert_eq!(
            health(&[("default", 0, 3)], 0.5),
            (false, "unhealthy: 0/3 ready\n".into())
        );
    }

    #[test]
    fn every_pool_must_be_healthy_and_the_failing_ones_are_named() {
        let (healthy, text) = health(&[("a", 2, 2), ("b", 1, 4), ("c", 0, 1)], 0.5);
        assert!(!healthy);
        assert_eq!(
            text,
            "unhealthy: pool b, pool c below 50% ready\n\
             pool a: 2/2 ready\npool b: 1/4 ready\npool c: 0/1 ready\n"
        );
        let (healthy, text) = health(&[("a", 2, 2), ("b", 2, 4)], 0.5);
        assert!(healthy, "{text}");
        assert!(text.starts_with("ok: every pool has 50% ready\n"), "{text}");
    }
}
