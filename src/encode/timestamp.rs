//! RFC 3339 UTC timestamps with milliseconds (`2023-11-14T22:13:20.123Z`), written by hand: the
//! NDJSON envelope writes two for every record and RFC 5424 syslog headers one, and chrono's
//! `format` and `to_rfc3339_opts` cost more than the rest of what they are part of.
//!
//! Owns: [`write_millis`]. Must not: write any other form. Invariant: the bytes are those
//! `to_rfc3339_opts(SecondsFormat::Millis, true)` gives; chrono itself writes what the fast path
//! does not cover (years outside 0–9999, a leap second).

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};

use super::decimal::Decimal;

/// Appends `t` as `YYYY-MM-DDTHH:MM:SS.mmmZ`, exactly as chrono's
/// `to_rfc3339_opts(SecondsFormat::Millis, true)` writes it.
pub fn write_millis(t: DateTime<Utc>, out: &mut Vec<u8>) {
    if !(0..=9999).contains(&t.year()) || t.nanosecond() >= 1_000_000_000 {
        out.extend_from_slice(t.to_rfc3339_opts(SecondsFormat::Millis, true).as_bytes());
        return;
    }
    // Each part, its width, and the byte after it.
    let parts = [
        (t.year() as u32, 4, b'-'),
        (t.month(), 2, b'-'),
        (t.day(), 2, b'T'),
        (t.hour(), 2, b':'),
        (t.minute(), 2, b':'),
        (t.second(), 2, b'.'),
        (t.nanosecond() / 1_000_000, 3, b'Z'),
    ];
    for (n, width, after) in parts {
        out.extend_from_slice(Decimal::unsigned(n.into(), width).as_bytes());
        out.push(after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn written(t: DateTime<Utc>) -> String {
        let mut out = Vec::new();
        write_millis(t, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn times_are_written_as_chrono_writes_them() {
        // Every ~13 days from 1967 to 2286 (every month, leap years), sub-millisecond parts that
        // must be cut, not rounded, the century rules, and the edges of the fast path.
        let mut cases = vec![
            Utc.timestamp_opt(0, 0).unwrap(),
            Utc.timestamp_opt(-1, 999_999_999).unwrap(),
            Utc.timestamp_opt(951_782_400, 1_000_000).unwrap(),
            Utc.timestamp_opt(253_402_300_799, 999_999_999).unwrap(),
            Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(1900, 2, 28, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(1900, 3, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(2000, 2, 29, 12, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(2100, 2, 28, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(2100, 3, 1, 0, 0, 0).unwrap(),
        ];
        let mut s: i64 = -86_400 * 800;
        while s < 10_000_000_000 {
            cases.push(
                Utc.timestamp_opt(s, (s.rem_euclid(1000) as u32) * 1_000_777)
                    .unwrap(),
            );
            s += 1_111_111;
        }
        for t in cases {
            assert_eq!(
                written(t),
                t.to_rfc3339_opts(SecondsFormat::Millis, true),
                "{t:?}"
            );
        }
    }

    #[test]
    fn chrono_writes_what_the_fast_path_does_not_cover() {
        let far = Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(written(far), "+10000-01-01T00:00:00.000Z");
        let before = Utc.with_ymd_and_hms(-1, 12, 31, 23, 59, 59).unwrap();
        assert_eq!(written(before), "-0001-12-31T23:59:59.000Z");
        let leap = Utc.timestamp_opt(1_483_228_799, 1_500_000_000).unwrap();
        assert_eq!(written(leap), "2016-12-31T23:59:60.500Z");
    }
}
