//! The change record: the professional workflow every infrastructure change goes through, as a
//! state machine that refuses shortcuts.
//!
//! ```text
//! proposed -> analysed -> awaiting_approval -> approved -> executing -> validating
//!                                  |                          |   \          |    \
//!                                  v                          v    v         v     v
//!                              rejected                rolled_back failed  rolled_back failed
//! validating -> documenting -> committed -> closed
//! approved -> awaiting_approval   (the plan changed before it ran: the approval is void)
//! ```
//!
//! Every transition names its actor, time and reason, and the history is the audit trail. Only
//! a human approves or rejects; an approval is bound to the digest of the exact plan shown, and
//! execution refuses a plan whose digest differs (the plan changed: approve again). Pure: the
//! caller passes the time and stores the record.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The digest of a plan (`sha256:` and 64 hex digits) over its JSON form: what an approval is
/// bound to. Any change to any step, parameter or dependency changes it.
pub fn plan_digest(plan: &serde_json::Value) -> String {
    let hash = Sha256::digest(plan.to_string().as_bytes());
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for b in hash {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// How risky a change is, in the proposer's judgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RiskLevel {
    /// Easily undone, touches one thing.
    Low,
    /// Touches something others depend on, or is slow to undo.
    Medium,
    /// Could take services down or lose data.
    High,
}

/// What a change does and what it puts at stake: what a human reads before approving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Analysis {
    /// What will change, in a sentence or two.
    pub what: String,
    /// Why it is worth doing.
    pub why: String,
    /// How risky it is.
    pub risk: RiskLevel,
    /// What could go wrong.
    #[serde(default)]
    pub risk_notes: String,
    /// Entities it changes and everything that depends on them, from the live inventory.
    #[serde(default)]
    pub blast_radius: Vec<String>,
    /// How it is undone: one line per step, in the order the undo runs.
    #[serde(default)]
    pub rollback_plan: Vec<String>,
    /// What a human must do by hand, in order.
    #[serde(default)]
    pub manual_steps: Vec<String>,
}

/// The return on a change, estimated by its proposer (or, later, the AI engine).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Roi {
    /// Hours of the owner's time saved per month.
    pub time_saved_hours_per_month: f64,
    /// One-off cost, in the owner's currency.
    #[serde(default)]
    pub cost_once: f64,
    /// Monthly cost (power included).
    #[serde(default)]
    pub cost_monthly: f64,
    /// What the owner learns, 0 to 10.
    pub learning_value: u8,
    /// How hard it is, 0 to 10.
    pub complexity: u8,
    /// How much could go wrong, 0 to 10.
    pub risk: u8,
    /// Where the numbers come from (`owner`, `estimate`, `measured`) and why.
    #[serde(default)]
    pub basis: String,
}

impl Roi {
    /// Every problem with the numbers, one sentence each.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, v) in [("time_saved_hours_per_month", self.time_saved_hours_per_month), ("cost_once", self.cost_once), ("cost_monthly", self.cost_monthly)] {
            if !v.is_finite() || v < 0.0 {
                out.push(format!("roi.{name} must be a number of 0 or more, not {v}"));
            }
        }
        for (name, v) in [("learning_value", self.learning_value), ("complexity", self.complexity), ("risk", self.risk)] {
            if v > 10 {
                out.push(format!("roi.{name} is on a scale of 0 to 10, not {v}"));
            }
        }
        out
    }
}

/// Where a change stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeState {
    /// Opened: what and why, no analysis yet.
    Proposed,
    /// Analysis and ROI attached.
    Analysed,
    /// Waiting for a human's decision.
    AwaitingApproval,
    /// A human approved this plan.
    Approved,
    /// A human said no. Final.
    Rejected,
    /// Its workflow runs.
    Executing,
    /// The outcome is being checked.
    Validating,
    /// The documentation is being updated.
    Documenting,
    /// The commit that closes its issue is made.
    Committed,
    /// Done. Final.
    Closed,
    /// It failed and could not be rolled back completely. Final.
    Failed,
    /// It failed and what it did was undone. Final.
    RolledBack,
}

impl ChangeState {
    /// Every state, in lifecycle order.
    pub const ALL: [ChangeState; 12] = [
        Self::Proposed,
        Self::Analysed,
        Self::AwaitingApproval,
        Self::Approved,
        Self::Rejected,
        Self::Executing,
        Self::Validating,
        Self::Documenting,
        Self::Committed,
        Self::Closed,
        Self::Failed,
        Self::RolledBack,
    ];

