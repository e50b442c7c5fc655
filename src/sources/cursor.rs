//! What a source keeps per partition: the partition list of its configured streams, and its cursor
//! stored as JSON of a per-stream cursor type.
//!
//! Must not: touch the store (the scheduler hands the stored text in and commits the page's text).
//! Invariant: a stored cursor that cannot be read is [`SourceError::BadCursor`], never a silent
//! fresh start (which would skip or repeat history unasked). Cursors written by earlier versions
//! load through their types' serde defaults; each cursor type documents the shapes it accepts.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::SourceError;
use crate::event::Partition;

/// A source's per-stream cursor type, stored as its JSON.
pub trait StoredCursor: Serialize + DeserializeOwned {
    /// The stored cursor of `source`'s `stream`, or `fresh()` when there is none (first run, or
    /// after a reset).
    fn load(
        stored: Option<&str>,
        source: &str,
        stream: &str,
        fresh: impl FnOnce() -> Self,
    ) -> Result<Self, SourceError> {
        match stored {
            Some(text) => serde_json::from_str(text).map_err(|e| SourceError::BadCursor {
                detail: format!("{source} {stream} cursor: {e}"),
            }),
            None => Ok(fresh()),
        }
    }

    /// The text to store for this cursor.
    fn save(&self) -> String {
        // Cursor types are plain structs with string keys: serializing them cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// One partition per configured stream, all of one `tenant` (`""` when the vendor has none).
pub fn stream_partitions<'a>(
    streams: impl IntoIterator<Item = &'a str>,
    tenant: &str,
) -> Vec<Partition> {
    streams
        .into_iter()
        .map(|stream| Partition::new(stream, tenant))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        since: i64,
        #[serde(default)]
        page: u32,
    }

    impl StoredCursor for Sample {}

    #[test]
    fn a_cursor_round_trips_and_an_older_shape_loads_through_defaults() {
        let c = Sample { since: 5, page: 2 };
        let text = c.save();
        assert_eq!(
            Sample::load(Some(&text), "s", "e", || unreachable!()).unwrap(),
            c
        );
        let old = Sample::load(Some(r#"{"since":7}"#), "s", "e", || unreachable!()).unwrap();
        assert_eq!(old, Sample { since: 7, page: 0 });
        let fresh = Sample::load(None, "s", "e", || Sample { since: 1, page: 0 }).unwrap();
        assert_eq!(fresh.since, 1);
    }

    #[test]
    fn an_unreadable_cursor_is_a_bad_cursor_naming_the_partition() {
        let err = Sample::load(Some("not json"), "src", "events", || unreachable!()).unwrap_err();
        let SourceError::BadCursor { detail } = &err else {
            panic!("{err:?}")
        };
        assert!(detail.starts_with("src events cursor:"), "{detail}");
    }

    #[test]
    fn partitions_are_one_per_stream_of_one_tenant() {
        let p = stream_partitions(["a", "b"], "t");
        assert_eq!(p, vec![Partition::new("a", "t"), Partition::new("b", "t")]);
    }
}
