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
//! took 10 MiB off the peak of a 1M-event backfill (124.5 → 114.5 MiB) at no cost in events/s.
//! Since records share their page's body instead of being copied out of it (`shared_text`), the
//! body is the one allocation of its size per page; giving it pages of its own (an `mmap`
//! threshold of 8 MiB) took the peak of the same backfill from 105 to 70 MiB and made it flat in
//! the backlog (72 MiB at 5M events). Lower thresholds (256 KiB, 4 MiB) also caught the
//! megabyte buffers of commits and batches, each then faulted in afresh, for a fifth fewer
//! events/s.

/// Most arenas: two, one per core of the small hosts a relay runs on; more only spread the same
/// free memory over more places.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENAS: libc::c_int = 2;

/// Allocations from this size up get pages of their own from the kernel, given back whole when
/// freed: a page's response body (13 MB for 10,000 Code42 events). glibc would otherwise raise its
/// threshold above the first body freed and carve the next ones out of an arena, where the small
/// allocations around them keep the space from ever going back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const OWN_PAGES_FROM: libc::c_int = 8 * 1024 * 1024;

/// Applies the settings above. Call first thing in `main`, before the async runtime starts.
pub fn tune_for_long_runs() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets allocator parameters; called before other threads exist, it
    // races with no allocation. A refused setting (return 0) leaves glibc's default, which is safe.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_PAGES_FROM);
    }
}
