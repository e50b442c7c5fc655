//! Code42 / Incydr alerts: `createdAt` ON_OR_AFTER a millisecond, read page by page with the ids
//! already delivered at that millisecond, and each alert's details (observations) fetched in
//! batches (see the module doc of `code42`).
//!
//! Must not: sleep or retry. Invariant: only a FULL page that lies wholly at `since` steps the
//! page on; a short page ends the pass with the page back at 0.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::api::{Reply, ALERT_SERVICE};
use super::{iso, parse_time, risk_severity, Code42Source};
use crate::event::{Event, Page, Rejected, Severity};
use crate::settings::Code42Auth;
use crate::sources::cursor::StoredCursor;
use crate::sources::json_path::text;
use crate::sources::SourceError;

/// Alert ids per `query-details` request (the API's limit).
const DETAILS_BATCH: usize = 100;

/// The alert cursor: `createdAt` on or after `since`, and the ids already delivered at `since`
/// (as the Incydr CLI keeps them, reference §1.8). Reads the `{"since", "skip"}` cursors of
/// earlier versions (`seen` empty: the seen-set drops the repeats).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(super) struct AlertCursor {
    /// Lower bound (inclusive) of `createdAt`, at the millisecond the query is sent with.
    pub(super) since: DateTime<Utc>,
    /// Ids of the alerts in `since`'s millisecond already delivered.
    #[serde(default)]
    pub(super) seen: Vec<String>,
    /// The `pgNum` to read at `since`: above 0 only while FULL pages of alerts in `since`'s
    /// millisecond are being stepped over.
    #[serde(default)]
    pub(super) skip: u32,
}

impl StoredCursor for AlertCursor {}

/// A time truncated to the millisecond, the precision of query filters (§1.4).
pub(super) fn floor_ms(t: DateTime<Utc>) -> DateTime<Utc> {
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

#[derive(Deserialize)]
struct AlertsPage {
    #[serde(default)]
    alerts: Vec<Box<RawValue>>,
}

impl Code42Source {
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

    pub(super) async fn poll_alerts(&self, cursor: Option<&str>) -> Result<Page, SourceError> {
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
}
