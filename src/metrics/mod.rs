//! The daemon's counters and health, and their Prometheus text exposition.
//!
//! Owns: per-partition and per-sink atomics the scheduler bumps where it already counts, the
//! rendering of them (with the store's backlog and outbox figures, read at scrape time) in the
//! Prometheus text format 0.0.4, and the health verdict. `serve.rs` answers `GET /metrics` and
//! `GET /health` over a minimal HTTP/1.1 responder. Must not: name a vendor (sources are ids,
//! error kinds are the scheduler's), touch the store's SQL, or hold a lock across an await.
//! Invariant: bumping a counter never blocks the pipeline (atomics; the registry lock is taken
//! once per partition or sink, when its handle is made).

mod serve;

pub use serve::{probe_health, serve, HealthProbe, MetricsServeError, Scrape};

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

/// Upper bounds (seconds) of the API latency histogram's buckets; `+Inf` follows.
pub const LATENCY_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Why a poll failed, as counted in `secrelay_source_poll_errors_total{kind}`.
pub const POLL_ERROR_KINDS: [&str; 8] = [
    "rate_limited",
    "unavailable",
    "malformed",
    "auth",
    "bad_cursor",
    "rejected",
    "stalled",
    "store",
];

/// A partition: source id, stream, tenant (`""` when none).
type PartitionKey = (String, String, String);
/// Every partition's and every sink's counters, copied out of the registry.
type Snapshot = (
    Vec<(PartitionKey, Arc<PartitionMetrics>)>,
    Vec<(String, Arc<SinkMetrics>)>,
);
/// A counter family: name, help text, and how to read it.
type Family<T> = (&'static str, &'static str, fn(&T) -> u64);

/// Every counter of the running pipeline. Shared through the scheduler's `Context`.
#[derive(Debug, Default)]
pub struct Metrics {
    partitions: Mutex<BTreeMap<PartitionKey, Arc<PartitionMetrics>>>,
    sinks: Mutex<BTreeMap<String, Arc<SinkMetrics>>>,
}

/// The counters of one source partition (or of a source's tenant discovery, stream
/// `(discovery)`, while it fails).
#[derive(Debug, Default)]
pub struct PartitionMetrics {
    /// Events in the pages fetched, before dedup.
    pub polled: AtomicU64,
    /// Events appended to the outbox.
    pub new: AtomicU64,
    /// Events dropped as already seen.
    pub duplicates: AtomicU64,
    /// Failed polls, indexed like [`POLL_ERROR_KINDS`].
    errors: [AtomicU64; POLL_ERROR_KINDS.len()],
    /// Waits the vendor asked for (HTTP 429).
    pub rate_limit_waits: AtomicU64,
    /// Times the source moved a cursor forward past the vendor's horizon.
    pub cursor_clamped: AtomicU64,
    /// Latency histogram: per bucket of [`LATENCY_BUCKETS`], then `+Inf`.
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of the latencies, in microseconds.
    latency_sum_micros: AtomicU64,
    /// Event time of the newest event of the last page that had any, in Unix milliseconds (0: none).
    newest_event_ms: AtomicI64,
    /// The last successful poll said nothing more was waiting.
    caught_up: AtomicBool,
    /// Back-pressure holds this partition.
    pub paused: AtomicBool,
    /// Last successful poll, Unix milliseconds (0: none yet).
    last_success_ms: AtomicI64,
    /// First failure since the last success, Unix milliseconds (0: not failing).
    failing_since_ms: AtomicI64,
}

