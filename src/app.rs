//! Composition root: settings → store → sources and sinks → scheduler, for each mode (`run`,
//! `backfill`, `check`, `state`).
//!
//! Owns: which concrete source and sink types a configuration builds, and how a mode ends. Must not:
//! parse command lines or choose exit codes (see `main.rs`), or print secrets. Invariant: the only
//! place that names vendor types outside their own modules.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::scheduler::{run_sink, run_source, Context, Mode, PartitionReport, SinkReport};
use crate::settings::{Settings, SinkSettings, SourceSettings};
use crate::sinks::file::FileSink;
use crate::sinks::splunk_hec::HecSink;
use crate::sinks::syslog::SyslogSink;
use crate::sinks::Sink;
use crate::sources::code42::Code42Source;
use crate::sources::jamf::JamfSource;
use crate::sources::sophos::SophosSource;
use crate::sources::tenable_sc::TenableScSource;
use crate::sources::{http, Source, Vendor};
use crate::store::{
    Access, CursorState, DeadLetter, OutboxTotals, RejectedRecord, SinkState, Store, StoreError,
    StoreGrowth,
};

/// Failures that end a command. Each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The state database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The HTTP client could not be built (TLS setup).
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
    /// A source could not be set up from its settings (a TLS file unreadable, say); the message
    /// names the config key. Fix it and start again.
    #[error("{0}")]
    SourceSetup(String),
    /// A sink could not be set up from its settings (a TLS file unreadable, say); the message names
    /// the config key.
    #[error("{0}")]
    SinkSetup(String),
    /// `--source` names no configured source.
    #[error("no source named `{0}` in the configuration")]
    UnknownSource(String),
    /// `--sink` names no configured sink.
    #[error("no sink named `{0}` in the configuration")]
    UnknownSink(String),
}

/// What a `run` or `backfill` did.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Per partition.
    pub partitions: Vec<PartitionReport>,
    /// Per sink.
    pub sinks: Vec<SinkReport>,
}

impl RunSummary {
    /// Backfill succeeded: every partition caught up and every sink took everything.
    pub fn complete(&self) -> bool {
        self.partitions
            .iter()
            .all(|p| p.caught_up && p.error.is_none())
            && self
                .sinks
                .iter()
                .all(|s| s.backlog == 0 && s.error.is_none())
    }
}

/// Options of `secrelay backfill`.
#[derive(Debug, Clone, Default)]
pub struct BackfillOptions {
    /// Only this source (default: every enabled source).
    pub source: Option<String>,
    /// Forget cursors first.
    pub reset: bool,
    /// With `reset`: also forget seen ids of the last N days, and start N days back.
    pub days: Option<u32>,
}

/// Runs the daemon until `stop` is cancelled; sinks then flush within the grace period.
pub async fn run(settings: &Settings, stop: CancellationToken) -> Result<RunSummary, AppError> {
    let store = Store::open(&settings.store.path, Access::Writer).await?;
    let grace = Duration::from_secs_f64(settings.scheduler.shutdown_grace_secs);
    let pruner = tokio::spawn(prune_seen_periodically(
        store.clone(),
        settings.clone(),
        stop.clone(),
    ));
    let summary = pipeline(settings, &store, Mode::Daemon, grace, None, None, stop).await;
    pruner.abort();
    store.close().await;
    summary
}

/// One-shot backfill: optionally reset, poll every selected source until caught up, drain to sinks.
pub async fn backfill(
    settings: &Settings,
    options: &BackfillOptions,
    stop: CancellationToken,
) -> Result<RunSummary, AppError> {
    if let Some(id) = &options.source {
        if !settings.sources.contains_key(id) {
            return Err(AppError::UnknownSource(id.clone()));
        }
    }
    let store = Store::open(&settings.store.path, Access::Writer).await?;
    let lookback = options.days.map(|d| chrono::Duration::days(i64::from(d)));
    if options.reset {
        for id in settings.sources.keys() {
            if options.source.as_ref().is_some_and(|only| only != id) {
                continue;
            }
            let since = lookback.map(|l| Utc::now() - l);
            let done = store.reset(id, since).await?;
            tracing::info!(source = %id, cursors = done.cursors, seen_ids = done.seen, "reset");
        }
    }
    let mode = Mode::Backfill {
        max_poll_failures: settings.backfill.max_poll_failures.max(1),
    };
    let drain = Duration::from_secs_f64(settings.backfill.drain_timeout_secs);
    let summary = pipeline(
        settings,
        &store,
        mode,
        drain,
        options.source.as_deref(),
        lookback,
        stop,
    )
    .await;
    store.close().await;
    summary
}

