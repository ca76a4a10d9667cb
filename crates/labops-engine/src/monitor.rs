//! Monitor the monitor: labops checks the alerting pipeline itself.
//!
//! Every `interval` it asks Prometheus (`/-/healthy`, and `/api/v1/rules`: a rule group whose
//! evaluation failed or stopped), Alertmanager (`/-/healthy`) and Grafana (`/api/health`, whose
//! `database` must be `ok`) how they are, and watches the heartbeat alert (Prometheus'
//! always-firing `Watchdog`, when configured): if it has not arrived for `heartbeat_minutes`, the
//! path from Prometheus through Alertmanager to labops is silent. Each problem becomes an alert
//! of labops' own (source `labops`, severity critical) that goes through the desk like any
//! other (stored, deduplicated, an incident) and, because the primary path is what failed, is
//! also sent at once through the backup channels (Home Assistant, the webhook). When the check
//! passes again the alert resolves.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use labops_aiops::intake::{fingerprint, Alert, Source, Status};
use serde::Deserialize;

use crate::alerting::{Alerting, Notify};
use crate::lab::now_ms;

/// What to watch.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    /// Prometheus base URL.
    pub prometheus: Option<String>,
    /// Alertmanager base URL.
    pub alertmanager: Option<String>,
    /// Grafana base URL, and an optional service-account token.
    pub grafana: Option<(String, Option<String>)>,
    /// The always-firing alert that proves the path works (`Watchdog`), and how long it may be
    /// missing.
    pub heartbeat: Option<(String, Duration)>,
    /// How often to check.
    pub interval: Duration,
}

/// One finding: a check's alert name, the component, and what is wrong (None: fine).
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// `PrometheusDown`, `PrometheusRuleFailures`, `PrometheusRulesStalled`, `AlertmanagerDown`,
    /// `GrafanaDown`, `AlertingPipelineSilent`.
    pub alert: &'static str,
    /// `prometheus`, `alertmanager`, `grafana`, `pipeline`.
    pub component: &'static str,
    /// The URL checked.
    pub instance: String,
    /// What is wrong, or None when the check passed.
    pub problem: Option<String>,
}

#[derive(Deserialize)]
struct Rules {
    data: RulesData,
}
#[derive(Deserialize)]
struct RulesData {
    groups: Vec<RuleGroup>,
}
#[derive(Deserialize)]
struct RuleGroup {
    name: String,
    #[serde(default)]
    interval: f64,
    #[serde(default, rename = "lastEvaluation")]
    last_evaluation: Option<String>,
    #[serde(default)]
    rules: Vec<Rule>,
}
#[derive(Deserialize)]
struct Rule {
    name: String,
    #[serde(default)]
    health: String,
    #[serde(default, rename = "lastError")]
    last_error: Option<String>,
}

async fn get(http: &reqwest::Client, url: &str, token: Option<&str>) -> Result<String, String> {
    let mut req = http.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    match req.send().await {
        Ok(r) if r.status().is_success() => r.text().await.map_err(|e| format!("{url}: {e}")),
        Ok(r) => Err(format!("{url} answered {}", r.status())),
        Err(e) => Err(format!("{url}: {}", if e.is_timeout() { "timed out".to_string() } else if e.is_connect() { "cannot connect".to_string() } else { e.to_string() })),
    }
}

/// Prometheus' rule groups: every failing rule, and groups not evaluated for three intervals.
fn rule_problems(body: &str, now_ms: i64) -> (Option<String>, Option<String>) {
    let Ok(r) = serde_json::from_str::<Rules>(body) else { return (Some("/api/v1/rules did not answer with rule groups".into()), None) };
    let mut failing = Vec::new();
    let mut stalled = Vec::new();
    for g in &r.data.groups {
        for rule in &g.rules {
            if rule.health == "err" || rule.last_error.as_deref().is_some_and(|e| !e.is_empty()) {
                failing.push(format!("{}/{}: {}", g.name, rule.name, rule.last_error.clone().unwrap_or_default()));
            }
        }
        let last = g.last_evaluation.as_deref().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()).map(|t| t.timestamp_millis());
        if let Some(last) = last.filter(|t| *t > 0) {
            let interval_ms = (g.interval.max(1.0) * 1000.0) as i64;
            if now_ms - last > 3 * interval_ms + 5_000 {
                stalled.push(format!("{} last evaluated {} s ago (interval {} s)", g.name, (now_ms - last) / 1000, g.interval));
            }
        }
    }
    let f = (!failing.is_empty()).then(|| format!("{} rule(s) failing: {}", failing.len(), failing.join("; ")));
    let s = (!stalled.is_empty()).then(|| format!("rule groups not evaluated: {}", stalled.join("; ")));
    (f, s)
}

