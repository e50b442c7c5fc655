//! Tenable.sc source unit tests.

use super::finding::{finding, window_time};
use super::*;
use serde_json::value::RawValue;

#[test]
fn identity_includes_last_seen_and_numbers_are_parsed_strictly() {
    let raw = RawValue::from_string(
        r#"{"pluginID":"19506","ip":"10.0.0.5","dnsName":"web1.example.com","uuid":"","port":"443",
            "protocol":"TCP","lastSeen":"1700000000","severity":{"id":"3","name":"High"},
            "repository":{"id":"7","name":"Internal"}}"#
            .to_string(),
    )
    .unwrap();
    let (e, window) = finding(&raw, TenableStream::Cumulative, "u").unwrap();
    assert_eq!(window, Some(1_700_000_000));
    assert_eq!(e.id, "7|10.0.0.5|web1.example.com|19506|443|TCP|1700000000");
    assert_eq!(e.severity.value(), 8);
    assert_eq!(e.time.timestamp(), 1_700_000_000);
    let bad = RawValue::from_string(r#"{"pluginID":"x1","lastSeen":"1"}"#.to_string()).unwrap();
    let err = finding(&bad, TenableStream::Cumulative, "u")
        .unwrap_err()
        .to_string();
    assert!(err.contains("pluginID") && err.contains("x1"), "{err}");
}

#[test]
fn a_cursor_written_by_offset_paging_restarts_its_pass_at_since() {
    let old: WindowCursor =
        serde_json::from_str(r#"{"since":100,"until":500,"offset":2000}"#).unwrap();
    assert_eq!((old.since, old.until, old.skip), (100, Some(500), 0));
    assert_eq!((old.start, old.newest), (None, None));
}

#[test]
fn the_window_time_of_a_row_rejected_for_its_port_is_still_read() {
    let raw = RawValue::from_string(
        r#"{"pluginID":"1","port":"n/a","lastSeen":"50","lastMitigated":"60"}"#.to_string(),
    )
    .unwrap();
    assert!(finding(&raw, TenableStream::Cumulative, "u").is_err());
    assert_eq!(window_time(&raw, TenableStream::Cumulative), Some(50));
    assert_eq!(window_time(&raw, TenableStream::Patched), Some(60));
}

#[test]
fn an_agent_finding_without_dns_name_is_identified_by_uuid() {
    let raw = RawValue::from_string(
        r#"{"pluginID":"1","ip":"","dnsName":"","uuid":"a-1","port":"0","protocol":"ICMP","lastSeen":"5"}"#
            .to_string(),
    )
    .unwrap();
    assert_eq!(
        finding(&raw, TenableStream::Cumulative, "u").unwrap().0.id,
        "||a-1|1|0|ICMP|5"
    );
}

#[test]
fn a_good_row_reports_the_window_time_that_window_time_reads() {
    let rows = [
        r#"{"pluginID":"1","lastSeen":"50","lastMitigated":"60"}"#,
        r#"{"pluginID":"1","lastSeen":"50","lastMitigated":""}"#,
        r#"{"pluginID":"1","lastSeen":"50"}"#,
        r#"{"pluginID":"1","lastSeen":" 50 ","lastMitigated":" 61 "}"#,
    ];
    for row in rows {
        let raw = RawValue::from_string(row.to_string()).unwrap();
        for stream in [TenableStream::Cumulative, TenableStream::Patched] {
            let (_, window) = finding(&raw, stream, "u").unwrap();
            assert_eq!(window, window_time(&raw, stream), "{row} {stream:?}");
        }
    }
}
