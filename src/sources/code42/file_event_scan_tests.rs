//! Differential tests: the scanner's view of a record against the serde path's, over the vendor's
//! fixtures, the simulator's record shape, and seeded, replayable mutations of them.

use super::*;
use serde_json::{json, Value};

const V1: &str = include_str!("../../../tests/fixtures/code42/file_event_v1.json");
const V2: &str = include_str!("../../../tests/fixtures/code42/file_event_v2.json");

/// Every top-level key the view reads.
const TOP_KEYS: [&str; 44] = [
    "@timestamp",
    "event",
    "user",
    "source",
    "destination",
    "file",
    "process",
    "risk",
    "eventType",
    "eventId",
    "eventTimestamp",
    "insertionTimestamp",
    "createTimestamp",
    "modifyTimestamp",
    "deviceUid",
    "actor",
    "deviceUserName",
    "emailSender",
    "sharedWith",
    "emailRecipients",
    "userUid",
    "osHostName",
    "domainName",
    "publicIpAddress",
    "fileName",
    "filePath",
    "url",
    "fileSize",
    "fileCategory",
    "md5Checksum",
    "processName",
    "processOwner",
    "syncDestination",
    "tabUrl",
    "tabUrls",
    "windowTitle",
    "exposure",
    "removableMediaBusType",
    "removableMediaVendor",
    "removableMediaName",
    "removableMediaSerialNumber",
    "removableMediaCapacity",
    "cloudDriveId",
    "riskSeverity",
];

/// Every nested key the view reads, as a path, and some it skips.
const NESTED_PATHS: [&str; 47] = [
    "event.action",
    "event.id",
    "event.inserted",
    "event.observer",
    "event.ingested",
    "user.email",
    "user.deviceUid",
    "user.id",
    "user.other",
    "source.email",
    "source.email.sender",
    "source.email.recipients",
    "source.name",
    "source.domain",
    "source.ip",
    "source.removableMedia",
    "source.removableMedia.busType",
    "source.removableMedia.vendor",
    "source.removableMedia.name",
    "source.removableMedia.serialNumber",
    "source.removableMedia.capacity",
    "source.category",
    "destination.user",
    "destination.user.email",
    "destination.email",
    "destination.email.recipients",
    "destination.name",
    "destination.tabs",
    "destination.removableMedia",
    "destination.removableMedia.name",
    "file.created",
    "file.modified",
    "file.name",
    "file.directory",
    "file.url",
    "file.sizeInBytes",
    "file.category",
    "file.hash",
    "file.hash.md5",
    "file.hash.sha256",
    "file.cloudDriveId",
    "process.executable",
    "process.owner",
    "risk.indicators",
    "risk.severity",
    "risk.score",
    "unknownTopKey",
];

/// A record shaped as the simulator serves them (and as the benchmarks send them).
fn simulator_record() -> Value {
    json!({
        "@timestamp": "2026-11-30T10:00:00.000Z",
        "destination": {"category": "Removable Media", "name": "SanDisk Cruzer"},
        "event": {"action": "file-created", "id": "0_147e9445-2f30-4a91-8b2a-91043c54c2f6_7",
                  "ingested": "2026-11-30T10:00:01.500Z", "inserted": "2026-11-30T10:00:03.123456Z",
                  "observer": "Endpoint", "relatedEvents": [], "shareType": []},
        "file": {"category": "Document", "cloudDriveId": null, "created": "2026-11-30T09:59:00.000Z",
                 "directory": "C:/Users/user7/Documents/",
                 "hash": {"md5": "0123456789abcdef0123456789abcdef", "sha256": null},
                 "modified": "2026-11-30T09:59:30.000Z", "name": "report-7.docx",
                 "sizeInBytes": 123456, "url": null},
        "process": {"executable": "C:\\Windows\\explorer.exe", "owner": "CORP\\user"},
        "risk": {"indicators": [], "score": 7, "severity": "HIGH", "trusted": false},
        "source": {"category": "Device", "domain": "corp.example.com", "ip": "50.237.1.2",
                   "name": "DESKTOP-0007", "operatingSystem": "Windows 10", "privateIp": ["192.168.1.2"]},
        "user": {"deviceUid": "935873453596901075", "email": "user7@example.com",
                 "id": "912098363086307007"}
    })
}

