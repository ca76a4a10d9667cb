//! The hybrid AI engine: every model call labops makes goes through [`Ai::chat`], which
//! classifies the request, routes it (privacy first, then the spend budget, then provider
//! health), redacts what leaves the machine and restores the answer, falls back along the
//! chain when a provider fails, and records the call (provider, model, privacy class,
//! redactions, tokens, cost, latency, outcome) in the store with its audit record.
//!
//! The fallback chain never crosses the privacy line: a sensitive request is served by the
//! local model or by nobody, whatever failed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use labops_store::Store;
use labops_store::ai::AiCall;
use serde::Serialize;
use serde_json::json;

use crate::model::{Model, ModelError, OnText, Reply, Request, ToolCall};
use crate::privacy::{Classification, Privacy, Purpose, classify};
use crate::redact::Redactor;
use crate::router::{Decision, Providers, Route, route};

/// What the cloud may cost, in US dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Budget {
    /// Per UTC day.
    pub daily_usd: Option<f64>,
    /// Per UTC calendar month.
    pub monthly_usd: Option<f64>,
}

/// Consecutive failures that open a provider's circuit.
pub const TRIP_AFTER: u32 = 3;
/// How long an open circuit keeps a provider out of the routes.
pub const COOL_DOWN: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Clone)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    last_error: String,
    /// Recent latency of successful calls, exponentially weighted (newest 30%).
    latency_ms: Option<f64>,
}

/// Who asks, for what.
#[derive(Clone, Default)]
pub struct Call {
    /// `cli`, `mcp:stdio`, `mcp:http`, `engine`.
    pub actor: String,
    /// The task this call serves (its id), when part of one.
    pub task: Option<String>,
    /// What it is for, when the caller knows better than the words.
    pub purpose: Option<Purpose>,
    /// It needs hard reasoning: prefer the cloud when privacy and budget allow.
    pub hard: bool,
    /// The connected MCP client's model, when it offers sampling.
    pub sampling: Option<Arc<dyn Model>>,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call").field("actor", &self.actor).field("task", &self.task).field("hard", &self.hard).finish_non_exhaustive()
    }
}

/// An answered call.
#[derive(Debug, Clone, Serialize)]
pub struct Served {
    /// The answer, with redacted values restored.
    pub reply: Reply,
    /// Where it went and why (after any fallback).
    pub decision: Decision,
    /// Which provider served it.
    pub provider: String,
    /// Values replaced by placeholders on the way out.
    pub redactions: usize,
    /// What it cost.
    pub cost_usd: f64,
}

/// Why no model answered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AiError {
    /// The router refused: nothing may serve this request (the reason says what to do).
    #[error("{0}")]
    Refused(String),
    /// Every provider in the chain failed.
    #[error("no model answered: {}", .0.iter().map(|(p, e)| format!("{p}: {e}")).collect::<Vec<_>>().join("; "))]
    Failed(Vec<(String, String)>),
}

/// The engine: its providers, policy and spend.
pub struct Ai {
    local: Option<Arc<dyn Model>>,
    cloud: Option<Arc<dyn Model>>,
    budget: Budget,
    redactor: RwLock<Arc<Redactor>>,
    store: Option<Store>,
    breakers: Mutex<HashMap<String, Breaker>>,
}

impl std::fmt::Debug for Ai {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ai")
            .field("local", &self.local.as_ref().map(|m| m.id().to_string()))
            .field("cloud", &self.cloud.as_ref().map(|m| m.id().to_string()))
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Start of the UTC day and of the UTC month holding `ms`.
fn windows(ms: i64) -> (i64, i64) {
    use chrono::Datelike;
    let day = ms - ms.rem_euclid(86_400_000);
    let month = chrono::DateTime::from_timestamp_millis(ms)
        .and_then(|t| t.date_naive().with_day(1))
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
        .unwrap_or(day);
    (day, month)
}

/// Start of the UTC month holding `ms`, as the monthly budget counts it.
pub fn month_start(ms: i64) -> i64 {
    windows(ms).1
}

impl Ai {
    /// An engine over these models. `store` records every call (and sums the spend); without
    /// one (tests of pure routing) nothing is recorded and the budget counts nothing.
    pub fn new(local: Option<Arc<dyn Model>>, cloud: Option<Arc<dyn Model>>, budget: Budget, redactor: Redactor, store: Option<Store>) -> Self {
        Self { local, cloud, budget, redactor: RwLock::new(Arc::new(redactor)), store, breakers: Mutex::new(HashMap::new()) }
    }

