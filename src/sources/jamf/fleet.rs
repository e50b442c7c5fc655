//! Fleet views derived from one full pass over the inventory: per-computer applications, browser
//! extensions and plug-ins, running services, installed and available software updates, virtual
//! machines and an asset summary; an `ip → user` lookup; and fleet-wide counters (computers per
//! service, extension, virtual-machine product and application).
//!
//! Owns: how a computer record (Jamf Pro API shape) becomes view records. Must not: make requests.
//! Invariant: per-computer views are identified by (computer id, report date), so the seen-set
//! forwards them again only when the computer reported again; counters carry the pass time, so
//! every pass reports them once.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::event::{Event, Severity};
use crate::settings::JamfStream;

/// Application, plug-in and model names that mean virtualisation.
const VM_MARKERS: [&str; 5] = [
    "vmware",
    "parallels",
    "virtualbox",
    "utm.app",
    "virtual platform",
];

fn is_vm(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    VM_MARKERS.iter().any(|m| lower.contains(m))
}

// The shared dotted-path reader, under the short name the mapping below reads best with.
use crate::sources::json_path::text_or_empty as text;

fn names(v: &Value, list: &str) -> Vec<String> {
    let mut found: Vec<String> = v
        .get(list)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|item| item.get("name").and_then(Value::as_str).map(str::to_string))
        .collect();
    found.sort();
    found.dedup();
    found
}

fn event(id: String, time: DateTime<Utc>, record: &Value) -> Option<Event> {
    let raw = RawValue::from_string(record.to_string()).ok()?;
    Some(Event::new(id, time, Severity::new(0), &raw))
}

/// Accumulates one pass, computer by computer.
pub struct FleetBuilder {
    streams: BTreeSet<String>,
    pass_at: DateTime<Utc>,
    computers: u64,
    events: HashMap<&'static str, Vec<Event>>,
    counters: BTreeMap<(&'static str, String), u64>,
}

/// The stream name of a fleet view.
pub fn stream_name(stream: JamfStream) -> &'static str {
    match stream {
        JamfStream::Inventory => "inventory",
        JamfStream::Applications => "applications",
        JamfStream::BrowserExtensions => "browser_extensions",
        JamfStream::Services => "services",
        JamfStream::SoftwareUpdates => "software_updates",
        JamfStream::VirtualMachines => "virtual_machines",
        JamfStream::Assets => "assets",
        JamfStream::FleetCounters => "fleet_counters",
        JamfStream::IpUsers => "ip_users",
    }
}

impl FleetBuilder {
    /// A pass started at `pass_at` producing `streams`.
    pub fn new(streams: &[JamfStream], pass_at: DateTime<Utc>) -> Self {
        FleetBuilder {
            streams: streams
                .iter()
                .map(|s| stream_name(*s).to_string())
                .collect(),
            pass_at,
            computers: 0,
            events: HashMap::new(),
            counters: BTreeMap::new(),
        }
    }

    fn push(&mut self, stream: &'static str, id: String, time: DateTime<Utc>, record: Value) {
        if self.streams.contains(stream) {
            if let Some(e) = event(id, time, &record) {
                self.events.entry(stream).or_default().push(e);
            }
        }
    }

