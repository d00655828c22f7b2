//! Giving freed memory back to the operating system (Linux with glibc).
//!
//! The fleet's budget bounds the bytes connections hold, but a container
//! limit and the OOM killer count RSS, and glibc's malloc keeps much of what
//! is freed. Its mmap threshold is dynamic: it starts at 128 KiB and rises to
//! the size of each large buffer freed (up to 32 MiB), so after the first
//! large messages, later ones come from the heap arenas, where they fragment
//! and stay resident after `free`. Measured with `examples/allocator.rs`
//! (four threads churning buffers of 16 KiB to 16 MiB, grown by doubling like
//! read buffers, at most 160 MiB live at once — the pattern of an attack
//! that makes connections hold big messages):
//!
//! | malloc settings            | peak RSS    | RSS after free | after trim | CPU per MiB |
//! |----------------------------|-------------|----------------|------------|-------------|
//! | glibc defaults             | 325–366 MiB | 273–282 MiB    | 4–36 MiB   | 0.38–0.47 ms |
//! | **mmap 1 MiB, trim 2 MiB** | 178–180 MiB | 29–32 MiB      | 7–10 MiB   | 0.96–1.13 ms |
//! | mmap 256 KiB, trim 1 MiB   | 168 MiB     | 16 MiB         | 9 MiB      | 1.00 ms     |
//! | mmap 4 MiB, trim 8 MiB     | 238 MiB     | 63 MiB         | 11 MiB     | 0.94 ms     |
//!
//! (Several runs on a shared 2-core VM; the last two rows from a variant of
//! the example with those values.) `tests/allocator.rs` holds 200 MiB of
//! 4 MiB buffers after one 16 MiB free: RSS falls back to 2 MiB on free
//! with these settings, and stays at 194 MiB without them; 200 MiB of
//! 256 KiB buffers (from the heap either way) stay resident until a trim
//! brings RSS down to 6 MiB.
//!
//! So [`tune_allocator`] fixes the mmap threshold at [`MMAP_THRESHOLD`]
//! (1 MiB), which also turns glibc's dynamic threshold off: every buffer of
//! 1 MiB or more is its own mapping, unmapped — back to the OS — the moment
//! it is freed, and peak RSS stays near the bytes actually held. The price is
//! page faults: a fresh mapping faults in every 4 KiB page, 257 faults for a
//! 1 MiB buffer, 0.65 to 1 ms of CPU per MiB on the VM measured (the same
//! buffer reused from the heap: 0.02 ms). 1 MiB rather than 256 KiB because
//! messages of a few hundred KiB (order-book snapshots, batched updates) are
//! common and would all pay it, while the peak gained is small (168 against
//! 180 MiB); messages of a MiB or more are rare and costly to process anyway.
//! Buffers under the threshold are reused from the heap without faults; the
//! trim threshold ([`TRIM_THRESHOLD`], twice the mmap threshold as glibc's own
//! dynamic rule has it) keeps `free` from giving back, and faulting in again,
//! the top of the heap on every buffer of a few hundred KiB.
//!
//! What the heap keeps after a burst of smaller buffers (many connections
//! each holding a few hundred KiB) is given back by the trimmer
//! ([`spawn_trimmer`]): `malloc_trim(0)` once the fleet's buffered bytes have
//! fallen well below their high-water mark. It took 0.1 ms with little to
//! give back and 1–2 ms after the churn above (20 ms with glibc's defaults
//! and 280 MiB to give back); it runs on the blocking pool, at most every
//! [`MIN_TICKS_BETWEEN_TRIMS`] seconds. `M_ARENA_MAX` is left alone: with
//! the thresholds set, four arenas instead of glibc's 8 per core changed
//! nothing that matters (at mmap 4 MiB: 11 MiB after trim either way, peak
//! 246 against 238 MiB).
//!
//! An operator's own `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_` or
//! `GLIBC_TUNABLES` setting wins over ours. Elsewhere than Linux with glibc
//! (musl, macOS) everything here is a no-op.

use std::fmt;
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio::time::MissedTickBehavior;
use wsfleet::fleet::FleetMonitor;

/// Buffers of at least this many bytes are mmapped and unmapped on free.
pub(crate) const MMAP_THRESHOLD: usize = 1 << 20;
/// A free top of the heap above this many bytes goes back to the OS on free.
pub(crate) const TRIM_THRESHOLD: usize = 2 * MMAP_THRESHOLD;

/// How often the trimmer reads the budget.
const TICK: Duration = Duration::from_secs(1);
/// Ticks (seconds) between two trims at least: a trim walks every arena's
/// free lists under its lock, so it is kept rare even when usage swings.
const MIN_TICKS_BETWEEN_TRIMS: u32 = 2;
/// A fall in buffered bytes from their high-water mark since the last trim
/// that makes a trim worth its cost. Smaller falls leave too little behind
/// in the heap to matter next to the fixed cost of the connections.
const TRIM_AFTER_FALL: usize = 8 << 20;

