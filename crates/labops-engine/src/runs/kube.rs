//! `kubernetes-deployment` and `kubernetes-task`: Kubernetes changes through kube-rs.
//!
//! **Manifests** (`kubernetes-deployment`, and `kubernetes-task` with `manifests`): the field is
//! read by [`labops_core::workflow::kro::manifest_objects`]: one mapping, a list of mappings or
//! YAML strings, or one YAML string of `---`-separated documents (`List` kinds give their
//! items). Each object is server-side applied (field manager `labops`, without forcing: a field
//! another manager owns is a conflict that fails the step with the API server's list of
//! fields), in the order written. Its type is looked up in the cluster's discovery, so custom
//! resources work and an unknown `apiVersion`/`kind` fails with a sentence. Namespaced objects
//! go to their own `metadata.namespace`, else the step's `namespace`, else the client's default
//! namespace; an object whose namespace differs from the step's is refused by `check`.
//!
//! - `prepare` records each object's previous version (without server-set fields) or its
//!   absence;
//! - `execute` applies, then, when `wait_for_rollout` is not `false`, waits for every
//!   Deployment, StatefulSet and DaemonSet to finish rolling out (`kubectl rollout status`
//!   rules: the controller observed the new generation, every replica is updated and available,
//!   no old replica is left), reporting progress, until `rollout_timeout` (seconds or `90s`,
//!   `5m`, `1h`; default 5 minutes). A rollout that does not finish in time, or whose
//!   Deployment reports `ProgressDeadlineExceeded`, fails the step with the object's status;
//! - `verify` holds when every object exists with every field that was applied, and every
//!   waited-for rollout is complete;
//! - `compensate`, in reverse order, re-applies each previous version (forcing ownership back)
//!   or deletes objects that did not exist before.
//!
//! **Actions** (`kubernetes-task` `actions`, run after the manifests):
//!
//! - `update-storageclass-capacity` (needs `storage_class`; `capacity` optional): a
//!   StorageClass's `provisioner` and `parameters` are immutable, so labops does not touch them
//!   and does not resize any volume. It sets `allowVolumeExpansion: true` (volume expansion needs
//!   it) and, when `capacity` is given (a Kubernetes quantity such as `4Ti`), records it in the
//!   annotation [`CAPACITY_ANNOTATION`]. `prepare` records both values as they were;
//!   `compensate` puts them back (removing them if they were absent).
//! - `migrate-pvc-if-needed` (needs `storage_class`; `namespace`, `max_volume_size`,
//!   `allow_pending` optional): read-only. Lists the class's PersistentVolumeClaims in
//!   `namespace` (or every namespace) and reports those that are `Pending` or request more than
//!   `max_volume_size`. Moving data needs a data mover labops does not have, so when any need
//!   migration the step fails with a sentence listing them, unless `allow_pending: true`, when it
//!   succeeds with the list. Nothing to undo.
//!
//! Targets (the run's locks) are `k8s:<namespace>/<Kind>/<name>`, with an empty namespace for
//! cluster-scoped kinds (`k8s:/StorageClass/zfs`).

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, ApiResource, Scope};
use kube::runtime::watcher;
use kube::Client;
use labops_core::workflow::kro::{CLUSTER_SCOPED_KINDS, manifest_objects};
use labops_core::workflow::types::KUBERNETES_ACTIONS;
use labops_core::workflow::{StepType, step_type};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::executor::{Compensation, Executor, RunStep, Started, StepCx, StepError, Verified};

/// The field manager of every labops write.
pub const FIELD_MANAGER: &str = "labops";

/// The StorageClass annotation where `update-storageclass-capacity` records the new capacity.
pub const CAPACITY_ANNOTATION: &str = "labops.dev/capacity";

/// How long a rollout may take when the step does not say (`rollout_timeout`).
pub const DEFAULT_ROLLOUT_TIMEOUT: Duration = Duration::from_secs(300);

/// The longest `rollout_timeout` accepted.
const MAX_ROLLOUT_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

const UPDATE_STORAGECLASS: &str = "update-storageclass-capacity";
const MIGRATE_PVC: &str = "migrate-pvc-if-needed";

/// The `kubernetes-deployment` executor: applies manifests and waits for their rollout.
#[derive(Clone)]
pub struct KubeDeployment {
    kube: Kube,
}

impl KubeDeployment {
    /// An executor talking to the cluster of `client`.
    pub fn new(client: Client) -> Self {
        Self { kube: Kube { client } }
    }
}

impl std::fmt::Debug for KubeDeployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeDeployment").finish_non_exhaustive()
    }
}

/// The `kubernetes-task` executor: applies manifests and runs the named actions.
#[derive(Clone)]
pub struct KubeTask {
    kube: Kube,
}

impl KubeTask {
    /// An executor talking to the cluster of `client`.
    pub fn new(client: Client) -> Self {
        Self { kube: Kube { client } }
    }
}

impl std::fmt::Debug for KubeTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeTask").finish_non_exhaustive()
    }
}

