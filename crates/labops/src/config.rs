//! `labops.toml`: typed config, environment overrides, secrets from files, and validation that
//! reports every error at once with its field path.
//!
//! Layers, last wins: built-in defaults, the file (`--config` or `LABOPS_CONFIG`, else
//! `$XDG_CONFIG_HOME/labops/labops.toml` when it exists), then `LABOPS_SECTION__FIELD`
//! environment variables (`LABOPS_PROXMOX__URL`, `LABOPS_SERVER__TOKEN`; an unknown section or
//! field there is an error, like in the file) and `LABOPS_TOKEN` for the server token. Other
//! `LABOPS_*` names without `__` are not config keys. `LABOPS_CONFIG`, `LABOPS_TOKEN`, `LABOPS_TEST_*` and `LABOPS_BENCH_*` are
//! reserved names, not config keys.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use labops_integrations::static_hosts::HostConfig;
use labops_integrations::{github, proxmox, Secret, TlsTrust};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The whole config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[lab]`: naming.
    #[serde(default)]
    pub lab: LabConfig,
    /// `[state]`: where labops keeps its database.
    #[serde(default)]
    pub state: StateConfig,
    /// `[proxmox]`: the Proxmox VE cluster. Absent: no Proxmox source.
    #[serde(default)]
    pub proxmox: Option<ProxmoxConfig>,
    /// `[kubernetes]`: the K3s cluster. Absent: no Kubernetes source.
    #[serde(default)]
    pub kubernetes: Option<KubernetesConfig>,
    /// `[server]`: the HTTP side (`labops serve`).
    #[serde(default)]
    pub server: ServerConfig,
    /// `[[hosts]]`: machines without an API.
    #[serde(default)]
    pub hosts: Vec<HostConfig>,
    /// `[workflows]`: how runs are executed.
    #[serde(default)]
    pub workflows: WorkflowsConfig,
    /// `[ssh]`: how workflow steps reach hosts for allowlisted commands. Absent: `system-check`
    /// runs locally only and `proxmox-task` `commands` cannot run.
    #[serde(default)]
    pub ssh: Option<labops_engine::runs::commands::SshSettings>,
    /// `[git]`: the GitOps repository `git-commit` steps commit to. Absent: no `git-commit`.
    #[serde(default)]
    pub git: Option<labops_engine::runs::git::GitSettings>,
    /// `[gitops]`: the repository every change documents itself in and whose commit closes its
    /// issue. Absent: changes run and validate but cannot close.
    #[serde(default)]
    pub gitops: Option<GitOpsConfig>,
    /// `[forge]`: where change issues live.
    #[serde(default)]
    pub forge: ForgeConfig,
    /// `[ai]`: the models labops may use and the privacy policy.
    #[serde(default)]
    pub ai: AiConfig,
    /// `[alerts]`: alert intake, grouping and escalation.
    #[serde(default)]
    pub alerts: AlertsConfig,
}

/// `[alerts]`: how senders authenticate, how alerts group, where notices go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// A bearer token only for alert senders (besides the server token). Prefer `token_file`.
    #[serde(default)]
    pub token: Option<String>,
    /// File holding it.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Shared secret for Grafana's HMAC signature. Prefer `hmac_secret_file`.
    #[serde(default)]
    pub hmac_secret: Option<String>,
    /// File holding it.
    #[serde(default)]
    pub hmac_secret_file: Option<PathBuf>,
    /// Header carrying the signature (Grafana's default).
    #[serde(default = "default_hmac_header")]
    pub hmac_header: String,
    /// Header carrying the signed timestamp, when the contact point sets one.
    #[serde(default)]
    pub hmac_timestamp_header: Option<String>,
    /// Seconds an incident waits before its first notice, so a storm's symptoms fold in first.
    #[serde(default = "default_group_wait")]
    pub group_wait_seconds: u64,
    /// Alerts naming nothing in the inventory join an open incident of the same name this recent.
    #[serde(default = "default_group_window")]
    pub group_window_minutes: u64,
    /// A generic webhook that gets escalated incidents as JSON.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Home Assistant notifications.
    #[serde(default)]
    pub home_assistant: Option<HomeAssistantConfig>,
    /// Monitor the monitor: the monitoring stack labops checks.
    #[serde(default)]
    pub monitor: Option<MonitorConfig>,
    /// Anomaly detection and capacity forecasts on Prometheus series.
    #[serde(default)]
    pub anomaly: Option<AnomalyConfig>,
    /// Directory of runbooks (`*.yaml`: label matchers -> a library workflow); default `runbooks`.
    #[serde(default)]
    pub runbooks: Option<PathBuf>,
    /// Per severity (`critical`, `warning`, `default`): channels in order, each `channel@minutes`
    /// unacknowledged before it (`["dashboard@0", "home_assistant@5", "webhook@15"]`).
    #[serde(default)]
    pub escalation: BTreeMap<String, Vec<String>>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            token: None,
            token_file: None,
            hmac_secret: None,
            hmac_secret_file: None,
            hmac_header: default_hmac_header(),
            hmac_timestamp_header: None,
            group_wait_seconds: default_group_wait(),
            group_window_minutes: default_group_window(),
            webhook_url: None,
            home_assistant: None,
            runbooks: None,
            monitor: None,
            anomaly: None,
            escalation: BTreeMap::new(),
        }
    }
}

/// `[alerts.monitor]`: the monitoring stack labops watches (monitor the monitor).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    /// Prometheus (`http://prometheus.homelab:9090`): health and rule evaluation.
    #[serde(default)]
    pub prometheus_url: Option<String>,
    /// Alertmanager (`http://alertmanager.homelab:9093`): health.
    #[serde(default)]
    pub alertmanager_url: Option<String>,
    /// Grafana (`http://grafana.homelab:3000`): `/api/health`.
    #[serde(default)]
    pub grafana_url: Option<String>,
    /// A Grafana service-account token, if `/api/health` needs one.
    #[serde(default)]
    pub grafana_token_file: Option<PathBuf>,
    /// The always-firing alert that proves the path from Prometheus to labops works.
    #[serde(default)]
    pub heartbeat_alert: Option<String>,
    /// How long it may be missing (default 10 minutes).
    #[serde(default = "default_heartbeat")]
    pub heartbeat_minutes: u64,
    /// How often to check (default 30 s).
    #[serde(default = "default_monitor_interval")]
    pub interval_seconds: u64,
}

fn default_heartbeat() -> u64 {
    10
}
fn default_monitor_interval() -> u64 {
    30
}

impl MonitorConfig {
    /// What the monitor task watches.
    pub fn watch(&self) -> Result<labops_engine::monitor::Watch, String> {
        let token = match &self.grafana_token_file {
            Some(f) => Some(read_secret(&None, &Some(f.clone()), "Grafana token")?.expose().to_string()),
            None => None,
        };
        Ok(labops_engine::monitor::Watch {
            prometheus: self.prometheus_url.clone(),
            alertmanager: self.alertmanager_url.clone(),
            grafana: self.grafana_url.clone().map(|u| (u, token)),
            heartbeat: self.heartbeat_alert.clone().map(|n| (n, Duration::from_secs(self.heartbeat_minutes * 60))),
            interval: Duration::from_secs(self.interval_seconds.max(1)),
        })
    }
}

