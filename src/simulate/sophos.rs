//! Sophos Central simulator: OAuth token, whoami (tenant, partner, organization), paged tenant
//! listing and the SIEM events/alerts endpoints with the real cursor semantics, on loopback.
//!
//! Owns: deterministic, seeded data generated on demand (record `k` of a stream is a pure function
//! of the seed, tenant, stream and `k`, so a million records cost no memory) and injectable faults.
//! Must not: be reachable from anything but loopback (callers bind 127.0.0.1). Invariant: the cursor
//! is `base64("V2_CURSOR|<time of the last record returned>")` and the next page starts at records
//! `>=` that time, so the record at the boundary repeats, as the real API's can.
//!
//! Scripted mode ([`SophosSimConfig::scripted`]): instead of generated data, each tenant's streams
//! serve exactly the records a test pushed with [`SophosSim::push`], at the times it gave, so a
//! timeline test owns the history. Quirks modelled in both modes, with their sources
//! (reference/vendor-apis.md §2):
//! - the cursor is the time of the last record returned and the next page starts `>=` it (§2.3,
//!   the `V2_CURSOR|<ts>` shape decoded from Sophos' own SIEM script's fixture): every record at the
//!   boundary time comes again. Many records may share one time; a page that is all one time
//!   (more than `limit` records at one instant) would repeat forever here, the harsher reading of
//!   an undocumented case;
//! - `from_date` and cursors older than 24 h are refused with 400 (§2.3);
//! - records only become visible once their time has passed, less `from_date_offset_minutes`;
//! - items are passed through as pushed, so a record without `id` reaches the client as it is;
//! - 401 once a token expired (`expire_tokens`), 429 with `Retry-After`, 503, truncated bodies
//!   ([`Faults`]).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::Deserialize;
use serde_json::json;

use super::mix;

/// Which identity the simulated credential has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// A single tenant.
    Tenant,
    /// A partner with many tenants.
    Partner,
    /// An organization with many tenants.
    Organization,
}

/// What the simulator serves.
#[derive(Debug, Clone)]
pub struct SophosSimConfig {
    /// Accepted client id.
    pub client_id: String,
    /// Accepted client secret.
    pub client_secret: String,
    /// Identity of the credential.
    pub identity: Identity,
    /// Tenants (1 for `Identity::Tenant`).
    pub tenants: usize,
    /// Tenants per listing page.
    pub tenant_page_size: usize,
    /// Events per tenant in all (`None`: keep producing at `rate_per_sec`).
    pub events_per_tenant: Option<u64>,
    /// Events per second per tenant; event `k` is created at `start + k / rate`.
    pub rate_per_sec: f64,
    /// Creation time of event 0.
    pub start: DateTime<Utc>,
    /// Every `alert_every`-th event also raises an alert with the same id.
    pub alert_every: u64,
    /// Seed of all generated data.
    pub seed: u64,
    /// Token lifetime in seconds (`expires_in`).
    pub token_lifetime_secs: u64,
    /// Largest `limit` honoured.
    pub max_limit: usize,
    /// Serve only records pushed with [`SophosSim::push`] (no generated data).
    pub scripted: bool,
}

impl Default for SophosSimConfig {
    fn default() -> Self {
        SophosSimConfig {
            client_id: "sim-client".into(),
            client_secret: "sim-secret".into(),
            identity: Identity::Tenant,
            tenants: 1,
            tenant_page_size: 2,
            events_per_tenant: Some(1000),
            rate_per_sec: 10.0,
            start: Utc::now() - chrono::Duration::hours(1),
            alert_every: 5,
            seed: 42,
            token_lifetime_secs: 3600,
            max_limit: 1000,
            scripted: false,
        }
    }
}