    /// Replaces the sensitive values (the inventory's names change as the lab does).
    pub fn set_redactor(&self, redactor: Redactor) {
        *self.redactor.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(redactor);
    }

    /// The current redactor.
    pub fn redactor(&self) -> Arc<Redactor> {
        self.redactor.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether any model is configured.
    pub fn is_configured(&self) -> bool {
        self.local.is_some() || self.cloud.is_some()
    }

    /// The configured local model's id.
    pub fn local_id(&self) -> Option<&str> {
        self.local.as_deref().map(|m| m.id())
    }

    /// Whether the model `id` takes native tool calls (unknown ids, such as the MCP client's
    /// model, get JSON steps).
    pub fn native_tools(&self, id: &str) -> bool {
        [&self.local, &self.cloud].into_iter().flatten().find(|m| m.id() == id).is_some_and(|m| m.native_tools())
    }

    /// Classifies a request by what it carries: every message and tool argument (labops' own
    /// system prompt and tool descriptions are not the owner's data and do not count).
    pub fn classify(&self, req: &Request, purpose: Option<Purpose>) -> Classification {
        let mut all: Vec<String> = req.messages.iter().map(|m| m.content.clone()).collect();
        all.extend(req.messages.iter().flat_map(|m| m.tool_calls.iter().map(|t| t.arguments.to_string())));
        classify(&all.join("\n"), purpose, &self.redactor())
    }

    fn breaker_down(&self, id: &str) -> Option<String> {
        let b = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        let b = b.get(id)?;
        match b.open_until {
            Some(t) if t > Instant::now() => Some(format!(
                "circuit open after {} failures in a row (last: {}); retried in {}s",
                b.failures,
                b.last_error,
                t.saturating_duration_since(Instant::now()).as_secs().max(1)
            )),
            _ => None,
        }
    }

    /// Why `m` is too slow for its latency target, if it is.
    fn slow(&self, m: &dyn Model) -> Option<String> {
        let target = m.latency_target()?;
        let all = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        let avg = all.get(m.id())?.latency_ms?;
        (avg > target.as_millis() as f64).then(|| format!("slower than its latency target ({:.1} s on average, target {:.1} s)", avg / 1000.0, target.as_secs_f64()))
    }

    fn note(&self, id: &str, outcome: Result<Duration, &ModelError>) {
        let mut all = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        let b = all.entry(id.to_string()).or_default();
        match outcome {
            Ok(took) => {
                let ms = took.as_millis() as f64;
                let latency = Some(b.latency_ms.map_or(ms, |old| 0.7 * old + 0.3 * ms));
                *b = Breaker { latency_ms: latency, ..Breaker::default() };
            }
            Err(e) => {
                b.failures += 1;
                b.last_error = e.to_string().chars().take(160).collect();
                if b.failures >= TRIP_AFTER {
                    b.open_until = Some(Instant::now() + COOL_DOWN);
                }
            }
        }
    }

    /// Why the cloud may not take a request of about `estimate` dollars now, if it may not.
    pub async fn over_budget(&self, estimate: f64) -> Option<String> {
        let store = self.store.as_ref()?;
        let (day, month) = windows(now_ms());
        if let Some(limit) = self.budget.daily_usd {
            let spent = store.ai_spent_since(day).await.unwrap_or(f64::INFINITY);
            if spent + estimate > limit {
                return Some(format!("the daily budget of ${limit:.2} is spent (${spent:.4} today, this call about ${estimate:.4})"));
            }
        }
        if let Some(limit) = self.budget.monthly_usd {
            let spent = store.ai_spent_since(month).await.unwrap_or(f64::INFINITY);
            if spent + estimate > limit {
                return Some(format!("the monthly budget of ${limit:.2} is spent (${spent:.4} this month, this call about ${estimate:.4})"));
            }
        }
        None
    }

    /// What the router knows now: which models are configured and healthy, and the budget.
    pub async fn providers(&self, req: &Request, call: &Call) -> Providers {
        let mut p = Providers { hard: call.hard, sampling: call.sampling.is_some(), ..Default::default() };
        if let Some(m) = &self.local {
            match self.breaker_down(m.id()) {
                None => p.local = Some(m.id().to_string()),
                Some(why) => p.local_down = Some(why),
            }
            p.local_slow = self.slow(m.as_ref());
        }
        if let Some(m) = &self.cloud {
            let input_tokens = req.texts().map(str::len).sum::<usize>() as u64 / 4;
            let estimate = m.price().cost(crate::model::Usage { input_tokens, output_tokens: req.max_tokens as u64 });
            if let Some(why) = self.breaker_down(m.id()) {
                p.cloud_down = Some(why);
            } else if let Some(why) = self.over_budget(estimate).await {
                p.cloud_down = Some(why);
            } else {
                p.cloud = Some(m.id().to_string());
                p.cloud_slow = self.slow(m.as_ref());
            }
        }
        p
    }

    /// Where a request would go and why, without calling any model.
    pub async fn decide(&self, req: &Request, call: &Call) -> (Classification, Decision) {
        let class = self.classify(req, call.purpose);
        let providers = self.providers(req, call).await;
        let d = route(&class, &providers);
        (class, d)
    }

    /// One call: routed, redacted when it leaves the machine, falling back along the chain,
    /// recorded. `on_text` streams the answer's text as it arrives (restored).
    pub async fn chat(&self, req: &Request, call: &Call, on_text: Option<OnText<'_>>) -> Result<Served, AiError> {
        let class = self.classify(req, call.purpose);
        let providers = self.providers(req, call).await;
        let decision = route(&class, &providers);
        if decision.route == Route::Refused {
            self.record(call, &class, &decision, "none", 0, Default::default(), 0.0, 0, &format!("refused: {}", decision.reason), json!({})).await;
            return Err(AiError::Refused(decision.reason));
        }
        // The chain: the router's pick first, then the others privacy allows.
        let mut chain: Vec<(Route, Arc<dyn Model>)> = Vec::new();
        let push = |chain: &mut Vec<(Route, Arc<dyn Model>)>, r: Route, m: Option<&Arc<dyn Model>>| {
            if let Some(m) = m
                && !chain.iter().any(|(_, c)| c.id() == m.id())
            {
                chain.push((r, m.clone()));
            }
        };
        let cloud_ok = providers.cloud.is_some();
        match decision.route {
            Route::Local => push(&mut chain, Route::Local, self.local.as_ref()),
            Route::Cloud => push(&mut chain, Route::Cloud, self.cloud.as_ref()),
            Route::Sampling => push(&mut chain, Route::Sampling, call.sampling.as_ref()),
            Route::Refused => {}
        }
        if providers.local.is_some() {
            push(&mut chain, Route::Local, self.local.as_ref());
        }
        if class.privacy == Privacy::Public {
            if cloud_ok {
                push(&mut chain, Route::Cloud, self.cloud.as_ref());
            }
            push(&mut chain, Route::Sampling, call.sampling.as_ref());
        }
        let mut failures: Vec<(String, String)> = Vec::new();
        for (r, model) in chain {
            if model.leaves_machine() && class.privacy == Privacy::Sensitive {
                // The router never picks this; the chain checks again rather than trust it.
                continue;
            }
            let redactor = self.redactor();
            let mut session = redactor.session();
            let outgoing = if model.leaves_machine() { redact_request(req, &mut session) } else { req.clone() };
            let redactions = session.redactions().len();
            let kinds: Vec<String> = session.redactions().iter().map(|r| r.found_by.clone()).collect();
            let started = Instant::now();
            let restore = |t: &str| session.restore(t);
            let stream_cb = on_text.map(|cb| move |t: &str| cb(&restore(t)));
            let result = match &stream_cb {
                Some(cb) => model.chat(&outgoing, Some(cb)).await,
                None => model.chat(&outgoing, None).await,
            };
            let latency = started.elapsed().as_millis() as i64;
            self.note(model.id(), result.as_ref().map(|_| started.elapsed()));
            let mut d = decision.clone();
            d.route = r;
            d.provider = Some(model.id().to_string());
            if !failures.is_empty() {
                let tried: Vec<String> = failures.iter().map(|(p, e)| format!("{p} failed ({e})")).collect();
                d.reason = format!("{}; fell back: {}", decision.reason, tried.join("; "));
            }
            match result {
                Ok(mut reply) => {
                    let cost = if model.leaves_machine() { model.price().cost(reply.usage) } else { 0.0 };
                    reply.text = session.restore(&reply.text);
                    for c in &mut reply.tool_calls {
                        c.arguments = restore_json(&c.arguments, &session);
                    }
                    self.record(call, &class, &d, model.id(), redactions as i64, reply.usage, cost, latency, "ok", json!({"reason": d.reason, "redacted": kinds})).await;
                    return Ok(Served { reply, decision: d, provider: model.id().to_string(), redactions, cost_usd: cost });
                }
                Err(e) => {
                    self.record(call, &class, &d, model.id(), redactions as i64, Default::default(), 0.0, latency, &format!("error: {e}"), json!({"reason": d.reason})).await;
                    failures.push((model.id().to_string(), e.to_string()));
                }
            }
        }
        if failures.is_empty() {
            let reason = format!("{}; but no provider is available", decision.reason);
            return Err(AiError::Refused(reason));
        }
        if class.privacy == Privacy::Sensitive {
            let tried: Vec<String> = failures.iter().map(|(p, e)| format!("{p}: {e}")).collect();
            return Err(AiError::Refused(format!(
                "the request is sensitive and the local model failed ({}); labops never sends a sensitive request off the machine: start the local model and ask again",
                tried.join("; ")
            )));
        }
        Err(AiError::Failed(failures))
    }

    #[allow(clippy::too_many_arguments)]
    async fn record(&self, call: &Call, class: &Classification, d: &Decision, provider: &str, redactions: i64, usage: crate::model::Usage, cost: f64, latency_ms: i64, outcome: &str, detail: serde_json::Value) {
        let Some(store) = &self.store else { return };
        let rec = AiCall {
            at_ms: now_ms(),
            actor: call.actor.clone(),
            task: call.task.clone(),
            route: name(&d.route),
            provider: provider.to_string(),
            privacy: name(&class.privacy),
            purpose: name(&class.purpose),
            redactions,
            input_tokens: usage.input_tokens as i64,
            output_tokens: usage.output_tokens as i64,
            cost_usd: cost,
            latency_ms,
            outcome: outcome.chars().take(500).collect(),
            detail,
        };
        if let Err(e) = store.record_ai_call(&rec).await {
            tracing::warn!("the AI call could not be recorded: {e}");
        }
    }
}

/// The serde name of a unit enum variant (`local`, `sensitive`).
fn name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| "?".into())
}

