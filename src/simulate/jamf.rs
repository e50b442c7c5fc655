//! Jamf Pro simulator: OAuth client credentials, user bearer tokens with keep-alive, Basic on the
//! Classic API (when enabled), `/api/v3` and `/api/v1` computers-inventory with sections, RSQL
//! report-date filter, sort and 0-based pages, and the Classic `/JSSResource/computers` list and
//! per-id records, on loopback.
//!
//! Owns: a fleet of computers generated from a seed (each one's inventory is a pure function of its
//! id and revision), a per-request latency, the count of requests in flight, and computers that
//! report new inventory while a pass runs. Must not: be reachable from anything but loopback.
//!
//! Quirks modelled (reference/vendor-apis.md §4, "the reference" below), harsher where unsure:
//! - Many computers share one `general.reportDate` (ties): [`FleetChange::Report`] gives a whole
//!   group one date; the keyset filter is `>=`, so every poll repeats the computers at the
//!   boundary date (§4.3 "Cursor and identity": elastic's `general.reportDate>=` keyset, "boundary
//!   records repeat").
//! - Computers re-report (their report date moves later) at any time, also between two pages of
//!   one pass: [`JamfSim::schedule`] applies a change after a number of further inventory
//!   requests (§4.3: inventory is re-reported; a pass is many requests).
//! - Computers are deleted and added (new ids are higher than every earlier one) between pages
//!   (§4.3: the Classic list is fetched fresh; Pro API pages are offsets into the live result).
//! - The Classic list `/JSSResource/computers` has no paging: it returns every computer (§4.3).
//! - Report dates are written without fractional seconds when the milliseconds are zero (§4.2:
//!   "Jamf sometimes returns `expires` without fractional seconds"; the same serializer writes
//!   report dates) — `2026-11-20T10:00:00Z` next to `2026-11-20T10:00:00.120Z`.
//! - Report dates never go back: a report is dated when the server records it, so a change dated
//!   before the latest date served gets that date (a tie). The reference documents no late-visible
//!   reports for Jamf (elastic's `>=` keyset relies on this, §4.3).
//! - Tokens expire or are dropped by the server ([`JamfSim::expire_tokens`]; §4.2, 401 with
//!   `{"httpStatus": 401, "errors": [...]}` §4.4).
//! - Classic records carry `general.remote_management.management_password_sha256` (§4.5, the
//!   SDK's COMPUTER_JSON fixture), which a relay must never forward.
//! - A record the relay cannot read: [`FleetChange::Corrupt`] writes a computer's report date as
//!   text that is no time (Pro API) and drops `report_date_epoch` (Classic), as a broken or
//!   customised server would (no documented source: modelled as the harsher case).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::extract::{Form, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{iso_millis as iso, mix};

/// What the simulator serves.
#[derive(Debug, Clone)]
pub struct JamfSimConfig {
    /// API client id.
    pub client_id: String,
    /// API client secret.
    pub client_secret: String,
    /// User for bearer tokens (and Basic, when enabled).
    pub username: String,
    /// Its password.
    pub password: String,
    /// Whether the Classic API still accepts HTTP Basic (off on current servers).
    pub basic_enabled: bool,
    /// Computers in the fleet.
    pub computers: u64,
    /// Latency added to every inventory request, milliseconds.
    pub latency_ms: u64,
    /// Token lifetime, seconds.
    pub token_lifetime_secs: f64,
    /// Seed of the fleet.
    pub seed: u64,
}