/// A v1 record with every top-level key the view reads, each once.
fn every_top_key_record() -> Value {
    let mut record = serde_json::Map::new();
    for (i, key) in TOP_KEYS.iter().enumerate() {
        record.insert((*key).to_string(), json!(format!("value-{i}")));
    }
    Value::Object(record)
}

/// A v2 record with every nested key the view reads, each once.
fn every_nested_key_record() -> Value {
    let mut record = simulator_record();
    for (i, path) in NESTED_PATHS.iter().enumerate() {
        set(&mut record, path, json!(format!("value-{i}")));
    }
    // Leaves under these were set after them: give them back their objects.
    set(
        &mut record,
        "destination.tabs",
        json!([{"url": "u", "title": "t"}, {"url": "v"}]),
    );
    set(
        &mut record,
        "risk.indicators",
        json!([{"name": "a"}, {"name": "b"}]),
    );
    record
}

/// Sets `path` (dotted) in `record`, making objects of whatever is on the way.
fn set(record: &mut Value, path: &str, value: Value) {
    let mut at = record;
    let mut keys = path.split('.').peekable();
    while let Some(key) = keys.next() {
        if !at.is_object() {
            *at = json!({});
        }
        let Some(object) = at.as_object_mut() else {
            unreachable!("made an object above");
        };
        if keys.peek().is_none() {
            object.insert(key.to_string(), value);
            return;
        }
        at = object.entry(key.to_string()).or_insert_with(|| json!({}));
    }
}

fn by_serde(text: &str) -> String {
    let mut parsed = None;
    format!("{:?}", FileEventView::of_text_by_serde(text, &mut parsed))
}

/// Asserts that the scan declines `text` or reads it exactly as serde does; whether it read it.
fn agrees(text: &str) -> bool {
    match FileEventView::scan(text) {
        Some(view) => {
            assert_eq!(format!("{view:?}"), by_serde(text), "{text}");
            true
        }
        None => false,
    }
}

#[test]
fn plain_records_are_read_by_the_scan_as_serde_reads_them() {
    let records = [
        V1.to_string(),
        V2.to_string(),
        simulator_record().to_string(),
        serde_json::to_string_pretty(&simulator_record()).unwrap(),
        every_top_key_record().to_string(),
        every_nested_key_record().to_string(),
        r#"{"eventId":"d","sharedWith":[{"cloudUsername":"a","cloudUsername":"b"},{"name":"n"},"x",3,true,null]}"#.to_string(),
        r#"{"event":{"id":"e-2","action":"x"},"destination":{"tabs":{"url":"no"}}}"#.to_string(),
        r#"{"event":"created","source":[1,"a"],"fileSize":0,"exposure":[["x"]]}"#.to_string(),
        r#" { } "#.to_string(),
    ];
    for record in &records {
        assert!(agrees(record), "the scan declined a plain record: {record}");
    }
}

