//! The iTop sink through the whole pipeline: Code42 / Incydr sessions (alerts whose state changes)
//! from the Code42 simulator, delivered by the real delivery loop to the iTop simulator over real
//! HTTP, with restarts between the changes; and the failures an operator meets first (a rule
//! without `org_id`, a bad token) surfacing iTop's own message without losing a record.

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use secrelay::app::{self, BackfillOptions};
use secrelay::settings::Settings;
use secrelay::simulate::code42::{Code42Sim, Code42SimConfig};
use secrelay::simulate::itop::{ItopSim, ItopSimConfig, ItopTicket};
use secrelay::store::{Access, Store};
use tokio_util::sync::CancellationToken;

/// The fields every ticket gets, as a SOC would configure them: organization by OQL, caller by
/// criteria, monitoring origin.
const FIELDS: &str = r#"fields = { org_id = "SELECT Organization WHERE name = \"SOC\"", caller_id = { name = "Monitoring", first_name = "SIEM" }, impact = "2", urgency = "2" }"#;

/// Settings: the Code42 source's sessions routed to the file sink `out` and the iTop sink
/// `tickets`, whose keys are `itop_keys` (auth and fields) plus assign, resolve and one rule.
fn config(c42: &Code42Sim, itop: &ItopSim, dir: &std::path::Path, itop_keys: &str) -> Settings {
    let url = c42.url();
    let itop_url = itop.url();
    common::settings_with(
        dir,
        &format!(
            "[sources.c42]\ntype = \"code42\"\nclient_id = \"key-42\"\nclient_secret = \"sim-code42-secret\"\n\
             api_url = {url:?}\nconsole_url = {url:?}\ninterval_secs = 0.3\ninitial_lookback_hours = 6\n\
             streams = [\"sessions\"]\nsession_page_size = 2\nsinks = [\"out\", \"tickets\"]\n\
             [sinks.tickets]\ntype = \"itop\"\nurl = {itop_url:?}\n{itop_keys}\n\
             [sinks.tickets.assign]\nstimulus = \"ev_assign\"\nfields = {{ team_id = 1, agent_id = 4 }}\n\
             [sinks.tickets.resolve]\nstimulus = \"ev_resolve\"\nfields = {{ service_id = 1, resolution_code = \"assistance\" }}\n\
             [[sinks.tickets.rules]]\nstreams = [\"sessions\"]\n"
        ),
    )
}

fn password_login() -> String {
    format!("user = \"secrelay\"\npassword = \"itop-pw\"\n{FIELDS}")
}

async fn backfill(settings: &Settings) -> app::RunSummary {
    app::backfill(
        settings,
        &BackfillOptions::default(),
        CancellationToken::new(),
    )
    .await
    .expect("backfill runs")
}

/// Waits (bounded) until `done` holds for the simulator's tickets.
async fn until(itop: &ItopSim, what: &str, done: impl Fn(&[ItopTicket]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(&itop.tickets()) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:#?}",
            itop.tickets()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn with_title<'a>(tickets: &'a [ItopTicket], session: &str) -> Vec<&'a ItopTicket> {
    tickets
        .iter()
        .filter(|t| t.fields["description"].contains(&format!("Alert id: {session} ")))
        .collect()
}

fn creates(itop: &ItopSim) -> usize {
    itop.journal()
        .iter()
        .filter(|x| x.operation.as_deref() == Some("core/create") && x.code == 0)
        .count()
}

