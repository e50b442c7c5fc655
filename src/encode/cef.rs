//! ArcSight CEF lines: `CEF:0|Vendor|Product|Version|ClassId|Name|Severity|key=value ...`
//! (reference/sink-protocols.md §1).
//!
//! Owns: escaping, key rules and length limits. Must not: know a vendor's fields (each source maps
//! its records through [`CefRecord`]) or add syslog framing. Invariants: all seven header fields and
//! the seventh `|` are always written; no raw CR or LF ever leaves this module; an extension key
//! appears at most once (the first value given wins, which is how a mapping states precedence);
//! empty values are omitted; limits apply to the escaped text and never split a character or an
//! escape sequence.

use chrono::{DateTime, Utc};

use super::decimal::Decimal;

/// One CEF record being built.
#[derive(Debug, Clone)]
pub struct CefRecord {
    header: [String; 5],
    severity: u8,
    /// Each key with where its value is in `values`: one buffer, not an allocation per field.
    extension: Vec<(&'static str, std::ops::Range<usize>)>,
    /// The extension's values, unescaped, one after another.
    values: String,
    /// A bit per key set ([`key_bit`]): a key whose bit is clear is not set, which answers
    /// most of the "is it set already" questions a mapping asks without comparing keys.
    key_bits: [u64; 4],
}

/// Header limits from the CEF spec (vendor, product, version, class id, name), on escaped text.
const HEADER_LIMITS: [usize; 5] = [63, 63, 31, 1023, 512];

/// The dictionary's maximum length of a key's (escaped) value, where it sets one.
fn value_limit(key: &str) -> usize {
    match key {
        "externalId" => 40,
        "act" | "outcome" => 63,
        "dvchost" => 100,
        "deviceExternalId" | "fileHash" => 255,
        "cs1" | "cs2" | "cs3" | "cs4" | "cs5" | "cs6" => 4000,
        _ => 1023,
    }
}

impl CefRecord {
    /// A record with its header. `severity` is clamped to 0–10.
    pub fn new(
        vendor: &str,
        product: &str,
        version: &str,
        class_id: &str,
        name: &str,
        severity: u8,
    ) -> Self {
        CefRecord {
            header: [vendor, product, version, class_id, name].map(str::to_string),
            severity: severity.min(10),
            // Room for a vendor mapping's usual line, so building it does not reallocate.
            extension: Vec::with_capacity(48),
            values: String::with_capacity(1024),
            key_bits: [0; 4],
        }
    }

    /// Adds `key=value` unless `value` is empty or `key` is already set (first wins).
    /// `key` must be a dictionary key: ASCII letters and digits only.
    pub fn field(&mut self, key: &'static str, value: impl AsRef<str>) -> &mut Self {
        let value = value.as_ref();
        debug_assert!(
            key.bytes().all(|b| b.is_ascii_alphanumeric()),
            "bad CEF key {key}"
        );
        if value.is_empty() || self.has(key) || !key.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return self;
        }
        let start = self.values.len();
        self.values.push_str(value);
        self.extension.push((key, start..self.values.len()));
        let (word, bit) = key_bit(key);
        self.key_bits[word] |= bit;
        self
    }

    /// Adds `key` as a timestamp in epoch milliseconds.
    pub fn time(&mut self, key: &'static str, at: Option<DateTime<Utc>>) -> &mut Self {
        match at {
            Some(t) => self.field(key, Decimal::signed(t.timestamp_millis()).as_str()),
            None => self,
        }
    }

    /// Sets a fixed custom slot (`cs3`, `cn1`, ...) and its label, when `value` is not empty.
    pub fn labelled(
        &mut self,
        key: &'static str,
        label_key: &'static str,
        label: &str,
        value: impl AsRef<str>,
    ) -> &mut Self {
        let value = value.as_ref();
        if value.is_empty() || self.has(key) {
            return self;
        }
        self.field(key, value).field(label_key, label)
    }

    /// Adds the first free custom string `csN` with its `csNLabel` (up to cs6; past that, dropped).
    pub fn custom_string(&mut self, label: &str, value: impl AsRef<str>) -> &mut Self {
        const KEYS: [(&str, &str); 6] = [
            ("cs1", "cs1Label"),
            ("cs2", "cs2Label"),
            ("cs3", "cs3Label"),
            ("cs4", "cs4Label"),
            ("cs5", "cs5Label"),
            ("cs6", "cs6Label"),
        ];
        match KEYS.iter().find(|(key, _)| !self.has(key)) {
            Some((key, label_key)) => self.labelled(key, label_key, label, value),
            None => self,
        }
    }

