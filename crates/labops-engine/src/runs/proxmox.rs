//! `proxmox-task`: Proxmox VE API actions on one guest, each waiting for its task (UPID).
//!
//! # The step
//!
//! ```yaml
//! - name: test-vm
//!   type: proxmox-task
//!   node: "{{.node}}"            # the node the guest lives on (or is created on)
//!   vmid: "{{.vmid}}"            # the guest's VMID
//!   guest:                       # optional: the guest's kind and its creation parameters
//!     kind: qemu                 # qemu (default) or lxc
//!     name: test-vm              # any VM (or container) setting labops may send, e.g.
//!     memory: 1024               # cores, net0, scsi0, ostemplate (lxc), rootfs (lxc)...
//!     scsi0: "local-lvm:8"
//!   actions:                     # done in order
//!     - create                   # creates the guest from `guest`
//!     - start
//!     - snapshot                 # snapname defaults to one derived from the run and step
//!     - {action: config, config: {memory: 2048, onboot: 1, description: null}}
//!   snapname: before-change      # step-level parameters, used by any action that takes them
//! ```
//!
//! `actions` is a list whose items are an action's name, or a mapping `{action: NAME, ...}`
//! with its parameters; a parameter not in the mapping is taken from the step's field of the
//! same name (`snapname`, `newid`, `disk`, `size`, `target`, `config`). `node`, `vmid` and
//! `guest.kind` apply to every action. The actions:
//!
//! | action     | parameters                                             | undone by                |
//! |------------|--------------------------------------------------------|--------------------------|
//! | `create`   | the `guest` mapping (must come first)                  | stop, then destroy       |
//! | `clone`    | `newid`; `name` (or `hostname`), `full`, `storage`, `pool` (else from `guest`), `target`, `description` | stop, then destroy the copy |
//! | `start`    |                                                        | stop                     |
//! | `stop`     | (a hard stop)                                          | start                    |
//! | `snapshot` | `snapname` (default `run-<id>-<step>`), `description`, `vmstate` (qemu) | delete the snapshot |
//! | `rollback` | `snapname` (required), `start`                         | cannot be undone         |
//! | `resize`   | `disk` (`scsi0`, `rootfs`...), `size` (`+2G`, `32G`)   | cannot be undone         |
//! | `migrate`  | `target` node                                          | migrate back             |
//! | `config`   | `config`: keys to set; `null` deletes a key            | restore the old values   |
//!
//! After `clone`, the following actions act on the copy; after `migrate`, on the target node.
//! `labops workflow validate` declares `actions` a list of plain values, so workflow files write
//! action names and give parameters as step fields (`snapname: x`, `config: {...}`); the mapping
//! form is for steps that carry two actions of a kind with different parameters.
//! A step with `commands` (shell commands on the node) instead of `actions` is handed to the
//! node-commands executor given to [`ProxmoxTask::new`].
//!
//! # How a step runs
//!
//! [`Executor::prepare`] reads, without changing anything, what the step starts from: whether
//! each guest exists, where, its power state, its snapshots, and the current (pending-applied)
//! value of every config key and disk the step changes. Every later call works from that intent:
//! [`Executor::execute`] skips an action whose effect is already there (a VM an earlier attempt
//! created, a snapshot of the same name, config that already matches), so a redo after a failure
//! or crash never does anything twice; [`Executor::verify`] compares the cluster with the state
//! the actions lead to; and [`Executor::compensate`] undoes, in reverse order, each completed
//! action whose effect it still sees, so calling it twice is harmless.
//!
//! What a step makes carries its idempotency key in its notes: a created or cloned guest's
//! description ends with `created by [labops run-12/step]`, a snapshot's with
//! `taken by [labops run-12/step]`. A later attempt that prepares again (after a restart) counts
//! them as its own work, not as something that was there before, and compensation destroys only a
//! guest that carries the mark. Within one process the first intent of a step is kept and given
//! again when the step is prepared for another attempt.
//!
//! Each mutating request answers a task UPID; the executor polls
//! `/nodes/{node}/tasks/{upid}/status` until the task stops, reporting progress, and treats an
//! exit status of `OK` (or PVE's `WARNINGS: n`) as success. Lock timeouts, 5xx answers (other
//! than permanent ones such as "already exists") and unreachable nodes are retryable; 4xx
//! answers and failed tasks are not, except when a task failed on a lock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use labops_core::inventory::{EntityKind, ids};
use labops_core::workflow::{StepType, step_type};
use labops_integrations::proxmox::{self, ApiCall, CLUSTER_RESOURCES, Client, GuestCalls, LXC, QEMU, TASK_STATUS};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::executor::{Compensation, Executor, Ground, RetryPolicy, RunStep, Started, StepCx, StepError, Verified};

/// How long one Proxmox task may run before the attempt gives up on it, unless
/// [`ProxmoxTask::with_task_timeout`] says otherwise.
pub const DEFAULT_TASK_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The actions a step may list.
pub const ACTIONS: &[&str] = &["create", "clone", "start", "stop", "snapshot", "rollback", "resize", "migrate", "config"];

/// Step fields an action falls back to when its own mapping does not give the parameter.
const STEP_PARAMS: &[&str] = &["snapname", "newid", "disk", "size", "target", "config"];

/// Config keys whose value Proxmox does not reveal, so an old value cannot be restored.
const SECRET_KEYS: &[&str] = &["cipassword", "password"];

const NO_SSH: &str = "`commands` run on the Proxmox node over SSH, and commands on the node need [ssh] configured \
                      in labops.toml; for Proxmox API actions use `actions` instead";

/// The `proxmox-task` executor: Proxmox API actions through the labops Proxmox client, and
/// node commands through another executor.
#[derive(Clone)]
pub struct ProxmoxTask {
    client: Arc<Client>,
    node_commands: Option<Arc<dyn Executor>>,
    task_timeout: Duration,
    poll: Duration,
    /// The first intent prepared for each idempotency key (with the step's fields it was for).
    first_intents: Arc<Mutex<HashMap<String, (Value, Value)>>>,
}

impl std::fmt::Debug for ProxmoxTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxmoxTask")
            .field("url", &self.client.url())
            .field("node_commands", &self.node_commands.is_some())
            .field("task_timeout", &self.task_timeout)
            .finish()
    }
}

impl ProxmoxTask {
    /// An executor sending API actions through `client`. Steps with `commands` instead of
    /// `actions` go to `node_commands` (the SSH commands executor); without it they are refused
    /// at check time.
    pub fn new(client: Arc<Client>, node_commands: Option<Arc<dyn Executor>>) -> Self {
        Self {
            client,
            node_commands,
            task_timeout: DEFAULT_TASK_TIMEOUT,
            poll: Duration::from_millis(250),
            first_intents: Arc::default(),
        }
    }

    /// How long to wait for one Proxmox task ([`DEFAULT_TASK_TIMEOUT`] by default).
    pub fn with_task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = timeout;
        self
    }

    /// The first wait between two polls of a running task; it grows to eight times this.
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll.max(Duration::from_millis(10));
        self
    }

    fn commands_executor(&self, step: &RunStep) -> Option<Result<&Arc<dyn Executor>, StepError>> {
        match form(step) {
            Ok(Form::Commands) => Some(self.node_commands.as_ref().ok_or_else(|| StepError::fatal(NO_SSH))),
            _ => None,
        }
    }
}

// ------------------------------------------------------------------------------------------
// The step as written

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Qemu,
    Lxc,
}

impl Kind {
    fn calls(self) -> &'static GuestCalls {
        match self {
            Kind::Qemu => &QEMU,
            Kind::Lxc => &LXC,
        }
    }

    fn id(self, vmid: u32) -> String {
        match self {
            Kind::Qemu => ids::vm(vmid),
            Kind::Lxc => ids::lxc(vmid),
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Kind::Qemu => "VM",
            Kind::Lxc => "container",
        }
    }

    fn name_key(self) -> &'static str {
        match self {
            Kind::Qemu => "name",
            Kind::Lxc => "hostname",
        }
    }
}

/// One guest on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Guest {
    kind: Kind,
    vmid: u32,
    node: String,
}

impl std::fmt::Display for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} on {}", self.kind.noun(), self.vmid, self.node)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Create { params: Vec<(String, String)> },
    Clone { newid: u32, target: Option<String>, params: Vec<(String, String)> },
    Start,
    Stop,
    Snapshot { snapname: String, params: Vec<(String, String)> },
    Rollback { snapname: String, start: bool },
    Resize { disk: String, size: String },
    Migrate { target: String },
    Config { set: BTreeMap<String, Option<String>> },
}

/// One action of the step and the guest it acts on (for `clone`, the source).
#[derive(Debug, Clone, PartialEq)]
struct Action {
    name: &'static str,
    guest: Guest,
    op: Op,
}

impl Action {
    /// The guest the action changes or makes: the copy for `clone`.
    fn changed(&self) -> Guest {
        match &self.op {
            Op::Clone { newid, target, .. } => Guest {
                kind: self.guest.kind,
                vmid: *newid,
                node: target.clone().unwrap_or_else(|| self.guest.node.clone()),
            },
            _ => self.guest.clone(),
        }
    }

    fn describe(&self) -> String {
        let g = &self.guest;
        match &self.op {
            Op::Create { .. } => format!("create {g}"),
            Op::Clone { newid, .. } => format!("clone {g} to {newid}"),
            Op::Start => format!("start {g}"),
            Op::Stop => format!("stop {g}"),
            Op::Snapshot { snapname, .. } => format!("snapshot {g} as {snapname}"),
            Op::Rollback { snapname, .. } => format!("roll {g} back to snapshot {snapname}"),
            Op::Resize { disk, size } => format!("resize disk {disk} of {g} to {size}"),
            Op::Migrate { target } => format!("migrate {g} to {target}"),
            Op::Config { set } => {
                format!("set {} on {g}", set.keys().map(String::as_str).collect::<Vec<_>>().join(", "))
            }
        }
    }
}

/// The step, checked.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    actions: Vec<Action>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Actions,
    Commands,
}

fn present(step: &RunStep, key: &str) -> bool {
    step.fields.get(key).is_some_and(|v| !v.is_null())
}

fn form(step: &RunStep) -> Result<Form, String> {
    match (present(step, "actions"), present(step, "commands")) {
        (true, false) => Ok(Form::Actions),
        (false, true) => Ok(Form::Commands),
        (true, true) => Err("a proxmox-task step has either `actions` (Proxmox API) or `commands` (shell on the node), \
                             not both: split it into two steps"
            .into()),
        (false, false) => Err(format!(
            "`actions` is missing: list what to do, like `actions: [start]`; known actions: {}",
            ACTIONS.join(", ")
        )),
    }
}

