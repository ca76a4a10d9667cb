//! Server-side latency of the read tools on a generated lab of 50 Proxmox nodes, 1,000 guests and
//! 5,000 pods: `resolve` and `list_entities` (and the rest, for reference), p50 and p99 per call.
//!
//!     cargo bench -p labops-engine --bench service
//!
//! Each measured call is the whole service function (snapshot, resolution, filtering, freshness),
//! exactly what an MCP tool or REST handler runs, without transport.

use std::time::Instant;

use labops_core::inventory::{ids, Entity, EntityKind, Part, Relation, RelationKind};
use labops_core::source::SourceStatus;
use labops_engine::service::{ListFilter, WorkloadFilter};
use labops_engine::Lab;

fn lab(nodes: usize, guests_per_node: usize, pods: usize) -> Lab {
    let mut pve = Part::default();
    let mut k8s = Part::default();
    let mut vmid = 100u32;
    let mut k8s_nodes = Vec::new();
    for n in 0..nodes {
        let node = format!("pve-{n:02}");
        pve.entities.push(Entity::new(EntityKind::ProxmoxNode, ids::proxmox_node(&node), &node, "online", "proxmox"));
        let mut st = Entity::new(EntityKind::Storage, ids::storage(&node, "local-zfs"), "local-zfs", "available", "proxmox");
        st.node = Some(node.clone());
        pve.relations.push(Relation::new(&st.id, RelationKind::RunsOn, ids::proxmox_node(&node)));
        pve.entities.push(st);
        for g in 0..guests_per_node {
            vmid += 1;
            let lxc = g % 4 == 3;
            let name = if g == 0 { format!("k3s-{node}") } else { format!("guest-{node}-{g:02}") };
            let (kind, id) = if lxc { (EntityKind::Lxc, ids::lxc(vmid)) } else { (EntityKind::Vm, ids::vm(vmid)) };
            let mut e = Entity::new(kind, &id, &name, if g % 5 == 4 { "stopped" } else { "running" }, "proxmox");
            e.vmid = Some(vmid);
            e.node = Some(node.clone());
            e.labels.insert(format!("tier{}", g % 3), String::new());
            pve.relations.push(Relation::new(&id, RelationKind::RunsOn, ids::proxmox_node(&node)));
            pve.relations.push(Relation::new(&id, RelationKind::UsesStorage, ids::storage(&node, "local-zfs")));
            pve.entities.push(e);
            if g == 0 {
                k8s.entities.push(Entity::new(EntityKind::K8sNode, ids::k8s_node(&name), &name, "Ready", "kubernetes"));
                k8s_nodes.push(name);
            }
        }
    }
    let namespaces = 20;
    for ns in 0..namespaces {
        let ns = format!("ns-{ns:02}");
        k8s.entities.push(Entity::new(EntityKind::Namespace, ids::namespace(&ns), &ns, "Active", "kubernetes"));
    }
    let per_workload = 10;
    for w in 0..pods / per_workload {
        let ns = format!("ns-{:02}", w % namespaces);
        let name = format!("app-{w:04}");
        let wid = ids::workload(&ns, "deployment", &name);
        let mut we = Entity::new(EntityKind::Workload, &wid, &name, "available", "kubernetes");
        we.namespace = Some(ns.clone());
        we.attributes.insert("workload_kind".into(), "Deployment".into());
        k8s.entities.push(we);
        let sid = ids::service(&ns, &name);
        let mut se = Entity::new(EntityKind::Service, &sid, &name, "Active", "kubernetes");
        se.namespace = Some(ns.clone());
        k8s.relations.push(Relation::new(&sid, RelationKind::RoutesTo, &wid));
        k8s.entities.push(se);
        for p in 0..per_workload {
            let pod = format!("{name}-{p}");
            let pid = ids::pod(&ns, &pod);
            let node = &k8s_nodes[(w * per_workload + p) % k8s_nodes.len()];
            let mut pe = Entity::new(EntityKind::Pod, &pid, &pod, "Running", "kubernetes");
            pe.namespace = Some(ns.clone());
            pe.node = Some(node.clone());
            k8s.relations.push(Relation::new(&pid, RelationKind::RunsOn, ids::k8s_node(node)));
            k8s.relations.push(Relation::new(&wid, RelationKind::Manages, &pid));
            k8s.entities.push(pe);
        }
    }
    let ok = |name: &str| {
        let mut s = SourceStatus::pending(name, "generated");
        s.last_success_ms = Some(labops_engine::lab::now_ms());
        s.last_attempt_ms = s.last_success_ms;
        s
    };
    Lab::from_parts("bench", vec![(ok("proxmox"), pve), (ok("kubernetes"), k8s)])
}

