//! Against a real local model server: llama-cpp-python's OpenAI-compatible server with
//! SmolLM2-135M from PyPI, started by `scripts/test` (LABOPS_TEST_LLM_URL). A sensitive request
//! is routed to it and answered, never to the cloud; a schema-constrained call returns JSON that
//! validates; the answer streams; the agent loop's JSON steps are valid without repair.
//!
//! The model is tiny: these tests check the machinery, not the quality of its answers (that is
//! `labops bench eval`, in BENCHMARKS.md).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use labops_ai::agent::{Agent, Event, Limits, Observer, ToolMode, Toolbox, WorkflowChoice};
use labops_ai::engine::{Ai, Budget, Call};
use labops_ai::model::{Message, Model, Price, Request, ToolSpec};
use labops_ai::provider::{GenaiModel, ProviderKind, ProviderSpec};
use labops_ai::redact::Redactor;
use labops_core::inventory::{Entity, EntityKind, Inventory, Part, ids};
use labops_store::Store;
use labops_testkit::llm::{ScriptedLlm, Turn};
use serde_json::{Value, json};

fn url() -> Option<String> {
    match std::env::var("LABOPS_TEST_LLM_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            eprintln!("\n*** SKIPPED: the local LLM tier (set LABOPS_TEST_LLM_URL to an OpenAI-compatible server; scripts/test starts llama-cpp-python) ***\n");
            None
        }
    }
}

fn model(kind: ProviderKind, url: &str, remote: bool) -> Arc<dyn Model> {
    let spec = ProviderSpec {
        kind,
        url: url.into(),
        model: "smollm2".into(),
        api_key: None,
        leaves_machine: remote,
        price: if remote { Price { input_per_mtok: 3.0, output_per_mtok: 15.0 } } else { Price::default() },
        timeout: Duration::from_secs(180),
        native_tools: false,
    };
    let http = labops_integrations::http_client(&labops_integrations::TlsTrust::System, Duration::from_secs(180)).unwrap();
    Arc::new(GenaiModel::new(spec, http).unwrap())
}

#[tokio::test]
async fn a_sensitive_request_is_answered_by_the_local_model_and_never_the_cloud() {
    let Some(url) = url() else { return };
    let cloud = ScriptedLlm::start(vec![Turn::text("the cloud must not answer this")]).await.unwrap();
    let store = Store::in_memory().await.unwrap();
    let ai = Ai::new(Some(model(ProviderKind::OpenaiCompatible, &url, false)), Some(model(ProviderKind::Anthropic, &cloud.url(), true)), Budget::default(), Redactor::default(), Some(store.clone()));
    let req = Request {
        messages: vec![Message::user("My Proxmox config has password = Hunter2Hunter2 and login fails. In one sentence, what should I check?")],
        max_tokens: 48,
        ..Default::default()
    };
    let call = Call { actor: "test".into(), hard: true, ..Default::default() };
    let served = ai.chat(&req, &call, None).await.unwrap();
    assert_eq!(served.provider, "openai-compatible/smollm2", "{:?}", served.decision);
    assert!(!served.reply.text.trim().is_empty(), "the local model answered");
    assert!(served.reply.usage.output_tokens > 0, "usage is read from the real server");
    assert!(cloud.requests().is_empty(), "hard or not, a password keeps it on the machine");
    let calls = store.ai_calls_recent(5).await.unwrap();
    assert_eq!((calls[0].route.as_str(), calls[0].privacy.as_str(), calls[0].outcome.as_str()), ("local", "sensitive", "ok"));
}