/// Builds and runs sources and sinks until the mode says stop.
async fn pipeline(
    settings: &Settings,
    store: &Store,
    mode: Mode,
    drain_within: Duration,
    only_source: Option<&str>,
    lookback: Option<chrono::Duration>,
    stop: CancellationToken,
) -> Result<RunSummary, AppError> {
    let selected: BTreeMap<&String, &SourceSettings> = settings
        .sources
        .iter()
        .filter(|(id, s)| s.enabled() && only_source.is_none_or(|only| only == id.as_str()))
        .collect();
    let mut sinks_of_source: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, source) in &settings.sources {
        sinks_of_source.insert(id.clone(), source.sinks().to_vec());
    }
    let ctx = Context::new(
        store.clone(),
        settings.scheduler.clone(),
        settings.outbox.max_bytes,
        mode,
        drain_within,
        sinks_of_source,
        stop,
    );
    http::limit_response_bytes(settings.http.max_response_bytes);
    let client = http::client(&settings.http).map_err(|e| AppError::Http(e.to_string()))?;

    let mut source_tasks = JoinSet::new();
    for (id, source) in &selected {
        let interval = Duration::from_secs_f64(source.interval_secs());
        match source {
            SourceSettings::Sophos(s) => {
                let built = Arc::new(SophosSource::new(id, s.clone(), client.clone(), lookback));
                source_tasks.spawn(run_source(ctx.clone(), built, interval));
            }
            SourceSettings::Code42(s) => {
                let built = Arc::new(Code42Source::new(id, s.clone(), client.clone(), lookback));
                source_tasks.spawn(run_source(ctx.clone(), built, interval));
            }
            SourceSettings::TenableSc(s) => {
                let built = TenableScSource::new(id, s.clone(), &settings.http, lookback)
                    .map_err(AppError::SourceSetup)?;
                source_tasks.spawn(run_source(ctx.clone(), Arc::new(built), interval));
            }
            SourceSettings::Jamf(s) => {
                let built = Arc::new(JamfSource::new(id, s.clone(), client.clone()));
                source_tasks.spawn(run_source(ctx.clone(), built, interval));
            }
        }
    }

    let mut sink_tasks = JoinSet::new();
    for (name, sources) in settings.routes() {
        // A backfill drives only the sinks of the sources it polls; each of them reads every source
        // routed to it, even those this run does not poll (`--source`, a disabled source): a sink
        // has one position, and reading past rows of a source left out would lose them.
        if !sources
            .iter()
            .any(|s| selected.contains_key(s) || mode == Mode::Daemon)
        {
            continue;
        }
        let Some(sink_settings) = settings.sinks.get(&name) else {
            continue;
        };
        let batch = sink_settings.batch_size();
        let linger = sink_settings.linger();
        match sink_settings {
            SinkSettings::File(f) => {
                let sink = FileSink::new(&name, f.clone());
                sink_tasks.spawn(run_sink(ctx.clone(), sink, sources, batch, linger));
            }
            SinkSettings::Syslog(s) => {
                let sink = SyslogSink::new(&name, s.clone(), vendors(settings))
                    .map_err(AppError::SinkSetup)?;
                sink_tasks.spawn(run_sink(ctx.clone(), sink, sources, batch, linger));
            }
            SinkSettings::SplunkHec(h) => {
                let sink = HecSink::new(
                    &name,
                    h.clone(),
                    &settings.http,
                    vendors(settings),
                    store.clone(),
                )
                .map_err(AppError::SinkSetup)?;
                sink_tasks.spawn(run_sink(ctx.clone(), sink, sources, batch, linger));
            }
        }
    }

    let mut partitions = Vec::new();
    while let Some(joined) = source_tasks.join_next().await {
        match joined {
            Ok(reports) => partitions.extend(reports),
            Err(e) => tracing::error!("source task failed: {e}"),
        }
    }
    ctx.sources_done.cancel();
    let mut sinks = Vec::new();
    while let Some(joined) = sink_tasks.join_next().await {
        match joined {
            Ok(report) => sinks.push(report),
            Err(e) => tracing::error!("sink task failed: {e}"),
        }
    }
    partitions
        .sort_by(|a, b| (&a.source, &a.stream, &a.tenant).cmp(&(&b.source, &b.stream, &b.tenant)));
    sinks.sort_by(|a, b| a.sink.cmp(&b.sink));
    Ok(RunSummary { partitions, sinks })
}

