//! The incident desk: alerts in, incidents out.
//!
//! The desk holds the live state of alerting (every alert by fingerprint, every incident not yet
//! closed, the silences) and decides, for each alert that comes in:
//!
//! - **dedup**: an alert already known (same fingerprint) updates its row and its incident; it
//!   never opens a second incident, and the incident is notified once, not per repeat;
//! - **where it belongs** (topology first): the alert is located on an inventory entity from its
//!   labels ([`locate`]); its *anchor* is the most fundamental failed thing under that entity
//!   (a Proxmox node, VM or Kubernetes node that the inventory reports down, or that is already
//!   the root of an open incident), else the entity itself. Alerts with the same anchor share
//!   one incident; an incident opened for something that turns out to sit on a failed node is
//!   folded into that node's incident as symptoms. Alerts that name nothing in the inventory are
//!   grouped by name within a time window;
//! - **noise**: silences and maintenance windows (an entity's window covers everything placed
//!   on it) keep an alert out of incidents; an alert that flips between firing and resolved too
//!   often is marked flapping, and its flips neither close nor reopen anything.
//!
//! Each incident ranks its suspected root causes with the evidence for each.
//!
//! Pure: no I/O, no clock (every call takes `now_ms`). What changed is returned as a [`Delta`]
//! for the caller to store in one transaction before it acknowledges the alerts.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use labops_core::inventory::{Entity, EntityKind, Inventory};
use serde::{Deserialize, Serialize};

use crate::intake::{Alert, Source, Status};

/// Tunables; the defaults suit a homelab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// Alerts that name nothing in the inventory join an open incident of the same alert name
    /// opened this recently, in milliseconds.
    pub group_window_ms: i64,
    /// An incident is notified this long after it opened (so a storm's symptoms can fold into
    /// its cause first), in milliseconds.
    pub group_wait_ms: i64,
    /// Flapping: this many status changes ...
    pub flap_changes: usize,
    /// ... within this window, in milliseconds.
    pub flap_window_ms: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Self { group_window_ms: 5 * 60_000, group_wait_ms: 30_000, flap_changes: 4, flap_window_ms: 10 * 60_000 }
    }
}

/// An incident's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentState {
    /// Alerts firing, nobody has said they are on it.
    Open,
    /// A human has acknowledged it (escalation stops).
    Acknowledged,
    /// Every alert resolved, or a human resolved it.
    Resolved,
    /// Folded into another incident (its cause).
    Merged,
}

impl IncidentState {
    /// Its name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Acknowledged => "acknowledged",
            Self::Resolved => "resolved",
            Self::Merged => "merged",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "open" => Self::Open,
            "acknowledged" => Self::Acknowledged,
            "resolved" => Self::Resolved,
            "merged" => Self::Merged,
            _ => return None,
        })
    }

    /// Still needs attention.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Open | Self::Acknowledged)
    }
}

/// One alert as the desk knows it: the latest the senders said, plus what the desk worked out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRecord {
    /// The alert as last received.
    #[serde(flatten)]
    pub alert: Alert,
    /// The inventory entity it is about, when its labels name exactly one.
    pub entity: Option<String>,
    /// The incident it belongs to (none while silenced).
    pub incident: Option<i64>,
    /// First and last time it was received, Unix milliseconds.
    pub first_seen_ms: i64,
    /// Last time it was received.
    pub last_seen_ms: i64,
    /// How many times it was received.
    pub received: u64,
    /// When its status changed, newest last (for flapping), within the flap window.
    pub changes_ms: Vec<i64>,
    /// Why it is kept out of incidents or notifications (`silenced by #3`, `flapping`), if it is.
    pub suppressed: Option<String>,
}

/// A suspected root cause, with its score in [0, 1] and the evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Cause {
    /// Entity id.
    pub entity: String,
    /// Its kind.
    pub kind: String,
    /// Its qualified name.
    pub name: String,
    /// Higher is more likely.
    pub score: f64,
    /// Why.
    pub evidence: Vec<String>,
}

/// An incident: one problem, with its alerts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Its number.
    pub id: i64,
    /// What groups its alerts: `entity:<id>` or `group:<alertname>`.
    pub key: String,
    /// One line for people.
    pub title: String,
    /// The highest severity among its alerts.
    pub severity: String,
    /// Its state.
    pub state: IncidentState,
    /// The entity it is about (its anchor), when it is topological.
    pub root: Option<String>,
    /// When it opened, Unix milliseconds.
    pub opened_ms: i64,
    /// Last change.
    pub updated_ms: i64,
    /// Acknowledged when and by whom.
    pub acked: Option<(i64, String)>,
    /// Resolved when and by whom (`alerts` when every alert resolved).
    pub resolved: Option<(i64, String)>,
    /// The incident it was folded into.
    pub merged_into: Option<i64>,
    /// When it was first notified (once per incident).
    pub notified_ms: Option<i64>,
    /// How far it has escalated (0: not yet).
    pub escalation: u32,
    /// Its alerts' fingerprints.
    pub alerts: BTreeSet<String>,
    /// Repeats received for its alerts after the first.
    pub repeats: u64,
    /// Suspected root causes, best first.
    pub causes: Vec<Cause>,
    /// Why nobody is notified about it, when learning says its alerts are noise.
    #[serde(default)]
    pub quiet: Option<String>,
}

