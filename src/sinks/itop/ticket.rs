//! What a ticket says: which rule a record falls under, and the title, description, log entry and
//! fields written from the record's [`IncidentFacts`].
//!
//! Owns: the rules (sources, streams, minimum severity, field matches) and the title/description
//! templates. Must not: know a vendor's field names (they come through [`IncidentFacts`] and
//! `{record.<path>}`) or talk to iTop. Invariant: a template is checked when the sink is built, so
//! a typo in a placeholder stops the start naming its key instead of writing tickets without it.

use serde_json::{Map, Value};

use crate::event::OutboxRecord;
use crate::json_path;
use crate::mapping::IncidentFacts;
use crate::settings::{ItopRule, ItopSettings, SetupError};

/// iTop's limit on `title`, in characters.
const TITLE_MAX: usize = 255;

/// A record with what its vendor's mapping says of it.
pub struct Subject<'a> {
    /// The outbox row.
    pub row: &'a OutboxRecord,
    /// Its record, parsed.
    pub record: &'a Value,
    /// The incident facts its vendor's mapping gives.
    pub facts: &'a IncidentFacts,
}

/// A fact a template can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fact {
    Vendor,
    Name,
    Severity,
    State,
    User,
    Host,
    Src,
    Dst,
    Rules,
    Time,
    Link,
    Alert,
    Source,
    Stream,
    Event,
}

const FACTS: [(&str, Fact); 15] = [
    ("vendor", Fact::Vendor),
    ("name", Fact::Name),
    ("severity", Fact::Severity),
    ("state", Fact::State),
    ("user", Fact::User),
    ("host", Fact::Host),
    ("src", Fact::Src),
    ("dst", Fact::Dst),
    ("rules", Fact::Rules),
    ("time", Fact::Time),
    ("link", Fact::Link),
    ("alert", Fact::Alert),
    ("source", Fact::Source),
    ("stream", Fact::Stream),
    ("event", Fact::Event),
];

fn fact(s: &Subject<'_>, f: Fact) -> String {
    let facts = s.facts;
    match f {
        Fact::Vendor => facts.vendor.clone(),
        Fact::Name => facts.name.clone(),
        Fact::Severity => s.row.severity.to_string(),
        Fact::State => facts.state.clone(),
        Fact::User => facts.user.clone(),
        Fact::Host => facts.host.clone(),
        Fact::Src => facts.source_address.clone(),
        Fact::Dst => facts.destination_address.clone(),
        Fact::Rules => facts.rules.join(", "),
        Fact::Time => s
            .row
            .event_time
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        Fact::Link => facts.link.clone(),
        Fact::Alert => facts.alert_key.clone(),
        Fact::Source => s.row.source.clone(),
        Fact::Stream => s.row.stream.clone(),
        Fact::Event => s.row.event_id.clone(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Fact(Fact),
    Record(String),
}

/// A parsed title or description template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

impl Template {
    /// Parses `text`; Err says what is wrong (an unknown placeholder, a brace left open).
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(format!("`{{{name}` is not closed")),
                        }
                    }
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    let name = name.trim();
                    if let Some(path) = name.strip_prefix("record.") {
                        if path.is_empty() {
                            return Err("`{record.}` names no field".to_string());
                        }
                        pieces.push(Piece::Record(path.to_string()));
                    } else if let Some((_, f)) = FACTS.iter().find(|(n, _)| *n == name) {
                        pieces.push(Piece::Fact(*f));
                    } else {
                        let known: Vec<&str> = FACTS.iter().map(|(n, _)| *n).collect();
                        return Err(format!(
                            "unknown placeholder `{{{name}}}` (known: {}, record.<path>)",
                            known.join(", ")
                        ));
                    }
                }
                '}' => return Err("a `}` without its `{` (write `}}` for a brace)".to_string()),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template(pieces))
    }

    /// The template filled in for `s`; a field the record lacks becomes empty text.
    pub fn render(&self, s: &Subject<'_>) -> String {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Fact(f) => out.push_str(&fact(s, *f)),
                Piece::Record(path) => out.push_str(&record_text(s.record, path)),
            }
        }
        out
    }
}

