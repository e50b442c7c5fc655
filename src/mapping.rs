//! Record mappings: what a sink needs to know about a record that depends on its vendor (the CEF
//! fields, the HEC sourcetype, later iTop's incident fields), behind one trait.
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

    /// The default Splunk `sourcetype` of records of `stream`, e.g. `<vendor>:file_event`.
    fn sourcetype(&self, stream: &str) -> String;
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
