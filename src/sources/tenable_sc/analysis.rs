//! Tenable.sc analysis requests: the `POST /rest/analysis` query for a window `[since, until]`
//! sorted by its window field, one page of it read into events and dead letters, and a group of
//! ties read whole.
//!
//! Must not: move a cursor (the caller does) or trust an offset across requests. Invariant:
//! `totalRecords`/`endOffset` that do not parse are a malformed response, never zero.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::finding::{finding, int, window_field, window_time};
use super::TenableScSource;
use crate::event::{Event, Rejected};
use crate::settings::TenableStream;
use crate::sources::SourceError;

/// What one analysis request returned.
pub(super) struct Fetched {
    /// The rows that became events.
    pub(super) events: Vec<Event>,
    /// Rows that could not become events.
    pub(super) rejected: Vec<Rejected>,
    /// Rows in the response, good or not.
    pub(super) rows: u64,
    /// The newest readable window time among them.
    pub(super) newest: Option<i64>,
    /// Whether every readable window time in the response equals this one.
    pub(super) all_at: Option<i64>,
    /// `totalRecords`, when the server sent a readable one.
    pub(super) total: Option<i64>,
    /// `endOffset`, when the server sent a readable one.
    pub(super) end: Option<i64>,
}

/// An analysis answer, its rows borrowed from the response text.
#[derive(Deserialize)]
struct AnalysisPage<'a> {
    #[serde(rename = "totalRecords", default)]
    total_records: Option<String>,
    #[serde(rename = "endOffset", default)]
    end_offset: Option<String>,
    #[serde(default, borrow)]
    results: Vec<&'a RawValue>,
}

impl TenableScSource {
    /// One analysis request for `[since, until]`, rows `start..end`.
    pub(super) async fn fetch(
        &self,
        stream: TenableStream,
        since: i64,
        until: i64,
        start: u64,
        end: u64,
    ) -> Result<Fetched, SourceError> {
        let url = format!("{}/analysis", self.base);
        let body = self.query(stream, since, until, start, end);
        let payload = self.post("analysis", &body).await?;
        let page: AnalysisPage =
            serde_json::from_str(payload.get()).map_err(|e| SourceError::Malformed {
                url: url.clone(),
                detail: format!("analysis response: {e}"),
            })?;
        let total = page
            .total_records
            .as_deref()
            .map(|t| int(t, "totalRecords", &url))
            .transpose()?;
        let end = page
            .end_offset
            .as_deref()
            .map(|t| int(t, "endOffset", &url))
            .transpose()?;
        let mut fetched = Fetched {
            events: Vec::with_capacity(page.results.len()),
            rejected: Vec::new(),
            rows: page.results.len() as u64,
            newest: None,
            all_at: None,
            total,
            end,
        };
        let mut times = Vec::with_capacity(page.results.len());
        for &raw in &page.results {
            match finding(raw, stream, &url) {
                Ok((event, window)) => {
                    times.extend(window);
                    fetched.events.push(event);
                }
                Err(e) => {
                    times.extend(window_time(raw, stream));
                    let reason = match e {
                        SourceError::Malformed { detail, .. } => detail,
                        other => other.to_string(),
                    };
                    fetched
                        .rejected
                        .push(Rejected::new(&url, reason, raw.get()));
                }
            }
        }
        fetched.newest = times.iter().copied().max();
        fetched.all_at = fetched.newest.filter(|n| times.iter().all(|t| t == n));
        Ok(fetched)
    }

    /// Every row whose window time is `at`, in one response: asks for `total` rows (the size of a
    /// window that holds the group, so at least the group), and again with twice as many while
    /// the answer fills what was asked.
    pub(super) async fn read_group(
        &self,
        stream: TenableStream,
        at: i64,
        total: Option<i64>,
        size: u64,
    ) -> Result<Fetched, SourceError> {
        let mut want = total.map_or(size * 2, |t| u64::try_from(t).unwrap_or(0).max(size * 2));
        loop {
            let group = self.fetch(stream, at, at, 0, want).await?;
            if group.rows < want {
                if group.rows > size * 10 {
                    tracing::warn!(source = %self.id, rows = group.rows, at,
                        "many findings share one window time; read them in one response");
                }
                return Ok(group);
            }
            want *= 2;
        }
    }

    fn query(&self, stream: TenableStream, since: i64, until: i64, start: u64, end: u64) -> Value {
        let field = window_field(stream);
        let mut filters = vec![
            json!({"filterName": field, "operator": "=", "value": format!("{since}-{until}")}),
        ];
        filters.extend(self.settings.filters.iter().map(|f| json!(f)));
        let mut query = json!({
            "tool": self.settings.tool,
            "type": "vuln",
            "filters": filters,
            "startOffset": start,
            "endOffset": end,
        });
        if let Some(id) = self.settings.query_id {
            query["id"] = json!(id);
        }
        json!({
            "type": "vuln",
            "sourceType": if stream == TenableStream::Patched { "patched" } else { "cumulative" },
            "sortField": field,
            "sortDir": "ASC",
            "query": query,
        })
    }
}