/// A plain value as Proxmox takes it: booleans as 1 and 0.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "1" } else { "0" }.into()),
        _ => None,
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !matches!(s.trim(), "" | "0" | "false" | "no"),
        _ => false,
    }
}

fn parse_vmid(v: &Value) -> Option<u32> {
    let n = match v {
        Value::Number(n) => n.as_u64()?,
        Value::String(s) => s.trim().parse::<u64>().ok()?,
        _ => return None,
    };
    (100..=999_999_999).contains(&n).then_some(n as u32)
}

fn valid_node(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with('-')
}

/// PVE's `pve-configid`: a letter, then letters, digits, `-` or `_`; at most 40 characters.
fn valid_snapname(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && name.len() >= 2
        && name.len() <= 40
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !matches!(name.to_ascii_lowercase().as_str(), "current" | "pending")
}

/// `\+?\d+(\.\d+)?[KMGT]?`
fn valid_size(size: &str) -> bool {
    let s = size.strip_prefix('+').unwrap_or(size);
    let s = s.strip_suffix(['K', 'M', 'G', 'T']).unwrap_or(s);
    let (int, frac) = s.split_once('.').unwrap_or((s, "0"));
    !int.is_empty() && !frac.is_empty() && int.bytes().all(|b| b.is_ascii_digit()) && frac.bytes().all(|b| b.is_ascii_digit())
}

/// The snapshot name a `snapshot` action without `snapname` uses: derived from the idempotency
/// key (`run-12/pre-upgrade` gives `run-12-pre-upgrade`), so a redo finds the first attempt's.
fn default_snapname(idem_key: &str, nth: usize) -> String {
    let mut name: String =
        idem_key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect();
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        name.insert_str(0, "labops-");
    }
    if nth > 0 {
        name.push_str(&format!("-{}", nth + 1));
    }
    if name.len() > 40 {
        // Keep it unique: a short hash of the whole key replaces the tail.
        let hash = idem_key.bytes().chain((nth as u32).to_le_bytes()).fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        name.truncate(31);
        name.push_str(&format!("-{:08x}", hash as u32));
    }
    name
}

/// The storage a disk setting allocates on (`local-lvm` in `scsi0: local-lvm:4,ssd=1`), if the
/// key is a disk and its value names a storage (not `none`, a CD-ROM or a path).
fn disk_storage<'a>(key: &str, value: &'a str) -> Option<&'a str> {
    let prefix = key.trim_end_matches(|c: char| c.is_ascii_digit());
    let disk = matches!(prefix, "scsi" | "virtio" | "sata" | "ide" | "efidisk" | "tpmstate" | "mp") && prefix.len() < key.len();
    if !(disk || key == "rootfs") {
        return None;
    }
    let (storage, rest) = value.split_once(':')?;
    let storage = storage.trim();
    let plain = !storage.is_empty() && storage.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    (plain && !rest.starts_with("cdrom") && storage != "none").then_some(storage)
}

/// The mark labops leaves in the notes of what a step makes (the guest's description, the
/// snapshot's), so a later attempt of the same step recognises its own work and compensation
/// never destroys a guest it did not make.
fn marker(idem_key: &str) -> String {
    format!("[labops {idem_key}]")
}

fn marked(text: Option<&String>, mark: &str) -> bool {
    text.is_some_and(|t| t.contains(mark))
}

fn kv(params: &[(String, String)]) -> Vec<(&str, String)> {
    params.iter().map(|(k, v)| (k.as_str(), v.clone())).collect()
}

struct Parser<'a> {
    step: &'a RunStep,
    idem_key: &'a str,
    errors: Vec<String>,
}

impl Plan {
    /// Reads the step's fields; every problem is reported, each naming its field.
    fn parse(step: &RunStep, idem_key: &str) -> Result<Plan, Vec<String>> {
        Parser { step, idem_key, errors: Vec::new() }.plan()
    }

    /// The inventory ids of the guests the step changes.
    fn targets(&self) -> Vec<String> {
        let mut out = Vec::new();
        for a in &self.actions {
            for g in [&a.guest, &a.changed()] {
                let id = g.kind.id(g.vmid);
                if !out.contains(&id) {
                    out.push(id);
                }
            }
        }
        out
    }

    /// What the step names in the lab: the nodes, the guests it acts on (which must exist,
    /// unless an earlier action or step makes them), and the guests it makes (which must not).
    fn grounding(&self) -> Vec<Ground> {
        let kinds = |k: Kind| vec![if k == Kind::Qemu { EntityKind::Vm } else { EntityKind::Lxc }];
        // Nodes are Proxmox nodes, or machines declared in `[[hosts]]` that an earlier step
        // joins to the cluster (the API refuses them at run time if it did not).
        let nodes = || vec![EntityKind::ProxmoxNode, EntityKind::Host];
        let node = |name: &str| Ground::Exists { field: "node".into(), name: name.into(), kinds: nodes() };
        let mut out = Vec::new();
        for a in &self.actions {
            out.push(node(&a.guest.node));
            match &a.op {
                Op::Create { params } => {
                    out.push(Ground::Makes { field: "vmid".into(), id: a.guest.kind.id(a.guest.vmid) });
                    // Disks name their storage: `scsi0: local-lvm:4`, `rootfs: local-lvm:8`.
                    for (key, value) in params {
                        if let Some(storage) = disk_storage(key, value) {
                            let name = format!("{}/{storage}", a.guest.node);
                            out.push(Ground::Exists { field: format!("guest.{key}"), name, kinds: vec![EntityKind::Storage] });
                        }
                    }
                }
                Op::Clone { target, .. } => {
                    out.push(Ground::Exists { field: "vmid".into(), name: a.guest.kind.id(a.guest.vmid), kinds: kinds(a.guest.kind) });
                    out.push(Ground::Makes { field: "newid".into(), id: a.changed().kind.id(a.changed().vmid) });
                    out.extend(target.as_deref().map(|t| Ground::Exists { field: "target".into(), name: t.into(), kinds: nodes() }));
                }
                Op::Migrate { target } => {
                    out.push(Ground::Exists { field: "vmid".into(), name: a.guest.kind.id(a.guest.vmid), kinds: kinds(a.guest.kind) });
                    out.push(Ground::Exists { field: "target".into(), name: target.clone(), kinds: nodes() });
                }
                _ => out.push(Ground::Exists { field: "vmid".into(), name: a.guest.kind.id(a.guest.vmid), kinds: kinds(a.guest.kind) }),
            }
        }
        out
    }

    /// Every VMID the step acts on, the copies of `clone` included.
    fn vmids(&self) -> BTreeSet<u32> {
        self.actions.iter().flat_map(|a| [a.guest.vmid, a.changed().vmid]).collect()
    }

    /// Config keys the step reads or changes on `vmid`: those of `config` actions and the disks
    /// it resizes.
    fn config_keys(&self, vmid: u32) -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        for a in self.actions.iter().filter(|a| a.guest.vmid == vmid) {
            match &a.op {
                Op::Config { set } => keys.extend(set.keys().cloned()),
                Op::Resize { disk, .. } => {
                    keys.insert(disk.clone());
                }
                _ => {}
            }
        }
        keys
    }

    /// Keys set by `config` actions on `vmid` (what verify compares).
    fn configured_keys(&self, vmid: u32) -> BTreeSet<String> {
        let mut keys = BTreeSet::new();
        for a in self.actions.iter().filter(|a| a.guest.vmid == vmid) {
            if let Op::Config { set } = &a.op {
                keys.extend(set.keys().cloned());
            }
        }
        keys
    }

    fn snapshot_names(&self, vmid: u32) -> BTreeSet<&str> {
        self.actions
            .iter()
            .filter(|a| a.guest.vmid == vmid)
            .filter_map(|a| match &a.op {
                Op::Snapshot { snapname, .. } => Some(snapname.as_str()),
                _ => None,
            })
            .collect()
    }

    fn kind_of(&self, vmid: u32) -> Option<Kind> {
        self.actions.iter().flat_map(|a| [a.guest.clone(), a.changed()]).find(|g| g.vmid == vmid).map(|g| g.kind)
    }
}

