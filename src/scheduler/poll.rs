//! The polling half: discover a source's partitions, then one loop per partition that polls,
//! commits and waits.
//!
//! Must not: encode or deliver. Invariant: the cursor a poll starts from is the one committed last;
//! on error nothing is committed and the wait is at least the vendor's `Retry-After`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use tokio::task::JoinSet;

use super::{with_jitter, Context, Mode, Room};
use crate::event::Partition;
use crate::sources::{Source, SourceError};

/// How often a running daemon looks for new tenants.
const REDISCOVER_EVERY: Duration = Duration::from_secs(3600);
/// How often a paused source checks whether the outbox has room again.
const PAUSED_RECHECK: Duration = Duration::from_millis(500);

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
            Ok(p) => break p,
            Err(e) => {
                tracing::error!(source = %id, "discovery failed: {e}");
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
        tasks.spawn(run_partition(
            ctx.clone(),
            source.clone(),
            partition,
            interval,
        ));
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
                            tasks.spawn(run_partition(ctx.clone(), source.clone(), partition, interval));
                        }
                    },
                    Err(e) => tracing::warn!(source = %id, "rediscovery failed (keeping known partitions): {e}"),
                }
            }
        }
    }
    // Every partition has stopped: end the vendor session (Tenable.sc logs out), in `run` and
    // `backfill` alike.
    close(&*source).await;
    reports
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
    let mut backoff = ctx.backoff();
    // Set while back-pressure holds this partition; how many horizon warnings were given.
    let mut paused_since: Option<Instant> = None;
    let mut horizon_warned = 0u8;
    // Set while the source says `more` without moving its cursor (see below); logged once.
    let mut stalled = false;
    while !ctx.stop.is_cancelled() {
        // Back-pressure: never poll while a sink this source routes to is a share behind.
        match ctx.room_for(&id).await {
            Ok(Room::Free) => {
                if let Some(since) = paused_since.take() {
                    tracing::info!(source = %id, partition = %partition,
                        paused_secs = since.elapsed().as_secs(), "sinks caught up: resuming");
                    horizon_warned = 0;
                }
            }
            Ok(full) => {
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
                tracing::error!(source = %id, partition = %partition, "{e}");
                if !ctx.pause(backoff.next_delay(None)).await {
                    break;
                }
                continue;
            }
        }

        let cursor = match ctx.store.cursor(&id, &partition).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(source = %id, partition = %partition, "{e}");
                if !ctx.pause(backoff.next_delay(None)).await {
                    break;
                }
                continue;
            }
        };
        // A stop abandons the request in flight; nothing of it was committed.
        let polled = tokio::select! {
            _ = ctx.stop.cancelled() => break,
            polled = source.poll(&partition, cursor.as_deref()) => polled,
        };
        let page = match polled {
            Ok(page) => page,
            Err(e @ SourceError::BadCursor { .. }) => {
                stop_on_bad_cursor(&ctx, &id, &partition, &e, &mut report).await;
                break;
            }
            Err(e) => {
                tracing::error!(source = %id, partition = %partition, "poll failed: {e}");
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
        }
        // "More is waiting" from a cursor that did not move would poll the same page forever, an
        // fsynced commit each time: treat it as a failed poll (backoff; it ends a backfill).
        let stuck = page.more
            && page
                .cursor
                .as_deref()
                .is_none_or(|next| Some(next) == cursor.as_deref());
        // The commit is not raced against the stop signal: it finishes or never started.
        match ctx
            .store
            .commit_page(&id, &partition, &page, Utc::now())
            .await
        {
            Ok(summary) => {
                if !stuck {
                    backoff.reset();
                }
                report.appended += summary.appended;
                report.duplicates += summary.duplicates;
                if summary.appended > 0 {
                    // Duplicates counted too: an over-estimate only pauses a little early.
                    let bytes = page
                        .events
                        .iter()
                        .map(|e| e.record.get().len() as i64)
                        .sum();
                    ctx.note_appended(&id, bytes);
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
                    duplicates = summary.duplicates, more = page.more, "page committed");
            }
            Err(e) => {
                tracing::error!(source = %id, partition = %partition, "{e}");
                if !ctx.pause(backoff.next_delay(None)).await {
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
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::event::Page;
    use crate::settings::SchedulerSettings;
    use crate::store::{Access, Store};

    /// A source whose vendor always says "more" but whose cursor stops moving after the first page.
    struct StuckSource {
        polls: AtomicU64,
        closes: AtomicU64,
    }

    impl Source for StuckSource {
        fn id(&self) -> &str {
            "stuck"
        }

        async fn partitions(&self) -> Result<Vec<Partition>, SourceError> {
            Ok(vec![Partition::new("events", "")])
        }

        async fn poll(&self, _: &Partition, _: Option<&str>) -> Result<Page, SourceError> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            Ok(Page {
                cursor: Some("same".into()),
                more: true,
                ..Page::default()
            })
        }

        async fn close(&self) {
            self.closes.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// No jitter, backoff in tens of milliseconds.
    fn fast_timing() -> SchedulerSettings {
        SchedulerSettings {
            jitter_secs: 0.0,
            backoff_initial_secs: 0.05,
            backoff_max_secs: 0.1,
            shutdown_grace_secs: 1.0,
        }
    }

    async fn context(dir: &tempfile::TempDir, mode: Mode) -> Arc<Context> {
        let store = Store::open(&dir.path().join("state.db"), Access::Writer)
            .await
            .unwrap();
        Context::new(
            store,
            fast_timing(),
            u64::MAX / 2,
            mode,
            Duration::from_secs(1),
            BTreeMap::new(),
            tokio_util::sync::CancellationToken::new(),
        )
    }

    #[tokio::test]
    async fn more_without_a_moving_cursor_backs_off_instead_of_spinning() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(&dir, Mode::Daemon).await;
        let source = Arc::new(StuckSource {
            polls: AtomicU64::new(0),
            closes: AtomicU64::new(0),
        });
        let run = tokio::spawn(run_source(
            ctx.clone(),
            source.clone(),
            Duration::from_secs(60),
        ));
        tokio::time::sleep(Duration::from_millis(400)).await;
        ctx.stop.cancel();
        run.await.unwrap();
        let polls = source.polls.load(Ordering::SeqCst);
        // Backing off 50, 100, 100, … ms: a handful of polls, where a hot loop makes thousands.
        assert!((2..=10).contains(&polls), "{polls} polls in 400 ms");
        let state = ctx.store.cursor_states().await.unwrap();
        let error = state[0].last_error.as_deref().unwrap_or_default();
        assert!(error.contains("cursor did not move"), "{error:?}");
        assert_eq!(
            source.closes.load(Ordering::SeqCst),
            1,
            "closed once on stop"
        );
    }

    #[tokio::test]
    async fn a_backfill_whose_cursor_does_not_move_ends_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(
            &dir,
            Mode::Backfill {
                max_poll_failures: 3,
            },
        )
        .await;
        let source = Arc::new(StuckSource {
            polls: AtomicU64::new(0),
            closes: AtomicU64::new(0),
        });
        let reports = run_source(ctx, source.clone(), Duration::from_secs(60)).await;
        assert_eq!(reports.len(), 1);
        assert!(!reports[0].caught_up);
        let error = reports[0].error.as_deref().unwrap_or_default();
        assert!(error.contains("cursor did not move"), "{error:?}");
        assert_eq!(
            source.polls.load(Ordering::SeqCst),
            4,
            "one page, then 3 stuck"
        );
    }

    /// A source whose stored cursor can never be read.
    struct BadCursorSource {
        polls: AtomicU64,
    }

    impl Source for BadCursorSource {
        fn id(&self) -> &str {
            "unreadable"
        }

        async fn partitions(&self) -> Result<Vec<Partition>, SourceError> {
            Ok(vec![Partition::new("events", "")])
        }

        async fn poll(&self, _: &Partition, _: Option<&str>) -> Result<Page, SourceError> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            Err(SourceError::BadCursor {
                detail: "unreadable events cursor: expected value at line 1 column 1".into(),
            })
        }
    }

    #[tokio::test]
    async fn an_unreadable_cursor_stops_its_partition_loudly_instead_of_retrying() {
        // A daemon: polled once, the error recorded for `state`, the cursor left as it was.
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(&dir, Mode::Daemon).await;
        let source = Arc::new(BadCursorSource {
            polls: AtomicU64::new(0),
        });
        let run = tokio::spawn(run_source(
            ctx.clone(),
            source.clone(),
            Duration::from_secs(60),
        ));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            source.polls.load(Ordering::SeqCst),
            1,
            "no retries with backoff: the same cursor fails the same way"
        );
        assert!(!run.is_finished(), "the daemon keeps running");
        let state = ctx.store.cursor_states().await.unwrap();
        let error = state[0].last_error.as_deref().unwrap_or_default();
        assert!(
            error.contains("backfill --reset") && error.contains("stops polling"),
            "{error:?}"
        );
        assert_eq!(state[0].cursor, None, "nothing reset or moved");
        ctx.stop.cancel();
        let reports = run.await.unwrap();
        assert!(reports[0].error.is_some());

        // A backfill: the partition fails at once, not after `max_poll_failures` polls.
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(
            &dir,
            Mode::Backfill {
                max_poll_failures: 3,
            },
        )
        .await;
        let source = Arc::new(BadCursorSource {
            polls: AtomicU64::new(0),
        });
        let reports = run_source(ctx, source.clone(), Duration::from_secs(60)).await;
        assert_eq!(source.polls.load(Ordering::SeqCst), 1);
        assert!(!reports[0].caught_up);
        let error = reports[0].error.as_deref().unwrap_or_default();
        assert!(error.contains("stored cursor unusable"), "{error:?}");
    }

    /// A source that finds one ~600-byte event per poll, forever.
    struct TrickleSource {
        id: &'static str,
        polls: AtomicU64,
        horizon: Option<Duration>,
    }

    impl Source for TrickleSource {
        fn id(&self) -> &str {
            self.id
        }

        async fn partitions(&self) -> Result<Vec<Partition>, SourceError> {
            Ok(vec![Partition::new("events", "")])
        }

        async fn poll(&self, _: &Partition, _: Option<&str>) -> Result<Page, SourceError> {
            let n = self.polls.fetch_add(1, Ordering::SeqCst);
            let text = format!(r#"{{"id":"{n}","pad":"{}"}}"#, "x".repeat(580));
            let raw = serde_json::value::RawValue::from_string(text).unwrap();
            Ok(Page {
                events: vec![crate::event::Event::new(
                    n.to_string(),
                    Utc::now(),
                    crate::event::Severity::new(3),
                    &raw,
                )],
                cursor: Some(n.to_string()),
                more: false,
                ..Page::default()
            })
        }

        fn horizon(&self) -> Option<Duration> {
            self.horizon
        }
    }

    /// A receiver that takes everything at once.
    struct AcceptingSink;

    impl crate::sinks::Sink for AcceptingSink {
        fn name(&self) -> &str {
            "healthy"
        }

        async fn deliver(
            &mut self,
            _: &[crate::store::OutboxRecord],
        ) -> Result<crate::sinks::Delivered, crate::sinks::SinkError> {
            Ok(crate::sinks::Delivered::default())
        }

        async fn check(&mut self) -> Result<(), crate::sinks::SinkError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_stuck_sink_pauses_only_the_sources_routed_to_it_and_warns_before_the_horizon() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db"), Access::Writer)
            .await
            .unwrap();
        // Two sinks share 4,000 bytes: 2,000 each, about three events.
        let routes = BTreeMap::from([
            ("routed_to_stuck".to_string(), vec!["stuck".to_string()]),
            ("routed_to_healthy".to_string(), vec!["healthy".to_string()]),
        ]);
        let ctx = Context::new(
            store,
            fast_timing(),
            4000,
            Mode::Daemon,
            Duration::from_secs(1),
            routes,
            tokio_util::sync::CancellationToken::new(),
        );
        assert_eq!(ctx.sink_share, 2000);
        let stuck = Arc::new(TrickleSource {
            id: "routed_to_stuck",
            polls: AtomicU64::new(0),
            horizon: Some(Duration::from_millis(1600)),
        });
        let healthy = Arc::new(TrickleSource {
            id: "routed_to_healthy",
            polls: AtomicU64::new(0),
            horizon: None,
        });
        let interval = Duration::from_millis(20);
        let tasks = [
            tokio::spawn(run_source(ctx.clone(), stuck.clone(), interval)),
            tokio::spawn(run_source(ctx.clone(), healthy.clone(), interval)),
        ];
        // Only the healthy sink runs; nothing ever takes the stuck sink's records.
        let sink = tokio::spawn(crate::scheduler::run_sink(
            ctx.clone(),
            AcceptingSink,
            vec!["routed_to_healthy".to_string()],
            100,
            Duration::ZERO,
        ));
        // Wait (generously: machines under load) until the stuck source has paused.
        let partition_error = |source: &'static str| {
            let ctx = ctx.clone();
            async move {
                ctx.store
                    .cursor_states()
                    .await
                    .unwrap()
                    .into_iter()
                    .find(|p| p.source == source)
                    .and_then(|p| p.last_error)
                    .unwrap_or_default()
            }
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !partition_error("routed_to_stuck")
            .await
            .contains("paused: sink stuck is")
        {
            assert!(std::time::Instant::now() < deadline, "never paused");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stuck_polls = stuck.polls.load(Ordering::SeqCst);
        assert!(
            (3..=5).contains(&stuck_polls),
            "polls until its sink is a share behind (about 4 events): {stuck_polls}"
        );
        // The healthy source keeps polling while the stuck one stays paused, past half of its
        // horizon, which is said before anything is lost.
        let healthy_polls = healthy.polls.load(Ordering::SeqCst);
        loop {
            let error = partition_error("routed_to_stuck").await;
            if error.contains("horizon") && healthy.polls.load(Ordering::SeqCst) > healthy_polls + 5
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the healthy source polled {} times after the pause; the stuck one says {error:?}",
                healthy.polls.load(Ordering::SeqCst) - healthy_polls
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ctx.stop.cancel();
        for task in tasks {
            task.await.unwrap();
        }
        sink.await.unwrap();
        assert_eq!(
            stuck.polls.load(Ordering::SeqCst),
            stuck_polls,
            "the stuck source stays paused"
        );
        let states = ctx.store.cursor_states().await.unwrap();
        let running = states
            .iter()
            .find(|p| p.source == "routed_to_healthy")
            .unwrap();
        assert_eq!(running.last_error, None);
    }
}
