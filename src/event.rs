//! The vendor-neutral unit of work: [`Event`], its [`Severity`], the partition it came from and the
//! [`Page`] a source returns from one poll.
//!
//! Owns: the shape every source produces and every sink consumes. Must not: know any vendor's field
//! names. Invariant: `Event::record` is the vendor's record whole (unknown fields survive), as compact
//! JSON text without raw line breaks, so it can be embedded in NDJSON or HEC as it is.

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

use crate::shared_text::SharedText;

/// Severity on the 0–10 scale CEF uses. Values above 10 are clamped to 10 on construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Severity(u8);

impl Severity {
    /// Builds a severity, clamping to 0–10 so a vendor's out-of-range value can never escape.
    pub fn new(value: u8) -> Self {
        Severity(value.min(10))
    }

    /// The 0–10 value.
    pub fn value(self) -> u8 {
        self.0
    }
}

/// Which slice of a source a cursor belongs to: one stream of one tenant.
///
/// Sources with a single tenant use the empty string for `tenant`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition {
    /// Stream name, e.g. `events`, `alerts`, `file_events`.
    pub stream: String,
    /// Vendor tenant id, or `""` when the source has only one.
    pub tenant: String,
}

impl Partition {
    /// A partition of `stream` for `tenant` (`""` when there is no tenant).
    pub fn new(stream: impl Into<String>, tenant: impl Into<String>) -> Self {
        Partition {
            stream: stream.into(),
            tenant: tenant.into(),
        }
    }
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.tenant.is_empty() {
            f.write_str(&self.stream)
        } else {
            write!(f, "{}@{}", self.stream, self.tenant)
        }
    }
}

/// One vendor record on its way to the sinks.
#[derive(Debug, Clone)]
pub struct Event {
    /// Vendor-stable identity, unique within (source, stream); with `key_time`, the seen-set key.
    pub id: String,
    /// When the vendor says it happened (or was recorded, where that is what the vendor cursors on).
    pub time: DateTime<Utc>,
    /// The time that, with `id`, keys the seen-set: it must be the same every time the vendor
    /// serves the record (the store keys ids by time, so a page lands in one place of the set).
    /// `time` unless the source says otherwise ([`Event::with_key_time`]).
    pub key_time: DateTime<Utc>,
    /// Normalised severity.
    pub severity: Severity,
    /// The vendor's record, compact JSON, whole: a slice of the response body it came in when
    /// the source shares the body ([`Event::in_body`]), else a copy.
    pub record: SharedText,
}

impl Event {
    /// Builds an event, compacting `record` so that it holds no raw whitespace outside strings.
    ///
    /// Vendors mostly send compact JSON: then the record is copied once, as it is, and not parsed
    /// again. Only a record with whitespace outside its strings is rewritten (and checked).
    pub fn new(id: String, time: DateTime<Utc>, severity: Severity, record: &RawValue) -> Self {
        Event::in_body(id, time, severity, record, &SharedText::default())
    }

    /// [`Event::new`] for a record read from `body`: the record stays a slice of the body rather
    /// than a copy of it, unless it must be compacted.
    pub fn in_body(
        id: String,
        time: DateTime<Utc>,
        severity: Severity,
        record: &RawValue,
        body: &SharedText,
    ) -> Self {
        Event::in_body_json(id, time, severity, record.get(), body)
    }

    /// [`Event::in_body`] of a record given as text: the text of one JSON value that serde_json
    /// has read already (a `&RawValue`'s, or a record of a page read in one pass, see
    /// `sources::json_envelope`). It is not checked again.
    pub fn in_body_json(
        id: String,
        time: DateTime<Utc>,
        severity: Severity,
        record: &str,
        body: &SharedText,
    ) -> Self {
        let record = match whitespace_outside_strings(record) {
            None => body.share(record),
            Some(first) => {
                SharedText::from(compacted(record, first).unwrap_or_else(|| record.to_string()))
            }
        };
        Event {
            id,
            time,
            key_time: time,
            severity,
            record,
        }
    }

