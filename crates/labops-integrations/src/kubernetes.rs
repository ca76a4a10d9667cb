//! Kubernetes inventory source: a watch-based cache through kube-rs reflectors.
//!
//! One reflector per kind (nodes, namespaces, deployments, statefulsets, daemonsets, pods,
//! services, ingresses) keeps an in-memory store current from list + watch. [`Cache::part`]
//! turns the stores into inventory entities and links at any moment without a request.
//! Each watcher's last error is kept, so the inventory can say the data is degraded while the
//! watcher retries with backoff.
//!
//! Nodes, pods and the three workload kinds are decoded into [`slim`] types that hold only what
//! the inventory reads: the API server's other fields are skipped while decoding.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::networking::v1::Ingress;
use slim::{DaemonSet, Deployment, Node, Pod, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use labops_core::inventory::{ids, Entity, EntityKind, Part, Relation, RelationKind, Tags};
use serde::de::DeserializeOwned;

/// Name of this source.
pub const SOURCE: &str = "kubernetes";

/// How to reach the cluster.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// A kubeconfig file; `None` infers (KUBECONFIG, ~/.kube/config, in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// A context in the kubeconfig; `None` uses its current context.
    pub context: Option<String>,
}

/// What went wrong setting up the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The kubeconfig could not be read or used.
    #[error("kubernetes config: {0}")]
    Config(String),
}

/// Builds a client from the settings.
pub async fn client(s: &Settings) -> Result<(Client, String), Error> {
    crate::install_crypto_provider();
    let config = match &s.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::Config(format!("cannot read kubeconfig {}: {e}", path.display())))?;
            let opts = kube::config::KubeConfigOptions { context: s.context.clone(), ..Default::default() };
            kube::Config::from_custom_kubeconfig(kc, &opts)
                .await
                .map_err(|e| Error::Config(format!("kubeconfig {}: {e}", path.display())))?
        }
        None => kube::Config::infer().await.map_err(|e| Error::Config(e.to_string()))?,
    };
    let endpoint = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|e| Error::Config(e.to_string()))?;
    Ok((client, endpoint))
}

/// Watch health per kind.
#[derive(Debug, Default)]
struct Health {
    /// Kind -> (when, error) of the last failure not followed by a success.
    errors: BTreeMap<&'static str, (std::time::Instant, String)>,
    synced: BTreeMap<&'static str, bool>,
    /// Watch events received, all kinds together: tells whether the stores changed.
    changes: u64,
}

/// The live cache: one reflector store per kind.
#[derive(Clone)]
pub struct Cache {
    nodes: Store<Node>,
    namespaces: Store<Namespace>,
    deployments: Store<Deployment>,
    statefulsets: Store<StatefulSet>,
    daemonsets: Store<DaemonSet>,
    pods: Store<Pod>,
    services: Store<Service>,
    ingresses: Store<Ingress>,
    health: Arc<Mutex<Health>>,
    tasks: Arc<Vec<tokio::task::AbortHandle>>,
    client: Client,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").finish_non_exhaustive()
    }
}

fn watch<K>(
    client: &Client,
    label: &'static str,
    health: &Arc<Mutex<Health>>,
    tasks: &mut Vec<tokio::task::AbortHandle>,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let api: Api<K> = Api::all(client.clone());
    let (reader, writer) = reflector::store();
    // Metadata the inventory never reads is dropped before objects enter the store: on a cluster
    // with thousands of pods, managed fields alone would dominate labops' memory.
    let pruned = watcher(api, watcher::Config::default()).modify(move |o: &mut K| {
        let meta = o.meta_mut();
        meta.managed_fields = None;
        meta.annotations = None;
        meta.owner_references = None;
    });
    let stream = reflector::reflector(writer, pruned).default_backoff();
    let health = health.clone();
    let handle = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            let mut h = health.lock().expect("health lock");
            h.changes += 1;
            match ev {
                Ok(watcher::Event::InitDone) => {
                    h.synced.insert(label, true);
                    h.errors.remove(label);
                }
                Ok(_) => {
                    h.errors.remove(label);
                }
                Err(e) => {
                    tracing::debug!(kind = label, error = %e, "kubernetes watch failed; retrying with backoff");
                    h.errors.insert(label, (std::time::Instant::now(), e.to_string()));
                }
            }
        }
    });
    tasks.push(handle.abort_handle());
    reader
}

