//! `labops ai route`: where a request would go and why, without calling any model. The local
//! and cloud providers are probed (a model list or a bare HTTPS answer within 2 s), secrets and
//! internal names are looked for (the names come from the inventory labops last stored), and the
//! privacy-first router decides.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;
use labops_ai::privacy::{Purpose, classify};
use labops_ai::redact::Redactor;
use labops_ai::agent::Limits;
use labops_ai::engine::{Ai, Budget};
use labops_ai::model::{Model, Price};
use labops_ai::provider::{GenaiModel, ProviderKind, ProviderSpec};
use labops_ai::router::{Providers, route};
use labops_engine::tasks::{Library, Tasks};
use labops_core::inventory::EntityKind;
use labops_store::Store;
use serde_json::json;

use crate::config::{AiCloudConfig, AiLocalConfig, CloudProvider, Config, LocalProvider, ToolModeConfig, read_secret};

/// `labops ai ...`
#[derive(Debug, Subcommand)]
pub enum AiCommand {
    /// Show which model would serve a request and why (privacy class, purpose, what was found,
    /// provider health), without calling any model.
    Route {
        /// The request.
        text: String,
        /// What it is for, when the words do not say: config, security, monitoring, real_time,
        /// architecture, research, code, general.
        #[arg(long)]
        purpose: Option<String>,
        /// It needs hard reasoning: prefer the cloud model when privacy allows.
        #[arg(long)]
        hard: bool,
        /// Print `{"route", "provider", "privacy", "reason", ...}`.
        #[arg(long)]
        json: bool,
    },
    /// What the models cost and did: calls, failures, tokens, dollars, latency and redactions
    /// per provider, and the budget left.
    Usage {
        /// Over the last N days.
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The configured models, as the engine uses them.
pub fn models(cfg: &Config) -> anyhow::Result<(Option<Arc<dyn Model>>, Option<Arc<dyn Model>>)> {
    let local = match &cfg.ai.local {
        None => None,
        Some(l) => {
            let timeout = Duration::from_secs(l.timeout_seconds.unwrap_or(120));
            let http = labops_integrations::http_client(&labops_integrations::TlsTrust::System, timeout).map_err(anyhow::Error::msg)?;
            let api_key = match (&l.api_key, &l.api_key_file) {
                (None, None) => None,
                (k, f) => Some(read_secret(k, f, "local model API key").map_err(anyhow::Error::msg)?.expose().to_string()),
            };
            let spec = ProviderSpec {
                kind: match l.provider {
                    LocalProvider::Ollama => ProviderKind::Ollama,
                    LocalProvider::OpenaiCompatible => ProviderKind::OpenaiCompatible,
                },
                url: l.url.clone(),
                model: l.model.clone(),
                api_key,
                leaves_machine: false,
                price: Price::default(),
                timeout,
                native_tools: l.tool_mode == Some(ToolModeConfig::Native),
            };
            Some(Arc::new(GenaiModel::new(spec, http)?.with_latency_target(l.latency_target_ms.map(Duration::from_millis))) as Arc<dyn Model>)
        }
    };
    let cloud = match &cfg.ai.cloud {
        None => None,
        Some(c) => {
            let timeout = Duration::from_secs(c.timeout_seconds.unwrap_or(120));
            let http = labops_integrations::http_client(&labops_integrations::TlsTrust::System, timeout).map_err(anyhow::Error::msg)?;
            // A missing key is not fatal: the cloud is then unavailable and says why.
            let api_key = read_secret(&c.api_key, &c.api_key_file, "cloud API key").ok().map(|s| s.expose().to_string());
            let (list_in, list_out) = list_price(c.provider, &c.model);
            let spec = ProviderSpec {
                kind: match c.provider {
                    CloudProvider::Anthropic => ProviderKind::Anthropic,
                    CloudProvider::Openai => ProviderKind::Openai,
                },
                url: c.base_url(),
                model: c.model.clone(),
                api_key,
                leaves_machine: true,
                price: Price { input_per_mtok: c.input_usd_per_mtok.unwrap_or(list_in), output_per_mtok: c.output_usd_per_mtok.unwrap_or(list_out) },
                timeout,
                native_tools: c.tool_mode != Some(ToolModeConfig::Json),
            };
            Some(Arc::new(GenaiModel::new(spec, http)?.with_latency_target(c.latency_target_ms.map(Duration::from_millis))) as Arc<dyn Model>)
        }
    };
    Ok((local, cloud))
}

/// List prices per million tokens (input, output) of common cloud models; 3/15 otherwise.
fn list_price(p: CloudProvider, model: &str) -> (f64, f64) {
    let m = model.to_ascii_lowercase();
    match p {
        CloudProvider::Anthropic if m.contains("haiku") => (1.0, 5.0),
        CloudProvider::Anthropic if m.contains("opus") => (5.0, 25.0),
        CloudProvider::Openai if m.contains("mini") => (0.25, 2.0),
        CloudProvider::Openai => (1.25, 10.0),
        _ => (3.0, 15.0),
    }
}

/// The AI engine from config, recording into `store`. With no model configured it still
/// routes: public work to an MCP client's model (sampling) when one is connected, the rest
/// refused with what to configure.
pub fn engine(cfg: &Config, store: &Store) -> anyhow::Result<Arc<Ai>> {
    let (local, cloud) = models(cfg)?;
    let budget = Budget { daily_usd: cfg.ai.budget.daily_usd, monthly_usd: cfg.ai.budget.monthly_usd };
    Ok(Arc::new(Ai::new(local, cloud, budget, Redactor::new(cfg.ai.sensitive_values.clone()), Some(store.clone()))))
}

/// The task service from config.
pub fn tasks(cfg: &Config, store: &Store, changes: Option<labops_engine::changes::Changes>) -> anyhow::Result<Tasks> {
    let ai = engine(cfg, store)?;
    let dir = cfg.ai.library.clone().unwrap_or_else(|| "workflows".into());
    let library = Library::load(&dir);
    if library.choices().is_empty() {
        tracing::warn!("no workflow of the library is in {}: `labops ask` can answer but not propose; set [ai] library", dir.display());
    }
    let d = Limits::default();
    let limits = Limits {
        max_steps: cfg.ai.max_steps.unwrap_or(d.max_steps),
        max_time: cfg.ai.task_timeout_seconds.map(Duration::from_secs).unwrap_or(d.max_time),
        max_cost_usd: cfg.ai.task_max_usd.unwrap_or(d.max_cost_usd),
    };
    Ok(Tasks { ai, library: Arc::new(library), changes, limits, sensitive: cfg.ai.sensitive_values.clone() })
}

const PROBE: Duration = Duration::from_secs(2);

/// Whether the local model server answers its model list.
async fn probe_local(l: &AiLocalConfig) -> Result<(), String> {
    let base = l.url.trim_end_matches('/');
    let url = match l.provider {
        LocalProvider::Ollama => format!("{base}/api/tags"),
        LocalProvider::OpenaiCompatible if base.ends_with("/v1") => format!("{base}/models"),
        LocalProvider::OpenaiCompatible => format!("{base}/v1/models"),
    };
    let client = labops_integrations::http_client(&labops_integrations::TlsTrust::System, PROBE)?;
    match client.get(&url).send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("{url} answered {}", r.status())),
        Err(e) => Err(format!("{url} does not answer ({})", if e.is_timeout() { "timed out".to_string() } else { e.to_string() })),
    }
}

