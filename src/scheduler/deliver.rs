//! The delivery half: one loop per sink that reads the outbox after the sink's position, delivers,
//! and moves the position only after the receiver accepted.
//!
//! Must not: poll sources or format records itself (it runs the sink's encoder). Invariant: the
//! position moves in the same transaction that records the batch's dead letters, and only after
//! `Sink::deliver` (or `deliver_encoded`) returned `Ok` — to the end of the batch, or with a
//! `Shortfall` to the end of the part the receiver took; on stop the loop drains what it can
//! within the grace period and abandons the rest to the outbox. Every wait (linger, idle, backoff,
//! a retry after a store error, a batch in flight, the batch read ahead) races the stop, so a stop
//! ends the loop within the grace period. A daemon's sink never ends on its own: a receiver that
//! refuses it is asked again at the longest backoff. The next batch is read, and encoded by the
//! sink's encoder, while one is delivered and recorded; it is sent only after that one's position
//! is committed, so at most one batch is ever delivered and not yet recorded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use tokio::time::Instant;

use super::backoff::Backoff;
use super::{Context, Mode};
use crate::metrics::SinkMetrics;
use crate::sinks::{Delivered, Sink, SinkError};
use crate::store::OutboxRecord;

/// How long an idle sink waits for a commit notification before looking at the store again.
const IDLE_RECHECK: Duration = Duration::from_millis(500);

/// How a sink's last error starts when its receiver refused it (credentials, configuration):
/// `secrelay state` shows such a sink as refused, not merely failing.
pub const REFUSED: &str = "REFUSED by the receiver";

/// A sink taking full batches prunes the outbox at most this often: a prune that deletes is a
/// transaction of its own, with its own fsync, and at 2,000 records a batch it was one per batch.
/// A short batch (caught up) and the end of the loop prune at once.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// How long, once a batch is recorded, the loop waits for the read of the next batch it started
/// ahead before dropping that work and reading the batch again itself.
const READ_AHEAD_PATIENCE: Duration = Duration::from_millis(100);

/// Longest a sink may spend closing its connection at the end (the receiver reading what is left).
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// What one sink did during this run.
#[derive(Debug, Clone, Serialize)]
pub struct SinkReport {
    /// Sink name.
    pub sink: String,
    /// Records the receiver accepted.
    pub delivered: u64,
    /// Records the receiver accepted, per source id (their sum is `delivered`).
    pub delivered_by_source: std::collections::BTreeMap<String, u64>,
    /// Records it rejected (now in dead letters).
    pub dead_letters: u64,
    /// Records routed to it still waiting in the outbox when it stopped.
    pub backlog: i64,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
}

