//! HTTP plumbing shared by every vendor module: the mapping of a response to data or to a
//! [`SourceError`] that tells the scheduler what to do. The clients themselves are built in
//! [`crate::net`] (re-exported here for the vendor modules).
//!
//! Must not: know a vendor's endpoints, retry or sleep (the scheduler does), or put a credential in
//! an error (errors carry the URL without its query string, and at most a short, cleaned excerpt
//! of the vendor's body).

use std::sync::atomic::{AtomicU64, Ordering};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::SourceError;
pub use crate::net::{
    http_client as client, http_client_with_tls as client_with_tls, install_crypto_provider,
    parse_retry_after, TlsOptions,
};
use crate::shared_text::SharedText;

/// Longest excerpt of a vendor's body quoted in an error.
const EXCERPT: usize = 300;

/// The largest response body read from a vendor, in bytes (`http.max_response_bytes`). One value
/// per process, since every source shares the `[http]` section; set once at start-up by
/// [`limit_response_bytes`], 256 MiB until then.
static MAX_RESPONSE_BYTES: AtomicU64 = AtomicU64::new(DEFAULT_MAX_RESPONSE_BYTES);

/// `http.max_response_bytes` when not configured: 256 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 256 * 1024 * 1024;

/// Sets the largest response body any source reads (from `http.max_response_bytes`).
pub fn limit_response_bytes(max: u64) {
    MAX_RESPONSE_BYTES.store(max, Ordering::Relaxed);
}

/// Reads a response body as text, at most `http.max_response_bytes` of it: a broken or hostile
/// endpoint that streams without end fails the poll (retried, loudly) instead of exhausting memory.
/// Bytes that are not UTF-8 are replaced, as `Response::text` does.
pub async fn read_text(response: Response) -> Result<String, SourceError> {
    read_text_within(response, MAX_RESPONSE_BYTES.load(Ordering::Relaxed)).await
}

async fn read_text_within(response: Response, max: u64) -> Result<String, SourceError> {
    let url = display_url(response.url());
    crate::net::read_body(response, max)
        .await
        .map_err(|e| SourceError::Malformed {
            url,
            detail: match e {
                crate::net::BodyError::TooLarge { max } => format!(
                    "the response is larger than http.max_response_bytes ({max} bytes); raise it \
                     if the vendor's pages really are that large, or lower the source's page size"
                ),
                other => other.to_string(),
            },
        })
}

/// The URL as errors show it: without the query string (cursors and filters make it long).
pub fn display_url(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.to_string()
}

/// Sends a request, turning transport failures (refused, timeout, reset) into `Unavailable`.
pub async fn send(request: reqwest::RequestBuilder, url: &str) -> Result<Response, SourceError> {
    crate::net::send(request, url)
        .await
        .map_err(|e| SourceError::Unavailable {
            url: e.url,
            detail: e.detail,
            retry_after: None,
        })
}

/// Reads a successful response as JSON `T`; any other status becomes the matching error.
pub async fn read_json<T: DeserializeOwned>(response: Response) -> Result<T, SourceError> {
    read_json_as(response, Quote::Excerpt).await
}

/// Reads a token endpoint's JSON answer like [`read_json`], but never quotes its body in an error:
/// a 200 that does not parse may still carry a token (`{"access_token": …`), and an error message
/// ends up in logs and the state database. A failed status keeps only the OAuth `error` and
/// `error_description` fields, which say what is wrong without carrying a credential.
pub async fn read_token_json<T: DeserializeOwned>(response: Response) -> Result<T, SourceError> {
    read_json_as(response, Quote::OauthErrorOnly).await
}

/// How much of a vendor body an error may quote.
#[derive(Clone, Copy)]
enum Quote {
    /// A short single-line excerpt.
    Excerpt,
    /// Nothing but the OAuth `error`/`error_description` fields of a failed status.
    OauthErrorOnly,
}

async fn read_json_as<T: DeserializeOwned>(
    response: Response,
    quote: Quote,
) -> Result<T, SourceError> {
    let body = read_success(response, quote).await?;
    match quote {
        Quote::Excerpt => body.parse(),
        Quote::OauthErrorOnly => {
            serde_json::from_str(&body.text).map_err(|_| SourceError::Malformed {
                detail: format!(
                "the token response is not the JSON expected ({} bytes, not quoted: it may hold a \
                 credential)",
                body.text.len()
            ),
                url: body.url,
            })
        }
    }
}

/// A successful response's body, read whole, with the URL errors name. [`JsonBody::parse`]
/// reads it into types that borrow from it, so records kept as raw JSON are not copied.
#[derive(Debug)]
pub struct JsonBody {
    url: String,
    text: SharedText,
}

