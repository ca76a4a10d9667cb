//! Human-readable output: tables and sentences for the terminal.

use std::fmt::Write as _;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, Color, ContentArrangement, Table};
use labops_core::inventory::{Effect, EntityKind};
use labops_core::resolve::ResolveError;
use labops_core::source::SourceState;
use labops_engine::service::{EntityList, Freshness, ImpactReport, ServiceError, Summary, WorkloadList};
use labops_engine::{Lab, Snapshot};

fn table(headers: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic).set_header(headers.to_vec());
    t
}

fn pct(x: Option<f64>) -> String {
    x.map(|v| format!("{:.0}%", v * 100.0)).unwrap_or_else(|| "-".into())
}

fn bytes(b: Option<u64>) -> String {
    match b {
        None => "-".into(),
        Some(b) if b >= 1 << 40 => format!("{:.1} TiB", b as f64 / (1u64 << 40) as f64),
        Some(b) if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        Some(b) => format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64),
    }
}

fn state_cell(s: &str) -> Cell {
    let color = match s {
        "running" | "online" | "Ready" | "healthy" | "available" | "Running" | "Active" => Color::Green,
        "stopped" | "declared" | "pending" | "scaled_to_zero" => Color::Yellow,
        _ => Color::Red,
    };
    Cell::new(s).fg(color)
}

fn freshness(out: &mut String, f: &Freshness) {
    if let Some(n) = &f.note {
        let _ = writeln!(out, "{} {n}", if f.demo { "\u{25b6}" } else { "!" });
    }
}

/// `labops status`.
pub fn status(lab: &Lab, s: &Summary) -> String {
    let mut out = String::new();
    if lab.is_demo() {
        let _ = writeln!(out, "=== DEMO LAB: simulated Proxmox cluster (fakepve), not a real lab ===\n");
    }
    let _ = writeln!(out, "Lab {}", s.lab);
    let mut t = table(&["source", "state", "age", "entities", "endpoint", "problems"]);
    for src in &s.freshness.sources {
        let state = match src.state {
            SourceState::Healthy => "healthy",
            SourceState::Degraded => "degraded",
            SourceState::Unavailable => "unavailable",
            SourceState::Pending => "pending",
        };
        let mut problems: Vec<String> = src.last_error.iter().cloned().collect();
        problems.extend(src.warnings.iter().cloned());
        t.add_row(vec![
            Cell::new(&src.name),
            state_cell(state),
            Cell::new(src.age_seconds.map(|a| format!("{a:.0}s")).unwrap_or_else(|| "never".into())),
            Cell::new(src.entities),
            Cell::new(&src.endpoint),
            Cell::new(problems.join("; ")),
        ]);
    }
    let _ = writeln!(out, "{t}");
    if !s.proxmox_nodes.is_empty() {
        let mut t = table(&["proxmox node", "status", "guests", "cpu", "memory"]);
        for n in &s.proxmox_nodes {
            t.add_row(vec![
                Cell::new(&n.name),
                state_cell(&n.status),
                Cell::new(format!("{}/{} running", n.guests_running, n.guests)),
                Cell::new(pct(n.cpu)),
                Cell::new(pct(n.memory)),
            ]);
        }
        let _ = writeln!(out, "{t}");
    }
    let snap = lab.snapshot();
    let guests: Vec<_> =
        snap.inventory.entities().iter().filter(|e| e.kind.is_guest()).collect();
    if !guests.is_empty() {
        let mut t = table(&["vmid", "guest", "type", "node", "status", "cpu", "memory", "disk"]);
        let mut guests = guests;
        guests.sort_by_key(|g| g.vmid);
        for g in guests {
            t.add_row(vec![
                Cell::new(g.vmid.map(|v| v.to_string()).unwrap_or_default()),
                Cell::new(&g.name),
                Cell::new(if g.kind == EntityKind::Vm { "vm" } else { "lxc" }),
                Cell::new(g.node.as_deref().unwrap_or("-")),
                state_cell(&g.status),
                Cell::new(pct(g.usage.cpu)),
                Cell::new(format!("{} / {}", bytes(g.usage.mem), bytes(g.usage.maxmem))),
                Cell::new(bytes(g.usage.maxdisk)),
            ]);
        }
        let _ = writeln!(out, "{t}");
    }
    if !s.k8s_nodes.is_empty() {
        let mut t = table(&["k8s node", "status", "hosted by", "pods"]);
        for n in &s.k8s_nodes {
            t.add_row(vec![
                Cell::new(&n.name),
                state_cell(&n.status),
                Cell::new(n.hosted_by.as_deref().unwrap_or("-")),
                Cell::new(n.pods),
            ]);
        }
        let _ = writeln!(out, "{t}");
    }
    let counts: Vec<String> = s.counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    if !counts.is_empty() {
        let _ = writeln!(out, "Totals: {}", counts.join(", "));
    }
    for w in &s.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    freshness(&mut out, &s.freshness);
    out
}

