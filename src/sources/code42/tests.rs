//! Code42 source unit tests: the file-event query, one severity in the envelope and in CEF,
//! cursors of earlier versions, and sessions.

use chrono::{Duration, TimeZone, Utc};
use serde_json::json;
use serde_json::value::RawValue;

use super::alerts::{floor_ms, AlertCursor};
use super::file_events::{file_event, file_event_query};
use super::sessions::{path_segment, session_closed, session_severity, SessionCursor};
use super::*;

#[test]
fn the_query_windows_on_insertion_time_sorted_ascending_with_a_token() {
    let since = Utc.timestamp_millis_opt(1_700_000_000_000).unwrap();
    let until = since + Duration::hours(1);
    let q = file_event_query(since, until, "", &[], false, 10_000);
    assert_eq!(q["srtKey"], "event.inserted");
    assert_eq!(q["srtDir"], "asc");
    assert_eq!(
        q["pgToken"], "",
        "an empty token selects token paging, never the pgNum cap"
    );
    assert_eq!(
        q["groups"][0]["filters"][0]["value"],
        "2023-11-14T22:13:20.000Z"
    );
    assert_eq!(q["groups"][0]["filters"][1]["operator"], "ON_OR_BEFORE");
    let v1 = file_event_query(since, until, "tok", &[], true, 10);
    assert_eq!(v1["srtKey"], "insertionTimestamp");
    assert_eq!(v1["pgToken"], "tok");
}

/// The CEF header's severity (the seventh `|`-separated field).
fn cef_severity(cef: &crate::encode::cef::CefRecord) -> u8 {
    cef.to_line().split('|').nth(6).unwrap().parse().unwrap()
}

#[test]
fn a_file_event_has_one_severity_in_the_envelope_and_in_cef() {
    let records = [
        json!({"event": {"id": "v2-none", "inserted": "2026-01-01T00:00:00.000Z"}}),
        json!({"eventId": "v1-none", "insertionTimestamp": "2026-01-01T00:00:00.000Z"}),
        json!({"event": {"id": "v2-odd", "inserted": "2026-01-01T00:00:00.000Z"}, "risk": {"severity": "UNHEARD_OF"}}),
        json!({"event": {"id": "v2-high", "inserted": "2026-01-01T00:00:00.000Z"}, "risk": {"severity": "HIGH"}}),
        json!({"eventId": "v1-no-risk", "insertionTimestamp": "2026-01-01T00:00:00.000Z", "riskSeverity": "NO_RISK"}),
    ];
    for record in records {
        let raw = RawValue::from_string(record.to_string()).unwrap();
        let event = file_event(&raw).unwrap();
        assert_eq!(
            event.severity.value(),
            cef_severity(&cef::file_event(&record)),
            "{record}"
        );
    }
}

#[test]
fn cursors_written_by_the_previous_version_are_still_read() {
    let alert: AlertCursor =
        serde_json::from_str(r#"{"since":"2026-01-01T00:00:00.123456Z","skip":3}"#).unwrap();
    assert_eq!(alert.skip, 3);
    assert!(alert.seen.is_empty());
    assert_eq!(
        iso(floor_ms(alert.since)),
        "2026-01-01T00:00:00.123Z",
        "queried at the millisecond"
    );
    let session: SessionCursor = serde_json::from_str(r#"{"page":2}"#).unwrap();
    assert_eq!(session.page, 2);
    assert!(session.open.is_empty() && session.from.is_none());
}

#[test]
fn closed_sessions_are_those_whose_last_state_is_closed() {
    let with = |states: &[&str]| json!({"states": states.iter().map(|s| json!({"state": s})).collect::<Vec<_>>()});
    assert!(session_closed(&with(&["OPEN", "CLOSED_TP"])));
    assert!(!session_closed(&with(&["CLOSED", "OPEN_NEW_DATA"])));
    assert!(!session_closed(&json!({})), "no state: followed");
    assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
}

#[test]
fn session_severity_takes_the_highest_score() {
    let s = json!({"scores": [{"severity": 1}, {"severity": 3}]});
    assert_eq!(session_severity(&s), 8);
    assert_eq!(session_severity(&json!({})), 0);
}