#[async_trait]
impl Executor for KubeDeployment {
    fn step_type(&self) -> &'static StepType {
        step_type("kubernetes-deployment").expect("kubernetes-deployment is a registered step type")
    }

    fn check(&self, step: &RunStep) -> Vec<String> {
        let mut problems = Vec::new();
        if !step.fields.contains_key("manifests") {
            problems.push("`manifests` is missing; list the objects to apply (mappings, or a YAML string of documents)".to_string());
        }
        problems.extend(self.kube.check_manifests(step));
        problems
    }

    fn targets(&self, step: &RunStep) -> Vec<String> {
        self.kube.manifest_targets(step)
    }

    async fn prepare(&self, cx: &StepCx) -> Result<Value, StepError> {
        Ok(json!({"objects": self.kube.prepare_objects(&cx.step).await?}))
    }

    async fn execute(&self, cx: &StepCx, intent: &Value) -> Result<Started, StepError> {
        fail_on_check(self.check(&cx.step))?;
        let objects = self.kube.apply_objects(cx, intent).await?;
        Ok(Started::Done(json!({"objects": objects})))
    }

    async fn verify(&self, cx: &StepCx, _intent: &Value) -> Verified {
        match self.kube.observe_objects(&cx.step).await {
            Ok(Some(objects)) => Verified::Done(json!({"objects": objects})),
            Ok(None) => Verified::NotDone,
            Err(e) => Verified::Unknown(format!("cannot read the objects back to tell whether they were applied: {}", e.message)),
        }
    }

    async fn compensate(&self, _cx: &StepCx, intent: &Value, _outcome: &Value) -> Result<Compensation, StepError> {
        let done = self.kube.undo_objects(intent).await?;
        Ok(if done.is_empty() { Compensation::NothingToUndo } else { Compensation::Undone(sentence(&done)) })
    }
}

#[async_trait]
impl Executor for KubeTask {
    fn step_type(&self) -> &'static StepType {
        step_type("kubernetes-task").expect("kubernetes-task is a registered step type")
    }

    fn check(&self, step: &RunStep) -> Vec<String> {
        let mut problems = Vec::new();
        let actions = step.list_field("actions");
        if actions.is_empty() && !step.fields.contains_key("manifests") {
            problems.push("a kubernetes-task needs `actions` or `manifests`; list what it should do".to_string());
        }
        if step.fields.contains_key("manifests") {
            problems.extend(self.kube.check_manifests(step));
        }
        let known: Vec<&str> = KUBERNETES_ACTIONS.iter().map(|a| a.name).collect();
        for a in &actions {
            if !known.contains(&a.as_str()) {
                problems.push(format!("unknown kubernetes-task action `{a}`; known actions: {}", known.join(", ")));
            }
        }
        let wants_class = actions.iter().any(|a| a == UPDATE_STORAGECLASS || a == MIGRATE_PVC);
        if wants_class && step.str_field("storage_class").is_none_or(|s| s.trim().is_empty()) {
            let which: Vec<&str> = actions.iter().map(String::as_str).filter(|a| *a == UPDATE_STORAGECLASS || *a == MIGRATE_PVC).collect();
            problems.push(format!("`{}` needs `storage_class`: the name of the StorageClass to work on", which.join("` and `")));
        }
        for field in ["capacity", "max_volume_size"] {
            if let Some(v) = step.fields.get(field)
                && quantity(v).is_none()
            {
                problems.push(format!("`{field}` is {v}, which is not a Kubernetes quantity; write it like `500Gi` or `4Ti`"));
            }
        }
        if let Some(v) = step.fields.get("allow_pending")
            && flag(v).is_none()
        {
            problems.push(format!("`allow_pending` must be true or false, not {v}"));
        }
        problems
    }

    fn targets(&self, step: &RunStep) -> Vec<String> {
        let mut targets = self.kube.manifest_targets(step);
        if step.list_field("actions").iter().any(|a| a == UPDATE_STORAGECLASS)
            && let Some(sc) = step.str_field("storage_class")
        {
            targets.push(format!("k8s:/StorageClass/{sc}"));
        }
        targets
    }

    async fn prepare(&self, cx: &StepCx) -> Result<Value, StepError> {
        let step = &cx.step;
        let mut intent = Map::new();
        if step.fields.contains_key("manifests") {
            intent.insert("objects".into(), self.kube.prepare_objects(step).await?);
        }
        if step.list_field("actions").iter().any(|a| a == UPDATE_STORAGECLASS) {
            intent.insert("storage_class".into(), self.kube.prepare_storage_class(step).await?);
        }
        Ok(Value::Object(intent))
    }

    async fn execute(&self, cx: &StepCx, intent: &Value) -> Result<Started, StepError> {
        let step = &cx.step;
        fail_on_check(self.check(step))?;
        let mut outcome = Map::new();
        if step.fields.contains_key("manifests") {
            outcome.insert("objects".into(), Value::Array(self.kube.apply_objects(cx, intent).await?));
        }
        let mut actions = Map::new();
        for action in step.list_field("actions") {
            let result = match action.as_str() {
                UPDATE_STORAGECLASS => self.kube.update_storage_class(cx).await?,
                MIGRATE_PVC => self.kube.migrate_pvcs(cx).await?,
                other => return Err(StepError::fatal(format!("unknown kubernetes-task action `{other}`"))),
            };
            actions.insert(action, result);
        }
        if !actions.is_empty() {
            outcome.insert("actions".into(), Value::Object(actions));
        }
        Ok(Started::Done(Value::Object(outcome)))
    }

    async fn verify(&self, cx: &StepCx, _intent: &Value) -> Verified {
        let step = &cx.step;
        let unknown = |e: StepError| Verified::Unknown(format!("cannot read the cluster to tell whether the step happened: {}", e.message));
        let mut outcome = Map::new();
        if step.fields.contains_key("manifests") {
            match self.kube.observe_objects(step).await {
                Ok(Some(objects)) => outcome.insert("objects".into(), Value::Array(objects)),
                Ok(None) => return Verified::NotDone,
                Err(e) => return unknown(e),
            };
        }
        let mut actions = Map::new();
        for action in step.list_field("actions") {
            let observed = match action.as_str() {
                UPDATE_STORAGECLASS => self.kube.observe_storage_class(step).await,
                // Read-only: its answer is its outcome; when it would fail, running it again says why.
                MIGRATE_PVC => self.kube.pvc_report(step).await.map(|r| (!r.must_fail(step)).then(|| r.to_json())),
                _ => Ok(None),
            };
            match observed {
                Ok(Some(v)) => actions.insert(action, v),
                Ok(None) => return Verified::NotDone,
                Err(e) => return unknown(e),
            };
        }
        if !actions.is_empty() {
            outcome.insert("actions".into(), Value::Object(actions));
        }
        Verified::Done(Value::Object(outcome))
    }

    async fn compensate(&self, _cx: &StepCx, intent: &Value, _outcome: &Value) -> Result<Compensation, StepError> {
        let mut done = Vec::new();
        if let Some(sc) = intent.get("storage_class").filter(|v| !v.is_null()) {
            done.push(self.kube.restore_storage_class(sc).await?);
        }
        done.extend(self.kube.undo_objects(intent).await?);
        Ok(if done.is_empty() { Compensation::NothingToUndo } else { Compensation::Undone(sentence(&done)) })
    }
}

