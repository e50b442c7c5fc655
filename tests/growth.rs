//! Growth an operator can see and bound: the file shrinks after a drained backlog, dead letters are
//! listed and re-queued to the sink that rejected them only, and `state` shows what grows.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use common::*;
use secrelay::event::{Event, Page, Partition, Severity};
use secrelay::scheduler::{run_sink, Context, Mode};
use secrelay::settings::SchedulerSettings;
use secrelay::simulate::sophos::Identity;
use secrelay::sinks::{Delivered, Sink, SinkError};
use secrelay::store::{Access, OutboxRecord, Store};
use serde_json::value::RawValue;

const BIN: &str = env!("CARGO_BIN_EXE_secrelay");

/// (event id, severity) of every record a [`MemorySink`] accepted, in order.
type Accepted = Arc<Mutex<Vec<(String, u8)>>>;
/// Event ids a [`MemorySink`] refuses.
type Refused = Arc<Mutex<HashSet<String>>>;

/// A receiver in memory: takes every record except those whose id it is told to refuse.
struct MemorySink {
    name: String,
    got: Accepted,
    refuse: Refused,
}

impl MemorySink {
    fn new(name: &str) -> (Self, Accepted, Refused) {
        let got = Arc::new(Mutex::new(Vec::new()));
        let refuse = Arc::new(Mutex::new(HashSet::new()));
        let sink = MemorySink {
            name: name.into(),
            got: got.clone(),
            refuse: refuse.clone(),
        };
        (sink, got, refuse)
    }
}

