//! Splunk HEC simulator: `/services/collector/event` with the token check, gzip, strict envelope
//! validation (code 6 for invalid data, 12 for an event without `event`, with
//! `invalid-event-number`), channels and indexer acks, `/services/collector/ack` and
//! `/services/collector/health`, on loopback.
//!
//! Owns: the events it accepted (in order, for tests to compare) and faults: 503s (all, a count, or
//! every n-th request), slowness, acks that come late or never (as behind a load balancer without
//! sticky sessions), a stop and a restart on the same port (every connection ended), and
//! connections closed in the middle of a request, before or after its events were indexed (a
//! crash: the sender cannot tell which). Must not: be reachable from anything but loopback. Invariant: a request with an
//! invalid event is answered as Splunk does: the events before it are indexed, it and the rest of
//! the request are not, and the 400 names it by its zero-based place (`invalid-event-number`).

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// What the simulator accepts.
#[derive(Debug, Clone)]
pub struct HecSimConfig {
    /// The valid token.
    pub token: String,
    /// Indexer acknowledgement on (requests then need a GUID channel).
    pub ack: bool,
    /// How long after acceptance an ack turns true.
    pub ack_delay: Duration,
    /// Keep the text of every accepted envelope, for [`HecSim::accepted`]. Default true. A
    /// benchmark of millions of events turns it off and reads [`HecSim::accepted_count`]: kept,
    /// they filled gigabytes of memory, where Splunk writes them to disk.
    pub keep_accepted: bool,
}

impl Default for HecSimConfig {
    fn default() -> Self {
        HecSimConfig {
            token: "00000000-0000-4000-8000-00000000cafe".into(),
            ack: false,
            ack_delay: Duration::ZERO,
            keep_accepted: true,
        }
    }
}

/// Fault switches.
#[derive(Debug, Default)]
pub struct HecFaults {
    /// Answer 503 "Server is busy" to every event request while set.
    pub busy: AtomicBool,
    /// Answer this many event requests with 503.
    pub unavailable: AtomicU64,
    /// Delay every event request, milliseconds.
    pub delay_ms: AtomicU64,
    /// Never turn acks true, as behind a load balancer without sticky sessions (the ack query
    /// reaches an indexer that never saw the request).
    pub withhold_acks: AtomicBool,
    /// Answer 403 "Invalid token" to every request while set, as after the token was revoked;
    /// counted in [`HecSim::refusals`].
    pub revoke_token: AtomicBool,
    /// Answer 503 to every n-th event request (counting all of them); 0 turns it off.
    pub fail_every: AtomicU64,
    /// End every open connection, with no answer, instead of answering this many event
    /// requests; their events are not indexed.
    pub crash_before_indexing: AtomicU64,
    /// Index the events of this many event requests, then end every open connection with no
    /// answer: the sender has to send them again, and they are indexed twice.
    pub crash_after_indexing: AtomicU64,
}

struct Shared {
    config: HecSimConfig,
    faults: HecFaults,
    /// Kept as text: building a `serde_json::Value` of every envelope made this simulator half
    /// of all CPU in the pipeline bench. Parsed when a test asks ([`HecSim::accepted`]).
    accepted: Mutex<Vec<String>>,
    /// Envelopes accepted, kept or not.
    accepted_count: AtomicU64,
    requests: AtomicU64,
    gzipped: AtomicU64,
    busy_answers: AtomicU64,
    refusals: AtomicU64,
    /// (channel, ack id) → when it was accepted.
    acks: Mutex<HashMap<(String, u64), Instant>>,
    next_ack: Mutex<HashMap<String, u64>>,
    /// Notified to end every open connection (the crash faults).
    close_all: Arc<tokio::sync::Notify>,
}

/// A running simulator. Dropping it stops the server.
pub struct HecSim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// `None` while stopped ([`HecSim::stop`]).
    server: Option<super::ServerTask>,
}

