//! The registry of step types and of named `kubernetes-task` actions.
//!
//! Each step type declares its name, a one-line description, the fields it needs and accepts,
//! whether it changes the lab, whether it waits for a human, and whether an executor exists yet.
//! Types whose executor comes with a later issue validate now; running one fails with "not
//! available yet: needs ...".

use serde::Serialize;

/// What a field's value must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldKind {
    /// Anything.
    Any,
    /// A scalar.
    Scalar,
    /// A list of scalars (for example commands or file names).
    List,
    /// A mapping.
    Mapping,
}

/// One field a step type knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Field {
    /// The key as written in the YAML.
    pub name: &'static str,
    /// What its value must look like.
    pub kind: FieldKind,
}

/// A field requirement: one of the listed fields must be present.
pub type Requirement = &'static [&'static str];

/// Whether a step type can run today.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "needs")]
pub enum Availability {
    /// It gets an executor with the workflow engine (issue #3).
    Now,
    /// It validates now and runs once this lands (what it needs, with the issue).
    Later(&'static str),
}

/// A step type: what a step of this type needs and does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StepType {
    /// The `type:` value.
    pub name: &'static str,
    /// One line on what it does.
    pub description: &'static str,
    /// Requirements: each needs one of its fields (usually a single one).
    pub required: &'static [Requirement],
    /// Every field it knows beyond the common ones (required ones included).
    pub fields: &'static [Field],
    /// Whether it changes anything in the lab.
    pub mutates: bool,
    /// Whether it always waits for a human (besides `waitForHuman: true`).
    pub waits_for_human: bool,
    /// Whether it can run yet.
    pub availability: Availability,
}

