//! Splunk HTTP Event Collector sink: concatenated JSON envelopes to `/services/collector/event`,
//! bounded by request size, gzip-compressed, with Splunk's response codes handled as documented
//! and optional indexer acknowledgement (reference/sink-protocols.md §3).
//!
//! Owns: requests, response handling, bad-event isolation and the ack wait. Must not: build the
//! envelope bytes itself (see `encode::hec`), or touch the outbox; its only state in the store is
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

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde::Deserialize;

use crate::encode::hec::{write_event, HecMeta};
use crate::mapping::Mappings;
use crate::net::{self, parse_retry_after, TlsOptions};
use crate::settings::{Secret, SetupError, SplunkHecSettings};
use crate::sinks::{Delivered, Shortfall, Sink, SinkError};
use crate::store::{HecLedger, OutboxRecord, Store};

/// The largest HEC reply read: replies are a few hundred bytes of JSON, and a proxy or broken
/// server that answers with more is not read into memory.
const REPLY_MAX_BYTES: u64 = 1024 * 1024;

#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    text: String,
    #[serde(default)]
    code: i64,
    #[serde(rename = "ackId", default)]
    ack_id: Option<u64>,
    /// Zero-based place in the request of the event HEC refused (400 codes 6, 12, 13, 15).
    #[serde(rename = "invalid-event-number", default)]
    invalid_event: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct AckReply {
    #[serde(default)]
    acks: HashMap<String, bool>,
}

/// Why one request failed.
enum PostError {
    /// HEC refused the data itself (400 codes 6, 12, 13, 15): isolate and dead-letter.
    BadData {
        /// What HEC said.
        reason: String,
        /// `invalid-event-number`: the refused event's place in the request, when given.
        invalid: Option<usize>,
    },
    /// Anything else: retry, or stop.
    Sink(SinkError),
}

/// A request that got code 0 and waits for its indexer ack.
struct Unacked {
    ack: u64,
    /// Index in the batch of its first record.
    start: usize,
}

/// How far one pass over a batch got.
struct Pass {
    /// Records `[0, done)` of the batch are handled: taken with code 0 (acked or not yet), or
    /// refused as invalid (in `rejected`).
    done: usize,
    /// Refused records, by index in the batch, with what HEC said.
    rejected: Vec<(usize, String)>,
    /// Requests of this pass waiting for their ack, in order.
    unacked: Vec<Unacked>,
    /// Why the pass stopped before the end of the batch.
    error: Option<SinkError>,
}

