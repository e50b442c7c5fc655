//! The Code42 / Incydr source through the whole pipeline, against its simulator over real HTTP:
//! late events, 25 000 events in one window across a restart, INVALID_PAGE_TOKEN, filters, alerts
//! with observations, sessions that change, and the legacy console flows.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{assert_exactly_once, counts, delivered, delivered_so_far, Delivered};
use secrelay::app::{self, BackfillOptions};
use secrelay::settings::Settings;
use secrelay::simulate::code42::{Code42Sim, Code42SimConfig};
use tokio_util::sync::CancellationToken;

fn config(sim: &Code42Sim, dir: &std::path::Path, extra: &str) -> Settings {
    let url = sim.url();
    common::settings_with(
        dir,
        &format!(
            "[sources.c42]\ntype = \"code42\"\nclient_id = \"key-42\"\nclient_secret = \"sim-code42-secret\"\n\
             api_url = {url:?}\nconsole_url = {url:?}\ninterval_secs = 0.5\ninitial_lookback_hours = 6\n\
             sinks = [\"out\"]\n{extra}"
        ),
    )
}

async fn backfill(settings: &Settings) -> app::RunSummary {
    let summary = app::backfill(
        settings,
        &BackfillOptions::default(),
        CancellationToken::new(),
    )
    .await
    .expect("backfill runs");
    assert!(summary.complete(), "{summary:?}");
    summary
}

fn file_events(ids: &[String]) -> Vec<Delivered> {
    ids.iter()
        .map(|id| ("file_events".to_string(), String::new(), id.clone()))
        .collect()
}

async fn sim() -> Code42Sim {
    Code42Sim::start(Code42SimConfig::default()).await.unwrap()
}

#[tokio::test]
async fn late_inserted_and_late_visible_events_are_delivered_exactly_once() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let s = config(&sim, dir.path(), "streams = [\"file_events\"]");
    let now = Utc::now();
    let mut ids = sim.add_file_events(
        100,
        now - chrono::Duration::minutes(50),
        chrono::Duration::seconds(20),
        chrono::Duration::seconds(5),
    );
    backfill(&s).await;
    assert_exactly_once(&delivered(dir.path()), &file_events(&ids));

    // Detected on a laptop that was offline for hours: `@timestamp` long before the cursor, but
    // inserted now. The window is on insertion time, so it is found.
    ids.push(sim.add_file_event(
        Utc::now(),
        Utc::now() - chrono::Duration::hours(5),
        Utc::now(),
    ));
    // Inserted five minutes ago, before the last window ended, but searchable only now: the
    // 15-minute overlap of the next window finds it.
    let five_ago = Utc::now() - chrono::Duration::minutes(5);
    ids.push(sim.add_file_event(five_ago, five_ago, Utc::now()));
    backfill(&s).await;
    backfill(&s).await;
    assert_exactly_once(&delivered(dir.path()), &file_events(&ids));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_five_thousand_events_in_one_window_arrive_complete_and_once_across_a_restart() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &sim,
        dir.path(),
        "streams = [\"file_events\"]\npage_size = 10000",
    );
    let start = Utc::now() - chrono::Duration::minutes(40);
    let ids = sim.add_file_events(
        25_000,
        start,
        chrono::Duration::milliseconds(80),
        chrono::Duration::seconds(3),
    );
    // Slow pages, so the daemon can be stopped between the first and the last page.
    sim.faults().delay_ms.store(400, Ordering::SeqCst);
    let daemon = common::Daemon::start(&s);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = app::state(&s).await.unwrap();
        let fetched: i64 = state.partitions.iter().map(|p| p.events_total).sum();
        if fetched >= 10_000 {
            let cursor = state.partitions[0].cursor.clone().unwrap();
            assert!(
                cursor.contains("\"token\":\""),
                "stopped mid-window: {cursor}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "first page never committed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.stop().await;
    let before_restart = sim.requests().len();

    sim.faults().delay_ms.store(0, Ordering::SeqCst);
    backfill(&s).await;
    let requests = sim.requests();
    let resumed = &requests[before_restart];
    assert!(
        resumed.pg_token.as_deref().is_some_and(|t| !t.is_empty()),
        "the restart resumes from the stored pgToken, not from the window start"
    );
    assert!(
        requests.iter().all(|r| r.pg_token.is_some()),
        "every query uses token paging; pgNum paging would stop at 10 000"
    );
    assert_exactly_once(&delivered(dir.path()), &file_events(&ids));
}

#[tokio::test]
async fn invalid_page_token_restarts_the_window_from_its_stored_start() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &sim,
        dir.path(),
        "streams = [\"file_events\"]\npage_size = 100",
    );
    let first = sim.add_file_events(
        150,
        Utc::now() - chrono::Duration::hours(3),
        chrono::Duration::seconds(30),
        chrono::Duration::zero(),
    );
    backfill(&s).await;
    let stored = app::state(&s).await.unwrap().partitions[0]
        .cursor
        .clone()
        .unwrap();
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();

    let mut ids = first;
    ids.extend(sim.add_file_events(
        350,
        Utc::now() - chrono::Duration::seconds(1),
        chrono::Duration::milliseconds(1),
        chrono::Duration::zero(),
    ));
    sim.faults().invalid_page_token.store(1, Ordering::SeqCst);
    let before = sim.requests().len();
    backfill(&s).await;
    let requests = sim.requests()[before..].to_vec();
    let refused = requests
        .iter()
        .position(|r| r.status == 400)
        .expect("INVALID_PAGE_TOKEN was served");
    let restart = &requests[refused + 1];
    assert_eq!(
        restart.pg_token.as_deref(),
        Some(""),
        "the window restarts with a fresh token"
    );
    let window_start = restart.body["groups"][0]["filters"][0]["value"]
        .as_str()
        .unwrap();
    let stored_since =
        chrono::DateTime::parse_from_rfc3339(stored["since"].as_str().unwrap()).unwrap();
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(window_start)
            .unwrap()
            .timestamp_millis(),
        stored_since.timestamp_millis(),
        "restart from the stored window start, not from the beginning of history"
    );
    assert_exactly_once(&delivered(dir.path()), &file_events(&ids));
}