/// The first problem `check` finds, as a fatal error (the driver checks at submission; this
/// guards against a step changed since).
fn fail_on_check(problems: Vec<String>) -> Result<(), StepError> {
    match problems.into_iter().next() {
        Some(p) => Err(StepError::fatal(p)),
        None => Ok(()),
    }
}

/// `a; b; c.` from the parts of a compensation.
fn sentence(parts: &[String]) -> String {
    parts.join("; ")
}

/// A boolean field: `true`/`false`, or the same as text (parameters are filled in as text).
fn flag(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// A Kubernetes quantity (`500Gi`, `4Ti`, `1.5G`, `100`) in base units, for comparisons.
pub fn quantity(v: &Value) -> Option<f64> {
    let text = match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let split = text.find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '+' | '-'))).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let n: f64 = number.parse().ok()?;
    let multiplier = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => 10f64.powi(exp[1..].parse().ok()?),
        _ => return None,
    };
    Some(n * multiplier).filter(|q| q.is_finite() && *q >= 0.0)
}

/// `rollout_timeout`: seconds as a number, or `90`, `90s`, `5m`, `1h`, `1m30s`; at most 24h.
fn parse_timeout(v: &Value) -> Result<Duration, String> {
    let d = super::executor::parse_duration("rollout_timeout", v)?;
    if d > MAX_ROLLOUT_TIMEOUT {
        return Err(format!("`rollout_timeout` must be more than 0 and at most 24h, not {v}"));
    }
    Ok(d)
}

/// The step waits for rollouts unless `wait_for_rollout` is false.
fn waits_for_rollout(step: &RunStep) -> bool {
    step.fields.get("wait_for_rollout").and_then(flag).unwrap_or(true)
}

fn rollout_timeout(step: &RunStep) -> Duration {
    step.fields.get("rollout_timeout").and_then(|v| parse_timeout(v).ok()).unwrap_or(DEFAULT_ROLLOUT_TIMEOUT)
}

