//! CEF mapping of Code42 records: file events (v1 flat and v2 nested to the same keys), alerts and
//! sessions.
//!
//! Owns: which Code42 field becomes which CEF key. Must not: escape or frame (see `encode::cef`).
//!
//! File events — header `CEF:0|Code42|Incydr|1|<class>|<action>|<severity>|`. Class from the v1
//! `eventType` or the v2 `event.action`: created → C42200, modified → C42201, deleted → C42202,
//! read by an application → C42203, emailed → C42204, anything else C42000 (code42cli's default).
//! Severity from the risk severity (NO_RISK 0, LOW 3, MODERATE 5, HIGH 8, CRITICAL 10), 5 when
//! the event has none (code42cli's default): `super::file_event_severity`, the rule the envelope
//! uses too.
//!
//! Where several fields map to one key, the first present wins, in this order:
//! - `suser`: actor, then deviceUserName, then emailSender (v2: `user.email`, then
//!   `source.email.sender`);
//! - `duser`: sharedWith, then emailRecipients (v2: `destination.user.email`, then
//!   `destination.email.recipients`);
//! - `filePath`: filePath, then url (v2: `file.directory`, then `file.url`).
//!
//! `cloudDriveId` is not sent as `aid` (a consumer-only key): it goes to `cs5` labelled
//! `Code42CloudDriveId`. `externalId` is limited to 40 bytes by the CEF dictionary and Code42 ids are
//! longer, so the whole id also goes to `cs6` labelled `Code42FileEventId`. Lists are joined with
//! `,`. Timestamps are epoch milliseconds.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::file_event_view::{joined, FieldValue, FileEventView, ObjectList, V2Media};
use super::risk_severity;
use crate::encode::cef::CefRecord;

const VENDOR: &str = "Code42";
const PRODUCT: &str = "Incydr";
const VERSION: &str = "1";

/// A field as text: strings as they are, numbers and booleans printed, lists joined with `,`
/// (v1 `sharedWith` entries by their `cloudUsername`), empty and null as nothing.
fn as_text(value: Option<&Value>) -> Option<String> {
    let text = match value? {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => {
            let parts: Vec<String> = items
                .iter()
                .filter_map(|item| match item {
                    Value::Object(o) => as_text(o.get("cloudUsername").or_else(|| o.get("name"))),
                    other => as_text(Some(other)),
                })
                .collect();
            parts.join(",")
        }
        Value::Object(_) => return None,
    };
    (!text.is_empty()).then_some(text)
}

fn time(value: Option<&Value>) -> Option<DateTime<Utc>> {
    match value? {
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        Value::Number(n) => n.as_i64().and_then(DateTime::from_timestamp_millis),
        _ => None,
    }
}

/// The signature id of a v1 `eventType` or v2 `event.action`.
pub fn class_id(action: &str) -> &'static str {
    let a = action.to_ascii_lowercase().replace('_', "-");
    if a == "created" || a.ends_with("-created") {
        "C42200"
    } else if a == "modified" || a.ends_with("-modified") {
        "C42201"
    } else if a == "deleted" || a.ends_with("-deleted") {
        "C42202"
    } else if a == "read-by-app" || a == "application-read" {
        "C42203"
    } else if a == "emailed" || a.ends_with("-emailed") || a == "email-sent" {
        "C42204"
    } else {
        "C42000"
    }
}

/// A file event (v1 or v2) as CEF.
pub fn file_event(record: &Value) -> CefRecord {
    file_event_of(&FileEventView::of_value(record))
}

/// [`file_event`] of a record given as its JSON text: the same line, read without building the
/// record's tree.
pub fn file_event_text(record: &str) -> CefRecord {
    let mut parsed = None;
    file_event_of(&FileEventView::of_text(record, &mut parsed))
}

/// The v2 field where the record is v2, else the v1 one.
fn pick<'v, 'a>(
    v2: bool,
    flat: &'v FieldValue<'a>,
    nested: Option<&'v FieldValue<'a>>,
) -> &'v FieldValue<'a> {
    const NULL: &FieldValue<'static> = &FieldValue::Null;
    if v2 {
        nested.unwrap_or(NULL)
    } else {
        flat
    }
}

/// The texts of `field` of the objects of a v2 list, joined with `,`; empty without a list.
fn list_text<'v, 'a: 'v, T>(
    list: Option<&'v ObjectList<T>>,
    field: impl Fn(&'v T) -> &'v FieldValue<'a>,
) -> Cow<'v, str> {
    list.and_then(|l| l.0.as_ref())
        .and_then(|items| joined(items.iter().flatten().map(field)))
        .map_or(Cow::Borrowed(""), Cow::Owned)
}

