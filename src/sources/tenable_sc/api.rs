//! Tenable.sc requests: the configured auth on every `POST /rest/...` (API keys, or a session
//! logged in with re-login once on 401/403, and logged out on close) and the envelope around every
//! answer (`error_code` is an error even on HTTP 200).
//!
//! Must not: sleep, retry (beyond the one re-login), build queries or read findings, or put a
//! credential in an error or a log. Invariant: a session is dropped only by the request that used
//! it, so concurrent pages log in again once, not once each.

use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::TenableScSource;
use crate::settings::{Secret, TenableAuth, TenableCredentials};
use crate::sources::http::{display_url, send, status_error};
use crate::sources::SourceError;

/// `error_code` of a request whose session expired or was dropped (sent with HTTP 403).
const INVALID_TOKEN: i64 = 12;

/// A logged-in session (`session` auth).
pub(super) struct Session {
    token: Secret,
    cookie: Secret,
}

/// The envelope every answer comes in. `response` stays text: an analysis page is read once, by
/// its caller, and its rows are kept as the vendor wrote them (a parsed tree would be written
/// back to text for every row).
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    response: Option<Box<RawValue>>,
    #[serde(default)]
    error_code: i64,
    #[serde(default)]
    error_msg: String,
}

impl TenableScSource {
    /// Logs in with the session credentials: the token and the `TNS_SESSIONID` cookie.
    pub(super) async fn login(&self) -> Result<Session, SourceError> {
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
        /// The part of a login answer secrelay reads: the token, a string or a number.
        #[derive(Deserialize)]
        struct Login {
            #[serde(default)]
            token: Option<serde_json::Value>,
        }
        let login: Option<Login> = serde_json::from_str(payload.get()).ok();
        let token = match login.and_then(|l| l.token) {
            Some(serde_json::Value::String(t)) => t,
            Some(serde_json::Value::Number(n)) => n.to_string(),
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
    async fn envelope(&self, response: reqwest::Response) -> Result<Box<RawValue>, SourceError> {
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
            Ok(env) if status.is_success() => Ok(env.response.unwrap_or_default()),
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
    pub(super) async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<Box<RawValue>, SourceError> {
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

    /// Logs out of the session, if one is open (a failure is only logged: the session expires).
    pub(super) async fn logout(&self) {
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
