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

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, QueryBuilder, Row, Sqlite, SqlitePool};

use crate::event::{Page, Partition};

/// How long a writer waits for the lock before concluding another writer holds it.
const WRITER_LOCK_PATIENCE: Duration = Duration::from_secs(5);

/// The migrations in `migrations/`, built into the binary.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long a reader waits for a writer to finish migrating.
const SCHEMA_PATIENCE: Duration = Duration::from_secs(10);

/// Rows per multi-row statement; well under SQLite's bound-parameter limit.
const CHUNK: usize = 400;

/// Free pages below this many bytes stay in the file: the next commits reuse them, and giving them
/// back after every batch of a busy outbox would only churn.
const RECLAIM_ABOVE_BYTES: i64 = 4 << 20;

/// Bytes of free pages given back per `incremental_vacuum` statement. Each statement is its own
/// short write transaction, so commits and sink advances get the lock between steps.
const RECLAIM_STEP_BYTES: i64 = 8 << 20;

/// The WAL file is truncated to this after a checkpoint, so a burst does not leave it large.
const WAL_SIZE_LIMIT_BYTES: i64 = 64 << 20;

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

/// One row of the outbox log, as a sink reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRecord {
    /// Position in the log; strictly increasing, never reused.
    pub seq: i64,
    /// Configured source id.
    pub source: String,
    /// Stream within the source.
    pub stream: String,
    /// Vendor tenant, `""` when none.
    pub tenant: String,
    /// Vendor-stable event id.
    pub event_id: String,
    /// Event time.
    pub event_time: DateTime<Utc>,
    /// When secrelay committed the event.
    pub ingest_time: DateTime<Utc>,
    /// Severity 0–10.
    pub severity: u8,
    /// The vendor record, compact JSON.
    pub record: String,
}

/// What committing one page did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitSummary {
    /// Events appended to the outbox.
    pub appended: u64,
    /// Events dropped because their id was already in the seen-set.
    pub duplicates: u64,
    /// Rejected records kept for the first time (one fetched again is not counted).
    pub rejected: u64,
}

/// Outbox size, kept by triggers.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct OutboxTotals {
    /// Rows waiting for at least one sink.
    pub rows: i64,
    /// Bytes of those rows' records.
    pub bytes: i64,
}

/// Per-partition state, as `secrelay state` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CursorState {
    /// Source id.
    pub source: String,
    /// Stream.
    pub stream: String,
    /// Tenant (`""` when none).
    pub tenant: String,
    /// The stored vendor position (opaque; vendors do not put secrets in cursors).
    pub cursor: Option<String>,
    /// When the cursor last moved.
    pub updated_at: Option<DateTime<Utc>>,
    /// Last poll that committed.
    pub last_success_at: Option<DateTime<Utc>>,
    /// Last failure message.
    pub last_error: Option<String>,
    /// When it failed.
    pub last_error_at: Option<DateTime<Utc>>,
    /// Newest event time committed.
    pub newest_event_at: Option<DateTime<Utc>>,
    /// Events appended to the outbox.
    pub events_total: i64,
    /// Events dropped as already seen.
    pub duplicates_total: i64,
    /// Times the cursor was clamped to the vendor's horizon.
    pub clamps_total: i64,
    /// Records the source could not turn into events, kept as dead letters.
    pub rejected_total: i64,
}

/// A record a source could not turn into an event, as kept in the store.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RejectedRecord {
    /// Source id.
    pub source: String,
    /// Stream.
    pub stream: String,
    /// Tenant (`""` when none).
    pub tenant: String,
    /// The request it came from.
    pub url: String,
    /// Why it was rejected.
    pub reason: String,
    /// The vendor's text of it.
    pub record: String,
    /// When it was first rejected.
    pub at: DateTime<Utc>,
}

/// Per-sink state, as `secrelay state` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SinkState {
    /// Sink name.
    pub sink: String,
    /// Last outbox position the receiver accepted.
    pub delivered_seq: i64,
    /// When it last moved.
    pub updated_at: Option<DateTime<Utc>>,
    /// Events delivered in all.
    pub delivered_total: i64,
    /// Last delivery failure.
    pub last_error: Option<String>,
    /// When it failed.
    pub last_error_at: Option<DateTime<Utc>>,
    /// Dead letters recorded for this sink.
    pub dead_letters: i64,
}

/// What `reset` removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResetSummary {
    /// Cursor rows removed.
    pub cursors: u64,
    /// Seen-set ids removed.
    pub seen: u64,
}

/// How a process uses the state database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `run` and `backfill`: the only process moving cursors and positions. Holds an exclusive lock
    /// on `<path>.lock` for the life of the store, so a second one fails fast instead of polling
    /// everything twice.
    Writer,
    /// `state` and `check`: may run beside a writer.
    Reader,
}

/// Handle to the state database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    /// The database file (its WAL is beside it, `-wal` appended).
    path: PathBuf,
    /// Set while one task gives free pages back, so sinks finishing at once do not all do it.
    reclaiming: Arc<std::sync::atomic::AtomicBool>,
    /// Held for the life of a writer's store (see [`Access::Writer`]).
    _lock: Option<Arc<std::fs::File>>,
}

