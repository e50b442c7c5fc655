//! iTop REST/JSON simulator: `/webservices/rest.php` on loopback, for the iTop sink's tests and the
//! demo. Facts from Combodo/iTop (develop @ dd34fda) and `shared/reference/{vendor-apis,sink-protocols}.md` §5.
//!
//! Owns: a tiny iTop world (seeded organizations, persons, teams, services; tickets created through
//! REST), the change-tracking comments, the requests it saw, and fault switches. Must not: be reachable
//! from anything but loopback, or be used by the pipeline itself.
//!
//! Modelled, each with its source:
//! - Transport (`webservices/rest.php`): GET or POST, form-encoded body (a body of another content type
//!   is ignored, as PHP would not parse it into `$_POST`); `version` from the query or the form,
//!   `json_data` from the form (or the query). The reply is always HTTP 200 `application/json` with
//!   `Access-Control-Allow-Origin: *`; success or failure is only in `code`. Login is checked before
//!   `version` and `json_data`. Codes and words: 5 "Missing parameter 'auth_user'", 6 "Missing
//!   parameter 'auth_pwd'", 1 "Invalid login", 1 "This user is not authorized to use the web
//!   services. (The profile REST Services User is required …)", 2 "Missing parameter 'version' (e.g.
//!   '1.0')", 3 "Missing parameter 'json_data'" (also for an empty value), 4 "Parameter json_data is
//!   not a valid JSON structure", 10 "There is no service available for version 'X'" (1.0–1.4 are
//!   served: `core/restservices.class.inc.php` ListOperations), 11 "Unknown verb 'x' in version 'v'",
//!   and any other failure 100 with the message prefixed "Error: ".
//! - Auth (`application/loginform.class.inc.php`, `loginbasic`, authent-token `TokenLoginExtension`):
//!   `auth_user`/`auth_pwd` only as POST fields (in the query string they count as missing, unless
//!   [`ItopSimConfig::allow_url_login`]), `Authorization: Basic`, `Auth-Token` header or `auth_token`
//!   field; each login type can be switched off; tokens can be revoked at runtime (then "Invalid
//!   login", code 1, HTTP 200; the module can also answer 401 on a forced token login, not modelled).
//!   `secure_rest_services` is on: a user without the "REST Services User" profile gets code 1.
//! - Operations (`core/restservices.class.inc.php` CoreServices::ExecOperation,
//!   `application/applicationextension.inc.php` RestUtils): `list_operations` ("Operations: 7"),
//!   `core/create`, `core/update`, `core/apply_stimulus`, `core/get` ("Found: N", `limit`/`page`,
//!   code 13 for a page < 1), `core/check_credentials` (`authorized`). `core/delete` and
//!   `core/get_related` are listed but answer code 100 (not modelled). `comment` is mandatory for
//!   create, update and apply_stimulus ("Error: Missing parameter 'comment'"; iTop's `isset`, so an empty
//!   string passes); `fields` is mandatory for all three (also for apply_stimulus, as in iTop);
//!   `class` must exist ("class: 'X' is not a valid class'", iTop's stray quote included).
//! - Keys (RestUtils::FindObjectFromKey, FindObjectFromCriteria, GetObjectSetFromKey): an id (JSON
//!   number or numeric string), an OQL string, or a criteria object; exactly one match for update,
//!   apply_stimulus and external keys: "No item found with criteria: name: x (x)", "Several items found
//!   (N) with criteria: …", "No item found for query: …", "Several items found (N) for query: …",
//!   "Invalid object Class::id", "Wrong format for key". External-key errors are prefixed with the
//!   attribute code ("org_id: …"); key `0` means "none" for an external key. OQL is only the simple
//!   form `SELECT Class [WHERE attr = "v" [AND …]]` (double or single quotes, or a number); anything
//!   else fails as a query error (the simulator's limit, said in the message).
//! - Values (RestUtils::MakeValue, `core/dbobject.class.php` CheckValue, `CoreCannotSaveObjectException`,
//!   `CoreException`): "x: Unknown attribute"; enums checked on write ("Unexpected value for attribute
//!   'Impact' (impact) : Value not allowed [9]": `impact` 1–3, `urgency` 1–4, `origin`,
//!   `resolution_code` from `datamodel.itop-incident-mgmt-itil.xml`); "Null not allowed" for `org_id`,
//!   `title`, `description`; "String too long (found N, limited to 255)" for `title`; the issues come
//!   back as iTop builds them ("…: issues = {0=>…}, class = Incident, id = -1"). A plain-text
//!   `description` is stored as `<p>text</p>` (RestTest.php testCoreApiUpdate).
//! - Case logs (`core/ormcaselog.class.inc.php`, AttributeCaseLog::FromJSONToValue): a string appends
//!   an HTML entry; `{"add_item":{"message","format"}}` appends ("Missing mandatory entry: 'message'",
//!   format defaults to html, `user_id` only for administrators, else code 1 "Only administrators can
//!   set the user id"); `{"items":[…]}` replaces the log ("Missing 'items' elements"). Output is
//!   `{"entries":[{date, user_login, user_id, message, message_html}]}`, oldest first.
//! - Incident lifecycle (`datamodel.itop-incident-mgmt-itil.xml`, with `inherit_flags_from`):
//!   new: ev_assign→assigned, ev_timeout→escalated_tto, ev_autoresolve→resolved; escalated_tto:
//!   ev_assign; assigned and escalated_ttr: ev_pending, ev_resolve→resolved, ev_reassign→assigned,
//!   ev_timeout→escalated_ttr (assigned only), ev_autoresolve; pending: ev_assign, ev_autoresolve;
//!   resolved: ev_close→closed, ev_reopen→assigned, ev_autoresolve; closed: none. So `ev_resolve` is
//!   refused on a `new` ticket: "Invalid stimulus: 'ev_resolve' on the object I-000001 in state
//!   'new'" (code 100, no "Error: " prefix, as the REST service sets it directly). Mandatory attributes
//!   of the target state: assigned/escalated_ttr: org_id, team_id, agent_id; pending: those and
//!   pending_reason; resolved: service_id, resolution_code, solution; else "Missing mandatory
//!   attribute(s) for applying the stimulus: team_id, agent_id." (code 100). Dates set by the
//!   transitions: assignment_date, resolution_date, close_date.
//! - Replies (RestTest.php, ObjectResult): `{"objects":{"Incident::7":{"code":0,"message":"created",
//!   "class":"Incident","key":"7","fields":{…}}},"code":0,"message":null}`; every field value is a
//!   string; `output_fields` defaults to `*` (all attributes, not `id`), else a list checked against
//!   the class ("output_fields: invalid attribute code 'x'"); `ref` is `I-%06d`.
//!
//! Harsher than iTop where unsure or where the sink must not rely on leniency: `caller_id` is required
//! on create (the state `new` flags it mandatory; iTop's REST create does not check state flags —
//! RestTest creates a UserRequest without a caller — see [`ItopSimConfig::caller_required`]);
//! computed or lifecycle-managed attributes (`ref`, `status`, `priority`, dates, names) cannot be set
//! ("Attempting to set the value on the read-only attribute Incident::status"); an external key of 0 counts
//! as missing for a stimulus (PHP 8 would let `0 == ''` pass); `json_data` must be a JSON object.
//! Besides refusing to answer ([`ItopFaults::drop_connections`]), it can carry a request out and
//! then lose the answer ([`ItopFaults::lose_answers`]): what a proxy timing out does to a client,
//! and the case in which a retried `core/create` opens a second ticket.
//!
//! Left out: multipart bodies and `json_data` uploaded as a file, JSONP `callback`, per-class user
//! rights, state-dependent read-only flags, link sets, `core/delete`, `core/get_related`, OQL beyond the
//! simple form, TLS (the sink's TLS options are tested with the other HTTP simulators). `fields` and
//! criteria are applied and reported in attribute-name order (serde_json keeps no key order here), so
//! with several bad fields the first one named may differ from iTop's (which follows the JSON).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Map, Value};

/// An iTop user account.
#[derive(Debug, Clone)]
pub struct ItopUser {
    /// Login.
    pub login: String,
    /// Password.
    pub password: String,
    /// Has the "REST Services User" profile (without it every call is refused with code 1).
    pub rest_profile: bool,
    /// Is an administrator (may set `user_id` in a case-log entry).
    pub admin: bool,
}

/// A personal token (authent-token module), tied to a user.
#[derive(Debug, Clone)]
pub struct ItopToken {
    /// The token as sent in `Auth-Token` or `auth_token`.
    pub token: String,
    /// The login of the user it authenticates.
    pub login: String,
}

/// A customer-defined ticket class: Incident's attributes and lifecycle under another name.
#[derive(Debug, Clone)]
pub struct ItopCustomClass {
    /// Class name, e.g. `SIEMIncident`.
    pub name: String,
    /// Prefix of its `ref`, e.g. `S-` (refs are prefix + six digits).
    pub ref_prefix: String,
}

/// A seeded organization.
#[derive(Debug, Clone)]
pub struct SeedOrganization {
    /// Id.
    pub id: u64,
    /// `name`.
    pub name: String,
    /// `code`.
    pub code: String,
}

/// A seeded person (a caller or an agent).
#[derive(Debug, Clone)]
pub struct SeedPerson {
    /// Id.
    pub id: u64,
    /// `name` (last name).
    pub name: String,
    /// `first_name`.
    pub first_name: String,
    /// `email`.
    pub email: String,
    /// `org_id`.
    pub org_id: u64,
}

/// A seeded team or service (both have a name and an organization).
#[derive(Debug, Clone)]
pub struct SeedNamed {
    /// Id.
    pub id: u64,
    /// `name`.
    pub name: String,
    /// `org_id`.
    pub org_id: u64,
}

/// What the simulator accepts and holds at start.
#[derive(Debug, Clone)]
pub struct ItopSimConfig {
    /// Accounts; default `secrelay`/`itop-pw` (REST profile) and `portal`/`portal-pw` (no profile).
    pub users: Vec<ItopUser>,
    /// Tokens; default `itop-token-0001` for `secrelay`.
    pub tokens: Vec<ItopToken>,
    /// Login type "form": `auth_user`/`auth_pwd` POST fields (default true).
    pub allow_form_login: bool,
    /// Login type "url": the form fields may also come in the query string (default false, as iTop).
    pub allow_url_login: bool,
    /// Login type "basic": `Authorization: Basic` (default true).
    pub allow_basic_login: bool,
    /// Login type "token" (iTop 3.1+): `Auth-Token` header or `auth_token` field (default true).
    pub allow_token_login: bool,
    /// Ticket classes besides `Incident`.
    pub custom_classes: Vec<ItopCustomClass>,
    /// Refuse a ticket created without `caller_id` (default true: harsher than iTop's REST create,
    /// which does not check the `new` state's mandatory flag).
    pub caller_required: bool,
    /// Id of the first ticket created (refs follow it), default 1.
    pub first_ticket_id: u64,
    /// Seeded organizations (default: 1 Demo, 2 SOC).
    pub organizations: Vec<SeedOrganization>,
    /// Seeded persons (default: 1 SIEM Monitoring in SOC, 2 Jean Dupont and 3 Marie Dupont in Demo,
    /// 4 Alice Analyst in SOC).
    pub persons: Vec<SeedPerson>,
    /// Seeded teams (default: 1 SOC Level 1, 2 SOC Level 2).
    pub teams: Vec<SeedNamed>,
    /// Seeded services (default: 1 Security Monitoring).
    pub services: Vec<SeedNamed>,
}

