//! Syslog sink: CEF (or the JSON envelope) in RFC 5424 or RFC 3164 messages, over UDP, TCP or TLS
//! with octet-counting or LF framing (reference/sink-protocols.md §1–2).
//!
//! Owns: the connection (opened at start and in `check`, reopened after a failure or an idle
//! period, closed gracefully: `connection`, `liveness`), TLS trust and client certificates (`tls`),
//! UDP truncation (`udp`), and the messages and frames of records (`frames`, pure, so the delivery
//! loop encodes the next batch ahead); here, the TCP/TLS write. Must not: build header or CEF bytes
//! itself (see `encode::syslog`, `encode::cef` and each source's mapping).
//!
//! Invariant: a TCP/TLS batch is reported delivered only after every byte was written and flushed
//! on a connection found open (no FIN, reset or error, without blocking) just before the write and
//! again just after it. After a failed write the connection is dropped and the whole batch is sent
//! again on a new one. Plain syslog has no receipt: a receiver's kernel acknowledges what its
//! process may never read (rsyslog stops reading at a SIGTERM and closes a moment later), and the
//! sender cannot tell how much that is. Only a close in order proves the receiver read everything:
//! we end our side, it reads to that end and closes its own. So everything a connection carried
//! is held (`unread`) until such a close, which comes once it carried `confirm_after_bytes` (on a
//! task of its own, one at a time, while the next batches go on a new connection), when it has
//! idled, and at the end of a run; if the connection ends any other way (reset, a FIN of the
//! receiver's crossing our writes, an error), all of that goes again first on a later one.
//! Duplicates per receiver restart stay within what was sent since the last close in order. UDP is
//! at-most-once (a WARN at start-up says so).

mod connection;
mod frames;
mod liveness;
mod tls;
mod udp;
mod unread;

use std::io::ErrorKind;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::encode::syslog::{Framing, HeaderFormat};
use crate::mapping::Mappings;
use crate::settings::{
    SetupError, SyslogFormat, SyslogFraming, SyslogSinkSettings, SyslogTransport,
};
use crate::sinks::{BatchEncoder, Delivered, Sink, SinkError};
use crate::store::OutboxRecord;
use connection::Connection;
use frames::MessageEncoder;
use liveness::{close_gracefully, liveness, Closing, Liveness};
use tls::tls_connector;
use unread::Unconfirmed;

/// The syslog sink.
pub struct SyslogSink {
    name: String,
    settings: SyslogSinkSettings,
    /// The bytes of records and batches; shared with the delivery loop's encoding ahead.
    encoder: Arc<MessageEncoder>,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    connection: Option<Connection>,
    /// When the current TCP/TLS connection was opened or last carried a batch.
    last_write: Instant,
    /// Frames reported delivered on the current connection since it was opened or last closed in
    /// order: sent again first on the next one if this one ends any other way.
    unconfirmed: Unconfirmed,
    /// Frames to send ahead of the next batch (see `unconfirmed`); moved there once written.
    resend: Vec<u8>,
    /// The previous connection, being closed in order while the next batches go on a new one.
    confirming: Option<Confirming>,
    /// UDP messages cut to `udp_max_bytes` since start.
    truncated: u64,
}

/// This machine's host name, for the HOSTNAME field.
pub fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
}

impl SyslogSink {
    /// A sink for `settings`; `mappings` gives each source's CEF mapping. Fails (naming the
    /// config key) when a TLS file cannot be used.
    pub fn new(
        name: &str,
        settings: SyslogSinkSettings,
        mappings: impl Into<Mappings>,
    ) -> Result<Self, SetupError> {
        let tls = match settings.transport {
            SyslogTransport::Tls => Some(
                tls_connector(name, &settings)
                    .map_err(|e| SetupError::keyed(&format!("sinks.{name}"), e))?,
            ),
            _ => None,
        };
        if settings.transport == SyslogTransport::Udp {
            tracing::warn!(sink = %name, address = %settings.address,
                "UDP syslog is at-most-once: a datagram lost on the way or dropped by a busy \
                 receiver is gone without a trace (use TCP or TLS where every record matters)");
        }
        let encoder = MessageEncoder {
            facility: settings.facility.number(),
            hostname: settings.hostname.clone().unwrap_or_else(local_hostname),
            app_name: settings.app_name.clone(),
            procid: std::process::id(),
            format: match settings.format {
                SyslogFormat::Rfc5424 => HeaderFormat::Rfc5424,
                SyslogFormat::Rfc3164 => HeaderFormat::Rfc3164,
            },
            payload: settings.payload,
            framing: match settings.framing {
                SyslogFraming::OctetCounting => Framing::OctetCounting,
                SyslogFraming::Lf => Framing::Lf,
            },
            mappings: mappings.into(),
        };
        Ok(SyslogSink {
            name: name.to_string(),
            settings,
            encoder: Arc::new(encoder),
            tls,
            connection: None,
            last_write: Instant::now(),
            unconfirmed: Unconfirmed::default(),
            resend: Vec::new(),
            confirming: None,
            truncated: 0,
        })
    }