impl Store {
    /// Opens (creating with mode 0600 if missing) and migrates the database at `path`.
    ///
    /// Migrations run under the exclusive lock on `<path>.lock`, so two processes starting at once
    /// never race them; a reader that finds a writer holding the lock leaves migrating to it.
    pub async fn open(path: &Path, access: Access) -> Result<Store, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: path.to_path_buf(),
            reason,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_err(format!("creating {}: {e}", dir.display())))?;
        }
        create_private_file(path).map_err(|e| open_err(e.to_string()))?;
        // A file name, not a URL: `?` and `#` in the path are part of the name.
        let options = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed page survives power loss, not only a process crash.
            .synchronous(SqliteSynchronous::Full)
            // Set on every connection, before `journal_mode`: on a new file it takes effect with the
            // first table; an older file needs one VACUUM (see `use_incremental_vacuum`).
            .auto_vacuum(SqliteAutoVacuum::Incremental)
            .pragma("journal_size_limit", WAL_SIZE_LIMIT_BYTES.to_string())
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true)
            // A commit waiting on another writer's fsync is normal here, not worth a warning per page.
            .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(5));
        // Take the lock before connecting: the first connection to a new file switches it to WAL,
        // which two processes must not attempt at once.
        let lock_path = PathBuf::from(format!("{}.lock", path.display()));
        let lock = open_lock_file(&lock_path)
            .map_err(|e| open_err(format!("lock file {}: {e}", lock_path.display())))?;
        let locked = lock_or_wait(&lock, access)
            .await
            .map_err(|e| open_err(format!("locking {}: {e}", lock_path.display())))?;
        if !locked && access == Access::Writer {
            return Err(open_err(format!(
                "another secrelay run or backfill is using it (lock {} is held)",
                lock_path.display()
            )));
        }
        let pool = connect(options).await.map_err(open_err)?;
        if locked {
            MIGRATOR
                .run(&pool)
                .await
                .map_err(|e| open_err(format!("migration failed: {e}")))?;
            // Only a writer rewrites the file: `state` must not spend minutes on a VACUUM.
            if access == Access::Writer {
                use_incremental_vacuum(&pool, path)
                    .await
                    .map_err(|e| open_err(format!("switching to incremental vacuum: {e}")))?;
            }
        } else {
            // The writer holding the lock may still be migrating: wait for the schema it brings.
            wait_for_schema(&pool).await.map_err(open_err)?;
        }
        let lock = match access {
            Access::Writer => Some(Arc::new(lock)),
            // Dropping the file releases the lock.
            Access::Reader => None,
        };
        Ok(Store {
            pool,
            path: path.to_path_buf(),
            reclaiming: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            _lock: lock,
        })
    }

    /// Closes the pool, checkpointing the WAL.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The stored cursor of one partition, `None` on first run or after a reset.
    pub async fn cursor(
        &self,
        source: &str,
        partition: &Partition,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT cursor FROM cursors WHERE source = ? AND stream = ? AND tenant = ?",
        )
        .bind(source)
        .bind(&partition.stream)
        .bind(&partition.tenant)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_err("reading a cursor"))?;
        Ok(row.and_then(|r| r.get::<Option<String>, _>(0)))
    }

    /// Commits one page in one transaction: drops ids already seen, appends the rest to the outbox,
    /// remembers their ids and moves the cursor (if the page carries one).
    pub async fn commit_page(
        &self,
        source: &str,
        partition: &Partition,
        page: &Page,
        now: DateTime<Utc>,
    ) -> Result<CommitSummary, StoreError> {
        let now_ms = millis(now);
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_err("starting a page commit"))?;

        // 1. Remember ids; RETURNING yields only the ids that were new.
        let mut fresh: HashSet<String> = HashSet::with_capacity(page.events.len());
        for chunk in page.events.chunks(CHUNK) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO seen (source, stream, event_id, event_time, seen_at) ",
            );
            q.push_values(chunk, |mut b, e| {
                b.push_bind(source)
                    .push_bind(&partition.stream)
                    .push_bind(&e.id)
                    .push_bind(millis(e.time))
                    .push_bind(now_ms);
            });
            q.push(" ON CONFLICT DO NOTHING RETURNING event_id");
            let rows = q
                .build()
                .fetch_all(&mut *tx)
                .await
                .map_err(query_err("recording seen ids"))?;
            fresh.extend(rows.into_iter().map(|r| r.get::<String, _>(0)));
        }

        // 2. Ids the vendor served again stay remembered as long as it keeps serving them, so that
        //    pruning by age never forgets an id that a later page would bring back.
        let repeated: Vec<&str> = page
            .events
            .iter()
            .map(|e| e.id.as_str())
            .filter(|id| !fresh.contains(*id))
            .collect();
        for chunk in repeated.chunks(CHUNK) {
            let mut q = QueryBuilder::<Sqlite>::new("UPDATE seen SET seen_at = ");
            q.push_bind(now_ms)
                .push(" WHERE source = ")
                .push_bind(source)
                .push(" AND stream = ")
                .push_bind(&partition.stream)
                .push(" AND event_id IN (");
            let mut ids = q.separated(", ");
            for id in chunk {
                ids.push_bind(*id);
            }
            q.push(")");
            q.build()
                .execute(&mut *tx)
                .await
                .map_err(query_err("refreshing seen ids"))?;
        }

        // 3. Append the new events in vendor order (a page may repeat an id; keep the first).
        let new_events: Vec<_> = page.events.iter().filter(|e| fresh.remove(&e.id)).collect();
        for chunk in new_events.chunks(CHUNK) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO outbox (source, stream, tenant, event_id, event_time, ingest_time, severity, record, bytes) ",
            );
            q.push_values(chunk, |mut b, e| {
                let record = e.record.get();
                b.push_bind(source)
                    .push_bind(&partition.stream)
                    .push_bind(&partition.tenant)
                    .push_bind(&e.id)
                    .push_bind(millis(e.time))
                    .push_bind(now_ms)
                    .push_bind(i64::from(e.severity.value()))
                    .push_bind(record)
                    .push_bind(record.len() as i64);
            });
            q.build()
                .execute(&mut *tx)
                .await
                .map_err(query_err("appending to the outbox"))?;
        }

        // 4. Keep the records that could not become events, once each: a record fetched again
        //    (overlapping windows, boundary repeats) is not counted twice.
        let mut rejected = 0u64;
        for r in &page.rejected {
            rejected += sqlx::query(
                "INSERT INTO rejected_records (source, stream, tenant, url, reason, record, at)
                 VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(source)
            .bind(&partition.stream)
            .bind(&partition.tenant)
            .bind(&r.url)
            .bind(&r.reason)
            .bind(&r.record)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(query_err("keeping a rejected record"))?
            .rows_affected();
        }

        // 5. Move the cursor and the partition's counters.
        let appended = new_events.len() as u64;
        let duplicates = page.events.len() as u64 - appended;
        let newest = new_events.iter().map(|e| millis(e.time)).max();
        sqlx::query(
            "INSERT INTO cursors (source, stream, tenant, cursor, updated_at, last_success_at, newest_event_at,
                                  events_total, duplicates_total, clamps_total, rejected_total)
             VALUES (?1, ?2, ?3, ?4, CASE WHEN ?4 IS NULL THEN NULL ELSE ?5 END, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (source, stream, tenant) DO UPDATE SET
                cursor = COALESCE(excluded.cursor, cursors.cursor),
                updated_at = COALESCE(excluded.updated_at, cursors.updated_at),
                last_success_at = excluded.last_success_at,
                newest_event_at = MAX(COALESCE(cursors.newest_event_at, 0), COALESCE(excluded.newest_event_at, 0)),
                events_total = cursors.events_total + excluded.events_total,
                duplicates_total = cursors.duplicates_total + excluded.duplicates_total,
                clamps_total = cursors.clamps_total + excluded.clamps_total,
                rejected_total = cursors.rejected_total + excluded.rejected_total",
        )
        .bind(source)
        .bind(&partition.stream)
        .bind(&partition.tenant)
        .bind(page.cursor.as_deref())
        .bind(now_ms)
        .bind(newest)
        .bind(appended as i64)
        .bind(duplicates as i64)
        .bind(i64::from(page.cursor_clamped.is_some()))
        .bind(rejected as i64)
        .execute(&mut *tx)
        .await
        .map_err(query_err("moving a cursor"))?;

        tx.commit().await.map_err(query_err("committing a page"))?;
        Ok(CommitSummary {
            appended,
            duplicates,
            rejected,
        })
    }

    /// Records a failed poll of one partition; the cursor is left as it is.
    pub async fn record_poll_error(
        &self,
        source: &str,
        partition: &Partition,
        message: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO cursors (source, stream, tenant, last_error, last_error_at) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (source, stream, tenant) DO UPDATE SET
                last_error = excluded.last_error, last_error_at = excluded.last_error_at",
        )
        .bind(source)
        .bind(&partition.stream)
        .bind(&partition.tenant)
        .bind(message)
        .bind(millis(now))
        .execute(&self.pool)
        .await
        .map_err(query_err("recording a poll error"))?;
        Ok(())
    }

    /// Rows and bytes waiting in the outbox.
    pub async fn outbox_totals(&self) -> Result<OutboxTotals, StoreError> {
        let row = sqlx::query("SELECT rows, bytes FROM outbox_totals WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(query_err("reading outbox totals"))?;
        Ok(OutboxTotals {
            rows: row.get(0),
            bytes: row.get(1),
        })
    }

    /// The position of `sink` in the log (0 for a sink never seen before).
    pub async fn sink_position(&self, sink: &str) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT delivered_seq FROM sink_offsets WHERE sink = ?")
            .bind(sink)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_err("reading a sink position"))?;
        Ok(row.map(|r| r.get(0)).unwrap_or(0))
    }

    /// Up to `limit` records after `after_seq` that come from one of `sources`, in log order.
    /// Leaves out dead letters re-queued for one sink (see [`Store::read_sink_batch`]).
    pub async fn read_batch(
        &self,
        after_seq: i64,
        sources: &[String],
        limit: usize,
    ) -> Result<Vec<OutboxRecord>, StoreError> {
        if sources.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT seq, source, stream, tenant, event_id, event_time, ingest_time, severity, record
             FROM outbox WHERE seq > ",
        );
        q.push_bind(after_seq).push(" AND source IN (");
        let mut list = q.separated(", ");
        for s in sources {
            list.push_bind(s);
        }
        q.push(") AND target_sink IS NULL ORDER BY seq LIMIT ")
            .push_bind(limit as i64);
        let rows = q
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(query_err("reading an outbox batch"))?;
        Ok(rows.iter().map(outbox_record).collect())
    }

    /// Records in the outbox after `after_seq` from one of `sources`, leaving out dead letters
    /// re-queued for one sink (a sink's backlog with them: [`Store::sink_backlog`]).
    pub async fn backlog(&self, after_seq: i64, sources: &[String]) -> Result<i64, StoreError> {
        if sources.is_empty() {
            return Ok(0);
        }
        let mut q = QueryBuilder::<Sqlite>::new("SELECT COUNT(*) FROM outbox WHERE seq > ");
        q.push_bind(after_seq).push(" AND source IN (");
        let mut list = q.separated(", ");
        for s in sources {
            list.push_bind(s);
        }
        q.push(") AND target_sink IS NULL");
        let row = q
            .build()
            .fetch_one(&self.pool)
            .await
            .map_err(query_err("counting a sink backlog"))?;
        Ok(row.get(0))
    }

    /// Rows and bytes waiting for `sink` after `after_seq` (the rows of `sources` plus the dead
    /// letters re-queued for it): its backlog, measured against its share of the outbox cap.
    /// Reads every waiting row, so callers cache it rather than ask on every poll.
    pub async fn backlog_totals(
        &self,
        sink: &str,
        after_seq: i64,
        sources: &[String],
    ) -> Result<OutboxTotals, StoreError> {
        let mut q = QueryBuilder::<Sqlite>::new("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM (");
        push_sink_rows(&mut q, "seq, bytes", sink, after_seq, sources);
        q.push(")");
        let row = q
            .build()
            .fetch_one(&self.pool)
            .await
            .map_err(query_err("measuring a sink backlog"))?;
        Ok(OutboxTotals {
            rows: row.get(0),
            bytes: row.get(1),
        })
    }

    /// Moves `sink` to `to_seq` after its receiver accepted a batch, recording the records it
    /// rejected as dead letters in the same transaction. Never moves a position backwards.
    pub async fn advance_sink(
        &self,
        sink: &str,
        to_seq: i64,
        delivered: u64,
        rejected: &[(OutboxRecord, String)],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let now_ms = millis(now);
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_err("starting a sink advance"))?;
        for chunk in rejected.chunks(CHUNK) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO dead_letters (sink, seq, source, stream, tenant, event_id, event_time, record, reason, at, severity, ingest_time) ",
            );
            q.push_values(chunk, |mut b, (r, reason)| {
                b.push_bind(sink)
                    .push_bind(r.seq)
                    .push_bind(&r.source)
                    .push_bind(&r.stream)
                    .push_bind(&r.tenant)
                    .push_bind(&r.event_id)
                    .push_bind(millis(r.event_time))
                    .push_bind(&r.record)
                    .push_bind(reason)
                    .push_bind(now_ms)
                    .push_bind(i64::from(r.severity))
                    .push_bind(millis(r.ingest_time));
            });
            q.build()
                .execute(&mut *tx)
                .await
                .map_err(query_err("recording dead letters"))?;
        }
        sqlx::query(
            "INSERT INTO sink_offsets (sink, delivered_seq, updated_at, delivered_total) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (sink) DO UPDATE SET
                delivered_seq = MAX(sink_offsets.delivered_seq, excluded.delivered_seq),
                updated_at = excluded.updated_at,
                delivered_total = sink_offsets.delivered_total + excluded.delivered_total",
        )
        .bind(sink)
        .bind(to_seq)
        .bind(now_ms)
        .bind(delivered as i64)
        .execute(&mut *tx)
        .await
        .map_err(query_err("moving a sink position"))?;
        tx.commit()
            .await
            .map_err(query_err("committing a sink advance"))?;
        Ok(())
    }

    /// Records a failed delivery; the position is left as it is.
    pub async fn record_sink_error(
        &self,
        sink: &str,
        message: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sink_offsets (sink, last_error, last_error_at) VALUES (?, ?, ?)
             ON CONFLICT (sink) DO UPDATE SET last_error = excluded.last_error, last_error_at = excluded.last_error_at",
        )
        .bind(sink)
        .bind(message)
        .bind(millis(now))
        .execute(&self.pool)
        .await
        .map_err(query_err("recording a sink error"))?;
        Ok(())
    }

    /// Deletes the outbox rows of `source` that every sink in `sinks` has passed. Returns rows deleted.
    /// Dead letters re-queued for one sink are left to [`Store::prune_requeued`].
    pub async fn prune_outbox(&self, source: &str, sinks: &[String]) -> Result<u64, StoreError> {
        if sinks.is_empty() {
            return Ok(0);
        }
        // A sink with no row yet has delivered nothing: MIN over a missing row must count as 0.
        let mut q = QueryBuilder::<Sqlite>::new("DELETE FROM outbox WHERE source = ");
        q.push_bind(source)
            .push(" AND target_sink IS NULL AND seq <= (SELECT MIN(p) FROM (");
        let mut first = true;
        for sink in sinks {
            if !first {
                q.push(" UNION ALL ");
            }
            first = false;
            q.push("SELECT COALESCE((SELECT delivered_seq FROM sink_offsets WHERE sink = ")
                .push_bind(sink)
                .push("), 0) AS p");
        }
        q.push("))");
        let done = q
            .build()
            .execute(&self.pool)
            .await
            .map_err(query_err("pruning the outbox"))?;
        Ok(done.rows_affected())
    }

    /// Forgets seen ids of `source` recorded before `before`. Returns ids removed.
    pub async fn prune_seen(&self, source: &str, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM seen WHERE source = ? AND seen_at < ?")
            .bind(source)
            .bind(millis(before))
            .execute(&self.pool)
            .await
            .map_err(query_err("pruning the seen-set"))?;
        Ok(done.rows_affected())
    }

    /// Forgets the cursors of `source` and, when `since` is given, the seen ids of events newer
    /// than `since`, so that history is pulled and delivered again.
    pub async fn reset(
        &self,
        source: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<ResetSummary, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_err("starting a reset"))?;
        let cursors = sqlx::query("DELETE FROM cursors WHERE source = ?")
            .bind(source)
            .execute(&mut *tx)
            .await
            .map_err(query_err("forgetting cursors"))?
            .rows_affected();
        let seen = match since {
            Some(t) => sqlx::query("DELETE FROM seen WHERE source = ? AND event_time >= ?")
                .bind(source)
                .bind(millis(t))
                .execute(&mut *tx)
                .await
                .map_err(query_err("forgetting seen ids"))?
                .rows_affected(),
            None => 0,
        };
        tx.commit().await.map_err(query_err("committing a reset"))?;
        Ok(ResetSummary { cursors, seen })
    }

    /// Every partition's state, ordered by source, stream, tenant.
    pub async fn cursor_states(&self) -> Result<Vec<CursorState>, StoreError> {
        let rows = sqlx::query(
            "SELECT source, stream, tenant, cursor, updated_at, last_success_at, last_error, last_error_at,
                    newest_event_at, events_total, duplicates_total, clamps_total, rejected_total
             FROM cursors ORDER BY source, stream, tenant",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query_err("reading cursors"))?;
        let time =
            |r: &sqlx::sqlite::SqliteRow, i: usize| r.get::<Option<i64>, _>(i).map(from_millis);
        Ok(rows
            .iter()
            .map(|r| CursorState {
                source: r.get(0),
                stream: r.get(1),
                tenant: r.get(2),
                cursor: r.get(3),
                updated_at: time(r, 4),
                last_success_at: time(r, 5),
                last_error: r.get(6),
                last_error_at: time(r, 7),
                newest_event_at: time(r, 8).filter(|t| t.timestamp_millis() > 0),
                events_total: r.get(9),
                duplicates_total: r.get(10),
                clamps_total: r.get(11),
                rejected_total: r.get(12),
            })
            .collect())
    }

    /// The rejected records of `source`, oldest first.
    pub async fn rejected_records(&self, source: &str) -> Result<Vec<RejectedRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT source, stream, tenant, url, reason, record, at
             FROM rejected_records WHERE source = ? ORDER BY id",
        )
        .bind(source)
        .fetch_all(&self.pool)
        .await
        .map_err(query_err("reading rejected records"))?;
        Ok(rows.iter().map(rejected_record).collect())
    }

    /// The `limit` most recently rejected records of every source, newest first.
    pub async fn recent_rejected(&self, limit: u32) -> Result<Vec<RejectedRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT source, stream, tenant, url, reason, record, at
             FROM rejected_records ORDER BY id DESC LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(query_err("reading rejected records"))?;
        Ok(rows.iter().map(rejected_record).collect())
    }

    /// Every sink's state, ordered by name.
    pub async fn sink_states(&self) -> Result<Vec<SinkState>, StoreError> {
        let rows = sqlx::query(
            "SELECT s.sink, s.delivered_seq, s.updated_at, s.delivered_total, s.last_error, s.last_error_at,
                    (SELECT COUNT(*) FROM dead_letters d WHERE d.sink = s.sink)
             FROM sink_offsets s ORDER BY s.sink",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query_err("reading sink positions"))?;
        let time =
            |r: &sqlx::sqlite::SqliteRow, i: usize| r.get::<Option<i64>, _>(i).map(from_millis);
        Ok(rows
            .iter()
            .map(|r| SinkState {
                sink: r.get(0),
                delivered_seq: r.get(1),
                updated_at: time(r, 2),
                delivered_total: r.get(3),
                last_error: r.get(4),
                last_error_at: time(r, 5),
                dead_letters: r.get(6),
            })
            .collect())
    }
}