/// Delivers to `sink` the records of `sources`, in log order, until told to finish.
pub async fn run_sink<K: Sink>(
    ctx: Arc<Context>,
    mut sink: K,
    sources: Vec<String>,
    batch_size: usize,
    linger: Duration,
) -> SinkReport {
    let name = sink.name().to_string();
    let mut report = SinkReport {
        sink: name.clone(),
        delivered: 0,
        delivered_by_source: std::collections::BTreeMap::new(),
        dead_letters: 0,
        backlog: 0,
        error: None,
    };
    let metrics = ctx.metrics.sink(&name);
    let mut backoff = ctx.backoff();
    // Connect (or open) at start, so a receiver that cannot be reached is reported at once rather
    // than at the first batch; delivery retries it anyway.
    let checked = tokio::select! {
        checked = sink.check() => checked,
        _ = ctx.stop.cancelled() => Ok(()),
    };
    if let Err(e) = checked {
        tracing::warn!(sink = %name, "not reachable at start (records wait in the outbox): {e}");
    }
    let mut position = loop {
        match ctx.store.sink_position(&name).await {
            Ok(p) => break p,
            Err(e) => {
                tracing::error!(sink = %name, "{e}");
                if ctx.stop.is_cancelled() {
                    close(&mut sink, &name).await;
                    report.error = Some(format!("stopped before its position could be read: {e}"));
                    report.backlog = -1;
                    return report;
                }
                wait_to_retry(&ctx, backoff.next_delay(None), None).await;
            }
        }
    };
    // Set once the sink is told to finish: drain until empty or until this instant.
    let mut deadline: Option<Instant> = None;
    // The current short batch has already waited its linger.
    let mut lingered = false;
    // The batch after a position, read (and encoded, where the sink has an encoder) while the
    // batch before it was delivered and recorded.
    let mut read_ahead: Option<(i64, Vec<OutboxRecord>, Option<K::Encoded>)> = None;
    let encoder = sink.encoder();
    let mut pruned_at = Instant::now();
    // Records were pruned since free pages were last given back.
    let mut pruned_since_reclaim = false;
    // A batch was delivered since the last prune (a full last batch leaves the sink idle with its
    // chunks still in the outbox: they are pruned once it is quiet).
    let mut delivered_since_prune = false;
    loop {
        let finishing = ctx.stop.is_cancelled() || ctx.sources_done.is_cancelled();
        if finishing {
            let limit = if ctx.stop.is_cancelled() {
                grace(&ctx)
            } else {
                ctx.drain_within
            };
            let candidate = Instant::now() + limit;
            deadline = Some(deadline.map_or(candidate, |d| d.min(candidate)));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::warn!(sink = %name, "stopping with records still waiting (they stay in the outbox)");
            break;
        }
        // The batch read while the previous one was being delivered, if that one went whole (the
        // position is then where the read started); else read now.
        let ahead = read_ahead
            .take()
            .filter(|(after, b, _)| *after == position && !b.is_empty());
        let reading = Instant::now();
        let read_ahead_used = ahead.is_some();
        let (read, encoded) = match ahead {
            Some((_, b, encoded)) => (Ok(b), encoded),
            None => {
                let read = ctx
                    .store
                    .read_sink_batch(&name, position, &sources, batch_size)
                    .await;
                (read, None)
            }
        };
        let batch = match read {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(sink = %name, "{e}");
                wait_to_retry(&ctx, backoff.next_delay(None), deadline).await;
                continue;
            }
        };
        if batch.is_empty() {
            if finishing {
                break;
            }
            let notified = ctx.appended.notified();
            let quiet = tokio::select! {
                _ = notified => false,
                _ = tokio::time::sleep(IDLE_RECHECK) => true,
                _ = ctx.stop.cancelled() => false,
                _ = ctx.sources_done.cancelled() => false,
            };
            // Free pages go back to the file system once nothing new came for a while: while
            // sources are committing, the next pages reuse them, and moving pages to shrink the
            // file then only stalled those commits (measured: 0.5–0.9 s each time a fast
            // backfill's sink caught up).
            if quiet && delivered_since_prune {
                pruned_since_reclaim |= prune_passed(&ctx, &name, &sources).await > 0;
                delivered_since_prune = false;
            }
            if quiet && pruned_since_reclaim {
                reclaim(&ctx, &name).await;
                pruned_since_reclaim = false;
            }
            continue;
        }
        // A short batch may wait up to `linger` for more records, so a trickle of events does not
        // become a request each (HEC); never while finishing.
        if batch.len() < batch_size && !linger.is_zero() && !finishing && !lingered {
            lingered = true;
            tokio::select! {
                _ = tokio::time::sleep(linger) => {},
                _ = ctx.stop.cancelled() => {},
                _ = ctx.sources_done.cancelled() => {},
            }
            continue;
        }
        lingered = false;

        // A batch in flight when the stop comes gets the grace period, no more.
        let grace = grace(&ctx);
        let give_up = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => {
                    ctx.stop.cancelled().await;
                    tokio::time::sleep(grace).await;
                }
            }
        };
        // Read the next batch from the store, and encode it on a thread of its own, while this
        // one is delivered and recorded: the store's thread, the encoding and the receiver work
        // at once. Used only if this batch goes whole. A task of its own, so a slow read never
        // holds up recording a delivered batch (see `read_ahead_result`). A short batch is not
        // encoded ahead: it waits its linger and is read again.
        let last_seq = batch.last().map_or(position, |r| r.seq);
        let read_done = Arc::new(AtomicBool::new(false));
        let next = tokio::spawn({
            let (store, name, sources) = (ctx.store.clone(), name.clone(), sources.clone());
            let (encoder, read_done) = (encoder.clone(), read_done.clone());
            async move {
                let next = store
                    .read_sink_batch(&name, last_seq, &sources, batch_size)
                    .await
                    .ok()?;
                read_done.store(true, Ordering::Release);
                let worth_encoding =
                    !next.is_empty() && (next.len() >= batch_size || linger.is_zero());
                match encoder {
                    Some(encode) if worth_encoding => tokio::task::spawn_blocking(move || {
                        let encoded = encode(&next);
                        (next, Some(encoded))
                    })
                    .await
                    .ok(),
                    _ => Some((next, None)),
                }
            }
        });
        let mut next = AbortOnDrop(next);
        let read_ms = reading.elapsed().as_millis() as u64;
        let delivering = Instant::now();
        let delivered = tokio::select! {
            r = async {
                match encoded {
                    Some(bytes) => sink.deliver_encoded(&batch, bytes).await,
                    None => sink.deliver(&batch).await,
                }
            } => r,
            _ = give_up => {
                tracing::warn!(sink = %name, "grace period over with a batch in flight; it will be sent again");
                break;
            }
        };
        // The receiver took a leading part of the batch and failed the rest (HEC: the requests before
        // a 503): that part counts as delivered, so a retry re-sends only the rest; the failure is
        // then handled as if the whole batch had failed.
        let delivered = match delivered {
            Ok(Delivered {
                rejected,
                shortfall: Some(shortfall),
            }) => {
                let accepted = shortfall.accepted.min(batch.len());
                if accepted > 0 {
                    // It is up, if intermittently: the next retry need not wait longer.
                    backoff.reset();
                    let rejected = rejected
                        .into_iter()
                        .filter(|(i, _)| *i < accepted)
                        .collect();
                    match record_accepted(
                        &ctx,
                        &name,
                        &batch[..accepted],
                        rejected,
                        &mut backoff,
                        &mut report,
                    )
                    .await
                    {
                        Ok(advanced) => position = advanced.unwrap_or(position),
                        Err(Abandoned) => break,
                    }
                }
                Err(shortfall.error)
            }
            other => other,
        };
        match delivered {
            Ok(outcome) => {
                backoff.reset();
                report.error = None;
                let deliver_ms = delivering.elapsed().as_millis() as u64;
                let recording = Instant::now();
                match record_accepted(
                    &ctx,
                    &name,
                    &batch,
                    outcome.rejected,
                    &mut backoff,
                    &mut report,
                )
                .await
                {
                    Ok(advanced) => position = advanced.unwrap_or(position),
                    Err(Abandoned) => break,
                }
                let record_ms = recording.elapsed().as_millis() as u64;
                read_ahead = read_ahead_result(&ctx, &mut next, &read_done)
                    .await
                    .map(|(b, encoded)| (last_seq, b, encoded));
                tracing::debug!(sink = %name, records = batch.len(), read_ahead = read_ahead_used,
                    read_ms, deliver_ms, record_ms, "batch delivered");
                delivered_since_prune = true;
                if batch.len() < batch_size || pruned_at.elapsed() >= PRUNE_EVERY {
                    pruned_since_reclaim |= prune_passed(&ctx, &name, &sources).await > 0;
                    pruned_at = Instant::now();
                    delivered_since_prune = false;
                }
            }
            Err(e @ SinkError::Fatal { .. }) if ctx.mode != Mode::Daemon => {
                // A one-shot run reports the refusal and ends; the records wait for the daemon.
                tracing::error!(sink = %name, "{e}; its records wait in the outbox");
                note_refused(&ctx, &name, &metrics, &e, &mut report).await;
                break;
            }
            Err(e @ SinkError::Fatal { .. }) => {
                // The daemon never gives a sink up: credentials get fixed, proxies come back. It
                // asks again at the longest backoff, loudly each time, and the sources routed to
                // it pause once its backlog reaches its share of the outbox cap.
                let delay = Duration::from_secs_f64(ctx.timing.backoff_max_secs);
                tracing::error!(sink = %name, retry_in_secs = delay.as_secs(),
                    "{e}; the receiver refuses this sink (check its credentials, URL or proxy); its records wait in the outbox and it is tried again");
                note_refused(&ctx, &name, &metrics, &e, &mut report).await;
                wait_to_retry(&ctx, delay, deadline).await;
            }
            Err(e @ SinkError::Unavailable { .. }) => {
                let retry_after = match &e {
                    SinkError::Unavailable { retry_after, .. } => *retry_after,
                    SinkError::Fatal { .. } => None,
                };
                let delay = backoff.next_delay(retry_after);
                tracing::warn!(sink = %name, retry_in_ms = delay.as_millis() as u64, "delivery failed: {e}");
                metrics.record_failure();
                let _ = ctx
                    .store
                    .record_sink_error(&name, &e.to_string(), Utc::now())
                    .await;
                wait_to_retry(&ctx, delay, deadline).await;
            }
        }
    }
    // Pruned rows leave free pages: give them back so a drained backlog shrinks the file.
    if prune_passed(&ctx, &name, &sources).await > 0 || pruned_since_reclaim {
        reclaim(&ctx, &name).await;
    }
    close(&mut sink, &name).await;
    report.backlog = ctx
        .store
        .sink_backlog(&name, position, &sources)
        .await
        .unwrap_or(-1);
    if ctx.mode != Mode::Daemon || report.backlog > 0 {
        tracing::info!(sink = %name, delivered = report.delivered, backlog = report.backlog, "sink finished");
    }
    report
}

