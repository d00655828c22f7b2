//! `wsfleet run`'s memory budget when neither `--memory-budget` nor the
//! config file sets one: derived from the memory the process may use.
//!
//! A fixed default (the library's 1 GiB) does not fit a container limited
//! to 512 MiB: the fleet would let its buffers grow until the OOM killer
//! ends the whole process, which is what the budget is there to prevent. So
//! the default is [`SHARE_PERCENT`] of the memory bound — the cgroup limit
//! (v2 `memory.max`, v1 `memory.limit_in_bytes`, the lowest along the
//! process's cgroup path) or else the RAM (`/proc/meminfo` `MemTotal`) —
//! less an estimate of the connections' fixed cost, which the budget does
//! not charge, within [`FLOOR`] and [`CEILING`]. The other half is the
//! margin for the allocator, the runtime, TLS and the output, and for what
//! RSS holds above the bytes charged.

use std::fmt;
use std::path::Path;

use super::Plan;
use crate::units::format_size;

/// Share of the memory bound the buffers may hold, in percent.
pub(crate) const SHARE_PERCENT: u64 = 50;
/// Estimated fixed cost of one connection: task, socket, TLS state and
/// channels (about 9 KiB for an idle plain connection, more with TLS).
pub(crate) const FIXED_COST_PER_CONNECTION: u64 = 16 << 10;
/// The smallest derived budget: room for a few messages of a few MiB.
pub(crate) const FLOOR: u64 = 16 << 20;
/// The largest derived budget: the library's default, which a machine with
/// plenty of memory keeps.
pub(crate) const CEILING: u64 = 1 << 30;
/// A cgroup limit at or above this is no limit (v1 writes `2^63` rounded
/// down to a page for "unlimited").
const NO_LIMIT: u64 = 1 << 60;

/// What bounds the process's memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bound {
    /// The cgroup's memory limit (container, systemd unit).
    Cgroup(u64),
    /// The machine's RAM.
    Ram(u64),
}

impl Bound {
    fn bytes(self) -> u64 {
        match self {
            Self::Cgroup(bytes) | Self::Ram(bytes) => bytes,
        }
    }
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cgroup(bytes) => write!(f, "the cgroup limit {}", format_size(*bytes)),
            Self::Ram(bytes) => write!(f, "the RAM {}", format_size(*bytes)),
        }
    }
}

/// The machine's memory, as `/sys/fs/cgroup` and `/proc` tell it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Machine {
    /// The lowest cgroup memory limit over the process's cgroups, if any.
    pub(crate) cgroup_limit: Option<u64>,
    /// `MemTotal`, if readable.
    pub(crate) ram: Option<u64>,
}

impl Machine {
    /// Reads this machine's files; what cannot be read is `None`.
    pub(crate) fn read() -> Self {
        Self::read_under(Path::new("/"))
    }

    /// Reads `proc/…` and `sys/fs/cgroup/…` under `root`.
    fn read_under(root: &Path) -> Self {
        // Without /proc/self/cgroup, the mounts' top files are still worth
        // a look: in a container they are the container's own cgroup.
        let membership = std::fs::read_to_string(root.join("proc/self/cgroup"))
            .unwrap_or_else(|_| "0::/\n1:memory:/\n".to_owned());
        let v2 = root.join("sys/fs/cgroup");
        let v1 = root.join("sys/fs/cgroup/memory");
        let cgroup_limit = membership
            .lines()
            .filter_map(|line| {
                // "ID:CONTROLLERS:PATH": v2 has no controllers, v1 lists them.
                let mut parts = line.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                if controllers.is_empty() {
                    lowest_limit(&v2, path, "memory.max")
                } else if controllers.split(',').any(|c| c == "memory") {
                    lowest_limit(&v1, path, "memory.limit_in_bytes")
                } else {
                    None
                }
            })
            .min();
        let ram = std::fs::read_to_string(root.join("proc/meminfo"))
            .ok()
            .and_then(|meminfo| parse_mem_total(&meminfo));
        Self { cgroup_limit, ram }
    }

    /// The tighter of the cgroup limit and the RAM.
    pub(crate) fn bound(&self) -> Option<Bound> {
        match (self.cgroup_limit, self.ram) {
            (Some(limit), Some(ram)) if limit < ram => Some(Bound::Cgroup(limit)),
            (Some(limit), None) => Some(Bound::Cgroup(limit)),
            (_, Some(ram)) => Some(Bound::Ram(ram)),
            (None, None) => None,
        }
    }
}

