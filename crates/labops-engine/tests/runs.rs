//! The run driver with a recording executor standing in for a mutating step type: approval gate,
//! order and parallel branches, retries, human waits, rollback in reverse order, cancel, locks,
//! and recovery of a step interrupted mid-flight.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use labops_core::workflow::{self, Bindings, StepType};
use labops_engine::runs::basic::{ExternalTask, Milestone};
use labops_engine::runs::{Compensation, Driven, Engine, Executor, Registry, RetryPolicy, Started, StepCx, StepError, Verified};
use labops_store::Store;
use serde_json::{Value, json};

/// Plays `proxmox-task`: records every call; fails a step named in `fail` (transiently the
/// first `flaky` times).
#[derive(Default)]
struct Recorder {
    log: Mutex<Vec<String>>,
    fail: Mutex<Option<String>>,
    flaky: Mutex<u32>,
    done: Mutex<Vec<String>>,
}

impl Recorder {
    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

/// The executor handle the registry owns; the test keeps the other.
struct Rec(Arc<Recorder>);

impl std::ops::Deref for Rec {
    type Target = Recorder;
    fn deref(&self) -> &Recorder {
        &self.0
    }
}

#[async_trait]
impl Executor for Rec {
    fn step_type(&self) -> &'static StepType {
        workflow::step_type("proxmox-task").unwrap()
    }
    fn targets(&self, step: &labops_engine::runs::RunStep) -> Vec<String> {
        step.fields.get("vmid").map(|v| vec![format!("vm/{v}")]).unwrap_or_default()
    }
    fn confirm_before(&self, step: &labops_engine::runs::RunStep) -> Option<String> {
        step.name.starts_with("danger").then(|| format!("`{}` cannot be undone", step.name))
    }
    fn retry(&self) -> RetryPolicy {
        RetryPolicy { attempts: 3, initial: std::time::Duration::from_millis(5), max: std::time::Duration::from_millis(20) }
    }
    async fn prepare(&self, cx: &StepCx) -> Result<Value, StepError> {
        Ok(json!({"before": cx.step.name}))
    }
    async fn execute(&self, cx: &StepCx, intent: &Value) -> Result<Started, StepError> {
        assert_eq!(intent["before"], cx.step.name, "the intent stored before acting reaches execute");
        self.log.lock().unwrap().push(format!("do {}", cx.step.name));
        if self.fail.lock().unwrap().as_deref() == Some(cx.step.name.as_str()) {
            let mut flaky = self.flaky.lock().unwrap();
            if *flaky > 0 {
                *flaky -= 1;
                return Err(StepError::transient("busy"));
            }
            return Err(StepError::fatal(format!("{} broke", cx.step.name)));
        }
        self.done.lock().unwrap().push(cx.step.name.clone());
        Ok(Started::Done(json!({"did": cx.step.name})))
    }
    async fn verify(&self, cx: &StepCx, _intent: &Value) -> Verified {
        if cx.step.name.starts_with("shell") {
            return Verified::Unknown(format!("check whether `{}` ran", cx.step.name));
        }
        if self.done.lock().unwrap().contains(&cx.step.name) {
            Verified::Done(json!({"did": cx.step.name}))
        } else {
            Verified::NotDone
        }
    }
    async fn compensate(&self, cx: &StepCx, _intent: &Value, outcome: &Value) -> Result<Compensation, StepError> {
        if outcome.is_null() {
            // The failed step: it did nothing here.
            self.log.lock().unwrap().push(format!("check {}", cx.step.name));
            return Ok(Compensation::NothingToUndo);
        }
        assert_eq!(outcome["did"], cx.step.name);
        self.log.lock().unwrap().push(format!("undo {}", cx.step.name));
        Ok(Compensation::Undone(format!("undid {}", cx.step.name)))
    }
}

fn plan(steps: &str) -> workflow::Plan {
    let text = format!("apiVersion: kro.run/v1alpha1\nkind: ResourceGraphDefinition\nmetadata:\n  name: t\nspec:\n  resources:\n{steps}");
    let (w, report) = workflow::check(&text);
    assert!(report.is_valid(), "{:?}", report.errors);
    workflow::plan(&w.unwrap(), &Bindings::new()).unwrap()
}

fn pve(name: &str, deps: &str) -> String {
    format!("    - name: {name}\n      type: proxmox-task\n      dependencies: [{deps}]\n      vmid: 100\n      node: pve1\n      actions: [start]\n")
}

