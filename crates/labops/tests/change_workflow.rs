//! The change workflow end to end through the binary, with the local forge, a real git
//! repository pushed to a bare remote, and fakepve: "create an LXC for Uptime Kuma on
//! pumped-piglet" is proposed, approved by a human on the CLI, executed, validated against the
//! live lab, documented, committed with `fixes #N`, pushed, and its issue closed. And the
//! refusals: running without a change, approving another plan than the one shown, approving a
//! rejected change; each refused and audited.

mod common;

use std::path::PathBuf;
use std::process::Output;

use common::{FakePve, git, gitops_repo, labops, root};
use serde_json::Value;

struct Lab {
    fake: FakePve,
    dir: tempfile::TempDir,
    config: PathBuf,
}


fn lab() -> Lab {
    let fake = FakePve::reference();
    let dir = tempfile::tempdir().unwrap();
    let repo = gitops_repo(dir.path(), &[("docs/infrastructure/compute.md", "# Compute\n\nThe owner's notes on the Proxmox nodes: keep them.\n")]);
    let extra = format!("{repo}\n[forge]\nkind = \"local\"\n");
    let config = fake.config(dir.path(), &extra);
    Lab { fake, dir, config }
}

impl Lab {
    fn labops(&self, args: &[&str]) -> (Output, String) {
        let out = labops().arg("--config").arg(&self.config).args(args).env("USER", "ann").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        (out, text)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (out, text) = self.labops(args);
        assert!(out.status.success(), "labops {args:?} failed: {text}");
        text
    }

    fn refused(&self, args: &[&str]) -> String {
        let (out, text) = self.labops(args);
        assert_eq!(out.status.code(), Some(1), "labops {args:?} should be refused: {text}");
        text
    }

    fn propose(&self, extra: &[&str]) -> String {
        let wf = root().join("workflows/lxc-service.yaml");
        let values = root().join("workflows/values/lxc-service.yaml");
        let proposal = root().join("workflows/proposals/uptime-kuma.yaml");
        let mut args = vec!["change", "propose", wf.to_str().unwrap(), "--values", values.to_str().unwrap(), "--proposal", proposal.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = self.ok(&args);
        out.split("labops change approve ").nth(1).unwrap().split('`').next().unwrap().to_string()
    }

    fn change(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["change", "show", id, "--json"])).unwrap()
    }

    fn guest(&self, vmid: u32) -> Option<Value> {
        self.fake.state()["guests"].as_array().unwrap().iter().find(|g| g["vmid"] == vmid).cloned()
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("gitops")
    }

    fn remote(&self) -> PathBuf {
        self.dir.path().join("remote.git")
    }

    fn audit(&self) -> Vec<Value> {
        serde_json::from_str::<Value>(&self.ok(&["audit", "--json", "--limit", "500"])).unwrap().as_array().unwrap().clone()
    }
}

