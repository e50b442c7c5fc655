//! The Jamf Pro API inventory stream (v3, or v1): a keyset on `general.reportDate`, read page by
//! page with the ids already read at the boundary (see the module doc of `jamf`).
//!
//! Must not: make requests other than the inventory page, sleep or retry. Invariant: the cursor
//! steps by page only past a FULL page that is all `since`; a short page sends it back to page 0.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::redact::without_secrets;
use super::JamfSource;
use crate::event::{Event, Page, Rejected, Severity};
use crate::sources::cursor::StoredCursor;
use crate::sources::json_path::text_or_empty;
use crate::sources::SourceError;

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

#[derive(Deserialize)]
pub(super) struct InventoryPage {
    #[serde(rename = "totalCount", default)]
    pub(super) total_count: u64,
    #[serde(default)]
    pub(super) results: Vec<Box<RawValue>>,
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

impl JamfSource {
    pub(super) async fn poll_inventory(&self, cursor: Option<&str>) -> Result<Page, SourceError> {
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
        // Should the cursor stay at `since`: the ids read there, this page's included.
        let mut seen_at_since = c.seen.clone();
        seen_at_since.extend(new_at_since);
        seen_at_since.extend(rejected_ids);
        let next = match newest {
            Some((time, text)) if since.is_none_or(|s| time > s) && !late_tie => KeysetCursor {
                since: Some(text),
                seen: at_newest,
                skip: 0,
                rewalks: 0,
                found: false,
            },
            Some(_) if late_tie => KeysetCursor {
                since: c.since.clone(),
                seen: seen_at_since,
                skip: 0,
                rewalks: c.rewalks + 1,
                found: false,
            },
            // Everything readable was at `since` (or nothing was readable): step to the next
            // page only past a full one; after a short one, start at page 0 again.
            _ => KeysetCursor {
                since: c.since.clone(),
                seen: seen_at_since,
                skip: if full { c.skip + 1 } else { 0 },
                rewalks: if full { c.rewalks } else { 0 },
                found: full && found,
            },
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
}
