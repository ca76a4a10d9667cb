//! Proxmox VE REST API client and inventory source.
//!
//! Every request this client can send is listed in [`CALLS`]: the reads the inventory makes, and
//! the guest actions of [`QEMU`] and [`LXC`] (create, clone, start, stop, snapshot, rollback,
//! resize, migrate, config, destroy) with [`TASK_STATUS`] to follow the tasks they start.
//! [`Client::call`] and [`Client::call_with`] only accept an [`ApiCall`] from the list, and only
//! the parameters it declares; a test checks each entry (path, method, parameters and their fixed
//! values) against the PVE API schema in `shared/reference/proxmox/pve-api-schema.json`.
//!
//! Authentication is an API token (`PVEAPIToken=USER@REALM!ID=SECRET`) or a ticket login with a
//! password; tickets are renewed when PVE answers 401 (they expire after two hours). TLS trusts
//! a CA file, the system roots, or (explicitly, with a warning) nothing at all.

use std::collections::BTreeMap;
use std::time::Duration;

use labops_core::inventory::{ids, Entity, EntityKind, Part, Relation, RelationKind, Usage};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::{http_client, Secret, TlsTrust};

/// One kind of request the client sends: method, schema path template, and the query or form
/// parameters it may carry (with the fixed value, where it always sends the same one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiCall {
    /// HTTP method.
    pub method: &'static str,
    /// Path template as in the PVE schema, without `/api2/json`.
    pub path: &'static str,
    /// Parameters other than the path's own, with a fixed value when there is one.
    pub params: &'static [(&'static str, Option<&'static str>)],
}

/// `POST /access/ticket`: ticket login.
pub const LOGIN: ApiCall =
    ApiCall { method: "POST", path: "/access/ticket", params: &[("username", None), ("password", None)] };
/// `GET /version`: API version, used as a connection check.
pub const VERSION: ApiCall = ApiCall { method: "GET", path: "/version", params: &[] };
/// `GET /cluster/status`: quorum and node membership.
pub const CLUSTER_STATUS: ApiCall = ApiCall { method: "GET", path: "/cluster/status", params: &[] };
/// `GET /cluster/resources`: nodes, guests and storage in one answer.
pub const CLUSTER_RESOURCES: ApiCall = ApiCall { method: "GET", path: "/cluster/resources", params: &[] };
/// `GET /nodes/{node}/qemu/{vmid}/config`: a VM's disks and addresses.
pub const QEMU_CONFIG: ApiCall =
    ApiCall { method: "GET", path: "/nodes/{node}/qemu/{vmid}/config", params: &[("current", Some("1"))] };
/// `GET /nodes/{node}/lxc/{vmid}/config`: a container's volumes and addresses.
pub const LXC_CONFIG: ApiCall =
    ApiCall { method: "GET", path: "/nodes/{node}/lxc/{vmid}/config", params: &[("current", Some("1"))] };

/// `GET /nodes/{node}/tasks/{upid}/status`: whether a worker task is still running, and how it ended.
pub const TASK_STATUS: ApiCall = ApiCall { method: "GET", path: "/nodes/{node}/tasks/{upid}/status", params: &[] };

/// Config keys labops may set on a VM, at creation and later (`net[n]` stands for `net0`, `net1`...).
macro_rules! qemu_options {
    ($($extra:literal),*) => {
        &[$(($extra, None),)*
          ("name", None), ("description", None), ("tags", None), ("memory", None), ("balloon", None),
          ("cores", None), ("sockets", None), ("cpu", None), ("cpulimit", None), ("cpuunits", None),
          ("numa", None), ("ostype", None), ("machine", None), ("bios", None), ("boot", None), ("agent", None),
          ("onboot", None), ("startup", None), ("protection", None), ("scsihw", None), ("vga", None),
          ("serial[n]", None), ("net[n]", None), ("scsi[n]", None), ("virtio[n]", None), ("sata[n]", None),
          ("ide[n]", None), ("efidisk0", None), ("tpmstate0", None), ("ipconfig[n]", None), ("ciuser", None),
          ("cipassword", None), ("sshkeys", None), ("nameserver", None), ("searchdomain", None),
          ("citype", None), ("cicustom", None), ("hotplug", None), ("kvm", None), ("hostpci[n]", None),
          ("usb[n]", None)]
    };
}

