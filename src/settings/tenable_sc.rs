//! `[sources.<id>]` with `type = "tenable_sc"`: Tenable Security Center vulnerabilities.

use std::path::PathBuf;

use serde::Deserialize;

use super::Secret;

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
