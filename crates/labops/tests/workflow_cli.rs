//! `labops workflow validate|plan` driven as a user runs them: the real binary, real files, exit
//! codes and output. These commands need no config and no lab.

use std::path::PathBuf;
use std::process::{Command, Output};

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn shared() -> PathBuf {
    std::env::var_os("LABOPS_TEST_SHARED").map(PathBuf::from).unwrap_or_else(|| manifest().join("../../../shared"))
}

/// Runs labops with a config path that does not exist and an empty HOME: the workflow commands
/// must not need either.
fn labops(args: &[&str]) -> Output {
    let home = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_labops"))
        .args(["--config", "/nonexistent/labops.toml"])
        .args(args)
        .env("HOME", home.path())
        .env_remove("LABOPS_CONFIG")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn validate_accepts_the_library_and_the_references() {
    let mut files = vec![
        shared().join("reference/workflows/storage-expansion-workflow.yaml"),
        shared().join("reference/kro/external-references.yaml"),
    ];
    files.extend(
        std::fs::read_dir(manifest().join("../../workflows"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml")),
    );
    for f in files {
        let o = labops(&["workflow", "validate", f.to_str().unwrap()]);
        assert!(o.status.success(), "{}: {}{}", f.display(), stdout(&o), String::from_utf8_lossy(&o.stderr));
        assert!(stdout(&o).contains(": valid ("), "{}", stdout(&o));
    }
}

#[test]
fn validate_prints_every_error_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(
        &file,
        "apiVersion: kro.run/v1alpha1\nkind: ResourceGraphDefinition\nmetadata:\n  name: broken\nspec:\n  resources:\n    - name: check\n      type: system-chek\n    - name: grow\n      type: proxmox-task\n      dependencies: [chek]\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let o = labops(&["workflow", "validate", f]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(out.contains(&format!("{f}:8:13: unknown step type `system-chek` (did you mean system-check?)")), "{out}");
    assert!(out.contains(&format!("{f}:9:7: step `grow` (proxmox-task) needs one of `commands` or `actions`")), "{out}");
    assert!(out.contains(&format!("{f}:11:22: step `grow` depends on `chek`, which is not a step; did you mean check?")), "{out}");
    assert!(out.contains(&format!("{f}: 3 error(s)")), "{out}");
}

#[test]
fn plan_binds_parameters_from_set_and_values() {
    let template = shared().join("reference/workflows/homelab-service-template.yaml");
    let t = template.to_str().unwrap();
    let o = labops(&["workflow", "plan", t]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains(":19:16: missing parameter `service_name`"), "{}", stdout(&o));

    let o = labops(&["workflow", "plan", t, "--set", "service_name=paperless"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let out = stdout(&o);
    assert!(out.starts_with("Plan for homelab-service-template: 10 step(s) in 10 stage(s)"), "{out}");
    assert!(out.contains("Parameters: service_name=paperless"), "{out}");
    assert!(out.contains("not available yet: needs the OPNsense and Traefik integrations"), "{out}");
    assert!(!out.contains("needs the AI engine"), "the AI steps run through the AI engine: {out}");

    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    std::fs::write(&values, "service_name: ollama\n").unwrap();
    let o = labops(&["workflow", "plan", t, "--values", values.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let plan: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(plan["parameters"]["service_name"], "ollama");
    assert_eq!(plan["stages"][2]["steps"][0]["fields"]["pattern"], "ollama.homelab → LoadBalancer IP");
}

#[test]
fn plan_shows_parallel_stages_of_a_kro_graph() {
    let rgd = shared().join("reference/kro/gitops-app.yaml");
    let args = ["workflow", "plan", rgd.to_str().unwrap(), "--set", "name=web", "--set", "namespace=apps", "--set", "image=nginx:1.27"];
    let o = labops(&[&args[..], &["--set", "replicas=2", "--set", "env=prod", "--json"]].concat());
    assert!(o.status.success(), "{}", stdout(&o));
    let plan: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let stage = &plan["stages"][0]["steps"];
    assert_eq!(stage.as_array().unwrap().len(), 3, "three independent resources run together");
    assert_eq!(stage[0]["fields"]["template"]["spec"]["replicas"], 2, "--set text becomes the schema's integer");
    assert_eq!(stage[2]["fields"]["template"]["spec"]["path"], "./overlays/prod");

    let o = labops(&[&args[..], &["--set", "replicas=two"]].concat());
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("parameter `replicas`: \"two\" is not an integer"), "{}", stdout(&o));
}

#[test]
fn export_kro_writes_an_rgd_that_validates_and_refuses_other_steps() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["gitops-app.yaml", "multi-resource.yaml", "external-references.yaml"] {
        let src = shared().join("reference/kro").join(name);
        let out = labops(&["workflow", "export-kro", src.to_str().unwrap()]);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let text = stdout(&out);
        assert!(text.contains("kind: ResourceGraphDefinition"), "{text}");
        let exported = dir.path().join(name);
        std::fs::write(&exported, &text).unwrap();
        let v = labops(&["workflow", "validate", exported.to_str().unwrap()]);
        assert!(v.status.success(), "{name} exported does not validate: {}{text}", stdout(&v));
    }
    let owner = manifest().join("../../workflows/storage-expansion-workflow.yaml");
    let out = labops(&["workflow", "export-kro", owner.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Kubernetes resources only") && err.contains("proxmox-task"), "{err}");
}
