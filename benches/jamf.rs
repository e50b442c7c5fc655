//! Jamf Pro full passes: 10 000 computers with their inventory sections, 50 ms simulated latency per
//! request, at most 5 connections — through the real pipeline (store, NDJSON sink), as
//! `secrelay backfill` runs it. Prints seconds per pass and the most requests seen in flight.
//!
//! `cargo bench --bench jamf`

use std::time::Instant;

use secrelay::app::{self, BackfillOptions};
use secrelay::settings::Settings;
use secrelay::simulate::jamf::{JamfSim, JamfSimConfig};
use tokio_util::sync::CancellationToken;

const COMPUTERS: u64 = 10_000;

#[tokio::main]
async fn main() {
    println!(
        "{:<44} {:>9} {:>12} {:>10} {:>9}",
        "pass", "seconds", "computers/s", "requests", "in flight"
    );
    for (label, streams, page_size) in [
        ("inventory (keyset on reportDate), page 1000", "[\"inventory\"]", 1000),
        ("fleet views (all, pages by id), page 1000", "[\"applications\", \"browser_extensions\", \"services\", \"software_updates\", \"virtual_machines\", \"assets\", \"fleet_counters\", \"ip_users\"]", 1000),
        ("inventory, page 200", "[\"inventory\"]", 200),
    ] {
        let sim = JamfSim::start(JamfSimConfig {
            computers: COMPUTERS,
            latency_ms: 50,
            ..JamfSimConfig::default()
        })
        .await
        .expect("simulator starts");
        let dir = tempfile::tempdir().expect("temp dir");
        let text = format!(
            r#"
            [store]
            path = {store:?}
            [sinks.out]
            type = "file"
            path = {file:?}
            batch_size = 2000
            [sources.jamf]
            type = "jamf"
            url = {url:?}
            client_id = "jamf-client"
            client_secret = "sim-jamf-secret"
            max_connections = 5
            page_size = {page_size}
            streams = {streams}
            sinks = ["out"]
            "#,
            store = dir.path().join("state.db").display().to_string(),
            file = dir.path().join("out.ndjson").display().to_string(),
            url = sim.url(),
        );
        let settings = Settings::from_toml(&text).expect("bench config");
        let started = Instant::now();
        let summary = app::backfill(&settings, &BackfillOptions::default(), CancellationToken::new())
            .await
            .expect("backfill");
        let secs = started.elapsed().as_secs_f64();
        assert!(summary.complete(), "{summary:?}");
        println!(
            "{:<44} {:>9.2} {:>12.0} {:>10} {:>9}",
            label,
            secs,
            COMPUTERS as f64 / secs,
            sim.inventory_requests(),
            sim.max_in_flight()
        );
    }
}