#[tokio::test]
async fn an_alert_that_changes_state_three_times_opens_one_ticket_logs_twice_and_resolves_once() {
    let c42 = Code42Sim::start(Code42SimConfig::default()).await.unwrap();
    let itop = ItopSim::start(ItopSimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = config(&c42, &itop, dir.path(), &password_login());
    let changing = c42.add_session(Utc::now() - chrono::Duration::hours(3));
    let quiet = c42.add_session(Utc::now() - chrono::Duration::hours(2));

    // Catch up: one ticket per session, both new.
    let daemon = common::Daemon::start(&s);
    until(&itop, "two tickets", |t| t.len() == 2).await;
    // First change while the daemon runs.
    c42.update_session(&changing, "IN_PROGRESS").unwrap();
    until(&itop, "the first log entry", |t| {
        with_title(t, &changing)
            .first()
            .is_some_and(|t| t.public_log.len() == 1)
    })
    .await;
    // Several quiet polls, then a restart; the second change comes while it is down.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    daemon.stop().await;
    c42.update_session(&changing, "OPEN_NEW_DATA").unwrap();
    let daemon = common::Daemon::start(&s);
    until(&itop, "the second log entry", |t| {
        with_title(t, &changing)
            .first()
            .is_some_and(|t| t.public_log.len() == 2)
    })
    .await;
    daemon.stop().await;
    // Another restart, then the alert is closed at the vendor.
    let mut daemon = common::Daemon::start(&s);
    tokio::time::sleep(Duration::from_millis(800)).await;
    daemon.assert_running().await;
    c42.update_session(&changing, "CLOSED_TP").unwrap();
    until(&itop, "the resolve", |t| {
        with_title(t, &changing)
            .first()
            .is_some_and(|t| t.status == "resolved")
    })
    .await;
    // Quiet polls after the resolve change nothing.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    daemon.stop().await;
    // A backfill over the same window afterwards opens nothing again either.
    assert!(backfill(&s).await.complete());

    let tickets = itop.tickets();
    assert_eq!(tickets.len(), 2, "{tickets:#?}");
    assert_eq!(creates(&itop), 2, "one core/create per session, ever");
    let t = with_title(&tickets, &changing)[0];
    assert_eq!(t.class, "Incident");
    assert_eq!(t.status, "resolved");
    assert_eq!(t.stimuli, ["ev_assign", "ev_resolve"], "resolved once");
    let logged: Vec<&str> = t.public_log.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(logged.len(), 2, "{logged:?}");
    assert!(logged[0].contains("reports state IN_PROGRESS: 3 files to removable media"));
    assert!(logged[1].contains("reports state OPEN_NEW_DATA"));
    assert!(t.public_log.iter().all(|e| e.format == "text"));
    assert_eq!(
        t.fields["title"],
        "Code42 Incydr: 3 files to removable media — engineer@example.com"
    );
    assert_eq!(t.fields["origin"], "monitoring");
    assert_eq!(t.fields["org_id"], "2");
    assert_eq!(t.fields["caller_id"], "1");
    assert_eq!(t.fields["service_id"], "1");
    assert!(t.fields["solution"].contains("state CLOSED_TP"), "{t:?}");
    assert!(t.fields["description"].contains("Rules: USB exfiltration"));
    // Every change carries the change-tracking comment naming the alert.
    assert_eq!(t.comments.len(), 5, "create, 2 updates, 2 stimuli");
    assert!(t
        .comments
        .iter()
        .all(|c| c.starts_with(&format!("secrelay: Code42 Incydr alert {changing} "))));
    let q = with_title(&tickets, &quiet)[0];
    assert_eq!((q.status.as_str(), q.public_log.len()), ("new", 0));

    // The store knows which alert follows which ticket.
    let store = Store::open(&s.store.path, Access::Reader).await.unwrap();
    let rows = store.tickets(Some(&changing)).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (
            rows[0].ticket_ref.as_str(),
            rows[0].resolved,
            rows[0].log_entries
        ),
        (t.reference.as_str(), true, 2)
    );
    assert_eq!(rows[0].vendor_state, "CLOSED_TP");
    store.close().await;
}

