//! `config/default.toml` documents every key: each field of every settings struct, as serde
//! names it, is listed there (the source and sink keys in their commented examples), and that
//! file and every example config in `config/` load.
//!
//! The field names come from serde itself: [`FieldRecorder`] is a deserializer that writes down
//! the field list every struct hands to `deserialize_struct` and walks into each field's value, so
//! a new key is caught without this file naming it.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::*;

/// Dotted key paths seen, relative to where the walk started.
type Keys = Rc<RefCell<BTreeSet<String>>>;

/// A deserializer that records struct field names and feeds every value a harmless default.
struct FieldRecorder {
    at: String,
    keys: Keys,
}

#[derive(Debug)]
struct Stop(String);
impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Stop {}
impl de::Error for Stop {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Stop(msg.to_string())
    }
}

impl<'de> de::Deserializer<'de> for FieldRecorder {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        // Numbers of every width, and untagged values (secrets, external keys), take a zero.
        visitor.visit_u64(0)
    }
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_str("")
    }
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_str("")
    }
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_bool(false)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_i64(0)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_u64(0)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_f64(0.0)
    }
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_some(self)
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        visitor.visit_newtype_struct(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        // One element, so the fields of a list of tables (`[[sources.x.filters]]`) are walked.
        visitor.visit_seq(OneElement(Some(self)))
    }
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_map(de::value::MapDeserializer::new(std::iter::empty::<(
            &str,
            &str,
        )>()))
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        let mut keys = self.keys.borrow_mut();
        for f in fields {
            keys.insert(format!("{}{f}", self.at));
        }
        drop(keys);
        visitor.visit_map(Fields {
            at: self.at,
            keys: self.keys,
            fields: fields.iter(),
            current: "",
        })
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        let first = variants.first().copied().unwrap_or_default();
        visitor.visit_enum(IntoDeserializer::<Stop>::into_deserializer(first))
    }
    serde::forward_to_deserialize_any! {
        i8 i16 i32 i128 u8 u16 u32 u128 f32 char bytes byte_buf unit unit_struct
        tuple tuple_struct identifier ignored_any
    }
}

/// A list of one element, itself recorded.
struct OneElement(Option<FieldRecorder>);

impl<'de> de::SeqAccess<'de> for OneElement {
    type Error = Stop;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Stop> {
        self.0.take().map(|r| seed.deserialize(r)).transpose()
    }
}

impl<'de> IntoDeserializer<'de, Stop> for FieldRecorder {
    type Deserializer = FieldRecorder;
    fn into_deserializer(self) -> FieldRecorder {
        self
    }
}

/// Every field of one struct, each value recorded in turn.
struct Fields {
    at: String,
    keys: Keys,
    fields: std::slice::Iter<'static, &'static str>,
    current: &'static str,
}

impl<'de> MapAccess<'de> for Fields {
    type Error = Stop;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Stop> {
        match self.fields.next() {
            None => Ok(None),
            Some(f) => {
                self.current = f;
                seed.deserialize(IntoDeserializer::<Stop>::into_deserializer(*f))
                    .map(Some)
            }
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Stop> {
        seed.deserialize(FieldRecorder {
            at: format!("{}{}.", self.at, self.current),
            keys: self.keys.clone(),
        })
    }
}

/// The dotted key paths of `T` (a settings struct) as serde names them.
fn keys_of<T: for<'de> Deserialize<'de>>() -> BTreeSet<String> {
    let keys: Keys = Rc::default();
    // A value check may refuse the defaults fed in; every key was recorded before it is checked.
    let _ = T::deserialize(FieldRecorder {
        at: String::new(),
        keys: keys.clone(),
    });
    let found = keys.borrow().clone();
    found
}

/// The lines of `text` from the first line containing `start` to the next blank-ish block start
/// (`# [sources.`/`# [sinks.`/`[section]` line after it).
fn block<'a>(text: &'a str, start: &str) -> Vec<&'a str> {
    let mut lines = text.lines().skip_while(|l| !l.contains(start));
    let mut out: Vec<&str> = lines.next().into_iter().collect();
    for l in lines {
        let t = l.trim_start_matches('#').trim_start();
        let header = t.starts_with('[') && !t.starts_with("[[");
        let nested = header
            && out.first().is_some_and(|first| {
                let first = first.trim_start_matches('#').trim_start();
                // `[sinks.tickets.resolve]` belongs to `[sinks.tickets]`.
                let parent = first
                    .trim_end_matches(|c: char| c != ']')
                    .trim_end_matches(']');
                t.starts_with(parent) && t.len() > parent.len() + 1
            });
        if (header && !nested) || l.starts_with("# ----") {
            break;
        }
        out.push(l);
    }
    out
}