/// Config keys labops may set on a container, at creation and later.
macro_rules! lxc_options {
    ($($extra:literal),*) => {
        &[$(($extra, None),)*
          ("hostname", None), ("description", None), ("tags", None), ("memory", None), ("swap", None),
          ("cores", None), ("cpulimit", None), ("cpuunits", None), ("net[n]", None), ("rootfs", None),
          ("mp[n]", None), ("onboot", None), ("startup", None), ("protection", None), ("features", None),
          ("nameserver", None), ("searchdomain", None), ("timezone", None), ("arch", None), ("ostype", None)]
    };
}

/// The requests that act on one kind of guest (`qemu` or `lxc`): the same operations under
/// `/nodes/{node}/qemu/...` or `/nodes/{node}/lxc/...`, each with the parameters PVE takes there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestCalls {
    /// `qemu` or `lxc`.
    pub kind: &'static str,
    /// `POST /nodes/{node}/{kind}`: create (a UPID).
    pub create: ApiCall,
    /// `POST .../{vmid}/clone`: copy to `newid` (a UPID).
    pub clone: ApiCall,
    /// `DELETE .../{vmid}`: destroy (a UPID).
    pub destroy: ApiCall,
    /// `GET .../{vmid}/status/current`: power state and lock.
    pub status: ApiCall,
    /// `POST .../{vmid}/status/start` (a UPID).
    pub start: ApiCall,
    /// `POST .../{vmid}/status/stop`: hard stop (a UPID).
    pub stop: ApiCall,
    /// `GET .../{vmid}/pending`: each key's current value and the value the next start applies.
    pub pending: ApiCall,
    /// `PUT .../{vmid}/config`: set keys, `delete` others.
    pub set_config: ApiCall,
    /// `GET .../{vmid}/snapshot`: the snapshots.
    pub snapshots: ApiCall,
    /// `POST .../{vmid}/snapshot`: take one (a UPID).
    pub snapshot: ApiCall,
    /// `DELETE .../{vmid}/snapshot/{snapname}` (a UPID).
    pub delete_snapshot: ApiCall,
    /// `POST .../{vmid}/snapshot/{snapname}/rollback` (a UPID).
    pub rollback: ApiCall,
    /// `PUT .../{vmid}/resize`: grow a disk (a UPID).
    pub resize: ApiCall,
    /// `POST .../{vmid}/migrate`: move to another node (a UPID).
    pub migrate: ApiCall,
}

/// The requests for VMs.
pub const QEMU: GuestCalls = GuestCalls {
    kind: "qemu",
    create: ApiCall {
        method: "POST",
        path: "/nodes/{node}/qemu",
        params: qemu_options!("vmid", "storage", "start", "pool", "unique"),
    },
    clone: ApiCall {
        method: "POST",
        path: "/nodes/{node}/qemu/{vmid}/clone",
        params: &[
            ("newid", None),
            ("name", None),
            ("description", None),
            ("full", None),
            ("target", None),
            ("storage", None),
            ("pool", None),
            ("snapname", None),
        ],
    },
    destroy: ApiCall {
        method: "DELETE",
        path: "/nodes/{node}/qemu/{vmid}",
        params: &[("purge", Some("1")), ("destroy-unreferenced-disks", Some("1"))],
    },
    status: ApiCall { method: "GET", path: "/nodes/{node}/qemu/{vmid}/status/current", params: &[] },
    start: ApiCall { method: "POST", path: "/nodes/{node}/qemu/{vmid}/status/start", params: &[] },
    stop: ApiCall { method: "POST", path: "/nodes/{node}/qemu/{vmid}/status/stop", params: &[] },
    pending: ApiCall { method: "GET", path: "/nodes/{node}/qemu/{vmid}/pending", params: &[] },
    set_config: ApiCall { method: "PUT", path: "/nodes/{node}/qemu/{vmid}/config", params: qemu_options!("delete") },
    snapshots: ApiCall { method: "GET", path: "/nodes/{node}/qemu/{vmid}/snapshot", params: &[] },
    snapshot: ApiCall {
        method: "POST",
        path: "/nodes/{node}/qemu/{vmid}/snapshot",
        params: &[("snapname", None), ("description", None), ("vmstate", None)],
    },
    delete_snapshot: ApiCall { method: "DELETE", path: "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}", params: &[] },
    rollback: ApiCall {
        method: "POST",
        path: "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/rollback",
        params: &[("start", None)],
    },
    resize: ApiCall {
        method: "PUT",
        path: "/nodes/{node}/qemu/{vmid}/resize",
        params: &[("disk", None), ("size", None)],
    },
    migrate: ApiCall {
        method: "POST",
        path: "/nodes/{node}/qemu/{vmid}/migrate",
        params: &[("target", None), ("online", None), ("with-local-disks", None)],
    },
};

