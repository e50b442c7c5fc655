//! Dead letters: records a sink's receiver rejected (kept by `positions.rs` with the advance), as
//! listed, and re-queued to the end of the log for that sink alone.
//!
//! Invariant: a re-queued record is either a dead letter or waiting in the outbox, never both or
//! neither.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::chunk::ChunkEntry;
use super::outbox::{self, Destination};
use super::{commit_tx, query_err, time_of, Store, StoreError};

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

/// A dead letter as re-queued: source, stream, tenant, event id, event time, ingest time,
/// severity, record.
type LetterToRequeue = (String, String, String, String, i64, i64, i64, String);

impl Store {
    /// The dead letters of `sink` (every sink when `None`), oldest first.
    pub async fn dead_letters(&self, sink: Option<&str>) -> Result<Vec<DeadLetter>, StoreError> {
        sqlx::query(
            "SELECT id, sink, seq, source, stream, tenant, event_id, event_time, reason, at, record
             FROM dead_letters WHERE ?1 IS NULL OR sink = ?1 ORDER BY id",
        )
        .bind(sink)
        .try_map(dead_letter)
        .fetch_all(&self.pool)
        .await
        .map_err(query_err("reading dead letters"))
    }

    /// Moves every dead letter of `sink` back into the outbox, at its end, for that sink alone; in
    /// one transaction, so a record is either a dead letter or waiting, never both or neither.
    /// Returns how many were re-queued. Safe beside a running writer (the rows get new positions
    /// after everything already in the log).
    pub async fn requeue_dead_letters(&self, sink: &str) -> Result<u64, StoreError> {
        let mut tx = self.begin("starting a re-queue").await?;
        // Severity and ingest time were not kept before the migration that re-queues; the first
        // writer of the chunked layout copied them from the outbox rows still there (legacy.rs).
        let letters: Vec<LetterToRequeue> = sqlx::query_as(
            "SELECT source, stream, tenant, event_id, event_time, COALESCE(ingest_time, at),
                    COALESCE(severity, 0), record
             FROM dead_letters WHERE sink = ?1 ORDER BY id",
        )
        .bind(sink)
        .fetch_all(&mut *tx)
        .await
        .map_err(query_err("re-queueing dead letters"))?;
        // One chunk each: every letter has its own partition and ingest time.
        for (source, stream, tenant, event_id, event_time, ingest_ms, severity, record) in &letters
        {
            let to = Destination {
                source,
                stream,
                tenant,
                ingest_ms: *ingest_ms,
                target_sink: Some(sink),
            };
            let entry = ChunkEntry {
                id: event_id.as_str(),
                time_ms: *event_time,
                severity: (*severity).clamp(0, 10) as u8,
                record: record.as_str(),
            };
            outbox::append(&mut tx, &to, &[entry]).await?;
        }
        let moved = letters.len() as u64;
        sqlx::query("DELETE FROM dead_letters WHERE sink = ?")
            .bind(sink)
            .execute(&mut *tx)
            .await
            .map_err(query_err("re-queueing dead letters"))?;
        commit_tx(tx, "committing a re-queue").await?;
        Ok(moved)
    }
}

/// A `dead_letters` row.
fn dead_letter(r: SqliteRow) -> Result<DeadLetter, sqlx::Error> {
    Ok(DeadLetter {
        id: r.try_get("id")?,
        sink: r.try_get("sink")?,
        seq: r.try_get("seq")?,
        source: r.try_get("source")?,
        stream: r.try_get("stream")?,
        tenant: r.try_get("tenant")?,
        event_id: r.try_get("event_id")?,
        event_time: time_of(&r, "event_time")?,
        reason: r.try_get("reason")?,
        at: time_of(&r, "at")?,
        record: r.try_get("record")?,
    })
}
