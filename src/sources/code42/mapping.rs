//! Code42 / Incydr's [`RecordMapping`]: file events, alerts and sessions each with their own CEF
//! mapping, sourcetypes `code42:<kind>`. Incidents: a session is followed by its `sessionId`
//! through every change (its state is the last of `states`, over once it starts with `CLOSED`); an
//! alert by its `id` (state `state`, over at `RESOLVED`); the rules are the session's triggered
//! alert rules, or the alert's rule.

use serde_json::Value;

use crate::encode::cef::CefRecord;
use crate::mapping::{generic_cef, record_value, singular, IncidentFacts, RecordMapping};
use crate::sources::json_path::text;

/// How sinks show Code42 / Incydr records.
#[derive(Debug, Clone, Copy, Default)]
pub struct Code42Mapping;

impl RecordMapping for Code42Mapping {
    fn cef(&self, stream: &str, record: &Value, severity: u8) -> CefRecord {
        match stream {
            "file_events" => super::cef::file_event(record),
            "alerts" => super::cef::alert(record),
            "sessions" => super::cef::session(record),
            other => generic_cef("Code42", "Incydr", other, record, severity),
        }
    }

    fn cef_of_text(&self, stream: &str, record: &str, severity: u8) -> CefRecord {
        match stream {
            "file_events" => super::cef::file_event_text(record),
            _ => self.cef(stream, &record_value(record), severity),
        }
    }

    fn sourcetype(&self, stream: &str) -> String {
        format!("code42:{}", singular(stream))
    }

    fn refine_incident(&self, stream: &str, record: &Value, facts: &mut IncidentFacts) {
        match stream {
            "sessions" => {
                if let Some(id) = text(record, "sessionId") {
                    facts.alert_key = id.to_string();
                }
                facts.state = record
                    .get("states")
                    .and_then(Value::as_array)
                    .and_then(|s| s.last())
                    .and_then(|s| text(s, "state"))
                    .unwrap_or_default()
                    .to_string();
                facts.resolved = facts.state.to_ascii_uppercase().starts_with("CLOSED");
                facts.rules = record
                    .get("triggeredAlerts")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|a| text(a, "ruleName"))
                    .map(str::to_string)
                    .collect();
            }
            "alerts" => {
                facts.state = text(record, "state").unwrap_or_default().to_string();
                facts.resolved = facts.state.eq_ignore_ascii_case("RESOLVED");
                facts.rules = [text(record, "ruleName"), text(record, "name")]
                    .into_iter()
                    .flatten()
                    .take(1)
                    .map(str::to_string)
                    .collect();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_followed_by_its_id_through_its_states() {
        let session = serde_json::json!({
            "sessionId": "s-9", "actorName": "engineer@example.com",
            "exfiltrationSummary": "3 files to removable media", "lastUpdated": 1_700_000_000_000_i64,
            "scores": [{"score": 7, "severity": 2}],
            "states": [{"state": "OPEN"}, {"state": "CLOSED_TP"}],
            "triggeredAlerts": [{"ruleName": "USB exfiltration"}, {"ruleName": "Departing"}],
        });
        let facts = Code42Mapping.incident("sessions", &session, "s-9@1700000000000", 5);
        assert_eq!(
            facts,
            IncidentFacts {
                alert_key: "s-9".into(),
                vendor: "Code42 Incydr".into(),
                name: "3 files to removable media".into(),
                state: "CLOSED_TP".into(),
                resolved: true,
                user: "engineer@example.com".into(),
                rules: vec!["USB exfiltration".into(), "Departing".into()],
                ..IncidentFacts::default()
            }
        );
    }

    #[test]
    fn a_file_event_is_its_own_incident_without_a_state() {
        let event = serde_json::json!({"event": {"id": "e-1", "action": "file-created"},
            "user": {"email": "a@example.com"}});
        let facts = Code42Mapping.incident("file_events", &event, "e-1", 5);
        assert_eq!(facts.alert_key, "e-1");
        assert_eq!(facts.user, "a@example.com");
        assert!(facts.state.is_empty() && !facts.resolved);
    }
}
