//! The fields of a Code42 file event that its CEF mapping (`cef.rs`) reads, deserialized in one
//! pass from the record's JSON text (or from a parsed [`Value`]) without building the record's
//! tree: a syslog sink maps every record it sends, and building a `Value` of a 1.3 KB record cost
//! more than all the rest of its CEF line.
//!
//! Owns: [`FileEventView`] and the lenient field types it is made of. Must not: decide CEF keys or
//! their precedence (`cef.rs` does). Invariant: a field reads exactly as the same field read from
//! the record's `Value` by path: every field accepts any JSON (an unexpected type reads as absent,
//! or as text where `as_text` would print it), so reading fails only on invalid JSON or a key
//! given twice, and [`FileEventView::of_text`] then reads the record through a `Value` (which keeps
//! the last of two keys, as before). `of_text` first tries the JSON scanner
//! (`file_event_scan.rs`), which gives the same view or declines; what it declines is read here.
//! Two exceptions:
//! - a `destination.tabs` that is an object rather than a list reads as no tabs, where a path
//!   would have taken its key `0` as the first tab;
//! - a record that a `Value` cannot hold, because of something in a part the mapping does not
//!   read (a number out of range such as `1e999`, a lone surrogate escape, nesting past 128
//!   levels), is mapped from the fields it has. Read through a `Value` it failed to parse and was
//!   mapped as `null`: a CEF line with no fields. Such a record reached the outbox (the source
//!   reads only its id, time and severity), so its line now says what it can.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::{self, value::MapAccessDeserializer, Deserializer, IgnoredAny, MapAccess};
use serde::de::{SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::mapping::record_value;
use crate::sources::record_fields::FieldText;

/// Any JSON value where a field is expected, kept as much as a CEF mapping needs: strings
/// (borrowed when they hold no escapes), numbers and booleans as they are, lists item by item,
/// and an object only by its `cloudUsername` (else `name`), which is how a list of people reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) enum FieldValue<'a> {
    /// Absent, or JSON `null`.
    #[default]
    Null,
    /// A string.
    Text(Cow<'a, str>),
    /// A negative integer.
    Negative(i64),
    /// A non-negative integer.
    Positive(u64),
    /// A number with a fraction or an exponent.
    Float(f64),
    /// `true` or `false`.
    Bool(bool),
    /// A list.
    List(Vec<FieldValue<'a>>),
    /// An object: its `cloudUsername` if it has that key, else its `name` (absent: `None`).
    Object(Option<Box<FieldValue<'a>>>),
}

impl<'a> FieldValue<'a> {
    /// The value as text: a string as it is, a number or boolean printed as JSON prints it, a list
    /// as its items' texts joined with `,` (an object item by its `cloudUsername` or `name`);
    /// `None` for null, an object, or empty text.
    pub(super) fn text(&self) -> Option<Cow<'_, str>> {
        let text: Cow<'_, str> = match self {
            FieldValue::Null | FieldValue::Object(_) => return None,
            FieldValue::Text(s) => Cow::Borrowed(s.as_ref()),
            FieldValue::Negative(n) => Cow::Owned(n.to_string()),
            FieldValue::Positive(n) => Cow::Owned(n.to_string()),
            FieldValue::Float(f) => Cow::Owned(serde_json::Number::from_f64(*f)?.to_string()),
            FieldValue::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            FieldValue::List(items) => Cow::Owned(join(items.iter().filter_map(Self::item_text))),
        };
        (!text.is_empty()).then_some(text)
    }

    /// The text of the value as an item of a list: an object by its `cloudUsername` or `name`.
    fn item_text(&self) -> Option<Cow<'_, str>> {
        match self {
            FieldValue::Object(name) => name.as_deref().and_then(FieldValue::text),
            other => other.text(),
        }
    }

    /// The value as a time: an RFC 3339 string, or an integer of epoch milliseconds.
    pub(super) fn time(&self) -> Option<DateTime<Utc>> {
        match self {
            FieldValue::Text(s) => DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            FieldValue::Negative(n) => DateTime::from_timestamp_millis(*n),
            FieldValue::Positive(n) => DateTime::from_timestamp_millis(i64::try_from(*n).ok()?),
            _ => None,
        }
    }

    /// The value if it is a string.
    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::Text(s) => Some(s),
            _ => None,
        }
    }
}

