//! Tenable.sc timelines, one test per stream (open findings on `lastSeen`, mitigated ones on
//! `lastMitigated`): an old backlog with many findings sharing one second, then scans that
//! re-observe, import, mitigate and reopen findings, at once or between the pages of a pass (so
//! rows leave and enter the window mid-pass and ties come back in another order), expiring
//! sessions (403 with `error_code` 12), an `error_code` on HTTP 200, quiet stretches and restarts.
//!
//! Times: the backlog lies 20 to 2 hours back, everything later between 55 and 20 minutes back,
//! with `overlap_hours = 1`, so every change after the backlog stays inside each later window
//! whatever the real clock does (only the backlog relies on the first pass reading it).
//!
//! Oracle (from the simulator's history, not the source's logic): an observation present from the
//! start to the end of a catch-up, or at the end, is owed exactly once; one that existed only
//! between the pages of a pass may be delivered (once) or not; nothing else may be delivered.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::Utc;
use secrelay::settings::{Settings, SourceSettings};
use secrelay::simulate::tenable_sc::{TenableChange, TenableSim, TenableSimConfig};
use secrelay::sources::tenable_sc::TenableScSource;
use secrelay::sources::Source;

use crate::harness::{self, Relay};

/// Rows per page: small, so bursts and tie groups span several pages.
const PAGE: u64 = 6;

fn source(sim: &TenableSim, patched: bool, session: bool) -> Arc<TenableScSource> {
    let auth = if session {
        "auth = \"session\"\nusername = \"secmanager\"\npassword = \"sim-tenable-password\""
    } else {
        "access_key = \"ak-1\"\nsecret_key = \"sim-tenable-secret\""
    };
    let text = format!(
        r#"
[sinks.out]
type = "file"
path = "/nonexistent/secrelay-timeline.ndjson"
[sources.sc_t]
type = "tenable_sc"
url = {url:?}
sinks = ["out"]
{auth}
streams = [{stream:?}]
page_size = {PAGE}
overlap_hours = 1
initial_lookback_days = 1
"#,
        url = sim.url(),
        stream = if patched { "patched" } else { "cumulative" },
    );
    let settings = Settings::from_toml(&text).expect("valid timeline config");
    let SourceSettings::TenableSc(s) = settings.sources["sc_t"].clone() else {
        panic!("a tenable_sc source")
    };
    Arc::new(
        TenableScSource::with_client("sc_t", s, harness::http_client(&settings.http), None)
            .unwrap(),
    )
}

/// The scan clock: starts 55 minutes back, moves 0–60 s per step (0: another tie).
struct Clock {
    at: i64,
}

impl Clock {
    fn next(&mut self, rng: &mut fastrand::Rng) -> i64 {
        if rng.u8(0..3) != 0 {
            self.at += rng.i64(1..60);
        }
        self.at
    }
}

/// A change a scan makes now or between the pages of the next catch-up.
fn scan_change(rng: &mut fastrand::Rng, clock: &mut Clock, findings: u64) -> TenableChange {
    let n = rng.u64(0..findings.max(1));
    match rng.u8(0..10) {
        0..=3 => TenableChange::Reobserve {
            n,
            at: clock.next(rng),
        },
        4..=6 => TenableChange::Mitigate {
            n,
            at: clock.next(rng),
        },
        7..=8 => TenableChange::Insert {
            count: rng.u64(1..=PAGE),
            at: clock.next(rng) - rng.i64(0..300),
        },
        _ => TenableChange::ExpireSessions,
    }
}

