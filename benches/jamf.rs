//! Jamf Pro full passes: 10 000 computers with their inventory sections, 50 ms simulated latency per
//! request, at most 5 connections — through the real pipeline (store, NDJSON sink), as
//! `secrelay backfill` runs it. Prints seconds per pass and the most requests seen in flight.
//! Then the peak memory (VmHWM) of a fleet pass (every fleet view) over 10 000 and 50 000
//! computers, each in a child process of its own (the bench re-run with `JAMF_BENCH_RSS=N`), so
//! one measurement cannot inherit another's peak. The child's peak includes the simulator's.
//!
//! `cargo bench --bench jamf` (`JAMF_BENCH_RSS_ONLY=1` skips the timed passes)
//!
//! Measured 2026-12-01 (debug build, page 500, every fleet view, loaded 2-core machine): peak RSS
//! 91 MB at 10k and 110 MB at 50k computers streamed, against 132 MB and 287 MB when the pass
//! held the whole fleet.

use std::time::Instant;

use secrelay::app::{self, BackfillOptions};
use secrelay::settings::Settings;
use secrelay::simulate::jamf::{JamfSim, JamfSimConfig};
use tokio_util::sync::CancellationToken;

const COMPUTERS: u64 = 10_000;

const FLEET_STREAMS: &str = "[\"applications\", \"browser_extensions\", \"services\", \"software_updates\", \"virtual_machines\", \"assets\", \"fleet_counters\", \"ip_users\"]";

fn settings(dir: &std::path::Path, url: &str, page_size: u32, streams: &str) -> Settings {
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
        store = dir.join("state.db").display().to_string(),
        file = dir.join("out.ndjson").display().to_string(),
    );
    Settings::from_toml(&text).expect("bench config")
}

/// The peak resident set of this process so far, from /proc/self/status (kB).
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Child: one fleet pass over `computers`, then prints `peak_kb seconds`.
async fn fleet_pass_peak(computers: u64) {
    let sim = JamfSim::start(JamfSimConfig {
        computers,
        latency_ms: 5,
        ..JamfSimConfig::default()
    })
    .await
    .expect("simulator starts");
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = settings(dir.path(), &sim.url(), 500, FLEET_STREAMS);
    let started = Instant::now();
    let summary = app::backfill(
        &settings,
        &BackfillOptions::default(),
        CancellationToken::new(),
    )
    .await
    .expect("backfill");
    assert!(summary.complete(), "{summary:?}");
    println!(
        "{} {:.2}",
        peak_rss_kb().unwrap_or(0),
        started.elapsed().as_secs_f64()
    );
}

fn print_fleet_peaks() {
    println!(
        "\n{:<44} {:>12} {:>9}",
        "fleet pass (all views), page 500", "peak RSS MB", "seconds"
    );
    for computers in [10_000u64, 50_000] {
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let out = std::process::Command::new(exe)
            .env("JAMF_BENCH_RSS", computers.to_string())
            .output()
            .expect("child runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut fields = text.split_whitespace();
        let kb: f64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let secs = fields.next().unwrap_or("?").to_string();
        println!(
            "{:<44} {:>12.1} {:>9}",
            format!("{computers} computers"),
            kb / 1024.0,
            secs
        );
    }
}

#[tokio::main]
async fn main() {
    if let Some(n) = std::env::var("JAMF_BENCH_RSS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        fleet_pass_peak(n).await;
        return;
    }
    if std::env::var("JAMF_BENCH_RSS_ONLY").is_ok() {
        print_fleet_peaks();
        return;
    }
    println!(
        "{:<44} {:>9} {:>12} {:>10} {:>9}",
        "pass", "seconds", "computers/s", "requests", "in flight"
    );
    for (label, streams, page_size) in [
        (
            "inventory (keyset on reportDate), page 1000",
            "[\"inventory\"]",
            1000,
        ),
        (
            "fleet views (all, pages by id), page 1000",
            FLEET_STREAMS,
            1000,
        ),
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
        let settings = settings(dir.path(), &sim.url(), page_size, streams);
        let started = Instant::now();
        let summary = app::backfill(
            &settings,
            &BackfillOptions::default(),
            CancellationToken::new(),
        )
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
    print_fleet_peaks();
}
