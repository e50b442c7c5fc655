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

mod api;
mod auth;
pub mod cef;
pub mod mapping;

use chrono::{DateTime, Duration, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use std::collections::BTreeMap;

use crate::event::{Event, Page, Partition, Rejected, Severity};
use crate::settings::{Code42Auth, Code42Settings, Code42Stream, FileEventsApi, SetupError};
use crate::sources::cursor::{stream_partitions, StoredCursor};
use crate::sources::json_path::{at, text};
use crate::sources::{Source, SourceError};
use api::{Api, Reply, ALERT_SERVICE, FORENSIC_SEARCH};
use auth::Tokens;

/// Alert ids per `query-details` request (the API's limit).
const DETAILS_BATCH: usize = 100;

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

/// The file-event window cursor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct WindowCursor {
    /// Lower bound (inclusive) of `event.inserted` for the window being read.
    since: DateTime<Utc>,
    /// Upper bound (inclusive) fixed when the window started; `None` between windows.
    #[serde(default)]
    until: Option<DateTime<Utc>>,
    /// `pgToken` of the next page in the window.
    #[serde(default)]
    token: Option<String>,
    /// The filters the window was started with.
    #[serde(default)]
    filters: Value,
}

impl StoredCursor for WindowCursor {}

/// The alert cursor: `createdAt` on or after `since`, and the ids already delivered at `since`
/// (as the Incydr CLI keeps them, reference §1.8). Reads the `{"since", "skip"}` cursors of
/// earlier versions (`seen` empty: the seen-set drops the repeats).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct AlertCursor {
    /// Lower bound (inclusive) of `createdAt`, at the millisecond the query is sent with.
    since: DateTime<Utc>,
    /// Ids of the alerts in `since`'s millisecond already delivered.
    #[serde(default)]
    seen: Vec<String>,
    /// The `pgNum` to read at `since`: above 0 only while FULL pages of alerts in `since`'s
    /// millisecond are being stepped over.
    #[serde(default)]
    skip: u32,
}

impl StoredCursor for AlertCursor {}

/// The session cursor: the pass in progress and the sessions still open.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct SessionCursor {
    /// Next `page_number` of the sweep.
    #[serde(default)]
    page: u32,
    /// Window start of the pass in progress (epoch ms): `on_or_after` of its sweep, fixed while
    /// the pass lasts so its pages do not shift. `None` between passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from: Option<i64>,
    /// Set once the sweep is done: the follow phase re-reads open sessions begun before `from`
    /// whose id sorts after this one (`""`: from the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    follow_after: Option<String>,
    /// Sessions last seen in a state that is not closed: `sessionId` → (`beginTime`,
    /// `lastUpdated`), epoch ms.
    #[serde(default)]
    open: BTreeMap<String, (i64, i64)>,
}

impl StoredCursor for SessionCursor {}

/// Open sessions older than this are no longer followed: Code42 searches 90 days back (§1.4).
const FOLLOW_HORIZON_DAYS: i64 = 90;

/// A time truncated to the millisecond, the precision of query filters (§1.4).
fn floor_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(t.timestamp_millis())
        .single()
        .unwrap_or(t)
}

/// An alert summary's id and `createdAt`, or why it cannot become an event.
fn alert_identity(raw: &RawValue) -> Result<(String, DateTime<Utc>), String> {
    let v: Value = serde_json::from_str(raw.get()).map_err(|e| format!("not an object: {e}"))?;
    let id = text(&v, "id")
        .filter(|id| !id.is_empty())
        .ok_or("an alert has no id")?;
    let created = parse_time(text(&v, "createdAt"))
        .ok_or_else(|| format!("alert {id} has no parseable createdAt"))?;
    Ok((id.to_string(), created))
}

/// Whether a session's current state (its last `states` entry, as `cef.rs` reads it) is closed.
fn session_closed(session: &Value) -> bool {
    at(session, "states")
        .and_then(Value::as_array)
        .and_then(|s| s.last())
        .and_then(|s| text(s, "state"))
        .is_some_and(|state| state.to_ascii_uppercase().starts_with("CLOSED"))
}

