//! Code42 / Incydr source: file events, alerts (with observations) and sessions
//! (reference/vendor-apis.md §1).
//!
//! Owns: the three cursors, the queries and the mapping of records to events; CEF mapping lives in
//! `cef.rs`. Must not: sleep, retry or touch the store.
//!
//! Cursors (JSON in the store):
//! - file events: a window on `event.inserted` (server clock), `since` to `until`, sorted ascending
//!   and paged with `pgToken` (`""` first, then `nextPgToken` until null; never `pgNum`, which stops
//!   at 10 000). The next window starts `overlap_minutes` before the last one ended, because events
//!   become searchable up to 15 minutes after their insertion time; the seen-set drops the overlap.
//!   `INVALID_PAGE_TOKEN` restarts the window from the stored `since`, never from the beginning of
//!   history. The configured filters are stored with the cursor: a change restarts the window.
//! - alerts: `createdAt` ON_OR_AFTER `since` (milliseconds, as queries are sent), `srtKey
//!   CreatedAt` ascending, 0-based `pgNum`. The cursor keeps `since` and the ids already delivered
//!   in `since`'s millisecond, as the Incydr CLI does (§1.8): the inclusive filter repeats them on
//!   every poll and they are dropped by id. A page with newer alerts moves `since` to the newest
//!   millisecond on it (its ids become the boundary set). Only a FULL page that lies wholly at
//!   `since` steps `pgNum` (`skip`) on, since more may share the instant; a short page ends the pass
//!   with `skip` back at 0, so the next pass re-reads the boundary from page 0, where a late alert
//!   at that instant may have sorted (ties are in no documented order). Cost at rest: one query
//!   (plus one per full page of alerts sharing the boundary millisecond).
//! - sessions: the API filters on `beginTime` only (§1.5), yet a session changes (an analyst closes
//!   it, notes, scores: `lastUpdated` moves) long after it began. Changes are followed by
//!   `lastUpdated` in two phases per pass. (1) The sweep: every session begun within
//!   `session_window_hours` (`on_or_after` fixed for the pass, `page_number` paging). (2) The
//!   follow phase: the cursor keeps every session last seen in a state that is not closed
//!   (`sessionId` → `beginTime`, `lastUpdated`); those that began before the sweep's window are
//!   re-read one by one with `GET /v1/sessions/{id}`, `session_page_size` of them per poll. A
//!   session seen closed is dropped from the set; a 404 drops it too. Cost per pass: the window's
//!   sessions / `session_page_size` list requests, plus one GET per open session older than the
//!   window; the set is bounded by dropping sessions that began more than 90 days ago (Code42's
//!   search horizon, §1.4), with a warning. Not followed: a session already closed when it leaves
//!   the window and reopened later (OPEN_NEW_DATA), or first created with a `beginTime` older than
//!   the window. Each change (`sessionId`, `lastUpdated`) is one event; the seen-set drops repeats.
//! - A record that cannot become an event (no id, an unparseable `createdAt`, a session without
//!   `sessionId`/`lastUpdated`) goes to `Page::rejected` and the cursor moves past it.
//!
//! Invariant: an event's `time` is the field the cursor windows on, so `backfill --reset --days N`
//! forgets exactly the ids it fetches again.

//!
//! Parts: `file_events.rs`, `alerts.rs`, `sessions.rs` (one per stream: cursor, query, records
//! read into events), `api.rs` (requests, envelope), `auth.rs` (tokens), `cef.rs` (CEF mapping).

mod alerts;
mod api;
mod auth;
pub mod cef;
mod file_event_scan;
mod file_event_view;
mod file_events;
pub mod mapping;
mod sessions;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde_json::Value;

use crate::event::{Page, Partition};
use crate::settings::{Code42Settings, Code42Stream, SetupError};
use crate::sources::cursor::stream_partitions;
use crate::sources::json_path::text;
use crate::sources::{Source, SourceError};
use api::Api;
use auth::Tokens;

