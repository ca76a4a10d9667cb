//! Alert webhook bodies to normalised alerts.
//!
//! Every parser walks the JSON itself so that a refusal names the exact field (`alerts[2].labels`
//! is not an object) and says what is expected; unknown fields are ignored (senders add them
//! between versions). Text in labels and annotations is the sender's: it is kept as data, cut to
//! [`MAX_TEXT`], and never interpreted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest label or annotation value kept, in bytes; longer values are cut with a note.
pub const MAX_TEXT: usize = 8 * 1024;
/// Most alerts accepted in one body.
pub const MAX_ALERTS: usize = 1000;

/// Where an alert came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Alertmanager's webhook receiver.
    Alertmanager,
    /// Grafana unified alerting's webhook contact point.
    Grafana,
    /// Alertmanager's push API, as Prometheus sends alerts straight to labops.
    Prometheus,
    /// Uptime Kuma's webhook notification.
    UptimeKuma,
    /// The documented generic form.
    Generic,
    /// labops itself: its checks on the monitoring stack (monitor the monitor).
    Labops,
}

/// Firing or resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The condition holds.
    Firing,
    /// It no longer does.
    Resolved,
}

/// One alert, whatever sent it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Who sent it.
    pub source: Source,
    /// Alertmanager's fingerprint of the label set (FNV-1a 64 over the sorted labels), the
    /// sender's own when it gives one: the same alert repeated has the same fingerprint.
    pub fingerprint: String,
    /// Firing or resolved.
    pub status: Status,
    /// Its labels (`alertname`, `severity`, `instance`, ...).
    pub labels: BTreeMap<String, String>,
    /// Its annotations (`summary`, `description`, ...): the sender's text, data only.
    pub annotations: BTreeMap<String, String>,
    /// When it started, Unix milliseconds.
    pub starts_at_ms: Option<i64>,
    /// When it ended (resolved alerts), Unix milliseconds.
    pub ends_at_ms: Option<i64>,
    /// A link back to the rule or monitor.
    pub url: Option<String>,
}

impl Alert {
    /// Its name (`alertname`).
    pub fn name(&self) -> &str {
        self.labels.get("alertname").map(String::as_str).unwrap_or("")
    }

    /// Its severity label, lower case (`critical`, `warning`, `info`), `none` when absent.
    pub fn severity(&self) -> String {
        self.labels.get("severity").map(|s| s.to_ascii_lowercase()).unwrap_or_else(|| "none".into())
    }
}

/// Why a body was refused: the field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct IntakeError {
    /// The JSON path of the offending field (`$` for the body).
    pub path: String,
    /// What is wrong and what is expected.
    pub message: String,
}

fn err(path: impl Into<String>, message: impl Into<String>) -> IntakeError {
    IntakeError { path: path.into(), message: message.into() }
}

/// Alertmanager's label-set fingerprint: FNV-1a 64 over each sorted name and value, each
/// followed by the separator byte 0xff; 16 hex digits.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    const OFFSET: u64 = 14_695_981_039_346_656_037;
    const PRIME: u64 = 1_099_511_628_211;
    let mut h = OFFSET;
    let mut add = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    };
    for (k, v) in labels {
        add(k.as_bytes());
        add(&[0xff]);
        add(v.as_bytes());
        add(&[0xff]);
    }
    format!("{h:016x}")
}

fn parse(body: &[u8]) -> Result<Value, IntakeError> {
    serde_json::from_slice(body).map_err(|e| err("$", format!("not JSON ({e})")))
}

fn text(v: &str) -> String {
    if v.len() <= MAX_TEXT {
        return v.to_string();
    }
    let mut end = MAX_TEXT;
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}[... cut by labops]", &v[..end])
}

/// A map of strings at `path` (labels, annotations); absent is empty.
fn strings(v: Option<&Value>, path: &str) -> Result<BTreeMap<String, String>, IntakeError> {
    match v {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((text(k), text(s))),
                Value::Number(n) => Ok((text(k), n.to_string())),
                Value::Bool(b) => Ok((text(k), b.to_string())),
                _ => Err(err(format!("{path}.{k}"), "must be a string")),
            })
            .collect(),
        Some(_) => Err(err(path, "must be an object of strings")),
    }
}

