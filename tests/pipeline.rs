//! The pipeline in-process against the Sophos simulator over real HTTP on loopback: restarts,
//! overlapping windows, faults, multi-tenancy, backfill modes and back-pressure.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use secrelay::app::{self, BackfillOptions};
use secrelay::settings::Settings;
use secrelay::simulate::sophos::{Identity, SophosSim, SophosSimConfig};
use tokio_util::sync::CancellationToken;

const BOTH: [&str; 2] = ["events", "alerts"];

fn settings(sim: &SophosSim, dir: &std::path::Path, extra_source: &str) -> Settings {
    Settings::from_toml(&config_text(sim, dir, extra_source, "")).expect("valid test config")
}

async fn backfill(settings: &Settings, options: BackfillOptions) -> app::RunSummary {
    app::backfill(settings, &options, CancellationToken::new())
        .await
        .expect("backfill runs")
}

#[tokio::test]
async fn restart_resumes_from_the_cursor_and_boundary_repeats_are_dropped() {
    let sim = finished_sim(Identity::Tenant, 1, 3000).await;
    let dir = tempfile::tempdir().unwrap();
    // Small pages: many cursor boundaries, each of which repeats its last record.
    let s = settings(&sim, dir.path(), "page_size = 100");
    let first = backfill(&s, BackfillOptions::default()).await;
    assert!(first.complete(), "{first:?}");
    let repeats: u64 = first.partitions.iter().map(|p| p.duplicates).sum();
    assert!(
        repeats >= 30,
        "the simulator repeats boundary records; the seen-set must drop them ({repeats})"
    );
    assert_exactly_once(&delivered(dir.path()), &expected(&sim, &BOTH));

    // A restart polls from the stored cursor: only the boundary record comes back, and is dropped.
    let requests_before = sim.requests().len();
    let second = backfill(&s, BackfillOptions::default()).await;
    assert!(second.complete());
    assert_eq!(second.partitions.iter().map(|p| p.appended).sum::<u64>(), 0);
    assert_eq!(
        sim.requests().len() - requests_before,
        2,
        "one request per stream from the stored cursor"
    );

    // An overlapping window (the cursor forgotten, history pulled again) delivers nothing twice.
    let third = backfill(
        &s,
        BackfillOptions {
            reset: true,
            ..BackfillOptions::default()
        },
    )
    .await;
    assert!(third.complete());
    assert_eq!(third.partitions.iter().map(|p| p.appended).sum::<u64>(), 0);
    assert!(third.partitions.iter().map(|p| p.duplicates).sum::<u64>() >= 3600);
    assert_exactly_once(&delivered(dir.path()), &expected(&sim, &BOTH));
}

#[tokio::test]
async fn daemon_restarts_on_a_live_feed_deliver_each_event_once() {
    let sim = SophosSim::start(SophosSimConfig {
        events_per_tenant: None,
        rate_per_sec: 40.0,
        start: chrono::Utc::now() - chrono::Duration::minutes(2),
        ..SophosSimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = settings(&sim, dir.path(), "page_size = 250");
    for _ in 0..3 {
        let stop = CancellationToken::new();
        let timer = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            timer.cancel();
        });
        app::run(&s, stop).await.unwrap();
    }
    let got = delivered(dir.path());
    let counts = counts(&got);
    assert!(
        counts.values().all(|n| *n == 1),
        "an event was delivered twice across restarts"
    );
    // Everything created up to shortly before the last stop arrived, with no gap.
    let cutoff = chrono::Utc::now() - chrono::Duration::seconds(2);
    let tenant = sim.tenant_ids()[0].clone();
    for stream in BOTH {
        let want = sim.expected_ids(0, stream, cutoff);
        assert!(want.len() > 500, "the feed was live for minutes");
        let missing: Vec<_> = want
            .iter()
            .filter(|id| {
                !counts.contains_key(&(stream.to_string(), tenant.clone(), id.to_string()))
            })
            .collect();
        assert!(
            missing.is_empty(),
            "{stream}: {} of {} missing across restarts",
            missing.len(),
            want.len()
        );
    }
}