    /// Adds one computer record (Jamf Pro API shape).
    pub fn add(&mut self, computer: &Value) {
        self.computers += 1;
        let id = text(computer, "id");
        let report = text(computer, "general.reportDate");
        let time = DateTime::parse_from_rfc3339(report)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(self.pass_at);
        let key = format!("{id}@{report}");
        let base = json!({
            "id": id,
            "name": text(computer, "general.name"),
            "serialNumber": text(computer, "hardware.serialNumber"),
            "reportDate": report,
        });
        let apps = names(computer, "applications");
        let plugins = names(computer, "plugins");
        let services = names(computer, "services");
        let model = text(computer, "hardware.model");
        let virtual_computer = is_vm(model) || is_vm(text(computer, "hardware.modelIdentifier"));
        let vm_products: Vec<String> = apps.iter().filter(|a| is_vm(a)).cloned().collect();

        self.push(
            "applications",
            key.clone(),
            time,
            json!({"computer": base, "applications": computer.get("applications").cloned().unwrap_or(Value::Null)}),
        );
        if !plugins.is_empty() {
            self.push(
                "browser_extensions",
                key.clone(),
                time,
                json!({"computer": base, "plugins": computer.get("plugins").cloned().unwrap_or(Value::Null)}),
            );
        }
        if !services.is_empty() {
            self.push(
                "services",
                key.clone(),
                time,
                json!({"computer": base, "services": services}),
            );
        }
        let available = computer
            .get("softwareUpdates")
            .cloned()
            .unwrap_or(Value::Null);
        let installed = computer
            .get("packageReceipts")
            .and_then(|p| p.get("installedByInstallerSwu"))
            .cloned()
            .unwrap_or(Value::Null);
        self.push(
            "software_updates",
            key.clone(),
            time,
            json!({"computer": base, "available": available, "installed": installed}),
        );
        if virtual_computer || !vm_products.is_empty() {
            self.push(
                "virtual_machines",
                key.clone(),
                time,
                json!({"computer": base, "isVirtual": virtual_computer, "model": model, "vmSoftware": vm_products}),
            );
        }
        let ip = text(computer, "general.lastIpAddress");
        let user = text(computer, "userAndLocation.username");
        self.push(
            "assets",
            key.clone(),
            time,
            json!({
                "computer": base,
                "make": text(computer, "hardware.make"),
                "model": model,
                "user": user,
                "ip": ip,
                "macAddress": text(computer, "hardware.macAddress"),
                "os": format!("{} {}", text(computer, "operatingSystem.name"), text(computer, "operatingSystem.version")).trim().to_string(),
            }),
        );
        if !ip.is_empty() && !user.is_empty() {
            self.push(
                "ip_users",
                format!("{ip}|{user}|{report}"),
                time,
                json!({"ip": ip, "user": user, "computer": text(computer, "general.name"), "reportDate": report}),
            );
        }
        for name in services {
            *self.counters.entry(("service", name)).or_default() += 1;
        }
        for name in plugins {
            *self.counters.entry(("extension", name)).or_default() += 1;
        }
        for name in vm_products {
            *self.counters.entry(("virtual_machine", name)).or_default() += 1;
        }
        if virtual_computer {
            *self
                .counters
                .entry(("virtual_machine", format!("virtual computer: {model}")))
                .or_default() += 1;
        }
        for name in apps {
            *self.counters.entry(("application", name)).or_default() += 1;
        }
    }

    /// The pass's events, by stream name.
    pub fn finish(mut self) -> HashMap<&'static str, Vec<Event>> {
        let at = self.pass_at.to_rfc3339_opts(SecondsFormat::Millis, true);
        let counters = std::mem::take(&mut self.counters);
        for ((kind, name), count) in counters {
            let record = json!({"kind": kind, "name": name, "computers": count, "fleetSize": self.computers, "passAt": at});
            self.push(
                "fleet_counters",
                format!("{kind}:{name}@{at}"),
                self.pass_at,
                record,
            );
        }
        self.events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn computer(id: u64, apps: &[&str], model: &str) -> Value {
        json!({
            "id": id.to_string(),
            "general": {"name": format!("MAC-{id}"), "reportDate": "2026-11-20T10:00:00.000Z", "lastIpAddress": "10.0.0.1"},
            "hardware": {"make": "Apple", "model": model, "serialNumber": "C02X"},
            "userAndLocation": {"username": "alice"},
            "applications": apps.iter().map(|a| json!({"name": a})).collect::<Vec<_>>(),
            "services": [{"name": "com.openssh.sshd"}],
            "plugins": [],
        })
    }

    #[test]
    fn counters_count_computers_not_occurrences() {
        let mut b = FleetBuilder::new(&[JamfStream::FleetCounters], Utc::now());
        b.add(&computer(
            1,
            &["Slack.app", "VMware Fusion.app", "Slack.app"],
            "MacBook Pro",
        ));
        b.add(&computer(2, &["Slack.app"], "VMware Virtual Platform"));
        let out = b.finish();
        let counters: BTreeMap<String, u64> = out["fleet_counters"]
            .iter()
            .map(|e| {
                let v: Value = serde_json::from_str(e.record.as_str()).unwrap();
                (
                    format!(
                        "{}:{}",
                        v["kind"].as_str().unwrap(),
                        v["name"].as_str().unwrap()
                    ),
                    v["computers"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(counters["application:Slack.app"], 2);
        assert_eq!(counters["virtual_machine:VMware Fusion.app"], 1);
        assert_eq!(
            counters["virtual_machine:virtual computer: VMware Virtual Platform"],
            1
        );
        assert_eq!(counters["service:com.openssh.sshd"], 2);
    }

    #[test]
    fn only_requested_streams_are_built_and_ids_follow_report_dates() {
        let mut b = FleetBuilder::new(&[JamfStream::Assets, JamfStream::IpUsers], Utc::now());
        b.add(&computer(7, &[], "Mac mini"));
        let out = b.finish();
        assert!(!out.contains_key("applications"));
        assert_eq!(out["assets"][0].id, "7@2026-11-20T10:00:00.000Z");
        assert_eq!(
            out["ip_users"][0].id,
            "10.0.0.1|alice|2026-11-20T10:00:00.000Z"
        );
    }
}
