//! Randomized vendor timelines: for every source, a seeded random history of vendor changes with
//! the quirks the real APIs have (ties on the cursor field, boundary repeats, late inserts,
//! re-reports mid-pass, deletions, expiring sessions), interleaved with catch-ups, quiet stretches,
//! bursts larger than a page and restarts, checked against an oracle built from the timeline alone.
//!
//! Each test runs 200 seeds by default (`SECRELAY_TIMELINE_SEEDS=N` changes the count); a failure
//! names its seeds, and `SECRELAY_TIMELINE_SEED=S` replays one. Nothing sleeps: the vendor clocks are
//! simulated and the scheduler's backoff is a millisecond.

mod code42;
mod harness;
mod jamf;
mod sophos;
mod tenable_sc;
