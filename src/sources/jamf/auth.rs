//! Jamf Pro authentication: OAuth client credentials (`/api/oauth/token`), user bearer tokens
//! (`/api/v1/auth/token`, renewed through `/api/v1/auth/keep-alive` before they expire), or HTTP
//! Basic on the Classic API for old servers.
//!
//! Owns: the token cache. Must not: log a secret or a token. Invariant: a token is reused while
//! comfortably valid, kept alive (user tokens) when close to expiry, fetched anew otherwise.

use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Mutex;

use crate::settings::{JamfAuth, Secret};
use crate::sources::http::{read_token_json, send};
use crate::sources::SourceError;

/// Renew when less than this is left (the Jamf SDK keeps user tokens alive inside 60 s).
const RENEW_BEFORE: Duration = Duration::from_secs(60);

struct Cached {
    token: Secret,
    expires: Instant,
    lifetime: Duration,
}

#[derive(Deserialize)]
struct OauthToken {
    access_token: Secret,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct UserToken {
    token: Secret,
    /// ISO time, with or without fractional seconds.
    expires: String,
}

/// Credentials for one Jamf Pro instance.
pub struct Tokens {
    http: reqwest::Client,
    mode: JamfAuth,
    url: String,
    id: String,
    secret: Secret,
    cached: Mutex<Option<Cached>>,
}

impl Tokens {
    /// Tokens for `mode`; `id`/`secret` are the client id and secret, or the username and password.
    pub fn new(http: reqwest::Client, mode: JamfAuth, url: &str, id: &str, secret: Secret) -> Self {
        Tokens {
            http,
            mode,
            url: url.trim_end_matches('/').to_string(),
            id: id.to_string(),
            secret,
            cached: Mutex::new(None),
        }
    }

    /// Adds the credential to `request`.
    pub async fn authorize(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(reqwest::RequestBuilder, Option<Secret>), SourceError> {
        if self.mode == JamfAuth::Basic {
            return Ok((
                request.basic_auth(&self.id, Some(self.secret.expose())),
                None,
            ));
        }
        let token = self.bearer().await?;
        Ok((request.bearer_auth(token.expose()), Some(token)))
    }

    async fn bearer(&self) -> Result<Secret, SourceError> {
        let mut cached = self.cached.lock().await;
        let now = Instant::now();
        if let Some(c) = cached.as_ref() {
            let left = c.expires.saturating_duration_since(now);
            let margin = RENEW_BEFORE.min(c.lifetime / 2);
            if left > margin {
                return Ok(c.token.clone());
            }
            if self.mode == JamfAuth::User && !left.is_zero() {
                let url = format!("{}/api/v1/auth/keep-alive", self.url);
                let request = self.http.post(&url).bearer_auth(c.token.expose());
                if let Ok(kept) = read_token_json::<UserToken>(send(request, &url).await?).await {
                    let fresh = user_cache(kept);
                    let token = fresh.token.clone();
                    *cached = Some(fresh);
                    return Ok(token);
                }
            }
        }
        let fresh = self.fetch().await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    async fn fetch(&self) -> Result<Cached, SourceError> {
        match self.mode {
            JamfAuth::ApiClient => {
                let url = format!("{}/api/oauth/token", self.url);
                let form = [
                    ("client_id", self.id.as_str()),
                    ("client_secret", self.secret.expose()),
                    ("grant_type", "client_credentials"),
                ];
                let token: OauthToken =
                    read_token_json(send(self.http.post(&url).form(&form), &url).await?).await?;
                let lifetime = Duration::from_secs(token.expires_in.unwrap_or(1200));
                Ok(Cached {
                    token: token.access_token,
                    expires: Instant::now() + lifetime,
                    lifetime,
                })
            }
            JamfAuth::User | JamfAuth::Basic => {
                let url = format!("{}/api/v1/auth/token", self.url);
                let request = self
                    .http
                    .post(&url)
                    .basic_auth(&self.id, Some(self.secret.expose()));
                let token: UserToken = read_token_json(send(request, &url).await?).await?;
                Ok(user_cache(token))
            }
        }
    }

    /// Drops `refused` so the next request gets a new token.
    pub async fn invalidate(&self, refused: &Secret) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|c| &c.token == refused) {
            *cached = None;
        }
    }
}

fn user_cache(token: UserToken) -> Cached {
    let expires_at = chrono::DateTime::parse_from_rfc3339(&token.expires)
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(|_| chrono::Utc::now() + chrono::Duration::minutes(20));
    let lifetime = (expires_at - chrono::Utc::now())
        .to_std()
        .unwrap_or(Duration::ZERO);
    Cached {
        token: token.token,
        expires: Instant::now() + lifetime,
        lifetime,
    }
}
