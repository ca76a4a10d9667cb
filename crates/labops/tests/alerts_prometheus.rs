//! The real monitoring stack on loopback: node_exporter scraped by Prometheus, with the
//! reference homelab's alerting rules (turned from PrometheusRule resources into rule files) and
//! a standard `TargetDown` (`up == 0`); Prometheus sends to a real Alertmanager, which sends to
//! labops' webhook, and straight to labops' own Alertmanager push API. Killing node_exporter
//! opens one target-down incident (both paths deduplicated into one alert); starting it again
//! resolves the incident.
//!
//! Needs Debian's prometheus, prometheus-alertmanager and prometheus-node-exporter (scripts/test
//! installs them); without them this tier says loudly that it skipped.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

fn bin(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/local/bin", "/usr/sbin"].iter().map(|d| Path::new(d).join(name)).find(|p| p.exists())
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(what: &'static str, cmd: &mut Command) -> Proc {
    Proc(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap_or_else(|e| panic!("start {what}: {e}")))
}

fn wait_port(port: u16, what: &str) {
    eventually(30, what, || std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ()));
}

/// A PrometheusRule resource's `spec` is a rule file: `groups:` and below, dedented.
fn rule_file(resource: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in resource.lines() {
        if line.starts_with("spec:") {
            inside = true;
            continue;
        }
        if inside {
            if !line.is_empty() && !line.starts_with(' ') {
                break;
            }
            out.push_str(line.strip_prefix("  ").unwrap_or(line));
            out.push('\n');
        }
    }
    out
}

fn node_exporter(exe: &Path, port: u16) -> Proc {
    spawn(
        "node_exporter",
        Command::new(exe).args([&format!("--web.listen-address=127.0.0.1:{port}"), "--collector.disable-defaults", "--collector.loadavg", "--collector.cpu"]),
    )
}

/// Alertmanager on `port` with `config` (its YAML), state under `dir`; waits until it listens.
fn alertmanager(exe: &Path, dir: &Path, port: u16, config: &str) -> Proc {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("alertmanager.yml"), config).unwrap();
    let p = spawn(
        "alertmanager",
        Command::new(exe).args([
            &format!("--config.file={}", dir.join("alertmanager.yml").display()),
            &format!("--storage.path={}", dir.join("data").display()),
            &format!("--web.listen-address=127.0.0.1:{port}"),
            "--cluster.listen-address=",
        ]),
    );
    wait_port(port, "alertmanager");
    p
}

/// Prometheus on `port` with `config` (its YAML), data under `dir`; waits until it listens.
fn prometheus(exe: &Path, dir: &Path, port: u16, config: &str) -> Proc {
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let p = spawn(
        "prometheus",
        Command::new(exe).args([
            &format!("--config.file={}", dir.join("prometheus.yml").display()),
            &format!("--storage.tsdb.path={}", dir.join("data").display()),
            &format!("--web.listen-address=127.0.0.1:{port}"),
            "--rules.alert.resend-delay=1s",
        ]),
    );
    wait_port(port, "prometheus");
    p
}

