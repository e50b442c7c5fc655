//! Code42 / Incydr's [`RecordMapping`]: file events, alerts and sessions each with their own CEF
//! mapping, sourcetypes `code42:<kind>`.

use serde_json::Value;

use crate::encode::cef::CefRecord;
use crate::mapping::{generic_cef, singular, RecordMapping};

/// How sinks show Code42 / Incydr records.
#[derive(Debug, Clone, Copy, Default)]
pub struct Code42Mapping;

impl RecordMapping for Code42Mapping {
    fn cef(&self, stream: &str, record: &Value, severity: u8) -> CefRecord {
        match stream {
            "file_events" => super::cef::file_event(record),
            "alerts" => super::cef::alert(record),
            "sessions" => super::cef::session(record),
            other => generic_cef("Code42", "Incydr", other, record, severity),
        }
    }

    fn sourcetype(&self, stream: &str) -> String {
        format!("code42:{}", singular(stream))
    }
}
