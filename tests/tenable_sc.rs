//! The Tenable.sc source against its simulator over real HTTP: keyset paging of 25 000 rows while
//! new findings arrive, rows leaving and entering the window mid-pass, ties in unstable order, re-observations, mitigated findings, session re-login and logout,
//! and `error_code` surfacing.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use common::{assert_exactly_once, delivered, delivered_so_far, Delivered};
use secrelay::app::{self, BackfillOptions};
use secrelay::settings::{Settings, SourceSettings};
use secrelay::simulate::tenable_sc::{TenableChange, TenableSim, TenableSimConfig};
use secrelay::sources::tenable_sc::TenableScSource;
use secrelay::sources::{Source, SourceError};
use tokio_util::sync::CancellationToken;

fn config(sim: &TenableSim, dir: &std::path::Path, extra: &str) -> Settings {
    common::settings_with(
        dir,
        &format!(
            "[sources.sc]\ntype = \"tenable_sc\"\nurl = {:?}\nsinks = [\"out\"]\n{extra}",
            sim.url()
        ),
    )
}

const KEYS: &str = "access_key = \"ak-1\"\nsecret_key = \"sim-tenable-secret\"";
const SESSION: &str =
    "auth = \"session\"\nusername = \"secmanager\"\npassword = \"sim-tenable-password\"";

async fn backfill(settings: &Settings) {
    let summary = app::backfill(
        settings,
        &BackfillOptions::default(),
        CancellationToken::new(),
    )
    .await
    .expect("backfill runs");
    assert!(summary.complete(), "{summary:?}");
}

fn expected(stream: &str, ids: Vec<String>) -> Vec<Delivered> {
    ids.into_iter()
        .map(|id| (stream.to_string(), String::new(), id))
        .collect()
}

fn source(settings: &Settings) -> TenableScSource {
    let SourceSettings::TenableSc(s) = settings.sources["sc"].clone() else {
        panic!("tenable settings")
    };
    TenableScSource::new("sc", s, &settings.http, None).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_five_thousand_rows_paged_while_findings_arrive_complete_and_once() {
    let sim = TenableSim::start(TenableSimConfig::default())
        .await
        .unwrap();
    let now = Utc::now().timestamp();
    sim.add_findings(25_000, now - 10 * 86_400, now - 3600);
    sim.faults().delay_ms.store(30, Ordering::SeqCst);
    // New findings land inside the window while the pass runs, so totalRecords grows between pages.
    sim.faults().arrivals_per_page.store(5, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &sim,
        dir.path(),
        &format!("{KEYS}\nstreams = [\"cumulative\"]\npage_size = 1000\nconcurrency = 3"),
    );
    backfill(&s).await;
    sim.faults().arrivals_per_page.store(0, Ordering::SeqCst);
    // The next pass starts `overlap_hours` before the last one ended and picks up the late arrivals.
    backfill(&s).await;
    let want = expected("vulnerabilities", sim.identities(false));
    assert!(want.len() > 25_000, "findings arrived mid-pass");
    assert_exactly_once(&delivered(dir.path()), &want);
    // Keyset paging: each query starts where the last page ended, so `concurrency` no longer
    // fetches pages at once (issue 8, defect 3: concurrent offset pages skipped rows).
    assert_eq!(sim.max_in_flight(), 1, "one page at a time");
    let bodies = sim.analysis_requests();
    assert!(bodies
        .iter()
        .all(|(b, _)| b["query"]["startOffset"].is_u64() && b["startOffset"].is_null()));
}

#[tokio::test]
async fn a_finding_seen_again_is_forwarded_again_and_the_same_observation_never_twice() {
    let sim = TenableSim::start(TenableSimConfig::default())
        .await
        .unwrap();
    let now = Utc::now().timestamp();
    let numbers = sim.add_findings(50, now - 86_400, now - 7200);
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &sim,
        dir.path(),
        &format!("{KEYS}\nstreams = [\"cumulative\"]\npage_size = 20"),
    );
    backfill(&s).await;
    let mut want = expected("vulnerabilities", sim.identities(false));
    sim.reobserve(numbers[3], now - 60);
    backfill(&s).await;
    backfill(&s).await;
    let again = expected("vulnerabilities", sim.identities(false));
    let new: Vec<_> = again
        .iter()
        .filter(|id| !want.contains(id))
        .cloned()
        .collect();
    assert_eq!(new.len(), 1, "exactly the re-observed finding is new");
    want.extend(new);
    assert_exactly_once(&delivered(dir.path()), &want);
}

