//! Unit tests of loading, layering and validating settings.

use super::*;

const MINIMAL: &str = r#"
    [sinks.archive]
    type = "file"
    path = "/tmp/x.ndjson"
    [sources.sophos_eu]
    type = "sophos"
    client_id = "id"
    client_secret = "PLANTED-SECRET"
    sinks = ["archive"]
"#;

#[test]
fn a_duration_that_is_negative_not_a_number_or_zero_where_zero_spins_names_its_key() {
    for (extra, key, why) in [
        (
            "[scheduler]\nshutdown_grace_secs = -1",
            "scheduler.shutdown_grace_secs",
            "negative",
        ),
        (
            "[scheduler]\nbackoff_initial_secs = nan",
            "scheduler.backoff_initial_secs",
            "finite",
        ),
        ("[http]\ntimeout_secs = inf", "http.timeout_secs", "finite"),
        (
            "[http]\nconnect_timeout_secs = 0",
            "http.connect_timeout_secs",
            "above 0",
        ),
        (
            "[backfill]\ndrain_timeout_secs = 1e12",
            "backfill.drain_timeout_secs",
            "at most",
        ),
        (
            "[scheduler]\nbackoff_initial_secs = 9\nbackoff_max_secs = 3",
            "scheduler.backoff_max_secs",
            "below",
        ),
        (
            "[http]\nmax_response_bytes = 1000",
            "http.max_response_bytes",
            "at least",
        ),
    ] {
        let err = Settings::from_toml(&format!("{MINIMAL}\n{extra}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key) && err.contains(why), "{extra}: {err}");
    }
    let zero_interval = MINIMAL.replace(
        "sinks = [\"archive\"]",
        "sinks = [\"archive\"]\ninterval_secs = 0",
    );
    let err = Settings::from_toml(&zero_interval).unwrap_err().to_string();
    assert!(err.contains("sources.sophos_eu.interval_secs"), "{err}");
    // Zero where it means "none" is fine.
    let ok = format!("{MINIMAL}\n[scheduler]\njitter_secs = 0\nshutdown_grace_secs = 0");
    assert!(Settings::from_toml(&ok).is_ok());
}

#[test]
fn environment_values_stay_text_until_a_key_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secrelay.toml");
    std::fs::write(
        &file,
        MINIMAL.replace("client_secret = \"PLANTED-SECRET\"\n", ""),
    )
    .unwrap();
    let env = HashMap::from([
        (
            "SECRELAY__SOURCES__SOPHOS_EU__CLIENT_SECRET".to_string(),
            "007".to_string(),
        ),
        (
            "SECRELAY__SOURCES__SOPHOS_EU__PAGE_SIZE".to_string(),
            "50".to_string(),
        ),
        (
            "SECRELAY__SCHEDULER__JITTER_SECS".to_string(),
            "0.5".to_string(),
        ),
        (
            "SECRELAY__SOURCES__SOPHOS_EU__ENABLED".to_string(),
            "false".to_string(),
        ),
    ]);
    let s = Settings::load_with_env(Some(&file), Some(env)).unwrap();
    let SourceSettings::Sophos(sophos) = &s.sources["sophos_eu"] else {
        panic!("a sophos source")
    };
    assert_eq!(sophos.client_secret.as_ref().unwrap().expose(), "007");
    assert_eq!(sophos.page_size, 50);
    assert!(!sophos.enabled);
    assert_eq!(s.scheduler.jitter_secs, 0.5);
    for (value, typed) in [
        ("50", true),
        ("0.5", true),
        ("true", true),
        ("007", false),
        ("1e3", false),
        ("+5", false),
        ("x1", false),
    ] {
        assert_eq!(reads_back_typed(value), typed, "{value}");
    }
}

#[test]
fn defaults_fill_every_section() {
    let s = Settings::from_toml(MINIMAL).unwrap();
    assert_eq!(s.outbox.max_bytes, 256 * 1024 * 1024);
    assert_eq!(s.store.seen_retention_hours, 168);
    let SourceSettings::Sophos(sophos) = &s.sources["sophos_eu"] else {
        panic!("sophos settings")
    };
    assert_eq!(sophos.page_size, 1000);
    assert_eq!(
        sophos.streams,
        vec![SophosStream::Events, SophosStream::Alerts]
    );
}

#[test]
fn unknown_key_in_a_source_names_its_path() {
    let text = MINIMAL.replace(
        "client_id = \"id\"",
        "client_id = \"id\"\nintervall_secs = 5",
    );
    let err = Settings::from_toml(&text).unwrap_err().to_string();
    assert!(err.contains("sources.sophos_eu"), "{err}");
    assert!(err.contains("intervall_secs"), "{err}");
}

#[test]
fn unknown_top_level_key_names_its_path() {
    let err = Settings::from_toml("[outbox]\nmax_byte = 5\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("outbox") && err.contains("max_byte"), "{err}");
}

#[test]
fn a_source_routed_to_no_sink_is_an_error() {
    for enabled in ["true", "false"] {
        let text = MINIMAL.replace(
            "sinks = [\"archive\"]",
            &format!("sinks = []\nenabled = {enabled}"),
        );
        let err = Settings::from_toml(&text).unwrap_err().to_string();
        assert!(
            err.contains("sources.sophos_eu.sinks") && err.contains("no sink"),
            "{err}"
        );
    }
}

#[test]
fn routing_to_a_missing_sink_is_an_error() {
    let text = MINIMAL.replace("sinks = [\"archive\"]", "sinks = [\"archiv\"]");
    let err = Settings::from_toml(&text).unwrap_err().to_string();
    assert!(
        err.contains("sources.sophos_eu.sinks") && err.contains("archiv"),
        "{err}"
    );
}

#[test]
fn the_shipped_example_config_is_valid() {
    let text = include_str!("../../config/example.toml").replace(
        "client_secret_file = \"sophos_secret\"",
        "client_secret = \"x\"",
    );
    let s = Settings::from_toml(&text).unwrap();
    assert_eq!(s.routes()["archive"], ["sophos"]);
}

#[test]
fn code42_combinations_the_vendor_does_not_serve_are_refused() {
    let base = r#"
        [sinks.archive]
        type = "file"
        path = "/tmp/x.ndjson"
        [sources.incydr]
        type = "code42"
        client_id = "key"
        client_secret = "s"
        sinks = ["archive"]
    "#;
    let ok = Settings::from_toml(base).unwrap();
    let SourceSettings::Code42(c) = &ok.sources["incydr"] else {
        panic!("code42 settings")
    };
    assert_eq!(c.overlap_minutes, 15);
    assert_eq!(c.page_size, 10_000);
    let legacy_sessions = format!("{base}auth = \"legacy_user\"\nconsole_url = \"https://c\"\n");
    let err = Settings::from_toml(&legacy_sessions)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sources.incydr.streams") && err.contains("sessions"),
        "{err}"
    );
    let v1 = format!("{base}file_events_api = \"v1\"\n");
    let err = Settings::from_toml(&v1).unwrap_err().to_string();
    assert!(err.contains("sources.incydr.file_events_api"), "{err}");
    let no_console = format!("{base}auth = \"legacy_api_client\"\nstreams = [\"file_events\"]\n");
    let err = Settings::from_toml(&no_console).unwrap_err().to_string();
    assert!(err.contains("console_url"), "{err}");
    let big_page = format!("{base}page_size = 20000\n");
    assert!(Settings::from_toml(&big_page)
        .unwrap_err()
        .to_string()
        .contains("page_size"));
}

#[test]
fn the_full_example_with_every_source_and_sink_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = include_str!("../../config/example-full.toml").to_string();
    for name in [
        "hec_token",
        "sophos_secret",
        "incydr_secret",
        "tenable_secret",
        "jamf_secret",
        "itop_token",
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, "s3cret\n").unwrap();
        text = text.replace(
            &format!("\"{name}\""),
            &format!("{:?}", path.display().to_string()),
        );
    }
    let s = Settings::from_toml(&text).unwrap();
    assert_eq!(s.sources.len(), 4);
    assert_eq!(s.sinks.len(), 4);
    assert_eq!(
        s.routes()["splunk"],
        ["incydr", "jamf", "sophos", "tenable"]
    );
    assert_eq!(s.routes()["tickets"], ["incydr", "sophos"]);
    assert!(!format!("{s:?}").contains("s3cret"));
}