#[test]
fn node_exporter_down_opens_one_incident_and_coming_back_resolves_it() {
    let (Some(prom), Some(am), Some(ne)) = (bin("prometheus"), bin("prometheus-alertmanager"), bin("prometheus-node-exporter")) else {
        println!("\n*** SKIPPED TIER: real Prometheus/Alertmanager/node_exporter (install Debian's prometheus, prometheus-alertmanager and prometheus-node-exporter; scripts/test does) ***\n");
        return;
    };
    let pve = FakePve::reference();
    let dir = tempfile::tempdir().unwrap();
    let cfg = pve.config(dir.path(), "\n[alerts]\ngroup_wait_seconds = 1\n");
    let served = Served::start(&cfg);
    let labops_port: u16 = served.base.rsplit(':').next().unwrap().parse().unwrap();

    // node_exporter, as the NAS (a [[hosts]] entry of the config).
    let ne_port = free_port();
    let exporter = node_exporter(&ne, ne_port);
    wait_port(ne_port, "node_exporter");

    // Alertmanager, sending every group to labops' webhook with the server token.
    let am_port = free_port();
    let _am = alertmanager(
        &am,
        &dir.path().join("am"),
        am_port,
        &format!(
            "route:\n  receiver: labops\n  group_by: [alertname, instance]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: labops\n    webhook_configs:\n      - url: http://127.0.0.1:{labops_port}/api/v1/alerts/alertmanager\n        send_resolved: true\n        http_config:\n          authorization:\n            credentials: {token}\n",
            token = served.token
        ),
    );

    // Prometheus: the homelab's rules plus TargetDown; alerts to Alertmanager and to labops.
    let p_dir = dir.path().join("prom");
    std::fs::create_dir_all(&p_dir).unwrap();
    let mut rule_files = Vec::new();
    for f in std::fs::read_dir(shared().join("reference/homelab")).unwrap() {
        let f = f.unwrap().path();
        if f.to_string_lossy().ends_with("-alerting-rules.yaml") {
            let out = p_dir.join(f.file_name().unwrap());
            std::fs::write(&out, rule_file(&std::fs::read_to_string(&f).unwrap())).unwrap();
            rule_files.push(out);
        }
    }
    assert!(rule_files.len() >= 4, "the reference homelab's rule files");
    std::fs::write(
        p_dir.join("target-down.yaml"),
        "groups:\n  - name: targets\n    rules:\n      - alert: TargetDown\n        expr: up == 0\n        for: 2s\n        labels:\n          severity: critical\n        annotations:\n          summary: \"{{ $labels.instance }} is down\"\n",
    )
    .unwrap();
    rule_files.push(p_dir.join("target-down.yaml"));
    let prom_port = free_port();
    let mut prom_proc = prometheus(
        &prom,
        &p_dir,
        prom_port,
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{rules}alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am_port}']\n    - static_configs:\n        - targets: ['127.0.0.1:{labops_port}']\n      authorization:\n        credentials: {token}\nscrape_configs:\n  - job_name: node\n    static_configs:\n      - targets: ['127.0.0.1:{ne_port}']\n    relabel_configs:\n      - target_label: instance\n        replacement: 'nas:9100'\n",
            rules = rule_files.iter().map(|r| format!("  - {}\n", r.display())).collect::<String>(),
            token = served.token,
        ),
    );
    let c = http();
    // Every rule file loaded (a bad one would stop Prometheus from starting at all).
    let rules: Value = eventually(30, "prometheus rules", || {
        c.get(format!("http://127.0.0.1:{prom_port}/api/v1/rules")).send().ok()?.json().ok()
    });
    let groups = rules["data"]["groups"].as_array().unwrap().len();
    assert!(groups >= 5, "{rules}");
    assert!(prom_proc.0.try_wait().unwrap().is_none(), "prometheus is running");
    eventually(30, "node_exporter scraped up", || {
        let v: Value = c.get(format!("http://127.0.0.1:{prom_port}/api/v1/query?query=up")).send().ok()?.json().ok()?;
        (v["data"]["result"][0]["value"][1] == "1").then_some(())
    });

    let list = |all: bool| incidents(&cfg, all);
    assert!(list(false).is_empty(), "nothing fires while the target is up");

    // The NAS exporter dies.
    drop(exporter);
    let incident = eventually(60, "a TargetDown incident on the NAS", || {
        list(false).into_iter().find(|i| i["root"] == "host/nas" && i["title"].as_str().unwrap_or("").contains("TargetDown"))
    });
    let id = incident["id"].as_i64().unwrap();
    assert_eq!(incident["severity"], "critical");
    // Both paths delivered it (Alertmanager's webhook, and Prometheus straight to /api/v2/alerts):
    // one alert, one incident.
    eventually(30, "the alert from both senders", || {
        let d: Value = c.get(format!("{}/api/v1/incidents/{id}", served.base)).bearer_auth(&served.token).send().ok()?.json().ok()?;
        let alerts = d["alert_list"].as_array()?;
        (alerts.len() == 1 && alerts[0]["received"].as_u64()? >= 2).then_some(())
    });
    assert_eq!(list(false).iter().filter(|i| i["root"] == "host/nas").count(), 1);

    // It comes back: the incident resolves.
    let _exporter = node_exporter(&ne, ne_port);
    wait_port(ne_port, "node_exporter again");
    eventually(90, "the incident resolved by its alerts", || {
        let d: Value = c.get(format!("{}/api/v1/incidents/{id}", served.base)).bearer_auth(&served.token).send().ok()?.json().ok()?;
        (d["state"] == "resolved").then_some(d)
    });
    let _ = prom_proc.0.kill();
    std::thread::sleep(Duration::from_millis(100));
}

