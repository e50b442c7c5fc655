//! A page of records read in one pass: the JSON object a vendor answers with (its envelope),
//! whose records are the elements of one array under one key. Each record is read once, for
//! the few fields a source needs, and its text is kept as the slice of the body it came in.
//!
//! Owns: [`read_envelope`] and what it returns. Must not: know a vendor's keys or fields (the
//! caller names its list's key and the type of its fields), or keep the records: each is handed
//! to the caller as soon as it is read, so a page's fields are never all held at once. Invariant:
//! a record's text is exactly the JSON value serde_json read the record's fields from (validated
//! by that read), and the records come in the body's order; a body that is not a JSON object, or
//! whose list is not a list, is an error (the caller drops what it was handed), never a shorter
//! page.
//!
//! Why not derive: serde reads a record either as raw text (`&RawValue`: one pass to find its
//! end) or as fields (a second pass over the same bytes); only the reader's byte offset, which
//! serde_json's stream reader gives, tells where a record read as fields ends.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::sources::record_fields::FieldText;

/// One record of the list.
#[derive(Debug)]
pub struct ListItem<'a, T> {
    /// The record's JSON text, a slice of the body.
    pub text: &'a str,
    /// The record read as `T`; `None` when it does not read as `T` (a record of unusual shape,
    /// which the caller reads the general way from `text`).
    pub fields: Option<T>,
}

/// A page's envelope read by [`read_envelope`], but for its list.
#[derive(Debug)]
pub struct Envelope<'a> {
    /// Every other key of the envelope with its value's text, in order.
    pub others: Vec<(FieldText<'a>, &'a RawValue)>,
}

impl Envelope<'_> {
    /// The value of another key of the envelope as `V`: `None` when it is absent (or `null`, for an
    /// `Option`), an error when it does not read as `V` or the key is given twice (as a derived
    /// struct would refuse it).
    pub fn other<V: DeserializeOwned>(&self, key: &str) -> Result<Option<V>, String> {
        let mut given = self.others.iter().filter(|(k, _)| k.as_str() == key);
        match (given.next(), given.next()) {
            (None, _) => Ok(None),
            (Some(_), Some(_)) => Err(format!("`{key}` is given twice")),
            (Some((_, raw)), None) => serde_json::from_str(raw.get())
                .map(Some)
                .map_err(|e| format!("`{key}`: {e}")),
        }
    }
}

/// Reads `text`, a JSON object, in one pass: every element of the array under `list_key` as `T`
/// (with its own text), handed to `each` in order; every other key as raw text. Err: why the body
/// is not such an object (the message names the offset), including `list_key` given twice or
/// holding anything but a list.
pub fn read_envelope<'a, T: Deserialize<'a>>(
    text: &'a str,
    list_key: &str,
    mut each: impl FnMut(ListItem<'a, T>),
) -> Result<Envelope<'a>, String> {
    let mut reader = Reader { text, at: 0 };
    let mut envelope = Envelope { others: Vec::new() };
    let mut list_seen = false;
    reader.expect(b'{')?;
    if !reader.next_is(b'}') {
        loop {
            let key: FieldText<'a> = reader.value()?;
            reader.expect(b':')?;
            if key.as_str() == list_key {
                if list_seen {
                    return Err(format!("`{list_key}` is given twice"));
                }
                list_seen = true;
                reader.list(list_key, &mut each)?;
            } else {
                let value: &'a RawValue = reader.value()?;
                envelope.others.push((key, value));
            }
            if !reader.next_is(b',') {
                break;
            }
        }
        reader.expect(b'}')?;
    }
    reader.skip_whitespace();
    if reader.at != text.len() {
        return Err(format!("trailing characters at byte {}", reader.at));
    }
    Ok(envelope)
}

