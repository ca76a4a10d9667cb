//! Issue #8 through the binary: the owner's design document's Tier 1 items, with the factor
//! values this test states, rank as the documented formula (`labops_core::wishlist::score`)
//! says and explain themselves; `wishlist next` proposes the best ready item as a change (#4),
//! a human approves it, completes the owner's step reporting the hours spent, and the change
//! closes: the item is done, the outcome is recorded against the estimate and the category's
//! multiplier moves.

mod common;

use std::path::PathBuf;

use common::{gitops_repo, labops, FakePve};
use labops_core::wishlist::{self, Calibration, Factor, Item, Provenance, Source, Status};
use serde_json::Value;

struct Lab {
    _fake: FakePve,
    _dir: tempfile::TempDir,
    config: PathBuf,
}

impl Lab {
    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = labops().arg("--config").arg(&self.config).args(args).env("USER", "ann").output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    }
    fn ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.run(args);
        assert!(ok, "labops {args:?} failed: {text}");
        text
    }
    fn json(&self, args: &[&str]) -> Value {
        let out = labops().arg("--config").arg(&self.config).args(args).env("USER", "ann").output().unwrap();
        assert!(out.status.success(), "labops {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// The Tier 1 items: `(title, category, depends on, factors)`. For Tailscale the document's own
/// numbers (complexity 6/10, learning value 8/10, no dependencies, no new hardware, high time
/// savings and a security gain); the others as this test states them.
const TIER1: &[(&str, &str, &[i64], &[(&str, f64)])] = &[
    ("Tailscale integration", "networking", &[], &[("time_saved", 8.0), ("security", 9.0), ("learning", 8.0), ("complexity", 6.0), ("risk", 2.0), ("cost_once", 0.0), ("cost_monthly", 0.0), ("effort", 2.0)]),
    ("Continue.dev + local LLM", "ai", &[], &[("time_saved", 6.0), ("security", 2.0), ("learning", 7.0), ("complexity", 5.0), ("risk", 2.0), ("cost_once", 0.0), ("cost_monthly", 3.0), ("effort", 3.0)]),
    ("Paperless-NGX + AI search", "documents", &[2], &[("time_saved", 3.0), ("security", 1.0), ("learning", 6.0), ("complexity", 6.0), ("risk", 3.0), ("cost_once", 0.0), ("cost_monthly", 2.0), ("effort", 6.0)]),
];

fn expected(id: i64, category: &str, factors: &[(&str, f64)]) -> f64 {
    let item = Item {
        id,
        title: String::new(),
        description: String::new(),
        source: Source::Owner,
        category: category.into(),
        depends_on: vec![],
        hardware: None,
        factors: factors.iter().map(|(n, v)| (n.to_string(), Factor { value: *v, provenance: Provenance::Owner, reason: String::new() })).collect(),
        status: Status::Idea,
        changes: vec![],
        created_ms: 0,
    };
    wishlist::score(&item, &Calibration::default()).score
}

#[test]
fn tier_one_ranks_by_the_formula_and_the_best_ready_item_goes_through_a_change() {
    let fake = FakePve::reference();
    let dir = tempfile::tempdir().unwrap();
    let repo = gitops_repo(dir.path(), &[]);
    let config = fake.config(dir.path(), &format!("{repo}\n[forge]\nkind = \"local\"\n"));
    let lab = Lab { _fake: fake, _dir: dir, config };

    for (title, category, deps, factors) in TIER1 {
        let mut args: Vec<String> = vec!["wishlist".into(), "add".into(), "--title".into(), title.to_string(), "--category".into(), category.to_string(), "--reason".into(), "stated by the test".into()];
        for d in *deps {
            args.extend(["--depends-on".into(), d.to_string()]);
        }
        for (n, v) in *factors {
            args.extend(["--factor".into(), format!("{n}={v}")]);
        }
        lab.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    // Bad input is named.
    let (ok, text) = lab.run(&["wishlist", "add", "--title", "x", "--category", "net", "--factor", "learning=12", "--depends-on", "99"]);
    assert!(!ok && text.contains("learning = 12 is out of range: 0 to 10") && text.contains("depends_on: no item #99"), "{text}");

    // The ranking is the formula's, with Paperless after Continue.dev, which it needs.
    let list = lab.json(&["wishlist", "list", "--json"]);
    let scores: Vec<f64> = TIER1.iter().enumerate().map(|(i, (_, c, _, f))| expected(i as i64 + 1, c, f)).collect();
    let mut by_formula: Vec<usize> = (0..3).collect();
    by_formula.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]));
    let listed: Vec<&str> = list.as_array().unwrap().iter().map(|l| l["item"]["title"].as_str().unwrap()).collect();
    assert_eq!(listed, by_formula.iter().map(|i| TIER1[*i].0).collect::<Vec<_>>(), "{list}");
    assert_eq!(listed[0], "Tailscale integration", "Tailscale ranks #1, as the document says");
    for (l, s) in list.as_array().unwrap().iter().zip(by_formula.iter().map(|i| scores[*i])) {
        assert!((l["breakdown"]["score"].as_f64().unwrap() - s).abs() < 1e-9);
    }
    assert_eq!(list[2]["blocked_by"], serde_json::json!([2]), "{list}");
    let table = lab.ok(&["wishlist", "list"]);
    assert!(table.contains("█") && table.contains("Tailscale integration"), "{table}");

    // Each explains itself: every factor with where it came from, the formula with its numbers.
    let e = lab.json(&["wishlist", "explain", "1", "--json"]);
    let factors = e["factors"].as_array().unwrap();
    assert_eq!(factors.len(), wishlist::FACTORS.len());
    let complexity = factors.iter().find(|f| f["name"] == "complexity").unwrap();
    assert_eq!((complexity["value"].as_f64(), complexity["provenance"].as_str()), (Some(6.0), Some("owner")));
    let formula = e["formula"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_string()).collect::<Vec<_>>().join("\n");
    assert!(formula.contains("0.3 learning 8") && formula.contains("0.35 complexity 6") && formula.contains(&format!("= {:.1}/10", scores[0])), "{formula}");

    // The best ready item becomes a change; nothing is approved by proposing.
    let next = lab.json(&["wishlist", "next", "--json"]);
    assert_eq!(next["item"], 1, "{next}");
    let chg = next["change"].as_str().unwrap().to_string();
    let c = lab.json(&["change", "show", &chg, "--json"]);
    assert_eq!(c["state"], "awaiting_approval", "{c}");
    let proposal = c["proposal"].to_string();
    assert!(proposal.contains("ROI") && proposal.contains("Tailscale integration"), "{proposal}");
    assert_eq!(lab.json(&["wishlist", "list", "--json"])[0]["item"]["status"], "proposed");

    // A human approves; the owner's step waits; completing it with the hours spent closes the
    // change, and the wishlist follows.
    lab.ok(&["change", "approve", &chg]);
    let run = lab.json(&["change", "show", &chg, "--json"])["run_id"].as_i64().expect("a run").to_string();
    assert_eq!(lab.json(&["wishlist", "list", "--json"])[0]["item"]["status"], "in_progress");
    lab.ok(&["workflow", "complete-step", &run, "implement", "--data", r#"{"result": "exit node up on still-fawn", "effort_hours": 5, "cost": "12"}"#]);
    let c = lab.json(&["change", "show", &chg, "--json"]);
    assert_eq!(c["state"], "closed", "{c}");
    let list = lab.json(&["wishlist", "list", "--json"]);
    let done = list.as_array().unwrap().iter().find(|l| l["item"]["id"] == 1).unwrap();
    assert_eq!(done["item"]["status"], "done", "{done}");
    assert_eq!(done["item"]["factors"]["effort_actual"]["value"], 5.0);
    assert_eq!(done["item"]["factors"]["effort_actual"]["provenance"], "measured");
    assert_eq!(done["item"]["factors"]["cost_once_actual"]["value"], 12.0, "the reported cost too");
    assert!(done["item"]["factors"]["duration_actual"]["value"].as_f64().unwrap() >= 0.0);
    // Learned: networking effort 5 h against 2 estimated, shrunk towards 1 by the prior.
    let learning = lab.json(&["wishlist", "learning", "--json"]);
    let m = learning["multipliers"].as_array().unwrap().iter().find(|m| m[0] == "networking" && m[1] == "effort").expect("a networking multiplier").clone();
    assert!((m[2].as_f64().unwrap() - (2.5f64.ln() / (1.0 + wishlist::PRIOR_WEIGHT)).exp()).abs() < 1e-9, "{learning}");
    // Next is Continue.dev (Paperless waits for it).
    let next = lab.json(&["wishlist", "next", "--json"]);
    assert_eq!(next["item"], 2, "{next}");
    // The outcome by hand, too: the item is done and the ai category learns.
    let (ok, text) = lab.run(&["wishlist", "outcome", "2", "effort=9", "cost_monthly=3"]);
    assert!(ok, "{text}");
    let learning = lab.json(&["wishlist", "learning", "--json"]);
    assert_eq!(learning["outcomes"], 4, "effort and cost of #1, effort and cost of #2: {learning}");
    // Dropping: the item leaves the ranking; a closed item cannot be dropped.
    lab.ok(&["wishlist", "drop", "3", "--reason", "not this year"]);
    let list = lab.json(&["wishlist", "list", "--json"]);
    assert!(list.as_array().unwrap().iter().all(|l| l["rank"].is_null()), "nothing open is left: {list}");
    let (ok, text) = lab.run(&["wishlist", "drop", "1"]);
    assert!(!ok && text.contains("already closed"), "{text}");
}

/// Missing factors are estimated by the AI engine (a scripted model speaking Ollama's wire
/// format): each value checked like an owner's, stored marked as an estimate with the model's
/// reason; an out-of-range value is rejected and said; the prompt carries the lab as counts.
#[test]
fn missing_factors_are_estimated_and_marked_and_bad_estimates_are_refused() {
    use labops_testkit::llm::{ScriptedLlm, Turn};
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let answer = serde_json::json!({
        "time_saved": {"value": 3, "reason": "documents are found in seconds instead of minutes"},
        "learning": {"value": 14, "reason": "very much"},
        "complexity": {"value": 5, "reason": "a compose stack and an OCR model"},
    });
    let llm = rt.block_on(ScriptedLlm::start(vec![Turn::text(answer.to_string())])).unwrap();
    let fake = FakePve::reference();
    let dir = tempfile::tempdir().unwrap();
    let repo = gitops_repo(dir.path(), &[]);
    let config = fake.config(dir.path(), &format!("{repo}\n[forge]\nkind = \"local\"\n[ai.local]\nprovider = \"ollama\"\nurl = \"{}\"\nmodel = \"scripted\"\n", llm.url()));
    let lab = Lab { _fake: fake, _dir: dir, config };
    lab.ok(&["wishlist", "add", "--title", "Paperless-NGX + AI search", "--category", "documents", "--description", "Document management with local LLM", "--factor", "effort=6"]);
    let out = lab.ok(&["wishlist", "estimate", "1"]);
    assert!(out.contains("time_saved = 3") && out.contains("rejected: learning = 14 is out of range"), "{out}");
    let e = lab.json(&["wishlist", "explain", "1", "--json"]);
    let f = |n: &str| e["factors"].as_array().unwrap().iter().find(|f| f["name"] == n).unwrap().clone();
    assert_eq!((f("time_saved")["value"].as_f64(), f("time_saved")["provenance"].as_str()), (Some(3.0), Some("estimate")));
    assert!(f("time_saved")["reason"].as_str().unwrap().starts_with("AI estimate ("), "{e}");
    assert_eq!(f("learning")["provenance"], "default", "the rejected value is not stored");
    assert_eq!(f("effort")["provenance"], "owner", "the owner's value stays");
    let prompt = serde_json::to_string(&llm.requests()[0].body).unwrap();
    assert!(prompt.contains("Paperless-NGX") && prompt.contains("5 vm"), "the item and the lab as counts: {prompt}");
}
