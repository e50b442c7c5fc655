//! Syslog headers (RFC 5424, RFC 3164) and TCP framing (RFC 6587), as bytes
//! (reference/sink-protocols.md §2).
//!
//! Owns: PRI, the header fields and their character rules, the space-padded RFC 3164 day, octet
//! counting and LF framing. Must not: do I/O, read clocks or know CEF. Invariants: header fields
//! are PRINTUSASCII within their RFC limits (NILVALUE `-` when empty); no BOM before the message;
//! an octet-counted frame's length is the exact byte count of the message.

use chrono::{DateTime, Datelike, Timelike, Utc};

use super::decimal::Decimal;

/// Which header layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderFormat {
    /// `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG`
    Rfc5424,
    /// `<PRI>Mmm dd hh:mm:ss HOSTNAME TAG[PID]: MSG`
    Rfc3164,
}

/// How messages are delimited on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `MSG-LEN SP MSG` (RFC 6587 §3.4.1; the only framing RFC 5425 allows on TLS).
    OctetCounting,
    /// `MSG LF` (RFC 6587 §3.4.2); safe because messages never hold a raw LF.
    Lf,
}

/// The header fields of one message.
#[derive(Debug, Clone)]
pub struct Header<'a> {
    /// Facility 0–23 (16–23 are local0–local7).
    pub facility: u8,
    /// Severity 0 (emergency) – 7 (debug).
    pub severity: u8,
    /// When the message was sent (UTC).
    pub time: DateTime<Utc>,
    /// HOSTNAME.
    pub hostname: &'a str,
    /// APP-NAME (RFC 5424) / TAG (RFC 3164).
    pub app_name: &'a str,
    /// PROCID / `[pid]`.
    pub procid: Option<u32>,
    /// MSGID (RFC 5424 only), e.g. the stream name.
    pub msgid: &'a str,
}

/// The syslog severity for an event severity 0–10: 9–10 critical, 7–8 error, 4–6 warning,
/// 1–3 notice, 0 informational.
pub fn severity_for(event_severity: u8) -> u8 {
    match event_severity {
        9.. => 2,
        7..=8 => 3,
        4..=6 => 4,
        1..=3 => 5,
        0 => 6,
    }
}

/// The facility number of a name (`local0`–`local7`, `user`, `daemon`, `auth`, `authpriv`, ...).
pub fn facility_number(name: &str) -> Option<u8> {
    const NAMES: [&str; 24] = [
        "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
        "authpriv", "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2",
        "local3", "local4", "local5", "local6", "local7",
    ];
    NAMES.iter().position(|n| *n == name).map(|i| i as u8)
}

/// A header field as PRINTUSASCII (33–126), cut to `max` bytes, `-` when empty.
fn field(text: &str, max: usize, out: &mut Vec<u8>) {
    let start = out.len();
    for b in text.bytes().take(max) {
        out.push(if (33..=126).contains(&b) { b } else { b'_' });
    }
    if out.len() == start {
        out.push(b'-');
    }
}

/// Appends one message (header then `msg`, no BOM, no terminator) to `out`.
pub fn write_message(format: HeaderFormat, header: &Header<'_>, msg: &[u8], out: &mut Vec<u8>) {
    let pri = u16::from(header.facility.min(23)) * 8 + u16::from(header.severity.min(7));
    out.push(b'<');
    push_number(u32::from(pri), 1, out);
    out.push(b'>');
    let t = header.time;
    // By hand rather than through `format`, which cost more than the rest of the header; chrono
    // writes the rare times this does not (years past 9999, leap seconds).
    let plain = (0..=9999).contains(&t.year()) && t.nanosecond() < 1_000_000_000;
    match format {
        HeaderFormat::Rfc5424 => {
            out.extend_from_slice(b"1 ");
            if plain {
                super::timestamp::write_millis(t, out);
            } else {
                out.extend_from_slice(t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string().as_bytes());
            }
            out.push(b' ');
            field(header.hostname, 255, out);
            out.push(b' ');
            field(header.app_name, 48, out);
            out.push(b' ');
            match header.procid {
                Some(pid) => push_number(pid, 1, out),
                None => out.push(b'-'),
            }
            out.push(b' ');
            field(header.msgid, 32, out);
            // No structured data.
            out.extend_from_slice(b" - ");
        }
        HeaderFormat::Rfc3164 => {
            // The day is padded with a space: `Nov  3`, as RFC 3164 requires (chrono's `%e`).
            if plain {
                const MONTHS: [&[u8; 3]; 12] = [
                    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct",
                    b"Nov", b"Dec",
                ];
                out.extend_from_slice(MONTHS[t.month0() as usize]);
                out.push(b' ');
                if t.day() < 10 {
                    out.push(b' ');
                }
                push_number(t.day(), 1, out);
                out.push(b' ');
                push_clock(t, out);
            } else {
                out.extend_from_slice(t.format("%b %e %H:%M:%S").to_string().as_bytes());
            }
            out.push(b' ');
            let host = header.hostname.split('.').next().unwrap_or_default();
            field(host, 255, out);
            out.push(b' ');
            let tag: String = header
                .app_name
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(32)
                .collect();
            out.extend_from_slice(if tag.is_empty() { "secrelay" } else { &tag }.as_bytes());
            if let Some(pid) = header.procid {
                out.push(b'[');
                push_number(pid, 1, out);
                out.push(b']');
            }
            out.extend_from_slice(b": ");
        }
    }
    out.extend_from_slice(msg);
}

