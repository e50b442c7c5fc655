//! `[sinks.<name>]` with `type = "itop"`: vendor alerts as iTop tickets (reference/vendor-apis.md §5).
//!
//! Owns: the keys of the iTop sink, its rules and stimuli, and their checks. Must not: talk to iTop
//! or parse templates (the sink does, when it is built, and names the key of a bad one).
//! Invariant: a validated sink has the credential of its auth mode resolved, at least one rule,
//! and every rule names sources that exist and a severity within 0–10.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use super::{
    invalid, login_name, required, resolve_secret, secret, Secret, SettingsError, SetupError,
};

/// How the sink logs in to iTop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItopAuthMethod {
    /// `auth_user` and `auth_pwd` as form fields in the POST body (login type "form", on by default).
    Form,
    /// `Authorization: Basic` (login type "basic", on by default).
    Basic,
    /// `Auth-Token` header with a personal or application token (iTop 3.1+, login type "token").
    Token,
}

/// The credentials of the auth mode, resolved.
#[derive(Debug, Clone)]
pub enum ItopCredentials {
    /// `user` and `password`, sent as form fields.
    Form {
        /// iTop login.
        user: String,
        /// Its password.
        password: Secret,
    },
    /// `user` and `password`, sent as HTTP Basic.
    Basic {
        /// iTop login.
        user: String,
        /// Its password.
        password: Secret,
    },
    /// A token, sent as `Auth-Token`.
    Token(Secret),
}

/// A lifecycle transition: the stimulus and the attributes the target state needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItopStimulus {
    /// Stimulus code, e.g. `ev_resolve` or `ev_assign`. Required.
    pub stimulus: String,
    /// Attributes to set with it (iTop refuses a transition whose target state lacks a mandatory
    /// attribute: `resolved` needs `service_id` and `solution`, `assigned` needs `team_id` and
    /// `agent_id`). External keys take an id, an OQL string or a criteria table. Default none.
    #[serde(default)]
    pub fields: BTreeMap<String, Value>,
}

/// Which records open a ticket, and how it is written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItopRule {
    /// Sources the rule applies to. Default: every source routed to the sink.
    #[serde(default)]
    pub sources: Vec<String>,
    /// Streams the rule applies to, e.g. `alerts`, `sessions`. Default: all.
    #[serde(default)]
    pub streams: Vec<String>,
    /// Lowest event severity (0–10) that opens a ticket. Default 0.
    #[serde(default)]
    pub min_severity: u8,
    /// Record fields that must all equal the given text: dotted path → value, e.g.
    /// `{ "type" = "Event::Endpoint::Threat::Detected" }`. Default: no condition.
    #[serde(default, rename = "match")]
    pub matches: BTreeMap<String, String>,
    /// Title template (at most 255 characters once filled): `{vendor}`, `{name}`, `{severity}`,
    /// `{state}`, `{user}`, `{host}`, `{src}`, `{dst}`, `{rules}`, `{time}`, `{link}`, `{alert}`,
    /// `{source}`, `{stream}`, `{event}` and `{record.<dotted path>}`; `{{` is a brace. Default:
    /// vendor, alert name, user and host.
    #[serde(default)]
    pub title: Option<String>,
    /// Description template, the same placeholders; plain text, sent as HTML with line breaks kept.
    /// Default: every known fact of the alert, one per line.
    #[serde(default)]
    pub description: Option<String>,
    /// Ticket class. Default: the sink's `class`.
    #[serde(default)]
    pub class: Option<String>,
    /// Attributes set on create, over the sink's `fields`. Default none.
    #[serde(default)]
    pub fields: BTreeMap<String, Value>,
}