#[tokio::test]
async fn mitigated_findings_come_through_the_patched_stream() {
    let sim = TenableSim::start(TenableSimConfig::default())
        .await
        .unwrap();
    let now = Utc::now().timestamp();
    let numbers = sim.add_findings(30, now - 86_400, now - 7200);
    for n in &numbers[..5] {
        sim.mitigate(*n, now - 600);
    }
    let dir = tempfile::tempdir().unwrap();
    let s = config(&sim, dir.path(), KEYS);
    backfill(&s).await;
    let mut want = expected("vulnerabilities", sim.identities(false));
    want.extend(expected("mitigated", sim.identities(true)));
    assert_eq!(want.len(), 30);
    assert_exactly_once(&delivered(dir.path()), &want);
}

#[tokio::test]
async fn rows_are_delivered_as_the_vendor_wrote_them() {
    let sim = TenableSim::start(TenableSimConfig::default())
        .await
        .unwrap();
    let now = Utc::now().timestamp();
    sim.add_findings(40, now - 86_400, now - 7200);
    let dir = tempfile::tempdir().unwrap();
    backfill(&config(&sim, dir.path(), KEYS)).await;
    let text = std::fs::read_to_string(dir.path().join("out/events.ndjson")).unwrap();
    let mut got: Vec<(String, String)> = text
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            // The record is the envelope's last field: `…,"record":{…}}`.
            let at = line.find(",\"record\":").unwrap() + ",\"record\":".len();
            (
                v["id"].as_str().unwrap().to_string(),
                line[at..line.len() - 1].to_string(),
            )
        })
        .collect();
    let mut want = sim.rows();
    got.sort();
    want.sort();
    assert_eq!(got.len(), 40);
    assert_eq!(got, want);
    assert!(got[0].1.starts_with("{\"pluginID\":"), "{}", got[0].1);
}

#[tokio::test]
async fn an_expired_session_logs_in_again_and_stopping_logs_out() {
    let sim = TenableSim::start(TenableSimConfig {
        session_timeout_secs: 1.0,
        ..TenableSimConfig::default()
    })
    .await
    .unwrap();
    let now = Utc::now().timestamp();
    sim.add_findings(10, now - 3600, now - 60);
    let dir = tempfile::tempdir().unwrap();
    let s = config(&sim, dir.path(), SESSION);
    let source = source(&s);
    let partitions = source.partitions().await.unwrap();
    assert_eq!(
        source
            .poll(&partitions[0], None)
            .await
            .unwrap()
            .events
            .len(),
        10
    );
    assert_eq!(sim.logins(), 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        source
            .poll(&partitions[0], None)
            .await
            .unwrap()
            .events
            .len(),
        10
    );
    assert_eq!(sim.logins(), 2, "one re-login after the session expired");
    source.close().await;
    assert_eq!(sim.logouts(), 1, "DELETE /rest/token on stop");
}