    /// The states this one may move to.
    pub fn next(self) -> &'static [ChangeState] {
        use ChangeState::*;
        match self {
            Proposed => &[Analysed],
            Analysed => &[AwaitingApproval],
            AwaitingApproval => &[Approved, Rejected],
            Approved => &[Executing, AwaitingApproval],
            Executing => &[Validating, RolledBack, Failed],
            Validating => &[Documenting, RolledBack, Failed],
            Documenting => &[Committed],
            Committed => &[Closed],
            Rejected | Closed | Failed | RolledBack => &[],
        }
    }

    /// Whether the change can no longer move.
    pub fn is_final(self) -> bool {
        self.next().is_empty()
    }

    /// The name used in storage and on the command line.
    pub fn as_str(self) -> &'static str {
        use ChangeState::*;
        match self {
            Proposed => "proposed",
            Analysed => "analysed",
            AwaitingApproval => "awaiting_approval",
            Approved => "approved",
            Rejected => "rejected",
            Executing => "executing",
            Validating => "validating",
            Documenting => "documenting",
            Committed => "committed",
            Closed => "closed",
            Failed => "failed",
            RolledBack => "rolled_back",
        }
    }

    /// Parses [`ChangeState::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for ChangeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who moves a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Actor {
    /// A person, by name (from the CLI, or an approver token).
    Human(String),
    /// labops itself (running, validating, committing).
    Engine,
    /// A language model, by provider/model. Never approves.
    Ai(String),
    /// A deterministic rule labops runs on structured data (a runbook matching alert labels),
    /// by name. Proposes; never approves.
    Rule(String),
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Human(n) => write!(f, "{n}"),
            Actor::Engine => f.write_str("labops"),
            Actor::Ai(m) => write!(f, "ai:{m}"),
            Actor::Rule(r) => write!(f, "rule:{r}"),
        }
    }
}

/// One step of a change's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Transition {
    /// The state it left.
    pub from: ChangeState,
    /// The state it entered.
    pub to: ChangeState,
    /// Who moved it.
    pub actor: Actor,
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// Why, in the actor's words.
    pub reason: String,
}

/// Why a transition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChangeError {
    /// The lifecycle does not go from here to there.
    #[error("change {id} is {from}; it cannot become {to} (from {from} it can become: {allowed})")]
    NotAllowed {
        /// The change.
        id: String,
        /// Its state.
        from: ChangeState,
        /// The state asked for.
        to: ChangeState,
        /// What it can become, comma-separated (or "nothing: it is final").
        allowed: String,
    },
    /// Only a human approves or rejects.
    #[error("only a human can {what} change {id}; {actor} cannot (approve with `labops change approve {id}`)")]
    NotHuman {
        /// The change.
        id: String,
        /// `approve` or `reject`.
        what: &'static str,
        /// Who tried.
        actor: Actor,
    },
    /// The plan is not the one that was approved.
    #[error("change {id} was approved for plan {approved}, but the plan is now {current}; it changed, so a human must approve it again")]
    PlanChanged {
        /// The change.
        id: String,
        /// The digest approved.
        approved: String,
        /// The digest now.
        current: String,
    },
    /// A reason is required.
    #[error("a reason is required to move change {id} to {to}")]
    NoReason {
        /// The change.
        id: String,
        /// The state asked for.
        to: ChangeState,
    },
}

/// A change record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Change {
    /// Its own id (`chg-12`).
    pub id: String,
    /// One line on what it does.
    pub title: String,
    /// The forge issue that tracks it: the `N` of `fixes #N`.
    pub issue: Option<u64>,
    /// Where it stands.
    pub state: ChangeState,
    /// The digest of the plan a human approved, once approved.
    pub approved_plan: Option<String>,
    /// Every transition, oldest first.
    pub history: Vec<Transition>,
}

impl Change {
    /// A new change, `proposed` by `actor`.
    pub fn new(id: impl Into<String>, title: impl Into<String>, actor: Actor, now_ms: i64) -> Self {
        let created = Transition {
            from: ChangeState::Proposed,
            to: ChangeState::Proposed,
            actor,
            at_ms: now_ms,
            reason: "opened".into(),
        };
        Self { id: id.into(), title: title.into(), issue: None, state: ChangeState::Proposed, approved_plan: None, history: vec![created] }
    }

