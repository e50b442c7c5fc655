//! Jamf Pro (formerly Casper) source: computer inventory, incrementally, and fleet views derived
//! from full passes (reference/vendor-apis.md §4).
//!
//! Owns: requests (at most `max_connections` in flight, Jamf's guidance is 5), the inventory cursor
//! and the fleet pass. CEF mapping lives in `cef.rs`, the views in `fleet.rs`. Must not: sleep,
//! retry or touch the store.
//!
//! - `inventory` (Jamf Pro API v3, or v1): keyset on `general.reportDate` — filter
//!   `general.reportDate>="<cursor>"`, sort `general.reportDate:asc,id:asc`, always page 0 (a page
//!   number only to step past a page that is all one report date). Dedup on (id, reportDate): a
//!   computer is forwarded again only when it reported again; one that reports during a pass moves
//!   to the end of the order and is read once, with its new date.
//! - `inventory` (Classic API): the computer list, then each `/computers/id/{id}`, `page_size` at a
//!   time; records whose `report_date_epoch` is at or after the time the previous pass started.
//! - fleet views: one full pass per interval (Jamf Pro API pages sorted by id, fetched
//!   concurrently; or the Classic list), shared by every fleet stream of the source.

mod auth;
pub mod cef;
mod fleet;

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::{Mutex, Semaphore};

use crate::event::{Event, Page, Partition, Severity};
use crate::settings::{JamfApi, JamfAuth, JamfSettings, Secret};
use crate::sources::http::{read_json, send};
use crate::sources::{Source, SourceError};
use auth::Tokens;
pub use fleet::stream_name;
use fleet::FleetBuilder;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct KeysetCursor {
    /// Report date of the last computer read (ISO, as Jamf wrote it).
    #[serde(default)]
    since: Option<String>,
    /// Pages to skip at `since` (only when a whole page shares one report date).
    #[serde(default)]
    skip: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ClassicCursor {
    /// Report dates at or after this (epoch ms) are forwarded.
    #[serde(default)]
    since_ms: i64,
    /// Position in the sorted computer list.
    #[serde(default)]
    index: usize,
    /// When the pass under way started (epoch ms).
    #[serde(default)]
    pass_started_ms: i64,
}

#[derive(Deserialize)]
struct InventoryPage {
    #[serde(rename = "totalCount", default)]
    total_count: u64,
    #[serde(default)]
    results: Vec<Box<RawValue>>,
}

#[derive(Deserialize)]
struct ClassicList {
    #[serde(default)]
    computers: Vec<ClassicListItem>,
}

#[derive(Deserialize)]
struct ClassicListItem {
    id: u64,
}

#[derive(Deserialize)]
struct ClassicRecord {
    computer: Box<RawValue>,
}

/// The last fleet pass, shared by the fleet streams.
#[derive(Default)]
struct FleetCache {
    started: Option<Instant>,
    pass_at: Option<DateTime<Utc>>,
    pending: HashMap<&'static str, Vec<Event>>,
}

/// Jamf Pro source.
pub struct JamfSource {
    id: String,
    settings: JamfSettings,
    url: String,
    http: reqwest::Client,
    tokens: Tokens,
    limiter: Semaphore,
    fleet: Mutex<FleetCache>,
}

fn iso_ms(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn field<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn str_field<'a>(v: &'a Value, path: &str) -> &'a str {
    field(v, path).and_then(Value::as_str).unwrap_or_default()
}

