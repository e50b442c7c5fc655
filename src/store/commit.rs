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
        // The page's chunks, made before the transaction on the likely guess that every event is
        // new (a page from the cursor on): compressing takes a third of a commit, and other
        // writers (sinks recording deliveries) need not wait for it.
        let started = std::time::Instant::now();
        let entries: Vec<ChunkEntry<&str>> = page.events.iter().map(chunk_entry).collect();
        let guessed = outbox::encode_chunks(&entries).await;
        let encoded_at = started.elapsed();
        let mut tx = self.begin("starting a page commit").await?;
        let turn_at = started.elapsed();

        // 1. Remember ids; only the keys that were new come back. An id the vendor served again
        //    stays remembered as long as it keeps serving it (its `seen_at` moves), so pruning by
        //    age never forgets an id that a later page would bring back. While ids recorded before
        //    the integer seen-set remain, one of those is not new either.
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
        let seen_at = started.elapsed();

        // 2. Append the new events in vendor order (a page may repeat an id; keep the first),
        //    compressed in chunks: each record is written once.
        let new_events: Vec<ChunkEntry<&str>> = page
            .events
            .iter()
            .zip(&keys)
            .filter(|(_, k)| fresh.remove(*k))
            .map(|(e, _)| chunk_entry(e))
            .collect();
        let destination = Destination {
            source,
            stream: &partition.stream,
            tenant: &partition.tenant,
            ingest_ms: now_ms,
            target_sink: None,
        };
        if new_events.len() == entries.len() {
            outbox::append_encoded(&mut tx, &destination, &guessed).await?;
        } else {
            outbox::append(&mut tx, &destination, &new_events).await?;
        }
        let appended_at = started.elapsed();

        // 3. Keep the records that could not become events, once each: a record fetched again
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

        // 4. Move the cursor and the partition's counters.
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

        let cursor_at = started.elapsed();
        commit_tx(tx, "committing a page").await?;
        tracing::trace!(
            source,
            events = page.events.len(),
            encode_us = encoded_at.as_micros() as u64,
            turn_us = (turn_at - encoded_at).as_micros() as u64,
            seen_us = (seen_at - turn_at).as_micros() as u64,
            append_us = (appended_at - seen_at).as_micros() as u64,
            cursor_us = (cursor_at - appended_at).as_micros() as u64,
            commit_us = (started.elapsed() - cursor_at).as_micros() as u64,
            "page commit steps"
        );
        self.checkpoint_if_large();
        Ok(CommitSummary {
            appended,
            duplicates,
            rejected,
        })
    }
}

/// How a chunk holds `event`.
fn chunk_entry(event: &crate::event::Event) -> ChunkEntry<&str> {
    ChunkEntry {
        id: event.id.as_str(),
        time_ms: millis(event.time),
        severity: event.severity.value(),
        record: event.record.as_str(),
    }
}
