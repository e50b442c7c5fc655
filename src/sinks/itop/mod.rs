//! The iTop sink: vendor alerts that matter become iTop tickets (`Incident` by default), one per
//! alert, followed through the alert's later records.
//!
//! Owns: the life of a ticket from the records of its alert — the first record a rule accepts
//! opens it (`core/create`, with the change-tracking `comment` iTop requires), each later record of
//! the alert adds a plain-text `public_log` entry (`core/update`), and the first record that says
//! the alert is over applies the resolve stimulus once (after the assign stimulus, when the ticket
//! is still `new` and one is configured). Must not: know a vendor's fields (the record's
//! [`crate::mapping::IncidentFacts`] come from its vendor's mapping) or move the sink's position
//! (the delivery loop does).
//!
//! "Delivered" for this sink: iTop answered `code: 0` for every change the record makes, and the
//! ticket row in the store records it. Invariants: which alert follows which ticket lives in the
//! store ([`TicketLedger`]), with the outbox position of the last record applied, so a record
//! delivered again after a crash or a retry is not applied twice, and a restart never opens a
//! second ticket for an alert. A resolve first reads the ticket's status, so a retried resolve
//! (or one an analyst did by hand) is not applied again. A data error (code 100) makes the record
//! a dead letter with iTop's message; a login or version refusal stops the sink as refused; a
//! transport failure or 5xx is retried, the records before it counting as delivered.

pub mod rest;
pub mod ticket;

use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Map, Value};

use self::rest::{ItopClient, ItopError, ItopObject};
use self::ticket::{log_entry, Rules, Subject};
use crate::mapping::Mappings;
use crate::net::{self, TlsOptions};
use crate::settings::{HttpSettings, ItopSettings, ItopStimulus, SetupError};
use crate::sinks::{Delivered, Shortfall, Sink, SinkError};
use crate::store::{OutboxRecord, Store, Ticket, TicketLedger};

/// Ticket statuses from which the resolve stimulus has nothing to do.
const OVER: [&str; 2] = ["resolved", "closed"];

/// Ticket statuses of Incident's lifecycle from which `ev_resolve` is not offered: the assign
/// stimulus, when configured, is applied first.
const UNASSIGNED: [&str; 3] = ["new", "escalated_tto", "pending"];

/// A sink that opens and follows iTop tickets.
pub struct ItopSink {
    name: String,
    client: ItopClient,
    rules: Rules,
    resolve: ItopStimulus,
    assign: Option<ItopStimulus>,
    comment: String,
    mappings: Mappings,
    ledger: TicketLedger,
}

/// What became of one record that could not be applied.
enum NotApplied {
    /// iTop refused its data: a dead letter, with why.
    Rejected(String),
    /// The sink cannot go on now.
    Failed(SinkError),
}

impl ItopSink {
    /// A sink for `settings` (credentials resolved). Of `store` it keeps only its own
    /// [`TicketLedger`]. Fails, naming the key, on a TLS file that cannot be used, a credential
    /// not resolved or a template that does not parse.
    pub fn new(
        name: &str,
        settings: &ItopSettings,
        http_settings: &HttpSettings,
        mappings: impl Into<Mappings>,
        store: Store,
    ) -> Result<Self, SetupError> {
        let at = format!("sinks.{name}");
        let client = client(name, settings, http_settings)?;
        Ok(ItopSink {
            name: name.to_string(),
            client,
            rules: Rules::new(settings, &at)?,
            resolve: settings.resolve.clone(),
            assign: settings.assign.clone(),
            comment: settings.comment.clone(),
            mappings: mappings.into(),
            ledger: TicketLedger::new(store, name),
        })
    }

    /// The ticket's current `ref` and `status` (and every other field) as iTop has them.
    pub async fn current(&self, ticket: &Ticket) -> Result<ItopObject, ItopError> {
        let found = self
            .client
            .call(&json!({
                "operation": "core/get",
                "class": ticket.ticket_class,
                "key": ticket.ticket_id,
                "output_fields": "ref,status,title",
            }))
            .await?;
        found.into_iter().next().ok_or_else(|| ItopError::Data {
            code: 0,
            message: format!(
                "{}::{} ({}) is no longer in iTop",
                ticket.ticket_class, ticket.ticket_id, ticket.ticket_ref
            ),
        })
    }

    /// Adds `text` to the ticket's public log, with `why` as the change-tracking comment.
    pub async fn add_log(&self, ticket: &Ticket, text: &str, why: &str) -> Result<(), ItopError> {
        self.client
            .call(&json!({
                "operation": "core/update",
                "comment": why,
                "class": ticket.ticket_class,
                "key": ticket.ticket_id,
                "output_fields": "ref,status",
                "fields": {"public_log": {"add_item": {"message": text, "format": "text"}}},
            }))
            .await
            .map(drop)
    }

