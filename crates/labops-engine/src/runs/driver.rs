//! The run driver: takes a run from the store and moves it forward until it ends or waits for a
//! human, writing every state change to the store before the action it leads to.
//!
//! A run is driven by one process at a time (a lease in the store: owner and heartbeat; a dead
//! owner's PID or a stale heartbeat frees it, and a run stays with the process that last drove
//! it while that process lives). Whoever acts carries the run: `labops workflow
//! run` drives it until it waits, `complete-step`, `approve` and `resume` pick it up again, and
//! `labops serve` drives every run continuously. Progress is read from the store's event stream,
//! so any process can follow any run.
//!
//! Per step: `prepare` (read-only) -> store `running` with the intent -> `execute` -> store
//! `succeeded`/`waiting_human`/`failed`. After a crash, a step found `running` is verified with
//! its target: done (recorded), not done (run again), or unknown (waits for a human). A failed
//! step (after its retries) or a cancel stops the run; completed steps are compensated in
//! reverse completion order and the run ends `rolled_back` or `cancelled` with a report.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use labops_core::change::{ChangeState, plan_digest};
use labops_core::inventory::Inventory;
use labops_core::workflow::{Availability, Plan};
use labops_store::{AuditEntry, Store};
use labops_store::runs::{NewEvent, RunHead, RunRecord, StepRecord, TERMINAL};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use super::executor::{Compensation, Executor, Ground, Registry, RunStep, Started, StepCx, StepError, Verified};
use crate::lab::now_ms;

/// Why a run could not be submitted, found, or acted on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// No run has this id.
    #[error("there is no run {0}; `labops workflow runs` lists them")]
    NotFound(i64),
    /// The workflow cannot run as planned; every reason, one per line.
    #[error("the workflow cannot run:\n  - {}", .0.join("\n  - "))]
    NotRunnable(Vec<String>),
    /// A human action that does not fit the run's state.
    #[error("{0}")]
    Refused(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] labops_store::Error),
}

/// Result with [`RunError`].
pub type Result<T, E = RunError> = std::result::Result<T, E>;

/// Where a call to [`Engine::drive`] left the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Driven {
    /// It ended in this state.
    Finished {
        /// `succeeded`, `rolled_back`, `cancelled` or `failed`.
        outcome: String,
    },
    /// It waits: for what, one line each.
    Waiting {
        /// What it waits for.
        reasons: Vec<String>,
    },
    /// Another live process drives it.
    Busy {
        /// That process.
        owner: String,
    },
}

/// A test hook: SIGKILL this process when it reaches `point` for `step`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashPoint {
    /// `before_execute`, `after_execute`, `after_record`, `before_compensate`, `after_compensate`.
    pub point: String,
    /// The step.
    pub step: String,
}

impl CrashPoint {
    /// The points a run passes for each step.
    pub const POINTS: &[&str] = &["before_execute", "after_execute", "after_record", "before_compensate", "after_compensate"];

    /// Parses `POINT@STEP`.
    pub fn parse(s: &str) -> Option<Self> {
        let (point, step) = s.split_once('@')?;
        Self::POINTS.contains(&point).then(|| Self { point: point.into(), step: step.into() })
    }
}

/// A run with its steps and locks, for `status`.
#[derive(Debug, Clone, Serialize)]
pub struct RunStatus {
    /// The run.
    pub run: RunRecord,
    /// Its steps in plan order.
    pub steps: Vec<StepRecord>,
    /// The entities it holds.
    pub locks: Vec<String>,
}

/// The workflow engine: submits and drives runs.
#[derive(Clone)]
pub struct Engine {
    store: Store,
    registry: Arc<Registry>,
    owner: String,
    steps_at_once: Arc<Semaphore>,
    drives_at_once: Arc<Semaphore>,
    per_run: usize,
    crash: Option<CrashPoint>,
    heartbeat: Arc<std::sync::OnceLock<AbortOnDrop>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("owner", &self.owner).field("registry", &self.registry).finish()
    }
}

const HEARTBEAT: Duration = Duration::from_secs(1);
/// Runs one process drives at once; the others queue (their steps are bounded separately).
const DRIVES_AT_ONCE: usize = 32;
const STALE_MS: i64 = 5_000;

/// Whether the driver `owner` (`pid:PID:NONCE`) is gone: its process is dead, or it stopped
/// beating. Same machine only (SQLite); a shared database would use a cluster lease instead.
fn owner_gone(owner: &str, heartbeat_ms: i64) -> bool {
    let stale = now_ms() - heartbeat_ms > STALE_MS;
    let dead = owner
        .strip_prefix("pid:")
        .and_then(|rest| rest.split(':').next())
        .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists());
    stale || dead
}

