//! Tenable Security Center simulator: `/rest/system`, session login/logout (`/rest/token`), API keys,
//! and `/rest/analysis` for `vulndetails` with the real envelope, string-typed rows and offset
//! paging inside `query`, on loopback.
//!
//! Owns: the simulated findings (added, re-observed, mitigated and corrupted by tests, at once or
//! scheduled before the n-th analysis request so they land between the pages of a pass) and
//! faults. Must not: be reachable from anything but loopback. Invariant: a page found through
//! the index by sort field (rebuilt after every change) is the page a scan of every finding finds.
//!
//! Quirks modelled (reference/vendor-apis.md §3 unless noted; harsher behaviour where unsure):
//! - Envelope `{type, response, error_code, error_msg, warnings, timestamp}`; a non-zero
//!   `error_code` can come with HTTP 200 (`error_on_ok`; §3.4, pyTenable `_resp_error_check`), an
//!   unknown filter is 403 with `error_code` 146 (§3.3, pyTenable `analysis.py` docstring).
//! - Every scalar of a row is a string, and so are `totalRecords`, `startOffset` and `endOffset`
//!   (§3.3 response, §3.5; pyTenable `test_analysis_vulns_vulndetails_tool` cassette).
//! - Offset paging inside `query` (`startOffset`/`endOffset`, §3.3), sorted by `sortField`
//!   (`lastSeen`, or `lastMitigated` for `patched`). Many rows share one second (a scan imports a
//!   host's findings with one `lastSeen`), and the order of such ties is NOT stable between
//!   requests: nothing documents a secondary order, so ties are shuffled per request.
//! - The result set changes under paging: a finding re-observed by a scan mid-pass gets a new
//!   `lastSeen` (later rows shift left, §3.3 "Cursor and identity" and DESIGN.md); new findings
//!   are imported between pages, with a scan time that may be before the newest row (the reason
//!   for `overlap_hours`); a mitigated finding moves from `cumulative` to `patched`, and a
//!   mitigated one seen again reopens (moves back, leaving the patched window).
//! - Sessions (§3.2): `POST /rest/token` gives a numeric token and a `TNS_SESSIONID` cookie, both
//!   needed; an expired or dropped session is answered **HTTP 403 with `error_code` 12**
//!   ("Invalid token"), as a real SecurityCenter does, not 401 (issue 8, defect 4). Wrong API keys
//!   are 401 `error_code` 74.
//! - A row's keys come in the vendor's order (`pluginID`, `severity`, `hasBeenMitigated`, …; the
//!   pyTenable cassette above), not sorted: a consumer that rebuilds rows through a map changes
//!   their bytes.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::mix;

/// Filters `/rest/analysis` knows (an unknown one is error_code 146).
const KNOWN_FILTERS: [&str; 8] = [
    "lastSeen",
    "lastMitigated",
    "severity",
    "repositoryIDs",
    "pluginID",
    "port",
    "protocol",
    "exploitAvailable",
];

/// What the simulator accepts.
#[derive(Debug, Clone)]
pub struct TenableSimConfig {
    /// API access key.
    pub access_key: String,
    /// API secret key.
    pub secret_key: String,
    /// Session username.
    pub username: String,
    /// Session password.
    pub password: String,
    /// Seconds a session lives.
    pub session_timeout_secs: f64,
    /// Seed of generated rows.
    pub seed: u64,
}

impl Default for TenableSimConfig {
    fn default() -> Self {
        TenableSimConfig {
            access_key: "ak-1".into(),
            secret_key: "sim-tenable-secret".into(),
            username: "secmanager".into(),
            password: "sim-tenable-password".into(),
            session_timeout_secs: 3600.0,
            seed: 7,
        }
    }
}

/// Fault switches.
#[derive(Debug, Default)]
pub struct TenableFaults {
    /// Delay every analysis response, milliseconds.
    pub delay_ms: AtomicU64,
    /// Findings that appear inside the queried window (60 s before its end) with every analysis
    /// request, so the result set grows between the pages of a pass.
    pub arrivals_per_page: AtomicU64,
    /// Answer this many analysis requests with HTTP 200 but a non-zero `error_code`.
    pub error_on_ok: AtomicU64,
    /// Refuse every session, even a fresh one (403, `error_code` 12), as a server does whose
    /// session handling is broken; logins still succeed.
    pub sessions_refused: AtomicBool,
}

/// A change to the simulated findings, applied at once or scheduled between analysis requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenableChange {
    /// A scan sees finding `n` again at `at` (epoch seconds): its `lastSeen` moves; a mitigated
    /// finding reopens (moves back from `patched` to `cumulative`).
    Reobserve {
        /// The finding's number.
        n: u64,
        /// The new `lastSeen`, epoch seconds.
        at: i64,
    },
    /// `count` new open findings are imported, last seen at `at` (epoch seconds).
    Insert {
        /// How many.
        count: u64,
        /// Their `lastSeen`, epoch seconds.
        at: i64,
    },
    /// Finding `n` is fixed: it moves to `patched`, mitigated at `at` (epoch seconds).
    Mitigate {
        /// The finding's number.
        n: u64,
        /// `lastMitigated`, epoch seconds.
        at: i64,
    },
    /// Every session ends (server restart, timeout): the next request with one gets 403/12.
    ExpireSessions,
}