    /// Adds the first free custom number `cnN` with its `cnNLabel` (up to cn3).
    pub fn custom_number(&mut self, label: &str, value: Option<i64>) -> &mut Self {
        const KEYS: [(&str, &str); 3] = [
            ("cn1", "cn1Label"),
            ("cn2", "cn2Label"),
            ("cn3", "cn3Label"),
        ];
        let Some(value) = value else { return self };
        match KEYS.iter().find(|(key, _)| !self.has(key)) {
            Some((key, label_key)) => self.labelled(key, label_key, label, value.to_string()),
            None => self,
        }
    }

    /// Sets `src` for an IPv4 address, `c6a2` (labelled) for IPv6; anything else is left out, since
    /// receivers reject a `src` that is not an address.
    pub fn source_ip(&mut self, ip: &str) -> &mut Self {
        self.ip("src", "c6a2", "c6a2Label", "Source IPv6 Address", ip)
    }

    /// Sets `dst` for an IPv4 address, `c6a3` (labelled) for IPv6.
    pub fn destination_ip(&mut self, ip: &str) -> &mut Self {
        self.ip("dst", "c6a3", "c6a3Label", "Destination IPv6 Address", ip)
    }

    fn ip(
        &mut self,
        v4: &'static str,
        v6: &'static str,
        v6_label: &'static str,
        label: &str,
        ip: &str,
    ) -> &mut Self {
        match ip
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
        {
            Ok(std::net::IpAddr::V4(a)) => self.field(v4, a.to_string()),
            Ok(std::net::IpAddr::V6(a)) => self.labelled(v6, v6_label, label, a.to_string()),
            Err(_) => self,
        }
    }

    /// The header's vendor field, unescaped.
    pub fn vendor(&self) -> &str {
        &self.header[0]
    }

    /// The header's product field, unescaped.
    pub fn product(&self) -> &str {
        &self.header[1]
    }

    /// The header's class id (signature id) field, unescaped.
    pub fn class_id(&self) -> &str {
        &self.header[3]
    }

    /// The header's name field, unescaped.
    pub fn name(&self) -> &str {
        &self.header[4]
    }

    /// The header's severity, 0–10.
    pub fn severity(&self) -> u8 {
        self.severity
    }

    /// Whether `key` is set.
    pub fn has(&self, key: &str) -> bool {
        let (word, bit) = key_bit(key);
        self.key_bits[word] & bit != 0 && self.extension.iter().any(|(k, _)| same_key(k, key))
    }

    /// The value given for `key`, unescaped.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.extension
            .iter()
            .find(|(k, _)| same_key(k, key))
            .map(|(_, v)| &self.values[v.clone()])
    }

    /// Appends the line (no line terminator) to `out`.
    pub fn write(&self, out: &mut String) {
        out.push_str("CEF:0|");
        for (field, limit) in self.header.iter().zip(HEADER_LIMITS) {
            escape_header(field, limit, out);
            out.push('|');
        }
        match self.severity {
            10 => out.push_str("10"),
            n => out.push(char::from(b'0' + n)),
        }
        out.push('|');
        for (i, (key, value)) in self.extension.iter().enumerate() {
            let value = &self.values[value.clone()];
            if i > 0 {
                out.push(' ');
            }
            out.push_str(key);
            out.push('=');
            escape_value(value, value_limit(key), out);
        }
    }

    /// The line as a string.
    pub fn to_line(&self) -> String {
        let mut out = String::with_capacity(256);
        self.write(&mut out);
        out
    }
}

/// The bit of `key` in `CefRecord::key_bits` (word, mask), from its length and its first, third
/// and last bytes, which tell apart most keys of a line (`cs1`…`cs6`, `cs1Label`…,
/// `suser`/`duser`).
fn key_bit(key: &str) -> (usize, u64) {
    let b = key.as_bytes();
    let at = |i: usize| u64::from(b.get(i).copied().unwrap_or(0));
    let mixed = (b.len() as u64)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(at(0).wrapping_mul(0x100_0000_01b3))
        .wrapping_add(at(2).wrapping_mul(0xff51_afd7))
        .wrapping_add(at(b.len().wrapping_sub(1)).wrapping_mul(131));
    let slot = (mixed ^ (mixed >> 29)) % 256;
    ((slot / 64) as usize, 1 << (slot % 64))
}

