//! Moving the outbox rows of the layout before issue 13 (one row per record) into chunks, once,
//! when a writer opens the file. (Seen ids of that layout stay in their table: see `seen.rs`.)
//!
//! Must not: run in a reader (`state` must not write), or drop a row: SQL alone cannot compress
//! or hash, so the rows are moved here, in Rust. Invariant: each step moves a batch and deletes
//! exactly those rows in one transaction, so a crash mid-way leaves every row in one of the two
//! layouts, never both or neither; positions keep their numbers.

use sqlx::Row;

use super::chunk::ChunkEntry;
use super::outbox::{self, Destination};
use super::{commit_tx, query_err, Store, StoreError};

/// Rows moved per transaction.
const BATCH: i64 = 2000;

impl Store {
    /// Moves every outbox row of the older layout into chunks. Returns records moved.
    pub(super) async fn move_legacy_rows(&self) -> Result<u64, StoreError> {
        let records = self.move_legacy_outbox().await?;
        if records > 0 {
            tracing::info!(
                records,
                "state database: moved outbox rows to the chunked layout"
            );
        }
        Ok(records)
    }

    /// Each outbox row becomes a chunk of one record at its old position.
    async fn move_legacy_outbox(&self) -> Result<u64, StoreError> {
        let doing = "moving outbox rows to chunks";
        // Dead letters kept before severity and ingest time were: take them from the rows now,
        // while the rows are still there to take them from.
        sqlx::query(
            "UPDATE dead_letters SET
                severity = COALESCE(severity, (SELECT o.severity FROM outbox o WHERE o.seq = dead_letters.seq)),
                ingest_time = COALESCE(ingest_time, (SELECT o.ingest_time FROM outbox o WHERE o.seq = dead_letters.seq))
             WHERE severity IS NULL OR ingest_time IS NULL",
        )
        .execute(&self.pool)
        .await
        .map_err(query_err(doing))?;
        let mut moved = 0u64;
        loop {
            let mut tx = self.begin(doing).await?;
            let rows = sqlx::query(
                "SELECT seq, source, stream, tenant, event_id, event_time, ingest_time, severity,
                        record, target_sink
                 FROM outbox ORDER BY seq LIMIT ?1",
            )
            .bind(BATCH)
            .fetch_all(&mut *tx)
            .await
            .map_err(query_err(doing))?;
            let Some(last) = rows.last() else {
                return Ok(moved);
            };
            let last_seq: i64 = last.try_get("seq").map_err(query_err(doing))?;
            for r in &rows {
                let get = |c: &str| r.try_get::<String, _>(c).map_err(query_err(doing));
                let (source, stream, tenant) = (get("source")?, get("stream")?, get("tenant")?);
                let (event_id, record) = (get("event_id")?, get("record")?);
                let number = |c: &str| r.try_get::<i64, _>(c).map_err(query_err(doing));
                let target_sink: Option<String> =
                    r.try_get("target_sink").map_err(query_err(doing))?;
                let seq = number("seq")?;
                let to = Destination {
                    source: &source,
                    stream: &stream,
                    tenant: &tenant,
                    ingest_ms: number("ingest_time")?,
                    target_sink: target_sink.as_deref(),
                };
                let entry = ChunkEntry {
                    id: event_id.as_str(),
                    time_ms: number("event_time")?,
                    severity: number("severity")?.clamp(0, 10) as u8,
                    record: record.as_str(),
                };
                outbox::place(&mut tx, &to, seq, &[entry]).await?;
            }
            // The old table's triggers take these rows from the totals; `place` added them back.
            sqlx::query("DELETE FROM outbox WHERE seq <= ?1")
                .bind(last_seq)
                .execute(&mut *tx)
                .await
                .map_err(query_err(doing))?;
            commit_tx(tx, doing).await?;
            moved += rows.len() as u64;
        }
    }
}
