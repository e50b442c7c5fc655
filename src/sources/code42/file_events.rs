//! Code42 / Incydr file events: a window on `event.inserted` (server clock), read in ascending
//! order with `pgToken` paging; the query and a record read into an event (see the module doc of
//! `code42`).
//!
//! Must not: page with `pgNum` (it stops at 10 000), sleep or retry. Invariant:
//! `INVALID_PAGE_TOKEN` and a change of filters restart the window from its stored `since`, never
//! from the beginning of history.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::api::{Reply, FORENSIC_SEARCH};
use super::{file_event_severity, iso, parse_time, risk_severity, Code42Source};
use crate::event::{Event, Page, Rejected, Severity};
use crate::settings::{Code42Auth, FileEventsApi};
use crate::shared_text::SharedText;
use crate::sources::cursor::StoredCursor;
use crate::sources::json_envelope::{read_envelope, ListItem};
use crate::sources::json_path::text;
use crate::sources::record_fields::{FieldText, Object};
use crate::sources::SourceError;

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

/// A page as read from the body, in one pass: each record read for its fields and made an
/// event whose record is a slice of the body (not a copy), or a rejected record.
pub(super) struct FileEventsPage {
    /// The events of `fileEvents`, in order.
    pub(super) events: Vec<Event>,
    /// The records of `fileEvents` that cannot be events.
    pub(super) rejected: Vec<Rejected>,
    /// `nextPgToken`.
    next_pg_token: Option<String>,
    /// `problems`.
    problems: Option<Value>,
}

impl FileEventsPage {
    /// Reads `body`, the response to `url` (for rejected records), expecting about `size` events.
    /// Err: why it is not a page of file events.
    pub(super) fn read(body: &SharedText, url: &str, size: usize) -> Result<Self, String> {
        let mut events = Vec::with_capacity(size);
        let mut rejected = Vec::new();
        let envelope = read_envelope(
            body.as_str(),
            "fileEvents",
            |record: ListItem<Object<FileEventFields>>| match read_file_event(
                record.text,
                record.fields,
                body,
            ) {
                Ok(event) => events.push(event),
                Err(reason) => rejected.push(Rejected::new(url, reason, record.text)),
            },
        )?;
        Ok(FileEventsPage {
            events,
            rejected,
            next_pg_token: envelope.other::<Option<String>>("nextPgToken")?.flatten(),
            problems: envelope.other::<Value>("problems")?,
        })
    }
}

impl Code42Source {
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

    pub(super) async fn poll_file_events(&self, cursor: Option<&str>) -> Result<Page, SourceError> {
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
        let reply = self.api.post_for_body(&url, &body).await?;
        let page = match &reply {
            Reply::Page(body) => body.read_with(|text| {
                FileEventsPage::read(text, &url, self.settings.page_size as usize)
            })?,
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
        let FileEventsPage {
            events,
            rejected,
            next_pg_token,
            ..
        } = page;
        let next = match next_pg_token.filter(|t| !t.is_empty()) {
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
}

/// The file-event query: the insertion-time window, the configured filters, token paging.
pub(super) fn file_event_query(
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

/// The fields of a file event secrelay reads, v2 (nested) and v1 (flat), borrowed from the body.
#[derive(Deserialize)]
pub(super) struct FileEventFields<'a> {
    #[serde(borrow, default)]
    event: Option<Object<V2Event<'a>>>,
    #[serde(borrow, default)]
    risk: Option<Object<V2Risk<'a>>>,
    #[serde(rename = "eventId", borrow, default)]
    event_id: Option<FieldText<'a>>,
    #[serde(rename = "insertionTimestamp", borrow, default)]
    insertion_timestamp: Option<FieldText<'a>>,
    #[serde(rename = "riskSeverity", borrow, default)]
    risk_severity: Option<FieldText<'a>>,
}

/// `event` of a v2 file event.
#[derive(Deserialize)]
struct V2Event<'a> {
    #[serde(borrow, default)]
    id: Option<FieldText<'a>>,
    #[serde(borrow, default)]
    inserted: Option<FieldText<'a>>,
}

/// `risk` of a v2 file event.
#[derive(Deserialize)]
struct V2Risk<'a> {
    #[serde(borrow, default)]
    severity: Option<FieldText<'a>>,
}

/// A v2 (nested) or v1 (flat) file event as an [`Event`]: id, insertion time, risk severity.
/// Err: why the record cannot become an event (it goes to the dead letters).
///
/// The fields are read without building the record's tree. A record of unusual shape (a field
/// of another type than documented, a key twice) is read the general way instead, through a
/// [`Value`], which gives the same answers as before for every record.
///
/// `body` is the response text `raw` was read from: the event's record shares it.
#[cfg(test)]
pub(super) fn file_event(
    raw: &serde_json::value::RawValue,
    body: &SharedText,
) -> Result<Event, String> {
    let fields = serde_json::from_str::<Object<FileEventFields>>(raw.get()).ok();
    read_file_event(raw.get(), fields, body)
}

/// [`file_event`] of a record of a page: `record` is its text, which serde_json has read (as
/// `fields` when it reads as them, `None` when it does not).
fn read_file_event(
    record: &str,
    fields: Option<Object<FileEventFields>>,
    body: &SharedText,
) -> Result<Event, String> {
    let Some(Object(fields)) = fields else {
        return file_event_from_value(record, body);
    };
    let (v2_id, v2_inserted) = match &fields.event {
        Some(Object(event)) => (event.id.as_ref(), event.inserted.as_ref()),
        None => (None, None),
    };
    let id = v2_id
        .or(fields.event_id.as_ref())
        .map(FieldText::as_str)
        .filter(|id| !id.is_empty())
        .ok_or("a file event has no event.id (v1: eventId)")?;
    let inserted = parse_time(v2_inserted.map(FieldText::as_str))
        .or_else(|| parse_time(fields.insertion_timestamp.as_ref().map(FieldText::as_str)))
        .ok_or_else(|| format!("file event {id} has no parseable event.inserted"))?;
    let v2_severity = fields
        .risk
        .as_ref()
        .and_then(|Object(risk)| risk.severity.as_ref());
    let severity = risk_severity(
        v2_severity
            .or(fields.risk_severity.as_ref())
            .map(FieldText::as_str),
    )
    .unwrap_or(5);
    Ok(Event::in_body_json(
        id.to_string(),
        inserted,
        Severity::new(severity),
        record,
        body,
    ))
}

/// [`file_event`] for a record of unusual shape, read through a [`Value`].
fn file_event_from_value(record: &str, body: &SharedText) -> Result<Event, String> {
    let v: Value = serde_json::from_str(record).map_err(|e| format!("not JSON: {e}"))?;
    let id = text(&v, "event.id")
        .or_else(|| text(&v, "eventId"))
        .filter(|id| !id.is_empty())
        .ok_or("a file event has no event.id (v1: eventId)")?;
    // The insertion time is what the window is on and what `--reset --days` forgets by.
    let inserted = parse_time(text(&v, "event.inserted"))
        .or_else(|| parse_time(text(&v, "insertionTimestamp")))
        .ok_or_else(|| format!("file event {id} has no parseable event.inserted"))?;
    let severity = file_event_severity(&v);
    Ok(Event::in_body_json(
        id.to_string(),
        inserted,
        Severity::new(severity),
        record,
        body,
    ))
}