/// Faults to inject into the next SIEM requests; counters count down as they fire.
#[derive(Debug, Default)]
pub struct Faults {
    /// Answer this many requests with 429.
    pub rate_limit: AtomicU64,
    /// `Retry-After` seconds sent with those 429s.
    pub retry_after_secs: AtomicU64,
    /// Answer this many requests with 503.
    pub unavailable: AtomicU64,
    /// Answer this many requests with a truncated JSON body (HTTP 200).
    pub truncate: AtomicU64,
    /// Delay every SIEM response by this many milliseconds.
    pub delay_ms: AtomicU64,
}

impl Faults {
    fn take(counter: &AtomicU64) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// One SIEM request as the simulator saw it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// When it arrived.
    pub at: Instant,
    /// Tenant header.
    pub tenant: String,
    /// `events` or `alerts`.
    pub stream: String,
    /// Status answered.
    pub status: u16,
}

/// A scripted stream's records as (time ms, record), sorted by time, in push order among equal times.
type Pushed = Vec<(i64, serde_json::Value)>;

struct Shared {
    config: SophosSimConfig,
    base_url: String,
    tenant_ids: Vec<String>,
    identity_id: String,
    faults: Faults,
    token_requests: AtomicU64,
    tokens: super::TokenLedger,
    requests: Mutex<Vec<SeenRequest>>,
    reject_all_tokens: AtomicBool,
    /// Scripted mode: (tenant index, stream) → its records.
    pushed: Mutex<std::collections::HashMap<(usize, String), Pushed>>,
}

/// A running simulator. Dropping it stops the server.
pub struct SophosSim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    _server: super::ServerTask,
}