impl Default for JamfSimConfig {
    fn default() -> Self {
        JamfSimConfig {
            client_id: "jamf-client".into(),
            client_secret: "sim-jamf-secret".into(),
            username: "jss-admin".into(),
            password: "sim-jamf-password".into(),
            basic_enabled: false,
            computers: 100,
            latency_ms: 0,
            token_lifetime_secs: 1200.0,
            seed: 11,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Computer {
    id: u64,
    report_ms: i64,
    revision: u64,
    /// Its report date is written as text that is no time (and Classic has no epoch).
    corrupt: bool,
}

/// A change to the simulated fleet, applied now ([`JamfSim::apply`]) or between two requests of
/// a pass ([`JamfSim::schedule`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetChange {
    /// A new computer (the next id, higher than every earlier one) that reported at `report_ms`.
    Add {
        /// Report date, epoch milliseconds.
        report_ms: i64,
    },
    /// Computers `ids` report new inventory, all with the same report date `report_ms`.
    Report {
        /// Computers that report.
        ids: Vec<u64>,
        /// Their (shared) new report date, epoch milliseconds.
        report_ms: i64,
    },
    /// Computer `id` is deleted.
    Delete {
        /// The computer.
        id: u64,
    },
    /// Computer `id` reports new inventory at `report_ms`, with a report date no client can read.
    Corrupt {
        /// The computer.
        id: u64,
        /// Report date (the server still sorts and filters by it), epoch milliseconds.
        report_ms: i64,
    },
}

/// How Jamf writes a report date: RFC 3339 UTC, milliseconds only when they are not zero.
pub fn jamf_time(ms: i64) -> String {
    if ms.rem_euclid(1000) == 0 {
        chrono::TimeZone::timestamp_millis_opt(&Utc, ms)
            .single()
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Secs, true)
    } else {
        iso(ms)
    }
}

fn report_text(c: &Computer) -> String {
    if c.corrupt {
        format!("last week ({})", c.report_ms)
    } else {
        jamf_time(c.report_ms)
    }
}

struct Shared {
    config: JamfSimConfig,
    computers: RwLock<Vec<Computer>>,
    tokens: Mutex<HashMap<String, Instant>>,
    token_requests: AtomicU64,
    keep_alives: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    inventory_requests: AtomicU64,
    next_id: AtomicU64,
    /// The server clock's high-water mark: report dates never go back (a report is dated when
    /// the server records it), so a change dated earlier is dated at this instead.
    clock_ms: std::sync::atomic::AtomicI64,
    /// Changes due once `inventory_requests` reaches the number.
    scheduled: Mutex<Vec<(u64, FleetChange)>>,
    /// Every (id, report date) version ever served or servable.
    history: Mutex<std::collections::BTreeSet<(u64, i64, String)>>,
}

/// A running simulator. Dropping it stops the server.
pub struct JamfSim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    _server: super::ServerTask,
}

const APPLICATIONS: [&str; 13] = [
    "Google Chrome.app",
    "Firefox.app",
    "Slack.app",
    "zoom.us.app",
    "Microsoft Word.app",
    "Microsoft Excel.app",
    "Microsoft Outlook.app",
    "1Password 7.app",
    "Visual Studio Code.app",
    "iTerm.app",
    "Docker.app",
    "Tunnelblick.app",
    "Dropbox.app",
];
/// Virtualisation software, on about one computer in ten.
const VM_APPLICATIONS: [&str; 3] = [
    "VMware Fusion.app",
    "Parallels Desktop.app",
    "VirtualBox.app",
];
const PLUGINS: [&str; 6] = [
    "Google Chrome Helper",
    "Adobe Acrobat NPAPI Plug-in",
    "Silverlight.plugin",
    "JavaAppletPlugin.plugin",
    "uBlock Origin",
    "Grammarly for Safari",
];
const SERVICES: [&str; 8] = [
    "com.apple.screensharing",
    "com.openssh.sshd",
    "com.apple.smbd",
    "com.crowdstrike.falcon.Agent",
    "com.jamf.management.daemon",
    "org.cups.cupsd",
    "com.docker.vmnetd",
    "com.apple.ftp-proxy",
];
const MODELS: [&str; 5] = [
    "MacBook Pro (14-inch, 2023)",
    "MacBook Air (M2, 2022)",
    "Mac mini (2023)",
    "iMac (24-inch, 2021)",
    "VMware Virtual Platform",
];