    /// Applies the resolve stimulus to the ticket unless iTop already has it resolved or closed;
    /// first the assign stimulus when the ticket is not assigned yet and one is configured.
    /// `solution` is the text used when the resolve fields give none. Returns the status iTop
    /// had before.
    pub async fn resolve_ticket(
        &self,
        ticket: &Ticket,
        solution: &str,
        why: &str,
    ) -> Result<String, ItopError> {
        let status = self.current(ticket).await?.field("status").to_string();
        if OVER.contains(&status.as_str()) {
            return Ok(status);
        }
        if let Some(assign) = &self.assign {
            if UNASSIGNED.contains(&status.as_str()) {
                self.stimulus(ticket, &assign.stimulus, assign.fields.clone(), why)
                    .await?;
            }
        }
        let mut fields: Map<String, Value> = self.resolve.fields.clone().into_iter().collect();
        fields
            .entry("solution")
            .or_insert_with(|| Value::String(solution.to_string()));
        self.stimulus(ticket, &self.resolve.stimulus, fields, why)
            .await?;
        Ok(status)
    }

    async fn stimulus(
        &self,
        ticket: &Ticket,
        stimulus: &str,
        fields: impl IntoIterator<Item = (String, Value)>,
        why: &str,
    ) -> Result<(), ItopError> {
        let fields: Map<String, Value> = fields.into_iter().collect();
        self.client
            .call(&json!({
                "operation": "core/apply_stimulus",
                "comment": why,
                "class": ticket.ticket_class,
                "key": ticket.ticket_id,
                "stimulus": stimulus,
                "output_fields": "ref,status",
                "fields": fields,
            }))
            .await
            .map(drop)
    }