/// Monitor the monitor: labops checks Prometheus (health, rule evaluation), Alertmanager and a
/// scripted Grafana health endpoint; a rule that fails to evaluate, Grafana's database going
/// bad and Alertmanager dying each become labops' own incident, sent at once through the backup
/// channels (Home Assistant, the webhook), and the incident resolves when the check passes.
#[test]
fn the_monitoring_stack_is_watched_and_its_failures_reach_the_backup_channels() {
    let (Some(prom), Some(am), Some(ne)) = (bin("prometheus"), bin("prometheus-alertmanager"), bin("prometheus-node-exporter")) else {
        println!("\n*** SKIPPED TIER: monitor the monitor against real Prometheus/Alertmanager (install Debian's prometheus, prometheus-alertmanager and prometheus-node-exporter; scripts/test does) ***\n");
        return;
    };
    let grafana_ok = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let g = grafana_ok.clone();
    let (grafana, _) = endpoint(move |path| match (path, g.load(std::sync::atomic::Ordering::SeqCst)) {
        ("/api/health", true) => (200, r#"{"commit":"abc","database":"ok","version":"12.1.0"}"#.into()),
        ("/api/health", false) => (503, r#"{"commit":"abc","database":"failing","version":"12.1.0"}"#.into()),
        _ => (404, "{}".into()),
    });
    let (ha, ha_got) = endpoint(|_| (200, "[]".into()));
    let (hook, hook_got) = endpoint(|_| (200, "{}".into()));
    let (labops_port, am_port, prom_port, ne_port) = (free_port(), free_port(), free_port(), free_port());
    let pve = FakePve::reference();
    let dir = tempfile::tempdir().unwrap();
    let cfg = pve.config(
        dir.path(),
        &format!(
            "\n[alerts]\ngroup_wait_seconds = 1\nwebhook_url = \"{hook}/hook\"\n[alerts.escalation]\ncritical = [\"dashboard@0\", \"home_assistant@0\"]\n[alerts.home_assistant]\nurl = \"{ha}\"\ntoken = \"ha-long-lived-token\"\nservice = \"notify.mobile_app_phone\"\n[alerts.monitor]\nprometheus_url = \"http://127.0.0.1:{prom_port}\"\nalertmanager_url = \"http://127.0.0.1:{am_port}\"\ngrafana_url = \"{grafana}\"\ninterval_seconds = 1\n"
        ),
    );
    // The stack first, so labops finds it up.
    let _exporter = node_exporter(&ne, ne_port);
    let mut am_proc = alertmanager(&am, &dir.path().join("am"), am_port, "route:\n  receiver: none\nreceivers:\n  - name: none\n");
    let p_dir = dir.path().join("prom");
    std::fs::create_dir_all(&p_dir).unwrap();
    // Two `up` series and a one-to-one match on nothing: the rule fails at every evaluation.
    std::fs::write(p_dir.join("broken.yaml"), "groups:\n  - name: broken\n    rules:\n      - alert: BrokenJoin\n        expr: up * on() up\n").unwrap();
    let _prom = prometheus(
        &prom,
        &p_dir,
        prom_port,
        &format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules}\nscrape_configs:\n  - job_name: node\n    static_configs:\n      - targets: ['127.0.0.1:{ne_port}']\n  - job_name: prometheus\n    static_configs:\n      - targets: ['127.0.0.1:{prom_port}']\n",
            rules = p_dir.join("broken.yaml").display()
        ),
    );
    let served = Served::start_on(&cfg, labops_port);
    let c = http();
    let incidents = |all: bool| -> Vec<Value> {
        let url = format!("{}/api/v1/incidents{}", served.base, if all { "?all=true" } else { "" });
        c.get(url).bearer_auth(&served.token).send().unwrap().json().unwrap()
    };
    let by_title = |t: &str, all: bool| incidents(all).into_iter().find(|i| i["title"].as_str().unwrap_or("").contains(t));

    // The broken rule: an incident, and a notice on both backup channels.
    let rules = eventually(60, "a PrometheusRuleFailures incident", || by_title("PrometheusRuleFailures", false));
    assert_eq!(rules["severity"], "critical");
    eventually(20, "the backup notices", || {
        let hook = hook_got.lock().unwrap().iter().any(|(_, b)| b["alert"] == "PrometheusRuleFailures" && b["message"].as_str().unwrap_or("").contains("BrokenJoin"));
        let ha = ha_got.lock().unwrap().iter().any(|(p, b)| p == "/api/services/notify/mobile_app_phone" && b["title"].as_str().unwrap_or("").contains("PrometheusRuleFailures"));
        (hook && ha).then_some(())
    });
    // The incident itself escalates per [alerts.escalation]: critical goes to Home Assistant at once.
    let rid = rules["id"].as_i64().unwrap();
    eventually(20, "the incident's Home Assistant notice", || {
        ha_got.lock().unwrap().iter().any(|(_, b)| b["title"].as_str().unwrap_or("").starts_with(&format!("[CRITICAL] #{rid} "))).then_some(())
    });
    let n: Value = c.get(format!("{}/api/v1/incidents/{rid}", served.base)).bearer_auth(&served.token).send().unwrap().json().unwrap();
    assert!(n["timeline"].as_array().unwrap().iter().any(|e| e["event"] == "escalated" && e["detail"]["channel"] == "home_assistant"), "{n}");
    assert!(by_title("PrometheusDown", true).is_none(), "Prometheus itself is healthy");
    assert!(by_title("AlertmanagerDown", true).is_none());

    // Grafana's database fails, then recovers.
    grafana_ok.store(false, std::sync::atomic::Ordering::SeqCst);
    let g = eventually(30, "a GrafanaDown incident", || by_title("GrafanaDown", false));
    let gid = g["id"].as_i64().unwrap();
    eventually(20, "the Grafana notice", || hook_got.lock().unwrap().iter().any(|(_, b)| b["alert"] == "GrafanaDown").then_some(()));
    grafana_ok.store(true, std::sync::atomic::Ordering::SeqCst);
    eventually(30, "GrafanaDown resolved", || {
        let d: Value = c.get(format!("{}/api/v1/incidents/{gid}", served.base)).bearer_auth(&served.token).send().ok()?.json().ok()?;
        (d["state"] == "resolved").then_some(())
    });

    // Alertmanager dies.
    let _ = am_proc.0.kill();
    let _ = am_proc.0.wait();
    eventually(30, "an AlertmanagerDown incident", || by_title("AlertmanagerDown", false));
    eventually(20, "the Alertmanager notice", || hook_got.lock().unwrap().iter().any(|(_, b)| b["alert"] == "AlertmanagerDown").then_some(()));
    // Each problem was announced once, however many checks saw it.
    let n = hook_got.lock().unwrap().iter().filter(|(_, b)| b["alert"] == "PrometheusRuleFailures").count();
    assert_eq!(n, 1);
}
