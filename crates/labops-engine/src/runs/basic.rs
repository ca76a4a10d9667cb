//! The two step types that need nothing outside labops:
//!
//! - `external-task`: waits for a human (buy a disk, install it, flip a BIOS switch). The step
//!   shows its `instructions` (and `procurement_details`, `form`); the human marks it done, with
//!   form data, or failed, with a reason (`labops workflow complete-step`).
//! - `milestone`: does nothing; joins branches or names a phase.

use async_trait::async_trait;
use labops_core::workflow::{StepType, step_type};
use serde_json::{Value, json};

use super::executor::{Executor, RetryPolicy, Started, StepCx, StepError, Verified};

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
