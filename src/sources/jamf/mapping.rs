//! Jamf Pro's [`RecordMapping`]: inventory records mapped field by field, the fleet views as a
//! generic line carrying their JSON; sourcetypes `jamf:pro:<stream>`.

use serde_json::Value;

use crate::encode::cef::CefRecord;
use crate::mapping::{generic_cef, RecordMapping};

/// How sinks show Jamf Pro records.
#[derive(Debug, Clone, Copy, Default)]
pub struct JamfMapping;

impl RecordMapping for JamfMapping {
    fn cef(&self, stream: &str, record: &Value, severity: u8) -> CefRecord {
        match stream {
            "inventory" => super::cef::inventory(record),
            other => generic_cef("Jamf", "Jamf Pro", other, record, severity),
        }
    }

    fn sourcetype(&self, stream: &str) -> String {
        format!("jamf:pro:{stream}")
    }
}
