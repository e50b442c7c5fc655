//! Splunk HTTP Event Collector envelopes: one compact JSON object per event, concatenated into a
//! request body (reference/sink-protocols.md §3.3).
//!
//! Owns: the envelope's field order and number formats. Must not: batch, compress or send.
//! Invariants: `time` is epoch seconds with milliseconds (not milliseconds); `event` is the vendor
//! record whole; `fields` is flat (strings only), as HEC requires.

use super::json::{write_record, write_str};
use crate::event::OutboxRecord;

/// Where an event goes in Splunk.
#[derive(Debug, Clone, Copy)]
pub struct HecMeta<'a> {
    /// `host`.
    pub host: &'a str,
    /// `source`.
    pub source: &'a str,
    /// `sourcetype`.
    pub sourcetype: &'a str,
    /// `index`, or the token's default index when `None`.
    pub index: Option<&'a str>,
}

/// Appends the envelope of `record` (no separator) to `out`:
/// `{"time":…,"host":…,"source":…,"sourcetype":…,"index":…,"event":{…},"fields":{…}}`.
pub fn write_event(record: &OutboxRecord, meta: &HecMeta<'_>, out: &mut Vec<u8>) {
    let ms = record.event_time.timestamp_millis();
    out.extend_from_slice(b"{\"time\":");
    out.extend_from_slice(format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000)).as_bytes());
    out.extend_from_slice(b",\"host\":");
    write_str(meta.host, out);
    out.extend_from_slice(b",\"source\":");
    write_str(meta.source, out);
    out.extend_from_slice(b",\"sourcetype\":");
    write_str(meta.sourcetype, out);
    if let Some(index) = meta.index {
        out.extend_from_slice(b",\"index\":");
        write_str(index, out);
    }
    out.extend_from_slice(b",\"event\":");
    write_record(&record.record, out);
    out.extend_from_slice(b",\"fields\":{\"secrelay_source\":");
    write_str(&record.source, out);
    out.extend_from_slice(b",\"stream\":");
    write_str(&record.stream, out);
    if !record.tenant.is_empty() {
        out.extend_from_slice(b",\"tenant\":");
        write_str(&record.tenant, out);
    }
    out.extend_from_slice(b",\"event_id\":");
    write_str(&record.event_id, out);
    out.extend_from_slice(b"}}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn envelope_bytes_are_exact() {
        let record = OutboxRecord {
            seq: 3,
            source: "incydr".into(),
            stream: "file_events".into(),
            tenant: String::new(),
            event_id: "0_abc\"q\"".into(),
            event_time: Utc.timestamp_millis_opt(1_795_168_800_007).unwrap(),
            ingest_time: Utc.timestamp_millis_opt(1_795_168_900_000).unwrap(),
            severity: 8,
            record: r#"{"event":{"id":"0_abc\"q\""},"note":"a\nb"}"#.into(),
        };
        let meta = HecMeta {
            host: "collector-1",
            source: "secrelay:incydr",
            sourcetype: "code42:file_event",
            index: Some("security"),
        };
        let mut out = Vec::new();
        write_event(&record, &meta, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"time":1795168800.007,"host":"collector-1","source":"secrelay:incydr","sourcetype":"code42:file_event","index":"security","event":{"event":{"id":"0_abc\"q\""},"note":"a\nb"},"fields":{"secrelay_source":"incydr","stream":"file_events","event_id":"0_abc\"q\""}}"#
        );
    }

    #[test]
    fn without_an_index_the_key_is_left_out_and_the_tenant_is_a_field() {
        let record = OutboxRecord {
            seq: 1,
            source: "sophos".into(),
            stream: "events".into(),
            tenant: "t-1".into(),
            event_id: "e".into(),
            event_time: Utc.timestamp_millis_opt(1_000).unwrap(),
            ingest_time: Utc.timestamp_millis_opt(1_000).unwrap(),
            severity: 0,
            record: "{}".into(),
        };
        let meta = HecMeta {
            host: "h",
            source: "s",
            sourcetype: "st",
            index: None,
        };
        let mut out = Vec::new();
        write_event(&record, &meta, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("\"index\""));
        assert!(text.starts_with(r#"{"time":1.000,"#), "{text}");
        assert!(text.ends_with(r#""fields":{"secrelay_source":"sophos","stream":"events","tenant":"t-1","event_id":"e"}}"#));
    }
}
