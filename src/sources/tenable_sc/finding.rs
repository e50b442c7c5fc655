//! Tenable.sc findings: a vulndetails row (all strings on the wire) read strictly into an
//! [`Event`], its identity, and the window time the keyset moves by.
//!
//! Must not: make requests or keep state. Invariant: identity is (repository id, ip, dnsName or
//! uuid, pluginID, port, protocol, lastSeen); a number that does not parse rejects the row, never
//! reads as zero.

use chrono::Utc;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::event::{Event, Severity};
use crate::settings::TenableStream;
use crate::sources::SourceError;

/// The fields of a vulndetails row secrelay reads (all strings on the wire).
#[derive(Deserialize)]
struct Row {
    #[serde(rename = "pluginID")]
    plugin_id: String,
    #[serde(default)]
    ip: String,
    #[serde(rename = "dnsName", default)]
    dns_name: String,
    #[serde(default)]
    uuid: String,
    #[serde(default)]
    port: String,
    #[serde(default)]
    protocol: String,
    #[serde(rename = "lastSeen")]
    last_seen: String,
    #[serde(rename = "lastMitigated", default)]
    last_mitigated: Option<String>,
    #[serde(default)]
    severity: Option<Value>,
    #[serde(default)]
    repository: Option<Value>,
}

/// The window time of a row (`lastSeen`, or `lastMitigated` for mitigated findings), read on its
/// own so that a row rejected for another field still moves the keyset.
pub(super) fn window_time(raw: &RawValue, stream: TenableStream) -> Option<i64> {
    #[derive(Deserialize)]
    struct Times {
        #[serde(rename = "lastSeen", default)]
        last_seen: Option<String>,
        #[serde(rename = "lastMitigated", default)]
        last_mitigated: Option<String>,
    }
    let times: Times = serde_json::from_str(raw.get()).ok()?;
    window_of(
        stream,
        times.last_seen.as_deref(),
        times.last_mitigated.as_deref(),
    )
}

/// The window time among a row's `lastSeen` and `lastMitigated` texts: `lastMitigated` alone on
/// the patched stream; `None` when that text is absent or not a number.
fn window_of(
    stream: TenableStream,
    last_seen: Option<&str>,
    last_mitigated: Option<&str>,
) -> Option<i64> {
    let text = match stream {
        TenableStream::Cumulative => last_seen,
        TenableStream::Patched => last_mitigated,
    }?;
    text.trim().parse().ok()
}

pub(super) fn window_field(stream: TenableStream) -> &'static str {
    match stream {
        TenableStream::Cumulative => "lastSeen",
        TenableStream::Patched => "lastMitigated",
    }
}

/// Parses a string-typed integer strictly: a bad value is a malformed response, never a zero.
pub(super) fn int(text: &str, field: &str, url: &str) -> Result<i64, SourceError> {
    text.trim()
        .parse::<i64>()
        .map_err(|_| SourceError::Malformed {
            url: url.to_string(),
            detail: format!("{field} {text:?} is not an integer"),
        })
}

/// A vulndetails row as an [`Event`], with its window time as [`window_time`] reads it.
pub(super) fn finding(
    raw: &RawValue,
    stream: TenableStream,
    url: &str,
) -> Result<(Event, Option<i64>), SourceError> {
    let row: Row = serde_json::from_str(raw.get()).map_err(|e| SourceError::Malformed {
        url: url.to_string(),
        detail: format!("row: {e}"),
    })?;
    let plugin = int(&row.plugin_id, "pluginID", url)?;
    let port = int(
        if row.port.is_empty() { "0" } else { &row.port },
        "port",
        url,
    )?;
    let last_seen = int(&row.last_seen, "lastSeen", url)?;
    let window = window_of(stream, Some(&row.last_seen), row.last_mitigated.as_deref());
    let window_time = match (stream, row.last_mitigated.as_deref()) {
        (TenableStream::Patched, Some(t)) if !t.is_empty() => int(t, "lastMitigated", url)?,
        _ => last_seen,
    };
    let repository = row
        .repository
        .as_ref()
        .and_then(|r| r.get("id"))
        .and_then(|id| {
            id.as_str()
                .map(str::to_string)
                .or_else(|| id.as_i64().map(|n| n.to_string()))
        })
        .unwrap_or_default();
    let host = if row.dns_name.is_empty() {
        &row.uuid
    } else {
        &row.dns_name
    };
    let id = format!(
        "{repository}|{}|{host}|{plugin}|{port}|{}|{last_seen}",
        row.ip, row.protocol
    );
    let severity = row
        .severity
        .as_ref()
        .and_then(|s| s.get("id"))
        .and_then(Value::as_str)
        .map(|s| int(s, "severity.id", url))
        .transpose()?
        .map_or(0, |s| [0, 3, 5, 8, 10][s.clamp(0, 4) as usize]);
    let time = chrono::DateTime::from_timestamp(window_time, 0).unwrap_or_else(Utc::now);
    // The id carries lastSeen; lastMitigated can change while the id stays (a re-report).
    let key_time = chrono::DateTime::from_timestamp(last_seen, 0).unwrap_or(time);
    let event = Event::new(id, time, Severity::new(severity), raw).with_key_time(key_time);
    Ok((event, window))
}