impl Cache {
    /// Starts one watcher per kind. Returns at once; the stores fill in the background.
    pub fn start(client: &Client) -> Self {
        let health = Arc::new(Mutex::new(Health::default()));
        let mut tasks = Vec::new();
        let c = client;
        Self {
            nodes: watch(c, "nodes", &health, &mut tasks),
            namespaces: watch(c, "namespaces", &health, &mut tasks),
            deployments: watch(c, "deployments", &health, &mut tasks),
            statefulsets: watch(c, "statefulsets", &health, &mut tasks),
            daemonsets: watch(c, "daemonsets", &health, &mut tasks),
            pods: watch(c, "pods", &health, &mut tasks),
            services: watch(c, "services", &health, &mut tasks),
            ingresses: watch(c, "ingresses", &health, &mut tasks),
            health,
            tasks: Arc::new(tasks),
            client: client.clone(),
        }
    }

    /// After watch errors, asks the API server whether it answers again. A resumed watch is
    /// silent until something changes, so without this a recovered cluster would look failing
    /// until its next change. Clears errors older than the successful probe; returns whether
    /// the API answered.
    pub async fn recheck(&self) -> bool {
        let started = std::time::Instant::now();
        match self.client.apiserver_version().await {
            Ok(_) => {
                self.health.lock().expect("health lock").errors.retain(|_, (at, _)| *at > started);
                true
            }
            Err(_) => false,
        }
    }

    /// Stops the watchers.
    pub fn stop(&self) {
        for t in self.tasks.iter() {
            t.abort();
        }
    }

    /// `Ok` when every kind has listed at least once and no watch is failing; otherwise the
    /// errors (kinds not yet listed and failing watches).
    pub fn health(&self) -> Result<(), String> {
        let h = self.health.lock().expect("health lock");
        let mut problems: Vec<String> = h.errors.iter().map(|(k, (_, e))| format!("{k}: {e}")).collect();
        let unsynced = 8 - h.synced.len();
        if unsynced > 0 && problems.is_empty() {
            problems.push(format!("{unsynced} kinds not listed yet"));
        }
        if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
    }

    /// A counter that moves whenever any watch delivers something.
    pub fn changes(&self) -> u64 {
        self.health.lock().expect("health lock").changes
    }

    /// True once every kind has been listed.
    pub fn synced(&self) -> bool {
        self.health.lock().expect("health lock").synced.len() == 8
    }

    /// The cluster as inventory entities and links, from the stores.
    pub fn part(&self) -> Part {
        to_part(&Objects {
            nodes: self.nodes.state(),
            namespaces: self.namespaces.state(),
            deployments: self.deployments.state(),
            statefulsets: self.statefulsets.state(),
            daemonsets: self.daemonsets.state(),
            pods: self.pods.state(),
            services: self.services.state(),
            ingresses: self.ingresses.state(),
        })
    }
}

/// The Kubernetes kinds labops holds by the thousand, reduced to the fields the inventory maps,
/// under their API names. Decoded from the same JSON as the full types (unknown fields are
/// skipped), and watched like them: each implements [`kube::Resource`] with its kind's group,
/// version and plural. A full `Pod` is 2.2 KB before any of its strings; 5,000 of them were a
/// fifth of `labops serve`'s memory on the big lab of BENCHMARKS.md.
pub mod slim {
    use std::borrow::Cow;
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
    use serde::Deserialize;

