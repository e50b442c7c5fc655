//! Composition root: settings → store → sources and sinks → scheduler, for each mode (`run`,
//! `backfill`, `check`, `state`).
//!
//! Owns: how a mode ends, and the wiring of what `vendors::build_source` and
//! `sinks::any::build_sink` build. Must not: parse command lines or choose exit codes (see
//! `main.rs`), print secrets, or name a vendor or transport (the registries do). `state` and its
//! rendering live in `app/state.rs`, the analyst's `incidents` commands in `app/incidents.rs`.

pub mod incidents;
pub mod progress;
mod state;

pub use state::{
    dead_letters_table, partition_lag, state, Behind, PartitionState, SinkStateWithBacklog,
    StateReport, SOURCES_LEGEND, STATE_REJECTED_SHOWN,
};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::notify;
use crate::scheduler::{run_sink, run_source, Context, Mode, PartitionReport, SinkReport};
use crate::settings::{Settings, SetupError, SourceSettings};
use crate::sinks::any::{build_sink, AnySink, SinkSetup};
use crate::sinks::Sink;
use crate::sources::{http, Source};
use crate::store::{Access, DeadLetter, Store, StoreError};
use crate::vendors::{build_source, mappings, SourceSetup};

/// Failures that end a command. Each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The state database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The HTTP client could not be built (TLS setup).
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
    /// A source or sink could not be set up from its settings (a TLS file unreadable, say); names
    /// the config key. Fix it and start again.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// `--source` names no configured source.
    #[error("no source named `{0}` in the configuration")]
    UnknownSource(String),
    /// `--sink` names no configured sink.
    #[error("no sink named `{0}` in the configuration")]
    UnknownSink(String),
    /// The metrics endpoint could not listen.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsServeError),
}

/// What a `run` or `backfill` did.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Per partition.
    pub partitions: Vec<PartitionReport>,
    /// Per sink.
    pub sinks: Vec<SinkReport>,
    /// Per source polled: how long its task ran.
    pub sources: Vec<SourceRun>,
}

/// How long one source's task ran in a `run` or `backfill`.
#[derive(Debug, Clone, Serialize)]
pub struct SourceRun {
    /// Source id.
    pub source: String,
    /// Seconds from its start to its last partition's end.
    pub secs: f64,
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
    /// How progress is shown while it runs (default: not at all).
    pub progress: progress::ProgressStyle,
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
    // systemd: STOPPING=1 when a graceful stop begins, WATCHDOG=1 until the very end (systemd
    // still watches while we flush). READY=1 is sent by `pipeline` once everything is scheduled.
    let stopping = tokio::spawn({
        let stop = stop.clone();
        async move {
            stop.cancelled().await;
            notify::notify(notify::State::Stopping);
        }
    });
    let finished = CancellationToken::new();
    let watchdog = tokio::spawn(notify::watchdog(finished.clone()));
    let summary = pipeline(settings, &store, Mode::Daemon, grace, None, None, stop).await;
    finished.cancel();
    let _ = watchdog.await;
    stopping.abort();
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
    let shown = progress::Progress::start(settings, options, &store).await;
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
    shown.finish(summary.as_ref().ok()).await;
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
    let metrics_server = if mode == Mode::Daemon && settings.metrics.enabled {
        Some(serve_metrics(settings, &ctx).await?)
    } else {
        None
    };
    http::limit_response_bytes(settings.http.max_response_bytes);
    let client = http::client(&settings.http).map_err(|e| AppError::Http(e.to_string()))?;

    let setup = SourceSetup {
        http: &settings.http,
        client: &client,
        lookback,
    };
    let mut source_tasks = JoinSet::new();
    for (id, source) in &selected {
        let interval = Duration::from_secs_f64(source.interval_secs());
        let built = Arc::new(build_source(id, source, &setup)?);
        let span = tracing::info_span!("source", source = %id);
        let run = run_source(ctx.clone(), built, interval).instrument(span);
        let id = id.to_string();
        source_tasks.spawn(async move {
            let started = std::time::Instant::now();
            let reports = run.await;
            (
                SourceRun {
                    source: id,
                    secs: started.elapsed().as_secs_f64(),
                },
                reports,
            )
        });
    }

