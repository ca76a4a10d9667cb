//! The alerting service: one task owns the incident desk; the HTTP intake, the CLI and MCP talk
//! to it through a channel.
//!
//! Intake is group-committed: the task takes every request waiting in the channel (up to
//! [`BATCH`] alerts), runs them through the desk, writes what changed in one transaction, and
//! only then answers each sender. An alert acknowledged to its sender is therefore in the
//! database (a committed transaction; it survives a SIGKILL of labops). If the write fails,
//! every sender of the batch gets an error (Alertmanager and Grafana retry) and the desk is
//! reloaded from the store, so memory never runs ahead of what is stored.
//!
//! Once a second the task also: picks up what people did from other processes (acknowledgements,
//! resolutions and silences written by the CLI), sends each incident's first notice once its
//! group wait has passed, and escalates unacknowledged incidents along the policy for their
//! severity (dashboard, then Home Assistant, then a webhook), each notice recorded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use std::collections::HashSet;

use labops_aiops::desk::{Delta, Desk, Event, Incident, IncidentState, Settings, Silence};
use labops_aiops::runbook::{Remedy, Runbook};
use labops_aiops::intake::Alert;
use labops_store::alerting::Notification;
use labops_store::{AuditEntry, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::lab::{now_ms, Lab};

/// Most alerts one group commit takes.
pub const BATCH: usize = 5000;

/// One escalation step: a channel, and how long an incident stays unacknowledged before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// `dashboard`, `home_assistant` or `webhook`.
    pub channel: String,
    /// Minutes after the incident opened.
    pub after_minutes: u32,
}

/// Where notices go and when.
#[derive(Debug, Clone, Default)]
pub struct Notify {
    /// Home Assistant: base URL (`http://homeassistant.local:8123`), long-lived token, and the
    /// notify service (`notify.mobile_app_phone` -> `mobile_app_phone`).
    pub home_assistant: Option<(String, String, String)>,
    /// A generic webhook URL that gets the incident as JSON.
    pub webhook: Option<String>,
    /// Severity -> steps, in order. A severity not listed uses `default`.
    pub escalation: BTreeMap<String, Vec<Step>>,
}

impl Notify {
    /// The owner's default policy: critical goes to the dashboard, then Home Assistant after 5
    /// minutes unacknowledged, then the webhook after 15; warnings to the dashboard, then Home
    /// Assistant after 30; everything else to the dashboard only.
    pub fn default_policy() -> BTreeMap<String, Vec<Step>> {
        let s = |c: &str, m: u32| Step { channel: c.into(), after_minutes: m };
        BTreeMap::from([
            ("critical".into(), vec![s("dashboard", 0), s("home_assistant", 5), s("webhook", 15)]),
            ("warning".into(), vec![s("dashboard", 0), s("home_assistant", 30)]),
            ("default".into(), vec![s("dashboard", 0)]),
        ])
    }

    fn steps(&self, severity: &str) -> Vec<Step> {
        let policy = if self.escalation.is_empty() { Self::default_policy() } else { self.escalation.clone() };
        policy.get(severity).or_else(|| policy.get("default")).cloned().unwrap_or_else(|| vec![Step { channel: "dashboard".into(), after_minutes: 0 }])
    }
}

/// Runbooks and what they need to propose: the change service and the workflow library.
#[derive(Clone)]
pub struct Remediation {
    /// Where proposals go (a standing approval a human recorded may approve them at once).
    pub changes: crate::changes::Changes,
    /// The workflows runbooks name.
    pub library: Arc<crate::tasks::Library>,
    /// The runbooks.
    pub runbooks: Arc<Vec<Runbook>>,
}

/// What an intake did, as answered to the sender.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Accepted {
    /// Alerts taken in.
    pub accepted: usize,
    /// Incidents they touched.
    pub incidents: Vec<i64>,
}

/// Why an alerting call failed.
#[derive(Debug, thiserror::Error)]
pub enum AlertingError {
    /// The alerting task is gone (labops is shutting down).
    #[error("alerting is not running; retry in a moment")]
    Stopped,
    /// The store refused the write; nothing was acknowledged.
    #[error("could not store the alerts: {0}; nothing was acknowledged, send them again")]
    Store(String),
    /// A person's request was refused (no such incident, wrong state, bad silence).
    #[error("{0}")]
    Refused(String),
}