    fn unavailable(&self, detail: String) -> SinkError {
        SinkError::Unavailable {
            sink: self.name.clone(),
            detail: format!(
                "{} {}: {detail}",
                transport_name(self.settings.transport),
                self.settings.address
            ),
            retry_after: None,
        }
    }

    /// The message (header and payload, unframed) for one record, appended to `out`.
    pub fn message(&self, record: &OutboxRecord, out: &mut Vec<u8>) {
        self.encoder.message(record, out);
    }
}

fn transport_name(t: SyslogTransport) -> &'static str {
    match t {
        SyslogTransport::Udp => "udp",
        SyslogTransport::Tcp => "tcp",
        SyslogTransport::Tls => "tls",
    }
}

/// Writes `resend` (batches sent again, or nothing), then `frames`, and flushes.
async fn write_flushed<W: AsyncWrite + Unpin>(
    stream: &mut W,
    resend: &[u8],
    frames: &[u8],
) -> std::io::Result<()> {
    stream.write_all(resend).await?;
    stream.write_all(frames).await?;
    stream.flush().await
}

/// A connection being closed in order on a task of its own, so that the next batch need not wait
/// for the receiver to read to its end; what it carried is held until that close ends.
struct Confirming {
    closing: tokio::task::JoinHandle<Closing>,
    /// Joined into one buffer only if it has to go again.
    carried: Unconfirmed,
}

/// How long closing at the end of a run may take, sending again what a reset left in doubt (a
/// receiver restarting just then): within the delivery loop's limit for a close (5 s).
const CLOSE_BUDGET: Duration = Duration::from_millis(4_500);

impl SyslogSink {
    /// Writes what waits to be sent again, then `frames`, on a connection found open before and
    /// after the write; `Ok` when the receiver has them as far as TCP can tell.
    async fn send(&mut self, frames: Vec<u8>) -> Result<(), SinkError> {
        // A confirmation that failed meanwhile: what it carried goes first, on this batch's connection.
        self.settle_confirmation(false).await;
        if !frames.is_empty() && self.held_bytes() > self.hold_limit() {
            // A receiver whose connections keep ending without a close in order (a reset as each
            // closes, or no close at all) must not make every batch carry an ever longer tail:
            // what is held goes alone and is confirmed before another batch is taken.
            self.settle_confirmation(true).await;
            Box::pin(self.send(Vec::new())).await?;
            self.settle_confirmation(true).await;
            if self.held_bytes() > self.hold_limit() {
                return Err(self.unavailable(format!(
                    "its connections keep ending without a close in order, so {} bytes it may not \
                     have read wait to go again before new batches",
                    self.held_bytes()
                )));
            }
        }
        self.check_reused().await;
        if self.connection.is_none() {
            self.connect().await?;
        }
        let timeout = Duration::from_secs_f64(self.settings.timeout_secs);
        let resend = &self.resend;
        let connection = self.connection.as_mut();
        let written = tokio::time::timeout(timeout, async {
            match connection {
                Some(Connection::Tcp(stream)) => write_flushed(stream, resend, &frames).await,
                Some(Connection::Tls(stream)) => write_flushed(stream, resend, &frames).await,
                Some(Connection::Udp(_)) | None => Err(std::io::Error::new(
                    ErrorKind::NotConnected,
                    "not connected",
                )),
            }
        })
        .await
        .unwrap_or_else(|_| Err(std::io::Error::new(ErrorKind::TimedOut, "write timed out")));
        if let Err(e) = written {
            // The receiver may hold part of the batch; all of it goes again on a new connection.
            self.drop_in_doubt();
            return Err(self.unavailable(format!("write failed: {e}")));
        }
        // A receiver that went away while we wrote took nothing in: its kernel may have acknowledged
        // the bytes, but they were never read. Look once more before calling the batch delivered.
        if let Some(connection) = self.connection.as_mut() {
            let state = liveness(connection).await;
            if state != Liveness::Open {
                self.drop_in_doubt();
                return Err(self.unavailable(format!(
                    "connection {state} right after the batch; it goes again"
                )));
            }
        }
        let resent = std::mem::take(&mut self.resend);
        self.unconfirmed.written([resent, frames]);
        self.last_write = Instant::now();
        if self.unconfirmed.bytes() >= self.settings.confirm_after_bytes {
            self.confirm().await;
        }
        Ok(())
    }

