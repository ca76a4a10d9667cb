//! The read side of the control plane: one function per question, shared by MCP, REST and CLI.
//!
//! Every function takes the current snapshot, resolves any name through the core resolver, and
//! returns a typed answer that carries [`Freshness`]: how old and how healthy each source's data
//! is, so a caller always knows when it is looking at a last-good snapshot.

use std::collections::BTreeMap;

use labops_core::inventory::{Effect, Entity, EntityKind, Impact, RelationKind};
use labops_core::resolve::ResolveError;
use labops_core::source::{SourceHealth, SourceState};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::lab::{now_ms, Lab, Snapshot};

/// Why a question could not be answered.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ServiceError {
    /// A name did not resolve to exactly one entity.
    #[error("{error}")]
    Resolve {
        /// Which argument held the name.
        field: String,
        /// The resolver's answer, with candidates.
        error: ResolveError,
    },
    /// An argument is malformed.
    #[error("invalid {field}: {message}")]
    InvalidArgument {
        /// The argument.
        field: String,
        /// What is wrong and what is accepted.
        message: String,
    },
}

/// Result of a service call.
pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// How fresh the data behind an answer is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Freshness {
    /// True when any source is degraded, unavailable or not yet reported: the answer may be
    /// stale or incomplete.
    pub degraded: bool,
    /// True when this is the demo lab, not a real one.
    pub demo: bool,
    /// Each source's state and age.
    pub sources: Vec<SourceHealth>,
    /// A sentence for humans when something is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Every answer carries `freshness`, and validating MCP clients check every answer against the
/// tool's output schema. Its schema is written inline and checks the top level only: through
/// `$ref`s to `SourceHealth` and `SourceState`, the MCP Python SDK's validation (jsonschema, with
/// `referencing` lookups) cost 0.25 ms per call, a third of a small listing's time in that
/// client. The sources' shape is in the description.
impl JsonSchema for Freshness {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Freshness".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "description": "How fresh the data behind the answer is.",
            "properties": {
                "degraded": {"type": "boolean", "description": "True when any source is degraded, unavailable or not yet reported: the answer may be stale or incomplete."},
                "demo": {"type": "boolean", "description": "True when this is the demo lab, not a real one."},
                "sources": {"type": "array", "description": "Each source's state and age: {name, endpoint, state (healthy, degraded, unavailable, pending), age_seconds (null when never fetched), last_error, warnings [string], entities}."},
                "note": {"type": "string", "description": "A sentence for humans when something is off."}
            },
            "required": ["degraded", "demo", "sources"]
        })
    }
}

/// The resolved node of a listing, described rather than checked through a `$ref` (see
/// [`Freshness`]'s schema).
fn brief_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "description": "The entity, as {id, kind, name, namespace?, node?, vmid?, status}."
    })
}

/// A compact reference to an entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EntityBrief {
    /// Id; always resolves.
    pub id: String,
    /// Kind.
    pub kind: EntityKind,
    /// Name.
    pub name: String,
    /// Namespace, for Kubernetes objects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Node it runs on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// VMID, for guests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vmid: Option<u32>,
    /// Status.
    pub status: String,
}

impl From<&Entity> for EntityBrief {
    fn from(e: &Entity) -> Self {
        Self {
            id: e.id.clone(),
            kind: e.kind,
            name: e.name.clone(),
            namespace: e.namespace.clone(),
            node: e.node.clone(),
            vmid: e.vmid,
            status: e.status.clone(),
        }
    }
}

/// A link to another entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Link {
    /// How they are linked.
    pub relation: RelationKind,
    /// The other entity.
    pub entity: EntityBrief,
}

/// One Proxmox node in the summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeLine {
    /// Node name.
    pub name: String,
    /// `online`, `offline`, `unknown`.
    pub status: String,
    /// Guests on it that are running.
    pub guests_running: usize,
    /// All guests on it.
    pub guests: usize,
    /// CPU load, 0..1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// Memory in use, 0..1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<f64>,
}

