//! [`AnySink`]: a configured sink of any transport, built by one function per transport from its
//! settings.
//!
//! Owns: which `type` of `[sinks.<name>]` builds which sink, and the delegation of [`Sink`] to it.
//! Must not: name a vendor — sinks are handed the [`Mappings`] of the sources routed to them.
//! Invariant: a sink that cannot be built is a [`SetupError`] naming its key, before anything runs.

use std::sync::Arc;

use crate::mapping::Mappings;
use crate::settings::{FileSinkSettings, HttpSettings, ItopSettings, SetupError, SinkSettings};
use crate::settings::{SplunkHecSettings, SyslogSinkSettings};
use crate::sinks::file::FileSink;
use crate::sinks::itop::ItopSink;
use crate::sinks::splunk_hec::HecSink;
use crate::sinks::syslog::SyslogSink;
use crate::sinks::{BatchEncoder, Delivered, Sink, SinkError};
use crate::store::{OutboxRecord, Store};

/// What building a sink needs besides its own settings.
#[derive(Debug, Clone)]
pub struct SinkSetup<'a> {
    /// `[http]`: timeouts for the sinks that speak HTTP.
    pub http: &'a HttpSettings,
    /// Each source's record mapping (CEF fields, sourcetype).
    pub mappings: &'a Mappings,
    /// The state database, for sinks that keep state of their own (HEC: its channel and acks);
    /// `None` when it could not be opened (`check` still checks the other sinks).
    pub store: Option<&'a Store>,
}

/// A configured sink of any transport.
pub enum AnySink {
    /// NDJSON files.
    File(FileSink),
    /// Syslog over UDP, TCP or TLS.
    Syslog(SyslogSink),
    /// Splunk HTTP Event Collector.
    SplunkHec(HecSink),
    /// iTop tickets.
    Itop(ItopSink),
}

/// What a sink of any transport encodes a batch to, ahead of delivering it.
pub enum AnyEncoded {
    /// Syslog frames.
    Syslog(Vec<u8>),
    /// HEC envelopes and request bodies.
    SplunkHec(crate::sinks::splunk_hec::EncodedBatch),
}

/// Builds the sink `name` from its settings: one build function per transport.
pub fn build_sink(
    name: &str,
    settings: &SinkSettings,
    setup: &SinkSetup<'_>,
) -> Result<AnySink, SetupError> {
    match settings {
        SinkSettings::File(f) => file(name, f),
        SinkSettings::Syslog(s) => syslog(name, s, setup),
        SinkSettings::SplunkHec(h) => splunk_hec(name, h, setup),
        SinkSettings::Itop(i) => itop(name, i, setup),
    }
}

fn file(name: &str, settings: &FileSinkSettings) -> Result<AnySink, SetupError> {
    Ok(AnySink::File(FileSink::new(name, settings.clone())))
}

fn syslog(
    name: &str,
    settings: &SyslogSinkSettings,
    setup: &SinkSetup<'_>,
) -> Result<AnySink, SetupError> {
    SyslogSink::new(name, settings.clone(), setup.mappings.clone()).map(AnySink::Syslog)
}

fn splunk_hec(
    name: &str,
    settings: &SplunkHecSettings,
    setup: &SinkSetup<'_>,
) -> Result<AnySink, SetupError> {
    let store = setup.store.ok_or_else(|| {
        SetupError::new(
            format!("sinks.{name}"),
            "needs the state database (its channel lives there)",
        )
    })?;
    HecSink::new(
        name,
        settings.clone(),
        setup.http,
        setup.mappings.clone(),
        store.clone(),
    )
    .map(AnySink::SplunkHec)
}

fn itop(name: &str, settings: &ItopSettings, setup: &SinkSetup<'_>) -> Result<AnySink, SetupError> {
    let store = setup.store.ok_or_else(|| {
        SetupError::new(
            format!("sinks.{name}"),
            "needs the state database (which alert follows which ticket lives there)",
        )
    })?;
    ItopSink::new(
        name,
        settings,
        setup.http,
        setup.mappings.clone(),
        store.clone(),
    )
    .map(AnySink::Itop)
}

impl AnySink {
    /// What `secrelay check` says of a sink of `settings` whose check passed.
    pub fn checked(settings: &SinkSettings) -> String {
        match settings {
            SinkSettings::File(_) => "writable".to_string(),
            SinkSettings::Syslog(s) => format!("connected to {}", s.address),
            SinkSettings::SplunkHec(h) => format!("{} is healthy", h.url),
            SinkSettings::Itop(i) => format!("{} accepts the login", i.endpoint()),
        }
    }
}

impl Sink for AnySink {
    type Encoded = AnyEncoded;

    fn name(&self) -> &str {
        match self {
            AnySink::File(s) => s.name(),
            AnySink::Syslog(s) => s.name(),
            AnySink::SplunkHec(s) => s.name(),
            AnySink::Itop(s) => s.name(),
        }
    }

    async fn deliver(&mut self, batch: &[OutboxRecord]) -> Result<Delivered, SinkError> {
        match self {
            AnySink::File(s) => s.deliver(batch).await,
            AnySink::Syslog(s) => s.deliver(batch).await,
            AnySink::SplunkHec(s) => s.deliver(batch).await,
            AnySink::Itop(s) => s.deliver(batch).await,
        }
    }

    fn encoder(&self) -> Option<BatchEncoder<AnyEncoded>> {
        match self {
            AnySink::Syslog(s) => {
                let encode = s.encoder()?;
                Some(Arc::new(move |batch: &[OutboxRecord]| {
                    AnyEncoded::Syslog(encode(batch))
                }))
            }
            AnySink::SplunkHec(s) => {
                let encode = s.encoder()?;
                Some(Arc::new(move |batch: &[OutboxRecord]| {
                    AnyEncoded::SplunkHec(encode(batch))
                }))
            }
            AnySink::File(_) | AnySink::Itop(_) => None,
        }
    }

    async fn deliver_encoded(
        &mut self,
        batch: &[OutboxRecord],
        encoded: AnyEncoded,
    ) -> Result<Delivered, SinkError> {
        match (self, encoded) {
            (AnySink::Syslog(s), AnyEncoded::Syslog(frames)) => {
                s.deliver_encoded(batch, frames).await
            }
            (AnySink::SplunkHec(s), AnyEncoded::SplunkHec(bodies)) => {
                s.deliver_encoded(batch, bodies).await
            }
            // Encoded by another sink's encoder: cannot happen, as each loop runs its own sink's.
            (other, _) => other.deliver(batch).await,
        }
    }

    async fn check(&mut self) -> Result<(), SinkError> {
        match self {
            AnySink::File(s) => s.check().await,
            AnySink::Syslog(s) => s.check().await,
            AnySink::SplunkHec(s) => s.check().await,
            AnySink::Itop(s) => s.check().await,
        }
    }

    async fn close(&mut self) {
        match self {
            AnySink::File(s) => s.close().await,
            AnySink::Syslog(s) => s.close().await,
            AnySink::SplunkHec(s) => s.close().await,
            AnySink::Itop(s) => s.close().await,
        }
    }
}
