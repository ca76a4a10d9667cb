//! labops transports: the only crate that knows MCP, HTTP and their wire formats.
//!
//! - [`mcp`]: the MCP server (tools, the `labops://inventory` resource, prompts), usable over
//!   stdio ([`serve_stdio`]) and Streamable HTTP.
//! - [`http`]: the axum application: `/mcp`, the REST API under `/api/v1`, `/healthz`, with the
//!   Host check, bearer token and body limit in front of everything.
//! - [`tasks`]: the task processor's toolbox (the MCP server's own read-only tools), the MCP
//!   client's model through sampling, and the task view `process_task` returns.
//!
//! - [`alerts`]: alert intake (Alertmanager, Grafana, Uptime Kuma, generic, and Alertmanager's
//!   push API), its token/HMAC check, and the incident and silence routes.
//!
//! Handlers hold no logic: each calls one `labops_engine::service` function.

pub mod alerts;
pub mod http;
pub mod mcp;
pub mod tasks;

use labops_engine::Lab;
use rmcp::ServiceExt;

/// Serves MCP over stdin/stdout until the client disconnects. Nothing else may write to stdout.
pub async fn serve_stdio(
    lab: Lab,
    changes: Option<labops_engine::changes::Changes>,
    tasks: Option<labops_engine::tasks::Tasks>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let incidents = lab.store().cloned().map(labops_engine::alerting::Incidents::Stored);
    let service = mcp::LabMcp::new(lab, "mcp:stdio")
        .with_changes(changes)
        .with_tasks(tasks)
        .with_incidents(incidents)
        .serve(rmcp::transport::stdio())
        .await?;
    service.waiting().await?;
    Ok(())
}

use labops_aiops::desk::{AlertRecord, Event, Incident};

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()).unwrap_or_default()
}

/// An incident as REST, MCP and `labops incidents --json` show it in a list.
pub fn incident_json(i: &Incident, alerts: i64) -> serde_json::Value {
    serde_json::json!({
        "id": i.id,
        "title": i.title,
        "severity": i.severity,
        "state": i.state.as_str(),
        "root": i.root,
        "opened": time(i.opened_ms),
        "updated": time(i.updated_ms),
        "acknowledged": i.acked.as_ref().map(|(t, by)| serde_json::json!({"at": time(*t), "by": by})),
        "resolved": i.resolved.as_ref().map(|(t, by)| serde_json::json!({"at": time(*t), "by": by})),
        "merged_into": i.merged_into,
        "notified": i.notified_ms.map(time),
        "escalation": i.escalation,
        "alerts": alerts,
        "repeats": i.repeats,
        "suspected_causes": i.causes,
    })
}

/// One incident with its alerts and timeline. Alert text (annotations) is the sender's: it is
/// marked as data.
pub fn incident_detail_json((i, alerts, events): &(Incident, Vec<AlertRecord>, Vec<Event>)) -> serde_json::Value {
    let mut v = incident_json(i, alerts.len() as i64);
    v["alert_list"] = alerts
        .iter()
        .map(|a| {
            serde_json::json!({
                "fingerprint": a.alert.fingerprint,
                "name": a.alert.name(),
                "status": a.alert.status,
                "severity": a.alert.severity(),
                "source": a.alert.source,
                "entity": a.entity,
                "received": a.received,
                "first_seen": time(a.first_seen_ms),
                "last_seen": time(a.last_seen_ms),
                "suppressed": a.suppressed,
                "labels": a.alert.labels,
                "sender_text": a.alert.annotations,
            })
        })
        .collect();
    v["timeline"] = events.iter().map(|e| serde_json::json!({"at": time(e.at_ms), "event": e.kind, "detail": e.detail})).collect();
    // What labops proposes to do about it: runbook fixes (a change awaiting approval, or run under
    // a standing approval) and those withheld, with why.
    v["proposed_actions"] = events
        .iter()
        .filter(|e| e.kind.starts_with("remedy_"))
        .map(|e| {
            serde_json::json!({
                "at": time(e.at_ms),
                "outcome": e.kind.trim_start_matches("remedy_"),
                "runbook": e.detail.get("runbook"),
                "target": e.detail.get("target"),
                "change": e.detail.get("change"),
                "why": e.detail.get("why"),
            })
        })
        .collect();
    v
}