impl JsonBody {
    /// The request URL as errors show it (without its query string).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The body's text, for records to share ([`crate::event::Event::in_body`]).
    pub fn text(&self) -> &SharedText {
        &self.text
    }

    /// The body as JSON `T`, which may borrow from it (`&RawValue`, `&str`); a body that does not
    /// parse is `Malformed`, quoting a short excerpt.
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> Result<T, SourceError> {
        self.read_with(|text| serde_json::from_str(text.as_str()).map_err(|e| e.to_string()))
    }

    /// The body as `read` makes it out (which may borrow from it, or share it); an Err (why it
    /// does not read) is `Malformed`, quoting a short excerpt, as with [`JsonBody::parse`].
    pub fn read_with<'a, T>(
        &'a self,
        read: impl FnOnce(&'a SharedText) -> Result<T, String>,
    ) -> Result<T, SourceError> {
        read(&self.text).map_err(|e| SourceError::Malformed {
            detail: format!(
                "{e} (body {} bytes, starts {:?})",
                self.text.len(),
                excerpt(&self.text)
            ),
            url: self.url.clone(),
        })
    }
}

/// Reads a successful response's body for [`JsonBody::parse`]; any other status becomes the
/// matching error, as with [`read_json`].
pub async fn read_json_body(response: Response) -> Result<JsonBody, SourceError> {
    read_success(response, Quote::Excerpt).await
}

/// The body of a successful response; any other status becomes the matching error, quoting the
/// body as `quote` allows.
async fn read_success(response: Response, quote: Quote) -> Result<JsonBody, SourceError> {
    let url = display_url(response.url());
    let status = response.status();
    let headers = response.headers().clone();
    let text = read_text(response).await?;
    if !status.is_success() {
        let shown = match quote {
            Quote::Excerpt => text,
            Quote::OauthErrorOnly => oauth_error(&text),
        };
        return Err(status_error(status, &headers, &shown, url));
    }
    Ok(JsonBody {
        url,
        text: SharedText::from(text),
    })
}

/// The OAuth `error` and `error_description` of a failed token request, if the body has them.
fn oauth_error(body: &str) -> String {
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_str(body) else {
        return format!("({} bytes, not quoted)", body.len());
    };
    let text = |key: &str| fields.get(key).and_then(serde_json::Value::as_str);
    match (text("error"), text("error_description")) {
        (Some(e), Some(d)) => format!("{e}: {d}"),
        (Some(e), None) => e.to_string(),
        _ => format!("({} bytes, not quoted)", body.len()),
    }
}

/// The error a non-success status means.
pub fn status_error(
    status: StatusCode,
    headers: &HeaderMap,
    body: &str,
    url: String,
) -> SourceError {
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let detail = format!("HTTP {status}: {}", excerpt(body));
    match status.as_u16() {
        429 => SourceError::RateLimited { url, retry_after },
        401 | 403 => SourceError::Auth { url, detail },
        408 | 500..=599 => SourceError::Unavailable {
            url,
            detail,
            retry_after,
        },
        _ => SourceError::Rejected { url, detail },
    }
}

