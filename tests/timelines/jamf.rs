//! Jamf Pro inventory timelines, for the Jamf Pro API (`general.reportDate>=` keyset) and the
//! Classic API (a full id list, then each computer): a small fleet whose computers re-report in
//! groups that share one report date (ties; some on whole seconds, written without fractional
//! seconds), are added and deleted, now and then between two pages of a catch-up (scheduled by
//! request count), tokens the server drops, now and then a computer whose report date cannot be
//! read, quiet stretches of catch-ups, bursts of more than a page, and restarts.
//!
//! Oracle, from the simulated fleet alone: a version (computer, report date) is owed when it was
//! there both when a catch-up started and when it ended (a version replaced or deleted during a
//! catch-up may or may not have been read; one replaced between two catch-ups was never visible
//! and is not owed), and the final fleet is owed. Owed versions are delivered exactly once;
//! anything else delivered must be a version that existed, once; versions with an unreadable date
//! are never delivered, and each one owed is kept as a rejected record.

use std::collections::BTreeSet;
use std::sync::Arc;

use secrelay::settings::{Settings, SourceSettings};
use secrelay::simulate::jamf::{FleetChange, JamfSim, JamfSimConfig};
use secrelay::sources::jamf::JamfSource;

use crate::harness::{self, Relay};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Pro,
    Classic,
}

fn source(sim: &JamfSim, api: Api, page_size: u32) -> Arc<JamfSource> {
    let text = format!(
        r#"
[sinks.out]
type = "file"
path = "/nonexistent/secrelay-timeline.ndjson"
[sources.jamf_t]
type = "jamf"
url = {url:?}
client_id = "jamf-client"
client_secret = "sim-jamf-secret"
api = "{api}"
page_size = {page_size}
sections = []
streams = ["inventory"]
sinks = ["out"]
"#,
        url = sim.url(),
        api = if api == Api::Pro { "v3" } else { "classic" },
    );
    let settings = Settings::from_toml(&text).expect("valid timeline config");
    let SourceSettings::Jamf(s) = settings.sources["jamf_t"].clone() else {
        panic!("a jamf source")
    };
    Arc::new(JamfSource::new("jamf_t", s, harness::http_client(&settings.http)).unwrap())
}

/// The vendor clock: never behind the real present (the Classic pass filters on our clock, less
/// an hour), often standing still (ties), sometimes on a whole second.
struct Clock {
    at: i64,
}

impl Clock {
    fn next(&mut self, rng: &mut fastrand::Rng) -> i64 {
        let now = chrono::Utc::now().timestamp_millis();
        match rng.u8(0..6) {
            0 | 1 => {}
            2 => self.at = (self.at / 1000 + 1) * 1000,
            _ => self.at += rng.i64(1..40),
        }
        self.at = self.at.max(now);
        self.at
    }
}

/// One version's event id, as each API's inventory stream names it.
fn key(api: Api, (id, ms, date): &(u64, i64, String)) -> String {
    match api {
        Api::Pro => format!("{id}@{date}"),
        Api::Classic => format!("{id}@{ms}"),
    }
}

fn readable((_, _, date): &(u64, i64, String)) -> bool {
    !date.starts_with("last week")
}

/// A random change to the fleet (`ids` are the computers there now).
fn change(rng: &mut fastrand::Rng, clock: &mut Clock, ids: &[u64]) -> FleetChange {
    let report_ms = clock.next(rng);
    match (ids.is_empty(), rng.u8(0..20)) {
        (true, _) | (_, 0..=5) => FleetChange::Add { report_ms },
        (_, 6..=8) => FleetChange::Delete {
            id: ids[rng.usize(..ids.len())],
        },
        (_, 9) => FleetChange::Corrupt {
            id: ids[rng.usize(..ids.len())],
            report_ms,
        },
        _ => {
            let group = rng.usize(1..=3.min(ids.len()));
            FleetChange::Report {
                ids: (0..group).map(|_| ids[rng.usize(..ids.len())]).collect(),
                report_ms,
            }
        }
    }
}

struct Run {
    sim: JamfSim,
    relay: Relay,
    source: Arc<JamfSource>,
    page_size: u32,
    owed: BTreeSet<(u64, i64, String)>,
    catch_ups: usize,
}