/// The answer to `inventory_summary`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Summary {
    /// The lab's name.
    pub lab: String,
    /// Number of entities per kind.
    pub counts: BTreeMap<EntityKind, usize>,
    /// Proxmox nodes with their guests.
    pub proxmox_nodes: Vec<NodeLine>,
    /// Kubernetes nodes with the guest that hosts each.
    pub k8s_nodes: Vec<K8sNodeLine>,
    /// Problems worth knowing (offline nodes, lost quorum, stopped K3s VMs).
    pub warnings: Vec<String>,
    /// Data freshness.
    pub freshness: Freshness,
}

/// One Kubernetes node in the summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct K8sNodeLine {
    /// Node name.
    pub name: String,
    /// `Ready`, `NotReady`, `Unknown`.
    pub status: String,
    /// The VM or container that hosts it, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosted_by: Option<String>,
    /// Pods scheduled on it.
    pub pods: usize,
}

/// Filters for `list_entities`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListFilter {
    /// Only this kind.
    #[serde(default)]
    pub kind: Option<EntityKind>,
    /// Only entities placed on this node (Proxmox or Kubernetes node name or id), directly or
    /// through their VM: `still-fawn` lists its guests, storage, the K3s node inside its VM and
    /// that node's pods. An unknown node is an error, never an empty list.
    #[serde(default)]
    pub node: Option<String>,
    /// Only this status (`running`, `stopped`, `Ready`...), ignoring case.
    #[serde(default)]
    pub status: Option<String>,
    /// Only entities with this label: `key` or `key=value`.
    #[serde(default)]
    pub label: Option<String>,
    /// At most this many entities (default 1000, at most 10000).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// The answer to `list_entities`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EntityList {
    /// Matching entities, in inventory order. Each is
    /// `{id, kind, name, namespace?, node?, vmid?, status}`; `get_entity` gives everything known.
    #[schemars(schema_with = "brief_list_schema")]
    pub entities: Vec<EntityBrief>,
    /// How many matched in all.
    pub total: usize,
    /// True when `total` exceeds what was returned.
    pub truncated: bool,
    /// The node filter, resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "brief_schema")]
    pub node: Option<EntityBrief>,
    /// Data freshness.
    pub freshness: Freshness,
}

/// Lists of thousands of entities are described, not schema-checked item by item: validating
/// clients (the MCP Python SDK checks every result against the output schema) spent 100 ms and
/// more per call on item schemas. The item shape is given in the description.
fn brief_list_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "description": "Entities, each an object {id, kind, name, namespace?, node?, vmid?, status}."
    })
}

/// A listing as a table, the form the MCP tool `list_entities` answers in: `columns` names the
/// values of every row, and each entity is one row. As objects, most of a long listing is the
/// same seven keys repeated: as rows it is 40% smaller, for the model that reads it (tokens) and
/// for the MCP client that decodes it (the MCP SDKs decode structured content value by value).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EntityTable {
    /// What each row holds, in order: `id`, `kind`, `name`, then `namespace`, `node` and `vmid`
    /// when any listed entity has one, and `status`.
    pub columns: Vec<String>,
    /// One row per matching entity, in inventory order: its values in `columns` order, `null`
    /// where it has none. `get_entity` gives everything known about one.
    #[schemars(schema_with = "rows_schema")]
    pub rows: Rows,
    /// How many matched in all.
    pub total: usize,
    /// True when `total` exceeds the rows returned.
    pub truncated: bool,
    /// The node filter, resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "brief_schema")]
    pub node: Option<EntityBrief>,
    /// Data freshness.
    pub freshness: Freshness,
}

/// The rows of an [`EntityTable`]: the listed entities, written as arrays of the table's columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    /// Whether the optional columns `namespace`, `node` and `vmid` are in the table.
    optional: [bool; 3],
    entities: Vec<EntityBrief>,
}

/// Described, not checked row by row, for the reason given at [`brief_list_schema`].
fn rows_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "description": "One array per entity, its values in the order of `columns`; null where it has none."
    })
}

impl From<EntityList> for EntityTable {
    fn from(l: EntityList) -> Self {
        let optional = [
            l.entities.iter().any(|e| e.namespace.is_some()),
            l.entities.iter().any(|e| e.node.is_some()),
            l.entities.iter().any(|e| e.vmid.is_some()),
        ];
        let mut columns = vec!["id".to_string(), "kind".into(), "name".into()];
        columns.extend(["namespace", "node", "vmid"].iter().zip(optional).filter(|(_, on)| *on).map(|(c, _)| c.to_string()));
        columns.push("status".into());
        Self {
            columns,
            rows: Rows { optional, entities: l.entities },
            total: l.total,
            truncated: l.truncated,
            node: l.node,
            freshness: l.freshness,
        }
    }
}