impl Default for ItopSimConfig {
    fn default() -> Self {
        let person = |id, first: &str, name: &str, org_id| SeedPerson {
            id,
            name: name.into(),
            first_name: first.into(),
            email: format!(
                "{}.{}@example.test",
                first.to_lowercase(),
                name.to_lowercase()
            ),
            org_id,
        };
        let named = |id, name: &str, org_id| SeedNamed {
            id,
            name: name.into(),
            org_id,
        };
        ItopSimConfig {
            users: vec![
                ItopUser {
                    login: "secrelay".into(),
                    password: "itop-pw".into(),
                    rest_profile: true,
                    admin: false,
                },
                ItopUser {
                    login: "portal".into(),
                    password: "portal-pw".into(),
                    rest_profile: false,
                    admin: false,
                },
            ],
            tokens: vec![ItopToken {
                token: "itop-token-0001".into(),
                login: "secrelay".into(),
            }],
            allow_form_login: true,
            allow_url_login: false,
            allow_basic_login: true,
            allow_token_login: true,
            custom_classes: Vec::new(),
            caller_required: true,
            first_ticket_id: 1,
            organizations: vec![
                SeedOrganization {
                    id: 1,
                    name: "Demo".into(),
                    code: "DEMO".into(),
                },
                SeedOrganization {
                    id: 2,
                    name: "SOC".into(),
                    code: "SOC".into(),
                },
            ],
            persons: vec![
                person(1, "SIEM", "Monitoring", 2),
                person(2, "Jean", "Dupont", 1),
                person(3, "Marie", "Dupont", 1),
                person(4, "Alice", "Analyst", 2),
            ],
            teams: vec![named(1, "SOC Level 1", 2), named(2, "SOC Level 2", 2)],
            services: vec![named(1, "Security Monitoring", 2)],
        }
    }
}

/// Fault switches.
#[derive(Debug, Default)]
pub struct ItopFaults {
    /// Answer this many requests with HTTP 503 and an HTML page (as a reverse proxy would).
    pub http_errors: AtomicU64,
    /// Close this many connections without any answer (a transport error at the client).
    pub drop_connections: AtomicU64,
    /// Carry out this many requests, then close the connection before the answer: iTop saved
    /// the change, the client never learns it (a proxy timing out, a connection reset on the
    /// way back). The harsher case for a client that retries a `core/create`.
    pub lose_answers: AtomicU64,
    /// Delay every request, milliseconds.
    pub delay_ms: AtomicU64,
}

/// One case-log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItopLogEntry {
    /// `Y-m-d H:i:s`, UTC.
    pub date: String,
    /// Who wrote it (the login, or `user_login` given by an administrator).
    pub user_login: String,
    /// The user's id.
    pub user_id: u64,
    /// The text as stored.
    pub message: String,
    /// `text` or `html`.
    pub format: String,
}

/// A ticket as the simulator holds it (for tests to compare).
#[derive(Debug, Clone)]
pub struct ItopTicket {
    /// Class, e.g. `Incident`.
    pub class: String,
    /// Id.
    pub id: u64,
    /// `ref`, e.g. `I-000001`.
    pub reference: String,
    /// `status`.
    pub status: String,
    /// Every scalar attribute as stored (external keys as ids, "0" for none).
    pub fields: BTreeMap<String, String>,
    /// `public_log`, oldest first.
    pub public_log: Vec<ItopLogEntry>,
    /// `private_log`, oldest first.
    pub private_log: Vec<ItopLogEntry>,
    /// Stimuli applied, in order.
    pub stimuli: Vec<String>,
    /// The change-tracking `comment` of every create, update and stimulus, in order.
    pub comments: Vec<String>,
}

/// One request and how it was answered.
#[derive(Debug, Clone)]
pub struct ItopExchange {
    /// `operation` from `json_data`, when it got that far.
    pub operation: Option<String>,
    /// The JSON `code` (or the HTTP status for a fault answer: 503).
    pub code: i64,
    /// The JSON `message`, if any.
    pub message: Option<String>,
}

#[derive(Debug, Clone)]
struct Obj {
    class: String,
    id: u64,
    attrs: BTreeMap<String, String>,
    public_log: Vec<ItopLogEntry>,
    private_log: Vec<ItopLogEntry>,
    stimuli: Vec<String>,
    comments: Vec<String>,
}

struct World {
    objects: Vec<Obj>,
    next_ticket_id: u64,
}

struct Shared {
    config: ItopSimConfig,
    faults: ItopFaults,
    requests: AtomicU64,
    revoked: Mutex<HashSet<String>>,
    world: Mutex<World>,
    journal: Mutex<Vec<ItopExchange>>,
}

/// A running simulator. Dropping it stops the server.
pub struct ItopSim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    _server: super::ServerTask,
}

impl ItopSim {
    /// Starts on `127.0.0.1` on a free port.
    pub async fn start(config: ItopSimConfig) -> std::io::Result<ItopSim> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let world = World {
            objects: seed(&config),
            next_ticket_id: config.first_ticket_id.max(1),
        };
        let shared = Arc::new(Shared {
            config,
            faults: ItopFaults::default(),
            requests: AtomicU64::new(0),
            revoked: Mutex::new(HashSet::new()),
            world: Mutex::new(world),
            journal: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/webservices/rest.php", any(rest))
            .with_state(shared.clone());
        let server = serve(listener, app, shared.clone());
        Ok(ItopSim {
            shared,
            addr,
            _server: server,
        })
    }

    /// Base URL (`http://127.0.0.1:port`); the endpoint is `/webservices/rest.php` under it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The REST endpoint.
    pub fn endpoint(&self) -> String {
        format!("{}/webservices/rest.php", self.url())
    }

    /// The fault switches.
    pub fn faults(&self) -> &ItopFaults {
        &self.shared.faults
    }

    /// Requests received on the endpoint (any outcome, faults included).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Every answered request, in order (dropped connections are not in it).
    pub fn journal(&self) -> Vec<ItopExchange> {
        self.shared
            .journal
            .lock()
            .map(|j| j.clone())
            .unwrap_or_default()
    }

    /// Refuses `token` from now on ("Invalid login").
    pub fn revoke_token(&self, token: &str) {
        if let Ok(mut revoked) = self.shared.revoked.lock() {
            revoked.insert(token.to_string());
        }
    }

    /// Accepts a revoked `token` again.
    pub fn restore_token(&self, token: &str) {
        if let Ok(mut revoked) = self.shared.revoked.lock() {
            revoked.remove(token);
        }
    }

    /// Every ticket, by id.
    pub fn tickets(&self) -> Vec<ItopTicket> {
        let Ok(world) = self.shared.world.lock() else {
            return Vec::new();
        };
        world
            .objects
            .iter()
            .filter(|o| is_ticket_class(&self.shared.config, &o.class))
            .map(|o| ItopTicket {
                class: o.class.clone(),
                id: o.id,
                reference: o.attrs.get("ref").cloned().unwrap_or_default(),
                status: o.attrs.get("status").cloned().unwrap_or_default(),
                fields: o.attrs.clone(),
                public_log: o.public_log.clone(),
                private_log: o.private_log.clone(),
                stimuli: o.stimuli.clone(),
                comments: o.comments.clone(),
            })
            .collect()
    }

    /// The ticket with this `ref`.
    pub fn ticket(&self, reference: &str) -> Option<ItopTicket> {
        self.tickets()
            .into_iter()
            .find(|t| t.reference == reference)
    }
}

/// Serves `app`, closing a connection unanswered while [`ItopFaults::drop_connections`] is counting.
fn serve(listener: tokio::net::TcpListener, app: Router, shared: Arc<Shared>) -> super::ServerTask {
    super::ServerTask::of_task(tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let inner = hyper_util::service::TowerToHyperService::new(app.clone());
            let shared = shared.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let drop_it = take_one(&shared.faults.drop_connections);
                    if drop_it {
                        shared.requests.fetch_add(1, Ordering::SeqCst);
                    }
                    let lose_it = !drop_it && take_one(&shared.faults.lose_answers);
                    let answer = hyper::service::Service::call(&inner, request);
                    async move {
                        if lose_it {
                            let _ = answer.await;
                            return Err(std::io::Error::other(
                                "answer lost by fault switch (the change was made)",
                            ));
                        }
                        if drop_it {
                            // A service error makes hyper close the connection without a response.
                            return Err(std::io::Error::other(
                                "connection dropped by fault switch",
                            ));
                        }
                        answer.await.map_err(std::io::Error::other)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    }))
}

/// Decrements `counter` if positive; whether it did.
fn take_one(counter: &AtomicU64) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

fn seed(config: &ItopSimConfig) -> Vec<Obj> {
    let obj = |class: &str, id: u64, attrs: &[(&str, String)]| Obj {
        class: class.into(),
        id,
        attrs: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        public_log: Vec::new(),
        private_log: Vec::new(),
        stimuli: Vec::new(),
        comments: Vec::new(),
    };
    let mut objects = Vec::new();
    for o in &config.organizations {
        objects.push(obj(
            "Organization",
            o.id,
            &[("name", o.name.clone()), ("code", o.code.clone())],
        ));
    }
    for p in &config.persons {
        objects.push(obj(
            "Person",
            p.id,
            &[
                ("name", p.name.clone()),
                ("first_name", p.first_name.clone()),
                ("email", p.email.clone()),
                ("org_id", p.org_id.to_string()),
            ],
        ));
    }
    for (class, list) in [("Team", &config.teams), ("Service", &config.services)] {
        for n in list {
            objects.push(obj(
                class,
                n.id,
                &[("name", n.name.clone()), ("org_id", n.org_id.to_string())],
            ));
        }
    }
    objects
}

// ---------------------------------------------------------------------------------------------
// Data model.

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// A string; `max` characters; `nullable`.
    Text {
        max: Option<usize>,
        nullable: bool,
    },
    /// HTML text (a plain value is wrapped in `<p>`).
    Html {
        nullable: bool,
    },
    Enum {
        values: &'static [&'static str],
        default: &'static str,
        nullable: bool,
    },
    ExtKey {
        target: &'static str,
        nullable: bool,
    },
    CaseLog,
    /// Computed or managed by the lifecycle: readable, never set through REST here.
    Computed,
}

#[derive(Clone, Copy, Debug)]
struct Att {
    code: &'static str,
    label: &'static str,
    kind: Kind,
}

const fn att(code: &'static str, label: &'static str, kind: Kind) -> Att {
    Att { code, label, kind }
}

const TEXT: Kind = Kind::Text {
    max: Some(255),
    nullable: true,
};
const NAME: Kind = Kind::Text {
    max: Some(255),
    nullable: false,
};

