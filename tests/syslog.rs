//! The syslog sink against a real rsyslog on loopback: UDP, TCP with octet counting, TCP with LF
//! framing and TLS; N records in, the same N records out, byte for byte, for hostile values.

mod common;

#[path = "common/rsyslog.rs"]
mod rsyslog;
#[path = "common/tls.rs"]
mod tls;

use std::collections::HashMap;

use chrono::{TimeZone, Utc};
use secrelay::settings::{Settings, SinkSettings, SyslogSinkSettings};
use secrelay::sinks::syslog::SyslogSink;
use secrelay::sinks::{Sink, SinkError};
use secrelay::sources::Vendor;
use secrelay::store::OutboxRecord;

fn settings(extra: &str) -> SyslogSinkSettings {
    let text = format!("[sinks.s]\ntype = \"syslog\"\nhostname = \"collector-1\"\n{extra}\n");
    let s = Settings::from_toml(&text).expect("valid sink config");
    let SinkSettings::Syslog(syslog) = s.sinks["s"].clone() else {
        panic!("syslog settings")
    };
    syslog
}

fn vendors() -> HashMap<String, Vendor> {
    HashMap::from([
        ("sophos_eu".to_string(), Vendor::Sophos),
        ("incydr".to_string(), Vendor::Code42),
    ])
}

/// Records whose text carries everything that breaks naive CEF and syslog framing.
fn hostile_records() -> Vec<OutboxRecord> {
    let nasty = [
        "plain text",
        "equals=sign and back\\slash",
        "pipe|in the name",
        "carriage\rreturn",
        "line\nfeed and CRLF\r\nhere",
        "tab\there",
        "ünïcødé — 日本語 ✓",
        "fake=field act=blocked suser=root",
    ];
    nasty
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let record = serde_json::json!({
                "id": format!("id-{i}"),
                "type": "Event::Endpoint::Threat::Detected",
                "name": text,
                "severity": (["low", "medium", "high", "very_high"])[i % 4],
                "created_at": "2026-11-20T10:00:00.000Z",
                "when": "2026-11-20T09:59:58.000Z",
                "source": format!("CORP\\{text}"),
                "location": "host|7",
                "source_info": {"ip": "10.0.0.7"},
            });
            OutboxRecord {
                seq: i as i64 + 1,
                source: "sophos_eu".into(),
                stream: "events".into(),
                tenant: "t-1".into(),
                event_id: format!("id-{i}"),
                event_time: Utc
                    .timestamp_millis_opt(1_795_168_800_000 + i as i64)
                    .unwrap(),
                ingest_time: Utc.timestamp_millis_opt(1_795_168_900_000).unwrap(),
                severity: [1, 5, 8, 10][i % 4],
                record: record.to_string(),
            }
        })
        .collect()
}

fn expected(sink: &SyslogSink, records: &[OutboxRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            let mut out = Vec::new();
            sink.message(r, &mut out);
            String::from_utf8(out).unwrap()
        })
        .collect()
}

#[test]
fn the_message_bytes_are_exact() {
    let sink = SyslogSink::new("s", settings("address = \"127.0.0.1:1\""), vendors()).unwrap();
    let records = hostile_records();
    let pid = std::process::id();
    let first = &expected(&sink, &records)[4];
    assert_eq!(
        first,
        &format!(
            "<165>1 2026-11-20T10:00:00.004Z collector-1 secrelay {pid} events - \
             CEF:0|Sophos|Sophos Central|1.0|Event::Endpoint::Threat::Detected|line feed and CRLF  here|1|\
             externalId=id-4 rt=1795168800000 end=1795168798000 suser=CORP\\\\line\\nfeed and CRLF\\nhere \
             dhost=host|7 src=10.0.0.7"
        ),
        "PRI local4.notice (event severity 1 → 5: 20*8+5 = 165), RFC 5424 header, no BOM, CEF escaped"
    );
}

