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

/// A small exporter of synthetic series: `labops_synth{node="nNN",series="sNNN"}` for 50 nodes
/// x 200 series, each a level of its own plus a one-minute pattern of six ten-second steps, and
/// on `/fill`, `labops_fill{pool="tank"}` growing 2 a second from 500 (size 1000). Once `plant`
/// is set, n07/s123 jumps to a level it never had.
fn synthetic_exporter(plant: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let started = std::time::Instant::now();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            if buf[..n].starts_with(b"GET /fill") {
                let bad = if plant.load(std::sync::atomic::Ordering::SeqCst) { 8 } else { 0 };
                let body = format!(
                    "# TYPE labops_fill gauge\nlabops_fill{{pool=\"tank\"}} {}\n# TYPE labops_smart_reallocated gauge\nlabops_smart_reallocated{{device=\"/dev/sda\"}} {bad}\n",
                    500.0 + 2.0 * started.elapsed().as_secs_f64()
                );
                let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                continue;
            }
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
            let step = [0.0, 5.0, 10.0, 5.0, 0.0, -5.0][((now / 10) % 6) as usize];
            let mut body = String::with_capacity(600_000);
            body.push_str("# TYPE labops_synth gauge\n");
            for n in 1..=50 {
                for k in 1..=200 {
                    let mut v = 100.0 + ((n * 7 + k * 13) % 97) as f64 + step;
                    if n == 7 && k == 123 && plant.load(std::sync::atomic::Ordering::SeqCst) {
                        v = 5_000.0;
                    }
                    body.push_str(&format!("labops_synth{{node=\"n{n:02}\",series=\"s{k:03}\"}} {v}\n"));
                }
            }
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    port
}