/// An RFC 3339 time; Go's zero time (`0001-01-01T00:00:00Z`, "not set") is none.
fn time(v: Option<&Value>, path: &str) -> Result<Option<i64>, IntakeError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() || s.starts_with("0001-01-01") => Ok(None),
        Some(Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.timestamp_millis()))
            .map_err(|e| err(path, format!("{s:?} is not an RFC 3339 time ({e})"))),
        Some(_) => Err(err(path, "must be an RFC 3339 time string")),
    }
}

fn status(v: Option<&Value>, path: &str) -> Result<Status, IntakeError> {
    match v.and_then(Value::as_str) {
        Some("firing") => Ok(Status::Firing),
        Some("resolved") => Ok(Status::Resolved),
        Some(other) => Err(err(path, format!("{other:?} is not a status; use firing or resolved"))),
        None => Err(err(path, "missing: firing or resolved")),
    }
}

fn alerts_array<'a>(body: &'a Value, path: &str) -> Result<&'a Vec<Value>, IntakeError> {
    let a = body.get("alerts").ok_or_else(|| err(path, "missing: the list of alerts"))?.as_array().ok_or_else(|| err(path, "must be a list"))?;
    if a.len() > MAX_ALERTS {
        return Err(err(path, format!("{} alerts in one body; at most {MAX_ALERTS}", a.len())));
    }
    Ok(a)
}

/// The alert objects of an Alertmanager-shaped list (the webhook's `alerts`, Grafana's, the
/// push API's body).
fn am_alerts(list: &[Value], prefix: &str, source: Source, default_status: Option<Status>) -> Result<Vec<Alert>, IntakeError> {
    let mut out = Vec::with_capacity(list.len());
    for (i, a) in list.iter().enumerate() {
        let p = format!("{prefix}[{i}]");
        if !a.is_object() {
            return Err(err(&p, "must be an object"));
        }
        let labels = strings(a.get("labels"), &format!("{p}.labels"))?;
        if labels.is_empty() {
            return Err(err(format!("{p}.labels"), "missing: an alert needs labels (at least alertname)"));
        }
        let starts = time(a.get("startsAt"), &format!("{p}.startsAt"))?;
        let ends = time(a.get("endsAt"), &format!("{p}.endsAt"))?;
        let status = match default_status {
            Some(s) => s,
            None => status(a.get("status"), &format!("{p}.status"))?,
        };
        let own = a.get("fingerprint").and_then(Value::as_str).filter(|f| !f.is_empty() && f.len() <= 64).map(str::to_owned);
        out.push(Alert {
            source,
            fingerprint: own.unwrap_or_else(|| fingerprint(&labels)),
            status,
            annotations: strings(a.get("annotations"), &format!("{p}.annotations"))?,
            labels,
            starts_at_ms: starts,
            ends_at_ms: ends,
            url: a.get("generatorURL").or_else(|| a.get("panelURL")).and_then(Value::as_str).filter(|s| !s.is_empty()).map(text),
        });
    }
    Ok(out)
}

/// Alertmanager's webhook body (`version: "4"`).
pub fn alertmanager(body: &[u8]) -> Result<Vec<Alert>, IntakeError> {
    let v = parse(body)?;
    match v.get("version").and_then(Value::as_str) {
        Some("4") => {}
        Some(other) => return Err(err("$.version", format!("{other:?}: labops reads Alertmanager's webhook version 4"))),
        None => return Err(err("$.version", "missing: an Alertmanager webhook body says version \"4\"")),
    }
    am_alerts(alerts_array(&v, "$.alerts")?, "$.alerts", Source::Alertmanager, None)
}

/// Grafana unified alerting's webhook body (Alertmanager's shape, `version: "1"`, with `title`,
/// `state` and `message`; each alert may carry `values`, `dashboardURL`, `panelURL`).
pub fn grafana(body: &[u8]) -> Result<Vec<Alert>, IntakeError> {
    let v = parse(body)?;
    if v.get("evalMatches").is_some() && v.get("alerts").is_none() {
        return Err(err("$", "this is legacy Grafana alerting's body; labops reads unified alerting's webhook (Grafana 9 and later)"));
    }
    am_alerts(alerts_array(&v, "$.alerts")?, "$.alerts", Source::Grafana, None)
}

