//! RSS after big buffers are freed, with `src/memory.rs`'s malloc settings
//! and trim. In its own test binary, one test, so that no other test's
//! allocations move the process's RSS while it measures.

// The binary has no library target: the module is compiled in here as it
// is in the binary.
#[path = "../src/memory.rs"]
#[allow(dead_code)]
mod memory;

use wsfleet_testkit::measure::proc_status_bytes;

const MIB: u64 = 1 << 20;
/// How far above its baseline RSS may stay once everything is freed.
const SLACK: u64 = 30 * MIB;

fn rss() -> u64 {
    proc_status_bytes("VmRSS:").expect("VmRSS in /proc/self/status")
}

/// Four threads allocate and fill `total` bytes of `size` buffers, each
/// followed by a small allocation (connection state) that outlives them;
/// RSS with all of them held. The buffers are freed on return, the small
/// allocations are handed back to be freed by the caller.
fn hold_and_free(size: usize, total: usize, pinned: &mut Vec<Vec<u8>>) -> u64 {
    const THREADS: usize = 4;
    let barrier = std::sync::Barrier::new(THREADS + 1);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut held = Vec::new();
                    let mut small = Vec::new();
                    for _ in 0..total / size / THREADS {
                        held.push(vec![1u8; size]);
                        small.push(vec![1u8; 512]);
                    }
                    // All held: the caller measures, then everyone frees.
                    barrier.wait();
                    barrier.wait();
                    drop(held);
                    small
                })
            })
            .collect();
        barrier.wait();
        let loaded = rss();
        barrier.wait();
        for worker in workers {
            pinned.extend(worker.join().expect("worker"));
        }
        loaded
    })
}

#[test]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn freed_buffers_go_back_to_the_os() {
    memory::tune_allocator().expect("malloc settings");
    // Without the tuning, this one big free raises glibc's mmap threshold
    // to 16 MiB, and the 4 MiB buffers below would come from the heap and
    // stay resident (about 200 MiB of them).
    drop(std::hint::black_box(vec![1u8; 16 << 20]));
    let baseline = rss();
    let mut pinned = Vec::new();

    // At or above the mmap threshold: unmapped on free, no trim needed.
    let loaded = hold_and_free(4 << 20, 200 << 20, &mut pinned);
    let after = rss();
    assert!(
        loaded >= baseline + 180 * MIB,
        "the buffers were not resident: {baseline} then {loaded}"
    );
    assert!(
        after <= baseline + SLACK,
        "4 MiB buffers: RSS {} MiB before, {} MiB held, {} MiB after free",
        baseline / MIB,
        loaded / MIB,
        after / MIB
    );

    // Below it: from the heap, given back by a trim.
    let loaded = hold_and_free(256 << 10, 200 << 20, &mut pinned);
    let after = rss();
    memory::trim();
    let trimmed = rss();
    assert!(
        trimmed <= baseline + SLACK,
        "256 KiB buffers: RSS {} MiB before, {} MiB held, {} MiB after free, \
         {} MiB after trim",
        baseline / MIB,
        loaded / MIB,
        after / MIB,
        trimmed / MIB
    );
    drop(pinned);
}
