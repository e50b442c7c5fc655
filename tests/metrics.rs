//! The metrics and health endpoint of a real daemon against the Sophos simulator into a file sink,
//! `secrelay health`, and JSON log lines.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use secrelay::metrics::probe_health;
use secrelay::settings::Settings;
use secrelay::simulate::sophos::{Identity, SophosSim};

const BIN: &str = env!("CARGO_BIN_EXE_secrelay");

/// A loopback port free right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn settings(sim: &SophosSim, dir: &Path, port: u16, unhealthy_after: f64) -> Settings {
    let metrics = format!(
        "[metrics]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\nunhealthy_after_secs = {unhealthy_after:?}\n"
    );
    Settings::from_toml(&config_text(sim, dir, "", &metrics)).expect("valid test config")
}

/// `GET path` on the endpoint: status and body.
async fn get(port: u16, path: &str) -> (u16, String) {
    let answer = probe_health(&format!("http://127.0.0.1:{port}{path}"))
        .await
        .expect("the endpoint answers");
    (answer.status, answer.body)
}

/// Sends `request` as it is and reads the whole answer.
async fn raw(port: u16, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    // The server may answer and close before reading all of an oversized request.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Scrapes until `done` holds for the text, or fails after `limit`.
async fn scrape_until(port: u16, limit: Duration, done: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        if let Ok(answer) = probe_health(&format!("http://127.0.0.1:{port}/metrics")).await {
            if answer.status == 200 && done(&answer.body) {
                return answer.body;
            }
            if start.elapsed() > limit {
                panic!("not reached within {limit:?}:\n{}", answer.body);
            }
        } else if start.elapsed() > limit {
            panic!("endpoint never answered");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the sample line that starts with `series` followed by a space.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .expect("a number")
}

#[tokio::test]
async fn metrics_after_a_run_count_every_event_once() {
    let sim = finished_sim(Identity::Tenant, 1, 400).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut daemon = Daemon::start(&settings(&sim, dir.path(), port, 900.0));
    let all = expected(&sim, &["events", "alerts"]).len();
    let text = scrape_until(port, Duration::from_secs(20), |t| {
        t.contains(&format!(
            "secrelay_sink_events_delivered_total{{sink=\"out\"}} {all}\n"
        )) && t.contains("secrelay_outbox_rows 0\n")
    })
    .await;
    daemon.assert_running().await;
    let tenant = sim.tenant_ids()[0].clone();
    for stream in ["events", "alerts"] {
        let labels = format!("source=\"sophos_t\",stream=\"{stream}\",tenant=\"{tenant}\"");
        let want = expected(&sim, &[stream]).len();
        let new = value(
            &text,
            &format!("secrelay_source_events_new_total{{{labels}}}"),
        );
        assert_eq!(new as usize, want, "{stream}");
        let polled = value(
            &text,
            &format!("secrelay_source_events_polled_total{{{labels}}}"),
        );
        let dropped = value(
            &text,
            &format!("secrelay_source_duplicates_dropped_total{{{labels}}}"),
        );
        assert_eq!(
            polled,
            new + dropped,
            "every fetched event is new or a dropped repeat"
        );
        for kind in ["rate_limited", "unavailable", "auth", "malformed"] {
            let errors = format!("secrelay_source_poll_errors_total{{{labels},kind=\"{kind}\"}}");
            assert_eq!(value(&text, &errors), 0.0);
        }
        // Caught up: the vendor said nothing more is waiting.
        assert_eq!(
            value(
                &text,
                &format!("secrelay_source_cursor_lag_seconds{{{labels}}}")
            ),
            0.0
        );
        let polls = value(
            &text,
            &format!("secrelay_source_api_latency_seconds_count{{{labels}}}"),
        );
        let inf = value(
            &text,
            &format!("secrelay_source_api_latency_seconds_bucket{{{labels},le=\"+Inf\"}}"),
        );
        assert!(polls >= 1.0 && polls == inf, "{polls} {inf}");
        let last = value(
            &text,
            &format!("secrelay_source_last_success_timestamp_seconds{{{labels}}}"),
        );
        assert!((chrono::Utc::now().timestamp() as f64 - last).abs() < 30.0);
    }
    for line in [
        "# TYPE secrelay_sink_events_delivered_total counter",
        "# TYPE secrelay_source_api_latency_seconds histogram",
        "# TYPE secrelay_sink_backlog_bytes gauge",
        "secrelay_sink_backlog_events{sink=\"out\"} 0",
        "secrelay_sink_backlog_bytes{sink=\"out\"} 0",
        "secrelay_sink_dead_letters_total{sink=\"out\"} 0",
        "secrelay_sink_retries_total{sink=\"out\"} 0",
        "secrelay_outbox_rows 0",
        "secrelay_outbox_bytes 0",
        "secrelay_healthy 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    assert!(value(&text, "secrelay_sink_batches_total{sink=\"out\"}") >= 1.0);
    assert_eq!(get(port, "/health").await, (200, "ok\n".to_string()));
    assert_eq!(get(port, "/nothing").await.0, 404);
    // The responder takes GET (and HEAD) only, and a bounded request head.
    assert!(raw(port, b"POST /metrics HTTP/1.1\r\n\r\n")
        .await
        .starts_with("HTTP/1.1 405 "));
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    assert!(raw(port, huge.as_bytes())
        .await
        .starts_with("HTTP/1.1 431 "));
    let head = raw(port, b"HEAD /health HTTP/1.1\r\n\r\n").await;
    assert!(
        head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"),
        "{head}"
    );

    // `secrelay health` asks the same endpoint: exit 0 now, 1 once the daemon is gone.
    let url = format!("http://127.0.0.1:{port}/health");
    let ok = tokio::process::Command::new(BIN)
        .args(["health", "--url", &url])
        .output()
        .await
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "ok\n");
    let summary = daemon.stop().await;
    assert_eq!(summary.sinks[0].delivered as usize, all);
    let gone = tokio::process::Command::new(BIN)
        .args(["health", "--url", &url])
        .output()
        .await
        .unwrap();
    assert_eq!(gone.status.code(), Some(1), "{gone:?}");
}

#[tokio::test]
async fn health_is_503_while_a_sink_fails_past_the_threshold_and_200_once_it_delivers() {
    let sim = finished_sim(Identity::Tenant, 1, 100).await;
    let dir = tempfile::tempdir().unwrap();
    // The file sink's directory is a file: every delivery fails.
    std::fs::write(dir.path().join("out"), "not a directory").unwrap();
    let port = free_port();
    let daemon = Daemon::start(&settings(&sim, dir.path(), port, 1.0));
    let start = Instant::now();
    let body = loop {
        if let Ok(answer) = probe_health(&format!("http://127.0.0.1:{port}/health")).await {
            if answer.status == 503 {
                break answer.body;
            }
            assert_eq!(answer.body, "ok\n");
        }
        assert!(start.elapsed() < Duration::from_secs(15), "never unhealthy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        body.starts_with("sink out: failing for ") && body.ends_with("s with no delivery\n"),
        "{body:?}"
    );
    let text = scrape_until(port, Duration::from_secs(5), |_| true).await;
    assert!(text.lines().any(|l| l == "secrelay_healthy 0"), "{text}");
    assert!(value(&text, "secrelay_sink_retries_total{sink=\"out\"}") >= 1.0);
    assert!(value(&text, "secrelay_sink_backlog_events{sink=\"out\"}") > 0.0);

    // The directory is fixed: the next retry delivers and health is back.
    std::fs::remove_file(dir.path().join("out")).unwrap();
    std::fs::create_dir(dir.path().join("out")).unwrap();
    let start = Instant::now();
    loop {
        let (status, body) = get(port, "/health").await;
        if status == 200 {
            assert_eq!(body, "ok\n");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "never healthy again: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let summary = daemon.stop().await;
    assert_eq!(
        summary.sinks[0].delivered as usize,
        expected(&sim, &["events", "alerts"]).len()
    );
}

#[tokio::test]
async fn json_log_lines_parse_and_name_their_source_or_sink() {
    let sim = finished_sim(Identity::Tenant, 1, 50).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("secrelay.toml");
    std::fs::write(
        &config,
        config_text(&sim, dir.path(), "", "[log]\nformat = \"json\"\n"),
    )
    .unwrap();
    let out = tokio::process::Command::new(BIN)
        .args(["--config", config.to_str().unwrap(), "backfill"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!lines.is_empty());
    let span = |l: &serde_json::Value, key: &str| l["span"][key].as_str().map(str::to_string);
    // The partition's lines carry source, stream and tenant; the sink's carry its name.
    let polling = lines
        .iter()
        .find(|l| l["message"] == "polling")
        .expect("a `polling` line");
    assert_eq!(span(polling, "source").as_deref(), Some("sophos_t"));
    let finished = lines
        .iter()
        .find(|l| l["message"] == "sink finished")
        .expect("a `sink finished` line");
    assert_eq!(span(finished, "sink").as_deref(), Some("out"));
    let all = expected(&sim, &["events", "alerts"]).len();
    assert_eq!(finished["delivered"], serde_json::json!(all));
    assert!(!stderr.contains("sim-secret"));
}