#[test]
fn uptime_kuma_is_proposed_approved_created_documented_committed_and_closed() {
    let lab = lab();
    let chg = lab.propose(&[]);
    let c = lab.change(&chg);
    assert_eq!(c["state"], "awaiting_approval");
    let issue = c["issue"].as_u64().expect("an issue was opened");
    let digest = c["plan_digest"].as_str().unwrap().to_string();
    let blast = c["proposal"]["analysis"]["blast_radius"].to_string();
    assert!(blast.contains("lxc/130: new"), "the blast radius comes from the plan and the inventory: {blast}");
    let rollback = c["proposal"]["analysis"]["rollback_plan"].as_array().unwrap();
    assert!(rollback[0].as_str().unwrap().starts_with("`start-container`"), "undone newest first: {rollback:?}");
    let mirror = lab.work().join(format!("issues/{issue}.md"));
    let text = std::fs::read_to_string(&mirror).expect("the issue is mirrored in the GitOps repository");
    assert!(text.contains("state: open") && text.contains("## Why") && text.contains(&digest) && text.contains("| Learning value | 3/10 |"), "{text}");
    assert!(lab.guest(130).is_none(), "nothing happens before approval");

    // A human approves on the CLI: the container is created and started on pumped-piglet.
    let out = lab.ok(&["change", "approve", &chg]);
    assert!(out.contains(&format!("{chg}: closed")), "{out}");
    let g = lab.guest(130).expect("the LXC exists on fakepve");
    assert_eq!((g["node"].as_str(), g["type"].as_str(), g["status"].as_str()), (Some("pumped-piglet"), Some("lxc"), Some("running")), "{g}");

    // Documentation, from the live inventory, with the owner's prose kept.
    let compute = std::fs::read_to_string(lab.work().join("docs/infrastructure/compute.md")).unwrap();
    assert!(compute.contains("The owner's notes on the Proxmox nodes: keep them."), "{compute}");
    assert!(compute.contains("| 130 | uptime-kuma | pumped-piglet | running |"), "{compute}");
    assert!(compute.contains(&format!("Create an LXC for Uptime Kuma on pumped-piglet ({chg}, issue [#{issue}]")), "{compute}");
    let infra = std::fs::read_to_string(lab.work().join("INFRASTRUCTURE.md")).unwrap();
    assert!(infra.contains("| 130 | uptime-kuma | pumped-piglet | running |") && infra.contains("k3s-vm-still-fawn"), "{infra}");
    let changelog = std::fs::read_to_string(lab.work().join("CHANGELOG.md")).unwrap();
    assert!(changelog.contains(&format!("Create an LXC for Uptime Kuma on pumped-piglet (#{issue})")) && changelog.contains("Approved by: ann"), "{changelog}");
    assert!(changelog.contains("lxc/130 (uptime-kuma) is in the live inventory on pumped-piglet, running"), "validation is recorded: {changelog}");

    // The commit, pushed: summary, `fixes #N`, and the files.
    let c = lab.change(&chg);
    assert_eq!(c["state"], "closed", "{c}");
    let sha = c["commit"].as_str().unwrap();
    assert_eq!(git(&lab.remote(), &["rev-parse", "main"]), sha, "the commit was pushed to the remote's main");
    let message = git(&lab.remote(), &["log", "-1", "--format=%B", "main"]);
    assert!(message.starts_with("Create an LXC for Uptime Kuma on pumped-piglet"), "{message}");
    assert!(message.contains(&format!("fixes #{issue}")) && message.contains(&format!("Labops-Change: {chg}")), "{message}");
    let files = git(&lab.remote(), &["show", "--name-only", "--format=", "main"]);
    for f in ["CHANGELOG.md", "INFRASTRUCTURE.md", "docs/infrastructure/compute.md", &format!("issues/{issue}.md")] {
        assert!(files.lines().any(|l| l == f), "{f} is in the commit: {files}");
    }
    // The issue is closed by that commit.
    let text = std::fs::read_to_string(&mirror).unwrap();
    assert!(text.contains("state: closed") && text.contains(&format!("closed_by: {sha}")), "{text}");
    assert!(text.contains("Approved by **ann**") && text.contains("Validated against the live lab"), "progress is mirrored on the issue: {text}");

    // The history is the audit trail.
    let path: Vec<&str> = c["history"].as_array().unwrap().iter().map(|t| t["to"].as_str().unwrap()).collect();
    assert_eq!(path, ["proposed", "analysed", "awaiting_approval", "approved", "executing", "validating", "documenting", "committed", "closed"]);
    assert_eq!(c["history"][3]["actor"], serde_json::json!({"kind": "human", "name": "ann"}));
    let show = lab.ok(&["change", "show", &chg]);
    assert!(show.contains("closed") && show.contains("approved via cli"), "{show}");
}

