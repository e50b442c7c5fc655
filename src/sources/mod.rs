//! Sources: the [`Source`] trait every vendor module implements, and the error type that tells the
//! scheduler what to do next.
//!
//! Owns: the contract between a vendor module and the scheduler. Must not: sleep, loop over pages,
//! touch the store or talk to a sink — a source does one step (`poll` returns one page) and the
//! scheduler owns timing, retries and cancellation. Invariant: a failed poll never moves a cursor.

pub mod code42;
pub mod cursor;
pub mod http;
pub mod jamf;
pub mod json_envelope;
pub mod json_scan;
/// The dotted-path reader, at the crate root since sinks' rules use it too; here under its old path.
pub use crate::json_path;
pub mod record_fields;
pub mod sophos;
pub mod tenable_sc;

use std::future::Future;
use std::time::Duration;

use crate::event::{Page, Partition};

/// Why a poll failed, and therefore what the scheduler does next. Every message names the URL.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The vendor asked us to slow down (HTTP 429). Wait at least `retry_after`, then retry.
    #[error("rate limited by {url}{}", retry_after.map(|d| format!(" (Retry-After {}s)", d.as_secs_f64())).unwrap_or_default())]
    RateLimited {
        /// Request URL (no credentials are ever in URLs).
        url: String,
        /// The vendor's `Retry-After`, when given.
        retry_after: Option<Duration>,
    },
    /// The vendor or the network failed (5xx, timeout, refused). Retry with backoff.
    #[error("{url} unavailable: {detail}")]
    Unavailable {
        /// Request URL.
        url: String,
        /// Status or transport error.
        detail: String,
        /// The vendor's `Retry-After`, when given.
        retry_after: Option<Duration>,
    },
    /// The response could not be understood (truncated or malformed JSON, missing fields). The
    /// cursor stays where it was; retry with backoff.
    #[error("malformed response from {url}: {detail}")]
    Malformed {
        /// Request URL.
        url: String,
        /// What was wrong with the body.
        detail: String,
    },
    /// Credentials were refused even after renewing the token (401/403). Retry with backoff; the
    /// operator must fix the credential or the vendor-side permission.
    #[error("credentials refused by {url}: {detail}")]
    Auth {
        /// Request URL.
        url: String,
        /// The vendor's message.
        detail: String,
    },
    /// The stored cursor cannot be read (written by another version, or edited). Polling this
    /// partition cannot go on: reset it with `secrelay backfill --reset --source ID`. The scheduler
    /// stops the partition (ERROR, recorded in `state`; a backfill fails it) and never retries it.
    #[error("stored cursor unusable ({detail}); reset it with `secrelay backfill --reset --source <id>`")]
    BadCursor {
        /// Which cursor and why.
        detail: String,
    },
    /// The request was refused as invalid (other 4xx). Retry with backoff; usually a configuration
    /// problem (a filter, a tenant id) that the message names.
    #[error("request refused by {url}: {detail}")]
    Rejected {
        /// Request URL.
        url: String,
        /// Status and the vendor's message.
        detail: String,
    },
}

impl SourceError {
    /// The least time to wait before retrying, when the vendor said so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SourceError::RateLimited { retry_after, .. }
            | SourceError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The kind of failure, as the metrics count it (`secrelay_source_poll_errors_total{kind}`).
    pub fn kind(&self) -> &'static str {
        match self {
            SourceError::RateLimited { .. } => "rate_limited",
            SourceError::Unavailable { .. } => "unavailable",
            SourceError::Malformed { .. } => "malformed",
            SourceError::Auth { .. } => "auth",
            SourceError::BadCursor { .. } => "bad_cursor",
            SourceError::Rejected { .. } => "rejected",
        }
    }
}

/// A vendor integration, shared by the tasks that poll its partitions.
pub trait Source: Send + Sync + 'static {
    /// The configured source id.
    fn id(&self) -> &str;

    /// The partitions (stream × tenant) to poll; may call the vendor (tenant discovery).
    fn partitions(&self) -> impl Future<Output = Result<Vec<Partition>, SourceError>> + Send;

    /// Fetches one page of `partition` after `cursor` (`None`: first run or after a reset).
    fn poll(
        &self,
        partition: &Partition,
        cursor: Option<&str>,
    ) -> impl Future<Output = Result<Page, SourceError>> + Send;

    /// How far back the vendor still serves data: a partition paused (or failing) for longer than
    /// this loses what it has not fetched yet. `None` (default): the vendor keeps everything or
    /// serves current state (inventories, vulnerability snapshots).
    fn horizon(&self) -> Option<Duration> {
        None
    }

    /// Ends a vendor session, once, when the source stops (default: nothing to end).
    fn close(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}