/// A Kubernetes API failure as a step error: unreachable, throttled or 5xx may clear, the rest
/// will not.
fn api_error(what: &str, e: kube::Error) -> StepError {
    match &e {
        kube::Error::Api(s) if s.code == 409 => StepError::fatal(format!(
            "{what}: the API server refused it: {}; another field manager owns these fields: change them through their owner \
             or leave them out of the manifest",
            s.message
        )),
        kube::Error::Api(s) if s.code >= 500 || s.code == 429 => {
            StepError::transient(format!("{what}: the API server answered {} {}: {}", s.code, s.reason, s.message))
        }
        kube::Error::Api(s) => StepError::fatal(format!("{what}: the API server answered {} {}: {}", s.code, s.reason, s.message)),
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            StepError::transient(format!("{what}: cannot reach the Kubernetes API ({e})"))
        }
        _ => StepError::fatal(format!("{what}: {e}")),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// An object of a step, located in the cluster.
struct Located {
    api: Api<DynamicObject>,
    api_version: String,
    kind: String,
    namespace: Option<String>,
    name: String,
    /// The object as it is applied (namespace set, or removed for cluster-scoped kinds).
    body: Value,
}

impl Located {
    /// `Deployment default/web` or `StorageClass zfs`.
    fn label(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }

    fn summary(&self) -> Value {
        json!({"apiVersion": self.api_version, "kind": self.kind, "namespace": self.namespace, "name": self.name})
    }

    /// Deployments, StatefulSets and DaemonSets have rollouts.
    fn has_rollout(&self) -> bool {
        self.api_version == "apps/v1" && matches!(self.kind.as_str(), "Deployment" | "StatefulSet" | "DaemonSet")
    }
}

/// Where a rollout stands.
#[derive(Debug, Clone, PartialEq)]
enum Rollout {
    Complete,
    /// Still going: what it waits for, and how far along it is.
    Progressing(String, Option<f64>),
    /// It will not finish by itself.
    Failed(String),
}

fn int_at(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// The rollout state of a workload, by `kubectl rollout status` rules.
fn rollout_state(kind: &str, obj: &Value) -> Rollout {
    let generation = int_at(obj, "/metadata/generation");
    let observed = int_at(obj, "/status/observedGeneration");
    if observed < generation {
        return Rollout::Progressing(format!("waiting for the controller to observe generation {generation} (it has seen {observed})"), Some(0.0));
    }
    let fraction = |n: i64, of: i64| Some(if of <= 0 { 1.0 } else { (n as f64 / of as f64).clamp(0.0, 1.0) });
    match kind {
        "Deployment" => {
            if let Some(conds) = obj.pointer("/status/conditions").and_then(Value::as_array)
                && let Some(c) = conds.iter().find(|c| c["type"] == "Progressing" && c["reason"] == "ProgressDeadlineExceeded")
            {
                return Rollout::Failed(format!(
                    "it exceeded its progress deadline: {}",
                    c["message"].as_str().unwrap_or("no progress within spec.progressDeadlineSeconds")
                ));
            }
            let desired = obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
            let updated = int_at(obj, "/status/updatedReplicas");
            let replicas = int_at(obj, "/status/replicas");
            let available = int_at(obj, "/status/availableReplicas");
            if updated < desired {
                Rollout::Progressing(format!("{updated} of {desired} replicas updated"), fraction(updated, desired))
            } else if replicas > updated {
                Rollout::Progressing(format!("{} old replicas are pending termination", replicas - updated), fraction(updated, replicas))
            } else if available < updated {
                Rollout::Progressing(format!("{available} of {updated} updated replicas available"), fraction(available, updated))
            } else {
                Rollout::Complete
            }
        }
        "StatefulSet" => {
            let desired = obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
            let ready = int_at(obj, "/status/readyReplicas");
            let updated = int_at(obj, "/status/updatedReplicas");
            if updated < desired {
                Rollout::Progressing(format!("{updated} of {desired} pods updated"), fraction(updated, desired))
            } else if ready < desired {
                Rollout::Progressing(format!("{ready} of {desired} pods ready"), fraction(ready, desired))
            } else {
                Rollout::Complete
            }
        }
        "DaemonSet" => {
            let desired = int_at(obj, "/status/desiredNumberScheduled");
            let updated = int_at(obj, "/status/updatedNumberScheduled");
            let available = int_at(obj, "/status/numberAvailable");
            if updated < desired {
                Rollout::Progressing(format!("{updated} of {desired} daemon pods updated"), fraction(updated, desired))
            } else if available < desired {
                Rollout::Progressing(format!("{available} of {desired} daemon pods available"), fraction(available, desired))
            } else {
                Rollout::Complete
            }
        }
        _ => Rollout::Complete,
    }
}

/// Whether `live` has every field of `want` with the same value (maps by key, lists item by
/// item with the same length): what verify asks of an applied object.
fn contains(live: &Value, want: &Value) -> bool {
    match (live, want) {
        (Value::Object(l), Value::Object(w)) => w.iter().all(|(k, v)| l.get(k).is_some_and(|lv| contains(lv, v))),
        (Value::Array(l), Value::Array(w)) => l.len() == w.len() && l.iter().zip(w).all(|(a, b)| contains(a, b)),
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (l, w) => l == w,
    }
}

/// The object without what the server sets, ready to be applied again.
fn without_server_fields(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(map) = o.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in ["resourceVersion", "uid", "managedFields", "creationTimestamp", "generation", "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds"] {
                meta.remove(k);
            }
        }
    }
    o
}

#[derive(Clone)]
struct Kube {
    client: Client,
}

impl Kube {
    /// Problems with the `manifests`, `namespace`, `wait_for_rollout` and `rollout_timeout` fields.
    fn check_manifests(&self, step: &RunStep) -> Vec<String> {
        let mut problems = Vec::new();
        match step.fields.get("manifests").map(manifest_objects).transpose() {
            Err(e) => problems.push(e),
            Ok(None) => {}
            Ok(Some(objects)) => {
                if objects.is_empty() {
                    problems.push("`manifests` holds no object; list the objects to apply".to_string());
                }
                if let Some(step_ns) = step.str_field("namespace") {
                    for o in &objects {
                        if let Some(ns) = o.pointer("/metadata/namespace").and_then(Value::as_str)
                            && ns != step_ns
                        {
                            problems.push(format!(
                                "{} {} in `manifests` is in namespace `{ns}`, but the step's `namespace` is `{step_ns}`; drop one of them",
                                o["kind"].as_str().unwrap_or_default(),
                                o["metadata"]["name"].as_str().unwrap_or_default()
                            ));
                        }
                    }
                }
            }
        }
        if let Some(v) = step.fields.get("wait_for_rollout")
            && flag(v).is_none()
        {
            problems.push(format!("`wait_for_rollout` must be true or false, not {v}"));
        }
        if let Some(v) = step.fields.get("rollout_timeout")
            && let Err(e) = parse_timeout(v)
        {
            problems.push(e);
        }
        problems
    }

