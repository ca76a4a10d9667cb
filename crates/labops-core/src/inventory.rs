//! The typed model of the lab and the links between its parts.
//!
//! Sources (Proxmox, Kubernetes, static hosts) each produce a [`Part`]: entities with stable ids
//! and the relations they know about. [`Inventory::build`] merges the parts, adds the links no
//! single source can see (a Kubernetes node runs in a Proxmox VM), drops relations whose target is
//! missing, and indexes everything for resolution and impact analysis.
//!
//! Relations always point from the dependent to what it depends on ("pod `RunsOn` k8s node",
//! "k8s node `HostedBy` VM"), so [`Inventory::impact_of`] walks them backwards.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What kind of thing an entity is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityKind {
    /// A Proxmox VE node (hypervisor).
    ProxmoxNode,
    /// A QEMU virtual machine.
    Vm,
    /// An LXC container.
    Lxc,
    /// A storage pool as seen on one Proxmox node.
    Storage,
    /// A Kubernetes node.
    K8sNode,
    /// A Kubernetes namespace.
    Namespace,
    /// A Deployment, StatefulSet or DaemonSet.
    Workload,
    /// A Kubernetes pod.
    Pod,
    /// A Kubernetes service.
    Service,
    /// A Kubernetes ingress.
    Ingress,
    /// A machine declared in the config (NAS, router, anything without an API).
    Host,
}

impl EntityKind {
    /// Every kind, in display order.
    pub const ALL: [EntityKind; 11] = [
        EntityKind::ProxmoxNode,
        EntityKind::Vm,
        EntityKind::Lxc,
        EntityKind::Storage,
        EntityKind::K8sNode,
        EntityKind::Namespace,
        EntityKind::Workload,
        EntityKind::Pod,
        EntityKind::Service,
        EntityKind::Ingress,
        EntityKind::Host,
    ];

    /// The snake_case name used in ids and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::ProxmoxNode => "proxmox_node",
            EntityKind::Vm => "vm",
            EntityKind::Lxc => "lxc",
            EntityKind::Storage => "storage",
            EntityKind::K8sNode => "k8s_node",
            EntityKind::Namespace => "namespace",
            EntityKind::Workload => "workload",
            EntityKind::Pod => "pod",
            EntityKind::Service => "service",
            EntityKind::Ingress => "ingress",
            EntityKind::Host => "host",
        }
    }

    /// Parses a kind name; `None` when it is not one.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// True for VMs and containers.
    pub fn is_guest(self) -> bool {
        matches!(self, EntityKind::Vm | EntityKind::Lxc)
    }

    /// True for Kubernetes objects that live in a namespace.
    pub fn is_namespaced(self) -> bool {
        matches!(
            self,
            EntityKind::Workload | EntityKind::Pod | EntityKind::Service | EntityKind::Ingress
        )
    }
}

/// A small string map (an entity's labels or attributes), kept as a vector sorted by key. An
/// entity has a handful, and a `BTreeMap`'s smallest node is 544 bytes: with thousands of pods,
/// empty map slots were a fifth of the inventory. Serialised, and described, as a JSON object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tags(Vec<(String, String)>);

impl Tags {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&String> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok().map(|i| &self.0[i].1)
    }

    /// True when `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` to `value`; returns the value it replaces.
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        match self.0.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.reserve_exact(1);
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `(key, value)` in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl<'a> IntoIterator for &'a Tags {
    type Item = (&'a String, &'a String);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (String, String)>, fn(&'a (String, String)) -> (&'a String, &'a String)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl From<BTreeMap<String, String>> for Tags {
    fn from(m: BTreeMap<String, String>) -> Self {
        Self(m.into_iter().collect())
    }
}

impl FromIterator<(String, String)> for Tags {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        let m: BTreeMap<String, String> = iter.into_iter().collect();
        m.into()
    }
}

impl std::ops::Index<&str> for Tags {
    type Output = String;
    fn index(&self, key: &str) -> &String {
        self.get(key).unwrap_or_else(|| panic!("no tag {key:?}"))
    }
}

impl Serialize for Tags {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Tags {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::<String, String>::deserialize(d).map(Self::from)
    }
}

impl JsonSchema for Tags {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Tags".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <BTreeMap<String, String>>::json_schema(g)
    }
}