impl Parser<'_> {
    fn err(&mut self, message: String) {
        self.errors.push(message);
    }

    fn plan(mut self) -> Result<Plan, Vec<String>> {
        let fields = &self.step.fields;
        let node = match fields.get("node").and_then(scalar) {
            Some(n) if valid_node(&n) => n,
            Some(n) => {
                self.err(format!("`node` `{n}` is not a Proxmox node name (letters, digits and `-`), like `node: pve`"));
                String::new()
            }
            None => {
                self.err("`node` is missing: name the Proxmox node the guest lives on (or is created on), like `node: pve`".into());
                String::new()
            }
        };
        let vmid = match fields.get("vmid").filter(|v| !v.is_null()) {
            None => {
                self.err("`vmid` is missing: give the guest's VMID, like `vmid: 120`".into());
                0
            }
            Some(v) => parse_vmid(v).unwrap_or_else(|| {
                self.err(format!("`vmid` must be a number from 100 to 999999999, not {v}"));
                0
            }),
        };
        let guest = match fields.get("guest") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(other) => {
                self.err(format!("`guest` must be a mapping, like `guest: {{kind: lxc}}`, not {other}"));
                Map::new()
            }
        };
        let kind = match guest.get("kind").filter(|v| !v.is_null()) {
            None => Kind::Qemu,
            Some(v) => match v.as_str() {
                Some("qemu") => Kind::Qemu,
                Some("lxc") => Kind::Lxc,
                _ => {
                    self.err(format!("`guest.kind` must be `qemu` (a VM) or `lxc` (a container), not {v}"));
                    Kind::Qemu
                }
            },
        };
        let items: Vec<Value> = match fields.get("actions") {
            Some(Value::Array(a)) => a.clone(),
            Some(Value::String(s)) => vec![Value::String(s.clone())],
            Some(other) => {
                self.err(format!("`actions` must be a list of actions, like `actions: [start]`, not {other}"));
                Vec::new()
            }
            None => Vec::new(),
        };
        if items.is_empty() && self.errors.iter().all(|e| !e.starts_with("`actions`")) {
            self.err(format!("`actions` is empty: list what to do; known actions: {}", ACTIONS.join(", ")));
        }
        let mut current = Guest { kind, vmid, node };
        let mut actions = Vec::new();
        let mut snapshots = 0;
        for (i, item) in items.iter().enumerate() {
            let (name, own) = match item {
                Value::String(s) => (s.as_str(), None),
                Value::Object(m) => match m.get("action").and_then(Value::as_str) {
                    Some(n) => (n, Some(m)),
                    None => {
                        self.err(format!(
                            "`actions[{i}]` has no `action:`; write `{{action: snapshot, snapname: before-upgrade}}` or just the action's name"
                        ));
                        continue;
                    }
                },
                other => {
                    self.err(format!("`actions[{i}]` must be an action's name or a mapping with `action:`, not {other}"));
                    continue;
                }
            };
            let Some(name) = ACTIONS.iter().copied().find(|a| *a == name) else {
                self.err(format!("unknown proxmox-task action `{name}` in `actions`; known actions: {}", ACTIONS.join(", ")));
                continue;
            };
            let label = format!("`actions[{i}]` ({name})");
            if let Some(m) = own {
                let takes = action_params(name);
                for k in m.keys().filter(|k| *k != "action" && !takes.contains(&k.as_str())) {
                    let accepted = if takes.is_empty() { "no parameters".to_string() } else { takes.join(", ") };
                    self.err(format!("{label} has unknown parameter `{k}`; it takes {accepted}"));
                }
            }
            let param = |key: &str| -> Option<Value> {
                own.and_then(|m| m.get(key))
                    .filter(|v| !v.is_null())
                    .or_else(|| STEP_PARAMS.contains(&key).then(|| fields.get(key)).flatten().filter(|v| !v.is_null()))
                    .cloned()
            };
            let op = match name {
                "create" => {
                    if i > 0 {
                        self.err(format!("{label} must come first in `actions`: the guest does not exist before it"));
                    }
                    self.create_params(kind, &guest).map(|params| Op::Create { params })
                }
                "clone" => self.clone_op(&label, &current, &guest, &param),
                "start" => Some(Op::Start),
                "stop" => Some(Op::Stop),
                "snapshot" => {
                    snapshots += 1;
                    self.snapshot_op(&label, kind, &param, snapshots - 1)
                }
                "rollback" => {
                    let snapname = self.snapname(&label, param("snapname"), true);
                    let start = param("start").is_some_and(|v| truthy(&v));
                    snapname.map(|snapname| Op::Rollback { snapname, start })
                }
                "resize" => self.resize_op(&label, kind, &param),
                "migrate" => match param("target").as_ref().and_then(scalar) {
                    Some(t) if !valid_node(&t) => {
                        self.err(format!("{label}: `target` `{t}` is not a Proxmox node name"));
                        None
                    }
                    Some(t) if t == current.node => {
                        self.err(format!("{label}: `target` is {t}, where the guest already is; name another node"));
                        None
                    }
                    Some(target) => Some(Op::Migrate { target }),
                    None => {
                        self.err(format!("{label} needs `target`: the node to move the guest to"));
                        None
                    }
                },
                "config" => self.config_op(&label, kind, param("config")),
                _ => None,
            };
            let Some(op) = op else { continue };
            let action = Action { name, guest: current.clone(), op };
            current = match &action.op {
                Op::Clone { .. } => action.changed(),
                Op::Migrate { target } => Guest { node: target.clone(), ..current },
                _ => current,
            };
            actions.push(action);
        }
        if actions.iter().filter(|a| matches!(a.op, Op::Create { .. } | Op::Clone { .. })).count() > 1 {
            self.err("a step may create (or clone) one guest: split the others into their own steps".into());
        }
        if self.errors.is_empty() { Ok(Plan { actions }) } else { Err(self.errors) }
    }

    fn create_params(&mut self, kind: Kind, guest: &Map<String, Value>) -> Option<Vec<(String, String)>> {
        let call = &kind.calls().create;
        let before = self.errors.len();
        let mut params = Vec::new();
        for (k, v) in guest {
            match k.as_str() {
                "kind" => continue,
                "vmid" => {
                    self.err("`guest.vmid` is not needed: the step's `vmid` is the new guest's VMID".into());
                    continue;
                }
                "start" => {
                    self.err("`guest.start` is not supported: add a `start` action after `create`".into());
                    continue;
                }
                _ => {}
            }
            if call.param(k) != Some(None) {
                let known: Vec<&str> = call.params.iter().map(|(n, _)| *n).filter(|n| !matches!(*n, "vmid" | "start")).collect();
                self.err(format!(
                    "`guest.{k}` is not a {} setting labops sends at creation; it accepts {}",
                    kind.noun(),
                    known.join(", ")
                ));
                continue;
            }
            match v {
                Value::Null => {}
                v => match scalar(v) {
                    Some(s) => params.push((k.clone(), s)),
                    None => self.err(format!("`guest.{k}` must be a plain value, not {v}")),
                },
            }
        }
        let mark = format!("created by {}", marker(self.idem_key));
        match params.iter_mut().find(|(k, _)| k == "description") {
            Some((_, d)) => *d = format!("{d}\n\n{mark}"),
            None => params.push(("description".into(), mark)),
        }
        if kind == Kind::Lxc && !params.iter().any(|(k, _)| k == "ostemplate") {
            self.err(
                "`create` of a container needs `guest.ostemplate`, like `local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst`"
                    .into(),
            );
        }
        (self.errors.len() == before).then_some(params)
    }

    fn clone_op(
        &mut self,
        label: &str,
        source: &Guest,
        guest: &Map<String, Value>,
        param: &dyn Fn(&str) -> Option<Value>,
    ) -> Option<Op> {
        let kind = source.kind;
        let Some(newid) = param("newid") else {
            self.err(format!("{label} needs `newid`: the VMID of the copy, in the action's mapping or at the step level"));
            return None;
        };
        let Some(newid) = parse_vmid(&newid) else {
            self.err(format!("{label}: `newid` must be a number from 100 to 999999999, not {newid}"));
            return None;
        };
        if newid == source.vmid {
            self.err(format!("{label}: `newid` {newid} is the source's own VMID; give the copy a free one"));
            return None;
        }
        let from_guest = |k: &str| guest.get(k).filter(|v| !v.is_null()).cloned();
        let mut params = vec![("newid".to_string(), newid.to_string())];
        let name = param("name").or_else(|| param("hostname")).or_else(|| from_guest("name")).or_else(|| from_guest("hostname"));
        let mut target = None;
        for (key, value) in [
            (kind.name_key(), name),
            ("full", param("full").or_else(|| from_guest("full"))),
            ("storage", param("storage").or_else(|| from_guest("storage"))),
            ("pool", param("pool").or_else(|| from_guest("pool"))),
            ("target", param("target")),
        ] {
            let Some(value) = value else { continue };
            let Some(s) = scalar(&value) else {
                self.err(format!("{label}: `{key}` must be a plain value, not {value}"));
                continue;
            };
            if key == "target" {
                if !valid_node(&s) {
                    self.err(format!("{label}: `target` `{s}` is not a Proxmox node name"));
                    continue;
                }
                if s == source.node {
                    continue;
                }
                target = Some(s.clone());
            }
            params.push((key.to_string(), s));
        }
        let mark = format!("cloned by {}", marker(self.idem_key));
        let description = match param("description").as_ref().and_then(scalar) {
            Some(d) => format!("{d}\n\n{mark}"),
            None => mark,
        };
        params.push(("description".into(), description));
        Some(Op::Clone { newid, target, params })
    }

    fn snapname(&mut self, label: &str, given: Option<Value>, required: bool) -> Option<String> {
        match given {
            None if required => {
                self.err(format!("{label} needs `snapname`: the snapshot to use, like `snapname: before-upgrade`"));
                None
            }
            None => None,
            Some(v) => match scalar(&v) {
                Some(s) if valid_snapname(&s) => Some(s),
                _ => {
                    self.err(format!(
                        "{label}: `snapname` {v} is not a snapshot name Proxmox takes: a letter, then letters, digits, `-` or `_`, at most 40 characters (not `current`)"
                    ));
                    None
                }
            },
        }
    }

    fn snapshot_op(&mut self, label: &str, kind: Kind, param: &dyn Fn(&str) -> Option<Value>, nth: usize) -> Option<Op> {
        let before = self.errors.len();
        let snapname = self.snapname(label, param("snapname"), false).unwrap_or_else(|| default_snapname(self.idem_key, nth));
        let mark = format!("taken by {}", marker(self.idem_key));
        let description = match param("description").as_ref().and_then(scalar) {
            Some(d) => format!("{d} ({mark})"),
            None => mark,
        };
        let mut params = vec![("snapname".to_string(), snapname.clone()), ("description".to_string(), description)];
        if let Some(v) = param("vmstate") {
            if kind == Kind::Lxc {
                self.err(format!("{label}: `vmstate` (saving RAM) is for VMs only; remove it for a container"));
            } else if truthy(&v) {
                params.push(("vmstate".to_string(), "1".to_string()));
            }
        }
        (self.errors.len() == before).then_some(Op::Snapshot { snapname, params })
    }

    fn resize_op(&mut self, label: &str, kind: Kind, param: &dyn Fn(&str) -> Option<Value>) -> Option<Op> {
        let disk = param("disk").as_ref().and_then(scalar);
        let size = param("size").as_ref().and_then(scalar);
        let disk_ok = disk.as_deref().is_some_and(|d| is_disk_key(kind, d));
        let size_ok = size.as_deref().is_some_and(valid_size);
        if !disk_ok {
            let example = if kind == Kind::Qemu { "scsi0, virtio1 or sata0" } else { "rootfs or mp0" };
            match &disk {
                None => self.err(format!("{label} needs `disk`: the disk to grow, like {example}")),
                Some(d) => self.err(format!("{label}: `disk` `{d}` is not a disk of a {}; name one like {example}", kind.noun())),
            }
        }
        if !size_ok {
            match &size {
                None => self.err(format!("{label} needs `size`: the new size, like `+2G` (grow by) or `32G` (grow to)")),
                Some(s) => self.err(format!("{label}: `size` `{s}` is not a size like `+2G` or `32G` (K, M, G or T)")),
            }
        }
        match (disk, size) {
            (Some(disk), Some(size)) if disk_ok && size_ok => Some(Op::Resize { disk, size }),
            _ => None,
        }
    }

    fn config_op(&mut self, label: &str, kind: Kind, config: Option<Value>) -> Option<Op> {
        let call = &kind.calls().set_config;
        let map = match config {
            Some(Value::Object(m)) if !m.is_empty() => m,
            Some(Value::Object(_)) | None => {
                self.err(format!(
                    "{label} needs `config`: the keys to set, like `config: {{memory: 2048, onboot: 1}}` (null deletes a key)"
                ));
                return None;
            }
            Some(other) => {
                self.err(format!("{label}: `config` must be a mapping of keys to values, not {other}"));
                return None;
            }
        };
        let before = self.errors.len();
        let mut set = BTreeMap::new();
        for (k, v) in map {
            if k == "delete" || k == "digest" || call.param(&k) != Some(None) {
                let known: Vec<&str> = call.params.iter().map(|(n, _)| *n).filter(|n| *n != "delete").collect();
                self.err(format!(
                    "{label}: `config.{k}` is not a {} setting labops may change; it accepts {} (write `key: null` to delete one)",
                    kind.noun(),
                    known.join(", ")
                ));
                continue;
            }
            match &v {
                Value::Null => {
                    set.insert(k, None);
                }
                other => match scalar(other) {
                    Some(s) => {
                        set.insert(k, Some(s));
                    }
                    None => self.err(format!("{label}: `config.{k}` must be a plain value or null, not {other}")),
                },
            }
        }
        (self.errors.len() == before).then_some(Op::Config { set })
    }
}

