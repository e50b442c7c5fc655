//! CEF mapping of Sophos Central SIEM events and alerts, after Sophos' own SIEM script (siem.py):
//! header `CEF:0|Sophos|Sophos Central|1.0|<type>|<name>|<severity>|` with severity none 0, low 1,
//! medium 5, high 8, very_high 10; `source` → `suser`, `when` → `end`, `created_at` → `rt`,
//! `user_id` → `duid`, `location` → `dhost`, `source_info.ip` → `src`. The tenant, endpoint and
//! group go to labelled custom strings. Must not: escape (see `encode::cef`).

use serde_json::Value;

use super::severity;
use crate::encode::cef::CefRecord;

// The shared dotted-path reader, under the short name the mapping below reads best with.
use crate::sources::json_path::text_or_empty as text;

fn millis(v: &Value, key: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(text(v, key))
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// A SIEM event or alert as CEF.
pub fn record(v: &Value) -> CefRecord {
    // Alerts carry their text in `description`; the SIEM script renames it to `name`.
    let name = [text(v, "name"), text(v, "description")]
        .into_iter()
        .find(|s| !s.is_empty())
        .unwrap_or_default();
    let sev = severity(v.get("severity").and_then(Value::as_str)).value();
    let mut cef = CefRecord::new(
        "Sophos",
        "Sophos Central",
        "1.0",
        text(v, "type"),
        name,
        sev,
    );
    let ip = [text(v, "source_info.ip"), text(v, "data.source_info.ip")]
        .into_iter()
        .find(|s| !s.is_empty())
        .unwrap_or_default();
    let endpoint = [text(v, "endpoint_id"), text(v, "data.endpoint_id")]
        .into_iter()
        .find(|s| !s.is_empty())
        .unwrap_or_default();
    cef.field("externalId", text(v, "id"))
        .time("rt", millis(v, "created_at"))
        .time("end", millis(v, "when"))
        .field("suser", text(v, "source"))
        .field("duid", text(v, "user_id"))
        .field("dhost", text(v, "location"))
        .source_ip(ip)
        .field("cat", text(v, "group"))
        .labelled("cs1", "cs1Label", "Sophos Tenant", text(v, "customer_id"))
        .labelled("cs2", "cs2Label", "Sophos Endpoint", endpoint)
        .labelled("cs3", "cs3Label", "Threat", text(v, "threat"));
    cef
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_siem_event() {
        let event = serde_json::json!({
            "id": "0b3f5a8e-3c0a-4d36-8f26-9d3b1c4e5f60",
            "type": "Event::Endpoint::Threat::Detected",
            "name": "Malware detected: 'EICAR-AV-Test' at 'C:\\Users\\alice\\eicar.com'",
            "severity": "high",
            "group": "MALWARE",
            "when": "2026-11-20T10:00:00.000Z",
            "created_at": "2026-11-20T10:00:02.500Z",
            "customer_id": "6b761f1c-d71a-4bb4-86fb-8b853864eb07",
            "endpoint_id": "da4b7f7e-e3ea-4ae7-bc89-89eb32c36224",
            "user_id": "5d3f",
            "source": "CORP\\alice",
            "location": "host-098",
            "source_info": {"ip": "10.1.2.3"}
        });
        assert_eq!(
            record(&event).to_line(),
            "CEF:0|Sophos|Sophos Central|1.0|Event::Endpoint::Threat::Detected|\
             Malware detected: 'EICAR-AV-Test' at 'C:\\\\Users\\\\alice\\\\eicar.com'|8|\
             externalId=0b3f5a8e-3c0a-4d36-8f26-9d3b1c4e5f60 rt=1795168802500 end=1795168800000 \
             suser=CORP\\\\alice duid=5d3f dhost=host-098 src=10.1.2.3 cat=MALWARE \
             cs1=6b761f1c-d71a-4bb4-86fb-8b853864eb07 cs1Label=Sophos Tenant \
             cs2=da4b7f7e-e3ea-4ae7-bc89-89eb32c36224 cs2Label=Sophos Endpoint"
        );
    }
}