impl JamfSim {
    /// Starts on `127.0.0.1` on a free port with `config.computers` computers, which last reported
    /// over the past ten days (computer `id` earlier than `id + 1` for most of them).
    pub async fn start(config: JamfSimConfig) -> std::io::Result<JamfSim> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let now = Utc::now().timestamp_millis();
        let span = 10 * 86_400_000i64;
        let computers = (1..=config.computers)
            .map(|id| {
                let jitter = (mix(config.seed ^ id) % 60_000) as i64;
                Computer {
                    id,
                    report_ms: now - span + (id as i64 * span) / (config.computers as i64 + 1)
                        - jitter,
                    revision: 0,
                    corrupt: false,
                }
            })
            .collect::<Vec<_>>();
        let history = computers
            .iter()
            .map(|c| (c.id, c.report_ms, report_text(c)))
            .collect();
        let latest = computers.iter().map(|c| c.report_ms).max().unwrap_or(0);
        let shared = Arc::new(Shared {
            clock_ms: std::sync::atomic::AtomicI64::new(latest),
            next_id: AtomicU64::new(config.computers + 1),
            scheduled: Mutex::new(Vec::new()),
            history: Mutex::new(history),
            config,
            computers: RwLock::new(computers),
            tokens: Mutex::new(HashMap::new()),
            token_requests: AtomicU64::new(0),
            keep_alives: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            inventory_requests: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/api/oauth/token", post(oauth))
            .route("/api/v1/auth/token", post(user_token))
            .route("/api/v1/auth/keep-alive", post(keep_alive))
            .route("/api/{version}/computers-inventory", get(inventory))
            .route("/JSSResource/computers", get(classic_list))
            .route("/JSSResource/computers/id/{id}", get(classic_computer))
            .with_state(shared.clone());
        let server = super::spawn_server(listener, app, None);
        Ok(JamfSim {
            shared,
            addr,
            _server: server,
        })
    }

    /// Instance URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Computer `id` reports new inventory now: a later report date and one more application.
    pub fn report(&self, id: u64) {
        let latest = self
            .shared
            .computers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|c| c.report_ms)
            .max()
            .unwrap_or(0);
        self.apply(FleetChange::Report {
            ids: vec![id],
            report_ms: Utc::now().timestamp_millis().max(latest + 1),
        });
    }

    /// Applies `change` now; returns the id of an added computer.
    pub fn apply(&self, change: FleetChange) -> Option<u64> {
        apply(&self.shared, change)
    }

    /// Applies `change` once `after_requests` more inventory requests (Pro or Classic, list or
    /// record) have arrived, before answering the last of them: a change between two pages.
    pub fn schedule(&self, after_requests: u64, change: FleetChange) {
        let due = self.shared.inventory_requests.load(Ordering::SeqCst) + after_requests.max(1);
        if let Ok(mut scheduled) = self.shared.scheduled.lock() {
            scheduled.push((due, change));
        }
    }

    /// Drops every change scheduled and not yet applied; returns how many there were.
    pub fn clear_schedule(&self) -> usize {
        self.shared
            .scheduled
            .lock()
            .map(|mut s| s.drain(..).count())
            .unwrap_or(0)
    }

    /// Every computer now, as (id, report date epoch ms, report date as the Pro API writes it),
    /// by id.
    pub fn versions(&self) -> Vec<(u64, i64, String)> {
        let computers = self
            .shared
            .computers
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = computers
            .iter()
            .map(|c| (c.id, c.report_ms, report_text(c)))
            .collect();
        all.sort();
        all
    }

