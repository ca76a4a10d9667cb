//! The `proxmox-task` executor against a real fakepve (the Proxmox VE API simulator): each test
//! drives the executor through the `Executor` trait the way the run driver does, and checks what
//! the simulated cluster holds afterwards through the Proxmox API.
//!
//! Needs fakepve for `LABOPS_TEST_PYTHON` (default python3): `pip install 'fakepve[crypto]'`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use labops_core::workflow::{StepType, step_type};
use labops_engine::runs::proxmox::ProxmoxTask;
use labops_engine::runs::{Compensation, Executor, RunStep, Started, StepCx, StepError, Verified};
use labops_integrations::proxmox::{Auth, CLUSTER_RESOURCES, Client, LXC, QEMU, Settings};
use labops_integrations::{Secret, TlsTrust};
use labops_testkit::fakepve::FakePve;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// A fakepve serving the reference homelab, and the executor and client pointed at it.
struct Lab {
    pve: FakePve,
    client: Arc<Client>,
    exec: ProxmoxTask,
}

impl Lab {
    fn start() -> Self {
        let pve = FakePve::reference();
        let client = Arc::new(
            Client::new(Settings {
                url: pve.url.clone(),
                auth: Auth::Password { user: "root@pam".into(), password: Secret::new("secret") },
                tls: TlsTrust::Ca(std::fs::read(&pve.cafile).unwrap()),
                timeout: Duration::from_secs(5),
                concurrency: 4,
            })
            .unwrap(),
        );
        let exec = Self::executor(&client);
        Self { pve, client, exec }
    }

    /// A fresh executor, as after a restart of labops.
    fn executor(client: &Arc<Client>) -> ProxmoxTask {
        ProxmoxTask::new(client.clone(), None)
            .with_poll_interval(Duration::from_millis(20))
            .with_task_timeout(Duration::from_secs(20))
    }

    /// The guest with this VMID as `/cluster/resources` shows it.
    async fn guest(&self, vmid: u64) -> Option<Value> {
        let all = self.client.call(&CLUSTER_RESOURCES, &[]).await.unwrap();
        all.as_array().unwrap().iter().find(|r| r["vmid"].as_u64() == Some(vmid)).cloned()
    }

    /// A VM's config with pending changes applied.
    async fn config(&self, node: &str, vmid: &str) -> BTreeMap<String, String> {
        pending(self.client.call(&QEMU.pending, &[("node", node), ("vmid", vmid)]).await.unwrap())
    }

    async fn power(&self, node: &str, vmid: &str) -> String {
        let s = self.client.call(&QEMU.status, &[("node", node), ("vmid", vmid)]).await.unwrap();
        s["status"].as_str().unwrap().to_string()
    }

    async fn snapshots(&self, node: &str, vmid: &str) -> Vec<String> {
        let list = self.client.call(&QEMU.snapshots, &[("node", node), ("vmid", vmid)]).await.unwrap();
        list.as_array().unwrap().iter().filter_map(|s| s["name"].as_str()).filter(|n| *n != "current").map(String::from).collect()
    }
}

fn pending(list: Value) -> BTreeMap<String, String> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    list.as_array()
        .unwrap()
        .iter()
        .filter(|i| i.get("delete").is_none())
        .filter_map(|i| Some((i["key"].as_str()?.to_string(), text(i.get("pending").or(i.get("value"))?))))
        .collect()
}

fn step(name: &str, fields: Value) -> RunStep {
    RunStep {
        name: name.into(),
        step_type: "proxmox-task".into(),
        depends_on: vec![],
        waits_for_human: false,
        mutates: true,
        fields: serde_json::from_value(fields).unwrap(),
    }
}

fn cx(run_id: i64, step: &RunStep) -> (StepCx, mpsc::UnboundedReceiver<(String, Value)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (StepCx::new(run_id, step.clone(), 1, tx), rx)
}

fn done(started: Started) -> Value {
    match started {
        Started::Done(outcome) => outcome,
        other => panic!("expected Done, got {other:?}"),
    }
}

