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
    let am_dir = dir.path().join("am");
    std::fs::create_dir_all(&am_dir).unwrap();
    std::fs::write(
        am_dir.join("alertmanager.yml"),
        format!(
            "route:\n  receiver: labops\n  group_by: [alertname, instance]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: labops\n    webhook_configs:\n      - url: http://127.0.0.1:{labops_port}/api/v1/alerts/alertmanager\n        send_resolved: true\n        http_config:\n          authorization:\n            credentials: {token}\n",
            token = served.token
        ),
    )
    .unwrap();
    let _am = spawn(
        "alertmanager",
        Command::new(&am).args([
            &format!("--config.file={}", am_dir.join("alertmanager.yml").display()),
            &format!("--storage.path={}", am_dir.join("data").display()),
            &format!("--web.listen-address=127.0.0.1:{am_port}"),
            "--cluster.listen-address=",
        ]),
    );
    wait_port(am_port, "alertmanager");

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
    std::fs::write(
        p_dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{rules}alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am_port}']\n    - static_configs:\n        - targets: ['127.0.0.1:{labops_port}']\n      authorization:\n        credentials: {token}\nscrape_configs:\n  - job_name: node\n    static_configs:\n      - targets: ['127.0.0.1:{ne_port}']\n    relabel_configs:\n      - target_label: instance\n        replacement: 'nas:9100'\n",
            rules = rule_files.iter().map(|r| format!("  - {}\n", r.display())).collect::<String>(),
            token = served.token,
        ),
    )
    .unwrap();
    let mut prom_proc = spawn(
        "prometheus",
        Command::new(&prom).args([
            &format!("--config.file={}", p_dir.join("prometheus.yml").display()),
            &format!("--storage.tsdb.path={}", p_dir.join("data").display()),
            &format!("--web.listen-address=127.0.0.1:{prom_port}"),
            "--rules.alert.resend-delay=1s",
        ]),
    );
    wait_port(prom_port, "prometheus");
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

    let list = |all: bool| -> Vec<Value> {
        let mut args = vec!["--config", cfg.to_str().unwrap(), "incidents", "--json"];
        if all {
            args.push("--all");
        }
        let out = labops().args(&args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
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
