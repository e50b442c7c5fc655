//! `secrelay state` and `secrelay dead-letters`: what the state database says, as a report and as
//! the human tables printed from it.
//!
//! Owns: reading the store for the report and rendering it. Must not: write to the store or print
//! a secret (nothing here ever sees one). Invariant: reads beside a running daemon.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::AppError;
use crate::settings::Settings;
use crate::store::{
    Access, CursorState, DeadLetter, OutboxTotals, RejectedRecord, SinkState, Store, StoreGrowth,
};

/// What `secrelay state` shows.
#[derive(Debug, Clone, Serialize)]
pub struct StateReport {
    /// When this was read.
    pub at: DateTime<Utc>,
    /// Outbox rows and bytes.
    pub outbox: OutboxTotals,
    /// The configured cap.
    pub outbox_cap_bytes: u64,
    /// True while some sources are paused because a sink they route to is a full share behind
    /// (see `sinks[].full`).
    pub sources_paused: bool,
    /// Each routed sink's share of the cap, in bytes.
    pub sink_share_bytes: u64,
    /// Per partition.
    pub partitions: Vec<CursorState>,
    /// Per sink, with its backlog.
    pub sinks: Vec<SinkStateWithBacklog>,
    /// The most recent records sources could not turn into events (newest first, at most
    /// [`STATE_REJECTED_SHOWN`]); every partition's total is in `partitions`.
    pub rejected: Vec<RejectedRecord>,
    /// What grows in the state database: seen ids (in all and per source), dead letters, rejected
    /// records, re-queued dead letters, and the file's size on disk (main file plus WAL).
    pub growth: StoreGrowth,
}

/// The human table `secrelay dead-letters` prints (the records themselves: `--json`).
pub fn dead_letters_table(letters: &[DeadLetter]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:<16} {:<18} {:<38} {:<20} REASON",
        "SINK", "SOURCE", "STREAM", "EVENT ID", "WHEN"
    );
    for d in letters {
        let _ = writeln!(
            out,
            "{:<16} {:<16} {:<18} {:<38} {:<20} {}",
            d.sink,
            d.source,
            d.stream,
            d.event_id,
            d.at.format("%Y-%m-%d %H:%M:%S"),
            d.reason
        );
    }
    let _ = writeln!(
        out,
        "{} dead letters{}",
        letters.len(),
        if letters.is_empty() {
            ""
        } else {
            "; `secrelay dead-letters retry [--sink S]` sends them again to the sink that rejected them"
        }
    );
    out
}

/// How many recent rejected records `secrelay state` lists.
pub const STATE_REJECTED_SHOWN: u32 = 10;

/// A sink's stored state plus the records waiting for it.
#[derive(Debug, Clone, Serialize)]
pub struct SinkStateWithBacklog {
    /// Stored state.
    #[serde(flatten)]
    pub state: SinkState,
    /// Records routed to this sink still in the outbox.
    pub backlog: i64,
    /// Bytes of those records.
    pub backlog_bytes: i64,
    /// The backlog reached the sink's share of the outbox cap: the sources routed to it are paused.
    pub full: bool,
    /// The receiver refused the sink at its last attempt (credentials, configuration); the daemon
    /// asks again at the longest backoff.
    pub refused: bool,
}

/// Reads the state database (creating it if it does not exist yet).
pub async fn state(settings: &Settings) -> Result<StateReport, AppError> {
    let store = Store::open(&settings.store.path, Access::Reader).await?;
    let outbox = store.outbox_totals().await?;
    let partitions = store.cursor_states().await?;
    let rejected = store.recent_rejected(STATE_REJECTED_SHOWN).await?;
    let growth = store.growth().await?;
    let mut stored: BTreeMap<String, SinkState> = store
        .sink_states()
        .await?
        .into_iter()
        .map(|s| (s.sink.clone(), s))
        .collect();
    let mut sinks = Vec::new();
    let sink_share = settings.sink_share();
    for (name, sources) in settings.routes() {
        let state = stored.remove(&name).unwrap_or(SinkState {
            sink: name.clone(),
            delivered_seq: 0,
            updated_at: None,
            delivered_total: 0,
            last_error: None,
            last_error_at: None,
            dead_letters: 0,
        });
        let backlog = store
            .backlog_totals(&name, state.delivered_seq, &sources)
            .await?;
        let refused = state.last_error.as_deref().is_some_and(|e| {
            e.starts_with(crate::scheduler::REFUSED)
                && state
                    .updated_at
                    .is_none_or(|moved| state.last_error_at.is_some_and(|failed| failed > moved))
        });
        sinks.push(SinkStateWithBacklog {
            state,
            backlog: backlog.rows,
            backlog_bytes: backlog.bytes,
            full: !sources.is_empty() && backlog.bytes as u64 >= sink_share,
            refused,
        });
    }
    // Sinks no longer configured still show, so their dead letters are not forgotten.
    for (_, state) in stored {
        sinks.push(SinkStateWithBacklog {
            state,
            backlog: 0,
            backlog_bytes: 0,
            full: false,
            refused: false,
        });
    }
    store.close().await;
    Ok(StateReport {
        at: Utc::now(),
        sources_paused: sinks.iter().any(|s| s.full),
        sink_share_bytes: sink_share,
        outbox,
        outbox_cap_bytes: settings.outbox.max_bytes,
        partitions,
        sinks,
        rejected,
        growth,
    })
}