fn new_vm_step() -> RunStep {
    step(
        "test-vm",
        json!({
            "node": "pve",
            "vmid": "9100",
            "guest": {"name": "labops-test", "memory": 512, "cores": 1, "scsi0": "local-lvm:1",
                      "net0": "virtio,bridge=vmbr0", "description": "scratch VM"},
            "actions": ["create", "start", "snapshot", {"action": "config", "config": {"memory": 1024, "onboot": 1, "tags": "labops"}}],
        }),
    )
}

#[tokio::test]
async fn a_new_vm_is_created_started_snapshotted_and_configured_then_destroyed() {
    let lab = Lab::start();
    let s = new_vm_step();
    assert_eq!(lab.exec.check(&s), Vec::<String>::new());
    assert_eq!(lab.exec.targets(&s), ["vm/9100"]);
    let (cx, mut progress) = cx(7, &s);

    let intent = lab.exec.prepare(&cx).await.unwrap();
    assert_eq!(lab.exec.verify(&cx, &intent).await, Verified::NotDone, "nothing happened yet");
    assert!(lab.guest(9100).await.is_none(), "prepare changed nothing");

    let outcome = done(lab.exec.execute(&cx, &intent).await.unwrap());
    let actions = outcome["actions"].as_array().unwrap();
    assert_eq!(actions.iter().map(|a| a["action"].as_str().unwrap()).collect::<Vec<_>>(), ["create", "start", "snapshot", "config"]);
    assert!(actions[..3].iter().all(|a| a["upid"].as_str().is_some_and(|u| u.starts_with("UPID:pve:"))), "{outcome}");
    assert!(actions.iter().all(|a| a["already"] == false), "{outcome}");
    assert_eq!(actions[2]["snapname"], "run-7-test-vm", "the default snapshot name comes from the idempotency key");

    // What Proxmox holds now.
    let vm = lab.guest(9100).await.expect("VM 9100 exists");
    assert_eq!((vm["node"].as_str(), vm["name"].as_str()), (Some("pve"), Some("labops-test")));
    assert_eq!(lab.power("pve", "9100").await, "running");
    assert_eq!(lab.snapshots("pve", "9100").await, ["run-7-test-vm"]);
    let config = lab.config("pve", "9100").await;
    assert_eq!(config["memory"], "1024");
    assert_eq!(config["onboot"], "1");
    assert_eq!(config["tags"], "labops");
    assert!(config["description"].starts_with("scratch VM") && config["description"].ends_with("created by [labops run-7/test-vm]"));

    // Progress went to the run's event stream, step by step, with fractions.
    let mut events = Vec::new();
    while let Ok(e) = progress.try_recv() {
        events.push(e);
    }
    assert!(events.iter().all(|(step, _)| step == "test-vm"));
    assert!(events.iter().any(|(_, d)| d["message"].as_str().is_some_and(|m| m.contains("task UPID:"))), "{events:?}");
    assert_eq!(events.last().unwrap().1["fraction"], 1.0);

    // After a crash during execute: it happened.
    match lab.exec.verify(&cx, &intent).await {
        Verified::Done(v) => assert_eq!(v["actions"].as_array().unwrap().len(), 4),
        other => panic!("expected Done, got {other:?}"),
    }
    // Running it again does nothing twice.
    let again = done(lab.exec.execute(&cx, &intent).await.unwrap());
    assert!(again["actions"].as_array().unwrap().iter().all(|a| a["already"] == true), "{again}");
    assert_eq!(lab.snapshots("pve", "9100").await.len(), 1);

    // Rollback: the VM was made by this step, so undoing `create` (stop, destroy) undoes it all.
    let c = lab.exec.compensate(&cx, &intent, &outcome).await.unwrap();
    assert_eq!(c, Compensation::Undone("stopped and destroyed VM 9100 on pve".into()));
    assert!(lab.guest(9100).await.is_none(), "VM 9100 is gone");
    assert!(lab.pve.state()["guests"].as_array().unwrap().iter().all(|g| g["vmid"] != 9100));
    // A second call (after a crash during compensation) finds nothing left to do.
    assert_eq!(lab.exec.compensate(&cx, &intent, &outcome).await.unwrap(), Compensation::NothingToUndo);
}

