//! A syslog receiver on loopback TCP that appends every byte it receives, unchanged, to a file:
//! what `secrelay demo` shows of the syslog sink (the CEF lines exactly as a SIEM would get them).
//!
//! Owns: its listener, the connections it accepted and the file. Must not: parse, reframe or drop
//! anything (the file is the wire), or listen beyond loopback. Invariant: bytes are written in the
//! order each connection sent them; one connection's bytes are never interleaved mid-read.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

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
                        loop {
                            match conn.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    let mut f = file.lock().await;
                                    if f.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                    let _ = f.flush().await;
                                    bytes.fetch_add(n as u64, Ordering::SeqCst);
                                }
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
}