impl Serialize for Rows {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        struct Row<'a>(&'a EntityBrief, [bool; 3]);
        impl Serialize for Row<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                use serde::ser::SerializeTuple;
                let (e, [namespace, node, vmid]) = (self.0, self.1);
                let mut row = s.serialize_tuple(4 + usize::from(namespace) + usize::from(node) + usize::from(vmid))?;
                row.serialize_element(&e.id)?;
                row.serialize_element(&e.kind)?;
                row.serialize_element(&e.name)?;
                if namespace {
                    row.serialize_element(&e.namespace)?;
                }
                if node {
                    row.serialize_element(&e.node)?;
                }
                if vmid {
                    row.serialize_element(&e.vmid)?;
                }
                row.serialize_element(&e.status)?;
                row.end()
            }
        }
        s.collect_seq(self.entities.iter().map(|e| Row(e, self.optional)))
    }
}

/// The answer to `get_entity`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EntityDetail {
    /// Everything known about it.
    pub entity: Entity,
    /// What it depends on.
    pub depends_on: Vec<Link>,
    /// What depends on it.
    pub dependents: Vec<Link>,
    /// The nodes and hosts under it, nearest first.
    pub placement: Vec<EntityBrief>,
    /// Data freshness.
    pub freshness: Freshness,
}

/// The answer to `resolve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Resolved {
    /// What was asked.
    pub query: String,
    /// The one entity it names.
    pub entity: EntityBrief,
    /// Data freshness.
    pub freshness: Freshness,
}

/// The answer to `node_status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeStatus {
    /// The node.
    pub node: Entity,
    /// Guests on a Proxmox node.
    pub guests: Vec<EntityBrief>,
    /// Storage on a Proxmox node, with usage.
    pub storage: Vec<Entity>,
    /// Kubernetes nodes running in this Proxmox node's guests.
    pub k8s_nodes: Vec<EntityBrief>,
    /// Pods on a Kubernetes node (or, for a Proxmox node, in its guests).
    pub pods: Vec<EntityBrief>,
    /// For a Kubernetes node: the guest and Proxmox node under it.
    pub placement: Vec<EntityBrief>,
    /// Data freshness.
    pub freshness: Freshness,
}

/// The answer to `guest_status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GuestStatus {
    /// The VM or container.
    pub guest: Entity,
    /// Its Proxmox node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<EntityBrief>,
    /// Storage its disks live on.
    pub storage: Vec<EntityBrief>,
    /// The Kubernetes node running inside it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k8s_node: Option<EntityBrief>,
    /// Pods on that Kubernetes node.
    pub pods: usize,
    /// Data freshness.
    pub freshness: Freshness,
}

/// The answer to `impact_of`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ImpactReport {
    /// What would go down.
    pub target: EntityBrief,
    /// One sentence: what breaks.
    pub summary: String,
    /// Entities that would stop.
    pub down: usize,
    /// Entities that would lose part of their capacity.
    pub degraded: usize,
    /// Counts of affected entities per kind.
    pub by_kind: BTreeMap<EntityKind, usize>,
    /// Every affected entity with how it is reached.
    pub affected: Vec<Impact>,
    /// Data freshness.
    pub freshness: Freshness,
}

/// Filters for `k8s_workloads`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadFilter {
    /// Only this namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Only workloads with pods on this node (Kubernetes or Proxmox node).
    #[serde(default)]
    pub node: Option<String>,
}

/// One workload with its pods.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkloadLine {
    /// The workload.
    pub workload: EntityBrief,
    /// Deployment, StatefulSet or DaemonSet.
    pub workload_kind: String,
    /// Desired replicas.
    pub replicas: u32,
    /// Ready replicas.
    pub ready: u32,
    /// Its pods.
    pub pods: Vec<EntityBrief>,
    /// Services routing to it.
    pub services: Vec<String>,
}