#[tokio::test]
async fn error_code_in_the_envelope_surfaces_with_its_message() {
    let sim = TenableSim::start(TenableSimConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &sim,
        dir.path(),
        &format!("{KEYS}\n[[sources.sc.filters]]\nfilterName = \"bogusFilter\"\noperator = \"=\"\nvalue = \"1\""),
    );
    let source = source(&s);
    let partitions = source.partitions().await.unwrap();
    let err = source.poll(&partitions[0], None).await.unwrap_err();
    assert!(matches!(err, SourceError::Rejected { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("error_code 146") && text.contains("bogusFilter"),
        "{text}"
    );
    assert!(text.contains("/rest/analysis"), "{text}");
}

#[tokio::test]
async fn wrong_api_keys_are_an_auth_error() {
    let sim = TenableSim::start(TenableSimConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &sim,
        dir.path(),
        "access_key = \"ak-1\"\nsecret_key = \"wrong\"",
    );
    let source = source(&s);
    let err = source
        .poll(&source.partitions().await.unwrap()[0], None)
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::Auth { .. }), "{err}");
    assert!(
        !err.to_string().contains("wrong"),
        "the secret is not echoed: {err}"
    );
}

#[tokio::test]
async fn an_unreadable_ca_bundle_is_an_error_naming_the_key() {
    let sim = TenableSim::start(TenableSimConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &sim,
        dir.path(),
        &format!("{KEYS}\nca_file = \"/nonexistent/ca.pem\""),
    );
    let SourceSettings::TenableSc(settings) = s.sources["sc"].clone() else {
        panic!("tenable settings")
    };
    let err = TenableScSource::new("sc", settings, &s.http, None)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("sources.sc.ca_file") && err.contains("/nonexistent/ca.pem"),
        "{err}"
    );
}

#[path = "common/tls.rs"]
mod tls;

#[tokio::test]
async fn two_way_tls_with_a_private_ca_and_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = tls::pki(dir.path());
    let sim = TenableSim::start_tls(TenableSimConfig::default(), tls::server_config(&pki, true))
        .await
        .unwrap();
    let now = Utc::now().timestamp();
    sim.add_findings(20, now - 3600, now - 60);
    let tls_keys = format!(
        "{KEYS}\nstreams = [\"cumulative\"]\nca_file = {:?}\nclient_cert_file = {:?}\nclient_key_file = {:?}",
        pki.ca.display().to_string(),
        pki.client_cert.display().to_string(),
        pki.client_key.display().to_string()
    );
    let s = config(&sim, dir.path(), &tls_keys);
    backfill(&s).await;
    assert_exactly_once(
        &delivered(dir.path()),
        &expected("vulnerabilities", sim.identities(false)),
    );

    // The same server refuses a client without a certificate.
    let no_client_cert = format!("{KEYS}\nca_file = {:?}", pki.ca.display().to_string());
    let source = source(&config(&sim, dir.path(), &no_client_cert));
    let err = source
        .poll(&source.partitions().await.unwrap()[0], None)
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::Unavailable { .. }), "{err}");
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_unless_verification_is_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let pki = tls::pki(dir.path());
    let sim = TenableSim::start_tls(TenableSimConfig::default(), tls::server_config(&pki, false))
        .await
        .unwrap();
    let now = Utc::now().timestamp();
    sim.add_findings(5, now - 3600, now - 60);
    let source_for = |extra: &str| source(&config(&sim, dir.path(), &format!("{KEYS}\n{extra}")));

    let strict = source_for("");
    let err = strict
        .poll(&strict.partitions().await.unwrap()[0], None)
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::Unavailable { .. }), "{err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "the error says why: {err}"
    );

    let lax = source_for("tls_verify = false");
    assert_eq!(
        lax.poll(&lax.partitions().await.unwrap()[0], None)
            .await
            .unwrap()
            .events
            .len(),
        5
    );
}

#[tokio::test]
async fn an_error_code_on_http_200_is_an_error_too() {
    let sim = TenableSim::start(TenableSimConfig::default())
        .await
        .unwrap();
    let now = Utc::now().timestamp();
    sim.add_findings(5, now - 3600, now - 60);
    sim.faults().error_on_ok.store(1, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &sim,
        dir.path(),
        &format!("{KEYS}\nstreams = [\"cumulative\"]\nconcurrency = 1"),
    );
    let source = source(&s);
    let partition = source.partitions().await.unwrap()[0].clone();
    let err = source.poll(&partition, None).await.unwrap_err().to_string();
    assert!(
        err.contains("HTTP 200 OK, error_code 1: Unable to retrieve"),
        "{err}"
    );
    // Nothing was taken from the failed response; the retry gets the rows.
    assert_eq!(source.poll(&partition, None).await.unwrap().events.len(), 5);
}

