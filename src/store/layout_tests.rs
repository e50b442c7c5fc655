//! Tests of the chunked layout (issue 13): records across chunks, positions read from anywhere,
//! what a commit costs on disk, and moving the rows of the layout before it.

use std::path::Path;

use chrono::{TimeZone, Utc};
use serde_json::value::RawValue;

use super::*;
use crate::event::{Event, Page, Partition, Severity};

fn event(id: &str, ms: i64, record: &str) -> Event {
    let raw = RawValue::from_string(record.to_string()).unwrap();
    Event::new(
        id.into(),
        Utc.timestamp_millis_opt(ms).unwrap(),
        Severity::new(4),
        &raw,
    )
}

/// A record shaped like a vendor's file event: mostly the same keys and values, an id and a few
/// fields that change.
fn file_event(i: u64) -> Event {
    let id = format!("0_1d71796f-{i:08}-4231-9d8e-df6434da4663_{}", i * 7919);
    let record = format!(
        r#"{{"@timestamp":"2026-11-30T10:{:02}:{:02}.000Z","event":{{"id":"{id}","action":"file-modified","inserted":"2026-11-30T10:00:00.000Z"}},"user":{{"email":"user{}@example.com","deviceUid":"{}"}},"file":{{"name":"report-{i}.xlsx","directory":"C:/Users/user/Documents/","size":{},"hash":{{"md5":"{:032x}"}}}},"source":{{"category":"Cloud Storage","name":"Dropbox"}}}}"#,
        (i / 60) % 60,
        i % 60,
        i % 50,
        935873453596901068u64 + i % 50,
        i * 1031,
        u128::from(i) * 0x9e37_79b9_7f4a_7c15
    );
    event(&id, 1_764_496_800_000 + i as i64, &record)
}

async fn writer(dir: &Path) -> Store {
    Store::open(&dir.join("state.db"), Access::Writer)
        .await
        .unwrap()
}

#[tokio::test]
async fn records_span_chunks_and_are_read_from_any_position() {
    let dir = tempfile::tempdir().unwrap();
    let store = writer(dir.path()).await;
    let p = Partition::new("events", "t1");
    let n = 2 * chunk::MAX_RECORDS + 500;
    let page = Page {
        events: (0..n as u64).map(file_event).collect(),
        ..Page::default()
    };
    let summary = store.commit_page("s", &p, &page, Utc::now()).await.unwrap();
    assert_eq!(summary.appended, n as u64);
    let sources = ["s".to_string()];

    // From the middle of the first chunk, across two chunk boundaries.
    let batch = store.read_batch(999, &sources, 1200).await.unwrap();
    assert_eq!(batch.len(), 1200);
    for (k, r) in batch.iter().enumerate() {
        let i = 999 + k;
        assert_eq!(r.seq, i as i64 + 1, "positions are consecutive");
        assert_eq!(r.event_id, page.events[i].id);
        assert_eq!(r.record, page.events[i].record.as_str());
        assert_eq!(r.event_time, page.events[i].time);
        assert_eq!((r.stream.as_str(), r.tenant.as_str()), ("events", "t1"));
        assert_eq!(r.severity, 4);
    }
    // The rest, then nothing.
    let rest = store.read_batch(2199, &sources, 10_000).await.unwrap();
    assert_eq!(rest.len(), n - 2199);
    assert_eq!(rest.last().map(|r| r.seq), Some(n as i64));
    assert!(store
        .read_batch(n as i64, &sources, 10)
        .await
        .unwrap()
        .is_empty());

    // Backlogs are exact in the middle of a chunk.
    assert_eq!(
        store.backlog(999, &sources).await.unwrap(),
        (n - 999) as i64
    );
    assert_eq!(
        store.sink_backlog("k", 2001, &sources).await.unwrap(),
        (n - 2001) as i64
    );
    let totals = store.outbox_totals().await.unwrap();
    assert_eq!(totals.rows, n as i64);
    let text: i64 = page
        .events
        .iter()
        .map(|e| e.record.as_str().len() as i64)
        .sum();
    assert_eq!(totals.bytes, text, "the cap counts the records' JSON text");
    let backlog = store.backlog_totals("k", 0, &sources).await.unwrap();
    assert_eq!(backlog, totals);
}

#[tokio::test]
async fn a_commit_writes_each_record_once_and_compressed() {
    let dir = tempfile::tempdir().unwrap();
    let store = writer(dir.path()).await;
    let page = Page {
        events: (0..10_000).map(file_event).collect(),
        ..Page::default()
    };
    let text: u64 = page
        .events
        .iter()
        .map(|e| e.record.as_str().len() as u64)
        .sum();
    let on_disk = |dir: &Path| {
        ["state.db", "state.db-wal"]
            .iter()
            .map(|f| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len()))
            .sum::<u64>()
    };
    let before = on_disk(dir.path());
    store
        .commit_page("s", &Partition::new("events", ""), &page, Utc::now())
        .await
        .unwrap();
    let written = on_disk(dir.path()) - before;
    // One record per row as text, plus a text key per id, took more than the records' size; now
    // the records go compressed and an id is five integers (these records are short, ~440 bytes,
    // so the ids weigh more here than beside a vendor's 1.3 KB).
    assert!(
        written * 2 < text,
        "{written} bytes of database and WAL for {text} bytes of records"
    );
}