/// The steps of a stored plan, in plan order.
pub fn plan_steps(plan: &Value) -> Vec<RunStep> {
    plan["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|stage| stage["steps"].as_array().into_iter().flatten())
        .filter_map(|s| serde_json::from_value(s.clone()).ok())
        .collect()
}

impl Engine {
    /// An engine over `store` with these executors. `steps_at_once` bounds the steps running at
    /// once across all runs of this process; `per_run` bounds the parallel branches of one run.
    pub fn new(store: Store, registry: Registry, steps_at_once: usize, per_run: usize) -> Self {
        let nonce = now_ms() % 1_000_000;
        Self {
            store,
            registry: Arc::new(registry),
            owner: format!("pid:{}:{nonce}", std::process::id()),
            steps_at_once: Arc::new(Semaphore::new(steps_at_once.max(1))),
            drives_at_once: Arc::new(Semaphore::new(DRIVES_AT_ONCE)),
            per_run: per_run.max(1),
            crash: None,
            heartbeat: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// Arms the crash test hook.
    pub fn with_crash_point(mut self, crash: Option<CrashPoint>) -> Self {
        self.crash = crash;
        self
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Checks that every step of `plan` can run here and stores a new run; returns its id.
    /// A run with mutating steps waits for approval; the others start at once when driven.
    pub async fn submit(&self, plan: &Plan, by: &str) -> Result<i64> {
        self.submit_grounded(plan, by, None).await
    }

    /// [`Engine::submit`], first resolving every entity the steps name against `inventory`
    /// (the live lab): an unknown or ambiguous name refuses the run with the real candidates, and
    /// a guest a step would create must not exist yet.
    pub async fn submit_grounded(&self, plan: &Plan, by: &str, inventory: Option<&Inventory>) -> Result<i64> {
        self.submit_inner(plan, by, inventory, None).await
    }

    /// Submits the run that executes change `change` (a number in the store's changes), from
    /// the plan stored on the change (checked in full when the change was proposed; its steps
    /// are checked again here against the lab as it is now). The run waits until
    /// [`Engine::release`] finds the change approved for exactly this plan.
    pub async fn submit_for_change(&self, workflow: &str, plan: &Value, by: &str, inventory: Option<&Inventory>, change: i64) -> Result<i64> {
        let problems = self.check_steps(plan, inventory);
        if !problems.is_empty() {
            return Err(RunError::NotRunnable(problems));
        }
        let steps = plan_steps(plan);
        let needs_approval = steps.iter().any(|s| s.mutates);
        let names: Vec<String> = steps.iter().map(|s| s.name.clone()).collect();
        Ok(self.store.create_run(workflow, plan, needs_approval, Some(change), by, &names, now_ms()).await?)
    }

    async fn submit_inner(&self, plan: &Plan, by: &str, inventory: Option<&Inventory>, change: Option<i64>) -> Result<i64> {
        let plan_json = serde_json::to_value(plan).map_err(|e| RunError::Refused(format!("plan does not serialize: {e}")))?;
        let problems = self.check(plan, inventory);
        if !problems.is_empty() {
            return Err(RunError::NotRunnable(problems));
        }
        let steps = plan_steps(&plan_json);
        let needs_approval = steps.iter().any(|s| s.mutates);
        let names: Vec<String> = steps.iter().map(|s| s.name.clone()).collect();
        Ok(self.store.create_run(&plan.workflow, &plan_json, needs_approval, change, by, &names, now_ms()).await?)
    }

    /// Every reason `plan` cannot run here, one sentence each (none: it can): steps not
    /// available yet, steps without an executor, executor checks, and, with an inventory, every
    /// entity the steps name resolved against it.
    pub fn check(&self, plan: &Plan, inventory: Option<&Inventory>) -> Vec<String> {
        let plan_json = match serde_json::to_value(plan) {
            Ok(v) => v,
            Err(e) => return vec![format!("plan does not serialize: {e}")],
        };
        let mut problems = Vec::new();
        let mut cannot: HashSet<String> = HashSet::new();
        for s in plan.stages.iter().flat_map(|st| &st.steps) {
            if let Availability::Later(needs) = s.availability {
                problems.push(format!("step `{}` ({}) is not available yet: {needs}", s.name, s.step_type));
            } else if !s.include_when.is_empty() || !s.for_each.is_empty() {
                problems.push(format!("step `{}` uses includeWhen/forEach, which only kro evaluates", s.name));
            } else {
                continue;
            }
            cannot.insert(format!("step `{}`", s.name));
        }
        // A step that cannot run at all is reported once, not again for its fields.
        let stepwise = self.check_steps(&plan_json, inventory);
        problems.extend(stepwise.into_iter().filter(|p| !cannot.iter().any(|c| p.starts_with(c.as_str()))));
        problems
    }

    /// The per-step part of [`Engine::check`], on a stored plan.
    fn check_steps(&self, plan: &Value, inventory: Option<&Inventory>) -> Vec<String> {
        let steps = plan_steps(plan);
        let mut problems = Vec::new();
        for s in &steps {
            match self.registry.get(&s.step_type) {
                None => problems.push(format!(
                    "step `{}` ({}) has no executor here: configure its integration in labops.toml ({})",
                    s.name,
                    s.step_type,
                    integration_hint(&s.step_type)
                )),
                Some(e) => problems.extend(e.check(s).into_iter().map(|p| format!("step `{}`: {p}", s.name))),
            }
        }
        if let Some(inv) = inventory {
            problems.extend(ground(&self.registry, &steps, inv));
        }
        problems
    }

    /// The entities the steps of a stored plan lock (change), sorted.
    pub fn targets(&self, plan: &Value) -> Vec<String> {
        let mut out: Vec<String> =
            plan_steps(plan).iter().filter_map(|s| self.registry.get(&s.step_type).map(|e| e.targets(s))).flatten().collect();
        out.sort();
        out.dedup();
        out
    }

    /// What each step of a stored plan names or creates: (step, ground).
    pub fn grounds(&self, plan: &Value) -> Vec<(String, Ground)> {
        plan_steps(plan)
            .iter()
            .filter_map(|s| self.registry.get(&s.step_type).map(|e| (s, e)))
            .flat_map(|(s, e)| e.grounding(s).into_iter().map(move |g| (s.name.clone(), g)))
            .collect()
    }

    /// Asks a step's executor whether what the step did still holds in the lab.
    pub async fn verify_step(&self, id: i64, step: &str) -> Result<Verified> {
        let run = self.store.run(id).await?.ok_or(RunError::NotFound(id))?;
        let Some(s) = plan_steps(&run.plan).into_iter().find(|s| s.name == step) else {
            return Err(RunError::Refused(format!("run {id} has no step `{step}`")));
        };
        let rec = self.store.run_steps(id).await?.into_iter().find(|r| r.name == step);
        let Some(exec) = self.registry.get(&s.step_type).cloned() else {
            return Ok(Verified::Unknown(format!("no executor for {} here", s.step_type)));
        };
        let intent = rec.as_ref().and_then(|r| r.intent.clone()).unwrap_or(Value::Null);
        let (tx, _rx) = mpsc::unbounded_channel();
        let cx = StepCx::new(id, s, rec.map_or(1, |r| r.attempt), tx);
        Ok(exec.verify(&cx, &intent).await)
    }

    /// A run with its steps and locks.
    pub async fn status(&self, id: i64) -> Result<RunStatus> {
        let run = self.store.run(id).await?.ok_or(RunError::NotFound(id))?;
        Ok(RunStatus { steps: self.store.run_steps(id).await?, locks: self.store.run_locks(id).await?, run })
    }

    /// Lets a run that changes the lab start, once its change is approved for exactly its plan.
    /// There is no other way out of `awaiting_approval`: a run tied to no change, to a change
    /// not approved, or to an approval given for another plan is refused, and the refusal is
    /// audited.
    pub async fn release(&self, id: i64, actor: &str) -> Result<()> {
        let run = self.store.run(id).await?.ok_or(RunError::NotFound(id))?;
        if run.state != "awaiting_approval" {
            return Err(RunError::Refused(format!("run {id} is not waiting for its change's approval (it is {})", run.state)));
        }
        if let Err(why) = self.gate(&run).await? {
            self.audit_refusal(actor, "run_release", id, &why).await;
            return Err(RunError::Refused(why));
        }
        let approver = match self.store.change_of_run(id).await? {
            Some(c) => c.change.history.iter().rev().find(|t| t.to == ChangeState::Approved).map(|t| t.actor.to_string()),
            None => None,
        };
        if self.store.approve_run(id, approver.as_deref().unwrap_or(actor), now_ms()).await? {
            return Ok(());
        }
        let run = self.store.run(id).await?.ok_or(RunError::NotFound(id))?;
        Err(RunError::Refused(format!("run {id} is not waiting for its change's approval (it is {})", run.state)))
    }

    /// The gate every run that changes the lab passes before its first step: tied to a change
    /// that a human approved, for the digest of this run's plan. `Ok(Err(why))` when refused.
    pub(crate) async fn gate(&self, run: &RunRecord) -> Result<std::result::Result<(), String>> {
        if !run.needs_approval && !plan_steps(&run.plan).iter().any(|s| s.mutates) {
            return Ok(Ok(()));
        }
        let Some(number) = run.change_id else {
            return Ok(Err(format!(
                "run {} changes the lab but belongs to no change; every change goes through `labops change propose` and a human's approval",
                run.id
            )));
        };
        let Some(change) = self.store.change(number).await? else {
            return Ok(Err(format!("run {} names change chg-{number}, which does not exist", run.id)));
        };
        if !matches!(change.change.state, ChangeState::Approved | ChangeState::Executing) {
            return Ok(Err(format!(
                "change {} is {}, not approved; a human approves it with `labops change approve {}`",
                change.change.id, change.change.state, change.change.id
            )));
        }
        Ok(change.change.check_plan(&plan_digest(&run.plan)).map_err(|e| e.to_string()))
    }

    async fn audit_refusal(&self, actor: &str, action: &str, run: i64, why: &str) {
        let entry = AuditEntry {
            at_ms: now_ms(),
            actor: actor.to_string(),
            action: action.to_string(),
            target: Some(format!("run/{run}")),
            outcome: "refused".into(),
            detail: json!({"reason": why}),
        };
        if let Err(e) = self.store.audit(&entry).await {
            tracing::warn!("audit write failed: {e}");
        }
    }

    /// A human confirms a step that waits for a go-ahead (an irreversible command).
    pub async fn confirm_step(&self, id: i64, step: &str, actor: &str) -> Result<()> {
        let ev = NewEvent::step(step, "step_confirmed", json!({"by": actor}));
        if self.store.human_step(id, step, &["awaiting_confirmation"], "confirmed", None, None, now_ms(), &ev).await? {
            return Ok(());
        }
        Err(self.step_refusal(id, step, "awaiting confirmation").await)
    }

    /// A human marks a waiting step done (with data) or failed (with a reason).
    pub async fn complete_step(&self, id: i64, step: &str, result: std::result::Result<Value, String>, actor: &str) -> Result<()> {
        // A step with a `form` (field name -> what to enter) needs every field when it is done.
        if let Ok(data) = &result {
            let run = self.store.run(id).await?.ok_or(RunError::NotFound(id))?;
            let form = plan_steps(&run.plan).into_iter().find(|s| s.name == step).and_then(|s| s.fields.get("form").cloned());
            if let Some(Value::Object(form)) = form {
                let missing: Vec<String> = form
                    .iter()
                    .filter(|(k, _)| data.get(k.as_str()).is_none_or(Value::is_null))
                    .map(|(k, v)| match v.as_str() {
                        Some(what) => format!("{k} ({what})"),
                        None => k.clone(),
                    })
                    .collect();
                if !missing.is_empty() {
                    return Err(RunError::Refused(format!(
                        "step `{step}` asks for {}; pass them with --data '{{\"{}\": ...}}'",
                        missing.join(", "),
                        form.keys().next().map(String::as_str).unwrap_or("field")
                    )));
                }
            }
        }
        let now = now_ms();
        let from = ["waiting_human"];
        let written = match &result {
            Ok(data) => {
                let ev = NewEvent::step(step, "step_succeeded", json!({"by": actor, "data": data}));
                self.store.human_step(id, step, &from, "succeeded", Some(&json!({"by": actor, "data": data})), None, now, &ev).await?
            }
            Err(reason) => {
                let ev = NewEvent::step(step, "step_failed", json!({"by": actor, "error": reason}));
                self.store.human_step(id, step, &from, "failed", None, Some(reason), now, &ev).await?
            }
        };
        if written { Ok(()) } else { Err(self.step_refusal(id, step, "waiting for a human").await) }
    }

    async fn step_refusal(&self, id: i64, step: &str, wanted: &str) -> RunError {
        let steps = match self.store.run_steps(id).await {
            Ok(s) if !s.is_empty() => s,
            Ok(_) => return RunError::NotFound(id),
            Err(e) => return e.into(),
        };
        match steps.iter().find(|s| s.name == step) {
            Some(s) => RunError::Refused(format!("step `{step}` of run {id} is not {wanted} (it is {})", s.state)),
            None => {
                let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
                RunError::Refused(format!("run {id} has no step `{step}`; its steps: {}", names.join(", ")))
            }
        }
    }

    /// Undoes a run that succeeded (its change failed validation): every completed step is
    /// compensated, newest first, and the run ends `rolled_back`. Drive it to do the work.
    pub async fn undo(&self, id: i64, actor: &str, reason: &str) -> Result<()> {
        let run = self.store.run(id).await?.ok_or(RunError::NotFound(id))?;
        if run.state != "succeeded" {
            return Err(RunError::Refused(format!("run {id} is {}; only a run that succeeded is undone this way (cancel a running one)", run.state)));
        }
        let ev = NewEvent::run("rollback_requested", json!({"by": actor, "reason": reason}));
        self.store.set_run_state(id, "rolling_back", None, now_ms(), &ev).await?;
        Ok(())
    }

    /// Asks a run to stop and undo what it did.
    pub async fn cancel(&self, id: i64, actor: &str) -> Result<()> {
        if self.store.request_cancel(id, actor, now_ms()).await? {
            return Ok(());
        }
        let run = self.store.run(id).await?.ok_or(RunError::NotFound(id))?;
        Err(RunError::Refused(format!("run {id} has already ended ({}) or is being cancelled", run.state)))
    }

    /// Drives one run until it ends or waits, unless another live process drives it.
    pub async fn drive(&self, id: i64) -> Result<Driven> {
        let _slot = self.drives_at_once.acquire().await.expect("semaphore is never closed");
        if !self.store.claim_run(id, &self.owner, now_ms(), owner_gone).await? {
            // Ended, missing, or driven by a live process.
            let run = self.store.run(id).await?.ok_or(RunError::NotFound(id))?;
            return Ok(match run.owner {
                Some(owner) if !TERMINAL.contains(&run.state.as_str()) => Driven::Busy { owner },
                _ => Driven::Finished { outcome: run.state },
            });
        }
        // One heartbeat per process covers every run it drives.
        self.heartbeat.get_or_init(|| {
            let (store, owner) = (self.store.clone(), self.owner.clone());
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(HEARTBEAT).await;
                    let _ = store.heartbeat(&owner, now_ms()).await;
                }
            }))
        });
        // A run that waits stays with this process while it lives (it picks the run up again
        // when a human acts, see `serve`); when it exits, the dead PID frees the run at once.
        // A run this process failed to drive is let go.
        let result = RunDriver::new(self, id).run().await;
        if result.is_err() {
            self.store.release_run(id, &self.owner).await?;
        }
        result
    }

    /// Drives every run that has not ended and that no live process drives, all at once.
    pub async fn resume_all(&self) -> Result<Vec<(i64, Driven)>> {
        // Take over the runs of drivers that are gone in one write each, not one per run.
        for (owner, beat) in self.store.run_owners().await? {
            if owner != self.owner && owner_gone(&owner, beat) {
                self.store.take_over(&owner, &self.owner, now_ms()).await?;
            }
        }
        let runs = self.store.runs(true, u32::MAX).await?;
        let mut set = JoinSet::new();
        for r in runs {
            let e = self.clone();
            set.spawn(async move { (r.id, e.drive(r.id).await) });
        }
        let mut out = Vec::new();
        while let Some(joined) = set.join_next().await {
            let (id, result) = joined.expect("drive tasks do not panic");
            out.push((id, result?));
        }
        out.sort_by_key(|(id, _)| *id);
        Ok(out)
    }

    /// Drives runs until `shutdown` resolves: every run not ended is picked up again whenever it
    /// changes (an approval, a completed step, a cancel) and every few seconds when it waits for
    /// a lock. What `labops serve` runs.
    pub async fn serve(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut seen: HashMap<i64, (i64, Instant)> = HashMap::new();
        let mut driving: JoinSet<(i64, i64)> = JoinSet::new();
        let mut active: HashSet<i64> = HashSet::new();
        let mut tick = tokio::time::interval(Duration::from_millis(300));
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(Ok((id, updated))) = driving.join_next(), if !driving.is_empty() => {
                    active.remove(&id);
                    seen.insert(id, (updated, Instant::now()));
                }
                _ = tick.tick() => {
                    let Ok(runs) = self.store.runs(true, u32::MAX).await else { continue };
                    for r in runs {
                        let due = match seen.get(&r.id) {
                            None => true,
                            Some((updated, at)) => *updated != r.updated_ms || at.elapsed() > Duration::from_secs(5),
                        };
                        if due && !active.contains(&r.id) {
                            active.insert(r.id);
                            let e = self.clone();
                            driving.spawn(async move {
                                if let Err(err) = e.drive(r.id).await {
                                    tracing::warn!(run = r.id, "driving run: {err}");
                                }
                                let updated = e.store.run(r.id).await.ok().flatten().map(|r| r.updated_ms).unwrap_or(0);
                                (r.id, updated)
                            });
                        }
                    }
                }
            }
        }
    }

    fn crash_point(&self, point: &str, step: &str) {
        if let Some(c) = &self.crash
            && c.point == point && c.step == step {
                tracing::warn!("test hook: killing this process at {point}@{step}");
                let _ = std::process::Command::new("kill").args(["-KILL", &std::process::id().to_string()]).status();
                std::thread::sleep(Duration::from_secs(60));
            }
    }
}