/// A Classic computer record in the Jamf Pro API's shape, for the fleet views.
fn classic_as_pro(c: &Value) -> Value {
    let list = |path: &str| -> Value {
        Value::Array(
            field(c, path)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|item| match item {
                    Value::String(name) => serde_json::json!({"name": name}),
                    other => other.clone(),
                })
                .collect(),
        )
    };
    let id = field(c, "general.id")
        .map(|v| v.to_string().trim_matches('"').to_string())
        .unwrap_or_default();
    let report = field(c, "general.report_date_epoch")
        .and_then(Value::as_i64)
        .map(iso_ms)
        .unwrap_or_default();
    serde_json::json!({
        "id": id,
        "general": {"name": str_field(c, "general.name"), "lastIpAddress": str_field(c, "general.ip_address"), "reportDate": report},
        "hardware": {"make": str_field(c, "hardware.make"), "model": str_field(c, "hardware.model"),
                     "serialNumber": str_field(c, "general.serial_number"), "macAddress": str_field(c, "general.mac_address")},
        "operatingSystem": {"name": str_field(c, "hardware.os_name"), "version": str_field(c, "hardware.os_version")},
        "userAndLocation": {"username": str_field(c, "location.username")},
        "applications": list("software.applications"),
        "plugins": list("software.plugins"),
        "services": list("software.running_services"),
        "softwareUpdates": list("software.available_software_updates"),
    })
}

impl JamfSource {
    /// A source for `settings` (secrets resolved).
    pub fn new(id: &str, settings: JamfSettings, http: reqwest::Client) -> Self {
        let (user, secret) = match settings.auth {
            JamfAuth::ApiClient => (settings.client_id.clone(), settings.client_secret.clone()),
            JamfAuth::User | JamfAuth::Basic => {
                (settings.username.clone(), settings.password.clone())
            }
        };
        let url = settings.url.trim_end_matches('/').to_string();
        let tokens = Tokens::new(
            http.clone(),
            settings.auth,
            &url,
            &user.unwrap_or_default(),
            secret.unwrap_or_else(|| Secret::new("")),
        );
        JamfSource {
            id: id.to_string(),
            limiter: Semaphore::new(settings.max_connections as usize),
            settings,
            url,
            http,
            tokens,
            fleet: Mutex::new(FleetCache::default()),
        }
    }

    /// `GET path` as JSON, holding one of the `max_connections` permits; renews a token once on 401.
    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, SourceError> {
        let url = format!("{}{path}", self.url);
        let _permit = self
            .limiter
            .acquire()
            .await
            .map_err(|_| SourceError::Unavailable {
                url: url.clone(),
                detail: "source is shutting down".into(),
                retry_after: None,
            })?;
        let mut renewed = false;
        loop {
            let request = self
                .http
                .get(&url)
                .query(query)
                .header("Accept", "application/json");
            let (request, token) = self.tokens.authorize(request).await?;
            let response = send(request, &url).await?;
            if response.status() == reqwest::StatusCode::UNAUTHORIZED && !renewed {
                if let Some(token) = token {
                    self.tokens.invalidate(&token).await;
                    renewed = true;
                    continue;
                }
            }
            return read_json(response).await;
        }
    }

