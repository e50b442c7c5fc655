//! Sophos Central's [`RecordMapping`]: every SIEM event and alert through [`super::cef::record`],
//! sourcetypes `sophos:central:<kind>`. Incidents: every SIEM alert is its own (the SIEM API
//! reports an alert once, without a state); its rule is the threat name.

use serde_json::Value;

use crate::encode::cef::CefRecord;
use crate::mapping::{singular, IncidentFacts, RecordMapping};
use crate::sources::json_path::text;

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

    fn refine_incident(&self, _stream: &str, record: &Value, facts: &mut IncidentFacts) {
        facts.rules = text(record, "threat")
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .into_iter()
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_siem_alert_is_its_own_incident_with_its_threat_as_rule() {
        let alert = serde_json::json!({
            "id": "a-1", "type": "Event::Endpoint::Threat::Detected",
            "description": "Malware detected: 'EICAR'", "severity": "high",
            "location": "host-098", "source": "CORP\\alice", "threat": "EICAR-AV-Test",
            "data": {"source_info": {"ip": "10.1.2.3"}},
        });
        let facts = SophosMapping.incident("alerts", &alert, "a-1", 8);
        assert_eq!(
            facts,
            IncidentFacts {
                alert_key: "a-1".into(),
                vendor: "Sophos Central".into(),
                name: "Malware detected: 'EICAR'".into(),
                user: "CORP\\alice".into(),
                host: "host-098".into(),
                source_address: "10.1.2.3".into(),
                rules: vec!["EICAR-AV-Test".into()],
                ..IncidentFacts::default()
            }
        );
    }
}
