//! Randomized Code42 / Incydr timelines (issue 8): for file events, alerts and sessions, a seeded
//! timeline of vendor changes with the API's quirks (many records at one instant, ON_OR_AFTER
//! boundary repeats, file events searchable late, sessions changing long after they began, token
//! expiry), catch-ups at random instants, quiet stretches, bursts larger than a page and restarts.
//! The oracle comes from the timeline alone: what the vendor held at each catch-up.
//!
//! Time is the simulator's clock, shared with the source, moved by the timeline; nothing sleeps.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use secrelay::settings::Code42Settings;
use secrelay::simulate::code42::{Code42Sim, Code42SimConfig};
use secrelay::sources::code42::Code42Source;

use crate::harness::{self, Relay};

/// Where every timeline's clock starts.
fn epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 8, 0, 0).single().unwrap()
}

async fn start_sim(seed: u64) -> Result<Code42Sim, String> {
    let sim = Code42Sim::start(Code42SimConfig {
        seed,
        token_lifetime_secs: 86_400,
        ..Code42SimConfig::default()
    })
    .await
    .map_err(|e| format!("simulator: {e}"))?;
    sim.set_now(epoch());
    Ok(sim)
}

/// A new source instance over `settings`, reading the simulator's clock (a restart builds another).
fn source(sim: &Code42Sim, settings: &Code42Settings) -> Arc<Code42Source> {
    let http = harness::http_client(&secrelay::settings::HttpSettings {
        timeout_secs: 60.0,
        connect_timeout_secs: 10.0,
        max_response_bytes: secrelay::sources::http::DEFAULT_MAX_RESPONSE_BYTES,
    });
    Arc::new(Code42Source::new("c42", settings.clone(), http, None).with_clock(sim.clock()))
}

const SESSION_STATES: [&str; 6] = [
    "OPEN",
    "IN_PROGRESS",
    "OPEN_NEW_DATA",
    "CLOSED",
    "CLOSED_TP",
    "CLOSED_FP",
];

