//! Tickets a ticketing sink (iTop) opened for vendor alerts: which alert of which source follows
//! which ticket, its vendor state, whether it was resolved, and the last record applied to it.
//!
//! A sink is handed a [`TicketLedger`], scoped to its own name; the `incidents` commands read
//! across sinks. Invariant: a ticket row is written right after the receiver confirmed the change
//! it records, and `last_seq` only grows, so a record delivered again after a crash is recognised
//! and not applied twice.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::{millis, query_err, time_of, Store, StoreError};

/// One ticket and the alert it follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ticket {
    /// Sink name.
    pub sink: String,
    /// Source id.
    pub source: String,
    /// The vendor's alert (or session) id.
    pub alert_key: String,
    /// The stream the alert's first record came from.
    pub stream: String,
    /// Ticket class, e.g. `Incident`.
    pub ticket_class: String,
    /// The receiver's id of the ticket; empty while a create was sent whose answer never came.
    pub ticket_id: String,
    /// The ticket's reference, e.g. `I-000123`.
    pub ticket_ref: String,
    /// Title it was opened with.
    pub title: String,
    /// The vendor's word for the alert's state at the last record applied.
    pub vendor_state: String,
    /// The resolve transition was applied.
    pub resolved: bool,
    /// Log entries added since it was opened.
    pub log_entries: i64,
    /// Outbox position of the last record applied.
    pub last_seq: i64,
    /// When it was opened.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl Store {
    /// The ticket `sink` opened for `alert_key` of `source`, if any.
    pub async fn ticket(
        &self,
        sink: &str,
        source: &str,
        alert_key: &str,
    ) -> Result<Option<Ticket>, StoreError> {
        sqlx::query("SELECT * FROM tickets WHERE sink = ? AND source = ? AND alert_key = ?")
            .bind(sink)
            .bind(source)
            .bind(alert_key)
            .try_map(ticket)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_err("reading a ticket"))
    }

    /// Writes `t` (insert, or replace the row of its sink, source and alert).
    pub async fn save_ticket(&self, t: &Ticket) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT OR REPLACE INTO tickets (sink, source, alert_key, stream, ticket_class, \
             ticket_id, ticket_ref, title, vendor_state, resolved, log_entries, last_seq, \
             created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&t.sink)
        .bind(&t.source)
        .bind(&t.alert_key)
        .bind(&t.stream)
        .bind(&t.ticket_class)
        .bind(&t.ticket_id)
        .bind(&t.ticket_ref)
        .bind(&t.title)
        .bind(&t.vendor_state)
        .bind(t.resolved)
        .bind(t.log_entries)
        .bind(t.last_seq)
        .bind(millis(t.created_at))
        .bind(millis(t.updated_at))
        .execute(&self.pool)
        .await
        .map_err(query_err("saving a ticket"))?;
        Ok(())
    }

    /// Forgets the row of `alert_key` of `source` in `sink` (a create that iTop refused).
    pub async fn delete_ticket(
        &self,
        sink: &str,
        source: &str,
        alert_key: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM tickets WHERE sink = ? AND source = ? AND alert_key = ?")
            .bind(sink)
            .bind(source)
            .bind(alert_key)
            .execute(&self.pool)
            .await
            .map_err(query_err("forgetting a ticket"))?;
        Ok(())
    }

    /// Whether some alert of `sink` already follows the ticket `ticket_id` of `class`.
    pub async fn ticket_followed(
        &self,
        sink: &str,
        class: &str,
        ticket_id: &str,
    ) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM tickets WHERE sink = ? AND ticket_class = ? AND ticket_id = ?",
        )
        .bind(sink)
        .bind(class)
        .bind(ticket_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_err("looking up a ticket"))?;
        Ok(found.is_some())
    }

    /// Records a change an analyst made through `secrelay incidents`: one more log entry, or the
    /// ticket resolved. Only those columns change, so a daemon writing the same row meanwhile
    /// loses nothing of its own.
    pub async fn note_ticket_change(
        &self,
        t: &Ticket,
        logged: bool,
        resolved: bool,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE tickets SET log_entries = log_entries + ?, resolved = MAX(resolved, ?), \
             updated_at = ? WHERE sink = ? AND source = ? AND alert_key = ?",
        )
        .bind(i64::from(logged))
        .bind(resolved)
        .bind(millis(now))
        .bind(&t.sink)
        .bind(&t.source)
        .bind(&t.alert_key)
        .execute(&self.pool)
        .await
        .map_err(query_err("recording a ticket change"))?;
        Ok(())
    }

    /// Every ticket, newest first; with `key`, only those whose alert key or ticket reference is
    /// `key`. Creates whose outcome is not known yet ([`Ticket::is_pending`]) are left out.
    pub async fn tickets(&self, key: Option<&str>) -> Result<Vec<Ticket>, StoreError> {
        match key {
            Some(key) => sqlx::query(
                "SELECT * FROM tickets WHERE (alert_key = ? OR ticket_ref = ?) AND ticket_id != '' \
                 ORDER BY created_at DESC, sink, source",
            )
            .bind(key)
            .bind(key),
            None => sqlx::query(
                "SELECT * FROM tickets WHERE ticket_id != '' ORDER BY created_at DESC, sink, source",
            ),
        }
        .try_map(ticket)
        .fetch_all(&self.pool)
        .await
        .map_err(query_err("reading tickets"))
    }
}