#[test]
fn a_known_key_given_twice_is_left_to_serde() {
    for key in TOP_KEYS {
        let text = format!(r#"{{"{key}":"a","eventId":"x","{key}":"b"}}"#);
        assert!(FileEventView::scan(&text).is_none(), "{text}");
        assert!(agrees(&format!(r#"{{"{key}":"a","other":1,"other":2}}"#)));
    }
    for path in NESTED_PATHS {
        let (parent, key) = path.rsplit_once('.').unwrap_or(("", path));
        let skipped = ["other", "ingested", "category", "sha256", "score"];
        if parent.is_empty() || skipped.contains(&key) {
            continue;
        }
        let mut record = simulator_record();
        set(&mut record, path, json!("__TWICE__"));
        let text = record
            .to_string()
            .replace(r#""__TWICE__""#, &format!(r#""a","{key}":"b""#));
        assert!(FileEventView::scan(&text).is_none(), "{text}");
    }
}

/// Values put where a field is: every kind of JSON, some the scan reads and some it leaves to
/// serde (escapes `\u`, signs, fractions, exponents, out-of-range numbers, deep nesting).
const VALUES: [&str; 33] = [
    "null", "true", "false", "0", "7", "1700000000000", "18446744073709551615",
    "18446744073709551616", "-1", "-0", "1.5", "1e3", "1e999", "-1e999", r#""""#, r#""text""#,
    r#""a\"b\\c\/d\n\t\r\b\f""#, r#""\u00e9""#, r#""\ud800""#, r#""é ü 😀""#, "[]",
    r#"["a",1,null,{"name":"n"},[2]]"#, "{}", r#"{"cloudUsername":"c","name":"n"}"#,
    r#"{"name":null}"#, r#"{"cloudUsername":null,"name":"n"}"#,
    r#"[{"url":"u","title":"t"},5,{"url":"v"},{"url":"w","url":"x"}]"#,
    r#"{"id":"i","action":"a","inserted":"2026-01-01T00:00:00Z","x":{"y":[1,2]}}"#,
    r#"{"md5":"m","md5":"n"}"#, r#"{"name":"a","name":"b"}"#, " [ 1 , 2 ] ",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    r#"{"sender":"s","recipients":["r1","r2"],"busType":"USB"}"#,
];

/// Bytes a corrupting mutation writes.
const NOISE: &[u8] = b"\"\\{}[],: 0-.eE+x\x01";

/// xorshift64*: seeded and replayable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn mutated_records_are_read_as_serde_reads_them_or_left_to_it() {
    let bases = [
        serde_json::from_str::<Value>(V1).unwrap(),
        serde_json::from_str::<Value>(V2).unwrap(),
        simulator_record(),
        every_top_key_record(),
        every_nested_key_record(),
    ];
    let paths: Vec<&str> = TOP_KEYS
        .iter()
        .chain(NESTED_PATHS.iter())
        .copied()
        .collect();
    let mut rng = Rng(0x5eed_0fc0_de42);
    let (mut read, mut tried) = (0, 0);
    for _ in 0..6000 {
        let mut record = bases[rng.below(bases.len())].clone();
        // One to three fields replaced by values of any kind, written in as text (some of them,
        // such as `1e999`, a `Value` cannot hold).
        let holes = 1 + rng.below(3);
        let mut values = Vec::new();
        for hole in 0..holes {
            set(
                &mut record,
                paths[rng.below(paths.len())],
                json!(format!("__HOLE{hole}__")),
            );
            values.push(VALUES[rng.below(VALUES.len())]);
        }
        let mut text = if rng.below(4) == 0 {
            serde_json::to_string_pretty(&record).unwrap()
        } else {
            record.to_string()
        };
        for (hole, value) in values.iter().enumerate() {
            text = text.replace(&format!(r#""__HOLE{hole}__""#), value);
        }
        // Then, a quarter of the time, an ASCII byte overwritten; an eighth, the text cut short.
        if rng.below(4) == 0 {
            let at = rng.below(text.len());
            if text.as_bytes()[at].is_ascii() {
                let mut bytes = text.into_bytes();
                bytes[at] = NOISE[rng.below(NOISE.len())];
                text = String::from_utf8(bytes).unwrap();
            }
        }
        if rng.below(8) == 0 {
            let mut at = rng.below(text.len());
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            text.truncate(at);
        }
        tried += 1;
        if agrees(&text) {
            read += 1;
        }
    }
    // About 40 % of these mutations keep the record plain (no hole value it declines, no
    // corruption): the scan must read those, not decline everything.
    assert!(
        read * 3 > tried,
        "the scan read only {read} of {tried} mutated records"
    );
}

#[test]
fn edge_cases_are_read_as_serde_reads_them_or_left_to_it() {
    // Parts serde only ignores: a lone surrogate escape, a number out of range, a NUL escape.
    for text in [
        r#"{"x":"\ud800","eventId":"e"}"#,
        r#"{"source":{"x":"\ud800"},"eventId":"e"}"#,
        r#"{"destination":{"tabs":[[1e999]]},"eventId":"e"}"#,
        r#"{"eventId":{"x":1e999}}"#,
        r#"{"x":"\u0000","eventId":"e"}"#,
    ] {
        assert!(agrees(text), "the scan declined {text}");
    }
    // Parts serde reads where the view expects an object, or reads as a value: it fails on them
    // there (or reads `-0` as a float), so the scan must leave them to it.
    for text in [
        r#"{"risk":9e921,"eventId":"e"}"#,
        r#"{"destination":"\ud800","eventId":"e"}"#,
        r#"{"fileSize":-0}"#,
        r#"{"eventType":[],"eventType":true}"#,
        "{}\u{a0}",
    ] {
        assert!(FileEventView::scan(text).is_none(), "the scan read {text}");
        assert!(!agrees(text));
    }
    // Nesting past serde's limit for values it reads, under a field it reads.
    let deep = format!(
        r#"{{"removableMediaBusType":{}1{}}}"#,
        "[".repeat(130),
        "]".repeat(130)
    );
    assert!(FileEventView::scan(&deep).is_none());
}
