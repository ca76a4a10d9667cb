//! The model providers, on the genai crate: Ollama's native API, any OpenAI-compatible server
//! (llama.cpp, vLLM, LM Studio), Anthropic's Messages API and OpenAI's Chat Completions API,
//! each with tool calls and streaming. labops passes its own HTTP client (rustls on ring, its
//! timeouts) and pins every request to the configured endpoint and adapter: genai never guesses
//! a provider from a model name here.

use std::time::{Duration, Instant};

use futures::StreamExt;
use genai::ModelIden;
use genai::adapter::AdapterKind;
use genai::chat::{
    ChatMessage, ChatOptions, ChatRequest, ChatResponseFormat, ChatStreamEvent, JsonSpec, Tool, ToolCall as GToolCall, ToolResponse,
};
use genai::resolver::{AuthData, Endpoint, ServiceTargetResolver};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::model::{Model, ModelError, OnText, Price, Reply, Request, Role, ToolCall, Usage};

/// A provider's API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// Ollama's native API (`/api/chat`).
    Ollama,
    /// Any OpenAI-compatible server (`/v1/chat/completions`).
    OpenaiCompatible,
    /// Anthropic's Messages API.
    Anthropic,
    /// OpenAI's Chat Completions API.
    Openai,
}

impl ProviderKind {
    /// Its name in config and routes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ollama => "ollama",
            Self::OpenaiCompatible => "openai-compatible",
            Self::Anthropic => "anthropic",
            Self::Openai => "openai",
        }
    }

    /// The public API's base URL, for the cloud providers.
    pub fn default_url(self) -> Option<&'static str> {
        match self {
            Self::Anthropic => Some("https://api.anthropic.com"),
            Self::Openai => Some("https://api.openai.com"),
            Self::Ollama | Self::OpenaiCompatible => None,
        }
    }

    fn adapter(self) -> AdapterKind {
        match self {
            Self::Ollama => AdapterKind::Ollama,
            Self::OpenaiCompatible | Self::Openai => AdapterKind::OpenAI,
            Self::Anthropic => AdapterKind::Anthropic,
        }
    }
}

/// One configured model.
#[derive(Debug, Clone)]
pub struct ProviderSpec {
    /// Its API.
    pub kind: ProviderKind,
    /// Base URL (`http://still-fawn.homelab:11434`, `http://127.0.0.1:8000/v1`); the cloud
    /// providers default to their public API.
    pub url: String,
    /// Model name.
    pub model: String,
    /// API key, when the server needs one.
    pub api_key: Option<String>,
    /// Whether requests leave the machine (the cloud providers).
    pub leaves_machine: bool,
    /// Price per million tokens.
    pub price: Price,
    /// Longest a call may take, streaming included.
    pub timeout: Duration,
    /// Native tool calls (capable models) rather than one JSON object per step (small ones).
    pub native_tools: bool,
}

/// The genai endpoint for a base URL: genai appends `api/chat`, `chat/completions` or
/// `messages` to it.
fn endpoint(kind: ProviderKind, url: &str) -> String {
    let base = url.trim_end_matches('/');
    match kind {
        ProviderKind::Ollama => format!("{base}/"),
        _ if base.ends_with("/v1") => format!("{base}/"),
        _ => format!("{base}/v1/"),
    }
}

/// A model served through genai.
pub struct GenaiModel {
    client: genai::Client,
    spec: ProviderSpec,
    id: String,
    latency_target: Option<Duration>,
}

impl std::fmt::Debug for GenaiModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenaiModel").field("id", &self.id).field("url", &self.spec.url).finish_non_exhaustive()
    }
}