impl HecSim {
    /// Starts on `127.0.0.1` on a free port.
    pub async fn start(config: HecSimConfig) -> std::io::Result<HecSim> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            close_all: Arc::new(tokio::sync::Notify::new()),
            config,
            faults: HecFaults::default(),
            accepted: Mutex::new(Vec::new()),
            accepted_count: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            gzipped: AtomicU64::new(0),
            busy_answers: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
            acks: Mutex::new(HashMap::new()),
            next_ack: Mutex::new(HashMap::new()),
        });
        let server = serve(listener, &shared);
        Ok(HecSim {
            shared,
            addr,
            server: Some(server),
        })
    }

    /// Stops the server as a receiver that goes down does: its port refuses connections and every
    /// open one ends, a request under way with no answer. What it accepted is kept.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
    }

    /// Serves again on the same port after [`HecSim::stop`], with what it had accepted.
    pub async fn listen_again(&mut self) -> std::io::Result<()> {
        if self.server.is_none() {
            let listener = tokio::net::TcpListener::bind(self.addr).await?;
            self.server = Some(serve(listener, &self.shared));
        }
        Ok(())
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The fault switches.
    pub fn faults(&self) -> &HecFaults {
        &self.shared.faults
    }

    /// Every event envelope accepted, in order.
    pub fn accepted(&self) -> Vec<Value> {
        self.shared
            .accepted
            .lock()
            .map(|a| {
                a.iter()
                    .map(|e| serde_json::from_str(e).unwrap_or(Value::Null))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How many event envelopes were accepted, duplicates included (whether kept or not).
    pub fn accepted_count(&self) -> u64 {
        self.shared.accepted_count.load(Ordering::SeqCst)
    }

    /// Event requests received (any outcome).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Event requests that came gzip-compressed.
    pub fn gzipped(&self) -> u64 {
        self.shared.gzipped.load(Ordering::SeqCst)
    }

    /// 503 answers given.
    pub fn busy_answers(&self) -> u64 {
        self.shared.busy_answers.load(Ordering::SeqCst)
    }

    /// Requests refused while [`HecFaults::revoke_token`] was set.
    pub fn refusals(&self) -> u64 {
        self.shared.refusals.load(Ordering::SeqCst)
    }
}

fn reply(status: StatusCode, code: i64, text: &str) -> Response {
    (status, Json(json!({"text": text, "code": code}))).into_response()
}

/// The answer to a request without the right token, or `None` when the token is right.
fn token_refusal(s: &Shared, headers: &HeaderMap) -> Option<Response> {
    let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return Some(reply(StatusCode::UNAUTHORIZED, 2, "Token is required"));
    };
    let Some(token) = value.strip_prefix("Splunk ") else {
        return Some(reply(StatusCode::UNAUTHORIZED, 3, "Invalid authorization"));
    };
    let revoked = s.faults.revoke_token.load(Ordering::SeqCst);
    if revoked {
        s.refusals.fetch_add(1, Ordering::SeqCst);
    }
    (revoked || token != s.config.token).then(|| reply(StatusCode::FORBIDDEN, 4, "Invalid token"))
}

fn is_guid(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    parts.len() == 5
        && parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The parts of an envelope HEC checks, borrowed from its text. A part that is there counts as
/// there even when it is `null` (HEC refuses `"time": null`), hence `present`.
#[derive(serde::Deserialize)]
struct EnvelopeParts<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    event: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    time: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    fields: Option<&'a RawValue>,
}

/// The keys of an event object this simulator looks at: `hec_reject` makes it refuse the event.
#[derive(serde::Deserialize)]
struct EventParts<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    hec_reject: Option<&'a RawValue>,
}

/// A field that is there, whatever its value (`null` included).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue as serde::Deserialize>::deserialize(d).map(Some)
}

/// The first character of a JSON value's text.
fn kind(raw: &RawValue) -> u8 {
    raw.get().bytes().next().unwrap_or(b' ')
}

/// Validates one envelope as HEC does, given its text and its parts read from that text (an
/// `Err` when it is not JSON); the code and text of the first problem.
fn invalid(
    envelope: &str,
    parts: &Result<EnvelopeParts, serde_json::Error>,
) -> Option<(i64, &'static str)> {
    let (Some(b'{'), Ok(parts)) = (envelope.bytes().next(), parts) else {
        return Some((6, "Invalid data format"));
    };
    match parts.event {
        None => return Some((12, "Event field is required")),
        Some(e) if matches!(e.get(), "\"\"" | "null") => {
            return Some((13, "Event field cannot be blank"))
        }
        // Read only when the text holds the key: most events do not, and reading one is a scan
        // of the whole record (a key spelled with escapes is not looked for; none of ours is).
        Some(e)
            if kind(e) == b'{'
                && memchr::memmem::find(e.get().as_bytes(), b"\"hec_reject\"").is_some() =>
        {
            let rejected = serde_json::from_str::<EventParts>(e.get())
                .map_or(true, |p| p.hec_reject.is_some());
            if rejected {
                return Some((6, "Invalid data format"));
            }
        }
        Some(_) => {}
    }
    if parts
        .time
        .is_some_and(|t| !matches!(kind(t), b'"' | b'-' | b'0'..=b'9'))
    {
        return Some((6, "Invalid data format"));
    }
    if let Some(fields) = parts.fields {
        let flat = kind(fields) == b'{'
            && serde_json::from_str::<std::collections::HashMap<std::borrow::Cow<str>, &RawValue>>(
                fields.get(),
            )
            .is_ok_and(|f| {
                f.values()
                    .all(|v| matches!(kind(v), b'"' | b'-' | b'0'..=b'9' | b'['))
            });
        if !flat {
            return Some((15, "Error in handling indexed fields"));
        }
    }
    None
}

