//! Runbooks: deterministic rules that turn an alert into a proposed fix.
//!
//! A runbook matches an alert's labels and names a workflow of the library and where it acts:
//!
//! ```yaml
//! # runbooks/crashloop-restart.yaml
//! name: crashloop-restart
//! match: ["alertname=KubePodCrashLooping"]   # label matchers, all must hold
//! workflow: k8s-rollout-restart              # from workflows/actions/
//! target: owner                              # `entity` (what the alert is on) or `owner`
//!                                            # (the workload a pod belongs to)
//! why: a rolling restart clears a wedged process in most crash loops
//! time_saved_minutes: 20                     # per occurrence, for the change's ROI
//! ```
//!
//! What runs is never decided by the alert's text: only its labels select a runbook, and the
//! target is the inventory entity its labels name. A runbook is not applied when the target or
//! the alert's entity sits on a machine that is down (restarting a pod that cannot start there
//! is the futile action this exists to avoid), nor when the alert is a symptom folded into
//! another entity's incident.

use labops_core::inventory::{EntityKind, Inventory, RelationKind};
use serde::{Deserialize, Serialize};

use crate::desk::{ancestors, AlertRecord, Incident, Matcher};

/// Where a runbook acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The entity the alert is located on.
    Entity,
    /// The workload that manages the pod the alert is on.
    Owner,
}

/// One runbook, as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runbook {
    /// Its name (unique).
    pub name: String,
    /// Label matchers (`alertname=KubePodCrashLooping`), all of which must hold.
    #[serde(rename = "match")]
    pub matchers: Vec<String>,
    /// The library workflow it proposes.
    pub workflow: String,
    /// Where it acts.
    #[serde(default = "default_target")]
    pub target: Target,
    /// Why the fix helps, for the change's analysis.
    pub why: String,
    /// Minutes of the owner's time it saves per occurrence.
    #[serde(default)]
    pub time_saved_minutes: f64,
    #[serde(skip)]
    compiled: Vec<Matcher>,
}

fn default_target() -> Target {
    Target::Entity
}

/// A runbook that applies: the fix to propose.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Remedy {
    /// The runbook.
    pub runbook: String,
    /// The incident it is for.
    pub incident: i64,
    /// The alert that matched.
    pub alert: String,
    /// The workflow.
    pub workflow: String,
    /// The entity it acts on.
    pub target: String,
}

/// Why a matching runbook was not applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Withheld {
    /// The runbook.
    pub runbook: String,
    /// The incident.
    pub incident: i64,
    /// Why.
    pub reason: String,
}

impl Runbook {
    /// Parses and checks one runbook file. `workflows` are the library's workflow names.
    pub fn parse(text: &str, workflows: &[String]) -> Result<Self, String> {
        let mut r: Runbook = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        if r.name.trim().is_empty() {
            return Err("`name` is empty".into());
        }
        if r.matchers.is_empty() {
            return Err(format!("{}: `match` is empty; a runbook must say which alerts it is for (alertname=...)", r.name));
        }
        r.compiled = r.matchers.iter().map(|m| Matcher::parse(m)).collect::<Result<_, _>>().map_err(|e| format!("{}: {e}", r.name))?;
        if !workflows.iter().any(|w| w == &r.workflow) {
            return Err(format!("{}: workflow {:?} is not in the library ({})", r.name, r.workflow, workflows.join(", ")));
        }
        if !(0.0..=10_000.0).contains(&r.time_saved_minutes) {
            return Err(format!("{}: time_saved_minutes {} is out of range (0 to 10000)", r.name, r.time_saved_minutes));
        }
        Ok(r)
    }

    /// True when the alert's labels match.
    pub fn matches(&self, a: &AlertRecord) -> bool {
        self.compiled.iter().all(|m| m.matches_labels(&a.alert.labels))
    }

    /// The fix for this alert in this incident, or why it is withheld.
    pub fn apply(&self, a: &AlertRecord, inc: &Incident, inv: &Inventory) -> Result<Remedy, Withheld> {
        let withheld = |reason: String| Withheld { runbook: self.name.clone(), incident: inc.id, reason };
        let Some(entity) = a.entity.as_deref() else {
            return Err(withheld("the alert names nothing in the inventory".into()));
        };
        if let Some(root) = inc.root.as_deref() {
            if root != entity && ancestors(inv, entity).iter().any(|x| x == root) {
                return Err(withheld(format!("{entity} is a symptom of {root}, this incident's cause; fixing it first would be futile")));
            }
        }
        let target = match self.target {
            Target::Entity => entity.to_string(),
            Target::Owner => inv
                .dependents(entity)
                .into_iter()
                .find(|(k, e)| *k == RelationKind::Manages && e.kind == EntityKind::Workload)
                .map(|(_, e)| e.id.clone())
                .ok_or_else(|| withheld(format!("{entity} has no owning workload in the inventory")))?,
        };
        for id in [entity, target.as_str()] {
            for m in inv.placement(id) {
                if !m.is_up() {
                    return Err(withheld(format!("{id} runs on {} {} which is {}: not acting on it", m.kind.as_str().replace('_', " "), m.qualified_name(), m.status)));
                }
            }
        }
        Ok(Remedy { runbook: self.name.clone(), incident: inc.id, alert: a.alert.fingerprint.clone(), workflow: self.workflow.clone(), target })
    }
}

/// Reads every `*.yaml` runbook in `dir`; returns the runbooks and the problems (file: why).
pub fn load_dir(dir: &std::path::Path, workflows: &[String]) -> (Vec<Runbook>, Vec<String>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return (out, problems) };
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml")).collect();
    paths.sort();
    for p in paths {
        match std::fs::read_to_string(&p).map_err(|e| e.to_string()).and_then(|t| Runbook::parse(&t, workflows)) {
            Ok(r) if out.iter().any(|o: &Runbook| o.name == r.name) => problems.push(format!("{}: the name {:?} is used twice", p.display(), r.name)),
            Ok(r) => out.push(r),
            Err(e) => problems.push(format!("{}: {e}", p.display())),
        }
    }
    (out, problems)
}