/// An `outbox` row selected as (seq, source, stream, tenant, event_id, event_time, ingest_time,
/// severity, record).
fn outbox_record(r: &sqlx::sqlite::SqliteRow) -> OutboxRecord {
    OutboxRecord {
        seq: r.get(0),
        source: r.get(1),
        stream: r.get(2),
        tenant: r.get(3),
        event_id: r.get(4),
        event_time: from_millis(r.get(5)),
        ingest_time: from_millis(r.get(6)),
        severity: r.get::<i64, _>(7).clamp(0, 10) as u8,
        record: r.get(8),
    }
}

/// A `rejected_records` row selected as (source, stream, tenant, url, reason, record, at).
fn rejected_record(r: &sqlx::sqlite::SqliteRow) -> RejectedRecord {
    RejectedRecord {
        source: r.get(0),
        stream: r.get(1),
        tenant: r.get(2),
        url: r.get(3),
        reason: r.get(4),
        record: r.get(5),
        at: from_millis(r.get(6)),
    }
}

/// Acknowledgement bookkeeping for sinks whose receivers confirm indexing later (Splunk HEC).
impl Store {
    /// The channel `sink` uses, created with `new_channel` the first time.
    pub async fn sink_channel(&self, sink: &str, new_channel: &str) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO sink_channels (sink, channel) VALUES (?, ?) ON CONFLICT (sink) DO NOTHING",
        )
        .bind(sink)
        .bind(new_channel)
        .execute(&self.pool)
        .await
        .map_err(query_err("creating a sink channel"))?;
        sqlx::query_scalar("SELECT channel FROM sink_channels WHERE sink = ?")
            .bind(sink)
            .fetch_one(&self.pool)
            .await
            .map_err(query_err("reading a sink channel"))
    }

    /// Remembers the ack ids a batch ending at `last_seq` waits for.
    ///
    /// `rejected` are the outbox positions of the batch's records the receiver refused, with why:
    /// kept with the acks, so that a restart that finds the acks answered still dead-letters them.
    pub async fn save_pending_acks(
        &self,
        sink: &str,
        channel: &str,
        ack_ids: &[u64],
        last_seq: i64,
        rejected: &[(i64, String)],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_err("starting to save acks"))?;
        for chunk in ack_ids.chunks(CHUNK) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT OR REPLACE INTO pending_acks (sink, channel, ack_id, last_seq, sent_at) ",
            );
            q.push_values(chunk, |mut b, id| {
                b.push_bind(sink)
                    .push_bind(channel)
                    .push_bind(*id as i64)
                    .push_bind(last_seq)
                    .push_bind(millis(now));
            });
            q.build()
                .execute(&mut *tx)
                .await
                .map_err(query_err("saving pending acks"))?;
        }
        for (seq, reason) in rejected {
            sqlx::query(
                "INSERT OR REPLACE INTO pending_rejects (sink, seq, reason) VALUES (?, ?, ?)",
            )
            .bind(sink)
            .bind(seq)
            .bind(reason)
            .execute(&mut *tx)
            .await
            .map_err(query_err("saving pending rejects"))?;
        }
        tx.commit()
            .await
            .map_err(query_err("committing pending acks"))?;
        Ok(())
    }

    /// The acks `sink` still waits for: (channel, ack id, last outbox position of their batch).
    pub async fn pending_acks(&self, sink: &str) -> Result<Vec<(String, u64, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT channel, ack_id, last_seq FROM pending_acks WHERE sink = ? ORDER BY ack_id",
        )
        .bind(sink)
        .fetch_all(&self.pool)
        .await
        .map_err(query_err("reading pending acks"))?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get::<i64, _>(1) as u64, r.get(2)))
            .collect())
    }

    /// The refused records saved with the pending acks of `sink`: (outbox position, reason).
    pub async fn pending_rejects(&self, sink: &str) -> Result<Vec<(i64, String)>, StoreError> {
        let rows =
            sqlx::query("SELECT seq, reason FROM pending_rejects WHERE sink = ? ORDER BY seq")
                .bind(sink)
                .fetch_all(&self.pool)
                .await
                .map_err(query_err("reading pending rejects"))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Forgets the acks of `sink` and the refused records kept with them (answered, or given up
    /// and the batch sent again).
    pub async fn clear_pending_acks(&self, sink: &str) -> Result<(), StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_err("starting to clear acks"))?;
        for table in ["pending_acks", "pending_rejects"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE sink = ?"))
                .bind(sink)
                .execute(&mut *tx)
                .await
                .map_err(query_err("clearing pending acks"))?;
        }
        tx.commit()
            .await
            .map_err(query_err("committing cleared acks"))?;
        Ok(())
    }
}

