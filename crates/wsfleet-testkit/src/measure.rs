//! Process measurements for benches, examples and the soak: live heap bytes
//! (a counting global allocator), resident set size, open descriptors, the
//! open-files limit and live tokio tasks. Linux `/proc` readers return
//! `None` elsewhere.
//!
//! The allocator only counts when a binary installs it:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: wsfleet_testkit::measure::CountingAlloc = wsfleet_testkit::measure::CountingAlloc;
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes allocated and not yet freed, process-wide.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Most bytes live at once since the last [`reset_heap_peak`].
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting live bytes (requested sizes, without the
/// allocator's own overhead: RSS shows that). One relaxed atomic add per
/// call, plus a `fetch_max` for the peak.
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAlloc;

fn grew(bytes: usize) {
    let now = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn shrank(bytes: usize) {
    LIVE.fetch_sub(bytes, Ordering::Relaxed);
}

/// Live heap bytes now; 0 unless [`CountingAlloc`] is the global allocator.
pub fn live_heap_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Most live heap bytes at once since the last [`reset_heap_peak`].
pub fn peak_heap_bytes() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Starts a new peak measurement from the live bytes now.
pub fn reset_heap_peak() {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged and returns its result unchanged, so `System`'s guarantees are
// ours; the counters beside it are plain atomics and never allocate.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: our caller upholds `alloc`'s contract (non-zero size).
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (hence from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with `layout`; the caller upholds
        // `realloc`'s contract for `new_size`.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            grew(new_size);
            shrank(layout.size());
        }
        new
    }
}

/// Resident set size: `/proc/self/statm`'s second field (pages) × 4096.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    parse_statm_rss(&statm)
}

fn parse_statm_rss(statm: &str) -> Option<u64> {
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    pages.checked_mul(4096)
}

/// One `VmXXX:` line of `/proc/self/status` (`key` with its colon, e.g.
/// `"VmHWM:"`), in bytes.
pub fn proc_status_bytes(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status_bytes(&status, key)
}

/// As [`proc_status_bytes`], of another process (`/proc/PID/status`): the
/// peak (`VmHWM:`) and current (`VmRSS:`) RSS of a child under test.
pub fn proc_status_bytes_of(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_bytes(&status, key)
}

fn parse_status_bytes(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Open file descriptors of this process (entries of `/proc/self/fd`,
/// without the one used to list them).
pub fn open_fds() -> Option<usize> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(entries.count().saturating_sub(1))
}

/// The soft limit on open files, from `/proc/self/limits`.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Tasks alive in the current tokio runtime; `None` outside one.
pub fn tokio_alive_tasks() -> Option<usize> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    Some(handle.metrics().num_alive_tasks())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statm_parses() {
        assert_eq!(
            parse_statm_rss("1000 250 100 1 0 300 0\n"),
            Some(250 * 4096)
        );
        assert_eq!(parse_statm_rss("1000"), None);
        assert_eq!(parse_statm_rss("1 x"), None);
    }

    #[tokio::test]
    async fn proc_readers_work_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(rss_bytes().is_some_and(|b| b > 0));
            assert!(proc_status_bytes("VmRSS:").is_some_and(|b| b > 0));
            assert!(proc_status_bytes_of(std::process::id(), "VmHWM:").is_some_and(|b| b > 0));
            assert_eq!(proc_status_bytes_of(u32::MAX, "VmHWM:"), None);
            let before = open_fds().expect("fd count");
            let file = std::fs::File::open("/proc/self/statm").expect("open");
            assert_eq!(open_fds(), Some(before + 1));
            drop(file);
            assert!(open_files_limit().is_some_and(|l| l > 0));
        }
        let before = tokio_alive_tasks().expect("in a runtime");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = rx.await;
        });
        assert_eq!(tokio_alive_tasks(), Some(before + 1));
        drop(tx);
        task.await.expect("task");
        assert_eq!(tokio_alive_tasks(), Some(before));
    }
}