    /// Keys the seen-set with `key_time` instead of `time`: for a record whose `time` can change
    /// while its id stays the same (Tenable's `lastMitigated` on a finding keyed by `lastSeen`).
    pub fn with_key_time(mut self, key_time: DateTime<Utc>) -> Self {
        self.key_time = key_time;
        self
    }
}

/// `text` compacted from `first`, its first whitespace byte outside strings. `None` if the
/// result is not JSON, which cannot happen for valid JSON input.
fn compacted(text: &str, first: usize) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..first]);
    compact_into(&text[first..], &mut out);
    serde_json::from_str::<&RawValue>(&out).ok()?;
    Some(out)
}

/// Where the first byte of JSON whitespace (space, tab, CR, LF) outside a string is in `text`,
/// if there is one: a scan of the bytes that jumps from quote to quote inside strings.
///
/// Byte-level is exact: every byte of a multi-byte UTF-8 character is >= 0x80, so it can never be
/// taken for a quote, a backslash or whitespace.
pub fn whitespace_outside_strings(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => i = string_end(bytes, i + 1),
            b' ' | b'\n' | b'\r' | b'\t' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// The index just past the quote that closes the string whose content starts at `start` (or the
/// end of `bytes` if it is not closed).
fn string_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start;
    while let Some(at) = memchr::memchr2(b'"', b'\\', &bytes[i..]) {
        let at = i + at;
        if bytes[at] == b'"' {
            return at + 1;
        }
        // A backslash escapes the next byte (a quote, a backslash or a letter): skip both.
        i = at + 2;
        if i >= bytes.len() {
            return bytes.len();
        }
    }
    bytes.len()
}

/// Appends `text` to `out` without the JSON whitespace outside its strings.
fn compact_into(text: &str, out: &mut String) {
    let bytes = text.as_bytes();
    // Runs of bytes to keep are copied whole; `kept` is where the current run starts. Runs start
    // and end at ASCII bytes (a quote, whitespace, or the ends), so each is valid UTF-8.
    let mut kept = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => i = string_end(bytes, i + 1),
            b' ' | b'\n' | b'\r' | b'\t' => {
                out.push_str(&text[kept..i]);
                i += 1;
                kept = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&text[kept..]);
}

/// Removes insignificant whitespace from JSON text, leaving strings, numbers and key order exactly
/// as they were. Raw line breaks can only occur outside strings in valid JSON, so the result is safe
/// to put on one line.
pub fn compact_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    compact_into(text, &mut out);
    out
}

/// What one poll of one partition returned.
#[derive(Debug, Default)]
pub struct Page {
    /// Records in vendor order; duplicates of earlier pages are allowed (the seen-set drops them).
    pub events: Vec<Event>,
    /// The cursor to store once these events are safe; `None` keeps the stored cursor.
    pub cursor: Option<String>,
    /// The vendor says more is waiting right now: poll again without waiting for the interval.
    pub more: bool,
    /// Set when the source had to move a stored cursor forward because the vendor no longer serves
    /// data that old; the text says why. The scheduler logs it as a warning and counts it.
    pub cursor_clamped: Option<String>,
    /// Records of this page that could not become events (no id, a time that does not parse, a
    /// number that is not one). They are kept as dead letters with the page's commit, and the
    /// cursor moves past them: one bad record must not block its partition.
    pub rejected: Vec<Rejected>,
}

/// Longest record text kept with a [`Rejected`] record, in bytes; longer text is cut at a
/// character boundary (the reason and URL say enough to find the rest at the vendor).
pub const REJECTED_RECORD_MAX: usize = 64 * 1024;

/// A vendor record a source could not turn into an [`Event`], with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The request URL the record came from (never holds a credential).
    pub url: String,
    /// What was wrong with it: which field, and its value where that helps.
    pub reason: String,
    /// The record's text as the vendor sent it, at most [`REJECTED_RECORD_MAX`] bytes.
    pub record: String,
}

