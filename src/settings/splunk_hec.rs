//! `[sinks.<name>]` with `type = "splunk_hec"`: Splunk HTTP Event Collector.

use std::path::PathBuf;

use serde::Deserialize;

use super::{invalid, resolve_secret, secret, Secret, SettingsError, SetupError};

/// Where events of one source (and optionally one stream) go, overriding the sink's defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HecRoute {
    /// Source id this applies to. Required.
    pub source: String,
    /// Stream within it; all streams when absent.
    #[serde(default)]
    pub stream: Option<String>,
    /// `index`.
    #[serde(default)]
    pub index: Option<String>,
    /// `sourcetype`.
    #[serde(default)]
    pub sourcetype: Option<String>,
    /// `host`.
    #[serde(default)]
    pub host: Option<String>,
    /// `source` (the Splunk field).
    #[serde(default)]
    pub source_name: Option<String>,
}

/// `[sinks.<name>]` with `type = "splunk_hec"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplunkHecSettings {
    /// HEC base URL, e.g. `https://splunk.example.com:8088`. Required.
    pub url: String,
    /// HEC token inline; prefer `token_file` or the environment.
    #[serde(default)]
    pub token: Option<Secret>,
    /// File holding the token; relative paths are read from `$CREDENTIALS_DIRECTORY`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Default `index`. Default: the token's default index.
    #[serde(default)]
    pub index: Option<String>,
    /// Default `host`. Default: this machine's host name.
    #[serde(default)]
    pub host: Option<String>,
    /// Per source and stream overrides of index, sourcetype, host and source. Default none.
    #[serde(default)]
    pub routes: Vec<HecRoute>,
    /// Compress request bodies with gzip. Default true.
    #[serde(default = "super::yes")]
    pub gzip: bool,
    /// Largest request body before compression, in bytes. Default 1000000.
    #[serde(default = "one_mb")]
    pub max_request_bytes: usize,
    /// Records per delivery (split into requests by `max_request_bytes`). Default 1000.
    #[serde(default = "thousand")]
    pub batch_size: usize,
    /// How long a batch smaller than `batch_size` waits for more records, in seconds. Default 1.
    #[serde(default = "one")]
    pub linger_secs: f64,
    /// Wait for indexer acknowledgement before a batch counts as delivered. Default false.
    #[serde(default)]
    pub ack: bool,
    /// How long to wait for acks before sending the unacknowledged requests again (or, once
    /// `ack_resends` is used up, counting them delivered on their code 0), in seconds. Default 120.
    #[serde(default = "two_minutes")]
    pub ack_timeout_secs: f64,
    /// How many times in a row requests whose acks did not come are sent again before the sink
    /// counts them delivered on HTTP 200 code 0 alone and warns loudly that acks are not arriving
    /// (behind a load balancer without sticky sessions they never do). Default 1: one re-send
    /// recovers a batch an indexer really lost, and bounds the duplicates to one copy.
    #[serde(default = "one_resend")]
    pub ack_resends: u32,
    /// Pause between ack queries, in seconds. Default 2.
    #[serde(default = "two")]
    pub ack_poll_secs: f64,
    /// PEM bundle of CAs to trust (HEC ships a self-signed certificate). Default: system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Verify the server certificate. Default true; false logs a warning at every start.
    #[serde(default = "super::yes")]
    pub tls_verify: bool,
    /// Request timeout, in seconds. Default 30.
    #[serde(default = "thirty")]
    pub timeout_secs: f64,
}

impl SplunkHecSettings {
    /// Checks the sink at `at` (`sinks.<name>`): request size, routes naming configured sources
    /// (`source_ids`); resolves the token.
    pub fn validate(&mut self, at: &str, source_ids: &[String]) -> Result<(), SettingsError> {
        resolve_secret(at, "token", &mut self.token, &mut self.token_file)?;
        if self.max_request_bytes < 1024 {
            return Err(invalid(
                &format!("{at}.max_request_bytes"),
                "must be at least 1024",
            ));
        }
        if let Some(route) = self.routes.iter().find(|r| !source_ids.contains(&r.source)) {
            return Err(invalid(
                &format!("{at}.routes"),
                format!("no source named `{}`", route.source),
            ));
        }
        Ok(())
    }

    /// The resolved HEC token of the sink at `at`.
    pub fn credentials(&self, at: &str) -> Result<Secret, SetupError> {
        secret::resolved(at, "token", self.token.as_ref())
    }
}

fn one_mb() -> usize {
    1_000_000
}
fn thousand() -> usize {
    1000
}
fn two_minutes() -> f64 {
    120.0
}
fn one_resend() -> u32 {
    1
}
fn one() -> f64 {
    1.0
}
fn two() -> f64 {
    2.0
}
fn thirty() -> f64 {
    30.0
}