/// `a == b`, for keys: many differ in their first or last byte, which is checked before comparing
/// them whole (a call to `memcmp` for every key of a line was a measurable part of mapping it).
fn same_key(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.first() == b.first() && a.last() == b.last() && a == b
}

/// Header escaping: `\` and `|` escaped; line breaks and other control characters become spaces.
fn escape_header(text: &str, limit: usize, out: &mut String) {
    escape(text, limit, out, true);
}

/// Extension escaping: `\` → `\\`, `=` → `\=`, CRLF and LF → `\n`, a lone CR → `\r`, other control
/// characters → space.
fn escape_value(text: &str, limit: usize, out: &mut String) {
    escape(text, limit, out, false);
}

/// Escapes `text` into `out`, at most `limit` bytes of output, never cutting a character or an
/// escape sequence. Runs of ordinary text are copied whole, which is what makes this fast.
fn escape(text: &str, limit: usize, out: &mut String, header: bool) {
    let bytes = text.as_bytes();
    let mut used = 0;
    let mut run = 0; // start of the pending run of ordinary text
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        // Most bytes are ordinary: one table load decides, before the match below.
        if !MAYBE_ESCAPED[usize::from(b)] {
            i += 1;
            continue;
        }
        let (piece, width): (&str, usize) = match b {
            b'\\' => ("\\\\", 1),
            b'|' if header => ("\\|", 1),
            b'=' if !header => ("\\=", 1),
            b'\r' if !header && bytes.get(i + 1) == Some(&b'\n') => ("\\n", 2),
            b'\r' if !header => ("\\r", 1),
            b'\n' if !header => ("\\n", 1),
            0..=0x1f | 0x7f => (" ", 1),
            // C1 controls (U+0080–U+009F) are two bytes in UTF-8: 0xC2 0x80–0x9F.
            0xc2 if bytes.get(i + 1).is_some_and(|n| (0x80..=0x9f).contains(n)) => (" ", 2),
            _ => {
                i += 1;
                continue;
            }
        };
        if !copy_run(&text[run..i], limit, &mut used, out) || used + piece.len() > limit {
            return;
        }
        out.push_str(piece);
        used += piece.len();
        i += width;
        run = i;
    }
    copy_run(&text[run..], limit, &mut used, out);
}

/// The bytes `escape` may write otherwise than as they are: `\`, `|`, `=`, C0 controls (CR and LF
/// among them), DEL, and 0xC2 (the first byte of a C1 control in UTF-8).
const MAYBE_ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'\\' as usize] = true;
    table[b'|' as usize] = true;
    table[b'=' as usize] = true;
    table[0x7f] = true;
    table[0xc2] = true;
    table
};

