//! The change service over a recording executor: a change whose result the lab does not show
//! after its run is rolled back (issue commented, left open, nothing committed); a change cannot
//! close without its documentation commit.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use labops_core::change::{Actor, Analysis, ChangeState, RiskLevel, Roi};
use labops_core::inventory::Inventory;
use labops_core::workflow::{self, Bindings, StepType};
use labops_engine::changes::forge::LocalForge;
use labops_engine::changes::{Advanced, ChangeFail, Changes, LiveLab, ProposalInput};
use labops_engine::runs::{Compensation, Engine, Executor, Registry, RunStep, Started, StepCx, StepError, Verified};
use labops_store::Store;
use serde_json::{Value, json};

/// Plays `proxmox-task`; `verify` says the result vanished when `gone` is set.
#[derive(Default)]
struct Rec {
    log: Mutex<Vec<String>>,
    gone: Mutex<bool>,
}

struct Exec(Arc<Rec>);

#[async_trait]
impl Executor for Exec {
    fn step_type(&self) -> &'static StepType {
        workflow::step_type("proxmox-task").unwrap()
    }
    fn targets(&self, step: &RunStep) -> Vec<String> {
        step.fields.get("vmid").map(|v| vec![format!("vm/{v}")]).unwrap_or_default()
    }
    async fn prepare(&self, _cx: &StepCx) -> Result<Value, StepError> {
        Ok(json!({}))
    }
    async fn execute(&self, cx: &StepCx, _intent: &Value) -> Result<Started, StepError> {
        self.0.log.lock().unwrap().push(format!("do {}", cx.step.name));
        Ok(Started::Done(json!({"did": cx.step.name})))
    }
    async fn verify(&self, _cx: &StepCx, _intent: &Value) -> Verified {
        if *self.0.gone.lock().unwrap() { Verified::NotDone } else { Verified::Done(Value::Null) }
    }
    async fn compensate(&self, cx: &StepCx, _intent: &Value, _outcome: &Value) -> Result<Compensation, StepError> {
        self.0.log.lock().unwrap().push(format!("undo {}", cx.step.name));
        Ok(Compensation::Undone(format!("undid {}", cx.step.name)))
    }
}

struct Fixed;

#[async_trait]
impl LiveLab for Fixed {
    fn name(&self) -> String {
        "test".into()
    }
    async fn inventory(&self) -> Result<Arc<Inventory>, String> {
        Ok(Arc::new(Inventory::default()))
    }
}

fn plan() -> workflow::Plan {
    let text = "apiVersion: kro.run/v1alpha1\nkind: ResourceGraphDefinition\nmetadata:\n  name: t\nspec:\n  resources:\n    - name: a\n      type: proxmox-task\n      vmid: 100\n      node: pve1\n      actions: [start]\n    - name: b\n      type: proxmox-task\n      dependencies: [a]\n      vmid: 100\n      node: pve1\n      actions: [stop]\n";
    let (w, report) = workflow::check(text);
    assert!(report.is_valid(), "{:?}", report.errors);
    workflow::plan(&w.unwrap(), &Bindings::new()).unwrap()
}

fn proposal() -> ProposalInput {
    ProposalInput {
        title: "restart VM 100".into(),
        analysis: Analysis {
            what: "start and stop VM 100".into(),
            why: "test".into(),
            risk: RiskLevel::Low,
            risk_notes: String::new(),
            blast_radius: vec![],
            rollback_plan: vec![],
            manual_steps: vec![],
        },
        roi: Roi { time_saved_hours_per_month: 1.0, cost_once: 0.0, cost_monthly: 0.0, learning_value: 1, complexity: 1, risk: 1, basis: String::new() },
        area: None,
    }
}

async fn service() -> (tempfile::TempDir, Changes, Arc<Rec>, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.db")).await.unwrap();
    let rec = Arc::new(Rec::default());
    let mut reg = Registry::new();
    reg.register(Arc::new(Exec(rec.clone())));
    let engine = Engine::new(store.clone(), reg, 4, 2);
    let changes = Changes::new(engine, Arc::new(LocalForge::new(store.clone(), None)), None, Arc::new(Fixed));
    (dir, changes, rec, store)
}

#[tokio::test]
async fn a_result_the_lab_does_not_show_is_rolled_back_and_the_issue_stays_open() {
    let (_d, changes, rec, store) = service().await;
    let c = changes.propose(&plan(), Value::Null, proposal(), Actor::Ai("local/qwen".into()), "test").await.unwrap();
    assert_eq!(c.change.state, ChangeState::AwaitingApproval);
    assert_eq!(changes.advance(&c.change.id).await.unwrap(), Advanced::Waiting { reasons: vec![format!("approval: a human approves it with `labops change approve {}`", c.change.id)] });
    assert!(rec.log.lock().unwrap().is_empty(), "nothing runs before approval");
    changes.approve(&c.change.id, "ann", &c.plan_digest, "test").await.unwrap();
    // The run succeeds, then the lab no longer shows its result.
    *rec.gone.lock().unwrap() = true;
    assert_eq!(changes.advance(&c.change.id).await.unwrap(), Advanced::Ended { state: ChangeState::RolledBack });
    assert_eq!(*rec.log.lock().unwrap(), ["do a", "do b", "undo b", "undo a"]);
    let c = changes.get(&c.change.id).await.unwrap();
    let last = c.change.history.last().unwrap();
    assert!(last.reason.contains("validation failed") && last.reason.contains("the lab does not show its result"), "{}", last.reason);
    assert!(c.commit.is_none());
    let issue = store.forge_issue(c.change.issue.unwrap()).await.unwrap().unwrap();
    assert_eq!(issue.state, "open");
    assert!(issue.comments.iter().any(|m| m.body.contains("Validation failed")), "{:?}", issue.comments);
    assert_eq!(store.run(c.run_id.unwrap()).await.unwrap().unwrap().state, "rolled_back");
}

#[tokio::test]
async fn a_change_cannot_close_without_its_documentation_commit() {
    let (_d, changes, _rec, _store) = service().await;
    let c = changes.propose(&plan(), Value::Null, proposal(), Actor::Human("ann".into()), "test").await.unwrap();
    // An approval names its human approver.
    let err = changes.approve(&c.change.id, "", &c.plan_digest, "test").await.unwrap_err();
    assert!(matches!(err, ChangeFail::Refused(_)), "{err}");
    changes.approve(&c.change.id, "ann", &c.plan_digest, "test").await.unwrap();
    let err = changes.advance(&c.change.id).await.unwrap_err().to_string();
    assert!(err.contains("cannot close without its documentation commit") && err.contains("[gitops]"), "{err}");
    let c = changes.get(&c.change.id).await.unwrap();
    assert_eq!(c.change.state, ChangeState::Documenting, "validated, waiting for a repository to document into");
    // Advancing again is safe and says the same.
    assert!(changes.advance(&c.change.id).await.is_err());
    assert_eq!(changes.get(&c.change.id).await.unwrap().change.state, ChangeState::Documenting);
}