/// `HH:MM:SS` of `t`.
fn push_clock(t: DateTime<Utc>, out: &mut Vec<u8>) {
    push_number(t.hour(), 2, out);
    out.push(b':');
    push_number(t.minute(), 2, out);
    out.push(b':');
    push_number(t.second(), 2, out);
}

/// `n` in decimal, padded with zeros to at least `width` digits.
fn push_number(n: impl Into<u64>, width: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(Decimal::unsigned(n.into(), width).as_bytes());
}

/// Appends `message` to `out` framed for a stream transport.
pub fn frame(framing: Framing, message: &[u8], out: &mut Vec<u8>) {
    match framing {
        Framing::OctetCounting => {
            push_number(message.len() as u64, 1, out);
            out.push(b' ');
            out.extend_from_slice(message);
        }
        Framing::Lf => {
            out.extend_from_slice(message);
            out.push(b'\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn header(time: DateTime<Utc>) -> Header<'static> {
        Header {
            facility: 20,
            severity: 4,
            time,
            hostname: "collector.example.com",
            app_name: "secrelay",
            procid: Some(4242),
            msgid: "file_events",
        }
    }

    /// The message `write_message` makes of `header` and `payload`, as text.
    fn rendered(format: HeaderFormat, header: &Header<'_>, payload: &[u8]) -> String {
        let mut out = Vec::new();
        write_message(format, header, payload, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn rfc5424_bytes_are_exact() {
        let t = Utc.with_ymd_and_hms(2026, 11, 3, 7, 5, 9).unwrap()
            + chrono::Duration::milliseconds(12);
        assert_eq!(
            rendered(HeaderFormat::Rfc5424, &header(t), b"CEF:0|V|P|1|C|N|5|"),
            "<164>1 2026-11-03T07:05:09.012Z collector.example.com secrelay 4242 file_events - CEF:0|V|P|1|C|N|5|"
        );
    }

    #[test]
    fn rfc3164_pads_the_day_with_a_space_and_drops_the_domain() {
        let t = Utc.with_ymd_and_hms(2026, 11, 3, 7, 5, 9).unwrap();
        assert_eq!(
            rendered(HeaderFormat::Rfc3164, &header(t), b"CEF:0|x"),
            "<164>Nov  3 07:05:09 collector secrelay[4242]: CEF:0|x"
        );
        let t = Utc.with_ymd_and_hms(2026, 11, 23, 7, 5, 9).unwrap();
        assert!(
            rendered(HeaderFormat::Rfc3164, &header(t), b"m").starts_with("<164>Nov 23 07:05:09 ")
        );
    }

    #[test]
    fn empty_or_unprintable_fields_become_nilvalue_or_underscores() {
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let h = Header {
            hostname: "",
            msgid: "a b\tc",
            procid: None,
            ..header(t)
        };
        assert_eq!(
            rendered(HeaderFormat::Rfc5424, &h, b"x"),
            "<164>1 2026-01-01T00:00:00.000Z - secrelay - a_b_c - x"
        );
    }

    #[test]
    fn pri_is_facility_times_eight_plus_severity_without_leading_zeros() {
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let h = Header {
            facility: 0,
            severity: 0,
            ..header(t)
        };
        assert!(rendered(HeaderFormat::Rfc5424, &h, b"").starts_with("<0>1 "));
        assert_eq!(facility_number("local7"), Some(23));
        assert_eq!(facility_number("bogus"), None);
        assert_eq!(
            (
                severity_for(10),
                severity_for(7),
                severity_for(5),
                severity_for(1),
                severity_for(0)
            ),
            (2, 3, 4, 5, 6)
        );
    }

    /// The header's time, written by hand, is chrono's `format` of it, for every month, single
    /// and double digit fields, and the times chrono writes itself (year 10000, a leap second).
    #[test]
    fn header_times_are_written_as_chrono_formats_them() {
        let mut times: Vec<DateTime<Utc>> = (0..12)
            .map(|m| {
                Utc.with_ymd_and_hms(2026, m + 1, 1 + m * 2, m + 5, m * 4, m * 5)
                    .unwrap()
                    + chrono::Duration::milliseconds(i64::from(m) * 83)
            })
            .collect();
        times.push(Utc.with_ymd_and_hms(7, 1, 9, 0, 0, 0).unwrap());
        times.push(Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap());
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_milli_opt(23, 59, 59, 1_500)
            .unwrap()
            .and_utc();
        times.push(leap);
        for t in times {
            let h = header(t);
            assert_eq!(
                rendered(HeaderFormat::Rfc5424, &h, b"m"),
                format!(
                    "<164>1 {} collector.example.com secrelay 4242 file_events - m",
                    t.format("%Y-%m-%dT%H:%M:%S%.3fZ")
                )
            );
            assert_eq!(
                rendered(HeaderFormat::Rfc3164, &h, b"m"),
                format!(
                    "<164>{} collector secrelay[4242]: m",
                    t.format("%b %e %H:%M:%S")
                )
            );
        }
    }

    #[test]
    fn framing_counts_bytes_not_characters() {
        let mut out = Vec::new();
        frame(Framing::OctetCounting, "é=1".as_bytes(), &mut out);
        frame(Framing::Lf, b"next", &mut out);
        assert_eq!(out, "4 é=1next\n".as_bytes());
    }
}