/// Resolves what each step names; every problem, one sentence each.
fn ground(registry: &Registry, steps: &[RunStep], inv: &Inventory) -> Vec<String> {
    let grounds: Vec<(&RunStep, Ground)> = steps
        .iter()
        .filter_map(|s| registry.get(&s.step_type).map(|e| (s, e)))
        .flat_map(|(s, e)| e.grounding(s).into_iter().map(move |g| (s, g)))
        .collect();
    let made: HashSet<&str> = grounds
        .iter()
        .filter_map(|(_, g)| match g {
            Ground::Makes { id, .. } => Some(id.as_str()),
            Ground::Exists { .. } => None,
        })
        .collect();
    let mut problems = Vec::new();
    for (s, g) in &grounds {
        match g {
            Ground::Exists { name, .. } if made.contains(name.as_str()) => {}
            Ground::Exists { field, name, kinds } => {
                if let Err(e) = inv.resolve(name, kinds) {
                    problems.push(format!("step `{}`: `{field}`: {e}", s.name));
                }
            }
            Ground::Makes { field, id } => {
                if let Some(e) = inv.get(id) {
                    problems.push(format!(
                        "step `{}`: `{field}`: {id} already exists ({} on {}); pick a free one",
                        s.name,
                        e.name,
                        e.node.as_deref().unwrap_or("?")
                    ));
                }
            }
        }
    }
    problems.sort();
    problems.dedup();
    problems
}