/// `[sinks.<name>]` with `type = "itop"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItopSettings {
    /// iTop's base URL, e.g. `https://itop.example.com` (`/webservices/rest.php` is added), or the
    /// full URL of `rest.php`. Required.
    pub url: String,
    /// REST API version sent with every call. Default `1.3`.
    #[serde(default = "v13")]
    pub version: String,
    /// `form` (default), `basic` or `token`.
    #[serde(default = "form")]
    pub auth: ItopAuthMethod,
    /// iTop login (`form`, `basic`); it needs the "REST Services User" profile.
    #[serde(default)]
    pub user: Option<String>,
    /// Password inline (`form`, `basic`); prefer `password_file`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// File holding the password; relative paths are read from `$CREDENTIALS_DIRECTORY`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Token inline (`token`); prefer `token_file`.
    #[serde(default)]
    pub token: Option<Secret>,
    /// File holding the token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Start of the change-tracking `comment` iTop records with every change. Default `secrelay`.
    #[serde(default = "secrelay")]
    pub comment: String,
    /// Ticket class. Default `Incident`.
    #[serde(default = "incident")]
    pub class: String,
    /// Attributes set on every ticket created, e.g. `org_id`, `caller_id`, `origin`, `impact`,
    /// `urgency`, `team_id`; external keys take an id, an OQL string or a criteria table. Default:
    /// `origin = "monitoring"` when not given.
    #[serde(default)]
    pub fields: BTreeMap<String, Value>,
    /// Which records open tickets; the first rule that matches wins. At least one.
    #[serde(default)]
    pub rules: Vec<ItopRule>,
    /// Applied once when the vendor says an alert is over. Default `ev_resolve`, with `solution`
    /// filled in when not given.
    #[serde(default = "resolve")]
    pub resolve: ItopStimulus,
    /// Applied before `resolve` to a ticket still `new` (or `escalated_tto`, `pending`), whose
    /// lifecycle has no way to `resolved` otherwise, e.g. `ev_assign` with `team_id` and
    /// `agent_id`. Default none.
    #[serde(default)]
    pub assign: Option<ItopStimulus>,
    /// Records per delivery. Default 50.
    #[serde(default = "fifty")]
    pub batch_size: usize,
    /// PEM bundle of CAs to trust. Default: system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Verify the server certificate. Default true; false logs a warning at every start.
    #[serde(default = "super::yes")]
    pub tls_verify: bool,
    /// Request timeout, in seconds. Default 30.
    #[serde(default = "thirty")]
    pub timeout_secs: f64,
}

impl ItopSettings {
    /// Checks the sink at `at` (`sinks.<name>`): the auth mode's keys (resolving the secret), the
    /// rules against the configured `source_ids`.
    pub fn validate(&mut self, at: &str, source_ids: &[String]) -> Result<(), SettingsError> {
        match self.auth {
            ItopAuthMethod::Form | ItopAuthMethod::Basic => {
                required(
                    at,
                    "user",
                    self.user.as_deref(),
                    "auth = \"form\" or \"basic\" needs it",
                )?;
                resolve_secret(at, "password", &mut self.password, &mut self.password_file)?;
            }
            ItopAuthMethod::Token => {
                resolve_secret(at, "token", &mut self.token, &mut self.token_file)?;
            }
        }
        if !(self.url.starts_with("https://") || self.url.starts_with("http://")) {
            return Err(invalid(
                &format!("{at}.url"),
                "must start with https:// (or http://)",
            ));
        }
        if self.rules.is_empty() {
            return Err(invalid(
                &format!("{at}.rules"),
                "no rule: add at least one [[sinks.<name>.rules]] saying which records open tickets",
            ));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let key = format!("{at}.rules[{i}]");
            if rule.min_severity > 10 {
                return Err(invalid(&format!("{key}.min_severity"), "must be 0 to 10"));
            }
            if let Some(s) = rule.sources.iter().find(|s| !source_ids.contains(s)) {
                return Err(invalid(
                    &format!("{key}.sources"),
                    format!("no source named `{s}`"),
                ));
            }
        }
        if self.resolve.stimulus.is_empty() {
            return Err(invalid(
                &format!("{at}.resolve.stimulus"),
                "must not be empty",
            ));
        }
        Ok(())
    }

    /// The endpoint: `url` when it already names `rest.php`, else `url` + `/webservices/rest.php`.
    pub fn endpoint(&self) -> String {
        let url = self.url.trim_end_matches('/');
        if url.ends_with(".php") {
            url.to_string()
        } else {
            format!("{url}/webservices/rest.php")
        }
    }