/// A plain string `enum` schema: validators check it far faster than the `oneOf` of documented
/// variants a derive would produce (it matters for clients that validate thousands of entities).
impl JsonSchema for EntityKind {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "EntityKind".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let names: Vec<&str> = Self::ALL.iter().map(|k| k.as_str()).collect();
        schemars::json_schema!({
            "type": "string",
            "enum": names,
            "description": "What kind of thing an entity is: proxmox_node, vm, lxc, storage (a pool on one Proxmox node), k8s_node, namespace, workload (Deployment, StatefulSet, DaemonSet), pod, service, ingress, host (declared in the config)."
        })
    }
}

impl std::fmt::Display for EntityKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Resource usage, where the source reports it. Bytes for memory and disk, cores for CPU.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Usage {
    /// CPU load as a fraction of `maxcpu` (0..1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// Number of CPUs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxcpu: Option<f64>,
    /// Memory used, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem: Option<u64>,
    /// Memory available, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxmem: Option<u64>,
    /// Disk used, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<u64>,
    /// Disk size, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxdisk: Option<u64>,
    /// Seconds since start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime: Option<u64>,
}

impl Usage {
    /// Disk use as a fraction, when both numbers are known and the size is not zero.
    pub fn disk_fraction(&self) -> Option<f64> {
        match (self.disk, self.maxdisk) {
            (Some(d), Some(m)) if m > 0 => Some(d as f64 / m as f64),
            _ => None,
        }
    }
}

/// One thing in the lab.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Entity {
    /// Stable id: `vm/108`, `proxmox_node/still-fawn`, `pod/default/web-1`,
    /// `storage/still-fawn/local-zfs`, `workload/default/deployment/web`.
    pub id: String,
    /// What it is.
    pub kind: EntityKind,
    /// Its name as the source spells it.
    pub name: String,
    /// Kubernetes namespace, for namespaced kinds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The node it runs on: the Proxmox node for guests and storage, the Kubernetes node for pods.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Proxmox VMID, for guests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vmid: Option<u32>,
    /// Status as the source reports it (`running`, `stopped`, `online`, `offline`, `Ready`, ...).
    pub status: String,
    /// Name of the source it comes from.
    pub source: String,
    /// Labels or tags.
    #[serde(default, skip_serializing_if = "Tags::is_empty")]
    pub labels: Tags,
    /// Addresses (IPs, host names) the source knows for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Resource usage.
    #[serde(default, skip_serializing_if = "is_default_usage")]
    pub usage: Usage,
    /// Other facts worth showing (storage type, workload kind, replicas, service type...).
    #[serde(default, skip_serializing_if = "Tags::is_empty")]
    pub attributes: Tags,
}

fn is_default_usage(u: &Usage) -> bool {
    *u == Usage::default()
}

impl Entity {
    /// A new entity with the required fields; the rest empty.
    pub fn new(
        kind: EntityKind,
        id: impl Into<String>,
        name: impl Into<String>,
        status: impl Into<String>,
        source: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            kind,
            name: name.into(),
            namespace: None,
            node: None,
            vmid: None,
            status: status.into(),
            source: source.into(),
            labels: Tags::default(),
            addresses: Vec::new(),
            usage: Usage::default(),
            attributes: Tags::default(),
        }
    }

    /// `namespace/name` for namespaced kinds, `node/name` for storage, else the name.
    pub fn qualified_name(&self) -> String {
        match (&self.namespace, self.kind) {
            (Some(ns), _) => format!("{ns}/{}", self.name),
            (None, EntityKind::Storage) => {
                format!("{}/{}", self.node.as_deref().unwrap_or("?"), self.name)
            }
            _ => self.name.clone(),
        }
    }

    /// True when the entity is up by its own source's measure.
    pub fn is_up(&self) -> bool {
        matches!(
            self.status.as_str(),
            "running" | "online" | "available" | "Ready" | "Running" | "Active" | "up" | "Succeeded"
        )
    }
}