    /// Every version that ever existed, as in [`JamfSim::versions`], by id.
    pub fn history(&self) -> Vec<(u64, i64, String)> {
        self.shared
            .history
            .lock()
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Computer `id`'s current report date, as the API writes it.
    pub fn report_date(&self, id: u64) -> Option<String> {
        let computers = self
            .shared
            .computers
            .read()
            .unwrap_or_else(|e| e.into_inner());
        computers.iter().find(|c| c.id == id).map(report_text)
    }

    /// Every computer with every section, as `/api/v3/computers-inventory` would return them.
    pub fn fleet(&self) -> Vec<Value> {
        let computers = self
            .shared
            .computers
            .read()
            .unwrap_or_else(|e| e.into_inner());
        computers
            .iter()
            .map(|c| render(self.shared.config.seed, c, &|_| true))
            .collect()
    }

    /// The most requests in flight at once so far.
    pub fn max_in_flight(&self) -> u64 {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Inventory requests (Pro and Classic) answered so far.
    pub fn inventory_requests(&self) -> u64 {
        self.shared.inventory_requests.load(Ordering::SeqCst)
    }

    /// Tokens issued (OAuth and user) so far, keep-alives not counted.
    pub fn token_requests(&self) -> u64 {
        self.shared.token_requests.load(Ordering::SeqCst)
    }

    /// Keep-alive renewals so far.
    pub fn keep_alives(&self) -> u64 {
        self.shared.keep_alives.load(Ordering::SeqCst)
    }

    /// Refuse every token issued so far.
    pub fn expire_tokens(&self) {
        if let Ok(mut tokens) = self.shared.tokens.lock() {
            tokens.clear();
        }
    }
}

fn apply(s: &Shared, change: FleetChange) -> Option<u64> {
    let mut computers = s.computers.write().unwrap_or_else(|e| e.into_inner());
    let dated = |ms: i64| s.clock_ms.fetch_max(ms, Ordering::SeqCst).max(ms);
    let mut added = None;
    let mut touched = Vec::new();
    match change {
        FleetChange::Add { report_ms } => {
            let report_ms = dated(report_ms);
            let id = s.next_id.fetch_add(1, Ordering::SeqCst);
            computers.push(Computer {
                id,
                report_ms,
                revision: 0,
                corrupt: false,
            });
            touched.push(id);
            added = Some(id);
        }
        FleetChange::Report { ids, report_ms } => {
            let report_ms = dated(report_ms);
            for c in computers.iter_mut().filter(|c| ids.contains(&c.id)) {
                c.report_ms = report_ms;
                c.revision += 1;
                c.corrupt = false;
                touched.push(c.id);
            }
        }
        FleetChange::Delete { id } => computers.retain(|c| c.id != id),
        FleetChange::Corrupt { id, report_ms } => {
            let report_ms = dated(report_ms);
            for c in computers.iter_mut().filter(|c| c.id == id) {
                c.report_ms = report_ms;
                c.revision += 1;
                c.corrupt = true;
                touched.push(c.id);
            }
        }
    }
    if let Ok(mut history) = s.history.lock() {
        for c in computers.iter().filter(|c| touched.contains(&c.id)) {
            history.insert((c.id, c.report_ms, report_text(c)));
        }
    }
    added
}

/// Applies the scheduled changes that are due at request number `count`.
fn apply_due(s: &Shared, count: u64) {
    let due: Vec<FleetChange> = match s.scheduled.lock() {
        Ok(mut scheduled) => {
            let (due, later): (Vec<_>, Vec<_>) =
                scheduled.drain(..).partition(|(at, _)| *at <= count);
            *scheduled = later;
            due.into_iter().map(|(_, change)| change).collect()
        }
        Err(_) => Vec::new(),
    };
    for change in due {
        apply(s, change);
    }
}

fn pick<'a>(r: u64, catalog: &'a [&'a str], count: usize) -> Vec<&'a str> {
    let mut chosen: Vec<&str> = (0..catalog.len())
        .filter(|i| (mix(r ^ *i as u64) % catalog.len() as u64) < count as u64)
        .map(|i| catalog[i])
        .collect();
    chosen.dedup();
    chosen
}

/// A computer's inventory; sections not wanted are `null`, as the real API returns them.
fn render(seed: u64, c: &Computer, wanted: &dyn Fn(&str) -> bool) -> Value {
    let r = mix(seed ^ mix(c.id));
    let section = |name: &str, value: Value| if wanted(name) { value } else { Value::Null };
    let ip = format!(
        "10.{}.{}.{}",
        (r >> 8) % 8,
        (r >> 16) % 256,
        (r >> 24) % 254 + 1
    );
    let user = format!("user{}", (r >> 32) % 400);
    // One computer in fifty is itself a virtual machine.
    let model = if r.is_multiple_of(50) {
        MODELS[4]
    } else {
        MODELS[((r >> 4) % 4) as usize]
    };
    let mut apps: Vec<String> = pick(r, &APPLICATIONS, 6)
        .into_iter()
        .map(str::to_string)
        .collect();
    if (r >> 12) % 10 == 1 {
        apps.push(VM_APPLICATIONS[((r >> 16) % 3) as usize].to_string());
    }
    for rev in 0..c.revision {
        apps.push(format!("Update Helper {rev}.app"));
    }
    json!({
        "id": c.id.to_string(),
        "udid": format!("{:08X}-{:04X}-{:04X}-{:04X}-{:012X}", r >> 32, (r >> 16) & 0xffff, r & 0xffff, c.id & 0xffff, mix(r) & 0xffff_ffff_ffff),
        "general": {
            "name": format!("MAC-{:05}", c.id),
            "lastIpAddress": ip,
            "lastReportedIp": ip,
            "jamfBinaryVersion": "11.4.1-t1712591696",
            "platform": "Mac",
            "assetTag": format!("AT{:06}", c.id),
            "remoteManagement": {"managed": true, "managementUsername": "jamfadmin"},
            "supervised": true,
            "reportDate": report_text(c),
            "lastContactTime": iso(c.report_ms + 600_000),
            "lastEnrolledDate": iso(c.report_ms - 90 * 86_400_000),
            "initialEntryDate": "2023-01-15",
            "enrollmentMethod": null,
            "site": {"id": "-1", "name": "None"},
            "managementId": format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", mix(r) >> 32, r & 0xffff, c.id & 0xfff, (r >> 12) & 0xfff, r & 0xffff_ffff_ffff),
            "extensionAttributes": [],
        },
        "hardware": section("HARDWARE", json!({
            "make": "Apple",
            "model": model,
            "modelIdentifier": if model.starts_with("VMware") { "VMware7,1" } else { "Mac14,5" },
            "serialNumber": format!("C02{:07X}", r & 0xfff_ffff),
            "macAddress": format!("a4:83:e7:{:02x}:{:02x}:{:02x}", (r >> 40) & 0xff, (r >> 48) & 0xff, c.id & 0xff),
            "totalRamMegabytes": 16384,
        })),
        "operatingSystem": section("OPERATING_SYSTEM", json!({
            "name": "macOS", "version": format!("14.{}", r % 6), "build": "23F79", "fileVault2Status": "ALL_ENCRYPTED",
        })),
        "userAndLocation": section("USER_AND_LOCATION", json!({
            "username": user, "realname": format!("User {}", (r >> 32) % 400), "email": format!("{user}@example.com"),
            "position": "Engineer", "departmentId": "-1", "buildingId": "-1",
        })),
        "applications": section("APPLICATIONS", Value::Array(apps.iter().map(|a| json!({
            "name": a, "path": format!("/Applications/{a}"), "version": format!("{}.{}", mix(r ^ a.len() as u64) % 20, r % 10),
            "macAppStore": false, "sizeMegabytes": 120, "bundleId": format!("com.example.{}", a.trim_end_matches(".app").replace(' ', "").to_lowercase()),
        })).collect())),
        "plugins": section("PLUGINS", Value::Array(pick(r >> 3, &PLUGINS, 2).into_iter().map(|p| json!({
            "name": p, "version": "1.0", "path": format!("/Library/Internet Plug-Ins/{p}"),
        })).collect())),
        "services": section("SERVICES", Value::Array(pick(r >> 5, &SERVICES, 4).into_iter().map(|s| json!({"name": s})).collect())),
        "softwareUpdates": section("SOFTWARE_UPDATES", Value::Array((0..(r >> 7) % 3).map(|i| json!({
            "name": format!("macOS Sonoma 14.{}", 6 + i), "packageName": format!("MSU_UPDATE_23G{i}_patch"), "version": format!("14.{}", 6 + i),
        })).collect())),
        "packageReceipts": section("PACKAGE_RECEIPTS", json!({
            "installedByJamfPro": ["CrowdStrike Falcon.pkg"],
            "installedByInstallerSwu": [format!("macOS 14.{} Security Response", r % 6)],
            "cached": [],
        })),
        "security": section("SECURITY", json!({"sipStatus": "ENABLED", "gatekeeperStatus": "APP_STORE_AND_IDENTIFIED_DEVELOPERS", "firewallEnabled": !r.is_multiple_of(3)})),
    })
}

/// The Classic API's shape of the same computer (snake_case, `report_date_epoch` in ms).
fn render_classic(seed: u64, c: &Computer) -> Value {
    let v3 = render(seed, c, &|_| true);
    let r = mix(seed ^ mix(c.id) ^ 0x5eed);
    let g = &v3["general"];
    json!({"computer": {
        "general": {
            "id": c.id,
            "name": g["name"],
            "mac_address": v3["hardware"]["macAddress"],
            "ip_address": g["lastIpAddress"],
            "last_reported_ip": g["lastReportedIp"],
            "serial_number": v3["hardware"]["serialNumber"],
            "udid": v3["udid"],
            "platform": "Mac",
            "remote_management": {
                "managed": true,
                "management_username": "jamfadmin",
                "management_password_sha256": format!("{:016x}{:016x}{:016x}{:016x}", mix(r), mix(r ^ 1), mix(r ^ 2), mix(r ^ 3)),
            },
            "report_date_utc": g["reportDate"],
            "report_date_epoch": if c.corrupt { Value::Null } else { json!(c.report_ms) },
        },
        "location": {"username": v3["userAndLocation"]["username"], "real_name": v3["userAndLocation"]["realname"], "email_address": v3["userAndLocation"]["email"]},
        "hardware": {"make": "Apple", "model": v3["hardware"]["model"], "os_name": "macOS", "os_version": v3["operatingSystem"]["version"]},
        "software": {
            "applications": v3["applications"],
            "running_services": v3["services"].as_array().map(|s| s.iter().map(|x| x["name"].clone()).collect::<Vec<_>>()),
            "available_software_updates": v3["softwareUpdates"].as_array().map(|s| s.iter().map(|x| x["name"].clone()).collect::<Vec<_>>()),
            "plugins": v3["plugins"],
        },
    }})
}

fn issue(s: &Shared) -> String {
    let n = s.token_requests.fetch_add(1, Ordering::SeqCst) + 1;
    let token = format!("sim-jamf-token-{n}-{:x}", mix(n ^ s.config.seed));
    if let Ok(mut tokens) = s.tokens.lock() {
        tokens.insert(token.clone(), Instant::now());
    }
    token
}

fn expires_at(s: &Shared) -> String {
    let at =
        Utc::now() + chrono::Duration::milliseconds((s.config.token_lifetime_secs * 1000.0) as i64);
    // Jamf sometimes writes expiry times without fractional seconds; so does the simulator.
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn bearer_ok(s: &Shared, headers: &HeaderMap) -> Option<String> {
    let token = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    let tokens = s.tokens.lock().ok()?;
    let issued = tokens.get(token)?;
    (issued.elapsed().as_secs_f64() < s.config.token_lifetime_secs).then(|| token.to_string())
}

fn basic(headers: &HeaderMap) -> Option<(String, String)> {
    let encoded = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let text = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?,
    )
    .ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"httpStatus": 401, "errors": [{"code": "INVALID_TOKEN"}]})),
    )
        .into_response()
}

