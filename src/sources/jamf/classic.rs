//! The Classic API (`/JSSResource`): the computer list, the records of a batch of ids fetched
//! together, the Classic inventory stream, and a Classic record in the Jamf Pro API's shape (for
//! the fleet views).
//!
//! Must not: sleep or retry. Invariant: the inventory pass resumes after the last id processed,
//! never at a position (which a deletion would shift); a computer deleted since the list was taken
//! is left out, not an error.

use chrono::{SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::redact::without_secrets;
use super::JamfSource;
use crate::event::{Event, Page, Rejected, Severity};
use crate::sources::cursor::StoredCursor;
use crate::sources::json_path::{at, text_or_empty};
use crate::sources::SourceError;

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

fn iso_ms(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A Classic computer record in the Jamf Pro API's shape, for the fleet views.
pub(super) fn classic_as_pro(c: &Value) -> Value {
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
    pub(super) async fn classic_ids(&self) -> Result<Vec<u64>, SourceError> {
        let list: ClassicList = self.get("/JSSResource/computers", &[]).await?;
        let mut ids: Vec<u64> = list.computers.into_iter().map(|c| c.id).collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// The records of `ids`, fetched concurrently (within `max_connections`); computers deleted
    /// since the list was taken are left out.
    pub(super) async fn classic_records(
        &self,
        ids: &[u64],
    ) -> Result<Vec<Box<RawValue>>, SourceError> {
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

    pub(super) async fn poll_inventory_classic(
        &self,
        cursor: Option<&str>,
    ) -> Result<Page, SourceError> {
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
}
