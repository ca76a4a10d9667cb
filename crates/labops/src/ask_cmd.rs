//! `labops ask` (the universal task processor from the CLI, streaming) and `labops bench eval`
//! (the eval set run against a configured model, scored).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use labops_ai::agent::{Document, Event, Observer};
use labops_ai::engine::{Ai, Budget, Call};
use labops_ai::redact::Redactor;
use labops_engine::Lab;
use labops_engine::tasks::Tasks;
use labops_server::mcp::LabMcp;
use labops_server::tasks::{LabToolbox, TaskView};
use labops_store::Store;
use serde::Deserialize;
use serde_json::json;

use crate::config::Config;

/// Prints what the agent does on stderr and the streamed answer on stdout.
struct Live {
    json: bool,
}

impl Observer for Live {
    fn event(&self, e: &Event) {
        if self.json {
            return;
        }
        match e {
            Event::Tool { name, arguments, ok } => {
                let args = arguments.to_string();
                let args: String = args.chars().take(120).collect();
                eprintln!("  {} {name} {args}", if *ok { "→" } else { "✗" });
            }
            Event::Repair { problem } => eprintln!("  ↺ sent back: {}", problem.chars().take(160).collect::<String>()),
            Event::Model { provider, route } => eprintln!("  · {provider} ({route})"),
        }
    }

    fn text(&self, t: &str) {
        if !self.json {
            use std::io::Write;
            print!("{t}");
            let _ = std::io::stdout().flush();
        }
    }
}

/// Reads `--doc FILE` attachments (untrusted text, at most 256 KiB each).
fn documents(files: &[PathBuf]) -> anyhow::Result<Vec<Document>> {
    files
        .iter()
        .map(|f| {
            let meta = std::fs::metadata(f).with_context(|| format!("--doc {}", f.display()))?;
            anyhow::ensure!(meta.len() <= 256 * 1024, "--doc {} is {} bytes; attach at most 256 KiB (an excerpt of the log)", f.display(), meta.len());
            let text = std::fs::read_to_string(f).with_context(|| format!("--doc {} is not UTF-8 text", f.display()))?;
            Ok(Document { label: f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), text })
        })
        .collect()
}

fn print_view(v: &TaskView) {
    match v.kind.as_str() {
        "answer" => println!("\n{}", v.text.trim()),
        "clarify" => {
            println!("\nQuestion: {}", v.text.trim());
        }
        "proposal" => {
            println!("\nProposed change: {}", v.text.lines().next().unwrap_or(""));
            println!("  workflow: {}  target: {}", v.workflow.as_deref().unwrap_or("?"), v.target.as_deref().unwrap_or("-"));
            match (&v.change, &v.change_error) {
                (Some(c), _) => {
                    println!("  change {} ({}), issue #{}", c.id, c.state, c.issue.map(|n| n.to_string()).unwrap_or_else(|| "-".into()));
                    println!("  nothing has changed; a human approves with `labops change approve {}`", c.id);
                }
                (None, Some(e)) => println!("  not proposed: {e}"),
                (None, None) => {}
            }
        }
        _ => println!("\nNot done: {}", v.text.trim()),
    }
    if !v.grounding_errors.is_empty() {
        println!("  (names the model used that are not in the lab: {})", v.grounding_errors.join(", "));
    }
    eprintln!("  {} model call(s) via {}, ${:.4}", v.model_calls, if v.providers.is_empty() { "none".into() } else { v.providers.join(", ") }, v.cost_usd);
}

