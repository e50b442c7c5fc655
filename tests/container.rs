//! `deploy/container-steps.sh`: the Dockerfile's steps on this host (install into a fresh root,
//! start as an unprivileged user with the image's environment, `secrelay health` answers healthy,
//! SIGTERM stops it cleanly), against the Sophos simulator with its secret read from a file.

mod common;

use std::time::Duration;

use common::*;
use secrelay::simulate::sophos::Identity;

#[tokio::test]
async fn container_steps_install_start_unprivileged_answer_health_and_stop() {
    let sim = finished_sim(Identity::Tenant, 1, 50).await;
    let dir = tempfile::tempdir().unwrap();
    // The image's configuration: no inline secret (it comes from /run/secrets), and the store path
    // and metrics settings left to the image's environment.
    let text = config_text(&sim, dir.path(), "", "")
        .replace(
            "client_secret = \"sim-secret\"",
            "client_secret_file = \"sophos_secret\"",
        )
        .lines()
        .filter(|l| !l.starts_with("path = ") || l.contains("events.ndjson"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("client_secret_file"));
    // The file sink writes under the temporary directory, which the unprivileged user must reach.
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    for path in [dir.path(), out.as_path()] {
        std::process::Command::new("chmod")
            .args(["0777", path.to_str().unwrap()])
            .status()
            .unwrap();
    }
    let config = dir.path().join("secrelay.toml");
    std::fs::write(&config, text).unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "sim-secret").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/container-steps.sh");
    let run = tokio::process::Command::new("bash")
        .arg(script)
        .arg(&config)
        .arg(format!("sophos_secret={}", secret.display()))
        .env("SECRELAY_BIN", env!("CARGO_BIN_EXE_secrelay"))
        .env("METRICS_PORT", port.to_string())
        .env("HEALTH_WITHIN", "20")
        .env_remove("SECRELAY_CONFIG")
        .output();
    let done = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the steps finish within a minute")
        .unwrap();
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(
        done.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&done.stderr)
    );
    for step in ["step 3:", "step 4: healthy: ok", "step 5: stopped cleanly"] {
        assert!(stdout.contains(step), "{step:?} missing in\n{stdout}");
    }
    // The daemon, started with its secret from a file only, really polled and delivered.
    let delivered = delivered(dir.path());
    assert!(!delivered.is_empty(), "nothing delivered:\n{stdout}");
}
