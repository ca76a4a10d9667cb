//! Workflow runs end to end through the binary, against a real fakepve: a run creates, starts,
//! snapshots and reconfigures a VM; faults injected in the middle roll it back; and the process
//! is SIGKILLed at 20+ points of a run and restarted, after which every side effect happened
//! exactly once.

mod common;

use std::path::Path;
use std::process::Output;

use common::{labops, FakePve};
use serde_json::Value;

const WORKFLOW: &str = "apiVersion: kro.run/v1alpha1
kind: ResourceGraphDefinition
metadata:
  name: vm-lifecycle-test
spec:
  resources:
    - name: create-vm
      type: proxmox-task
      node: still-fawn
      vmid: \"{{.vmid}}\"
      guest: {name: \"crash-{{.vmid}}\", memory: 512}
      actions: [create]
    - name: start-vm
      type: proxmox-task
      dependencies: [create-vm]
      node: still-fawn
      vmid: \"{{.vmid}}\"
      actions: [start]
    - name: snapshot
      type: proxmox-task
      dependencies: [start-vm]
      node: still-fawn
      vmid: \"{{.vmid}}\"
      actions: [{action: snapshot, snapname: before-change}]
    - name: set-onboot
      type: proxmox-task
      dependencies: [snapshot]
      node: still-fawn
      vmid: \"{{.vmid}}\"
      actions: [{action: config, config: {onboot: 1, description: changed by labops}}]
    - name: owner-check
      type: external-task
      dependencies: [set-onboot]
      instructions: Check the VM answers
";

struct Lab {
    fake: FakePve,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    workflow: std::path::PathBuf,
}

fn lab() -> Lab {
    let fake = FakePve::reference();
    let dir = tempfile::tempdir().unwrap();
    let config = fake.config(dir.path(), "");
    let workflow = dir.path().join("vm.yaml");
    std::fs::write(&workflow, WORKFLOW).unwrap();
    Lab { fake, dir, config, workflow }
}

impl Lab {
    fn labops(&self, args: &[&str], crash: Option<&str>) -> Output {
        let mut c = labops();
        c.arg("--config").arg(&self.config).args(args).env("USER", "ann");
        if let Some(point) = crash {
            c.env("LABOPS_TEST_CRASH_AT", point);
        }
        c.output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.labops(args, None);
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "labops {args:?} failed: {text}");
        text
    }

    /// Starts a run for `vmid`; returns its number.
    fn start(&self, vmid: u32) -> String {
        let out = self.ok(&["workflow", "run", self.workflow.to_str().unwrap(), "--set", &format!("vmid={vmid}")]);
        assert!(out.contains("waits for:") && out.contains("approve"), "{out}");
        out.split("run ").nth(1).unwrap().split(':').next().unwrap().to_string()
    }

    fn status(&self, run: &str) -> Value {
        serde_json::from_str(&self.ok(&["workflow", "status", run, "--json"])).unwrap()
    }

    fn guest(&self, vmid: u32) -> Option<Value> {
        self.fake.state()["guests"].as_array().unwrap().iter().find(|g| g["vmid"] == vmid).cloned()
    }

    /// Writes fakepve saw for this VM, as `METHOD /last/path/parts`.
    fn writes(&self, vmid: u32) -> Vec<String> {
        let create_path = "/api2/json/nodes/still-fawn/qemu";
        self.fake.state()["writes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|w| {
                let (m, p, body_vmid) = (w[0].as_str().unwrap(), w[1].as_str().unwrap(), w[2].as_str().unwrap_or(""));
                let mine = p.contains(&format!("/qemu/{vmid}/")) || p.ends_with(&format!("/qemu/{vmid}")) || (p == create_path && m == "POST" && body_vmid == vmid.to_string());
                mine.then(|| format!("{m} {}", p.trim_start_matches(create_path)))
            })
            .collect()
    }
}

fn step_states(status: &Value) -> Vec<(String, String)> {
    status["steps"].as_array().unwrap().iter().map(|s| (s["name"].as_str().unwrap().into(), s["state"].as_str().unwrap().into())).collect()
}

fn killed(out: &Output) -> bool {
    use std::os::unix::process::ExitStatusExt;
    out.status.signal() == Some(9)
}

#[test]
fn a_run_changes_a_vm_after_approval_and_rolls_back_when_the_owner_fails_it() {
    let lab = lab();
    let run = lab.start(9100);
    assert!(lab.guest(9100).is_none(), "nothing happens before approval");
    let out = lab.ok(&["workflow", "approve", &run]);
    assert!(out.contains("step waiting owner-check: Check the VM answers"), "{out}");
    let g = lab.guest(9100).expect("the VM was created");
    assert_eq!((g["status"].as_str(), g["snapshots"].as_array().unwrap().iter().any(|s| s == "before-change")), (Some("running"), true));
    assert_eq!(g["config"]["onboot"], "1", "{g}");

    let out = lab.labops(&["workflow", "complete-step", &run, "owner-check", "--failed", "no answer on port 22"], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "a rolled-back run exits 1: {text}");
    assert!(text.contains("run ") && text.contains("ended: rolled_back"), "{text}");
    assert!(text.contains("undone   create-vm"), "{text}");
    assert!(lab.guest(9100).is_none(), "the created VM was destroyed");
    let status = lab.status(&run);
    assert_eq!(status["run"]["report"]["failed_step"], "owner-check");
    assert!(status["locks"].as_array().unwrap().is_empty());
}