#[tokio::test]
async fn rate_limit_retry_after_is_waited_out() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let s = config(&sim, dir.path(), "streams = [\"file_events\"]");
    let ids = sim.add_file_events(
        10,
        Utc::now() - chrono::Duration::minutes(30),
        chrono::Duration::seconds(1),
        chrono::Duration::zero(),
    );
    sim.faults().retry_after_secs.store(2, Ordering::SeqCst);
    sim.faults().rate_limit.store(1, Ordering::SeqCst);
    backfill(&s).await;
    let requests = sim.requests();
    let limited = requests.iter().position(|r| r.status == 429).unwrap();
    let waited = requests[limited + 1]
        .at
        .duration_since(requests[limited].at);
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
    assert_exactly_once(&delivered(dir.path()), &file_events(&ids));
}

#[tokio::test]
async fn a_filter_change_restarts_the_window_at_the_stored_time_with_the_new_filter() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let ids = sim.add_file_events(
        40,
        Utc::now() - chrono::Duration::hours(1),
        chrono::Duration::seconds(30),
        chrono::Duration::zero(),
    );
    let plain = config(&sim, dir.path(), "streams = [\"file_events\"]");
    backfill(&plain).await;
    let stored = app::state(&plain).await.unwrap().partitions[0]
        .cursor
        .clone()
        .unwrap();
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();

    let filtered = config(
        &sim,
        dir.path(),
        "streams = [\"file_events\"]\n[[sources.c42.file_event_filters]]\nterm = \"file.category\"\noperator = \"IS\"\nvalue = \"Document\"",
    );
    let before = sim.requests().len();
    backfill(&filtered).await;
    let query = &sim.requests()[before].body;
    assert_eq!(
        query["groups"][1]["filters"][0]["term"], "file.category",
        "the new filter is sent"
    );
    assert_eq!(
        query["groups"][0]["filters"][0]["value"],
        stored["since"]
            .as_str()
            .map(|t| chrono::DateTime::parse_from_rfc3339(t)
                .unwrap()
                .with_timezone(&Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap(),
        "the window restarts at the stored time"
    );
    let after = app::state(&filtered).await.unwrap().partitions[0]
        .cursor
        .clone()
        .unwrap();
    assert!(
        after.contains("file.category"),
        "the cursor remembers the filters: {after}"
    );
    assert_exactly_once(&delivered(dir.path()), &file_events(&ids));
}

#[tokio::test]
async fn alerts_arrive_with_their_observations_once() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &sim,
        dir.path(),
        "streams = [\"alerts\"]\nalert_page_size = 60",
    );
    let base = Utc::now() - chrono::Duration::hours(2);
    let mut ids = Vec::new();
    for i in 0..150 {
        ids.push(sim.add_alert(
            base + chrono::Duration::seconds(i * 10),
            &format!("alert {i}"),
            (i % 3) as usize,
        ));
    }
    backfill(&s).await;
    backfill(&s).await;
    let want: Vec<Delivered> = ids
        .iter()
        .map(|id| ("alerts".to_string(), String::new(), id.clone()))
        .collect();
    assert_exactly_once(&delivered(dir.path()), &want);
    // Each record is the alert's details: observations included.
    let text = std::fs::read_to_string(dir.path().join("out/events.ndjson")).unwrap();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let name = v["record"]["name"].as_str().unwrap();
        let i: usize = name.trim_start_matches("alert ").parse().unwrap();
        assert_eq!(
            v["record"]["observations"].as_array().unwrap().len(),
            i % 3,
            "{name}"
        );
    }
    let details = sim
        .requests()
        .into_iter()
        .filter(|r| r.path == "query-details")
        .collect::<Vec<_>>();
    assert!(details
        .iter()
        .all(|r| r.body["alertIds"].as_array().unwrap().len() <= 100));
}

