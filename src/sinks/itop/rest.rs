//! iTop's REST/JSON API as the sink and the `incidents` commands call it: one form-encoded POST to
//! `rest.php` per operation (`version`, `json_data`, and the credentials of the auth mode), and the
//! reply read for its `code` (reference/sink-protocols.md §5).
//!
//! Owns: the request form, the auth modes, reading a reply and sorting failures by what the caller
//! does next. Must not: decide which records become tickets or touch the store. Invariant: an
//! operation succeeded only when the JSON body says `code: 0` (and its object's code is 0) — HTTP
//! 200 alone means nothing; a secret never appears in an error.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::net::{self, BodyError};
use crate::settings::ItopCredentials;

/// Largest reply read from iTop, in bytes (a ticket with its logs is a few kilobytes).
const MAX_REPLY: u64 = 8 * 1024 * 1024;

/// Why an iTop call failed, sorted by what the caller does next.
#[derive(Debug, thiserror::Error)]
pub enum ItopError {
    /// iTop could not be reached, timed out or answered 5xx/429: retry after a pause.
    #[error("{url}: {detail}")]
    Unavailable {
        /// The endpoint.
        url: String,
        /// What failed.
        detail: String,
        /// The pause iTop (or its proxy) asked for.
        retry_after: Option<Duration>,
    },
    /// iTop refused the sink itself: login (codes 1, 5, 6), version (2, 10), operation (11, 12),
    /// or the reply was not iTop's (a proxy's page). Waiting will not help: fix the configuration.
    #[error("{url}: iTop code {code}: {message}")]
    Refused {
        /// The endpoint.
        url: String,
        /// iTop's code, or the HTTP status for a reply that was not iTop's.
        code: i64,
        /// iTop's message.
        message: String,
    },
    /// iTop refused this operation's data (code 100, or 13): the record cannot become this change
    /// as configured. Keep it as a dead letter with iTop's message; go on with the others.
    #[error("iTop code {code}: {message}")]
    Data {
        /// iTop's code.
        code: i64,
        /// iTop's message, e.g. "Error: org_id: Null not allowed".
        message: String,
    },
}

/// The object an operation created, changed or found: its class, key and fields (values as iTop
/// gives them: strings).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ItopObject {
    /// Class, e.g. `Incident`.
    pub class: String,
    /// The object's key (its id, as text).
    pub key: String,
    /// The requested output fields.
    pub fields: Map<String, Value>,
}

impl ItopObject {
    /// The text of field `name` (`""` when absent).
    pub fn field(&self, name: &str) -> &str {
        self.fields.get(name).and_then(Value::as_str).unwrap_or("")
    }
}

#[derive(Deserialize)]
struct Reply {
    code: Option<i64>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    objects: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct ReplyObject {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    class: String,
    #[serde(default)]
    key: Value,
    #[serde(default)]
    fields: Map<String, Value>,
}

/// A client of one iTop endpoint.
#[derive(Debug, Clone)]
pub struct ItopClient {
    http: reqwest::Client,
    endpoint: String,
    version: String,
    credentials: ItopCredentials,
}

impl ItopClient {
    /// A client of `endpoint` speaking REST `version` with `credentials`.
    pub fn new(
        http: reqwest::Client,
        endpoint: String,
        version: String,
        credentials: ItopCredentials,
    ) -> Self {
        ItopClient {
            http,
            endpoint,
            version,
            credentials,
        }
    }

    /// The endpoint, for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Runs `operation` (the `json_data` object) and returns the objects of the reply, in the
    /// reply's order.
    pub async fn call(&self, operation: &Value) -> Result<Vec<ItopObject>, ItopError> {
        let url = &self.endpoint;
        let json_data = operation.to_string();
        let mut form: Vec<(&str, &str)> =
            vec![("version", &self.version), ("json_data", &json_data)];
        let mut request = self.http.post(url);
        match &self.credentials {
            ItopCredentials::Form { user, password } => {
                form.push(("auth_user", user));
                form.push(("auth_pwd", password.expose()));
            }
            ItopCredentials::Basic { user, password } => {
                request = request.basic_auth(user, Some(password.expose()));
            }
            ItopCredentials::Token(token) => {
                request = request.header("Auth-Token", token.expose());
            }
        }
        let response = request
            .form(&form)
            .send()
            .await
            .map_err(|e| ItopError::Unavailable {
                url: url.clone(),
                detail: net::transport_detail(&e),
                retry_after: None,
            })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(net::parse_retry_after);
        let body = net::read_body(response, MAX_REPLY)
            .await
            .map_err(|e| match e {
                BodyError::Transport(detail) => ItopError::Unavailable {
                    url: url.clone(),
                    detail,
                    retry_after: None,
                },
                other => ItopError::Refused {
                    url: url.clone(),
                    code: i64::from(status.as_u16()),
                    message: other.to_string(),
                },
            })?;
        if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
            return Err(ItopError::Unavailable {
                url: url.clone(),
                detail: format!("HTTP {status}"),
                retry_after,
            });
        }
        if !status.is_success() {
            // 401 from a forced token login, 403/404 from a proxy or a wrong URL.
            return Err(ItopError::Refused {
                url: url.clone(),
                code: i64::from(status.as_u16()),
                message: format!("HTTP {status}: {}", excerpt(body.as_bytes())),
            });
        }
        read_reply(url, body.as_bytes())
    }
}

