//! Sinks: the [`Sink`] trait every transport implements, and the error type that tells the delivery
//! loop what to do.
//!
//! Owns: the contract between the delivery loop and a transport. Must not: read the store, move a
//! position or sleep — the delivery loop in `scheduler` does that. Invariant: `deliver` (and
//! `deliver_encoded`, given what the sink's encoder made of that very batch) returns `Ok`
//! only once the receiver has accepted the whole batch (minus the records it reports as rejected),
//! or, with a [`Shortfall`], a leading part of it: records before `Shortfall::accepted` are with the
//! receiver, the rest must be sent again. A transport that takes all or nothing (file, syslog) never
//! reports a shortfall.

pub mod any;
pub mod file;
pub mod itop;
pub mod splunk_hec;
pub mod syslog;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::store::OutboxRecord;

/// What a receiver did with a batch it accepted.
#[derive(Debug, Default)]
pub struct Delivered {
    /// Indexes into the batch of records the receiver refused as invalid, with its reason; they go
    /// to the dead-letter table and do not block the log.
    pub rejected: Vec<(usize, String)>,
    /// Set when the receiver took only the first records of the batch (HEC: the requests before a
    /// 503). `None`: it took the whole batch.
    pub shortfall: Option<Shortfall>,
}

/// The part of a batch a receiver did not take, and why.
#[derive(Debug)]
pub struct Shortfall {
    /// Records `[0, accepted)` of the batch are with the receiver (minus `Delivered::rejected`);
    /// the rest are not and go again after the loop's backoff.
    pub accepted: usize,
    /// Why the rest failed; the delivery loop handles it as if the whole batch had failed.
    pub error: SinkError,
}

/// Why a batch was not delivered, and what the delivery loop does next.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The receiver is unreachable or failed (disk, network, 5xx). Keep the batch; retry with backoff.
    #[error("sink {sink}: {detail}")]
    Unavailable {
        /// Sink name.
        sink: String,
        /// What failed, with the path or URL.
        detail: String,
        /// The receiver's requested pause, when it gave one.
        retry_after: Option<Duration>,
    },
    /// The receiver refuses us (credentials revoked, configuration wrong, a proxy's error page):
    /// waiting a little will not help. The daemon says so loudly and tries again only after the
    /// longest backoff; `backfill` ends the sink. Its backlog waits in the outbox either way.
    #[error("sink {sink} stopped: {detail}")]
    Fatal {
        /// Sink name.
        sink: String,
        /// What the receiver said.
        detail: String,
    },
}

/// A sink's encoding of a batch into what it sends (`E`, its [`Sink::Encoded`]): pure (no I/O,
/// no clock, no state that delivering changes), so the same batch always encodes the same.
pub type BatchEncoder<E> = Arc<dyn Fn(&[OutboxRecord]) -> E + Send + Sync>;

/// A transport that takes batches of outbox records.
pub trait Sink: Send + 'static {
    /// What [`Sink::encoder`] makes of a batch (`()` for a sink without one).
    type Encoded: Send + 'static;

    /// The configured sink name.
    fn name(&self) -> &str;

    /// Delivers `batch` (in log order); `Ok` only when the receiver accepted it.
    fn deliver(
        &mut self,
        batch: &[OutboxRecord],
    ) -> impl Future<Output = Result<Delivered, SinkError>> + Send;

    /// The encoding `deliver` does first, for the delivery loop to run on the next batch while
    /// this one is delivered and recorded, on another thread: encoding is most of a syslog sink's
    /// work, and done inside `deliver` it waited for every write and position commit. `None`
    /// (the default): `deliver` encodes as it goes.
    fn encoder(&self) -> Option<BatchEncoder<Self::Encoded>> {
        None
    }

    /// [`Sink::deliver`] of `batch` given `encoded`, what [`Sink::encoder`] made of exactly this
    /// batch. Default: `deliver`, ignoring `encoded`.
    fn deliver_encoded(
        &mut self,
        batch: &[OutboxRecord],
        encoded: Self::Encoded,
    ) -> impl Future<Output = Result<Delivered, SinkError>> + Send {
        drop(encoded);
        self.deliver(batch)
    }

    /// Checks that the receiver can be reached and written to, without moving data.
    fn check(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Ends the connection at stop so the receiver reads everything sent on it (syslog: TLS
    /// close_notify, a write shutdown, then a read until the receiver closes). The delivery loop
    /// bounds it in time. Default: nothing to close.
    fn close(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}