/// An id as one URL path segment (percent-encoding everything but unreserved characters).
fn path_segment(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Deserialize)]
struct FileEventsPage {
    #[serde(rename = "fileEvents", default)]
    file_events: Vec<Box<RawValue>>,
    #[serde(rename = "nextPgToken", default)]
    next_pg_token: Option<String>,
    #[serde(default)]
    problems: Option<Value>,
}

#[derive(Deserialize)]
struct AlertsPage {
    #[serde(default)]
    alerts: Vec<Box<RawValue>>,
}

#[derive(Deserialize)]
struct SessionsPage {
    #[serde(default)]
    items: Vec<Box<RawValue>>,
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

    async fn file_events_url(&self) -> Result<(String, bool), SourceError> {
        let v1 = self.settings.file_events_api == FileEventsApi::V1;
        Ok(match (self.settings.auth, v1) {
            (Code42Auth::ApiClient, _) => (
                format!(
                    "{}/v2/file-events",
                    self.settings.api_url.trim_end_matches('/')
                ),
                false,
            ),
            (_, v1) => {
                let host = self.api.service_url(FORENSIC_SEARCH).await?;
                let version = if v1 { "v1" } else { "v2" };
                (
                    format!("{host}/forensic-search/queryservice/api/{version}/fileevent"),
                    v1,
                )
            }
        })
    }

    async fn poll_file_events(&self, cursor: Option<&str>) -> Result<Page, SourceError> {
        let now = self.now();
        let filters =
            serde_json::to_value(&self.settings.file_event_filters).unwrap_or(Value::Null);
        let mut c = WindowCursor::load(cursor, &self.id, "file_events", || WindowCursor {
            since: now - self.lookback,
            until: None,
            token: None,
            filters: filters.clone(),
        })?;
        if c.filters != filters {
            tracing::warn!(source = %self.id, since = %iso(c.since),
                "file-event filters changed: restarting the window at the stored time with the new filters");
            c = WindowCursor {
                since: c.since,
                until: None,
                token: None,
                filters: filters.clone(),
            };
        }
        let until = c.until.unwrap_or(now);
        let (url, v1) = self.file_events_url().await?;
        let body = file_event_query(
            c.since,
            until,
            c.token.as_deref().unwrap_or(""),
            &self.settings.file_event_filters,
            v1,
            self.settings.page_size,
        );
        let page: FileEventsPage = match self.api.post(&url, &body).await? {
            Reply::Page(p) => p,
            Reply::InvalidPageToken => {
                tracing::warn!(source = %self.id, url = %url, since = %iso(c.since),
                    "INVALID_PAGE_TOKEN: restarting the window at its stored start");
                let restart = WindowCursor {
                    until: None,
                    token: None,
                    ..c
                };
                return Ok(Page {
                    cursor: Some(restart.save()),
                    more: true,
                    ..Page::default()
                });
            }
        };
        if let Some(problems) = page
            .problems
            .as_ref()
            .filter(|p| p.as_array().is_some_and(|a| !a.is_empty()))
        {
            tracing::warn!(source = %self.id, url = %url, "the query reported problems: {problems}");
        }
        let mut events = Vec::with_capacity(page.file_events.len());
        let mut rejected = Vec::new();
        for raw in &page.file_events {
            match file_event(raw) {
                Ok(event) => events.push(event),
                Err(reason) => rejected.push(Rejected::new(url.as_str(), reason, raw.get())),
            }
        }
        let next = match page.next_pg_token.filter(|t| !t.is_empty()) {
            Some(token) if !events.is_empty() => (
                WindowCursor {
                    since: c.since,
                    until: Some(until),
                    token: Some(token),
                    filters,
                },
                true,
            ),
            _ => (
                WindowCursor {
                    since: (until - Duration::minutes(i64::from(self.settings.overlap_minutes)))
                        .max(c.since),
                    until: None,
                    token: None,
                    filters,
                },
                false,
            ),
        };
        Ok(Page {
            events,
            rejected,
            cursor: Some(next.0.save()),
            more: next.1,
            ..Page::default()
        })
    }