/// `labops inventory`.
pub fn inventory(lab: &Lab, snap: &Snapshot) -> String {
    let mut out = String::new();
    let mut t = table(&["id", "kind", "name", "node", "status"]);
    for e in snap.inventory.entities() {
        t.add_row(vec![
            Cell::new(&e.id),
            Cell::new(e.kind),
            Cell::new(e.qualified_name()),
            Cell::new(e.node.as_deref().unwrap_or("-")),
            state_cell(&e.status),
        ]);
    }
    let _ = writeln!(out, "{t}");
    let _ = writeln!(out, "{} entities, {} relations", snap.inventory.entities().len(), snap.inventory.relations().len());
    freshness(&mut out, &lab.freshness(snap));
    out
}

/// `labops list`.
pub fn entity_list(l: &EntityList) -> String {
    let mut out = String::new();
    let mut t = table(&["id", "kind", "name", "node", "status"]);
    for e in &l.entities {
        let name = match &e.namespace {
            Some(ns) => format!("{ns}/{}", e.name),
            None => e.name.clone(),
        };
        t.add_row(vec![
            Cell::new(&e.id),
            Cell::new(e.kind),
            Cell::new(name),
            Cell::new(e.node.as_deref().unwrap_or("-")),
            state_cell(&e.status),
        ]);
    }
    let _ = writeln!(out, "{t}");
    let _ = writeln!(out, "{} of {} shown", l.entities.len(), l.total);
    freshness(&mut out, &l.freshness);
    out
}

/// `labops impact`.
pub fn impact(r: &ImpactReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", r.summary);
    if !r.affected.is_empty() {
        let mut t = table(&["effect", "kind", "name", "via"]);
        for i in &r.affected {
            t.add_row(vec![
                match i.effect {
                    Effect::Down => Cell::new("down").fg(Color::Red),
                    Effect::Degraded => Cell::new("degraded").fg(Color::Yellow),
                },
                Cell::new(i.kind),
                Cell::new(&i.name),
                Cell::new(i.path.join(" -> ")),
            ]);
        }
        let _ = writeln!(out, "{t}");
    }
    freshness(&mut out, &r.freshness);
    out
}

/// `labops workloads`.
pub fn workloads(w: &WorkloadList) -> String {
    let mut out = String::new();
    let mut t = table(&["namespace", "workload", "kind", "ready", "pods on", "services"]);
    for l in &w.workloads {
        let mut nodes: Vec<&str> = l.pods.iter().filter_map(|p| p.node.as_deref()).collect();
        nodes.sort();
        nodes.dedup();
        t.add_row(vec![
            Cell::new(l.workload.namespace.as_deref().unwrap_or("-")),
            Cell::new(&l.workload.name),
            Cell::new(&l.workload_kind),
            state_cell(&l.workload.status).add_attribute(comfy_table::Attribute::Bold),
            Cell::new(nodes.join(", ")),
            Cell::new(l.services.join(", ")),
        ]);
    }
    let _ = writeln!(out, "{t}");
    freshness(&mut out, &w.freshness);
    out
}

/// A service error as a few readable lines.
pub fn service_error(e: &ServiceError) -> String {
    let mut out = format!("error: {e}");
    if let ServiceError::Resolve { error, .. } = e {
        match error {
            ResolveError::Unknown { nearest, reason, .. } => {
                let _ = write!(out, "\n  why: {reason}");
                if !nearest.is_empty() {
                    let _ = write!(out, "\n  did you mean:");
                    for c in nearest {
                        let _ = write!(out, "\n    {}\t{}\t{}", c.id, c.kind, c.name);
                    }
                }
            }
            ResolveError::Ambiguous { candidates, .. } => {
                let _ = write!(out, "\n  candidates:");
                for c in candidates {
                    let _ = write!(out, "\n    {}\t{}\t{}", c.id, c.kind, c.name);
                }
            }
            _ => {}
        }
    }
    out
}
