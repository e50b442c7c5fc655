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
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::settings::SchedulerSettings;
use crate::store::{Store, StoreError};

pub use backoff::{with_jitter, Backoff};
pub use deliver::{run_sink, SinkReport, REFUSED};
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
    /// Sink name → the sources routed to it (the inverse of `sinks_of_source`).
    pub sources_of_sink: BTreeMap<String, Vec<String>>,
    /// Each routed sink's share of `outbox_cap`, in bytes: `outbox_cap` divided by the number of
    /// sinks. A sink whose backlog reaches it pauses only the sources routed to it.
    pub sink_share: u64,
    /// The counters `/metrics` shows and health is judged from.
    pub metrics: Arc<Metrics>,
    /// The last measurement of every sink's backlog in bytes, and when it was taken.
    backlogs: Mutex<Option<(Instant, BTreeMap<String, i64>)>>,
    /// Tests: awaited before each page commit (its records compressed, its events let go); an
    /// error fails that commit (nothing is written).
    #[cfg(test)]
    pub(crate) before_commit: Mutex<Option<BeforeCommit>>,
}

/// Tests: what [`Context::before_commit`] runs before a page commit.
#[cfg(test)]
pub(crate) type BeforeCommit =
    Box<dyn FnMut() -> futures_util::future::BoxFuture<'static, Result<(), StoreError>> + Send>;

/// Whether a source may poll now (back-pressure).
#[derive(Debug, Clone, PartialEq)]
pub enum Room {
    /// Poll.
    Free,
    /// A sink this source routes to is a whole share behind: wait for it.
    SinkBehind {
        /// The sink.
        sink: String,
        /// Its backlog, in bytes.
        bytes: i64,
        /// Its share of the outbox cap, in bytes.
        share: u64,
    },
    /// No routes are known for this source and the whole outbox is at its cap: wait.
    OutboxFull {
        /// Bytes in the outbox.
        bytes: i64,
    },
}

/// How long a measurement of the sinks' backlogs is reused: measuring reads every waiting row.
const BACKLOGS_FRESH_FOR: Duration = Duration::from_secs(1);

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
        let mut sources_of_sink: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (source, sinks) in &sinks_of_source {
            for sink in sinks {
                sources_of_sink
                    .entry(sink.clone())
                    .or_default()
                    .push(source.clone());
            }
        }
        let sink_share = outbox_cap / (sources_of_sink.len().max(1) as u64);
        Arc::new(Context {
            sources_of_sink,
            sink_share,
            backlogs: Mutex::new(None),
            #[cfg(test)]
            before_commit: Mutex::new(None),
            metrics: Arc::new(Metrics::default()),
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

    /// Whether `source` may poll: every sink it routes to is less than its share of the outbox
    /// cap behind. A sink that is stuck thus pauses only the sources routed to it; sources routed
    /// only to healthy sinks go on.
    pub async fn room_for(&self, source: &str) -> Result<Room, StoreError> {
        self.room_for_with(source, 0).await
    }

    /// [`Context::room_for`] as if `pending` more bytes of `source` were in the outbox already: a
    /// page being committed while the next one is fetched counts against the room.
    pub async fn room_for_with(&self, source: &str, pending: u64) -> Result<Room, StoreError> {
        let pending = i64::try_from(pending).unwrap_or(i64::MAX);
        let bytes = self
            .store
            .outbox_totals()
            .await?
            .bytes
            .saturating_add(pending);
        let sinks = self
            .sinks_of_source
            .get(source)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if sinks.is_empty() {
            return Ok(if bytes as u64 >= self.outbox_cap {
                Room::OutboxFull { bytes }
            } else {
                Room::Free
            });
        }
        // No sink can be a share behind while the whole outbox holds less than a share: the
        // common case costs one read of the running totals.
        if (bytes as u64) < self.sink_share {
            return Ok(Room::Free);
        }
        let backlogs = self.sink_backlogs().await?;
        for sink in sinks {
            let bytes = backlogs
                .get(sink)
                .copied()
                .unwrap_or(0)
                .saturating_add(pending);
            if bytes as u64 >= self.sink_share {
                return Ok(Room::SinkBehind {
                    sink: sink.clone(),
                    bytes,
                    share: self.sink_share,
                });
            }
        }
        Ok(Room::Free)
    }

    /// Adds `bytes` just committed by `source` to the last measurement of its sinks' backlogs, so
    /// a source polling faster than measurements are taken cannot run past its share on a stale
    /// figure.
    pub fn note_appended(&self, source: &str, bytes: i64) {
        let Some(sinks) = self.sinks_of_source.get(source) else {
            return;
        };
        if let Ok(mut cached) = self.backlogs.lock() {
            if let Some((_, backlogs)) = cached.as_mut() {
                for sink in sinks {
                    *backlogs.entry(sink.clone()).or_insert(0) += bytes;
                }
            }
        }
    }

    /// Takes `bytes` just delivered by `sink` off the last measurement of its backlog, so a sink
    /// that keeps up never looks a share behind between measurements.
    pub fn note_delivered(&self, sink: &str, bytes: i64) {
        if let Ok(mut cached) = self.backlogs.lock() {
            if let Some((_, backlogs)) = cached.as_mut() {
                if let Some(backlog) = backlogs.get_mut(sink) {
                    *backlog = (*backlog - bytes).max(0);
                }
            }
        }
    }

    /// Every routed sink's backlog in bytes, measured at most once per [`BACKLOGS_FRESH_FOR`].
    async fn sink_backlogs(&self) -> Result<BTreeMap<String, i64>, StoreError> {
        if let Ok(cached) = self.backlogs.lock() {
            if let Some((at, backlogs)) = cached.as_ref() {
                if at.elapsed() < BACKLOGS_FRESH_FOR {
                    return Ok(backlogs.clone());
                }
            }
        }
        let mut measured = BTreeMap::new();
        for (sink, sources) in &self.sources_of_sink {
            let position = self.store.sink_position(sink).await?;
            let backlog = self.store.backlog_totals(sink, position, sources).await?;
            measured.insert(sink.clone(), backlog.bytes);
        }
        if let Ok(mut cached) = self.backlogs.lock() {
            *cached = Some((Instant::now(), measured.clone()));
        }
        Ok(measured)
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(
            self.timing.backoff_initial_secs,
            self.timing.backoff_max_secs,
        )
    }
}
