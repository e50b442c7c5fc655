//! Shared test scaffolding: simulator setups, configuration text and readers for sink output.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use secrelay::simulate::sophos::{Identity, SophosSim, SophosSimConfig};

/// A simulator whose `events_per_tenant` events all lie in the last hour (none appear later).
pub async fn finished_sim(identity: Identity, tenants: usize, events_per_tenant: u64) -> SophosSim {
    let rate = (events_per_tenant as f64 / 1800.0).max(1.0);
    SophosSim::start(SophosSimConfig {
        identity,
        tenants,
        events_per_tenant: Some(events_per_tenant),
        rate_per_sec: rate,
        start: chrono::Utc::now() - chrono::Duration::minutes(50),
        ..SophosSimConfig::default()
    })
    .await
    .expect("simulator starts")
}

/// Configuration text for one Sophos source `sophos_t` into one file sink `out` under `dir`.
pub fn config_text(sim: &SophosSim, dir: &Path, extra_source: &str, extra_top: &str) -> String {
    format!(
        r#"
{extra_top}
[store]
path = {store:?}
[scheduler]
jitter_secs = 0.0
backoff_initial_secs = 0.2
backoff_max_secs = 2.0
shutdown_grace_secs = 5.0
[backfill]
drain_timeout_secs = 30.0
[sinks.out]
type = "file"
path = {file:?}
batch_size = 500
[sources.sophos_t]
type = "sophos"
client_id = "sim-client"
client_secret = "sim-secret"
token_url = {token:?}
api_url = {api:?}
interval_secs = 0.5
initial_lookback_hours = 2
sinks = ["out"]
{extra_source}
"#,
        store = dir.join("state.db").display().to_string(),
        file = dir.join("out").join("events.ndjson").display().to_string(),
        token = sim.token_url(),
        api = sim.url(),
    )
}

/// Settings from the shared test sections (state under `dir`, fast retries, a file sink `out`
/// under `dir/out`) and `source`, the TOML of one source routed to `out`.
pub fn settings_with(dir: &Path, source: &str) -> secrelay::settings::Settings {
    let text = format!(
        r#"
[store]
path = {store:?}
[scheduler]
jitter_secs = 0.0
backoff_initial_secs = 0.2
backoff_max_secs = 2.0
shutdown_grace_secs = 5.0
[backfill]
drain_timeout_secs = 60.0
[sinks.out]
type = "file"
path = {file:?}
batch_size = 2000
{source}
"#,
        store = dir.join("state.db").display().to_string(),
        file = dir.join("out").join("events.ndjson").display().to_string(),
    );
    secrelay::settings::Settings::from_toml(&text).expect("valid test config")
}

/// `secrelay run` in the background of a test, stopped as SIGTERM would stop it.
pub struct Daemon {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Result<secrelay::app::RunSummary, secrelay::app::AppError>>,
}

impl Daemon {
    /// Starts the daemon with `settings`.
    pub fn start(settings: &secrelay::settings::Settings) -> Daemon {
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn({
            let settings = settings.clone();
            let stop = stop.clone();
            async move { secrelay::app::run(&settings, stop).await }
        });
        Daemon { stop, task }
    }

    /// Fails the test if the daemon already ended (it should run until stopped).
    pub async fn assert_running(&mut self) {
        if self.task.is_finished() {
            panic!("daemon ended early: {:?}", (&mut self.task).await);
        }
    }

    /// Stops it and waits for the graceful shutdown; fails the test if it failed.
    pub async fn stop(self) -> secrelay::app::RunSummary {
        self.stop.cancel();
        self.task.await.expect("daemon task").expect("daemon runs")
    }
}

/// One delivered line: (stream, tenant, id).
pub type Delivered = (String, String, String);

/// Every line of every NDJSON file under `dir/out`, parsed.
pub fn delivered(dir: &Path) -> Vec<Delivered> {
    read_delivered(dir, false)
}

/// The complete lines of every NDJSON file under `dir/out`, parsed, while a sink may be writing
/// (or was killed writing): a last line without its `\n` is still being written, or torn.
pub fn delivered_so_far(dir: &Path) -> Vec<Delivered> {
    read_delivered(dir, true)
}

fn read_delivered(dir: &Path, complete_only: bool) -> Vec<Delivered> {
    let out = dir.join("out");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&out) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => return Vec::new(),
    };
    files.retain(|p| p.extension().is_some_and(|e| e == "ndjson"));
    files.sort();
    let mut lines = Vec::new();
    for file in files {
        let mut text = std::fs::read_to_string(&file).expect("output readable");
        if complete_only {
            text.truncate(text.rfind('\n').map_or(0, |at| at + 1));
        }
        for line in text.lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"));
            lines.push((
                v["stream"].as_str().unwrap().to_string(),
                v["tenant"].as_str().unwrap().to_string(),
                v["id"].as_str().unwrap().to_string(),
            ));
        }
    }
    lines
}

/// How often each delivered line occurs.
pub fn counts(lines: &[Delivered]) -> HashMap<Delivered, usize> {
    let mut counts = HashMap::new();
    for l in lines {
        *counts.entry(l.clone()).or_insert(0) += 1;
    }
    counts
}

/// Everything the simulator has served by now, as delivered lines, for `streams`.
pub fn expected(sim: &SophosSim, streams: &[&str]) -> Vec<Delivered> {
    let now = chrono::Utc::now();
    let mut all = Vec::new();
    for (t, tenant) in sim.tenant_ids().iter().enumerate() {
        for stream in streams {
            for id in sim.expected_ids(t, stream, now) {
                all.push((stream.to_string(), tenant.clone(), id));
            }
        }
    }
    all
}

/// Asserts every expected line was delivered exactly once and nothing else was.
pub fn assert_exactly_once(got: &[Delivered], want: &[Delivered]) {
    let counts = counts(got);
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    let missing: Vec<_> = want
        .iter()
        .filter(|w| !counts.contains_key(*w))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "never delivered (of {}): {missing:?}",
        want.len()
    );
    assert_eq!(got.len(), want.len(), "unexpected extra lines");
}
