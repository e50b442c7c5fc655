//! The syslog sink's connection: opened (UDP socket, or TCP with keepalive and
//! `TCP_USER_TIMEOUT`, then TLS), and checked before a TCP/TLS connection is reused.
//!
//! Owns: [`Connection`], connecting with the sink's timeout, the idle reconnect, and whether what a
//! reused connection carried goes again when it was found closed or reset. Must not: frame or
//! write records (the parent does). Invariant: a connection found reset, or closed by the receiver
//! soon after its last batch, has everything it carried unconfirmed (see `unread`) sent again first
//! on the next connection; one the receiver closed in order long after its last batch read it all.

use std::time::Duration;

use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

use super::liveness::{close_gracefully, liveness, Closing, Liveness};
use super::{transport_name, SyslogSink};
use crate::settings::SyslogTransport;
use crate::sinks::SinkError;

/// An open connection to the receiver, by transport.
pub(super) enum Connection {
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
/// Longest wait, at a graceful close, for the receiver to close its side (capped by `timeout_secs`).
const CLOSE_DRAIN: Duration = Duration::from_secs(4);

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

impl SyslogSink {
    /// Opens a connection by the configured transport (TCP/TLS within `timeout_secs`); anything
    /// still unconfirmed from the previous one goes ahead of the next batch (`hold_for_resend`).
    pub(super) async fn connect(&mut self) -> Result<(), SinkError> {
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
        // Still held here only when the previous connection was let go without a close in order
        // (a look at it cut short): what it carried goes again.
        self.hold_for_resend();
        self.connection = Some(connection);
        self.last_write = Instant::now();
        Ok(())
    }

    pub(super) fn close_within(&self) -> Duration {
        Duration::from_secs_f64(self.settings.timeout_secs).min(CLOSE_DRAIN)
    }

    /// Before a batch on a reused TCP/TLS connection: closes it in order after an idle period, and
    /// drops it when the receiver closed or reset it. Either way the next batch goes on a new
    /// connection, preceded by what the old one carried unconfirmed when the receiver may not
    /// have read all of it.
    pub(super) async fn check_reused(&mut self) {
        let Some(mut connection) = self.connection.take() else {
            return;
        };
        let idle = self.last_write.elapsed();
        if self.settings.idle_reconnect_secs > 0.0
            && idle >= Duration::from_secs_f64(self.settings.idle_reconnect_secs)
        {
            match close_gracefully(connection, self.close_within()).await {
                Closing::Failed(e) => {
                    self.hold_for_resend();
                    tracing::warn!(sink = %self.name, address = %self.settings.address,
                        "closing an idle connection failed ({e}); what it may not have read goes again");
                }
                // Open, but not closing its side: it may have stopped reading; assume the worse.
                Closing::NoAnswer => {
                    self.hold_for_resend();
                    tracing::warn!(sink = %self.name, address = %self.settings.address,
                        "an idle connection was not closed by the receiver in time; what it may not have read goes again");
                }
                Closing::InOrder => {
                    self.unconfirmed.clear();
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
                let again = doubt && self.unconfirmed.bytes() > 0;
                tracing::warn!(sink = %self.name, address = %self.settings.address,
                    "connection {state} since the last batch; reconnecting{}",
                    if again { " and sending again what it may not have read" } else { "" });
                if again {
                    self.hold_for_resend();
                } else {
                    self.unconfirmed.clear();
                }
            }
        }
    }
}
