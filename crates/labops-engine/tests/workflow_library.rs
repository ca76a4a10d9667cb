//! The shipped workflow library (`workflows/*.yaml`) against the engine's submit-time check:
//! every template, planned with its values file (`workflows/values/<template>.yaml`), is
//! submitted to an [`Engine`] that has every executor labops ships. A template whose steps all
//! run today must be accepted (a run is stored); a template with steps of a type that is not
//! available yet must be refused for those steps only. Any other refusal (an unknown Proxmox
//! action, a command off the allowlist, a success criterion the checker cannot read, a manifest
//! given as a path...) fails the test, unless it is listed in [`KNOWN_UNRUNNABLE`] with its
//! reason.
//!
//! No step runs: `submit` only checks. The executors point at nothing that answers (a loopback
//! port for Proxmox, an empty fake API server for Kubernetes, an empty git repository), which is
//! enough, since checks send no request. What the steps name (nodes, guests, storage, hosts) is
//! resolved against the inventory of the reference homelab, served by a real fakepve, as
//! `labops workflow run` resolves it against the live lab.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use labops_core::workflow::{self, Availability, Plan};
use labops_engine::runs::basic::{ExternalTask, Milestone};
use labops_engine::runs::commands::{CommandRunner, NodeCommands, SshSettings};
use labops_engine::runs::git::{GitCommit, GitSettings};
use labops_engine::runs::kube::{KubeDeployment, KubeTask};
use labops_engine::runs::proxmox::ProxmoxTask;
use labops_engine::runs::system::SystemCheck;
use labops_engine::runs::{Engine, Executor, Registry, RunError};
use labops_integrations::proxmox::{Auth, Client, Settings};
use labops_integrations::{Secret, TlsTrust};
use labops_store::Store;
use labops_core::inventory::Inventory;
use labops_testkit::FakeKube;
use labops_testkit::fakepve::FakePve;

/// The reference homelab's inventory, read from a fakepve serving it.
async fn reference_inventory(pve: &FakePve) -> Inventory {
    labops_integrations::install_crypto_provider();
    let client = Client::new(Settings {
        url: pve.url.clone(),
        auth: Auth::Token { id: "root@pam!labops".into(), secret: Secret::new("token-secret-for-tests") },
        tls: TlsTrust::Ca(std::fs::read(&pve.cafile).expect("fakepve's CA")),
        timeout: Duration::from_secs(10),
        concurrency: 4,
    })
    .expect("client");
    let fetched = client.fetch().await.expect("the reference lab answers");
    let (part, _) = labops_integrations::proxmox::to_part(&fetched);
    // The machine the onboarding template joins to the cluster, declared in `[[hosts]]` first
    // as that template's header asks.
    let mut hosts = labops_core::inventory::Part::default();
    hosts.entities.push(labops_core::inventory::Entity::new(
        labops_core::inventory::EntityKind::Host,
        labops_core::inventory::ids::host("quiet-heron"),
        "quiet-heron",
        "unknown",
        "config",
    ));
    Inventory::build([part, hosts])
}

/// Steps of the library that cannot run as the template is written, on purpose: (template,
/// step, a fragment of the refusal, why it stays).
const KNOWN_UNRUNNABLE: &[(&str, &str, &str, &str)] = &[
    (
        "proxmox-node-onboarding",
        "k3s-vm",
        "no vm is named \"vm/9000\"",
        "the reference homelab has no VM template to clone; a real lab sets k3s_template to its own",
    ),
    (
    "homelab-service-template",
    "k3s-deployment",
    "`manifests` is missing",
    "the owner's design document gives the service deployment no manifests: each service brings its own, \
     and giving them one would rewrite the owner's template",
    ),
];

/// The repository's `workflows/` directory.
fn library() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../workflows")
}