/// Records that the receiver refused the sink: in the metrics, in `state` (as REFUSED) and in the
/// run's report.
async fn note_refused(
    ctx: &Context,
    name: &str,
    metrics: &SinkMetrics,
    e: &SinkError,
    report: &mut SinkReport,
) {
    metrics.record_failure();
    let _ = ctx
        .store
        .record_sink_error(name, &format!("{REFUSED}: {e}"), Utc::now())
        .await;
    report.error = Some(e.to_string());
}

/// How long a stop lets the loop go on: the grace period, or less when draining must end sooner.
fn grace(ctx: &Context) -> Duration {
    Duration::from_secs_f64(ctx.timing.shutdown_grace_secs).min(ctx.drain_within)
}

/// Waits `delay` before trying again, never past `deadline`; before a stop, the stop cuts the wait
/// short (the loop then sets its deadline to the grace period and tries within it).
async fn wait_to_retry(ctx: &Context, delay: Duration, deadline: Option<Instant>) {
    let wake = Instant::now() + delay;
    let wake = deadline.map_or(wake, |d| d.min(wake));
    tokio::select! {
        _ = tokio::time::sleep_until(wake) => {},
        _ = ctx.stop.cancelled(), if deadline.is_none() => {},
    }
}

/// Ends the sink's connection, giving up after [`CLOSE_WITHIN`].
async fn close<K: Sink>(sink: &mut K, name: &str) {
    if tokio::time::timeout(CLOSE_WITHIN, sink.close())
        .await
        .is_err()
    {
        tracing::warn!(sink = %name, "closing the connection took too long; abandoned");
    }
}

