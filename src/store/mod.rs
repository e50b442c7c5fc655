//! The only place that speaks SQL: cursors, the seen-set, the outbox log, sink positions and dead
//! letters, in one SQLite database (WAL, `synchronous=FULL`, file mode 0600).
//!
//! Must not: know any vendor, encode anything for a sink, or sleep. Invariant: the commit of a page
//! (drop ids already seen, append the new events to the outbox, remember their ids, move the cursor)
//! is one transaction, so a crash at any instant leaves either the old cursor or the new cursor with
//! its events on disk; and a sink's position only moves forward, in the same transaction that
//! records its dead letters.
//!
//! Growth is bounded and visible: the file uses incremental auto-vacuum (set before the first table
//! of a new database; an older file is switched with one `VACUUM` at the first writer's open), and
//! [`Store::reclaim_free_pages`] gives the pages of pruned rows back to the file system a few at a
//! time after pruning, so a drained backlog shrinks the file without holding the write lock long.
//!
//! Re-queued dead letters (`secrelay dead-letters retry`): a rejected record is appended again to
//! the END of the outbox log with `target_sink` set to the sink that rejected it. Only that sink
//! reads it ([`Store::read_sink_batch`]); rows with a `target_sink` are pruned once that sink has
//! passed them ([`Store::prune_requeued`]) and are left out of the per-source prune. Why a column on
//! the log rather than a side table: the record gets a real outbox position, so everything keyed
//! by position keeps working unchanged for it — the sink's one offset, the HEC pending acks and
//! pending rejects (which store positions), the backlog, the cap, and the dead-letter path of
//! [`Store::advance_sink`] (rejected again, it is a dead letter again). Other sinks never see it,
//! since they already had it or rejected it themselves.
//!
//! Layout (issue 13): each record is written once, small. The outbox holds chunks (`chunk.rs`):
//! the consecutive records of one page commit, compressed together, record i at position
//! `first_seq + i`, so sinks still keep one position per record. The seen-set key is three
//! integers (`seen.rs`). Checkpoints of the WAL run beside commits, not inside them (`open.rs`).
//!
//! Writers take turns: every write transaction waits for this process's earlier ones to end, in
//! arrival order, and begins `IMMEDIATE` (`Store::begin`), so a sink recording a delivery waits
//! for at most the one page commit under way, and a commit that reads before it writes is never
//! undone by another writer.
//!
//! Parts, one per concern (each `impl Store` block holds the SQL of its tables, and each table has
//! one row mapper reading columns by name): `open` (file, lock, migrations, checkpoints), `legacy`
//! (moving rows of the layout before issue 13), `commit` (a page: seen ids, outbox append,
//! rejected records, cursor), `seen` (the seen-set), `chunk` (a chunk's bytes), `cursors`
//! (partition state, poll errors, reset), `outbox` (appends, batches, backlogs, pruning),
//! `positions` (sink offsets and their advance), `acks` (HEC channel and pending acks, and the
//! [`HecLedger`] a HEC sink is handed), `dead_letters`, `rejected` (records sources could not
//! read), `tickets` (the tickets a ticketing sink opened for vendor alerts, and the
//! [`TicketLedger`] it is handed) and `growth` (sizes, giving free pages back).

mod acks;
mod chunk;
mod commit;
mod cursors;
mod dead_letters;
mod growth;
#[cfg(test)]
mod layout_tests;
mod legacy;
mod open;
mod outbox;
mod positions;
mod rejected;
mod seen;
#[cfg(test)]
mod tests;
mod tickets;

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::query_builder::Separated;
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool, Transaction};

/// The outbox row type lives beside [`crate::event::Event`]; re-exported for callers that know it here.
pub use crate::event::OutboxRecord;
pub use acks::HecLedger;
pub use commit::{CommitSummary, PreparedPage};
pub use cursors::{CursorState, ResetSummary};
pub use dead_letters::DeadLetter;
pub use growth::{DatabaseSize, StoreGrowth};
pub use open::Access;
pub use outbox::OutboxTotals;
pub use positions::SinkState;
pub use rejected::RejectedRecord;
pub use tickets::{Ticket, TicketLedger};

/// Rows per multi-row statement; well under SQLite's bound-parameter limit.
const CHUNK: usize = 400;

