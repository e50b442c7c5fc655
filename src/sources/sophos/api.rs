//! Sophos Central wire types and calls: whoami, tenant listing, SIEM pages.
//!
//! Owns: URLs, headers (`Authorization`, `X-Tenant-ID`, `X-Partner-ID`, `X-Organization-ID`) and the
//! JSON shapes. Must not: decide cursors or map records to events (see `mod.rs`). Invariant: a 401
//! renews the token and retries the same request exactly once.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::auth::TokenCache;
use crate::sources::http::{read_json_body, send, JsonBody};
use crate::sources::record_fields::FieldText;
use crate::sources::SourceError;

/// `GET /whoami/v1`.
#[derive(Debug, Clone, Deserialize)]
pub struct Whoami {
    /// Tenant, partner or organization id.
    pub id: String,
    /// `tenant`, `partner` or `organization`.
    #[serde(rename = "idType")]
    pub id_type: String,
    /// Where to call next.
    #[serde(rename = "apiHosts")]
    pub api_hosts: ApiHosts,
}

/// `apiHosts` of whoami.
#[derive(Debug, Clone, Deserialize)]
pub struct ApiHosts {
    /// Global host (partners and organizations list tenants here).
    pub global: Option<String>,
    /// Data-region host; only tenants have one.
    #[serde(rename = "dataRegion")]
    pub data_region: Option<String>,
}

/// One page of `GET /{partner|organization}/v1/tenants`.
#[derive(Debug, Deserialize)]
pub struct TenantPage {
    /// Tenants on this page.
    pub items: Vec<Tenant>,
    /// Paging information (`total` only with `pageTotal=true`).
    #[serde(default)]
    pub pages: Option<Pages>,
}

/// A tenant as the listing shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct Tenant {
    /// Tenant id, sent as `X-Tenant-ID`.
    pub id: String,
    /// The tenant's data-region host.
    #[serde(rename = "apiHost")]
    pub api_host: Option<String>,
}

/// `pages` of a listing.
#[derive(Debug, Deserialize)]
pub struct Pages {
    /// Number of pages (1-based page numbers).
    pub total: Option<u32>,
}

/// One page of `GET /siem/v1/{events|alerts}`, borrowed from the body.
#[derive(Debug, Deserialize)]
pub struct SiemPage<'a> {
    /// More is waiting: ask again with `next_cursor`.
    #[serde(default)]
    pub has_more: bool,
    /// Where the next request starts.
    pub next_cursor: Option<String>,
    /// Records, kept as the vendor sent them (their text in the body, not copied).
    #[serde(borrow)]
    pub items: Vec<&'a RawValue>,
}

/// The fields of a SIEM record secrelay reads, borrowed from the body; the record itself is
/// kept whole.
#[derive(Debug, Deserialize)]
pub struct SiemItem<'a> {
    /// Stable id (for alerts equal to `event_service_event_id`).
    #[serde(borrow)]
    pub id: Option<FieldText<'a>>,
    /// Server time, ISO 8601.
    #[serde(borrow)]
    pub created_at: Option<FieldText<'a>>,
    /// Endpoint time, ISO 8601.
    #[serde(borrow)]
    pub when: Option<FieldText<'a>>,
    /// `none`, `low`, `medium`, `high`, `very_high`.
    #[serde(borrow)]
    pub severity: Option<FieldText<'a>>,
}

/// Authenticated calls to one Sophos Central account.
pub struct Api {
    http: reqwest::Client,
    tokens: TokenCache,
}

impl Api {
    /// Calls made with tokens from `tokens`.
    pub fn new(http: reqwest::Client, tokens: TokenCache) -> Self {
        Api { http, tokens }
    }

    /// `GET url` with a bearer token and `headers`, as JSON `T`; renews the token once on 401.
    pub async fn get<T: DeserializeOwned>(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        query: &[(&str, String)],
    ) -> Result<T, SourceError> {
        self.get_body(url, headers, query).await?.parse()
    }

    /// As [`Api::get`], but the body itself, for the caller to parse into types that borrow from
    /// it (records kept as raw text, never copied or parsed twice).
    pub async fn get_body(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        query: &[(&str, String)],
    ) -> Result<JsonBody, SourceError> {
        let mut renewed = false;
        loop {
            let token = self.tokens.bearer().await?;
            let mut request = self.http.get(url).bearer_auth(token.expose()).query(query);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let response = send(request, url).await?;
            if response.status() == reqwest::StatusCode::UNAUTHORIZED && !renewed {
                tracing::info!(url, "token refused; renewing it once");
                self.tokens.invalidate(&token).await;
                renewed = true;
                continue;
            }
            return read_json_body(response).await;
        }
    }
}
