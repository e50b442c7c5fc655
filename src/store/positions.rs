//! Sink positions in the outbox log: where each sink is, moving it after its receiver accepted a
//! batch (with that batch's dead letters), delivery errors, and the rows `state` shows.
//!
//! Invariant: a position only moves forward, in the same transaction that records its dead letters.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::{commit_tx, insert_rows, millis, query_err, time_at, Store, StoreError};
use crate::event::OutboxRecord;

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

impl Store {
    /// The position of `sink` in the log (0 for a sink never seen before).
    pub async fn sink_position(&self, sink: &str) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT delivered_seq FROM sink_offsets WHERE sink = ?")
            .bind(sink)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_err("reading a sink position"))?;
        Ok(row
            .map(|r| r.try_get("delivered_seq"))
            .transpose()
            .map_err(query_err("reading a sink position"))?
            .unwrap_or(0))
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
        let mut tx = self.begin("starting a sink advance").await?;
        insert_rows(
            &mut tx,
            "INSERT INTO dead_letters (sink, seq, source, stream, tenant, event_id, event_time, record, reason, at, severity, ingest_time) ",
            rejected,
            |mut b, (r, reason)| {
                b.push_bind(sink)
                    .push_bind(r.seq)
                    .push_bind(&r.source)
                    .push_bind(&r.stream)
                    .push_bind(&r.tenant)
                    .push_bind(&r.event_id)
                    .push_bind(millis(r.event_time))
                    .push_bind(r.record.as_str())
                    .push_bind(reason)
                    .push_bind(now_ms)
                    .push_bind(i64::from(r.severity))
                    .push_bind(millis(r.ingest_time));
            },
            "recording dead letters",
        )
        .await?;
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
        commit_tx(tx, "committing a sink advance").await
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

    /// Every sink's state, ordered by name.
    pub async fn sink_states(&self) -> Result<Vec<SinkState>, StoreError> {
        sqlx::query(
            "SELECT s.sink, s.delivered_seq, s.updated_at, s.delivered_total, s.last_error, s.last_error_at,
                    (SELECT COUNT(*) FROM dead_letters d WHERE d.sink = s.sink) AS dead_letters
             FROM sink_offsets s ORDER BY s.sink",
        )
        .try_map(sink_state).fetch_all(&self.pool).await.map_err(query_err("reading sink positions"))
    }
}

/// A `sink_offsets` row, with its sink's dead letters counted as `dead_letters`.
fn sink_state(r: SqliteRow) -> Result<SinkState, sqlx::Error> {
    Ok(SinkState {
        sink: r.try_get("sink")?,
        delivered_seq: r.try_get("delivered_seq")?,
        updated_at: time_at(&r, "updated_at")?,
        delivered_total: r.try_get("delivered_total")?,
        last_error: r.try_get("last_error")?,
        last_error_at: time_at(&r, "last_error_at")?,
        dead_letters: r.try_get("dead_letters")?,
    })
}
