//! Committing a polled page: the seen-set, the outbox append, rejected records and the cursor, in
//! one transaction.
//!
//! Must not: commit part of a page. Invariant: a crash leaves the old cursor, or the new one with
//! its events on disk; an id the vendor keeps serving is never forgotten by age.

use chrono::{DateTime, Utc};

use super::chunk::ChunkEntry;
use super::outbox::{self, Destination};
use super::seen::{self, SeenKey};
use super::{commit_tx, millis, query_err, Store, StoreError};
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
        let scope = self.seen_scope(source, &partition.stream).await?;
        let keys: Vec<SeenKey> = page
            .events
            .iter()
            .map(|e| seen::key(millis(e.key_time), &e.id))
            .collect();
        let rows: Vec<(SeenKey, i64)> = keys
            .iter()
            .zip(&page.events)
            .map(|(k, e)| (*k, millis(e.time)))
            .collect();
        let mut tx = self.begin("starting a page commit").await?;

        // 1. Remember ids; only the keys that were new come back. While ids recorded before the
        //    integer seen-set remain, one of those is not new either.
        let mut fresh = seen::insert_new(&mut tx, scope, &rows, now_ms).await?;
        if self.legacy_seen.load(std::sync::atomic::Ordering::Acquire) && !fresh.is_empty() {
            let candidates: Vec<&str> = page
                .events
                .iter()
                .zip(&keys)
                .filter(|(_, k)| fresh.contains(*k))
                .map(|(e, _)| e.id.as_str())
                .collect();
            let old = seen::in_legacy(&mut tx, source, &partition.stream, &candidates).await?;
            for (e, k) in page.events.iter().zip(&keys) {
                if old.contains(&e.id) {
                    fresh.remove(k);
                }
            }
        }

        // 2. Ids the vendor served again stay remembered as long as it keeps serving them, so that
        //    pruning by age never forgets an id that a later page would bring back.
        let repeated: Vec<SeenKey> = keys
            .iter()
            .filter(|k| !fresh.contains(*k))
            .copied()
            .collect();
        seen::refresh(&mut tx, scope, &repeated, now_ms).await?;

        // 3. Append the new events in vendor order (a page may repeat an id; keep the first),
        //    compressed in chunks: each record is written once.
        let new_events: Vec<ChunkEntry<&str>> = page
            .events
            .iter()
            .zip(&keys)
            .filter(|(_, k)| fresh.remove(*k))
            .map(|(e, _)| ChunkEntry {
                id: e.id.as_str(),
                time_ms: millis(e.time),
                severity: e.severity.value(),
                record: e.record.get(),
            })
            .collect();
        let destination = Destination {
            source,
            stream: &partition.stream,
            tenant: &partition.tenant,
            ingest_ms: now_ms,
            target_sink: None,
        };
        outbox::append(&mut tx, &destination, &new_events).await?;

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
        let newest = new_events.iter().map(|e| e.time_ms).max();
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
        self.checkpoint_if_large();
        Ok(CommitSummary {
            appended,
            duplicates,
            rejected,
        })
    }
}