impl SophosSim {
    /// Starts on `127.0.0.1` on a free port.
    pub async fn start(config: SophosSimConfig) -> std::io::Result<SophosSim> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let tenants = if config.identity == Identity::Tenant {
            1
        } else {
            config.tenants.max(1)
        };
        let shared = Arc::new(Shared {
            base_url: format!("http://{addr}"),
            tenant_ids: (0..tenants)
                .map(|t| uuid(config.seed, 0x7e4a47, t as u64))
                .collect(),
            identity_id: uuid(config.seed, 0x1d, 0),
            config,
            faults: Faults::default(),
            token_requests: AtomicU64::new(0),
            tokens: super::TokenLedger::default(),
            requests: Mutex::new(Vec::new()),
            reject_all_tokens: AtomicBool::new(false),
            pushed: Mutex::new(std::collections::HashMap::new()),
        });
        let app = Router::new()
            .route("/api/v2/oauth2/token", post(token))
            .route("/whoami/v1", get(whoami))
            .route("/{kind}/v1/tenants", get(tenants_page))
            .route("/siem/v1/{stream}", get(siem))
            .with_state(shared.clone());
        let server = super::spawn_server(listener, app, None);
        Ok(SophosSim {
            shared,
            addr,
            _server: server,
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The token endpoint URL.
    pub fn token_url(&self) -> String {
        format!("{}/api/v2/oauth2/token", self.shared.base_url)
    }

    /// Listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The fault switches.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Refuse every token issued so far (as if they expired server-side).
    pub fn expire_tokens(&self) {
        self.shared.tokens.expire_all();
    }

    /// Refuse every token, even new ones (a revoked credential), until called with false.
    pub fn reject_all_tokens(&self, reject: bool) {
        self.shared
            .reject_all_tokens
            .store(reject, Ordering::SeqCst);
    }

    /// Token requests answered so far.
    pub fn token_requests(&self) -> u64 {
        self.shared.token_requests.load(Ordering::SeqCst)
    }

    /// Every SIEM request so far.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.shared
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Tenant ids, in listing order.
    pub fn tenant_ids(&self) -> Vec<String> {
        self.shared.tenant_ids.clone()
    }

    /// Scripted mode: adds `record` to `stream` (`events` or `alerts`) of tenant `t` at time `at`;
    /// records at one time keep the order they were pushed in.
    pub fn push(&self, tenant: usize, stream: &str, at: DateTime<Utc>, record: serde_json::Value) {
        if let Ok(mut pushed) = self.shared.pushed.lock() {
            let list = pushed.entry((tenant, stream.to_string())).or_default();
            let ms = at.timestamp_millis();
            let after = list.partition_point(|(t, _)| *t <= ms);
            list.insert(after, (ms, record));
        }
    }

    /// Every id the simulator will have served for `stream` of tenant `t` once `now` has passed the
    /// last record (in creation order).
    pub fn expected_ids(&self, tenant: usize, stream: &str, now: DateTime<Utc>) -> Vec<String> {
        let s = &self.shared;
        let stride = stride(&s.config, stream);
        let visible = visible_count(&s.config, stride, now.timestamp_millis());
        (0..visible)
            .map(|j| event_id(s.config.seed, tenant, j * stride))
            .collect()
    }
}

fn stride(config: &SophosSimConfig, stream: &str) -> u64 {
    if stream == "alerts" {
        config.alert_every.max(1)
    } else {
        1
    }
}

/// Creation time (ms) of event `k`.
fn event_millis(config: &SophosSimConfig, k: u64) -> i64 {
    config.start.timestamp_millis() + (k as f64 * 1000.0 / config.rate_per_sec).floor() as i64
}

/// Records `j` (event `j * stride`) with a creation time at or before `now_ms`, and within volume.
fn visible_count(config: &SophosSimConfig, stride: u64, now_ms: i64) -> u64 {
    let elapsed = (now_ms - config.start.timestamp_millis()).max(-1);
    if elapsed < 0 {
        return 0;
    }
    // Events with k*1000/rate <= elapsed.
    let mut events = ((elapsed as f64 + 1.0) * config.rate_per_sec / 1000.0).floor() as u64;
    while events > 0 && event_millis(config, events - 1) > now_ms {
        events -= 1;
    }
    while event_millis(config, events) <= now_ms {
        events += 1;
    }
    if let Some(total) = config.events_per_tenant {
        events = events.min(total);
    }
    events.div_ceil(stride)
}

/// The first record `j` whose creation time is `>= at_ms`.
fn first_at_or_after(config: &SophosSimConfig, stride: u64, at_ms: i64) -> u64 {
    let elapsed = at_ms - config.start.timestamp_millis();
    if elapsed <= 0 {
        return 0;
    }
    let mut j = ((elapsed as f64 * config.rate_per_sec / 1000.0) / stride as f64).floor() as u64;
    while j > 0 && event_millis(config, (j - 1) * stride) >= at_ms {
        j -= 1;
    }
    while event_millis(config, j * stride) < at_ms {
        j += 1;
    }
    j
}

fn uuid(seed: u64, salt: u64, n: u64) -> String {
    let a = mix(seed ^ mix(salt) ^ mix(n.wrapping_mul(0x100_0000_01B3)));
    let b = mix(a ^ 0x5555);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    )
}

fn event_id(seed: u64, tenant: usize, k: u64) -> String {
    uuid(seed, 0xe7e9 + tenant as u64, k)
}

const TYPES: [(&str, &str, &str, &str); 5] = [
    (
        "Event::Endpoint::Threat::Detected",
        "high",
        "MALWARE",
        "Malware detected: 'EICAR-AV-Test' at 'C:\\Users\\alice\\Downloads\\eicar.com'",
    ),
    (
        "Event::Endpoint::UpdateSuccess",
        "none",
        "UPDATING",
        "Update succeeded",
    ),
    (
        "Event::Endpoint::WebControlViolation",
        "low",
        "WEB",
        "Blocked access to \"http://example.test/?a=1|b=2\"",
    ),
    (
        "Event::Endpoint::CoreHeartbeat",
        "medium",
        "RUNTIME_DETECTIONS",
        "Lost heartbeat\nfrom endpoint",
    ),
    (
        "Event::Endpoint::Threat::PuaDetected",
        "very_high",
        "PUA",
        "PUA detected: 'PsExec' at 'C:\\Tools\\PsExec.exe'",
    ),
];

/// The `type` of record `k` of tenant `tenant`.
fn record_type(c: &SophosSimConfig, tenant: usize, k: u64) -> &'static str {
    let r = mix(c.seed ^ mix(k) ^ mix(tenant as u64 + 1));
    TYPES[(r % TYPES.len() as u64) as usize].0
}