    async fn alert_urls(&self) -> Result<(String, String), SourceError> {
        Ok(match self.settings.auth {
            Code42Auth::ApiClient => {
                let base = self.settings.api_url.trim_end_matches('/');
                (
                    format!("{base}/v1/alerts/query-alerts"),
                    format!("{base}/v1/alerts/query-details"),
                )
            }
            _ => {
                let host = self.api.service_url(ALERT_SERVICE).await?;
                (
                    format!("{host}/svc/api/v1/query-alerts"),
                    format!("{host}/svc/api/v1/query-details"),
                )
            }
        })
    }

    async fn poll_alerts(&self, cursor: Option<&str>) -> Result<Page, SourceError> {
        let c = AlertCursor::load(cursor, &self.id, "alerts", || AlertCursor {
            since: self.now() - self.lookback,
            seen: Vec::new(),
            skip: 0,
        })?;
        // Cursors written before the fix may hold microseconds; the query has milliseconds.
        let since = floor_ms(c.since);
        let tenant = self.api.tokens().tenant_id().await?;
        let (query_url, details_url) = self.alert_urls().await?;
        let size = self.settings.alert_page_size;
        let body = json!({
            "tenantId": tenant,
            "groupClause": "AND",
            "groups": [{"filterClause": "AND", "filters": [
                {"term": "createdAt", "operator": "ON_OR_AFTER", "value": iso(since)}
            ]}],
            "pgNum": c.skip,
            "pgSize": size,
            "srtDirection": "ASC",
            "srtKey": "CreatedAt",
        });
        let page: AlertsPage = match self.api.post(&query_url, &body).await? {
            Reply::Page(p) => p,
            Reply::InvalidPageToken => AlertsPage { alerts: Vec::new() },
        };
        let full = page.alerts.len() as u64 >= u64::from(size);
        let mut rejected = Vec::new();
        // (id, createdAt, summary) of every usable alert on the page, in the page's order.
        let mut usable: Vec<(String, DateTime<Utc>, &RawValue)> = Vec::new();
        for raw in &page.alerts {
            match alert_identity(raw) {
                Ok((id, created)) => usable.push((id, created, raw)),
                Err(reason) => rejected.push(Rejected::new(query_url.as_str(), reason, raw.get())),
            }
        }
        let newest = usable
            .iter()
            .map(|(_, created, _)| floor_ms(*created))
            .max()
            .filter(|newest| *newest > since);
        let next = match newest {
            // Newer alerts: the boundary moves to the newest millisecond on the page, with the
            // ids there (the next query repeats them, as ON_OR_AFTER is inclusive).
            Some(newest) => AlertCursor {
                since: newest,
                seen: usable
                    .iter()
                    .filter(|(_, created, _)| floor_ms(*created) == newest)
                    .map(|(id, _, _)| id.clone())
                    .collect(),
                skip: 0,
            },
            // Only the boundary millisecond: remember its ids. Step to the next page only when
            // this one was full (more may share the instant); a short page ends the pass, and the
            // next one reads the boundary again from page 0, where a late tie may have sorted.
            None => {
                let mut seen = c.seen.clone();
                for (id, _, _) in &usable {
                    if !seen.contains(id) {
                        seen.push(id.clone());
                    }
                }
                AlertCursor {
                    since,
                    seen,
                    skip: if full { c.skip + 1 } else { 0 },
                }
            }
        };
        // Alerts at the boundary already delivered are not fetched again.
        let fresh: Vec<&(String, DateTime<Utc>, &RawValue)> = usable
            .iter()
            .filter(|(id, created, _)| !(floor_ms(*created) <= since && c.seen.contains(id)))
            .collect();
        let ids: Vec<String> = fresh.iter().map(|(id, _, _)| id.clone()).collect();
        // Details (observations) for every alert, in batches the API accepts.
        let mut details: std::collections::HashMap<String, Box<RawValue>> =
            std::collections::HashMap::new();
        for batch in ids.chunks(DETAILS_BATCH) {
            let body = json!({"tenantId": tenant, "alertIds": batch});
            if let Reply::Page(found) = self.api.post::<AlertsPage>(&details_url, &body).await? {
                for raw in found.alerts {
                    let id = serde_json::from_str::<Value>(raw.get())
                        .ok()
                        .and_then(|v| text(&v, "id").map(str::to_string));
                    if let Some(id) = id {
                        details.insert(id, raw);
                    }
                }
            }
        }
        let mut events = Vec::with_capacity(fresh.len());
        for (id, created, raw) in fresh {
            let summary: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
            let severity = risk_severity(text(&summary, "riskSeverity"))
                .or_else(|| risk_severity(text(&summary, "severity")))
                .unwrap_or(5);
            let record: &RawValue = details.get(id).map_or(*raw, |d| d);
            events.push(Event::new(
                id.clone(),
                *created,
                Severity::new(severity),
                record,
            ));
        }
        Ok(Page {
            events,
            rejected,
            cursor: Some(next.save()),
            // A full page: more may wait (the cursor moved: `since` or `skip`).
            more: full,
            ..Page::default()
        })
    }

