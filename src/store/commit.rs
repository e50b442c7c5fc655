//! Committing a polled page: the seen-set, the outbox append, rejected records and the cursor, in
//! one transaction. What needs no writer's turn is done before it: the page is prepared (its
//! seen-set keys made and looked up, a read; then the events found new compressed for the outbox,
//! the others apart) so the caller can let it go. `seen::SeenChanges` says whether the lookup still
//! holds once the turn is held; when it does not, the keys are looked up again. Only when the
//! events to append are not those the lookup found new (after a reset, another tenant's commit of
//! the same scope, or while the older seen table holds ids) is the page read back from both sets of
//! chunks.
//!
//! Must not: commit part of a page. Invariant: a crash leaves the old cursor, or the new one with
//! its events on disk; an id the vendor keeps serving is never forgotten by age.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use super::chunk::ChunkEntry;
use super::outbox::{self, Destination, EncodedChunk};
use super::seen::{self, SeenKey, SeenToken};
use super::{commit_tx_then, millis, query_err, Store, StoreError};
use crate::event::{Page, Partition, Rejected};
use crate::shared_text::SharedText;

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

/// A page made ready for its commit by [`Store::prepare_page`]: its seen-set keys, what a lookup
/// found of them, and its records compressed into outbox chunks. It holds no record text of its
/// own, so the page, and the response body its records share, can be let go while the commit waits
/// for its turn and writes.
pub struct PreparedPage {
    /// The partition's seen-set scope.
    scope: i64,
    /// Commit time, ms.
    now_ms: i64,
    /// Each event's seen-set key and event time (ms), in page order.
    rows: Vec<(SeenKey, i64)>,
    /// The seen-set's change count before the lookup (see `seen::SeenChanges`).
    token: SeenToken,
    /// Of the keys looked up, those the seen-set held.
    known: HashSet<SeenKey>,
    /// Keys looked up (the others were newer than any of the scope: `seen::SeenBounds`).
    looked_up: usize,
    /// Per event, in page order: new at the lookup (and first of its key in the page), so in
    /// `chunks`; else in `spare`.
    new_at_lookup: Vec<bool>,
    /// The events new at the lookup, in page order, compressed: appended as they are when the
    /// commit keeps exactly those events.
    chunks: Vec<EncodedChunk>,
    /// The other events, compressed apart: read back, with `chunks`, only when the commit keeps
    /// other events than those, or must read ids for the older seen table.
    spare: Vec<EncodedChunk>,
    /// Records that could not become events.
    rejected: Vec<Rejected>,
    /// The page's next cursor, if it moves it.
    cursor: Option<String>,
    /// The source clamped the cursor.
    clamped: bool,
}

impl Store {
    /// Commits one page in one transaction: drops ids already seen, appends the rest to the outbox,
    /// remembers their ids and moves the cursor (if the page carries one). The same as
    /// [`Store::prepare_page`] then [`Store::commit_prepared`].
    pub async fn commit_page(
        &self,
        source: &str,
        partition: &Partition,
        page: &Page,
        now: DateTime<Utc>,
    ) -> Result<CommitSummary, StoreError> {
        let prepared = self.prepare_page(source, partition, page, now).await?;
        self.commit_prepared(source, partition, prepared).await
    }