    /// The credentials of the auth mode, resolved, of the sink at `at`.
    pub fn credentials(&self, at: &str) -> Result<ItopCredentials, SetupError> {
        let user = || login_name(at, "user", &self.user);
        Ok(match self.auth {
            ItopAuthMethod::Form => ItopCredentials::Form {
                user: user()?,
                password: secret::resolved(at, "password", self.password.as_ref())?,
            },
            ItopAuthMethod::Basic => ItopCredentials::Basic {
                user: user()?,
                password: secret::resolved(at, "password", self.password.as_ref())?,
            },
            ItopAuthMethod::Token => {
                ItopCredentials::Token(secret::resolved(at, "token", self.token.as_ref())?)
            }
        })
    }
}

fn v13() -> String {
    "1.3".to_string()
}
fn form() -> ItopAuthMethod {
    ItopAuthMethod::Form
}
fn secrelay() -> String {
    "secrelay".to_string()
}
fn incident() -> String {
    "Incident".to_string()
}
fn resolve() -> ItopStimulus {
    ItopStimulus {
        stimulus: "ev_resolve".to_string(),
        fields: BTreeMap::new(),
    }
}
fn fifty() -> usize {
    50
}
fn thirty() -> f64 {
    30.0
}

#[cfg(test)]
mod tests {
    use crate::settings::{Settings, SinkSettings};

    /// A Sophos source routed to an iTop sink `t` whose keys are `keys`.
    fn load(keys: &str) -> Result<Settings, String> {
        Settings::from_toml(&format!(
            "[sources.sophos_eu]\ntype = \"sophos\"\nclient_id = \"id\"\nclient_secret = \"x\"\n\
             sinks = [\"t\"]\n[sinks.t]\ntype = \"itop\"\nurl = \"https://itop.example\"\n{keys}"
        ))
        .map_err(|e| e.to_string())
    }

    #[test]
    fn a_working_sink_resolves_its_credential_and_keeps_field_values_typed() {
        let s = load(
            "user = \"u\"\npassword = \"ITOP-PLANTED\"\nfields = { org_id = 2, caller_id = { name = \"M\" } }\n\
             [[sinks.t.rules]]\nsources = [\"sophos_eu\"]\nmin_severity = 8\n",
        )
        .unwrap();
        let SinkSettings::Itop(t) = &s.sinks["t"] else {
            panic!("not an itop sink")
        };
        assert_eq!(t.endpoint(), "https://itop.example/webservices/rest.php");
        assert_eq!(t.fields["org_id"], serde_json::json!(2));
        assert_eq!(t.fields["caller_id"], serde_json::json!({"name": "M"}));
        assert_eq!(t.resolve.stimulus, "ev_resolve");
        assert!(!format!("{s:?}").contains("ITOP-PLANTED"));
    }

    #[test]
    fn mistakes_name_their_key() {
        for (keys, key, why) in [
            (
                "user = \"u\"\npassword = \"p\"\n",
                "sinks.t.rules",
                "no rule",
            ),
            (
                "password = \"p\"\n[[sinks.t.rules]]\n",
                "sinks.t.user",
                "required",
            ),
            (
                "auth = \"token\"\n[[sinks.t.rules]]\n",
                "sinks.t.token",
                "missing",
            ),
            (
                "user = \"u\"\npassword = \"p\"\n[[sinks.t.rules]]\nsources = [\"nope\"]\n",
                "sinks.t.rules[0].sources",
                "no source named `nope`",
            ),
            (
                "user = \"u\"\npassword = \"p\"\n[[sinks.t.rules]]\nmin_severity = 11\n",
                "sinks.t.rules[0].min_severity",
                "0 to 10",
            ),
            (
                "user = \"u\"\npassword = \"p\"\ntimeout_secs = 0\n[[sinks.t.rules]]\n",
                "sinks.t.timeout_secs",
                "",
            ),
            (
                "auth = \"ldap\"\n[[sinks.t.rules]]\n",
                "sinks.t",
                "unknown variant `ldap`",
            ),
        ] {
            let err = load(keys).unwrap_err();
            assert!(err.contains(key) && err.contains(why), "{keys}: {err}");
        }
    }
}