    /// Declares a watched kind: `{metadata, spec, status}` with the given spec and status types,
    /// and its `kube::Resource` impl (kind, API group, version, plural, scope).
    macro_rules! kind {
        ($(#[$doc:meta])* $t:ident($spec:ty, $status:ty), $kind:literal, $group:literal, $version:literal, $plural:literal, $scope:ty) => {
            $(#[$doc])*
            #[derive(Debug, Clone, Default, Deserialize)]
            #[allow(missing_docs)]
            pub struct $t {
                #[serde(default)]
                pub metadata: ObjectMeta,
                pub spec: Option<$spec>,
                pub status: Option<$status>,
            }

            impl kube::Resource for $t {
                type DynamicType = ();
                type Scope = $scope;
                fn kind(_: &()) -> Cow<'_, str> {
                    $kind.into()
                }
                fn group(_: &()) -> Cow<'_, str> {
                    $group.into()
                }
                fn version(_: &()) -> Cow<'_, str> {
                    $version.into()
                }
                fn plural(_: &()) -> Cow<'_, str> {
                    $plural.into()
                }
                fn meta(&self) -> &ObjectMeta {
                    &self.metadata
                }
                fn meta_mut(&mut self) -> &mut ObjectMeta {
                    &mut self.metadata
                }
            }
        };
    }
    kind!(/// A node.
        Node(NodeSpec, NodeStatus), "Node", "", "v1", "nodes", ClusterResourceScope);
    kind!(/// A pod.
        Pod(PodSpec, PodStatus), "Pod", "", "v1", "pods", NamespaceResourceScope);
    kind!(/// A Deployment.
        Deployment(WorkloadSpec, ReplicaStatus), "Deployment", "apps", "v1", "deployments", NamespaceResourceScope);
    kind!(/// A StatefulSet.
        StatefulSet(WorkloadSpec, ReplicaStatus), "StatefulSet", "apps", "v1", "statefulsets", NamespaceResourceScope);
    kind!(/// A DaemonSet.
        DaemonSet(WorkloadSpec, DaemonSetStatus), "DaemonSet", "apps", "v1", "daemonsets", NamespaceResourceScope);

    /// `Node.spec`.
    #[derive(Debug, Clone, Default, Deserialize)]
    #[allow(missing_docs)]
    pub struct NodeSpec {
        pub unschedulable: Option<bool>,
    }

    /// `Node.status`.
    #[derive(Debug, Clone, Default, Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(missing_docs)]
    pub struct NodeStatus {
        pub conditions: Option<Vec<Condition>>,
        pub addresses: Option<Vec<NodeAddress>>,
        pub node_info: Option<NodeInfo>,
    }

    /// A status condition.
    #[derive(Debug, Clone, Default, Deserialize)]
    #[allow(missing_docs)]
    pub struct Condition {
        #[serde(rename = "type")]
        pub type_: String,
        pub status: String,
    }

    /// One of a node's addresses.
    #[derive(Debug, Clone, Default, Deserialize)]
    #[allow(missing_docs)]
    pub struct NodeAddress {
        pub address: String,
    }

    /// `Node.status.nodeInfo`.
    #[derive(Debug, Clone, Default, Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(missing_docs)]
    pub struct NodeInfo {
        #[serde(default)]
        pub kubelet_version: String,
    }

    /// `Pod.spec`.
    #[derive(Debug, Clone, Default, Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(missing_docs)]
    pub struct PodSpec {
        pub node_name: Option<String>,
        pub node_selector: Option<BTreeMap<String, String>>,
    }

    /// `Pod.status`.
    #[derive(Debug, Clone, Default, Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(missing_docs)]
    pub struct PodStatus {
        pub phase: Option<String>,
        #[serde(rename = "podIP")]
        pub pod_ip: Option<String>,
        pub container_statuses: Option<Vec<ContainerStatus>>,
    }

    /// One of `Pod.status.containerStatuses`.
    #[derive(Debug, Clone, Default, Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(missing_docs)]
    pub struct ContainerStatus {
        #[serde(default)]
        pub restart_count: i32,
    }

    /// The spec fields the three workload kinds share.
    #[derive(Debug, Clone, Default, Deserialize)]
    #[allow(missing_docs)]
    pub struct WorkloadSpec {
        pub replicas: Option<i32>,
        #[serde(default)]
        pub selector: LabelSelector,
        #[serde(default)]
        pub template: Template,
    }

    /// The pod template, by its labels (services select on them).
    #[derive(Debug, Clone, Default, Deserialize)]
    #[allow(missing_docs)]
    pub struct Template {
        pub metadata: Option<TemplateMeta>,
    }

    /// The pod template's metadata.
    #[derive(Debug, Clone, Default, Deserialize)]
    #[allow(missing_docs)]
    pub struct TemplateMeta {
        pub labels: Option<BTreeMap<String, String>>,
    }

    /// Deployment and StatefulSet status.
    #[derive(Debug, Clone, Default, Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(missing_docs)]
    pub struct ReplicaStatus {
        pub ready_replicas: Option<i32>,
    }

    /// DaemonSet status.
    #[derive(Debug, Clone, Default, Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(missing_docs)]
    pub struct DaemonSetStatus {
        #[serde(default)]
        pub desired_number_scheduled: i32,
        #[serde(default)]
        pub number_ready: i32,
    }
}