enum Job {
    Ingest(Vec<Alert>, oneshot::Sender<Result<Accepted, AlertingError>>),
    Ack(i64, String, oneshot::Sender<Result<(), AlertingError>>),
    Resolve(i64, String, oneshot::Sender<Result<(), AlertingError>>),
    Silenced(oneshot::Sender<()>),
}

/// A handle on the alerting task; cheap to clone.
#[derive(Clone)]
pub struct Alerting {
    tx: mpsc::Sender<Job>,
    store: Store,
}

impl std::fmt::Debug for Alerting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Alerting")
    }
}

impl Alerting {
    /// Loads the desk from the store and starts the task.
    pub async fn start(lab: Lab, store: Store, settings: Settings, notify: Notify, remediation: Option<Remediation>) -> Result<Self, labops_store::Error> {
        let now = now_ms();
        let (alerts, incidents, silences) = store.load_alerting(now - 24 * 3600_000, now).await?;
        let desk = Desk::restore(settings.clone(), alerts, incidents, silences);
        let (tx, rx) = mpsc::channel(4096);
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
        let task = Task { desk, settings, lab, store: store.clone(), notify: Arc::new(notify), rx, http, synced_ms: now, remediation, learned_ms: 0, inventory: None, acted: HashSet::new() };
        tokio::spawn(task.run());
        Ok(Self { tx, store })
    }

