//! The scheduler's timing on paused tokio time, with a fake source and a fake sink: linger,
//! deadlines, back-pressure, backoff and stops take seconds of the scheduler's time and
//! milliseconds of real time.
//!
//! The store is the real SQLite one, in a temporary directory on tmpfs where there is one. It does
//! not fit `start_paused = true` as such: its queries run on a thread of their own, and while the
//! runtime waits for one a paused clock jumps to the next timer, so the pool's 30 s acquire timeout
//! fired while opening it. So each test opens the store on the real clock, then pauses time, and a
//! heartbeat task keeps a timer 1 ms ahead and lets at least 50 µs of real time pass per step:
//! while a query runs the clock creeps on at most 20 times faster than real time instead of
//! leaping. Timers never fire early, so lower bounds are exact; upper bounds allow a second for the
//! queries in between (a loaded machine), and the end of a loop is timed when it closes its sink,
//! before the queries it makes on the way out. A test runs for a few seconds of the scheduler's
//! time, a fraction of that in real time.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{run_sink, run_source, Context, Mode, SinkReport};
use crate::event::{Event, Page, Partition, Severity};
use crate::settings::SchedulerSettings;
use crate::sinks::{BatchEncoder, Delivered, Sink, SinkError};
use crate::sources::{Source, SourceError};
use crate::store::{Access, OutboxRecord, Store};

const SOURCE: &str = "fake";
const SINK: &str = "siem";

/// What the fake sink does with one batch.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    Accept,
    Fail,
    /// Never answers (a receiver that stopped reading).
    Hang,
    /// Closes the store, says the stop came, and accepts: the loop must then record the batch
    /// with a store that fails.
    AcceptThenBreakStore,
    /// Closes the store, says the stop came, and fails.
    FailThenBreakStore,
}

/// One call of `deliver`: when (scheduler time since the test began), and the event ids.
#[derive(Debug, Clone)]
struct Call {
    at: Duration,
    ids: Vec<String>,
    step: Step,
    /// What the loop encoded ahead for this batch (the sink's encoder writes its ids joined by
    /// `,`); `None` when it came to `deliver` to encode.
    encoded: Option<String>,
}

struct FakeSink {
    t0: Instant,
    steps: VecDeque<Step>,
    calls: Arc<Mutex<Vec<Call>>>,
    closed_at: Arc<Mutex<Option<Duration>>>,
    store: Store,
    stop: CancellationToken,
    /// Has an encoder (a batch's ids joined by `,`) for the loop to run ahead.
    encodes: bool,
}

impl FakeSink {
    /// Records the call and answers as its step says.
    async fn answer(
        &mut self,
        batch: &[OutboxRecord],
        encoded: Option<String>,
    ) -> Result<Delivered, SinkError> {
        let step = self.steps.pop_front().unwrap_or(Step::Accept);
        self.calls.lock().unwrap().push(Call {
            at: self.t0.elapsed(),
            ids: batch.iter().map(|r| r.event_id.clone()).collect(),
            step,
            encoded,
        });
        let fail = || SinkError::Unavailable {
            sink: SINK.into(),
            detail: "scripted failure".into(),
            retry_after: None,
        };
        match step {
            Step::Accept => Ok(Delivered::default()),
            Step::Fail => Err(fail()),
            Step::Hang => std::future::pending().await,
            Step::AcceptThenBreakStore => {
                self.store.close().await;
                self.stop.cancel();
                Ok(Delivered::default())
            }
            Step::FailThenBreakStore => {
                self.store.close().await;
                self.stop.cancel();
                Err(fail())
            }
        }
    }
}

impl Sink for FakeSink {
    type Encoded = Vec<u8>;

    fn name(&self) -> &str {
        SINK
    }

    async fn deliver(&mut self, batch: &[OutboxRecord]) -> Result<Delivered, SinkError> {
        self.answer(batch, None).await
    }