#[tokio::test]
async fn udp_tcp_octet_counting_and_tcp_lf_arrive_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = rsyslog::Rsyslog::start(dir.path(), None);
    let records = hostile_records();
    for (transport, framing, input) in [
        ("udp", "octet_counting", "udp"),
        ("tcp", "octet_counting", "tcp"),
        ("tcp", "lf", "tcp"),
    ] {
        let port = if transport == "udp" {
            receiver.udp
        } else {
            receiver.tcp
        };
        let mut sink = SyslogSink::new(
            "s",
            settings(&format!("address = \"127.0.0.1:{port}\"\ntransport = \"{transport}\"\nframing = \"{framing}\"")),
            vendors(),
        )
        .unwrap();
        let before = receiver.received(input).len();
        sink.deliver(&records).await.unwrap();
        let got = receiver.wait_for(input, before + records.len()).await;
        assert_eq!(
            got[before..],
            expected(&sink, &records)[..],
            "{transport}/{framing}"
        );
    }
}

#[tokio::test]
async fn rfc3164_and_json_payloads_arrive_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = rsyslog::Rsyslog::start(dir.path(), None);
    let records = hostile_records();
    let mut sink = SyslogSink::new(
        "s",
        settings(&format!(
            "address = \"127.0.0.1:{}\"\nformat = \"rfc3164\"\npayload = \"json\"",
            receiver.tcp
        )),
        vendors(),
    )
    .unwrap();
    sink.deliver(&records).await.unwrap();
    let got = receiver.wait_for("tcp", records.len()).await;
    assert_eq!(got, expected(&sink, &records));
    assert!(
        got[0].starts_with("<165>Nov 20 10:00:00 collector-1 secrelay["),
        "{}",
        got[0]
    );
    let json = got[4].split_once("]: ").unwrap().1;
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["record"]["name"], "line\nfeed and CRLF\r\nhere");
}

#[tokio::test]
async fn tls_with_a_trusted_ca_arrives_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let pki = tls::pki(dir.path());
    let receiver = rsyslog::Rsyslog::start(dir.path(), Some(&pki));
    let records = hostile_records();
    let mut sink = SyslogSink::new(
        "s",
        settings(&format!(
            "address = \"localhost:{}\"\ntransport = \"tls\"\nca_file = {:?}",
            receiver.tls,
            pki.ca.display().to_string()
        )),
        vendors(),
    )
    .unwrap();
    sink.check()
        .await
        .expect("TLS handshake with the trusted receiver");
    sink.deliver(&records).await.unwrap();
    sink.deliver(&records[..2]).await.unwrap();
    let got = receiver.wait_for("tls", records.len() + 2).await;
    let mut want = expected(&sink, &records);
    want.extend(expected(&sink, &records[..2]));
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_tls_receiver_with_an_untrusted_certificate_is_refused_unless_configured_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let pki = tls::pki(dir.path());
    let receiver = rsyslog::Rsyslog::start(dir.path(), Some(&pki));
    let other = tempfile::tempdir().unwrap();
    let stranger = tls::pki(other.path());
    let address = format!(
        "address = \"localhost:{}\"\ntransport = \"tls\"",
        receiver.tls
    );

    let mut strict = SyslogSink::new(
        "s",
        settings(&format!(
            "{address}\nca_file = {:?}",
            stranger.ca.display().to_string()
        )),
        vendors(),
    )
    .unwrap();
    let err = strict.check().await.unwrap_err();
    assert!(matches!(err, SinkError::Unavailable { .. }));
    assert!(err.to_string().contains("TLS handshake failed"), "{err}");
    let err = strict.deliver(&hostile_records()).await.unwrap_err();
    assert!(err.to_string().contains("TLS handshake failed"), "{err}");

    let mut lax = SyslogSink::new(
        "s",
        settings(&format!("{address}\ntls_verify = false")),
        vendors(),
    )
    .unwrap();
    lax.deliver(&hostile_records()[..1]).await.unwrap();
    assert_eq!(receiver.wait_for("tls", 1).await.len(), 1);
}

