//! [`Secret`]: a credential that can be used but never shown.
//!
//! Owns: reading secrets inline, from files (systemd `LoadCredential=` puts them under
//! `$CREDENTIALS_DIRECTORY`) or from the environment layer. Must not: implement `Display` or leak the
//! value through `Debug`, `Serialize` or an error message. Invariant: the only way to the value is
//! [`Secret::expose`], called where it goes on the wire.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use super::SettingsError;

/// A credential. `Debug` prints `[redacted]`; there is no `Display` and no `Serialize`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The credential itself, for the request that needs it. Never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Environment values may arrive parsed as numbers or booleans; a secret is their text.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Scalar {
            Text(String),
            Int(i64),
            Float(f64),
            Bool(bool),
        }
        Ok(Secret(match Scalar::deserialize(deserializer)? {
            Scalar::Text(s) => s,
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }))
    }
}

/// Picks the one secret given for `key` (e.g. `sources.edr_eu.client_secret`): inline, or read
/// from `{key}_file`. A relative file path is looked up in `$CREDENTIALS_DIRECTORY` when systemd set
/// it. Exactly one of the two must be given. Trailing newlines in the file are dropped.
pub fn resolve(
    key: &str,
    inline: Option<&Secret>,
    file: Option<&Path>,
) -> Result<Secret, SettingsError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(SettingsError::Invalid {
            key: key.to_string(),
            reason: format!("give either `{key}` or `{key}_file`, not both"),
        }),
        (Some(s), None) if !s.expose().is_empty() => Ok(s.clone()),
        (Some(_), None) | (None, None) => Err(SettingsError::Invalid {
            key: key.to_string(),
            reason: format!("missing: set `{key}`, `{key}_file`, or the matching SECRELAY__ environment variable"),
        }),
        (None, Some(path)) => {
            let path = credential_path(path);
            let text = std::fs::read_to_string(&path).map_err(|e| SettingsError::Invalid {
                key: format!("{key}_file"),
                reason: format!("cannot read {}: {e}", path.display()),
            })?;
            let value = text.trim_end_matches(['\n', '\r']);
            if value.is_empty() {
                return Err(SettingsError::Invalid {
                    key: format!("{key}_file"),
                    reason: format!("{} is empty", path.display()),
                });
            }
            Ok(Secret::new(value))
        }
    }
}

/// The secret in a resolved slot `{at}.{name}`, for the source or sink that uses it. Settings
/// loaded through [`super::Settings::load`] always have it; a slot left empty (settings built by
/// hand) is a setup error naming the key, never an empty credential sent to a vendor.
pub fn resolved(at: &str, name: &str, slot: Option<&Secret>) -> Result<Secret, super::SetupError> {
    match slot {
        Some(secret) if !secret.expose().is_empty() => Ok(secret.clone()),
        _ => Err(super::SetupError::new(
            format!("{at}.{name}"),
            "no secret resolved (settings are resolved by Settings::load)",
        )),
    }
}

fn credential_path(path: &Path) -> PathBuf {
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) if path.is_relative() => Path::new(&dir).join(path),
        _ => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&s)), "Some([redacted])");
    }

    #[test]
    fn file_secret_drops_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        let s = resolve("x.secret", None, Some(&path)).unwrap();
        assert_eq!(s.expose(), "s3cret");
    }

    #[test]
    fn both_or_neither_is_an_error_naming_the_key() {
        let s = Secret::new("a");
        let both = resolve("sources.a.client_secret", Some(&s), Some(Path::new("/x"))).unwrap_err();
        assert!(
            both.to_string().contains("sources.a.client_secret"),
            "{both}"
        );
        let none = resolve("sources.a.client_secret", None, None).unwrap_err();
        assert!(
            none.to_string().contains("sources.a.client_secret"),
            "{none}"
        );
    }
}
