//! The change workflow end to end through the binary with `[forge] kind = "github"`: the issue
//! opens on GitHub with the analysis, approval and progress arrive as comments and labels, and
//! the commit that says `fixes #N` closes it. GitHub is a loopback server replaying the answers
//! recorded from the real API by `@octokit/fixtures` (opening an issue, adding labels), with the
//! REST description's example for comments and the recorded issue, closed, for the close; the
//! lab is fakepve, the GitOps repository a real git repository pushed to a bare remote.

mod common;


use common::{FakePve, git, gitops_repo, labops, root};
use labops_testkit::github::{Exchange, Replay, example, scenario};
use serde_json::{Value, json};

const REPO: &str = "octokit-fixture-org/add-labels-to-issue";
const ISSUES: &str = "/repos/octokit-fixture-org/add-labels-to-issue/issues";
const TOKEN: &str = "ghp_0000000000000000000000000000000000canary";


/// GitHub for one change: its issue opens as #1 (the recorded answer), takes any number of
/// comments and labels, reads open until it is closed, then closed.
fn github() -> Vec<Exchange> {
    let recorded = scenario("add-labels-to-issue");
    let open = recorded[0].response.clone();
    let mut closed = open.clone();
    closed["state"] = "closed".into();
    closed["state_reason"] = "completed".into();
    closed["closed_at"] = "2017-10-10T16:00:00Z".into();
    vec![
        recorded[0].clone(),
        recorded[1].clone().repeated(),
        Exchange::new("POST", &format!("{ISSUES}/1/comments"), 201, example("issue-comment"), "OpenAPI example issue-comment").repeated(),
        Exchange::new("GET", &format!("{ISSUES}/1"), 200, open, "@octokit/fixtures add-labels-to-issue #0, served for GET"),
        Exchange::new("PATCH", &format!("{ISSUES}/1"), 200, closed.clone(), "the recorded issue, closed"),
        Exchange::new("GET", &format!("{ISSUES}/1"), 200, closed, "the recorded issue, closed").repeated(),
    ]
}

#[test]
fn a_change_opens_comments_labels_and_closes_its_github_issue() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let replay = rt.block_on(Replay::start(github()));

    let fake = FakePve::reference();
    let dir = tempfile::tempdir().unwrap();
    let repo = gitops_repo(dir.path(), &[]);
    let (work, remote) = (dir.path().join("gitops"), dir.path().join("remote.git"));
    let token = dir.path().join("github-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let extra = format!(
        "{repo}\n[forge]\nkind = \"github\"\nrepo = \"{REPO}\"\ntoken_file = \"{}\"\napi_url = \"{}\"\n",
        token.display(),
        replay.url()
    );
    let config = fake.config(dir.path(), &extra);
    let run = |args: &[&str]| {
        let out = labops().arg("--config").arg(&config).args(args).env("USER", "ann").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "labops {args:?} failed: {text}");
        assert!(!text.contains("canary"), "the token was printed: {text}");
        text
    };

    let validate = run(&["config", "validate"]);
    assert!(!validate.contains("forge"), "{validate}");

    let wf = root().join("workflows/lxc-service.yaml");
    let values = root().join("workflows/values/lxc-service.yaml");
    let proposal = root().join("workflows/proposals/uptime-kuma.yaml");
    let out = run(&["change", "propose", wf.to_str().unwrap(), "--values", values.to_str().unwrap(), "--proposal", proposal.to_str().unwrap()]);
    let chg = out.split("labops change approve ").nth(1).unwrap().split('`').next().unwrap().to_string();
    let c: Value = serde_json::from_str(&run(&["change", "show", &chg, "--json"])).unwrap();
    assert_eq!((c["state"].as_str(), c["issue"].as_u64()), (Some("awaiting_approval"), Some(1)), "{c}");

    let out = run(&["change", "approve", &chg]);
    assert!(out.contains(&format!("{chg}: closed")), "{out}");
    let c: Value = serde_json::from_str(&run(&["change", "show", &chg, "--json"])).unwrap();
    let sha = c["commit"].as_str().expect("committed").to_string();
    let message = git(&remote, &["log", "-1", "--format=%B", "main"]);
    assert!(message.contains("fixes #1"), "{message}");
    let files = git(&remote, &["show", "--name-only", "--format=", "main"]);
    assert!(!files.lines().any(|f| f.starts_with("issues/")), "no local issue mirror with a GitHub forge: {files}");
    let changelog = std::fs::read_to_string(work.join("CHANGELOG.md")).unwrap();
    assert!(changelog.contains("https://github.com/octokit-fixture-org/add-labels-to-issue/issues/1"), "the docs link the GitHub issue: {changelog}");

    // What labops sent to GitHub, every request answered by the replay.
    let sent = replay.sent();
    for s in &sent {
        assert!(s.served.is_some(), "{} {} was not a request GitHub was expected to get", s.method, s.path);
        assert_eq!(s.header("authorization"), Some(format!("Bearer {TOKEN}").as_str()));
    }
    let open = &sent[0];
    assert_eq!((open.method.as_str(), open.path.as_str()), ("POST", ISSUES));
    assert_eq!(open.body["title"], "Create an LXC for Uptime Kuma on pumped-piglet");
    assert_eq!(open.body["labels"], json!(["labops-change", "awaiting-approval"]));
    let body = open.body["body"].as_str().unwrap();
    assert!(body.contains("## Why") && body.contains("## Rollback plan") && body.contains(c["plan_digest"].as_str().unwrap()), "{body}");

    let comments: Vec<&str> = sent.iter().filter(|s| s.path.ends_with("/comments")).map(|s| s.body["body"].as_str().unwrap()).collect();
    assert!(comments.iter().any(|c| c.starts_with("Approved by **ann**")), "{comments:?}");
    assert!(comments.iter().any(|c| c.starts_with("Validated against the live lab")), "{comments:?}");
    assert_eq!(comments.last().copied(), Some(format!("Closed by commit {sha}.").as_str()), "{comments:?}");
    let labels: Vec<&Value> = sent.iter().filter(|s| s.path.ends_with("/labels")).map(|s| &s.body["labels"]).collect();
    assert!(labels.contains(&&json!(["approved"])), "{labels:?}");
    let patches: Vec<&Value> = sent.iter().filter(|s| s.method == "PATCH").map(|s| &s.body).collect();
    assert_eq!(patches, [&json!({"state": "closed", "state_reason": "completed"})]);
    assert_eq!(sent.last().map(|s| (s.method.as_str(), s.path.as_str())), Some(("GET", format!("{ISSUES}/1").as_str())), "the state is read back");
    assert!(replay.unused().is_empty(), "{:#?}", replay.unused());
    drop(replay);
}
