//! The timeline harness: seeds, a state database on tmpfs, the real scheduler run until a source
//! has caught up, restarts, and the oracle's exactly-once comparison.
//!
//! Owns: nothing a vendor knows. Must not: decide what a source owes (each vendor's timeline builds
//! its own oracle from the history it generated). Invariant: a seed replays the same timeline, so
//! every failure is reproducible with `SECRELAY_TIMELINE_SEED`.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use secrelay::scheduler::{run_source, Context, Mode};
use secrelay::settings::SchedulerSettings;
use secrelay::sources::Source;
use secrelay::store::{Access, RejectedRecord, Store};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Seeds per timeline test unless `SECRELAY_TIMELINE_SEEDS` says otherwise.
pub const DEFAULT_SEEDS: u64 = 200;

/// The seeds to run: only `SECRELAY_TIMELINE_SEED` when set, else `0..SECRELAY_TIMELINE_SEEDS`.
pub fn seeds() -> Vec<u64> {
    let number = |name: &str| {
        std::env::var(name).ok().map(|v| {
            v.trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        })
    };
    match number("SECRELAY_TIMELINE_SEED") {
        Some(seed) => vec![seed],
        None => (0..number("SECRELAY_TIMELINE_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect(),
    }
}

/// Seeds run at once: a timeline mostly waits on loopback HTTP and commits, so a few overlap well.
const CONCURRENT_SEEDS: usize = 4;

/// The HTTP client sources are built with: made once per test binary (building one loads the
/// platform's certificates, which would otherwise dominate a timeline's restarts). A restarted
/// source still gets a new source instance, with new tokens and cursors read from the store.
pub fn http_client(settings: &secrelay::settings::HttpSettings) -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| secrelay::sources::http::client(settings).expect("HTTP client"))
        .clone()
}

/// Runs `timeline` for every seed (a few at once), then fails listing each failing seed with its
/// message and the command that replays it.
pub async fn for_each_seed<F, Fut>(name: &str, timeline: F)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    use futures_util::StreamExt;
    let started = std::time::Instant::now();
    let seeds = seeds();
    let failures: BTreeMap<u64, String> = futures_util::stream::iter(seeds.iter().copied())
        .map(|seed| {
            let run = timeline(seed);
            async move { (seed, run.await) }
        })
        .buffer_unordered(CONCURRENT_SEEDS)
        .filter_map(|(seed, result)| async move { result.err().map(|why| (seed, why)) })
        .collect()
        .await;
    eprintln!(
        "timeline {name}: {} seeds in {:.1} s, {} failed",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    if !failures.is_empty() {
        let listed: Vec<String> = failures
            .iter()
            .take(10)
            .map(|(seed, why)| format!("  seed {seed}: {why}"))
            .collect();
        panic!(
            "timeline {name}: {} of {} seeds failed: {:?}\n{}\nreplay one with: \
             SECRELAY_TIMELINE_SEED={} cargo test --test timelines {name}",
            failures.len(),
            seeds.len(),
            failures.keys().collect::<Vec<_>>(),
            listed.join("\n"),
            failures.keys().next().unwrap_or(&0),
        );
    }
}

/// One outbox row, as the oracle compares it.
#[derive(Debug, Clone)]
pub struct Row {
    /// Stream.
    pub stream: String,
    /// Tenant (`""` when none).
    pub tenant: String,
    /// The event id (the seen-set key).
    pub id: String,
    /// The vendor record.
    pub record: Value,
}

/// A state database the real scheduler commits into, on tmpfs where there is one (the timelines
/// commit thousands of pages; fsync on a disk would dominate).
pub struct Relay {
    _dir: tempfile::TempDir,
    path: PathBuf,
    store: Option<Store>,
}

impl Relay {
    /// A fresh, empty state database.
    pub async fn new() -> Relay {
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("temporary directory");
        let path = dir.path().join("state.db");
        let store = Store::open(&path, Access::Writer)
            .await
            .expect("state database opens");
        Relay {
            _dir: dir,
            path,
            store: Some(store),
        }
    }

    /// The open store.
    pub fn store(&self) -> &Store {
        self.store.as_ref().expect("store is open")
    }

