//! Splunk HEC through the whole pipeline (Sophos simulator → store → HEC sink with gzip → HEC
//! simulator), on loopback:
//! - throughput: N events, events/s end to end;
//! - outage: the HEC simulator answers 503 for a while (default 300 s, `SECRELAY_OUTAGE_SECS` to
//!   change), then recovers; with acks off and on, prints how many events were indexed, how many
//!   twice, and how long delivery took after recovery.
//!
//! `cargo bench --bench hec` (`-- throughput` or `-- outage` for one part).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use secrelay::app::{self, BackfillOptions};
use secrelay::settings::Settings;
use secrelay::simulate::hec::{HecSim, HecSimConfig};
use secrelay::simulate::sophos::{Identity, SophosSim, SophosSimConfig};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "00000000-0000-4000-8000-00000000cafe";

async fn sophos(events: u64) -> SophosSim {
    let span = 23.0 * 3600.0;
    SophosSim::start(SophosSimConfig {
        identity: Identity::Tenant,
        events_per_tenant: Some(events),
        rate_per_sec: events as f64 / span,
        start: chrono::Utc::now() - chrono::Duration::seconds(span as i64 + 60),
        ..SophosSimConfig::default()
    })
    .await
    .expect("sophos simulator")
}

fn settings(sim: &SophosSim, hec: &HecSim, dir: &std::path::Path, extra: &str) -> Settings {
    let text = format!(
        r#"
        [store]
        path = {store:?}
        [scheduler]
        jitter_secs = 0.0
        backoff_max_secs = 10.0
        [backfill]
        drain_timeout_secs = 900.0
        [sinks.splunk]
        type = "splunk_hec"
        url = {hec:?}
        token = {TOKEN:?}
        batch_size = 2000
        {extra}
        [sources.bench]
        type = "sophos"
        client_id = "sim-client"
        client_secret = "sim-secret"
        token_url = {token:?}
        api_url = {api:?}
        streams = ["events"]
        initial_lookback_hours = 24
        sinks = ["splunk"]
        "#,
        store = dir.join("state.db").display().to_string(),
        hec = hec.url(),
        token = sim.token_url(),
        api = sim.url(),
    );
    Settings::from_toml(&text).expect("bench config")
}

async fn throughput() {
    for n in [100_000u64] {
        let sim = sophos(n).await;
        let hec = HecSim::start(HecSimConfig::default())
            .await
            .expect("hec simulator");
        let dir = tempfile::tempdir().expect("temp dir");
        let s = settings(&sim, &hec, dir.path(), "");
        let started = Instant::now();
        let summary = app::backfill(&s, &BackfillOptions::default(), CancellationToken::new())
            .await
            .expect("backfill");
        let secs = started.elapsed().as_secs_f64();
        assert!(summary.complete(), "{summary:?}");
        println!(
            "end to end through HEC with gzip: {n} events in {secs:.1} s = {:.0} events/s ({} requests, all gzipped: {})",
            n as f64 / secs,
            hec.requests(),
            hec.gzipped() == hec.requests()
        );
    }
}

async fn outage(ack: bool, outage: Duration) {
    let n = 20_000u64;
    let sim = sophos(n).await;
    let hec = HecSim::start(HecSimConfig {
        ack,
        ack_delay: Duration::from_millis(200),
        ..HecSimConfig::default()
    })
    .await
    .expect("hec simulator");
    hec.faults().busy.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().expect("temp dir");
    let extra = if ack {
        "ack = true\nack_poll_secs = 0.2"
    } else {
        ""
    };
    let s = settings(&sim, &hec, dir.path(), extra);
    let run = tokio::spawn(async move {
        app::backfill(&s, &BackfillOptions::default(), CancellationToken::new()).await
    });
    tokio::time::sleep(outage).await;
    let refused = hec.busy_answers();
    hec.faults().busy.store(false, Ordering::SeqCst);
    let recovered = Instant::now();
    let summary = run.await.expect("task").expect("backfill");
    let accepted = hec.accepted();
    let unique: std::collections::HashSet<_> = accepted
        .iter()
        .map(|e| {
            e["fields"]["event_id"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    println!(
        "{:>4} s of 503s, acks {}: {} of {n} events indexed, {} twice, {refused} requests refused, delivered {:.1} s after recovery, complete: {}",
        outage.as_secs(),
        if ack { "on " } else { "off" },
        unique.len(),
        accepted.len() - unique.len(),
        recovered.elapsed().as_secs_f64(),
        summary.complete()
    );
}

#[tokio::main]
async fn main() {
    let only = std::env::args().nth(1).unwrap_or_default();
    if only.is_empty() || only == "throughput" {
        throughput().await;
    }
    if only.is_empty() || only == "outage" {
        let secs = std::env::var("SECRELAY_OUTAGE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300);
        outage(false, Duration::from_secs(secs)).await;
        outage(true, Duration::from_secs(secs)).await;
    }
}
