//! Vendor API simulators (axum, loopback only) that behave like the real APIs — auth, paging,
//! cursors, rate limits and faults — so tests, `secrelay demo` and benchmarks exercise the real
//! pipeline over real HTTP. Must not: be used by the pipeline itself; nothing outside tests, the
//! demo and benchmarks starts one.

pub mod code42;
pub mod hec;
pub mod itop;
pub mod jamf;
mod json_bytes;
pub mod sophos;
pub mod syslog;
pub mod tenable_sc;

use std::sync::Arc;

use tokio::net::TcpListener;

/// splitmix64: a fixed, portable mixing function; every simulator derives its data from it, so
/// the same seed gives the same records on every machine.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// RFC 3339 UTC with milliseconds, as the vendor APIs write their times.
pub(crate) fn iso_millis(ms: i64) -> String {
    chrono::TimeZone::timestamp_millis_opt(&chrono::Utc, ms)
        .single()
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Bearer tokens a simulator issued: valid for a lifetime, and all refused at once by `expire_all`
/// (as if the server dropped them).
#[derive(Default)]
pub(crate) struct TokenLedger {
    generation: std::sync::atomic::AtomicU64,
    issued: std::sync::Mutex<std::collections::HashMap<String, (u64, std::time::Instant)>>,
}

impl TokenLedger {
    /// Records `token` as issued now.
    pub(crate) fn issue(&self, token: &str) {
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut issued) = self.issued.lock() {
            issued.insert(token.to_string(), (generation, std::time::Instant::now()));
        }
    }

    /// Refuses every token issued so far.
    pub(crate) fn expire_all(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the request's `Authorization: Bearer` token was issued, not expired and younger
    /// than `lifetime_secs`.
    pub(crate) fn accepts(&self, headers: &axum::http::HeaderMap, lifetime_secs: u64) -> bool {
        let Some(token) = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let Ok(issued) = self.issued.lock() else {
            return false;
        };
        issued
            .get(token)
            .is_some_and(|(g, at)| *g == generation && at.elapsed().as_secs() < lifetime_secs)
    }
}

/// A simulator's server task; dropping it stops the server and ends every connection it has
/// open, as a receiver that stops does (a task per connection would outlive the accept loop).
pub struct ServerTask {
    task: tokio::task::JoinHandle<()>,
    /// Asks the accept loop of [`spawn_server`] to end its connections and return; `None` for a
    /// server of its own loop, which is aborted.
    stop: Option<tokio_util::sync::CancellationToken>,
}

impl ServerTask {
    /// A server that runs its own accept loop in `task`.
    pub(crate) fn of_task(task: tokio::task::JoinHandle<()>) -> ServerTask {
        ServerTask { task, stop: None }
    }

    /// Stops the server and waits until its port is closed and every connection task has ended,
    /// so that nothing more is accepted after this returns.
    pub async fn stop(mut self) {
        match &self.stop {
            Some(stop) => stop.cancel(),
            None => self.task.abort(),
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `app` on `listener`, over HTTPS when `tls` is given (for the TLS tests: private CAs,
/// client certificates), until the returned task is dropped. Every connection ends, with no
/// answer to a request under way, when the task is dropped or `close_all` is notified.
pub fn spawn_server(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> ServerTask {
    spawn_server_closable(listener, app, tls, Arc::new(tokio::sync::Notify::new()))
}

/// [`spawn_server`], with every open connection ended (no answer sent) each time `close_all` is
/// notified: a receiver that crashes in the middle of requests.
pub fn spawn_server_closable(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    close_all: Arc<tokio::sync::Notify>,
) -> ServerTask {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let stop = tokio_util::sync::CancellationToken::new();
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        // Owned by this task: aborting it drops the set, which aborts every connection.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                () = stopped.cancelled() => {
                    connections.shutdown().await;
                    return;
                }
                accepted = listener.accept() => accepted,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let Ok((tcp, _)) = accepted else { continue };
            let (acceptor, app, close_all) = (acceptor.clone(), app.clone(), close_all.clone());
            connections.spawn(async move {
                let closed = close_all.notified();
                match acceptor {
                    None => tokio::select! {
                        () = serve_connection(tcp, app) => {}
                        () = closed => {}
                    },
                    // A failed handshake (untrusted client, no client certificate) just ends the
                    // connection.
                    Some(acceptor) => tokio::select! {
                        () = async {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                serve_connection(stream, app).await;
                            }
                        } => {}
                        () = closed => {}
                    },
                }
            });
        }
    });
    ServerTask {
        task,
        stop: Some(stop),
    }
}

/// Serves HTTP/1.1 on one connection until the client closes it.
async fn serve_connection<S>(stream: S, app: axum::Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
}
