//! `labops workflow ...`: `validate`, `plan` and `export-kro` read only the files named and need
//! no config and no lab; the run commands (`run`, `runs`, `status`, `approve`, `complete-step`,
//! `cancel`, `resume`) work on runs in the state database, see `runs_cmd`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use labops_core::workflow::{self, Availability, Bindings, Diagnostic, Plan, PlanError};

/// The `workflow` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum WorkflowCommand {
    /// Check a workflow and print every problem as FILE:LINE:COL: message. Exit 1 on any error.
    Validate {
        /// The workflow (a kro ResourceGraphDefinition in YAML).
        file: PathBuf,
    },
    /// Show the plan: the steps in stages that can run in parallel, with parameters bound.
    Plan {
        /// The workflow (a kro ResourceGraphDefinition in YAML).
        file: PathBuf,
        /// A parameter value (repeatable); wins over --values.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// A YAML file of parameter values (`name: value` per line).
        #[arg(long, value_name = "FILE")]
        values: Option<PathBuf>,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Emit a kro ResourceGraphDefinition for a graph made only of Kubernetes resources, for
    /// FluxCD to apply. Parameters stay parameters: they become the RGD's schema, filled in by
    /// each instance.
    ExportKro {
        /// The workflow.
        file: PathBuf,
    },
    /// Start a run of a workflow that changes nothing (checks, human tasks). A workflow that
    /// changes the lab is a change: `labops change propose`. Without --follow, drives the run
    /// until it ends or waits for a human.
    Run {
        /// The workflow.
        file: PathBuf,
        /// A parameter value (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// A YAML file of parameter values.
        #[arg(long, value_name = "FILE")]
        values: Option<PathBuf>,
        /// Stay: drive the run whenever it can move and show a progress bar per step until it ends.
        #[arg(long)]
        follow: bool,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
        /// Who starts it (default: $USER).
        #[arg(long = "as", value_name = "NAME")]
        actor: Option<String>,
    },
    /// List runs in flight (all runs with --all).
    Runs {
        /// Include ended runs.
        #[arg(long)]
        all: bool,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a run: its steps, what it waits for, what it holds, its report.
    Status {
        /// The run (`17` or `run-17`).
        run: String,
        /// As JSON.
        #[arg(long)]
        json: bool,
        /// Keep showing its progress until it ends (and drive it when nobody does).
        #[arg(long)]
        follow: bool,
    },
    /// Give the go-ahead to a step that waits for one (an irreversible command), then drive the
    /// run. (A run is approved through its change: `labops change approve`.)
    Confirm {
        /// The run.
        run: String,
        /// The step.
        step: String,
        /// Who (default: $USER).
        #[arg(long = "as", value_name = "NAME")]
        actor: Option<String>,
    },
    /// Mark a step that waits for a human done (with --data) or failed (with --failed). Then
    /// drives the run.
    CompleteStep {
        /// The run.
        run: String,
        /// The step.
        step: String,
        /// What the human reports, as JSON (or @FILE).
        #[arg(long, conflicts_with = "failed")]
        data: Option<String>,
        /// The step failed: why. The run rolls back.
        #[arg(long)]
        failed: Option<String>,
        /// Who (default: $USER).
        #[arg(long = "as", value_name = "NAME")]
        actor: Option<String>,
    },
    /// Stop a run and undo what it did; then drives the rollback.
    Cancel {
        /// The run.
        run: String,
        /// Who (default: $USER).
        #[arg(long = "as", value_name = "NAME")]
        actor: Option<String>,
    },
    /// Drive runs in flight that no live process drives (all of them, or one), e.g. after a crash.
    Resume {
        /// Only this run.
        run: Option<String>,
    },
}

impl WorkflowCommand {
    /// Whether the command works on runs (needs the config and the state database).
    pub fn needs_state(&self) -> bool {
        !matches!(self, Self::Validate { .. } | Self::Plan { .. } | Self::ExportKro { .. })
    }
}

/// Reads, checks and plans a workflow file; prints the problems and gives `None` when there are
/// any.
pub fn plan_file(file: &Path, set: &[String], values: Option<&Path>) -> anyhow::Result<Option<(workflow::Workflow, Plan)>> {
    let text = read(file)?;
    let (w, report) = workflow::check(&text);
    let Some(w) = w.filter(|_| report.is_valid()) else {
        print_all(file, &report.errors, &report.warnings);
        println!("{}: {} error(s); fix them first", file.display(), report.errors.len());
        return Ok(None);
    };
    for d in &report.warnings {
        eprintln!("{}:{}: warning: {}", file.display(), d.pos, d.message);
    }
    let mut given = Bindings::new();
    if let Some(v) = values {
        match workflow::parse_values(&read(v)?) {
            Ok(b) => given.extend(b),
            Err(d) => {
                println!("{}:{d}", v.display());
                return Ok(None);
            }
        }
    }
    for kv in set {
        let Some((k, v)) = kv.split_once('=') else {
            anyhow::bail!("--set {kv:?} is not KEY=VALUE");
        };
        given.insert(k.trim().to_string(), serde_json::Value::String(v.to_string()));
    }
    match workflow::plan(&w, &given) {
        Ok(plan) => Ok(Some((w, plan))),
        Err(PlanError::Parameters(errors)) => {
            print_all(file, &errors, &[]);
            Ok(None)
        }
        Err(e) => anyhow::bail!("{}: {e}", file.display()),
    }
}

/// Runs a `workflow` subcommand.
pub fn run(cmd: &WorkflowCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        WorkflowCommand::Validate { file } => {
            let text = read(file)?;
            let (_, report) = workflow::check(&text);
            print_all(file, &report.errors, &report.warnings);
            if report.is_valid() {
                println!("{}: valid ({} warning(s))", file.display(), report.warnings.len());
                Ok(ExitCode::SUCCESS)
            } else {
                println!("{}: {} error(s), {} warning(s)", file.display(), report.errors.len(), report.warnings.len());
                Ok(ExitCode::from(1))
            }
        }
        WorkflowCommand::Plan { file, set, values, json } => {
            let Some((_, plan)) = plan_file(file, set, values.as_deref())? else { return Ok(ExitCode::from(1)) };
            if *json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print!("{}", render(&plan));
            }
            Ok(ExitCode::SUCCESS)
        }
        WorkflowCommand::ExportKro { file } => {
            let text = read(file)?;
            let (w, report) = workflow::check(&text);
            let Some(w) = w.filter(|_| report.is_valid()) else {
                print_all(file, &report.errors, &report.warnings);
                println!("{}: {} error(s); fix them first", file.display(), report.errors.len());
                return Ok(ExitCode::from(1));
            };
            // The plan orders the resources; its values are not exported, so parameters without
            // a default get a neutral value of their type.
            let placeholders: Bindings = w
                .parameters
                .values()
                .filter(|p| p.default.is_none())
                .map(|p| {
                    let v = match p.type_name.as_str() {
                        "integer" | "number" | "float" => serde_json::json!(0),
                        "boolean" => serde_json::json!(false),
                        "array" => serde_json::json!([]),
                        "object" => serde_json::json!({}),
                        _ => serde_json::json!(""),
                    };
                    (p.name.clone(), v)
                })
                .collect();
            let plan = workflow::plan(&w, &placeholders).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            match workflow::kro::export(&w, &plan) {
                Ok(yaml) => {
                    print!("{yaml}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("error: {}: {e}", file.display());
                    Ok(ExitCode::from(1))
                }
            }
        }
        _ => unreachable!("run commands go to run_state"),
    }
}

