//! The polling half: discover a source's partitions, then one loop per partition that polls,
//! commits and waits.
//!
//! Must not: encode or deliver. Invariant: the cursor a poll starts from is the one committed last;
//! on error nothing is committed and the wait is at least the vendor's `Retry-After`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::{with_jitter, Context, Mode, Room};
use crate::event::Partition;
use crate::sources::{Source, SourceError};

/// How often a running daemon looks for new tenants.
const REDISCOVER_EVERY: Duration = Duration::from_secs(3600);
/// How often a paused source checks whether the outbox has room again.
const PAUSED_RECHECK: Duration = Duration::from_millis(500);

/// A page with at most this many bytes of records has its next page fetched while it is still
/// being compressed: holding two such pages costs little, and small pages (Sophos: 1,000 records,
/// under 1 MB) would otherwise wait for each compression before each fetch. A larger page (Code42:
/// 10,000 records, ~13 MB) is let go before the next fetch starts.
const EARLY_FETCH_MAX_BYTES: i64 = 2 << 20;

/// What one partition did during this run.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    /// Source id.
    pub source: String,
    /// Stream.
    pub stream: String,
    /// Tenant (`""` when none).
    pub tenant: String,
    /// Events appended to the outbox.
    pub appended: u64,
    /// Events dropped as already seen.
    pub duplicates: u64,
    /// Backfill: the partition reached the vendor's present.
    pub caught_up: bool,
    /// Why the partition was given up, if it was.
    pub error: Option<String>,
}

/// Runs a source until stopped (daemon) or until each partition caught up (backfill).
pub async fn run_source<S: Source>(
    ctx: Arc<Context>,
    source: Arc<S>,
    interval: Duration,
) -> Vec<PartitionReport> {
    let id = source.id().to_string();
    let mut backoff = ctx.backoff();
    let partitions = loop {
        let found = tokio::select! {
            _ = ctx.stop.cancelled() => {
                close(&*source).await;
                return Vec::new();
            }
            found = source.partitions() => found,
        };
        match found {
            Ok(p) => {
                if let Some(discovery) = ctx.metrics.discovery(&id, false) {
                    discovery.record_recovered();
                }
                break p;
            }
            Err(e) => {
                tracing::error!(source = %id, "discovery failed: {e}");
                if let Some(discovery) = ctx.metrics.discovery(&id, true) {
                    discovery.record_error(e.kind());
                }
                let failures = backoff.failures() + 1;
                if let Mode::Backfill { max_poll_failures } = ctx.mode {
                    if failures >= max_poll_failures {
                        close(&*source).await;
                        return vec![PartitionReport {
                            source: id,
                            stream: "(discovery)".into(),
                            tenant: String::new(),
                            appended: 0,
                            duplicates: 0,
                            caught_up: false,
                            error: Some(e.to_string()),
                        }];
                    }
                }
                if !ctx.pause(backoff.next_delay(e.retry_after())).await {
                    close(&*source).await;
                    return Vec::new();
                }
            }
        }
    };
    tracing::info!(source = %id, partitions = partitions.len(), "polling");
    let mut known: std::collections::BTreeSet<Partition> = partitions.iter().cloned().collect();
    let mut tasks = JoinSet::new();
    for partition in partitions {
        let span = partition_span(&id, &partition);
        tasks.spawn(
            run_partition(ctx.clone(), source.clone(), partition, interval).instrument(span),
        );
    }
    let mut reports = Vec::new();
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(Ok(report)) => reports.push(report),
                Some(Err(e)) => tracing::error!(source = %id, "partition task failed: {e}"),
                None => break,
            },
            // A daemon picks up tenants added after it started.
            _ = tokio::time::sleep(REDISCOVER_EVERY), if ctx.mode == Mode::Daemon => {
                match source.partitions().await {
                    Ok(found) => for partition in found {
                        if known.insert(partition.clone()) {
                            tracing::info!(source = %id, partition = %partition, "new partition discovered");
                            let span = partition_span(&id, &partition);
                            tasks.spawn(run_partition(ctx.clone(), source.clone(), partition, interval).instrument(span));
                        }
                    },
                    Err(e) => tracing::warn!(source = %id, "rediscovery failed (keeping known partitions): {e}"),
                }
            }
        }
    }
    // Every partition has stopped: end the vendor session (a session login logs out), in `run` and
    // `backfill` alike.
    close(&*source).await;
    reports
}

