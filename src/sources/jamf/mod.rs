//! Jamf Pro (formerly Casper) source: computer inventory, incrementally, and fleet views derived
//! from full passes (reference/vendor-apis.md §4).
//!
//! Owns: requests (at most `max_connections` in flight, Jamf's guidance is 5), the inventory cursor
//! and the fleet pass. CEF mapping lives in `cef.rs`, the views in `fleet.rs`. Must not: sleep,
//! retry or touch the store.
//!
//! - `inventory` (Jamf Pro API v3, or v1): keyset on `general.reportDate` — filter
//!   `general.reportDate>="<since>"`, sort `general.reportDate:asc,id:asc`. The cursor keeps
//!   `since` and the ids already read at `since` (the `>=` filter repeats them); it steps by page
//!   only past a FULL page that is all `since`, and a short page sends it back to page 0, so a
//!   quiet poll never moves it and a late tie at `since` is still found. Dedup on (id,
//!   reportDate): a computer is forwarded again only when it reported again; one that reports
//!   during a pass moves to the end of the order and is read once, with its new date.
//! - `inventory` (Classic API): the computer list (ids ascending), then each
//!   `/computers/id/{id}`, `page_size` at a time, resuming after the last id processed (not at a
//!   position, which a deletion would shift); records whose `report_date_epoch` is at or after the
//!   start of the previous pass, less an hour for clock disagreement.
//! - fleet views: one pass per interval (Jamf Pro API pages sorted by id, or the Classic list),
//!   shared by every fleet stream of the source, streamed: each stream reads the pass page by page
//!   with its own cursor (`more = true` until its last page), pages are fetched once
//!   (`max_connections` ahead) and dropped when every stream has read them, and the counters are
//!   summed page by page and sent in page-sized chunks at the end. Memory is a few pages, whatever
//!   the fleet size. A computer deleted during a pass may shift another out of this pass's views
//!   (pages are offsets); the next pass has it.
//!
//! Records that cannot become events (no id, a report date that is no time) go to
//! `Page::rejected` and the cursor moves past them. Fields named like a password or secret
//! (Classic `management_password_sha256`) are removed from every record, at any depth, before any
//! event or view is built: the only change made to a vendor record.

mod auth;
pub mod cef;
mod fleet;
pub mod mapping;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::{Mutex, Semaphore};

use crate::event::{Event, Page, Partition, Rejected, Severity};
use crate::settings::{JamfApi, JamfSettings, JamfStream, SetupError};
use crate::sources::cursor::{stream_partitions, StoredCursor};
use crate::sources::http::{read_json, send};
use crate::sources::json_path::{at, text_or_empty};
use crate::sources::{Source, SourceError};
use auth::Tokens;
pub use fleet::stream_name;
use fleet::FleetBuilder;

/// The Jamf Pro API inventory cursor. Stored as JSON; every field has a default, so cursors
/// written by earlier versions (`{"since", "skip"}`) still load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct KeysetCursor {
    /// Report date of the last computer read (as Jamf wrote it; compared as a time).
    #[serde(default)]
    since: Option<String>,
    /// Ids of the computers already read with report date `since` (the `>=` filter repeats them).
    #[serde(default)]
    seen: Vec<String>,
    /// Pages to skip at `since`: only ever set after a FULL page that was all `since`, and back
    /// to 0 after a short one, so a tie at `since` that appears later is still found.
    #[serde(default)]
    skip: u32,
    /// Times the pages of `since` were walked again because a late tie was detected.
    #[serde(default)]
    rewalks: u8,
    /// The walk under way over the pages of `since` found ids not seen before.
    #[serde(default)]
    found: bool,
}

impl StoredCursor for KeysetCursor {}

/// Walks of one report date's pages again, at most, before the cursor moves on regardless.
const MAX_REWALKS: u8 = 3;

/// The Classic inventory cursor. Stored as JSON; every field has a default, so cursors written
/// by earlier versions (`{"since_ms", "index", "pass_started_ms"}`) still load.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ClassicCursor {
    /// Report dates at or after this (epoch ms) are forwarded.
    #[serde(default)]
    since_ms: i64,
    /// Earlier versions: position in the sorted computer list (read only, to resume once).
    #[serde(default, skip_serializing)]
    index: usize,
    /// The last computer id processed in the pass under way; the next batch is the ids above it.
    #[serde(default)]
    after_id: Option<u64>,
    /// When the pass under way started (epoch ms).
    #[serde(default)]
    pass_started_ms: i64,
}