#[tokio::test]
async fn udp_messages_over_the_limit_are_cut_on_a_character_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = rsyslog::Rsyslog::start(dir.path(), None);
    let mut sink = SyslogSink::new(
        "s",
        settings(&format!(
            "address = \"127.0.0.1:{}\"\ntransport = \"udp\"\nudp_max_bytes = 200",
            receiver.udp
        )),
        vendors(),
    )
    .unwrap();
    let records = hostile_records();
    sink.deliver(&records[6..7]).await.unwrap();
    let got = receiver.wait_for("udp", 1).await;
    let full = &expected(&sink, &records[6..7])[0];
    assert!(
        got[0].len() <= 200 && full.starts_with(&got[0]),
        "{}",
        got[0]
    );
}

#[tokio::test]
async fn a_receiver_that_goes_away_is_reconnected_and_the_batch_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = rsyslog::Rsyslog::start(dir.path(), None);
    let port = receiver.tcp;
    let mut sink = SyslogSink::new(
        "s",
        settings(&format!("address = \"127.0.0.1:{port}\"")),
        vendors(),
    )
    .unwrap();
    let records = hostile_records();
    sink.deliver(&records[..3]).await.unwrap();
    receiver.wait_for("tcp", 3).await;
    let ports = (receiver.udp, receiver.tcp, receiver.tls);
    drop(receiver);
    // Writes into a dead connection fail once the peer has reset it; the sink reports it.
    let mut failed = false;
    for _ in 0..20 {
        if sink.deliver(&records[3..4]).await.is_err() {
            failed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(failed, "a write to a receiver that is gone must fail");
    assert!(
        sink.deliver(&records[3..4]).await.is_err(),
        "nothing listens: connect fails"
    );
    // The receiver comes back on the same port: the next delivery connects again and sends.
    let again = tempfile::tempdir().unwrap();
    let receiver = rsyslog::Rsyslog::start_on(again.path(), None, ports);
    sink.deliver(&records[3..5]).await.unwrap();
    assert_eq!(
        receiver.wait_for("tcp", 2).await,
        expected(&sink, &records[3..5])
    );
}

#[tokio::test]
async fn the_pipeline_delivers_every_sophos_event_to_rsyslog_once() {
    use secrelay::app::{self, BackfillOptions};
    use secrelay::simulate::sophos::Identity;
    let dir = tempfile::tempdir().unwrap();
    let receiver = rsyslog::Rsyslog::start(dir.path(), None);
    let sim = common::finished_sim(Identity::Tenant, 1, 500).await;
    let text = common::config_text(&sim, dir.path(), "", "")
        .replace("sinks = [\"out\"]", "sinks = [\"siem\"]")
        + &format!(
            "[sinks.siem]\ntype = \"syslog\"\naddress = \"127.0.0.1:{}\"\n",
            receiver.tcp
        );
    let settings = Settings::from_toml(&text).unwrap();
    let summary = app::backfill(
        &settings,
        &BackfillOptions::default(),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(summary.complete(), "{summary:?}");
    let want = common::expected(&sim, &["events", "alerts"]);
    let got = receiver.wait_for("tcp", want.len()).await;
    let mut ids: Vec<String> = got
        .iter()
        .map(|line| {
            let (_, ext) = line
                .split_once("externalId=")
                .expect("a CEF line with its id");
            ext.split(' ').next().unwrap().to_string()
        })
        .collect();
    ids.sort();
    let mut want_ids: Vec<String> = want.into_iter().map(|(_, _, id)| id).collect();
    want_ids.sort();
    // Alerts share their event's id (Sophos: event_service_event_id), so ids repeat across streams.
    assert_eq!(ids, want_ids);
}
