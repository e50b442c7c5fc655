//! The JSON event envelope, one compact object per line (NDJSON).
//!
//! Owns: the envelope's field names and order, and the JSON strings and embedded record that the
//! HEC envelope writes the same way. Must not: pretty-print, or emit a raw CR or LF inside
//! a line. Invariant: each call appends exactly one line ending in `\n`; the vendor record is
//! embedded whole, as the compact text the outbox holds.

use super::decimal::Decimal;

use crate::event::OutboxRecord;

/// Appends the envelope of `record` and a `\n` to `out`:
/// `{"source":…,"stream":…,"tenant":…,"id":…,"time":…,"ingest_time":…,"severity":…,"record":{…}}`.
/// Times are RFC 3339 UTC with milliseconds.
pub fn write_line(record: &OutboxRecord, out: &mut Vec<u8>) {
    let strings = [
        ("source", record.source.as_str()),
        ("stream", &record.stream),
        ("tenant", &record.tenant),
        ("id", &record.event_id),
    ];
    out.push(b'{');
    for (i, (key, value)) in strings.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(key, out);
        out.push(b':');
        write_str(value, out);
    }
    // Times need no escaping: digits, `-`, `:`, `.`, `T`, `Z` and a sign.
    for (key, time) in [
        (&b",\"time\":\""[..], record.event_time),
        (b",\"ingest_time\":\"", record.ingest_time),
    ] {
        out.extend_from_slice(key);
        super::timestamp::write_millis(time, out);
        out.push(b'"');
    }
    out.extend_from_slice(b",\"severity\":");
    out.extend_from_slice(Decimal::unsigned(record.severity.into(), 1).as_bytes());
    out.extend_from_slice(b",\"record\":");
    write_record(&record.record, out);
    out.extend_from_slice(b"}\n");
}

/// Appends `text` as a JSON string.
pub(crate) fn write_str(text: &str, out: &mut Vec<u8>) {
    // Most of what is written (ids, names, keys) needs no escape: copied whole, without the
    // setup of a serializer, which cost more than the copy for strings this short.
    if !text.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
        return;
    }
    // serde_json's string escaping is exact JSON; writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// Appends the vendor record `text` (JSON) whole, on one line: as it is when it has no raw CR or
/// LF, else compacted.
pub(crate) fn write_record(text: &str, out: &mut Vec<u8>) {
    // The outbox holds compact JSON (see `Event::new`); guard the one-line invariant anyway.
    if memchr::memchr2(b'\n', b'\r', text.as_bytes()).is_some() {
        out.extend_from_slice(crate::event::compact_json(text).as_bytes());
    } else {
        out.extend_from_slice(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn record(text: &str) -> OutboxRecord {
        OutboxRecord {
            seq: 7,
            source: "sophos_eu".into(),
            stream: "events".into(),
            tenant: "t-1".into(),
            event_id: "id\"1".into(),
            event_time: Utc.timestamp_millis_opt(1_700_000_000_123).unwrap(),
            ingest_time: Utc.timestamp_millis_opt(1_700_000_001_000).unwrap(),
            severity: 8,
            record: text.into(),
        }
    }

    #[test]
    fn envelope_bytes_are_exact() {
        let mut out = Vec::new();
        write_line(&record(r#"{"b":1,"a":"x\ny"}"#), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"source\":\"sophos_eu\",\"stream\":\"events\",\"tenant\":\"t-1\",\"id\":\"id\\\"1\",\
             \"time\":\"2023-11-14T22:13:20.123Z\",\"ingest_time\":\"2023-11-14T22:13:21.000Z\",\
             \"severity\":8,\"record\":{\"b\":1,\"a\":\"x\\ny\"}}\n"
        );
    }

    #[test]
    fn a_record_with_raw_line_breaks_still_makes_one_line() {
        let mut out = Vec::new();
        write_line(&record("{\n\"a\": 1\r\n}"), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches('\n').count(), 1);
        assert!(text.ends_with(",\"record\":{\"a\":1}}\n"), "{text}");
        let parsed: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(parsed["record"]["a"], 1);
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut cases: Vec<String> = [
            "",
            "plain",
            "with space",
            "quote\"in",
            "back\\slash",
            "tab\tand\nline",
            "\u{0}\u{1f}\u{7f}",
            "é ü 漢字 🙂",
            "C:\\Windows\\explorer.exe",
            "</script>",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Every byte below 0x80 alone and between plain text.
        cases.extend((0u8..0x80).map(|b| format!("a{}b", char::from(b))));
        for text in cases {
            let mut out = Vec::new();
            write_str(&text, &mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(&text).unwrap(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn envelope_times_outside_the_fast_path_are_still_rfc3339() {
        let mut r = record(r#"{"a":1}"#);
        r.event_time = chrono::DateTime::<Utc>::MIN_UTC;
        let mut out = Vec::new();
        write_line(&r, &mut out);
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            parsed["time"],
            r.event_time
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                .as_str()
        );
    }
}