/// Record `k` of `stream` of tenant `tenant` (whose id is `tenant_id`) as a `Value`: what
/// [`write_record`] is tested against.
#[cfg(test)]
fn record(
    c: &SophosSimConfig,
    tenant_id: &str,
    tenant: usize,
    stream: &str,
    k: u64,
) -> serde_json::Value {
    let r = mix(c.seed ^ mix(k) ^ mix(tenant as u64 + 1));
    let (kind, severity, group, name) = TYPES[(r % TYPES.len() as u64) as usize];
    let created = Utc
        .timestamp_millis_opt(event_millis(c, k))
        .single()
        .unwrap_or_default();
    let when = created - chrono::Duration::seconds((r >> 8) as i64 % 90);
    let iso = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    let host = format!("host-{:03}", (r >> 16) % 200);
    let ip = format!(
        "10.{}.{}.{}",
        (r >> 24) % 256,
        (r >> 32) % 256,
        (r >> 40) % 254 + 1
    );
    let id = event_id(c.seed, tenant, k);
    let endpoint_id = uuid(c.seed, 0xe9d, (r >> 16) % 200);
    if stream == "alerts" {
        json!({
            "id": id,
            "event_service_event_id": id,
            "type": kind,
            "severity": severity,
            "description": name,
            "when": iso(when),
            "created_at": iso(created),
            "customer_id": tenant_id,
            "location": host,
            "source": format!("CORP\\user{}", (r >> 48) % 50),
            "threat": if group == "MALWARE" { json!("EICAR-AV-Test") } else { json!(null) },
            "threat_cleanable": false,
            "data": {
                "created_at": created.timestamp_millis(),
                "endpoint_id": endpoint_id,
                "endpoint_platform": "windows",
                "endpoint_type": "computer",
                "source_info": {"ip": ip},
            }
        })
    } else {
        json!({
            "id": id,
            "type": kind,
            "name": name,
            "severity": severity,
            "group": group,
            "when": iso(when),
            "created_at": iso(created),
            "customer_id": tenant_id,
            "endpoint_id": endpoint_id,
            "endpoint_type": "computer",
            "user_id": uuid(c.seed, 0x05e, (r >> 48) % 50),
            "source": format!("CORP\\user{}", (r >> 48) % 50),
            "location": host,
            "source_info": {"ip": ip},
            "origin": null,
        })
    }
}

