//! `secrelay demo`: the vendor simulators on loopback and the real pipeline into local sinks, so a
//! newcomer sees the whole thing work with one command.
//!
//! Owns: the demo's simulator setup, their seed data and the configuration it writes for itself.
//! Must not: reach anything but loopback, or differ from `secrelay run` past the configuration.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::app::{self, AppError, RunSummary};
use crate::settings::Settings;
use crate::simulate::code42::{Code42Sim, Code42SimConfig};
use crate::simulate::hec::{HecSim, HecSimConfig};
use crate::simulate::itop::{ItopSim, ItopSimConfig};
use crate::simulate::jamf::{JamfSim, JamfSimConfig};
use crate::simulate::sophos::{Identity, SophosSim, SophosSimConfig};
use crate::simulate::syslog::SyslogReceiver;
use crate::simulate::tenable_sc::{TenableSim, TenableSimConfig};

/// The file of the exact bytes the syslog sink sent (CEF over RFC 5424, one per line), in `out`.
pub const SYSLOG_FILE: &str = "syslog-cef.log";
/// The file of the HEC envelopes the Splunk HEC simulator accepted (one JSON object per line), in
/// `out`, written when the demo ends.
pub const HEC_FILE: &str = "hec-events.ndjson";

/// Options of `secrelay demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Stop after this long (default: run until Ctrl-C).
    pub seconds: Option<f64>,
    /// Where the state database and the sinks' output go.
    pub out: PathBuf,
    /// Also run the iTop simulator and an iTop sink: Code42 sessions (and high-severity alerts)
    /// become tickets, and sessions change state while the demo runs.
    pub itop: bool,
    /// Where the metrics and health endpoint listens (`IP:PORT`); default a free loopback port.
    pub metrics_listen: Option<String>,
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

/// The simulators the demo runs, seeded with history.
pub struct Simulators {
    /// Sophos Central: a partner with three tenants, events arriving at 5/s per tenant.
    pub sophos: SophosSim,
    /// Code42 Incydr: an hour of file events (more arrive while the demo runs), alerts, sessions.
    pub code42: Arc<Code42Sim>,
    /// Tenable.sc: 2000 findings from the last week, one in ten mitigated.
    pub tenable: TenableSim,
    /// Jamf Pro: 500 computers with their inventory.
    pub jamf: JamfSim,
    /// iTop, when the demo runs with `--itop`: the seeded organizations, persons and teams.
    pub itop: Option<ItopSim>,
    /// The Code42 sessions seeded, which change state while the demo runs.
    pub sessions: Vec<String>,
    /// Splunk HEC: every source is routed to it; it keeps the envelopes it accepted.
    pub hec: HecSim,
    /// A syslog receiver writing what the syslog sink sends to [`SYSLOG_FILE`].
    pub syslog: SyslogReceiver,
}

fn setup(what: &str) -> impl FnOnce(std::io::Error) -> DemoError + '_ {
    move |e| DemoError::Setup(format!("cannot start the {what} simulator: {e}"))
}

impl Simulators {
    /// Starts and seeds every simulator (iTop too with `itop`), the HEC simulator and a syslog
    /// receiver writing into `out`.
    pub async fn start(itop: bool, out: &Path) -> Result<Simulators, DemoError> {
        let sophos = SophosSim::start(SophosSimConfig {
            client_id: "demo-client".into(),
            client_secret: "demo-secret".into(),
            identity: Identity::Partner,
            tenants: 3,
            tenant_page_size: 2,
            events_per_tenant: None,
            rate_per_sec: 5.0,
            start: Utc::now() - chrono::Duration::minutes(10),
            ..SophosSimConfig::default()
        })
        .await
        .map_err(setup("Sophos"))?;

        let code42 = Code42Sim::start(Code42SimConfig::default())
            .await
            .map_err(setup("Code42"))?;
        let now = Utc::now();
        code42.add_file_events(
            1500,
            now - chrono::Duration::hours(1),
            chrono::Duration::milliseconds(2400),
            chrono::Duration::minutes(2),
        );
        for i in 0..20 {
            code42.add_alert(
                now - chrono::Duration::minutes(60 - 3 * i),
                "Exfiltration to removable media",
                (i % 3) as usize,
            );
        }
        let sessions = (0..5)
            .map(|i| code42.add_session(now - chrono::Duration::minutes(50 - 10 * i)))
            .collect();

        let tenable = TenableSim::start(TenableSimConfig::default())
            .await
            .map_err(setup("Tenable.sc"))?;
        let secs = now.timestamp();
        let findings = tenable.add_findings(2000, secs - 7 * 86_400, secs - 600);
        for n in findings.iter().step_by(10) {
            tenable.mitigate(*n, secs - 300);
        }
        let jamf = JamfSim::start(JamfSimConfig {
            computers: 500,
            ..JamfSimConfig::default()
        })
        .await
        .map_err(setup("Jamf Pro"))?;
        let itop = match itop {
            true => Some(
                ItopSim::start(ItopSimConfig::default())
                    .await
                    .map_err(setup("iTop"))?,
            ),
            false => None,
        };
        let hec = HecSim::start(HecSimConfig::default())
            .await
            .map_err(setup("Splunk HEC"))?;
        let syslog = SyslogReceiver::start(&out.join(SYSLOG_FILE))
            .await
            .map_err(setup("syslog receiver"))?;
        Ok(Simulators {
            hec,
            syslog,
            sophos,
            code42: Arc::new(code42),
            tenable,
            jamf,
            itop,
            sessions,
        })
    }

