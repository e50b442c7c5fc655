//! CEF mapping of Tenable.sc vulndetails rows.
//!
//! Header `CEF:0|Tenable|SecurityCenter|1|<pluginID>|<pluginName>|<severity>|`; severity from
//! `severity.id` (0 Info … 4 Critical) scaled to 0, 3, 5, 8, 10. Host fields go to `dst` (IPv6 to
//! `c6a3`), `dhost`, `dmac`; `dpt` and `proto` from port and protocol; `start`/`end` from
//! firstSeen/lastSeen (epoch seconds on the wire, milliseconds in CEF). CVEs, the repository and
//! the operating system go to labelled custom strings, CVSS v2, CVSS v3 and VPR scores to labelled
//! floating-point fields. Must not: escape (see `encode::cef`).
//!
//! A mitigated finding (the `mitigated` stream, `sourceType = patched`) is told apart from a new
//! one in the header itself, which is all an RFC 3164 receiver may index: signature
//! `<pluginID>:mitigated`, name `Mitigated: <pluginName>`, `act=mitigated` first, and `end` is
//! `lastMitigated` (the last sighting moves to `deviceCustomDate1`, labelled "Last Seen").

use serde_json::Value;

use crate::encode::cef::CefRecord;

// The shared dotted-path reader, under the short name the mapping below reads best with.
use crate::sources::json_path::text_or_empty as text;

fn seconds_to_millis(text: &str) -> String {
    match text.trim().parse::<i64>() {
        Ok(s) if s > 0 => (s * 1000).to_string(),
        _ => String::new(),
    }
}

/// A score as CEF writes floats, or nothing when absent or not a number.
fn score(text: &str) -> String {
    match text.trim().parse::<f64>() {
        Ok(v) => v.to_string(),
        Err(_) => String::new(),
    }
}

/// Which Tenable.sc stream a row came from: its CEF differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingKind {
    /// An open finding (`vulnerabilities`, `sourceType = cumulative`).
    Open,
    /// A mitigated finding (`mitigated`, `sourceType = patched`).
    Mitigated,
}

