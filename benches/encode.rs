//! Encoding throughput on one core: CEF lines from vendor records (the mapping and the escaping),
//! syslog framing around them, and the JSON envelope. Prints events/s for each.
//!
//! `cargo bench --bench encode [-- <text>]`: with a text, only the measures whose label holds it.
//! `ENCODE_N` sets the events per measure (default 1,000,000): a small N lets an instruction
//! counter (`valgrind --tool=callgrind`) compare two builds where timings on a shared machine
//! cannot.

use std::hint::black_box;
use std::time::Instant;

use chrono::{TimeZone, Utc};
use secrelay::encode::syslog::{frame, write_message, Framing, Header, HeaderFormat};
use secrelay::store::OutboxRecord;
use secrelay::vendors::Vendor;

/// Events per measure: `ENCODE_N`, else 1,000,000.
fn events() -> usize {
    std::env::var("ENCODE_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000)
}

fn measure(label: &str, mut work: impl FnMut(usize) -> usize) {
    // `cargo bench` passes `--bench`; the first other argument picks measures by label.
    let only = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    if only.is_some_and(|text| !label.contains(&text)) {
        return;
    }
    // Warm up, then time N events.
    let mut bytes = 0;
    for i in 0..10_000 {
        bytes += work(i);
    }
    let started = Instant::now();
    let n = events();
    for i in 0..n {
        bytes += work(i);
    }
    let secs = started.elapsed().as_secs_f64();
    black_box(bytes);
    println!(
        "{label:<58} {:>12.0} events/s {:>8.1} MB/s",
        n as f64 / secs,
        bytes as f64 / secs / 1e6 / 1.0
    );
}

fn main() {
    let v2: serde_json::Value =
        serde_json::from_str(include_str!("../tests/fixtures/code42/file_event_v2.json"))
            .expect("fixture");
    let v1: serde_json::Value =
        serde_json::from_str(include_str!("../tests/fixtures/code42/file_event_v1.json"))
            .expect("fixture");
    let sophos = serde_json::json!({
        "id": "0b3f5a8e-3c0a-4d36-8f26-9d3b1c4e5f60", "type": "Event::Endpoint::Threat::Detected",
        "name": "Malware detected: 'EICAR-AV-Test' at 'C:\\Users\\alice\\eicar.com'", "severity": "high",
        "group": "MALWARE", "when": "2026-11-20T10:00:00.000Z", "created_at": "2026-11-20T10:00:02.500Z",
        "customer_id": "6b761f1c-d71a-4bb4-86fb-8b853864eb07", "endpoint_id": "da4b7f7e-e3ea-4ae7-bc89-89eb32c36224",
        "source": "CORP\\alice", "location": "host-098", "source_info": {"ip": "10.1.2.3"}
    });
    let record_text = v2.to_string();
    let outbox = OutboxRecord {
        seq: 1,
        source: "incydr".into(),
        stream: "file_events".into(),
        tenant: String::new(),
        event_id: "x".into(),
        event_time: Utc.timestamp_millis_opt(1_795_168_800_000).unwrap(),
        ingest_time: Utc.timestamp_millis_opt(1_795_168_800_000).unwrap(),
        severity: 8,
        record: record_text.clone().into(),
    };
    println!("one core, {} events each", events());
    let mut line = String::with_capacity(2048);
    let built = Vendor::Code42.cef("file_events", &v2, 8);
    measure(
        "CEF encoding alone: escape + write a mapped Code42 v2 record",
        |_| {
            line.clear();
            built.write(&mut line);
            line.len()
        },
    );
    let built = Vendor::Sophos.cef("events", &sophos, 8);
    measure(
        "CEF encoding alone: escape + write a mapped Sophos record",
        |_| {
            line.clear();
            built.write(&mut line);
            line.len()
        },
    );
    measure("CEF: Code42 v2 file event (mapping + escaping)", |_| {
        line.clear();
        Vendor::Code42.cef("file_events", &v2, 8).write(&mut line);
        line.len()
    });
    measure("CEF: Code42 v1 file event (mapping + escaping)", |_| {
        line.clear();
        Vendor::Code42.cef("file_events", &v1, 8).write(&mut line);
        line.len()
    });
    measure("CEF: Sophos SIEM event (mapping + escaping)", |_| {
        line.clear();
        Vendor::Sophos.cef("events", &sophos, 8).write(&mut line);
        line.len()
    });
    measure(
        "CEF from stored text: parse JSON + map + escape (Code42 v2)",
        |_| {
            line.clear();
            let v: serde_json::Value = serde_json::from_str(&record_text).expect("json");
            Vendor::Code42.cef("file_events", &v, 8).write(&mut line);
            line.len()
        },
    );
    let code42 = Vendor::Code42.mapping();
    measure("CEF from stored text as sinks map it (Code42 v2)", |_| {
        line.clear();
        code42
            .cef_of_text("file_events", &record_text, 8)
            .write(&mut line);
        line.len()
    });
    let text =
        "[sinks.s]\ntype = \"syslog\"\naddress = \"127.0.0.1:1\"\nhostname = \"collector-1\"\n";
    let settings = secrelay::settings::Settings::from_toml(text).expect("settings");
    let secrelay::settings::SinkSettings::Syslog(syslog) = settings.sinks["s"].clone() else {
        panic!("syslog settings")
    };
    let mut mappings = secrelay::mapping::Mappings::new();
    mappings.insert("incydr", Vendor::Code42.mapping());
    let sink = secrelay::sinks::syslog::SyslogSink::new("s", syslog, mappings).expect("sink");
    let mut message = Vec::with_capacity(4096);
    measure(
        "Syslog message from a stored record as the sink builds it (Code42 v2)",
        |_| {
            message.clear();
            sink.message(&outbox, &mut message);
            message.len()
        },
    );
    // Batches of 100, which one thread encodes (the sink splits larger ones in two).
    let encode = secrelay::sinks::Sink::encoder(&sink).expect("a TCP sink encodes ahead");
    let hundred = vec![outbox.clone(); 100];
    let mut frames = Vec::new();
    measure(
        "Syslog frames of a batch as the sink's encoder makes them (Code42 v2)",
        |i| {
            if i % 100 == 0 {
                frames = encode(&hundred);
            }
            frames.len() / 100
        },
    );
    let mut framed = Vec::with_capacity(4096);
    measure(
        "RFC 5424 header + octet-counted frame around a CEF line",
        |i| {
            line.clear();
            Vendor::Sophos.cef("events", &sophos, 8).write(&mut line);
            let header = Header {
                facility: 20,
                severity: 3,
                time: outbox.event_time,
                hostname: "collector-1",
                app_name: "secrelay",
                procid: Some(4242),
                msgid: "events",
            };
            let mut message = Vec::with_capacity(line.len() + 100);
            write_message(
                HeaderFormat::Rfc5424,
                &header,
                line.as_bytes(),
                &mut message,
            );
            if i % 1000 == 0 {
                framed.clear();
            }
            frame(Framing::OctetCounting, &message, &mut framed);
            message.len()
        },
    );
    let mut hec = Vec::with_capacity(4096);
    let meta = secrelay::encode::hec::HecMeta {
        host: "collector-1",
        source: "secrelay:incydr",
        sourcetype: "code42:file_event",
        index: Some("security"),
    };
    measure("HEC envelope around a stored record (Code42 v2)", |_| {
        hec.clear();
        secrelay::encode::hec::write_event(&outbox, &meta, &mut hec);
        hec.len()
    });
    let mut json = Vec::with_capacity(4096);
    measure("JSON envelope (NDJSON line) around a stored record", |_| {
        json.clear();
        secrelay::encode::json::write_line(&outbox, &mut json);
        json.len()
    });
}
