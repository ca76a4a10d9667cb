//! The professional change workflow, enforced: issue -> analysis and ROI -> human approval ->
//! execution with rollback -> validation -> documentation -> commit `fixes #N` -> issue closed.
//!
//! [`Changes`] is the one way a change moves. Every move goes through the core lifecycle
//! (`labops_core::change`), which refuses shortcuts, and is stored with its actor, reason and
//! audit record in one transaction. Approval is a human act bound to the plan's digest; the
//! engine's gate ([`crate::runs::Engine::release`] and the driver's check before the first step)
//! refuses a run whose change is not approved for exactly its plan, so neither this module nor a
//! caller can skip it.
//!
//! [`Changes::advance`] moves an approved change as far as it can: it is idempotent and picks up
//! where a crash left it (the run is found again by its change, the commit by its
//! `Labops-Change` trailer).
//!
//! - [`forge`]: the issue tracker behind one trait; the embedded local forge.
//! - [`gitops`]: the documentation pages and the commit.

pub mod forge;
pub mod gitops;

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use labops_core::change::{Actor, Analysis, Change, ChangeError, ChangeState, Roi, StandingApproval, plan_digest};
use labops_core::inventory::Inventory;
use labops_core::workflow::Plan;
use labops_store::changes::{ChangeRecord, ChangeUpdate};
use labops_store::{AuditEntry, Store};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::lab::now_ms;
use crate::runs::driver::plan_steps;
use crate::runs::{Driven, Engine, Ground, RunError, Verified};
use forge::Forge;
use gitops::{DocEntry, GitOps};

/// `YYYY-MM-DD HH:MM UTC` for Unix milliseconds.
pub fn date_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_else(|| ms.to_string())
}

/// The lab as it is now, read fresh from its sources: what validation and documentation see.
#[async_trait]
pub trait LiveLab: Send + Sync {
    /// The lab's name.
    fn name(&self) -> String;
    /// A fresh inventory.
    async fn inventory(&self) -> Result<Arc<Inventory>, String>;
}

/// Why a change could not move.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChangeFail {
    /// No such change.
    #[error("there is no change {0}; `labops change list` shows them")]
    NotFound(String),
    /// Refused (and audited): the message says why and what to do.
    #[error("refused: {0}")]
    Refused(String),
    /// The proposal is incomplete or the plan cannot run; every reason.
    #[error("the change cannot be proposed:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
    /// The lifecycle said no.
    #[error(transparent)]
    Lifecycle(#[from] ChangeError),
    /// The engine failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] labops_store::Error),
    /// The forge failed.
    #[error("forge: {0}")]
    Forge(String),
    /// The documentation or the commit failed; the change stays where it is, to retry.
    #[error("documentation: {0}")]
    Docs(String),
}

impl From<forge::ForgeError> for ChangeFail {
    fn from(e: forge::ForgeError) -> Self {
        ChangeFail::Forge(e.0)
    }
}

/// Result with [`ChangeFail`].
pub type Result<T, E = ChangeFail> = std::result::Result<T, E>;

/// What a proposer says about a change: the analysis and the ROI are theirs (the AI engine fills
/// them once it lands); the blast radius, rollback plan and manual steps are added by labops from
/// the plan and the live inventory.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProposalInput {
    /// One line on what the change does; the issue's title and the commit's summary.
    pub title: String,
    /// What, why, risk, and any manual steps the proposer knows of.
    pub analysis: Analysis,
    /// The estimate.
    pub roi: Roi,
    /// The documentation area (`compute`, `storage`, `kubernetes`, `hosts`); from the plan's
    /// targets when absent.
    #[serde(default)]
    pub area: Option<String>,
}

/// Where [`Changes::advance`] left a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Advanced {
    /// It waits: for what.
    Waiting {
        /// One line each.
        reasons: Vec<String>,
    },
    /// Another process drives its run.
    Busy {
        /// That process.
        owner: String,
    },
    /// It reached a final state.
    Ended {
        /// `closed`, `rolled_back`, `failed` or `rejected`.
        state: ChangeState,
    },
}

/// The change service: every transport (CLI, REST, MCP) calls these.
#[derive(Clone)]
pub struct Changes {
    engine: Engine,
    store: Store,
    forge: Arc<dyn Forge>,
    gitops: Option<GitOps>,
    lab: Arc<dyn LiveLab>,
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes").field("forge", &self.forge.kind()).field("gitops", &self.gitops).finish_non_exhaustive()
    }
}

/// `chg-12` or `12` to 12.
pub fn parse_id(id: &str) -> Option<i64> {
    let n = id.trim().strip_prefix("chg-").unwrap_or(id.trim());
    n.parse().ok().filter(|n| *n > 0)
}

