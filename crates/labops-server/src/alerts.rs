//! Alert intake and incidents over HTTP.
//!
//! Intake (POST, answered only after the alerts are stored):
//! `/api/v1/alerts/alertmanager` (Alertmanager's webhook, version 4), `/api/v1/alerts/grafana`
//! (Grafana's webhook contact point), `/api/v1/alerts/uptime-kuma`, `/api/v1/alerts/generic`,
//! and `/api/v2/alerts` (Alertmanager's own push API, so a Prometheus can send its alerts
//! straight to labops). A sender proves itself with a bearer token (the server's, or
//! `[alerts] token` for senders that should do nothing else) or, as Grafana signs, with an HMAC:
//! `X-Grafana-Alerting-Signature` = hex HMAC-SHA256 of the body (of `timestamp:body` when a
//! timestamp header is configured; the timestamp must then be within five minutes).
//!
//! Answers: 200 with what was accepted; 400 naming the field that is wrong; 401 without valid
//! credentials; 413 over the size limit; 503 when the alerts could not be stored (nothing was
//! acknowledged, the sender retries).
//!
//! Incidents (bearer token): `GET /api/v1/incidents[?all=true]`, `GET /api/v1/incidents/{id}`,
//! `POST /api/v1/incidents/{id}/ack|resolve` (`{"by": "name"}`), `GET|POST /api/v1/silences`,
//! `GET /api/v1/learning` (per alert name: how often it was noise, whether it is quiet; per
//! runbook: how its fixes did).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use labops_aiops::desk::{Matcher, Silence};
use labops_aiops::intake::{self, Alert, IntakeError};
use labops_engine::alerting::{Alerting, AlertingError};
use labops_store::alerting::Which;
use serde::Deserialize;

/// How alert senders authenticate.
#[derive(Clone, Default)]
pub struct IntakeAuth {
    /// Bearer tokens accepted (the server's, and `[alerts] token`).
    pub tokens: Vec<String>,
    /// Grafana-style HMAC: secret, signature header, optional timestamp header.
    pub hmac: Option<(String, String, Option<String>)>,
}

impl std::fmt::Debug for IntakeAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntakeAuth").field("tokens", &self.tokens.len()).field("hmac", &self.hmac.is_some()).finish()
    }
}

/// True for the paths senders post alerts to (they authenticate in the handler, which can see
/// the body an HMAC covers).
pub fn is_intake_path(path: &str) -> bool {
    path == "/api/v2/alerts" || path.starts_with("/api/v1/alerts/")
}

#[derive(Clone)]
struct Intake {
    alerting: Alerting,
    auth: Arc<IntakeAuth>,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({"error": message.into()}))).into_response()
}

