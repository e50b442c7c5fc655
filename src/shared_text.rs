//! [`SharedText`]: UTF-8 text in an immutable, reference-counted buffer, so that a vendor record can
//! be a slice of the response body it came in instead of a copy of it.
//!
//! Owns: the one conversion from the buffer's bytes back to `&str`. Must not: be built from bytes
//! that are not known to be UTF-8 — every constructor takes a `String` or a `&str`, or checks the
//! bytes it is given ([`SharedText::from_utf8`]), and a slice is always a `&str` inside the text.
//! Invariant: the bytes are valid UTF-8, so [`SharedText::as_str`] never needs to check them again.
//!
//! Why: a 10,000-event page is a 13 MB body. Copying every record out of it kept the body and the
//! copies alive together while the page was parsed, next to the page being committed; sharing the
//! body keeps one of the two. A record pins its whole body until it is dropped, which is when its
//! page is committed: nothing keeps events longer.

use bytes::Bytes;

/// UTF-8 text that clones and slices without copying.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct SharedText(Bytes);

impl SharedText {
    /// The text.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor starts from a `String` or a `&str`, and `share` slices along
        // a `&str` inside this text, so the bytes are always whole UTF-8 (module invariant).
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// `bytes` as text, if they are UTF-8: the buffer is shared, not copied (a record read back
    /// from an outbox chunk stays a slice of the chunk).
    pub fn from_utf8(bytes: Bytes) -> Result<SharedText, std::str::Utf8Error> {
        std::str::from_utf8(&bytes)?;
        Ok(SharedText(bytes))
    }

    /// No other handle shares this text's buffer (tests: a page's body was let go).
    #[cfg(test)]
    pub(crate) fn is_only_handle(&self) -> bool {
        self.0.is_unique()
    }

    /// `part` as shared text: a slice of this buffer, without copying, when `part` lies inside
    /// this text (a record of a body); otherwise a copy of `part`.
    pub fn share(&self, part: &str) -> SharedText {
        if self.holds(part.as_bytes()) {
            SharedText(self.0.slice_ref(part.as_bytes()))
        } else {
            SharedText::from(part)
        }
    }

    /// Whether `self` is a slice of `other`'s buffer (for tests of sharing).
    pub fn same_buffer_as(&self, other: &SharedText) -> bool {
        other.holds(&self.0)
    }

    /// Whether `part` is a non-empty run of this text's own bytes (not an equal copy).
    fn holds(&self, part: &[u8]) -> bool {
        let whole = self.0.as_ptr_range();
        let inner = part.as_ptr_range();
        !part.is_empty() && whole.start <= inner.start && inner.end <= whole.end
    }
}

impl From<String> for SharedText {
    /// Takes the string's buffer as it is (no copy).
    fn from(text: String) -> Self {
        SharedText(Bytes::from(text.into_bytes()))
    }
}

impl From<&str> for SharedText {
    /// Copies `text`.
    fn from(text: &str) -> Self {
        SharedText(Bytes::copy_from_slice(text.as_bytes()))
    }
}

impl std::ops::Deref for SharedText {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<str> for SharedText {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for SharedText {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for SharedText {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl std::fmt::Debug for SharedText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for SharedText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_of_the_text_is_shared_and_any_other_text_is_copied() {
        let body = SharedText::from(String::from(r#"{"events":[{"id":"é1"},{"id":"2"}]}"#));
        let record = r#"{"id":"é1"}"#;
        let start = body.find(record).unwrap();
        let part = &body.as_str()[start..start + record.len()];
        let shared = body.share(part);
        assert_eq!(shared.as_str(), part);
        assert!(shared.same_buffer_as(&body));

        let elsewhere = String::from(r#"{"id":"2"}"#);
        let copied = body.share(&elsewhere);
        assert_eq!(copied.as_str(), elsewhere);
        assert!(!copied.same_buffer_as(&body));

        assert_eq!(body.share("").as_str(), "");
        assert_eq!(format!("{shared:?}"), format!("{part:?}"));
        assert_eq!(shared.len(), part.len());
    }

    #[test]
    fn bytes_become_text_only_when_they_are_utf8() {
        let buffer = Bytes::from(vec![0xff, b'a', 0xc3, 0xa4, 0xc3]);
        let text = SharedText::from_utf8(buffer.slice(1..4)).unwrap();
        assert_eq!(text.as_str(), "aä");
        assert!(SharedText::from_utf8(buffer.slice(0..2)).is_err(), "0xff");
        assert!(
            SharedText::from_utf8(buffer.slice(1..5)).is_err(),
            "a cut character"
        );
        assert_eq!(
            SharedText::from_utf8(buffer.slice(1..1)).unwrap().as_str(),
            ""
        );
    }

    #[test]
    fn a_shared_part_outlives_the_handle_it_was_cut_from() {
        let body = SharedText::from(String::from("[\"ä\",\"b\"]"));
        let first = body.share(&body.as_str()[1..5]);
        drop(body);
        assert_eq!(first.as_str(), "\"ä\"");
    }
}
