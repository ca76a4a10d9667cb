//! A scripted LLM server on `127.0.0.1` that speaks three real wire formats, so code that
//! talks to a model (the AI engine, through the `genai` client) can be tested without one.
//!
//! [`ScriptedLlm::start`] takes a list of [`Turn`]s and answers every chat request with the
//! next one, in whichever format the request came in:
//!
//! - **Ollama native API**: `POST /api/chat` (streams NDJSON unless the request says
//!   `"stream": false`, as Ollama does), `GET /api/tags`, and `GET /` ("Ollama is running").
//! - **OpenAI Chat Completions** (also spoken by llama.cpp, vLLM and LM Studio):
//!   `POST /v1/chat/completions` (SSE `data:` chunks and `data: [DONE]` when
//!   `"stream": true`, a usage chunk when `stream_options.include_usage` is set) and
//!   `GET /v1/models`.
//! - **Anthropic Messages**: `POST /v1/messages` (SSE `event:`/`data:` pairs from
//!   `message_start` to `message_stop` when `"stream": true`) and `GET /v1/models` (answered
//!   in Anthropic's shape when the request carries an `anthropic-version` header).
//!
//! Every request is recorded ([`ScriptedLlm::requests`]). Answers are deterministic: tool
//! call ids count up across the server's life (`call_1`, `call_2`, ... for Ollama and OpenAI,
//! `toolu_1`, ... for Anthropic), timestamps are fixed, and token counts are word counts:
//!
//! - input tokens: the whitespace-separated words of every `content` and `text` string in
//!   `messages` (and in Anthropic's `system`), at least 1;
//! - output tokens: the words of a [`Turn::Text`], or for [`Turn::ToolCalls`] the words of each
//!   tool name plus those of its arguments as compact JSON, at least 1.
//!
//! Requests a real server rejects are rejected the same way, in the provider's own error
//! shape, without using up a turn: a body that is not JSON (400) or larger than 4 MiB (413),
//! no `model` (400), no `messages` or an empty list (400; Ollama instead answers an empty
//! `done_reason: "load"` reply, as it does for a model-load request), and for Anthropic no
//! `anthropic-version` header or no `max_tokens` (400). When the script has run out, chat
//! requests answer 500 with an error that says so.
//!
//! To model a server that is down, drop the [`ScriptedLlm`]: the port is closed at once (new
//! connections are refused), idle keep-alive connections are closed, and a response being
//! written finishes.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use labops_testkit::llm::{ScriptedLlm, Turn};
//! use serde_json::json;
//!
//! let llm = ScriptedLlm::start(vec![
//!     Turn::tool_call("get_node_status", json!({"node": "pve-1"})),
//!     Turn::text("pve-1 is healthy."),
//! ])
//! .await?;
//! // Point the client at the base URL: `{url}/` for Ollama, `{url}/v1/` for OpenAI and Anthropic.
//! let base = llm.url();
//! # let _ = base;
//! // ... run the code under test, then:
//! assert_eq!(llm.remaining(), 0);
//! assert_eq!(llm.requests()[0].path, "/api/chat");
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// The largest request body accepted; larger ones answer 413.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The model listed by `GET /api/tags` and `GET /v1/models` until [`ScriptedLlm::set_models`].
pub const DEFAULT_MODEL: &str = "scripted";

/// `created_at` in Ollama and Anthropic answers (fixed, so answers are deterministic).
const CREATED_AT: &str = "2025-01-01T00:00:00Z";
/// `created` in OpenAI answers (fixed, so answers are deterministic).
const CREATED_UNIX: u64 = 1_735_689_600;
/// Characters per tool-argument fragment in streamed OpenAI and Anthropic answers.
const ARGUMENT_FRAGMENT_CHARS: usize = 12;

/// One scripted answer of the model.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Turn {
    /// The model answers with this text and stops (`stop` / `end_turn`).
    Text(String),
    /// The model calls these tools, each a name and its arguments object (`tool_calls` /
    /// `tool_use`). Ids are generated: `call_N` (Ollama, OpenAI) or `toolu_N` (Anthropic).
    ToolCalls(Vec<(String, Value)>),
    /// The server answers this HTTP status with this message in the provider's error shape
    /// (OpenAI `{"error":{"message","type"}}`, Anthropic `{"type":"error","error":{..}}`,
    /// Ollama `{"error":"..."}`), before any streaming starts.
    Fail(u16, String),
}

impl Turn {
    /// A [`Turn::Text`].
    pub fn text(text: impl Into<String>) -> Self {
        Turn::Text(text.into())
    }

    /// A [`Turn::ToolCalls`] with a single call.
    pub fn tool_call(name: impl Into<String>, arguments: Value) -> Self {
        Turn::ToolCalls(vec![(name.into(), arguments)])
    }

    /// A [`Turn::Fail`].
    pub fn fail(status: u16, message: impl Into<String>) -> Self {
        Turn::Fail(status, message.into())
    }
}

/// One request the server received.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Captured {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Path without the query, e.g. `/v1/chat/completions`.
    pub path: String,
    /// Headers in arrival order, names in lowercase.
    pub headers: Vec<(String, String)>,
    /// The JSON body; `Null` when there was none (or it was over [`MAX_BODY_BYTES`]), a string
    /// holding the raw text when it was not JSON.
    pub body: Value,
}

impl Captured {
    /// The first value of a header (name matched without regard to case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A running scripted LLM server on `127.0.0.1`.
///
/// Dropping it stops the server: the listening port is closed at once (on Unix; elsewhere as
/// soon as the runtime drops the aborted server task), so new connections are refused — use
/// this to test "the model server is down". Idle keep-alive connections are closed too, and a
/// response already being written finishes.
pub struct ScriptedLlm {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: JoinHandle<()>,
    /// A second handle on the listening socket, used to shut it down synchronously on drop.
    #[cfg(unix)]
    listen_socket: Option<std::net::TcpListener>,
}

impl std::fmt::Debug for ScriptedLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedLlm")
            .field("url", &self.url())
            .field("remaining", &self.remaining())
            .finish_non_exhaustive()
    }
}

impl ScriptedLlm {
    /// Starts a server on an OS-chosen port that answers chat requests with `turns`, in
    /// order, in whichever wire format each request uses.
    pub async fn start(turns: Vec<Turn>) -> std::io::Result<Self> {
        let std_listener = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        #[cfg(unix)]
        let listen_socket = Some(std_listener.try_clone()?);
        let listener = tokio::net::TcpListener::from_std(std_listener)?;

        let shared = Arc::new(Shared {
            state: Mutex::new(ScriptState {
                turns: turns.into(),
                answered: 0,
                requests: Vec::new(),
                models: vec![DEFAULT_MODEL.to_string()],
                next_tool_call: 1,
                next_response: 1,
            }),
        });
        let app =
            Router::new().fallback(dispatch).layer(DefaultBodyLimit::max(MAX_BODY_BYTES)).with_state(shared.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "scripted LLM server stopped with an error");
            }
        });
        Ok(Self {
            shared,
            addr,
            task,
            #[cfg(unix)]
            listen_socket,
        })
    }

    /// The base URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far (chat requests, model lists, rejected and unknown
    /// requests alike), oldest first.
    pub fn requests(&self) -> Vec<Captured> {
        self.shared.lock().requests.clone()
    }

    /// Appends a turn to the end of the script.
    pub fn push(&self, turn: Turn) {
        self.shared.lock().turns.push_back(turn);
    }

    /// How many scripted turns have not been used yet.
    pub fn remaining(&self) -> usize {
        self.shared.lock().turns.len()
    }

    /// How many chat requests were answered with a scripted turn so far.
    pub fn answered(&self) -> usize {
        self.shared.lock().answered
    }

    /// Replaces the model names listed by `GET /api/tags` and `GET /v1/models` (default:
    /// [`DEFAULT_MODEL`]). Chat requests are answered whatever model they name.
    pub fn set_models(&self, models: Vec<String>) {
        self.shared.lock().models = models;
    }
}