/// The answer to `k8s_workloads`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkloadList {
    /// Workloads, by namespace then name.
    pub workloads: Vec<WorkloadLine>,
    /// Data freshness.
    pub freshness: Freshness,
}

/// Default and maximum list sizes.
pub const DEFAULT_LIMIT: usize = 1000;
/// Largest `limit` accepted.
pub const MAX_LIMIT: usize = 10_000;

impl Lab {
    /// Freshness of a snapshot, now.
    pub fn freshness(&self, snap: &Snapshot) -> Freshness {
        let now = now_ms();
        let sources: Vec<SourceHealth> = snap.sources.iter().map(|s| s.health(now)).collect();
        let troubled: Vec<String> = sources
            .iter()
            .filter(|s| s.state != SourceState::Healthy)
            .map(|s| match (s.state, &s.last_error, s.age_seconds) {
                (SourceState::Degraded, Some(e), Some(age)) => {
                    format!("{} is failing ({e}); its data is the last good snapshot, {age:.0}s old", s.name)
                }
                (SourceState::Degraded, None, _) => format!("{}: {}", s.name, s.warnings.join("; ")),
                (SourceState::Unavailable, Some(e), _) => format!("{} has never answered ({e}); nothing from it is known", s.name),
                (SourceState::Pending, ..) => format!("{} has not reported yet", s.name),
                _ => format!("{} is {:?}", s.name, s.state),
            })
            .collect();
        let mut note = (!troubled.is_empty()).then(|| troubled.join(". "));
        if sources.is_empty() {
            note = Some("no inventory source is configured: run `labops init` to write a config".into());
        }
        if self.is_demo() {
            let demo = "DEMO LAB: this is a simulated Proxmox cluster (fakepve), not a real lab";
            note = Some(match note {
                Some(n) => format!("{demo}. {n}"),
                None => demo.into(),
            });
        }
        Freshness {
            degraded: sources.is_empty() || sources.iter().any(|s| s.state != SourceState::Healthy),
            demo: self.is_demo(),
            sources,
            note,
        }
    }

