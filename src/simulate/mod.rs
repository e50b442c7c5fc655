//! Vendor API simulators (axum, loopback only) that behave like the real APIs — auth, paging,
//! cursors, rate limits and faults — so tests, `secrelay demo` and benchmarks exercise the real
//! pipeline over real HTTP. Must not: be used by the pipeline itself; nothing outside tests, the
//! demo and benchmarks starts one.

pub mod code42;
pub mod hec;
pub mod jamf;
pub mod sophos;
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

/// Serves `app` on `listener`, over HTTPS when `tls` is given (for the TLS tests: private CAs,
/// client certificates). Runs until the returned task is aborted.
pub fn spawn_server(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(config) = tls else {
            let _ = axum::serve(listener, app).await;
            return;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                // A failed handshake (untrusted client, no client certificate) just ends the connection.
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