/// glibc refused a malloc setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TuneError {
    /// The `mallopt` parameter, e.g. `M_MMAP_THRESHOLD`.
    pub(crate) option: &'static str,
    /// The value refused.
    pub(crate) value: usize,
}

impl fmt::Display for TuneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "malloc refused {} = {}; freed memory may stay resident",
            self.option, self.value
        )
    }
}

impl std::error::Error for TuneError {}

/// Sets malloc's mmap and trim thresholds (see the module docs), unless the
/// environment sets them already. Call it once, first thing in `main`,
/// before any thread starts: glibc reads these settings without a lock.
///
/// # Errors
/// A [`TuneError`] naming the setting glibc refused; the others are applied.
pub(crate) fn tune_allocator() -> Result<(), TuneError> {
    let settings = [
        (
            "M_MMAP_THRESHOLD",
            sys::M_MMAP_THRESHOLD,
            MMAP_THRESHOLD,
            "MALLOC_MMAP_THRESHOLD_",
            "glibc.malloc.mmap_threshold",
        ),
        (
            "M_TRIM_THRESHOLD",
            sys::M_TRIM_THRESHOLD,
            TRIM_THRESHOLD,
            "MALLOC_TRIM_THRESHOLD_",
            "glibc.malloc.trim_threshold",
        ),
    ];
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    let mut result = Ok(());
    for (option, param, value, env, tunable) in settings {
        if std::env::var_os(env).is_some() || tunables.contains(tunable) {
            continue;
        }
        if !sys::mallopt(param, value) && result.is_ok() {
            result = Err(TuneError { option, value });
        }
    }
    result
}

/// Gives the free memory of every malloc arena back to the OS now; whether
/// any was given back. A no-op (`false`) without glibc.
pub(crate) fn trim() -> bool {
    sys::malloc_trim()
}

/// The background trimmer; dropping it stops the task.
#[derive(Debug)]
#[must_use = "dropping the trimmer stops it"]
pub(crate) struct Trimmer(Option<AbortHandle>);

impl Drop for Trimmer {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Starts a task (on the current tokio runtime) that [`trim`]s once the
/// fleet's buffered bytes have fallen by [`TRIM_AFTER_FALL`] from their
/// high-water mark since the last trim, at most every
/// [`MIN_TICKS_BETWEEN_TRIMS`] seconds. Without glibc no task is started.
pub(crate) fn spawn_trimmer(monitor: FleetMonitor) -> Trimmer {
    if !sys::SUPPORTED {
        return Trimmer(None);
    }
    let task = tokio::spawn(async move {
        let mut policy = TrimPolicy::default();
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let budget = monitor.budget();
            if policy.observe(budget.used(), budget.peak()) {
                // A trim can take milliseconds with a large heap: not on a
                // worker that drives connections.
                if tokio::task::spawn_blocking(trim_and_log).await.is_err() {
                    return;
                }
            }
        }
    });
    Trimmer(Some(task.abort_handle()))
}

/// [`trim`], with what it gave back in the debug log.
fn trim_and_log() {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        trim();
        return;
    }
    let before = vm_rss();
    let started = std::time::Instant::now();
    let released = trim();
    tracing::debug!(
        released,
        rss_before = before,
        rss_after = vm_rss(),
        took_us = started.elapsed().as_micros(),
        "malloc_trim"
    );
}

/// `VmRSS` of `/proc/self/status` in bytes (0 if unreadable); for the log.
fn vm_rss() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib.saturating_mul(1024))
}

/// When to trim, from the budget's used bytes sampled once a tick and its
/// all-time peak.
#[derive(Debug, Default)]
struct TrimPolicy {
    /// Most bytes used since the last trim (as far as samples and the peak
    /// tell).
    high: usize,
    /// The budget's peak at the previous tick (none before the first).
    last_peak: Option<usize>,
    /// Ticks since the last trim (or the start).
    ticks: u32,
}

impl TrimPolicy {
    /// One tick's reading; whether to trim now.
    fn observe(&mut self, used: usize, peak: usize) -> bool {
        // The peak is all-time: if it rose since the last tick, usage was
        // that high in between, even though no sample saw it. (A peak from
        // before the first tick is not ours to trim after.)
        if self.last_peak.is_some_and(|last| peak > last) {
            self.high = self.high.max(peak);
        }
        self.last_peak = Some(peak);
        self.high = self.high.max(used);
        self.ticks = self.ticks.saturating_add(1);
        if self.ticks < MIN_TICKS_BETWEEN_TRIMS || self.high.saturating_sub(used) < TRIM_AFTER_FALL
        {
            return false;
        }
        self.high = used;
        self.ticks = 0;
        true
    }
}

