//! The resource types the fake API server serves, and the discovery documents built from them.
//!
//! Each [`ResourceType`] names one REST resource (group, version, plural, kind, scope) the
//! way an `APIResourceList` does. The default set covers what labops reads and writes; tests
//! can register more (custom resources) at run time with [`crate::FakeKube::register`].

use serde_json::{json, Value};

/// One REST resource served by the fake, e.g. `apps/v1` `deployments`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: String,
    /// API version within the group, e.g. `v1`.
    pub version: String,
    /// Kind of the objects, e.g. `Deployment`.
    pub kind: String,
    /// Plural resource name used in URLs, e.g. `deployments`.
    pub plural: String,
    /// Singular resource name, e.g. `deployment`.
    pub singular: String,
    /// True for namespaced resources, false for cluster-scoped ones.
    pub namespaced: bool,
    /// Short names advertised in discovery, e.g. `deploy`.
    pub short_names: Vec<String>,
    /// True when the resource has a `/status` subresource: writes to the main resource then
    /// keep the stored status, and writes to `/status` change only the status.
    pub has_status: bool,
    /// True when the resource has a `/scale` subresource (`autoscaling/v1` `Scale`).
    pub has_scale: bool,
    /// Field paths accepted in a `fieldSelector` besides `metadata.name` and
    /// `metadata.namespace` (the real API server rejects other fields with 400).
    pub field_selectors: Vec<String>,
}

impl ResourceType {
    /// A resource with no subresources, short names or extra field selectors.
    ///
    /// `api_version` is `group/version` or just `version` for the core group; the singular
    /// name is the lowercased kind.
    pub fn new(api_version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        let (group, version) = split_api_version(api_version);
        Self {
            group: group.to_string(),
            version: version.to_string(),
            kind: kind.to_string(),
            plural: plural.to_string(),
            singular: kind.to_lowercase(),
            namespaced,
            short_names: Vec::new(),
            has_status: false,
            has_scale: false,
            field_selectors: Vec::new(),
        }
    }

    /// Adds a `/status` subresource.
    #[must_use]
    pub fn with_status(mut self) -> Self {
        self.has_status = true;
        self
    }

    /// Adds a `/scale` subresource (reads and writes `spec.replicas`).
    #[must_use]
    pub fn with_scale(mut self) -> Self {
        self.has_scale = true;
        self
    }

    /// Sets the short names advertised in discovery.
    #[must_use]
    pub fn with_short_names(mut self, names: &[&str]) -> Self {
        self.short_names = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Adds field paths that `fieldSelector` accepts for this resource.
    #[must_use]
    pub fn with_field_selectors(mut self, fields: &[&str]) -> Self {
        self.field_selectors.extend(fields.iter().map(|s| s.to_string()));
        self
    }

    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// The resource as Kubernetes names it in error messages: `pods` or `deployments.apps`.
    pub(crate) fn qualified(&self) -> String {
        if self.group.is_empty() { self.plural.clone() } else { format!("{}.{}", self.plural, self.group) }
    }

    /// Whether the real API server accepts `field` in a field selector for this resource.
    pub(crate) fn selectable(&self, field: &str) -> bool {
        matches!(field, "metadata.name" | "metadata.namespace") || self.field_selectors.iter().any(|f| f == field)
    }
}

/// Splits `apps/v1` into (`apps`, `v1`) and `v1` into (``, `v1`).
pub(crate) fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

/// The resources served by default.
pub fn default_resources() -> Vec<ResourceType> {
    let pod_fields = [
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ];
    vec![
        ResourceType::new("v1", "Namespace", "namespaces", false)
            .with_status()
            .with_short_names(&["ns"])
            .with_field_selectors(&["status.phase"]),
        ResourceType::new("v1", "Node", "nodes", false)
            .with_status()
            .with_short_names(&["no"])
            .with_field_selectors(&["spec.unschedulable"]),
        ResourceType::new("v1", "Pod", "pods", true)
            .with_status()
            .with_short_names(&["po"])
            .with_field_selectors(&pod_fields),
        ResourceType::new("v1", "Service", "services", true).with_status().with_short_names(&["svc"]),
        ResourceType::new("v1", "Endpoints", "endpoints", true).with_short_names(&["ep"]),
        ResourceType::new("v1", "ConfigMap", "configmaps", true).with_short_names(&["cm"]),
        ResourceType::new("v1", "Secret", "secrets", true).with_field_selectors(&["type"]),
        ResourceType::new("v1", "ServiceAccount", "serviceaccounts", true).with_short_names(&["sa"]),
        ResourceType::new("v1", "PersistentVolume", "persistentvolumes", false)
            .with_status()
            .with_short_names(&["pv"]),
        ResourceType::new("v1", "PersistentVolumeClaim", "persistentvolumeclaims", true)
            .with_status()
            .with_short_names(&["pvc"]),
        ResourceType::new("v1", "Event", "events", true).with_short_names(&["ev"]).with_field_selectors(&[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "reason",
            "type",
        ]),
        ResourceType::new("apps/v1", "Deployment", "deployments", true)
            .with_status()
            .with_scale()
            .with_short_names(&["deploy"]),
        ResourceType::new("apps/v1", "StatefulSet", "statefulsets", true)
            .with_status()
            .with_scale()
            .with_short_names(&["sts"]),
        ResourceType::new("apps/v1", "DaemonSet", "daemonsets", true).with_status().with_short_names(&["ds"]),
        ResourceType::new("apps/v1", "ReplicaSet", "replicasets", true)
            .with_status()
            .with_scale()
            .with_short_names(&["rs"])
            .with_field_selectors(&["status.replicas"]),
        ResourceType::new("batch/v1", "Job", "jobs", true).with_status().with_field_selectors(&["status.successful"]),
        ResourceType::new("batch/v1", "CronJob", "cronjobs", true).with_status().with_short_names(&["cj"]),
        ResourceType::new("networking.k8s.io/v1", "Ingress", "ingresses", true)
            .with_status()
            .with_short_names(&["ing"]),
        ResourceType::new("networking.k8s.io/v1", "IngressClass", "ingressclasses", false),
        ResourceType::new("coordination.k8s.io/v1", "Lease", "leases", true),
        ResourceType::new("discovery.k8s.io/v1", "EndpointSlice", "endpointslices", true),
        ResourceType::new("storage.k8s.io/v1", "StorageClass", "storageclasses", false).with_short_names(&["sc"]),
    ]
}

const VERBS: [&str; 8] = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];
const SUB_VERBS: [&str; 3] = ["get", "patch", "update"];

