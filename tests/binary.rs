//! The real `secrelay` binary as an operator runs it: kill -9 and restart, signals, configuration
//! errors, secrets kept out of every output, and the demo.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use secrelay::simulate::sophos::{Identity, SophosSim, SophosSimConfig};

const BIN: &str = env!("CARGO_BIN_EXE_secrelay");
const BOTH: [&str; 2] = ["events", "alerts"];

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("secrelay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn spawn(config: &Path, args: &[&str]) -> Child {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts")
}

/// Runs the binary to completion off the async runtime (the simulator keeps serving meanwhile).
async fn run_to_end(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("binary runs"))
        .await
        .unwrap()
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for the child off the async runtime, up to `limit`; kills it and fails past that.
async fn wait_exit(mut child: Child, limit: Duration) -> (std::process::ExitStatus, Duration) {
    let started = Instant::now();
    tokio::task::spawn_blocking(move || loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("secrelay did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    })
    .await
    .unwrap()
}

async fn wait_for_lines(dir: &Path, at_least: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while delivered_so_far(dir).len() < at_least {
        assert!(
            Instant::now() < deadline,
            "only {} lines after {limit:?}",
            delivered_so_far(dir).len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_then_restart_loses_nothing_and_repeats_at_most_one_batch() {
    let sim = finished_sim(Identity::Tenant, 1, 20_000).await;
    // Slow responses keep the run going long enough to be killed in the middle of it.
    sim.faults().delay_ms.store(15, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &config_text(&sim, dir.path(), "page_size = 200", ""),
    );

    let first = spawn(&config, &["run"]);
    wait_for_lines(dir.path(), 3000, Duration::from_secs(60)).await;
    let mut first = first;
    first.kill().unwrap(); // SIGKILL: no flush, no cleanup
    first.wait().unwrap();
    let at_kill = delivered_so_far(dir.path()).len();
    let want = expected(&sim, &BOTH);
    assert!(
        at_kill < want.len(),
        "killed after everything was delivered; the test proves nothing"
    );

    let second = spawn(&config, &["run"]);
    wait_for_lines(dir.path(), want.len(), Duration::from_secs(90)).await;
    // Let a possible duplicate batch land before stopping.
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&second, "TERM");
    let (status, took) = wait_exit(second, Duration::from_secs(10)).await;
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");
    assert!(
        took < Duration::from_secs(5),
        "exit within the grace period ({took:?})"
    );

    let got = delivered(dir.path());
    let counts = counts(&got);
    let missing = want.iter().filter(|w| !counts.contains_key(*w)).count();
    assert_eq!(missing, 0, "events lost across kill -9");
    let repeated: usize = counts.values().map(|n| n - 1).sum();
    assert!(
        repeated <= 500,
        "{repeated} duplicates: more than one batch (500)"
    );
    assert_eq!(counts.len(), want.len(), "nothing but simulator events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stop_signal_exits_at_once() {
    let sim = finished_sim(Identity::Tenant, 1, 500).await;
    let dir = tempfile::tempdir().unwrap();
    // The sink cannot write, so a graceful stop would spend its whole 30 s grace retrying.
    std::fs::write(dir.path().join("out"), "not a directory").unwrap();
    let text = config_text(&sim, dir.path(), "", "")
        .replace("shutdown_grace_secs = 5.0", "shutdown_grace_secs = 30.0");
    let config = write_config(dir.path(), &text);
    let child = spawn(&config, &["run"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(&child, "TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&child, "INT");
    let (status, took) = wait_exit(child, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(130));
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_typo_is_an_error_naming_the_key() {
    let sim = finished_sim(Identity::Tenant, 1, 10).await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&sim, dir.path(), "intervall_secs = 5", "");
    let config = write_config(dir.path(), &text);
    let mut command = Command::new(BIN);
    command.arg("--config").arg(&config).arg("check");
    let out = run_to_end(command).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sources.sophos_t"), "{stderr}");
    assert!(stderr.contains("intervall_secs"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_secret_appears_in_no_log_error_or_state_output() {
    const SECRET: &str = "PLANTED-S3CRET-7f3a9c";
    let sim = SophosSim::start(SophosSimConfig {
        client_secret: SECRET.into(),
        events_per_tenant: Some(300),
        start: chrono::Utc::now() - chrono::Duration::minutes(30),
        ..SophosSimConfig::default()
    })
    .await
    .unwrap();
    sim.faults().truncate.store(1, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    // The secret comes from a systemd credential file, the way the unit in systemd/ passes it.
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::write(credentials.join("sophos_secret"), format!("{SECRET}\n")).unwrap();
    let text = config_text(&sim, dir.path(), "", "").replace(
        "client_secret = \"sim-secret\"",
        "client_secret_file = \"sophos_secret\"",
    );
    let config = write_config(dir.path(), &text);

    let mut outputs = Vec::new();
    for args in [
        &["backfill"][..],
        &["state"],
        &["state", "--json"],
        &["check"],
    ] {
        let mut command = Command::new(BIN);
        command
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("CREDENTIALS_DIRECTORY", &credentials)
            .env("RUST_LOG", "debug");
        let out = run_to_end(command).await;
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push((args, out));
    }
    // A wrong secret in the environment layer: refused, and still never shown.
    let mut command = Command::new(BIN);
    command
        .arg("--config")
        .arg(&config)
        .arg("check")
        .env("CREDENTIALS_DIRECTORY", &credentials)
        .env(
            "SECRELAY__SOURCES__SOPHOS_T__CLIENT_SECRET_FILE",
            "missing-file",
        )
        .env("RUST_LOG", "debug");
    let refused = run_to_end(command).await;
    assert!(!refused.status.success());
    outputs.push((&["check (bad secret file)"][..], refused));

    for (args, out) in &outputs {
        for text in [&out.stdout, &out.stderr] {
            let text = String::from_utf8_lossy(text);
            assert!(
                !text.contains(SECRET),
                "{args:?} printed the secret:\n{text}"
            );
        }
    }
    // The truncated page was logged as an error naming the source and the URL.
    let backfill_log = String::from_utf8_lossy(&outputs[0].1.stderr);
    let line = backfill_log
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("malformed response"))
        .unwrap_or_else(|| panic!("no error line for the truncated page:\n{backfill_log}"));
    assert!(line.contains("sophos_t"), "{line}");
    assert!(line.contains(&format!("{}/siem/v1/", sim.url())), "{line}");
    assert_exactly_once(&delivered(dir.path()), &expected(&sim, &BOTH));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_for_ten_seconds_writes_events_to_demo_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(BIN);
    command
        .args(["demo", "--seconds", "10"])
        .current_dir(dir.path());
    let out = run_to_end(command).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.path().join("demo-out/events.ndjson")).unwrap();
    let lines: Vec<_> = text.lines().collect();
    assert!(lines.len() > 100, "only {} events", lines.len());
    let mut seen = std::collections::BTreeSet::new();
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        seen.insert(format!(
            "{}/{}",
            v["source"].as_str().unwrap(),
            v["stream"].as_str().unwrap()
        ));
    }
    let want = [
        "code42_demo/alerts",
        "code42_demo/file_events",
        "code42_demo/sessions",
        "jamf_demo/applications",
        "jamf_demo/assets",
        "jamf_demo/browser_extensions",
        "jamf_demo/fleet_counters",
        "jamf_demo/inventory",
        "jamf_demo/ip_users",
        "jamf_demo/services",
        "jamf_demo/software_updates",
        "jamf_demo/virtual_machines",
        "sophos_demo/alerts",
        "sophos_demo/events",
        "tenable_demo/mitigated",
        "tenable_demo/vulnerabilities",
    ];
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        want,
        "every simulated stream reaches the output"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ndjson"),
        "the demo prints what moved:\n{stdout}"
    );

    // The syslog sink's exact bytes: RFC 5424 lines carrying CEF, from every source.
    let syslog = std::fs::read_to_string(dir.path().join("demo-out/syslog-cef.log")).unwrap();
    let cef: Vec<&str> = syslog.lines().collect();
    assert!(cef.len() > 100, "only {} syslog lines", cef.len());
    for line in &cef {
        assert!(
            line.starts_with('<') && line.contains(">1 ") && line.contains(" CEF:0|"),
            "not CEF over RFC 5424 syslog: {line}"
        );
    }
    for vendor in [
        "CEF:0|Sophos|",
        "CEF:0|Code42|",
        "CEF:0|Tenable|",
        "CEF:0|Jamf|",
    ] {
        assert!(
            cef.iter().any(|l| l.contains(vendor)),
            "no {vendor} line in the syslog output"
        );
    }
    // The HEC simulator's accepted envelopes, one per line.
    let hec = std::fs::read_to_string(dir.path().join("demo-out/hec-events.ndjson")).unwrap();
    let envelopes: Vec<serde_json::Value> = hec
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(envelopes.len() > 100, "only {} HEC events", envelopes.len());
    let sourcetypes: std::collections::BTreeSet<&str> = envelopes
        .iter()
        .map(|e| {
            assert!(e["event"].is_object() && e["time"].is_number(), "{e}");
            e["sourcetype"].as_str().unwrap()
        })
        .collect();
    assert!(sourcetypes.len() >= 4, "{sourcetypes:?}");
    for file in ["syslog-cef.log", "hec-events.ndjson"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("demo-out").join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}: security events, owner only");
    }
    assert!(
        stdout.contains("syslog-cef.log") && stdout.contains("envelopes accepted"),
        "the demo says where the syslog and HEC output went:\n{stdout}"
    );
    // The metrics endpoint, as scraped during the run: every sink delivered, every vendor polled.
    let metrics = std::fs::read_to_string(dir.path().join("demo-out/metrics.prom")).unwrap();
    assert!(stdout.contains("/metrics and /health"), "{stdout}");
    assert!(metrics.contains("secrelay_healthy 1\n"), "{metrics}");
    for sink in ["ndjson", "syslog", "splunk"] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "secrelay_sink_events_delivered_total{{sink=\"{sink}\"}} "
                ))
            })
            .unwrap_or_else(|| panic!("no delivered count for {sink}: {metrics}"));
        let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n > 100, "{line}");
    }
    for source in ["sophos_demo", "code42_demo", "tenable_demo", "jamf_demo"] {
        assert!(
            metrics.contains(&format!(
                "secrelay_source_events_new_total{{source=\"{source}\""
            )),
            "{source} in {metrics}"
        );
    }
}

/// `backfill` under a pseudo-terminal (python3's `pty`, as an operator's shell would run it):
/// a live progress line redrawn with `\r`, then the summary table per source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_on_a_terminal_draws_progress_and_prints_a_summary_per_source() {
    let sim = finished_sim(Identity::Tenant, 1, 3000).await;
    // Slow pages keep it running across several redraws.
    sim.faults().delay_ms.store(80, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &config_text(&sim, dir.path(), "page_size = 200", ""),
    );
    let mut command = Command::new("python3");
    command
        .arg("-c")
        .arg(
            "import os, pty, sys\n\
             status = pty.spawn(sys.argv[1:])\n\
             sys.exit(os.waitstatus_to_exitcode(status))",
        )
        .arg(BIN)
        .arg("--config")
        .arg(&config)
        .arg("backfill")
        .stdin(Stdio::null());
    let out = run_to_end(command).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // A log line may land between two draws: the draw after it starts on a fresh line, so
    // draws are counted by their text, and at least one must have been drawn over its
    // predecessor in place.
    let draws = text
        .split("backfill ")
        .skip(1)
        .filter(|rest| {
            rest.split_once("s: ")
                .is_some_and(|(secs, _)| secs.parse::<u64>().is_ok())
        })
        .count();
    assert!(draws >= 3, "no live progress line ({draws} draws):\n{text}");
    assert!(
        text.contains("\r\x1b[Jbackfill "),
        "no draw over the previous one:\n{text}"
    );
    assert!(text.contains("events/s"), "{text}");
    // Per source: how far through its window its newest event is, then "caught up" at the end.
    let blocks: Vec<&str> = text.split("\r\x1b[Jbackfill ").collect();
    assert!(
        blocks
            .iter()
            .any(|b| b.contains("\n  sophos_t ") && b.contains("% ")),
        "no per-source window progress:\n{text}"
    );
    let last = blocks.last().unwrap();
    assert!(
        last.contains("\n  sophos_t caught up,"),
        "the last block says the source caught up:\n{text}"
    );
    let want = expected(&sim, &BOTH).len();
    let header = text
        .lines()
        .find(|l| l.contains("PULLED") && l.contains("DELIVERED PER SINK"))
        .unwrap_or_else(|| panic!("no summary table:\n{text}"));
    assert!(header.trim_start().starts_with("SOURCE"), "{header}");
    let row = text
        .lines()
        .find(|l| l.starts_with("sophos_t ") && l.contains("caught up"))
        .unwrap_or_else(|| panic!("no summary row for sophos_t:\n{text}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    let n = |i: usize| cols[i].parse::<usize>().unwrap();
    assert_eq!(n(2), want, "new: {row}");
    // The simulator's pages overlap at their time boundaries: those repeats are dropped.
    assert_eq!(n(1), n(2) + n(3), "pulled = new + duplicates: {row}");
    assert!(cols[4].ends_with('s'), "time taken: {row}");
    assert!(
        row.contains(&format!("out {want}")),
        "delivered per sink: {row}"
    );
}

/// Without a terminal (a pipe, the journal) progress is plain log lines: never a `\r`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_without_a_terminal_logs_progress_without_carriage_returns() {
    let sim = finished_sim(Identity::Tenant, 1, 500).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &config_text(&sim, dir.path(), "", ""));
    let mut command = Command::new(BIN);
    command.arg("--config").arg(&config).arg("backfill");
    let out = run_to_end(command).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains('\r') && !stdout.contains('\r'), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("INFO") && l.contains("backfill") && l.contains("events/s")),
        "no progress log line:\n{stderr}"
    );
    let progress = stderr
        .lines()
        .find(|l| l.contains("INFO") && l.contains("backfill progress: sophos_t"))
        .unwrap_or_else(|| panic!("no progress log line for the source:\n{stderr}"));
    assert!(progress.contains("source=sophos_t"), "{progress}");
    assert!(stdout.contains("DELIVERED PER SINK"), "{stdout}");
}