/// A record a sink's receiver rejected, as kept in the dead-letter table.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeadLetter {
    /// Row id (ordering only).
    pub id: i64,
    /// The sink whose receiver rejected it.
    pub sink: String,
    /// Its outbox position when it was rejected.
    pub seq: i64,
    /// Source id.
    pub source: String,
    /// Stream.
    pub stream: String,
    /// Tenant (`""` when none).
    pub tenant: String,
    /// Vendor-stable event id.
    pub event_id: String,
    /// Event time.
    pub event_time: DateTime<Utc>,
    /// What the receiver said.
    pub reason: String,
    /// When it was rejected.
    pub at: DateTime<Utc>,
    /// The vendor record, compact JSON.
    pub record: String,
}

/// The size of the database file, as `secrelay state` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DatabaseSize {
    /// The database file.
    pub path: PathBuf,
    /// Bytes of the main file on disk.
    pub main_bytes: u64,
    /// Bytes of the write-ahead log beside it (0 when there is none).
    pub wal_bytes: u64,
    /// `main_bytes + wal_bytes`.
    pub total_bytes: u64,
    /// Bytes of free pages inside the main file (given back by incremental vacuum above 4 MiB).
    pub free_bytes: u64,
    /// `none`, `full` or `incremental` (`incremental` once a writer has opened it).
    pub auto_vacuum: String,
}