fn file_event_of<'v, 'a>(v: &'v FileEventView<'a>) -> CefRecord {
    let v2 = v.is_v2();
    let event = v.event.0.as_ref();
    let user = v.user.0.as_ref();
    let source = v.source.nested.as_ref();
    let destination = v.destination.0.as_ref();
    let file = v.file.0.as_ref();
    let process = v.process.0.as_ref();
    let risk = v.risk.0.as_ref();
    let text = |flat: &'v FieldValue<'a>, nested: Option<&'v FieldValue<'a>>| -> Cow<'v, str> {
        pick(v2, flat, nested).text().unwrap_or_default()
    };
    let time =
        |flat: &FieldValue<'_>, nested: Option<&FieldValue<'_>>| pick(v2, flat, nested).time();
    let action = text(&v.event_type, event.map(|e| &e.action));
    // The same rule as the envelope's severity (`super::file_event_severity`), so both say the
    // same of one event: v2's `risk.severity`, else v1's `riskSeverity`, whichever model.
    let severity = risk_severity(
        risk.and_then(|r| r.severity.as_str())
            .or_else(|| v.risk_severity.as_str()),
    )
    .unwrap_or(5);
    let mut cef = CefRecord::new(
        VENDOR,
        PRODUCT,
        VERSION,
        class_id(&action),
        &action,
        severity,
    );
    let id = text(&v.event_id, event.map(|e| &e.id));
    let tabs = destination.map(|d| &d.tabs);
    let first_tab_url = tabs
        .and_then(|t| t.0.as_ref()?.first()?.as_ref())
        .map(|t| &t.url);
    let request = text(&v.tab_url, first_tab_url);
    let (request, window_title, reason) = if v2 {
        let request = if request.is_empty() {
            list_text(tabs, |t| &t.url)
        } else {
            request
        };
        (
            request,
            list_text(tabs, |t| &t.title),
            list_text(risk.map(|r| &r.indicators), |i| &i.name),
        )
    } else {
        let request = if request.is_empty() {
            text(&v.tab_urls, None)
        } else {
            request
        };
        (
            request,
            text(&v.window_title, None),
            text(&v.exposure, None),
        )
    };
    cef.field("externalId", &id)
        .time("end", time(&v.event_timestamp, Some(&v.timestamp)))
        .time(
            "rt",
            time(&v.insertion_timestamp, event.map(|e| &e.inserted)),
        )
        .time(
            "fileCreateTime",
            time(&v.create_timestamp, file.map(|f| &f.created)),
        )
        .time(
            "fileModificationTime",
            time(&v.modify_timestamp, file.map(|f| &f.modified)),
        )
        .field(
            "deviceExternalId",
            text(&v.device_uid, user.map(|u| &u.device_uid)),
        )
        // suser: actor, then deviceUserName, then emailSender.
        .field("suser", text(&v.actor, user.map(|u| &u.email)))
        .field("suser", text(&v.device_user_name, user.map(|u| &u.email)))
        .field(
            "suser",
            text(
                &v.email_sender,
                source.and_then(|s| s.email.0.as_ref()).map(|e| &e.sender),
            ),
        )
        // duser: sharedWith, then emailRecipients.
        .field(
            "duser",
            text(
                &v.shared_with,
                destination
                    .and_then(|d| d.user.0.as_ref())
                    .map(|u| &u.email),
            ),
        )
        .field(
            "duser",
            text(
                &v.email_recipients,
                destination
                    .and_then(|d| d.email.0.as_ref())
                    .map(|e| &e.recipients),
            ),
        )
        .field("suid", text(&v.user_uid, user.map(|u| &u.id)))
        .field("shost", text(&v.os_host_name, source.map(|s| &s.name)))
        .field("dvchost", text(&v.domain_name, source.map(|s| &s.domain)))
        .source_ip(&text(&v.public_ip_address, source.map(|s| &s.ip)))
        .field("fname", text(&v.file_name, file.map(|f| &f.name)))
        // filePath: the path, then the URL.
        .field("filePath", text(&v.file_path, file.map(|f| &f.directory)))
        .field("filePath", text(&v.url, file.map(|f| &f.url)))
        .field("fsize", text(&v.file_size, file.map(|f| &f.size_in_bytes)))
        .field(
            "fileType",
            text(&v.file_category, file.map(|f| &f.category)),
        )
        .field(
            "fileHash",
            text(
                &v.md5_checksum,
                file.and_then(|f| f.hash.0.as_ref()).map(|h| &h.md5),
            ),
        )
        .field(
            "sproc",
            text(&v.process_name, process.map(|p| &p.executable)),
        )
        .field("spriv", text(&v.process_owner, process.map(|p| &p.owner)))
        .field(
            "sourceServiceName",
            text(&v.source.flat, event.map(|e| &e.observer)),
        )
        .field(
            "destinationServiceName",
            text(&v.sync_destination, destination.map(|d| &d.name)),
        )
        .field("request", request)
        .field("requestClientApplication", window_title)
        .field("reason", reason);
    // Removable media: the destination's, else the source's.
    let media = |flat: &'v FieldValue<'a>, field: fn(&'v V2Media<'a>) -> &'v FieldValue<'a>| {
        let on_destination = destination
            .and_then(|d| d.removable_media.0.as_ref())
            .map(field);
        let found = text(flat, on_destination);
        if found.is_empty() {
            // In v1 both sides are the one flat field: the same answer again.
            let on_source = source.and_then(|s| s.removable_media.0.as_ref()).map(field);
            return text(flat, on_source);
        }
        found
    };
    cef.labelled(
        "cs1",
        "cs1Label",
        "Code42AEDRemovableMediaBusType",
        media(&v.removable_media_bus_type, |m| &m.bus_type),
    )
    .labelled(
        "cs2",
        "cs2Label",
        "Code42AEDRemovableMediaVendor",
        media(&v.removable_media_vendor, |m| &m.vendor),
    )
    .labelled(
        "cs3",
        "cs3Label",
        "Code42AEDRemovableMediaName",
        media(&v.removable_media_name, |m| &m.name),
    )
    .labelled(
        "cs4",
        "cs4Label",
        "Code42AEDRemovableMediaSerialNumber",
        media(&v.removable_media_serial_number, |m| &m.serial_number),
    );
    let capacity = media(&v.removable_media_capacity, |m| &m.capacity);
    if let Ok(n) = capacity.parse::<i64>() {
        cef.labelled(
            "cn1",
            "cn1Label",
            "Code42AEDRemovableMediaCapacity",
            n.to_string(),
        );
    }
    cef.labelled(
        "cs5",
        "cs5Label",
        "Code42CloudDriveId",
        text(&v.cloud_drive_id, file.map(|f| &f.cloud_drive_id)),
    )
    .labelled("cs6", "cs6Label", "Code42FileEventId", id);
    cef
}

