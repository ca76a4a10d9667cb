//! `labops ask` end to end through the binary: fakepve as the lab, a real git repository for the
//! GitOps docs, and a scripted model speaking Ollama's wire format. "Restart haos" becomes a
//! change awaiting approval (its ids from the inventory, never from the model); nothing happens
//! until a human approves; then fakepve restarts the VM and the change closes with its commit.
//! A read question streams its answer; `labops ai usage` reports the calls; with no model
//! configured the request is refused with what to configure.

mod common;

use std::path::PathBuf;
use std::process::Output;

use common::{FakePve, gitops_repo, labops, root};
use labops_testkit::llm::{ScriptedLlm, Turn};
use serde_json::{Value, json};

struct Lab {
    fake: FakePve,
    _dir: tempfile::TempDir,
    config: PathBuf,
}

fn lab(ai: &str) -> Lab {
    let fake = FakePve::reference();
    let dir = tempfile::tempdir().unwrap();
    let repo = gitops_repo(dir.path(), &[]);
    let extra = format!("{repo}\n[forge]\nkind = \"local\"\n{ai}");
    let config = fake.config(dir.path(), &extra);
    Lab { fake, _dir: dir, config }
}

fn ai_config(url: &str) -> String {
    format!(
        "\n[ai]\nlibrary = \"{}\"\n[ai.local]\nprovider = \"ollama\"\nurl = \"{url}\"\nmodel = \"scripted\"\ntool_mode = \"native\"\n",
        root().join("workflows").display()
    )
}

impl Lab {
    fn labops(&self, args: &[&str]) -> (Output, String, String) {
        let out = labops().arg("--config").arg(&self.config).args(args).env("USER", "ann").output().unwrap();
        let (o, e) = (String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string());
        (out, o, e)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (out, o, e) = self.labops(args);
        assert!(out.status.success(), "labops {args:?} failed: {o}{e}");
        o
    }
}

/// The scripted server lives on a runtime of its own while the binary runs.
fn scripted(turns: Vec<Turn>) -> (tokio::runtime::Runtime, ScriptedLlm) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let llm = rt.block_on(ScriptedLlm::start(turns)).unwrap();
    (rt, llm)
}

#[test]
fn restart_haos_is_proposed_by_the_model_approved_by_a_human_and_done() {
    let (_rt, llm) = scripted(vec![
        Turn::tool_call("get_entity", json!({"name": "haos"})),
        Turn::tool_call("propose_change", json!({"workflow": "guest-restart", "target": "haos", "title": "Restart Home Assistant (haos)", "why": "The owner reports it hangs; a restart clears it.", "risk": "low", "time_saved_hours_per_month": 0.5})),
    ]);
    let lab = lab(&ai_config(&llm.url()));
    let uptime_before = lab.fake.state()["guests"].as_array().unwrap().iter().find(|g| g["vmid"] == 116).cloned().unwrap();
    let out = lab.ok(&["ask", "--json", "haos hangs, please restart it"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["kind"].as_str(), v["workflow"].as_str(), v["target"].as_str()), (Some("proposal"), Some("guest-restart"), Some("haos")), "{v}");
    assert_eq!(v["tools_called"], json!(["get_entity"]));
    let id = v["change"]["id"].as_str().expect("a change was recorded").to_string();
    assert_eq!(v["change"]["state"], "awaiting_approval", "the model proposes; a human approves");

    let c: Value = serde_json::from_str(&lab.ok(&["change", "show", &id, "--json"])).unwrap();
    assert_eq!(c["workflow"], "guest-restart");
    let plan = c["plan"].to_string();
    assert!(plan.contains("chief-horse") && plan.contains("116"), "node and VMID come from the inventory: {plan}");
    assert_eq!(c["history"][0]["actor"]["kind"], "ai", "{}", c["history"]);
    let now = lab.fake.state()["guests"].as_array().unwrap().iter().find(|g| g["vmid"] == 116).cloned().unwrap();
    assert_eq!(now["status"], uptime_before["status"], "nothing ran before approval");

    let out = lab.ok(&["change", "approve", &id]);
    assert!(out.contains(&format!("{id}: closed")), "{out}");
    let g = lab.fake.state()["guests"].as_array().unwrap().iter().find(|g| g["vmid"] == 116).cloned().unwrap();
    assert_eq!(g["status"], "running", "restarted: {g}");

    // Both model calls are recorded and audited.
    let usage: Value = serde_json::from_str(&lab.ok(&["ai", "usage", "--json"])).unwrap();
    assert_eq!(usage["providers"][0]["provider"], "ollama/scripted", "{usage}");
    assert_eq!(usage["providers"][0]["calls"], 2, "{usage}");
    let audit = lab.ok(&["audit", "--json", "--limit", "100"]);
    assert!(audit.contains("\"ai_call\""), "every model call is in the audit log");
}