    fn inventory_path(&self) -> &'static str {
        match self.settings.api {
            JamfApi::V1 => "/api/v1/computers-inventory",
            _ => "/api/v3/computers-inventory",
        }
    }

    fn sections(&self) -> Vec<(&'static str, String)> {
        let mut query = vec![("section", "GENERAL".to_string())];
        for section in &self.settings.sections {
            if !section.eq_ignore_ascii_case("GENERAL") {
                query.push(("section", section.to_ascii_uppercase()));
            }
        }
        query
    }

    async fn poll_inventory(&self, cursor: Option<&str>) -> Result<Page, SourceError> {
        let c: KeysetCursor = match cursor {
            Some(text) => serde_json::from_str(text).map_err(|e| SourceError::BadCursor {
                detail: format!("{} inventory: {e}", self.id),
            })?,
            None => KeysetCursor::default(),
        };
        let size = self.settings.page_size;
        let mut query = self.sections();
        query.push(("page", c.skip.to_string()));
        query.push(("page-size", size.to_string()));
        query.push(("sort", "general.reportDate:asc,id:asc".into()));
        if let Some(since) = &c.since {
            query.push(("filter", format!("general.reportDate>=\"{since}\"")));
        }
        let page: InventoryPage = self.get(self.inventory_path(), &query).await?;
        let url = format!("{}{}", self.url, self.inventory_path());
        let mut events = Vec::with_capacity(page.results.len());
        let mut last: Option<String> = None;
        for raw in &page.results {
            let v: Value = serde_json::from_str(raw.get()).map_err(|e| SourceError::Malformed {
                url: url.clone(),
                detail: e.to_string(),
            })?;
            let id = str_field(&v, "id");
            let report = str_field(&v, "general.reportDate");
            let time = parse_time(report).ok_or_else(|| SourceError::Malformed {
                url: url.clone(),
                detail: format!("computer {id}: general.reportDate {report:?} is not a time (request the GENERAL section)"),
            })?;
            events.push(Event::new(
                format!("{id}@{report}"),
                time,
                Severity::new(0),
                raw,
            ));
            last = Some(report.to_string());
        }
        let next = match last {
            None => c.clone(),
            Some(last) if Some(&last) != c.since.as_ref() => KeysetCursor {
                since: Some(last),
                skip: 0,
            },
            Some(_) => KeysetCursor {
                since: c.since.clone(),
                skip: c.skip + 1,
            },
        };
        Ok(Page {
            more: page.results.len() as u32 >= size && page.total_count > u64::from(size),
            events,
            cursor: Some(serde_json::to_string(&next).unwrap_or_default()),
            ..Page::default()
        })
    }

    async fn classic_ids(&self) -> Result<Vec<u64>, SourceError> {
        let list: ClassicList = self.get("/JSSResource/computers", &[]).await?;
        let mut ids: Vec<u64> = list.computers.into_iter().map(|c| c.id).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    async fn classic_records(&self, ids: &[u64]) -> Result<Vec<Box<RawValue>>, SourceError> {
        let paths: Vec<String> = ids
            .iter()
            .map(|id| format!("/JSSResource/computers/id/{id}"))
            .collect();
        let fetched =
            futures_util::future::join_all(paths.iter().map(|p| self.get::<ClassicRecord>(p, &[])))
                .await;
        fetched.into_iter().map(|r| r.map(|r| r.computer)).collect()
    }

    async fn poll_inventory_classic(&self, cursor: Option<&str>) -> Result<Page, SourceError> {
        let mut c: ClassicCursor = match cursor {
            Some(text) => serde_json::from_str(text).map_err(|e| SourceError::BadCursor {
                detail: format!("{} inventory: {e}", self.id),
            })?,
            None => ClassicCursor::default(),
        };
        if c.index == 0 {
            c.pass_started_ms = Utc::now().timestamp_millis();
        }
        let ids = self.classic_ids().await?;
        let end = (c.index + self.settings.page_size as usize).min(ids.len());
        let batch = ids.get(c.index..end).unwrap_or_default();
        let records = self.classic_records(batch).await?;
        let mut events = Vec::new();
        for raw in &records {
            let v: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
            let Some(epoch) = field(&v, "general.report_date_epoch").and_then(Value::as_i64) else {
                continue;
            };
            if epoch >= c.since_ms {
                let id = field(&v, "general.id")
                    .map(|v| v.to_string())
                    .unwrap_or_default();
                let time = Utc
                    .timestamp_millis_opt(epoch)
                    .single()
                    .unwrap_or_else(Utc::now);
                events.push(Event::new(
                    format!("{id}@{epoch}"),
                    time,
                    Severity::new(0),
                    raw,
                ));
            }
        }
        let done = end >= ids.len();
        let next = if done {
            ClassicCursor {
                since_ms: c.pass_started_ms,
                index: 0,
                pass_started_ms: 0,
            }
        } else {
            ClassicCursor { index: end, ..c }
        };
        Ok(Page {
            events,
            cursor: Some(serde_json::to_string(&next).unwrap_or_default()),
            more: !done,
            ..Page::default()
        })
    }

    /// One full pass over every computer, fed to the fleet views.
    async fn full_pass(&self) -> Result<HashMap<&'static str, Vec<Event>>, SourceError> {
        let pass_at = Utc::now();
        let mut builder = FleetBuilder::new(&self.settings.streams, pass_at);
        let add = |builder: &mut FleetBuilder, raw: &RawValue| {
            if let Ok(v) = serde_json::from_str::<Value>(raw.get()) {
                builder.add(&v);
            }
        };
        if self.settings.api == JamfApi::Classic {
            let ids = self.classic_ids().await?;
            for chunk in ids.chunks(self.settings.page_size as usize) {
                for raw in self.classic_records(chunk).await? {
                    if let Ok(v) = serde_json::from_str::<Value>(raw.get()) {
                        builder.add(&classic_as_pro(&v));
                    }
                }
            }
            return Ok(builder.finish());
        }
        let size = self.settings.page_size;
        let query = |page: u64| {
            let mut q = self.sections();
            q.push(("page", page.to_string()));
            q.push(("page-size", size.to_string()));
            q.push(("sort", "id:asc".into()));
            q
        };
        // Sorted by id, a computer that reports during the pass keeps its place: none is skipped
        // or read twice. Pages after the first go out together, `max_connections` at a time.
        let first: InventoryPage = self.get(self.inventory_path(), &query(0)).await?;
        for raw in &first.results {
            add(&mut builder, raw);
        }
        let pages = first.total_count.div_ceil(u64::from(size));
        let queries: Vec<_> = (1..pages).map(query).collect();
        let rest = futures_util::future::join_all(
            queries
                .iter()
                .map(|q| self.get::<InventoryPage>(self.inventory_path(), q)),
        )
        .await;
        for page in rest {
            for raw in &page?.results {
                add(&mut builder, raw);
            }
        }
        Ok(builder.finish())
    }

    async fn poll_fleet(&self, stream: &str) -> Result<Page, SourceError> {
        let mut cache = self.fleet.lock().await;
        let interval = std::time::Duration::from_secs_f64(self.settings.interval_secs / 2.0);
        let stale = cache.started.is_none_or(|t| t.elapsed() >= interval);
        let taken_all = cache.pending.values().all(Vec::is_empty);
        if stale || (taken_all && cache.pass_at.is_none()) {
            let started = Instant::now();
            let views = self.full_pass().await?;
            *cache = FleetCache {
                started: Some(started),
                pass_at: Some(Utc::now()),
                pending: views,
            };
        }
        let events = cache
            .pending
            .iter_mut()
            .find(|(name, _)| **name == stream)
            .map(|(_, events)| std::mem::take(events))
            .unwrap_or_default();
        let cursor = cache
            .pass_at
            .map(|t| serde_json::json!({"pass_at": t}).to_string());
        Ok(Page {
            events,
            cursor,
            more: false,
            ..Page::default()
        })
    }
}

impl Source for JamfSource {
    fn id(&self) -> &str {
        &self.id
    }

    async fn partitions(&self) -> Result<Vec<Partition>, SourceError> {
        // Authenticate now, so start-up and `check` fail early on a bad credential.
        let (_, _) = self.tokens.authorize(self.http.get(&self.url)).await?;
        Ok(self
            .settings
            .streams
            .iter()
            .map(|s| Partition::new(stream_name(*s), ""))
            .collect())
    }

    async fn poll(&self, partition: &Partition, cursor: Option<&str>) -> Result<Page, SourceError> {
        match (partition.stream.as_str(), self.settings.api) {
            ("inventory", JamfApi::Classic) => self.poll_inventory_classic(cursor).await,
            ("inventory", _) => self.poll_inventory(cursor).await,
            (stream, _) => self.poll_fleet(stream).await,
        }
    }
}