    /// Applies one record: opens, logs to or resolves its alert's ticket, or leaves it alone (no
    /// rule applies and no ticket follows its alert; or it was applied already).
    async fn apply(&self, row: &OutboxRecord) -> Result<(), NotApplied> {
        let record: Value = serde_json::from_str(&row.record)
            .map_err(|e| NotApplied::Rejected(format!("the record is not JSON: {e}")))?;
        let facts = self.mappings.of(&row.source).incident(
            &row.stream,
            &record,
            &row.event_id,
            row.severity,
        );
        let subject = Subject {
            row,
            record: &record,
            facts: &facts,
        };
        let why = format!(
            "{}: {} alert {} (source {}, stream {}, event {})",
            self.comment, facts.vendor, facts.alert_key, row.source, row.stream, row.event_id
        );
        let solution = format!(
            "Resolved at the source: {} reports {} at {}.",
            facts.vendor,
            if facts.state.is_empty() {
                "the alert over".to_string()
            } else {
                format!("state {}", facts.state)
            },
            row.event_time
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        let existing = self
            .ledger
            .ticket(&row.source, &facts.alert_key)
            .await
            .map_err(|e| self.unavailable(e.to_string()))?;
        let mut ticket = match existing {
            // Applied before (the batch is being sent again after a failure or a restart).
            Some(t) if row.seq <= t.last_seq => return Ok(()),
            Some(mut t) => {
                if facts.resolved && !t.resolved {
                    self.resolve_ticket(&t, &solution, &why)
                        .await
                        .map_err(|e| self.not_applied(e, "resolving", &t.ticket_ref))?;
                    t.resolved = true;
                } else {
                    self.add_log(&t, &log_entry(&subject), &why)
                        .await
                        .map_err(|e| self.not_applied(e, "adding to the log of", &t.ticket_ref))?;
                    t.log_entries += 1;
                }
                t
            }
            None => {
                let Some(rule) = self.rules.matching(row, &record) else {
                    return Ok(());
                };
                let title = rule.title(&subject);
                let mut fields = rule.fields.clone();
                fields.insert("title".into(), Value::String(title.clone()));
                fields.insert(
                    "description".into(),
                    Value::String(rule.description(&subject)),
                );
                let created = self
                    .client
                    .call(&json!({
                        "operation": "core/create",
                        "comment": why,
                        "class": rule.class,
                        "output_fields": "ref,status",
                        "fields": fields,
                    }))
                    .await
                    .map_err(|e| self.not_applied(e, "creating", &rule.class))?;
                let Some(object) = created.into_iter().next() else {
                    return Err(NotApplied::Failed(SinkError::Fatal {
                        sink: self.name.clone(),
                        detail: format!(
                            "{}: core/create answered code 0 without the object",
                            self.client.endpoint()
                        ),
                    }));
                };
                let now = Utc::now();
                let opened = Ticket {
                    sink: self.name.clone(),
                    source: row.source.clone(),
                    alert_key: facts.alert_key.clone(),
                    stream: row.stream.clone(),
                    ticket_class: rule.class.clone(),
                    ticket_ref: object.field("ref").to_string(),
                    ticket_id: object.key,
                    title,
                    vendor_state: facts.state.clone(),
                    resolved: false,
                    log_entries: 0,
                    last_seq: row.seq,
                    created_at: now,
                    updated_at: now,
                };
                // Saved before anything else: the ticket exists in iTop now.
                self.save(&opened).await?;
                let mut t = opened;
                if facts.resolved {
                    self.resolve_ticket(&t, &solution, &why)
                        .await
                        .map_err(|e| self.not_applied(e, "resolving", &t.ticket_ref))?;
                    t.resolved = true;
                }
                t
            }
        };
        ticket.vendor_state = facts.state.clone();
        ticket.last_seq = row.seq;
        ticket.updated_at = Utc::now();
        self.save(&ticket).await
    }

    async fn save(&self, ticket: &Ticket) -> Result<(), NotApplied> {
        self.ledger
            .save(ticket)
            .await
            .map_err(|e| self.unavailable(e.to_string()))
    }

    fn unavailable(&self, detail: String) -> NotApplied {
        NotApplied::Failed(SinkError::Unavailable {
            sink: self.name.clone(),
            detail,
            retry_after: None,
        })
    }

    /// What an iTop failure while `doing` on `what` means for the record.
    fn not_applied(&self, e: ItopError, doing: &str, what: &str) -> NotApplied {
        match e {
            ItopError::Unavailable {
                url,
                detail,
                retry_after,
            } => NotApplied::Failed(SinkError::Unavailable {
                sink: self.name.clone(),
                detail: format!("{doing} {what}: {url}: {detail}"),
                retry_after,
            }),
            e @ ItopError::Refused { .. } => NotApplied::Failed(SinkError::Fatal {
                sink: self.name.clone(),
                detail: format!("{doing} {what}: {e}"),
            }),
            e @ ItopError::Data { .. } => NotApplied::Rejected(format!("{doing} {what}: {e}")),
        }
    }
}

/// The HTTP client of the sink `name`: its own TLS trust and timeout.
pub fn client(
    name: &str,
    settings: &ItopSettings,
    http_settings: &HttpSettings,
) -> Result<ItopClient, SetupError> {
    let at = format!("sinks.{name}");
    let credentials = settings.credentials(&at)?;
    if !settings.tls_verify {
        tracing::warn!(sink = %name, url = %settings.url,
            "TLS certificate verification is OFF for this sink (tls_verify = false)");
    }
    let tls = TlsOptions {
        ca_file: settings.ca_file.clone(),
        client_cert: None,
        verify: settings.tls_verify,
    };
    let http = net::http_client_with_tls(
        http_settings,
        &tls,
        Duration::from_secs_f64(settings.timeout_secs),
        &at,
    )
    .map_err(|e| SetupError::keyed(&at, e))?;
    Ok(ItopClient::new(
        http,
        settings.endpoint(),
        settings.version.clone(),
        credentials,
    ))
}

impl Sink for ItopSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&mut self, batch: &[OutboxRecord]) -> Result<Delivered, SinkError> {
        let mut delivered = Delivered::default();
        for (i, row) in batch.iter().enumerate() {
            match self.apply(row).await {
                Ok(()) => {}
                Err(NotApplied::Rejected(reason)) => delivered.rejected.push((i, reason)),
                // The records before this one are in iTop: they count, the rest go again.
                Err(NotApplied::Failed(error)) if i > 0 => {
                    delivered.shortfall = Some(Shortfall { accepted: i, error });
                    return Ok(delivered);
                }
                Err(NotApplied::Failed(error)) => return Err(error),
            }
        }
        Ok(delivered)
    }

    /// `core/check_credentials` would say yes to any valid login; `list_operations` also needs
    /// the REST profile, so it is what the sink's calls need.
    async fn check(&mut self) -> Result<(), SinkError> {
        match self
            .client
            .call(&json!({"operation": "list_operations"}))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(match self.not_applied(e, "checking", "the login") {
                NotApplied::Failed(e) => e,
                NotApplied::Rejected(detail) => SinkError::Fatal {
                    sink: self.name.clone(),
                    detail,
                },
            }),
        }
    }
}