#[tokio::test]
async fn a_session_that_changes_state_twice_is_forwarded_three_times() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &sim,
        dir.path(),
        "streams = [\"sessions\"]\nsession_page_size = 2",
    );
    let changing = sim.add_session(Utc::now() - chrono::Duration::hours(3));
    let quiet = sim.add_session(Utc::now() - chrono::Duration::hours(2));
    for i in 0..3 {
        sim.add_session(Utc::now() - chrono::Duration::minutes(90 - i));
    }
    backfill(&s).await;
    sim.update_session(&changing, "IN_PROGRESS").unwrap();
    backfill(&s).await;
    backfill(&s).await;
    sim.update_session(&changing, "CLOSED_TP").unwrap();
    backfill(&s).await;

    let text = std::fs::read_to_string(dir.path().join("out/events.ndjson")).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let states_of = |id: &str| -> Vec<String> {
        records
            .iter()
            .filter(|r| r["record"]["sessionId"] == id)
            .map(|r| {
                r["record"]["states"].as_array().unwrap().last().unwrap()["state"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(states_of(&changing), ["OPEN", "IN_PROGRESS", "CLOSED_TP"]);
    assert_eq!(states_of(&quiet), ["OPEN"]);
    assert_eq!(
        records.len(),
        3 + 4,
        "one event per session state seen, no repeats"
    );
    assert!(counts(&delivered(dir.path())).values().all(|n| *n == 1));
}

#[tokio::test]
async fn legacy_console_api_client_reads_v1_file_events_and_alerts() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &sim,
        dir.path(),
        "auth = \"legacy_api_client\"\nfile_events_api = \"v1\"\nstreams = [\"file_events\", \"alerts\"]",
    );
    let ids = sim.add_file_events(
        30,
        Utc::now() - chrono::Duration::minutes(30),
        chrono::Duration::seconds(10),
        chrono::Duration::zero(),
    );
    let alert = sim.add_alert(
        Utc::now() - chrono::Duration::minutes(10),
        "legacy alert",
        1,
    );
    backfill(&s).await;
    let mut want = file_events(&ids);
    want.push(("alerts".to_string(), String::new(), alert));
    assert_exactly_once(&delivered(dir.path()), &want);
    let text = std::fs::read_to_string(dir.path().join("out/events.ndjson")).unwrap();
    assert!(text.contains("\"eventId\":"), "v1 flat records");
    let paths: Vec<String> = sim.requests().into_iter().map(|r| r.path).collect();
    assert!(paths
        .iter()
        .any(|p| p == "/forensic-search/queryservice/api/v1/fileevent"));
}

#[tokio::test]
async fn legacy_console_user_login_reads_file_events() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &sim,
        dir.path(),
        "auth = \"legacy_user\"\nstreams = [\"file_events\"]",
    );
    // The user login takes the username and password in the client id and secret keys.
    let mut s = s;
    if let secrelay::settings::SourceSettings::Code42(c) = s.sources.get_mut("c42").unwrap() {
        c.client_id = "admin@example.com".into();
        c.client_secret = Some(secrelay::settings::Secret::new("sim-password"));
    }
    let ids = sim.add_file_events(
        5,
        Utc::now() - chrono::Duration::minutes(20),
        chrono::Duration::seconds(10),
        chrono::Duration::zero(),
    );
    backfill(&s).await;
    assert_exactly_once(&delivered(dir.path()), &file_events(&ids));
}

