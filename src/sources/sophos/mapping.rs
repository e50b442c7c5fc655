//! Sophos Central's [`RecordMapping`]: every SIEM event and alert through [`super::cef::record`],
//! sourcetypes `sophos:central:<kind>`.

use serde_json::Value;

use crate::encode::cef::CefRecord;
use crate::mapping::{singular, RecordMapping};

/// How sinks show Sophos Central records.
#[derive(Debug, Clone, Copy, Default)]
pub struct SophosMapping;

impl RecordMapping for SophosMapping {
    fn cef(&self, _stream: &str, record: &Value, _severity: u8) -> CefRecord {
        super::cef::record(record)
    }

    fn sourcetype(&self, stream: &str) -> String {
        format!("sophos:central:{}", singular(stream))
    }
}