/// Every template of the library, sorted.
fn templates() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(library())
        .expect("workflows/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// The template's name: its file name without `.yaml`.
fn name_of(path: &Path) -> String {
    path.file_stem().expect("a file name").to_string_lossy().into_owned()
}

/// Validates `path` and plans it with `workflows/values/<name>.yaml`.
fn plan(path: &Path) -> Plan {
    let name = name_of(path);
    let text = std::fs::read_to_string(path).expect("readable template");
    let (w, report) = workflow::check(&text);
    assert!(report.is_valid(), "{name}: {:#?}", report.errors);
    let values_path = library().join("values").join(format!("{name}.yaml"));
    let values_text = std::fs::read_to_string(&values_path)
        .unwrap_or_else(|e| panic!("{name}: every template has a values file at {}: {e}", values_path.display()));
    let values = workflow::parse_values(&values_text).unwrap_or_else(|e| panic!("{}: {e}", values_path.display()));
    workflow::plan(&w.expect("a valid workflow"), &values).unwrap_or_else(|e| panic!("{name} with its values file: {e}"))
}

/// A Kubernetes client for the fake API server, through a kubeconfig as labops reads one.
async fn kube_client(kube: &FakeKube, dir: &Path) -> kube::Client {
    let kc = Kubeconfig::read_from(kube.kubeconfig(dir)).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.expect("config");
    kube::Client::try_from(config).expect("client")
}

/// `git init` in `dir`.
fn git_init(dir: &Path) {
    let status = std::process::Command::new("git").arg("init").arg("--quiet").arg(dir).status().expect("git is installed");
    assert!(status.success(), "git init {}", dir.display());
}

/// A registry with every executor labops ships, wired as `labops` wires them.
fn registry(kube: kube::Client, repository: &Path) -> Registry {
    let runner = CommandRunner::new(SshSettings::default());
    let node_commands: Arc<dyn Executor> = Arc::new(NodeCommands::new(runner.clone()));
    // Nothing listens on port 1: a check sends no request, and a test that did would fail fast.
    let client = Client::new(Settings {
        url: "https://127.0.0.1:1".into(),
        auth: Auth::Token { id: "root@pam!labops".into(), secret: Secret::new("unused") },
        tls: TlsTrust::System,
        timeout: Duration::from_secs(1),
        concurrency: 1,
    })
    .expect("client");
    let mut reg = Registry::new();
    reg.register(Arc::new(ExternalTask))
        .register(Arc::new(Milestone))
        .register(Arc::new(SystemCheck::new(runner)))
        .register(Arc::new(ProxmoxTask::new(Arc::new(client), Some(node_commands))))
        .register(Arc::new(GitCommit::new(GitSettings::new(repository))))
        .register(Arc::new(KubeDeployment::new(kube.clone())))
        .register(Arc::new(KubeTask::new(kube)));
    // The AI steps, over a local model that nothing serves (checks call no model).
    let spec = labops_ai::provider::ProviderSpec {
        kind: labops_ai::provider::ProviderKind::Ollama,
        url: "http://127.0.0.1:1".into(),
        model: "unused".into(),
        api_key: None,
        leaves_machine: false,
        price: Default::default(),
        timeout: Duration::from_secs(1),
        native_tools: false,
    };
    let http = labops_integrations::http_client(&TlsTrust::System, Duration::from_secs(1)).expect("http client");
    let model: Arc<dyn labops_ai::model::Model> = Arc::new(labops_ai::provider::GenaiModel::new(spec, http).expect("model"));
    let ai = Arc::new(labops_ai::engine::Ai::new(Some(model), None, Default::default(), Default::default(), None));
    for e in labops_engine::runs::ai::AiStep::all(ai) {
        reg.register(e);
    }
    reg
}

/// The refusal `submit` gives a step of a type that is not available yet.
fn later_refusal(step: &str, step_type: &str) -> String {
    format!("step `{step}` ({step_type}) is not available yet")
}

#[tokio::test]
async fn every_template_passes_the_submit_check_with_its_values() {
    let dir = tempfile::tempdir().expect("temp dir");
    let repository = dir.path().join("repo");
    std::fs::create_dir(&repository).expect("repo dir");
    git_init(&repository);
    let kube = FakeKube::start().await;
    let client = kube_client(&kube, dir.path()).await;
    let store = Store::open(&dir.path().join("labops.db")).await.expect("store");
    let engine = Engine::new(store, registry(client, &repository), 4, 2);
    let pve = FakePve::reference();
    let inventory = reference_inventory(&pve).await;

    let files = templates();
    assert!(files.len() >= 7, "workflows/ holds the shipped templates: {files:?}");
    let mut failures = Vec::new();
    for path in &files {
        let name = name_of(path);
        let plan = plan(path);
        let later: Vec<(String, String)> = plan
            .stages
            .iter()
            .flat_map(|s| &s.steps)
            .filter(|s| matches!(s.availability, Availability::Later(_)))
            .map(|s| (s.name.clone(), s.step_type.clone()))
            .collect();
        let known: Vec<&(&str, &str, &str, &str)> = KNOWN_UNRUNNABLE.iter().filter(|k| k.0 == name).collect();
        match engine.submit_grounded(&plan, "test", Some(&inventory)).await {
            Ok(id) => {
                let run = engine.status(id).await.expect("the submitted run is stored");
                assert_eq!(run.run.workflow, plan.workflow, "{name}");
                if !later.is_empty() || !known.is_empty() {
                    failures.push(format!("{name}: accepted, but steps {later:?} are not available yet and {known:?} should be refused"));
                }
            }
            Err(RunError::NotRunnable(problems)) => {
                if later.is_empty() && known.is_empty() {
                    failures.push(format!("{name}: every step should run, but submit refused:\n  - {}", problems.join("\n  - ")));
                    continue;
                }
                for p in &problems {
                    let expected_later = later.iter().any(|(step, ty)| p.starts_with(&later_refusal(step, ty)));
                    let expected_known = known.iter().any(|(_, step, fragment, _)| p.starts_with(&format!("step `{step}`")) && p.contains(fragment));
                    if !expected_later && !expected_known {
                        failures.push(format!("{name}: unexpected refusal: {p}"));
                    }
                }
                for (step, ty) in &later {
                    if !problems.iter().any(|p| p.starts_with(&later_refusal(step, ty))) {
                        failures.push(format!("{name}: step `{step}` ({ty}) should be refused as not available yet"));
                    }
                }
                for (_, step, fragment, why) in &known {
                    if !problems.iter().any(|p| p.starts_with(&format!("step `{step}`")) && p.contains(fragment)) {
                        failures.push(format!(
                            "{name}: step `{step}` is listed as unrunnable ({why}) but was not refused with `{fragment}`: remove it from KNOWN_UNRUNNABLE"
                        ));
                    }
                }
            }
            Err(other) => failures.push(format!("{name}: submit failed: {other}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_values_file_belongs_to_a_template() {
    let names: Vec<String> = templates().iter().map(|p| name_of(p)).collect();
    for entry in std::fs::read_dir(library().join("values")).expect("workflows/values/ exists") {
        let path = entry.expect("readable entry").path();
        let name = name_of(&path);
        assert!(names.contains(&name), "{} has no template workflows/{name}.yaml", path.display());
    }
}