impl Rejected {
    /// A rejected record from `url`, refused for `reason`; `record` is cut to
    /// [`REJECTED_RECORD_MAX`] bytes.
    pub fn new(url: impl Into<String>, reason: impl Into<String>, record: &str) -> Self {
        let mut end = record.len().min(REJECTED_RECORD_MAX);
        while !record.is_char_boundary(end) {
            end -= 1;
        }
        Rejected {
            url: url.into(),
            reason: reason.into(),
            record: record[..end].to_string(),
        }
    }
}

/// One row of the outbox log, as a sink reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRecord {
    /// Position in the log; strictly increasing, never reused.
    pub seq: i64,
    /// Configured source id.
    pub source: String,
    /// Stream within the source.
    pub stream: String,
    /// Vendor tenant, `""` when none.
    pub tenant: String,
    /// Vendor-stable event id.
    pub event_id: String,
    /// Event time.
    pub event_time: DateTime<Utc>,
    /// When secrelay committed the event.
    pub ingest_time: DateTime<Utc>,
    /// Severity 0–10.
    pub severity: u8,
    /// The vendor record, compact JSON (a slice of the outbox chunk it was read from).
    pub record: SharedText,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_json_strips_whitespace_outside_strings_only() {
        let text = "{\n  \"a\" : [1, 2],\n\t\"b\": \"x y\\\" \\n z\" }";
        assert_eq!(compact_json(text), r#"{"a":[1,2],"b":"x y\" \n z"}"#);
    }

    #[test]
    fn a_rejected_record_is_cut_at_a_character_boundary() {
        let text = format!("{}é", "a".repeat(REJECTED_RECORD_MAX - 1));
        let r = Rejected::new("u", "why", &text);
        assert_eq!(r.record.len(), REJECTED_RECORD_MAX - 1);
        assert_eq!(Rejected::new("u", "why", "{}").record, "{}");
    }

    #[test]
    fn severity_is_clamped_to_ten() {
        assert_eq!(Severity::new(42).value(), 10);
        assert_eq!(Severity::new(7).value(), 7);
    }

    fn event_of(text: &str) -> Event {
        let raw = RawValue::from_string(text.to_string()).unwrap();
        Event::new("id".into(), Utc::now(), Severity::new(1), &raw)
    }

    #[test]
    fn an_already_compact_record_is_kept_byte_for_byte() {
        let text = r#"{"a":"x y\t\"z\\","b":[1,-2.5e3,true,null],"c":{"é":"ü \u00e9"},"d":"\\"}"#;
        assert_eq!(whitespace_outside_strings(text), None);
        assert_eq!(event_of(text).record.as_str(), text);
        assert_eq!(compact_json(text), text);
    }

    #[test]
    fn whitespace_inside_strings_is_kept_and_outside_removed() {
        // Spaces, an escaped quote and an escaped backslash right before the closing quote: the
        // scan must know where each string ends.
        let text = "{ \"path\" : \"C:\\\\Program Files\\\\\" ,\t\"q\": \"say \\\"hi \\\" \" }";
        assert_eq!(whitespace_outside_strings(text), Some(1));
        assert_eq!(
            event_of(text).record.as_str(),
            r#"{"path":"C:\\Program Files\\","q":"say \"hi \" "}"#
        );
    }

    #[test]
    fn crlf_outside_strings_is_removed_and_multibyte_text_survives() {
        let text = "{\r\n  \"name\": \"Zoë  Ångström\",\r\n  \"n\": [1,\r\n 2]\r\n}\r\n";
        let event = event_of(text.trim_end());
        assert_eq!(
            event.record.as_str(),
            r#"{"name":"Zoë  Ångström","n":[1,2]}"#
        );
        assert!(!event.record.as_str().contains(['\r', '\n']));
        assert_eq!(whitespace_outside_strings(r#"{"a":"\r\n"}"#), None);
    }

    #[test]
    fn event_record_is_compacted_and_keeps_key_order() {
        let raw =
            RawValue::from_string("{ \"z\": 1,\n \"a\": {\"k\": \"v\"} }".to_string()).unwrap();
        let event = Event::new("id".into(), Utc::now(), Severity::new(1), &raw);
        assert_eq!(event.record.as_str(), r#"{"z":1,"a":{"k":"v"}}"#);
    }
}