/// Ids for each kind, in one place so sources and the resolver agree.
pub mod ids {
    /// `proxmox_node/NAME`
    pub fn proxmox_node(name: &str) -> String {
        format!("proxmox_node/{name}")
    }
    /// `vm/VMID`
    pub fn vm(vmid: u32) -> String {
        format!("vm/{vmid}")
    }
    /// `lxc/VMID`
    pub fn lxc(vmid: u32) -> String {
        format!("lxc/{vmid}")
    }
    /// `storage/NODE/NAME`
    pub fn storage(node: &str, name: &str) -> String {
        format!("storage/{node}/{name}")
    }
    /// `k8s_node/NAME`
    pub fn k8s_node(name: &str) -> String {
        format!("k8s_node/{name}")
    }
    /// `namespace/NAME`
    pub fn namespace(name: &str) -> String {
        format!("namespace/{name}")
    }
    /// `workload/NS/KIND/NAME` with the kind lower-cased (deployment, statefulset, daemonset).
    pub fn workload(ns: &str, kind: &str, name: &str) -> String {
        format!("workload/{ns}/{}/{name}", kind.to_ascii_lowercase())
    }
    /// `pod/NS/NAME`
    pub fn pod(ns: &str, name: &str) -> String {
        format!("pod/{ns}/{name}")
    }
    /// `service/NS/NAME`
    pub fn service(ns: &str, name: &str) -> String {
        format!("service/{ns}/{name}")
    }
    /// `ingress/NS/NAME`
    pub fn ingress(ns: &str, name: &str) -> String {
        format!("ingress/{ns}/{name}")
    }
    /// `host/NAME`
    pub fn host(name: &str) -> String {
        format!("host/{name}")
    }
}

/// How one entity depends on another. Always read "from `kind` to".
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RelationKind {
    /// A guest on its Proxmox node, a pod on its Kubernetes node, storage on its node.
    RunsOn,
    /// A Kubernetes node inside the VM (or container) that hosts it.
    HostedBy,
    /// A guest's disk on a storage pool.
    UsesStorage,
    /// A workload made of its pods.
    Manages,
    /// A service sending traffic to a workload (its selector matches the workload's pods).
    RoutesTo,
    /// An ingress sending traffic to a service.
    Exposes,
}

/// A directed link: `from` depends on `to`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub struct Relation {
    /// The dependent entity's id.
    pub from: String,
    /// How it depends.
    pub kind: RelationKind,
    /// The id of what it depends on.
    pub to: String,
}

impl Relation {
    /// `from` depends on `to` by `kind`.
    pub fn new(from: impl Into<String>, kind: RelationKind, to: impl Into<String>) -> Self {
        Self { from: from.into(), kind, to: to.into() }
    }
}

/// What one source contributes to the inventory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// The entities it saw.
    pub entities: Vec<Entity>,
    /// The relations it knows (targets may belong to another source).
    pub relations: Vec<Relation>,
}

impl Part {
    /// The part with its entities behind `Arc`s, as the lab keeps it: every inventory built from
    /// it shares them instead of holding a copy.
    pub fn share(self) -> SharedPart {
        SharedPart { entities: self.entities.into_iter().map(Arc::new).collect(), relations: self.relations }
    }
}

/// A [`Part`] whose entities are shared with the inventories built from it.
#[derive(Debug, Clone, Default)]
pub struct SharedPart {
    entities: Vec<Arc<Entity>>,
    relations: Vec<Relation>,
}

impl SharedPart {
    /// True when `part` holds the same entities and relations, in the same order.
    pub fn same_as(&self, part: &Part) -> bool {
        self.relations == part.relations
            && self.entities.len() == part.entities.len()
            && self.entities.iter().zip(&part.entities).all(|(a, b)| **a == *b)
    }

    /// Number of entities.
    pub fn len(&self) -> usize {
        self.entities.len()
    }

    /// True when it has no entity.
    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }
}

/// An immutable, indexed snapshot of the whole lab.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    entities: Vec<Arc<Entity>>,
    relations: Vec<Relation>,
    by_id: HashMap<String, usize>,
    /// Lower-cased name -> entity indices.
    pub(crate) by_name: HashMap<String, Vec<usize>>,
    /// Lower-cased qualified `a/b` name -> entity indices.
    pub(crate) by_qualified: HashMap<String, Vec<usize>>,
    by_vmid: HashMap<u32, Vec<usize>>,
    /// entity index -> (relation kind, target index): what it depends on.
    depends_on: Vec<Vec<(RelationKind, usize)>>,
    /// entity index -> (relation kind, dependent index): what depends on it.
    dependents: Vec<Vec<(RelationKind, usize)>>,
    /// entity index -> the chain of nodes and hosts under it (K8s node, VM, Proxmox node).
    placement: Vec<Vec<usize>>,
    /// entity index -> (bigram mask of its lower-cased names, lower-cased name, qualified name, id),
    /// for the nearest-name search of unknown names.
    pub(crate) search: Vec<SearchKey>,
    dropped_relations: usize,
}

