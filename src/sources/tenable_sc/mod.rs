//! Tenable Security Center source: vulnerability findings from `POST /rest/analysis`
//! (reference/vendor-apis.md §3), open (`cumulative`) and mitigated (`patched`) as two streams.
//!
//! Owns: authentication (API keys, or a session with re-login once on 401/403 and logout), the
//! envelope (`error_code` is an error even on HTTP 200), the `lastSeen`/`lastMitigated` window
//! read by keyset (see `WindowCursor`: the result set changes under offset paging, so offsets
//! are never trusted across requests), strict parsing of the all-string rows (a bad row is
//! rejected, the page goes on), and the identity of a finding.
//! Parts: `api.rs` (auth, session, envelope), `analysis.rs` (the analysis query and its pages),
//! `finding.rs` (a row read strictly into an event, its identity), `cef.rs` (CEF mapping).
//! Must not: sleep, retry or touch the store.
//!
//! Identity: (repository id, ip, dnsName or uuid, pluginID, port, protocol, lastSeen): a finding
//! seen again later is forwarded again; the same observation never twice.

mod analysis;
mod api;
pub mod cef;
mod finding;
pub mod mapping;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::event::{Page, Partition};
use crate::settings::{
    HttpSettings, SetupError, TenableAuth, TenableCredentials, TenableScSettings, TenableStream,
};
use crate::sources::cursor::{stream_partitions, StoredCursor};
use crate::sources::http::TlsOptions;
use crate::sources::{Source, SourceError};
use api::Session;

/// The stream name of a Tenable.sc stream.
pub fn stream_name(stream: TenableStream) -> &'static str {
    match stream {
        TenableStream::Cumulative => "vulnerabilities",
        TenableStream::Patched => "mitigated",
    }
}

/// Where a stream stands. A pass reads the window `[since, until]` by keyset: every query starts
/// at offset 0 of `[since, until]`, sorted by the window field ascending, and `since` moves to the
/// newest window time on a full page. Rows at that boundary are read again (the seen-set drops
/// them); a full page whose rows all share `since` is read as one group in a single request, since
/// the server does not keep the order of ties between requests. Offsets are never trusted across
/// requests, so rows leaving or entering the window mid-pass cannot shift a row out of sight.
/// (Cursors written before keyset paging carried an `offset`; it is ignored, so such a pass
/// restarts at its `since` and repeats are dropped by the seen-set.)
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WindowCursor {
    /// Keyset position: the next query reads window times from here, epoch seconds.
    since: i64,
    /// Window end of the pass under way, fixed when it started; `None` between passes.
    #[serde(default)]
    until: Option<i64>,
    /// Where the pass under way started (`None`: at `since`), epoch seconds.
    #[serde(default)]
    start: Option<i64>,
    /// The newest window time read in the pass under way, epoch seconds.
    #[serde(default)]
    newest: Option<i64>,
    /// Rows to skip at `since`: only after a full page none of whose rows had a readable window
    /// time, so that `since` could not move.
    #[serde(default)]
    skip: u64,
}

impl StoredCursor for WindowCursor {}

/// Tenable.sc source.
pub struct TenableScSource {
    id: String,
    settings: TenableScSettings,
    http: reqwest::Client,
    base: String,
    session: Mutex<Option<Session>>,
    lookback: chrono::Duration,
    /// The auth mode's credentials, resolved.
    credentials: TenableCredentials,
}

impl TenableScSource {
    /// A source for `settings` (secrets resolved). Builds its own HTTP client (CA bundle, client
    /// certificate, long timeout); `lookback` overrides `initial_lookback_days`.
    pub fn new(
        id: &str,
        settings: TenableScSettings,
        http_settings: &HttpSettings,
        lookback: Option<chrono::Duration>,
    ) -> Result<Self, SetupError> {
        let at = format!("sources.{id}");
        let tls = TlsOptions {
            ca_file: settings.ca_file.clone(),
            client_cert: settings
                .client_cert_file
                .clone()
                .zip(settings.client_key_file.clone()),
            verify: settings.tls_verify,
        };
        let http = crate::net::endpoint_client(
            http_settings,
            &tls,
            settings.timeout_secs,
            &at,
            &settings.url,
        )?;
        Self::with_client(id, settings, http, lookback)
    }