/// The glibc calls, the only unsafe code of the binary.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod sys {
    // `libc` is a dependency of the binary for these two calls only (std
    // does not expose them); it is in the tree already through tokio.
    pub(super) use libc::{M_MMAP_THRESHOLD, M_TRIM_THRESHOLD};

    /// The calls below do something here.
    pub(super) const SUPPORTED: bool = true;

    /// `mallopt(param, value)`; false if glibc refused it (or the value
    /// does not fit its `int`).
    pub(super) fn mallopt(param: libc::c_int, value: usize) -> bool {
        let Ok(value) = libc::c_int::try_from(value) else {
            return false;
        };
        // SAFETY: `mallopt` takes two integers and no pointers; it changes
        // malloc's own settings under the main arena's lock and is defined
        // for any values (it returns 0 for ones it refuses). glibc marks it
        // MT-Unsafe only because other threads read the settings without
        // that lock, which is why `tune_allocator` is called before any
        // thread starts; even then a racing `malloc` would only see the old
        // or the new integer.
        unsafe { libc::mallopt(param, value) == 1 }
    }

    /// `malloc_trim(0)`: whether memory was given back.
    pub(super) fn malloc_trim() -> bool {
        // SAFETY: `malloc_trim` takes no pointers; it walks each arena
        // under that arena's lock, as `free` does, so it is safe from any
        // thread at any time.
        unsafe { libc::malloc_trim(0) == 1 }
    }
}

/// Without glibc: nothing to tune, nothing to trim.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod sys {
    /// The calls below do nothing here.
    pub(super) const SUPPORTED: bool = false;
    pub(super) const M_MMAP_THRESHOLD: i32 = 0;
    pub(super) const M_TRIM_THRESHOLD: i32 = 0;

    /// Accepted and ignored.
    pub(super) fn mallopt(_param: i32, _value: usize) -> bool {
        true
    }

    /// Nothing given back.
    pub(super) fn malloc_trim() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    /// Feeds `(used, peak)` readings; the ticks at which a trim happens.
    fn trims(readings: &[(usize, usize)]) -> Vec<usize> {
        let mut policy = TrimPolicy::default();
        readings
            .iter()
            .enumerate()
            .filter(|&(_, &(used, peak))| policy.observe(used, peak))
            .map(|(tick, _)| tick)
            .collect()
    }

    #[test]
    fn steady_or_growing_usage_never_trims() {
        assert!(trims(&[(0, 0); 10]).is_empty());
        let growing: Vec<_> = (0..10).map(|i| (i * MIB, i * MIB)).collect();
        assert!(trims(&growing).is_empty());
        // Falls smaller than the threshold, however many.
        let swinging: Vec<_> = (0..10)
            .map(|i| (if i % 2 == 0 { 4 * MIB } else { 0 }, 4 * MIB))
            .collect();
        assert!(trims(&swinging).is_empty());
    }

    #[test]
    fn a_large_fall_trims_once() {
        let readings = [
            (100 * MIB, 100 * MIB),
            (100 * MIB, 100 * MIB),
            (10 * MIB, 100 * MIB),
            (10 * MIB, 100 * MIB),
            (10 * MIB, 100 * MIB),
        ];
        assert_eq!(trims(&readings), [2]);
    }

    #[test]
    fn a_peak_between_samples_counts() {
        // No sample saw usage above 1 MiB, but the peak rose to 50 MiB.
        let readings = [(MIB, MIB), (MIB, MIB), (MIB, 50 * MIB), (MIB, 50 * MIB)];
        assert_eq!(trims(&readings), [2]);
        // A peak from before the trimmer started does not.
        assert!(trims(&[(MIB, 50 * MIB); 5]).is_empty());
    }

    #[test]
    fn trims_are_rate_limited() {
        // Usage swings by 100 MiB every tick: a trim every other tick.
        let readings: Vec<_> = (0..8)
            .map(|i| (if i % 2 == 0 { 100 * MIB } else { 0 }, 100 * MIB))
            .collect();
        let at = trims(&readings);
        assert!(!at.is_empty());
        for pair in at.windows(2) {
            assert!(
                pair[1] - pair[0] >= MIN_TICKS_BETWEEN_TRIMS as usize,
                "{at:?}"
            );
        }
    }

    #[test]
    fn tune_error_names_the_setting() {
        let e = TuneError {
            option: "M_MMAP_THRESHOLD",
            value: 1 << 20,
        };
        assert_eq!(
            e.to_string(),
            "malloc refused M_MMAP_THRESHOLD = 1048576; freed memory may stay resident"
        );
    }
}