fn integration_hint(step_type: &str) -> &'static str {
    match step_type {
        "proxmox-task" => "[proxmox], and [ssh] for `commands`",
        "system-check" => "[ssh] for remote hosts",
        "git-commit" => "[git] repository",
        "kubernetes-task" | "kubernetes-deployment" => "[kubernetes]",
        _ => "see `labops init`",
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One run being driven.
struct RunDriver<'a> {
    engine: &'a Engine,
    id: i64,
    steps: BTreeMap<String, RunStep>,
    progress: mpsc::UnboundedSender<(String, Value)>,
    _progress_writer: AbortOnDrop,
    done_seq: Arc<AtomicI64>,
}

impl<'a> RunDriver<'a> {
    fn new(engine: &'a Engine, id: i64) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, Value)>();
        let store = engine.store.clone();
        let writer = tokio::spawn(async move {
            while let Some((step, detail)) = rx.recv().await {
                let _ = store.add_event(id, now_ms(), &NewEvent::step(&step, "step_progress", detail)).await;
            }
        });
        Self {
            engine,
            id,
            steps: BTreeMap::new(),
            progress: tx,
            _progress_writer: AbortOnDrop(writer),
            done_seq: Arc::new(AtomicI64::new(0)),
        }
    }

    fn executor(&self, step: &RunStep) -> std::result::Result<Arc<dyn Executor>, String> {
        self.engine
            .registry
            .get(&step.step_type)
            .cloned()
            .ok_or_else(|| format!("no executor for {} here; configure its integration ({})", step.step_type, integration_hint(&step.step_type)))
    }