    /// Takes in alerts; answers once they are stored.
    pub async fn ingest(&self, alerts: Vec<Alert>) -> Result<Accepted, AlertingError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Job::Ingest(alerts, tx)).await.map_err(|_| AlertingError::Stopped)?;
        rx.await.map_err(|_| AlertingError::Stopped)?
    }

    /// A person acknowledges an incident.
    pub async fn acknowledge(&self, id: i64, by: &str) -> Result<(), AlertingError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Job::Ack(id, by.into(), tx)).await.map_err(|_| AlertingError::Stopped)?;
        rx.await.map_err(|_| AlertingError::Stopped)?
    }

    /// A person resolves an incident.
    pub async fn resolve(&self, id: i64, by: &str) -> Result<(), AlertingError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Job::Resolve(id, by.into(), tx)).await.map_err(|_| AlertingError::Stopped)?;
        rx.await.map_err(|_| AlertingError::Stopped)?
    }

    /// Records a silence and has the desk apply it at once.
    pub async fn silence(&self, s: &Silence, actor: &str) -> Result<i64, AlertingError> {
        let id = self.store.add_silence(s, now_ms(), actor).await.map_err(|e| AlertingError::Store(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        self.tx.send(Job::Silenced(tx)).await.map_err(|_| AlertingError::Stopped)?;
        let _ = rx.await;
        Ok(id)
    }

    /// The store it writes to (reads go there directly: it is always current).
    pub fn store(&self) -> &Store {
        &self.store
    }
}

struct Task {
    desk: Desk,
    settings: Settings,
    lab: Lab,
    store: Store,
    notify: Arc<Notify>,
    rx: mpsc::Receiver<Job>,
    http: reqwest::Client,
    synced_ms: i64,
    remediation: Option<Remediation>,
    /// When learning last looked at the outcomes.
    learned_ms: i64,
    /// The snapshot the desk last worked with.
    inventory: Option<Arc<crate::lab::Snapshot>>,
    /// (incident, runbook, target) already proposed or withheld: once per incident.
    acted: HashSet<(i64, String, String)>,
}

impl Task {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                job = self.rx.recv() => {
                    let Some(job) = job else { return };
                    self.batch(job).await;
                }
                _ = tick.tick() => self.tick().await,
            }
        }
    }

    /// One group commit: this job and every ingest already waiting.
    async fn batch(&mut self, first: Job) {
        let mut ingests: Vec<(Vec<Alert>, oneshot::Sender<Result<Accepted, AlertingError>>)> = Vec::new();
        let mut others = Vec::new();
        let mut n = 0;
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Ingest(a, tx) => {
                    n += a.len();
                    ingests.push((a, tx));
                }
                other => others.push(other),
            }
            if n < BATCH {
                next = self.rx.try_recv().ok();
            }
        }
        if !ingests.is_empty() {
            let snap = self.lab.snapshot();
            // Held until the next batch: the desk tells inventories apart by address, and a live
            // old one cannot share its address with the new one.
            let _previous = self.inventory.replace(snap.clone());
            let now = now_ms();
            let mut delta = Delta::default();
            let mut replies = Vec::with_capacity(ingests.len());
            for (alerts, tx) in ingests {
                let count = alerts.len();
                let fps: Vec<String> = alerts.iter().map(|a| a.fingerprint.clone()).collect();
                let d = self.desk.ingest(alerts, &snap.inventory, now);
                delta.extend(d);
                let mut incidents: Vec<i64> = fps.iter().filter_map(|fp| self.desk.alert(fp).and_then(|r| r.incident)).collect();
                incidents.sort_unstable();
                incidents.dedup();
                replies.push((tx, Accepted { accepted: count, incidents }));
            }
            match self.save(&delta).await {
                Ok(()) => {
                    for (tx, a) in replies {
                        let _ = tx.send(Ok(a));
                    }
                    self.remediate(&delta, &snap.inventory).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not store alerts; the senders were told to retry");
                    for (tx, _) in replies {
                        let _ = tx.send(Err(AlertingError::Store(e.clone())));
                    }
                    self.reload().await;
                }
            }
        }
        for job in others {
            self.person(job).await;
        }
    }

    /// Runbooks for the alerts this batch added: each (incident, runbook, target) once. A fix is
    /// proposed as a change in the background (a standing approval a human recorded may approve
    /// it at once; `labops serve` then runs it with its docs and commit); a withheld one is noted
    /// in the incident's timeline with why.
    async fn remediate(&mut self, delta: &Delta, inv: &labops_core::inventory::Inventory) {
        let Some(rem) = self.remediation.clone() else { return };
        if rem.runbooks.is_empty() {
            return;
        }
        let (ok, withheld) = self.desk.remedies(delta, &rem.runbooks, inv);
        let now = now_ms();
        let mut events = Vec::new();
        for w in withheld {
            if self.acted.insert((w.incident, w.runbook.clone(), String::new())) {
                events.push(Event { incident: w.incident, at_ms: now, kind: "remedy_withheld".into(), detail: serde_json::json!({"runbook": w.runbook, "why": w.reason}) });
            }
        }
        if !events.is_empty() {
            let _ = self.store.save_alerting(&[], &[], &[], &[], &events).await;
        }
        for r in ok {
            if !self.acted.insert((r.incident, r.runbook.clone(), r.target.clone())) {
                continue;
            }
            let Some(entity) = inv.get(&r.target).cloned() else { continue };
            let Some(rb) = rem.runbooks.iter().find(|b| b.name == r.runbook).cloned() else { continue };
            let (rem, store) = (rem.clone(), self.store.clone());
            let alert_name = self.desk.alert(&r.alert).map(|a| a.alert.name().to_string()).unwrap_or_default();
            // labops' own findings (a forecast, an anomaly) say what was found; a third party's
            // text never goes into a proposal.
            let finding = self
                .desk
                .alert(&r.alert)
                .filter(|a| a.alert.source == labops_aiops::intake::Source::Labops)
                .and_then(|a| a.alert.annotations.get("summary").cloned());
            tokio::spawn(async move {
                let outcome = propose_remedy(&rem, &rb, &r, &entity, &alert_name, finding.as_deref()).await;
                let (kind, detail) = match outcome {
                    Ok(change) => ("remedy_proposed", serde_json::json!({"runbook": r.runbook, "target": r.target, "change": change.change.id, "state": change.change.state.to_string()})),
                    Err(e) => ("remedy_failed", serde_json::json!({"runbook": r.runbook, "target": r.target, "why": e})),
                };
                let ev = Event { incident: r.incident, at_ms: now_ms(), kind: kind.into(), detail };
                let _ = store.save_alerting(&[], &[], &[], &[], &[ev]).await;
            });
        }
    }

    async fn save(&self, delta: &Delta) -> Result<(), String> {
        if delta.is_empty() {
            return Ok(());
        }
        let alerts: Vec<_> = delta.alerts.iter().filter_map(|fp| self.desk.alert(fp)).collect();
        let incidents: Vec<&Incident> = delta.incidents.iter().filter_map(|id| self.desk.incident(*id)).collect();
        let (touched_alerts, touched_incidents) = delta.only_touched();
        let seen: Vec<(&str, i64, u64)> =
            touched_alerts.iter().filter_map(|fp| self.desk.alert(fp)).map(|r| (r.alert.fingerprint.as_str(), r.last_seen_ms, r.received)).collect();
        let repeated: Vec<(i64, i64, u64)> =
            touched_incidents.iter().filter_map(|id| self.desk.incident(*id)).map(|i| (i.id, i.updated_ms, i.repeats)).collect();
        self.store.save_alerting(&alerts, &incidents, &seen, &repeated, &delta.events).await.map_err(|e| e.to_string())
    }

    async fn reload(&mut self) {
        let now = now_ms();
        match self.store.load_alerting(now - 24 * 3600_000, now).await {
            Ok((a, i, s)) => self.desk = Desk::restore(self.settings.clone(), a, i, s),
            Err(e) => tracing::error!(error = %e, "could not reload the alerting state"),
        }
    }

    async fn person(&mut self, job: Job) {
        let now = now_ms();
        match job {
            Job::Ack(id, by, tx) => {
                let r = self.desk.acknowledge(id, &by, now);
                let _ = tx.send(self.decided(r, id, &by, "incident_acknowledged", now).await);
            }
            Job::Resolve(id, by, tx) => {
                let r = self.desk.resolve(id, &by, now);
                let _ = tx.send(self.decided(r, id, &by, "incident_resolved", now).await);
            }
            Job::Silenced(tx) => {
                self.sync(now).await;
                let _ = tx.send(());
            }
            Job::Ingest(..) => unreachable!("ingests are batched"),
        }
    }

    async fn decided(&mut self, r: Result<Delta, String>, id: i64, by: &str, action: &str, now: i64) -> Result<(), AlertingError> {
        let delta = match r {
            Ok(d) => d,
            Err(e) => {
                // The desk may not hold an old incident: the store decides.
                let to = if action == "incident_acknowledged" { IncidentState::Acknowledged } else { IncidentState::Resolved };
                return match self.store.set_incident_state(id, to, by, now, by).await {
                    Ok(Some(was)) if was.is_active() => Ok(()),
                    Ok(_) => Err(AlertingError::Refused(e)),
                    Err(s) => Err(AlertingError::Store(s.to_string())),
                };
            }
        };
        self.save(&delta).await.map_err(AlertingError::Store)?;
        self.lab.audit(AuditEntry {
            at_ms: now,
            actor: by.to_string(),
            action: action.into(),
            target: Some(format!("incident/{id}")),
            outcome: "ok".into(),
            detail: serde_json::json!({}),
        });
        Ok(())
    }

    /// Picks up what other processes stored: decisions and silences.
    async fn sync(&mut self, now: i64) {
        if let Ok(decisions) = self.store.incident_decisions_since(self.synced_ms - 2_000).await {
            for (id, state, by, at) in decisions {
                self.desk.apply_external(id, state, &by, at);
            }
        }
        if let Ok(s) = self.store.silences(now).await {
            self.desk.set_silences(s);
        }
        self.synced_ms = now;
    }

    async fn tick(&mut self) {
        let now = now_ms();
        self.sync(now).await;
        // Learning: once a minute, which alert names are noise; quiet their new incidents.
        if now - self.learned_ms >= 60_000 {
            self.learned_ms = now;
            if let Ok(stats) = self.store.rule_stats(now - LEARN_DAYS * 86_400_000, NOISE_MS).await {
                self.desk.set_learned(learned(&stats));
            }
        }
        let quiet = self.desk.quiet_learned(now);
        if !quiet.is_empty() {
            let _ = self.save(&quiet).await;
        }
        // First notices, then escalation.
        let mut sends: Vec<(i64, u32, Step)> = Vec::new();
        for id in self.desk.due_first_notice(now) {
            let sev = self.desk.incident(id).map(|i| i.severity.clone()).unwrap_or_default();
            if let Some(first) = self.notify.steps(&sev).into_iter().next() {
                sends.push((id, 1, first));
            }
        }
        let open: Vec<(i64, String, i64, u32)> = self
            .desk
            .incidents()
            .filter(|i| i.state == IncidentState::Open && i.notified_ms.is_some())
            .map(|i| (i.id, i.severity.clone(), i.opened_ms, i.escalation))
            .collect();
        for (id, sev, opened, level) in open {
            let steps = self.notify.steps(&sev);
            if let Some(step) = steps.get(level as usize) {
                if now - opened >= step.after_minutes as i64 * 60_000 {
                    sends.push((id, level + 1, step.clone()));
                }
            }
        }
        for (id, level, step) in sends {
            let delta = self.desk.mark_notified(id, level, &step.channel, now);
            if self.save(&delta).await.is_err() {
                continue;
            }
            let Some(inc) = self.desk.incident(id).cloned() else { continue };
            let (store, notify, http) = (self.store.clone(), self.notify.clone(), self.http.clone());
            tokio::spawn(async move {
                let outcome = send(&http, &notify, &step.channel, &inc).await;
                let _ = store
                    .record_notification(&Notification {
                        incident: id,
                        at_ms: now_ms(),
                        level,
                        channel: step.channel.clone(),
                        outcome,
                        detail: serde_json::json!({"title": inc.title, "severity": inc.severity}),
                    })
                    .await;
            });
        }
        self.desk.prune(now - 24 * 3600_000);
    }
}

