//! `[sinks.<name>]` with `type = "file"`: newline-delimited JSON files.

use std::path::PathBuf;

use serde::Deserialize;

use super::{invalid, SettingsError};

/// `[sinks.<name>]` with `type = "file"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkSettings {
    /// The active NDJSON file; rotated files sit beside it. Required.
    pub path: PathBuf,
    /// Rotate once the active file reaches this size, in bytes. Default 104857600 (100 MiB).
    #[serde(default = "hundred_mib")]
    pub rotate_bytes: u64,
    /// Rotated files to keep beside the active one; the oldest are deleted. Default 7.
    #[serde(default = "seven")]
    pub keep_files: usize,
    /// Records per write+fsync. Default 1000.
    #[serde(default = "thousand_usize")]
    pub batch_size: usize,
}
impl FileSinkSettings {
    /// Checks the sink at `at` (`sinks.<name>`).
    pub fn validate(&mut self, at: &str) -> Result<(), SettingsError> {
        if self.keep_files == 0 {
            return Err(invalid(&format!("{at}.keep_files"), "must be at least 1"));
        }
        Ok(())
    }
}

fn seven() -> usize {
    7
}
fn thousand_usize() -> usize {
    1000
}
fn hundred_mib() -> u64 {
    100 * 1024 * 1024
}
