//! Process signals: SIGTERM/SIGINT stop the pipeline gracefully (a second one exits at once);
//! SIGHUP runs the caller's reload (the binary re-reads the log level) and needs nothing else: file
//! sinks open their path anew for every batch, so after logrotate renames a file the next batch
//! goes to a new file at the configured path.
//!
//! Must not: do work itself beyond cancelling the stop token. Invariant: the first stop signal never
//! kills the process — in-flight commits finish and sinks flush within the grace period.

use futures_core::Stream;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;
use tokio_util::sync::CancellationToken;

/// Exit status for a second stop signal (128 + SIGINT, as shells report it).
pub const FORCED_EXIT: i32 = 130;

/// Installs the handlers and returns the token the first SIGTERM/SIGINT cancels.
pub fn install() -> std::io::Result<CancellationToken> {
    install_with_hangup(|| {})
}

/// As [`install`], and SIGHUP calls `on_hangup` (on the signal task: keep it short).
pub fn install_with_hangup(
    on_hangup: impl Fn() + Send + 'static,
) -> std::io::Result<CancellationToken> {
    let stop = CancellationToken::new();
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let token = stop.clone();
    tokio::spawn(async move {
        while let Some(signal) = next(&mut signals).await {
            match signal {
                SIGHUP => {
                    tracing::info!("SIGHUP: file sinks reopen their path with the next batch");
                    on_hangup();
                }
                _ if token.is_cancelled() => {
                    tracing::warn!(
                        "second stop signal: exiting now (undelivered records stay in the outbox)"
                    );
                    std::process::exit(FORCED_EXIT);
                }
                _ => {
                    tracing::info!("stop signal: finishing in-flight work and flushing sinks");
                    token.cancel();
                }
            }
        }
    });
    Ok(stop)
}

async fn next(signals: &mut Signals) -> Option<i32> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *signals).poll_next(cx)).await
}