/// A vulndetails row as CEF.
pub fn finding(row: &Value, kind: FindingKind) -> CefRecord {
    let severity = row
        .get("severity")
        .and_then(|s| s.get("id"))
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<usize>().ok())
        .map_or(0, |s| [0, 3, 5, 8, 10][s.min(4)]);
    let plugin = text(row, "pluginID");
    let name = text(row, "pluginName");
    let (class_id, name, end) = match kind {
        FindingKind::Open => (plugin.to_string(), name.to_string(), text(row, "lastSeen")),
        FindingKind::Mitigated => (
            format!("{plugin}:mitigated"),
            format!("Mitigated: {name}"),
            text(row, "lastMitigated"),
        ),
    };
    let mut cef = CefRecord::new("Tenable", "SecurityCenter", "1", &class_id, &name, severity);
    if kind == FindingKind::Mitigated {
        cef.field("act", "mitigated");
    }
    cef.destination_ip(text(row, "ip"))
        .field("dhost", text(row, "dnsName"))
        .field("dmac", text(row, "macAddress"))
        .field("dpt", text(row, "port"))
        .field("proto", text(row, "protocol"))
        .field("start", seconds_to_millis(text(row, "firstSeen")))
        .field("end", seconds_to_millis(end))
        .field("msg", text(row, "synopsis"))
        .labelled("cs1", "cs1Label", "CVE", text(row, "cve"))
        .labelled(
            "cs2",
            "cs2Label",
            "Repository",
            row.get("repository")
                .and_then(|r| r.get("name"))
                .and_then(Value::as_str)
                .unwrap_or_default(),
        )
        .labelled(
            "cs3",
            "cs3Label",
            "Operating System",
            text(row, "operatingSystem"),
        )
        .labelled(
            "cs4",
            "cs4Label",
            "Exploit Available",
            text(row, "exploitAvailable"),
        )
        .labelled("cs5", "cs5Label", "NetBIOS Name", text(row, "netbiosName"))
        .labelled(
            "cfp1",
            "cfp1Label",
            "CVSS v2 Base Score",
            score(text(row, "baseScore")),
        )
        .labelled(
            "cfp2",
            "cfp2Label",
            "CVSS v3 Base Score",
            score(text(row, "cvssV3BaseScore")),
        )
        .labelled(
            "cfp3",
            "cfp3Label",
            "VPR Score",
            score(text(row, "vprScore")),
        );
    if kind == FindingKind::Mitigated {
        cef.labelled(
            "deviceCustomDate1",
            "deviceCustomDate1Label",
            "Last Seen",
            seconds_to_millis(text(row, "lastSeen")),
        );
    }
    cef
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::cef::tests::parse;
    use crate::mapping::RecordMapping;

    const ROW: &str = include_str!("../../../tests/fixtures/tenable_sc/vulndetails_row.json");

    #[test]
    fn golden_vulndetails_row() {
        let row: Value = serde_json::from_str(ROW).unwrap();
        assert_eq!(
            finding(&row, FindingKind::Open).to_line(),
            "CEF:0|Tenable|SecurityCenter|1|19506|Nessus Scan Information|0|dst=192.0.2.10 \
             dhost=web1.example.com dmac=00:50:56:a1:b2:c3 dpt=0 proto=TCP start=1632268800000 \
             end=1700000000000 msg=This plugin displays information about the Nessus scan. \
             cs1=CVE-2021-44228,CVE-2021-45046 cs1Label=CVE cs2=Internal Network cs2Label=Repository \
             cs3=Linux Kernel 5.4 on Ubuntu 20.04 cs3Label=Operating System cs4=No cs4Label=Exploit Available \
             cs5=WEB1 cs5Label=NetBIOS Name cfp1=7.5 cfp1Label=CVSS v2 Base Score cfp2=9.8 \
             cfp2Label=CVSS v3 Base Score cfp3=9.2 cfp3Label=VPR Score"
        );
    }

    /// Defect 12 (issue 8): a mitigated finding must not look like a new one.
    #[test]
    fn golden_mitigated_row_is_told_apart_and_ends_at_last_mitigated() {
        let mut row: Value = serde_json::from_str(ROW).unwrap();
        row["hasBeenMitigated"] = "1".into();
        row["lastMitigated"] = "1700500000".into();
        let line = super::super::mapping::TenableScMapping
            .cef("mitigated", &row, 0)
            .to_line();
        assert_eq!(
            line,
            "CEF:0|Tenable|SecurityCenter|1|19506:mitigated|Mitigated: Nessus Scan Information|0|\
             act=mitigated dst=192.0.2.10 dhost=web1.example.com dmac=00:50:56:a1:b2:c3 dpt=0 proto=TCP \
             start=1632268800000 end=1700500000000 msg=This plugin displays information about the Nessus scan. \
             cs1=CVE-2021-44228,CVE-2021-45046 cs1Label=CVE cs2=Internal Network cs2Label=Repository \
             cs3=Linux Kernel 5.4 on Ubuntu 20.04 cs3Label=Operating System cs4=No cs4Label=Exploit Available \
             cs5=WEB1 cs5Label=NetBIOS Name cfp1=7.5 cfp1Label=CVSS v2 Base Score cfp2=9.8 \
             cfp2Label=CVSS v3 Base Score cfp3=9.2 cfp3Label=VPR Score \
             deviceCustomDate1=1700000000000 deviceCustomDate1Label=Last Seen"
        );
        let open = super::super::mapping::TenableScMapping
            .cef("vulnerabilities", &row, 0)
            .to_line();
        assert!(
            open.starts_with("CEF:0|Tenable|SecurityCenter|1|19506|Nessus Scan Information|0|dst="),
            "{open}"
        );
    }

    #[test]
    fn high_severity_ipv6_host_and_hostile_text() {
        let mut row: Value = serde_json::from_str(ROW).unwrap();
        row["severity"]["id"] = "4".into();
        row["ip"] = "2001:db8::10".into();
        row["pluginName"] = "a|b\nc".into();
        row["synopsis"] = "x=1 dst=10.9.9.9".into();
        let (header, pairs) = parse(&finding(&row, FindingKind::Open).to_line());
        assert_eq!(header[6], "10");
        assert_eq!(header[5], "a|b c");
        assert!(pairs
            .iter()
            .any(|(k, v)| k == "c6a3" && v == "2001:db8::10"));
        assert!(
            !pairs.iter().any(|(k, _)| k == "dst"),
            "IPv6 never goes to dst, nor a forged dst"
        );
    }
}
