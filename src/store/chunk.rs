//! The body of an outbox chunk: a run of consecutive records of one partition, encoded one after
//! another and compressed as one lz4 block, so each record is written to disk once and small.
//!
//! Owns: the byte layout of a chunk body. Must not: touch the database or know what a position is.
//! Invariant: `decode(encode(records))` gives back every record's id, time, severity and text
//! exactly, in order; a body that does not decode is an error, never a panic or a partial chunk.
//!
//! Layout: one format byte (1), the uncompressed length (u32 LE), then the lz4 block. The
//! uncompressed part is, per record: id length (u32 LE), id, event time (i64 LE, ms), severity
//! (u8), record length (u32 LE), record (UTF-8 JSON text).

use bytes::Bytes;

use crate::shared_text::SharedText;

/// The only layout so far.
const FORMAT: u8 = 1;

/// A chunk never holds more than this many records.
pub(super) const MAX_RECORDS: usize = 1000;

/// A chunk is closed once its records' text reaches this many bytes (a record is never split).
pub(super) const MAX_BYTES: usize = 1 << 20;

/// Refuse to decode a body claiming more than this: only a damaged body does.
const MAX_DECODED_BYTES: usize = 256 << 20;

/// One record as a chunk holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ChunkEntry<T> {
    /// The vendor's event id.
    pub id: T,
    /// Event time, ms since the epoch.
    pub time_ms: i64,
    /// Severity 0–10.
    pub severity: u8,
    /// The record's compact JSON text.
    pub record: T,
}

/// Why a chunk body could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum ChunkError {
    /// The body is damaged or was written by a newer version: the chunk cannot be delivered.
    #[error("outbox chunk body is unreadable: {0}")]
    Unreadable(String),
}

/// Encodes and compresses `entries` into a chunk body.
pub(super) fn encode(entries: &[ChunkEntry<&str>]) -> Vec<u8> {
    let size: usize = entries
        .iter()
        .map(|e| 4 + e.id.len() + 8 + 1 + 4 + e.record.len())
        .sum();
    let mut raw = Vec::with_capacity(size);
    for e in entries {
        raw.extend_from_slice(&len_u32(e.id).to_le_bytes());
        raw.extend_from_slice(e.id.as_bytes());
        raw.extend_from_slice(&e.time_ms.to_le_bytes());
        raw.push(e.severity);
        raw.extend_from_slice(&len_u32(e.record).to_le_bytes());
        raw.extend_from_slice(e.record.as_bytes());
    }
    // Compressed straight behind the header: no second buffer to copy it out of.
    let mut body = vec![0u8; 5 + lz4_flex::block::get_maximum_output_size(raw.len())];
    body[0] = FORMAT;
    body[1..5].copy_from_slice(&len_u32_bytes(raw.len()).to_le_bytes());
    let written = lz4_flex::block::compress_into(&raw, &mut body[5..])
        .expect("lz4's maximum output size always fits");
    body.truncate(5 + written);
    // Chunks wait in memory for their commit: keep what they hold, not the worst case (a shrink
    // in place, not a copy).
    body.shrink_to_fit();
    body
}

