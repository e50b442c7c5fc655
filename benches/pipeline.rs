//! End-to-end throughput: N events through the Sophos simulator (real HTTP on loopback) → store
//! (seen-set, outbox, cursor) → NDJSON sink (write + fdatasync), as `secrelay backfill` runs it.
//!
//! `cargo bench --bench pipeline` runs N = 100 000 and N = 1 000 000, each in a fresh child process
//! so that its peak RSS (VmHWM, simulator included) is its own. `-- N` runs one size.

use std::process::Command;
use std::time::Instant;

use secrelay::app::{self, BackfillOptions};
use secrelay::settings::Settings;
use secrelay::simulate::sophos::{Identity, SophosSim, SophosSimConfig};
use tokio_util::sync::CancellationToken;

fn main() {
    let sizes: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    if let [n] = sizes[..] {
        let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
        runtime.block_on(run_one(n));
        return;
    }
    let me = std::env::current_exe().expect("own path");
    println!(
        "{:>10} {:>10} {:>12} {:>14}",
        "events", "seconds", "events/s", "peak RSS MiB"
    );
    for n in [100_000u64, 1_000_000] {
        let status = Command::new(&me)
            .arg(n.to_string())
            .status()
            .expect("child runs");
        assert!(status.success(), "benchmark for {n} events failed");
    }
}

async fn run_one(n: u64) {
    // All n events lie in the last 23 hours, inside the SIEM API's 24-hour horizon.
    let span_secs = 23.0 * 3600.0;
    let sim = SophosSim::start(SophosSimConfig {
        identity: Identity::Tenant,
        events_per_tenant: Some(n),
        rate_per_sec: n as f64 / span_secs,
        start: chrono::Utc::now() - chrono::Duration::seconds(span_secs as i64 + 60),
        ..SophosSimConfig::default()
    })
    .await
    .expect("simulator starts");
    let dir = tempfile::tempdir().expect("temp dir");
    let text = format!(
        r#"
        [store]
        path = {store:?}
        [outbox]
        max_bytes = 268435456
        [sinks.out]
        type = "file"
        path = {file:?}
        rotate_bytes = 1073741824
        batch_size = 2000
        [sources.bench]
        type = "sophos"
        client_id = "sim-client"
        client_secret = "sim-secret"
        token_url = {token:?}
        api_url = {api:?}
        streams = ["events"]
        initial_lookback_hours = 24
        page_size = 1000
        sinks = ["out"]
        "#,
        store = dir.path().join("state.db").display().to_string(),
        file = dir.path().join("out.ndjson").display().to_string(),
        token = sim.token_url(),
        api = sim.url(),
    );
    let settings = Settings::from_toml(&text).expect("bench config");
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
    let delivered: u64 = summary.sinks.iter().map(|s| s.delivered).sum();
    assert_eq!(delivered, n, "every event delivered once");
    println!(
        "{:>10} {:>10.1} {:>12.0} {:>14.1}",
        n,
        secs,
        n as f64 / secs,
        peak_rss_kib() as f64 / 1024.0
    );
}

/// Peak resident set size of this process (VmHWM), KiB.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