/// One finding: a plugin result on a host's port.
#[derive(Debug, Clone)]
struct Finding {
    n: u64,
    repository: u64,
    ip: String,
    dns: String,
    plugin: u64,
    port: u64,
    protocol: &'static str,
    first_seen: i64,
    last_seen: i64,
    mitigated: Option<i64>,
    /// A field rendered with this text instead of its value (a malformed row).
    corrupt: Option<(String, String)>,
}

/// The findings, numbered by position, and their order by sort field for the queries that can
/// use it: a page of a million findings is then found in the time of a thousand, not by a scan
/// of all of them (which made this simulator the bottleneck of a 1M-finding backfill).
#[derive(Default)]
struct Findings {
    list: Vec<Finding>,
    /// `(sort key, position)` ascending, for `[cumulative, patched]` (`lastSeen` of the open
    /// findings, `lastMitigated` of the mitigated ones); built by the first query after a change.
    by_key: OnceLock<[Vec<(i64, u32)>; 2]>,
}

impl Findings {
    /// The list, to change: the order by sort field is made again by the next query.
    fn list_mut(&mut self) -> &mut Vec<Finding> {
        self.by_key = OnceLock::new();
        &mut self.list
    }

    /// The findings of one source type in the order of their sort field.
    fn by_key(&self, patched: bool) -> &[(i64, u32)] {
        let [open, mitigated] = self.by_key.get_or_init(|| {
            let (mut open, mut mitigated) = (Vec::new(), Vec::new());
            for (i, f) in self.list.iter().enumerate() {
                match f.mitigated {
                    Some(at) => mitigated.push((at, i as u32)),
                    None => open.push((f.last_seen, i as u32)),
                }
            }
            open.sort_unstable();
            mitigated.sort_unstable();
            [open, mitigated]
        });
        if patched {
            mitigated
        } else {
            open
        }
    }
}

/// What an analysis query selects, as [`select`] reads it.
struct Selection<'q> {
    /// `sourceType` `patched` (else `cumulative`).
    patched: bool,
    /// A time filter: its name (`lastSeen` or `lastMitigated`) and inclusive bounds.
    bounds: Option<(&'q str, i64, i64)>,
    /// A `severity` filter's values.
    severities: Option<Vec<String>>,
    /// `endOffset`: rows past it are not needed.
    end: usize,
    /// The request's number, which orders ties anew each time.
    number: u64,
}

/// The first `end` matching findings in the order served (sort field, ties shuffled per request),
/// and how many match in all (`totalRecords`). `use_index: false` always scans every finding, as
/// the index must give the same answer (the tests hold the two to it).
fn select<'f>(
    findings: &'f Findings,
    seed: u64,
    q: &Selection<'_>,
    use_index: bool,
) -> (Vec<&'f Finding>, usize) {
    let patched = q.patched;
    let key = |f: &Finding| {
        if patched {
            f.mitigated.unwrap_or(0)
        } else {
            f.last_seen
        }
    };
    // Ties in the sort field come back in a different order on every request.
    let order = |f: &&Finding| (key(f), mix(mix(seed ^ q.number) ^ f.n));
    // The index holds the sort field of each source type; a filter on the other time field, or
    // on severity, is answered by a scan.
    let indexed = use_index
        && q.severities.is_none()
        && match q.bounds {
            None => true,
            Some(("lastMitigated", ..)) => patched,
            Some(_) => !patched,
        };
    let (mut matched, total) = if indexed {
        let keys = findings.by_key(patched);
        let window = match q.bounds {
            Some((_, a, b)) => {
                &keys[keys.partition_point(|k| k.0 < a)..keys.partition_point(|k| k.0 <= b)]
            }
            None => keys,
        };
        // The first `end` rows are among those before the `end`-th key and every row sharing it.
        let mut take = q.end.min(window.len());
        if let Some(&(last, _)) = take.checked_sub(1).map(|i| &window[i]) {
            take += window[take..].iter().take_while(|k| k.0 == last).count();
        }
        let rows = window[..take]
            .iter()
            .map(|&(_, i)| &findings.list[i as usize])
            .collect();
        (rows, window.len())
    } else {
        let rows: Vec<&Finding> = findings
            .list
            .iter()
            .filter(|f| f.mitigated.is_some() == patched)
            .filter(|f| match q.bounds {
                Some(("lastMitigated", a, b)) => f.mitigated.is_some_and(|m| m >= a && m <= b),
                Some((_, a, b)) => f.last_seen >= a && f.last_seen <= b,
                None => true,
            })
            .filter(|f| {
                q.severities.as_ref().is_none_or(|wanted| {
                    let r = mix(seed ^ mix(f.n));
                    wanted.contains(&(r % 5).to_string())
                })
            })
            .collect();
        let total = rows.len();
        (rows, total)
    };
    // Only the rows up to `end` need their order (the key is a total order: `mix` is a
    // bijection, so no two findings tie): select them, then sort just those.
    if q.end < matched.len() {
        matched.select_nth_unstable_by_key(q.end, order);
        matched.truncate(q.end);
    }
    matched.sort_unstable_by_key(order);
    (matched, total)
}