impl Sink for MemorySink {
    type Encoded = ();

    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&mut self, batch: &[OutboxRecord]) -> Result<Delivered, SinkError> {
        let refuse = self.refuse.lock().unwrap().clone();
        let mut got = self.got.lock().unwrap();
        let mut outcome = Delivered::default();
        for (i, r) in batch.iter().enumerate() {
            if refuse.contains(&r.event_id) {
                outcome
                    .rejected
                    .push((i, "test receiver refuses it".into()));
            } else {
                got.push((r.event_id.clone(), r.severity));
            }
        }
        Ok(outcome)
    }

    async fn check(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// An event whose record carries `padding` characters that do not compress (the outbox stores
/// records compressed: a run of one letter would take no room).
fn event(id: &str, padding: usize) -> Event {
    let seed = id
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let mut rng = fastrand::Rng::with_seed(seed);
    let pad: String = (0..padding).map(|_| rng.alphanumeric()).collect();
    let raw = RawValue::from_string(format!(r#"{{"id":"{id}","pad":"{pad}"}}"#)).unwrap();
    Event::new(id.into(), Utc::now(), Severity::new(7), &raw)
}

async fn commit(store: &Store, source: &str, events: Vec<Event>) {
    let page = Page {
        events,
        ..Page::default()
    };
    store
        .commit_page(source, &Partition::new("events", ""), &page, Utc::now())
        .await
        .unwrap();
}

/// A backfill-mode context whose sources are done: each sink drains what it has and stops.
fn draining(store: &Store, routes: &[(&str, &[&str])]) -> Arc<Context> {
    let ctx = context(
        store,
        routes,
        Mode::Backfill {
            max_poll_failures: 1,
        },
    );
    ctx.sources_done.cancel();
    ctx
}

/// A context in `mode` routing each source to its sinks.
fn context(store: &Store, routes: &[(&str, &[&str])], mode: Mode) -> Arc<Context> {
    let sinks_of_source: BTreeMap<String, Vec<String>> = routes
        .iter()
        .map(|(source, sinks)| {
            (
                source.to_string(),
                sinks.iter().map(|s| s.to_string()).collect(),
            )
        })
        .collect();
    Context::new(
        store.clone(),
        SchedulerSettings {
            jitter_secs: 0.0,
            backoff_initial_secs: 0.1,
            backoff_max_secs: 0.5,
            shutdown_grace_secs: 5.0,
        },
        u64::MAX,
        mode,
        Duration::from_secs(20),
        sinks_of_source,
        tokio_util::sync::CancellationToken::new(),
    )
}

/// Commits 20 MB of records (10,000 of 2 KB that do not compress) from source `s`.
async fn fill_20_mb(store: &Store) {
    for page in 0..20 {
        let events = (0..500)
            .map(|i| event(&format!("{page}-{i}"), 2000))
            .collect();
        commit(store, "s", events).await;
    }
}

/// Main file plus WAL, in bytes.
fn on_disk(db: &Path) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    size(db) + size(Path::new(&format!("{}-wal", db.display())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_backlog_gives_its_space_back_to_the_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let store = Store::open(&db, Access::Writer).await.unwrap();
    fill_20_mb(&store).await;
    store.close().await; // checkpoints: the WAL is folded into the main file
    drop(store); // releases the writer's lock
    let full = on_disk(&db);
    assert!(full > 20_000_000, "filled to {full} bytes");

    let store = Store::open(&db, Access::Writer).await.unwrap();
    let (sink, got, _) = MemorySink::new("k");
    let ctx = draining(&store, &[("s", &["k"])]);
    let report = run_sink(ctx, sink, vec!["s".into()], 500, Duration::ZERO).await;
    assert_eq!(report.delivered, 10_000);
    assert_eq!(got.lock().unwrap().len(), 10_000);
    assert_eq!(store.outbox_totals().await.unwrap().rows, 0);
    store.close().await;
    let drained = on_disk(&db);
    eprintln!("state database on disk: {full} bytes full, {drained} bytes drained");
    assert!(
        drained < full / 3,
        "the file did not shrink after the backlog drained: {full} -> {drained} bytes"
    );
}

/// The daemon's sink gives the space back too, once nothing new has come for a while: not after
/// every batch that emptied the outbox (a source committing meanwhile reuses the pages, and
/// moving them stalled its commits), but without waiting for a stop either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_sink_gives_the_space_back_once_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let store = Store::open(&db, Access::Writer).await.unwrap();
    fill_20_mb(&store).await;
    let full = store.growth().await.unwrap().database.total_bytes;
    let (sink, got, _) = MemorySink::new("k");
    let ctx = context(&store, &[("s", &["k"])], Mode::Daemon);
    let task = tokio::spawn(run_sink(
        ctx.clone(),
        sink,
        vec!["s".into()],
        500,
        Duration::ZERO,
    ));
    // Delivered, then quiet: the free pages go back while the daemon still runs.
    let (mut free, mut waiting) = (u64::MAX, i64::MAX);
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        free = store.growth().await.unwrap().database.free_bytes;
        waiting = store.outbox_totals().await.unwrap().rows;
        if got.lock().unwrap().len() == 10_000 && waiting == 0 && free <= 4 << 20 {
            break;
        }
    }
    assert_eq!(got.lock().unwrap().len(), 10_000);
    assert_eq!(waiting, 0, "delivered records left in the outbox");
    assert!(
        free <= 4 << 20,
        "{free} bytes of free pages kept after the sink went quiet ({full} bytes full)"
    );
    ctx.stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_dead_letter_reaches_the_sink_that_rejected_it_once_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db"), Access::Writer)
        .await
        .unwrap();
    let ids: Vec<String> = (0..10).map(|i| format!("e{i}")).collect();
    commit(&store, "s", ids.iter().map(|id| event(id, 10)).collect()).await;

    let (a, a_got, a_refuses) = MemorySink::new("a");
    let (b, b_got, _) = MemorySink::new("b");
    let mut a = Some(a);
    let mut b = Some(b);
    let routes: &[(&str, &[&str])] = &[("s", &["a", "b"])];
    // Each round drives both sinks' real delivery loops until they have taken everything.
    let round = |a: MemorySink, b: MemorySink| {
        let ctx = draining(&store, routes);
        async move {
            let sources = vec!["s".to_string()];
            let ((), ()) = tokio::join!(
                async {
                    run_sink(ctx.clone(), a, sources.clone(), 4, Duration::ZERO).await;
                },
                async {
                    run_sink(ctx.clone(), b, sources.clone(), 4, Duration::ZERO).await;
                }
            );
        }
    };
    let fresh = |name: &str, got: &Accepted, refuse| MemorySink {
        name: name.into(),
        got: got.clone(),
        refuse,
    };

    // 1. Sink a refuses e3 and e7: they become its dead letters; b takes all ten.
    a_refuses.lock().unwrap().extend(["e3".into(), "e7".into()]);
    round(a.take().unwrap(), b.take().unwrap()).await;
    let letters = store.dead_letters(None).await.unwrap();
    let listed: Vec<_> = letters
        .iter()
        .map(|d| (d.sink.as_str(), d.source.as_str(), d.event_id.as_str()))
        .collect();
    assert_eq!(listed, [("a", "s", "e3"), ("a", "s", "e7")]);
    assert_eq!(letters[0].reason, "test receiver refuses it");
    assert_eq!(b_got.lock().unwrap().len(), 10);
    assert_eq!(store.outbox_totals().await.unwrap().rows, 0, "all pruned");

    // 2. Retry while a still refuses e3: e7 arrives, e3 is a dead letter again, b gets nothing.
    a_refuses.lock().unwrap().remove("e7");
    assert_eq!(store.requeue_dead_letters("a").await.unwrap(), 2);
    assert!(store.dead_letters(None).await.unwrap().is_empty());
    assert_eq!(store.outbox_totals().await.unwrap().rows, 2);
    round(
        fresh("a", &a_got, a_refuses.clone()),
        fresh("b", &b_got, Arc::default()),
    )
    .await;
    let again: Vec<_> = store
        .dead_letters(None)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.sink, d.event_id))
        .collect();
    assert_eq!(again, [("a".to_string(), "e3".to_string())]);

    // 3. Retry once a takes it: e3 arrives at a, still not at b, and the outbox is empty again.
    a_refuses.lock().unwrap().clear();
    assert_eq!(store.requeue_dead_letters("a").await.unwrap(), 1);
    round(
        fresh("a", &a_got, a_refuses.clone()),
        fresh("b", &b_got, Arc::default()),
    )
    .await;
    assert!(store.dead_letters(None).await.unwrap().is_empty());
    assert_eq!(store.outbox_totals().await.unwrap().rows, 0);

    let a_ids: Vec<String> = a_got
        .lock()
        .unwrap()
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    let mut sorted = a_ids.clone();
    sorted.sort();
    assert_eq!(sorted, ids, "sink a has every record exactly once");
    assert_eq!(&a_ids[8..], ["e7", "e3"], "the retried ones came last");
    assert!(
        a_got.lock().unwrap().iter().all(|(_, sev)| *sev == 7),
        "a re-queued record keeps its severity"
    );
    let b_ids: Vec<String> = b_got
        .lock()
        .unwrap()
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(
        b_ids, ids,
        "sink b got each record once, none of the retries"
    );
}