/// The objects of one moment.
#[derive(Debug, Default)]
pub struct Objects {
    /// Nodes.
    pub nodes: Vec<Arc<Node>>,
    /// Namespaces.
    pub namespaces: Vec<Arc<Namespace>>,
    /// Deployments.
    pub deployments: Vec<Arc<Deployment>>,
    /// StatefulSets.
    pub statefulsets: Vec<Arc<StatefulSet>>,
    /// DaemonSets.
    pub daemonsets: Vec<Arc<DaemonSet>>,
    /// Pods.
    pub pods: Vec<Arc<Pod>>,
    /// Services.
    pub services: Vec<Arc<Service>>,
    /// Ingresses.
    pub ingresses: Vec<Arc<Ingress>>,
}

/// What the three workload kinds have in common, as the mapping reads it.
struct WorkloadView<'a> {
    kind: &'static str,
    meta: &'a kube::api::ObjectMeta,
    desired: i32,
    ready: i32,
    selector: Option<LabelSelector>,
    template: Option<&'a slim::Template>,
}

/// A workload as the linker needs it.
struct Workload {
    id: String,
    ns: String,
    selector: Option<LabelSelector>,
    template_labels: Tags,
}

/// True when `labels` satisfy the selector (matchLabels and matchExpressions).
pub fn selector_matches(sel: &LabelSelector, labels: &Tags) -> bool {
    let empty = sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && sel.match_expressions.as_ref().is_none_or(|m| m.is_empty());
    if empty {
        return false; // an empty selector selects nothing for a workload's purposes
    }
    let labels_ok = sel.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = sel.match_expressions.iter().flatten().all(|e| {
        let vals = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| vals.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !vals.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

fn map_selects(sel: &BTreeMap<String, String>, labels: &Tags) -> bool {
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Turns the objects into entities and links.
pub fn to_part(o: &Objects) -> Part {
    let mut part = Part::default();
    for n in &o.nodes {
        let name = n.name_any();
        let status = n.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status == "True");
        let mut e = Entity::new(
            EntityKind::K8sNode,
            ids::k8s_node(&name),
            &name,
            match ready {
                Some(true) => "Ready",
                Some(false) => "NotReady",
                None => "Unknown",
            },
            SOURCE,
        );
        e.labels = n.labels().clone().into();
        for a in status.and_then(|s| s.addresses.as_ref()).into_iter().flatten() {
            e.addresses.push(a.address.clone());
        }
        if n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
            e.attributes.insert("cordoned".into(), "true".into());
        }
        if let Some(info) = status.and_then(|s| s.node_info.as_ref()) {
            e.attributes.insert("kubelet".into(), info.kubelet_version.clone());
        }
        part.entities.push(e);
    }
    for ns in &o.namespaces {
        let name = ns.name_any();
        let phase = ns.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_else(|| "Active".into());
        let mut e = Entity::new(EntityKind::Namespace, ids::namespace(&name), &name, phase, SOURCE);
        e.labels = ns.labels().clone().into();
        part.entities.push(e);
    }

    let mut workloads: Vec<Workload> = Vec::new();
    let mut add_workload = |kind: &str,
                            meta: &kube::api::ObjectMeta,
                            desired: i32,
                            ready: i32,
                            selector: Option<LabelSelector>,
                            template_labels: BTreeMap<String, String>,
                            part: &mut Part| {
        let ns = meta.namespace.clone().unwrap_or_default();
        let name = meta.name.clone().unwrap_or_default();
        let id = ids::workload(&ns, kind, &name);
        let status = if desired == 0 {
            "scaled_to_zero"
        } else if ready >= desired {
            "available"
        } else if ready == 0 {
            "unavailable"
        } else {
            "degraded"
        };
        let mut e = Entity::new(EntityKind::Workload, &id, &name, status, SOURCE);
        e.namespace = Some(ns.clone());
        e.labels = meta.labels.clone().unwrap_or_default().into();
        e.attributes.insert("workload_kind".into(), kind.into());
        e.attributes.insert("replicas".into(), desired.to_string());
        e.attributes.insert("ready".into(), ready.to_string());
        part.entities.push(e);
        workloads.push(Workload { id, ns, selector, template_labels: template_labels.into() });
    };
    let deployments = o.deployments.iter().map(|d| {
        let (spec, st) = (d.spec.as_ref(), d.status.as_ref());
        WorkloadView {
            kind: "Deployment",
            meta: &d.metadata,
            desired: spec.and_then(|s| s.replicas).unwrap_or(1),
            ready: st.and_then(|s| s.ready_replicas).unwrap_or(0),
            selector: spec.map(|s| s.selector.clone()),
            template: spec.map(|s| &s.template),
        }
    });
    let statefulsets = o.statefulsets.iter().map(|d| {
        let (spec, st) = (d.spec.as_ref(), d.status.as_ref());
        WorkloadView {
            kind: "StatefulSet",
            meta: &d.metadata,
            desired: spec.and_then(|s| s.replicas).unwrap_or(1),
            ready: st.and_then(|s| s.ready_replicas).unwrap_or(0),
            selector: spec.map(|s| s.selector.clone()),
            template: spec.map(|s| &s.template),
        }
    });
    let daemonsets = o.daemonsets.iter().map(|d| {
        let (spec, st) = (d.spec.as_ref(), d.status.as_ref());
        WorkloadView {
            kind: "DaemonSet",
            meta: &d.metadata,
            desired: st.map(|s| s.desired_number_scheduled).unwrap_or(0),
            ready: st.map(|s| s.number_ready).unwrap_or(0),
            selector: spec.map(|s| s.selector.clone()),
            template: spec.map(|s| &s.template),
        }
    });
    for w in deployments.chain(statefulsets).chain(daemonsets) {
        let labels = w.template.and_then(|t| t.metadata.as_ref()?.labels.clone()).unwrap_or_default();
        add_workload(w.kind, w.meta, w.desired, w.ready, w.selector, labels, &mut part);
    }

    for p in &o.pods {
        let ns = p.namespace().unwrap_or_default();
        let name = p.name_any();
        let id = ids::pod(&ns, &name);
        let st = p.status.as_ref();
        let phase = st.and_then(|s| s.phase.clone()).unwrap_or_else(|| "Unknown".into());
        let mut e = Entity::new(EntityKind::Pod, &id, &name, phase, SOURCE);
        e.namespace = Some(ns.clone());
        e.labels = p.labels().clone().into();
        if let Some(ip) = st.and_then(|s| s.pod_ip.clone()) {
            e.addresses.push(ip);
        }
        let spec = p.spec.as_ref();
        if let Some(node) = spec.and_then(|s| s.node_name.clone()) {
            part.relations.push(Relation::new(&id, RelationKind::RunsOn, ids::k8s_node(&node)));
            e.node = Some(node);
        }
        if let Some(sel) = spec.and_then(|s| s.node_selector.as_ref())
            && let Some(host) = sel.get("kubernetes.io/hostname") {
                e.attributes.insert("pinned_to".into(), host.clone());
            }
        let restarts: i32 = st
            .and_then(|s| s.container_statuses.as_ref())
            .map(|cs| cs.iter().map(|c| c.restart_count).sum())
            .unwrap_or(0);
        e.attributes.insert("restarts".into(), restarts.to_string());
        for w in workloads.iter().filter(|w| w.ns == ns) {
            if w.selector.as_ref().is_some_and(|s| selector_matches(s, &e.labels)) {
                part.relations.push(Relation::new(&w.id, RelationKind::Manages, &id));
            }
        }
        part.entities.push(e);
    }

    for s in &o.services {
        let ns = s.namespace().unwrap_or_default();
        let name = s.name_any();
        let id = ids::service(&ns, &name);
        let spec = s.spec.as_ref();
        let mut e = Entity::new(EntityKind::Service, &id, &name, "Active", SOURCE);
        e.namespace = Some(ns.clone());
        e.labels = s.labels().clone().into();
        if let Some(t) = spec.and_then(|s| s.type_.clone()) {
            e.attributes.insert("type".into(), t);
        }
        e.addresses.extend(spec.and_then(|s| s.cluster_ip.clone()).filter(|ip| ip != "None"));
        for ing in s.status.as_ref().and_then(|st| st.load_balancer.as_ref()?.ingress.as_ref()).into_iter().flatten() {
            e.addresses.extend(ing.ip.clone());
        }
        if let Some(sel) = spec.and_then(|s| s.selector.as_ref()) {
            for w in workloads.iter().filter(|w| w.ns == ns) {
                if map_selects(sel, &w.template_labels) {
                    part.relations.push(Relation::new(&id, RelationKind::RoutesTo, &w.id));
                }
            }
        }
        part.entities.push(e);
    }

    for i in &o.ingresses {
        let ns = i.namespace().unwrap_or_default();
        let name = i.name_any();
        let id = ids::ingress(&ns, &name);
        let mut e = Entity::new(EntityKind::Ingress, &id, &name, "Active", SOURCE);
        e.namespace = Some(ns.clone());
        let spec = i.spec.as_ref();
        let mut backends: Vec<String> = Vec::new();
        if let Some(b) = spec.and_then(|s| s.default_backend.as_ref()?.service.as_ref()) {
            backends.push(b.name.clone());
        }
        let mut hosts = Vec::new();
        for rule in spec.and_then(|s| s.rules.as_ref()).into_iter().flatten() {
            hosts.extend(rule.host.clone());
            for path in rule.http.iter().flat_map(|h| h.paths.iter()) {
                if let Some(svc) = &path.backend.service {
                    backends.push(svc.name.clone());
                }
            }
        }
        if !hosts.is_empty() {
            e.attributes.insert("hosts".into(), hosts.join(","));
        }
        backends.sort();
        backends.dedup();
        for b in backends {
            part.relations.push(Relation::new(&id, RelationKind::Exposes, ids::service(&ns, &b)));
        }
        part.entities.push(e);
    }
    part
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn selectors_follow_kubernetes_semantics() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![
                LabelSelectorRequirement { key: "tier".into(), operator: "In".into(), values: Some(vec!["a".into(), "b".into()]) },
                LabelSelectorRequirement { key: "canary".into(), operator: "DoesNotExist".into(), values: None },
            ]),
        };
        assert!(selector_matches(&sel, &labels(&[("app", "web"), ("tier", "b")]).into()));
        assert!(!selector_matches(&sel, &labels(&[("app", "web"), ("tier", "c")]).into()));
        assert!(!selector_matches(&sel, &labels(&[("app", "web"), ("tier", "a"), ("canary", "1")]).into()));
        assert!(!selector_matches(&LabelSelector::default(), &labels(&[("app", "web")]).into()));
    }

    /// The slim types read the API's own field names: objects built with k8s-openapi's full
    /// types (generated from the API's OpenAPI document) and encoded as the API server would,
    /// every field set, decode into them with every value the inventory maps.
    #[test]
    fn slim_types_decode_what_the_api_server_sends() {
        use k8s_openapi::api::apps::v1 as apps;
        use k8s_openapi::api::core::v1 as core;
        let full_node: core::Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "k3s-vm-pve", "labels": {"kubernetes.io/hostname": "k3s-vm-pve"},
                         "annotations": {"big": "x"}, "uid": "u1", "resourceVersion": "7"},
            "spec": {"unschedulable": true, "podCIDR": "10.42.0.0/24", "taints": [{"key": "k", "effect": "NoSchedule"}]},
            "status": {"conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}],
                       "addresses": [{"type": "InternalIP", "address": "192.168.4.21"}, {"type": "Hostname", "address": "k3s-vm-pve"}],
                       "nodeInfo": {"kubeletVersion": "v1.33.1+k3s1", "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "",
                                    "kernelVersion": "", "kubeProxyVersion": "", "machineID": "", "operatingSystem": "linux",
                                    "osImage": "", "systemUUID": ""},
                       "images": [{"names": ["x"], "sizeBytes": 1}], "capacity": {"cpu": "4"}}
        }))
        .unwrap();
        let full_pod: core::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "apps", "labels": {"app": "web"}, "uid": "u2"},
            "spec": {"nodeName": "k3s-vm-pve", "nodeSelector": {"kubernetes.io/hostname": "k3s-vm-pve"},
                     "containers": [{"name": "c", "image": "nginx", "env": [{"name": "A", "value": "1"}]}],
                     "volumes": [{"name": "v", "emptyDir": {}}]},
            "status": {"phase": "Running", "podIP": "10.42.0.7", "podIPs": [{"ip": "10.42.0.7"}], "hostIP": "192.168.4.21",
                       "containerStatuses": [
                           {"name": "c", "image": "nginx", "imageID": "i", "ready": true, "restartCount": 2},
                           {"name": "d", "image": "nginx", "imageID": "i", "ready": true, "restartCount": 3}]}
        }))
        .unwrap();
        let full_ds: apps::DaemonSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "svclb", "namespace": "kube-system"},
            "spec": {"selector": {"matchLabels": {"app": "svclb"}},
                     "template": {"metadata": {"labels": {"app": "svclb"}}, "spec": {"containers": [{"name": "lb"}]}}},
            "status": {"desiredNumberScheduled": 5, "numberReady": 4, "currentNumberScheduled": 5, "numberMisscheduled": 0}
        }))
        .unwrap();
        // Encoded by k8s-openapi, as an API server sends them.
        fn wire<T: serde::Serialize>(full: &T) -> serde_json::Value {
            serde_json::to_value(full).unwrap()
        }
        let o = Objects {
            nodes: vec![Arc::new(serde_json::from_value(wire(&full_node)).unwrap())],
            pods: vec![Arc::new(serde_json::from_value(wire(&full_pod)).unwrap())],
            daemonsets: vec![Arc::new(serde_json::from_value(wire(&full_ds)).unwrap())],
            ..Default::default()
        };
        let part = to_part(&o);
        let get = |id: &str| part.entities.iter().find(|e| e.id == id).unwrap_or_else(|| panic!("{id} missing"));
        let node = get("k8s_node/k3s-vm-pve");
        assert_eq!(node.status, "Ready");
        assert_eq!(node.addresses, ["192.168.4.21", "k3s-vm-pve"]);
        assert_eq!(node.attributes.get("cordoned").map(String::as_str), Some("true"));
        assert_eq!(node.attributes.get("kubelet").map(String::as_str), Some("v1.33.1+k3s1"));
        assert_eq!(node.labels.get("kubernetes.io/hostname").map(String::as_str), Some("k3s-vm-pve"));
        let pod = get("pod/apps/web-1");
        assert_eq!((pod.status.as_str(), pod.node.as_deref()), ("Running", Some("k3s-vm-pve")));
        assert_eq!(pod.addresses, ["10.42.0.7"]);
        assert_eq!(pod.attributes.get("restarts").map(String::as_str), Some("5"));
        assert_eq!(pod.attributes.get("pinned_to").map(String::as_str), Some("k3s-vm-pve"));
        let ds = get("workload/kube-system/daemonset/svclb");
        assert_eq!(ds.status, "degraded");
        assert_eq!((ds.attributes.get("replicas").map(String::as_str), ds.attributes.get("ready").map(String::as_str)), (Some("5"), Some("4")));
    }

    #[test]
    fn pods_services_and_ingresses_link_to_workloads_and_nodes() {
        let o: Objects = serde_json::from_value::<FixtureObjects>(serde_json::json!({
            "deployments": [{"metadata": {"name": "web", "namespace": "apps"},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                         "template": {"metadata": {"labels": {"app": "web"}}}},
                "status": {"readyReplicas": 1}}],
            "pods": [{"metadata": {"name": "web-1", "namespace": "apps", "labels": {"app": "web"}},
                      "spec": {"nodeName": "k3s-vm-pve", "containers": []}, "status": {"phase": "Running"}},
                     {"metadata": {"name": "other", "namespace": "kube-system", "labels": {"app": "web"}},
                      "spec": {"containers": []}}],
            "services": [{"metadata": {"name": "web", "namespace": "apps"}, "spec": {"selector": {"app": "web"}}}],
            "ingresses": [{"metadata": {"name": "web", "namespace": "apps"},
                "spec": {"rules": [{"host": "web.homelab", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}]
        }))
        .unwrap()
        .into();
        let part = to_part(&o);
        let rel = |k: RelationKind| -> Vec<(String, String)> {
            part.relations.iter().filter(|r| r.kind == k).map(|r| (r.from.clone(), r.to.clone())).collect()
        };
        assert_eq!(rel(RelationKind::Manages), [("workload/apps/deployment/web".into(), "pod/apps/web-1".into())]);
        assert_eq!(rel(RelationKind::RunsOn), [("pod/apps/web-1".into(), "k8s_node/k3s-vm-pve".into())]);
        assert_eq!(rel(RelationKind::RoutesTo), [("service/apps/web".into(), "workload/apps/deployment/web".into())]);
        assert_eq!(rel(RelationKind::Exposes), [("ingress/apps/web".into(), "service/apps/web".into())]);
        let w = part.entities.iter().find(|e| e.kind == EntityKind::Workload).unwrap();
        assert_eq!(w.status, "degraded");
    }

    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct FixtureObjects {
        deployments: Vec<Deployment>,
        pods: Vec<Pod>,
        services: Vec<Service>,
        ingresses: Vec<Ingress>,
    }

    impl From<FixtureObjects> for Objects {
        fn from(f: FixtureObjects) -> Self {
            Objects {
                deployments: f.deployments.into_iter().map(Arc::new).collect(),
                pods: f.pods.into_iter().map(Arc::new).collect(),
                services: f.services.into_iter().map(Arc::new).collect(),
                ingresses: f.ingresses.into_iter().map(Arc::new).collect(),
                ..Default::default()
            }
        }
    }
}