/// Whether `key` (the last part of a dotted path) is set or shown as a table in `lines`.
fn documented(lines: &[&str], key: &str) -> bool {
    lines.iter().any(|l| {
        let t = l.trim_start_matches('#').trim_start();
        t.starts_with(&format!("{key} ="))
            || t.contains(&format!("{{ {key} ="))
            || t.contains(&format!(", {key} ="))
            || t.contains(&format!(".{key}]"))
    })
}

#[test]
fn every_settings_key_is_documented_in_default_toml() {
    let text = DEFAULT_TOML;
    let mut missing = Vec::new();
    let sections: [(&str, BTreeSet<String>); 7] = [
        ("store", keys_of::<StoreSettings>()),
        ("outbox", keys_of::<OutboxSettings>()),
        ("scheduler", keys_of::<SchedulerSettings>()),
        ("backfill", keys_of::<BackfillSettings>()),
        ("log", keys_of::<LogSettings>()),
        ("http", keys_of::<HttpSettings>()),
        ("metrics", keys_of::<MetricsSettings>()),
    ];
    // Every top-level section is one of those.
    let top = keys_of::<Settings>();
    for key in top.iter().filter(|k| !k.contains('.')) {
        assert!(
            ["sources", "sinks"].contains(&key.as_str()) || sections.iter().any(|(s, _)| s == key),
            "section [{key}] is not checked here: add it"
        );
    }
    for (section, keys) in &sections {
        let lines = block(text, &format!("[{section}]"));
        assert!(!lines.is_empty(), "default.toml has no [{section}]");
        for key in keys {
            if !documented(&lines, key.rsplit('.').next().unwrap_or(key)) {
                missing.push(format!("{section}.{key}"));
            }
        }
    }
    let typed: [(&str, &str, BTreeSet<String>); 8] = [
        ("sources", "sophos", keys_of::<SophosSettings>()),
        ("sources", "code42", keys_of::<Code42Settings>()),
        ("sources", "tenable_sc", keys_of::<TenableScSettings>()),
        ("sources", "jamf", keys_of::<JamfSettings>()),
        ("sinks", "file", keys_of::<FileSinkSettings>()),
        ("sinks", "syslog", keys_of::<SyslogSinkSettings>()),
        ("sinks", "splunk_hec", keys_of::<SplunkHecSettings>()),
        ("sinks", "itop", keys_of::<ItopSettings>()),
    ];
    for (kind, type_name, keys) in &typed {
        assert!(
            !keys.is_empty(),
            "no keys recorded for {kind} type {type_name}"
        );
        // The commented example table whose `type = "…"` line names this type.
        let type_line = format!("type = \"{type_name}\"");
        let header = text
            .lines()
            .collect::<Vec<_>>()
            .windows(2)
            .find(|w| w[0].contains(&format!("[{kind}.")) && w[1].contains(&type_line))
            .map(|w| w[0].to_string())
            .unwrap_or_else(|| panic!("default.toml has no example {kind} with {type_line}"));
        let lines = block(text, &header);
        for key in keys {
            if !documented(&lines, key.rsplit('.').next().unwrap_or(key)) {
                missing.push(format!("{kind}.<{type_name}>.{key}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "keys settings accept that config/default.toml does not document: {missing:?}"
    );
}

#[test]
fn the_recorder_sees_nested_and_listed_tables() {
    // Guards the walk itself: keys of nested tables and of lists of tables are found.
    let itop = keys_of::<ItopSettings>();
    assert!(itop.contains("resolve.stimulus"), "{itop:?}");
    assert!(itop.contains("rules.min_severity"), "{itop:?}");
    let hec = keys_of::<SplunkHecSettings>();
    assert!(hec.contains("routes.sourcetype"), "{hec:?}");
}

#[test]
fn default_toml_and_every_example_config_load() {
    let defaults = Settings::from_toml("").expect("config/default.toml alone loads");
    assert!(defaults.sources.is_empty() && defaults.sinks.is_empty());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut loaded = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Secrets the examples read from files are given inline here: the files do not exist.
        let mut text = text;
        for line in text.clone().lines() {
            let t = line.trim_start();
            if let Some((key, _)) = t.split_once("_file =") {
                if ["client_secret", "secret_key", "password", "token"].contains(&key.trim()) {
                    text = text.replace(line, &format!("{key} = \"example-secret\""));
                }
            }
        }
        Settings::from_toml(&text)
            .unwrap_or_else(|e| panic!("{} does not load: {e}", path.display()));
        loaded += 1;
    }
    assert!(loaded >= 3, "only {loaded} configs in config/");
}
