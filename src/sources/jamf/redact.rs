//! Secrets removed from Jamf records: every field named like a password or a secret (Classic
//! `management_password_sha256`, `passwordHash`, ...), at any depth, before any event or view is
//! built.
//!
//! Must not: change anything else in a record. Invariant: a record with nothing to remove is
//! forwarded as the vendor's own text (key order intact).

use serde_json::value::RawValue;
use serde_json::Value;

/// Words that mark a field as a password or a secret (or its hash), compared against the field
/// name lower-cased without separators: `management_password_sha256`, `passwordHash`, `secret`.
const SECRET_WORDS: [&str; 4] = ["password", "passwd", "passphrase", "secret"];

fn is_secret_name(name: &str) -> bool {
    let folded: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    SECRET_WORDS.iter().any(|w| folded.contains(w))
}

/// Removes every field named like a password or secret, at any depth; true when one was removed.
fn strip_secrets(v: &mut Value) -> bool {
    match v {
        Value::Object(map) => {
            let before = map.len();
            map.retain(|k, _| !is_secret_name(k));
            let mut removed = map.len() != before;
            for child in map.values_mut() {
                removed |= strip_secrets(child);
            }
            removed
        }
        Value::Array(items) => items.iter_mut().fold(false, |r, i| strip_secrets(i) | r),
        _ => false,
    }
}

/// `raw` parsed, with secret-looking fields removed (see [`strip_secrets`]), and the text to
/// forward: the vendor's own text when nothing was removed (key order intact).
pub(super) fn without_secrets(raw: &RawValue) -> Result<(Value, Box<RawValue>), serde_json::Error> {
    let mut v: Value = serde_json::from_str(raw.get())?;
    if strip_secrets(&mut v) {
        let text = RawValue::from_string(v.to_string())?;
        Ok((v, text))
    } else {
        Ok((v, raw.to_owned()))
    }
}
