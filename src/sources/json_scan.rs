//! A JSON scanner for the hot reads of a record's few fields: the text is walked once, strings are
//! borrowed, and nothing is built for what the caller skips.
//!
//! Owns: [`JsonScan`] and [`KeysSeen`]. Must not: decide what a field means, or read anything it
//! is unsure of. Every method answers `None` ("not read here") for anything outside the plain
//! subset of JSON it knows: a `\u` escape in a string it returns, an escaped key, a number it
//! returns that is not a plain non-negative integer fitting 64 bits, nesting deeper than
//! [`MAX_DEPTH`], and any invalid JSON. The caller then reads the record the general way
//! (serde_json), which decides. Invariant: what it reads, it reads as serde_json reads it, and it
//! accepts nothing serde_json refuses; differential tests against the serde path hold it to that.
//!
//! Why: a syslog sink reads ~45 fields of every record it sends, and serde's visitors cost most
//! of its CPU time (callgrind: 47 % of the instructions of a Code42 record's frame).

use std::borrow::Cow;

/// How deep objects and lists may nest below the scan's start. serde_json refuses a value it
/// reads (rather than ignores) past 128 levels; stopping well short of that keeps every answer on
/// its side of the limit, at the cost of declining deep parts serde would only have ignored.
pub const MAX_DEPTH: u32 = 64;

/// A position in a JSON text, moving forward only. Once a method has answered `None`, the scan
/// is spent: its position and depth are wherever the refusal left them.
#[derive(Debug)]
pub struct JsonScan<'a> {
    text: &'a str,
    at: usize,
    depth: u32,
}

/// `true`, `false` or `null`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Literal {
    /// `true`.
    True,
    /// `false`.
    False,
    /// `null`.
    Null,
}

/// Which of up to 64 known keys an object has given, to refuse a key given twice as a derived
/// struct does.
#[derive(Debug, Default)]
pub struct KeysSeen(u64);

impl KeysSeen {
    /// Marks key number `bit` (0–63) as given; `None` if it was given before.
    pub fn first(&mut self, bit: u32) -> Option<()> {
        let mask = 1u64.checked_shl(bit)?;
        if self.0 & mask != 0 {
            return None;
        }
        self.0 |= mask;
        Some(())
    }
}

impl<'a> JsonScan<'a> {
    /// A scan at the start of `text`.
    pub fn new(text: &'a str) -> Self {
        JsonScan {
            text,
            at: 0,
            depth: 0,
        }
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn skip_whitespace(&mut self) {
        let bytes = self.bytes();
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte after whitespace, not taken; `None` at the end.
    pub fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.bytes().get(self.at).copied()
    }

    /// Takes `byte` if it comes next after whitespace; whether it did.
    fn take(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    /// `Some` when only whitespace is left.
    pub fn end(&mut self) -> Option<()> {
        (self.peek().is_none()).then_some(())
    }

    /// Reads `open`, then items separated by `,` (each read by `each`), then `close`, one level
    /// deeper for as long.
    fn items(
        &mut self,
        open: u8,
        close: u8,
        mut each: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        if !self.take(open) {
            return None;
        }
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        if !self.take(close) {
            loop {
                each(self)?;
                if self.take(b',') {
                    continue;
                }
                if self.take(close) {
                    break;
                }
                return None;
            }
        }
        self.depth -= 1;
        Some(())
    }

    /// Reads an object: `each` is called with every key, the scan just past its `:`, and must
    /// read or skip the value.
    pub fn object(&mut self, mut each: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.items(b'{', b'}', |scan| {
            if scan.peek()? != b'"' {
                return None;
            }
            let key = scan.plain_string()?;
            if !scan.take(b':') {
                return None;
            }
            each(scan, key)
        })
    }

    /// Reads a list: `each` is called at every item and must read or skip it.
    pub fn list(&mut self, each: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.items(b'[', b']', each)
    }

    /// Reads a string: borrowed when it holds no escape, else unescaped (`None` at a `\u`).
    pub fn string(&mut self) -> Option<Cow<'a, str>> {
        if !self.take(b'"') {
            return None;
        }
        let bytes = self.bytes();
        let start = self.at;
        let stop = string_stop(bytes, start)?;
        if bytes[stop] == b'"' {
            self.at = stop + 1;
            return self.text.get(start..stop).map(Cow::Borrowed);
        }
        let mut owned = String::with_capacity(stop - start + 16);
        let mut from = start;
        let mut at = stop;
        loop {
            owned.push_str(self.text.get(from..at)?);
            match bytes[at] {
                b'"' => break,
                b'\\' => {
                    owned.push(match bytes.get(at + 1)? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        _ => return None,
                    });
                    from = at + 2;
                    at = string_stop(bytes, from)?;
                }
                _ => return None,
            }
        }
        self.at = at + 1;
        Some(Cow::Owned(owned))
    }

