//! Acknowledgement bookkeeping for sinks whose receivers confirm indexing later (Splunk HEC): the
//! sink's channel, the ack ids its requests wait for and the records refused among them.
//!
//! A sink is handed a [`HecLedger`], scoped to its own name, never the whole [`Store`].

use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::{commit_tx, insert_rows, millis, query_err, Store, StoreError};

impl Store {
    /// The channel `sink` uses, created with `new_channel` the first time.
    pub async fn sink_channel(&self, sink: &str, new_channel: &str) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO sink_channels (sink, channel) VALUES (?, ?) ON CONFLICT (sink) DO NOTHING",
        )
        .bind(sink)
        .bind(new_channel)
        .execute(&self.pool)
        .await
        .map_err(query_err("creating a sink channel"))?;
        sqlx::query_scalar("SELECT channel FROM sink_channels WHERE sink = ?")
            .bind(sink)
            .fetch_one(&self.pool)
            .await
            .map_err(query_err("reading a sink channel"))
    }

    /// Remembers the ack ids a batch ending at `last_seq` waits for.
    ///
    /// `rejected` are the outbox positions of the batch's records the receiver refused, with why:
    /// kept with the acks, so that a restart that finds the acks answered still dead-letters them.
    pub async fn save_pending_acks(
        &self,
        sink: &str,
        channel: &str,
        ack_ids: &[u64],
        last_seq: i64,
        rejected: &[(i64, String)],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin("starting to save acks").await?;
        insert_rows(
            &mut tx,
            "INSERT OR REPLACE INTO pending_acks (sink, channel, ack_id, last_seq, sent_at) ",
            ack_ids,
            |mut b, id| {
                b.push_bind(sink)
                    .push_bind(channel)
                    .push_bind(*id as i64)
                    .push_bind(last_seq)
                    .push_bind(millis(now));
            },
            "saving pending acks",
        )
        .await?;
        insert_rows(
            &mut tx,
            "INSERT OR REPLACE INTO pending_rejects (sink, seq, reason) ",
            rejected,
            |mut b, (seq, reason)| {
                b.push_bind(sink).push_bind(*seq).push_bind(reason);
            },
            "saving pending rejects",
        )
        .await?;
        commit_tx(tx, "committing pending acks").await
    }

    /// The acks `sink` still waits for: (channel, ack id, last outbox position of their batch).
    pub async fn pending_acks(&self, sink: &str) -> Result<Vec<(String, u64, i64)>, StoreError> {
        sqlx::query(
            "SELECT channel, ack_id, last_seq FROM pending_acks WHERE sink = ? ORDER BY ack_id",
        )
        .bind(sink)
        .try_map(pending_ack)
        .fetch_all(&self.pool)
        .await
        .map_err(query_err("reading pending acks"))
    }

    /// The refused records saved with the pending acks of `sink`: (outbox position, reason).
    pub async fn pending_rejects(&self, sink: &str) -> Result<Vec<(i64, String)>, StoreError> {
        sqlx::query("SELECT seq, reason FROM pending_rejects WHERE sink = ? ORDER BY seq")
            .bind(sink)
            .try_map(pending_reject)
            .fetch_all(&self.pool)
            .await
            .map_err(query_err("reading pending rejects"))
    }

    /// Forgets the acks of `sink` and the refused records kept with them (answered, or given up
    /// and the batch sent again).
    pub async fn clear_pending_acks(&self, sink: &str) -> Result<(), StoreError> {
        let mut tx = self.begin("starting to clear acks").await?;
        for table in ["pending_acks", "pending_rejects"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE sink = ?"))
                .bind(sink)
                .execute(&mut *tx)
                .await
                .map_err(query_err("clearing pending acks"))?;
        }
        commit_tx(tx, "committing cleared acks").await
    }
}

/// A `pending_acks` row: (channel, ack id, last outbox position of its batch).
fn pending_ack(r: SqliteRow) -> Result<(String, u64, i64), sqlx::Error> {
    Ok((
        r.try_get("channel")?,
        r.try_get::<i64, _>("ack_id")? as u64,
        r.try_get("last_seq")?,
    ))
}

/// A `pending_rejects` row: (outbox position, reason).
fn pending_reject(r: SqliteRow) -> Result<(i64, String), sqlx::Error> {
    Ok((r.try_get("seq")?, r.try_get("reason")?))
}

/// The acknowledgement ledger of one sink: its channel, pending acks and the records refused among
/// them, and its delivery errors — and nothing of any other sink or table. Cheap to clone.
#[derive(Debug, Clone)]
pub struct HecLedger {
    store: Store,
    sink: String,
}

impl HecLedger {
    /// The ledger of the sink named `sink` in `store`.
    pub fn new(store: Store, sink: &str) -> HecLedger {
        HecLedger {
            store,
            sink: sink.to_string(),
        }
    }

    /// The sink's channel, created with `new_channel` the first time.
    pub async fn channel(&self, new_channel: &str) -> Result<String, StoreError> {
        self.store.sink_channel(&self.sink, new_channel).await
    }

    /// Remembers the ack ids a batch ending at `last_seq` waits for, with the outbox positions of
    /// the records refused in it and why (see [`Store::save_pending_acks`]).
    pub async fn save_pending(
        &self,
        channel: &str,
        ack_ids: &[u64],
        last_seq: i64,
        rejected: &[(i64, String)],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.store
            .save_pending_acks(&self.sink, channel, ack_ids, last_seq, rejected, now)
            .await
    }

    /// The acks still waited for: (channel, ack id, last outbox position of their batch).
    pub async fn pending_acks(&self) -> Result<Vec<(String, u64, i64)>, StoreError> {
        self.store.pending_acks(&self.sink).await
    }

    /// The refused records saved with the pending acks: (outbox position, reason).
    pub async fn pending_rejects(&self) -> Result<Vec<(i64, String)>, StoreError> {
        self.store.pending_rejects(&self.sink).await
    }

    /// Forgets the pending acks and the refused records kept with them.
    pub async fn clear_pending(&self) -> Result<(), StoreError> {
        self.store.clear_pending_acks(&self.sink).await
    }

    /// Records a failed delivery of the sink; its position is left as it is.
    pub async fn record_error(&self, message: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.store.record_sink_error(&self.sink, message, now).await
    }
}
