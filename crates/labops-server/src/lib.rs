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
///
/// The conversation runs on its own thread with a single-threaded event loop: a request is read,
/// answered and written without handing anything to another thread (on the multi-threaded
/// runtime every message woke an idle worker, and a tool call cost twice a ping). The lab's
/// refreshes and the audit writer stay on the caller's runtime; tasks a tool spawns (a workflow
/// it starts) run on this thread's loop.
pub async fn serve_stdio(
    lab: Lab,
    changes: Option<labops_engine::changes::Changes>,
    tasks: Option<labops_engine::tasks::Tasks>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let incidents = lab.store().cloned().map(labops_engine::alerting::Incidents::Stored);
    let service = mcp::LabMcp::new(lab, "mcp:stdio").with_changes(changes).with_tasks(tasks).with_incidents(incidents);
    let (done, finished) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("mcp-stdio".into()).spawn(move || {
        let outcome = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(async move {
                let running = service.serve(stdio()).await?;
                running.waiting().await?;
                Ok(())
            }),
            Err(e) => Err(e.into()),
        };
        let _ = done.send(outcome);
    })?;
    finished.await.unwrap_or_else(|_| Err("the MCP stdio thread ended without an answer".into()))
}

type Reader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
type Writer = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

/// stdin and stdout as the MCP transport. When they are pipes or sockets, as MCP clients start
/// servers (Python's subprocess gives pipes, Node's child_process socket pairs), they are read
/// and written through the runtime's event loop, in non-blocking mode, rather than tokio's
/// stdio, which hands every read and write to a blocking thread: two thread hand-offs less per
/// message. Anything else (a terminal, a file) goes through tokio's stdio.
fn stdio() -> (Reader, Writer) {
    use std::os::fd::{AsFd, OwnedFd};
    use std::os::unix::fs::FileTypeExt;
    use tokio::net::unix::pipe;
    fn socket(fd: OwnedFd) -> std::io::Result<tokio::net::UnixStream> {
        let file = std::fs::File::from(fd);
        if !file.metadata()?.file_type().is_socket() {
            return Err(std::io::Error::other("not a socket"));
        }
        let s = std::os::unix::net::UnixStream::from(OwnedFd::from(file));
        s.set_nonblocking(true)?;
        tokio::net::UnixStream::from_std(s)
    }
    let fd = |f: std::os::fd::BorrowedFd<'_>| f.try_clone_to_owned();
    let reader: Reader = if let Ok(r) = fd(std::io::stdin().as_fd()).map(std::fs::File::from).and_then(pipe::Receiver::from_file) {
        Box::new(r)
    } else if let Ok(s) = fd(std::io::stdin().as_fd()).and_then(socket) {
        Box::new(s)
    } else {
        Box::new(tokio::io::stdin())
    };
    let writer: Writer = if let Ok(w) = fd(std::io::stdout().as_fd()).map(std::fs::File::from).and_then(pipe::Sender::from_file) {
        Box::new(w)
    } else if let Ok(s) = fd(std::io::stdout().as_fd()).and_then(socket) {
        Box::new(s)
    } else {
        Box::new(tokio::io::stdout())
    };
    (reader, writer)
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