/// The requests for containers.
pub const LXC: GuestCalls = GuestCalls {
    kind: "lxc",
    create: ApiCall {
        method: "POST",
        path: "/nodes/{node}/lxc",
        params: lxc_options!("vmid", "ostemplate", "storage", "password", "ssh-public-keys", "unprivileged", "start", "pool"),
    },
    clone: ApiCall {
        method: "POST",
        path: "/nodes/{node}/lxc/{vmid}/clone",
        params: &[
            ("newid", None),
            ("hostname", None),
            ("description", None),
            ("full", None),
            ("target", None),
            ("storage", None),
            ("pool", None),
            ("snapname", None),
        ],
    },
    destroy: ApiCall {
        method: "DELETE",
        path: "/nodes/{node}/lxc/{vmid}",
        params: &[("purge", Some("1")), ("destroy-unreferenced-disks", Some("1"))],
    },
    status: ApiCall { method: "GET", path: "/nodes/{node}/lxc/{vmid}/status/current", params: &[] },
    start: ApiCall { method: "POST", path: "/nodes/{node}/lxc/{vmid}/status/start", params: &[] },
    stop: ApiCall { method: "POST", path: "/nodes/{node}/lxc/{vmid}/status/stop", params: &[] },
    pending: ApiCall { method: "GET", path: "/nodes/{node}/lxc/{vmid}/pending", params: &[] },
    set_config: ApiCall { method: "PUT", path: "/nodes/{node}/lxc/{vmid}/config", params: lxc_options!("delete") },
    snapshots: ApiCall { method: "GET", path: "/nodes/{node}/lxc/{vmid}/snapshot", params: &[] },
    snapshot: ApiCall {
        method: "POST",
        path: "/nodes/{node}/lxc/{vmid}/snapshot",
        params: &[("snapname", None), ("description", None)],
    },
    delete_snapshot: ApiCall { method: "DELETE", path: "/nodes/{node}/lxc/{vmid}/snapshot/{snapname}", params: &[] },
    rollback: ApiCall {
        method: "POST",
        path: "/nodes/{node}/lxc/{vmid}/snapshot/{snapname}/rollback",
        params: &[("start", None)],
    },
    resize: ApiCall { method: "PUT", path: "/nodes/{node}/lxc/{vmid}/resize", params: &[("disk", None), ("size", None)] },
    migrate: ApiCall {
        method: "POST",
        path: "/nodes/{node}/lxc/{vmid}/migrate",
        params: &[("target", None), ("online", None), ("restart", None)],
    },
};

impl GuestCalls {
    /// Every call of the set.
    pub const fn all(&self) -> [ApiCall; 14] {
        [
            self.create,
            self.clone,
            self.destroy,
            self.status,
            self.start,
            self.stop,
            self.pending,
            self.set_config,
            self.snapshots,
            self.snapshot,
            self.delete_snapshot,
            self.rollback,
            self.resize,
            self.migrate,
        ]
    }
}

const READ_CALLS: [ApiCall; 7] = [LOGIN, VERSION, CLUSTER_STATUS, CLUSTER_RESOURCES, QEMU_CONFIG, LXC_CONFIG, TASK_STATUS];

/// Every request the client can send: the read side ([`LOGIN`] ... [`TASK_STATUS`]) and the
/// guest actions of [`QEMU`] and [`LXC`].
pub const CALLS: &[ApiCall] = &concat_calls();

const fn concat_calls() -> [ApiCall; 7 + 14 + 14] {
    let q = QEMU.all();
    let l = LXC.all();
    let mut out = [LOGIN; 7 + 14 + 14];
    let mut i = 0;
    while i < 7 {
        out[i] = READ_CALLS[i];
        i += 1;
    }
    let mut j = 0;
    while j < 14 {
        out[7 + j] = q[j];
        out[7 + 14 + j] = l[j];
        j += 1;
    }
    out
}

