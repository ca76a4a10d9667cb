//! labops against a real fakepve on loopback: the exact inventory of the reference homelab,
//! both auth methods, faults (offline node, lost quorum, 5xx, expired ticket, slow responses),
//! restarts from the store, and the CLI's exit codes.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::Value;

fn status_json(config: &std::path::Path) -> Value {
    let out = labops().args(["--config", config.to_str().unwrap(), "inventory", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ids(v: &Value, kind: &str) -> BTreeSet<String> {
    v["entities"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_reference_homelab_is_inventoried_exactly() {
    let pve = FakePve::reference();
    let dir = tempfile::tempdir().unwrap();
    let cfg = pve.config(dir.path(), "");
    let v = status_json(&cfg);

    let nodes = ["still-fawn", "pumped-piglet", "pve", "chief-horse", "fun-bedbug"];
    assert_eq!(ids(&v, "proxmox_node"), nodes.iter().map(|n| format!("proxmox_node/{n}")).collect());
    assert_eq!(ids(&v, "vm"), set(&["vm/105", "vm/107", "vm/108", "vm/114", "vm/116"]));
    assert_eq!(ids(&v, "lxc"), set(&["lxc/103"]));
    assert_eq!(ids(&v, "host"), set(&["host/nas"]));
    // fakepve's two default storages, enabled on every node.
    let storage: BTreeSet<String> = nodes
        .iter()
        .flat_map(|n| [format!("storage/{n}/local"), format!("storage/{n}/local-lvm")])
        .collect();
    assert_eq!(ids(&v, "storage"), storage);
    assert_eq!(v["entities"].as_array().unwrap().len(), 5 + 5 + 1 + 10 + 1);

    // Each guest has the name, node and status of the lab file.
    let lab: Value = serde_json::from_str(
        &std::fs::read_to_string(shared().join("reference/homelab/fakepve-lab.json")).unwrap(),
    )
    .unwrap();
    for g in lab["guests"].as_array().unwrap() {
        let kind = if g["type"] == "lxc" { "lxc" } else { "vm" };
        let id = format!("{kind}/{}", g["vmid"]);
        let e = v["entities"].as_array().unwrap().iter().find(|e| e["id"] == id.as_str()).unwrap_or_else(|| panic!("{id}"));
        assert_eq!(e["name"], g["name"], "{id}");
        assert_eq!(e["node"], g["node"], "{id}");
        assert_eq!(e["status"], g["status"], "{id}");
        assert_eq!(e["vmid"], g["vmid"], "{id}");
        // ... and runs on its node.
        let runs_on = v["relations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["from"] == id.as_str() && r["kind"] == "runs_on" && r["to"] == format!("proxmox_node/{}", g["node"].as_str().unwrap()));
        assert!(runs_on, "{id} should run on {}", g["node"]);
    }
    assert_eq!(v["freshness"]["degraded"], false, "{}", v["freshness"]);
}

#[test]
fn api_tokens_work_as_well_as_tickets() {
    let pve = FakePve::reference();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "token-secret-for-tests\n").unwrap();
    let cfg = dir.path().join("labops.toml");
    std::fs::write(
        &cfg,
        format!(
            "[state]\ndata_dir = \"{}\"\n[proxmox]\nurl = \"{}\"\ntoken_id = \"root@pam!labops\"\ntoken_secret_file = \"{}\"\nca_file = \"{}\"\n",
            dir.path().join("state").display(),
            pve.url,
            dir.path().join("token").display(),
            pve.cafile.display()
        ),
    )
    .unwrap();
    let v = status_json(&cfg);
    assert_eq!(ids(&v, "vm").len(), 5);

    // A wrong secret is refused, and the answer says the source is unavailable, with PVE's reason.
    std::fs::write(dir.path().join("token"), "wrong\n").unwrap();
    std::fs::remove_dir_all(dir.path().join("state")).unwrap();
    let v = status_json(&cfg);
    assert_eq!(ids(&v, "vm").len(), 0);
    let src = &v["freshness"]["sources"][0];
    assert_eq!(src["state"], "unavailable");
    assert!(src["last_error"].as_str().unwrap().contains("401"), "{src}");
}

#[test]
fn an_untrusted_certificate_is_refused_with_what_to_do() {
    let pve = FakePve::reference();
    let dir = tempfile::tempdir().unwrap();
    let cfg = pve.config(dir.path(), "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text.lines().filter(|l| !l.starts_with("ca_file")).collect::<Vec<_>>().join("\n");
    std::fs::write(&cfg, text).unwrap();
    let v = status_json(&cfg);
    let err = v["freshness"]["sources"][0]["last_error"].as_str().unwrap().to_string();
    assert!(err.contains("ca_file"), "{err}");
}

fn summary(s: &Served) -> Value {
    http().get(format!("{}/api/v1/summary", s.base)).bearer_auth(&s.token).send().unwrap().json().unwrap()
}

fn proxmox_source(v: &Value) -> Value {
    v["freshness"]["sources"].as_array().unwrap().iter().find(|s| s["name"] == "proxmox").unwrap().clone()
}

#[test]
fn faults_keep_the_last_good_snapshot_and_say_so() {
    let pve = FakePve::reference();
    let dir = tempfile::tempdir().unwrap();
    let cfg = pve.config(dir.path(), "");
    let served = Served::start(&cfg);
    eventually(20, "a healthy first refresh", || {
        let v = summary(&served);
        (proxmox_source(&v)["state"] == "healthy").then_some(())
    });

    // 1. An offline node: its guests go unknown, the node offline, and a warning says so.
    pve.call("set_node_offline", serde_json::json!(["pve"]));
    let v = eventually(10, "node pve offline", || {
        let v = summary(&served);
        let node = v["proxmox_nodes"].as_array()?.iter().find(|n| n["name"] == "pve")?.clone();
        (node["status"] == "offline").then_some(v)
    });
    assert!(v["warnings"].as_array().unwrap().iter().any(|w| w.as_str().unwrap().contains("node pve is offline")));
    assert_eq!(proxmox_source(&v)["state"], "degraded");
    let g: Value = http().get(format!("{}/api/v1/guests/107", served.base)).bearer_auth(&served.token).send().unwrap().json().unwrap();
    assert_eq!(g["guest"]["status"], "unknown");
    pve.reset();

    // 2. Lost quorum: reads work, the answer warns.
    pve.call("lose_quorum", serde_json::json!([]));
    eventually(10, "quorum warning", || {
        let v = summary(&served);
        v["warnings"].as_array()?.iter().any(|w| w.as_str().unwrap_or("").contains("lost quorum")).then_some(())
    });
    pve.reset();

    // 3. 5xx from /cluster/resources: degraded, last good data served, error named.
    eventually(10, "healthy again", || (proxmox_source(&summary(&served))["state"] == "healthy").then_some(()));
    pve.call("fail", serde_json::json!(["GET", "/cluster/resources", 500, "internal error: pmxcfs is gone"]));
    let v = eventually(10, "5xx recorded", || {
        let v = summary(&served);
        let src = proxmox_source(&v);
        src["last_error"].as_str().unwrap_or("").contains("pmxcfs").then_some(v)
    });
    assert_eq!(proxmox_source(&v)["state"], "degraded");
    assert_eq!(v["counts"]["vm"], 5, "the last good snapshot is still served");
    assert!(v["freshness"]["note"].as_str().unwrap().contains("last good snapshot"));
    // Tool answers carry the same freshness.
    let r: Value = http().get(format!("{}/api/v1/resolve/haos", served.base)).bearer_auth(&served.token).send().unwrap().json().unwrap();
    assert_eq!(r["entity"]["id"], "vm/116");
    assert_eq!(r["freshness"]["degraded"], true);
    pve.reset();
    eventually(10, "recovery after 5xx", || (proxmox_source(&summary(&served))["state"] == "healthy").then_some(()));

    // 4. Expired ticket: labops logs in again without anyone noticing.
    pve.call("revoke_tickets", serde_json::json!([]));
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let v = summary(&served);
    assert_eq!(proxmox_source(&v)["state"], "healthy", "{}", proxmox_source(&v));

    // 5. Slow responses beyond the timeout: degraded with the timeout named, data kept.
    // (fakepve's latency scales with its time scale, 0 here; a hang is in real seconds.)
    pve.call("flaky_network", serde_json::json!([0.0, 1.0, 4]));
    let v = eventually(15, "timeout recorded", || {
        let v = summary(&served);
        let e = proxmox_source(&v)["last_error"].as_str().unwrap_or("").to_lowercase();
        (e.contains("timed out") || e.contains("timeout")).then_some(v)
    });
    assert_eq!(v["counts"]["vm"], 5);
    pve.reset();
    eventually(15, "recovery after slowness", || (proxmox_source(&summary(&served))["state"] == "healthy").then_some(()));
}

#[test]
fn a_restart_serves_the_stored_snapshot_at_once_marked_with_its_age() {
    let pve = FakePve::reference();
    let dir = tempfile::tempdir().unwrap();
    let cfg = pve.config(dir.path(), "");
    assert_eq!(ids(&status_json(&cfg), "vm").len(), 5);
    drop(pve); // the cluster is gone

    let served = Served::start(&cfg);
    let v = summary(&served);
    assert_eq!(v["counts"]["vm"], 5, "the stored snapshot answers before any refresh");
    let src = proxmox_source(&v);
    assert!(src["age_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(v["freshness"]["degraded"], true);
}

#[test]
fn resolve_exit_codes_and_candidates() {
    let pve = FakePve::reference();
    let dir = tempfile::tempdir().unwrap();
    let cfg = pve.config(dir.path(), "");
    let run = |args: &[&str]| labops().args(["--config", cfg.to_str().unwrap(), "resolve"]).args(args).output().unwrap();

    let ok = run(&["haos"]);
    assert_eq!(ok.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("vm/116"));
    assert_eq!(run(&["108"]).status.code(), Some(0));
    assert_eq!(run(&["proxmox-backup-server", "--kind", "lxc"]).status.code(), Some(0));

    let unknown = run(&["still-fawm"]);
    assert_eq!(unknown.status.code(), Some(2));
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(err.contains("proxmox_node/still-fawn"), "{err}");

    // `local` is a storage on all five nodes.
    let amb = run(&["local", "--json"]);
    assert_eq!(amb.status.code(), Some(3));
    let v: Value = serde_json::from_slice(&amb.stdout).unwrap();
    assert_eq!(v["error"]["candidates"].as_array().unwrap().len(), 5);

    // A wrong kind says what the name is.
    let wrong = run(&["still-fawn", "--kind", "vm"]);
    assert_eq!(wrong.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("proxmox_node"));
}

#[test]
fn list_by_node_rejects_unknown_nodes_instead_of_answering_empty() {
    let pve = FakePve::reference();
    let dir = tempfile::tempdir().unwrap();
    let cfg = pve.config(dir.path(), "");
    let out = labops()
        .args(["--config", cfg.to_str().unwrap(), "list", "--node", "pumped-piglet", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let got: BTreeSet<&str> = v["entities"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(
        got,
        ["vm/105", "lxc/103", "storage/pumped-piglet/local", "storage/pumped-piglet/local-lvm"].into_iter().collect()
    );
    let out = labops().args(["--config", cfg.to_str().unwrap(), "list", "--node", "pumped-pigglet"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("proxmox_node/pumped-piglet"));
}
