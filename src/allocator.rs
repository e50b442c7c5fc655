//! Tuning of the C library's allocator for a relay that runs for months moving pages of a few
//! megabytes: set once, at the start of the process, before any thread is spawned.
//!
//! Owns: the calls to glibc's `mallopt`. Must not: allocate, spawn or be called twice with
//! different values. Invariant: every setting only changes how memory is given back to the system
//! (never what a program sees), and on a libc other than glibc this does nothing.
//!
//! Why: glibc gives each thread that meets contention an arena of its own (up to eight per core)
//! and keeps freed memory in each. A relay handing megabyte vendor pages between tokio workers,
//! SQLite's threads and blocking writers then keeps the peak of every arena resident. Two arenas
//! took 10 MiB off the peak of a 1M-event backfill (124.5 → 114.5 MiB) at no cost in events/s. A
//! fixed `mmap` threshold (256 KiB, 4 MiB) took it to 90 MiB but cost a fifth of the events/s
//! (every page-sized buffer faulted in afresh), so glibc keeps choosing that one.

/// Most arenas: two, one per core of the small hosts a relay runs on; more only spread the same
/// free memory over more places.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENAS: libc::c_int = 2;

/// Applies the settings above. Call first thing in `main`, before the async runtime starts.
pub fn tune_for_long_runs() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets allocator parameters; called before other threads exist, it
    // races with no allocation. A refused setting (return 0) leaves glibc's default, which is safe.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}
