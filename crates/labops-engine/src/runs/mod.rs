//! Workflow runs: durable execution of planned workflows.
//!
//! - [`driver`], the [`Engine`]: submit, drive, resume, human actions, rollback;
//! - [`executor`], the [`Executor`] trait every step type implements, and the [`Registry`];
//! - [`basic`], `external-task` (waits for a human) and `milestone` (joins branches);
//! - [`proxmox`], `proxmox-task` API actions, waiting on task UPIDs;
//! - [`commands`], allowlisted shell commands, locally or over SSH;
//! - [`system`], `system-check`;
//! - [`git`], `git-commit`;
//! - [`kube`], `kubernetes-task` and `kubernetes-deployment`.

pub mod ai;
pub mod basic;
pub mod commands;
pub mod driver;
pub mod executor;
pub mod git;
pub mod kube;
pub mod proxmox;
pub mod system;

pub use driver::{CrashPoint, Driven, Engine, RunError, RunStatus};
pub use executor::{Compensation, Executor, Ground, Registry, RetryPolicy, RunStep, Started, StepCx, StepError, Verified};