impl GenaiModel {
    /// A client for `spec` on `http` (labops' own reqwest client: TLS roots, proxies).
    pub fn new(spec: ProviderSpec, http: reqwest::Client) -> Result<Self, ModelError> {
        let (kind, base, key, model) = (spec.kind, endpoint(spec.kind, &spec.url), spec.api_key.clone(), spec.model.clone());
        let resolver = ServiceTargetResolver::from_resolver_fn(move |mut t: genai::ServiceTarget| -> Result<genai::ServiceTarget, genai::resolver::Error> {
            t.endpoint = Endpoint::from_owned(base.clone());
            // Local servers take any key (llama.cpp checks one only when started with --api-key).
            t.auth = AuthData::from_single(key.clone().unwrap_or_else(|| "labops".into()));
            t.model = ModelIden::new(kind.adapter(), model.clone());
            Ok(t)
        });
        let client = genai::Client::builder().with_reqwest(http).with_service_target_resolver(resolver)
            .build()
            .map_err(|e| ModelError::BadReply(format!("the {} client cannot be built: {e}", spec.kind.as_str())))?;
        let id = format!("{}/{}", spec.kind.as_str(), spec.model);
        Ok(Self { client, spec, id, latency_target: None })
    }

    /// Sets how fast its answers should come (the router's latency target).
    pub fn with_latency_target(mut self, target: Option<Duration>) -> Self {
        self.latency_target = target;
        self
    }

    fn request(&self, req: &Request) -> (ChatRequest, ChatOptions) {
        let mut messages = Vec::with_capacity(req.messages.len());
        for m in &req.messages {
            messages.push(match m.role {
                Role::User => ChatMessage::user(m.content.clone()),
                Role::Assistant if m.tool_calls.is_empty() => ChatMessage::assistant(m.content.clone()),
                Role::Assistant => ChatMessage::from(
                    m.tool_calls
                        .iter()
                        .map(|c| GToolCall { call_id: c.id.clone(), fn_name: c.name.clone(), fn_arguments: c.arguments.clone(), thought_signatures: None })
                        .collect::<Vec<_>>(),
                ),
                Role::Tool => ChatMessage::from(ToolResponse::new(m.tool_call_id.clone().unwrap_or_default(), m.content.clone())),
            });
        }
        let mut chat = ChatRequest::new(messages);
        if !req.system.is_empty() {
            chat = chat.with_system(req.system.clone());
        }
        if !req.tools.is_empty() {
            chat = chat.with_tools(
                req.tools.iter().map(|t| Tool::new(t.name.clone()).with_description(t.description.clone()).with_schema(t.input_schema.clone())).collect::<Vec<_>>(),
            );
        }
        let mut opts = ChatOptions::default()
            .with_max_tokens(req.max_tokens.max(1))
            .with_temperature(0.0)
            .with_capture_usage(true)
            .with_capture_content(true)
            .with_capture_tool_calls(true);
        if let Some(schema) = &req.schema {
            opts = match self.spec.kind {
                // genai's Ollama adapter sends `format: "json"` (no schema): the schema is in the
                // prompt, and the agent validates and repairs.
                ProviderKind::Ollama => opts.with_response_format(ChatResponseFormat::JsonMode),
                // llama.cpp (and llama-cpp-python, which knows only this form) constrain decoding
                // to `response_format: {type: json_object, schema}`; other servers read it as
                // JSON mode.
                ProviderKind::OpenaiCompatible => opts.with_extra_body(json!({"response_format": {"type": "json_object", "schema": schema}})),
                ProviderKind::Openai | ProviderKind::Anthropic => opts.with_response_format(JsonSpec::new("labops_answer", schema.clone())),
            };
        }
        (chat, opts)
    }
}

fn error(e: genai::Error) -> ModelError {
    let text = e.to_string();
    let short: String = text.chars().take(400).collect();
    let lower = text.to_ascii_lowercase();
    if lower.contains("error sending request") || lower.contains("connect") || lower.contains("timed out") || lower.contains("dns") {
        ModelError::Unreachable(short)
    } else if lower.contains("status code") || lower.contains("status:") {
        ModelError::Rejected(short)
    } else {
        ModelError::BadReply(short)
    }
}

fn usage(u: &genai::chat::Usage) -> Usage {
    Usage {
        input_tokens: u.prompt_tokens.unwrap_or(0).max(0) as u64,
        output_tokens: u.completion_tokens.unwrap_or(0).max(0) as u64,
    }
}

