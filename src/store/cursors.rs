//! Partition cursors and their state: the stored position, poll errors, `reset`, and the rows
//! `secrelay state` shows.
//!
//! Must not: interpret a cursor (it is the source's opaque text). Invariant: a failed poll records
//! its error and leaves the cursor as it is.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::{commit_tx_then, millis, query_err, seen, time_at, Store, StoreError};
use crate::event::Partition;

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

/// What `reset` removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResetSummary {
    /// Cursor rows removed.
    pub cursors: u64,
    /// Seen-set ids removed.
    pub seen: u64,
}

impl Store {
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
        Ok(row
            .map(|r| r.try_get::<Option<String>, _>("cursor"))
            .transpose()
            .map_err(query_err("reading a cursor"))?
            .flatten())
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

    /// Forgets the cursors of `source` and, when `since` is given, the seen ids of events newer
    /// than `since`, so that history is pulled and delivered again.
    pub async fn reset(
        &self,
        source: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<ResetSummary, StoreError> {
        let mut tx = self.begin("starting a reset").await?;
        let cursors = sqlx::query("DELETE FROM cursors WHERE source = ?")
            .bind(source)
            .execute(&mut *tx)
            .await
            .map_err(query_err("forgetting cursors"))?
            .rows_affected();
        let seen = match since {
            Some(t) => seen::forget_since(&mut tx, source, millis(t)).await?,
            None => 0,
        };
        commit_tx_then(tx, "committing a reset", || self.note_seen_change(None)).await?;
        Ok(ResetSummary { cursors, seen })
    }

    /// Every partition's state, ordered by source, stream, tenant.
    pub async fn cursor_states(&self) -> Result<Vec<CursorState>, StoreError> {
        sqlx::query(
            "SELECT source, stream, tenant, cursor, updated_at, last_success_at, last_error, last_error_at,
                    newest_event_at, events_total, duplicates_total, clamps_total, rejected_total
             FROM cursors ORDER BY source, stream, tenant",
        )
        .try_map(cursor_state)
        .fetch_all(&self.pool)
        .await
        .map_err(query_err("reading cursors"))
    }
}

/// A `cursors` row.
fn cursor_state(r: SqliteRow) -> Result<CursorState, sqlx::Error> {
    Ok(CursorState {
        source: r.try_get("source")?,
        stream: r.try_get("stream")?,
        tenant: r.try_get("tenant")?,
        cursor: r.try_get("cursor")?,
        updated_at: time_at(&r, "updated_at")?,
        last_success_at: time_at(&r, "last_success_at")?,
        last_error: r.try_get("last_error")?,
        last_error_at: time_at(&r, "last_error_at")?,
        newest_event_at: time_at(&r, "newest_event_at")?.filter(|t| t.timestamp_millis() > 0),
        events_total: r.try_get("events_total")?,
        duplicates_total: r.try_get("duplicates_total")?,
        clamps_total: r.try_get("clamps_total")?,
        rejected_total: r.try_get("rejected_total")?,
    })
}
