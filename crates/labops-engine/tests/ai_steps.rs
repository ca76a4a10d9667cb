//! The AI step types through the AI engine, against a scripted model speaking Ollama's wire
//! format: `ai-task` returns the model's text as the step's outcome (the call routed, recorded
//! with the run's step as its task); `ai-validation` fails the step when the model says a
//! criterion is not met, and passes it otherwise; without a model, a step is refused at submit
//! time with what to configure.

use std::sync::Arc;
use std::time::Duration;

use labops_ai::engine::{Ai, Budget};
use labops_ai::model::{Model, Price};
use labops_ai::provider::{GenaiModel, ProviderKind, ProviderSpec};
use labops_ai::redact::Redactor;
use labops_engine::runs::ai::AiStep;
use labops_engine::runs::{Executor, RunStep, Started, StepCx};
use labops_store::Store;
use labops_testkit::llm::{ScriptedLlm, Turn};
use serde_json::{Value, json};

fn model(url: &str) -> Arc<dyn Model> {
    let spec = ProviderSpec {
        kind: ProviderKind::Ollama,
        url: url.into(),
        model: "scripted".into(),
        api_key: None,
        leaves_machine: false,
        price: Price::default(),
        timeout: Duration::from_secs(10),
        native_tools: false,
    };
    let http = labops_integrations::http_client(&labops_integrations::TlsTrust::System, Duration::from_secs(10)).unwrap();
    Arc::new(GenaiModel::new(spec, http).unwrap())
}

fn executor(ai: Arc<Ai>, ty: &str) -> Arc<dyn Executor> {
    AiStep::all(ai).into_iter().find(|e| e.step_type().name == ty).unwrap()
}

fn step(ty: &str, fields: Value) -> RunStep {
    RunStep { name: "think".into(), step_type: ty.into(), depends_on: Vec::new(), waits_for_human: false, mutates: false, fields: serde_json::from_value(fields).unwrap() }
}

fn cx(step: RunStep) -> StepCx {
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    StepCx::new(7, step, 1, tx)
}

#[tokio::test]
async fn an_ai_task_answers_through_the_engine_and_is_recorded() {
    let llm = ScriptedLlm::start(vec![Turn::text("Add a second disk to the pool; 4 TB is enough for a year.")]).await.unwrap();
    let store = Store::in_memory().await.unwrap();
    let ai = Arc::new(Ai::new(Some(model(&llm.url())), None, Budget::default(), Redactor::default(), Some(store.clone())));
    let e = executor(ai, "ai-task");
    let s = step("ai-task", json!({"prompt": "How should the owner grow the ZFS pool?", "analysis_output": "pool tank: 91% used, growing 2%/week"}));
    assert!(e.check(&s).is_empty(), "{:?}", e.check(&s));
    let Started::Done(out) = e.execute(&cx(s), &Value::Null).await.unwrap() else { panic!("done at once") };
    assert_eq!(out["output"], "Add a second disk to the pool; 4 TB is enough for a year.");
    assert_eq!(out["provider"], "ollama/scripted");
    let sent = llm.requests().into_iter().find(|r| r.method == "POST").unwrap().body.to_string();
    assert!(sent.contains("How should the owner grow the ZFS pool?") && sent.contains("<data source=\\\"analysis_output\\\">"), "{sent}");
    let calls = store.ai_calls_recent(5).await.unwrap();
    assert_eq!((calls[0].actor.as_str(), calls[0].task.as_deref()), ("engine", Some("run-7/think")), "{calls:?}");
}

#[tokio::test]
async fn an_ai_validation_fails_the_step_when_a_criterion_is_not_met() {
    let llm = ScriptedLlm::start(vec![
        Turn::text(r#"{"passed": false, "unmet": ["backups verified"], "reasons": "no backup job ran since the change"}"#),
        Turn::text(r#"{"passed": true, "unmet": [], "reasons": "both criteria hold"}"#),
    ])
    .await
    .unwrap();
    let ai = Arc::new(Ai::new(Some(model(&llm.url())), None, Budget::default(), Redactor::default(), None));
    let e = executor(ai, "ai-validation");
    let s = step("ai-validation", json!({"success_criteria": ["pool below 80%", "backups verified"], "evidence": "pool tank: 62% used; last backup 3 days ago"}));
    let err = e.execute(&cx(s.clone()), &Value::Null).await.unwrap_err();
    assert!(!err.retryable && err.message.contains("backups verified") && err.message.contains("no backup job ran"), "{err:?}");
    let Started::Done(out) = e.execute(&cx(s), &Value::Null).await.unwrap() else { panic!() };
    assert_eq!(out["verdict"]["passed"], true);
    let sent = llm.requests().into_iter().find(|r| r.method == "POST").unwrap().body;
    assert_eq!(sent["format"], "json", "the verdict is asked for as JSON: {sent}");
}

#[tokio::test]
async fn without_a_model_an_ai_step_is_refused_at_submit_time() {
    let ai = Arc::new(Ai::new(None, None, Budget::default(), Redactor::default(), None));
    let e = executor(ai, "ai-analysis");
    let problems = e.check(&step("ai-analysis", json!({})));
    assert!(problems.iter().any(|p| p.contains("[ai.local]")), "{problems:?}");
}