/// Where the scan of the envelope is.
struct Reader<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Reader<'a> {
    fn skip_whitespace(&mut self) {
        let bytes = self.text.as_bytes();
        while bytes
            .get(self.at)
            .is_some_and(|b| matches!(b, b' ' | b'\n' | b'\r' | b'\t'))
        {
            self.at += 1;
        }
    }

    /// Skips whitespace and then `byte`, which must come next.
    fn expect(&mut self, byte: u8) -> Result<(), String> {
        if self.next_is(byte) {
            Ok(())
        } else {
            Err(format!(
                "expected `{}` at byte {} of the body",
                char::from(byte),
                self.at
            ))
        }
    }

    /// Skips whitespace and then `byte` if it comes next; whether it did.
    fn next_is(&mut self, byte: u8) -> bool {
        self.skip_whitespace();
        if self.text.as_bytes().get(self.at) == Some(&byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    /// Reads the next JSON value as `V`.
    fn value<V: Deserialize<'a>>(&mut self) -> Result<V, String> {
        self.try_value()
            .map_err(|e| format!("{e} (at byte {} of the body)", self.at))
    }

    /// Reads the next JSON value as `V`; on an error, the position is unchanged.
    fn try_value<V: Deserialize<'a>>(&mut self) -> Result<V, serde_json::Error> {
        let rest = self.text.get(self.at..).unwrap_or_default();
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<V>();
        match values.next() {
            Some(Ok(value)) => {
                self.at += values.byte_offset();
                Ok(value)
            }
            Some(Err(e)) => Err(e),
            None => Err(serde::de::Error::custom("the body ends early")),
        }
    }

    /// Reads the list under `key` into `items`.
    fn list<T: Deserialize<'a>>(
        &mut self,
        key: &str,
        each: &mut impl FnMut(ListItem<'a, T>),
    ) -> Result<(), String> {
        if !self.next_is(b'[') {
            return Err(format!("`{key}` is not a list (at byte {})", self.at));
        }
        if self.next_is(b']') {
            return Ok(());
        }
        loop {
            self.skip_whitespace();
            let start = self.at;
            let fields = match self.try_value::<T>() {
                Ok(fields) => Some(fields),
                // Not `T`: find where the record ends by reading it as raw JSON instead.
                Err(_) => {
                    self.value::<&'a RawValue>()?;
                    None
                }
            };
            each(ListItem {
                text: &self.text[start..self.at],
                fields,
            });
            if !self.next_is(b',') {
                break;
            }
        }
        self.expect(b']')
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::record_fields::Object;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Fields {
        id: String,
    }

    #[test]
    fn each_record_is_read_once_with_its_exact_text_and_the_other_keys_kept() {
        let body =
            " { \"next\" : \"t-2\", \"records\" : [ {\"id\":\"a\",\"x\":[1,{\"y\":\"]\"}]} ,\n\
                    {\"id\":\"b\"},{\"id\":7},[\"odd\"] ], \"problems\":null } ";
        let mut items = Vec::new();
        let page = read_envelope(body, "records", |item: ListItem<Object<Fields>>| {
            items.push(item)
        })
        .unwrap();
        let texts: Vec<&str> = items.iter().map(|i| i.text).collect();
        assert_eq!(
            texts,
            [
                "{\"id\":\"a\",\"x\":[1,{\"y\":\"]\"}]}",
                "{\"id\":\"b\"}",
                "{\"id\":7}",
                "[\"odd\"]"
            ]
        );
        let ids: Vec<Option<&str>> = items
            .iter()
            .map(|i| i.fields.as_ref().map(|Object(f)| f.id.as_str()))
            .collect();
        assert_eq!(ids, [Some("a"), Some("b"), None, None]);
        assert_eq!(
            page.other::<String>("next").unwrap().as_deref(),
            Some("t-2")
        );
        assert_eq!(
            page.other::<Option<String>>("problems").unwrap(),
            Some(None)
        );
        assert_eq!(page.other::<String>("absent").unwrap(), None);
        assert!(page.other::<u32>("next").is_err());
        let twice = read_envelope(
            r#"{"next":"a","records":[],"next":"b"}"#,
            "records",
            |_: ListItem<Fields>| {},
        )
        .unwrap();
        assert!(
            twice.other::<String>("next").is_err(),
            "a page token given twice"
        );
    }

    #[test]
    fn an_empty_or_absent_list_is_an_empty_page() {
        for body in ["{}", "{\"records\":[]}", "{ \"records\" : [ ] , \"n\":1}"] {
            let mut items = 0;
            read_envelope(body, "records", |_: ListItem<Fields>| items += 1).unwrap();
            assert_eq!(items, 0, "{body}");
        }
    }

    #[test]
    fn a_body_of_another_shape_is_an_error_not_a_shorter_page() {
        for body in [
            "",
            "[]",
            "null",
            "{\"records\":null}",
            "{\"records\":{\"id\":\"a\"}}",
            "{\"records\":[{\"id\":\"a\"}]",
            "{\"records\":[{\"id\":\"a\"},]}",
            "{\"records\":[{\"id\":\"a\"} {\"id\":\"b\"}]}",
            "{\"records\":[{\"id\":\"a\"]}",
            "{\"records\":[],\"records\":[]}",
            "{\"records\":[]} x",
            "{\"records\":[],}",
            "{\"n\" 1}",
        ] {
            assert!(
                read_envelope(body, "records", |_: ListItem<Fields>| {}).is_err(),
                "{body:?} was read"
            );
        }
    }
}