fn tool_call(c: GToolCall) -> ToolCall {
    // Some servers send arguments as a JSON string; the model meant the object inside.
    let arguments = match c.fn_arguments {
        serde_json::Value::String(s) => serde_json::from_str(&s).unwrap_or(serde_json::Value::String(s)),
        v => v,
    };
    ToolCall { id: c.call_id, name: c.fn_name, arguments }
}

#[async_trait::async_trait]
impl Model for GenaiModel {
    fn id(&self) -> &str {
        &self.id
    }

    fn leaves_machine(&self) -> bool {
        self.spec.leaves_machine
    }

    fn price(&self) -> Price {
        self.spec.price
    }

    fn native_tools(&self) -> bool {
        self.spec.native_tools
    }

    fn latency_target(&self) -> Option<Duration> {
        self.latency_target
    }

    async fn chat(&self, req: &Request, on_text: Option<OnText<'_>>) -> Result<Reply, ModelError> {
        let (chat, opts) = self.request(req);
        let deadline = Instant::now() + self.spec.timeout;
        let timed_out = || ModelError::Unreachable(format!("{} gave no complete answer within {:?}", self.id, self.spec.timeout));
        let Some(on_text) = on_text else {
            let r = tokio::time::timeout_at(deadline.into(), self.client.exec_chat(&self.spec.model, chat, Some(&opts)))
                .await
                .map_err(|_| timed_out())?
                .map_err(error)?;
            let text = r.texts().join("");
            let u = usage(&r.usage);
            return Ok(Reply { text, tool_calls: r.into_tool_calls().into_iter().map(tool_call).collect(), usage: u });
        };
        let mut stream = tokio::time::timeout_at(deadline.into(), self.client.exec_chat_stream(&self.spec.model, chat, Some(&opts)))
            .await
            .map_err(|_| timed_out())?
            .map_err(error)?
            .stream;
        let mut reply = Reply::default();
        let mut streamed = String::new();
        let mut ended = false;
        loop {
            let event = tokio::time::timeout_at(deadline.into(), stream.next()).await.map_err(|_| timed_out())?;
            let Some(event) = event else { break };
            match event.map_err(error)? {
                ChatStreamEvent::Chunk(c) => {
                    on_text(&c.content);
                    streamed.push_str(&c.content);
                }
                ChatStreamEvent::End(end) => {
                    ended = true;
                    if let Some(u) = &end.captured_usage {
                        reply.usage = usage(u);
                    }
                    if let Some(content) = end.captured_content {
                        reply.text = content.texts().into_iter().collect::<Vec<_>>().join("");
                        reply.tool_calls = content.into_tool_calls().into_iter().map(tool_call).collect();
                    }
                }
                _ => {}
            }
        }
        if !ended {
            return Err(ModelError::BadReply(format!("{}'s stream stopped before its end (the server interrupted it, or the connection dropped)", self.id)));
        }
        if reply.text.is_empty() {
            reply.text = streamed;
        }
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_end_where_genai_appends_its_paths() {
        assert_eq!(endpoint(ProviderKind::Ollama, "http://still-fawn:11434"), "http://still-fawn:11434/");
        assert_eq!(endpoint(ProviderKind::OpenaiCompatible, "http://127.0.0.1:8000/v1"), "http://127.0.0.1:8000/v1/");
        assert_eq!(endpoint(ProviderKind::OpenaiCompatible, "http://127.0.0.1:8000/"), "http://127.0.0.1:8000/v1/");
        assert_eq!(endpoint(ProviderKind::Anthropic, "https://api.anthropic.com"), "https://api.anthropic.com/v1/");
    }

    #[test]
    fn cost_is_per_million_tokens() {
        let p = Price { input_per_mtok: 3.0, output_per_mtok: 15.0 };
        let c = p.cost(Usage { input_tokens: 1_000_000, output_tokens: 100_000 });
        assert!((c - 4.5).abs() < 1e-9, "{c}");
    }
}