#[derive(Deserialize)]
struct OauthForm {
    client_id: Option<String>,
    client_secret: Option<String>,
    grant_type: Option<String>,
}

async fn oauth(State(s): State<Arc<Shared>>, Form(form): Form<OauthForm>) -> Response {
    if form.grant_type.as_deref() != Some("client_credentials")
        || form.client_id.as_deref() != Some(s.config.client_id.as_str())
        || form.client_secret.as_deref() != Some(s.config.client_secret.as_str())
    {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let token = issue(&s);
    Json(json!({"access_token": token, "scope": "api-role:inventory", "token_type": "Bearer", "expires_in": s.config.token_lifetime_secs as u64}))
        .into_response()
}

async fn user_token(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    match basic(&headers) {
        Some((u, p)) if u == s.config.username && p == s.config.password => {
            let token = issue(&s);
            Json(json!({"token": token, "expires": expires_at(&s)})).into_response()
        }
        _ => unauthorized(),
    }
}

async fn keep_alive(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let Some(old) = bearer_ok(&s, &headers) else {
        return unauthorized();
    };
    s.keep_alives.fetch_add(1, Ordering::SeqCst);
    let n = s.keep_alives.load(Ordering::SeqCst);
    let token = format!("sim-jamf-kept-{n}-{:x}", mix(n));
    if let Ok(mut tokens) = s.tokens.lock() {
        tokens.remove(&old);
        tokens.insert(token.clone(), Instant::now());
    }
    Json(json!({"token": token, "expires": expires_at(&s)})).into_response()
}

/// Counts a request in flight for as long as it lives, and waits the configured latency.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    async fn enter(s: &'a Shared) -> InFlight<'a> {
        let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let count = s.inventory_requests.fetch_add(1, Ordering::SeqCst) + 1;
        apply_due(s, count);
        if s.config.latency_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(s.config.latency_ms)).await;
        }
        InFlight(s)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn bad_request(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"httpStatus": 400, "errors": [{"code": "INVALID_FIELD", "description": message}]}))).into_response()
}