fn undo_of(step_type: &str) -> &'static str {
    match step_type {
        "proxmox-task" => "its Proxmox actions undone in reverse (a guest it created destroyed, one it started stopped, a snapshot deleted, config restored)",
        "kubernetes-task" | "kubernetes-deployment" => "the objects it applied restored to what they were, or deleted when it created them",
        "git-commit" => "its commit reverted with a new commit",
        "system-check" => "nothing to undo (read-only)",
        _ => "its rollback commands run, or a human undoes it (the run report says which)",
    }
}

impl Changes {
    /// A service over `engine`'s store, opening issues on `forge`, documenting into `gitops`,
    /// validating against `lab`.
    pub fn new(engine: Engine, forge: Arc<dyn Forge>, gitops: Option<GitOps>, lab: Arc<dyn LiveLab>) -> Self {
        Self { store: engine.store().clone(), engine, forge, gitops, lab }
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The forge.
    pub fn forge(&self) -> &dyn Forge {
        self.forge.as_ref()
    }

    async fn audit(&self, actor: &str, action: &str, target: &str, outcome: &str, detail: Value) {
        let e = AuditEntry { at_ms: now_ms(), actor: actor.into(), action: action.into(), target: Some(target.into()), outcome: outcome.into(), detail };
        if let Err(err) = self.store.audit(&e).await {
            tracing::warn!("audit write failed: {err}");
        }
    }

    /// Records a refusal in the audit log and returns it as the error.
    pub async fn refuse(&self, actor: &str, action: &str, target: &str, why: String) -> ChangeFail {
        self.audit(actor, action, target, "refused", json!({"reason": why})).await;
        ChangeFail::Refused(why)
    }

    /// One change by id (`chg-N` or `N`).
    pub async fn get(&self, id: &str) -> Result<ChangeRecord> {
        let n = parse_id(id).ok_or_else(|| ChangeFail::NotFound(format!("{id:?} (a change id looks like chg-12)")))?;
        self.store.change(n).await?.ok_or_else(|| ChangeFail::NotFound(format!("chg-{n}")))
    }

    /// The newest changes; only those still moving when `open`.
    pub async fn list(&self, open: bool, limit: u32) -> Result<Vec<ChangeRecord>> {
        Ok(self.store.changes(open, limit).await?)
    }

    /// Opens a change for `plan`: checks the proposal and the plan against the live lab, adds
    /// the blast radius, rollback plan and manual steps, stores it `awaiting_approval`, and
    /// opens its issue.
    pub async fn propose(&self, plan: &Plan, params: Value, input: ProposalInput, by: Actor, via: &str) -> Result<ChangeRecord> {
        let mut problems = Vec::new();
        if input.title.trim().is_empty() {
            problems.push("`title` is empty: say in one line what the change does".to_string());
        }
        if input.analysis.what.trim().is_empty() {
            problems.push("`analysis.what` is empty: say what will change".to_string());
        }
        if input.analysis.why.trim().is_empty() {
            problems.push("`analysis.why` is empty: say why it is worth doing".to_string());
        }
        problems.extend(input.roi.problems());
        if let Some(a) = &input.area
            && !gitops::AREAS.iter().any(|(name, _)| name == a)
        {
            let known: Vec<&str> = gitops::AREAS.iter().map(|(n, _)| *n).collect();
            problems.push(format!("`area` {a:?} is not a documentation area; use one of {}", known.join(", ")));
        }
        if matches!(by, Actor::Engine) {
            problems.push("a change is proposed by a person or a model, not by labops itself".into());
        }
        let inventory = self.lab.inventory().await.map_err(|e| ChangeFail::Invalid(vec![format!("the live lab cannot be read to check the plan: {e}")]))?;
        problems.extend(self.engine.check(plan, Some(&inventory)));
        if !problems.is_empty() {
            self.audit(&by.to_string(), "change_propose", &plan.workflow, "refused", json!({"problems": problems})).await;
            return Err(ChangeFail::Invalid(problems));
        }
        let plan_json = serde_json::to_value(plan).map_err(|e| ChangeFail::Invalid(vec![format!("the plan does not serialize: {e}")]))?;
        let digest = plan_digest(&plan_json);
        let (analysis, dependents) = self.complete_analysis(input.analysis.clone(), &plan_json, &inventory);
        let area = input.area.clone().unwrap_or_else(|| gitops::area_of(&self.engine.targets(&plan_json)).to_string());
        let proposal = json!({"params": params, "analysis": analysis, "roi": input.roi, "area": area, "via": via});

        let now = now_ms();
        let mut change = Change::new("chg-0", input.title.trim(), by.clone(), now);
        change.transition(ChangeState::Analysed, by.clone(), "analysis and ROI given by the proposer", now)?;
        change.transition(ChangeState::AwaitingApproval, Actor::Engine, "analysed; waiting for a human's approval", now)?;
        let audit = AuditEntry {
            at_ms: now,
            actor: by.to_string(),
            action: "change_propose".into(),
            target: None,
            outcome: "ok".into(),
            detail: json!({"workflow": plan.workflow, "plan_digest": digest, "via": via}),
        };
        let n = self.store.create_change(&change, &plan.workflow, &plan_json, &digest, &proposal, &by.to_string(), now, &audit).await?;
        let mut rec = self.store.change(n).await?.ok_or_else(|| ChangeFail::NotFound(format!("chg-{n}")))?;
        let issue = self.forge.open_issue(&rec.change.title, &issue_body(&rec), &["labops-change".into(), "awaiting-approval".into()]).await?;
        rec.change.issue = Some(issue);
        let audit = AuditEntry {
            at_ms: now_ms(),
            actor: "labops".into(),
            action: "change_issue_opened".into(),
            target: Some(rec.change.id.clone()),
            outcome: "ok".into(),
            detail: json!({"issue": issue, "forge": self.forge.kind()}),
        };
        if !self.store.save_change(n, ChangeState::AwaitingApproval, &rec.change, &ChangeUpdate::default(), now_ms(), &audit).await? {
            return Err(ChangeFail::Refused(format!("{} moved while its issue was opened; look at it with `labops change show {}`", rec.change.id, rec.change.id)));
        }
        self.apply_standing(&mut rec, dependents).await?;
        Ok(rec)
    }

    /// Approves `rec` in a human's name when one of their standing approvals covers it.
    async fn apply_standing(&self, rec: &mut ChangeRecord, dependents: usize) -> Result<()> {
        let targets = self.engine.targets(&rec.plan);
        let now = now_ms();
        for sa in self.store.standing().await? {
            if sa.covers(&rec.workflow, &targets, dependents, now).is_err() {
                continue;
            }
            let number = sa.id.trim_start_matches("sa-").parse::<i64>().unwrap_or_default();
            if !self.store.use_standing(number).await? {
                continue;
            }
            let reason = format!("standing approval {} recorded by {}: {}", sa.id, sa.approver, sa.reason);
            let from = rec.change.state;
            let human = Actor::Human(sa.approver.clone());
            rec.change.approve(human.clone(), &rec.plan_digest.clone(), &reason, now)?;
            let detail = json!({"standing_approval": sa.id, "plan_digest": rec.plan_digest, "targets": targets, "blast_radius": dependents});
            self.save(rec, from, ChangeUpdate::default(), &human, "change_approve", detail).await?;
            self.comment(rec, &format!("Approved under {reason} (targets {}; blast radius {dependents}). It runs without waiting, and still gets its documentation and commit.", targets.join(", "))).await;
            self.label(rec, "approved").await;
            return Ok(());
        }
        Ok(())
    }

    /// A human records a standing approval. Refused (and audited) without a name, a workflow,
    /// targets, or with an expiry in the past or more than a year away.
    #[allow(clippy::too_many_arguments)]
    pub async fn add_standing(
        &self,
        human: &str,
        workflow: &str,
        targets: Vec<String>,
        max_blast_radius: usize,
        max_uses: Option<u32>,
        expires_ms: i64,
        reason: &str,
    ) -> Result<StandingApproval> {
        let now = now_ms();
        let mut problems = Vec::new();
        if human.trim().is_empty() {
            problems.push("a standing approval names the human who records it".to_string());
        }
        if workflow.trim().is_empty() {
            problems.push("name the workflow it covers".to_string());
        }
        if targets.is_empty() || targets.iter().any(|t| t.trim().is_empty() || t.trim() == "*") {
            problems.push("list the targets it covers (entity ids like lxc/130 or pod/default/*); a bare * is not a limit".to_string());
        }
        if expires_ms <= now || expires_ms > now + 366 * 24 * 3600 * 1000 {
            problems.push("it must expire in the future, within a year".to_string());
        }
        if reason.trim().is_empty() {
            problems.push("say why (--reason)".to_string());
        }
        if !problems.is_empty() {
            self.audit(human, "standing_add", workflow, "refused", json!({"problems": problems})).await;
            return Err(ChangeFail::Invalid(problems));
        }
        let sa = StandingApproval {
            id: String::new(),
            approver: human.to_string(),
            reason: reason.to_string(),
            workflow: workflow.to_string(),
            targets,
            max_blast_radius,
            max_uses,
            uses: 0,
            expires_ms,
            created_ms: now,
            revoked_by: None,
        };
        let audit = AuditEntry {
            at_ms: now,
            actor: human.to_string(),
            action: "standing_add".into(),
            target: None,
            outcome: "ok".into(),
            detail: serde_json::to_value(&sa).unwrap_or_default(),
        };
        Ok(self.store.add_standing(&sa, &audit).await?)
    }

    /// Every standing approval, newest first.
    pub async fn standing(&self) -> Result<Vec<StandingApproval>> {
        Ok(self.store.standing().await?)
    }

    /// A human revokes a standing approval.
    pub async fn revoke_standing(&self, id: &str, human: &str) -> Result<()> {
        let n = id.trim().trim_start_matches("sa-").parse::<i64>().map_err(|_| ChangeFail::NotFound(format!("{id:?} (a standing approval id looks like sa-2)")))?;
        let audit = AuditEntry { at_ms: now_ms(), actor: human.to_string(), action: "standing_revoke".into(), target: Some(format!("sa-{n}")), outcome: "ok".into(), detail: Value::Null };
        if self.store.revoke_standing(n, &audit).await? {
            Ok(())
        } else {
            Err(ChangeFail::Refused(format!("sa-{n} does not exist or is already revoked")))
        }
    }

    /// Adds what labops knows from the plan and the inventory to the proposer's analysis; also
    /// returns how many other entities depend on the targets.
    fn complete_analysis(&self, mut a: Analysis, plan: &Value, inv: &Inventory) -> (Analysis, usize) {
        let mut radius: BTreeSet<String> = a.blast_radius.iter().cloned().collect();
        let mut dependents: BTreeSet<String> = BTreeSet::new();
        let made: BTreeSet<String> = self
            .engine
            .grounds(plan)
            .into_iter()
            .filter_map(|(_, g)| match g {
                Ground::Makes { id, .. } => Some(id),
                Ground::Exists { .. } => None,
            })
            .collect();
        for t in self.engine.targets(plan) {
            match inv.get(&t) {
                Some(e) => {
                    radius.insert(format!("{t} ({}, {}): changed", e.name, e.status));
                    for i in inv.impact_of(&t).into_iter().filter(|i| i.id != t) {
                        dependents.insert(i.id.clone());
                        radius.insert(format!("{} ({}): {} while it changes", i.id, i.name, serde_json::to_value(i.effect).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()));
                    }
                }
                None if made.contains(&t) => {
                    radius.insert(format!("{t}: new, nothing depends on it yet"));
                }
                None => {
                    radius.insert(format!("{t}: not in the inventory"));
                }
            }
        }
        a.blast_radius = radius.into_iter().collect();
        let steps = plan_steps(plan);
        if a.rollback_plan.is_empty() {
            a.rollback_plan = steps.iter().rev().filter(|s| s.mutates).map(|s| format!("`{}` ({}): {}", s.name, s.step_type, undo_of(&s.step_type))).collect();
        }
        for s in steps.iter().filter(|s| s.step_type == "external-task") {
            let what = s.fields.get("instructions").or_else(|| s.fields.get("description")).and_then(Value::as_str).unwrap_or("a task for a human");
            let line = format!("`{}`: {}", s.name, what.trim());
            if !a.manual_steps.contains(&line) {
                a.manual_steps.push(line);
            }
        }
        let targets: BTreeSet<String> = self.engine.targets(plan).into_iter().collect();
        (a, dependents.difference(&targets).count())
    }

    async fn save(&self, rec: &mut ChangeRecord, from: ChangeState, update: ChangeUpdate, actor: &Actor, action: &str, detail: Value) -> Result<()> {
        let audit = AuditEntry {
            at_ms: now_ms(),
            actor: actor.to_string(),
            action: action.into(),
            target: Some(rec.change.id.clone()),
            outcome: "ok".into(),
            detail,
        };
        if !self.store.save_change(rec.number, from, &rec.change, &update, now_ms(), &audit).await? {
            return Err(ChangeFail::Refused(format!(
                "{} changed while this was being done (someone else acted on it); look again with `labops change show {}`",
                rec.change.id, rec.change.id
            )));
        }
        if let Some((p, d)) = update.plan {
            rec.plan = p;
            rec.plan_digest = d;
        }
        rec.run_id = update.run_id.or(rec.run_id);
        rec.outcome = update.outcome.or(rec.outcome.take());
        rec.commit = update.commit.or(rec.commit.take());
        Ok(())
    }

    async fn move_to(&self, rec: &mut ChangeRecord, to: ChangeState, actor: Actor, reason: &str, update: ChangeUpdate) -> Result<()> {
        let from = rec.change.state;
        rec.change.transition(to, actor.clone(), reason, now_ms())?;
        let detail = json!({"from": from, "to": to, "reason": reason});
        self.save(rec, from, update, &actor, &format!("change_{to}"), detail).await
    }

    async fn comment(&self, rec: &ChangeRecord, body: &str) {
        if let Some(n) = rec.change.issue
            && let Err(e) = self.forge.comment(n, body).await
        {
            tracing::warn!(change = %rec.change.id, "commenting on issue #{n} failed: {e}");
        }
    }

    async fn label(&self, rec: &ChangeRecord, label: &str) {
        if let Some(n) = rec.change.issue
            && let Err(e) = self.forge.label(n, &[label.to_string()]).await
        {
            tracing::warn!(change = %rec.change.id, "labelling issue #{n} failed: {e}");
        }
    }

    /// A human approves the plan they were shown (`shown_digest`). Refused, and audited, when
    /// the approver is not named, the plan changed since it was shown, or the change is not
    /// waiting for approval.
    pub async fn approve(&self, id: &str, approver: &str, shown_digest: &str, via: &str) -> Result<ChangeRecord> {
        let mut rec = self.get(id).await?;
        let cid = rec.change.id.clone();
        if approver.trim().is_empty() {
            return Err(self.refuse("?", "change_approve", &cid, "an approval names its approver".into()).await);
        }
        if shown_digest != rec.plan_digest {
            let why = format!(
                "the plan shown ({shown_digest}) is not the plan of {cid} now ({}): it changed; look at it again with `labops change show {cid}` and approve what you see",
                rec.plan_digest
            );
            return Err(self.refuse(approver, "change_approve", &cid, why).await);
        }
        let from = rec.change.state;
        let reason = format!("approved via {via}");
        if let Err(e) = rec.change.approve(Actor::Human(approver.to_string()), shown_digest, &reason, now_ms()) {
            return Err(self.refuse(approver, "change_approve", &cid, e.to_string()).await);
        }
        self.save(&mut rec, from, ChangeUpdate::default(), &Actor::Human(approver.into()), "change_approve", json!({"plan_digest": shown_digest, "via": via})).await?;
        self.comment(&rec, &format!("Approved by **{approver}** (via {via}) for plan `{shown_digest}`.")).await;
        self.label(&rec, "approved").await;
        Ok(rec)
    }

    /// A human rejects a change; it never runs.
    pub async fn reject(&self, id: &str, human: &str, reason: &str, via: &str) -> Result<ChangeRecord> {
        let mut rec = self.get(id).await?;
        let cid = rec.change.id.clone();
        if human.trim().is_empty() {
            return Err(self.refuse("?", "change_reject", &cid, "a rejection names who rejects".into()).await);
        }
        let from = rec.change.state;
        if let Err(e) = rec.change.transition(ChangeState::Rejected, Actor::Human(human.into()), reason, now_ms()) {
            return Err(self.refuse(human, "change_reject", &cid, e.to_string()).await);
        }
        self.save(&mut rec, from, ChangeUpdate::default(), &Actor::Human(human.into()), "change_reject", json!({"reason": reason, "via": via})).await?;
        self.comment(&rec, &format!("Rejected by **{human}** (via {via}): {reason}")).await;
        self.label(&rec, "rejected").await;
        Ok(rec)
    }

    /// The change gets a new plan before it runs: its digest changes and any approval is void.
    pub async fn replan(&self, id: &str, plan: &Plan, by: Actor) -> Result<ChangeRecord> {
        let mut rec = self.get(id).await?;
        let cid = rec.change.id.clone();
        let inventory = self.lab.inventory().await.map_err(|e| ChangeFail::Invalid(vec![format!("the live lab cannot be read to check the plan: {e}")]))?;
        let problems = self.engine.check(plan, Some(&inventory));
        if !problems.is_empty() {
            return Err(ChangeFail::Invalid(problems));
        }
        let plan_json = serde_json::to_value(plan).map_err(|e| ChangeFail::Invalid(vec![e.to_string()]))?;
        let digest = plan_digest(&plan_json);
        let from = rec.change.state;
        if let Err(e) = rec.change.plan_changed(by.clone(), now_ms()) {
            return Err(self.refuse(&by.to_string(), "change_replan", &cid, e.to_string()).await);
        }
        let update = ChangeUpdate { plan: Some((plan_json, digest.clone())), ..Default::default() };
        self.save(&mut rec, from, update, &by, "change_replan", json!({"plan_digest": digest, "was": from})).await?;
        self.comment(&rec, &format!("The plan changed (now `{digest}`); any earlier approval is void.")).await;
        Ok(rec)
    }

    /// Moves an approved change as far as it goes: execution, validation, documentation,
    /// commit, close. Safe to call again at any point.
    pub async fn advance(&self, id: &str) -> Result<Advanced> {
        loop {
            let mut rec = self.get(id).await?;
            let cid = rec.change.id.clone();
            match rec.change.state {
                ChangeState::Proposed | ChangeState::Analysed | ChangeState::AwaitingApproval => {
                    return Ok(Advanced::Waiting { reasons: vec![format!("approval: a human approves it with `labops change approve {cid}`")] });
                }
                s if s.is_final() => return Ok(Advanced::Ended { state: s }),
                ChangeState::Approved => {
                    if let Err(e) = rec.change.check_plan(&rec.plan_digest) {
                        return Err(self.refuse("labops", "change_execute", &cid, e.to_string()).await);
                    }
                    self.move_to(&mut rec, ChangeState::Executing, Actor::Engine, "approved: executing its workflow", ChangeUpdate::default()).await?;
                    self.label(&rec, "executing").await;
                }
                ChangeState::Executing => {
                    if let Some(done) = self.execute(&mut rec).await? {
                        return Ok(done);
                    }
                }
                ChangeState::Validating => self.validate(&mut rec).await?,
                ChangeState::Documenting => self.document(&mut rec).await?,
                ChangeState::Committed => self.close(&mut rec).await?,
                _ => unreachable!("every state is handled"),
            }
        }
    }

    /// Runs (or goes on running) the change's workflow. `Some` when it waits.
    async fn execute(&self, rec: &mut ChangeRecord) -> Result<Option<Advanced>> {
        let run = match rec.run_id {
            Some(r) => r,
            None => {
                let r = match self.store.run_of_change(rec.number).await? {
                    Some(r) => r,
                    None => {
                        let inventory = self.lab.inventory().await.ok();
                        match self.engine.submit_for_change(&rec.workflow, &rec.plan, "labops", inventory.as_deref(), rec.number).await {
                            Ok(r) => r,
                            Err(RunError::NotRunnable(problems)) => {
                                let why = format!("the lab changed since the proposal and the plan cannot run: {}", problems.join("; "));
                                self.move_to(rec, ChangeState::Failed, Actor::Engine, &why, ChangeUpdate::default()).await?;
                                self.comment(rec, &format!("Not executed: {why}. Nothing was changed.")).await;
                                self.label(rec, "failed").await;
                                return Ok(None);
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                };
                let from = rec.change.state;
                self.save(rec, from, ChangeUpdate { run_id: Some(r), ..Default::default() }, &Actor::Engine, "change_run_submitted", json!({"run": r})).await?;
                self.comment(rec, &format!("Execution started: run {r} (`labops workflow status {r}`).")).await;
                r
            }
        };
        let state = self.engine.status(run).await?.run.state;
        if state == "awaiting_approval" {
            self.engine.release(run, "labops").await?;
        }
        match self.engine.drive(run).await? {
            Driven::Waiting { reasons } => {
                // The issue hears once about each new thing the run waits for.
                let said = rec.outcome.as_ref().map(|o| o["waiting"].clone()).unwrap_or(Value::Null);
                if said != json!(reasons) {
                    let from = rec.change.state;
                    let update = ChangeUpdate { outcome: Some(json!({"waiting": reasons})), ..Default::default() };
                    self.save(rec, from, update, &Actor::Engine, "change_waiting", json!({"run": run, "reasons": reasons})).await?;
                    let lines: String = reasons.iter().map(|r| format!("\n- {r}")).collect();
                    self.comment(rec, &format!("Run {run} waits for:{lines}")).await;
                }
                Ok(Some(Advanced::Waiting { reasons }))
            }
            Driven::Busy { owner } => Ok(Some(Advanced::Busy { owner })),
            Driven::Finished { outcome } => {
                let status = self.engine.status(run).await?;
                let steps: String = status.steps.iter().map(|s| format!("\n- `{}`: {}", s.name, s.state)).collect();
                let report = status.run.report.clone().unwrap_or(Value::Null);
                match outcome.as_str() {
                    "succeeded" => {
                        self.comment(rec, &format!("Run {run} succeeded:{steps}\n\nValidating against the live lab.")).await;
                        self.move_to(rec, ChangeState::Validating, Actor::Engine, &format!("run {run} succeeded"), ChangeUpdate::default()).await?;
                    }
                    "rolled_back" | "cancelled" => {
                        let why = report["reason"].as_str().unwrap_or("the run was rolled back").to_string();
                        self.move_to(rec, ChangeState::RolledBack, Actor::Engine, &format!("run {run} {outcome}: {why}"), ChangeUpdate { outcome: Some(json!({"run_report": report})), ..Default::default() }).await?;
                        self.comment(rec, &format!("Run {run} failed and was rolled back ({why}):{steps}\n\nRollback report:\n\n```json\n{}\n```\n\nNothing was committed; the issue stays open.", serde_json::to_string_pretty(&report).unwrap_or_default())).await;
                        self.label(rec, "rolled-back").await;
                    }
                    other => {
                        let why = report["reason"].as_str().unwrap_or("the run failed").to_string();
                        self.move_to(rec, ChangeState::Failed, Actor::Engine, &format!("run {run} {other}: {why}"), ChangeUpdate { outcome: Some(json!({"run_report": report})), ..Default::default() }).await?;
                        self.comment(rec, &format!("Run {run} ended {other}: {why}.{steps}\n\nNothing was committed; the issue stays open.")).await;
                        self.label(rec, "failed").await;
                    }
                }
                Ok(None)
            }
        }
    }

    /// Checks the outcome against the live lab: every step that changed the lab still shows its
    /// result, and every entity the plan creates exists. On failure the run is undone.
    async fn validate(&self, rec: &mut ChangeRecord) -> Result<()> {
        let cid = rec.change.id.clone();
        let run = rec.run_id.ok_or_else(|| ChangeFail::Refused(format!("{cid} is validating but has no run")))?;
        let mut checked = Vec::new();
        let mut problems = Vec::new();
        let status = self.engine.status(run).await?;
        for s in plan_steps(&rec.plan).iter().filter(|s| s.mutates) {
            if status.steps.iter().any(|r| r.name == s.name && r.state == "skipped") {
                continue;
            }
            match self.engine.verify_step(run, &s.name).await? {
                Verified::Done(_) => checked.push(format!("`{}` ({}): its result is in the lab", s.name, s.step_type)),
                Verified::NotDone => problems.push(format!("`{}` ({}): the lab does not show its result", s.name, s.step_type)),
                Verified::Unknown(why) => problems.push(format!("`{}` ({}): cannot be checked: {why}", s.name, s.step_type)),
            }
        }
        match self.lab.inventory().await {
            Ok(inv) => {
                for (step, g) in self.engine.grounds(&rec.plan) {
                    if let Ground::Makes { id, .. } = g {
                        match inv.get(&id) {
                            Some(e) => checked.push(format!("{id} ({}) is in the live inventory on {}, {}", e.name, e.node.as_deref().unwrap_or("?"), e.status)),
                            None => problems.push(format!("{id}, made by `{step}`, is not in the live inventory")),
                        }
                    }
                }
            }
            Err(e) => problems.push(format!("the live lab cannot be read: {e}")),
        }
        if problems.is_empty() {
            let outcome = json!({"validated": checked});
            self.move_to(rec, ChangeState::Documenting, Actor::Engine, &format!("validated: {} check(s) passed", checked.len()), ChangeUpdate { outcome: Some(outcome), ..Default::default() }).await?;
            let lines: String = checked.iter().map(|c| format!("\n- {c}")).collect();
            self.comment(rec, &format!("Validated against the live lab:{lines}")).await;
            return Ok(());
        }
        let why = format!("validation failed: {}", problems.join("; "));
        self.engine.undo(run, "labops", &why).await?;
        let outcome = loop {
            match self.engine.drive(run).await? {
                Driven::Finished { outcome } => break outcome,
                Driven::Busy { .. } => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
                Driven::Waiting { reasons } => break format!("waiting: {}", reasons.join("; ")),
            }
        };
        let report = self.engine.status(run).await?.run.report.unwrap_or(Value::Null);
        self.move_to(rec, ChangeState::RolledBack, Actor::Engine, &format!("{why}; run {run} {outcome}"), ChangeUpdate { outcome: Some(json!({"problems": problems, "run_report": report})), ..Default::default() }).await?;
        self.comment(rec, &format!("Validation failed; the run was rolled back ({outcome}):\n\n- {}\n\nNothing was committed; the issue stays open.", problems.join("\n- "))).await;
        self.label(rec, "rolled-back").await;
        Ok(())
    }

    /// Writes the documentation, commits it with `fixes #N` and pushes.
    async fn document(&self, rec: &mut ChangeRecord) -> Result<()> {
        let cid = rec.change.id.clone();
        let Some(git) = &self.gitops else {
            return Err(ChangeFail::Docs(format!(
                "{cid} cannot close without its documentation commit, and no GitOps repository is configured: set [gitops] path (and remote) in labops.toml, then `labops change resume {cid}`"
            )));
        };
        let issue = rec.change.issue.ok_or_else(|| ChangeFail::Docs(format!("{cid} has no issue to close")))?;
        let trailer = format!("Labops-Change: {cid}");
        let sha = match git.find_commit(&trailer).await.map_err(ChangeFail::Docs)? {
            Some(sha) => {
                git.push().await.map_err(ChangeFail::Docs)?;
                sha
            }
            None => {
                let inv = self.lab.inventory().await.map_err(|e| ChangeFail::Docs(format!("the live lab cannot be read for the docs: {e}")))?;
                let analysis = &rec.proposal["analysis"];
                let approver = rec.change.history.iter().rev().find(|t| t.to == ChangeState::Approved).map(|t| t.actor.to_string()).unwrap_or_default();
                let entry = DocEntry {
                    change: cid.clone(),
                    issue,
                    issue_link: self.forge.link(issue),
                    title: rec.change.title.clone(),
                    what: analysis["what"].as_str().unwrap_or_default().to_string(),
                    why: analysis["why"].as_str().unwrap_or_default().to_string(),
                    approved_by: approver.clone(),
                    run: rec.run_id.unwrap_or_default(),
                    validated: rec.outcome.as_ref().and_then(|o| o["validated"].as_array().cloned()).unwrap_or_default().iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
                    when: date_time(now_ms()),
                    area: rec.proposal["area"].as_str().unwrap_or("compute").to_string(),
                };
                let mut files = git.write_docs(&inv, &self.lab.name(), &entry).map_err(ChangeFail::Docs)?;
                self.comment(rec, &format!("Documentation updated: {}. Committing with `fixes #{issue}`.", files.join(", "))).await;
                if self.forge.kind() == "local" && git.issues_dir().is_dir() {
                    files.push("issues".into());
                }
                let message = format!(
                    "{}\n\n{}\n\nWhy: {}\nApproved-by: {approver}\nRun: {}\n{trailer}\n\nfixes #{issue}\n",
                    rec.change.title,
                    entry.what,
                    entry.why,
                    entry.run
                );
                git.commit_and_push(&files, &message).await.map_err(ChangeFail::Docs)?
            }
        };
        let update = ChangeUpdate { commit: Some(sha.clone()), ..Default::default() };
        let pushed = match &git.settings().remote {
            Some(r) => format!(" and pushed to {r} {}", git.settings().branch),
            None => String::new(),
        };
        self.move_to(rec, ChangeState::Committed, Actor::Engine, &format!("documentation committed as {sha}{pushed}"), update).await?;
        Ok(())
    }

    /// The commit landed: its `fixes #N` closes the issue.
    async fn close(&self, rec: &mut ChangeRecord) -> Result<()> {
        let cid = rec.change.id.clone();
        let (Some(sha), Some(issue), Some(git)) = (rec.commit.clone(), rec.change.issue, &self.gitops) else {
            return Err(ChangeFail::Docs(format!("{cid} is committed but its commit, issue or repository is unknown")));
        };
        let message = git.message(&sha).await.map_err(ChangeFail::Docs)?;
        self.forge.commit_landed(&sha, &message).await?;
        let state = self.forge.state(issue).await?;
        if state != "closed" {
            return Err(ChangeFail::Forge(format!("commit {sha} did not close issue #{issue} (it is {state}); its message must say `fixes #{issue}`")));
        }
        self.move_to(rec, ChangeState::Closed, Actor::Engine, &format!("issue #{issue} closed by commit {sha}"), ChangeUpdate::default()).await?;
        Ok(())
    }

    /// Advances every change that is approved and not finished (what `labops serve` runs).
    pub async fn advance_all(&self) -> Vec<(String, Result<Advanced>)> {
        let mut out = Vec::new();
        let Ok(open) = self.store.changes(true, u32::MAX).await else { return out };
        for c in open {
            if matches!(c.change.state, ChangeState::Proposed | ChangeState::Analysed | ChangeState::AwaitingApproval) {
                continue;
            }
            let id = c.change.id.clone();
            let r = self.advance(&id).await;
            out.push((id, r));
        }
        out
    }
}

/// The issue's body: the analysis, the ROI and the plan, as a human reads them before approving.
pub fn issue_body(rec: &ChangeRecord) -> String {
    let a = &rec.proposal["analysis"];
    let list = |v: &Value| -> String {
        let items: Vec<String> = v.as_array().into_iter().flatten().filter_map(|x| x.as_str()).map(|x| format!("- {x}")).collect();
        if items.is_empty() { "- none".into() } else { items.join("\n") }
    };
    let r = &rec.proposal["roi"];
    let mut plan = String::new();
    for (i, stage) in rec.plan["stages"].as_array().into_iter().flatten().enumerate() {
        for s in stage["steps"].as_array().into_iter().flatten() {
            let mutates = if s["mutates"].as_bool() == Some(true) { ", changes the lab" } else { "" };
            plan.push_str(&format!("{}. `{}` ({}{mutates})\n", i + 1, s["name"].as_str().unwrap_or("?"), s["step_type"].as_str().or(s["type"].as_str()).unwrap_or("?")));
        }
    }
    format!(
        "Change **{id}**, proposed by {by}.\n\n## What\n\n{what}\n\n## Why\n\n{why}\n\n## Risk: {risk}\n\n{notes}\n\n## Blast radius\n\n{radius}\n\n## Rollback plan\n\n{rollback}\n\n## Manual steps\n\n{manual}\n\n## ROI\n\n| Factor | Value |\n|---|---|\n| Time saved | {ts} h/month |\n| Cost | {co} once, {cm} per month |\n| Learning value | {lv}/10 |\n| Complexity | {cx}/10 |\n| Risk | {rk}/10 |\n\n{basis}\n\n## Plan\n\nWorkflow `{wf}`, plan `{digest}` (stages in order):\n\n{plan}\nApprove exactly this plan with `labops change approve {id}`; reject with `labops change reject {id} --reason ...`.\n",
        id = rec.change.id,
        by = rec.created_by,
        what = a["what"].as_str().unwrap_or(""),
        why = a["why"].as_str().unwrap_or(""),
        risk = a["risk"].as_str().unwrap_or("?"),
        notes = a["risk_notes"].as_str().filter(|s| !s.is_empty()).unwrap_or("No notes."),
        radius = list(&a["blast_radius"]),
        rollback = list(&a["rollback_plan"]),
        manual = list(&a["manual_steps"]),
        ts = r["time_saved_hours_per_month"],
        co = r["cost_once"],
        cm = r["cost_monthly"],
        lv = r["learning_value"],
        cx = r["complexity"],
        rk = r["risk"],
        basis = r["basis"].as_str().filter(|s| !s.is_empty()).map(|b| format!("Basis: {b}")).unwrap_or_default(),
        wf = rec.workflow,
        digest = rec.plan_digest,
    )
}