fn redact_json(v: &serde_json::Value, session: &mut crate::redact::Session<'_>) -> serde_json::Value {
    let text = session.redact(&v.to_string());
    serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
}

fn restore_json(v: &serde_json::Value, session: &crate::redact::Session<'_>) -> serde_json::Value {
    let text = session.restore(&v.to_string());
    serde_json::from_str(&text).unwrap_or_else(|_| v.clone())
}

/// The request as it may leave the machine: every text, tool argument and tool description
/// redacted.
fn redact_request(req: &Request, session: &mut crate::redact::Session<'_>) -> Request {
    let mut out = req.clone();
    out.system = session.redact(&req.system);
    // Tool documentation is labops' own, but its examples may spell the owner's names.
    for t in &mut out.tools {
        t.description = session.redact(&t.description);
        t.input_schema = redact_json(&t.input_schema, session);
    }
    for m in &mut out.messages {
        m.content = session.redact(&m.content);
        m.tool_calls = m.tool_calls.iter().map(|c| ToolCall { arguments: redact_json(&c.arguments, session), ..c.clone() }).collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Message, Price, Usage};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A model on this machine or off it that answers with canned text or fails, and keeps
    /// what it was sent.
    struct Canned {
        id: String,
        remote: bool,
        fail: bool,
        seen: Mutex<Vec<Request>>,
        calls: AtomicUsize,
    }

    fn canned(id: &str, remote: bool, fail: bool) -> Arc<Canned> {
        Arc::new(Canned { id: id.into(), remote, fail, seen: Mutex::new(Vec::new()), calls: AtomicUsize::new(0) })
    }

    #[async_trait::async_trait]
    impl Model for Canned {
        fn id(&self) -> &str {
            &self.id
        }
        fn leaves_machine(&self) -> bool {
            self.remote
        }
        fn price(&self) -> Price {
            if self.remote { Price { input_per_mtok: 3.0, output_per_mtok: 15.0 } } else { Price::default() }
        }
        async fn chat(&self, req: &Request, _on_text: Option<OnText<'_>>) -> Result<Reply, ModelError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.seen.lock().unwrap().push(req.clone());
            if self.fail {
                return Err(ModelError::Unreachable("connection refused".into()));
            }
            let echo = format!("{} {}", req.system, req.messages.last().map(|m| m.content.clone()).unwrap_or_default());
            Ok(Reply { text: format!("{} says: {echo}", self.id), tool_calls: Vec::new(), usage: Usage { input_tokens: 100_000, output_tokens: 10_000 } })
        }
    }

    fn req(text: &str) -> Request {
        Request { messages: vec![Message::user(text)], max_tokens: 100, ..Default::default() }
    }

    fn hard() -> Call {
        Call { actor: "test".into(), hard: true, ..Default::default() }
    }

    #[tokio::test]
    async fn what_leaves_the_machine_is_redacted_and_the_answer_restored() {
        let (local, cloud) = (canned("local/m", false, false), canned("cloud/m", true, false));
        let ai = Ai::new(Some(local.clone()), Some(cloud.clone()), Budget::default(), Redactor::new(["tank-serial-XY12".to_string()]), None);
        // A value in the request itself makes it sensitive (local only); labops' own text around
        // it (system prompt, tool documentation) is redacted when the request goes out.
        assert_eq!(ai.chat(&req("research ZFS special vdevs for pool tank-serial-XY12"), &hard(), None).await.unwrap().provider, "local/m");
        let mut r = req("research ZFS special vdevs");
        r.system = "The owner's pool is tank-serial-XY12.".into();
        let served = ai.chat(&r, &hard(), None).await.unwrap();
        assert_eq!(served.provider, "cloud/m");
        let sent = &cloud.seen.lock().unwrap()[0];
        assert!(!sent.system.contains("tank-serial-XY12"), "{}", sent.system);
        assert!(served.reply.text.contains("tank-serial-XY12"), "restored in the answer: {}", served.reply.text);
        assert_eq!(served.redactions, 1);
    }

    #[tokio::test]
    async fn sensitive_requests_never_fall_back_to_the_cloud() {
        let (local, cloud) = (canned("local/m", false, true), canned("cloud/m", true, false));
        let ai = Ai::new(Some(local.clone()), Some(cloud.clone()), Budget::default(), Redactor::default(), None);
        let e = ai.chat(&req("my config: password = hunter2hunter2, why does login fail?"), &hard(), None).await.unwrap_err();
        assert!(matches!(&e, AiError::Refused(m) if m.contains("never sends a sensitive request")), "{e}");
        assert_eq!(cloud.calls.load(Ordering::SeqCst), 0, "the cloud was never called");
        assert_eq!(local.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn cloud_down_falls_back_to_local_and_the_breaker_opens() {
        let (local, cloud) = (canned("local/m", false, false), canned("cloud/m", true, true));
        let ai = Ai::new(Some(local.clone()), Some(cloud.clone()), Budget::default(), Redactor::default(), None);
        for i in 0..TRIP_AFTER {
            let s = ai.chat(&req("compare Longhorn and Ceph"), &hard(), None).await.unwrap();
            assert_eq!(s.provider, "local/m", "call {i}");
            assert!(s.decision.reason.contains("fell back"), "{}", s.decision.reason);
        }
        assert_eq!(cloud.calls.load(Ordering::SeqCst), TRIP_AFTER as usize);
        let s = ai.chat(&req("compare Longhorn and Ceph"), &hard(), None).await.unwrap();
        assert_eq!(s.provider, "local/m");
        assert!(s.decision.reason.contains("circuit open"), "{}", s.decision.reason);
        assert_eq!(cloud.calls.load(Ordering::SeqCst), TRIP_AFTER as usize, "an open circuit is not called");
    }

    #[tokio::test]
    async fn the_budget_is_tracked_and_enforced() {
        let store = Store::in_memory().await.unwrap();
        let (local, cloud) = (canned("local/m", false, false), canned("cloud/m", true, false));
        // Each cloud call costs 100k in * $3/M + 10k out * $15/M = $0.45.
        let ai = Ai::new(Some(local), Some(cloud.clone()), Budget { daily_usd: Some(0.8), monthly_usd: None }, Redactor::default(), Some(store.clone()));
        let mut providers = Vec::new();
        for _ in 0..3 {
            providers.push(ai.chat(&req("compare Longhorn and Ceph"), &hard(), None).await.unwrap());
        }
        let got: Vec<&str> = providers.iter().map(|s| s.provider.as_str()).collect();
        assert_eq!(got, ["cloud/m", "cloud/m", "local/m"], "after $0.90 the $0.80 budget is spent");
        assert!(providers[2].decision.reason.contains("daily budget"), "{}", providers[2].decision.reason);
        assert!((store.ai_spent_since(0).await.unwrap() - 0.9).abs() < 1e-9);
        let calls = store.ai_calls_recent(10).await.unwrap();
        assert_eq!(calls.len(), 3, "every call recorded");
        assert_eq!((calls[0].route.as_str(), calls[0].privacy.as_str()), ("local", "public"));
    }

    /// A local model that takes its time.
    struct Slow;

    #[async_trait::async_trait]
    impl Model for Slow {
        fn id(&self) -> &str {
            "local/slow"
        }
        fn leaves_machine(&self) -> bool {
            false
        }
        fn price(&self) -> Price {
            Price::default()
        }
        fn latency_target(&self) -> Option<Duration> {
            Some(Duration::from_millis(5))
        }
        async fn chat(&self, _req: &Request, _on_text: Option<OnText<'_>>) -> Result<Reply, ModelError> {
            tokio::time::sleep(Duration::from_millis(40)).await;
            Ok(Reply { text: "slowly".into(), ..Default::default() })
        }
    }

    #[tokio::test]
    async fn a_model_slower_than_its_latency_target_gives_way_where_privacy_allows() {
        let cloud = canned("cloud/m", true, false);
        let ai = Ai::new(Some(Arc::new(Slow)), Some(cloud.clone()), Budget::default(), Redactor::default(), None);
        let easy = Call { actor: "test".into(), ..Default::default() };
        assert_eq!(ai.chat(&req("compare Longhorn and Ceph"), &easy, None).await.unwrap().provider, "local/slow", "no measure yet");
        let s = ai.chat(&req("compare Longhorn and Ceph"), &easy, None).await.unwrap();
        assert_eq!(s.provider, "cloud/m", "{}", s.decision.reason);
        assert!(s.decision.reason.contains("latency target"), "{}", s.decision.reason);
        let s = ai.chat(&req("password = hunter2hunter2 fails"), &easy, None).await.unwrap();
        assert_eq!(s.provider, "local/slow", "a sensitive request stays, slow or not");
    }

    #[test]
    fn budget_windows_are_utc_days_and_months() {
        // 2026-12-05T22:56:16Z
        let (day, month) = windows(1_796_511_376_000);
        assert_eq!(day, 1_796_428_800_000);
        assert_eq!(month, 1_796_083_200_000);
    }
}