    /// Reads a string with no escape (a key), the scan at its opening quote.
    fn plain_string(&mut self) -> Option<&'a str> {
        let start = self.at + 1;
        let stop = string_stop(self.bytes(), start)?;
        if self.bytes()[stop] != b'"' {
            return None;
        }
        self.at = stop + 1;
        self.text.get(start..stop)
    }

    /// Reads `true`, `false` or `null`.
    pub fn literal(&mut self) -> Option<Literal> {
        let (literal, word): (Literal, &[u8]) = match self.peek()? {
            b't' => (Literal::True, b"true"),
            b'f' => (Literal::False, b"false"),
            b'n' => (Literal::Null, b"null"),
            _ => return None,
        };
        if self.bytes().get(self.at..self.at + word.len())? != word {
            return None;
        }
        self.at += word.len();
        Some(literal)
    }

    /// Reads a non-negative integer without fraction or exponent that fits 64 bits.
    pub fn unsigned(&mut self) -> Option<u64> {
        self.skip_whitespace();
        let bytes = self.bytes();
        let start = self.at;
        let mut end = start;
        let mut value: u64 = 0;
        while let Some(digit @ b'0'..=b'9') = bytes.get(end) {
            value = value
                .checked_mul(10)?
                .checked_add(u64::from(digit - b'0'))?;
            end += 1;
        }
        // A leading zero stands alone; a fraction or exponent is the general path's.
        if end == start
            || (bytes[start] == b'0' && end - start > 1)
            || matches!(bytes.get(end), Some(b'.' | b'e' | b'E'))
        {
            return None;
        }
        self.at = end;
        Some(value)
    }

    /// Skips one value of any kind, checking that it is valid JSON.
    pub fn skip(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.skip_string(),
            b'{' => self.object(|scan, _| scan.skip()),
            b'[' => self.list(|scan| scan.skip()),
            b't' | b'f' | b'n' => self.literal().map(drop),
            b'-' | b'0'..=b'9' => self.skip_number(),
            _ => None,
        }
    }

    /// Skips a string, checking its escapes (a `\u` needs four hex digits, as serde_json checks
    /// a string it ignores).
    fn skip_string(&mut self) -> Option<()> {
        let bytes = self.bytes();
        let mut at = string_stop(bytes, self.at + 1)?;
        loop {
            match bytes[at] {
                b'"' => break,
                b'\\' => {
                    let next = match bytes.get(at + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => at + 2,
                        b'u' => {
                            let hex = bytes.get(at + 2..at + 6)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            at + 6
                        }
                        _ => return None,
                    };
                    at = string_stop(bytes, next)?;
                }
                _ => return None,
            }
        }
        self.at = at + 1;
        Some(())
    }

    /// Skips a number: `-`? (`0` | [1-9][0-9]*) (`.` [0-9]+)? ([eE] [+-]? [0-9]+)?.
    fn skip_number(&mut self) -> Option<()> {
        let bytes = self.bytes();
        let mut at = self.at;
        let digits = |at: &mut usize| {
            let from = *at;
            while bytes.get(*at).is_some_and(u8::is_ascii_digit) {
                *at += 1;
            }
            (*at > from).then_some(())
        };
        if bytes.get(at) == Some(&b'-') {
            at += 1;
        }
        match bytes.get(at)? {
            b'0' => at += 1,
            b'1'..=b'9' => digits(&mut at)?,
            _ => return None,
        }
        if bytes.get(at) == Some(&b'.') {
            at += 1;
            digits(&mut at)?;
        }
        if let Some(b'e' | b'E') = bytes.get(at) {
            at += 1;
            if let Some(b'+' | b'-') = bytes.get(at) {
                at += 1;
            }
            digits(&mut at)?;
        }
        self.at = at;
        Some(())
    }
}