/// `[alerts.anomaly]`: Prometheus series labops scores for anomalies, and capacity forecasts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyConfig {
    /// Prometheus base URL.
    pub prometheus_url: String,
    /// Resolution of the series read (default 60 s).
    #[serde(default = "default_anomaly_step")]
    pub step_seconds: f64,
    /// How often new points are read (default 60 s).
    #[serde(default = "default_anomaly_step")]
    pub interval_seconds: f64,
    /// How far back the first read goes (default 24 hours). The detector learns a series' period
    /// from its history once it has about six cycles (1,024 blocks of 8 one-minute points for
    /// a daily one), so 144 hours teach a daily cycle at start.
    #[serde(default = "default_warmup_hours")]
    pub warmup_hours: f64,
    /// Points a series needs before it can alarm (default 100).
    #[serde(default = "default_warmup_points")]
    pub warmup_points: usize,
    /// At most this many series are watched (default 20000).
    #[serde(default = "default_max_series")]
    pub max_series: usize,
    /// How far back capacity forecasts look (default 7 days) and how often they run (default
    /// 15 minutes).
    #[serde(default = "default_forecast_days")]
    pub forecast_window_days: f64,
    /// See `forecast_window_days`.
    #[serde(default = "default_forecast_every")]
    pub forecast_every_minutes: f64,
    /// Series to score: `{ kind, expr }`. Empty: node_exporter's CPU, memory, network,
    /// temperature and filesystem usage.
    #[serde(default)]
    pub queries: Vec<AnomalyQuery>,
    /// Capacity rules: `{ name, used, size, horizon_days }`. Absent: node_exporter's
    /// filesystems, full within 14 days.
    #[serde(default)]
    pub capacity: Option<Vec<CapacityRule>>,
    /// Counters that should stay flat: `{ name, expr }`. Absent: smartctl_exporter's
    /// reallocated, pending and uncorrectable sectors and NVMe media errors.
    #[serde(default)]
    pub counters: Option<Vec<CounterRule>>,
}

/// One `[[alerts.anomaly.counters]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterRule {
    /// What it counts (`smart_reallocated_sectors`).
    pub name: String,
    /// PromQL.
    pub expr: String,
}

/// One `[[alerts.anomaly.queries]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyQuery {
    /// `cpu`, `memory`, `latency`, `errors`, `network`, `temperature`, `disk_usage`...
    pub kind: String,
    /// PromQL.
    pub expr: String,
}

/// One `[[alerts.anomaly.capacity]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityRule {
    /// `filesystem`, `zfs_pool`, `temperature`...
    pub name: String,
    /// PromQL for what is used.
    pub used: String,
    /// PromQL for the limit with the same labels, or a number (`"85"` degrees).
    pub size: String,
    /// Alert when the limit is met within this many days (default 14).
    #[serde(default = "default_horizon")]
    pub horizon_days: f64,
}

fn default_anomaly_step() -> f64 {
    60.0
}
fn default_warmup_hours() -> f64 {
    24.0
}
fn default_warmup_points() -> usize {
    100
}
fn default_max_series() -> usize {
    20_000
}
fn default_forecast_days() -> f64 {
    7.0
}
fn default_forecast_every() -> f64 {
    15.0
}
fn default_horizon() -> f64 {
    14.0
}

const REAL_FS: &str = r#"fstype!~"tmpfs|overlay|squashfs|ramfs|nsfs""#;

impl AnomalyConfig {
    /// What the watcher reads.
    pub fn watch(&self) -> labops_engine::anomaly::Watch {
        use labops_engine::anomaly::{Capacity, Query};
        let q = |kind: &str, expr: String| Query { kind: kind.into(), expr };
        let queries = if self.queries.is_empty() {
            vec![
                q("cpu", r#"1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[5m]))"#.into()),
                q("memory", "1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes".into()),
                q("network", r#"sum by (instance) (rate(node_network_receive_bytes_total{device!="lo"}[5m]))"#.into()),
                q("temperature", "max by (instance) (node_hwmon_temp_celsius)".into()),
                q("disk_usage", format!("1 - node_filesystem_avail_bytes{{{REAL_FS}}} / node_filesystem_size_bytes{{{REAL_FS}}}")),
            ]
        } else {
            self.queries.iter().map(|x| q(&x.kind, x.expr.clone())).collect()
        };
        let capacity = match &self.capacity {
            Some(rules) => rules.iter().map(|r| Capacity { name: r.name.clone(), used: r.used.clone(), size: r.size.clone(), horizon_days: r.horizon_days }).collect(),
            None => vec![
                Capacity {
                    name: "filesystem".into(),
                    used: format!("node_filesystem_size_bytes{{{REAL_FS}}} - node_filesystem_avail_bytes{{{REAL_FS}}}"),
                    size: format!("node_filesystem_size_bytes{{{REAL_FS}}}"),
                    horizon_days: 14.0,
                },
                Capacity { name: "temperature".into(), used: "node_hwmon_temp_celsius".into(), size: "node_hwmon_temp_crit_celsius".into(), horizon_days: 14.0 },
            ],
        };
        let counters = match &self.counters {
            Some(rules) => rules.iter().map(|r| labops_engine::anomaly::Counter { name: r.name.clone(), expr: r.expr.clone() }).collect(),
            None => vec![
                labops_engine::anomaly::Counter {
                    name: "smart_bad_sectors".into(),
                    expr: r#"smartctl_device_attribute{attribute_name=~"Reallocated_Sector_Ct|Current_Pending_Sector|Offline_Uncorrectable|Reported_Uncorrect",attribute_value_type="raw"}"#.into(),
                },
                labops_engine::anomaly::Counter { name: "nvme_media_errors".into(), expr: "smartctl_device_media_errors".into() },
            ],
        };
        let secs = |s: f64| Duration::from_secs_f64(s.max(0.001));
        labops_engine::anomaly::Watch {
            prometheus: self.prometheus_url.clone(),
            queries,
            capacity,
            counters,
            step: secs(self.step_seconds),
            interval: secs(self.interval_seconds),
            warmup: secs(self.warmup_hours * 3600.0),
            forecast_window: secs(self.forecast_window_days * 86_400.0),
            forecast_every: secs(self.forecast_every_minutes * 60.0),
            detector: labops_aiops::detect::Config { warmup: self.warmup_points, ..Default::default() },
            max_series: self.max_series,
        }
    }
}

/// `[alerts.home_assistant]`: Home Assistant's REST API and a notify service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeAssistantConfig {
    /// Base URL (`http://homeassistant.local:8123`).
    pub url: String,
    /// A long-lived access token. Prefer `token_file`.
    #[serde(default)]
    pub token: Option<String>,
    /// File holding it.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The notify service (`notify.mobile_app_phone`).
    pub service: String,
}

fn default_hmac_header() -> String {
    "X-Grafana-Alerting-Signature".into()
}
fn default_group_wait() -> u64 {
    30
}
fn default_group_window() -> u64 {
    5
}

/// Parses one escalation step, `channel@minutes`.
pub fn escalation_step(s: &str) -> Result<labops_engine::alerting::Step, String> {
    let (channel, minutes) = s.split_once('@').unwrap_or((s, "0"));
    let channel = channel.trim();
    if !matches!(channel, "dashboard" | "home_assistant" | "webhook") {
        return Err(format!("{s:?}: {channel:?} is not a channel; use dashboard, home_assistant or webhook"));
    }
    let after_minutes = minutes.trim().parse::<u32>().map_err(|_| format!("{s:?}: {minutes:?} is not a number of minutes"))?;
    Ok(labops_engine::alerting::Step { channel: channel.into(), after_minutes })
}

impl AlertsConfig {
    /// The desk's tunables.
    pub fn settings(&self) -> labops_aiops::desk::Settings {
        labops_aiops::desk::Settings {
            group_wait_ms: self.group_wait_seconds as i64 * 1000,
            group_window_ms: self.group_window_minutes as i64 * 60_000,
            ..Default::default()
        }
    }