    /// Makes `page` ready for [`Store::commit_prepared`]: its seen-set keys, looked up (a read,
    /// which needs no writer's turn: the other writers, sinks recording deliveries, wait for the
    /// turn), and its records compressed into chunks, those found new apart from the others. Writes
    /// nothing of the page (it may create the partition's seen-set scope, which is empty).
    /// Compressing takes a good part of a commit, and it is done here so the writer's turn is not
    /// held for it and the page can be dropped before the commit. Keeping the events found new
    /// apart spares reading back and compressing again a page that repeats a record (a keyset
    /// page repeats its boundary record: Tenable.sc, Jamf, Code42 alerts). The page is held
    /// through the lookup, which keys newer than any of the scope skip (`seen::SeenBounds`).
    pub async fn prepare_page(
        &self,
        source: &str,
        partition: &Partition,
        page: &Page,
        now: DateTime<Utc>,
    ) -> Result<PreparedPage, StoreError> {
        let started = std::time::Instant::now();
        let scope = self.seen_scope(source, &partition.stream).await?;
        let rows: Vec<(SeenKey, i64)> = page
            .events
            .iter()
            .map(|e| (seen::key(millis(e.key_time), &e.id), millis(e.time)))
            .collect();
        // The token first, then the bound and the lookup: the commit compares the token again once
        // it holds the turn (see `seen::SeenChanges`, `seen::SeenBounds`).
        let token = self.seen_token(scope);
        let look_up = seen::to_look_up(&rows, self.seen_bound(scope));
        let looked_up = look_up.len();
        let known = if look_up.is_empty() {
            HashSet::new()
        } else {
            let mut conn = self
                .pool
                .acquire()
                .await
                .map_err(query_err("looking up seen ids"))?;
            seen::known(&mut conn, scope, &look_up).await?
        };
        drop(look_up);
        let looked_up_at = started.elapsed();
        let new_at_lookup = first_new(&rows, &known);
        let mut new = Vec::with_capacity(rows.len());
        let mut old = Vec::new();
        for (e, is_new) in page.events.iter().zip(&new_at_lookup) {
            if *is_new {
                new.push(chunk_entry(e));
            } else {
                old.push(chunk_entry(e));
            }
        }
        let chunks = outbox::encode_chunks(&new).await;
        let spare = outbox::encode_chunks(&old).await;
        tracing::trace!(
            source,
            events = rows.len(),
            looked_up,
            lookup_us = looked_up_at.as_micros() as u64,
            compress_us = (started.elapsed() - looked_up_at).as_micros() as u64,
            "page prepared"
        );
        Ok(PreparedPage {
            scope,
            now_ms: millis(now),
            looked_up,
            rows,
            token,
            known,
            new_at_lookup,
            chunks,
            spare,
            rejected: page.rejected.clone(),
            cursor: page.cursor.clone(),
            clamped: page.cursor_clamped.is_some(),
        })
    }

    /// Commits a page made ready by [`Store::prepare_page`], in one transaction: drops ids already
    /// seen, appends the rest to the outbox, remembers their ids and moves the cursor (if the page
    /// carries one).
    pub async fn commit_prepared(
        &self,
        source: &str,
        partition: &Partition,
        prepared: PreparedPage,
    ) -> Result<CommitSummary, StoreError> {
        let PreparedPage {
            scope,
            now_ms,
            rows,
            token,
            known,
            mut looked_up,
            new_at_lookup,
            chunks,
            spare,
            rejected: rejected_records,
            cursor,
            clamped,
        } = prepared;
        let started = std::time::Instant::now();
        let mut tx = self.begin("starting a page commit").await?;
        let turn_at = started.elapsed();

        // 1. Remember ids; the keys not there before are new. The lookup made before the turn
        //    still holds unless the seen-set's count moved (see `seen::SeenChanges`); else the
        //    keys are looked up again. An id the vendor served again stays remembered as long as
        //    it keeps serving it (its `seen_at` moves), so pruning by age never forgets an id
        //    that a later page would bring back. While ids recorded before the integer seen-set
        //    remain, one of those is not new either (its id is read back from the page's chunks:
        //    only while that older table holds rows).
        let bound = self.raise_seen_bound(&mut tx, scope, &rows).await?;
        let known = if self.seen_token(scope) == token {
            known
        } else {
            let look_up = seen::to_look_up(&rows, Some(bound));
            looked_up = look_up.len();
            seen::known(&mut tx, scope, &look_up).await?
        };
        seen::upsert(&mut tx, scope, &rows, now_ms).await?;
        // A page may repeat an id: the first is kept.
        let mut keep = first_new(&rows, &known);
        let mut entries: Option<Vec<ChunkEntry<SharedText>>> = None;
        if self.legacy_seen.load(std::sync::atomic::Ordering::Acquire) && keep.contains(&true) {
            let all = page_entries(&new_at_lookup, &chunks, &spare)?;
            let candidates: Vec<&str> = all
                .iter()
                .zip(&keep)
                .filter(|(_, k)| **k)
                .map(|(e, _)| e.id.as_str())
                .collect();
            let old = seen::in_legacy(&mut tx, source, &partition.stream, &candidates).await?;
            for (e, k) in all.iter().zip(keep.iter_mut()) {
                if *k && old.contains(e.id.as_str()) {
                    *k = false;
                }
            }
            entries = Some(all);
        }
        let seen_at = started.elapsed();

        // 2. Append the new events in vendor order, compressed in chunks: each record is written
        //    once. When the new events are not those the lookup found, the page's records are
        //    read back from both sets of chunks and the new ones compressed again.
        let appended = keep.iter().filter(|k| **k).count() as u64;
        let duplicates = rows.len() as u64 - appended;
        let newest = rows
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|((_, time_ms), _)| *time_ms)
            .max();
        let destination = Destination {
            source,
            stream: &partition.stream,
            tenant: &partition.tenant,
            ingest_ms: now_ms,
            target_sink: None,
        };
        let as_looked_up = keep == new_at_lookup;
        if as_looked_up {
            outbox::append_encoded(&mut tx, &destination, &chunks).await?;
        } else if appended > 0 {
            let all = match entries {
                Some(all) => all,
                None => page_entries(&new_at_lookup, &chunks, &spare)?,
            };
            let new_events: Vec<ChunkEntry<&str>> = all
                .iter()
                .zip(&keep)
                .filter(|(_, k)| **k)
                .map(|(e, _)| ChunkEntry {
                    id: e.id.as_str(),
                    time_ms: e.time_ms,
                    severity: e.severity,
                    record: e.record.as_str(),
                })
                .collect();
            outbox::append(&mut tx, &destination, &new_events).await?;
        }
        let appended_at = started.elapsed();