/// Something that happened to an incident, for its timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The incident.
    pub incident: i64,
    /// When.
    pub at_ms: i64,
    /// `opened`, `alert_added`, `alert_resolved`, `alert_refired`, `merged`, `absorbed`,
    /// `flapping`, `resolved`, `acknowledged`, `notified`, `escalated`.
    pub kind: String,
    /// Details.
    pub detail: serde_json::Value,
}

/// What an intake changed: the rows to write, and the timeline events.
///
/// A plain repeat (same alert, same status) only moves its alert's `last_seen_ms`/`received`
/// and its incident's `repeats`/`updated_ms`: those rows are in `touched_*` and the store
/// updates just those columns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    /// Fingerprints of alerts whose rows changed.
    pub alerts: BTreeSet<String>,
    /// Incidents whose rows changed.
    pub incidents: BTreeSet<i64>,
    /// Alerts that were only repeated.
    pub touched_alerts: BTreeSet<String>,
    /// Incidents whose alerts were only repeated.
    pub touched_incidents: BTreeSet<i64>,
    /// New timeline events.
    pub events: Vec<Event>,
}

impl Delta {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty() && self.incidents.is_empty() && self.touched_alerts.is_empty() && self.touched_incidents.is_empty() && self.events.is_empty()
    }

    /// Adds another delta's changes.
    pub fn extend(&mut self, other: Delta) {
        self.alerts.extend(other.alerts);
        self.incidents.extend(other.incidents);
        self.touched_alerts.extend(other.touched_alerts);
        self.touched_incidents.extend(other.touched_incidents);
        self.events.extend(other.events);
    }

    /// Repeats whose rows are not written in full anyway.
    pub fn only_touched(&self) -> (Vec<&String>, Vec<i64>) {
        (
            self.touched_alerts.iter().filter(|f| !self.alerts.contains(*f)).collect(),
            self.touched_incidents.iter().filter(|i| !self.incidents.contains(i)).copied().collect(),
        )
    }
}

/// The same alert again: what it says is unchanged (for a firing alert, `endsAt` is only the
/// sender's "valid until" and moves with every resend).
fn same_content(a: &Alert, b: &Alert) -> bool {
    a.status == b.status
        && a.labels == b.labels
        && a.annotations == b.annotations
        && a.starts_at_ms == b.starts_at_ms
        && a.url == b.url
        && a.source == b.source
        && (a.status == Status::Firing || a.ends_at_ms == b.ends_at_ms)
}

/// How a silence matches a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum MatchOp {
    /// Equal.
    #[serde(rename = "=")]
    Eq,
    /// Not equal.
    #[serde(rename = "!=")]
    Ne,
    /// Matches the regular expression, anchored.
    #[serde(rename = "=~")]
    Re,
}

/// One label matcher, as Alertmanager writes them (`alertname="HighCPU"`, `instance=~"pve.*"`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Matcher {
    /// Label name.
    pub name: String,
    /// How.
    pub op: MatchOp,
    /// Value or pattern.
    pub value: String,
    #[serde(skip)]
    #[schemars(skip)]
    re: Option<Arc<regex::Regex>>,
}

impl PartialEq for Matcher {
    fn eq(&self, o: &Self) -> bool {
        self.name == o.name && self.op == o.op && self.value == o.value
    }
}

impl Matcher {
    /// Parses `name=value`, `name!=value` or `name=~regex` (values may be double-quoted).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (name, op, value) = if let Some((n, v)) = s.split_once("=~") {
            (n, MatchOp::Re, v)
        } else if let Some((n, v)) = s.split_once("!=") {
            (n, MatchOp::Ne, v)
        } else if let Some((n, v)) = s.split_once('=') {
            (n, MatchOp::Eq, v)
        } else {
            return Err(format!("{s:?} is not a matcher: write name=value, name!=value or name=~regex"));
        };
        let name = name.trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("{s:?}: {name:?} is not a label name (letters, digits and _)"));
        }
        let v = value.trim();
        let v = v.strip_prefix('"').and_then(|x| x.strip_suffix('"')).unwrap_or(v);
        Self::new(name, op, v)
    }

    /// A matcher; the pattern of `=~` is checked.
    pub fn new(name: &str, op: MatchOp, value: &str) -> Result<Self, String> {
        let re = match op {
            MatchOp::Re => Some(Arc::new(
                regex::Regex::new(&format!("^(?:{value})$")).map_err(|e| format!("{name}=~{value:?}: not a regular expression: {e}"))?,
            )),
            _ => None,
        };
        Ok(Self { name: name.to_string(), op, value: value.to_string(), re })
    }

    /// Compiles the pattern after deserialising.
    pub fn compiled(self) -> Result<Self, String> {
        Self::new(&self.name, self.op, &self.value)
    }

    /// True when the labels satisfy it (a missing label counts as empty, as in Alertmanager).
    pub fn matches_labels(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches(labels)
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.name).map(String::as_str).unwrap_or("");
        match self.op {
            MatchOp::Eq => v == self.value,
            MatchOp::Ne => v != self.value,
            MatchOp::Re => self.re.as_ref().is_some_and(|r| r.is_match(v)),
        }
    }
}

