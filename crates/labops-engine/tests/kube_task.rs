//! The Kubernetes executors against the stateful fake API server (`labops_testkit::FakeKube`),
//! through kube-rs exactly as against a cluster: server-side apply with the previous version
//! recorded and restored, rollouts waited for (the test plays the Deployment controller),
//! rollouts that never finish, and the two `kubernetes-task` actions.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use labops_engine::runs::kube::{CAPACITY_ANNOTATION, KubeDeployment, KubeTask};
use labops_engine::runs::{Compensation, Executor, RunStep, Started, StepCx, Verified};
use labops_testkit::FakeKube;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

/// How long the tests wait for anything before failing.
const WAIT: Duration = Duration::from_secs(10);

struct Lab {
    kube: FakeKube,
    client: Client,
    _dir: tempfile::TempDir,
}

async fn lab() -> Lab {
    let kube = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kc = Kubeconfig::read_from(kube.kubeconfig(dir.path())).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.unwrap();
    let client = Client::try_from(config).unwrap();
    kube.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}}));
    Lab { kube, client, _dir: dir }
}

fn step(step_type: &str, fields: Value) -> RunStep {
    RunStep {
        name: "k3s-deployment".into(),
        step_type: step_type.into(),
        depends_on: Vec::new(),
        waits_for_human: false,
        mutates: true,
        fields: serde_json::from_value(fields).unwrap(),
    }
}

fn cx(step: RunStep) -> (StepCx, UnboundedReceiver<(String, Value)>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    (StepCx::new(3, step, 1, tx), rx)
}

fn messages(rx: &mut UnboundedReceiver<(String, Value)>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok((_, detail)) = rx.try_recv() {
        out.push(detail["message"].as_str().unwrap_or_default().to_string());
    }
    out
}

fn done(s: Started) -> Value {
    match s {
        Started::Done(v) => v,
        other => panic!("expected Done, got {other:?}"),
    }
}

const WEB: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: nginx:1.27
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
data:
  greeting: hello
";

/// Plays the Deployment controller once the object appears: marks its rollout complete.
fn complete_rollout_later(kube: &Arc<FakeKube>, delay: Duration) -> (tokio::task::JoinHandle<()>, Arc<AtomicBool>) {
    let kube = kube.clone();
    let marked = Arc::new(AtomicBool::new(false));
    let flag = marked.clone();
    let task = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + WAIT;
        let generation = loop {
            if let Some(d) = kube.get("apps/v1", "Deployment", Some("apps"), "web") {
                break d["metadata"]["generation"].as_i64().unwrap();
            }
            assert!(tokio::time::Instant::now() < deadline, "the executor never applied the Deployment");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        tokio::time::sleep(delay).await;
        // Part-way first, then done, as a controller would report it.
        kube.set_status("apps/v1", "Deployment", Some("apps"), "web", json!({"observedGeneration": generation, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 1}));
        tokio::time::sleep(Duration::from_millis(100)).await;
        flag.store(true, Ordering::SeqCst);
        kube.set_status("apps/v1", "Deployment", Some("apps"), "web", json!({"observedGeneration": generation, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}));
    });
    (task, marked)
}