/// Source id → vendor, for sinks whose format depends on it (CEF).
fn vendors(settings: &Settings) -> std::collections::HashMap<String, Vendor> {
    settings
        .sources
        .iter()
        .map(|(id, source)| (id.clone(), Vendor::of(source)))
        .collect()
}

/// Forgets seen ids older than each source's retention, hourly, until stopped.
async fn prune_seen_periodically(store: Store, settings: Settings, stop: CancellationToken) {
    loop {
        for (id, source) in &settings.sources {
            let hours = settings
                .store
                .seen_retention_hours
                .max(source.lookback_hours() * 2);
            let before = Utc::now() - chrono::Duration::hours(hours as i64);
            match store.prune_seen(id, before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(source = %id, removed = n, "pruned old seen ids"),
                Err(e) => tracing::warn!(source = %id, "{e}"),
            }
        }
        match store.reclaim_free_pages().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(bytes = n, "gave free pages of the state database back"),
            Err(e) => tracing::warn!("{e}"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}

/// One line of `secrelay check`.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// `source sophos_eu`, `sink archive`, `store`.
    pub what: String,
    /// Whether it worked.
    pub ok: bool,
    /// What was found, or the error.
    pub detail: String,
}

/// Validated settings are given; this reaches the store, each API and each sink without moving data.
pub async fn check(settings: &Settings) -> Vec<CheckResult> {
    let mut results = Vec::new();
    let check_store = match Store::open(&settings.store.path, Access::Reader).await {
        Ok(store) => {
            results.push(CheckResult {
                what: "store".into(),
                ok: true,
                detail: settings.store.path.display().to_string(),
            });
            Some(store)
        }
        Err(e) => {
            results.push(CheckResult {
                what: "store".into(),
                ok: false,
                detail: e.to_string(),
            });
            None
        }
    };
    http::limit_response_bytes(settings.http.max_response_bytes);
    let client = match http::client(&settings.http) {
        Ok(c) => c,
        Err(e) => {
            results.push(CheckResult {
                what: "http client".into(),
                ok: false,
                detail: e.to_string(),
            });
            return results;
        }
    };
    for (id, source) in &settings.sources {
        let outcome = match source {
            SourceSettings::Sophos(s) => {
                SophosSource::new(id, s.clone(), client.clone(), None)
                    .partitions()
                    .await
            }
            SourceSettings::Code42(s) => {
                Code42Source::new(id, s.clone(), client.clone(), None)
                    .partitions()
                    .await
            }
            SourceSettings::TenableSc(s) => {
                match TenableScSource::new(id, s.clone(), &settings.http, None) {
                    Ok(source) => {
                        let found = source.partitions().await;
                        source.close().await;
                        found
                    }
                    Err(e) => {
                        results.push(CheckResult {
                            what: format!("source {id}"),
                            ok: false,
                            detail: e,
                        });
                        continue;
                    }
                }
            }
            SourceSettings::Jamf(s) => {
                JamfSource::new(id, s.clone(), client.clone())
                    .partitions()
                    .await
            }
        };
        results.push(match outcome {
            Ok(p) => CheckResult {
                what: format!("source {id}"),
                ok: true,
                detail: format!("{} partitions: {}", p.len(), join(&p)),
            },
            Err(e) => CheckResult {
                what: format!("source {id}"),
                ok: false,
                detail: e.to_string(),
            },
        });
    }
    for (name, sink) in &settings.sinks {
        let outcome = match sink {
            SinkSettings::File(f) => FileSink::new(name, f.clone())
                .check()
                .await
                .map(|()| "writable".to_string()),
            SinkSettings::SplunkHec(h) => match &check_store {
                Some(store) => match HecSink::new(
                    name,
                    h.clone(),
                    &settings.http,
                    vendors(settings),
                    store.clone(),
                ) {
                    Ok(mut sink) => sink.check().await.map(|()| format!("{} is healthy", h.url)),
                    Err(e) => Err(crate::sinks::SinkError::Fatal {
                        sink: name.clone(),
                        detail: e,
                    }),
                },
                None => Err(crate::sinks::SinkError::Fatal {
                    sink: name.clone(),
                    detail: "needs the state database (its channel lives there)".into(),
                }),
            },
            SinkSettings::Syslog(s) => match SyslogSink::new(name, s.clone(), vendors(settings)) {
                Ok(mut sink) => sink
                    .check()
                    .await
                    .map(|()| format!("connected to {}", s.address)),
                Err(e) => Err(crate::sinks::SinkError::Fatal {
                    sink: name.clone(),
                    detail: e,
                }),
            },
        };
        results.push(CheckResult {
            what: format!("sink {name}"),
            ok: outcome.is_ok(),
            detail: outcome.unwrap_or_else(|e| e.to_string()),
        });
    }
    if let Some(store) = check_store {
        store.close().await;
    }
    results
}

fn join(partitions: &[crate::event::Partition]) -> String {
    partitions
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What `secrelay state` shows.
#[derive(Debug, Clone, Serialize)]
pub struct StateReport {
    /// When this was read.
    pub at: DateTime<Utc>,
    /// Outbox rows and bytes.
    pub outbox: OutboxTotals,
    /// The configured cap.
    pub outbox_cap_bytes: u64,
    /// True while some sources are paused because a sink they route to is a full share behind
    /// (see `sinks[].full`).
    pub sources_paused: bool,
    /// Each routed sink's share of the cap, in bytes.
    pub sink_share_bytes: u64,
    /// Per partition.
    pub partitions: Vec<CursorState>,
    /// Per sink, with its backlog.
    pub sinks: Vec<SinkStateWithBacklog>,
    /// The most recent records sources could not turn into events (newest first, at most
    /// [`STATE_REJECTED_SHOWN`]); every partition's total is in `partitions`.
    pub rejected: Vec<RejectedRecord>,
    /// What grows in the state database: seen ids (in all and per source), dead letters, rejected
    /// records, re-queued dead letters, and the file's size on disk (main file plus WAL).
    pub growth: StoreGrowth,
}

/// The human table `secrelay dead-letters` prints (the records themselves: `--json`).
pub fn dead_letters_table(letters: &[DeadLetter]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:<16} {:<18} {:<38} {:<20} REASON",
        "SINK", "SOURCE", "STREAM", "EVENT ID", "WHEN"
    );
    for d in letters {
        let _ = writeln!(
            out,
            "{:<16} {:<16} {:<18} {:<38} {:<20} {}",
            d.sink,
            d.source,
            d.stream,
            d.event_id,
            d.at.format("%Y-%m-%d %H:%M:%S"),
            d.reason
        );
    }
    let _ = writeln!(
        out,
        "{} dead letters{}",
        letters.len(),
        if letters.is_empty() {
            ""
        } else {
            "; `secrelay dead-letters retry [--sink S]` sends them again to the sink that rejected them"
        }
    );
    out
}

