//! GitHub's published REST description and recorded real responses, for the GitHub client's
//! tests, and [`Replay`], a loopback server that answers with them.
//!
//! Both come from npm, pinned in `tests/github/package.json`: `@octokit/openapi` (the REST
//! description GitHub publishes) and `@octokit/fixtures` (requests and responses recorded against
//! the real api.github.com, with ids and dates normalized). `scripts/test` installs them and
//! exports `LABOPS_TEST_GITHUB_NPM`; without it the repository's `tests/github/node_modules` is
//! used. A test that needs them fails, saying how to install them, when they are missing.
//!
//! [`Replay`] serves a list of [`Exchange`]s: each request takes the first unused exchange with
//! its method and path (query included), or a [repeated](Exchange::repeated) one, and gets its
//! recorded status, headers and body; every
//! request is kept ([`Replay::sent`]) so a test compares what the client sent with what the
//! recording sent. A request no exchange matches answers 501 and is kept too.
//!
//! ```no_run
//! # async fn demo() {
//! use labops_testkit::github::{Replay, scenario};
//!
//! let replay = Replay::start(scenario("add-labels-to-issue")).await;
//! // Point the client at replay.url(), run it, then:
//! for sent in replay.sent() {
//!     println!("{} {} {}", sent.method, sent.path, sent.body);
//! }
//! # }
//! ```

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The installed npm packages: `LABOPS_TEST_GITHUB_NPM`, else `tests/github/node_modules`.
///
/// # Panics
/// When `@octokit/openapi` or `@octokit/fixtures` is not there, saying how to install them.
pub fn npm_dir() -> PathBuf {
    let dir = std::env::var_os("LABOPS_TEST_GITHUB_NPM")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::fakepve::root().join("tests/github/node_modules"));
    for package in ["@octokit/openapi", "@octokit/fixtures"] {
        assert!(
            dir.join(package).join("package.json").is_file(),
            "{package} is not installed in {}: run scripts/test, or `npm ci` in tests/github (or set LABOPS_TEST_GITHUB_NPM to a node_modules holding it)",
            dir.display()
        );
    }
    dir
}

/// GitHub's REST description for api.github.com (`@octokit/openapi`), parsed once.
pub fn openapi() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let path = npm_dir().join("@octokit/openapi/generated/api.github.com.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
    })
}

/// The value of the REST description's example `name` (`components/examples/NAME`), for an
/// operation no recording covers.
///
/// # Panics
/// When there is no such example.
pub fn example(name: &str) -> Value {
    let v = &openapi()["components"]["examples"][name]["value"];
    assert!(!v.is_null(), "the REST description has no example {name:?}");
    v.clone()
}

/// One request and its answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Exchange {
    /// HTTP method, upper case.
    pub method: String,
    /// Path with its query, as sent.
    pub path: String,
    /// The JSON body the recorded client sent (`Null` when none).
    pub request_body: Value,
    /// HTTP status answered.
    pub status: u16,
    /// Response headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// The JSON body answered (`Null` for none).
    pub response: Value,
    /// Where it comes from: `@octokit/fixtures SCENARIO #N`, an OpenAPI example, or a note on
    /// how it was derived.
    pub source: String,
    /// Answers any number of requests instead of one.
    pub repeat: bool,
}

impl Exchange {
    /// An exchange made by hand or from an OpenAPI example; `source` says which.
    pub fn new(method: &str, path: &str, status: u16, response: Value, source: &str) -> Self {
        Self {
            method: method.to_ascii_uppercase(),
            path: path.into(),
            request_body: Value::Null,
            status,
            headers: vec![("content-type".into(), "application/json; charset=utf-8".into())],
            response,
            source: source.into(),
            repeat: false,
        }
    }

    /// The same exchange, answering any number of requests.
    pub fn repeated(mut self) -> Self {
        self.repeat = true;
        self
    }
}

