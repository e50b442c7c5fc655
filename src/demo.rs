//! `secrelay demo`: the vendor simulators on loopback and the real pipeline into local sinks, so a
//! newcomer sees the whole thing work with one command.
//!
//! Owns: the demo's simulator setup and the configuration it writes for itself. Must not: reach
//! anything but loopback, or differ from `secrelay run` past the configuration.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::app::{self, AppError, RunSummary};
use crate::settings::Settings;
use crate::simulate::code42::{Code42Sim, Code42SimConfig};
use crate::simulate::sophos::{Identity, SophosSim, SophosSimConfig};

/// Options of `secrelay demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Stop after this long (default: run until Ctrl-C).
    pub seconds: Option<f64>,
    /// Where the state database and the sinks' output go.
    pub out: PathBuf,
}

/// Failures of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The output directory or a simulator could not be set up.
    #[error("demo setup failed: {0}")]
    Setup(String),
    /// The pipeline failed.
    #[error(transparent)]
    App(#[from] AppError),
}

/// The demo's configuration: a Sophos partner credential with three tenants and a Code42 tenant,
/// into one NDJSON file.
pub fn demo_settings(
    sim: &SophosSim,
    code42: &Code42Sim,
    out: &Path,
) -> Result<Settings, DemoError> {
    let text = format!(
        r#"
        [store]
        path = {store:?}
        [scheduler]
        jitter_secs = 0.5
        backoff_initial_secs = 0.5
        backoff_max_secs = 5.0
        shutdown_grace_secs = 5.0
        [sinks.ndjson]
        type = "file"
        path = {file:?}
        [sources.sophos_demo]
        type = "sophos"
        client_id = "demo-client"
        client_secret = "demo-secret"
        token_url = {token:?}
        api_url = {api:?}
        interval_secs = 2.0
        initial_lookback_hours = 1
        sinks = ["ndjson"]
        [sources.code42_demo]
        type = "code42"
        client_id = "key-42"
        client_secret = "sim-code42-secret"
        api_url = {code42:?}
        interval_secs = 2.0
        initial_lookback_hours = 2
        sinks = ["ndjson"]
        "#,
        store = out.join("state.db").display().to_string(),
        file = out.join("events.ndjson").display().to_string(),
        token = sim.token_url(),
        api = sim.url(),
        code42 = code42.url(),
    );
    Settings::from_toml(&text).map_err(|e| DemoError::Setup(e.to_string()))
}

/// Runs the demo until `stop` or `options.seconds`, then returns what moved.
pub async fn run(options: &DemoOptions, stop: CancellationToken) -> Result<RunSummary, DemoError> {
    std::fs::create_dir_all(&options.out)
        .map_err(|e| DemoError::Setup(format!("cannot create {}: {e}", options.out.display())))?;
    let sim = SophosSim::start(SophosSimConfig {
        client_id: "demo-client".into(),
        client_secret: "demo-secret".into(),
        identity: Identity::Partner,
        tenants: 3,
        tenant_page_size: 2,
        events_per_tenant: None,
        rate_per_sec: 5.0,
        start: chrono::Utc::now() - chrono::Duration::minutes(10),
        ..SophosSimConfig::default()
    })
    .await
    .map_err(|e| DemoError::Setup(format!("cannot start the Sophos simulator: {e}")))?;
    let code42 = Code42Sim::start(Code42SimConfig::default())
        .await
        .map_err(|e| DemoError::Setup(format!("cannot start the Code42 simulator: {e}")))?;
    seed_code42(&code42);
    let settings = demo_settings(&sim, &code42, &options.out)?;
    println!(
        "secrelay demo: Sophos Central simulator (partner, 3 tenants) at {}, Code42 Incydr simulator at {}\n  state:  {}\n  output: {}\n  {}",
        sim.url(),
        code42.url(),
        settings.store.path.display(),
        options.out.join("events.ndjson").display(),
        match options.seconds {
            Some(s) => format!("running for {s} s"),
            None => "running until Ctrl-C".to_string(),
        }
    );
    if let Some(seconds) = options.seconds {
        let timer = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
            timer.cancel();
        });
    }
    // New Code42 file events keep arriving while the demo runs.
    let code42 = std::sync::Arc::new(code42);
    let feed = tokio::spawn({
        let code42 = code42.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = chrono::Utc::now();
                code42.add_file_events(
                    10,
                    now,
                    chrono::Duration::milliseconds(50),
                    chrono::Duration::seconds(30),
                );
            }
        }
    });
    let summary = app::run(&settings, stop).await;
    feed.abort();
    Ok(summary?)
}

/// An hour of Code42 history: file events, alerts with observations, sessions.
fn seed_code42(sim: &Code42Sim) {
    let now = chrono::Utc::now();
    sim.add_file_events(
        1500,
        now - chrono::Duration::hours(1),
        chrono::Duration::milliseconds(2400),
        chrono::Duration::minutes(2),
    );
    for i in 0..20 {
        sim.add_alert(
            now - chrono::Duration::minutes(60 - 3 * i),
            "Exfiltration to removable media",
            (i % 3) as usize,
        );
    }
    for i in 0..5 {
        sim.add_session(now - chrono::Duration::minutes(50 - 10 * i));
    }
}