/// How many recent rejected records `secrelay state` lists.
pub const STATE_REJECTED_SHOWN: u32 = 10;

/// A sink's stored state plus the records waiting for it.
#[derive(Debug, Clone, Serialize)]
pub struct SinkStateWithBacklog {
    /// Stored state.
    #[serde(flatten)]
    pub state: SinkState,
    /// Records routed to this sink still in the outbox.
    pub backlog: i64,
    /// Bytes of those records.
    pub backlog_bytes: i64,
    /// The backlog reached the sink's share of the outbox cap: the sources routed to it are paused.
    pub full: bool,
    /// The receiver refused the sink at its last attempt (credentials, configuration); the daemon
    /// asks again at the longest backoff.
    pub refused: bool,
}

/// Reads the state database (creating it if it does not exist yet).
pub async fn state(settings: &Settings) -> Result<StateReport, AppError> {
    let store = Store::open(&settings.store.path, Access::Reader).await?;
    let outbox = store.outbox_totals().await?;
    let partitions = store.cursor_states().await?;
    let rejected = store.recent_rejected(STATE_REJECTED_SHOWN).await?;
    let growth = store.growth().await?;
    let mut stored: BTreeMap<String, SinkState> = store
        .sink_states()
        .await?
        .into_iter()
        .map(|s| (s.sink.clone(), s))
        .collect();
    let mut sinks = Vec::new();
    let sink_share = settings.sink_share();
    for (name, sources) in settings.routes() {
        let state = stored.remove(&name).unwrap_or(SinkState {
            sink: name.clone(),
            delivered_seq: 0,
            updated_at: None,
            delivered_total: 0,
            last_error: None,
            last_error_at: None,
            dead_letters: 0,
        });
        let backlog = store
            .backlog_totals(&name, state.delivered_seq, &sources)
            .await?;
        let refused = state.last_error.as_deref().is_some_and(|e| {
            e.starts_with(crate::scheduler::REFUSED)
                && state
                    .updated_at
                    .is_none_or(|moved| state.last_error_at.is_some_and(|failed| failed > moved))
        });
        sinks.push(SinkStateWithBacklog {
            state,
            backlog: backlog.rows,
            backlog_bytes: backlog.bytes,
            full: !sources.is_empty() && backlog.bytes as u64 >= sink_share,
            refused,
        });
    }
    // Sinks no longer configured still show, so their dead letters are not forgotten.
    for (_, state) in stored {
        sinks.push(SinkStateWithBacklog {
            state,
            backlog: 0,
            backlog_bytes: 0,
            full: false,
            refused: false,
        });
    }
    store.close().await;
    Ok(StateReport {
        at: Utc::now(),
        sources_paused: sinks.iter().any(|s| s.full),
        sink_share_bytes: sink_share,
        outbox,
        outbox_cap_bytes: settings.outbox.max_bytes,
        partitions,
        sinks,
        rejected,
        growth,
    })
}