/// Precomputed text of one entity for the nearest-name search.
#[derive(Debug, Clone, Default)]
pub(crate) struct SearchKey {
    pub(crate) mask: u64,
    pub(crate) name: String,
    pub(crate) qualified: String,
    pub(crate) id: String,
}

/// A 64-bit set of the character bigrams of `s` (hashed), for a cheap similarity prefilter.
pub(crate) fn bigram_mask(s: &str) -> u64 {
    let bytes = s.as_bytes();
    let mut m = 0u64;
    for w in bytes.windows(2) {
        let h = (w[0] as u32).wrapping_mul(31).wrapping_add(w[1] as u32).wrapping_mul(2_654_435_761);
        m |= 1u64 << (h >> 26);
    }
    if bytes.len() == 1 {
        m |= 1u64 << (bytes[0] % 64);
    }
    m
}

/// One entity affected by an outage, with how it is affected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Impact {
    /// The affected entity's id.
    pub id: String,
    /// Its kind.
    pub kind: EntityKind,
    /// Its qualified name.
    pub name: String,
    /// `down` when everything it depends on of that kind is gone, `degraded` when only part is.
    pub effect: Effect,
    /// The chain of ids from the failed entity to this one.
    pub path: Vec<String>,
}

/// How badly an entity is hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// It cannot work at all.
    Down,
    /// It loses part of its capacity (some pods of a workload, some backends of a service).
    Degraded,
}

impl Inventory {
    /// Merges the parts, links Kubernetes nodes to the guests that host them, and indexes.
    ///
    /// Later parts never overwrite earlier ones: a duplicate id keeps the first entity.
    /// Relations whose ends are missing are dropped and counted ([`Inventory::dropped_relations`]).
    pub fn build(parts: impl IntoIterator<Item = Part>) -> Self {
        let shared: Vec<SharedPart> = parts.into_iter().map(Part::share).collect();
        Self::build_shared(&shared)
    }

