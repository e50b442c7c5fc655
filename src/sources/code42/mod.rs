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
//! - alerts: `createdAt` at or after the newest one seen (boundary repeats dropped by id).
//! - sessions: sweeps over the sessions begun within `session_window_hours`; each change of a session
//!   (`sessionId`, `lastUpdated`) is forwarded once.
//!
//! Invariant: an event's `time` is the field the cursor windows on, so `backfill --reset --days N`
//! forgets exactly the ids it fetches again.

mod api;
mod auth;
pub mod cef;

use chrono::{DateTime, Duration, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::event::{Event, Page, Partition, Severity};
use crate::settings::{Code42Auth, Code42Settings, Code42Stream, FileEventsApi, Secret};
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

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_time(text: Option<&str>) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Reads a dotted path (`event.inserted`) from a JSON value.
/// Numeric segments index arrays: `destination.tabs.0.url`.
pub(crate) fn at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(value, |v, key| match (v, key.parse::<usize>()) {
            (Value::Array(items), Ok(i)) => items.get(i),
            _ => v.get(key),
        })
}

pub(crate) fn text<'a>(value: &'a Value, path: &str) -> Option<&'a str> {
    at(value, path).and_then(Value::as_str)
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

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AlertCursor {
    since: DateTime<Utc>,
    /// Pages to skip at `since` (only when a whole page shares one `createdAt`).
    #[serde(default)]
    skip: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SessionCursor {
    page: u32,
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
}

impl Code42Source {
    /// A source for `settings` (secret resolved). `lookback` overrides `initial_lookback_hours`.
    pub fn new(
        id: &str,
        settings: Code42Settings,
        http: reqwest::Client,
        lookback: Option<Duration>,
    ) -> Self {
        let secret = settings
            .client_secret
            .clone()
            .unwrap_or_else(|| Secret::new(""));
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
        Code42Source {
            id: id.to_string(),
            settings,
            api,
            lookback,
        }
    }

    fn bad_cursor(&self, stream: &str, e: serde_json::Error) -> SourceError {
        SourceError::BadCursor {
            detail: format!("{} {stream} cursor: {e}", self.id),
        }
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
        let now = Utc::now();
        let filters =
            serde_json::to_value(&self.settings.file_event_filters).unwrap_or(Value::Null);
        let mut c = match cursor {
            Some(text) => {
                serde_json::from_str(text).map_err(|e| self.bad_cursor("file_events", e))?
            }
            None => WindowCursor {
                since: now - self.lookback,
                until: None,
                token: None,
                filters: filters.clone(),
            },
        };
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
                    cursor: Some(serde_json::to_string(&restart).unwrap_or_default()),
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
        let events = page
            .file_events
            .iter()
            .enumerate()
            .map(|(i, raw)| file_event(raw, &url, i))
            .collect::<Result<Vec<_>, _>>()?;
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
            cursor: Some(serde_json::to_string(&next.0).unwrap_or_default()),
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
        let c: AlertCursor = match cursor {
            Some(text) => serde_json::from_str(text).map_err(|e| self.bad_cursor("alerts", e))?,
            None => AlertCursor {
                since: Utc::now() - self.lookback,
                skip: 0,
            },
        };
        let tenant = self.api.tokens().tenant_id().await?;
        let (query_url, details_url) = self.alert_urls().await?;
        let size = self.settings.alert_page_size;
        let body = json!({
            "tenantId": tenant,
            "groupClause": "AND",
            "groups": [{"filterClause": "AND", "filters": [
                {"term": "createdAt", "operator": "ON_OR_AFTER", "value": iso(c.since)}
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
        let summaries: Vec<Value> = page
            .alerts
            .iter()
            .map(|raw| serde_json::from_str(raw.get()))
            .collect::<Result<_, _>>()
            .map_err(|e| SourceError::Malformed {
                url: query_url.clone(),
                detail: e.to_string(),
            })?;
        let ids: Vec<String> = summaries
            .iter()
            .map(|a| text(a, "id").map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| SourceError::Malformed {
                url: query_url.clone(),
                detail: "an alert has no id".into(),
            })?;
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
        let mut events = Vec::with_capacity(ids.len());
        let mut newest = c.since;
        for ((id, summary), raw) in ids.iter().zip(&summaries).zip(&page.alerts) {
            let created =
                parse_time(text(summary, "createdAt")).ok_or_else(|| SourceError::Malformed {
                    url: query_url.clone(),
                    detail: format!("alert {id} has no createdAt"),
                })?;
            newest = newest.max(created);
            let severity = risk_severity(text(summary, "riskSeverity"))
                .or_else(|| risk_severity(text(summary, "severity")))
                .unwrap_or(5);
            let record = details.get(id).unwrap_or(raw);
            events.push(Event::new(
                id.clone(),
                created,
                Severity::new(severity),
                record,
            ));
        }
        let full = events.len() as u32 >= size;
        let next = if events.is_empty() {
            c.clone()
        } else if newest > c.since {
            AlertCursor {
                since: newest,
                skip: 0,
            }
        } else {
            // A whole page at one timestamp: step past it by page number.
            AlertCursor {
                since: c.since,
                skip: c.skip + 1,
            }
        };
        Ok(Page {
            events,
            cursor: Some(serde_json::to_string(&next).unwrap_or_default()),
            more: full,
            ..Page::default()
        })
    }

    async fn poll_sessions(&self, cursor: Option<&str>) -> Result<Page, SourceError> {
        let c: SessionCursor = match cursor {
            Some(text) => serde_json::from_str(text).map_err(|e| self.bad_cursor("sessions", e))?,
            None => SessionCursor { page: 0 },
        };
        let url = format!(
            "{}/v1/sessions",
            self.settings.api_url.trim_end_matches('/')
        );
        let since = Utc::now() - Duration::hours(i64::from(self.settings.session_window_hours));
        let size = self.settings.session_page_size;
        let query = [
            ("on_or_after", since.timestamp_millis().to_string()),
            ("page_number", c.page.to_string()),
            ("page_size", size.to_string()),
        ];
        let page: SessionsPage = self.api.get(&url, &query).await?;
        let mut events = Vec::with_capacity(page.items.len());
        for raw in &page.items {
            let v: Value = serde_json::from_str(raw.get()).map_err(|e| SourceError::Malformed {
                url: url.clone(),
                detail: e.to_string(),
            })?;
            let (Some(session), Some(updated)) = (
                text(&v, "sessionId"),
                at(&v, "lastUpdated").and_then(Value::as_i64),
            ) else {
                return Err(SourceError::Malformed {
                    url,
                    detail: "a session lacks sessionId or lastUpdated".into(),
                });
            };
            let time = Utc
                .timestamp_millis_opt(updated)
                .single()
                .unwrap_or_else(Utc::now);
            events.push(Event::new(
                format!("{session}@{updated}"),
                time,
                Severity::new(session_severity(&v)),
                raw,
            ));
        }
        let full = page.items.len() as u32 >= size;
        let next = SessionCursor {
            page: if full { c.page + 1 } else { 0 },
        };
        Ok(Page {
            events,
            cursor: Some(serde_json::to_string(&next).unwrap_or_default()),
            more: full,
            ..Page::default()
        })
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
fn file_event(raw: &RawValue, url: &str, index: usize) -> Result<Event, SourceError> {
    let v: Value = serde_json::from_str(raw.get()).map_err(|e| SourceError::Malformed {
        url: url.to_string(),
        detail: format!("file event {index}: {e}"),
    })?;
    let id = text(&v, "event.id")
        .or_else(|| text(&v, "eventId"))
        .filter(|id| !id.is_empty())
        .ok_or_else(|| SourceError::Malformed {
            url: url.to_string(),
            detail: format!("file event {index} has no event.id"),
        })?;
    let inserted = parse_time(text(&v, "event.inserted"))
        .or_else(|| parse_time(text(&v, "insertionTimestamp")))
        .unwrap_or_else(Utc::now);
    let severity =
        risk_severity(text(&v, "risk.severity").or_else(|| text(&v, "riskSeverity"))).unwrap_or(0);
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

    async fn partitions(&self) -> Result<Vec<Partition>, SourceError> {
        // Authenticating here makes `check` and start-up fail early on a bad credential.
        self.api.tokens().bearer().await?;
        Ok(self
            .settings
            .streams
            .iter()
            .map(|s| Partition::new(stream_name(*s), ""))
            .collect())
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

    #[test]
    fn session_severity_takes_the_highest_score() {
        let s = json!({"scores": [{"severity": 1}, {"severity": 3}]});
        assert_eq!(session_severity(&s), 8);
        assert_eq!(session_severity(&json!({})), 0);
    }
}