impl ApiCall {
    /// Whether the call declares parameter `name`, by its own name or by an indexed family
    /// (`net[n]` declares `net0`, `net1`...), and its fixed value if it has one.
    pub fn param(&self, name: &str) -> Option<Option<&'static str>> {
        self.params.iter().find(|(p, _)| declares(p, name)).map(|(_, v)| *v)
    }
}

fn declares(declared: &str, name: &str) -> bool {
    match declared.strip_suffix("[n]") {
        Some(prefix) => name
            .strip_prefix(prefix)
            .is_some_and(|index| !index.is_empty() && index.len() <= 3 && index.bytes().all(|b| b.is_ascii_digit())),
        None => declared == name,
    }
}

/// How labops logs in to Proxmox.
#[derive(Debug, Clone)]
pub enum Auth {
    /// An API token: `USER@REALM!ID` and its secret.
    Token {
        /// `root@pam!labops`
        id: String,
        /// The token's secret.
        secret: Secret,
    },
    /// Ticket login with a user and password.
    Password {
        /// `root@pam`
        user: String,
        /// The password.
        password: Secret,
    },
}

/// Everything the client needs, resolved from config (secrets already read).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Base URL, `https://host:8006`.
    pub url: String,
    /// Credentials.
    pub auth: Auth,
    /// Which certificates to trust.
    pub tls: TlsTrust,
    /// Per-request timeout.
    pub timeout: Duration,
    /// How many guest configs to fetch at once.
    pub concurrency: usize,
}

/// What went wrong talking to Proxmox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The HTTP client could not be built (bad CA file...).
    #[error("proxmox client setup: {0}")]
    Setup(String),
    /// No answer (refused, timed out, TLS failure).
    #[error("cannot reach Proxmox at {url}: {message}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// Proxmox answered with an error status.
    #[error("Proxmox answered {status} to {method} {path}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Method.
        method: &'static str,
        /// Path sent.
        path: String,
        /// PVE's message.
        message: String,
    },
    /// Login was refused.
    #[error("Proxmox refused the login for {user}: {message}; check the user, password or token in [proxmox]")]
    Login {
        /// Who tried.
        user: String,
        /// PVE's message.
        message: String,
    },
    /// The answer was not the JSON PVE sends.
    #[error("unexpected answer to {path}: {message}")]
    Decode {
        /// Path sent.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// A path parameter was missing or a call not in [`CALLS`] was attempted.
    #[error("bad request {0}")]
    Bad(String),
}

/// Result with this module's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
struct Ticket {
    cookie: String,
    csrf: String,
}

/// A Proxmox VE API client.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    settings: Settings,
    ticket: Mutex<Option<Ticket>>,
}

impl Client {
    /// Builds the client; no request is sent yet.
    pub fn new(settings: Settings) -> Result<Self> {
        let http = http_client(&settings.tls, settings.timeout).map_err(Error::Setup)?;
        Ok(Self { http, settings, ticket: Mutex::new(None) })
    }

    /// The base URL.
    pub fn url(&self) -> &str {
        &self.settings.url
    }

    /// Sends one of the [`CALLS`] with path parameters substituted, and returns PVE's `data`.
    pub async fn call(&self, call: &ApiCall, path_args: &[(&str, &str)]) -> Result<Value> {
        self.call_with(call, path_args, &[]).await
    }

    /// Sends one of the [`CALLS`] with path parameters substituted and request parameters
    /// (`(name, value)`, in the query string for GET and DELETE, in the form body otherwise), and
    /// returns PVE's `data`. Every name must be declared in the call's `params` (an indexed
    /// family such as `net[n]` declares `net0`...); a declared fixed value is always sent and
    /// cannot be given.
    pub async fn call_with(&self, call: &ApiCall, path_args: &[(&str, &str)], params: &[(&str, String)]) -> Result<Value> {
        if !CALLS.contains(call) {
            return Err(Error::Bad(format!("{} {} is not in the client's call list", call.method, call.path)));
        }
        let path = fill_path(call.path, path_args)?;
        let mut sent: Vec<(&str, &str)> = call.params.iter().filter_map(|(k, v)| v.map(|v| (*k, v))).collect();
        for (name, value) in params {
            match call.param(name) {
                None => {
                    return Err(Error::Bad(format!(
                        "{} {}: parameter {name} is not declared for this call",
                        call.method, call.path
                    )));
                }
                Some(Some(fixed)) => {
                    return Err(Error::Bad(format!(
                        "{} {}: parameter {name} is always sent as {fixed}",
                        call.method, call.path
                    )));
                }
                Some(None) => sent.push((name, value.as_str())),
            }
        }
        match self.send(call, &path, &sent).await {
            Err(Error::Status { status: 401, .. }) if matches!(self.settings.auth, Auth::Password { .. }) => {
                // The ticket expired or was revoked: log in again once.
                *self.ticket.lock().await = None;
                self.send(call, &path, &sent).await
            }
            other => other,
        }
    }

