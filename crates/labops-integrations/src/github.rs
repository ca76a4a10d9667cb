//! GitHub issues client (octocrab over hyper, rustls with the ring provider), for the forge.
//!
//! Every request this client can send is listed in [`CALLS`]: open an issue, comment, add
//! labels, close, and read an issue's state. Each [`Call`] names its method, its path template as
//! GitHub's REST description (`@octokit/openapi`) writes it, and the body fields it may carry
//! (with the fixed value, where it always sends the same one). [`Client`] sends nothing else: a
//! test checks each entry against the published description, and the client tests replay real
//! responses recorded by `@octokit/fixtures`.
//!
//! The token is a [`Secret`]: it goes into the `Authorization` header and nowhere else (not in
//! errors, not in logs, not in `Debug`).

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::Secret;

/// GitHub's API.
pub const DEFAULT_API_URL: &str = "https://api.github.com";

/// One kind of request the client sends: method, path template, and the JSON body fields it may
/// carry, with a fixed value where it always sends the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    /// HTTP method.
    pub method: &'static str,
    /// Path template as in GitHub's REST description (`{owner}`, `{repo}`, `{issue_number}`).
    pub path: &'static str,
    /// Body fields, with a fixed value (a JSON string) when there is one.
    pub body: &'static [(&'static str, Option<&'static str>)],
}

/// `POST /repos/{owner}/{repo}/issues`: open an issue (`issues/create`).
pub const CREATE_ISSUE: Call =
    Call { method: "POST", path: "/repos/{owner}/{repo}/issues", body: &[("title", None), ("body", None), ("labels", None)] };
/// `POST /repos/{owner}/{repo}/issues/{issue_number}/comments`: comment (`issues/create-comment`).
pub const CREATE_COMMENT: Call =
    Call { method: "POST", path: "/repos/{owner}/{repo}/issues/{issue_number}/comments", body: &[("body", None)] };
/// `POST /repos/{owner}/{repo}/issues/{issue_number}/labels`: add labels (`issues/add-labels`).
pub const ADD_LABELS: Call =
    Call { method: "POST", path: "/repos/{owner}/{repo}/issues/{issue_number}/labels", body: &[("labels", None)] };
/// `PATCH /repos/{owner}/{repo}/issues/{issue_number}`: close as completed (`issues/update`).
pub const CLOSE_ISSUE: Call = Call {
    method: "PATCH",
    path: "/repos/{owner}/{repo}/issues/{issue_number}",
    body: &[("state", Some("closed")), ("state_reason", Some("completed"))],
};
/// `GET /repos/{owner}/{repo}/issues/{issue_number}`: one issue, for its state (`issues/get`).
pub const GET_ISSUE: Call = Call { method: "GET", path: "/repos/{owner}/{repo}/issues/{issue_number}", body: &[] };

/// Every request the client can send.
pub const CALLS: &[Call] = &[CREATE_ISSUE, CREATE_COMMENT, ADD_LABELS, CLOSE_ISSUE, GET_ISSUE];

/// Everything the client needs, resolved from config (the token already read).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The API's base URL: [`DEFAULT_API_URL`], `https://HOST/api/v3` for GitHub Enterprise
    /// Server, or a loopback server in tests.
    pub api_url: String,
    /// The repository, `owner/name`.
    pub repo: String,
    /// A token allowed to read and write the repository's issues.
    pub token: Secret,
    /// Per-request connect and read timeout.
    pub timeout: Duration,
}

impl Settings {
    /// Settings for `repo` on github.com with a 30 s timeout.
    pub fn new(repo: impl Into<String>, token: Secret) -> Self {
        Self { api_url: DEFAULT_API_URL.into(), repo: repo.into(), token, timeout: Duration::from_secs(30) }
    }
}

/// What went wrong talking to GitHub.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The settings cannot make a client (bad repository name, URL or token).
    #[error("GitHub client setup: {0}")]
    Setup(String),
    /// No answer (refused, timed out, TLS failure).
    #[error("cannot reach GitHub at {url}: {message}")]
    Unreachable {
        /// The API URL.
        url: String,
        /// Why.
        message: String,
    },
    /// GitHub answered with an error status.
    #[error("GitHub answered {status} to {method} {path}: {message}; {hint}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Method.
        method: &'static str,
        /// Path sent.
        path: String,
        /// GitHub's message, with its validation errors.
        message: String,
        /// What to do about it.
        hint: String,
    },
    /// The answer was not what GitHub sends.
    #[error("unexpected answer to {method} {path}: {message}")]
    Decode {
        /// Method.
        method: &'static str,
        /// Path sent.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// A call not in [`CALLS`], or a body field it does not declare.
    #[error("bad request: {0}")]
    Bad(String),
}