/// How far back learning looks.
pub const LEARN_DAYS: i64 = 30;
/// An incident its alerts resolved within this long, unacknowledged and unfixed, was noise.
pub const NOISE_MS: i64 = 5 * 60_000;
/// Learning needs this many closed incidents of an alert name ...
pub const LEARN_MIN_INCIDENTS: i64 = 5;
/// ... and this share of them noise, before it stops notifying about that name.
pub const LEARN_NOISE_SHARE: f64 = 0.9;

/// The alert names whose incidents always go away by themselves: at least
/// [`LEARN_MIN_INCIDENTS`] closed incidents in [`LEARN_DAYS`], at least [`LEARN_NOISE_SHARE`]
/// of them noise, and never critical (learning alone never quiets a critical alert).
pub fn learned(stats: &[labops_store::alerting::RuleStats]) -> std::collections::HashMap<String, String> {
    stats
        .iter()
        .filter(|s| !s.critical && s.incidents >= LEARN_MIN_INCIDENTS && s.noise as f64 >= LEARN_NOISE_SHARE * s.incidents as f64)
        .map(|s| {
            (s.name.clone(), format!("resolved by itself within {} min, unacknowledged, in {} of {} incidents in {} days", NOISE_MS / 60_000, s.noise, s.incidents, LEARN_DAYS))
        })
        .collect()
}

