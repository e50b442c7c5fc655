//! Sophos Central source: SIEM events and alerts for one tenant, or for every tenant of a partner or
//! organization credential (reference/vendor-apis.md §2).
//!
//! Owns: tenant discovery (whoami, then the paged tenant listing), the cursor (the vendor's opaque
//! `next_cursor`, base64 of `V2_CURSOR|<time>`), the 24-hour horizon and the mapping of records to
//! events (id, `created_at`, severity). Must not: sleep, retry or touch the store. Invariant: a cursor
//! older than the horizon is never sent and never silently replaced — the page says it was clamped.

mod api;
mod auth;
pub mod cef;
pub mod mapping;

use std::collections::HashMap;
use std::sync::RwLock;

use base64::Engine;
use chrono::{DateTime, Duration, Utc};

use crate::event::{Event, Page, Partition, Rejected, Severity};
use crate::settings::{SetupError, SophosSettings, SophosStream};
use crate::shared_text::SharedText;
use crate::sources::cursor::stream_partitions;
use crate::sources::record_fields::FieldText;
use crate::sources::{Source, SourceError};
use api::{Api, SiemItem, SiemPage, TenantPage, Whoami};
use auth::TokenCache;

/// How far back the SIEM API serves data.
const HORIZON: Duration = Duration::hours(24);
/// Stay this far inside the horizon so clock skew never makes a request fall outside it.
const HORIZON_MARGIN: Duration = Duration::minutes(5);

/// The stream name a Sophos SIEM endpoint is stored under.
pub fn stream_name(stream: SophosStream) -> &'static str {
    match stream {
        SophosStream::Events => "events",
        SophosStream::Alerts => "alerts",
    }
}

/// Sophos Central SIEM source.
pub struct SophosSource {
    id: String,
    settings: SophosSettings,
    api: Api,
    /// How far back a poll without a cursor starts.
    lookback: Duration,
    /// Tenant id → data-region host, filled by discovery.
    hosts: RwLock<HashMap<String, String>>,
}

impl SophosSource {
    /// A source for `settings` (secret already resolved). `lookback` overrides
    /// `initial_lookback_hours` (backfill `--days`). Fails when the secret was not resolved.
    pub fn new(
        id: &str,
        settings: SophosSettings,
        http: reqwest::Client,
        lookback: Option<Duration>,
    ) -> Result<Self, SetupError> {
        let secret = settings.credentials(&format!("sources.{id}"))?;
        let tokens = TokenCache::new(
            http.clone(),
            settings.token_url.clone(),
            settings.client_id.clone(),
            secret,
        );
        let lookback =
            lookback.unwrap_or_else(|| Duration::hours(i64::from(settings.initial_lookback_hours)));
        Ok(SophosSource {
            id: id.to_string(),
            api: Api::new(http, tokens),
            settings,
            lookback,
            hosts: RwLock::new(HashMap::new()),
        })
    }

    fn host_of(&self, tenant: &str) -> Option<String> {
        self.hosts.read().ok()?.get(tenant).cloned()
    }

    async fn discover_tenants(&self) -> Result<Vec<(String, String)>, SourceError> {
        let base = self.settings.api_url.trim_end_matches('/');
        let whoami_url = format!("{base}/whoami/v1");
        let who: Whoami = self.api.get(&whoami_url, &[], &[]).await?;
        match who.id_type.as_str() {
            "tenant" => {
                let host = who
                    .api_hosts
                    .data_region
                    .ok_or_else(|| SourceError::Malformed {
                        url: whoami_url.clone(),
                        detail: "tenant identity without apiHosts.dataRegion".into(),
                    })?;
                Ok(vec![(who.id, host)])
            }
            kind @ ("partner" | "organization") => {
                let global = who.api_hosts.global.unwrap_or_else(|| base.to_string());
                let url = format!("{}/{kind}/v1/tenants", global.trim_end_matches('/'));
                let header = if kind == "partner" {
                    "X-Partner-ID"
                } else {
                    "X-Organization-ID"
                };
                let headers = [(header, who.id.as_str())];
                let mut tenants = Vec::new();
                let first: TenantPage = self
                    .api
                    .get(
                        &url,
                        &headers,
                        &[("pageTotal", "true".into()), ("page", "1".into())],
                    )
                    .await?;
                let total = first.pages.as_ref().and_then(|p| p.total).unwrap_or(1);
                tenants.extend(first.items);
                for page in 2..=total {
                    let next: TenantPage = self
                        .api
                        .get(&url, &headers, &[("page", page.to_string())])
                        .await?;
                    tenants.extend(next.items);
                }
                let mut found = Vec::with_capacity(tenants.len());
                for tenant in tenants {
                    match tenant.api_host {
                        Some(host) => found.push((tenant.id, host)),
                        None => tracing::warn!(source = %self.id, tenant = %tenant.id,
                            "tenant has no apiHost (not yet provisioned?); skipping it until the next discovery"),
                    }
                }
                Ok(found)
            }
            other => Err(SourceError::Malformed {
                url: whoami_url,
                detail: format!("unknown idType {other:?}"),
            }),
        }
    }