/// Takes `envelopes` in: counted, and kept when the configuration says so.
fn index(s: &Shared, envelopes: &[&str]) {
    s.accepted_count
        .fetch_add(envelopes.len() as u64, Ordering::SeqCst);
    if !s.config.keep_accepted {
        return;
    }
    if let Ok(mut accepted) = s.accepted.lock() {
        accepted.extend(envelopes.iter().map(|e| e.to_string()));
    }
}

/// Serves the simulator's routes on `listener`.
fn serve(listener: tokio::net::TcpListener, shared: &Arc<Shared>) -> super::ServerTask {
    let app = Router::new()
        .route("/services/collector/event", post(event))
        .route("/services/collector/ack", post(ack))
        .route("/services/collector/health", get(health))
        .with_state(shared.clone());
    super::spawn_server_closable(listener, app, None, shared.close_all.clone())
}

/// Takes one from a fault's count; whether there was one.
fn count_down(fault: &AtomicU64) -> bool {
    fault
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// Ends every open connection, this request's too: it is never answered.
async fn crash(s: &Shared) -> Response {
    s.close_all.notify_waiters();
    std::future::pending().await
}

async fn event(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    s.requests.fetch_add(1, Ordering::SeqCst);
    let delay = s.faults.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if let Some(r) = token_refusal(&s, &headers) {
        return r;
    }
    if count_down(&s.faults.crash_before_indexing) {
        return crash(&s).await;
    }
    let counted_down = count_down(&s.faults.unavailable);
    let every = s.faults.fail_every.load(Ordering::SeqCst);
    let nth = every > 0 && s.requests.load(Ordering::SeqCst) % every == 0;
    if s.faults.busy.load(Ordering::SeqCst) || counted_down || nth {
        s.busy_answers.fetch_add(1, Ordering::SeqCst);
        let mut r = reply(StatusCode::SERVICE_UNAVAILABLE, 9, "Server is busy");
        r.headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        return r;
    }
    let channel = headers
        .get("x-splunk-request-channel")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if s.config.ack {
        match channel.as_deref() {
            None => return reply(StatusCode::BAD_REQUEST, 10, "Data channel is missing"),
            Some(c) if !is_guid(c) => {
                return reply(StatusCode::BAD_REQUEST, 11, "Invalid data channel")
            }
            Some(_) => {}
        }
    }
    let gzip = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let body = if gzip {
        s.gzipped.fetch_add(1, Ordering::SeqCst);
        let mut out = Vec::new();
        if flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .is_err()
        {
            return reply(StatusCode::BAD_REQUEST, 6, "Invalid data format");
        }
        out
    } else {
        body.to_vec()
    };
    let mut envelopes = Vec::new();
    let mut refusal = None;
    // Each envelope is read once, for its parts; its text is cut from the body by the reader's
    // offsets before and after it.
    let mut stream = serde_json::Deserializer::from_slice(&body).into_iter::<EnvelopeParts>();
    for n in 0.. {
        let start = stream.byte_offset();
        let Some(parsed) = stream.next() else { break };
        let envelope = std::str::from_utf8(&body[start..stream.byte_offset()])
            .unwrap_or("")
            .trim_start();
        if let Some((code, text)) = invalid(envelope, &parsed) {
            refusal = Some((
                StatusCode::BAD_REQUEST,
                Json(json!({"text": text, "code": code, "invalid-event-number": n})),
            ));
            break;
        }
        envelopes.push(envelope);
    }
    if let Some(refusal) = refusal {
        // Splunk indexes what came before the invalid event (without an ack id to ask about).
        index(&s, &envelopes);
        return refusal.into_response();
    }
    if envelopes.is_empty() {
        return reply(StatusCode::BAD_REQUEST, 5, "No data");
    }
    index(&s, &envelopes);
    if count_down(&s.faults.crash_after_indexing) {
        return crash(&s).await;
    }
    match (s.config.ack, channel) {
        (true, Some(channel)) => {
            let id = {
                let mut next = s.next_ack.lock().unwrap_or_else(|e| e.into_inner());
                let id = next.entry(channel.clone()).or_insert(0);
                *id += 1;
                *id - 1
            };
            if let Ok(mut acks) = s.acks.lock() {
                acks.insert((channel, id), Instant::now());
            }
            Json(json!({"text": "Success", "code": 0, "ackId": id})).into_response()
        }
        _ => reply(StatusCode::OK, 0, "Success"),
    }
}

async fn ack(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = token_refusal(&s, &headers) {
        return r;
    }
    if !s.config.ack {
        return reply(StatusCode::BAD_REQUEST, 14, "ACK is disabled");
    }
    let channel = headers
        .get("x-splunk-request-channel")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| query.get("channel").cloned())
        .unwrap_or_default();
    let withheld = s.faults.withhold_acks.load(Ordering::SeqCst);
    let acks = s.acks.lock().map(|a| a.clone()).unwrap_or_default();
    let mut status = serde_json::Map::new();
    for id in body["acks"].as_array().cloned().unwrap_or_default() {
        let Some(id) = id.as_u64() else { continue };
        let done = !withheld
            && acks
                .get(&(channel.clone(), id))
                .is_some_and(|at| at.elapsed() >= s.config.ack_delay);
        status.insert(id.to_string(), json!(done));
    }
    Json(json!({"acks": status})).into_response()
}

