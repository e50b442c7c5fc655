//! Tenable Security Center source: vulnerability findings from `POST /rest/analysis`
//! (reference/vendor-apis.md §3), open (`cumulative`) and mitigated (`patched`) as two streams.
//!
//! Owns: authentication (API keys, or a session with re-login once on 401/403 and logout), the
//! envelope (`error_code` is an error even on HTTP 200), the `lastSeen`/`lastMitigated` window
//! read by keyset (see `WindowCursor`: the result set changes under offset paging, so offsets
//! are never trusted across requests), strict parsing of the all-string rows (a bad row is
//! rejected, the page goes on), and the identity of a finding. CEF mapping lives in `cef.rs`.
//! Must not: sleep, retry or touch the store.
//!
//! Identity: (repository id, ip, dnsName or uuid, pluginID, port, protocol, lastSeen): a finding
//! seen again later is forwarded again; the same observation never twice.

pub mod cef;
pub mod mapping;

use std::time::Duration;

use chrono::Utc;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::event::{Event, Page, Partition, Rejected, Severity};
use crate::settings::{
    HttpSettings, Secret, SetupError, TenableAuth, TenableCredentials, TenableScSettings,
    TenableStream,
};
use crate::sources::cursor::{stream_partitions, StoredCursor};
use crate::sources::http::{self, display_url, send, status_error, TlsOptions};
use crate::sources::{Source, SourceError};

/// The stream name of a Tenable.sc stream.
pub fn stream_name(stream: TenableStream) -> &'static str {
    match stream {
        TenableStream::Cumulative => "vulnerabilities",
        TenableStream::Patched => "mitigated",
    }
}

/// `error_code` of a request whose session expired or was dropped (sent with HTTP 403).
const INVALID_TOKEN: i64 = 12;

/// A logged-in session (`session` auth).
struct Session {
    token: Secret,
    cookie: Secret,
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

/// What one analysis request returned.
struct Fetched {
    events: Vec<Event>,
    /// Rows that could not become events.
    rejected: Vec<Rejected>,
    /// Rows in the response, good or not.
    rows: u64,
    /// The newest readable window time among them.
    newest: Option<i64>,
    /// Whether every readable window time in the response equals this one.
    all_at: Option<i64>,
    /// `totalRecords`, when the server sent a readable one.
    total: Option<i64>,
    /// `endOffset`, when the server sent a readable one.
    end: Option<i64>,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    response: Value,
    #[serde(default)]
    error_code: i64,
    #[serde(default)]
    error_msg: String,
}

#[derive(Deserialize)]
struct AnalysisPage {
    #[serde(rename = "totalRecords", default)]
    total_records: Option<String>,
    #[serde(rename = "endOffset", default)]
    end_offset: Option<String>,
    #[serde(default)]
    results: Vec<Box<RawValue>>,
}

/// The fields of a vulndetails row secrelay reads (all strings on the wire).
#[derive(Deserialize)]
struct Row {
    #[serde(rename = "pluginID")]
    plugin_id: String,
    #[serde(default)]
    ip: String,
    #[serde(rename = "dnsName", default)]
    dns_name: String,
    #[serde(default)]
    uuid: String,
    #[serde(default)]
    port: String,
    #[serde(default)]
    protocol: String,
    #[serde(rename = "lastSeen")]
    last_seen: String,
    #[serde(rename = "lastMitigated", default)]
    last_mitigated: Option<String>,
    #[serde(default)]
    severity: Option<Value>,
    #[serde(default)]
    repository: Option<Value>,
}

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
        if !settings.tls_verify {
            tracing::warn!(source = %id, url = %settings.url,
                "TLS certificate verification is OFF for this source (tls_verify = false)");
        }
        let tls = TlsOptions {
            ca_file: settings.ca_file.clone(),
            client_cert: settings
                .client_cert_file
                .clone()
                .zip(settings.client_key_file.clone()),
            verify: settings.tls_verify,
        };
        let http = http::client_with_tls(
            http_settings,
            &tls,
            Duration::from_secs_f64(settings.timeout_secs),
            &at,
        )
        .map_err(|e| SetupError::keyed(&at, e))?;
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

