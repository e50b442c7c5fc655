//! Splunk HTTP Event Collector sink: concatenated JSON envelopes to `/services/collector/event`,
//! bounded by request size, gzip-compressed, with Splunk's response codes handled as documented
//! and optional indexer acknowledgement (reference/sink-protocols.md §3).
//!
//! Owns: requests, response handling, bad-event isolation and the ack wait. Must not: build the
//! envelope bytes itself (see `encode::hec`), or touch the outbox; its only state in the store is
//! its channel and the acks it waits for. Invariants: a batch counts as delivered only when every
//! request got code 0 (and, with acks on, every ack came back true); a 400 for bad data splits the
//! request until the bad event stands alone, which becomes a dead letter while the rest goes on;
//! 401/403 stop the sink loudly with its records still in the outbox.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde::Deserialize;

use crate::encode::hec::{write_event, HecMeta};
use crate::settings::{Secret, SplunkHecSettings};
use crate::sinks::{Delivered, Sink, SinkError};
use crate::sources::http::{self, parse_retry_after, TlsOptions};
use crate::sources::Vendor;
use crate::store::{OutboxRecord, Store};

/// The default `sourcetype` of a vendor's stream, e.g. `code42:file_event`.
pub fn default_sourcetype(vendor: Option<Vendor>, stream: &str) -> String {
    let singular = match stream {
        "events" => "event",
        "alerts" => "alert",
        "file_events" => "file_event",
        "sessions" => "session",
        "vulnerabilities" => "vulnerability",
        other => other,
    };
    match vendor {
        Some(Vendor::Sophos) => format!("sophos:central:{singular}"),
        Some(Vendor::Code42) => format!("code42:{singular}"),
        Some(Vendor::TenableSc) => format!("tenable:sc:{singular}"),
        Some(Vendor::Jamf) => format!("jamf:pro:{stream}"),
        None => format!("secrelay:{stream}"),
    }
}

#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    text: String,
    #[serde(default)]
    code: i64,
    #[serde(rename = "ackId", default)]
    ack_id: Option<u64>,
}

#[derive(Deserialize)]
struct AckReply {
    #[serde(default)]
    acks: HashMap<String, bool>,
}

/// Why one request failed.
enum PostError {
    /// HEC refused the data itself (400 codes 6, 12, 13, 15): isolate and dead-letter.
    BadData(String),
    /// Anything else: retry, or stop.
    Sink(SinkError),
}

