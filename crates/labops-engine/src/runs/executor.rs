//! The step executor trait: one implementation per step type, registered in a [`Registry`].
//!
//! The engine drives every step the same way, so each executor only answers five questions:
//!
//! 1. [`Executor::check`]: is this step runnable as written (known action, allowlisted command,
//!    target named)? Asked when the run is submitted, before anything happens.
//! 2. [`Executor::prepare`]: read-only; what must be remembered before acting so the step can be
//!    verified and undone later (the VM's current config, the object's previous version). The
//!    engine stores this *intent* before it calls `execute`.
//! 3. [`Executor::execute`]: do it, once, under the attempt's idempotency key.
//! 4. [`Executor::verify`]: after a crash during `execute`, ask the target what happened
//!    (Proxmox task or object state, Kubernetes object, git log): done, not done (safe to redo),
//!    or unknown (a human must look).
//! 5. [`Executor::compensate`]: undo a completed step during rollback. Must be idempotent: a
//!    crash during compensation calls it again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use labops_core::inventory::EntityKind;
use labops_core::workflow::StepType;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Reads a duration field: seconds as a number, or `90s`, `5m`, `1h30m`, `7d`.
pub fn parse_duration(field: &str, v: &Value) -> Result<Duration, String> {
    let bad = || format!("`{field}` is {v}; write seconds (`300`) or a duration like `90s`, `5m`, `2h` or `7d`");
    let seconds = match v {
        Value::Number(n) => n.as_f64().ok_or_else(bad)?,
        Value::String(s) => {
            let s = s.trim();
            match s.parse::<f64>() {
                Ok(n) => n,
                Err(_) => {
                    let mut total = 0.0;
                    let mut rest = s;
                    while !rest.is_empty() {
                        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
                        let n: f64 = rest[..digits].parse().map_err(|_| bad())?;
                        let unit_end = rest[digits..].find(|c: char| c.is_ascii_digit()).map_or(rest.len(), |i| digits + i);
                        total += n * match &rest[digits..unit_end] {
                            "d" => 86_400.0,
                            "h" => 3600.0,
                            "m" => 60.0,
                            "s" => 1.0,
                            "ms" => 0.001,
                            _ => return Err(bad()),
                        };
                        rest = &rest[unit_end..];
                    }
                    total
                }
            }
        }
        _ => return Err(bad()),
    };
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 366.0 * 86_400.0 {
        return Err(format!("`{field}` must be more than 0 and at most a year, not {v}"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A step as the engine runs it: the planned step, parameters already bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStep {
    /// The step's name.
    pub name: String,
    /// Its type.
    pub step_type: String,
    /// Steps it waits for.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// `waitForHuman: true` or a type that always waits.
    #[serde(default)]
    pub waits_for_human: bool,
    /// Whether it changes the lab.
    #[serde(default)]
    pub mutates: bool,
    /// Its fields as written, parameters filled in.
    #[serde(default)]
    pub fields: BTreeMap<String, Value>,
}

impl RunStep {
    /// A string field.
    pub fn str_field(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(Value::as_str)
    }

    /// A list field as strings (a single string counts as a list of one).
    pub fn list_field(&self, key: &str) -> Vec<String> {
        match self.fields.get(key) {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        }
    }
}

/// What an executor sees while it works on one attempt of one step.
#[derive(Clone)]
pub struct StepCx {
    /// The run.
    pub run_id: i64,
    /// The step.
    pub step: RunStep,
    /// The attempt, from 1.
    pub attempt: i64,
    /// `run-<id>/<step>`: the same for every attempt of the step, so a redo after a crash finds
    /// what the first attempt did (a snapshot or commit named by it, say).
    pub idem_key: String,
    progress: tokio::sync::mpsc::UnboundedSender<(String, Value)>,
}

impl std::fmt::Debug for StepCx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepCx").field("run_id", &self.run_id).field("step", &self.step.name).field("attempt", &self.attempt).finish()
    }
}

impl StepCx {
    /// A context; `progress` receives `(step, detail)` for the run's event stream.
    pub fn new(run_id: i64, step: RunStep, attempt: i64, progress: tokio::sync::mpsc::UnboundedSender<(String, Value)>) -> Self {
        let idem_key = format!("run-{run_id}/{}", step.name);
        Self { run_id, step, attempt, idem_key, progress }
    }

    /// Reports progress: a fraction in [0, 1] when known, and a line for humans. Becomes a
    /// `step_progress` event.
    pub fn progress(&self, fraction: Option<f64>, message: impl Into<String>) {
        let detail = serde_json::json!({"fraction": fraction, "message": message.into()});
        let _ = self.progress.send((self.step.name.clone(), detail));
    }
}

/// How `execute` ended well.
#[derive(Debug, Clone, PartialEq)]
pub enum Started {
    /// Done; the outcome is stored (compensation and later steps read it).
    Done(Value),
    /// The step waits for a human: what they must do, and the form they may fill in.
    WaitForHuman {
        /// What to do, for the human.
        instructions: String,
        /// Extra facts to show (procurement details, expected form fields).
        detail: Value,
    },
}

/// What [`Executor::verify`] found after a crash during `execute`.
#[derive(Debug, Clone, PartialEq)]
pub enum Verified {
    /// It happened; this is its outcome.
    Done(Value),
    /// It did not happen: safe to run again.
    NotDone,
    /// Cannot tell (an uncheckable command): a human must check and mark the step.
    Unknown(String),
}

/// What [`Executor::compensate`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Compensation {
    /// Undone: what was done to undo it.
    Undone(String),
    /// The step changed nothing that needs undoing.
    NothingToUndo,
    /// It cannot be undone (irreversible): why, for the report.
    CannotUndo(String),
}

/// A step attempt failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    /// What went wrong and what to do.
    pub message: String,
    /// Whether another attempt may succeed (timeouts, 5xx, locks).
    pub retryable: bool,
}