/// The dead letters of `sink` (every sink when `None`), oldest first: records a sink's receiver
/// rejected. Reads beside a running daemon.
pub async fn dead_letters(
    settings: &Settings,
    sink: Option<&str>,
) -> Result<Vec<DeadLetter>, AppError> {
    let store = Store::open(&settings.store.path, Access::Reader).await?;
    let letters = store.dead_letters(sink).await;
    store.close().await;
    Ok(letters?)
}

/// What `secrelay dead-letters retry` did for one sink.
#[derive(Debug, Clone, Serialize)]
pub struct Requeued {
    /// Sink name.
    pub sink: String,
    /// Dead letters moved back to the outbox for this sink alone.
    pub records: u64,
}

/// Re-queues the dead letters of `sink` (every configured sink when `None`): they go back to the
/// end of the outbox for that sink alone, and the delivery loop (a running daemon, or the next
/// `run` or `backfill`) sends them again; rejected again, they are dead letters again. Dead
/// letters of a sink no longer configured are left alone (nothing would deliver or prune them).
pub async fn retry_dead_letters(
    settings: &Settings,
    sink: Option<&str>,
) -> Result<Vec<Requeued>, AppError> {
    let names: Vec<String> = match sink {
        Some(name) if settings.sinks.contains_key(name) => vec![name.to_string()],
        Some(name) => return Err(AppError::UnknownSink(name.to_string())),
        None => settings.sinks.keys().cloned().collect(),
    };
    // A reader: the re-queue is one short transaction, safe beside a running daemon.
    let store = Store::open(&settings.store.path, Access::Reader).await?;
    let mut done = Vec::new();
    for name in names {
        match store.requeue_dead_letters(&name).await {
            Ok(records) => {
                if records > 0 {
                    tracing::info!(sink = %name, records, "dead letters re-queued for this sink");
                }
                done.push(Requeued {
                    sink: name,
                    records,
                });
            }
            Err(e) => {
                store.close().await;
                return Err(e.into());
            }
        }
    }
    store.close().await;
    Ok(done)
}

