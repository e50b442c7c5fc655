//! Record mappings: what a sink needs to know about a record that depends on its vendor (the CEF
//! fields, the HEC sourcetype, the incident a ticketing sink opens), behind one trait.
//!
//! Owns: the [`RecordMapping`] contract, the explicit [`GenericMapping`] for records no vendor
//! mapping claims, and [`Mappings`] (source id → mapping) that sinks are handed. Must not: name a
//! vendor — each vendor implements the trait in its own folder, and `vendors` (the registry) fills
//! [`Mappings`]. Invariant: sinks learn about vendors only through this trait, so `sinks/` never
//! imports `sources/`.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::encode::cef::CefRecord;

/// A vendor's per-record knowledge, for the sinks whose format depends on the vendor. Implemented
/// once per vendor, in the vendor's own module. A sink that needs more (iTop: an incident's title,
/// caller and impact) adds a method here with a generic default, and vendors override it.
pub trait RecordMapping: Send + Sync + 'static {
    /// The CEF form of a record of `stream` (`severity` 0–10: the event's own).
    fn cef(&self, stream: &str, record: &Value, severity: u8) -> CefRecord;

    /// [`RecordMapping::cef`] of a record given as its JSON text, as sinks hold records. Text that
    /// is not JSON maps as `null` would. Default: parse, then [`RecordMapping::cef`]; a vendor
    /// overrides it where reading only the fields it maps is faster than building the tree.
    fn cef_of_text(&self, stream: &str, record: &str, severity: u8) -> CefRecord {
        self.cef(stream, &record_value(record), severity)
    }

    /// The default Splunk `sourcetype` of records of `stream`, e.g. `<vendor>:file_event`.
    fn sourcetype(&self, stream: &str) -> String;

    /// The incident a record of `stream` belongs to, for ticketing sinks (iTop): which vendor alert
    /// it is part of, that alert's state, and the fields a SOC ticket shows. `event_id` is the
    /// record's event id. It is [`incident_from_cef`] of [`RecordMapping::cef`] (every record its
    /// own alert, without a state), refined by [`RecordMapping::refine_incident`].
    fn incident(
        &self,
        stream: &str,
        record: &Value,
        event_id: &str,
        severity: u8,
    ) -> IncidentFacts {
        let mut facts = incident_from_cef(&self.cef(stream, record, severity), event_id);
        self.refine_incident(stream, record, &mut facts);
        facts
    }

    /// What the vendor knows beyond its CEF fields: the alert a record of `stream` follows, the
    /// alert's state, its rules. Vendors whose alerts change state override it. Default: nothing.
    fn refine_incident(&self, _stream: &str, _record: &Value, _facts: &mut IncidentFacts) {}
}

/// A stored record's text as a `Value`, for the mappings that read one: text that is not JSON
/// reads as `null`.
pub fn record_value(record: &str) -> Value {
    serde_json::from_str(record).unwrap_or(Value::Null)
}

/// What a ticketing sink needs to know of one record: the vendor alert it belongs to (several
/// records of one alert — its state changes, new observations — follow one ticket), the alert's
/// state, and what the ticket's title and description show. Empty text means "not known".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IncidentFacts {
    /// The vendor's id of the alert (or session, or event) the ticket follows; unique within its
    /// source.
    pub alert_key: String,
    /// Vendor and product, e.g. `Code42 Incydr`.
    pub vendor: String,
    /// The alert's name or summary.
    pub name: String,
    /// The vendor's word for the alert's state (`OPEN`, `IN_PROGRESS`, `CLOSED_TP`), when it has one.
    pub state: String,
    /// The vendor says the alert is over (resolved, closed, dismissed).
    pub resolved: bool,
    /// The user involved (actor, account).
    pub user: String,
    /// The host involved.
    pub host: String,
    /// Source address.
    pub source_address: String,
    /// Destination address.
    pub destination_address: String,
    /// Signatures, rule or threat names, in the vendor's order.
    pub rules: Vec<String>,
    /// A link to the record in the vendor's console, when the record carries one.
    pub link: String,
}