    /// Moves the change to `to`, recording who, when and why. Approval goes through
    /// [`Change::approve`]; this refuses `approved` so an approval always carries its plan.
    pub fn transition(&mut self, to: ChangeState, actor: Actor, reason: &str, now_ms: i64) -> Result<(), ChangeError> {
        if to == ChangeState::Approved {
            return Err(ChangeError::NotAllowed {
                id: self.id.clone(),
                from: self.state,
                to,
                allowed: "approve it with the plan shown (`labops change approve`)".into(),
            });
        }
        if to == ChangeState::Rejected && !matches!(actor, Actor::Human(_)) {
            return Err(ChangeError::NotHuman { id: self.id.clone(), what: "reject", actor });
        }
        self.step(to, actor, reason, now_ms)
    }

    /// A human approves the plan whose digest is `plan_digest`.
    pub fn approve(&mut self, actor: Actor, plan_digest: &str, reason: &str, now_ms: i64) -> Result<(), ChangeError> {
        if !matches!(actor, Actor::Human(_)) {
            return Err(ChangeError::NotHuman { id: self.id.clone(), what: "approve", actor });
        }
        self.step(ChangeState::Approved, actor, reason, now_ms)?;
        self.approved_plan = Some(plan_digest.to_string());
        Ok(())
    }

    /// The plan changed: an approval given for the old plan no longer holds, and a change
    /// approved but not yet running goes back to waiting for a human.
    pub fn plan_changed(&mut self, actor: Actor, now_ms: i64) -> Result<(), ChangeError> {
        match self.state {
            ChangeState::Proposed | ChangeState::Analysed | ChangeState::AwaitingApproval => Ok(()),
            ChangeState::Approved => {
                self.step(ChangeState::AwaitingApproval, actor, "the plan changed: the approval given for the old plan is void", now_ms)?;
                self.approved_plan = None;
                Ok(())
            }
            from => Err(ChangeError::NotAllowed {
                id: self.id.clone(),
                from,
                to: ChangeState::AwaitingApproval,
                allowed: "no new plan once it has started; propose a new change".into(),
            }),
        }
    }

    /// Checks that `plan_digest` is the plan a human approved, before anything runs.
    pub fn check_plan(&self, plan_digest: &str) -> Result<(), ChangeError> {
        match &self.approved_plan {
            Some(a) if a == plan_digest && !matches!(self.state, ChangeState::Rejected) => Ok(()),
            Some(a) => Err(ChangeError::PlanChanged { id: self.id.clone(), approved: a.clone(), current: plan_digest.into() }),
            None => Err(ChangeError::NotAllowed {
                id: self.id.clone(),
                from: self.state,
                to: ChangeState::Executing,
                allowed: "nothing until a human approves it".into(),
            }),
        }
    }

    fn step(&mut self, to: ChangeState, actor: Actor, reason: &str, now_ms: i64) -> Result<(), ChangeError> {
        if !self.state.next().contains(&to) {
            let allowed = if self.state.is_final() {
                "nothing: it is final".to_string()
            } else {
                self.state.next().iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            };
            return Err(ChangeError::NotAllowed { id: self.id.clone(), from: self.state, to, allowed });
        }
        if reason.trim().is_empty() && matches!(to, ChangeState::Rejected | ChangeState::Failed | ChangeState::RolledBack) {
            return Err(ChangeError::NoReason { id: self.id.clone(), to });
        }
        self.history.push(Transition { from: self.state, to, actor, at_ms: now_ms, reason: reason.to_string() });
        self.state = to;
        Ok(())
    }
}

/// A standing approval: a human's approval recorded in advance for a kind of action, within
/// limits. A change it covers is approved in that human's name when it is proposed; it still
/// gets its own record, issue, documentation and commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StandingApproval {
    /// `sa-N`.
    pub id: String,
    /// The human who recorded it; the approver on record of every change it covers.
    pub approver: String,
    /// Why it exists.
    pub reason: String,
    /// The workflow it covers, by name (`restart-pod`, `lxc-service`).
    pub workflow: String,
    /// Entity ids the workflow may touch; `*` matches any run of characters (`pod/default/*`).
    pub targets: Vec<String>,
    /// At most this many other entities may depend on the targets (the blast radius).
    pub max_blast_radius: usize,
    /// At most this many changes in all; none: no limit.
    pub max_uses: Option<u32>,
    /// Changes approved under it so far.
    pub uses: u32,
    /// When it expires, Unix milliseconds.
    pub expires_ms: i64,
    /// When it was recorded.
    pub created_ms: i64,
    /// Who revoked it, if someone did.
    pub revoked_by: Option<String>,
}

/// Whether `pattern` (with `*` wildcards) matches all of `text`.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) || text.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