/// Decodes a chunk body of `records` records, skipping its first `skip` and keeping at most `take`
/// after them. A body holding fewer records than that is an error: its missing records must never
/// be passed over as if delivered. The ids and records are slices of one decompressed buffer,
/// not copies of it.
pub(super) fn decode(
    body: &[u8],
    records: usize,
    skip: usize,
    take: usize,
) -> Result<Vec<ChunkEntry<SharedText>>, ChunkError> {
    let bad = |why: &str| ChunkError::Unreadable(why.to_string());
    let (&format, rest) = body.split_first().ok_or_else(|| bad("empty"))?;
    if format != FORMAT {
        return Err(ChunkError::Unreadable(format!("unknown format {format}")));
    }
    let (len, block) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| bad("no length"))?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > MAX_DECODED_BYTES {
        return Err(ChunkError::Unreadable(format!("claims {len} bytes")));
    }
    let mut raw = vec![0u8; len];
    let got = lz4_flex::block::decompress_into(block, &mut raw)
        .map_err(|e| ChunkError::Unreadable(e.to_string()))?;
    if got != len {
        return Err(ChunkError::Unreadable(format!(
            "{got} bytes where {len} were recorded"
        )));
    }
    let raw = Bytes::from(raw);
    let mut out = Vec::new();
    let mut at = Reader { raw: &raw, pos: 0 };
    let mut index = 0usize;
    while at.pos < raw.len() && out.len() < take {
        let id = at.text()?;
        let time_ms = i64::from_le_bytes(at.array::<8>()?);
        let [severity] = at.array::<1>()?;
        let record = at.text()?;
        if index >= skip {
            out.push(ChunkEntry {
                id: text_of(&raw, id)?,
                time_ms,
                severity,
                record: text_of(&raw, record)?,
            });
        }
        index += 1;
    }
    let wanted = take.min(records.saturating_sub(skip));
    if out.len() < wanted {
        return Err(ChunkError::Unreadable(format!(
            "holds {index} records where {records} were recorded"
        )));
    }
    Ok(out)
}

/// Reads the uncompressed part front to back.
struct Reader<'a> {
    raw: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], ChunkError> {
        let bytes = self
            .raw
            .get(self.pos..self.pos + N)
            .ok_or_else(|| ChunkError::Unreadable("truncated record".into()))?;
        self.pos += N;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// The place of the next text (a length, then that many bytes); not yet checked as UTF-8.
    fn text(&mut self) -> Result<std::ops::Range<usize>, ChunkError> {
        let len = u32::from_le_bytes(self.array::<4>()?) as usize;
        let range = self.pos..self.pos.saturating_add(len);
        if range.end > self.raw.len() {
            return Err(ChunkError::Unreadable("truncated text".into()));
        }
        self.pos = range.end;
        Ok(range)
    }
}

/// The text at `range` of `raw`, shared with it: an error unless it is UTF-8.
fn text_of(raw: &Bytes, range: std::ops::Range<usize>) -> Result<SharedText, ChunkError> {
    SharedText::from_utf8(raw.slice(range)).map_err(|e| ChunkError::Unreadable(e.to_string()))
}

/// A text's length as stored. Records and ids are far below 4 GiB (a vendor page is parsed in
/// memory first); a longer one would be cut, so it is clamped and caught by `decode` as damage.
fn len_u32(text: &str) -> u32 {
    len_u32_bytes(text.len())
}

