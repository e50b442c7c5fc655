//! Sophos Central's [`RecordMapping`]: every SIEM event and alert through [`super::cef::record`],
//! sourcetypes `sophos:central:<kind>`. Incidents: every SIEM alert is its own (the SIEM API
//! reports an alert once, without a state); its rule is the threat name.

use serde_json::Value;

use crate::encode::cef::CefRecord;
use crate::mapping::{incident_from_cef, singular, IncidentFacts, RecordMapping};

/// How sinks show Sophos Central records.
#[derive(Debug, Clone, Copy, Default)]
pub struct SophosMapping;

impl RecordMapping for SophosMapping {
    fn cef(&self, _stream: &str, record: &Value, _severity: u8) -> CefRecord {
        super::cef::record(record)
    }

    fn sourcetype(&self, stream: &str) -> String {
        format!("sophos:central:{}", singular(stream))
    }

    fn incident(
        &self,
        stream: &str,
        record: &Value,
        event_id: &str,
        severity: u8,
    ) -> IncidentFacts {
        let cef = self.cef(stream, record, severity);
        let mut facts = incident_from_cef(&cef, event_id);
        facts.rules = cef.get("cs3").map(str::to_string).into_iter().collect();
        facts
    }
}
