//! UDP for the syslog sink: one datagram per record, cut to `udp_max_bytes`.
//!
//! Owns: the cut (on a UTF-8 boundary) and the count of cut messages. Must not: retry a datagram
//! or promise delivery. Invariant: UDP is at-most-once; a cut message is counted and warned about.

use super::connection::Connection;
use super::SyslogSink;
use crate::sinks::{Delivered, SinkError};
use crate::store::OutboxRecord;

impl SyslogSink {
    /// Sends `batch` as one datagram per record, each cut to `udp_max_bytes`: `Ok` once the
    /// datagrams left, with no word from the receiver.
    pub(super) async fn deliver_udp(
        &mut self,
        batch: &[OutboxRecord],
    ) -> Result<Delivered, SinkError> {
        if self.connection.is_none() {
            self.connect().await?;
        }
        let mut message = Vec::with_capacity(1024);
        let mut datagrams = Vec::with_capacity(batch.len());
        for record in batch {
            message.clear();
            self.message(record, &mut message);
            if cut(&mut message, self.settings.udp_max_bytes) {
                self.truncated += 1;
            }
            datagrams.push(message.clone());
        }
        if self.truncated > 0 {
            tracing::warn!(sink = %self.name, truncated_total = self.truncated, max = self.settings.udp_max_bytes,
                "UDP messages cut to udp_max_bytes (use TCP or TLS for long records)");
        }
        let Some(Connection::Udp(socket)) = self.connection.as_ref() else {
            self.connection = None;
            return Err(self.unavailable("not connected".into()));
        };
        for datagram in &datagrams {
            if let Err(e) = socket.send(datagram).await {
                self.connection = None;
                return Err(self.unavailable(format!("write failed: {e}")));
            }
        }
        Ok(Delivered::default())
    }
}

/// Cuts `message` to at most `max` bytes on a UTF-8 character boundary.
pub(super) fn cut(message: &mut Vec<u8>, max: usize) -> bool {
    if message.len() <= max {
        return false;
    }
    let mut end = max;
    while end > 0 && (message[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    message.truncate(end);
    true
}
