//! The syslog sink's bytes: a record's message (header, then its CEF line or JSON envelope) and
//! a batch's frames.
//!
//! Owns: [`MessageEncoder`], everything the bytes depend on, fixed when the sink is built. Must
//! not: do I/O, read a clock, or hold state that delivering changes. Invariant: the same batch
//! always gives the same bytes (the header time is the event's, the PROCID is read once), so a
//! batch the delivery loop encoded ahead (`Sink::encoder`) is byte for byte the batch `deliver`
//! would have encoded.

use crate::encode::syslog::{self as frame, Framing, Header, HeaderFormat};
use crate::mapping::{Mappings, RecordMapping};
use crate::settings::SyslogPayload;
use crate::store::OutboxRecord;

/// Batches of at least this many records are encoded by two threads (see
/// [`MessageEncoder::frames`]); below it a thread's start costs more than it saves.
pub(super) const ENCODE_IN_TWO_FROM: usize = 200;

/// How one sink turns records into messages and frames.
pub(super) struct MessageEncoder {
    /// Facility number, 0–23.
    pub(super) facility: u8,
    /// HOSTNAME.
    pub(super) hostname: String,
    /// APP-NAME / TAG.
    pub(super) app_name: String,
    /// PROCID: this process, read once (each read is a system call).
    pub(super) procid: u32,
    /// RFC 5424 or RFC 3164.
    pub(super) format: HeaderFormat,
    /// CEF or the JSON envelope.
    pub(super) payload: SyslogPayload,
    /// Octet counting or LF (stream transports).
    pub(super) framing: Framing,
    /// Source id → its vendor's mapping (the CEF fields).
    pub(super) mappings: Mappings,
}

impl MessageEncoder {
    /// The framed messages of `batch`, in order. A large batch is encoded by two threads, each
    /// half of it: mapping records to CEF is most of this sink's work (every record parsed), and
    /// one core did it all while the other waited (measured: 21k events/s at one core).
    pub(super) fn frames(&self, batch: &[OutboxRecord]) -> Vec<u8> {
        if batch.len() < ENCODE_IN_TWO_FROM {
            return self.frames_of(batch);
        }
        let (first, second) = batch.split_at(batch.len() / 2);
        std::thread::scope(|scope| {
            let later = scope.spawn(|| self.frames_of(second));
            let mut frames = self.frames_of(first);
            match later.join() {
                Ok(rest) => frames.extend_from_slice(&rest),
                Err(panic) => std::panic::resume_unwind(panic),
            }
            frames
        })
    }

    /// The framed messages of `records`, one after another, on this thread.
    fn frames_of(&self, records: &[OutboxRecord]) -> Vec<u8> {
        let mut line = String::with_capacity(2048);
        let mut message = Vec::with_capacity(2048);
        let mut frames = Vec::with_capacity(records.len() * 1024);
        // Records of one source follow each other: its mapping is looked up once per run of them.
        let mut mapping: Option<(&str, &dyn RecordMapping)> = None;
        for record in records {
            let of_source = match mapping {
                Some((source, m)) if source == &*record.source => m,
                _ => {
                    let m = self.mappings.of(&record.source);
                    mapping = Some((&record.source, m));
                    m
                }
            };
            message.clear();
            self.write_message(record, of_source, &mut line, &mut message);
            frame::frame(self.framing, &message, &mut frames);
        }
        frames
    }

    /// Appends the message (header and payload, unframed) of one record to `out`.
    pub(super) fn message(&self, record: &OutboxRecord, out: &mut Vec<u8>) {
        let mut line = String::new();
        self.write_message(record, self.mappings.of(&record.source), &mut line, out);
    }

    /// The message of `record`, whose source maps its records with `mapping`; `line` is room for
    /// its payload.
    fn write_message(
        &self,
        record: &OutboxRecord,
        mapping: &dyn RecordMapping,
        line: &mut String,
        out: &mut Vec<u8>,
    ) {
        let json;
        let payload: &[u8] = match self.payload {
            SyslogPayload::Json => {
                let mut envelope = Vec::with_capacity(record.record.len() + 200);
                crate::encode::json::write_line(record, &mut envelope);
                envelope.pop();
                json = envelope;
                &json
            }
            SyslogPayload::Cef => {
                line.clear();
                mapping
                    .cef_of_text(&record.stream, &record.record, record.severity)
                    .write(line);
                line.as_bytes()
            }
        };
        // The event's time, not the send time: a batch sent again after a failure is the same
        // bytes, and receivers that take the header time see when it happened.
        let header = Header {
            facility: self.facility,
            severity: frame::severity_for(record.severity),
            time: record.event_time,
            hostname: &self.hostname,
            app_name: &self.app_name,
            procid: Some(self.procid),
            msgid: &record.stream,
        };
        frame::write_message(self.format, &header, payload, out);
    }
}
