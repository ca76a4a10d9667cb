//! Workflows: graphs of steps written as kro `ResourceGraphDefinition`s, parsed, validated and
//! planned. Pure: no I/O, no async, no clock; the caller reads files and passes text.
//!
//! One model serves two input forms, both `apiVersion: kro.run/v1alpha1`,
//! `kind: ResourceGraphDefinition`:
//!
//! - the owner's form: `spec.resources[]` with `name`, `type`, `dependencies`, `waitForHuman` and
//!   step-specific fields kept as written;
//! - real kro RGDs: `spec.schema` plus `spec.resources[]` with `id`, `template` or `externalRef`,
//!   `readyWhen`, `includeWhen` and `forEach`, whose dependencies are inferred from the resource
//!   ids their CEL `${...}` expressions name.
//!
//! The flow is [`check`] (text to a [`Workflow`] and a [`Report`] of every error and warning, each
//! with its YAML line and column), then [`plan`] (bind parameters, order the steps into stages of
//! steps that can run in parallel). The modules:
//!
//! - [`types`]: the registry of step types and of `kubernetes-task` actions;
//! - [`expr`]: `${...}` CEL expressions (compiled with kube's CEL support) and `{{.name}}`
//!   placeholders;
//! - [`params`]: kro SimpleSchema parameters, binding values, and `--values` files;
//! - `parse` and `graph` (private): YAML nodes to the model, and the graph checks and planning.

pub mod expr;
mod graph;
pub mod kro;
pub mod params;
mod parse;
pub mod types;
mod yaml;

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::Value;

pub use graph::{Plan, PlannedStep, Stage, plan};
pub use params::{Bindings, Parameter, parse_values};
pub use types::{Availability, StepType, step_type};

/// A place in the workflow's YAML text: 1-based line and column.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One problem found in a workflow, at a place in its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Where the problem is.
    pub pos: Pos,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic at `pos`.
    pub fn new(pos: Pos, message: impl Into<String>) -> Self {
        Self { pos, message: message.into() }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.pos, self.message)
    }
}

/// Every error and every warning found in a workflow, each sorted by position.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Problems that make the workflow invalid.
    pub errors: Vec<Diagnostic>,
    /// Things worth a look that do not stop validation.
    pub warnings: Vec<Diagnostic>,
}

impl Report {
    /// True when there is no error (warnings allowed).
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }

    pub(crate) fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.errors.push(Diagnostic::new(pos, message));
    }

    pub(crate) fn warn(&mut self, pos: Pos, message: impl Into<String>) {
        self.warnings.push(Diagnostic::new(pos, message));
    }

    fn sort(&mut self) {
        self.errors.sort_by_key(|a| a.pos);
        self.warnings.sort_by_key(|a| a.pos);
    }
}

/// Which of the two input forms a workflow is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    /// The owner's form: resources with `name`, `type` and `dependencies`.
    Owner,
    /// A kro RGD: resources with `id` and `template` or `externalRef`.
    Kro,
}

/// A parsed workflow. It may carry errors (see the [`Report`] from [`check`]); only a workflow
/// whose report is valid can be planned.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Workflow {
    /// `metadata.name`.
    pub name: String,
    /// The input form.
    pub form: Form,
    /// Declared (kro schema) and used (`{{.name}}`) parameters, by name.
    pub parameters: BTreeMap<String, Parameter>,
    /// The steps in the order they are written.
    pub steps: Vec<Step>,
    /// The errors [`check`] found; [`plan`] refuses a workflow that has any.
    #[serde(skip)]
    pub(crate) errors: Vec<Diagnostic>,
}

/// A name written somewhere in the YAML, with its place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Named {
    /// The name as written.
    pub name: String,
    /// Where it is written.
    pub pos: Pos,
}

/// One step (a resource of the RGD).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// `name` (owner's form) or `id` (kro).
    pub name: String,
    /// Where the step starts in the YAML.
    pub pos: Pos,
    /// The step type: as written (owner's form), or `kubernetes-resource` /
    /// `kubernetes-external-ref` (kro).
    pub step_type: String,
    /// Declared `dependencies` (owner's form).
    pub dependencies: Vec<Named>,
    /// Resources named by the step's CEL expressions (inferred dependencies), first use each.
    pub references: Vec<Named>,
    /// `waitForHuman: true`.
    pub wait_for_human: bool,
    /// Step-specific fields kept as written (for kro: `template` or `externalRef`), as JSON values.
    pub fields: BTreeMap<String, Value>,
    /// kro `readyWhen` expressions.
    pub ready_when: Vec<String>,
    /// kro `includeWhen` expressions: the step runs only when they all hold.
    pub include_when: Vec<String>,
    /// kro `forEach` iterators: variable name to the expression it ranges over.
    pub for_each: BTreeMap<String, String>,
}

/// Parses and validates a workflow's YAML text: every error and warning at once, each with its
/// line and column. The workflow is `None` only when the text is not a YAML mapping at all.
pub fn check(text: &str) -> (Option<Workflow>, Report) {
    let mut report = Report::default();
    let workflow = parse::parse(text, &mut report);
    if let Some(w) = &workflow {
        graph::validate(w, &mut report);
    }
    report.sort();
    let workflow = workflow.map(|w| Workflow { errors: report.errors.clone(), ..w });
    (workflow, report)
}

/// Why a workflow could not be planned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The workflow has validation errors; plan only valid workflows.
    #[error("the workflow has {} error(s); fix them first (see `labops workflow validate`)", .0.len())]
    Invalid(Vec<Diagnostic>),
    /// Parameters are missing, unknown, or of the wrong type.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Parameters(Vec<Diagnostic>),
}

/// Names in `known` closest to `wanted`, best first (at most three), for "did you mean".
pub(crate) fn nearest<'a>(wanted: &str, known: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let limit = (wanted.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, &str)> = known
        .into_iter()
        .map(|k| (strsim::levenshtein(&wanted.to_lowercase(), &k.to_lowercase()), k))
        .filter(|(d, _)| *d <= limit)
        .collect();
    scored.sort();
    scored.dedup();
    scored.into_iter().take(3).map(|(_, k)| k).collect()
}

/// A "did you mean" clause: `; did you mean x or y?` or `; known: a, b, c`.
pub(crate) fn suggest(wanted: &str, known: &[&str]) -> String {
    let near = nearest(wanted, known.iter().copied());
    if near.is_empty() {
        if known.is_empty() { String::new() } else { format!("; known: {}", known.join(", ")) }
    } else {
        format!("; did you mean {}?", near.join(" or "))
    }
}