impl StandingApproval {
    /// Why it does not cover a change of `workflow` touching `targets` with `blast_radius`
    /// dependents at `now_ms`; `Ok` when it does.
    pub fn covers(&self, workflow: &str, targets: &[String], blast_radius: usize, now_ms: i64) -> Result<(), String> {
        if let Some(by) = &self.revoked_by {
            return Err(format!("{} was revoked by {by}", self.id));
        }
        if now_ms >= self.expires_ms {
            return Err(format!("{} has expired", self.id));
        }
        if self.max_uses.is_some_and(|m| self.uses >= m) {
            return Err(format!("{} is used up ({} of {})", self.id, self.uses, self.max_uses.unwrap_or_default()));
        }
        if workflow != self.workflow {
            return Err(format!("{} covers workflow {}, not {workflow}", self.id, self.workflow));
        }
        if targets.is_empty() {
            return Err(format!("{} covers actions on named targets; this change names none", self.id));
        }
        if let Some(t) = targets.iter().find(|t| !self.targets.iter().any(|p| glob_match(p, t))) {
            return Err(format!("{} does not cover {t} (it covers {})", self.id, self.targets.join(", ")));
        }
        if blast_radius > self.max_blast_radius {
            return Err(format!("{} allows a blast radius of {}, and this change's is {blast_radius}", self.id, self.max_blast_radius));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann() -> Actor {
        Actor::Human("ann".into())
    }

    fn to_approval(c: &mut Change) {
        c.transition(ChangeState::Analysed, Actor::Ai("local/qwen".into()), "analysis attached", 2).unwrap();
        c.transition(ChangeState::AwaitingApproval, Actor::Engine, "analysis done", 3).unwrap();
    }

    #[test]
    fn the_whole_lifecycle_is_recorded() {
        let mut c = Change::new("chg-1", "grow tank", ann(), 1);
        to_approval(&mut c);
        c.approve(ann(), "sha256:abc", "looks right", 4).unwrap();
        c.check_plan("sha256:abc").unwrap();
        for (i, s) in [ChangeState::Executing, ChangeState::Validating, ChangeState::Documenting, ChangeState::Committed, ChangeState::Closed]
            .into_iter()
            .enumerate()
        {
            c.transition(s, Actor::Engine, "next", 5 + i as i64).unwrap();
        }
        assert!(c.state.is_final());
        let path: Vec<&str> = c.history.iter().map(|t| t.to.as_str()).collect();
        assert_eq!(
            path,
            ["proposed", "analysed", "awaiting_approval", "approved", "executing", "validating", "documenting", "committed", "closed"]
        );
        assert_eq!(c.history[3].actor, ann());
    }

    #[test]
    fn no_step_can_be_skipped() {
        let mut c = Change::new("chg-2", "x", ann(), 1);
        let err = c.transition(ChangeState::Executing, Actor::Engine, "hurry", 2).unwrap_err().to_string();
        assert_eq!(err, "change chg-2 is proposed; it cannot become executing (from proposed it can become: analysed)");
        assert!(c.transition(ChangeState::Approved, ann(), "ok", 2).is_err(), "approval only through approve()");
        to_approval(&mut c);
        assert!(c.check_plan("sha256:abc").is_err(), "nothing runs before approval");
    }

    #[test]
    fn only_a_human_approves_or_rejects() {
        let mut c = Change::new("chg-3", "x", ann(), 1);
        to_approval(&mut c);
        let err = c.approve(Actor::Ai("cloud/claude".into()), "d", "I approve", 4).unwrap_err();
        assert!(matches!(err, ChangeError::NotHuman { what: "approve", .. }), "{err}");
        assert!(c.transition(ChangeState::Rejected, Actor::Engine, "no", 4).is_err());
        assert_eq!(c.state, ChangeState::AwaitingApproval);
        assert!(matches!(c.transition(ChangeState::Rejected, ann(), " ", 4), Err(ChangeError::NoReason { .. })));
        c.transition(ChangeState::Rejected, ann(), "not now", 4).unwrap();
        assert!(c.state.is_final());
        assert!(c.transition(ChangeState::Executing, Actor::Engine, "x", 5).unwrap_err().to_string().contains("nothing: it is final"));
    }

    #[test]
    fn an_approval_holds_for_the_plan_shown_only() {
        let mut c = Change::new("chg-4", "x", ann(), 1);
        to_approval(&mut c);
        c.approve(ann(), "sha256:abc", "ok", 4).unwrap();
        let err = c.check_plan("sha256:def").unwrap_err().to_string();
        assert!(err.contains("approved for plan sha256:abc, but the plan is now sha256:def"), "{err}");
    }

    #[test]
    fn a_new_plan_voids_the_approval() {
        let mut c = Change::new("chg-5", "x", ann(), 1);
        to_approval(&mut c);
        c.approve(ann(), "sha256:abc", "ok", 4).unwrap();
        c.plan_changed(Actor::Engine, 5).unwrap();
        assert_eq!(c.state, ChangeState::AwaitingApproval);
        assert!(c.check_plan("sha256:abc").is_err(), "the old approval is gone");
        c.approve(ann(), "sha256:def", "ok again", 6).unwrap();
        c.check_plan("sha256:def").unwrap();
        c.transition(ChangeState::Executing, Actor::Engine, "run", 7).unwrap();
        assert!(c.plan_changed(Actor::Engine, 8).is_err(), "a running change keeps its plan");
    }

    #[test]
    fn the_digest_follows_every_byte_of_the_plan() {
        let a = serde_json::json!({"stages": [{"steps": [{"name": "a", "fields": {"vmid": 200}}]}]});
        let b = serde_json::json!({"stages": [{"steps": [{"name": "a", "fields": {"vmid": 201}}]}]});
        assert_eq!(plan_digest(&a), plan_digest(&a.clone()));
        assert_ne!(plan_digest(&a), plan_digest(&b));
        assert!(plan_digest(&a).starts_with("sha256:") && plan_digest(&a).len() == 71);
    }

    #[test]
    fn roi_numbers_are_checked() {
        let r = Roi { time_saved_hours_per_month: -1.0, cost_once: 0.0, cost_monthly: f64::NAN, learning_value: 11, complexity: 3, risk: 2, basis: String::new() };
        let p = r.problems();
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].contains("time_saved_hours_per_month") && p[2].contains("learning_value"), "{p:?}");
    }

