//! The HEC sink's bytes: each record's envelope with its route, and a batch cut into requests of
//! at most `max_request_bytes`, each body compressed when `gzip` is on.
//!
//! Owns: [`HecEncoder`] and what a batch encodes to ([`EncodedBatch`]). Must not: send, read a
//! reply, or hold state that delivering changes. Invariant: pure — the same batch always gives the
//! same envelopes, the same cut and the same bodies, so the bodies the delivery loop made ahead
//! (`Sink::encoder`) are the bodies `deliver` would have made.

use std::io::Write;
use std::ops::Range;

use crate::encode::hec::{write_event, HecMeta};
use crate::mapping::Mappings;
use crate::settings::SplunkHecSettings;
use crate::store::OutboxRecord;

/// How one HEC sink turns records into envelopes and request bodies.
pub(super) struct HecEncoder {
    /// The sink's settings: index, routes, `gzip`, `max_request_bytes`.
    pub(super) settings: SplunkHecSettings,
    /// The `host` of an envelope without a route that sets one.
    pub(super) host: String,
    /// Source id → its vendor's mapping (the default sourcetype).
    pub(super) mappings: Mappings,
}

/// A request body, as posted.
pub(super) struct RequestBody {
    /// The concatenated envelopes, gzip-compressed when `gzip` says so.
    pub(super) bytes: Vec<u8>,
    /// The bytes are gzip (send `Content-Encoding: gzip`).
    pub(super) gzip: bool,
}

/// A batch encoded: each record's envelope, and the bodies of the requests that carry the batch
/// from its first record on (see [`HecEncoder::cut`]).
pub struct EncodedBatch {
    /// Record `i`'s envelope.
    pub(super) events: Vec<Vec<u8>>,
    /// Each request's records (a range of `events`) and its body, in order.
    pub(super) bodies: Vec<(Range<usize>, RequestBody)>,
}

impl HecEncoder {
    /// The envelope of one record, with its route's index, sourcetype, host and source.
    pub(super) fn envelope(&self, record: &OutboxRecord, out: &mut Vec<u8>) {
        let mut index = self.settings.index.as_deref();
        let mut sourcetype = None;
        let mut host = self.host.as_str();
        let mut source = None;
        // A route for the source applies first, then one for the source and stream on top.
        let routes = self
            .settings
            .routes
            .iter()
            .filter(|r| r.source == record.source);
        let (general, specific): (Vec<_>, Vec<_>) = routes.partition(|r| r.stream.is_none());
        for route in general.into_iter().chain(
            specific
                .into_iter()
                .filter(|r| r.stream.as_deref() == Some(record.stream.as_str())),
        ) {
            index = route.index.as_deref().or(index);
            sourcetype = route.sourcetype.as_deref().or(sourcetype);
            host = route.host.as_deref().unwrap_or(host);
            source = route.source_name.as_deref().or(source);
        }
        let default_type = self.mappings.of(&record.source).sourcetype(&record.stream);
        let default_source = format!("secrelay:{}", record.source);
        let meta = HecMeta {
            host,
            source: source.unwrap_or(&default_source),
            sourcetype: sourcetype.unwrap_or(&default_type),
            index,
        };
        write_event(record, &meta, out);
    }

    /// The envelopes of `batch`, one per record.
    pub(super) fn envelopes(&self, batch: &[OutboxRecord]) -> Vec<Vec<u8>> {
        batch
            .iter()
            .map(|r| {
                let mut out = Vec::with_capacity(r.record.len() + 256);
                self.envelope(r, &mut out);
                out
            })
            .collect()
    }

    /// `events` from `from` on, cut into requests of at most `max_request_bytes` (an event
    /// larger than that goes alone).
    pub(super) fn cut(&self, events: &[Vec<u8>], from: usize) -> Vec<Range<usize>> {
        let max = self.settings.max_request_bytes;
        let mut requests = Vec::new();
        let mut start = from;
        let mut size = 0;
        for (i, e) in events.iter().enumerate().skip(from) {
            if i > start && size + e.len() > max {
                requests.push(start..i);
                start = i;
                size = 0;
            }
            size += e.len();
        }
        if start < events.len() {
            requests.push(start..events.len());
        }
        requests
    }

    /// The body of a request carrying `events`: concatenated, compressed when `gzip` is on (sent
    /// plain if compressing fails, which writing to memory does not).
    pub(super) fn body(&self, events: &[Vec<u8>]) -> RequestBody {
        let plain = events.concat();
        if !self.settings.gzip {
            return RequestBody {
                bytes: plain,
                gzip: false,
            };
        }
        let mut encoder = flate2::write::GzEncoder::new(
            Vec::with_capacity(plain.len() / 4),
            flate2::Compression::fast(),
        );
        match encoder.write_all(&plain).and_then(|()| encoder.finish()) {
            Ok(bytes) => RequestBody { bytes, gzip: true },
            Err(_) => RequestBody {
                bytes: plain,
                gzip: false,
            },
        }
    }

    /// `batch` encoded: its envelopes and the bodies of its requests from its first record on.
    pub(super) fn encode(&self, batch: &[OutboxRecord]) -> EncodedBatch {
        let events = self.envelopes(batch);
        let bodies = self
            .cut(&events, 0)
            .into_iter()
            .map(|range| {
                let body = self.body(&events[range.clone()]);
                (range, body)
            })
            .collect();
        EncodedBatch { events, bodies }
    }
}
