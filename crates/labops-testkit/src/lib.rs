//! Test doubles for labops. [`fakepve`] starts the real Proxmox VE simulator (fakepve, from PyPI)
//! with its fault-injection channel. The other is [`FakeKube`], a stateful fake Kubernetes API
//! server: it holds objects and serves them over plain HTTP the way the real API server does
//! (discovery, list with selectors and pagination, watch with resourceVersions, bookmarks and
//! 410 Expired, get/create/replace/patch/server-side apply/delete, status and scale
//! subresources), so kube-rs clients, reflectors and watchers work against it unchanged.
//!
//! Tests change the cluster in-process with [`FakeKube::apply`], [`FakeKube::delete`] and
//! [`FakeKube::set_status`], and make the API misbehave with [`FakeKube::set_unavailable`],
//! [`FakeKube::fail_watches`], [`FakeKube::expire_watches`] or [`FakeKube::set_offline`].
//!
//! [`sshd::Sshd`] runs a real OpenSSH server on loopback for tests of commands run over SSH.
//!
//! [`github`] loads GitHub's published REST description and the responses `@octokit/fixtures`
//! recorded from the real API, and replays them from a loopback server ([`github::Replay`]).
//!
//! [`llm::ScriptedLlm`] answers chat requests with scripted turns in the Ollama, OpenAI and
//! Anthropic wire formats (streaming and not), for tests of code that talks to a model.
//!
//! ```no_run
//! # async fn demo() {
//! use labops_testkit::FakeKube;
//! use serde_json::json;
//!
//! let kube = FakeKube::start().await;
//! kube.apply(json!({
//!     "apiVersion": "v1", "kind": "Node",
//!     "metadata": {"name": "k3s-1"},
//!     "status": {"conditions": [{"type": "Ready", "status": "True"}]}
//! }));
//! // Hand this file to the code under test (e.g. as its kubeconfig setting).
//! let kubeconfig = kube.kubeconfig(std::env::temp_dir());
//! # let _ = kubeconfig;
//! kube.set_unavailable(true); // now every request answers 503
//! # }
//! ```

pub mod fakepve;
pub mod github;
pub mod llm;
pub mod sshd;

mod fields;
mod resources;
mod selector;
mod server;
mod store;
mod util;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub use resources::{default_resources, ResourceType};
use store::State;

/// What can go wrong starting or driving the fake.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The listening socket could not be set up.
    #[error("fake kube-apiserver: cannot listen on {addr}: {source}")]
    Bind {
        /// The address tried.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// An in-process write was rejected (unknown kind, missing name or namespace, bad name).
    #[error("fake kube-apiserver: {0}")]
    Invalid(String),
    /// The kubeconfig file could not be written.
    #[error("fake kube-apiserver: cannot write kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// The write error.
        #[source]
        source: std::io::Error,
    },
}

/// How to start a [`FakeKube`].
#[derive(Debug, Clone)]
pub struct Options {
    /// When set, every request must carry `Authorization: Bearer <token>` (else 401), and the
    /// kubeconfig carries the token.
    pub token: Option<String>,
    /// How many change events are kept for watches to resume from. A watch or continue token
    /// older than the history answers 410 Expired, as after an etcd compaction.
    pub history: usize,
    /// How often a watch that asked for bookmarks gets one while idle (the real server sends
    /// them about once a minute).
    pub bookmark_interval: Duration,
    /// Create `default`, `kube-system`, `kube-public` and `kube-node-lease` at start, as a
    /// real cluster has them.
    pub system_namespaces: bool,
    /// The resources served; [`default_resources`] unless changed.
    pub resources: Vec<ResourceType>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            token: None,
            history: 1000,
            bookmark_interval: Duration::from_secs(30),
            system_namespaces: true,
            resources: default_resources(),
        }
    }
}

/// One request the fake answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Path, e.g. `/api/v1/pods`.
    pub path: String,
    /// Raw query string, e.g. `watch=true&resourceVersion=12`.
    pub query: String,
    /// HTTP status answered (for a watch: when the stream started).
    pub status: u16,
}