/// Whether the cloud API is configured with a key and reachable at all (any HTTP answer).
async fn probe_cloud(c: &AiCloudConfig) -> Result<(), String> {
    read_secret(&c.api_key, &c.api_key_file, "cloud API key").map_err(|e| format!("{e}; set api_key_file"))?;
    let client = labops_integrations::http_client(&labops_integrations::TlsTrust::System, PROBE)?;
    let url = c.base_url();
    match client.get(&url).send().await {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{url} is unreachable ({}); offline, labops works on the local model", if e.is_timeout() { "timed out".to_string() } else { e.to_string() })),
    }
}

/// The values that must not leave the machine: the configured ones, and every node, guest,
/// host and Kubernetes node name and address in the inventory labops last stored.
async fn sensitive_values(cfg: &Config, store: &Store) -> Vec<String> {
    let mut values = cfg.ai.sensitive_values.clone();
    if let Ok(snaps) = store.load_snapshots().await {
        for s in snaps {
            for e in s.part.entities {
                if matches!(e.kind, EntityKind::ProxmoxNode | EntityKind::Vm | EntityKind::Lxc | EntityKind::Host | EntityKind::K8sNode) {
                    values.push(e.name.clone());
                    values.extend(e.addresses.iter().cloned());
                }
            }
        }
    }
    values
}