#[tokio::test]
async fn deployment_applies_waits_for_the_rollout_and_is_undone() {
    let lab = lab().await;
    let kube = Arc::new(lab.kube);
    // The ConfigMap exists before the step; the Deployment does not.
    kube.apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-config", "namespace": "apps", "labels": {"owner": "human"}}, "data": {"greeting": "old"}}));
    let exec = KubeDeployment::new(lab.client.clone());
    let (cx, mut rx) = cx(step("kubernetes-deployment", json!({"namespace": "apps", "manifests": WEB})));
    assert_eq!(exec.check(&cx.step), Vec::<String>::new());
    assert_eq!(exec.targets(&cx.step), ["k8s:apps/Deployment/web", "k8s:apps/ConfigMap/web-config"]);

    let intent = exec.prepare(&cx).await.unwrap();
    assert_eq!(intent["objects"][0]["previous"], Value::Null, "{intent}");
    let previous = &intent["objects"][1]["previous"];
    assert_eq!(previous["data"]["greeting"], json!("old"));
    assert!(previous["metadata"].get("resourceVersion").is_none() && previous["metadata"].get("uid").is_none(), "{previous}");
    assert_eq!(exec.verify(&cx, &intent).await, Verified::NotDone);

    let (controller, marked) = complete_rollout_later(&kube, Duration::from_millis(300));
    let outcome = done(tokio::time::timeout(WAIT, exec.execute(&cx, &intent)).await.expect("execute returns").unwrap());
    assert!(marked.load(Ordering::SeqCst), "execute returned before the rollout completed");
    controller.await.unwrap();
    assert_eq!(outcome["objects"][0]["kind"], json!("Deployment"));
    assert_eq!(outcome["objects"][0]["created"], json!(true));
    assert_eq!(outcome["objects"][1]["created"], json!(false));

    let said = messages(&mut rx);
    assert!(said.contains(&"applied Deployment apps/web (1 of 2)".to_string()), "{said:#?}");
    assert!(said.contains(&"Deployment apps/web: 1 of 2 replicas updated".to_string()), "{said:#?}");
    assert_eq!(said.last().map(String::as_str), Some("Deployment apps/web rolled out"), "{said:#?}");

    let live = kube.get("apps/v1", "Deployment", Some("apps"), "web").unwrap();
    assert_eq!(live["spec"]["replicas"], json!(2));
    let managers: Vec<&str> = live["metadata"]["managedFields"].as_array().unwrap().iter().filter_map(|m| m["manager"].as_str()).collect();
    assert!(managers.contains(&"labops"), "{managers:?}");
    assert_eq!(kube.get("v1", "ConfigMap", Some("apps"), "web-config").unwrap()["data"]["greeting"], json!("hello"));

    assert!(matches!(exec.verify(&cx, &intent).await, Verified::Done(v) if v["objects"].as_array().unwrap().len() == 2));

    let undone = exec.compensate(&cx, &intent, &outcome).await.unwrap();
    assert_eq!(undone, Compensation::Undone("restored ConfigMap apps/web-config to its previous version; deleted Deployment apps/web".into()));
    assert!(kube.get("apps/v1", "Deployment", Some("apps"), "web").is_none());
    let cm = kube.get("v1", "ConfigMap", Some("apps"), "web-config").unwrap();
    assert_eq!((cm["data"]["greeting"].clone(), cm["metadata"]["labels"]["owner"].clone()), (json!("old"), json!("human")));
    // Idempotent: a crash during compensation runs it again.
    let again = exec.compensate(&cx, &intent, &outcome).await.unwrap();
    assert_eq!(again, Compensation::Undone("restored ConfigMap apps/web-config to its previous version; Deployment apps/web is already gone".into()));
    assert_eq!(exec.verify(&cx, &intent).await, Verified::NotDone);
}

#[tokio::test]
async fn a_rollout_that_never_completes_fails_at_the_timeout_with_its_status() {
    let lab = lab().await;
    let exec = KubeDeployment::new(lab.client.clone());
    let (cx, _rx) = cx(step("kubernetes-deployment", json!({"namespace": "apps", "manifests": WEB, "rollout_timeout": "1s"})));
    let intent = exec.prepare(&cx).await.unwrap();
    let started = tokio::time::Instant::now();
    let err = tokio::time::timeout(WAIT, exec.execute(&cx, &intent)).await.expect("bounded wait").unwrap_err();
    assert!(started.elapsed() >= Duration::from_secs(1), "it waited for the rollout");
    assert!(!err.retryable);
    assert_eq!(
        err.message,
        "Deployment apps/web did not finish rolling out within 1s: waiting for the controller to observe generation 1 \
         (it has seen 0); check its pods and events, then retry or roll back"
    );
    // Applied, but not rolled out: verify says run it again.
    assert!(lab.kube.get("apps/v1", "Deployment", Some("apps"), "web").is_some());
    assert_eq!(exec.verify(&cx, &intent).await, Verified::NotDone);
}

#[tokio::test]
async fn without_wait_for_rollout_the_step_ends_after_the_apply() {
    let lab = lab().await;
    let exec = KubeDeployment::new(lab.client.clone());
    let (cx, _rx) = cx(step("kubernetes-deployment", json!({"namespace": "apps", "manifests": WEB, "wait_for_rollout": false})));
    let intent = exec.prepare(&cx).await.unwrap();
    let outcome = done(tokio::time::timeout(WAIT, exec.execute(&cx, &intent)).await.unwrap().unwrap());
    assert_eq!(outcome["objects"].as_array().unwrap().len(), 2);
    assert!(matches!(exec.verify(&cx, &intent).await, Verified::Done(_)));
}

