//! Code42 / Incydr simulator: OAuth (`/v1/oauth`, a JWT carrying `tenantUid`), the legacy console
//! (`ServerEnv`, the key-value store, `/api/v3/oauth/token`, `/api/v3/auth/jwt`,
//! `/api/v3/customer/my`), file events v2 and legacy v1/v2 with real `pgToken` semantics, alerts with
//! details, and sessions that change over time, on loopback.
//!
//! Owns: the simulated tenant's data (added by tests through methods) and injectable faults.
//! Must not: be reachable from anything but loopback. Invariants, as the real API: `pgToken: ""`
//! starts token paging and `nextPgToken` is the id of the last event on the page; without a token
//! `pgNum` paging stops at 10 000 results; an unknown token is HTTP 400 `INVALID_PAGE_TOKEN`; an
//! event is searchable only from its `visible_from` time, which can trail `event.inserted`.
//!
//! Quirks modelled (harsher where the sources are silent), each with where it comes from
//! (reference/vendor-apis.md):
//! - Many file events and alerts share one timestamp: tests add them at one instant
//!   (`add_file_event`, `add_alerts_at`), so every cursor field has ties (§1.4 timestamps are
//!   milliseconds; §1.8 code42cli and the Incydr CLI keep the ids seen at the last timestamp
//!   precisely because of ties).
//! - `ON_OR_AFTER` is inclusive: a query from the newest `createdAt` (or `event.inserted`) seen
//!   repeats the records at that instant on every poll (§1.4 operators, §1.5 alert filters).
//! - File events become searchable late, up to 15 minutes after `event.inserted` (`visible_from`;
//!   DESIGN.md "Cursors and dedup", §1.4 "inserted … typically very soon after ingested").
//! - Alerts page by 0-based `pgNum` with `pgSize` 1–500, in `createdAt` order; ties are broken
//!   arbitrarily but stably (a hash of the id), so a new alert at an old instant can sort before
//!   ones already served (§1.5: no tie-break is documented).
//! - Sessions change long after they began: an analyst closes one, a note or new data moves its
//!   `lastUpdated`, whatever its `beginTime` (`update_session`; §1.5 states, §1.8 "sessions keep
//!   changing"). `GET /v1/sessions` filters on `beginTime` only (`on_or_after`, `before`), and
//!   `GET /v1/sessions/{id}` returns one session or 404 (§1.5).
//! - Tokens expire: a refused token is HTTP 401 until a new one is issued (`expire_tokens`;
//!   §1.3 py42 renews once on 401).
//! - Records the source cannot use (no id, no `createdAt`) can be served as they are
//!   (`add_raw_file_event`, `add_raw_alert`, `add_raw_session`); the API types make every field
//!   optional (§1.7).
//!
//! Time: the real clock, or a simulated one (`set_now`, `clock`) that a test moves by hand so
//! windows, visibility and `lastUpdated` do not depend on how fast the test runs.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use chrono::{DateTime, Duration, SecondsFormat, TimeZone, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{iso_millis as iso, json_bytes, mix};

/// Results `pgNum` paging can reach at most.
pub const PG_NUM_CAP: usize = 10_000;

/// What the simulator accepts.
#[derive(Debug, Clone)]
pub struct Code42SimConfig {
    /// API client id (also the legacy console's client id).
    pub client_id: String,
    /// API client secret.
    pub client_secret: String,
    /// Legacy console username.
    pub username: String,
    /// Legacy console password.
    pub password: String,
    /// The tenant's id (`tenantUid`).
    pub tenant_id: String,
    /// Token lifetime, seconds.
    pub token_lifetime_secs: u64,
    /// Seed of generated data.
    pub seed: u64,
}

impl Default for Code42SimConfig {
    fn default() -> Self {
        Code42SimConfig {
            client_id: "key-42".into(),
            client_secret: "sim-code42-secret".into(),
            username: "admin@example.com".into(),
            password: "sim-password".into(),
            tenant_id: "1d71796f-af5b-4231-9d8e-df6434da4663".into(),
            token_lifetime_secs: 900,
            seed: 42,
        }
    }
}

/// Faults for the next requests; counters count down as they fire.
#[derive(Debug, Default)]
pub struct Code42Faults {
    /// Answer this many file-event queries with 429.
    pub rate_limit: AtomicU64,
    /// `Retry-After` seconds sent with those 429s.
    pub retry_after_secs: AtomicU64,
    /// Answer this many token-bearing file-event queries with `INVALID_PAGE_TOKEN`.
    pub invalid_page_token: AtomicU64,
    /// Delay every data response by this many milliseconds.
    pub delay_ms: AtomicU64,
}

fn take(counter: &AtomicU64) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// One request as the simulator saw it.
#[derive(Debug, Clone)]
pub struct Code42Request {
    /// When it arrived.
    pub at: Instant,
    /// Path.
    pub path: String,
    /// `pgToken` sent, for file-event queries (`None`: absent or null).
    pub pg_token: Option<String>,
    /// The JSON body of a POST.
    pub body: Value,
    /// Status answered.
    pub status: u16,
}

/// A stored file event: where it sorts and the numbers its record is rendered from when served
/// (a generated record is a pure function of the seed and `k`), 40 bytes, so millions fit.
#[derive(Debug, Clone)]
struct FileEventEntry {
    /// Sequence number: the n-th file event added (raw ones too).
    k: u64,
    inserted_ms: i64,
    timestamp_ms: i64,
    visible_from_ms: i64,
    /// Served as it is instead of a rendered event (a record the source must reject).
    raw: Option<Box<Value>>,
}

impl FileEventEntry {
    /// Its `event.id`: generated from `k`, or for a raw record a key that sorts first among the
    /// events of its millisecond.
    fn id(&self, seed: u64) -> String {
        match self.raw {
            Some(_) => raw_file_event_id(self.k),
            None => file_event_id(seed, self.k),
        }
    }
}

/// The id of generated file event `k`.
fn file_event_id(seed: u64, k: u64) -> String {
    let r = mix(seed ^ mix(k));
    // Real ids can contain double quotes; one in a few hundred here does.
    let quote = if k % 397 == 7 { "\"q\"" } else { "" };
    format!(
        "0_{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}_{}_{}{quote}",
        r >> 32,
        (r >> 16) & 0xffff,
        r & 0xfff,
        (r >> 20) & 0xfff,
        mix(r) & 0xffff_ffff_ffff,
        935_873_453_596_901_068u64 + (r % 50),
        k
    )
}

/// The sort key of raw file event `k` (the record itself may have no id).
fn raw_file_event_id(k: u64) -> String {
    format!("\u{0}raw-{k}")
}

/// The `k` an id of either kind carries (it still has to be checked against that event's id).
fn k_of_id(id: &str) -> Option<u64> {
    if let Some(k) = id.strip_prefix("\u{0}raw-") {
        return k.parse().ok();
    }
    let id = id.strip_suffix("\"q\"").unwrap_or(id);
    id.rsplit_once('_')?.1.parse().ok()
}