/// The items' texts of a list, joined with `,` (an object item by its `cloudUsername` or `name`);
/// `None` when nothing in it has text.
pub(super) fn joined<'v, 'a: 'v>(
    items: impl Iterator<Item = &'v FieldValue<'a>>,
) -> Option<String> {
    let text = join(items.filter_map(FieldValue::item_text));
    (!text.is_empty()).then_some(text)
}

/// `texts` joined with `,`.
fn join<'t>(texts: impl Iterator<Item = Cow<'t, str>>) -> String {
    let mut out = String::new();
    for (i, text) in texts.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&text);
    }
    out
}

/// Builds a [`FieldValue`] from whatever JSON comes; shared by the types that take a scalar or
/// a list the same way and differ only for objects.
struct FieldValueVisitor;

impl<'de> Visitor<'de> for FieldValueVisitor {
    type Value = FieldValue<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(FieldValue::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        // serde_json gives a non-negative integer as u64; keep one form per number.
        Ok(match u64::try_from(v) {
            Ok(n) => FieldValue::Positive(n),
            Err(_) => FieldValue::Negative(v),
        })
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(FieldValue::Positive(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(FieldValue::Float(v))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(FieldValue::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(FieldValue::Text(Cow::Owned(v.to_string())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(FieldValue::Text(Cow::Owned(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(FieldValue::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(FieldValue::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        FieldValue::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<FieldValue>()? {
            items.push(item);
        }
        Ok(FieldValue::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // The last of a key given twice wins, as in a `Value`.
        let (mut cloud_username, mut name) = (None, None);
        while let Some(key) = map.next_key::<FieldText<'de>>()? {
            match key.as_str() {
                "cloudUsername" => cloud_username = Some(map.next_value::<FieldValue>()?),
                "name" => name = Some(map.next_value::<FieldValue>()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(FieldValue::Object(cloud_username.or(name).map(Box::new)))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for FieldValue<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FieldValueVisitor)
    }
}

/// The `visit_*` methods of every JSON scalar (and null), each reading as `$value`: how the
/// lenient types below take a value of a type a path could not go through.
macro_rules! scalars_read_as {
    ($value:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

/// `T` where JSON has an object, `None` for anything else (which is read and skipped): how a path
/// through a value of the wrong type reads as absent.
#[derive(Debug)]
pub(super) struct Nested<T>(pub(super) Option<T>);

impl<T> Default for Nested<T> {
    fn default() -> Self {
        Nested(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Nested<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NestedVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for NestedVisitor<T> {
            type Value = Nested<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(|t| Nested(Some(t)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Nested(None))
            }
            scalars_read_as!(Nested(None));
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                Nested::deserialize(d)
            }
        }
        deserializer.deserialize_any(NestedVisitor(std::marker::PhantomData))
    }
}

/// A list of objects: `None` where JSON has no list; an item that is not an object is `None`.
#[derive(Debug)]
pub(super) struct ObjectList<T>(pub(super) Option<Vec<Option<T>>>);

impl<T> Default for ObjectList<T> {
    fn default() -> Self {
        ObjectList(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectList<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ListVisitor<T> {
            type Value = ObjectList<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(Nested(item)) = seq.next_element::<Nested<T>>()? {
                    items.push(item);
                }
                Ok(ObjectList(Some(items)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(ObjectList(None))
            }
            scalars_read_as!(ObjectList(None));
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                ObjectList::deserialize(d)
            }
        }
        deserializer.deserialize_any(ListVisitor(std::marker::PhantomData))
    }
}

/// `source`: text in v1 (`Endpoint`), an object in v2.
#[derive(Debug, Default)]
pub(super) struct SourceField<'a> {
    /// v1's `source`, as any value (an object reads as no text).
    pub(super) flat: FieldValue<'a>,
    /// v2's `source` object.
    pub(super) nested: Option<V2Source<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for SourceField<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Objects become v2's `source`; everything else is read as a [`FieldValue`].
        struct SourceVisitor;
        impl<'de> Visitor<'de> for SourceVisitor {
            type Value = SourceField<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let nested = V2Source::deserialize(MapAccessDeserializer::new(map))?;
                Ok(SourceField {
                    flat: FieldValue::Object(None),
                    nested: Some(nested),
                })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                FieldValueVisitor.visit_seq(seq).map(flat)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                FieldValueVisitor.visit_bool(v).map(flat)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                FieldValueVisitor.visit_i64(v).map(flat)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                FieldValueVisitor.visit_u64(v).map(flat)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                FieldValueVisitor.visit_f64(v).map(flat)
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                FieldValueVisitor.visit_borrowed_str(v).map(flat)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                FieldValueVisitor.visit_str(v).map(flat)
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                FieldValueVisitor.visit_string(v).map(flat)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(SourceField::default())
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(SourceField::default())
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                SourceField::deserialize(d)
            }
        }
        fn flat(value: FieldValue<'_>) -> SourceField<'_> {
            SourceField {
                flat: value,
                nested: None,
            }
        }
        deserializer.deserialize_any(SourceVisitor)
    }
}

/// A Code42 file event as its CEF mapping reads it: v2's nested objects and v1's flat fields side
/// by side (a record is one or the other: v2 when `event` is an object).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct FileEventView<'a> {
    #[serde(borrow)]
    pub(super) event: Nested<V2Event<'a>>,
    #[serde(rename = "@timestamp", borrow)]
    pub(super) timestamp: FieldValue<'a>,
    #[serde(borrow)]
    pub(super) user: Nested<V2User<'a>>,
    #[serde(borrow)]
    pub(super) source: SourceField<'a>,
    #[serde(borrow)]
    pub(super) destination: Nested<V2Destination<'a>>,
    #[serde(borrow)]
    pub(super) file: Nested<V2File<'a>>,
    #[serde(borrow)]
    pub(super) process: Nested<V2Process<'a>>,
    #[serde(borrow)]
    pub(super) risk: Nested<V2Risk<'a>>,
    #[serde(rename = "eventType", borrow)]
    pub(super) event_type: FieldValue<'a>,
    #[serde(rename = "eventId", borrow)]
    pub(super) event_id: FieldValue<'a>,
    #[serde(rename = "eventTimestamp", borrow)]
    pub(super) event_timestamp: FieldValue<'a>,
    #[serde(rename = "insertionTimestamp", borrow)]
    pub(super) insertion_timestamp: FieldValue<'a>,
    #[serde(rename = "createTimestamp", borrow)]
    pub(super) create_timestamp: FieldValue<'a>,
    #[serde(rename = "modifyTimestamp", borrow)]
    pub(super) modify_timestamp: FieldValue<'a>,
    #[serde(rename = "deviceUid", borrow)]
    pub(super) device_uid: FieldValue<'a>,
    #[serde(borrow)]
    pub(super) actor: FieldValue<'a>,
    #[serde(rename = "deviceUserName", borrow)]
    pub(super) device_user_name: FieldValue<'a>,
    #[serde(rename = "emailSender", borrow)]
    pub(super) email_sender: FieldValue<'a>,
    #[serde(rename = "sharedWith", borrow)]
    pub(super) shared_with: FieldValue<'a>,
    #[serde(rename = "emailRecipients", borrow)]
    pub(super) email_recipients: FieldValue<'a>,
    #[serde(rename = "userUid", borrow)]
    pub(super) user_uid: FieldValue<'a>,
    #[serde(rename = "osHostName", borrow)]
    pub(super) os_host_name: FieldValue<'a>,
    #[serde(rename = "domainName", borrow)]
    pub(super) domain_name: FieldValue<'a>,
    #[serde(rename = "publicIpAddress", borrow)]
    pub(super) public_ip_address: FieldValue<'a>,
    #[serde(rename = "fileName", borrow)]
    pub(super) file_name: FieldValue<'a>,
    #[serde(rename = "filePath", borrow)]
    pub(super) file_path: FieldValue<'a>,
    #[serde(borrow)]
    pub(super) url: FieldValue<'a>,
    #[serde(rename = "fileSize", borrow)]
    pub(super) file_size: FieldValue<'a>,
    #[serde(rename = "fileCategory", borrow)]
    pub(super) file_category: FieldValue<'a>,
    #[serde(rename = "md5Checksum", borrow)]
    pub(super) md5_checksum: FieldValue<'a>,
    #[serde(rename = "processName", borrow)]
    pub(super) process_name: FieldValue<'a>,
    #[serde(rename = "processOwner", borrow)]
    pub(super) process_owner: FieldValue<'a>,
    #[serde(rename = "syncDestination", borrow)]
    pub(super) sync_destination: FieldValue<'a>,
    #[serde(rename = "tabUrl", borrow)]
    pub(super) tab_url: FieldValue<'a>,
    #[serde(rename = "tabUrls", borrow)]
    pub(super) tab_urls: FieldValue<'a>,
    #[serde(rename = "windowTitle", borrow)]
    pub(super) window_title: FieldValue<'a>,
    #[serde(borrow)]
    pub(super) exposure: FieldValue<'a>,
    #[serde(rename = "removableMediaBusType", borrow)]
    pub(super) removable_media_bus_type: FieldValue<'a>,
    #[serde(rename = "removableMediaVendor", borrow)]
    pub(super) removable_media_vendor: FieldValue<'a>,
    #[serde(rename = "removableMediaName", borrow)]
    pub(super) removable_media_name: FieldValue<'a>,
    #[serde(rename = "removableMediaSerialNumber", borrow)]
    pub(super) removable_media_serial_number: FieldValue<'a>,
    #[serde(rename = "removableMediaCapacity", borrow)]
    pub(super) removable_media_capacity: FieldValue<'a>,
    #[serde(rename = "cloudDriveId", borrow)]
    pub(super) cloud_drive_id: FieldValue<'a>,
    #[serde(rename = "riskSeverity", borrow)]
    pub(super) risk_severity: FieldValue<'a>,
}

/// v2 `event`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct V2Event<'a> {
    #[serde(borrow)]
    pub(super) action: FieldValue<'a>,
    #[serde(borrow)]
    pub(super) id: FieldValue<'a>,
    #[serde(borrow)]
    pub(super) inserted: FieldValue<'a>,
    #[serde(borrow)]
    pub(super) observer: FieldValue<'a>,
}

/// v2 `user` (and `destination.user`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct V2User<'a> {
    #[serde(borrow)]
    pub(super) email: FieldValue<'a>,
    #[serde(rename = "deviceUid", borrow)]
    pub(super) device_uid: FieldValue<'a>,
    #[serde(borrow)]
    pub(super) id: FieldValue<'a>,
}

/// v2 `source.email` and `destination.email`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct V2Email<'a> {
    #[serde(borrow)]
    pub(super) sender: FieldValue<'a>,
    #[serde(borrow)]
    pub(super) recipients: FieldValue<'a>,
}

/// v2 `source.removableMedia` and `destination.removableMedia`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct V2Media<'a> {
    #[serde(rename = "busType", borrow)]
    pub(super) bus_type: FieldValue<'a>,
    #[serde(borrow)]
    pub(super) vendor: FieldValue<'a>,
    #[serde(borrow)]
    pub(super) name: FieldValue<'a>,
    #[serde(rename = "serialNumber", borrow)]
    pub(super) serial_number: FieldValue<'a>,
    #[serde(borrow)]
    pub(super) capacity: FieldValue<'a>,
}

/// v2 `source`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct V2Source<'a> {
    #[serde(borrow)]
    pub(super) email: Nested<V2Email<'a>>,
    #[serde(borrow)]
    pub(super) name: FieldValue<'a>,
    #[serde(borrow)]
    pub(super) domain: FieldValue<'a>,
    #[serde(borrow)]
    pub(super) ip: FieldValue<'a>,
    #[serde(rename = "removableMedia", borrow)]
    pub(super) removable_media: Nested<V2Media<'a>>,
}

/// One of v2 `destination.tabs`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct V2Tab<'a> {
    #[serde(borrow)]
    pub(super) url: FieldValue<'a>,
    #[serde(borrow)]
    pub(super) title: FieldValue<'a>,
}

/// v2 `destination`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct V2Destination<'a> {
    #[serde(borrow)]
    pub(super) user: Nested<V2User<'a>>,
    #[serde(borrow)]
    pub(super) email: Nested<V2Email<'a>>,
    #[serde(borrow)]
    pub(super) name: FieldValue<'a>,
    #[serde(borrow)]
    pub(super) tabs: ObjectList<V2Tab<'a>>,
    #[serde(rename = "removableMedia", borrow)]
    pub(super) removable_media: Nested<V2Media<'a>>,
}

/// v2 `file.hash`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct V2Hash<'a> {
    #[serde(borrow)]
    pub(super) md5: FieldValue<'a>,
}

/// v2 `file`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct V2File<'a> {
    #[serde(borrow)]
    pub(super) created: FieldValue<'a>,
    #[serde(borrow)]
    pub(super) modified: FieldValue<'a>,
    #[serde(borrow)]
    pub(super) name: FieldValue<'a>,
    #[serde(borrow)]
    pub(super) directory: FieldValue<'a>,
    #[serde(borrow)]
    pub(super) url: FieldValue<'a>,
    #[serde(rename = "sizeInBytes", borrow)]
    pub(super) size_in_bytes: FieldValue<'a>,
    #[serde(borrow)]
    pub(super) category: FieldValue<'a>,
    #[serde(borrow)]
    pub(super) hash: Nested<V2Hash<'a>>,
    #[serde(rename = "cloudDriveId", borrow)]
    pub(super) cloud_drive_id: FieldValue<'a>,
}

/// v2 `process`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct V2Process<'a> {
    #[serde(borrow)]
    pub(super) executable: FieldValue<'a>,
    #[serde(borrow)]
    pub(super) owner: FieldValue<'a>,
}

/// One of v2 `risk.indicators`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct V2Indicator<'a> {
    #[serde(borrow)]
    pub(super) name: FieldValue<'a>,
}

/// v2 `risk`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct V2Risk<'a> {
    #[serde(borrow)]
    pub(super) indicators: ObjectList<V2Indicator<'a>>,
    #[serde(borrow)]
    pub(super) severity: FieldValue<'a>,
}