impl StepType {
    /// The declaration of field `name`, if this type knows it.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// Fields every owner's-form step may have, whatever its type.
pub const COMMON_FIELDS: &[Field] = &[
    f("name", FieldKind::Scalar),
    f("type", FieldKind::Scalar),
    f("dependencies", FieldKind::List),
    f("waitForHuman", FieldKind::Scalar),
    f("description", FieldKind::Scalar),
];

const fn f(name: &'static str, kind: FieldKind) -> Field {
    Field { name, kind }
}

const CHANGE: Availability = Availability::Later("needs the change workflow with GitHub (#4)");
const NET: Availability = Availability::Later("needs the OPNsense and Traefik integrations (no issue yet)");
const KRO: Availability =
    Availability::Later("runs in the cluster under kro: `labops workflow export-kro` writes the RGD for FluxCD to apply");
const MON: Availability = Availability::Later("needs the Grafana and Uptime Kuma integrations (no issue yet)");

/// Every known step type, sorted by name.
pub const STEP_TYPES: &[StepType] = &[
    StepType {
        name: "ai-analysis",
        description: "The AI engine analyses the lab for the work ahead (resources, risks).",
        required: &[],
        fields: &[f("prompt", FieldKind::Scalar), f("analysis_output", FieldKind::Any)],
        mutates: false,
        waits_for_human: false,
        availability: Availability::Now,
    },
    StepType {
        name: "ai-configuration",
        description: "The AI engine drafts a deployed service's configuration from a prompt and examples (applying it is a later step's or a human's job).",
        required: &[&["prompt"]],
        fields: &[f("prompt", FieldKind::Scalar), f("examples", FieldKind::Mapping)],
        mutates: false,
        waits_for_human: false,
        availability: Availability::Now,
    },
    StepType {
        name: "ai-task",
        description: "The AI engine answers a question or drafts a recommendation.",
        required: &[],
        fields: &[f("prompt", FieldKind::Scalar), f("analysis_output", FieldKind::Any)],
        mutates: false,
        waits_for_human: false,
        availability: Availability::Now,
    },
    StepType {
        name: "ai-validation",
        description: "The AI engine checks the outcome against success criteria.",
        required: &[&["success_criteria"]],
        fields: &[f("success_criteria", FieldKind::List), f("prompt", FieldKind::Scalar), f("evidence", FieldKind::Any)],
        mutates: false,
        waits_for_human: false,
        availability: Availability::Now,
    },
    StepType {
        name: "auto-documentation",
        description: "Writes the documentation of the change.",
        required: &[],
        fields: &[f("files_to_update", FieldKind::List), f("prompt", FieldKind::Scalar)],
        mutates: true,
        waits_for_human: false,
        availability: CHANGE,
    },
    StepType {
        name: "backup-monitoring",
        description: "Adds backup and uptime monitors (Uptime Kuma) for the service.",
        required: &[],
        fields: &[f("monitors", FieldKind::Any), f("targets", FieldKind::List)],
        mutates: true,
        waits_for_human: false,
        availability: MON,
    },
    StepType {
        name: "external-task",
        description: "Waits for a human to do something outside the lab and mark it done or failed.",
        required: &[],
        fields: &[
            f("instructions", FieldKind::Scalar),
            f("procurement_details", FieldKind::Mapping),
            f("form", FieldKind::Mapping),
            f("timeout", FieldKind::Scalar),
        ],
        mutates: false,
        waits_for_human: true,
        availability: Availability::Now,
    },
    StepType {
        name: "git-commit",
        description: "Commits the listed files with real git.",
        required: &[&["files_to_update"]],
        fields: &[
            f("files_to_update", FieldKind::List),
            f("message", FieldKind::Scalar),
            f("repository", FieldKind::Scalar),
            f("branch", FieldKind::Scalar),
        ],
        mutates: true,
        waits_for_human: false,
        availability: Availability::Now,
    },
    StepType {
        name: "github-integration",
        description: "Opens, updates or closes the GitHub issue that tracks the work.",
        required: &[],
        fields: &[
            f("action", FieldKind::Scalar),
            f("repository", FieldKind::Scalar),
            f("title", FieldKind::Scalar),
            f("labels", FieldKind::List),
        ],
        mutates: true,
        waits_for_human: false,
        availability: CHANGE,
    },
    StepType {
        name: "ingress-route",
        description: "Publishes the service through a Traefik IngressRoute.",
        required: &[],
        fields: &[
            f("host", FieldKind::Scalar),
            f("service", FieldKind::Scalar),
            f("port", FieldKind::Scalar),
            f("tls", FieldKind::Any),
        ],
        mutates: true,
        waits_for_human: false,
        availability: NET,
    },
    StepType {
        name: "kubernetes-deployment",
        description: "Server-side applies manifests and waits for the rollout.",
        required: &[],
        fields: &[
            f("manifests", FieldKind::Any),
            f("namespace", FieldKind::Scalar),
            f("wait_for_rollout", FieldKind::Scalar),
            f("rollout_timeout", FieldKind::Scalar),
        ],
        mutates: true,
        waits_for_human: false,
        availability: Availability::Now,
    },
    StepType {
        name: "kubernetes-external-ref",
        description: "A kro externalRef: reads an existing Kubernetes object that other steps use.",
        required: &[&["externalRef"]],
        fields: &[f("externalRef", FieldKind::Mapping)],
        mutates: false,
        waits_for_human: false,
        availability: KRO,
    },
    StepType {
        name: "kubernetes-resource",
        description: "A kro template: server-side applies one Kubernetes object and waits until ready.",
        required: &[&["template"]],
        fields: &[f("template", FieldKind::Mapping)],
        mutates: true,
        waits_for_human: false,
        availability: KRO,
    },
    StepType {
        name: "kubernetes-task",
        description: "Applies manifests or runs named Kubernetes actions from the action registry.",
        required: &[&["actions", "manifests"]],
        fields: &[
            f("actions", FieldKind::List),
            f("manifests", FieldKind::Any),
            f("namespace", FieldKind::Scalar),
            f("storage_class", FieldKind::Scalar),
            f("capacity", FieldKind::Scalar),
            f("max_volume_size", FieldKind::Scalar),
            f("allow_pending", FieldKind::Scalar),
            f("wait_for_rollout", FieldKind::Scalar),
            f("rollout_timeout", FieldKind::Scalar),
        ],
        mutates: true,
        waits_for_human: false,
        availability: Availability::Now,
    },
    StepType {
        name: "milestone",
        description: "Marks a point in the graph (joins branches, names a phase); does nothing itself.",
        required: &[],
        fields: &[],
        mutates: false,
        waits_for_human: false,
        availability: Availability::Now,
    },
    StepType {
        name: "monitoring-config",
        description: "Adds Grafana alerts and dashboards for the service.",
        required: &[],
        fields: &[f("alerts", FieldKind::Any), f("dashboards", FieldKind::Any)],
        mutates: true,
        waits_for_human: false,
        availability: MON,
    },
    StepType {
        name: "opnsense-dns",
        description: "Adds a DNS override on OPNsense.",
        required: &[&["pattern"]],
        fields: &[f("pattern", FieldKind::Scalar), f("hostname", FieldKind::Scalar), f("address", FieldKind::Scalar)],
        mutates: true,
        waits_for_human: false,
        availability: NET,
    },
    StepType {
        name: "proxmox-task",
        description: "Proxmox API actions (create, clone, start, snapshot, ...) or allowlisted node commands.",
        required: &[&["commands", "actions"]],
        fields: &[
            f("commands", FieldKind::List),
            f("actions", FieldKind::Any),
            f("node", FieldKind::Scalar),
            f("vmid", FieldKind::Scalar),
            f("guest", FieldKind::Mapping),
            f("rollback", FieldKind::Any),
            f("irreversible", FieldKind::Any),
            f("snapname", FieldKind::Scalar),
            f("newid", FieldKind::Scalar),
            f("disk", FieldKind::Scalar),
            f("size", FieldKind::Scalar),
            f("target", FieldKind::Scalar),
            f("config", FieldKind::Mapping),
        ],
        mutates: true,
        waits_for_human: false,
        availability: Availability::Now,
    },
    StepType {
        name: "system-check",
        description: "Runs read-only allowlisted commands on a host and checks success criteria.",
        required: &[&["validation_commands"]],
        fields: &[
            f("validation_commands", FieldKind::List),
            f("host", FieldKind::Scalar),
            f("success_criteria", FieldKind::List),
        ],
        mutates: false,
        waits_for_human: false,
        availability: Availability::Now,
    },
];

/// The step type called `name`.
pub fn step_type(name: &str) -> Option<&'static StepType> {
    STEP_TYPES.iter().find(|t| t.name == name)
}