#[test]
fn debug_output_hides_the_secret() {
    let s = Settings::from_toml(MINIMAL).unwrap();
    let shown = format!("{s:?}");
    assert!(!shown.contains("PLANTED-SECRET"), "{shown}");
    assert!(shown.contains("[redacted]"));
}

/// Two-way TLS is checked the same way for a sink and a source: a client certificate without its
/// key (or a key without its certificate) is refused, naming the source's or sink's key.
#[test]
fn a_client_certificate_without_its_key_is_refused_for_sinks_and_sources() {
    let syslog =
        "[sinks.siem]\ntype = \"syslog\"\naddress = \"127.0.0.1:6514\"\ntransport = \"tls\"\n";
    let tenable = "[sources.vm]\ntype = \"tenable_sc\"\nurl = \"https://sc.example\"\n\
                   access_key = \"a\"\nsecret_key = \"s\"\nsinks = [\"archive\"]\n";
    for (table, key) in [(syslog, "sinks.siem"), (tenable, "sources.vm")] {
        for lone in [
            "client_cert_file = \"/c.pem\"",
            "client_key_file = \"/k.pem\"",
        ] {
            let err = Settings::from_toml(&format!("{MINIMAL}\n{table}{lone}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("{key}.client_cert_file")),
                "{lone}: {err}"
            );
        }
        let both = format!("{table}client_cert_file = \"/c.pem\"\nclient_key_file = \"/k.pem\"\n");
        Settings::from_toml(&format!("{MINIMAL}\n{both}")).unwrap();
    }
}

#[test]
fn metrics_are_off_on_loopback_by_default_and_log_format_parses() {
    let s = Settings::from_toml(MINIMAL).unwrap();
    assert!(!s.metrics.enabled);
    assert_eq!(s.metrics.listen, "127.0.0.1:9464");
    assert_eq!(s.metrics.unhealthy_after_secs, 900.0);
    assert_eq!(s.log.format, LogFormat::Human);
    let text = format!(
        "{MINIMAL}\n[log]\nformat = \"json\"\n[metrics]\nenabled = true\nlisten = \"0.0.0.0:9100\"\n"
    );
    let s = Settings::from_toml(&text).unwrap();
    assert_eq!(s.log.format, LogFormat::Json);
    assert_eq!(s.metrics.listen, "0.0.0.0:9100");
    for (extra, key) in [
        ("[log]\nformat = \"xml\"", "log.format"),
        ("[metrics]\nlisten = \"localhost\"", "metrics.listen"),
        (
            "[metrics]\nunhealthy_after_secs = -1",
            "metrics.unhealthy_after_secs",
        ),
    ] {
        match Settings::from_toml(&format!("{MINIMAL}\n{extra}\n")) {
            Err(SettingsError::Invalid { key: got, .. }) => assert_eq!(got, key, "{extra}"),
            other => panic!("{extra}: {other:?}"),
        }
    }
}