#[tokio::test]
async fn a_schema_constrained_call_returns_json_that_validates() {
    let Some(url) = url() else { return };
    let ai = Ai::new(Some(model(ProviderKind::OpenaiCompatible, &url, false)), None, Budget::default(), Redactor::default(), None);
    let schema = json!({
        "type": "object",
        "properties": {
            "action": {"enum": ["restart", "snapshot", "none"]},
            "vmid": {"type": "integer"},
            "reason": {"type": "string", "maxLength": 80}
        },
        "required": ["action", "vmid", "reason"],
        "additionalProperties": false
    });
    let req = Request {
        system: "You answer with one JSON object.".into(),
        messages: vec![Message::user("VM 116 hangs. Which action, on which vmid, and why?")],
        schema: Some(schema.clone()),
        max_tokens: 96,
        ..Default::default()
    };
    let served = ai.chat(&req, &Call { actor: "test".into(), ..Default::default() }, None).await.unwrap();
    let v: Value = serde_json::from_str(served.reply.text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {}", served.reply.text));
    let validator = jsonschema::validator_for(&schema).unwrap();
    assert!(validator.is_valid(&v), "constrained decoding keeps to the schema: {v}");
}

#[tokio::test]
async fn the_answer_streams() {
    let Some(url) = url() else { return };
    let ai = Ai::new(Some(model(ProviderKind::OpenaiCompatible, &url, false)), None, Budget::default(), Redactor::default(), None);
    let req = Request { messages: vec![Message::user("Name three Linux file systems.")], max_tokens: 40, ..Default::default() };
    let pieces = Mutex::new(Vec::<String>::new());
    let on_text = |t: &str| pieces.lock().unwrap().push(t.to_string());
    let served = ai.chat(&req, &Call { actor: "test".into(), ..Default::default() }, Some(&on_text)).await.unwrap();
    let pieces = pieces.into_inner().unwrap();
    assert!(pieces.len() > 1, "several pieces arrived: {pieces:?}");
    assert_eq!(pieces.concat().trim(), served.reply.text.trim());
}

/// Two nodes and a VM, read through one tool.
struct Tiny(Arc<Inventory>);

#[async_trait::async_trait]
impl Toolbox for Tiny {
    fn tools(&self) -> Vec<ToolSpec> {
        vec![ToolSpec {
            name: "list_entities".into(),
            description: "Lists the lab's entities (nodes and VMs) with their node and status.".into(),
            input_schema: json!({"type": "object", "properties": {"kind": {"type": "string"}}}),
        }]
    }
    async fn call(&self, _name: &str, _args: Value) -> Result<Value, String> {
        Ok(serde_json::to_value(self.0.entities()).unwrap())
    }
    async fn inventory(&self) -> Arc<Inventory> {
        self.0.clone()
    }
    fn workflows(&self) -> Vec<WorkflowChoice> {
        vec![WorkflowChoice { name: "guest-restart".into(), description: "Restarts a VM".into(), target_kinds: vec![EntityKind::Vm], verbs: vec!["restart".into()], params: vec![] }]
    }
}

#[derive(Default)]
struct Seen(Mutex<Vec<Event>>);
impl Observer for Seen {
    fn event(&self, e: &Event) {
        self.0.lock().unwrap().push(e.clone());
    }
}

#[tokio::test]
async fn the_agent_loop_gets_schema_valid_steps_from_a_small_model() {
    let Some(url) = url() else { return };
    let mut part = Part::default();
    for n in ["pve", "still-fawn"] {
        part.entities.push(Entity::new(EntityKind::ProxmoxNode, ids::proxmox_node(n), n, "online", "proxmox"));
    }
    let mut vm = Entity::new(EntityKind::Vm, ids::vm(116), "haos", "running", "proxmox");
    vm.node = Some("pve".into());
    part.entities.push(vm);
    let toolbox = Tiny(Arc::new(Inventory::build([part])));
    let ai = Ai::new(Some(model(ProviderKind::OpenaiCompatible, &url, false)), None, Budget::default(), Redactor::default(), None);
    let agent = Agent { ai: &ai, toolbox: &toolbox, call: Call { actor: "test".into(), ..Default::default() }, mode: ToolMode::Json, limits: Limits { max_steps: 4, ..Limits::default() } };
    let seen = Seen::default();
    let report = agent.run("Which node does haos run on?", &[], &seen).await;
    assert!(report.model_calls >= 1, "{report:?}");
    let events = seen.0.into_inner().unwrap();
    let broken = events.iter().filter(|e| matches!(e, Event::Repair { problem } if problem.contains("not a JSON object"))).count();
    assert_eq!(broken, 0, "constrained decoding always gives JSON: {events:?}");
    eprintln!("SmolLM2-135M on \"Which node does haos run on?\": {:?}", report.outcome);
}