#[tokio::test]
async fn changes_to_an_existing_vm_are_undone_in_reverse_order() {
    let lab = Lab::start();
    // k3s-vm-pve: VM 107 on pve, running.
    let before = lab.config("pve", "107").await;
    assert_eq!(lab.power("pve", "107").await, "running");
    let s = step(
        "maintenance",
        json!({
            "node": "pve", "vmid": 107,
            "actions": ["stop", {"action": "snapshot", "snapname": "pre-change"},
                        {"action": "config", "config": {"memory": 4096, "cores": 2, "name": null}}, "start"],
        }),
    );
    let (cx, _progress) = cx(8, &s);
    let intent = lab.exec.prepare(&cx).await.unwrap();
    let outcome = done(lab.exec.execute(&cx, &intent).await.unwrap());

    let changed = lab.config("pve", "107").await;
    assert_eq!((changed["memory"].as_str(), changed["cores"].as_str()), ("4096", "2"));
    assert!(!changed.contains_key("name"), "null deletes a key");
    assert_eq!(lab.snapshots("pve", "107").await, ["pre-change"]);
    assert_eq!(lab.power("pve", "107").await, "running");
    assert!(matches!(lab.exec.verify(&cx, &intent).await, Verified::Done(_)));

    let Compensation::Undone(what) = lab.exec.compensate(&cx, &intent, &outcome).await.unwrap() else {
        panic!("expected Undone");
    };
    // Reverse order: undo start, then config, then snapshot, then stop.
    let order = ["stopped VM 107 on pve again", "restored cores, memory, name on VM 107", "deleted snapshot pre-change", "started VM 107 on pve again"];
    let at: Vec<usize> = order.iter().map(|p| what.find(p).unwrap_or_else(|| panic!("{p:?} not in {what:?}"))).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{what}");

    assert_eq!(lab.config("pve", "107").await, before, "the config is what it was");
    assert!(lab.snapshots("pve", "107").await.is_empty());
    assert_eq!(lab.power("pve", "107").await, "running");
    assert_eq!(lab.exec.compensate(&cx, &intent, &outcome).await.unwrap(), Compensation::NothingToUndo);
}

#[tokio::test]
async fn a_step_interrupted_halfway_is_finished_by_a_redo_after_a_restart() {
    let lab = Lab::start();
    let s = step("half", json!({"node": "pve", "vmid": 9200, "guest": {"name": "half", "memory": 256}, "actions": ["create", "start"]}));
    let (cx, _progress) = cx(9, &s);
    let intent = lab.exec.prepare(&cx).await.unwrap();

    // The start task fails inside Proxmox: a failed task is not retried.
    lab.pve.call_kw("fail", json!(["POST", "/nodes/pve/qemu/9200/status/start"]), json!({"error": "qemu_exited_code", "times": 1}));
    let err = lab.exec.execute(&cx, &intent).await.unwrap_err();
    assert!(!err.retryable, "{err:?}");
    assert!(err.message.contains("start VM 9200 on pve") && err.message.contains("QEMU exited with code 1"), "{}", err.message);
    assert!(lab.guest(9200).await.is_some(), "create happened");
    assert_eq!(lab.exec.verify(&cx, &intent).await, Verified::NotDone, "half done is not done");

    // A restarted labops prepares the step again: the VM it finds is its own (its notes say
    // so), so the step still counts as having started without it.
    let fresh = Lab::executor(&lab.client);
    let again = fresh.prepare(&cx).await.unwrap();
    assert_eq!(again, intent);
    let outcome = done(fresh.execute(&cx, &again).await.unwrap());
    assert_eq!(outcome["actions"][0]["already"], true);
    assert_eq!(outcome["actions"][1]["already"], false);
    assert_eq!(lab.power("pve", "9200").await, "running");
    assert_eq!(fresh.compensate(&cx, &again, &outcome).await.unwrap(), Compensation::Undone("stopped and destroyed VM 9200 on pve".into()));
    assert!(lab.guest(9200).await.is_none());
}

