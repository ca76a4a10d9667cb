//! `workflow::kro::export`: the shared kro RGDs go out and come back through `workflow::check`
//! unchanged; owner's-form Kubernetes steps become kro resources ordered by CEL references;
//! anything else is refused with a sentence naming the steps.

use std::path::PathBuf;

use labops_core::workflow::kro::{self, ExportError};
use labops_core::workflow::{self, Bindings, Form, Workflow};
use serde_json::json;

/// `../shared` beside the repository, or `LABOPS_TEST_SHARED`.
fn shared() -> PathBuf {
    std::env::var_os("LABOPS_TEST_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
}

fn valid(text: &str) -> Workflow {
    let (w, report) = workflow::check(text);
    assert!(report.is_valid(), "{:#?}\n{text}", report.errors);
    w.expect("a valid workflow")
}

/// Plans with "example" (or 1) for every parameter without a default.
fn plan(w: &Workflow) -> workflow::Plan {
    let values: Bindings = w
        .parameters
        .values()
        .filter(|p| p.default.is_none())
        .map(|p| (p.name.clone(), if p.type_name == "integer" { json!(1) } else { json!("example") }))
        .collect();
    workflow::plan(w, &values).unwrap()
}

fn export(text: &str) -> Result<String, ExportError> {
    let w = valid(text);
    kro::export(&w, &plan(&w))
}

#[test]
fn shared_kro_rgds_round_trip_through_check() {
    let dir = shared().join("reference/kro");
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "yaml")).collect();
    files.sort();
    assert_eq!(files.len(), 3, "{}", dir.display());
    for f in files {
        let original = valid(&std::fs::read_to_string(&f).unwrap());
        let yaml = kro::export(&original, &plan(&original)).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let back = valid(&yaml);
        assert_eq!(back.form, Form::Kro);
        assert_eq!(back.name, original.name);
        let strip = |w: &Workflow| -> Vec<_> {
            let mut steps: Vec<_> = w
                .steps
                .iter()
                .map(|s| (s.name.clone(), s.step_type.clone(), s.fields.clone(), s.ready_when.clone(), s.include_when.clone(), s.for_each.clone()))
                .collect();
            steps.sort_by(|a, b| a.0.cmp(&b.0));
            steps
        };
        assert_eq!(strip(&back), strip(&original), "{}:\n{yaml}", f.display());
        let refs = |w: &Workflow| -> Vec<(String, Vec<String>)> {
            let mut r: Vec<_> = w.steps.iter().map(|s| (s.name.clone(), s.references.iter().map(|n| n.name.clone()).collect())).collect();
            r.sort();
            r
        };
        assert_eq!(refs(&back), refs(&original), "{}", f.display());
        let params = |w: &Workflow| -> Vec<_> {
            w.parameters.values().map(|p| (p.name.clone(), p.type_name.clone(), p.default.clone(), p.description.clone())).collect()
        };
        assert_eq!(params(&back), params(&original), "{}", f.display());
    }
}

const OWNER: &str = r#"apiVersion: kro.run/v1alpha1
kind: ResourceGraphDefinition
metadata:
  name: web-app
spec:
  resources:
    - name: app-config
      type: kubernetes-task
      namespace: "{{.ns}}"
      manifests:
        - apiVersion: v1
          kind: ConfigMap
          metadata:
            name: "{{.name}}-config"
          data:
            greeting: hello
    - name: k3s-deployment
      type: kubernetes-deployment
      dependencies: [app-config]
      namespace: "{{.ns}}"
      manifests: |
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: "{{ .name }}"
          annotations:
            team: web
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
                  image: nginx
        ---
        apiVersion: v1
        kind: Service
        metadata:
          name: "{{ .name }}"
        spec:
          selector: {app: web}
          ports: [{port: 80}]
        ---
        apiVersion: storage.k8s.io/v1
        kind: StorageClass
        metadata:
          name: fast
        provisioner: zfs.csi.openebs.io
"#;

