//! The experiment behind `src/memory.rs`: how much RSS glibc's malloc keeps
//! after big buffers are freed, with its default settings and with ours,
//! and what the page faults of mmapped buffers cost.
//!
//! ```text
//! cargo run --release -p wsfleet-cli --example allocator -- default
//! cargo run --release -p wsfleet-cli --example allocator -- tuned
//! ```
//!
//! Churn: four threads, each holding at most 40 MiB of buffers (160 MiB in
//! all, as a fleet budget would allow), of log-uniform sizes from 16 KiB to
//! 16 MiB grown by doubling like read buffers, with a small long-lived
//! allocation after each (connection state that pins the heap). Then every
//! buffer is freed: RSS after the free, then after one trim. Cost: one
//! thread allocating, filling and freeing a buffer of each size, in CPU time
//! and minor page faults per MiB. Run each mode in its own process (glibc's
//! dynamic threshold, once turned off, stays off).

// The binary has no library target: the module is compiled in here as it
// is in the binary.
#[path = "../src/memory.rs"]
#[allow(dead_code)]
mod memory;

use std::sync::Mutex;

const MIB: f64 = (1 << 20) as f64;

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    match mode.as_str() {
        "default" => {}
        "tuned" => {
            if let Err(e) = memory::tune_allocator() {
                eprintln!("{e}");
            }
        }
        _ => {
            eprintln!("usage: allocator default|tuned");
            std::process::exit(2);
        }
    }
    let baseline = rss();
    let (churned, usage) = measured(churn);
    let after_free = rss();
    memory::trim();
    let after_trim = rss();
    println!(
        "{mode}: baseline {:.0} MiB, peak {:.0} MiB, after free {:.0} MiB, after trim {:.0} MiB; \
         churn {:.0} MiB at {:.2} ms CPU/MiB",
        baseline / MIB,
        vm_hwm() / MIB,
        after_free / MIB,
        after_trim / MIB,
        churned / MIB,
        usage.cpu_s * 1000.0 / (churned / MIB),
    );
    for size in [256 << 10, 1 << 20, 4 << 20] {
        let (bytes, usage) = measured(|| reuse(size));
        println!(
            "{mode}: {:>5} KiB buffers: {:.0} faults/MiB, {:.2} ms CPU/MiB",
            size >> 10,
            usage.faults as f64 / (bytes / MIB),
            usage.cpu_s * 1000.0 / (bytes / MIB),
        );
    }
}

/// The churn (see the file's docs); bytes allocated.
fn churn() -> f64 {
    const THREADS: u64 = 4;
    const CAP: usize = 40 << 20;
    let pinned = Mutex::new(Vec::new());
    let total = Mutex::new(0usize);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (pinned, total) = (&pinned, &total);
            s.spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((t + 1) * 7919));
                let mut held: Vec<Vec<u8>> = Vec::new();
                let (mut live, mut allocated) = (0, 0);
                let mut small = Vec::new();
                for _ in 0..1500 {
                    // 2^14 to 2^24 bytes, log-uniform.
                    let exp = 14.0 + (rng.next() % 1000) as f64 / 100.0;
                    let size = 2f64.powf(exp) as usize;
                    while live + size > CAP && !held.is_empty() {
                        let i = (rng.next() % held.len() as u64) as usize;
                        live -= held.swap_remove(i).len();
                    }
                    let mut buffer: Vec<u8> = Vec::with_capacity(8 << 10);
                    while buffer.len() < size {
                        let n = (buffer.len() * 2).clamp(8 << 10, size);
                        buffer.resize(n, 1);
                    }
                    live += size;
                    allocated += size;
                    held.push(buffer);
                    small.push(vec![1u8; 256 + (rng.next() % 2048) as usize]);
                }
                // An eighth of the small allocations outlive the burst.
                let mut pinned = pinned.lock().unwrap_or_else(|p| p.into_inner());
                pinned.extend(small.into_iter().step_by(8));
                *total.lock().unwrap_or_else(|p| p.into_inner()) += allocated;
            });
        }
    });
    let total = *total.lock().unwrap_or_else(|p| p.into_inner());
    total as f64
}

/// Allocates, fills and frees a `size` buffer over and over; bytes allocated.
fn reuse(size: usize) -> f64 {
    let rounds = (1 << 30) / size;
    for _ in 0..rounds {
        let buffer = vec![1u8; size];
        std::hint::black_box(&buffer);
    }
    (rounds * size) as f64
}

/// CPU time and minor faults of this process.
#[derive(Clone, Copy)]
struct Usage {
    cpu_s: f64,
    faults: u64,
}

/// Runs `f`; its result and the CPU time and faults it took.
fn measured(f: impl FnOnce() -> f64) -> (f64, Usage) {
    let before = usage();
    let result = f();
    let after = usage();
    let used = Usage {
        cpu_s: after.cpu_s - before.cpu_s,
        faults: after.faults - before.faults,
    };
    (result, used)
}

/// From `/proc/self/stat`: minor faults, user and system time (in clock
/// ticks, 100 a second on Linux).
fn usage() -> Usage {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which may hold spaces: state is 0.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let field = |i: usize| -> u64 { fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0) };
    Usage {
        cpu_s: (field(11) + field(12)) as f64 / 100.0,
        faults: field(7),
    }
}

fn rss() -> f64 {
    wsfleet_testkit::measure::proc_status_bytes("VmRSS:").unwrap_or(0) as f64
}

fn vm_hwm() -> f64 {
    wsfleet_testkit::measure::proc_status_bytes("VmHWM:").unwrap_or(0) as f64
}

/// xorshift64: the same sizes on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