/// What the state database holds that grows, as `secrelay state` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StoreGrowth {
    /// Seen-set ids kept, in all.
    pub seen_ids: i64,
    /// Seen-set ids kept, per source id.
    pub seen_ids_by_source: std::collections::BTreeMap<String, i64>,
    /// Records a sink's receiver rejected (dead letters), in all sinks.
    pub dead_letters: i64,
    /// Records a source could not turn into events, in all.
    pub rejected_records: i64,
    /// Outbox rows that are dead letters re-queued for one sink (counted in the outbox too).
    pub requeued: i64,
    /// The file on disk.
    pub database: DatabaseSize,
}

/// Growth: sizes for `state`, giving free pages back, and dead letters listed and re-queued.
impl Store {
    /// Row counts of what grows, and the file's size on disk (main file plus WAL).
    pub async fn growth(&self) -> Result<StoreGrowth, StoreError> {
        let by_source: Vec<(String, i64)> =
            sqlx::query_as("SELECT source, COUNT(*) FROM seen GROUP BY source ORDER BY source")
                .fetch_all(&self.pool)
                .await
                .map_err(query_err("counting seen ids"))?;
        let counts = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM dead_letters), (SELECT COUNT(*) FROM rejected_records),
                    (SELECT COUNT(*) FROM outbox WHERE target_sink IS NOT NULL)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(query_err("counting dead letters"))?;
        let (page_size, free_pages, auto_vacuum) = self.pages().await?;
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let main_bytes = size(&self.path);
        let wal_bytes = size(&PathBuf::from(format!("{}-wal", self.path.display())));
        Ok(StoreGrowth {
            seen_ids: by_source.iter().map(|(_, n)| n).sum(),
            seen_ids_by_source: by_source.into_iter().collect(),
            dead_letters: counts.get(0),
            rejected_records: counts.get(1),
            requeued: counts.get(2),
            database: DatabaseSize {
                path: self.path.clone(),
                main_bytes,
                wal_bytes,
                total_bytes: main_bytes + wal_bytes,
                free_bytes: (page_size * free_pages).max(0) as u64,
                auto_vacuum: match auto_vacuum {
                    0 => "none",
                    1 => "full",
                    _ => "incremental",
                }
                .to_string(),
            },
        })
    }

    /// (page size, free pages, auto_vacuum mode 0/1/2).
    async fn pages(&self) -> Result<(i64, i64, i64), StoreError> {
        sqlx::query_as(
            "SELECT (SELECT page_size FROM pragma_page_size()),
                    (SELECT freelist_count FROM pragma_freelist_count()),
                    (SELECT auto_vacuum FROM pragma_auto_vacuum())",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(query_err("reading page counts"))
    }

    /// Gives free pages (left by pruned rows) back to the file system while more than 4 MiB of them
    /// are free, 8 MiB per statement, each its own short write transaction. Returns bytes given back.
    /// Does nothing while another task of this process is at it, or on a file without incremental
    /// auto-vacuum (a reader-only database not yet opened by a writer).
    pub async fn reclaim_free_pages(&self) -> Result<u64, StoreError> {
        use std::sync::atomic::Ordering;
        if self.reclaiming.swap(true, Ordering::AcqRel) {
            return Ok(0);
        }
        let result = self.reclaim_steps().await;
        self.reclaiming.store(false, Ordering::Release);
        result
    }

    async fn reclaim_steps(&self) -> Result<u64, StoreError> {
        let (page_size, mut free, auto_vacuum) = self.pages().await?;
        if auto_vacuum != 2 || page_size <= 0 {
            return Ok(0);
        }
        let step = (RECLAIM_STEP_BYTES / page_size).max(1);
        let mut given_back = 0u64;
        while free * page_size > RECLAIM_ABOVE_BYTES {
            sqlx::query(&format!("PRAGMA incremental_vacuum({step})"))
                .execute(&self.pool)
                .await
                .map_err(query_err("giving free pages back"))?;
            let (_, now_free, _) = self.pages().await?;
            if now_free >= free {
                break; // No progress (another connection holds them): try after the next prune.
            }
            given_back += ((free - now_free) * page_size) as u64;
            free = now_free;
        }
        Ok(given_back)
    }

    /// Up to `limit` records for `sink` after `after_seq`, in log order: the rows of `sources` plus
    /// the dead letters re-queued for this sink alone (whatever their source).
    pub async fn read_sink_batch(
        &self,
        sink: &str,
        after_seq: i64,
        sources: &[String],
        limit: usize,
    ) -> Result<Vec<OutboxRecord>, StoreError> {
        // Two ordered index scans merged (UNION ALL), never an OR: SQLite would collect every
        // matching row after the position and sort them for each batch.
        let mut q = QueryBuilder::<Sqlite>::new("");
        push_sink_rows(
            &mut q,
            "seq, source, stream, tenant, event_id, event_time, ingest_time, severity, record",
            sink,
            after_seq,
            sources,
        );
        q.push(" ORDER BY seq LIMIT ").push_bind(limit as i64);
        let rows = q
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(query_err("reading an outbox batch"))?;
        Ok(rows.iter().map(outbox_record).collect())
    }

    /// Records waiting for `sink` after `after_seq`: the rows of `sources` plus the dead letters
    /// re-queued for it.
    pub async fn sink_backlog(
        &self,
        sink: &str,
        after_seq: i64,
        sources: &[String],
    ) -> Result<i64, StoreError> {
        let mut q = QueryBuilder::<Sqlite>::new("SELECT COUNT(*) FROM (");
        push_sink_rows(&mut q, "seq", sink, after_seq, sources);
        q.push(")");
        let row = q
            .build()
            .fetch_one(&self.pool)
            .await
            .map_err(query_err("counting a sink backlog"))?;
        Ok(row.get(0))
    }

    /// Deletes the dead letters re-queued for `sink` that it has passed. Returns rows deleted.
    pub async fn prune_requeued(&self, sink: &str) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM outbox WHERE target_sink = ?1
               AND seq <= COALESCE((SELECT delivered_seq FROM sink_offsets WHERE sink = ?1), 0)",
        )
        .bind(sink)
        .execute(&self.pool)
        .await
        .map_err(query_err("pruning re-queued dead letters"))?;
        Ok(done.rows_affected())
    }

    /// The dead letters of `sink` (every sink when `None`), oldest first.
    pub async fn dead_letters(&self, sink: Option<&str>) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, sink, seq, source, stream, tenant, event_id, event_time, reason, at, record
             FROM dead_letters WHERE ?1 IS NULL OR sink = ?1 ORDER BY id",
        )
        .bind(sink)
        .fetch_all(&self.pool)
        .await
        .map_err(query_err("reading dead letters"))?;
        Ok(rows
            .iter()
            .map(|r| DeadLetter {
                id: r.get(0),
                sink: r.get(1),
                seq: r.get(2),
                source: r.get(3),
                stream: r.get(4),
                tenant: r.get(5),
                event_id: r.get(6),
                event_time: from_millis(r.get(7)),
                reason: r.get(8),
                at: from_millis(r.get(9)),
                record: r.get(10),
            })
            .collect())
    }

    /// Moves every dead letter of `sink` back into the outbox, at its end, for that sink alone; in
    /// one transaction, so a record is either a dead letter or waiting, never both or neither.
    /// Returns how many were re-queued. Safe beside a running writer (the rows get new positions
    /// after everything already in the log).
    pub async fn requeue_dead_letters(&self, sink: &str) -> Result<u64, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_err("starting a re-queue"))?;
        // Severity and ingest time were not kept before the migration that re-queues: take them
        // from the outbox row if it is still there.
        let moved = sqlx::query(
            "INSERT INTO outbox (source, stream, tenant, event_id, event_time, ingest_time, severity,
                                 record, bytes, target_sink)
             SELECT d.source, d.stream, d.tenant, d.event_id, d.event_time,
                    COALESCE(d.ingest_time, o.ingest_time, d.at), COALESCE(d.severity, o.severity, 0),
                    d.record, length(CAST(d.record AS BLOB)), d.sink
             FROM dead_letters d LEFT JOIN outbox o ON o.seq = d.seq
             WHERE d.sink = ?1 ORDER BY d.id",
        )
        .bind(sink)
        .execute(&mut *tx)
        .await
        .map_err(query_err("re-queueing dead letters"))?
        .rows_affected();
        sqlx::query("DELETE FROM dead_letters WHERE sink = ?")
            .bind(sink)
            .execute(&mut *tx)
            .await
            .map_err(query_err("re-queueing dead letters"))?;
        tx.commit()
            .await
            .map_err(query_err("committing a re-queue"))?;
        Ok(moved)
    }
}

