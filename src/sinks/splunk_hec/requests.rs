//! HEC requests: one batch cut into requests of at most `max_request_bytes`, each posted and its
//! reply read as Splunk documents it, and the events HEC refuses isolated (reference/sink-protocols.md §3).
//!
//! Owns: posting request bodies (made by `bodies`), the reply codes and what they mean, and the
//! order of requests within a pass. Must not: wait for acks (see `acks`) or decide what the delivery
//! loop does with a shortfall (see `deliver` in the parent). Invariant: requests go one at a time and
//! in order, so `Pass::done` always ends a leading part of the batch HEC took or refused.

use std::collections::VecDeque;

use reqwest::StatusCode;
use serde::Deserialize;

use super::bodies::{EncodedBatch, RequestBody};
use super::{HecSink, REPLY_MAX_BYTES};
use crate::net::{self, parse_retry_after};
use crate::sinks::SinkError;
use crate::store::OutboxRecord;

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
pub(super) struct Unacked {
    /// The ack id HEC gave the request.
    pub(super) ack: u64,
    /// Index in the batch of its first record.
    pub(super) start: usize,
}

/// How far one pass over a batch got.
pub(super) struct Pass {
    /// Records `[0, done)` of the batch are handled: taken with code 0 (acked or not yet), or
    /// refused as invalid (in `rejected`).
    pub(super) done: usize,
    /// Refused records, by index in the batch, with what HEC said.
    pub(super) rejected: Vec<(usize, String)>,
    /// Requests of this pass waiting for their ack, in order.
    pub(super) unacked: Vec<Unacked>,
    /// Why the pass stopped before the end of the batch.
    pub(super) error: Option<SinkError>,
}

impl HecSink {
    async fn post(
        &self,
        body: RequestBody,
        channel: Option<&str>,
    ) -> Result<Option<u64>, PostError> {
        let url = self.url("/services/collector/event");
        let mut request = self
            .http
            .post(&url)
            .header("Authorization", format!("Splunk {}", self.token.expose()))
            .header("Content-Type", "application/json");
        if let Some(c) = channel {
            request = request.header("X-Splunk-Request-Channel", c);
        }
        let request = if body.gzip {
            request.header("Content-Encoding", "gzip").body(body.bytes)
        } else {
            request.body(body.bytes)
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
    /// HEC took. Stops at the first request that fails for another reason than bad data. A
    /// request whose body `encoded` holds (the same records) is sent as that body.
    pub(super) async fn send(
        &self,
        batch: &[OutboxRecord],
        encoded: EncodedBatch,
        channel: Option<&str>,
        pass: &mut Pass,
    ) {
        let EncodedBatch { sizes, mut bodies } = encoded;
        let mut work: VecDeque<std::ops::Range<usize>> = self.encoder.cut(&sizes, pass.done).into();
        while let Some(range) = work.pop_front() {
            let body = match bodies.iter().position(|(r, _)| *r == range) {
                Some(i) => bodies.swap_remove(i).1,
                None => self.encoder.body(&batch[range.clone()]),
            };
            match self.post(body, channel).await {
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
}