impl std::fmt::Display for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = match self.op {
            MatchOp::Eq => "=",
            MatchOp::Ne => "!=",
            MatchOp::Re => "=~",
        };
        write!(f, "{}{op}{:?}", self.name, self.value)
    }
}

/// A silence (matchers on labels) or a maintenance window (an entity, and everything placed on
/// it or depending on it), for a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Silence {
    /// Its number.
    pub id: i64,
    /// Label matchers, all of which must hold (may be empty for a maintenance window).
    pub matchers: Vec<Matcher>,
    /// For a maintenance window: the entity under maintenance.
    pub entity: Option<String>,
    /// From, Unix milliseconds.
    pub starts_ms: i64,
    /// Until.
    pub ends_ms: i64,
    /// Who.
    pub created_by: String,
    /// Why.
    pub comment: String,
}

impl Silence {
    /// True when it covers this alert now.
    fn covers(&self, labels: &BTreeMap<String, String>, entity: Option<&str>, inv: &Inventory, now_ms: i64) -> bool {
        if now_ms < self.starts_ms || now_ms >= self.ends_ms {
            return false;
        }
        if !self.matchers.iter().all(|m| m.matches(labels)) {
            return false;
        }
        match (&self.entity, entity) {
            (None, _) => !self.matchers.is_empty(),
            (Some(_), None) => false,
            (Some(m), Some(e)) => e == m || ancestors(inv, e).iter().any(|a| a == m),
        }
    }
}

/// Where an alert points, from its labels: the one entity they name, and which label said so.
///
/// Labels read, in order: `namespace` with `pod`, a workload (`deployment`, `statefulset`,
/// `daemonset`) or `service`; the Proxmox exporter's `id` (`qemu/108`, `lxc/201`) or `vmid`;
/// `node` (a Kubernetes node first), `nodename`, `hostname`, `host`, `target` (the generic
/// form's), `monitor` (Uptime Kuma's), `instance` without its port (a machine first), by name or
/// by an address the inventory knows. A name that is unknown or
/// names more than one entity locates nothing: nothing is guessed.
pub fn locate(labels: &BTreeMap<String, String>, inv: &Inventory, addresses: &HashMap<String, Vec<String>>) -> Option<(String, &'static str)> {
    let get = |k: &str| labels.get(k).map(String::as_str).filter(|v| !v.is_empty());
    if let Some(ns) = get("namespace") {
        for (label, kinds) in [
            ("pod", &[EntityKind::Pod][..]),
            ("deployment", &[EntityKind::Workload][..]),
            ("statefulset", &[EntityKind::Workload][..]),
            ("daemonset", &[EntityKind::Workload][..]),
            ("service", &[EntityKind::Service][..]),
        ] {
            if let Some(n) = get(label) {
                if let Ok(e) = inv.resolve(&format!("{ns}/{n}"), kinds) {
                    return Some((e.id.clone(), label));
                }
            }
        }
    }
    let guest = get("id")
        .and_then(|id| id.strip_prefix("qemu/").or_else(|| id.strip_prefix("lxc/")))
        .or_else(|| get("vmid"))
        .and_then(|v| v.parse::<u32>().ok());
    if let Some(vmid) = guest {
        if let Ok(e) = inv.resolve(&vmid.to_string(), &[EntityKind::Vm, EntityKind::Lxc]) {
            return Some((e.id.clone(), "vmid"));
        }
    }
    // A K3s node usually carries its VM's name: `node` (kube-state-metrics') means the
    // Kubernetes node first; an address-like label means the machine first.
    use EntityKind::{Host, K8sNode, Lxc, ProxmoxNode, Vm};
    let kube_first: [&[EntityKind]; 4] = [&[K8sNode], &[ProxmoxNode], &[Vm, Lxc], &[Host]];
    let machine_first: [&[EntityKind]; 4] = [&[ProxmoxNode], &[Host], &[Vm, Lxc], &[K8sNode]];
    for label in ["node", "nodename", "hostname", "host", "target", "monitor", "instance"] {
        let Some(v) = get(label) else { continue };
        let name = host_part(v);
        let tiers = if label == "node" { kube_first } else { machine_first };
        if let Some(e) = tiers.iter().find_map(|kinds| inv.resolve(name, kinds).ok()) {
            return Some((e.id.clone(), label));
        }
        if label == "target" {
            if let Ok(e) = inv.resolve(name, &[]) {
                return Some((e.id.clone(), label));
            }
        }
        if let Some([one]) = addresses.get(&name.to_ascii_lowercase()).map(Vec::as_slice) {
            return Some((one.clone(), label));
        }
    }
    None
}

/// `host` from `host:port`, `[v6]:port`, `http://host:port/path`.
fn host_part(v: &str) -> &str {
    let v = v.split_once("://").map(|(_, r)| r).unwrap_or(v);
    let v = v.split('/').next().unwrap_or(v);
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match v.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => v,
    }
}

/// Everything `id` depends on, nearest first (its placement chain, the workloads behind a
/// service and their pods' nodes), at most 256 entities.
pub fn ancestors(inv: &Inventory, id: &str) -> Vec<String> {
    let mut seen: BTreeSet<String> = BTreeSet::from([id.to_string()]);
    let mut out = Vec::new();
    let mut queue: VecDeque<String> = VecDeque::from([id.to_string()]);
    while let Some(cur) = queue.pop_front() {
        for (_, dep) in inv.depends_on(&cur) {
            if seen.insert(dep.id.clone()) {
                out.push(dep.id.clone());
                queue.push_back(dep.id.clone());
                if out.len() >= 256 {
                    return out;
                }
            }
        }
    }
    out
}

