//! Workflow runs end to end through the binary, against a real fakepve: a change's run creates,
//! starts, snapshots and reconfigures a VM; faults injected in the middle roll it back (the
//! change's issue stays open, nothing is committed); and the process is SIGKILLed at 20+ points
//! of a run and restarted, after which every side effect happened exactly once and the change
//! still reaches its commit.

mod common;

use std::path::Path;
use std::process::Output;

use common::{git, gitops_repo, labops, FakePve};
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

const PROPOSAL: &str = "title: A test VM with a snapshot and start on boot
analysis:
  what: Create, start, snapshot and reconfigure a scratch VM on still-fawn
  why: Prove the change workflow end to end
  risk: low
roi: {time_saved_hours_per_month: 1, learning_value: 5, complexity: 3, risk: 2}
";

struct Lab {
    fake: FakePve,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    workflow: std::path::PathBuf,
    proposal: std::path::PathBuf,
}


fn lab() -> Lab {
    let fake = FakePve::reference();
    let dir = tempfile::tempdir().unwrap();
    let config = fake.config(dir.path(), &gitops_repo(dir.path(), &[("README.md", "# homelab GitOps\n")]));
    let workflow = dir.path().join("vm.yaml");
    std::fs::write(&workflow, WORKFLOW).unwrap();
    let proposal = dir.path().join("proposal.yaml");
    std::fs::write(&proposal, PROPOSAL).unwrap();
    Lab { fake, dir, config, workflow, proposal }
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

    /// Proposes the change for `vmid`; returns its id.
    fn propose(&self, vmid: u32) -> String {
        let out = self.ok(&["change", "propose", self.workflow.to_str().unwrap(), "--set", &format!("vmid={vmid}"), "--proposal", self.proposal.to_str().unwrap()]);
        assert!(out.contains("labops change approve chg-"), "{out}");
        out.split("labops change approve ").nth(1).unwrap().split('`').next().unwrap().to_string()
    }

    fn change(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["change", "show", id, "--json"])).unwrap()
    }

    /// The run executing change `id`.
    fn run_of(&self, id: &str) -> String {
        self.change(id)["run_id"].as_i64().unwrap_or_else(|| panic!("{id} has no run")).to_string()
    }

    fn remote_log(&self) -> Vec<String> {
        git(&self.dir.path().join("remote.git"), &["log", "--format=%s", "main"]).lines().map(str::to_string).collect()
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
    let chg = lab.propose(9100);
    assert!(lab.guest(9100).is_none(), "nothing happens before approval");
    let out = lab.ok(&["change", "approve", &chg]);
    assert!(out.contains("step waiting owner-check: Check the VM answers"), "{out}");
    let run = lab.run_of(&chg);
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
    // The change ends rolled back: its issue is commented and stays open; nothing is committed.
    let c = lab.change(&chg);
    assert_eq!(c["state"], "rolled_back", "{c}");
    assert!(text.contains(&format!("{chg}: rolled_back")), "{text}");
    let issue = std::fs::read_to_string(lab.dir.path().join(format!("gitops/issues/{}.md", c["issue"]))).unwrap();
    assert!(issue.contains("state: open") && issue.contains("waits for:\n- step `owner-check`") && issue.contains("failed and was rolled back") && issue.contains("no answer on port 22"), "{issue}");
    assert_eq!(lab.remote_log(), ["Start"], "nothing was committed");
}

#[test]
fn a_fault_in_the_middle_rolls_back_what_was_done() {
    let lab = lab();
    let chg = lab.propose(9101);
    // Every config change on the node fails: the task for `set-onboot` errors out.
    lab.fake.call("fail", serde_json::json!(["PUT", "/qemu/9101/config", 500, "got timeout (config lock)"]));
    lab.fake.call("fail", serde_json::json!(["POST", "/qemu/9101/config", 500, "got timeout (config lock)"]));
    let out = lab.labops(&["change", "approve", &chg], None);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    let run = lab.run_of(&chg);
    assert!(text.contains("step retry set-onboot"), "a lock error is retried: {text}");
    assert!(text.contains(&format!("{chg}: rolled_back")), "{text}");
    lab.fake.reset();
    assert!(lab.guest(9101).is_none(), "the VM the run created is gone: {:?}", lab.guest(9101));
    let states = step_states(&lab.status(&run));
    assert_eq!(states.iter().find(|(n, _)| n == "set-onboot").unwrap().1, "failed");
    assert_eq!(states.iter().find(|(n, _)| n == "create-vm").unwrap().1, "compensated");
    assert_eq!(states.iter().find(|(n, _)| n == "owner-check").unwrap().1, "cancelled");
    assert_eq!(lab.change(&chg)["state"], "rolled_back");
    assert_eq!(lab.remote_log(), ["Start"], "nothing was committed");
}