/// The index of the first byte from `from` on that ends a plain run of a string: `"`, `\` or a
/// control character (which JSON forbids in a string). Eight bytes at a time: a byte matches when
/// it XORs to zero with `"` or `\`, or is below 0x20; the borrows of the subtraction can only mark
/// bytes after a true match, so the lowest mark is the first match.
fn string_stop(bytes: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const QUOTES: u64 = ONES * b'"' as u64;
    const BACKSLASHES: u64 = ONES * b'\\' as u64;
    const SPACES: u64 = ONES * 0x20;
    let mut at = from;
    while let Some(eight) = bytes.get(at..).and_then(<[u8]>::first_chunk::<8>) {
        let x = u64::from_le_bytes(*eight);
        let quote = x ^ QUOTES;
        let backslash = x ^ BACKSLASHES;
        let marks = (quote.wrapping_sub(ONES) & !quote
            | backslash.wrapping_sub(ONES) & !backslash
            | x.wrapping_sub(SPACES) & !x)
            & HIGHS;
        if marks != 0 {
            return Some(at + (marks.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    bytes
        .get(at..)?
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|i| at + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_stop_finds_the_first_quote_backslash_or_control_byte() {
        // Every position and every kind of stop, with UTF-8 bytes and near-misses around it.
        let fillers: [&[u8]; 3] = [b"abcdefgh", "é€ü😀".as_bytes(), b"!#[]{}~ "];
        for filler in fillers {
            for len in 0..24 {
                for stop in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                    let mut bytes: Vec<u8> = filler.iter().cycle().take(len).copied().collect();
                    let naive = |b: &[u8], from: usize| {
                        b[from..]
                            .iter()
                            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                            .map(|i| from + i)
                    };
                    assert_eq!(string_stop(&bytes, 0), naive(&bytes, 0));
                    bytes.push(stop);
                    bytes.extend_from_slice(b"\"tail\\\x01");
                    for from in 0..bytes.len() {
                        assert_eq!(
                            string_stop(&bytes, from),
                            naive(&bytes, from),
                            "{bytes:?} from {from}"
                        );
                    }
                }
            }
        }
    }

    /// Whether the scan skips `text` as one value and reaches its end.
    fn skips(text: &str) -> bool {
        let mut scan = JsonScan::new(text);
        scan.skip().and_then(|()| scan.end()).is_some()
    }

    #[test]
    fn skipping_accepts_what_serde_json_accepts_in_the_subset() {
        for text in [
            r#"{"a":[1,-2,0,3.5,-0.0,1e9,1E-9,2e+3,true,false,null,"x\"\\\/\b\f\n\r\t\u00e9y"],"b":{}}"#,
            " [ ] ",
            "\"\\ud800\"",
            "1e999",
        ] {
            assert!(
                serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok(),
                "{text}"
            );
            assert!(skips(text), "{text}");
        }
    }

    #[test]
    fn skipping_refuses_what_serde_json_refuses() {
        for text in [
            "01",
            "-",
            "1.",
            "1e",
            "+1",
            ".5",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{a:1}",
            "\"\u{1}\"",
            "\"\\x\"",
            "\"\\u12g4\"",
            "tru",
            "nul",
            "[1 2]",
            "\"open",
            "{\"a\":1",
            "[",
            "{}x",
        ] {
            assert!(
                serde_json::from_str::<serde::de::IgnoredAny>(text).is_err(),
                "{text}"
            );
            assert!(!skips(text), "{text}");
        }
    }

    #[test]
    fn deep_nesting_is_left_to_the_general_path() {
        let depth = MAX_DEPTH as usize;
        assert!(skips(&format!(
            "{}{}",
            "[".repeat(depth),
            "]".repeat(depth)
        )));
        assert!(!skips(&format!(
            "{}{}",
            "[".repeat(depth + 1),
            "]".repeat(depth + 1)
        )));
    }

    #[test]
    fn strings_are_borrowed_without_escapes_and_unescaped_with_them() {
        let mut scan = JsonScan::new(r#" "plain" "a\"b\\c\/d\n" "\u00e9" "#);
        assert!(matches!(scan.string(), Some(Cow::Borrowed("plain"))));
        assert_eq!(scan.string().as_deref(), Some("a\"b\\c/d\n"));
        assert_eq!(scan.string(), None, "a \\u escape is the general path's");
    }

    #[test]
    fn unsigned_takes_plain_integers_that_fit() {
        let read = |text: &str| JsonScan::new(text).unsigned();
        assert_eq!(read("0"), Some(0));
        assert_eq!(read("18446744073709551615"), Some(u64::MAX));
        for text in ["18446744073709551616", "01", "1.0", "1e3", "-1", "x"] {
            assert_eq!(read(text), None, "{text}");
        }
    }

    #[test]
    fn keys_seen_refuses_a_second_time() {
        let mut seen = KeysSeen::default();
        assert_eq!(seen.first(3), Some(()));
        assert_eq!(seen.first(63), Some(()));
        assert_eq!(seen.first(3), None);
        assert_eq!(seen.first(64), None);
    }
}
