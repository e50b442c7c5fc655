//! HEC indexer acknowledgement: the sink's channel, acks awaited after a pass, pending acks kept in
//! the ledger across a restart, and what happens when acks do not come (reference/sink-protocols.md §3).
//!
//! Owns: the ack endpoint queries and the `ack_resends` bound. Must not: send events (see
//! `requests`) or touch the store beyond this sink's [`HecLedger`](crate::store::HecLedger).
//! Invariant: a request counts as delivered once its ack is true, or, after `ack_resends` misses in a
//! row, on its code 0 alone with an ERROR saying so; an ack endpoint answering 4xx is trusted as
//! Vector does.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{HecSink, REPLY_MAX_BYTES};
use crate::net;
use crate::sinks::SinkError;
use crate::store::OutboxRecord;

#[derive(Deserialize)]
struct AckReply {
    #[serde(default)]
    acks: HashMap<String, bool>,
}

fn new_channel() -> String {
    let a = fastrand::u64(..);
    let b = fastrand::u64(..);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

impl HecSink {
    pub(super) async fn channel(&mut self) -> Result<String, SinkError> {
        if let Some(c) = &self.channel {
            return Ok(c.clone());
        }
        let channel = self
            .ledger
            .channel(&new_channel())
            .await
            .map_err(|e| self.unavailable(e.to_string(), None))?;
        self.channel = Some(channel.clone());
        Ok(channel)
    }

    /// Keeps the ack of the request ending at `batch[last]` (and the records refused so far) in
    /// the store, so that a restart asks about it instead of sending the request again.
    pub(super) async fn remember_ack(
        &self,
        channel: &str,
        ack: u64,
        batch: &[OutboxRecord],
        last: usize,
        rejected: &[(usize, String)],
    ) {
        let refused: Vec<(i64, String)> = rejected
            .iter()
            .filter_map(|(i, reason)| batch.get(*i).map(|r| (r.seq, reason.clone())))
            .collect();
        let Some(last_seq) = batch.get(last).map(|r| r.seq) else {
            return;
        };
        if let Err(e) = self
            .ledger
            .save_pending(channel, &[ack], last_seq, &refused, chrono::Utc::now())
            .await
        {
            // Only a restart needs it; without it, a restart sends the request again.
            tracing::warn!(sink = %self.name, "{e}");
        }
    }

    /// After a restart: the requests of this batch sent before it whose acks have come count as
    /// delivered. Returns how many leading records of `batch` they cover, and adds the records
    /// refused among them to `rejected`. Forgets the pending acks either way.
    pub(super) async fn resume(
        &self,
        channel: &str,
        batch: &[OutboxRecord],
        rejected: &mut Vec<(usize, String)>,
    ) -> Result<usize, SinkError> {
        let mut pending = self
            .ledger
            .pending_acks()
            .await
            .map_err(|e| self.unavailable(e.to_string(), None))?;
        if pending.is_empty() {
            return Ok(0);
        }
        let mut done = 0;
        if pending.iter().all(|(c, _, _)| c == channel) {
            let ids = pending.iter().map(|(_, id, _)| *id).collect();
            let acked = self.wait_for_acks(channel, ids).await;
            // Requests went out one after another: every record up to the end of the last
            // request of an all-acked run was handled (acked, or refused and kept below).
            pending.sort_by_key(|(_, _, last)| *last);
            let through = pending
                .iter()
                .take_while(|(_, id, _)| acked.contains(id))
                .last()
                .map(|(_, _, last)| *last);
            if let Some(through) = through {
                done = batch.partition_point(|r| r.seq <= through);
                let refused = self
                    .ledger
                    .pending_rejects()
                    .await
                    .map_err(|e| self.unavailable(e.to_string(), None))?;
                rejected.extend(refused.into_iter().filter_map(|(seq, reason)| {
                    batch
                        .iter()
                        .position(|r| r.seq == seq && seq <= through)
                        .map(|i| (i, reason))
                }));
                tracing::info!(sink = %self.name, records = done,
                    "acks of requests sent before the restart arrived; not sending them again");
            }
        }
        let _ = self.ledger.clear_pending().await;
        Ok(done)
    }

    /// Asks about `ids` until all are true or `ack_timeout_secs` passes; returns those that came
    /// true. An ack endpoint that refuses the query (4xx) cannot confirm anything: then, as
    /// Vector does, every id counts as acked on its request's code 0, with a warning.
    pub(super) async fn wait_for_acks(&self, channel: &str, mut ids: Vec<u64>) -> HashSet<u64> {
        let url = self.url("/services/collector/ack");
        let deadline = Instant::now() + Duration::from_secs_f64(self.settings.ack_timeout_secs);
        let mut acked = HashSet::new();
        loop {
            let request = self
                .http
                .post(&url)
                .query(&[("channel", channel)])
                .header("Authorization", format!("Splunk {}", self.token.expose()))
                .header("X-Splunk-Request-Channel", channel)
                .json(&serde_json::json!({"acks": ids}));
            if let Ok(response) = request.send().await {
                let status = response.status();
                if status.is_client_error() {
                    tracing::warn!(sink = %self.name, %status,
                        "the ack endpoint refuses queries; counting requests as delivered on their code 0 alone");
                    acked.extend(ids);
                    return acked;
                }
                let body = net::read_body(response, REPLY_MAX_BYTES).await;
                if let Ok(reply) = body
                    .map_err(|e| e.to_string())
                    .and_then(|b| serde_json::from_str::<AckReply>(&b).map_err(|e| e.to_string()))
                {
                    ids.retain(|id| {
                        let done = reply.acks.get(&id.to_string()).copied().unwrap_or(false);
                        if done {
                            acked.insert(*id);
                        }
                        !done
                    });
                }
            }
            if ids.is_empty() || Instant::now() >= deadline {
                return acked;
            }
            tokio::time::sleep(Duration::from_secs_f64(self.settings.ack_poll_secs)).await;
        }
    }

    /// The acks of requests from `unacked[0]` on did not come within `ack_timeout_secs`: how many
    /// leading records of the batch count as delivered. Sends them again (by not counting them)
    /// up to `ack_resends` times in a row, then trusts their code 0 and says so loudly.
    pub(super) async fn acks_missing(
        &mut self,
        batch: &[OutboxRecord],
        first: usize,
        done: usize,
    ) -> usize {
        let Some(seq) = batch.get(first).map(|r| r.seq) else {
            return done;
        };
        let misses = match self.ack_misses {
            Some((s, n)) if s == seq => n + 1,
            _ => 1,
        };
        if !self.acks_not_arriving && misses <= self.settings.ack_resends {
            tracing::warn!(sink = %self.name, attempt = misses, of = self.settings.ack_resends,
                "indexer acks did not arrive in time; sending the unacknowledged requests again");
            self.ack_misses = Some((seq, misses));
            return first;
        }
        let detail = format!(
            "indexer acks are not arriving (a load balancer without sticky sessions?): {} records \
             counted as delivered on HTTP 200 code 0 alone, without confirmation of indexing; \
             make the balancer sticky per channel, or set ack = false",
            done - first
        );
        if self.acks_not_arriving {
            tracing::warn!(sink = %self.name, "{detail}");
        } else {
            tracing::error!(sink = %self.name, "{detail}");
            let _ = self.ledger.record_error(&detail, chrono::Utc::now()).await;
        }
        self.acks_not_arriving = true;
        self.ack_misses = None;
        done
    }
}