async fn inventory(
    State(s): State<Arc<Shared>>,
    Path(version): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let _guard = InFlight::enter(&s).await;
    if bearer_ok(&s, &headers).is_none() {
        return unauthorized();
    }
    if version != "v1" && version != "v3" {
        return (StatusCode::NOT_FOUND, "").into_response();
    }
    let mut sections: Vec<String> = vec!["GENERAL".into()];
    let mut page = 0usize;
    let mut size = 100usize;
    let mut sort = String::from("id:asc");
    let mut filter = String::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "section" => sections.extend(v.split(',').map(str::to_string)),
            "page" => page = v.parse().unwrap_or(0),
            "page-size" => size = v.parse().unwrap_or(100),
            "sort" => sort = v.to_string(),
            "filter" => filter = v.to_string(),
            _ => {}
        }
    }
    if size == 0 || size > 2000 {
        return bad_request("page-size must be 1 to 2000");
    }
    let since_ms = if filter.is_empty() {
        None
    } else {
        // RSQL subset: general.reportDate>="<ISO time>".
        let Some(value) = filter.strip_prefix("general.reportDate>=") else {
            return bad_request("only general.reportDate>= filters are simulated");
        };
        match DateTime::parse_from_rfc3339(value.trim_matches('"')) {
            Ok(t) => Some(t.timestamp_millis()),
            Err(_) => return bad_request("bad date in filter"),
        }
    };
    let computers = s
        .computers
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut matched: Vec<&Computer> = computers
        .iter()
        .filter(|c| since_ms.is_none_or(|t| c.report_ms >= t))
        .collect();
    if sort.starts_with("general.reportDate") {
        matched.sort_by_key(|c| (c.report_ms, c.id));
    } else {
        matched.sort_by_key(|c| c.id);
    }
    let wanted = |name: &str| sections.iter().any(|s| s == name);
    let results: Vec<Value> = matched
        .iter()
        .skip(page * size)
        .take(size)
        .map(|c| render(s.config.seed, c, &wanted))
        .collect();
    Json(json!({"totalCount": matched.len(), "results": results})).into_response()
}

