//! Vendor API simulators (axum, loopback only) that behave like the real APIs — auth, paging,
//! cursors, rate limits and faults — so tests, `secrelay demo` and benchmarks exercise the real
//! pipeline over real HTTP. Must not: be used by the pipeline itself; nothing outside tests, the
//! demo and benchmarks starts one.

pub mod code42;
pub mod jamf;
pub mod sophos;
pub mod tenable_sc;