/// Writes record `k` of `stream` of tenant `tenant` (whose id is `tenant_id`) as JSON: the bytes
/// of its `Value` (keys in `BTreeMap` order), written without building one.
fn write_record(
    out: &mut Vec<u8>,
    c: &SophosSimConfig,
    tenant_id: &str,
    tenant: usize,
    stream: &str,
    k: u64,
) {
    use super::json_bytes::{int, string, time, uint};
    let r = mix(c.seed ^ mix(k) ^ mix(tenant as u64 + 1));
    let (kind, severity, group, name) = TYPES[(r % TYPES.len() as u64) as usize];
    let created_ms = Utc
        .timestamp_millis_opt(event_millis(c, k))
        .single()
        .unwrap_or_default()
        .timestamp_millis();
    let when_ms = created_ms - ((r >> 8) as i64 % 90) * 1000;
    let ip = |out: &mut Vec<u8>| {
        out.extend_from_slice(b"{\"ip\":\"10.");
        uint(out, (r >> 24) % 256);
        out.push(b'.');
        uint(out, (r >> 32) % 256);
        out.push(b'.');
        uint(out, (r >> 40) % 254 + 1);
        out.extend_from_slice(b"\"}");
    };
    let host = |out: &mut Vec<u8>| {
        // Writing into a Vec cannot fail.
        let _ = write!(out, "\"host-{:03}\"", (r >> 16) % 200);
    };
    let id = event_id(c.seed, tenant, k);
    let endpoint_id = uuid(c.seed, 0xe9d, (r >> 16) % 200);
    out.extend_from_slice(b"{\"created_at\":");
    time(out, created_ms, 0, 3);
    out.extend_from_slice(b",\"customer_id\":");
    string(out, tenant_id);
    if stream == "alerts" {
        out.extend_from_slice(b",\"data\":{\"created_at\":");
        int(out, created_ms);
        out.extend_from_slice(b",\"endpoint_id\":");
        string(out, &endpoint_id);
        out.extend_from_slice(
            b",\"endpoint_platform\":\"windows\",\"endpoint_type\":\"computer\",\"source_info\":",
        );
        ip(out);
        out.extend_from_slice(b"},\"description\":");
        string(out, name);
        out.extend_from_slice(b",\"event_service_event_id\":");
        string(out, &id);
        out.extend_from_slice(b",\"id\":");
        string(out, &id);
        out.extend_from_slice(b",\"location\":");
        host(out);
        out.extend_from_slice(b",\"severity\":");
        string(out, severity);
        out.extend_from_slice(br#","source":"CORP\\user"#);
        uint(out, (r >> 48) % 50);
        out.extend_from_slice(b"\",\"threat\":");
        if group == "MALWARE" {
            out.extend_from_slice(b"\"EICAR-AV-Test\"");
        } else {
            out.extend_from_slice(b"null");
        }
        out.extend_from_slice(b",\"threat_cleanable\":false,\"type\":");
    } else {
        out.extend_from_slice(b",\"endpoint_id\":");
        string(out, &endpoint_id);
        out.extend_from_slice(b",\"endpoint_type\":\"computer\",\"group\":");
        string(out, group);
        out.extend_from_slice(b",\"id\":");
        string(out, &id);
        out.extend_from_slice(b",\"location\":");
        host(out);
        out.extend_from_slice(b",\"name\":");
        string(out, name);
        out.extend_from_slice(b",\"origin\":null,\"severity\":");
        string(out, severity);
        out.extend_from_slice(br#","source":"CORP\\user"#);
        uint(out, (r >> 48) % 50);
        out.extend_from_slice(b"\",\"source_info\":");
        ip(out);
        out.extend_from_slice(b",\"type\":");
        string(out, kind);
        out.extend_from_slice(b",\"user_id\":");
        string(out, &uuid(c.seed, 0x05e, (r >> 48) % 50));
        out.extend_from_slice(b",\"when\":");
        time(out, when_ms, 0, 3);
        out.push(b'}');
        return;
    }
    string(out, kind);
    out.extend_from_slice(b",\"when\":");
    time(out, when_ms, 0, 3);
    out.push(b'}');
}

fn encode_cursor(ms: i64) -> String {
    let t = Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
    base64::engine::general_purpose::STANDARD.encode(format!(
        "V2_CURSOR|{}",
        t.to_rfc3339_opts(SecondsFormat::Millis, true)
    ))
}

fn decode_cursor(cursor: &str) -> Option<i64> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(cursor)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (tag, time) = text.split_once('|')?;
    if tag != "V2_CURSOR" {
        return None;
    }
    DateTime::parse_from_rfc3339(time)
        .ok()
        .map(|t| t.timestamp_millis())
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(
            json!({"error": status.canonical_reason(), "message": message, "correlationId": "sim"}),
        ),
    )
        .into_response()
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

async fn token(State(s): State<Arc<Shared>>, Form(form): Form<TokenForm>) -> Response {
    s.token_requests.fetch_add(1, Ordering::SeqCst);
    if form.grant_type.as_deref() != Some("client_credentials")
        || form.client_id.as_deref() != Some(s.config.client_id.as_str())
        || form.client_secret.as_deref() != Some(s.config.client_secret.as_str())
    {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"errorCode": "oauth.invalid_client_secret", "message": "Unauthorized", "trackingId": "sim"})),
        )
            .into_response();
    }
    let n = s.token_requests.load(Ordering::SeqCst);
    let token = format!("sim-token-{n}-{:x}", mix(n ^ s.config.seed));
    s.tokens.issue(&token);
    Json(json!({
        "access_token": token,
        "errorCode": "success",
        "expires_in": s.config.token_lifetime_secs,
        "message": "OK",
        "refresh_token": "unused",
        "token_type": "bearer",
        "trackingId": "sim"
    }))
    .into_response()
}