/// What the task reading (and encoding) the next batch ahead gave: waited for at most
/// [`READ_AHEAD_PATIENCE`] while its read is under way, since a busy store must not hold up the
/// next delivery, and, once the batch was read, until its encoding is done (encoding it again
/// here would cost as much); never past a stop. `None`: read the batch again.
async fn read_ahead_result<T>(
    ctx: &Context,
    next: &mut AbortOnDrop<Option<T>>,
    read_done: &AtomicBool,
) -> Option<T> {
    let wait = async {
        match tokio::time::timeout(READ_AHEAD_PATIENCE, &mut next.0).await {
            Ok(joined) => joined.ok().flatten(),
            Err(_) if read_done.load(Ordering::Acquire) => (&mut next.0).await.ok().flatten(),
            Err(_) => None,
        }
    };
    tokio::select! {
        biased;
        r = wait => r,
        _ = ctx.stop.cancelled() => None,
    }
}

/// A task aborted when its handle is dropped (a read-ahead nobody will use). Work it handed to
/// the blocking pool (an encoding) runs to its end; only its result is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The store could not record a delivered batch before the grace period ran out: the loop ends and
/// the batch goes again at the next start (the one in-flight batch the duplicate bound allows).
struct Abandoned;

/// Records that the receiver took `accepted` (the batch or a leading part of it, in log order): moves
/// the position to its last record in one transaction with its dead letters (the loop prunes the
/// outbox after, see [`PRUNE_EVERY`]).
/// Returns the new position (`None` when `accepted` is empty). The advance is retried until the
/// store takes it (the receiver has these records); after a stop, only within the grace period.
async fn record_accepted(
    ctx: &Context,
    name: &str,
    accepted: &[OutboxRecord],
    rejected: Vec<(usize, String)>,
    backoff: &mut Backoff,
    report: &mut SinkReport,
) -> Result<Option<i64>, Abandoned> {
    let Some(last) = accepted.last().map(|r| r.seq) else {
        return Ok(None);
    };
    let rejected: Vec<_> = rejected
        .into_iter()
        .filter_map(|(i, reason)| accepted.get(i).map(|r| (r.clone(), reason)))
        .collect();
    for (record, reason) in &rejected {
        tracing::warn!(sink = %name, source = %record.source, event_id = %record.event_id,
            "receiver rejected a record; kept as a dead letter: {reason}");
    }
    let taken = (accepted.len() - rejected.len()) as u64;
    // Set once a stop is seen: the advance is retried until then, no longer.
    let mut give_up: Option<Instant> = None;
    loop {
        match ctx
            .store
            .advance_sink(name, last, taken, &rejected, Utc::now())
            .await
        {
            Ok(()) => break,
            Err(e) => {
                tracing::error!(sink = %name, "{e}");
                if ctx.stop.is_cancelled() {
                    let limit = *give_up.get_or_insert_with(|| Instant::now() + grace(ctx));
                    if Instant::now() >= limit {
                        tracing::warn!(sink = %name, "stopping before the store recorded a delivered batch; it will be sent again");
                        return Err(Abandoned);
                    }
                }
                wait_to_retry(ctx, backoff.next_delay(None), give_up).await;
            }
        }
    }
    report.delivered += taken;
    for r in accepted {
        *report
            .delivered_by_source
            .entry(r.source.clone())
            .or_default() += 1;
    }
    for (r, _) in &rejected {
        if let Some(n) = report.delivered_by_source.get_mut(&r.source) {
            *n = n.saturating_sub(1);
        }
    }
    report.dead_letters += rejected.len() as u64;
    ctx.metrics
        .sink(name)
        .record_accepted(taken, rejected.len() as u64);
    // What the receiver said shows in `state` as the sink's last error (a configuration that makes
    // every record refused — iTop without `org_id` — must be seen there, not only in the log).
    if let Some((_, reason)) = rejected.last() {
        let said = format!(
            "{} record(s) rejected by the receiver, kept as dead letters; the last: {reason}",
            rejected.len()
        );
        if let Err(e) = ctx.store.record_sink_error(name, &said, Utc::now()).await {
            tracing::warn!(sink = %name, "{e}");
        }
    }
    ctx.note_delivered(name, accepted.iter().map(|r| r.record.len() as i64).sum());
    Ok(Some(last))
}

/// Deletes the outbox chunks every sink routed to them has passed, and the dead letters re-queued
/// for this sink that it passed. Returns the records deleted. A failure is logged: the next prune
/// takes what this one left.
async fn prune_passed(ctx: &Context, name: &str, sources: &[String]) -> u64 {
    let mut pruned = 0;
    for source in sources {
        let sinks = ctx
            .sinks_of_source
            .get(source)
            .map(Vec::as_slice)
            .unwrap_or_default();
        match ctx.store.prune_outbox(source, sinks).await {
            Ok(n) => pruned += n,
            Err(e) => tracing::warn!(sink = %name, "{e}"),
        }
    }
    match ctx.store.prune_requeued(name).await {
        Ok(n) => pruned += n,
        Err(e) => tracing::warn!(sink = %name, "{e}"),
    }
    pruned
}

/// Gives the free pages that pruned records left back to the file system.
async fn reclaim(ctx: &Context, name: &str) {
    if let Err(e) = ctx.store.reclaim_free_pages().await {
        tracing::warn!(sink = %name, "{e}");
    }
}