/// Runs every check once.
pub async fn check(http: &reqwest::Client, w: &Watch, last_heartbeat_ms: Option<i64>, started_ms: i64, now: i64) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Some(p) = &w.prometheus {
        let base = p.trim_end_matches('/');
        let healthy = get(http, &format!("{base}/-/healthy"), None).await;
        let down = healthy.err();
        out.push(Finding { alert: "PrometheusDown", component: "prometheus", instance: base.into(), problem: down.clone() });
        let (failing, stalled) = match down {
            Some(_) => (None, None),
            None => match get(http, &format!("{base}/api/v1/rules"), None).await {
                Ok(body) => rule_problems(&body, now),
                Err(e) => (Some(e), None),
            },
        };
        out.push(Finding { alert: "PrometheusRuleFailures", component: "prometheus", instance: base.into(), problem: failing });
        out.push(Finding { alert: "PrometheusRulesStalled", component: "prometheus", instance: base.into(), problem: stalled });
    }
    if let Some(a) = &w.alertmanager {
        let base = a.trim_end_matches('/');
        let problem = get(http, &format!("{base}/-/healthy"), None).await.err();
        out.push(Finding { alert: "AlertmanagerDown", component: "alertmanager", instance: base.into(), problem });
    }
    if let Some((g, token)) = &w.grafana {
        let base = g.trim_end_matches('/');
        let problem = match get(http, &format!("{base}/api/health"), token.as_deref()).await {
            Ok(body) => match serde_json::from_str::<serde_json::Value>(&body) {
                Ok(v) if v["database"] == "ok" => None,
                Ok(v) => Some(format!("/api/health says the database is {}", v["database"])),
                Err(_) => Some("/api/health did not answer JSON".into()),
            },
            Err(e) => Some(e),
        };
        out.push(Finding { alert: "GrafanaDown", component: "grafana", instance: base.into(), problem });
    }
    if let Some((name, max)) = &w.heartbeat {
        let since = last_heartbeat_ms.unwrap_or(started_ms);
        let quiet = now - since;
        let problem = (quiet > max.as_millis() as i64).then(|| {
            format!("no {name} alert for {} min: Prometheus, Alertmanager or the path to labops is silent", quiet / 60_000)
        });
        out.push(Finding { alert: "AlertingPipelineSilent", component: "pipeline", instance: name.clone(), problem });
    }
    out
}

/// The alert a finding becomes.
pub fn to_alert(f: &Finding, now: i64) -> Alert {
    let labels: BTreeMap<String, String> = BTreeMap::from([
        ("alertname".to_string(), f.alert.to_string()),
        ("component".to_string(), f.component.to_string()),
        ("instance".to_string(), f.instance.clone()),
        ("severity".to_string(), "critical".to_string()),
        ("source".to_string(), "labops".to_string()),
    ]);
    let mut annotations = BTreeMap::new();
    if let Some(p) = &f.problem {
        annotations.insert("summary".to_string(), p.clone());
    }
    Alert {
        source: Source::Labops,
        fingerprint: fingerprint(&labels),
        status: if f.problem.is_some() { Status::Firing } else { Status::Resolved },
        labels,
        annotations,
        starts_at_ms: Some(now),
        ends_at_ms: f.problem.is_none().then_some(now),
        url: None,
    }
}

/// Checks forever; findings go through `alerting`, new problems also straight to the backup
/// channels.
pub async fn run(alerting: Alerting, watch: Watch, notify: Arc<Notify>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default();
    let started = now_ms();
    let mut firing: HashMap<&'static str, bool> = HashMap::new();
    let mut tick = tokio::time::interval(watch.interval.max(Duration::from_secs(1)));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = now_ms();
        let heartbeat = match &watch.heartbeat {
            Some((name, _)) => alerting.store().last_seen_named(name).await.ok().flatten(),
            None => None,
        };
        let findings = check(&http, &watch, heartbeat, started, now).await;
        // Only what changed, and firing problems, go in (a healthy check that was healthy adds nothing).
        let alerts: Vec<Alert> = findings
            .iter()
            .filter(|f| f.problem.is_some() || firing.get(f.alert).copied().unwrap_or(false))
            .map(|f| to_alert(f, now))
            .collect();
        if !alerts.is_empty() {
            if let Err(e) = alerting.ingest(alerts).await {
                tracing::warn!("monitor: could not record its findings: {e}");
            }
        }
        for f in &findings {
            let was = firing.insert(f.alert, f.problem.is_some()).unwrap_or(false);
            if let Some(p) = f.problem.as_ref().filter(|_| !was) {
                tracing::error!(check = f.alert, "{p}");
                crate::alerting::backup_notice(&http, &notify, f.alert, &f.instance, p).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_and_stalled_rule_groups_are_named() {
        let body = r#"{"status":"success","data":{"groups":[
            {"name":"ok","interval":15,"lastEvaluation":"2026-12-06T02:00:00Z","rules":[{"name":"A","health":"ok"}]},
            {"name":"zfs","interval":30,"lastEvaluation":"2026-12-06T01:00:00Z","rules":[{"name":"ZfsPoolDegraded","health":"err","lastError":"many-to-many matching not allowed"}]}
        ]}}"#;
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-06T02:00:10Z").unwrap().timestamp_millis();
        let (f, s) = rule_problems(body, now);
        assert!(f.unwrap().contains("zfs/ZfsPoolDegraded: many-to-many"));
        let s = s.unwrap();
        assert!(s.contains("zfs last evaluated 3610 s ago") && !s.contains("ok last"), "{s}");
        assert_eq!(rule_problems("{}", now).0.unwrap(), "/api/v1/rules did not answer with rule groups");
    }
}
