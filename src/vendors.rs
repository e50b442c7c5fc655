//! The vendor registry: with `settings/sources.rs`, the only place outside a vendor's own folder
//! (`sources/<vendor>/`, `settings/<vendor>.rs`) that names vendors.
//!
//! Owns: the one build function per vendor ([`build_source`] → [`AnySource`]), and which
//! [`RecordMapping`] sinks use for a source's records ([`mappings`]). Its settings-side twin is
//! `settings/sources.rs` ([`SourceSettings`]: which `type` selects which vendor's settings), kept
//! there so that settings stay below sources (no module cycle). Must not: hold vendor logic —
//! settings checks, wire types, paging and mappings live in the vendor's folder; this file only
//! dispatches. Invariant: adding a vendor means its folder, its settings file, one variant in each
//! enum here and in `settings/sources.rs`, its arm in each `match` (the compiler lists every one),
//! and its keys in `config/default.toml`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::encode::cef::CefRecord;
use crate::event::{Page, Partition};
use crate::mapping::{Mappings, RecordMapping};
use crate::settings::{
    Code42Settings, HttpSettings, JamfSettings, SetupError, SophosSettings, SourceSettings,
    TenableScSettings,
};
use crate::sources::code42::{mapping::Code42Mapping, Code42Source};
use crate::sources::jamf::{mapping::JamfMapping, JamfSource};
use crate::sources::sophos::{mapping::SophosMapping, SophosSource};
use crate::sources::tenable_sc::{mapping::TenableScMapping, TenableScSource};
use crate::sources::{Source, SourceError};

/// Which vendor a configured source speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// Sophos Central.
    Sophos,
    /// Code42 / Incydr.
    Code42,
    /// Tenable Security Center.
    TenableSc,
    /// Jamf Pro.
    Jamf,
}

impl Vendor {
    /// The vendor of a source's settings.
    pub fn of(settings: &SourceSettings) -> Vendor {
        match settings {
            SourceSettings::Sophos(_) => Vendor::Sophos,
            SourceSettings::Code42(_) => Vendor::Code42,
            SourceSettings::TenableSc(_) => Vendor::TenableSc,
            SourceSettings::Jamf(_) => Vendor::Jamf,
        }
    }

    /// How sinks show this vendor's records.
    pub fn mapping(self) -> Arc<dyn RecordMapping> {
        match self {
            Vendor::Sophos => Arc::new(SophosMapping),
            Vendor::Code42 => Arc::new(Code42Mapping),
            Vendor::TenableSc => Arc::new(TenableScMapping),
            Vendor::Jamf => Arc::new(JamfMapping),
        }
    }

    /// The CEF form of a record of `stream` (see [`RecordMapping::cef`]).
    pub fn cef(self, stream: &str, record: &serde_json::Value, severity: u8) -> CefRecord {
        self.mapping().cef(stream, record, severity)
    }
}

/// The mapping of every configured source, disabled ones included (their records may still wait
/// in the outbox): what sinks are handed.
pub fn mappings(sources: &BTreeMap<String, SourceSettings>) -> Mappings {
    sources
        .iter()
        .map(|(id, source)| (id.clone(), Vendor::of(source)))
        .collect::<HashMap<_, _>>()
        .into()
}

impl From<HashMap<String, Vendor>> for Mappings {
    fn from(vendors: HashMap<String, Vendor>) -> Self {
        let mut mappings = Mappings::new();
        for (source, vendor) in vendors {
            mappings.insert(source, vendor.mapping());
        }
        mappings
    }
}

/// What building a source needs besides its own settings.
#[derive(Debug, Clone)]
pub struct SourceSetup<'a> {
    /// `[http]`: timeouts for sources that build their own client (their own TLS files).
    pub http: &'a HttpSettings,
    /// The shared HTTP client.
    pub client: &'a reqwest::Client,
    /// Overrides the source's initial look-back (`backfill --days`); `None`: its own setting.
    pub lookback: Option<chrono::Duration>,
}

/// A configured source of any vendor.
pub enum AnySource {
    /// Sophos Central.
    Sophos(SophosSource),
    /// Code42 / Incydr.
    Code42(Code42Source),
    /// Tenable Security Center.
    TenableSc(TenableScSource),
    /// Jamf Pro.
    Jamf(JamfSource),
}

/// Builds the source `id` from its settings: one build function per vendor.
pub fn build_source(
    id: &str,
    settings: &SourceSettings,
    setup: &SourceSetup<'_>,
) -> Result<AnySource, SetupError> {
    match settings {
        SourceSettings::Sophos(s) => sophos(id, s, setup),
        SourceSettings::Code42(s) => code42(id, s, setup),
        SourceSettings::TenableSc(s) => tenable_sc(id, s, setup),
        SourceSettings::Jamf(s) => jamf(id, s, setup),
    }
}

fn sophos(id: &str, s: &SophosSettings, setup: &SourceSetup<'_>) -> Result<AnySource, SetupError> {
    SophosSource::new(id, s.clone(), setup.client.clone(), setup.lookback).map(AnySource::Sophos)
}