    fn cx(&self, step: &RunStep, attempt: i64) -> StepCx {
        StepCx::new(self.id, step.clone(), attempt, self.progress.clone())
    }

    async fn save(&self, rec: &StepRecord, event: NewEvent) -> Result<()> {
        self.engine.store.save_step(self.id, rec, now_ms(), &event).await?;
        Ok(())
    }

    async fn run(mut self) -> Result<Driven> {
        let store = self.engine.store.clone();
        let run = store.run(self.id).await?.ok_or(RunError::NotFound(self.id))?;
        self.steps = plan_steps(&run.plan).into_iter().map(|s| (s.name.clone(), s)).collect();
        let recs = store.run_steps(self.id).await?;
        self.done_seq.store(recs.iter().filter_map(|r| r.done_seq).max().unwrap_or(0), Ordering::SeqCst);
        let recs = self.recover(recs).await?;
        let mut locked = false;
        let mut gated = false;
        let mut inflight: JoinSet<(String, Result<()>)> = JoinSet::new();
        let mut running: HashSet<String> = HashSet::new();
        // The first pass works from what was just read, unless recovery changed it.
        let head = RunHead { state: run.state, cancel_requested: run.cancel_requested, created_ms: run.created_ms };
        let mut first = Some((head, recs));
        loop {
            let (run, recs) = match first.take() {
                Some(loaded) => loaded,
                None => (store.run_head(self.id).await?.ok_or(RunError::NotFound(self.id))?, store.run_steps(self.id).await?),
            };
            if TERMINAL.contains(&run.state.as_str()) {
                return Ok(Driven::Finished { outcome: run.state });
            }
            if run.state == "awaiting_approval" {
                let reason = match store.change_of_run(self.id).await? {
                    Some(c) => format!("approval: it changes the lab; a human approves change {} with `labops change approve {}`", c.change.id, c.change.id),
                    None => "approval: it changes the lab and belongs to no change; propose it with `labops change propose`".to_string(),
                };
                return Ok(Driven::Waiting { reasons: vec![reason] });
            }
            // A human step with a `timeout` that nobody completed in time fails.
            let mut expired = false;
            for r in recs.iter().filter(|r| r.state == "waiting_human") {
                let Some(timeout) = self.steps.get(&r.name).and_then(|s| s.fields.get("timeout")) else { continue };
                let Ok(limit) = super::executor::parse_duration("timeout", timeout) else { continue };
                if now_ms() - r.started_ms.unwrap_or(now_ms()) > limit.as_millis() as i64 {
                    let why = format!("nobody completed it within its timeout ({timeout})");
                    let ev = NewEvent::step(&r.name, "step_failed", json!({"error": why, "timeout": true}));
                    expired |= store.human_step(self.id, &r.name, &["waiting_human"], "failed", None, Some(&why), now_ms(), &ev).await?;
                }
            }
            if expired {
                continue;
            }
            let failed = recs.iter().find(|r| r.state == "failed");
            if run.cancel_requested.is_some() || failed.is_some() || run.state == "rolling_back" {
                while let Some(j) = inflight.join_next().await {
                    j.expect("step tasks do not panic").1?;
                }
                return self.rollback(&run).await;
            }
            if !gated && run.state == "running" {
                let record = store.run(self.id).await?.ok_or(RunError::NotFound(self.id))?;
                let begun = recs.iter().any(|r| r.state != "pending");
                // Checked before the first step, and again whenever a driver picks the run up
                // before any step began; once steps ran, the rollback path needs no approval.
                if !begun && let Err(why) = self.engine.gate(&record).await? {
                    self.engine.audit_refusal("labops", "run_start", self.id, &why).await;
                    let report = json!({"reason": why, "refused": true, "undone": [], "not_undone": [], "not_run": recs.iter().map(|r| &r.name).collect::<Vec<_>>()});
                    let ev = NewEvent::run("refused", json!({"reason": why}));
                    store.set_run_state(self.id, "failed", Some(&report), now_ms(), &ev).await?;
                    return Ok(Driven::Finished { outcome: "failed".into() });
                }
                gated = true;
            }
            if !locked {
                let mut targets: Vec<String> = Vec::new();
                for s in self.steps.values() {
                    if let Ok(e) = self.executor(s) {
                        targets.extend(e.targets(s));
                    }
                }
                targets.sort();
                targets.dedup();
                if targets.is_empty() {
                    // Nothing to lock.
                } else if let Err(held) = store.lock_entities(self.id, &targets, now_ms()).await? {
                    let reasons = held.iter().map(|(e, r)| format!("lock: {e} is held by run {r}")).collect();
                    return Ok(Driven::Waiting { reasons });
                }
                locked = true;
            }
            let state_of: HashMap<&str, &str> = recs.iter().map(|r| (r.name.as_str(), r.state.as_str())).collect();
            let ready: Vec<&StepRecord> = recs
                .iter()
                .filter(|r| matches!(r.state.as_str(), "pending" | "confirmed") && !running.contains(&r.name))
                .filter(|r| {
                    self.steps.get(&r.name).is_some_and(|s| {
                        s.depends_on.iter().all(|d| matches!(state_of.get(d.as_str()), Some(&"succeeded") | Some(&"skipped")))
                    })
                })
                .collect();
            for rec in ready {
                if running.len() >= self.engine.per_run {
                    break;
                }
                let Some(step) = self.steps.get(&rec.name).cloned() else { continue };
                running.insert(rec.name.clone());
                let task = StepTask {
                    engine: self.engine.clone(),
                    id: self.id,
                    step,
                    rec: rec.clone(),
                    done_seq: self.done_seq.clone(),
                };
                let name = rec.name.clone();
                inflight.spawn(async move { (name, task.run().await) });
            }
            if inflight.is_empty() {
                if recs.iter().all(|r| matches!(r.state.as_str(), "succeeded" | "skipped")) {
                    let report = json!({"steps": recs.len(), "duration_ms": now_ms() - run.created_ms});
                    let ev = NewEvent::run("finished", json!({"outcome": "succeeded"}));
                    store.set_run_state(self.id, "succeeded", Some(&report), now_ms(), &ev).await?;
                    return Ok(Driven::Finished { outcome: "succeeded".into() });
                }
                let reasons = recs
                    .iter()
                    .filter_map(|r| match r.state.as_str() {
                        "waiting_human" => Some(format!(
                            "step `{}`: {} (then `labops workflow complete-step {} {}`)",
                            r.name,
                            r.error.as_deref().unwrap_or("a human's action"),
                            self.id,
                            r.name
                        )),
                        "awaiting_confirmation" => Some(format!(
                            "step `{}`: {} (go ahead with `labops workflow confirm {} {}`)",
                            r.name,
                            r.error.as_deref().unwrap_or("confirmation"),
                            self.id,
                            r.name
                        )),
                        _ => None,
                    })
                    .collect();
                return Ok(Driven::Waiting { reasons });
            }
            // Wait for a step to end; look at the run again now and then for a cancel.
            tokio::select! {
                Some(joined) = inflight.join_next() => {
                    let (name, result) = joined.expect("step tasks do not panic");
                    running.remove(&name);
                    result?;
                }
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// After a restart: steps left `running` are verified with their target.
    async fn recover(&self, mut recs: Vec<StepRecord>) -> Result<Vec<StepRecord>> {
        for rec in recs.iter_mut().filter(|r| r.state == "running") {
            let Some(step) = self.steps.get(&rec.name) else { continue };
            let intent = rec.intent.clone().unwrap_or(Value::Null);
            let verified = match self.executor(step) {
                Ok(e) => e.verify(&self.cx(step, rec.attempt), &intent).await,
                Err(why) => Verified::Unknown(why),
            };
            match verified {
                Verified::Done(outcome) => {
                    rec.state = "succeeded".into();
                    rec.outcome = Some(outcome);
                    rec.done_seq = Some(self.done_seq.fetch_add(1, Ordering::SeqCst) + 1);
                    rec.finished_ms = Some(now_ms());
                    self.save(rec, NewEvent::step(&rec.name, "step_succeeded", json!({"verified_after_restart": true}))).await?;
                }
                Verified::NotDone => {
                    rec.state = "pending".into();
                    self.save(rec, NewEvent::step(&rec.name, "step_recovered", json!({"redo": true}))).await?;
                }
                Verified::Unknown(why) => {
                    rec.state = "waiting_human".into();
                    rec.error = Some(format!("interrupted and cannot be checked automatically: {why}"));
                    let ev = NewEvent::step(&rec.name, "step_waiting", json!({"reason": rec.error, "uncheckable": true}));
                    self.save(rec, ev).await?;
                }
            }
        }
        Ok(recs)
    }

    /// Undoes completed steps in reverse completion order; the run ends `rolled_back` (or
    /// `cancelled`) with a report.
    async fn rollback(&self, run: &RunHead) -> Result<Driven> {
        let store = &self.engine.store;
        let recs = store.run_steps(self.id).await?;
        let failed = recs.iter().find(|r| r.state == "failed").map(|r| r.name.clone());
        let failed_error = recs.iter().find(|r| r.state == "failed").and_then(|r| r.error.clone());
        let reason = match (&run.cancel_requested, &failed) {
            (Some(by), _) => format!("cancelled by {by}"),
            (None, Some(f)) => format!("step `{f}` failed: {}", failed_error.as_deref().unwrap_or("no reason given")),
            (None, None) => store
                .run_events(self.id, 0, u32::MAX)
                .await?
                .into_iter()
                .rev()
                .find(|e| e.kind == "rollback_requested")
                .and_then(|e| e.detail["reason"].as_str().map(str::to_string))
                .unwrap_or_else(|| "rollback resumed after a restart".into()),
        };
        if run.state != "rolling_back" {
            store.set_run_state(self.id, "rolling_back", None, now_ms(), &NewEvent::run("rollback_started", json!({"reason": reason}))).await?;
        }
        for rec in recs.iter().filter(|r| matches!(r.state.as_str(), "pending" | "confirmed" | "waiting_human" | "awaiting_confirmation")) {
            let mut r = rec.clone();
            r.state = "cancelled".into();
            self.save(&r, NewEvent::step(&r.name, "step_cancelled", json!({"reason": "the run is rolling back"}))).await?;
        }
        // The failed step first (it may have done part of its work: a step of several actions,
        // a manifest applied before the rollout timed out); it stays `failed`. Then the
        // completed steps, newest first.
        let already: HashSet<String> = store
            .run_events(self.id, 0, u32::MAX)
            .await?
            .into_iter()
            .filter(|e| matches!(e.kind.as_str(), "step_compensated" | "step_compensation_failed"))
            .filter_map(|e| e.step)
            .collect();
        let mut order: Vec<StepRecord> =
            recs.iter().filter(|r| r.state == "failed" && r.intent.is_some() && !already.contains(&r.name)).cloned().collect();
        let mut done: Vec<StepRecord> = recs.into_iter().filter(|r| matches!(r.state.as_str(), "succeeded" | "compensating")).collect();
        done.sort_by_key(|r| std::cmp::Reverse(r.done_seq.unwrap_or(0)));
        order.extend(done);
        for mut rec in order {
            let was_failed = rec.state == "failed";
            let Some(step) = self.steps.get(&rec.name).cloned() else { continue };
            let exec = match self.executor(&step) {
                Ok(e) => e,
                Err(why) => {
                    rec.state = "compensation_failed".into();
                    self.save(&rec, NewEvent::step(&rec.name, "step_compensation_failed", json!({"why": why}))).await?;
                    continue;
                }
            };
            if rec.state != "compensating" && !was_failed {
                rec.state = "compensating".into();
                self.save(&rec, NewEvent::step(&rec.name, "compensation_started", Value::Null)).await?;
            }
            self.engine.crash_point("before_compensate", &rec.name);
            let cx = self.cx(&step, rec.attempt);
            let intent = rec.intent.clone().unwrap_or(Value::Null);
            let outcome = rec.outcome.clone().unwrap_or(Value::Null);
            let policy = exec.retry();
            let mut attempt = 0;
            let result = loop {
                attempt += 1;
                match exec.compensate(&cx, &intent, &outcome).await {
                    Err(e) if e.retryable && attempt < policy.attempts => tokio::time::sleep(policy.backoff(attempt)).await,
                    other => break other,
                }
            };
            let (state, event) = match result {
                Ok(Compensation::Undone(what)) => ("compensated", NewEvent::step(&rec.name, "step_compensated", json!({"what": what}))),
                Ok(Compensation::NothingToUndo) => ("compensated", NewEvent::step(&rec.name, "step_compensated", json!({"what": null}))),
                Ok(Compensation::CannotUndo(why)) => {
                    ("compensation_failed", NewEvent::step(&rec.name, "step_compensation_failed", json!({"why": why})))
                }
                Err(e) => ("compensation_failed", NewEvent::step(&rec.name, "step_compensation_failed", json!({"why": e.message}))),
            };
            if was_failed {
                // Keep the step `failed`: the event says what its compensation did.
                store.add_event(self.id, now_ms(), &event).await?;
            } else {
                rec.state = state.into();
                self.save(&rec, event).await?;
            }
            self.engine.crash_point("after_compensate", &rec.name);
        }
        let report = self.report(&reason, failed.as_deref()).await?;
        let final_state = if run.cancel_requested.is_some() { "cancelled" } else { "rolled_back" };
        let ev = NewEvent::run("finished", json!({"outcome": final_state, "reason": reason}));
        store.set_run_state(self.id, final_state, Some(&report), now_ms(), &ev).await?;
        Ok(Driven::Finished { outcome: final_state.into() })
    }

    /// What was undone and what could not be, from the run's events.
    async fn report(&self, reason: &str, failed: Option<&str>) -> Result<Value> {
        let events = self.engine.store.run_events(self.id, 0, u32::MAX).await?;
        let mut undone = Vec::new();
        let mut not_undone = Vec::new();
        let mut nothing = Vec::new();
        for e in &events {
            let step = e.step.clone().unwrap_or_default();
            match e.kind.as_str() {
                "step_compensated" if e.detail["what"].is_null() => nothing.push(step),
                "step_compensated" => undone.push(json!({"step": step, "what": e.detail["what"]})),
                "step_compensation_failed" => not_undone.push(json!({"step": step, "why": e.detail["why"]})),
                _ => {}
            }
        }
        let not_run: Vec<String> = events.iter().filter(|e| e.kind == "step_cancelled").filter_map(|e| e.step.clone()).collect();
        Ok(json!({
            "reason": reason,
            "failed_step": failed,
            "undone": undone,
            "not_undone": not_undone,
            "nothing_to_undo": nothing,
            "not_run": not_run,
        }))
    }
}

/// One step's attempts, as a task of its own.
struct StepTask {
    engine: Engine,
    id: i64,
    step: RunStep,
    rec: StepRecord,
    done_seq: Arc<AtomicI64>,
}

impl StepTask {
    async fn save(&self, rec: &StepRecord, event: NewEvent) -> Result<()> {
        self.engine.store.save_step(self.id, rec, now_ms(), &event).await?;
        Ok(())
    }

    async fn progress_event(&self, step: &str, detail: Value) -> Result<()> {
        self.engine.store.add_event(self.id, now_ms(), &NewEvent::step(step, "step_progress", detail)).await?;
        Ok(())
    }

    async fn fail(&self, rec: &mut StepRecord, message: String) -> Result<()> {
        rec.state = "failed".into();
        rec.error = Some(message.clone());
        rec.finished_ms = Some(now_ms());
        self.save(rec, NewEvent::step(&rec.name, "step_failed", json!({"error": message, "attempt": rec.attempt}))).await
    }

    async fn run(self) -> Result<()> {
        let _permit = self.engine.steps_at_once.acquire().await.expect("semaphore is never closed");
        let mut rec = self.rec.clone();
        let exec = match self.engine.registry.get(&self.step.step_type) {
            Some(e) => e.clone(),
            None => return self.fail(&mut rec, format!("no executor for {}", self.step.step_type)).await,
        };
        if rec.state == "pending"
            && let Some(question) = exec.confirm_before(&self.step) {
                rec.state = "awaiting_confirmation".into();
                rec.error = Some(question.clone());
                return self.save(&rec, NewEvent::step(&rec.name, "step_awaiting_confirmation", json!({"question": question}))).await;
            }
        let policy = exec.retry();
        let mut tries = 0;
        loop {
            tries += 1;
            rec.attempt += 1;
            // This attempt's progress is written as it comes, and all of it before the
            // attempt's outcome, so a follower never sees progress after "succeeded".
            let (progress, mut reports) = mpsc::unbounded_channel::<(String, Value)>();
            let cx = StepCx::new(self.id, self.step.clone(), rec.attempt, progress);
            // The first attempt's intent stays: a later attempt would see its own half-done work
            // as the state to restore.
            let prepared = match rec.intent.clone() {
                Some(intent) => Ok(intent),
                None => exec.prepare(&cx).await,
            };
            let result: std::result::Result<Started, StepError> = match prepared {
                Ok(intent) => {
                    rec.state = "running".into();
                    rec.idem_key = Some(cx.idem_key.clone());
                    rec.intent = Some(intent.clone());
                    rec.error = None;
                    rec.started_ms = Some(now_ms());
                    self.save(&rec, NewEvent::step(&rec.name, "step_started", json!({"attempt": rec.attempt}))).await?;
                    self.engine.crash_point("before_execute", &rec.name);
                    let executing = exec.execute(&cx, &intent);
                    tokio::pin!(executing);
                    let r = loop {
                        tokio::select! {
                            r = &mut executing => break r,
                            Some((step, detail)) = reports.recv() => self.progress_event(&step, detail).await?,
                        }
                    };
                    while let Ok((step, detail)) = reports.try_recv() {
                        self.progress_event(&step, detail).await?;
                    }
                    self.engine.crash_point("after_execute", &rec.name);
                    r
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(Started::Done(outcome)) => {
                    rec.state = "succeeded".into();
                    rec.outcome = Some(outcome);
                    rec.done_seq = Some(self.done_seq.fetch_add(1, Ordering::SeqCst) + 1);
                    rec.finished_ms = Some(now_ms());
                    self.save(&rec, NewEvent::step(&rec.name, "step_succeeded", json!({"attempt": rec.attempt}))).await?;
                    self.engine.crash_point("after_record", &rec.name);
                    return Ok(());
                }
                Ok(Started::WaitForHuman { instructions, detail }) => {
                    rec.state = "waiting_human".into();
                    rec.error = Some(instructions.clone());
                    rec.outcome = Some(detail.clone());
                    let ev = NewEvent::step(&rec.name, "step_waiting", json!({"instructions": instructions, "detail": detail}));
                    return self.save(&rec, ev).await;
                }
                Err(e) if e.retryable && tries < policy.attempts => {
                    let wait = policy.backoff(tries);
                    let ev = NewEvent::step(&rec.name, "step_retry", json!({"attempt": rec.attempt, "error": e.message, "wait_ms": wait.as_millis() as u64}));
                    self.engine.store.add_event(self.id, now_ms(), &ev).await?;
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return self.fail(&mut rec, e.message).await,
            }
        }
    }
}