    fn resolve_in<'a>(snap: &'a Snapshot, field: &str, name: &str, kinds: &[EntityKind]) -> Result<&'a Entity> {
        snap.inventory
            .resolve(name, kinds)
            .map_err(|error| ServiceError::Resolve { field: field.into(), error })
    }

    /// Counts, nodes and warnings for the whole lab.
    pub fn inventory_summary(&self) -> Summary {
        let snap = self.snapshot();
        let inv = &snap.inventory;
        let mut warnings: Vec<String> = snap.sources.iter().flat_map(|s| s.warnings.iter().cloned()).collect();
        let proxmox_nodes = inv
            .of_kind(EntityKind::ProxmoxNode)
            .map(|n| {
                let guests: Vec<&Entity> = inv
                    .dependents(&n.id)
                    .into_iter()
                    .filter(|(k, e)| *k == RelationKind::RunsOn && e.kind.is_guest())
                    .map(|(_, e)| e)
                    .collect();
                NodeLine {
                    name: n.name.clone(),
                    status: n.status.clone(),
                    guests_running: guests.iter().filter(|g| g.status == "running").count(),
                    guests: guests.len(),
                    cpu: n.usage.cpu,
                    memory: match (n.usage.mem, n.usage.maxmem) {
                        (Some(m), Some(x)) if x > 0 => Some(m as f64 / x as f64),
                        _ => None,
                    },
                }
            })
            .collect();
        let k8s_nodes = inv
            .of_kind(EntityKind::K8sNode)
            .map(|n| {
                let hosted_by = inv
                    .depends_on(&n.id)
                    .into_iter()
                    .find(|(k, _)| *k == RelationKind::HostedBy)
                    .map(|(_, g)| g);
                if let Some(g) = hosted_by.filter(|g| g.status != "running") {
                    warnings.push(format!("K8s node {} runs in {} ({}), which is {}", n.name, g.name, g.id, g.status));
                }
                K8sNodeLine {
                    name: n.name.clone(),
                    status: n.status.clone(),
                    hosted_by: hosted_by.map(|g| g.id.clone()),
                    pods: inv.dependents(&n.id).iter().filter(|(_, e)| e.kind == EntityKind::Pod).count(),
                }
            })
            .collect();
        Summary {
            lab: self.name().to_string(),
            counts: inv.counts(),
            proxmox_nodes,
            k8s_nodes,
            warnings,
            freshness: self.freshness(&snap),
        }
    }

    /// Entities matching the filter.
    pub fn list_entities(&self, f: &ListFilter) -> Result<EntityList> {
        let snap = self.snapshot();
        let inv = &snap.inventory;
        let limit = f.limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(ServiceError::InvalidArgument {
                field: "limit".into(),
                message: format!("{limit} is out of range; use 1..={MAX_LIMIT}"),
            });
        }
        let node = match &f.node {
            Some(n) => Some(Self::resolve_in(&snap, "node", n, &[EntityKind::ProxmoxNode, EntityKind::K8sNode])?),
            None => None,
        };
        let node_pos = node.and_then(|n| inv.position(&n.id));
        let label = f.label.as_deref().map(|l| match l.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (l.trim(), None),
        });
        if label.is_some_and(|(k, _)| k.is_empty()) {
            return Err(ServiceError::InvalidArgument {
                field: "label".into(),
                message: "expected `key` or `key=value`".into(),
            });
        }
        let mut entities = Vec::new();
        let mut total = 0;
        for (i, e) in inv.entities().iter().enumerate() {
            if f.kind.is_some_and(|k| k != e.kind) {
                continue;
            }
            if let Some(n) = node_pos
                && !inv.placed_on_index(i, n) {
                    continue;
                }
            if f.status.as_deref().is_some_and(|s| !e.status.eq_ignore_ascii_case(s)) {
                continue;
            }
            if let Some((k, v)) = label {
                match (e.labels.get(k), v) {
                    (None, _) => continue,
                    (Some(have), Some(want)) if have != want => continue,
                    _ => {}
                }
            }
            total += 1;
            if entities.len() < limit {
                entities.push(EntityBrief::from(&**e));
            }
        }
        Ok(EntityList {
            truncated: total > entities.len(),
            entities,
            total,
            node: node.map(EntityBrief::from),
            freshness: self.freshness(&snap),
        })
    }

    /// One entity with its links.
    pub fn get_entity(&self, name: &str) -> Result<EntityDetail> {
        let snap = self.snapshot();
        let inv = &snap.inventory;
        let e = Self::resolve_in(&snap, "name", name, &[])?;
        let links = |v: Vec<(RelationKind, &Entity)>| -> Vec<Link> {
            v.into_iter().map(|(relation, e)| Link { relation, entity: e.into() }).collect()
        };
        Ok(EntityDetail {
            entity: e.clone(),
            depends_on: links(inv.depends_on(&e.id)),
            dependents: links(inv.dependents(&e.id)),
            placement: inv.placement(&e.id).into_iter().map(EntityBrief::from).collect(),
            freshness: self.freshness(&snap),
        })
    }

    /// The one entity a name identifies.
    pub fn resolve(&self, name: &str, kind: Option<EntityKind>) -> Result<Resolved> {
        let snap = self.snapshot();
        let kinds: Vec<EntityKind> = kind.into_iter().collect();
        let e = Self::resolve_in(&snap, "name", name, &kinds)?;
        Ok(Resolved { query: name.to_string(), entity: e.into(), freshness: self.freshness(&snap) })
    }

    /// A Proxmox or Kubernetes node with what runs on it.
    pub fn node_status(&self, name: &str) -> Result<NodeStatus> {
        let snap = self.snapshot();
        let inv = &snap.inventory;
        let n = Self::resolve_in(&snap, "name", name, &[EntityKind::ProxmoxNode, EntityKind::K8sNode])?;
        let pos = inv.position(&n.id).expect("resolved");
        let on_it = |kind: EntityKind| -> Vec<&Entity> {
            inv.entities()
                .iter()
                .enumerate()
                .filter(|(i, e)| e.kind == kind && inv.placed_on_index(*i, pos))
                .map(|(_, e)| &**e)
                .collect()
        };
        let mut guests: Vec<EntityBrief> = on_it(EntityKind::Vm).into_iter().map(Into::into).collect();
        guests.extend(on_it(EntityKind::Lxc).into_iter().map(EntityBrief::from));
        Ok(NodeStatus {
            node: n.clone(),
            guests,
            storage: on_it(EntityKind::Storage).into_iter().cloned().collect(),
            k8s_nodes: on_it(EntityKind::K8sNode).into_iter().map(Into::into).collect(),
            pods: on_it(EntityKind::Pod).into_iter().map(Into::into).collect(),
            placement: inv.placement(&n.id).into_iter().map(Into::into).collect(),
            freshness: self.freshness(&snap),
        })
    }

    /// A VM or container with its node, storage and the K8s node inside it.
    pub fn guest_status(&self, name: &str) -> Result<GuestStatus> {
        let snap = self.snapshot();
        let inv = &snap.inventory;
        let g = Self::resolve_in(&snap, "name", name, &[EntityKind::Vm, EntityKind::Lxc])?;
        let deps = inv.depends_on(&g.id);
        let node = deps.iter().find(|(k, _)| *k == RelationKind::RunsOn).map(|(_, e)| (*e).into());
        let storage = deps.iter().filter(|(k, _)| *k == RelationKind::UsesStorage).map(|(_, e)| (*e).into()).collect();
        let k8s = inv
            .dependents(&g.id)
            .into_iter()
            .find(|(k, e)| *k == RelationKind::HostedBy && e.kind == EntityKind::K8sNode)
            .map(|(_, e)| e);
        let pods = k8s
            .map(|n| inv.dependents(&n.id).iter().filter(|(_, e)| e.kind == EntityKind::Pod).count())
            .unwrap_or(0);
        Ok(GuestStatus {
            guest: g.clone(),
            node,
            storage,
            k8s_node: k8s.map(Into::into),
            pods,
            freshness: self.freshness(&snap),
        })
    }

    /// What breaks if `name` goes down.
    pub fn impact_of(&self, name: &str) -> Result<ImpactReport> {
        let snap = self.snapshot();
        let e = Self::resolve_in(&snap, "name", name, &[])?;
        let affected = snap.inventory.impact_of(&e.id);
        let down = affected.iter().filter(|i| i.effect == Effect::Down).count();
        let degraded = affected.len() - down;
        let mut by_kind: BTreeMap<EntityKind, usize> = BTreeMap::new();
        for i in &affected {
            *by_kind.entry(i.kind).or_default() += 1;
        }
        let summary = if affected.is_empty() {
            format!("Nothing in the inventory depends on {} ({}).", e.qualified_name(), e.id)
        } else {
            let parts: Vec<String> = by_kind.iter().map(|(k, n)| format!("{n} {k}")).collect();
            format!(
                "If {} ({}) goes down, {} entities are affected ({}): {down} stop and {degraded} lose part of their capacity.",
                e.qualified_name(),
                e.id,
                affected.len(),
                parts.join(", ")
            )
        };
        Ok(ImpactReport { target: e.into(), summary, down, degraded, by_kind, affected, freshness: self.freshness(&snap) })
    }

    /// Kubernetes workloads with their pods.
    pub fn k8s_workloads(&self, f: &WorkloadFilter) -> Result<WorkloadList> {
        let snap = self.snapshot();
        let inv = &snap.inventory;
        let ns = match &f.namespace {
            Some(n) => Some(Self::resolve_in(&snap, "namespace", n, &[EntityKind::Namespace])?.name.clone()),
            None => None,
        };
        let node = match &f.node {
            Some(n) => Some(Self::resolve_in(&snap, "node", n, &[EntityKind::K8sNode, EntityKind::ProxmoxNode])?),
            None => None,
        };
        let node_pos = node.and_then(|n| inv.position(&n.id));
        let mut workloads = Vec::new();
        for w in inv.of_kind(EntityKind::Workload) {
            if ns.as_ref().is_some_and(|n| w.namespace.as_ref() != Some(n)) {
                continue;
            }
            let pods: Vec<&Entity> = inv
                .depends_on(&w.id)
                .into_iter()
                .filter(|(k, _)| *k == RelationKind::Manages)
                .map(|(_, p)| p)
                .collect();
            if let Some(n) = node_pos {
                let on_node = pods
                    .iter()
                    .any(|p| inv.position(&p.id).is_some_and(|i| inv.placed_on_index(i, n)));
                if !on_node {
                    continue;
                }
            }
            let num = |k: &str| w.attributes.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
            workloads.push(WorkloadLine {
                workload: w.into(),
                workload_kind: w.attributes.get("workload_kind").cloned().unwrap_or_default(),
                replicas: num("replicas"),
                ready: num("ready"),
                pods: pods.into_iter().map(Into::into).collect(),
                services: inv
                    .dependents(&w.id)
                    .into_iter()
                    .filter(|(k, _)| *k == RelationKind::RoutesTo)
                    .map(|(_, s)| s.qualified_name())
                    .collect(),
            });
        }
        workloads.sort_by(|a, b| (&a.workload.namespace, &a.workload.name).cmp(&(&b.workload.namespace, &b.workload.name)));
        Ok(WorkloadList { workloads, freshness: self.freshness(&snap) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brief(id: &str, kind: EntityKind, namespace: Option<&str>, node: Option<&str>, vmid: Option<u32>) -> EntityBrief {
        EntityBrief {
            id: id.into(),
            kind,
            name: id.rsplit('/').next().unwrap_or(id).into(),
            namespace: namespace.map(Into::into),
            node: node.map(Into::into),
            vmid,
            status: "running".into(),
        }
    }

    fn table(entities: Vec<EntityBrief>) -> serde_json::Value {
        let list = EntityList {
            total: entities.len() + 1,
            truncated: true,
            entities,
            node: None,
            freshness: Freshness { degraded: false, demo: false, sources: vec![], note: None },
        };
        serde_json::to_value(EntityTable::from(list)).unwrap()
    }

    /// Each row, zipped with `columns`, is the entity's brief object (absent fields as null).
    fn objects(t: &serde_json::Value) -> Vec<serde_json::Value> {
        let columns: Vec<&str> = t["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
        t["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                let row = row.as_array().unwrap();
                assert_eq!(row.len(), columns.len(), "every row has a value per column: {row:?}");
                serde_json::Value::Object(columns.iter().zip(row).filter(|(_, v)| !v.is_null()).map(|(c, v)| (c.to_string(), v.clone())).collect())
            })
            .collect()
    }

    #[test]
    fn a_table_holds_exactly_what_the_briefs_hold_with_only_the_columns_used() {
        let mixed = vec![
            brief("vm/108", EntityKind::Vm, None, Some("still-fawn"), Some(108)),
            brief("pod/media/jellyfin-0", EntityKind::Pod, Some("media"), Some("k3s-vm-still-fawn"), None),
            brief("host/nas", EntityKind::Host, None, None, None),
        ];
        let t = table(mixed.clone());
        assert_eq!(t["columns"], serde_json::json!(["id", "kind", "name", "namespace", "node", "vmid", "status"]));
        assert_eq!(objects(&t), mixed.iter().map(|b| serde_json::to_value(b).unwrap()).collect::<Vec<_>>());
        assert_eq!(t["rows"][2], serde_json::json!(["host/nas", "host", "nas", null, null, null, "running"]));
        assert_eq!((t["total"].as_u64(), t["truncated"].as_bool()), (Some(4), Some(true)));

        let vms = vec![brief("vm/105", EntityKind::Vm, None, Some("pumped-piglet"), Some(105)), brief("vm/116", EntityKind::Vm, None, Some("chief-horse"), Some(116))];
        let t = table(vms.clone());
        assert_eq!(t["columns"], serde_json::json!(["id", "kind", "name", "node", "vmid", "status"]), "no namespace column for VMs");
        assert_eq!(t["rows"][1], serde_json::json!(["vm/116", "vm", "116", "chief-horse", 116, "running"]));
        assert_eq!(objects(&t), vms.iter().map(|b| serde_json::to_value(b).unwrap()).collect::<Vec<_>>());

        let hosts = table(vec![brief("host/nas", EntityKind::Host, None, None, None)]);
        assert_eq!(hosts["columns"], serde_json::json!(["id", "kind", "name", "status"]));
        let empty = table(vec![]);
        assert_eq!((empty["columns"].as_array().unwrap().len(), empty["rows"].as_array().unwrap().len()), (4, 0));
    }
}
