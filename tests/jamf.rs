//! The Jamf Pro source against its simulator over real HTTP: inventory passes within the
//! connection limit, a computer that reports during a pass, fleet counters against an independent
//! count, token keep-alive and renewal, the Classic API with Basic auth, an idle relay that then
//! sees three pages of reports (daemon and backfill), the Classic password hash stripped, Classic
//! resuming after a deletion, fleet views surviving a seen-set prune, and fleet views in chunks.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{assert_exactly_once, delivered, delivered_so_far, Delivered};
use secrelay::app::{self, BackfillOptions};
use secrelay::settings::{Settings, SourceSettings};
use secrelay::simulate::jamf::{FleetChange, JamfSim, JamfSimConfig};
use secrelay::sources::jamf::JamfSource;
use secrelay::sources::{http, Source, SourceError};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

fn config(sim: &JamfSim, dir: &std::path::Path, extra: &str) -> Settings {
    common::settings_with(
        dir,
        &format!(
            "[sources.jamf]\ntype = \"jamf\"\nurl = {:?}\ninterval_secs = 0.5\nsinks = [\"out\"]\n{extra}",
            sim.url()
        ),
    )
}

const CLIENT: &str = "client_id = \"jamf-client\"\nclient_secret = \"sim-jamf-secret\"";

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

fn inventory_ids(sim: &JamfSim, ids: impl Iterator<Item = u64>) -> Vec<Delivered> {
    ids.map(|id| {
        let date = sim.report_date(id).unwrap();
        (
            "inventory".to_string(),
            String::new(),
            format!("{id}@{date}"),
        )
    })
    .collect()
}