fn eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl IntakeAuth {
    /// Checks a request's credentials; the error says what to send.
    fn check(&self, headers: &HeaderMap, body: &[u8], now_s: i64) -> Result<(), String> {
        if let Some(t) = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        {
            if self.tokens.iter().any(|k| eq(t.trim().as_bytes(), k.as_bytes())) {
                return Ok(());
            }
            return Err("the bearer token is not valid for alert intake".into());
        }
        if let Some((secret, header, ts_header)) = &self.hmac {
            if let Some(sig) = headers.get(header.as_str()).and_then(|v| v.to_str().ok()) {
                let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).map_err(|e| e.to_string())?;
                if let Some(th) = ts_header {
                    let ts = headers.get(th.as_str()).and_then(|v| v.to_str().ok()).ok_or_else(|| format!("the {th} header is missing"))?;
                    let secs: i64 = ts.trim().parse().map_err(|_| format!("{th}: {ts:?} is not Unix seconds"))?;
                    if (now_s - secs).abs() > 300 {
                        return Err(format!("{th} is more than five minutes from now; check the sender's clock"));
                    }
                    mac.update(ts.trim().as_bytes());
                    mac.update(b":");
                }
                mac.update(body);
                let want = hex(&mac.finalize().into_bytes());
                let got = sig.trim().to_ascii_lowercase();
                let got = got.strip_prefix("sha256=").unwrap_or(&got);
                return if eq(want.as_bytes(), got.as_bytes()) { Ok(()) } else { Err(format!("the {header} signature does not match the body")) };
            }
        }
        Err(match &self.hmac {
            Some((_, header, _)) => format!("send `Authorization: Bearer <token>` ([server] token or [alerts] token) or sign the body in {header}"),
            None => "send `Authorization: Bearer <token>` with [server] token or [alerts] token".into(),
        })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn take(i: &Intake, headers: &HeaderMap, body: &Bytes, parse: fn(&[u8]) -> Result<Vec<Alert>, IntakeError>, push_api: bool) -> Response {
    let now = labops_engine::lab::now_ms();
    if let Err(why) = i.auth.check(headers, body, now / 1000) {
        let mut r = error(StatusCode::UNAUTHORIZED, why);
        r.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer realm=\"labops\""));
        return r;
    }
    let mut alerts = match parse(body) {
        Ok(a) => a,
        Err(e) => return (StatusCode::BAD_REQUEST, Json(serde_json::json!({"error": e.to_string(), "path": e.path}))).into_response(),
    };
    if push_api {
        intake::resolve_by_time(&mut alerts, now);
    }
    match i.alerting.ingest(alerts).await {
        Ok(a) if push_api => (StatusCode::OK, Json(serde_json::json!({"accepted": a.accepted}))).into_response(),
        Ok(a) => Json(a).into_response(),
        Err(e @ (AlertingError::Store(_) | AlertingError::Stopped)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// The intake routes (to be merged at the root: they span `/api/v1` and `/api/v2`).
pub fn intake_router(alerting: Alerting, auth: IntakeAuth) -> Router {
    let state = Intake { alerting, auth: Arc::new(auth) };
    Router::new()
        .route("/api/v1/alerts/alertmanager", post(|State(i): State<Intake>, h: HeaderMap, b: Bytes| async move { take(&i, &h, &b, intake::alertmanager, false).await }))
        .route("/api/v1/alerts/grafana", post(|State(i): State<Intake>, h: HeaderMap, b: Bytes| async move { take(&i, &h, &b, intake::grafana, false).await }))
        .route("/api/v1/alerts/uptime-kuma", post(|State(i): State<Intake>, h: HeaderMap, b: Bytes| async move { take(&i, &h, &b, intake::uptime_kuma, false).await }))
        .route("/api/v1/alerts/generic", post(|State(i): State<Intake>, h: HeaderMap, b: Bytes| async move { take(&i, &h, &b, intake::generic, false).await }))
        .route("/api/v2/alerts", post(|State(i): State<Intake>, h: HeaderMap, b: Bytes| async move { take(&i, &h, &b, intake::prometheus_push, true).await }))
        .with_state(state)
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    all: bool,
    #[serde(default)]
    limit: Option<u32>,
}

#[derive(Deserialize, Default)]
struct ByBody {
    #[serde(default)]
    by: Option<String>,
}

/// A silence as posted: `{"matchers": ["alertname=HighCPU"], "entity": "pve2", "minutes": 60,
/// "by": "alice", "comment": "..."}`.
#[derive(Deserialize)]
struct SilenceBody {
    #[serde(default)]
    matchers: Vec<String>,
    #[serde(default)]
    entity: Option<String>,
    minutes: u32,
    by: String,
    #[serde(default)]
    comment: String,
}

/// Builds a silence from people's words: matchers parsed, the maintenance entity resolved
/// against the inventory, the length bounded.
pub fn build_silence(lab: Option<&labops_engine::Lab>, matchers: &[String], entity: Option<&str>, minutes: u32, by: &str, comment: &str) -> Result<Silence, String> {
    if by.trim().is_empty() || by.len() > 100 {
        return Err("`by` must name the person silencing (1 to 100 characters)".into());
    }
    if comment.len() > 2000 || matchers.len() > 20 {
        return Err("a silence takes at most 20 matchers and a comment of at most 2000 characters".into());
    }
    if !(1..=60 * 24 * 30).contains(&minutes) {
        return Err(format!("{minutes} minutes: a silence lasts 1 minute to 30 days"));
    }
    let matchers = matchers.iter().map(|m| Matcher::parse(m)).collect::<Result<Vec<_>, _>>()?;
    let entity = match entity {
        Some(name) => {
            let lab = lab.ok_or("a maintenance window needs the inventory to resolve the entity")?;
            let snap = lab.snapshot();
            let e = snap.inventory.resolve(name, &[]).map_err(|e| e.to_string())?;
            Some(e.id.clone())
        }
        None => None,
    };
    if matchers.is_empty() && entity.is_none() {
        return Err("give at least one matcher (alertname=HighCPU) or an entity under maintenance".into());
    }
    let now = labops_engine::lab::now_ms();
    Ok(Silence { id: 0, matchers, entity, starts_ms: now, ends_ms: now + minutes as i64 * 60_000, created_by: by.to_string(), comment: comment.to_string() })
}

/// `/incidents` and `/silences`, under `/api/v1`.
pub fn incidents_router(alerting: Alerting, lab: labops_engine::Lab) -> Router {
    Router::new()
        .route(
            "/incidents",
            get(|State((a, _)): State<(Alerting, labops_engine::Lab)>, Query(q): Query<ListQuery>| async move {
                let which = if q.all { Which::All } else { Which::Active };
                match a.store().incidents(which, q.limit.unwrap_or(200).min(1000)).await {
                    Ok(list) => Json(list.into_iter().map(|(i, n)| crate::incident_json(&i, n)).collect::<Vec<_>>()).into_response(),
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                }
            }),
        )
        .route(
            "/incidents/{id}",
            get(|State((a, _)): State<(Alerting, labops_engine::Lab)>, Path(id): Path<i64>| async move {
                match a.store().incident(id).await {
                    Ok(Some(detail)) => Json(crate::incident_detail_json(&detail)).into_response(),
                    Ok(None) => error(StatusCode::NOT_FOUND, format!("no incident #{id}; GET /api/v1/incidents lists them")),
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                }
            }),
        )
        .route(
            "/learning",
            get(|State((a, _)): State<(Alerting, labops_engine::Lab)>| async move {
                let now = labops_engine::lab::now_ms();
                let since = now - labops_engine::alerting::LEARN_DAYS * 86_400_000;
                let (rules, runbooks) = match (a.store().rule_stats(since, labops_engine::alerting::NOISE_MS).await, a.store().runbook_stats(since).await) {
                    (Ok(r), Ok(b)) => (r, b),
                    (Err(e), _) | (_, Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                };
                let quiet = labops_engine::alerting::learned(&rules);
                Json(serde_json::json!({
                    "rules": rules.iter().map(|r| serde_json::json!({"stats": r, "quiet": quiet.get(&r.name)})).collect::<Vec<_>>(),
                    "runbooks": runbooks,
                }))
                .into_response()
            }),
        )
        .route("/incidents/{id}/ack", post(|s: State<(Alerting, labops_engine::Lab)>, p: Path<i64>, b: Bytes| async move { decide(s, p, b, true).await }))
        .route("/incidents/{id}/resolve", post(|s: State<(Alerting, labops_engine::Lab)>, p: Path<i64>, b: Bytes| async move { decide(s, p, b, false).await }))
        .route(
            "/silences",
            get(|State((a, _)): State<(Alerting, labops_engine::Lab)>| async move {
                match a.store().silences(labops_engine::lab::now_ms()).await {
                    Ok(s) => Json(s).into_response(),
                    Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                }
            })
            .post(|State((a, lab)): State<(Alerting, labops_engine::Lab)>, b: Bytes| async move {
                let body: SilenceBody = match serde_json::from_slice(&b) {
                    Ok(v) => v,
                    Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e}; send {{\"matchers\": [\"alertname=HighCPU\"], \"minutes\": 60, \"by\": \"you\", \"comment\": \"why\"}}")),
                };
                match build_silence(Some(&lab), &body.matchers, body.entity.as_deref(), body.minutes, &body.by, &body.comment) {
                    Ok(s) => match a.silence(&s, &format!("rest:{}", body.by)).await {
                        Ok(id) => Json(serde_json::json!({"silence": id, "ends_ms": s.ends_ms})).into_response(),
                        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
                    },
                    Err(e) => error(StatusCode::BAD_REQUEST, e),
                }
            }),
        )
        .with_state((alerting, lab))
}

async fn decide(State((a, _)): State<(Alerting, labops_engine::Lab)>, Path(id): Path<i64>, body: Bytes, ack: bool) -> Response {
    let by: ByBody = if body.is_empty() { ByBody::default() } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e}; send {{\"by\": \"your name\"}}")),
        }
    };
    let by = by.by.unwrap_or_else(|| "rest".into());
    let r = if ack { a.acknowledge(id, &by).await } else { a.resolve(id, &by).await };
    match r {
        Ok(()) => Json(serde_json::json!({"incident": id, "state": if ack { "acknowledged" } else { "resolved" }, "by": by})).into_response(),
        Err(AlertingError::Refused(m)) => error(StatusCode::CONFLICT, m),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