/// Copies `run` within the limit; false when the limit cut it short (stop writing).
fn copy_run(run: &str, limit: usize, used: &mut usize, out: &mut String) -> bool {
    if *used + run.len() <= limit {
        out.push_str(run);
        *used += run.len();
        return true;
    }
    let mut end = limit - *used;
    while !run.is_char_boundary(end) {
        end -= 1;
    }
    out.push_str(&run[..end]);
    *used += end;
    false
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An independent CEF parser written from the spec text, for round trips: splits the header on
    /// unescaped `|`, then the extension on ` key=` boundaries, unescaping as the spec says.
    pub(crate) fn parse(line: &str) -> (Vec<String>, Vec<(String, String)>) {
        let body = line.strip_prefix("CEF:").expect("starts with CEF:");
        let mut header = Vec::new();
        let mut current = String::new();
        let mut chars = body.char_indices();
        let mut rest_at = body.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, e @ ('\\' | '|'))) => current.push(e),
                    other => panic!("bad header escape {other:?} in {line}"),
                },
                '|' => {
                    header.push(std::mem::take(&mut current));
                    if header.len() == 7 {
                        rest_at = i + 1;
                        break;
                    }
                }
                '\r' | '\n' => panic!("raw line break in header: {line:?}"),
                c => current.push(c),
            }
        }
        assert_eq!(
            header.len(),
            7,
            "seven header fields and the seventh pipe: {line}"
        );
        let ext = &body[rest_at..];
        assert!(
            !ext.contains('\n') && !ext.contains('\r'),
            "raw line break: {line:?}"
        );
        // Key starts: an unescaped `=` preceded by an alphanumeric key that follows a space or start.
        let bytes = ext.as_bytes();
        let mut starts = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'\\' {
                i += 2;
                continue;
            }
            if bytes[i] == b'=' {
                let mut k = i;
                while k > 0 && bytes[k - 1].is_ascii_alphanumeric() {
                    k -= 1;
                }
                assert!(k < i, "empty key in {ext}");
                assert!(
                    k == 0 || bytes[k - 1] == b' ',
                    "a value holds an unescaped `=`: {ext}"
                );
                starts.push((k, i));
            }
            i += 1;
        }
        let mut pairs = Vec::new();
        for (n, (k, eq)) in starts.iter().enumerate() {
            let end = starts
                .get(n + 1)
                .map_or(ext.len(), |(next_k, _)| next_k - 1);
            let raw = &ext[eq + 1..end];
            let mut value = String::new();
            let mut it = raw.chars();
            while let Some(c) = it.next() {
                if c == '\\' {
                    match it.next() {
                        Some('\\') => value.push('\\'),
                        Some('=') => value.push('='),
                        Some('n') => value.push('\n'),
                        Some('r') => value.push('\r'),
                        other => panic!("bad extension escape {other:?} in {raw}"),
                    }
                } else {
                    value.push(c);
                }
            }
            pairs.push((ext[*k..*eq].to_string(), value));
        }
        (header, pairs)
    }

    #[test]
    fn header_always_has_seven_fields_and_the_trailing_pipe() {
        let r = CefRecord::new("V", "P", "1", "C1", "N", 3);
        assert_eq!(r.to_line(), "CEF:0|V|P|1|C1|N|3|");
    }

    #[test]
    fn header_escapes_backslash_and_pipe_and_drops_line_breaks() {
        let r = CefRecord::new("a|b", "c\\d", "1", "x", "two\nlines\r", 42);
        assert_eq!(r.to_line(), "CEF:0|a\\|b|c\\\\d|1|x|two lines |10|");
    }

    #[test]
    fn extension_escapes_exactly() {
        let mut r = CefRecord::new("V", "P", "1", "C", "N", 5);
        r.field("msg", "a=b\\c|d\r\ne\nf\rg\th");
        assert_eq!(
            r.to_line(),
            "CEF:0|V|P|1|C|N|5|msg=a\\=b\\\\c|d\\ne\\nf\\rg h"
        );
    }

    #[test]
    fn c1_controls_and_delete_become_spaces_and_other_text_is_untouched() {
        let mut r = CefRecord::new("V", "P", "1", "C", "a\u{85}b", 5);
        r.field("msg", "x\u{9f}y\u{7f}z é\u{a0}ok");
        assert_eq!(r.to_line(), "CEF:0|V|P|1|C|a b|5|msg=x y z é\u{a0}ok");
    }

    #[test]
    fn empty_values_are_omitted_and_keys_appear_once_first_wins() {
        let mut r = CefRecord::new("V", "P", "1", "C", "N", 1);
        r.field("suser", "")
            .field("suser", "first")
            .field("suser", "second")
            .field("duser", "x");
        assert_eq!(r.to_line(), "CEF:0|V|P|1|C|N|1|suser=first duser=x");
    }

    /// `has` answers exactly for every key, whichever share a bit in `key_bits`: the keys of a
    /// full Code42 line set one by one, each checked before and after.
    #[test]
    fn has_is_exact_for_keys_that_share_a_bit() {
        const KEYS: [&str; 40] = [
            "externalId",
            "end",
            "rt",
            "fileCreateTime",
            "fileModificationTime",
            "deviceExternalId",
            "suser",
            "duser",
            "suid",
            "shost",
            "dvchost",
            "src",
            "dst",
            "fname",
            "filePath",
            "fsize",
            "fileType",
            "fileHash",
            "sproc",
            "spriv",
            "sourceServiceName",
            "destinationServiceName",
            "request",
            "requestClientApplication",
            "reason",
            "cs1",
            "cs1Label",
            "cs2",
            "cs2Label",
            "cs3",
            "cs3Label",
            "cs4",
            "cs4Label",
            "cs5",
            "cs5Label",
            "cs6",
            "cs6Label",
            "cn1",
            "cn1Label",
            "msg",
        ];
        let mut r = CefRecord::new("V", "P", "1", "C", "N", 1);
        for (i, key) in KEYS.iter().enumerate() {
            assert!(!r.has(key), "{key} before it was set");
            r.field(key, "v");
            for (j, other) in KEYS.iter().enumerate() {
                assert_eq!(r.has(other), j <= i, "{other} after {key}");
            }
        }
        let shared = KEYS
            .iter()
            .filter(|k| KEYS.iter().any(|o| o != *k && key_bit(o) == key_bit(k)));
        assert!(
            shared.count() > 0,
            "no two keys share a bit: the test checks no collision"
        );
    }

    #[test]
    fn custom_fields_come_with_labels_in_order() {
        let mut r = CefRecord::new("V", "P", "1", "C", "N", 1);
        r.custom_string("One", "a")
            .custom_string("Empty", "")
            .custom_string("Two", "b");
        r.custom_number("Count", Some(7))
            .custom_number("None", None);
        assert_eq!(
            r.to_line(),
            "CEF:0|V|P|1|C|N|1|cs1=a cs1Label=One cs2=b cs2Label=Two cn1=7 cn1Label=Count"
        );
    }

    #[test]
    fn ipv6_goes_to_labelled_custom_fields_never_src_or_dst() {
        let mut r = CefRecord::new("V", "P", "1", "C", "N", 1);
        r.source_ip("2001:db8::1")
            .destination_ip("10.0.0.9")
            .source_ip("10.1.1.1");
        assert_eq!(
            r.to_line(),
            "CEF:0|V|P|1|C|N|1|c6a2=2001:db8::1 c6a2Label=Source IPv6 Address dst=10.0.0.9 src=10.1.1.1"
        );
        let mut bad = CefRecord::new("V", "P", "1", "C", "N", 1);
        bad.source_ip("not an ip").destination_ip("[::1]");
        assert_eq!(
            bad.to_line(),
            "CEF:0|V|P|1|C|N|1|c6a3=::1 c6a3Label=Destination IPv6 Address"
        );
    }

    #[test]
    fn limits_apply_to_escaped_text_on_character_boundaries() {
        let mut r = CefRecord::new("V", "P", "1", "C", "N", 1);
        // externalId allows 40 bytes: `a` and 19 escaped `=` make 39; the 20th escape would make
        // 41, so the cut falls before it rather than after a lone backslash at byte 40.
        r.field("externalId", format!("a{}", "=".repeat(20)));
        let line = r.to_line();
        let value = line.split("externalId=").nth(1).unwrap();
        assert_eq!(value, format!("a{}", "\\=".repeat(19)));
        let mut r = CefRecord::new("V", "P", "1", "C", "N", 1);
        r.field("externalId", "é".repeat(30));
        let value = r.to_line().split("externalId=").nth(1).unwrap().to_string();
        assert_eq!(
            value,
            "é".repeat(20),
            "two-byte characters, cut at 40 bytes"
        );
    }

    #[test]
    fn hostile_values_cannot_forge_fields_round_trip() {
        let hostile = [
            "x act=blocked",
            "C:\\Users\\a=b\\",
            "line1\nsuser=root",
            "trail\\",
            "pipe|pipe=eq\\=",
            "cr\ronly",
            "tab\there",
            "ünïcødé ✓",
        ];
        for value in hostile {
            let mut r = CefRecord::new("Vend|or", "Prod\\uct", "1", "C1", "na\nme", 5);
            r.field("msg", value).field("suser", "alice");
            let (header, pairs) = parse(&r.to_line());
            assert_eq!(header[1], "Vend|or");
            assert_eq!(header[2], "Prod\\uct");
            let keys: Vec<_> = pairs.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(keys, ["msg", "suser"], "{value:?} forged a field");
            let expected = value.replace('\t', " ");
            assert_eq!(pairs[0].1, expected, "{value:?}");
        }
    }
}