/// Defect 4 (issue 8): a real SecurityCenter answers an expired session with HTTP 403 and
/// `error_code` 12, not 401. The source logs in again once; a session refused again fails loudly.
#[tokio::test]
async fn a_session_refused_with_403_error_code_12_logs_in_again_once_then_fails_as_auth() {
    let sim = TenableSim::start(TenableSimConfig::default())
        .await
        .unwrap();
    let now = Utc::now().timestamp();
    sim.add_findings(10, now - 3600, now - 60);
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &sim,
        dir.path(),
        &format!("{SESSION}\nstreams = [\"cumulative\"]"),
    );
    let source = source(&s);
    let partition = source.partitions().await.unwrap()[0].clone();
    assert_eq!(
        source.poll(&partition, None).await.unwrap().events.len(),
        10
    );
    assert_eq!(sim.logins(), 1);

    sim.expire_sessions();
    let page = source.poll(&partition, None).await;
    assert_eq!(
        page.map(|p| p.events.len()).map_err(|e| e.to_string()),
        Ok(10)
    );
    assert_eq!(
        sim.logins(),
        2,
        "one re-login after the 403 / error_code 12"
    );

    sim.faults().sessions_refused.store(true, Ordering::SeqCst);
    let err = source.poll(&partition, None).await.unwrap_err();
    assert!(matches!(err, SourceError::Auth { .. }), "{err}");
    assert!(err.to_string().contains("error_code 12"), "{err}");
    assert!(!err.to_string().contains("sim-tenable-password"), "{err}");
    assert_eq!(sim.logins(), 3, "exactly one more login, then it gives up");
}

/// Backfills twice (the second pass starts `overlap_hours` back) and checks every observation
/// that ever existed in `stream` was delivered exactly once: every change below happens after the
/// observation it replaces was served.
async fn two_passes_deliver_every_observation_once(sim: &TenableSim, stream: &str, extra: &str) {
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        sim,
        dir.path(),
        &format!("{KEYS}\npage_size = 5\nconcurrency = 1\noverlap_hours = 1\n{extra}"),
    );
    backfill(&s).await;
    sim.apply_pending();
    backfill(&s).await;
    let want = expected(stream, sim.identities_ever(stream == "mitigated"));
    assert_exactly_once(&delivered(dir.path()), &want);
}

/// Defect 3 (issue 8): a finding re-observed mid-pass leaves its place, every later row shifts
/// left, and offset paging never reads the row that slid onto the previous page.
#[tokio::test]
async fn a_finding_re_observed_mid_pass_does_not_make_the_pass_skip_a_row() {
    let sim = TenableSim::start(TenableSimConfig::default())
        .await
        .unwrap();
    let now = Utc::now().timestamp();
    let numbers = sim.add_findings(30, now - 20 * 3600, now - 3 * 3600);
    // Served on the first page, seen again before the second is asked for.
    sim.schedule(
        2,
        TenableChange::Reobserve {
            n: numbers[1],
            at: now - 600,
        },
    );
    sim.schedule(
        4,
        TenableChange::Reobserve {
            n: numbers[2],
            at: now - 500,
        },
    );
    two_passes_deliver_every_observation_once(
        &sim,
        "vulnerabilities",
        "streams = [\"cumulative\"]",
    )
    .await;
}

