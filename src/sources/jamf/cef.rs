//! CEF mapping of Jamf Pro inventory records (Jamf Pro API shape).
//!
//! Header `CEF:0|Jamf|Jamf Pro|1|inventory|Computer inventory report|0|`. The computer is the
//! destination: `dhost` (name), `dst` (last IP; IPv6 to `c6a3`), `dmac`, `duser`; the report date
//! is `rt`; the record id is `externalId`; OS, model and serial number go to labelled custom
//! strings. Must not: escape (see `encode::cef`).

use serde_json::Value;

use crate::encode::cef::CefRecord;

// The shared dotted-path reader, under the short name the mapping below reads best with.
use crate::sources::json_path::text_or_empty as text;

/// A computer inventory record as CEF.
pub fn inventory(computer: &Value) -> CefRecord {
    let mut cef = CefRecord::new(
        "Jamf",
        "Jamf Pro",
        "1",
        "inventory",
        "Computer inventory report",
        0,
    );
    let os = format!(
        "{} {}",
        text(computer, "operatingSystem.name"),
        text(computer, "operatingSystem.version")
    );
    let reported = chrono::DateTime::parse_from_rfc3339(text(computer, "general.reportDate"))
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc));
    cef.field("externalId", text(computer, "id"))
        .time("rt", reported)
        .field("dhost", text(computer, "general.name"))
        .destination_ip(text(computer, "general.lastIpAddress"))
        .field("dmac", text(computer, "hardware.macAddress"))
        .field("duser", text(computer, "userAndLocation.username"))
        .field("deviceExternalId", text(computer, "udid"))
        .labelled("cs1", "cs1Label", "Operating System", os.trim())
        .labelled("cs2", "cs2Label", "Model", text(computer, "hardware.model"))
        .labelled(
            "cs3",
            "cs3Label",
            "Serial Number",
            text(computer, "hardware.serialNumber"),
        )
        .labelled(
            "cs4",
            "cs4Label",
            "Management Id",
            text(computer, "general.managementId"),
        );
    cef
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_inventory_record() {
        let computer = serde_json::json!({
            "id": "42",
            "udid": "8B2C3D4E-0000-1111-2222-333344445555",
            "general": {"name": "MAC-00042", "lastIpAddress": "10.1.2.3", "reportDate": "2026-11-20T10:00:00.123Z",
                        "managementId": "0f9e8d7c-1234-4abc-8def-001122334455"},
            "hardware": {"model": "MacBook Pro (14-inch, 2023)", "serialNumber": "C02XYZ123", "macAddress": "a4:83:e7:01:02:03"},
            "operatingSystem": {"name": "macOS", "version": "14.5"},
            "userAndLocation": {"username": "alice"}
        });
        assert_eq!(
            inventory(&computer).to_line(),
            "CEF:0|Jamf|Jamf Pro|1|inventory|Computer inventory report|0|externalId=42 rt=1795168800123 \
             dhost=MAC-00042 dst=10.1.2.3 dmac=a4:83:e7:01:02:03 duser=alice \
             deviceExternalId=8B2C3D4E-0000-1111-2222-333344445555 cs1=macOS 14.5 cs1Label=Operating System \
             cs2=MacBook Pro (14-inch, 2023) cs2Label=Model cs3=C02XYZ123 cs3Label=Serial Number \
             cs4=0f9e8d7c-1234-4abc-8def-001122334455 cs4Label=Management Id"
        );
    }
}
