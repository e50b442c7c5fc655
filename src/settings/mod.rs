//! Configuration: the serde structs, their layering and their validation.
//!
//! Layers, lowest first: `config/default.toml` (built into the binary), the file given with
//! `--config`, then `SECRELAY__SECTION__KEY` environment variables (`__` separates levels, e.g.
//! `SECRELAY__SOURCES__SOPHOS_EU__CLIENT_SECRET`). Owns: turning those into a validated
//! [`Settings`] with every secret resolved. Must not: open connections or files other than secret
//! files. Invariant: an unknown key is an error naming its full path; a secret never reaches `Debug`,
//! logs or errors.

mod jamf;
mod secret;
mod splunk_hec;
mod syslog;
mod tenable_sc;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use jamf::{JamfApi, JamfAuth, JamfSettings, JamfStream};
pub use secret::Secret;
pub use splunk_hec::{HecRoute, SplunkHecSettings};
pub use syslog::{SyslogFormat, SyslogFraming, SyslogPayload, SyslogSinkSettings, SyslogTransport};
pub use tenable_sc::{TenableAuth, TenableFilter, TenableScSettings, TenableStream};

/// The built-in lowest layer: every top-level key with its default.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Configuration problems. All of them stop the program: fix the named key and start again.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The configuration file could not be read or parsed.
    #[error("cannot read configuration {path}: {reason}")]
    File {
        /// The file given with `--config`.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A key is unknown, has the wrong type or is missing.
    #[error("configuration key `{key}`: {reason}")]
    Invalid {
        /// Full key path, e.g. `sources.sophos_eu.interval_secs`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Everything secrelay is configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The state database.
    pub store: StoreSettings,
    /// The outbox log.
    pub outbox: OutboxSettings,
    /// Polling and retry timing.
    pub scheduler: SchedulerSettings,
    /// One-shot `backfill` limits.
    pub backfill: BackfillSettings,
    /// Logging.
    pub log: LogSettings,
    /// HTTP client used by every source.
    pub http: HttpSettings,
    /// Sources keyed by id, e.g. `[sources.sophos_eu]`. Default: none.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceSettings>,
    /// Sinks keyed by name, e.g. `[sinks.archive]`. Default: none.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkSettings>,
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// Path of the SQLite state database; created with mode 0600. Default `/var/lib/secrelay/state.db`.
    pub path: PathBuf,
    /// Shortest time seen ids are kept for dedup, in hours. Default 168 (7 days).
    pub seen_retention_hours: u64,
}

/// `[outbox]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxSettings {
    /// Back-pressure cap in bytes of records waiting for sinks, shared equally by the sinks: when
    /// one sink's backlog reaches its share, the sources routed to it pause (nothing is dropped);
    /// sources routed only to other sinks go on. Default 268435456 (256 MiB).
    pub max_bytes: u64,
}

/// `[scheduler]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSettings {
    /// Upper bound of the random delay added to each poll interval, in seconds. Default 5.
    pub jitter_secs: f64,
    /// First pause after a failure, in seconds; doubles per further failure. Default 1.
    pub backoff_initial_secs: f64,
    /// Longest pause after failures, in seconds. Default 300.
    pub backoff_max_secs: f64,
    /// How long a stop (SIGTERM/SIGINT) may spend flushing sinks, in seconds. Default 30.
    pub shutdown_grace_secs: f64,
}

/// `[backfill]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillSettings {
    /// How long `backfill` waits for sinks to take the whole outbox, in seconds. Default 600.
    pub drain_timeout_secs: f64,
    /// Consecutive failed polls of one partition after which `backfill` gives it up. Default 8.
    pub max_poll_failures: u32,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// Filter in `tracing` syntax, e.g. `info` or `secrelay=debug`. `RUST_LOG` overrides. Default `info`.
    pub level: String,
}

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Whole-request timeout, in seconds. Default 60.
    pub timeout_secs: f64,
    /// TCP+TLS connect timeout, in seconds. Default 10.
    pub connect_timeout_secs: f64,
    /// Largest vendor response body read, in bytes; a larger one fails the poll (retried, logged)
    /// rather than exhausting memory. At least 1 MiB. Default 268435456 (256 MiB).
    pub max_response_bytes: u64,
}

/// One `[sources.<id>]` table, selected by its `type` key.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceSettings {
    /// `type = "sophos"`: Sophos Central SIEM events and alerts.
    Sophos(SophosSettings),
    /// `type = "code42"`: Code42 / Incydr file events, alerts and sessions.
    Code42(Code42Settings),
    /// `type = "tenable_sc"`: Tenable Security Center vulnerabilities.
    TenableSc(TenableScSettings),
    /// `type = "jamf"`: Jamf Pro computer inventory and fleet views.
    Jamf(JamfSettings),
}