impl Drop for ScriptedLlm {
    fn drop(&mut self) {
        // Aborting the accept loop closes the listener only once the runtime gets to the
        // task; shutting the socket down first refuses new connections right away.
        #[cfg(unix)]
        if let Some(socket) = self.listen_socket.take() {
            let socket = std::net::TcpStream::from(std::os::fd::OwnedFd::from(socket));
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Server state

struct Shared {
    state: Mutex<ScriptState>,
}

struct ScriptState {
    turns: VecDeque<Turn>,
    answered: usize,
    requests: Vec<Captured>,
    models: Vec<String>,
    next_tool_call: u64,
    next_response: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ScriptState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The wire format of a request, which decides the shape of its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    Ollama,
    OpenAi,
    Anthropic,
}

impl Wire {
    fn tool_call_prefix(self) -> &'static str {
        match self {
            Wire::Anthropic => "toolu_",
            Wire::Ollama | Wire::OpenAi => "call_",
        }
    }
}

/// A turn with its ids given out, ready to be rendered.
enum Reply {
    Text(String),
    Tools(Vec<ToolUse>),
}

struct ToolUse {
    id: String,
    name: String,
    arguments: Value,
}

/// What every answer needs besides the reply.
struct Meta {
    model: String,
    response_id: u64,
    input_tokens: u64,
    output_tokens: u64,
}

// ---------------------------------------------------------------------------------------------
// Dispatch

async fn dispatch(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let path = uri.path().to_string();
    let is_anthropic = headers.contains_key("anthropic-version");
    let (captured_body, body) = match body {
        Ok(bytes) if bytes.is_empty() => (Value::Null, Ok(Value::Null)),
        Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) => (v.clone(), Ok(v)),
            Err(e) => (
                Value::String(String::from_utf8_lossy(&bytes).into_owned()),
                Err((StatusCode::BAD_REQUEST, format!("the request body is not valid JSON: {e}"))),
            ),
        },
        Err(rejection) => (
            Value::Null,
            Err((
                rejection.status(),
                format!("the request body could not be read (the limit is {MAX_BODY_BYTES} bytes): {rejection}"),
            )),
        ),
    };
    shared.lock().requests.push(Captured {
        method: method.to_string(),
        path: path.clone(),
        headers: headers
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body: captured_body,
    });

    let (wire, want) = match path.as_str() {
        "/api/chat" => (Wire::Ollama, Method::POST),
        "/v1/chat/completions" => (Wire::OpenAi, Method::POST),
        "/v1/messages" => (Wire::Anthropic, Method::POST),
        "/api/tags" => (Wire::Ollama, Method::GET),
        "/v1/models" if is_anthropic => (Wire::Anthropic, Method::GET),
        "/v1/models" => (Wire::OpenAi, Method::GET),
        "/" if method == Method::GET || method == Method::HEAD => return "Ollama is running".into_response(),
        _ => {
            let wire = if is_anthropic {
                Wire::Anthropic
            } else if path.starts_with("/api/") {
                Wire::Ollama
            } else {
                Wire::OpenAi
            };
            let msg = format!(
                "the scripted LLM server has no route {method} {path}; it serves POST /api/chat, GET /api/tags \
                 (Ollama), POST /v1/chat/completions, GET /v1/models (OpenAI) and POST /v1/messages (Anthropic): \
                 check the client's base URL"
            );
            return error_response(wire, StatusCode::NOT_FOUND, &msg);
        }
    };
    if method != want {
        let msg = format!("{path} answers {want} requests only, not {method}");
        return error_response(wire, StatusCode::METHOD_NOT_ALLOWED, &msg);
    }
    if want == Method::GET {
        let models = shared.lock().models.clone();
        return JsonBody(model_list(wire, &models)).into_response();
    }
    let body = match body {
        Ok(b) => b,
        Err((status, msg)) => return error_response(wire, status, &msg),
    };
    chat(&shared, wire, &headers, body)
}

/// Answers one chat request: validates it, takes the next turn and renders it.
fn chat(shared: &Shared, wire: Wire, headers: &HeaderMap, body: Value) -> Response {
    if let Err(problem) = validate(wire, headers, &body) {
        return match problem {
            Problem::Reject(msg) => error_response(wire, StatusCode::BAD_REQUEST, &msg),
            Problem::OllamaLoad => JsonBody(ollama_load_reply(&body)).into_response(),
        };
    }
    let stream_default = wire == Wire::Ollama;
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(stream_default);
    let model = body.get("model").and_then(Value::as_str).unwrap_or_default().to_string();

    let (reply, meta) = {
        let mut st = shared.lock();
        let Some(turn) = st.turns.pop_front() else {
            let msg = format!(
                "scripted LLM: the script has no more turns (it answered {} chat requests); the code under test \
                 asked the model more often than the test expected, or the test should push more turns",
                st.answered
            );
            drop(st);
            return error_response(wire, StatusCode::INTERNAL_SERVER_ERROR, &msg);
        };
        st.answered += 1;
        let reply = match turn {
            Turn::Fail(status, msg) => {
                drop(st);
                let (status, msg) = match StatusCode::from_u16(status) {
                    Ok(s) => (s, msg),
                    Err(_) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("{msg} (scripted Turn::Fail had the invalid HTTP status {status}; answered 500)"),
                    ),
                };
                return error_response(wire, status, &msg);
            }
            Turn::Text(text) => Reply::Text(text),
            Turn::ToolCalls(calls) => Reply::Tools(
                calls
                    .into_iter()
                    .map(|(name, arguments)| {
                        let id = format!("{}{}", wire.tool_call_prefix(), st.next_tool_call);
                        st.next_tool_call += 1;
                        ToolUse { id, name, arguments }
                    })
                    .collect(),
            ),
        };
        let response_id = st.next_response;
        st.next_response += 1;
        let meta = Meta { model, response_id, input_tokens: input_tokens(&body), output_tokens: output_tokens(&reply) };
        (reply, meta)
    };

    match (wire, stream) {
        (Wire::Ollama, false) => JsonBody(ollama_reply(&reply, &meta)).into_response(),
        (Wire::Ollama, true) => streamed("application/x-ndjson", ollama_stream(&reply, &meta)),
        (Wire::OpenAi, false) => JsonBody(openai_reply(&reply, &meta)).into_response(),
        (Wire::OpenAi, true) => {
            let include_usage = body.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
            streamed("text/event-stream", openai_stream(&reply, &meta, include_usage))
        }
        (Wire::Anthropic, false) => JsonBody(anthropic_reply(&reply, &meta)).into_response(),
        (Wire::Anthropic, true) => streamed("text/event-stream", anthropic_stream(&reply, &meta)),
    }
}

enum Problem {
    /// 400 with this message.
    Reject(String),
    /// Ollama's answer to a chat request without messages: it loads the model.
    OllamaLoad,
}