/// Defect 3, mitigated stream: a mitigated finding seen again reopens and leaves the patched set
/// mid-pass.
#[tokio::test]
async fn a_mitigated_finding_reopened_mid_pass_does_not_make_the_pass_skip_a_row() {
    let sim = TenableSim::start(TenableSimConfig::default())
        .await
        .unwrap();
    let now = Utc::now().timestamp();
    let numbers = sim.add_findings(30, now - 30 * 3600, now - 25 * 3600);
    for (i, n) in numbers.iter().enumerate() {
        sim.mitigate(*n, now - 20 * 3600 + i as i64 * 60);
    }
    sim.schedule(
        2,
        TenableChange::Reobserve {
            n: numbers[0],
            at: now - 600,
        },
    );
    two_passes_deliver_every_observation_once(&sim, "mitigated", "streams = [\"patched\"]").await;
}

/// Many findings share one `lastSeen` (one host's scan) and the server returns ties in a
/// different order on every request: stepping through them by offset misses some.
#[tokio::test]
async fn findings_sharing_one_last_seen_in_unstable_order_all_arrive() {
    let sim = TenableSim::start(TenableSimConfig::default())
        .await
        .unwrap();
    let now = Utc::now().timestamp();
    sim.add_findings(5, now - 10 * 3600, now - 9 * 3600);
    sim.add_findings(23, now - 8 * 3600, now - 8 * 3600);
    sim.add_findings(4, now - 7 * 3600, now - 6 * 3600);
    two_passes_deliver_every_observation_once(
        &sim,
        "vulnerabilities",
        "streams = [\"cumulative\"]",
    )
    .await;
}

/// Findings for the catch-up-idle-burst tests: 12 open and 3 mitigated to catch up on.
fn catch_up_findings(sim: &TenableSim, now: i64) -> Vec<u64> {
    let numbers = sim.add_findings(15, now - 5 * 3600, now - 4 * 3600);
    for n in &numbers[..3] {
        sim.mitigate(*n, now - 3 * 3600);
    }
    numbers
}

/// Three pages of news: 15 findings imported with scan times among and after the ones already
/// read, and 2 more mitigated.
fn three_pages_of_news(sim: &TenableSim, numbers: &[u64], now: i64) {
    sim.add_findings(15, now - 4 * 3600 - 1800, now - 600);
    sim.mitigate(numbers[5], now - 300);
    sim.mitigate(numbers[6], now - 300);
}

/// `earlier` plus every finding the simulator serves now, open and mitigated.
fn and_now(sim: &TenableSim, earlier: &[Delivered]) -> Vec<Delivered> {
    let mut want = earlier.to_vec();
    for line in expected("vulnerabilities", sim.identities(false))
        .into_iter()
        .chain(expected("mitigated", sim.identities(true)))
    {
        if !want.contains(&line) {
            want.push(line);
        }
    }
    want
}

async fn wait_for_lines(dir: &std::path::Path, count: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while delivered_so_far(dir).len() < count && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue 8: the daemon catches up, sits idle for several polls, then receives 3 pages of new
/// findings (and mitigations): every one is delivered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_catches_up_idles_then_delivers_three_new_pages_exactly_once() {
    let sim = TenableSim::start(TenableSimConfig::default())
        .await
        .unwrap();
    let now = Utc::now().timestamp();
    let numbers = catch_up_findings(&sim, now);
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &sim,
        dir.path(),
        &format!("{KEYS}\ninterval_secs = 0.3\npage_size = 5"),
    );
    let mut daemon = common::Daemon::start(&s);
    let caught_up = and_now(&sim, &[]);
    wait_for_lines(dir.path(), 15).await;
    assert_exactly_once(&delivered(dir.path()), &caught_up);

    // Idle: several polls of each stream find nothing new.
    let before = sim.analysis_count();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sim.analysis_count() < before + 8 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        sim.analysis_count() >= before + 8,
        "the daemon kept polling"
    );
    daemon.assert_running().await;
    assert_exactly_once(&delivered(dir.path()), &caught_up);

    three_pages_of_news(&sim, &numbers, now);
    let want = and_now(&sim, &caught_up);
    assert_eq!(want.len(), 32);
    wait_for_lines(dir.path(), want.len()).await;
    // A few more polls: nothing arrives twice.
    let before = sim.analysis_count();
    while sim.analysis_count() < before + 4 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.stop().await;
    assert_exactly_once(&delivered(dir.path()), &want);
}

