//! The few fields a source reads from a vendor record, deserialized straight from the response
//! body: strings borrowed where JSON allows (no escapes), objects read without building a tree.
//!
//! Owns: [`FieldText`] and [`Object`]. Must not: know a vendor's field names (each vendor module
//! declares its own small struct with them). Invariant: a field reads as the same text a `String`
//! field would; the record itself is kept whole elsewhere, as raw JSON.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, value::MapAccessDeserializer, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// A JSON string field, borrowed from the body when it holds no escapes, else unescaped into an
/// owned copy. Anything but a string fails, as it would for a `String` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldText<'a>(Cow<'a, str>);

impl FieldText<'_> {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text, owned.
    pub fn into_string(self) -> String {
        self.0.into_owned()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for FieldText<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = FieldText<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(FieldText(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(FieldText(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(FieldText(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// `T` read from a JSON object only. A derived struct also accepts an array (its fields in
/// order), which no vendor record means: with this wrapper an array fails, so a caller can treat
/// a record of unusual shape the slow, general way.
#[derive(Debug)]
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(Object)
            }
        }
        deserializer.deserialize_map(ObjectVisitor(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Fields<'a> {
        #[serde(borrow, default)]
        id: Option<FieldText<'a>>,
        #[serde(borrow, default)]
        inner: Option<Object<Inner<'a>>>,
    }

    #[derive(Deserialize)]
    struct Inner<'a> {
        #[serde(borrow)]
        at: FieldText<'a>,
    }

    #[test]
    fn text_is_borrowed_without_escapes_and_unescaped_with_them() {
        let body = r#"{"id":"a\"b","x":[1,{"id":2}],"inner":{"at":"t1","more":null}}"#;
        let Object(f) = serde_json::from_str::<Object<Fields>>(body).unwrap();
        let id = f.id.unwrap();
        assert_eq!(id.as_str(), "a\"b");
        assert!(matches!(id.0, Cow::Owned(_)));
        let at = f.inner.unwrap().0.at;
        assert_eq!(at.as_str(), "t1");
        assert!(matches!(at.0, Cow::Borrowed(_)));
    }

    #[test]
    fn only_strings_and_only_objects_are_taken() {
        assert!(serde_json::from_str::<Object<Fields>>(r#"{"id":7}"#).is_err());
        assert!(serde_json::from_str::<Object<Fields>>(r#"["id"]"#).is_err());
        assert!(serde_json::from_str::<Object<Fields>>(r#"{"inner":["t"]}"#).is_err());
        let Object(f) = serde_json::from_str::<Object<Fields>>(r#"{"id":null}"#).unwrap();
        assert!(f.id.is_none());
    }
}