async fn engine() -> (tempfile::TempDir, Engine, Arc<Recorder>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.db")).await.unwrap();
    let rec = Arc::new(Recorder::default());
    let mut reg = Registry::new();
    reg.register(Arc::new(Rec(rec.clone()))).register(Arc::new(ExternalTask)).register(Arc::new(Milestone));
    (dir, Engine::new(store, reg, 8, 4), rec)
}

async fn kinds(e: &Engine, id: i64) -> Vec<String> {
    e.store().run_events(id, 0, 1000).await.unwrap().into_iter().map(|e| format!("{}{}", e.kind, e.step.map(|s| format!(":{s}")).unwrap_or_default())).collect()
}

#[tokio::test]
async fn a_mutating_run_waits_for_a_human_approval_then_runs_in_order() {
    let (_d, e, rec) = engine().await;
    let id = e.submit(&plan(&[pve("a", ""), pve("b", "a"), pve("c", "b")].concat()), "ann").await.unwrap();
    let Driven::Waiting { reasons } = e.drive(id).await.unwrap() else { panic!() };
    assert!(reasons[0].contains(&format!("labops workflow approve {id}")), "{reasons:?}");
    assert!(rec.log().is_empty(), "nothing runs before approval");
    assert!(e.approve(id, " ").await.is_err(), "an approval names its approver");
    e.approve(id, "ann").await.unwrap();
    assert!(e.approve(id, "ann").await.unwrap_err().to_string().contains("not awaiting approval"));
    assert_eq!(e.drive(id).await.unwrap(), Driven::Finished { outcome: "succeeded".into() });
    assert_eq!(rec.log(), ["do a", "do b", "do c"]);
    let st = e.status(id).await.unwrap();
    assert_eq!(st.run.approved_by.as_deref(), Some("ann"));
    assert!(st.locks.is_empty(), "locks end with the run");
    assert_eq!(kinds(&e, id).await.first().map(String::as_str), Some("created"));
}

#[tokio::test]
async fn a_failure_after_retries_rolls_back_completed_steps_in_reverse() {
    let (_d, e, rec) = engine().await;
    *rec.fail.lock().unwrap() = Some("d".into());
    *rec.flaky.lock().unwrap() = 1;
    let id = e.submit(&plan(&[pve("a", ""), pve("b", "a"), pve("c", "b"), pve("d", "c"), pve("e", "d")].concat()), "t").await.unwrap();
    e.approve(id, "ann").await.unwrap();
    assert_eq!(e.drive(id).await.unwrap(), Driven::Finished { outcome: "rolled_back".into() });
    assert_eq!(
        rec.log(),
        ["do a", "do b", "do c", "do d", "do d", "check d", "undo c", "undo b", "undo a"],
        "one transient failure retried, then a fatal one; the failed step is compensated first"
    );
    let st = e.status(id).await.unwrap();
    let report = st.run.report.unwrap();
    assert_eq!(report["failed_step"], "d");
    assert_eq!(report["undone"].as_array().unwrap().len(), 3);
    assert_eq!(report["not_run"], json!(["e"]));
    let k = kinds(&e, id).await;
    assert_eq!(k.iter().filter(|k| *k == "step_retry:d").count(), 1, "{k:?}");
}

#[tokio::test]
async fn a_human_step_waits_and_its_answer_carries_the_run() {
    let (_d, e, rec) = engine().await;
    let steps = "    - name: buy-disk\n      type: external-task\n      instructions: Buy a 2TB NVMe\n      waitForHuman: true\n      form: {serial: the disk's serial number}\n".to_string() + &pve("use-disk", "buy-disk");
    let id = e.submit(&plan(&steps), "t").await.unwrap();
    e.approve(id, "ann").await.unwrap();
    let Driven::Waiting { reasons } = e.drive(id).await.unwrap() else { panic!() };
    assert!(reasons[0].contains("Buy a 2TB NVMe") && reasons[0].contains("complete-step"), "{reasons:?}");
    assert!(e.complete_step(id, "use-disk", Ok(json!({})), "ann").await.unwrap_err().to_string().contains("not waiting"));
    assert!(e.complete_step(id, "nope", Ok(json!({})), "ann").await.unwrap_err().to_string().contains("its steps: buy-disk, use-disk"));
    let err = e.complete_step(id, "buy-disk", Ok(json!({"slot": 2})), "ann").await.unwrap_err().to_string();
    assert!(err.contains("asks for serial (the disk's serial number)"), "{err}");
    e.complete_step(id, "buy-disk", Ok(json!({"serial": "S4EV"})), "ann").await.unwrap();
    assert_eq!(e.drive(id).await.unwrap(), Driven::Finished { outcome: "succeeded".into() });
    assert_eq!(rec.log(), ["do use-disk"]);
    assert_eq!(e.status(id).await.unwrap().steps[0].outcome.as_ref().unwrap()["data"]["serial"], "S4EV");
}