impl RequestRecord {
    /// True for a watch request.
    pub fn is_watch(&self) -> bool {
        self.query.split('&').any(|p| p == "watch=true" || p == "watch=1")
    }
}

const LOG_CAP: usize = 10_000;

/// State shared by the handle and the HTTP server.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// The latest resourceVersion; watches wake when it changes.
    pub(crate) changes: watch::Sender<u64>,
    /// Bumped to end every open watch stream.
    pub(crate) control: watch::Sender<u64>,
    /// Non-zero: every request answers with this status code.
    pub(crate) fail_all: AtomicU16,
    /// Non-zero: every watch request answers with this status code.
    pub(crate) fail_watch: AtomicU16,
    pub(crate) token: Option<String>,
    pub(crate) bookmark_interval: Duration,
    pub(crate) open_watches: AtomicUsize,
    pub(crate) addr: SocketAddr,
    log: Mutex<VecDeque<RequestRecord>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Reads the state.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&lock(&self.state))
    }

    /// Changes the state, then wakes the watches if anything was written.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let (out, rv) = {
            let mut st = lock(&self.state);
            let out = f(&mut st);
            (out, st.rv)
        };
        self.changes.send_if_modified(|cur| {
            let changed = *cur != rv;
            *cur = rv;
            changed
        });
        out
    }

    /// Ends every open watch stream.
    pub(crate) fn close_watches(&self) {
        self.control.send_modify(|e| *e += 1);
    }

    pub(crate) fn record(&self, r: RequestRecord) {
        let mut log = lock(&self.log);
        if log.len() >= LOG_CAP {
            log.pop_front();
        }
        log.push_back(r);
    }
}

struct Server {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// A running fake Kubernetes API server on `127.0.0.1`, with in-process controls.
///
/// Dropping it stops the server (open watches end); [`FakeKube::shutdown`] also waits.
pub struct FakeKube {
    shared: Arc<Shared>,
    server: Mutex<Option<Server>>,
}

impl std::fmt::Debug for FakeKube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeKube").field("url", &self.url()).finish_non_exhaustive()
    }
}

fn listen(addr: SocketAddr) -> Result<TcpListener, Error> {
    let bind = |addr| -> std::io::Result<TcpListener> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(1024)
    };
    bind(addr).map_err(|source| Error::Bind { addr, source })
}

fn serve(listener: TcpListener, shared: Arc<Shared>) -> Server {
    let (stop, stopped) = oneshot::channel::<()>();
    let app = server::router(shared);
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::warn!(error = %e, "fake kube-apiserver stopped with an error");
        }
    });
    Server { stop, task }
}

impl FakeKube {
    /// Starts a fake with [`Options::default`] on an OS-chosen port.
    ///
    /// # Panics
    /// When no local port can be bound.
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    /// Starts a fake with the given options.
    ///
    /// # Panics
    /// When no local port can be bound.
    pub async fn start_with(options: Options) -> Self {
        match Self::try_start(options).await {
            Ok(k) => k,
            Err(e) => panic!("{e}"),
        }
    }