impl StepError {
    /// A failure that retrying will not fix.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self { message: message.into(), retryable: false }
    }

    /// A failure another attempt may not meet.
    pub fn transient(message: impl Into<String>) -> Self {
        Self { message: message.into(), retryable: true }
    }
}

/// How often and how patiently to retry a failing step: exponential backoff from `initial`,
/// doubled each time, at most `max` between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: i64,
    /// Wait before the second attempt.
    pub initial: Duration,
    /// Longest wait.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { attempts: 3, initial: Duration::from_millis(200), max: Duration::from_secs(10) }
    }
}

impl RetryPolicy {
    /// No retries.
    pub const ONCE: Self = Self { attempts: 1, initial: Duration::ZERO, max: Duration::ZERO };

    /// The wait after attempt `attempt` (from 1) failed.
    pub fn backoff(&self, attempt: i64) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).clamp(0, 30) as u32);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// A lab entity a step names, to be resolved against the live inventory before the run starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ground {
    /// `field` names an entity that must exist, of one of `kinds` (any kind when empty).
    Exists {
        /// The step field that names it (`node`, `vmid`, `host`).
        field: String,
        /// The name as written.
        name: String,
        /// The kinds it may be.
        kinds: Vec<EntityKind>,
    },
    /// The step makes the entity with this inventory id (`vm/9100`): it must not exist yet,
    /// and later steps of the run may name it.
    Makes {
        /// The step field that names it.
        field: String,
        /// Its inventory id.
        id: String,
    },
}

/// One step type's executor.
#[async_trait]
pub trait Executor: Send + Sync {
    /// The type's declaration (fields, whether it mutates, whether it waits for a human).
    fn step_type(&self) -> &'static StepType;

    /// Problems that make this step unrunnable as written, each a sentence naming the field and
    /// what is accepted. Checked when the run is submitted.
    fn check(&self, _step: &RunStep) -> Vec<String> {
        Vec::new()
    }

    /// The entities the step changes (`vm/100`, `node/pve1`, `git:/path`, `k8s:ns/kind/name`):
    /// a run holds a lock on each from its start to its end.
    fn targets(&self, _step: &RunStep) -> Vec<String> {
        Vec::new()
    }

    /// The lab entities the step names (see [`Ground`]); the engine resolves them against the
    /// live inventory at submit time, so a typo never reaches a host or an API.
    fn grounding(&self, _step: &RunStep) -> Vec<Ground> {
        Vec::new()
    }

    /// Retry policy for failing attempts.
    fn retry(&self) -> RetryPolicy {
        RetryPolicy::default()
    }

    /// When the step must wait for a human's go-ahead before it runs (an irreversible command):
    /// what the human is asked to confirm.
    fn confirm_before(&self, _step: &RunStep) -> Option<String> {
        None
    }

    /// Reads what must be remembered before acting. Read-only.
    async fn prepare(&self, _cx: &StepCx) -> Result<Value, StepError> {
        Ok(Value::Null)
    }

    /// Does the step.
    async fn execute(&self, cx: &StepCx, intent: &Value) -> Result<Started, StepError>;

    /// After a crash during `execute`: did it happen?
    async fn verify(&self, cx: &StepCx, intent: &Value) -> Verified;

    /// Undoes a completed step (idempotent).
    async fn compensate(&self, _cx: &StepCx, _intent: &Value, _outcome: &Value) -> Result<Compensation, StepError> {
        Ok(Compensation::NothingToUndo)
    }
}

/// The executors by step type name.
#[derive(Clone, Default)]
pub struct Registry {
    map: HashMap<&'static str, Arc<dyn Executor>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&&str> = self.map.keys().collect();
        names.sort();
        f.debug_struct("Registry").field("types", &names).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the executor of its step type.
    pub fn register(&mut self, e: Arc<dyn Executor>) -> &mut Self {
        self.map.insert(e.step_type().name, e);
        self
    }

    /// The executor for a step type.
    pub fn get(&self, step_type: &str) -> Option<&Arc<dyn Executor>> {
        self.map.get(step_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_owners_write_them() {
        let d = |v: Value| parse_duration("timeout", &v);
        assert_eq!(d(Value::from(90)), Ok(Duration::from_secs(90)));
        assert_eq!(d(Value::from("1h30m")), Ok(Duration::from_secs(5400)));
        assert_eq!(d(Value::from("7d")), Ok(Duration::from_secs(7 * 86_400)));
        assert!(d(Value::from("soon")).unwrap_err().contains("`timeout` is \"soon\""));
        assert!(d(Value::from(0)).is_err());
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let p = RetryPolicy { attempts: 6, initial: Duration::from_millis(100), max: Duration::from_millis(500) };
        let waits: Vec<u128> = (1..=5).map(|a| p.backoff(a).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
    }
}