fn source(settings: &Settings) -> JamfSource {
    let SourceSettings::Jamf(s) = settings.sources["jamf"].clone() else {
        panic!("jamf settings")
    };
    JamfSource::new("jamf", s, http::client(&settings.http).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inventory_pass_is_complete_once_and_within_five_connections() {
    let sim = JamfSim::start(JamfSimConfig {
        computers: 2000,
        latency_ms: 20,
        ..JamfSimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &sim,
        dir.path(),
        &format!("{CLIENT}\nstreams = [\"inventory\", \"assets\"]\npage_size = 100"),
    );
    backfill(&s).await;
    backfill(&s).await;
    let mut want = inventory_ids(&sim, 1..=2000);
    want.extend(sim.fleet().iter().map(|c| {
        (
            "assets".to_string(),
            String::new(),
            format!(
                "{}@{}",
                c["id"].as_str().unwrap(),
                c["general"]["reportDate"].as_str().unwrap()
            ),
        )
    }));
    assert_exactly_once(&delivered(dir.path()), &want);
    assert!(
        sim.max_in_flight() <= 5,
        "{} requests at once",
        sim.max_in_flight()
    );
    assert!(
        sim.max_in_flight() > 1,
        "the fleet pass fetches pages concurrently"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_computer_that_reports_during_a_pass_is_neither_lost_nor_duplicated() {
    let sim = JamfSim::start(JamfSimConfig {
        computers: 1000,
        latency_ms: 150,
        ..JamfSimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &sim,
        dir.path(),
        &format!("{CLIENT}\nstreams = [\"inventory\"]\npage_size = 100"),
    );
    let first_date_of_5 = sim.report_date(5).unwrap();
    let daemon = common::Daemon::start(&s);
    // Wait until the first pages are in: computer 5 (early in report-date order) has been read,
    // computer 950 (late) has not.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: i64 = app::state(&s)
            .await
            .unwrap()
            .partitions
            .iter()
            .map(|p| p.events_total)
            .sum();
        if got >= 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the pass never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sim.report(950);
    sim.report(5);
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivered_so_far(dir.path()).len() < 1001 {
        assert!(
            Instant::now() < deadline,
            "only {} delivered",
            delivered_so_far(dir.path()).len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    daemon.stop().await;
    // Every computer once with its latest report; computer 5 also with the report read before.
    let mut want = inventory_ids(&sim, 1..=1000);
    want.push((
        "inventory".into(),
        String::new(),
        format!("5@{first_date_of_5}"),
    ));
    assert_exactly_once(&delivered(dir.path()), &want);
}

#[tokio::test]
async fn fleet_counters_equal_an_independent_count() {
    let sim = JamfSim::start(JamfSimConfig {
        computers: 400,
        ..JamfSimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &sim,
        dir.path(),
        &format!("{CLIENT}\nstreams = [\"fleet_counters\", \"virtual_machines\", \"ip_users\"]"),
    );
    backfill(&s).await;

    // Count from the simulator's own records, the way a person would with a spreadsheet.
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    let mut virtual_computers = 0;
    for c in sim.fleet() {
        let mut seen = std::collections::BTreeSet::new();
        for (kind, list) in [
            ("application", "applications"),
            ("extension", "plugins"),
            ("service", "services"),
        ] {
            for item in c[list].as_array().unwrap() {
                let name = item["name"].as_str().unwrap();
                if seen.insert(format!("{kind}:{name}")) {
                    *want.entry(format!("{kind}:{name}")).or_default() += 1;
                    let lower = name.to_lowercase();
                    if kind == "application"
                        && ["vmware", "parallels", "virtualbox"]
                            .iter()
                            .any(|m| lower.contains(m))
                    {
                        *want.entry(format!("virtual_machine:{name}")).or_default() += 1;
                    }
                }
            }
        }
        if c["hardware"]["model"].as_str().unwrap().contains("VMware") {
            virtual_computers += 1;
            *want
                .entry(format!(
                    "virtual_machine:virtual computer: {}",
                    c["hardware"]["model"].as_str().unwrap()
                ))
                .or_default() += 1;
        }
    }
    let text = std::fs::read_to_string(dir.path().join("out/events.ndjson")).unwrap();
    let mut got: BTreeMap<String, u64> = BTreeMap::new();
    let mut vm_records = 0;
    let mut ip_users = 0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        match v["stream"].as_str().unwrap() {
            "fleet_counters" => {
                let r = &v["record"];
                assert_eq!(r["fleetSize"], 400);
                got.insert(
                    format!(
                        "{}:{}",
                        r["kind"].as_str().unwrap(),
                        r["name"].as_str().unwrap()
                    ),
                    r["computers"].as_u64().unwrap(),
                );
            }
            "virtual_machines" => vm_records += 1,
            "ip_users" => ip_users += 1,
            other => panic!("unexpected stream {other}"),
        }
    }
    assert_eq!(got, want);
    assert!(virtual_computers > 0 && vm_records >= virtual_computers);
    assert_eq!(ip_users, 400);
}

#[tokio::test]
async fn a_user_token_is_kept_alive_before_it_expires() {
    let sim = JamfSim::start(JamfSimConfig {
        token_lifetime_secs: 4.0,
        ..JamfSimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &sim,
        dir.path(),
        "auth = \"user\"\nusername = \"jss-admin\"\npassword = \"sim-jamf-password\"\nstreams = [\"inventory\"]",
    );
    let source = source(&s);
    let partitions = source.partitions().await.unwrap();
    source.poll(&partitions[0], None).await.unwrap();
    // Past half the (short) lifetime, the token is renewed through keep-alive, not a new login.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    source.poll(&partitions[0], None).await.unwrap();
    assert_eq!(sim.token_requests(), 1);
    assert_eq!(sim.keep_alives(), 1);
}

#[tokio::test]
async fn an_api_client_token_the_server_dropped_is_renewed_once() {
    let sim = JamfSim::start(JamfSimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &sim,
        dir.path(),
        &format!("{CLIENT}\nstreams = [\"inventory\"]"),
    );
    let source = source(&s);
    let partitions = source.partitions().await.unwrap();
    source.poll(&partitions[0], None).await.unwrap();
    sim.expire_tokens();
    assert_eq!(
        source
            .poll(&partitions[0], None)
            .await
            .unwrap()
            .events
            .len(),
        100
    );
    assert_eq!(sim.token_requests(), 2);
}

#[tokio::test]
async fn the_classic_api_with_basic_auth_reads_inventory_and_refuses_when_basic_is_off() {
    let sim = JamfSim::start(JamfSimConfig {
        computers: 60,
        basic_enabled: true,
        ..JamfSimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let basic = "api = \"classic\"\nauth = \"basic\"\nusername = \"jss-admin\"\npassword = \"sim-jamf-password\"\npage_size = 25";
    let s = config(
        &sim,
        dir.path(),
        &format!("{basic}\nstreams = [\"inventory\", \"applications\"]"),
    );
    backfill(&s).await;
    backfill(&s).await;
    let got = delivered(dir.path());
    let inventory: Vec<_> = got.iter().filter(|d| d.0 == "inventory").collect();
    assert_eq!(inventory.len(), 60, "each computer once across two passes");
    assert_eq!(got.iter().filter(|d| d.0 == "applications").count(), 60);
    assert!(sim.max_in_flight() <= 5);

    let off = JamfSim::start(JamfSimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &off,
        dir.path(),
        &format!("{basic}\nstreams = [\"inventory\"]"),
    );
    let source = source(&s);
    let err = source
        .poll(&source.partitions().await.unwrap()[0], None)
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::Auth { .. }), "{err}");
}

/// Three pages' worth of changes at two shared report dates (ties, one without fractional
/// seconds): `reports` computers of `existing` report again, the rest of 15 are new computers.
fn three_pages_of_changes(sim: &JamfSim, existing: &[u64]) {
    let now = chrono::Utc::now().timestamp_millis();
    let whole_second = (now / 1000 + 1) * 1000;
    sim.apply(FleetChange::Report {
        ids: existing.to_vec(),
        report_ms: whole_second,
    });
    for i in 0..(15 - existing.len()) {
        sim.apply(FleetChange::Add {
            report_ms: whole_second + if i < 5 { 0 } else { 1234 },
        });
    }
}

fn all_versions(sim: &JamfSim) -> Vec<Delivered> {
    sim.history()
        .into_iter()
        .map(|(id, _, date)| {
            (
                "inventory".to_string(),
                String::new(),
                format!("{id}@{date}"),
            )
        })
        .collect()
}

const SMALL_FLEET: &str = "streams = [\"inventory\"]\npage_size = 5";

fn idle_config(sim: &JamfSim, dir: &std::path::Path) -> Settings {
    common::settings_with(
        dir,
        &format!(
            "[sources.jamf]\ntype = \"jamf\"\nurl = {:?}\ninterval_secs = 0.3\nsinks = [\"out\"]\n{CLIENT}\n{SMALL_FLEET}",
            sim.url()
        ),
    )
}

async fn wait_for(dir: &std::path::Path, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while delivered_so_far(dir).len() < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_daemon_then_three_pages_of_reports_delivers_each_once() {
    let sim = JamfSim::start(JamfSimConfig {
        computers: 4,
        ..JamfSimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = idle_config(&sim, dir.path());
    let daemon = common::Daemon::start(&s);
    wait_for(dir.path(), 4).await;
    // Several quiet polls (0.3 s apart) over a fleet smaller than a page.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    three_pages_of_changes(&sim, &[2, 4]);
    wait_for(dir.path(), 19).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    daemon.stop().await;
    assert_exactly_once(&delivered(dir.path()), &all_versions(&sim));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_backfill_then_three_pages_of_reports_delivers_each_once() {
    let sim = JamfSim::start(JamfSimConfig {
        computers: 4,
        ..JamfSimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = idle_config(&sim, dir.path());
    for _ in 0..4 {
        backfill(&s).await;
    }
    three_pages_of_changes(&sim, &[1, 3]);
    backfill(&s).await;
    backfill(&s).await;
    assert_exactly_once(&delivered(dir.path()), &all_versions(&sim));
}

#[tokio::test]
async fn the_classic_management_password_hash_is_never_forwarded() {
    let sim = JamfSim::start(JamfSimConfig {
        computers: 12,
        ..JamfSimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &sim,
        dir.path(),
        &format!("api = \"classic\"\n{CLIENT}\npage_size = 5\nstreams = [\"inventory\", \"assets\", \"applications\", \"ip_users\"]"),
    );
    // The simulator does serve it, so its absence below means the relay removed it.
    let source = source(&s);
    let mut cursor: Option<String> = None;
    let mut records = Vec::new();
    loop {
        let page = source
            .poll(
                &secrelay::event::Partition::new("inventory", ""),
                cursor.as_deref(),
            )
            .await
            .unwrap();
        records.extend(page.events.iter().map(|e| e.record.as_str().to_string()));
        cursor = page.cursor;
        if !page.more {
            break;
        }
    }
    assert_eq!(records.len(), 12);
    for r in &records {
        let v: Value = serde_json::from_str(r).unwrap();
        assert_eq!(
            v["general"]["remote_management"]["management_username"],
            "jamfadmin"
        );
        assert!(!r.contains("management_password_sha256"), "{r}");
        assert_eq!(password_keys(&v), Vec::<String>::new());
    }
    backfill(&s).await;
    let text = std::fs::read_to_string(dir.path().join("out/events.ndjson")).unwrap();
    assert_eq!(text.lines().count(), 48);
    assert!(!text.contains("management_password_sha256"));
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(password_keys(&v), Vec::<String>::new(), "{line}");
    }
}

/// Every key at any depth whose name mentions a password.
fn password_keys(v: &Value) -> Vec<String> {
    match v {
        Value::Object(map) => map
            .iter()
            .flat_map(|(k, child)| {
                let mut found = password_keys(child);
                if k.to_lowercase().contains("password") {
                    found.push(k.clone());
                }
                found
            })
            .collect(),
        Value::Array(items) => items.iter().flat_map(password_keys).collect(),
        _ => Vec::new(),
    }
}

#[tokio::test]
async fn classic_inventory_resumes_after_the_last_id_when_an_earlier_computer_is_deleted() {
    let sim = JamfSim::start(JamfSimConfig {
        computers: 12,
        ..JamfSimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &sim,
        dir.path(),
        &format!("api = \"classic\"\n{CLIENT}\npage_size = 5\nstreams = [\"inventory\"]"),
    );
    let source = source(&s);
    let inventory = secrelay::event::Partition::new("inventory", "");
    let mut cursor: Option<String> = None;
    let mut ids = Vec::new();
    for round in 0..3 {
        let page = source.poll(&inventory, cursor.as_deref()).await.unwrap();
        ids.extend(
            page.events
                .iter()
                .map(|e| e.id.split('@').next().unwrap().to_string()),
        );
        cursor = page.cursor;
        if round == 0 {
            // Deleted after it was read: every later computer shifts one place left in the list.
            sim.apply(FleetChange::Delete { id: 2 });
        }
        if !page.more {
            break;
        }
    }
    let want: Vec<String> = (1..=12).map(|i| i.to_string()).collect();
    assert_eq!(ids, want);
}

#[tokio::test]
async fn unchanged_fleet_views_are_not_sent_again_after_the_seen_set_is_pruned() {
    let sim = JamfSim::start(JamfSimConfig {
        computers: 30,
        ..JamfSimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &sim,
        dir.path(),
        &format!("{CLIENT}\npage_size = 10\nstreams = [\"applications\", \"assets\", \"services\", \"software_updates\", \"ip_users\", \"virtual_machines\", \"browser_extensions\"]"),
    );
    backfill(&s).await;
    let first = delivered(dir.path());
    assert!(first.len() >= 150, "{}", first.len());
    tokio::time::sleep(Duration::from_millis(50)).await;
    // As a prune 7 days later would: everything last seen before the second pass goes.
    let cutoff = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    backfill(&s).await;
    {
        let store = secrelay::store::Store::open(&s.store.path, secrelay::store::Access::Writer)
            .await
            .unwrap();
        store.prune_seen("jamf", cutoff).await.unwrap();
        store.close().await;
    }
    backfill(&s).await;
    assert_exactly_once(&delivered(dir.path()), &first);
}

#[tokio::test]
async fn fleet_views_come_in_pages_no_larger_than_an_inventory_page() {
    let sim = JamfSim::start(JamfSimConfig {
        computers: 35,
        ..JamfSimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &sim,
        dir.path(),
        &format!("{CLIENT}\npage_size = 10\nstreams = [\"assets\", \"fleet_counters\"]"),
    );
    let source = source(&s);
    for stream in ["assets", "fleet_counters"] {
        let partition = secrelay::event::Partition::new(stream, "");
        let mut cursor: Option<String> = None;
        let mut got = Vec::new();
        let mut polls = 0;
        loop {
            let page = source.poll(&partition, cursor.as_deref()).await.unwrap();
            polls += 1;
            assert!(
                page.events.len() <= 10,
                "{stream}: {} in one page",
                page.events.len()
            );
            assert!(
                page.cursor.is_some() && page.cursor != cursor,
                "{stream}: the cursor moves"
            );
            got.extend(page.events.into_iter().map(|e| e.id));
            cursor = page.cursor;
            if !page.more {
                break;
            }
            assert!(polls < 50, "{stream}: never ends");
        }
        if stream == "assets" {
            assert_eq!(got.len(), 35);
            assert!(polls >= 4);
        } else {
            assert!(got.len() > 10, "{stream}: {}", got.len());
        }
        let unique: std::collections::BTreeSet<_> = got.iter().collect();
        assert_eq!(unique.len(), got.len(), "{stream}: no id twice in a pass");
    }
}

#[tokio::test]
async fn a_computer_whose_report_date_cannot_be_read_is_rejected_and_the_rest_move_on() {
    for api in ["v3", "classic"] {
        let sim = JamfSim::start(JamfSimConfig {
            computers: 9,
            ..JamfSimConfig::default()
        })
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let s = config(
            &sim,
            dir.path(),
            &format!("api = \"{api}\"\n{CLIENT}\n{SMALL_FLEET}"),
        );
        let now = chrono::Utc::now().timestamp_millis();
        sim.apply(FleetChange::Corrupt {
            id: 4,
            report_ms: now,
        });
        backfill(&s).await;
        // After it, three more pages: they arrive although the unreadable record stays.
        three_pages_of_changes(&sim, &[1, 2]);
        backfill(&s).await;
        let got = delivered(dir.path());
        let key = |id: u64, ms: i64, date: &str| {
            if api == "classic" {
                format!("{id}@{ms}")
            } else {
                format!("{id}@{date}")
            }
        };
        let want: Vec<Delivered> = sim
            .history()
            .iter()
            .filter(|(_, _, date)| !date.starts_with("last week"))
            .filter(|(id, _, _)| *id != 4)
            .map(|(id, ms, date)| ("inventory".into(), String::new(), key(*id, *ms, date)))
            .collect();
        assert_exactly_once(&got, &want);
        let store = secrelay::store::Store::open(&s.store.path, secrelay::store::Access::Reader)
            .await
            .unwrap();
        let rejected = store.rejected_records("jamf").await.unwrap();
        assert_eq!(rejected.len(), 1, "{api}: {rejected:?}");
        assert!(
            rejected[0].reason.contains("computer 4"),
            "{api}: {rejected:?}"
        );
        assert_eq!(rejected[0].stream, "inventory");
        store.close().await;
    }
}
