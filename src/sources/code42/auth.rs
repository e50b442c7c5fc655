//! Code42 / Incydr authentication: the Incydr API client (`POST /v1/oauth`, Basic id:secret) and the
//! two legacy console flows (`/api/v3/oauth/token` client credentials, `/api/v3/auth/jwt` user
//! login), plus the tenant id the alert APIs need.
//!
//! Owns: token requests and their cache. Must not: log a secret or a token. Invariant: a token is
//! reused until shortly before `expires_in` and fetched anew at most once per refusal.

use std::time::{Duration, Instant};

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::settings::{Code42Auth, Secret};
use crate::sources::http::{read_json, read_token_json, send};
use crate::sources::SourceError;

/// Renew this long before expiry (the Incydr SDK has no margin and races the expiry).
const RENEW_MARGIN: Duration = Duration::from_secs(60);
/// Lifetime assumed for legacy user tokens, which do not say (renewed on 401 anyway).
const LEGACY_USER_LIFETIME: Duration = Duration::from_secs(20 * 60);

struct Cached {
    token: Secret,
    renew_at: Instant,
}

/// Tokens and the tenant id for one Code42 credential.
pub struct Tokens {
    http: reqwest::Client,
    mode: Code42Auth,
    api_url: String,
    console_url: String,
    client_id: String,
    secret: Secret,
    cached: Mutex<Option<Cached>>,
    tenant: Mutex<Option<String>>,
}

/// Legacy console responses wrap their payload in `{"data": …}`.
fn unwrap_data(value: Value) -> Value {
    match value {
        Value::Object(mut map) if map.contains_key("data") => {
            map.remove("data").unwrap_or(Value::Null)
        }
        other => other,
    }
}

#[derive(Deserialize)]
struct OauthResponse {
    access_token: Secret,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl Tokens {
    /// Tokens for a credential; `console_url` is used by the legacy modes only.
    pub fn new(
        http: reqwest::Client,
        mode: Code42Auth,
        api_url: &str,
        console_url: &str,
        client_id: &str,
        secret: Secret,
    ) -> Self {
        Tokens {
            http,
            mode,
            api_url: api_url.trim_end_matches('/').to_string(),
            console_url: console_url.trim_end_matches('/').to_string(),
            client_id: client_id.to_string(),
            secret,
            cached: Mutex::new(None),
            tenant: Mutex::new(None),
        }
    }

    /// A valid bearer token.
    pub async fn bearer(&self) -> Result<Secret, SourceError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| Instant::now() < c.renew_at) {
            return Ok(c.token.clone());
        }
        let (token, lifetime) = self.fetch().await?;
        let margin = RENEW_MARGIN.min(lifetime / 2);
        *cached = Some(Cached {
            token: token.clone(),
            renew_at: Instant::now() + lifetime - margin,
        });
        Ok(token)
    }

    /// Drops `refused` so the next [`Tokens::bearer`] fetches a new token.
    pub async fn invalidate(&self, refused: &Secret) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|c| &c.token == refused) {
            *cached = None;
        }
    }

    async fn fetch(&self) -> Result<(Secret, Duration), SourceError> {
        let basic = |request: reqwest::RequestBuilder| {
            request.basic_auth(&self.client_id, Some(self.secret.expose()))
        };
        match self.mode {
            Code42Auth::ApiClient => {
                let url = format!("{}/v1/oauth", self.api_url);
                let response = send(basic(self.http.post(&url)), &url).await?;
                let token: OauthResponse = read_token_json(response).await?;
                Ok((
                    token.access_token,
                    Duration::from_secs(token.expires_in.unwrap_or(900)),
                ))
            }
            Code42Auth::LegacyApiClient => {
                let url = format!("{}/api/v3/oauth/token", self.console_url);
                let request =
                    basic(self.http.post(&url)).query(&[("grant_type", "client_credentials")]);
                let body: Value = read_token_json(send(request, &url).await?).await?;
                // serde's message may quote a value of the body: say only what was expected.
                let token: OauthResponse =
                    serde_json::from_value(unwrap_data(body)).map_err(|_| {
                        SourceError::Malformed {
                            url: url.clone(),
                            detail: "the token response has no access_token string".into(),
                        }
                    })?;
                Ok((
                    token.access_token,
                    Duration::from_secs(token.expires_in.unwrap_or(900)),
                ))
            }
            Code42Auth::LegacyUser => {
                let url = format!("{}/api/v3/auth/jwt", self.console_url);
                let request = basic(self.http.get(&url)).query(&[("useBody", "true")]);
                let body: Value = read_token_json(send(request, &url).await?).await?;
                let token = unwrap_data(body)
                    .get("v3_user_token")
                    .and_then(Value::as_str)
                    .map(Secret::new)
                    .ok_or_else(|| SourceError::Malformed {
                        url: url.clone(),
                        detail: "no v3_user_token in the login response".into(),
                    })?;
                Ok((token, LEGACY_USER_LIFETIME))
            }
        }
    }

    /// The tenant id: the `tenantUid` claim of an Incydr token, or `/api/v3/customer/my` on a console.
    pub async fn tenant_id(&self) -> Result<String, SourceError> {
        let mut tenant = self.tenant.lock().await;
        if let Some(t) = tenant.as_ref() {
            return Ok(t.clone());
        }
        let found = match self.mode {
            Code42Auth::ApiClient => {
                let token = self.bearer().await?;
                tenant_from_jwt(token.expose()).ok_or_else(|| SourceError::Malformed {
                    url: format!("{}/v1/oauth", self.api_url),
                    detail: "the access token carries no tenantUid claim".into(),
                })?
            }
            Code42Auth::LegacyApiClient | Code42Auth::LegacyUser => {
                let url = format!("{}/api/v3/customer/my", self.console_url);
                let token = self.bearer().await?;
                let request = self.http.get(&url).bearer_auth(token.expose());
                let body: Value = read_json(send(request, &url).await?).await?;
                unwrap_data(body)
                    .get("tenantUid")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| SourceError::Malformed {
                        url,
                        detail: "no tenantUid in the customer record".into(),
                    })?
            }
        };
        *tenant = Some(found.clone());
        Ok(found)
    }
}

/// The `tenantUid` claim of a JWT (payload only; the signature is the server's business).
pub fn tenant_from_jwt(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("tenantUid")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_comes_from_the_token_claim() {
        // The Incydr SDK's test token: header.payload.signature with {"tenantUid": "abcd-1234"}.
        let payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"tenantUid":"abcd-1234"}"#);
        let token = format!("eyJhbGciOiJub25lIn0.{payload}.sig");
        assert_eq!(tenant_from_jwt(&token).as_deref(), Some("abcd-1234"));
        assert_eq!(tenant_from_jwt("not-a-jwt"), None);
    }

    #[test]
    fn legacy_data_wrapper_is_removed() {
        let v = serde_json::json!({"data": {"tenantUid": "t"}});
        assert_eq!(unwrap_data(v)["tenantUid"], "t");
        assert_eq!(unwrap_data(serde_json::json!({"a": 1}))["a"], 1);
    }
}
