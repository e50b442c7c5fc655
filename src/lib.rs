//! secrelay polls security vendor APIs and relays their records to the systems analysts work in —
//! never lost, never flooded with duplicates.
//!
//! # Data flow
//! ```text
//!  vendor API ──► Source::poll(cursor) ──► Page ──► Store::commit_page ──► outbox ──► Sink::deliver
//!                 (one page, no loops)       one SQLite transaction:         each sink reads after
//!                                            drop seen ids, append events,   its own position and
//!                                            remember ids, move the cursor   moves it only once the
//!                                                                            receiver accepted
//! ```
//! # Delivery guarantees
//! - **At-least-once.** A page's events, their ids and the new cursor are committed together; a
//!   sink's position moves only after its receiver accepted the batch. A crash can repeat at most
//!   the one batch per sink that was in flight. Plain syslog over TCP/TLS has no receipt: what a
//!   connection carried is held in memory until the receiver closes it in order (see
//!   `sinks::syslog`), so only a crash of ours together with a failure of the receiver's can lose
//!   it (up to about `confirm_after_bytes`).
//! - **Bounded duplicates.** The seen-set is durable, so overlapping windows, cursor boundary
//!   repeats and `backfill --reset` (without `--days`) deliver nothing twice.
//! - **Back-pressure, never drop.** Over `outbox.max_bytes` sources pause until sinks catch up.
//!
//! Modules: [`settings`] (configuration), [`allocator`] (glibc malloc tuning), [`store`] (all SQL), [`scheduler`] (timing, both loops),
//! [`sources`] (one module per vendor), [`vendors`] (the registry naming them), [`mapping`] (what
//! sinks know of a vendor's records), [`sinks`] (one module per transport), [`net`] (HTTP and TLS
//! clients for both), [`json_path`] (reading records by dotted path), [`shared_text`] (records as slices of their page's body), [`encode`] (pure formats), [`notify`] (systemd notifications), [`app`] (composition); with the default cargo
//! feature `simulators`, `simulate` (vendor simulators) and `demo`. A production build may leave
//! them out: `cargo build --release --no-default-features`.

#![warn(missing_docs)]

pub mod allocator;
pub mod app;
#[cfg(feature = "simulators")]
pub mod demo;
pub mod encode;
pub mod event;
pub mod json_path;
pub mod mapping;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod scheduler;
pub mod settings;
pub mod shared_text;
pub mod signals;
#[cfg(feature = "simulators")]
pub mod simulate;
pub mod sinks;
pub mod sources;
pub mod store;
pub mod vendors;
