//! Proxmox VE REST API client and inventory source.
//!
//! Every request this client can send is listed in [`CALLS`]; [`Client::call`] only accepts an
//! [`ApiCall`] from it, and a test checks each entry (path, method, parameters and their fixed
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

/// Every request the client can send.
pub const CALLS: &[ApiCall] = &[LOGIN, VERSION, CLUSTER_STATUS, CLUSTER_RESOURCES, QEMU_CONFIG, LXC_CONFIG];

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
        if !CALLS.contains(call) {
            return Err(Error::Bad(format!("{} {} is not in the client's call list", call.method, call.path)));
        }
        let path = fill_path(call.path, path_args)?;
        let query: Vec<(&str, &str)> = call.params.iter().filter_map(|(k, v)| v.map(|v| (*k, v))).collect();
        match self.send(call, &path, &query).await {
            Err(Error::Status { status: 401, .. }) if matches!(self.settings.auth, Auth::Password { .. }) => {
                // The ticket expired or was revoked: log in again once.
                *self.ticket.lock().await = None;
                self.send(call, &path, &query).await
            }
            other => other,
        }
    }

    async fn send(&self, call: &ApiCall, path: &str, query: &[(&str, &str)]) -> Result<Value> {
        let url = format!("{}/api2/json{}", self.settings.url.trim_end_matches('/'), path);
        let method = reqwest::Method::from_bytes(call.method.as_bytes()).expect("static method");
        let mut req = self.http.request(method, &url).query(query);
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
