//! The run driver with a recording executor standing in for a mutating step type: the change gate,
//! order and parallel branches, retries, human waits, rollback in reverse order, cancel, locks,
//! and recovery of a step interrupted mid-flight.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use labops_core::workflow::{self, Bindings, StepType};
use labops_engine::runs::basic::{ExternalTask, Milestone};
use labops_engine::runs::{Compensation, Driven, Engine, Executor, Registry, RetryPolicy, Started, StepCx, StepError, Verified};
use labops_core::change::{Actor, Change, ChangeState, plan_digest};
use labops_store::changes::ChangeUpdate;
use labops_store::{AuditEntry, Store};
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

/// A change for `plan`, waiting for approval; returns its number.
async fn change_for(e: &Engine, plan_json: &Value) -> i64 {
    let ann = Actor::Human("ann".into());
    let mut c = Change::new("chg-0", "test change", ann.clone(), 1);
    c.transition(ChangeState::Analysed, ann, "given", 1).unwrap();
    c.transition(ChangeState::AwaitingApproval, Actor::Engine, "ready", 1).unwrap();
    let audit = AuditEntry { at_ms: 1, actor: "ann".into(), action: "change_propose".into(), target: None, outcome: "ok".into(), detail: Value::Null };
    e.store().create_change(&c, "t", plan_json, &plan_digest(plan_json), &json!({}), "ann", 1, &audit).await.unwrap()
}

/// A human approves change `n` for the plan whose digest is `digest`.
async fn approve_change(e: &Engine, n: i64, digest: &str) {
    let mut c = e.store().change(n).await.unwrap().unwrap().change;
    c.approve(Actor::Human("ann".into()), digest, "ok", 2).unwrap();
    let audit = AuditEntry { at_ms: 2, actor: "ann".into(), action: "change_approve".into(), target: None, outcome: "ok".into(), detail: Value::Null };
    assert!(e.store().save_change(n, ChangeState::AwaitingApproval, &c, &ChangeUpdate::default(), 2, &audit).await.unwrap());
}

/// A run of `plan` tied to a change a human approved for it, released.
async fn approved(e: &Engine, plan: &workflow::Plan) -> i64 {
    let plan_json = serde_json::to_value(plan).unwrap();
    let n = change_for(e, &plan_json).await;
    approve_change(e, n, &plan_digest(&plan_json)).await;
    let id = e.submit_for_change("t", &plan_json, "t", None, n).await.unwrap();
    e.release(id, "t").await.unwrap();
    id
}

#[tokio::test]
async fn a_mutating_run_runs_only_for_a_change_approved_for_its_exact_plan() {
    let (_d, e, rec) = engine().await;
    let p = plan(&[pve("a", ""), pve("b", "a"), pve("c", "b")].concat());
    let plan_json = serde_json::to_value(&p).unwrap();

    // No change at all: it waits, and cannot be released.
    let orphan = e.submit(&p, "mallory").await.unwrap();
    let Driven::Waiting { reasons } = e.drive(orphan).await.unwrap() else { panic!() };
    assert!(reasons[0].contains("belongs to no change"), "{reasons:?}");
    let err = e.release(orphan, "mallory").await.unwrap_err().to_string();
    assert!(err.contains("belongs to no change"), "{err}");

    // A change not approved yet.
    let n = change_for(&e, &plan_json).await;
    let id = e.submit_for_change("t", &plan_json, "t", None, n).await.unwrap();
    let Driven::Waiting { reasons } = e.drive(id).await.unwrap() else { panic!() };
    assert!(reasons[0].contains(&format!("labops change approve chg-{n}")), "{reasons:?}");
    let err = e.release(id, "t").await.unwrap_err().to_string();
    assert!(err.contains("is awaiting_approval, not approved"), "{err}");

    // Approved, but for another plan: a run of this plan is refused.
    let other = serde_json::to_value(plan(&[pve("a", ""), pve("b", "a")].concat())).unwrap();
    approve_change(&e, n, &plan_digest(&other)).await;
    let err = e.release(id, "t").await.unwrap_err().to_string();
    assert!(err.contains("the plan is now") && err.contains("approve it again"), "{err}");
    assert!(rec.log().is_empty(), "nothing ran");
    let refusals: Vec<_> = e.store().audit_recent(50).await.unwrap().into_iter().filter(|a| a.outcome == "refused").collect();
    assert_eq!(refusals.len(), 3, "every refusal is audited: {refusals:?}");

    // Approved for exactly this plan: it runs, in order.
    let ok = approved(&e, &p).await;
    assert_eq!(e.drive(ok).await.unwrap(), Driven::Finished { outcome: "succeeded".into() });
    assert_eq!(rec.log(), ["do a", "do b", "do c"]);
    let st = e.status(ok).await.unwrap();
    assert_eq!(st.run.approved_by.as_deref(), Some("ann"), "the approver is the change's human");
    assert!(st.locks.is_empty(), "locks end with the run");
    assert_eq!(kinds(&e, ok).await.first().map(String::as_str), Some("created"));
}

