//! Syslog sink: CEF (or the JSON envelope) in RFC 5424 or RFC 3164 messages, over UDP, TCP or TLS
//! with octet-counting or LF framing (reference/sink-protocols.md §1–2).
//!
//! Owns: the connection (opened at start and in `check`, reopened after a failure or an idle
//! period, closed gracefully), TLS trust and client certificates, and UDP truncation. Must not:
//! build header or CEF bytes itself (see `encode::syslog`, `encode::cef` and each source's mapping).
//!
//! Invariant: a TCP/TLS batch is reported delivered only after every byte was written and flushed
//! on a connection found open (no FIN, reset or error, without blocking) just before the write and
//! again just after it. After a failed write the connection is dropped and the whole batch is sent
//! again on a new one. Plain syslog has no receipt: a receiver that stops with bytes still unread
//! in its socket loses them. So the last batch written on a connection that is then found closed
//! or reset (rather than closed by us in order) is sent again first on the next one: duplicates
//! stay within one batch per receiver restart. UDP is at-most-once (a WARN at start-up says so).

use std::io::ErrorKind;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

use crate::encode::syslog::{self as frame, Framing, Header, HeaderFormat};
use crate::mapping::Mappings;
use crate::net::{tls_client_config, TlsOptions};
use crate::settings::{
    SetupError, SyslogFormat, SyslogFraming, SyslogPayload, SyslogSinkSettings, SyslogTransport,
};
use crate::sinks::{Delivered, Sink, SinkError};
use crate::store::OutboxRecord;

enum Connection {
    Udp(UdpSocket),
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// TCP keepalive: the first probe after this much silence on the connection.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// TCP keepalive: the pause between unanswered probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// TCP keepalive: unanswered probes after which the kernel ends the connection.
const KEEPALIVE_PROBES: u32 = 3;
/// Longest wait for TLS records already on the socket (session tickets, a close_notify) to be read
/// through rustls when looking at a connection.
const TLS_PROBE: Duration = Duration::from_millis(20);
/// Longest wait, at a graceful close, for the receiver to close its side (capped by `timeout_secs`).
const CLOSE_DRAIN: Duration = Duration::from_secs(4);

/// What a look at a TCP/TLS connection, without blocking, found.
#[derive(Debug, PartialEq)]
enum Liveness {
    /// Nothing to read and no error: the receiver still has it open.
    Open,
    /// The receiver closed it in order (FIN, or a TLS close_notify).
    Closed,
    /// Reset, a socket error, or data (a syslog receiver never sends any).
    Broken(String),
}

impl std::fmt::Display for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Liveness::Open => f.write_str("open"),
            Liveness::Closed => f.write_str("closed by the receiver"),
            Liveness::Broken(why) => write!(f, "broken ({why})"),
        }
    }
}

/// What a non-blocking peek at a TCP socket found.
enum Peeked {
    Nothing,
    Eof,
    Data,
    Error(String),
}

/// Peeks at `tcp` without blocking and without consuming anything. It asks the kernel directly:
/// tokio's cached readiness may not have seen a FIN or reset that just arrived.
fn peek(tcp: &TcpStream) -> Peeked {
    let socket = socket2::SockRef::from(tcp);
    match socket.take_error() {
        Ok(None) => {}
        Ok(Some(e)) | Err(e) => return Peeked::Error(e.to_string()),
    }
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    loop {
        // tokio keeps its sockets non-blocking: this returns at once.
        match socket.peek(&mut byte) {
            Ok(0) => return Peeked::Eof,
            Ok(_) => return Peeked::Data,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Peeked::Nothing,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Peeked::Error(e.to_string()),
        }
    }
}

const UNEXPECTED_DATA: &str = "the receiver sent data, which a syslog receiver never does";

/// Whether the receiver still has `connection` open, without blocking (TLS: at most a few
/// `TLS_PROBE`s when records are waiting). Reading TLS records here also takes in TLS 1.3 session
/// tickets, which left unread would turn our close into a reset.
async fn liveness(connection: &mut Connection) -> Liveness {
    match connection {
        Connection::Udp(_) => Liveness::Open,
        Connection::Tcp(tcp) => match peek(tcp) {
            Peeked::Nothing => Liveness::Open,
            Peeked::Eof => Liveness::Closed,
            Peeked::Data => Liveness::Broken(UNEXPECTED_DATA.into()),
            Peeked::Error(e) => Liveness::Broken(e),
        },
        Connection::Tls(tls) => {
            for _ in 0..5 {
                match peek(tls.get_ref().0) {
                    Peeked::Nothing => return Liveness::Open,
                    Peeked::Eof => return Liveness::Closed,
                    Peeked::Error(e) => return Liveness::Broken(e),
                    Peeked::Data => {}
                }
                // TLS records are waiting: session tickets (rustls keeps them and yields no
                // plaintext), a close_notify, an alert or data.
                let mut buf = [0u8; 256];
                match tokio::time::timeout(TLS_PROBE, tls.read(&mut buf)).await {
                    Err(_) => {} // no plaintext: look at the socket again
                    Ok(Ok(0)) => return Liveness::Closed,
                    Ok(Ok(_)) => return Liveness::Broken(UNEXPECTED_DATA.into()),
                    Ok(Err(e)) if e.kind() == ErrorKind::UnexpectedEof => return Liveness::Closed,
                    Ok(Err(e)) => return Liveness::Broken(e.to_string()),
                }
            }
            Liveness::Open
        }
    }
}