fn measure(name: &str, iterations: usize, mut f: impl FnMut(usize)) -> (f64, f64) {
    for i in 0..iterations / 10 {
        f(i);
    }
    let mut t: Vec<f64> = (0..iterations)
        .map(|i| {
            let s = Instant::now();
            f(i);
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    let p = |q: f64| t[((t.len() as f64 * q) as usize).min(t.len() - 1)];
    println!("{name:<44} p50 {:>8.4} ms   p99 {:>8.4} ms   ({iterations} calls)", p(0.5), p(0.99));
    (p(0.5), p(0.99))
}

fn main() {
    let build = Instant::now();
    let lab = lab(50, 20, 5000);
    let snap = lab.snapshot();
    println!(
        "generated lab: {} entities, {} relations (built in {:.1} ms)",
        snap.inventory.entities().len(),
        snap.inventory.relations().len(),
        build.elapsed().as_secs_f64() * 1e3
    );
    let counts = snap.inventory.counts();
    assert_eq!(counts[&EntityKind::Pod], 5000);
    assert_eq!(counts[&EntityKind::Vm] + counts[&EntityKind::Lxc], 1000);
    let names: Vec<String> = snap.inventory.entities().iter().map(|e| e.qualified_name()).collect();
    let vmids: Vec<String> = (101..1101).map(|v| v.to_string()).collect();
    let n = 20_000;

    let mut worst_p50: f64 = 0.0;
    let mut worst_p99: f64 = 0.0;
    let mut record = |(p50, p99): (f64, f64)| {
        worst_p50 = worst_p50.max(p50);
        worst_p99 = worst_p99.max(p99);
    };
    record(measure("resolve: qualified names (all kinds)", n, |i| {
        let _ = lab.resolve(&names[i % names.len()], None);
    }));
    record(measure("resolve: VMIDs", n, |i| {
        lab.resolve(&vmids[i % vmids.len()], None).unwrap();
    }));
    record(measure("resolve: unknown names (nearest-name search)", 2_000, |i| {
        let _ = lab.resolve(&format!("gust-pve-{:02}-0{}", i % 50, i % 9), None).unwrap_err();
    }));
    record(measure("list_entities kind=vm (750 VMs)", 2_000, |_| {
        let l = lab.list_entities(&ListFilter { kind: Some(EntityKind::Vm), ..Default::default() }).unwrap();
        assert_eq!(l.total, 750);
    }));
    record(measure("list_entities node=pve-07 (guests, storage, k8s node, pods)", 2_000, |_| {
        let l = lab.list_entities(&ListFilter { node: Some("pve-07".into()), ..Default::default() }).unwrap();
        assert_eq!(l.total, 122);
    }));
    record(measure("list_entities status=stopped label=tier1", 2_000, |_| {
        lab.list_entities(&ListFilter { status: Some("stopped".into()), label: Some("tier1".into()), ..Default::default() })
            .unwrap();
    }));
    measure("list_entities (no filter: first 1,000)", 2_000, |_| {
        lab.list_entities(&ListFilter::default()).unwrap();
    });
    measure("get_entity vm", n, |i| {
        lab.get_entity(&vmids[i % vmids.len()]).unwrap();
    });
    measure("impact_of proxmox node", 2_000, |i| {
        lab.impact_of(&format!("pve-{:02}", i % 50)).unwrap();
    });
    measure("k8s_workloads namespace=ns-03", 2_000, |_| {
        lab.k8s_workloads(&WorkloadFilter { namespace: Some("ns-03".into()), node: None }).unwrap();
    });
    measure("inventory_summary", 500, |_| {
        lab.inventory_summary();
    });
    println!(
        "\nresolve + list_entities: worst p50 {worst_p50:.4} ms (target < 1 ms), worst p99 {worst_p99:.4} ms (target < 5 ms): {}",
        if worst_p50 < 1.0 && worst_p99 < 5.0 { "MET" } else { "NOT MET" }
    );
}