struct Shared {
    config: TenableSimConfig,
    findings: RwLock<Findings>,
    faults: TenableFaults,
    sessions: Mutex<Vec<(String, String, Instant)>>,
    logins: AtomicU64,
    logouts: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    analysis_requests: Mutex<Vec<(Value, u16)>>,
    /// Analysis requests received so far (the clock scheduled changes run on).
    analysis_count: AtomicU64,
    /// Changes waiting for their request number, in the order they were scheduled.
    pending: Mutex<Vec<(u64, TenableChange)>>,
    /// Every (patched, identity) that has existed.
    ever: Mutex<BTreeSet<(bool, String)>>,
}

/// A running simulator. Dropping it stops the server.
pub struct TenableSim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    _server: super::ServerTask,
    https: bool,
}

impl TenableSim {
    /// Starts on `127.0.0.1` on a free port, with no findings.
    pub async fn start(config: TenableSimConfig) -> std::io::Result<TenableSim> {
        Self::start_with(config, None).await
    }

    /// Starts serving HTTPS with `tls` (its certificate, and whether it asks for client ones).
    pub async fn start_tls(
        config: TenableSimConfig,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<TenableSim> {
        Self::start_with(config, Some(tls)).await
    }

    async fn start_with(
        config: TenableSimConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<TenableSim> {
        let https = tls.is_some();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config,
            findings: RwLock::new(Findings::default()),
            faults: TenableFaults::default(),
            sessions: Mutex::new(Vec::new()),
            logins: AtomicU64::new(0),
            logouts: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            analysis_requests: Mutex::new(Vec::new()),
            analysis_count: AtomicU64::new(0),
            pending: Mutex::new(Vec::new()),
            ever: Mutex::new(BTreeSet::new()),
        });
        let app = Router::new()
            .route("/rest/system", get(system))
            .route("/rest/token", post(login).delete(logout))
            .route("/rest/analysis", post(analysis))
            .with_state(shared.clone());
        let server = super::spawn_server(listener, app, tls);
        Ok(TenableSim {
            shared,
            addr,
            _server: server,
            https,
        })
    }

