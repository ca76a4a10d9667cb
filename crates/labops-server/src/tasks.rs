//! The task processor's transport side: the agent's toolbox is the MCP server's own read-only
//! tools ([`LabToolbox`]), the connected client's model can serve through sampling
//! ([`ClientModel`]), and [`TaskView`] is what `process_task` and `labops ask --json` return.
// Sampling is deprecated by SEP-2577 but is what MCP clients offer today.
#![allow(deprecated)]

use std::sync::Arc;

use labops_ai::agent::{Outcome, Toolbox, WorkflowChoice};
use labops_ai::model::{Model, ModelError, OnText, Price, Reply, Request, Role, ToolSpec};
use labops_core::inventory::Inventory;
use labops_engine::tasks::{Library, TaskResult};
use rmcp::model::{CreateMessageRequestParams, SamplingMessage};
use rmcp::{Peer, RoleServer};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::mcp::LabMcp;

/// The MCP server's read-only tools, the live inventory and the workflow library.
pub struct LabToolbox<'a> {
    /// The server whose tools the agent uses.
    pub mcp: &'a LabMcp,
    /// What the agent may propose.
    pub library: Arc<Library>,
}

#[async_trait::async_trait]
impl Toolbox for LabToolbox<'_> {
    fn tools(&self) -> Vec<ToolSpec> {
        self.mcp.read_tools()
    }

    async fn call(&self, name: &str, args: serde_json::Value) -> Result<serde_json::Value, String> {
        self.mcp.call_read_tool(name, args).await
    }

    async fn inventory(&self) -> Arc<Inventory> {
        // The lab's names are what the redactor and the privacy classes protect: a task asked
        // right after start waits for every source's first report (at most 20 s).
        self.mcp.lab().wait_until_reported(std::time::Duration::from_secs(20)).await;
        self.mcp.lab().snapshot().inventory.clone()
    }

    fn workflows(&self) -> Vec<WorkflowChoice> {
        self.library.choices()
    }
}

/// The connected MCP client's own model, through sampling. It leaves the machine (the client
/// may send it anywhere), so the router gives it only public requests, redacted.
pub struct ClientModel {
    peer: Peer<RoleServer>,
}

impl ClientModel {
    /// The model behind `peer`.
    pub fn new(peer: Peer<RoleServer>) -> Self {
        Self { peer }
    }
}

#[async_trait::async_trait]
impl Model for ClientModel {
    fn id(&self) -> &str {
        "mcp-client/sampling"
    }

    fn leaves_machine(&self) -> bool {
        true
    }

    fn price(&self) -> Price {
        Price::default()
    }

    fn native_tools(&self) -> bool {
        false
    }

    #[allow(deprecated)]
    async fn chat(&self, req: &Request, on_text: Option<OnText<'_>>) -> Result<Reply, ModelError> {
        // Sampling carries text: tool calls and results travel as text turns.
        let messages: Vec<SamplingMessage> = req
            .messages
            .iter()
            .map(|m| match m.role {
                Role::Assistant if !m.tool_calls.is_empty() => {
                    let c = &m.tool_calls[0];
                    SamplingMessage::assistant_text(serde_json::json!({"action": "call_tool", "tool": c.name, "arguments": c.arguments}).to_string())
                }
                Role::Assistant => SamplingMessage::assistant_text(m.content.clone()),
                Role::User | Role::Tool => SamplingMessage::user_text(m.content.clone()),
            })
            .collect();
        let mut system = req.system.clone();
        if let Some(schema) = &req.schema {
            system.push_str(&format!("\nYour reply must be one JSON object valid against this JSON schema:\n{schema}"));
        }
        let params = CreateMessageRequestParams::new(messages, req.max_tokens.max(1)).with_system_prompt(system);
        let r = self.peer.create_message(params).await.map_err(|e| ModelError::Rejected(format!("the MCP client's sampling failed: {e}")))?;
        let text = r.message.content.first().and_then(|c| c.as_text()).map(|t| t.text.clone()).unwrap_or_default();
        if let Some(cb) = on_text {
            cb(&text);
        }
        Ok(Reply { text, tool_calls: Vec::new(), usage: Default::default() })
    }
}

/// A change the task proposed.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ProposedChange {
    /// `chg-N`.
    pub id: String,
    /// Its state (`awaiting_approval`, or `approved` under a standing approval).
    pub state: String,
    /// Its issue number: the N of `fixes #N`.
    pub issue: Option<u64>,
    /// The plan digest a human approves.
    pub plan_digest: String,
}

/// What a task produced.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TaskView {
    /// `answer`, `proposal`, `clarify` or `refused`.
    pub kind: String,
    /// The answer, the question, or why it was refused.
    pub text: String,
    /// For a proposal: the workflow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// For a proposal: its target, as the inventory names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// For a proposal: the workflow's parameter values (those from the target filled by labops).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<serde_json::Map<String, serde_json::Value>>,
    /// Entities the answer is about, or real names a clarifying question offers.
    pub entities: Vec<String>,
    /// The change record, when a proposal was accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<ProposedChange>,
    /// Why a drafted proposal did not become a change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_error: Option<String>,
    /// Tools the model called, in order.
    pub tools_called: Vec<String>,
    /// Model calls (repairs included) and which providers served them.
    pub model_calls: u32,
    /// Providers that served, in order.
    pub providers: Vec<String>,
    /// US dollars.
    pub cost_usd: f64,
    /// Names the model produced that do not exist in the lab.
    pub grounding_errors: Vec<String>,
}

impl From<TaskResult> for TaskView {
    fn from(r: TaskResult) -> Self {
        let mut tools_called = Vec::new();
        let mut providers = Vec::new();
        for e in &r.report.events {
            match e {
                labops_ai::agent::Event::Tool { name, .. } => tools_called.push(name.clone()),
                labops_ai::agent::Event::Model { provider, .. } => {
                    if !providers.contains(provider) {
                        providers.push(provider.clone())
                    }
                }
                labops_ai::agent::Event::Repair { .. } => {}
            }
        }
        let values = match &r.report.outcome {
            Outcome::Proposal(d) => Some(d.values.clone()),
            _ => None,
        };
        let (kind, text, workflow, target, entities) = match &r.report.outcome {
            Outcome::Answer { text, entities } => ("answer", text.clone(), None, None, entities.clone()),
            Outcome::Proposal(d) => ("proposal", format!("{}\n{}", d.title, d.why), Some(d.workflow.clone()), d.target.clone(), Vec::new()),
            Outcome::Clarify { question, candidates } => ("clarify", question.clone(), None, None, candidates.clone()),
            Outcome::Refused { reason } => ("refused", reason.clone(), None, None, Vec::new()),
        };
        TaskView {
            kind: kind.into(),
            text,
            workflow,
            target,
            values,
            entities,
            change: r.change.as_ref().map(|c| ProposedChange {
                id: c.change.id.clone(),
                state: c.change.state.as_str().to_string(),
                issue: c.change.issue,
                plan_digest: c.plan_digest.clone(),
            }),
            change_error: r.change_error,
            tools_called,
            model_calls: r.report.model_calls,
            providers,
            cost_usd: r.report.cost_usd,
            grounding_errors: r.report.grounding_errors,
        }
    }
}