#[test]
fn shortcuts_are_refused_and_audited() {
    let lab = lab();
    // A workflow that changes the lab does not run without a change.
    let wf = root().join("workflows/lxc-service.yaml");
    let out = lab.refused(&["workflow", "run", wf.to_str().unwrap()]);
    assert!(out.contains("runs as a change") && out.contains("labops change propose"), "{out}");

    // Approval of a plan that changed after it was shown.
    let chg = lab.propose(&["--set", "vmid=131"]);
    let shown = lab.change(&chg)["plan_digest"].as_str().unwrap().to_string();
    let values = root().join("workflows/values/lxc-service.yaml");
    let out = lab.ok(&["change", "replan", &chg, wf.to_str().unwrap(), "--values", values.to_str().unwrap(), "--set", "vmid=132"]);
    assert!(out.contains("new plan sha256:"), "{out}");
    let out = lab.refused(&["change", "approve", &chg, "--plan", &shown]);
    assert!(out.contains("is not the plan of") && out.contains("it changed"), "{out}");
    assert!(lab.guest(131).is_none() && lab.guest(132).is_none());

    // A rejected change never runs.
    let out = lab.ok(&["change", "reject", &chg, "--reason", "not now"]);
    assert!(out.contains("rejected by ann"), "{out}");
    let out = lab.refused(&["change", "approve", &chg]);
    assert!(out.contains("rejected") && out.contains("it is final"), "{out}");
    assert_eq!(lab.change(&chg)["state"], "rejected");
    assert!(lab.guest(132).is_none(), "a rejected change never ran");

    let audit = lab.audit();
    let refused: Vec<String> = audit.iter().filter(|a| a["outcome"].as_str().unwrap_or("").starts_with("refused")).map(|a| a["action"].as_str().unwrap().to_string()).collect();
    assert!(refused.contains(&"workflow_run".to_string()), "{refused:?}");
    assert_eq!(refused.iter().filter(|a| *a == "change_approve").count(), 2, "both approvals were refused and audited: {refused:?}");
    assert!(audit.iter().any(|a| a["action"] == "change_reject" && a["actor"] == "ann"), "{audit:?}");
    assert_eq!(git(&lab.remote(), &["log", "--format=%s", "main"]), "Start", "nothing was committed");
}

/// Over REST, only an approver's own token approves, and only the plan it was shown; `labops
/// serve` then carries the change to its commit.
#[test]
fn rest_approval_needs_an_approver_token_and_the_plan_shown() {
    let lab = lab();
    let token_file = lab.dir.path().join("approver-bob");
    std::fs::write(&token_file, "bob-approver-token-0123456789\n").unwrap();
    let mut cfg = std::fs::read_to_string(&lab.config).unwrap();
    cfg = cfg.replace("[state]", &format!("[[server.approvers]]\nname = \"bob\"\ntoken_file = \"{}\"\n\n[state]", token_file.display()));
    std::fs::write(&lab.config, cfg).unwrap();
    let chg = lab.propose(&[]);
    let digest = lab.change(&chg)["plan_digest"].as_str().unwrap().to_string();
    let served = common::Served::start(&lab.config);
    let c = common::http();
    let url = format!("{}/api/v1/changes/{chg}/approve", served.base);
    let body = serde_json::json!({"plan_digest": digest});

    // The server token (what MCP clients and models hold) cannot approve.
    let r = c.post(&url).bearer_auth(&served.token).json(&body).send().unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().unwrap().contains("approver token"));
    // Nor can anyone without a token.
    assert_eq!(c.post(&url).json(&body).send().unwrap().status(), 401);
    // An approver approving a plan other than the current one is refused.
    let r = c.post(&url).bearer_auth("bob-approver-token-0123456789").json(&serde_json::json!({"plan_digest": "sha256:00"})).send().unwrap();
    assert_eq!(r.status(), 409);
    assert!(r.text().unwrap().contains("it changed"));
    let r = c.post(&url).bearer_auth("bob-approver-token-0123456789").body("{not json").send().unwrap();
    assert_eq!(r.status(), 400);
    assert!(lab.guest(130).is_none(), "nothing ran");

    // Bob approves what he was shown; serve executes, documents, commits and closes.
    let r = c.post(&url).bearer_auth("bob-approver-token-0123456789").json(&body).send().unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().unwrap_or_default());
    let closed = common::eventually(60, "the change closes", || {
        let v: Value = c.get(format!("{}/api/v1/changes/{chg}", served.base)).bearer_auth(&served.token).send().ok()?.json().ok()?;
        (v["state"] == "closed").then_some(v)
    });
    let approval = closed["history"].as_array().unwrap().iter().find(|t| t["to"] == "approved").unwrap();
    assert_eq!(approval["actor"]["name"], "bob");
    assert!(lab.guest(130).is_some());
    let list: Value = c.get(format!("{}/api/v1/changes?all=true", served.base)).bearer_auth(&served.token).send().unwrap().json().unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let refused: Vec<Value> = lab.audit().into_iter().filter(|a| a["action"] == "change_approve" && a["outcome"] == "refused").collect();
    assert_eq!(refused.len(), 2, "the client's and the wrong plan's approvals were audited: {refused:?}");
}