async fn health(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(r) = token_refusal(&s, &headers) {
        return r;
    }
    if s.faults.busy.load(Ordering::SeqCst) {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            18,
            "HEC is unhealthy, queues are full",
        );
    }
    reply(StatusCode::OK, 17, "HEC is healthy")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Option<i64> {
        invalid(text, &serde_json::from_str(text)).map(|(code, _)| code)
    }

    /// The envelope checks, code by code, as Splunk answers them.
    #[test]
    fn envelopes_are_judged_as_splunk_does() {
        assert_eq!(
            check(r#"{"event":{"a":1},"time":1.5,"fields":{"k":"v","n":2,"l":["x"]}}"#),
            None
        );
        assert_eq!(check(r#"{"event":"text","time":"1700000000"}"#), None);
        assert_eq!(check(r#"[{"event":1}]"#), Some(6));
        assert_eq!(check(r#""event""#), Some(6));
        assert_eq!(check(r#"{"time":1}"#), Some(12));
        assert_eq!(check(r#"{"event":""}"#), Some(13));
        assert_eq!(check(r#"{"event":null}"#), Some(13));
        assert_eq!(check(r#"{"event":{"hec_reject":true}}"#), Some(6));
        assert_eq!(check(r#"{"event":{"hec_reject":null}}"#), Some(6));
        assert_eq!(check(r#"{"event":{"x":{"hec_reject":true}}}"#), None);
        assert_eq!(check(r#"{"event":1,"time":null}"#), Some(6));
        assert_eq!(check(r#"{"event":1,"time":{"t":1}}"#), Some(6));
        assert_eq!(
            check(r#"{"event":1,"fields":{"k":{"nested":1}}}"#),
            Some(15)
        );
        assert_eq!(check(r#"{"event":1,"fields":["k"]}"#), Some(15));
        assert_eq!(check(r#"{"event":1,"fields":null}"#), Some(15));
        assert_eq!(check(r#"{"event":1,"fields":{"k":true}}"#), Some(15));
    }

    /// Posts `body` with the simulator's token; the status and the reply's JSON.
    async fn post(sim: &HecSim, body: Vec<u8>) -> (u16, Value) {
        crate::net::install_crypto_provider();
        let response = reqwest::Client::new()
            .post(format!("{}/services/collector/event", sim.url()))
            .header(
                "authorization",
                "Splunk 00000000-0000-4000-8000-00000000cafe",
            )
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// A byte that is not UTF-8 refuses its envelope: the envelopes before it are taken and the
    /// bad one is named, as for any other invalid envelope.
    #[tokio::test]
    async fn a_byte_that_is_not_utf8_refuses_its_envelope_and_no_other() {
        let sim = HecSim::start(HecSimConfig::default()).await.unwrap();
        let good = r#"{"event":{"n":"é1"}} {"event":"two"}"#;
        assert_eq!(post(&sim, good.as_bytes().to_vec()).await.0, 200);
        assert_eq!(sim.accepted_count(), 2);
        assert_eq!(sim.accepted()[0]["event"]["n"], "é1");
        let mut bad = br#"{"event":"three"}{"event":"f"#.to_vec();
        bad.push(0xff);
        bad.extend_from_slice(br#"ur"}{"event":"five"}"#);
        let (status, reply) = post(&sim, bad).await;
        assert_eq!(status, 400);
        assert_eq!(reply["code"], 6, "{reply}");
        assert_eq!(reply["invalid-event-number"], 1, "{reply}");
        assert_eq!(
            sim.accepted_count(),
            3,
            "the envelope before the bad byte is taken"
        );
    }
}