    /// Runs the real scheduler over `source` in backfill mode until every partition reported
    /// `more = false`. Errors name each partition that did not catch up and why.
    pub async fn catch_up<S: Source>(&self, source: &Arc<S>) -> Result<(), String> {
        let ctx = Context::new(
            self.store().clone(),
            SchedulerSettings {
                jitter_secs: 0.0,
                backoff_initial_secs: 0.001,
                backoff_max_secs: 0.001,
                shutdown_grace_secs: 1.0,
            },
            u64::MAX / 2,
            Mode::Backfill {
                max_poll_failures: 5,
            },
            Duration::from_secs(1),
            BTreeMap::new(),
            CancellationToken::new(),
        );
        let reports = run_source(ctx, source.clone(), Duration::from_millis(1)).await;
        let failed: Vec<String> = reports
            .iter()
            .filter(|r| !r.caught_up)
            .map(|r| {
                format!(
                    "{}/{}{}: {}",
                    r.source,
                    r.stream,
                    if r.tenant.is_empty() {
                        String::new()
                    } else {
                        format!("@{}", r.tenant)
                    },
                    r.error.as_deref().unwrap_or("did not catch up")
                )
            })
            .collect();
        if reports.is_empty() {
            return Err("no partition was polled".into());
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }

    /// Closes the store and opens it again, as a restarted process would (rebuild the source too).
    pub async fn restart(&mut self) {
        if let Some(store) = self.store.take() {
            store.close().await;
        }
        self.store = Some(
            Store::open(&self.path, Access::Writer)
                .await
                .expect("state database reopens"),
        );
    }

    /// The ids of every source that committed a page.
    async fn sources(&self) -> BTreeSet<String> {
        self.store()
            .cursor_states()
            .await
            .expect("cursor states")
            .into_iter()
            .map(|c| c.source)
            .collect()
    }

    /// Every outbox row in commit order (no sink runs, so nothing was pruned).
    pub async fn delivered(&self) -> Vec<Row> {
        let store = self.store();
        let sources: Vec<String> = self.sources().await.into_iter().collect();
        let mut rows = Vec::new();
        let mut after = 0;
        loop {
            let batch = store
                .read_batch(after, &sources, 10_000)
                .await
                .expect("outbox readable");
            let Some(last) = batch.last() else { break };
            after = last.seq;
            rows.extend(batch.into_iter().map(|r| Row {
                stream: r.stream,
                tenant: r.tenant,
                id: r.event_id,
                record: serde_json::from_str(&r.record).expect("outbox holds JSON"),
            }));
        }
        rows
    }

    /// The records the sources rejected, for every source.
    pub async fn rejected(&self) -> Vec<RejectedRecord> {
        let store = self.store();
        let mut all = Vec::new();
        for source in self.sources().await {
            all.extend(store.rejected_records(&source).await.expect("rejected"));
        }
        all
    }
}

/// Checks that every id in `want` occurs exactly once in `got` and that `got` holds nothing else;
/// the error lists a few of each kind of difference.
pub fn exactly_once(got: &[String], want: &[String]) -> Result<(), String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for id in got {
        *counts.entry(id).or_default() += 1;
    }
    let wanted: BTreeSet<&str> = want.iter().map(String::as_str).collect();
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .copied()
        .collect();
    let twice: Vec<(&str, usize)> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| (*id, *n))
        .collect();
    let extra: Vec<&str> = counts
        .keys()
        .filter(|id| !wanted.contains(*id))
        .copied()
        .collect();
    if missing.is_empty() && twice.is_empty() && extra.is_empty() {
        return Ok(());
    }
    let few = |items: &[&str]| items.iter().take(5).copied().collect::<Vec<_>>().join(", ");
    Err(format!(
        "{} owed, {} delivered; missing {} [{}]; more than once {} {:?}; unexpected {} [{}]",
        wanted.len(),
        got.len(),
        missing.len(),
        few(&missing),
        twice.len(),
        twice.iter().take(5).collect::<Vec<_>>(),
        extra.len(),
        few(&extra),
    ))
}