fn authorized(s: &Shared, headers: &HeaderMap) -> bool {
    if s.reject_all_tokens.load(Ordering::SeqCst) {
        return false;
    }
    s.tokens.accepts(headers, s.config.token_lifetime_secs)
}

async fn whoami(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !authorized(&s, &headers) {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let body = match s.config.identity {
        Identity::Tenant => json!({
            "id": s.tenant_ids[0],
            "idType": "tenant",
            "apiHosts": {"global": s.base_url, "dataRegion": s.base_url}
        }),
        Identity::Partner => {
            json!({"id": s.identity_id, "idType": "partner", "apiHosts": {"global": s.base_url}})
        }
        Identity::Organization => {
            json!({"id": s.identity_id, "idType": "organization", "apiHosts": {"global": s.base_url}})
        }
    };
    Json(body).into_response()
}

#[derive(Deserialize)]
struct TenantQuery {
    page: Option<usize>,
    #[serde(rename = "pageTotal")]
    page_total: Option<bool>,
}

async fn tenants_page(
    State(s): State<Arc<Shared>>,
    Path(kind): Path<String>,
    Query(q): Query<TenantQuery>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&s, &headers) {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let (expected_kind, header) = match s.config.identity {
        Identity::Partner => ("partner", "x-partner-id"),
        Identity::Organization => ("organization", "x-organization-id"),
        Identity::Tenant => {
            return error(
                StatusCode::FORBIDDEN,
                "tenant credentials cannot list tenants",
            )
        }
    };
    let id_ok = headers.get(header).and_then(|v| v.to_str().ok()) == Some(s.identity_id.as_str());
    if kind != expected_kind || !id_ok {
        return error(StatusCode::FORBIDDEN, "wrong identity header");
    }
    let size = s.config.tenant_page_size.max(1);
    let total_pages = s.tenant_ids.len().div_ceil(size);
    let page = q.page.unwrap_or(1).max(1);
    let items: Vec<_> = s
        .tenant_ids
        .iter()
        .enumerate()
        .skip((page - 1) * size)
        .take(size)
        .map(|(i, id)| {
            json!({"id": id, "name": format!("Tenant {i}"), "dataGeography": "DE", "dataRegion": "eu02",
                   "billingType": "usage", "apiHost": s.base_url, "status": "active"})
        })
        .collect();
    let mut pages = json!({"current": page, "size": size, "maxSize": 100});
    if q.page_total == Some(true) {
        pages["total"] = json!(total_pages);
        pages["items"] = json!(s.tenant_ids.len());
    }
    Json(json!({"items": items, "pages": pages})).into_response()
}

#[derive(Deserialize)]
struct SiemQuery {
    limit: Option<usize>,
    cursor: Option<String>,
    from_date: Option<i64>,
    exclude_types: Option<String>,
    from_date_offset_minutes: Option<i64>,
}

async fn siem(
    State(s): State<Arc<Shared>>,
    Path(stream): Path<String>,
    Query(q): Query<SiemQuery>,
    headers: HeaderMap,
) -> Response {
    let tenant_header = headers
        .get("x-tenant-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let response = siem_response(&s, &stream, &q, &headers, &tenant_header).await;
    if let Ok(mut log) = s.requests.lock() {
        log.push(SeenRequest {
            at: Instant::now(),
            tenant: tenant_header,
            stream,
            status: response.status().as_u16(),
        });
    }
    response
}

async fn siem_response(
    s: &Shared,
    stream: &str,
    q: &SiemQuery,
    headers: &HeaderMap,
    tenant_id: &str,
) -> Response {
    let delay = s.faults.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    if !authorized(s, headers) {
        return error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    if Faults::take(&s.faults.rate_limit) {
        let secs = s.faults.retry_after_secs.load(Ordering::SeqCst);
        let mut r = error(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
        if let Ok(v) = secs.to_string().parse() {
            r.headers_mut().insert("retry-after", v);
        }
        return r;
    }
    if Faults::take(&s.faults.unavailable) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable");
    }
    if stream != "events" && stream != "alerts" {
        return error(StatusCode::NOT_FOUND, "Not Found");
    }
    let Some(tenant) = s.tenant_ids.iter().position(|t| t == tenant_id) else {
        return error(StatusCode::UNAUTHORIZED, "missing or unknown X-Tenant-ID");
    };
    let now = Utc::now();
    let now_ms = now.timestamp_millis() - q.from_date_offset_minutes.unwrap_or(0).max(0) * 60_000;
    let from_ms = match (&q.cursor, q.from_date) {
        (Some(c), _) => match decode_cursor(c) {
            Some(ms) if ms < (now - chrono::Duration::hours(24)).timestamp_millis() => {
                return error(StatusCode::BAD_REQUEST, "cursor is older than 24 hours");
            }
            Some(ms) => ms,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Error parsing the query params or request body",
                )
            }
        },
        (None, Some(secs)) => {
            if secs < (now - chrono::Duration::hours(24)).timestamp() {
                return error(
                    StatusCode::BAD_REQUEST,
                    "from_date must be within the last 24 hours",
                );
            }
            secs * 1000
        }
        (None, None) => (now - chrono::Duration::hours(12)).timestamp_millis(),
    };
    let excluded: Vec<&str> = q
        .exclude_types
        .as_deref()
        .map(|t| t.split(',').collect())
        .unwrap_or_default();
    let limit = q.limit.unwrap_or(200).clamp(1, s.config.max_limit);
    let mut body = if s.config.scripted {
        match scripted_page(s, tenant, stream, from_ms, now_ms, limit, &excluded) {
            Some(body) => body.to_string().into_bytes(),
            None => return error(StatusCode::INTERNAL_SERVER_ERROR, "simulator state"),
        }
    } else {
        generated_page(s, tenant, stream, from_ms, now_ms, limit, &excluded)
    };
    if Faults::take(&s.faults.truncate) {
        body.truncate(body.len() / 2);
    }
    (StatusCode::OK, [("content-type", "application/json")], body).into_response()
}

/// A page of generated records `>= from_ms` and visible at `now_ms`: `{"has_more": ...,
/// "items": [...], "next_cursor": ...}`, written straight into bytes (the same bytes as that
/// object built of `Value`s).
fn generated_page(
    s: &Shared,
    tenant: usize,
    stream: &str,
    from_ms: i64,
    now_ms: i64,
    limit: usize,
    excluded: &[&str],
) -> Vec<u8> {
    let stride = stride(&s.config, stream);
    let visible = visible_count(&s.config, stride, now_ms);
    let first = first_at_or_after(&s.config, stride, from_ms);
    let last = visible.min(first + limit as u64);
    let mut out = Vec::with_capacity(1024 * (last.saturating_sub(first) as usize) + 128);
    out.extend_from_slice(b"{\"has_more\":");
    out.extend_from_slice(if last < visible { b"true" } else { b"false" });
    out.extend_from_slice(b",\"items\":[");
    let mut written = 0;
    for j in first..last {
        let k = j * stride;
        if excluded.contains(&record_type(&s.config, tenant, k)) {
            continue;
        }
        if written > 0 {
            out.push(b',');
        }
        write_record(
            &mut out,
            &s.config,
            &s.tenant_ids[tenant],
            tenant,
            stream,
            k,
        );
        written += 1;
    }
    let next_ms = if last > first {
        event_millis(&s.config, (last - 1) * stride)
    } else {
        from_ms
    };
    out.extend_from_slice(b"],\"next_cursor\":");
    super::json_bytes::string(&mut out, &encode_cursor(next_ms));
    out.push(b'}');
    out
}

/// A page of pushed records `>= from_ms` and visible at `now_ms` (scripted mode); `None` if the
/// simulator's state is poisoned.
fn scripted_page(
    s: &Shared,
    tenant: usize,
    stream: &str,
    from_ms: i64,
    now_ms: i64,
    limit: usize,
    excluded: &[&str],
) -> Option<serde_json::Value> {
    let pushed = s.pushed.lock().ok()?;
    let empty = Vec::new();
    let records = pushed.get(&(tenant, stream.to_string())).unwrap_or(&empty);
    let visible = records.partition_point(|(t, _)| *t <= now_ms);
    let first = records.partition_point(|(t, _)| *t < from_ms);
    let last = visible.min(first + limit).max(first);
    let items: Vec<&serde_json::Value> = records[first..last]
        .iter()
        .map(|(_, r)| r)
        .filter(|r| !excluded.contains(&r["type"].as_str().unwrap_or_default()))
        .collect();
    let next_ms = if last > first {
        records[last - 1].0
    } else {
        from_ms
    };
    Some(json!({
        "has_more": last < visible,
        "next_cursor": encode_cursor(next_ms),
        "items": items,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_index_arithmetic_is_consistent() {
        let config = SophosSimConfig {
            rate_per_sec: 7.0,
            events_per_tenant: None,
            ..SophosSimConfig::default()
        };
        let start = config.start.timestamp_millis();
        for stride in [1, 5] {
            for at in [
                start - 5,
                start,
                start + 1,
                start + 999,
                start + 12_345,
                start + 1_000_000,
            ] {
                let j = first_at_or_after(&config, stride, at);
                assert!(event_millis(&config, j * stride) >= at);
                if j > 0 {
                    assert!(event_millis(&config, (j - 1) * stride) < at);
                }
                let n = visible_count(&config, stride, at);
                if n > 0 {
                    assert!(event_millis(&config, (n - 1) * stride) <= at);
                }
                assert!(event_millis(&config, n * stride) > at);
            }
        }
    }

    #[test]
    fn ids_are_deterministic_and_distinct() {
        assert_eq!(event_id(1, 0, 5), event_id(1, 0, 5));
        let ids: std::collections::HashSet<_> = (0..10_000).map(|k| event_id(1, 0, k)).collect();
        assert_eq!(ids.len(), 10_000);
        assert_ne!(event_id(1, 0, 5), event_id(1, 1, 5));
    }

    /// The generated records are written as the bytes their `Value` serialises to.
    #[test]
    fn written_records_are_the_bytes_of_their_value() {
        let config = SophosSimConfig::default();
        for tenant in [0, 3] {
            let tenant_id = uuid(config.seed, 0x7e4a47, tenant as u64);
            for stream in ["events", "alerts"] {
                for k in 0..600 {
                    let mut out = Vec::new();
                    write_record(&mut out, &config, &tenant_id, tenant, stream, k);
                    let value = record(&config, &tenant_id, tenant, stream, k);
                    assert_eq!(
                        String::from_utf8(out).unwrap(),
                        value.to_string(),
                        "{stream} {k}"
                    );
                    assert_eq!(value["type"], record_type(&config, tenant, k));
                }
            }
        }
    }

    #[test]
    fn cursor_round_trips() {
        assert_eq!(
            decode_cursor(&encode_cursor(1_554_143_141_606)),
            Some(1_554_143_141_606)
        );
    }
}