/// Whether `e` sorts before an event inserted at `inserted_ms` with id `id`: by (inserted, id),
/// the id computed only for a tie.
fn sorts_before(seed: u64, e: &FileEventEntry, inserted_ms: i64, id: &str) -> bool {
    match e.inserted_ms.cmp(&inserted_ms) {
        std::cmp::Ordering::Less => true,
        std::cmp::Ordering::Greater => false,
        std::cmp::Ordering::Equal => e.id(seed).as_str() < id,
    }
}

/// Sorts by (inserted, id): by time (stable, linear on sorted input), then each run of ties by id.
fn sort_file_events(seed: u64, events: &mut [FileEventEntry]) {
    events.sort_by_key(|e| e.inserted_ms);
    let mut from = 0;
    while from < events.len() {
        let ms = events[from].inserted_ms;
        let to = from + events[from..].partition_point(|e| e.inserted_ms == ms);
        if to - from > 1 {
            events[from..to].sort_by_cached_key(|e| e.id(seed));
        }
        from = to;
    }
}

/// Every file event added.
#[derive(Default)]
struct FileEvents {
    /// Sorted by (inserted, id).
    sorted: Vec<FileEventEntry>,
    /// `inserted_ms` of event `k`, indexed by `k`: finds a `pgToken`'s event by binary search.
    inserted_of: Vec<i64>,
    /// The latest `visible_from_ms` of all: from then on every event is searchable.
    all_visible_from_ms: i64,
}

impl FileEvents {
    /// Adds events whose `k`s follow on from `inserted_of`.
    fn add(&mut self, seed: u64, mut new: Vec<FileEventEntry>) {
        for e in &new {
            debug_assert_eq!(e.k, self.inserted_of.len() as u64);
            self.inserted_of.push(e.inserted_ms);
            self.all_visible_from_ms = self.all_visible_from_ms.max(e.visible_from_ms);
        }
        if let [one] = &new[..] {
            let id = one.id(seed);
            let at = self
                .sorted
                .partition_point(|e| sorts_before(seed, e, one.inserted_ms, &id));
            self.sorted.extend(new);
            self.sorted[at..].rotate_right(1);
            return;
        }
        sort_file_events(seed, &mut new);
        let in_order = match (self.sorted.last(), new.first()) {
            (Some(last), Some(first)) => {
                !sorts_before(seed, first, last.inserted_ms, &last.id(seed))
            }
            _ => true,
        };
        self.sorted.extend(new);
        if !in_order {
            sort_file_events(seed, &mut self.sorted);
        }
    }

    /// Where the event with id `id` sits in `sorted`, if there is one.
    fn index_of(&self, seed: u64, id: &str) -> Option<usize> {
        let k = k_of_id(id)?;
        let inserted_ms = *self.inserted_of.get(usize::try_from(k).ok()?)?;
        let at = self
            .sorted
            .partition_point(|e| sorts_before(seed, e, inserted_ms, id));
        self.sorted
            .get(at)
            .filter(|e| e.k == k && e.id(seed) == id)
            .map(|_| at)
    }
}

struct Shared {
    config: Code42SimConfig,
    base_url: String,
    file_events: RwLock<FileEvents>,
    alerts: RwLock<Vec<Value>>,
    sessions: RwLock<Vec<Value>>,
    faults: Code42Faults,
    token_requests: AtomicU64,
    tokens: super::TokenLedger,
    requests: Mutex<Vec<Code42Request>>,
    /// Simulated time in epoch ms; 0: the real clock.
    now_ms: Arc<AtomicI64>,
}

impl Shared {
    fn now_ms(&self) -> i64 {
        match self.now_ms.load(Ordering::SeqCst) {
            0 => Utc::now().timestamp_millis(),
            ms => ms,
        }
    }
}

/// Where the alerts' tie-break puts `id` among alerts with the same `createdAt`: arbitrary but
/// stable (a hash of the id), as no order is documented.
fn tie_break(id: &str) -> u64 {
    id.bytes().fold(0x5eed_u64, |h, b| mix(h ^ u64::from(b)))
}

fn created_micros(alert: &Value) -> i64 {
    alert["createdAt"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or(i64::MIN, |t| t.timestamp_micros())
}

/// A running simulator. Dropping it stops the server.
pub struct Code42Sim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    _server: super::ServerTask,
}

