//! `secrelay incidents`: the analyst's view of the tickets secrelay opened — list them with iTop's
//! current status, show one, add a comment to its public log, resolve it — on the same client and
//! credentials as the sink.
//!
//! Owns: finding a ticket by the vendor alert id or the ticket reference, and calling the sink's
//! iTop operations for it. Must not: open tickets (only the sink does, from records) or hold a
//! writer's lock (it runs beside the daemon). Invariant: the store learns of an analyst's change
//! only after iTop answered `code: 0`.

use chrono::Utc;
use serde::Serialize;

use super::AppError;
use crate::mapping::Mappings;
use crate::settings::{ItopSettings, Settings, SinkSettings};
use crate::sinks::itop::rest::ItopError;
use crate::sinks::itop::ItopSink;
use crate::store::{Access, Store, Ticket};

/// A ticket secrelay opened, with what iTop says of it now.
#[derive(Debug, Clone, Serialize)]
pub struct Incident {
    /// The store's row: the alert, the ticket, what secrelay did to it.
    #[serde(flatten)]
    pub ticket: Ticket,
    /// iTop's current `status` (`new`, `assigned`, `resolved`, …); `None` when iTop could not
    /// be asked.
    pub itop_status: Option<String>,
    /// Why iTop could not be asked.
    pub itop_error: Option<String>,
}

impl Incident {
    /// Open as far as anyone knows: iTop's status when known, else secrelay's own record.
    pub fn is_open(&self) -> bool {
        match &self.itop_status {
            Some(status) => !matches!(status.as_str(), "resolved" | "closed"),
            None => !self.ticket.resolved,
        }
    }
}