    async fn send(&self, call: &ApiCall, path: &str, params: &[(&str, &str)]) -> Result<Value> {
        let url = format!("{}/api2/json{}", self.settings.url.trim_end_matches('/'), path);
        let method = reqwest::Method::from_bytes(call.method.as_bytes())
            .map_err(|_| Error::Bad(format!("{}: not an HTTP method", call.method)))?;
        let mut req = self.http.request(method, &url);
        if !params.is_empty() {
            req = if matches!(call.method, "GET" | "DELETE") { req.query(params) } else { req.form(params) };
        }
        match &self.settings.auth {
            Auth::Token { id, secret } => {
                req = req.header("Authorization", format!("PVEAPIToken={id}={}", secret.expose()));
            }
            Auth::Password { .. } => {
                let t = self.ticket().await?;
                req = req.header("Cookie", format!("PVEAuthCookie={}", t.cookie));
                if call.method != "GET" {
                    req = req.header("CSRFPreventionToken", t.csrf);
                }
            }
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        decode(call.method, path, resp).await
    }

    async fn ticket(&self) -> Result<Ticket> {
        let mut guard = self.ticket.lock().await;
        if let Some(t) = guard.as_ref() {
            return Ok(t.clone());
        }
        let Auth::Password { user, password } = &self.settings.auth else {
            return Err(Error::Bad("ticket login needs a password".into()));
        };
        let url = format!("{}/api2/json{}", self.settings.url.trim_end_matches('/'), LOGIN.path);
        let resp = self
            .http
            .post(&url)
            .form(&[("username", user.as_str()), ("password", password.expose())])
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let data = match decode(LOGIN.method, LOGIN.path, resp).await {
            Ok(d) => d,
            Err(Error::Status { message, .. }) => return Err(Error::Login { user: user.clone(), message }),
            Err(e) => return Err(e),
        };
        let field = |k: &str| {
            data.get(k).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| Error::Decode {
                path: LOGIN.path.into(),
                message: format!("no {k} in the login answer"),
            })
        };
        let t = Ticket { cookie: field("ticket")?, csrf: field("CSRFPreventionToken")? };
        *guard = Some(t.clone());
        Ok(t)
    }

    fn unreachable(&self, e: reqwest::Error) -> Error {
        let mut message = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            message = format!("{message}: {s}");
            src = s.source();
        }
        if message.contains("certificate") {
            message.push_str(" (set [proxmox] ca_file to the cluster's CA, or insecure = true for a lab)");
        }
        Error::Unreachable { url: self.settings.url.clone(), message }
    }

    /// Fetches the whole Proxmox side of the inventory.
    pub async fn fetch(&self) -> Result<Fetched> {
        let (resources, status) =
            tokio::try_join!(self.call(&CLUSTER_RESOURCES, &[]), self.call(&CLUSTER_STATUS, &[]))?;
        let resources = resources.as_array().cloned().ok_or_else(|| Error::Decode {
            path: CLUSTER_RESOURCES.path.into(),
            message: "data is not a list".into(),
        })?;
        let guests: Vec<(String, ApiCall, u32)> = resources
            .iter()
            .filter_map(|r| {
                let call = match r.get("type")?.as_str()? {
                    "qemu" => QEMU_CONFIG,
                    "lxc" => LXC_CONFIG,
                    _ => return None,
                };
                let online = r.get("status").and_then(Value::as_str) != Some("unknown");
                online.then_some((r.get("node")?.as_str()?.to_string(), call, r.get("vmid")?.as_u64()? as u32))
            })
            .collect();
        // Guest configs give disks (storage links) and addresses; fetch them with a bounded
        // concurrency. A failing config only loses that guest's links.
        use futures::StreamExt;
        let configs: Vec<(u32, Result<Value>)> = futures::stream::iter(guests)
            .map(|(node, call, vmid)| self.guest_config(node, call, vmid))
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;
        let mut config_errors = Vec::new();
        let configs: BTreeMap<u32, Value> = configs
            .into_iter()
            .filter_map(|(vmid, r)| match r {
                Ok(v) => Some((vmid, v)),
                Err(e) => {
                    config_errors.push(format!("config of {vmid}: {e}"));
                    None
                }
            })
            .collect();
        Ok(Fetched { resources, status, configs, config_errors })
    }
}

