//! Export to kro: a workflow made only of Kubernetes resources, written as a kro
//! `ResourceGraphDefinition` that kro itself can run in the cluster.
//!
//! What is exported, step by step:
//!
//! - kro resources (`kubernetes-resource`, `kubernetes-external-ref`) keep their `id`,
//!   `template` or `externalRef`, `readyWhen`, `includeWhen` and `forEach` as written;
//! - owner's-form `kubernetes-deployment` steps, and `kubernetes-task` steps with `manifests`
//!   and no `actions`, become one kro resource per manifest object. The resource id is the
//!   step name in lowerCamelCase (kro ids are CEL identifiers: `k3s-deployment` becomes
//!   `k3sDeployment`), followed by the object's kind when the step has several objects
//!   (`webDeployment`, `webService`). `{{.name}}` placeholders become `${schema.spec.name}`;
//!   the step's `namespace` goes into objects that have none (unless their kind is a well-known
//!   cluster-scoped one); Deployments, StatefulSets and DaemonSets get a `readyWhen` that holds
//!   once their rollout is complete, unless the step says `wait_for_rollout: false`.
//!
//! Any other step type is refused with an [`ExportError`] naming the steps and their types, as
//! are steps that wait for a human, `kubernetes-task` actions, and manifests that are not
//! objects.
//!
//! **Dependencies.** kro orders resources only by the CEL references between them. An owner's
//! dependency has no such reference, so the export adds one: the annotation
//! [`AFTER_ANNOTATION`] (`labops.dev/after`) on each object of the dependent step, whose value
//! names every object it waits for, `${otherId.metadata.name}` each, separated by spaces. kro
//! then creates the object only once those exist (and are ready, when they have a
//! `readyWhen`), and the annotation records the intent for humans.
//!
//! **What is not carried over.** The workflow model keeps the parameters of `spec.schema`, not
//! its `status` block or `group`: an exported RGD has `spec.schema` with `apiVersion: v1alpha1`,
//! the kind from the workflow's name in CamelCase (`gitops-app` becomes `GitopsApp`) and the
//! parameters, each as a SimpleSchema string (`string | default="web"`). Parameters without a
//! default stay without one. The plan's parameter values are not baked in: the RGD stays
//! parameterised. Key order within objects is alphabetical (the model holds JSON values).
//!
//! [`manifest_objects`] is how both this export and the engine's Kubernetes executors read a
//! `manifests` field, so the two agree on what a step applies.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::{Map, Value};

use super::{Plan, Step, Workflow, expr};

/// The annotation that turns an owner's-form dependency into a CEL reference kro can order by.
pub const AFTER_ANNOTATION: &str = "labops.dev/after";

/// Why a workflow could not be exported to kro.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// Steps whose types are not Kubernetes resources (step name, step type), in plan order.
    #[error(
        "export-kro needs a graph of Kubernetes resources only; {}; remove them or run the workflow with labops",
        .0.iter().map(|(s, t)| format!("step {s} is a {t}")).collect::<Vec<_>>().join(", ")
    )]
    NotKubernetes(Vec<(String, String)>),
    /// A Kubernetes step that kro cannot express as written.
    #[error("export-kro cannot express step {step}: {reason}")]
    Unsupported {
        /// The step's name.
        step: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// Two resources would get the same kro id.
    #[error("steps {first} and {second} would both become kro resource id `{id}`; rename one of them")]
    IdClash {
        /// The id.
        id: String,
        /// The step that got it first.
        first: String,
        /// The step that wanted it too.
        second: String,
    },
    /// The plan is not the workflow's.
    #[error("the plan is for workflow `{plan}`, not `{workflow}`; plan the workflow you export")]
    PlanMismatch {
        /// The workflow's name.
        workflow: String,
        /// The name the plan carries.
        plan: String,
    },
    /// Writing the YAML failed.
    #[error("could not write the ResourceGraphDefinition as YAML: {0}")]
    Yaml(String),
}

