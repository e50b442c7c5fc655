//! [`SourceSettings`]: one `[sources.<id>]` table, whose `type` key selects the vendor's settings;
//! the settings-side half of the vendor registry (`vendors.rs` builds the sources).
//!
//! Owns: the `type` → vendor settings choice and the few facts every source has (sinks, interval,
//! enabled, look-back, durations), dispatched to the vendor's own settings file. Must not: check or
//! resolve anything itself (each vendor's `validate` does). Invariant: lives under `settings` so
//! that settings depend on nothing above them.

use serde::Deserialize;

use super::{Code42Settings, JamfSettings, SettingsError, SophosSettings, TenableScSettings};

/// One `[sources.<id>]` table, selected by its `type` key.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceSettings {
    /// `type = "sophos"`: Sophos Central SIEM events and alerts.
    Sophos(SophosSettings),
    /// `type = "code42"`: Code42 / Incydr file events, alerts and sessions.
    Code42(Code42Settings),
    /// `type = "tenable_sc"`: Tenable Security Center vulnerabilities.
    TenableSc(TenableScSettings),
    /// `type = "jamf"`: Jamf Pro computer inventory and fleet views.
    Jamf(JamfSettings),
}

impl SourceSettings {
    /// Sink names this source's events are routed to.
    pub fn sinks(&self) -> &[String] {
        match self {
            SourceSettings::Sophos(s) => &s.sinks,
            SourceSettings::Code42(s) => &s.sinks,
            SourceSettings::TenableSc(s) => &s.sinks,
            SourceSettings::Jamf(s) => &s.sinks,
        }
    }

    /// Poll interval once caught up, in seconds.
    pub fn interval_secs(&self) -> f64 {
        match self {
            SourceSettings::Sophos(s) => s.interval_secs,
            SourceSettings::Code42(s) => s.interval_secs,
            SourceSettings::TenableSc(s) => s.interval_secs,
            SourceSettings::Jamf(s) => s.interval_secs,
        }
    }

    /// Whether the source runs at all.
    pub fn enabled(&self) -> bool {
        match self {
            SourceSettings::Sophos(s) => s.enabled,
            SourceSettings::Code42(s) => s.enabled,
            SourceSettings::TenableSc(s) => s.enabled,
            SourceSettings::Jamf(s) => s.enabled,
        }
    }

    /// How far back this source may re-fetch, in hours: seen ids must outlive it.
    pub fn lookback_hours(&self) -> u64 {
        match self {
            SourceSettings::Sophos(_) => 24,
            SourceSettings::Code42(s) => {
                let lookback = u64::from(s.initial_lookback_hours.max(s.session_window_hours));
                lookback + u64::from(s.overlap_minutes).div_ceil(60)
            }
            SourceSettings::TenableSc(s) => {
                u64::from(s.initial_lookback_days) * 24 + u64::from(s.overlap_hours)
            }
            // Inventory is re-read from the stored report date; a day covers any boundary repeat.
            SourceSettings::Jamf(_) => 24,
        }
    }

    /// Where a first poll (or one after `--reset`) starts, in hours back from now; `None` for a
    /// source without a time window (Jamf inventory is read whole). Backfill progress uses it.
    pub fn initial_lookback_hours(&self) -> Option<u64> {
        match self {
            SourceSettings::Sophos(s) => Some(u64::from(s.initial_lookback_hours)),
            SourceSettings::Code42(s) => Some(u64::from(s.initial_lookback_hours)),
            SourceSettings::TenableSc(s) => Some(u64::from(s.initial_lookback_days) * 24),
            SourceSettings::Jamf(_) => None,
        }
    }

    /// Durations of this source's own, in seconds, by key name: each must be above 0.
    pub fn durations(&self) -> Vec<(&'static str, f64)> {
        let mut found = vec![("interval_secs", self.interval_secs())];
        if let SourceSettings::TenableSc(t) = self {
            found.push(("timeout_secs", t.timeout_secs));
        }
        found
    }

    /// The vendor's own checks at `at` (`sources.<id>`), secrets resolved.
    pub fn validate(&mut self, at: &str) -> Result<(), SettingsError> {
        match self {
            SourceSettings::Sophos(s) => s.validate(at),
            SourceSettings::Code42(s) => s.validate(at),
            SourceSettings::TenableSc(s) => s.validate(at),
            SourceSettings::Jamf(s) => s.validate(at),
        }
    }
}
