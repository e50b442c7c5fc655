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

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{file_event_severity, risk_severity};
use crate::encode::cef::CefRecord;
use crate::sources::json_path::at;

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

/// Reads v1 `flat` or v2 `nested` depending on the record's model.
struct View<'a> {
    record: &'a Value,
    v2: bool,
}

impl<'a> View<'a> {
    fn get(&self, flat: &str, nested: &str) -> Option<&'a Value> {
        if self.v2 {
            at(self.record, nested)
        } else {
            self.record.get(flat)
        }
    }

    fn text(&self, flat: &str, nested: &str) -> Option<String> {
        as_text(self.get(flat, nested))
    }

    /// The list under `nested_list` (v2), each entry's `field`, joined.
    fn nested_list(&self, flat: &str, nested_list: &str, field: &str) -> Option<String> {
        if !self.v2 {
            return as_text(self.record.get(flat));
        }
        let items = at(self.record, nested_list)?.as_array()?;
        as_text(Some(&Value::Array(
            items.iter().filter_map(|i| i.get(field).cloned()).collect(),
        )))
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
    let v = View {
        record,
        v2: record.get("event").is_some_and(Value::is_object),
    };
    let action = v.text("eventType", "event.action").unwrap_or_default();
    // The same rule as the envelope's severity, so both say the same of one event.
    let severity = file_event_severity(record);
    let mut cef = CefRecord::new(
        VENDOR,
        PRODUCT,
        VERSION,
        class_id(&action),
        &action,
        severity,
    );
    let id = v.text("eventId", "event.id").unwrap_or_default();
    cef.field("externalId", &id)
        .time("end", time(v.get("eventTimestamp", "@timestamp")))
        .time("rt", time(v.get("insertionTimestamp", "event.inserted")))
        .time(
            "fileCreateTime",
            time(v.get("createTimestamp", "file.created")),
        )
        .time(
            "fileModificationTime",
            time(v.get("modifyTimestamp", "file.modified")),
        )
        .field(
            "deviceExternalId",
            v.text("deviceUid", "user.deviceUid").unwrap_or_default(),
        )
        // suser: actor, then deviceUserName, then emailSender.
        .field("suser", v.text("actor", "user.email").unwrap_or_default())
        .field(
            "suser",
            v.text("deviceUserName", "user.email").unwrap_or_default(),
        )
        .field(
            "suser",
            v.text("emailSender", "source.email.sender")
                .unwrap_or_default(),
        )
        // duser: sharedWith, then emailRecipients.
        .field(
            "duser",
            v.text("sharedWith", "destination.user.email")
                .unwrap_or_default(),
        )
        .field(
            "duser",
            v.text("emailRecipients", "destination.email.recipients")
                .unwrap_or_default(),
        )
        .field("suid", v.text("userUid", "user.id").unwrap_or_default())
        .field(
            "shost",
            v.text("osHostName", "source.name").unwrap_or_default(),
        )
        .field(
            "dvchost",
            v.text("domainName", "source.domain").unwrap_or_default(),
        )
        .source_ip(&v.text("publicIpAddress", "source.ip").unwrap_or_default())
        .field("fname", v.text("fileName", "file.name").unwrap_or_default())
        // filePath: the path, then the URL.
        .field(
            "filePath",
            v.text("filePath", "file.directory").unwrap_or_default(),
        )
        .field("filePath", v.text("url", "file.url").unwrap_or_default())
        .field(
            "fsize",
            v.text("fileSize", "file.sizeInBytes").unwrap_or_default(),
        )
        .field(
            "fileType",
            v.text("fileCategory", "file.category").unwrap_or_default(),
        )
        .field(
            "fileHash",
            v.text("md5Checksum", "file.hash.md5").unwrap_or_default(),
        )
        .field(
            "sproc",
            v.text("processName", "process.executable")
                .unwrap_or_default(),
        )
        .field(
            "spriv",
            v.text("processOwner", "process.owner").unwrap_or_default(),
        )
        .field(
            "sourceServiceName",
            v.text("source", "event.observer").unwrap_or_default(),
        )
        .field(
            "destinationServiceName",
            v.text("syncDestination", "destination.name")
                .unwrap_or_default(),
        )
        .field(
            "request",
            v.text("tabUrl", "destination.tabs.0.url")
                .or_else(|| v.nested_list("tabUrls", "destination.tabs", "url"))
                .unwrap_or_default(),
        )
        .field(
            "requestClientApplication",
            v.nested_list("windowTitle", "destination.tabs", "title")
                .unwrap_or_default(),
        )
        .field(
            "reason",
            v.nested_list("exposure", "risk.indicators", "name")
                .unwrap_or_default(),
        );
    let media = |flat: &str, field: &str| {
        v.text(flat, &format!("destination.removableMedia.{field}"))
            .or_else(|| v.text(flat, &format!("source.removableMedia.{field}")))
            .unwrap_or_default()
    };
    cef.labelled(
        "cs1",
        "cs1Label",
        "Code42AEDRemovableMediaBusType",
        media("removableMediaBusType", "busType"),
    )
    .labelled(
        "cs2",
        "cs2Label",
        "Code42AEDRemovableMediaVendor",
        media("removableMediaVendor", "vendor"),
    )
    .labelled(
        "cs3",
        "cs3Label",
        "Code42AEDRemovableMediaName",
        media("removableMediaName", "name"),
    )
    .labelled(
        "cs4",
        "cs4Label",
        "Code42AEDRemovableMediaSerialNumber",
        media("removableMediaSerialNumber", "serialNumber"),
    );
    let capacity = media("removableMediaCapacity", "capacity");
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
        v.text("cloudDriveId", "file.cloudDriveId")
            .unwrap_or_default(),
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