impl StateReport {
    /// The human table `secrelay state` prints.
    pub fn to_table(&self) -> String {
        use std::fmt::Write;
        let ago = |t: Option<DateTime<Utc>>| match t {
            None => "-".to_string(),
            Some(t) => {
                let secs = (self.at - t).num_seconds().max(0);
                match secs {
                    0..=119 => format!("{secs}s ago"),
                    120..=7199 => format!("{}m ago", secs / 60),
                    _ => format!("{}h ago", secs / 3600),
                }
            }
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "outbox: {} records, {} of {} bytes{}",
            self.outbox.rows,
            self.outbox.bytes,
            self.outbox_cap_bytes,
            if self.sources_paused {
                "  — sources routed to a full sink are paused"
            } else {
                ""
            }
        );
        let g = &self.growth;
        let mib = |b: u64| match b {
            0..=1_048_575 => format!("{:.0} KiB", b as f64 / 1024.0),
            _ => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
        };
        let _ = writeln!(
            out,
            "database: {} on disk (main {} + WAL {}; {} free inside, auto_vacuum {}) {}",
            mib(g.database.total_bytes),
            mib(g.database.main_bytes),
            mib(g.database.wal_bytes),
            mib(g.database.free_bytes),
            g.database.auto_vacuum,
            g.database.path.display()
        );
        let per_source: Vec<String> = g
            .seen_ids_by_source
            .iter()
            .map(|(source, n)| format!("{source} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "seen ids: {}{}",
            g.seen_ids,
            if per_source.is_empty() {
                String::new()
            } else {
                format!(" ({})", per_source.join(", "))
            }
        );
        let _ = writeln!(
            out,
            "dead letters: {} (records sinks rejected; `secrelay dead-letters` lists them){}",
            g.dead_letters,
            if g.requeued > 0 {
                format!("; {} re-queued, waiting in the outbox", g.requeued)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            out,
            "rejected records: {} (records sources could not read)",
            g.rejected_records
        );
        for s in &self.sinks {
            if s.refused {
                let _ = writeln!(
                    out,
                    "!! sink {} is REFUSED by its receiver ({}): fix it; its records wait and it is tried again",
                    s.state.sink,
                    ago(s.state.last_error_at)
                );
            }
            if s.full {
                let _ = writeln!(
                    out,
                    "!! sink {} is {} bytes behind (its share is {}): the sources routed to it are paused",
                    s.state.sink, s.backlog_bytes, self.sink_share_bytes
                );
            }
        }
        let _ = writeln!(out, "\nSOURCES");
        let _ = writeln!(
            out,
            "{:<16} {:<18} {:<38} {:>10} {:>8} {:>6} {:>8} {:<12} {:<12} {:<12} LAST ERROR",
            "SOURCE",
            "STREAM",
            "TENANT",
            "EVENTS",
            "DUPS",
            "CLAMPS",
            "REJECTED",
            "CURSOR MOVED",
            "LAST OK",
            "LAG"
        );
        for p in &self.partitions {
            let error = match (&p.last_error, p.last_error_at) {
                (Some(e), Some(at)) if p.last_success_at.is_none_or(|ok| at > ok) => {
                    format!("{} ({})", e, ago(Some(at)))
                }
                (Some(_), Some(at)) => format!("(recovered; last failure {})", ago(Some(at))),
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "{:<16} {:<18} {:<38} {:>10} {:>8} {:>6} {:>8} {:<12} {:<12} {:<12} {}",
                p.source,
                p.stream,
                if p.tenant.is_empty() { "-" } else { &p.tenant },
                p.events_total,
                p.duplicates_total,
                p.clamps_total,
                p.rejected_total,
                ago(p.updated_at),
                ago(p.last_success_at),
                ago(p.newest_event_at),
                error
            );
        }
        if !self.rejected.is_empty() {
            let _ = writeln!(
                out,
                "\nREJECTED RECORDS (newest {}; kept in the state database)",
                self.rejected.len()
            );
            for r in &self.rejected {
                let _ = writeln!(
                    out,
                    "{:<16} {:<18} {:<12} {} ({})",
                    r.source,
                    r.stream,
                    ago(Some(r.at)),
                    r.reason,
                    r.url
                );
            }
        }
        let _ = writeln!(out, "\nSINKS");
        let _ = writeln!(
            out,
            "{:<16} {:>10} {:>10} {:>12} {:>12} {:<12} LAST ERROR",
            "SINK", "POSITION", "BACKLOG", "DELIVERED", "DEAD LETTERS", "LAST MOVED"
        );
        for s in &self.sinks {
            let error = match (&s.state.last_error, s.state.last_error_at) {
                (Some(e), Some(at)) if s.state.updated_at.is_none_or(|moved| at > moved) => {
                    format!("{} ({})", e, ago(Some(at)))
                }
                (Some(_), Some(at)) => format!("(recovered; last failure {})", ago(Some(at))),
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "{:<16} {:>10} {:>10} {:>12} {:>12} {:<12} {}",
                s.state.sink,
                s.state.delivered_seq,
                s.backlog,
                s.state.delivered_total,
                s.state.dead_letters,
                ago(s.state.updated_at),
                error
            );
        }
        out
    }
}
