//! What `secrelay backfill` shows while it runs and when it ends: a live progress line on a
//! terminal, periodic log lines otherwise, and the summary table per source.
//!
//! Owns: reading the store's running totals for progress and rendering them. Must not: write to
//! the store or steer the pipeline (it only watches; a slow terminal never slows a backfill).
//! Invariant: the `\r` line is drawn only when asked for ([`ProgressStyle::Line`]: stderr is a
//! terminal), so logs and pipes never get carriage returns.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{BackfillOptions, RunSummary};
use crate::settings::Settings;
use crate::store::Store;

/// How a backfill shows its progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProgressStyle {
    /// Not at all (the library default).
    #[default]
    Off,
    /// One line on stderr redrawn in place with `\r` every [`LINE_EVERY`] (stderr is a terminal).
    Line,
    /// An INFO log line every [`LOG_EVERY`] (stderr is a file, a pipe or the journal).
    Log,
}

/// How often the terminal line is redrawn.
pub const LINE_EVERY: Duration = Duration::from_millis(250);
/// How often a progress log line is written when stderr is not a terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Set while a progress line is on screen: a log line first clears it (see [`clear_line`]).
static LINE_SHOWN: AtomicBool = AtomicBool::new(false);

/// Clears the progress line if one is drawn, so a log line written next starts at column 0 (the
/// line is drawn again at the next tick). Called by the binary's log writer.
pub fn clear_line() {
    if LINE_SHOWN.swap(false, Ordering::SeqCst) {
        let _ = std::io::stderr().write_all(b"\r\x1b[2K");
    }
}

/// The progress display of one backfill; [`Progress::finish`] ends it.
pub struct Progress {
    task: Option<(CancellationToken, JoinHandle<()>)>,
}

/// One source being watched.
struct Watched {
    id: String,
    /// Where its window starts (vendor time): `--days` back, its stored position, or its look-back.
    window_start: DateTime<Utc>,
    /// Its new events and duplicates when the backfill started.
    base_new: i64,
    base_dups: i64,
}

impl Progress {
    /// Starts showing progress of a backfill of `options` over `store` (nothing with
    /// [`ProgressStyle::Off`]).
    pub async fn start(settings: &Settings, options: &BackfillOptions, store: &Store) -> Progress {
        if options.progress == ProgressStyle::Off {
            return Progress { task: None };
        }
        let started_at = Utc::now();
        let states = store.cursor_states().await.unwrap_or_default();
        let mut watched = Vec::new();
        for (id, source) in &settings.sources {
            if !source.enabled() || options.source.as_ref().is_some_and(|only| only != id) {
                continue;
            }
            let mine: Vec<_> = states.iter().filter(|s| &s.source == id).collect();
            let stored = mine.iter().filter_map(|s| s.newest_event_at).min();
            let lookback = chrono::Duration::hours(source.lookback_hours() as i64);
            let window_start = match (options.days, stored) {
                (Some(days), _) => started_at - chrono::Duration::days(i64::from(days)),
                (None, Some(at)) if !options.reset => at,
                _ => started_at - lookback,
            };
            watched.push(Watched {
                id: id.clone(),
                window_start,
                base_new: mine.iter().map(|s| s.events_total).sum(),
                base_dups: mine.iter().map(|s| s.duplicates_total).sum(),
            });
        }
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch(
            store.clone(),
            watched,
            options.progress,
            started_at,
            stop.clone(),
        ));
        Progress {
            task: Some((stop, task)),
        }
    }

    /// Draws the last line (ended with a newline) or logs it, and stops watching.
    pub async fn finish(self) {
        if let Some((stop, task)) = self.task {
            stop.cancel();
            let _ = task.await;
        }
    }
}

