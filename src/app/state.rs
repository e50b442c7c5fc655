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
    /// Per partition: its stored cursor state, and its lag when it is behind.
    pub partitions: Vec<PartitionState>,
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

/// One partition in `secrelay state`: what the store holds for it, and whether it is behind.
///
/// Its fields are the stored [`CursorState`]'s (flattened into the same JSON object) plus
/// `lag_secs` and `behind`.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionState {
    /// What the store holds for the partition.
    #[serde(flatten)]
    pub stored: CursorState,
    /// Why the partition is behind (`failing`, `overdue`, `paused`), `None` when it is not: its
    /// last poll succeeded within its polling interval (plus slack) and nothing holds it.
    pub behind: Option<Behind>,
    /// Seconds since the partition last reached the vendor's present (its last successful poll),
    /// set only when it is `behind`: the span of vendor time not yet pulled. A caught-up partition
    /// whose newest event is old is quiet, not late, and has none.
    pub lag_secs: Option<i64>,
}

impl std::ops::Deref for PartitionState {
    type Target = CursorState;
    fn deref(&self) -> &CursorState {
        &self.stored
    }
}

/// Why a partition is behind (work is waiting at the vendor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Behind {
    /// Its last poll failed (an error newer than its last success).
    Failing,
    /// No successful poll for longer than [`OVERDUE_INTERVALS`] intervals plus [`OVERDUE_SLACK_SECS`]
    /// (the daemon is not running, or stopped polling it).
    Overdue,
    /// A sink it routes to is a full share of the outbox behind: polling is paused.
    Paused,
}

impl Behind {
    /// The word `state` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Behind::Failing => "failing",
            Behind::Overdue => "overdue",
            Behind::Paused => "paused",
        }
    }
}

/// What the SOURCES columns of `secrelay state` mean, printed under the table.
pub const SOURCES_LEGEND: &str = "columns:
  NEWEST EVENT  age of the newest event committed (a quiet source's is old; that is not lag)
  CURSOR MOVED  time since the stored cursor last moved
  LAST POLL OK  time since the last poll that committed (an empty page counts)
  LAG           only when behind: time since the last successful poll, and why (failing: its
                last poll failed; overdue: no success for 2 intervals + 60 s; paused: a sink it
                routes to is full). `-`: caught up.";

/// A partition whose last success is older than this many polling intervals (plus
/// [`OVERDUE_SLACK_SECS`]) is overdue.
pub const OVERDUE_INTERVALS: f64 = 2.0;
/// Slack added to the overdue threshold, in seconds: backoff and a slow vendor page.
pub const OVERDUE_SLACK_SECS: f64 = 60.0;

/// Whether `p`, polled every `interval_secs`, is behind at `now` (`paused`: a sink it routes to is
/// full), and if so its lag in seconds (since its last successful poll; since ever: `None` lag
/// with `Some` reason when it never succeeded).
pub fn partition_lag(
    p: &CursorState,
    interval_secs: f64,
    paused: bool,
    now: DateTime<Utc>,
) -> (Option<Behind>, Option<i64>) {
    let since_ok = p.last_success_at.map(|t| (now - t).num_seconds().max(0));
    let failing = match (p.last_error_at, p.last_success_at) {
        (Some(failed), Some(ok)) => failed > ok,
        (Some(_), None) => true,
        _ => false,
    };
    let overdue =
        since_ok.is_some_and(|s| s as f64 > interval_secs * OVERDUE_INTERVALS + OVERDUE_SLACK_SECS);
    let behind = if paused {
        Some(Behind::Paused)
    } else if failing {
        Some(Behind::Failing)
    } else if overdue {
        Some(Behind::Overdue)
    } else {
        None
    };
    (behind, behind.and(since_ok))
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
    let now = Utc::now();
    let partitions = partitions
        .into_iter()
        .map(|cursor| {
            let configured = settings.sources.get(&cursor.source);
            // A source no longer configured is never polled: its lag would only grow.
            let interval = configured.map_or(f64::INFINITY, |s| s.interval_secs());
            let paused = configured.is_some_and(|s| {
                s.sinks()
                    .iter()
                    .any(|k| sinks.iter().any(|x| x.full && &x.state.sink == k))
            });
            let (behind, lag_secs) = partition_lag(&cursor, interval, paused, now);
            PartitionState {
                stored: cursor,
                behind,
                lag_secs,
            }
        })
        .collect();
    Ok(StateReport {
        at: now,
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
        let span = |secs: i64| match secs {
            0..=119 => format!("{secs}s"),
            120..=7199 => format!("{}m", secs / 60),
            _ => format!("{}h", secs / 3600),
        };
        let lag = |p: &PartitionState| match (p.behind, p.lag_secs) {
            (None, _) => "-".to_string(),
            (Some(why), Some(secs)) => format!("{} ({})", span(secs), why.as_str()),
            (Some(why), None) => format!("never ok ({})", why.as_str()),
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
            "{:<16} {:<18} {:<38} {:>10} {:>8} {:>6} {:>8} {:<12} {:<12} {:<12} {:<18} LAST ERROR",
            "SOURCE",
            "STREAM",
            "TENANT",
            "EVENTS",
            "DUPS",
            "CLAMPS",
            "REJECTED",
            "NEWEST EVENT",
            "CURSOR MOVED",
            "LAST POLL OK",
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
                "{:<16} {:<18} {:<38} {:>10} {:>8} {:>6} {:>8} {:<12} {:<12} {:<12} {:<18} {}",
                p.source,
                p.stream,
                if p.tenant.is_empty() { "-" } else { &p.tenant },
                p.events_total,
                p.duplicates_total,
                p.clamps_total,
                p.rejected_total,
                ago(p.newest_event_at),
                ago(p.updated_at),
                ago(p.last_success_at),
                lag(p),
                error
            );
        }
        if !self.partitions.is_empty() {
            let _ = writeln!(out, "{SOURCES_LEGEND}");
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

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