    /// The demo's configuration: every simulator as a source, into one NDJSON file under `out`;
    /// with iTop, Code42 sessions and high-severity alerts also to an iTop sink.
    pub fn settings(&self, out: &Path) -> Result<Settings, DemoError> {
        let mut text = format!(
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
            [sinks.syslog]
            type = "syslog"
            address = {syslog:?}
            transport = "tcp"
            framing = "lf"
            payload = "cef"
            hostname = "secrelay-demo"
            [sinks.splunk]
            type = "splunk_hec"
            url = {hec:?}
            token = {hec_token:?}
            host = "secrelay-demo"
            [sources.sophos_demo]
            type = "sophos"
            client_id = "demo-client"
            client_secret = "demo-secret"
            token_url = {sophos_token:?}
            api_url = {sophos:?}
            interval_secs = 2.0
            initial_lookback_hours = 1
            sinks = ["ndjson", "syslog", "splunk"]
            [sources.code42_demo]
            type = "code42"
            client_id = "key-42"
            client_secret = "sim-code42-secret"
            api_url = {code42:?}
            interval_secs = 2.0
            initial_lookback_hours = 2
            sinks = ["ndjson", "syslog", "splunk"]
            [sources.tenable_demo]
            type = "tenable_sc"
            url = {tenable:?}
            access_key = "ak-1"
            secret_key = "sim-tenable-secret"
            interval_secs = 5.0
            sinks = ["ndjson", "syslog", "splunk"]
            [sources.jamf_demo]
            type = "jamf"
            url = {jamf:?}
            client_id = "jamf-client"
            client_secret = "sim-jamf-secret"
            interval_secs = 30.0
            sinks = ["ndjson", "syslog", "splunk"]
            "#,
            store = out.join("state.db").display().to_string(),
            file = out.join("events.ndjson").display().to_string(),
            syslog = self.syslog.address(),
            hec = self.hec.url(),
            hec_token = HecSimConfig::default().token,
            sophos_token = self.sophos.token_url(),
            sophos = self.sophos.url(),
            code42 = self.code42.url(),
            tenable = self.tenable.url(),
            jamf = self.jamf.url(),
        );
        if let Some(itop) = &self.itop {
            text = text.replace(
                "sinks = [\"ndjson\", \"syslog\", \"splunk\"]\n            [sources.tenable_demo]",
                "sinks = [\"ndjson\", \"syslog\", \"splunk\", \"itop\"]\n            [sources.tenable_demo]",
            );
            text.push_str(&format!(
                r#"
            [sinks.itop]
            type = "itop"
            url = {url:?}
            user = "secrelay"
            password = "itop-pw"
            fields = {{ org_id = "SELECT Organization WHERE name = \"SOC\"", caller_id = {{ name = "Monitoring", first_name = "SIEM" }}, impact = "2", urgency = "2" }}
            [sinks.itop.assign]
            stimulus = "ev_assign"
            fields = {{ team_id = 1, agent_id = 4 }}
            [sinks.itop.resolve]
            stimulus = "ev_resolve"
            fields = {{ service_id = 1 }}
            [[sinks.itop.rules]]
            sources = ["code42_demo"]
            streams = ["sessions"]
            [[sinks.itop.rules]]
            sources = ["code42_demo"]
            streams = ["alerts"]
            min_severity = 8
            "#,
                url = itop.url(),
            ));
        }
        Settings::from_toml(&text).map_err(|e| DemoError::Setup(e.to_string()))
    }