    /// Base URL (without `/rest`); `https://localhost:…` when serving TLS, to match the name in
    /// the test certificates.
    pub fn url(&self) -> String {
        if self.https {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// The fault switches.
    pub fn faults(&self) -> &TenableFaults {
        &self.shared.faults
    }

    /// Adds `count` open findings last seen between `from` and `to` (epoch seconds), spread evenly.
    /// Returns their numbers.
    pub fn add_findings(&self, count: u64, from: i64, to: i64) -> Vec<u64> {
        let mut findings = self
            .shared
            .findings
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let findings = findings.list_mut();
        let start = findings.len() as u64;
        let span = (to - from).max(1);
        let numbers = (0..count)
            .map(|i| {
                let n = start + i;
                let last_seen = from + (i as i64 * span) / count.max(1) as i64;
                findings.push(new_finding(self.shared.config.seed, n, last_seen));
                n
            })
            .collect();
        remember(&self.shared, &findings[start as usize..]);
        numbers
    }

    /// A scan sees finding `n` again at `at` (epoch seconds); a mitigated finding reopens.
    pub fn reobserve(&self, n: u64, at: i64) {
        self.change(TenableChange::Reobserve { n, at });
    }

    /// Finding `n` is fixed: it moves to the patched set, mitigated at `at`.
    pub fn mitigate(&self, n: u64, at: i64) {
        self.change(TenableChange::Mitigate { n, at });
    }

    /// Every session ends now; the next request with one is answered 403, `error_code` 12.
    pub fn expire_sessions(&self) {
        self.change(TenableChange::ExpireSessions);
    }

    /// Applies `change` now.
    pub fn change(&self, change: TenableChange) {
        apply(&self.shared, &change);
    }

    /// Applies `change` just before the analysis request number `request` (counted from 1 since
    /// the start) is answered, so it lands between the pages of a pass.
    pub fn schedule(&self, request: u64, change: TenableChange) {
        if let Ok(mut pending) = self.shared.pending.lock() {
            pending.push((request, change));
        }
    }

    /// Applies every scheduled change whose request has not come yet, in order; returns how many.
    pub fn apply_pending(&self) -> usize {
        let due: Vec<(u64, TenableChange)> = match self.shared.pending.lock() {
            Ok(mut pending) => std::mem::take(&mut *pending),
            Err(_) => Vec::new(),
        };
        for (_, change) in &due {
            apply(&self.shared, change);
        }
        due.len()
    }

    /// Analysis requests received so far.
    pub fn analysis_count(&self) -> u64 {
        self.shared.analysis_count.load(Ordering::SeqCst)
    }

    /// Renders `field` of finding `n` as `text` from now on (a malformed row, e.g. a port of
    /// `"n/a"`).
    pub fn corrupt(&self, n: u64, field: &str, text: &str) {
        let mut findings = self
            .shared
            .findings
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(f) = findings.list_mut().iter_mut().find(|f| f.n == n) {
            f.corrupt = Some((field.to_string(), text.to_string()));
        }
    }

    /// Every identity that has existed so far in `cumulative` (open) or `patched` (mitigated),
    /// including observations already replaced by a later one.
    pub fn identities_ever(&self, patched: bool) -> Vec<String> {
        self.shared
            .ever
            .lock()
            .map(|ever| {
                ever.iter()
                    .filter(|(p, _)| *p == patched)
                    .map(|(_, id)| id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The identities secrelay should derive for every finding currently in `cumulative` (open)
    /// or `patched` (mitigated).
    pub fn identities(&self, patched: bool) -> Vec<String> {
        let findings = self
            .shared
            .findings
            .read()
            .unwrap_or_else(|e| e.into_inner());
        findings
            .list
            .iter()
            .filter(|f| f.mitigated.is_some() == patched)
            .map(|f| identity(self.shared.config.seed, f))
            .collect()
    }

    /// The text of finding `n`'s row as `/rest/analysis` serves it now, keyed by the identity
    /// secrelay should derive for it; every current finding.
    pub fn rows(&self) -> Vec<(String, String)> {
        let findings = self
            .shared
            .findings
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let seed = self.shared.config.seed;
        findings
            .list
            .iter()
            .map(|f| {
                let mut out = Vec::new();
                write_row(&mut out, seed, f);
                (
                    identity(seed, f),
                    String::from_utf8_lossy(&out).into_owned(),
                )
            })
            .collect()
    }

    /// Session logins so far.
    pub fn logins(&self) -> u64 {
        self.shared.logins.load(Ordering::SeqCst)
    }

    /// Session logouts so far.
    pub fn logouts(&self) -> u64 {
        self.shared.logouts.load(Ordering::SeqCst)
    }

    /// The most analysis requests in flight at once so far.
    pub fn max_in_flight(&self) -> u64 {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Every analysis request body with the HTTP status answered.
    pub fn analysis_requests(&self) -> Vec<(Value, u16)> {
        self.shared
            .analysis_requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }
}

/// The identity DESIGN.md gives a finding's current observation.
fn identity(seed: u64, f: &Finding) -> String {
    let host = if f.dns.is_empty() {
        agent_uuid(seed, f)
    } else {
        f.dns.clone()
    };
    format!(
        "{}|{}|{}|{}|{}|{}|{}",
        f.repository, f.ip, host, f.plugin, f.port, f.protocol, f.last_seen
    )
}

/// Adds every current observation to the ever-existed set.
fn remember(s: &Shared, findings: &[Finding]) {
    if let Ok(mut ever) = s.ever.lock() {
        for f in findings {
            ever.insert((f.mitigated.is_some(), identity(s.config.seed, f)));
        }
    }
}

fn apply(s: &Shared, change: &TenableChange) {
    if *change == TenableChange::ExpireSessions {
        if let Ok(mut sessions) = s.sessions.lock() {
            sessions.clear();
        }
        return;
    }
    let mut findings = s.findings.write().unwrap_or_else(|e| e.into_inner());
    let findings = findings.list_mut();
    // Findings are numbered by their position, so `n` indexes them.
    let changed = match change {
        TenableChange::Reobserve { n, at } => findings.get_mut(*n as usize).map(|f| {
            f.last_seen = *at;
            f.mitigated = None;
            *n as usize..*n as usize + 1
        }),
        TenableChange::Insert { count, at } => {
            let first = findings.len();
            for i in 0..*count {
                findings.push(new_finding(s.config.seed, first as u64 + i, *at));
            }
            Some(first..findings.len())
        }
        TenableChange::Mitigate { n, at } => findings.get_mut(*n as usize).map(|f| {
            f.mitigated = Some(*at);
            *n as usize..*n as usize + 1
        }),
        // Answered above: it changes no finding, so the order by sort field stays.
        TenableChange::ExpireSessions => None,
    };
    if let Some(range) = changed {
        remember(s, &findings[range]);
    }
}

fn new_finding(seed: u64, n: u64, last_seen: i64) -> Finding {
    let r = mix(seed ^ mix(n));
    const PROTOCOLS: [&str; 3] = ["TCP", "UDP", "ICMP"];
    let host = (r >> 8) % 250;
    Finding {
        n,
        repository: 1 + r % 3,
        ip: format!("10.{}.{}.{}", (r >> 16) % 4, host / 250, host + 1),
        // Agent-scanned hosts (one in five) have no DNS name; they are told apart by uuid.
        dns: if r.is_multiple_of(5) {
            String::new()
        } else {
            format!("host{host}.corp.example.com")
        },
        plugin: 10_000 + n,
        port: [0, 22, 80, 443, 3389][(r >> 24) as usize % 5],
        protocol: PROTOCOLS[(r >> 28) as usize % 3],
        first_seen: last_seen - 86_400 * ((r >> 32) % 90) as i64,
        last_seen,
        mitigated: None,
        corrupt: None,
    }
}

/// Agent-scanned hosts (no DNS name) carry an agent uuid; others an empty one.
fn agent_uuid(seed: u64, f: &Finding) -> String {
    if f.dns.is_empty() {
        format!(
            "{:08x}-0000-4000-8000-{:012x}",
            mix(seed ^ mix(f.n)) >> 32,
            f.n
        )
    } else {
        String::new()
    }
}

fn render(seed: u64, f: &Finding) -> Value {
    let r = mix(seed ^ mix(f.n));
    let severity = (r % 5) as usize;
    let names = ["Info", "Low", "Medium", "High", "Critical"];
    let uuid = agent_uuid(seed, f);
    let mut row = json!({
        "pluginID": f.plugin.to_string(),
        "severity": {"id": severity.to_string(), "name": names[severity], "description": format!("{} Severity", names[severity])},
        "hasBeenMitigated": if f.mitigated.is_some() { "1" } else { "0" },
        "acceptRisk": "0",
        "recastRisk": "0",
        "ip": f.ip,
        "uuid": uuid,
        "port": f.port.to_string(),
        "protocol": f.protocol,
        "pluginName": format!("Simulated check {}", f.plugin),
        "firstSeen": f.first_seen.to_string(),
        "lastSeen": f.last_seen.to_string(),
        "lastMitigated": f.mitigated.map(|m| m.to_string()).unwrap_or_default(),
        "exploitAvailable": if r.is_multiple_of(3) { "Yes" } else { "No" },
        "synopsis": "The remote host is affected by a simulated vulnerability.",
        "solution": "Upgrade to the latest version.",
        "vprScore": format!("{:.1}", (r % 100) as f64 / 10.0),
        "baseScore": format!("{:.1}", (r % 100) as f64 / 10.0),
        "cvssV3BaseScore": format!("{:.1}", ((r >> 8) % 100) as f64 / 10.0),
        "cve": format!("CVE-2024-{}", 1000 + f.n % 9000),
        "dnsName": f.dns,
        "macAddress": format!("00:50:56:{:02x}:{:02x}:{:02x}", (r >> 40) & 0xff, (r >> 48) & 0xff, (r >> 56) & 0xff),
        "netbiosName": "",
        "operatingSystem": "Linux Kernel 5.15",
        "uniqueness": "repositoryID,ip,dnsName",
        "family": {"id": "1", "name": "General", "type": "active"},
        "repository": {"id": f.repository.to_string(), "name": format!("Repository {}", f.repository), "description": "", "dataFormat": "IPv4"},
        "pluginInfo": format!("{} ({}/6) Simulated check", f.plugin, f.port),
    });
    if let Some((field, text)) = &f.corrupt {
        row[field.as_str()] = json!(text);
    }
    row
}

/// The keys of a row in the order a SecurityCenter writes them (pyTenable's
/// `test_analysis_vulns_vulndetails_tool` cassette): not sorted, so a consumer that re-serialises
/// rows through a map shows up as changed bytes.
#[cfg(test)]
const ROW_KEYS: [&str; 28] = [
    "pluginID",
    "severity",
    "hasBeenMitigated",
    "acceptRisk",
    "recastRisk",
    "ip",
    "uuid",
    "port",
    "protocol",
    "pluginName",
    "firstSeen",
    "lastSeen",
    "lastMitigated",
    "exploitAvailable",
    "synopsis",
    "solution",
    "vprScore",
    "baseScore",
    "cvssV3BaseScore",
    "cve",
    "dnsName",
    "macAddress",
    "netbiosName",
    "operatingSystem",
    "uniqueness",
    "family",
    "repository",
    "pluginInfo",
];

/// Writes finding `f`'s row as JSON: [`render`]'s fields and values, in the vendor's key order
/// (`ROW_KEYS`), written without building a `Value`; a corrupted row goes through `render` (keys
/// sorted).
fn write_row(out: &mut Vec<u8>, seed: u64, f: &Finding) {
    use super::json_bytes::{string, uint};
    if f.corrupt.is_some() {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &render(seed, f));
        return;
    }
    let r = mix(seed ^ mix(f.n));
    let severity = (r % 5) as usize;
    let names = ["Info", "Low", "Medium", "High", "Critical"];
    let score = (r % 100) as f64 / 10.0;
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "{{\"pluginID\":\"{plugin}\",\"severity\":{{\"id\":\"{severity}\",\"name\":\"{name}\",\"description\":\"{name} Severity\"}},\"hasBeenMitigated\":\"{}\",\"acceptRisk\":\"0\",\"recastRisk\":\"0\",\"ip\":",
        if f.mitigated.is_some() { "1" } else { "0" },
        plugin = f.plugin,
        name = names[severity],
    );
    string(out, &f.ip);
    out.extend_from_slice(b",\"uuid\":");
    string(out, &agent_uuid(seed, f));
    let _ = write!(out, ",\"port\":\"{}\",\"protocol\":", f.port);
    string(out, f.protocol);
    let _ = write!(
        out,
        ",\"pluginName\":\"Simulated check {}\",\"firstSeen\":\"{}\",\"lastSeen\":\"{}\",\"lastMitigated\":\"",
        f.plugin, f.first_seen, f.last_seen,
    );
    if let Some(m) = f.mitigated {
        let _ = write!(out, "{m}");
    }
    let _ = write!(
        out,
        "\",\"exploitAvailable\":\"{}\",\"synopsis\":\"The remote host is affected by a simulated vulnerability.\",\"solution\":\"Upgrade to the latest version.\",\"vprScore\":\"{score:.1}\",\"baseScore\":\"{score:.1}\",\"cvssV3BaseScore\":\"{:.1}\",\"cve\":\"CVE-2024-{}\",\"dnsName\":",
        if r.is_multiple_of(3) { "Yes" } else { "No" },
        ((r >> 8) % 100) as f64 / 10.0,
        1000 + f.n % 9000,
    );
    string(out, &f.dns);
    let _ = write!(
        out,
        ",\"macAddress\":\"00:50:56:{:02x}:{:02x}:{:02x}\",\"netbiosName\":\"\",\"operatingSystem\":\"Linux Kernel 5.15\",\"uniqueness\":\"repositoryID,ip,dnsName\",\"family\":{{\"id\":\"1\",\"name\":\"General\",\"type\":\"active\"}},\"repository\":{{\"id\":\"",
        (r >> 40) & 0xff,
        (r >> 48) & 0xff,
        (r >> 56) & 0xff,
    );
    uint(out, f.repository);
    out.extend_from_slice(b"\",\"name\":\"Repository ");
    uint(out, f.repository);
    let _ = write!(
        out,
        "\",\"description\":\"\",\"dataFormat\":\"IPv4\"}},\"pluginInfo\":\"{} ({}/6) Simulated check\"}}",
        f.plugin, f.port,
    );
}

/// The body of an analysis page: the envelope around `{endOffset, matchingDataElementCount,
/// results, returnedRecords, startOffset, totalRecords}`, the bytes of that object built of
/// `Value`s, rows written by [`write_row`].
fn analysis_body(
    seed: u64,
    rows: &[&Finding],
    total: usize,
    start: usize,
    end: usize,
    timestamp: i64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(1200 * rows.len() + 256);
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "{{\"error_code\":0,\"error_msg\":\"\",\"response\":{{\"endOffset\":\"{end}\",\"matchingDataElementCount\":\"{total}\",\"results\":["
    );
    for (i, f) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_row(&mut out, seed, f);
    }
    let _ = write!(
        out,
        "],\"returnedRecords\":{},\"startOffset\":\"{start}\",\"totalRecords\":\"{total}\"}},\"timestamp\":{timestamp},\"type\":\"regular\",\"warnings\":[]}}",
        rows.len()
    );
    out
}

fn envelope(status: StatusCode, response: Value, error_code: i64, error_msg: &str) -> Response {
    (
        status,
        Json(json!({
            "type": "regular",
            "response": response,
            "error_code": error_code,
            "error_msg": error_msg,
            "warnings": [],
            "timestamp": chrono::Utc::now().timestamp(),
        })),
    )
        .into_response()
}

async fn system() -> Response {
    envelope(
        StatusCode::OK,
        json!({"version": "6.4.0", "buildID": "202407241", "sessionTimeout": "3600", "licenseStatus": "Valid"}),
        0,
        "",
    )
}

async fn login(State(s): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    if body["username"] != s.config.username.as_str()
        || body["password"] != s.config.password.as_str()
    {
        return envelope(
            StatusCode::FORBIDDEN,
            json!(""),
            74,
            "Invalid login credentials",
        );
    }
    let n = s.logins.fetch_add(1, Ordering::SeqCst) + 1;
    let token = format!("{}", 2_023_559_547 + n);
    let cookie = format!("{:016x}", mix(n ^ s.config.seed));
    if let Ok(mut sessions) = s.sessions.lock() {
        sessions.push((token.clone(), cookie.clone(), Instant::now()));
    }
    let mut response = envelope(
        StatusCode::OK,
        json!({"token": token.parse::<u64>().unwrap_or(0), "unassociatedCert": "false"}),
        0,
        "",
    );
    if let Ok(v) = format!("TNS_SESSIONID={cookie}; path=/; secure; HttpOnly").parse() {
        response.headers_mut().insert("set-cookie", v);
    }
    response
}

fn session_of(s: &Shared, headers: &HeaderMap) -> Option<String> {
    let token = headers.get("x-securitycenter")?.to_str().ok()?;
    let cookie = headers
        .get("cookie")?
        .to_str()
        .ok()?
        .split(';')
        .find_map(|c| c.trim().strip_prefix("TNS_SESSIONID="))?;
    if s.faults.sessions_refused.load(Ordering::SeqCst) {
        return None;
    }
    let sessions = s.sessions.lock().ok()?;
    sessions
        .iter()
        .find(|(t, c, at)| {
            t == token && c == cookie && at.elapsed().as_secs_f64() < s.config.session_timeout_secs
        })
        .map(|(t, _, _)| t.clone())
}

async fn logout(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    match session_of(&s, &headers) {
        Some(token) => {
            if let Ok(mut sessions) = s.sessions.lock() {
                sessions.retain(|(t, _, _)| *t != token);
            }
            s.logouts.fetch_add(1, Ordering::SeqCst);
            envelope(StatusCode::OK, json!(""), 0, "")
        }
        None => invalid_token(),
    }
}

/// What a real SecurityCenter answers a request whose session expired or was dropped.
fn invalid_token() -> Response {
    envelope(StatusCode::FORBIDDEN, json!(""), 12, "Invalid token")
}

fn api_key_ok(s: &Shared, headers: &HeaderMap) -> bool {
    let Some(value) = headers.get("x-apikey").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut access = None;
    let mut secret = None;
    for part in value.split(';') {
        let (k, v) = part.trim().split_once('=').unwrap_or_default();
        match k.to_ascii_lowercase().as_str() {
            "accesskey" => access = Some(v),
            "secretkey" => secret = Some(v),
            _ => {}
        }
    }
    access == Some(s.config.access_key.as_str()) && secret == Some(s.config.secret_key.as_str())
}

/// Decrements the in-flight count when a request ends, however it ends.
struct InFlight<'a>(&'a Shared);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn analysis(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let now_in_flight = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let _guard = InFlight(&s);
    s.max_in_flight.fetch_max(now_in_flight, Ordering::SeqCst);
    let delay = s.faults.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let number = s.analysis_count.fetch_add(1, Ordering::SeqCst) + 1;
    let due: Vec<TenableChange> = match s.pending.lock() {
        Ok(mut pending) => {
            let (due, later) = std::mem::take(&mut *pending)
                .into_iter()
                .partition(|(at, _)| *at <= number);
            *pending = later;
            due.into_iter().map(|(_, c)| c).collect()
        }
        Err(_) => Vec::new(),
    };
    for change in &due {
        apply(&s, change);
    }
    let response = analysis_response(&s, &headers, &body, number);
    if let Ok(mut log) = s.analysis_requests.lock() {
        log.push((body, response.status().as_u16()));
    }
    response
}

fn window(value: &str) -> Option<(i64, i64)> {
    let (a, b) = value.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn analysis_response(s: &Shared, headers: &HeaderMap, body: &Value, number: u64) -> Response {
    if !api_key_ok(s, headers) {
        if headers.contains_key("x-securitycenter") {
            if session_of(s, headers).is_none() {
                return invalid_token();
            }
        } else {
            return envelope(StatusCode::UNAUTHORIZED, json!(""), 74, "Invalid API keys");
        }
    }
    if s.faults
        .error_on_ok
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return envelope(
            StatusCode::OK,
            json!(""),
            1,
            "Unable to retrieve vulnerability data: database busy",
        );
    }
    let query = &body["query"];
    if body["type"] != "vuln" || query["tool"] != "vulndetails" {
        return envelope(
            StatusCode::FORBIDDEN,
            json!(""),
            146,
            "Invalid parameters specified: only vulndetails is simulated",
        );
    }
    let patched = body["sourceType"] == "patched";
    let mut bounds: Option<(&str, i64, i64)> = None;
    let mut severities: Option<Vec<String>> = None;
    for filter in query["filters"].as_array().cloned().unwrap_or_default() {
        let name = filter["filterName"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if !KNOWN_FILTERS.contains(&name.as_str()) {
            return envelope(
                StatusCode::FORBIDDEN,
                json!(""),
                146,
                &format!(
                    "Invalid parameters specified: unknown filter '{name}'. Valid filters: {}",
                    KNOWN_FILTERS.join(", ")
                ),
            );
        }
        let value = filter["value"].as_str().unwrap_or_default();
        match name.as_str() {
            "lastSeen" | "lastMitigated" => match window(value) {
                Some((a, b)) => {
                    bounds = Some((
                        if name == "lastSeen" {
                            "lastSeen"
                        } else {
                            "lastMitigated"
                        },
                        a,
                        b,
                    ))
                }
                None => {
                    return envelope(
                        StatusCode::FORBIDDEN,
                        json!(""),
                        146,
                        "Invalid parameters specified: bad time window",
                    )
                }
            },
            "severity" => severities = Some(value.split(',').map(str::to_string).collect()),
            _ => {}
        }
    }
    let start = query["startOffset"].as_u64().unwrap_or(0) as usize;
    let end = query["endOffset"].as_u64().unwrap_or(50) as usize;
    // New findings arrive while a pass is under way: inside the window, so totalRecords changes.
    let arrivals = s.faults.arrivals_per_page.load(Ordering::SeqCst);
    if arrivals > 0 {
        if let Some((_, a, b)) = bounds {
            let mut findings = s.findings.write().unwrap_or_else(|e| e.into_inner());
            let findings = findings.list_mut();
            let first = findings.len();
            for i in 0..arrivals {
                findings.push(new_finding(
                    s.config.seed,
                    (first as u64) + i,
                    (b - 60).max(a),
                ));
            }
            remember(s, &findings[first..]);
        }
    }
    let findings = s.findings.read().unwrap_or_else(|e| e.into_inner());
    let selection = Selection {
        patched,
        bounds,
        severities,
        end,
        number,
    };
    let (matched, total) = select(&findings, s.config.seed, &selection, true);
    let rows = matched.get(start..).unwrap_or_default();
    let body = analysis_body(
        s.config.seed,
        rows,
        total,
        start,
        end,
        chrono::Utc::now().timestamp(),
    );
    (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index answers every query as the scan of all findings does: the same rows in the same
    /// order and the same total, with ties on the sort field, both source types, every kind of
    /// filter and offsets short of, at and past the end; and again after the findings change.
    #[test]
    fn the_index_selects_what_a_scan_of_every_finding_selects() {
        let seed = 11;
        let base = 1_764_547_200;
        let mut findings = Findings::default();
        // 40 distinct times for 3,000 findings: ties of ~75 rows on every key.
        for n in 0..3_000u64 {
            let mut f = new_finding(seed, n, base + (mix(n) % 40) as i64 * 60);
            if mix(n ^ 0xA5).is_multiple_of(4) {
                f.mitigated = Some(base + (mix(n ^ 0x5A) % 30) as i64 * 60);
            }
            findings.list_mut().push(f);
        }
        let numbers = |rows: &[&Finding]| rows.iter().map(|f| f.n).collect::<Vec<_>>();
        let mut indexed_queries = 0;
        for case in 0..2_000u64 {
            if case == 1_000 {
                // A re-observation and a mitigation move rows between keys and source types.
                let list = findings.list_mut();
                list[7].last_seen = base + 5 * 60;
                list[7].mitigated = None;
                list[8].mitigated = Some(base);
            }
            let r = mix(case ^ 0xBEEF);
            let (a, b) = (
                base + (r % 50) as i64 * 60,
                base + ((r >> 8) % 50) as i64 * 60,
            );
            let bounds = match (r >> 16) % 4 {
                0 => None,
                1 | 2 => Some(("lastSeen", a.min(b), a.max(b))),
                _ => Some(("lastMitigated", a.min(b), a.max(b))),
            };
            let q = Selection {
                patched: (r >> 20).is_multiple_of(3),
                bounds,
                severities: (r >> 24)
                    .is_multiple_of(5)
                    .then(|| vec!["1".into(), "4".into()]),
                end: [0, 1, 50, 1_000, 5_000][((r >> 28) % 5) as usize],
                number: r >> 32,
            };
            let (by_index, total) = select(&findings, seed, &q, true);
            let (by_scan, scanned_total) = select(&findings, seed, &q, false);
            assert_eq!(total, scanned_total, "case {case}");
            assert_eq!(numbers(&by_index), numbers(&by_scan), "case {case}");
            if q.severities.is_none() && total > q.end && q.end > 0 {
                indexed_queries += 1;
            }
        }
        assert!(indexed_queries > 300, "{indexed_queries}");
    }

    /// Rows and the page around them are written as the bytes their `Value`s serialise to.
    #[test]
    fn written_pages_hold_their_values_with_rows_in_vendor_key_order() {
        for seed in [7, 42] {
            let mut findings: Vec<Finding> = (0..400)
                .map(|n| new_finding(seed, n, 1_764_547_200 + n as i64 * 13))
                .collect();
            findings[3].mitigated = Some(1_764_600_000);
            findings[4].corrupt = Some(("port".into(), "n/a".into()));
            findings[5].corrupt = Some(("notAField".into(), "x".into()));
            for f in &findings {
                let mut out = Vec::new();
                write_row(&mut out, seed, f);
                let text = String::from_utf8(out).unwrap();
                let value: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(value, render(seed, f), "finding {}", f.n);
                if f.corrupt.is_none() {
                    let at: Vec<usize> = ROW_KEYS
                        .iter()
                        .map(|k| text.find(&format!("\"{k}\":")).unwrap())
                        .collect();
                    assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
                    assert_eq!(value.as_object().unwrap().len(), ROW_KEYS.len());
                }
            }
            let rows: Vec<&Finding> = findings.iter().take(6).collect();
            let body = analysis_body(seed, &rows, 400, 0, 50, 1_764_000_000);
            let body: Value = serde_json::from_slice(&body).unwrap();
            let expected = json!({
                "type": "regular",
                "response": {
                    "totalRecords": "400",
                    "returnedRecords": 6,
                    "startOffset": "0",
                    "endOffset": "50",
                    "matchingDataElementCount": "400",
                    "results": rows.iter().map(|f| render(seed, f)).collect::<Vec<_>>(),
                },
                "error_code": 0,
                "error_msg": "",
                "warnings": [],
                "timestamp": 1_764_000_000,
            });
            assert_eq!(body, expected);
        }
    }
}