impl Client {
    async fn guest_config(&self, node: String, call: ApiCall, vmid: u32) -> (u32, Result<Value>) {
        let v = vmid.to_string();
        (vmid, self.call(&call, &[("node", &node), ("vmid", &v)]).await)
    }
}

/// The raw answers of one refresh.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// `/cluster/resources`.
    pub resources: Vec<Value>,
    /// `/cluster/status`.
    pub status: Value,
    /// Guest configs by VMID.
    pub configs: BTreeMap<u32, Value>,
    /// Configs that could not be read.
    pub config_errors: Vec<String>,
}

fn fill_path(template: &str, args: &[(&str, &str)]) -> Result<String> {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let end = rest[start..].find('}').map(|e| start + e).ok_or_else(|| Error::Bad(template.into()))?;
        let name = &rest[start + 1..end];
        let value = args
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| Error::Bad(format!("{template}: missing path parameter {name}")))?;
        if value.is_empty() || value.contains(['/', '?', '#', '%']) || value.contains("..") {
            return Err(Error::Bad(format!("{template}: invalid {name} {value:?}")));
        }
        out.push_str(&rest[..start]);
        out.push_str(value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

async fn decode(method: &'static str, path: &str, resp: reqwest::Response) -> Result<Value> {
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| Error::Decode { path: path.into(), message: e.to_string() })?;
    if !status.is_success() {
        let parsed: Option<Value> = serde_json::from_slice(&body).ok();
        let mut message = parsed
            .as_ref()
            .and_then(|v| v.get("message"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| status.canonical_reason().map(str::to_owned))
            .unwrap_or_default();
        if let Some(errors) = parsed.as_ref().and_then(|v| v.get("errors")).filter(|e| !e.is_null()) {
            message = format!("{message} {errors}");
        }
        return Err(Error::Status { status: status.as_u16(), method, path: path.into(), message: message.trim().into() });
    }
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| Error::Decode { path: path.into(), message: format!("not JSON: {e}") })?;
    Ok(v.get("data").cloned().unwrap_or(Value::Null))
}

/// Name of this source.
pub const SOURCE: &str = "proxmox";

