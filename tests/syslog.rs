//! The syslog sink against a real rsyslog on loopback: UDP, TCP with octet counting, TCP with LF
//! framing and TLS; N records in, the same N records out, byte for byte, for hostile values.

mod common;

#[path = "common/rsyslog.rs"]
mod rsyslog;
#[path = "common/tls.rs"]
mod tls;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;

use chrono::{TimeZone, Utc};
use secrelay::event::{Event, Page, Partition, Severity};
use secrelay::scheduler::{run_sink, Context, Mode};
use secrelay::settings::{SchedulerSettings, Settings, SinkSettings, SyslogSinkSettings};
use secrelay::sinks::syslog::SyslogSink;
use secrelay::sinks::{Sink, SinkError};
use secrelay::store::{Access, OutboxRecord, Store};
use secrelay::vendors::Vendor;

fn settings(extra: &str) -> SyslogSinkSettings {
    let text = format!("[sinks.s]\ntype = \"syslog\"\nhostname = \"collector-1\"\n{extra}\n");
    let s = Settings::from_toml(&text).expect("valid sink config");
    let SinkSettings::Syslog(syslog) = s.sinks["s"].clone() else {
        panic!("syslog settings")
    };
    syslog
}

fn vendors() -> HashMap<String, Vendor> {
    HashMap::from([
        ("sophos_eu".to_string(), Vendor::Sophos),
        ("incydr".to_string(), Vendor::Code42),
    ])
}

/// Records whose text carries everything that breaks naive CEF and syslog framing.
fn hostile_records() -> Vec<OutboxRecord> {
    let nasty = [
        "plain text",
        "equals=sign and back\\slash",
        "pipe|in the name",
        "carriage\rreturn",
        "line\nfeed and CRLF\r\nhere",
        "tab\there",
        "ünïcødé — 日本語 ✓",
        "fake=field act=blocked suser=root",
    ];
    nasty
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let record = serde_json::json!({
                "id": format!("id-{i}"),
                "type": "Event::Endpoint::Threat::Detected",
                "name": text,
                "severity": (["low", "medium", "high", "very_high"])[i % 4],
                "created_at": "2026-11-20T10:00:00.000Z",
                "when": "2026-11-20T09:59:58.000Z",
                "source": format!("CORP\\{text}"),
                "location": "host|7",
                "source_info": {"ip": "10.0.0.7"},
            });
            OutboxRecord {
                seq: i as i64 + 1,
                source: "sophos_eu".into(),
                stream: "events".into(),
                tenant: "t-1".into(),
                event_id: format!("id-{i}"),
                event_time: Utc
                    .timestamp_millis_opt(1_795_168_800_000 + i as i64)
                    .unwrap(),
                ingest_time: Utc.timestamp_millis_opt(1_795_168_900_000).unwrap(),
                severity: [1, 5, 8, 10][i % 4],
                record: record.to_string().into(),
            }
        })
        .collect()
}

fn expected(sink: &SyslogSink, records: &[OutboxRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            let mut out = Vec::new();
            sink.message(r, &mut out);
            String::from_utf8(out).unwrap()
        })
        .collect()
}

#[test]
fn the_message_bytes_are_exact() {
    let sink = SyslogSink::new("s", settings("address = \"127.0.0.1:1\""), vendors()).unwrap();
    let records = hostile_records();
    let pid = std::process::id();
    let first = &expected(&sink, &records)[4];
    assert_eq!(
        first,
        &format!(
            "<165>1 2026-11-20T10:00:00.004Z collector-1 secrelay {pid} events - \
             CEF:0|Sophos|Sophos Central|1.0|Event::Endpoint::Threat::Detected|line feed and CRLF  here|1|\
             externalId=id-4 rt=1795168800000 end=1795168798000 suser=CORP\\\\line\\nfeed and CRLF\\nhere \
             dhost=host|7 src=10.0.0.7"
        ),
        "PRI local4.notice (event severity 1 → 5: 20*8+5 = 165), RFC 5424 header, no BOM, CEF escaped"
    );
}

#[tokio::test]
async fn udp_tcp_octet_counting_and_tcp_lf_arrive_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = rsyslog::Rsyslog::start(dir.path(), None);
    receiver.udp_ready().await;
    let records = hostile_records();
    for (transport, framing, input) in [
        ("udp", "octet_counting", "udp"),
        ("tcp", "octet_counting", "tcp"),
        ("tcp", "lf", "tcp"),
    ] {
        let port = if transport == "udp" {
            receiver.udp
        } else {
            receiver.tcp
        };
        let mut sink = SyslogSink::new(
            "s",
            settings(&format!("address = \"127.0.0.1:{port}\"\ntransport = \"{transport}\"\nframing = \"{framing}\"")),
            vendors(),
        )
        .unwrap();
        let before = receiver.received(input).len();
        sink.deliver(&records).await.unwrap();
        let got = receiver.wait_for(input, before + records.len()).await;
        assert_eq!(
            got[before..],
            expected(&sink, &records)[..],
            "{transport}/{framing}"
        );
    }
}

