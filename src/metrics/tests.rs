//! The exposition format and the health verdict, without a pipeline.

use std::time::Duration;

use super::*;

#[test]
fn renders_counters_histogram_and_store_figures_with_help_and_type() {
    let metrics = Metrics::default();
    let p = metrics.partition("edr", "events", "t\"1");
    p.polled.fetch_add(5, Ordering::Relaxed);
    p.new.fetch_add(4, Ordering::Relaxed);
    p.duplicates.fetch_add(1, Ordering::Relaxed);
    p.record_error("rate_limited");
    p.observe_latency(Duration::from_millis(70));
    p.observe_latency(Duration::from_secs(100));
    p.record_success(None, false);
    let s = metrics.sink("out");
    s.record_accepted(4, 1);
    s.record_failure();
    let figures = StoreFigures {
        outbox_rows: 3,
        outbox_bytes: 300,
        backlogs: [("out".to_string(), (2, 200))].into(),
    };
    let text = metrics.render(&figures, &metrics.health(Duration::from_secs(900)));
    let labels = r#"source="edr",stream="events",tenant="t\"1""#;
    for line in [
        "# HELP secrelay_source_events_polled_total Events in the pages fetched from the vendor, before dedup.".to_string(),
        "# TYPE secrelay_source_events_polled_total counter".into(),
        format!("secrelay_source_events_polled_total{{{labels}}} 5"),
        format!("secrelay_source_events_new_total{{{labels}}} 4"),
        format!("secrelay_source_duplicates_dropped_total{{{labels}}} 1"),
        format!("secrelay_source_rate_limit_waits_total{{{labels}}} 1"),
        format!("secrelay_source_poll_errors_total{{{labels},kind=\"rate_limited\"}} 1"),
        format!("secrelay_source_poll_errors_total{{{labels},kind=\"auth\"}} 0"),
        "# TYPE secrelay_source_api_latency_seconds histogram".into(),
        format!("secrelay_source_api_latency_seconds_bucket{{{labels},le=\"0.05\"}} 0"),
        format!("secrelay_source_api_latency_seconds_bucket{{{labels},le=\"0.1\"}} 1"),
        format!("secrelay_source_api_latency_seconds_bucket{{{labels},le=\"60\"}} 1"),
        format!("secrelay_source_api_latency_seconds_bucket{{{labels},le=\"+Inf\"}} 2"),
        format!("secrelay_source_api_latency_seconds_sum{{{labels}}} 100.07"),
        format!("secrelay_source_api_latency_seconds_count{{{labels}}} 2"),
        format!("secrelay_source_cursor_lag_seconds{{{labels}}} 0"),
        "secrelay_sink_events_delivered_total{sink=\"out\"} 4".into(),
        "secrelay_sink_dead_letters_total{sink=\"out\"} 1".into(),
        "secrelay_sink_batches_total{sink=\"out\"} 1".into(),
        "secrelay_sink_retries_total{sink=\"out\"} 1".into(),
        "secrelay_sink_backlog_events{sink=\"out\"} 2".into(),
        "secrelay_sink_backlog_bytes{sink=\"out\"} 200".into(),
        "secrelay_outbox_rows 3".into(),
        "secrelay_outbox_bytes 300".into(),
        "secrelay_healthy 1".into(),
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
    // Every sample line belongs to a family announced with HELP and TYPE.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| text.contains(&format!("# TYPE {f} histogram")))
            .unwrap_or(name);
        assert!(text.contains(&format!("# HELP {family} ")), "{line}");
    }
}

#[test]
fn failing_past_the_threshold_is_unhealthy_and_a_success_heals() {
    let metrics = Metrics::default();
    let sink = metrics.sink("siem");
    sink.record_failure();
    assert!(
        metrics.health(Duration::from_secs(60)).ok(),
        "not yet past the threshold"
    );
    std::thread::sleep(Duration::from_millis(30));
    let health = metrics.health(Duration::from_millis(10));
    assert_eq!(health.reasons.len(), 1, "{health:?}");
    assert!(
        health.reasons[0].starts_with("sink siem: failing for"),
        "{health:?}"
    );
    sink.record_accepted(1, 0);
    assert!(metrics.health(Duration::from_millis(10)).ok());

    let p = metrics.partition("edr", "alerts", "");
    p.record_error("auth");
    std::thread::sleep(Duration::from_millis(30));
    let health = metrics.health(Duration::from_millis(10));
    assert!(
        health.reasons[0].starts_with("source edr stream alerts: failing"),
        "{health:?}"
    );
    p.record_success(None, true);
    assert!(metrics.health(Duration::from_millis(10)).ok());
}
