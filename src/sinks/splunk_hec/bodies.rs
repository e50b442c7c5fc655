//! The HEC sink's bytes: each record's envelope with its route, and a batch cut into requests of
//! at most `max_request_bytes`, each body compressed when `gzip` is on.
//!
//! Owns: [`HecEncoder`] and what a batch encodes to ([`EncodedBatch`]). Must not: send, read a
//! reply, or hold state that delivering changes, or keep a batch's envelopes once they are in
//! their bodies. Invariant: pure — the same batch always gives the same envelopes, the same cut
//! and the same bodies, so the bodies the delivery loop made ahead (`Sink::encoder`) are the
//! bodies `deliver` would have made.

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

/// A batch encoded: the size of each record's envelope, and the bodies of the requests that carry
/// the batch from its first record on (see [`HecEncoder::cut`]). The envelopes themselves are not
/// kept: each went into its request's body as it was made, and a request cut differently later
/// (a resumed batch, a halved request) renders its records again.
pub struct EncodedBatch {
    /// The size of record `i`'s envelope, in bytes.
    pub(super) sizes: Vec<usize>,
    /// Each request's records (a range of the batch) and its body, in order.
    pub(super) bodies: Vec<(Range<usize>, RequestBody)>,
}

/// Whether an envelope of `len` bytes starts a new request after `count` envelopes of `size`
/// bytes in all: the one rule of [`HecEncoder::cut`] and [`HecEncoder::encode`] (an envelope
/// larger than `max` goes alone).
fn starts_new_request(count: usize, size: usize, len: usize, max: usize) -> bool {
    count > 0 && size + len > max
}

/// A request body being written, envelope after envelope.
enum BodyWriter {
    /// Sent as written.
    Plain(Vec<u8>),
    /// Compressed as written.
    Gzip(Box<flate2::write::GzEncoder<Vec<u8>>>),
}

impl BodyWriter {
    /// An empty body, compressed when `gzip` says so, for about `size` bytes of envelopes.
    fn new(gzip: bool, size: usize) -> BodyWriter {
        if gzip {
            BodyWriter::Gzip(Box::new(flate2::write::GzEncoder::new(
                Vec::with_capacity(size / 4),
                flate2::Compression::fast(),
            )))
        } else {
            BodyWriter::Plain(Vec::with_capacity(size))
        }
    }

    /// Appends one envelope. Compressing into memory cannot fail but for a lack of memory.
    fn write(&mut self, envelope: &[u8]) -> std::io::Result<()> {
        match self {
            BodyWriter::Plain(bytes) => {
                bytes.extend_from_slice(envelope);
                Ok(())
            }
            BodyWriter::Gzip(encoder) => encoder.write_all(envelope),
        }
    }

    /// The body as posted.
    fn finish(self) -> std::io::Result<RequestBody> {
        Ok(match self {
            BodyWriter::Plain(bytes) => RequestBody { bytes, gzip: false },
            BodyWriter::Gzip(encoder) => RequestBody {
                bytes: encoder.finish()?,
                gzip: true,
            },
        })
    }
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

    /// The size of each record's envelope in `batch`, in bytes, for [`HecEncoder::cut`].
    pub(super) fn sizes(&self, batch: &[OutboxRecord]) -> Vec<usize> {
        let mut envelope = Vec::new();
        batch
            .iter()
            .map(|record| {
                envelope.clear();
                self.envelope(record, &mut envelope);
                envelope.len()
            })
            .collect()
    }

    /// The records from `from` on, cut into requests of at most `max_request_bytes` of envelopes
    /// (`sizes`, from [`HecEncoder::sizes`]); an envelope larger than that goes alone.
    pub(super) fn cut(&self, sizes: &[usize], from: usize) -> Vec<Range<usize>> {
        let max = self.settings.max_request_bytes;
        let mut requests = Vec::new();
        let mut start = from;
        let mut size = 0;
        for (i, &len) in sizes.iter().enumerate().skip(from) {
            if starts_new_request(i - start, size, len, max) {
                requests.push(start..i);
                start = i;
                size = 0;
            }
            size += len;
        }
        if start < sizes.len() {
            requests.push(start..sizes.len());
        }
        requests
    }

    /// The body of a request carrying `records`, rendered again (a request cut otherwise than
    /// the one encoded ahead).
    pub(super) fn body(&self, records: &[OutboxRecord]) -> RequestBody {
        let mut envelopes = Vec::new();
        for record in records {
            self.envelope(record, &mut envelopes);
        }
        if self.settings.gzip {
            let mut writer = BodyWriter::new(true, envelopes.len());
            if let Ok(body) = writer.write(&envelopes).and_then(|()| writer.finish()) {
                return body;
            }
        }
        // Sent plain rather than not at all when compressing fails.
        RequestBody {
            bytes: envelopes,
            gzip: false,
        }
    }

    /// `batch` encoded: its envelopes' sizes and the bodies of its requests from its first record
    /// on, cut as [`HecEncoder::cut`] cuts from 0. Each envelope goes into its body as it is made,
    /// so no more than one envelope of the batch is held uncompressed besides the bodies.
    pub(super) fn encode(&self, batch: &[OutboxRecord]) -> EncodedBatch {
        let max = self.settings.max_request_bytes;
        let gzip = self.settings.gzip;
        let mut sizes = Vec::with_capacity(batch.len());
        let mut bodies = Vec::new();
        let mut envelope = Vec::new();
        let mut writer = BodyWriter::new(gzip, max);
        let (mut start, mut size, mut failed) = (0, 0, false);
        let mut close = |range: Range<usize>, writer: BodyWriter, failed: bool| {
            let body = match writer.finish() {
                Ok(body) if !failed => body,
                _ => self.body(&batch[range.clone()]),
            };
            bodies.push((range, body));
        };
        for (i, record) in batch.iter().enumerate() {
            envelope.clear();
            self.envelope(record, &mut envelope);
            if starts_new_request(i - start, size, envelope.len(), max) {
                let full = std::mem::replace(&mut writer, BodyWriter::new(gzip, max));
                close(start..i, full, failed);
                (start, size, failed) = (i, 0, false);
            }
            failed |= writer.write(&envelope).is_err();
            size += envelope.len();
            sizes.push(envelope.len());
        }
        if start < batch.len() {
            close(start..batch.len(), writer, failed);
        }
        EncodedBatch { sizes, bodies }
    }
}