/// Ticket + Incident attributes in iTop's order (Ticket's first, then Incident's).
const TICKET: &[Att] = &[
    att("ref", "Ref", Kind::Computed),
    att(
        "org_id",
        "Organization",
        Kind::ExtKey {
            target: "Organization",
            nullable: false,
        },
    ),
    att("org_name", "Organization name", Kind::Computed),
    att(
        "caller_id",
        "Caller",
        Kind::ExtKey {
            target: "Person",
            nullable: true,
        },
    ),
    att("caller_name", "Caller name", Kind::Computed),
    att(
        "team_id",
        "Team",
        Kind::ExtKey {
            target: "Team",
            nullable: true,
        },
    ),
    att("team_name", "Team name", Kind::Computed),
    att(
        "agent_id",
        "Agent",
        Kind::ExtKey {
            target: "Person",
            nullable: true,
        },
    ),
    att("agent_name", "Agent name", Kind::Computed),
    att("title", "Title", NAME),
    att("description", "Description", Kind::Html { nullable: false }),
    att("start_date", "Start date", Kind::Computed),
    att("end_date", "End date", Kind::Computed),
    att("last_update", "Last update", Kind::Computed),
    att("close_date", "Close date", Kind::Computed),
    att("private_log", "Private log", Kind::CaseLog),
    att("status", "Status", Kind::Computed),
    att(
        "impact",
        "Impact",
        Kind::Enum {
            values: &["1", "2", "3"],
            default: "1",
            nullable: false,
        },
    ),
    att("priority", "Priority", Kind::Computed),
    att(
        "urgency",
        "Urgency",
        Kind::Enum {
            values: &["1", "2", "3", "4"],
            default: "4",
            nullable: false,
        },
    ),
    att(
        "origin",
        "Origin",
        Kind::Enum {
            values: &["in_person", "chat", "mail", "phone", "portal", "monitoring"],
            default: "phone",
            nullable: true,
        },
    ),
    att(
        "service_id",
        "Service",
        Kind::ExtKey {
            target: "Service",
            nullable: true,
        },
    ),
    att("assignment_date", "Assignment date", Kind::Computed),
    att("resolution_date", "Resolution date", Kind::Computed),
    att(
        "resolution_code",
        "Resolution code",
        Kind::Enum {
            values: &[
                "assistance",
                "other",
                "software patch",
                "training",
                "hardware repair",
                "system update",
                "bug fixed",
            ],
            default: "assistance",
            nullable: true,
        },
    ),
    att(
        "solution",
        "Solution",
        Kind::Text {
            max: None,
            nullable: true,
        },
    ),
    att(
        "pending_reason",
        "Pending reason",
        Kind::Text {
            max: None,
            nullable: true,
        },
    ),
    att("public_log", "Public log", Kind::CaseLog),
    att("friendlyname", "Full name", Kind::Computed),
];

const ORGANIZATION: &[Att] = &[
    att("name", "Name", NAME),
    att("code", "Code", TEXT),
    att("friendlyname", "Full name", Kind::Computed),
];

const PERSON: &[Att] = &[
    att("name", "Last Name", NAME),
    att("first_name", "First Name", TEXT),
    att("email", "Email", TEXT),
    att(
        "org_id",
        "Organization",
        Kind::ExtKey {
            target: "Organization",
            nullable: false,
        },
    ),
    att("friendlyname", "Full name", Kind::Computed),
];

const NAMED: &[Att] = &[
    att("name", "Name", NAME),
    att(
        "org_id",
        "Organization",
        Kind::ExtKey {
            target: "Organization",
            nullable: false,
        },
    ),
    att("friendlyname", "Full name", Kind::Computed),
];

fn is_ticket_class(config: &ItopSimConfig, class: &str) -> bool {
    class == "Incident" || config.custom_classes.iter().any(|c| c.name == class)
}

fn schema(config: &ItopSimConfig, class: &str) -> Option<&'static [Att]> {
    match class {
        "Organization" => Some(ORGANIZATION),
        "Person" => Some(PERSON),
        "Team" | "Service" => Some(NAMED),
        _ if is_ticket_class(config, class) => Some(TICKET),
        _ => None,
    }
}

fn find_att(atts: &[Att], code: &str) -> Option<Att> {
    atts.iter().find(|a| a.code == code).copied()
}

fn ref_prefix(config: &ItopSimConfig, class: &str) -> String {
    config
        .custom_classes
        .iter()
        .find(|c| c.name == class)
        .map_or_else(|| "I-".to_string(), |c| c.ref_prefix.clone())
}

/// (stimulus, target state) allowed in each state.
fn transitions(state: &str) -> &'static [(&'static str, &'static str)] {
    match state {
        "new" => &[
            ("ev_assign", "assigned"),
            ("ev_timeout", "escalated_tto"),
            ("ev_autoresolve", "resolved"),
        ],
        "escalated_tto" => &[("ev_assign", "assigned")],
        "assigned" => &[
            ("ev_pending", "pending"),
            ("ev_resolve", "resolved"),
            ("ev_reassign", "assigned"),
            ("ev_timeout", "escalated_ttr"),
            ("ev_autoresolve", "resolved"),
        ],
        "escalated_ttr" => &[
            ("ev_pending", "pending"),
            ("ev_resolve", "resolved"),
            ("ev_reassign", "assigned"),
            ("ev_autoresolve", "resolved"),
        ],
        "pending" => &[("ev_assign", "assigned"), ("ev_autoresolve", "resolved")],
        "resolved" => &[
            ("ev_close", "closed"),
            ("ev_reopen", "assigned"),
            ("ev_autoresolve", "resolved"),
        ],
        _ => &[],
    }
}

/// Attributes a state requires (flags inherited as `inherit_flags_from` says), in attribute order.
fn mandatory_in(state: &str) -> &'static [&'static str] {
    match state {
        "new" | "escalated_tto" => &["org_id", "caller_id"],
        "assigned" | "escalated_ttr" => &["org_id", "team_id", "agent_id"],
        "pending" => &["org_id", "team_id", "agent_id", "pending_reason"],
        "resolved" => &["service_id", "resolution_code", "solution"],
        _ => &[],
    }
}

/// The date a transition's SetCurrentDate action sets.
fn transition_date(stimulus: &str) -> Option<&'static str> {
    match stimulus {
        "ev_assign" => Some("assignment_date"),
        "ev_resolve" | "ev_autoresolve" => Some("resolution_date"),
        "ev_close" => Some("close_date"),
        _ => None,
    }
}

/// Incident::ComputePriority: priority[impact][urgency].
fn priority(impact: &str, urgency: &str) -> &'static str {
    const TABLE: [[&str; 4]; 3] = [
        ["1", "1", "2", "4"],
        ["1", "2", "3", "4"],
        ["2", "3", "3", "4"],
    ];
    let i = impact.parse::<usize>().ok().filter(|i| (1..=3).contains(i));
    let u = urgency
        .parse::<usize>()
        .ok()
        .filter(|u| (1..=4).contains(u));
    match (i, u) {
        (Some(i), Some(u)) => TABLE[i - 1][u - 1],
        _ => "4",
    }
}

fn now_text() -> String {
    chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

// ---------------------------------------------------------------------------------------------
// Failures.

/// How an operation failed: an exception (rest.php answers `{"code","message":"Error: …"}`) or a
/// result the service built itself (`{"objects":null,"code","message"}`, no prefix).
#[derive(Debug)]
enum Failure {
    Exception { code: i64, message: String },
    Result { code: i64, message: String },
}

fn exc(message: impl Into<String>) -> Failure {
    Failure::Exception {
        code: 100,
        message: message.into(),
    }
}

impl Failure {
    /// Prefixes an exception with the attribute it concerns, as MakeValue does.
    fn within(self, code: &str) -> Failure {
        match self {
            Failure::Exception { code: c, message } => Failure::Exception {
                code: c,
                message: format!("{code}: {message}"),
            },
            other => other,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP.

fn json_reply(shared: &Shared, operation: Option<String>, body: Value) -> Response {
    let exchange = ItopExchange {
        operation,
        code: body.get("code").and_then(Value::as_i64).unwrap_or(-1),
        message: body
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string),
    };
    if let Ok(mut journal) = shared.journal.lock() {
        journal.push(exchange);
    }
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        body.to_string(),
    )
        .into_response()
}

fn error_body(code: i64, message: String) -> Value {
    json!({"code": code, "message": message})
}

async fn rest(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let delay = shared.faults.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if take_one(&shared.faults.http_errors) {
        if let Ok(mut journal) = shared.journal.lock() {
            journal.push(ItopExchange {
                operation: None,
                code: 503,
                message: None,
            });
        }
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/html")],
            "<html><body><h1>503 Service Unavailable</h1></body></html>",
        )
            .into_response();
    }
    let query: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let form: Vec<(String, String)> = if is_form {
        form_urlencoded::parse(&body).into_owned().collect()
    } else {
        Vec::new()
    };
    let posted = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let param = |name: &str| {
        posted(name).or_else(|| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    };

    let user = match login(&shared, &headers, &posted, &param) {
        Ok(user) => user,
        Err((code, message)) => {
            return json_reply(&shared, None, error_body(code, format!("Error: {message}")))
        }
    };
    let version = param("version").filter(|v| !v.is_empty());
    let Some(version) = version else {
        let message = "Error: Missing parameter 'version' (e.g. '1.0')".to_string();
        return json_reply(&shared, None, error_body(2, message));
    };
    let Some(json_text) = param("json_data").filter(|v| !v.is_empty()) else {
        let message = "Error: Missing parameter 'json_data'".to_string();
        return json_reply(&shared, None, error_body(3, message));
    };
    let Ok(Value::Object(request)) = serde_json::from_str::<Value>(&json_text) else {
        let message = "Error: Parameter json_data is not a valid JSON structure".to_string();
        return json_reply(&shared, None, error_body(4, message));
    };
    if !["1.0", "1.1", "1.2", "1.3", "1.4"].contains(&version.as_str()) {
        let message = format!("Error: There is no service available for version '{version}'");
        return json_reply(&shared, None, error_body(10, message));
    }
    let operation = request
        .get("operation")
        .filter(|v| !v.is_null())
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string));
    let answer = match operation.as_deref() {
        None => Err(exc("Missing parameter 'operation'")),
        Some("list_operations") => Ok(list_operations(&version)),
        Some(op) if !OPERATIONS.iter().any(|(verb, _)| *verb == op) => Err(Failure::Exception {
            code: 11,
            message: format!("Unknown verb '{op}' in version '{version}'"),
        }),
        Some(op) => execute(&shared, &user, &version, op, &request),
    };
    let body = match answer {
        Ok(body) => body,
        Err(Failure::Exception { code, message }) => error_body(code, format!("Error: {message}")),
        Err(Failure::Result { code, message }) => {
            json!({"objects": null, "code": code, "message": message})
        }
    };
    json_reply(&shared, operation, body)
}

/// The logged-in user, or the code and message (without "Error: ") of the refusal.
fn login(
    shared: &Shared,
    headers: &HeaderMap,
    posted: &dyn Fn(&str) -> Option<String>,
    param: &dyn Fn(&str) -> Option<String>,
) -> Result<ItopUser, (i64, String)> {
    let config = &shared.config;
    let invalid = || (1, "Invalid login".to_string());
    let find_user = |login: &str, password: Option<&str>| {
        config
            .users
            .iter()
            .find(|u| u.login == login && password.is_none_or(|p| p == u.password))
            .cloned()
    };
    let mut user = None;
    if config.allow_token_login {
        let token = headers
            .get("auth-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| param("auth_token"));
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            let revoked = shared
                .revoked
                .lock()
                .map(|r| r.contains(&token))
                .unwrap_or(true);
            let owner = config
                .tokens
                .iter()
                .find(|t| t.token == token)
                .filter(|_| !revoked)
                .and_then(|t| find_user(&t.login, None));
            user = Some(owner.ok_or_else(invalid)?);
        }
    }
    if user.is_none() && config.allow_basic_login {
        let basic = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "));
        if let Some(encoded) = basic {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .ok_or_else(invalid)?;
            let (login, password) = decoded.split_once(':').ok_or_else(invalid)?;
            user = Some(find_user(login, Some(password)).ok_or_else(invalid)?);
        }
    }
    if user.is_none() && config.allow_form_login {
        let field = |name: &str| {
            if config.allow_url_login {
                param(name)
            } else {
                posted(name)
            }
        };
        if let Some(login) = field("auth_user").filter(|l| !l.is_empty()) {
            let Some(password) = field("auth_pwd") else {
                return Err((6, "Missing parameter 'auth_pwd'".into()));
            };
            user = Some(find_user(&login, Some(&password)).ok_or_else(invalid)?);
        }
    }
    let Some(user) = user else {
        return Err((5, "Missing parameter 'auth_user'".into()));
    };
    if !user.rest_profile {
        return Err((
            1,
            "This user is not authorized to use the web services. (The profile REST Services \
             User is required to access the REST web services)"
                .into(),
        ));
    }
    Ok(user)
}