        // 3. Keep the records that could not become events, once each: a record fetched again
        //    (overlapping windows, boundary repeats) is not counted twice.
        let mut rejected = 0u64;
        for r in &rejected_records {
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
        .bind(cursor.as_deref())
        .bind(now_ms)
        .bind(newest)
        .bind(appended as i64)
        .bind(duplicates as i64)
        .bind(i64::from(clamped))
        .bind(rejected as i64)
        .execute(&mut *tx)
        .await
        .map_err(query_err("moving a cursor"))?;

        let cursor_at = started.elapsed();
        commit_tx_then(tx, "committing a page", || {
            self.note_seen_change(Some(scope))
        })
        .await?;
        tracing::trace!(
            source,
            events = rows.len(),
            looked_up,
            as_looked_up,
            turn_us = turn_at.as_micros() as u64,
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

/// Per row, in page order: its key is not in `known` and no row before it has the same key.
fn first_new(rows: &[(SeenKey, i64)], known: &HashSet<SeenKey>) -> Vec<bool> {
    let mut fresh: HashSet<SeenKey> = rows
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| !known.contains(k))
        .collect();
    rows.iter().map(|(k, _)| fresh.remove(k)).collect()
}

/// Every record of a prepared page, in page order: those new at the lookup from `chunks`, the
/// others from `spare`, as `new_at_lookup` placed them.
fn page_entries(
    new_at_lookup: &[bool],
    chunks: &[EncodedChunk],
    spare: &[EncodedChunk],
) -> Result<Vec<ChunkEntry<SharedText>>, StoreError> {
    let mut new = outbox::decode_encoded(chunks)?.into_iter();
    let mut old = outbox::decode_encoded(spare)?.into_iter();
    let all: Vec<_> = new_at_lookup
        .iter()
        .map_while(|is_new| if *is_new { new.next() } else { old.next() })
        .collect();
    if all.len() != new_at_lookup.len() || new.next().is_some() || old.next().is_some() {
        // Only a defect gets here (the chunks were made from this page, in memory): the loop
        // backs off, fetches the page again and prepares it again.
        return Err(query_err("reading back a page's compressed records")(
            sqlx::Error::Protocol(
                "a prepared page's chunks do not hold its records (a defect of secrelay)".into(),
            ),
        ));
    }
    Ok(all)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> ChunkEntry<&str> {
        ChunkEntry {
            id,
            time_ms: 7,
            severity: 3,
            record: id,
        }
    }

    #[test]
    fn the_first_of_each_new_key_is_new() {
        let rows = [((1, 1), 0), ((2, 2), 0), ((1, 1), 0), ((3, 3), 0)];
        let known = HashSet::from([(2, 2)]);
        assert_eq!(first_new(&rows, &known), [true, false, false, true]);
        assert_eq!(first_new(&rows, &HashSet::new()), [true, true, false, true]);
    }

    /// A page read back puts each record where the lookup's answer took it from, and chunks that
    /// do not hold the page's records are an error, not a shorter page.
    #[tokio::test]
    async fn a_page_is_read_back_from_both_sets_of_chunks_in_page_order() {
        let chunks = outbox::encode_chunks(&[entry("a"), entry("c")]).await;
        let spare = outbox::encode_chunks(&[entry("b"), entry("d")]).await;
        let all = page_entries(&[true, false, true, false], &chunks, &spare).unwrap();
        let ids: Vec<&str> = all.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c", "d"]);
        assert!(page_entries(&[true, false, true], &chunks, &spare).is_err());
        assert!(page_entries(&[true, true, true, false], &chunks, &spare).is_err());
        assert!(page_entries(&[true, false, true, false, false], &chunks, &spare).is_err());
    }
}
