//! Tenable Security Center's [`RecordMapping`]: findings as CEF (`mitigated` ones marked so),
//! sourcetypes `tenable:sc:<kind>`.

use serde_json::Value;

use super::cef::{finding, FindingKind};
use crate::encode::cef::CefRecord;
use crate::mapping::{singular, RecordMapping};

/// How sinks show Tenable.sc records.
#[derive(Debug, Clone, Copy, Default)]
pub struct TenableScMapping;

impl RecordMapping for TenableScMapping {
    fn cef(&self, stream: &str, record: &Value, _severity: u8) -> CefRecord {
        match stream {
            "mitigated" => finding(record, FindingKind::Mitigated),
            _ => finding(record, FindingKind::Open),
        }
    }

    fn sourcetype(&self, stream: &str) -> String {
        format!("tenable:sc:{}", singular(stream))
    }
}
