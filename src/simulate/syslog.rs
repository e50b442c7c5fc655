//! A syslog receiver on loopback TCP that appends every byte it receives, unchanged, to a file:
//! what `secrelay demo` shows of the syslog sink (the CEF lines exactly as a SIEM would get them).
//!
//! Owns: its listener, the connections it accepted and the file. Must not: parse, reframe or drop
//! anything (the file is the wire), or listen beyond loopback. Invariant: bytes are written in the
//! order each connection sent them, up to its last LF at a time (or 1 MiB without one, or its
//! end), so connections open at once (the sink opens the next while closing the last) never
//! interleave inside a line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

/// Most bytes of a connection held back waiting for an LF (octet-counted frames need none).
const MAX_PARTIAL: usize = 1 << 20;

/// A running receiver. Dropping it stops accepting.
pub struct SyslogReceiver {
    addr: SocketAddr,
    path: PathBuf,
    open: Arc<AtomicUsize>,
    bytes: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl SyslogReceiver {
    /// Listens on `127.0.0.1` on a free port and writes what arrives to `path` (created with mode
    /// 0600, or truncated).
    pub async fn start(path: &Path) -> std::io::Result<SyslogReceiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        // Security events: readable by the owner only, as the file sink writes them.
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .await?;
        let file = Arc::new(Mutex::new(file));
        let open = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let accept = tokio::spawn({
            let (open, bytes) = (open.clone(), bytes.clone());
            async move {
                while let Ok((mut conn, _)) = listener.accept().await {
                    open.fetch_add(1, Ordering::SeqCst);
                    let (file, open, bytes) = (file.clone(), open.clone(), bytes.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        // What this connection sent after its last LF, written with the next one.
                        let mut partial: Vec<u8> = Vec::new();
                        loop {
                            let n = match conn.read(&mut buf).await {
                                Ok(0) | Err(_) => 0,
                                Ok(n) => n,
                            };
                            let before = partial.len();
                            partial.extend_from_slice(&buf[..n]);
                            // Only the bytes just read can hold a newer LF than the last write's.
                            let whole = if n == 0 || partial.len() > MAX_PARTIAL {
                                partial.len()
                            } else {
                                buf[..n]
                                    .iter()
                                    .rposition(|b| *b == b'\n')
                                    .map_or(0, |at| before + at + 1)
                            };
                            if whole > 0 {
                                let mut f = file.lock().await;
                                if f.write_all(&partial[..whole]).await.is_err() {
                                    break;
                                }
                                let _ = f.flush().await;
                                bytes.fetch_add(whole as u64, Ordering::SeqCst);
                                partial.drain(..whole);
                            }
                            if n == 0 {
                                break;
                            }
                        }
                        open.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            }
        });
        Ok(SyslogReceiver {
            addr,
            path: path.to_path_buf(),
            open,
            bytes,
            accept,
        })
    }

    /// `host:port` to point a syslog sink at.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// The file it writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes received and written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }

    /// Waits until every connection was closed by its sender (all it sent is in the file), for at
    /// most `limit`.
    pub async fn settle(&self, limit: Duration) {
        let until = Instant::now() + limit;
        while self.open.load(Ordering::SeqCst) > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for SyslogReceiver {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_exactly_the_bytes_received_from_every_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("syslog.log");
        let receiver = SyslogReceiver::start(&path).await.unwrap();
        for text in ["<134>1 a\n", "<134>1 b\n"] {
            let mut conn = tokio::net::TcpStream::connect(receiver.address())
                .await
                .unwrap();
            conn.write_all(text.as_bytes()).await.unwrap();
            conn.shutdown().await.unwrap();
            // One connection after the other: the file's order is known.
            let mut rest = Vec::new();
            let _ = conn.read_to_end(&mut rest).await;
            receiver.settle(Duration::from_secs(2)).await;
        }
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "<134>1 a\n<134>1 b\n"
        );
        assert_eq!(receiver.bytes(), 18);
    }

    #[tokio::test]
    async fn connections_open_at_once_never_interleave_inside_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("syslog.log");
        let receiver = SyslogReceiver::start(&path).await.unwrap();
        let pause = || tokio::time::sleep(Duration::from_millis(100));
        let mut first = tokio::net::TcpStream::connect(receiver.address())
            .await
            .unwrap();
        first.write_all(b"<134>1 first ").await.unwrap();
        pause().await;
        let mut second = tokio::net::TcpStream::connect(receiver.address())
            .await
            .unwrap();
        second.write_all(b"<134>1 second\n").await.unwrap();
        pause().await;
        first.write_all(b"line\n<134>1 no LF").await.unwrap();
        pause().await;
        drop((first, second));
        receiver.settle(Duration::from_secs(2)).await;
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "<134>1 second\n<134>1 first line\n<134>1 no LF"
        );
    }
}