fn read(p: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))
}

fn print_all(file: &Path, errors: &[Diagnostic], warnings: &[Diagnostic]) {
    for d in errors {
        println!("{}:{}: {}", file.display(), d.pos, d.message);
    }
    for d in warnings {
        println!("{}:{}: warning: {}", file.display(), d.pos, d.message);
    }
}

/// The plan as text: a header, the parameters, then each stage with one line per step.
fn render(plan: &Plan) -> String {
    let steps = plan.stages.iter().flat_map(|s| &s.steps);
    let count = steps.clone().count();
    let name_w = steps.clone().map(|s| s.name.len()).max().unwrap_or(0);
    let type_w = steps.clone().map(|s| s.step_type.len()).max().unwrap_or(0);
    let mut out = format!(
        "Plan for {}: {count} step(s) in {} stage(s); {} change the lab, {} wait for a human.\n",
        plan.workflow,
        plan.stages.len(),
        plan.mutating_steps,
        plan.human_waits
    );
    if !plan.parameters.is_empty() {
        let params: Vec<String> = plan
            .parameters
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect();
        out += &format!("Parameters: {}\n", params.join(", "));
    }
    for stage in &plan.stages {
        let parallel = if stage.steps.len() > 1 { ", in parallel" } else { "" };
        out += &format!("\nStage {}{parallel}\n", stage.number);
        for s in &stage.steps {
            let mut notes = Vec::new();
            if s.waits_for_human {
                notes.push("waits for a human".to_string());
            }
            if let Availability::Later(needs) = s.availability {
                notes.push(format!("not available yet: {needs}"));
            }
            if !s.include_when.is_empty() {
                notes.push(format!("only when {}", s.include_when.join(" and ")));
            }
            for (var, over) in &s.for_each {
                notes.push(format!("for each {var} in {over}"));
            }
            if !s.depends_on.is_empty() {
                notes.push(format!("after {}", s.depends_on.join(", ")));
            }
            let change = if s.mutates { "changes" } else { "reads" };
            out += format!("  {:name_w$}  {:type_w$}  {change:7}  {}\n", s.name, s.step_type, notes.join("; ")).trim_end();
            out.push('\n');
        }
    }
    out
}