impl<'a> FileEventView<'a> {
    /// The view of a record's JSON text. Invalid JSON, or a record that is not an object, reads as
    /// a record with no fields (as a `Value` of `null` would); a record with a key given twice is
    /// read through a `Value`, which keeps the last.
    pub(super) fn of_text(text: &'a str, parsed: &'a mut Option<Value>) -> Self {
        // The scanner reads most records; it declines the rest, which serde reads (as below).
        if let Some(view) = Self::scan(text) {
            return view;
        }
        Self::of_text_by_serde(text, parsed)
    }

    /// [`Self::of_text`] by serde's visitors alone: the reference the scanner is tested against.
    pub(super) fn of_text_by_serde(text: &'a str, parsed: &'a mut Option<Value>) -> Self {
        match serde_json::from_str::<Nested<FileEventView<'a>>>(text) {
            Ok(Nested(view)) => view.unwrap_or_default(),
            Err(_) => Self::of_value(parsed.insert(record_value(text))),
        }
    }

    /// The view of a parsed record.
    pub(super) fn of_value(record: &'a Value) -> Self {
        // A `Value` has no key twice, and every field takes any JSON: this cannot fail.
        Nested::<FileEventView<'a>>::deserialize(record)
            .ok()
            .and_then(|Nested(view)| view)
            .unwrap_or_default()
    }

    /// Whether the record is v2 (nested): its `event` is an object.
    pub(super) fn is_v2(&self) -> bool {
        self.event.0.is_some()
    }
}