impl SourceSettings {
    /// Sink names this source's events are routed to.
    pub fn sinks(&self) -> &[String] {
        match self {
            SourceSettings::Sophos(s) => &s.sinks,
            SourceSettings::Code42(s) => &s.sinks,
            SourceSettings::TenableSc(s) => &s.sinks,
            SourceSettings::Jamf(s) => &s.sinks,
        }
    }

    /// Poll interval once caught up, in seconds.
    pub fn interval_secs(&self) -> f64 {
        match self {
            SourceSettings::Sophos(s) => s.interval_secs,
            SourceSettings::Code42(s) => s.interval_secs,
            SourceSettings::TenableSc(s) => s.interval_secs,
            SourceSettings::Jamf(s) => s.interval_secs,
        }
    }

    /// Whether the source runs at all.
    pub fn enabled(&self) -> bool {
        match self {
            SourceSettings::Sophos(s) => s.enabled,
            SourceSettings::Code42(s) => s.enabled,
            SourceSettings::TenableSc(s) => s.enabled,
            SourceSettings::Jamf(s) => s.enabled,
        }
    }

    /// How far back this source may re-fetch, in hours: seen ids must outlive it.
    pub fn lookback_hours(&self) -> u64 {
        match self {
            SourceSettings::Sophos(_) => 24,
            SourceSettings::Code42(s) => {
                let lookback = u64::from(s.initial_lookback_hours.max(s.session_window_hours));
                lookback + u64::from(s.overlap_minutes).div_ceil(60)
            }
            SourceSettings::TenableSc(s) => {
                u64::from(s.initial_lookback_days) * 24 + u64::from(s.overlap_hours)
            }
            // Inventory is re-read from the stored report date; a day covers any boundary repeat.
            SourceSettings::Jamf(_) => 24,
        }
    }
}

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
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Poll interval once caught up, in seconds. Default 60.
    #[serde(default = "sixty")]
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

/// How a Code42 source authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code42Auth {
    /// Incydr API client: `POST {api_url}/v1/oauth` with the client id and secret (current).
    ApiClient,
    /// Legacy console API client: `POST {console_url}/api/v3/oauth/token` (client credentials).
    LegacyApiClient,
    /// Legacy console user login: `GET {console_url}/api/v3/auth/jwt` (`client_id` is the username,
    /// `client_secret` the password).
    LegacyUser,
}

/// The Code42 / Incydr streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code42Stream {
    /// File events (`/v2/file-events`, or the legacy v1 `fileevent` endpoint).
    FileEvents,
    /// Alerts with their observations (`/v1/alerts/query-alerts` + `query-details`; deprecated by
    /// Code42 in favour of sessions).
    Alerts,
    /// Sessions (`/v1/sessions`); every change of a session is forwarded once.
    Sessions,
}

/// Which file-event API to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileEventsApi {
    /// `POST /v2/file-events`, nested records (current).
    V2,
    /// `POST /forensic-search/queryservice/api/v1/fileevent`, flat records (legacy, deprecated).
    V1,
}

/// One file-event query filter: `{term, operator, value}` as the Code42 API takes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Code42Filter {
    /// Search term, e.g. `file.category` or `event.action`.
    pub term: String,
    /// `IS`, `IS_NOT`, `IS_ANY`, `EXISTS`, ...
    pub operator: String,
    /// The value (omit for `EXISTS`/`DOES_NOT_EXIST`).
    #[serde(default)]
    pub value: Option<String>,
}

/// `[sources.<id>]` with `type = "code42"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Code42Settings {
    /// Whether this source runs. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Poll interval once caught up, in seconds. Default 60.
    #[serde(default = "sixty")]
    pub interval_secs: f64,
    /// Sink names to deliver to. Required.
    pub sinks: Vec<String>,
    /// How to authenticate. Default `api_client`.
    #[serde(default = "code42_auth")]
    pub auth: Code42Auth,
    /// Incydr API gateway. Default `https://api.us.code42.com`.
    #[serde(default = "code42_api_url")]
    pub api_url: String,
    /// Legacy console, e.g. `https://console.us.code42.com`; needed by the legacy auth modes.
    #[serde(default)]
    pub console_url: Option<String>,
    /// API client id (for `legacy_user`, the username). Required.
    pub client_id: String,
    /// API client secret (for `legacy_user`, the password) inline; prefer `client_secret_file`.
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// File holding the secret; relative paths are read from `$CREDENTIALS_DIRECTORY`.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Streams to poll. Default all three: `["file_events", "alerts", "sessions"]`.
    #[serde(default = "code42_streams")]
    pub streams: Vec<Code42Stream>,
    /// File-event API. Default `v2`.
    #[serde(default = "file_events_v2")]
    pub file_events_api: FileEventsApi,
    /// How far each file-event window reaches back before the previous one ended, in minutes:
    /// Code42 says events can take this long to become searchable. Default 15.
    #[serde(default = "fifteen")]
    pub overlap_minutes: u32,
    /// File events per request (`pgSize`), 1–10000. Default 10000.
    #[serde(default = "ten_thousand")]
    pub page_size: u32,
    /// Alerts per request, 1–500. Default 500.
    #[serde(default = "five_hundred")]
    pub alert_page_size: u32,
    /// Sessions per request, 1–50. Default 50.
    #[serde(default = "fifty")]
    pub session_page_size: u32,
    /// First poll (or after `--reset`) of file events and alerts starts this far back, in hours;
    /// at most 2160 (the 90 days Code42 searches). Default 24.
    #[serde(default = "twenty_four")]
    pub initial_lookback_hours: u32,
    /// Sessions that began up to this many hours ago are swept for changes on every pass; one still
    /// open when it leaves this window is re-read by id until it is closed (at most 90 days).
    /// Default 168.
    #[serde(default = "one_sixty_eight")]
    pub session_window_hours: u32,
    /// Extra file-event filters, ANDed with the time window. A change is noticed through the cursor
    /// and restarts the window at the stored time. Default none.
    #[serde(default)]
    pub file_event_filters: Vec<Code42Filter>,
}