    /// A source over an HTTP client built elsewhere (its TLS settings are then the client's, not
    /// `ca_file`/`client_cert_file`/`tls_verify`): for tests that rebuild sources often. Fails
    /// when the auth mode's credentials were not resolved.
    pub fn with_client(
        id: &str,
        settings: TenableScSettings,
        http: reqwest::Client,
        lookback: Option<chrono::Duration>,
    ) -> Result<Self, SetupError> {
        let credentials = settings.credentials(&format!("sources.{id}"))?;
        let lookback = lookback
            .unwrap_or_else(|| chrono::Duration::days(i64::from(settings.initial_lookback_days)));
        Ok(TenableScSource {
            id: id.to_string(),
            base: format!("{}/rest", settings.url.trim_end_matches('/')),
            settings,
            http,
            session: Mutex::new(None),
            lookback,
            credentials,
        })
    }
}

impl Source for TenableScSource {
    fn id(&self) -> &str {
        &self.id
    }

    async fn partitions(&self) -> Result<Vec<Partition>, SourceError> {
        if self.settings.auth == TenableAuth::Session {
            let mut session = self.session.lock().await;
            if session.is_none() {
                *session = Some(self.login().await?);
            }
        }
        Ok(stream_partitions(
            self.settings.streams.iter().map(|s| stream_name(*s)),
            "",
        ))
    }

    async fn poll(&self, partition: &Partition, cursor: Option<&str>) -> Result<Page, SourceError> {
        let stream = match partition.stream.as_str() {
            "mitigated" => TenableStream::Patched,
            _ => TenableStream::Cumulative,
        };
        let now = Utc::now().timestamp();
        let c = WindowCursor::load(cursor, &self.id, &partition.stream, || WindowCursor {
            since: now - self.lookback.num_seconds(),
            until: None,
            start: None,
            newest: None,
            skip: 0,
        })?;
        let until = c.until.unwrap_or(now).max(c.since);
        let start = c.start.unwrap_or(c.since);
        let size = u64::from(self.settings.page_size);
        let first = self
            .fetch(stream, c.since, until, c.skip, c.skip + size)
            .await?;
        let mut events = first.events;
        let mut rejected = first.rejected;
        let mut newest = c.newest.max(first.newest);
        // Short, or the server says the window ends here: the rest of the window was read by this
        // very response, so the pass is over.
        let done =
            first.rows < size || matches!((first.end, first.total), (Some(e), Some(t)) if e >= t);
        let next = if done {
            // Next pass: `overlap_hours` before the newest row read (scan results are imported
            // after the time they carry), on the server's clock, never behind this pass.
            let overlap = i64::from(self.settings.overlap_hours) * 3600;
            WindowCursor {
                since: newest.map_or(start, |n| (n - overlap).max(start)),
                until: None,
                start: None,
                newest: None,
                skip: 0,
            }
        } else {
            let (since, skip) = match (first.newest, first.all_at) {
                (Some(n), _) if n > c.since => (n, 0),
                (Some(_), Some(_)) => {
                    // A full page of ties at `since`: read the whole group in one response, as
                    // their order can change from one request to the next.
                    let group = self.read_group(stream, c.since, first.total, size).await?;
                    events.extend(group.events);
                    rejected.extend(group.rejected);
                    newest = newest.max(group.newest);
                    (c.since + 1, 0)
                }
                // No readable window time on a full page: step over it by offset (the rows went
                // to the dead letters; they are read again only if the pass is re-run).
                _ => (c.since, c.skip + size),
            };
            WindowCursor {
                since,
                until: Some(until),
                start: Some(start),
                newest,
                skip,
            }
        };
        Ok(Page {
            events,
            rejected,
            cursor: Some(next.save()),
            more: !done,
            ..Page::default()
        })
    }

    async fn close(&self) {
        self.logout().await;
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
