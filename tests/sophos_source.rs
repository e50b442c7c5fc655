//! The Sophos source alone against its simulator: token renewal and refusal.

mod common;

use common::finished_sim;
use secrelay::settings::{Settings, SourceSettings};
use secrelay::simulate::sophos::Identity;
use secrelay::sources::sophos::SophosSource;
use secrelay::sources::{http, Source, SourceError};

fn source(sim: &secrelay::simulate::sophos::SophosSim) -> SophosSource {
    source_with(sim, "page_size = 10")
}

fn source_with(sim: &secrelay::simulate::sophos::SophosSim, extra: &str) -> SophosSource {
    let dir = std::env::temp_dir();
    let settings = Settings::from_toml(&common::config_text(sim, &dir, extra, "")).unwrap();
    let SourceSettings::Sophos(s) = settings.sources["sophos_t"].clone() else {
        panic!("a sophos source")
    };
    SophosSource::new("sophos_t", s, http::client(&settings.http).unwrap(), None).unwrap()
}

#[tokio::test]
async fn an_expired_token_is_renewed_once_and_the_poll_succeeds() {
    let sim = finished_sim(Identity::Tenant, 1, 100).await;
    let source = source(&sim);
    let partitions = source.partitions().await.unwrap();
    let first = source.poll(&partitions[0], None).await.unwrap();
    assert_eq!(first.events.len(), 10);
    assert_eq!(sim.token_requests(), 1, "the token is cached between calls");

    sim.expire_tokens();
    let second = source
        .poll(&partitions[0], first.cursor.as_deref())
        .await
        .unwrap();
    assert!(!second.events.is_empty());
    assert_eq!(sim.token_requests(), 2, "one renewal after the 401");
    let statuses: Vec<u16> = sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 401, 200]);
}

#[tokio::test]
async fn a_revoked_credential_fails_after_one_renewal_instead_of_looping() {
    let sim = finished_sim(Identity::Tenant, 1, 100).await;
    let source = source(&sim);
    let partitions = source.partitions().await.unwrap();
    sim.reject_all_tokens(true);
    let err = source.poll(&partitions[0], None).await.unwrap_err();
    assert!(matches!(err, SourceError::Auth { .. }), "{err}");
    assert_eq!(
        sim.token_requests(),
        2,
        "initial token plus exactly one renewal"
    );
    assert!(err.to_string().contains("/siem/v1/events"), "{err}");
}

#[tokio::test]
async fn boundary_records_repeat_on_the_next_page() {
    let sim = finished_sim(Identity::Tenant, 1, 100).await;
    let source = source(&sim);
    let partitions = source.partitions().await.unwrap();
    let first = source.poll(&partitions[0], None).await.unwrap();
    assert!(first.more);
    let second = source
        .poll(&partitions[0], first.cursor.as_deref())
        .await
        .unwrap();
    assert_eq!(
        second.events[0].id,
        first.events.last().unwrap().id,
        "the simulator repeats the record at the cursor, as the real API can"
    );
}

#[tokio::test]
async fn a_token_is_renewed_before_it_expires_without_a_refusal() {
    let sim =
        secrelay::simulate::sophos::SophosSim::start(secrelay::simulate::sophos::SophosSimConfig {
            token_lifetime_secs: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    let source = source(&sim);
    let partitions = source.partitions().await.unwrap();
    source.poll(&partitions[0], None).await.unwrap();
    assert_eq!(sim.token_requests(), 1);
    // Renewal is due half-way through a lifetime this short (120 s early for real 3600 s tokens).
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    source.poll(&partitions[0], None).await.unwrap();
    assert_eq!(sim.token_requests(), 2, "renewed before expiry");
    assert!(
        sim.requests().iter().all(|r| r.status == 200),
        "no request was refused"
    );
}

#[tokio::test]
async fn excluded_types_are_not_returned() {
    let sim = finished_sim(Identity::Tenant, 1, 200).await;
    let extra = "page_size = 500\nexclude_types = [\"Event::Endpoint::UpdateSuccess\", \"Event::Endpoint::CoreHeartbeat\"]";
    let source = source_with(&sim, extra);
    let partitions = source.partitions().await.unwrap();
    let page = source.poll(&partitions[0], None).await.unwrap();
    assert!(!page.events.is_empty());
    for event in &page.events {
        let record: serde_json::Value = serde_json::from_str(event.record.as_str()).unwrap();
        let kind = record["type"].as_str().unwrap();
        assert!(
            kind != "Event::Endpoint::UpdateSuccess" && kind != "Event::Endpoint::CoreHeartbeat",
            "{kind}"
        );
    }
}

#[tokio::test]
async fn a_token_endpoint_answer_that_does_not_parse_is_never_quoted() {
    // A token URL that answers 200 with a body cut mid-way, which still carries the token.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/api/v2/oauth2/token",
        axum::routing::post(|| async {
            r#"{"access_token":"eyJ-planted-token-value","token_type":"bearer","expires_in":"#
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let sim = finished_sim(Identity::Tenant, 1, 10).await;
    let dir = tempfile::tempdir().unwrap();
    let text = common::config_text(&sim, dir.path(), "", "").replace(
        &sim.token_url(),
        &format!("http://{addr}/api/v2/oauth2/token"),
    );
    let settings = Settings::from_toml(&text).unwrap();
    let SourceSettings::Sophos(s) = settings.sources["sophos_t"].clone() else {
        panic!("a sophos source")
    };
    let source =
        SophosSource::new("sophos_t", s, http::client(&settings.http).unwrap(), None).unwrap();
    let err = source.partitions().await.unwrap_err().to_string();
    server.abort();
    assert!(!err.contains("planted"), "{err}");
    assert!(err.contains("/api/v2/oauth2/token"), "{err}");
}
