//! What `secrelay backfill` shows while it runs and when it ends: a live progress line on a
//! terminal, periodic log lines otherwise, and the summary table per source.
//!
//! Owns: reading the store's running totals for progress and rendering them. Must not: write to
//! the store or steer the pipeline (it only watches; a slow terminal never slows a backfill).
//! Invariant: the redrawn block is drawn only when asked for ([`ProgressStyle::Line`]: stderr is
//! a terminal), so logs and pipes never get carriage returns or escape sequences.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
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
    /// A block on stderr redrawn in place (`\r` and ANSI erase) every [`LINE_EVERY`]: a totals
    /// line, then one short line per source (stderr is a terminal).
    Line,
    /// An INFO log line every [`LOG_EVERY`] (stderr is a file, a pipe or the journal).
    Log,
}

/// How often the terminal line is redrawn.
pub const LINE_EVERY: Duration = Duration::from_millis(250);
/// How often a progress log line is written when stderr is not a terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// How many lines the progress block has on screen (0: none). Held while the block is drawn and
/// while a log line is written (see [`log_writer`]), so the two never interleave.
static LINES_SHOWN: Mutex<usize> = Mutex::new(0);

fn lines_shown() -> MutexGuard<'static, usize> {
    LINES_SHOWN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The escape sequence that moves to the start of a block of `lines` lines ending at the cursor
/// and erases it to the end of the screen.
fn erase(lines: usize) -> String {
    match lines {
        0 => String::new(),
        1 => "\r\x1b[J".to_string(),
        n => format!("\x1b[{}A\r\x1b[J", n - 1),
    }
}

/// Standard error for one log line: erases the progress block first if one is drawn (it is drawn
/// again at the next tick), and keeps the block from being drawn until the line is written.
pub fn log_writer() -> LogWriter {
    let mut shown = lines_shown();
    if *shown > 0 {
        let _ = std::io::stderr().write_all(erase(*shown).as_bytes());
        *shown = 0;
    }
    LogWriter { _drawing: shown }
}

/// Standard error, for one log line (see [`log_writer`]).
pub struct LogWriter {
    _drawing: MutexGuard<'static, usize>,
}

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The progress display of one backfill; [`Progress::finish`] ends it.
pub struct Progress {
    task: Option<(CancellationToken, JoinHandle<()>)>,
    /// Sources whose every partition caught up, told at the end for the last draw.
    caught_up: Arc<Mutex<BTreeSet<String>>>,
}

/// One source being watched.
struct Watched {
    id: String,
    /// Where its window starts (vendor time): `--days` back, its stored position, or its initial
    /// look-back; `None` for a source without a time window (progress is then events so far).
    window_start: Option<DateTime<Utc>>,
    /// Its new events and duplicates when the backfill started.
    base_new: i64,
    base_dups: i64,
}

impl Progress {
    /// Starts showing progress of a backfill of `options` over `store` (nothing with
    /// [`ProgressStyle::Off`]).
    pub async fn start(settings: &Settings, options: &BackfillOptions, store: &Store) -> Progress {
        if options.progress == ProgressStyle::Off {
            return Progress {
                task: None,
                caught_up: Arc::default(),
            };
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
            let window_start =
                source
                    .initial_lookback_hours()
                    .map(|hours| match (options.days, stored) {
                        (Some(days), _) => started_at - chrono::Duration::days(i64::from(days)),
                        (None, Some(at)) if !options.reset => at,
                        _ => started_at - chrono::Duration::hours(hours as i64),
                    });
            watched.push(Watched {
                id: id.clone(),
                window_start,
                base_new: mine.iter().map(|s| s.events_total).sum(),
                base_dups: mine.iter().map(|s| s.duplicates_total).sum(),
            });
        }
        let stop = CancellationToken::new();
        let caught_up: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let task = tokio::spawn(watch(
            store.clone(),
            watched,
            options.progress,
            started_at,
            (stop.clone(), caught_up.clone()),
        ));
        Progress {
            task: Some((stop, task)),
            caught_up,
        }
    }

    /// Draws the last block (ended with a newline) or logs it, and stops watching. `summary`: what
    /// the backfill did, so sources that caught up say so (a quiet source's newest event may be
    /// far from the end of its window).
    pub async fn finish(self, summary: Option<&RunSummary>) {
        if let Some(summary) = summary {
            let mut done: BTreeMap<&str, bool> = BTreeMap::new();
            for p in &summary.partitions {
                *done.entry(&p.source).or_insert(true) &= p.caught_up && p.error.is_none();
            }
            if let Ok(mut caught_up) = self.caught_up.lock() {
                caught_up.extend(
                    done.into_iter()
                        .filter(|(_, d)| *d)
                        .map(|(s, _)| s.to_string()),
                );
            }
        }
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
    (stop, caught_up): (CancellationToken, Arc<Mutex<BTreeSet<String>>>),
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
            let done = finished && caught_up.lock().map(|c| c.contains(&w.id)).unwrap_or(false);
            let through = match w.window_start {
                _ if done => "caught up,".to_string(),
                None => "-".to_string(),
                Some(start) => {
                    let span = (started_at - start).num_seconds().max(1) as f64;
                    let done = newest.map_or(0.0, |t| {
                        ((t - start).num_seconds() as f64 / span).clamp(0.0, 1.0)
                    });
                    format!("{:.0}%", done * 100.0)
                }
            };
            parts.push(format!(
                "{} {through} {} pulled ({} new, {} duplicates)",
                w.id,
                new + dups,
                new,
                dups
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
        let totals = format!(
            "backfill {:.0}s: {} pulled, {:.0} events/s",
            started.elapsed().as_secs_f64(),
            pulled,
            rate,
        );
        match style {
            ProgressStyle::Line => {
                // Short lines, one per source, so none wraps on an 80-column terminal (a wrapped
                // line would not be erased by the next redraw).
                let mut block = vec![totals];
                block.extend(parts.iter().map(|p| {
                    let line = format!("  {p}");
                    line.chars().take(79).collect::<String>()
                }));
                let mut shown = lines_shown();
                let mut err = std::io::stderr().lock();
                let end = if finished { "\n" } else { "" };
                let _ = write!(err, "{}{}{end}", erase(*shown), block.join("\n"));
                let _ = err.flush();
                *shown = if finished { 0 } else { block.len() };
            }
            ProgressStyle::Log => {
                tracing::info!(pulled, events_per_sec = rate.round() as u64, "{totals}");
                // One line per source, with its id as a field like every other line about it.
                for (w, part) in watched.iter().zip(&parts) {
                    tracing::info!(source = %w.id, "backfill progress: {part}");
                }
            }
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