fn run_binary(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("binary runs")
}

fn json_of(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_shows_growth_lists_dead_letters_and_retries_them_into_the_next_backfill() {
    let sim = finished_sim(Identity::Tenant, 1, 50).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("secrelay.toml");
    std::fs::write(&config, config_text(&sim, dir.path(), "", "")).unwrap();
    let db = dir.path().join("state.db");

    // A record the file sink `out` refused earlier (as its delivery loop records it).
    {
        let store = Store::open(&db, Access::Writer).await.unwrap();
        commit(&store, "sophos_t", vec![event("refused-1", 10)]).await;
        let batch = store.read_batch(0, &["sophos_t".into()], 10).await.unwrap();
        store
            .advance_sink(
                "out",
                batch[0].seq,
                0,
                &[(batch[0].clone(), "HEC code 6: invalid data".into())],
                Utc::now(),
            )
            .await
            .unwrap();
        store
            .prune_outbox("sophos_t", &["out".into()])
            .await
            .unwrap();
        store.close().await;
    }

    let listed = tokio::task::spawn_blocking({
        let config = config.clone();
        move || {
            (
                run_binary(&config, &["dead-letters", "--json"]),
                run_binary(&config, &["dead-letters"]),
                run_binary(&config, &["state", "--json"]),
                run_binary(&config, &["state"]),
                run_binary(&config, &["dead-letters", "retry", "--sink", "nope"]),
                run_binary(&config, &["dead-letters", "retry", "--sink", "out"]),
                run_binary(&config, &["state", "--json"]),
            )
        }
    })
    .await
    .unwrap();
    let (json, table, state, state_table, unknown, retry, after) = listed;

    let letters = json_of(&json);
    let letters = letters.as_array().expect("a list");
    assert_eq!(letters.len(), 1);
    for (key, want) in [
        ("sink", "out"),
        ("source", "sophos_t"),
        ("stream", "events"),
        ("event_id", "refused-1"),
        ("reason", "HEC code 6: invalid data"),
    ] {
        assert_eq!(letters[0][key], want, "{key}");
    }
    assert!(letters[0]["at"].is_string());
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("refused-1") && table.contains("HEC code 6"),
        "{table}"
    );

    let state = json_of(&state);
    // Existing fields stay where scripts read them.
    for key in [
        "at",
        "outbox",
        "outbox_cap_bytes",
        "sources_paused",
        "partitions",
        "sinks",
        "rejected",
    ] {
        assert!(state.get(key).is_some(), "state --json lost `{key}`");
    }
    let growth = &state["growth"];
    assert_eq!(growth["seen_ids"], 1);
    assert_eq!(growth["seen_ids_by_source"]["sophos_t"], 1);
    assert_eq!(growth["dead_letters"], 1);
    assert_eq!(growth["rejected_records"], 0);
    assert_eq!(growth["requeued"], 0);
    let database = &growth["database"];
    assert_eq!(database["auto_vacuum"], "incremental");
    let total = database["total_bytes"].as_u64().unwrap();
    assert!(total > 0);
    assert_eq!(
        total,
        database["main_bytes"].as_u64().unwrap() + database["wal_bytes"].as_u64().unwrap()
    );
    let state_table = String::from_utf8_lossy(&state_table.stdout);
    for line in ["database:", "seen ids: 1 (sophos_t 1)", "dead letters: 1"] {
        assert!(state_table.contains(line), "no {line:?} in\n{state_table}");
    }

    assert!(!unknown.status.success(), "an unknown sink is an error");
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("nope"));
    assert!(
        retry.status.success(),
        "{}",
        String::from_utf8_lossy(&retry.stderr)
    );
    assert!(String::from_utf8_lossy(&retry.stdout).contains("1 re-queued"));
    let after = json_of(&after);
    assert_eq!(after["growth"]["dead_letters"], 0);
    assert_eq!(after["growth"]["requeued"], 1);
    assert_eq!(after["outbox"]["rows"], 1);
    assert_eq!(
        after["sinks"][0]["backlog"], 1,
        "the sink's backlog counts it"
    );

    // The next backfill delivers it to `out` (with everything the source has), once.
    let out = tokio::task::spawn_blocking({
        let config = config.clone();
        move || run_binary(&config, &["backfill"])
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = delivered(dir.path());
    let mut want = expected(&sim, &["events", "alerts"]);
    want.push(("events".into(), String::new(), "refused-1".into()));
    assert_exactly_once(&got, &want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_beside_a_running_daemon_is_delivered_by_it() {
    let sim = finished_sim(Identity::Tenant, 1, 30).await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&sim, dir.path(), "", "");
    let config = dir.path().join("secrelay.toml");
    std::fs::write(&config, &text).unwrap();
    {
        let store = Store::open(&dir.path().join("state.db"), Access::Writer)
            .await
            .unwrap();
        commit(&store, "sophos_t", vec![event("refused-2", 10)]).await;
        let batch = store.read_batch(0, &["sophos_t".into()], 1).await.unwrap();
        let refused = [(batch[0].clone(), "refused".to_string())];
        store
            .advance_sink("out", batch[0].seq, 0, &refused, Utc::now())
            .await
            .unwrap();
        store.close().await;
    }
    let daemon = Daemon::start(&secrelay::settings::Settings::from_toml(&text).unwrap());
    let mut want = expected(&sim, &["events", "alerts"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while delivered_so_far(dir.path()).len() < want.len() {
        assert!(std::time::Instant::now() < deadline, "the daemon delivers");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Beside the daemon (which holds the writer's lock): every configured sink's dead letters.
    let retry =
        tokio::task::spawn_blocking(move || run_binary(&config, &["dead-letters", "retry"]))
            .await
            .unwrap();
    assert!(
        retry.status.success(),
        "{}",
        String::from_utf8_lossy(&retry.stderr)
    );
    want.push(("events".into(), String::new(), "refused-2".into()));
    while delivered_so_far(dir.path()).len() < want.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon sends the retry"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.stop().await;
    assert_exactly_once(&delivered(dir.path()), &want);
}