/// The incident fields a CEF record already carries: vendor and product, name (else the class
/// id), user (`suser`, else `duser`), host (`shost`, `dhost`, else `dvchost`), `src` and `dst`; the
/// alert key is the event id and there is no state.
pub fn incident_from_cef(cef: &CefRecord, event_id: &str) -> IncidentFacts {
    let first = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| cef.get(k))
            .unwrap_or_default()
            .to_string()
    };
    let vendor = if cef.product().starts_with(cef.vendor()) {
        cef.product().to_string()
    } else {
        format!("{} {}", cef.vendor(), cef.product())
    };
    IncidentFacts {
        alert_key: event_id.to_string(),
        vendor,
        name: if cef.name().is_empty() {
            cef.class_id().to_string()
        } else {
            cef.name().to_string()
        },
        user: first(&["suser", "duser"]),
        host: first(&["shost", "dhost", "dvchost"]),
        source_address: first(&["src"]),
        destination_address: first(&["dst"]),
        ..IncidentFacts::default()
    }
}

/// The mapping for records of a source no vendor mapping was registered for (a sink built by hand
/// in a test or an embedding program): a CEF line naming secrelay itself whose `msg` carries the
/// record's JSON, and the sourcetype `secrelay:<stream>`. Explicit rather than borrowing a vendor's
/// field names for records that are not that vendor's.
#[derive(Debug, Clone, Copy, Default)]
pub struct GenericMapping;

impl RecordMapping for GenericMapping {
    fn cef(&self, stream: &str, record: &Value, severity: u8) -> CefRecord {
        generic_cef("secrelay", "secrelay", stream, record, severity)
    }

    fn sourcetype(&self, stream: &str) -> String {
        format!("secrelay:{stream}")
    }
}

/// A CEF line for a record without a field mapping of its own: `vendor|product|1|stream|stream|`
/// with the record's JSON in `msg` (vendors use it for streams they map no further, e.g. derived
/// fleet views).
pub fn generic_cef(
    vendor: &str,
    product: &str,
    stream: &str,
    record: &Value,
    severity: u8,
) -> CefRecord {
    let mut cef = CefRecord::new(vendor, product, "1", stream, stream, severity);
    cef.field("msg", record.to_string());
    cef
}

/// The singular record kind of a stream name (`file_events` → `file_event`), as sourcetypes use it.
pub fn singular(stream: &str) -> &str {
    match stream {
        "events" => "event",
        "alerts" => "alert",
        "file_events" => "file_event",
        "sessions" => "session",
        "vulnerabilities" => "vulnerability",
        other => other,
    }
}

/// Source id → its vendor's mapping: what sinks are handed. A source it does not know gets
/// [`GenericMapping`].
#[derive(Clone, Default)]
pub struct Mappings {
    by_source: HashMap<String, Arc<dyn RecordMapping>>,
}

impl std::fmt::Debug for Mappings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.by_source.keys()).finish()
    }
}

impl Mappings {
    /// No mapping yet: every source gets [`GenericMapping`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the mapping of `source`.
    pub fn insert(&mut self, source: impl Into<String>, mapping: Arc<dyn RecordMapping>) {
        self.by_source.insert(source.into(), mapping);
    }

    /// The mapping of `source`'s records.
    pub fn of(&self, source: &str) -> &dyn RecordMapping {
        match self.by_source.get(source) {
            Some(mapping) => mapping.as_ref(),
            None => &GenericMapping,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_source_gets_the_generic_mapping_not_a_vendor() {
        let mappings = Mappings::new();
        let cef = mappings
            .of("nobody")
            .cef("things", &serde_json::json!({"a": 1}), 3)
            .to_line();
        assert!(
            cef.starts_with("CEF:0|secrelay|secrelay|1|things|things|3|"),
            "{cef}"
        );
        assert!(cef.contains(r#"msg={"a":1}"#), "{cef}");
        assert_eq!(
            mappings.of("nobody").sourcetype("things"),
            "secrelay:things"
        );
    }
}