/// The lowest limit in `file` of the cgroup at `path` under `mount` and its
/// ancestors up to the mount's top (a parent's limit binds its children).
fn lowest_limit(mount: &Path, path: &str, file: &str) -> Option<u64> {
    let relative = Path::new(path.trim_start_matches('/'));
    // "/../.." is a cgroup outside this namespace: only the mount's top is
    // ours to read.
    let escapes = relative
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)));
    let relative = if escapes { Path::new("") } else { relative };
    relative
        .ancestors()
        .filter_map(|dir| std::fs::read_to_string(mount.join(dir).join(file)).ok())
        .filter_map(|text| parse_limit(&text))
        .min()
}

/// A cgroup limit file's value; `None` for "max", junk or no limit.
fn parse_limit(text: &str) -> Option<u64> {
    text.trim().parse().ok().filter(|&bytes| bytes < NO_LIMIT)
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let mut words = line.split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then(|| kib.saturating_mul(1024))
}

/// The budget chosen, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Budget {
    /// Bytes.
    pub(crate) bytes: usize,
    why: Why,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Why {
    /// `--memory-budget` or the config file.
    Given,
    /// Neither a cgroup limit nor the RAM could be read.
    Unknown,
    /// A share of `bound`, less the fixed cost of `connections`.
    Derived {
        bound: Bound,
        connections: u64,
        clamped: Option<Clamp>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clamp {
    Floor,
    Ceiling,
}

impl Budget {
    /// The budget for `connections` (this process's) under `bound`: the
    /// arithmetic of the module docs.
    pub(crate) fn derive(bound: Option<Bound>, connections: u64) -> Self {
        let Some(bound) = bound else {
            return Self {
                bytes: to_usize(CEILING),
                why: Why::Unknown,
            };
        };
        let share = u128::from(bound.bytes()) * u128::from(SHARE_PERCENT) / 100;
        let share = u64::try_from(share).unwrap_or(u64::MAX);
        let raw = share.saturating_sub(fixed_cost(connections));
        let (bytes, clamped) = if raw < FLOOR {
            (FLOOR, Some(Clamp::Floor))
        } else if raw > CEILING {
            (CEILING, Some(Clamp::Ceiling))
        } else {
            (raw, None)
        };
        Self {
            bytes: to_usize(bytes),
            why: Why::Derived {
                bound,
                connections,
                clamped,
            },
        }
    }

    /// The plan's budget if it has one, else one derived from this machine
    /// for the connections of this shard.
    pub(crate) fn choose(plan: &Plan) -> Self {
        if let Some(bytes) = plan.memory_budget {
            return Self {
                bytes,
                why: Why::Given,
            };
        }
        let shard = plan.shard;
        let here = plan
            .connections
            .saturating_sub(shard.index)
            .div_ceil(shard.count.max(1));
        Self::derive(Machine::read().bound(), u64::from(here))
    }

    /// Logs the budget and why (a warning if the memory bound is too small
    /// for the connections); its bytes.
    pub(crate) fn log(self) -> usize {
        if let Why::Derived {
            clamped: Some(Clamp::Floor),
            ..
        } = self.why
        {
            tracing::warn!("{self}: set --memory-budget, or fewer connections per process");
        } else {
            tracing::info!("{self}");
        }
        self.bytes
    }
}

fn fixed_cost(connections: u64) -> u64 {
    connections.saturating_mul(FIXED_COST_PER_CONNECTION)
}

fn to_usize(bytes: u64) -> usize {
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "memory budget {}: ", format_size(self.bytes as u64))?;
        match &self.why {
            Why::Given => f.write_str("set by --memory-budget or the config file"),
            Why::Unknown => f.write_str(
                "the default, as neither a cgroup limit nor /proc/meminfo could be read",
            ),
            Why::Derived {
                bound,
                connections,
                clamped,
            } => {
                write!(
                    f,
                    "{SHARE_PERCENT} % of {bound}, less {} for {connections} connections",
                    format_size(fixed_cost(*connections))
                )?;
                match clamped {
                    None => Ok(()),
                    Some(Clamp::Floor) => {
                        write!(f, ", raised to the floor {}", format_size(FLOOR))
                    }
                    Some(Clamp::Ceiling) => {
                        write!(f, ", capped at {}", format_size(CEILING))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn derived_budgets() {
        for (bound, connections, bytes, line) in [
            (
                Some(Bound::Cgroup(512 * MIB)),
                4096,
                192 * MIB,
                "memory budget 192.0 MiB: 50 % of the cgroup limit 512.0 MiB, \
                 less 64.0 MiB for 4096 connections",
            ),
            (
                Some(Bound::Ram(24 * GIB)),
                100,
                GIB,
                "memory budget 1.0 GiB: 50 % of the RAM 24.0 GiB, \
                 less 1.6 MiB for 100 connections, capped at 1.0 GiB",
            ),
            (
                Some(Bound::Ram(2 * GIB)),
                1024,
                GIB - 16 * MIB,
                "memory budget 1008.0 MiB: 50 % of the RAM 2.0 GiB, \
                 less 16.0 MiB for 1024 connections",
            ),
            (
                Some(Bound::Cgroup(64 * MIB)),
                10_000,
                FLOOR,
                "memory budget 16.0 MiB: 50 % of the cgroup limit 64.0 MiB, \
                 less 156.2 MiB for 10000 connections, raised to the floor 16.0 MiB",
            ),
            (
                None,
                100,
                GIB,
                "memory budget 1.0 GiB: the default, as neither a cgroup limit \
                 nor /proc/meminfo could be read",
            ),
            // No overflow near the top of u64.
            (Some(Bound::Ram(u64::MAX)), u64::MAX, FLOOR, ""),
            (Some(Bound::Ram(u64::MAX)), 0, GIB, ""),
        ] {
            let budget = Budget::derive(bound, connections);
            assert_eq!(budget.bytes as u64, bytes, "{bound:?} {connections}");
            if !line.is_empty() {
                assert_eq!(budget.to_string(), line);
            }
        }
    }

    #[test]
    fn the_tighter_bound_counts() {
        let machine = |cgroup_limit, ram| Machine { cgroup_limit, ram }.bound();
        assert_eq!(
            machine(Some(512 * MIB), Some(8 * GIB)),
            Some(Bound::Cgroup(512 * MIB))
        );
        assert_eq!(
            machine(Some(16 * GIB), Some(8 * GIB)),
            Some(Bound::Ram(8 * GIB))
        );
        assert_eq!(machine(Some(GIB), None), Some(Bound::Cgroup(GIB)));
        assert_eq!(machine(None, Some(GIB)), Some(Bound::Ram(GIB)));
        assert_eq!(machine(None, None), None);
    }

    /// A fresh root folder with `files` (path, text) in it.
    fn tree(name: &str, files: &[(&str, &str)]) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("wsfleet-budget-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (path, text) in files {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        root
    }

    const MEMINFO: &str = "MemTotal:        8000000 kB\nMemFree:         1000 kB\n";

    #[test]
    fn reads_cgroup_v2_along_the_path() {
        let root = tree(
            "v2",
            &[
                ("proc/self/cgroup", "0::/system.slice/wsfleet.service\n"),
                ("proc/meminfo", MEMINFO),
                ("sys/fs/cgroup/memory.max", "max\n"),
                ("sys/fs/cgroup/system.slice/memory.max", "1073741824\n"),
                (
                    "sys/fs/cgroup/system.slice/wsfleet.service/memory.max",
                    "max\n",
                ),
            ],
        );
        let machine = Machine::read_under(&root);
        assert_eq!(machine.cgroup_limit, Some(GIB), "the parent's limit binds");
        assert_eq!(machine.ram, Some(8_000_000 * 1024));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn reads_cgroup_v1_and_ignores_unlimited() {
        let root = tree(
            "v1",
            &[
                (
                    "proc/self/cgroup",
                    "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n",
                ),
                ("proc/meminfo", MEMINFO),
                (
                    "sys/fs/cgroup/memory/memory.limit_in_bytes",
                    "9223372036854771712\n",
                ),
                (
                    "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes",
                    "536870912\n",
                ),
            ],
        );
        assert_eq!(Machine::read_under(&root).cgroup_limit, Some(512 * MIB));
        let _ = std::fs::remove_dir_all(&root);

        // Inside a container: the path is the host's, the mount is ours.
        let root = tree(
            "v1-container",
            &[
                ("proc/self/cgroup", "4:memory:/docker/abc\n"),
                ("sys/fs/cgroup/memory/memory.limit_in_bytes", "536870912\n"),
            ],
        );
        let machine = Machine::read_under(&root);
        assert_eq!(machine.cgroup_limit, Some(512 * MIB));
        assert_eq!(machine.ram, None);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn no_files_no_limits() {
        let root = tree("none", &[("proc/self/cgroup", "0::/../..\n")]);
        assert_eq!(Machine::read_under(&root), Machine::default());
        let _ = std::fs::remove_dir_all(&root);
        // Without /proc/self/cgroup: the mounts' top files.
        let root = tree(
            "no-membership",
            &[
                ("sys/fs/cgroup/memory.max", "268435456\n"),
                ("proc/meminfo", "MemTotal: junk kB\n"),
            ],
        );
        let machine = Machine::read_under(&root);
        assert_eq!(machine.cgroup_limit, Some(256 * MIB));
        assert_eq!(machine.ram, None);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn limit_values() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("536870912\n"), Some(512 * MIB));
        assert_eq!(parse_limit(""), None);
        assert_eq!(parse_mem_total(MEMINFO), Some(8_000_000 * 1024));
        assert_eq!(parse_mem_total("MemFree: 5 kB\n"), None);
    }
}
