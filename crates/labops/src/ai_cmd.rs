//! `labops ai route`: where a request would go and why, without calling any model. The local
//! and cloud providers are probed (a model list or a bare HTTPS answer within 2 s), secrets and
//! internal names are looked for (the names come from the inventory labops last stored), and the
//! privacy-first router decides.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use labops_ai::privacy::{Purpose, classify};
use labops_ai::redact::Redactor;
use labops_ai::router::{Providers, route};
use labops_core::inventory::EntityKind;
use labops_store::Store;
use serde_json::json;

use crate::config::{AiCloudConfig, AiLocalConfig, Config, LocalProvider, read_secret};

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
    }
}
