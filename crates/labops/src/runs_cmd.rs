//! `labops workflow run|runs|status|confirm|complete-step|cancel|resume`: runs in the state
//! database, driven by whoever acts on them. Every command here is a thin wrapper around
//! [`labops_engine::runs::Engine`].

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use labops_engine::runs::{Driven, Engine, RunStatus};
use labops_store::runs::{RunEvent, TERMINAL};
use labops_store::{AuditEntry, Store};
use serde_json::{Value, json};

/// Who acts from this CLI: `--as`, else `$USER`.
pub fn actor(explicit: Option<&str>) -> String {
    explicit
        .map(str::to_owned)
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Audits a human action on a run.
pub async fn audit(store: &Store, actor: &str, action: &str, run: i64, outcome: &str, detail: Value) {
    let e = AuditEntry {
        at_ms: labops_engine::lab::now_ms(),
        actor: actor.to_string(),
        action: action.to_string(),
        target: Some(format!("run/{run}")),
        outcome: outcome.to_string(),
        detail,
    };
    if let Err(err) = store.audit(&e).await {
        tracing::warn!("audit write failed: {err}");
    }
}

/// Parses `17` or `run-17`.
pub fn run_id(s: &str) -> anyhow::Result<i64> {
    s.trim_start_matches("run-")
        .parse()
        .map_err(|_| anyhow::anyhow!("{s:?} is not a run number; `labops workflow runs` lists them"))
}

/// Drives a run, then, when it belongs to a change and has ended, moves the change on.
async fn drive_then_change(changes: &labops_engine::changes::Changes, id: i64) -> anyhow::Result<ExitCode> {
    let code = drive_and_report(changes.engine(), id, false).await?;
    let run = changes.engine().status(id).await?.run;
    match run.change_id {
        Some(n) if TERMINAL.contains(&run.state.as_str()) => crate::change_cmd::advance_and_report(changes, &format!("chg-{n}"), false).await,
        _ => Ok(code),
    }
}

/// Drives a run once and prints where it stands.
pub async fn drive_and_report(engine: &Engine, id: i64, json_out: bool) -> anyhow::Result<ExitCode> {
    let before = engine.store().run_events(id, 0, u32::MAX).await?.last().map(|e| e.seq).unwrap_or(0);
    let driven = engine.drive(id).await?;
    if !json_out {
        for e in engine.store().run_events(id, before, u32::MAX).await? {
            println!("{}", event_line(&e));
        }
    }
    report(engine, id, &driven, json_out).await
}

async fn report(engine: &Engine, id: i64, driven: &Driven, json_out: bool) -> anyhow::Result<ExitCode> {
    let status = engine.status(id).await?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&json!({"driven": driven, "status": status}))?);
    } else {
        match driven {
            Driven::Finished { outcome } => println!("run {id} ended: {outcome}"),
            Driven::Waiting { reasons } => {
                println!("run {id} waits for:");
                for r in reasons {
                    println!("  - {r}");
                }
            }
            Driven::Busy { owner } => println!(
                "run {id} is driven by another labops process ({owner}), which picks this up; follow it with `labops workflow status {id} --follow` (if that process is gone, `labops workflow resume {id}` after 5 s)"
            ),
        }
        if let Some(r) = &status.run.report {
            print_report(r);
        }
    }
    Ok(match driven {
        Driven::Finished { outcome } if outcome != "succeeded" => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    })
}