/// Writes `w` as a kro `ResourceGraphDefinition` (YAML text). `plan` is the plan of `w`: it
/// proves the workflow valid and gives the order of the resources (stage by stage); its
/// parameter values are not used. See the [module docs](self) for what is exported and how.
pub fn export(w: &Workflow, plan: &Plan) -> Result<String, ExportError> {
    if plan.workflow != w.name {
        return Err(ExportError::PlanMismatch { workflow: w.name.clone(), plan: plan.workflow.clone() });
    }
    let by_name: HashMap<&str, &Step> = w.steps.iter().map(|s| (s.name.as_str(), s)).collect();
    let ordered: Vec<&Step> =
        plan.stages.iter().flat_map(|st| &st.steps).filter_map(|p| by_name.get(p.name.as_str()).copied()).collect();

    let refused: Vec<(String, String)> =
        ordered.iter().filter(|s| !exportable_type(s)).map(|s| (s.name.clone(), s.step_type.clone())).collect();
    if !refused.is_empty() {
        return Err(ExportError::NotKubernetes(refused));
    }

    // Every step's objects and their ids first, so that dependencies can name them.
    let mut ids: HashMap<String, String> = HashMap::new(); // id -> step that owns it
    let mut units: Vec<(&Step, Vec<(String, Value)>)> = Vec::new();
    for s in &ordered {
        let objects = step_objects(s)?;
        let base = resource_id(s);
        let mut named = Vec::new();
        for (id, obj) in object_ids(&base, objects) {
            if let Some(first) = ids.get(&id) {
                return Err(ExportError::IdClash { id, first: first.clone(), second: s.name.clone() });
            }
            ids.insert(id.clone(), s.name.clone());
            named.push((id, obj));
        }
        units.push((s, named));
    }
    let ids_of: HashMap<&str, Vec<String>> =
        units.iter().map(|(s, objs)| (s.name.as_str(), objs.iter().map(|(id, _)| id.clone()).collect())).collect();

    let mut resources = Vec::new();
    for (s, objects) in &units {
        let after: Vec<String> = s
            .dependencies
            .iter()
            .flat_map(|d| ids_of.get(d.name.as_str()).cloned().unwrap_or_default())
            .map(|id| format!("${{{id}.metadata.name}}"))
            .collect();
        for (id, obj) in objects {
            let mut r = Resource { id: id.clone(), ..Resource::default() };
            if is_kro(s) {
                r.template = s.fields.get("template").cloned();
                r.external_ref = s.fields.get("externalRef").cloned();
                r.ready_when = s.ready_when.clone();
                r.include_when = s.include_when.clone();
                r.for_each = s.for_each.iter().map(|(k, v)| BTreeMap::from([(k.clone(), v.clone())])).collect();
            } else {
                let mut template = placeholders_to_cel(obj, w);
                if let Some(ns) = s.fields.get("namespace").and_then(Value::as_str) {
                    default_namespace(&mut template, &placeholders_to_cel(&Value::from(ns), w));
                }
                if wait_for_rollout(s) {
                    r.ready_when = rollout_ready_when(id, &template);
                }
                r.template = Some(template);
            }
            if !after.is_empty() {
                let unsupported = |reason: String| ExportError::Unsupported { step: s.name.clone(), reason };
                let Some(t) = r.template.as_mut() else {
                    return Err(unsupported("an external reference cannot wait for other resources; drop its dependencies".into()));
                };
                annotate(t, AFTER_ANNOTATION, &after.join(" ")).map_err(unsupported)?;
            }
            resources.push(r);
        }
    }

    let rgd = Rgd {
        api_version: "kro.run/v1alpha1",
        kind: "ResourceGraphDefinition",
        metadata: Metadata { name: w.name.clone() },
        spec: RgdSpec {
            schema: Schema { api_version: "v1alpha1", kind: camel_kind(&w.name), spec: schema_spec(w) },
            resources,
        },
    };
    // Long CEL expressions stay on one line (no folded `>` scalars); multi-line text stays `|`.
    let mut options = serde_saphyr::SerializerOptions::default();
    options.folded_wrap_chars = usize::MAX;
    serde_saphyr::to_string_with_options(&rgd, options).map_err(|e| ExportError::Yaml(e.to_string()))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Rgd {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata,
    spec: RgdSpec,
}

#[derive(Serialize)]
struct Metadata {
    name: String,
}

#[derive(Serialize)]
struct RgdSpec {
    schema: Schema,
    resources: Vec<Resource>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Schema {
    api_version: &'static str,
    kind: String,
    spec: Map<String, Value>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct Resource {
    id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    include_when: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    for_each: Vec<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    template: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    external_ref: Option<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ready_when: Vec<String>,
}

fn is_kro(s: &Step) -> bool {
    matches!(s.step_type.as_str(), "kubernetes-resource" | "kubernetes-external-ref")
}

fn exportable_type(s: &Step) -> bool {
    is_kro(s) || matches!(s.step_type.as_str(), "kubernetes-deployment" | "kubernetes-task")
}

/// The objects one step contributes: its own template or external reference (kro), or its
/// manifests (owner's form). Placeholders are still `{{.x}}` here.
fn step_objects(s: &Step) -> Result<Vec<Value>, ExportError> {
    let unsupported = |reason: String| ExportError::Unsupported { step: s.name.clone(), reason };
    if is_kro(s) {
        return Ok(vec![Value::Null]); // the template stays as written
    }
    if s.wait_for_human {
        return Err(unsupported("it waits for a human (`waitForHuman: true`), which kro cannot do; remove it or run the workflow with labops".into()));
    }
    if let Some(actions) = s.fields.get("actions") {
        return Err(unsupported(format!(
            "kubernetes-task actions ({}) are labops operations, not Kubernetes objects; run the workflow with labops",
            actions.as_array().map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default()
        )));
    }
    let Some(manifests) = s.fields.get("manifests") else {
        return Err(unsupported("it has no `manifests`; list the objects it applies".into()));
    };
    let objects = manifest_objects(manifests).map_err(unsupported)?;
    if objects.is_empty() {
        return Err(unsupported("its `manifests` hold no object; list the objects it applies".into()));
    }
    Ok(objects)
}

/// Ids for a step's objects: the base id alone for one object; base + Kind for several, with
/// a number added when two objects share a kind.
fn object_ids(base: &str, objects: Vec<Value>) -> Vec<(String, Value)> {
    if objects.len() == 1 {
        return objects.into_iter().map(|o| (base.to_string(), o)).collect();
    }
    let kind_of = |o: &Value| upper_first(&camel_parts(o.get("kind").and_then(Value::as_str).unwrap_or("Object"), true));
    let mut per_kind: HashMap<String, usize> = HashMap::new();
    for o in &objects {
        *per_kind.entry(kind_of(o)).or_default() += 1;
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    objects
        .into_iter()
        .map(|o| {
            let kind = kind_of(&o);
            let n = seen.entry(kind.clone()).or_default();
            *n += 1;
            let id = if per_kind[&kind] > 1 { format!("{base}{kind}{n}") } else { format!("{base}{kind}") };
            (id, o)
        })
        .collect()
}

/// Words kro or CEL reserve; an owner's step named like one gets `Step` appended.
const RESERVED: &[&str] = &[
    "schema", "spec", "status", "metadata", "self", "instance", "resource", "resources", "item", "items", "each", "kro",
    "root", "object", "graph", "vars", "variables", "runtime", "namespace", "kind", "apiVersion", "version", "context",
    "dependency", "dependencies", "externalRef", "serviceAccountName", "true", "false", "null", "in", "as", "break",
    "const", "continue", "else", "for", "function", "if", "import", "let", "loop", "package", "return", "var", "void",
    "while",
];

/// The kro id of a step: a kro resource keeps its id (CEL elsewhere names it); an owner's step
/// name becomes lowerCamelCase.
fn resource_id(s: &Step) -> String {
    if is_kro(s) {
        return s.name.clone();
    }
    let mut id = camel_parts(&s.name, false);
    if id.is_empty() || id.starts_with(|c: char| c.is_ascii_digit()) {
        id = format!("step{}", upper_first(&id));
    }
    if RESERVED.contains(&id.as_str()) || !expr::is_identifier(&id) {
        id.push_str("Step");
    }
    id
}

/// Joins the alphanumeric runs of `s` in camelCase: the first run keeps its case except for its
/// first letter (upper when `upper`, else lower), later runs get an upper-case first letter.
fn camel_parts(s: &str, upper: bool) -> String {
    let mut out = String::new();
    for (i, part) in s.split(|c: char| !c.is_ascii_alphanumeric()).filter(|p| !p.is_empty()).enumerate() {
        if i == 0 && !upper {
            let mut chars = part.chars();
            out.extend(chars.next().map(|c| c.to_ascii_lowercase()));
            out.push_str(chars.as_str());
        } else {
            out.push_str(&upper_first(part));
        }
    }
    out
}

fn upper_first(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
}

/// The schema kind: the workflow name in CamelCase (`gitops-app.kro.run` -> `GitopsAppKroRun`).
fn camel_kind(name: &str) -> String {
    let kind = camel_parts(name, true);
    if kind.starts_with(|c: char| c.is_ascii_alphabetic()) { kind } else { format!("Workflow{kind}") }
}

/// `spec.schema.spec`: every parameter as a SimpleSchema string, nested again at the dots.
fn schema_spec(w: &Workflow) -> Map<String, Value> {
    let mut spec = Map::new();
    for p in w.parameters.values() {
        let mut text = p.type_name.clone();
        let mut markers = Vec::new();
        if let Some(d) = &p.default {
            markers.push(format!("default={}", simple_value(d)));
        }
        if let Some(desc) = &p.description {
            markers.push(format!("description={}", Value::from(desc.as_str())));
        }
        if !markers.is_empty() {
            text = format!("{text} | {}", markers.join(" "));
        }
        let mut at = &mut spec;
        let mut path: Vec<&str> = p.name.split('.').collect();
        let leaf = path.pop().unwrap_or_default();
        for seg in path {
            let next = at.entry(seg.to_string()).or_insert_with(|| Value::Object(Map::new()));
            if !next.is_object() {
                *next = Value::Object(Map::new());
            }
            at = next.as_object_mut().expect("just made an object");
        }
        at.insert(leaf.to_string(), Value::String(text));
    }
    spec
}

/// A default as SimpleSchema writes it: strings quoted, everything else as JSON.
fn simple_value(v: &Value) -> String {
    v.to_string()
}

/// Replaces `{{.x}}` and `{{ .x }}` with `${schema.spec.x}` for every parameter, in every string.
fn placeholders_to_cel(v: &Value, w: &Workflow) -> Value {
    match v {
        Value::String(s) => {
            let mut out = s.clone();
            for name in w.parameters.keys() {
                for pat in [format!("{{{{.{name}}}}}"), format!("{{{{ .{name} }}}}")] {
                    out = out.replace(&pat, &format!("${{schema.spec.{name}}}"));
                }
            }
            Value::String(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| placeholders_to_cel(x, w)).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, x)| (k.clone(), placeholders_to_cel(x, w))).collect()),
        other => other.clone(),
    }
}

/// Kinds that are cluster-scoped in every Kubernetes release (no namespace).
pub const CLUSTER_SCOPED_KINDS: &[&str] = &[
    "APIService",
    "CertificateSigningRequest",
    "ClusterRole",
    "ClusterRoleBinding",
    "CSIDriver",
    "CSINode",
    "CustomResourceDefinition",
    "IngressClass",
    "MutatingWebhookConfiguration",
    "Namespace",
    "Node",
    "PersistentVolume",
    "PriorityClass",
    "RuntimeClass",
    "StorageClass",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "ValidatingWebhookConfiguration",
    "VolumeAttachment",
];

fn default_namespace(obj: &mut Value, ns: &Value) {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    if CLUSTER_SCOPED_KINDS.contains(&kind) {
        return;
    }
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.entry("namespace").or_insert_with(|| ns.clone());
    }
}

/// `wait_for_rollout` unless it is `false`.
fn wait_for_rollout(s: &Step) -> bool {
    !matches!(s.fields.get("wait_for_rollout"), Some(Value::Bool(false))) && s.fields.get("wait_for_rollout").and_then(Value::as_str) != Some("false")
}

/// kro `readyWhen` for a workload whose rollout the step waits for.
fn rollout_ready_when(id: &str, obj: &Value) -> Vec<String> {
    if obj.get("apiVersion").and_then(Value::as_str) != Some("apps/v1") {
        return Vec::new();
    }
    match obj.get("kind").and_then(Value::as_str) {
        Some("Deployment") => vec![
            format!("${{{id}.status.?observedGeneration.orValue(0) >= {id}.metadata.generation}}"),
            format!("${{{id}.status.?availableReplicas.orValue(0) == {id}.spec.replicas}}"),
        ],
        Some("StatefulSet") => vec![
            format!("${{{id}.status.?observedGeneration.orValue(0) >= {id}.metadata.generation}}"),
            format!("${{{id}.status.?readyReplicas.orValue(0) == {id}.spec.replicas}}"),
        ],
        Some("DaemonSet") => vec![
            format!("${{{id}.status.?observedGeneration.orValue(0) >= {id}.metadata.generation}}"),
            format!("${{{id}.status.?numberAvailable.orValue(0) == {id}.status.?desiredNumberScheduled.orValue(0)}}"),
        ],
        _ => Vec::new(),
    }
}

/// Sets `metadata.annotations[key]`, keeping the other annotations.
fn annotate(obj: &mut Value, key: &str, value: &str) -> Result<(), String> {
    let Some(o) = obj.as_object_mut() else { return Err("its object is not a mapping".into()) };
    let meta = o.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    let Some(meta) = meta.as_object_mut() else { return Err("its `metadata` is not a mapping".into()) };
    let ann = meta.entry("annotations").or_insert_with(|| Value::Object(Map::new()));
    let Some(ann) = ann.as_object_mut() else {
        return Err(format!("its `metadata.annotations` is not a mapping, so the `{key}` annotation that orders it cannot be added"));
    };
    ann.insert(key.to_string(), Value::String(value.to_string()));
    Ok(())
}

/// Reads a `manifests` field as Kubernetes objects. Accepted forms:
///
/// - a mapping: one object;
/// - a list whose entries are mappings (one object each) or strings of YAML documents;
/// - a string of YAML documents separated by `---`.
///
/// Objects of kind `List` (or `SomethingList`) with `items` give their items. Empty documents
/// are skipped. Every object must have a non-empty `apiVersion`, `kind` and `metadata.name`.
/// A string that is not YAML mappings (a file path, say) is refused: manifest files are not
/// read; write the objects inline. Errors are sentences naming the entry.
pub fn manifest_objects(manifests: &Value) -> Result<Vec<Value>, String> {
    let entries: Vec<&Value> = match manifests {
        Value::Array(a) => a.iter().collect(),
        Value::Null => Vec::new(),
        other => vec![other],
    };
    let many = entries.len() > 1 || matches!(manifests, Value::Array(_));
    let mut out = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let label = if many { format!("`manifests` entry {}", i + 1) } else { "`manifests`".to_string() };
        match entry {
            Value::Object(_) => push_object(entry.clone(), &label, &mut out)?,
            Value::String(text) => {
                let docs: Vec<Value> = serde_saphyr::from_multiple(text)
                    .map_err(|e| format!("{label} is not valid YAML: {}", first_line(&e.to_string())))?;
                if docs.iter().any(|d| !d.is_object() && !d.is_null()) || docs.iter().all(Value::is_null) {
                    let shown: String = text.chars().take(60).collect();
                    return Err(format!(
                        "{label} ({shown:?}) is not a Kubernetes object; labops does not read manifest files or directories: \
                         write the objects inline, as mappings or as a YAML string of documents"
                    ));
                }
                for (j, doc) in docs.into_iter().filter(|d| !d.is_null()).enumerate() {
                    push_object(doc, &format!("{label}, document {}", j + 1), &mut out)?;
                }
            }
            other => return Err(format!("{label} must be a Kubernetes object (a mapping) or a YAML string, not {}", json_kind(other))),
        }
    }
    Ok(out)
}