    async fn login(&self) -> Result<Session, SourceError> {
        let url = format!("{}/token", self.base);
        let TenableCredentials::Session { username, password } = &self.credentials else {
            return Err(SourceError::Auth {
                url,
                detail: "auth = \"api_keys\" has no session to log in to".into(),
            });
        };
        let body = json!({"username": username, "password": password.expose()});
        let response = send(self.http.post(&url).json(&body), &url).await?;
        let cookie = response
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix("TNS_SESSIONID="))
            .map(|v| v.split(';').next().unwrap_or_default().to_string());
        // A refused login is a credential problem, whatever status and code it came with.
        let payload = self.envelope(response).await.map_err(|e| match e {
            SourceError::Rejected { url, detail } => SourceError::Auth { url, detail },
            other => other,
        })?;
        let token = match payload.get("token") {
            Some(Value::String(t)) => t.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return Err(SourceError::Malformed {
                    url,
                    detail: "login response has no token".into(),
                })
            }
        };
        let cookie = cookie.ok_or_else(|| SourceError::Malformed {
            url: url.clone(),
            detail: "login response set no TNS_SESSIONID cookie".into(),
        })?;
        tracing::info!(source = %self.id, "logged in to Tenable.sc");
        Ok(Session {
            token: Secret::new(token),
            cookie: Secret::new(cookie),
        })
    }

    /// Reads the envelope: its `response` on success; `error_code` ≠ 0 is an error at any status.
    async fn envelope(&self, response: reqwest::Response) -> Result<Value, SourceError> {
        let status = response.status();
        let headers = response.headers().clone();
        let shown = display_url(response.url());
        let text = crate::sources::http::read_text(response).await?;
        let parsed: Result<Envelope, _> = serde_json::from_str(&text);
        match parsed {
            Ok(env) if env.error_code != 0 => {
                let detail = format!(
                    "HTTP {status}, error_code {}: {}",
                    env.error_code, env.error_msg
                );
                Err(match status.as_u16() {
                    _ if env.error_code == INVALID_TOKEN => {
                        SourceError::Auth { url: shown, detail }
                    }
                    401 => SourceError::Auth { url: shown, detail },
                    429 | 500..=599 => status_error(status, &headers, &detail, shown),
                    _ => SourceError::Rejected { url: shown, detail },
                })
            }
            Ok(env) if status.is_success() => Ok(env.response),
            // An envelope that says success under a failed status is not quoted: on the login
            // path its `response` may hold the session token.
            Ok(_) => Err(status_error(
                status,
                &headers,
                "(an error_code 0 envelope, not quoted)",
                shown,
            )),
            Err(_) if !status.is_success() => Err(status_error(status, &headers, &text, shown)),
            Err(e) => Err(SourceError::Malformed {
                url: shown,
                detail: format!("{e} (body {} bytes)", text.len()),
            }),
        }
    }

    /// `POST /rest/<path>` with the configured auth. In session mode a refusal (401, or the 403 with
    /// `error_code` 12 a real SecurityCenter sends for an expired session, or any other 403) logs
    /// in again once; refused again, the request fails with [`SourceError::Auth`] (or
    /// [`SourceError::Rejected`] when the 403 carried another `error_code`, e.g. 146 for a filter).
    async fn post(&self, path: &str, body: &Value) -> Result<Value, SourceError> {
        let url = format!("{}/{path}", self.base);
        let mut relogged = false;
        loop {
            let mut request = self.http.post(&url).json(body);
            let mut used: Option<Secret> = None;
            match &self.credentials {
                TenableCredentials::ApiKeys {
                    access_key,
                    secret_key,
                } => {
                    let value =
                        format!("accessKey={access_key}; secretKey={}", secret_key.expose());
                    request = request.header("X-APIKey", value);
                }
                TenableCredentials::Session { .. } => {
                    let mut session = self.session.lock().await;
                    if session.is_none() {
                        *session = Some(self.login().await?);
                    }
                    if let Some(s) = session.as_ref() {
                        used = Some(s.token.clone());
                        request = request
                            .header("X-SecurityCenter", s.token.expose())
                            .header("Cookie", format!("TNS_SESSIONID={}", s.cookie.expose()));
                    }
                }
            }
            let response = send(request, &url).await?;
            let refused = matches!(
                response.status(),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
            );
            if refused && self.settings.auth == TenableAuth::Session && !relogged {
                // Pages run concurrently: only the first to see the refusal drops the session, the
                // others find the new one already in place.
                let mut session = self.session.lock().await;
                if session.as_ref().map(|s| &s.token) == used.as_ref() {
                    tracing::info!(source = %self.id, "Tenable.sc session expired; logging in again");
                    *session = None;
                }
                relogged = true;
                continue;
            }
            return self.envelope(response).await;
        }
    }

    /// One analysis request for `[since, until]`, rows `start..end`.
    async fn fetch(
        &self,
        stream: TenableStream,
        since: i64,
        until: i64,
        start: u64,
        end: u64,
    ) -> Result<Fetched, SourceError> {
        let url = format!("{}/analysis", self.base);
        let body = self.query(stream, since, until, start, end);
        let payload = self.post("analysis", &body).await?;
        let page: AnalysisPage =
            serde_json::from_value(payload).map_err(|e| SourceError::Malformed {
                url: url.clone(),
                detail: format!("analysis response: {e}"),
            })?;
        let total = page
            .total_records
            .as_deref()
            .map(|t| int(t, "totalRecords", &url))
            .transpose()?;
        let end = page
            .end_offset
            .as_deref()
            .map(|t| int(t, "endOffset", &url))
            .transpose()?;
        let mut fetched = Fetched {
            events: Vec::with_capacity(page.results.len()),
            rejected: Vec::new(),
            rows: page.results.len() as u64,
            newest: None,
            all_at: None,
            total,
            end,
        };
        let mut times = Vec::with_capacity(page.results.len());
        for raw in &page.results {
            times.extend(window_time(raw, stream));
            match finding(raw, stream, &url) {
                Ok(event) => fetched.events.push(event),
                Err(e) => {
                    let reason = match e {
                        SourceError::Malformed { detail, .. } => detail,
                        other => other.to_string(),
                    };
                    fetched
                        .rejected
                        .push(Rejected::new(&url, reason, raw.get()));
                }
            }
        }
        fetched.newest = times.iter().copied().max();
        fetched.all_at = fetched.newest.filter(|n| times.iter().all(|t| t == n));
        Ok(fetched)
    }

    /// Every row whose window time is `at`, in one response: asks for `total` rows (the size of a
    /// window that holds the group, so at least the group), and again with twice as many while
    /// the answer fills what was asked.
    async fn read_group(
        &self,
        stream: TenableStream,
        at: i64,
        total: Option<i64>,
        size: u64,
    ) -> Result<Fetched, SourceError> {
        let mut want = total.map_or(size * 2, |t| u64::try_from(t).unwrap_or(0).max(size * 2));
        loop {
            let group = self.fetch(stream, at, at, 0, want).await?;
            if group.rows < want {
                if group.rows > size * 10 {
                    tracing::warn!(source = %self.id, rows = group.rows, at,
                        "many findings share one window time; read them in one response");
                }
                return Ok(group);
            }
            want *= 2;
        }
    }

    fn query(&self, stream: TenableStream, since: i64, until: i64, start: u64, end: u64) -> Value {
        let field = window_field(stream);
        let mut filters = vec![
            json!({"filterName": field, "operator": "=", "value": format!("{since}-{until}")}),
        ];
        filters.extend(self.settings.filters.iter().map(|f| json!(f)));
        let mut query = json!({
            "tool": self.settings.tool,
            "type": "vuln",
            "filters": filters,
            "startOffset": start,
            "endOffset": end,
        });
        if let Some(id) = self.settings.query_id {
            query["id"] = json!(id);
        }
        json!({
            "type": "vuln",
            "sourceType": if stream == TenableStream::Patched { "patched" } else { "cumulative" },
            "sortField": field,
            "sortDir": "ASC",
            "query": query,
        })
    }
}

