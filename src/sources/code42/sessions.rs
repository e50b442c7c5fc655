//! Code42 / Incydr sessions: each pass sweeps the sessions begun within the window, then follows,
//! one by one, the sessions last seen open that began before it (see the module doc of
//! `code42`); each change (`sessionId`, `lastUpdated`) is one event.
//!
//! Must not: sleep or retry. Invariant: the followed set stays bounded (a closed, gone or older
//! than 90 days session is dropped from it).

use std::collections::BTreeMap;

use chrono::{Duration, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::Code42Source;
use crate::event::{Event, Page, Rejected, Severity};
use crate::sources::cursor::StoredCursor;
use crate::sources::json_path::{at, text};
use crate::sources::SourceError;

/// The session cursor: the pass in progress and the sessions still open.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(super) struct SessionCursor {
    /// Next `page_number` of the sweep.
    #[serde(default)]
    pub(super) page: u32,
    /// Window start of the pass in progress (epoch ms): `on_or_after` of its sweep, fixed while
    /// the pass lasts so its pages do not shift. `None` between passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) from: Option<i64>,
    /// Set once the sweep is done: the follow phase re-reads open sessions begun before `from`
    /// whose id sorts after this one (`""`: from the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) follow_after: Option<String>,
    /// Sessions last seen in a state that is not closed: `sessionId` → (`beginTime`,
    /// `lastUpdated`), epoch ms.
    #[serde(default)]
    pub(super) open: BTreeMap<String, (i64, i64)>,
}

impl StoredCursor for SessionCursor {}

/// Open sessions older than this are no longer followed: Code42 searches 90 days back (§1.4).
const FOLLOW_HORIZON_DAYS: i64 = 90;

/// Whether a session's current state (its last `states` entry, as `cef.rs` reads it) is closed.
pub(super) fn session_closed(session: &Value) -> bool {
    at(session, "states")
        .and_then(Value::as_array)
        .and_then(|s| s.last())
        .and_then(|s| text(s, "state"))
        .is_some_and(|state| state.to_ascii_uppercase().starts_with("CLOSED"))
}

/// An id as one URL path segment (percent-encoding everything but unreserved characters).
pub(super) fn path_segment(id: &str) -> String {
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
struct SessionsPage {
    #[serde(default)]
    items: Vec<Box<RawValue>>,
}

impl Code42Source {
    fn sessions_url(&self) -> String {
        format!(
            "{}/v1/sessions",
            self.settings.api_url.trim_end_matches('/')
        )
    }

    pub(super) async fn poll_sessions(&self, cursor: Option<&str>) -> Result<Page, SourceError> {
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

/// A session's severity: the highest score severity (0–4), scaled to 0–10.
pub(super) fn session_severity(session: &Value) -> u8 {
    const SCALE: [u8; 5] = [0, 3, 5, 8, 10];
    at(session, "scores")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("severity").and_then(Value::as_u64))
        .max()
        .map_or(0, |s| SCALE[s.min(4) as usize])
}
