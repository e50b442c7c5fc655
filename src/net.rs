//! Network clients shared by sources and sinks: the rustls crypto provider, the HTTP client (no
//! redirects, timeouts from `[http]`, extra CAs, client certificates), and the rustls client
//! configuration of raw TLS connections (syslog over TLS).
//!
//! Must not: know a vendor, a sink or a wire format, retry or sleep, or map a response to what the
//! scheduler does (sources and sinks each do that for their side). Invariant: certificate
//! verification is off only when the caller's `verify` says so, and then a WARN says so at
//! start-up ([`warn_unverified`], which [`endpoint_client`] calls itself). Errors
//! name the config key and the file, never a credential.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::settings::{HttpSettings, SetupError};

/// Makes ring the process-wide rustls provider (once; later calls are no-ops).
pub fn install_crypto_provider() {
    // An error only means a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds the HTTP client sources share (rustls with the ring provider, timeouts from `[http]`).
pub fn http_client(settings: &HttpSettings) -> Result<reqwest::Client, reqwest::Error> {
    http_builder(settings, Duration::from_secs_f64(settings.timeout_secs)).build()
}

/// What every HTTP client has in common. Redirects are never followed: requests carry
/// credentials in headers (`X-APIKey`, `X-SecurityCenter`, bearer tokens, `Splunk` tokens) that
/// must not travel to wherever an answer points, or over plain HTTP; a 3xx is reported as the
/// server's answer.
fn http_builder(settings: &HttpSettings, timeout: Duration) -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs_f64(settings.connect_timeout_secs))
        .user_agent(concat!("secrelay/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
}

/// TLS settings for servers that need more than the system roots.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM bundle of extra CAs to trust.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for two-way TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Verify the server certificate (never turned off silently: callers warn).
    pub verify: bool,
}

impl TlsOptions {
    /// One-way TLS: the server's certificate checked against the system roots plus `ca_file`
    /// (unless `verify` is off), no client certificate.
    pub fn server(ca_file: Option<PathBuf>, verify: bool) -> Self {
        TlsOptions {
            ca_file,
            client_cert: None,
            verify,
        }
    }
}

/// An HTTP client with its own TLS trust (`ca_file` added to the system roots), client
/// certificate and request timeout. Errors name the file and the config key under `key_prefix`
/// so the operator can fix them.
pub fn http_client_with_tls(
    settings: &HttpSettings,
    tls: &TlsOptions,
    timeout: Duration,
    key_prefix: &str,
) -> Result<reqwest::Client, String> {
    let mut builder = http_builder(settings, timeout).danger_accept_invalid_certs(!tls.verify);
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

/// The HTTP client of one endpoint configured under `key` (e.g. `sinks.siem`) at `url`:
/// [`http_client_with_tls`] with the endpoint's request timeout (`timeout_secs`, seconds), its
/// errors a [`SetupError`] naming the key; warns when `tls.verify` is off.
pub fn endpoint_client(
    settings: &HttpSettings,
    tls: &TlsOptions,
    timeout_secs: f64,
    key: &str,
    url: &str,
) -> Result<reqwest::Client, SetupError> {
    if !tls.verify {
        warn_unverified(key, url);
    }
    http_client_with_tls(settings, tls, Duration::from_secs_f64(timeout_secs), key)
        .map_err(|e| SetupError::keyed(key, e))
}

/// Says, at start-up, that the endpoint configured under `key` at `address` is reached without
/// verifying its certificate (`tls_verify = false`).
pub fn warn_unverified(key: &str, address: &str) {
    tracing::warn!(config = %key, %address,
        "TLS certificate verification is OFF for {key} (tls_verify = false)");
}

/// A rustls client configuration for a raw TLS connection: with `verify` off any server
/// certificate is accepted; otherwise `ca_file` alone is trusted when given (a private CA), else
/// the platform's verifier and roots. Errors name the config key under `key_prefix`.
pub fn tls_client_config(
    tls: &TlsOptions,
    key_prefix: &str,
) -> Result<rustls::ClientConfig, String> {
    install_crypto_provider();
    let key = key_prefix;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("{key}: {e}"))?;
    let builder = if !tls.verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
    } else if let Some(path) = &tls.ca_file {
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("{key}.ca_file {}: {e}", path.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("{key}.ca_file {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{key}.ca_file {}: {e}", path.display()))?;
        }
        builder.with_root_certificates(roots)
    } else {
        let verifier = rustls_platform_verifier::Verifier::new(provider)
            .map_err(|e| format!("{key}: system roots: {e}"))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
    };
    match &tls.client_cert {
        Some((cert, private)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<_, _>>())
                .map_err(|e| format!("{key}.client_cert_file {}: {e}", cert.display()))?;
            let pk = PrivateKeyDer::from_pem_file(private)
                .map_err(|e| format!("{key}.client_key_file {}: {e}", private.display()))?;
            builder
                .with_client_auth_cert(chain, pk)
                .map_err(|e| format!("{key}.client_cert_file: {e}"))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// Accepts any server certificate: only when the operator set `tls_verify = false`.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why a response body was not read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is larger than the caller's bound (announced or counted while streaming).
    #[error("the response is larger than {max} bytes")]
    TooLarge {
        /// The bound, in bytes.
        max: u64,
    },
    /// The connection failed while the body was arriving.
    #[error("body could not be read: {0}")]
    Transport(String),
}