#[test]
fn owner_kubernetes_steps_become_kro_resources_ordered_by_references() {
    let yaml = export(OWNER).unwrap();
    let back = valid(&yaml);
    assert_eq!(back.form, Form::Kro);
    let names: Vec<&str> = back.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["appConfig", "k3sDeploymentDeployment", "k3sDeploymentService", "k3sDeploymentStorageClass"]);
    assert!(back.steps.iter().all(|s| s.step_type == "kubernetes-resource"));

    // The dependency is a CEL reference now: the plan puts the deployment after the config.
    let p = plan(&back);
    let stages: Vec<Vec<&str>> = p.stages.iter().map(|s| s.steps.iter().map(|x| x.name.as_str()).collect()).collect();
    assert_eq!(stages, vec![vec!["appConfig"], vec!["k3sDeploymentDeployment", "k3sDeploymentService", "k3sDeploymentStorageClass"]]);

    let deployment = &back.steps[1].fields["template"];
    assert_eq!(deployment["metadata"]["name"], json!("${schema.spec.name}"));
    assert_eq!(deployment["metadata"]["namespace"], json!("${schema.spec.ns}"), "the step's namespace");
    assert_eq!(deployment["metadata"]["annotations"]["team"], json!("web"), "its own annotations are kept");
    assert_eq!(deployment["metadata"]["annotations"][kro::AFTER_ANNOTATION], json!("${appConfig.metadata.name}"));
    assert_eq!(back.steps[1].ready_when.len(), 2, "a Deployment is ready once rolled out");
    assert!(back.steps[1].ready_when[1].contains("availableReplicas"), "{:?}", back.steps[1].ready_when);
    assert!(back.steps[2].ready_when.is_empty(), "a Service has no rollout");
    assert_eq!(back.steps[0].fields["template"]["metadata"]["name"], json!("${schema.spec.name}-config"));
    let sc = &back.steps[3].fields["template"];
    assert!(sc["metadata"].get("namespace").is_none(), "a StorageClass is cluster-scoped: {sc}");

    // The placeholders became schema fields.
    let params: Vec<(&str, &str)> = back.parameters.values().map(|p| (p.name.as_str(), p.type_name.as_str())).collect();
    assert_eq!(params, [("name", "string"), ("ns", "string")]);
    assert!(yaml.contains("kind: WebApp"), "{yaml}");
    assert!(
        yaml.contains("  - ${k3sDeploymentDeployment.status.?availableReplicas.orValue(0) == k3sDeploymentDeployment.spec.replicas}\n"),
        "long expressions stay on one line: {yaml}"
    );
}

#[test]
fn wait_for_rollout_false_leaves_ready_when_out() {
    let text = OWNER.replace("      dependencies: [app-config]\n", "      dependencies: [app-config]\n      wait_for_rollout: false\n");
    let back = valid(&export(&text).unwrap());
    assert!(back.steps[1].ready_when.is_empty());
}

#[test]
fn non_kubernetes_steps_are_refused_by_name_and_type() {
    let text = format!(
        "{OWNER}    - name: snapshot
      type: proxmox-task
      actions: [snapshot]
    - name: notes
      type: git-commit
      dependencies: [k3s-deployment]
      files_to_update: [docs/web.md]
"
    );
    let err = export(&text).unwrap_err();
    assert!(matches!(&err, ExportError::NotKubernetes(steps) if steps.len() == 2), "{err:?}");
    assert_eq!(
        err.to_string(),
        "export-kro needs a graph of Kubernetes resources only; step snapshot is a proxmox-task, step notes is a git-commit; \
         remove them or run the workflow with labops"
    );
}

#[test]
fn kubernetes_steps_kro_cannot_express_are_refused_with_the_reason() {
    let actions = OWNER.replace(
        "    - name: k3s-deployment\n",
        "    - name: storage\n      type: kubernetes-task\n      storage_class: fast\n      actions: [update-storageclass-capacity]\n    - name: k3s-deployment\n",
    );
    let err = export(&actions).unwrap_err().to_string();
    assert!(err.starts_with("export-kro cannot express step storage: kubernetes-task actions (update-storageclass-capacity)"), "{err}");

    let human = OWNER.replace("      dependencies: [app-config]\n", "      dependencies: [app-config]\n      waitForHuman: true\n");
    let err = export(&human).unwrap_err().to_string();
    assert!(err.starts_with("export-kro cannot express step k3s-deployment: it waits for a human"), "{err}");

    let path = OWNER.replace("      manifests:\n        - apiVersion: v1\n          kind: ConfigMap", "      manifests: [\"apps/web/\"]\n      x:\n        - apiVersion: v1\n          kind: ConfigMap");
    let (w, _) = workflow::check(&path);
    let w = w.unwrap();
    let err = kro::export(&w, &plan(&w)).unwrap_err().to_string();
    assert!(err.contains("step app-config: `manifests` entry 1 (\"apps/web/\") is not a Kubernetes object"), "{err}");
}

#[test]
fn a_plan_of_another_workflow_is_refused() {
    let w = valid(OWNER);
    let other = valid(&OWNER.replace("name: web-app", "name: other"));
    let err = kro::export(&w, &plan(&other)).unwrap_err();
    assert_eq!(err.to_string(), "the plan is for workflow `other`, not `web-app`; plan the workflow you export");
}