    /// Where notices go, secrets read.
    pub fn notify(&self) -> Result<labops_engine::alerting::Notify, String> {
        let home_assistant = match &self.home_assistant {
            Some(h) => Some((h.url.clone(), read_secret(&h.token, &h.token_file, "Home Assistant token")?.expose().to_string(), h.service.clone())),
            None => None,
        };
        let mut escalation = BTreeMap::new();
        for (sev, steps) in &self.escalation {
            escalation.insert(sev.clone(), steps.iter().map(|s| escalation_step(s)).collect::<Result<Vec<_>, _>>()?);
        }
        Ok(labops_engine::alerting::Notify { home_assistant, webhook: self.webhook_url.clone(), escalation })
    }

    /// How senders authenticate: the server token, `[alerts] token`, the HMAC secret.
    pub fn intake_auth(&self, server_token: &str) -> Result<labops_server::alerts::IntakeAuth, String> {
        let mut tokens = vec![server_token.to_string()];
        if self.token.is_some() || self.token_file.is_some() {
            tokens.push(read_secret(&self.token, &self.token_file, "alerts token")?.expose().to_string());
        }
        let hmac = if self.hmac_secret.is_some() || self.hmac_secret_file.is_some() {
            let secret = read_secret(&self.hmac_secret, &self.hmac_secret_file, "alerts HMAC secret")?.expose().to_string();
            Some((secret, self.hmac_header.clone(), self.hmac_timestamp_header.clone()))
        } else {
            None
        };
        Ok(labops_server::alerts::IntakeAuth { tokens, hmac })
    }
}

/// `[gitops]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitOpsConfig {
    /// The work tree of the GitOps repository.
    pub path: PathBuf,
    /// The remote each change's commit is pushed to (`origin`); absent: commits stay local.
    #[serde(default)]
    pub remote: Option<String>,
    /// The branch pushed to (default `main`).
    #[serde(default = "default_branch")]
    pub branch: String,
    /// Author and committer name of labops' commits.
    #[serde(default = "default_author_name")]
    pub author_name: String,
    /// Author and committer email.
    #[serde(default = "default_author_email")]
    pub author_email: String,
}

fn default_branch() -> String {
    "main".into()
}
fn default_author_name() -> String {
    "labops".into()
}
fn default_author_email() -> String {
    "labops@localhost".into()
}

impl GitOpsConfig {
    /// The engine's settings.
    pub fn settings(&self) -> labops_engine::changes::gitops::GitOpsSettings {
        labops_engine::changes::gitops::GitOpsSettings {
            path: self.path.clone(),
            remote: self.remote.clone(),
            branch: self.branch.clone(),
            author_name: self.author_name.clone(),
            author_email: self.author_email.clone(),
        }
    }
}

/// `[forge]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgeConfig {
    /// `local` (default: issues in the state database, mirrored as markdown under
    /// `issues/` in the GitOps repository) or `github`.
    #[serde(default)]
    pub kind: ForgeKind,
    /// For GitHub: `owner/name`.
    #[serde(default)]
    pub repo: Option<String>,
    /// For GitHub: a file holding a token allowed to write issues.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// For GitHub: the API's URL when not github.com (GitHub Enterprise Server:
    /// `https://HOST/api/v3`).
    #[serde(default)]
    pub api_url: Option<String>,
}

impl ForgeConfig {
    /// The GitHub client's settings, with the token read from `token_file`.
    pub fn github_settings(&self) -> Result<github::Settings, String> {
        let repo = self.repo.clone().ok_or("forge.kind = \"github\" needs [forge] repo = \"owner/name\"")?;
        github::parse_repo(&repo)?;
        if self.token_file.is_none() {
            return Err("forge.kind = \"github\" needs [forge] token_file, a file holding a token that may write the repository's issues".into());
        }
        let token = read_secret(&None, &self.token_file, "GitHub token")?;
        let mut settings = github::Settings::new(repo, token);
        if let Some(u) = &self.api_url {
            settings.api_url = u.trim_end_matches('/').to_string();
        }
        Ok(settings)
    }
}

/// Which forge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForgeKind {
    /// The embedded forge.
    #[default]
    Local,
    /// GitHub's REST API.
    Github,
}

/// `[ai]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiConfig {
    /// Values that must never leave the machine, besides secrets, private addresses and the
    /// names in the inventory (serial numbers, domain names...).
    #[serde(default)]
    pub sensitive_values: Vec<String>,
    /// `[ai.local]`: the model on the owner's hardware; sensitive requests go only here.
    #[serde(default)]
    pub local: Option<AiLocalConfig>,
    /// `[ai.cloud]`: an optional cloud model for public requests that need hard reasoning.
    #[serde(default)]
    pub cloud: Option<AiCloudConfig>,
    /// `[ai.budget]`: what the cloud may cost.
    #[serde(default)]
    pub budget: AiBudgetConfig,
    /// The workflow library the AI may propose from (default `workflows`, relative to the
    /// working directory): `*.yaml` and `actions/*.yaml`.
    #[serde(default)]
    pub library: Option<PathBuf>,
    /// Most model calls per task (default 10).
    #[serde(default)]
    pub max_steps: Option<u32>,
    /// Most seconds per task (default 300).
    #[serde(default)]
    pub task_timeout_seconds: Option<u64>,
    /// Most US dollars per task (default 0.25).
    #[serde(default)]
    pub task_max_usd: Option<f64>,
}

/// `[ai.local]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiLocalConfig {
    /// `ollama` or `openai-compatible` (llama.cpp, vLLM, LM Studio).
    pub provider: LocalProvider,
    /// Base URL (`http://still-fawn.homelab:11434`, `http://127.0.0.1:8000/v1`).
    pub url: String,
    /// Model name.
    pub model: String,
    /// API key, when the server was started with one. Prefer `api_key_file`.
    #[serde(default)]
    pub api_key: Option<String>,
    /// File holding the API key (first line).
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// `json` (default: one schema-constrained JSON object per step, which small models
    /// follow) or `native` (the server's tool calls, for capable models).
    #[serde(default)]
    pub tool_mode: Option<ToolModeConfig>,
    /// Most seconds per call (default 120).
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// Milliseconds an answer should take on average; slower, public work goes to the cloud.
    #[serde(default)]
    pub latency_target_ms: Option<u64>,
}

/// How a model picks tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolModeConfig {
    /// One schema-constrained JSON object per step.
    Json,
    /// Native tool calls.
    Native,
}

/// A local model server's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LocalProvider {
    /// Ollama's native API.
    Ollama,
    /// Any OpenAI-compatible server.
    OpenaiCompatible,
}

/// `[ai.cloud]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiCloudConfig {
    /// `anthropic` or `openai`.
    pub provider: CloudProvider,
    /// Model name.
    pub model: String,
    /// API key. Prefer `api_key_file`.
    #[serde(default)]
    pub api_key: Option<String>,
    /// File holding the API key (first line).
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// API base URL, to override the provider's.
    #[serde(default)]
    pub url: Option<String>,
    /// US dollars per million prompt tokens (default: the provider's list price for known
    /// models, else 3).
    #[serde(default)]
    pub input_usd_per_mtok: Option<f64>,
    /// US dollars per million generated tokens (default: list price, else 15).
    #[serde(default)]
    pub output_usd_per_mtok: Option<f64>,
    /// `native` (default) or `json`.
    #[serde(default)]
    pub tool_mode: Option<ToolModeConfig>,
    /// Most seconds per call (default 120).
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// Milliseconds an answer should take on average; slower, hard work stays local.
    #[serde(default)]
    pub latency_target_ms: Option<u64>,
}