#[tokio::test]
async fn an_unknown_kind_fails_with_a_sentence() {
    let lab = lab().await;
    let exec = KubeDeployment::new(lab.client.clone());
    let widget = json!([{"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}]);
    let (cx, _rx) = cx(step("kubernetes-deployment", json!({"manifests": widget})));
    let err = exec.prepare(&cx).await.unwrap_err();
    assert!(!err.retryable);
    assert!(err.message.starts_with("the cluster does not serve example.com/v1 Widget (needed for w): "), "{}", err.message);
    assert!(err.message.ends_with("check `apiVersion` and `kind`, or install the CustomResourceDefinition first"), "{}", err.message);
}

#[tokio::test]
async fn check_reports_what_cannot_run() {
    let lab = lab().await;
    let deploy = KubeDeployment::new(lab.client.clone());
    let task = KubeTask::new(lab.client.clone());
    let problems = deploy.check(&step(
        "kubernetes-deployment",
        json!({"namespace": "apps", "manifests": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "other"}}], "wait_for_rollout": "maybe", "rollout_timeout": "soon"}),
    ));
    assert_eq!(
        problems,
        [
            "ConfigMap x in `manifests` is in namespace `other`, but the step's `namespace` is `apps`; drop one of them",
            "`wait_for_rollout` must be true or false, not \"maybe\"",
            "`rollout_timeout` is \"soon\"; write seconds (`300`) or a duration like `90s`, `5m`, `2h` or `7d`",
        ]
    );
    let paths = deploy.check(&step("kubernetes-deployment", json!({"manifests": ["gitops/apps/web/"]})));
    assert_eq!(paths.len(), 1);
    assert!(paths[0].contains("labops does not read manifest files or directories"), "{}", paths[0]);
    assert_eq!(deploy.check(&step("kubernetes-deployment", json!({})))[0], "`manifests` is missing; list the objects to apply (mappings, or a YAML string of documents)");

    let problems = task.check(&step(
        "kubernetes-task",
        json!({"actions": ["update-storageclass-capacity", "resize-everything"], "capacity": "lots"}),
    ));
    assert_eq!(
        problems,
        [
            "unknown kubernetes-task action `resize-everything`; known actions: migrate-pvc-if-needed, update-storageclass-capacity",
            "`update-storageclass-capacity` needs `storage_class`: the name of the StorageClass to work on",
            "`capacity` is \"lots\", which is not a Kubernetes quantity; write it like `500Gi` or `4Ti`",
        ]
    );
}

#[tokio::test]
async fn update_storageclass_capacity_allows_expansion_records_capacity_and_is_undone() {
    let lab = lab().await;
    let params = json!({"poolname": "tank/k8s", "fstype": "zfs"});
    lab.kube.apply(json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "zfs"},
        "provisioner": "zfs.csi.openebs.io", "parameters": params, "allowVolumeExpansion": false}));
    let exec = KubeTask::new(lab.client.clone());
    let (cx, _rx) = cx(step("kubernetes-task", json!({"actions": ["update-storageclass-capacity"], "storage_class": "zfs", "capacity": "4Ti"})));
    assert_eq!(exec.check(&cx.step), Vec::<String>::new());
    assert_eq!(exec.targets(&cx.step), ["k8s:/StorageClass/zfs"]);

    let intent = exec.prepare(&cx).await.unwrap();
    assert_eq!(intent["storage_class"], json!({"name": "zfs", "allowVolumeExpansion": false, "capacity": null}));
    assert_eq!(exec.verify(&cx, &intent).await, Verified::NotDone);

    let outcome = done(exec.execute(&cx, &intent).await.unwrap());
    let result = &outcome["actions"]["update-storageclass-capacity"];
    assert_eq!(result["allowVolumeExpansion"], json!({"before": false, "after": true}));
    let sc = lab.kube.get("storage.k8s.io/v1", "StorageClass", None, "zfs").unwrap();
    assert_eq!(sc["allowVolumeExpansion"], json!(true));
    assert_eq!(sc["metadata"]["annotations"][CAPACITY_ANNOTATION], json!("4Ti"));
    assert_eq!(sc["parameters"], params, "parameters are immutable and untouched");
    assert!(matches!(exec.verify(&cx, &intent).await, Verified::Done(_)));

    let expected = Compensation::Undone(format!("restored StorageClass zfs (allowVolumeExpansion false, no {CAPACITY_ANNOTATION} annotation)"));
    assert_eq!(exec.compensate(&cx, &intent, &outcome).await.unwrap(), expected);
    let sc = lab.kube.get("storage.k8s.io/v1", "StorageClass", None, "zfs").unwrap();
    assert_eq!(sc["allowVolumeExpansion"], json!(false));
    assert!(sc["metadata"]["annotations"].get(CAPACITY_ANNOTATION).is_none(), "{sc}");
    assert_eq!(exec.compensate(&cx, &intent, &outcome).await.unwrap(), expected, "idempotent");

    let (missing, _rx) = self::cx(step("kubernetes-task", json!({"actions": ["update-storageclass-capacity"], "storage_class": "nvme"})));
    let err = exec.prepare(&missing).await.unwrap_err();
    assert_eq!(err.message, "StorageClass `nvme` does not exist; check `storage_class` (`kubectl get storageclass` lists them)");
}