/// Alertmanager's push API body (`POST /api/v2/alerts`): a list of alerts with labels,
/// annotations, `startsAt`, `endsAt`, `generatorURL`. They come back firing: Prometheus sends
/// `endsAt` a few minutes ahead while an alert fires and in the past once it is resolved, so the
/// caller, which has a clock, applies [`resolve_by_time`].
pub fn prometheus_push(body: &[u8]) -> Result<Vec<Alert>, IntakeError> {
    let v = parse(body)?;
    let list = v.as_array().ok_or_else(|| err("$", "must be a list of alerts (Alertmanager's postableAlerts)"))?;
    if list.len() > MAX_ALERTS {
        return Err(err("$", format!("{} alerts in one body; at most {MAX_ALERTS}", list.len())));
    }
    am_alerts(list, "$", Source::Prometheus, Some(Status::Firing))
}

/// Marks pushed alerts whose `endsAt` has passed at `now_ms` as resolved (Prometheus resends a
/// firing alert with `endsAt` a few minutes ahead, and a resolved one with `endsAt` in the past).
pub fn resolve_by_time(alerts: &mut [Alert], now_ms: i64) {
    for a in alerts {
        if a.ends_at_ms.is_some_and(|e| e <= now_ms) {
            a.status = Status::Resolved;
        }
    }
}