/// A cloud model provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloudProvider {
    /// Anthropic's Messages API.
    Anthropic,
    /// OpenAI's API.
    Openai,
}

impl AiCloudConfig {
    /// The API base URL.
    pub fn base_url(&self) -> String {
        self.url.clone().unwrap_or_else(|| match self.provider {
            CloudProvider::Anthropic => "https://api.anthropic.com".into(),
            CloudProvider::Openai => "https://api.openai.com".into(),
        })
    }
}

/// `[ai.budget]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiBudgetConfig {
    /// Most the cloud may cost per day, in US dollars; absent: no daily limit.
    #[serde(default)]
    pub daily_usd: Option<f64>,
    /// Most per month.
    #[serde(default)]
    pub monthly_usd: Option<f64>,
}

/// `[workflows]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowsConfig {
    /// Steps running at once across all runs of one labops process (default 8).
    #[serde(default = "default_steps_at_once")]
    pub steps_at_once: usize,
    /// Independent branches of one run running at once (default 4).
    #[serde(default = "default_parallel_branches")]
    pub parallel_branches: usize,
}

fn default_steps_at_once() -> usize {
    8
}
fn default_parallel_branches() -> usize {
    4
}

impl Default for WorkflowsConfig {
    fn default() -> Self {
        Self { steps_at_once: default_steps_at_once(), parallel_branches: default_parallel_branches() }
    }
}

/// `[lab]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabConfig {
    /// Name shown in answers and on the dashboard.
    #[serde(default = "default_lab_name")]
    pub name: String,
    /// Marks this as the demo lab: every answer says so. Set by `scripts/demo-lab`.
    #[serde(default)]
    pub demo: bool,
}

fn default_lab_name() -> String {
    "homelab".into()
}

impl Default for LabConfig {
    fn default() -> Self {
        Self { name: default_lab_name(), demo: false }
    }
}

/// `[state]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Directory of the SQLite database. Default: `$XDG_DATA_HOME/labops` (`~/.local/share/labops`).
    /// `--data-dir` overrides it.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
}

/// `[proxmox]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxmoxConfig {
    /// API base URL, `https://HOST:8006`.
    pub url: String,
    /// User for ticket login (`root@pam`), with `password` or `password_file`.
    #[serde(default)]
    pub user: Option<String>,
    /// Password for ticket login. Prefer `password_file`.
    #[serde(default)]
    pub password: Option<String>,
    /// File holding the password (first line).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// API token id, `USER@REALM!NAME`, with `token_secret` or `token_secret_file`.
    #[serde(default)]
    pub token_id: Option<String>,
    /// API token secret. Prefer `token_secret_file`.
    #[serde(default)]
    pub token_secret: Option<String>,
    /// File holding the token secret (first line).
    #[serde(default)]
    pub token_secret_file: Option<PathBuf>,
    /// PEM file of the CA that signed the cluster's certificates (`/etc/pve/pve-root-ca.pem`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate. Only for a lab you trust; labops warns at every start.
    #[serde(default)]
    pub insecure: bool,
    /// Seconds between refreshes (default 15).
    #[serde(default = "default_pve_refresh")]
    pub refresh_seconds: u64,
    /// Seconds before a request gives up (default 10).
    #[serde(default = "default_pve_timeout")]
    pub timeout_seconds: u64,
}

fn default_pve_refresh() -> u64 {
    15
}
fn default_pve_timeout() -> u64 {
    10
}

/// `[kubernetes]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// Kubeconfig file. Default: the usual inference (KUBECONFIG, ~/.kube/config, in-cluster).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Context in the kubeconfig. Default: its current context.
    #[serde(default)]
    pub context: Option<String>,
    /// Seconds between folds of the watch cache into the inventory (default 2).
    #[serde(default)]
    pub refresh_seconds: Option<u64>,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address for `labops serve` (default `127.0.0.1:8080`).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Bearer token for HTTP clients. Prefer `token_file` or `LABOPS_TOKEN`.
    #[serde(default)]
    pub token: Option<String>,
    /// File holding the bearer token (first line).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Host names accepted in the Host header besides loopback (`labops.homelab`).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Largest request body in bytes (default 1 MiB).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// People who may approve or reject changes over REST, each with a token of their own.
    #[serde(default)]
    pub approvers: Vec<ApproverConfig>,
}

/// `[[server.approvers]]`: a person who approves changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproverConfig {
    /// Their name, as the approver on record.
    pub name: String,
    /// Their token. Prefer `token_file`.
    #[serde(default)]
    pub token: Option<String>,
    /// File holding their token (first line).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_max_body() -> usize {
    1024 * 1024
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            token: None,
            token_file: None,
            allowed_hosts: Vec::new(),
            max_body_bytes: default_max_body(),
            approvers: Vec::new(),
        }
    }
}

/// One problem in the config.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// Dotted field path (`proxmox.url`, `hosts[1].name`).
    pub path: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The outcome of loading: the config when it is usable, and every error and warning.
#[derive(Debug)]
pub struct Loaded {
    /// The config; `None` when there are errors.
    pub config: Option<Config>,
    /// Where it came from (`None`: no file, defaults and environment only).
    pub file: Option<PathBuf>,
    /// Errors: the config cannot be used.
    pub errors: Vec<Problem>,
    /// Warnings: usable, but worth fixing.
    pub warnings: Vec<Problem>,
}

/// The default config file location, `$XDG_CONFIG_HOME/labops/labops.toml`.
pub fn default_config_path() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("labops").join("labops.toml"))
}

/// The file to read: the explicit one, else the default one when it exists.
pub fn config_file(explicit: Option<&Path>) -> Option<PathBuf> {
    explicit.map(Path::to_path_buf).or_else(|| default_config_path().filter(|p| p.exists()))
}

fn figment(file: Option<&Path>) -> Figment {
    let mut f = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = file {
        f = f.merge(Toml::file_exact(path));
    }
    f = f.merge(
        Env::prefixed("LABOPS_")
            // Only LABOPS_SECTION__KEY variables are config overrides; other LABOPS_* names
            // (LABOPS_CONFIG, LABOPS_TOKEN, LABOPS_TEST_*, LABOPS_BENCH_*, tooling) are not.
            .filter(|k| {
                let k = k.as_str().to_ascii_lowercase();
                k.contains("__") && !k.starts_with("test_") && !k.starts_with("bench_")
            })
            .split("__"),
    );
    if let Ok(t) = std::env::var("LABOPS_TOKEN") {
        f = f.merge(Serialized::default("server.token", t));
    }
    f
}

/// Known fields per section, for per-field checks and unknown-key errors.
const SECTIONS: &[(&str, &[&str])] = &[
    ("lab", &["name", "demo"]),
    ("state", &["data_dir"]),
    (
        "proxmox",
        &[
            "url",
            "user",
            "password",
            "password_file",
            "token_id",
            "token_secret",
            "token_secret_file",
            "ca_file",
            "insecure",
            "refresh_seconds",
            "timeout_seconds",
        ],
    ),
    ("kubernetes", &["kubeconfig", "context", "refresh_seconds"]),
    ("server", &["listen", "token", "token_file", "allowed_hosts", "max_body_bytes", "approvers"]),
    ("workflows", &["steps_at_once", "parallel_branches"]),
    (
        "ssh",
        &["user", "port", "identity_file", "known_hosts_file", "strict_host_key_checking", "connect_timeout_seconds", "hosts"],
    ),
    ("git", &["repository", "author_name", "author_email"]),
    ("gitops", &["path", "remote", "branch", "author_name", "author_email"]),
    ("ai", &["sensitive_values", "local", "cloud", "budget", "library", "max_steps", "task_timeout_seconds", "task_max_usd"]),
    ("forge", &["kind", "repo", "token_file", "api_url"]),
    (
        "alerts",
        &[
            "token",
            "token_file",
            "hmac_secret",
            "hmac_secret_file",
            "hmac_header",
            "hmac_timestamp_header",
            "group_wait_seconds",
            "group_window_minutes",
            "webhook_url",
            "home_assistant",
            "runbooks",
            "monitor",
            "anomaly",
            "escalation",
        ],
    ),
];
const HOST_FIELDS: &[&str] = &["name", "address", "role", "labels"];