impl StateReport {
    /// The human table `secrelay state` prints.
    pub fn to_table(&self) -> String {
        use std::fmt::Write;
        let ago = |t: Option<DateTime<Utc>>| match t {
            None => "-".to_string(),
            Some(t) => {
                let secs = (self.at - t).num_seconds().max(0);
                match secs {
                    0..=119 => format!("{secs}s ago"),
                    120..=7199 => format!("{}m ago", secs / 60),
                    _ => format!("{}h ago", secs / 3600),
                }
            }
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "outbox: {} records, {} of {} bytes{}",
            self.outbox.rows,
            self.outbox.bytes,
            self.outbox_cap_bytes,
            if self.sources_paused {
                "  — sources routed to a full sink are paused"
            } else {
                ""
            }
        );
        let g = &self.growth;
        let mib = |b: u64| match b {
            0..=1_048_575 => format!("{:.0} KiB", b as f64 / 1024.0),
            _ => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
        };
        let _ = writeln!(
            out,
            "database: {} on disk (main {} + WAL {}; {} free inside, auto_vacuum {}) {}",
            mib(g.database.total_bytes),
            mib(g.database.main_bytes),
            mib(g.database.wal_bytes),
            mib(g.database.free_bytes),
            g.database.auto_vacuum,
            g.database.path.display()
        );
        let per_source: Vec<String> = g
            .seen_ids_by_source
            .iter()
            .map(|(source, n)| format!("{source} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "seen ids: {}{}",
            g.seen_ids,
            if per_source.is_empty() {
                String::new()
            } else {
                format!(" ({})", per_source.join(", "))
            }
        );
        let _ = writeln!(
            out,
            "dead letters: {} (records sinks rejected; `secrelay dead-letters` lists them){}",
            g.dead_letters,
            if g.requeued > 0 {
                format!("; {} re-queued, waiting in the outbox", g.requeued)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            out,
            "rejected records: {} (records sources could not read)",
            g.rejected_records
        );
        for s in &self.sinks {
            if s.refused {
                let _ = writeln!(
                    out,
                    "!! sink {} is REFUSED by its receiver ({}): fix it; its records wait and it is tried again",
                    s.state.sink,
                    ago(s.state.last_error_at)
                );
            }
            if s.full {
                let _ = writeln!(
                    out,
                    "!! sink {} is {} bytes behind (its share is {}): the sources routed to it are paused",
                    s.state.sink, s.backlog_bytes, self.sink_share_bytes
                );
            }
        }
        let _ = writeln!(out, "\nSOURCES");
        let _ = writeln!(
            out,
            "{:<16} {:<18} {:<38} {:>10} {:>8} {:>6} {:>8} {:<12} {:<12} {:<12} LAST ERROR",
            "SOURCE",
            "STREAM",
            "TENANT",
            "EVENTS",
            "DUPS",
            "CLAMPS",
            "REJECTED",
            "CURSOR MOVED",
            "LAST OK",
            "LAG"
        );
        for p in &self.partitions {
            let error = match (&p.last_error, p.last_error_at) {
                (Some(e), Some(at)) if p.last_success_at.is_none_or(|ok| at > ok) => {
                    format!("{} ({})", e, ago(Some(at)))
                }
                (Some(_), Some(at)) => format!("(recovered; last failure {})", ago(Some(at))),
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "{:<16} {:<18} {:<38} {:>10} {:>8} {:>6} {:>8} {:<12} {:<12} {:<12} {}",
                p.source,
                p.stream,
                if p.tenant.is_empty() { "-" } else { &p.tenant },
                p.events_total,
                p.duplicates_total,
                p.clamps_total,
                p.rejected_total,
                ago(p.updated_at),
                ago(p.last_success_at),
                ago(p.newest_event_at),
                error
            );
        }
        if !self.rejected.is_empty() {
            let _ = writeln!(
                out,
                "\nREJECTED RECORDS (newest {}; kept in the state database)",
                self.rejected.len()
            );
            for r in &self.rejected {
                let _ = writeln!(
                    out,
                    "{:<16} {:<18} {:<12} {} ({})",
                    r.source,
                    r.stream,
                    ago(Some(r.at)),
                    r.reason,
                    r.url
                );
            }
        }
        let _ = writeln!(out, "\nSINKS");
        let _ = writeln!(
            out,
            "{:<16} {:>10} {:>10} {:>12} {:>12} {:<12} LAST ERROR",
            "SINK", "POSITION", "BACKLOG", "DELIVERED", "DEAD LETTERS", "LAST MOVED"
        );
        for s in &self.sinks {
            let error = match (&s.state.last_error, s.state.last_error_at) {
                (Some(e), Some(at)) if s.state.updated_at.is_none_or(|moved| at > moved) => {
                    format!("{} ({})", e, ago(Some(at)))
                }
                (Some(_), Some(at)) => format!("(recovered; last failure {})", ago(Some(at))),
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "{:<16} {:>10} {:>10} {:>12} {:>12} {:<12} {}",
                s.state.sink,
                s.state.delivered_seq,
                s.backlog,
                s.state.delivered_total,
                s.state.dead_letters,
                ago(s.state.updated_at),
                error
            );
        }
        out
    }
}
