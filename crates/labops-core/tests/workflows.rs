//! Workflows end to end through the public API: the shared reference workflows and kro RGDs, the
//! shipped library in `workflows/`, and the corpus of broken workflows with the messages they
//! must produce.
//!
//! The corpus: each `tests/workflow_corpus/NAME.yaml` has a `NAME.expected` listing, one a line,
//! `error LINE:COL: message` and `warning LINE:COL: message` from validation, then (for a valid
//! workflow) `plan-error LINE:COL: message` from planning without parameter values. Run with
//! `UPDATE_EXPECT=1` to rewrite the expected files after a deliberate change, and review the diff.

use std::path::{Path, PathBuf};

use labops_core::workflow::{self, Bindings, Form, PlanError};
use serde_json::json;

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared` beside the repository, or `LABOPS_TEST_SHARED`.
fn shared() -> PathBuf {
    std::env::var_os("LABOPS_TEST_SHARED").map(PathBuf::from).unwrap_or_else(|| manifest().join("../../../shared"))
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Checks `p` and plans it, giving "example" (or 1 for numbers) to every parameter without a default.
fn validate_and_plan(p: &Path) -> workflow::Plan {
    let (w, report) = workflow::check(&read(p));
    assert!(report.is_valid(), "{}: {:#?}", p.display(), report.errors);
    let w = w.expect("a valid workflow");
    let values: Bindings = w
        .parameters
        .values()
        .filter(|p| p.default.is_none())
        .map(|p| (p.name.clone(), if p.type_name == "integer" { json!(1) } else { json!("example") }))
        .collect();
    workflow::plan(&w, &values).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn stage_names(plan: &workflow::Plan) -> Vec<Vec<&str>> {
    plan.stages.iter().map(|s| s.steps.iter().map(|x| x.name.as_str()).collect()).collect()
}

#[test]
fn owner_storage_expansion_validates_and_plans_in_order() {
    let plan = validate_and_plan(&shared().join("reference/workflows/storage-expansion-workflow.yaml"));
    assert_eq!(plan.form, Form::Owner);
    assert_eq!(
        stage_names(&plan),
        vec![
            vec!["capacity-analysis"],
            vec!["hardware-procurement"],
            vec!["disk-detection"],
            vec!["zfs-pool-expansion"],
            vec!["k3s-storage-update"],
            vec!["capacity-validation"],
            vec!["documentation-update"]
        ]
    );
    let step = |n: &str| plan.stages.iter().flat_map(|s| &s.steps).find(|s| s.name == n).unwrap();
    assert!(step("hardware-procurement").waits_for_human);
    assert!(step("zfs-pool-expansion").mutates);
    assert!(!step("disk-detection").mutates);
    assert_eq!(step("disk-detection").fields["validation_commands"][1], json!("dmesg | grep nvme"));
    assert_eq!(step("hardware-procurement").fields["procurement_details"]["estimated_cost"], json!("$150"));
}

#[test]
fn owner_service_template_binds_its_parameter() {
    let p = shared().join("reference/workflows/homelab-service-template.yaml");
    let (w, report) = workflow::check(&read(&p));
    assert!(report.is_valid(), "{:#?}", report.errors);
    let w = w.unwrap();
    assert_eq!(w.parameters.keys().collect::<Vec<_>>(), vec!["service_name"]);
    match workflow::plan(&w, &Bindings::new()) {
        Err(PlanError::Parameters(e)) => {
            assert_eq!(e[0].to_string(), "19:16: missing parameter `service_name` (string): pass --set service_name=VALUE or put it in a --values file")
        }
        other => panic!("expected a missing parameter, got {other:?}"),
    }
    let plan = workflow::plan(&w, &[("service_name".to_string(), json!("paperless"))].into()).unwrap();
    assert_eq!(plan.stages.len(), 10);
    let dns = &plan.stages[2].steps[0];
    assert_eq!(dns.fields["pattern"], json!("paperless.homelab → LoadBalancer IP"));
}

#[test]
fn kro_rgds_validate_and_plan() {
    let dir = shared().join("reference/kro");
    let gitops = validate_and_plan(&dir.join("gitops-app.yaml"));
    assert_eq!(gitops.form, Form::Kro);
    assert_eq!(stage_names(&gitops), vec![vec!["deployment", "service", "kustomization"]]);
    let dep = &gitops.stages[0].steps[0];
    assert_eq!(dep.fields["template"]["spec"]["replicas"], json!(1), "typed parameter filled in");
    assert_eq!(dep.ready_when, vec!["${deployment.spec.replicas == deployment.status.availableReplicas}"]);

    let ext = validate_and_plan(&dir.join("external-references.yaml"));
    assert_eq!(stage_names(&ext), vec![vec!["input"], vec!["owned"]], "owned depends on input through optional CEL");
    assert_eq!(ext.parameters["name"], json!("foobar"));
    assert!(!ext.stages[0].steps[0].mutates, "an externalRef only reads");

    let multi = validate_and_plan(&dir.join("multi-resource.yaml"));
    assert_eq!(multi.parameters["maxReplicas"], json!(10));
    assert_eq!(multi.stages[0].steps[3].fields["template"]["metadata"]["name"], json!("some-app-hpa"));
}

#[test]
fn the_library_validates_and_plans() {
    let files = yaml_files(&manifest().join("../../workflows"));
    assert!(files.len() >= 6, "workflows/ should hold the shipped templates");
    for f in files {
        let plan = validate_and_plan(&f);
        assert!(!plan.stages.is_empty(), "{}", f.display());
    }
}

#[test]
fn broken_workflows_report_what_is_wrong_and_where() {
    let dir = manifest().join("tests/workflow_corpus");
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failures = Vec::new();
    let files = yaml_files(&dir);
    assert!(files.len() >= 9);
    for f in files {
        let (w, report) = workflow::check(&read(&f));
        let mut got: Vec<String> = report.errors.iter().map(|d| format!("error {d}")).collect();
        got.extend(report.warnings.iter().map(|d| format!("warning {d}")));
        if report.is_valid() {
            match workflow::plan(&w.unwrap(), &Bindings::new()) {
                Ok(_) => {}
                Err(PlanError::Parameters(e)) => got.extend(e.iter().map(|d| format!("plan-error {d}"))),
                Err(e) => got.push(format!("plan-error {e}")),
            }
        }
        let expected_path = f.with_extension("expected");
        if update {
            std::fs::write(&expected_path, got.join("\n") + "\n").unwrap();
            continue;
        }
        let expected: Vec<String> = read(&expected_path)
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect();
        assert!(got.iter().any(|l| !l.starts_with("warning")), "{}: a broken workflow must fail", f.display());
        if got != expected {
            failures.push(format!("{}:\n  expected:\n    {}\n  got:\n    {}", f.display(), expected.join("\n    "), got.join("\n    ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