    /// [`Inventory::build`] from shared parts: the inventory holds the parts' entities, not
    /// copies of them.
    pub fn build_shared<'a>(parts: impl IntoIterator<Item = &'a SharedPart>) -> Self {
        let mut entities: Vec<Arc<Entity>> = Vec::new();
        let mut by_id: HashMap<String, usize> = HashMap::new();
        let mut relations: BTreeSet<Relation> = BTreeSet::new();
        for part in parts {
            entities.reserve(part.entities.len());
            for e in &part.entities {
                if !by_id.contains_key(&e.id) {
                    by_id.insert(e.id.clone(), entities.len());
                    entities.push(e.clone());
                }
            }
            relations.extend(part.relations.iter().cloned());
        }
        relations.extend(host_links(&entities));

        let mut inv = Inventory { by_id, ..Default::default() };
        inv.depends_on = vec![Vec::new(); entities.len()];
        inv.dependents = vec![Vec::new(); entities.len()];
        for r in relations {
            match (inv.by_id.get(&r.from), inv.by_id.get(&r.to)) {
                (Some(&f), Some(&t)) if f != t => {
                    inv.depends_on[f].push((r.kind, t));
                    inv.dependents[t].push((r.kind, f));
                    inv.relations.push(r);
                }
                _ => inv.dropped_relations += 1,
            }
        }
        for (i, e) in entities.iter().enumerate() {
            inv.by_name.entry(e.name.to_lowercase()).or_default().push(i);
            if e.namespace.is_some() || e.kind == EntityKind::Storage {
                inv.by_qualified.entry(e.qualified_name().to_lowercase()).or_default().push(i);
            }
            if let Some(v) = e.vmid {
                inv.by_vmid.entry(v).or_default().push(i);
            }
        }
        inv.entities = entities;
        inv.placement = (0..inv.entities.len()).map(|i| inv.placement_chain(i)).collect();
        inv.search = inv
            .entities
            .iter()
            .map(|e| {
                let name = e.name.to_lowercase();
                let qualified = e.qualified_name().to_lowercase();
                SearchKey { mask: bigram_mask(&name) | bigram_mask(&qualified), name, qualified, id: e.id.to_lowercase() }
            })
            .collect();
        inv
    }

    fn placement_chain(&self, start: usize) -> Vec<usize> {
        let mut chain = Vec::new();
        let mut cur = start;
        loop {
            let next = self.depends_on[cur]
                .iter()
                .find(|(k, _)| matches!(k, RelationKind::RunsOn | RelationKind::HostedBy))
                .map(|&(_, t)| t);
            match next {
                Some(t) if t != start && !chain.contains(&t) => {
                    chain.push(t);
                    cur = t;
                }
                _ => return chain,
            }
        }
    }

    /// True when `id` runs on `node_id`, directly or through the guests and nodes under it
    /// (a pod is placed on its K8s node, that node's VM and the VM's Proxmox node).
    pub fn is_placed_on(&self, id: &str, node_id: &str) -> bool {
        match (self.index_of(id), self.index_of(node_id)) {
            (Some(i), Some(n)) => self.placement[i].contains(&n),
            _ => false,
        }
    }

    /// Indices-based variant of [`Inventory::is_placed_on`] for scans over all entities.
    pub fn placed_on_index(&self, i: usize, node: usize) -> bool {
        self.placement.get(i).is_some_and(|p| p.contains(&node))
    }

    /// Position of an id in [`Inventory::entities`].
    pub fn position(&self, id: &str) -> Option<usize> {
        self.index_of(id)
    }

    /// All entities, in source order.
    pub fn entities(&self) -> &[Arc<Entity>] {
        &self.entities
    }

    /// All relations that link two known entities.
    pub fn relations(&self) -> &[Relation] {
        &self.relations
    }

    /// Relations dropped because one end was not in the inventory.
    pub fn dropped_relations(&self) -> usize {
        self.dropped_relations
    }

    /// The entity with this exact id.
    pub fn get(&self, id: &str) -> Option<&Entity> {
        self.by_id.get(id).map(|&i| &*self.entities[i])
    }

    pub(crate) fn index_of(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    pub(crate) fn at(&self, i: usize) -> &Entity {
        &self.entities[i]
    }

    pub(crate) fn by_vmid(&self, vmid: u32) -> &[usize] {
        self.by_vmid.get(&vmid).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Entities of one kind.
    pub fn of_kind(&self, kind: EntityKind) -> impl Iterator<Item = &Entity> {
        self.entities.iter().map(|e| &**e).filter(move |e| e.kind == kind)
    }

    /// Number of entities per kind.
    pub fn counts(&self) -> BTreeMap<EntityKind, usize> {
        let mut m = BTreeMap::new();
        for e in &self.entities {
            *m.entry(e.kind).or_insert(0) += 1;
        }
        m
    }

    /// What `id` depends on, directly.
    pub fn depends_on(&self, id: &str) -> Vec<(RelationKind, &Entity)> {
        self.index_of(id)
            .map(|i| self.depends_on[i].iter().map(|&(k, t)| (k, &*self.entities[t])).collect())
            .unwrap_or_default()
    }

    /// What depends on `id`, directly.
    pub fn dependents(&self, id: &str) -> Vec<(RelationKind, &Entity)> {
        self.index_of(id)
            .map(|i| self.dependents[i].iter().map(|&(k, f)| (k, &*self.entities[f])).collect())
            .unwrap_or_default()
    }

    /// The Proxmox node and VM chain under an entity: for a pod, its K8s node, the VM that hosts
    /// it and that VM's Proxmox node.
    pub fn placement(&self, id: &str) -> Vec<&Entity> {
        self.index_of(id)
            .map(|i| self.placement[i].iter().map(|&t| &*self.entities[t]).collect())
            .unwrap_or_default()
    }

    /// Everything that stops or degrades if `id` goes down, breadth first, with the path.
    ///
    /// An entity is `down` when every dependency of the kind that links it to the failure is gone
    /// (all pods of a workload, all backing workloads of a service); otherwise `degraded`.
    /// Storage a guest uses counts as down for the guest (a guest cannot run without its disk).
    pub fn impact_of(&self, id: &str) -> Vec<Impact> {
        let Some(root) = self.index_of(id) else { return Vec::new() };
        let mut down: BTreeSet<usize> = BTreeSet::from([root]);
        let mut degraded: BTreeSet<usize> = BTreeSet::new();
        let mut parent: HashMap<usize, usize> = HashMap::new();
        let mut queue: VecDeque<usize> = VecDeque::from([root]);
        let mut order: Vec<usize> = Vec::new();
        while let Some(i) = queue.pop_front() {
            let i_down = down.contains(&i);
            for &(kind, dep) in &self.dependents[i] {
                if down.contains(&dep) {
                    continue;
                }
                let all_gone = i_down
                    && self.depends_on[dep].iter().filter(|(k, _)| *k == kind).all(|(_, t)| down.contains(t));
                if all_gone {
                    degraded.remove(&dep);
                    down.insert(dep);
                } else if !degraded.insert(dep) {
                    continue;
                }
                parent.entry(dep).or_insert(i);
                if !order.contains(&dep) {
                    order.push(dep);
                }
                queue.push_back(dep);
            }
        }
        order
            .into_iter()
            .map(|i| {
                let mut path = vec![self.entities[i].id.clone()];
                let mut cur = i;
                while let Some(&p) = parent.get(&cur) {
                    path.push(self.entities[p].id.clone());
                    cur = p;
                }
                path.reverse();
                let e = &self.entities[i];
                Impact {
                    id: e.id.clone(),
                    kind: e.kind,
                    name: e.qualified_name(),
                    effect: if down.contains(&i) { Effect::Down } else { Effect::Degraded },
                    path,
                }
            })
            .collect()
    }
}

/// Links each Kubernetes node to the VM or container that hosts it, by exact name or address.
///
/// A K3s node usually carries the VM's name (`k3s-vm-still-fawn`); when it does not, an address
/// shared by the node and exactly one guest links them. Nothing is linked on a partial match.
fn host_links(entities: &[Arc<Entity>]) -> Vec<Relation> {
    let mut guests_by_name: HashMap<String, Vec<&Entity>> = HashMap::new();
    let mut guests_by_addr: HashMap<&str, Vec<&Entity>> = HashMap::new();
    for g in entities.iter().filter(|e| e.kind.is_guest()) {
        guests_by_name.entry(g.name.to_lowercase()).or_default().push(g);
        for a in &g.addresses {
            guests_by_addr.entry(a.as_str()).or_default().push(g);
        }
    }
    let mut out = Vec::new();
    for n in entities.iter().filter(|e| e.kind == EntityKind::K8sNode) {
        let by_name = guests_by_name.get(&n.name.to_lowercase());
        let host = match by_name {
            Some(v) if v.len() == 1 => Some(v[0]),
            _ => {
                let mut found: Vec<&Entity> = n
                    .addresses
                    .iter()
                    .filter_map(|a| guests_by_addr.get(a.as_str()))
                    .flatten()
                    .copied()
                    .collect();
                found.dedup_by(|a, b| a.id == b.id);
                (found.len() == 1).then(|| found[0])
            }
        };
        if let Some(g) = host {
            out.push(Relation::new(&n.id, RelationKind::HostedBy, &g.id));
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn inventories_hold_the_parts_entities_not_copies() {
        let vm = |status: &str| Entity::new(EntityKind::Vm, "vm/101", "web", status, "proxmox");
        let part = Part { entities: vec![vm("running")], relations: Vec::new() };
        let shared = part.clone().share();
        let (a, b) = (Inventory::build_shared([&shared]), Inventory::build_shared([&shared]));
        assert!(Arc::ptr_eq(&a.entities()[0], &b.entities()[0]));
        assert_eq!(a.get("vm/101").map(|e| e.status.as_str()), Some("running"));
        assert!(shared.same_as(&part));
        assert!(!shared.same_as(&Part { entities: vec![vm("stopped")], relations: Vec::new() }));
        assert!(!shared.same_as(&Part::default()));
    }

    #[test]
    fn tags_keep_key_order_replace_values_and_serialise_as_an_object() {
        let mut t = Tags::default();
        assert_eq!(t.insert("tier".into(), "b".into()), None);
        assert_eq!(t.insert("app".into(), "web".into()), None);
        assert_eq!(t.insert("tier".into(), "c".into()), Some("b".into()));
        assert_eq!(t.get("tier").map(String::as_str), Some("c"));
        assert!(t.contains_key("app") && !t.contains_key("ap") && t.len() == 2);
        assert_eq!(t.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["app", "tier"]);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, r#"{"app":"web","tier":"c"}"#);
        let back: Tags = serde_json::from_str(r#"{"tier":"c","app":"web"}"#).unwrap();
        assert_eq!(back, t);
        assert!(serde_json::from_str::<Tags>(r#"["app"]"#).is_err());
        let schema = serde_json::to_value(schemars::schema_for!(Tags)).unwrap();
        assert_eq!(schema["type"], "object");
        assert_eq!(schema["additionalProperties"]["type"], "string");
    }

    /// A small lab: two Proxmox nodes, a K3s VM on each, pods of one deployment on both, a
    /// service and an ingress in front, a pinned pod, an LXC on local storage and a NAS.
    pub(crate) fn lab() -> Inventory {
        let mut p = Part::default();
        for n in ["still-fawn", "pumped-piglet"] {
            p.entities.push(Entity::new(
                EntityKind::ProxmoxNode,
                ids::proxmox_node(n),
                n,
                "online",
                "proxmox",
            ));
            let mut st = Entity::new(
                EntityKind::Storage,
                ids::storage(n, "local-zfs"),
                "local-zfs",
                "available",
                "proxmox",
            );
            st.node = Some(n.into());
            p.relations.push(Relation::new(&st.id, RelationKind::RunsOn, ids::proxmox_node(n)));
            p.entities.push(st);
        }
        for (vmid, name, node) in
            [(108, "k3s-vm-still-fawn", "still-fawn"), (105, "k3s-vm-pumped-piglet-gpu", "pumped-piglet")]
        {
            let mut vm = Entity::new(EntityKind::Vm, ids::vm(vmid), name, "running", "proxmox");
            vm.vmid = Some(vmid);
            vm.node = Some(node.into());
            p.relations.push(Relation::new(&vm.id, RelationKind::RunsOn, ids::proxmox_node(node)));
            p.relations.push(Relation::new(&vm.id, RelationKind::UsesStorage, ids::storage(node, "local-zfs")));
            p.entities.push(vm);
        }
        let mut ct = Entity::new(EntityKind::Lxc, ids::lxc(103), "proxmox-backup-server", "running", "proxmox");
        ct.vmid = Some(103);
        ct.node = Some("pumped-piglet".into());
        p.relations.push(Relation::new(&ct.id, RelationKind::RunsOn, ids::proxmox_node("pumped-piglet")));
        p.entities.push(ct);

        let mut k = Part::default();
        for n in ["k3s-vm-still-fawn", "k3s-vm-pumped-piglet-gpu"] {
            k.entities.push(Entity::new(EntityKind::K8sNode, ids::k8s_node(n), n, "Ready", "kubernetes"));
        }
        k.entities.push(Entity::new(EntityKind::Namespace, ids::namespace("web"), "web", "Active", "kubernetes"));
        let wl = ids::workload("web", "deployment", "frontend");
        let mut w = Entity::new(EntityKind::Workload, &wl, "frontend", "available", "kubernetes");
        w.namespace = Some("web".into());
        k.entities.push(w);
        for (pod, node) in [("frontend-a", "k3s-vm-still-fawn"), ("frontend-b", "k3s-vm-pumped-piglet-gpu")] {
            let mut e = Entity::new(EntityKind::Pod, ids::pod("web", pod), pod, "Running", "kubernetes");
            e.namespace = Some("web".into());
            e.node = Some(node.into());
            k.relations.push(Relation::new(&e.id, RelationKind::RunsOn, ids::k8s_node(node)));
            k.relations.push(Relation::new(&wl, RelationKind::Manages, &e.id));
            k.entities.push(e);
        }
        let pinned = ids::workload("web", "statefulset", "db");
        let mut w = Entity::new(EntityKind::Workload, &pinned, "db", "available", "kubernetes");
        w.namespace = Some("web".into());
        k.entities.push(w);
        let mut e = Entity::new(EntityKind::Pod, ids::pod("web", "db-0"), "db-0", "Running", "kubernetes");
        e.namespace = Some("web".into());
        e.node = Some("k3s-vm-still-fawn".into());
        k.relations.push(Relation::new(&e.id, RelationKind::RunsOn, ids::k8s_node("k3s-vm-still-fawn")));
        k.relations.push(Relation::new(&pinned, RelationKind::Manages, &e.id));
        k.entities.push(e);
        let mut svc = Entity::new(EntityKind::Service, ids::service("web", "frontend"), "frontend", "Active", "kubernetes");
        svc.namespace = Some("web".into());
        k.relations.push(Relation::new(&svc.id, RelationKind::RoutesTo, &wl));
        k.entities.push(svc);
        let mut db = Entity::new(EntityKind::Service, ids::service("web", "db"), "db", "Active", "kubernetes");
        db.namespace = Some("web".into());
        k.relations.push(Relation::new(&db.id, RelationKind::RoutesTo, &pinned));
        k.entities.push(db);
        let mut ing = Entity::new(EntityKind::Ingress, ids::ingress("web", "frontend"), "frontend", "Active", "kubernetes");
        ing.namespace = Some("web".into());
        k.relations.push(Relation::new(&ing.id, RelationKind::Exposes, ids::service("web", "frontend")));
        k.relations.push(Relation::new(&ing.id, RelationKind::Exposes, ids::service("web", "gone")));
        k.entities.push(ing);

        let mut h = Part::default();
        h.entities.push(Entity::new(EntityKind::Host, ids::host("nas"), "nas", "declared", "static"));
        Inventory::build([p, k, h])
    }

    #[test]
    fn k8s_nodes_link_to_their_vms_by_name() {
        let inv = lab();
        let chain: Vec<_> = inv.placement("pod/web/db-0").iter().map(|e| e.id.clone()).collect();
        assert_eq!(chain, ["k8s_node/k3s-vm-still-fawn", "vm/108", "proxmox_node/still-fawn"]);
    }

    #[test]
    fn dangling_relations_are_dropped_and_counted() {
        let inv = lab();
        assert_eq!(inv.dropped_relations(), 1);
        assert!(inv.relations().iter().all(|r| inv.get(&r.from).is_some() && inv.get(&r.to).is_some()));
    }

    #[test]
    fn impact_of_a_node_separates_down_from_degraded() {
        let inv = lab();
        let impact = inv.impact_of("proxmox_node/still-fawn");
        let effect = |id: &str| impact.iter().find(|i| i.id == id).map(|i| i.effect);
        assert_eq!(effect("vm/108"), Some(Effect::Down));
        assert_eq!(effect("storage/still-fawn/local-zfs"), Some(Effect::Down));
        assert_eq!(effect("k8s_node/k3s-vm-still-fawn"), Some(Effect::Down));
        assert_eq!(effect("pod/web/frontend-a"), Some(Effect::Down));
        assert_eq!(effect("pod/web/db-0"), Some(Effect::Down));
        // One of two pods gone: the deployment limps on, its service and ingress too.
        assert_eq!(effect("workload/web/deployment/frontend"), Some(Effect::Degraded));
        assert_eq!(effect("service/web/frontend"), Some(Effect::Degraded));
        // The pinned statefulset and its service are gone.
        assert_eq!(effect("workload/web/statefulset/db"), Some(Effect::Down));
        assert_eq!(effect("service/web/db"), Some(Effect::Down));
        // Things on the other node are untouched.
        assert_eq!(effect("vm/105"), None);
        assert_eq!(effect("lxc/103"), None);
        let db = impact.iter().find(|i| i.id == "service/web/db").unwrap();
        assert_eq!(
            db.path,
            [
                "proxmox_node/still-fawn",
                "vm/108",
                "k8s_node/k3s-vm-still-fawn",
                "pod/web/db-0",
                "workload/web/statefulset/db",
                "service/web/db"
            ]
        );
    }

    #[test]
    fn impact_of_unknown_or_leaf_is_empty() {
        let inv = lab();
        assert!(inv.impact_of("vm/999").is_empty());
        assert!(inv.impact_of("host/nas").is_empty());
    }
}
