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

/// The demo's configuration: a Sophos partner credential with three tenants, into an NDJSON file.
pub fn demo_settings(sim: &SophosSim, out: &Path) -> Result<Settings, DemoError> {
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
        "#,
        store = out.join("state.db").display().to_string(),
        file = out.join("events.ndjson").display().to_string(),
        token = sim.token_url(),
        api = sim.url(),
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
    let settings = demo_settings(&sim, &options.out)?;
    println!(
        "secrelay demo: Sophos Central simulator (partner, 3 tenants) at {}\n  state:  {}\n  output: {}\n  {}",
        sim.url(),
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
    let summary = app::run(&settings, stop).await?;
    Ok(summary)
}