#[tokio::test]
async fn an_expired_token_is_renewed_once_and_the_tenant_comes_from_it() {
    use secrelay::sources::code42::Code42Source;
    use secrelay::sources::Source;
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let s = config(&sim, dir.path(), "streams = [\"file_events\", \"alerts\"]");
    let secrelay::settings::SourceSettings::Code42(c) = s.sources["c42"].clone() else {
        panic!("code42 settings")
    };
    sim.add_file_events(
        3,
        Utc::now() - chrono::Duration::minutes(5),
        chrono::Duration::seconds(1),
        chrono::Duration::zero(),
    );
    sim.add_alert(Utc::now() - chrono::Duration::minutes(5), "a", 0);
    let source = Code42Source::new(
        "c42",
        c,
        secrelay::sources::http::client(&s.http).unwrap(),
        None,
    )
    .unwrap();
    let partitions = source.partitions().await.unwrap();
    assert_eq!(
        source
            .poll(&partitions[0], None)
            .await
            .unwrap()
            .events
            .len(),
        3
    );
    assert_eq!(sim.token_requests(), 1);
    sim.expire_tokens();
    assert_eq!(
        source
            .poll(&partitions[0], None)
            .await
            .unwrap()
            .events
            .len(),
        3
    );
    assert_eq!(sim.token_requests(), 2, "renewed once after the 401");
    // Alerts carry the tenant id read from the token's tenantUid claim; the simulator refuses others.
    assert_eq!(
        source
            .poll(&partitions[1], None)
            .await
            .unwrap()
            .events
            .len(),
        1
    );
}