impl Ticket {
    /// A create was sent for this alert and its answer never came: the ticket may or may not
    /// exist in the receiver.
    pub fn is_pending(&self) -> bool {
        self.ticket_id.is_empty()
    }
}

/// A `tickets` row.
fn ticket(r: SqliteRow) -> Result<Ticket, sqlx::Error> {
    Ok(Ticket {
        sink: r.try_get("sink")?,
        source: r.try_get("source")?,
        alert_key: r.try_get("alert_key")?,
        stream: r.try_get("stream")?,
        ticket_class: r.try_get("ticket_class")?,
        ticket_id: r.try_get("ticket_id")?,
        ticket_ref: r.try_get("ticket_ref")?,
        title: r.try_get("title")?,
        vendor_state: r.try_get("vendor_state")?,
        resolved: r.try_get("resolved")?,
        log_entries: r.try_get("log_entries")?,
        last_seq: r.try_get("last_seq")?,
        created_at: time_of(&r, "created_at")?,
        updated_at: time_of(&r, "updated_at")?,
    })
}

/// A ticketing sink's view of the store: its own tickets, nothing else.
#[derive(Debug, Clone)]
pub struct TicketLedger {
    store: Store,
    sink: String,
}

impl TicketLedger {
    /// The ledger of `sink`.
    pub fn new(store: Store, sink: &str) -> Self {
        TicketLedger {
            store,
            sink: sink.to_string(),
        }
    }

    /// The ticket following `alert_key` of `source`.
    pub async fn ticket(
        &self,
        source: &str,
        alert_key: &str,
    ) -> Result<Option<Ticket>, StoreError> {
        self.store.ticket(&self.sink, source, alert_key).await
    }

    /// Forgets the row of `alert_key` of `source` (a create the receiver refused).
    pub async fn forget(&self, source: &str, alert_key: &str) -> Result<(), StoreError> {
        self.store
            .delete_ticket(&self.sink, source, alert_key)
            .await
    }

    /// Whether one of this sink's alerts already follows the ticket `ticket_id` of `class`.
    pub async fn follows(&self, class: &str, ticket_id: &str) -> Result<bool, StoreError> {
        self.store
            .ticket_followed(&self.sink, class, ticket_id)
            .await
    }

    /// Saves `ticket`, which must be this sink's.
    pub async fn save(&self, ticket: &Ticket) -> Result<(), StoreError> {
        debug_assert_eq!(ticket.sink, self.sink);
        self.store.save_ticket(ticket).await
    }
}
