//! What grows: row counts and the file's size for `state`, and giving free pages back to the file
//! system after pruning.
//!
//! Invariant: free pages are given back a few at a time, each step its own short transaction, so
//! commits and sink advances get the write lock between steps.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{commit_tx, query_err, Store, StoreError};

/// Free pages below this many bytes stay in the file: the next commits reuse them, and giving them
/// back after every batch of a busy outbox would only churn.
pub(super) const RECLAIM_ABOVE_BYTES: i64 = 4 << 20;

/// Bytes of free pages given back per `incremental_vacuum` statement. Each statement is its own
/// short write transaction, so commits and sink advances get the lock between steps.
const RECLAIM_STEP_BYTES: i64 = 8 << 20;

/// The size of the database file, as `secrelay state` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DatabaseSize {
    /// The database file.
    pub path: PathBuf,
    /// Bytes of the main file on disk.
    pub main_bytes: u64,
    /// Bytes of the write-ahead log beside it (0 when there is none).
    pub wal_bytes: u64,
    /// `main_bytes + wal_bytes`.
    pub total_bytes: u64,
    /// Bytes of free pages inside the main file (given back by incremental vacuum above 4 MiB).
    pub free_bytes: u64,
    /// `none`, `full` or `incremental` (`incremental` once a writer has opened it).
    pub auto_vacuum: String,
}

/// What the state database holds that grows, as `secrelay state` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StoreGrowth {
    /// Seen-set ids kept, in all.
    pub seen_ids: i64,
    /// Seen-set ids kept, per source id.
    pub seen_ids_by_source: std::collections::BTreeMap<String, i64>,
    /// Records a sink's receiver rejected (dead letters), in all sinks.
    pub dead_letters: i64,
    /// Records a source could not turn into events, in all.
    pub rejected_records: i64,
    /// Outbox rows that are dead letters re-queued for one sink (counted in the outbox too).
    pub requeued: i64,
    /// The file on disk.
    pub database: DatabaseSize,
}

impl Store {
    /// Row counts of what grows, and the file's size on disk (main file plus WAL).
    pub async fn growth(&self) -> Result<StoreGrowth, StoreError> {
        let by_source: Vec<(String, i64)> = sqlx::query_as(
            "SELECT source, SUM(n) FROM (
                SELECT s.source, COUNT(*) AS n FROM seen_ids i
                  JOIN seen_scopes s ON s.scope = i.scope GROUP BY s.source
                UNION ALL SELECT source, COUNT(*) FROM seen GROUP BY source)
             GROUP BY source ORDER BY source",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query_err("counting seen ids"))?;
        let (dead_letters, rejected_records, requeued): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM dead_letters), (SELECT COUNT(*) FROM rejected_records),
                    (SELECT COALESCE(SUM(records), 0) FROM outbox_chunks WHERE target_sink IS NOT NULL)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(query_err("counting dead letters"))?;
        let (page_size, free_pages, auto_vacuum) = self.pages().await?;
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let main_bytes = size(&self.path);
        let wal_bytes = size(&PathBuf::from(format!("{}-wal", self.path.display())));
        Ok(StoreGrowth {
            seen_ids: by_source.iter().map(|(_, n)| n).sum(),
            seen_ids_by_source: by_source.into_iter().collect(),
            dead_letters,
            rejected_records,
            requeued,
            database: DatabaseSize {
                path: self.path.clone(),
                main_bytes,
                wal_bytes,
                total_bytes: main_bytes + wal_bytes,
                free_bytes: (page_size * free_pages).max(0) as u64,
                auto_vacuum: match auto_vacuum {
                    0 => "none",
                    1 => "full",
                    _ => "incremental",
                }
                .to_string(),
            },
        })
    }

    /// (page size, free pages, auto_vacuum mode 0/1/2).
    async fn pages(&self) -> Result<(i64, i64, i64), StoreError> {
        sqlx::query_as(
            "SELECT (SELECT page_size FROM pragma_page_size()),
                    (SELECT freelist_count FROM pragma_freelist_count()),
                    (SELECT auto_vacuum FROM pragma_auto_vacuum())",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(query_err("reading page counts"))
    }

    /// Gives free pages (left by pruned rows) back to the file system while more than 4 MiB of them
    /// are free, 8 MiB per statement, each its own short write transaction. Returns bytes given back.
    /// Does nothing while another task of this process is at it, or on a file without incremental
    /// auto-vacuum (a reader-only database not yet opened by a writer).
    pub async fn reclaim_free_pages(&self) -> Result<u64, StoreError> {
        use std::sync::atomic::Ordering;
        if self.reclaiming.swap(true, Ordering::AcqRel) {
            return Ok(0);
        }
        let result = self.reclaim_steps().await;
        self.reclaiming.store(false, Ordering::Release);
        result
    }

    async fn reclaim_steps(&self) -> Result<u64, StoreError> {
        let (page_size, mut free, auto_vacuum) = self.pages().await?;
        if auto_vacuum != 2 || page_size <= 0 {
            return Ok(0);
        }
        let step = (RECLAIM_STEP_BYTES / page_size).max(1);
        let mut given_back = 0u64;
        while free * page_size > RECLAIM_ABOVE_BYTES {
            // A write like any other: it takes its turn (see `Store::begin`).
            let mut tx = self.begin("giving free pages back").await?;
            sqlx::query(&format!("PRAGMA incremental_vacuum({step})"))
                .execute(&mut *tx)
                .await
                .map_err(query_err("giving free pages back"))?;
            commit_tx(tx, "giving free pages back").await?;
            let (_, now_free, _) = self.pages().await?;
            if now_free >= free {
                break; // No progress (another connection holds them): try after the next prune.
            }
            given_back += ((free - now_free) * page_size) as u64;
            free = now_free;
        }
        Ok(given_back)
    }
}