fn iso_micros(ms: i64, extra_micros: u64) -> String {
    let t = Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
        + Duration::microseconds((extra_micros % 1000) as i64);
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl Code42Sim {
    /// Starts on `127.0.0.1` on a free port, with no data.
    pub async fn start(config: Code42SimConfig) -> std::io::Result<Code42Sim> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            base_url: format!("http://{addr}"),
            config,
            file_events: RwLock::new(FileEvents::default()),
            alerts: RwLock::new(Vec::new()),
            sessions: RwLock::new(Vec::new()),
            faults: Code42Faults::default(),
            token_requests: AtomicU64::new(0),
            tokens: super::TokenLedger::default(),
            requests: Mutex::new(Vec::new()),
            now_ms: Arc::new(AtomicI64::new(0)),
        });
        let app = Router::new()
            .route("/v1/oauth", post(oauth))
            .route("/v2/file-events", post(file_events_v2))
            .route("/v1/alerts/query-alerts", post(query_alerts))
            .route("/v1/alerts/query-details", post(query_details))
            .route("/v1/sessions", get(sessions))
            .route("/v1/sessions/{id}", get(session_by_id))
            .route("/api/v1/ServerEnv", get(server_env))
            .route("/simple-key-value-store/v1/{key}", get(key_value))
            .route("/api/v3/oauth/token", post(legacy_oauth))
            .route("/api/v3/auth/jwt", get(legacy_login))
            .route("/api/v3/customer/my", get(customer))
            .route(
                "/forensic-search/queryservice/api/{version}/fileevent",
                post(file_events_legacy),
            )
            .route("/svc/api/v1/query-alerts", post(query_alerts))
            .route("/svc/api/v1/query-details", post(query_details))
            .with_state(shared.clone());
        let server = super::spawn_server(listener, app, None);
        Ok(Code42Sim {
            shared,
            addr,
            _server: server,
        })
    }

    /// Base URL (gateway and console alike).
    pub fn url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// Listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The fault switches.
    pub fn faults(&self) -> &Code42Faults {
        &self.shared.faults
    }

    /// Switches to simulated time, now `at` (and stays there until moved again).
    pub fn set_now(&self, at: DateTime<Utc>) {
        self.shared
            .now_ms
            .store(at.timestamp_millis().max(1), Ordering::SeqCst);
    }

    /// The simulator's present: simulated time once `set_now` was called, else the real clock.
    pub fn now(&self) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(self.shared.now_ms())
            .single()
            .unwrap_or_default()
    }

    /// A clock reading the simulator's present, for a source under test to share it.
    pub fn clock(&self) -> impl Fn() -> DateTime<Utc> + Send + Sync + 'static {
        let now_ms = self.shared.now_ms.clone();
        move || match now_ms.load(Ordering::SeqCst) {
            0 => Utc::now(),
            ms => Utc.timestamp_millis_opt(ms).single().unwrap_or_default(),
        }
    }

    /// Refuse every token issued so far.
    pub fn expire_tokens(&self) {
        self.shared.tokens.expire_all();
    }

    /// Token requests answered so far.
    pub fn token_requests(&self) -> u64 {
        self.shared.token_requests.load(Ordering::SeqCst)
    }

    /// Every data request so far.
    pub fn requests(&self) -> Vec<Code42Request> {
        self.shared
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Adds `count` file events inserted from `first_inserted`, `spacing` apart, each detected on
    /// the device `detected_before` earlier. Returns their ids.
    pub fn add_file_events(
        &self,
        count: usize,
        first_inserted: DateTime<Utc>,
        spacing: Duration,
        detected_before: Duration,
    ) -> Vec<String> {
        self.load_file_events(count, first_inserted, spacing, detected_before)
            .map(|k| file_event_id(self.shared.config.seed, k))
            .collect()
    }

    /// Adds `count` file events as [`Code42Sim::add_file_events`] does, in one step and without
    /// making their ids (a benchmark's millions: each costs 48 bytes here, its record is rendered
    /// when served). Returns their sequence numbers; [`Code42Sim::file_event_id`] gives their ids.
    pub fn load_file_events(
        &self,
        count: usize,
        first_inserted: DateTime<Utc>,
        spacing: Duration,
        detected_before: Duration,
    ) -> std::ops::Range<u64> {
        let seed = self.shared.config.seed;
        let mut events = self
            .shared
            .file_events
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let first = events.inserted_of.len() as u64;
        let new = (0..count)
            .map(|i| {
                let inserted = first_inserted + spacing * i as i32;
                FileEventEntry {
                    k: first + i as u64,
                    inserted_ms: inserted.timestamp_millis(),
                    timestamp_ms: (inserted - detected_before).timestamp_millis(),
                    visible_from_ms: inserted.timestamp_millis(),
                    raw: None,
                }
            })
            .collect();
        events.add(seed, new);
        first..first + count as u64
    }

    /// The id of the file event with sequence number `k` (see [`Code42Sim::load_file_events`]),
    /// unless it was added raw.
    pub fn file_event_id(&self, k: u64) -> String {
        file_event_id(self.shared.config.seed, k)
    }

    /// Adds one file event, searchable from `visible_from`. Returns its id.
    pub fn add_file_event(
        &self,
        inserted: DateTime<Utc>,
        detected: DateTime<Utc>,
        visible_from: DateTime<Utc>,
    ) -> String {
        let seed = self.shared.config.seed;
        let mut events = self
            .shared
            .file_events
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let k = events.inserted_of.len() as u64;
        let entry = FileEventEntry {
            k,
            inserted_ms: inserted.timestamp_millis(),
            timestamp_ms: detected.timestamp_millis(),
            visible_from_ms: visible_from.timestamp_millis(),
            raw: None,
        };
        events.add(seed, vec![entry]);
        file_event_id(seed, k)
    }

    /// Adds a file event served exactly as `record` (say, one without `event.id`), filed under
    /// insertion time `inserted` and searchable at once.
    pub fn add_raw_file_event(&self, inserted: DateTime<Utc>, record: Value) {
        let seed = self.shared.config.seed;
        let mut events = self
            .shared
            .file_events
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let k = events.inserted_of.len() as u64;
        let entry = FileEventEntry {
            k,
            inserted_ms: inserted.timestamp_millis(),
            timestamp_ms: inserted.timestamp_millis(),
            visible_from_ms: inserted.timestamp_millis(),
            raw: Some(Box::new(record)),
        };
        events.add(seed, vec![entry]);
    }

    /// Adds `count` alerts that all share the `createdAt` `created` (to the microsecond), named
    /// `name 0`, `name 1`, ... Returns their ids.
    pub fn add_alerts_at(&self, created: DateTime<Utc>, name: &str, count: usize) -> Vec<String> {
        (0..count)
            .map(|i| self.push_alert(created, &format!("{name} {i}"), 0, true))
            .collect()
    }

    /// Adds an alert served exactly as `record` (say, one without `id` or with a bad
    /// `createdAt`), sorted as if created at `created`.
    pub fn add_raw_alert(&self, created: DateTime<Utc>, mut record: Value) {
        let mut alerts = self
            .shared
            .alerts
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if created_micros(&record) == i64::MIN {
            // Sorted (and matched by the ON_OR_AFTER filter) by this hidden key instead.
            record["_simCreatedAt"] = json!(created.to_rfc3339_opts(SecondsFormat::Micros, true));
        }
        alerts.push(record);
        sort_alerts(&mut alerts);
    }

    /// Adds an alert created at `created` with `observations` observations. Returns its id.
    pub fn add_alert(&self, created: DateTime<Utc>, name: &str, observations: usize) -> String {
        self.push_alert(created, name, observations, false)
    }

    /// Adds an alert; `exact`: `createdAt` is `created` as given, else its millisecond plus a few
    /// generated microseconds (as real `createdAt`s have).
    fn push_alert(
        &self,
        created: DateTime<Utc>,
        name: &str,
        observations: usize,
        exact: bool,
    ) -> String {
        let mut alerts = self
            .shared
            .alerts
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let n = alerts.len() as u64;
        let r = mix(self.shared.config.seed ^ mix(n + 7_000_000));
        let id = format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            r >> 32,
            (r >> 16) & 0xffff,
            r & 0xfff,
            (r >> 8) & 0xfff,
            mix(r) & 0xffff_ffff_ffff
        );
        let created_text = if exact {
            created.to_rfc3339_opts(SecondsFormat::Micros, true)
        } else {
            iso_micros(created.timestamp_millis(), r)
        };
        alerts.push(json!({
            "type$": "ALERT_DETAILS",
            "tenantId": self.shared.config.tenant_id,
            "type": "FED_ENDPOINT_EXFILTRATION",
            "id": id,
            "createdAt": created_text,
            "state": "OPEN",
            "name": name,
            "description": "Files moved to removable media",
            "actor": format!("user{}@example.com", r % 20),
            "actorId": format!("{}", 1_068_824_450_489_230_000u64 + r % 100),
            "target": "N/A",
            "severity": "HIGH",
            "riskSeverity": (["LOW", "MODERATE", "HIGH", "CRITICAL"])[(r % 4) as usize],
            "ruleId": format!("rule-{}", r % 5),
            "watchlists": [{"type$": "WATCHLIST", "id": "w-1", "name": "Departing Employee", "type": "DEPARTING_EMPLOYEE", "isSignificant": true}],
            "observations": (0..observations).map(|o| json!({
                "type$": "OBSERVATION",
                "id": format!("{id}-obs-{o}"),
                "observedAt": created_text,
                "lastObservedAt": created_text,
                "type": "FedEndpointExfiltration",
                "data": json!({"type$": "OBSERVED_ENDPOINT_ACTIVITY", "id": format!("{id}-obs-{o}"), "files": [{"name": format!("secret-{o}.pdf")}]}).to_string(),
            })).collect::<Vec<_>>(),
            "note": null,
        }));
        sort_alerts(&mut alerts);
        id
    }

    /// Adds a session served exactly as `record` (say, one without `sessionId`).
    pub fn add_raw_session(&self, record: Value) {
        self.shared
            .sessions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(record);
    }

    /// The current state of session `id` (its last `states` entry) and its `lastUpdated`.
    pub fn session_state(&self, id: &str) -> Option<(String, i64)> {
        let sessions = self
            .shared
            .sessions
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let session = sessions.iter().find(|s| s["sessionId"] == id)?;
        let state = session["states"].as_array()?.last()?["state"].as_str()?;
        Some((state.to_string(), session["lastUpdated"].as_i64()?))
    }

    /// Adds an open session that began at `begin`. Returns its id.
    pub fn add_session(&self, begin: DateTime<Utc>) -> String {
        let mut sessions = self
            .shared
            .sessions
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let id = format!("session-{}", sessions.len() + 1);
        let now = self.shared.now_ms();
        sessions.push(json!({
            "sessionId": id,
            "tenantId": self.shared.config.tenant_id,
            "actorId": "1068824450489230065",
            "actorName": "engineer@example.com",
            "userId": "u-1",
            "type": "STANDARD",
            "beginTime": begin.timestamp_millis(),
            "endTime": begin.timestamp_millis() + 600_000,
            "firstObserved": begin.timestamp_millis(),
            "lastUpdated": now,
            "contextSummary": "Engineer moved files",
            "exfiltrationSummary": "3 files to removable media",
            "criticalEvents": 0, "highEvents": 1, "moderateEvents": 2, "lowEvents": 0, "noRiskEvents": 0,
            "notes": [],
            "riskIndicators": [{"eventCount": 3, "id": "ri-1", "name": "Removable media", "weight": 3}],
            "scores": [{"score": 7, "severity": 2, "sourceTimestamp": now}],
            "states": [{"sourceTimestamp": now, "state": "OPEN", "stateV2": "OPEN", "userId": null}],
            "triggeredAlerts": [{"alertId": "a-1", "lessonId": null, "ruleId": "rule-1", "ruleName": "USB exfiltration"}],
            "contentInspectionResults": null,
        }));
        id
    }

    /// Moves session `id` to `state`, as an analyst would; `lastUpdated` becomes now (strictly
    /// later than before). Returns the new `lastUpdated`.
    pub fn update_session(&self, id: &str, state: &str) -> Option<i64> {
        let mut sessions = self
            .shared
            .sessions
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let session = sessions.iter_mut().find(|s| s["sessionId"] == id)?;
        let previous = session["lastUpdated"].as_i64().unwrap_or(0);
        let now = self.shared.now_ms().max(previous + 1);
        session["lastUpdated"] = json!(now);
        if let Some(states) = session["states"].as_array_mut() {
            states.push(json!({"sourceTimestamp": now, "state": state, "stateV2": state, "userId": "analyst"}));
        }
        Some(now)
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering

const ACTIONS: [&str; 5] = [
    "file-created",
    "file-modified",
    "removable-media-created",
    "application-read",
    "file-deleted",
];
const SEVERITIES: [&str; 5] = ["NO_RISK", "LOW", "MODERATE", "HIGH", "CRITICAL"];

/// A v2 file event as a `Value` (for field filters and as the reference [`write_v2`] is tested
/// against).
fn render_v2(seed: u64, e: &FileEventEntry) -> Value {
    let r = mix(seed ^ mix(e.k));
    json!({
        "@timestamp": iso(e.timestamp_ms),
        "event": {
            "id": e.id(seed),
            "inserted": iso_micros(e.inserted_ms, r),
            "ingested": iso(e.inserted_ms - 1500),
            "action": ACTIONS[(r % 5) as usize],
            "observer": "Endpoint",
            "shareType": [],
            "relatedEvents": [],
        },
        "user": {
            "email": format!("user{}@example.com", r % 20),
            "id": format!("{}", 912_098_363_086_307_000u64 + r % 20),
            "deviceUid": format!("{}", 935_873_453_596_901_068u64 + r % 50),
        },
        "file": {
            "name": format!("report-{}.docx", e.k),
            "directory": format!("C:/Users/user{}/Documents/", r % 20),
            "category": "Document",
            "sizeInBytes": 1000 + r % 1_000_000,
            "created": iso(e.timestamp_ms - 60_000),
            "modified": iso(e.timestamp_ms - 30_000),
            "hash": {"md5": format!("{:032x}", (u128::from(r) << 64) | u128::from(mix(r))), "sha256": null},
            "url": null,
            "cloudDriveId": null,
        },
        "source": {
            "category": "Device",
            "name": format!("DESKTOP-{:04}", r % 50),
            "domain": "corp.example.com",
            "ip": format!("50.237.{}.{}", (r >> 8) % 256, (r >> 16) % 254 + 1),
            "privateIp": [format!("192.168.{}.{}", (r >> 24) % 256, (r >> 32) % 254 + 1)],
            "operatingSystem": "Windows 10",
        },
        "destination": {"category": "Removable Media", "name": "SanDisk Cruzer"},
        "process": {"executable": "C:\\Windows\\explorer.exe", "owner": "CORP\\user"},
        "risk": {"score": r % 20, "severity": SEVERITIES[(r % 5) as usize], "indicators": [], "trusted": false},
    })
}

/// Writes the v2 file event `e` as JSON, byte for byte what serialising [`render_v2`] gives
/// (keys in `BTreeMap` order), without building it.
fn write_v2(out: &mut Vec<u8>, seed: u64, e: &FileEventEntry) {
    use json_bytes::{string, time, uint};
    let r = mix(seed ^ mix(e.k));
    let user = r % 20;
    out.extend_from_slice(b"{\"@timestamp\":");
    time(out, e.timestamp_ms, 0, 3);
    out.extend_from_slice(
        b",\"destination\":{\"category\":\"Removable Media\",\"name\":\"SanDisk Cruzer\"},\"event\":{\"action\":",
    );
    string(out, ACTIONS[(r % 5) as usize]);
    out.extend_from_slice(b",\"id\":");
    string(out, &e.id(seed));
    out.extend_from_slice(b",\"ingested\":");
    time(out, e.inserted_ms - 1500, 0, 3);
    out.extend_from_slice(b",\"inserted\":");
    time(out, e.inserted_ms, r % 1000, 6);
    out.extend_from_slice(
        b",\"observer\":\"Endpoint\",\"relatedEvents\":[],\"shareType\":[]},\"file\":{\"category\":\"Document\",\"cloudDriveId\":null,\"created\":",
    );
    time(out, e.timestamp_ms - 60_000, 0, 3);
    out.extend_from_slice(b",\"directory\":\"C:/Users/user");
    uint(out, user);
    out.extend_from_slice(b"/Documents/\",\"hash\":{\"md5\":\"");
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{:016x}{:016x}", r, mix(r));
    out.extend_from_slice(b"\",\"sha256\":null},\"modified\":");
    time(out, e.timestamp_ms - 30_000, 0, 3);
    out.extend_from_slice(b",\"name\":\"report-");
    uint(out, e.k);
    out.extend_from_slice(b".docx\",\"sizeInBytes\":");
    uint(out, 1000 + r % 1_000_000);
    out.extend_from_slice(
        br#","url":null},"process":{"executable":"C:\\Windows\\explorer.exe","owner":"CORP\\user"},"risk":{"indicators":[],"score":"#,
    );
    uint(out, r % 20);
    out.extend_from_slice(b",\"severity\":");
    string(out, SEVERITIES[(r % 5) as usize]);
    out.extend_from_slice(
        b",\"trusted\":false},\"source\":{\"category\":\"Device\",\"domain\":\"corp.example.com\",\"ip\":\"50.237.",
    );
    uint(out, (r >> 8) % 256);
    out.push(b'.');
    uint(out, (r >> 16) % 254 + 1);
    out.extend_from_slice(b"\",\"name\":\"DESKTOP-");
    let _ = write!(out, "{:04}", r % 50);
    out.extend_from_slice(b"\",\"operatingSystem\":\"Windows 10\",\"privateIp\":[\"192.168.");
    uint(out, (r >> 24) % 256);
    out.push(b'.');
    uint(out, (r >> 32) % 254 + 1);
    out.extend_from_slice(b"\"]},\"user\":{\"deviceUid\":\"");
    uint(out, 935_873_453_596_901_068u64 + r % 50);
    out.extend_from_slice(b"\",\"email\":\"user");
    uint(out, user);
    out.extend_from_slice(b"@example.com\",\"id\":\"");
    uint(out, 912_098_363_086_307_000u64 + r % 20);
    out.extend_from_slice(b"\"}}");
}

fn render_v1(seed: u64, e: &FileEventEntry) -> Value {
    let r = mix(seed ^ mix(e.k));
    const TYPES: [&str; 5] = ["CREATED", "MODIFIED", "DELETED", "READ_BY_APP", "EMAILED"];
    json!({
        "eventId": e.id(seed),
        "eventType": TYPES[(r % 5) as usize],
        "eventTimestamp": iso(e.timestamp_ms),
        "insertionTimestamp": iso(e.inserted_ms),
        "filePath": format!("C:/Users/user{}/Documents/", r % 20),
        "fileName": format!("report-{}.docx", e.k),
        "fileType": "FILE",
        "fileCategory": "DOCUMENT",
        "fileSize": 1000 + r % 1_000_000,
        "md5Checksum": format!("{:032x}", (u128::from(r) << 64) | u128::from(mix(r))),
        "deviceUserName": format!("user{}@example.com", r % 20),
        "osHostName": format!("DESKTOP-{:04}", r % 50),
        "domainName": "corp.example.com",
        "publicIpAddress": format!("50.237.{}.{}", (r >> 8) % 256, (r >> 16) % 254 + 1),
        "deviceUid": format!("{}", 935_873_453_596_901_068u64 + r % 50),
        "userUid": format!("{}", 912_098_363_086_307_000u64 + r % 20),
        "source": "Endpoint",
        "exposure": ["RemovableMedia"],
        "riskSeverity": (["NO_RISK", "LOW", "MODERATE", "HIGH", "CRITICAL"])[(r % 5) as usize],
    })
}

// ---------------------------------------------------------------------------------------------
// Handlers

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"error": [{"primaryErrorKey": message}], "message": message})),
    )
        .into_response()
}