/// Issue #7 end to end: real Prometheus scraping node_exporter and 10,000 synthetic series;
/// the watcher warms up with range queries and then reads incrementally; a planted level
/// shift on one series becomes one `AnomalyDetected` incident naming it, no quiet series
/// alarms; a pool filling in minutes becomes a `CapacityForecast` incident saying when and a
/// proposal to make room; a disk's reallocated sectors rising becomes a `CounterRising` alert.
#[test]
fn the_watcher_reads_real_series_and_raises_anomalies_and_forecasts() {
    let (Some(prom), Some(ne)) = (bin("prometheus"), bin("prometheus-node-exporter")) else {
        println!("\n*** SKIPPED TIER: real Prometheus/node_exporter for the anomaly watcher (install Debian's prometheus and prometheus-node-exporter; scripts/test does) ***\n");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let plant = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let synth_port = synthetic_exporter(plant.clone());
    let ne_port = free_port();
    let _exporter = node_exporter(&ne, ne_port);
    wait_port(ne_port, "node_exporter");
    let p_dir = dir.path().join("prom");
    std::fs::create_dir_all(&p_dir).unwrap();
    let prom_port = free_port();
    let _prom = prometheus(
        &prom,
        &p_dir,
        prom_port,
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: node\n    static_configs:\n      - targets: ['127.0.0.1:{ne_port}']\n  - job_name: synth\n    static_configs:\n      - targets: ['127.0.0.1:{synth_port}']\n  - job_name: nas\n    metrics_path: /fill\n    static_configs:\n      - targets: ['127.0.0.1:{synth_port}']\n    relabel_configs:\n      - target_label: instance\n        replacement: 'nas:9100'\n"
        ),
    );
    let c = http();
    let prom_url = format!("http://127.0.0.1:{prom_port}");
    let count = |q: &str| -> usize {
        let v: Value = c.get(format!("{prom_url}/api/v1/query")).query(&[("query", q)]).send().ok().and_then(|r| r.json().ok()).unwrap_or_default();
        v["data"]["result"].as_array().map(Vec::len).unwrap_or(0)
    };
    eventually(60, "Prometheus scraping 10,000 synthetic series and node_exporter", || (count("labops_synth") == 10_000 && count("node_cpu_seconds_total") > 0).then_some(()));

    // The watcher as a library first: the warm-up read of real node_exporter series.
    std::thread::sleep(Duration::from_secs(25));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let watch = |queries: Vec<labops_engine::anomaly::Query>| labops_engine::anomaly::Watch {
        prometheus: prom_url.clone(),
        queries,
        capacity: Vec::new(),
        counters: Vec::new(),
        step: Duration::from_secs(1),
        interval: Duration::from_secs(2),
        warmup: Duration::from_secs(120),
        forecast_window: Duration::from_secs(60),
        forecast_every: Duration::from_secs(5),
        detector: labops_aiops::detect::Config { warmup: 20, ..Default::default() },
        max_series: 20_000,
    };
    let cpu = labops_engine::anomaly::Query { kind: "cpu".into(), expr: r#"rate(node_cpu_seconds_total{mode="idle"}[5s])"#.into() };
    let mut w = labops_engine::anomaly::Watcher::new(watch(vec![cpu]));
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let first = rt.block_on(w.read(now()));
    assert!(first.problems.is_empty(), "{:?}", first.problems);
    assert!(first.series >= 1 && first.points >= first.series * 15, "the warm-up reads the history: {first:?}");
    std::thread::sleep(Duration::from_secs(3));
    let next = rt.block_on(w.read(now()));
    assert!(next.points > 0 && next.points <= next.series * 5, "then only the new points: {next:?}");
    let bad = rt.block_on(labops_engine::anomaly::Watcher::new(watch(vec![labops_engine::anomaly::Query { kind: "x".into(), expr: "rate(".into() }])).read(now()));
    assert!(bad.problems[0].contains("Prometheus refused \"rate(\""), "{:?}", bad.problems);

    // Then `labops serve` with the whole path: 10,000 series plus a capacity rule.
    let pve = FakePve::reference();
    let repo = gitops_repo(dir.path(), &[]);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cfg = pve.config(
        dir.path(),
        &format!(
            "{repo}\n[forge]\nkind = \"local\"\n[ai]\nlibrary = \"{lib}\"\n[alerts]\ngroup_wait_seconds = 1\nrunbooks = \"{rb}\"\n[alerts.anomaly]\nprometheus_url = \"{prom_url}\"\nstep_seconds = 1\ninterval_seconds = 2\nwarmup_hours = 0.03\nwarmup_points = 20\nforecast_window_days = 0.001\nforecast_every_minutes = 0.1\n[[alerts.anomaly.queries]]\nkind = \"synthetic\"\nexpr = \"labops_synth\"\n[[alerts.anomaly.capacity]]\nname = \"zfs_pool\"\nused = \"labops_fill\"\nsize = \"1000\"\nhorizon_days = 14\n[[alerts.anomaly.counters]]\nname = \"smart_reallocated_sectors\"\nexpr = \"labops_smart_reallocated\"\n",
            lib = root.join("workflows").display(),
            rb = root.join("runbooks").display(),
        ),
    );
    let _served = Served::start(&cfg);
    let by_title = |t: &str| incidents(&cfg, false).into_iter().filter(|i| i["title"].as_str().unwrap_or("").contains(t)).collect::<Vec<_>>();
    let forecast = eventually(90, "a CapacityForecast incident for the tank pool", || by_title("CapacityForecast").into_iter().next());
    let detail = labops().args(["--config", cfg.to_str().unwrap(), "incidents", "show", &forecast["id"].to_string(), "--json"]).output().unwrap();
    let detail = String::from_utf8_lossy(&detail.stdout).to_string();
    assert!(detail.contains("zfs_pool tank reaches 1000 in about") && detail.contains("add a disk"), "{detail}");
    // ... and a discovered wishlist item, once.
    let wishes: Value = serde_json::from_slice(&labops().args(["--config", cfg.to_str().unwrap(), "wishlist", "list", "--json"]).output().unwrap().stdout).unwrap();
    let found: Vec<&Value> = wishes.as_array().unwrap().iter().filter(|w| w["item"]["source"] == "forecast").collect();
    assert_eq!(found.len(), 1, "{wishes}");
    assert_eq!(found[0]["item"]["title"], "Make room: zfs_pool tank on nas:9100");
    assert!(found[0]["item"]["description"].as_str().unwrap().contains("reaches 1000 in about"));
    assert_eq!(found[0]["item"]["factors"], serde_json::json!({}), "labops invents no factor values for the owner");
    // The forecast, on the NAS (its `instance`), becomes a proposal to make room, awaiting approval.
    let change = eventually(60, "the capacity-forecast runbook's proposal", || {
        let out = labops().args(["--config", cfg.to_str().unwrap(), "incidents", "show", &forecast["id"].to_string(), "--json"]).output().ok()?;
        let d: Value = serde_json::from_slice(&out.stdout).ok()?;
        let t = d["timeline"].as_array().cloned().unwrap_or_default();
        if let Some(f) = t.iter().find(|e| e["event"] == "remedy_failed" || e["event"] == "remedy_withheld") {
            panic!("the forecast was not proposed: {f}");
        }
        t.iter().find(|e| e["event"] == "remedy_proposed").map(|e| (e["detail"]["change"].as_str().unwrap().to_string(), e["detail"]["target"].clone()))
    });
    assert_eq!(change.1, "host/nas");
    let out = labops().args(["--config", cfg.to_str().unwrap(), "change", "show", &change.0, "--json"]).output().unwrap();
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = shown.to_string();
    assert!(text.contains("add-capacity") && text.contains("labops found: zfs_pool tank reaches 1000 in about"), "{text}");
    assert_ne!(shown["state"], "approved", "a proposal waits for a human");
    // Let the watcher warm up on the synthetic series, then plant the shift.
    std::thread::sleep(Duration::from_secs(8));
    plant.store(true, std::sync::atomic::Ordering::SeqCst);
    let anomalies = eventually(120, "an AnomalyDetected incident", || {
        let a = by_title("AnomalyDetected");
        (!a.is_empty()).then_some(a)
    });
    let detail = labops().args(["--config", cfg.to_str().unwrap(), "incidents", "show", &anomalies[0]["id"].to_string(), "--json"]).output().unwrap();
    let detail = String::from_utf8_lossy(&detail.stdout).to_string();
    assert!(detail.contains("node=n07,series=s123"), "the planted series: {detail}");
    // The disk's reallocated sectors rose at the same moment: a CounterRising alert, on the NAS,
    // so in the NAS's incident with the forecast (one machine, one incident).
    let show = |id: &Value| String::from_utf8_lossy(&labops().args(["--config", cfg.to_str().unwrap(), "incidents", "show", &id.to_string(), "--json"]).output().unwrap().stdout).to_string();
    eventually(60, "a CounterRising alert", || show(&forecast["id"]).contains("smart_reallocated_sectors on /dev/sda rose by 8 (from 0)").then_some(()));
    assert!(show(&forecast["id"]).contains("CounterRising"));
    std::thread::sleep(Duration::from_secs(6));
    let all = by_title("AnomalyDetected");
    let text = serde_json::to_string(&all).unwrap();
    assert_eq!(all.len(), 1, "one incident, no quiet series alarmed: {text}");
}
