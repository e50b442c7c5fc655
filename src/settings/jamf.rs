//! `[sources.<id>]` with `type = "jamf"`: Jamf Pro (formerly Casper) computer inventory and the
//! fleet views derived from it.

use std::path::PathBuf;

use serde::Deserialize;

use super::{
    in_range, invalid, login_name, non_empty, required, resolve_secret, secret, Secret,
    SettingsError, SetupError,
};

/// How to authenticate to Jamf Pro.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JamfAuth {
    /// API client: OAuth client credentials at `/api/oauth/token` (Jamf Pro 10.49+).
    ApiClient,
    /// User bearer token from `/api/v1/auth/token`, kept alive before it expires.
    User,
    /// HTTP Basic on every Classic API call, for old servers that still allow it (`api = "classic"`).
    Basic,
}

/// Which inventory API to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JamfApi {
    /// `/api/v3/computers-inventory` (current).
    V3,
    /// `/api/v1/computers-inventory` (deprecated 2025-06-30; for old servers).
    V1,
    /// Classic `/JSSResource/computers` and `/JSSResource/computers/id/{id}` (oldest servers).
    Classic,
}

/// Streams a Jamf source can produce. `inventory` is incremental; the others are fleet views
/// derived after each full pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JamfStream {
    /// Every computer each time it reports inventory (dedup on id and report date).
    Inventory,
    /// Per computer: installed applications.
    Applications,
    /// Per computer: browser extensions and plug-ins.
    BrowserExtensions,
    /// Per computer: running services.
    Services,
    /// Per computer: installed patches and available (missing) software updates.
    SoftwareUpdates,
    /// Per computer: virtual machine software, and whether the computer is itself virtual.
    VirtualMachines,
    /// Per computer: make, model, serial, user, IP.
    Assets,
    /// Fleet-wide counters: computers per service, extension, virtual machine product, application.
    FleetCounters,
    /// IP address → user of the computer that last reported from it.
    IpUsers,
}

/// `[sources.<id>]` with `type = "jamf"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JamfSettings {
    /// Whether this source runs. Default true.
    #[serde(default = "super::yes")]
    pub enabled: bool,
    /// Poll interval once caught up, in seconds; fleet views are rebuilt once per interval.
    /// Default 3600.
    #[serde(default = "hour")]
    pub interval_secs: f64,
    /// Sink names to deliver to. Required.
    pub sinks: Vec<String>,
    /// Instance URL, e.g. `https://example.jamfcloud.com`. Required.
    pub url: String,
    /// `api_client` (default), `user` or `basic` (Classic API only).
    #[serde(default = "api_client")]
    pub auth: JamfAuth,
    /// API client id (`api_client`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// API client secret inline (`api_client`); prefer `client_secret_file`.
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// File holding the API client secret; relative paths are read from `$CREDENTIALS_DIRECTORY`.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Username (`user`, `basic`).
    #[serde(default)]
    pub username: Option<String>,
    /// Password inline (`user`, `basic`); prefer `password_file`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// File holding the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Inventory API. Default `v3`.
    #[serde(default = "v3")]
    pub api: JamfApi,
    /// Inventory sections to request (`GENERAL` is always added). Default: what the fleet views
    /// need: `HARDWARE`, `OPERATING_SYSTEM`, `USER_AND_LOCATION`, `APPLICATIONS`, `PLUGINS`,
    /// `SERVICES`, `SOFTWARE_UPDATES`, `PACKAGE_RECEIPTS`.
    #[serde(default = "default_sections")]
    pub sections: Vec<String>,
    /// Computers per request, 1–1000. Default 500.
    #[serde(default = "five_hundred")]
    pub page_size: u32,
    /// Requests in flight to the server at most (Jamf recommends 5). Default 5.
    #[serde(default = "five")]
    pub max_connections: u32,
    /// Streams to produce. Default all of them.
    #[serde(default = "all_streams")]
    pub streams: Vec<JamfStream>,
}

/// Who a Jamf source signs in as, with the secret resolved: the API client id and secret, or the
/// user name and password.
#[derive(Debug, Clone)]
pub struct JamfCredentials {
    /// `client_id` (api_client) or `username` (user, basic).
    pub user: String,
    /// `client_secret` or `password`, resolved.
    pub secret: Secret,
}

impl JamfSettings {
    /// Checks the auth mode's keys and ranges at `at` (`sources.<id>`), and resolves the secret
    /// the auth mode needs.
    pub fn validate(&mut self, at: &str) -> Result<(), SettingsError> {
        match self.auth {
            JamfAuth::ApiClient => {
                required(
                    at,
                    "client_id",
                    self.client_id.as_deref(),
                    "auth = \"api_client\" needs it",
                )?;
                resolve_secret(
                    at,
                    "client_secret",
                    &mut self.client_secret,
                    &mut self.client_secret_file,
                )?;
            }
            JamfAuth::User | JamfAuth::Basic => {
                required(
                    at,
                    "username",
                    self.username.as_deref(),
                    "auth = \"user\" or \"basic\" needs it",
                )?;
                resolve_secret(at, "password", &mut self.password, &mut self.password_file)?;
            }
        }
        if self.auth == JamfAuth::Basic && self.api != JamfApi::Classic {
            return Err(invalid(
                &format!("{at}.auth"),
                "basic auth only works on the Classic API: set api = \"classic\"",
            ));
        }
        in_range(at, "page_size", self.page_size, 1, 1000)?;
        in_range(at, "max_connections", self.max_connections, 1, 20)?;
        non_empty(at, "streams", &self.streams)
    }

    /// The credentials of the auth mode, resolved, of the source at `at`.
    pub fn credentials(&self, at: &str) -> Result<JamfCredentials, SetupError> {
        let (user_key, user, secret_key, secret) = match self.auth {
            JamfAuth::ApiClient => (
                "client_id",
                &self.client_id,
                "client_secret",
                self.client_secret.as_ref(),
            ),
            JamfAuth::User | JamfAuth::Basic => (
                "username",
                &self.username,
                "password",
                self.password.as_ref(),
            ),
        };
        Ok(JamfCredentials {
            user: login_name(at, user_key, user)?,
            secret: secret::resolved(at, secret_key, secret)?,
        })
    }
}

fn hour() -> f64 {
    3600.0
}
fn api_client() -> JamfAuth {
    JamfAuth::ApiClient
}
fn v3() -> JamfApi {
    JamfApi::V3
}
fn five_hundred() -> u32 {
    500
}
fn five() -> u32 {
    5
}
fn default_sections() -> Vec<String> {
    [
        "HARDWARE",
        "OPERATING_SYSTEM",
        "USER_AND_LOCATION",
        "APPLICATIONS",
        "PLUGINS",
        "SERVICES",
        "SOFTWARE_UPDATES",
        "PACKAGE_RECEIPTS",
    ]
    .map(str::to_string)
    .to_vec()
}
fn all_streams() -> Vec<JamfStream> {
    vec![
        JamfStream::Inventory,
        JamfStream::Applications,
        JamfStream::BrowserExtensions,
        JamfStream::Services,
        JamfStream::SoftwareUpdates,
        JamfStream::VirtualMachines,
        JamfStream::Assets,
        JamfStream::FleetCounters,
        JamfStream::IpUsers,
    ]
}
