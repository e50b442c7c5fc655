//! Syslog sink unit tests: UDP cuts, mappings and the connection checks.

use super::frames::ENCODE_IN_TWO_FROM;
use super::udp::cut;
use super::*;
use crate::encode::syslog as frame;

#[test]
fn udp_cut_never_splits_a_character() {
    let mut m = "aé".as_bytes().to_vec();
    assert!(cut(&mut m, 2));
    assert_eq!(m, b"a");
    let mut short = b"ok".to_vec();
    assert!(!cut(&mut short, 10));
}

/// A TCP sink with host name `h` and no vendor mappings (it is never connected).
fn unmapped_sink() -> SyslogSink {
    let text = "[sinks.s]\ntype = \"syslog\"\naddress = \"127.0.0.1:1\"\nhostname = \"h\"\n";
    let settings = crate::settings::Settings::from_toml(text).unwrap();
    let crate::settings::SinkSettings::Syslog(syslog) = settings.sinks["s"].clone() else {
        panic!("syslog settings")
    };
    SyslogSink::new("s", syslog, Mappings::new()).unwrap()
}

/// A record of a source nobody registered a mapping for is shown as what it is (secrelay's
/// generic line with the JSON in `msg`), not dressed in one vendor's field names.
#[test]
fn a_source_without_a_mapping_gets_the_generic_cef_line_not_a_vendors() {
    let sink = unmapped_sink();
    let record = OutboxRecord {
        seq: 1,
        source: "unregistered".into(),
        stream: "things".into(),
        tenant: String::new(),
        event_id: "e-1".into(),
        event_time: chrono::Utc::now(),
        ingest_time: chrono::Utc::now(),
        severity: 5,
        record: r#"{"id":"e-1","name":"x"}"#.into(),
    };
    let mut out = Vec::new();
    sink.message(&record, &mut out);
    let line = String::from_utf8(out).unwrap();
    assert!(
        line.contains("CEF:0|secrelay|secrelay|1|things|things|5|"),
        "{line}"
    );
    assert!(line.contains(r#"msg={"id":"e-1","name":"x"}"#), "{line}");
}

/// A batch encoded by two threads gives the same bytes as one record after another.
#[test]
fn a_large_batch_is_framed_in_record_order() {
    let sink = unmapped_sink();
    let batch: Vec<OutboxRecord> = (0..ENCODE_IN_TWO_FROM as i64 * 2 + 1)
        .map(|i| OutboxRecord {
            seq: i,
            source: "unregistered".into(),
            stream: "things".into(),
            tenant: String::new(),
            event_id: format!("e-{i}"),
            event_time: chrono::Utc::now(),
            ingest_time: chrono::Utc::now(),
            severity: (i % 11) as u8,
            record: format!(r#"{{"id":"e-{i}"}}"#).into(),
        })
        .collect();
    let mut one_by_one = Vec::new();
    for record in &batch {
        let mut message = Vec::new();
        sink.message(record, &mut message);
        frame::frame(Framing::OctetCounting, &message, &mut one_by_one);
    }
    assert_eq!(sink.encoder.frames(&batch), one_by_one);
    let ahead = sink.encoder().expect("TCP sinks encode ahead");
    assert_eq!(ahead(&batch), one_by_one);
}
