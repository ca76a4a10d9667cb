//! The HTTP side: MCP over Streamable HTTP at `/mcp` and the REST API under `/api/v1`.
//!
//! Every request passes, in order: the Host check (403 for a host not in the allow list, which
//! stops DNS rebinding), the bearer token (401), and the body size limit (413). Only `/healthz`
//! answers without a token, and it says nothing about the lab.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use labops_core::inventory::EntityKind;
use labops_core::resolve::ResolveError;
use labops_engine::service::{ListFilter, ServiceError, WorkloadFilter};
use labops_engine::changes::{ChangeFail, Changes};
use labops_engine::Lab;
use labops_store::Store;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde::Deserialize;
use tower_http::limit::RequestBodyLimitLayer;

use crate::mcp::LabMcp;

/// HTTP server settings.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Bearer token every request must carry.
    pub token: String,
    /// Host names (or `host:port`) accepted in the Host header, besides loopback names.
    pub allowed_hosts: Vec<String>,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// People who may approve changes over REST: (name, token). Their token also passes the
    /// guard; the server token never approves.
    pub approvers: Vec<(String, String)>,
    /// The change service, for the change tools and `/api/v1/changes`.
    pub changes: Option<Changes>,
    /// The task service, for `process_task` (absent: no model is configured).
    pub tasks: Option<labops_engine::tasks::Tasks>,
    /// The alerting service and how alert senders authenticate (absent: no state database).
    pub alerting: Option<(labops_engine::alerting::Alerting, crate::alerts::IntakeAuth)>,
}

/// Loopback names always accepted in the Host header.
pub const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

#[derive(Clone)]
struct Guard {
    token: Arc<str>,
    approvers: Arc<Vec<(String, String)>>,
    allowed_hosts: Arc<Vec<String>>,
}

/// Who made a request, by the token presented: a client with the server token, or a person
/// with their approver token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The server token: MCP clients, the dashboard, scripts.
    Client,
    /// An approver, by name.
    Approver(String),
}

fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// Host without the port; IPv6 brackets removed.
fn host_only(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    }
}

fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let h = host_only(host).to_ascii_lowercase();
    LOOPBACK_HOSTS.contains(&h.as_str())
        || allowed.iter().any(|a| {
            let a = a.to_ascii_lowercase();
            a == h || a == host.to_ascii_lowercase()
        })
}

/// Compares without leaking where the first difference is.
fn same_token(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn guard(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    match host {
        Some(h) if host_allowed(&h, &g.allowed_hosts) => {}
        Some(h) => {
            tracing::warn!(host = %h, path = %req.uri().path(), "refused a request for a host not in [server] allowed_hosts");
            return json_error(
                StatusCode::FORBIDDEN,
                format!("host {h:?} is not allowed; add it to [server] allowed_hosts if this server is meant to be reached by that name"),
            );
        }
        None => return json_error(StatusCode::FORBIDDEN, "a Host header is required"),
    }
    if req.uri().path() == "/healthz" || (req.method() == axum::http::Method::POST && crate::alerts::is_intake_path(req.uri().path())) {
        // Alert senders authenticate in the intake handler, which sees the body an HMAC covers.
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    let caller = presented.and_then(|t| {
        let t = t.trim().as_bytes();
        if same_token(t, g.token.as_bytes()) {
            return Some(Caller::Client);
        }
        g.approvers.iter().find(|(_, tok)| same_token(t, tok.as_bytes())).map(|(name, _)| Caller::Approver(name.clone()))
    });
    match caller {
        Some(c) => {
            let mut req = req;
            req.extensions_mut().insert(c);
            next.run(req).await
        }
        None => {
            let mut r = json_error(
                StatusCode::UNAUTHORIZED,
                "a bearer token is required: send `Authorization: Bearer <token>` with the token from [server] token or token_file",
            );
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"labops\""));
            r
        }
    }
}

fn service_error(e: ServiceError) -> Response {
    let status = match &e {
        ServiceError::Resolve { error: ResolveError::Unknown { .. }, .. } => StatusCode::NOT_FOUND,
        ServiceError::Resolve { error: ResolveError::Ambiguous { .. }, .. } => StatusCode::CONFLICT,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut body = serde_json::to_value(&e).unwrap_or_default();
    body["message"] = serde_json::Value::String(e.to_string());
    (status, Json(body)).into_response()
}

fn reply<T: serde::Serialize>(r: Result<T, ServiceError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => service_error(e),
    }
}