#[tokio::test]
async fn faults_are_retryable_or_not_as_proxmox_means_them() {
    let lab = Lab::start();
    let config = step("cfg", json!({"node": "pve", "vmid": 107, "actions": [{"action": "config", "config": {"memory": 2048}}]}));
    let (cx_cfg, _p) = cx(10, &config);
    let intent = lab.exec.prepare(&cx_cfg).await.unwrap();

    // Another task holds the VM's config lock: retry later.
    lab.pve.call("hold_config_lock", json!([107, null]));
    let err = lab.exec.execute(&cx_cfg, &intent).await.unwrap_err();
    assert!(err.retryable, "{err:?}");
    assert!(err.message.contains("can't lock file") && err.message.contains("will be retried"), "{}", err.message);
    lab.pve.call("release_config_lock", json!([107]));
    done(lab.exec.execute(&cx_cfg, &intent).await.unwrap());
    assert_eq!(lab.config("pve", "107").await["memory"], "2048");

    // A task that ends on a lock is retryable too.
    let stop = step("stop", json!({"node": "pve", "vmid": 107, "actions": ["stop"]}));
    let (cx_stop, _p) = cx(11, &stop);
    let intent = lab.exec.prepare(&cx_stop).await.unwrap();
    lab.pve.call("hold_config_lock", json!([107, null]));
    let err = lab.exec.execute(&cx_stop, &intent).await.unwrap_err();
    assert!(err.retryable && err.message.contains("task") && err.message.contains("lock"), "{err:?}");
    lab.pve.call("release_config_lock", json!([107]));

    // A task that fails for good is not.
    let snap = step("snap", json!({"node": "pve", "vmid": 107, "actions": ["snapshot"]}));
    let (cx_snap, _p) = cx(12, &snap);
    let intent = lab.exec.prepare(&cx_snap).await.unwrap();
    lab.pve.call_kw("fail", json!(["POST", "/nodes/pve/qemu/107/snapshot"]), json!({"error": "snapshot_feature_not_available"}));
    let err = lab.exec.execute(&cx_snap, &intent).await.unwrap_err();
    assert!(!err.retryable && err.message.contains("snapshot feature is not available"), "{err:?}");
    lab.pve.reset();

    // The node is unreachable: retryable.
    let (cx_stop, _p) = cx(13, &stop);
    let intent = lab.exec.prepare(&cx_stop).await.unwrap();
    lab.pve.call("set_node_offline", json!(["pve"]));
    let err = lab.exec.execute(&cx_stop, &intent).await.unwrap_err();
    assert!(err.retryable && err.message.contains("No route to host"), "{err:?}");
    lab.pve.reset();
    done(lab.exec.execute(&cx_stop, &intent).await.unwrap());
    assert_eq!(lab.power("pve", "107").await, "stopped");

    // Proxmox refuses a value: fix the step, do not retry.
    let bad = step("bad", json!({"node": "pve", "vmid": 107, "actions": [{"action": "config", "config": {"cores": "lots"}}]}));
    let (cx_bad, _p) = cx(14, &bad);
    let intent = lab.exec.prepare(&cx_bad).await.unwrap();
    let err = lab.exec.execute(&cx_bad, &intent).await.unwrap_err();
    assert!(!err.retryable && err.message.contains("400") && err.message.contains("cores"), "{err:?}");

    // Preparing checks the step against the cluster.
    let taken = step("taken", json!({"node": "pve", "vmid": 107, "actions": ["create"]}));
    let err = lab.exec.prepare(&cx(15, &taken).0).await.unwrap_err();
    assert!(!err.retryable && err.message.contains("VMID 107 is taken by VM 107 on pve"), "{err:?}");
    let elsewhere = step("elsewhere", json!({"node": "pve", "vmid": 108, "actions": ["stop"]}));
    let err = lab.exec.prepare(&cx(16, &elsewhere).0).await.unwrap_err();
    assert!(err.message.contains("VM 108 is on node still-fawn, not on pve: fix `node`"), "{err:?}");
    let container = step("ct", json!({"node": "pumped-piglet", "vmid": 103, "actions": ["stop"]}));
    let err = lab.exec.prepare(&cx(17, &container).0).await.unwrap_err();
    assert!(err.message.contains("set `guest.kind: lxc`"), "{err:?}");
}