/// One seed: the three streams of one source over one timeline. Everything the timeline adds is
/// remembered by the oracle (`want_*`), independently of how the source reads it.
async fn timeline(seed: u64) -> Result<(), String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let sim = start_sim(seed).await?;
    let alert_page = rng.u32(3..=5);
    let event_page = rng.u32(3..=6);
    let session_page = rng.u32(3..=5);
    // Sessions: a one-hour window; the clock moves at most a quarter of it between catch-ups, so
    // each session is seen inside the window at least once.
    let window = Duration::hours(1);
    let settings: Code42Settings = serde_json::from_value(serde_json::json!({
        "sinks": ["out"],
        "client_id": "key-42",
        "client_secret": "sim-code42-secret",
        "api_url": sim.url(),
        "streams": ["file_events", "alerts", "sessions"],
        "alert_page_size": alert_page,
        "page_size": event_page,
        "session_page_size": session_page,
        "session_window_hours": 1,
    }))
    .map_err(|e| format!("settings: {e}"))?;
    let mut relay = Relay::new().await;
    let mut src = source(&sim, &settings);
    let mut now = epoch();

    let mut want_alerts = Vec::new();
    // The newest createdAt so far: alerts are created in time order, ties reuse it exactly.
    let mut newest_alert = now - Duration::minutes(30);
    let mut want_events = Vec::new();
    let mut last_inserted = now - Duration::minutes(5);
    // sessionId -> beginTime.
    let mut begins: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
    // Every sessionId@lastUpdated the vendor held at a catch-up.
    let mut want_sessions: BTreeSet<String> = BTreeSet::new();
    let mut since_catch_up = Duration::zero();

    for _ in 0..rng.usize(3..6) {
        // Sometimes a quiet stretch: catch-ups a quarter window apart with nothing new, so
        // sessions leave the window while still open.
        if rng.u8(0..4) == 0 {
            for _ in 0..rng.usize(2..5) {
                for id in begins.keys() {
                    let (_, updated) = sim.session_state(id).ok_or("a session vanished")?;
                    want_sessions.insert(format!("{id}@{updated}"));
                }
                relay.catch_up(&src).await?;
                now += window / 4;
                sim.set_now(now);
            }
            since_catch_up = window / 4;
        }
        // Alerts: a burst, often larger than a page; ties at the newest instant (the cursor's
        // boundary once caught up), new instants within the same millisecond, new instants.
        if rng.bool() {
            for i in 0..rng.usize(1..=(2 * alert_page as usize + 1)) {
                let created = match rng.u8(0..10) {
                    0..=3 => newest_alert,
                    4..=5 => newest_alert + Duration::microseconds(rng.i64(1..400)),
                    _ => (now + Duration::microseconds(rng.i64(0..1_000_000))).max(newest_alert),
                };
                newest_alert = created;
                want_alerts.extend(sim.add_alerts_at(created, &format!("s{seed} {i}"), 1));
            }
        }
        // File events: many at one instant, inserted up to 10 minutes back, searchable up to 14
        // minutes after insertion (Code42 says up to 15).
        if rng.bool() {
            for _ in 0..rng.usize(1..=(2 * event_page as usize + 1)) {
                let inserted = if rng.u8(0..3) == 0 && last_inserted >= now - Duration::minutes(10)
                {
                    last_inserted
                } else {
                    now - Duration::seconds(rng.i64(0..600))
                };
                last_inserted = inserted;
                let visible = inserted + Duration::seconds(rng.i64(0..14 * 60));
                let detected = inserted - Duration::seconds(rng.i64(0..7200));
                want_events.push(sim.add_file_event(inserted, detected, visible));
            }
        }
        // Sessions: new ones begun within the last half window; state changes of any session
        // that is not closed, or of a closed one still well inside the window (a closed session
        // that left the window stays as it is).
        for _ in 0..rng.usize(0..=2) {
            let begin = now - Duration::minutes(rng.i64(0..30));
            begins.insert(sim.add_session(begin), begin);
        }
        for (id, begin) in &begins {
            if rng.u8(0..3) != 0 {
                continue;
            }
            let (state, _) = sim.session_state(id).ok_or("a session vanished")?;
            if !state.starts_with("CLOSED") || *begin >= now - window / 2 {
                sim.update_session(id, SESSION_STATES[rng.usize(0..SESSION_STATES.len())]);
            }
        }
        if rng.u8(0..6) == 0 {
            sim.expire_tokens();
        }
        if rng.u8(0..5) == 0 {
            relay.restart().await;
            src = source(&sim, &settings);
        }
        let step = Duration::minutes(rng.i64(0..=15));
        if rng.bool() || since_catch_up + step > window / 4 {
            for id in begins.keys() {
                let (_, updated) = sim.session_state(id).ok_or("a session vanished")?;
                want_sessions.insert(format!("{id}@{updated}"));
            }
            relay.catch_up(&src).await?;
            since_catch_up = Duration::zero();
        }
        since_catch_up += step;
        now += step;
        sim.set_now(now);
    }
    for id in begins.keys() {
        let (_, updated) = sim.session_state(id).ok_or("a session vanished")?;
        want_sessions.insert(format!("{id}@{updated}"));
    }
    relay.catch_up(&src).await?;
    // Every file event is searchable 15 minutes on; then a quiet stretch.
    now += Duration::minutes(15);
    sim.set_now(now);
    for _ in 0..2 {
        relay.catch_up(&src).await?;
    }
    let rows = relay.delivered().await;
    let of = |stream: &str| -> Vec<String> {
        rows.iter()
            .filter(|r| r.stream == stream)
            .map(|r| r.id.clone())
            .collect()
    };
    let want_sessions: Vec<String> = want_sessions.into_iter().collect();
    let failures: Vec<String> = [
        ("alerts", harness::exactly_once(&of("alerts"), &want_alerts)),
        (
            "file_events",
            harness::exactly_once(&of("file_events"), &want_events),
        ),
        (
            "sessions",
            harness::exactly_once(&of("sessions"), &want_sessions),
        ),
    ]
    .into_iter()
    .filter_map(|(stream, checked)| checked.err().map(|e| format!("{stream}: {e}")))
    .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code42_file_events_alerts_and_sessions_timeline() {
    harness::for_each_seed("code42", timeline).await;
}