/// The objects of a reply body, or the failure its `code` says.
fn read_reply(url: &str, body: &[u8]) -> Result<Vec<ItopObject>, ItopError> {
    let not_itop = |why: &str| ItopError::Refused {
        url: url.to_string(),
        code: 200,
        message: format!(
            "HTTP 200 but {why} (a proxy or login page?): {}",
            excerpt(body)
        ),
    };
    let reply: Reply = serde_json::from_slice(body).map_err(|_| not_itop("not iTop's JSON"))?;
    let code = reply
        .code
        .ok_or_else(|| not_itop("no `code` in the reply"))?;
    let message = reply.message.unwrap_or_default();
    match code {
        0 => {}
        13 | 100 => return Err(ItopError::Data { code, message }),
        _ => {
            return Err(ItopError::Refused {
                url: url.to_string(),
                code,
                message,
            })
        }
    }
    let mut objects = Vec::new();
    for (name, value) in reply.objects.unwrap_or_default() {
        let object: ReplyObject = serde_json::from_value(value)
            .map_err(|e| not_itop(&format!("object {name} is not one: {e}")))?;
        if object.code != 0 {
            return Err(ItopError::Data {
                code: object.code,
                message: object.message.unwrap_or_default(),
            });
        }
        let key = match object.key {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            // Version 1.0 replies carry no `key`: it is after the `::` of the object's name.
            _ => name.rsplit("::").next().unwrap_or_default().to_string(),
        };
        objects.push(ItopObject {
            class: object.class,
            key,
            fields: object.fields,
        });
    }
    Ok(objects)
}

/// The start of a body for an error message: one line, at most 200 characters.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    line.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_is_read_for_its_code_not_its_status() {
        let ok = br#"{"objects":{"Incident::7":{"code":0,"message":"created","class":"Incident","key":"7","fields":{"ref":"I-000007","status":"new"}}},"code":0,"message":null}"#;
        let objects = read_reply("u", ok).unwrap();
        assert_eq!(objects.len(), 1);
        assert_eq!(objects[0].key, "7");
        assert_eq!(objects[0].field("ref"), "I-000007");

        let data = br#"{"code":100,"message":"Error: org_id: Null not allowed"}"#;
        assert!(matches!(
            read_reply("u", data),
            Err(ItopError::Data { code: 100, message }) if message == "Error: org_id: Null not allowed"
        ));
        let login = br#"{"code":1,"message":"Invalid login"}"#;
        assert!(matches!(
            read_reply("u", login),
            Err(ItopError::Refused { code: 1, message, .. }) if message == "Invalid login"
        ));
        let page = b"<html><body>Please log in</body></html>";
        assert!(matches!(
            read_reply("u", page),
            Err(ItopError::Refused { code: 200, .. })
        ));
        assert!(matches!(
            read_reply("u", br#"{"message":"x"}"#),
            Err(ItopError::Refused { code: 200, .. })
        ));
    }

    #[test]
    fn a_version_1_0_reply_gets_its_key_from_the_object_name() {
        let reply = br#"{"objects":{"Incident::12":{"code":0,"message":"","class":"Incident","fields":{}}},"code":0,"message":"Found: 1"}"#;
        assert_eq!(read_reply("u", reply).unwrap()[0].key, "12");
    }

    #[test]
    fn credentials_never_print() {
        let c = ItopCredentials::Form {
            user: "secrelay".into(),
            password: crate::settings::Secret::new("pw-123"),
        };
        assert!(!format!("{c:?}").contains("pw-123"));
    }
}
