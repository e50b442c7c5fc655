//! Configuration: the serde structs, their layering and their validation.
//!
//! Layers, lowest first: `config/default.toml` (built into the binary), the file given with
//! `--config`, then `SECRELAY__SECTION__KEY` environment variables (`__` separates levels, e.g.
//! `SECRELAY__SOURCES__EDR_EU__CLIENT_SECRET`). Owns: turning those into a validated
//! [`Settings`] with every secret resolved. Must not: open connections or files other than secret
//! files. Invariant: an unknown key is an error naming its full path; a secret never reaches `Debug`,
//! logs or errors.

mod code42;
mod file;
mod itop;
mod jamf;
mod secret;
mod sections;
mod setup_error;
mod sophos;
mod sources;
mod splunk_hec;
mod syslog;
mod tenable_sc;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use code42::{Code42Auth, Code42Filter, Code42Settings, Code42Stream, FileEventsApi};
pub use file::FileSinkSettings;
pub use itop::{ItopAuthMethod, ItopCredentials, ItopRule, ItopSettings, ItopStimulus};
pub use jamf::{JamfApi, JamfAuth, JamfCredentials, JamfSettings, JamfStream};
pub use secret::Secret;
pub use sections::{
    BackfillSettings, HttpSettings, LogFormat, LogSettings, MetricsSettings, OutboxSettings,
    SchedulerSettings, StoreSettings,
};
pub use setup_error::SetupError;
pub use sophos::{SophosSettings, SophosStream};
pub use sources::SourceSettings;
pub use splunk_hec::{HecRoute, SplunkHecSettings};
pub use syslog::{
    Facility, SyslogFormat, SyslogFraming, SyslogPayload, SyslogSinkSettings, SyslogTransport,
};
pub use tenable_sc::{
    TenableAuth, TenableCredentials, TenableFilter, TenableScSettings, TenableStream,
};

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
        /// Full key path, e.g. `sources.edr_eu.interval_secs`.
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
    /// The Prometheus metrics and health endpoint.
    pub metrics: MetricsSettings,
    /// Sources keyed by id, e.g. `[sources.edr_eu]`. Default: none.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceSettings>,
    /// Sinks keyed by name, e.g. `[sinks.archive]`. Default: none.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkSettings>,
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
    /// `type = "itop"`: vendor alerts as iTop tickets.
    Itop(ItopSettings),
}

impl SinkSettings {
    /// Records per delivery batch.
    pub fn batch_size(&self) -> usize {
        match self {
            SinkSettings::File(f) => f.batch_size,
            SinkSettings::Syslog(s) => s.batch_size,
            SinkSettings::SplunkHec(s) => s.batch_size,
            SinkSettings::Itop(s) => s.batch_size,
        }
    }

    /// How long a short batch may wait for more records.
    pub fn linger(&self) -> std::time::Duration {
        match self {
            SinkSettings::SplunkHec(s) => std::time::Duration::from_secs_f64(s.linger_secs),
            SinkSettings::File(_) | SinkSettings::Syslog(_) | SinkSettings::Itop(_) => {
                std::time::Duration::ZERO
            }
        }
    }
}

pub(super) fn yes() -> bool {
    true
}
pub(super) fn sixty() -> f64 {
    60.0
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
        if self.metrics.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "metrics.listen",
                format!(
                    "`{}` is not IP:PORT (e.g. 127.0.0.1:9464)",
                    self.metrics.listen
                ),
            ));
        }
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
            source.validate(&at)?;
        }
        let source_ids: Vec<String> = self.sources.keys().cloned().collect();
        for (name, sink) in &mut self.sinks {
            let at = format!("sinks.{name}");
            if sink.batch_size() == 0 {
                return Err(invalid(&format!("{at}.batch_size"), "must be at least 1"));
            }
            match sink {
                SinkSettings::File(f) => f.validate(&at)?,
                SinkSettings::SplunkHec(h) => h.validate(&at, &source_ids)?,
                SinkSettings::Itop(i) => i.validate(&at, &source_ids)?,
                SinkSettings::Syslog(s) => s.validate(&at)?,
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
            (
                "metrics.unhealthy_after_secs".into(),
                self.metrics.unhealthy_after_secs,
                Zero::Allowed,
            ),
        ];
        for (id, source) in &self.sources {
            for (name, value) in source.durations() {
                checks.push((format!("sources.{id}.{name}"), value, Zero::Refused));
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
                SinkSettings::Itop(i) => {
                    checks.push((format!("{at}.timeout_secs"), i.timeout_secs, Zero::Refused));
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

/// The name `{at}.{key}` an auth mode signs in with (client id, access key, user name), which
/// must be given and not empty.
fn login_name(at: &str, key: &str, value: &Option<String>) -> Result<String, SetupError> {
    match value {
        Some(v) if !v.is_empty() => Ok(v.clone()),
        _ => Err(SetupError::new(
            format!("{at}.{key}"),
            "required by the auth mode",
        )),
    }
}

/// A client certificate for two-way TLS at `at` comes with its key: both
/// `client_cert_file` and `client_key_file`, or neither.
fn client_cert_paired(
    at: &str,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
) -> Result<(), SettingsError> {
    if cert.is_some() == key.is_some() {
        Ok(())
    } else {
        Err(invalid(
            &format!("{at}.client_cert_file"),
            "two-way TLS needs both client_cert_file and client_key_file",
        ))
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
mod tests;

#[cfg(test)]
#[path = "documented_tests.rs"]
mod documented_tests;
