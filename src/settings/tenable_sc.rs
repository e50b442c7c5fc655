//! `[sources.<id>]` with `type = "tenable_sc"`: Tenable Security Center vulnerabilities.

use std::path::PathBuf;

use serde::Deserialize;

use super::{
    client_cert_paired, in_range, login_name, non_empty, required, resolve_secret, secret, Secret,
    SettingsError, SetupError,
};

/// How to authenticate to Tenable.sc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenableAuth {
    /// `X-APIKey: accessKey=…; secretKey=…` (SC 5.13+), no session.
    ApiKeys,
    /// Legacy session: `POST /rest/token` with username and password, then the `X-SecurityCenter`
    /// header and the `TNS_SESSIONID` cookie; logged in again on expiry, logged out on stop.
    Session,
}

/// Which findings a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenableStream {
    /// `sourceType = cumulative`: open findings, windowed on `lastSeen`. Stream name `vulnerabilities`.
    Cumulative,
    /// `sourceType = patched`: mitigated findings, windowed on `lastMitigated`. Stream name `mitigated`.
    Patched,
}

/// One analysis filter, as `/rest/analysis` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenableFilter {
    /// Filter name, e.g. `severity`, `repositoryIDs`, `exploitAvailable`.
    #[serde(rename = "filterName")]
    pub filter_name: String,
    /// `=`, `!=`, `>=`, ...
    pub operator: String,
    /// The value, as Tenable.sc writes it (e.g. `"3,4"`).
    pub value: String,
}

/// `[sources.<id>]` with `type = "tenable_sc"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenableScSettings {
    /// Whether this source runs. Default true.
    #[serde(default = "super::yes")]
    pub enabled: bool,
    /// Poll interval once caught up, in seconds. Default 3600.
    #[serde(default = "hour")]
    pub interval_secs: f64,
    /// Sink names to deliver to. Required.
    pub sinks: Vec<String>,
    /// Server URL, e.g. `https://sc.example.com` (`/rest` is appended). Required.
    pub url: String,
    /// `api_keys` (default) or `session`.
    #[serde(default = "api_keys")]
    pub auth: TenableAuth,
    /// API access key (`api_keys`).
    #[serde(default)]
    pub access_key: Option<String>,
    /// API secret key inline (`api_keys`); prefer `secret_key_file`.
    #[serde(default)]
    pub secret_key: Option<Secret>,
    /// File holding the API secret key; relative paths are read from `$CREDENTIALS_DIRECTORY`.
    #[serde(default)]
    pub secret_key_file: Option<PathBuf>,
    /// Username (`session`).
    #[serde(default)]
    pub username: Option<String>,
    /// Password inline (`session`); prefer `password_file`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// File holding the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM bundle of CAs to trust (these servers usually have self-signed certificates). Default:
    /// the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for two-way TLS (with `client_key_file`).
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// Verify the server's certificate. Turning it off logs a warning at every start. Default true.
    #[serde(default = "super::yes")]
    pub tls_verify: bool,
    /// Streams: `cumulative` (open findings) and/or `patched` (mitigated). Default both.
    #[serde(default = "both_streams")]
    pub streams: Vec<TenableStream>,
    /// Analysis tool. Default `vulndetails` (one row per finding).
    #[serde(default = "vulndetails")]
    pub tool: String,
    /// A saved query whose filters to use (`query.id`), instead of or besides `filters`.
    #[serde(default)]
    pub query_id: Option<u64>,
    /// Extra analysis filters, ANDed with the time window. Default none.
    #[serde(default)]
    pub filters: Vec<TenableFilter>,
    /// Rows per request (`endOffset - startOffset`), 1–10000. Default 1000.
    #[serde(default = "thousand")]
    pub page_size: u32,
    /// Accepted for compatibility, 1–8, default 3, but no longer used: pages are read by keyset,
    /// each query starting where the previous page ended, so they cannot be fetched at once.
    #[serde(default = "three")]
    pub concurrency: u32,
    /// First poll (or after `--reset`) reaches this far back, in days, 1–365. Default 30.
    #[serde(default = "thirty")]
    pub initial_lookback_days: u32,
    /// Each pass starts this many hours before the newest finding the last pass read (on the
    /// server's clock): scan results are imported after the time they carry. Default 6.
    #[serde(default = "six")]
    pub overlap_hours: u32,
    /// Request timeout for analysis queries, in seconds (they are slow). Default 300.
    #[serde(default = "five_minutes")]
    pub timeout_secs: f64,
}

/// How a Tenable.sc source signs in, with its credentials resolved.
#[derive(Debug, Clone)]
pub enum TenableCredentials {
    /// `auth = "api_keys"`.
    ApiKeys {
        /// `access_key`.
        access_key: String,
        /// `secret_key` (resolved).
        secret_key: Secret,
    },
    /// `auth = "session"`.
    Session {
        /// `username`.
        username: String,
        /// `password` (resolved).
        password: Secret,
    },
}

impl TenableScSettings {
    /// Checks the auth mode's keys, ranges and TLS files at `at` (`sources.<id>`), and resolves
    /// the secret the auth mode needs.
    pub fn validate(&mut self, at: &str) -> Result<(), SettingsError> {
        match self.auth {
            TenableAuth::ApiKeys => {
                required(
                    at,
                    "access_key",
                    self.access_key.as_deref(),
                    "auth = \"api_keys\" needs it",
                )?;
                resolve_secret(
                    at,
                    "secret_key",
                    &mut self.secret_key,
                    &mut self.secret_key_file,
                )?;
            }
            TenableAuth::Session => {
                required(
                    at,
                    "username",
                    self.username.as_deref(),
                    "auth = \"session\" needs it",
                )?;
                resolve_secret(at, "password", &mut self.password, &mut self.password_file)?;
            }
        }
        in_range(at, "page_size", self.page_size, 1, 10_000)?;
        in_range(at, "concurrency", self.concurrency, 1, 8)?;
        in_range(
            at,
            "initial_lookback_days",
            self.initial_lookback_days,
            1,
            365,
        )?;
        in_range(at, "overlap_hours", self.overlap_hours, 0, 720)?;
        client_cert_paired(at, &self.client_cert_file, &self.client_key_file)?;
        non_empty(at, "streams", &self.streams)
    }

    /// The credentials of the auth mode, resolved, of the source at `at`.
    pub fn credentials(&self, at: &str) -> Result<TenableCredentials, SetupError> {
        Ok(match self.auth {
            TenableAuth::ApiKeys => TenableCredentials::ApiKeys {
                access_key: login_name(at, "access_key", &self.access_key)?,
                secret_key: secret::resolved(at, "secret_key", self.secret_key.as_ref())?,
            },
            TenableAuth::Session => TenableCredentials::Session {
                username: login_name(at, "username", &self.username)?,
                password: secret::resolved(at, "password", self.password.as_ref())?,
            },
        })
    }
}

fn hour() -> f64 {
    3600.0
}
fn api_keys() -> TenableAuth {
    TenableAuth::ApiKeys
}
fn both_streams() -> Vec<TenableStream> {
    vec![TenableStream::Cumulative, TenableStream::Patched]
}
fn vulndetails() -> String {
    "vulndetails".into()
}
fn thousand() -> u32 {
    1000
}
fn three() -> u32 {
    3
}
fn thirty() -> u32 {
    30
}
fn six() -> u32 {
    6
}
fn five_minutes() -> f64 {
    300.0
}
