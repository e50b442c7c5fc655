//! Tests of `secrelay state`: the table, lag and the `--json` shape.

use super::*;
use crate::store::DatabaseSize;

fn cursor(newest_min: i64, ok_min: i64, now: DateTime<Utc>) -> CursorState {
    CursorState {
        source: "sophos_eu".into(),
        stream: "events".into(),
        tenant: String::new(),
        cursor: Some("c".into()),
        updated_at: Some(now - chrono::Duration::minutes(ok_min)),
        last_success_at: Some(now - chrono::Duration::minutes(ok_min)),
        last_error: None,
        last_error_at: None,
        newest_event_at: Some(now - chrono::Duration::minutes(newest_min)),
        events_total: 10,
        duplicates_total: 0,
        clamps_total: 0,
        rejected_total: 0,
    }
}

fn report(partitions: Vec<CursorState>, interval: f64, now: DateTime<Utc>) -> StateReport {
    StateReport {
        at: now,
        outbox: OutboxTotals { rows: 0, bytes: 0 },
        outbox_cap_bytes: 1,
        sources_paused: false,
        sink_share_bytes: 1,
        partitions: partitions
            .into_iter()
            .map(|cursor| {
                let (behind, lag_secs) = partition_lag(&cursor, interval, false, now);
                PartitionState {
                    stored: cursor,
                    behind,
                    lag_secs,
                }
            })
            .collect(),
        sinks: Vec::new(),
        rejected: Vec::new(),
        growth: StoreGrowth {
            seen_ids: 0,
            seen_ids_by_source: BTreeMap::new(),
            dead_letters: 0,
            rejected_records: 0,
            requeued: 0,
            database: DatabaseSize {
                path: "state.db".into(),
                main_bytes: 0,
                wal_bytes: 0,
                total_bytes: 0,
                free_bytes: 0,
                auto_vacuum: "incremental".into(),
            },
        },
    }
}

/// The row of the SOURCES table for `stream`, split into its columns after the tenant.
fn row<'a>(table: &'a str, stream: &str) -> Vec<&'a str> {
    let line = table
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(stream))
        .unwrap_or_else(|| panic!("no row for {stream}:\n{table}"));
    line.split_whitespace().collect()
}

#[test]
fn a_caught_up_quiet_source_shows_its_newest_event_age_and_no_lag() {
    let now = Utc::now();
    // Polled 10 s ago (interval 60 s); its newest event is 29 minutes old: quiet, not late.
    let mut quiet = cursor(29, 0, now);
    quiet.last_success_at = Some(now - chrono::Duration::seconds(10));
    let table = report(vec![quiet], 60.0, now).to_table();
    let header = table
        .lines()
        .find(|l| l.starts_with("SOURCE "))
        .expect("header");
    assert!(header.contains("NEWEST EVENT"), "{header}");
    assert!(header.contains("LAST POLL OK"), "{header}");
    let cols = row(&table, "events");
    // SOURCE STREAM TENANT EVENTS DUPS CLAMPS REJECTED NEWEST(2) MOVED(2) OK(2) LAG
    assert_eq!(&cols[7..9], ["29m", "ago"], "{table}");
    assert_eq!(cols[13], "-", "a caught-up source has no lag:\n{table}");
    assert!(
        table.contains("NEWEST EVENT  age of the newest event"),
        "the columns are explained:\n{table}"
    );
}

#[test]
fn a_source_not_polled_for_long_or_failing_shows_its_lag_and_why() {
    let now = Utc::now();
    let overdue = cursor(45, 40, now);
    let mut failing = cursor(5, 5, now);
    failing.stream = "alerts".into();
    failing.last_error = Some("HTTP 503".into());
    failing.last_error_at = Some(now - chrono::Duration::seconds(20));
    let table = report(vec![overdue, failing], 60.0, now).to_table();
    let cols = row(&table, "events");
    assert_eq!(&cols[13..15], ["40m", "(overdue)"], "{table}");
    let cols = row(&table, "alerts");
    assert_eq!(&cols[13..15], ["5m", "(failing)"], "{table}");
}

#[test]
fn lag_is_decided_by_the_last_success_against_the_interval() {
    let now = Utc::now();
    let mut p = cursor(600, 0, now);
    p.last_success_at = Some(now - chrono::Duration::seconds(170));
    // 2 × 60 s + 60 s slack = 180 s: not yet overdue.
    assert_eq!(partition_lag(&p, 60.0, false, now), (None, None));
    p.last_success_at = Some(now - chrono::Duration::seconds(190));
    assert_eq!(
        partition_lag(&p, 60.0, false, now),
        (Some(Behind::Overdue), Some(190))
    );
    assert_eq!(
        partition_lag(&p, 60.0, true, now).0,
        Some(Behind::Paused),
        "a paused partition is behind whatever its clock says"
    );
}

/// The `--json` shape is documented as stable (README, "`secrelay state --json`"): its
/// top-level keys and each partition's and sink's keys are pinned here.
#[tokio::test]
async fn the_json_shape_keeps_its_documented_keys() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::from_toml(&format!(
        r#"
        [store]
        path = {:?}
        [sinks.archive]
        type = "file"
        path = {:?}
        [sources.sophos_eu]
        type = "sophos"
        client_id = "id"
        client_secret = "s"
        sinks = ["archive"]
        "#,
        dir.path().join("state.db"),
        dir.path().join("out.ndjson"),
    ))
    .unwrap();
    let now = Utc::now();
    let mut report = state(&settings).await.unwrap();
    report.partitions = report_partitions(now);
    let json = serde_json::to_value(&report).unwrap();
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&json),
        [
            "at",
            "growth",
            "outbox",
            "outbox_cap_bytes",
            "partitions",
            "rejected",
            "sink_share_bytes",
            "sinks",
            "sources_paused"
        ]
    );
    assert_eq!(
        keys(&json["partitions"][0]),
        [
            "behind",
            "clamps_total",
            "cursor",
            "duplicates_total",
            "events_total",
            "lag_secs",
            "last_error",
            "last_error_at",
            "last_success_at",
            "newest_event_at",
            "rejected_total",
            "source",
            "stream",
            "tenant",
            "updated_at"
        ]
    );
    assert_eq!(
        keys(&json["sinks"][0]),
        [
            "backlog",
            "backlog_bytes",
            "dead_letters",
            "delivered_seq",
            "delivered_total",
            "full",
            "last_error",
            "last_error_at",
            "refused",
            "sink",
            "updated_at"
        ]
    );
    assert_eq!(keys(&json["outbox"]), ["bytes", "rows"]);
    let readme = include_str!("../../README.md");
    let section = readme
        .split("### `secrelay state --json`")
        .nth(1)
        .expect("README documents the state JSON");
    for key in keys(&json)
        .iter()
        .chain(&keys(&json["partitions"][0]))
        .chain(&keys(&json["sinks"][0]))
    {
        assert!(
            section.contains(&format!("`{key}`")),
            "README's state JSON section does not list `{key}`"
        );
    }
}

fn report_partitions(now: DateTime<Utc>) -> Vec<PartitionState> {
    report(vec![cursor(1, 1, now)], 60.0, now).partitions
}
