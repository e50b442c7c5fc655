//! Sophos Central SIEM timelines: two tenants of a partner, events and alerts pushed in bursts
//! (often several at one instant, so the `>=` cursor repeats its boundary), now and then a record
//! without `id`, expiring tokens, 429/503/truncated answers, and restarts.
//!
//! Oracle: every pushed record with an id is in the outbox exactly once, under its tenant and
//! stream; every record without one is kept once as a rejected record; nothing else.

use std::sync::Arc;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use secrelay::settings::{Settings, SourceSettings};
use secrelay::simulate::sophos::{Identity, SophosSim, SophosSimConfig};
use secrelay::sources::sophos::SophosSource;
use serde_json::json;

use crate::harness::{self, Relay};

/// Records per page: small, so bursts span several pages.
const PAGE: usize = 4;
const STREAMS: [&str; 2] = ["events", "alerts"];

fn source(sim: &SophosSim) -> Arc<SophosSource> {
    let text = format!(
        r#"
[sinks.out]
type = "file"
path = "/nonexistent/secrelay-timeline.ndjson"
[sources.sophos_t]
type = "sophos"
client_id = "sim-client"
client_secret = "sim-secret"
token_url = {token:?}
api_url = {api:?}
page_size = {PAGE}
initial_lookback_hours = 3
sinks = ["out"]
"#,
        token = sim.token_url(),
        api = sim.url(),
    );
    let settings = Settings::from_toml(&text).expect("valid timeline config");
    let SourceSettings::Sophos(s) = settings.sources["sophos_t"].clone() else {
        panic!("a sophos source")
    };
    Arc::new(SophosSource::new("sophos_t", s, harness::http_client(&settings.http), None).unwrap())
}

/// The simulated vendor clock: it starts two hours back and never passes the real present.
struct Clock {
    at: DateTime<Utc>,
    /// Records pushed at `at` so far; kept below a page so the `>=` cursor always advances.
    ties: usize,
}

impl Clock {
    fn next(&mut self, rng: &mut fastrand::Rng) -> DateTime<Utc> {
        if self.ties + 1 >= PAGE || rng.u8(0..3) != 0 {
            self.at += Duration::milliseconds(rng.i64(1..40));
            self.ties = 0;
        }
        self.ties += 1;
        self.at
    }
}

async fn timeline(seed: u64) -> Result<(), String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let sim = SophosSim::start(SophosSimConfig {
        identity: Identity::Partner,
        tenants: 2,
        scripted: true,
        seed,
        ..SophosSimConfig::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    let tenants = sim.tenant_ids();
    let mut relay = Relay::new().await;
    let mut source = source(&sim);
    let mut clock = Clock {
        at: Utc::now() - Duration::hours(2),
        ties: 0,
    };
    let mut owed = Vec::new();
    let mut owed_rejected = 0usize;
    let mut pushed = 0u64;
    for step in 0..rng.usize(10..30) {
        match rng.u8(0..100) {
            0..=34 => {
                // A burst, often larger than a page, into one tenant's stream.
                let tenant = rng.usize(0..tenants.len());
                let stream = STREAMS[rng.usize(0..2)];
                for _ in 0..rng.usize(1..=3 * PAGE + 2) {
                    pushed += 1;
                    let at = clock.next(&mut rng);
                    let time = at.to_rfc3339_opts(SecondsFormat::Millis, true);
                    if rng.u8(0..25) == 0 {
                        owed_rejected += 1;
                        sim.push(tenant, stream, at, json!({"created_at": time, "n": pushed}));
                    } else {
                        let id = format!("{stream}-{seed}-{pushed}");
                        owed.push(format!("{stream}@{}/{id}", tenants[tenant]));
                        sim.push(
                            tenant,
                            stream,
                            at,
                            json!({"id": id, "created_at": time, "severity": "high",
                                   "type": "Event::Endpoint::Threat::Detected", "n": pushed}),
                        );
                    }
                }
            }
            35..=69 => relay
                .catch_up(&source)
                .await
                .map_err(|e| format!("step {step}: {e}"))?,
            70..=79 => {
                // Quiet polls: nothing new.
                for _ in 0..rng.usize(2..4) {
                    relay
                        .catch_up(&source)
                        .await
                        .map_err(|e| format!("step {step} (quiet): {e}"))?;
                }
            }
            80..=87 => {
                relay.restart().await;
                source = self::source(&sim);
            }
            88..=92 => sim.expire_tokens(),
            _ => {
                let faults = sim.faults();
                let counter = match rng.u8(0..3) {
                    0 => &faults.rate_limit,
                    1 => &faults.unavailable,
                    _ => &faults.truncate,
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }
    relay
        .catch_up(&source)
        .await
        .map_err(|e| format!("final catch-up: {e}"))?;
    let got: Vec<String> = relay
        .delivered()
        .await
        .into_iter()
        .map(|r| format!("{}@{}/{}", r.stream, r.tenant, r.id))
        .collect();
    harness::exactly_once(&got, &owed)?;
    let rejected = relay.rejected().await.len();
    if rejected != owed_rejected {
        return Err(format!(
            "{rejected} rejected records kept, {owed_rejected} records without id pushed"
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sophos_events_and_alerts_arrive_once_across_random_timelines() {
    harness::for_each_seed("sophos", timeline).await;
}
