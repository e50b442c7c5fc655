//! TLS for the syslog sink: the rustls connector from the sink's trust and client-certificate
//! settings, and the server name the receiver's certificate must carry.
//!
//! Owns: reading `tls_server_name` (or the host of `address`). Must not: build rustls
//! configurations itself (see `crate::net`). Invariant: verification is off only when
//! `tls_verify = false`, and then a WARN says so at start-up.

use std::sync::Arc;

use rustls::pki_types::ServerName;

use crate::net::{tls_client_config, warn_unverified, TlsOptions};
use crate::settings::SyslogSinkSettings;

/// The TLS connector and the name the receiver's certificate must carry.
pub(super) fn tls_connector(
    name: &str,
    s: &SyslogSinkSettings,
) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), String> {
    let key = format!("sinks.{name}");
    if !s.tls_verify {
        warn_unverified(&key, &s.address);
    }
    let tls = TlsOptions {
        ca_file: s.ca_file.clone(),
        client_cert: match (&s.client_cert_file, &s.client_key_file) {
            (Some(cert), Some(private)) => Some((cert.clone(), private.clone())),
            _ => None,
        },
        verify: s.tls_verify,
    };
    let config = tls_client_config(&tls, &key)?;
    let host = match &s.tls_server_name {
        Some(n) => n.clone(),
        None => s
            .address
            .rsplit_once(':')
            .map_or(s.address.as_str(), |(h, _)| h)
            .trim_matches(['[', ']'])
            .to_string(),
    };
    let server = ServerName::try_from(host.clone())
        .map_err(|e| format!("{key}.tls_server_name {host:?}: {e}"))?;
    Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), server))
}