/// How a graceful close ended.
#[derive(Debug)]
enum Closing {
    /// The receiver closed its side in order: it read everything we sent.
    InOrder,
    /// It kept its side open past the limit: alive, and nothing says it lost anything.
    NoAnswer,
    /// A reset or another error: what it had not read yet is gone.
    Failed(String),
}

/// Closes a TCP/TLS connection so that the receiver reads everything sent on it: a TLS
/// close_notify, a write shutdown, then reads (discarding) until the receiver closes its side,
/// for at most `within`.
async fn close_gracefully(connection: Connection, within: Duration) -> Closing {
    let closed = tokio::time::timeout(within, async move {
        let mut buf = [0u8; 4096];
        match connection {
            Connection::Udp(_) => Ok(()),
            Connection::Tcp(mut tcp) => {
                tcp.shutdown().await?;
                while tcp.read(&mut buf).await? > 0 {}
                Ok(())
            }
            Connection::Tls(mut tls) => {
                tls.shutdown().await?;
                loop {
                    match tls.read(&mut buf).await {
                        Ok(0) => return Ok(()),
                        Ok(_) => {}
                        // Closed without a close_notify, but in order: it read all we sent.
                        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    })
    .await;
    match closed {
        Ok(Ok(())) => Closing::InOrder,
        Ok(Err(e)) => Closing::Failed(e.to_string()),
        Err(_) => Closing::NoAnswer,
    }
}

/// Keepalive probes and `TCP_USER_TIMEOUT`, so a receiver that vanished without a FIN or reset
/// (power loss, a firewall dropping the flow) ends the connection instead of swallowing writes.
fn tune(tcp: &TcpStream, user_timeout: Duration) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(tcp);
    socket.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_PROBES),
    )?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    socket.set_tcp_user_timeout(Some(user_timeout))?;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = user_timeout;
    Ok(())
}

/// The syslog sink.
pub struct SyslogSink {
    name: String,
    settings: SyslogSinkSettings,
    facility: u8,
    hostname: String,
    /// Source id → its vendor's mapping (the CEF fields).
    mappings: Mappings,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    connection: Option<Connection>,
    /// When the current TCP/TLS connection was opened or last carried a batch.
    last_write: Instant,
    /// Frames of the last batch reported delivered on the current connection: sent again first on
    /// the next one if this one is found closed or reset before we close it in order.
    last_batch: Vec<u8>,
    /// Frames to send ahead of the next batch (see `last_batch`); cleared once written.
    resend: Vec<u8>,
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

/// The TLS connector and the name the receiver's certificate must carry.
fn tls_connector(
    name: &str,
    s: &SyslogSinkSettings,
) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), String> {
    let key = format!("sinks.{name}");
    if !s.tls_verify {
        tracing::warn!(sink = %name, address = %s.address,
            "TLS certificate verification is OFF for this sink (tls_verify = false)");
    }
    let tls = TlsOptions {
        ca_file: s.ca_file.clone(),
        client_cert: match (&s.client_cert_file, &s.client_key_file) {
            (Some(cert), Some(private)) => Some((cert.clone(), private.clone())),
            _ => None,
        },
        verify: s.tls_verify,
    };
    let config = tls_client_config(&tls, &key)?;
    let host = match &s.tls_server_name {
        Some(n) => n.clone(),
        None => s
            .address
            .rsplit_once(':')
            .map_or(s.address.as_str(), |(h, _)| h)
            .trim_matches(['[', ']'])
            .to_string(),
    };
    let server = ServerName::try_from(host.clone())
        .map_err(|e| format!("{key}.tls_server_name {host:?}: {e}"))?;
    Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), server))
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
        Ok(SyslogSink {
            name: name.to_string(),
            facility: settings.facility.number(),
            hostname: settings.hostname.clone().unwrap_or_else(local_hostname),
            settings,
            mappings: mappings.into(),
            tls,
            connection: None,
            last_write: Instant::now(),
            last_batch: Vec::new(),
            resend: Vec::new(),
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

    /// The message (header and payload, unframed) for one record.
    pub fn message(&self, record: &OutboxRecord, out: &mut Vec<u8>) {
        let payload = match self.settings.payload {
            SyslogPayload::Json => {
                let mut line = Vec::with_capacity(record.record.len() + 200);
                crate::encode::json::write_line(record, &mut line);
                line.pop();
                line
            }
            SyslogPayload::Cef => {
                let value: serde_json::Value =
                    serde_json::from_str(&record.record).unwrap_or(serde_json::Value::Null);
                self.mappings
                    .of(&record.source)
                    .cef(&record.stream, &value, record.severity)
                    .to_line()
                    .into_bytes()
            }
        };
        // The event's time, not the send time: a batch sent again after a failure is the same
        // bytes, and receivers that take the header time see when it happened.
        let header = Header {
            facility: self.facility,
            severity: frame::severity_for(record.severity),
            time: record.event_time,
            hostname: &self.hostname,
            app_name: &self.settings.app_name,
            procid: Some(std::process::id()),
            msgid: &record.stream,
        };
        let format = match self.settings.format {
            SyslogFormat::Rfc5424 => HeaderFormat::Rfc5424,
            SyslogFormat::Rfc3164 => HeaderFormat::Rfc3164,
        };
        frame::write_message(format, &header, &payload, out);
    }

    async fn connect(&mut self) -> Result<(), SinkError> {
        let timeout = Duration::from_secs_f64(self.settings.timeout_secs);
        let address = self.settings.address.clone();
        let connection = match self.settings.transport {
            SyslogTransport::Udp => {
                let target = tokio::net::lookup_host(&address)
                    .await
                    .map_err(|e| self.unavailable(format!("cannot resolve: {e}")))?
                    .next()
                    .ok_or_else(|| self.unavailable("resolves to no address".into()))?;
                let local = if target.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                };
                let socket = UdpSocket::bind(local)
                    .await
                    .map_err(|e| self.unavailable(e.to_string()))?;
                socket
                    .connect(target)
                    .await
                    .map_err(|e| self.unavailable(e.to_string()))?;
                Connection::Udp(socket)
            }
            SyslogTransport::Tcp | SyslogTransport::Tls => {
                let tcp = tokio::time::timeout(timeout, TcpStream::connect(&address))
                    .await
                    .map_err(|_| self.unavailable("connect timed out".into()))?
                    .map_err(|e| self.unavailable(format!("connect failed: {e}")))?;
                let _ = tcp.set_nodelay(true);
                if let Err(e) = tune(&tcp, timeout) {
                    tracing::debug!(sink = %self.name, "keepalive and TCP_USER_TIMEOUT not set: {e}");
                }
                match &self.tls {
                    None => Connection::Tcp(tcp),
                    Some((connector, server)) => {
                        let stream =
                            tokio::time::timeout(timeout, connector.connect(server.clone(), tcp))
                                .await
                                .map_err(|_| self.unavailable("TLS handshake timed out".into()))?
                                .map_err(|e| {
                                    self.unavailable(format!("TLS handshake failed: {e}"))
                                })?;
                        Connection::Tls(Box::new(stream))
                    }
                }
            }
        };
        tracing::info!(sink = %self.name, address = %address, transport = transport_name(self.settings.transport), "connected");
        self.connection = Some(connection);
        self.last_write = Instant::now();
        self.last_batch.clear();
        Ok(())
    }

    fn close_within(&self) -> Duration {
        Duration::from_secs_f64(self.settings.timeout_secs).min(CLOSE_DRAIN)
    }

    /// Before a batch on a reused TCP/TLS connection: closes it in order after an idle period, and
    /// drops it when the receiver closed or reset it. Either way the next batch goes on a new
    /// connection, preceded by the last one when the receiver may not have read all of it.
    async fn check_reused(&mut self) {
        let Some(mut connection) = self.connection.take() else {
            return;
        };
        let idle = self.last_write.elapsed();
        if self.settings.idle_reconnect_secs > 0.0
            && idle >= Duration::from_secs_f64(self.settings.idle_reconnect_secs)
        {
            match close_gracefully(connection, self.close_within()).await {
                Closing::Failed(e) => {
                    self.resend = std::mem::take(&mut self.last_batch);
                    tracing::warn!(sink = %self.name, address = %self.settings.address,
                        "closing an idle connection failed ({e}); its last batch goes again");
                }
                // Idle this long, everything was acknowledged (or TCP_USER_TIMEOUT had ended it).
                Closing::InOrder | Closing::NoAnswer => {
                    self.last_batch.clear();
                    tracing::debug!(sink = %self.name, idle_secs = idle.as_secs(), "idle connection closed; opening a new one");
                }
            }
            return;
        }
        match liveness(&mut connection).await {
            Liveness::Open => self.connection = Some(connection),
            state => {
                // A reset means bytes it had not read were thrown away; an orderly close soon after
                // our last write may have crossed it. Long after, an orderly close means it read all.
                let timeout = Duration::from_secs_f64(self.settings.timeout_secs);
                let doubt = matches!(state, Liveness::Broken(_)) || idle < timeout;
                let again = doubt && !self.last_batch.is_empty();
                tracing::warn!(sink = %self.name, address = %self.settings.address,
                    "connection {state} since the last batch; reconnecting{}",
                    if again { " and sending that batch again" } else { "" });
                if again {
                    self.resend = std::mem::take(&mut self.last_batch);
                } else {
                    self.last_batch.clear();
                }
            }
        }
    }

    async fn deliver_udp(&mut self, batch: &[OutboxRecord]) -> Result<Delivered, SinkError> {
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

fn transport_name(t: SyslogTransport) -> &'static str {
    match t {
        SyslogTransport::Udp => "udp",
        SyslogTransport::Tcp => "tcp",
        SyslogTransport::Tls => "tls",
    }
}

/// Cuts `message` to at most `max` bytes on a UTF-8 character boundary.
fn cut(message: &mut Vec<u8>, max: usize) -> bool {
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

impl Sink for SyslogSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&mut self, batch: &[OutboxRecord]) -> Result<Delivered, SinkError> {
        if self.settings.transport == SyslogTransport::Udp {
            return self.deliver_udp(batch).await;
        }
        let framing = match self.settings.framing {
            SyslogFraming::OctetCounting => Framing::OctetCounting,
            SyslogFraming::Lf => Framing::Lf,
        };
        let mut message = Vec::with_capacity(1024);
        let mut frames = Vec::new();
        for record in batch {
            message.clear();
            self.message(record, &mut message);
            frame::frame(framing, &message, &mut frames);
        }
        self.check_reused().await;
        if self.connection.is_none() {
            self.connect().await?;
        }
        let timeout = Duration::from_secs_f64(self.settings.timeout_secs);
        let resend = &self.resend;
        let written = match self.connection.as_mut() {
            Some(Connection::Tcp(stream)) => {
                tokio::time::timeout(timeout, async {
                    stream.write_all(resend).await?;
                    stream.write_all(&frames).await?;
                    stream.flush().await
                })
                .await
            }
            Some(Connection::Tls(stream)) => {
                tokio::time::timeout(timeout, async {
                    stream.write_all(resend).await?;
                    stream.write_all(&frames).await?;
                    stream.flush().await
                })
                .await
            }
            Some(Connection::Udp(_)) | None => Ok(Err(std::io::Error::new(
                ErrorKind::NotConnected,
                "not connected",
            ))),
        }
        .unwrap_or_else(|_| Err(std::io::Error::new(ErrorKind::TimedOut, "write timed out")));
        if let Err(e) = written {
            // The receiver may hold part of the batch; all of it goes again on a new connection.
            self.connection = None;
            return Err(self.unavailable(format!("write failed: {e}")));
        }
        // A receiver that went away while we wrote took nothing in: its kernel may have acknowledged
        // the bytes, but they were never read. Look once more before calling the batch delivered.
        if let Some(connection) = self.connection.as_mut() {
            let state = liveness(connection).await;
            if state != Liveness::Open {
                self.connection = None;
                return Err(self.unavailable(format!(
                    "connection {state} right after the batch; it goes again"
                )));
            }
        }
        self.resend.clear();
        self.last_batch = frames;
        self.last_write = Instant::now();
        Ok(Delivered::default())
    }

    async fn check(&mut self) -> Result<(), SinkError> {
        if let Some(connection) = self.connection.take() {
            if let Closing::Failed(_) = close_gracefully(connection, self.close_within()).await {
                self.resend = std::mem::take(&mut self.last_batch);
            }
        }
        self.connect().await
    }

    async fn close(&mut self) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        if matches!(connection, Connection::Udp(_)) {
            return;
        }
        let within = self.close_within();
        match close_gracefully(connection, within).await {
            Closing::InOrder => tracing::debug!(sink = %self.name, "connection closed in order"),
            Closing::NoAnswer => {
                tracing::warn!(sink = %self.name, address = %self.settings.address,
                "the receiver did not close its side within {} s; it may not have read the last batch",
                within.as_secs_f64())
            }
            Closing::Failed(e) => {
                tracing::warn!(sink = %self.name, address = %self.settings.address,
                "closing the connection failed ({e}); the receiver may not have read the last batch")
            }
        }
        self.last_batch.clear();
    }
}

#[cfg(test)]
#[path = "syslog_tests.rs"]
mod tests;