/// A short, single-line excerpt of a vendor body for error messages.
fn excerpt(body: &str) -> String {
    let mut cut: String = body.chars().take(EXCERPT).collect();
    if cut.len() < body.len() {
        cut.push('…');
    }
    cut.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::settings::HttpSettings;

    #[test]
    fn statuses_map_to_what_the_scheduler_does() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        let e = status_error(StatusCode::TOO_MANY_REQUESTS, &h, "", "u".into());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert!(matches!(
            status_error(StatusCode::SERVICE_UNAVAILABLE, &h, "", "u".into()),
            SourceError::Unavailable { .. }
        ));
        assert!(matches!(
            status_error(StatusCode::UNAUTHORIZED, &h, "", "u".into()),
            SourceError::Auth { .. }
        ));
        assert!(matches!(
            status_error(StatusCode::BAD_REQUEST, &h, "", "u".into()),
            SourceError::Rejected { .. }
        ));
    }

    fn response(status: u16, body: &str) -> Response {
        Response::from(
            axum::http::Response::builder()
                .status(status)
                .body(body.to_string())
                .unwrap(),
        )
    }

    #[tokio::test]
    async fn a_token_response_is_never_quoted_in_an_error() {
        let secret = "eyJhbGciOiJSUzI1NiJ9.secret-token";
        let unparseable = format!(r#"{{"access_token":"{secret}","expires_in":"soon"#);
        for (status, body) in [
            (200, unparseable.as_str()),
            (500, unparseable.as_str()),
            (
                200,
                r#"{"access_token":"eyJhbGciOiJSUzI1NiJ9.secret-token"}"#,
            ),
        ] {
            #[derive(Debug, serde::Deserialize)]
            #[allow(dead_code)]
            struct Token {
                expires_in: u64,
            }
            let err = read_token_json::<Token>(response(status, body))
                .await
                .unwrap_err()
                .to_string();
            assert!(!err.contains("secret-token"), "{err}");
            assert!(err.contains("not quoted"), "{err}");
        }
        // The same body read as data is quoted, which is why tokens take the other path.
        let err =
            read_json::<serde_json::Map<String, serde_json::Value>>(response(200, &unparseable))
                .await
                .unwrap_err()
                .to_string();
        assert!(err.contains("secret-token"), "{err}");
    }

    #[tokio::test]
    async fn a_refused_token_request_keeps_the_oauth_error_only() {
        let err = read_token_json::<serde_json::Value>(response(
            401,
            r#"{"error":"invalid_client","error_description":"Client authentication failed","trace":"x"}"#,
        ))
        .await
        .unwrap_err();
        assert!(matches!(err, SourceError::Auth { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("invalid_client: Client authentication failed")
                && !text.contains("trace"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed_with_the_credentials() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let elsewhere_hits = std::sync::Arc::new(AtomicU64::new(0));
        let hits = elsewhere_hits.clone();
        let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let elsewhere_url = format!("http://{}/collect", elsewhere.local_addr().unwrap());
        let collect = axum::Router::new().route(
            "/collect",
            axum::routing::get(move || {
                hits.fetch_add(1, Ordering::SeqCst);
                async { "{}" }
            }),
        );
        tokio::spawn(async move { axum::serve(elsewhere, collect).await });
        let vendor = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let vendor_url = format!("http://{}/api", vendor.local_addr().unwrap());
        let redirect = axum::Router::new().route(
            "/api",
            axum::routing::get(move || async move {
                (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(reqwest::header::LOCATION, elsewhere_url)],
                )
            }),
        );
        tokio::spawn(async move { axum::serve(vendor, redirect).await });

        let settings = HttpSettings {
            timeout_secs: 5.0,
            connect_timeout_secs: 5.0,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        };
        for client in [
            client(&settings).unwrap(),
            client_with_tls(
                &settings,
                &TlsOptions::default(),
                Duration::from_secs(5),
                "t",
            )
            .unwrap(),
        ] {
            let request = client
                .get(&vendor_url)
                .header("X-APIKey", "accessKey=a; secretKey=b");
            let response = send(request, &vendor_url).await.unwrap();
            assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
            let err = read_json::<serde_json::Value>(response).await.unwrap_err();
            assert!(matches!(err, SourceError::Rejected { .. }), "{err}");
        }
        assert_eq!(
            elsewhere_hits.load(Ordering::SeqCst),
            0,
            "the credentials stayed home"
        );
    }

    #[test]
    fn url_in_errors_drops_the_query() {
        let url =
            reqwest::Url::parse("http://127.0.0.1:9/siem/v1/events?cursor=abc&limit=5").unwrap();
        assert_eq!(display_url(&url), "http://127.0.0.1:9/siem/v1/events");
    }

    #[tokio::test]
    async fn a_body_over_the_cap_fails_the_read_whether_or_not_its_length_is_announced() {
        use axum::body::Body;
        let app = axum::Router::new()
            .route(
                "/announced",
                axum::routing::get(|| async { vec![b'x'; 5000] }),
            )
            .route(
                "/streamed",
                axum::routing::get(|| async {
                    // Chunked, no Content-Length: only counting what arrives can stop it.
                    let chunks = (0..100).map(|_| Ok::<_, std::io::Error>(vec![b'y'; 100]));
                    Body::from_stream(futures_util::stream::iter(chunks))
                }),
            )
            .route("/small", axum::routing::get(|| async { "{\"ok\":true}" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let http = client(&HttpSettings {
            timeout_secs: 5.0,
            connect_timeout_secs: 5.0,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        })
        .unwrap();
        for path in ["/announced", "/streamed"] {
            let url = format!("{base}{path}");
            let response = http.get(&url).send().await.unwrap();
            let err = read_text_within(response, 4096).await.unwrap_err();
            assert!(
                matches!(&err, SourceError::Malformed { detail, .. } if detail.contains("http.max_response_bytes")),
                "{path}: {err}"
            );
        }
        let response = http.get(format!("{base}/small")).send().await.unwrap();
        assert_eq!(
            read_text_within(response, 4096).await.unwrap(),
            "{\"ok\":true}"
        );
    }
}