/// Appends a SELECT of `columns` from the outbox rows `sink` reads after `after_seq`: those of its
/// `sources` meant for every sink, then (UNION ALL) those re-queued for it alone.
fn push_sink_rows<'a>(
    q: &mut QueryBuilder<'a, Sqlite>,
    columns: &str,
    sink: &'a str,
    after_seq: i64,
    sources: &'a [String],
) {
    if !sources.is_empty() {
        q.push(format!("SELECT {columns} FROM outbox WHERE seq > "))
            .push_bind(after_seq)
            .push(" AND source IN (");
        let mut list = q.separated(", ");
        for s in sources {
            list.push_bind(s);
        }
        q.push(") AND target_sink IS NULL UNION ALL ");
    }
    q.push(format!("SELECT {columns} FROM outbox WHERE seq > "))
        .push_bind(after_seq)
        .push(" AND target_sink = ")
        .push_bind(sink);
}

/// Makes sure the file uses incremental auto-vacuum. A new file already does (the connection sets
/// it before the first table); a file made before that needs one VACUUM, which rewrites it whole:
/// logged, since it takes time and up to twice the file's size on disk once.
async fn use_incremental_vacuum(pool: &SqlitePool, path: &Path) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
        .fetch_one(&mut *conn)
        .await?;
    if mode == 2 {
        return Ok(());
    }
    let before = std::fs::metadata(path).map_or(0, |m| m.len());
    tracing::info!(path = %path.display(), bytes = before,
        "state database: switching to incremental auto-vacuum (one VACUUM rewrites the file)");
    let started = std::time::Instant::now();
    sqlx::query("PRAGMA auto_vacuum = INCREMENTAL")
        .execute(&mut *conn)
        .await?;
    sqlx::query("VACUUM").execute(&mut *conn).await?;
    let after = std::fs::metadata(path).map_or(0, |m| m.len());
    tracing::info!(path = %path.display(), bytes = after, took_ms = started.elapsed().as_millis() as u64,
        "state database: incremental auto-vacuum on");
    Ok(())
}