/// A notice straight to the backup channels (Home Assistant and the webhook, those configured),
/// for problems of the alerting pipeline itself: the primary path is what failed.
pub async fn backup_notice(http: &reqwest::Client, notify: &Notify, alert: &str, instance: &str, problem: &str) {
    let title = format!("[CRITICAL] labops: {alert} ({instance})");
    let body = format!("{problem}. The alerting pipeline may not deliver other alerts until this is fixed.");
    if let Some((url, token, service)) = &notify.home_assistant {
        let service = service.strip_prefix("notify.").unwrap_or(service);
        let r = http
            .post(format!("{}/api/services/notify/{service}", url.trim_end_matches('/')))
            .bearer_auth(token)
            .json(&serde_json::json!({"title": title, "message": body}))
            .send()
            .await;
        if let Err(e) = r.and_then(|r| r.error_for_status()) {
            tracing::error!("backup notice to Home Assistant failed: {e}");
        }
    }
    if let Some(url) = &notify.webhook {
        let r = http.post(url).json(&serde_json::json!({"title": title, "message": body, "severity": "critical", "alert": alert, "instance": instance, "source": "labops"})).send().await;
        if let Err(e) = r.and_then(|r| r.error_for_status()) {
            tracing::error!("backup notice to the webhook failed: {e}");
        }
    }
}

