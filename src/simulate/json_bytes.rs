//! JSON written straight into a byte buffer, for the simulators' hot pages: a page of 10 000
//! records built as `serde_json::Value` trees costs the simulator more CPU than the relay spends
//! reading it (issue 13), so records are written field by field instead.
//!
//! Owns: string escaping (delegated to serde_json, so it is the same as a `Value`'s), integers and
//! RFC 3339 UTC times. Must not: reorder anything: callers write keys in the order
//! `serde_json::Value` (a `BTreeMap`) serialises them, and each simulator's unit tests compare the
//! bytes with its `Value` rendering, so the wire is unchanged.

use chrono::{SecondsFormat, TimeZone, Utc};

use crate::encode::decimal::Decimal;

/// A JSON string (quoted and escaped exactly as serde_json writes one).
pub(crate) fn string(out: &mut Vec<u8>, text: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// An unsigned integer.
pub(crate) fn uint(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(Decimal::unsigned(n, 1).as_bytes());
}

/// A signed integer.
pub(crate) fn int(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(Decimal::signed(n).as_bytes());
}

/// Year, month, day of a day count since 1970-01-01 (proleptic Gregorian; H. Hinnant's
/// `civil_from_days`).
fn civil(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe as i64 + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A quoted RFC 3339 UTC time, `ms` epoch milliseconds plus `micros` (0–999) microseconds, with
/// `fraction` digits (3: milliseconds, 6: microseconds) and `Z`, as
/// `to_rfc3339_opts(Millis|Micros, true)` writes it.
pub(crate) fn time(out: &mut Vec<u8>, ms: i64, micros: u64, fraction: usize) {
    let (year, month, day) = civil(ms.div_euclid(86_400_000));
    if !(0..=9999).contains(&year) || micros > 999 {
        // chrono's own text for what the fast path does not cover (signed or 5-digit years).
        let t = Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
            + chrono::Duration::microseconds(micros as i64 % 1000);
        let format = if fraction == 6 {
            SecondsFormat::Micros
        } else {
            SecondsFormat::Millis
        };
        string(out, &t.to_rfc3339_opts(format, true));
        return;
    }
    let in_day = ms.rem_euclid(86_400_000) as u64;
    let year = year as u64;
    let millis = in_day % 1000;
    // `"YYYY-MM-DDTHH:MM:SS.` then the fraction: pairs of digits from a table, five of these
    // are written for every file event a page serves.
    let mut text = *b"\"0000-00-00T00:00:00.";
    text[1..3].copy_from_slice(pair(year / 100));
    text[3..5].copy_from_slice(pair(year % 100));
    text[6..8].copy_from_slice(pair(month));
    text[9..11].copy_from_slice(pair(day));
    text[12..14].copy_from_slice(pair(in_day / 3_600_000));
    text[15..17].copy_from_slice(pair(in_day / 60_000 % 60));
    text[18..20].copy_from_slice(pair(in_day / 1000 % 60));
    out.extend_from_slice(&text);
    out.push(b'0' + (millis / 100) as u8);
    out.extend_from_slice(pair(millis % 100));
    if fraction == 6 {
        out.push(b'0' + (micros / 100) as u8);
        out.extend_from_slice(pair(micros % 100));
    }
    out.extend_from_slice(b"Z\"");
}

/// `n` (below 100) as two digits.
fn pair(n: u64) -> &'static [u8] {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let at = (n % 100) as usize * 2;
    &PAIRS[at..at + 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chrono_text(ms: i64, micros: u64, fraction: usize) -> String {
        let t = Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
            + chrono::Duration::microseconds(micros as i64);
        let format = if fraction == 6 {
            SecondsFormat::Micros
        } else {
            SecondsFormat::Millis
        };
        serde_json::to_string(&t.to_rfc3339_opts(format, true)).unwrap()
    }

    #[test]
    fn times_are_written_as_chrono_writes_them() {
        let mut ms: i64 = -86_400_000 * 800;
        // Every few hours over ~300 years (leap years, century rules), plus the edges.
        let mut cases = vec![
            0,
            -1,
            1,
            951_782_400_000,
            4_107_542_400_000,
            253_402_300_799_999,
        ];
        while ms < 10_000_000_000_000 {
            cases.push(ms);
            ms += 11_111_111_111;
        }
        for ms in cases {
            for (micros, fraction) in [(0, 3), (0, 6), (7, 6), (999, 6)] {
                let mut out = Vec::new();
                time(&mut out, ms, micros, fraction);
                let expected = if fraction == 3 {
                    chrono_text(ms, 0, 3)
                } else {
                    chrono_text(ms, micros, 6)
                };
                assert_eq!(String::from_utf8(out).unwrap(), expected, "{ms} {micros}");
            }
        }
    }

    #[test]
    fn numbers_and_strings_match_serde_json() {
        for n in [0u64, 7, 10, 99, 1000, 1_234_567_890, u64::MAX] {
            let mut out = Vec::new();
            uint(&mut out, n);
            assert_eq!(out, serde_json::to_vec(&n).unwrap());
        }
        for n in [0i64, -1, 42, i64::MIN, i64::MAX] {
            let mut out = Vec::new();
            int(&mut out, n);
            assert_eq!(out, serde_json::to_vec(&n).unwrap());
        }
        let mut out = Vec::new();
        string(&mut out, "a \"q\" \\ \n \u{1}");
        assert_eq!(out, serde_json::to_vec("a \"q\" \\ \n \u{1}").unwrap());
    }
}