    fn encoder(&self) -> Option<BatchEncoder<Vec<u8>>> {
        let encode = |batch: &[OutboxRecord]| {
            let ids: Vec<&str> = batch.iter().map(|r| r.event_id.as_str()).collect();
            ids.join(",").into_bytes()
        };
        self.encodes
            .then(|| Arc::new(encode) as BatchEncoder<Vec<u8>>)
    }

    async fn deliver_encoded(
        &mut self,
        batch: &[OutboxRecord],
        encoded: Vec<u8>,
    ) -> Result<Delivered, SinkError> {
        let encoded = String::from_utf8(encoded).expect("ids are text");
        self.answer(batch, Some(encoded)).await
    }

    async fn check(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    async fn close(&mut self) {
        *self.closed_at.lock().unwrap() = Some(self.t0.elapsed());
    }
}

/// A source that returns `per_poll` new events each poll, with a cursor that moves.
struct FakeSource {
    per_poll: u64,
    polls: AtomicU64,
}

impl Source for FakeSource {
    fn id(&self) -> &str {
        SOURCE
    }

    async fn partitions(&self) -> Result<Vec<Partition>, SourceError> {
        Ok(vec![Partition::new("events", "")])
    }

    async fn poll(&self, _: &Partition, _: Option<&str>) -> Result<Page, SourceError> {
        let n = self.polls.fetch_add(1, Ordering::SeqCst);
        let events = (0..self.per_poll)
            .map(|i| event(&format!("e{:04}", n * self.per_poll + i)))
            .collect();
        Ok(Page {
            events,
            cursor: Some(format!("{n}")),
            ..Page::default()
        })
    }
}

fn event(id: &str) -> Event {
    let record = serde_json::value::RawValue::from_string(format!(r#"{{"id":"{id}"}}"#)).unwrap();
    Event::new(id.to_string(), Utc::now(), Severity::new(5), &record)
}

struct Rig {
    _dir: tempfile::TempDir,
    ctx: Arc<Context>,
    calls: Arc<Mutex<Vec<Call>>>,
    closed_at: Arc<Mutex<Option<Duration>>>,
    t0: Instant,
}

struct Timing {
    mode: Mode,
    backoff: (f64, f64),
    grace_secs: f64,
    drain_within: Duration,
    outbox_cap: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            mode: Mode::Daemon,
            backoff: (1.0, 8.0),
            grace_secs: 2.0,
            drain_within: Duration::from_secs(3600),
            outbox_cap: u64::MAX / 2,
        }
    }
}

async fn rig(timing: Timing) -> Rig {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .unwrap();
    let store = Store::open(&dir.path().join("state.db"), Access::Writer)
        .await
        .unwrap();
    tokio::time::pause();
    tokio::spawn(async {
        loop {
            // Blocking this runtime's only thread on purpose: the store's thread goes on.
            std::thread::sleep(Duration::from_micros(50));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let ctx = Context::new(
        store,
        SchedulerSettings {
            jitter_secs: 0.0,
            backoff_initial_secs: timing.backoff.0,
            backoff_max_secs: timing.backoff.1,
            shutdown_grace_secs: timing.grace_secs,
        },
        timing.outbox_cap,
        timing.mode,
        timing.drain_within,
        BTreeMap::from([(SOURCE.to_string(), vec![SINK.to_string()])]),
        CancellationToken::new(),
    );
    Rig {
        _dir: dir,
        ctx,
        calls: Arc::new(Mutex::new(Vec::new())),
        closed_at: Arc::new(Mutex::new(None)),
        t0: Instant::now(),
    }
}

impl Rig {
    fn sink(&self, steps: &[Step]) -> FakeSink {
        FakeSink {
            t0: self.t0,
            steps: steps.iter().copied().collect(),
            calls: self.calls.clone(),
            closed_at: self.closed_at.clone(),
            store: self.ctx.store.clone(),
            stop: self.ctx.stop.clone(),
            encodes: false,
        }
    }

    fn run_sink(
        &self,
        steps: &[Step],
        batch_size: usize,
        linger: Duration,
    ) -> tokio::task::JoinHandle<SinkReport> {
        tokio::spawn(run_sink(
            self.ctx.clone(),
            self.sink(steps),
            vec![SOURCE.to_string()],
            batch_size,
            linger,
        ))
    }

    /// Commits `ids` as one page, as the polling half does.
    async fn append(&self, ids: &[&str]) {
        let page = Page {
            events: ids.iter().map(|id| event(id)).collect(),
            ..Page::default()
        };
        self.ctx
            .store
            .commit_page(SOURCE, &Partition::new("events", ""), &page, Utc::now())
            .await
            .unwrap();
        self.ctx.appended.notify_waiters();
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits (in scheduler time) until the sink was called `n` times.
    async fn until_calls(&self, n: usize) -> Vec<Call> {
        for _ in 0..100_000 {
            let calls = self.calls();
            if calls.len() >= n {
                return calls;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the sink was called {} times, not {n}", self.calls().len());
    }

    fn since_t0(&self) -> Duration {
        self.t0.elapsed()
    }

    /// When the delivery loop ended (closed its sink).
    fn closed_at(&self) -> Duration {
        self.closed_at.lock().unwrap().expect("the sink was closed")
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Asserts `d` is `want` seconds: not less, and at most a second more.
#[track_caller]
fn about(d: Duration, want: f64) {
    assert!(
        secs(d) >= want - 0.001 && secs(d) <= want + 1.0,
        "{:.3}s where {want}s was expected",
        secs(d)
    );
}

#[tokio::test]
async fn a_short_batch_waits_its_linger_and_a_full_one_goes_at_once() {
    let r = rig(Timing::default()).await;
    let run = r.run_sink(&[], 4, Duration::from_secs(5));
    r.append(&["a", "b"]).await;
    let appended = r.since_t0();
    let calls = r.until_calls(1).await;
    assert_eq!(calls[0].ids, ["a", "b"]);
    about(calls[0].at - appended, 5.0);

    // Four waiting records are a full batch: no linger.
    tokio::time::sleep(Duration::from_secs(3)).await;
    r.append(&["c", "d", "e", "f"]).await;
    let appended = r.since_t0();
    let calls = r.until_calls(2).await;
    assert_eq!(calls[1].ids, ["c", "d", "e", "f"]);
    about(calls[1].at - appended, 0.0);

    r.ctx.stop.cancel();
    let report = run.await.unwrap();
    assert_eq!((report.delivered, report.backlog), (6, 0));
}

/// The batch after a delivered one is read and encoded while that one is recorded, and sent as
/// it was encoded; after a failure the batch is read and encoded again, never sent as encoded
/// for another batch.
#[tokio::test]
async fn the_next_batch_is_encoded_ahead_and_sent_as_encoded() {
    let r = rig(Timing::default()).await;
    r.append(&["a", "b", "c", "d", "e", "f", "g"]).await;
    let mut sink = r.sink(&[Step::Accept, Step::Fail]);
    sink.encodes = true;
    let run = tokio::spawn(run_sink(
        r.ctx.clone(),
        sink,
        vec![SOURCE.to_string()],
        2,
        Duration::ZERO,
    ));
    let calls = r.until_calls(5).await;
    let seen: Vec<(String, Option<&str>)> = calls
        .iter()
        .map(|c| (c.ids.join(","), c.encoded.as_deref()))
        .collect();
    let want = [
        ("a,b", None),
        ("c,d", Some("c,d")),
        ("c,d", None),
        ("e,f", Some("e,f")),
        ("g", Some("g")),
    ];
    let want: Vec<(String, Option<&str>)> =
        want.iter().map(|(ids, e)| (ids.to_string(), *e)).collect();
    assert_eq!(seen, want);
    r.ctx.stop.cancel();
    let report = run.await.unwrap();
    assert_eq!((report.delivered, report.backlog), (7, 0));
}

#[tokio::test]
async fn failed_deliveries_back_off_doubling_then_the_batch_goes_whole() {
    let r = rig(Timing {
        backoff: (2.0, 8.0),
        ..Timing::default()
    })
    .await;
    r.append(&["a", "b", "c"]).await;
    let steps = [Step::Fail, Step::Fail, Step::Fail, Step::Fail, Step::Fail];
    let run = r.run_sink(&steps, 10, Duration::ZERO);
    let calls = r.until_calls(6).await;
    // Each pause is half to all of its step: 2, 4, 8, 8, 8 seconds.
    for (i, step) in [2.0, 4.0, 8.0, 8.0, 8.0].into_iter().enumerate() {
        let pause = secs(calls[i + 1].at - calls[i].at);
        assert!(
            pause >= step / 2.0 - 0.001 && pause <= step + 1.0,
            "pause {i}: {pause:.3}s for a {step}s step"
        );
    }
    assert!(calls.iter().all(|c| c.ids == ["a", "b", "c"]));
    r.ctx.stop.cancel();
    let report = run.await.unwrap();
    assert_eq!((report.delivered, report.backlog), (3, 0));
}

#[tokio::test]
async fn a_stop_gives_a_hung_batch_the_grace_period_and_no_more() {
    let r = rig(Timing {
        grace_secs: 3.0,
        ..Timing::default()
    })
    .await;
    r.append(&["a"]).await;
    let run = r.run_sink(&[Step::Hang], 10, Duration::ZERO);
    r.until_calls(1).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stopped = r.since_t0();
    r.ctx.stop.cancel();
    let report = run.await.unwrap();
    about(r.closed_at() - stopped, 3.0);
    assert_eq!((report.delivered, report.backlog), (0, 1));
    assert_eq!(r.ctx.store.sink_position(SINK).await.unwrap(), 0);
}

#[tokio::test]
async fn a_stop_cuts_a_long_backoff_to_the_grace_period() {
    let r = rig(Timing {
        backoff: (3600.0, 3600.0),
        grace_secs: 2.0,
        ..Timing::default()
    })
    .await;
    r.append(&["a"]).await;
    let run = r.run_sink(&[Step::Fail, Step::Fail], 10, Duration::ZERO);
    r.until_calls(1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stopped = r.since_t0();
    r.ctx.stop.cancel();
    let report = run.await.unwrap();
    // Woken by the stop, it tries once more at once (failing), then waits out the grace period.
    let calls = r.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    about(calls[1].at - stopped, 0.0);
    about(r.closed_at() - stopped, 2.0);
    assert_eq!(report.backlog, 1);
}

#[tokio::test]
async fn a_backfill_drain_ends_at_its_deadline_with_the_rest_left_waiting() {
    let r = rig(Timing {
        mode: Mode::Backfill {
            max_poll_failures: 3,
        },
        backoff: (1.0, 4.0),
        drain_within: Duration::from_secs(20),
        ..Timing::default()
    })
    .await;
    r.append(&["a", "b"]).await;
    let run = r.run_sink(&[Step::Fail; 100], 10, Duration::ZERO);
    r.ctx.sources_done.cancel();
    let report = run.await.unwrap();
    // The deadline is set when the loop first sees it must finish: after the test began, before
    // its first try.
    let first_try = r.calls()[0].at;
    assert!(
        secs(r.closed_at()) >= 20.0 && r.closed_at() - first_try <= Duration::from_secs(21),
        "ended {:?} after the start, {:?} after the first try",
        r.closed_at(),
        r.closed_at() - first_try
    );
    assert_eq!((report.delivered, report.backlog), (0, 2));
    // Backing off 1, 2, 4, 4, … seconds within the 20 s: a handful of tries, not a hot loop.
    let tries = r.calls().len();
    assert!((5..=12).contains(&tries), "{tries} tries");
}

#[tokio::test]
async fn a_backfill_drain_stops_once_the_outbox_is_empty() {
    let r = rig(Timing {
        mode: Mode::Backfill {
            max_poll_failures: 3,
        },
        drain_within: Duration::from_secs(600),
        ..Timing::default()
    })
    .await;
    r.append(&["a", "b", "c"]).await;
    // A short batch while finishing does not linger (an hour here).
    let run = r.run_sink(&[], 10, Duration::from_secs(3600));
    r.ctx.sources_done.cancel();
    let report = run.await.unwrap();
    assert!(
        r.closed_at() < Duration::from_secs(600),
        "{:?}",
        r.closed_at()
    );
    assert_eq!((report.delivered, report.backlog), (3, 0));
}

#[tokio::test]
async fn a_sink_that_falls_a_share_behind_pauses_its_source_until_it_catches_up() {
    let per_poll = 10;
    // Each fake event takes some tens of bytes in the outbox: a cap of a few pages.
    let r = rig(Timing {
        backoff: (1.0, 1.0),
        outbox_cap: 700,
        ..Timing::default()
    })
    .await;
    let source = Arc::new(FakeSource {
        per_poll,
        polls: AtomicU64::new(0),
    });
    let polling = tokio::spawn(run_source(
        r.ctx.clone(),
        source.clone(),
        Duration::from_secs(1),
    ));
    // The receiver is down for its first 40 batches (20 to 40 s at a 1 s backoff with jitter).
    let run = r.run_sink(&[Step::Fail; 40], 1000, Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let paused_at = source.polls.load(Ordering::SeqCst);
    let totals = r.ctx.store.outbox_totals().await.unwrap();
    assert!(
        totals.bytes >= 700 && paused_at < 10,
        "{paused_at} polls, {} bytes waiting",
        totals.bytes
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        source.polls.load(Ordering::SeqCst),
        paused_at,
        "no poll while the sink is a share behind"
    );
    // Once the receiver takes the backlog the source goes on, and nothing was dropped.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let resumed = source.polls.load(Ordering::SeqCst);
    assert!(
        resumed > paused_at + 10,
        "{resumed} polls after {paused_at}"
    );
    r.ctx.stop.cancel();
    polling.await.unwrap();
    let report = run.await.unwrap();
    let delivered: Vec<String> = r
        .calls()
        .into_iter()
        .filter(|c| c.step == Step::Accept)
        .flat_map(|c| c.ids)
        .collect();
    // A poll the stop interrupted is not committed (and was never polled again).
    let polled = source.polls.load(Ordering::SeqCst) * per_poll;
    let expected: Vec<String> = (0..polled).map(|i| format!("e{i:04}")).collect();
    let kept = delivered.len() as u64 + report.backlog as u64;
    assert!(
        kept == polled || kept == polled - per_poll,
        "{kept} events delivered or waiting of {polled} polled"
    );
    assert_eq!(delivered, expected[..delivered.len()]);
}

#[tokio::test]
async fn a_stop_during_a_store_retry_ends_the_loop_within_the_grace_period() {
    // After the receiver took the batch, the store fails to record it: the advance is retried
    // (a long backoff) until the stop, then for the grace period only.
    let r = rig(Timing {
        backoff: (3600.0, 3600.0),
        grace_secs: 2.0,
        ..Timing::default()
    })
    .await;
    r.append(&["a"]).await;
    let run = r.run_sink(&[Step::AcceptThenBreakStore], 10, Duration::ZERO);
    let ended = tokio::time::timeout(Duration::from_secs(120), run).await;
    let report = ended.expect("the loop ended after the stop").unwrap();
    let stopped = r.calls()[0].at;
    about(r.closed_at() - stopped, 2.0);
    assert_eq!(report.delivered, 0, "the store never recorded it");
}

#[tokio::test]
async fn a_stop_during_a_retry_after_a_failed_read_ends_the_loop_within_the_grace_period() {
    // The receiver fails and the store breaks: the next read of the outbox fails too, and its retry
    // pause (a long backoff) is cut to the grace period by the stop.
    let r = rig(Timing {
        backoff: (3600.0, 3600.0),
        grace_secs: 2.0,
        ..Timing::default()
    })
    .await;
    r.append(&["a"]).await;
    let run = r.run_sink(&[Step::FailThenBreakStore], 10, Duration::ZERO);
    let ended = tokio::time::timeout(Duration::from_secs(120), run).await;
    ended.expect("the loop ended after the stop").unwrap();
    let stopped = r.calls()[0].at;
    about(r.closed_at() - stopped, 2.0);
}