fn record(s: &Shared, path: &str, body: &Value, status: StatusCode) {
    if let Ok(mut log) = s.requests.lock() {
        log.push(Code42Request {
            at: Instant::now(),
            path: path.to_string(),
            pg_token: body["pgToken"].as_str().map(str::to_string),
            body: body.clone(),
            status: status.as_u16(),
        });
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

fn issue_token(s: &Shared) -> String {
    let n = s.token_requests.fetch_add(1, Ordering::SeqCst) + 1;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = engine.encode(r#"{"alg":"RS256","typ":"JWT"}"#);
    let payload = engine.encode(json!({"tenantUid": s.config.tenant_id, "n": n}).to_string());
    let token = format!("{header}.{payload}.sim-signature-{n}");
    s.tokens.issue(&token);
    token
}

fn authorized(s: &Shared, headers: &HeaderMap) -> bool {
    s.tokens.accepts(headers, s.config.token_lifetime_secs)
}

async fn delay(s: &Shared) {
    let ms = s.faults.delay_ms.load(Ordering::SeqCst);
    if ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

async fn oauth(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    match basic_credentials(&headers) {
        Some((id, secret)) if id == s.config.client_id && secret == s.config.client_secret => {
            let token = issue_token(&s);
            Json(json!({"token_type": "bearer", "expires_in": s.config.token_lifetime_secs, "access_token": token}))
                .into_response()
        }
        _ => error(StatusCode::UNAUTHORIZED, "invalid client credentials"),
    }
}

async fn legacy_oauth(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if q.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return error(
            StatusCode::BAD_REQUEST,
            "grant_type must be client_credentials",
        );
    }
    match basic_credentials(&headers) {
        Some((id, secret)) if id == s.config.client_id && secret == s.config.client_secret => {
            legacy_token_response(&s)
        }
        _ => error(StatusCode::UNAUTHORIZED, "invalid client credentials"),
    }
}

fn legacy_token_response(s: &Shared) -> Response {
    let token = issue_token(s);
    Json(json!({"data": {"access_token": token, "token_type": "bearer", "expires_in": s.config.token_lifetime_secs}}))
        .into_response()
}

async fn legacy_login(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    match basic_credentials(&headers) {
        Some((user, pass)) if user == s.config.username && pass == s.config.password => {
            let token = issue_token(&s);
            Json(json!({"data": {"v3_user_token": token}})).into_response()
        }
        _ => error(StatusCode::UNAUTHORIZED, "invalid username or password"),
    }
}

async fn customer(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !authorized(&s, &headers) {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    Json(json!({"data": {"tenantUid": s.config.tenant_id, "name": "Simulated Org"}}))
        .into_response()
}

async fn server_env(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !authorized(&s, &headers) {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    Json(json!({"stsBaseUrl": format!("{}/sts", s.base_url)})).into_response()
}

async fn key_value(State(s): State<Arc<Shared>>, Path(key): Path<String>) -> Response {
    match key.as_str() {
        "FORENSIC_SEARCH-API_URL" | "AlertService-API_URL" => s.base_url.clone().into_response(),
        _ => (StatusCode::NOT_FOUND, "").into_response(),
    }
}

/// A parsed file-event query.
struct FileQuery {
    after: Option<i64>,
    before: Option<i64>,
    equals: Vec<(String, String, bool)>,
    page_size: usize,
    page_number: usize,
    token: Option<String>,
    by_time: bool,
}

fn parse_time_ms(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

fn parse_file_query(body: &Value) -> Result<FileQuery, String> {
    let mut q = FileQuery {
        after: None,
        before: None,
        equals: Vec::new(),
        page_size: body["pgSize"].as_u64().unwrap_or(100) as usize,
        page_number: body["pgNum"].as_u64().unwrap_or(1).max(1) as usize,
        token: body["pgToken"].as_str().map(str::to_string),
        by_time: matches!(
            body["srtKey"].as_str(),
            Some("event.inserted" | "insertionTimestamp")
        ),
    };
    if q.page_size == 0 || q.page_size > 10_000 {
        return Err("pgSize must be 1 to 10000".into());
    }
    let groups = body["groups"].as_array().cloned().unwrap_or_default();
    for group in groups {
        for filter in group["filters"].as_array().cloned().unwrap_or_default() {
            let term = filter["term"].as_str().unwrap_or_default();
            let operator = filter["operator"].as_str().unwrap_or_default();
            let value = filter["value"].as_str().unwrap_or_default();
            match (term, operator) {
                ("event.inserted" | "insertionTimestamp", "ON_OR_AFTER") => {
                    q.after = Some(parse_time_ms(value).ok_or("bad ON_OR_AFTER value")?)
                }
                ("event.inserted" | "insertionTimestamp", "ON_OR_BEFORE") => {
                    q.before = Some(parse_time_ms(value).ok_or("bad ON_OR_BEFORE value")?)
                }
                (_, "IS") => q.equals.push((term.to_string(), value.to_string(), true)),
                (_, "IS_NOT") => q.equals.push((term.to_string(), value.to_string(), false)),
                _ => return Err(format!("unsupported filter {term} {operator}")),
            }
        }
    }
    Ok(q)
}

fn dotted<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, k| v.get(k))
}

async fn file_events_v2(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    file_events(&s, &headers, &body, "/v2/file-events", false).await
}

async fn file_events_legacy(
    State(s): State<Arc<Shared>>,
    Path(version): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/forensic-search/queryservice/api/{version}/fileevent");
    file_events(&s, &headers, &body, &path, version == "v1").await
}

async fn file_events(
    s: &Shared,
    headers: &HeaderMap,
    body: &[u8],
    path: &str,
    v1: bool,
) -> Response {
    delay(s).await;
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let response = file_events_response(s, headers, &body, v1);
    record(s, path, &body, response.status());
    response
}

fn file_events_response(s: &Shared, headers: &HeaderMap, body: &Value, v1: bool) -> Response {
    if !authorized(s, headers) {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    if take(&s.faults.rate_limit) {
        let mut r = error(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
        if let Ok(v) = s
            .faults
            .retry_after_secs
            .load(Ordering::SeqCst)
            .to_string()
            .parse()
        {
            r.headers_mut().insert("retry-after", v);
        }
        return r;
    }
    let q = match parse_file_query(body) {
        Ok(q) => q,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"problems": [{"type": "INVALID_QUERY", "description": e}]})),
            )
                .into_response()
        }
    };
    let invalid_token = (
        StatusCode::BAD_REQUEST,
        Json(
            json!({"problems": [{"type": "INVALID_PAGE_TOKEN", "description": "Invalid page token"}]}),
        ),
    );
    if q.token.as_deref().is_some_and(|t| !t.is_empty()) && take(&s.faults.invalid_page_token) {
        return invalid_token.into_response();
    }
    let now = s.now_ms();
    let seed = s.config.seed;
    let events = s.file_events.read().unwrap_or_else(|e| e.into_inner());
    // Sorted by insertion time, so the time window is one run of the stored order.
    let from = q
        .after
        .map_or(0, |a| events.sorted.partition_point(|e| e.inserted_ms < a));
    let to = q.before.map_or(events.sorted.len(), |b| {
        events.sorted.partition_point(|e| e.inserted_ms <= b)
    });
    let window = events.sorted.get(from..to.max(from)).unwrap_or_default();
    let matched = if q.by_time && q.equals.is_empty() && now >= events.all_visible_from_ms {
        // Every event visible and none filtered out: the run itself, found in O(log n).
        Matched::Run {
            events: &events,
            window,
            from,
        }
    } else {
        let mut picked: Vec<&FileEventEntry> =
            window.iter().filter(|e| e.visible_from_ms <= now).collect();
        if !q.equals.is_empty() {
            picked.retain(|e| {
                let rendered = if v1 {
                    render_v1(seed, e)
                } else {
                    render_v2(seed, e)
                };
                q.equals.iter().all(|(term, value, wanted)| {
                    (dotted(&rendered, term).and_then(Value::as_str) == Some(value.as_str()))
                        == *wanted
                })
            });
        }
        if !q.by_time {
            picked.sort_by_cached_key(|e| e.id(seed));
        }
        Matched::Picked(picked)
    };
    let total = matched.len();
    let (start, token_mode, end_cap) = match q.token.as_deref() {
        None => (
            (q.page_number - 1) * q.page_size,
            false,
            total.min(PG_NUM_CAP),
        ),
        Some("") => (0, true, total),
        Some(token) => match matched.position(seed, token) {
            Some(i) => (i + 1, true, total),
            None => return invalid_token.into_response(),
        },
    };
    let end = (start + q.page_size).min(end_cap);
    let next = if token_mode && end < total {
        matched.get(end.saturating_sub(1)).map(|e| e.id(seed))
    } else {
        None
    };
    let page = (start..end.max(start)).map_while(|i| matched.get(i));
    let body = page_body(
        seed,
        page,
        v1,
        next.as_deref(),
        total,
        end.saturating_sub(start),
    );
    ([(CONTENT_TYPE, "application/json")], body).into_response()
}

/// The events a file-event query matched, in the order served.
enum Matched<'a> {
    /// A run of the stored order (sorted by time, all visible, no field filter): nothing copied.
    Run {
        events: &'a FileEvents,
        window: &'a [FileEventEntry],
        /// Index of `window[0]` in `events.sorted`.
        from: usize,
    },
    /// Picked one by one.
    Picked(Vec<&'a FileEventEntry>),
}

impl<'a> Matched<'a> {
    fn len(&self) -> usize {
        match self {
            Matched::Run { window, .. } => window.len(),
            Matched::Picked(picked) => picked.len(),
        }
    }

    fn get(&self, i: usize) -> Option<&'a FileEventEntry> {
        match self {
            Matched::Run { window, .. } => window.get(i),
            Matched::Picked(picked) => picked.get(i).copied(),
        }
    }

    /// Where the event whose id is `id` is among them.
    fn position(&self, seed: u64, id: &str) -> Option<usize> {
        match self {
            Matched::Run {
                events,
                window,
                from,
            } => events
                .index_of(seed, id)
                .and_then(|at| at.checked_sub(*from))
                .filter(|i| *i < window.len()),
            Matched::Picked(picked) => {
                let k = k_of_id(id)?;
                picked.iter().position(|e| e.k == k && e.id(seed) == id)
            }
        }
    }
}