/// The Splunk HEC sink.
pub struct HecSink {
    name: String,
    settings: SplunkHecSettings,
    http: reqwest::Client,
    token: Secret,
    host: String,
    /// Source id → its vendor's mapping (the default sourcetype).
    mappings: Mappings,
    /// Its channel, pending acks and errors in the store, and nothing else there.
    ledger: HecLedger,
    channel: Option<String>,
    /// The first record whose acks did not come, and how many times that happened in a row.
    ack_misses: Option<(i64, u32)>,
    /// Acks stopped arriving (a batch ran out of `ack_resends`): a timeout now trusts code 0 at
    /// once instead of sending again, until a batch is acked whole.
    acks_not_arriving: bool,
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
        if !settings.tls_verify {
            tracing::warn!(sink = %name, url = %settings.url,
                "TLS certificate verification is OFF for this sink (tls_verify = false)");
        }
        let tls = TlsOptions {
            ca_file: settings.ca_file.clone(),
            client_cert: None,
            verify: settings.tls_verify,
        };
        let client = net::http_client_with_tls(
            http_settings,
            &tls,
            Duration::from_secs_f64(settings.timeout_secs),
            &at,
        )
        .map_err(|e| SetupError::keyed(&at, e))?;
        Ok(HecSink {
            name: name.to_string(),
            token,
            host: settings
                .host
                .clone()
                .unwrap_or_else(crate::sinks::syslog::local_hostname),
            settings,
            http: client,
            mappings: mappings.into(),
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
        let mut index = self.settings.index.as_deref();
        let mut sourcetype = None;
        let mut host = self.host.as_str();
        let mut source = None;
        // A route for the source applies first, then one for the source and stream on top.
        let routes = self
            .settings
            .routes
            .iter()
            .filter(|r| r.source == record.source);
        let (general, specific): (Vec<_>, Vec<_>) = routes.partition(|r| r.stream.is_none());
        for route in general.into_iter().chain(
            specific
                .into_iter()
                .filter(|r| r.stream.as_deref() == Some(record.stream.as_str())),
        ) {
            index = route.index.as_deref().or(index);
            sourcetype = route.sourcetype.as_deref().or(sourcetype);
            host = route.host.as_deref().unwrap_or(host);
            source = route.source_name.as_deref().or(source);
        }
        let default_type = self.mappings.of(&record.source).sourcetype(&record.stream);
        let default_source = format!("secrelay:{}", record.source);
        let meta = HecMeta {
            host,
            source: source.unwrap_or(&default_source),
            sourcetype: sourcetype.unwrap_or(&default_type),
            index,
        };
        write_event(record, &meta, out);
    }

    async fn channel(&mut self) -> Result<String, SinkError> {
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

    async fn post(
        &self,
        events: &[Vec<u8>],
        channel: Option<&str>,
    ) -> Result<Option<u64>, PostError> {
        let url = self.url("/services/collector/event");
        let body: Vec<u8> = events.concat();
        let mut request = self
            .http
            .post(&url)
            .header("Authorization", format!("Splunk {}", self.token.expose()))
            .header("Content-Type", "application/json");
        if let Some(c) = channel {
            request = request.header("X-Splunk-Request-Channel", c);
        }
        let request = if self.settings.gzip {
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::fast(),
            );
            let compressed = encoder.write_all(&body).and_then(|()| encoder.finish());
            match compressed {
                Ok(gz) => request.header("Content-Encoding", "gzip").body(gz),
                Err(_) => request.body(body),
            }
        } else {
            request.body(body)
        };
        let response = net::send(request, &url)
            .await
            .map_err(|e| PostError::Sink(self.unavailable(e.to_string(), None)))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        // An unreadable or oversized reply reads as empty: its status still decides.
        let text = net::read_body(response, REPLY_MAX_BYTES)
            .await
            .unwrap_or_default();
        let reply: Reply = serde_json::from_str(&text).unwrap_or(Reply {
            text: text.chars().take(200).collect(),
            code: -1,
            ack_id: None,
            invalid_event: None,
        });
        let said = format!("{url}: HTTP {status}, code {}: {}", reply.code, reply.text);
        match status {
            StatusCode::OK if reply.code == 0 => Ok(reply.ack_id),
            StatusCode::BAD_REQUEST if matches!(reply.code, 6 | 12 | 13 | 15) => {
                let invalid = reply
                    .invalid_event
                    .as_ref()
                    .and_then(serde_json::Value::as_u64)
                    .and_then(|n| usize::try_from(n).ok());
                Err(PostError::BadData {
                    reason: said,
                    invalid,
                })
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(PostError::Sink(
                self.fatal(format!("{said} (token refused or disabled)")),
            )),
            // Index, channel or ack settings the server refuses: a configuration error.
            StatusCode::BAD_REQUEST => Err(PostError::Sink(self.fatal(said))),
            s if s == StatusCode::TOO_MANY_REQUESTS
                || s == StatusCode::REQUEST_TIMEOUT
                || s.is_server_error() =>
            {
                Err(PostError::Sink(self.unavailable(said, retry_after)))
            }
            _ => Err(PostError::Sink(self.unavailable(said, retry_after))),
        }
    }

    /// Sends the records of `batch` from `pass.done` on, in requests of at most
    /// `max_request_bytes`, one at a time and in order, so that `pass.done` always ends a prefix
    /// HEC took. Stops at the first request that fails for another reason than bad data.
    async fn send(
        &self,
        batch: &[OutboxRecord],
        events: &[Vec<u8>],
        channel: Option<&str>,
        pass: &mut Pass,
    ) {
        let max = self.settings.max_request_bytes;
        let mut work: VecDeque<std::ops::Range<usize>> = VecDeque::new();
        // Cut into requests of at most `max` bytes (an event larger than that goes alone).
        let mut start = pass.done;
        let mut size = 0;
        for (i, e) in events.iter().enumerate().skip(pass.done) {
            if i > start && size + e.len() > max {
                work.push_back(start..i);
                start = i;
                size = 0;
            }
            size += e.len();
        }
        if start < events.len() {
            work.push_back(start..events.len());
        }
        while let Some(range) = work.pop_front() {
            match self.post(&events[range.clone()], channel).await {
                Ok(ack) => {
                    if let (Some(ack), Some(channel)) = (ack, channel) {
                        pass.unacked.push(Unacked {
                            ack,
                            start: range.start,
                        });
                        self.remember_ack(channel, ack, batch, range.end - 1, &pass.rejected)
                            .await;
                    }
                    pass.done = range.end;
                }
                // HEC indexed the events before the invalid one and dropped it and the rest of
                // the request: dead-letter exactly that event and send the rest again.
                Err(PostError::BadData {
                    reason,
                    invalid: Some(n),
                }) if n < range.len() => {
                    let bad = range.start + n;
                    pass.rejected.push((bad, reason));
                    pass.done = bad + 1;
                    if bad + 1 < range.end {
                        work.push_front(bad + 1..range.end);
                    }
                }
                Err(PostError::BadData { reason, .. }) if range.len() == 1 => {
                    pass.rejected.push((range.start, reason));
                    pass.done = range.end;
                }
                // Bad data without a usable `invalid-event-number`: assume nothing of the request
                // was taken and halve it until the bad event stands alone.
                Err(PostError::BadData { .. }) => {
                    let mid = range.start + range.len() / 2;
                    work.push_front(mid..range.end);
                    work.push_front(range.start..mid);
                }
                Err(PostError::Sink(e)) => {
                    pass.error = Some(e);
                    return;
                }
            }
        }
    }

    /// Keeps the ack of the request ending at `batch[last]` (and the records refused so far) in
    /// the store, so that a restart asks about it instead of sending the request again.
    async fn remember_ack(
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
    async fn resume(
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
    async fn wait_for_acks(&self, channel: &str, mut ids: Vec<u64>) -> HashSet<u64> {
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
    async fn acks_missing(&mut self, batch: &[OutboxRecord], first: usize, done: usize) -> usize {
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

impl Sink for HecSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&mut self, batch: &[OutboxRecord]) -> Result<Delivered, SinkError> {
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
            let events: Vec<Vec<u8>> = batch
                .iter()
                .map(|r| {
                    let mut out = Vec::with_capacity(r.record.len() + 256);
                    self.envelope(r, &mut out);
                    out
                })
                .collect();
            self.send(batch, &events, channel.as_deref(), &mut pass)
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
