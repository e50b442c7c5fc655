//! [`SetupError`]: a source or sink that cannot be built from its (validated) settings.
//!
//! Owns: the one error type every build function returns (`vendors`, `sinks::any`). Must not:
//! carry a secret (reasons name files and keys, never values). Invariant: `key` is a full
//! configuration path, so the operator knows what to fix.

/// A source or sink could not be set up from its settings (a TLS file unreadable, a credential not
/// resolved). Fix the named key and start again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration key `{key}`: {reason}")]
pub struct SetupError {
    /// Full key path, e.g. `sinks.siem.ca_file` or `sources.edr_eu`.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl SetupError {
    /// An error about `key`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        SetupError {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// Reads a message of the form `<key>[ more]: <reason>` (as the TLS and HTTP client builders
    /// write them) whose key lies under `within` (e.g. `sinks.siem`): the key is its first word;
    /// a message that does not start with `within` is all reason, about `within`.
    pub fn keyed(within: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        if let Some(rest) = message.strip_prefix(within) {
            if rest.is_empty() || rest.starts_with(['.', ':', ' ']) {
                let end = message.find([' ', ':']).unwrap_or(message.len());
                let key = message[..end].to_string();
                let reason = message[end..]
                    .trim_start_matches(':')
                    .trim_start()
                    .to_string();
                return SetupError { key, reason };
            }
        }
        SetupError {
            key: within.to_string(),
            reason: message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keyed_message_names_its_own_key() {
        let e = SetupError::keyed("sinks.s", "sinks.s.ca_file /x.pem: not found");
        assert_eq!(e.key, "sinks.s.ca_file");
        assert_eq!(e.reason, "/x.pem: not found");
        let e = SetupError::keyed("sinks.s", "sinks.s: system roots: none");
        assert_eq!(e.key, "sinks.s");
        assert_eq!(e.reason, "system roots: none");
        let e = SetupError::keyed("sinks.s", "no TLS");
        assert_eq!((e.key.as_str(), e.reason.as_str()), ("sinks.s", "no TLS"));
        // `sinks.s2` is not under `sinks.s`.
        assert_eq!(SetupError::keyed("sinks.s", "sinks.s2.x: y").key, "sinks.s");
    }
}