impl Run {
    async fn catch_up(&mut self) -> Result<(), String> {
        let before: BTreeSet<_> = self.sim.versions().into_iter().collect();
        self.catch_ups += 1;
        self.relay
            .catch_up(&self.source)
            .await
            .map_err(|e| format!("catch-up {}: {e}", self.catch_ups))?;
        let after: BTreeSet<_> = self.sim.versions().into_iter().collect();
        self.owed.extend(before.intersection(&after).cloned());
        Ok(())
    }
}

async fn timeline(api: Api, seed: u64) -> Result<(), String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let sim = JamfSim::start(JamfSimConfig {
        computers: rng.u64(0..6),
        seed,
        ..JamfSimConfig::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    // Small pages, so bursts span several; Classic reads each computer on its own, so its pages
    // are a little larger to keep the run short.
    let page_size = match api {
        Api::Pro => rng.u32(2..=5),
        Api::Classic => rng.u32(3..=8),
    };
    let first = source(&sim, api, page_size);
    let mut run = Run {
        relay: Relay::new().await,
        source: first,
        sim,
        page_size,
        owed: BTreeSet::new(),
        catch_ups: 0,
    };
    let mut clock = Clock {
        at: chrono::Utc::now().timestamp_millis(),
    };
    // Every Classic catch-up reads every computer: fewer steps keep its run as short.
    let steps = match api {
        Api::Pro => rng.usize(8..16),
        Api::Classic => rng.usize(6..12),
    };
    for _ in 0..steps {
        let ids: Vec<u64> = run.sim.versions().iter().map(|v| v.0).collect();
        match rng.u8(0..10) {
            // A burst, often larger than a page.
            0..=2 => {
                for _ in 0..rng.u32(1..=2 * run.page_size + 2) {
                    let ids: Vec<u64> = run.sim.versions().iter().map(|v| v.0).collect();
                    run.sim.apply(change(&mut rng, &mut clock, &ids));
                }
            }
            // Changes between two pages of the next catch-up.
            3 => {
                for _ in 0..rng.u32(1..=4) {
                    let c = change(&mut rng, &mut clock, &ids);
                    run.sim.schedule(rng.u64(1..8), c);
                }
            }
            4 | 5 => run.catch_up().await?,
            // A quiet stretch.
            6 => {
                for _ in 0..rng.u32(2..=3) {
                    run.catch_up().await?;
                }
            }
            7 => {
                run.relay.restart().await;
                run.source = source(&run.sim, api, run.page_size);
            }
            8 => run.sim.expire_tokens(),
            _ => run
                .sim
                .apply(change(&mut rng, &mut clock, &ids))
                .map_or((), |_| ()),
        }
    }
    run.sim.clear_schedule();
    run.catch_up().await?;
    run.catch_up().await?;
    run.owed.extend(run.sim.versions());

    let ever: BTreeSet<String> = run
        .sim
        .history()
        .iter()
        .filter(|v| readable(v))
        .map(|v| key(api, v))
        .collect();
    let got: Vec<String> = run
        .relay
        .delivered()
        .await
        .into_iter()
        .filter(|r| r.stream == "inventory")
        .map(|r| r.id)
        .collect();
    let mut want: BTreeSet<String> = run
        .owed
        .iter()
        .filter(|v| readable(v))
        .map(|v| key(api, v))
        .collect();
    want.extend(got.iter().filter(|id| ever.contains(*id)).cloned());
    let want: Vec<String> = want.into_iter().collect();
    harness::exactly_once(&got, &want).map_err(|e| format!("page {page_size}: {e}"))?;
    let unreadable_owed = run.owed.iter().filter(|v| !readable(v)).count();
    let rejected = run.relay.rejected().await;
    if unreadable_owed > 0 && rejected.is_empty() {
        return Err(format!(
            "{unreadable_owed} unreadable versions owed, none kept as rejected"
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jamf_pro_api_inventory() {
    harness::for_each_seed("jamf_pro_api_inventory", |seed| timeline(Api::Pro, seed)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jamf_classic_inventory() {
    harness::for_each_seed("jamf_classic_inventory", |seed| {
        timeline(Api::Classic, seed)
    })
    .await;
}