#[tokio::test]
async fn rfc3164_and_json_payloads_arrive_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = rsyslog::Rsyslog::start(dir.path(), None);
    let records = hostile_records();
    let mut sink = SyslogSink::new(
        "s",
        settings(&format!(
            "address = \"127.0.0.1:{}\"\nformat = \"rfc3164\"\npayload = \"json\"",
            receiver.tcp
        )),
        vendors(),
    )
    .unwrap();
    sink.deliver(&records).await.unwrap();
    let got = receiver.wait_for("tcp", records.len()).await;
    assert_eq!(got, expected(&sink, &records));
    assert!(
        got[0].starts_with("<165>Nov 20 10:00:00 collector-1 secrelay["),
        "{}",
        got[0]
    );
    let json = got[4].split_once("]: ").unwrap().1;
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["record"]["name"], "line\nfeed and CRLF\r\nhere");
}

#[tokio::test]
async fn tls_with_a_trusted_ca_arrives_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let pki = tls::pki(dir.path());
    let receiver = rsyslog::Rsyslog::start(dir.path(), Some(&pki));
    let records = hostile_records();
    let mut sink = SyslogSink::new(
        "s",
        settings(&format!(
            "address = \"localhost:{}\"\ntransport = \"tls\"\nca_file = {:?}",
            receiver.tls,
            pki.ca.display().to_string()
        )),
        vendors(),
    )
    .unwrap();
    sink.check()
        .await
        .expect("TLS handshake with the trusted receiver");
    sink.deliver(&records).await.unwrap();
    sink.deliver(&records[..2]).await.unwrap();
    let got = receiver.wait_for("tls", records.len() + 2).await;
    let mut want = expected(&sink, &records);
    want.extend(expected(&sink, &records[..2]));
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_tls_receiver_with_an_untrusted_certificate_is_refused_unless_configured_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let pki = tls::pki(dir.path());
    let receiver = rsyslog::Rsyslog::start(dir.path(), Some(&pki));
    let other = tempfile::tempdir().unwrap();
    let stranger = tls::pki(other.path());
    let address = format!(
        "address = \"localhost:{}\"\ntransport = \"tls\"",
        receiver.tls
    );

    let mut strict = SyslogSink::new(
        "s",
        settings(&format!(
            "{address}\nca_file = {:?}",
            stranger.ca.display().to_string()
        )),
        vendors(),
    )
    .unwrap();
    let err = strict.check().await.unwrap_err();
    assert!(matches!(err, SinkError::Unavailable { .. }));
    assert!(err.to_string().contains("TLS handshake failed"), "{err}");
    let err = strict.deliver(&hostile_records()).await.unwrap_err();
    assert!(err.to_string().contains("TLS handshake failed"), "{err}");

    let mut lax = SyslogSink::new(
        "s",
        settings(&format!("{address}\ntls_verify = false")),
        vendors(),
    )
    .unwrap();
    lax.deliver(&hostile_records()[..1]).await.unwrap();
    assert_eq!(receiver.wait_for("tls", 1).await.len(), 1);
}

#[tokio::test]
async fn udp_messages_over_the_limit_are_cut_on_a_character_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = rsyslog::Rsyslog::start(dir.path(), None);
    let mut sink = SyslogSink::new(
        "s",
        settings(&format!(
            "address = \"127.0.0.1:{}\"\ntransport = \"udp\"\nudp_max_bytes = 200",
            receiver.udp
        )),
        vendors(),
    )
    .unwrap();
    let records = hostile_records();
    let before = receiver.udp_ready().await;
    sink.deliver(&records[6..7]).await.unwrap();
    let got = receiver.wait_for("udp", before + 1).await;
    let full = &expected(&sink, &records[6..7])[0];
    assert!(
        got[before].len() <= 200 && full.starts_with(&got[before]),
        "{}",
        got[before]
    );
}

/// The ids in CEF lines (`externalId=`) and how often each arrived. Lines without one (a frame
/// rsyslog cut at a restart) are left out.
fn id_counts(lines: &[String]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in lines {
        if let Some((_, ext)) = line.split_once("externalId=") {
            let id = ext.split(' ').next().unwrap_or_default().to_string();
            *counts.entry(id).or_insert(0) += 1;
        }
    }
    counts
}