    /// `k8s:<namespace>/<Kind>/<name>` for each manifest object (no discovery: well-known
    /// cluster-scoped kinds get an empty namespace).
    fn manifest_targets(&self, step: &RunStep) -> Vec<String> {
        let Some(Ok(objects)) = step.fields.get("manifests").map(manifest_objects) else { return Vec::new() };
        objects
            .iter()
            .map(|o| {
                let kind = o["kind"].as_str().unwrap_or_default();
                let name = o["metadata"]["name"].as_str().unwrap_or_default();
                let ns = if CLUSTER_SCOPED_KINDS.contains(&kind) {
                    ""
                } else {
                    o.pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .or_else(|| step.str_field("namespace"))
                        .unwrap_or_else(|| self.client.default_namespace())
                };
                format!("k8s:{ns}/{kind}/{name}")
            })
            .collect()
    }

    /// The step's objects, each located through discovery.
    async fn locate_all(&self, step: &RunStep) -> Result<Vec<Located>, StepError> {
        let Some(manifests) = step.fields.get("manifests") else { return Ok(Vec::new()) };
        let objects = manifest_objects(manifests).map_err(StepError::fatal)?;
        let mut out = Vec::with_capacity(objects.len());
        for o in objects {
            out.push(self.locate(o, step.str_field("namespace")).await?);
        }
        Ok(out)
    }

