//! `GET /metrics` and `GET /health` over a minimal HTTP/1.1 responder on tokio's `TcpListener`, and
//! the client `secrelay health` asks it with.
//!
//! Why hand-written: a production build (`--no-default-features`) has no HTTP server crate, and two
//! fixed GET routes need none. Owns: reading one bounded request per connection (a size cap and a
//! timeout, so a slow or hostile client holds nothing for long), answering, closing. Must not: keep
//! connections alive, accept a body, or serve more than a few connections at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{Metrics, StoreFigures};
use crate::store::Store;

/// Largest request head read, in bytes; a longer one is answered 431 and closed.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a client may take to send its request, and to read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 16;
/// Most bytes of an oversized request read (and dropped) after answering it, and for how long.
const DRAIN_AT_MOST: u64 = 1024 * 1024;
const DRAIN_WITHIN: Duration = Duration::from_secs(1);
/// Largest answer `secrelay health` reads, in bytes.
const MAX_ANSWER: usize = 64 * 1024;

/// Failures of the metrics endpoint or of asking it.
#[derive(Debug, thiserror::Error)]
pub enum MetricsServeError {
    /// `metrics.listen` could not be bound.
    #[error("cannot listen on {addr} (metrics.listen): {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// `secrelay health` could not reach the endpoint or read its answer.
    #[error("cannot ask {url}: {detail}")]
    Probe {
        /// The URL asked.
        url: String,
        /// What went wrong.
        detail: String,
    },
}

/// What the endpoint reads at scrape time.
pub struct Scrape {
    /// The pipeline's counters.
    pub metrics: Arc<Metrics>,
    /// The state database (backlogs and outbox totals).
    pub store: Store,
    /// Sink name → the sources routed to it.
    pub sources_of_sink: BTreeMap<String, Vec<String>>,
    /// A partition or sink failing this long without a success makes the daemon unhealthy.
    pub unhealthy_after: Duration,
}

impl Scrape {
    async fn figures(&self) -> Result<StoreFigures, crate::store::StoreError> {
        let outbox = self.store.outbox_totals().await?;
        let mut backlogs = BTreeMap::new();
        for (sink, sources) in &self.sources_of_sink {
            let position = self.store.sink_position(sink).await?;
            let backlog = self.store.backlog_totals(sink, position, sources).await?;
            backlogs.insert(sink.clone(), (backlog.rows, backlog.bytes));
        }
        Ok(StoreFigures {
            outbox_rows: outbox.rows,
            outbox_bytes: outbox.bytes,
            backlogs,
        })
    }
}

/// Binds `addr` and answers until `stop`; returns the bound address and the serving task.
pub async fn serve(
    addr: &str,
    scrape: Scrape,
    stop: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), MetricsServeError> {
    let bind_err = |source| MetricsServeError::Bind {
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    let scrape = Arc::new(scrape);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, say: wait a little rather than spin.
                    tracing::warn!("metrics endpoint: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let scrape = scrape.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &scrape).await {
                    tracing::debug!(%peer, "metrics endpoint: {e}");
                }
                drop(permit);
            });
        }
    });
    Ok((local, task))
}

/// Reads one request head and answers it.
async fn answer(mut stream: TcpStream, scrape: &Scrape) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = tokio::time::timeout(IO_TIMEOUT, async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(true);
            }
            if head.len() > MAX_REQUEST {
                return Ok(false);
            }
        }
    })
    .await;
    let (status, content_type, body) = match complete {
        Err(_) => return Ok(()), // too slow: just close
        Ok(Err(e)) => return Err(e),
        Ok(Ok(false)) if head.len() > MAX_REQUEST => (
            431,
            "text/plain; charset=utf-8",
            "request too large\n".to_string(),
        ),
        Ok(Ok(false)) => return Ok(()),
        Ok(Ok(true)) => route(&head, scrape).await,
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Bad Request",
    };
    let head_only = head.starts_with(b"HEAD ");
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        response.extend_from_slice(body.as_bytes());
    }
    tokio::time::timeout(IO_TIMEOUT, async {
        stream.write_all(&response).await?;
        stream.shutdown().await?;
        // Closing with unread input would reset the connection, and the client could lose the
        // answer: read what an oversized request still sends, a bounded amount for a short while.
        if status == 431 {
            let mut rest = (&mut stream).take(DRAIN_AT_MOST);
            let _ = tokio::time::timeout(
                DRAIN_WITHIN,
                tokio::io::copy(&mut rest, &mut tokio::io::sink()),
            )
            .await;
        }
        Ok(())
    })
    .await
    .unwrap_or(Ok(()))
}

/// Status, content type and body for a request head.
async fn route(head: &[u8], scrape: &Scrape) -> (u16, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return (400, TEXT, "bad request\n".into());
    }
    if method != "GET" && method != "HEAD" {
        return (405, TEXT, "only GET\n".into());
    }
    let path = target.split('?').next().unwrap_or("");
    let health = scrape.metrics.health(scrape.unhealthy_after);
    match path {
        "/metrics" => match scrape.figures().await {
            Ok(figures) => (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                scrape.metrics.render(&figures, &health),
            ),
            Err(e) => (
                503,
                TEXT,
                format!("the state database cannot be read: {e}\n"),
            ),
        },
        "/health" => {
            let mut reasons = health.reasons;
            if let Err(e) = scrape.store.outbox_totals().await {
                reasons.push(format!("the state database cannot be read: {e}"));
            }
            if reasons.is_empty() {
                (200, TEXT, "ok\n".into())
            } else {
                (503, TEXT, reasons.join("\n") + "\n")
            }
        }
        _ => (404, TEXT, "not found: try /metrics or /health\n".into()),
    }
}

/// What the health endpoint answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthProbe {
    /// HTTP status (200 healthy, 503 not).
    pub status: u16,
    /// The body: `ok`, or the reasons.
    pub body: String,
}

/// Asks `url` (`http://host:port[/path]` or `host:port`; the path defaults to `/health`) once, within
/// a few seconds.
pub async fn probe_health(url: &str) -> Result<HealthProbe, MetricsServeError> {
    let fail = |detail: String| MetricsServeError::Probe {
        url: url.to_string(),
        detail,
    };
    let rest = url.strip_prefix("http://").unwrap_or(url);
    if rest.contains("://") {
        return Err(fail("only http:// URLs are served".into()));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/health"),
    };
    let exchange = async {
        let mut stream = TcpStream::connect(authority)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut answer = Vec::new();
        (&mut stream)
            .take(MAX_ANSWER as u64)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| fail(e.to_string()))?;
        Ok(answer)
    };
    let answer = tokio::time::timeout(IO_TIMEOUT, exchange)
        .await
        .map_err(|_| fail(format!("no answer within {}s", IO_TIMEOUT.as_secs())))??;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| fail("not an HTTP answer".into()))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| head.starts_with("HTTP/1."))
        .ok_or_else(|| fail("not an HTTP answer".into()))?;
    Ok(HealthProbe {
        status,
        body: body.to_string(),
    })
}