async fn watch(
    store: Store,
    watched: Vec<Watched>,
    style: ProgressStyle,
    started_at: DateTime<Utc>,
    stop: CancellationToken,
) {
    let started = Instant::now();
    let every = match style {
        ProgressStyle::Line => LINE_EVERY,
        _ => LOG_EVERY,
    };
    let mut last_pulled = 0i64;
    let mut last_at = Instant::now();
    let mut rate = 0.0;
    loop {
        let finished = stop.is_cancelled();
        let states = store.cursor_states().await.unwrap_or_default();
        let mut parts = Vec::new();
        let mut pulled = 0i64;
        for w in &watched {
            let mine = states.iter().filter(|s| s.source == w.id);
            let (mut new, mut dups, mut newest) = (0, 0, None::<DateTime<Utc>>);
            for s in mine {
                new += s.events_total;
                dups += s.duplicates_total;
                newest = newest.max(s.newest_event_at);
            }
            let (new, dups) = (new - w.base_new, dups - w.base_dups);
            pulled += new + dups;
            let span = (started_at - w.window_start).num_seconds().max(1) as f64;
            let through = newest.map_or(0.0, |t| {
                ((t - w.window_start).num_seconds() as f64 / span).clamp(0.0, 1.0)
            });
            parts.push(format!(
                "{} {:.0}% {} pulled ({} new)",
                w.id,
                through * 100.0,
                new + dups,
                new
            ));
        }
        let dt = last_at.elapsed().as_secs_f64();
        if dt > 0.0 && pulled > last_pulled {
            rate = (pulled - last_pulled) as f64 / dt;
        } else if dt >= 1.0 {
            rate = 0.0;
        }
        if pulled != last_pulled || dt >= 1.0 {
            last_pulled = pulled;
            last_at = Instant::now();
        }
        let line = format!(
            "backfill {:.0}s: {} pulled, {:.0} events/s | {}",
            started.elapsed().as_secs_f64(),
            pulled,
            rate,
            parts.join(" | ")
        );
        match style {
            ProgressStyle::Line => {
                let mut err = std::io::stderr().lock();
                let end = if finished { "\n" } else { "" };
                let _ = write!(err, "\r\x1b[2K{line}{end}");
                let _ = err.flush();
                LINE_SHOWN.store(!finished, Ordering::SeqCst);
            }
            ProgressStyle::Log => tracing::info!("{line}"),
            ProgressStyle::Off => {}
        }
        if finished {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// The summary table per source a backfill prints: pulled (new + duplicates), new, duplicates,
/// records delivered to each sink, and the time its task ran; then the sinks' totals.
pub fn summary_table(summary: &RunSummary) -> String {
    let mut per_source: BTreeMap<&str, (u64, u64, bool, bool)> = BTreeMap::new();
    for p in &summary.partitions {
        let row = per_source.entry(&p.source).or_insert((0, 0, true, false));
        row.0 += p.appended;
        row.1 += p.duplicates;
        row.2 &= p.caught_up;
        row.3 |= p.error.is_some();
    }
    let secs: BTreeMap<&str, f64> = summary
        .sources
        .iter()
        .map(|s| (s.source.as_str(), s.secs))
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:>10} {:>10} {:>10} {:>8}  {:<32} STATUS",
        "SOURCE", "PULLED", "NEW", "DUPLICATES", "TIME", "DELIVERED PER SINK"
    );
    for (source, (new, dups, caught_up, failed)) in &per_source {
        let delivered: Vec<String> = summary
            .sinks
            .iter()
            .filter_map(|s| {
                s.delivered_by_source
                    .get(*source)
                    .map(|n| format!("{} {n}", s.sink))
            })
            .collect();
        let status = match (failed, caught_up) {
            (true, _) => "FAILED (see below)",
            (false, true) => "caught up",
            (false, false) => "stopped",
        };
        let _ = writeln!(
            out,
            "{:<16} {:>10} {:>10} {:>10} {:>8}  {:<32} {status}",
            source,
            new + dups,
            new,
            dups,
            secs.get(source)
                .map_or("-".to_string(), |s| format!("{s:.1}s")),
            if delivered.is_empty() {
                "-".to_string()
            } else {
                delivered.join(", ")
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::{PartitionReport, SinkReport};

    #[test]
    fn the_summary_sums_partitions_per_source_and_splits_deliveries_per_sink() {
        let part = |source: &str, stream: &str, appended, duplicates| PartitionReport {
            source: source.into(),
            stream: stream.into(),
            tenant: String::new(),
            appended,
            duplicates,
            caught_up: true,
            error: None,
        };
        let summary = RunSummary {
            partitions: vec![
                part("sophos", "events", 100, 5),
                part("sophos", "alerts", 20, 0),
                part("jamf", "inventory", 7, 0),
            ],
            sinks: vec![SinkReport {
                sink: "archive".into(),
                delivered: 127,
                delivered_by_source: [("sophos".to_string(), 120), ("jamf".to_string(), 7)]
                    .into_iter()
                    .collect(),
                dead_letters: 0,
                backlog: 0,
                error: None,
            }],
            sources: vec![super::super::SourceRun {
                source: "sophos".into(),
                secs: 2.5,
            }],
        };
        let table = summary_table(&summary);
        let sophos = table.lines().find(|l| l.starts_with("sophos")).unwrap();
        let cols: Vec<&str> = sophos.split_whitespace().collect();
        assert_eq!(&cols[..5], ["sophos", "125", "120", "5", "2.5s"], "{table}");
        assert!(sophos.contains("archive 120"), "{table}");
        assert!(sophos.ends_with("caught up"), "{table}");
        let jamf = table.lines().find(|l| l.starts_with("jamf")).unwrap();
        assert!(jamf.contains("archive 7"), "{table}");
    }
}
