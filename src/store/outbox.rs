//! The outbox log as sinks read it: appending records in compressed chunks, batches after a
//! position, backlogs, totals, and pruning what every routed sink has passed (and dead letters
//! re-queued for one sink, once it passed them).
//!
//! Must not: move a sink's position (see `positions.rs`). Invariant: positions are never reused
//! (`outbox_head` hands them out), a chunk holds consecutive positions of one partition, and a
//! chunk is deleted only once every sink routed to it has passed all of its records.

use serde::Serialize;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::chunk::{self, ChunkEntry};
use super::{commit_tx, from_millis, query_err, Store, StoreError};
use crate::event::OutboxRecord;
use crate::shared_text::SharedText;

/// Outbox size.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct OutboxTotals {
    /// Rows waiting for at least one sink.
    pub rows: i64,
    /// Bytes of those rows' records (uncompressed JSON text).
    pub bytes: i64,
}

/// Chunks read per query while filling a batch.
const CHUNKS_PER_READ: i64 = 4;

/// Where appended records go: one partition, committed at one time.
pub(super) struct Destination<'a> {
    /// Configured source id.
    pub source: &'a str,
    /// Stream within the source.
    pub stream: &'a str,
    /// Vendor tenant, `""` when none.
    pub tenant: &'a str,
    /// Commit time, ms.
    pub ingest_ms: i64,
    /// A re-queued dead letter: the one sink that reads it.
    pub target_sink: Option<&'a str>,
}

/// Appends `entries` in order at the end of the log, in chunks of at most [`chunk::MAX_RECORDS`]
/// records or [`chunk::MAX_BYTES`] of text, and counts them in `outbox_totals`. Part of the
/// caller's transaction. Returns the records appended.
pub(super) async fn append(
    conn: &mut SqliteConnection,
    to: &Destination<'_>,
    entries: &[ChunkEntry<&str>],
) -> Result<u64, StoreError> {
    let chunks = encode_chunks(entries).await;
    append_encoded(conn, to, &chunks).await
}

/// Appends chunks made by [`encode_chunks`] at the end of the log and counts their records in
/// `outbox_totals`. Part of the caller's transaction. Returns the records appended.
pub(super) async fn append_encoded(
    conn: &mut SqliteConnection,
    to: &Destination<'_>,
    chunks: &[EncodedChunk],
) -> Result<u64, StoreError> {
    let n: usize = chunks.iter().map(|c| c.records).sum();
    if n == 0 {
        return Ok(0);
    }
    let first_seq: i64 = sqlx::query_scalar(
        "UPDATE outbox_head SET next_seq = next_seq + ?1 WHERE id = 1 RETURNING next_seq - ?1",
    )
    .bind(n as i64)
    .fetch_one(&mut *conn)
    .await
    .map_err(query_err("allocating outbox positions"))?;
    place_encoded(conn, to, first_seq, chunks).await
}

/// Writes `entries` at positions `first_seq`, `first_seq + 1`, … (already handed out), in chunks,
/// and counts them in `outbox_totals`. Part of the caller's transaction. Returns the records
/// written.
pub(super) async fn place(
    conn: &mut SqliteConnection,
    to: &Destination<'_>,
    first_seq: i64,
    entries: &[ChunkEntry<&str>],
) -> Result<u64, StoreError> {
    let chunks = encode_chunks(entries).await;
    place_encoded(conn, to, first_seq, &chunks).await
}

/// A chunk's body, compressed and ready to be written (see [`encode_chunks`]).
pub(super) struct EncodedChunk {
    /// Records in it.
    records: usize,
    /// Their text's bytes, uncompressed.
    bytes: usize,
    /// The body ([`chunk::encode`]).
    body: Vec<u8>,
}

/// Cuts `entries` into chunks of at most [`chunk::MAX_RECORDS`] records or [`chunk::MAX_BYTES`]
/// of text and compresses each. Touches no database, so a page's chunks can be made before its
/// transaction starts.
pub(super) async fn encode_chunks(entries: &[ChunkEntry<&str>]) -> Vec<EncodedChunk> {
    let mut chunks = Vec::new();
    let mut rest = entries;
    while !rest.is_empty() {
        let mut take = 0;
        let mut bytes = 0usize;
        while take < rest.len() && take < chunk::MAX_RECORDS && bytes < chunk::MAX_BYTES {
            bytes += rest[take].record.len();
            take += 1;
        }
        let (these, after) = rest.split_at(take);
        rest = after;
        chunks.push(EncodedChunk {
            records: take,
            bytes,
            body: chunk::encode(these),
        });
        // Compressing a chunk takes a few milliseconds: let other tasks of this worker run.
        tokio::task::yield_now().await;
    }
    chunks
}

