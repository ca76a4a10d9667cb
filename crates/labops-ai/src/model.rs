//! What labops says to a model and what it gets back, independent of any provider's wire
//! format, and the [`Model`] trait every provider implements (genai's clients in
//! [`crate::provider`]; the MCP client's own model, through sampling, in the server).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The human, or labops speaking for the task.
    User,
    /// The model.
    Assistant,
    /// A tool's result, answering one of the model's tool calls.
    Tool,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// Its text.
    pub content: String,
    /// The tool calls of an assistant message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a tool message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    /// A user message.
    pub fn user(text: impl Into<String>) -> Self {
        Self { role: Role::User, content: text.into(), tool_calls: Vec::new(), tool_call_id: None }
    }

    /// An assistant message with text.
    pub fn assistant(text: impl Into<String>) -> Self {
        Self { role: Role::Assistant, content: text.into(), tool_calls: Vec::new(), tool_call_id: None }
    }

    /// An assistant message that calls tools.
    pub fn tool_calls(calls: Vec<ToolCall>) -> Self {
        Self { role: Role::Assistant, content: String::new(), tool_calls: calls, tool_call_id: None }
    }

    /// A tool's result.
    pub fn tool_result(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: Role::Tool, content: content.into(), tool_calls: Vec::new(), tool_call_id: Some(call_id.into()) }
    }
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Its name.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON schema of its arguments (an object).
    pub input_schema: Value,
}

/// A tool call the model made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id for it (answered by [`Message::tool_result`]).
    pub id: String,
    /// The tool.
    pub name: String,
    /// Its arguments.
    pub arguments: Value,
}

/// One request to a model.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Request {
    /// The system prompt.
    pub system: String,
    /// The conversation, oldest first.
    pub messages: Vec<Message>,
    /// Tools offered (native tool calls); empty for none.
    pub tools: Vec<ToolSpec>,
    /// When set, the answer must be one JSON value valid against this schema (constrained
    /// decoding where the provider has it).
    pub schema: Option<Value>,
    /// Most tokens to generate.
    pub max_tokens: u32,
}

impl Request {
    /// Every text of the request, for classification and size limits.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.system.as_str()).chain(self.messages.iter().map(|m| m.content.as_str()))
    }
}

/// Tokens a call used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
}

/// A model's answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Reply {
    /// Its text (all text parts, joined).
    pub text: String,
    /// Its tool calls.
    pub tool_calls: Vec<ToolCall>,
    /// Tokens used, as the provider reports them.
    pub usage: Usage,
}

/// What a model costs, in US dollars per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Price {
    /// Per million prompt tokens.
    pub input_per_mtok: f64,
    /// Per million generated tokens.
    pub output_per_mtok: f64,
}

impl Price {
    /// The cost of `usage`.
    pub fn cost(&self, usage: Usage) -> f64 {
        (usage.input_tokens as f64 * self.input_per_mtok + usage.output_tokens as f64 * self.output_per_mtok) / 1e6
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The server could not be reached (down, no network, refused, timed out).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The server answered with an error.
    #[error("the provider answered an error: {0}")]
    Rejected(String),
    /// The answer could not be read.
    #[error("unreadable answer: {0}")]
    BadReply(String),
}

/// Called with each piece of text as it streams in.
pub type OnText<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// A model labops can call.
#[async_trait::async_trait]
pub trait Model: Send + Sync {
    /// `provider/model`, as routes and the audit name it.
    fn id(&self) -> &str;
    /// Whether a request to it leaves the machine (cloud, the MCP client's model).
    fn leaves_machine(&self) -> bool;
    /// Its price (zero for the owner's hardware).
    fn price(&self) -> Price;
    /// Whether it picks tools well through native tool calls; otherwise the agent asks it for
    /// one schema-constrained JSON object per step (small local models).
    fn native_tools(&self) -> bool {
        true
    }
    /// How fast its answers should come; slower on average, the router prefers another model
    /// where privacy allows.
    fn latency_target(&self) -> Option<std::time::Duration> {
        None
    }
    /// One call. With `on_text`, the answer streams and each piece of text is passed to it as it
    /// arrives; the reply is the same either way.
    async fn chat(&self, req: &Request, on_text: Option<OnText<'_>>) -> Result<Reply, ModelError>;
}

/// Largest text labops sends to a model in one request, in bytes: tool results and documents
/// are cut to fit, with a note.
pub const MAX_REQUEST_TEXT: usize = 256 * 1024;

/// Cuts untrusted text to `max` bytes on a character boundary, saying so.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n[... {} more bytes cut by labops]", &text[..end], text.len() - end)
}