/// Kills labops at one point, restarts it until the run is where the scenario wants it, and
/// checks that each side effect happened once.
fn crash_case(lab: &Lab, vmid: u32, point: &str, roll_back: bool) {
    let chg = lab.propose(vmid);
    let compensation = point.contains("compensate");
    let crash = point.to_string();
    let run;
    if compensation {
        lab.ok(&["change", "approve", &chg]);
        run = lab.run_of(&chg);
        let out = lab.labops(&["workflow", "complete-step", &run, "owner-check", "--failed", "test"], Some(&crash));
        assert!(killed(&out), "{crash}: labops was not killed: {}", String::from_utf8_lossy(&out.stdout));
    } else {
        let out = lab.labops(&["change", "approve", &chg], Some(&crash));
        assert!(killed(&out), "{crash}: labops was not killed: {}", String::from_utf8_lossy(&out.stdout));
        run = lab.run_of(&chg);
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
        assert_eq!(lab.change(&chg)["state"], "rolled_back", "{crash}");
    } else {
        assert_eq!(status["run"]["state"], "succeeded", "{crash}");
        let g = lab.guest(vmid).unwrap();
        assert_eq!(g["snapshots"].as_array().unwrap().iter().filter(|s| *s == "before-change").count(), 1, "{crash}");
        assert_eq!(g["config"]["onboot"], "1", "{crash}: {g}");
        assert_eq!(g["status"], "running", "{crash}");
        let c = lab.change(&chg);
        assert_eq!(c["state"], "closed", "{crash}: {c}");
        assert!(lab.remote_log().iter().filter(|m| m.starts_with("A test VM")).count() >= 1, "{crash}");
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

const HUMAN_WAIT: &str = "apiVersion: kro.run/v1alpha1
kind: ResourceGraphDefinition
metadata:
  name: plug-a-disk
spec:
  resources:
    - name: start
      type: milestone
    - name: plug-disk
      type: external-task
      dependencies: [start]
      instructions: Plug the NVMe into slot 2
    - name: kernel-sees-it
      type: system-check
      dependencies: [plug-disk]
      validation_commands: [\"uname -s\"]
      success_criteria: [\"output of uname -s contains Linux\"]
";

/// `labops serve` drives runs a CLI started and a human moved on; the SSE stream at
/// `/api/v1/runs/{id}/events` carries every event, needs the token, and ends with the run.
#[test]
fn serve_drives_runs_and_streams_their_events() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("labops.toml");
    std::fs::write(&cfg, format!("[state]\ndata_dir = \"{}\"\n", dir.path().join("state").display())).unwrap();
    let wf = dir.path().join("wait.yaml");
    std::fs::write(&wf, HUMAN_WAIT).unwrap();
    let served = common::Served::start(&cfg);
    let run = |args: &[&str]| {
        let out = labops().arg("--config").arg(&cfg).args(args).env("USER", "ann").output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string())
    };
    let (ok, out) = run(&["workflow", "run", wf.to_str().unwrap()]);
    assert!(ok && out.contains("Plug the NVMe into slot 2"), "{out}");
    let id = out.split("run ").nth(1).unwrap().split(':').next().unwrap().to_string();
    let c = common::http();
    let events_url = format!("{}/api/v1/runs/{id}/events", served.base);
    assert_eq!(c.get(&events_url).send().unwrap().status(), 401);
    assert_eq!(c.get(format!("{}/api/v1/runs/999", served.base)).bearer_auth(&served.token).send().unwrap().status(), 404);

    // The CLI that started the run has exited; `serve` takes the run over...
    common::eventually(20, "serve takes the run", || {
        let v: Value = c.get(format!("{}/api/v1/runs/{id}", served.base)).bearer_auth(&served.token).send().ok()?.json().ok()?;
        // A live process: the CLI that started the run has exited, its lease with it.
        let owner = v["run"]["owner"].as_str()?.to_string();
        let pid = owner.split(':').nth(1)?;
        Path::new(&format!("/proc/{pid}")).exists().then_some(owner)
    });
    // ...so the human's answer is recorded by the CLI and carried on by `serve`.
    let (ok, out) = run(&["workflow", "complete-step", &id, "plug-disk", "--data", "{\"slot\": 2}"]);
    assert!(ok && out.contains("driven by another labops process"), "{out}");
    let body = c.get(&events_url).bearer_auth(&served.token).send().unwrap().text().unwrap();
    let kinds: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(kinds.first(), Some(&"created"), "{body}");
    assert_eq!(kinds.last(), Some(&"finished"), "the stream ends with the run: {body}");
    assert!(kinds.contains(&"step_waiting") && kinds.iter().filter(|k| **k == "step_succeeded").count() == 3, "{body}");
    let ids: Vec<i64> = body.lines().filter_map(|l| l.strip_prefix("id: ")).map(|s| s.parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "events are numbered in order: {ids:?}");
    // Resuming from an event id gives only what came after.
    let tail = c.get(&events_url).bearer_auth(&served.token).header("Last-Event-ID", ids[ids.len() - 2].to_string()).send().unwrap().text().unwrap();
    assert_eq!(tail.lines().filter(|l| l.starts_with("event: ")).count(), 1, "{tail}");
    let v: Value = c.get(format!("{}/api/v1/runs/{id}", served.base)).bearer_auth(&served.token).send().unwrap().json().unwrap();
    assert_eq!(v["run"]["state"], "succeeded");
    assert_eq!(v["steps"][1]["outcome"]["data"]["slot"], 2);
}

/// `run --follow` stays until the run ends, printing each event (a progress bar per step on a
/// terminal), and carries the run across a human step completed from another terminal.
#[test]
fn follow_shows_progress_until_the_run_ends() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("labops.toml");
    std::fs::write(&cfg, format!("[state]\ndata_dir = \"{}\"\n", dir.path().join("state").display())).unwrap();
    let wf = dir.path().join("wait.yaml");
    std::fs::write(&wf, HUMAN_WAIT).unwrap();
    let follower = labops()
        .arg("--config")
        .arg(&cfg)
        .args(["workflow", "run", wf.to_str().unwrap(), "--follow"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the run to wait for the human, then answer from "another terminal".
    let status = |run: &str| -> Option<Value> {
        let out = labops().arg("--config").arg(&cfg).args(["workflow", "status", run, "--json"]).output().ok()?;
        serde_json::from_slice(&out.stdout).ok()
    };
    common::eventually(20, "the run waits for the human", || {
        status("1").filter(|s| s["steps"][1]["state"] == "waiting_human")
    });
    let out = labops().arg("--config").arg(&cfg).args(["workflow", "complete-step", "1", "plug-disk", "--as", "bob"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = follower.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("step waiting plug-disk: Plug the NVMe into slot 2"), "{stderr}");
    assert!(stderr.contains("step succeeded kernel-sees-it"), "{stderr}");
    assert!(stdout.contains("run 1 ended: succeeded"), "{stdout}");
}

/// What a change names is resolved against the live inventory before anything is stored: a typo
/// gets the real names, and a VM a step would create must not exist yet.
#[test]
fn a_change_naming_what_the_lab_does_not_have_is_refused_with_the_real_names() {
    let lab = lab();
    let typo = lab.dir.path().join("typo.yaml");
    std::fs::write(&typo, WORKFLOW.replace("node: still-fawn\n      vmid: \"{{.vmid}}\"\n      guest", "node: still-fawm\n      vmid: \"{{.vmid}}\"\n      guest")).unwrap();
    let proposal = lab.proposal.to_str().unwrap();
    let out = lab.labops(&["change", "propose", typo.to_str().unwrap(), "--set", "vmid=9300", "--proposal", proposal], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("step `create-vm`: `node`: no proxmox_node or host is named \"still-fawm\"") && err.contains("still-fawn"), "{err}");
    let out = lab.labops(&["change", "propose", lab.workflow.to_str().unwrap(), "--set", "vmid=108", "--proposal", proposal], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("vm/108 already exists (k3s-vm-still-fawn on still-fawn)"), "{err}");
    let changes = lab.ok(&["change", "list", "--all", "--json"]);
    assert_eq!(serde_json::from_str::<Value>(&changes).unwrap().as_array().unwrap().len(), 0, "nothing was stored");
    let runs = lab.ok(&["workflow", "runs", "--all", "--json"]);
    assert_eq!(serde_json::from_str::<Value>(&runs).unwrap().as_array().unwrap().len(), 0, "nothing was stored");
}