fn severity_rank(s: &str) -> u8 {
    match s {
        "critical" | "page" | "emergency" => 3,
        "error" | "high" => 2,
        "warning" | "warn" => 1,
        _ => 0,
    }
}

/// The live state of alerting.
#[derive(Debug, Default)]
pub struct Desk {
    /// Tunables.
    pub settings: Settings,
    alerts: HashMap<String, AlertRecord>,
    incidents: BTreeMap<i64, Incident>,
    /// Active incident by key (`entity:<id>` / `group:<name>`).
    by_key: HashMap<String, i64>,
    silences: Vec<Silence>,
    /// Alert names learning found to be noise, with why (never for critical incidents).
    learned: HashMap<String, String>,
    next_id: i64,
    /// Address -> entity ids, for the inventory last seen (rebuilt when it changes).
    addresses: HashMap<String, Vec<String>>,
    /// Entity id -> what it depends on, for the same inventory.
    ancestors: HashMap<String, Arc<Vec<String>>>,
    addresses_of: (usize, usize),
}

impl Desk {
    /// An empty desk.
    pub fn new(settings: Settings) -> Self {
        Self { settings, next_id: 1, ..Default::default() }
    }

    /// A desk holding what was stored: alerts, incidents (any state) and silences.
    pub fn restore(settings: Settings, alerts: Vec<AlertRecord>, incidents: Vec<Incident>, silences: Vec<Silence>) -> Self {
        let mut d = Self::new(settings);
        d.next_id = incidents.iter().map(|i| i.id).max().unwrap_or(0) + 1;
        for i in incidents {
            if i.state.is_active() {
                d.by_key.insert(i.key.clone(), i.id);
            }
            d.incidents.insert(i.id, i);
        }
        for a in alerts {
            d.alerts.insert(a.alert.fingerprint.clone(), a);
        }
        d.silences = silences;
        d
    }

    /// An alert by fingerprint.
    pub fn alert(&self, fingerprint: &str) -> Option<&AlertRecord> {
        self.alerts.get(fingerprint)
    }

    /// An incident by number.
    pub fn incident(&self, id: i64) -> Option<&Incident> {
        self.incidents.get(&id)
    }

    /// Every incident the desk holds, newest first.
    pub fn incidents(&self) -> impl Iterator<Item = &Incident> {
        self.incidents.values().rev()
    }

    /// The silences in force or to come.
    pub fn silences(&self) -> &[Silence] {
        &self.silences
    }

    /// Replaces the silences (they are created and expired by people, through the store).
    pub fn set_silences(&mut self, silences: Vec<Silence>) {
        self.silences = silences;
    }

    fn refresh_addresses(&mut self, inv: &Inventory) {
        // The caller keeps the previous inventory alive while it passes a new one (the engine
        // holds its last snapshot), so a new inventory never reuses the old one's address.
        let tag = (inv as *const Inventory as usize, inv.entities().len());
        if tag == self.addresses_of && !self.addresses.is_empty() {
            return;
        }
        self.addresses.clear();
        self.ancestors.clear();
        for e in inv.entities() {
            for a in &e.addresses {
                self.addresses.entry(a.to_ascii_lowercase()).or_default().push(e.id.clone());
            }
        }
        self.addresses_of = tag;
    }

    fn anc(&mut self, inv: &Inventory, id: &str) -> Arc<Vec<String>> {
        if let Some(a) = self.ancestors.get(id) {
            return a.clone();
        }
        let a = Arc::new(ancestors(inv, id));
        self.ancestors.insert(id.to_string(), a.clone());
        a
    }

    /// Takes in alerts received together. Returns what changed, to be stored before the sender
    /// is answered.
    pub fn ingest(&mut self, alerts: Vec<Alert>, inv: &Inventory, now_ms: i64) -> Delta {
        self.refresh_addresses(inv);
        let mut delta = Delta::default();
        for a in alerts {
            self.ingest_one(a, inv, now_ms, &mut delta);
        }
        delta
    }