/// The stream name a Code42 stream is stored under.
pub fn stream_name(stream: Code42Stream) -> &'static str {
    match stream {
        Code42Stream::FileEvents => "file_events",
        Code42Stream::Alerts => "alerts",
        Code42Stream::Sessions => "sessions",
    }
}

pub(crate) fn unwrap_data(value: Value) -> Value {
    match value {
        Value::Object(mut map) if map.contains_key("data") => {
            map.remove("data").unwrap_or(Value::Null)
        }
        other => other,
    }
}

/// Code42 risk severity names on the 0–10 scale.
pub fn risk_severity(name: Option<&str>) -> Option<u8> {
    Some(match name?.to_ascii_uppercase().as_str() {
        "NO_RISK" => 0,
        "LOW" => 3,
        "MODERATE" | "MEDIUM" => 5,
        "HIGH" => 8,
        "CRITICAL" => 10,
        _ => return None,
    })
}

/// Severity of a file event (v1 or v2), the one rule for the envelope and CEF: its risk severity
/// on the 0–10 scale, or 5 when it has none (or one this version does not know), as code42cli's
/// CEF output did (reference/vendor-apis.md §1.9).
pub fn file_event_severity(record: &Value) -> u8 {
    risk_severity(text(record, "risk.severity").or_else(|| text(record, "riskSeverity")))
        .unwrap_or(5)
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_time(text: Option<&str>) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Code42 / Incydr source.
pub struct Code42Source {
    id: String,
    settings: Code42Settings,
    api: Api,
    lookback: Duration,
    clock: Clock,
}

/// Where a source reads the present (the real clock unless a simulation shares its own).
pub type Clock = std::sync::Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

impl Code42Source {
    /// A source for `settings` (secret resolved). `lookback` overrides `initial_lookback_hours`.
    /// Fails when the secret was not resolved.
    pub fn new(
        id: &str,
        settings: Code42Settings,
        http: reqwest::Client,
        lookback: Option<Duration>,
    ) -> Result<Self, SetupError> {
        let secret = settings.credentials(&format!("sources.{id}"))?;
        let console = settings.console_url.clone().unwrap_or_default();
        let tokens = Tokens::new(
            http.clone(),
            settings.auth,
            &settings.api_url,
            &console,
            &settings.client_id,
            secret,
        );
        let api = Api::new(http, tokens, settings.auth, &settings.api_url, &console);
        let lookback =
            lookback.unwrap_or_else(|| Duration::hours(i64::from(settings.initial_lookback_hours)));
        Ok(Code42Source {
            id: id.to_string(),
            settings,
            api,
            lookback,
            clock: std::sync::Arc::new(Utc::now),
        })
    }

    /// The same source reading the present from `clock` (simulations with a simulated clock).
    pub fn with_clock(mut self, clock: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Self {
        self.clock = std::sync::Arc::new(clock);
        self
    }

    fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }
}

impl Source for Code42Source {
    fn id(&self) -> &str {
        &self.id
    }

    /// File events and alerts are searchable 90 days back (code42cli refuses older `--begin`).
    fn horizon(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_secs(90 * 24 * 3600))
    }

    async fn partitions(&self) -> Result<Vec<Partition>, SourceError> {
        // Authenticating here makes `check` and start-up fail early on a bad credential.
        self.api.tokens().bearer().await?;
        Ok(stream_partitions(
            self.settings.streams.iter().map(|s| stream_name(*s)),
            "",
        ))
    }

    async fn poll(&self, partition: &Partition, cursor: Option<&str>) -> Result<Page, SourceError> {
        match partition.stream.as_str() {
            "file_events" => self.poll_file_events(cursor).await,
            "alerts" => self.poll_alerts(cursor).await,
            "sessions" => self.poll_sessions(cursor).await,
            other => Err(SourceError::BadCursor {
                detail: format!("{}: unknown stream {other}", self.id),
            }),
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
