//! Syslog sink: CEF (or the JSON envelope) in RFC 5424 or RFC 3164 messages, over UDP, TCP or TLS
//! with octet-counting or LF framing (reference/sink-protocols.md §1–2).
//!
//! Owns: the connection (opened at start and in `check`, reopened after a failure), TLS trust and
//! client certificates, and UDP truncation. Must not: build header or CEF bytes itself (see
//! `encode::syslog`, `encode::cef` and each source's mapping). Invariant: a TCP/TLS batch is
//! reported delivered only after every byte was written and flushed; after a failed write the
//! connection is dropped and the whole batch is sent again on a new one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

use crate::encode::syslog::{self as frame, Framing, Header, HeaderFormat};
use crate::settings::{
    SyslogFormat, SyslogFraming, SyslogPayload, SyslogSinkSettings, SyslogTransport,
};
use crate::sinks::{Delivered, Sink, SinkError};
use crate::sources::Vendor;
use crate::store::OutboxRecord;

enum Connection {
    Udp(UdpSocket),
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// The syslog sink.
pub struct SyslogSink {
    name: String,
    settings: SyslogSinkSettings,
    facility: u8,
    hostname: String,
    vendors: HashMap<String, Vendor>,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    connection: Option<Connection>,
    /// UDP messages cut to `udp_max_bytes` since start.
    truncated: u64,
}

/// This machine's host name, for the HOSTNAME field.
pub fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
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

fn tls_connector(
    name: &str,
    s: &SyslogSinkSettings,
) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), String> {
    crate::sources::http::install_crypto_provider();
    let key = format!("sinks.{name}");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("{key}: {e}"))?;
    let builder = if !s.tls_verify {
        tracing::warn!(sink = %name, address = %s.address,
            "TLS certificate verification is OFF for this sink (tls_verify = false)");
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
    } else if let Some(path) = &s.ca_file {
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
    let config = match (&s.client_cert_file, &s.client_key_file) {
        (Some(cert), Some(private)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<_, _>>())
                .map_err(|e| format!("{key}.client_cert_file {}: {e}", cert.display()))?;
            let pk = PrivateKeyDer::from_pem_file(private)
                .map_err(|e| format!("{key}.client_key_file {}: {e}", private.display()))?;
            builder
                .with_client_auth_cert(chain, pk)
                .map_err(|e| format!("{key}.client_cert_file: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
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

impl SyslogSink {
    /// A sink for `settings`; `vendors` maps source ids to their vendor for the CEF mapping.
    /// Fails (naming the config key) when a TLS file cannot be used.
    pub fn new(
        name: &str,
        settings: SyslogSinkSettings,
        vendors: HashMap<String, Vendor>,
    ) -> Result<Self, String> {
        let tls = match settings.transport {
            SyslogTransport::Tls => Some(tls_connector(name, &settings)?),
            _ => None,
        };
        Ok(SyslogSink {
            name: name.to_string(),
            facility: frame::facility_number(&settings.facility).unwrap_or(20),
            hostname: settings.hostname.clone().unwrap_or_else(local_hostname),
            settings,
            vendors,
            tls,
            connection: None,
            truncated: 0,
        })
    }

    fn unavailable(&self, detail: String) -> SinkError {
        SinkError::Unavailable {
            sink: self.name.clone(),
            detail: format!(
                "{} {}: {detail}",
                transport_name(self.settings.transport),
                self.settings.address
            ),
            retry_after: None,
        }
    }

    /// The message (header and payload, unframed) for one record.
    pub fn message(&self, record: &OutboxRecord, out: &mut Vec<u8>) {
        let payload = match self.settings.payload {
            SyslogPayload::Json => {
                let mut line = Vec::with_capacity(record.record.len() + 200);
                crate::encode::json::write_line(record, &mut line);
                line.pop();
                line
            }
            SyslogPayload::Cef => {
                let value: serde_json::Value =
                    serde_json::from_str(&record.record).unwrap_or(serde_json::Value::Null);
                let vendor = self
                    .vendors
                    .get(&record.source)
                    .copied()
                    .unwrap_or(Vendor::Sophos);
                vendor
                    .cef(&record.stream, &value, record.severity)
                    .to_line()
                    .into_bytes()
            }
        };
        // The event's time, not the send time: a batch sent again after a failure is the same
        // bytes, and receivers that take the header time see when it happened.
        let header = Header {
            facility: self.facility,
            severity: frame::severity_for(record.severity),
            time: record.event_time,
            hostname: &self.hostname,
            app_name: &self.settings.app_name,
            procid: Some(std::process::id()),
            msgid: &record.stream,
        };
        let format = match self.settings.format {
            SyslogFormat::Rfc5424 => HeaderFormat::Rfc5424,
            SyslogFormat::Rfc3164 => HeaderFormat::Rfc3164,
        };
        frame::write_message(format, &header, &payload, out);
    }

    async fn connect(&mut self) -> Result<(), SinkError> {
        let timeout = Duration::from_secs_f64(self.settings.timeout_secs);
        let address = self.settings.address.clone();
        let connection = match self.settings.transport {
            SyslogTransport::Udp => {
                let target = tokio::net::lookup_host(&address)
                    .await
                    .map_err(|e| self.unavailable(format!("cannot resolve: {e}")))?
                    .next()
                    .ok_or_else(|| self.unavailable("resolves to no address".into()))?;
                let local = if target.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                };
                let socket = UdpSocket::bind(local)
                    .await
                    .map_err(|e| self.unavailable(e.to_string()))?;
                socket
                    .connect(target)
                    .await
                    .map_err(|e| self.unavailable(e.to_string()))?;
                Connection::Udp(socket)
            }
            SyslogTransport::Tcp | SyslogTransport::Tls => {
                let tcp = tokio::time::timeout(timeout, TcpStream::connect(&address))
                    .await
                    .map_err(|_| self.unavailable("connect timed out".into()))?
                    .map_err(|e| self.unavailable(format!("connect failed: {e}")))?;
                let _ = tcp.set_nodelay(true);
                match &self.tls {
                    None => Connection::Tcp(tcp),
                    Some((connector, server)) => {
                        let stream =
                            tokio::time::timeout(timeout, connector.connect(server.clone(), tcp))
                                .await
                                .map_err(|_| self.unavailable("TLS handshake timed out".into()))?
                                .map_err(|e| {
                                    self.unavailable(format!("TLS handshake failed: {e}"))
                                })?;
                        Connection::Tls(Box::new(stream))
                    }
                }
            }
        };
        tracing::info!(sink = %self.name, address = %address, transport = transport_name(self.settings.transport), "connected");
        self.connection = Some(connection);
        Ok(())
    }
}

fn transport_name(t: SyslogTransport) -> &'static str {
    match t {
        SyslogTransport::Udp => "udp",
        SyslogTransport::Tcp => "tcp",
        SyslogTransport::Tls => "tls",
    }
}

/// Cuts `message` to at most `max` bytes on a UTF-8 character boundary.
fn cut(message: &mut Vec<u8>, max: usize) -> bool {
    if message.len() <= max {
        return false;
    }
    let mut end = max;
    while end > 0 && (message[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    message.truncate(end);
    true
}

impl Sink for SyslogSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&mut self, batch: &[OutboxRecord]) -> Result<Delivered, SinkError> {
        if self.connection.is_none() {
            self.connect().await?;
        }
        let timeout = Duration::from_secs_f64(self.settings.timeout_secs);
        let framing = match self.settings.framing {
            SyslogFraming::OctetCounting => Framing::OctetCounting,
            SyslogFraming::Lf => Framing::Lf,
        };
        let mut message = Vec::with_capacity(1024);
        let mut frames = Vec::new();
        let mut datagrams = Vec::new();
        let udp = matches!(self.connection, Some(Connection::Udp(_)));
        for record in batch {
            message.clear();
            self.message(record, &mut message);
            if udp {
                if cut(&mut message, self.settings.udp_max_bytes) {
                    self.truncated += 1;
                }
                datagrams.push(message.clone());
            } else {
                frame::frame(framing, &message, &mut frames);
            }
        }
        if udp && self.truncated > 0 {
            tracing::warn!(sink = %self.name, truncated_total = self.truncated, max = self.settings.udp_max_bytes,
                "UDP messages cut to udp_max_bytes (use TCP or TLS for long records)");
        }
        let written = match self.connection.as_mut() {
            Some(Connection::Udp(socket)) => {
                let mut result = Ok(());
                for datagram in &datagrams {
                    if let Err(e) = socket.send(datagram).await {
                        result = Err(e);
                        break;
                    }
                }
                result
            }
            Some(Connection::Tcp(stream)) => tokio::time::timeout(timeout, async {
                stream.write_all(&frames).await?;
                stream.flush().await
            })
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "write timed out",
                ))
            }),
            Some(Connection::Tls(stream)) => tokio::time::timeout(timeout, async {
                stream.write_all(&frames).await?;
                stream.flush().await
            })
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "write timed out",
                ))
            }),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "not connected",
            )),
        };
        match written {
            Ok(()) => Ok(Delivered::default()),
            Err(e) => {
                // The receiver may hold part of the batch; all of it goes again on a new connection.
                self.connection = None;
                Err(self.unavailable(format!("write failed: {e}")))
            }
        }
    }

    async fn check(&mut self) -> Result<(), SinkError> {
        self.connection = None;
        self.connect().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_cut_never_splits_a_character() {
        let mut m = "aé".as_bytes().to_vec();
        assert!(cut(&mut m, 2));
        assert_eq!(m, b"a");
        let mut short = b"ok".to_vec();
        assert!(!cut(&mut short, 10));
    }
}
