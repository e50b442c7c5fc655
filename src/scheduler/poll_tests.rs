//! The polling loop against fake sources: spin guards, unreadable cursors, per-sink
//! back-pressure and vendor horizons, on real time and a real store.

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
    // At least 400 ms, and until the stall is on record: on a loaded host the second poll (the
    // first that finds the cursor where it was) can take longer than that.
    let started = std::time::Instant::now();
    let recorded = || async {
        let state = ctx.store.cursor_states().await.unwrap();
        state.first().and_then(|s| s.last_error.clone())
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    while recorded().await.is_none() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed_ms = started.elapsed().as_millis() as u64;
    ctx.stop.cancel();
    run.await.unwrap();
    let polls = source.polls.load(Ordering::SeqCst);
    // Backing off 50, 100, 100, … ms: a handful of polls (about one per 100 ms), where a hot loop
    // makes thousands.
    assert!(
        (2..=4 + elapsed_ms / 50).contains(&polls),
        "{polls} polls in {elapsed_ms} ms"
    );
    let error = recorded().await.unwrap_or_default();
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
    type Encoded = ();

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
        if error.contains("horizon") && healthy.polls.load(Ordering::SeqCst) > healthy_polls + 5 {
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

/// A source of three pages (`None` → a, `"1"` → b, `"2"` → c; "more" after a and b) that
/// records the cursor of every poll and publishes how many polls it has answered.
struct PagedSource {
    /// Bytes of padding in each page's record.
    padding: usize,
    polls: std::sync::Mutex<Vec<Option<String>>>,
    answered: tokio::sync::watch::Sender<usize>,
    /// Each answered page's body, in the order served; its events are slices of it.
    bodies: std::sync::Mutex<Vec<crate::shared_text::SharedText>>,
    /// For each poll after the first: the body served before was still held by someone else
    /// when the poll began.
    previous_body_held: std::sync::Mutex<Vec<bool>>,
}

impl PagedSource {
    fn new() -> Arc<Self> {
        PagedSource::with_padding(0)
    }

    /// Pages whose record carries `padding` bytes more (a large page).
    fn with_padding(padding: usize) -> Arc<Self> {
        Arc::new(PagedSource {
            padding,
            polls: std::sync::Mutex::new(Vec::new()),
            answered: tokio::sync::watch::channel(0).0,
            bodies: std::sync::Mutex::new(Vec::new()),
            previous_body_held: std::sync::Mutex::new(Vec::new()),
        })
    }

    fn polls(&self) -> Vec<Option<String>> {
        self.polls.lock().unwrap().clone()
    }
}

impl Source for PagedSource {
    fn id(&self) -> &str {
        "paged"
    }

    async fn partitions(&self) -> Result<Vec<Partition>, SourceError> {
        Ok(vec![Partition::new("events", "")])
    }

    async fn poll(&self, _: &Partition, cursor: Option<&str>) -> Result<Page, SourceError> {
        self.polls.lock().unwrap().push(cursor.map(str::to_string));
        if let Some(previous) = self.bodies.lock().unwrap().last() {
            self.previous_body_held
                .lock()
                .unwrap()
                .push(!previous.is_only_handle());
        }
        let (id, next, more) = match cursor {
            None => ("a", "1", true),
            Some("1") => ("b", "2", true),
            Some("2") => ("c", "3", false),
            Some(other) => panic!("polled from {other}"),
        };
        // A body the page's event is a slice of, as a vendor source reads it.
        let body = crate::shared_text::SharedText::from(if self.padding == 0 {
            format!(r#"{{"id":"{id}"}}"#)
        } else {
            format!(r#"{{"id":"{id}","pad":"{}"}}"#, "x".repeat(self.padding))
        });
        let raw: &serde_json::value::RawValue = serde_json::from_str(body.as_str()).unwrap();
        let event = crate::event::Event::in_body(
            id.to_string(),
            Utc::now(),
            crate::event::Severity::new(1),
            raw,
            &body,
        );
        assert!(event.record.same_buffer_as(&body));
        self.bodies.lock().unwrap().push(body.clone());
        let page = Page {
            events: vec![event],
            cursor: Some(next.to_string()),
            more,
            ..Page::default()
        };
        self.answered.send_modify(|n| *n += 1);
        Ok(page)
    }
}

/// Runs `hook` before each page commit, with the commit's number (0 first).
fn before_each_commit(
    ctx: &Context,
    hook: impl Fn(usize) -> futures_util::future::BoxFuture<'static, Result<(), crate::store::StoreError>>
        + Send
        + 'static,
) {
    let mut commits = 0;
    *ctx.before_commit.lock().unwrap() = Some(Box::new(move || {
        commits += 1;
        hook(commits - 1)
    }));
}

/// The ids in the outbox, in log order.
async fn outbox_ids(ctx: &Context) -> Vec<String> {
    let records = ctx
        .store
        .read_batch(0, &["paged".to_string()], 100)
        .await
        .unwrap();
    records.into_iter().map(|r| r.event_id).collect()
}

#[tokio::test]
async fn a_page_lets_go_of_its_body_before_its_commit_and_before_the_next_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(
        &dir,
        Mode::Backfill {
            max_poll_failures: 3,
        },
    )
    .await;
    // Pages above `EARLY_FETCH_MAX_BYTES`.
    let source = PagedSource::with_padding(super::EARLY_FETCH_MAX_BYTES as usize + 1);
    // At each commit's turn, the body of the page being committed must be held by the source's
    // own handle alone: the page's events, which are slices of it, were let go once compressed.
    // And the next page is still fetched during the commit: before commit a (and b) writes, the
    // poll of the page after it is answered.
    let held: Arc<std::sync::Mutex<Vec<bool>>> = Arc::default();
    let overlapped: Arc<std::sync::Mutex<Vec<bool>>> = Arc::default();
    let (bodies, record, overlaps) = (source.clone(), held.clone(), overlapped.clone());
    let answered = source.answered.subscribe();
    before_each_commit(&ctx, move |n| {
        let only = bodies.bodies.lock().unwrap()[n].is_only_handle();
        record.lock().unwrap().push(!only);
        let (mut answered, overlaps) = (answered.clone(), overlaps.clone());
        Box::pin(async move {
            if n < 2 {
                let waited = tokio::time::timeout(
                    Duration::from_secs(3),
                    answered.wait_for(|polls| *polls >= n + 2),
                )
                .await;
                overlaps.lock().unwrap().push(matches!(waited, Ok(Ok(_))));
            }
            Ok(())
        })
    });
    let reports = run_source(ctx.clone(), source.clone(), Duration::from_secs(60)).await;
    assert_eq!(reports[0].appended, 3, "{:?}", reports[0]);
    assert_eq!(*held.lock().unwrap(), vec![false, false, false]);
    // The next page was fetched (during the commit) only once the page before it was let go:
    // one response body at a time.
    assert_eq!(
        *source.previous_body_held.lock().unwrap(),
        vec![false, false]
    );
    assert_eq!(*overlapped.lock().unwrap(), vec![true, true]);
    // And what was compressed is what the outbox holds.
    let records = ctx
        .store
        .read_batch(0, &["paged".to_string()], 10)
        .await
        .unwrap();
    let ids: Vec<&str> = records.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    let pad = "x".repeat(super::EARLY_FETCH_MAX_BYTES as usize + 1);
    assert_eq!(records[1].record, format!(r#"{{"id":"b","pad":"{pad}"}}"#));
}

#[tokio::test]
async fn a_small_page_has_the_next_one_fetched_while_it_is_compressed() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(
        &dir,
        Mode::Backfill {
            max_poll_failures: 3,
        },
    )
    .await;
    let source = PagedSource::new();
    let reports = run_source(ctx.clone(), source.clone(), Duration::from_secs(60)).await;
    assert_eq!(reports[0].appended, 3, "{:?}", reports[0]);
    // Each next poll began while the page before it still held its body: no wait for its
    // compression. (On the test's one-thread runtime, the poll spawned before the compression
    // runs when the compression yields between chunks, as it does after every chunk.)
    assert_eq!(*source.previous_body_held.lock().unwrap(), vec![true, true]);
}

#[tokio::test]
async fn the_next_page_is_fetched_while_the_page_before_it_commits() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(
        &dir,
        Mode::Backfill {
            max_poll_failures: 3,
        },
    )
    .await;
    let source = PagedSource::new();
    // Page a's commit waits (at most 3 s) for the poll of page b to have been answered: only a
    // loop that overlaps the two lets that happen before it.
    let answered = source.answered.subscribe();
    let overlapped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = overlapped.clone();
    before_each_commit(&ctx, move |n| {
        let mut answered = answered.clone();
        let seen = seen.clone();
        Box::pin(async move {
            if n == 0 {
                let waited = tokio::time::timeout(
                    Duration::from_secs(3),
                    answered.wait_for(|polls| *polls >= 2),
                )
                .await;
                seen.store(matches!(waited, Ok(Ok(_))), Ordering::SeqCst);
            }
            Ok(())
        })
    });
    let reports = run_source(ctx.clone(), source.clone(), Duration::from_secs(60)).await;
    assert!(
        overlapped.load(Ordering::SeqCst),
        "page b was not fetched while page a committed"
    );
    assert!(reports[0].caught_up, "{:?}", reports[0]);
    assert_eq!(reports[0].appended, 3);
    assert_eq!(
        source.polls(),
        [None, Some("1".into()), Some("2".into())],
        "each page polled once, from the cursor of the page before it"
    );
    assert_eq!(outbox_ids(&ctx).await, ["a", "b", "c"]);
    let partition = Partition::new("events", "");
    assert_eq!(
        ctx.store
            .cursor("paged", &partition)
            .await
            .unwrap()
            .as_deref(),
        Some("3")
    );
}

#[tokio::test]
async fn a_failed_commit_throws_away_the_page_fetched_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(
        &dir,
        Mode::Backfill {
            max_poll_failures: 3,
        },
    )
    .await;
    let source = PagedSource::new();
    // The first commit (page a) fails, once page b, fetched from a's cursor, is in hand.
    let answered = source.answered.subscribe();
    before_each_commit(&ctx, move |n| {
        let mut answered = answered.clone();
        Box::pin(async move {
            if n > 0 {
                return Ok(());
            }
            let _ = tokio::time::timeout(
                Duration::from_secs(3),
                answered.wait_for(|polls| *polls >= 2),
            )
            .await;
            Err(crate::store::StoreError::Query {
                doing: "committing a page (failed by the test)",
                source: sqlx::Error::PoolClosed,
            })
        })
    });
    let reports = run_source(ctx.clone(), source.clone(), Duration::from_secs(60)).await;
    assert!(reports[0].caught_up, "{:?}", reports[0]);
    // Page b was fetched against a cursor that never moved: it is fetched again, after page a
    // is polled again from the stored cursor and committed; nothing is lost or skipped.
    assert_eq!(
        source.polls(),
        [
            None,
            Some("1".into()),
            None,
            Some("1".into()),
            Some("2".into())
        ]
    );
    assert_eq!(outbox_ids(&ctx).await, ["a", "b", "c"]);
    assert_eq!(reports[0].appended, 3);
}