#[test]
fn a_read_question_streams_its_answer_and_an_unconfigured_lab_says_what_to_do() {
    let (_rt, llm) = scripted(vec![
        Turn::tool_call("list_entities", json!({"node": "pumped-piglet"})),
        Turn::text("pumped-piglet runs k3s-vm-pumped-piglet-gpu (VM 105) and proxmox-backup-server (CT 103)."),
    ]);
    let lab = lab(&ai_config(&llm.url()));
    let (out, stdout, stderr) = lab.labops(&["ask", "What runs on pumped-piglet?"]);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("k3s-vm-pumped-piglet-gpu (VM 105)"), "the answer is printed: {stdout}");
    assert!(stderr.contains("→ list_entities"), "what the model looked up is shown: {stderr}");
    let posts: Vec<_> = llm.requests().into_iter().filter(|r| r.method == "POST").collect();
    assert_eq!(posts[1].body["stream"], true, "the answer is streamed");

    let bare = self::lab("");
    let (out, stdout, stderr) = bare.labops(&["ask", "What runs on pumped-piglet?"]);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("[ai.local]"), "says what to configure: {stdout}");
}

#[test]
fn the_ai_engine_drafts_a_proposal_the_human_did_not_write() {
    let draft = json!({
        "title": "Snapshot haos before the upgrade",
        "what": "A snapshot of VM 116 on chief-horse.",
        "why": "A way back if the Home Assistant upgrade fails.",
        "risk": "low",
        "risk_notes": "Uses some space on local-lvm.",
        "time_saved_hours_per_month": 0.5,
        "learning_value": 2,
        "complexity": 1,
        "risk_score": 1
    });
    let (_rt, llm) = scripted(vec![Turn::text("Sure, here it is!"), Turn::text(draft.to_string())]);
    let lab = lab(&ai_config(&llm.url()));
    let wf = root().join("workflows/actions/guest-snapshot.yaml");
    let out = lab.ok(&["change", "propose", wf.to_str().unwrap(), "--set", "node=chief-horse", "--set", "vmid=116", "--json"]);
    let c: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(c["state"], "awaiting_approval", "{c}");
    assert_eq!(c["title"], "Snapshot haos before the upgrade");
    assert_eq!(c["proposal"]["roi"]["complexity"], 1);
    assert!(c["proposal"]["roi"]["basis"].as_str().unwrap().contains("drafted by the AI engine (ollama/scripted)"), "{}", c["proposal"]["roi"]);
    let posts: Vec<_> = llm.requests().into_iter().filter(|r| r.method == "POST").collect();
    assert_eq!(posts.len(), 2, "one repair of the invalid first draft");
    assert!(posts[0].body.to_string().contains("guest-snapshot"), "the model sees the plan");
    assert!(posts[1].body.to_string().contains("not valid"), "and is told what was wrong");

    let bare = self::lab("");
    let (out, o, e) = bare.labops(&["change", "propose", wf.to_str().unwrap(), "--set", "node=chief-horse", "--set", "vmid=116"]);
    assert_eq!(out.status.code(), Some(1), "{o}{e}");
    assert!(e.contains("--proposal FILE") && e.contains("[ai.local]"), "{e}");
}