    fn ingest_one(&mut self, a: Alert, inv: &Inventory, now: i64, delta: &mut Delta) {
        let fp = a.fingerprint.clone();
        let window = self.settings.flap_window_ms;
        let flap_changes = self.settings.flap_changes;
        // Known alert: a repeat, or a change of status.
        if let Some(rec) = self.alerts.get_mut(&fp) {
            let was = rec.alert.status;
            rec.received += 1;
            rec.last_seen_ms = now;
            let changed = was != a.status;
            let same = same_content(&rec.alert, &a);
            let suppressed_before = rec.suppressed.is_some();
            if changed {
                rec.changes_ms.push(now);
            }
            rec.changes_ms.retain(|&t| now - t <= window);
            let flapping = rec.changes_ms.len() >= flap_changes;
            rec.alert = a;
            let incident = rec.incident.filter(|id| self.incidents.get(id).is_some_and(|i| i.state.is_active()));
            if flapping && rec.suppressed.is_none() {
                rec.suppressed = Some(format!("flapping: {} status changes in {} min", rec.changes_ms.len(), window / 60_000));
                if let Some(id) = incident {
                    delta.events.push(Event { incident: id, at_ms: now, kind: "flapping".into(), detail: serde_json::json!({"alert": fp}) });
                }
            } else if !flapping && rec.suppressed.as_deref().is_some_and(|s| s.starts_with("flapping")) {
                rec.suppressed = None;
            }
            let status = rec.alert.status;
            if same && rec.suppressed.is_some() == suppressed_before {
                delta.touched_alerts.insert(fp.clone());
            } else {
                delta.alerts.insert(fp.clone());
            }
            if let Some(id) = incident {
                let inc = self.incidents.get_mut(&id).expect("active incident exists");
                inc.updated_ms = now;
                if !changed {
                    inc.repeats += 1;
                    delta.touched_incidents.insert(id);
                    return;
                }
                delta.incidents.insert(id);
                let kind = if status == Status::Resolved { "alert_resolved" } else { "alert_refired" };
                delta.events.push(Event { incident: id, at_ms: now, kind: kind.into(), detail: serde_json::json!({"alert": fp}) });
                if status == Status::Resolved {
                    self.maybe_resolve(id, now, delta);
                }
                return;
            }
            if status == Status::Resolved {
                return;
            }
            // Firing again after its incident closed (or while it was silenced): place it anew.
        } else {
            delta.alerts.insert(fp.clone());
            if a.status == Status::Resolved {
                // A resolved alert never seen firing: kept, but it opens nothing.
                self.alerts.insert(fp.clone(), AlertRecord {
                    entity: None,
                    incident: None,
                    first_seen_ms: now,
                    last_seen_ms: now,
                    received: 1,
                    changes_ms: Vec::new(),
                    suppressed: None,
                    alert: a,
                });
                return;
            }
            let entity = locate(&a.labels, inv, &self.addresses).map(|(id, _)| id);
            self.alerts.insert(fp.clone(), AlertRecord {
                entity,
                incident: None,
                first_seen_ms: now,
                last_seen_ms: now,
                received: 1,
                changes_ms: Vec::new(),
                suppressed: None,
                alert: a,
            });
        }
        self.place(&fp, inv, now, delta);
    }

    /// Puts a firing alert into its incident (opening one when needed), unless silenced.
    fn place(&mut self, fp: &str, inv: &Inventory, now: i64, delta: &mut Delta) {
        let rec = self.alerts.get(fp).expect("placed alerts exist");
        let entity = rec.entity.clone();
        if let Some(s) = self.silences.iter().find(|s| s.covers(&rec.alert.labels, entity.as_deref(), inv, now)) {
            let why = match &s.entity {
                Some(e) => format!("maintenance window #{} on {e}", s.id),
                None => format!("silenced by #{}", s.id),
            };
            let rec = self.alerts.get_mut(fp).expect("placed alerts exist");
            if rec.suppressed.as_deref() != Some(why.as_str()) || rec.incident.is_some() {
                delta.alerts.insert(fp.to_string());
            }
            rec.suppressed = Some(why);
            rec.incident = None;
            return;
        }
        let name = rec.alert.name().to_string();
        let severity = rec.alert.severity();
        let (key, root) = match &entity {
            Some(e) => {
                let anchor = self.anchor(e, inv);
                (format!("entity:{anchor}"), Some(anchor))
            }
            None => (format!("group:{name}"), None),
        };
        let existing = self.by_key.get(&key).copied().filter(|id| match root {
            Some(_) => true,
            None => self.incidents.get(id).is_some_and(|i| now - i.opened_ms <= self.settings.group_window_ms),
        });
        let id = match existing {
            Some(id) => id,
            None => self.open(&key, root.as_deref(), &name, &severity, inv, now, delta),
        };
        self.attach(fp, id, now, delta);
        // A failed root (down in the inventory, or an alert saying so on it) is a cause:
        // incidents opened earlier for what depends on it fold in as its symptoms.
        if let Some(r) = &root {
            let failed = inv.get(r).is_some_and(|e| is_machine(e) && is_down(e)) || (says_down(&name) && entity.as_deref() == Some(r.as_str()));
            if failed {
                self.absorb_dependents(id, r, inv, now, delta);
            }
        }
        self.rank(id, inv);
    }

    /// The most fundamental failed thing `entity` depends on (down in the inventory, or the root
    /// of an active incident), else `entity` itself.
    fn anchor(&mut self, entity: &str, inv: &Inventory) -> String {
        let mut best: Option<String> = None;
        for a in self.anc(inv, entity).iter() {
            let failed = inv.get(a).is_some_and(|e| is_machine(e) && is_down(e)) || self.alerting_down(a);
            if failed {
                best = Some(a.clone());
            }
        }
        best.unwrap_or_else(|| entity.to_string())
    }

    /// True when an active incident about `entity` holds a firing alert on it that says it is
    /// down (`TargetDown`, `NodeNotReady`, `MonitorDown`, ...): the monitoring knows before the
    /// inventory does.
    fn alerting_down(&self, entity: &str) -> bool {
        let Some(id) = self.by_key.get(&format!("entity:{entity}")) else { return false };
        let Some(inc) = self.incidents.get(id) else { return false };
        inc.alerts.iter().filter_map(|fp| self.alerts.get(fp)).any(|r| {
            r.entity.as_deref() == Some(entity) && r.alert.status == Status::Firing && says_down(r.alert.name())
        })
    }

