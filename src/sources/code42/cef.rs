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
mod tests {
    use super::*;
    use crate::encode::cef::tests::parse;
    use serde_json::json;

    const V1: &str = include_str!("../../../tests/fixtures/code42/file_event_v1.json");
    const V2: &str = include_str!("../../../tests/fixtures/code42/file_event_v2.json");

    fn line(record: &str) -> String {
        file_event(&serde_json::from_str(record).unwrap()).to_line()
    }

    fn fields(line: &str) -> std::collections::HashMap<String, String> {
        let (_, pairs) = parse(line);
        let keys: Vec<_> = pairs.iter().map(|(k, _)| k.clone()).collect();
        let unique: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len(), "a key appears twice: {line}");
        pairs.into_iter().collect()
    }

    #[test]
    fn golden_v1_file_event() {
        assert_eq!(
            line(V1),
            "CEF:0|Code42|Incydr|1|C42203|READ_BY_APP|8|\
             externalId=0_1d71796f-af5b-4231-9d8e-df6434da4663_9 end=1590669999838 rt=1590670310040 \
             fileCreateTime=1590669814902 fileModificationTime=1590669815105 deviceExternalId=935873453596901068 \
             suser=actor@example.com duser=partner@example.org suid=912098363086307495 shost=HOSTNAME \
             dvchost=host.docker.internal src=162.222.47.183 fname=company_secrets.txt \
             filePath=C:/Users/QA/Downloads/ fsize=265122 fileType=IMAGE fileHash=9cea266b4e07974df1982ae3b9de92ce \
             sproc=chrome.exe spriv=QA sourceServiceName=Endpoint destinationServiceName=GoogleBackupAndSync \
             request=https://mail.example.com/compose?to\\=a@b.c&x\\=1 requestClientApplication=Inbox | Mail \
             reason=ApplicationRead,RemovableMedia cs1=USB cs1Label=Code42AEDRemovableMediaBusType cs2=SanDisk \
             cs2Label=Code42AEDRemovableMediaVendor cs3=Cruzer Blade cs3Label=Code42AEDRemovableMediaName \
             cs4=4C530001100928112135 cs4Label=Code42AEDRemovableMediaSerialNumber cn1=15631122432 \
             cn1Label=Code42AEDRemovableMediaCapacity cs5=0BxHwXeBPLaE5Uk9PVA cs5Label=Code42CloudDriveId \
             cs6=0_1d71796f-af5b-4231-9d8e-df6434da4663_935873453596901068_956171635867906205_5 \
             cs6Label=Code42FileEventId"
        );
    }

    #[test]
    fn golden_v2_file_event() {
        assert_eq!(
            line(V2),
            "CEF:0|Code42|Incydr|1|C42200|removable-media-created|10|\
             externalId=0_c4e43418-07d9-4a9f-a138-29f39a124d33_1 end=1657817586112 rt=1657817820913 \
             fileCreateTime=1657817466186 fileModificationTime=1657817467419 deviceExternalId=1068825680073059134 \
             suser=engineer@example.com suid=1068824450489230065 shost=DESKTOP-1234 dvchost=corp.example.com \
             src=50.237.14.12 fname=roadmap.xlsx filePath=E:/exports/ fsize=1801792 fileType=Spreadsheet \
             fileHash=1b9d1a23ef7f0b2d3d8a0cf1c2e16f3a sproc=C:\\\\Windows\\\\explorer.exe spriv=CORP\\\\engineer \
             sourceServiceName=Endpoint destinationServiceName=SanDisk Cruzer \
             request=https://planner.example.com/export?id\\=7 requestClientApplication=Export | Planner \
             reason=Removable media,Spreadsheet cs1=USB cs1Label=Code42AEDRemovableMediaBusType cs2=SanDisk \
             cs2Label=Code42AEDRemovableMediaVendor cs3=Cruzer Blade cs3Label=Code42AEDRemovableMediaName \
             cs4=4C530001100928112135 cs4Label=Code42AEDRemovableMediaSerialNumber cn1=15631122432 \
             cn1Label=Code42AEDRemovableMediaCapacity \
             cs6=0_c4e43418-07d9-4a9f-a138-29f39a124d33_1068825680073059134_1068826271084047166_1_EPS \
             cs6Label=Code42FileEventId"
        );
    }

    /// Every row of the mapping table, v1 field → CEF key, checked one by one on the v1 fixture
    /// (with the fields that lose a precedence contest removed, so each row is seen winning).
    #[test]
    fn every_row_of_the_v1_table_is_mapped() {
        let base: Value = serde_json::from_str(V1).unwrap();
        let without = |drop: &[&str]| {
            let mut v = base.clone();
            for k in drop {
                v.as_object_mut().unwrap().remove(*k);
            }
            fields(&file_event(&v).to_line())
        };
        let all = without(&[]);
        let rows: [(&str, &str, &str); 24] = [
            ("actor", "suser", "actor@example.com"),
            ("createTimestamp", "fileCreateTime", "1590669814902"),
            ("deviceUid", "deviceExternalId", "935873453596901068"),
            ("domainName", "dvchost", "host.docker.internal"),
            (
                "eventId",
                "externalId",
                "0_1d71796f-af5b-4231-9d8e-df6434da4663_9",
            ),
            ("eventTimestamp", "end", "1590669999838"),
            ("exposure", "reason", "ApplicationRead,RemovableMedia"),
            ("fileCategory", "fileType", "IMAGE"),
            ("fileName", "fname", "company_secrets.txt"),
            ("filePath", "filePath", "C:/Users/QA/Downloads/"),
            ("fileSize", "fsize", "265122"),
            ("insertionTimestamp", "rt", "1590670310040"),
            (
                "md5Checksum",
                "fileHash",
                "9cea266b4e07974df1982ae3b9de92ce",
            ),
            ("modifyTimestamp", "fileModificationTime", "1590669815105"),
            ("osHostName", "shost", "HOSTNAME"),
            ("processName", "sproc", "chrome.exe"),
            ("processOwner", "spriv", "QA"),
            ("publicIpAddress", "src", "162.222.47.183"),
            ("removableMediaBusType", "cs1", "USB"),
            ("removableMediaCapacity", "cn1", "15631122432"),
            ("removableMediaName", "cs3", "Cruzer Blade"),
            ("removableMediaSerialNumber", "cs4", "4C530001100928112135"),
            ("removableMediaVendor", "cs2", "SanDisk"),
            ("sharedWith", "duser", "partner@example.org"),
        ];
        for (field, key, value) in rows {
            assert_eq!(
                all.get(key).map(String::as_str),
                Some(value),
                "{field} -> {key}"
            );
        }
        let more: [(&str, &str, &str); 5] = [
            (
                "syncDestination",
                "destinationServiceName",
                "GoogleBackupAndSync",
            ),
            ("userUid", "suid", "912098363086307495"),
            ("windowTitle", "requestClientApplication", "Inbox | Mail"),
            (
                "tabUrl",
                "request",
                "https://mail.example.com/compose?to=a@b.c&x=1",
            ),
            ("cloudDriveId", "cs5", "0BxHwXeBPLaE5Uk9PVA"),
        ];
        for (field, key, value) in more {
            assert_eq!(
                all.get(key).map(String::as_str),
                Some(value),
                "{field} -> {key}"
            );
        }
        assert_eq!(all["cs1Label"], "Code42AEDRemovableMediaBusType");
        assert_eq!(all["cs2Label"], "Code42AEDRemovableMediaVendor");
        assert_eq!(all["cs3Label"], "Code42AEDRemovableMediaName");
        assert_eq!(all["cn1Label"], "Code42AEDRemovableMediaCapacity");
        assert_eq!(all["cs5Label"], "Code42CloudDriveId");
        assert!(!all.contains_key("aid"), "aid is consumer-only");
        // The rows that share a key, each seen winning once its betters are gone.
        assert_eq!(
            without(&["actor"])["suser"],
            "test@example.com",
            "deviceUserName -> suser"
        );
        assert_eq!(
            without(&["actor", "deviceUserName"])["suser"],
            "sender@example.com",
            "emailSender -> suser"
        );
        assert_eq!(
            without(&["sharedWith"])["duser"],
            "r1@example.org,r2@example.org",
            "emailRecipients -> duser"
        );
        assert_eq!(
            without(&["filePath"])["filePath"],
            "https://drive.example.com/file/d/1",
            "url -> filePath"
        );
    }

    #[test]
    fn v2_nested_fields_map_to_the_same_keys_as_v1() {
        let v2 = fields(&line(V2));
        for key in [
            "externalId",
            "end",
            "rt",
            "fileCreateTime",
            "fileModificationTime",
            "deviceExternalId",
            "suser",
            "suid",
            "shost",
            "dvchost",
            "src",
            "fname",
            "filePath",
            "fsize",
            "fileType",
            "fileHash",
            "sproc",
            "spriv",
            "destinationServiceName",
            "request",
            "requestClientApplication",
            "reason",
            "cs1",
            "cs2",
            "cs3",
            "cs4",
            "cn1",
        ] {
            assert!(v2.contains_key(key), "v2 event lacks {key}");
        }
        let mut email: Value = serde_json::from_str(V2).unwrap();
        email["user"]["email"] = Value::Null;
        email["source"]["email"]["sender"] = json!("boss@example.com");
        email["destination"]["email"]["recipients"] = json!(["x@example.org"]);
        email["file"]["directory"] = Value::Null;
        email["file"]["url"] = json!("https://box.example.com/f/9");
        email["file"]["cloudDriveId"] = json!("drive-7");
        let mapped = fields(&file_event(&email).to_line());
        assert_eq!(mapped["suser"], "boss@example.com");
        assert_eq!(mapped["duser"], "x@example.org");
        assert_eq!(mapped["filePath"], "https://box.example.com/f/9");
        assert_eq!(mapped["cs5"], "drive-7");
    }

    #[test]
    fn event_classes_follow_the_table() {
        for (v1, v2, class) in [
            ("CREATED", "file-created", "C42200"),
            ("MODIFIED", "file-modified", "C42201"),
            ("DELETED", "file-deleted", "C42202"),
            ("READ_BY_APP", "application-read", "C42203"),
            ("EMAILED", "file-emailed", "C42204"),
            ("DOWNLOADED", "file-downloaded", "C42000"),
        ] {
            assert_eq!(class_id(v1), class, "{v1}");
            assert_eq!(class_id(v2), class, "{v2}");
        }
    }

    #[test]
    fn hostile_values_cannot_forge_fields() {
        let mut v: Value = serde_json::from_str(V1).unwrap();
        v["fileName"] = json!("a=b\\c|d\r\nsuser=root act=blocked");
        v["eventType"] = json!("READ|BY\nAPP");
        let line = file_event(&v).to_line();
        let (header, pairs) = parse(&line);
        assert_eq!(header[5], "READ|BY APP");
        let fname: Vec<_> = pairs.iter().filter(|(k, _)| k == "fname").collect();
        assert_eq!(fname.len(), 1);
        assert_eq!(fname[0].1, "a=b\\c|d\nsuser=root act=blocked");
        assert_eq!(pairs.iter().filter(|(k, _)| k == "suser").count(), 1);
        assert!(!pairs.iter().any(|(k, _)| k == "act"));
    }

    #[test]
    fn golden_alert_with_observations() {
        let alert_record = json!({
            "type$": "ALERT_DETAILS", "tenantId": "t-1", "type": "FED_ENDPOINT_EXFILTRATION",
            "id": "a1b2c3d4-0000-4000-8000-000000000001", "createdAt": "2022-09-15T20:48:25.519828Z",
            "state": "OPEN", "name": "Exfiltration to USB", "description": "Files moved to removable media",
            "actor": "engineer@example.com", "actorId": "1068824450489230065", "riskSeverity": "HIGH",
            "ruleId": "rule-9", "watchlists": [{"id": "w1", "name": "Departing Employee"}],
            "observations": [{"id": "o1", "type": "FedEndpointExfiltration", "data": "{}"}]
        });
        assert_eq!(
            alert(&alert_record).to_line(),
            "CEF:0|Code42|Incydr|1|FED_ENDPOINT_EXFILTRATION|Exfiltration to USB|8|\
             externalId=a1b2c3d4-0000-4000-8000-000000000001 rt=1663274905519 suser=engineer@example.com \
             suid=1068824450489230065 msg=Files moved to removable media cat=alert cs1=rule-9 \
             cs1Label=Code42RuleId cs2=OPEN cs2Label=Code42AlertState cs3=Departing Employee \
             cs3Label=Code42Watchlists cn1=1 cn1Label=Code42Observations"
        );
    }

    #[test]
    fn golden_session() {
        let s = json!({
            "sessionId": "s-42", "tenantId": "t-1", "actorId": "a-7", "actorName": "engineer@example.com",
            "beginTime": 1700000000000i64, "endTime": 1700000600000i64, "lastUpdated": 1700000900000i64,
            "exfiltrationSummary": "3 files to USB",
            "scores": [{"score": 4, "severity": 1}, {"score": 9, "severity": 3}],
            "states": [{"state": "OPEN"}, {"state": "CLOSED_TP"}],
            "triggeredAlerts": [{"ruleName": "USB exfil"}, {"ruleName": "Departing"}]
        });
        assert_eq!(
            session(&s).to_line(),
            "CEF:0|Code42|Incydr|1|C42Session|3 files to USB|8|externalId=s-42 start=1700000000000 \
             end=1700000600000 rt=1700000900000 suser=engineer@example.com suid=a-7 cat=session \
             cs1=CLOSED_TP cs1Label=Code42SessionState cs2=USB exfil,Departing cs2Label=Code42AlertRules \
             cn1=9 cn1Label=Code42RiskScore"
        );
    }
}