#[derive(Deserialize)]
struct KindQuery {
    kind: Option<EntityKind>,
}

/// The whole HTTP application: `/mcp`, `/api/v1/...`, `/healthz`.
pub fn router(lab: Lab, opts: &HttpOptions) -> Router {
    let mut hosts: Vec<String> = LOOPBACK_HOSTS.iter().map(|s| s.to_string()).collect();
    hosts.extend(opts.allowed_hosts.iter().cloned());
    let mcp_lab = lab.clone();
    let mcp_changes = opts.changes.clone();
    let mcp_tasks = opts.tasks.clone();
    let mcp_incidents = opts.alerting.as_ref().map(|(a, _)| labops_engine::alerting::Incidents::Live(a.clone()));
    let mcp = StreamableHttpService::new(
        move || {
            Ok(LabMcp::new(mcp_lab.clone(), "mcp:http")
                .with_changes(mcp_changes.clone())
                .with_tasks(mcp_tasks.clone())
                .with_incidents(mcp_incidents.clone()))
        },
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default()
            .with_allowed_hosts(hosts.clone())
            .with_sse_keep_alive(Some(Duration::from_secs(15)))
            .with_max_request_body_bytes(opts.max_body_bytes),
    );
    let api = Router::new()
        .route("/summary", get(|State(l): State<Lab>| async move { Json(l.inventory_summary()) }))
        .route(
            "/entities",
            get(|State(l): State<Lab>, Query(f): Query<ListFilter>| async move { reply(l.list_entities(&f)) }),
        )
        .route(
            "/entities/{*name}",
            get(|State(l): State<Lab>, Path(n): Path<String>| async move { reply(l.get_entity(&n)) }),
        )
        .route(
            "/resolve/{*name}",
            get(|State(l): State<Lab>, Path(n): Path<String>, Query(k): Query<KindQuery>| async move {
                reply(l.resolve(&n, k.kind))
            }),
        )
        .route("/nodes/{*name}", get(|State(l): State<Lab>, Path(n): Path<String>| async move { reply(l.node_status(&n)) }))
        .route("/guests/{*name}", get(|State(l): State<Lab>, Path(n): Path<String>| async move { reply(l.guest_status(&n)) }))
        .route("/impact/{*name}", get(|State(l): State<Lab>, Path(n): Path<String>| async move { reply(l.impact_of(&n)) }))
        .route(
            "/workloads",
            get(|State(l): State<Lab>, Query(f): Query<WorkloadFilter>| async move { reply(l.k8s_workloads(&f)) }),
        )
        .route(
            "/inventory",
            get(|State(l): State<Lab>| async move {
                let snap = l.snapshot();
                Json(serde_json::json!({
                    "lab": l.name(),
                    "entities": snap.inventory.entities(),
                    "relations": snap.inventory.relations(),
                    "freshness": l.freshness(&snap),
                }))
            }),
        )
        .with_state(lab.clone());
    let api = match lab.store() {
        Some(store) => api.merge(runs_api(store.clone())),
        None => api,
    };
    let api = match &opts.changes {
        Some(c) => api.merge(changes_api(c.clone())),
        None => api,
    };
    let api = match &opts.alerting {
        Some((a, _)) => api.merge(crate::alerts::incidents_router(a.clone(), lab.clone())),
        None => api,
    };
    let intake = match &opts.alerting {
        Some((a, auth)) => crate::alerts::intake_router(a.clone(), auth.clone()),
        None => Router::new(),
    };
    let guard_state = Guard {
        token: Arc::from(opts.token.as_str()),
        approvers: Arc::new(opts.approvers.clone()),
        allowed_hosts: Arc::new(opts.allowed_hosts.clone()),
    };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(intake)
        .nest("/api/v1", api)
        .nest_service("/mcp", mcp)
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "no such endpoint; see /api/v1/summary or /mcp") })
        .layer(RequestBodyLimitLayer::new(opts.max_body_bytes))
        .layer(middleware::from_fn_with_state(guard_state, guard))
        .layer(middleware::map_response(close_after_refused_body))
}