fn action_params(name: &str) -> &'static [&'static str] {
    match name {
        "clone" => &["newid", "name", "hostname", "full", "target", "storage", "pool", "description"],
        "snapshot" => &["snapname", "description", "vmstate"],
        "rollback" => &["snapname", "start"],
        "resize" => &["disk", "size"],
        "migrate" => &["target"],
        "config" => &["config"],
        _ => &[],
    }
}

fn is_disk_key(kind: Kind, key: &str) -> bool {
    let indexed = |prefix: &str| key.strip_prefix(prefix).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    match kind {
        Kind::Qemu => ["scsi", "virtio", "sata", "ide"].iter().any(|p| indexed(p)) || key == "efidisk0" || key == "tpmstate0",
        Kind::Lxc => key == "rootfs" || indexed("mp"),
    }
}

// ------------------------------------------------------------------------------------------
// What the step starts from, and what each action leaves

/// What the executor knows about one guest at one point of the step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct GuestState {
    exists: bool,
    /// Made by an earlier action of this step (undoing that action removes it whole).
    #[serde(default)]
    created_here: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    /// `running` or `stopped`; unknown after a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    snapshots: BTreeSet<String>,
    /// The values (pending ones applied) of the keys the step changes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    config: BTreeMap<String, String>,
}

/// The state one action starts from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Before {
    action: String,
    /// The inventory id of the guest it changes (the copy, for `clone`).
    guest: String,
    vmid: u32,
    exists: bool,
    #[serde(default)]
    created_here: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapshot_present: Option<bool>,
    /// `config`: the old value of each key it sets (null: not set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous: Option<BTreeMap<String, Option<String>>>,
    /// `resize`: the disk's `size=` before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    disk_size: Option<String>,
}

/// What `prepare` stores: each guest as the step found it, and the state each action starts
/// from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Intent {
    guests: BTreeMap<u32, GuestState>,
    actions: Vec<Before>,
}

/// Walks the actions from `initial`: the state each one starts from, and the state at the end.
fn simulate(plan: &Plan, initial: &BTreeMap<u32, GuestState>) -> (Vec<Before>, BTreeMap<u32, GuestState>) {
    let mut guests = initial.clone();
    let mut befores = Vec::new();
    for a in &plan.actions {
        let changed = a.changed();
        let state = guests.entry(changed.vmid).or_default();
        let mut before = Before {
            action: a.name.to_string(),
            guest: changed.kind.id(changed.vmid),
            vmid: changed.vmid,
            exists: state.exists,
            created_here: state.created_here,
            node: state.node.clone(),
            status: state.status.clone(),
            ..Before::default()
        };
        match &a.op {
            Op::Create { .. } | Op::Clone { .. } => {
                *state = GuestState {
                    exists: true,
                    created_here: true,
                    node: Some(changed.node.clone()),
                    status: Some("stopped".into()),
                    ..GuestState::default()
                };
            }
            Op::Start => state.status = Some("running".into()),
            Op::Stop => state.status = Some("stopped".into()),
            Op::Snapshot { snapname, .. } => {
                before.snapname = Some(snapname.clone());
                before.snapshot_present = Some(state.snapshots.contains(snapname));
                state.snapshots.insert(snapname.clone());
            }
            Op::Rollback { snapname, start } => {
                before.snapname = Some(snapname.clone());
                state.status = start.then(|| "running".into());
            }
            Op::Resize { disk, .. } => {
                before.disk_size = state.config.get(disk).and_then(|v| disk_size(v));
                // The new size is whatever Proxmox makes of `+2G`.
                state.config.remove(disk);
            }
            Op::Migrate { target } => state.node = Some(target.clone()),
            Op::Config { set } => {
                before.previous = Some(set.keys().map(|k| (k.clone(), state.config.get(k).cloned())).collect());
                for (k, v) in set {
                    match v {
                        Some(v) => state.config.insert(k.clone(), v.clone()),
                        None => state.config.remove(k),
                    };
                }
            }
        }
        befores.push(before);
    }
    (befores, guests)
}

/// The `size=` of a disk's config value.
fn disk_size(value: &str) -> Option<String> {
    value.split(',').find_map(|p| p.strip_prefix("size=")).map(str::to_owned)
}

/// Whether Proxmox's value satisfies the one the step asked for: equal, or every part of the
/// wanted value present in it (PVE adds a MAC to `virtio,bridge=vmbr0`, sorts tags...).
fn config_matches(wanted: &str, actual: &str) -> bool {
    if wanted == actual {
        return true;
    }
    let parts: Vec<&str> = actual.split([',', ';']).collect();
    wanted.split([',', ';']).all(|w| parts.iter().any(|p| *p == w || (!w.contains('=') && p.starts_with(&format!("{w}=")))))
}

// ------------------------------------------------------------------------------------------
// Talking to Proxmox

/// Where a guest is, from `/cluster/resources`.
#[derive(Debug, Clone)]
struct Located {
    kind: Kind,
    node: String,
}

/// A guest's power state and lock, from `status/current`.
#[derive(Debug, Clone)]
struct Power {
    status: String,
    lock: Option<String>,
}

/// What one action did, in the step's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Done {
    action: String,
    guest: String,
    node: String,
    /// The task that did it; none when it was done already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upid: Option<String>,
    /// Found done (by an earlier attempt) instead of done now.
    #[serde(default)]
    already: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapname: Option<String>,
}

fn is_lock_message(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("can't lock file") || m.contains("is locked") || (m.contains("lock") && m.contains("got timeout"))
}

/// A Proxmox error as a step error: retryable when another attempt may meet a different answer.
fn api_error(what: &str, e: &proxmox::Error) -> StepError {
    use proxmox::Error as E;
    match e {
        E::Unreachable { .. } => StepError::transient(format!("{what}: {e}; the attempt will be retried")),
        E::Status { status, message, .. } => {
            let m = message.to_ascii_lowercase();
            if is_lock_message(message) {
                StepError::transient(format!(
                    "{what}: {e}; another task holds the guest's lock, so the attempt will be retried"
                ))
            } else if *status == 501
                || ["already exists", "does not exist", "hostname lookup", "no such cluster node", "protection mode", "not implemented"]
                    .iter()
                    .any(|p| m.contains(p))
            {
                StepError::fatal(format!("{what}: {e}; fix the step's fields (or the cluster) and run it again"))
            } else if *status >= 500 || *status == 408 || *status == 429 {
                StepError::transient(format!("{what}: {e}; the attempt will be retried"))
            } else if *status == 401 || *status == 403 {
                StepError::fatal(format!(
                    "{what}: {e}; give the [proxmox] user or token the privilege Proxmox names, then run the step again"
                ))
            } else {
                StepError::fatal(format!("{what}: {e}; fix the step's fields and run it again"))
            }
        }
        E::Decode { .. } => StepError::transient(format!("{what}: {e}; the attempt will be retried")),
        _ => StepError::fatal(format!("{what}: {e}")),
    }
}

fn progress(cx: Option<&StepCx>, fraction: Option<f64>, message: impl Into<String>) {
    if let Some(cx) = cx {
        cx.progress(fraction, message);
    }
}

impl ProxmoxTask {
    async fn send(
        &self,
        what: &str,
        call: &ApiCall,
        g: &Guest,
        extra: &[(&str, &str)],
        params: &[(&str, String)],
    ) -> Result<Value, StepError> {
        let vmid = g.vmid.to_string();
        let mut path = vec![("node", g.node.as_str()), ("vmid", vmid.as_str())];
        path.extend_from_slice(extra);
        self.client.call_with(call, &path, params).await.map_err(|e| api_error(what, &e))
    }

    /// Sends a mutating request and, when it answers a task, waits for the task to end.
    #[allow(clippy::too_many_arguments)]
    async fn act(
        &self,
        cx: Option<&StepCx>,
        fraction: Option<f64>,
        what: &str,
        call: &ApiCall,
        g: &Guest,
        extra: &[(&str, &str)],
        params: &[(&str, String)],
    ) -> Result<Option<String>, StepError> {
        let data = self.send(what, call, g, extra, params).await?;
        match data.as_str().filter(|s| s.starts_with("UPID:")) {
            Some(upid) => {
                self.wait_task(cx, fraction, what, upid).await?;
                Ok(Some(upid.to_string()))
            }
            None => Ok(None),
        }
    }

