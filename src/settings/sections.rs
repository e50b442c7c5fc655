//! The shared top-level sections of the configuration: `[store]`, `[outbox]`, `[scheduler]`,
//! `[backfill]`, `[log]`, `[metrics]` and `[http]`.
//!
//! Owns: their keys and defaults' documentation (the defaults themselves are in
//! `config/default.toml`). Must not: validate across sections (`Settings::validate` does).

use std::path::PathBuf;

use serde::Deserialize;

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
    /// Line format on stderr: `human` (text) or `json` (one object a line). Default `human`.
    #[serde(default)]
    pub format: LogFormat,
}

/// `log.format`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Text lines for a person (colours on a terminal).
    #[default]
    Human,
    /// One JSON object a line, for a log shipper.
    Json,
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Serve `GET /metrics` (Prometheus text) and `GET /health` while `secrelay run` runs.
    /// Default false.
    pub enabled: bool,
    /// Address and port to listen on, `IP:PORT`. A non-loopback address is allowed (a scraper on
    /// another host) but warned about: the endpoint has no authentication. Default `127.0.0.1:9464`.
    pub listen: String,
    /// A source partition or sink failing this long, in seconds, with no success makes `/health`
    /// answer 503. Default 900.
    pub unhealthy_after_secs: f64,
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