    /// Where a poll without a usable cursor starts, and whether the horizon cut it short.
    fn start_without_cursor(&self, now: DateTime<Utc>) -> (DateTime<Utc>, Option<String>) {
        let oldest = now - HORIZON + HORIZON_MARGIN;
        let wanted = now - self.lookback;
        if wanted < oldest {
            let why = format!(
                "look-back of {} h reaches past the SIEM API's 24 h horizon; starting at {}",
                self.lookback.num_hours(),
                oldest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            (oldest, Some(why))
        } else {
            (wanted, None)
        }
    }
}

/// The time inside a Sophos cursor (`base64("V2_CURSOR|<RFC 3339>")`), if it has that shape.
pub fn cursor_time(cursor: &str) -> Option<DateTime<Utc>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(cursor)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (_, time) = text.split_once('|')?;
    DateTime::parse_from_rfc3339(time)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn severity(text: Option<&str>) -> Severity {
    // The mapping of Sophos' own SIEM script (siem.py).
    Severity::new(match text {
        Some("low") => 1,
        Some("medium") => 5,
        Some("high") => 8,
        Some("very_high" | "critical") => 10,
        _ => 0,
    })
}

fn parse_time(text: Option<&str>) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The page's items as events; an item that is not an object or has no id is rejected (kept as a
/// dead letter) so that it cannot block its tenant's stream until the data passes the horizon.
/// The events' records share `body`, the text the page was read from.
fn to_events(
    page: &SiemPage<'_>,
    body: &SharedText,
    url: &str,
    now: DateTime<Utc>,
) -> (Vec<Event>, Vec<Rejected>) {
    let mut events = Vec::with_capacity(page.items.len());
    let mut rejected = Vec::new();
    for (i, &raw) in page.items.iter().enumerate() {
        let item: SiemItem = match serde_json::from_str(raw.get()) {
            Ok(item) => item,
            Err(e) => {
                rejected.push(Rejected::new(url, format!("item {i}: {e}"), raw.get()));
                continue;
            }
        };
        let Some(id) = item.id.filter(|id| !id.as_str().is_empty()) else {
            rejected.push(Rejected::new(url, format!("item {i} has no id"), raw.get()));
            continue;
        };
        let served_time = parse_time(item.created_at.as_ref().map(FieldText::as_str))
            .or_else(|| parse_time(item.when.as_ref().map(FieldText::as_str)));
        let event = Event::in_body(
            id.into_string(),
            served_time.unwrap_or(now),
            severity(item.severity.as_ref().map(FieldText::as_str)),
            raw,
            body,
        );
        // An item without a time of its own gets "now" each time it is served: the seen-set must
        // not key it by that, or a repeat would look new.
        events.push(match served_time {
            Some(_) => event,
            None => event.with_key_time(DateTime::<Utc>::UNIX_EPOCH),
        });
    }
    (events, rejected)
}

impl Source for SophosSource {
    fn id(&self) -> &str {
        &self.id
    }

    /// The SIEM API serves at most 24 hours back (`from_date`, and cursors older than that).
    fn horizon(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_secs(24 * 3600))
    }

    async fn partitions(&self) -> Result<Vec<Partition>, SourceError> {
        let mut tenants = self.discover_tenants().await?;
        if !self.settings.tenant_ids.is_empty() {
            for wanted in &self.settings.tenant_ids {
                if !tenants.iter().any(|(id, _)| id == wanted) {
                    tracing::warn!(source = %self.id, tenant = %wanted,
                        "configured tenant id is not visible to this credential");
                }
            }
            tenants.retain(|(id, _)| self.settings.tenant_ids.contains(id));
        }
        if let Ok(mut hosts) = self.hosts.write() {
            hosts.extend(tenants.iter().cloned());
        }
        Ok(tenants
            .iter()
            .flat_map(|(tenant, _)| {
                stream_partitions(
                    self.settings.streams.iter().map(|s| stream_name(*s)),
                    tenant,
                )
            })
            .collect())
    }

