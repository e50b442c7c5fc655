//! The Splunk HEC sink against the HEC simulator: envelopes and routing, gzip, isolating a bad
//! event (by `invalid-event-number`), a refused token, an outage of 503s and intermittent 503s
//! mid-batch, indexer acks across a restart and acks that never come, and a receiver that stops,
//! restarts and ends its connections mid-request, driven by the daemon's delivery loop.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use secrelay::app::{self, BackfillOptions};
use secrelay::settings::{Settings, SinkSettings};
use secrelay::simulate::hec::{HecSim, HecSimConfig};
use secrelay::simulate::sophos::{Identity, SophosSim, SophosSimConfig};
use secrelay::sinks::splunk_hec::HecSink;
use secrelay::sinks::{Sink, SinkError};
use secrelay::store::{Access, OutboxRecord, Store};
use secrelay::vendors::Vendor;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "00000000-0000-4000-8000-00000000cafe";

/// The Sophos test source routed to a HEC sink `splunk` (instead of the file sink).
fn pipeline_config(
    sim: &secrelay::simulate::sophos::SophosSim,
    hec: &HecSim,
    dir: &std::path::Path,
    sink_extra: &str,
) -> Settings {
    let text = common::config_text(sim, dir, "streams = [\"events\"]", "").replace("sinks = [\"out\"]", "sinks = [\"splunk\"]")
        + &format!(
            "[sinks.splunk]\ntype = \"splunk_hec\"\nurl = {:?}\ntoken = {TOKEN:?}\nhost = \"collector-1\"\n{sink_extra}\n",
            hec.url()
        );
    Settings::from_toml(&text).expect("valid config")
}