#[tokio::test]
async fn a_missing_org_id_and_a_bad_token_show_itops_message_and_lose_nothing() {
    let c42 = Code42Sim::start(Code42SimConfig::default()).await.unwrap();
    let itop = ItopSim::start(ItopSimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    for i in 0..3 {
        c42.add_session(Utc::now() - chrono::Duration::minutes(120 - i));
    }

    // A bad token: iTop answers HTTP 200 with code 1. The sink is refused, nothing is lost.
    let bad_token = config(
        &c42,
        &itop,
        dir.path(),
        &format!("auth = \"token\"\ntoken = \"not-the-token\"\n{FIELDS}"),
    );
    let summary = backfill(&bad_token).await;
    let sink = summary.sinks.iter().find(|s| s.sink == "tickets").unwrap();
    // The refused sink ends at once; the source may still be committing its last page then.
    assert_eq!(sink.delivered, 0, "{summary:?}");
    assert!(
        sink.error
            .as_deref()
            .is_some_and(|e| e.contains("iTop code 1: ") && e.contains("Invalid login")),
        "{sink:?}"
    );
    let state = app::state(&bad_token).await.unwrap();
    let tickets_state = state
        .sinks
        .iter()
        .find(|s| s.state.sink == "tickets")
        .unwrap();
    assert!(tickets_state.refused, "{tickets_state:?}");
    assert_eq!(tickets_state.backlog, 3, "every session waits for the sink");
    assert!(tickets_state
        .state
        .last_error
        .as_deref()
        .unwrap()
        .contains("Invalid login"));
    assert!(!format!("{state:?}").contains("not-the-token"));
    assert!(itop.tickets().is_empty());

    // A rule without org_id: iTop refuses each create with code 100; each record becomes a dead
    // letter carrying iTop's message, shown in `state`.
    let no_org = config(
        &c42,
        &itop,
        dir.path(),
        "auth = \"token\"\ntoken = \"itop-token-0001\"\n\
         fields = { caller_id = { name = \"Monitoring\", first_name = \"SIEM\" } }",
    );
    let summary = backfill(&no_org).await;
    let sink = summary.sinks.iter().find(|s| s.sink == "tickets").unwrap();
    assert_eq!((sink.dead_letters, sink.backlog), (3, 0), "{summary:?}");
    let letters = app::dead_letters(&no_org, Some("tickets")).await.unwrap();
    assert_eq!(letters.len(), 3);
    assert!(letters.iter().all(|l| l.reason.contains(
        "iTop code 100: Error: Unexpected value for attribute 'Organization' (org_id) : Null not allowed"
    )), "{letters:?}");
    let state = app::state(&no_org).await.unwrap();
    let last = state
        .sinks
        .iter()
        .find(|s| s.state.sink == "tickets")
        .and_then(|s| s.state.last_error.clone())
        .unwrap();
    assert!(
        last.contains("3 record(s) rejected") && last.contains("(org_id) : Null not allowed"),
        "{last}"
    );
    assert!(itop.tickets().is_empty());

    // Fixed: the dead letters go again, and every session gets its ticket, once.
    let fixed = config(
        &c42,
        &itop,
        dir.path(),
        &format!("auth = \"token\"\ntoken = \"itop-token-0001\"\n{FIELDS}"),
    );
    let requeued = app::retry_dead_letters(&fixed, Some("tickets"))
        .await
        .unwrap();
    assert_eq!(requeued[0].records, 3);
    assert!(backfill(&fixed).await.complete());
    assert!(backfill(&fixed).await.complete());
    let tickets = itop.tickets();
    assert_eq!(tickets.len(), 3, "{tickets:#?}");
    assert!(tickets.iter().all(|t| t.fields["org_id"] == "2"));
    assert!(app::dead_letters(&fixed, Some("tickets"))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn an_itop_that_fails_mid_batch_gets_every_change_once() {
    use std::sync::atomic::Ordering;
    let c42 = Code42Sim::start(Code42SimConfig::default()).await.unwrap();
    let itop = ItopSim::start(ItopSimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = config(&c42, &itop, dir.path(), &password_login());
    let sessions: Vec<String> = (0..5)
        .map(|i| c42.add_session(Utc::now() - chrono::Duration::minutes(120 - i)))
        .collect();
    // While tickets are opened, a proxy answers one request with a 503 page and one connection is
    // dropped without an answer; while they are logged to, two more connections are dropped.
    let daemon = common::Daemon::start(&s);
    until(&itop, "the first two tickets", |t| t.len() >= 2).await;
    itop.faults().http_errors.store(1, Ordering::SeqCst);
    itop.faults().drop_connections.store(1, Ordering::SeqCst);
    until(&itop, "five tickets", |t| t.len() == 5).await;
    for id in &sessions {
        c42.update_session(id, "IN_PROGRESS").unwrap();
    }
    itop.faults().drop_connections.store(2, Ordering::SeqCst);
    until(&itop, "a log entry on every ticket", |t| {
        t.iter().all(|t| !t.public_log.is_empty())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    daemon.stop().await;

    let tickets = itop.tickets();
    assert_eq!(tickets.len(), 5, "{tickets:#?}");
    assert_eq!(creates(&itop), 5);
    for id in &sessions {
        let t = with_title(&tickets, id);
        assert_eq!(t.len(), 1, "{id}");
        assert_eq!(t[0].public_log.len(), 1, "{id}: {:?}", t[0].public_log);
    }
    assert!(
        itop.journal().iter().any(|x| x.code == 503),
        "the 503 was met"
    );
}

#[tokio::test]
async fn the_incidents_commands_list_comment_and_resolve_what_the_sink_opened() {
    use secrelay::app::incidents::{self, IncidentError};
    let c42 = Code42Sim::start(Code42SimConfig::default()).await.unwrap();
    let itop = ItopSim::start(ItopSimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The same login as HTTP Basic (the other tests use form fields and a token).
    let s = config(
        &c42,
        &itop,
        dir.path(),
        &format!("auth = \"basic\"\n{}", password_login()),
    );
    let first = c42.add_session(Utc::now() - chrono::Duration::hours(3));
    let second = c42.add_session(Utc::now() - chrono::Duration::hours(2));
    assert!(backfill(&s).await.complete());

    let all = incidents::list(&s, false).await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|i| i.itop_status.as_deref() == Some("new")));
    let by_alert = incidents::show(&s, &first).await.unwrap();
    let reference = by_alert.ticket.ticket_ref.clone();
    assert!(reference.starts_with("I-"));
    let by_ref = incidents::show(&s, &reference).await.unwrap();
    assert_eq!(by_ref.ticket.alert_key, first);

    incidents::comment(&s, &reference, "Called the user; laptop collected.")
        .await
        .unwrap();
    let t = itop.ticket(&reference).unwrap();
    assert_eq!(t.public_log.len(), 1);
    assert_eq!(
        t.public_log[0].message,
        "Called the user; laptop collected."
    );
    assert_eq!(t.public_log[0].format, "text");

    let resolved = incidents::resolve(&s, &first).await.unwrap();
    assert_eq!(resolved.itop_status.as_deref(), Some("resolved"));
    assert!(resolved.ticket.resolved);
    assert_eq!(resolved.ticket.log_entries, 1);
    // Resolving again does nothing in iTop.
    incidents::resolve(&s, &reference).await.unwrap();
    assert_eq!(
        itop.ticket(&reference).unwrap().stimuli,
        ["ev_assign", "ev_resolve"]
    );
    let open = incidents::list(&s, true).await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].ticket.alert_key, second);

    // The vendor closes the alert later: the sink does not resolve it a second time; it logs.
    c42.update_session(&first, "CLOSED_FP").unwrap();
    assert!(backfill(&s).await.complete());
    let t = itop.ticket(&reference).unwrap();
    assert_eq!(t.stimuli, ["ev_assign", "ev_resolve"]);
    assert_eq!(t.public_log.len(), 2);
    assert!(t.public_log[1].message.contains("reports state CLOSED_FP"));

    assert!(matches!(
        incidents::show(&s, "no-such-alert").await,
        Err(IncidentError::NotFound(_))
    ));
}

#[tokio::test]
async fn the_demo_can_turn_the_itop_sink_on() {
    use secrelay::demo::{self, DemoOptions};
    let dir = tempfile::tempdir().unwrap();
    let options = DemoOptions {
        seconds: Some(8.0),
        out: dir.path().to_path_buf(),
        itop: true,
        metrics_listen: None,
    };
    let summary = demo::run(&options, CancellationToken::new()).await.unwrap();
    let itop = summary.sinks.iter().find(|s| s.sink == "itop").unwrap();
    assert!(itop.error.is_none() && itop.dead_letters == 0, "{itop:?}");
    let store = Store::open(&dir.path().join("state.db"), Access::Reader)
        .await
        .unwrap();
    let tickets = store.tickets(None).await.unwrap();
    store.close().await;
    let sessions = tickets.iter().filter(|t| t.stream == "sessions").count();
    assert_eq!(sessions, 5, "{tickets:#?}");
    assert!(
        tickets.iter().any(|t| t.stream == "alerts"),
        "high alerts too"
    );
}

#[tokio::test]
async fn a_create_whose_answer_is_lost_does_not_open_a_second_ticket() {
    use std::sync::atomic::Ordering;
    let c42 = Code42Sim::start(Code42SimConfig::default()).await.unwrap();
    let itop = ItopSim::start(ItopSimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = config(&c42, &itop, dir.path(), &password_login());
    let sessions: Vec<String> = (0..3)
        .map(|i| c42.add_session(Utc::now() - chrono::Duration::minutes(120 - i)))
        .collect();
    // iTop opens the first two tickets, but their answers never reach secrelay (the second
    // request after the check is the first create: the check's list_operations comes first).
    itop.faults().lose_answers.store(2, Ordering::SeqCst);
    assert!(backfill(&s).await.complete());
    c42.update_session(&sessions[0], "IN_PROGRESS").unwrap();
    assert!(backfill(&s).await.complete());

    let tickets = itop.tickets();
    assert_eq!(tickets.len(), 3, "one ticket per session: {tickets:#?}");
    assert_eq!(creates(&itop), 3);
    for id in &sessions {
        assert_eq!(with_title(&tickets, id).len(), 1, "{id}");
    }
    // The found ticket is followed like any other: the change is logged to it.
    assert_eq!(with_title(&tickets, &sessions[0])[0].public_log.len(), 1);
    let store = Store::open(&s.store.path, Access::Reader).await.unwrap();
    let rows = store.tickets(None).await.unwrap();
    store.close().await;
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| !r.ticket_ref.is_empty()));
}

#[tokio::test]
async fn a_custom_class_a_title_template_and_a_field_match_shape_the_ticket() {
    use secrelay::simulate::itop::ItopCustomClass;
    let c42 = Code42Sim::start(Code42SimConfig::default()).await.unwrap();
    let itop = ItopSim::start(ItopSimConfig {
        custom_classes: vec![ItopCustomClass {
            name: "SIEMIncident".into(),
            ref_prefix: "S-".into(),
        }],
        ..ItopSimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = config(
        &c42,
        &itop,
        dir.path(),
        &format!(
            "{}\n\
             [[sinks.tickets.rules]]\nstreams = [\"sessions\"]\nmatch = {{ \"type\" = \"STANDARD\" }}\n\
             class = \"SIEMIncident\"\n\
             title = \"[{{vendor}}] {{record.actorName}}: {{name}} (score rule {{rules}})\"\n\
             fields = {{ urgency = \"1\" }}",
            password_login()
        ),
    );
    c42.add_session(Utc::now() - chrono::Duration::hours(2));
    let begin = (Utc::now() - chrono::Duration::minutes(90)).timestamp_millis();
    c42.add_raw_session(serde_json::json!({
        "sessionId": "session-departing", "tenantId": Code42SimConfig::default().tenant_id,
        "actorName": "leaver@example.com", "type": "DEPARTING",
        "beginTime": begin, "endTime": begin + 600_000, "lastUpdated": begin + 600_000,
        "exfiltrationSummary": "Cloud sync before leaving",
        "scores": [{"score": 9, "severity": 3}],
        "states": [{"state": "OPEN"}],
        "triggeredAlerts": [],
    }));
    assert!(backfill(&s).await.complete());

    let tickets = itop.tickets();
    // The configured rule comes before the catch-all one of `config`, so STANDARD sessions are
    // SIEM incidents with the template; the DEPARTING one falls to the catch-all rule.
    assert_eq!(tickets.len(), 2, "{tickets:#?}");
    let custom = tickets.iter().find(|t| t.class == "SIEMIncident").unwrap();
    assert!(custom.reference.starts_with("S-"), "{custom:?}");
    assert_eq!(
        custom.fields["title"],
        "[Code42 Incydr] engineer@example.com: 3 files to removable media (score rule USB exfiltration)"
    );
    assert_eq!(custom.fields["urgency"], "1");
    let other = tickets.iter().find(|t| t.class == "Incident").unwrap();
    assert!(other.fields["description"].contains("session-departing"));
}