#[tokio::test]
async fn a_human_failing_a_step_rolls_back_and_cancel_undoes_too() {
    let (_d, e, rec) = engine().await;
    let steps = pve("prep", "") + "    - name: check\n      type: external-task\n      dependencies: [prep]\n";
    let id = e.submit(&plan(&steps), "t").await.unwrap();
    e.approve(id, "ann").await.unwrap();
    assert!(matches!(e.drive(id).await.unwrap(), Driven::Waiting { .. }));
    e.complete_step(id, "check", Err("the disk is DOA".into()), "ann").await.unwrap();
    assert_eq!(e.drive(id).await.unwrap(), Driven::Finished { outcome: "rolled_back".into() });
    assert_eq!(rec.log(), ["do prep", "undo prep"]);
    assert!(e.status(id).await.unwrap().run.report.unwrap()["reason"].as_str().unwrap().contains("the disk is DOA"));

    let id = e.submit(&plan(&steps), "t").await.unwrap();
    e.approve(id, "ann").await.unwrap();
    e.drive(id).await.unwrap();
    e.cancel(id, "bob").await.unwrap();
    assert_eq!(e.drive(id).await.unwrap(), Driven::Finished { outcome: "cancelled".into() });
    assert_eq!(rec.log()[2..], ["do prep", "undo prep"]);
    assert!(e.cancel(id, "bob").await.is_err(), "an ended run cannot be cancelled");
}

#[tokio::test]
async fn a_human_step_nobody_completes_in_time_fails_the_run() {
    let (_d, e, rec) = engine().await;
    let steps = pve("prep", "") + "    - name: check\n      type: external-task\n      dependencies: [prep]\n      timeout: 200ms\n";
    let id = e.submit(&plan(&steps), "t").await.unwrap();
    e.approve(id, "ann").await.unwrap();
    assert!(matches!(e.drive(id).await.unwrap(), Driven::Waiting { .. }));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(e.drive(id).await.unwrap(), Driven::Finished { outcome: "rolled_back".into() });
    assert_eq!(rec.log(), ["do prep", "undo prep"]);
    let report = e.status(id).await.unwrap().run.report.unwrap();
    assert!(report["reason"].as_str().unwrap().contains("within its timeout (\"200ms\")"), "{report}");
    let bad = pve("prep", "") + "    - name: check\n      type: external-task\n      dependencies: [prep]\n      timeout: soon\n";
    assert!(e.submit(&plan(&bad), "t").await.unwrap_err().to_string().contains("`timeout` is \"soon\""));
}

#[tokio::test]
async fn two_runs_on_the_same_vm_do_not_overlap() {
    let (_d, e, _rec) = engine().await;
    let steps = pve("start", "") + "    - name: wait\n      type: external-task\n      dependencies: [start]\n";
    let one = e.submit(&plan(&steps), "t").await.unwrap();
    let two = e.submit(&plan(&pve("other", "")), "t").await.unwrap();
    e.approve(one, "ann").await.unwrap();
    e.approve(two, "ann").await.unwrap();
    assert!(matches!(e.drive(one).await.unwrap(), Driven::Waiting { .. }));
    let Driven::Waiting { reasons } = e.drive(two).await.unwrap() else { panic!() };
    assert_eq!(reasons, [format!("lock: vm/100 is held by run {one}")]);
    e.complete_step(one, "wait", Ok(Value::Null), "ann").await.unwrap();
    assert_eq!(e.drive(one).await.unwrap(), Driven::Finished { outcome: "succeeded".into() });
    assert_eq!(e.drive(two).await.unwrap(), Driven::Finished { outcome: "succeeded".into() });
}

#[tokio::test]
async fn independent_branches_run_and_a_join_waits_for_both() {
    let (_d, e, rec) = engine().await;
    let steps = [
        "    - name: root\n      type: milestone\n".to_string(),
        pve("left", "root"),
        pve("right", "root"),
        "    - name: join\n      type: milestone\n      dependencies: [left, right]\n".into(),
    ]
    .concat();
    let id = e.submit(&plan(&steps), "t").await.unwrap();
    e.approve(id, "ann").await.unwrap();
    assert_eq!(e.drive(id).await.unwrap(), Driven::Finished { outcome: "succeeded".into() });
    let mut log = rec.log();
    log.sort();
    assert_eq!(log, ["do left", "do right"]);
    let k = kinds(&e, id).await;
    let pos = |s: &str| k.iter().position(|x| x == s).unwrap();
    assert!(pos("step_succeeded:left") < pos("step_started:join") && pos("step_succeeded:right") < pos("step_started:join"));
}

