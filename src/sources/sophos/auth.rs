//! Sophos Central OAuth2 client credentials: one cached bearer token per source.
//!
//! Owns: the token request (form body `grant_type=client_credentials`, `scope=token`, id and secret)
//! and the cache. Must not: log the secret or the token. Invariant: a token is reused until shortly
//! before `expires_in`, and a token the API refused is fetched anew at most once per refusal.

use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Mutex;

use crate::settings::Secret;
use crate::sources::http::{read_token_json, send};
use crate::sources::SourceError;

/// Renew this long before the vendor's expiry (the Sophos SIEM script uses 120 s).
const RENEW_MARGIN: Duration = Duration::from_secs(120);

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Secret,
    #[serde(default = "default_expires_in")]
    expires_in: u64,
}

fn default_expires_in() -> u64 {
    3600
}

struct Cached {
    token: Secret,
    renew_at: Instant,
}

/// A cached client-credentials token.
pub struct TokenCache {
    http: reqwest::Client,
    token_url: String,
    client_id: String,
    client_secret: Secret,
    cached: Mutex<Option<Cached>>,
}

impl TokenCache {
    /// A cache that fetches from `token_url` with the given credential.
    pub fn new(
        http: reqwest::Client,
        token_url: String,
        client_id: String,
        client_secret: Secret,
    ) -> Self {
        TokenCache {
            http,
            token_url,
            client_id,
            client_secret,
            cached: Mutex::new(None),
        }
    }

    /// A valid bearer token, fetched when none is cached or the cached one is about to expire.
    pub async fn bearer(&self) -> Result<Secret, SourceError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| Instant::now() < c.renew_at) {
            return Ok(c.token.clone());
        }
        let form = [
            ("grant_type", "client_credentials"),
            ("scope", "token"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose()),
        ];
        let response = send(self.http.post(&self.token_url).form(&form), &self.token_url).await?;
        let token: TokenResponse = read_token_json(response).await?;
        let lifetime = Duration::from_secs(token.expires_in);
        let margin = RENEW_MARGIN.min(lifetime / 2);
        *cached = Some(Cached {
            token: token.access_token.clone(),
            renew_at: Instant::now() + lifetime - margin,
        });
        tracing::debug!(token_url = %self.token_url, expires_in = token.expires_in, "fetched a Sophos token");
        Ok(token.access_token)
    }

    /// Drops `refused` from the cache so the next [`TokenCache::bearer`] fetches a new one. A token
    /// already replaced by another task is left alone.
    pub async fn invalidate(&self, refused: &Secret) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|c| &c.token == refused) {
            *cached = None;
        }
    }
}