/// A 413 is sent before the body is read, so the rest of that body is still on the connection
/// and the server closes it. Saying so (`Connection: close`) keeps a client from sending its next
/// request on that connection, which would fail half-way (a pooled client raced the close).
async fn close_after_refused_body(mut r: Response) -> Response {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// `/api/v1/runs`, `/api/v1/runs/{id}` and the progress stream `/api/v1/runs/{id}/events`
/// (server-sent events, one per run event, resumable with `Last-Event-ID` or `?after=SEQ`; the
/// stream ends after the run ends).
fn runs_api(store: Store) -> Router {
    Router::new()
        .route(
            "/runs",
            get(|State(s): State<Store>, Query(q): Query<RunsQuery>| async move {
                match s.runs(!q.all.unwrap_or(false), 500).await {
                    Ok(r) => Json(r).into_response(),
                    Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                }
            }),
        )
        .route("/runs/{id}", get(run_status))
        .route("/runs/{id}/events", get(run_events))
        .with_state(store)
}

#[derive(Deserialize)]
struct RunsQuery {
    all: Option<bool>,
}

#[derive(Deserialize)]
struct EventsQuery {
    after: Option<i64>,
}

/// The run number in a path, or the 400 that says what a run number looks like.
fn run_number(id: &str) -> Result<i64, Box<Response>> {
    id.trim_start_matches("run-")
        .parse()
        .map_err(|_| Box::new(json_error(StatusCode::BAD_REQUEST, format!("{id:?} is not a run number; GET /api/v1/runs lists them"))))
}

async fn run_status(State(s): State<Store>, Path(id): Path<String>) -> Response {
    let id = match run_number(&id) {
        Ok(i) => i,
        Err(r) => return *r,
    };
    let found = async {
        let Some(run) = s.run(id).await? else { return Ok(None) };
        Ok::<_, labops_store::Error>(Some(serde_json::json!({
            "run": run,
            "steps": s.run_steps(id).await?,
            "locks": s.run_locks(id).await?,
        })))
    };
    match found.await {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => json_error(StatusCode::NOT_FOUND, format!("there is no run {id}; GET /api/v1/runs lists them")),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn run_events(State(s): State<Store>, Path(id): Path<String>, Query(q): Query<EventsQuery>, headers: axum::http::HeaderMap) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let id = match run_number(&id) {
        Ok(i) => i,
        Err(r) => return *r,
    };
    match s.run(id).await {
        Ok(Some(_)) => {}
        Ok(None) => return json_error(StatusCode::NOT_FOUND, format!("there is no run {id}; GET /api/v1/runs lists them")),
        Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i64>().ok());
    let after = resume.or(q.after).unwrap_or(0);
    // Poll the store: events may come from any labops process driving the run.
    let stream = futures::stream::unfold((s, after, false), move |(s, after, done)| async move {
        if done {
            return None;
        }
        loop {
            let events = match s.run_events(id, after, 200).await {
                Ok(e) => e,
                Err(e) => {
                    let ev = Event::default().event("error").data(e.to_string());
                    return Some((futures::stream::iter(vec![Ok::<_, std::convert::Infallible>(ev)]), (s, after, true)));
                }
            };
            if !events.is_empty() {
                let last = events.last().map(|e| e.seq).unwrap_or(after);
                let out: Vec<_> = events
                    .iter()
                    .map(|e| {
                        Ok(Event::default().id(e.seq.to_string()).event(e.kind.clone()).json_data(e).unwrap_or_else(|_| Event::default()))
                    })
                    .collect();
                return Some((futures::stream::iter(out), (s, last, false)));
            }
            let ended = s.run(id).await.ok().flatten().is_none_or(|r| labops_store::runs::TERMINAL.contains(&r.state.as_str()));
            if ended {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    use futures::StreamExt as _;
    Sse::new(stream.flatten()).keep_alive(KeepAlive::default()).into_response()
}

/// `/api/v1/changes` (list; `?all=true` for finished ones), `/api/v1/changes/{id}`, and the
/// human acts `POST /api/v1/changes/{id}/approve` (`{"plan_digest": "sha256:..."}`, the plan the
/// approver was shown) and `POST /api/v1/changes/{id}/reject` (`{"reason": "..."}`). The acts
/// need an approver token (`[server] approvers`): the server token, which MCP clients and models
/// hold, is refused with 403, and the refusal is audited.
fn changes_api(changes: Changes) -> Router {
    Router::new()
        .route(
            "/changes",
            get(|State(c): State<Changes>, Query(q): Query<RunsQuery>| async move {
                match c.list(!q.all.unwrap_or(false), 500).await {
                    Ok(l) => Json(l).into_response(),
                    Err(e) => change_error(e),
                }
            }),
        )
        .route(
            "/changes/{id}",
            get(|State(c): State<Changes>, Path(id): Path<String>| async move {
                match c.get(&id).await {
                    Ok(r) => Json(r).into_response(),
                    Err(e) => change_error(e),
                }
            }),
        )
        .route("/changes/{id}/approve", axum::routing::post(approve_change))
        .route("/changes/{id}/reject", axum::routing::post(reject_change))
        .with_state(changes)
}

fn change_error(e: ChangeFail) -> Response {
    let status = match &e {
        ChangeFail::NotFound(_) => StatusCode::NOT_FOUND,
        ChangeFail::Refused(_) | ChangeFail::Lifecycle(_) => StatusCode::CONFLICT,
        ChangeFail::Invalid(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json_error(status, e.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    plan_digest: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RejectBody {
    reason: String,
}

/// The approver's name, or the 403 (audited) for a caller who is not one.
async fn approver(c: &Changes, caller: &Caller, action: &str, id: &str) -> Result<String, Response> {
    match caller {
        Caller::Approver(name) => Ok(name.clone()),
        Caller::Client => {
            let why = "approving or rejecting a change needs an approver token ([server] approvers): the server token belongs to clients and models, which cannot approve".to_string();
            let _ = c.refuse("rest:client", action, id, why.clone()).await;
            Err(json_error(StatusCode::FORBIDDEN, why))
        }
    }
}

/// The JSON body, or why it is not valid (answered with 400).
fn json_body<T: serde::de::DeserializeOwned>(body: &axum::body::Bytes, example: &str) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("the body is not valid: {e}; send {example}"))
}

async fn approve_change(State(c): State<Changes>, axum::Extension(caller): axum::Extension<Caller>, Path(id): Path<String>, body: axum::body::Bytes) -> Response {
    let name = match approver(&c, &caller, "change_approve", &id).await {
        Ok(n) => n,
        Err(r) => return r,
    };
    let b: ApproveBody = match json_body(&body, r#"{"plan_digest": "sha256:..."} (the digest of the plan you were shown)"#) {
        Ok(b) => b,
        Err(why) => return json_error(StatusCode::BAD_REQUEST, why),
    };
    match c.approve(&id, &name, &b.plan_digest, "rest").await {
        Ok(rec) => {
            let (bg, cid) = (c.clone(), rec.change.id.clone());
            tokio::spawn(async move {
                if let Err(e) = bg.advance(&cid).await {
                    tracing::warn!(change = %cid, "{e}");
                }
            });
            (StatusCode::ACCEPTED, Json(rec)).into_response()
        }
        Err(e) => change_error(e),
    }
}

async fn reject_change(State(c): State<Changes>, axum::Extension(caller): axum::Extension<Caller>, Path(id): Path<String>, body: axum::body::Bytes) -> Response {
    let name = match approver(&c, &caller, "change_reject", &id).await {
        Ok(n) => n,
        Err(r) => return r,
    };
    let b: RejectBody = match json_body(&body, r#"{"reason": "why not"}"#) {
        Ok(b) => b,
        Err(why) => return json_error(StatusCode::BAD_REQUEST, why),
    };
    match c.reject(&id, &name, &b.reason, "rest").await {
        Ok(rec) => Json(rec).into_response(),
        Err(e) => change_error(e),
    }
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    lab: Lab,
    opts: HttpOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(opts.listen).await?;
    let app = router(lab, &opts);
    tracing::info!(listen = %listener.local_addr()?, "labops is serving MCP at /mcp and REST at /api/v1");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_checked_without_ports() {
        let allowed = vec!["labops.homelab".to_string()];
        assert!(host_allowed("127.0.0.1:8080", &allowed));
        assert!(host_allowed("[::1]:8080", &allowed));
        assert!(host_allowed("LabOps.homelab:443", &allowed));
        assert!(!host_allowed("evil.example:8080", &allowed));
        assert!(!host_allowed("127.0.0.1.evil.example", &allowed));
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(same_token(b"abc", b"abc"));
        assert!(!same_token(b"abc", b"abd"));
        assert!(!same_token(b"abc", b"abcd"));
    }
}
