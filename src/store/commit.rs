//! Committing a polled page: the seen-set, the outbox append, rejected records and the cursor, in
//! one transaction; and pruning the seen-set by age.
//!
//! Must not: commit part of a page. Invariant: a crash leaves the old cursor, or the new one with
//! its events on disk; an id the vendor keeps serving is never forgotten by age.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{commit_tx, insert_rows, millis, query_err, Store, StoreError, CHUNK};
use crate::event::{Page, Partition};

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

impl Store {
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
        let mut tx = self.begin("starting a page commit").await?;

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
        insert_rows(
            &mut tx,
            "INSERT INTO outbox (source, stream, tenant, event_id, event_time, ingest_time, severity, record, bytes) ",
            &new_events,
            |mut b, e| {
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
            },
            "appending to the outbox",
        )
        .await?;

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

        commit_tx(tx, "committing a page").await?;
        Ok(CommitSummary {
            appended,
            duplicates,
            rejected,
        })
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
}