    fn sessions_url(&self) -> String {
        format!(
            "{}/v1/sessions",
            self.settings.api_url.trim_end_matches('/')
        )
    }

    async fn poll_sessions(&self, cursor: Option<&str>) -> Result<Page, SourceError> {
        let mut c = SessionCursor::load(cursor, &self.id, "sessions", SessionCursor::default)?;
        let now = self.now();
        let from = c.from.unwrap_or_else(|| {
            (now - Duration::hours(i64::from(self.settings.session_window_hours)))
                .timestamp_millis()
        });
        // Bound: a session still open after Code42's 90-day search horizon is no longer followed.
        let horizon = (now - Duration::days(FOLLOW_HORIZON_DAYS)).timestamp_millis();
        let before = c.open.len();
        c.open.retain(|_, (begin, _)| *begin >= horizon);
        if c.open.len() < before {
            tracing::warn!(source = %self.id, dropped = before - c.open.len(),
                "open sessions older than {FOLLOW_HORIZON_DAYS} days are no longer followed");
        }
        let size = self.settings.session_page_size;
        let url = self.sessions_url();
        let mut events = Vec::new();
        let mut rejected = Vec::new();
        // Open sessions that began before the window, with an id after `after`: the follow
        // phase's work still to do.
        let to_follow = |open: &BTreeMap<String, (i64, i64)>, after: &str| {
            open.iter()
                .filter(|(id, (begin, _))| *begin < from && id.as_str() > after)
                .map(|(id, _)| id.clone())
                .collect::<Vec<_>>()
        };
        let pass_over = match c.follow_after.clone() {
            None => {
                // The sweep: every session begun since `from`, whatever its state.
                let query = [
                    ("on_or_after", from.to_string()),
                    ("page_number", c.page.to_string()),
                    ("page_size", size.to_string()),
                ];
                let page: SessionsPage = self.api.get(&url, &query).await?;
                for raw in &page.items {
                    self.take_session(raw, &url, &mut c.open, &mut events, &mut rejected);
                }
                if page.items.len() as u64 >= u64::from(size) {
                    c.page += 1;
                    false
                } else if to_follow(&c.open, "").is_empty() {
                    true
                } else {
                    c.page = 0;
                    c.follow_after = Some(String::new());
                    false
                }
            }
            Some(after) => {
                // Following: re-read, one by one, the open sessions that began before the window.
                let mut batch = to_follow(&c.open, &after);
                batch.truncate(size as usize);
                for id in &batch {
                    let one = format!("{url}/{}", path_segment(id));
                    match self.api.get_optional::<Box<RawValue>>(&one).await? {
                        Some(raw) => {
                            self.take_session(&raw, &one, &mut c.open, &mut events, &mut rejected)
                        }
                        None => {
                            tracing::info!(source = %self.id, session = %id,
                                "an open session is gone (404): no longer followed");
                            c.open.remove(id);
                        }
                    }
                }
                match batch.last() {
                    Some(last) if !to_follow(&c.open, last).is_empty() => {
                        c.follow_after = Some(last.clone());
                        false
                    }
                    _ => true,
                }
            }
        };
        if pass_over {
            // The next pass starts from the window as it will be then.
            c.page = 0;
            c.from = None;
            c.follow_after = None;
        } else {
            c.from = Some(from);
        }
        let more = !pass_over;
        Ok(Page {
            events,
            rejected,
            cursor: Some(c.save()),
            more,
            ..Page::default()
        })
    }

