//! Jamf Pro (formerly Casper) source: computer inventory, incrementally, and fleet views derived
//! from full passes (reference/vendor-apis.md §4).
//!
//! Owns: requests (at most `max_connections` in flight, Jamf's guidance is 5), the inventory cursor
//! and the fleet pass. CEF mapping lives in `cef.rs`, the views in `fleet.rs`. Must not: sleep,
//! retry or touch the store.
//!
//! - `inventory` (Jamf Pro API v3, or v1): keyset on `general.reportDate` — filter
//!   `general.reportDate>="<since>"`, sort `general.reportDate:asc,id:asc`. The cursor keeps
//!   `since` and the ids already read at `since` (the `>=` filter repeats them); it steps by page
//!   only past a FULL page that is all `since`, and a short page sends it back to page 0, so a
//!   quiet poll never moves it and a late tie at `since` is still found. Dedup on (id,
//!   reportDate): a computer is forwarded again only when it reported again; one that reports
//!   during a pass moves to the end of the order and is read once, with its new date.
//! - `inventory` (Classic API): the computer list (ids ascending), then each
//!   `/computers/id/{id}`, `page_size` at a time, resuming after the last id processed (not at a
//!   position, which a deletion would shift); records whose `report_date_epoch` is at or after the
//!   start of the previous pass, less an hour for clock disagreement.
//! - fleet views: one pass per interval (Jamf Pro API pages sorted by id, or the Classic list),
//!   shared by every fleet stream of the source, streamed: each stream reads the pass page by page
//!   with its own cursor (`more = true` until its last page), pages are fetched once
//!   (`max_connections` ahead) and dropped when every stream has read them, and the counters are
//!   summed page by page and sent in page-sized chunks at the end. Memory is a few pages, whatever
//!   the fleet size. A computer deleted during a pass may shift another out of this pass's views
//!   (pages are offsets); the next pass has it.
//!
//! Records that cannot become events (no id, a report date that is no time) go to
//! `Page::rejected` and the cursor moves past them. Fields named like a password or secret
//! (Classic `management_password_sha256`) are removed from every record, at any depth, before any
//! event or view is built: the only change made to a vendor record.

//! Parts: `inventory.rs` (the Jamf Pro API keyset), `classic.rs` (the Classic API),
//! `fleet_pass.rs` (the shared fleet pass), `fleet.rs` (the views), `redact.rs` (secrets
//! removed), `auth.rs` (tokens), `cef.rs` (CEF mapping).

mod auth;
pub mod cef;
mod classic;
mod fleet;
mod fleet_pass;
mod inventory;
pub mod mapping;
mod redact;

use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, Semaphore};

use crate::event::{Page, Partition};
use crate::settings::{JamfApi, JamfSettings, SetupError};
use crate::sources::cursor::stream_partitions;
use crate::sources::http::{read_json, send};
use crate::sources::{Source, SourceError};
use auth::Tokens;
pub use fleet::stream_name;
use fleet_pass::FleetPass;

/// Jamf Pro source.
pub struct JamfSource {
    id: String,
    settings: JamfSettings,
    url: String,
    http: reqwest::Client,
    tokens: Tokens,
    limiter: Semaphore,
    fleet: Mutex<Option<FleetPass>>,
}

impl JamfSource {
    /// A source for `settings` (secrets resolved). Fails when the auth mode's credentials were
    /// not resolved.
    pub fn new(
        id: &str,
        settings: JamfSettings,
        http: reqwest::Client,
    ) -> Result<Self, SetupError> {
        let credentials = settings.credentials(&format!("sources.{id}"))?;
        let url = settings.url.trim_end_matches('/').to_string();
        let tokens = Tokens::new(
            http.clone(),
            settings.auth,
            &url,
            &credentials.user,
            credentials.secret,
        );
        Ok(JamfSource {
            id: id.to_string(),
            limiter: Semaphore::new(settings.max_connections as usize),
            settings,
            url,
            http,
            tokens,
            fleet: Mutex::new(None),
        })
    }

    /// `GET path` as JSON, holding one of the `max_connections` permits; renews a token once on 401.
    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, SourceError> {
        match self.get_unless_missing(path, query, false).await? {
            Some(t) => Ok(t),
            None => Err(SourceError::Rejected {
                url: format!("{}{path}", self.url),
                detail: "HTTP 404 Not Found".into(),
            }),
        }
    }

    /// As [`Self::get`]; with `missing_ok`, a 404 (a computer deleted since the list) is `None`.
    async fn get_unless_missing<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        missing_ok: bool,
    ) -> Result<Option<T>, SourceError> {
        let url = format!("{}{path}", self.url);
        let _permit = self
            .limiter
            .acquire()
            .await
            .map_err(|_| SourceError::Unavailable {
                url: url.clone(),
                detail: "source is shutting down".into(),
                retry_after: None,
            })?;
        let mut renewed = false;
        loop {
            let request = self
                .http
                .get(&url)
                .query(query)
                .header("Accept", "application/json");
            let (request, token) = self.tokens.authorize(request).await?;
            let response = send(request, &url).await?;
            if response.status() == reqwest::StatusCode::UNAUTHORIZED && !renewed {
                if let Some(token) = token {
                    self.tokens.invalidate(&token).await;
                    renewed = true;
                    continue;
                }
            }
            if missing_ok && response.status() == reqwest::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            return read_json(response).await.map(Some);
        }
    }

    fn inventory_path(&self) -> &'static str {
        match self.settings.api {
            JamfApi::V1 => "/api/v1/computers-inventory",
            _ => "/api/v3/computers-inventory",
        }
    }

    fn sections(&self) -> Vec<(&'static str, String)> {
        let mut query = vec![("section", "GENERAL".to_string())];
        for section in &self.settings.sections {
            if !section.eq_ignore_ascii_case("GENERAL") {
                query.push(("section", section.to_ascii_uppercase()));
            }
        }
        query
    }
}

impl Source for JamfSource {
    fn id(&self) -> &str {
        &self.id
    }

    async fn partitions(&self) -> Result<Vec<Partition>, SourceError> {
        // Authenticate now, so start-up and `check` fail early on a bad credential.
        let (_, _) = self.tokens.authorize(self.http.get(&self.url)).await?;
        Ok(stream_partitions(
            self.settings.streams.iter().map(|s| stream_name(*s)),
            "",
        ))
    }

    async fn poll(&self, partition: &Partition, cursor: Option<&str>) -> Result<Page, SourceError> {
        match (partition.stream.as_str(), self.settings.api) {
            ("inventory", JamfApi::Classic) => self.poll_inventory_classic(cursor).await,
            ("inventory", _) => self.poll_inventory(cursor).await,
            (stream, _) => self.poll_fleet(stream, cursor).await,
        }
    }
}