/// An alert (summary or details) as CEF: class = rule type, name = alert name.
pub fn alert(record: &Value) -> CefRecord {
    let text = |k: &str| as_text(record.get(k)).unwrap_or_default();
    let severity = risk_severity(record.get("riskSeverity").and_then(Value::as_str))
        .or_else(|| risk_severity(record.get("severity").and_then(Value::as_str)))
        .unwrap_or(5);
    let kind = text("type");
    let mut cef = CefRecord::new(
        VENDOR,
        PRODUCT,
        VERSION,
        if kind.is_empty() { "C42Alert" } else { &kind },
        &text("name"),
        severity,
    );
    let observations = record
        .get("observations")
        .and_then(Value::as_array)
        .map(Vec::len);
    cef.field("externalId", text("id"))
        .time("rt", time(record.get("createdAt")))
        .field("suser", text("actor"))
        .field("suid", text("actorId"))
        .field("msg", text("description"))
        .field("cat", "alert")
        .labelled("cs1", "cs1Label", "Code42RuleId", text("ruleId"))
        .labelled("cs2", "cs2Label", "Code42AlertState", text("state"))
        .labelled(
            "cs3",
            "cs3Label",
            "Code42Watchlists",
            as_text(record.get("watchlists")).unwrap_or_default(),
        )
        .custom_number("Code42Observations", observations.map(|n| n as i64));
    cef
}

/// A session (one change of it) as CEF: class `C42Session`, name from its summaries.
pub fn session(record: &Value) -> CefRecord {
    let text = |k: &str| as_text(record.get(k)).unwrap_or_default();
    let scores = record.get("scores").and_then(Value::as_array);
    let top = scores
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("severity").and_then(Value::as_u64))
        .max();
    let severity = top.map_or(0, |s| [0, 3, 5, 8, 10][s.min(4) as usize]);
    let score = scores
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("score").and_then(Value::as_i64))
        .max();
    let state = record
        .get("states")
        .and_then(Value::as_array)
        .and_then(|s| s.last())
        .and_then(|s| as_text(s.get("state")))
        .unwrap_or_default();
    let rules = record
        .get("triggeredAlerts")
        .and_then(Value::as_array)
        .map(|alerts| {
            alerts
                .iter()
                .filter_map(|a| a.get("ruleName").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let name = [text("exfiltrationSummary"), text("contextSummary")]
        .into_iter()
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "Insider risk session".to_string());
    let mut cef = CefRecord::new(VENDOR, PRODUCT, VERSION, "C42Session", &name, severity);
    cef.field("externalId", text("sessionId"))
        .time("start", time(record.get("beginTime")))
        .time("end", time(record.get("endTime")))
        .time("rt", time(record.get("lastUpdated")))
        .field("suser", text("actorName"))
        .field("suid", text("actorId"))
        .field("cat", "session")
        .labelled("cs1", "cs1Label", "Code42SessionState", state)
        .labelled("cs2", "cs2Label", "Code42AlertRules", rules)
        .custom_number("Code42RiskScore", score);
    cef
}

#[cfg(test)]
#[path = "cef_tests.rs"]
mod tests;