    /// One session as an event (its id is `sessionId@lastUpdated`, so each change is one event),
    /// or a dead letter; and whether to keep following it.
    fn take_session(
        &self,
        raw: &RawValue,
        url: &str,
        open: &mut BTreeMap<String, (i64, i64)>,
        events: &mut Vec<Event>,
        rejected: &mut Vec<Rejected>,
    ) {
        let v: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
        let (Some(session), Some(updated)) = (
            text(&v, "sessionId").filter(|s| !s.is_empty()),
            at(&v, "lastUpdated").and_then(Value::as_i64),
        ) else {
            rejected.push(Rejected::new(
                url,
                "a session lacks sessionId or a numeric lastUpdated",
                raw.get(),
            ));
            return;
        };
        let Some(time) = Utc.timestamp_millis_opt(updated).single() else {
            rejected.push(Rejected::new(url, "lastUpdated out of range", raw.get()));
            return;
        };
        if session_closed(&v) {
            open.remove(session);
        } else {
            let begin = at(&v, "beginTime")
                .and_then(Value::as_i64)
                .unwrap_or(updated);
            open.insert(session.to_string(), (begin, updated));
        }
        events.push(Event::new(
            format!("{session}@{updated}"),
            time,
            Severity::new(session_severity(&v)),
            raw,
        ));
    }
}

/// The file-event query: the insertion-time window, the configured filters, token paging.
fn file_event_query(
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    token: &str,
    filters: &[crate::settings::Code42Filter],
    v1: bool,
    page_size: u32,
) -> Value {
    let term = if v1 {
        "insertionTimestamp"
    } else {
        "event.inserted"
    };
    let mut groups = vec![json!({"filterClause": "AND", "filters": [
        {"term": term, "operator": "ON_OR_AFTER", "value": iso(since)},
        {"term": term, "operator": "ON_OR_BEFORE", "value": iso(until)},
    ]})];
    for f in filters {
        groups.push(json!({"filterClause": "AND", "filters": [
            {"term": f.term, "operator": f.operator, "value": f.value}
        ]}));
    }
    json!({
        "groupClause": "AND",
        "groups": groups,
        "pgNum": 1,
        "pgSize": page_size,
        "pgToken": token,
        "srtDir": "asc",
        "srtKey": term,
    })
}

/// A v2 (nested) or v1 (flat) file event as an [`Event`]: id, insertion time, risk severity.
/// Err: why the record cannot become an event (it goes to the dead letters).
fn file_event(raw: &RawValue) -> Result<Event, String> {
    let v: Value = serde_json::from_str(raw.get()).map_err(|e| format!("not JSON: {e}"))?;
    let id = text(&v, "event.id")
        .or_else(|| text(&v, "eventId"))
        .filter(|id| !id.is_empty())
        .ok_or("a file event has no event.id (v1: eventId)")?;
    // The insertion time is what the window is on and what `--reset --days` forgets by.
    let inserted = parse_time(text(&v, "event.inserted"))
        .or_else(|| parse_time(text(&v, "insertionTimestamp")))
        .ok_or_else(|| format!("file event {id} has no parseable event.inserted"))?;
    let severity = file_event_severity(&v);
    Ok(Event::new(
        id.to_string(),
        inserted,
        Severity::new(severity),
        raw,
    ))
}