/// Waits (up to 10 s) until every id in `want` arrived at `input`, and returns the counts of all.
async fn wait_for_ids(
    receiver: &rsyslog::Rsyslog,
    input: &str,
    want: &[String],
) -> HashMap<String, usize> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let counts = id_counts(&receiver.received(input));
        if want.iter().all(|id| counts.contains_key(id)) || std::time::Instant::now() > deadline {
            return counts;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A store under `dir` whose outbox holds `count` Sophos events of source `sophos_eu`; their ids.
async fn store_with_events(dir: &std::path::Path, count: usize) -> (Store, Vec<String>) {
    let store = Store::open(&dir.join("state.db"), Access::Writer)
        .await
        .unwrap();
    let partition = Partition::new("events", "t-1");
    let mut ids = Vec::with_capacity(count);
    let base = Utc::now() - chrono::Duration::hours(1);
    for chunk in (0..count).collect::<Vec<_>>().chunks(2_000) {
        let events = chunk
            .iter()
            .map(|i| {
                let id = format!("ev-{i:06}");
                let record = serde_json::json!({
                    "id": id,
                    "type": "Event::Endpoint::Threat::Detected",
                    "name": format!("threat {i} on host-{}", i % 97),
                    "severity": "high",
                    "created_at": "2026-11-20T10:00:00.000Z",
                    "when": "2026-11-20T09:59:58.000Z",
                    "source": "CORP\\user",
                    "location": format!("host-{}", i % 97),
                });
                let raw = serde_json::value::to_raw_value(&record).unwrap();
                ids.push(id.clone());
                Event::new(
                    id,
                    base + chrono::Duration::milliseconds(*i as i64),
                    Severity::new(8),
                    &raw,
                )
            })
            .collect();
        let page = Page {
            events,
            ..Page::default()
        };
        store
            .commit_page("sophos_eu", &partition, &page, Utc::now())
            .await
            .unwrap();
    }
    (store, ids)
}

/// The real delivery loop (backfill mode: it drains the outbox and ends) for one syslog sink.
fn delivery(
    store: Store,
    sink: SyslogSink,
    batch_size: usize,
) -> tokio::task::JoinHandle<secrelay::scheduler::SinkReport> {
    let ctx = Context::new(
        store,
        SchedulerSettings {
            jitter_secs: 0.0,
            backoff_initial_secs: 0.05,
            backoff_max_secs: 0.3,
            shutdown_grace_secs: 5.0,
        },
        u64::MAX / 2,
        Mode::Backfill {
            max_poll_failures: 1,
        },
        std::time::Duration::from_secs(45),
        BTreeMap::from([("sophos_eu".to_string(), vec!["s".to_string()])]),
        tokio_util::sync::CancellationToken::new(),
    );
    // No source runs: the loop drains what the outbox holds, then ends.
    ctx.sources_done.cancel();
    tokio::spawn(run_sink(
        ctx,
        sink,
        vec!["sophos_eu".to_string()],
        batch_size,
        std::time::Duration::ZERO,
    ))
}

/// Records per batch in [`restarted_receiver_gets_every_record`] (~249 bytes each when framed).
const RESTART_BATCH: usize = 200;
/// Receiver restarts in [`restarted_receiver_gets_every_record`].
const RESTARTS: usize = 5;

/// Delivers 20,000 records (~50 KB per batch of 200) through the real delivery loop to a real
/// rsyslog restarted five times on the same port while the loop runs, the sink closing each
/// connection in order once it carried `confirm_after_bytes`; checks that every record arrived
/// and returns the duplicates. A restart stops rsyslog reading, and what arrived since is lost in
/// the reset its close sends: its kernel acknowledged those bytes, and its window need not show
/// them, so only what was confirmed by a close in order may be let go.
async fn restarted_receiver_gets_every_record(confirm_after_bytes: usize) -> usize {
    const RECORDS: usize = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut receiver = rsyslog::Rsyslog::start(dir.path(), None);
    let ports = receiver.ports();
    let (store, ids) = store_with_events(state.path(), RECORDS).await;
    let sink = SyslogSink::new(
        "s",
        settings(&format!(
            "address = \"127.0.0.1:{}\"\nconfirm_after_bytes = {confirm_after_bytes}",
            ports.1
        )),
        vendors(),
    )
    .unwrap();
    let task = delivery(store, sink, RESTART_BATCH);
    // Restart the receiver (SIGTERM, then a new one on the same port, appending to the same file)
    // each time another sixth of the records has arrived, while the loop keeps delivering.
    for restart in 1..=RESTARTS {
        let threshold = restart * RECORDS / (RESTARTS + 1);
        while receiver.received("tcp").len() < threshold {
            assert!(
                !task.is_finished(),
                "delivery ended before restart {restart}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let path = dir.path().to_path_buf();
        receiver = tokio::task::spawn_blocking(move || {
            receiver.terminate();
            rsyslog::Rsyslog::start_on(&path, None, ports)
        })
        .await
        .unwrap();
    }
    let report = task.await.unwrap();
    assert_eq!(report.backlog, 0, "{report:?}");
    let counts = wait_for_ids(&receiver, "tcp", &ids).await;
    let missing: Vec<&String> = ids.iter().filter(|id| !counts.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {RECORDS} records never arrived after {RESTARTS} receiver restarts (first: {:?})",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    eprintln!("{duplicates} duplicates after {RESTARTS} restarts");
    duplicates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_restarted_five_times_during_delivery_gets_every_record() {
    // Every batch confirmed: a restart costs at most the batch it interrupted, and the one the
    // sink was writing when the reset came.
    let duplicates = restarted_receiver_gets_every_record(0).await;
    assert!(
        duplicates <= 2 * RESTARTS * RESTART_BATCH,
        "{duplicates} duplicates: more than two batches per restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_close_every_256_kib_a_restarted_receiver_gets_every_record() {
    // A close in order every 256 KiB (~6 batches): a restart costs at most what was sent since
    // the last one, and the batch being written.
    const CONFIRM: usize = 256 << 10;
    let batches_per_confirmation = CONFIRM / (RESTART_BATCH * 249) + 1;
    let duplicates = restarted_receiver_gets_every_record(CONFIRM).await;
    assert!(
        duplicates <= (batches_per_confirmation + 1) * RESTARTS * RESTART_BATCH,
        "{duplicates} duplicates: more than a confirmation's worth per restart"
    );
}

/// `backfill` of `sim`'s events and alerts into a TLS syslog sink at `localhost:port` that trusts
/// `pki`'s CA; fails the test unless it completes.
async fn backfill_over_tls(
    sim: &secrelay::simulate::sophos::SophosSim,
    dir: &std::path::Path,
    pki: &tls::Pki,
    port: u16,
    sink_extra: &str,
) {
    use secrelay::app::{self, BackfillOptions};
    let text = common::config_text(sim, dir, "", "")
        .replace("sinks = [\"out\"]", "sinks = [\"siem\"]")
        + &format!(
            "[sinks.siem]\ntype = \"syslog\"\ntransport = \"tls\"\naddress = \"localhost:{port}\"\nca_file = {:?}\n{sink_extra}\n",
            pki.ca.display().to_string()
        );
    let settings = Settings::from_toml(&text).unwrap();
    let summary = app::backfill(
        &settings,
        &BackfillOptions::default(),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(summary.complete(), "{summary:?}");
}

#[tokio::test]
async fn backfill_to_a_tls_receiver_leaves_every_record_there() {
    use secrelay::simulate::sophos::Identity;
    let dir = tempfile::tempdir().unwrap();
    let pki = tls::pki(dir.path());
    let receiver = rsyslog::Rsyslog::start(dir.path(), Some(&pki));
    let sim = common::finished_sim(Identity::Tenant, 1, 8_000).await;
    // Large batches: the receiver still has most of the last one to read when backfill ends.
    backfill_over_tls(&sim, dir.path(), &pki, receiver.tls, "batch_size = 5000").await;
    let want: Vec<String> = common::expected(&sim, &["events", "alerts"])
        .into_iter()
        .map(|(_, _, id)| id)
        .collect();
    // Alerts share their event's id, so count lines per id against the expected multiplicity.
    let mut want_counts: HashMap<String, usize> = HashMap::new();
    for id in &want {
        *want_counts.entry(id.clone()).or_insert(0) += 1;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let got = loop {
        let got = id_counts(&receiver.received("tls"));
        if got.values().sum::<usize>() >= want.len() || std::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let missing: usize = want_counts
        .iter()
        .map(|(id, n)| n.saturating_sub(got.get(id).copied().unwrap_or(0)))
        .sum();
    assert_eq!(
        missing,
        0,
        "{missing} of {} records missing at the TLS receiver after backfill exited",
        want.len()
    );
}

#[tokio::test]
async fn the_pipeline_delivers_every_sophos_event_to_rsyslog_once() {
    use secrelay::app::{self, BackfillOptions};
    use secrelay::simulate::sophos::Identity;
    let dir = tempfile::tempdir().unwrap();
    let receiver = rsyslog::Rsyslog::start(dir.path(), None);
    let sim = common::finished_sim(Identity::Tenant, 1, 500).await;
    let text = common::config_text(&sim, dir.path(), "", "")
        .replace("sinks = [\"out\"]", "sinks = [\"siem\"]")
        + &format!(
            "[sinks.siem]\ntype = \"syslog\"\naddress = \"127.0.0.1:{}\"\n",
            receiver.tcp
        );
    let settings = Settings::from_toml(&text).unwrap();
    let summary = app::backfill(
        &settings,
        &BackfillOptions::default(),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(summary.complete(), "{summary:?}");
    let want = common::expected(&sim, &["events", "alerts"]);
    let got = receiver.wait_for("tcp", want.len()).await;
    let mut ids: Vec<String> = got
        .iter()
        .map(|line| {
            let (_, ext) = line
                .split_once("externalId=")
                .expect("a CEF line with its id");
            ext.split(' ').next().unwrap().to_string()
        })
        .collect();
    ids.sort();
    let mut want_ids: Vec<String> = want.into_iter().map(|(_, _, id)| id).collect();
    want_ids.sort();
    // Alerts share their event's id (Sophos: event_service_event_id), so ids repeat across streams.
    assert_eq!(ids, want_ids);
}

/// A TLS syslog receiver that reads slowly (`per_read` bytes every `pause`) and, as a TLS 1.3
/// server normally does (rustls, OpenSSL), sends session tickets after the handshake. It keeps the
/// ids of the octet-counted CEF frames it read, over all connections.
struct SlowTlsReceiver {
    port: u16,
    ids: Arc<Mutex<HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowTlsReceiver {
    async fn start(pki: &tls::Pki, per_read: usize, pause: std::time::Duration) -> Self {
        let config = tls::server_config(pki, false);
        assert!(config.send_tls13_tickets > 0, "the receiver sends tickets");
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let ids: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let task = tokio::spawn({
            let ids = ids.clone();
            async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    let ids = ids.clone();
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let mut pending = Vec::new();
                        let mut buf = vec![0u8; per_read];
                        // Until close_notify (Ok(0)) or a reset (Err): what was not read is lost.
                        while let Ok(n) = tls.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            pending.extend_from_slice(&buf[..n]);
                            let lines = take_frames(&mut pending);
                            {
                                let mut seen = ids.lock().unwrap();
                                for (id, n) in id_counts(&lines) {
                                    *seen.entry(id).or_insert(0) += n;
                                }
                            }
                            tokio::time::sleep(pause).await;
                        }
                    });
                }
            }
        });
        SlowTlsReceiver { port, ids, task }
    }

    fn ids(&self) -> HashMap<String, usize> {
        self.ids.lock().unwrap().clone()
    }
}

impl Drop for SlowTlsReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Takes the complete octet-counted frames (`LEN SP MSG`) off the front of `pending`.
fn take_frames(pending: &mut Vec<u8>) -> Vec<String> {
    let mut lines = Vec::new();
    let mut at = 0;
    while let Some(space) = pending[at..].iter().position(|b| *b == b' ') {
        let len: usize = std::str::from_utf8(&pending[at..at + space])
            .ok()
            .and_then(|t| t.parse().ok())
            .expect("an octet count");
        let start = at + space + 1;
        if pending.len() < start + len {
            break;
        }
        lines.push(String::from_utf8_lossy(&pending[start..start + len]).into_owned());
        at = start + len;
    }
    pending.drain(..at);
    lines
}

/// A receiver that, once it has read `stop_after` records in all, stops reading on the connection
/// it is reading (as rsyslog does between a SIGTERM and closing its sockets), pauses, then closes
/// it with what it has not read still in its socket, which the kernel answers with a reset; on
/// every other connection it reads until the sink closes its side, then closes too.
struct StallingReceiver {
    port: u16,
    /// Each id it read, and how many times.
    ids: Arc<Mutex<HashMap<String, usize>>>,
    /// Whether it stalled with bytes still unread in its socket (so its close was a reset).
    stalled_unread: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl StallingReceiver {
    /// With `receive_buffer`, its sockets' receive buffer (bytes): a small one fills soon after it
    /// stops reading, so the sink's write blocks until the reset.
    async fn start(
        stop_after: usize,
        pause: std::time::Duration,
        receive_buffer: Option<usize>,
    ) -> StallingReceiver {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(bytes) = receive_buffer {
            // Set on the listener, so accepted sockets advertise a window that small from the start.
            socket.set_recv_buffer_size(bytes as u32).unwrap();
        }
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(16).unwrap();
        let port = listener.local_addr().unwrap().port();
        let ids = Arc::new(Mutex::new(HashMap::new()));
        let seen = ids.clone();
        // Records read on every connection so far, and whether the stall left bytes unread.
        let read = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stalled_unread_of_task = stalled.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let seen = seen.clone();
                let read = read.clone();
                let stalled = stalled.clone();
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                        let frames = take_frames(&mut pending);
                        let before = read.fetch_add(frames.len(), SeqCst);
                        if before < stop_after && before + frames.len() >= stop_after {
                            // This connection crossed it: count what it read, stop reading, and
                            // close with what arrived meanwhile unread (a reset).
                            {
                                let mut seen = seen.lock().unwrap();
                                for (id, n) in id_counts(&frames) {
                                    *seen.entry(id).or_insert(0) += n;
                                }
                            }
                            tokio::time::sleep(pause).await;
                            // Looked at, not read: it must stay unread for the close to reset.
                            let peek = stream.peek(&mut buf);
                            let unread =
                                tokio::time::timeout(std::time::Duration::from_millis(10), peek)
                                    .await
                                    .is_ok_and(|peeked| peeked.is_ok_and(|n| n > 0));
                            stalled.store(unread, SeqCst);
                            return;
                        }
                        let counts = id_counts(&frames);
                        let mut seen = seen.lock().unwrap();
                        for (id, n) in counts {
                            *seen.entry(id).or_insert(0) += n;
                        }
                    }
                });
            }
        });
        StallingReceiver {
            port,
            ids,
            stalled_unread: stalled_unread_of_task,
            task,
        }
    }
}

impl Drop for StallingReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends `records` records in batches of 100 (~25 KB) through the real delivery loop (backfill: it
/// drains the outbox and ends), each connection closed in order after two batches, to a receiver
/// that stops reading after `stop_after` of them and then resets the connection it was reading
/// (see [`StallingReceiver`]), and checks that every record arrived, with at most two batches of
/// duplicates (what that connection carried); `lost` says what a missing record means.
async fn a_receiver_that_stalls_gets_everything(
    records: usize,
    stop_after: usize,
    receive_buffer: Option<usize>,
    lost: &str,
) {
    let state = tempfile::tempdir().unwrap();
    let (store, ids) = store_with_events(state.path(), records).await;
    let pause = std::time::Duration::from_millis(300);
    let receiver = StallingReceiver::start(stop_after, pause, receive_buffer).await;
    let sink = SyslogSink::new(
        "s",
        settings(&format!(
            "address = \"127.0.0.1:{}\"\nconfirm_after_bytes = 40000",
            receiver.port
        )),
        vendors(),
    )
    .unwrap();
    let report = delivery(store, sink, 100).await.unwrap();
    assert_eq!(report.backlog, 0, "{report:?}");
    assert!(
        receiver.stalled_unread.load(SeqCst),
        "the receiver stopped reading with nothing unread: no reset was shown"
    );
    // The receiver reads what the last connection carried, up to its end.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let (missing, duplicates) = loop {
        let counts = receiver.ids.lock().unwrap().clone();
        let missing: Vec<String> = ids
            .iter()
            .filter(|id| !counts.contains_key(*id))
            .cloned()
            .collect();
        if missing.is_empty() || std::time::Instant::now() > deadline {
            break (missing, counts.values().map(|n| n - 1).sum::<usize>());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(
        missing.is_empty(),
        "{} records {lost} (first: {:?})",
        missing.len(),
        missing.first()
    );
    eprintln!("{duplicates} duplicates");
    assert!(
        duplicates <= 200,
        "{duplicates} duplicates: more than two batches"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_written_while_the_receiver_stopped_reading_go_again_after_its_reset() {
    // It stops after 3 of 10 batches, on the second connection, which the sink has just written its
    // second batch into (acknowledged, never read) and is closing in order to confirm both: the
    // reset answers that close.
    a_receiver_that_stalls_gets_everything(
        1_000,
        300,
        None,
        "written while the receiver had stopped reading never arrived",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_receiver_with_a_large_buffer_never_read_goes_again_after_its_reset() {
    // A 4 MiB receive buffer: its window stays far below its free space, so what it acknowledges
    // after it stopped reading does not shrink that window, and only the close shows it unread.
    a_receiver_that_stalls_gets_everything(
        1_000,
        300,
        Some(4 << 20),
        "acknowledged by a receiver whose window did not show them unread never arrived",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_during_a_blocked_write_sends_what_the_receiver_had_not_read_again() {
    // A small receive buffer: once it stops reading, the sink's write or its close in order waits
    // until the reset, mid-run. What it acknowledged unread goes again on the next connection.
    a_receiver_that_stalls_gets_everything(
        20_000,
        300,
        Some(16 * 1024),
        "the receiver acknowledged but never read were lost at its reset",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_while_backfill_closes_the_connection_sends_what_it_carried_again() {
    // It stops within the last batch: backfill has delivered everything and is closing the last
    // connection when the reset comes.
    a_receiver_that_stalls_gets_everything(
        1_000,
        900,
        None,
        "of the last batch never arrived after a reset at the close",
    )
    .await;
}

#[tokio::test]
async fn backfill_ends_tls_in_order_so_a_slow_receiver_that_sends_tickets_reads_everything() {
    use secrelay::simulate::sophos::Identity;
    let dir = tempfile::tempdir().unwrap();
    let pki = tls::pki(dir.path());
    // Slower than the sender: when backfill ends, much of what it sent is still unread.
    let receiver = SlowTlsReceiver::start(&pki, 4096, std::time::Duration::from_millis(10)).await;
    let sim = common::finished_sim(Identity::Tenant, 1, 1_000).await;
    backfill_over_tls(&sim, dir.path(), &pki, receiver.port, "").await;
    let mut want: HashMap<String, usize> = HashMap::new();
    for (_, _, id) in common::expected(&sim, &["events", "alerts"]) {
        *want.entry(id).or_insert(0) += 1;
    }
    let total: usize = want.values().sum();
    // Backfill has returned: whatever the receiver reads from now on was still in its socket.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let missing = loop {
        let got = receiver.ids();
        let missing: usize = want
            .iter()
            .map(|(id, n)| n.saturating_sub(got.get(id).copied().unwrap_or(0)))
            .sum();
        if missing == 0 || std::time::Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        missing, 0,
        "{missing} of {total} records never reached the TLS receiver after backfill exited"
    );
}

/// A plain TCP listener on loopback standing in for the receiver, and a syslog sink sending to it
/// with `extra` sink settings (TOML lines).
async fn tcp_receiver_and_sink(extra: &str) -> (tokio::net::TcpListener, SyslogSink) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sink = SyslogSink::new(
        "s",
        settings(&format!("address = \"127.0.0.1:{port}\"\n{extra}")),
        vendors(),
    )
    .unwrap();
    (listener, sink)
}

/// The octet-counted frames of `records`, as the sink writes them.
fn framed(sink: &SyslogSink, records: &[OutboxRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    for message in expected(sink, records) {
        out.extend_from_slice(format!("{} {message}", message.len()).as_bytes());
    }
    out
}

/// Accepts the sink's next connection (failing after 2 s: the sink did not open one).
async fn next_connection(listener: &tokio::net::TcpListener) -> tokio::net::TcpStream {
    tokio::time::timeout(std::time::Duration::from_secs(2), listener.accept())
        .await
        .expect("the sink opened a new connection")
        .unwrap()
        .0
}

/// Reads exactly `len` bytes (failing after 2 s).
async fn read_bytes(stream: &mut tokio::net::TcpStream, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    tokio::time::timeout(
        std::time::Duration::from_secs(2),
        stream.read_exact(&mut buf),
    )
    .await
    .expect("the batch arrives")
    .unwrap();
    buf
}

#[tokio::test]
async fn a_connection_the_receiver_closed_is_noticed_before_the_next_batch() {
    let (listener, mut sink) = tcp_receiver_and_sink("timeout_secs = 0.3").await;
    let records = hostile_records();
    sink.deliver(&records[..2]).await.unwrap();
    let mut first = next_connection(&listener).await;
    let want = framed(&sink, &records[..2]);
    assert_eq!(read_bytes(&mut first, want.len()).await, want);
    // The receiver read everything and closes in order (FIN), longer than `timeout_secs` after
    // the batch: nothing was in flight, so nothing needs sending again.
    drop(first);
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    sink.deliver(&records[2..4]).await.unwrap();
    let mut second = next_connection(&listener).await;
    let want = framed(&sink, &records[2..4]);
    assert_eq!(
        read_bytes(&mut second, want.len()).await,
        want,
        "the batch went on a new connection, not into the closed one"
    );
}

/// Closes the receiver's side of `stream` with a reset (what it had not read is gone), and gives
/// the reset a moment to reach the sink.
async fn reset(stream: tokio::net::TcpStream) {
    socket2::SockRef::from(&stream)
        .set_linger(Some(std::time::Duration::ZERO))
        .unwrap();
    drop(stream);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}

#[tokio::test]
async fn after_a_reset_the_last_batch_goes_again_on_the_new_connection() {
    let (listener, mut sink) = tcp_receiver_and_sink("").await;
    let records = hostile_records();
    sink.deliver(&records[..2]).await.unwrap();
    // The receiver dies without reading (a reset: what it had not read is gone).
    reset(next_connection(&listener).await).await;
    sink.deliver(&records[2..4]).await.unwrap();
    let mut second = next_connection(&listener).await;
    let mut want = framed(&sink, &records[..2]);
    want.extend(framed(&sink, &records[2..4]));
    assert_eq!(read_bytes(&mut second, want.len()).await, want);
}

#[tokio::test]
async fn what_a_reset_left_unsent_goes_to_the_restarted_receiver_when_the_sink_closes() {
    let (listener, mut sink) = tcp_receiver_and_sink("").await;
    let port = listener.local_addr().unwrap().port();
    let records = hostile_records();
    sink.deliver(&records[..2]).await.unwrap();
    // The receiver goes away without reading (a reset) and is not back yet: the next batch finds
    // the reset and cannot connect, so the first one waits in the sink, delivered but unread.
    let first = next_connection(&listener).await;
    drop(listener);
    reset(first).await;
    assert!(sink.deliver(&records[2..4]).await.is_err());
    // It is back as the run ends: closing the sink sends what it never read, then closes in order.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let receiver = tokio::spawn(async move {
        let stream = next_connection(&listener).await;
        read_until_closed(stream).await.unwrap()
    });
    sink.close().await;
    assert_eq!(
        everything_read(receiver, "the sink connected and closed").await,
        framed(&sink, &records[..2]),
        "the first batch, then EOF"
    );
}

/// Reads `stream` to its end (the sink closed its side) on a task of its own.
fn read_until_closed(
    mut stream: tokio::net::TcpStream,
) -> tokio::task::JoinHandle<std::io::Result<Vec<u8>>> {
    tokio::spawn(async move {
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.map(|_| all)
    })
}

/// What `reader` read up to the end (failing after 2 s: `expect` did not happen).
async fn everything_read(
    reader: tokio::task::JoinHandle<std::io::Result<Vec<u8>>>,
    expect: &str,
) -> Vec<u8> {
    tokio::time::timeout(std::time::Duration::from_secs(2), reader)
        .await
        .expect(expect)
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn an_idle_connection_is_closed_in_order_and_a_new_one_opened() {
    let (listener, mut sink) = tcp_receiver_and_sink("idle_reconnect_secs = 0.2").await;
    let records = hostile_records();
    sink.deliver(&records[..2]).await.unwrap();
    // The receiver reads until the sink closes its side, then closes its own.
    let first_read = read_until_closed(next_connection(&listener).await);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    sink.deliver(&records[2..4]).await.unwrap();
    assert_eq!(
        everything_read(first_read, "the idle connection was closed").await,
        framed(&sink, &records[..2]),
        "the first batch, then EOF"
    );
    let mut second = next_connection(&listener).await;
    let want = framed(&sink, &records[2..4]);
    assert_eq!(read_bytes(&mut second, want.len()).await, want);

    // At stop the sink shuts down its side and waits for the receiver to close.
    let second_read = read_until_closed(second);
    tokio::time::timeout(std::time::Duration::from_secs(2), sink.close())
        .await
        .expect("close ends once the receiver closed");
    assert!(second_read.await.unwrap().unwrap().is_empty());
}

#[tokio::test]
async fn what_a_receiver_that_never_closes_its_side_carried_goes_again() {
    // A close after every batch, waiting at most 0.3 s for the receiver's side.
    let (listener, mut sink) =
        tcp_receiver_and_sink("confirm_after_bytes = 0\ntimeout_secs = 0.3").await;
    let records = hostile_records();
    sink.deliver(&records[..2]).await.unwrap();
    // It reads everything, our end too, but keeps its side open: it never shows it read it all.
    let mut first = next_connection(&listener).await;
    let want = framed(&sink, &records[..2]);
    assert_eq!(read_bytes(&mut first, want.len()).await, want);
    // Long after the 0.3 s the close waits for its side (a loaded host runs that task late).
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    sink.deliver(&records[2..4]).await.unwrap();
    let mut second = next_connection(&listener).await;
    let mut want = framed(&sink, &records[..2]);
    want.extend(framed(&sink, &records[2..4]));
    assert_eq!(read_bytes(&mut second, want.len()).await, want);
    drop(first);
}

#[tokio::test]
async fn a_receiver_that_resets_every_close_holds_new_batches_back_instead_of_growing_a_tail() {
    let (listener, mut sink) = tcp_receiver_and_sink("confirm_after_bytes = 0").await;
    // It reads each connection to our end, then closes it with a reset (SO_LINGER 0).
    let receiver = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut stream = stream;
                let mut all = Vec::new();
                let _ = stream.read_to_end(&mut all).await;
                let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
            });
        }
    });
    // Batches of ~180 KB: nothing is ever confirmed, so each delivery adds one to what is held,
    // until more than 1 MiB (`confirm_after_bytes` × 4 + 1 MiB) is.
    let batch: Vec<OutboxRecord> = hostile_records().into_iter().cycle().take(600).collect();
    let batch_bytes = framed(&sink, &batch).len();
    assert!(batch_bytes > 150_000, "{batch_bytes}");
    let mut refused = Vec::new();
    for _ in 0..16 {
        if let Err(e) = sink.deliver(&batch).await {
            refused.push(e.to_string());
        }
    }
    receiver.abort();
    let first = refused
        .first()
        .expect("new batches are refused once what is held passes the limit");
    assert!(first.contains("without a close in order"), "{first}");
    // Once refused, what is held stops growing: every refusal names the same bytes.
    let held: Vec<&str> = refused
        .iter()
        .map(|e| e.split(" bytes it may not").next().unwrap_or(e))
        .map(|e| e.rsplit(' ').next().unwrap_or(e))
        .collect();
    assert!(refused.len() >= 4, "{refused:?}");
    assert!(held.windows(2).all(|w| w[0] == w[1]), "{held:?}");
    let bytes: usize = held[0].parse().unwrap();
    assert!(bytes <= (1 << 20) + 2 * batch_bytes, "{bytes} bytes held");
}

#[tokio::test]
async fn a_delivery_cut_short_while_a_close_is_pending_keeps_what_that_connection_carried() {
    // A close after every batch, waiting up to 1 s for a receiver that never closes its side.
    let (listener, mut sink) =
        tcp_receiver_and_sink("confirm_after_bytes = 0\ntimeout_secs = 1").await;
    let records = hostile_records();
    sink.deliver(&records[..2]).await.unwrap();
    let mut first = next_connection(&listener).await;
    let first_batch = framed(&sink, &records[..2]);
    assert_eq!(read_bytes(&mut first, first_batch.len()).await, first_batch);
    // The next delivery writes its batch, then waits for the first connection's close, and is
    // cut short there (as the stop grace cuts a delivery short).
    let cut = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        sink.deliver(&records[2..4]),
    )
    .await;
    assert!(cut.is_err(), "the delivery waited for the pending close");
    let mut second = next_connection(&listener).await;
    let second_batch = framed(&sink, &records[2..4]);
    assert_eq!(
        read_bytes(&mut second, second_batch.len()).await,
        second_batch
    );
    // Once that close has gone unanswered, what the first connection carried goes again.
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    sink.deliver(&records[4..6]).await.unwrap();
    let mut want = first_batch;
    want.extend(framed(&sink, &records[4..6]));
    assert_eq!(read_bytes(&mut second, want.len()).await, want);
    drop(first);
}
