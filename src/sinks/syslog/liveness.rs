//! Looking at a TCP/TLS syslog connection without blocking, and closing one in order.
//!
//! Owns: what counts as open, closed in order, or broken, and the graceful close (close_notify,
//! write shutdown, read until the receiver closes). Must not: open connections or decide what is
//! sent again (see `connection` and the parent). Invariant: a look never blocks longer than a few
//! `TLS_PROBE`s and never consumes plaintext the caller wants: a syslog receiver sends none.

use std::io::ErrorKind;
use std::mem::MaybeUninit;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::connection::Connection;

/// Longest wait for TLS records already on the socket (session tickets, a close_notify) to be read
/// through rustls when looking at a connection.
const TLS_PROBE: Duration = Duration::from_millis(20);

/// What a look at a TCP/TLS connection, without blocking, found.
#[derive(Debug, PartialEq)]
pub(super) enum Liveness {
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
pub(super) async fn liveness(connection: &mut Connection) -> Liveness {
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
pub(super) enum Closing {
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
pub(super) async fn close_gracefully(connection: Connection, within: Duration) -> Closing {
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