fn len_u32_bytes(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &'static str, record: &'static str) -> ChunkEntry<&'static str> {
        ChunkEntry {
            id,
            time_ms: 1_700_000_000_123,
            severity: 7,
            record,
        }
    }

    fn owned(e: &ChunkEntry<&str>) -> ChunkEntry<SharedText> {
        ChunkEntry {
            id: e.id.into(),
            time_ms: e.time_ms,
            severity: e.severity,
            record: e.record.into(),
        }
    }

    #[test]
    fn records_come_back_exactly_and_in_order() {
        let entries = vec![
            entry("a", r#"{"id":"a","n":1}"#),
            ChunkEntry {
                id: "b-é",
                time_ms: -5,
                severity: 0,
                record: r#"{"text":"ünïcode \"quoted\""}"#,
            },
            entry("", "{}"),
        ];
        let body = encode(&entries);
        let back = decode(&body, 3, 0, usize::MAX).unwrap();
        assert_eq!(back, entries.iter().map(owned).collect::<Vec<_>>());
    }

    #[test]
    fn records_read_back_are_slices_of_one_buffer_not_copies() {
        let entries = vec![entry("a", r#"{"id":"a"}"#), entry("b", r#"{"id":"b"}"#)];
        let back = decode(&encode(&entries), 2, 0, 2).unwrap();
        // In the decompressed layout the second record starts right after the first one, its
        // id's length (4), its id (1), time (8), severity (1) and its record's length (4).
        let (first, second) = (back[0].record.as_ptr(), back[1].record.as_ptr());
        assert_eq!(second as usize - first as usize, back[0].record.len() + 18);
        assert_eq!(back[1].record.as_str(), r#"{"id":"b"}"#);
        assert_eq!(back[1].id.as_str(), "b");
    }

    #[test]
    fn skip_and_take_select_a_window() {
        let entries: Vec<_> = ["r0", "r1", "r2", "r3", "r4"]
            .into_iter()
            .map(|id| entry(id, "{}"))
            .collect();
        let body = encode(&entries);
        let ids = |v: Vec<ChunkEntry<SharedText>>| {
            v.into_iter().map(|e| e.id.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(ids(decode(&body, 5, 2, 2).unwrap()), ["r2", "r3"]);
        assert_eq!(ids(decode(&body, 5, 4, 10).unwrap()), ["r4"]);
        assert!(decode(&body, 5, 5, 10).unwrap().is_empty());
        assert!(decode(&body, 5, 0, 0).unwrap().is_empty());
    }

    #[test]
    fn repetitive_json_shrinks() {
        let record = r#"{"@timestamp":"2026-11-30T10:00:00.000Z","event":{"action":"file-modified","id":"0_1d71796f-af5b-4231-9d8e-df6434da4663_935873453596901068_956171635867906205_5"},"user":{"email":"user@example.com","deviceUid":"935873453596901068"}}"#;
        let entries: Vec<_> = (0..500).map(|_| entry("x", record)).collect();
        let body = encode(&entries);
        assert!(
            body.len() * 5 < 500 * record.len(),
            "{} bytes for {} of JSON",
            body.len(),
            500 * record.len()
        );
    }

    #[test]
    fn an_empty_chunk_decodes_to_nothing() {
        assert!(decode(&encode(&[]), 0, 0, usize::MAX).unwrap().is_empty());
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let body = encode(&[entry("a", r#"{"id":"a"}"#), entry("b", "{}")]);
        assert!(decode(&[], 2, 0, 10).is_err(), "empty");
        assert!(
            decode(&[2, 0, 0, 0, 0], 2, 0, 10).is_err(),
            "unknown format"
        );
        assert!(decode(&body[..3], 2, 0, 10).is_err(), "no length");
        let mut huge = body.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge, 2, 0, 10).is_err(), "absurd length");
        let mut short = body.clone();
        short[1..5].copy_from_slice(&3u32.to_le_bytes());
        assert!(decode(&short, 2, 0, 10).is_err(), "length disagrees");
        assert!(
            decode(&body[..body.len() - 2], 2, 0, 10).is_err(),
            "cut block"
        );
        // A body that decodes but holds fewer records than its row says.
        assert!(decode(&body, 3, 0, 10).is_err(), "a record short");
        assert_eq!(
            decode(&body, 3, 0, 1).unwrap().len(),
            1,
            "enough for what was asked"
        );
        // Every single-byte change either decodes to something or is an error: never a panic.
        for i in 0..body.len() {
            let mut flipped = body.clone();
            flipped[i] ^= 0x5a;
            let _ = decode(&flipped, 2, 0, 10);
        }
    }

    #[test]
    fn a_record_that_is_not_utf8_is_an_error() {
        // Hand-built uncompressed part with an invalid UTF-8 record.
        let mut raw = Vec::new();
        raw.extend_from_slice(&1u32.to_le_bytes());
        raw.push(b'a');
        raw.extend_from_slice(&0i64.to_le_bytes());
        raw.push(0);
        raw.extend_from_slice(&2u32.to_le_bytes());
        raw.extend_from_slice(&[0xff, 0xfe]);
        let mut body = vec![FORMAT];
        body.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        body.extend_from_slice(&lz4_flex::block::compress(&raw));
        assert!(decode(&body, 1, 0, 10).is_err());
    }
}