    let mappings = mappings(&settings.sources);
    let sink_setup = SinkSetup {
        http: &settings.http,
        mappings: &mappings,
        store: Some(store),
    };
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
        let sink = build_sink(&name, sink_settings, &sink_setup)?;
        let span = tracing::info_span!("sink", sink = %name);
        sink_tasks.spawn(run_sink(ctx.clone(), sink, sources, batch, linger).instrument(span));
    }

    if mode == Mode::Daemon {
        // Store open, every source and sink scheduled: tell systemd (`Type=notify`) we are up.
        notify::notify(notify::State::Ready);
    }

    let mut partitions = Vec::new();
    let mut sources = Vec::new();
    while let Some(joined) = source_tasks.join_next().await {
        match joined {
            Ok((run, reports)) => {
                sources.push(run);
                partitions.extend(reports);
            }
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
    if let Some(server) = metrics_server {
        server.abort();
    }
    partitions
        .sort_by(|a, b| (&a.source, &a.stream, &a.tenant).cmp(&(&b.source, &b.stream, &b.tenant)));
    sinks.sort_by(|a, b| a.sink.cmp(&b.sink));
    sources.sort_by(|a, b| a.source.cmp(&b.source));
    Ok(RunSummary {
        partitions,
        sinks,
        sources,
    })
}

/// Starts the `/metrics` and `/health` endpoint on `metrics.listen` over the pipeline's counters.
async fn serve_metrics(
    settings: &Settings,
    ctx: &Arc<Context>,
) -> Result<tokio::task::JoinHandle<()>, AppError> {
    let scrape = crate::metrics::Scrape {
        metrics: ctx.metrics.clone(),
        store: ctx.store.clone(),
        sources_of_sink: ctx.sources_of_sink.clone(),
        unhealthy_after: Duration::from_secs_f64(settings.metrics.unhealthy_after_secs),
    };
    let (addr, task) =
        crate::metrics::serve(&settings.metrics.listen, scrape, ctx.stop.clone()).await?;
    if addr.ip().is_loopback() {
        tracing::info!(%addr, "metrics and health endpoint listening");
    } else {
        tracing::warn!(%addr, "metrics and health endpoint listening on a non-loopback address: it has no authentication, so firewall it to the scrapers");
    }
    Ok(task)
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
    /// `source edr_eu`, `sink archive`, `store`.
    pub what: String,
    /// Whether it worked.
    pub ok: bool,
    /// What was found, or the error.
    pub detail: String,
}

/// Validated settings are given; this reaches the store, each API and each sink without moving data.
pub async fn check(settings: &Settings) -> Vec<CheckResult> {
    check_reaching(settings, true).await
}

/// `secrelay check --offline` (systemd's `ExecStartPre=`): what can be checked without the network.
/// Settings given are already validated with their secrets resolved (`Settings::load` read every
/// `*_file`, under `$CREDENTIALS_DIRECTORY` when set); this opens the store and builds every source
/// and sink (TLS files, certificates, templates), but sends nothing: no API or receiver is asked,
/// so a vendor outage cannot keep the daemon from starting (it retries with backoff instead).
pub async fn check_offline(settings: &Settings) -> Vec<CheckResult> {
    check_reaching(settings, false).await
}

/// [`check`] when `reach`, else [`check_offline`].
async fn check_reaching(settings: &Settings, reach: bool) -> Vec<CheckResult> {
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
    let setup = SourceSetup {
        http: &settings.http,
        client: &client,
        lookback: None,
    };
    for (id, source) in &settings.sources {
        let outcome = match build_source(id, source, &setup) {
            Ok(_) if !reach => Ok(None),
            Ok(built) => {
                let found = built.partitions().await;
                built.close().await;
                found.map(Some).map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        results.push(match outcome {
            Ok(None) => CheckResult {
                what: format!("source {id}"),
                ok: true,
                detail: "configured (offline: API not asked)".into(),
            },
            Ok(Some(p)) => CheckResult {
                what: format!("source {id}"),
                ok: true,
                detail: format!("{} partitions: {}", p.len(), join(&p)),
            },
            Err(e) => CheckResult {
                what: format!("source {id}"),
                ok: false,
                detail: e,
            },
        });
    }
    let mappings = mappings(&settings.sources);
    for (name, sink) in &settings.sinks {
        let setup = SinkSetup {
            http: &settings.http,
            mappings: &mappings,
            store: check_store.as_ref(),
        };
        let outcome = match build_sink(name, sink, &setup) {
            Ok(_) if !reach => Ok("configured (offline: receiver not asked)".to_string()),
            Ok(mut built) => built
                .check()
                .await
                .map(|()| AnySink::checked(sink))
                .map_err(|e| e.to_string()),
            Err(e) => Err(crate::sinks::SinkError::Fatal {
                sink: name.clone(),
                detail: e.to_string(),
            }
            .to_string()),
        };
        results.push(CheckResult {
            what: format!("sink {name}"),
            ok: outcome.is_ok(),
            detail: outcome.unwrap_or_else(|e| e),
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