impl Error {
    /// The HTTP status GitHub answered, if it answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Result with this module's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An issue as labops reads it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Issue {
    /// Its number in the repository.
    pub number: u64,
    /// `open` or `closed`.
    pub state: String,
    /// Why it was closed (`completed`, `not_planned`...), when GitHub says.
    #[serde(default)]
    pub state_reason: Option<String>,
    /// Its title.
    pub title: String,
    /// Where a human reads it.
    #[serde(default)]
    pub html_url: String,
    /// Its label names.
    #[serde(default, deserialize_with = "label_names")]
    pub labels: Vec<String>,
    /// Whether it is a pull request (GitHub's issue endpoints answer for those too).
    #[serde(default, rename = "pull_request", deserialize_with = "present")]
    pub is_pull_request: bool,
}

/// A comment as labops reads it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Comment {
    /// Its id.
    pub id: u64,
    /// Its text.
    #[serde(default)]
    pub body: String,
    /// Where a human reads it.
    #[serde(default)]
    pub html_url: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum LabelRef {
    Name(String),
    Object { name: String },
}

fn label_names<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    let labels: Option<Vec<LabelRef>> = Deserialize::deserialize(d)?;
    Ok(labels
        .unwrap_or_default()
        .into_iter()
        .map(|l| match l {
            LabelRef::Name(n) | LabelRef::Object { name: n } => n,
        })
        .collect())
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    let v: Value = Deserialize::deserialize(d)?;
    Ok(!v.is_null())
}

/// Splits `owner/name`, checking both parts are names GitHub allows.
pub fn parse_repo(repo: &str) -> Result<(String, String), String> {
    let bad = || format!("{repo:?} is not a GitHub repository: write it as owner/name (for example homelab/gitops)");
    let (owner, name) = repo.trim().split_once('/').ok_or_else(bad)?;
    let owner_ok = !owner.is_empty() && owner.len() <= 39 && owner.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let name_ok = !name.is_empty()
        && name.len() <= 100
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if owner_ok && name_ok { Ok((owner.to_string(), name.to_string())) } else { Err(bad()) }
}

/// The web address for an API URL: github.com for the public API, `https://HOST` for GitHub
/// Enterprise Server (`https://HOST/api/v3`).
fn web_url(api_url: &str) -> String {
    let u = api_url.trim_end_matches('/');
    match u.strip_suffix("/api/v3") {
        Some(base) => base.to_string(),
        None => "https://github.com".into(),
    }
}

/// A GitHub client for one repository's issues.
pub struct Client {
    octo: octocrab::Octocrab,
    api_url: String,
    owner: String,
    name: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("api_url", &self.api_url).field("repo", &self.repo()).finish_non_exhaustive()
    }
}

