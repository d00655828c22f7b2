//! The `wsfleet` binary's malloc settings, so the RSS this process measures
//! is the product's: an mmap threshold fixed at 1 MiB (every buffer of a MiB
//! or more is its own mapping, unmapped on free) and a trim threshold of
//! 2 MiB. Why those values, with measurements, is in
//! `crates/wsfleet-cli/src/memory.rs`; the two constants here must match it.
//! Without them glibc's dynamic threshold serves 16 MiB frames from the
//! heap arenas after the first one is freed, and the pinning run's RSS has
//! peaked 26 MiB over its live heap.

/// `crates/wsfleet-cli/src/memory.rs`'s `MMAP_THRESHOLD`.
const MMAP_THRESHOLD: usize = 1 << 20;
/// `crates/wsfleet-cli/src/memory.rs`'s `TRIM_THRESHOLD`.
const TRIM_THRESHOLD: usize = 2 * MMAP_THRESHOLD;

/// Sets both thresholds; the name of the one glibc refused, if any.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub(crate) fn tune() -> Result<(), String> {
    for (name, param, value) in [
        ("M_MMAP_THRESHOLD", libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        ("M_TRIM_THRESHOLD", libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    ] {
        let value = libc::c_int::try_from(value).map_err(|_| format!("{name} out of range"))?;
        // SAFETY: `mallopt` takes two integers and no pointers; called from
        // `main` before any other thread exists (see memory.rs).
        if unsafe { libc::mallopt(param, value) } != 1 {
            return Err(format!("malloc refused {name} = {value}"));
        }
    }
    Ok(())
}

/// Nothing to tune without glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn tune() -> Result<(), String> {
    Ok(())
}