/// The span a partition's task runs in: every line it logs names its source, stream and tenant.
fn partition_span(source: &str, partition: &Partition) -> tracing::Span {
    tracing::info_span!("partition", source = %source, stream = %partition.stream, tenant = %partition.tenant)
}

/// How long ending a vendor session may hold up a stop.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// Ends the source's vendor session, giving up after [`CLOSE_WITHIN`] so that an unreachable
/// vendor cannot hold up a stop (the session then expires on its own).
async fn close<S: Source>(source: &S) {
    if tokio::time::timeout(CLOSE_WITHIN, source.close())
        .await
        .is_err()
    {
        tracing::warn!(source = %source.id(), "ending the vendor session timed out; it will expire on its own");
    }
}

/// Polls one partition: wait for outbox room, poll from the committed cursor, commit, repeat.
async fn run_partition<S: Source>(
    ctx: Arc<Context>,
    source: Arc<S>,
    partition: Partition,
    interval: Duration,
) -> PartitionReport {
    let id = source.id().to_string();
    let mut report = PartitionReport {
        source: id.clone(),
        stream: partition.stream.clone(),
        tenant: partition.tenant.clone(),
        appended: 0,
        duplicates: 0,
        caught_up: false,
        error: None,
    };
    let metrics = ctx
        .metrics
        .partition(&id, &partition.stream, &partition.tenant);
    let mut backoff = ctx.backoff();
    // Set while back-pressure holds this partition; how many horizon warnings were given.
    let mut paused_since: Option<Instant> = None;
    let mut horizon_warned = 0u8;
    // Set while the source says `more` without moving its cursor (see below); logged once.
    let mut stalled = false;
    // The next page, fetched while the last one committed (see `Prefetch`); dropping it aborts it.
    let mut prefetched: Option<Prefetch> = None;
    while !ctx.stop.is_cancelled() {
        let waiting = Instant::now();
        let (cursor, polled) = if let Some(mut next) = prefetched.take() {
            // It started from the cursor committed last, after a room check that counted the page
            // then committing: its page is this iteration's poll. A stop abandons it.
            let joined = tokio::select! {
                _ = ctx.stop.cancelled() => break,
                joined = &mut next.task => joined,
            };
            let (polled, took) = match joined {
                Ok(done) => done,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => break,
            };
            metrics.observe_latency(took);
            (next.cursor.take(), polled)
        } else {
            // Back-pressure: never poll while a sink this source routes to is a share behind.
            match ctx.room_for(&id).await {
                Ok(Room::Free) => {
                    metrics.paused.store(false, Ordering::Relaxed);
                    if let Some(since) = paused_since.take() {
                        tracing::info!(source = %id, partition = %partition,
                        paused_secs = since.elapsed().as_secs(), "sinks caught up: resuming");
                        horizon_warned = 0;
                    }
                }
                Ok(full) => {
                    metrics.paused.store(true, Ordering::Relaxed);
                    let newly = paused_since.is_none();
                    let since = *paused_since.get_or_insert_with(Instant::now);
                    let why = match &full {
                    Room::SinkBehind { sink, bytes, share } => format!(
                        "paused: sink {sink} is {bytes} bytes behind, its share of outbox.max_bytes is {share}"
                    ),
                    Room::OutboxFull { bytes } => {
                        format!("paused: the outbox holds {bytes} bytes, its cap is {}", ctx.outbox_cap)
                    }
                    Room::Free => String::new(),
                };
                    if newly {
                        tracing::warn!(source = %id, partition = %partition, "{why}; polling resumes when it catches up");
                        let _ = ctx
                            .store
                            .record_poll_error(&id, &partition, &why, Utc::now())
                            .await;
                    }
                    // A vendor that keeps only so much history turns a long pause into loss: say so
                    // at half and at three quarters of its horizon, while there is time to act.
                    if let Some(horizon) = source.horizon() {
                        let paused = since.elapsed();
                        let level = if paused >= horizon.mul_f64(0.75) {
                            2
                        } else if paused >= horizon / 2 {
                            1
                        } else {
                            0
                        };
                        if level > horizon_warned {
                            horizon_warned = level;
                            let left = horizon.saturating_sub(paused);
                            let message = format!(
                            "{why}; paused for {}s of the vendor's {}s horizon: what is not fetched in the next {}s is lost",
                            paused.as_secs(),
                            horizon.as_secs(),
                            left.as_secs()
                        );
                            if level == 2 {
                                tracing::error!(source = %id, partition = %partition, "{message}");
                            } else {
                                tracing::warn!(source = %id, partition = %partition, "{message}");
                            }
                            let _ = ctx
                                .store
                                .record_poll_error(&id, &partition, &message, Utc::now())
                                .await;
                        }
                    }
                    if !ctx.pause(PAUSED_RECHECK).await {
                        break;
                    }
                    continue;
                }
                Err(e) => {
                    if !store_failed(&ctx, &id, &partition, &metrics, &mut backoff, &e).await {
                        break;
                    }
                    continue;
                }
            }

            let cursor = match ctx.store.cursor(&id, &partition).await {
                Ok(c) => c,
                Err(e) => {
                    if !store_failed(&ctx, &id, &partition, &metrics, &mut backoff, &e).await {
                        break;
                    }
                    continue;
                }
            };
            // A stop abandons the request in flight; nothing of it was committed.
            let started = Instant::now();
            let polled = tokio::select! {
                _ = ctx.stop.cancelled() => break,
                polled = source.poll(&partition, cursor.as_deref()) => polled,
            };
            metrics.observe_latency(started.elapsed());
            (cursor, polled)
        };
        let mut page = match polled {
            Ok(page) => page,
            Err(e @ SourceError::BadCursor { .. }) => {
                metrics.record_error(e.kind());
                stop_on_bad_cursor(&ctx, &id, &partition, &e, &mut report).await;
                break;
            }
            Err(e) => {
                tracing::error!(source = %id, partition = %partition, "poll failed: {e}");
                metrics.record_error(e.kind());
                let message = e.to_string();
                if let Err(store_err) = ctx
                    .store
                    .record_poll_error(&id, &partition, &message, Utc::now())
                    .await
                {
                    tracing::error!(source = %id, "{store_err}");
                }
                let delay = backoff.next_delay(e.retry_after());
                if let Mode::Backfill { max_poll_failures } = ctx.mode {
                    if backoff.failures() >= max_poll_failures {
                        report.error = Some(message);
                        break;
                    }
                }
                tracing::debug!(source = %id, partition = %partition, delay_ms = delay.as_millis() as u64, "retrying");
                if !ctx.pause(delay).await {
                    break;
                }
                continue;
            }
        };
        if let Some(why) = &page.cursor_clamped {
            tracing::warn!(source = %id, partition = %partition, "cursor clamped: {why}");
            metrics.cursor_clamped.fetch_add(1, Ordering::Relaxed);
        }
        // "More is waiting" from a cursor that did not move would poll the same page forever, an
        // fsynced commit each time: treat it as a failed poll (backoff; it ends a backfill).
        let stuck = page.more
            && page
                .cursor
                .as_deref()
                .is_none_or(|next| Some(next) == cursor.as_deref());
        // How long this page kept the loop waiting (its fetch, beyond the last commit), and how
        // long its commit took: the debug log's view of which stage holds a backfill up.
        let waited = waiting.elapsed();
        let committing = Instant::now();
        // What the loop reports of the page's events, taken before the commit lets them go.
        let polled_events = page.events.len() as u64;
        let newest = page.events.iter().map(|e| e.time).max();
        let page_bytes: i64 = page
            .events
            .iter()
            .map(|e| e.record.as_str().len() as i64)
            .sum();
        // Overlap: while this page commits, fetch the next one from the cursor it will store, if
        // the vendor says more is waiting and the outbox has room for both pages. A large page is
        // compressed and let go first, so a partition holds one large response body at a time.
        let fetch_next = page.more && !stuck;
        let early = page_bytes <= EARLY_FETCH_MAX_BYTES;
        if fetch_next && early {
            prefetched = Prefetch::start(&ctx, &source, &partition, &page, page_bytes as u64).await;
        }
        // The commit is not raced against the stop signal: it finishes or never started.
        let committed = match prepare(&ctx, &id, &partition, &mut page).await {
            Ok(prepared) => {
                if fetch_next && !early {
                    prefetched =
                        Prefetch::start(&ctx, &source, &partition, &page, page_bytes as u64).await;
                }
                commit(&ctx, &id, &partition, prepared).await
            }
            Err(e) => Err(e),
        };
        match committed {
            Ok(summary) => {
                metrics.polled.fetch_add(polled_events, Ordering::Relaxed);
                metrics.new.fetch_add(summary.appended, Ordering::Relaxed);
                metrics
                    .duplicates
                    .fetch_add(summary.duplicates, Ordering::Relaxed);
                if stuck {
                    metrics.record_error("stalled");
                } else {
                    backoff.reset();
                    metrics.record_success(newest, page.more);
                }
                report.appended += summary.appended;
                report.duplicates += summary.duplicates;
                if summary.appended > 0 {
                    // Duplicates counted too: an over-estimate only pauses a little early.
                    ctx.note_appended(&id, page_bytes);
                    ctx.appended.notify_waiters();
                }
                // Only records kept for the first time: one fetched again by an overlapping window
                // is already in the store and was reported then.
                if let (true, Some(first)) = (summary.rejected > 0, page.rejected.first()) {
                    tracing::warn!(source = %id, partition = %partition, rejected = summary.rejected,
                        first = %first.reason, url = %first.url,
                        "records that cannot become events were kept as dead letters (see `secrelay state`)");
                }
                tracing::debug!(source = %id, partition = %partition, appended = summary.appended,
                    duplicates = summary.duplicates, more = page.more,
                    waited_ms = waited.as_millis() as u64,
                    commit_ms = committing.elapsed().as_millis() as u64, "page committed");
            }
            Err(e) => {
                // The next page was asked for from a cursor that did not move: throw it away.
                prefetched = None;
                if !store_failed(&ctx, &id, &partition, &metrics, &mut backoff, &e).await {
                    break;
                }
                continue;
            }
        }
        if stuck {
            let message = "the vendor says more data is waiting but the cursor did not move; \
                           backing off (a source defect or a vendor fault)";
            if !stalled {
                tracing::warn!(source = %id, partition = %partition, cursor = ?cursor, "{message}");
                if let Err(e) = ctx
                    .store
                    .record_poll_error(&id, &partition, message, Utc::now())
                    .await
                {
                    tracing::error!(source = %id, "{e}");
                }
                stalled = true;
            }
            let delay = backoff.next_delay(None);
            if let Mode::Backfill { max_poll_failures } = ctx.mode {
                if backoff.failures() >= max_poll_failures {
                    report.error = Some(message.to_string());
                    break;
                }
            }
            if !ctx.pause(delay).await {
                break;
            }
            continue;
        }
        stalled = false;
        if page.more {
            continue;
        }
        if let Mode::Backfill { .. } = ctx.mode {
            report.caught_up = true;
            break;
        }
        if !ctx
            .pause(with_jitter(interval, ctx.timing.jitter_secs))
            .await
        {
            break;
        }
    }
    report
}

