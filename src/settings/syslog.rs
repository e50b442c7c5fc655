//! `[sinks.<name>]` with `type = "syslog"`: CEF (or JSON) over syslog on UDP, TCP or TLS.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use super::{client_cert_paired, invalid, SettingsError};

/// Network transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyslogTransport {
    /// One message per datagram (RFC 5426); nothing tells the sender about loss.
    Udp,
    /// A TCP stream (RFC 6587).
    Tcp,
    /// TLS over TCP (RFC 5425).
    Tls,
}

/// Stream framing (TCP and TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyslogFraming {
    /// `LEN SP MSG` (default; required on TLS by RFC 5425).
    OctetCounting,
    /// `MSG LF`, for receivers that only split on newlines.
    Lf,
}

/// Header layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyslogFormat {
    /// RFC 5424 (default).
    Rfc5424,
    /// RFC 3164 (BSD).
    Rfc3164,
}

/// What the message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyslogPayload {
    /// ArcSight CEF, mapped per vendor (default).
    Cef,
    /// The JSON event envelope, one line.
    Json,
}

/// `[sinks.<name>]` with `type = "syslog"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogSinkSettings {
    /// Receiver `host:port`. Required.
    pub address: String,
    /// `udp`, `tcp` (default) or `tls`.
    #[serde(default = "tcp")]
    pub transport: SyslogTransport,
    /// `octet_counting` (default) or `lf`; TCP and TLS only.
    #[serde(default = "octet_counting")]
    pub framing: SyslogFraming,
    /// `rfc5424` (default) or `rfc3164`.
    #[serde(default = "rfc5424")]
    pub format: SyslogFormat,
    /// `cef` (default) or `json`.
    #[serde(default = "cef")]
    pub payload: SyslogPayload,
    /// Facility name: `local0`–`local7`, `user`, `auth`, ... Default `local4`. Parsed at load: an
    /// unknown name is a configuration error naming this key.
    #[serde(default = "local4")]
    pub facility: Facility,
    /// HOSTNAME in the header. Default: this machine's host name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// APP-NAME / TAG. Default `secrelay`.
    #[serde(default = "secrelay")]
    pub app_name: String,
    /// Largest UDP datagram, in bytes; longer messages are cut (and counted in the log). Default 2048.
    #[serde(default = "two_k")]
    pub udp_max_bytes: usize,
    /// PEM bundle of CAs trusted for the receiver's certificate (TLS). Default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (TLS, with `client_key_file`).
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// Name to verify in the receiver's certificate. Default: the host part of `address`.
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// Verify the receiver's certificate. Default true; false logs a warning at every start.
    #[serde(default = "super::yes")]
    pub tls_verify: bool,
    /// Connect and write timeout, in seconds. Default 10.
    #[serde(default = "ten")]
    pub timeout_secs: f64,
    /// Records per write + flush. Default 500.
    #[serde(default = "five_hundred")]
    pub batch_size: usize,
    /// TCP/TLS: a connection unused for this many seconds is closed gracefully and a new one
    /// opened for the next batch, so a receiver (or a firewall) that silently dropped it cannot
    /// swallow that batch. 0 keeps connections however long they idle. Default 60.
    #[serde(default = "sixty")]
    pub idle_reconnect_secs: f64,
    /// TCP/TLS: once a connection has carried this many bytes, it is closed in order (the
    /// receiver reads to our end and closes its side) and the next batch opens a new one. Plain
    /// syslog has no receipt: only that close shows the receiver read what it was sent, so the
    /// sink holds everything since the last one in memory and sends it again if the connection
    /// ends any other way. It bounds that memory and the duplicates a receiver restart causes;
    /// smaller means fewer duplicates and more connections. 0: after every batch. Default
    /// 1,048,576 (1 MiB).
    #[serde(default = "one_mib")]
    pub confirm_after_bytes: usize,
}

/// A syslog facility, read from its name (`local4`, `daemon`, ...) when the settings load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facility(u8);

impl Facility {
    /// The facility's number (0–23), as the PRI field uses it.
    pub fn number(self) -> u8 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Facility {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        crate::encode::syslog::facility_number(&name)
            .map(Facility)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "unknown facility {name:?} (local0-local7, user, daemon, auth, ...)"
                ))
            })
    }
}

impl SyslogSinkSettings {
    /// Checks the sink at `at` (`sinks.<name>`): framing against transport, TLS files in pairs,
    /// the UDP datagram size.
    pub fn validate(&mut self, at: &str) -> Result<(), SettingsError> {
        if self.transport == SyslogTransport::Tls && self.framing == SyslogFraming::Lf {
            return Err(invalid(
                &format!("{at}.framing"),
                "TLS syslog uses octet counting (RFC 5425)",
            ));
        }
        client_cert_paired(at, &self.client_cert_file, &self.client_key_file)?;
        if !(64..=65_507).contains(&self.udp_max_bytes) {
            return Err(invalid(
                &format!("{at}.udp_max_bytes"),
                "must be 64 to 65507",
            ));
        }
        Ok(())
    }
}

fn tcp() -> SyslogTransport {
    SyslogTransport::Tcp
}
fn octet_counting() -> SyslogFraming {
    SyslogFraming::OctetCounting
}
fn rfc5424() -> SyslogFormat {
    SyslogFormat::Rfc5424
}
fn cef() -> SyslogPayload {
    SyslogPayload::Cef
}
fn local4() -> Facility {
    Facility(20)
}
fn secrelay() -> String {
    "secrelay".into()
}
fn two_k() -> usize {
    2048
}
fn ten() -> f64 {
    10.0
}
fn sixty() -> f64 {
    60.0
}
fn one_mib() -> usize {
    1 << 20
}

fn five_hundred() -> usize {
    500
}