/// The counters of one sink.
#[derive(Debug, Default)]
pub struct SinkMetrics {
    /// Records the receiver accepted.
    pub delivered: AtomicU64,
    /// Batches (or leading parts of batches) the receiver accepted.
    pub batches: AtomicU64,
    /// Deliveries that failed and will be tried again.
    pub retries: AtomicU64,
    /// Records the receiver rejected (kept as dead letters).
    pub dead_letters: AtomicU64,
    /// Last accepted batch, Unix milliseconds (0: none yet).
    last_success_ms: AtomicI64,
    /// First failure since the last success, Unix milliseconds (0: not failing).
    failing_since_ms: AtomicI64,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

impl PartitionMetrics {
    /// Counts a poll that took `elapsed`, successful or not.
    pub fn observe_latency(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let slot = LATENCY_BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency_buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// Counts a committed page whose newest event is at `newest`, and whether the vendor said more
    /// is waiting. Clears the failing state.
    pub fn record_success(&self, newest: Option<DateTime<Utc>>, more: bool) {
        if let Some(newest) = newest {
            self.newest_event_ms
                .store(newest.timestamp_millis(), Ordering::Relaxed);
        }
        self.caught_up.store(!more, Ordering::Relaxed);
        self.last_success_ms.store(now_ms(), Ordering::Relaxed);
        self.failing_since_ms.store(0, Ordering::Relaxed);
    }

    /// Counts a failed poll of `kind` (one of [`POLL_ERROR_KINDS`]; another counts as `store`).
    pub fn record_error(&self, kind: &str) {
        let slot = POLL_ERROR_KINDS
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(POLL_ERROR_KINDS.len() - 1);
        self.errors[slot].fetch_add(1, Ordering::Relaxed);
        if kind == "rate_limited" {
            self.rate_limit_waits.fetch_add(1, Ordering::Relaxed);
        }
        let _ = self.failing_since_ms.compare_exchange(
            0,
            now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Clears the failing state without counting a page (tenant discovery succeeded).
    pub fn record_recovered(&self) {
        self.last_success_ms.store(now_ms(), Ordering::Relaxed);
        self.failing_since_ms.store(0, Ordering::Relaxed);
    }

    /// How far behind the vendor's present the partition is, in seconds: 0 once the last poll said
    /// nothing more is waiting, else the age of the newest event fetched; `None` before any.
    fn lag_secs(&self, now_ms: i64) -> Option<f64> {
        if self.last_success_ms.load(Ordering::Relaxed) == 0 {
            return None;
        }
        if self.caught_up.load(Ordering::Relaxed) {
            return Some(0.0);
        }
        match self.newest_event_ms.load(Ordering::Relaxed) {
            0 => None,
            newest => Some(((now_ms - newest).max(0)) as f64 / 1000.0),
        }
    }
}

impl SinkMetrics {
    /// Counts a batch (or the leading part of one) the receiver took: `delivered` accepted,
    /// `rejected` kept as dead letters. Clears the failing state.
    pub fn record_accepted(&self, delivered: u64, rejected: u64) {
        self.delivered.fetch_add(delivered, Ordering::Relaxed);
        self.dead_letters.fetch_add(rejected, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.last_success_ms.store(now_ms(), Ordering::Relaxed);
        self.failing_since_ms.store(0, Ordering::Relaxed);
    }

    /// Counts a failed delivery that will be tried again.
    pub fn record_failure(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        let _ = self.failing_since_ms.compare_exchange(
            0,
            now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

/// What the store says at scrape time.
#[derive(Debug, Clone, Default)]
pub struct StoreFigures {
    /// Rows waiting in the outbox for at least one sink.
    pub outbox_rows: i64,
    /// Bytes of those rows.
    pub outbox_bytes: i64,
    /// Sink name → (events, bytes) waiting for it.
    pub backlogs: BTreeMap<String, (i64, i64)>,
}

/// The health verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Why the daemon is unhealthy, one line each; empty when healthy.
    pub reasons: Vec<String>,
}

impl Health {
    /// No reason to be unhealthy.
    pub fn ok(&self) -> bool {
        self.reasons.is_empty()
    }
}

impl Metrics {
    /// The counters of a partition, made on first use.
    pub fn partition(&self, source: &str, stream: &str, tenant: &str) -> Arc<PartitionMetrics> {
        let key = (source.to_string(), stream.to_string(), tenant.to_string());
        let mut map = self
            .partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry(key).or_default().clone()
    }

    /// The counters of a source's partition discovery, made only when it fails (no series for a
    /// source whose discovery works); `None` when it never failed.
    pub fn discovery(&self, source: &str, create: bool) -> Option<Arc<PartitionMetrics>> {
        let key = (source.to_string(), DISCOVERY.to_string(), String::new());
        let mut map = self
            .partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if create {
            Some(map.entry(key).or_default().clone())
        } else {
            map.get(&key).cloned()
        }
    }

    /// The counters of a sink, made on first use.
    pub fn sink(&self, name: &str) -> Arc<SinkMetrics> {
        let mut map = self
            .sinks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry(name.to_string()).or_default().clone()
    }

    fn snapshot(&self) -> Snapshot {
        let partitions = self
            .partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let sinks = self
            .sinks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        (partitions, sinks)
    }

    /// Unhealthy when a partition or sink has failed, with no success since, for longer than
    /// `unhealthy_after`.
    pub fn health(&self, unhealthy_after: Duration) -> Health {
        let now = now_ms();
        let limit = unhealthy_after.as_millis() as i64;
        let (partitions, sinks) = self.snapshot();
        let mut reasons = Vec::new();
        for ((source, stream, tenant), p) in &partitions {
            let since = p.failing_since_ms.load(Ordering::Relaxed);
            if since != 0 && now - since > limit {
                let tenant = if tenant.is_empty() {
                    String::new()
                } else {
                    format!(" tenant {tenant}")
                };
                reasons.push(format!(
                    "source {source} stream {stream}{tenant}: failing for {}s with no success",
                    (now - since) / 1000
                ));
            }
        }
        for (sink, s) in &sinks {
            let since = s.failing_since_ms.load(Ordering::Relaxed);
            if since != 0 && now - since > limit {
                reasons.push(format!(
                    "sink {sink}: failing for {}s with no delivery",
                    (now - since) / 1000
                ));
            }
        }
        Health { reasons }
    }

    /// The Prometheus text exposition (format 0.0.4) of every counter and of `store`'s figures.
    pub fn render(&self, store: &StoreFigures, health: &Health) -> String {
        let now = now_ms();
        let (partitions, sinks) = self.snapshot();
        let mut out = String::new();
        let part_labels = |(source, stream, tenant): &PartitionKey| {
            format!(
                "source=\"{}\",stream=\"{}\",tenant=\"{}\"",
                escape(source),
                escape(stream),
                escape(tenant)
            )
        };
        let counters: [Family<PartitionMetrics>; 5] = [
            (
                "secrelay_source_events_polled_total",
                "Events in the pages fetched from the vendor, before dedup.",
                |p| p.polled.load(Ordering::Relaxed),
            ),
            (
                "secrelay_source_events_new_total",
                "Events appended to the outbox (first seen).",
                |p| p.new.load(Ordering::Relaxed),
            ),
            (
                "secrelay_source_duplicates_dropped_total",
                "Events dropped because their id was already seen.",
                |p| p.duplicates.load(Ordering::Relaxed),
            ),
            (
                "secrelay_source_rate_limit_waits_total",
                "Times the vendor asked secrelay to slow down (HTTP 429).",
                |p| p.rate_limit_waits.load(Ordering::Relaxed),
            ),
            (
                "secrelay_source_cursor_clamped_total",
                "Times a cursor older than the vendor's horizon was moved forward (data skipped).",
                |p| p.cursor_clamped.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, get) in counters {
            header(&mut out, name, help, "counter");
            for (key, p) in &partitions {
                let _ = writeln!(out, "{name}{{{}}} {}", part_labels(key), get(p));
            }
        }

        let name = "secrelay_source_poll_errors_total";
        header(&mut out, name, "Failed polls, by kind.", "counter");
        for (key, p) in &partitions {
            for (i, kind) in POLL_ERROR_KINDS.iter().enumerate() {
                let n = p.errors[i].load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}{{{},kind=\"{kind}\"}} {n}", part_labels(key));
            }
        }

        let name = "secrelay_source_api_latency_seconds";
        header(
            &mut out,
            name,
            "Time one poll of the vendor API took (every request of one page).",
            "histogram",
        );
        for (key, p) in &partitions {
            let labels = part_labels(key);
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += p.latency_buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
            }
            cumulative += p.latency_buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
            let sum = p.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
        }

        let name = "secrelay_source_cursor_lag_seconds";
        header(
            &mut out,
            name,
            "How far behind the vendor's present a partition is: 0 once the vendor says nothing more is waiting, else the age of the newest event fetched.",
            "gauge",
        );
        for (key, p) in &partitions {
            if let Some(lag) = p.lag_secs(now) {
                let _ = writeln!(out, "{name}{{{}}} {lag}", part_labels(key));
            }
        }

        let name = "secrelay_source_paused";
        header(
            &mut out,
            name,
            "1 while back-pressure (a sink behind) holds the partition.",
            "gauge",
        );
        for (key, p) in &partitions {
            let paused = u8::from(p.paused.load(Ordering::Relaxed));
            let _ = writeln!(out, "{name}{{{}}} {paused}", part_labels(key));
        }

        let name = "secrelay_source_last_success_timestamp_seconds";
        header(
            &mut out,
            name,
            "Unix time of the last successful poll.",
            "gauge",
        );
        for (key, p) in &partitions {
            let at = p.last_success_ms.load(Ordering::Relaxed);
            if at != 0 {
                let _ = writeln!(out, "{name}{{{}}} {}", part_labels(key), seconds(at));
            }
        }

        let sink_counters: [Family<SinkMetrics>; 4] = [
            (
                "secrelay_sink_events_delivered_total",
                "Records the receiver accepted.",
                |s| s.delivered.load(Ordering::Relaxed),
            ),
            (
                "secrelay_sink_batches_total",
                "Batches the receiver accepted.",
                |s| s.batches.load(Ordering::Relaxed),
            ),
            (
                "secrelay_sink_retries_total",
                "Deliveries that failed and are tried again.",
                |s| s.retries.load(Ordering::Relaxed),
            ),
            (
                "secrelay_sink_dead_letters_total",
                "Records the receiver rejected, kept as dead letters.",
                |s| s.dead_letters.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, get) in sink_counters {
            header(&mut out, name, help, "counter");
            for (sink, s) in &sinks {
                let _ = writeln!(out, "{name}{{sink=\"{}\"}} {}", escape(sink), get(s));
            }
        }
        let name = "secrelay_sink_backlog_events";
        header(
            &mut out,
            name,
            "Records waiting in the outbox for the sink.",
            "gauge",
        );
        for (sink, (events, _)) in &store.backlogs {
            let _ = writeln!(out, "{name}{{sink=\"{}\"}} {events}", escape(sink));
        }
        let name = "secrelay_sink_backlog_bytes";
        header(
            &mut out,
            name,
            "Bytes of the records waiting for the sink.",
            "gauge",
        );
        for (sink, (_, bytes)) in &store.backlogs {
            let _ = writeln!(out, "{name}{{sink=\"{}\"}} {bytes}", escape(sink));
        }
        let name = "secrelay_sink_last_success_timestamp_seconds";
        header(
            &mut out,
            name,
            "Unix time of the last accepted batch.",
            "gauge",
        );
        for (sink, s) in &sinks {
            let at = s.last_success_ms.load(Ordering::Relaxed);
            if at != 0 {
                let _ = writeln!(out, "{name}{{sink=\"{}\"}} {}", escape(sink), seconds(at));
            }
        }

        let name = "secrelay_outbox_rows";
        header(
            &mut out,
            name,
            "Rows waiting in the outbox for at least one sink.",
            "gauge",
        );
        let _ = writeln!(out, "{name} {}", store.outbox_rows);
        let name = "secrelay_outbox_bytes";
        header(
            &mut out,
            name,
            "Bytes of the rows waiting in the outbox.",
            "gauge",
        );
        let _ = writeln!(out, "{name} {}", store.outbox_bytes);
        let name = "secrelay_healthy";
        header(
            &mut out,
            name,
            "1 when no source partition or sink has failed for longer than metrics.unhealthy_after_secs.",
            "gauge",
        );
        let _ = writeln!(out, "{name} {}", u8::from(health.ok()));
        out
    }
}

/// The stream name under which a source's failing tenant discovery is counted.
pub const DISCOVERY: &str = "(discovery)";

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Unix milliseconds as seconds with up to three decimals.
fn seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests;