/// One `[sinks.<name>]` table, selected by its `type` key.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkSettings {
    /// `type = "file"`: newline-delimited JSON files.
    File(FileSinkSettings),
    /// `type = "syslog"`: CEF or JSON over syslog (UDP, TCP, TLS).
    Syslog(SyslogSinkSettings),
    /// `type = "splunk_hec"`: Splunk HTTP Event Collector.
    SplunkHec(SplunkHecSettings),
}

impl SinkSettings {
    /// Records per delivery batch.
    pub fn batch_size(&self) -> usize {
        match self {
            SinkSettings::File(f) => f.batch_size,
            SinkSettings::Syslog(s) => s.batch_size,
            SinkSettings::SplunkHec(s) => s.batch_size,
        }
    }

    /// How long a short batch may wait for more records.
    pub fn linger(&self) -> std::time::Duration {
        match self {
            SinkSettings::SplunkHec(s) => std::time::Duration::from_secs_f64(s.linger_secs),
            SinkSettings::File(_) | SinkSettings::Syslog(_) => std::time::Duration::ZERO,
        }
    }
}

/// `[sinks.<name>]` with `type = "file"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkSettings {
    /// The active NDJSON file; rotated files sit beside it. Required.
    pub path: PathBuf,
    /// Rotate once the active file reaches this size, in bytes. Default 104857600 (100 MiB).
    #[serde(default = "hundred_mib")]
    pub rotate_bytes: u64,
    /// Rotated files to keep beside the active one; the oldest are deleted. Default 7.
    #[serde(default = "seven")]
    pub keep_files: usize,
    /// Records per write+fsync. Default 1000.
    #[serde(default = "thousand_usize")]
    pub batch_size: usize,
}