/// Room reserved per record of a page: a generated v2 record is ~1.27 KB. Sized once, a 10,000-record
/// page is not copied as it grows.
const RECORD_ROOM: usize = 1400;

/// The body of a file-event page of `records` records: `{"fileEvents": [...], "nextPgToken": ...,
/// "problems": [], "totalCount": ...}`, records written straight into the buffer, the same bytes
/// as serialising that object built of `Value`s.
fn page_body<'a>(
    seed: u64,
    page: impl Iterator<Item = &'a FileEventEntry>,
    v1: bool,
    next: Option<&str>,
    total: usize,
    records: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + records * RECORD_ROOM);
    out.extend_from_slice(b"{\"fileEvents\":[");
    for (i, e) in page.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Writing into a Vec cannot fail.
        let _ = match &e.raw {
            Some(raw) => serde_json::to_writer(&mut out, raw),
            None if v1 => serde_json::to_writer(&mut out, &render_v1(seed, e)),
            None => {
                write_v2(&mut out, seed, e);
                Ok(())
            }
        };
    }
    out.extend_from_slice(b"],\"nextPgToken\":");
    match next {
        Some(token) => json_bytes::string(&mut out, token),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"problems\":[],\"totalCount\":");
    json_bytes::uint(&mut out, total as u64);
    out.push(b'}');
    out
}

