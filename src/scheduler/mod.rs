//! The scheduler: one task per source partition polling on its interval, one delivery task per sink
//! reading the outbox after its position, and the shared context they run in.
//!
//! Owns: timing (intervals, jitter, backoff, `Retry-After`), back-pressure, cancellation and the
//! order of the two halves of the pipeline. Must not: know any vendor or any wire format.
//! Invariants: a poll is abandoned, never half-committed, on stop; a commit is never cancelled; a
//! sink's position moves only after its receiver accepted the batch; when the outbox is over its cap,
//! sources wait and nothing is dropped.

mod backoff;
mod deliver;
mod poll;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::settings::SchedulerSettings;
use crate::store::Store;

pub use backoff::{with_jitter, Backoff};
pub use deliver::{run_sink, SinkReport};
pub use poll::{run_source, PartitionReport};

/// How the pipeline ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// `secrelay run`: poll until stopped.
    Daemon,
    /// `secrelay backfill`: each partition stops once caught up (or after this many consecutive
    /// failures); sinks stop once they have taken everything.
    Backfill {
        /// Consecutive failed polls after which a partition is given up.
        max_poll_failures: u32,
    },
}

/// What every pipeline task shares.
pub struct Context {
    /// The state database.
    pub store: Store,
    /// Timing settings.
    pub timing: SchedulerSettings,
    /// Outbox cap in bytes (back-pressure).
    pub outbox_cap: u64,
    /// Daemon or backfill.
    pub mode: Mode,
    /// Cancelled on SIGTERM/SIGINT: sources stop polling, sinks flush within the grace period.
    pub stop: CancellationToken,
    /// Cancelled once every source task has ended: sinks drain and stop.
    pub sources_done: CancellationToken,
    /// How long sinks may keep draining once they are told to finish.
    pub drain_within: Duration,
    /// Woken after a commit appended events, so sinks need not poll the store.
    pub appended: Notify,
    /// Source id → every sink routed to it (a row is pruned once all of them passed it).
    pub sinks_of_source: BTreeMap<String, Vec<String>>,
}

impl Context {
    /// A context over `store`.
    pub fn new(
        store: Store,
        timing: SchedulerSettings,
        outbox_cap: u64,
        mode: Mode,
        drain_within: Duration,
        sinks_of_source: BTreeMap<String, Vec<String>>,
        stop: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Context {
            store,
            timing,
            outbox_cap,
            mode,
            stop,
            sources_done: CancellationToken::new(),
            drain_within,
            appended: Notify::new(),
            sinks_of_source,
        })
    }

    /// Sleeps for `delay` unless stopped first; returns false when stopped.
    pub async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(
            self.timing.backoff_initial_secs,
            self.timing.backoff_max_secs,
        )
    }
}