fn classic_auth_ok(s: &Shared, headers: &HeaderMap) -> bool {
    if bearer_ok(s, headers).is_some() {
        return true;
    }
    s.config.basic_enabled
        && basic(headers).is_some_and(|(u, p)| u == s.config.username && p == s.config.password)
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"))
}

async fn classic_list(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let _guard = InFlight::enter(&s).await;
    if !classic_auth_ok(&s, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            "<html><body>Unauthorized</body></html>",
        )
            .into_response();
    }
    if !wants_json(&headers) {
        return (
            StatusCode::OK,
            [("content-type", "text/xml")],
            "<computers/>",
        )
            .into_response();
    }
    let computers = s.computers.read().unwrap_or_else(|e| e.into_inner());
    let list: Vec<Value> = computers
        .iter()
        .map(|c| json!({"id": c.id, "name": format!("MAC-{:05}", c.id)}))
        .collect();
    Json(json!({"computers": list})).into_response()
}

async fn classic_computer(
    State(s): State<Arc<Shared>>,
    Path(id): Path<u64>,
    headers: HeaderMap,
) -> Response {
    let _guard = InFlight::enter(&s).await;
    if !classic_auth_ok(&s, &headers) {
        return (
            StatusCode::UNAUTHORIZED,
            "<html><body>Unauthorized</body></html>",
        )
            .into_response();
    }
    let computer = s
        .computers
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|c| c.id == id)
        .copied();
    match computer {
        Some(c) if wants_json(&headers) => Json(render_classic(s.config.seed, &c)).into_response(),
        Some(_) => (
            StatusCode::OK,
            [("content-type", "text/xml")],
            "<computer/>",
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "<html><body>Not Found</body></html>").into_response(),
    }
}
