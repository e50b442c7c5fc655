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
//! second ticket for an alert. iTop has no idempotency key, so a create is recorded as pending
//! before it is sent: when its answer is lost (iTop may have saved the ticket), the retry looks
//! for a ticket of that class with that exact title whose description names the alert and that
//! no alert follows yet, and follows it instead of opening another. A resolve first reads the
//! ticket's status, so a retried resolve
//! (or one an analyst did by hand) is not applied again. A data error (code 100) makes the record
//! a dead letter with iTop's message; a login or version refusal stops the sink as refused; a
//! transport failure or 5xx is retried, the records before it counting as delivered.

pub mod rest;
pub mod ticket;

use chrono::Utc;
use serde_json::{json, Map, Value};

use self::rest::{ItopClient, ItopError, ItopObject};
use self::ticket::{log_entry, mentions, Rules, Subject};
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
        let existing = self
            .ledger
            .ticket(&row.source, &facts.alert_key)
            .await
            .map_err(|e| self.unavailable(e.to_string()))?;
        let mut ticket = match existing {
            Some(t) if t.is_pending() => match self.open(&subject, Some(&t), &why).await? {
                Some(t) => t,
                None => return Ok(()),
            },
            // Applied before (the batch is being sent again after a failure or a restart).
            Some(t) if row.seq <= t.last_seq => return Ok(()),
            Some(mut t) => {
                if facts.resolved && !t.resolved {
                    self.resolve_ticket(&t, &solution(&subject), &why)
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
            None => match self.open(&subject, None, &why).await? {
                Some(t) => t,
                None => return Ok(()),
            },
        };
        ticket.vendor_state = facts.state.clone();
        ticket.last_seq = row.seq;
        ticket.updated_at = Utc::now();
        self.save(&ticket).await
    }

    /// Opens the ticket of the record's alert when a rule accepts the record (`None` when none
    /// does), and resolves it at once when the vendor says the alert is already over. `pending`:
    /// a create for this alert was sent before and its answer never came, so the ticket is looked
    /// for first.
    async fn open(
        &self,
        subject: &Subject<'_>,
        pending: Option<&Ticket>,
        why: &str,
    ) -> Result<Option<Ticket>, NotApplied> {
        let (row, facts) = (subject.row, subject.facts);
        let Some(rule) = self.rules.matching(row, subject.record) else {
            if pending.is_some() {
                self.forget(row, facts).await?;
            }
            return Ok(None);
        };
        let now = Utc::now();
        let mut ticket = Ticket {
            sink: self.name.clone(),
            source: row.source.clone(),
            alert_key: facts.alert_key.clone(),
            stream: row.stream.clone(),
            ticket_class: rule.class.clone(),
            ticket_id: String::new(),
            ticket_ref: String::new(),
            title: rule.title(subject),
            vendor_state: facts.state.clone(),
            resolved: false,
            log_entries: 0,
            last_seq: row.seq,
            created_at: now,
            updated_at: now,
        };
        let found = match pending {
            Some(p) => self.find_lost(p).await?,
            None => None,
        };
        let object = match found {
            Some(object) => {
                tracing::warn!(sink = %self.name, alert = %facts.alert_key, ticket = %object.field("ref"),
                    "the answer to this alert's create was lost; iTop had opened the ticket, which is followed now");
                object
            }
            None => {
                // Written before the create: if its answer is lost, the retry looks for the ticket
                // before opening another.
                self.save(&ticket).await?;
                let mut fields = rule.fields.clone();
                fields.insert("title".into(), Value::String(ticket.title.clone()));
                fields.insert(
                    "description".into(),
                    Value::String(rule.description(subject)),
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
                    .await;
                match created {
                    Ok(objects) => objects.into_iter().next().ok_or_else(|| {
                        NotApplied::Failed(SinkError::Fatal {
                            sink: self.name.clone(),
                            detail: format!(
                                "{}: core/create answered code 0 without the object",
                                self.client.endpoint()
                            ),
                        })
                    })?,
                    // Not known whether iTop made it: the row stays pending.
                    Err(e @ ItopError::Unavailable { .. }) => {
                        return Err(self.not_applied(e, "creating", &rule.class))
                    }
                    // iTop said no: nothing was made.
                    Err(e) => {
                        self.forget(row, facts).await?;
                        return Err(self.not_applied(e, "creating", &rule.class));
                    }
                }
            }
        };
        ticket.ticket_ref = object.field("ref").to_string();
        ticket.ticket_id = object.key;
        // Saved before anything else: the ticket exists in iTop now.
        self.save(&ticket).await?;
        if facts.resolved {
            self.resolve_ticket(&ticket, &solution(subject), why)
                .await
                .map_err(|e| self.not_applied(e, "resolving", &ticket.ticket_ref))?;
            ticket.resolved = true;
        }
        Ok(Some(ticket))
    }

    /// The ticket a create whose answer was lost opened, if iTop has it: one of `pending`'s class
    /// with its exact title, whose description names the alert, and that no alert of this sink
    /// follows yet.
    async fn find_lost(&self, pending: &Ticket) -> Result<Option<ItopObject>, NotApplied> {
        let candidates = self
            .client
            .call(&json!({
                "operation": "core/get",
                "class": pending.ticket_class,
                "key": {"title": pending.title},
                "output_fields": "ref,status,description",
            }))
            .await
            .map_err(|e| {
                self.not_applied(e, "looking for the ticket of alert", &pending.alert_key)
            })?;
        let mut found = Vec::new();
        for object in candidates {
            if !mentions(object.field("description"), &pending.alert_key) {
                continue;
            }
            let followed = self
                .ledger
                .follows(&pending.ticket_class, &object.key)
                .await
                .map_err(|e| self.unavailable(e.to_string()))?;
            if !followed {
                found.push(object);
            }
        }
        // Several (answers lost more than once): follow the first, so no further one is opened.
        Ok(found.into_iter().next())
    }

    async fn forget(
        &self,
        row: &OutboxRecord,
        facts: &crate::mapping::IncidentFacts,
    ) -> Result<(), NotApplied> {
        self.ledger
            .forget(&row.source, &facts.alert_key)
            .await
            .map_err(|e| self.unavailable(e.to_string()))
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

/// The `solution` a resolve writes when the resolve fields give none: what the vendor said, when.
fn solution(s: &Subject<'_>) -> String {
    let state = if s.facts.state.is_empty() {
        "the alert over".to_string()
    } else {
        format!("state {}", s.facts.state)
    };
    format!(
        "Resolved at the source: {} reports {state} at {}.",
        s.facts.vendor,
        s.row
            .event_time
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// The HTTP client of the sink `name`: its own TLS trust and timeout.
pub fn client(
    name: &str,
    settings: &ItopSettings,
    http_settings: &HttpSettings,
) -> Result<ItopClient, SetupError> {
    let at = format!("sinks.{name}");
    let credentials = settings.credentials(&at)?;
    let tls = TlsOptions::server(settings.ca_file.clone(), settings.tls_verify);
    let http = net::endpoint_client(
        http_settings,
        &tls,
        settings.timeout_secs,
        &at,
        &settings.url,
    )?;
    Ok(ItopClient::new(
        http,
        settings.endpoint(),
        settings.version.clone(),
        credentials,
    ))
}

impl Sink for ItopSink {
    type Encoded = ();

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