/// Runs one `labops ai` command.
pub async fn run(cmd: &AiCommand, cfg: &Config, store: Store) -> anyhow::Result<ExitCode> {
    match cmd {
        AiCommand::Route { text, purpose, hard, json: json_out } => {
            let purpose = match purpose {
                None => None,
                Some(p) => Some(serde_json::from_value::<Purpose>(json!(p)).map_err(|_| {
                    anyhow::anyhow!("--purpose {p:?} is not a purpose; use config, security, monitoring, real_time, architecture, research, code or general")
                })?),
            };
            let redactor = Redactor::new(sensitive_values(cfg, &store).await);
            let class = classify(text, purpose, &redactor);
            let (local, cloud) = tokio::join!(
                async {
                    match &cfg.ai.local {
                        Some(l) => Some((l, probe_local(l).await)),
                        None => None,
                    }
                },
                async {
                    match &cfg.ai.cloud {
                        Some(c) => Some((c, probe_cloud(c).await)),
                        None => None,
                    }
                }
            );
            let mut p = Providers { hard: *hard, ..Default::default() };
            match local {
                Some((l, Ok(()))) => p.local = Some(format!("{}/{}", serde_json::to_value(l.provider)?.as_str().unwrap_or("local"), l.model)),
                Some((_, Err(e))) => p.local_down = Some(e),
                None => {}
            }
            // The spend so far, as the engine sums it before each cloud call.
            let cloud = match cloud {
                Some((c, Ok(()))) => Some((c, engine(cfg, &store)?.over_budget(0.0).await.map_or(Ok(()), Err))),
                other => other,
            };
            match cloud {
                Some((c, Ok(()))) => p.cloud = Some(format!("{}/{}", serde_json::to_value(c.provider)?.as_str().unwrap_or("cloud"), c.model)),
                Some((_, Err(e))) => p.cloud_down = Some(e),
                None => {}
            }
            let d = route(&class, &p);
            let found = redactor.findings(text);
            if *json_out {
                let mut v = serde_json::to_value(&d)?;
                v["purpose"] = serde_json::to_value(class.purpose)?;
                v["reasons"] = json!(class.reasons);
                v["would_redact"] = json!(found.iter().map(|(k, n)| json!({"kind": k, "found_by": n})).collect::<Vec<_>>());
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("route: {}", serde_json::to_value(d.route)?.as_str().unwrap_or("?"));
                println!("provider: {}", d.provider.as_deref().unwrap_or("none"));
                println!("privacy: {} (purpose: {})", serde_json::to_value(d.privacy)?.as_str().unwrap_or("?"), serde_json::to_value(class.purpose)?.as_str().unwrap_or("?"));
                println!("why: {}", d.reason);
            }
            Ok(ExitCode::SUCCESS)
        }
        AiCommand::Usage { days, json: json_out } => {
            let now = labops_engine::lab::now_ms();
            let since = now - i64::from(*days) * 86_400_000;
            let rows = store.ai_usage_since(since).await?;
            let day = now - now.rem_euclid(86_400_000);
            let today = store.ai_spent_since(day).await?;
            let budget = &cfg.ai.budget;
            if *json_out {
                println!("{}", serde_json::to_string_pretty(&json!({"days": days, "providers": rows, "spent_today_usd": today, "budget": {"daily_usd": budget.daily_usd, "monthly_usd": budget.monthly_usd}}))?);
                return Ok(ExitCode::SUCCESS);
            }
            if rows.is_empty() {
                println!("No model calls in the last {days} days.");
            } else {
                let mut t = comfy_table::Table::new();
                t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED)
                    .set_header(["provider", "route", "calls", "failed", "tokens in", "tokens out", "cost", "mean latency", "redacted"]);
                for r in &rows {
                    t.add_row([
                        r.provider.clone(),
                        r.route.clone(),
                        r.calls.to_string(),
                        r.failed.to_string(),
                        r.input_tokens.to_string(),
                        r.output_tokens.to_string(),
                        format!("${:.4}", r.cost_usd),
                        format!("{:.0} ms", r.mean_latency_ms),
                        r.redactions.to_string(),
                    ]);
                }
                println!("Model calls, last {days} days:\n{t}");
            }
            let left = |limit: Option<f64>, spent: f64| limit.map(|l| format!("${spent:.4} of ${l:.2} ({:.0}% left)", (100.0 * (l - spent) / l).max(0.0))).unwrap_or_else(|| format!("${spent:.4} (no limit)"));
            println!("Cloud spend today: {}", left(budget.daily_usd, today));
            Ok(ExitCode::SUCCESS)
        }
    }
}
