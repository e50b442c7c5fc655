//! HEC sink unit tests: request bodies encoded ahead by the delivery loop.

use chrono::TimeZone;

use super::*;
use crate::settings::{Settings, SinkSettings};
use crate::simulate::hec::{HecSim, HecSimConfig};
use crate::store::Access;

/// `n` records of one source, each its own small JSON object.
fn records(n: usize) -> Vec<OutboxRecord> {
    (0..n)
        .map(|i| OutboxRecord {
            seq: i as i64 + 1,
            source: "s".into(),
            stream: "events".into(),
            tenant: String::new(),
            event_id: format!("e-{i}"),
            event_time: chrono::Utc
                .timestamp_millis_opt(1_795_168_800_000 + i as i64)
                .unwrap(),
            ingest_time: chrono::Utc.timestamp_millis_opt(1_795_168_900_000).unwrap(),
            severity: 5,
            record: format!(r#"{{"id":"e-{i}"}}"#).into(),
        })
        .collect()
}

/// A sink to `hec` without gzip, with one request per batch.
async fn plain_sink(hec: &HecSim, dir: &std::path::Path) -> HecSink {
    let text = format!(
        "[sinks.h]\ntype = \"splunk_hec\"\nurl = {:?}\ntoken = {:?}\nhost = \"c\"\ngzip = false\n",
        hec.url(),
        HecSimConfig::default().token
    );
    let settings = Settings::from_toml(&text).unwrap();
    let SinkSettings::SplunkHec(h) = settings.sinks["h"].clone() else {
        panic!("hec settings")
    };
    let store = Store::open(&dir.join("state.db"), Access::Writer)
        .await
        .unwrap();
    HecSink::new("h", h, &settings.http, Mappings::new(), store).unwrap()
}

/// The ids of the events `hec` took, in order.
fn taken(hec: &HecSim) -> Vec<String> {
    hec.accepted()
        .iter()
        .map(|e| e["event"]["id"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// A body made ahead for a request's records is what goes; one made for other records is not
/// (a resumed batch or a halved request cuts differently), and that request is made anew.
#[tokio::test]
async fn a_body_encoded_ahead_goes_only_for_its_own_records() {
    let hec = HecSim::start(HecSimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = plain_sink(&hec, dir.path()).await;
    let batch = records(4);
    let encode = sink.encoder().expect("HEC encodes ahead");
    let mut encoded = encode(&batch);
    let cut: Vec<(usize, usize)> = encoded
        .bodies
        .iter()
        .map(|(r, _)| (r.start, r.end))
        .collect();
    assert_eq!(cut, [(0, 4)]);
    // Marked, to tell which body went: the envelope of another record.
    let marked = sink.encoder.body(&records(9)[8..]);
    encoded.bodies[0].1 = marked;
    sink.deliver_encoded(&batch, encoded).await.unwrap();
    assert_eq!(taken(&hec), ["e-8"]);

    let mut encoded = encode(&batch);
    let marked = sink.encoder.body(&records(9)[8..]);
    encoded.bodies = vec![(0..1, marked)];
    sink.deliver_encoded(&batch, encoded).await.unwrap();
    assert_eq!(taken(&hec), ["e-8", "e-0", "e-1", "e-2", "e-3"]);
}

/// `body` unpacked: the envelopes it carries.
fn unpacked(body: &bodies::RequestBody) -> Vec<u8> {
    if !body.gzip {
        return body.bytes.clone();
    }
    let mut plain = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(&body.bytes[..]),
        &mut plain,
    )
    .unwrap();
    plain
}

/// A batch encoded ahead is cut as `cut` cuts it from its first record, and each body carries
/// exactly the envelopes its records render to, with and without gzip; so a request cut anew
/// (`body`) is byte for byte the one made ahead.
#[tokio::test]
async fn a_batch_encoded_ahead_is_cut_and_rendered_as_each_request_alone() {
    let hec = HecSim::start(HecSimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = plain_sink(&hec, dir.path()).await;
    // Records of 160-170 bytes: 1,000 bytes hold six, and one of 1,500 goes alone.
    let mut batch = records(40);
    batch[17].record = format!(r#"{{"id":"e-17","pad":"{}"}}"#, "x".repeat(1500)).into();
    for gzip in [false, true] {
        let encoder = Arc::get_mut(&mut sink.encoder).unwrap();
        encoder.settings.gzip = gzip;
        encoder.settings.max_request_bytes = 1000;
        let encoded = sink.encoder.encode(&batch);
        assert_eq!(encoded.sizes, sink.encoder.sizes(&batch));
        let cut: Vec<_> = encoded.bodies.iter().map(|(r, _)| r.clone()).collect();
        assert_eq!(cut, sink.encoder.cut(&encoded.sizes, 0));
        assert!(cut.contains(&(17..18)), "{cut:?}");
        assert!(cut.len() > 7, "{cut:?}");
        for (range, body) in &encoded.bodies {
            assert_eq!(body.gzip, gzip);
            let mut envelopes = Vec::new();
            for record in &batch[range.clone()] {
                sink.envelope(record, &mut envelopes);
            }
            assert_eq!(unpacked(body), envelopes, "{range:?}");
            assert_eq!(
                unpacked(&sink.encoder.body(&batch[range.clone()])),
                envelopes
            );
            assert!(range.len() == 1 || envelopes.len() <= 1000, "{range:?}");
        }
    }
}