/// `labops ask`.
pub async fn ask(cfg: &Config, store: Store, lab: &Lab, text: &str, docs: &[PathBuf], hard: bool, json_out: bool) -> anyhow::Result<ExitCode> {
    let documents = documents(docs)?;
    anyhow::ensure!(text.len() <= 16 * 1024, "the request is {} bytes; keep it under 16 KiB and attach long text with --doc", text.len());
    let changes = crate::change_cmd::service(cfg, store.clone()).await?;
    let tasks = crate::ai_cmd::tasks(cfg, &store, Some(changes))?;
    lab.wait_until_reported(std::time::Duration::from_secs(20)).await;
    let mcp = LabMcp::new(lab.clone(), "cli");
    let toolbox = LabToolbox { mcp: &mcp, library: tasks.library.clone() };
    let call = Call { actor: "cli".into(), hard, ..Default::default() };
    let r = tasks.process(&toolbox, text, &documents, call, &Live { json: json_out }).await;
    let view = TaskView::from(r);
    if json_out {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print_view(&view);
    }
    Ok(if view.kind == "refused" { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// One eval case (see evals/homelab.yaml).
#[derive(Debug, Deserialize)]
struct Case {
    id: String,
    request: String,
    #[serde(default)]
    needs: Option<String>,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
struct Expect {
    kind: String,
    #[serde(default)]
    facts: Vec<Fact>,
    #[serde(default)]
    absent: Vec<String>,
    #[serde(default)]
    workflow: Option<String>,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    params: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Fact {
    One(String),
    Any(Vec<String>),
}

/// How one case went.
fn score(c: &Case, v: &TaskView) -> Result<(), String> {
    let reply = format!("{} {}", v.text, v.entities.join(" ")).to_lowercase();
    let facts_ok = || -> Result<(), String> {
        for f in &c.expect.facts {
            let ok = match f {
                Fact::One(s) => reply.contains(&s.to_lowercase()),
                Fact::Any(list) => list.iter().any(|s| reply.contains(&s.to_lowercase())),
            };
            if !ok {
                return Err(format!("missing fact {}", match f { Fact::One(s) => s.clone(), Fact::Any(l) => l.join("|") }));
            }
        }
        for a in &c.expect.absent {
            if reply.contains(&a.to_lowercase()) {
                return Err(format!("says {a:?}, which it must not"));
            }
        }
        Ok(())
    };
    match (c.expect.kind.as_str(), v.kind.as_str()) {
        ("answer", "answer") => facts_ok(),
        ("clarify", "clarify") => Ok(()),
        ("refuse", "answer" | "clarify" | "refused") => Ok(()),
        ("proposal", "proposal") => {
            if v.workflow != c.expect.workflow {
                return Err(format!("proposed {:?}, expected {:?}", v.workflow, c.expect.workflow));
            }
            let target = v.target.clone().unwrap_or_default();
            if let Some(want) = &c.expect.target
                && !(target == *want || target.ends_with(&format!("/{want}")))
            {
                return Err(format!("target {target:?}, expected {want:?}"));
            }
            let values = v.values.clone().unwrap_or_default();
            for (k, want) in &c.expect.params {
                let got = values.get(k).map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string()));
                let want = want.as_str().map(str::to_string).unwrap_or_else(|| want.to_string());
                if got.as_deref() != Some(want.as_str()) {
                    return Err(format!("{k} = {got:?}, expected {want:?}"));
                }
            }
            Ok(())
        }
        (want, got) => Err(format!("expected {want}, got {got}: {}", v.text.chars().take(100).collect::<String>())),
    }
}

/// `labops bench eval`.
pub async fn eval(cfg: &Config, store: Store, lab: &Lab, cases: &Path, model: &str, limit: Option<usize>, json_out: bool) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(cases).with_context(|| format!("--cases {}", cases.display()))?;
    let all: Vec<Case> = serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", cases.display()))?;
    let (local, cloud) = crate::ai_cmd::models(cfg)?;
    let (local, cloud) = match model {
        "local" => (Some(local.context("--model local: no [ai.local] is configured")?), None),
        "cloud" => (None, Some(cloud.context("--model cloud: no [ai.cloud] is configured")?)),
        other => anyhow::bail!("--model {other:?}: use local or cloud"),
    };
    let model_id = local.as_ref().or(cloud.as_ref()).map(|m| m.id().to_string()).unwrap_or_default();
    let ai = Arc::new(Ai::new(local, cloud, Budget::default(), Redactor::new(cfg.ai.sensitive_values.clone()), Some(store.clone())));
    let mut tasks = crate::ai_cmd::tasks(cfg, &store, None)?;
    tasks.ai = ai;
    // Drafts only: the eval proposes nothing for real.
    let tasks = Tasks { changes: None, ..tasks };
    lab.wait_until_reported(std::time::Duration::from_secs(20)).await;
    let has_k8s = lab.snapshot().inventory.entities().iter().any(|e| e.kind == labops_core::inventory::EntityKind::K8sNode);
    let mcp = LabMcp::new(lab.clone(), "bench");
    let toolbox = LabToolbox { mcp: &mcp, library: tasks.library.clone() };
    let run: Vec<&Case> = all.iter().filter(|c| c.needs.as_deref() != Some("kubernetes") || has_k8s).take(limit.unwrap_or(usize::MAX)).collect();
    let skipped = all.len() - run.len().min(all.len());
    let bar = indicatif::ProgressBar::new(run.len() as u64);
    bar.set_style(indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()));
    if json_out {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let started = Instant::now();
    let mut rows = Vec::new();
    let (mut passed, mut grounding, mut grounded_proposals_bad, mut calls) = (0, 0, 0, 0u32);
    for c in &run {
        bar.set_message(c.id.clone());
        let t0 = Instant::now();
        let r = tasks.process(&toolbox, &c.request, &[], Call { actor: "bench".into(), ..Default::default() }, labops_engine::tasks::quiet()).await;
        // A proposal's target must resolve, whatever the model did.
        if let labops_ai::agent::Outcome::Proposal(d) = &r.report.outcome
            && let Some(id) = &d.target_id
            && lab.snapshot().inventory.get(id).is_none()
        {
            grounded_proposals_bad += 1;
        }
        let v = TaskView::from(r);
        let verdict = score(c, &v);
        passed += usize::from(verdict.is_ok());
        grounding += v.grounding_errors.len();
        calls += v.model_calls;
        rows.push(json!({"id": c.id, "expected": c.expect.kind, "got": v.kind, "pass": verdict.is_ok(), "why": verdict.err(), "grounding_errors": v.grounding_errors, "model_calls": v.model_calls, "seconds": t0.elapsed().as_secs_f64()}));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let n = run.len().max(1);
    let summary = json!({
        "model": model_id, "cases": run.len(), "skipped_needing_kubernetes": skipped, "passed": passed,
        "pass_rate": passed as f64 / n as f64, "grounding_errors": grounding, "grounding_errors_in_proposals": grounded_proposals_bad,
        "model_calls": calls, "seconds": started.elapsed().as_secs_f64(),
    });
    if json_out {
        println!("{}", serde_json::to_string_pretty(&json!({"summary": summary, "cases": rows}))?);
    } else {
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED).set_header(["case", "expected", "got", "", "why"]);
        for r in &rows {
            t.add_row([
                r["id"].as_str().unwrap_or("").to_string(),
                r["expected"].as_str().unwrap_or("").to_string(),
                r["got"].as_str().unwrap_or("").to_string(),
                if r["pass"].as_bool() == Some(true) { "pass".into() } else { "FAIL".into() },
                r["why"].as_str().unwrap_or("").chars().take(70).collect(),
            ]);
        }
        println!("{t}");
        println!(
            "{model_id}: {passed}/{} passed ({:.0}%), {grounding} grounding error(s), {grounded_proposals_bad} in proposals, {calls} model calls, {:.0} s{}",
            run.len(),
            100.0 * passed as f64 / n as f64,
            started.elapsed().as_secs_f64(),
            if skipped > 0 { format!(" ({skipped} case(s) need a Kubernetes cluster: skipped)") } else { String::new() }
        );
    }
    Ok(if grounded_proposals_bad == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