async fn timeline(seed: u64, patched: bool) -> Result<(), String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let sim = TenableSim::start(TenableSimConfig {
        seed,
        ..TenableSimConfig::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    let now = Utc::now().timestamp();
    let session = rng.u8(0..3) != 0;

    // The backlog: groups of findings sharing one second, some larger than a page; for the
    // mitigated stream, most of them mitigated at shared instants too.
    let mut findings = 0u64;
    let mut at = now - 20 * 3600;
    for _ in 0..rng.usize(2..6) {
        let count = rng.u64(1..=2 * PAGE + 1);
        at += rng.i64(60..7200);
        let numbers = sim.add_findings(count, at, at);
        findings += count;
        if patched {
            let mitigated_at = at + rng.i64(0..600);
            for n in numbers {
                if rng.u8(0..4) != 0 {
                    sim.mitigate(n, mitigated_at);
                }
            }
        }
    }
    let mut clock = Clock { at: now - 55 * 60 };

    let relay = &mut Relay::new().await;
    let mut source = source(&sim, patched, session);
    let mut owed: BTreeSet<String> = BTreeSet::new();
    let current =
        |sim: &TenableSim| -> BTreeSet<String> { sim.identities(patched).into_iter().collect() };
    // Runs one catch-up with `changes` scheduled between its pages; owes what it spans.
    async fn catch_up(
        relay: &Relay,
        source: &Arc<TenableScSource>,
        sim: &TenableSim,
        owed: &mut BTreeSet<String>,
        current: &dyn Fn(&TenableSim) -> BTreeSet<String>,
        rng: &mut fastrand::Rng,
        changes: Vec<TenableChange>,
    ) -> Result<(), String> {
        let base = sim.analysis_count();
        for change in changes {
            sim.schedule(base + rng.u64(1..=8), change);
        }
        let before = current(sim);
        relay.catch_up(source).await?;
        let after = current(sim);
        owed.extend(before.intersection(&after).cloned());
        sim.apply_pending();
        Ok(())
    }

    for step in 0..rng.usize(6..12) {
        match rng.u8(0..100) {
            0..=24 => {
                // A burst larger than a page, at once: a scan imported, or findings fixed.
                let at = clock.next(&mut rng);
                let count = rng.u64(1..=2 * PAGE + 2);
                if patched && rng.bool() {
                    for _ in 0..count {
                        sim.mitigate(rng.u64(0..findings), at);
                    }
                } else {
                    sim.change(TenableChange::Insert { count, at });
                    findings += count;
                }
            }
            25..=34 => {
                for _ in 0..rng.usize(1..4) {
                    let change = scan_change(&mut rng, &mut clock, findings);
                    if let TenableChange::Insert { count, .. } = change {
                        findings += count;
                    }
                    sim.change(change);
                }
            }
            35..=69 => {
                // A catch-up while scans change the result set between its pages.
                let changes: Vec<TenableChange> = (0..rng.usize(0..4))
                    .map(|_| {
                        let change = scan_change(&mut rng, &mut clock, findings);
                        if let TenableChange::Insert { count, .. } = change {
                            findings += count;
                        }
                        change
                    })
                    .collect();
                catch_up(relay, &source, &sim, &mut owed, &current, &mut rng, changes)
                    .await
                    .map_err(|e| format!("step {step}: {e}"))?;
            }
            70..=79 => {
                for _ in 0..2 {
                    catch_up(
                        relay,
                        &source,
                        &sim,
                        &mut owed,
                        &current,
                        &mut rng,
                        Vec::new(),
                    )
                    .await
                    .map_err(|e| format!("step {step} (quiet): {e}"))?;
                }
            }
            80..=89 => {
                source.close().await;
                relay.restart().await;
                source = self::source(&sim, patched, session);
            }
            90..=94 => sim.expire_sessions(),
            _ => {
                sim.faults()
                    .error_on_ok
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }
    catch_up(
        relay,
        &source,
        &sim,
        &mut owed,
        &current,
        &mut rng,
        Vec::new(),
    )
    .await
    .map_err(|e| format!("final catch-up: {e}"))?;

    let stream = if patched {
        "mitigated"
    } else {
        "vulnerabilities"
    };
    let got: Vec<String> = relay
        .delivered()
        .await
        .into_iter()
        .filter(|r| r.stream == stream)
        .map(|r| r.id)
        .collect();
    // Transient observations (replaced between two pages of one pass) may have been read.
    let ever: BTreeSet<String> = sim.identities_ever(patched).into_iter().collect();
    let mut want: BTreeSet<String> = owed.clone();
    want.extend(got.iter().filter(|id| ever.contains(*id)).cloned());
    let want: Vec<String> = want.into_iter().collect();
    harness::exactly_once(&got, &want)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenable_sc_open_findings_arrive_once_across_random_timelines() {
    harness::for_each_seed("tenable_sc_open", |seed| timeline(seed, false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenable_sc_mitigated_findings_arrive_once_across_random_timelines() {
    harness::for_each_seed("tenable_sc_mitigated", |seed| timeline(seed, true)).await;
}