fn pvc(ns: &str, name: &str, class: &str, size: &str, phase: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": ns},
           "spec": {"storageClassName": class, "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
           "status": {"phase": phase}})
}

#[tokio::test]
async fn migrate_pvc_if_needed_reports_and_refuses_what_it_cannot_move() {
    let lab = lab().await;
    lab.kube.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "media"}}));
    lab.kube.apply(pvc("apps", "db", "zfs", "10Gi", "Bound"));
    lab.kube.apply(pvc("media", "photos", "zfs", "600Gi", "Bound"));
    lab.kube.apply(pvc("apps", "cache", "zfs", "1Gi", "Pending"));
    lab.kube.apply(pvc("apps", "scratch", "local-path", "900Gi", "Pending"));
    let exec = KubeTask::new(lab.client.clone());
    let fields = json!({"actions": ["migrate-pvc-if-needed"], "storage_class": "zfs", "max_volume_size": "500Gi"});
    let (cx, _rx) = cx(step("kubernetes-task", fields.clone()));
    assert_eq!(exec.check(&cx.step), Vec::<String>::new());

    let intent = exec.prepare(&cx).await.unwrap();
    let err = exec.execute(&cx, &intent).await.unwrap_err();
    assert!(!err.retryable);
    assert_eq!(
        err.message,
        "2 PersistentVolumeClaims of StorageClass `zfs` need migration, which labops cannot do without a data mover: \
         apps/cache (Pending: no volume is bound), media/photos (requests 600Gi, more than max_volume_size 500Gi); \
         move the data by hand, or set `allow_pending: true` to accept them as they are"
    );
    assert_eq!(exec.verify(&cx, &intent).await, Verified::NotDone);

    let mut accepting = fields.clone();
    accepting["allow_pending"] = json!(true);
    let (cx, _rx) = self::cx(step("kubernetes-task", accepting));
    let outcome = done(exec.execute(&cx, &intent).await.unwrap());
    let report = &outcome["actions"]["migrate-pvc-if-needed"];
    let names = |key: &str| -> Vec<String> { report[key].as_array().unwrap().iter().map(|c| format!("{}/{}", c["namespace"].as_str().unwrap(), c["name"].as_str().unwrap())).collect() };
    assert_eq!(names("claims"), ["apps/cache", "apps/db", "media/photos"]);
    assert_eq!(names("needing_migration"), ["apps/cache", "media/photos"]);
    assert!(matches!(exec.verify(&cx, &intent).await, Verified::Done(v) if v["actions"]["migrate-pvc-if-needed"] == *report));
    assert_eq!(exec.compensate(&cx, &intent, &outcome).await.unwrap(), Compensation::NothingToUndo, "it changed nothing");

    // One namespace, no size limit: its one claim is bound, so nothing needs migration.
    let (cx, _rx) = self::cx(step("kubernetes-task", json!({"actions": ["migrate-pvc-if-needed"], "storage_class": "zfs", "namespace": "media"})));
    let outcome = done(exec.execute(&cx, &Value::Null).await.unwrap());
    assert_eq!(outcome["actions"]["migrate-pvc-if-needed"]["needing_migration"], json!([]));
    assert_eq!(outcome["actions"]["migrate-pvc-if-needed"]["claims"][0]["name"], json!("photos"));
}
