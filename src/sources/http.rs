//! HTTP plumbing shared by every vendor module: the client, and the mapping of a response to data or
//! to a [`SourceError`] that tells the scheduler what to do.
//!
//! Must not: know a vendor's endpoints, retry or sleep (the scheduler does), or put a credential in
//! an error (errors carry the URL without its query string, and at most a short, cleaned excerpt
//! of the vendor's body).

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Response, StatusCode};
use serde::de::DeserializeOwned;

use super::SourceError;
use crate::settings::HttpSettings;

/// Longest excerpt of a vendor's body quoted in an error.
const EXCERPT: usize = 300;

/// Builds the HTTP client sources share (rustls with the ring provider, timeouts from `[http]`).
pub fn client(settings: &HttpSettings) -> Result<reqwest::Client, reqwest::Error> {
    install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs_f64(settings.timeout_secs))
        .connect_timeout(Duration::from_secs_f64(settings.connect_timeout_secs))
        .user_agent(concat!("secrelay/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// TLS settings for servers that need more than the system roots.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM bundle of extra CAs to trust.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate and key, for two-way TLS.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Verify the server certificate (never turned off silently: callers warn).
    pub verify: bool,
}

/// A client with its own TLS trust, client certificate and request timeout. Errors name the file
/// and config key so the operator can fix them.
pub fn client_with_tls(
    settings: &HttpSettings,
    tls: &TlsOptions,
    timeout: Duration,
    key_prefix: &str,
) -> Result<reqwest::Client, String> {
    install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs_f64(settings.connect_timeout_secs))
        .user_agent(concat!("secrelay/", env!("CARGO_PKG_VERSION")))
        .danger_accept_invalid_certs(!tls.verify);
    if let Some(path) = &tls.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("{key_prefix}.ca_file {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            format!(
                "{key_prefix}.ca_file {}: not a PEM bundle: {e}",
                path.display()
            )
        })?;
        if certs.is_empty() {
            return Err(format!(
                "{key_prefix}.ca_file {}: no certificate in it",
                path.display()
            ));
        }
        builder = builder.tls_certs_merge(certs);
    }
    if let Some((cert, key)) = &tls.client_cert {
        let mut pem = std::fs::read(cert)
            .map_err(|e| format!("{key_prefix}.client_cert_file {}: {e}", cert.display()))?;
        pem.push(b'\n');
        pem.extend(
            std::fs::read(key)
                .map_err(|e| format!("{key_prefix}.client_key_file {}: {e}", key.display()))?,
        );
        let identity = reqwest::Identity::from_pem(&pem)
            .map_err(|e| format!("{key_prefix}.client_cert_file/client_key_file: {e}"))?;
        builder = builder.identity(identity);
    }
    builder
        .build()
        .map_err(|e| format!("{key_prefix}: cannot build the HTTP client: {e}"))
}

/// Makes ring the process-wide rustls provider (once; later calls are no-ops).
pub fn install_crypto_provider() {
    // An error only means a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The URL as errors show it: without the query string (cursors and filters make it long).
pub fn display_url(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.to_string()
}

/// Sends a request, turning transport failures (refused, timeout, reset) into `Unavailable`.
pub async fn send(request: reqwest::RequestBuilder, url: &str) -> Result<Response, SourceError> {
    request.send().await.map_err(|e| SourceError::Unavailable {
        url: url.to_string(),
        detail: transport_detail(&e),
        retry_after: None,
    })
}

fn transport_detail(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "transport error"
    };
    // reqwest's Display repeats the URL; the source chain holds the cause.
    let mut cause = String::new();
    let mut next = std::error::Error::source(e);
    while let Some(err) = next {
        cause = err.to_string();
        next = err.source();
    }
    if cause.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {cause}")
    }
}

/// Reads a successful response as JSON `T`; any other status becomes the matching error.
pub async fn read_json<T: DeserializeOwned>(response: Response) -> Result<T, SourceError> {
    let url = display_url(response.url());
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.text().await.map_err(|e| SourceError::Malformed {
        url: url.clone(),
        detail: format!("body could not be read: {}", transport_detail(&e)),
    })?;
    if !status.is_success() {
        return Err(status_error(status, &headers, &body, url));
    }
    serde_json::from_str(&body).map_err(|e| SourceError::Malformed {
        detail: format!(
            "{e} (body {} bytes, starts {:?})",
            body.len(),
            excerpt(&body)
        ),
        url,
    })
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

/// `Retry-After` as delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
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
    use super::*;

    #[test]
    fn retry_after_in_seconds_and_as_date() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

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

    #[test]
    fn url_in_errors_drops_the_query() {
        let url =
            reqwest::Url::parse("http://127.0.0.1:9/siem/v1/events?cursor=abc&limit=5").unwrap();
        assert_eq!(display_url(&url), "http://127.0.0.1:9/siem/v1/events");
    }
}