    /// Starts a fake with the given options, reporting a bind failure.
    pub async fn try_start(options: Options) -> Result<Self, Error> {
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener.local_addr().map_err(|source| Error::Bind { addr: SocketAddr::from(([127, 0, 0, 1], 0)), source })?;
        let mut state = State::new(options.resources.clone(), options.history);
        if options.system_namespaces {
            for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                state
                    .put_raw(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}, "status": {"phase": "Active"}}))
                    .map_err(Error::Invalid)?;
            }
        }
        let (changes, _) = watch::channel(state.rv);
        let (control, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            changes,
            control,
            fail_all: AtomicU16::new(0),
            fail_watch: AtomicU16::new(0),
            token: options.token.clone(),
            bookmark_interval: options.bookmark_interval.max(Duration::from_millis(10)),
            open_watches: AtomicUsize::new(0),
            addr,
            log: Mutex::new(VecDeque::new()),
        });
        let server = serve(listener, shared.clone());
        Ok(Self { shared, server: Mutex::new(Some(server)) })
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Writes a kubeconfig for this server into `dir` and returns its path. Its single
    /// context `labops-fake` points at [`FakeKube::url`] over plain HTTP, with namespace
    /// `default` and the bearer token when one is configured.
    ///
    /// # Panics
    /// When the file cannot be written; see [`FakeKube::try_kubeconfig`].
    pub fn kubeconfig(&self, dir: impl AsRef<Path>) -> PathBuf {
        match self.try_kubeconfig(dir) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`FakeKube::kubeconfig`], reporting a write failure.
    pub fn try_kubeconfig(&self, dir: impl AsRef<Path>) -> Result<PathBuf, Error> {
        let path = dir.as_ref().join(format!("fake-kube-{}.kubeconfig", self.shared.addr.port()));
        let user = match &self.shared.token {
            Some(t) => format!("\n    token: {}", Value::String(t.clone())),
            None => " {}".to_string(),
        };
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: labops-fake\n  cluster:\n    server: {url}\n\
             contexts:\n- name: labops-fake\n  context:\n    cluster: labops-fake\n    user: labops-fake\n    namespace: default\n\
             current-context: labops-fake\npreferences: {{}}\nusers:\n- name: labops-fake\n  user:{user}\n",
            url = self.url()
        );
        std::fs::write(&path, text).map_err(|source| Error::Kubeconfig { path: path.clone(), source })?;
        Ok(path)
    }

    /// Creates or replaces an object, as stored by the cluster's own components would: the
    /// whole object is stored as given, status included, with a new resourceVersion, and
    /// watches see ADDED or MODIFIED. uid and creationTimestamp are kept from the stored
    /// object (or taken from `obj`, or generated); generation goes up when anything outside
    /// metadata and status changed. Namespace existence is not checked. Returns the stored
    /// object.
    ///
    /// # Panics
    /// When the object is unusable; see [`FakeKube::try_apply`].
    pub fn apply(&self, obj: Value) -> Value {
        match self.try_apply(obj) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`FakeKube::apply`], reporting an unknown apiVersion/kind, a missing or invalid name, or
    /// a namespaced object without namespace.
    pub fn try_apply(&self, obj: Value) -> Result<Value, Error> {
        self.shared.write(|st| st.put_raw(obj)).map_err(Error::Invalid)
    }

    fn resolve(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Option<(usize, String)> {
        self.shared.read(|st| {
            let res = st.find_kind(api_version, kind)?;
            let ns = if st.resources[res].namespaced { namespace.unwrap_or("default").to_string() } else { String::new() };
            Some((res, ns))
        })
    }

    /// The stored object, if any. `namespace` is ignored for cluster-scoped kinds and
    /// defaults to `default` for namespaced ones.
    pub fn get(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let (res, ns) = self.resolve(api_version, kind, namespace)?;
        self.shared.read(|st| st.get(res, &ns, name).cloned())
    }

    /// Deletes an object at once, whatever its finalizers (a namespace takes its contents
    /// with it); watches see DELETED. Returns the deleted object, `None` when there was none.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let (res, ns) = self.resolve(api_version, kind, namespace)?;
        self.shared.write(|st| st.delete_raw(res, &ns, name))
    }

    /// Replaces the status of a stored object (like a kubelet or controller would); watches
    /// see MODIFIED. Returns the stored object.
    ///
    /// # Panics
    /// When the object does not exist.
    pub fn set_status(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str, status: Value) -> Value {
        let mut obj = self
            .get(api_version, kind, namespace, name)
            .unwrap_or_else(|| panic!("fake kube-apiserver: set_status: {api_version} {kind} {namespace:?}/{name} does not exist"));
        obj["status"] = status;
        self.apply(obj)
    }

    /// Every stored object of a kind (matched by kind, e.g. `Pod`, or plural, e.g. `pods`, in
    /// any group), ordered by namespace and name.
    pub fn list(&self, kind: &str) -> Vec<Value> {
        self.shared.read(|st| {
            (0..st.resources.len())
                .filter(|i| st.resources[*i].kind == kind || st.resources[*i].plural == kind)
                .flat_map(|i| st.current(i, None))
                .collect()
        })
    }

    /// Serves one more resource type (e.g. a custom resource); replaces a type with the same
    /// group, version and plural.
    pub fn register(&self, resource: ResourceType) {
        self.shared.write(|st| st.register(resource));
    }

    /// The latest resourceVersion handed out.
    pub fn resource_version(&self) -> u64 {
        self.shared.read(|st| st.rv)
    }

    /// Forgets the event history, like an etcd compaction past every resourceVersion handed
    /// out so far: open watches get an `ERROR` event with a 410 Expired `Status` (and end),
    /// and a watch or continue token from an older resourceVersion answers 410 too, so every
    /// watcher has to re-list.
    pub fn compact(&self) {
        self.shared.write(State::compact);
    }

    /// Ends every open watch stream, as a dropped connection or server-side timeout would;
    /// clients reconnect from their last resourceVersion.
    pub fn close_watches(&self) {
        self.shared.close_watches();
    }

    /// [`FakeKube::compact`] then [`FakeKube::close_watches`]: streams end (some first
    /// deliver the in-stream 410), and every watcher that reconnects from its old
    /// resourceVersion is answered 410 Expired and has to re-list.
    pub fn expire_watches(&self) {
        self.compact();
        self.close_watches();
    }

    /// While on, every request answers 503 ServiceUnavailable and open watches end.
    ///
    /// Note that kube-rs clients built from a kubeconfig retry 429/503/504 answers with
    /// backoff (up to 15 times) before reporting an error; use
    /// [`FakeKube::fail_requests`] with 500 or [`FakeKube::set_offline`] to make a client
    /// see the failure at once.
    pub fn set_unavailable(&self, on: bool) {
        self.fail_requests(on.then_some(503));
    }

    /// While `Some(code)`, every request answers a `Status` with that HTTP code (e.g. 500,
    /// 403, 429) and open watches end; `None` serves again.
    pub fn fail_requests(&self, code: Option<u16>) {
        self.shared.fail_all.store(code.unwrap_or(0), Ordering::SeqCst);
        if code.is_some() {
            self.shared.close_watches();
        }
    }

    /// While on, watch requests answer 503 ServiceUnavailable (lists and gets still work)
    /// and open watches end.
    pub fn fail_watches(&self, on: bool) {
        self.shared.fail_watch.store(if on { 503 } else { 0 }, Ordering::SeqCst);
        if on {
            self.shared.close_watches();
        }
    }

    /// Takes the server off the network (`true`: open watches end, the port is closed and
    /// connections are refused) or back on it at the same address (`false`). State is kept.
    ///
    /// # Panics
    /// When the port cannot be bound again.
    pub async fn set_offline(&self, offline: bool) {
        if offline {
            let server = lock(&self.server).take();
            if let Some(s) = server {
                self.shared.close_watches();
                let _ = s.stop.send(());
                let mut task = s.task;
                if tokio::time::timeout(Duration::from_secs(5), &mut task).await.is_err() {
                    task.abort();
                }
            }
        } else {
            let mut server = lock(&self.server);
            if server.is_none() {
                let listener = listen(self.shared.addr).unwrap_or_else(|e| panic!("{e}"));
                *server = Some(serve(listener, self.shared.clone()));
            }
        }
    }

    /// How many watch streams are open right now.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }

    /// The requests answered so far (the last 10 000), oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.log).iter().cloned().collect()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        lock(&self.shared.log).clear();
    }

    /// Stops the server and waits for it: open watches end, the port closes.
    pub async fn shutdown(self) {
        self.set_offline(true).await;
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        if let Some(s) = lock(&self.server).take() {
            self.shared.close_watches();
            let _ = s.stop.send(());
        }
    }
}