impl StoredCursor for ClassicCursor {}

/// How far before the start of the previous Classic pass report dates are still forwarded: the
/// server's clock (`report_date_epoch`) and ours may disagree; repeats inside it are deduplicated.
const CLASSIC_CLOCK_OVERLAP_MS: i64 = 3_600_000;

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

/// Cursor of a fleet stream: the pass it reads and where it is in it. Stored as JSON; every field
/// has a default, so the `{"pass_at"}` cursors of earlier versions load (as a finished pass).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct FleetCursor {
    /// Start of the pass (also part of the fleet counters' ids).
    #[serde(default)]
    pass_at: Option<DateTime<Utc>>,
    /// Next page of the pass to read; `None` once the stream finished the pass.
    #[serde(default)]
    page: Option<u64>,
    /// `fleet_counters`, after the last page: counters already sent.
    #[serde(default)]
    sent: u64,
}

impl StoredCursor for FleetCursor {}

/// The fleet pass under way, shared by the fleet streams (memory only: a restart starts a pass).
struct FleetPass {
    pass_at: DateTime<Utc>,
    started: Instant,
    /// Pages in the pass, as last known (`totalCount`, or the Classic list); `None` before the
    /// first page.
    page_count: Option<u64>,
    /// Classic: the ids of the pass, ascending, from the list taken when it started.
    classic_ids: Vec<u64>,
    /// Fetched pages (computers in the Jamf Pro API shape, secrets removed) not yet read by every
    /// stream.
    pages: BTreeMap<u64, Arc<Vec<Box<RawValue>>>>,
    /// Per stream, the next page it will read.
    next_page: BTreeMap<&'static str, u64>,
    /// Streams that finished the pass.
    finished: BTreeSet<&'static str>,
    /// `fleet_counters`: summed page by page, then the finished counter events.
    counters: Option<FleetBuilder>,
    counter_events: Option<Vec<Event>>,
}

/// Pages kept beyond what the streams still need at most, so a stream that stopped polling cannot
/// make a pass hold the fleet (it fetches an evicted page again).
const FLEET_PAGES_KEPT: usize = 4;

/// Half-intervals after which a pass is replaced even if a stream has not finished it (a
/// partition that stopped polling must not stop the others' passes).
const STALLED_PASS_INTERVALS: u32 = 8;

