//! The store alone: commit N file-event-like records in pages, then read them back in sink batches
//! (advancing and pruning as the delivery loop does), on a real disk with `synchronous=FULL`.
//! Prints commit and read rates, bytes written per event (`/proc/self/io`) and the file's size.
//! What the pipeline bench measures end to end, without HTTP, parsing or a sink.
//!
//! `cargo bench --bench store` (default 200,000 events), or `-- N`.

use std::time::Instant;

use chrono::{TimeZone, Utc};
use secrelay::event::{Event, Page, Partition, Severity};
use secrelay::store::{Access, Store};
use serde_json::value::RawValue;

/// Events per committed page (the Code42 source's default page size).
const PAGE: u64 = 10_000;
/// Records per sink batch (the file sink's default).
const BATCH: usize = 2000;

/// A record shaped like a Code42 file event (~1.2 KB): mostly the same keys and values, an id and a
/// few fields that change.
fn file_event(i: u64) -> Event {
    let id = format!("0_1d71796f-{i:08}-4231-9d8e-df6434da4663_{}", i * 7919);
    let record = format!(
        r#"{{"@timestamp":"2026-11-30T10:{:02}:{:02}.000Z","event":{{"id":"{id}","inserted":"2026-11-30T10:00:00.000Z","action":"file-modified","observer":"Endpoint","shareType":[],"detectorDisplayName":null}},"user":{{"email":"user{}@example.com","id":"{}","deviceUid":"{}"}},"file":{{"name":"report-{i}.xlsx","directory":"C:/Users/user{}/Documents/Finance/Quarterly/","category":"Spreadsheet","mimeTypeByBytes":"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet","mimeTypeByExtension":"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet","sizeInBytes":{},"owner":"user{}","created":"2026-11-29T08:00:00.000Z","modified":"2026-11-30T09:59:00.000Z","hash":{{"md5":"{:032x}","sha256":"{:064x}"}}}},"source":{{"category":"Device","name":"DESKTOP-{}","domain":"corp.example.com","ip":"10.0.{}.{}","privateIp":["10.0.{}.{}"],"operatingSystem":"Windows 11"}},"destination":{{"category":"Cloud Storage","name":"Dropbox"}},"process":{{"executable":"EXCEL.EXE","owner":"user{}"}},"risk":{{"score":{},"severity":"{}","indicators":[{{"name":"Spreadsheet","weight":2}},{{"name":"Remote","weight":3}}],"trusted":false}}}}"#,
        (i / 60) % 60,
        i % 60,
        i % 50,
        10_000 + i % 50,
        935_873_453_596_901_068u64 + i % 50,
        i % 50,
        i * 1031,
        i % 50,
        u128::from(i) * 0x9e37_79b9_7f4a_7c15,
        u128::from(i) * 0x2545_f491_4f6c_dd1d,
        i % 50,
        (i / 256) % 256,
        i % 256,
        (i / 256) % 256,
        i % 256,
        i % 50,
        i % 10,
        ["LOW", "MODERATE", "HIGH", "CRITICAL"][(i % 4) as usize],
    );
    let raw = RawValue::from_string(record).expect("valid JSON");
    let time = Utc
        .timestamp_millis_opt(1_764_496_800_000 + i as i64)
        .single()
        .expect("in range");
    Event::new(id, time, Severity::new(5), &raw)
}

fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes: ").map(str::to_string))
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    let base = std::env::var_os("CARGO_TARGET_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(base).expect("temporary directory");
    let path = dir.path().join("state.db");
    let store = Store::open(&path, Access::Writer).await.expect("store");
    let partition = Partition::new("file_events", "");
    let sources = vec!["code42".to_string()];
    let sinks = vec!["file".to_string()];

    // Commit every page first: the cost of the commit alone.
    let mut text = 0u64;
    let mut commit_secs = 0f64;
    let written_before = written_bytes();
    for first in (0..n).step_by(PAGE as usize) {
        let page = Page {
            events: (first..(first + PAGE).min(n)).map(file_event).collect(),
            ..Page::default()
        };
        text += page
            .events
            .iter()
            .map(|e| e.record.as_str().len() as u64)
            .sum::<u64>();
        let started = Instant::now();
        store
            .commit_page("code42", &partition, &page, Utc::now())
            .await
            .expect("commit");
        commit_secs += started.elapsed().as_secs_f64();
    }
    let committed_written = written_bytes() - written_before;
    let file_bytes = std::fs::metadata(&path).map_or(0, |m| m.len())
        + std::fs::metadata(format!("{}-wal", path.display())).map_or(0, |m| m.len());

    // Read it back as one sink: batch, advance, prune.
    let started = Instant::now();
    let mut position = 0;
    let mut read = 0u64;
    loop {
        let batch = store
            .read_sink_batch("file", position, &sources, BATCH)
            .await
            .expect("read");
        let Some(last) = batch.last() else { break };
        position = last.seq;
        read += batch.len() as u64;
        store
            .advance_sink("file", position, batch.len() as u64, &[], Utc::now())
            .await
            .expect("advance");
        store.prune_outbox("code42", &sinks).await.expect("prune");
    }
    let read_secs = started.elapsed().as_secs_f64();
    assert_eq!(read, n, "every committed event read back once");
    store.close().await;

    println!(
        "{:>9} {:>12} {:>12} {:>12} {:>14} {:>12}",
        "events", "commit ev/s", "read ev/s", "record B", "written B/ev", "file B/ev"
    );
    println!(
        "{:>9} {:>12.0} {:>12.0} {:>12} {:>14} {:>12}",
        n,
        n as f64 / commit_secs,
        n as f64 / read_secs,
        text / n,
        committed_written / n,
        file_bytes / n
    );
}