/// The Splunk HEC sink.
pub struct HecSink {
    name: String,
    settings: SplunkHecSettings,
    http: reqwest::Client,
    token: Secret,
    host: String,
    vendors: HashMap<String, Vendor>,
    store: Store,
    channel: Option<String>,
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
    /// A sink for `settings` (token resolved). `store` keeps its channel and pending acks.
    pub fn new(
        name: &str,
        settings: SplunkHecSettings,
        http_settings: &crate::settings::HttpSettings,
        vendors: HashMap<String, Vendor>,
        store: Store,
    ) -> Result<Self, String> {
        if !settings.tls_verify {
            tracing::warn!(sink = %name, url = %settings.url,
                "TLS certificate verification is OFF for this sink (tls_verify = false)");
        }
        let tls = TlsOptions {
            ca_file: settings.ca_file.clone(),
            client_cert: None,
            verify: settings.tls_verify,
        };
        let client = http::client_with_tls(
            http_settings,
            &tls,
            Duration::from_secs_f64(settings.timeout_secs),
            &format!("sinks.{name}"),
        )?;
        Ok(HecSink {
            name: name.to_string(),
            token: settings.token.clone().unwrap_or_else(|| Secret::new("")),
            host: settings
                .host
                .clone()
                .unwrap_or_else(crate::sinks::syslog::local_hostname),
            settings,
            http: client,
            vendors,
            store,
            channel: None,
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
        let vendor = self.vendors.get(&record.source).copied();
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
        let default_type = default_sourcetype(vendor, &record.stream);
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
            .store
            .sink_channel(&self.name, &new_channel())
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
        let response = http::send(request, &url)
            .await
            .map_err(|e| PostError::Sink(self.unavailable(e.to_string(), None)))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let text = response.text().await.unwrap_or_default();
        let reply: Reply = serde_json::from_str(&text).unwrap_or(Reply {
            text: text.chars().take(200).collect(),
            code: -1,
            ack_id: None,
        });
        let said = format!("{url}: HTTP {status}, code {}: {}", reply.code, reply.text);
        match status {
            StatusCode::OK if reply.code == 0 => Ok(reply.ack_id),
            StatusCode::BAD_REQUEST if matches!(reply.code, 6 | 12 | 13 | 15) => {
                Err(PostError::BadData(said))
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

    /// Sends `events`, splitting by request size and, on bad data, down to the single bad event.
    async fn send_all(
        &self,
        events: &[Vec<u8>],
        channel: Option<&str>,
        rejected: &mut Vec<(usize, String)>,
        acks: &mut Vec<u64>,
    ) -> Result<(), SinkError> {
        let max = self.settings.max_request_bytes;
        let mut work: VecDeque<std::ops::Range<usize>> = VecDeque::new();
        // Cut into requests of at most `max` bytes (an event larger than that goes alone).
        let mut start = 0;
        let mut size = 0;
        for (i, e) in events.iter().enumerate() {
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
                Ok(ack) => acks.extend(ack),
                Err(PostError::BadData(reason)) if range.len() == 1 => {
                    rejected.push((range.start, reason))
                }
                Err(PostError::BadData(_)) => {
                    let mid = range.start + range.len() / 2;
                    work.push_front(mid..range.end);
                    work.push_front(range.start..mid);
                }
                Err(PostError::Sink(e)) => return Err(e),
            }
        }
        Ok(())
    }

    /// Asks about `ids` until all are true (Ok(true)) or `ack_timeout_secs` passes (Ok(false)).
    async fn wait_for_acks(&self, channel: &str, mut ids: Vec<u64>) -> bool {
        let url = self.url("/services/collector/ack");
        let deadline = Instant::now() + Duration::from_secs_f64(self.settings.ack_timeout_secs);
        loop {
            let request = self
                .http
                .post(&url)
                .query(&[("channel", channel)])
                .header("Authorization", format!("Splunk {}", self.token.expose()))
                .header("X-Splunk-Request-Channel", channel)
                .json(&serde_json::json!({"acks": ids}));
            if let Ok(response) = request.send().await {
                if let Ok(reply) = response.json::<AckReply>().await {
                    ids.retain(|id| !reply.acks.get(&id.to_string()).copied().unwrap_or(false));
                }
            }
            if ids.is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                tracing::warn!(sink = %self.name, waiting = ids.len(), "indexer acks did not arrive in time; the batch will be sent again");
                return false;
            }
            tokio::time::sleep(Duration::from_secs_f64(self.settings.ack_poll_secs)).await;
        }
    }
}

impl Sink for HecSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&mut self, batch: &[OutboxRecord]) -> Result<Delivered, SinkError> {
        let Some(last) = batch.last().map(|r| r.seq) else {
            return Ok(Delivered::default());
        };
        let channel = if self.settings.ack {
            Some(self.channel().await?)
        } else {
            None
        };
        if let Some(channel) = &channel {
            // After a restart: acks still pending for this very batch may have arrived meanwhile.
            let pending = self
                .store
                .pending_acks(&self.name)
                .await
                .map_err(|e| self.unavailable(e.to_string(), None))?;
            if !pending.is_empty() {
                let same_batch = pending
                    .iter()
                    .all(|(c, _, seq)| c == channel && *seq == last);
                let ids = pending.iter().map(|(_, id, _)| *id).collect();
                let acked = same_batch && self.wait_for_acks(channel, ids).await;
                // What the receiver refused in that send is still refused: dead-letter it now.
                let refused = if acked {
                    self.store
                        .pending_rejects(&self.name)
                        .await
                        .map_err(|e| self.unavailable(e.to_string(), None))?
                } else {
                    Vec::new()
                };
                let _ = self.store.clear_pending_acks(&self.name).await;
                if acked {
                    tracing::info!(sink = %self.name, "acks of the batch sent before the restart arrived; not sending it again");
                    let rejected = refused
                        .into_iter()
                        .filter_map(|(seq, reason)| {
                            batch.iter().position(|r| r.seq == seq).map(|i| (i, reason))
                        })
                        .collect();
                    return Ok(Delivered { rejected });
                }
            }
        }
        let events: Vec<Vec<u8>> = batch
            .iter()
            .map(|r| {
                let mut out = Vec::with_capacity(r.record.len() + 256);
                self.envelope(r, &mut out);
                out
            })
            .collect();
        let mut rejected = Vec::new();
        let mut acks = Vec::new();
        self.send_all(&events, channel.as_deref(), &mut rejected, &mut acks)
            .await?;
        if let (Some(channel), false) = (channel, acks.is_empty()) {
            let refused: Vec<(i64, String)> = rejected
                .iter()
                .map(|(i, reason)| (batch[*i].seq, reason.clone()))
                .collect();
            self.store
                .save_pending_acks(
                    &self.name,
                    &channel,
                    &acks,
                    last,
                    &refused,
                    chrono::Utc::now(),
                )
                .await
                .map_err(|e| self.unavailable(e.to_string(), None))?;
            let acked = self.wait_for_acks(&channel, acks).await;
            if !acked {
                let _ = self.store.clear_pending_acks(&self.name).await;
                return Err(self.unavailable("indexer acknowledgement timed out".into(), None));
            }
            let _ = self.store.clear_pending_acks(&self.name).await;
        }
        Ok(Delivered { rejected })
    }

    async fn check(&mut self) -> Result<(), SinkError> {
        let url = self.url("/services/collector/health");
        let request = self
            .http
            .get(&url)
            .header("Authorization", format!("Splunk {}", self.token.expose()));
        let response = http::send(request, &url)
            .await
            .map_err(|e| self.unavailable(e.to_string(), None))?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_sourcetypes_name_vendor_and_record_kind() {
        assert_eq!(
            default_sourcetype(Some(Vendor::Code42), "file_events"),
            "code42:file_event"
        );
        assert_eq!(
            default_sourcetype(Some(Vendor::Sophos), "alerts"),
            "sophos:central:alert"
        );
        assert_eq!(
            default_sourcetype(Some(Vendor::TenableSc), "vulnerabilities"),
            "tenable:sc:vulnerability"
        );
        assert_eq!(
            default_sourcetype(Some(Vendor::Jamf), "inventory"),
            "jamf:pro:inventory"
        );
        assert_eq!(default_sourcetype(None, "x"), "secrelay:x");
    }
}
