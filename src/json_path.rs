//! Reading vendor records by dotted path (`event.inserted`, `destination.tabs.0.url`): the one
//! helper every source and CEF mapping uses, and that sink rules (`match`, `{record.<path>}`) read
//! records with.
//!
//! Must not: copy or change the record. Invariant: a missing key, a wrong type or an index past the
//! end reads as absent, never as an error or a panic.

use serde_json::Value;

/// The value at a dotted `path` in `value`. A numeric segment indexes an array (`tabs.0`) and is an
/// ordinary key in an object.
pub fn at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(value, |v, key| match (v, key.parse::<usize>()) {
            (Value::Array(items), Ok(i)) => items.get(i),
            _ => v.get(key),
        })
}

/// The string at a dotted `path`, or `None` when it is absent or not a string.
pub fn text<'a>(value: &'a Value, path: &str) -> Option<&'a str> {
    at(value, path).and_then(Value::as_str)
}

/// The string at a dotted `path`, or `""` when it is absent or not a string.
pub fn text_or_empty<'a>(value: &'a Value, path: &str) -> &'a str {
    text(value, path).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dotted_paths_read_objects_and_index_arrays() {
        let v = json!({"event": {"id": "e1", "n": 3}, "tabs": [{"url": "u0"}, {"url": "u1"}],
                       "map": {"0": "zero"}});
        assert_eq!(text(&v, "event.id"), Some("e1"));
        assert_eq!(text(&v, "tabs.1.url"), Some("u1"));
        assert_eq!(
            text(&v, "map.0"),
            Some("zero"),
            "a numeric key of an object"
        );
        assert_eq!(at(&v, "event.n"), Some(&json!(3)));
        assert_eq!(text(&v, "event.n"), None, "not a string");
        assert_eq!(text(&v, "tabs.5.url"), None);
        assert_eq!(text(&v, "event.id.deeper"), None);
        assert_eq!(text_or_empty(&v, "missing"), "");
    }
}