/// Issue 8, `backfill` flavour of the test above.
#[tokio::test]
async fn backfill_catches_up_idles_then_delivers_three_new_pages_exactly_once() {
    let sim = TenableSim::start(TenableSimConfig::default())
        .await
        .unwrap();
    let now = Utc::now().timestamp();
    let numbers = catch_up_findings(&sim, now);
    let dir = tempfile::tempdir().unwrap();
    let s = config(&sim, dir.path(), &format!("{KEYS}\npage_size = 5"));
    backfill(&s).await;
    let caught_up = and_now(&sim, &[]);
    assert_exactly_once(&delivered(dir.path()), &caught_up);
    for _ in 0..3 {
        backfill(&s).await;
    }
    assert_exactly_once(&delivered(dir.path()), &caught_up);
    three_pages_of_news(&sim, &numbers, now);
    backfill(&s).await;
    let want = and_now(&sim, &caught_up);
    assert_eq!(want.len(), 32);
    assert_exactly_once(&delivered(dir.path()), &want);
}

/// Defect 9 (issue 8): a row with a non-numeric `port` (or `pluginID`, `lastSeen`) is kept as a
/// dead letter naming the field and the URL; the rest of the page, and the partition, go on.
#[tokio::test]
async fn a_row_with_a_non_numeric_port_is_rejected_and_the_page_goes_on() {
    let sim = TenableSim::start(TenableSimConfig::default())
        .await
        .unwrap();
    let now = Utc::now().timestamp();
    let numbers = sim.add_findings(12, now - 5 * 3600, now - 4 * 3600);
    sim.corrupt(numbers[2], "port", "n/a");
    sim.corrupt(numbers[7], "pluginID", "plugin-7");
    sim.corrupt(numbers[9], "lastSeen", "yesterday");
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &sim,
        dir.path(),
        &format!("{KEYS}\nstreams = [\"cumulative\"]\npage_size = 5"),
    );
    let source = source(&s);
    let partition = source.partitions().await.unwrap()[0].clone();
    let page = source.poll(&partition, None).await.unwrap();
    assert_eq!(page.events.len(), 4, "the other rows of the page");
    assert_eq!(page.rejected.len(), 1);
    let bad = &page.rejected[0];
    assert!(
        bad.reason.contains("port") && bad.reason.contains("n/a"),
        "{bad:?}"
    );
    assert!(bad.url.ends_with("/rest/analysis"), "{bad:?}");
    assert!(bad.record.contains("\"port\":\"n/a\""), "{bad:?}");

    backfill(&s).await;
    let good: Vec<String> = sim
        .identities(false)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| ![2, 7, 9].contains(i))
        .map(|(_, id)| id)
        .collect();
    assert_exactly_once(&delivered(dir.path()), &expected("vulnerabilities", good));
    let store = secrelay::store::Store::open(
        &dir.path().join("state.db"),
        secrelay::store::Access::Reader,
    )
    .await
    .unwrap();
    let mut reasons: Vec<String> = store
        .rejected_records("sc")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.reason)
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("lastSeen")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("pluginID")),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_and_a_stopped_daemon_log_their_session_out() {
    let sim = TenableSim::start(TenableSimConfig::default())
        .await
        .unwrap();
    let now = Utc::now().timestamp();
    sim.add_findings(5, now - 3600, now - 60);
    let dir = tempfile::tempdir().unwrap();
    let s = config(&sim, dir.path(), SESSION);
    backfill(&s).await;
    assert_eq!(
        sim.logouts(),
        sim.logins(),
        "backfill logs out what it logged in"
    );
    assert!(sim.logins() >= 1);

    let daemon = common::Daemon::start(&s);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sim.logins() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon never logged in"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.stop().await;
    assert_eq!(sim.logouts(), sim.logins(), "a stopped daemon logs out too");
}