#[tokio::test]
async fn rate_limit_retry_after_is_waited_out() {
    let sim = finished_sim(Identity::Tenant, 1, 200).await;
    sim.faults().retry_after_secs.store(3, Ordering::SeqCst);
    sim.faults().rate_limit.store(1, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let s = settings(&sim, dir.path(), "streams = [\"events\"]");
    let started = Instant::now();
    let summary = backfill(&s, BackfillOptions::default()).await;
    assert!(summary.complete(), "{summary:?}");
    let requests = sim.requests();
    let limited = requests
        .iter()
        .position(|r| r.status == 429)
        .expect("a 429 was served");
    let next = &requests[limited + 1];
    let waited = next.at.duration_since(requests[limited].at);
    assert!(
        waited >= Duration::from_secs(3),
        "retried after {waited:?}, before Retry-After: 3"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_exactly_once(&delivered(dir.path()), &expected(&sim, &["events"]));
}

#[tokio::test]
async fn unavailable_responses_are_retried_without_loss() {
    let sim = finished_sim(Identity::Tenant, 1, 600).await;
    sim.faults().unavailable.store(3, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let s = settings(&sim, dir.path(), "page_size = 200");
    let summary = backfill(&s, BackfillOptions::default()).await;
    assert!(summary.complete(), "{summary:?}");
    assert_eq!(sim.requests().iter().filter(|r| r.status == 503).count(), 3);
    assert_exactly_once(&delivered(dir.path()), &expected(&sim, &BOTH));
}

#[tokio::test]
async fn truncated_json_leaves_the_cursor_and_is_retried() {
    let sim = finished_sim(Identity::Tenant, 1, 1000).await;
    let dir = tempfile::tempdir().unwrap();
    let s = settings(&sim, dir.path(), "page_size = 100\nstreams = [\"events\"]");
    // First a clean pass, so a cursor is stored.
    backfill(&s, BackfillOptions::default()).await;
    let before = app::state(&s).await.unwrap();
    let cursor_before = before.partitions[0].cursor.clone();
    assert!(cursor_before.is_some());

    // The next poll gets half a JSON body: an error naming the URL, the cursor untouched.
    sim.faults().truncate.store(1, Ordering::SeqCst);
    let s_one_try = {
        let mut s = s.clone();
        s.backfill.max_poll_failures = 1;
        s
    };
    let failed = backfill(&s_one_try, BackfillOptions::default()).await;
    assert!(!failed.complete());
    let after = app::state(&s).await.unwrap();
    let p = &after.partitions[0];
    assert_eq!(
        p.cursor, cursor_before,
        "a malformed page must not move the cursor"
    );
    let error = p.last_error.as_deref().unwrap();
    assert!(error.contains("malformed response from"), "{error}");
    assert!(
        error.contains(&format!("{}/siem/v1/events", sim.url())),
        "{error}"
    );

    // With retries allowed, the same truncation is retried and nothing is lost.
    sim.faults().truncate.store(1, Ordering::SeqCst);
    let summary = backfill(&s, BackfillOptions::default()).await;
    assert!(summary.complete(), "{summary:?}");
    assert_exactly_once(&delivered(dir.path()), &expected(&sim, &["events"]));
}

#[tokio::test]
async fn partner_credentials_poll_every_tenant_with_independent_cursors() {
    let sim = finished_sim(Identity::Partner, 3, 700).await;
    let dir = tempfile::tempdir().unwrap();
    let s = settings(&sim, dir.path(), "page_size = 300");
    let summary = backfill(&s, BackfillOptions::default()).await;
    assert!(summary.complete(), "{summary:?}");
    let state = app::state(&s).await.unwrap();
    let mut tenants: Vec<_> = state
        .partitions
        .iter()
        .map(|p| (p.tenant.clone(), p.stream.clone()))
        .collect();
    tenants.sort();
    tenants.dedup();
    assert_eq!(tenants.len(), 6, "3 tenants x 2 streams: {tenants:?}");
    let cursors: std::collections::HashSet<_> =
        state.partitions.iter().map(|p| p.cursor.clone()).collect();
    assert!(state.partitions.iter().all(|p| p.cursor.is_some()));
    assert!(cursors.len() > 1, "each partition keeps its own cursor");
    for tenant in sim.tenant_ids() {
        assert!(
            sim.requests().iter().any(|r| r.tenant == tenant),
            "tenant {tenant} never polled"
        );
    }
    assert_exactly_once(&delivered(dir.path()), &expected(&sim, &BOTH));
}

#[tokio::test]
async fn organization_credentials_are_discovered_too() {
    let sim = finished_sim(Identity::Organization, 2, 50).await;
    let dir = tempfile::tempdir().unwrap();
    let s = settings(&sim, dir.path(), "");
    assert!(backfill(&s, BackfillOptions::default()).await.complete());
    assert_exactly_once(&delivered(dir.path()), &expected(&sim, &BOTH));
}

#[tokio::test]
async fn backfill_reset_days_repulls_history_and_plain_backfill_is_a_noop() {
    let sim = finished_sim(Identity::Tenant, 1, 500).await;
    let dir = tempfile::tempdir().unwrap();
    let s = settings(&sim, dir.path(), "");
    let want = expected(&sim, &BOTH);
    assert!(backfill(&s, BackfillOptions::default()).await.complete());
    assert_eq!(delivered(dir.path()).len(), want.len());

    let noop = backfill(&s, BackfillOptions::default()).await;
    assert!(noop.complete());
    assert_eq!(
        delivered(dir.path()).len(),
        want.len(),
        "caught up: backfill delivers nothing"
    );

    let again = backfill(
        &s,
        BackfillOptions {
            reset: true,
            days: Some(1),
            ..BackfillOptions::default()
        },
    )
    .await;
    assert!(again.complete(), "{again:?}");
    let counts = counts(&delivered(dir.path()));
    assert_eq!(counts.len(), want.len());
    assert!(
        counts.values().all(|n| *n == 2),
        "--reset --days 1 sends the last day again, once"
    );
}

#[tokio::test]
async fn a_failing_sink_fills_the_outbox_to_its_cap_then_sources_pause_and_nothing_is_lost() {
    let sim = finished_sim(Identity::Tenant, 1, 4000).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // The sink's directory is unusable: a regular file stands where it should be. (Tests run as
    // root, for whom a read-only mode bit does not stop writes; ENOTDIR fails the same code path.)
    std::fs::write(&out, "not a directory").unwrap();
    let text = config_text(
        &sim,
        dir.path(),
        "page_size = 100",
        "[outbox]\nmax_bytes = 200000",
    );
    let s = Settings::from_toml(&text).unwrap();
    let mut daemon = common::Daemon::start(&s);

    // Sources keep polling until the outbox reaches its cap, then pause.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = app::state(&s).await.unwrap();
        if state.sources_paused {
            break;
        }
        daemon.assert_running().await;
        assert!(
            Instant::now() < deadline,
            "outbox never reached its cap: {:?}",
            state.outbox
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let polled = sim.requests().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sim.requests().len(),
        polled,
        "a paused source must not poll"
    );
    let state = app::state(&s).await.unwrap();
    assert!(state.outbox.bytes >= 200_000);
    let fetched: i64 = state.partitions.iter().map(|p| p.events_total).sum();
    assert!(
        fetched < 4800,
        "back-pressure must stop fetching before everything is read ({fetched})"
    );
    assert_eq!(
        state.sinks[0].backlog, state.outbox.rows,
        "everything waits for the sink"
    );
    assert!(state.sinks[0]
        .state
        .last_error
        .as_deref()
        .unwrap()
        .contains("out"));
    assert!(delivered(dir.path()).is_empty());

    // The directory comes back: the backlog drains, sources resume, everything arrives once.
    std::fs::remove_file(&out).unwrap();
    let want = expected(&sim, &BOTH);
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered_so_far(dir.path()).len() < want.len() {
        assert!(Instant::now() < deadline, "backlog never drained");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    daemon.stop().await;
    assert_exactly_once(&delivered(dir.path()), &want);
    let state = app::state(&s).await.unwrap();
    assert_eq!(
        state.outbox.rows, 0,
        "delivered rows are pruned from the outbox"
    );
}

#[tokio::test]
async fn a_cursor_older_than_the_horizon_is_clamped_loudly() {
    let sim = finished_sim(Identity::Tenant, 1, 100).await;
    let dir = tempfile::tempdir().unwrap();
    let s = settings(&sim, dir.path(), "streams = [\"events\"]");
    assert!(backfill(&s, BackfillOptions::default()).await.complete());
    // Pretend the daemon was down for two days: plant a 48-hour-old cursor.
    let old = chrono::Utc::now() - chrono::Duration::hours(48);
    let cursor = base64_cursor(old);
    let store = secrelay::store::Store::open(&s.store.path, secrelay::store::Access::Writer)
        .await
        .unwrap();
    let partition = secrelay::event::Partition::new("events", sim.tenant_ids()[0].clone());
    let page = secrelay::event::Page {
        cursor: Some(cursor),
        ..Default::default()
    };
    store
        .commit_page("sophos_t", &partition, &page, chrono::Utc::now())
        .await
        .unwrap();
    store.close().await;
    drop(store);

    let summary = backfill(&s, BackfillOptions::default()).await;
    assert!(summary.complete(), "{summary:?}");
    let state = app::state(&s).await.unwrap();
    assert_eq!(
        state.partitions[0].clamps_total, 1,
        "the clamp is counted in state"
    );
    assert!(
        sim.requests().iter().all(|r| r.status == 200),
        "no request may carry a cursor past the horizon"
    );
}

fn base64_cursor(at: chrono::DateTime<chrono::Utc>) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!(
        "V2_CURSOR|{}",
        at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    ))
}

#[tokio::test]
async fn an_item_without_id_is_kept_as_rejected_shown_in_state_and_the_stream_moves_on() {
    let sim = SophosSim::start(SophosSimConfig {
        scripted: true,
        ..SophosSimConfig::default()
    })
    .await
    .unwrap();
    let at = chrono::Utc::now() - chrono::Duration::minutes(30);
    let item = |n: i64, id: Option<&str>| {
        let mut v = serde_json::json!({
            "created_at": (at + chrono::Duration::seconds(n)).to_rfc3339(),
            "type": "Event::Endpoint::Threat::Detected",
            "severity": "high",
            "n": n,
        });
        if let Some(id) = id {
            v["id"] = id.into();
        }
        v
    };
    sim.push(0, "events", at, item(0, Some("e0")));
    sim.push(
        0,
        "events",
        at + chrono::Duration::seconds(1),
        item(1, None),
    );
    sim.push(
        0,
        "events",
        at + chrono::Duration::seconds(2),
        item(2, Some("e2")),
    );
    let dir = tempfile::tempdir().unwrap();
    let s = settings(&sim, dir.path(), "page_size = 2\nstreams = [\"events\"]");
    let summary = backfill(&s, BackfillOptions::default()).await;
    assert!(summary.complete(), "{summary:?}");
    let tenant = sim.tenant_ids()[0].clone();
    let ids: Vec<_> = delivered(dir.path()).into_iter().map(|d| d.2).collect();
    assert_eq!(
        ids,
        ["e0", "e2"],
        "the record after the bad one is delivered"
    );

    // A second run fetches the boundary again: the rejected record is not kept twice.
    sim.push(
        0,
        "events",
        at + chrono::Duration::seconds(3),
        item(3, Some("e3")),
    );
    assert!(backfill(&s, BackfillOptions::default()).await.complete());
    let state = app::state(&s).await.unwrap();
    let events = state
        .partitions
        .iter()
        .find(|p| p.stream == "events" && p.tenant == tenant)
        .unwrap();
    assert_eq!(events.rejected_total, 1);
    assert_eq!(state.rejected.len(), 1);
    assert_eq!(state.rejected[0].reason, "item 1 has no id");
    assert!(state.rejected[0].url.ends_with("/siem/v1/events"));
    let table = state.to_table();
    assert!(
        table.contains("REJECTED RECORDS") && table.contains("item 1 has no id"),
        "{table}"
    );
}

/// Two sources on one simulator into one file sink; `extra_b` goes into the second source.
fn two_sources(sim: &SophosSim, dir: &std::path::Path, extra_b: &str) -> Settings {
    let source = |id: &str, extra: &str| {
        format!(
            "[sources.{id}]\ntype = \"sophos\"\nclient_id = \"sim-client\"\nclient_secret = \"sim-secret\"\n\
             token_url = {:?}\napi_url = {:?}\ninterval_secs = 0.5\ninitial_lookback_hours = 2\n\
             page_size = 200\nsinks = [\"out\"]\n{extra}\n",
            sim.token_url(),
            sim.url()
        )
    };
    let text = format!(
        "[store]\npath = {:?}\n[scheduler]\njitter_secs = 0.0\nbackoff_initial_secs = 0.1\n\
         backoff_max_secs = 0.2\n[backfill]\ndrain_timeout_secs = 1.0\nmax_poll_failures = 2\n\
         [sinks.out]\ntype = \"file\"\npath = {:?}\n{}{}",
        dir.join("state.db").display().to_string(),
        dir.join("out").join("events.ndjson").display().to_string(),
        source("sophos_a", ""),
        source("sophos_b", extra_b),
    );
    Settings::from_toml(&text).expect("valid test config")
}

/// Delivered lines per (source, stream, id).
fn by_source(dir: &std::path::Path) -> std::collections::HashMap<(String, String, String), usize> {
    let mut counts = std::collections::HashMap::new();
    let Ok(text) = std::fs::read_to_string(dir.join("out").join("events.ndjson")) else {
        return counts;
    };
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let key = (
            v["source"].as_str().unwrap().to_string(),
            v["stream"].as_str().unwrap().to_string(),
            v["id"].as_str().unwrap().to_string(),
        );
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn rows_of_sources_left_out_of_a_run_are_still_delivered_later() {
    let sim = finished_sim(Identity::Tenant, 1, 300).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let want = expected(&sim, &BOTH);

    // Both sources fill the outbox while the sink is down.
    std::fs::write(&out, "not a directory").unwrap();
    let s = two_sources(&sim, dir.path(), "");
    let first = backfill(&s, BackfillOptions::default()).await;
    assert!(!first.complete(), "the sink is down: {first:?}");
    std::fs::remove_file(&out).unwrap();

    // A backfill of one source, then a run with the other disabled: neither may move the sink
    // past the other source's waiting rows.
    let only_a = BackfillOptions {
        source: Some("sophos_a".into()),
        ..BackfillOptions::default()
    };
    backfill(&s, only_a).await;
    let disabled = two_sources(&sim, dir.path(), "enabled = false");
    backfill(&disabled, BackfillOptions::default()).await;
    let summary = backfill(&s, BackfillOptions::default()).await;
    assert!(summary.complete(), "{summary:?}");

    let counts = by_source(dir.path());
    for source in ["sophos_a", "sophos_b"] {
        for (stream, _, id) in &want {
            let n = counts
                .get(&(source.to_string(), stream.clone(), id.clone()))
                .copied()
                .unwrap_or(0);
            assert_eq!(n, 1, "{source} {stream} {id} delivered {n} times");
        }
    }
    assert_eq!(counts.len(), 2 * want.len());
    assert_eq!(app::state(&s).await.unwrap().outbox.rows, 0);
}