    /// Polls the task until it stops; its exit status decides.
    async fn wait_task(&self, cx: Option<&StepCx>, fraction: Option<f64>, what: &str, upid: &str) -> Result<(), StepError> {
        let node = upid.split(':').nth(1).filter(|n| !n.is_empty()).ok_or_else(|| {
            StepError::fatal(format!("{what}: Proxmox answered a task id that names no node: {upid}"))
        })?;
        progress(cx, fraction, format!("{what}: task {upid} started"));
        let started = Instant::now();
        let mut wait = self.poll;
        let mut last_report = Instant::now();
        loop {
            match self.client.call(&TASK_STATUS, &[("node", node), ("upid", upid)]).await {
                Ok(status) => {
                    if status.get("status").and_then(Value::as_str) == Some("stopped") {
                        let exit = status.get("exitstatus").and_then(Value::as_str).unwrap_or("unknown");
                        if exit == "OK" || exit.starts_with("WARNINGS") {
                            return Ok(());
                        }
                        let message = format!("{what}: the Proxmox task {upid} failed: {exit}");
                        return Err(if is_lock_message(exit) {
                            StepError::transient(format!(
                                "{message}; another task holds the guest's lock, so the attempt will be retried"
                            ))
                        } else {
                            StepError::fatal(format!("{message}; see the task's log on {node}"))
                        });
                    }
                }
                Err(e) => {
                    let err = api_error(&format!("{what}: reading the status of task {upid}"), &e);
                    if !err.retryable {
                        return Err(err);
                    }
                    tracing::warn!(upid, error = %e, "Could not read a Proxmox task's status; polling again.");
                }
            }
            if started.elapsed() >= self.task_timeout {
                return Err(StepError::transient(format!(
                    "{what}: the Proxmox task {upid} is still running after {}s; it may yet finish: look at the task log on {node}, then let the step retry",
                    self.task_timeout.as_secs()
                )));
            }
            if last_report.elapsed() >= Duration::from_secs(5) {
                progress(cx, fraction, format!("{what}: task running for {}s", started.elapsed().as_secs()));
                last_report = Instant::now();
            }
            tokio::time::sleep(wait.min(self.task_timeout.saturating_sub(started.elapsed()))).await;
            wait = (wait * 3 / 2).min(self.poll * 8);
        }
    }

    /// Where guest `vmid` is, if it exists.
    async fn locate(&self, vmid: u32) -> Result<Option<Located>, StepError> {
        let what = format!("looking for guest {vmid}");
        let data = self.client.call(&CLUSTER_RESOURCES, &[]).await.map_err(|e| api_error(&what, &e))?;
        let Some(items) = data.as_array() else {
            return Err(StepError::transient(format!("{what}: /cluster/resources did not answer a list")));
        };
        Ok(items.iter().find(|r| r.get("vmid").and_then(Value::as_u64) == Some(u64::from(vmid))).and_then(|r| {
            let kind = match r.get("type")?.as_str()? {
                "qemu" => Kind::Qemu,
                "lxc" => Kind::Lxc,
                _ => return None,
            };
            Some(Located { kind, node: r.get("node")?.as_str()?.to_string() })
        }))
    }