/// What a notice says, in one line and a few.
pub fn message(inc: &Incident) -> (String, String) {
    let title = format!("[{}] #{} {}", inc.severity.to_uppercase(), inc.id, inc.title);
    let mut body = format!("{} alert(s)", inc.alerts.len());
    if let Some(c) = inc.causes.first() {
        body.push_str(&format!("; suspected cause: {} {} ({})", c.kind, c.name, c.evidence.join("; ")));
    }
    body.push_str(&format!(". Acknowledge: labops incidents ack {}", inc.id));
    (title, body)
}

async fn send(http: &reqwest::Client, notify: &Notify, channel: &str, inc: &Incident) -> String {
    let (title, body) = message(inc);
    let r = match channel {
        "dashboard" => return "sent".into(),
        "home_assistant" => {
            let Some((url, token, service)) = &notify.home_assistant else { return "skipped: [alerts.home_assistant] is not configured".into() };
            let service = service.strip_prefix("notify.").unwrap_or(service);
            http.post(format!("{}/api/services/notify/{service}", url.trim_end_matches('/')))
                .bearer_auth(token)
                .json(&serde_json::json!({"title": title, "message": body}))
                .send()
                .await
        }
        "webhook" => {
            let Some(url) = &notify.webhook else { return "skipped: [alerts] webhook_url is not configured".into() };
            http.post(url)
                .json(&serde_json::json!({
                    "incident": inc.id, "title": title, "message": body, "severity": inc.severity,
                    "state": inc.state.as_str(), "root": inc.root, "causes": inc.causes, "opened_ms": inc.opened_ms,
                }))
                .send()
                .await
        }
        other => return format!("skipped: {other} is not a channel (dashboard, home_assistant, webhook)"),
    };
    match r {
        Ok(resp) if resp.status().is_success() => "sent".into(),
        Ok(resp) => format!("failed: {} answered {}", channel, resp.status()),
        Err(e) => format!("failed: {e}"),
    }
}

/// Incidents as people act on them: through the running desk when this process has one
/// (`labops serve`), else straight through the store (the CLI, MCP over stdio), where a running
/// server picks the decision up within a second.
#[derive(Clone, Debug)]
pub enum Incidents {
    /// This process runs the desk.
    Live(Alerting),
    /// Another process may; the store is shared.
    Stored(Store),
}

impl Incidents {
    /// The store.
    pub fn store(&self) -> &Store {
        match self {
            Self::Live(a) => a.store(),
            Self::Stored(s) => s,
        }
    }

    /// Acknowledges (`ack`) or resolves an incident, as `by`, recorded under `actor`.
    pub async fn decide(&self, id: i64, ack: bool, by: &str, actor: &str) -> Result<(), AlertingError> {
        match self {
            Self::Live(a) if ack => a.acknowledge(id, by).await,
            Self::Live(a) => a.resolve(id, by).await,
            Self::Stored(s) => {
                let to = if ack { IncidentState::Acknowledged } else { IncidentState::Resolved };
                match s.set_incident_state(id, to, by, now_ms(), actor).await.map_err(|e| AlertingError::Store(e.to_string()))? {
                    None => Err(AlertingError::Refused(format!("no incident #{id}; `labops incidents --all` lists them"))),
                    Some(was) if !was.is_active() => Err(AlertingError::Refused(format!("incident #{id} is already {}", was.as_str()))),
                    Some(_) => Ok(()),
                }
            }
        }
    }

    /// Records a silence (applied by a running desk at once or within a second).
    pub async fn silence(&self, s: &Silence, actor: &str) -> Result<i64, AlertingError> {
        match self {
            Self::Live(a) => a.silence(s, actor).await,
            Self::Stored(st) => st.add_silence(s, now_ms(), actor).await.map_err(|e| AlertingError::Store(e.to_string())),
        }
    }
}