#[tokio::test]
async fn a_container_is_reconfigured_and_migrated_then_moved_back() {
    let lab = Lab::start();
    let list = |l: Value| pending(l);
    let before = list(lab.client.call(&LXC.pending, &[("node", "pumped-piglet"), ("vmid", "103")]).await.unwrap());
    let s = step(
        "move-pbs",
        json!({"node": "pumped-piglet", "vmid": 103, "guest": {"kind": "lxc"}, "target": "pve",
               "actions": [{"action": "config", "config": {"memory": 1024, "onboot": 1}}, "migrate"]}),
    );
    assert_eq!(lab.exec.targets(&s), ["lxc/103"]);
    let (cx, _p) = cx(20, &s);
    let intent = lab.exec.prepare(&cx).await.unwrap();
    let outcome = done(lab.exec.execute(&cx, &intent).await.unwrap());
    assert_eq!(lab.guest(103).await.unwrap()["node"], "pve");
    let now = list(lab.client.call(&LXC.pending, &[("node", "pve"), ("vmid", "103")]).await.unwrap());
    assert_eq!(now["memory"], "1024");
    assert!(matches!(lab.exec.verify(&cx, &intent).await, Verified::Done(_)));

    let c = lab.exec.compensate(&cx, &intent, &outcome).await.unwrap();
    assert!(matches!(&c, Compensation::Undone(w) if w.contains("migrated container 103 back from pve to pumped-piglet")), "{c:?}");
    assert_eq!(lab.guest(103).await.unwrap()["node"], "pumped-piglet");
    let after = list(lab.client.call(&LXC.pending, &[("node", "pumped-piglet"), ("vmid", "103")]).await.unwrap());
    assert_eq!(after, before);
}

#[tokio::test]
async fn verify_says_what_it_cannot_check_and_compensate_what_it_cannot_undo() {
    let lab = Lab::start();
    let s = step(
        "grow",
        json!({"node": "pve", "vmid": 107, "actions": [{"action": "resize", "disk": "scsi0", "size": "+1G"},
                                                      {"action": "rollback", "snapname": "nightly"}]}),
    );
    assert!(lab.exec.confirm_before(&s).is_some_and(|q| q.contains("discards everything")));
    let (cx, _p) = cx(30, &s);
    let intent = lab.exec.prepare(&cx).await.unwrap();
    match lab.exec.verify(&cx, &intent).await {
        Verified::Unknown(why) => {
            assert!(why.contains("scsi0") && why.contains("rolled back to snapshot nightly"), "{why}")
        }
        other => panic!("expected Unknown, got {other:?}"),
    }
    let c = lab.exec.compensate(&cx, &intent, &json!({"actions": [{}, {}]})).await.unwrap();
    assert!(matches!(&c, Compensation::CannotUndo(w) if w.contains("cannot shrink disks") && w.contains("rolled back")), "{c:?}");
}

#[tokio::test]
async fn the_shipped_lifecycle_workflow_runs_and_rolls_back() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../workflows/proxmox-vm-lifecycle.yaml");
    let (workflow, report) = labops_core::workflow::check(&std::fs::read_to_string(path).unwrap());
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let plan = labops_core::workflow::plan(&workflow.unwrap(), &Default::default()).unwrap();
    let steps: Vec<RunStep> = plan
        .stages
        .iter()
        .flat_map(|s| &s.steps)
        .map(|p| RunStep {
            name: p.name.clone(),
            step_type: p.step_type.clone(),
            depends_on: p.depends_on.clone(),
            waits_for_human: p.waits_for_human,
            mutates: p.mutates,
            fields: p.fields.clone(),
        })
        .collect();
    assert_eq!(steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["create-vm", "start-vm", "snapshot-vm", "config-change"]);

    let lab = Lab::start();
    let mut completed = Vec::new();
    for s in &steps {
        assert_eq!(lab.exec.check(s), Vec::<String>::new(), "{}", s.name);
        assert_eq!(lab.exec.targets(s), ["vm/9100"]);
        let (cx, _p) = cx(40, s);
        let intent = lab.exec.prepare(&cx).await.unwrap();
        let outcome = done(lab.exec.execute(&cx, &intent).await.unwrap());
        completed.push((cx, intent, outcome));
    }
    assert_eq!(lab.power("pve", "9100").await, "running");
    assert_eq!(lab.snapshots("pve", "9100").await, ["before-config"]);
    let config = lab.config("pve", "9100").await;
    assert_eq!((config["memory"].as_str(), config["onboot"].as_str(), config["tags"].as_str()), ("2048", "1", "labops-test"));

    // The driver's rollback: completed steps in reverse completion order.
    let mut report = Vec::new();
    for (cx, intent, outcome) in completed.iter().rev() {
        report.push(lab.exec.compensate(cx, intent, outcome).await.unwrap());
    }
    assert_eq!(
        report,
        [
            Compensation::Undone("restored memory, onboot, tags on VM 9100 on pve".into()),
            Compensation::Undone("deleted snapshot before-config of VM 9100 on pve".into()),
            Compensation::Undone("stopped VM 9100 on pve again".into()),
            Compensation::Undone("destroyed VM 9100 on pve".into()),
        ]
    );
    assert!(lab.guest(9100).await.is_none());
}