    async fn power(&self, g: &Guest) -> Result<Power, StepError> {
        let data = self.send(&format!("reading the status of {g}"), &g.kind.calls().status, g, &[], &[]).await?;
        let text = |k: &str| data.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned);
        Ok(Power { status: text("status").unwrap_or_else(|| "unknown".into()), lock: text("lock") })
    }

    /// The guest's config, pending changes applied (what it runs with after its next start).
    async fn config_now(&self, g: &Guest) -> Result<BTreeMap<String, String>, StepError> {
        let data = self.send(&format!("reading the config of {g}"), &g.kind.calls().pending, g, &[], &[]).await?;
        let mut out = BTreeMap::new();
        for item in data.as_array().into_iter().flatten() {
            let Some(key) = item.get("key").and_then(Value::as_str) else { continue };
            if item.get("delete").is_some_and(truthy) {
                continue;
            }
            if let Some(v) = item.get("pending").or_else(|| item.get("value")).and_then(scalar) {
                out.insert(key.to_string(), v);
            }
        }
        Ok(out)
    }

    /// The guest's snapshots: name and description.
    async fn snapshots_now(&self, g: &Guest) -> Result<BTreeMap<String, String>, StepError> {
        let data = self.send(&format!("listing the snapshots of {g}"), &g.kind.calls().snapshots, g, &[], &[]).await?;
        Ok(data
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                let name = s.get("name").and_then(Value::as_str).filter(|n| *n != "current")?;
                Some((name.to_string(), s.get("description").and_then(Value::as_str).unwrap_or_default().to_string()))
            })
            .collect())
    }

    /// The guest where it is now (it may have moved), or `None` when it is gone.
    async fn find(&self, vmid: u32, kind: Kind) -> Result<Option<Guest>, StepError> {
        Ok(self.locate(vmid).await?.map(|l| Guest { kind: l.kind, vmid, node: l.node }).filter(|g| g.kind == kind))
    }

    /// Reads the state the step starts from, and checks it can start from there.
    async fn observe(&self, plan: &Plan, idem_key: &str) -> Result<Intent, StepError> {
        let mark = marker(idem_key);
        let mut guests = BTreeMap::new();
        for vmid in plan.vmids() {
            let first = plan.actions.iter().find(|a| a.guest.vmid == vmid || a.changed().vmid == vmid);
            let Some(first) = first else { continue };
            let makes_it = first.changed().vmid == vmid && matches!(first.op, Op::Create { .. } | Op::Clone { .. });
            let declared = if makes_it { first.changed() } else { first.guest.clone() };
            let mut located = self.locate(vmid).await?;
            if let Some(found) = located.as_ref().filter(|_| makes_it) {
                // An earlier attempt of this step made it: the step started without it.
                let g = Guest { kind: found.kind, vmid, node: found.node.clone() };
                if marked(self.config_now(&g).await?.get("description"), &mark) {
                    located = None;
                }
            }
            let state = match located {
                Some(found) if makes_it => {
                    return Err(StepError::fatal(format!(
                        "VMID {vmid} is taken by {} {vmid} on {}: `{}` needs a free VMID; change {}",
                        found.kind.noun(),
                        found.node,
                        first.name,
                        if first.name == "clone" { "`newid`" } else { "`vmid`" }
                    )));
                }
                None if makes_it => GuestState::default(),
                None => {
                    return Err(StepError::fatal(format!(
                        "{} {vmid} does not exist in the cluster: check `vmid`, or add `create` first",
                        declared.kind.noun()
                    )));
                }
                Some(found) => {
                    if found.kind != declared.kind {
                        return Err(StepError::fatal(format!(
                            "guest {vmid} is a {} ({}) on {}, but the step treats it as a {}: set `guest.kind: {}`",
                            found.kind.noun(),
                            if found.kind == Kind::Lxc { "lxc" } else { "qemu" },
                            found.node,
                            declared.kind.noun(),
                            if found.kind == Kind::Lxc { "lxc" } else { "qemu" },
                        )));
                    }
                    if found.node != declared.node {
                        return Err(StepError::fatal(format!(
                            "{} {vmid} is on node {}, not on {}: fix `node`",
                            found.kind.noun(),
                            found.node,
                            declared.node
                        )));
                    }
                    let g = Guest { kind: found.kind, vmid, node: found.node.clone() };
                    let power = self.power(&g).await?;
                    let keys = plan.config_keys(vmid);
                    let config = if keys.is_empty() {
                        BTreeMap::new()
                    } else {
                        self.config_now(&g).await?.into_iter().filter(|(k, _)| keys.contains(k)).collect()
                    };
                    // Snapshots an earlier attempt of this step took do not count as found.
                    let snapshots = if !plan.snapshot_names(vmid).is_empty() {
                        self.snapshots_now(&g).await?.into_iter().filter(|(_, d)| !d.contains(&mark)).map(|(n, _)| n).collect()
                    } else {
                        BTreeSet::new()
                    };
                    GuestState {
                        exists: true,
                        created_here: false,
                        node: Some(found.node),
                        status: Some(power.status),
                        snapshots,
                        config,
                    }
                }
            };
            guests.insert(vmid, state);
        }
        let (actions, _) = simulate(plan, &guests);
        for (a, before) in plan.actions.iter().zip(&actions) {
            if let (Op::Snapshot { snapname, .. }, Some(true)) = (&a.op, before.snapshot_present) {
                return Err(StepError::fatal(format!(
                    "{} already has a snapshot named {snapname}: choose another `snapname`",
                    a.guest
                )));
            }
        }
        Ok(Intent { guests, actions })
    }

    /// Runs one action unless its effect is already there.
    async fn run_action(&self, cx: &StepCx, i: usize, n: usize, a: &Action, before: &Before) -> Result<Done, StepError> {
        let what = a.describe();
        let fraction = Some((i as f64 + 0.5) / n as f64);
        let calls = a.guest.kind.calls();
        let changed = a.changed();
        let mut done = Done {
            action: a.name.to_string(),
            guest: changed.kind.id(changed.vmid),
            node: changed.node.clone(),
            upid: None,
            already: true,
            snapname: None,
        };
        progress(Some(cx), Some(i as f64 / n as f64), what.clone());
        let upid = match &a.op {
            Op::Create { params } => {
                if let Some(found) = self.locate(a.guest.vmid).await? {
                    if before.exists {
                        return Err(StepError::fatal(format!(
                            "{what}: VMID {} was taken before this step (by a {} on {}): change `vmid`",
                            a.guest.vmid,
                            found.kind.noun(),
                            found.node
                        )));
                    }
                    // Made by an earlier attempt of this step.
                    return Ok(done_already(cx, i, n, &what, done));
                }
                let mut p = vec![("vmid", a.guest.vmid.to_string())];
                p.extend(kv(params));
                self.act(Some(cx), fraction, &what, &calls.create, &a.guest, &[], &p).await?
            }
            Op::Clone { params, .. } => {
                if let Some(found) = self.locate(changed.vmid).await? {
                    if before.exists {
                        return Err(StepError::fatal(format!(
                            "{what}: VMID {} was taken before this step (by a {} on {}): change `newid`",
                            changed.vmid,
                            found.kind.noun(),
                            found.node
                        )));
                    }
                    return Ok(done_already(cx, i, n, &what, done));
                }
                self.act(Some(cx), fraction, &what, &calls.clone, &a.guest, &[], &kv(params)).await?
            }
            Op::Start | Op::Stop => {
                let want = if a.op == Op::Start { "running" } else { "stopped" };
                if self.power(&a.guest).await?.status == want {
                    return Ok(done_already(cx, i, n, &what, done));
                }
                let call = if a.op == Op::Start { &calls.start } else { &calls.stop };
                self.act(Some(cx), fraction, &what, call, &a.guest, &[], &[]).await?
            }
            Op::Snapshot { snapname, params } => {
                done.snapname = Some(snapname.clone());
                if self.snapshots_now(&a.guest).await?.contains_key(snapname) {
                    if before.snapshot_present == Some(true) {
                        return Err(StepError::fatal(format!(
                            "{what}: the snapshot existed before this step: choose another `snapname`"
                        )));
                    }
                    return Ok(done_already(cx, i, n, &what, done));
                }
                self.act(Some(cx), fraction, &what, &calls.snapshot, &a.guest, &[], &kv(params)).await?
            }
            Op::Rollback { snapname, start } => {
                done.snapname = Some(snapname.clone());
                let p: Vec<(&str, String)> = if *start { vec![("start", "1".into())] } else { Vec::new() };
                self.act(Some(cx), fraction, &what, &calls.rollback, &a.guest, &[("snapname", snapname)], &p).await?
            }
            Op::Resize { disk, size } => {
                let now = self.config_now(&a.guest).await?.get(disk).and_then(|v| disk_size(v));
                if before.disk_size.is_some() && now.is_some() && now != before.disk_size {
                    return Ok(done_already(cx, i, n, &what, done));
                }
                let p = [("disk", disk.clone()), ("size", size.clone())];
                self.act(Some(cx), fraction, &what, &calls.resize, &a.guest, &[], &p).await?
            }
            Op::Migrate { target } => {
                let Some(now) = self.find(a.guest.vmid, a.guest.kind).await? else {
                    return Err(StepError::fatal(format!("{what}: the guest no longer exists")));
                };
                if &now.node == target {
                    return Ok(done_already(cx, i, n, &what, done));
                }
                let p = migrate_params(now.kind, target, self.power(&now).await?.status == "running");
                self.act(Some(cx), fraction, &what, &calls.migrate, &now, &[], &p).await?
            }
            Op::Config { set } => {
                let now = self.config_now(&a.guest).await?;
                let matches = set.iter().all(|(k, v)| match (v, now.get(k)) {
                    (Some(want), Some(have)) => config_matches(want, have),
                    (None, None) => true,
                    _ => false,
                });
                if matches {
                    return Ok(done_already(cx, i, n, &what, done));
                }
                let p = config_params(set);
                self.act(Some(cx), fraction, &what, &calls.set_config, &a.guest, &[], &p).await?
            }
        };
        done.upid = upid;
        done.already = false;
        progress(Some(cx), Some((i + 1) as f64 / n as f64), format!("{what}: done"));
        Ok(done)
    }

    /// Undoes one completed action if its effect is still there.
    async fn undo(&self, cx: &StepCx, a: &Action, before: &Before) -> Result<Undo, StepError> {
        let kind = a.guest.kind;
        let calls = kind.calls();
        let noun = kind.noun();
        let vmid = before.vmid;
        match &a.op {
            Op::Create { .. } | Op::Clone { .. } => {
                if before.exists {
                    return Ok(Undo::Nothing);
                }
                let Some(g) = self.find(vmid, kind).await? else { return Ok(Undo::Nothing) };
                let mark = marker(&cx.idem_key);
                if !marked(self.config_now(&g).await?.get("description"), &mark) {
                    return Ok(Undo::Cannot(format!(
                        "{g} does not carry this step's mark {mark} in its notes, so labops will not destroy it; if it is the guest `{}` made, destroy it by hand",
                        cx.step.name
                    )));
                }
                let mut what = Vec::new();
                if self.power(&g).await?.status == "running" {
                    self.act(Some(cx), None, &format!("stop {g}"), &calls.stop, &g, &[], &[]).await?;
                    what.push("stopped");
                }
                self.act(Some(cx), None, &format!("destroy {g}"), &calls.destroy, &g, &[], &[]).await?;
                what.push("destroyed");
                Ok(Undo::Done(format!("{} {g}", what.join(" and "))))
            }
            Op::Start | Op::Stop => {
                let (was, call, verb) = if a.op == Op::Start {
                    ("stopped", &calls.stop, "stopped")
                } else {
                    ("running", &calls.start, "started")
                };
                if before.status.as_deref() != Some(was) {
                    return Ok(Undo::Nothing);
                }
                let Some(g) = self.find(vmid, kind).await? else { return Ok(Undo::Nothing) };
                if self.power(&g).await?.status == was {
                    return Ok(Undo::Nothing);
                }
                self.act(Some(cx), None, &format!("{verb} {g} again"), call, &g, &[], &[]).await?;
                Ok(Undo::Done(format!("{verb} {g} again")))
            }
            Op::Snapshot { snapname, .. } => {
                if before.snapshot_present != Some(false) {
                    return Ok(Undo::Nothing);
                }
                let Some(g) = self.find(vmid, kind).await? else { return Ok(Undo::Nothing) };
                if !self.snapshots_now(&g).await?.contains_key(snapname) {
                    return Ok(Undo::Nothing);
                }
                let what = format!("delete snapshot {snapname} of {g}");
                self.act(Some(cx), None, &what, &calls.delete_snapshot, &g, &[("snapname", snapname)], &[]).await?;
                Ok(Undo::Done(format!("deleted snapshot {snapname} of {g}")))
            }
            Op::Rollback { snapname, .. } => Ok(Undo::Cannot(format!(
                "{noun} {vmid} was rolled back to snapshot {snapname}: what it held after that snapshot is gone and labops cannot bring it back"
            ))),
            Op::Resize { disk, size } => {
                if let (Some(old), Some(g)) = (&before.disk_size, self.find(vmid, kind).await?) {
                    let now = self.config_now(&g).await?.get(disk).and_then(|v| disk_size(v));
                    if now.as_ref() == Some(old) {
                        return Ok(Undo::Nothing);
                    }
                }
                Ok(Undo::Cannot(format!(
                    "disk {disk} of {noun} {vmid} was grown ({size}{}) and Proxmox cannot shrink disks; shrink the filesystem and move it to a smaller disk by hand if the space matters",
                    before.disk_size.as_ref().map(|s| format!(" from {s}")).unwrap_or_default()
                )))
            }
            Op::Migrate { target } => {
                let Some(source) = before.node.as_ref().filter(|s| *s != target) else { return Ok(Undo::Nothing) };
                let Some(g) = self.find(vmid, kind).await? else { return Ok(Undo::Nothing) };
                if &g.node != target {
                    return Ok(Undo::Nothing);
                }
                let p = migrate_params(kind, source, self.power(&g).await?.status == "running");
                let what = format!("migrate {g} back to {source}");
                self.act(Some(cx), None, &what, &calls.migrate, &g, &[], &p).await?;
                Ok(Undo::Done(format!("migrated {noun} {vmid} back from {target} to {source}")))
            }
            Op::Config { .. } => {
                let Some(previous) = &before.previous else { return Ok(Undo::Nothing) };
                let Some(g) = self.find(vmid, kind).await? else { return Ok(Undo::Nothing) };
                let now = self.config_now(&g).await?;
                let mut restore = BTreeMap::new();
                let mut secrets = Vec::new();
                for (k, old) in previous {
                    if now.get(k) == old.as_ref() {
                        continue;
                    }
                    if SECRET_KEYS.contains(&k.as_str()) {
                        secrets.push(k.clone());
                        continue;
                    }
                    restore.insert(k.clone(), old.clone());
                }
                if !restore.is_empty() {
                    let keys: Vec<&str> = restore.keys().map(String::as_str).collect();
                    let what = format!("restore {} on {g}", keys.join(", "));
                    self.act(Some(cx), None, &what, &calls.set_config, &g, &[], &config_params(&restore)).await?;
                }
                match (restore.is_empty(), secrets.is_empty()) {
                    (true, true) => Ok(Undo::Nothing),
                    (_, false) => Ok(Undo::Cannot(format!(
                        "{} of {g} cannot be restored: Proxmox does not reveal the old value; set it by hand{}",
                        secrets.join(", "),
                        if restore.is_empty() { String::new() } else { format!(" (restored {})", restore.keys().cloned().collect::<Vec<_>>().join(", ")) }
                    ))),
                    (false, true) => Ok(Undo::Done(format!(
                        "restored {} on {g}",
                        restore.keys().cloned().collect::<Vec<_>>().join(", ")
                    ))),
                }
            }
        }
    }

    /// Whether every guest the step touched is as the step found it, in everything the step
    /// changes (never when it resized a disk or rolled back: those stay).
    async fn back_as_found(&self, plan: &Plan, intent: &Intent) -> Result<bool, StepError> {
        if plan.actions.iter().any(|a| matches!(a.op, Op::Resize { .. } | Op::Rollback { .. })) {
            return Ok(false);
        }
        for (vmid, initial) in &intent.guests {
            let Some(kind) = plan.kind_of(*vmid) else { continue };
            let g = match (self.find(*vmid, kind).await?, initial.exists) {
                (Some(g), true) => g,
                (None, false) => continue,
                _ => return Ok(false),
            };
            let touches = |f: fn(&Op) -> bool| plan.actions.iter().any(|a| a.guest.vmid == *vmid && f(&a.op));
            if initial.node.as_ref() != Some(&g.node) {
                return Ok(false);
            }
            if touches(|op| matches!(op, Op::Start | Op::Stop)) && initial.status != Some(self.power(&g).await?.status) {
                return Ok(false);
            }
            if touches(|op| matches!(op, Op::Snapshot { .. })) {
                let now = self.snapshots_now(&g).await?;
                if now.keys().any(|s| !initial.snapshots.contains(s) && plan.snapshot_names(*vmid).contains(s.as_str())) {
                    return Ok(false);
                }
            }
            let keys = plan.config_keys(*vmid);
            if !keys.is_empty() {
                let now = self.config_now(&g).await?;
                if keys.iter().any(|k| now.get(k) != initial.config.get(k)) {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Compares the cluster with the state the step's actions lead to.
    async fn check_done(&self, plan: &Plan, intent: &Intent) -> Result<Verified, StepError> {
        let (_, expected) = simulate(plan, &intent.guests);
        let mut not_done = Vec::new();
        let mut unknown = Vec::new();
        for (vmid, want) in &expected {
            let Some(kind) = plan.kind_of(*vmid) else { continue };
            let initial = intent.guests.get(vmid).cloned().unwrap_or_default();
            if !want.exists {
                continue;
            }
            let Some(g) = self.find(*vmid, kind).await? else {
                not_done.push(format!("{} {vmid} does not exist", kind.noun()));
                continue;
            };
            let power = self.power(&g).await?;
            if let Some(lock) = power.lock.as_deref().filter(|l| !matches!(*l, "suspended" | "backup")) {
                unknown.push(format!(
                    "{g} is locked ({lock}): a Proxmox task is still at work on it; wait for it to end (the node's task log), then check the guest and mark the step"
                ));
                continue;
            }
            if want.node.is_some() && want.node.as_ref() != Some(&g.node) {
                not_done.push(format!("{g} is not on {}", want.node.as_deref().unwrap_or("?")));
            }
            let touched_power = plan.actions.iter().any(|a| a.changed().vmid == *vmid && matches!(a.op, Op::Start | Op::Stop));
            if let Some(status) = want.status.as_ref().filter(|_| touched_power)
                && *status != power.status
            {
                not_done.push(format!("{g} is {}, not {status}", power.status));
            }
            let added: Vec<&String> = want.snapshots.difference(&initial.snapshots).collect();
            if !added.is_empty() {
                let have = self.snapshots_now(&g).await?;
                for s in added.into_iter().filter(|s| !have.contains_key(*s)) {
                    not_done.push(format!("{g} has no snapshot {s}"));
                }
            }
            let keys = plan.configured_keys(*vmid);
            let resized: Vec<(&Action, &Before)> = plan
                .actions
                .iter()
                .zip(&intent.actions)
                .filter(|(a, _)| a.guest.vmid == *vmid && matches!(a.op, Op::Resize { .. }))
                .collect();
            if !keys.is_empty() || !resized.is_empty() {
                let now = self.config_now(&g).await?;
                for k in &keys {
                    let ok = match (want.config.get(k), now.get(k)) {
                        (Some(w), Some(h)) => config_matches(w, h),
                        (None, None) => true,
                        _ => false,
                    };
                    if !ok {
                        not_done.push(format!("{k} of {g} is not the value the step sets"));
                    }
                }
                for (a, before) in resized {
                    let Op::Resize { disk, .. } = &a.op else { continue };
                    match (&before.disk_size, now.get(disk).and_then(|v| disk_size(v))) {
                        (Some(old), Some(new)) if *old == new => not_done.push(format!("disk {disk} of {g} is still {old}")),
                        (Some(_), Some(_)) => {}
                        _ => unknown.push(format!(
                            "cannot read the size of disk {disk} of {g}: check in Proxmox whether it was grown, then mark the step"
                        )),
                    }
                }
            }
        }
        for a in &plan.actions {
            if let Op::Rollback { snapname, .. } = &a.op {
                unknown.push(format!(
                    "labops cannot tell whether {} was rolled back to snapshot {snapname}: compare its config with the snapshot's in Proxmox (Snapshots), then mark the step",
                    a.guest
                ));
            }
        }
        Ok(if !unknown.is_empty() {
            Verified::Unknown(unknown.join("; "))
        } else if !not_done.is_empty() {
            tracing::info!(missing = %not_done.join("; "), "The proxmox-task step is not (fully) done; it can run again.");
            Verified::NotDone
        } else {
            let done: Vec<Done> = plan
                .actions
                .iter()
                .map(|a| {
                    let g = a.changed();
                    Done {
                        action: a.name.to_string(),
                        guest: g.kind.id(g.vmid),
                        node: g.node.clone(),
                        upid: None,
                        already: true,
                        snapname: match &a.op {
                            Op::Snapshot { snapname, .. } | Op::Rollback { snapname, .. } => Some(snapname.clone()),
                            _ => None,
                        },
                    }
                })
                .collect();
            Verified::Done(outcome(plan, done))
        })
    }
}

fn done_already(cx: &StepCx, i: usize, n: usize, what: &str, done: Done) -> Done {
    progress(Some(cx), Some((i + 1) as f64 / n as f64), format!("{what}: already done"));
    done
}

fn migrate_params(kind: Kind, target: &str, running: bool) -> Vec<(&'static str, String)> {
    let mut p = vec![("target", target.to_string())];
    if running {
        // A running VM moves live; a running container is restarted on the target.
        p.push((if kind == Kind::Qemu { "online" } else { "restart" }, "1".into()));
    }
    p
}

fn config_params(set: &BTreeMap<String, Option<String>>) -> Vec<(&str, String)> {
    let mut p: Vec<(&str, String)> = set.iter().filter_map(|(k, v)| v.as_ref().map(|v| (k.as_str(), v.clone()))).collect();
    let deletes: Vec<&str> = set.iter().filter(|(_, v)| v.is_none()).map(|(k, _)| k.as_str()).collect();
    if !deletes.is_empty() {
        p.push(("delete", deletes.join(",")));
    }
    p
}

fn outcome(plan: &Plan, done: Vec<Done>) -> Value {
    json!({"guests": plan.targets(), "actions": done})
}

/// What undoing one action did.
enum Undo {
    Done(String),
    Nothing,
    Cannot(String),
}

fn plan_of(cx: &StepCx) -> Result<Plan, StepError> {
    Plan::parse(&cx.step, &cx.idem_key).map_err(|e| StepError::fatal(e.join("; ")))
}

fn intent_of(plan: &Plan, intent: &Value) -> Result<Intent, String> {
    let intent: Intent = serde_json::from_value(intent.clone())
        .map_err(|e| format!("the stored intent is not what proxmox-task's prepare writes ({e})"))?;
    if intent.actions.len() != plan.actions.len()
        || intent.actions.iter().zip(&plan.actions).any(|(b, a)| b.action != a.name)
    {
        return Err("the step's actions changed since its intent was stored".into());
    }
    Ok(intent)
}

#[async_trait]
impl Executor for ProxmoxTask {
    fn step_type(&self) -> &'static StepType {
        step_type("proxmox-task").expect("proxmox-task is a registered step type")
    }

    fn check(&self, step: &RunStep) -> Vec<String> {
        match form(step) {
            Err(e) => vec![e],
            Ok(Form::Commands) => match &self.node_commands {
                Some(commands) => commands.check(step),
                None => vec![NO_SSH.to_string()],
            },
            Ok(Form::Actions) => Plan::parse(step, &format!("run-0/{}", step.name)).err().unwrap_or_default(),
        }
    }

    fn grounding(&self, step: &RunStep) -> Vec<Ground> {
        match form(step) {
            Ok(Form::Commands) => self.node_commands.as_ref().map(|c| c.grounding(step)).unwrap_or_default(),
            Ok(Form::Actions) => Plan::parse(step, &format!("run-0/{}", step.name)).map(|p| p.grounding()).unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    fn targets(&self, step: &RunStep) -> Vec<String> {
        match form(step) {
            Ok(Form::Commands) => self.node_commands.as_ref().map(|c| c.targets(step)).unwrap_or_default(),
            _ => match Plan::parse(step, &format!("run-0/{}", step.name)) {
                Ok(plan) => plan.targets(),
                // Unrunnable anyway; still lock the guest it names, if it names one.
                Err(_) => step.fields.get("vmid").and_then(parse_vmid).map(ids::vm).into_iter().collect(),
            },
        }
    }

    fn retry(&self) -> RetryPolicy {
        // Locks held by backups and other tasks take a while to go.
        RetryPolicy { attempts: 4, initial: Duration::from_secs(2), max: Duration::from_secs(30) }
    }

    fn confirm_before(&self, step: &RunStep) -> Option<String> {
        if let Ok(Form::Commands) = form(step)
            && let Some(commands) = &self.node_commands
        {
            return commands.confirm_before(step);
        }
        let why = match step.fields.get("irreversible") {
            Some(Value::String(s)) if !s.trim().is_empty() && truthy(&Value::String(s.clone())) => Some(s.clone()),
            Some(v) if truthy(v) => Some(String::new()),
            _ => None,
        };
        let rollbacks: Vec<String> = Plan::parse(step, &format!("run-0/{}", step.name))
            .map(|p| p.actions.iter().filter(|a| a.name == "rollback").map(Action::describe).collect())
            .unwrap_or_default();
        match (why, rollbacks.is_empty()) {
            (None, true) => None,
            (why, _) => {
                let mut parts = Vec::new();
                if let Some(why) = why {
                    parts.push(if why.is_empty() || why == "1" || why == "true" {
                        format!("step {} is marked irreversible", step.name)
                    } else {
                        format!("step {} is marked irreversible: {why}", step.name)
                    });
                }
                if !rollbacks.is_empty() {
                    parts.push(format!(
                        "{} discards everything the guest did since that snapshot",
                        rollbacks.join(" and ")
                    ));
                }
                Some(format!("{}. Go ahead?", parts.join("; ")))
            }
        }
    }

    async fn prepare(&self, cx: &StepCx) -> Result<Value, StepError> {
        if let Some(commands) = self.commands_executor(&cx.step) {
            return commands?.prepare(cx).await;
        }
        let plan = plan_of(cx)?;
        // The driver prepares every attempt again; the state to undo back to is the one before
        // the first attempt, so an intent already taken for this step is given again.
        let fields = serde_json::to_value(&cx.step.fields).unwrap_or_default();
        if let Some((f, intent)) = self.first_intents.lock().ok().and_then(|m| m.get(&cx.idem_key).cloned())
            && f == fields
        {
            return Ok(intent);
        }
        let intent = self.observe(&plan, &cx.idem_key).await?;
        let intent = serde_json::to_value(&intent).map_err(|e| StepError::fatal(format!("cannot record the step's intent: {e}")))?;
        if let Ok(mut memo) = self.first_intents.lock() {
            if memo.len() >= 1024 {
                memo.clear();
            }
            memo.insert(cx.idem_key.clone(), (fields, intent.clone()));
        }
        Ok(intent)
    }

    async fn execute(&self, cx: &StepCx, intent: &Value) -> Result<Started, StepError> {
        if let Some(commands) = self.commands_executor(&cx.step) {
            return commands?.execute(cx, intent).await;
        }
        let plan = plan_of(cx)?;
        let intent = intent_of(&plan, intent).map_err(|e| StepError::fatal(format!("{e}; prepare the step again")))?;
        let n = plan.actions.len();
        let mut done = Vec::with_capacity(n);
        for (i, (a, before)) in plan.actions.iter().zip(&intent.actions).enumerate() {
            done.push(self.run_action(cx, i, n, a, before).await?);
        }
        Ok(Started::Done(outcome(&plan, done)))
    }

    async fn verify(&self, cx: &StepCx, intent: &Value) -> Verified {
        if let Some(commands) = self.commands_executor(&cx.step) {
            return match commands {
                Ok(c) => c.verify(cx, intent).await,
                Err(_) => Verified::NotDone,
            };
        }
        let plan = match plan_of(cx) {
            Ok(p) => p,
            Err(e) => return Verified::Unknown(format!("the step cannot be read ({e}); check the guest by hand and mark the step")),
        };
        let intent = match intent_of(&plan, intent) {
            Ok(i) => i,
            Err(e) => return Verified::Unknown(format!("{e}; check the guest by hand and mark the step")),
        };
        match self.check_done(&plan, &intent).await {
            Ok(v) => v,
            Err(e) => Verified::Unknown(format!(
                "could not ask Proxmox whether `{}` happened ({e}); check the guest in Proxmox and mark the step",
                cx.step.name
            )),
        }
    }

    async fn compensate(&self, cx: &StepCx, intent: &Value, outcome: &Value) -> Result<Compensation, StepError> {
        if let Some(commands) = self.commands_executor(&cx.step) {
            return match commands {
                Ok(c) => c.compensate(cx, intent, outcome).await,
                Err(_) => Ok(Compensation::NothingToUndo),
            };
        }
        let plan = plan_of(cx)?;
        let intent = intent_of(&plan, intent).map_err(|e| {
            StepError::fatal(format!("{e}; undo step {} by hand (its actions are in the workflow)", cx.step.name))
        })?;
        // The actions that completed, from the outcome; without one (a failed attempt), all of
        // them: each undo looks at the guest first and only undoes what it still sees.
        let completed = outcome
            .get("actions")
            .and_then(Value::as_array)
            .map_or(plan.actions.len(), Vec::len)
            .min(plan.actions.len());
        // Undoing a stop and a later start one by one is not idempotent (a second call would
        // bounce the guest again), so a step whose guests are all back as it found them has
        // nothing left to undo.
        if self.back_as_found(&plan, &intent).await? {
            return Ok(Compensation::NothingToUndo);
        }
        let mut undone = Vec::new();
        let mut cannot = Vec::new();
        for i in (0..completed).rev() {
            let (a, before) = (&plan.actions[i], &intent.actions[i]);
            if before.created_here && !matches!(a.op, Op::Create { .. } | Op::Clone { .. }) {
                // Undoing the action that made the guest removes it, and this with it.
                continue;
            }
            match self.undo(cx, a, before).await? {
                Undo::Done(s) => undone.push(s),
                Undo::Nothing => {}
                Undo::Cannot(s) => cannot.push(s),
            }
        }
        Ok(if !cannot.is_empty() {
            let also = if undone.is_empty() { String::new() } else { format!(" (undone: {})", undone.join("; ")) };
            Compensation::CannotUndo(format!("{}{also}", cannot.join("; ")))
        } else if undone.is_empty() {
            Compensation::NothingToUndo
        } else {
            Compensation::Undone(undone.join("; "))
        })
    }
}

#[cfg(test)]
mod grounding_tests {
    use super::disk_storage;

    #[test]
    fn disks_name_their_storage() {
        assert_eq!(disk_storage("scsi0", "local-lvm:4,ssd=1"), Some("local-lvm"));
        assert_eq!(disk_storage("rootfs", "local-zfs:8"), Some("local-zfs"));
        assert_eq!(disk_storage("ide2", "none,media=cdrom"), None);
        assert_eq!(disk_storage("ide2", "local:iso/debian.iso,media=cdrom"), Some("local"));
        assert_eq!(disk_storage("memory", "2048"), None);
        assert_eq!(disk_storage("scsi", "local:4"), None, "a disk key has a number");
        assert_eq!(disk_storage("mp0", "/mnt/data,mp=/data"), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(fields: Value) -> RunStep {
        RunStep {
            name: "vm".into(),
            step_type: "proxmox-task".into(),
            depends_on: vec![],
            waits_for_human: false,
            mutates: true,
            fields: serde_json::from_value(fields).unwrap(),
        }
    }

    fn errors(fields: Value) -> Vec<String> {
        Plan::parse(&step(fields), "run-1/vm").unwrap_err()
    }

    #[test]
    fn the_short_and_the_mapping_forms_read_the_same() {
        let short = step(json!({"node": "pve", "vmid": "9100", "actions": ["start", "snapshot"], "snapname": "before"}));
        let long = step(json!({"node": "pve", "vmid": 9100, "actions": ["start", {"action": "snapshot", "snapname": "before"}]}));
        let a = Plan::parse(&short, "run-1/vm").unwrap();
        let b = Plan::parse(&long, "run-1/vm").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.targets(), ["vm/9100"]);
        assert!(matches!(&a.actions[1].op, Op::Snapshot { snapname, .. } if snapname == "before"));
    }

    #[test]
    fn bad_fields_are_each_named() {
        let e = errors(json!({"actions": ["reboot", {"snapname": "x"}, {"action": "rollback"}]}));
        assert!(e.iter().any(|m| m.starts_with("`node` is missing")), "{e:?}");
        assert!(e.iter().any(|m| m.starts_with("`vmid` is missing")), "{e:?}");
        assert!(e.iter().any(|m| m.contains("unknown proxmox-task action `reboot`") && m.contains("create, clone, start")), "{e:?}");
        assert!(e.iter().any(|m| m.contains("`actions[1]` has no `action:`")), "{e:?}");
        assert!(e.iter().any(|m| m.contains("(rollback) needs `snapname`")), "{e:?}");

        let e = errors(json!({"node": "pve", "vmid": "abc", "actions": ["start"]}));
        assert_eq!(e, ["`vmid` must be a number from 100 to 999999999, not \"abc\""]);

        let e = errors(json!({"node": "pve", "vmid": 100, "guest": {"kind": "lxc"}, "actions": ["create", "resize", "migrate",
            {"action": "config", "config": {"memroy": 1}}, {"action": "snapshot", "snapname": "1st", "colour": "red"}]}));
        assert!(e.iter().any(|m| m.contains("needs `guest.ostemplate`")), "{e:?}");
        assert!(e.iter().any(|m| m.contains("(resize) needs `disk`") && m.contains("rootfs")), "{e:?}");
        assert!(e.iter().any(|m| m.contains("(resize) needs `size`")), "{e:?}");
        assert!(e.iter().any(|m| m.contains("(migrate) needs `target`")), "{e:?}");
        assert!(e.iter().any(|m| m.contains("`config.memroy` is not a container setting")), "{e:?}");
        assert!(e.iter().any(|m| m.contains("`snapname` \"1st\" is not a snapshot name")), "{e:?}");
        assert!(e.iter().any(|m| m.contains("unknown parameter `colour`; it takes snapname, description, vmstate")), "{e:?}");

        let e = errors(json!({"node": "pve", "vmid": 100, "actions": ["start", "create"], "guest": {"cpus": 2}}));
        assert!(e.iter().any(|m| m.contains("(create) must come first")), "{e:?}");
        assert!(e.iter().any(|m| m.contains("`guest.cpus` is not a VM setting")), "{e:?}");
    }

    #[test]
    fn clone_moves_the_following_actions_to_the_copy() {
        let s = step(json!({"node": "pve", "vmid": 9000, "newid": 9001, "guest": {"name": "k3s"},
            "actions": ["clone", "start", {"action": "migrate", "target": "pve2"}, "stop"]}));
        let plan = Plan::parse(&s, "run-1/vm").unwrap();
        assert_eq!(plan.targets(), ["vm/9000", "vm/9001"]);
        let Op::Clone { params, .. } = &plan.actions[0].op else { panic!() };
        assert!(params.contains(&("name".to_string(), "k3s".to_string())));
        assert_eq!(plan.actions[1].guest, Guest { kind: Kind::Qemu, vmid: 9001, node: "pve".into() });
        assert_eq!(plan.actions[3].guest.node, "pve2");
    }

    #[test]
    fn default_snapshot_names_are_stable_valid_and_distinct() {
        assert_eq!(default_snapname("run-12/pre-upgrade", 0), "run-12-pre-upgrade");
        assert_eq!(default_snapname("run-12/pre-upgrade", 1), "run-12-pre-upgrade-2");
        let long = default_snapname("run-12/a-very-long-step-name-that-goes-on-and-on", 0);
        assert!(valid_snapname(&long) && long.len() <= 40, "{long}");
        assert_ne!(long, default_snapname("run-12/a-very-long-step-name-that-goes-on-and-on-2", 0));
        assert!(valid_snapname(&default_snapname("run-1/étape", 0)));
    }

    #[test]
    fn simulation_records_what_each_action_starts_from() {
        let s = step(json!({"node": "pve", "vmid": 100, "actions": ["start", "stop",
            {"action": "config", "config": {"memory": 2048, "onboot": null}}, {"action": "config", "config": {"memory": 4096}}]}));
        let plan = Plan::parse(&s, "run-1/vm").unwrap();
        let initial = BTreeMap::from([(
            100,
            GuestState {
                exists: true,
                node: Some("pve".into()),
                status: Some("stopped".into()),
                config: BTreeMap::from([("memory".into(), "1024".into()), ("onboot".into(), "1".into())]),
                ..GuestState::default()
            },
        )]);
        let (befores, end) = simulate(&plan, &initial);
        assert_eq!(befores[0].status.as_deref(), Some("stopped"));
        assert_eq!(befores[1].status.as_deref(), Some("running"));
        assert_eq!(
            befores[2].previous,
            Some(BTreeMap::from([("memory".into(), Some("1024".into())), ("onboot".into(), Some("1".into()))]))
        );
        assert_eq!(befores[3].previous, Some(BTreeMap::from([("memory".into(), Some("2048".into()))])));
        assert_eq!(end[&100].config, BTreeMap::from([("memory".into(), "4096".into())]));
    }

    #[test]
    fn config_values_match_what_proxmox_makes_of_them() {
        assert!(config_matches("2048", "2048"));
        assert!(config_matches("virtio,bridge=vmbr0", "virtio=BC:24:11:00:00:01,bridge=vmbr0"));
        assert!(config_matches("web,prod", "prod;web"));
        assert!(!config_matches("virtio,bridge=vmbr1", "virtio=BC:24:11:00:00:01,bridge=vmbr0"));
        assert!(!config_matches("2048", "1024"));
        assert_eq!(disk_size("local-lvm:vm-100-disk-0,iothread=1,size=32G").as_deref(), Some("32G"));
        assert!(valid_size("+2G") && valid_size("32") && valid_size("1.5T") && !valid_size("2GB") && !valid_size("-1G"));
    }

    #[test]
    fn errors_are_retryable_when_another_attempt_may_do_better() {
        let status = |status: u16, message: &str| proxmox::Error::Status {
            status,
            method: "POST",
            path: "/nodes/pve/qemu/100/status/start".into(),
            message: message.into(),
        };
        assert!(api_error("x", &status(500, "can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout")).retryable);
        assert!(api_error("x", &status(595, "No route to host")).retryable);
        assert!(api_error("x", &status(500, "cluster not ready - no quorum?")).retryable);
        assert!(!api_error("x", &status(400, "Parameter verification failed.")).retryable);
        assert!(!api_error("x", &status(500, "unable to create VM 100 - VM 100 already exists on node 'pve'")).retryable);
        assert!(!api_error("x", &status(403, "Permission check failed")).retryable);
        let e = api_error("start VM 100 on pve", &status(400, "Parameter verification failed."));
        assert!(e.message.starts_with("start VM 100 on pve: Proxmox answered 400") && e.message.ends_with("run it again"), "{}", e.message);
    }
}