#[tokio::test]
async fn the_simulator_caps_pgnum_paging_at_ten_thousand_as_the_real_api_does() {
    let sim = sim().await;
    sim.add_file_events(
        12_000,
        Utc::now() - chrono::Duration::minutes(30),
        chrono::Duration::milliseconds(100),
        chrono::Duration::zero(),
    );
    secrelay::sources::http::install_crypto_provider();
    let client = reqwest::Client::new();
    let token: serde_json::Value = client
        .post(format!("{}/v1/oauth", sim.url()))
        .basic_auth("key-42", Some("sim-code42-secret"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bearer = token["access_token"].as_str().unwrap().to_string();
    let mut total = 0;
    for page in 1..=3 {
        let body = serde_json::json!({"groups": [], "pgNum": page, "pgSize": 5000, "srtKey": "event.inserted", "srtDir": "asc"});
        let reply: serde_json::Value = client
            .post(format!("{}/v2/file-events", sim.url()))
            .bearer_auth(&bearer)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(reply["nextPgToken"].is_null());
        total += reply["fileEvents"].as_array().unwrap().len();
    }
    assert_eq!(
        total, 10_000,
        "without a pgToken the results stop at 10 000 of 12 000"
    );
}

fn alert_lines(ids: &[String]) -> Vec<Delivered> {
    ids.iter()
        .map(|id| ("alerts".to_string(), String::new(), id.clone()))
        .collect()
}

/// Alerts already there before the first poll: five at distinct instants, then two sharing the
/// newest `createdAt` (`boundary`, where the cursor comes to rest).
fn alerts_before(sim: &Code42Sim, boundary: chrono::DateTime<Utc>) -> Vec<String> {
    let mut ids: Vec<String> = (0..5)
        .map(|i| {
            sim.add_alert(
                boundary - chrono::Duration::minutes(10 - i),
                &format!("old {i}"),
                0,
            )
        })
        .collect();
    ids.extend(sim.add_alerts_at(boundary, "boundary", 2));
    ids
}

/// Three pages (page size 5) of new alerts: three more at the cursor's boundary instant, four
/// sharing one later instant, and eight at instants of their own.
fn alerts_after(sim: &Code42Sim, boundary: chrono::DateTime<Utc>) -> Vec<String> {
    let mut ids = sim.add_alerts_at(boundary, "late at boundary", 3);
    ids.extend(sim.add_alerts_at(boundary + chrono::Duration::seconds(1), "tied", 4));
    for i in 0..8 {
        ids.push(sim.add_alert(
            boundary + chrono::Duration::seconds(2 + i),
            &format!("new {i}"),
            1,
        ));
    }
    ids
}

fn query_alerts_requests(sim: &Code42Sim) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.path == "query-alerts")
        .count()
}

/// Issue 8, defect 1: a daemon that caught up and sat idle for several polls then receives three
/// pages of new alerts, some at the cursor's boundary instant and several sharing one: each is
/// delivered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_delivers_alerts_arriving_after_an_idle_stretch_exactly_once() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &sim,
        dir.path(),
        "streams = [\"alerts\"]\nalert_page_size = 5",
    );
    let mut s = s;
    if let secrelay::settings::SourceSettings::Code42(c) = s.sources.get_mut("c42").unwrap() {
        c.interval_secs = 0.3;
    }
    let boundary = Utc::now() - chrono::Duration::minutes(10);
    let mut ids = alerts_before(&sim, boundary);
    let daemon = common::Daemon::start(&s);
    let wait_for = |want: usize, what: &'static str| {
        let dir = dir.path().to_path_buf();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while delivered_so_far(&dir).len() < want {
                assert!(
                    Instant::now() < deadline,
                    "{what}: {} of {want} delivered",
                    delivered_so_far(&dir).len()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_for(ids.len(), "catching up").await;
    // Idle: several polls find nothing new.
    let polls = query_alerts_requests(&sim);
    let deadline = Instant::now() + Duration::from_secs(20);
    while query_alerts_requests(&sim) < polls + 5 {
        assert!(Instant::now() < deadline, "the daemon stopped polling");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ids.extend(alerts_after(&sim, boundary));
    wait_for(ids.len(), "after the idle stretch").await;
    // A few more polls, so a late duplicate would show.
    let polls = query_alerts_requests(&sim);
    while query_alerts_requests(&sim) < polls + 3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.stop().await;
    assert_exactly_once(&delivered(dir.path()), &alert_lines(&ids));
}

/// Issue 8, defect 1, as `backfill` runs: catch up, several runs that find nothing new, then three
/// pages of new alerts (some at the boundary instant): each delivered exactly once.
#[tokio::test]
async fn backfill_delivers_alerts_arriving_after_idle_runs_exactly_once() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &sim,
        dir.path(),
        "streams = [\"alerts\"]\nalert_page_size = 5",
    );
    let boundary = Utc::now() - chrono::Duration::minutes(10);
    let mut ids = alerts_before(&sim, boundary);
    backfill(&s).await;
    assert_exactly_once(&delivered(dir.path()), &alert_lines(&ids));
    for _ in 0..3 {
        backfill(&s).await;
    }
    ids.extend(alerts_after(&sim, boundary));
    backfill(&s).await;
    backfill(&s).await;
    assert_exactly_once(&delivered(dir.path()), &alert_lines(&ids));
}

