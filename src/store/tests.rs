//! Store tests: one database per test in a temporary directory.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use serde_json::value::RawValue;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::SqlitePool;

use super::growth::RECLAIM_ABOVE_BYTES;
use super::open::{create_private_file, open_lock_file, MIGRATOR};
use super::*;
use crate::event::{Event, Page, Partition, Severity};

fn event(id: &str, secs: i64) -> Event {
    let raw = RawValue::from_string(format!(r#"{{"id":"{id}"}}"#)).unwrap();

    Event::new(
        id.into(),
        Utc.timestamp_opt(secs, 0).unwrap(),
        Severity::new(3),
        &raw,
    )
}

/// `len` characters that do not compress (records are stored compressed: a test that needs bytes
/// on disk must not hand over a run of one letter).
fn noise(seed: u64, len: usize) -> String {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.alphanumeric()).collect()
}

async fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();

    let store = Store::open(&dir.path().join("state.db"), Access::Writer)
        .await
        .unwrap();

    (dir, store)
}

#[tokio::test]

async fn a_second_writer_is_refused_but_readers_are_not() {
    let (dir, _writer) = store().await;

    let path = dir.path().join("state.db");

    let err = Store::open(&path, Access::Writer)
        .await
        .unwrap_err()
        .to_string();

    assert!(err.contains("another secrelay"), "{err}");

    let reader = Store::open(&path, Access::Reader).await.unwrap();

    assert_eq!(reader.outbox_totals().await.unwrap().rows, 0);
}

#[tokio::test]

async fn a_reader_waits_for_the_lock_holder_to_finish_migrating() {
    let dir = tempfile::tempdir().unwrap();

    let path = dir.path().join("state.db");

    create_private_file(&path).unwrap();

    let lock = open_lock_file(&dir.path().join("state.db.lock")).unwrap();

    lock.lock().unwrap();

    let reader = tokio::spawn({
        let path = path.clone();

        async move { Store::open(&path, Access::Reader).await }
    });

    tokio::time::sleep(Duration::from_millis(300)).await;

    assert!(
        !reader.is_finished(),
        "the reader must not query a schema that is not there yet"
    );

    let pool = SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();

    MIGRATOR.run(&pool).await.unwrap();

    let store = reader.await.unwrap().unwrap();

    assert_eq!(store.outbox_totals().await.unwrap().rows, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn a_writer_and_readers_opening_a_new_database_at_once_all_succeed() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();

        let path = dir.path().join("state.db");

        let mut opens = Vec::new();

        for access in [
            Access::Reader,
            Access::Writer,
            Access::Reader,
            Access::Reader,
        ] {
            let path = path.clone();

            opens.push(tokio::spawn(
                async move { Store::open(&path, access).await },
            ));
        }

        for open in opens {
            let store = open.await.unwrap().unwrap();

            assert_eq!(store.outbox_totals().await.unwrap().rows, 0);
        }
    }
}

#[tokio::test]

async fn a_sink_keeps_its_channel_and_pending_acks_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();

    let path = dir.path().join("state.db");

    {
        let store = Store::open(&path, Access::Writer).await.unwrap();

        assert_eq!(store.sink_channel("hec", "chan-1").await.unwrap(), "chan-1");

        assert_eq!(
            store.sink_channel("hec", "chan-2").await.unwrap(),
            "chan-1",
            "created once"
        );

        store
            .save_pending_acks(
                "hec",
                "chan-1",
                &[4, 5],
                99,
                &[(97, "code 6".to_string())],
                Utc::now(),
            )
            .await
            .unwrap();

        store.close().await;
    }

    let store = Store::open(&path, Access::Writer).await.unwrap();

    let pending = store.pending_acks("hec").await.unwrap();

    assert_eq!(
        pending,
        vec![("chan-1".to_string(), 4, 99), ("chan-1".to_string(), 5, 99)]
    );

    assert_eq!(
        store.pending_rejects("hec").await.unwrap(),
        vec![(97, "code 6".to_string())]
    );

    store.clear_pending_acks("hec").await.unwrap();

    assert!(store.pending_acks("hec").await.unwrap().is_empty());

    assert!(store.pending_rejects("hec").await.unwrap().is_empty());
}