/// Uptime Kuma's webhook body: `heartbeat` (`status` 0 down, 1 up, 2 pending, 3 maintenance;
/// `msg`, `time`) and `monitor` (`name`, `url`, `type`). A test notification (no heartbeat) gives
/// no alert.
pub fn uptime_kuma(body: &[u8]) -> Result<Vec<Alert>, IntakeError> {
    let v = parse(body)?;
    let Some(hb) = v.get("heartbeat").filter(|h| !h.is_null()) else { return Ok(Vec::new()) };
    let monitor = v.get("monitor").filter(|m| m.is_object()).ok_or_else(|| err("$.monitor", "missing: the monitor the heartbeat is about"))?;
    let name = monitor.get("name").and_then(Value::as_str).ok_or_else(|| err("$.monitor.name", "missing: the monitor's name"))?;
    let status = match hb.get("status").and_then(Value::as_i64) {
        Some(0) => Status::Firing,
        Some(1) => Status::Resolved,
        Some(2 | 3) => return Ok(Vec::new()),
        Some(other) => return Err(err("$.heartbeat.status", format!("{other} is not a heartbeat status (0 down, 1 up, 2 pending, 3 maintenance)"))),
        None => return Err(err("$.heartbeat.status", "missing: 0 down, 1 up, 2 pending, 3 maintenance")),
    };
    let mut labels = BTreeMap::from([("alertname".to_string(), "MonitorDown".to_string()), ("monitor".to_string(), text(name))]);
    // The monitor is the alert's identity: its down and up heartbeats share a fingerprint even
    // when one carries more of the monitor's details than the other.
    let fp = fingerprint(&labels);
    labels.insert("severity".into(), "critical".into());
    if let Some(t) = monitor.get("type").and_then(Value::as_str) {
        labels.insert("monitor_type".into(), text(t));
    }
    let mut annotations = BTreeMap::new();
    if let Some(m) = hb.get("msg").and_then(Value::as_str) {
        annotations.insert("description".into(), text(m));
    }
    annotations.insert("summary".into(), format!("Uptime Kuma monitor {} is {}", text(name), if status == Status::Firing { "down" } else { "up" }));
    // Uptime Kuma writes `time` as `YYYY-MM-DD HH:MM:SS.mmm` in UTC.
    let at = hb.get("time").and_then(Value::as_str).and_then(|t| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f").ok()).map(|t| t.and_utc().timestamp_millis());
    Ok(vec![Alert {
        source: Source::UptimeKuma,
        fingerprint: fp,
        status,
        labels,
        annotations,
        starts_at_ms: if status == Status::Firing { at } else { None },
        ends_at_ms: if status == Status::Resolved { at } else { None },
        url: monitor.get("url").and_then(Value::as_str).filter(|u| !u.is_empty()).map(text),
    }])
}

/// The generic form, for anything else that can send JSON:
///
/// ```json
/// {"alerts": [{"name": "BackupFailed", "status": "firing", "severity": "critical",
///              "target": "proxmox-backup-server", "summary": "last night's backup failed",
///              "labels": {"job": "pbs"}, "starts_at": "2026-12-01T03:00:00Z"}]}
/// ```
///
/// `name` and `status` are required; `severity` (`critical`, `warning`, `info`), `target` (an
/// entity name, resolved later), `summary`, `description`, `labels`, `starts_at`, `ends_at` and
/// `url` are optional.
pub fn generic(body: &[u8]) -> Result<Vec<Alert>, IntakeError> {
    let v = parse(body)?;
    let list = alerts_array(&v, "$.alerts")?;
    let mut out = Vec::with_capacity(list.len());
    for (i, a) in list.iter().enumerate() {
        let p = format!("$.alerts[{i}]");
        let name = a.get("name").and_then(Value::as_str).filter(|n| !n.trim().is_empty()).ok_or_else(|| err(format!("{p}.name"), "missing: the alert's name"))?;
        let mut labels = strings(a.get("labels"), &format!("{p}.labels"))?;
        labels.insert("alertname".into(), text(name));
        if let Some(s) = a.get("severity") {
            let s = s.as_str().ok_or_else(|| err(format!("{p}.severity"), "must be critical, warning or info"))?;
            if !matches!(s, "critical" | "warning" | "info") {
                return Err(err(format!("{p}.severity"), format!("{s:?}: use critical, warning or info")));
            }
            labels.insert("severity".into(), s.into());
        }
        if let Some(t) = a.get("target").and_then(Value::as_str) {
            labels.insert("target".into(), text(t));
        }
        let mut annotations = BTreeMap::new();
        for k in ["summary", "description"] {
            if let Some(s) = a.get(k).and_then(Value::as_str) {
                annotations.insert(k.to_string(), text(s));
            }
        }
        out.push(Alert {
            source: Source::Generic,
            fingerprint: fingerprint(&labels),
            status: status(a.get("status"), &format!("{p}.status"))?,
            labels,
            annotations,
            starts_at_ms: time(a.get("starts_at"), &format!("{p}.starts_at"))?,
            ends_at_ms: time(a.get("ends_at"), &format!("{p}.ends_at"))?,
            url: a.get("url").and_then(Value::as_str).map(text),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(name: &str) -> Vec<u8> {
        let base = std::env::var_os("LABOPS_TEST_SHARED").map(std::path::PathBuf::from).unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
        std::fs::read(base.join("reference/alerts").join(name)).unwrap_or_else(|e| panic!("{name}: {e}; ../shared must be beside the repository"))
    }

    #[test]
    fn real_alertmanager_bodies_parse_and_our_fingerprint_is_alertmanagers() {
        let firing = alertmanager(&shared("alertmanager-0.25-webhook-firing.json")).unwrap();
        let a = &firing[0];
        assert_eq!((a.name(), a.status, a.severity().as_str()), ("NodeUp", Status::Firing, "warning"));
        assert_eq!(a.ends_at_ms, None, "Go's zero time is no end");
        assert!(a.starts_at_ms.is_some() && a.url.as_deref().unwrap().starts_with("http://vm:9090/graph"));
        assert_eq!(a.fingerprint, "899dc6ca882eb32b", "Alertmanager's own");
        assert_eq!(fingerprint(&a.labels), a.fingerprint, "computed the way Alertmanager computes it");
        let resolved = alertmanager(&shared("alertmanager-0.25-webhook-resolved.json")).unwrap();
        assert!(resolved.iter().all(|a| a.status == Status::Resolved && a.ends_at_ms.is_some()));
        assert_eq!(resolved[0].fingerprint, fingerprint(&resolved[0].labels));
    }

    #[test]
    fn refusals_name_the_field_and_what_is_expected() {
        let e = alertmanager(b"{\"version\": \"4\", \"alerts\": [{\"status\": \"firing\", \"labels\": {\"a\": \"b\"}}, {\"status\": \"burning\", \"labels\": {\"a\": \"b\"}}]}").unwrap_err();
        assert_eq!(e.path, "$.alerts[1].status");
        assert!(e.message.contains("firing or resolved"), "{e}");
        let e = alertmanager(b"{\"alerts\": []}").unwrap_err();
        assert!(e.to_string().starts_with("$.version: missing"), "{e}");
        let e = alertmanager(b"{\"version\": \"4\", \"alerts\": [{\"status\": \"firing\", \"labels\": {\"x\": [1]}}]}").unwrap_err();
        assert_eq!(e.path, "$.alerts[0].labels.x");
        let e = generic(b"{\"alerts\": [{\"name\": \"Disk\", \"status\": \"firing\", \"severity\": \"panic\"}]}").unwrap_err();
        assert!(e.path == "$.alerts[0].severity" && e.message.contains("critical, warning or info"), "{e}");
        assert!(alertmanager(b"not json").unwrap_err().message.starts_with("not JSON"));
        let e = grafana(b"{\"evalMatches\": [], \"state\": \"alerting\"}").unwrap_err();
        assert!(e.message.contains("unified alerting"), "{e}");
    }

    #[test]
    fn grafana_push_kuma_and_generic_normalise_alike() {
        let g = grafana(br#"{"receiver":"labops","status":"firing","orgId":1,"version":"1","title":"[FIRING:1] HighCPU","state":"alerting","message":"...",
            "alerts":[{"status":"firing","labels":{"alertname":"HighCPU","instance":"still-fawn"},"annotations":{"summary":"CPU above 90%"},
            "startsAt":"2026-12-01T10:00:00Z","endsAt":"0001-01-01T00:00:00Z","fingerprint":"a1b2c3d4e5f60708","values":{"B":93.2},
            "panelURL":"http://grafana/d/x?viewPanel=2"}]}"#)
        .unwrap();
        assert_eq!((g[0].source, g[0].fingerprint.as_str(), g[0].url.as_deref()), (Source::Grafana, "a1b2c3d4e5f60708", Some("http://grafana/d/x?viewPanel=2")));
        let mut p = prometheus_push(br#"[{"labels":{"alertname":"ZfsPoolDegraded","pool":"tank"},"annotations":{},"startsAt":"2026-12-01T10:00:00Z","endsAt":"2026-12-01T10:04:00Z","generatorURL":"http://prom/graph"}]"#).unwrap();
        assert_eq!(p[0].status, Status::Firing);
        resolve_by_time(&mut p, 1_764_583_200_000 /* 2025-12-01 */);
        assert_eq!(p[0].status, Status::Firing, "endsAt still ahead");
        resolve_by_time(&mut p, 1_797_000_000_000);
        assert_eq!(p[0].status, Status::Resolved, "endsAt passed");
        let k = uptime_kuma(br#"{"heartbeat":{"monitorID":3,"status":0,"time":"2026-12-01 10:00:00.123","msg":"timeout of 48000ms exceeded"},"monitor":{"id":3,"name":"Grafana","url":"http://grafana:3000","type":"http"},"msg":"[Grafana] [Down] timeout"}"#).unwrap();
        assert_eq!((k[0].name(), k[0].status, k[0].labels["monitor"].as_str()), ("MonitorDown", Status::Firing, "Grafana"));
        assert_eq!(k[0].starts_at_ms, Some(1_796_119_200_123));
        assert!(uptime_kuma(br#"{"heartbeat":null,"monitor":null,"msg":"Uptime Kuma test"}"#).unwrap().is_empty(), "a test notification is no alert");
        let up = uptime_kuma(br#"{"heartbeat":{"status":1,"time":"2026-12-01 10:05:00.000","msg":"200 - OK"},"monitor":{"name":"Grafana"}}"#).unwrap();
        assert_eq!((up[0].status, up[0].fingerprint.as_str()), (Status::Resolved, k[0].fingerprint.as_str()), "down and up are one alert");
        let x = generic(br#"{"alerts":[{"name":"BackupFailed","status":"firing","severity":"critical","target":"proxmox-backup-server","summary":"failed"}]}"#).unwrap();
        assert_eq!((x[0].severity().as_str(), x[0].labels["target"].as_str()), ("critical", "proxmox-backup-server"));
    }

    #[test]
    fn untrusted_text_is_kept_as_data_and_bounded() {
        let long = "x".repeat(MAX_TEXT * 2);
        let body = serde_json::json!({"version": "4", "alerts": [{"status": "firing", "labels": {"alertname": "A"}, "annotations": {"description": long}}]});
        let a = alertmanager(body.to_string().as_bytes()).unwrap();
        assert!(a[0].annotations["description"].len() < MAX_TEXT + 40 && a[0].annotations["description"].ends_with("[... cut by labops]"));
        let many: Vec<Value> = (0..MAX_ALERTS + 1).map(|i| serde_json::json!({"name": format!("A{i}"), "status": "firing"})).collect();
        let e = generic(serde_json::json!({"alerts": many}).to_string().as_bytes()).unwrap_err();
        assert!(e.message.contains("at most 1000"), "{e}");
    }
}
