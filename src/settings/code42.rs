//! `[sources.<id>]` with `type = "code42"`: Code42 / Incydr file events, alerts and sessions.

use std::path::PathBuf;

use serde::Deserialize;

use super::{
    in_range, invalid, non_empty, required, resolve_secret, secret, Secret, SettingsError,
    SetupError,
};

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
    #[serde(default = "super::yes")]
    pub enabled: bool,
    /// Poll interval once caught up, in seconds. Default 60.
    #[serde(default = "super::sixty")]
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
impl Code42Settings {
    /// Checks ranges and the combinations Code42 serves at `at` (`sources.<id>`), and resolves the
    /// client secret.
    pub fn validate(&mut self, at: &str) -> Result<(), SettingsError> {
        resolve_secret(
            at,
            "client_secret",
            &mut self.client_secret,
            &mut self.client_secret_file,
        )?;
        in_range(at, "page_size", self.page_size, 1, 10_000)?;
        in_range(at, "alert_page_size", self.alert_page_size, 1, 500)?;
        in_range(at, "session_page_size", self.session_page_size, 1, 50)?;
        in_range(
            at,
            "initial_lookback_hours",
            self.initial_lookback_hours,
            1,
            2160,
        )?;
        in_range(
            at,
            "session_window_hours",
            self.session_window_hours,
            1,
            2160,
        )?;
        if self.auth != Code42Auth::ApiClient && self.streams.contains(&Code42Stream::Sessions) {
            return Err(invalid(
                &format!("{at}.streams"),
                "sessions are only served by the Incydr API gateway: use auth = \"api_client\"",
            ));
        }
        if self.auth == Code42Auth::ApiClient && self.file_events_api == FileEventsApi::V1 {
            return Err(invalid(
                &format!("{at}.file_events_api"),
                "the v1 file-event API is only on legacy consoles: use v2 with api_client",
            ));
        }
        if self.auth != Code42Auth::ApiClient {
            required(
                at,
                "console_url",
                self.console_url.as_deref(),
                "the legacy auth modes log in at the console",
            )?;
        }
        non_empty(at, "streams", &self.streams)
    }

    /// The resolved client secret (for `legacy_user`, the password) of the source at `at`.
    pub fn credentials(&self, at: &str) -> Result<Secret, SetupError> {
        secret::resolved(at, "client_secret", self.client_secret.as_ref())
    }
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