#[tokio::test]

async fn an_older_file_is_switched_to_incremental_vacuum_by_a_writer_only() {
    let dir = tempfile::tempdir().unwrap();

    let path = dir.path().join("state.db");

    {
        // A database made the way earlier versions made it: auto_vacuum NONE, tables in it.

        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);

        let pool = SqlitePool::connect_with(options).await.unwrap();

        MIGRATOR.run(&pool).await.unwrap();

        let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
            .fetch_one(&pool)
            .await
            .unwrap();

        assert_eq!(mode, 0);

        pool.close().await;
    }

    let reader = Store::open(&path, Access::Reader).await.unwrap();

    assert_eq!(reader.growth().await.unwrap().database.auto_vacuum, "none");

    reader.close().await;

    drop(reader);

    let writer = Store::open(&path, Access::Writer).await.unwrap();

    let page = Page {
        events: (0..3000)
            .map(|i| event(&noise(i as u64, 2000), i))
            .collect(),

        ..Page::default()
    };

    writer
        .commit_page("s", &Partition::new("e", ""), &page, Utc::now())
        .await
        .unwrap();

    let growth = writer.growth().await.unwrap();

    assert_eq!(growth.database.auto_vacuum, "incremental");

    assert_eq!(growth.seen_ids, 3000);

    // Pruned rows leave free pages; the reclaim gives them back down to the 4 MiB kept.

    writer
        .advance_sink("k", i64::MAX, 3000, &[], Utc::now())
        .await
        .unwrap();

    writer.prune_outbox("s", &["k".into()]).await.unwrap();

    writer
        .prune_seen("s", Utc::now() + chrono::Duration::days(1))
        .await
        .unwrap();

    let free = writer.growth().await.unwrap().database.free_bytes;

    assert!(free > 1 << 20, "{free} bytes free after pruning");

    let given = writer.reclaim_free_pages().await.unwrap();
    assert!(given > 0, "{given} given back of {free}");

    let free = writer.growth().await.unwrap().database.free_bytes;

    assert!(
        free <= RECLAIM_ABOVE_BYTES as u64,
        "{free} bytes still free"
    );

    // At the threshold nothing is worth giving back; the pages stay for the next commits.

    assert_eq!(writer.reclaim_free_pages().await.unwrap(), 0);
}

#[tokio::test]