/// Polls `partition` from `cursor` until the source says nothing more waits, as the scheduler
/// would; returns the ids of the events not in `seen` (the seen-set), and adds them to it.
async fn one_pass(
    source: &secrelay::sources::code42::Code42Source,
    partition: &secrelay::event::Partition,
    cursor: &mut Option<String>,
    seen: &mut std::collections::HashSet<String>,
) -> Vec<String> {
    use secrelay::sources::Source;
    let mut ids = Vec::new();
    for _ in 0..100 {
        let page = source.poll(partition, cursor.as_deref()).await.unwrap();
        ids.extend(
            page.events
                .iter()
                .filter(|e| seen.insert(e.id.clone()))
                .map(|e| e.id.clone()),
        );
        if page.cursor.is_some() {
            *cursor = page.cursor;
        }
        if !page.more {
            return ids;
        }
    }
    panic!("the pass never ended");
}

/// Issue 8, defect 11: a session that is closed after it has left `session_window_hours` (the API
/// filters on `beginTime` only) is still forwarded, once per change; sessions closed while in the
/// window are no longer re-read after they leave it.
#[tokio::test]
async fn a_session_closed_after_it_left_the_window_is_forwarded() {
    use secrelay::sources::code42::Code42Source;
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &sim,
        dir.path(),
        "streams = [\"sessions\"]\nsession_window_hours = 1\nsession_page_size = 2",
    );
    let secrelay::settings::SourceSettings::Code42(c) = s.sources["c42"].clone() else {
        panic!("code42 settings")
    };
    let t0 = Utc::now() - chrono::Duration::days(3);
    sim.set_now(t0);
    let long_open = sim.add_session(t0 - chrono::Duration::minutes(30));
    let closed_early = sim.add_session(t0 - chrono::Duration::minutes(20));
    let recent: Vec<String> = (0..3)
        .map(|i| sim.add_session(t0 - chrono::Duration::minutes(10 - i)))
        .collect();
    let source = Code42Source::new(
        "c42",
        c.clone(),
        secrelay::sources::http::client(&s.http).unwrap(),
        None,
    )
    .unwrap()
    .with_clock(sim.clock());
    let partition = secrelay::event::Partition::new("sessions", "");
    let mut cursor = None;
    let mut seen = std::collections::HashSet::new();
    let version = |id: &str| format!("{id}@{}", sim.session_state(id).unwrap().1);
    let first = one_pass(&source, &partition, &mut cursor, &mut seen).await;
    assert_eq!(first.len(), 5, "{first:?}");

    sim.set_now(t0 + chrono::Duration::minutes(1));
    sim.update_session(&closed_early, "CLOSED_FP").unwrap();
    assert_eq!(
        one_pass(&source, &partition, &mut cursor, &mut seen).await,
        [version(&closed_early)]
    );

    // Three hours on: every session began before the window.
    sim.set_now(t0 + chrono::Duration::hours(3));
    sim.update_session(&long_open, "IN_PROGRESS").unwrap();
    assert_eq!(
        one_pass(&source, &partition, &mut cursor, &mut seen).await,
        [version(&long_open)]
    );
    sim.set_now(t0 + chrono::Duration::hours(4));
    sim.update_session(&long_open, "CLOSED_TP").unwrap();
    sim.update_session(&recent[1], "CLOSED").unwrap();
    let mut got = one_pass(&source, &partition, &mut cursor, &mut seen).await;
    got.sort();
    let mut want = vec![version(&long_open), version(&recent[1])];
    want.sort();
    assert_eq!(got, want);

    // Closed sessions are no longer followed: the next pass reads only the open ones.
    let before = sim.requests().len();
    assert!(one_pass(&source, &partition, &mut cursor, &mut seen)
        .await
        .is_empty());
    let read: Vec<String> = sim.requests()[before..]
        .iter()
        .map(|r| r.path.clone())
        .collect();
    let mut by_id: Vec<&String> = read
        .iter()
        .filter(|p| p.starts_with("/v1/sessions/"))
        .collect();
    by_id.sort();
    let mut open: Vec<String> = [&recent[0], &recent[2]]
        .iter()
        .map(|id| format!("/v1/sessions/{id}"))
        .collect();
    open.sort();
    assert_eq!(by_id, open.iter().collect::<Vec<_>>());
}
/// Issue 8, defect 9: a file event without an id, alerts without an id or with an unparseable
/// `createdAt` and a session without a `sessionId` go to the dead-letter table with the URL and
/// the reason; every good record around them is delivered and the partitions catch up.
#[tokio::test]
async fn malformed_records_are_dead_lettered_and_the_rest_moves_on() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &sim,
        dir.path(),
        "page_size = 3\nalert_page_size = 3\nsession_page_size = 2",
    );
    let now = Utc::now();
    let mut want = Vec::new();
    let early = sim.add_file_events(
        2,
        now - chrono::Duration::minutes(30),
        chrono::Duration::seconds(1),
        chrono::Duration::zero(),
    );
    sim.add_raw_file_event(
        now - chrono::Duration::minutes(29),
        serde_json::json!({"event": {"action": "file-created", "inserted": "2026-01-01T00:00:00Z"}, "file": {"name": "no-id.docx"}}),
    );
    let late = sim.add_file_events(
        4,
        now - chrono::Duration::minutes(28),
        chrono::Duration::seconds(1),
        chrono::Duration::zero(),
    );
    want.extend(file_events(&early));
    want.extend(file_events(&late));
    let mut alerts = vec![sim.add_alert(now - chrono::Duration::minutes(20), "before", 0)];
    sim.add_raw_alert(
        now - chrono::Duration::minutes(19),
        serde_json::json!({"name": "no id", "createdAt": (now - chrono::Duration::minutes(19))
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)}),
    );
    sim.add_raw_alert(
        now - chrono::Duration::minutes(18),
        serde_json::json!({"id": "bad-time", "name": "bad time", "createdAt": "yesterday"}),
    );
    for i in 0..4 {
        alerts.push(sim.add_alert(
            now - chrono::Duration::minutes(17 - i),
            &format!("after {i}"),
            0,
        ));
    }
    want.extend(alert_lines(&alerts));
    let session = sim.add_session(now - chrono::Duration::hours(1));
    sim.add_raw_session(serde_json::json!({
        "beginTime": (now - chrono::Duration::minutes(50)).timestamp_millis(),
        "lastUpdated": now.timestamp_millis(),
        "states": [],
    }));
    let other = sim.add_session(now - chrono::Duration::minutes(40));
    for id in [&session, &other] {
        let (_, updated) = sim.session_state(id).unwrap();
        want.push(("sessions".into(), String::new(), format!("{id}@{updated}")));
    }

    backfill(&s).await;
    backfill(&s).await;
    assert_exactly_once(&delivered(dir.path()), &want);
    let store = secrelay::store::Store::open(&s.store.path, secrelay::store::Access::Reader)
        .await
        .unwrap();
    let dead = store.rejected_records("c42").await.unwrap();
    let by_stream = |stream: &str| dead.iter().filter(|r| r.stream == stream).count();
    assert_eq!(by_stream("file_events"), 1, "{dead:?}");
    assert_eq!(by_stream("alerts"), 2, "{dead:?}");
    assert_eq!(by_stream("sessions"), 1, "{dead:?}");
    assert!(
        dead.iter().all(|r| r.url.starts_with(&sim.url())),
        "{dead:?}"
    );
    assert!(dead
        .iter()
        .any(|r| r.stream == "alerts" && r.reason.contains("createdAt")));
    assert!(dead.iter().any(|r| r.record.contains("no-id.docx")));
}
