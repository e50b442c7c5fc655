//! Records a source could not turn into events (kept by the page commit), as `state` lists them.
//!
//! Must not: write (the commit in `commit.rs` keeps them, once each).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{query_err, time_of, Store, StoreError};

/// A record a source could not turn into an event, as kept in the store.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RejectedRecord {
    /// Source id.
    pub source: String,
    /// Stream.
    pub stream: String,
    /// Tenant (`""` when none).
    pub tenant: String,
    /// The request it came from.
    pub url: String,
    /// Why it was rejected.
    pub reason: String,
    /// The vendor's text of it.
    pub record: String,
    /// When it was first rejected.
    pub at: DateTime<Utc>,
}

impl Store {
    /// The rejected records of `source`, oldest first.
    pub async fn rejected_records(&self, source: &str) -> Result<Vec<RejectedRecord>, StoreError> {
        self.select_rejected(Some(source), None).await
    }

    /// The `limit` most recently rejected records of every source, newest first.
    pub async fn recent_rejected(&self, limit: u32) -> Result<Vec<RejectedRecord>, StoreError> {
        self.select_rejected(None, Some(limit)).await
    }

    /// Rejected records: of `source` alone when given (else of every source); the `newest` most
    /// recent ones newest first when given, else all of them oldest first.
    async fn select_rejected(
        &self,
        source: Option<&str>,
        newest: Option<u32>,
    ) -> Result<Vec<RejectedRecord>, StoreError> {
        let mut q = QueryBuilder::<Sqlite>::new(
            "SELECT source, stream, tenant, url, reason, record, at FROM rejected_records",
        );
        if let Some(source) = source {
            q.push(" WHERE source = ").push_bind(source);
        }
        match newest {
            Some(limit) => q.push(" ORDER BY id DESC LIMIT ").push_bind(limit),
            None => q.push(" ORDER BY id"),
        };
        q.build()
            .try_map(rejected_record)
            .fetch_all(&self.pool)
            .await
            .map_err(query_err("reading rejected records"))
    }
}

/// A `rejected_records` row.
fn rejected_record(r: SqliteRow) -> Result<RejectedRecord, sqlx::Error> {
    Ok(RejectedRecord {
        source: r.try_get("source")?,
        stream: r.try_get("stream")?,
        tenant: r.try_get("tenant")?,
        url: r.try_get("url")?,
        reason: r.try_get("reason")?,
        record: r.try_get("record")?,
        at: time_of(&r, "at")?,
    })
}