/// The poll of a partition's next page, started while the page before it commits.
///
/// At most one per partition. After a large page it starts once that page was compressed and its
/// events let go (see [`prepare`] and [`EARLY_FETCH_MAX_BYTES`]), so a partition holds one large
/// response body at a time beside the compressed records of the page committing. Dropping it
/// aborts the request: after a stop, or when the commit it depended on failed (its cursor never
/// became the stored one, so nothing it fetched may be committed).
struct Prefetch {
    /// The cursor it was polled from: the cursor of the page being committed.
    cursor: Option<String>,
    /// The poll, and how long it took.
    task: tokio::task::JoinHandle<(Result<crate::event::Page, SourceError>, Duration)>,
}

impl Prefetch {
    /// Starts polling the page after `page` from its cursor, if back-pressure allows a poll
    /// with `page`'s records (`pending` bytes) counted as if already in the outbox. `None`: not
    /// started (no room, or the room could not be measured); the loop then polls the usual way,
    /// after the commit.
    async fn start<S: Source>(
        ctx: &Context,
        source: &Arc<S>,
        partition: &Partition,
        page: &crate::event::Page,
        pending: u64,
    ) -> Option<Prefetch> {
        if !matches!(
            ctx.room_for_with(source.id(), pending).await,
            Ok(Room::Free)
        ) {
            return None;
        }
        let cursor = page.cursor.clone();
        let from = cursor.clone();
        let source = source.clone();
        let partition = partition.clone();
        let task = tokio::spawn(
            async move {
                let started = Instant::now();
                let polled = source.poll(&partition, from.as_deref()).await;
                (polled, started.elapsed())
            }
            .in_current_span(),
        );
        Some(Prefetch { cursor, task })
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Makes a polled page ready to commit and lets its events go: their response body is the
/// largest thing a partition holds, and it is freed before the next page is fetched (see
/// `Prefetch`). `page` keeps its cursor, flags and rejected records.
async fn prepare(
    ctx: &Context,
    id: &str,
    partition: &Partition,
    page: &mut crate::event::Page,
) -> Result<crate::store::PreparedPage, crate::store::StoreError> {
    let prepared = ctx
        .store
        .prepare_page(id, partition, page, Utc::now())
        .await?;
    page.events = Vec::new();
    Ok(prepared)
}

/// Commits a prepared page: the one place the loop writes a page.
async fn commit(
    ctx: &Context,
    id: &str,
    partition: &Partition,
    prepared: crate::store::PreparedPage,
) -> Result<crate::store::CommitSummary, crate::store::StoreError> {
    #[cfg(test)]
    {
        let hook = ctx
            .before_commit
            .lock()
            .ok()
            .and_then(|mut hook| hook.as_mut().map(|run| run()));
        if let Some(hook) = hook {
            hook.await?;
        }
    }
    ctx.store.commit_prepared(id, partition, prepared).await
}

/// How often a partition stopped on an unreadable cursor says so again while the daemon runs.
const BAD_CURSOR_REMINDER: Duration = Duration::from_secs(3600);

/// Stops a partition whose stored cursor cannot be read ([`SourceError::BadCursor`]): retrying
/// cannot help (the same text fails the same way), so it is said at ERROR, recorded in `state`, and
/// in a backfill the partition fails. A daemon keeps this partition stopped (repeating the ERROR
/// hourly) until it is stopped itself, while its other partitions and the sinks go on.
///
/// Why stop and not reset: the cursor is left as it is, so nothing is skipped. A reset would start
/// the partition over from its look-back, silently skipping what lies between the stored position
/// and the look-back (or, for a cursor a newer version wrote, throwing that position away); the
/// operator decides with `secrelay backfill --reset --source ID [--days N]`, which the message names.
async fn stop_on_bad_cursor(
    ctx: &Context,
    id: &str,
    partition: &Partition,
    error: &SourceError,
    report: &mut PartitionReport,
) {
    let message = format!("{error}; this partition stops polling until then");
    tracing::error!(source = %id, partition = %partition, "{message}");
    if let Err(e) = ctx
        .store
        .record_poll_error(id, partition, &message, Utc::now())
        .await
    {
        tracing::error!(source = %id, "{e}");
    }
    report.error = Some(message.clone());
    if ctx.mode == Mode::Daemon {
        loop {
            tokio::select! {
                _ = ctx.stop.cancelled() => break,
                _ = tokio::time::sleep(BAD_CURSOR_REMINDER) => {
                    tracing::error!(source = %id, partition = %partition, "{message}");
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "poll_tests.rs"]
mod tests;

/// A store failure of the partition's loop: logged, counted, then a backoff pause. `false` when
/// the pause was cut short by the stop (the loop ends).
async fn store_failed(
    ctx: &Context,
    id: &str,
    partition: &crate::event::Partition,
    metrics: &crate::metrics::PartitionMetrics,
    backoff: &mut super::backoff::Backoff,
    e: &crate::store::StoreError,
) -> bool {
    tracing::error!(source = %id, partition = %partition, "{e}");
    metrics.record_error("store");
    ctx.pause(backoff.next_delay(None)).await
}