const OPERATIONS: &[(&str, &str)] = &[
    ("core/create", "Create an object"),
    ("core/update", "Update an object"),
    (
        "core/apply_stimulus",
        "Apply a stimulus to change the state of an object",
    ),
    ("core/get", "Search for objects"),
    ("core/delete", "Delete objects"),
    (
        "core/get_related",
        "Get related objects through the specified relation",
    ),
    ("core/check_credentials", "Check user credentials"),
];

fn list_operations(version: &str) -> Value {
    let operations: Vec<Value> = OPERATIONS
        .iter()
        .map(|(verb, description)| {
            json!({"verb": verb, "description": description, "extension": "CoreServices"})
        })
        .collect();
    json!({
        "version": version,
        "operations": operations,
        "code": 0,
        "message": format!("Operations: {}", OPERATIONS.len()),
    })
}

// ---------------------------------------------------------------------------------------------
// Operations.

/// A parameter as `isset` sees it: present and not null.
fn param<'a>(request: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    request.get(name).filter(|v| !v.is_null())
}

fn mandatory<'a>(request: &'a Map<String, Value>, name: &str) -> Result<&'a Value, Failure> {
    param(request, name).ok_or_else(|| exc(format!("Missing parameter '{name}'")))
}

/// PHP's string form of a scalar JSON value.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(true) => Some("1".into()),
        Value::Bool(false) | Value::Null => Some(String::new()),
        _ => None,
    }
}

fn execute(
    shared: &Shared,
    user: &ItopUser,
    version: &str,
    operation: &str,
    request: &Map<String, Value>,
) -> Result<Value, Failure> {
    let config = &shared.config;
    let Ok(mut world) = shared.world.lock() else {
        return Err(exc("simulator state poisoned"));
    };
    match operation {
        "core/create" => {
            let comment = tracking_comment(request)?;
            let class = class_param(config, request)?;
            let fields = fields_param(request)?;
            let shown = field_list(config, &class, request)?;
            let obj = world.create(config, user, &class, fields, comment)?;
            Ok(with_objects(&world, config, &[(&obj, "created")], &shown))
        }
        "core/update" => {
            let comment = tracking_comment(request)?;
            let class = class_param(config, request)?;
            let key = mandatory(request, "key")?;
            let fields = fields_param(request)?;
            let shown = field_list(config, &class, request)?;
            world.object_set(config, &class, key)?;
            let index = world.find_one(config, &class, key)?;
            let mut obj = world.objects[index].clone();
            world.update_fields(config, user, &mut obj, fields)?;
            world.check_to_write(config, &obj, &world.objects[index], "")?;
            obj.attrs.insert("last_update".into(), now_text());
            obj.comments.push(comment);
            world.objects[index] = obj.clone();
            Ok(with_objects(&world, config, &[(&obj, "updated")], &shown))
        }
        "core/apply_stimulus" => {
            let comment = tracking_comment(request)?;
            let class = class_param(config, request)?;
            let key = mandatory(request, "key")?;
            let fields = fields_param(request)?;
            let shown = field_list(config, &class, request)?;
            let stimulus =
                mandatory(request, "stimulus").map(|s| scalar_text(s).unwrap_or_default())?;
            world.object_set(config, &class, key)?;
            let index = world.find_one(config, &class, key)?;
            let mut obj = world.objects[index].clone();
            world.update_fields(config, user, &mut obj, fields)?;
            let state = obj.attrs.get("status").cloned().unwrap_or_default();
            let Some((_, target)) = transitions(&state)
                .iter()
                .find(|(s, _)| *s == stimulus)
                .copied()
                .filter(|_| is_ticket_class(config, &obj.class))
            else {
                let name = obj.attrs.get("ref").cloned().unwrap_or_default();
                return Err(Failure::Result {
                    code: 100,
                    message: format!(
                        "Invalid stimulus: '{stimulus}' on the object {name} in state '{state}'"
                    ),
                });
            };
            let missing: Vec<&str> = mandatory_in(target)
                .iter()
                .copied()
                .filter(|a| obj.attrs.get(*a).is_none_or(|v| v.is_empty() || v == "0"))
                .collect();
            if !missing.is_empty() {
                return Err(Failure::Result {
                    code: 100,
                    message: format!(
                        "Missing mandatory attribute(s) for applying the stimulus: {}.",
                        missing.join(", ")
                    ),
                });
            }
            let now = now_text();
            obj.attrs.insert("status".into(), target.into());
            if let Some(date) = transition_date(&stimulus) {
                obj.attrs.insert(date.into(), now.clone());
            }
            world.check_to_write(config, &obj, &world.objects[index], "")?;
            obj.attrs.insert("last_update".into(), now);
            obj.stimuli.push(stimulus);
            obj.comments.push(comment);
            world.objects[index] = obj.clone();
            Ok(with_objects(&world, config, &[(&obj, "updated")], &shown))
        }
        "core/get" => {
            let class = class_param(config, request)?;
            let key = mandatory(request, "key")?;
            let shown = field_list(config, &class, request)?;
            let int_param = |name: &str, default: i64| {
                param(request, name)
                    .and_then(scalar_text)
                    .and_then(|t| t.trim().parse::<i64>().ok())
                    .unwrap_or(default)
            };
            let (limit, page) = if version == "1.4" {
                (int_param("limit", 0), int_param("page", 1))
            } else {
                (0, 1)
            };
            let found = world.object_set(config, &class, key)?;
            if page < 1 {
                return Err(Failure::Result {
                    code: 13,
                    message: "The request page number is not valid. It must be an integer \
                              greater than 0"
                        .into(),
                });
            }
            let count = found.len();
            let skip = usize::try_from(limit.max(0) * (page - 1)).unwrap_or(usize::MAX);
            let take = if limit > 0 {
                usize::try_from(limit).unwrap_or(usize::MAX)
            } else {
                usize::MAX
            };
            let objects: Vec<Obj> = found
                .into_iter()
                .skip(skip)
                .take(take)
                .map(|i| world.objects[i].clone())
                .collect();
            let pairs: Vec<(&Obj, &str)> = objects.iter().map(|o| (o, "")).collect();
            let mut body = with_objects(&world, config, &pairs, &shown);
            body["message"] = json!(format!("Found: {count}"));
            Ok(body)
        }
        "core/check_credentials" => {
            let login = mandatory(request, "user").map(|v| scalar_text(v).unwrap_or_default())?;
            let password =
                mandatory(request, "password").map(|v| scalar_text(v).unwrap_or_default())?;
            let authorized = config
                .users
                .iter()
                .any(|u| u.login == login && u.password == password);
            Ok(json!({"code": 0, "message": null, "authorized": authorized}))
        }
        other => Err(exc(format!(
            "the simulator does not model '{other}' (only create, update, apply_stimulus, get, \
             check_credentials)"
        ))),
    }
}

fn tracking_comment(request: &Map<String, Value>) -> Result<String, Failure> {
    mandatory(request, "comment").map(|c| scalar_text(c).unwrap_or_else(|| c.to_string()))
}

fn class_param(config: &ItopSimConfig, request: &Map<String, Value>) -> Result<String, Failure> {
    let value = mandatory(request, "class")?;
    let class = scalar_text(value).unwrap_or_else(|| value.to_string());
    if schema(config, &class).is_none() {
        return Err(exc(format!("class: '{class}' is not a valid class'")));
    }
    Ok(class)
}

fn fields_param(request: &Map<String, Value>) -> Result<&Map<String, Value>, Failure> {
    match mandatory(request, "fields")? {
        Value::Object(fields) => Ok(fields),
        // PHP would iterate an array by index and fail on attribute "0"; say it plainly.
        _ => Err(exc("fields: expected an object of attribute codes")),
    }
}

/// `None` means `*` (every attribute); else the listed codes.
fn field_list(
    config: &ItopSimConfig,
    class: &str,
    request: &Map<String, Value>,
) -> Result<Option<Vec<String>>, Failure> {
    let spec = param(request, "output_fields")
        .and_then(scalar_text)
        .unwrap_or_else(|| "*".into());
    if spec == "*" || spec == "*+" {
        return Ok(None);
    }
    let atts = schema(config, class).unwrap_or(&[]);
    let mut codes = Vec::new();
    for code in spec.split(',').map(str::trim) {
        if code != "id" && find_att(atts, code).is_none() {
            return Err(exc(format!(
                "output_fields: invalid attribute code '{code}'"
            )));
        }
        codes.push(code.to_string());
    }
    Ok(Some(codes))
}

fn with_objects(
    world: &World,
    config: &ItopSimConfig,
    objects: &[(&Obj, &str)],
    shown: &Option<Vec<String>>,
) -> Value {
    let mut map = Map::new();
    for (obj, message) in objects {
        let atts = schema(config, &obj.class).unwrap_or(&[]);
        let codes: Vec<String> = match shown {
            Some(codes) => codes.clone(),
            None => atts.iter().map(|a| a.code.to_string()).collect(),
        };
        let mut fields = Map::new();
        for code in codes {
            let value = world.output_value(obj, &code);
            fields.insert(code, value);
        }
        map.insert(
            format!("{}::{}", obj.class, obj.id),
            json!({
                "code": 0,
                "message": message,
                "class": obj.class,
                "key": obj.id.to_string(),
                "fields": fields,
            }),
        );
    }
    let objects = if map.is_empty() {
        Value::Null
    } else {
        Value::Object(map)
    };
    json!({"objects": objects, "code": 0, "message": null})
}

fn log_json(log: &[ItopLogEntry]) -> Value {
    let entries: Vec<Value> = log
        .iter()
        .map(|e| {
            let html = if e.format == "html" {
                e.message.clone()
            } else {
                e.message
                    .replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;")
                    .replace('\n', "<br/>")
            };
            json!({
                "date": e.date,
                "user_login": e.user_login,
                "user_id": e.user_id.to_string(),
                "message": e.message,
                "message_html": html,
            })
        })
        .collect();
    json!({ "entries": entries })
}

/// A key as RestUtils tells them apart.
enum Key<'a> {
    Id(String),
    Oql(&'a str),
    Criteria(&'a Map<String, Value>),
}

fn classify_key(key: &Value) -> Result<Key<'_>, Failure> {
    match key {
        Value::Object(criteria) => Ok(Key::Criteria(criteria)),
        Value::Number(n) => Ok(Key::Id(n.to_string())),
        Value::String(s) if is_numeric(s) => Ok(Key::Id(s.trim().to_string())),
        Value::String(s) => Ok(Key::Oql(s)),
        _ => Err(exc("Wrong format for key")),
    }
}

/// PHP's is_numeric, for the forms that matter here.
fn is_numeric(text: &str) -> bool {
    let t = text.trim();
    !t.is_empty()
        && t.parse::<f64>().is_ok()
        && !t.eq_ignore_ascii_case("nan")
        && !t.contains("inf")
}

/// A parsed simple OQL query: class and (attribute, value) conditions joined by AND.
struct Oql {
    class: String,
    conditions: Vec<(String, String)>,
}

