//! `labops change propose|list|show|approve|reject|resume`: the change workflow from the command
//! line. Thin wrappers around [`labops_engine::changes::Changes`], the same service REST and MCP
//! call.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use clap::Subcommand;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use labops_core::change::Actor;
use labops_core::inventory::Inventory;
use labops_engine::changes::forge::{Forge, GithubForge, LocalForge};
use labops_engine::changes::gitops::GitOps;
use labops_engine::changes::{Advanced, Changes, LiveLab, ProposalInput, date_time};
use labops_engine::{Lab, LabOptions};
use labops_integrations::github;
use labops_store::Store;
use labops_store::changes::ChangeRecord;
use serde_json::{Value, json};

use crate::config::{Config, ForgeKind};
use crate::runs_cmd::{actor, event_line};

/// `labops change ...`
#[derive(Debug, Subcommand)]
pub enum ChangeCommand {
    /// Propose a change: a workflow that changes the lab, with its analysis and ROI. Checks the
    /// plan against the live lab, opens the change's issue and waits for a human's approval.
    Propose {
        /// The workflow.
        file: PathBuf,
        /// The proposal (YAML or JSON): `title`, `analysis` (`what`, `why`, `risk`: low | medium
        /// | high, optional `risk_notes`, `manual_steps`), `roi` (`time_saved_hours_per_month`,
        /// `cost_once`, `cost_monthly`, `learning_value`, `complexity`, `risk`, `basis`), and
        /// optionally `area` (compute, storage, kubernetes, hosts). Without it, the AI engine
        /// drafts them from the plan (needs [ai.local]), marked as an estimate for the approver.
        #[arg(long, value_name = "FILE")]
        proposal: Option<PathBuf>,
        /// A parameter value (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// A YAML file of parameter values.
        #[arg(long, value_name = "FILE")]
        values: Option<PathBuf>,
        /// Who proposes it (default: $USER).
        #[arg(long = "as", value_name = "NAME")]
        actor: Option<String>,
        /// Print the change as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List changes still moving (all with --all).
    List {
        /// Include finished ones.
        #[arg(long)]
        all: bool,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a change: its analysis, ROI, plan digest and history (the audit trail).
    Show {
        /// The change (`chg-3` or `3`).
        id: String,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve a change as a human, for the plan shown, then execute it: run, validate,
    /// document, commit `fixes #N`, close its issue.
    Approve {
        /// The change.
        id: String,
        /// Approve only if the plan's digest is this one (what you were shown elsewhere).
        #[arg(long, value_name = "DIGEST")]
        plan: Option<String>,
        /// The approver (default: $USER).
        #[arg(long = "as", value_name = "NAME")]
        actor: Option<String>,
    },
    /// Give a change a new plan before it runs (new parameters, a fixed workflow). Its digest
    /// changes, so an approval given for the old plan no longer holds.
    Replan {
        /// The change.
        id: String,
        /// The workflow.
        file: PathBuf,
        /// A parameter value (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// A YAML file of parameter values.
        #[arg(long, value_name = "FILE")]
        values: Option<PathBuf>,
        /// Who (default: $USER).
        #[arg(long = "as", value_name = "NAME")]
        actor: Option<String>,
    },
    /// Reject a change; it never runs.
    Reject {
        /// The change.
        id: String,
        /// Why.
        #[arg(long)]
        reason: String,
        /// Who (default: $USER).
        #[arg(long = "as", value_name = "NAME")]
        actor: Option<String>,
    },
    /// Standing approvals: a human's approval recorded in advance for one workflow, on given
    /// targets, within limits. A change it covers is approved in that human's name when it is
    /// proposed, and still gets its own record, issue, documentation and commit.
    Standing {
        #[command(subcommand)]
        command: StandingCommand,
    },
    /// Move approved changes on (after a restart, a completed human step, a fixed config).
    Resume {
        /// Only this change.
        id: Option<String>,
    },
}

/// `labops change standing ...`
#[derive(Debug, Subcommand)]
pub enum StandingCommand {
    /// Record a standing approval (a human act).
    Add {
        /// The workflow it covers, by its metadata.name.
        #[arg(long)]
        workflow: String,
        /// An entity id it covers (`lxc/130`, `pod/default/*`); repeatable.
        #[arg(long = "target", value_name = "ID", required = true)]
        targets: Vec<String>,
        /// At most this many other entities may depend on the targets.
        #[arg(long, default_value_t = 0)]
        max_blast_radius: usize,
        /// At most this many changes in all.
        #[arg(long)]
        max_uses: Option<u32>,
        /// How long it holds: `30d`, `12h`, `90m`.
        #[arg(long, value_name = "DURATION")]
        expires: String,
        /// Why.
        #[arg(long)]
        reason: String,
        /// Who records it (default: $USER).
        #[arg(long = "as", value_name = "NAME")]
        actor: Option<String>,
    },
    /// List standing approvals.
    List {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke one.
    Revoke {
        /// `sa-2`.
        id: String,
        /// Who (default: $USER).
        #[arg(long = "as", value_name = "NAME")]
        actor: Option<String>,
    },
}

/// The lab read fresh from its sources for each question: what a change is checked, validated
/// and documented against.
struct FreshLab {
    cfg: Config,
}

#[async_trait]
impl LiveLab for FreshLab {
    fn name(&self) -> String {
        self.cfg.lab.name.clone()
    }

    async fn inventory(&self) -> Result<Arc<Inventory>, String> {
        let sources = crate::lab_sources(&self.cfg).map_err(|e| e.to_string())?;
        let lab = Lab::start(LabOptions { name: self.cfg.lab.name.clone(), demo: self.cfg.lab.demo, sources }, None).await;
        lab.wait_until_reported(Duration::from_secs(20)).await;
        let snap = lab.snapshot();
        lab.shutdown();
        let failed: Vec<String> = snap
            .sources
            .iter()
            .filter(|s| s.last_success_ms.is_none())
            .map(|s| format!("{} ({}): {}", s.name, s.endpoint, s.last_error.as_deref().unwrap_or("no answer within 20 s")))
            .collect();
        if failed.is_empty() { Ok(snap.inventory.clone()) } else { Err(format!("cannot read {}", failed.join("; "))) }
    }
}

/// The human acting from this CLI; an approval, a rejection or a standing approval needs a name.
fn human(explicit: Option<&str>) -> anyhow::Result<String> {
    let who = actor(explicit);
    if who == "unknown" {
        anyhow::bail!("labops cannot tell who you are ($USER is not set): pass --as NAME, the name the approval is recorded under");
    }
    Ok(who)
}

/// The change service for this config.
pub async fn service(cfg: &Config, store: Store) -> anyhow::Result<Changes> {
    let engine = crate::runs_cmd::engine(cfg, store.clone()).await?;
    let gitops = cfg.gitops.as_ref().map(|g| GitOps::new(g.settings()));
    let forge: Arc<dyn Forge> = match cfg.forge.kind {
        ForgeKind::Local => Arc::new(LocalForge::new(store, gitops.as_ref().map(GitOps::issues_dir))),
        ForgeKind::Github => {
            let settings = cfg.forge.github_settings().map_err(|e| anyhow::anyhow!("[forge]: {e}"))?;
            Arc::new(GithubForge::new(github::Client::new(settings)?))
        }
    };
    Ok(Changes::new(engine, forge, gitops, Arc::new(FreshLab { cfg: cfg.clone() })))
}

/// One line on where a change stands after [`Changes::advance`].
pub fn advanced_line(a: &Advanced) -> String {
    match a {
        Advanced::Ended { state } => state.to_string(),
        Advanced::Waiting { reasons } => format!("waits for: {}", reasons.join("; ")),
        Advanced::Busy { owner } => format!("its run is driven by another labops process ({owner})"),
    }
}

/// Advances a change, printing its run's events and where it ends up. Exit 1 when it failed or
/// was rolled back, or could not move.
pub async fn advance_and_report(changes: &Changes, id: &str, json_out: bool) -> anyhow::Result<ExitCode> {
    let before = changes.get(id).await?;
    let seq_before = match before.run_id {
        Some(r) => changes.engine().store().run_events(r, 0, u32::MAX).await?.last().map(|e| e.seq).unwrap_or(0),
        None => 0,
    };
    let result = changes.advance(id).await;
    let after = changes.get(id).await?;
    if !json_out && let Some(r) = after.run_id {
        let from = if before.run_id == Some(r) { seq_before } else { 0 };
        for e in changes.engine().store().run_events(r, from, u32::MAX).await? {
            println!("{}", event_line(&e));
        }
    }
    let cid = &after.change.id;
    match result {
        Ok(a) => {
            if json_out {
                println!("{}", serde_json::to_string_pretty(&json!({"advanced": a, "change": after}))?);
            } else {
                match &a {
                    Advanced::Waiting { reasons } => {
                        println!("{cid} ({}) waits for:", after.change.state);
                        for r in reasons {
                            println!("  - {r}");
                        }
                    }
                    other => println!("{cid}: {}", advanced_line(other)),
                }
                if let Some(t) = after.change.history.last() {
                    println!("  last step: {} -> {}: {}", t.from, t.to, t.reason);
                }
                if let (Some(sha), Some(n)) = (&after.commit, after.change.issue) {
                    println!("  commit {sha} (fixes #{n})");
                }
            }
            Ok(match a {
                Advanced::Ended { state } if state.as_str() != "closed" => ExitCode::from(1),
                _ => ExitCode::SUCCESS,
            })
        }
        Err(e) => {
            eprintln!("error: {cid}: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn read_proposal(path: &PathBuf) -> anyhow::Result<ProposalInput> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the proposal {}", path.display()))?;
    if text.len() > 256 * 1024 {
        anyhow::bail!("the proposal {} is {} bytes; the limit is 256 KiB", path.display(), text.len());
    }
    serde_saphyr::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a valid proposal: {e}\nA proposal has `title`, `analysis: {{what, why, risk: low|medium|high}}` and `roi: {{time_saved_hours_per_month, learning_value, complexity, risk}}`",
            path.display()
        )
    })
}

fn print_change(c: &ChangeRecord) {
    let ch = &c.change;
    println!("{} {}: {}", ch.id, ch.state, ch.title);
    println!("  issue #{}; proposed by {} at {}", ch.issue.map(|n| n.to_string()).unwrap_or("-".into()), c.created_by, date_time(c.created_ms));
    println!("  workflow {} plan {}", c.workflow, c.plan_digest);
    match &ch.approved_plan {
        Some(d) if *d == c.plan_digest => println!("  approved for this plan"),
        Some(d) => println!("  approved for ANOTHER plan ({d}): it must be approved again"),
        None => {}
    }
    if let Some(r) = c.run_id {
        println!("  run {r} (`labops workflow status {r}`)");
    }
    if let Some(sha) = &c.commit {
        println!("  commit {sha}");
    }
    let a = &c.proposal["analysis"];
    println!("\nWhat: {}\nWhy: {}\nRisk: {} {}", a["what"].as_str().unwrap_or(""), a["why"].as_str().unwrap_or(""), a["risk"].as_str().unwrap_or("?"), a["risk_notes"].as_str().unwrap_or(""));
    for (title, key) in [("Blast radius", "blast_radius"), ("Rollback plan", "rollback_plan"), ("Manual steps", "manual_steps")] {
        let items: Vec<&str> = a[key].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if !items.is_empty() {
            println!("{title}:");
            for i in items {
                println!("  - {i}");
            }
        }
    }
    let r = &c.proposal["roi"];
    println!(
        "ROI: saves {} h/month; costs {} once, {} per month; learning {}/10, complexity {}/10, risk {}/10",
        r["time_saved_hours_per_month"], r["cost_once"], r["cost_monthly"], r["learning_value"], r["complexity"], r["risk"]
    );
    println!("\nPlan ({}):", c.plan_digest);
    for stage in c.plan["stages"].as_array().into_iter().flatten() {
        for s in stage["steps"].as_array().into_iter().flatten() {
            let mark = if s["mutates"].as_bool() == Some(true) { " [changes the lab]" } else { "" };
            println!("  {}. {} ({}){mark}", stage["number"], s["name"].as_str().unwrap_or("?"), s["step_type"].as_str().unwrap_or("?"));
        }
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(["when", "from", "to", "by", "why"]);
    for h in &ch.history {
        t.add_row([date_time(h.at_ms), h.from.to_string(), h.to.to_string(), h.actor.to_string(), h.reason.clone()]);
    }
    println!("\nHistory:\n{t}");
}

/// Runs one `labops change` command.
pub async fn run(cmd: &ChangeCommand, cfg: &Config, store: Store) -> anyhow::Result<ExitCode> {
    let store_for_draft = store.clone();
    let changes = service(cfg, store).await?;
    match cmd {
        ChangeCommand::Propose { file, proposal, set, values, actor: who, json: json_out } => {
            let who = actor(who.as_deref());
            let Some((_, plan)) = crate::workflow_cmd::plan_file(file, set, values.as_deref())? else { return Ok(ExitCode::from(1)) };
            let input = match proposal {
                Some(p) => read_proposal(p)?,
                None => {
                    if cfg.ai.local.is_none() && cfg.ai.cloud.is_none() {
                        anyhow::bail!("no --proposal: pass --proposal FILE (title, analysis, roi), or configure [ai.local] to have the AI engine draft it");
                    }
                    let tasks = crate::ai_cmd::tasks(cfg, &store_for_draft, None)?;
                    let call = labops_ai::engine::Call { actor: "cli".into(), ..Default::default() };
                    let draft = tasks.draft_proposal(&plan, &call).await.map_err(anyhow::Error::msg)?;
                    if !*json_out {
                        eprintln!("The AI engine drafted the proposal ({}); review it before approving.", draft.roi.basis);
                    }
                    draft
                }
            };
            let params = serde_json::to_value(&plan.parameters).unwrap_or(Value::Null);
            match changes.propose(&plan, params, input, Actor::Human(who), "cli").await {
                Ok(c) if c.change.state.as_str() == "approved" => {
                    let how = c.change.history.last().map(|t| t.reason.clone()).unwrap_or_default();
                    if !*json_out {
                        print_change(&c);
                        println!("\n{} opened as issue #{}; approved under {how}; executing", c.change.id, c.change.issue.unwrap_or_default());
                    }
                    advance_and_report(&changes, &c.change.id, *json_out).await
                }
                Ok(c) => {
                    if *json_out {
                        println!("{}", serde_json::to_string_pretty(&c)?);
                    } else {
                        print_change(&c);
                        println!(
                            "\n{} opened as issue #{} ({}); a human approves it with `labops change approve {}`",
                            c.change.id,
                            c.change.issue.unwrap_or_default(),
                            changes.forge().link(c.change.issue.unwrap_or_default()),
                            c.change.id
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("error: {}: {e}", file.display());
                    Ok(ExitCode::from(1))
                }
            }
        }
        ChangeCommand::List { all, json: json_out } => {
            let list = changes.list(!all, 200).await?;
            if *json_out {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("{}", if *all { "no changes yet" } else { "no change in flight (`--all` lists finished ones)" });
            } else {
                let mut t = Table::new();
                t.load_preset(UTF8_FULL_CONDENSED).set_header(["change", "state", "issue", "title", "proposed by", "run"]);
                for c in list {
                    t.add_row([
                        c.change.id.clone(),
                        c.change.state.to_string(),
                        c.change.issue.map(|n| format!("#{n}")).unwrap_or_default(),
                        c.change.title.clone(),
                        c.created_by.clone(),
                        c.run_id.map(|r| r.to_string()).unwrap_or_default(),
                    ]);
                }
                println!("{t}");
            }
            Ok(ExitCode::SUCCESS)
        }
        ChangeCommand::Show { id, json: json_out } => {
            let c = changes.get(id).await?;
            if *json_out { println!("{}", serde_json::to_string_pretty(&c)?) } else { print_change(&c) }
            Ok(ExitCode::SUCCESS)
        }
        ChangeCommand::Approve { id, plan, actor: who } => {
            let who = human(who.as_deref())?;
            let c = changes.get(id).await?;
            // The approval is for the plan shown here (or named with --plan), by digest.
            let shown = plan.clone().unwrap_or_else(|| c.plan_digest.clone());
            if plan.is_none() {
                print_change(&c);
                println!();
            }
            match changes.approve(id, &who, &shown, "cli").await {
                Ok(c) => {
                    println!("{}: approved by {who} for plan {shown}", c.change.id);
                    advance_and_report(&changes, &c.change.id, false).await
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        ChangeCommand::Replan { id, file, set, values, actor: who } => {
            let who = actor(who.as_deref());
            let Some((_, plan)) = crate::workflow_cmd::plan_file(file, set, values.as_deref())? else { return Ok(ExitCode::from(1)) };
            match changes.replan(id, &plan, Actor::Human(who)).await {
                Ok(c) => {
                    println!("{}: new plan {}; it is {} (approve this plan with `labops change approve {}`)", c.change.id, c.plan_digest, c.change.state, c.change.id);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        ChangeCommand::Reject { id, reason, actor: who } => {
            let who = human(who.as_deref())?;
            match changes.reject(id, &who, reason, "cli").await {
                Ok(c) => {
                    println!("{}: rejected by {who}: {reason}", c.change.id);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        ChangeCommand::Standing { command } => standing(&changes, command).await,
        ChangeCommand::Resume { id } => match id {
            Some(id) => advance_and_report(&changes, id, false).await,
            None => {
                let all = changes.advance_all().await;
                if all.is_empty() {
                    println!("no approved change in flight");
                }
                let mut code = ExitCode::SUCCESS;
                for (cid, r) in all {
                    match r {
                        Ok(a) => println!("{cid}: {}", advanced_line(&a)),
                        Err(e) => {
                            println!("{cid}: {e}");
                            code = ExitCode::from(1);
                        }
                    }
                }
                Ok(code)
            }
        },
    }
}

async fn standing(changes: &Changes, cmd: &StandingCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        StandingCommand::Add { workflow, targets, max_blast_radius, max_uses, expires, reason, actor: who } => {
            let who = human(who.as_deref())?;
            let ttl = labops_engine::runs::executor::parse_duration("--expires", &Value::String(expires.clone())).map_err(anyhow::Error::msg)?;
            let expires_ms = labops_engine::lab::now_ms() + ttl.as_millis() as i64;
            match changes.add_standing(&who, workflow, targets.clone(), *max_blast_radius, *max_uses, expires_ms, reason).await {
                Ok(sa) => {
                    println!(
                        "{}: {who} pre-approves {} on {} (blast radius at most {}, {} use(s), until {})",
                        sa.id,
                        sa.workflow,
                        sa.targets.join(", "),
                        sa.max_blast_radius,
                        sa.max_uses.map(|n| n.to_string()).unwrap_or("any number of".into()),
                        date_time(sa.expires_ms)
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        StandingCommand::List { json: json_out } => {
            let all = changes.standing().await?;
            if *json_out {
                println!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(ExitCode::SUCCESS);
            }
            let now = labops_engine::lab::now_ms();
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED).set_header(["id", "by", "workflow", "targets", "blast radius", "uses", "until", "state"]);
            for sa in all {
                let state = match (&sa.revoked_by, sa.expires_ms <= now) {
                    (Some(by), _) => format!("revoked by {by}"),
                    (None, true) => "expired".into(),
                    (None, false) => "active".into(),
                };
                t.add_row([
                    sa.id.clone(),
                    sa.approver.clone(),
                    sa.workflow.clone(),
                    sa.targets.join(", "),
                    format!("<= {}", sa.max_blast_radius),
                    format!("{}/{}", sa.uses, sa.max_uses.map(|n| n.to_string()).unwrap_or("-".into())),
                    date_time(sa.expires_ms),
                    state,
                ]);
            }
            println!("{t}");
            Ok(ExitCode::SUCCESS)
        }
        StandingCommand::Revoke { id, actor: who } => {
            let who = human(who.as_deref())?;
            match changes.revoke_standing(id, &who).await {
                Ok(()) => {
                    println!("{id}: revoked by {who}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}