fn check_field<T: DeserializeOwned>(f: &Figment, path: &str, errors: &mut Vec<Problem>) {
    if f.find_value(path).is_ok()
        && let Err(e) = f.extract_inner::<Option<T>>(path) {
            errors.push(Problem { path: path.into(), message: clean_figment(&e) });
        }
}

fn clean_figment(e: &figment::Error) -> String {
    // figment appends "for key ... in ..." which repeats the path; keep the kind of error.
    let s = e.kind.to_string();
    s.replace("invalid type: found", "expected another type; found")
}

/// Loads and validates. Never fails: problems are returned, all of them.
pub fn load(explicit: Option<&Path>) -> Loaded {
    let file = config_file(explicit);
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    if let Some(p) = &file {
        if let Err(e) = std::fs::metadata(p) {
            errors.push(Problem {
                path: p.display().to_string(),
                message: format!("cannot read the config file: {e}; run `labops init` to write one"),
            });
            return Loaded { config: None, file, errors, warnings };
        }
        // Syntax errors first: nothing else is meaningful without a parse.
        match std::fs::read_to_string(p).map(|s| s.parse::<toml::Table>()) {
            Ok(Err(e)) => {
                let at = e.span().map(|s| line_col(&std::fs::read_to_string(p).unwrap_or_default(), s.start));
                errors.push(Problem {
                    path: match at {
                        Some((l, c)) => format!("{}:{l}:{c}", p.display()),
                        None => p.display().to_string(),
                    },
                    message: format!("not valid TOML: {}", e.message()),
                });
                return Loaded { config: None, file, errors, warnings };
            }
            Err(e) => {
                errors.push(Problem { path: p.display().to_string(), message: format!("cannot read: {e}") });
                return Loaded { config: None, file, errors, warnings };
            }
            Ok(Ok(_)) => {}
        }
    }
    let f = figment(file.as_deref());

    // Unknown sections and keys.
    if let Ok(root) = f.extract::<BTreeMap<String, figment::value::Value>>() {
        for (key, value) in &root {
            if key == "hosts" {
                continue;
            }
            match SECTIONS.iter().find(|(s, _)| s == key) {
                None => errors.push(Problem {
                    path: key.clone(),
                    message: format!(
                        "unknown section; known sections: {}, hosts",
                        SECTIONS.iter().map(|(s, _)| *s).collect::<Vec<_>>().join(", ")
                    ),
                }),
                Some((_, fields)) => {
                    if let Some(dict) = value.as_dict() {
                        for k in dict.keys() {
                            if !fields.contains(&k.as_str()) {
                                errors.push(Problem {
                                    path: format!("{key}.{k}"),
                                    message: format!("unknown field; known fields: {}", fields.join(", ")),
                                });
                            }
                        }
                    }
                }
            }
        }
    }
    // Types, field by field, so every bad field is reported.
    check_field::<String>(&f, "lab.name", &mut errors);
    check_field::<bool>(&f, "lab.demo", &mut errors);
    check_field::<PathBuf>(&f, "state.data_dir", &mut errors);
    for k in ["url", "user", "password", "token_id", "token_secret"] {
        check_field::<String>(&f, &format!("proxmox.{k}"), &mut errors);
    }
    for k in ["password_file", "token_secret_file", "ca_file"] {
        check_field::<PathBuf>(&f, &format!("proxmox.{k}"), &mut errors);
    }
    check_field::<bool>(&f, "proxmox.insecure", &mut errors);
    check_field::<u64>(&f, "proxmox.refresh_seconds", &mut errors);
    check_field::<u64>(&f, "proxmox.timeout_seconds", &mut errors);
    check_field::<PathBuf>(&f, "kubernetes.kubeconfig", &mut errors);
    check_field::<String>(&f, "kubernetes.context", &mut errors);
    check_field::<u64>(&f, "kubernetes.refresh_seconds", &mut errors);
    check_field::<String>(&f, "server.listen", &mut errors);
    check_field::<String>(&f, "server.token", &mut errors);
    check_field::<PathBuf>(&f, "server.token_file", &mut errors);
    check_field::<Vec<String>>(&f, "server.allowed_hosts", &mut errors);
    check_field::<usize>(&f, "server.max_body_bytes", &mut errors);
    check_field::<Vec<ApproverConfig>>(&f, "server.approvers", &mut errors);
    check_field::<usize>(&f, "workflows.steps_at_once", &mut errors);
    check_field::<usize>(&f, "workflows.parallel_branches", &mut errors);
    check_field::<PathBuf>(&f, "gitops.path", &mut errors);
    for k in ["remote", "branch", "author_name", "author_email"] {
        check_field::<String>(&f, &format!("gitops.{k}"), &mut errors);
    }
    check_field::<ForgeKind>(&f, "forge.kind", &mut errors);
    check_field::<String>(&f, "forge.repo", &mut errors);
    check_field::<PathBuf>(&f, "forge.token_file", &mut errors);
    check_field::<String>(&f, "forge.api_url", &mut errors);
    for k in ["token", "hmac_secret", "hmac_header", "hmac_timestamp_header", "webhook_url"] {
        check_field::<String>(&f, &format!("alerts.{k}"), &mut errors);
    }
    for k in ["token_file", "hmac_secret_file"] {
        check_field::<PathBuf>(&f, &format!("alerts.{k}"), &mut errors);
    }
    check_field::<u64>(&f, "alerts.group_wait_seconds", &mut errors);
    check_field::<PathBuf>(&f, "alerts.runbooks", &mut errors);
    check_field::<MonitorConfig>(&f, "alerts.monitor", &mut errors);
    check_field::<AnomalyConfig>(&f, "alerts.anomaly", &mut errors);
    check_field::<u64>(&f, "alerts.group_window_minutes", &mut errors);
    check_field::<HomeAssistantConfig>(&f, "alerts.home_assistant", &mut errors);
    check_field::<BTreeMap<String, Vec<String>>>(&f, "alerts.escalation", &mut errors);
    if let Ok(hosts) = f.extract_inner::<Vec<figment::value::Value>>("hosts") {
        for (i, h) in hosts.iter().enumerate() {
            let Some(dict) = h.as_dict() else {
                errors.push(Problem { path: format!("hosts[{i}]"), message: "expected a table ([[hosts]])".into() });
                continue;
            };
            for k in dict.keys().filter(|k| !HOST_FIELDS.contains(&k.as_str())) {
                errors.push(Problem {
                    path: format!("hosts[{i}].{k}"),
                    message: format!("unknown field; known fields: {}", HOST_FIELDS.join(", ")),
                });
            }
            if !dict.contains_key("name") {
                errors.push(Problem { path: format!("hosts[{i}].name"), message: "missing; every host needs a name".into() });
            }
        }
    } else if f.find_value("hosts").is_ok() {
        errors.push(Problem { path: "hosts".into(), message: "expected a list of tables ([[hosts]])".into() });
    }

    let config = if errors.is_empty() {
        match f.extract::<Config>() {
            Ok(c) => Some(c),
            Err(e) => {
                for e in e {
                    let path = if e.path.is_empty() { "config".into() } else { e.path.join(".") };
                    errors.push(Problem { path, message: clean_figment(&e) });
                }
                None
            }
        }
    } else {
        None
    };
    if let Some(c) = &config {
        semantic_checks(c, &mut errors, &mut warnings);
    }
    errors.sort();
    errors.dedup();
    let config = if errors.is_empty() { config } else { None };
    Loaded { config, file, errors, warnings }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn semantic_checks(c: &Config, errors: &mut Vec<Problem>, warnings: &mut Vec<Problem>) {
    let mut err = |path: &str, message: String| errors.push(Problem { path: path.into(), message });
    if let Some(n) = c.ai.max_steps
        && !(1..=100).contains(&n)
    {
        err("ai.max_steps", format!("{n} is out of range; use 1..=100 model calls per task"));
    }
    if c.ai.task_timeout_seconds == Some(0) {
        err("ai.task_timeout_seconds", "0 leaves no time; use a number of seconds, say 300".into());
    }
    for (path, v) in [("ai.task_max_usd", c.ai.task_max_usd), ("ai.budget.daily_usd", c.ai.budget.daily_usd), ("ai.budget.monthly_usd", c.ai.budget.monthly_usd)] {
        if let Some(v) = v
            && !(v.is_finite() && v >= 0.0)
        {
            err(path, format!("{v} is not an amount of US dollars; use a number of 0 or more"));
        }
    }
    for (path, v) in [
        ("ai.local.timeout_seconds", c.ai.local.as_ref().and_then(|l| l.timeout_seconds)),
        ("ai.cloud.timeout_seconds", c.ai.cloud.as_ref().and_then(|l| l.timeout_seconds)),
    ] {
        if v == Some(0) {
            err(path, "0 leaves no time for an answer; use a number of seconds, say 120".into());
        }
    }
    if c.forge.kind == ForgeKind::Github {
        match &c.forge.repo {
            None => err("forge.repo", "missing: kind = \"github\" needs repo = \"owner/name\"".into()),
            Some(r) => {
                if let Err(e) = github::parse_repo(r) {
                    err("forge.repo", e);
                }
            }
        }
        match &c.forge.token_file {
            None => err("forge.token_file", "missing: kind = \"github\" needs token_file, a file holding a token that may write the repository's issues (fine-grained: Issues read and write)".into()),
            Some(_) => {
                if let Err(e) = read_secret(&None, &c.forge.token_file, "GitHub token") {
                    err("forge.token_file", e);
                }
            }
        }
        if let Some(u) = &c.forge.api_url
            && !(u.starts_with("https://") || u.starts_with("http://"))
        {
            err("forge.api_url", format!("{u:?} is not an http(s) URL; leave it out for github.com, or use https://HOST/api/v3 for GitHub Enterprise Server"));
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, a) in c.server.approvers.iter().enumerate() {
        let path = format!("server.approvers[{i}]");
        if a.name.trim().is_empty() {
            err(&path, "an approver needs a name".into());
        } else if !names.insert(a.name.clone()) {
            err(&path, format!("approver {:?} is listed twice", a.name));
        }
        match read_secret(&a.token, &a.token_file, "approver token") {
            Ok(t) if t.expose().len() < 16 => err(&path, format!("the token of {:?} is shorter than 16 characters; make a long random one (openssl rand -hex 32)", a.name)),
            Ok(_) => {}
            Err(e) => err(&path, format!("{e}; set token_file (or token)")),
        }
    }
    if let Some(g) = &c.gitops {
        if !g.path.join(".git").exists() {
            err("gitops.path", format!("{} is not a git work tree (no .git); clone your GitOps repository there or fix the path", g.path.display()));
        }
        if g.branch.trim().is_empty() || g.branch.contains(char::is_whitespace) {
            err("gitops.branch", format!("{:?} is not a branch name", g.branch));
        }
    }
    if let Some(p) = &c.proxmox {
        match p.url.split_once("://") {
            Some(("https" | "http", rest)) if !rest.is_empty() => {}
            _ => err("proxmox.url", format!("{:?} is not an http(s) URL; expected https://HOST:8006", p.url)),
        }
        let token = p.token_id.is_some() || p.token_secret.is_some() || p.token_secret_file.is_some();
        let password = p.user.is_some() || p.password.is_some() || p.password_file.is_some();
        match (token, password) {
            (true, true) => err(
                "proxmox",
                "both an API token (token_id...) and a password login (user...) are set; keep one".into(),
            ),
            (false, false) => err(
                "proxmox",
                "no credentials: set token_id with token_secret or token_secret_file, or user with password or password_file".into(),
            ),
            (true, false) => {
                match &p.token_id {
                    None => err("proxmox.token_id", "missing; expected USER@REALM!NAME (root@pam!labops)".into()),
                    Some(id) if !(id.contains('@') && id.contains('!')) => {
                        err("proxmox.token_id", format!("{id:?} is not USER@REALM!NAME (root@pam!labops)"))
                    }
                    _ => {}
                }
                secret_source(&mut err, "proxmox.token_secret", &p.token_secret, &p.token_secret_file);
            }
            (false, true) => {
                match &p.user {
                    None => err("proxmox.user", "missing; expected USER@REALM (root@pam)".into()),
                    Some(u) if !u.contains('@') => err("proxmox.user", format!("{u:?} has no realm; expected USER@REALM (root@pam)")),
                    _ => {}
                }
                secret_source(&mut err, "proxmox.password", &p.password, &p.password_file);
            }
        }
        if let Some(ca) = &p.ca_file {
            if p.insecure {
                err("proxmox", "ca_file and insecure = true are both set; keep ca_file".into());
            }
            if !ca.exists() {
                err("proxmox.ca_file", format!("{} does not exist", ca.display()));
            }
        }
        if p.refresh_seconds == 0 {
            err("proxmox.refresh_seconds", "must be at least 1".into());
        }
        if p.timeout_seconds == 0 {
            err("proxmox.timeout_seconds", "must be at least 1".into());
        }
        if p.insecure {
            warnings.push(Problem {
                path: "proxmox.insecure".into(),
                message: "certificates are not verified; set ca_file to the cluster's CA (/etc/pve/pve-root-ca.pem)".into(),
            });
        }
        if p.password.is_some() || p.token_secret.is_some() {
            warnings.push(Problem {
                path: "proxmox".into(),
                message: "a secret is written in the config; prefer password_file or token_secret_file".into(),
            });
        }
    }
    if let Some(k) = &c.kubernetes {
        if let Some(path) = &k.kubeconfig
            && !path.exists() {
                err("kubernetes.kubeconfig", format!("{} does not exist", path.display()));
            }
        if k.refresh_seconds == Some(0) {
            err("kubernetes.refresh_seconds", "must be at least 1".into());
        }
    }
    if c.server.listen.parse::<SocketAddr>().is_err() {
        err("server.listen", format!("{:?} is not an address; expected IP:PORT (127.0.0.1:8080)", c.server.listen));
    }
    if c.server.token.is_some() && c.server.token_file.is_some() {
        err("server", "token and token_file are both set; keep one".into());
    }
    if let Some(f) = &c.server.token_file
        && !f.exists() {
            err("server.token_file", format!("{} does not exist", f.display()));
        }
    if c.server.token.as_deref().is_some_and(|t| t.trim().len() < 16) {
        err("server.token", "shorter than 16 characters; use a long random token (openssl rand -hex 32)".into());
    }
    if c.server.max_body_bytes < 1024 || c.server.max_body_bytes > 64 * 1024 * 1024 {
        err("server.max_body_bytes", format!("{} is out of range; use 1024..=67108864", c.server.max_body_bytes));
    }
    if let Some(g) = &c.git
        && !g.repository.join(".git").exists() {
            err("git.repository", format!("{} is not a git work tree (no .git); run `git init` there or fix the path", g.repository.display()));
        }
    if let Some(f) = c.ssh.as_ref().and_then(|s| s.identity_file.as_ref())
        && !f.exists() {
            err("ssh.identity_file", format!("{} does not exist", f.display()));
        }
    if !(1..=256).contains(&c.workflows.steps_at_once) {
        err("workflows.steps_at_once", format!("{} is out of range; use 1..=256", c.workflows.steps_at_once));
    }
    if !(1..=64).contains(&c.workflows.parallel_branches) {
        err("workflows.parallel_branches", format!("{} is out of range; use 1..=64", c.workflows.parallel_branches));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, h) in c.hosts.iter().enumerate() {
        if h.name.trim().is_empty() {
            err(&format!("hosts[{i}].name"), "empty".into());
        } else if !seen.insert(h.name.to_lowercase()) {
            err(&format!("hosts[{i}].name"), format!("{:?} is declared twice; host names must be unique", h.name));
        }
    }
    let a = &c.alerts;
    if a.token.is_some() && a.token_file.is_some() {
        err("alerts", "token and token_file are both set; keep one".into());
    }
    if a.hmac_secret.is_some() && a.hmac_secret_file.is_some() {
        err("alerts", "hmac_secret and hmac_secret_file are both set; keep one".into());
    }
    for (path, f) in [("alerts.token_file", &a.token_file), ("alerts.hmac_secret_file", &a.hmac_secret_file)] {
        if let Some(f) = f
            && !f.exists() {
                err(path, format!("{} does not exist", f.display()));
            }
    }
    if a.token.as_deref().is_some_and(|t| t.trim().len() < 16) {
        err("alerts.token", "shorter than 16 characters; use a long random token (openssl rand -hex 32)".into());
    }
    if a.group_wait_seconds > 3600 {
        err("alerts.group_wait_seconds", format!("{} is out of range; use 0..=3600", a.group_wait_seconds));
    }
    if !(1..=1440).contains(&a.group_window_minutes) {
        err("alerts.group_window_minutes", format!("{} is out of range; use 1..=1440", a.group_window_minutes));
    }
    if let Some(u) = &a.webhook_url
        && !(u.starts_with("http://") || u.starts_with("https://")) {
            err("alerts.webhook_url", format!("{u:?} is not an http(s) URL"));
        }
    if let Some(h) = &a.home_assistant {
        if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
            err("alerts.home_assistant.url", format!("{:?} is not an http(s) URL", h.url));
        }
        secret_source(&mut err, "alerts.home_assistant.token", &h.token, &h.token_file);
        if h.service.trim().is_empty() {
            err("alerts.home_assistant.service", "empty; name the notify service (notify.mobile_app_phone)".into());
        }
    }
    if let Some(m) = &a.monitor {
        for (path, u) in [("alerts.monitor.prometheus_url", &m.prometheus_url), ("alerts.monitor.alertmanager_url", &m.alertmanager_url), ("alerts.monitor.grafana_url", &m.grafana_url)] {
            if let Some(u) = u
                && !(u.starts_with("http://") || u.starts_with("https://")) {
                    err(path, format!("{u:?} is not an http(s) URL"));
                }
        }
        if !(1..=3600).contains(&m.interval_seconds) {
            err("alerts.monitor.interval_seconds", format!("{} is out of range; use 1..=3600", m.interval_seconds));
        }
        if !(1..=1440).contains(&m.heartbeat_minutes) {
            err("alerts.monitor.heartbeat_minutes", format!("{} is out of range; use 1..=1440", m.heartbeat_minutes));
        }
        if let Some(f) = &m.grafana_token_file
            && !f.exists() {
                err("alerts.monitor.grafana_token_file", format!("{} does not exist", f.display()));
            }
    }
    if let Some(an) = &a.anomaly {
        if !(an.prometheus_url.starts_with("http://") || an.prometheus_url.starts_with("https://")) {
            err("alerts.anomaly.prometheus_url", format!("{:?} is not an http(s) URL", an.prometheus_url));
        }
        for (path, v, lo, hi) in [
            ("step_seconds", an.step_seconds, 0.1, 86_400.0),
            ("interval_seconds", an.interval_seconds, 0.1, 86_400.0),
            ("warmup_hours", an.warmup_hours, 0.0, 24.0 * 90.0),
            ("forecast_window_days", an.forecast_window_days, 0.0005, 365.0),
            ("forecast_every_minutes", an.forecast_every_minutes, 0.01, 1440.0),
        ] {
            if !(lo..=hi).contains(&v) {
                err(&format!("alerts.anomaly.{path}"), format!("{v} is out of range; use {lo}..={hi}"));
            }
        }
        if !(1..=1_000_000).contains(&an.max_series) {
            err("alerts.anomaly.max_series", format!("{} is out of range; use 1..=1000000", an.max_series));
        }
        for (i, q) in an.queries.iter().enumerate() {
            if q.kind.trim().is_empty() || q.expr.trim().is_empty() {
                err(&format!("alerts.anomaly.queries[{i}]"), "needs a kind and a PromQL expr".into());
            }
        }
        for (i, c) in an.counters.iter().flatten().enumerate() {
            if c.name.trim().is_empty() || c.expr.trim().is_empty() {
                err(&format!("alerts.anomaly.counters[{i}]"), "needs a name and a PromQL expr".into());
            }
        }
        for (i, c) in an.capacity.iter().flatten().enumerate() {
            if c.name.trim().is_empty() || c.used.trim().is_empty() || c.size.trim().is_empty() {
                err(&format!("alerts.anomaly.capacity[{i}]"), "needs a name, a `used` and a `size` (PromQL or a number)".into());
            }
            if !(c.horizon_days > 0.0 && c.horizon_days <= 3650.0) {
                err(&format!("alerts.anomaly.capacity[{i}].horizon_days"), format!("{} is out of range; use 0..=3650", c.horizon_days));
            }
        }
    }
    for (sev, steps) in &a.escalation {
        for (i, st) in steps.iter().enumerate() {
            if let Err(e) = escalation_step(st) {
                err(&format!("alerts.escalation.{sev}[{i}]"), e);
            }
        }
    }
    if c.proxmox.is_none() && c.kubernetes.is_none() && c.hosts.is_empty() {
        warnings.push(Problem {
            path: "config".into(),
            message: "no source is configured ([proxmox], [kubernetes] or [[hosts]]): the inventory will be empty".into(),
        });
    }
}

fn secret_source(err: &mut impl FnMut(&str, String), path: &str, inline: &Option<String>, file: &Option<PathBuf>) {
    match (inline, file) {
        (Some(_), Some(_)) => err(path, format!("both {path} and {path}_file are set; keep one")),
        (None, None) => err(path, format!("missing; set {path} or {path}_file")),
        (None, Some(f)) if !f.exists() => err(&format!("{path}_file"), format!("{} does not exist", f.display())),
        _ => {}
    }
}

/// Reads a secret from its inline value or its file (first line, trimmed).
pub fn read_secret(inline: &Option<String>, file: &Option<PathBuf>, what: &str) -> Result<Secret, String> {
    if let Some(s) = inline {
        return Ok(Secret::new(s.trim()));
    }
    let Some(path) = file else { return Err(format!("no {what} is configured")) };
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {what} from {}: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or("").trim().to_string();
    if line.is_empty() {
        return Err(format!("{} is empty; it should hold the {what}", path.display()));
    }
    Ok(Secret::new(line))
}

impl ProxmoxConfig {
    /// Client settings with secrets read.
    pub fn settings(&self) -> Result<proxmox::Settings, String> {
        let auth = match &self.token_id {
            Some(id) => proxmox::Auth::Token {
                id: id.clone(),
                secret: read_secret(&self.token_secret, &self.token_secret_file, "proxmox token secret")?,
            },
            None => proxmox::Auth::Password {
                user: self.user.clone().unwrap_or_default(),
                password: read_secret(&self.password, &self.password_file, "proxmox password")?,
            },
        };
        let tls = match (&self.ca_file, self.insecure) {
            (Some(ca), _) => TlsTrust::Ca(
                std::fs::read(ca).map_err(|e| format!("cannot read proxmox.ca_file {}: {e}", ca.display()))?,
            ),
            (None, true) => TlsTrust::Insecure,
            (None, false) => TlsTrust::System,
        };
        Ok(proxmox::Settings {
            url: self.url.trim_end_matches('/').to_string(),
            auth,
            tls,
            timeout: Duration::from_secs(self.timeout_seconds.max(1)),
            concurrency: 8,
        })
    }
}

impl ServerConfig {
    /// The bearer token, from the config, its file, or `LABOPS_TOKEN` (already merged).
    /// The approvers with their tokens read: (name, token).
    pub fn approvers(&self) -> Result<Vec<(String, String)>, String> {
        self.approvers
            .iter()
            .map(|a| read_secret(&a.token, &a.token_file, "approver token").map(|t| (a.name.clone(), t.expose().to_string())))
            .collect()
    }

    pub fn bearer_token(&self) -> Result<Secret, String> {
        read_secret(&self.token, &self.token_file, "server token").map_err(|_| {
            "labops serve needs a bearer token: set [server] token_file (or token), or LABOPS_TOKEN".to_string()
        })
    }
}

/// The commented config `labops init` writes. Every key is documented.
pub const TEMPLATE: &str = include_str!("../labops.example.toml");

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Loaded {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("labops.toml");
        std::fs::write(&p, text).unwrap();
        load(Some(&p))
    }

    #[test]
    fn the_init_template_parses_and_only_asks_for_the_secret_file() {
        let l = load_text(TEMPLATE);
        let paths: Vec<&str> = l.errors.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["proxmox.token_secret_file"], "{:?}", l.errors);
    }

    #[test]
    fn every_error_is_reported_at_once_with_its_path() {
        let l = load_text(
            r#"
[lab]
nmae = "typo"
[proxmox]
url = "ftp://x"
user = "root"
refresh_seconds = "often"
insecure = "yes"
[server]
listen = "localhost"
token = "short"
[bogus]
x = 1
[[hosts]]
name = "nas"
[[hosts]]
name = "NAS"
colour = "red"
"#,
        );
        let paths: Vec<&str> = l.errors.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "lab.nmae",
            "proxmox.refresh_seconds",
            "proxmox.insecure",
            "bogus",
            "hosts[1].colour",
        ] {
            assert!(paths.contains(&want), "{want} missing from {paths:?}");
        }
        assert!(l.config.is_none());
    }

    #[test]
    fn ai_limits_out_of_range_are_reported_with_their_paths() {
        let l = load_text(
            r#"
[ai]
max_steps = 0
task_max_usd = -1
[ai.budget]
daily_usd = -2
[ai.local]
provider = "ollama"
url = "http://127.0.0.1:11434"
model = "qwen2.5:7b"
timeout_seconds = 0
"#,
        );
        let paths: Vec<&str> = l.errors.iter().map(|p| p.path.as_str()).collect();
        for want in ["ai.max_steps", "ai.task_max_usd", "ai.budget.daily_usd", "ai.local.timeout_seconds"] {
            assert!(paths.contains(&want), "{want} missing from {paths:?}");
        }
        let l = load_text("[ai.local]\nprovider = \"ollama\"\nurl = \"http://127.0.0.1:11434\"\nmodel = \"m\"\ntool_mode = \"telepathy\"\n");
        assert!(l.errors.iter().any(|p| p.path.starts_with("ai.local")), "the unknown tool_mode is named: {:?}", l.errors);
    }

    #[test]
    fn semantic_errors_are_collected_too() {
        let l = load_text(
            r#"
[proxmox]
url = "ftp://x"
user = "root"
[server]
listen = "localhost"
token = "short"
[[hosts]]
name = "nas"
[[hosts]]
name = "NAS"
"#,
        );
        let paths: Vec<&str> = l.errors.iter().map(|p| p.path.as_str()).collect();
        for want in ["proxmox.url", "proxmox.user", "proxmox.password", "server.listen", "server.token", "hosts[1].name"] {
            assert!(paths.contains(&want), "{want} missing from {paths:?}");
        }
    }

    #[test]
    fn toml_syntax_errors_point_at_line_and_column() {
        let l = load_text("[proxmox]\nurl = \"https://x\n");
        assert_eq!(l.errors.len(), 1);
        assert!(l.errors[0].path.ends_with(":2:7") || l.errors[0].path.contains(":2:"), "{:?}", l.errors);
    }

    #[test]
    fn secrets_come_from_files_and_are_not_printed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "s3cr3t-value\n").unwrap();
        let s = read_secret(&None, &Some(f), "test").unwrap();
        assert_eq!(s.expose(), "s3cr3t-value");
        assert!(!format!("{s:?}").contains("s3cr3t"));
        let cfg = ProxmoxConfig {
            url: "https://pve:8006".into(),
            user: Some("root@pam".into()),
            password: Some("pw-canary".into()),
            password_file: None,
            token_id: None,
            token_secret: None,
            token_secret_file: None,
            ca_file: None,
            insecure: true,
            refresh_seconds: 15,
            timeout_seconds: 10,
        };
        assert!(!format!("{:?}", cfg.settings().unwrap()).contains("pw-canary"));
    }

    #[test]
    fn a_github_forge_needs_a_repository_and_a_token() {
        let l = load_text("[forge]\nkind = \"github\"\n");
        let paths: Vec<&str> = l.errors.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"forge.repo") && paths.contains(&"forge.token_file"), "{:?}", l.errors);
        assert!(l.errors.iter().all(|p| !p.message.contains("not available")), "{:?}", l.errors);

        let l = load_text("[forge]\nkind = \"github\"\nrepo = \"gitops\"\ntoken_file = \"/nonexistent/token\"\napi_url = \"ghe.example.org\"\n");
        let messages: Vec<String> = l.errors.iter().map(|p| format!("{}: {}", p.path, p.message)).collect();
        for want in ["forge.repo: \"gitops\" is not a GitHub repository: write it as owner/name", "forge.token_file: cannot read GitHub token", "forge.api_url"] {
            assert!(messages.iter().any(|m| m.starts_with(want)), "{want} missing from {messages:?}");
        }

        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "ghp_canary-token\n").unwrap();
        let l = load_text(&format!("[forge]\nkind = \"github\"\nrepo = \"homelab/gitops\"\ntoken_file = {:?}\n", token.display().to_string()));
        assert!(l.errors.iter().all(|p| !p.path.starts_with("forge")), "{:?}", l.errors);
        let forge = ForgeConfig { kind: ForgeKind::Github, repo: Some("homelab/gitops".into()), token_file: Some(token), api_url: None };
        let settings = forge.github_settings().unwrap();
        assert_eq!((settings.repo.as_str(), settings.api_url.as_str(), settings.token.expose()), ("homelab/gitops", github::DEFAULT_API_URL, "ghp_canary-token"));
        assert!(!format!("{settings:?}").contains("canary"));
    }
}