/// Store failures. Every variant is worth a retry after a pause except [`StoreError::Open`], which
/// stops the process: the database could not be opened or migrated.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be created, opened or migrated. Stop: fix the path or permissions.
    #[error("cannot open the state database {path}: {reason}")]
    Open {
        /// Database path from `store.path`.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A query failed (disk full, database locked for too long). Retry after a pause.
    #[error("state database query failed while {doing}: {source}")]
    Query {
        /// What the store was doing.
        doing: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
}

fn query_err(doing: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { doing, source }
}

fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// The time (epoch ms) in the `column` of `row`.
fn time_of(row: &SqliteRow, column: &str) -> Result<DateTime<Utc>, sqlx::Error> {
    Ok(from_millis(row.try_get(column)?))
}

/// The time (epoch ms) in the nullable `column` of `row`.
fn time_at(row: &SqliteRow, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    Ok(row.try_get::<Option<i64>, _>(column)?.map(from_millis))
}

/// Commits `tx`, then gives the next writer its turn; `doing` names the work in an error.
async fn commit_tx(tx: WriteTx, doing: &'static str) -> Result<(), StoreError> {
    tx.tx.commit().await.map_err(query_err(doing))
}

/// [`commit_tx`], then `committed` once the COMMIT has ended and before the turn is given up: what
/// it notes (see [`seen::SeenChanges`]) is known to the next writer before it starts. It runs
/// whatever the COMMIT's outcome, even if this future is dropped while the COMMIT is under way:
/// a COMMIT reported as failed, or never reported, may still have reached the disk, and noting a
/// change that did not happen costs the next commit only a second lookup.
async fn commit_tx_then(
    tx: WriteTx,
    doing: &'static str,
    committed: impl FnOnce(),
) -> Result<(), StoreError> {
    /// Runs its function when dropped.
    struct OnDrop<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for OnDrop<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    let WriteTx { tx, _turn } = tx;
    // Declared after the turn, so dropped before it.
    let _note = OnDrop(Some(committed));
    tx.commit().await.map_err(query_err(doing))
}

/// A write transaction holding this process's turn to write (see [`Store::begin`]). Dropped
/// without [`commit_tx`], it rolls back and gives the turn up.
struct WriteTx {
    tx: Transaction<'static, Sqlite>,
    /// Released after the transaction ended (fields drop in order).
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl std::ops::Deref for WriteTx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }
}

/// Inserts one row per item of `items` with `insert` (the statement up to its values, e.g.
/// `INSERT INTO t (a, b) `), [`CHUNK`] rows a statement; `values` binds one item's values in
/// column order. `doing` names the work in an error.
async fn insert_rows<'a, T>(
    conn: &mut SqliteConnection,
    insert: &str,
    items: &'a [T],
    mut values: impl FnMut(Separated<'_, 'a, Sqlite, &'static str>, &'a T),
    doing: &'static str,
) -> Result<(), StoreError> {
    for chunk in items.chunks(CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(insert);
        q.push_values(chunk, &mut values);
        q.build()
            .execute(&mut *conn)
            .await
            .map_err(query_err(doing))?;
    }
    Ok(())
}

/// Handle to the state database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    /// The database file (its WAL is beside it, `-wal` appended).
    path: PathBuf,
    /// Set while one task gives free pages back, so sinks finishing at once do not all do it.
    reclaiming: Arc<std::sync::atomic::AtomicBool>,
    /// Seen-set scope numbers by (source, stream), as created on disk (see `seen.rs`).
    scopes: Arc<std::sync::Mutex<std::collections::HashMap<(String, String), i64>>>,
    /// Set while the older, text-keyed `seen` table holds rows (see `seen.rs`).
    legacy_seen: Arc<std::sync::atomic::AtomicBool>,
    /// This process's changes to the seen-set, counted (see `seen.rs`).
    seen_changes: Arc<std::sync::Mutex<seen::SeenChanges>>,
    /// Per seen-set scope, a key time no key is newer than (see `seen.rs`).
    seen_bounds: Arc<std::sync::Mutex<seen::SeenBounds>>,
    /// Held while one task checkpoints the WAL, off the commit path (see `open.rs`).
    checkpointing: Arc<tokio::sync::Mutex<()>>,
    /// This process's turn to write: held for a whole write transaction (see [`Store::begin`]).
    writing: Arc<tokio::sync::Mutex<()>>,
    /// Held for the life of a writer's store (see [`Access::Writer`]).
    writer_lock: Option<Arc<std::fs::File>>,
}

impl Store {
    /// Starts a write transaction once this process's earlier ones ended; `doing` names the work
    /// in an error.
    ///
    /// Why a turn: SQLite lets one connection write at a time and makes the others poll for the
    /// lock, sleeping longer each time. A source committing page after page then kept a sink's
    /// small advance waiting for seconds (measured: 1.1–1.7 s a batch, the sink stalled until the
    /// source was done). Turns are handed out in arrival order, so writers alternate; SQLite's
    /// own wait (`busy_timeout`) remains for other processes.
    ///
    /// `BEGIN IMMEDIATE`: the transaction holds SQLite's write lock from its start. A deferred one
    /// that reads first (a page commit looks its ids up before writing) fails with
    /// `SQLITE_BUSY_SNAPSHOT` if any other connection wrote in between (a sink noting an error),
    /// and a failed page commit means fetching the page again from a vendor that may have moved on.
    async fn begin(&self, doing: &'static str) -> Result<WriteTx, StoreError> {
        let turn = self.writing.clone().lock_owned().await;
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(query_err(doing))?;
        Ok(WriteTx { tx, _turn: turn })
    }
}