fn records(n: usize) -> Vec<OutboxRecord> {
    (0..n)
        .map(|i| OutboxRecord {
            seq: i as i64 + 1,
            source: "sophos_t".into(),
            stream: "events".into(),
            tenant: "t-1".into(),
            event_id: format!("e-{i}"),
            event_time: Utc
                .timestamp_millis_opt(1_795_168_800_000 + i as i64)
                .unwrap(),
            ingest_time: Utc.timestamp_millis_opt(1_795_168_900_000).unwrap(),
            severity: 5,
            record: if i == 6 {
                format!(r#"{{"id":"e-{i}","hec_reject":true}}"#).into()
            } else {
                format!(r#"{{"id":"e-{i}","name":"event {i}"}}"#).into()
            },
        })
        .collect()
}

async fn sink(hec: &HecSim, dir: &std::path::Path, extra: &str) -> HecSink {
    // A source for the routes to name; the test hands the sink its records directly.
    let text = format!(
        "[sources.sophos_t]\ntype = \"sophos\"\nclient_id = \"x\"\nclient_secret = \"y\"\nsinks = [\"splunk\"]\n\
         [sinks.splunk]\ntype = \"splunk_hec\"\nurl = {:?}\ntoken = {TOKEN:?}\nhost = \"collector-1\"\n{extra}\n",
        hec.url()
    );
    let settings = Settings::from_toml(&text).unwrap();
    let SinkSettings::SplunkHec(h) = settings.sinks["splunk"].clone() else {
        panic!("hec settings")
    };
    let store = Store::open(&dir.join("state.db"), Access::Writer)
        .await
        .unwrap();
    HecSink::new(
        "splunk",
        h,
        &settings.http,
        HashMap::from([("sophos_t".to_string(), Vendor::Sophos)]),
        store,
    )
    .unwrap()
}

#[tokio::test]
async fn every_event_arrives_once_gzipped_with_its_envelope() {
    let sim = common::finished_sim(Identity::Tenant, 1, 1500).await;
    let hec = HecSim::start(HecSimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = pipeline_config(&sim, &hec, dir.path(), "max_request_bytes = 100000");
    let summary = app::backfill(&s, &BackfillOptions::default(), CancellationToken::new())
        .await
        .unwrap();
    assert!(summary.complete(), "{summary:?}");
    let accepted = hec.accepted();
    let want = common::expected(&sim, &["events"]);
    assert_eq!(accepted.len(), want.len());
    let ids: std::collections::HashSet<_> = accepted
        .iter()
        .map(|e| e["fields"]["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), want.len(), "each event once");
    let first = &accepted[0];
    assert_eq!(first["sourcetype"], "sophos:central:event");
    assert_eq!(first["source"], "secrelay:sophos_t");
    assert_eq!(first["host"], "collector-1");
    assert!(
        first["time"].is_f64(),
        "epoch seconds with milliseconds: {}",
        first["time"]
    );
    assert!(
        first.get("index").is_none(),
        "no index configured: the token's default"
    );
    assert!(first["event"]["id"].is_string(), "the vendor record whole");
    assert_eq!(hec.gzipped(), hec.requests(), "gzip is on by default");
    assert!(
        hec.requests() > 1,
        "1500 events do not fit one 100 kB request"
    );
}

#[tokio::test]
async fn routes_override_index_sourcetype_host_and_source() {
    let hec = HecSim::start(HecSimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = sink(
        &hec,
        dir.path(),
        "index = \"security\"\ngzip = false\n[[sinks.splunk.routes]]\nsource = \"sophos_t\"\nindex = \"sophos\"\n[[sinks.splunk.routes]]\nsource = \"sophos_t\"\nstream = \"events\"\nsourcetype = \"sophos:siem\"\nsource_name = \"central\"",
    )
    .await;
    let mut batch = records(2);
    batch[1].stream = "alerts".into();
    sink.deliver(&batch).await.unwrap();
    let accepted = hec.accepted();
    assert_eq!(accepted[0]["index"], "sophos");
    assert_eq!(accepted[0]["sourcetype"], "sophos:siem");
    assert_eq!(accepted[0]["source"], "central");
    assert_eq!(accepted[1]["index"], "sophos");
    assert_eq!(accepted[1]["sourcetype"], "sophos:central:alert");
    assert_eq!(hec.gzipped(), 0);
}

#[tokio::test]
async fn a_bad_event_is_isolated_and_dead_lettered_while_the_rest_is_delivered() {
    let hec = HecSim::start(HecSimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = sink(&hec, dir.path(), "").await;
    let batch = records(10);
    let delivered = sink.deliver(&batch).await.unwrap();
    assert_eq!(delivered.rejected.len(), 1);
    assert_eq!(
        delivered.rejected[0].0, 6,
        "the bad event, by its place in the batch"
    );
    assert!(
        delivered.rejected[0].1.contains("code 6"),
        "{}",
        delivered.rejected[0].1
    );
    let ids: Vec<_> = hec
        .accepted()
        .iter()
        .map(|e| e["fields"]["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 9);
    assert!(!ids.contains(&"e-6".to_string()));
    assert!(
        hec.requests() <= 1 + 2 * 4,
        "halving finds it in a few requests, not one per event"
    );
}

#[tokio::test]
async fn a_refused_token_stops_the_sink_loudly_and_loses_nothing() {
    let sim = common::finished_sim(Identity::Tenant, 1, 100).await;
    let hec = HecSim::start(HecSimConfig {
        token: "another-token".into(),
        ..HecSimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = pipeline_config(&sim, &hec, dir.path(), "");
    let summary = app::backfill(&s, &BackfillOptions::default(), CancellationToken::new())
        .await
        .unwrap();
    assert!(!summary.complete());
    let report = &summary.sinks[0];
    assert!(
        report.error.as_deref().unwrap().contains("token refused"),
        "{report:?}"
    );
    assert_eq!(report.backlog, 100, "everything waits in the outbox");
    assert!(hec.accepted().is_empty());
    assert!(
        !format!("{summary:?}").contains(TOKEN),
        "the token is never shown"
    );
}

#[tokio::test]
async fn health_is_checked_with_the_token() {
    let hec = HecSim::start(HecSimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut healthy = sink(&hec, dir.path(), "").await;
    healthy.check().await.unwrap();
    hec.faults().busy.store(true, Ordering::SeqCst);
    let err = healthy.check().await.unwrap_err();
    assert!(matches!(err, SinkError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("503"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_503s_is_waited_out_and_everything_arrives() {
    let sim = common::finished_sim(Identity::Tenant, 1, 2000).await;
    let hec = HecSim::start(HecSimConfig::default()).await.unwrap();
    hec.faults().busy.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let s = pipeline_config(&sim, &hec, dir.path(), "batch_size = 500");
    let daemon = common::Daemon::start(&s);
    // The outage lasts while the sink retries with backoff (a 5-minute run: `cargo bench --bench hec -- outage`).
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        hec.busy_answers() >= 3,
        "the sink kept trying: {}",
        hec.busy_answers()
    );
    assert!(hec.accepted().is_empty());
    hec.faults().busy.store(false, Ordering::SeqCst);
    let want = common::expected(&sim, &["events"]).len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while hec.accepted().len() < want {
        assert!(
            Instant::now() < deadline,
            "{} of {want} after the outage",
            hec.accepted().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.stop().await;
    let accepted = hec.accepted();
    let ids: std::collections::HashSet<_> = accepted
        .iter()
        .map(|e| e["fields"]["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), want, "nothing lost");
    assert!(
        accepted.len() - want <= 500,
        "at most one batch twice without acks"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_pending_at_a_restart_are_asked_about_instead_of_sending_again() {
    let sim = common::finished_sim(Identity::Tenant, 1, 300).await;
    let hec = HecSim::start(HecSimConfig {
        ack: true,
        ack_delay: Duration::from_secs(3),
        ..HecSimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = pipeline_config(
        &sim,
        &hec,
        dir.path(),
        "ack = true
ack_poll_secs = 0.2
ack_timeout_secs = 30",
    );
    let mut short_grace = s.clone();
    short_grace.scheduler.shutdown_grace_secs = 0.5;

    // First run: the batch goes out, then the daemon stops while its acks are still false.
    let daemon = common::Daemon::start(&short_grace);
    let deadline = Instant::now() + Duration::from_secs(20);
    while hec.accepted().len() < 300 {
        assert!(Instant::now() < deadline, "the batch was never sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.stop().await;
    let store = Store::open(&dir.path().join("state.db"), Access::Reader)
        .await
        .unwrap();
    assert!(
        !store.pending_acks("splunk").await.unwrap().is_empty(),
        "acks were pending at the stop"
    );
    assert!(
        store
            .sink_states()
            .await
            .unwrap()
            .iter()
            .all(|s| s.delivered_seq == 0),
        "nothing counts as delivered before its ack"
    );
    store.close().await;
    drop(store);

    // Second run: the acks have come true meanwhile; the batch is not sent again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let summary = app::backfill(&s, &BackfillOptions::default(), CancellationToken::new())
        .await
        .unwrap();
    assert!(summary.complete(), "{summary:?}");
    assert_eq!(
        hec.accepted().len(),
        300,
        "indexed once by the simulator's count"
    );
    assert_eq!(hec.requests(), 1);
}

/// How many times the simulator indexed each event id.
fn index_counts(hec: &HecSim) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for e in hec.accepted() {
        let id = e["fields"]["event_id"].as_str().unwrap().to_string();
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_that_never_come_are_waited_for_a_bounded_number_of_times_then_trusted() {
    // Behind a load balancer without sticky sessions the ack queries reach indexers that never saw
    // the requests: acks never come, though every event was indexed.
    let sim = common::finished_sim(Identity::Tenant, 1, 300).await;
    let hec = HecSim::start(HecSimConfig {
        ack: true,
        ..HecSimConfig::default()
    })
    .await
    .unwrap();
    hec.faults().withhold_acks.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let mut s = pipeline_config(
        &sim,
        &hec,
        dir.path(),
        "ack = true
ack_poll_secs = 0.1
ack_timeout_secs = 0.5
batch_size = 100",
    );
    s.backfill.drain_timeout_secs = 20.0;
    let summary = app::backfill(&s, &BackfillOptions::default(), CancellationToken::new())
        .await
        .unwrap();
    assert!(
        summary.complete(),
        "delivery moves on after the cap: {summary:?}"
    );
    let want = common::expected(&sim, &["events"]).len();
    let counts = index_counts(&hec);
    assert_eq!(counts.len(), want, "nothing lost");
    assert!(
        counts.values().all(|&n| n <= 2),
        "sent again once at most (ack_resends = 1)"
    );
    let duplicates = hec.accepted().len() - want;
    assert!(
        duplicates <= 100,
        "only the first batch goes twice; later ones trust code 0 at once: {duplicates} duplicates"
    );
    let state = app::state(&s).await.unwrap();
    let json = serde_json::to_string(&state).unwrap();
    assert!(
        json.contains("acks are not arriving"),
        "`state` says why delivery is unconfirmed: {json}"
    );
}

/// Delivers `events` Sophos events through the real loop while every fourth HEC request gets a
/// 503 (Retry-After: 1): 50 records a batch in requests of 10 (envelopes are under 850 bytes), so a
/// batch never gets all of its 5 requests through in one go. Each event must be indexed at most
/// twice, nothing lost, and at most one batch of duplicates in all.
async fn intermittent_503s_mid_batch(events: u64, extra: &str) {
    let sim = common::finished_sim(Identity::Tenant, 1, events).await;
    let hec = HecSim::start(HecSimConfig {
        ack: extra.contains("ack = true"),
        ..HecSimConfig::default()
    })
    .await
    .unwrap();
    hec.faults().fail_every.store(4, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let mut s = pipeline_config(
        &sim,
        &hec,
        dir.path(),
        &format!("batch_size = 50\nmax_request_bytes = 8500\ngzip = false\n{extra}"),
    );
    s.backfill.drain_timeout_secs = 25.0;
    let summary = app::backfill(&s, &BackfillOptions::default(), CancellationToken::new())
        .await
        .unwrap();
    assert!(summary.complete(), "{summary:?}");
    assert!(
        hec.busy_answers() >= 3,
        "the outage was intermittent throughout: {} 503s",
        hec.busy_answers()
    );
    let want = common::expected(&sim, &["events"]).len();
    let counts = index_counts(&hec);
    assert_eq!(counts.len(), want, "nothing lost");
    let most = counts.values().copied().max().unwrap_or(0);
    assert!(most <= 2, "an event indexed {most} times");
    let duplicates = hec.accepted().len() - want;
    assert!(
        duplicates <= 50,
        "{duplicates} duplicates: more than one batch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intermittent_503_mid_batch_keeps_the_requests_already_taken() {
    intermittent_503s_mid_batch(250, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intermittent_503_mid_batch_keeps_the_requests_already_acked() {
    intermittent_503s_mid_batch(150, "ack = true\nack_poll_secs = 0.05").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_event_mid_request_is_the_only_dead_letter_and_the_rest_is_indexed_once() {
    let sim =
        secrelay::simulate::sophos::SophosSim::start(secrelay::simulate::sophos::SophosSimConfig {
            scripted: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let at = Utc::now() - chrono::Duration::minutes(30);
    for n in 0..30i64 {
        let mut record = serde_json::json!({
            "id": format!("e{n}"),
            "created_at": (at + chrono::Duration::seconds(n)).to_rfc3339(),
            "type": "Event::Endpoint::Threat::Detected",
            "severity": "high",
        });
        if n == 15 {
            // The simulator refuses this one as Splunk refuses invalid data (400, code 6).
            record["hec_reject"] = true.into();
        }
        sim.push(0, "events", at + chrono::Duration::seconds(n), record);
    }
    let hec = HecSim::start(HecSimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = pipeline_config(&sim, &hec, dir.path(), "");
    let summary = app::backfill(&s, &BackfillOptions::default(), CancellationToken::new())
        .await
        .unwrap();
    assert!(summary.complete(), "{summary:?}");
    let counts = index_counts(&hec);
    assert!(
        !counts.contains_key("e15"),
        "the invalid event is not indexed"
    );
    for n in (0..30).filter(|n| *n != 15) {
        assert_eq!(counts.get(&format!("e{n}")), Some(&1), "e{n} indexed once");
    }
    // Everything else indexed once and nothing left waiting: the one dead letter is e15.
    assert_eq!(summary.sinks[0].dead_letters, 1, "{summary:?}");
    assert_eq!(summary.sinks[0].delivered, 29, "{summary:?}");
    assert_eq!(summary.sinks[0].backlog, 0, "{summary:?}");
    assert_eq!(
        hec.requests(),
        2,
        "the request up to the invalid event, then the rest once; no halving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickle_of_events_lingers_into_few_requests() {
    let sim =
        secrelay::simulate::sophos::SophosSim::start(secrelay::simulate::sophos::SophosSimConfig {
            events_per_tenant: None,
            rate_per_sec: 50.0,
            start: Utc::now() - chrono::Duration::seconds(1),
            ..Default::default()
        })
        .await
        .unwrap();
    let hec = HecSim::start(HecSimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut s = pipeline_config(&sim, &hec, dir.path(), "linger_secs = 1.0");
    if let secrelay::settings::SourceSettings::Sophos(src) = s.sources.get_mut("sophos_t").unwrap()
    {
        src.interval_secs = 0.1;
    }
    let daemon = common::Daemon::start(&s);
    tokio::time::sleep(Duration::from_secs(4)).await;
    daemon.stop().await;
    let polls = sim.requests().len();
    assert!(polls >= 20, "the source polled often ({polls})");
    assert!(
        hec.accepted().len() >= 150,
        "{} events",
        hec.accepted().len()
    );
    assert!(
        hec.requests() <= 7,
        "{} requests for {polls} polls",
        hec.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_event_of_a_batch_whose_acks_were_pending_at_a_restart_is_still_dead_lettered() {
    let hec = HecSim::start(HecSimConfig {
        ack: true,
        ack_delay: Duration::from_secs(1),
        ..HecSimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let extra = "ack = true\nack_poll_secs = 0.1\nack_timeout_secs = 30";
    let batch = records(10);

    // The batch goes out (record 6 refused, the rest indexed); the process stops while the acks
    // are still false.
    let mut first = sink(&hec, dir.path(), extra).await;
    let sending = tokio::spawn(async move { first.deliver(&batch).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while hec.accepted().len() < 9 {
        assert!(Instant::now() < deadline, "the batch was never sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    sending.abort();
    let _ = sending.await;

    // After the restart the acks have come true: the batch is not sent again, and the refused
    // record is reported again so the delivery loop dead-letters it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut second = sink(&hec, dir.path(), extra).await;
    let delivered = second.deliver(&records(10)).await.unwrap();
    assert_eq!(hec.accepted().len(), 9, "not indexed twice");
    assert_eq!(delivered.rejected.len(), 1, "{:?}", delivered.rejected);
    assert_eq!(delivered.rejected[0].0, 6);
    assert!(
        delivered.rejected[0].1.contains("code 6"),
        "{}",
        delivered.rejected[0].1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_only_the_requests_without_an_ack_are_sent_again() {
    let hec = HecSim::start(HecSimConfig {
        ack: true,
        ack_delay: Duration::from_millis(1500),
        ..HecSimConfig::default()
    })
    .await
    .unwrap();
    // The second request is refused with a 503.
    hec.faults().fail_every.store(2, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let mut batch = records(10);
    batch[6].record = r#"{"id":"e-6","name":"event 6"}"#.into();
    // Requests of 5 records each.
    let probe = sink(&hec, dir.path(), "").await;
    let five: usize = batch[..5]
        .iter()
        .map(|r| {
            let mut out = Vec::new();
            probe.envelope(r, &mut out);
            out.len()
        })
        .sum();
    drop(probe);
    let extra = format!(
        "ack = true\nack_poll_secs = 0.1\nack_timeout_secs = 30\ngzip = false\nmax_request_bytes = {five}"
    );

    // The first request is taken and its ack pending, the second gets a 503; the process stops
    // while it waits for the ack.
    let mut first = sink(&hec, dir.path(), &extra).await;
    let sending = tokio::spawn({
        let batch = batch.clone();
        async move { first.deliver(&batch).await }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while hec.requests() < 2 {
        assert!(Instant::now() < deadline, "the batch was never sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    sending.abort();
    let _ = sending.await;
    assert_eq!(hec.accepted().len(), 5);

    // After the restart the ack of the first request has come: only the second is sent again.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let mut second = sink(&hec, dir.path(), &extra).await;
    let delivered = second.deliver(&batch).await.unwrap();
    assert!(delivered.shortfall.is_none(), "{delivered:?}");
    assert!(delivered.rejected.is_empty(), "{delivered:?}");
    let counts = index_counts(&hec);
    for i in 0..10 {
        assert_eq!(
            counts.get(&format!("e-{i}")),
            Some(&1),
            "e-{i} indexed once"
        );
    }
    assert_eq!(hec.requests(), 3, "two then one, none sent twice");
}

/// The daemon with two sinks, one of which (HEC) has its token revoked for a while: the other
/// keeps delivering, the source routed only to it never pauses, `state` says which sink is refused
/// and full, and once the token is valid again the refused sink gets everything, once.
///
/// Time is scaled: `backoff_max_secs = 2` stands for the default 300 s between attempts at a
/// refusing receiver, so the ≥ 3 refusal rounds below stand for 10+ minutes of a revoked token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_sink_in_the_daemon_pauses_only_its_sources_and_gets_everything_once_accepted_again(
) {
    let refused_sim = common::finished_sim(Identity::Tenant, 1, 3000).await;
    let live_sim = SophosSim::start(SophosSimConfig {
        identity: Identity::Tenant,
        tenants: 1,
        events_per_tenant: None,
        rate_per_sec: 20.0,
        start: Utc::now() - chrono::Duration::minutes(2),
        ..SophosSimConfig::default()
    })
    .await
    .unwrap();
    let hec = HecSim::start(HecSimConfig::default()).await.unwrap();
    hec.faults().revoke_token.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    // Two sinks share 400 kB: 200 kB each, a fraction of the refused source's 3,000 events.
    let text = common::config_text(
        &refused_sim,
        dir.path(),
        "streams = [\"events\"]\npage_size = 100",
        "[outbox]\nmax_bytes = 400000",
    )
    .replace("sinks = [\"out\"]", "sinks = [\"splunk\"]")
        + &format!(
            "[sinks.splunk]\ntype = \"splunk_hec\"\nurl = {:?}\ntoken = {TOKEN:?}\nbatch_size = 500\n\
             [sources.sophos_live]\ntype = \"sophos\"\nclient_id = \"sim-client\"\nclient_secret = \"sim-secret\"\n\
             token_url = {:?}\napi_url = {:?}\ninterval_secs = 0.5\ninitial_lookback_hours = 2\n\
             streams = [\"events\"]\nsinks = [\"out\"]\n",
            hec.url(),
            live_sim.token_url(),
            live_sim.url(),
        );
    let s = Settings::from_toml(&text).expect("valid config");
    let mut daemon = common::Daemon::start(&s);

    // The refused sink's backlog reaches its share: state shows it refused and full.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = app::state(&s).await.unwrap();
        let splunk = state
            .sinks
            .iter()
            .find(|k| k.state.sink == "splunk")
            .unwrap();
        if splunk.refused && splunk.full {
            assert!(state.to_table().contains("sink splunk is REFUSED"));
            break;
        }
        daemon.assert_running().await;
        assert!(
            Instant::now() < deadline,
            "never refused and full: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let paused_requests = refused_sim.requests().len();
    let live_requests = live_sim.requests().len();
    let live_delivered = common::delivered(dir.path()).len();
    let refusals = hec.refusals();
    // Each round: the 2 s wait, then the short batch's linger.
    tokio::time::sleep(Duration::from_secs(10)).await;
    daemon.assert_running().await;
    assert!(
        hec.refusals() >= refusals + 3,
        "the refused sink keeps asking: {} refusals, then {}",
        refusals,
        hec.refusals()
    );
    assert_eq!(
        refused_sim.requests().len(),
        paused_requests,
        "the source routed to the refused sink is paused"
    );
    assert!(
        live_sim.requests().len() > live_requests + 5,
        "the source routed only to the healthy sink never pauses"
    );
    assert!(
        common::delivered(dir.path()).len() > live_delivered + 50,
        "the healthy sink keeps delivering: {live_delivered} then {}",
        common::delivered(dir.path()).len()
    );
    let state = app::state(&s).await.unwrap();
    let paused = state
        .partitions
        .iter()
        .find(|p| p.source == "sophos_t")
        .unwrap();
    assert!(
        paused
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("paused: sink splunk")),
        "{paused:?}"
    );
    assert!(hec.accepted().is_empty());

    // The token is valid again: within a retry round the refused sink takes everything, once.
    hec.faults().revoke_token.store(false, Ordering::SeqCst);
    let want = common::expected(&refused_sim, &["events"]).len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while hec.accepted().len() < want {
        daemon.assert_running().await;
        assert!(
            Instant::now() < deadline,
            "{} of {want} after the token came back",
            hec.accepted().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let summary = daemon.stop().await;
    let mut ids: Vec<String> = hec
        .accepted()
        .iter()
        .map(|e| e["fields"]["event_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    let all = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), all, "nothing indexed twice");
    assert_eq!(ids.len(), want);
    let live = common::delivered(dir.path());
    assert_eq!(
        common::counts(&live).len(),
        live.len(),
        "no duplicates in the file"
    );
    assert!(
        !format!("{summary:?}").contains(TOKEN),
        "the token is never shown"
    );
    let state = app::state(&s).await.unwrap();
    let splunk = state
        .sinks
        .iter()
        .find(|k| k.state.sink == "splunk")
        .unwrap();
    assert!(!splunk.refused && !splunk.full, "{state:?}");
}

/// Waits until the simulator has accepted at least `n` envelopes.
async fn wait_accepted(hec: &HecSim, n: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while hec.accepted_count() < n {
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {n} accepted",
            hec.accepted_count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The daemon's delivery loop against a receiver that goes down (port closed, connections ended)
/// and comes back on the same port, then ends its connections in the middle of requests, twice
/// before indexing them and twice after: every record arrives, and only what the receiver never
/// answered goes twice. Batches of 250 in gzip requests of ~50 envelopes, so a batch is cut
/// anew from where it broke off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_stops_restarts_and_drops_connections_mid_request_gets_every_record() {
    let sim = common::finished_sim(Identity::Tenant, 1, 4000).await;
    let mut hec = HecSim::start(HecSimConfig::default()).await.unwrap();
    // Slow requests, so that a stop or a crash finds one under way.
    hec.faults().delay_ms.store(15, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let s = pipeline_config(
        &sim,
        &hec,
        dir.path(),
        "batch_size = 250\nmax_request_bytes = 50000\ngzip = true",
    );
    let want = common::expected(&sim, &["events"]).len();
    assert_eq!(want, 4000);
    let daemon = common::Daemon::start(&s);

    wait_accepted(&hec, 600, "before the stop").await;
    hec.stop().await;
    let at_stop = hec.accepted_count();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(hec.accepted_count(), at_stop, "nothing accepted while down");
    hec.listen_again().await.unwrap();

    wait_accepted(&hec, at_stop + 1000, "after the restart").await;
    hec.faults()
        .crash_before_indexing
        .store(2, Ordering::SeqCst);
    wait_accepted(&hec, at_stop + 1800, "after crashes before indexing").await;
    hec.faults().crash_after_indexing.store(2, Ordering::SeqCst);

    let deadline = Instant::now() + Duration::from_secs(60);
    while index_counts(&hec).len() < want {
        assert!(
            Instant::now() < deadline,
            "{} of {want} indexed",
            index_counts(&hec).len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.stop().await;
    assert_eq!(hec.faults().crash_before_indexing.load(Ordering::SeqCst), 0);
    assert_eq!(hec.faults().crash_after_indexing.load(Ordering::SeqCst), 0);
    let counts = index_counts(&hec);
    assert_eq!(counts.len(), want, "nothing lost");
    let duplicates = hec.accepted().len() - want;
    // What the receiver indexed but never answered: a request cut off by the stop and the two
    // crashes after indexing, each at most the rest of its batch.
    assert!(duplicates <= 3 * 250, "{duplicates} duplicates");
    assert!(duplicates > 0, "the crashes after indexing were sent again");
}