/// The value at `path` as text: strings as they are, other values as JSON, missing as nothing.
fn record_text(record: &Value, path: &str) -> String {
    match json_path::at(record, path) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// One rule, checked and parsed.
#[derive(Debug, Clone)]
pub struct Rule {
    sources: Vec<String>,
    streams: Vec<String>,
    min_severity: u8,
    matches: Vec<(String, String)>,
    title: Option<Template>,
    description: Option<Template>,
    /// The class of the tickets it opens.
    pub class: String,
    /// The attributes set on create: the sink's, then the rule's over them.
    pub fields: Map<String, Value>,
}

impl Rule {
    /// The rule of `settings` at `key`, its templates parsed.
    fn new(settings: &ItopSettings, rule: &ItopRule, key: &str) -> Result<Rule, SetupError> {
        let template = |name: &str, text: &Option<String>| {
            text.as_deref()
                .map(Template::parse)
                .transpose()
                .map_err(|e| SetupError::new(format!("{key}.{name}"), e))
        };
        let mut fields: Map<String, Value> = settings.fields.clone().into_iter().collect();
        fields
            .entry("origin")
            .or_insert_with(|| Value::String("monitoring".into()));
        fields.extend(rule.fields.clone());
        Ok(Rule {
            sources: rule.sources.clone(),
            streams: rule.streams.clone(),
            min_severity: rule.min_severity,
            matches: rule.matches.clone().into_iter().collect(),
            title: template("title", &rule.title)?,
            description: template("description", &rule.description)?,
            class: rule.class.clone().unwrap_or_else(|| settings.class.clone()),
            fields,
        })
    }

    /// Whether a record of `row` with `record` falls under this rule.
    fn applies(&self, row: &OutboxRecord, record: &Value) -> bool {
        (self.sources.is_empty() || self.sources.contains(&row.source))
            && (self.streams.is_empty() || self.streams.contains(&row.stream))
            && row.severity >= self.min_severity
            && self
                .matches
                .iter()
                .all(|(path, want)| record_text(record, path) == *want)
    }

    /// The title: the rule's template, or vendor, alert name, user and host; at most 255
    /// characters.
    pub fn title(&self, s: &Subject<'_>) -> String {
        let title = match &self.title {
            Some(t) => t.render(s),
            None => {
                let f = s.facts;
                let mut title = format!("{}: {}", f.vendor, f.name);
                if !f.user.is_empty() {
                    title.push_str(&format!(" — {}", f.user));
                }
                if !f.host.is_empty() {
                    title.push_str(&format!(" on {}", f.host));
                }
                title
            }
        };
        let title = title.split_whitespace().collect::<Vec<_>>().join(" ");
        if title.chars().count() > TITLE_MAX {
            let cut: String = title.chars().take(TITLE_MAX - 1).collect();
            format!("{cut}…")
        } else {
            title
        }
    }

    /// The description as HTML: the rule's template, or every known fact on a line of its own.
    pub fn description(&self, s: &Subject<'_>) -> String {
        let text = match &self.description {
            Some(t) => t.render(s),
            None => default_description(s),
        };
        let lines: Vec<String> = text.lines().map(html_escape).collect();
        format!("<p>{}</p>", lines.join("<br>"))
    }
}

fn default_description(s: &Subject<'_>) -> String {
    let f = s.facts;
    let lines = [
        ("Vendor", f.vendor.clone()),
        ("Alert", f.name.clone()),
        ("Severity", format!("{}/10", s.row.severity)),
        ("State", f.state.clone()),
        ("User", f.user.clone()),
        ("Host", f.host.clone()),
        ("Source address", f.source_address.clone()),
        ("Destination address", f.destination_address.clone()),
        ("Rules", f.rules.join(", ")),
        ("Event time", fact(s, Fact::Time)),
        ("Link", f.link.clone()),
        (
            "Alert id",
            format!(
                "{} (source {}, stream {})",
                f.alert_key, s.row.source, s.row.stream
            ),
        ),
    ];
    lines
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The public-log entry (plain text) for a later record of an alert that already has a ticket.
pub fn log_entry(s: &Subject<'_>) -> String {
    let f = s.facts;
    let mut text = format!("{} — {}", fact(s, Fact::Time), f.vendor);
    if f.state.is_empty() {
        text.push_str(" reports a change");
    } else {
        text.push_str(&format!(" reports state {}", f.state));
    }
    text.push_str(&format!(
        ": {} (severity {}/10, event {})",
        f.name, s.row.severity, s.row.event_id
    ));
    if !f.rules.is_empty() {
        text.push_str(&format!("\nRules: {}", f.rules.join(", ")));
    }
    text
}

/// Whether a ticket description (HTML, as iTop returns it) names the alert `alert_key`: the
/// default description does, and a template that keeps `{alert}` does.
pub fn mentions(description: &str, alert_key: &str) -> bool {
    !alert_key.is_empty() && description.contains(&html_escape(alert_key))
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// The sink's rules in order; the first that applies wins.
#[derive(Debug, Clone)]
pub struct Rules(Vec<Rule>);

impl Rules {
    /// The rules of the sink at `at`, templates parsed.
    pub fn new(settings: &ItopSettings, at: &str) -> Result<Rules, SetupError> {
        settings
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| Rule::new(settings, r, &format!("{at}.rules[{i}]")))
            .collect::<Result<_, _>>()
            .map(Rules)
    }

    /// The first rule a record falls under.
    pub fn matching(&self, row: &OutboxRecord, record: &Value) -> Option<&Rule> {
        self.0.iter().find(|r| r.applies(row, record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn row(severity: u8) -> OutboxRecord {
        OutboxRecord {
            seq: 1,
            source: "c42".into(),
            stream: "sessions".into(),
            tenant: String::new(),
            event_id: "s-1@5".into(),
            event_time: chrono::Utc.with_ymd_and_hms(2026, 11, 30, 8, 0, 0).unwrap(),
            ingest_time: chrono::Utc.with_ymd_and_hms(2026, 11, 30, 8, 0, 1).unwrap(),
            severity,
            record: "{}".into(),
        }
    }

    fn facts() -> IncidentFacts {
        IncidentFacts {
            alert_key: "s-1".into(),
            vendor: "Code42 Incydr".into(),
            name: "3 files to <USB>".into(),
            state: "OPEN".into(),
            user: "eng@example.com".into(),
            rules: vec!["USB exfiltration".into()],
            ..IncidentFacts::default()
        }
    }

    fn settings(rules: &str) -> ItopSettings {
        let text = format!(
            "url = \"https://itop.example\"\nuser = \"u\"\npassword = \"p\"\n\
             fields = {{ org_id = 2 }}\n{rules}"
        );
        toml_settings(&text)
    }

    fn toml_settings(text: &str) -> ItopSettings {
        let value: serde_json::Value = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap();
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn templates_fill_facts_and_record_fields_and_refuse_typos() {
        let t = Template::parse("[{vendor}] {name} by {user} {{x}} {record.a.b}").unwrap();
        let record = serde_json::json!({"a": {"b": 7}});
        let (row, facts) = (row(5), facts());
        let s = Subject {
            row: &row,
            record: &record,
            facts: &facts,
        };
        assert_eq!(
            t.render(&s),
            "[Code42 Incydr] 3 files to <USB> by eng@example.com {x} 7"
        );
        assert!(Template::parse("{usr}")
            .unwrap_err()
            .contains("unknown placeholder `{usr}`"));
        assert!(Template::parse("{name").is_err());
        assert!(Template::parse("a } b").is_err());
    }

    #[test]
    fn the_first_rule_that_applies_wins_by_stream_severity_and_match() {
        let s = settings(
            "[[rules]]\nstreams = [\"alerts\"]\nclass = \"SIEMIncident\"\n\
             [[rules]]\nstreams = [\"sessions\"]\nmin_severity = 5\nmatch = { \"type\" = \"STANDARD\" }\n\
             fields = { urgency = \"2\" }\n",
        );
        let rules = Rules::new(&s, "sinks.t").unwrap();
        let standard = serde_json::json!({"type": "STANDARD"});
        assert!(
            rules.matching(&row(4), &standard).is_none(),
            "below severity"
        );
        assert!(rules
            .matching(&row(5), &serde_json::json!({"type": "OTHER"}))
            .is_none());
        let rule = rules.matching(&row(5), &standard).unwrap();
        assert_eq!(rule.class, "Incident");
        assert_eq!(
            Value::Object(rule.fields.clone()),
            serde_json::json!({"org_id": 2, "origin": "monitoring", "urgency": "2"})
        );
    }

    #[test]
    fn default_title_and_description_carry_the_facts_escaped() {
        let s = settings("[[rules]]\n");
        let rules = Rules::new(&s, "sinks.t").unwrap();
        let (row, facts) = (row(5), facts());
        let record = serde_json::json!({});
        let subject = Subject {
            row: &row,
            record: &record,
            facts: &facts,
        };
        let rule = rules.matching(&row, &record).unwrap();
        assert_eq!(
            rule.title(&subject),
            "Code42 Incydr: 3 files to <USB> — eng@example.com"
        );
        assert_eq!(
            rule.description(&subject),
            "<p>Vendor: Code42 Incydr<br>Alert: 3 files to &lt;USB&gt;<br>Severity: 5/10<br>\
             State: OPEN<br>User: eng@example.com<br>Rules: USB exfiltration<br>\
             Event time: 2026-11-30T08:00:00Z<br>Alert id: s-1 (source c42, stream sessions)</p>"
        );
        assert_eq!(
            log_entry(&subject),
            "2026-11-30T08:00:00Z — Code42 Incydr reports state OPEN: 3 files to <USB> \
             (severity 5/10, event s-1@5)\nRules: USB exfiltration"
        );
    }

    #[test]
    fn a_long_title_is_cut_to_itops_limit() {
        let s = settings("[[rules]]\ntitle = \"{record.t}\"\n");
        let rules = Rules::new(&s, "sinks.t").unwrap();
        let (row, facts) = (row(5), facts());
        let record = serde_json::json!({"t": "é".repeat(300)});
        let subject = Subject {
            row: &row,
            record: &record,
            facts: &facts,
        };
        let title = rules.matching(&row, &record).unwrap().title(&subject);
        assert_eq!(title.chars().count(), 255);
        assert!(title.ends_with('…'));
    }

    #[test]
    fn a_bad_template_names_its_key() {
        let s = settings("[[rules]]\n[[rules]]\ndescription = \"{hots}\"\n");
        let e = Rules::new(&s, "sinks.t").unwrap_err();
        assert_eq!(e.key, "sinks.t.rules[1].description");
    }
}