/// The records of `chunks` (made by [`encode_chunks`]) read back, in order: a prepared page whose
/// events to append are not those its lookup found new is put together again from them, and its
/// ids are read from them for the older seen table.
pub(super) fn decode_encoded(
    chunks: &[EncodedChunk],
) -> Result<Vec<ChunkEntry<SharedText>>, StoreError> {
    let mut all = Vec::with_capacity(chunks.iter().map(|c| c.records).sum());
    for c in chunks {
        let entries = chunk::decode(&c.body, c.records, 0, c.records)
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))
            .map_err(query_err("reading back a page's compressed records"))?;
        all.extend(entries);
    }
    Ok(all)
}

/// Writes `chunks` at positions from `first_seq` on (already handed out) and counts their records
/// in `outbox_totals`. Part of the caller's transaction. Returns the records written.
async fn place_encoded(
    conn: &mut SqliteConnection,
    to: &Destination<'_>,
    first_seq: i64,
    chunks: &[EncodedChunk],
) -> Result<u64, StoreError> {
    let mut next = first_seq;
    let mut total_bytes = 0i64;
    for c in chunks {
        sqlx::query(
            "INSERT INTO outbox_chunks (first_seq, last_seq, source, stream, tenant, ingest_time,
                                        target_sink, records, bytes, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .bind(next)
        .bind(next + c.records as i64 - 1)
        .bind(to.source)
        .bind(to.stream)
        .bind(to.tenant)
        .bind(to.ingest_ms)
        .bind(to.target_sink)
        .bind(c.records as i64)
        .bind(c.bytes as i64)
        .bind(c.body.as_slice())
        .execute(&mut *conn)
        .await
        .map_err(query_err("appending to the outbox"))?;
        next += c.records as i64;
        total_bytes += c.bytes as i64;
    }
    let n = next - first_seq;
    add_to_totals(conn, n, total_bytes).await?;
    Ok(n as u64)
}

/// Adds to (or, negative, takes from) the outbox totals.
async fn add_to_totals(
    conn: &mut SqliteConnection,
    rows: i64,
    bytes: i64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE outbox_totals SET rows = rows + ?1, bytes = bytes + ?2 WHERE id = 1")
        .bind(rows)
        .bind(bytes)
        .execute(&mut *conn)
        .await
        .map_err(query_err("counting outbox totals"))?;
    Ok(())
}

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
    /// Reads every waiting chunk's header, so callers cache it rather than ask on every poll. The
    /// bytes of a chunk the sink is part-way through are counted in proportion.
    pub async fn backlog_totals(
        &self,
        sink: &str,
        after_seq: i64,
        sources: &[String],
    ) -> Result<OutboxTotals, StoreError> {
        let mut q =
            QueryBuilder::<Sqlite>::new("SELECT COALESCE(SUM(last_seq - MAX(first_seq - 1, ");
        q.push_bind(after_seq)
            .push(")), 0) AS rows, COALESCE(SUM(bytes * (last_seq - MAX(first_seq - 1, ")
            .push_bind(after_seq)
            .push(")) / records), 0) AS bytes FROM outbox_chunks WHERE ");
        push_waiting(&mut q, Some(sink), after_seq, sources);
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
        let mut out = Vec::new();
        if requeued_for.is_none() && sources.is_empty() {
            return Ok(out);
        }
        let mut after = after_seq;
        while out.len() < limit {
            let mut q = QueryBuilder::<Sqlite>::new(
                "SELECT first_seq, last_seq, source, stream, tenant, ingest_time, records, body
                 FROM outbox_chunks WHERE ",
            );
            push_waiting(&mut q, requeued_for, after, sources);
            q.push(" ORDER BY last_seq LIMIT ")
                .push_bind(CHUNKS_PER_READ);
            let chunks = q
                .build()
                .fetch_all(&self.pool)
                .await
                .map_err(query_err("reading an outbox batch"))?;
            let read = chunks.len() as i64;
            for c in chunks {
                let taken = decode_chunk(&c, after, limit - out.len(), &mut out)
                    .map_err(query_err("reading an outbox batch"))?;
                if out.len() >= limit {
                    break;
                }
                // Not full: the chunk was read to its end.
                after = c
                    .try_get::<i64, _>("last_seq")
                    .map_err(query_err("reading an outbox batch"))?
                    .max(taken);
            }
            if read < CHUNKS_PER_READ {
                break;
            }
        }
        Ok(out)
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
        let mut q =
            QueryBuilder::<Sqlite>::new("SELECT COALESCE(SUM(last_seq - MAX(first_seq - 1, ");
        q.push_bind(after_seq)
            .push(")), 0) FROM outbox_chunks WHERE ");
        push_waiting(&mut q, requeued_for, after_seq, sources);
        q.build_query_scalar()
            .fetch_one(&self.pool)
            .await
            .map_err(query_err("counting a sink backlog"))
    }

    /// Deletes the chunks of `source` that every sink in `sinks` has passed whole. Returns records
    /// deleted. Dead letters re-queued for one sink are left to [`Store::prune_requeued`].
    pub async fn prune_outbox(&self, source: &str, sinks: &[String]) -> Result<u64, StoreError> {
        if sinks.is_empty() {
            return Ok(0);
        }
        // A sink with no row yet has delivered nothing: MIN over a missing row must count as 0.
        let mut q = QueryBuilder::<Sqlite>::new("DELETE FROM outbox_chunks WHERE source = ");
        q.push_bind(source)
            .push(" AND target_sink IS NULL AND last_seq <= (SELECT MIN(p) FROM (");
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
        q.push(")) RETURNING records, bytes");
        self.delete_chunks(q, "pruning the outbox").await
    }

    /// Deletes the dead letters re-queued for `sink` that it has passed. Returns records deleted.
    pub async fn prune_requeued(&self, sink: &str) -> Result<u64, StoreError> {
        let mut q = QueryBuilder::<Sqlite>::new("DELETE FROM outbox_chunks WHERE target_sink = ");
        q.push_bind(sink)
            .push(" AND last_seq <= COALESCE((SELECT delivered_seq FROM sink_offsets WHERE sink = ")
            .push_bind(sink)
            .push("), 0) RETURNING records, bytes");
        self.delete_chunks(q, "pruning re-queued dead letters")
            .await
    }

    /// Runs a DELETE of chunks returning `records, bytes`, and takes them from the totals, in one
    /// transaction.
    async fn delete_chunks(
        &self,
        mut q: QueryBuilder<'_, Sqlite>,
        doing: &'static str,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin(doing).await?;
        let deleted: Vec<(i64, i64)> = q
            .build_query_as()
            .fetch_all(&mut *tx)
            .await
            .map_err(query_err(doing))?;
        if deleted.is_empty() {
            return Ok(0);
        }
        let records: i64 = deleted.iter().map(|(r, _)| r).sum();
        let bytes: i64 = deleted.iter().map(|(_, b)| b).sum();
        add_to_totals(&mut tx, -records, -bytes).await?;
        commit_tx(tx, doing).await?;
        self.checkpoint_if_large();
        Ok(records as u64)
    }
}