fn code42(id: &str, s: &Code42Settings, setup: &SourceSetup<'_>) -> Result<AnySource, SetupError> {
    Code42Source::new(id, s.clone(), setup.client.clone(), setup.lookback).map(AnySource::Code42)
}

fn tenable_sc(
    id: &str,
    s: &TenableScSettings,
    setup: &SourceSetup<'_>,
) -> Result<AnySource, SetupError> {
    TenableScSource::new(id, s.clone(), setup.http, setup.lookback).map(AnySource::TenableSc)
}

fn jamf(id: &str, s: &JamfSettings, setup: &SourceSetup<'_>) -> Result<AnySource, SetupError> {
    // Jamf's inventory is a current state: `--days` does not apply.
    JamfSource::new(id, s.clone(), setup.client.clone()).map(AnySource::Jamf)
}

impl Source for AnySource {
    fn id(&self) -> &str {
        match self {
            AnySource::Sophos(s) => s.id(),
            AnySource::Code42(s) => s.id(),
            AnySource::TenableSc(s) => s.id(),
            AnySource::Jamf(s) => s.id(),
        }
    }

    async fn partitions(&self) -> Result<Vec<Partition>, SourceError> {
        match self {
            AnySource::Sophos(s) => s.partitions().await,
            AnySource::Code42(s) => s.partitions().await,
            AnySource::TenableSc(s) => s.partitions().await,
            AnySource::Jamf(s) => s.partitions().await,
        }
    }

    async fn poll(&self, partition: &Partition, cursor: Option<&str>) -> Result<Page, SourceError> {
        match self {
            AnySource::Sophos(s) => s.poll(partition, cursor).await,
            AnySource::Code42(s) => s.poll(partition, cursor).await,
            AnySource::TenableSc(s) => s.poll(partition, cursor).await,
            AnySource::Jamf(s) => s.poll(partition, cursor).await,
        }
    }

    fn horizon(&self) -> Option<Duration> {
        match self {
            AnySource::Sophos(s) => s.horizon(),
            AnySource::Code42(s) => s.horizon(),
            AnySource::TenableSc(s) => s.horizon(),
            AnySource::Jamf(s) => s.horizon(),
        }
    }

    async fn close(&self) {
        match self {
            AnySource::Sophos(s) => s.close().await,
            AnySource::Code42(s) => s.close().await,
            AnySource::TenableSc(s) => s.close().await,
            AnySource::Jamf(s) => s.close().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_sourcetypes_name_vendor_and_record_kind() {
        let sourcetype = |vendor: Option<Vendor>, stream: &str| {
            let mut vendors = HashMap::new();
            if let Some(v) = vendor {
                vendors.insert("s".to_string(), v);
            }
            Mappings::from(vendors).of("s").sourcetype(stream)
        };
        assert_eq!(
            sourcetype(Some(Vendor::Code42), "file_events"),
            "code42:file_event"
        );
        assert_eq!(
            sourcetype(Some(Vendor::Sophos), "alerts"),
            "sophos:central:alert"
        );
        assert_eq!(
            sourcetype(Some(Vendor::TenableSc), "vulnerabilities"),
            "tenable:sc:vulnerability"
        );
        assert_eq!(
            sourcetype(Some(Vendor::Jamf), "inventory"),
            "jamf:pro:inventory"
        );
        assert_eq!(sourcetype(None, "x"), "secrelay:x");
    }

    /// Settings built or changed by hand without resolving a secret give a setup error naming
    /// the key, never a source that sends an empty credential to the vendor.
    #[test]
    fn a_source_whose_secret_was_not_resolved_is_a_setup_error_naming_the_key() {
        let text = r#"
            [sinks.archive]
            type = "file"
            path = "/tmp/x.ndjson"
            [sources.edr]
            type = "sophos"
            client_id = "id"
            client_secret = "s"
            sinks = ["archive"]
            [sources.vm]
            type = "tenable_sc"
            url = "https://sc.example"
            access_key = "a"
            secret_key = "s"
            sinks = ["archive"]
        "#;
        let mut settings = crate::settings::Settings::from_toml(text).unwrap();
        if let Some(SourceSettings::Sophos(s)) = settings.sources.get_mut("edr") {
            s.client_secret = None;
        }
        if let Some(SourceSettings::TenableSc(s)) = settings.sources.get_mut("vm") {
            s.secret_key = Some(crate::settings::Secret::new(""));
        }
        let client = crate::net::http_client(&settings.http).unwrap();
        let setup = SourceSetup {
            http: &settings.http,
            client: &client,
            lookback: None,
        };
        for (id, key) in [
            ("edr", "sources.edr.client_secret"),
            ("vm", "sources.vm.secret_key"),
        ] {
            let Err(e) = build_source(id, &settings.sources[id], &setup) else {
                panic!("{id}: built without a secret")
            };
            assert_eq!(e.key, key);
        }
    }
}