    async fn poll(&self, partition: &Partition, cursor: Option<&str>) -> Result<Page, SourceError> {
        let host = self
            .host_of(&partition.tenant)
            .ok_or_else(|| SourceError::Rejected {
                url: self.settings.api_url.clone(),
                detail: format!("tenant {} was not discovered", partition.tenant),
            })?;
        let url = format!(
            "{}/siem/v1/{}",
            host.trim_end_matches('/'),
            partition.stream
        );
        let now = Utc::now();
        let mut query: Vec<(&str, String)> = vec![("limit", self.settings.page_size.to_string())];
        if !self.settings.exclude_types.is_empty() {
            query.push(("exclude_types", self.settings.exclude_types.join(",")));
        }
        if self.settings.collection_delay_minutes > 0 {
            query.push((
                "from_date_offset_minutes",
                self.settings.collection_delay_minutes.to_string(),
            ));
        }
        let mut clamped = None;
        let oldest = now - HORIZON + HORIZON_MARGIN;
        match cursor.map(|c| (c, cursor_time(c))) {
            Some((_, Some(at))) if at < oldest => {
                clamped = Some(format!(
                    "stored cursor at {} is older than the SIEM API's 24 h horizon; resuming at {} \
                     (events in between can no longer be fetched)",
                    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    oldest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ));
                query.push(("from_date", oldest.timestamp().to_string()));
            }
            Some((c, _)) => query.push(("cursor", c.to_string())),
            None => {
                let (from, why) = self.start_without_cursor(now);
                clamped = why;
                query.push(("from_date", from.timestamp().to_string()));
            }
        }
        let body = self
            .api
            .get_body(&url, &[("X-Tenant-ID", partition.tenant.as_str())], &query)
            .await?;
        let page: SiemPage = body.parse()?;
        let (events, rejected) = to_events(&page, body.text(), &url, now);
        Ok(Page {
            events,
            rejected,
            cursor: page
                .next_cursor
                .clone()
                .or_else(|| cursor.map(str::to_string)),
            more: page.has_more,
            cursor_clamped: clamped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_time_reads_the_documented_shape() {
        // Decoded from the SIEM integration's own test fixture.
        let t = cursor_time("VjJfQ1VSU09SfDIwMTktMDQtMDFUMTg6MjU6NDEuNjA2Wg==").unwrap();
        assert_eq!(
            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "2019-04-01T18:25:41.606Z"
        );
        assert_eq!(cursor_time("not base64 at all"), None);
    }

    #[test]
    fn severity_follows_the_vendor_script() {
        assert_eq!(severity(Some("none")).value(), 0);
        assert_eq!(severity(Some("low")).value(), 1);
        assert_eq!(severity(Some("medium")).value(), 5);
        assert_eq!(severity(Some("high")).value(), 8);
        assert_eq!(severity(Some("very_high")).value(), 10);
    }

    #[test]
    fn item_records_are_slices_of_their_page_not_copies() {
        let body = SharedText::from(String::from(
            r#"{"has_more":false,"items":[{"id":"a1","created_at":"2026-01-01T00:00:00Z"}]}"#,
        ));
        let page: SiemPage = serde_json::from_str(body.as_str()).unwrap();
        let (events, _) = to_events(&page, &body, "http://h/siem/v1/events", Utc::now());
        assert!(events[0].record.same_buffer_as(&body));
        assert_eq!(
            events[0].record.as_str(),
            r#"{"id":"a1","created_at":"2026-01-01T00:00:00Z"}"#
        );
    }

    #[test]
    fn an_item_without_id_is_rejected_naming_the_url_and_the_rest_kept() {
        let page: SiemPage = serde_json::from_str(
            r#"{"has_more":false,"items":[{"type":"x"},{"id":"a1","created_at":"2026-01-01T00:00:00Z"},"text"]}"#,
        )
        .unwrap();
        let (events, rejected) = to_events(
            &page,
            &SharedText::default(),
            "http://h/siem/v1/events",
            Utc::now(),
        );
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].id, "a1");
        assert_eq!(rejected.len(), 2);
        assert_eq!(rejected[0].url, "http://h/siem/v1/events");
        assert_eq!(rejected[0].reason, "item 0 has no id");
        assert_eq!(rejected[0].record, r#"{"type":"x"}"#);
        assert!(
            rejected[1].reason.starts_with("item 2: "),
            "{:?}",
            rejected[1]
        );
    }
}