/// `GET /version`.
pub(crate) fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "emulationMajor": "1",
        "emulationMinor": "33",
        "minEmulationMajor": "1",
        "minEmulationMinor": "32",
        "gitVersion": "v1.33.0-labops-fake",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64"
    })
}

/// `GET /api`: the core group's versions.
pub(crate) fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]
    })
}

/// The (group, versions) pairs of the named groups, in first-seen order.
fn named_groups(resources: &[ResourceType]) -> Vec<(String, Vec<String>)> {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for r in resources.iter().filter(|r| !r.group.is_empty()) {
        match groups.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, versions)) => {
                if !versions.contains(&r.version) {
                    versions.push(r.version.clone());
                }
            }
            None => groups.push((r.group.clone(), vec![r.version.clone()])),
        }
    }
    groups
}

fn group_json(group: &str, versions: &[String]) -> Value {
    let gv = |v: &String| json!({"groupVersion": format!("{group}/{v}"), "version": v});
    json!({
        "name": group,
        "versions": versions.iter().map(gv).collect::<Vec<_>>(),
        "preferredVersion": gv(&versions[0]),
    })
}

/// `GET /apis`: every named group.
pub(crate) fn group_list(resources: &[ResourceType]) -> Value {
    let groups: Vec<Value> = named_groups(resources).iter().map(|(g, v)| group_json(g, v)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/{group}`, or `None` when no resource is in that group.
pub(crate) fn group(resources: &[ResourceType], name: &str) -> Option<Value> {
    let groups = named_groups(resources);
    let (g, v) = groups.iter().find(|(g, _)| g == name)?;
    let mut doc = group_json(g, v);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

/// `GET /api/v1` or `GET /apis/{group}/{version}`, or `None` when nothing is served there.
pub(crate) fn resource_list(resources: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let mut list = Vec::new();
    for r in resources.iter().filter(|r| r.group == group && r.version == version) {
        list.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
            "shortNames": r.short_names,
        }));
        if r.has_status {
            list.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": SUB_VERBS,
            }));
        }
        if r.has_scale {
            list.push(json!({
                "name": format!("{}/scale", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": SUB_VERBS,
            }));
        }
    }
    if list.is_empty() {
        return None;
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}))
}

/// The media type of aggregated discovery answers.
pub(crate) const AGGREGATED_CONTENT_TYPE: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

fn aggregated_group(resources: &[ResourceType], group: &str, versions: &[String]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| {
            let res: Vec<Value> = resources
                .iter()
                .filter(|r| r.group == group && &r.version == v)
                .map(|r| {
                    let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
                    let mut subs = Vec::new();
                    if r.has_status {
                        subs.push(json!({"subresource": "status", "responseKind": gvk, "verbs": SUB_VERBS}));
                    }
                    if r.has_scale {
                        subs.push(json!({
                            "subresource": "scale",
                            "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"},
                            "verbs": SUB_VERBS,
                        }));
                    }
                    json!({
                        "resource": r.plural,
                        "responseKind": gvk,
                        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": r.singular,
                        "verbs": VERBS,
                        "shortNames": r.short_names,
                        "subresources": subs,
                    })
                })
                .collect();
            json!({"version": v, "resources": res, "freshness": "Current"})
        })
        .collect();
    let metadata = if group.is_empty() { json!({"creationTimestamp": null}) } else { json!({"name": group, "creationTimestamp": null}) };
    json!({"metadata": metadata, "versions": versions})
}

/// Aggregated discovery (`apidiscovery.k8s.io/v2`) for `/api` (core) or `/apis` (named groups).
pub(crate) fn aggregated(resources: &[ResourceType], core: bool) -> Value {
    let items: Vec<Value> = if core {
        vec![aggregated_group(resources, "", &["v1".to_string()])]
    } else {
        named_groups(resources).iter().map(|(g, v)| aggregated_group(resources, g, v)).collect()
    };
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}