/// Reads a response body as text, at most `max` bytes of it: a broken or hostile server that
/// streams without end is refused instead of exhausting memory. Bytes that are not UTF-8 are
/// replaced, as `Response::text` does.
pub async fn read_body(mut response: reqwest::Response, max: u64) -> Result<String, BodyError> {
    if response.content_length().is_some_and(|n| n > max) {
        return Err(BodyError::TooLarge { max });
    }
    let mut body = Vec::with_capacity(response.content_length().unwrap_or(0).min(max) as usize);
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| BodyError::Transport(transport_detail(&e)))?
    {
        if (body.len() + chunk.len()) as u64 > max {
            return Err(BodyError::TooLarge { max });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(match String::from_utf8(body) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// An HTTP request that got no response (refused, timed out, reset).
#[derive(Debug, thiserror::Error)]
#[error("{url} unavailable: {detail}")]
pub struct TransportError {
    /// Request URL (never with credentials).
    pub url: String,
    /// What failed, with its innermost cause.
    pub detail: String,
}

/// Sends a request; a transport failure (refused, timeout, reset) becomes a [`TransportError`].
pub async fn send(
    request: reqwest::RequestBuilder,
    url: &str,
) -> Result<reqwest::Response, TransportError> {
    request.send().await.map_err(|e| TransportError {
        url: url.to_string(),
        detail: transport_detail(&e),
    })
}

/// A transport failure in a few words and its innermost cause (reqwest's own text repeats the
/// URL, which may be long).
pub fn transport_detail(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "transport error"
    };
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
    fn tls_configuration_errors_name_the_key_and_file() {
        let missing = PathBuf::from("/nonexistent/secrelay-ca.pem");
        let tls = TlsOptions {
            ca_file: Some(missing.clone()),
            client_cert: None,
            verify: true,
        };
        let err = tls_client_config(&tls, "sinks.siem").unwrap_err();
        assert!(
            err.starts_with("sinks.siem.ca_file /nonexistent/secrelay-ca.pem"),
            "{err}"
        );
        // With verification off the CA file is not read (any certificate is accepted).
        let tls = TlsOptions {
            verify: false,
            ..tls
        };
        assert!(tls_client_config(&tls, "sinks.siem").is_ok());
        let tls = TlsOptions {
            ca_file: Some(missing),
            client_cert: None,
            verify: true,
        };
        let settings = HttpSettings {
            timeout_secs: 5.0,
            connect_timeout_secs: 5.0,
            max_response_bytes: 1024,
        };
        let err =
            http_client_with_tls(&settings, &tls, Duration::from_secs(1), "sinks.hec").unwrap_err();
        assert!(err.starts_with("sinks.hec.ca_file "), "{err}");
    }
}
