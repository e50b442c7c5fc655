//! The outbox log as sinks read it: batches after a position, backlogs, totals, and pruning what
//! every routed sink has passed (and dead letters re-queued for one sink, once it passed them).
//!
//! Must not: move a sink's position (see `positions.rs`). Invariant: positions are never reused, and
//! a row is deleted only once every sink routed to it has passed it.

use serde::Serialize;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{query_err, time_of, Store, StoreError};
use crate::event::OutboxRecord;

/// Outbox size, kept by triggers.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct OutboxTotals {
    /// Rows waiting for at least one sink.
    pub rows: i64,
    /// Bytes of those rows' records.
    pub bytes: i64,
}

/// The columns [`outbox_record`] reads.
const OUTBOX_RECORD_COLUMNS: &str =
    "seq, source, stream, tenant, event_id, event_time, ingest_time, severity, record";

impl Store {
    /// Rows and bytes waiting in the outbox.
    pub async fn outbox_totals(&self) -> Result<OutboxTotals, StoreError> {
        sqlx::query("SELECT rows, bytes FROM outbox_totals WHERE id = 1")
            .try_map(outbox_totals)
            .fetch_one(&self.pool)
            .await
            .map_err(query_err("reading outbox totals"))
    }

    /// Up to `limit` records after `after_seq` that come from one of `sources`, in log order.
    /// Leaves out dead letters re-queued for one sink (see [`Store::read_sink_batch`]).
    pub async fn read_batch(
        &self,
        after_seq: i64,
        sources: &[String],
        limit: usize,
    ) -> Result<Vec<OutboxRecord>, StoreError> {
        self.records_after(None, after_seq, sources, limit).await
    }

    /// Records in the outbox after `after_seq` from one of `sources`, leaving out dead letters
    /// re-queued for one sink (a sink's backlog with them: [`Store::sink_backlog`]).
    pub async fn backlog(&self, after_seq: i64, sources: &[String]) -> Result<i64, StoreError> {
        self.count_after(None, after_seq, sources).await
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
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT COUNT(*) AS rows, COALESCE(SUM(bytes), 0) AS bytes FROM (",
        );
        push_rows(&mut q, "seq, bytes", Some(sink), after_seq, sources);
        q.push(")");
        q.build()
            .try_map(outbox_totals)
            .fetch_one(&self.pool)
            .await
            .map_err(query_err("measuring a sink backlog"))
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
        self.records_after(Some(sink), after_seq, sources, limit)
            .await
    }

    /// Records waiting for `sink` after `after_seq`: the rows of `sources` plus the dead letters
    /// re-queued for it.
    pub async fn sink_backlog(
        &self,
        sink: &str,
        after_seq: i64,
        sources: &[String],
    ) -> Result<i64, StoreError> {
        self.count_after(Some(sink), after_seq, sources).await
    }

    /// Up to `limit` records after `after_seq`, in log order: those of `sources` meant for every
    /// sink, and those re-queued for `requeued_for` when it names a sink.
    async fn records_after(
        &self,
        requeued_for: Option<&str>,
        after_seq: i64,
        sources: &[String],
        limit: usize,
    ) -> Result<Vec<OutboxRecord>, StoreError> {
        if requeued_for.is_none() && sources.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::<Sqlite>::new("");
        push_rows(
            &mut q,
            OUTBOX_RECORD_COLUMNS,
            requeued_for,
            after_seq,
            sources,
        );
        q.push(" ORDER BY seq LIMIT ").push_bind(limit as i64);
        q.build()
            .try_map(outbox_record)
            .fetch_all(&self.pool)
            .await
            .map_err(query_err("reading an outbox batch"))
    }

    /// How many records [`Store::records_after`] would read with no limit.
    async fn count_after(
        &self,
        requeued_for: Option<&str>,
        after_seq: i64,
        sources: &[String],
    ) -> Result<i64, StoreError> {
        if requeued_for.is_none() && sources.is_empty() {
            return Ok(0);
        }
        let mut q = QueryBuilder::<Sqlite>::new("SELECT COUNT(*) FROM (");
        push_rows(&mut q, "seq", requeued_for, after_seq, sources);
        q.push(")");
        q.build_query_scalar()
            .fetch_one(&self.pool)
            .await
            .map_err(query_err("counting a sink backlog"))
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
}

/// Appends a SELECT of `columns` from the outbox rows after `after_seq` that a reader takes: those
/// of its `sources` meant for every sink, then (UNION ALL) those re-queued for `requeued_for` alone
/// when it names a sink. `sources` may be empty only when `requeued_for` names a sink.
///
/// Two ordered index scans merged (UNION ALL), never an OR: SQLite would collect every matching
/// row after the position and sort them for each batch.
fn push_rows<'a>(
    q: &mut QueryBuilder<'a, Sqlite>,
    columns: &str,
    requeued_for: Option<&'a str>,
    after_seq: i64,
    sources: &'a [String],
) {
    if !sources.is_empty() {
        push_shared_rows(q, columns, after_seq, sources);
        if requeued_for.is_some() {
            q.push(" UNION ALL ");
        }
    }
    if let Some(sink) = requeued_for {
        q.push(format!("SELECT {columns} FROM outbox WHERE seq > "))
            .push_bind(after_seq)
            .push(" AND target_sink = ")
            .push_bind(sink);
    }
}

/// Appends a SELECT of `columns` from the outbox rows after `after_seq` of one of `sources` that
/// are meant for every sink (not re-queued for one). `sources` must not be empty.
fn push_shared_rows<'a>(
    q: &mut QueryBuilder<'a, Sqlite>,
    columns: &str,
    after_seq: i64,
    sources: &'a [String],
) {
    q.push(format!("SELECT {columns} FROM outbox WHERE seq > "))
        .push_bind(after_seq)
        .push(" AND source IN (");
    let mut list = q.separated(", ");
    for s in sources {
        list.push_bind(s);
    }
    q.push(") AND target_sink IS NULL");
}

/// An `outbox` row (the columns of [`OUTBOX_RECORD_COLUMNS`]).
fn outbox_record(r: SqliteRow) -> Result<OutboxRecord, sqlx::Error> {
    Ok(OutboxRecord {
        seq: r.try_get("seq")?,
        source: r.try_get("source")?,
        stream: r.try_get("stream")?,
        tenant: r.try_get("tenant")?,
        event_id: r.try_get("event_id")?,
        event_time: time_of(&r, "event_time")?,
        ingest_time: time_of(&r, "ingest_time")?,
        severity: r.try_get::<i64, _>("severity")?.clamp(0, 10) as u8,
        record: r.try_get("record")?,
    })
}

/// Totals selected as `rows` and `bytes` (the `outbox_totals` row, or a backlog's sums).
fn outbox_totals(r: SqliteRow) -> Result<OutboxTotals, sqlx::Error> {
    Ok(OutboxTotals {
        rows: r.try_get("rows")?,
        bytes: r.try_get("bytes")?,
    })
}
