//! The fleet pass: one walk of the whole fleet per interval (Jamf Pro API pages sorted by id, or
//! the Classic list), shared by every fleet stream of the source. Each stream reads it page by
//! page with its own cursor; pages are fetched once (`max_connections` ahead) and dropped when
//! every stream has read them; the counters are summed page by page and sent in page-sized chunks
//! at the end. The views themselves are built in `fleet.rs`.
//!
//! Must not: sleep, retry, or hold more than a few pages (memory does not grow with the fleet).
//! Invariant: a stream that stopped polling cannot hold a pass (pages kept are bounded and a
//! stalled pass is replaced).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::classic::classic_as_pro;
use super::fleet::{stream_name, FleetBuilder};
use super::inventory::InventoryPage;
use super::redact::without_secrets;
use super::JamfSource;
use crate::event::{Event, Page};
use crate::settings::{JamfApi, JamfStream};
use crate::sources::cursor::StoredCursor;
use crate::sources::SourceError;

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
pub(super) struct FleetPass {
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

impl JamfSource {
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

    pub(super) async fn poll_fleet(
        &self,
        stream: &str,
        cursor: Option<&str>,
    ) -> Result<Page, SourceError> {
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