fn validate(wire: Wire, headers: &HeaderMap, body: &Value) -> Result<(), Problem> {
    let reject = |msg: &str| Err(Problem::Reject(msg.to_string()));
    if !body.is_object() {
        return reject("the request body must be a JSON object");
    }
    if wire == Wire::Anthropic && !headers.contains_key("anthropic-version") {
        return reject("anthropic-version: header is required");
    }
    if !body.get("model").is_some_and(|m| m.as_str().is_some_and(|s| !s.is_empty())) {
        return reject(match wire {
            Wire::Ollama => "model is required",
            Wire::OpenAi => "you must provide a model parameter",
            Wire::Anthropic => "model: Field required",
        });
    }
    let messages = body.get("messages");
    match (wire, messages) {
        (Wire::Ollama, None | Some(Value::Null)) => return Err(Problem::OllamaLoad),
        (Wire::Ollama, Some(Value::Array(m))) if m.is_empty() => return Err(Problem::OllamaLoad),
        (Wire::OpenAi, None) => return reject("Missing required parameter: 'messages'."),
        (Wire::Anthropic, None) => return reject("messages: Field required"),
        (_, Some(Value::Array(m))) if m.is_empty() => {
            return reject(match wire {
                Wire::Anthropic => "messages: at least one message is required",
                _ => "Invalid 'messages': empty array. Expected an array with minimum length 1.",
            });
        }
        (_, Some(Value::Array(_))) => {}
        _ => return reject("messages must be an array of message objects"),
    }
    if wire == Wire::Anthropic && !body.get("max_tokens").is_some_and(Value::is_u64) {
        return reject("max_tokens: Field required (a positive integer)");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Token counts

fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// Words in every `content` and `text` string under `v`.
fn text_words(v: &Value) -> u64 {
    match v {
        Value::String(s) => words(s),
        Value::Array(items) => items.iter().map(text_words).sum(),
        Value::Object(map) => {
            map.iter().filter(|(k, _)| matches!(k.as_str(), "content" | "text")).map(|(_, v)| text_words(v)).sum()
        }
        _ => 0,
    }
}

fn input_tokens(body: &Value) -> u64 {
    let system = body.get("system").map(text_words).unwrap_or(0);
    let messages = body.get("messages").map(text_words).unwrap_or(0);
    (system + messages).max(1)
}

fn output_tokens(reply: &Reply) -> u64 {
    let n = match reply {
        Reply::Text(t) => words(t),
        Reply::Tools(calls) => calls.iter().map(|c| words(&c.name) + words(&c.arguments.to_string())).sum(),
    };
    n.max(1)
}

// ---------------------------------------------------------------------------------------------
// Responses shared by the formats

/// Like `axum::Json`, with the `content-type` every provider sends.
struct JsonBody(Value);

impl IntoResponse for JsonBody {
    fn into_response(self) -> Response {
        let mut resp = Body::from(self.0.to_string()).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp
    }
}

fn streamed(content_type: &'static str, chunks: Vec<String>) -> Response {
    let stream = futures::stream::iter(chunks.into_iter().map(|c| Ok::<_, Infallible>(Bytes::from(c))));
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

fn error_response(wire: Wire, status: StatusCode, message: &str) -> Response {
    let body = match wire {
        Wire::Ollama => json!({ "error": message }),
        Wire::OpenAi => {
            let (typ, code) = match status.as_u16() {
                401 => ("invalid_request_error", json!("invalid_api_key")),
                404 => ("invalid_request_error", json!("not_found")),
                429 => ("requests", json!("rate_limit_exceeded")),
                s if s >= 500 => ("server_error", Value::Null),
                _ => ("invalid_request_error", Value::Null),
            };
            json!({ "error": { "message": message, "type": typ, "param": null, "code": code } })
        }
        Wire::Anthropic => {
            let typ = match status.as_u16() {
                400 | 405 => "invalid_request_error",
                401 => "authentication_error",
                402 => "billing_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                s if s >= 500 => "api_error",
                _ => "invalid_request_error",
            };
            json!({ "type": "error", "error": { "type": typ, "message": message } })
        }
    };
    (status, JsonBody(body)).into_response()
}

fn model_list(wire: Wire, models: &[String]) -> Value {
    match wire {
        Wire::Ollama => json!({
            "models": models.iter().map(|m| json!({
                "name": m,
                "model": m,
                "modified_at": CREATED_AT,
                "size": 0,
                "digest": "0".repeat(64),
                "details": {
                    "parent_model": "", "format": "gguf", "family": "scripted", "families": ["scripted"],
                    "parameter_size": "0B", "quantization_level": "none"
                }
            })).collect::<Vec<_>>()
        }),
        Wire::OpenAi => json!({
            "object": "list",
            "data": models.iter().map(|m| json!({
                "id": m, "object": "model", "created": CREATED_UNIX, "owned_by": "labops-testkit"
            })).collect::<Vec<_>>()
        }),
        Wire::Anthropic => json!({
            "data": models.iter().map(|m| json!({
                "type": "model", "id": m, "display_name": m, "created_at": CREATED_AT
            })).collect::<Vec<_>>(),
            "has_more": false,
            "first_id": models.first(),
            "last_id": models.last(),
        }),
    }
}

/// Splits text into streamed pieces: each word with the whitespace after it.
/// The pieces concatenate to the text.
fn text_pieces(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut seen_word = false;
    let mut prev_ws = false;
    for (i, c) in text.char_indices() {
        let ws = c.is_whitespace();
        if !ws && prev_ws && seen_word {
            out.push(&text[start..i]);
            start = i;
        }
        seen_word |= !ws;
        prev_ws = ws;
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// Splits a string into fragments of at most `n` characters (at least one fragment).
fn fragments(s: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    if chars.is_empty() {
        return vec![String::new()];
    }
    chars.chunks(n.max(1)).map(|c| c.iter().collect()).collect()
}

// ---------------------------------------------------------------------------------------------
// Ollama

fn ollama_message(reply: &Reply) -> Value {
    match reply {
        Reply::Text(t) => json!({ "role": "assistant", "content": t }),
        Reply::Tools(calls) => json!({
            "role": "assistant",
            "content": "",
            "tool_calls": calls.iter().enumerate().map(|(i, c)| json!({
                "id": c.id,
                "function": { "index": i, "name": c.name, "arguments": c.arguments }
            })).collect::<Vec<_>>()
        }),
    }
}

fn ollama_done(meta: &Meta, mut line: Value) -> Value {
    let extra = json!({
        "done_reason": "stop",
        "done": true,
        "total_duration": 1_000_000u64,
        "load_duration": 100_000u64,
        "prompt_eval_count": meta.input_tokens,
        "prompt_eval_duration": 200_000u64,
        "eval_count": meta.output_tokens,
        "eval_duration": 700_000u64,
    });
    if let (Some(obj), Value::Object(extra)) = (line.as_object_mut(), extra) {
        obj.extend(extra);
    }
    line
}

fn ollama_reply(reply: &Reply, meta: &Meta) -> Value {
    ollama_done(meta, json!({ "model": meta.model, "created_at": CREATED_AT, "message": ollama_message(reply) }))
}

fn ollama_stream(reply: &Reply, meta: &Meta) -> Vec<String> {
    let line =
        |message: Value| json!({ "model": meta.model, "created_at": CREATED_AT, "message": message, "done": false });
    let mut lines = Vec::new();
    match reply {
        Reply::Text(t) => {
            for piece in text_pieces(t) {
                lines.push(line(json!({ "role": "assistant", "content": piece })));
            }
        }
        Reply::Tools(_) => lines.push(line(ollama_message(reply))),
    }
    let mut last = line(json!({ "role": "assistant", "content": "" }));
    if let Some(obj) = last.as_object_mut() {
        obj.remove("done");
    }
    lines.push(ollama_done(meta, last));
    lines.into_iter().map(|l| format!("{l}\n")).collect()
}

fn ollama_load_reply(body: &Value) -> Value {
    json!({
        "model": body.get("model").cloned().unwrap_or(Value::Null),
        "created_at": CREATED_AT,
        "message": { "role": "assistant", "content": "" },
        "done_reason": "load",
        "done": true,
    })
}

// ---------------------------------------------------------------------------------------------
// OpenAI Chat Completions

fn openai_usage(meta: &Meta) -> Value {
    json!({
        "prompt_tokens": meta.input_tokens,
        "completion_tokens": meta.output_tokens,
        "total_tokens": meta.input_tokens + meta.output_tokens,
    })
}

fn openai_reply(reply: &Reply, meta: &Meta) -> Value {
    let (message, finish) = match reply {
        Reply::Text(t) => (json!({ "role": "assistant", "content": t, "refusal": null }), "stop"),
        Reply::Tools(calls) => (
            json!({
                "role": "assistant",
                "content": null,
                "refusal": null,
                "tool_calls": calls.iter().map(|c| json!({
                    "id": c.id,
                    "type": "function",
                    "function": { "name": c.name, "arguments": c.arguments.to_string() }
                })).collect::<Vec<_>>()
            }),
            "tool_calls",
        ),
    };
    json!({
        "id": format!("chatcmpl-{}", meta.response_id),
        "object": "chat.completion",
        "created": CREATED_UNIX,
        "model": meta.model,
        "choices": [{ "index": 0, "message": message, "logprobs": null, "finish_reason": finish }],
        "usage": openai_usage(meta),
    })
}

fn openai_stream(reply: &Reply, meta: &Meta, include_usage: bool) -> Vec<String> {
    let chunk = |choices: Value, usage: Value| {
        let mut c = json!({
            "id": format!("chatcmpl-{}", meta.response_id),
            "object": "chat.completion.chunk",
            "created": CREATED_UNIX,
            "model": meta.model,
            "choices": choices,
        });
        if include_usage {
            c["usage"] = usage;
        }
        format!("data: {c}\n\n")
    };
    let delta = |delta: Value, finish: Value| {
        chunk(json!([{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }]), Value::Null)
    };
    let mut out = Vec::new();
    let finish = match reply {
        Reply::Text(t) => {
            out.push(delta(json!({ "role": "assistant", "content": "", "refusal": null }), Value::Null));
            for piece in text_pieces(t) {
                out.push(delta(json!({ "content": piece }), Value::Null));
            }
            "stop"
        }
        Reply::Tools(calls) => {
            out.push(delta(json!({ "role": "assistant", "content": null, "refusal": null }), Value::Null));
            for (i, c) in calls.iter().enumerate() {
                out.push(delta(
                    json!({ "tool_calls": [{
                        "index": i, "id": c.id, "type": "function",
                        "function": { "name": c.name, "arguments": "" }
                    }] }),
                    Value::Null,
                ));
                for frag in fragments(&c.arguments.to_string(), ARGUMENT_FRAGMENT_CHARS) {
                    out.push(delta(
                        json!({ "tool_calls": [{ "index": i, "function": { "arguments": frag } }] }),
                        Value::Null,
                    ));
                }
            }
            "tool_calls"
        }
    };
    out.push(delta(json!({}), json!(finish)));
    if include_usage {
        out.push(chunk(json!([]), openai_usage(meta)));
    }
    out.push("data: [DONE]\n\n".to_string());
    out
}

// ---------------------------------------------------------------------------------------------
// Anthropic Messages

fn anthropic_reply(reply: &Reply, meta: &Meta) -> Value {
    let (content, stop) = match reply {
        Reply::Text(t) => (json!([{ "type": "text", "text": t }]), "end_turn"),
        Reply::Tools(calls) => (
            Value::Array(
                calls
                    .iter()
                    .map(|c| json!({ "type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments }))
                    .collect(),
            ),
            "tool_use",
        ),
    };
    json!({
        "id": format!("msg_{}", meta.response_id),
        "type": "message",
        "role": "assistant",
        "model": meta.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": null,
        "usage": { "input_tokens": meta.input_tokens, "output_tokens": meta.output_tokens },
    })
}

fn anthropic_stream(reply: &Reply, meta: &Meta) -> Vec<String> {
    let event = |data: Value| {
        let name = data.get("type").and_then(Value::as_str).unwrap_or("message").to_string();
        format!("event: {name}\ndata: {data}\n\n")
    };
    let mut out = vec![
        event(json!({
            "type": "message_start",
            "message": {
                "id": format!("msg_{}", meta.response_id),
                "type": "message",
                "role": "assistant",
                "model": meta.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": { "input_tokens": meta.input_tokens, "output_tokens": 1 },
            }
        })),
        event(json!({ "type": "ping" })),
    ];
    let stop = match reply {
        Reply::Text(t) => {
            out.push(event(json!({
                "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" }
            })));
            for piece in text_pieces(t) {
                out.push(event(json!({
                    "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": piece }
                })));
            }
            out.push(event(json!({ "type": "content_block_stop", "index": 0 })));
            "end_turn"
        }
        Reply::Tools(calls) => {
            for (i, c) in calls.iter().enumerate() {
                out.push(event(json!({
                    "type": "content_block_start", "index": i,
                    "content_block": { "type": "tool_use", "id": c.id, "name": c.name, "input": {} }
                })));
                for frag in fragments(&c.arguments.to_string(), ARGUMENT_FRAGMENT_CHARS) {
                    out.push(event(json!({
                        "type": "content_block_delta", "index": i,
                        "delta": { "type": "input_json_delta", "partial_json": frag }
                    })));
                }
                out.push(event(json!({ "type": "content_block_stop", "index": i })));
            }
            "tool_use"
        }
    };
    out.push(event(json!({
        "type": "message_delta",
        "delta": { "stop_reason": stop, "stop_sequence": null },
        "usage": { "output_tokens": meta.output_tokens },
    })));
    out.push(event(json!({ "type": "message_stop" })));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The workspace reqwest has rustls without a crypto provider, so building any client
    /// (ours, or genai's, which shares the crate) needs one installed, even for plain http.
    fn install_crypto() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }

    fn http() -> reqwest::Client {
        install_crypto();
        reqwest::Client::new()
    }

    async fn start(turns: Vec<Turn>) -> ScriptedLlm {
        ScriptedLlm::start(turns).await.expect("the scripted LLM server starts on loopback")
    }

    struct Answer {
        status: u16,
        content_type: String,
        text: String,
    }

    impl Answer {
        fn json(&self) -> Value {
            serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("answer is not JSON ({e}): {}", self.text))
        }
    }

    async fn send(req: reqwest::RequestBuilder) -> Answer {
        let resp = req.send().await.expect("the request reaches the scripted server");
        let status = resp.status().as_u16();
        let content_type =
            resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let text = resp.text().await.expect("the answer body is readable");
        Answer { status, content_type, text }
    }

    /// POSTs `body` with the headers the provider's clients send.
    async fn post(llm: &ScriptedLlm, path: &str, body: Value) -> Answer {
        let mut req = http().post(format!("{}{path}", llm.url())).json(&body);
        if path == "/v1/messages" {
            req = req.header("anthropic-version", "2023-06-01").header("x-api-key", "test-key");
        } else if path.starts_with("/v1/") {
            req = req.bearer_auth("test-key");
        }
        send(req).await
    }

    /// (event name, data) of every SSE event; data is JSON, or a string such as `[DONE]`.
    fn sse(text: &str) -> Vec<(Option<String>, Value)> {
        assert!(text.ends_with("\n\n"), "an SSE body ends with a blank line: {text:?}");
        text.split("\n\n")
            .filter(|block| !block.is_empty())
            .map(|block| {
                let mut event = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(e) = line.strip_prefix("event: ") {
                        event = Some(e.to_string());
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data.push_str(d);
                    } else {
                        panic!("unexpected SSE line {line:?}");
                    }
                }
                let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                (event, data)
            })
            .collect()
    }

    fn ndjson(text: &str) -> Vec<Value> {
        assert!(text.ends_with('\n'), "NDJSON ends with a newline");
        text.lines().map(|l| serde_json::from_str(l).expect("every NDJSON line is JSON")).collect()
    }

    fn ollama_body(stream: Option<bool>) -> Value {
        let mut body = json!({
            "model": "qwen3",
            "messages": [
                {"role": "system", "content": "You are labops."},
                {"role": "user", "content": "How are my nodes?"}
            ]
        });
        if let Some(s) = stream {
            body["stream"] = json!(s);
        }
        body
    }

    fn openai_body(stream: bool, include_usage: bool) -> Value {
        let mut body = json!({
            "model": "gpt-test",
            "stream": stream,
            "messages": [
                {"role": "system", "content": "You are labops."},
                {"role": "user", "content": "How are my nodes?"}
            ]
        });
        if include_usage {
            body["stream_options"] = json!({"include_usage": true});
        }
        body
    }

    fn anthropic_body(stream: bool) -> Value {
        json!({
            "model": "claude-test",
            "stream": stream,
            "max_tokens": 1024,
            "system": "You are labops.",
            "messages": [{"role": "user", "content": "How are my nodes?"}]
        })
    }

    const TEXT: &str = "All three nodes are up.";
    /// Words of "You are labops." plus "How are my nodes?".
    const INPUT_WORDS: u64 = 7;

    fn two_calls() -> Turn {
        Turn::ToolCalls(vec![
            ("get_node_status".to_string(), json!({"node": "pve-1", "checks": ["disk", "memory"]})),
            ("list_vms".to_string(), json!({})),
        ])
    }

    // --- Ollama ------------------------------------------------------------------------------

    #[tokio::test]
    async fn ollama_answers_text_and_tool_calls_without_streaming() {
        let llm = start(vec![Turn::text(TEXT), Turn::tool_call("get_node_status", json!({"node": "pve-1"}))]).await;

        let a = post(&llm, "/api/chat", ollama_body(Some(false))).await;
        assert_eq!(a.status, 200);
        assert!(a.content_type.starts_with("application/json"), "{}", a.content_type);
        let v = a.json();
        assert_eq!(v["model"], "qwen3");
        assert_eq!(v["message"], json!({"role": "assistant", "content": TEXT}));
        assert_eq!(v["done"], true);
        assert_eq!(v["done_reason"], "stop");
        assert_eq!(v["prompt_eval_count"], INPUT_WORDS);
        assert_eq!(v["eval_count"], 5);

        let v = post(&llm, "/api/chat", ollama_body(Some(false))).await.json();
        assert_eq!(v["message"]["content"], "");
        let call = &v["message"]["tool_calls"][0];
        assert_eq!(call["id"], "call_1");
        assert_eq!(call["function"]["name"], "get_node_status");
        assert_eq!(call["function"]["arguments"], json!({"node": "pve-1"}), "Ollama sends arguments as an object");
        assert_eq!(v["done"], true);
        assert_eq!(v["eval_count"], 2, "one word for the name, one for the compact arguments");
        assert_eq!(llm.remaining(), 0);
    }

    #[tokio::test]
    async fn ollama_streams_ndjson_when_stream_is_omitted_or_true() {
        let llm = start(vec![Turn::text(TEXT), two_calls()]).await;

        let a = post(&llm, "/api/chat", ollama_body(None)).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.content_type, "application/x-ndjson");
        let lines = ndjson(&a.text);
        assert_eq!(lines.len(), 6, "one line per word, then the done line: {lines:?}");
        let (last, chunks) = lines.split_last().expect("lines");
        assert!(chunks.iter().all(|l| l["done"] == false && l["model"] == "qwen3"));
        let text: String = chunks.iter().map(|l| l["message"]["content"].as_str().expect("content")).collect();
        assert_eq!(text, TEXT);
        assert_eq!(last["done"], true);
        assert_eq!(last["done_reason"], "stop");
        assert_eq!(last["message"]["content"], "");
        assert_eq!(last["prompt_eval_count"], INPUT_WORDS);
        assert_eq!(last["eval_count"], 5);

        let lines = ndjson(&post(&llm, "/api/chat", ollama_body(Some(true))).await.text);
        assert_eq!(lines.len(), 2, "{lines:?}");
        let calls = lines[0]["message"]["tool_calls"].as_array().expect("tool_calls");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0]["id"], "call_1");
        assert_eq!(calls[0]["function"]["arguments"], json!({"node": "pve-1", "checks": ["disk", "memory"]}));
        assert_eq!(calls[1]["id"], "call_2");
        assert_eq!(calls[1]["function"]["name"], "list_vms");
        assert_eq!(lines[1]["done"], true);
    }

    // --- OpenAI ------------------------------------------------------------------------------

    #[tokio::test]
    async fn openai_answers_text_and_tool_calls_without_streaming() {
        let llm = start(vec![Turn::text(TEXT), two_calls()]).await;

        let a = post(&llm, "/v1/chat/completions", openai_body(false, false)).await;
        assert_eq!(a.status, 200);
        assert!(a.content_type.starts_with("application/json"));
        let v = a.json();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["id"], "chatcmpl-1");
        assert_eq!(v["model"], "gpt-test");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(v["choices"][0]["message"]["content"], TEXT);
        assert!(v["choices"][0]["message"].get("tool_calls").is_none());
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": INPUT_WORDS, "completion_tokens": 5, "total_tokens": INPUT_WORDS + 5})
        );

        let v = post(&llm, "/v1/chat/completions", openai_body(false, false)).await.json();
        let msg = &v["choices"][0]["message"];
        assert_eq!(msg["content"], Value::Null);
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        let calls = msg["tool_calls"].as_array().expect("tool_calls");
        assert_eq!(calls[0]["id"], "call_1");
        assert_eq!(calls[0]["type"], "function");
        assert_eq!(calls[0]["function"]["name"], "get_node_status");
        let args = calls[0]["function"]["arguments"].as_str().expect("OpenAI sends arguments as a JSON string");
        assert_eq!(
            serde_json::from_str::<Value>(args).expect("arguments parse"),
            json!({"node": "pve-1", "checks": ["disk", "memory"]})
        );
        assert_eq!(calls[1]["id"], "call_2");
        assert_eq!(calls[1]["function"]["arguments"], "{}");
    }

    #[tokio::test]
    async fn openai_streams_sse_chunks_with_usage_and_done() {
        let llm = start(vec![Turn::text(TEXT), two_calls(), Turn::text("short")]).await;

        let a = post(&llm, "/v1/chat/completions", openai_body(true, true)).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.content_type, "text/event-stream");
        let events = sse(&a.text);
        assert!(events.iter().all(|(name, _)| name.is_none()), "OpenAI sends data lines only");
        assert_eq!(events.last().expect("events").1, "[DONE]");
        let chunks: Vec<&Value> = events[..events.len() - 1].iter().map(|(_, d)| d).collect();
        assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == "chatcmpl-1"));
        let usage_chunk = chunks.last().expect("usage chunk");
        assert_eq!(usage_chunk["choices"], json!([]));
        assert_eq!(usage_chunk["usage"]["prompt_tokens"], INPUT_WORDS);
        assert_eq!(usage_chunk["usage"]["completion_tokens"], 5);
        let choice_chunks = &chunks[..chunks.len() - 1];
        assert!(choice_chunks.iter().all(|c| c["usage"].is_null()), "usage is null until the usage chunk");
        assert_eq!(choice_chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = choice_chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
        assert_eq!(text, TEXT);
        let finish = choice_chunks.last().expect("finish chunk");
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        assert_eq!(finish["choices"][0]["delta"], json!({}));

        // Tool calls: the first delta of a call has its index, id, type and name; later ones
        // carry only the index and an arguments fragment.
        let events = sse(&post(&llm, "/v1/chat/completions", openai_body(true, false)).await.text);
        let mut calls: Vec<(String, String, String)> = Vec::new();
        let mut finish = Value::Null;
        for (_, data) in &events[..events.len() - 1] {
            assert!(data.get("usage").is_none(), "no usage field unless stream_options.include_usage");
            let choice = &data["choices"][0];
            if !choice["finish_reason"].is_null() {
                finish = choice["finish_reason"].clone();
            }
            for tc in choice["delta"]["tool_calls"].as_array().into_iter().flatten() {
                let i = tc["index"].as_u64().expect("index") as usize;
                if let Some(id) = tc["id"].as_str() {
                    assert_eq!(i, calls.len());
                    assert_eq!(tc["type"], "function");
                    calls.push((
                        id.to_string(),
                        tc["function"]["name"].as_str().expect("name").to_string(),
                        String::new(),
                    ));
                }
                calls[i].2.push_str(tc["function"]["arguments"].as_str().expect("arguments fragment"));
            }
        }
        assert_eq!(finish, "tool_calls");
        assert_eq!(calls.len(), 2);
        assert_eq!((calls[0].0.as_str(), calls[0].1.as_str()), ("call_1", "get_node_status"));
        assert_eq!(
            serde_json::from_str::<Value>(&calls[0].2).expect("args"),
            json!({"node": "pve-1", "checks": ["disk", "memory"]})
        );
        assert_eq!((calls[1].0.as_str(), calls[1].2.as_str()), ("call_2", "{}"));
        let fragments =
            events.iter().filter(|(_, d)| d["choices"][0]["delta"]["tool_calls"][0]["id"].is_null()).count();
        assert!(fragments > 3, "long arguments arrive in several fragments");

        // Without stream_options the stream ends with the finish chunk and [DONE].
        let events = sse(&post(&llm, "/v1/chat/completions", openai_body(true, false)).await.text);
        assert_eq!(events.len(), 4, "role, one word, finish, [DONE]: {events:?}");
    }

    // --- Anthropic ---------------------------------------------------------------------------

    #[tokio::test]
    async fn anthropic_answers_text_and_tool_use_without_streaming() {
        let llm = start(vec![Turn::text(TEXT), two_calls()]).await;

        let a = post(&llm, "/v1/messages", anthropic_body(false)).await;
        assert_eq!(a.status, 200);
        assert!(a.content_type.starts_with("application/json"));
        let v = a.json();
        assert_eq!(v["type"], "message");
        assert_eq!(v["id"], "msg_1");
        assert_eq!(v["role"], "assistant");
        assert_eq!(v["model"], "claude-test");
        assert_eq!(v["content"], json!([{"type": "text", "text": TEXT}]));
        assert_eq!(v["stop_reason"], "end_turn");
        assert_eq!(v["usage"], json!({"input_tokens": INPUT_WORDS, "output_tokens": 5}));

        let v = post(&llm, "/v1/messages", anthropic_body(false)).await.json();
        assert_eq!(v["stop_reason"], "tool_use");
        assert_eq!(
            v["content"],
            json!([
                {"type": "tool_use", "id": "toolu_1", "name": "get_node_status", "input": {"node": "pve-1", "checks": ["disk", "memory"]}},
                {"type": "tool_use", "id": "toolu_2", "name": "list_vms", "input": {}}
            ])
        );
    }

    #[tokio::test]
    async fn anthropic_streams_named_sse_events() {
        let llm = start(vec![Turn::text(TEXT), two_calls()]).await;

        let a = post(&llm, "/v1/messages", anthropic_body(true)).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.content_type, "text/event-stream");
        let events = sse(&a.text);
        for (name, data) in &events {
            assert_eq!(name.as_deref(), data["type"].as_str(), "event name matches data.type");
        }
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().expect("event name")).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let start = &events[0].1["message"];
        assert_eq!(start["id"], "msg_1");
        assert_eq!(start["model"], "claude-test");
        assert_eq!(start["usage"]["input_tokens"], INPUT_WORDS);
        assert_eq!(events[2].1["content_block"], json!({"type": "text", "text": ""}));
        let text: String = events
            .iter()
            .filter(|(n, _)| n.as_deref() == Some("content_block_delta"))
            .map(|(_, d)| {
                assert_eq!(d["delta"]["type"], "text_delta");
                d["delta"]["text"].as_str().expect("text").to_string()
            })
            .collect();
        assert_eq!(text, TEXT);
        let delta = &events[9].1;
        assert_eq!(delta["delta"]["stop_reason"], "end_turn");
        assert_eq!(delta["usage"]["output_tokens"], 5);

        let events = sse(&post(&llm, "/v1/messages", anthropic_body(true)).await.text);
        let mut blocks: Vec<(u64, Value, String)> = Vec::new();
        for (name, data) in &events {
            match name.as_deref() {
                Some("content_block_start") => {
                    blocks.push((data["index"].as_u64().expect("index"), data["content_block"].clone(), String::new()))
                }
                Some("content_block_delta") => {
                    let block = blocks.last_mut().expect("a delta follows its block start");
                    assert_eq!(data["index"].as_u64(), Some(block.0));
                    assert_eq!(data["delta"]["type"], "input_json_delta");
                    block.2.push_str(data["delta"]["partial_json"].as_str().expect("partial_json"));
                }
                _ => {}
            }
        }
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].1, json!({"type": "tool_use", "id": "toolu_1", "name": "get_node_status", "input": {}}));
        assert_eq!(
            serde_json::from_str::<Value>(&blocks[0].2).expect("input"),
            json!({"node": "pve-1", "checks": ["disk", "memory"]})
        );
        assert_eq!((blocks[1].0, blocks[1].1["id"].as_str(), blocks[1].2.as_str()), (1, Some("toolu_2"), "{}"));
        let delta = events.iter().find(|(n, _)| n.as_deref() == Some("message_delta")).expect("message_delta");
        assert_eq!(delta.1["delta"]["stop_reason"], "tool_use");
        assert_eq!(events.last().expect("events").0.as_deref(), Some("message_stop"));
    }

    // --- Capture, script end, failures, rejections -------------------------------------------

    #[tokio::test]
    async fn every_request_is_captured_in_order() {
        let llm = start(vec![Turn::text("hi")]).await;
        post(&llm, "/v1/messages", anthropic_body(false)).await;
        send(http().get(format!("{}/api/tags", llm.url()))).await;

        let reqs = llm.requests();
        assert_eq!(reqs.len(), 2);
        assert_eq!((reqs[0].method.as_str(), reqs[0].path.as_str()), ("POST", "/v1/messages"));
        assert_eq!(reqs[0].body, anthropic_body(false));
        assert_eq!(reqs[0].header("X-API-Key"), Some("test-key"));
        assert_eq!(reqs[0].header("anthropic-version"), Some("2023-06-01"));
        assert!(reqs[0].headers.iter().all(|(n, _)| *n == n.to_lowercase()), "header names are lowercase");
        assert_eq!((reqs[1].method.as_str(), reqs[1].path.as_str()), ("GET", "/api/tags"));
        assert_eq!(reqs[1].body, Value::Null);
        assert_eq!(llm.answered(), 1);
    }

    #[tokio::test]
    async fn an_exhausted_script_answers_500_in_each_providers_shape() {
        let llm = start(vec![]).await;
        let a = post(&llm, "/api/chat", ollama_body(Some(false))).await;
        assert_eq!(a.status, 500);
        assert!(a.json()["error"].as_str().expect("Ollama error string").contains("the script has no more turns"));

        let a = post(&llm, "/v1/chat/completions", openai_body(true, true)).await;
        assert_eq!(a.status, 500);
        assert!(a.content_type.starts_with("application/json"), "an error is JSON even for a stream request");
        let v = a.json();
        assert_eq!(v["error"]["type"], "server_error");
        assert!(v["error"]["message"].as_str().expect("message").contains("the script has no more turns"));

        llm.push(Turn::text("late"));
        assert_eq!(post(&llm, "/v1/messages", anthropic_body(false)).await.status, 200, "a pushed turn is used");
        let a = post(&llm, "/v1/messages", anthropic_body(true)).await;
        assert_eq!(a.status, 500);
        let v = a.json();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "api_error");
        assert!(
            v["error"]["message"].as_str().expect("message").contains("the script has no more turns (it answered 1")
        );
    }

    #[tokio::test]
    async fn a_fail_turn_answers_the_providers_error_shape() {
        let llm = start(vec![
            Turn::fail(503, "model is loading"),
            Turn::fail(429, "Rate limit reached"),
            Turn::fail(529, "Overloaded"),
            Turn::fail(42, "odd status"),
        ])
        .await;
        let a = post(&llm, "/api/chat", ollama_body(None)).await;
        assert_eq!((a.status, a.json()), (503, json!({"error": "model is loading"})));

        let a = post(&llm, "/v1/chat/completions", openai_body(false, false)).await;
        assert_eq!(a.status, 429);
        assert_eq!(a.json()["error"]["message"], "Rate limit reached");
        assert_eq!(a.json()["error"]["type"], "requests");

        let a = post(&llm, "/v1/messages", anthropic_body(true)).await;
        assert_eq!(a.status, 529);
        assert_eq!(a.json(), json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}));

        let a = post(&llm, "/api/chat", ollama_body(Some(false))).await;
        assert_eq!(a.status, 500);
        assert!(a.json()["error"].as_str().expect("error").contains("invalid HTTP status 42"));
        assert_eq!(llm.answered(), 4);
    }

    #[tokio::test]
    async fn invalid_requests_are_rejected_like_the_real_servers_without_using_a_turn() {
        let llm = start(vec![Turn::text("kept")]).await;
        let mut no_model = ollama_body(Some(false));
        no_model.as_object_mut().expect("object").remove("model");
        let a = post(&llm, "/api/chat", no_model).await;
        assert_eq!((a.status, a.json()), (400, json!({"error": "model is required"})));

        // Ollama answers a request without messages as a model load.
        let v = post(&llm, "/api/chat", json!({"model": "qwen3"})).await.json();
        assert_eq!((v["done"].clone(), v["done_reason"].clone()), (json!(true), json!("load")));

        let a = post(&llm, "/v1/chat/completions", json!({"model": "gpt-test"})).await;
        assert_eq!(a.status, 400);
        assert_eq!(a.json()["error"]["type"], "invalid_request_error");
        assert!(a.json()["error"]["message"].as_str().expect("message").contains("messages"));
        let a = post(&llm, "/v1/chat/completions", json!({"model": "gpt-test", "messages": []})).await;
        assert_eq!(a.status, 400);
        let a = post(&llm, "/v1/chat/completions", json!({"messages": [{"role": "user", "content": "x"}]})).await;
        assert_eq!(a.status, 400);

        let mut no_max = anthropic_body(false);
        no_max.as_object_mut().expect("object").remove("max_tokens");
        let a = post(&llm, "/v1/messages", no_max).await;
        assert_eq!(a.status, 400);
        assert_eq!(a.json()["error"]["type"], "invalid_request_error");
        assert!(a.json()["error"]["message"].as_str().expect("message").starts_with("max_tokens"));
        let a = send(http().post(format!("{}/v1/messages", llm.url())).json(&anthropic_body(false))).await;
        assert_eq!(a.status, 400, "anthropic-version is required");
        assert_eq!(a.json()["type"], "error");

        let a = send(http().post(format!("{}/v1/chat/completions", llm.url())).body("{not json")).await;
        assert_eq!(a.status, 400);
        assert!(a.json()["error"]["message"].as_str().expect("message").contains("not valid JSON"));
        assert_eq!(llm.requests().last().expect("captured").body, json!("{not json"));

        let big = "x".repeat(MAX_BODY_BYTES + 1);
        let a = send(http().post(format!("{}/api/chat", llm.url())).body(big)).await;
        assert_eq!(a.status, 413);
        assert!(a.json()["error"].as_str().expect("error").contains("limit"));

        assert_eq!((llm.answered(), llm.remaining()), (0, 1), "no rejected request used the turn");
    }

    #[tokio::test]
    async fn models_are_listed_in_each_providers_shape() {
        let llm = start(vec![]).await;
        let v = send(http().get(format!("{}/api/tags", llm.url()))).await.json();
        assert_eq!(v["models"][0]["name"], DEFAULT_MODEL);
        llm.set_models(vec!["llama3.2:latest".into(), "qwen3:8b".into()]);
        let v = send(http().get(format!("{}/api/tags", llm.url()))).await.json();
        assert_eq!(v["models"][1]["model"], "qwen3:8b");

        let v = send(http().get(format!("{}/v1/models", llm.url())).bearer_auth("k")).await.json();
        assert_eq!(v["object"], "list");
        assert_eq!(
            v["data"][0],
            json!({"id": "llama3.2:latest", "object": "model", "created": CREATED_UNIX, "owned_by": "labops-testkit"})
        );

        let v =
            send(http().get(format!("{}/v1/models", llm.url())).header("anthropic-version", "2023-06-01")).await.json();
        assert_eq!(v["data"][0]["type"], "model");
        assert_eq!(v["data"][1]["id"], "qwen3:8b");
        assert_eq!((v["has_more"].clone(), v["last_id"].clone()), (json!(false), json!("qwen3:8b")));

        let a = send(http().get(llm.url())).await;
        assert_eq!((a.status, a.text.as_str()), (200, "Ollama is running"));
    }

    #[tokio::test]
    async fn unknown_paths_and_methods_say_what_is_served() {
        let llm = start(vec![Turn::text("kept")]).await;
        let a = post(&llm, "/v1/completions", json!({"model": "m", "prompt": "x"})).await;
        assert_eq!(a.status, 404);
        assert!(a.json()["error"]["message"].as_str().expect("message").contains("check the client's base URL"));
        let a = post(&llm, "/api/generate", json!({"model": "m", "prompt": "x"})).await;
        assert_eq!(a.status, 404);
        assert!(a.json()["error"].as_str().expect("error").contains("POST /api/chat"));
        let a = send(http().get(format!("{}/api/chat", llm.url()))).await;
        assert_eq!(a.status, 405);
        assert_eq!(llm.remaining(), 1);
    }

    #[tokio::test]
    async fn dropping_the_server_closes_its_port_at_once() {
        let llm = start(vec![]).await;
        let (url, addr) = (llm.url(), llm.addr());
        let pooled = http();
        assert_eq!(send(pooled.get(format!("{url}/api/tags"))).await.status, 200);
        drop(llm);
        let refused = std::net::TcpStream::connect(addr);
        assert!(refused.is_err(), "the port still accepts connections after drop");
        let err = http().get(format!("{url}/api/tags")).send().await;
        assert!(err.is_err_and(|e| e.is_connect()), "a new client sees a connection error");
        let err = pooled.get(format!("{url}/api/tags")).send().await;
        assert!(err.is_err(), "a client with a kept-alive connection is not answered either");
    }

    #[test]
    fn token_counts_are_word_counts_of_message_text() {
        let body = json!({
            "system": [{"type": "text", "text": "Be brief."}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "check pve-1 now"}, {"type": "image", "source": {"data": "a b c"}}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "x y", "input": {"text": "ignored"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "all good here"}]}
            ]
        });
        assert_eq!(input_tokens(&body), 2 + 3 + 3);
        assert_eq!(input_tokens(&json!({"messages": []})), 1, "never zero");
        assert_eq!(output_tokens(&Reply::Text("one two  three".into())), 3);
        assert_eq!(output_tokens(&Reply::Text(String::new())), 1);
    }

    #[test]
    fn streamed_text_pieces_concatenate_to_the_text() {
        assert_eq!(text_pieces("Hello  world\n"), ["Hello  ", "world\n"]);
        assert_eq!(text_pieces("  lead in"), ["  lead ", "in"]);
        assert!(text_pieces("").is_empty());
        for t in ["a", " ", "é ü  ß\tx", TEXT] {
            assert_eq!(text_pieces(t).concat(), t);
        }
        assert_eq!(fragments("ab", 12), ["ab"]);
        assert_eq!(fragments("", 12), [""]);
        assert_eq!(fragments("αβγδ", 3), ["αβγ", "δ"]);
    }

    // --- The genai client against the server -------------------------------------------------

    mod with_genai {
        use super::*;
        use futures::StreamExt;
        use genai::adapter::AdapterKind;
        use genai::chat::{
            ChatMessage, ChatOptions, ChatRequest, ChatStreamEvent, StopReason, StreamEnd, Tool, ToolCall, ToolResponse,
        };
        use genai::resolver::{AuthData, Endpoint, ServiceTargetResolver};
        use genai::{Client, ModelIden, ServiceTarget};

        const MODEL: &str = "scripted";

        /// A genai client whose every target is `base` with `kind`'s adapter.
        fn client(kind: AdapterKind, base: String) -> Client {
            install_crypto();
            let resolver = ServiceTargetResolver::from_resolver_fn(
                move |target: ServiceTarget| -> Result<ServiceTarget, genai::resolver::Error> {
                    Ok(ServiceTarget {
                        endpoint: Endpoint::from_owned(base),
                        auth: AuthData::from_single("test-key"),
                        model: ModelIden::new(kind, target.model.model_name),
                    })
                },
            );
            Client::builder().with_service_target_resolver(resolver).build().expect("the genai client builds")
        }

        /// The base URL genai needs: it appends `api/chat` (Ollama), `chat/completions`
        /// (OpenAI) or `messages` (Anthropic).
        fn base(llm: &ScriptedLlm, kind: AdapterKind) -> String {
            match kind {
                AdapterKind::Ollama => format!("{}/", llm.url()),
                _ => format!("{}/v1/", llm.url()),
            }
        }

        fn options() -> ChatOptions {
            ChatOptions::default().with_capture_usage(true).with_capture_content(true).with_capture_tool_calls(true)
        }

        fn request() -> ChatRequest {
            let tool = Tool::new("get_node_status").with_description("Reports the health of one node.").with_schema(
                json!({"type": "object", "properties": {"node": {"type": "string"}}, "required": ["node"]}),
            );
            ChatRequest::new(vec![ChatMessage::user("Is pve-1 healthy?")])
                .with_system("You are labops.")
                .with_tools(vec![tool])
        }

        /// Drains a stream; returns the events before the end and the end.
        async fn drain(mut stream: genai::chat::ChatStream) -> Result<(Vec<ChatStreamEvent>, StreamEnd), genai::Error> {
            let mut events = Vec::new();
            while let Some(event) = stream.next().await {
                match event? {
                    ChatStreamEvent::End(end) => return Ok((events, end)),
                    other => events.push(other),
                }
            }
            panic!("the stream ended without an End event: {events:?}");
        }

        fn expect_calls(calls: &[&ToolCall], first_id: &str, second_id: &str) {
            assert_eq!(calls.len(), 2, "{calls:?}");
            assert_eq!(calls[0].call_id, first_id);
            assert_eq!(calls[0].fn_name, "get_node_status");
            assert_eq!(calls[0].fn_arguments, json!({"node": "pve-1", "checks": ["disk", "memory"]}));
            assert_eq!(calls[1].call_id, second_id);
            assert_eq!(calls[1].fn_name, "list_vms");
            assert_eq!(calls[1].fn_arguments, json!({}));
        }

        /// One full conversation through genai: a tool call and its result, then text, without
        /// and with streaming, then the failures.
        async fn conversation(kind: AdapterKind, chat_path: &str, id_prefix: &str, tool_stop: &str) {
            let llm = ScriptedLlm::start(vec![
                Turn::tool_call("get_node_status", json!({"node": "pve-1"})),
                Turn::text("pve-1 is healthy."),
                two_calls(),
                Turn::text("Both checks passed on pve-1."),
                Turn::fail(429, "slow down please"),
                Turn::fail(503, "try again later"),
            ])
            .await
            .expect("server starts");
            let client = client(kind, base(&llm, kind));
            let model = ModelIden::new(kind, MODEL);
            let opts = options();

            // -- Not streaming: a tool call, its result, then text.
            let res = client.exec_chat(model.clone(), request(), Some(&opts)).await.expect("tool call answer parses");
            let calls = res.tool_calls();
            assert_eq!(calls.len(), 1);
            assert_eq!(calls[0].call_id, format!("{id_prefix}1"));
            assert_eq!(calls[0].fn_name, "get_node_status");
            assert_eq!(calls[0].fn_arguments, json!({"node": "pve-1"}));
            assert_eq!(res.stop_reason, Some(StopReason::from(tool_stop.to_string())));
            assert_eq!(res.usage.prompt_tokens, Some(6), "You are labops. + Is pve-1 healthy?");
            assert_eq!(res.usage.completion_tokens, Some(2));
            assert_eq!(res.usage.total_tokens, Some(8));

            let call = calls[0].clone();
            let req = request()
                .append_message(ChatMessage::from(vec![call.clone()]))
                .append_message(ToolResponse::new(call.call_id.clone(), "healthy: all 3 disks ok"));
            let res = client.exec_chat(model.clone(), req, Some(&opts)).await.expect("text answer parses");
            assert_eq!(res.first_text(), Some("pve-1 is healthy."));
            assert!(res.tool_calls().is_empty());
            assert!(matches!(res.stop_reason, Some(StopReason::Completed(_))), "{:?}", res.stop_reason);
            assert_eq!(res.usage.prompt_tokens, Some(6 + 5), "the tool result counts as input");
            assert_eq!(res.usage.completion_tokens, Some(3));

            let reqs = llm.requests();
            assert_eq!(reqs[0].path, chat_path);
            assert_eq!(reqs[0].body["model"], MODEL);
            let second = reqs[1].body.to_string();
            assert!(second.contains("healthy: all 3 disks ok"), "{second}");
            // genai sends Ollama neither the call's id nor a `tool_name` with the tool result.
            if kind != AdapterKind::Ollama {
                assert!(second.contains(&call.call_id), "{second}");
            }

            // -- Streaming: two tool calls, then text.
            let stream = client.exec_chat_stream(model.clone(), request(), Some(&opts)).await.expect("stream starts");
            let (events, end) = drain(stream.stream).await.expect("tool call stream parses");
            assert!(events.iter().any(|e| matches!(e, ChatStreamEvent::ToolCallChunk(_))), "{events:?}");
            expect_calls(
                &end.captured_tool_calls().expect("tool calls captured"),
                &format!("{id_prefix}2"),
                &format!("{id_prefix}3"),
            );
            assert_eq!(end.captured_stop_reason, Some(StopReason::from(tool_stop.to_string())));
            let usage = end.captured_usage.expect("usage captured");
            assert_eq!((usage.prompt_tokens, usage.completion_tokens), (Some(6), Some(4)));

            let stream = client.exec_chat_stream(model.clone(), request(), Some(&opts)).await.expect("stream starts");
            let (events, end) = drain(stream.stream).await.expect("text stream parses");
            let chunks: String = events
                .iter()
                .filter_map(|e| match e {
                    ChatStreamEvent::Chunk(c) => Some(c.content.as_str()),
                    _ => None,
                })
                .collect();
            assert_eq!(chunks, "Both checks passed on pve-1.");
            assert_eq!(end.captured_first_text(), Some("Both checks passed on pve-1."));
            assert!(end.captured_tool_calls().unwrap_or_default().is_empty());
            assert!(matches!(end.captured_stop_reason, Some(StopReason::Completed(_))));
            let usage = end.captured_usage.expect("usage captured");
            assert_eq!(
                (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens),
                (Some(6), Some(5), Some(11))
            );

            // -- Failures: the status reaches the caller, not streaming and streaming.
            let err = client.exec_chat(model.clone(), request(), Some(&opts)).await.expect_err("429 fails");
            assert_eq!(err.status().map(|s| s.as_u16()), Some(429), "{err:?}");
            assert!(format!("{err:?}").contains("slow down please"), "{err:?}");

            let stream = client.exec_chat_stream(model.clone(), request(), Some(&opts)).await.expect("stream starts");
            let err = drain(stream.stream).await.expect_err("503 fails the stream");
            assert_eq!(err.status(), None, "genai reports a streamed HTTP error as WebStream without status");
            let genai::Error::WebStream { error, .. } = &err else { panic!("expected WebStream, got {err:?}") };
            let inner = error.downcast_ref::<genai::Error>().expect("the boxed error is a genai::Error");
            assert_eq!(inner.status().map(|s| s.as_u16()), Some(503), "{inner:?}");
            assert!(format!("{err}").contains("try again later"), "{err}");

            // -- The script is used up; the next call fails clearly.
            let err = client.exec_chat(model.clone(), request(), Some(&opts)).await.expect_err("script exhausted");
            assert_eq!(err.status().map(|s| s.as_u16()), Some(500));
            assert!(format!("{err:?}").contains("the script has no more turns"), "{err:?}");

            // -- Model listing through genai.
            let auth = AuthData::from_single("test-key");
            let names = client
                .all_model_names(kind, (Endpoint::from_owned(base(&llm, kind)), auth))
                .await
                .expect("model list parses");
            assert_eq!(names, [DEFAULT_MODEL]);
        }

        #[tokio::test]
        async fn genai_ollama_parses_the_scripted_server() {
            conversation(AdapterKind::Ollama, "/api/chat", "call_", "stop").await;
        }

        #[tokio::test]
        async fn genai_openai_parses_the_scripted_server() {
            conversation(AdapterKind::OpenAI, "/v1/chat/completions", "call_", "tool_calls").await;
        }

        #[tokio::test]
        async fn genai_anthropic_parses_the_scripted_server() {
            conversation(AdapterKind::Anthropic, "/v1/messages", "toolu_", "tool_use").await;
        }

        #[tokio::test]
        async fn genai_sends_stream_false_to_ollama_and_asks_openai_for_usage() {
            let llm =
                ScriptedLlm::start(vec![Turn::text("a"), Turn::text("b"), Turn::text("c")]).await.expect("starts");
            let opts = options();
            let ollama = client(AdapterKind::Ollama, base(&llm, AdapterKind::Ollama));
            ollama.exec_chat(ModelIden::new(AdapterKind::Ollama, MODEL), request(), Some(&opts)).await.expect("ok");
            let openai = client(AdapterKind::OpenAI, base(&llm, AdapterKind::OpenAI));
            let s = openai
                .exec_chat_stream(ModelIden::new(AdapterKind::OpenAI, MODEL), request(), Some(&opts))
                .await
                .expect("ok");
            drain(s.stream).await.expect("parses");
            let anthropic = client(AdapterKind::Anthropic, base(&llm, AdapterKind::Anthropic));
            anthropic.exec_chat(ModelIden::new(AdapterKind::Anthropic, MODEL), request(), None).await.expect("ok");

            let reqs = llm.requests();
            assert_eq!(reqs[0].body["stream"], false, "genai always sends stream to Ollama");
            assert_eq!(reqs[1].body["stream_options"], json!({"include_usage": true}));
            assert_eq!(reqs[1].header("authorization"), Some("Bearer test-key"));
            assert!(reqs[2].body["max_tokens"].is_u64(), "genai always sends max_tokens to Anthropic");
            assert_eq!(reqs[2].header("x-api-key"), Some("test-key"));
            assert_eq!(reqs[2].header("anthropic-version"), Some("2023-06-01"));
            assert_eq!(reqs[2].body["system"], "You are labops.");
        }
    }
}
