//! labops with a Kubernetes source: the stateful fake API server (list + watch with resource
//! versions) loaded with nodes named like the reference lab's K3s VMs, beside a real fakepve.
//! Links pod -> K8s node -> VM -> Proxmox node, watch updates, and the degraded path. A real
//! cluster is used too when LABOPS_TEST_KUBECONFIG is set.

mod common;

use common::*;
use labops_testkit::FakeKube;
use serde_json::{json, Value};

const K3S_NODES: [&str; 4] = ["k3s-vm-still-fawn", "k3s-vm-pumped-piglet-gpu", "k3s-vm-fun-bedbug", "k3s-vm-pve"];

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
           "status": {"conditions": [{"type": "Ready", "status": "True"}],
                      "addresses": [{"type": "Hostname", "address": name}],
                      "nodeInfo": {"kubeletVersion": "v1.35.0+k3s1", "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "",
                                   "kernelVersion": "", "kubeProxyVersion": "", "machineID": "", "operatingSystem": "linux",
                                   "osImage": "", "systemUUID": ""}}})
}

fn deployment(ns: &str, name: &str, replicas: i32, ready: i32) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
           "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": name, "image": "x"}]}}},
           "status": {"replicas": replicas, "readyReplicas": ready}})
}

fn pod(ns: &str, name: &str, app: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
           "spec": {"nodeName": node, "containers": [{"name": app, "image": "x"}]},
           "status": {"phase": "Running", "podIP": "10.42.0.1"}})
}

fn service(ns: &str, name: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
           "spec": {"selector": {"app": app}, "ports": [{"port": 80}], "type": "ClusterIP", "clusterIP": "10.43.0.10"}})
}

fn ingress(ns: &str, name: &str, svc: &str, host: &str) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": name, "namespace": ns},
           "spec": {"rules": [{"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": svc, "port": {"number": 80}}}}]}}]}})
}

fn get(s: &Served, path: &str) -> Value {
    http().get(format!("{}{path}", s.base)).bearer_auth(&s.token).send().unwrap().json().unwrap()
}

fn source<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["freshness"]["sources"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap()
}

#[test]
fn pods_link_through_k3s_nodes_and_vms_to_proxmox_nodes_and_follow_the_watch() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let kube = rt.block_on(FakeKube::start());
    for n in K3S_NODES {
        kube.apply(node(n));
    }
    kube.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "home"}}));
    kube.apply(deployment("home", "frigate", 1, 1));
    kube.apply(pod("home", "frigate-0", "frigate", "k3s-vm-still-fawn"));
    kube.apply(deployment("home", "web", 2, 2));
    kube.apply(pod("home", "web-a", "web", "k3s-vm-still-fawn"));
    kube.apply(pod("home", "web-b", "web", "k3s-vm-pumped-piglet-gpu"));
    kube.apply(service("home", "web", "web"));
    kube.apply(service("home", "frigate", "frigate"));
    kube.apply(ingress("home", "web", "web", "web.homelab"));

    let pve = FakePve::reference();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.kubeconfig(dir.path());
    let cfg = pve.config(dir.path(), &format!("\n[kubernetes]\nkubeconfig = \"{}\"\nrefresh_seconds = 1\n", kubeconfig.display()));
    let served = Served::start(&cfg);

    let v = eventually(20, "kubernetes source healthy with pods", || {
        let v = get(&served, "/api/v1/summary");
        (source(&v, "kubernetes")["state"] == "healthy" && v["counts"]["pod"] == 3).then_some(v)
    });
    // Every K3s node is hosted by the VM of the same name.
    let hosted: Vec<(String, String)> = v["k8s_nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].as_str().unwrap().to_string(), n["hosted_by"].as_str().unwrap_or("-").to_string()))
        .collect();
    assert!(hosted.contains(&("k3s-vm-still-fawn".into(), "vm/108".into())), "{hosted:?}");
    assert!(hosted.contains(&("k3s-vm-pve".into(), "vm/107".into())), "{hosted:?}");

    // pod -> K8s node -> VM -> Proxmox node.
    let e = get(&served, "/api/v1/entities/home/frigate-0");
    let chain: Vec<&str> = e["placement"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(chain, ["k8s_node/k3s-vm-still-fawn", "vm/108", "proxmox_node/still-fawn"]);

    // What breaks if still-fawn goes down: frigate entirely, web partly.
    let impact = get(&served, "/api/v1/impact/still-fawn");
    let effect = |id: &str| {
        impact["affected"].as_array().unwrap().iter().find(|i| i["id"] == id).map(|i| i["effect"].as_str().unwrap().to_string())
    };
    assert_eq!(effect("service/home/frigate").as_deref(), Some("down"));
    assert_eq!(effect("workload/home/deployment/web").as_deref(), Some("degraded"));
    assert_eq!(effect("ingress/home/web").as_deref(), Some("degraded"));
    assert_eq!(effect("pod/home/web-b"), None);

    // k8s_workloads by Proxmox node goes through the VMs.
    let wl = get(&served, "/api/v1/workloads?node=pumped-piglet");
    let names: Vec<&str> = wl["workloads"].as_array().unwrap().iter().map(|w| w["workload"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["web"]);

    // The watch delivers changes: a new pod appears, a deleted one goes.
    kube.apply(pod("home", "web-c", "web", "k3s-vm-fun-bedbug"));
    kube.delete("v1", "Pod", Some("home"), "frigate-0");
    eventually(10, "watch updates", || {
        let l = get(&served, "/api/v1/entities?kind=pod");
        let ids: Vec<String> = l["entities"].as_array()?.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
        (ids.contains(&"pod/home/web-c".to_string()) && !ids.contains(&"pod/home/frigate-0".to_string())).then_some(())
    });

    // The API fails: the cache keeps serving, the source says it is degraded.
    kube.fail_requests(Some(500));
    kube.close_watches();
    let v = eventually(30, "kubernetes degraded", || {
        let v = get(&served, "/api/v1/summary");
        (source(&v, "kubernetes")["state"] == "degraded").then_some(v)
    });
    assert_eq!(v["counts"]["pod"], 3, "the last good data is still served");
    assert_eq!(v["freshness"]["degraded"], true);
    kube.fail_requests(None);
    eventually(60, "kubernetes recovers", || {
        (source(&get(&served, "/api/v1/summary"), "kubernetes")["state"] == "healthy").then_some(())
    });
    drop(served);
    rt.block_on(kube.shutdown());
}

#[test]
fn a_real_cluster_when_one_is_configured() {
    let Ok(kubeconfig) = std::env::var("LABOPS_TEST_KUBECONFIG") else {
        eprintln!("SKIPPED: set LABOPS_TEST_KUBECONFIG to run labops' Kubernetes source against a real cluster");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("labops.toml");
    std::fs::write(
        &cfg,
        format!("[state]\ndata_dir = \"{}\"\n[kubernetes]\nkubeconfig = \"{kubeconfig}\"\n", dir.path().display()),
    )
    .unwrap();
    let out = labops().args(["--config", cfg.to_str().unwrap(), "status", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(source(&v, "kubernetes")["state"], "healthy", "{}", source(&v, "kubernetes"));
    assert!(v["counts"]["k8s_node"].as_u64().unwrap_or(0) >= 1);
}
