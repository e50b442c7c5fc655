//! Splunk HTTP Event Collector sink: concatenated JSON envelopes to `/services/collector/event`,
//! bounded by request size, gzip-compressed, with Splunk's response codes handled as documented
//! and optional indexer acknowledgement (reference/sink-protocols.md §3).
//!
//! Owns: the sink's setup and a batch from first request to the [`Delivered`] it reports;
//! envelopes with their routes, the cut into requests and their (gzip) bodies are in `bodies`
//! (pure, so the delivery loop encodes the next batch ahead), requests, replies and bad-event
//! isolation in `requests`, the channel and the ack wait in `acks`. Must not: build the envelope
//! bytes itself (see `encode::hec`), or touch the outbox; its only state in the store is
//! its channel and the acks it waits for, through a [`HecLedger`] scoped to this sink. Invariants:
//! - Requests of a batch go one at a time, in order, so what HEC took is always a leading part of
//!   the batch. A request that fails (503, timeout, 401...) after earlier ones got code 0 (and,
//!   with acks on, their acks) ends the batch with a [`Shortfall`]: the delivery loop keeps the
//!   progress of that part and sends only the rest again, so an intermittent outage re-indexes
//!   nothing (without acks a 503 means nothing of that request was taken). A 503 that carries
//!   `invalid-event-number` is still treated as taking nothing of its request (at-least-once; Splunk
//!   does not document it and Vector ignores it).
//! - Bad data (400, codes 6, 12, 13, 15) names the refused event by its zero-based place in the
//!   request (`invalid-event-number`). HEC indexed the events before it and dropped it and the rest
//!   of the request (not in Splunk's docs; as reported in
//!   opentelemetry-collector-contrib#36113 and vector#11434): exactly that event
//!   becomes a dead letter and the events after it are sent again. With acks on, that leading part
//!   has no ack id to ask about, so it counts on the 400 alone. Without a usable number the request
//!   is halved until the bad event stands alone, assuming nothing of it was taken.
//! - With acks on, a request counts once its ack is true. Acks are awaited up to
//!   `ack_timeout_secs`; requests from the first unacknowledged one on are then sent again, at most
//!   `ack_resends` times in a row (default 1). After that the sink trusts their HTTP 200 code 0 and
//!   says so loudly (an ERROR, and the sink's last error in `state`), and from then on does not
//!   re-send on an ack timeout until a batch is acked whole again. Why: behind a load balancer
//!   without sticky sessions acks never come although the events are indexed, and re-sending
//!   forever floods duplicates and stops delivery. Vector never re-sends on a missing ack (after
//!   `retry_limit` = 30 queries, 10 s apart, it gives the events up as rejected, and it trusts the
//!   200 when the ack endpoint answers 4xx); secrelay promises no loss, so it re-sends once — that
//!   recovers a batch an indexer really lost — and bounds the duplicates to one batch per outage
//!   of acks. An ack endpoint answering 4xx is trusted as Vector does.
//! - After a restart, pending acks (one per request, with the last record it carried) are asked
//!   about first; the leading requests whose acks came are not sent again, and the records refused
//!   in them are still dead-lettered.
//! - 401/403 stop the sink loudly with its records still in the outbox.

mod acks;
mod bodies;
mod requests;

use std::sync::Arc;
use std::time::Duration;

use crate::mapping::Mappings;
use crate::net::{self, TlsOptions};
use crate::settings::{Secret, SetupError, SplunkHecSettings};
use crate::sinks::{BatchEncoder, Delivered, Shortfall, Sink, SinkError};
use crate::store::{HecLedger, OutboxRecord, Store};
pub use bodies::EncodedBatch;
use bodies::HecEncoder;
use requests::Pass;

/// The largest HEC reply read: replies are a few hundred bytes of JSON, and a proxy or broken
/// server that answers with more is not read into memory.
const REPLY_MAX_BYTES: u64 = 1024 * 1024;

/// The Splunk HEC sink.
pub struct HecSink {
    name: String,
    settings: SplunkHecSettings,
    http: reqwest::Client,
    token: Secret,
    /// Envelopes and request bodies; shared with the delivery loop's encoding ahead.
    encoder: Arc<HecEncoder>,
    /// Its channel, pending acks and errors in the store, and nothing else there.
    ledger: HecLedger,
    channel: Option<String>,
    /// The first record whose acks did not come, and how many times that happened in a row.
    ack_misses: Option<(i64, u32)>,
    /// Acks stopped arriving (a batch ran out of `ack_resends`): a timeout now trusts code 0 at
    /// once instead of sending again, until a batch is acked whole.
    acks_not_arriving: bool,
}