/// Takes the exclusive lock. A reader gives up at once when it is held (a writer has migrated
/// already); a writer waits a little, since readers hold it only while migrating.
async fn lock_or_wait(lock: &std::fs::File, access: Access) -> std::io::Result<bool> {
    let patience = match access {
        Access::Writer => WRITER_LOCK_PATIENCE,
        Access::Reader => Duration::ZERO,
    };
    let until = std::time::Instant::now() + patience;
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(true),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => return Ok(false),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

/// Connects, retrying while the file is busy: a reader may arrive while the lock holder is
/// still switching a new database to WAL.
async fn connect(options: SqliteConnectOptions) -> Result<SqlitePool, String> {
    let until = std::time::Instant::now() + SCHEMA_PATIENCE;
    loop {
        let attempt = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone())
            .await;
        match attempt {
            Ok(pool) => return Ok(pool),
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("5") && std::time::Instant::now() < until =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Waits until every built-in migration is recorded as applied.
async fn wait_for_schema(pool: &SqlitePool) -> Result<(), String> {
    let wanted = MIGRATOR.iter().count() as i64;
    let until = std::time::Instant::now() + SCHEMA_PATIENCE;
    loop {
        // Before the first migration the table does not exist: count that as none applied.
        let applied: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success = 1")
                .fetch_one(pool)
                .await
                .unwrap_or(0);
        if applied >= wanted {
            return Ok(());
        }
        if std::time::Instant::now() >= until {
            return Err(format!(
                "schema has {applied} of {wanted} migrations and the process holding the lock did not finish them"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn open_lock_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Creates `path` with mode 0600 if it does not exist, so the database never starts world-readable.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Severity};
    use serde_json::value::RawValue;

    fn event(id: &str, secs: i64) -> Event {
        let raw = RawValue::from_string(format!(r#"{{"id":"{id}"}}"#)).unwrap();
        Event::new(
            id.into(),
            Utc.timestamp_opt(secs, 0).unwrap(),
            Severity::new(3),
            &raw,
        )
    }

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db"), Access::Writer)
            .await
            .unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn a_second_writer_is_refused_but_readers_are_not() {
        let (dir, _writer) = store().await;
        let path = dir.path().join("state.db");
        let err = Store::open(&path, Access::Writer)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("another secrelay"), "{err}");
        let reader = Store::open(&path, Access::Reader).await.unwrap();
        assert_eq!(reader.outbox_totals().await.unwrap().rows, 0);
    }

    #[tokio::test]
    async fn a_reader_waits_for_the_lock_holder_to_finish_migrating() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        create_private_file(&path).unwrap();
        let lock = open_lock_file(&dir.path().join("state.db.lock")).unwrap();
        lock.lock().unwrap();
        let reader = tokio::spawn({
            let path = path.clone();
            async move { Store::open(&path, Access::Reader).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !reader.is_finished(),
            "the reader must not query a schema that is not there yet"
        );
        let pool = SqlitePool::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        MIGRATOR.run(&pool).await.unwrap();
        let store = reader.await.unwrap().unwrap();
        assert_eq!(store.outbox_totals().await.unwrap().rows, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_and_readers_opening_a_new_database_at_once_all_succeed() {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state.db");
            let mut opens = Vec::new();
            for access in [
                Access::Reader,
                Access::Writer,
                Access::Reader,
                Access::Reader,
            ] {
                let path = path.clone();
                opens.push(tokio::spawn(
                    async move { Store::open(&path, access).await },
                ));
            }
            for open in opens {
                let store = open.await.unwrap().unwrap();
                assert_eq!(store.outbox_totals().await.unwrap().rows, 0);
            }
        }
    }

    #[tokio::test]
    async fn a_sink_keeps_its_channel_and_pending_acks_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let store = Store::open(&path, Access::Writer).await.unwrap();
            assert_eq!(store.sink_channel("hec", "chan-1").await.unwrap(), "chan-1");
            assert_eq!(
                store.sink_channel("hec", "chan-2").await.unwrap(),
                "chan-1",
                "created once"
            );
            store
                .save_pending_acks(
                    "hec",
                    "chan-1",
                    &[4, 5],
                    99,
                    &[(97, "code 6".to_string())],
                    Utc::now(),
                )
                .await
                .unwrap();
            store.close().await;
        }
        let store = Store::open(&path, Access::Writer).await.unwrap();
        let pending = store.pending_acks("hec").await.unwrap();
        assert_eq!(
            pending,
            vec![("chan-1".to_string(), 4, 99), ("chan-1".to_string(), 5, 99)]
        );
        assert_eq!(
            store.pending_rejects("hec").await.unwrap(),
            vec![(97, "code 6".to_string())]
        );
        store.clear_pending_acks("hec").await.unwrap();
        assert!(store.pending_acks("hec").await.unwrap().is_empty());
        assert!(store.pending_rejects("hec").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_older_file_is_switched_to_incremental_vacuum_by_a_writer_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            // A database made the way earlier versions made it: auto_vacuum NONE, tables in it.
            let options = SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal);
            let pool = SqlitePool::connect_with(options).await.unwrap();
            MIGRATOR.run(&pool).await.unwrap();
            let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
                .fetch_one(&pool)
                .await
                .unwrap();
            assert_eq!(mode, 0);
            pool.close().await;
        }
        let reader = Store::open(&path, Access::Reader).await.unwrap();
        assert_eq!(reader.growth().await.unwrap().database.auto_vacuum, "none");
        reader.close().await;
        drop(reader);
        let writer = Store::open(&path, Access::Writer).await.unwrap();
        let page = Page {
            events: (0..3000).map(|i| event(&format!("{i:0>500}"), i)).collect(),
            ..Page::default()
        };
        writer
            .commit_page("s", &Partition::new("e", ""), &page, Utc::now())
            .await
            .unwrap();
        let growth = writer.growth().await.unwrap();
        assert_eq!(growth.database.auto_vacuum, "incremental");
        assert_eq!(growth.seen_ids, 3000);
        // Pruned rows leave free pages; the reclaim gives them back down to the 4 MiB kept.
        writer
            .advance_sink("k", i64::MAX, 3000, &[], Utc::now())
            .await
            .unwrap();
        writer.prune_outbox("s", &["k".into()]).await.unwrap();
        writer
            .prune_seen("s", Utc::now() + chrono::Duration::days(1))
            .await
            .unwrap();
        let free = writer.growth().await.unwrap().database.free_bytes;
        assert!(free > 1 << 20, "{free} bytes free after pruning");
        assert!(writer.reclaim_free_pages().await.unwrap() > 0);
        let free = writer.growth().await.unwrap().database.free_bytes;
        assert!(
            free <= RECLAIM_ABOVE_BYTES as u64,
            "{free} bytes still free"
        );
        // At the threshold nothing is worth giving back; the pages stay for the next commits.
        assert_eq!(writer.reclaim_free_pages().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_new_file_uses_incremental_vacuum_and_gives_big_free_space_back() {
        let (_dir, store) = store().await;
        let big = "y".repeat(4000);
        let page = Page {
            events: (0..3000)
                .map(|i| {
                    let raw =
                        RawValue::from_string(format!(r#"{{"id":"{i}","p":"{big}"}}"#)).unwrap();
                    Event::new(i.to_string(), Utc::now(), Severity::new(1), &raw)
                })
                .collect(),
            ..Page::default()
        };
        store
            .commit_page("s", &Partition::new("e", ""), &page, Utc::now())
            .await
            .unwrap();
        assert_eq!(
            store.growth().await.unwrap().database.auto_vacuum,
            "incremental"
        );
        store
            .advance_sink("k", i64::MAX, 3000, &[], Utc::now())
            .await
            .unwrap();
        store.prune_outbox("s", &["k".into()]).await.unwrap();
        let before = store.growth().await.unwrap().database.free_bytes;
        assert!(before > 8 << 20, "{before} bytes free after pruning");
        let given = store.reclaim_free_pages().await.unwrap();
        let after = store.growth().await.unwrap().database.free_bytes;
        assert!(
            after <= RECLAIM_ABOVE_BYTES as u64,
            "{after} bytes still free"
        );
        assert_eq!(given, before - after);
    }

    #[tokio::test]
    async fn a_requeued_dead_letter_is_read_counted_and_pruned_for_its_sink_only() {
        let (_dir, store) = store().await;
        let page = Page {
            events: vec![event("a", 1), event("b", 2)],
            ..Page::default()
        };
        store
            .commit_page("s", &Partition::new("e", ""), &page, Utc::now())
            .await
            .unwrap();
        let batch = store.read_batch(0, &["s".into()], 10).await.unwrap();
        let sinks = ["one".to_string(), "two".to_string()];
        store
            .advance_sink("one", 2, 1, &[(batch[0].clone(), "bad".into())], Utc::now())
            .await
            .unwrap();
        store
            .advance_sink("two", 2, 2, &[], Utc::now())
            .await
            .unwrap();
        assert_eq!(store.prune_outbox("s", &sinks).await.unwrap(), 2);
        assert_eq!(store.requeue_dead_letters("two").await.unwrap(), 0);
        assert_eq!(store.requeue_dead_letters("one").await.unwrap(), 1);
        assert!(store.dead_letters(Some("one")).await.unwrap().is_empty());

        let s = ["s".to_string()];
        let for_one = store.read_sink_batch("one", 2, &s, 10).await.unwrap();
        assert_eq!(for_one.len(), 1);
        assert_eq!((for_one[0].seq, for_one[0].event_id.as_str()), (3, "a"));
        assert_eq!(for_one[0].severity, 3, "kept from the dead letter");
        // Even when the sink no longer reads that source, it gets what was re-queued for it.
        assert_eq!(
            store
                .read_sink_batch("one", 2, &[], 10)
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(store
            .read_sink_batch("two", 2, &s, 10)
            .await
            .unwrap()
            .is_empty());
        assert!(store.read_batch(2, &s, 10).await.unwrap().is_empty());
        assert_eq!(store.sink_backlog("one", 2, &s).await.unwrap(), 1);
        assert_eq!(store.sink_backlog("two", 2, &s).await.unwrap(), 0);
        assert_eq!(store.backlog(2, &s).await.unwrap(), 0);
        assert_eq!(store.growth().await.unwrap().requeued, 1);

        // Sink two passing it (it has nothing to read) prunes nothing; sink one passing it does.
        store
            .advance_sink("two", 3, 0, &[], Utc::now())
            .await
            .unwrap();
        assert_eq!(store.prune_outbox("s", &sinks[1..]).await.unwrap(), 0);
        assert_eq!(store.prune_requeued("two").await.unwrap(), 0);
        assert_eq!(store.prune_requeued("one").await.unwrap(), 0);
        store
            .advance_sink("one", 3, 1, &[], Utc::now())
            .await
            .unwrap();
        assert_eq!(store.prune_requeued("one").await.unwrap(), 1);
        assert_eq!(
            store.outbox_totals().await.unwrap(),
            OutboxTotals::default()
        );
    }

    #[tokio::test]
    async fn a_path_with_url_characters_is_a_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state?mode=ro#1.db");
        let store = Store::open(&path, Access::Writer).await.unwrap();
        let page = Page {
            events: vec![event("a", 1)],
            ..Page::default()
        };
        store
            .commit_page("s", &Partition::new("e", ""), &page, Utc::now())
            .await
            .unwrap();
        store.close().await;
        assert!(
            std::fs::metadata(&path).unwrap().len() > 0,
            "written where it was told"
        );
        let reopened = Store::open(&path, Access::Reader).await.unwrap();
        assert_eq!(reopened.outbox_totals().await.unwrap().rows, 1);
    }

    #[tokio::test]
    async fn database_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, _store) = store().await;
        let mode = std::fs::metadata(dir.path().join("state.db"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn commit_drops_seen_ids_and_moves_cursor_together() {
        let (_dir, store) = store().await;
        let p = Partition::new("events", "t1");
        let page = Page {
            events: vec![event("a", 1), event("b", 2), event("a", 1)],
            cursor: Some("c1".into()),
            ..Page::default()
        };
        let s = store
            .commit_page("src", &p, &page, Utc::now())
            .await
            .unwrap();
        assert_eq!(
            s,
            CommitSummary {
                appended: 2,
                duplicates: 1,
                rejected: 0
            }
        );
        let page2 = Page {
            events: vec![event("b", 2), event("c", 3)],
            cursor: Some("c2".into()),
            ..Page::default()
        };
        let s = store
            .commit_page("src", &p, &page2, Utc::now())
            .await
            .unwrap();
        assert_eq!(
            s,
            CommitSummary {
                appended: 1,
                duplicates: 1,
                rejected: 0
            }
        );
        assert_eq!(
            store.cursor("src", &p).await.unwrap().as_deref(),
            Some("c2")
        );
        let batch = store.read_batch(0, &["src".into()], 10).await.unwrap();
        let ids: Vec<_> = batch.iter().map(|r| r.event_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(store.outbox_totals().await.unwrap().rows, 3);
    }

    #[tokio::test]
    async fn rejected_records_are_kept_once_with_the_page_and_counted() {
        let (_dir, store) = store().await;
        let p = Partition::new("events", "t1");
        let bad = crate::event::Rejected::new("http://v/x", "item 1 has no id", r#"{"a":1}"#);
        let page = Page {
            events: vec![event("a", 1)],
            cursor: Some("c1".into()),
            rejected: vec![bad.clone()],
            ..Page::default()
        };
        let s = store
            .commit_page("src", &p, &page, Utc::now())
            .await
            .unwrap();
        assert_eq!(s.rejected, 1);
        // The same record on a page fetched again (an overlap) is not kept or counted twice.
        let again = Page {
            cursor: Some("c2".into()),
            rejected: vec![bad],
            ..Page::default()
        };
        let s = store
            .commit_page("src", &p, &again, Utc::now())
            .await
            .unwrap();
        assert_eq!(s.rejected, 0);
        let kept = store.rejected_records("src").await.unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(
            (
                kept[0].stream.as_str(),
                kept[0].tenant.as_str(),
                kept[0].url.as_str()
            ),
            ("events", "t1", "http://v/x")
        );
        assert_eq!(kept[0].reason, "item 1 has no id");
        assert_eq!(kept[0].record, r#"{"a":1}"#);
        let states = store.cursor_states().await.unwrap();
        assert_eq!(states[0].rejected_total, 1);
        assert_eq!(states[0].cursor.as_deref(), Some("c2"));
        assert_eq!(store.outbox_totals().await.unwrap().rows, 1);
    }

    #[tokio::test]
    async fn an_id_served_again_is_not_pruned_with_ids_of_its_age() {
        let (_dir, store) = store().await;
        let p = Partition::new("views", "");
        let day0 = Utc::now() - chrono::Duration::days(8);
        let first = Page {
            events: vec![event("kept", 1), event("gone", 2)],
            ..Page::default()
        };
        store.commit_page("s", &p, &first, day0).await.unwrap();
        // A week later the vendor serves `kept` again (an unchanged view): a repeat, not new.
        let repeat = Page {
            events: vec![event("kept", 1)],
            ..Page::default()
        };
        let s = store
            .commit_page("s", &p, &repeat, Utc::now())
            .await
            .unwrap();
        assert_eq!((s.appended, s.duplicates), (0, 1));
        let pruned = store
            .prune_seen("s", Utc::now() - chrono::Duration::days(7))
            .await
            .unwrap();
        assert_eq!(pruned, 1, "only the id not served since is forgotten");
        let s = store
            .commit_page("s", &p, &repeat, Utc::now())
            .await
            .unwrap();
        assert_eq!(
            (s.appended, s.duplicates),
            (0, 1),
            "still known: not re-sent"
        );
    }

    #[tokio::test]
    async fn page_without_cursor_keeps_the_stored_one() {
        let (_dir, store) = store().await;
        let p = Partition::new("events", "");
        let with = Page {
            cursor: Some("keep".into()),
            ..Page::default()
        };
        store.commit_page("s", &p, &with, Utc::now()).await.unwrap();
        store
            .commit_page("s", &p, &Page::default(), Utc::now())
            .await
            .unwrap();
        assert_eq!(
            store.cursor("s", &p).await.unwrap().as_deref(),
            Some("keep")
        );
    }

    #[tokio::test]
    async fn outbox_is_pruned_only_past_every_routed_sink() {
        let (_dir, store) = store().await;
        let p = Partition::new("events", "");
        let page = Page {
            events: (0..5).map(|i| event(&i.to_string(), i)).collect(),
            ..Page::default()
        };
        store.commit_page("s", &p, &page, Utc::now()).await.unwrap();
        let sinks = vec!["one".to_string(), "two".to_string()];
        store
            .advance_sink("one", 4, 4, &[], Utc::now())
            .await
            .unwrap();
        assert_eq!(
            store.prune_outbox("s", &sinks).await.unwrap(),
            0,
            "sink two has delivered nothing"
        );
        store
            .advance_sink("two", 2, 2, &[], Utc::now())
            .await
            .unwrap();
        assert_eq!(store.prune_outbox("s", &sinks).await.unwrap(), 2);
        assert_eq!(store.outbox_totals().await.unwrap().rows, 3);
        // Positions never move backwards.
        store
            .advance_sink("one", 1, 0, &[], Utc::now())
            .await
            .unwrap();
        assert_eq!(store.sink_position("one").await.unwrap(), 4);
    }

    #[tokio::test]
    async fn sequence_numbers_are_not_reused_after_the_outbox_empties() {
        let (_dir, store) = store().await;
        let p = Partition::new("events", "");
        let one = Page {
            events: vec![event("x", 1)],
            ..Page::default()
        };
        store.commit_page("s", &p, &one, Utc::now()).await.unwrap();
        store
            .advance_sink("k", 1, 1, &[], Utc::now())
            .await
            .unwrap();
        store.prune_outbox("s", &["k".into()]).await.unwrap();
        let two = Page {
            events: vec![event("y", 2)],
            ..Page::default()
        };
        store.commit_page("s", &p, &two, Utc::now()).await.unwrap();
        let batch = store.read_batch(1, &["s".into()], 10).await.unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].seq, 2);
    }

    #[tokio::test]
    async fn reset_with_window_forgets_only_recent_seen_ids() {
        let (_dir, store) = store().await;
        let p = Partition::new("events", "");
        let now = Utc::now();
        let old = event("old", (now - chrono::Duration::days(3)).timestamp());
        let new = event("new", (now - chrono::Duration::hours(1)).timestamp());
        let page = Page {
            events: vec![old.clone(), new.clone()],
            cursor: Some("c".into()),
            ..Page::default()
        };
        store.commit_page("s", &p, &page, now).await.unwrap();
        let r = store
            .reset("s", Some(now - chrono::Duration::days(1)))
            .await
            .unwrap();
        assert_eq!(
            r,
            ResetSummary {
                cursors: 1,
                seen: 1
            }
        );
        assert_eq!(store.cursor("s", &p).await.unwrap(), None);
        let again = Page {
            events: vec![old, new],
            ..Page::default()
        };
        let s = store.commit_page("s", &p, &again, now).await.unwrap();
        assert_eq!(
            s,
            CommitSummary {
                appended: 1,
                duplicates: 1,
                rejected: 0
            }
        );
    }

    #[tokio::test]
    async fn dead_letters_are_recorded_with_the_advance() {
        let (_dir, store) = store().await;
        let p = Partition::new("events", "");
        let page = Page {
            events: vec![event("bad", 1), event("good", 2)],
            ..Page::default()
        };
        store.commit_page("s", &p, &page, Utc::now()).await.unwrap();
        let batch = store.read_batch(0, &["s".into()], 10).await.unwrap();
        store
            .advance_sink(
                "k",
                2,
                1,
                &[(batch[0].clone(), "invalid".into())],
                Utc::now(),
            )
            .await
            .unwrap();
        let states = store.sink_states().await.unwrap();
        assert_eq!(states[0].dead_letters, 1);
        assert_eq!(states[0].delivered_seq, 2);
        assert_eq!(states[0].delivered_total, 1);
    }
}