#[test]
fn a_fault_in_the_middle_rolls_back_what_was_done() {
    let lab = lab();
    let run = lab.start(9101);
    // Every config change on the node fails: the task for `set-onboot` errors out.
    lab.fake.call("fail", serde_json::json!(["PUT", "/qemu/9101/config", 500, "got timeout (config lock)"]));
    lab.fake.call("fail", serde_json::json!(["POST", "/qemu/9101/config", 500, "got timeout (config lock)"]));
    let out = lab.labops(&["workflow", "approve", &run], None);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("step retry set-onboot"), "a lock error is retried: {text}");
    assert!(text.contains("ended: rolled_back"), "{text}");
    lab.fake.reset();
    assert!(lab.guest(9101).is_none(), "the VM the run created is gone: {:?}", lab.guest(9101));
    let states = step_states(&lab.status(&run));
    assert_eq!(states.iter().find(|(n, _)| n == "set-onboot").unwrap().1, "failed");
    assert_eq!(states.iter().find(|(n, _)| n == "create-vm").unwrap().1, "compensated");
    assert_eq!(states.iter().find(|(n, _)| n == "owner-check").unwrap().1, "cancelled");
}

/// Kills labops at one point, restarts it until the run is where the scenario wants it, and
/// checks that each side effect happened once.
fn crash_case(lab: &Lab, vmid: u32, point: &str, roll_back: bool) {
    let run = lab.start(vmid);
    let compensation = point.contains("compensate");
    let crash = format!("{point}");
    if compensation {
        lab.ok(&["workflow", "approve", &run]);
        let out = lab.labops(&["workflow", "complete-step", &run, "owner-check", "--failed", "test"], Some(&crash));
        assert!(killed(&out), "{crash}: labops was not killed: {}", String::from_utf8_lossy(&out.stdout));
    } else {
        let out = lab.labops(&["workflow", "approve", &run], Some(&crash));
        assert!(killed(&out), "{crash}: labops was not killed: {}", String::from_utf8_lossy(&out.stdout));
    }
    // Restart: the run picks up where it stopped.
    let out = lab.ok(&["workflow", "resume"]);
    assert!(out.contains(&format!("run {run}:")), "{crash}: {out}");
    let status = lab.status(&run);
    if !compensation {
        let states = step_states(&status);
        assert_eq!(states.last().unwrap(), &("owner-check".to_string(), "waiting_human".to_string()), "{crash}: {states:?}");
        if roll_back {
            let out = lab.labops(&["workflow", "complete-step", &run, "owner-check", "--failed", "test"], None);
            assert_eq!(out.status.code(), Some(1), "{crash}");
        } else {
            lab.ok(&["workflow", "complete-step", &run, "owner-check", "--data", "{}"]);
        }
    }
    let status = lab.status(&run);
    let writes = lab.writes(vmid);
    let count = |w: &str| writes.iter().filter(|x| x.as_str() == w).count();
    let creates = writes.iter().filter(|w| *w == "POST ").count();
    assert_eq!(creates, 1, "{crash}: the VM was created once: {writes:?}");
    assert_eq!(count(&format!("POST /{vmid}/status/start")), 1, "{crash}: started once: {writes:?}");
    assert_eq!(count(&format!("POST /{vmid}/snapshot")), 1, "{crash}: one snapshot: {writes:?}");
    if roll_back || compensation {
        assert_eq!(status["run"]["state"], "rolled_back", "{crash}");
        assert!(lab.guest(vmid).is_none(), "{crash}: the VM was destroyed");
        assert_eq!(count(&format!("DELETE /{vmid}")), 1, "{crash}: destroyed once: {writes:?}");
    } else {
        assert_eq!(status["run"]["state"], "succeeded", "{crash}");
        let g = lab.guest(vmid).unwrap();
        assert_eq!(g["snapshots"].as_array().unwrap().iter().filter(|s| *s == "before-change").count(), 1, "{crash}");
        assert_eq!(g["config"]["onboot"], "1", "{crash}: {g}");
        assert_eq!(g["status"], "running", "{crash}");
    }
}

#[test]
fn killed_at_twenty_points_every_side_effect_happens_once() {
    let lab = lab();
    let forward = ["create-vm", "start-vm", "snapshot", "set-onboot"];
    let mut cases: Vec<(String, bool)> = Vec::new();
    for (i, step) in forward.iter().enumerate() {
        for point in ["before_execute", "after_execute", "after_record"] {
            // Half of the forward crashes end in success, half in a rollback afterwards.
            cases.push((format!("{point}@{step}"), i % 2 == 1));
        }
    }
    for step in forward {
        for point in ["before_compensate", "after_compensate"] {
            cases.push((format!("{point}@{step}"), true));
        }
    }
    assert!(cases.len() >= 20);
    for (i, (point, roll_back)) in cases.iter().enumerate() {
        crash_case(&lab, 9200 + i as u32, point, *roll_back);
    }
    let _ = Path::new(lab.dir.path()).exists();
}