/// Appends the condition for the chunks a reader takes after `after_seq`: those of its `sources`
/// meant for every sink, and those re-queued for `requeued_for` alone when it names a sink.
/// `sources` may be empty only when `requeued_for` names a sink.
///
/// The range on `last_seq` drives the scan (its index, in log order); the rest filters chunk
/// headers, never record bodies.
fn push_waiting<'a>(
    q: &mut QueryBuilder<'a, Sqlite>,
    requeued_for: Option<&'a str>,
    after_seq: i64,
    sources: &'a [String],
) {
    q.push("last_seq > ").push_bind(after_seq).push(" AND (");
    if !sources.is_empty() {
        q.push("(target_sink IS NULL AND source IN (");
        let mut list = q.separated(", ");
        for s in sources {
            list.push_bind(s);
        }
        q.push("))");
        if requeued_for.is_some() {
            q.push(" OR ");
        }
    }
    if let Some(sink) = requeued_for {
        q.push("target_sink = ").push_bind(sink);
    }
    q.push(")");
}

/// Appends the records of chunk row `c` after position `after` to `out`, at most `room` of them.
/// Returns the position of the last record taken (or `after` if none).
fn decode_chunk(
    c: &SqliteRow,
    after: i64,
    room: usize,
    out: &mut Vec<OutboxRecord>,
) -> Result<i64, sqlx::Error> {
    let first: i64 = c.try_get("first_seq")?;
    let source: String = c.try_get("source")?;
    let stream: String = c.try_get("stream")?;
    let tenant: String = c.try_get("tenant")?;
    let ingest_time = from_millis(c.try_get("ingest_time")?);
    let body: &[u8] = c.try_get("body")?;
    let records = usize::try_from(c.try_get::<i64, _>("records")?).unwrap_or(0);
    let skip = usize::try_from(after + 1 - first).unwrap_or(0);
    let entries =
        chunk::decode(body, records, skip, room).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    let mut last = after;
    for (i, e) in entries.into_iter().enumerate() {
        last = first + (skip + i) as i64;
        out.push(OutboxRecord {
            seq: last,
            source: source.clone(),
            stream: stream.clone(),
            tenant: tenant.clone(),
            event_id: e.id.to_string(),
            event_time: from_millis(e.time_ms),
            ingest_time,
            severity: e.severity.min(10),
            record: e.record,
        });
    }
    Ok(last)
}

/// Totals selected as `rows` and `bytes` (the `outbox_totals` row, or a backlog's sums).
fn outbox_totals(r: SqliteRow) -> Result<OutboxTotals, sqlx::Error> {
    Ok(OutboxTotals {
        rows: r.try_get("rows")?,
        bytes: r.try_get("bytes")?,
    })
}