impl HecSink {
    /// A sink for `settings` (token resolved); `mappings` gives each source's default sourcetype.
    /// Of `store`, it keeps only this sink's [`HecLedger`]: its channel, pending acks and delivery
    /// errors. Fails (naming the config key) when a TLS file cannot be used or the token was not
    /// resolved.
    pub fn new(
        name: &str,
        settings: SplunkHecSettings,
        http_settings: &crate::settings::HttpSettings,
        mappings: impl Into<Mappings>,
        store: Store,
    ) -> Result<Self, SetupError> {
        let at = format!("sinks.{name}");
        let token = settings.credentials(&at)?;
        let tls = TlsOptions::server(settings.ca_file.clone(), settings.tls_verify);
        let client = net::endpoint_client(
            http_settings,
            &tls,
            settings.timeout_secs,
            &at,
            &settings.url,
        )?;
        let encoder = HecEncoder {
            host: settings
                .host
                .clone()
                .unwrap_or_else(crate::sinks::syslog::local_hostname),
            settings: settings.clone(),
            mappings: mappings.into(),
        };
        Ok(HecSink {
            name: name.to_string(),
            token,
            encoder: Arc::new(encoder),
            settings,
            http: client,
            ledger: HecLedger::new(store, name),
            channel: None,
            ack_misses: None,
            acks_not_arriving: false,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.settings.url.trim_end_matches('/'))
    }

    fn unavailable(&self, detail: String, retry_after: Option<Duration>) -> SinkError {
        SinkError::Unavailable {
            sink: self.name.clone(),
            detail,
            retry_after,
        }
    }

    fn fatal(&self, detail: String) -> SinkError {
        SinkError::Fatal {
            sink: self.name.clone(),
            detail,
        }
    }

    /// The envelope of one record, with its route's index, sourcetype, host and source.
    pub fn envelope(&self, record: &OutboxRecord, out: &mut Vec<u8>) {
        self.encoder.envelope(record, out);
    }
}

impl Sink for HecSink {
    /// Envelopes and request bodies.
    type Encoded = EncodedBatch;

    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&mut self, batch: &[OutboxRecord]) -> Result<Delivered, SinkError> {
        self.deliver_batch(batch, None).await
    }

    fn encoder(&self) -> Option<BatchEncoder<EncodedBatch>> {
        let encoder = Arc::clone(&self.encoder);
        Some(Arc::new(move |batch: &[OutboxRecord]| {
            encoder.encode(batch)
        }))
    }

    async fn deliver_encoded(
        &mut self,
        batch: &[OutboxRecord],
        encoded: EncodedBatch,
    ) -> Result<Delivered, SinkError> {
        self.deliver_batch(batch, Some(encoded)).await
    }

    async fn check(&mut self) -> Result<(), SinkError> {
        let url = self.url("/services/collector/health");
        let request = self
            .http
            .get(&url)
            .header("Authorization", format!("Splunk {}", self.token.expose()));
        let response = net::send(request, &url)
            .await
            .map_err(|e| self.unavailable(e.to_string(), None))?;
        let status = response.status();
        let body = net::read_body(response, REPLY_MAX_BYTES)
            .await
            .unwrap_or_default();
        if status.is_success() {
            Ok(())
        } else {
            Err(self.unavailable(
                format!(
                    "{url}: HTTP {status}: {}",
                    body.chars().take(200).collect::<String>()
                ),
                None,
            ))
        }
    }
}

impl HecSink {
    /// Delivers `batch`, with its envelopes and request bodies when the delivery loop encoded
    /// them ahead (`None`: made here).
    async fn deliver_batch(
        &mut self,
        batch: &[OutboxRecord],
        encoded: Option<EncodedBatch>,
    ) -> Result<Delivered, SinkError> {
        if batch.is_empty() {
            return Ok(Delivered::default());
        }
        let channel = if self.settings.ack {
            Some(self.channel().await?)
        } else {
            None
        };
        let mut pass = Pass {
            done: 0,
            rejected: Vec::new(),
            unacked: Vec::new(),
            error: None,
        };
        if let Some(channel) = &channel {
            pass.done = self.resume(channel, batch, &mut pass.rejected).await?;
        }
        if pass.done < batch.len() {
            let encoded = encoded.unwrap_or_else(|| EncodedBatch {
                sizes: self.encoder.sizes(batch),
                bodies: Vec::new(),
            });
            self.send(batch, encoded, channel.as_deref(), &mut pass)
                .await;
        }
        // Records before `accepted` are with the receiver: with acks, up to the first request
        // whose ack did not come.
        let mut accepted = pass.done;
        if let (Some(channel), false) = (&channel, pass.unacked.is_empty()) {
            let ids = pass.unacked.iter().map(|u| u.ack).collect();
            let acked = self.wait_for_acks(channel, ids).await;
            match pass.unacked.iter().find(|u| !acked.contains(&u.ack)) {
                None => {
                    self.ack_misses = None;
                    self.acks_not_arriving = false;
                }
                Some(missing) => {
                    accepted = self.acks_missing(batch, missing.start, pass.done).await;
                    if accepted < pass.done && pass.error.is_none() {
                        pass.error = Some(self.unavailable(
                            format!(
                                "indexer acks did not arrive within {} s",
                                self.settings.ack_timeout_secs
                            ),
                            None,
                        ));
                    }
                }
            }
            let _ = self.ledger.clear_pending().await;
        }
        let rejected = pass.rejected;
        match pass.error {
            None => Ok(Delivered {
                rejected,
                shortfall: None,
            }),
            Some(error) if accepted == 0 => Err(error),
            Some(error) => Ok(Delivered {
                rejected,
                shortfall: Some(Shortfall { accepted, error }),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