/// The exchanges `@octokit/fixtures` recorded for scenario `name` on api.github.com (its
/// `normalized-fixture.json`), in order.
///
/// # Panics
/// When the scenario does not exist.
pub fn scenario(name: &str) -> Vec<Exchange> {
    let path = npm_dir().join("@octokit/fixtures/scenarios/api.github.com").join(name).join("normalized-fixture.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let recorded: Vec<Value> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    recorded
        .iter()
        .enumerate()
        .map(|(i, r)| Exchange {
            method: r["method"].as_str().unwrap_or("GET").to_ascii_uppercase(),
            path: r["path"].as_str().unwrap_or("/").to_string(),
            request_body: match &r["body"] {
                Value::String(s) if s.is_empty() => Value::Null,
                other => other.clone(),
            },
            status: r["status"].as_u64().and_then(|s| u16::try_from(s).ok()).unwrap_or(200),
            headers: r["headers"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
                .collect(),
            response: match &r["response"] {
                Value::String(s) if s.is_empty() => Value::Null,
                other => other.clone(),
            },
            source: format!("@octokit/fixtures {name} #{i}"),
            repeat: false,
        })
        .collect()
}

/// One request [`Replay`] received.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    /// HTTP method.
    pub method: String,
    /// Path with its query.
    pub path: String,
    /// Request headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// The JSON body (`Null` when empty; a string when not JSON).
    pub body: Value,
    /// The [`Exchange::source`] of the answer, `None` when nothing matched (501).
    pub served: Option<String>,
}

impl Sent {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    exchanges: Vec<(Exchange, bool)>,
    sent: Vec<Sent>,
}

/// A loopback HTTP server answering with recorded exchanges. Stops when dropped.
pub struct Replay {
    url: String,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Replay {
    /// Starts serving `exchanges` on `127.0.0.1` (an OS-chosen port).
    ///
    /// # Panics
    /// When no local port can be bound.
    pub async fn start(exchanges: Vec<Exchange>) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("a local address"));
        let state = Arc::new(Mutex::new(State { exchanges: exchanges.into_iter().map(|e| (e, false)).collect(), sent: Vec::new() }));
        let shared = state.clone();
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let state = shared.clone();
            async move { answer(&state, method, uri, headers, body) }
        });
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "GitHub replay server stopped with an error");
            }
        });
        Self { url, state, task }
    }

    /// The base URL, `http://127.0.0.1:PORT`: the client's API URL.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Every request received, in order.
    pub fn sent(&self) -> Vec<Sent> {
        self.state.lock().expect("replay state").sent.clone()
    }

    /// The exchanges no request has used yet (repeated ones included until used once).
    pub fn unused(&self) -> Vec<Exchange> {
        self.state.lock().expect("replay state").exchanges.iter().filter(|(_, used)| !used).map(|(e, _)| e.clone()).collect()
    }
}

fn answer(state: &Mutex<State>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| uri.path().to_string());
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
    };
    let mut st = state.lock().expect("replay state");
    let found = st
        .exchanges
        .iter_mut()
        .find(|(e, used)| (!*used || e.repeat) && e.method.eq_ignore_ascii_case(method.as_str()) && e.path == path);
    let exchange = found.map(|(e, used)| {
        *used = true;
        e.clone()
    });
    st.sent.push(Sent {
        method: method.as_str().to_string(),
        path: path.clone(),
        headers: headers.iter().map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect(),
        body,
        served: exchange.as_ref().map(|e| e.source.clone()),
    });
    drop(st);
    let Some(e) = exchange else {
        let msg = json!({"message": format!("replay: no recorded exchange left for {method} {path}")});
        return (StatusCode::NOT_IMPLEMENTED, axum::Json(msg)).into_response();
    };
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let bytes = if e.response.is_null() { Vec::new() } else { serde_json::to_vec(&e.response).expect("JSON serializes") };
    let mut response = (status, bytes).into_response();
    for (k, v) in &e.headers {
        if matches!(k.as_str(), "content-length" | "connection" | "transfer-encoding" | "keep-alive") {
            continue;
        }
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
            response.headers_mut().append(name, value);
        }
    }
    response
}