/// Turns one refresh into inventory entities and relations, and warnings about the cluster.
pub fn to_part(f: &Fetched) -> (Part, Vec<String>) {
    let mut part = Part::default();
    let mut warnings: Vec<String> = f.config_errors.clone();
    if let Some(items) = f.status.as_array() {
        for it in items {
            if it.get("type").and_then(Value::as_str) == Some("cluster")
                && it.get("quorate").and_then(Value::as_i64) == Some(0)
            {
                warnings.push(format!(
                    "cluster {} has lost quorum: guests cannot be started or changed",
                    it.get("name").and_then(Value::as_str).unwrap_or("?")
                ));
            }
        }
    }
    let s = |r: &Value, k: &str| r.get(k).and_then(Value::as_str).map(str::to_owned);
    let u = |r: &Value, k: &str| r.get(k).and_then(Value::as_u64);
    for r in &f.resources {
        let usage = Usage {
            cpu: r.get("cpu").and_then(Value::as_f64),
            maxcpu: r.get("maxcpu").and_then(Value::as_f64),
            mem: u(r, "mem"),
            maxmem: u(r, "maxmem"),
            disk: u(r, "disk"),
            maxdisk: u(r, "maxdisk"),
            uptime: u(r, "uptime"),
        };
        let node = s(r, "node").unwrap_or_default();
        let status = s(r, "status").unwrap_or_else(|| "unknown".into());
        match r.get("type").and_then(Value::as_str) {
            Some("node") => {
                if status != "online" {
                    warnings.push(format!("node {node} is {status}"));
                }
                let mut e = Entity::new(EntityKind::ProxmoxNode, ids::proxmox_node(&node), &node, status, SOURCE);
                e.usage = usage;
                if let Some(level) = s(r, "level").filter(|l| !l.is_empty()) {
                    e.attributes.insert("subscription".into(), level);
                }
                part.entities.push(e);
            }
            Some(t @ ("qemu" | "lxc")) => {
                let Some(vmid) = u(r, "vmid").map(|v| v as u32) else { continue };
                let (kind, id) =
                    if t == "qemu" { (EntityKind::Vm, ids::vm(vmid)) } else { (EntityKind::Lxc, ids::lxc(vmid)) };
                let name = s(r, "name").unwrap_or_else(|| format!("{t}-{vmid}"));
                let mut e = Entity::new(kind, &id, name, status, SOURCE);
                e.vmid = Some(vmid);
                e.node = Some(node.clone());
                e.usage = usage;
                if let Some(tags) = s(r, "tags") {
                    for tag in tags.split([';', ',', ' ']).filter(|t| !t.is_empty()) {
                        e.labels.insert(tag.to_string(), String::new());
                    }
                }
                for k in ["lock", "hastate", "pool"] {
                    if let Some(v) = s(r, k) {
                        e.attributes.insert(k.into(), v);
                    }
                }
                if u(r, "template") == Some(1) {
                    e.attributes.insert("template".into(), "true".into());
                }
                part.relations.push(Relation::new(&id, RelationKind::RunsOn, ids::proxmox_node(&node)));
                if let Some(cfg) = f.configs.get(&vmid) {
                    for store in config_storages(cfg) {
                        part.relations.push(Relation::new(&id, RelationKind::UsesStorage, ids::storage(&node, &store)));
                    }
                    e.addresses.extend(config_addresses(cfg));
                    if let Some(os) = s(cfg, "ostype") {
                        e.attributes.insert("ostype".into(), os);
                    }
                }
                part.entities.push(e);
            }
            Some("storage") => {
                let Some(name) = s(r, "storage") else { continue };
                let id = ids::storage(&node, &name);
                let mut e = Entity::new(EntityKind::Storage, &id, &name, status, SOURCE);
                e.node = Some(node.clone());
                e.usage = Usage { disk: usage.disk, maxdisk: usage.maxdisk, ..Usage::default() };
                for (k, attr) in [("plugintype", "type"), ("content", "content")] {
                    if let Some(v) = s(r, k) {
                        e.attributes.insert(attr.into(), v);
                    }
                }
                e.attributes.insert("shared".into(), (u(r, "shared") == Some(1)).to_string());
                part.relations.push(Relation::new(&id, RelationKind::RunsOn, ids::proxmox_node(&node)));
                part.entities.push(e);
            }
            _ => {}
        }
    }
    (part, warnings)
}

