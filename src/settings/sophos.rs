//! `[sources.<id>]` with `type = "sophos"`: Sophos Central SIEM events and alerts.

use std::path::PathBuf;

use serde::Deserialize;

use super::{in_range, non_empty, resolve_secret, secret, Secret, SettingsError, SetupError};

/// The SIEM streams Sophos Central offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SophosStream {
    /// `/siem/v1/events`
    Events,
    /// `/siem/v1/alerts`
    Alerts,
}

/// `[sources.<id>]` with `type = "sophos"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SophosSettings {
    /// Whether this source runs. Default true.
    #[serde(default = "super::yes")]
    pub enabled: bool,
    /// Poll interval once caught up, in seconds. Default 60.
    #[serde(default = "super::sixty")]
    pub interval_secs: f64,
    /// Sink names to deliver to. Required.
    pub sinks: Vec<String>,
    /// API client id (tenant, partner or organization credential). Required.
    pub client_id: String,
    /// API client secret inline; prefer `client_secret_file` or the environment.
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// File holding the client secret; relative paths are read from `$CREDENTIALS_DIRECTORY`.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// OAuth2 token endpoint. Default `https://id.sophos.com/api/v2/oauth2/token`.
    #[serde(default = "sophos_token_url")]
    pub token_url: String,
    /// Global API host (whoami, tenant listing). Default `https://api.central.sophos.com`.
    #[serde(default = "sophos_api_url")]
    pub api_url: String,
    /// Streams to poll. Default both: `["events", "alerts"]`.
    #[serde(default = "sophos_streams")]
    pub streams: Vec<SophosStream>,
    /// With partner or organization credentials: poll only these tenant ids. Default: every tenant.
    #[serde(default)]
    pub tenant_ids: Vec<String>,
    /// How far back the first poll (or a poll after `--reset`) starts, in hours; at most 24 (the
    /// API's horizon). Default 12.
    #[serde(default = "twelve")]
    pub initial_lookback_hours: u32,
    /// Collection delay sent as `from_date_offset_minutes`, in minutes: protects against endpoints
    /// whose clocks run ahead. Default 0.
    #[serde(default)]
    pub collection_delay_minutes: u32,
    /// Event types the API should leave out (`exclude_types`). Default none.
    #[serde(default)]
    pub exclude_types: Vec<String>,
    /// Records per request (`limit`), 1–1000. Default 1000.
    #[serde(default = "thousand")]
    pub page_size: u32,
}
impl SophosSettings {
    /// Checks the ranges at `at` (`sources.<id>`) and resolves the client secret.
    pub fn validate(&mut self, at: &str) -> Result<(), SettingsError> {
        resolve_secret(
            at,
            "client_secret",
            &mut self.client_secret,
            &mut self.client_secret_file,
        )?;
        in_range(at, "page_size", self.page_size, 1, 1000)?;
        in_range(
            at,
            "initial_lookback_hours",
            self.initial_lookback_hours,
            1,
            24,
        )?;
        non_empty(at, "streams", &self.streams)
    }

    /// The resolved client secret of the source at `at`.
    pub fn credentials(&self, at: &str) -> Result<Secret, SetupError> {
        secret::resolved(at, "client_secret", self.client_secret.as_ref())
    }
}

fn sophos_token_url() -> String {
    "https://id.sophos.com/api/v2/oauth2/token".into()
}
fn sophos_api_url() -> String {
    "https://api.central.sophos.com".into()
}
fn sophos_streams() -> Vec<SophosStream> {
    vec![SophosStream::Events, SophosStream::Alerts]
}
fn twelve() -> u32 {
    12
}
fn thousand() -> u32 {
    1000
}