impl Client {
    /// Builds the client; no request is sent yet. Call it inside a tokio runtime (octocrab
    /// starts a task for its connection pool).
    pub fn new(settings: Settings) -> Result<Self> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Setup("the GitHub client must be built inside a tokio runtime".into()));
        }
        crate::install_crypto_provider();
        let (owner, name) = parse_repo(&settings.repo).map_err(Error::Setup)?;
        let token = settings.token.expose();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::Setup(
                "the GitHub token is empty or holds characters a token cannot have; check the file [forge] token_file names".into(),
            ));
        }
        let api_url = settings.api_url.trim_end_matches('/').to_string();
        if !(api_url.starts_with("https://") || api_url.starts_with("http://")) {
            return Err(Error::Setup(format!("api_url {api_url:?} is not an http(s) URL; leave it out for github.com")));
        }
        let octo = octocrab::Octocrab::builder()
            .base_uri(api_url.as_str())
            .map_err(|e| Error::Setup(format!("api_url {api_url:?} is not a URL: {}", chain(&e))))?
            .personal_token(token.to_string())
            .add_header(http::header::ACCEPT, "application/vnd.github+json".into())
            .set_connect_timeout(Some(settings.timeout.min(Duration::from_secs(10))))
            .set_read_timeout(Some(settings.timeout))
            .set_write_timeout(Some(settings.timeout))
            .build()
            .map_err(|e| Error::Setup(chain(&e)))?;
        Ok(Self { octo, api_url, owner, name })
    }

    /// `owner/name`.
    pub fn repo(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }

    /// The API's base URL.
    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// Where a human reads issue `number`.
    pub fn issue_url(&self, number: u64) -> String {
        format!("{}/{}/{}/issues/{number}", web_url(&self.api_url), self.owner, self.name)
    }

    /// Opens an issue; labels are left out when there are none.
    pub async fn create_issue(&self, title: &str, body: &str, labels: &[String]) -> Result<Issue> {
        let mut b = Map::new();
        b.insert("title".into(), title.into());
        b.insert("body".into(), body.into());
        if !labels.is_empty() {
            b.insert("labels".into(), labels.into());
        }
        self.send(&CREATE_ISSUE, None, Some(b)).await
    }

    /// Comments on issue `number`.
    pub async fn create_comment(&self, number: u64, body: &str) -> Result<Comment> {
        let mut b = Map::new();
        b.insert("body".into(), body.into());
        self.send(&CREATE_COMMENT, Some(number), Some(b)).await
    }

    /// Adds labels to issue `number`; returns all its labels. Sends nothing when `labels` is
    /// empty (GitHub wants at least one).
    pub async fn add_labels(&self, number: u64, labels: &[String]) -> Result<Vec<String>> {
        if labels.is_empty() {
            return Ok(Vec::new());
        }
        let mut b = Map::new();
        b.insert("labels".into(), labels.into());
        let all: Vec<Value> = self.send(&ADD_LABELS, Some(number), Some(b)).await?;
        Ok(all.iter().filter_map(|l| l["name"].as_str().map(str::to_string)).collect())
    }

    /// Closes issue `number` as completed. Closing a closed issue is fine.
    pub async fn close_issue(&self, number: u64) -> Result<Issue> {
        self.send(&CLOSE_ISSUE, Some(number), Some(Map::new())).await
    }

    /// Issue `number` as it is now.
    pub async fn issue(&self, number: u64) -> Result<Issue> {
        self.send(&GET_ISSUE, Some(number), None).await
    }

    /// Sends one of the [`CALLS`]: fills the path, adds the call's fixed body values, refuses
    /// undeclared fields, and decodes the answer.
    async fn send<R: serde::de::DeserializeOwned>(&self, call: &Call, number: Option<u64>, body: Option<Map<String, Value>>) -> Result<R> {
        if !CALLS.contains(call) {
            return Err(Error::Bad(format!("{} {} is not in the client's call list", call.method, call.path)));
        }
        let mut path = call.path.replace("{owner}", &self.owner).replace("{repo}", &self.name);
        if path.contains("{issue_number}") {
            let n = number.ok_or_else(|| Error::Bad(format!("{} {} needs an issue number", call.method, call.path)))?;
            path = path.replace("{issue_number}", &n.to_string());
        }
        let body = match body {
            None => None,
            Some(mut b) => {
                if let Some(k) = b.keys().find(|k| !call.body.iter().any(|(name, _)| name == k)) {
                    return Err(Error::Bad(format!("{} {}: body field {k} is not declared for this call", call.method, call.path)));
                }
                for (name, fixed) in call.body {
                    if let Some(v) = fixed {
                        b.insert((*name).to_string(), Value::String((*v).to_string()));
                    }
                }
                Some(Value::Object(b))
            }
        };
        let answer: std::result::Result<Value, octocrab::Error> = match call.method {
            "GET" => self.octo.get(&path, None::<&()>).await,
            "POST" => self.octo.post(&path, body.as_ref()).await,
            "PATCH" => self.octo.patch(&path, body.as_ref()).await,
            other => return Err(Error::Bad(format!("{other}: the client sends no such method"))),
        };
        let value = answer.map_err(|e| self.error(call, &path, number, e))?;
        serde_json::from_value(value).map_err(|e| Error::Decode { method: call.method, path, message: e.to_string() })
    }

    fn error(&self, call: &Call, path: &str, number: Option<u64>, e: octocrab::Error) -> Error {
        let repo = self.repo();
        match e {
            octocrab::Error::GitHub { source, .. } => {
                let status = source.status_code.as_u16();
                let mut message = source.message.clone();
                for detail in source.errors.iter().flatten() {
                    let text = match detail {
                        Value::String(s) => s.clone(),
                        Value::Object(o) => {
                            let part = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                            match o.get("message").and_then(Value::as_str) {
                                Some(m) => m.to_string(),
                                None => format!("{} {} is {}", part("resource"), part("field"), part("code")),
                            }
                        }
                        other => other.to_string(),
                    };
                    message.push_str(&format!(" ({text})"));
                }
                let what = number.map(|n| format!("issue #{n} in {repo}")).unwrap_or_else(|| repo.clone());
                let hint = match status {
                    401 => "the token was refused: check that the file [forge] token_file names holds a valid, unexpired token".to_string(),
                    403 if message.to_ascii_lowercase().contains("rate limit") => {
                        "GitHub's rate limit is spent: labops retries on its next pass; wait for the reset".to_string()
                    }
                    403 => format!("the token may not write issues in {repo}: give it Issues read and write on that repository (a classic token needs the repo scope)"),
                    404 => format!("{what} does not exist or the token cannot see it: check [forge] repo and the token's repository access"),
                    410 => format!("issues are disabled in {repo} or the issue was deleted: enable issues in the repository settings"),
                    422 => "GitHub refused the request as invalid; the message says which field".to_string(),
                    s if s >= 500 => "GitHub is having trouble; labops retries on its next pass".to_string(),
                    _ => format!("see {}", source.documentation_url.as_deref().unwrap_or("GitHub's REST documentation")),
                };
                Error::Status { status, method: call.method, path: path.to_string(), message, hint }
            }
            other => {
                let text = chain(&other);
                if matches!(other, octocrab::Error::Serde { .. } | octocrab::Error::Json { .. }) {
                    Error::Decode { method: call.method, path: path.to_string(), message: text }
                } else {
                    Error::Unreachable { url: self.api_url.clone(), message: text }
                }
            }
        }
    }
}