async fn a_new_file_uses_incremental_vacuum_and_gives_big_free_space_back() {
    let (_dir, store) = store().await;

    let page = Page {
        events: (0..3000)
            .map(|i| {
                let big = noise(i, 4000);
                let raw = RawValue::from_string(format!(r#"{{"id":"{i}","p":"{big}"}}"#)).unwrap();

                Event::new(i.to_string(), Utc::now(), Severity::new(1), &raw)
            })
            .collect(),

        ..Page::default()
    };

    store
        .commit_page("s", &Partition::new("e", ""), &page, Utc::now())
        .await
        .unwrap();

    assert_eq!(
        store.growth().await.unwrap().database.auto_vacuum,
        "incremental"
    );

    store
        .advance_sink("k", i64::MAX, 3000, &[], Utc::now())
        .await
        .unwrap();

    store.prune_outbox("s", &["k".into()]).await.unwrap();

    let before = store.growth().await.unwrap().database.free_bytes;

    assert!(before > 8 << 20, "{before} bytes free after pruning");

    let given = store.reclaim_free_pages().await.unwrap();

    let after = store.growth().await.unwrap().database.free_bytes;

    assert!(
        after <= RECLAIM_ABOVE_BYTES as u64,
        "{after} bytes still free"
    );

    assert_eq!(given, before - after);
}

#[tokio::test]

async fn a_requeued_dead_letter_is_read_counted_and_pruned_for_its_sink_only() {
    let (_dir, store) = store().await;

    let page = Page {
        events: vec![event("a", 1), event("b", 2)],

        ..Page::default()
    };

    store
        .commit_page("s", &Partition::new("e", ""), &page, Utc::now())
        .await
        .unwrap();

    let batch = store.read_batch(0, &["s".into()], 10).await.unwrap();

    let sinks = ["one".to_string(), "two".to_string()];

    store
        .advance_sink("one", 2, 1, &[(batch[0].clone(), "bad".into())], Utc::now())
        .await
        .unwrap();

    store
        .advance_sink("two", 2, 2, &[], Utc::now())
        .await
        .unwrap();

    assert_eq!(store.prune_outbox("s", &sinks).await.unwrap(), 2);

    assert_eq!(store.requeue_dead_letters("two").await.unwrap(), 0);

    assert_eq!(store.requeue_dead_letters("one").await.unwrap(), 1);

    assert!(store.dead_letters(Some("one")).await.unwrap().is_empty());

    let s = ["s".to_string()];

    let for_one = store.read_sink_batch("one", 2, &s, 10).await.unwrap();

    assert_eq!(for_one.len(), 1);

    assert_eq!((for_one[0].seq, for_one[0].event_id.as_str()), (3, "a"));

    assert_eq!(for_one[0].severity, 3, "kept from the dead letter");

    // Even when the sink no longer reads that source, it gets what was re-queued for it.

    assert_eq!(
        store
            .read_sink_batch("one", 2, &[], 10)
            .await
            .unwrap()
            .len(),
        1
    );

    assert!(store
        .read_sink_batch("two", 2, &s, 10)
        .await
        .unwrap()
        .is_empty());

    assert!(store.read_batch(2, &s, 10).await.unwrap().is_empty());

    assert_eq!(store.sink_backlog("one", 2, &s).await.unwrap(), 1);

    assert_eq!(store.sink_backlog("two", 2, &s).await.unwrap(), 0);

    assert_eq!(store.backlog(2, &s).await.unwrap(), 0);

    assert_eq!(store.growth().await.unwrap().requeued, 1);

    // Sink two passing it (it has nothing to read) prunes nothing; sink one passing it does.

    store
        .advance_sink("two", 3, 0, &[], Utc::now())
        .await
        .unwrap();

    assert_eq!(store.prune_outbox("s", &sinks[1..]).await.unwrap(), 0);

    assert_eq!(store.prune_requeued("two").await.unwrap(), 0);

    assert_eq!(store.prune_requeued("one").await.unwrap(), 0);

    store
        .advance_sink("one", 3, 1, &[], Utc::now())
        .await
        .unwrap();

    assert_eq!(store.prune_requeued("one").await.unwrap(), 1);

    assert_eq!(
        store.outbox_totals().await.unwrap(),
        OutboxTotals::default()
    );
}

#[tokio::test]

async fn a_path_with_url_characters_is_a_file_name() {
    let dir = tempfile::tempdir().unwrap();

    let path = dir.path().join("state?mode=ro#1.db");

    let store = Store::open(&path, Access::Writer).await.unwrap();

    let page = Page {
        events: vec![event("a", 1)],

        ..Page::default()
    };

    store
        .commit_page("s", &Partition::new("e", ""), &page, Utc::now())
        .await
        .unwrap();

    store.close().await;

    assert!(
        std::fs::metadata(&path).unwrap().len() > 0,
        "written where it was told"
    );

    let reopened = Store::open(&path, Access::Reader).await.unwrap();

    assert_eq!(reopened.outbox_totals().await.unwrap().rows, 1);
}

#[tokio::test]

async fn database_file_is_private() {
    use std::os::unix::fs::PermissionsExt;

    let (dir, _store) = store().await;

    let mode = std::fs::metadata(dir.path().join("state.db"))
        .unwrap()
        .permissions()
        .mode();

    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]

async fn commit_drops_seen_ids_and_moves_cursor_together() {
    let (_dir, store) = store().await;

    let p = Partition::new("events", "t1");

    let page = Page {
        events: vec![event("a", 1), event("b", 2), event("a", 1)],

        cursor: Some("c1".into()),

        ..Page::default()
    };

    let s = store
        .commit_page("src", &p, &page, Utc::now())
        .await
        .unwrap();

    assert_eq!(
        s,
        CommitSummary {
            appended: 2,

            duplicates: 1,

            rejected: 0
        }
    );

    let page2 = Page {
        events: vec![event("b", 2), event("c", 3)],

        cursor: Some("c2".into()),

        ..Page::default()
    };

    let s = store
        .commit_page("src", &p, &page2, Utc::now())
        .await
        .unwrap();

    assert_eq!(
        s,
        CommitSummary {
            appended: 1,

            duplicates: 1,

            rejected: 0
        }
    );

    assert_eq!(
        store.cursor("src", &p).await.unwrap().as_deref(),
        Some("c2")
    );

    let batch = store.read_batch(0, &["src".into()], 10).await.unwrap();

    let ids: Vec<_> = batch.iter().map(|r| r.event_id.as_str()).collect();

    assert_eq!(ids, ["a", "b", "c"]);

    assert_eq!(store.outbox_totals().await.unwrap().rows, 3);
}

#[tokio::test]

async fn rejected_records_are_kept_once_with_the_page_and_counted() {
    let (_dir, store) = store().await;

    let p = Partition::new("events", "t1");

    let bad = crate::event::Rejected::new("http://v/x", "item 1 has no id", r#"{"a":1}"#);

    let page = Page {
        events: vec![event("a", 1)],

        cursor: Some("c1".into()),

        rejected: vec![bad.clone()],

        ..Page::default()
    };

    let s = store
        .commit_page("src", &p, &page, Utc::now())
        .await
        .unwrap();

    assert_eq!(s.rejected, 1);

    // The same record on a page fetched again (an overlap) is not kept or counted twice.

    let again = Page {
        cursor: Some("c2".into()),

        rejected: vec![bad],

        ..Page::default()
    };

    let s = store
        .commit_page("src", &p, &again, Utc::now())
        .await
        .unwrap();

    assert_eq!(s.rejected, 0);

    let kept = store.rejected_records("src").await.unwrap();

    assert_eq!(kept.len(), 1);

    assert_eq!(
        (
            kept[0].stream.as_str(),
            kept[0].tenant.as_str(),
            kept[0].url.as_str()
        ),
        ("events", "t1", "http://v/x")
    );

    assert_eq!(kept[0].reason, "item 1 has no id");

    assert_eq!(kept[0].record, r#"{"a":1}"#);

    let states = store.cursor_states().await.unwrap();

    assert_eq!(states[0].rejected_total, 1);

    assert_eq!(states[0].cursor.as_deref(), Some("c2"));

    assert_eq!(store.outbox_totals().await.unwrap().rows, 1);
}

#[tokio::test]

async fn an_id_served_again_is_not_pruned_with_ids_of_its_age() {
    let (_dir, store) = store().await;

    let p = Partition::new("views", "");

    let day0 = Utc::now() - chrono::Duration::days(8);

    let first = Page {
        events: vec![event("kept", 1), event("gone", 2)],

        ..Page::default()
    };

    store.commit_page("s", &p, &first, day0).await.unwrap();

    // A week later the vendor serves `kept` again (an unchanged view): a repeat, not new.

    let repeat = Page {
        events: vec![event("kept", 1)],

        ..Page::default()
    };

    let s = store
        .commit_page("s", &p, &repeat, Utc::now())
        .await
        .unwrap();

    assert_eq!((s.appended, s.duplicates), (0, 1));

    let pruned = store
        .prune_seen("s", Utc::now() - chrono::Duration::days(7))
        .await
        .unwrap();

    assert_eq!(pruned, 1, "only the id not served since is forgotten");

    let s = store
        .commit_page("s", &p, &repeat, Utc::now())
        .await
        .unwrap();

    assert_eq!(
        (s.appended, s.duplicates),
        (0, 1),
        "still known: not re-sent"
    );
}

#[tokio::test]

async fn page_without_cursor_keeps_the_stored_one() {
    let (_dir, store) = store().await;

    let p = Partition::new("events", "");

    let with = Page {
        cursor: Some("keep".into()),

        ..Page::default()
    };

    store.commit_page("s", &p, &with, Utc::now()).await.unwrap();

    store
        .commit_page("s", &p, &Page::default(), Utc::now())
        .await
        .unwrap();

    assert_eq!(
        store.cursor("s", &p).await.unwrap().as_deref(),
        Some("keep")
    );
}

#[tokio::test]

async fn outbox_is_pruned_only_past_every_routed_sink() {
    let (_dir, store) = store().await;

    let p = Partition::new("events", "");

    let page = Page {
        events: (0..5).map(|i| event(&i.to_string(), i)).collect(),

        ..Page::default()
    };

    store.commit_page("s", &p, &page, Utc::now()).await.unwrap();

    let sinks = vec!["one".to_string(), "two".to_string()];

    store
        .advance_sink("one", 4, 4, &[], Utc::now())
        .await
        .unwrap();

    assert_eq!(
        store.prune_outbox("s", &sinks).await.unwrap(),
        0,
        "sink two has delivered nothing"
    );

    store
        .advance_sink("two", 2, 2, &[], Utc::now())
        .await
        .unwrap();

    // The page's records are one chunk: it goes only once every sink has passed all of it.
    assert_eq!(
        store.prune_outbox("s", &sinks).await.unwrap(),
        0,
        "sink two is in the middle of the chunk"
    );

    assert_eq!(store.outbox_totals().await.unwrap().rows, 5);

    let left = store.read_batch(2, &["s".into()], 10).await.unwrap();

    assert_eq!(
        left.iter().map(|r| r.event_id.as_str()).collect::<Vec<_>>(),
        ["2", "3", "4"],
        "sink two reads on from the middle of the chunk"
    );

    store
        .advance_sink("two", 5, 3, &[], Utc::now())
        .await
        .unwrap();

    assert_eq!(
        store.prune_outbox("s", &sinks).await.unwrap(),
        0,
        "sink one is at 4 of 5"
    );

    store
        .advance_sink("one", 5, 1, &[], Utc::now())
        .await
        .unwrap();

    assert_eq!(store.prune_outbox("s", &sinks).await.unwrap(), 5);

    assert_eq!(
        store.outbox_totals().await.unwrap(),
        OutboxTotals::default()
    );

    // Positions never move backwards.

    store
        .advance_sink("one", 1, 0, &[], Utc::now())
        .await
        .unwrap();

    assert_eq!(store.sink_position("one").await.unwrap(), 5);
}

#[tokio::test]

async fn sequence_numbers_are_not_reused_after_the_outbox_empties() {
    let (_dir, store) = store().await;

    let p = Partition::new("events", "");

    let one = Page {
        events: vec![event("x", 1)],

        ..Page::default()
    };

    store.commit_page("s", &p, &one, Utc::now()).await.unwrap();

    store
        .advance_sink("k", 1, 1, &[], Utc::now())
        .await
        .unwrap();

    store.prune_outbox("s", &["k".into()]).await.unwrap();

    let two = Page {
        events: vec![event("y", 2)],

        ..Page::default()
    };

    store.commit_page("s", &p, &two, Utc::now()).await.unwrap();

    let batch = store.read_batch(1, &["s".into()], 10).await.unwrap();

    assert_eq!(batch.len(), 1);

    assert_eq!(batch[0].seq, 2);
}

#[tokio::test]

async fn reset_with_window_forgets_only_recent_seen_ids() {
    let (_dir, store) = store().await;

    let p = Partition::new("events", "");

    let now = Utc::now();

    let old = event("old", (now - chrono::Duration::days(3)).timestamp());

    let new = event("new", (now - chrono::Duration::hours(1)).timestamp());

    let page = Page {
        events: vec![old.clone(), new.clone()],

        cursor: Some("c".into()),

        ..Page::default()
    };

    store.commit_page("s", &p, &page, now).await.unwrap();

    let r = store
        .reset("s", Some(now - chrono::Duration::days(1)))
        .await
        .unwrap();

    assert_eq!(
        r,
        ResetSummary {
            cursors: 1,

            seen: 1
        }
    );

    assert_eq!(store.cursor("s", &p).await.unwrap(), None);

    let again = Page {
        events: vec![old, new],

        ..Page::default()
    };

    let s = store.commit_page("s", &p, &again, now).await.unwrap();

    assert_eq!(
        s,
        CommitSummary {
            appended: 1,

            duplicates: 1,

            rejected: 0
        }
    );
}

#[tokio::test]

async fn dead_letters_are_recorded_with_the_advance() {
    let (_dir, store) = store().await;

    let p = Partition::new("events", "");

    let page = Page {
        events: vec![event("bad", 1), event("good", 2)],

        ..Page::default()
    };

    store.commit_page("s", &p, &page, Utc::now()).await.unwrap();

    let batch = store.read_batch(0, &["s".into()], 10).await.unwrap();

    store
        .advance_sink(
            "k",
            2,
            1,
            &[(batch[0].clone(), "invalid".into())],
            Utc::now(),
        )
        .await
        .unwrap();

    let states = store.sink_states().await.unwrap();

    assert_eq!(states[0].dead_letters, 1);

    assert_eq!(states[0].delivered_seq, 2);

    assert_eq!(states[0].delivered_total, 1);
}

/// A sink recording a delivered batch while a source commits page after page gets the next turn:
/// it waits for the commit under way, never for the source's whole run. (SQLite's own lock wait
/// polls with growing sleeps, and a source committing back to back kept an advance waiting for
/// seconds.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_advance_waits_for_one_page_commit_at_most() {
    let (_dir, store) = store().await;
    let committed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let source = tokio::spawn({
        let (store, committed) = (store.clone(), committed.clone());
        async move {
            for p in 0..40u64 {
                let page = Page {
                    events: (0..2000)
                        .map(|i| event(&format!("{p}-{i}"), (p * 2000 + i) as i64))
                        .collect(),
                    cursor: Some(p.to_string()),
                    more: true,
                    ..Page::default()
                };
                store
                    .commit_page("s", &Partition::new("e", ""), &page, Utc::now())
                    .await
                    .unwrap();
                committed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    // Let the source get going, then ask for turns while it commits.
    while committed.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for i in 1..=5 {
        let before = committed.load(std::sync::atomic::Ordering::SeqCst);
        store
            .advance_sink("k", i, 1, &[], Utc::now())
            .await
            .unwrap();
        let after = committed.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            after <= before + 1,
            "advance {i} waited for {} page commits",
            after - before
        );
    }
    source.await.unwrap();
}

/// A write transaction that reads before it writes (a page commit looks its ids up first) still
/// commits when another connection wants to write meanwhile: it holds the write lock from its
/// start, so the other waits instead of invalidating what it read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_transaction_that_reads_first_is_not_undone_by_another_writer() {
    let (_dir, store) = store().await;
    let mut tx = store.begin("testing").await.unwrap();
    let known: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM seen_ids")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(known, 0);
    // Not a turn-taking write: one statement on a connection of its own (as a sink notes an error).
    let other = tokio::spawn({
        let store = store.clone();
        async move { store.record_sink_error("k", "down", Utc::now()).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    sqlx::query("INSERT INTO seen_scopes (source, stream) VALUES ('s', 'e')")
        .execute(&mut *tx)
        .await
        .expect("the write after the read");
    commit_tx(tx, "testing").await.unwrap();
    other.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_id_committed_by_another_partition_while_a_commit_waits_is_not_appended_twice() {
    let (_dir, store) = store().await;
    let summaries = tenants_racing_for_the_turn(&store, "x", 1000).await;
    // The first to get the turn appends x; the second finds its lookup outdated, looks again
    // under the turn, and drops x as seen.
    let appended: Vec<u64> = summaries.iter().map(|s| s.appended).collect();
    assert_eq!(appended, [1, 0]);
    assert_eq!(summaries[1].duplicates, 1);
    let records = store.read_batch(0, &["s".to_string()], 10).await.unwrap();
    assert_eq!(records.len(), 1);
}

/// Two tenants of one stream (one seen-set scope) commit a page of `id` at `secs`: both look it up
/// before the writer's turn (held here until both queued for it). Their summaries, in turn order.
async fn tenants_racing_for_the_turn(store: &Store, id: &str, secs: i64) -> Vec<CommitSummary> {
    let turn = store.writing.clone().lock_owned().await;
    let mut commits = Vec::new();
    for tenant in ["t1", "t2"] {
        let (mine, id) = (store.clone(), id.to_string());
        commits.push(tokio::spawn(async move {
            let page = Page {
                events: vec![event(&id, secs)],
                ..Page::default()
            };
            mine.commit_page("s", &Partition::new("e", tenant), &page, Utc::now())
                .await
                .unwrap()
        }));
        // Each task holds the turn's handle twice once it queues for it (its store's and its
        // wait's), beside this store's and the held turn's: then its lookup is done.
        turn_handles_reach(store, 2 + 2 * commits.len()).await;
    }
    drop(turn);
    let mut summaries = Vec::new();
    for c in commits {
        summaries.push(c.await.unwrap());
    }
    summaries
}

#[tokio::test]
async fn an_id_forgotten_by_a_reset_while_a_commit_waits_is_appended_again() {
    let (_dir, store) = store().await;
    let (reset, committed) = commit_behind_a_reset(&store, vec![event("x", 1000)]).await;
    assert_eq!(reset.seen, 1);
    // The reset forgot x after the commit looked it up: the commit looks again and appends it.
    assert_eq!(committed.appended, 1);
}

/// Commits x (at 1000 s), then queues a reset that forgets every seen id (the writer's turn held
/// here), then a commit of `events` behind it, which looks its keys up before the reset runs.
async fn commit_behind_a_reset(store: &Store, events: Vec<Event>) -> (ResetSummary, CommitSummary) {
    let p = Partition::new("e", "");
    let x = Page {
        events: vec![event("x", 1000)],
        ..Page::default()
    };
    store.commit_page("s", &p, &x, Utc::now()).await.unwrap();
    let turn = store.writing.clone().lock_owned().await;
    let resetting = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .reset("s", Some(Utc.timestamp_opt(0, 0).unwrap()))
                .await
                .unwrap()
        }
    });
    turn_handles_reach(store, 4).await;
    let committing = tokio::spawn({
        let (store, p) = (store.clone(), p.clone());
        async move {
            let page = Page {
                events,
                ..Page::default()
            };
            store.commit_page("s", &p, &page, Utc::now()).await.unwrap()
        }
    });
    turn_handles_reach(store, 6).await;
    drop(turn);
    (resetting.await.unwrap(), committing.await.unwrap())
}

/// Waits (at most 10 s, else the test fails) until `n` handles to `store`'s writer's turn exist:
/// a task queued for the turn holds two (its store's and its wait's).
async fn turn_handles_reach(store: &Store, n: usize) {
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while Arc::strong_count(&store.writing) < n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "a task never queued for the writer's turn");
}

/// Keys newer than any of their scope skip the lookup (`seen::SeenBounds`); what is not newer is
/// still looked up: after a reopen (the bound read from disk by the first commit), for a late
/// insert older than the bound, and for ties with it.
#[tokio::test]
async fn only_keys_newer_than_the_scope_skip_the_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let p = Partition::new("events", "");
    let page = |events: Vec<Event>| Page {
        events,
        ..Page::default()
    };
    let summary = |appended, duplicates| CommitSummary {
        appended,
        duplicates,
        rejected: 0,
    };
    {
        let store = Store::open(&path, Access::Writer).await.unwrap();
        let s = store
            .commit_page(
                "src",
                &p,
                &page(vec![event("a", 100), event("b", 200)]),
                Utc::now(),
            )
            .await
            .unwrap();
        assert_eq!(s, summary(2, 0));
        let scope = store.seen_scope("src", "events").await.unwrap();
        assert_eq!(store.seen_bound(scope), Some(200_000));
    }
    let store = Store::open(&path, Access::Writer).await.unwrap();
    let scope = store.seen_scope("src", "events").await.unwrap();
    assert_eq!(
        store.seen_bound(scope),
        None,
        "not known before the first commit"
    );
    // An older page first: the bound comes from disk, not from this page alone.
    let s = store
        .commit_page("src", &p, &page(vec![event("a", 100)]), Utc::now())
        .await
        .unwrap();
    assert_eq!(s, summary(0, 1));
    assert_eq!(store.seen_bound(scope), Some(200_000));
    let s = store
        .commit_page(
            "src",
            &p,
            &page(vec![event("b", 200), event("c", 300), event("late", 150)]),
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(s, summary(2, 1), "b ties with the bound and was seen");
    assert_eq!(store.seen_bound(scope), Some(300_000));
    let s = store
        .commit_page(
            "src",
            &p,
            &page(vec![event("late", 150), event("c", 300), event("d", 400)]),
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(s, summary(1, 2), "a late insert below the bound was seen");
    // A reset forgets keys; the bound stays above them, so they are looked up and found new.
    let r = store
        .reset("src", Some(Utc.timestamp_opt(250, 0).unwrap()))
        .await
        .unwrap();
    assert_eq!(r.seen, 2);
    let s = store
        .commit_page(
            "src",
            &p,
            &page(vec![event("c", 300), event("d", 400)]),
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(s, summary(2, 0));
}

/// The race of `an_id_committed_by_another_partition_while_a_commit_waits_is_not_appended_twice`
/// with the scope's bound known and below the raced id: both lookups skip it as newer than the
/// scope; the second commit must look again under the turn, with the bound the first one raised.
#[tokio::test]
async fn an_id_newer_than_the_scope_committed_by_another_partition_is_not_appended_twice() {
    let (_dir, store) = store().await;
    let y = Page {
        events: vec![event("y", 500)],
        ..Page::default()
    };
    store
        .commit_page("s", &Partition::new("e", "t0"), &y, Utc::now())
        .await
        .unwrap();
    let summaries = tenants_racing_for_the_turn(&store, "x", 1000).await;
    let appended: Vec<u64> = summaries.iter().map(|s| s.appended).collect();
    assert_eq!(appended, [1, 0]);
    let records = store.read_batch(0, &["s".to_string()], 10).await.unwrap();
    assert_eq!(records.len(), 2, "y once and x once");
}

/// Pruning forgets an id whose key time is in the future (a vendor clock ahead of ours) once it
/// was not served for the retention, as it did before it walked key times; one in the past but
/// served recently stays.
#[tokio::test]
async fn pruning_forgets_future_keys_not_served_since() {
    let (_dir, store) = store().await;
    let p = Partition::new("events", "");
    let now = Utc::now();
    let future = event("future", (now + chrono::Duration::days(365)).timestamp());
    let page = Page {
        events: vec![future.clone(), event("past", 1)],
        ..Page::default()
    };
    store
        .commit_page("s", &p, &page, now - chrono::Duration::days(30))
        .await
        .unwrap();
    store
        .commit_page(
            "s",
            &p,
            &Page {
                events: vec![event("past", 1)],
                ..Page::default()
            },
            now,
        )
        .await
        .unwrap();
    let pruned = store
        .prune_seen("s", now - chrono::Duration::days(7))
        .await
        .unwrap();
    assert_eq!(pruned, 1, "the future id, served 30 days ago");
    let s = store
        .commit_page(
            "s",
            &p,
            &Page {
                events: vec![future, event("past", 1)],
                ..Page::default()
            },
            now,
        )
        .await
        .unwrap();
    assert_eq!((s.appended, s.duplicates), (1, 1));
}

/// A page whose lookup found x seen and y new, committed after a reset forgot x: x comes back from
/// the spare chunks and y from the page's chunks, both appended, in page order.
#[tokio::test]
async fn a_page_put_together_again_after_a_reset_keeps_its_order() {
    let (_dir, store) = store().await;
    let page = vec![event("w", 900), event("x", 1000), event("y", 1100)];
    let (reset, committed) = commit_behind_a_reset(&store, page).await;
    assert_eq!(reset.seen, 1);
    assert_eq!((committed.appended, committed.duplicates), (3, 0));
    let records = store.read_batch(0, &["s".to_string()], 10).await.unwrap();
    let ids: Vec<&str> = records.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(ids, ["x", "w", "x", "y"]);
}
