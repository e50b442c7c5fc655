//! Code42 / Incydr calls: service discovery for legacy consoles, and authenticated JSON requests
//! that renew the token once on 401 and recognise `INVALID_PAGE_TOKEN`.
//!
//! Owns: URLs and request plumbing. Must not: decide cursors or map records (see `mod.rs`).

use std::collections::HashMap;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::Mutex;

use super::auth::Tokens;
use crate::settings::Code42Auth;
use crate::sources::http::{
    display_url, read_json, read_json_body, read_text, send, status_error, JsonBody,
};
use crate::sources::SourceError;

/// What a paged query answered.
pub enum Reply<T> {
    /// The page.
    Page(T),
    /// HTTP 400 `INVALID_PAGE_TOKEN`: the `pgToken` is no longer valid; restart the window.
    InvalidPageToken,
}

/// Legacy key-value store keys of the services secrelay uses.
pub const FORENSIC_SEARCH: &str = "FORENSIC_SEARCH-API_URL";
/// The legacy alert service.
pub const ALERT_SERVICE: &str = "AlertService-API_URL";

/// Authenticated calls for one Code42 credential.
pub struct Api {
    http: reqwest::Client,
    tokens: Tokens,
    mode: Code42Auth,
    api_url: String,
    console_url: String,
    /// Legacy service hosts found through the key-value store.
    hosts: Mutex<HashMap<&'static str, String>>,
}

impl Api {
    /// Calls through `tokens`.
    pub fn new(
        http: reqwest::Client,
        tokens: Tokens,
        mode: Code42Auth,
        api_url: &str,
        console_url: &str,
    ) -> Self {
        Api {
            http,
            tokens,
            mode,
            api_url: api_url.trim_end_matches('/').to_string(),
            console_url: console_url.trim_end_matches('/').to_string(),
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// The credential's tokens.
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// The base URL of a service: the API gateway for Incydr API clients; for legacy consoles the
    /// host the key-value store names (`/api/v1/ServerEnv` → `stsBaseUrl` with `sts` replaced by
    /// `simple-key-value-store` → `GET /v1/<key>`, a plain-text URL).
    pub async fn service_url(&self, key: &'static str) -> Result<String, SourceError> {
        if self.mode == Code42Auth::ApiClient {
            return Ok(self.api_url.clone());
        }
        let mut hosts = self.hosts.lock().await;
        if let Some(host) = hosts.get(key) {
            return Ok(host.clone());
        }
        let env_url = format!("{}/api/v1/ServerEnv", self.console_url);
        let env: Value = self.get(&env_url, &[]).await?;
        let sts = super::unwrap_data(env)
            .get("stsBaseUrl")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| SourceError::Malformed {
                url: env_url.clone(),
                detail: "no stsBaseUrl".into(),
            })?;
        let store = sts.replacen("sts", "simple-key-value-store", 1);
        let url = format!("{}/v1/{key}", store.trim_end_matches('/'));
        let token = self.tokens.bearer().await?;
        let response = send(
            self.http
                .get(&url)
                .bearer_auth(token.expose())
                .header("Accept", "*/*"),
            &url,
        )
        .await?;
        let status = response.status();
        let text = read_text(response).await?;
        if !status.is_success() || text.trim().is_empty() {
            return Err(SourceError::Malformed {
                url,
                detail: format!(
                    "key-value store answered HTTP {status} with {:?}",
                    text.trim()
                ),
            });
        }
        let host = text.trim().trim_end_matches('/').to_string();
        hosts.insert(key, host.clone());
        Ok(host)
    }

    async fn authed(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, SourceError> {
        let mut renewed = false;
        loop {
            let token = self.tokens.bearer().await?;
            let response = send(build(token.expose()), url).await?;
            if response.status() == StatusCode::UNAUTHORIZED && !renewed {
                tracing::info!(url, "token refused; renewing it once");
                self.tokens.invalidate(&token).await;
                renewed = true;
                continue;
            }
            return Ok(response);
        }
    }

    /// `GET url?query` as JSON.
    pub async fn get<T: DeserializeOwned>(
        &self,
        url: &str,
        query: &[(&str, String)],
    ) -> Result<T, SourceError> {
        let response = self
            .authed(
                |token| self.http.get(url).bearer_auth(token).query(query),
                url,
            )
            .await?;
        read_json(response).await
    }

    /// `GET url` as JSON, or `None` when the vendor answers 404 (the record is gone).
    pub async fn get_optional<T: DeserializeOwned>(
        &self,
        url: &str,
    ) -> Result<Option<T>, SourceError> {
        let response = self
            .authed(|token| self.http.get(url).bearer_auth(token), url)
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        read_json(response).await.map(Some)
    }

    /// `POST url` with a JSON body; a 400 naming `INVALID_PAGE_TOKEN` is reported as such.
    pub async fn post<T: DeserializeOwned>(
        &self,
        url: &str,
        body: &Value,
    ) -> Result<Reply<T>, SourceError> {
        Ok(match self.post_for_body(url, body).await? {
            Reply::Page(page) => Reply::Page(page.parse()?),
            Reply::InvalidPageToken => Reply::InvalidPageToken,
        })
    }

    /// As [`Api::post`], but the page is the body itself, for the caller to parse into types that
    /// borrow from it (records kept as raw text, never copied or parsed twice).
    pub async fn post_for_body(
        &self,
        url: &str,
        body: &Value,
    ) -> Result<Reply<JsonBody>, SourceError> {
        let response = self
            .authed(
                |token| self.http.post(url).bearer_auth(token).json(body),
                url,
            )
            .await?;
        if response.status() == StatusCode::BAD_REQUEST {
            let shown = display_url(response.url());
            let headers = response.headers().clone();
            let text = read_text(response).await?;
            if text.contains("INVALID_PAGE_TOKEN") {
                return Ok(Reply::InvalidPageToken);
            }
            return Err(status_error(
                StatusCode::BAD_REQUEST,
                &headers,
                &text,
                shown,
            ));
        }
        read_json_body(response).await.map(Reply::Page)
    }
}