/// Jamf Pro source.
pub struct JamfSource {
    id: String,
    settings: JamfSettings,
    url: String,
    http: reqwest::Client,
    tokens: Tokens,
    limiter: Semaphore,
    fleet: Mutex<Option<FleetPass>>,
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

/// Words that mark a field as a password or a secret (or its hash), compared against the field
/// name lower-cased without separators: `management_password_sha256`, `passwordHash`, `secret`.
const SECRET_WORDS: [&str; 4] = ["password", "passwd", "passphrase", "secret"];

fn is_secret_name(name: &str) -> bool {
    let folded: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    SECRET_WORDS.iter().any(|w| folded.contains(w))
}

/// Removes every field named like a password or secret, at any depth; true when one was removed.
fn strip_secrets(v: &mut Value) -> bool {
    match v {
        Value::Object(map) => {
            let before = map.len();
            map.retain(|k, _| !is_secret_name(k));
            let mut removed = map.len() != before;
            for child in map.values_mut() {
                removed |= strip_secrets(child);
            }
            removed
        }
        Value::Array(items) => items.iter_mut().fold(false, |r, i| strip_secrets(i) | r),
        _ => false,
    }
}

/// `raw` parsed, with secret-looking fields removed (see [`strip_secrets`]), and the text to
/// forward: the vendor's own text when nothing was removed (key order intact).
fn without_secrets(raw: &RawValue) -> Result<(Value, Box<RawValue>), serde_json::Error> {
    let mut v: Value = serde_json::from_str(raw.get())?;
    if strip_secrets(&mut v) {
        let text = RawValue::from_string(v.to_string())?;
        Ok((v, text))
    } else {
        Ok((v, raw.to_owned()))
    }
}

/// A Classic computer record in the Jamf Pro API's shape, for the fleet views.
fn classic_as_pro(c: &Value) -> Value {
    let list = |path: &str| -> Value {
        Value::Array(
            at(c, path)
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
    let id = at(c, "general.id")
        .map(|v| v.to_string().trim_matches('"').to_string())
        .unwrap_or_default();
    let report = at(c, "general.report_date_epoch")
        .and_then(Value::as_i64)
        .map(iso_ms)
        .unwrap_or_default();
    serde_json::json!({
        "id": id,
        "general": {"name": text_or_empty(c, "general.name"), "lastIpAddress": text_or_empty(c, "general.ip_address"), "reportDate": report},
        "hardware": {"make": text_or_empty(c, "hardware.make"), "model": text_or_empty(c, "hardware.model"),
                     "serialNumber": text_or_empty(c, "general.serial_number"), "macAddress": text_or_empty(c, "general.mac_address")},
        "operatingSystem": {"name": text_or_empty(c, "hardware.os_name"), "version": text_or_empty(c, "hardware.os_version")},
        "userAndLocation": {"username": text_or_empty(c, "location.username")},
        "applications": list("software.applications"),
        "plugins": list("software.plugins"),
        "services": list("software.running_services"),
        "softwareUpdates": list("software.available_software_updates"),
    })
}

impl JamfSource {
    /// A source for `settings` (secrets resolved). Fails when the auth mode's credentials were
    /// not resolved.
    pub fn new(
        id: &str,
        settings: JamfSettings,
        http: reqwest::Client,
    ) -> Result<Self, SetupError> {
        let credentials = settings.credentials(&format!("sources.{id}"))?;
        let url = settings.url.trim_end_matches('/').to_string();
        let tokens = Tokens::new(
            http.clone(),
            settings.auth,
            &url,
            &credentials.user,
            credentials.secret,
        );
        Ok(JamfSource {
            id: id.to_string(),
            limiter: Semaphore::new(settings.max_connections as usize),
            settings,
            url,
            http,
            tokens,
            fleet: Mutex::new(None),
        })
    }

    /// `GET path` as JSON, holding one of the `max_connections` permits; renews a token once on 401.
    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, SourceError> {
        match self.get_unless_missing(path, query, false).await? {
            Some(t) => Ok(t),
            None => Err(SourceError::Rejected {
                url: format!("{}{path}", self.url),
                detail: "HTTP 404 Not Found".into(),
            }),
        }
    }

    /// As [`Self::get`]; with `missing_ok`, a 404 (a computer deleted since the list) is `None`.
    async fn get_unless_missing<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        missing_ok: bool,
    ) -> Result<Option<T>, SourceError> {
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
            if missing_ok && response.status() == reqwest::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            return read_json(response).await.map(Some);
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
        let c = KeysetCursor::load(cursor, &self.id, "inventory", KeysetCursor::default)?;
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
        let since = c.since.as_deref().and_then(parse_time);
        let mut events = Vec::with_capacity(page.results.len());
        let mut rejected = Vec::new();
        // The latest report date on the page (as written) and the ids read at it; and the ids
        // read at `since` not read before.
        let mut newest: Option<(DateTime<Utc>, String)> = None;
        let mut at_newest: Vec<String> = Vec::new();
        let mut new_at_since: Vec<String> = Vec::new();
        // Whether the page reaches records newer than `since`.
        let mut past_since = false;
        for raw in &page.results {
            let unreadable = |record: &str, id: Option<&str>, reason: String| {
                (Rejected::new(&url, reason, record), id.map(str::to_string))
            };
            let (v, record) = match without_secrets(raw) {
                Ok(parsed) => parsed,
                Err(e) => {
                    rejected.push(unreadable(raw.get(), None, format!("not a record: {e}")));
                    continue;
                }
            };
            let id = text_or_empty(&v, "id").to_string();
            if id.is_empty() {
                rejected.push(unreadable(
                    record.get(),
                    None,
                    "computer without an id".into(),
                ));
                continue;
            }
            let report = text_or_empty(&v, "general.reportDate");
            let Some(time) = parse_time(report) else {
                let reason = format!("computer {id}: general.reportDate {report:?} is not a time");
                rejected.push(unreadable(record.get(), Some(&id), reason));
                continue;
            };
            past_since |= since.is_some_and(|s| time > s);
            if since == Some(time) {
                if c.seen.contains(&id) {
                    // A boundary repeat: delivered with the page that first read it.
                    continue;
                }
                new_at_since.push(id.clone());
            }
            match &newest {
                Some((t, _)) if *t == time => at_newest.push(id.clone()),
                Some((t, _)) if *t > time => {}
                _ => {
                    newest = Some((time, report.to_string()));
                    at_newest = vec![id.clone()];
                }
            }
            events.push(Event::new(
                format!("{id}@{report}"),
                time,
                Severity::new(0),
                &record,
            ));
        }
        // Rejected records at `since` count as read there (they are in the dead letters).
        // (Marked, so that the computer's next, readable version at `since` is not skipped.)
        let rejected_ids: Vec<String> = rejected
            .iter()
            .filter_map(|(_, id)| id.as_ref().map(|id| format!("!{id}")))
            .filter(|id| !c.seen.contains(id))
            .collect();
        let rejected: Vec<Rejected> = rejected.into_iter().map(|(r, _)| r).collect();
        let full = page.results.len() as u64 >= u64::from(size);
        // Past full pages of `since`, a page that reaches newer records may have shifted while
        // the earlier pages were read: a computer dated `since` late (a tie) or one that moved
        // on (re-reported) shifts the later ones, so one may have slipped into a page already
        // read. Walk the pages of `since` again before moving on, until a walk finds nothing
        // new (at most MAX_REWALKS times, so this always ends).
        let found = c.found || !new_at_since.is_empty() || !rejected_ids.is_empty();
        let late_tie =
            c.skip > 0 && past_since && (c.rewalks == 0 || found) && c.rewalks < MAX_REWALKS;
        let next = match newest {
            Some((time, text)) if since.is_none_or(|s| time > s) && !late_tie => KeysetCursor {
                since: Some(text),
                seen: at_newest,
                skip: 0,
                rewalks: 0,
                found: false,
            },
            Some(_) if late_tie => {
                let mut seen = c.seen.clone();
                seen.extend(new_at_since);
                seen.extend(rejected_ids);
                KeysetCursor {
                    since: c.since.clone(),
                    seen,
                    skip: 0,
                    rewalks: c.rewalks + 1,
                    found: false,
                }
            }
            // Everything readable was at `since` (or nothing was readable): step to the next
            // page only past a full one; after a short one, start at page 0 again.
            _ => {
                let mut seen = c.seen.clone();
                seen.extend(new_at_since);
                seen.extend(rejected_ids);
                KeysetCursor {
                    since: c.since.clone(),
                    seen,
                    skip: if full { c.skip + 1 } else { 0 },
                    rewalks: if full { c.rewalks } else { 0 },
                    found: full && found,
                }
            }
        };
        let mut next = next;
        next.seen.sort();
        next.seen.dedup();
        let full = full || late_tie;
        Ok(Page {
            more: full,
            events,
            cursor: Some(next.save()),
            rejected,
            ..Page::default()
        })
    }

    async fn classic_ids(&self) -> Result<Vec<u64>, SourceError> {
        let list: ClassicList = self.get("/JSSResource/computers", &[]).await?;
        let mut ids: Vec<u64> = list.computers.into_iter().map(|c| c.id).collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// The records of `ids`, fetched concurrently (within `max_connections`); computers deleted
    /// since the list was taken are left out.
    async fn classic_records(&self, ids: &[u64]) -> Result<Vec<Box<RawValue>>, SourceError> {
        let paths: Vec<String> = ids
            .iter()
            .map(|id| format!("/JSSResource/computers/id/{id}"))
            .collect();
        let fetched = futures_util::future::join_all(
            paths
                .iter()
                .map(|p| self.get_unless_missing::<ClassicRecord>(p, &[], true)),
        )
        .await;
        let mut records = Vec::with_capacity(fetched.len());
        for r in fetched {
            if let Some(r) = r? {
                records.push(r.computer);
            }
        }
        Ok(records)
    }

    async fn poll_inventory_classic(&self, cursor: Option<&str>) -> Result<Page, SourceError> {
        let mut c = ClassicCursor::load(cursor, &self.id, "inventory", ClassicCursor::default)?;
        let ids = self.classic_ids().await?;
        if c.after_id.is_none() && c.index > 0 {
            // Written by an earlier version (a position): go on after the id now there, once.
            c.after_id = Some(ids.get(c.index - 1).copied().unwrap_or(u64::MAX));
        }
        if c.after_id.is_none() {
            c.pass_started_ms = Utc::now().timestamp_millis();
        }
        let start = c
            .after_id
            .map_or(0, |after| ids.partition_point(|id| *id <= after));
        let end = (start + self.settings.page_size as usize).min(ids.len());
        let batch = ids.get(start..end).unwrap_or_default();
        let records = self.classic_records(batch).await?;
        let url = format!("{}/JSSResource/computers/id/{{id}}", self.url);
        let since_ms = c.since_ms.saturating_sub(CLASSIC_CLOCK_OVERLAP_MS);
        let mut events = Vec::new();
        let mut rejected = Vec::new();
        for raw in &records {
            let (v, record) = match without_secrets(raw) {
                Ok(parsed) => parsed,
                Err(e) => {
                    rejected.push(Rejected::new(&url, format!("not a record: {e}"), raw.get()));
                    continue;
                }
            };
            let Some(id) = at(&v, "general.id").and_then(Value::as_u64) else {
                rejected.push(Rejected::new(
                    &url,
                    "computer without general.id",
                    record.get(),
                ));
                continue;
            };
            let time = at(&v, "general.report_date_epoch")
                .and_then(Value::as_i64)
                .and_then(|epoch| Some((epoch, Utc.timestamp_millis_opt(epoch).single()?)));
            let Some((epoch, time)) = time else {
                rejected.push(Rejected::new(
                    url.replace("{id}", &id.to_string()),
                    format!("computer {id}: no general.report_date_epoch"),
                    record.get(),
                ));
                continue;
            };
            if epoch >= since_ms {
                events.push(Event::new(
                    format!("{id}@{epoch}"),
                    time,
                    Severity::new(0),
                    &record,
                ));
            }
        }
        let done = end >= ids.len();
        let next = if done {
            ClassicCursor {
                since_ms: c.pass_started_ms,
                ..ClassicCursor::default()
            }
        } else {
            ClassicCursor {
                after_id: batch.last().copied(),
                index: 0,
                ..c
            }
        };
        Ok(Page {
            events,
            cursor: Some(next.save()),
            more: !done,
            rejected,
            ..Page::default()
        })
    }

    /// The fleet streams configured (every stream but `inventory`).
    fn fleet_streams(&self) -> Vec<&'static str> {
        self.settings
            .streams
            .iter()
            .filter(|s| **s != JamfStream::Inventory)
            .map(|s| stream_name(*s))
            .collect()
    }

    /// A new pass: for Classic, the id list it will walk.
    async fn start_pass(&self) -> Result<FleetPass, SourceError> {
        let size = u64::from(self.settings.page_size);
        let (classic_ids, page_count) = if self.settings.api == JamfApi::Classic {
            let ids = self.classic_ids().await?;
            let pages = (ids.len() as u64).div_ceil(size);
            (ids, Some(pages))
        } else {
            (Vec::new(), None)
        };
        let pass_at = Utc::now();
        let counters = self
            .settings
            .streams
            .contains(&JamfStream::FleetCounters)
            .then(|| FleetBuilder::new(&[JamfStream::FleetCounters], pass_at));
        Ok(FleetPass {
            pass_at,
            started: Instant::now(),
            page_count,
            classic_ids,
            pages: BTreeMap::new(),
            next_page: BTreeMap::new(),
            finished: BTreeSet::new(),
            counters,
            counter_events: None,
        })
    }

    /// Page `number` of the pass as computers in the Jamf Pro API shape, secrets removed.
    async fn fetch_fleet_page(
        &self,
        pass: &FleetPass,
        number: u64,
    ) -> Result<(Vec<Box<RawValue>>, Option<u64>), SourceError> {
        let size = u64::from(self.settings.page_size);
        let mut out = Vec::new();
        if self.settings.api == JamfApi::Classic {
            let from = (number * size) as usize;
            let ids = pass
                .classic_ids
                .get(from..(from + size as usize).min(pass.classic_ids.len()))
                .unwrap_or_default();
            for raw in self.classic_records(ids).await? {
                if let Ok((v, _)) = without_secrets(&raw) {
                    if let Ok(pro) = RawValue::from_string(classic_as_pro(&v).to_string()) {
                        out.push(pro);
                    }
                }
            }
            return Ok((out, None));
        }
        let mut query = self.sections();
        query.push(("page", number.to_string()));
        query.push(("page-size", size.to_string()));
        query.push(("sort", "id:asc".into()));
        let page: InventoryPage = self.get(self.inventory_path(), &query).await?;
        for raw in page.results {
            if let Ok((_, text)) = without_secrets(&raw) {
                out.push(text);
            }
        }
        Ok((out, Some(page.total_count.div_ceil(size))))
    }

    /// Makes sure page `number` is held, fetching it and the next `max_connections - 1` pages
    /// not held yet together.
    async fn hold_fleet_page(&self, pass: &mut FleetPass, number: u64) -> Result<(), SourceError> {
        if pass.pages.contains_key(&number) {
            return Ok(());
        }
        let ahead = match (self.settings.api, pass.page_count) {
            (JamfApi::Classic, _) | (_, None) => 1,
            (_, Some(count)) => u64::from(self.settings.max_connections)
                .max(1)
                .min(count.saturating_sub(number).max(1)),
        };
        let wanted: Vec<u64> = (number..number + ahead)
            .filter(|n| !pass.pages.contains_key(n))
            .collect();
        let shared: &FleetPass = pass;
        let fetched = futures_util::future::join_all(
            wanted.iter().map(|n| self.fetch_fleet_page(shared, *n)),
        )
        .await;
        for (n, result) in wanted.into_iter().zip(fetched) {
            let (computers, count) = result?;
            if let Some(count) = count {
                pass.page_count = Some(count);
            }
            pass.pages.insert(n, Arc::new(computers));
        }
        Ok(())
    }

    async fn poll_fleet(&self, stream: &str, cursor: Option<&str>) -> Result<Page, SourceError> {
        let streams = self.fleet_streams();
        let Some(&stream) = streams.iter().find(|s| **s == stream) else {
            return Ok(Page::default());
        };
        let c = FleetCursor::load(cursor, &self.id, stream, FleetCursor::default)?;
        let size = self.settings.page_size as usize;
        let mut guard = self.fleet.lock().await;
        let interval = std::time::Duration::from_secs_f64(self.settings.interval_secs / 2.0);
        // Where this stream is: in the pass under way, at a page; or to join or start one.
        let in_pass = guard.as_ref().is_some_and(|p| Some(p.pass_at) == c.pass_at);
        let mut page_number = match (in_pass, c.page) {
            (true, Some(page)) => page,
            (true, None) => {
                // A new pass once every stream finished this one (or, should one have stopped
                // polling, after a few intervals).
                let pass = guard.as_ref().filter(|p| {
                    let due = p.started.elapsed();
                    due >= interval
                        && (streams.iter().all(|s| p.finished.contains(s))
                            || due >= interval * STALLED_PASS_INTERVALS)
                });
                if pass.is_none() {
                    // Finished this pass, and the next is not due yet.
                    return Ok(Page {
                        cursor: cursor.map(str::to_string),
                        ..Page::default()
                    });
                }
                *guard = Some(self.start_pass().await?);
                0
            }
            (false, _) => {
                // Not in the pass under way (a restart, or a pass started while it was in an
                // older one): join it from its first page, or start one.
                if guard.is_none() {
                    *guard = Some(self.start_pass().await?);
                }
                0
            }
        };
        let Some(pass) = guard.as_mut() else {
            return Ok(Page::default());
        };
        let pass_at = pass.pass_at;
        let mut events = Vec::new();
        let page_count = |pass: &FleetPass| pass.page_count.unwrap_or(1);
        if page_number < page_count(pass) {
            self.hold_fleet_page(pass, page_number).await?;
            let computers = pass.pages.get(&page_number).cloned().unwrap_or_default();
            if stream == "fleet_counters" {
                if let Some(counters) = pass.counters.as_mut() {
                    for raw in computers.iter() {
                        if let Ok(v) = serde_json::from_str::<Value>(raw.get()) {
                            counters.add(&v);
                        }
                    }
                }
            } else {
                let kind = self
                    .settings
                    .streams
                    .iter()
                    .copied()
                    .filter(|s| stream_name(*s) == stream)
                    .collect::<Vec<_>>();
                let mut builder = FleetBuilder::new(&kind, pass_at);
                for raw in computers.iter() {
                    if let Ok(v) = serde_json::from_str::<Value>(raw.get()) {
                        builder.add(&v);
                    }
                }
                events = builder.finish().remove(stream).unwrap_or_default();
            }
            page_number += 1;
        }
        let mut next = FleetCursor {
            pass_at: Some(pass_at),
            page: Some(page_number),
            sent: c.sent,
        };
        let pages_left = page_number < page_count(pass);
        if !pages_left && stream == "fleet_counters" {
            // The counters, once the last page is summed, in page-sized chunks.
            if pass.counter_events.is_none() {
                pass.counter_events = Some(
                    pass.counters
                        .take()
                        .map(|b| b.finish().remove("fleet_counters").unwrap_or_default())
                        .unwrap_or_default(),
                );
            }
            let all = pass.counter_events.as_deref().unwrap_or_default();
            let from = (next.sent as usize).min(all.len());
            let to = (from + size.saturating_sub(events.len()).max(1)).min(all.len());
            events.extend(all[from..to].iter().cloned());
            next.sent = to as u64;
            if to < all.len() {
                return Ok(self.fleet_page(pass, stream, events, next, true));
            }
        }
        let more = pages_left;
        if !more {
            next = FleetCursor {
                pass_at: Some(pass_at),
                page: None,
                sent: 0,
            };
        }
        Ok(self.fleet_page(pass, stream, events, next, more))
    }

    /// Records where `stream` is in the pass, drops pages every stream has read, and builds the
    /// page to return.
    fn fleet_page(
        &self,
        pass: &mut FleetPass,
        stream: &'static str,
        events: Vec<Event>,
        next: FleetCursor,
        more: bool,
    ) -> Page {
        match next.page {
            Some(page) if more => {
                pass.next_page.insert(stream, page);
            }
            _ => {
                pass.finished.insert(stream);
                pass.next_page.remove(stream);
            }
        }
        let streams = self.fleet_streams();
        let still_needed = streams
            .iter()
            .filter(|s| !pass.finished.contains(*s))
            .map(|s| pass.next_page.get(s).copied().unwrap_or(0))
            .min()
            .unwrap_or(u64::MAX);
        pass.pages.retain(|n, _| *n >= still_needed);
        let keep = FLEET_PAGES_KEPT + self.settings.max_connections as usize;
        while pass.pages.len() > keep {
            pass.pages.pop_first();
        }
        Page {
            events,
            cursor: Some(next.save()),
            more,
            ..Page::default()
        }
    }
}

impl Source for JamfSource {
    fn id(&self) -> &str {
        &self.id
    }

    async fn partitions(&self) -> Result<Vec<Partition>, SourceError> {
        // Authenticate now, so start-up and `check` fail early on a bad credential.
        let (_, _) = self.tokens.authorize(self.http.get(&self.url)).await?;
        Ok(stream_partitions(
            self.settings.streams.iter().map(|s| stream_name(*s)),
            "",
        ))
    }

    async fn poll(&self, partition: &Partition, cursor: Option<&str>) -> Result<Page, SourceError> {
        match (partition.stream.as_str(), self.settings.api) {
            ("inventory", JamfApi::Classic) => self.poll_inventory_classic(cursor).await,
            ("inventory", _) => self.poll_inventory(cursor).await,
            (stream, _) => self.poll_fleet(stream, cursor).await,
        }
    }
}