#[tokio::test]
async fn a_step_interrupted_mid_flight_is_verified_before_it_is_redone() {
    let (_d, e, rec) = engine().await;
    let id = e.submit(&plan(&[pve("a", ""), pve("b", "a")].concat()), "t").await.unwrap();
    e.approve(id, "ann").await.unwrap();
    // As a crash leaves it: `a` recorded running; it did happen (the target knows), `b` did not.
    rec.done.lock().unwrap().push("a".into());
    let store = e.store();
    let mut a = store.run_steps(id).await.unwrap().remove(0);
    a.state = "running".into();
    a.attempt = 1;
    store.save_step(id, &a, 1, &labops_store::runs::NewEvent::step("a", "step_started", Value::Null)).await.unwrap();
    assert_eq!(e.drive(id).await.unwrap(), Driven::Finished { outcome: "succeeded".into() });
    assert_eq!(rec.log(), ["do b"], "a is verified done, not run twice");
}

#[tokio::test]
async fn an_interrupted_step_that_cannot_be_checked_waits_for_a_human_and_is_not_redone() {
    let (_d, e, rec) = engine().await;
    let id = e.submit(&plan(&[pve("shell-cmd", ""), pve("after", "shell-cmd")].concat()), "t").await.unwrap();
    e.approve(id, "ann").await.unwrap();
    let store = e.store();
    let mut s = store.run_steps(id).await.unwrap().remove(0);
    s.state = "running".into();
    s.attempt = 1;
    store.save_step(id, &s, 1, &labops_store::runs::NewEvent::step("shell-cmd", "step_started", Value::Null)).await.unwrap();
    let Driven::Waiting { reasons } = e.drive(id).await.unwrap() else { panic!() };
    assert!(reasons[0].contains("cannot be checked automatically: check whether `shell-cmd` ran"), "{reasons:?}");
    assert!(rec.log().is_empty(), "at most once: nothing is redone");
    // The human checked: it ran. The run goes on from there.
    e.complete_step(id, "shell-cmd", Ok(json!({"checked": "it ran"})), "ann").await.unwrap();
    assert_eq!(e.drive(id).await.unwrap(), Driven::Finished { outcome: "succeeded".into() });
    assert_eq!(rec.log(), ["do after"]);
}

#[tokio::test]
async fn an_irreversible_step_waits_for_its_own_go_ahead() {
    let (_d, e, rec) = engine().await;
    let id = e.submit(&plan(&[pve("prep", ""), pve("danger-zpool-add", "prep")].concat()), "t").await.unwrap();
    e.approve(id, "ann").await.unwrap();
    let Driven::Waiting { reasons } = e.drive(id).await.unwrap() else { panic!() };
    assert!(reasons[0].contains("cannot be undone") && reasons[0].contains(&format!("approve {id} --step danger-zpool-add")), "{reasons:?}");
    assert_eq!(rec.log(), ["do prep"], "the irreversible step has not run");
    assert!(e.confirm_step(id, "prep", "ann").await.is_err(), "only a step that waits for it can be confirmed");
    e.confirm_step(id, "danger-zpool-add", "ann").await.unwrap();
    assert_eq!(e.drive(id).await.unwrap(), Driven::Finished { outcome: "succeeded".into() });
    assert_eq!(rec.log(), ["do prep", "do danger-zpool-add"]);
    assert!(kinds(&e, id).await.contains(&"step_confirmed:danger-zpool-add".to_string()));
}

#[tokio::test]
async fn steps_that_cannot_run_are_refused_before_anything_happens() {
    let (_d, e, _rec) = engine().await;
    let steps = "    - name: issue\n      type: github-integration\n    - name: check\n      type: git-commit\n      files_to_update: [a.md]\n";
    let err = e.submit(&plan(steps), "t").await.unwrap_err().to_string();
    assert!(err.contains("step `issue` (github-integration) is not available yet: needs the change workflow"), "{err}");
    assert!(err.contains("step `check` (git-commit) has no executor here"), "{err}");
    assert!(e.store().runs(false, 10).await.unwrap().is_empty(), "no run is stored");
}