/// The window time of a row (`lastSeen`, or `lastMitigated` for mitigated findings), read on its
/// own so that a row rejected for another field still moves the keyset.
fn window_time(raw: &RawValue, stream: TenableStream) -> Option<i64> {
    #[derive(Deserialize)]
    struct Times {
        #[serde(rename = "lastSeen", default)]
        last_seen: Option<String>,
        #[serde(rename = "lastMitigated", default)]
        last_mitigated: Option<String>,
    }
    let times: Times = serde_json::from_str(raw.get()).ok()?;
    let text = match stream {
        TenableStream::Cumulative => times.last_seen,
        TenableStream::Patched => times.last_mitigated,
    }?;
    text.trim().parse().ok()
}

fn window_field(stream: TenableStream) -> &'static str {
    match stream {
        TenableStream::Cumulative => "lastSeen",
        TenableStream::Patched => "lastMitigated",
    }
}

/// Parses a string-typed integer strictly: a bad value is a malformed response, never a zero.
fn int(text: &str, field: &str, url: &str) -> Result<i64, SourceError> {
    text.trim()
        .parse::<i64>()
        .map_err(|_| SourceError::Malformed {
            url: url.to_string(),
            detail: format!("{field} {text:?} is not an integer"),
        })
}

/// A vulndetails row as an [`Event`].
fn finding(raw: &RawValue, stream: TenableStream, url: &str) -> Result<Event, SourceError> {
    let row: Row = serde_json::from_str(raw.get()).map_err(|e| SourceError::Malformed {
        url: url.to_string(),
        detail: format!("row: {e}"),
    })?;
    let plugin = int(&row.plugin_id, "pluginID", url)?;
    let port = int(
        if row.port.is_empty() { "0" } else { &row.port },
        "port",
        url,
    )?;
    let last_seen = int(&row.last_seen, "lastSeen", url)?;
    let window_time = match (stream, row.last_mitigated.as_deref()) {
        (TenableStream::Patched, Some(t)) if !t.is_empty() => int(t, "lastMitigated", url)?,
        _ => last_seen,
    };
    let repository = row
        .repository
        .as_ref()
        .and_then(|r| r.get("id"))
        .and_then(|id| {
            id.as_str()
                .map(str::to_string)
                .or_else(|| id.as_i64().map(|n| n.to_string()))
        })
        .unwrap_or_default();
    let host = if row.dns_name.is_empty() {
        &row.uuid
    } else {
        &row.dns_name
    };
    let id = format!(
        "{repository}|{}|{host}|{plugin}|{port}|{}|{last_seen}",
        row.ip, row.protocol
    );
    let severity = row
        .severity
        .as_ref()
        .and_then(|s| s.get("id"))
        .and_then(Value::as_str)
        .map(|s| int(s, "severity.id", url))
        .transpose()?
        .map_or(0, |s| [0, 3, 5, 8, 10][s.clamp(0, 4) as usize]);
    let time = chrono::DateTime::from_timestamp(window_time, 0).unwrap_or_else(Utc::now);
    Ok(Event::new(id, time, Severity::new(severity), raw))
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
        let Some(session) = self.session.lock().await.take() else {
            return;
        };
        let url = format!("{}/token", self.base);
        let request = self
            .http
            .delete(&url)
            .header("X-SecurityCenter", session.token.expose())
            .header(
                "Cookie",
                format!("TNS_SESSIONID={}", session.cookie.expose()),
            );
        match send(request, &url).await {
            Ok(_) => tracing::info!(source = %self.id, "logged out of Tenable.sc"),
            Err(e) => tracing::warn!(source = %self.id, "logout failed: {e}"),
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