fn parse_oql(text: &str) -> Result<Oql, String> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' || c == '\'' {
            let mut value = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err("unterminated string".into()),
                    Some('\\') => {
                        if let Some(next) = chars.get(i + 1) {
                            value.push(*next);
                        }
                        i += 2;
                    }
                    Some(q) if *q == c => {
                        i += 1;
                        break;
                    }
                    Some(other) => {
                        value.push(*other);
                        i += 1;
                    }
                }
            }
            tokens.push((true, value));
        } else if c == '=' {
            tokens.push((false, "=".into()));
            i += 1;
        } else if c.is_alphanumeric() || c == '_' || c == '.' || c == '-' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | '.' | '-'))
            {
                i += 1;
            }
            tokens.push((false, chars[start..i].iter().collect()));
        } else {
            return Err(format!("unexpected '{c}'"));
        }
    }
    let word = |k: usize| {
        tokens
            .get(k)
            .filter(|(quoted, _)| !quoted)
            .map(|(_, w)| w.as_str())
    };
    if !word(0).is_some_and(|w| w.eq_ignore_ascii_case("SELECT")) {
        return Err("expected SELECT".into());
    }
    let class = word(1).ok_or("expected a class")?.to_string();
    let mut k = 2;
    let mut conditions = Vec::new();
    if k < tokens.len() {
        if !word(k).is_some_and(|w| w.eq_ignore_ascii_case("WHERE")) {
            return Err("expected WHERE".into());
        }
        k += 1;
        loop {
            let attr = word(k).ok_or("expected an attribute")?;
            let attr = attr.rsplit('.').next().unwrap_or(attr).to_string();
            if word(k + 1) != Some("=") {
                return Err("only '=' conditions are supported".into());
            }
            let value = match tokens.get(k + 2) {
                Some((true, v)) => v.clone(),
                Some((false, v)) if is_numeric(v) => v.clone(),
                _ => return Err("expected a quoted value or a number".into()),
            };
            conditions.push((attr, value));
            k += 3;
            if k == tokens.len() {
                break;
            }
            if !word(k).is_some_and(|w| w.eq_ignore_ascii_case("AND")) {
                return Err("only AND between conditions is supported".into());
            }
            k += 1;
        }
    }
    Ok(Oql { class, conditions })
}

impl World {
    fn get(&self, class: &str, id: &str) -> Option<usize> {
        self.objects
            .iter()
            .position(|o| o.class == class && o.id.to_string() == id)
    }

    fn friendlyname(&self, obj: &Obj) -> String {
        let attr = |k: &str| obj.attrs.get(k).cloned().unwrap_or_default();
        match obj.class.as_str() {
            "Person" => format!("{} {}", attr("first_name"), attr("name")),
            "Organization" | "Team" | "Service" => attr("name"),
            _ => attr("ref"),
        }
    }

    fn output_value(&self, obj: &Obj, code: &str) -> Value {
        let attr = |k: &str| obj.attrs.get(k).cloned().unwrap_or_default();
        let name_of = |target: &str, key: &str| {
            self.get(target, &attr(key))
                .map(|i| self.friendlyname(&self.objects[i]))
                .unwrap_or_default()
        };
        let text = match code {
            "id" => obj.id.to_string(),
            "public_log" => return log_json(&obj.public_log),
            "private_log" => return log_json(&obj.private_log),
            "friendlyname" => self.friendlyname(obj),
            "org_name" => name_of("Organization", "org_id"),
            "caller_name" => name_of("Person", "caller_id"),
            "team_name" => name_of("Team", "team_id"),
            "agent_name" => name_of("Person", "agent_id"),
            "priority" => priority(&attr("impact"), &attr("urgency")).to_string(),
            _ => attr(code),
        };
        Value::String(text)
    }

    /// Indexes of the objects a key selects (GetObjectSetFromKey); for an OQL key, its class rules.
    fn object_set(
        &self,
        config: &ItopSimConfig,
        class: &str,
        key: &Value,
    ) -> Result<Vec<usize>, Failure> {
        match classify_key(key)? {
            Key::Id(id) => Ok(self.get(class, &id).into_iter().collect()),
            Key::Criteria(criteria) => {
                let (class, conditions) = self.criteria(config, class, criteria)?;
                Ok(self.select(&class, &conditions))
            }
            Key::Oql(text) => {
                let (class, conditions) = self.oql(config, text).map_err(|detail| {
                    exc(format!(
                        "Query failed to execute: query = {text}, exception_class = OQLException, \
                         exception_message = {detail}"
                    ))
                })?;
                Ok(self.select(&class, &conditions))
            }
        }
    }

    /// The one object a key names (FindObjectFromKey); errors as iTop words them.
    fn find_one(&self, config: &ItopSimConfig, class: &str, key: &Value) -> Result<usize, Failure> {
        match classify_key(key)? {
            Key::Id(id) => self
                .get(class, &id)
                .ok_or_else(|| exc(format!("Invalid object {class}::{id}"))),
            Key::Criteria(criteria) => {
                let (class, conditions) = self.criteria(config, class, criteria)?;
                let found = self.select(&class, &conditions);
                let report: Vec<String> = criteria
                    .iter()
                    .zip(&conditions)
                    .map(|((code, raw), (_, real))| {
                        let raw = scalar_text(raw).unwrap_or_else(|| raw.to_string());
                        format!("{code}: {raw} ({real})")
                    })
                    .collect();
                match found.as_slice() {
                    [one] => Ok(*one),
                    [] => Err(exc(format!(
                        "No item found with criteria: {}",
                        report.join(", ")
                    ))),
                    many => Err(exc(format!(
                        "Several items found ({}) with criteria: {}",
                        many.len(),
                        report.join(", ")
                    ))),
                }
            }
            Key::Oql(text) => {
                let (class, conditions) = self.oql(config, text).map_err(exc)?;
                let found = self.select(&class, &conditions);
                match found.as_slice() {
                    [one] => Ok(*one),
                    [] => Err(exc(format!("No item found for query: {text}"))),
                    many => Err(exc(format!(
                        "Several items found ({}) for query: {text}",
                        many.len()
                    ))),
                }
            }
        }
    }

    /// Resolves a criteria object into (class, [(attribute, stored value)]).
    fn criteria(
        &self,
        config: &ItopSimConfig,
        class: &str,
        criteria: &Map<String, Value>,
    ) -> Result<(String, Vec<(String, String)>), Failure> {
        let mut class = class.to_string();
        if let Some(final_class) = criteria.get("finalclass").and_then(Value::as_str) {
            if schema(config, final_class).is_none() {
                return Err(exc(format!("finalclass: Unknown class '{final_class}'")));
            }
            class = final_class.to_string();
        }
        let atts = schema(config, &class).unwrap_or(&[]);
        let mut conditions = Vec::new();
        for (code, value) in criteria {
            if code == "finalclass" {
                conditions.push((code.clone(), class.clone()));
                continue;
            }
            let real = if code == "id" {
                scalar_text(value).unwrap_or_default()
            } else {
                let att = find_att(atts, code)
                    .ok_or_else(|| exc(format!("{code}: Unknown attribute")))?;
                match att.kind {
                    Kind::ExtKey { target, .. } => self
                        .resolve_key(config, target, value)
                        .map_err(|f| f.within(code))?,
                    _ => scalar_text(value).ok_or_else(|| exc(format!("{code}: Wrong format")))?,
                }
            };
            conditions.push((code.clone(), real));
        }
        Ok((class, conditions))
    }

    /// A simple OQL query's class and conditions, or why it cannot run.
    fn oql(
        &self,
        config: &ItopSimConfig,
        text: &str,
    ) -> Result<(String, Vec<(String, String)>), String> {
        let limit = "(the simulator supports only SELECT Class [WHERE attr = 'value' [AND ...]])";
        let parsed = parse_oql(text).map_err(|d| format!("{d} {limit}"))?;
        let atts = schema(config, &parsed.class)
            .ok_or_else(|| format!("Unknown class '{}'", parsed.class))?;
        for (code, _) in &parsed.conditions {
            if code != "id" && find_att(atts, code).is_none() {
                return Err(format!(
                    "Unknown attribute '{code}' of class '{}'",
                    parsed.class
                ));
            }
        }
        Ok((parsed.class, parsed.conditions))
    }