/// A database as the version before chunks left it: every migration before the chunks'.
async fn database_before_chunks(path: &Path) -> sqlx::SqlitePool {
    let migrations = tempfile::tempdir().unwrap();
    let mut names: Vec<_> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let chunks = names
        .iter()
        .position(|n| n.ends_with("20261201040000_outbox_chunks.sql"))
        .unwrap();
    names.truncate(chunks);
    for n in names {
        std::fs::copy(&n, migrations.path().join(n.file_name().unwrap())).unwrap();
    }
    open::create_private_file(path).unwrap();
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::migrate::Migrator::new(migrations.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    pool
}

#[tokio::test]
async fn rows_of_the_layout_before_chunks_move_once_and_keep_their_positions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let pool = database_before_chunks(&path).await;
    // Three waiting records, one of them a dead letter re-queued for sink k, with a gap where a
    // pruned row was; seen ids of two streams; an old dead letter without severity.
    for (seq, id, target) in [(7, "a", None), (9, "b", None), (10, "c", Some("k"))] {
        sqlx::query(
            "INSERT INTO outbox (seq, source, stream, tenant, event_id, event_time, ingest_time,
                                 severity, record, bytes, target_sink)
             VALUES (?1, 's', 'events', 't', ?2, 1000, 2000, 6, ?3, 11, ?4)",
        )
        .bind(seq)
        .bind(id)
        .bind(format!(r#"{{"id":"{id}"}}"#))
        .bind(target)
        .execute(&pool)
        .await
        .unwrap();
    }
    for (stream, id) in [("events", "a"), ("events", "b"), ("alerts", "z")] {
        sqlx::query(
            "INSERT INTO seen (source, stream, event_id, event_time, seen_at)
             VALUES ('s', ?1, ?2, 1000, 5000)",
        )
        .bind(stream)
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO dead_letters (sink, seq, source, stream, tenant, event_id, event_time, record,
                                   reason, at)
         VALUES ('j', 9, 's', 'events', 't', 'b', 1000, '{}', 'refused', 3000)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let store = Store::open(&path, Access::Writer).await.unwrap();
    let sources = ["s".to_string()];
    let shared = store.read_batch(0, &sources, 10).await.unwrap();
    assert_eq!(
        shared
            .iter()
            .map(|r| (r.seq, r.event_id.as_str(), r.record.as_str(), r.severity))
            .collect::<Vec<_>>(),
        [(7, "a", r#"{"id":"a"}"#, 6), (9, "b", r#"{"id":"b"}"#, 6)]
    );
    assert_eq!(shared[0].ingest_time.timestamp_millis(), 2000);
    let for_k = store.read_sink_batch("k", 0, &sources, 10).await.unwrap();
    assert_eq!(for_k.iter().map(|r| r.seq).collect::<Vec<_>>(), [7, 9, 10]);
    assert_eq!(store.outbox_totals().await.unwrap().rows, 3);
    assert_eq!(store.growth().await.unwrap().seen_ids, 3);

    // The older ids still drop repeats, whatever key time the source now gives them (it was not
    // recorded); a new record gets a position after every old one.
    let page = Page {
        events: vec![
            event("a", 1000, r#"{"id":"a"}"#),
            event("b", 7000, r#"{"id":"b"}"#).with_key_time(Utc.timestamp_millis_opt(900).unwrap()),
            event("new", 1000, r#"{"id":"new"}"#),
        ],
        ..Page::default()
    };
    let summary = store
        .commit_page("s", &Partition::new("events", "t"), &page, Utc::now())
        .await
        .unwrap();
    assert_eq!((summary.appended, summary.duplicates), (1, 2));
    let after = store.read_batch(9, &sources, 10).await.unwrap();
    assert_eq!(after.len(), 1);
    assert!(after[0].seq > 10, "position {} reused", after[0].seq);

    // The dead letter got its severity and ingest time from its row before the row moved.
    assert_eq!(store.requeue_dead_letters("j").await.unwrap(), 1);
    let requeued = store.read_sink_batch("j", 11, &[], 10).await.unwrap();
    assert_eq!(requeued.len(), 1);
    assert_eq!(requeued[0].severity, 6);
    assert_eq!(requeued[0].ingest_time.timestamp_millis(), 2000);

    // Nothing is moved twice: a second writer finds the old tables empty.
    store.close().await;
    drop(store);
    let store = Store::open(&path, Access::Writer).await.unwrap();
    assert_eq!(store.move_legacy_rows().await.unwrap(), 0);
    assert_eq!(store.outbox_totals().await.unwrap().rows, 5);
}

#[tokio::test]
async fn a_reset_forgets_by_event_time_not_key_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = writer(dir.path()).await;
    let p = Partition::new("mitigated", "");
    let at = |ms: i64| Utc.timestamp_millis_opt(ms).unwrap();
    // Keyed by an early time (a finding's lastSeen), happened late (its lastMitigated).
    let late = || event("late", 5_000_000, "{}").with_key_time(at(1_000_000));
    let early = || event("early", 1_000_000, "{}");
    let page = |events| Page {
        events,
        ..Page::default()
    };
    let first = store
        .commit_page("s", &p, &page(vec![late(), early()]), Utc::now())
        .await
        .unwrap();
    assert_eq!(first.appended, 2);
    let reset = store.reset("s", Some(at(3_000_000))).await.unwrap();
    assert_eq!(
        reset.seen, 1,
        "only the event that happened after the reset's start"
    );
    let again = store
        .commit_page("s", &p, &page(vec![late(), early()]), Utc::now())
        .await
        .unwrap();
    assert_eq!((again.appended, again.duplicates), (1, 1));
}