fn push_object(obj: Value, label: &str, out: &mut Vec<Value>) -> Result<(), String> {
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
    if kind.ends_with("List")
        && let Some(items) = obj.get("items").and_then(Value::as_array) {
            for (k, item) in items.iter().enumerate() {
                push_object(item.clone(), &format!("{label}, item {}", k + 1), out)?;
            }
            return Ok(());
        }
    for field in ["apiVersion", "kind"] {
        if obj.get(field).and_then(Value::as_str).is_none_or(str::is_empty) {
            return Err(format!("{label} has no `{field}`; every Kubernetes object needs `apiVersion`, `kind` and `metadata.name`"));
        }
    }
    if obj.pointer("/metadata/name").and_then(Value::as_str).is_none_or(str::is_empty) {
        let hint = if obj.pointer("/metadata/generateName").is_some() {
            " (`generateName` cannot be applied idempotently; give the object a name)"
        } else {
            ""
        };
        return Err(format!("{label} ({kind}) has no `metadata.name`{hint}"));
    }
    out.push(obj);
    Ok(())
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_become_cel_identifiers() {
        assert_eq!(camel_parts("k3s-deployment", false), "k3sDeployment");
        assert_eq!(camel_parts("Web_App.v2", false), "webAppV2");
        assert_eq!(camel_kind("gitops-app.kro.run"), "GitopsAppKroRun");
        assert_eq!(camel_kind("3-tier"), "Workflow3Tier");
    }

    #[test]
    fn manifests_read_as_objects_in_every_form() {
        let one = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}});
        assert_eq!(manifest_objects(&one).unwrap(), vec![one.clone()]);
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\n---\napiVersion: v1\nkind: List\nitems:\n  - apiVersion: v1\n    kind: Secret\n    metadata: {name: b}\n";
        let objs = manifest_objects(&json!([text])).unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[1]["kind"], "Secret");
        let err = manifest_objects(&json!(["gitops/clusters/homelab/app/"])).unwrap_err();
        assert!(err.starts_with("`manifests` entry 1 (\"gitops/clusters/homelab/app/\") is not a Kubernetes object"), "{err}");
        let err = manifest_objects(&json!([{"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "x-"}}])).unwrap_err();
        assert_eq!(err, "`manifests` entry 1 (Pod) has no `metadata.name` (`generateName` cannot be applied idempotently; give the object a name)");
        assert!(manifest_objects(&json!(3)).unwrap_err().contains("not a number"));
    }
}