/// Proposes a runbook's fix as a change: the library workflow planned with the values labops
/// takes from the target (never from the alert's text), proposed by the rule.
async fn propose_remedy(rem: &Remediation, rb: &Runbook, r: &Remedy, target: &labops_core::inventory::Entity, alert: &str, finding: Option<&str>) -> Result<labops_store::changes::ChangeRecord, String> {
    use crate::changes::ProposalInput;
    use labops_core::change::{Actor, Analysis, RiskLevel, Roi};
    let path = rem.library.path(&r.workflow).ok_or_else(|| format!("the workflow {} is not in the library", r.workflow))?;
    let yaml = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (w, report) = labops_core::workflow::check(&yaml);
    let w = w.filter(|_| report.is_valid()).ok_or_else(|| format!("the library workflow {} has errors", r.workflow))?;
    let choice = rem.library.choices().into_iter().find(|c| c.name == r.workflow).ok_or_else(|| format!("{} is not in the library", r.workflow))?;
    let values = labops_ai::agent::target_values(target, &choice).into_iter().collect();
    let plan = labops_core::workflow::plan(&w, &values).map_err(|e| format!("{} cannot be planned for {}: {e}", r.workflow, target.id))?;
    let params = serde_json::to_value(&plan.parameters).unwrap_or_default();
    // The runbook's record so far, for the human who approves (its confidence).
    let record = match rem.changes.engine().store().runbook_stats(now_ms() - LEARN_DAYS * 86_400_000).await {
        Ok(stats) => match stats.iter().find(|s| s.runbook == rb.name) {
            Some(s) if s.proposed > 0 => format!("; its record over {LEARN_DAYS} days: {} fix(es) proposed, the alerts resolved after {} of them", s.proposed, s.fixed),
            _ => "; it has no record yet".to_string(),
        },
        Err(_) => String::new(),
    };
    let input = ProposalInput {
        title: format!("{}: {} {} (incident #{})", rb.name, r.workflow, target.qualified_name(), r.incident),
        analysis: Analysis {
            what: format!("Run the workflow {} on {} ({}).", r.workflow, target.qualified_name(), target.id),
            why: match finding {
                Some(f) => format!("Alert {alert} matched runbook {}: {}. labops found: {f}", rb.name, rb.why),
                None => format!("Alert {alert} matched runbook {}: {}", rb.name, rb.why),
            },
            risk: RiskLevel::Low,
            risk_notes: format!("proposed by a runbook on the alert's labels; the target's node was up when it was proposed{record}"),
            blast_radius: Vec::new(),
            rollback_plan: Vec::new(),
            manual_steps: Vec::new(),
        },
        roi: Roi {
            time_saved_hours_per_month: (rb.time_saved_minutes / 60.0).clamp(0.0, 744.0),
            cost_once: 0.0,
            cost_monthly: 0.0,
            learning_value: 1,
            complexity: 2,
            risk: 2,
            basis: format!("runbook {}: {} minutes saved per occurrence, as its author estimated", rb.name, rb.time_saved_minutes),
        },
        area: None,
    };
    rem.changes.propose(&plan, params, input, Actor::Rule(rb.name.clone()), "runbook").await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use labops_store::alerting::RuleStats;

    use super::*;

    fn stats(name: &str, incidents: i64, noise: i64, critical: bool) -> RuleStats {
        RuleStats { name: name.into(), incidents, noise, acknowledged: 0, critical, mean_minutes_to_resolve: 1.0 }
    }

    #[test]
    fn learning_quiets_names_that_are_almost_always_noise_and_never_critical_ones() {
        let l = learned(&[
            stats("Blip", 10, 9, false),
            stats("Rare", 4, 4, false),
            stats("Mixed", 10, 8, false),
            stats("CriticalBlip", 20, 20, true),
        ]);
        assert_eq!(l.keys().collect::<Vec<_>>(), vec!["Blip"]);
        assert!(l["Blip"].contains("9 of 10"));
    }
}
