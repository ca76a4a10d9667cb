//! The `labops` binary: parses the command line, loads the config, wires the lab, and calls the
//! same service functions the MCP server and the REST API use.

mod ai_cmd;
mod ask_cmd;
mod change_cmd;
mod config;
mod incidents_cmd;
mod nab_cmd;
mod render;
mod runs_cmd;
mod wishlist_cmd;
mod workflow_cmd;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use labops_core::inventory::EntityKind;
use labops_core::resolve::ResolveError;
use labops_engine::service::{ListFilter, ServiceError, WorkloadFilter};
use labops_engine::{Lab, LabOptions, SourceSpec};
use labops_integrations::{kubernetes, proxmox, static_hosts};

/// labops: an AI operator for homelabs.
#[derive(Debug, Parser)]
#[command(name = "labops", version, about, long_about = None)]
struct Cli {
    /// Config file (default: $LABOPS_CONFIG, else ~/.config/labops/labops.toml).
    #[arg(long, global = true, env = "LABOPS_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory of the state database (default: [state] data_dir, else ~/.local/share/labops).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a commented config file to edit.
    Init {
        /// Where to write it (default: ~/.config/labops/labops.toml).
        path: Option<PathBuf>,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Check the config.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Workflows (kro ResourceGraphDefinitions): validate and plan them (no config needed), run
    /// them durably, and act on runs (approve, complete a human step, cancel, resume).
    Workflow {
        #[command(subcommand)]
        command: workflow_cmd::WorkflowCommand,
    },
    /// Changes to the lab: propose one (workflow, analysis, ROI), approve or reject it as a
    /// human, follow it through execution, validation, documentation and its `fixes #N` commit.
    Change {
        #[command(subcommand)]
        command: change_cmd::ChangeCommand,
    },
    /// The wishlist: items ranked by ROI (a documented formula), explained, the next one
    /// proposed as a change, outcomes recorded and learned from.
    Wishlist {
        #[command(subcommand)]
        command: wishlist_cmd::WishlistCommand,
    },
    /// The hybrid AI engine: `labops ai route TEXT` explains where a request would go.
    Ai {
        #[command(subcommand)]
        command: ai_cmd::AiCommand,
    },
    /// Ask anything about the lab in plain words: an answer from its live data, a change
    /// proposal awaiting a human's approval, or a question back. Never acts. The answer
    /// streams; what the model looks up is shown on stderr.
    Ask {
        /// The request.
        text: String,
        /// Attach a file as untrusted data (an alert, a log excerpt): read, never obeyed.
        #[arg(long = "doc", value_name = "FILE")]
        docs: Vec<PathBuf>,
        /// It needs hard reasoning: prefer the cloud model when privacy and budget allow.
        #[arg(long)]
        hard: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks that need the lab: `labops bench eval` runs the eval set against a model.
    Bench {
        /// What to measure.
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Incidents: alerts from Alertmanager, Grafana, Uptime Kuma and Prometheus grouped by
    /// cause, with suspected root causes. Subcommands: show, ack, resolve, silence, silences,
    /// unsilence.
    Incidents {
        #[command(subcommand)]
        command: Option<incidents_cmd::IncidentsCommand>,
        /// Include resolved and merged incidents.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The audit log: every action taken through any interface, newest first.
    Audit {
        /// How many records.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve MCP over stdio (for Claude Code and other MCP clients that spawn labops).
    Mcp,
    /// Serve MCP over Streamable HTTP at /mcp and the REST API at /api/v1.
    Serve {
        /// Address to listen on (default: [server] listen).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Sources, nodes and guests at a glance.
    Status {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// The whole inventory.
    Inventory {
        /// Print JSON (entities and relations) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List entities, with the same filters as the MCP tool.
    List {
        /// Only this kind (vm, lxc, proxmox_node, k8s_node, pod, ...).
        #[arg(long)]
        kind: Option<String>,
        /// Only entities placed on this node.
        #[arg(long)]
        node: Option<String>,
        /// Only this status.
        #[arg(long)]
        status: Option<String>,
        /// Only entities with this label (`key` or `key=value`).
        #[arg(long)]
        label: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Map a name to exactly one entity. Exit 0: resolved; 2: unknown; 3: ambiguous.
    Resolve {
        /// A name, VMID, namespace/name or id.
        name: String,
        /// Only accept this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One entity with its links.
    Get {
        /// A name, VMID, namespace/name or id.
        name: String,
    },
    /// What breaks if an entity goes down.
    Impact {
        /// A name, VMID, namespace/name or id.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Kubernetes workloads and their pods.
    Workloads {
        /// Only this namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// Only workloads with pods on this node.
        #[arg(long)]
        node: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Report every error in the config at once, with field paths. Exit 1 on any error.
    Validate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr: in `labops mcp` stdout belongs to the protocol.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "labops=info,warn,kube_client=off,kube_runtime=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    labops_integrations::install_crypto_provider();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `labops bench ...`
#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Run the eval set (requests on the reference homelab with expected outcomes) against a
    /// configured model; report the pass rate and grounding errors. Proposes nothing.
    Eval {
        /// The cases.
        #[arg(long, default_value = "evals/homelab.yaml")]
        cases: PathBuf,
        /// `local` or `cloud`: which configured model answers.
        #[arg(long, default_value = "local")]
        model: String,
        /// Only the first N cases.
        #[arg(long)]
        limit: Option<usize>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The anomaly detector over the Numenta Anomaly Benchmark: one NAB result file per series
    /// (`DIR/<category>/labops_<series>.csv`), and the score per profile by NAB's rules. Needs
    /// no lab and no config.
    Nab {
        /// NAB's data directory (`<category>/<series>.csv`).
        #[arg(long)]
        data: PathBuf,
        /// NAB's `combined_windows.json`.
        #[arg(long)]
        labels: PathBuf,
        /// Where to write the result files.
        #[arg(long)]
        out: PathBuf,
        /// NAB's `profiles.json` (default: beside the data directory).
        #[arg(long)]
        profiles: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The detector over many series at once, as the anomaly watcher runs it: points per
    /// second and memory per series.
    Series {
        /// Series (50 nodes x 200 series by default).
        #[arg(long, default_value_t = 10_000)]
        series: usize,
        /// Points per series (two days at one a minute by default; alarms count from day two).
        #[arg(long, default_value_t = 2_880)]
        points: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Time-to-full forecasts on generated growth curves (linear, stepwise, with daily cycles;
    /// fixed seeds) against the moment each noiseless curve reaches its capacity.
    Forecast {
        /// Cases per shape.
        #[arg(long, default_value_t = 100)]
        cases: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Init { path, force } => return init(path.clone(), *force),
        Command::Workflow { command } if !command.needs_state() => return workflow_cmd::run(command),
        Command::Config { command: ConfigCommand::Validate } => return validate(cli.config.as_deref()),
        Command::Bench { command: BenchCommand::Nab { data, labels, out, profiles, json } } => return nab_cmd::run(data, labels, out, profiles.as_deref(), *json),
        Command::Bench { command: BenchCommand::Forecast { cases, json } } => return nab_cmd::forecast(*cases, *json),
        Command::Bench { command: BenchCommand::Series { series, points, json } } => return nab_cmd::series(*series, *points, *json),
        _ => {}
    }
    let loaded = config::load(cli.config.as_deref());
    if !loaded.errors.is_empty() {
        for p in &loaded.errors {
            eprintln!("config error: {p}");
        }
        bail!("the config has {} error(s); fix them (see `labops config validate`)", loaded.errors.len());
    }
    for w in &loaded.warnings {
        tracing::warn!(field = %w.path, "{}", w.message);
    }
    let cfg = loaded.config.expect("no errors means a config");
    if let Command::Ai { command } = &cli.command {
        let store = open_store(&cfg, cli.data_dir.clone()).await?;
        return ai_cmd::run(command, &cfg, store).await;
    }
    if let Command::Audit { limit, json } = &cli.command {
        let store = open_store(&cfg, cli.data_dir.clone()).await?;
        let entries = store.audit_recent(*limit).await?;
        if *json {
            print_json(&entries)?;
        } else {
            let mut t = comfy_table::Table::new();
            t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED).set_header(["when", "who", "action", "target", "outcome"]);
            for e in entries {
                t.add_row([labops_engine::changes::date_time(e.at_ms), e.actor, e.action, e.target.unwrap_or_default(), e.outcome]);
            }
            println!("{t}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Incidents { command, all, json } = &cli.command {
        let store = open_store(&cfg, cli.data_dir.clone()).await?;
        return match command {
            None => incidents_cmd::list(&store, *all, *json).await,
            Some(c @ incidents_cmd::IncidentsCommand::Silence { entity: Some(_), .. }) => {
                let lab = start_lab_with(&cfg, store.clone()).await?;
                lab.wait_until_reported(Duration::from_secs(20)).await;
                let code = incidents_cmd::run(c, store, Some(&lab)).await;
                lab.close().await;
                code
            }
            Some(c) => incidents_cmd::run(c, store, None).await,
        };
    }
    if let Command::Change { command } = &cli.command {
        let store = open_store(&cfg, cli.data_dir.clone()).await?;
        return change_cmd::run(command, &cfg, store).await;
    }
    if let Command::Wishlist { command } = &cli.command {
        let store = open_store(&cfg, cli.data_dir.clone()).await?;
        let changes = change_cmd::service(&cfg, store.clone()).await?;
        // Estimates need a model and a few words on the lab (counts, not names).
        let ai = match command {
            wishlist_cmd::WishlistCommand::Estimate { .. } => {
                let ai = ai_cmd::engine(&cfg, &store)?;
                if ai.is_configured() {
                    let lab = start_lab_with(&cfg, store.clone()).await?;
                    lab.wait_until_reported(std::time::Duration::from_secs(20)).await;
                    let s = lab.inventory_summary();
                    let counts: Vec<String> = s.counts.iter().map(|(k, n)| format!("{n} {}", k.as_str())).collect();
                    Some((ai, counts.join(", ")))
                } else {
                    None
                }
            }
            _ => None,
        };
        return wishlist_cmd::run(command, labops_engine::wishlist::Wishlist::new(store, Some(changes)), ai).await;
    }
    if let Command::Workflow { command } = &cli.command {
        let store = open_store(&cfg, cli.data_dir.clone()).await?;
        // Starting a run resolves what its steps name against the live inventory.
        let lab = match command {
            workflow_cmd::WorkflowCommand::Run { .. } => Some(start_lab_with(&cfg, store.clone()).await?),
            _ => None,
        };
        let code = runs_cmd::run_state(command, &cfg, store, lab.as_ref()).await;
        if let Some(l) = lab {
            l.close().await;
        }
        return code;
    }
    let configured = cfg.proxmox.is_some() || cfg.kubernetes.is_some() || !cfg.hosts.is_empty();
    let lab = start_lab(&cfg, cli.data_dir.clone()).await?;

    let code = match cli.command {
        Command::Init { .. }
        | Command::Config { .. }
        | Command::Workflow { .. }
        | Command::Change { .. }
        | Command::Wishlist { .. }
        | Command::Audit { .. }
        | Command::Ai { .. }
        | Command::Incidents { .. } => unreachable!("handled above"),
        Command::Ask { text, docs, hard, json } => {
            let store = lab.store().context("`labops ask` needs the state database")?.clone();
            ask_cmd::ask(&cfg, store, &lab, &text, &docs, hard, json).await?
        }
        Command::Bench { command: BenchCommand::Nab { .. } | BenchCommand::Forecast { .. } | BenchCommand::Series { .. } } => unreachable!("handled above"),
        Command::Bench { command: BenchCommand::Eval { cases, model, limit, json } } => {
            let store = lab.store().context("`labops bench eval` needs the state database")?.clone();
            ask_cmd::eval(&cfg, store, &lab, &cases, &model, limit, json).await?
        }
        Command::Mcp => {
            let (changes, tasks) = match lab.store() {
                Some(store) => {
                    let changes = change_cmd::service(&cfg, store.clone()).await?;
                    let tasks = ai_cmd::tasks(&cfg, store, Some(changes.clone()))?;
                    (Some(changes), Some(tasks))
                }
                None => (None, None),
            };
            labops_server::serve_stdio(lab.clone(), changes, tasks).await.map_err(|e| anyhow::anyhow!("MCP over stdio: {e}"))?;
            ExitCode::SUCCESS
        }
        Command::Serve { listen } => {
            let token = cfg.server.bearer_token().map_err(anyhow::Error::msg)?;
            let mut monitor = None;
            let mut anomaly = None;
            let listen = listen.unwrap_or(cfg.server.listen.clone());
            let opts = labops_server::http::HttpOptions {
                listen: listen.parse().with_context(|| format!("--listen {listen:?} is not IP:PORT"))?,
                token: token.expose().to_string(),
                allowed_hosts: cfg.server.allowed_hosts.clone(),
                max_body_bytes: cfg.server.max_body_bytes,
                approvers: cfg.server.approvers().map_err(anyhow::Error::msg)?,
                changes: match lab.store() {
                    Some(store) => Some(change_cmd::service(&cfg, store.clone()).await?),
                    None => None,
                },
                tasks: match lab.store() {
                    Some(store) => Some(ai_cmd::tasks(&cfg, store, Some(change_cmd::service(&cfg, store.clone()).await?))?),
                    None => None,
                },
                alerting: match lab.store() {
                    Some(store) => {
                        let notify = cfg.alerts.notify().map_err(anyhow::Error::msg)?;
                        let auth = cfg.alerts.intake_auth(token.expose()).map_err(anyhow::Error::msg)?;
                        let remediation = alerts_remediation(&cfg, store).await?;
                        let a = labops_engine::alerting::Alerting::start(lab.clone(), store.clone(), cfg.alerts.settings(), notify.clone(), remediation).await?;
                        if let Some(m) = &cfg.alerts.monitor {
                            let watch = m.watch().map_err(anyhow::Error::msg)?;
                            monitor = Some((a.clone(), watch, std::sync::Arc::new(notify)));
                        }
                        if let Some(an) = &cfg.alerts.anomaly {
                            anomaly = Some((a.clone(), an.watch()));
                        }
                        Some((a, auth))
                    }
                    None => None,
                },
            };
            if lab.is_demo() {
                eprintln!("DEMO LAB: serving a simulated Proxmox cluster (fakepve), not a real lab.");
            }
            // The same process drives every workflow run (approvals and completed steps made
            // from any CLI are picked up within a second) and moves approved changes on through
            // validation, documentation and their commit.
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let mut background = Vec::new();
            if let Some((alerting, watch, notify)) = monitor {
                background.push(tokio::spawn(labops_engine::monitor::run(alerting, watch, notify, stop_rx.clone())));
            }
            if let Some((alerting, watch)) = anomaly {
                background.push(tokio::spawn(labops_engine::anomaly::run(alerting, watch, stop_rx.clone())));
            }
            if let Some(store) = lab.store() {
                let changes = change_cmd::service(&cfg, store.clone()).await?;
                let engine = changes.engine().clone();
                let mut stop = stop_rx.clone();
                background.push(tokio::spawn(async move { engine.serve(async move { let _ = stop.wait_for(|s| *s).await; }).await }));
                let mut stop = stop_rx.clone();
                background.push(tokio::spawn(async move {
                    // A change that cannot move says why once, not every second.
                    let mut said: std::collections::HashMap<String, String> = std::collections::HashMap::new();
                    loop {
                        for (id, r) in changes.advance_all().await {
                            match r {
                                Err(e) if said.get(&id) != Some(&e.to_string()) => {
                                    tracing::warn!(change = %id, "{e}");
                                    said.insert(id, e.to_string());
                                }
                                Err(_) => {}
                                Ok(_) => {
                                    said.remove(&id);
                                }
                            }
                        }
                        tokio::select! {
                            _ = stop.wait_for(|s| *s) => break,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }));
            }
            let served = labops_server::http::serve(lab.clone(), opts, shutdown_signal()).await.context("HTTP server");
            let _ = stop_tx.send(true);
            for task in background {
                let _ = task.await;
            }
            served?;
            ExitCode::SUCCESS
        }
        cmd => {
            // One-shot commands: give the sources a moment for fresh data, then answer.
            lab.wait_until_reported(Duration::from_secs(20)).await;
            if !configured {
                eprintln!(
                    "No lab is configured. Try the demo lab with `scripts/demo-lab run`, or write a config with `labops init`."
                );
            }
            one_shot(&lab, cmd)?
        }
    };
    lab.close().await;
    Ok(code)
}

fn init(path: Option<PathBuf>, force: bool) -> anyhow::Result<ExitCode> {
    let path = path.or_else(config::default_config_path).context("no config directory; pass a path")?;
    if path.exists() && !force {
        bail!("{} exists; pass --force to overwrite it", path.display());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(&path, config::TEMPLATE).with_context(|| format!("write {}", path.display()))?;
    println!("Wrote {}. Edit it, then run `labops --config {} config validate`.", path.display(), path.display());
    Ok(ExitCode::SUCCESS)
}

fn validate(explicit: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let l = config::load(explicit);
    let what = l.file.as_ref().map(|f| f.display().to_string()).unwrap_or_else(|| "defaults and environment (no file)".into());
    for e in &l.errors {
        println!("error: {e}");
    }
    for w in &l.warnings {
        println!("warning: {w}");
    }
    if l.errors.is_empty() {
        println!("{what}: valid ({} warning(s))", l.warnings.len());
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{what}: {} error(s), {} warning(s)", l.errors.len(), l.warnings.len());
        Ok(ExitCode::from(1))
    }
}

/// Runbooks from `[alerts] runbooks` (default `runbooks/`), with the workflow library they name and
/// the change service their proposals go to. A runbook that does not check is refused at start.
async fn alerts_remediation(cfg: &config::Config, store: &labops_store::Store) -> anyhow::Result<Option<labops_engine::alerting::Remediation>> {
    let dir = cfg.alerts.runbooks.clone().unwrap_or_else(|| "runbooks".into());
    let library = labops_engine::tasks::Library::load(&cfg.ai.library.clone().unwrap_or_else(|| "workflows".into()));
    let names: Vec<String> = library.choices().into_iter().map(|c| c.name).collect();
    let (runbooks, problems) = labops_aiops::runbook::load_dir(&dir, &names);
    if !problems.is_empty() {
        bail!("runbooks in {}: {}", dir.display(), problems.join("; "));
    }
    if runbooks.is_empty() {
        return Ok(None);
    }
    tracing::info!(count = runbooks.len(), dir = %dir.display(), "runbooks loaded");
    Ok(Some(labops_engine::alerting::Remediation {
        changes: change_cmd::service(cfg, store.clone()).await?,
        library: std::sync::Arc::new(library),
        runbooks: std::sync::Arc::new(runbooks),
    }))
}

async fn open_store(cfg: &config::Config, data_dir: Option<PathBuf>) -> anyhow::Result<labops_store::Store> {
    let dir = data_dir
        .or_else(|| cfg.state.data_dir.clone())
        .or_else(|| dirs::data_dir().map(|d| d.join("labops")))
        .context("no data directory; pass --data-dir")?;
    Ok(labops_store::Store::open(&dir.join("labops.db")).await?)
}

async fn start_lab(cfg: &config::Config, data_dir: Option<PathBuf>) -> anyhow::Result<Lab> {
    let store = open_store(cfg, data_dir).await?;
    start_lab_with(cfg, store).await
}

/// The lab over an open store: one source per configured integration.
async fn start_lab_with(cfg: &config::Config, store: labops_store::Store) -> anyhow::Result<Lab> {
    let sources = lab_sources(cfg)?;
    Ok(Lab::start(LabOptions { name: cfg.lab.name.clone(), demo: cfg.lab.demo, sources }, Some(store)).await)
}

/// One inventory source per configured integration.
pub(crate) fn lab_sources(cfg: &config::Config) -> anyhow::Result<Vec<SourceSpec>> {
    let mut sources = Vec::new();
    if let Some(p) = &cfg.proxmox {
        if p.insecure {
            tracing::warn!(url = %p.url, "Proxmox certificates are not verified (insecure = true); set ca_file for a real lab");
        }
        let client = proxmox::Client::new(p.settings().map_err(anyhow::Error::msg)?)?;
        sources.push(SourceSpec::Proxmox {
            client: std::sync::Arc::new(client),
            interval: Duration::from_secs(p.refresh_seconds.max(1)),
        });
    }
    if let Some(k) = &cfg.kubernetes {
        sources.push(SourceSpec::Kubernetes {
            settings: kubernetes::Settings { kubeconfig: k.kubeconfig.clone(), context: k.context.clone() },
            interval: Duration::from_secs(k.refresh_seconds.unwrap_or(2).max(1)),
        });
    }
    if !cfg.hosts.is_empty() {
        sources.push(SourceSpec::Static { part: static_hosts::to_part(&cfg.hosts) });
    }
    Ok(sources)
}

fn parse_kind(k: Option<&str>) -> anyhow::Result<Option<EntityKind>> {
    match k {
        None => Ok(None),
        Some(s) => EntityKind::parse(s).map(Some).with_context(|| {
            format!(
                "unknown kind {s:?}; kinds are {}",
                EntityKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
            )
        }),
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Prints a service error and returns the exit code: 2 unknown, 3 ambiguous, 1 otherwise.
fn report(e: &ServiceError) -> ExitCode {
    eprintln!("{}", render::service_error(e));
    match e {
        ServiceError::Resolve { error: ResolveError::Unknown { .. }, .. } => ExitCode::from(2),
        ServiceError::Resolve { error: ResolveError::Ambiguous { .. }, .. } => ExitCode::from(3),
        _ => ExitCode::from(1),
    }
}

/// Prints a service answer as JSON or as text; an error goes to stderr (and, with `--json`, as
/// JSON to stdout) and sets the exit code.
fn answer<T: serde::Serialize>(
    r: Result<T, ServiceError>,
    json: bool,
    text: impl FnOnce(&T) -> String,
) -> anyhow::Result<ExitCode> {
    match r {
        Ok(v) if json => print_json(&v)?,
        Ok(v) => print!("{}", text(&v)),
        Err(e) => {
            if json {
                print_json(&e)?;
            }
            return Ok(report(&e));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn one_shot(lab: &Lab, cmd: Command) -> anyhow::Result<ExitCode> {
    Ok(match cmd {
        Command::Status { json } => {
            let s = lab.inventory_summary();
            if json {
                print_json(&s)?;
            } else {
                print!("{}", render::status(lab, &s));
            }
            ExitCode::SUCCESS
        }
        Command::Inventory { json } => {
            let snap = lab.snapshot();
            if json {
                print_json(&serde_json::json!({
                    "lab": lab.name(),
                    "entities": snap.inventory.entities(),
                    "relations": snap.inventory.relations(),
                    "freshness": lab.freshness(&snap),
                }))?;
            } else {
                print!("{}", render::inventory(lab, &snap));
            }
            ExitCode::SUCCESS
        }
        Command::List { kind, node, status, label, json } => {
            let f = ListFilter { kind: parse_kind(kind.as_deref())?, node, status, label, limit: Some(10_000) };
            answer(lab.list_entities(&f), json, render::entity_list)?
        }
        Command::Resolve { name, kind, json } => answer(lab.resolve(&name, parse_kind(kind.as_deref())?), json, |r| {
            format!("{}\t{}\t{}\n", r.entity.id, r.entity.kind, r.entity.status)
        })?,
        Command::Get { name } => answer(lab.get_entity(&name), true, |_| String::new())?,
        Command::Impact { name, json } => answer(lab.impact_of(&name), json, render::impact)?,
        Command::Workloads { namespace, node, json } => {
            answer(lab.k8s_workloads(&WorkloadFilter { namespace, node }), json, render::workloads)?
        }
        Command::Init { .. }
        | Command::Config { .. }
        | Command::Workflow { .. }
        | Command::Change { .. }
        | Command::Wishlist { .. }
        | Command::Audit { .. }
        | Command::Ai { .. }
        | Command::Incidents { .. }
        | Command::Ask { .. }
        | Command::Bench { .. }
        | Command::Mcp
        | Command::Serve { .. } => {
            unreachable!("not one-shot")
        }
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