/// A session's severity: the highest score severity (0–4), scaled to 0–10.
fn session_severity(session: &Value) -> u8 {
    const SCALE: [u8; 5] = [0, 3, 5, 8, 10];
    at(session, "scores")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("severity").and_then(Value::as_u64))
        .max()
        .map_or(0, |s| SCALE[s.min(4) as usize])
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
mod tests {
    use super::*;

    #[test]
    fn the_query_windows_on_insertion_time_sorted_ascending_with_a_token() {
        let since = Utc.timestamp_millis_opt(1_700_000_000_000).unwrap();
        let until = since + Duration::hours(1);
        let q = file_event_query(since, until, "", &[], false, 10_000);
        assert_eq!(q["srtKey"], "event.inserted");
        assert_eq!(q["srtDir"], "asc");
        assert_eq!(
            q["pgToken"], "",
            "an empty token selects token paging, never the pgNum cap"
        );
        assert_eq!(
            q["groups"][0]["filters"][0]["value"],
            "2023-11-14T22:13:20.000Z"
        );
        assert_eq!(q["groups"][0]["filters"][1]["operator"], "ON_OR_BEFORE");
        let v1 = file_event_query(since, until, "tok", &[], true, 10);
        assert_eq!(v1["srtKey"], "insertionTimestamp");
        assert_eq!(v1["pgToken"], "tok");
    }

    /// The CEF header's severity (the seventh `|`-separated field).
    fn cef_severity(cef: &crate::encode::cef::CefRecord) -> u8 {
        cef.to_line().split('|').nth(6).unwrap().parse().unwrap()
    }

    #[test]
    fn a_file_event_has_one_severity_in_the_envelope_and_in_cef() {
        let records = [
            json!({"event": {"id": "v2-none", "inserted": "2026-01-01T00:00:00.000Z"}}),
            json!({"eventId": "v1-none", "insertionTimestamp": "2026-01-01T00:00:00.000Z"}),
            json!({"event": {"id": "v2-odd", "inserted": "2026-01-01T00:00:00.000Z"}, "risk": {"severity": "UNHEARD_OF"}}),
            json!({"event": {"id": "v2-high", "inserted": "2026-01-01T00:00:00.000Z"}, "risk": {"severity": "HIGH"}}),
            json!({"eventId": "v1-no-risk", "insertionTimestamp": "2026-01-01T00:00:00.000Z", "riskSeverity": "NO_RISK"}),
        ];
        for record in records {
            let raw = RawValue::from_string(record.to_string()).unwrap();
            let event = file_event(&raw).unwrap();
            assert_eq!(
                event.severity.value(),
                cef_severity(&cef::file_event(&record)),
                "{record}"
            );
        }
    }

    #[test]
    fn cursors_written_by_the_previous_version_are_still_read() {
        let alert: AlertCursor =
            serde_json::from_str(r#"{"since":"2026-01-01T00:00:00.123456Z","skip":3}"#).unwrap();
        assert_eq!(alert.skip, 3);
        assert!(alert.seen.is_empty());
        assert_eq!(
            iso(floor_ms(alert.since)),
            "2026-01-01T00:00:00.123Z",
            "queried at the millisecond"
        );
        let session: SessionCursor = serde_json::from_str(r#"{"page":2}"#).unwrap();
        assert_eq!(session.page, 2);
        assert!(session.open.is_empty() && session.from.is_none());
    }

    #[test]
    fn closed_sessions_are_those_whose_last_state_is_closed() {
        let with = |states: &[&str]| json!({"states": states.iter().map(|s| json!({"state": s})).collect::<Vec<_>>()});
        assert!(session_closed(&with(&["OPEN", "CLOSED_TP"])));
        assert!(!session_closed(&with(&["CLOSED", "OPEN_NEW_DATA"])));
        assert!(!session_closed(&json!({})), "no state: followed");
        assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn session_severity_takes_the_highest_score() {
        let s = json!({"scores": [{"severity": 1}, {"severity": 3}]});
        assert_eq!(session_severity(&s), 8);
        assert_eq!(session_severity(&json!({})), 0);
    }
}