/// Why an `incidents` command could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum IncidentError {
    /// The store or the configuration failed.
    #[error(transparent)]
    App(#[from] AppError),
    /// No ticket has this alert id or reference. Check the key with `secrelay incidents list`.
    #[error("no incident with alert id or reference `{0}` (see `secrelay incidents list`)")]
    NotFound(String),
    /// Several tickets have this key (the same alert id from two sources or sinks): use the
    /// ticket reference.
    #[error("`{key}` names {count} incidents ({refs}); give the ticket reference instead")]
    Ambiguous {
        /// The key given.
        key: String,
        /// How many match.
        count: usize,
        /// Their references.
        refs: String,
    },
    /// The ticket's sink is no longer configured as an iTop sink.
    #[error("incident {reference} was opened by sink `{sink}`, which is not an iTop sink in the configuration")]
    NoSink {
        /// Ticket reference.
        reference: String,
        /// Sink name.
        sink: String,
    },
    /// iTop refused or could not be reached; its message says why.
    #[error("iTop: {0}")]
    Itop(#[from] ItopError),
}

/// Every incident, newest first, with iTop's current status; with `open_only`, only those still
/// open.
pub async fn list(settings: &Settings, open_only: bool) -> Result<Vec<Incident>, IncidentError> {
    let store = open(settings).await?;
    let tickets = store.tickets(None).await.map_err(AppError::from);
    let result: Result<Vec<Incident>, IncidentError> = match tickets {
        Ok(tickets) => {
            let mut out = Vec::with_capacity(tickets.len());
            for ticket in tickets {
                out.push(with_status(settings, &store, ticket).await);
            }
            Ok(out)
        }
        Err(e) => Err(e.into()),
    };
    store.close().await;
    let mut incidents = result?;
    if open_only {
        incidents.retain(Incident::is_open);
    }
    Ok(incidents)
}

/// The incident whose alert id or ticket reference is `key`, with iTop's current status.
pub async fn show(settings: &Settings, key: &str) -> Result<Incident, IncidentError> {
    let store = open(settings).await?;
    let result = match one(&store, key).await {
        Ok(ticket) => Ok(with_status(settings, &store, ticket).await),
        Err(e) => Err(e),
    };
    store.close().await;
    result
}

/// Adds `text` to the public log of the incident `key`.
pub async fn comment(
    settings: &Settings,
    key: &str,
    text: &str,
) -> Result<Incident, IncidentError> {
    change(settings, key, Change::Comment(text)).await
}

/// Resolves the incident `key` with the sink's resolve stimulus (after its assign stimulus when
/// the ticket is not assigned yet); nothing to do when iTop has it resolved or closed already.
pub async fn resolve(settings: &Settings, key: &str) -> Result<Incident, IncidentError> {
    change(settings, key, Change::Resolve).await
}

/// What an analyst does to a ticket.
enum Change<'a> {
    Comment(&'a str),
    Resolve,
}

/// Makes `what` in iTop, then records it in the store; returns the ticket as it is then.
async fn change(
    settings: &Settings,
    key: &str,
    what: Change<'_>,
) -> Result<Incident, IncidentError> {
    let store = open(settings).await?;
    let result = async {
        let ticket = one(&store, key).await?;
        let sink = sink_of(settings, &store, &ticket)?;
        let (logged, resolved) = match what {
            Change::Comment(text) => {
                sink.add_log(&ticket, text, &analyst("comment")).await?;
                (true, false)
            }
            Change::Resolve => {
                sink.resolve_ticket(
                    &ticket,
                    "Resolved by an analyst with `secrelay incidents resolve`.",
                    &analyst("resolve"),
                )
                .await?;
                (false, true)
            }
        };
        store
            .note_ticket_change(&ticket, logged, resolved, Utc::now())
            .await
            .map_err(AppError::from)?;
        let ticket = one(&store, key).await?;
        Ok(with_status(settings, &store, ticket).await)
    }
    .await;
    store.close().await;
    result
}

/// The human table `secrelay incidents list` prints.
pub fn incidents_table(incidents: &[Incident]) -> String {
    let mut out = format!(
        "{:<10} {:<11} {:<10} {:<14} {:<12} {:<28} {:>4}  TITLE\n",
        "REF", "ITOP", "SECRELAY", "SOURCE", "VENDOR STATE", "ALERT", "LOGS"
    );
    for i in incidents {
        let t = &i.ticket;
        let itop = i.itop_status.as_deref().unwrap_or("unknown");
        let ours = if t.resolved { "resolved" } else { "open" };
        let state = if t.vendor_state.is_empty() {
            "-"
        } else {
            &t.vendor_state
        };
        out.push_str(&format!(
            "{:<10} {:<11} {:<10} {:<14} {:<12} {:<28} {:>4}  {}\n",
            t.ticket_ref, itop, ours, t.source, state, t.alert_key, t.log_entries, t.title
        ));
    }
    out
}

/// The detail `secrelay incidents show` prints.
pub fn incident_detail(i: &Incident) -> String {
    let t = &i.ticket;
    let mut out = String::new();
    let mut line = |k: &str, v: &str| out.push_str(&format!("{k:<14} {v}\n"));
    line("ref", &t.ticket_ref);
    line("class", &format!("{}::{}", t.ticket_class, t.ticket_id));
    line("title", &t.title);
    line("itop status", i.itop_status.as_deref().unwrap_or("unknown"));
    if let Some(e) = &i.itop_error {
        line("itop error", e);
    }
    line("sink", &t.sink);
    line("source", &format!("{} ({})", t.source, t.stream));
    line("alert", &t.alert_key);
    line("vendor state", &t.vendor_state);
    line("resolved", if t.resolved { "yes" } else { "no" });
    line("log entries", &t.log_entries.to_string());
    line("opened", &t.created_at.to_rfc3339());
    line("updated", &t.updated_at.to_rfc3339());
    out
}

async fn open(settings: &Settings) -> Result<Store, AppError> {
    // A reader: these are short requests beside a running daemon.
    Ok(Store::open(&settings.store.path, Access::Reader).await?)
}

/// The one ticket `key` names.
async fn one(store: &Store, key: &str) -> Result<Ticket, IncidentError> {
    let mut found = store.tickets(Some(key)).await.map_err(AppError::from)?;
    match found.len() {
        0 => Err(IncidentError::NotFound(key.to_string())),
        1 => Ok(found.remove(0)),
        count => Err(IncidentError::Ambiguous {
            key: key.to_string(),
            count,
            refs: found
                .iter()
                .map(|t| t.ticket_ref.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// The configured iTop sink that opened `ticket`, built as the daemon builds it.
fn sink_of(settings: &Settings, store: &Store, ticket: &Ticket) -> Result<ItopSink, IncidentError> {
    let itop: &ItopSettings = match settings.sinks.get(&ticket.sink) {
        Some(SinkSettings::Itop(i)) => i,
        _ => {
            return Err(IncidentError::NoSink {
                reference: ticket.ticket_ref.clone(),
                sink: ticket.sink.clone(),
            })
        }
    };
    Ok(ItopSink::new(
        &ticket.sink,
        itop,
        &settings.http,
        Mappings::new(),
        store.clone(),
    )
    .map_err(AppError::from)?)
}

async fn with_status(settings: &Settings, store: &Store, ticket: Ticket) -> Incident {
    let current = match sink_of(settings, store, &ticket) {
        Ok(sink) => sink.current(&ticket).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let (itop_status, itop_error) = match current {
        Ok(object) => (Some(object.field("status").to_string()), None),
        Err(e) => (None, Some(e)),
    };
    Incident {
        ticket,
        itop_status,
        itop_error,
    }
}

/// The change-tracking comment of an analyst's `action`, naming the login that ran it.
fn analyst(action: &str) -> String {
    let who = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".to_string());
    format!("secrelay incidents {action} (by {who})")
}
