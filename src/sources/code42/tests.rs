//! Code42 source unit tests: the file-event query, one severity in the envelope and in CEF,
//! cursors of earlier versions, and sessions.

use chrono::{Duration, TimeZone, Utc};
use serde_json::json;
use serde_json::value::RawValue;

use super::alerts::{floor_ms, AlertCursor};
use super::file_events::{file_event, file_event_query, FileEventsPage};
use super::sessions::{path_segment, session_closed, session_severity, SessionCursor};
use super::*;
use crate::shared_text::SharedText;

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
        let event = file_event(&raw, &SharedText::default()).unwrap();
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

#[test]
fn a_file_event_reads_the_same_without_building_its_tree_as_through_a_value() {
    // What `file_event` read through a `Value` (the way before): id, time, severity or the reason.
    fn through_value(v: &serde_json::Value) -> Result<(String, String, u8), String> {
        use crate::sources::json_path::text;
        let id = text(v, "event.id")
            .or_else(|| text(v, "eventId"))
            .filter(|id| !id.is_empty())
            .ok_or("a file event has no event.id (v1: eventId)")?;
        let at = parse_time(text(v, "event.inserted"))
            .or_else(|| parse_time(text(v, "insertionTimestamp")))
            .ok_or_else(|| format!("file event {id} has no parseable event.inserted"))?;
        Ok((id.to_string(), iso(at), file_event_severity(v)))
    }
    let t = "2026-01-01T00:00:00.000Z";
    let records = [
        json!({"event": {"id": "v2", "inserted": t}, "risk": {"severity": "HIGH"}, "x": [1, {"id": 2}]}),
        json!({"eventId": "v1", "insertionTimestamp": t, "riskSeverity": "LOW"}),
        json!({"event": {"id": "q\"uoted\\ é", "inserted": t}}),
        json!({"event": {"id": "", "inserted": t}, "eventId": "v1-not-taken"}),
        json!({"event": {"id": null, "inserted": t}, "eventId": "v1-taken", "insertionTimestamp": t}),
        json!({"event": {"id": "bad-time", "inserted": "yesterday"}}),
        json!({"event": {"id": "v2-time-wins", "inserted": "no"}, "insertionTimestamp": t}),
        json!({"event": {"id": "unknown-sev", "inserted": t}, "risk": {"severity": "ODD"}, "riskSeverity": "HIGH"}),
        json!({"event": null, "risk": null, "eventId": "nulls", "insertionTimestamp": t}),
        // Shapes the fast reading refuses: the general one decides.
        json!({"event": {"id": 42, "inserted": t}, "eventId": "number-id"}),
        json!({"event": ["id", t], "eventId": "array-event", "insertionTimestamp": t}),
        json!({"event": "text", "eventId": "text-event", "insertionTimestamp": t}),
        json!({"event": {"id": "sev-number", "inserted": t}, "risk": {"severity": 8}}),
        json!(["x", t]),
        json!({}),
    ];
    let mut texts: Vec<String> = records.iter().map(|r| r.to_string()).collect();
    // A key given twice: the last one wins, as in a `Value`.
    texts.push(format!(
        r#"{{"eventId":"first","eventId":"second","insertionTimestamp":"{t}"}}"#
    ));
    for text in texts {
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let raw = RawValue::from_string(text.clone()).unwrap();
        let read = file_event(&raw, &SharedText::default())
            .map(|e| (e.id, iso(e.time), e.severity.value()));
        assert_eq!(read, through_value(&value), "{text}");
    }
}

#[test]
fn file_event_records_are_slices_of_their_page_not_copies() {
    let body = SharedText::from(String::from(
        r#"{"fileEvents":[{"event":{"id":"a","inserted":"2026-01-01T00:00:00.000Z"},"n":1},
           {"event":{"id":"b","inserted":"2026-01-01T00:00:01.000Z"},"n":[1, 2]},
           {"eventId":"c","insertionTimestamp":"2026-01-01T00:00:02.000Z","risk":7}],"nextPgToken":""}"#,
    ));
    // The page is read in one pass, each record for its fields and its text at once.
    let page = FileEventsPage::read(&body, "https://example.com/v2/file-events", 3).unwrap();
    assert!(page.rejected.is_empty());
    let events = page.events;
    let first_text = r#"{"event":{"id":"a","inserted":"2026-01-01T00:00:00.000Z"},"n":1}"#;
    // Compact records are shared; one with whitespace is compacted into a copy of its own.
    assert!(events[0].record.same_buffer_as(&body));
    assert_eq!(events[0].record.as_str(), first_text);
    assert!(!events[1].record.same_buffer_as(&body));
    assert_eq!(
        events[1].record.as_str(),
        r#"{"event":{"id":"b","inserted":"2026-01-01T00:00:01.000Z"},"n":[1,2]}"#
    );
    // Read the general way (a field of unexpected type), and still shared.
    assert!(events[2].record.same_buffer_as(&body));
    drop(body);
    assert_eq!(events[0].id, "a");
    assert!(events[2].record.as_str().starts_with(r#"{"eventId":"c""#));
}
