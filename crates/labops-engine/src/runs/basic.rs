//! The two step types that need nothing outside labops:
//!
//! - `external-task`: waits for a human (buy a disk, install it, flip a BIOS switch). The step
//!   shows its `instructions` (and `procurement_details`); the human marks it done, with the
//!   fields its `form` asks for (`serial: the disk's serial number`), or failed, with a reason
//!   (`labops workflow complete-step`). With `timeout` (`7d`, `12h`), a step nobody completes in
//!   time fails and the run rolls back.
//! - `milestone`: does nothing; joins branches or names a phase.

use async_trait::async_trait;
use labops_core::workflow::{StepType, step_type};
use serde_json::{Value, json};

use super::executor::{Executor, RetryPolicy, RunStep, Started, StepCx, StepError, Verified, parse_duration};

/// `external-task`: a step a human does.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExternalTask;

#[async_trait]
impl Executor for ExternalTask {
    fn step_type(&self) -> &'static StepType {
        step_type("external-task").expect("registered type")
    }

    fn retry(&self) -> RetryPolicy {
        RetryPolicy::ONCE
    }

    fn check(&self, step: &RunStep) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(t) = step.fields.get("timeout") {
            problems.extend(parse_duration("timeout", t).err());
        }
        if let Some(f) = step.fields.get("form")
            && !f.is_object() {
                problems.push("`form` must map each field the human fills in to what it is (`serial: the disk's serial number`)".into());
            }
        problems
    }

    async fn execute(&self, cx: &StepCx, _intent: &Value) -> Result<Started, StepError> {
        let s = &cx.step;
        let instructions = s
            .str_field("instructions")
            .or_else(|| s.str_field("description"))
            .map(str::to_owned)
            .unwrap_or_else(|| format!("Do `{}` by hand", s.name));
        let detail = json!({
            "procurement_details": s.fields.get("procurement_details"),
            "form": s.fields.get("form"),
            "complete_with": format!("labops workflow complete-step {} {} [--data JSON | --failed REASON]", cx.run_id, s.name),
        });
        Ok(Started::WaitForHuman { instructions, detail })
    }

    async fn verify(&self, _cx: &StepCx, _intent: &Value) -> Verified {
        // Asking the human again is always safe.
        Verified::NotDone
    }
}

/// `milestone`: a step that does nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Milestone;

#[async_trait]
impl Executor for Milestone {
    fn step_type(&self) -> &'static StepType {
        step_type("milestone").expect("registered type")
    }

    async fn execute(&self, _cx: &StepCx, _intent: &Value) -> Result<Started, StepError> {
        Ok(Started::Done(Value::Null))
    }

    async fn verify(&self, _cx: &StepCx, _intent: &Value) -> Verified {
        Verified::Done(Value::Null)
    }
}
