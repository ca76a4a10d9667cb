//! The labops engine: the reconcile loops and the service functions every transport calls.
//!
//! - [`lab`]: the live lab. One refresh loop per inventory source folds its data into an
//!   immutable [`lab::Snapshot`]; failures keep the last good data and mark the source degraded;
//!   stored snapshots make the first answer after a restart immediate. The audit writer lives here.
//! - [`service`]: the read side of the control plane, one function per question
//!   (`inventory_summary`, `list_entities`, `get_entity`, `resolve`, `node_status`,
//!   `guest_status`, `impact_of`, `k8s_workloads`). MCP tools, REST handlers and CLI commands are
//!   thin wrappers around these.
//! - [`runs`]: durable workflow execution: executors per step type, the driver, rollback, and
//!   the gate that refuses a mutating run whose change is not approved for its exact plan.
//! - [`changes`]: the change workflow (issue, approval, execution, validation, docs, commit,
//!   close), the forge trait and the local forge, the GitOps documentation.
//! - [`alerting`]: the task that owns the incident desk: group-committed intake (stored before
//!   it is acknowledged), first notices and escalation, acknowledgements and silences.
//! - [`monitor`]: monitor the monitor: Prometheus, Alertmanager and Grafana health, rule
//!   evaluation, the heartbeat alert; problems become labops' own alerts and backup notices.
//! - [`tasks`]: the universal task processor's service: the workflow library the agent may
//!   propose from, and drafts turned into change proposals.

pub mod alerting;
pub mod anomaly;
pub mod changes;
pub mod lab;
pub mod monitor;
pub mod runs;
pub mod service;
pub mod tasks;
pub mod wishlist;

pub use lab::{Lab, LabOptions, Snapshot, SourceSpec};
pub use service::{Freshness, ServiceError};