fn print_report(r: &Value) {
    if r["reason"].is_null() {
        return;
    }
    println!("reason: {}", r["reason"].as_str().unwrap_or_default());
    for u in r["undone"].as_array().into_iter().flatten() {
        println!("  undone   {}: {}", u["step"].as_str().unwrap_or("?"), u["what"].as_str().unwrap_or("?"));
    }
    for u in r["not_undone"].as_array().into_iter().flatten() {
        println!("  NOT UNDONE {}: {}", u["step"].as_str().unwrap_or("?"), u["why"].as_str().unwrap_or("?"));
    }
    let not_run: Vec<&str> = r["not_run"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if !not_run.is_empty() {
        println!("  not run: {}", not_run.join(", "));
    }
}

/// One event as a line for humans.
pub fn event_line(e: &RunEvent) -> String {
    let step = e.step.as_deref().map(|s| format!(" {s}")).unwrap_or_default();
    let d = &e.detail;
    let extra = match e.kind.as_str() {
        "step_started" => format!("attempt {}", d["attempt"]),
        "step_progress" => d["message"].as_str().unwrap_or_default().to_string(),
        "step_retry" => format!("attempt {} failed: {}; retrying in {} ms", d["attempt"], d["error"].as_str().unwrap_or("?"), d["wait_ms"]),
        "step_failed" => d["error"].as_str().unwrap_or_default().to_string(),
        "step_waiting" => d["instructions"].as_str().or(d["reason"].as_str()).unwrap_or_default().to_string(),
        "step_awaiting_confirmation" => d["question"].as_str().unwrap_or_default().to_string(),
        "step_compensated" => d["what"].as_str().unwrap_or("nothing to undo").to_string(),
        "step_compensation_failed" => d["why"].as_str().unwrap_or_default().to_string(),
        "approved" | "cancel_requested" | "step_confirmed" => format!("by {}", d["by"].as_str().unwrap_or("?")),
        "rollback_started" => d["reason"].as_str().unwrap_or_default().to_string(),
        "finished" => d["outcome"].as_str().unwrap_or_default().to_string(),
        _ => String::new(),
    };
    let kind = e.kind.replace('_', " ");
    format!("[run {} #{}] {kind}{step}{}", e.run_id, e.seq, if extra.is_empty() { String::new() } else { format!(": {extra}") })
}

/// Drives the run (whenever it changes) and shows its progress until it ends: a progress bar per
/// step on a terminal, one line per event otherwise.
pub async fn follow(engine: &Engine, id: i64) -> anyhow::Result<ExitCode> {
    let driver = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut last_seen = -1;
            loop {
                let run = engine.store().run(id).await?.context("the run disappeared")?;
                if TERMINAL.contains(&run.state.as_str()) {
                    return anyhow::Ok(());
                }
                if run.updated_ms != last_seen {
                    if let Driven::Finished { .. } = engine.drive(id).await? {
                        return Ok(());
                    }
                    last_seen = engine.store().run(id).await?.map(|r| r.updated_ms).unwrap_or(0);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let tty = std::io::stderr().is_terminal();
    let bars = MultiProgress::new();
    let mut by_step: std::collections::HashMap<String, ProgressBar> = std::collections::HashMap::new();
    let style = ProgressStyle::with_template("{spinner} {prefix:24} [{bar:20}] {msg}")
        .expect("static template")
        .progress_chars("=> ");
    let status = engine.status(id).await?;
    if tty {
        for s in &status.steps {
            let pb = bars.add(ProgressBar::new(100).with_style(style.clone()).with_prefix(s.name.clone()));
            pb.set_message(s.state.clone());
            by_step.insert(s.name.clone(), pb);
        }
    }
    let mut seq = 0;
    let mut waiting_said = String::new();
    loop {
        for e in engine.store().run_events(id, seq, 1000).await? {
            seq = e.seq;
            match (&e.step, by_step.get(e.step.as_deref().unwrap_or_default())) {
                (Some(_), Some(pb)) => {
                    let msg = event_line(&e);
                    let msg = msg.split_once("] ").map(|(_, m)| m.to_string()).unwrap_or(msg);
                    if let Some(f) = e.detail["fraction"].as_f64() {
                        pb.set_position((f * 100.0) as u64);
                    }
                    match e.kind.as_str() {
                        "step_succeeded" | "step_compensated" => pb.finish_with_message(msg),
                        "step_started" => {
                            pb.set_position(0);
                            pb.enable_steady_tick(Duration::from_millis(120));
                            pb.set_message(msg);
                        }
                        _ => pb.set_message(msg),
                    }
                }
                _ if tty => bars.println(event_line(&e))?,
                _ => eprintln!("{}", event_line(&e)),
            }
        }
        let run = engine.store().run(id).await?.context("the run disappeared")?;
        if TERMINAL.contains(&run.state.as_str()) {
            break;
        }
        if driver.is_finished() {
            break;
        }
        let waits: Vec<String> = engine
            .store()
            .run_steps(id)
            .await?
            .iter()
            .filter(|s| matches!(s.state.as_str(), "waiting_human" | "awaiting_confirmation"))
            .map(|s| format!("{} ({})", s.name, s.state.replace('_', " ")))
            .collect();
        let say = if run.state == "awaiting_approval" {
            "waiting for its change's approval: `labops change approve` in another terminal".to_string()
        } else if !waits.is_empty() {
            format!("waiting for: {} (`labops workflow status {id}` says what to do)", waits.join(", "))
        } else {
            String::new()
        };
        if !say.is_empty() && say != waiting_said {
            if tty { bars.println(&say)? } else { eprintln!("{say}") }
            waiting_said = say;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for pb in by_step.values() {
        if !pb.is_finished() {
            pb.abandon();
        }
    }
    match driver.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(e) => anyhow::bail!("the run driver stopped: {e}"),
    }
    let run = engine.store().run(id).await?.context("the run disappeared")?;
    report(engine, id, &Driven::Finished { outcome: run.state }, false).await
}

/// `labops workflow status RUN` as text.
pub fn print_status(s: &RunStatus) {
    let r = &s.run;
    println!("run {} ({}): {}", r.id, r.workflow, r.state);
    println!("  started by {}; {}", r.created_by, match (&r.approved_by, r.needs_approval) {
        (Some(by), _) => format!("approved by {by}"),
        (None, true) => match r.change_id {
            Some(n) => format!("awaiting the approval of change chg-{n} (`labops change approve chg-{n}`)"),
            None => "changes the lab but belongs to no change: it never runs (`labops change propose`)".to_string(),
        },
        (None, false) => "no approval needed (it changes nothing)".to_string(),
    });
    if let Some(by) = &r.cancel_requested {
        println!("  cancel requested by {by}");
    }
    if !s.locks.is_empty() {
        println!("  holds: {}", s.locks.join(", "));
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(["step", "state", "attempts", "note"]);
    for st in &s.steps {
        let note = match st.state.as_str() {
            "waiting_human" => format!(
                "{} -> `labops workflow complete-step {} {} [--data JSON | --failed REASON]`",
                st.error.as_deref().unwrap_or(""),
                r.id,
                st.name
            ),
            "awaiting_confirmation" => {
                format!("{} -> `labops workflow confirm {} {}`", st.error.as_deref().unwrap_or(""), r.id, st.name)
            }
            _ => st.error.clone().unwrap_or_default(),
        };
        t.add_row([st.name.clone(), st.state.clone(), st.attempt.to_string(), note]);
    }
    println!("{t}");
    if let Some(rep) = &r.report {
        print_report(rep);
    }
}

/// `labops workflow runs` as a table.
pub async fn print_runs(store: &Store, all: bool, json_out: bool) -> anyhow::Result<()> {
    let runs = store.runs(!all, 200).await?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(());
    }
    if runs.is_empty() {
        println!("{}", if all { "no runs yet" } else { "no run in flight (`--all` lists ended ones)" });
        return Ok(());
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(["run", "workflow", "state", "by", "approved by"]);
    for r in runs {
        t.add_row([r.id.to_string(), r.workflow, r.state, r.created_by, r.approved_by.unwrap_or_default()]);
    }
    println!("{t}");
    Ok(())
}

/// The `--data` of complete-step: JSON, or a file with `@FILE`.
pub fn parse_data(data: Option<&str>) -> anyhow::Result<Value> {
    let Some(d) = data else { return Ok(Value::Null) };
    let text = match d.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(PathBuf::from(path)).with_context(|| format!("read {path}"))?,
        None => d.to_string(),
    };
    if text.len() > 64 * 1024 {
        anyhow::bail!("--data is {} bytes; the limit is 64 KiB", text.len());
    }
    serde_json::from_str(&text).with_context(|| format!("--data is not JSON: {text:?}; e.g. --data '{{\"serial\": \"S4EV\"}}'"))
}

/// The executors this config can run: `external-task`, `milestone` and local `system-check`
/// always; the others when their integration is configured.
pub async fn registry(cfg: &crate::config::Config, store_for_ai: &Store) -> anyhow::Result<labops_engine::runs::Registry> {
    use labops_engine::runs::basic::{ExternalTask, Milestone};
    use labops_engine::runs::commands::{CommandRunner, NodeCommands};
    use labops_engine::runs::{Executor, git::GitCommit, kube, proxmox::ProxmoxTask, system::SystemCheck};
    use std::sync::Arc;
    let mut r = labops_engine::runs::Registry::new();
    r.register(Arc::new(ExternalTask)).register(Arc::new(Milestone));
    let runner = CommandRunner::new(cfg.ssh.clone().unwrap_or_default());
    r.register(Arc::new(SystemCheck::new(runner.clone())));
    let node_commands: Option<Arc<dyn Executor>> =
        cfg.ssh.as_ref().map(|_| Arc::new(NodeCommands::new(runner.clone())) as Arc<dyn Executor>);
    if let Some(p) = &cfg.proxmox {
        let client = labops_integrations::proxmox::Client::new(p.settings().map_err(anyhow::Error::msg)?)?;
        r.register(Arc::new(ProxmoxTask::new(Arc::new(client), node_commands)));
    } else if let Some(n) = node_commands {
        r.register(n);
    }
    if let Some(g) = &cfg.git {
        r.register(Arc::new(GitCommit::new(g.clone())));
    }
    // The AI step types, when a model is configured (otherwise a step of theirs is refused at
    // submit time with what to configure).
    if cfg.ai.local.is_some() || cfg.ai.cloud.is_some() {
        let store = store_for_ai.clone();
        for e in labops_engine::runs::ai::AiStep::all(crate::ai_cmd::engine(cfg, &store)?) {
            r.register(e);
        }
    }
    if let Some(k) = &cfg.kubernetes {
        let settings = labops_integrations::kubernetes::Settings { kubeconfig: k.kubeconfig.clone(), context: k.context.clone() };
        let (client, _) = labops_integrations::kubernetes::client(&settings).await?;
        r.register(Arc::new(kube::KubeDeployment::new(client.clone()))).register(Arc::new(kube::KubeTask::new(client)));
    }
    Ok(r)
}

/// The engine over the state database of `cfg`.
pub async fn engine(cfg: &crate::config::Config, store: Store) -> anyhow::Result<Engine> {
    let crash = std::env::var("LABOPS_TEST_CRASH_AT").ok().and_then(|s| labops_engine::runs::CrashPoint::parse(&s));
    Ok(Engine::new(store.clone(), registry(cfg, &store).await?, cfg.workflows.steps_at_once, cfg.workflows.parallel_branches).with_crash_point(crash))
}

/// Runs one of the run commands.
pub async fn run_state(
    cmd: &crate::workflow_cmd::WorkflowCommand,
    cfg: &crate::config::Config,
    store: Store,
    lab: Option<&labops_engine::Lab>,
) -> anyhow::Result<ExitCode> {
    use crate::workflow_cmd::{WorkflowCommand as W, plan_file};
    let changes = crate::change_cmd::service(cfg, store.clone()).await?;
    let engine = changes.engine().clone();
    match cmd {
        W::Run { file, set, values, follow: follow_it, json, actor: who } => {
            let who = actor(who.as_deref());
            let Some((_, plan)) = plan_file(file, set, values.as_deref())? else { return Ok(ExitCode::from(1)) };
            if plan.mutating_steps > 0 {
                let changing: Vec<&str> =
                    plan.stages.iter().flat_map(|s| &s.steps).filter(|s| s.mutates).map(|s| s.name.as_str()).collect();
                eprintln!(
                    "error: {} changes the lab ({}), so it runs as a change: propose it with `labops change propose {} --proposal PROPOSAL.yaml`, a human approves it with `labops change approve`, and labops executes, validates, documents and commits it",
                    file.display(),
                    changing.join(", "),
                    file.display()
                );
                let refusal = AuditEntry {
                    at_ms: labops_engine::lab::now_ms(),
                    actor: who.clone(),
                    action: "workflow_run".into(),
                    target: Some(plan.workflow.clone()),
                    outcome: "refused: changes the lab without a change".into(),
                    detail: json!({"file": file, "mutating_steps": changing}),
                };
                if let Err(e) = store.audit(&refusal).await {
                    tracing::warn!("audit write failed: {e}");
                }
                return Ok(ExitCode::from(1));
            }
            let (inventory, freshness) = match lab {
                Some(l) => {
                    l.wait_until_reported(Duration::from_secs(20)).await;
                    let snap = l.snapshot();
                    (Some(snap.inventory.clone()), Some(l.freshness(&snap)))
                }
                None => (None, None),
            };
            let id = match engine.submit_grounded(&plan, &who, inventory.as_deref()).await {
                Ok(id) => id,
                Err(e) => {
                    eprintln!("error: {}: {e}", file.display());
                    // A name may be missing because labops cannot see that part of the lab.
                    if let Some(note) = freshness.and_then(|f| f.note) {
                        eprintln!("note: names were resolved against the inventory labops has now: {note}");
                    }
                    return Ok(ExitCode::from(1));
                }
            };
            audit(&store, &who, "workflow_run", id, "ok", json!({"workflow": plan.workflow, "file": file})).await;
            if !json {
                println!("run {id}: {} ({} step(s), {} change the lab)", plan.workflow, plan.stages.iter().map(|s| s.steps.len()).sum::<usize>(), plan.mutating_steps);
            }
            if *follow_it { follow(&engine, id).await } else { drive_and_report(&engine, id, *json).await }
        }
        W::Runs { all, json } => {
            print_runs(&store, *all, *json).await?;
            Ok(ExitCode::SUCCESS)
        }
        W::Status { run, json, follow: follow_it } => {
            let id = run_id(run)?;
            if *follow_it {
                return follow(&engine, id).await;
            }
            let s = engine.status(id).await?;
            if *json { println!("{}", serde_json::to_string_pretty(&s)?) } else { print_status(&s) }
            Ok(ExitCode::SUCCESS)
        }
        W::Confirm { run, step, actor: who } => {
            let id = run_id(run)?;
            let who = actor(who.as_deref());
            match engine.confirm_step(id, step, &who).await {
                Ok(()) => {
                    audit(&store, &who, "workflow_confirm_step", id, "ok", json!({"step": step})).await;
                    println!("run {id}: step {step} confirmed by {who}");
                    drive_then_change(&changes, id).await
                }
                Err(e) => {
                    audit(&store, &who, "workflow_confirm_step", id, &format!("refused: {e}"), json!({"step": step})).await;
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        W::CompleteStep { run, step, data, failed, actor: who } => {
            let id = run_id(run)?;
            let who = actor(who.as_deref());
            let result = match failed {
                Some(reason) => Err(reason.clone()),
                None => Ok(parse_data(data.as_deref())?),
            };
            match engine.complete_step(id, step, result.clone(), &who).await {
                Ok(()) => {
                    audit(&store, &who, "workflow_complete_step", id, "ok", json!({"step": step, "failed": failed})).await;
                    println!("run {id}: step {step} marked {}", if result.is_ok() { "done" } else { "failed" });
                    drive_then_change(&changes, id).await
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        W::Cancel { run, actor: who } => {
            let id = run_id(run)?;
            let who = actor(who.as_deref());
            match engine.cancel(id, &who).await {
                Ok(()) => {
                    audit(&store, &who, "workflow_cancel", id, "ok", Value::Null).await;
                    println!("run {id}: cancel requested by {who}; undoing what it did");
                    drive_then_change(&changes, id).await
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        W::Resume { run } => {
            let results = match run {
                Some(r) => {
                    let id = run_id(r)?;
                    vec![(id, engine.drive(id).await?)]
                }
                None => engine.resume_all().await?,
            };
            if results.is_empty() {
                println!("no run in flight");
            }
            for (id, d) in results {
                let line = match d {
                    Driven::Finished { outcome } => outcome,
                    Driven::Waiting { reasons } => format!("waits: {}", reasons.join("; ")),
                    Driven::Busy { owner } => format!("driven by {owner}"),
                };
                println!("run {id}: {line}");
            }
            // Changes whose runs ended go on to validation, documentation and their commit.
            for (cid, r) in changes.advance_all().await {
                match r {
                    Ok(a) => println!("{cid}: {}", crate::change_cmd::advanced_line(&a)),
                    Err(e) => println!("{cid}: {e}"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        W::Validate { .. } | W::Plan { .. } | W::ExportKro { .. } => unreachable!("offline commands are handled before"),
    }
}