pub(super) fn yes() -> bool {
    true
}
fn sixty() -> f64 {
    60.0
}
fn twelve() -> u32 {
    12
}
fn seven() -> usize {
    7
}
fn thousand() -> u32 {
    1000
}
fn thousand_usize() -> usize {
    1000
}
fn hundred_mib() -> u64 {
    100 * 1024 * 1024
}
fn fifteen() -> u32 {
    15
}
fn fifty() -> u32 {
    50
}
fn five_hundred() -> u32 {
    500
}
fn ten_thousand() -> u32 {
    10_000
}
fn twenty_four() -> u32 {
    24
}
fn one_sixty_eight() -> u32 {
    168
}
fn code42_auth() -> Code42Auth {
    Code42Auth::ApiClient
}
fn code42_api_url() -> String {
    "https://api.us.code42.com".into()
}
fn code42_streams() -> Vec<Code42Stream> {
    vec![
        Code42Stream::FileEvents,
        Code42Stream::Alerts,
        Code42Stream::Sessions,
    ]
}
fn file_events_v2() -> FileEventsApi {
    FileEventsApi::V2
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

impl Settings {
    /// Loads the layers (built-in defaults, `file`, environment), checks every key and resolves secrets.
    pub fn load(file: Option<&Path>) -> Result<Settings, SettingsError> {
        Self::load_with_env(file, None)
    }

    /// [`Settings::load`] with `env` standing in for the process environment when given (tests).
    ///
    /// Environment values stay text until the key they set is read: a number or flag is parsed
    /// for a numeric or boolean key, and a secret such as `007` stays `007`.
    pub fn load_with_env(
        file: Option<&Path>,
        env: Option<HashMap<String, String>>,
    ) -> Result<Settings, SettingsError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(SettingsError::File {
                    path: path.to_path_buf(),
                    reason: "no such file".into(),
                });
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        // Values that read back the same as a number or flag are typed (`50`, `0.5`, `true`); any
        // other stays text, so `007` or `1e3` given as a secret is not turned into `7` or `1000`.
        let vars: HashMap<String, String> = env.unwrap_or_else(|| {
            std::env::vars()
                .filter(|(k, _)| k.starts_with("SECRELAY__"))
                .collect()
        });
        let (typed, text): (HashMap<_, _>, HashMap<_, _>) =
            vars.into_iter().partition(|(_, v)| reads_back_typed(v));
        for (vars, parse) in [(typed, true), (text, false)] {
            builder = builder.add_source(
                config::Environment::with_prefix("SECRELAY")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(parse)
                    .source(Some(vars)),
            );
        }
        let layered = builder.build().map_err(|e| SettingsError::File {
            path: file.map(Path::to_path_buf).unwrap_or_default(),
            reason: e.to_string(),
        })?;
        let mut settings: Settings = serde_path_to_error::deserialize(layered).map_err(|e| {
            let key = e.path().to_string();
            SettingsError::Invalid {
                key: if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                reason: e.into_inner().to_string(),
            }
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Parses TOML text over the built-in defaults, without files or environment. For tests and the demo.
    pub fn from_toml(text: &str) -> Result<Settings, SettingsError> {
        let layered = config::Config::builder()
            .add_source(config::File::from_str(
                DEFAULT_TOML,
                config::FileFormat::Toml,
            ))
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .map_err(|e| SettingsError::File {
                path: PathBuf::from("(inline)"),
                reason: e.to_string(),
            })?;
        let mut settings: Settings =
            serde_path_to_error::deserialize(layered).map_err(|e| SettingsError::Invalid {
                key: e.path().to_string(),
                reason: e.into_inner().to_string(),
            })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Cross-key checks, and secrets resolved into their inline slot.
    fn validate(&mut self) -> Result<(), SettingsError> {
        self.validate_seconds()?;
        let sink_names: Vec<String> = self.sinks.keys().cloned().collect();
        for (id, source) in &mut self.sources {
            let at = format!("sources.{id}");
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(invalid(&at, "source ids use letters, digits, `_` and `-`"));
            }
            // A source with no sink would fill the outbox with rows nothing ever takes (and
            // that are never pruned): say so rather than accept it.
            if source.sinks().is_empty() {
                return Err(invalid(
                    &format!("{at}.sinks"),
                    format!("routes to no sink; name at least one (defined: {sink_names:?})"),
                ));
            }
            for sink in source.sinks() {
                if !sink_names.contains(sink) {
                    return Err(invalid(
                        &format!("{at}.sinks"),
                        format!("no sink named `{sink}` (defined: {sink_names:?})"),
                    ));
                }
            }
            match source {
                SourceSettings::Sophos(s) => {
                    resolve_secret(
                        &at,
                        "client_secret",
                        &mut s.client_secret,
                        &mut s.client_secret_file,
                    )?;
                    in_range(&at, "page_size", s.page_size, 1, 1000)?;
                    in_range(
                        &at,
                        "initial_lookback_hours",
                        s.initial_lookback_hours,
                        1,
                        24,
                    )?;
                    non_empty(&at, "streams", &s.streams)?;
                }
                SourceSettings::Code42(s) => {
                    resolve_secret(
                        &at,
                        "client_secret",
                        &mut s.client_secret,
                        &mut s.client_secret_file,
                    )?;
                    in_range(&at, "page_size", s.page_size, 1, 10_000)?;
                    in_range(&at, "alert_page_size", s.alert_page_size, 1, 500)?;
                    in_range(&at, "session_page_size", s.session_page_size, 1, 50)?;
                    in_range(
                        &at,
                        "initial_lookback_hours",
                        s.initial_lookback_hours,
                        1,
                        2160,
                    )?;
                    in_range(&at, "session_window_hours", s.session_window_hours, 1, 2160)?;
                    if s.auth != Code42Auth::ApiClient
                        && s.streams.contains(&Code42Stream::Sessions)
                    {
                        return Err(invalid(
                            &format!("{at}.streams"),
                            "sessions are only served by the Incydr API gateway: use auth = \"api_client\"",
                        ));
                    }
                    if s.auth == Code42Auth::ApiClient && s.file_events_api == FileEventsApi::V1 {
                        return Err(invalid(
                            &format!("{at}.file_events_api"),
                            "the v1 file-event API is only on legacy consoles: use v2 with api_client",
                        ));
                    }
                    if s.auth != Code42Auth::ApiClient {
                        required(
                            &at,
                            "console_url",
                            s.console_url.as_deref(),
                            "the legacy auth modes log in at the console",
                        )?;
                    }
                    non_empty(&at, "streams", &s.streams)?;
                }
                SourceSettings::TenableSc(s) => {
                    match s.auth {
                        TenableAuth::ApiKeys => {
                            required(
                                &at,
                                "access_key",
                                s.access_key.as_deref(),
                                "auth = \"api_keys\" needs it",
                            )?;
                            resolve_secret(
                                &at,
                                "secret_key",
                                &mut s.secret_key,
                                &mut s.secret_key_file,
                            )?;
                        }
                        TenableAuth::Session => {
                            required(
                                &at,
                                "username",
                                s.username.as_deref(),
                                "auth = \"session\" needs it",
                            )?;
                            resolve_secret(&at, "password", &mut s.password, &mut s.password_file)?;
                        }
                    }
                    in_range(&at, "page_size", s.page_size, 1, 10_000)?;
                    in_range(&at, "concurrency", s.concurrency, 1, 8)?;
                    in_range(
                        &at,
                        "initial_lookback_days",
                        s.initial_lookback_days,
                        1,
                        365,
                    )?;
                    in_range(&at, "overlap_hours", s.overlap_hours, 0, 720)?;
                    if s.client_cert_file.is_some() != s.client_key_file.is_some() {
                        return Err(invalid(
                            &format!("{at}.client_cert_file"),
                            "two-way TLS needs both client_cert_file and client_key_file",
                        ));
                    }
                    non_empty(&at, "streams", &s.streams)?;
                }
                SourceSettings::Jamf(s) => {
                    match s.auth {
                        JamfAuth::ApiClient => {
                            required(
                                &at,
                                "client_id",
                                s.client_id.as_deref(),
                                "auth = \"api_client\" needs it",
                            )?;
                            resolve_secret(
                                &at,
                                "client_secret",
                                &mut s.client_secret,
                                &mut s.client_secret_file,
                            )?;
                        }
                        JamfAuth::User | JamfAuth::Basic => {
                            required(
                                &at,
                                "username",
                                s.username.as_deref(),
                                "auth = \"user\" or \"basic\" needs it",
                            )?;
                            resolve_secret(&at, "password", &mut s.password, &mut s.password_file)?;
                        }
                    }
                    if s.auth == JamfAuth::Basic && s.api != JamfApi::Classic {
                        return Err(invalid(
                            &format!("{at}.auth"),
                            "basic auth only works on the Classic API: set api = \"classic\"",
                        ));
                    }
                    in_range(&at, "page_size", s.page_size, 1, 1000)?;
                    in_range(&at, "max_connections", s.max_connections, 1, 20)?;
                    non_empty(&at, "streams", &s.streams)?;
                }
            }
        }
        let source_ids: Vec<String> = self.sources.keys().cloned().collect();
        for (name, sink) in &mut self.sinks {
            let at = format!("sinks.{name}");
            if sink.batch_size() == 0 {
                return Err(invalid(&format!("{at}.batch_size"), "must be at least 1"));
            }
            match sink {
                SinkSettings::File(f) => {
                    if f.keep_files == 0 {
                        return Err(invalid(&format!("{at}.keep_files"), "must be at least 1"));
                    }
                }
                SinkSettings::SplunkHec(h) => {
                    resolve_secret(&at, "token", &mut h.token, &mut h.token_file)?;
                    if h.max_request_bytes < 1024 {
                        return Err(invalid(
                            &format!("{at}.max_request_bytes"),
                            "must be at least 1024",
                        ));
                    }
                    if let Some(route) = h.routes.iter().find(|r| !source_ids.contains(&r.source)) {
                        return Err(invalid(
                            &format!("{at}.routes"),
                            format!("no source named `{}`", route.source),
                        ));
                    }
                }
                SinkSettings::Syslog(s) => {
                    if crate::encode::syslog::facility_number(&s.facility).is_none() {
                        return Err(invalid(
                            &format!("{at}.facility"),
                            format!(
                                "unknown facility {:?} (local0-local7, user, daemon, auth, ...)",
                                s.facility
                            ),
                        ));
                    }
                    if s.transport == SyslogTransport::Tls && s.framing == SyslogFraming::Lf {
                        return Err(invalid(
                            &format!("{at}.framing"),
                            "TLS syslog uses octet counting (RFC 5425)",
                        ));
                    }
                    if s.client_cert_file.is_some() != s.client_key_file.is_some() {
                        return Err(invalid(
                            &format!("{at}.client_cert_file"),
                            "a client certificate needs both client_cert_file and client_key_file",
                        ));
                    }
                    if !(64..=65_507).contains(&s.udp_max_bytes) {
                        return Err(invalid(
                            &format!("{at}.udp_max_bytes"),
                            "must be 64 to 65507",
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Every duration: a number of seconds that is finite, not negative, and above zero where zero
    /// means nothing sensible (a zero interval would poll in a hot loop, a zero timeout fail every
    /// request). `Duration::from_secs_f64` panics on a negative or NaN value: none may get that far.
    fn validate_seconds(&self) -> Result<(), SettingsError> {
        let mut checks: Vec<(String, f64, Zero)> = vec![
            (
                "scheduler.jitter_secs".into(),
                self.scheduler.jitter_secs,
                Zero::Allowed,
            ),
            (
                "scheduler.backoff_initial_secs".into(),
                self.scheduler.backoff_initial_secs,
                Zero::Refused,
            ),
            (
                "scheduler.backoff_max_secs".into(),
                self.scheduler.backoff_max_secs,
                Zero::Refused,
            ),
            (
                "scheduler.shutdown_grace_secs".into(),
                self.scheduler.shutdown_grace_secs,
                Zero::Allowed,
            ),
            (
                "backfill.drain_timeout_secs".into(),
                self.backfill.drain_timeout_secs,
                Zero::Allowed,
            ),
            (
                "http.timeout_secs".into(),
                self.http.timeout_secs,
                Zero::Refused,
            ),
            (
                "http.connect_timeout_secs".into(),
                self.http.connect_timeout_secs,
                Zero::Refused,
            ),
        ];
        for (id, source) in &self.sources {
            checks.push((
                format!("sources.{id}.interval_secs"),
                source.interval_secs(),
                Zero::Refused,
            ));
            if let SourceSettings::TenableSc(t) = source {
                checks.push((
                    format!("sources.{id}.timeout_secs"),
                    t.timeout_secs,
                    Zero::Refused,
                ));
            }
        }
        for (name, sink) in &self.sinks {
            let at = format!("sinks.{name}");
            match sink {
                SinkSettings::File(_) => {}
                SinkSettings::Syslog(s) => {
                    checks.push((format!("{at}.timeout_secs"), s.timeout_secs, Zero::Refused));
                    checks.push((
                        format!("{at}.idle_reconnect_secs"),
                        s.idle_reconnect_secs,
                        Zero::Allowed,
                    ));
                }
                SinkSettings::SplunkHec(h) => {
                    checks.push((format!("{at}.linger_secs"), h.linger_secs, Zero::Allowed));
                    checks.push((
                        format!("{at}.ack_timeout_secs"),
                        h.ack_timeout_secs,
                        Zero::Refused,
                    ));
                    checks.push((
                        format!("{at}.ack_poll_secs"),
                        h.ack_poll_secs,
                        Zero::Refused,
                    ));
                    checks.push((format!("{at}.timeout_secs"), h.timeout_secs, Zero::Refused));
                }
            }
        }
        for (key, value, zero) in checks {
            let why = if !value.is_finite() {
                Some("must be a finite number of seconds")
            } else if value < 0.0 {
                Some("must not be negative")
            } else if value == 0.0 && zero == Zero::Refused {
                Some("must be above 0")
            } else if value > MAX_SECONDS {
                Some("must be at most 31536000 (a year)")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(invalid(&key, format!("{why} (got {value})")));
            }
        }
        if self.http.max_response_bytes < 1024 * 1024 {
            return Err(invalid(
                "http.max_response_bytes",
                format!(
                    "must be at least 1048576 (1 MiB) (got {})",
                    self.http.max_response_bytes
                ),
            ));
        }
        if self.scheduler.backoff_max_secs < self.scheduler.backoff_initial_secs {
            return Err(invalid(
                "scheduler.backoff_max_secs",
                "must not be below scheduler.backoff_initial_secs",
            ));
        }
        Ok(())
    }

    /// Each routed sink's share of `outbox.max_bytes`, in bytes: the cap divided by the number of
    /// sinks some source routes to. A sink whose backlog reaches its share pauses only the sources
    /// routed to it (the scheduler computes the same from its routes).
    pub fn sink_share(&self) -> u64 {
        let routed = self.routes().values().filter(|s| !s.is_empty()).count();
        self.outbox.max_bytes / routed.max(1) as u64
    }

    /// Sink names with the ids of the sources routed to each, disabled ones included: a source
    /// switched off may still have records waiting in the outbox, and a sink reading past them
    /// would never deliver them.
    pub fn routes(&self) -> BTreeMap<String, Vec<String>> {
        let mut routes: BTreeMap<String, Vec<String>> =
            self.sinks.keys().map(|k| (k.clone(), Vec::new())).collect();
        for (id, source) in &self.sources {
            for sink in source.sinks() {
                routes.entry(sink.clone()).or_default().push(id.clone());
            }
        }
        routes
    }
}

/// Whether an environment value means the same typed as it does as text: a flag, or a number
/// written the way it would be printed back.
fn reads_back_typed(value: &str) -> bool {
    matches!(value, "true" | "false")
        || value.parse::<i64>().is_ok_and(|n| n.to_string() == value)
        || value
            .parse::<f64>()
            .is_ok_and(|n| n.is_finite() && n.to_string() == value)
}

/// Whether zero seconds means something for a duration setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Zero {
    /// Zero is a meaningful choice (no jitter, no linger, no grace).
    Allowed,
    /// Zero would spin or fail at once.
    Refused,
}

/// The longest duration any setting takes, in seconds (a year): beyond it lies a typo.
const MAX_SECONDS: f64 = 31_536_000.0;

fn invalid(key: &str, reason: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// `{at}.{name}` must lie in `low..=high`.
fn in_range(at: &str, name: &str, value: u32, low: u32, high: u32) -> Result<(), SettingsError> {
    if (low..=high).contains(&value) {
        Ok(())
    } else {
        Err(invalid(
            &format!("{at}.{name}"),
            format!("must be {low} to {high}"),
        ))
    }
}

/// `{at}.{name}` must be given and not empty; `why` says who needs it.
fn required(at: &str, name: &str, value: Option<&str>, why: &str) -> Result<(), SettingsError> {
    match value {
        Some(v) if !v.is_empty() => Ok(()),
        _ => Err(invalid(&format!("{at}.{name}"), format!("required: {why}"))),
    }
}

/// `{at}.{name}` must list at least one item.
fn non_empty<T>(at: &str, name: &str, list: &[T]) -> Result<(), SettingsError> {
    if list.is_empty() {
        Err(invalid(&format!("{at}.{name}"), "name at least one"))
    } else {
        Ok(())
    }
}

/// Resolves `{at}.{name}` (inline, `{name}_file` or environment) into `inline`, clearing `file`.
fn resolve_secret(
    at: &str,
    name: &str,
    inline: &mut Option<Secret>,
    file: &mut Option<PathBuf>,
) -> Result<(), SettingsError> {
    let secret = secret::resolve(&format!("{at}.{name}"), inline.as_ref(), file.as_deref())?;
    *inline = Some(secret);
    *file = None;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [sinks.archive]
        type = "file"
        path = "/tmp/x.ndjson"
        [sources.sophos_eu]
        type = "sophos"
        client_id = "id"
        client_secret = "PLANTED-SECRET"
        sinks = ["archive"]
    "#;

    #[test]
    fn a_duration_that_is_negative_not_a_number_or_zero_where_zero_spins_names_its_key() {
        for (extra, key, why) in [
            (
                "[scheduler]\nshutdown_grace_secs = -1",
                "scheduler.shutdown_grace_secs",
                "negative",
            ),
            (
                "[scheduler]\nbackoff_initial_secs = nan",
                "scheduler.backoff_initial_secs",
                "finite",
            ),
            ("[http]\ntimeout_secs = inf", "http.timeout_secs", "finite"),
            (
                "[http]\nconnect_timeout_secs = 0",
                "http.connect_timeout_secs",
                "above 0",
            ),
            (
                "[backfill]\ndrain_timeout_secs = 1e12",
                "backfill.drain_timeout_secs",
                "at most",
            ),
            (
                "[scheduler]\nbackoff_initial_secs = 9\nbackoff_max_secs = 3",
                "scheduler.backoff_max_secs",
                "below",
            ),
            (
                "[http]\nmax_response_bytes = 1000",
                "http.max_response_bytes",
                "at least",
            ),
        ] {
            let err = Settings::from_toml(&format!("{MINIMAL}\n{extra}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains(why), "{extra}: {err}");
        }
        let zero_interval = MINIMAL.replace(
            "sinks = [\"archive\"]",
            "sinks = [\"archive\"]\ninterval_secs = 0",
        );
        let err = Settings::from_toml(&zero_interval).unwrap_err().to_string();
        assert!(err.contains("sources.sophos_eu.interval_secs"), "{err}");
        // Zero where it means "none" is fine.
        let ok = format!("{MINIMAL}\n[scheduler]\njitter_secs = 0\nshutdown_grace_secs = 0");
        assert!(Settings::from_toml(&ok).is_ok());
    }

    #[test]
    fn environment_values_stay_text_until_a_key_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secrelay.toml");
        std::fs::write(
            &file,
            MINIMAL.replace("client_secret = \"PLANTED-SECRET\"\n", ""),
        )
        .unwrap();
        let env = HashMap::from([
            (
                "SECRELAY__SOURCES__SOPHOS_EU__CLIENT_SECRET".to_string(),
                "007".to_string(),
            ),
            (
                "SECRELAY__SOURCES__SOPHOS_EU__PAGE_SIZE".to_string(),
                "50".to_string(),
            ),
            (
                "SECRELAY__SCHEDULER__JITTER_SECS".to_string(),
                "0.5".to_string(),
            ),
            (
                "SECRELAY__SOURCES__SOPHOS_EU__ENABLED".to_string(),
                "false".to_string(),
            ),
        ]);
        let s = Settings::load_with_env(Some(&file), Some(env)).unwrap();
        let SourceSettings::Sophos(sophos) = &s.sources["sophos_eu"] else {
            panic!("a sophos source")
        };
        assert_eq!(sophos.client_secret.as_ref().unwrap().expose(), "007");
        assert_eq!(sophos.page_size, 50);
        assert!(!sophos.enabled);
        assert_eq!(s.scheduler.jitter_secs, 0.5);
        for (value, typed) in [
            ("50", true),
            ("0.5", true),
            ("true", true),
            ("007", false),
            ("1e3", false),
            ("+5", false),
            ("x1", false),
        ] {
            assert_eq!(reads_back_typed(value), typed, "{value}");
        }
    }

    #[test]
    fn defaults_fill_every_section() {
        let s = Settings::from_toml(MINIMAL).unwrap();
        assert_eq!(s.outbox.max_bytes, 256 * 1024 * 1024);
        assert_eq!(s.store.seen_retention_hours, 168);
        let SourceSettings::Sophos(sophos) = &s.sources["sophos_eu"] else {
            panic!("sophos settings")
        };
        assert_eq!(sophos.page_size, 1000);
        assert_eq!(
            sophos.streams,
            vec![SophosStream::Events, SophosStream::Alerts]
        );
    }

    #[test]
    fn unknown_key_in_a_source_names_its_path() {
        let text = MINIMAL.replace(
            "client_id = \"id\"",
            "client_id = \"id\"\nintervall_secs = 5",
        );
        let err = Settings::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("sources.sophos_eu"), "{err}");
        assert!(err.contains("intervall_secs"), "{err}");
    }

    #[test]
    fn unknown_top_level_key_names_its_path() {
        let err = Settings::from_toml("[outbox]\nmax_byte = 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("outbox") && err.contains("max_byte"), "{err}");
    }

    #[test]
    fn a_source_routed_to_no_sink_is_an_error() {
        for enabled in ["true", "false"] {
            let text = MINIMAL.replace(
                "sinks = [\"archive\"]",
                &format!("sinks = []\nenabled = {enabled}"),
            );
            let err = Settings::from_toml(&text).unwrap_err().to_string();
            assert!(
                err.contains("sources.sophos_eu.sinks") && err.contains("no sink"),
                "{err}"
            );
        }
    }

    #[test]
    fn routing_to_a_missing_sink_is_an_error() {
        let text = MINIMAL.replace("sinks = [\"archive\"]", "sinks = [\"archiv\"]");
        let err = Settings::from_toml(&text).unwrap_err().to_string();
        assert!(
            err.contains("sources.sophos_eu.sinks") && err.contains("archiv"),
            "{err}"
        );
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let text = include_str!("../../config/example.toml").replace(
            "client_secret_file = \"sophos_secret\"",
            "client_secret = \"x\"",
        );
        let s = Settings::from_toml(&text).unwrap();
        assert_eq!(s.routes()["archive"], ["sophos"]);
    }

    #[test]
    fn code42_combinations_the_vendor_does_not_serve_are_refused() {
        let base = r#"
            [sinks.archive]
            type = "file"
            path = "/tmp/x.ndjson"
            [sources.incydr]
            type = "code42"
            client_id = "key"
            client_secret = "s"
            sinks = ["archive"]
        "#;
        let ok = Settings::from_toml(base).unwrap();
        let SourceSettings::Code42(c) = &ok.sources["incydr"] else {
            panic!("code42 settings")
        };
        assert_eq!(c.overlap_minutes, 15);
        assert_eq!(c.page_size, 10_000);
        let legacy_sessions =
            format!("{base}auth = \"legacy_user\"\nconsole_url = \"https://c\"\n");
        let err = Settings::from_toml(&legacy_sessions)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sources.incydr.streams") && err.contains("sessions"),
            "{err}"
        );
        let v1 = format!("{base}file_events_api = \"v1\"\n");
        let err = Settings::from_toml(&v1).unwrap_err().to_string();
        assert!(err.contains("sources.incydr.file_events_api"), "{err}");
        let no_console =
            format!("{base}auth = \"legacy_api_client\"\nstreams = [\"file_events\"]\n");
        let err = Settings::from_toml(&no_console).unwrap_err().to_string();
        assert!(err.contains("console_url"), "{err}");
        let big_page = format!("{base}page_size = 20000\n");
        assert!(Settings::from_toml(&big_page)
            .unwrap_err()
            .to_string()
            .contains("page_size"));
    }

    #[test]
    fn the_full_example_with_every_source_and_sink_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = include_str!("../../config/example-full.toml").to_string();
        for name in [
            "hec_token",
            "sophos_secret",
            "incydr_secret",
            "tenable_secret",
            "jamf_secret",
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, "s3cret\n").unwrap();
            text = text.replace(
                &format!("\"{name}\""),
                &format!("{:?}", path.display().to_string()),
            );
        }
        let s = Settings::from_toml(&text).unwrap();
        assert_eq!(s.sources.len(), 4);
        assert_eq!(s.sinks.len(), 3);
        assert_eq!(
            s.routes()["splunk"],
            ["incydr", "jamf", "sophos", "tenable"]
        );
        assert!(!format!("{s:?}").contains("s3cret"));
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let s = Settings::from_toml(MINIMAL).unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("PLANTED-SECRET"), "{shown}");
        assert!(shown.contains("[redacted]"));
    }
}