    fn open(&mut self, key: &str, root: Option<&str>, name: &str, severity: &str, inv: &Inventory, now: i64, delta: &mut Delta) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        let title = match root.and_then(|r| inv.get(r)) {
            Some(e) if is_down(e) && is_machine(e) => format!("{} {} is {}", e.kind.as_str().replace('_', " "), e.qualified_name(), e.status),
            Some(e) => format!("{name} on {}", e.qualified_name()),
            None => name.to_string(),
        };
        self.incidents.insert(id, Incident {
            id,
            key: key.to_string(),
            title,
            severity: severity.to_string(),
            state: IncidentState::Open,
            root: root.map(str::to_string),
            opened_ms: now,
            updated_ms: now,
            acked: None,
            resolved: None,
            merged_into: None,
            notified_ms: None,
            escalation: 0,
            alerts: BTreeSet::new(),
            repeats: 0,
            causes: Vec::new(),
            quiet: None,
        });
        self.by_key.insert(key.to_string(), id);
        delta.incidents.insert(id);
        delta.events.push(Event { incident: id, at_ms: now, kind: "opened".into(), detail: serde_json::json!({"key": key}) });
        id
    }

    /// Folds into incident `id` (rooted at `root`) the active incidents whose roots depend on
    /// `root`: they were symptoms of it.
    fn absorb_dependents(&mut self, id: i64, root: &str, inv: &Inventory, now: i64, delta: &mut Delta) {
        let roots: Vec<(i64, String)> = self
            .incidents
            .values()
            .filter(|i| i.id != id && i.state.is_active())
            .filter_map(|i| i.root.clone().map(|r| (i.id, r)))
            .collect();
        let victims: Vec<i64> =
            roots.into_iter().filter(|(_, r)| self.anc(inv, r).iter().any(|a| a == root)).map(|(i, _)| i).collect();
        for v in victims {
            let mut other = self.incidents.remove(&v).expect("listed");
            self.by_key.remove(&other.key);
            other.state = IncidentState::Merged;
            other.merged_into = Some(id);
            other.updated_ms = now;
            let moved: Vec<String> = std::mem::take(&mut other.alerts).into_iter().collect();
            delta.events.push(Event { incident: v, at_ms: now, kind: "merged".into(), detail: serde_json::json!({"into": id, "alerts": moved.len()}) });
            delta.events.push(Event { incident: id, at_ms: now, kind: "absorbed".into(), detail: serde_json::json!({"incident": v, "title": other.title, "alerts": moved.len()}) });
            let repeats = other.repeats;
            delta.incidents.insert(v);
            self.incidents.insert(v, other);
            for fp in moved {
                self.attach(&fp, id, now, delta);
            }
            if let Some(i) = self.incidents.get_mut(&id) {
                i.repeats += repeats;
            }
        }
    }

    fn attach(&mut self, fp: &str, id: i64, now: i64, delta: &mut Delta) {
        let Some(rec) = self.alerts.get_mut(fp) else { return };
        rec.incident = Some(id);
        if !rec.suppressed.as_deref().is_some_and(|s| s.starts_with("flapping")) {
            rec.suppressed = None;
        }
        let sev = rec.alert.severity();
        delta.alerts.insert(fp.to_string());
        let inc = self.incidents.get_mut(&id).expect("attached to an existing incident");
        if inc.alerts.insert(fp.to_string()) {
            delta.events.push(Event { incident: id, at_ms: now, kind: "alert_added".into(), detail: serde_json::json!({"alert": fp}) });
        }
        if severity_rank(&sev) > severity_rank(&inc.severity) {
            inc.severity = sev;
        }
        inc.updated_ms = now;
        delta.incidents.insert(id);
    }

    /// Resolves an incident whose alerts have all resolved (flapping ones do not count as
    /// resolved: their next flip would only reopen it).
    fn maybe_resolve(&mut self, id: i64, now: i64, delta: &mut Delta) {
        let Some(inc) = self.incidents.get(&id) else { return };
        let all_resolved = inc.alerts.iter().all(|fp| {
            self.alerts.get(fp).is_none_or(|r| r.alert.status == Status::Resolved && !r.suppressed.as_deref().is_some_and(|s| s.starts_with("flapping")))
        });
        if all_resolved {
            self.close(id, now, "alerts", delta);
        }
    }

    fn close(&mut self, id: i64, now: i64, by: &str, delta: &mut Delta) {
        let Some(inc) = self.incidents.get_mut(&id) else { return };
        if !inc.state.is_active() {
            return;
        }
        inc.state = IncidentState::Resolved;
        inc.resolved = Some((now, by.to_string()));
        inc.updated_ms = now;
        let key = inc.key.clone();
        if self.by_key.get(&key) == Some(&id) {
            self.by_key.remove(&key);
        }
        delta.incidents.insert(id);
        delta.events.push(Event { incident: id, at_ms: now, kind: "resolved".into(), detail: serde_json::json!({"by": by}) });
    }

    /// A human acknowledges an incident: escalation stops.
    pub fn acknowledge(&mut self, id: i64, by: &str, now: i64) -> Result<Delta, String> {
        let inc = self.incidents.get_mut(&id).ok_or_else(|| format!("no incident #{id}; `labops incidents` lists them"))?;
        match inc.state {
            IncidentState::Open => {}
            IncidentState::Acknowledged => return Ok(Delta::default()),
            s => return Err(format!("incident #{id} is {}; only an open incident can be acknowledged", s.as_str())),
        }
        inc.state = IncidentState::Acknowledged;
        inc.acked = Some((now, by.to_string()));
        inc.updated_ms = now;
        let mut d = Delta::default();
        d.incidents.insert(id);
        d.events.push(Event { incident: id, at_ms: now, kind: "acknowledged".into(), detail: serde_json::json!({"by": by}) });
        Ok(d)
    }

    /// A human resolves an incident (its alerts may still fire: a new firing after this opens a
    /// new incident).
    pub fn resolve(&mut self, id: i64, by: &str, now: i64) -> Result<Delta, String> {
        let inc = self.incidents.get(&id).ok_or_else(|| format!("no incident #{id}; `labops incidents` lists them"))?;
        if !inc.state.is_active() {
            return Err(format!("incident #{id} is already {}", inc.state.as_str()));
        }
        let mut d = Delta::default();
        self.close(id, now, by, &mut d);
        Ok(d)
    }

    /// Records that an incident was notified (once) or escalated a level.
    pub fn mark_notified(&mut self, id: i64, level: u32, channel: &str, now: i64) -> Delta {
        let mut d = Delta::default();
        if let Some(inc) = self.incidents.get_mut(&id) {
            if inc.notified_ms.is_none() {
                inc.notified_ms = Some(now);
            }
            inc.escalation = inc.escalation.max(level);
            d.incidents.insert(id);
            let kind = if level <= 1 { "notified" } else { "escalated" };
            d.events.push(Event { incident: id, at_ms: now, kind: kind.into(), detail: serde_json::json!({"level": level, "channel": channel}) });
        }
        d
    }

    /// Active incidents whose group wait has passed and that were never notified, and whose
    /// alerts are not all flapping, and not all learned noise.
    pub fn due_first_notice(&self, now: i64) -> Vec<i64> {
        self.incidents
            .values()
            .filter(|i| i.state == IncidentState::Open && i.notified_ms.is_none() && i.quiet.is_none() && now - i.opened_ms >= self.settings.group_wait_ms)
            .filter(|i| i.alerts.iter().any(|fp| self.alerts.get(fp).is_some_and(|r| r.alert.status == Status::Firing && r.suppressed.is_none())))
            .map(|i| i.id)
            .collect()
    }

    /// Sets the alert names learning found to be noise (name -> why).
    pub fn set_learned(&mut self, learned: HashMap<String, String>) {
        self.learned = learned;
    }

    /// Quiets the incidents, not yet notified, whose alerts are all learned noise; never a
    /// critical one (learning alone never silences a critical alert). Returns what changed.
    pub fn quiet_learned(&mut self, now: i64) -> Delta {
        let mut d = Delta::default();
        if self.learned.is_empty() {
            return d;
        }
        let ids: Vec<i64> = self
            .incidents
            .values()
            .filter(|i| i.state == IncidentState::Open && i.notified_ms.is_none() && i.quiet.is_none() && severity_rank(&i.severity) < 3 && !i.alerts.is_empty())
            .filter(|i| {
                i.alerts.iter().all(|fp| self.alerts.get(fp).is_some_and(|r| severity_rank(&r.alert.severity()) < 3 && self.learned.contains_key(r.alert.name())))
            })
            .map(|i| i.id)
            .collect();
        for id in ids {
            let Some(inc) = self.incidents.get(&id) else { continue };
            let why: Vec<String> = inc
                .alerts
                .iter()
                .filter_map(|fp| self.alerts.get(fp))
                .filter_map(|r| self.learned.get(r.alert.name()).map(|w| format!("{}: {w}", r.alert.name())))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let reason = format!("learned noise ({})", why.join("; "));
            let inc = self.incidents.get_mut(&id).expect("listed");
            inc.quiet = Some(reason.clone());
            d.incidents.insert(id);
            d.events.push(Event { incident: id, at_ms: now, kind: "quieted".into(), detail: serde_json::json!({"why": reason}) });
        }
        d
    }

    /// Ranks an incident's suspected root causes: every entity its alerts sit on or depend on,
    /// scored by the share of its located alerts it explains, whether the inventory reports it
    /// down, and whether it alerts itself; the more fundamental wins a tie.
    fn rank(&mut self, id: i64, inv: &Inventory) {
        let Some(inc) = self.incidents.get(&id) else { return };
        let located: Vec<(String, String)> = inc
            .alerts
            .iter()
            .filter_map(|fp| self.alerts.get(fp))
            .filter_map(|r| r.entity.clone().map(|e| (e, r.alert.name().to_string())))
            .collect();
        if located.is_empty() {
            return;
        }
        // candidate -> (alerts it explains, alert names on it, depth)
        let mut cand: BTreeMap<String, (usize, BTreeSet<String>, usize)> = BTreeMap::new();
        for (e, name) in &located {
            let c = cand.entry(e.clone()).or_default();
            c.0 += 1;
            c.1.insert(name.clone());
            for (depth, a) in self.anc(inv, e).iter().enumerate() {
                let c = cand.entry(a.clone()).or_default();
                c.0 += 1;
                c.2 = c.2.max(depth + 1);
            }
        }
        let n = located.len() as f64;
        let mut causes: Vec<Cause> = cand
            .into_iter()
            .filter_map(|(eid, (explains, names, depth))| {
                let e = inv.get(&eid)?;
                let mut score = 0.6 * explains as f64 / n;
                let mut evidence = vec![format!("{explains} of {} located alerts are on it or on what depends on it", located.len())];
                if is_machine(e) && is_down(e) {
                    score += 0.3;
                    evidence.push(format!("the inventory reports it {}", e.status));
                }
                if !names.is_empty() {
                    score += 0.1;
                    evidence.push(format!("alerting itself: {}", names.into_iter().collect::<Vec<_>>().join(", ")));
                }
                score += (depth as f64).min(5.0) * 0.001;
                Some(Cause { entity: eid, kind: e.kind.as_str().to_string(), name: e.qualified_name(), score: (score * 1000.0).round() / 1000.0, evidence })
            })
            .collect();
        causes.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.entity.cmp(&b.entity)));
        causes.truncate(3);
        if let Some(inc) = self.incidents.get_mut(&id) {
            inc.causes = causes;
        }
    }

    /// Forgets alerts that resolved long ago and incidents closed long ago (they stay in the
    /// store), so memory stays bounded.
    pub fn prune(&mut self, older_than_ms: i64) {
        self.incidents.retain(|_, i| i.state.is_active() || i.updated_ms >= older_than_ms);
        let incidents = &self.incidents;
        self.alerts.retain(|_, r| {
            r.last_seen_ms >= older_than_ms || r.incident.is_some_and(|id| incidents.get(&id).is_some_and(|i| i.state.is_active()))
        });
    }

    /// Applies a change a person made through another process (the CLI writing to the store):
    /// acknowledged or resolved.
    pub fn apply_external(&mut self, id: i64, state: IncidentState, by: &str, at_ms: i64) {
        let Some(inc) = self.incidents.get_mut(&id) else { return };
        if state <= inc.state {
            return;
        }
        match state {
            IncidentState::Acknowledged => {
                inc.state = state;
                inc.acked = Some((at_ms, by.to_string()));
            }
            IncidentState::Resolved => {
                inc.state = state;
                inc.resolved = Some((at_ms, by.to_string()));
                let key = inc.key.clone();
                if self.by_key.get(&key) == Some(&id) {
                    self.by_key.remove(&key);
                }
            }
            _ => {}
        }
    }

    /// The runbooks that apply to the alerts this delta added to incidents, and those withheld
    /// (with why). Only firing, unsuppressed alerts are considered.
    pub fn remedies(&self, delta: &Delta, runbooks: &[crate::runbook::Runbook], inv: &Inventory) -> (Vec<crate::runbook::Remedy>, Vec<crate::runbook::Withheld>) {
        let mut ok = Vec::new();
        let mut withheld = Vec::new();
        for e in delta.events.iter().filter(|e| e.kind == "alert_added") {
            let Some(fp) = e.detail.get("alert").and_then(|v| v.as_str()) else { continue };
            let Some(rec) = self.alerts.get(fp).filter(|r| r.alert.status == Status::Firing && r.suppressed.is_none()) else { continue };
            let Some(inc) = rec.incident.and_then(|id| self.incidents.get(&id)).filter(|i| i.state.is_active()) else { continue };
            for rb in runbooks.iter().filter(|rb| rb.matches(rec)) {
                match rb.apply(rec, inc, inv) {
                    Ok(r) => ok.push(r),
                    Err(w) => withheld.push(w),
                }
            }
        }
        (ok, withheld)
    }

    /// Counts, for `/healthz`-style reports and tests.
    pub fn counts(&self) -> (usize, usize) {
        (self.alerts.len(), self.incidents.values().filter(|i| i.state.is_active()).count())
    }
}

/// Machines and guests: what can be "down" as a cause (a pod or service being down is a
/// symptom to explain, not an anchor).
fn is_machine(e: &Entity) -> bool {
    matches!(e.kind, EntityKind::ProxmoxNode | EntityKind::Vm | EntityKind::Lxc | EntityKind::K8sNode | EntityKind::Host | EntityKind::Storage)
}

/// The inventory reports it down (a static host's `declared` says nothing either way).
fn is_down(e: &Entity) -> bool {
    matches!(
        e.status.to_ascii_lowercase().as_str(),
        "offline" | "unknown" | "stopped" | "notready" | "down" | "error" | "failed" | "unreachable" | "lost"
    )
}

/// An alert name that says its target is down or unreachable.
fn says_down(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["down", "unreachable", "notready", "offline", "unavailable", "dead", "absent"].iter().any(|w| n.contains(w))
}

/// The source's name as stored.
pub fn source_name(s: Source) -> &'static str {
    match s {
        Source::Alertmanager => "alertmanager",
        Source::Grafana => "grafana",
        Source::Prometheus => "prometheus",
        Source::UptimeKuma => "uptime_kuma",
        Source::Generic => "generic",
        Source::Labops => "labops",
    }
}