/// Names of the step types an owner's-form step may use (the kro ones come from `id` resources).
pub fn owner_type_names() -> Vec<&'static str> {
    STEP_TYPES
        .iter()
        .filter(|t| !matches!(t.name, "kubernetes-resource" | "kubernetes-external-ref"))
        .map(|t| t.name)
        .collect()
}

/// A named Kubernetes action a `kubernetes-task` may list in `actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct KubernetesAction {
    /// The name written in `actions`.
    pub name: &'static str,
    /// What it does.
    pub description: &'static str,
}

/// Every known `kubernetes-task` action, sorted by name.
pub const KUBERNETES_ACTIONS: &[KubernetesAction] = &[
    KubernetesAction {
        name: "migrate-pvc-if-needed",
        description: "Reports the storage class's PersistentVolumeClaims that are Pending or larger than \
                      `max_volume_size`, and fails listing them unless `allow_pending: true`; it moves no data.",
    },
    KubernetesAction {
        name: "update-storageclass-capacity",
        description: "Turns on `allowVolumeExpansion` on the storage class and records the pool's new \
                      `capacity` in its `labops.dev/capacity` annotation; parameters are immutable and stay as they are.",
    },
];

/// The `kubernetes-task` action called `name`.
pub fn kubernetes_action(name: &str) -> Option<&'static KubernetesAction> {
    KUBERNETES_ACTIONS.iter().find(|a| a.name == name)
}