    /// Starts closing the connection in order, so the receiver shows it read everything held
    /// since the last such close, and lets the next batch open a new one meanwhile. One close at a
    /// time: the previous one is waited for first. The batch just written stays delivered whatever
    /// the close ends in: what the receiver may not have read goes again on a later connection.
    async fn confirm(&mut self) {
        self.settle_confirmation(true).await;
        let Some(connection) = self.connection.take() else {
            return;
        };
        // It blocks nothing, so it may wait as long as a write would.
        let within = Duration::from_secs_f64(self.settings.timeout_secs);
        self.confirming = Some(Confirming {
            closing: tokio::spawn(close_gracefully(connection, within)),
            carried: std::mem::take(&mut self.unconfirmed),
        });
    }

    /// Takes the outcome of the close started by [`Self::confirm`], waiting for it with `wait`
    /// (at most `close_within`): on a failure, what that connection carried goes ahead of
    /// everything waiting to be sent again, being older.
    async fn settle_confirmation(&mut self, wait: bool) {
        let Some(confirming) = self.confirming.as_mut() else {
            return;
        };
        if !wait && !confirming.closing.is_finished() {
            return;
        }
        // Awaited in place: a caller cut short here leaves it, and what it carried, held.
        let closing = (&mut confirming.closing)
            .await
            .unwrap_or_else(|e| Closing::Failed(format!("the close did not finish: {e}")));
        let Some(confirming) = self.confirming.take() else {
            return;
        };
        let mut carried = confirming.carried;
        match closing {
            Closing::InOrder => {}
            Closing::NoAnswer => {
                tracing::warn!(sink = %self.name, address = %self.settings.address,
                    "the receiver did not close its side in time after ours; sending what it carried again");
                self.resend_first(carried.take());
            }
            Closing::Failed(e) => {
                tracing::warn!(sink = %self.name, address = %self.settings.address,
                    "closing a connection to confirm it failed ({e}); sending what it carried again");
                self.resend_first(carried.take());
            }
        }
    }

    /// Puts `carried` ahead of everything waiting to be sent again (it is older).
    fn resend_first(&mut self, mut carried: Vec<u8>) {
        carried.extend_from_slice(&self.resend);
        self.resend = carried;
    }

    /// Most bytes held before new batches wait for what is held to be confirmed.
    fn hold_limit(&self) -> usize {
        self.settings.confirm_after_bytes.saturating_mul(4) + (1 << 20)
    }

    /// Bytes held that the receiver has not shown it read: waiting to be sent again, written on
    /// the current connection, and carried by the one being closed.
    fn held_bytes(&self) -> usize {
        self.resend.len()
            + self.unconfirmed.bytes()
            + self.confirming.as_ref().map_or(0, |c| c.carried.bytes())
    }

    /// Drops a connection that failed during a write or right after it. Everything it carried since
    /// it was opened or last closed in order goes again first on the next connection: a receiver
    /// stops reading some time before it closes, and batches written meanwhile were acknowledged
    /// by its kernel only.
    fn drop_in_doubt(&mut self) {
        self.connection = None;
        self.hold_for_resend();
    }