    /// One line per simulator, for the demo's banner.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "  Sophos Central (partner, 3 tenants)  {}\n  Code42 Incydr                        {}\n  Tenable.sc                           {}\n  Jamf Pro (500 computers)             {}",
            self.sophos.url(),
            self.code42.url(),
            self.tenable.url(),
            self.jamf.url()
        );
        text.push_str(&format!(
            "\n  syslog receiver (CEF, TCP)           {}\n  Splunk HEC                           {}",
            self.syslog.address(),
            self.hec.url()
        ));
        if let Some(itop) = &self.itop {
            text.push_str(&format!(
                "\n  iTop (tickets)                       {}",
                itop.endpoint()
            ));
        }
        text
    }

    /// What the iTop simulator holds, for the demo's last words: tickets, log entries, resolved.
    pub fn itop_summary(&self) -> Option<String> {
        let tickets = self.itop.as_ref()?.tickets();
        let logged: usize = tickets.iter().map(|t| t.public_log.len()).sum();
        let resolved = tickets.iter().filter(|t| t.status == "resolved").count();
        Some(format!(
            "iTop: {} tickets opened, {logged} log entries added, {resolved} resolved",
            tickets.len()
        ))
    }
}

/// Where the demo writes the last scrape of its metrics endpoint.
const METRICS_FILE: &str = "metrics.prom";

/// Scrapes `url` every second into `path` (owner-only), as Prometheus would, until aborted.
async fn scrape_metrics(client: reqwest::Client, url: String, path: PathBuf) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Ok(response) = client.get(&url).send().await else {
            continue;
        };
        let Ok(text) = response.text().await else {
            continue;
        };
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
        if let Err(e) = written {
            tracing::warn!("cannot write {}: {e}", path.display());
        }
    }
}

/// Runs the demo until `stop` or `options.seconds`, then returns what moved.
pub async fn run(options: &DemoOptions, stop: CancellationToken) -> Result<RunSummary, DemoError> {
    std::fs::create_dir_all(&options.out)
        .map_err(|e| DemoError::Setup(format!("cannot create {}: {e}", options.out.display())))?;
    let sims = Simulators::start(options.itop, &options.out).await?;
    let mut settings = sims.settings(&options.out)?;
    // The metrics endpoint on a free loopback port, scraped into the output directory while the
    // demo runs, so a newcomer sees what Prometheus would.
    let metrics_addr = match &options.metrics_listen {
        Some(listen) => listen.clone(),
        None => std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.to_string())
            .map_err(|e| DemoError::Setup(format!("no free port for the metrics endpoint: {e}")))?,
    };
    settings.metrics.enabled = true;
    settings.metrics.listen = metrics_addr.clone();
    println!(
        "secrelay demo: simulators on loopback\n{}\n  state:  {}\n  output: {} (NDJSON), {} (syslog bytes), {} (HEC envelopes)\n  metrics: http://{metrics_addr}/metrics and /health (scraped to {})\n  {}",
        sims.describe(),
        settings.store.path.display(),
        options.out.join("events.ndjson").display(),
        sims.syslog.path().display(),
        options.out.join(HEC_FILE).display(),
        options.out.join(METRICS_FILE).display(),
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
    let feed = tokio::spawn({
        let code42 = sims.code42.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = Utc::now();
                code42.add_file_events(
                    10,
                    now,
                    chrono::Duration::milliseconds(50),
                    chrono::Duration::seconds(30),
                );
            }
        }
    });
    // With iTop, the seeded sessions move along as analysts would move them: the tickets they
    // opened get log entries, then are resolved.
    let analysts = tokio::spawn({
        let code42 = sims.code42.clone();
        let sessions = sims.sessions.clone();
        let itop = sims.itop.is_some();
        async move {
            if !itop {
                return;
            }
            for state in ["IN_PROGRESS", "CLOSED_TP"] {
                for id in &sessions {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    code42.update_session(id, state);
                }
            }
        }
    });
    let client = crate::net::http_client(&settings.http)
        .map_err(|e| DemoError::Setup(format!("cannot build an HTTP client: {e}")))?;
    let scraper = tokio::spawn(scrape_metrics(
        client,
        format!("http://{metrics_addr}/metrics"),
        options.out.join(METRICS_FILE),
    ));
    let summary = app::run(&settings, stop).await;
    feed.abort();
    analysts.abort();
    scraper.abort();
    if let Some(itop) = sims.itop_summary() {
        println!("{itop}");
    }
    // Every sink closed its connection; what it sent is in the file once the receiver read it all.
    sims.syslog.settle(Duration::from_secs(5)).await;
    let accepted = sims.hec.accepted();
    let mut hec_lines = String::new();
    for envelope in &accepted {
        hec_lines.push_str(&envelope.to_string());
        hec_lines.push('\n');
    }
    let hec_path = options.out.join(HEC_FILE);
    // Security events: readable by the owner only, as the file sink writes them.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&hec_path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, hec_lines.as_bytes()));
    written.map_err(|e| DemoError::Setup(format!("cannot write {}: {e}", hec_path.display())))?;
    println!(
        "syslog: {} bytes of CEF over syslog in {}\nSplunk HEC: {} envelopes accepted, in {}",
        sims.syslog.bytes(),
        sims.syslog.path().display(),
        accepted.len(),
        hec_path.display()
    );
    Ok(summary?)
}