#[tokio::test]
async fn the_driver_checks_the_approval_again_before_the_first_step() {
    let (_d, e, rec) = engine().await;
    let p = plan(&[pve("a", ""), pve("b", "a")].concat());
    let id = approved(&e, &p).await;
    // Between release and the first step, the run's plan is altered behind labops's back.
    let run = e.store().run(id).await.unwrap().unwrap();
    let mut tampered = run.plan.clone();
    tampered["stages"][0]["steps"][0]["fields"]["vmid"] = json!(666);
    let n = run.change_id.unwrap();
    // The store offers no way to edit a run's plan; a second run with the tampered plan stands in.
    let forged = e.submit_for_change("t", &tampered, "mallory", None, n).await.unwrap();
    assert!(e.release(forged, "mallory").await.is_err());
    // Forced into `running` anyway (a bug, or a hand-edited database): the driver refuses it.
    assert!(e.store().approve_run(forged, "mallory", 3).await.unwrap());
    assert_eq!(e.drive(forged).await.unwrap(), Driven::Finished { outcome: "failed".into() });
    assert!(rec.log().is_empty(), "no step of the forged run ran: {:?}", rec.log());
    assert!(kinds(&e, forged).await.contains(&"refused".to_string()));
    let report = e.status(forged).await.unwrap().run.report.unwrap();
    assert!(report["reason"].as_str().unwrap().contains("approve it again"), "{report}");
    // The genuine run still runs.
    assert_eq!(e.drive(id).await.unwrap(), Driven::Finished { outcome: "succeeded".into() });
}

#[tokio::test]
async fn a_failure_after_retries_rolls_back_completed_steps_in_reverse() {
    let (_d, e, rec) = engine().await;
    *rec.fail.lock().unwrap() = Some("d".into());
    *rec.flaky.lock().unwrap() = 1;
    let id = approved(&e, &plan(&[pve("a", ""), pve("b", "a"), pve("c", "b"), pve("d", "c"), pve("e", "d")].concat())).await;
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
    let id = approved(&e, &plan(&steps)).await;
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
    let id = approved(&e, &plan(&steps)).await;
    assert!(matches!(e.drive(id).await.unwrap(), Driven::Waiting { .. }));
    e.complete_step(id, "check", Err("the disk is DOA".into()), "ann").await.unwrap();
    assert_eq!(e.drive(id).await.unwrap(), Driven::Finished { outcome: "rolled_back".into() });
    assert_eq!(rec.log(), ["do prep", "undo prep"]);
    assert!(e.status(id).await.unwrap().run.report.unwrap()["reason"].as_str().unwrap().contains("the disk is DOA"));

    let id = approved(&e, &plan(&steps)).await;
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
    let id = approved(&e, &plan(&steps)).await;
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
    let one = approved(&e, &plan(&steps)).await;
    let two = approved(&e, &plan(&pve("other", ""))).await;
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
    let id = approved(&e, &plan(&steps)).await;
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
    let id = approved(&e, &plan(&[pve("a", ""), pve("b", "a")].concat())).await;
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
    let id = approved(&e, &plan(&[pve("shell-cmd", ""), pve("after", "shell-cmd")].concat())).await;
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
    let id = approved(&e, &plan(&[pve("prep", ""), pve("danger-zpool-add", "prep")].concat())).await;
    let Driven::Waiting { reasons } = e.drive(id).await.unwrap() else { panic!() };
    assert!(reasons[0].contains("cannot be undone") && reasons[0].contains(&format!("labops workflow confirm {id} danger-zpool-add")), "{reasons:?}");
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