/// A standing approval, recorded by a human, approves the changes it covers in their name as
/// they are proposed; each still gets its record, docs and commit. Outside its scope, or used
/// up, a change waits for a human as usual.
#[test]
fn a_standing_approval_runs_covered_changes_and_only_those() {
    let lab = lab();
    let out = lab.refused(&["change", "standing", "add", "--workflow", "lxc-service", "--target", "*", "--expires", "1h", "--reason", "x"]);
    assert!(out.contains("a bare * is not a limit"), "{out}");
    let out = lab.ok(&[
        "change", "standing", "add", "--workflow", "lxc-service", "--target", "lxc/13*", "--max-uses", "1", "--expires", "1h", "--reason",
        "small service containers on pumped-piglet are routine",
    ]);
    assert!(out.starts_with("sa-1: ann pre-approves lxc-service on lxc/13*"), "{out}");

    // Covered: approved in ann's name at once, executed, documented, committed, closed.
    let wf = root().join("workflows/lxc-service.yaml");
    let values = root().join("workflows/values/lxc-service.yaml");
    let proposal = root().join("workflows/proposals/uptime-kuma.yaml");
    let propose = |vmid: &str| {
        lab.labops(&["change", "propose", wf.to_str().unwrap(), "--values", values.to_str().unwrap(), "--proposal", proposal.to_str().unwrap(), "--set", &format!("vmid={vmid}"), "--as", "claude"])
    };
    let (out, text) = propose("131");
    assert!(out.status.success(), "{text}");
    assert!(text.contains("approved under standing approval sa-1 recorded by ann") && text.contains("chg-1: closed"), "{text}");
    assert!(lab.guest(131).is_some());
    let c = lab.change("chg-1");
    let approval = c["history"].as_array().unwrap().iter().find(|t| t["to"] == "approved").unwrap().clone();
    assert_eq!(approval["actor"], serde_json::json!({"kind": "human", "name": "ann"}));
    assert_eq!(c["history"][0]["actor"]["name"], "claude", "the proposer stays on record");
    assert!(git(&lab.remote(), &["log", "-1", "--format=%B", "main"]).contains("fixes #1"));

    // Used up: the next one waits for a human.
    let (out, text) = propose("132");
    assert!(out.status.success(), "{text}");
    assert_eq!(lab.change("chg-2")["state"], "awaiting_approval", "{text}");
    assert!(lab.guest(132).is_none());
    let list = lab.ok(&["change", "standing", "list"]);
    assert!(list.contains("1/1") && list.contains("active"), "{list}");
    lab.ok(&["change", "standing", "revoke", "sa-1"]);
    assert!(lab.ok(&["change", "standing", "list"]).contains("revoked by ann"));
    let audit = lab.audit();
    assert!(audit.iter().any(|a| a["action"] == "standing_add" && a["outcome"] == "ok" && a["actor"] == "ann"));
    assert!(audit.iter().any(|a| a["action"] == "standing_add" && a["outcome"] == "refused"));
    assert!(audit.iter().any(|a| a["action"] == "standing_revoke"));
}