async fn query_alerts(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    delay(&s).await;
    let response = query_alerts_response(&s, &headers, &body);
    record(&s, "query-alerts", &body, response.status());
    response
}

fn query_alerts_response(s: &Shared, headers: &HeaderMap, body: &Value) -> Response {
    if !authorized(s, headers) {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    if body["tenantId"].as_str() != Some(s.config.tenant_id.as_str()) {
        return error(StatusCode::FORBIDDEN, "tenantId does not match the token");
    }
    let size = body["pgSize"].as_u64().unwrap_or(100) as usize;
    if size == 0 || size > 500 {
        return error(StatusCode::BAD_REQUEST, "pgSize must be 1 to 500");
    }
    let page = body["pgNum"].as_u64().unwrap_or(0) as usize;
    let mut since: Option<String> = None;
    for group in body["groups"].as_array().cloned().unwrap_or_default() {
        for filter in group["filters"].as_array().cloned().unwrap_or_default() {
            let term = filter["term"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_lowercase();
            if term == "createdat" && filter["operator"] == "ON_OR_AFTER" {
                since = filter["value"].as_str().map(str::to_string);
            }
        }
    }
    let since_ms = since.as_deref().and_then(parse_time_ms);
    let alerts = s.alerts.read().unwrap_or_else(|e| e.into_inner());
    let matched: Vec<Value> = alerts
        .iter()
        .filter(|a| since_ms.is_none_or(|ms| sort_micros(a) >= ms * 1000))
        .map(|a| {
            let mut summary = a.clone();
            if let Some(o) = summary.as_object_mut() {
                o.remove("observations");
                o.remove("note");
                o.remove("_simCreatedAt");
                o.insert("type$".into(), json!("ALERT_SUMMARY"));
            }
            summary
        })
        .collect();
    let total = matched.len();
    let items: Vec<Value> = matched.into_iter().skip(page * size).take(size).collect();
    Json(json!({"type$": "ALERT_QUERY_RESPONSE", "alerts": items, "totalCount": total, "problems": []})).into_response()
}

async fn query_details(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if !authorized(&s, &headers) {
        record(&s, "query-details", &body, StatusCode::UNAUTHORIZED);
        return error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let ids: Vec<String> = body["alertIds"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if ids.is_empty() || ids.len() > 100 {
        record(&s, "query-details", &body, StatusCode::BAD_REQUEST);
        return error(StatusCode::BAD_REQUEST, "alertIds must hold 1 to 100 ids");
    }
    let alerts = s.alerts.read().unwrap_or_else(|e| e.into_inner());
    let found: Vec<Value> = alerts
        .iter()
        .filter(|a| {
            a["id"]
                .as_str()
                .is_some_and(|id| ids.iter().any(|i| i == id))
        })
        .map(|a| {
            let mut details = a.clone();
            if let Some(o) = details.as_object_mut() {
                o.remove("_simCreatedAt");
            }
            details
        })
        .collect();
    record(&s, "query-details", &body, StatusCode::OK);
    Json(json!({"type$": "ALERT_DETAILS_RESPONSE", "alerts": found})).into_response()
}

#[derive(Deserialize)]
struct SessionQuery {
    on_or_after: Option<i64>,
    before: Option<i64>,
    page_number: Option<usize>,
    page_size: Option<usize>,
}

async fn sessions(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<SessionQuery>,
) -> Response {
    delay(&s).await;
    if !authorized(&s, &headers) {
        record(&s, "/v1/sessions", &Value::Null, StatusCode::UNAUTHORIZED);
        return error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let size = q.page_size.unwrap_or(50);
    if size == 0 || size > 50 {
        record(&s, "/v1/sessions", &Value::Null, StatusCode::BAD_REQUEST);
        return error(StatusCode::BAD_REQUEST, "page_size must be 1 to 50");
    }
    let mut all: Vec<Value> = s
        .sessions
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|x| {
            q.on_or_after
                .is_none_or(|after| x["beginTime"].as_i64().unwrap_or(0) >= after)
        })
        .cloned()
        .collect();
    all.sort_by_key(|x| {
        (
            x["beginTime"].as_i64(),
            x["sessionId"].as_str().map(str::to_string),
        )
    });
    // `before` is exclusive (epoch ms), as the SDK's parameter name says.
    if let Some(before) = q.before {
        all.retain(|x| x["beginTime"].as_i64().unwrap_or(0) < before);
    }
    let total = all.len();
    let items: Vec<Value> = all
        .into_iter()
        .skip(q.page_number.unwrap_or(0) * size)
        .take(size)
        .collect();
    record(&s, "/v1/sessions", &Value::Null, StatusCode::OK);
    Json(json!({"items": items, "totalCount": total})).into_response()
}

async fn session_by_id(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    delay(&s).await;
    let path = format!("/v1/sessions/{id}");
    if !authorized(&s, &headers) {
        record(&s, &path, &Value::Null, StatusCode::UNAUTHORIZED);
        return error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let found = s
        .sessions
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|x| x["sessionId"].as_str() == Some(id.as_str()))
        .cloned();
    match found {
        Some(session) => {
            record(&s, &path, &Value::Null, StatusCode::OK);
            Json(session).into_response()
        }
        None => {
            record(&s, &path, &Value::Null, StatusCode::NOT_FOUND);
            error(StatusCode::NOT_FOUND, "session not found")
        }
    }
}

/// The instant an alert sorts and filters by: its `createdAt`, or for a raw record without one
/// the hidden key it was added with.
fn sort_micros(alert: &Value) -> i64 {
    match alert.get("_simCreatedAt") {
        Some(hidden) => created_micros(&json!({"createdAt": hidden})),
        None => created_micros(alert),
    }
}

/// `createdAt` order, ties broken by [`tie_break`].
fn sort_alerts(alerts: &mut [Value]) {
    alerts.sort_by_key(|a| {
        (
            sort_micros(a),
            tie_break(a["id"].as_str().unwrap_or_default()),
        )
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(k: u64, inserted_ms: i64) -> FileEventEntry {
        FileEventEntry {
            k,
            inserted_ms,
            timestamp_ms: inserted_ms - 30_000 - k as i64,
            visible_from_ms: inserted_ms,
            raw: None,
        }
    }

    #[test]
    fn written_v2_events_are_the_bytes_of_their_value() {
        for seed in [42, 7, u64::MAX] {
            for k in (0..1200).chain([7 + 397 * 1000, u64::from(u32::MAX)]) {
                let e = entry(k, 1_764_547_200_123 + k as i64 * 997);
                let mut out = Vec::new();
                write_v2(&mut out, seed, &e);
                let expected = serde_json::to_vec(&render_v2(seed, &e)).unwrap();
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    String::from_utf8(expected).unwrap(),
                    "seed {seed} k {k}"
                );
            }
        }
    }

    #[test]
    fn a_page_body_is_the_bytes_of_its_value() {
        let seed = 42;
        let mut raw = entry(3, 1_000);
        raw.raw = Some(Box::new(json!({"no": "id", "n": [1, null]})));
        let entries = [entry(0, 5_000), raw, entry(7, 9_000)];
        for v1 in [false, true] {
            for next in [None, Some("0_a\"q\"")] {
                let body = page_body(seed, entries.iter(), v1, next, 12, entries.len());
                let page: Vec<Value> = entries
                    .iter()
                    .map(|e| match &e.raw {
                        Some(raw) => (**raw).clone(),
                        None if v1 => render_v1(seed, e),
                        None => render_v2(seed, e),
                    })
                    .collect();
                let expected = serde_json::to_vec(&json!({"fileEvents": page, "nextPgToken": next, "problems": [], "totalCount": 12})).unwrap();
                assert_eq!(body, expected);
            }
        }
        let empty = page_body(seed, [].iter(), false, None, 0, 0);
        assert_eq!(
            empty,
            serde_json::to_vec(
                &json!({"fileEvents": [], "nextPgToken": null, "problems": [], "totalCount": 0})
            )
            .unwrap()
        );
    }

    #[test]
    fn ids_give_back_their_k() {
        for k in [0, 7, 404, 123_456_789] {
            assert_eq!(k_of_id(&file_event_id(42, k)), Some(k));
            assert_eq!(k_of_id(&raw_file_event_id(k)), Some(k));
        }
        assert!(file_event_id(42, 404).ends_with("_404\"q\""));
        assert_eq!(k_of_id("no-k-here"), None);
    }

    /// A run of the stored order (the fast path) finds, counts and pages the same events as
    /// picking them one by one (the path every query took before).
    #[test]
    fn a_run_matches_as_picking_does() {
        let seed = 42;
        let mut events = FileEvents::default();
        let times: Vec<i64> = (0..500).map(|i| 1_000 + (i * 7919 % 500) / 3).collect();
        events.add(
            seed,
            times
                .iter()
                .enumerate()
                .map(|(k, t)| entry(k as u64, *t))
                .collect(),
        );
        let mut raw = entry(500, 1_050);
        raw.raw = Some(Box::new(json!({"no": "id"})));
        events.add(seed, vec![raw]);
        let n = events.sorted.len();
        for (from, to) in [(0, n), (10, 200), (37, 38), (n, n)] {
            let window = &events.sorted[from..to];
            let run = Matched::Run {
                events: &events,
                window,
                from,
            };
            let picked = Matched::Picked(window.iter().collect());
            assert_eq!(run.len(), picked.len());
            for i in 0..=window.len() {
                assert_eq!(run.get(i).map(|e| e.k), picked.get(i).map(|e| e.k));
            }
            let mut ids: Vec<String> = events.sorted.iter().map(|e| e.id(seed)).collect();
            ids.extend([
                file_event_id(seed, 9_999),
                raw_file_event_id(3),
                "x_1".into(),
                String::new(),
            ]);
            for id in &ids {
                assert_eq!(run.position(seed, id), picked.position(seed, id), "{id:?}");
            }
        }
    }

    /// Bulk loading sorts as adding one by one does (ties at one millisecond ordered by id),
    /// and every id is found where it sits.
    #[test]
    fn bulk_and_single_adds_sort_alike() {
        let seed = 42;
        let mut one_by_one = FileEvents::default();
        let mut bulk = FileEvents::default();
        // Out of order, with runs of ties (several events per millisecond).
        let times: Vec<i64> = (0..600).map(|i| 1_000 + (i * 7919 % 600) / 4).collect();
        for (k, t) in times.iter().enumerate() {
            one_by_one.add(seed, vec![entry(k as u64, *t)]);
        }
        bulk.add(
            seed,
            times[..300]
                .iter()
                .enumerate()
                .map(|(k, t)| entry(k as u64, *t))
                .collect(),
        );
        bulk.add(
            seed,
            times[300..]
                .iter()
                .enumerate()
                .map(|(k, t)| entry(300 + k as u64, *t))
                .collect(),
        );
        let ks = |f: &FileEvents| f.sorted.iter().map(|e| e.k).collect::<Vec<_>>();
        assert_eq!(ks(&one_by_one), ks(&bulk));
        let keys: Vec<(i64, String)> = bulk
            .sorted
            .iter()
            .map(|e| (e.inserted_ms, e.id(seed)))
            .collect();
        assert!(
            keys.windows(2).all(|w| w[0] < w[1]),
            "sorted by (inserted, id)"
        );
        for (at, e) in bulk.sorted.iter().enumerate() {
            assert_eq!(bulk.index_of(seed, &e.id(seed)), Some(at));
        }
        assert_eq!(
            bulk.index_of(seed, &raw_file_event_id(5)),
            None,
            "event 5 is not raw"
        );
        assert_eq!(
            bulk.index_of(seed, &file_event_id(seed, 600)),
            None,
            "no event 600"
        );
    }
}