/// An error and its sources on one line, each cut to its first line (octocrab's messages can
/// carry a backtrace).
fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![first_line(&e.to_string())];
    let mut source = e.source();
    while let Some(s) = source {
        let line = first_line(&s.to_string());
        if !line.is_empty() && !parts.iter().any(|p| p.contains(&line)) {
            parts.push(line);
        }
        source = s.source();
    }
    parts.join(": ")
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_are_owner_slash_name() {
        assert_eq!(parse_repo("homelab/gitops").unwrap(), ("homelab".to_string(), "gitops".to_string()));
        assert_eq!(parse_repo("a-b/c.d_e").unwrap(), ("a-b".to_string(), "c.d_e".to_string()));
        for bad in ["gitops", "/gitops", "homelab/", "a/b/c", "home lab/x", "a/..", "https://github.com/a/b"] {
            let e = parse_repo(bad).unwrap_err();
            assert!(e.contains("owner/name"), "{bad}: {e}");
        }
    }

    #[test]
    fn links_point_at_the_web_not_the_api() {
        assert_eq!(web_url(DEFAULT_API_URL), "https://github.com");
        assert_eq!(web_url("https://ghe.example.org/api/v3/"), "https://ghe.example.org");
    }

    #[tokio::test]
    async fn the_token_is_never_printed() {
        let s = Settings::new("homelab/gitops", Secret::new("ghp_sekrit"));
        assert!(!format!("{s:?}").contains("sekrit"));
        let c = Client::new(s).unwrap();
        assert!(!format!("{c:?}").contains("sekrit"));
        let e = Client::new(Settings::new("homelab/gitops", Secret::new("two\nlines"))).unwrap_err();
        assert!(e.to_string().contains("token_file") && !e.to_string().contains("two"), "{e}");
    }

    #[test]
    fn outside_a_runtime_the_client_says_so_instead_of_panicking() {
        let e = Client::new(Settings::new("homelab/gitops", Secret::new("t"))).unwrap_err();
        assert!(e.to_string().contains("tokio runtime"), "{e}");
    }

    #[test]
    fn issues_decode_label_objects_and_pull_requests() {
        let i: Issue = serde_json::from_value(serde_json::json!({
            "number": 3, "state": "open", "title": "t", "labels": [{"name": "a"}, "b"],
            "pull_request": {"url": "x"}
        }))
        .unwrap();
        assert_eq!(i.labels, ["a", "b"]);
        assert!(i.is_pull_request);
        let i: Issue = serde_json::from_value(serde_json::json!({"number": 3, "state": "open", "title": "t", "pull_request": null})).unwrap();
        assert!(!i.is_pull_request);
    }
}