    fn standing() -> StandingApproval {
        StandingApproval {
            id: "sa-1".into(),
            approver: "ann".into(),
            reason: "restarting a stuck pod is routine".into(),
            workflow: "restart-pod".into(),
            targets: vec!["pod/default/*".into(), "pod/media/jellyfin-*".into()],
            max_blast_radius: 2,
            max_uses: Some(3),
            uses: 0,
            expires_ms: 1_000,
            created_ms: 0,
            revoked_by: None,
        }
    }

    #[test]
    fn a_standing_approval_covers_only_its_workflow_targets_and_limits() {
        let sa = standing();
        let t = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(sa.covers("restart-pod", &t(&["pod/default/web-1"]), 1, 10).is_ok());
        assert!(sa.covers("restart-pod", &t(&["pod/media/jellyfin-0", "pod/default/x"]), 2, 10).is_ok());
        assert!(sa.covers("restart-pod", &t(&["pod/kube-system/coredns-1"]), 0, 10).unwrap_err().contains("does not cover pod/kube-system/coredns-1"));
        assert!(sa.covers("lxc-service", &t(&["pod/default/web-1"]), 0, 10).unwrap_err().contains("covers workflow restart-pod"));
        assert!(sa.covers("restart-pod", &t(&["pod/default/web-1"]), 3, 10).unwrap_err().contains("blast radius of 2"));
        assert!(sa.covers("restart-pod", &t(&["pod/default/web-1"]), 0, 1_000).unwrap_err().contains("expired"));
        assert!(sa.covers("restart-pod", &[], 0, 10).is_err(), "a change naming nothing is not covered");
        let used = StandingApproval { uses: 3, ..standing() };
        assert!(used.covers("restart-pod", &t(&["pod/default/a"]), 0, 10).unwrap_err().contains("used up"));
        let revoked = StandingApproval { revoked_by: Some("bob".into()), ..standing() };
        assert!(revoked.covers("restart-pod", &t(&["pod/default/a"]), 0, 10).unwrap_err().contains("revoked by bob"));
    }

    #[test]
    fn globs_match_whole_ids() {
        assert!(glob_match("pod/default/*", "pod/default/web-1"));
        assert!(!glob_match("pod/default/*", "pod/defaults/web-1"));
        assert!(glob_match("lxc/130", "lxc/130"));
        assert!(!glob_match("lxc/13", "lxc/130"));
        assert!(glob_match("*-gpu", "vm/k3s-vm-pumped-piglet-gpu"));
        assert!(glob_match("a*b*c", "a-x-b-y-c"));
        assert!(!glob_match("a*b*c", "a-x-c-y-b"));
        assert!(!glob_match("ab*ba", "aba"), "prefix and suffix may not overlap");
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for s in ChangeState::ALL {
            assert_eq!(ChangeState::parse(s.as_str()), Some(s));
        }
        assert_eq!(ChangeState::parse("done"), None);
    }
}