    async fn locate(&self, mut obj: Value, step_ns: Option<&str>) -> Result<Located, StepError> {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version.as_str()));
        let gvk = GroupVersionKind::gvk(group, version, &kind);
        let (ar, caps): (ApiResource, _) = match discovery::pinned_kind(&self.client, &gvk).await {
            Ok(found) => found,
            Err(e @ (kube::Error::HyperError(_) | kube::Error::Service(_))) => {
                return Err(api_error(&format!("looking up {api_version} {kind}"), e));
            }
            Err(kube::Error::Api(s)) if s.code >= 500 || s.code == 429 => {
                return Err(api_error(&format!("looking up {api_version} {kind}"), kube::Error::Api(s)));
            }
            Err(e) => {
                return Err(StepError::fatal(format!(
                    "the cluster does not serve {api_version} {kind} (needed for {name}): {e}; check `apiVersion` and `kind`, \
                     or install the CustomResourceDefinition first"
                )));
            }
        };
        let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
            return Err(StepError::fatal(format!("{kind} {name:?} has no `metadata` mapping; give every object `metadata.name`")));
        };
        let (api, namespace) = if caps.scope == Scope::Namespaced {
            let ns = meta
                .get("namespace")
                .and_then(Value::as_str)
                .or(step_ns)
                .unwrap_or_else(|| self.client.default_namespace())
                .to_string();
            meta.insert("namespace".into(), Value::String(ns.clone()));
            (Api::namespaced_with(self.client.clone(), &ns, &ar), Some(ns))
        } else {
            meta.remove("namespace");
            (Api::all_with(self.client.clone(), &ar), None)
        };
        Ok(Located { api, api_version, kind, namespace, name, body: obj })
    }

    async fn get(&self, o: &Located) -> Result<Option<Value>, StepError> {
        let live = o.api.get_opt(&o.name).await.map_err(|e| api_error(&format!("reading {}", o.label()), e))?;
        live.map(|l| serde_json::to_value(l).map_err(|e| StepError::fatal(format!("reading {}: {e}", o.label())))).transpose()
    }

    /// Every object's previous version (without server fields), or null when it is absent.
    async fn prepare_objects(&self, step: &RunStep) -> Result<Value, StepError> {
        let mut out = Vec::new();
        for o in self.locate_all(step).await? {
            let previous = self.get(&o).await?.map(|v| without_server_fields(&v));
            let mut entry = o.summary();
            entry["previous"] = previous.unwrap_or(Value::Null);
            out.push(entry);
        }
        Ok(Value::Array(out))
    }

    /// Applies every object, then waits for the rollouts.
    async fn apply_objects(&self, cx: &StepCx, intent: &Value) -> Result<Vec<Value>, StepError> {
        let step = &cx.step;
        let located = self.locate_all(step).await?;
        let total = located.len();
        let existed = |o: &Located| {
            intent["objects"].as_array().and_then(|objs| {
                objs.iter()
                    .find(|e| e["kind"] == o.kind.as_str() && e["name"] == o.name.as_str() && e["namespace"].as_str() == o.namespace.as_deref())
                    .map(|e| !e["previous"].is_null())
            })
        };
        let params = PatchParams::apply(FIELD_MANAGER);
        let mut applied = Vec::with_capacity(total);
        for (i, o) in located.iter().enumerate() {
            let live = o
                .api
                .patch(&o.name, &params, &Patch::Apply(&o.body))
                .await
                .map_err(|e| api_error(&format!("applying {}", o.label()), e))?;
            let mut entry = o.summary();
            entry["generation"] = json!(live.metadata.generation);
            entry["created"] = json!(existed(o).map(|e| !e));
            applied.push(entry);
            cx.progress(Some((i + 1) as f64 / (total as f64 * 2.0)), format!("applied {} ({} of {total})", o.label(), i + 1));
        }
        if waits_for_rollout(step) {
            let deadline = Instant::now() + rollout_timeout(step);
            for o in located.iter().filter(|o| o.has_rollout()) {
                self.wait_rollout(cx, o, deadline, rollout_timeout(step)).await?;
            }
        }
        Ok(applied)
    }

    /// Watches one workload until its rollout completes, fails, or the deadline passes.
    async fn wait_rollout(&self, cx: &StepCx, o: &Located, deadline: Instant, timeout: Duration) -> Result<(), StepError> {
        let stream = watcher::watch_object(o.api.clone(), &o.name);
        futures::pin_mut!(stream);
        let mut last = "no status yet".to_string();
        loop {
            let next = match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(n) => n,
                Err(_) => {
                    return Err(StepError::fatal(format!(
                        "{} did not finish rolling out within {}: {last}; check its pods and events, then retry or roll back",
                        o.label(),
                        human_duration(timeout)
                    )));
                }
            };
            match next {
                None => return Err(StepError::transient(format!("the watch on {} ended while waiting for its rollout", o.label()))),
                Some(Err(e)) => {
                    tracing::debug!(object = %o.label(), error = %e, "rollout watch failed; retrying");
                    // The watcher resumes when polled again; pause so a persistent error cannot spin.
                    tokio::time::sleep_until(deadline.min(Instant::now() + Duration::from_millis(500))).await;
                }
                Some(Ok(None)) => {
                    return Err(StepError::fatal(format!("{} was deleted while labops waited for its rollout", o.label())));
                }
                Some(Ok(Some(live))) => {
                    let live = serde_json::to_value(live).unwrap_or(Value::Null);
                    match rollout_state(&o.kind, &live) {
                        Rollout::Complete => {
                            cx.progress(Some(1.0), format!("{} rolled out", o.label()));
                            return Ok(());
                        }
                        Rollout::Failed(why) => {
                            return Err(StepError::fatal(format!("{} cannot finish rolling out: {why}; check its pods and events", o.label())));
                        }
                        Rollout::Progressing(status, fraction) => {
                            if status != last {
                                cx.progress(fraction.map(|f| 0.5 + f / 2.0), format!("{}: {status}", o.label()));
                                last = status;
                            }
                        }
                    }
                }
            }
        }
    }

    /// The objects as `execute` reports them when every one holds what was applied (and its
    /// rollout is complete when the step waits for it); `None` when something is missing.
    async fn observe_objects(&self, step: &RunStep) -> Result<Option<Vec<Value>>, StepError> {
        let mut out = Vec::new();
        for o in self.locate_all(step).await? {
            let Some(live) = self.get(&o).await? else { return Ok(None) };
            if !contains(&live, &o.body) {
                return Ok(None);
            }
            if waits_for_rollout(step) && o.has_rollout() && rollout_state(&o.kind, &live) != Rollout::Complete {
                return Ok(None);
            }
            let mut entry = o.summary();
            entry["generation"] = live.pointer("/metadata/generation").cloned().unwrap_or(Value::Null);
            out.push(entry);
        }
        Ok(Some(out))
    }

    /// Restores each recorded object, last first: re-applies its previous version or deletes it
    /// when it did not exist. Returns what was done, one phrase per object.
    async fn undo_objects(&self, intent: &Value) -> Result<Vec<String>, StepError> {
        let Some(objects) = intent.get("objects").and_then(Value::as_array) else { return Ok(Vec::new()) };
        let mut done = Vec::new();
        for entry in objects.iter().rev() {
            let mut body = entry["previous"].clone();
            let absent = body.is_null();
            if absent {
                body = json!({"apiVersion": entry["apiVersion"], "kind": entry["kind"], "metadata": {"name": entry["name"]}});
                if let Some(ns) = entry["namespace"].as_str() {
                    body["metadata"]["namespace"] = json!(ns);
                }
            }
            let o = self.locate(body, None).await?;
            if absent {
                match o.api.delete(&o.name, &DeleteParams::default()).await {
                    Ok(_) => done.push(format!("deleted {}", o.label())),
                    Err(e) if is_not_found(&e) => done.push(format!("{} is already gone", o.label())),
                    Err(e) => return Err(api_error(&format!("deleting {}", o.label()), e)),
                }
            } else {
                o.api
                    .patch(&o.name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&o.body))
                    .await
                    .map_err(|e| api_error(&format!("restoring {}", o.label()), e))?;
                done.push(format!("restored {} to its previous version", o.label()));
            }
        }
        Ok(done)
    }

    fn storage_classes(&self) -> Api<k8s_openapi::api::storage::v1::StorageClass> {
        Api::all(self.client.clone())
    }

    async fn storage_class(&self, name: &str) -> Result<Value, StepError> {
        let sc = self
            .storage_classes()
            .get_opt(name)
            .await
            .map_err(|e| api_error(&format!("reading StorageClass {name}"), e))?
            .ok_or_else(|| StepError::fatal(format!("StorageClass `{name}` does not exist; check `storage_class` (`kubectl get storageclass` lists them)")))?;
        serde_json::to_value(sc).map_err(|e| StepError::fatal(format!("reading StorageClass {name}: {e}")))
    }

    /// What `update-storageclass-capacity` will change, as it is now.
    async fn prepare_storage_class(&self, step: &RunStep) -> Result<Value, StepError> {
        let name = step.str_field("storage_class").unwrap_or_default();
        let sc = self.storage_class(name).await?;
        Ok(json!({
            "name": name,
            "allowVolumeExpansion": sc.get("allowVolumeExpansion").cloned().unwrap_or(Value::Null),
            "capacity": sc.pointer(&format!("/metadata/annotations/{}", CAPACITY_ANNOTATION.replace('/', "~1"))).cloned().unwrap_or(Value::Null),
        }))
    }

    /// `update-storageclass-capacity`: allowVolumeExpansion on, capacity recorded.
    async fn update_storage_class(&self, cx: &StepCx) -> Result<Value, StepError> {
        let step = &cx.step;
        let name = step.str_field("storage_class").unwrap_or_default();
        let before = self.storage_class(name).await?;
        let mut patch = json!({"allowVolumeExpansion": true});
        let capacity = step.fields.get("capacity").map(|c| match c {
            Value::String(s) => s.trim().to_string(),
            other => other.to_string(),
        });
        if let Some(c) = &capacity {
            patch["metadata"] = json!({"annotations": {CAPACITY_ANNOTATION: c}});
        }
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_string()), ..PatchParams::default() };
        self.storage_classes()
            .patch(name, &params, &Patch::Merge(&patch))
            .await
            .map_err(|e| api_error(&format!("updating StorageClass {name}"), e))?;
        let was = before.get("allowVolumeExpansion").and_then(Value::as_bool).unwrap_or(false);
        let mut said = if was { "volume expansion was already allowed".to_string() } else { "volume expansion allowed".to_string() };
        if let Some(c) = &capacity {
            said.push_str(&format!(", capacity {c} recorded"));
        }
        cx.progress(None, format!("StorageClass {name}: {said}"));
        Ok(json!({"storage_class": name, "allowVolumeExpansion": {"before": was, "after": true}, "capacity": capacity}))
    }

    /// The action's outcome when the class is as it leaves it, else `None`.
    async fn observe_storage_class(&self, step: &RunStep) -> Result<Option<Value>, StepError> {
        let name = step.str_field("storage_class").unwrap_or_default();
        let sc = self.storage_class(name).await?;
        let expands = sc.get("allowVolumeExpansion").and_then(Value::as_bool) == Some(true);
        let capacity = step.fields.get("capacity").map(|c| c.as_str().map(str::trim).map(str::to_string).unwrap_or_else(|| c.to_string()));
        let recorded = sc["metadata"]["annotations"][CAPACITY_ANNOTATION].as_str().map(str::to_string);
        let holds = expands && (capacity.is_none() || recorded == capacity);
        Ok(holds.then(|| json!({"storage_class": name, "allowVolumeExpansion": {"after": true}, "capacity": capacity})))
    }

    /// Puts back what `prepare_storage_class` recorded.
    async fn restore_storage_class(&self, recorded: &Value) -> Result<String, StepError> {
        let name = recorded["name"].as_str().unwrap_or_default();
        let patch = json!({
            "allowVolumeExpansion": recorded["allowVolumeExpansion"],
            "metadata": {"annotations": {CAPACITY_ANNOTATION: recorded["capacity"]}},
        });
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_string()), ..PatchParams::default() };
        match self.storage_classes().patch(name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => return Ok(format!("StorageClass {name} is gone; nothing to restore")),
            Err(e) => return Err(api_error(&format!("restoring StorageClass {name}"), e)),
        }
        let expansion = match recorded["allowVolumeExpansion"].as_bool() {
            Some(b) => format!("allowVolumeExpansion {b}"),
            None => "allowVolumeExpansion unset".to_string(),
        };
        let capacity = match recorded["capacity"].as_str() {
            Some(c) => format!("{CAPACITY_ANNOTATION} {c}"),
            None => format!("no {CAPACITY_ANNOTATION} annotation"),
        };
        Ok(format!("restored StorageClass {name} ({expansion}, {capacity})"))
    }

    /// The claims of the step's storage class and those that need migration.
    async fn pvc_report(&self, step: &RunStep) -> Result<PvcReport, StepError> {
        use k8s_openapi::api::core::v1::PersistentVolumeClaim;
        let class = step.str_field("storage_class").unwrap_or_default().to_string();
        let api: Api<PersistentVolumeClaim> = match step.str_field("namespace") {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let list = api.list(&ListParams::default()).await.map_err(|e| api_error("listing PersistentVolumeClaims", e))?;
        let max = step.fields.get("max_volume_size");
        let max_bytes = max.and_then(quantity);
        let mut report = PvcReport { class, claims: Vec::new(), needing: Vec::new() };
        for pvc in list.items {
            let pvc = serde_json::to_value(pvc).unwrap_or(Value::Null);
            if pvc.pointer("/spec/storageClassName").and_then(Value::as_str) != Some(report.class.as_str()) {
                continue;
            }
            let ns = pvc["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
            let name = pvc["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let size = pvc.pointer("/spec/resources/requests/storage").cloned().unwrap_or(Value::Null);
            let phase = pvc.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Unknown").to_string();
            let mut reasons = Vec::new();
            if phase == "Pending" {
                reasons.push("Pending: no volume is bound".to_string());
            }
            if let (Some(limit), Some(bytes)) = (max_bytes, quantity(&size))
                && bytes > limit
            {
                let shown = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
                reasons.push(format!("requests {}, more than max_volume_size {}", shown(&size), shown(max.unwrap_or(&Value::Null))));
            }
            if !reasons.is_empty() {
                report.needing.push(json!({"namespace": ns, "name": name, "reason": reasons.join("; ")}));
            }
            report.claims.push(json!({"namespace": ns, "name": name, "size": size, "phase": phase}));
        }
        Ok(report)
    }

    /// `migrate-pvc-if-needed`: reports; fails when claims need a migration labops cannot do.
    async fn migrate_pvcs(&self, cx: &StepCx) -> Result<Value, StepError> {
        let report = self.pvc_report(&cx.step).await?;
        if report.must_fail(&cx.step) {
            let listed: Vec<String> = report
                .needing
                .iter()
                .map(|c| format!("{}/{} ({})", c["namespace"].as_str().unwrap_or_default(), c["name"].as_str().unwrap_or_default(), c["reason"].as_str().unwrap_or_default()))
                .collect();
            let n = listed.len();
            return Err(StepError::fatal(format!(
                "{n} PersistentVolumeClaim{} of StorageClass `{}` need{} migration, which labops cannot do without a data mover: {}; \
                 move the data by hand, or set `allow_pending: true` to accept them as they are",
                if n == 1 { "" } else { "s" },
                report.class,
                if n == 1 { "s" } else { "" },
                listed.join(", ")
            )));
        }
        cx.progress(
            Some(1.0),
            format!("{} PersistentVolumeClaims of StorageClass {}, {} needing migration", report.claims.len(), report.class, report.needing.len()),
        );
        Ok(report.to_json())
    }
}

/// What `migrate-pvc-if-needed` found.
struct PvcReport {
    class: String,
    claims: Vec<Value>,
    needing: Vec<Value>,
}

impl PvcReport {
    fn must_fail(&self, step: &RunStep) -> bool {
        !self.needing.is_empty() && !step.fields.get("allow_pending").and_then(flag).unwrap_or(false)
    }

    fn to_json(&self) -> Value {
        json!({"storage_class": self.class, "claims": self.claims, "needing_migration": self.needing})
    }
}

/// `5m`, `90s`, `1h 1m 30s`, or `1.5s`.
fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_millis() != 0 || secs == 0 {
        return format!("{:.1}s", d.as_secs_f64());
    }
    let parts = [(secs / 3600, "h"), (secs % 3600 / 60, "m"), (secs % 60, "s")];
    parts.iter().filter(|(n, _)| *n > 0).map(|(n, unit)| format!("{n}{unit}")).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_compare_in_bytes() {
        assert_eq!(quantity(&json!("1Ki")), Some(1024.0));
        assert_eq!(quantity(&json!("500Gi")), Some(500.0 * 1024f64.powi(3)));
        assert_eq!(quantity(&json!("1e3")), Some(1000.0));
        assert_eq!(quantity(&json!(2048)), Some(2048.0));
        assert!(quantity(&json!("4TB")).is_none());
        assert!(quantity(&json!("lots")).is_none());
        assert!(quantity(&json!("600Gi")).unwrap() > quantity(&json!("500Gi")).unwrap());
    }

    #[test]
    fn timeouts_read_as_seconds_or_durations() {
        assert_eq!(parse_timeout(&json!(90)), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout(&json!("1m30s")), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout(&json!("5m")), Ok(Duration::from_secs(300)));
        assert_eq!(parse_timeout(&json!("2h")), Ok(Duration::from_secs(7200)));
        assert!(parse_timeout(&json!("soon")).unwrap_err().contains("write seconds"));
        assert!(parse_timeout(&json!("0s")).unwrap_err().contains("more than 0"));
        assert!(parse_timeout(&json!("48h")).unwrap_err().contains("at most 24h"));
        assert_eq!(human_duration(Duration::from_secs(300)), "5m");
        assert_eq!(human_duration(Duration::from_secs(3690)), "1h 1m 30s");
    }

    #[test]
    fn deployment_rollouts_follow_kubectl_rules() {
        let d = |generation: i64, status: Value| json!({"metadata": {"generation": generation}, "spec": {"replicas": 3}, "status": status});
        assert!(matches!(rollout_state("Deployment", &d(2, json!({"observedGeneration": 1}))), Rollout::Progressing(s, _) if s.contains("generation 2")));
        let half = d(2, json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 3}));
        assert!(matches!(rollout_state("Deployment", &half), Rollout::Progressing(s, _) if s == "1 of 3 replicas updated"));
        let old = d(2, json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 3, "availableReplicas": 3}));
        assert!(matches!(rollout_state("Deployment", &old), Rollout::Progressing(s, _) if s == "1 old replicas are pending termination"));
        let done = d(2, json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3}));
        assert_eq!(rollout_state("Deployment", &done), Rollout::Complete);
        let stuck = d(2, json!({"observedGeneration": 2, "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet \"web-1\" has timed out progressing."}]}));
        assert!(matches!(rollout_state("Deployment", &stuck), Rollout::Failed(s) if s.contains("timed out progressing")));
    }

    #[test]
    fn applied_fields_must_all_be_live() {
        let live = json!({"metadata": {"name": "a", "uid": "x"}, "spec": {"replicas": 2, "ports": [{"port": 80, "protocol": "TCP"}]}});
        assert!(contains(&live, &json!({"metadata": {"name": "a"}, "spec": {"ports": [{"port": 80}]}})));
        assert!(!contains(&live, &json!({"spec": {"replicas": 3}})));
        assert!(!contains(&live, &json!({"spec": {"ports": [{"port": 80}, {"port": 443}]}})));
        assert!(!contains(&live, &json!({"data": {}})));
    }
}