    fn select(&self, class: &str, conditions: &[(String, String)]) -> Vec<usize> {
        self.objects
            .iter()
            .enumerate()
            .filter(|(_, o)| o.class == class)
            .filter(|(_, o)| {
                conditions.iter().all(|(code, value)| match code.as_str() {
                    "id" => o.id.to_string() == *value,
                    "finalclass" => o.class == *value,
                    "friendlyname" => self.friendlyname(o) == *value,
                    _ => o.attrs.get(code).is_some_and(|v| v == value),
                })
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// An external key's value: the id of the one object it names, "0" for key 0.
    fn resolve_key(
        &self,
        config: &ItopSimConfig,
        target: &str,
        value: &Value,
    ) -> Result<String, Failure> {
        if let Ok(Key::Id(id)) = classify_key(value) {
            if id.parse::<f64>().is_ok_and(|n| n == 0.0) {
                return Ok("0".into());
            }
        }
        let index = self.find_one(config, target, value)?;
        Ok(self.objects[index].id.to_string())
    }

    /// Sets `fields` on `obj` (MakeValue + Set), appending or replacing case-log entries.
    fn update_fields(
        &self,
        config: &ItopSimConfig,
        user: &ItopUser,
        obj: &mut Obj,
        fields: &Map<String, Value>,
    ) -> Result<(), Failure> {
        let atts = schema(config, &obj.class).unwrap_or(&[]);
        for (code, value) in fields {
            let Some(att) = find_att(atts, code) else {
                return Err(exc(format!("{code}: Unknown attribute")));
            };
            let stored = match att.kind {
                Kind::Computed => {
                    return Err(exc(format!(
                        "{code}: Attempting to set the value on the read-only attribute {}::{code}",
                        obj.class
                    )))
                }
                Kind::CaseLog => {
                    let log = if code == "public_log" {
                        &mut obj.public_log
                    } else {
                        &mut obj.private_log
                    };
                    case_log(config, user, log, value).map_err(|f| f.within(code))?;
                    continue;
                }
                Kind::ExtKey { target, .. } => self
                    .resolve_key(config, target, value)
                    .map_err(|f| f.within(code))?,
                Kind::Html { .. } => {
                    let text = scalar_text(value).unwrap_or_else(|| value.to_string());
                    if text.is_empty() || text.trim_start().starts_with('<') {
                        text
                    } else {
                        format!("<p>{text}</p>")
                    }
                }
                Kind::Text { .. } | Kind::Enum { .. } => {
                    scalar_text(value).unwrap_or_else(|| value.to_string())
                }
            };
            obj.attrs.insert(code.clone(), stored);
        }
        Ok(())
    }

    /// CheckToWrite: the issues of the attributes that changed from `before` (all on insert).
    fn check_to_write(
        &self,
        config: &ItopSimConfig,
        obj: &Obj,
        before: &Obj,
        temp_id: &str,
    ) -> Result<(), Failure> {
        let atts = schema(config, &obj.class).unwrap_or(&[]);
        let inserting = !temp_id.is_empty();
        let mut issues = Vec::new();
        for att in atts {
            let value = obj.attrs.get(att.code).cloned().unwrap_or_default();
            if !inserting && before.attrs.get(att.code) == obj.attrs.get(att.code) {
                continue;
            }
            let problem = match att.kind {
                Kind::Text { max, nullable } => {
                    let length = value.chars().count();
                    if value.is_empty() && !nullable {
                        Some("Null not allowed".to_string())
                    } else {
                        max.filter(|m| length > *m)
                            .map(|m| format!("String too long (found {length}, limited to {m})"))
                    }
                }
                Kind::Html { nullable } => {
                    (value.is_empty() && !nullable).then(|| "Null not allowed".to_string())
                }
                Kind::Enum {
                    values, nullable, ..
                } => {
                    if value.is_empty() {
                        (!nullable).then(|| "Null not allowed".to_string())
                    } else {
                        (!values.contains(&value.as_str()))
                            .then(|| format!("Value not allowed [{value}]"))
                    }
                }
                Kind::ExtKey { nullable, .. } => {
                    let required = !nullable
                        || (inserting
                            && att.code == "caller_id"
                            && config.caller_required
                            && is_ticket_class(config, &obj.class));
                    (required && (value.is_empty() || value == "0"))
                        .then(|| "Null not allowed".to_string())
                }
                Kind::CaseLog | Kind::Computed => None,
            };
            if let Some(problem) = problem {
                issues.push(format!(
                    "Unexpected value for attribute '{}' ({}) : {problem}",
                    att.label, att.code
                ));
            }
        }
        if issues.is_empty() {
            return Ok(());
        }
        let context: Vec<String> = issues
            .iter()
            .enumerate()
            .map(|(i, issue)| format!("{i}=>{issue}"))
            .collect();
        let id = if inserting {
            temp_id.to_string()
        } else {
            obj.id.to_string()
        };
        Err(exc(format!(
            "{}: issues = {{{}}}, class = {}, id = {id}",
            issues.join(", "),
            context.join("; "),
            obj.class
        )))
    }

    fn create(
        &mut self,
        config: &ItopSimConfig,
        user: &ItopUser,
        class: &str,
        fields: &Map<String, Value>,
        comment: String,
    ) -> Result<Obj, Failure> {
        let ticket = is_ticket_class(config, class);
        let atts = schema(config, class).unwrap_or(&[]);
        let mut obj = Obj {
            class: class.to_string(),
            id: 0,
            attrs: BTreeMap::new(),
            public_log: Vec::new(),
            private_log: Vec::new(),
            stimuli: Vec::new(),
            comments: Vec::new(),
        };
        for att in atts {
            let initial = match att.kind {
                Kind::Enum { default, .. } => default,
                Kind::ExtKey { .. } => "0",
                _ => "",
            };
            if !matches!(att.kind, Kind::CaseLog) {
                obj.attrs.insert(att.code.to_string(), initial.to_string());
            }
        }
        if ticket {
            obj.attrs.insert("status".into(), "new".into());
        }
        self.update_fields(config, user, &mut obj, fields)?;
        let blank = obj.clone();
        self.check_to_write(config, &obj, &blank, "-1")?;
        obj.id = if ticket {
            let id = self.next_ticket_id;
            self.next_ticket_id += 1;
            id
        } else {
            self.objects
                .iter()
                .filter(|o| o.class == class)
                .map(|o| o.id)
                .max()
                .unwrap_or(0)
                + 1
        };
        if ticket {
            let now = now_text();
            let reference = format!("{}{:06}", ref_prefix(config, class), obj.id);
            obj.attrs.insert("ref".into(), reference);
            obj.attrs.insert("start_date".into(), now.clone());
            obj.attrs.insert("last_update".into(), now);
        }
        obj.comments.push(comment);
        self.objects.push(obj.clone());
        Ok(obj)
    }
}

/// Applies a case-log value (string, `add_item` or `items`) to `log`.
fn case_log(
    config: &ItopSimConfig,
    user: &ItopUser,
    log: &mut Vec<ItopLogEntry>,
    value: &Value,
) -> Result<(), Failure> {
    let user_id = config
        .users
        .iter()
        .position(|u| u.login == user.login)
        .map_or(0, |i| i as u64 + 1);
    let entry = |item: &Map<String, Value>| -> Result<ItopLogEntry, Failure> {
        let (user_login, user_id) = match item.get("user_id").filter(|v| !v.is_null()) {
            Some(id) if user.admin => (
                item.get("user_login")
                    .and_then(scalar_text)
                    .unwrap_or_default(),
                scalar_text(id).and_then(|t| t.parse().ok()).unwrap_or(0),
            ),
            Some(_) => {
                return Err(Failure::Exception {
                    code: 1,
                    message: "Only administrators can set the user id".into(),
                })
            }
            None => (user.login.clone(), user_id),
        };
        Ok(ItopLogEntry {
            date: item
                .get("date")
                .and_then(Value::as_str)
                .map_or_else(now_text, str::to_string),
            user_login,
            user_id,
            message: item
                .get("message")
                .and_then(scalar_text)
                .unwrap_or_default(),
            format: item
                .get("format")
                .and_then(Value::as_str)
                .unwrap_or("html")
                .to_string(),
        })
    };
    match value {
        Value::Object(object) => {
            if let Some(add) = object.get("add_item") {
                let Some(item) = add.as_object().filter(|i| i.get("message").is_some()) else {
                    return Err(exc("Missing mandatory entry: 'message'"));
                };
                log.push(entry(item)?);
            } else {
                let Some(items) = object.get("items").and_then(Value::as_array) else {
                    return Err(exc("Missing 'items' elements"));
                };
                let mut replaced = Vec::new();
                for item in items {
                    replaced.push(entry(item.as_object().unwrap_or(&Map::new()))?);
                }
                *log = replaced;
            }
        }
        other => {
            let text = scalar_text(other).unwrap_or_else(|| other.to_string());
            if !text.is_empty() {
                log.push(ItopLogEntry {
                    date: now_text(),
                    user_login: user.login.clone(),
                    user_id,
                    message: text,
                    format: "html".into(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK_AUTH: [(&str, &str); 2] = [("auth_user", "secrelay"), ("auth_pwd", "itop-pw")];

    thread_local! {
        // One client per test thread (each test has its own runtime): building one costs more
        // than a call.
        static CLIENT: reqwest::Client = {
            crate::sources::http::install_crypto_provider();
            reqwest::Client::new()
        };
    }

    fn client() -> reqwest::Client {
        CLIENT.with(reqwest::Client::clone)
    }

    async fn start(config: ItopSimConfig) -> ItopSim {
        ItopSim::start(config).await.expect("simulator starts")
    }

    /// Posts `form` as iTop clients do; the HTTP status and the decoded JSON.
    async fn post(request: reqwest::RequestBuilder, form: &[(&str, &str)]) -> (u16, Value) {
        let response = request.form(form).send().await.expect("request sent");
        let status = response.status().as_u16();
        let body = response.json::<Value>().await.expect("JSON reply");
        (status, body)
    }

    /// Calls `json_data` with form auth and version 1.3; the reply.
    async fn call(sim: &ItopSim, json_data: Value) -> Value {
        let text = json_data.to_string();
        let mut form = OK_AUTH.to_vec();
        form.extend([("version", "1.3"), ("json_data", text.as_str())]);
        let (status, body) = post(client().post(sim.endpoint()), &form).await;
        assert_eq!(status, 200);
        body
    }

    fn message(reply: &Value) -> &str {
        reply["message"].as_str().unwrap_or_default()
    }

    fn incident(fields: Value) -> Value {
        json!({"operation": "core/create", "comment": "secrelay: alert 1", "class": "Incident",
               "output_fields": "id, ref, status", "fields": fields})
    }

    fn good_fields() -> Value {
        json!({"org_id": "SELECT Organization WHERE name = \"SOC\"",
               "caller_id": {"name": "Monitoring", "first_name": "SIEM"},
               "title": "Brute force on host1", "description": "Five failed logins",
               "origin": "monitoring", "impact": 2, "urgency": "2"})
    }

    async fn create_one(sim: &ItopSim) -> Value {
        let reply = call(sim, incident(good_fields())).await;
        assert_eq!(reply["code"], 0, "{reply}");
        reply
    }

    #[tokio::test]
    async fn transport_errors_keep_http_200_and_itop_codes() {
        let sim = start(ItopSimConfig::default()).await;
        let list = json!({"operation": "list_operations"}).to_string();
        let list = list.as_str();
        let endpoint = sim.endpoint();
        type Case<'a> = (Vec<(&'a str, &'a str)>, i64, &'a str);
        let cases: Vec<Case> = vec![
            (
                vec![("version", "1.3"), ("json_data", list)],
                5,
                "Error: Missing parameter 'auth_user'",
            ),
            (
                vec![
                    ("auth_user", "secrelay"),
                    ("version", "1.3"),
                    ("json_data", list),
                ],
                6,
                "Error: Missing parameter 'auth_pwd'",
            ),
            (
                vec![
                    ("auth_user", "secrelay"),
                    ("auth_pwd", "wrong"),
                    ("version", "1.3"),
                    ("json_data", list),
                ],
                1,
                "Error: Invalid login",
            ),
            (
                vec![
                    ("auth_user", "portal"),
                    ("auth_pwd", "portal-pw"),
                    ("version", "1.3"),
                    ("json_data", list),
                ],
                1,
                "Error: This user is not authorized to use the web services. (The profile REST \
                 Services User is required to access the REST web services)",
            ),
            (
                vec![OK_AUTH[0], OK_AUTH[1], ("json_data", list)],
                2,
                "Error: Missing parameter 'version' (e.g. '1.0')",
            ),
            (
                vec![OK_AUTH[0], OK_AUTH[1], ("version", "1.3")],
                3,
                "Error: Missing parameter 'json_data'",
            ),
            (
                vec![
                    OK_AUTH[0],
                    OK_AUTH[1],
                    ("version", "1.3"),
                    ("json_data", ""),
                ],
                3,
                "Error: Missing parameter 'json_data'",
            ),
            (
                vec![
                    OK_AUTH[0],
                    OK_AUTH[1],
                    ("version", "1.3"),
                    ("json_data", "{oops"),
                ],
                4,
                "Error: Parameter json_data is not a valid JSON structure",
            ),
            (
                vec![
                    OK_AUTH[0],
                    OK_AUTH[1],
                    ("version", "9.9"),
                    ("json_data", list),
                ],
                10,
                "Error: There is no service available for version '9.9'",
            ),
            (
                vec![
                    OK_AUTH[0],
                    OK_AUTH[1],
                    ("version", "1.3"),
                    ("json_data", r#"{"operation":"core/fly"}"#),
                ],
                11,
                "Error: Unknown verb 'core/fly' in version '1.3'",
            ),
            (
                vec![
                    OK_AUTH[0],
                    OK_AUTH[1],
                    ("version", "1.3"),
                    ("json_data", r#"{"comment":"x"}"#),
                ],
                100,
                "Error: Missing parameter 'operation'",
            ),
        ];
        for (form, code, text) in cases {
            let response = client()
                .post(&endpoint)
                .form(&form)
                .send()
                .await
                .expect("sent");
            assert_eq!(response.status().as_u16(), 200);
            assert_eq!(
                response
                    .headers()
                    .get("access-control-allow-origin")
                    .and_then(|v| v.to_str().ok()),
                Some("*")
            );
            let reply: Value = response.json().await.expect("JSON");
            assert_eq!(
                (reply["code"].as_i64(), message(&reply)),
                (Some(code), text),
                "{form:?}"
            );
        }
        // Credentials in the query string are not read by the "form" login type.
        let url = format!("{endpoint}?auth_user=secrelay&auth_pwd=itop-pw&version=1.3");
        let (_, reply) = post(client().post(&url), &[("json_data", list)]).await;
        assert_eq!(reply["code"], 5);
        // A JSON body is not a form: nothing is read from it.
        let body = json!({"auth_user": "secrelay", "auth_pwd": "itop-pw", "version": "1.3"});
        let reply: Value = client()
            .post(&endpoint)
            .json(&body)
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("JSON");
        assert_eq!(reply["code"], 5);
        // `version` may come in the query string.
        let url = format!("{endpoint}?version=1.3");
        let (_, reply) = post(
            client().post(&url),
            &[OK_AUTH[0], OK_AUTH[1], ("json_data", list)],
        )
        .await;
        assert_eq!(
            (reply["code"].as_i64(), message(&reply)),
            (Some(0), "Operations: 7")
        );
        assert_eq!(reply["version"], "1.3");
        assert_eq!(reply["operations"][0]["verb"], "core/create");
        assert_eq!(sim.requests(), 14);
    }

    #[tokio::test]
    async fn basic_and_token_logins_and_token_revocation() {
        let sim = start(ItopSimConfig::default()).await;
        let list = json!({"operation": "list_operations"}).to_string();
        let form = [("version", "1.3"), ("json_data", list.as_str())];
        let basic = client()
            .post(sim.endpoint())
            .basic_auth("secrelay", Some("itop-pw"));
        assert_eq!(post(basic, &form).await.1["code"], 0);
        let bad_basic = client()
            .post(sim.endpoint())
            .basic_auth("secrelay", Some("nope"));
        assert_eq!(
            post(bad_basic, &form).await.1["message"],
            "Error: Invalid login"
        );
        let header = || {
            client()
                .post(sim.endpoint())
                .header("Auth-Token", "itop-token-0001")
        };
        assert_eq!(post(header(), &form).await.1["code"], 0);
        let mut with_field = form.to_vec();
        with_field.push(("auth_token", "itop-token-0001"));
        assert_eq!(
            post(client().post(sim.endpoint()), &with_field).await.1["code"],
            0
        );
        sim.revoke_token("itop-token-0001");
        let reply = post(header(), &form).await.1;
        assert_eq!(
            (reply["code"].as_i64(), message(&reply)),
            (Some(1), "Error: Invalid login")
        );
        sim.restore_token("itop-token-0001");
        assert_eq!(post(header(), &form).await.1["code"], 0);

        let sim = start(ItopSimConfig {
            allow_token_login: false,
            allow_basic_login: false,
            ..ItopSimConfig::default()
        })
        .await;
        let token = client()
            .post(sim.endpoint())
            .header("Auth-Token", "itop-token-0001");
        assert_eq!(post(token, &form).await.1["code"], 5);
        let basic = client()
            .post(sim.endpoint())
            .basic_auth("secrelay", Some("itop-pw"));
        assert_eq!(post(basic, &form).await.1["code"], 5);
    }

    #[tokio::test]
    async fn check_credentials_answers_authorized() {
        let sim = start(ItopSimConfig::default()).await;
        let ask = |password: &str| json!({"operation": "core/check_credentials", "user": "portal", "password": password});
        let reply = call(&sim, ask("portal-pw")).await;
        assert_eq!(
            reply,
            json!({"code": 0, "message": null, "authorized": true})
        );
        assert_eq!(call(&sim, ask("nope")).await["authorized"], false);
        let reply = call(
            &sim,
            json!({"operation": "core/check_credentials", "user": "portal"}),
        )
        .await;
        assert_eq!(message(&reply), "Error: Missing parameter 'password'");
    }

    #[tokio::test]
    async fn create_answers_in_itops_shape_and_keeps_the_ticket() {
        let sim = start(ItopSimConfig::default()).await;
        let mut fields = good_fields();
        fields["public_log"] = json!({"add_item": {"message": "line1\nline2", "format": "text"}});
        let reply = call(&sim, incident(fields)).await;
        assert_eq!(
            reply,
            json!({"objects": {"Incident::1": {"code": 0, "message": "created", "class": "Incident",
                   "key": "1", "fields": {"id": "1", "ref": "I-000001", "status": "new"}}},
                   "code": 0, "message": null})
        );
        let ticket = sim.ticket("I-000001").expect("kept");
        assert_eq!(
            (ticket.class.as_str(), ticket.id, ticket.status.as_str()),
            ("Incident", 1, "new")
        );
        assert_eq!(ticket.fields["org_id"], "2");
        assert_eq!(ticket.fields["caller_id"], "1");
        assert_eq!(ticket.fields["description"], "<p>Five failed logins</p>");
        assert_eq!(
            (
                ticket.fields["impact"].as_str(),
                ticket.fields["urgency"].as_str()
            ),
            ("2", "2")
        );
        assert!(!ticket.fields["start_date"].is_empty());
        assert_eq!(ticket.comments, vec!["secrelay: alert 1".to_string()]);
        assert_eq!(ticket.public_log.len(), 1);
        assert_eq!(
            (
                ticket.public_log[0].message.as_str(),
                ticket.public_log[0].format.as_str()
            ),
            ("line1\nline2", "text")
        );
        assert_eq!(ticket.public_log[0].user_login, "secrelay");

        // Without output_fields: every attribute (not `id`), all strings; case logs as entries.
        let mut request = incident(good_fields());
        request.as_object_mut().map(|r| r.remove("output_fields"));
        let reply = call(&sim, request).await;
        let fields = &reply["objects"]["Incident::2"]["fields"];
        assert!(fields.get("id").is_none());
        assert_eq!(fields["ref"], "I-000002");
        assert_eq!(fields["org_name"], "SOC");
        assert_eq!(fields["caller_name"], "SIEM Monitoring");
        assert_eq!(fields["priority"], "2");
        assert_eq!(fields["origin"], "monitoring");
        assert_eq!(fields["public_log"], json!({"entries": []}));
        assert!(fields
            .as_object()
            .expect("object")
            .values()
            .all(|v| v.is_string() || v.is_object()));
        let reply = call(
            &sim,
            json!({"operation": "core/create", "comment": "c", "class": "Incident",
                                      "output_fields": "id, nope", "fields": good_fields()}),
        )
        .await;
        assert_eq!(
            message(&reply),
            "Error: output_fields: invalid attribute code 'nope'"
        );
    }

    #[tokio::test]
    async fn create_refuses_bad_requests_with_itops_messages() {
        let sim = start(ItopSimConfig::default()).await;
        let with = |change: &dyn Fn(&mut Value)| {
            let mut request = incident(good_fields());
            change(&mut request);
            request
        };
        let cases: Vec<(Value, i64, &str)> = vec![
            (with(&|r| { r.as_object_mut().map(|r| r.remove("comment")); }), 100,
             "Error: Missing parameter 'comment'"),
            (with(&|r| r["class"] = json!("Nope")), 100, "Error: class: 'Nope' is not a valid class'"),
            (with(&|r| { r.as_object_mut().map(|r| r.remove("fields")); }), 100, "Error: Missing parameter 'fields'"),
            (with(&|r| { r["fields"].as_object_mut().map(|f| f.remove("org_id")); }), 100,
             "Error: Unexpected value for attribute 'Organization' (org_id) : Null not allowed: issues = \
              {0=>Unexpected value for attribute 'Organization' (org_id) : Null not allowed}, class = Incident, id = -1"),
            (with(&|r| { r["fields"].as_object_mut().map(|f| f.remove("caller_id")); }), 100,
             "Error: Unexpected value for attribute 'Caller' (caller_id) : Null not allowed: issues = \
              {0=>Unexpected value for attribute 'Caller' (caller_id) : Null not allowed}, class = Incident, id = -1"),
            (with(&|r| r["fields"]["org_id"] = json!({"name": "Nope"})), 100,
             "Error: org_id: No item found with criteria: name: Nope (Nope)"),
            (with(&|r| r["fields"]["caller_id"] = json!({"name": "Dupont"})), 100,
             "Error: caller_id: Several items found (2) with criteria: name: Dupont (Dupont)"),
            (with(&|r| r["fields"]["org_id"] = json!("SELECT Organization WHERE name = 'Nope'")), 100,
             "Error: org_id: No item found for query: SELECT Organization WHERE name = 'Nope'"),
            (with(&|r| r["fields"]["org_id"] = json!(99)), 100, "Error: org_id: Invalid object Organization::99"),
            (with(&|r| r["fields"]["impact"] = json!("9")), 100,
             "Error: Unexpected value for attribute 'Impact' (impact) : Value not allowed [9]: issues = \
              {0=>Unexpected value for attribute 'Impact' (impact) : Value not allowed [9]}, class = Incident, id = -1"),
            (with(&|r| r["fields"]["foo"] = json!("x")), 100, "Error: foo: Unknown attribute"),
            (with(&|r| r["fields"]["status"] = json!("resolved")), 100,
             "Error: status: Attempting to set the value on the read-only attribute Incident::status"),
            (with(&|r| r["fields"]["public_log"] = json!({"add_item": {"format": "text"}})), 100,
             "Error: public_log: Missing mandatory entry: 'message'"),
            (with(&|r| r["fields"]["public_log"] = json!({"add_item": {"message": "m", "user_id": 3}})), 1,
             "Error: public_log: Only administrators can set the user id"),
        ];
        for (request, code, text) in cases {
            let reply = call(&sim, request.clone()).await;
            assert_eq!(
                (reply["code"].as_i64(), message(&reply)),
                (Some(code), text),
                "{request}"
            );
            assert!(reply.get("objects").is_none(), "{reply}");
        }
        for (field, value, problem) in [
            ("urgency", json!(5), "Value not allowed [5]"),
            ("origin", json!("pigeon"), "Value not allowed [pigeon]"),
            (
                "title",
                json!("x".repeat(256)),
                "String too long (found 256, limited to 255)",
            ),
            ("title", json!(""), "Null not allowed"),
        ] {
            let request = with(&|r| r["fields"][field] = value.clone());
            let reply = call(&sim, request).await;
            assert_eq!(reply["code"], 100);
            assert!(message(&reply).contains(problem), "{reply}");
        }
        assert!(sim.tickets().is_empty());
    }

    #[tokio::test]
    async fn update_finds_one_ticket_by_id_oql_or_criteria_and_appends_to_the_log() {
        let sim = start(ItopSimConfig::default()).await;
        create_one(&sim).await;
        create_one(&sim).await;
        let update = |key: Value, fields: Value| {
            json!({"operation": "core/update", "comment": "secrelay: alert 1 changed", "class": "Incident",
                   "key": key, "output_fields": "ref", "fields": fields})
        };
        let add =
            |text: &str| json!({"public_log": {"add_item": {"message": text, "format": "text"}}});
        let reply = call(&sim, update(json!(1), add("state: in progress"))).await;
        assert_eq!(
            reply,
            json!({"objects": {"Incident::1": {"code": 0, "message": "updated", "class": "Incident",
                   "key": "1", "fields": {"ref": "I-000001"}}}, "code": 0, "message": null})
        );
        let by_oql = call(
            &sim,
            update(
                json!("SELECT Incident WHERE ref = 'I-000001'"),
                add("second"),
            ),
        )
        .await;
        assert_eq!(by_oql["code"], 0, "{by_oql}");
        let by_criteria = call(
            &sim,
            update(
                json!({"ref": "I-000001"}),
                json!({"public_log": "<b>third</b>"}),
            ),
        )
        .await;
        assert_eq!(by_criteria["code"], 0, "{by_criteria}");
        let ticket = sim.ticket("I-000001").expect("kept");
        let log: Vec<(&str, &str)> = ticket
            .public_log
            .iter()
            .map(|e| (e.message.as_str(), e.format.as_str()))
            .collect();
        assert_eq!(
            log,
            [
                ("state: in progress", "text"),
                ("second", "text"),
                ("<b>third</b>", "html")
            ]
        );
        assert_eq!(ticket.comments.len(), 4);
        assert!(sim.ticket("I-000002").expect("kept").public_log.is_empty());

        let replace = json!({"public_log": {"items": [{"message": "only", "format": "text"}]}});
        assert_eq!(call(&sim, update(json!("1"), replace)).await["code"], 0);
        assert_eq!(sim.ticket("I-000001").expect("kept").public_log.len(), 1);

        let errors: Vec<(Value, Value, &str)> = vec![
            (json!(42), add("x"), "Error: Invalid object Incident::42"),
            (json!("SELECT Incident WHERE ref = 'I-000099'"), add("x"),
             "Error: No item found for query: SELECT Incident WHERE ref = 'I-000099'"),
            (json!("SELECT Incident WHERE title = 'Brute force on host1'"), add("x"),
             "Error: Several items found (2) for query: SELECT Incident WHERE title = 'Brute force on host1'"),
            (json!({"title": "Brute force on host1"}), add("x"),
             "Error: Several items found (2) with criteria: title: Brute force on host1 (Brute force on host1)"),
            (json!({"ref": "I-000099"}), add("x"), "Error: No item found with criteria: ref: I-000099 (I-000099)"),
            (json!([1]), add("x"), "Error: Wrong format for key"),
            (json!(1), json!({"org_id": 0}),
             "Error: Unexpected value for attribute 'Organization' (org_id) : Null not allowed: issues = \
              {0=>Unexpected value for attribute 'Organization' (org_id) : Null not allowed}, class = Incident, id = 1"),
        ];
        for (key, fields, text) in errors {
            let reply = call(&sim, update(key.clone(), fields)).await;
            assert_eq!(
                (reply["code"].as_i64(), message(&reply)),
                (Some(100), text),
                "{key}"
            );
        }
        let reply = call(
            &sim,
            update(json!("SELECT Incident WHERE ref LIKE 'I-%'"), add("x")),
        )
        .await;
        assert!(
            message(&reply).starts_with(
                "Error: Query failed to execute: query = SELECT Incident WHERE ref LIKE"
            ),
            "{reply}"
        );
        let mut no_comment = update(json!(1), add("x"));
        no_comment.as_object_mut().map(|r| r.remove("comment"));
        assert_eq!(
            message(&call(&sim, no_comment).await),
            "Error: Missing parameter 'comment'"
        );
        let ticket = sim.ticket("I-000001").expect("kept");
        assert_eq!(
            (ticket.public_log.len(), ticket.fields["org_id"].as_str()),
            (1, "2")
        );
    }

    #[tokio::test]
    async fn stimuli_follow_the_incident_lifecycle() {
        let sim = start(ItopSimConfig::default()).await;
        create_one(&sim).await;
        let stimulus = |name: &str, fields: Value| {
            json!({"operation": "core/apply_stimulus", "comment": "secrelay: resolved", "class": "Incident",
                   "key": 1, "stimulus": name, "output_fields": "status", "fields": fields})
        };
        let refused = |reply: &Value| {
            (
                reply["code"].as_i64(),
                message(reply).to_string(),
                reply["objects"].is_null(),
            )
        };
        let reply = call(
            &sim,
            stimulus("ev_resolve", json!({"solution": "done", "service_id": 1})),
        )
        .await;
        assert_eq!(
            refused(&reply),
            (
                Some(100),
                "Invalid stimulus: 'ev_resolve' on the object I-000001 in state 'new'".into(),
                true
            )
        );
        let mut no_fields = stimulus("ev_assign", json!({}));
        no_fields.as_object_mut().map(|r| r.remove("fields"));
        assert_eq!(
            message(&call(&sim, no_fields).await),
            "Error: Missing parameter 'fields'"
        );
        let reply = call(&sim, stimulus("ev_assign", json!({}))).await;
        assert_eq!(
            refused(&reply),
            (
                Some(100),
                "Missing mandatory attribute(s) for applying the stimulus: team_id, agent_id."
                    .into(),
                true
            )
        );
        let assign = json!({"team_id": {"name": "SOC Level 1"}, "agent_id": "SELECT Person WHERE name = 'Analyst'"});
        let reply = call(&sim, stimulus("ev_assign", assign)).await;
        assert_eq!(
            reply,
            json!({"objects": {"Incident::1": {"code": 0, "message": "updated", "class": "Incident",
                   "key": "1", "fields": {"status": "assigned"}}}, "code": 0, "message": null})
        );
        let reply = call(&sim, stimulus("ev_resolve", json!({}))).await;
        assert_eq!(
            refused(&reply),
            (
                Some(100),
                "Missing mandatory attribute(s) for applying the stimulus: service_id, solution."
                    .into(),
                true
            )
        );
        // A refused stimulus saves nothing, not even its fields.
        let reply = call(&sim, stimulus("ev_resolve", json!({"solution": "blocked"}))).await;
        assert_eq!(reply["code"], 100);
        assert_eq!(sim.ticket("I-000001").expect("kept").fields["solution"], "");
        let reply = call(
            &sim,
            stimulus(
                "ev_resolve",
                json!({"solution": "blocked", "service_id": 1}),
            ),
        )
        .await;
        assert_eq!(
            reply["objects"]["Incident::1"]["fields"]["status"], "resolved",
            "{reply}"
        );
        let reply = call(&sim, stimulus("ev_resolve", json!({}))).await;
        assert_eq!(
            message(&reply),
            "Invalid stimulus: 'ev_resolve' on the object I-000001 in state 'resolved'"
        );
        assert_eq!(call(&sim, stimulus("ev_close", json!({}))).await["code"], 0);
        let ticket = sim.ticket("I-000001").expect("kept");
        assert_eq!(ticket.status, "closed");
        assert_eq!(ticket.stimuli, ["ev_assign", "ev_resolve", "ev_close"]);
        assert_eq!(
            (
                ticket.fields["team_id"].as_str(),
                ticket.fields["agent_id"].as_str()
            ),
            ("1", "4")
        );
        for date in ["assignment_date", "resolution_date", "close_date"] {
            assert!(!ticket.fields[date].is_empty(), "{date}");
        }
        let reply = call(&sim, stimulus("ev_reopen", json!({}))).await;
        assert_eq!(
            message(&reply),
            "Invalid stimulus: 'ev_reopen' on the object I-000001 in state 'closed'"
        );
    }

    #[tokio::test]
    async fn autoresolve_is_the_one_way_from_new_to_resolved() {
        let sim = start(ItopSimConfig::default()).await;
        create_one(&sim).await;
        let stimulus = |fields: Value| {
            json!({"operation": "core/apply_stimulus", "comment": "c", "class": "Incident",
                   "key": {"ref": "I-000001"}, "stimulus": "ev_autoresolve", "fields": fields})
        };
        let reply = call(&sim, stimulus(json!({}))).await;
        assert_eq!(
            message(&reply),
            "Missing mandatory attribute(s) for applying the stimulus: service_id, solution."
        );
        let fields =
            json!({"service_id": {"name": "Security Monitoring"}, "solution": "vendor closed it"});
        assert_eq!(call(&sim, stimulus(fields)).await["code"], 0);
        let ticket = sim.ticket("I-000001").expect("kept");
        assert_eq!(
            (ticket.status.as_str(), ticket.stimuli.as_slice()),
            ("resolved", &["ev_autoresolve".to_string()][..])
        );
        assert_eq!(ticket.fields["resolution_code"], "assistance");
    }

    #[tokio::test]
    async fn get_finds_by_id_oql_and_criteria() {
        let sim = start(ItopSimConfig::default()).await;
        create_one(&sim).await;
        let get = |class: &str, key: Value, fields: &str| json!({"operation": "core/get", "class": class, "key": key, "output_fields": fields});
        let reply = call(
            &sim,
            get(
                "Incident",
                json!("SELECT Incident WHERE ref = \"I-000001\""),
                "ref, status",
            ),
        )
        .await;
        assert_eq!(
            reply,
            json!({"objects": {"Incident::1": {"code": 0, "message": "", "class": "Incident", "key": "1",
                   "fields": {"ref": "I-000001", "status": "new"}}}, "code": 0, "message": "Found: 1"})
        );
        let reply = call(&sim, get("Incident", json!(7), "ref")).await;
        assert_eq!(
            reply,
            json!({"objects": null, "code": 0, "message": "Found: 0"})
        );
        let reply = call(
            &sim,
            get("Person", json!({"name": "Dupont"}), "friendlyname, org_id"),
        )
        .await;
        assert_eq!(message(&reply), "Found: 2");
        assert_eq!(
            reply["objects"]["Person::3"]["fields"],
            json!({"friendlyname": "Marie Dupont", "org_id": "1"})
        );
        let reply = call(
            &sim,
            get(
                "Person",
                json!("SELECT Person WHERE org_id = 2 AND first_name = 'SIEM'"),
                "id",
            ),
        )
        .await;
        assert_eq!(
            reply["objects"]["Person::1"]["fields"]["id"], "1",
            "{reply}"
        );
        let paged = json!({"operation": "core/get", "class": "Person", "key": "SELECT Person", "page": 0, "limit": 1});
        let text = paged.to_string();
        let form = [
            OK_AUTH[0],
            OK_AUTH[1],
            ("version", "1.4"),
            ("json_data", text.as_str()),
        ];
        let reply = post(client().post(sim.endpoint()), &form).await.1;
        assert_eq!(reply["code"], 13, "{reply}");
    }

    #[tokio::test]
    async fn custom_classes_get_their_own_ref_prefix() {
        let sim = start(ItopSimConfig {
            custom_classes: vec![ItopCustomClass {
                name: "SIEMIncident".into(),
                ref_prefix: "S-".into(),
            }],
            first_ticket_id: 123,
            ..ItopSimConfig::default()
        })
        .await;
        let mut request = incident(good_fields());
        request["class"] = json!("SIEMIncident");
        let reply = call(&sim, request).await;
        assert_eq!(
            reply["objects"]["SIEMIncident::123"]["fields"]["ref"], "S-000123",
            "{reply}"
        );
        assert_eq!(
            create_one(&sim).await["objects"]["Incident::124"]["fields"]["ref"],
            "I-000124"
        );
    }

    #[tokio::test]
    async fn faults_give_5xx_dropped_connections_and_slow_replies() {
        let sim = start(ItopSimConfig::default()).await;
        let list = json!({"operation": "list_operations"}).to_string();
        let form = [
            OK_AUTH[0],
            OK_AUTH[1],
            ("version", "1.3"),
            ("json_data", list.as_str()),
        ];
        sim.faults().http_errors.store(2, Ordering::SeqCst);
        for _ in 0..2 {
            let response = client()
                .post(sim.endpoint())
                .form(&form)
                .send()
                .await
                .expect("sent");
            assert_eq!(response.status().as_u16(), 503);
        }
        assert_eq!(post(client().post(sim.endpoint()), &form).await.0, 200);
        sim.faults().drop_connections.store(1, Ordering::SeqCst);
        let failed = client().post(sim.endpoint()).form(&form).send().await;
        assert!(failed.is_err(), "{failed:?}");
        assert_eq!(
            post(client().post(sim.endpoint()), &form).await.1["code"],
            0
        );
        sim.faults().delay_ms.store(300, Ordering::SeqCst);
        let started = std::time::Instant::now();
        let slow = client()
            .post(sim.endpoint())
            .timeout(Duration::from_millis(100))
            .form(&form)
            .send()
            .await;
        assert!(slow.is_err_and(|e| e.is_timeout()));
        assert!(started.elapsed() < Duration::from_millis(300));
        assert_eq!(sim.requests(), 6);
        let codes: Vec<i64> = sim.journal().iter().map(|e| e.code).collect();
        assert_eq!(codes, [503, 503, 0, 0]);
    }
}