/// Storage names referenced by a guest config's disks and volumes (`scsi0: local-zfs:vm-108-disk-0`).
pub fn config_storages(cfg: &Value) -> Vec<String> {
    const DISK_KEYS: [&str; 9] = ["ide", "sata", "scsi", "virtio", "efidisk", "tpmstate", "rootfs", "mp", "unused"];
    let Some(obj) = cfg.as_object() else { return Vec::new() };
    let mut out: Vec<String> = obj
        .iter()
        .filter(|(k, _)| {
            *k == "rootfs"
                || DISK_KEYS.iter().any(|p| k.starts_with(p) && k[p.len()..].chars().all(|c| c.is_ascii_digit()) && k.len() > p.len())
        })
        .filter_map(|(_, v)| v.as_str())
        .filter(|v| !v.contains("media=cdrom"))
        .filter_map(|v| {
            let volume = v.split(',').next()?;
            let (store, _) = volume.split_once(':')?;
            (!store.is_empty() && !store.starts_with('/')).then(|| store.to_string())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Static addresses in a guest config (`ipconfig0: ip=192.168.4.212/24,gw=...`, `net0: ...,ip=...`).
pub fn config_addresses(cfg: &Value) -> Vec<String> {
    let Some(obj) = cfg.as_object() else { return Vec::new() };
    let mut out = Vec::new();
    for (k, v) in obj {
        if !(k.starts_with("ipconfig") || k.starts_with("net")) {
            continue;
        }
        let Some(v) = v.as_str() else { continue };
        for kv in v.split(',') {
            if let Some(ip) = kv.strip_prefix("ip=").or_else(|| kv.strip_prefix("ip6=")) {
                let ip = ip.split('/').next().unwrap_or(ip);
                if !matches!(ip, "dhcp" | "auto" | "manual" | "") {
                    out.push(ip.to_string());
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_are_filled_and_checked() {
        assert_eq!(
            fill_path(QEMU_CONFIG.path, &[("node", "still-fawn"), ("vmid", "108")]).unwrap(),
            "/nodes/still-fawn/qemu/108/config"
        );
        assert!(fill_path(QEMU_CONFIG.path, &[("node", "still-fawn")]).is_err());
        assert!(fill_path(QEMU_CONFIG.path, &[("node", "../x"), ("vmid", "1")]).is_err());
    }

    #[test]
    fn indexed_parameters_are_declared_by_their_family() {
        assert_eq!(QEMU.set_config.param("net0"), Some(None));
        assert_eq!(QEMU.set_config.param("scsi13"), Some(None));
        assert_eq!(QEMU.set_config.param("net"), None);
        assert_eq!(QEMU.set_config.param("netx"), None);
        assert_eq!(QEMU.set_config.param("net0x"), None);
        assert_eq!(QEMU.destroy.param("purge"), Some(Some("1")));
        assert_eq!(CALLS.len(), 7 + 2 * 14);
        assert!(CALLS.contains(&TASK_STATUS) && CALLS.contains(&QEMU.snapshot) && CALLS.contains(&LXC.migrate));
    }

    #[tokio::test]
    async fn undeclared_or_fixed_parameters_are_refused_before_sending() {
        let client = Client::new(Settings {
            url: "https://127.0.0.1:1".into(),
            auth: Auth::Token { id: "root@pam!t".into(), secret: Secret::new("x") },
            tls: TlsTrust::System,
            timeout: Duration::from_secs(1),
            concurrency: 1,
        })
        .unwrap();
        let path = [("node", "pve"), ("vmid", "100")];
        let err = client.call_with(&QEMU.set_config, &path, &[("bogus", "1".into())]).await.unwrap_err();
        assert!(err.to_string().contains("bogus is not declared"), "{err}");
        let err = client.call_with(&QEMU.destroy, &path, &[("purge", "0".into())]).await.unwrap_err();
        assert!(err.to_string().contains("always sent as 1"), "{err}");
        let stray = ApiCall { method: "DELETE", path: "/nodes/{node}", params: &[] };
        assert!(matches!(client.call(&stray, &[("node", "pve")]).await, Err(Error::Bad(_))));
    }

    #[test]
    fn disks_and_addresses_come_from_the_config() {
        let cfg = json!({
            "scsi0": "local-zfs:vm-108-disk-0,size=32G",
            "ide2": "local:iso/debian.iso,media=cdrom",
            "efidisk0": "local-zfs:vm-108-disk-1,size=1M",
            "virtio1": "/dev/disk/by-id/nvme-x,size=100G",
            "unused0": "tank:vm-108-disk-9",
            "ipconfig0": "ip=192.168.4.212/24,gw=192.168.4.1",
            "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr0",
            "scsihw": "virtio-scsi-pci"
        });
        assert_eq!(config_storages(&cfg), ["local-zfs", "tank"]);
        assert_eq!(config_addresses(&cfg), ["192.168.4.212"]);
        let ct = json!({"rootfs": "local-zfs:subvol-103-disk-0,size=8G", "mp0": "tank:subvol-103-disk-1,mp=/data",
                        "net0": "name=eth0,bridge=vmbr0,ip=192.168.4.211/24"});
        assert_eq!(config_storages(&ct), ["local-zfs", "tank"]);
        assert_eq!(config_addresses(&ct), ["192.168.4.211"]);
    }

    #[test]
    fn lost_quorum_and_offline_nodes_become_warnings() {
        let f = Fetched {
            resources: vec![
                json!({"type": "node", "node": "pve", "status": "offline", "id": "node/pve"}),
                json!({"type": "qemu", "node": "pve", "vmid": 107, "name": "k3s-vm-pve", "status": "unknown"}),
            ],
            status: json!([{"type": "cluster", "name": "homelab", "quorate": 0}]),
            configs: BTreeMap::new(),
            config_errors: vec![],
        };
        let (part, warnings) = to_part(&f);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("lost quorum"));
        assert!(warnings[1].contains("node pve is offline"));
        assert_eq!(part.entities[1].status, "unknown");
        assert_eq!(part.relations[0], Relation::new("vm/107", RelationKind::RunsOn, "proxmox_node/pve"));
    }
}