/// A stand-in for the SSH commands executor.
#[derive(Default)]
struct Commands(Mutex<Vec<String>>);

#[async_trait]
impl Executor for Commands {
    fn step_type(&self) -> &'static StepType {
        step_type("proxmox-task").unwrap()
    }
    fn check(&self, step: &RunStep) -> Vec<String> {
        self.0.lock().unwrap().push(format!("check {}", step.name));
        vec!["checked by the commands executor".into()]
    }
    async fn execute(&self, cx: &StepCx, _intent: &Value) -> Result<Started, StepError> {
        self.0.lock().unwrap().push(format!("execute {}", cx.step.name));
        Ok(Started::Done(json!("ran")))
    }
    async fn verify(&self, _cx: &StepCx, _intent: &Value) -> Verified {
        Verified::NotDone
    }
}

#[tokio::test]
async fn bad_steps_are_refused_with_a_sentence_per_field_and_commands_are_handed_on() {
    // No Proxmox needed: check() only reads the step.
    let client = Arc::new(
        Client::new(Settings {
            url: "https://127.0.0.1:1".into(),
            auth: Auth::Token { id: "root@pam!t".into(), secret: Secret::new("x") },
            tls: TlsTrust::System,
            timeout: Duration::from_secs(1),
            concurrency: 1,
        })
        .unwrap(),
    );
    let exec = ProxmoxTask::new(client.clone(), None);
    let errors = exec.check(&step("s", json!({"vmid": "abc", "actions": ["reboot", "rollback"]})));
    assert!(errors.iter().any(|e| e.starts_with("`node` is missing")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("`vmid` must be a number")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("unknown proxmox-task action `reboot`") && e.contains("known actions: create, clone")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("(rollback) needs `snapname`")), "{errors:?}");
    let errors = exec.check(&step("s", json!({"node": "pve", "vmid": 100, "actions": [{"action": "config", "config": {"memroy": 1}}]})));
    assert!(errors.len() == 1 && errors[0].contains("`config.memroy` is not a VM setting"), "{errors:?}");

    let commands = step("c", json!({"node": "pve", "commands": ["zpool status"]}));
    assert_eq!(exec.check(&commands), ["`commands` run on the Proxmox node over SSH, and commands on the node need [ssh] configured in labops.toml; for Proxmox API actions use `actions` instead"]);
    let both = step("b", json!({"node": "pve", "vmid": 100, "commands": ["x"], "actions": ["start"]}));
    assert!(exec.check(&both)[0].contains("not both"));

    let delegate = Arc::new(Commands::default());
    let exec = ProxmoxTask::new(client, Some(delegate.clone()));
    assert_eq!(exec.check(&commands), ["checked by the commands executor"]);
    let (cx, _p) = cx(1, &commands);
    assert_eq!(exec.execute(&cx, &Value::Null).await.unwrap(), Started::Done(json!("ran")));
    assert_eq!(*delegate.0.lock().unwrap(), ["check c", "execute c"]);
}