    /// Moves what the connection just ended carried unconfirmed ahead of the next batch (after
    /// anything already waiting there, which is older).
    fn hold_for_resend(&mut self) {
        let unread = self.unconfirmed.take();
        if self.resend.is_empty() {
            self.resend = unread;
        } else {
            self.resend.extend_from_slice(&unread);
        }
    }
}

impl Sink for SyslogSink {
    /// The frames of a batch.
    type Encoded = Vec<u8>;

    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&mut self, batch: &[OutboxRecord]) -> Result<Delivered, SinkError> {
        if self.settings.transport == SyslogTransport::Udp {
            return self.deliver_udp(batch).await;
        }
        let frames = self.encoder.frames(batch);
        self.send(frames).await?;
        Ok(Delivered::default())
    }

    /// The frames of a batch, for TCP and TLS (UDP sends each message apart).
    fn encoder(&self) -> Option<BatchEncoder<Vec<u8>>> {
        if self.settings.transport == SyslogTransport::Udp {
            return None;
        }
        let encoder = Arc::clone(&self.encoder);
        Some(Arc::new(move |batch: &[OutboxRecord]| {
            encoder.frames(batch)
        }))
    }

    async fn deliver_encoded(
        &mut self,
        batch: &[OutboxRecord],
        frames: Vec<u8>,
    ) -> Result<Delivered, SinkError> {
        if self.settings.transport == SyslogTransport::Udp {
            return self.deliver_udp(batch).await;
        }
        self.send(frames).await?;
        Ok(Delivered::default())
    }

    async fn check(&mut self) -> Result<(), SinkError> {
        self.settle_confirmation(true).await;
        if let Some(connection) = self.connection.take() {
            // Otherwise what it carried goes again (`connect`).
            if let Closing::InOrder = close_gracefully(connection, self.close_within()).await {
                self.unconfirmed.clear();
            }
        }
        self.connect().await
    }

    async fn close(&mut self) {
        // The delivery loop gives a close `CLOSE_WITHIN` (5 s); end before it cuts this short.
        let deadline = Instant::now() + CLOSE_BUDGET;
        let mut pause = Duration::from_millis(50);
        loop {
            // A close in order started by a delivery (or by the send below) ends first: if it
            // failed, what it carried is sent again here.
            let left = deadline.saturating_duration_since(Instant::now());
            let _ = tokio::time::timeout(left, self.settle_confirmation(true)).await;
            let left = deadline.saturating_duration_since(Instant::now());
            if self.connection.is_none() && self.unconfirmed.bytes() > 0 {
                // Its connection was let go without a close in order (a look at it cut short).
                self.hold_for_resend();
            }
            if let Some(connection) = self.connection.take() {
                if matches!(connection, Connection::Udp(_)) {
                    break;
                }
                match close_gracefully(connection, self.close_within().min(left)).await {
                    Closing::InOrder => {
                        tracing::debug!(sink = %self.name, "connection closed in order");
                        self.unconfirmed.clear();
                    }
                    Closing::NoAnswer => {
                        tracing::warn!(sink = %self.name, address = %self.settings.address,
                            "the receiver did not close its side in time; it may not have read the last batch");
                        self.unconfirmed.clear();
                    }
                    Closing::Failed(e) => {
                        // Reset while closing: what it had not read is gone.
                        tracing::warn!(sink = %self.name, address = %self.settings.address,
                            "closing the connection failed ({e}); sending what the receiver may not have read again");
                        self.hold_for_resend();
                    }
                }
            }
            // Held after a reset (now, or in a delivery that failed or was cut short just before):
            // send it on a new connection, which the next turn closes in order.
            if self.resend.is_empty() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break; // what is held is logged below
            }
            match tokio::time::timeout(left, self.send(Vec::new())).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    // A receiver restarting refuses connections for a moment.
                    tracing::debug!(sink = %self.name, "{e}; trying again");
                    tokio::time::sleep(pause.min(left)).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(_) => {}
            }
        }
        let held = self.held_bytes();
        if held > 0 {
            tracing::warn!(sink = %self.name, address = %self.settings.address, bytes = held,
                "stopping with bytes the receiver has not shown it read; they were not sent again in time");
        }
        self.connection = None;
        self.confirming = None;
        self.unconfirmed.clear();
        self.resend.clear();
    }
}

#[cfg(test)]
mod tests;
