//! The graph of steps: duplicate and unknown names, cycles (with their path), and the plan, a
//! topological order grouped into stages of steps that can run in parallel.

use std::collections::{BTreeMap, HashMap, VecDeque};

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;
use serde_json::Value;

use super::params::{self, Bindings};
use super::types::{self, Availability};
use super::{Form, PlanError, Report, Step, Workflow, suggest};

/// Checks names and the dependency graph, adding to `report`.
pub(crate) fn validate(w: &Workflow, report: &mut Report) {
    let mut first: HashMap<&str, &Step> = HashMap::new();
    for s in &w.steps {
        if s.name.is_empty() {
            continue;
        }
        if let Some(prev) = first.get(s.name.as_str()) {
            report.error(s.pos, format!("duplicate step name `{}` (first defined at {}); step names must be unique", s.name, prev.pos));
        } else {
            first.insert(&s.name, s);
        }
    }
    let names: Vec<&str> = w.steps.iter().map(|s| s.name.as_str()).filter(|n| !n.is_empty()).collect();
    for s in &w.steps {
        for d in &s.dependencies {
            if d.name == s.name {
                report.error(d.pos, format!("step `{}` depends on itself; remove `{}` from its dependencies", s.name, d.name));
            } else if !first.contains_key(d.name.as_str()) {
                let others: Vec<&str> = names.iter().copied().filter(|n| *n != s.name).collect();
                report.error(d.pos, format!("step `{}` depends on `{}`, which is not a step{}", s.name, d.name, suggest(&d.name, &others)));
            }
        }
    }
    let (graph, _) = build(w);
    let mut cycles: Vec<Vec<usize>> = tarjan_scc(&graph)
        .into_iter()
        .filter(|scc| scc.len() > 1)
        .map(|scc| cycle_in(&graph, &scc))
        .collect();
    cycles.sort();
    for cycle in cycles {
        let mut path: Vec<&str> = cycle.iter().map(|&i| w.steps[i].name.as_str()).collect();
        path.push(path[0]);
        report.error(
            w.steps[cycle[0]].pos,
            format!("dependency cycle: {} (each step depends on the next); remove one of these dependencies", path.join(" -> ")),
        );
    }
}

/// The graph over the first step of each name; an edge runs from a step to each step it depends
/// on (declared, or named by its CEL). Node weights are indices into `w.steps`.
fn build(w: &Workflow) -> (DiGraph<usize, ()>, BTreeMap<usize, NodeIndex>) {
    let mut graph = DiGraph::new();
    let mut by_name: HashMap<&str, NodeIndex> = HashMap::new();
    let mut nodes = BTreeMap::new();
    for (i, s) in w.steps.iter().enumerate() {
        if !s.name.is_empty() && !by_name.contains_key(s.name.as_str()) {
            let n = graph.add_node(i);
            by_name.insert(&s.name, n);
            nodes.insert(i, n);
        }
    }
    for (&i, &n) in &nodes {
        for d in deps(&w.steps[i]) {
            if let Some(&m) = by_name.get(d)
                && m != n && graph.find_edge(n, m).is_none() {
                    graph.add_edge(n, m, ());
                }
        }
    }
    (graph, nodes)
}

/// A step's dependencies, declared first then inferred, in order.
fn deps(s: &Step) -> impl Iterator<Item = &str> {
    s.dependencies.iter().chain(&s.references).map(|d| d.name.as_str())
}

/// The shortest cycle through the earliest-written step of a strongly connected component,
/// as step indices starting there.
fn cycle_in(graph: &DiGraph<usize, ()>, scc: &[NodeIndex]) -> Vec<usize> {
    let start = *scc.iter().min_by_key(|n| graph[**n]).expect("non-empty component");
    let mut prev: HashMap<NodeIndex, NodeIndex> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    'search: while let Some(n) = queue.pop_front() {
        let mut next: Vec<NodeIndex> = graph.neighbors(n).filter(|m| scc.contains(m)).collect();
        next.sort_by_key(|m| graph[*m]);
        for m in next {
            if m == start {
                prev.insert(start, n);
                break 'search;
            }
            if let std::collections::hash_map::Entry::Vacant(e) = prev.entry(m) {
                e.insert(n);
                queue.push_back(m);
            }
        }
    }
    let mut path = vec![start];
    let mut n = prev[&start];
    while n != start {
        path.push(n);
        n = prev[&n];
    }
    path[1..].reverse();
    path.into_iter().map(|n| graph[n]).collect()
}

/// A plan: the steps in stages; every step of a stage can run once the earlier stages are done,
/// in parallel with the rest of its stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// The workflow's name.
    pub workflow: String,
    /// Its input form.
    pub form: Form,
    /// Every parameter with its bound value.
    pub parameters: Bindings,
    /// The stages, in order.
    pub stages: Vec<Stage>,
    /// How many steps change the lab.
    pub mutating_steps: usize,
    /// How many steps wait for a human.
    pub human_waits: usize,
}

/// Steps that can run in parallel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stage {
    /// 1 for the first stage.
    pub number: usize,
    /// The steps, in the order they are written.
    pub steps: Vec<PlannedStep>,
}

/// One step as it will run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedStep {
    /// The step's name.
    pub name: String,
    /// Its type.
    pub step_type: String,
    /// What the type does.
    pub description: String,
    /// Whether it changes the lab.
    pub mutates: bool,
    /// Whether it waits for a human.
    pub waits_for_human: bool,
    /// Whether its type can run yet.
    pub availability: Availability,
    /// The steps it waits for (declared and inferred).
    pub depends_on: Vec<String>,
    /// kro `includeWhen`: it runs only when these hold.
    pub include_when: Vec<String>,
    /// kro `forEach`: it runs once per element.
    pub for_each: BTreeMap<String, String>,
    /// kro `readyWhen`: it is done when these hold.
    pub ready_when: Vec<String>,
    /// Its fields with the parameters filled in.
    pub fields: BTreeMap<String, Value>,
}

/// Binds the parameters and orders the steps of a valid workflow into stages. Deterministic:
/// the same workflow and values give the same plan.
pub fn plan(w: &Workflow, given: &Bindings) -> Result<Plan, PlanError> {
    if !w.errors.is_empty() {
        return Err(PlanError::Invalid(w.errors.clone()));
    }
    let bound = params::bind(&w.parameters, given).map_err(PlanError::Parameters)?;
    let (graph, nodes) = build(w);
    // Stage of a step = 1 + the latest stage among its dependencies; the graph is acyclic here.
    let order = petgraph::algo::toposort(&graph, None).map_err(|_| PlanError::Invalid(Vec::new()))?;
    let mut stage_of: HashMap<usize, usize> = HashMap::new();
    for n in order.into_iter().rev() {
        let stage = graph.neighbors(n).map(|m| stage_of[&graph[m]] + 1).max().unwrap_or(1);
        stage_of.insert(graph[n], stage);
    }
    let mut stages: Vec<Stage> = Vec::new();
    for &i in nodes.keys() {
        let s = &w.steps[i];
        let number = stage_of[&i];
        while stages.len() < number {
            stages.push(Stage { number: stages.len() + 1, steps: Vec::new() });
        }
        stages[number - 1].steps.push(planned(s, &bound));
    }
    let all = stages.iter().flat_map(|s| &s.steps);
    Ok(Plan {
        workflow: w.name.clone(),
        form: w.form,
        mutating_steps: all.clone().filter(|s| s.mutates).count(),
        human_waits: all.filter(|s| s.waits_for_human).count(),
        parameters: bound,
        stages,
    })
}

fn planned(s: &Step, bound: &Bindings) -> PlannedStep {
    // kro resources use `${schema.spec.x}`; the owner's steps use `{{.x}}`.
    let kro = matches!(s.step_type.as_str(), "kubernetes-resource" | "kubernetes-external-ref");
    let ty = types::step_type(&s.step_type).expect("valid workflows have known types");
    let mut depends_on: Vec<String> = Vec::new();
    for d in deps(s) {
        if !depends_on.iter().any(|x| x == d) {
            depends_on.push(d.to_string());
        }
    }
    PlannedStep {
        name: s.name.clone(),
        step_type: s.step_type.clone(),
        description: ty.description.to_string(),
        mutates: ty.mutates,
        waits_for_human: ty.waits_for_human || s.wait_for_human,
        availability: ty.availability,
        depends_on,
        include_when: s.include_when.clone(),
        for_each: s.for_each.clone(),
        ready_when: s.ready_when.clone(),
        fields: s.fields.iter().map(|(k, v)| (k.clone(), fill(v, kro, bound))).collect(),
    }
}

/// Fills parameters into a value: `{{.name}}` in the owner's steps, `${schema.spec.name}` in kro
/// resources (a string that is only that expression takes the parameter's typed value).
fn fill(v: &Value, kro: bool, bound: &Bindings) -> Value {
    match v {
        Value::String(s) => {
            let text = |v: &Value| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let mut out = s.clone();
            for (name, value) in bound {
                if kro {
                    let pat = format!("${{schema.spec.{name}}}");
                    if out == pat {
                        return value.clone();
                    }
                    out = out.replace(&pat, &text(value));
                } else {
                    for pat in [format!("{{{{.{name}}}}}"), format!("{{{{ .{name} }}}}")] {
                        out = out.replace(&pat, &text(value));
                    }
                }
            }
            Value::String(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| fill(x, kro, bound)).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, x)| (k.clone(), fill(x, kro, bound))).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Bindings, check};
    use super::*;

    fn workflow(resources: &str) -> String {
        format!("apiVersion: kro.run/v1alpha1\nkind: ResourceGraphDefinition\nmetadata:\n  name: t\nspec:\n  resources:\n{resources}")
    }

    fn step(name: &str, deps: &str) -> String {
        format!("    - name: {name}\n      type: system-check\n      dependencies: [{deps}]\n      validation_commands: [lsblk]\n")
    }

    #[test]
    fn independent_branches_share_a_stage() {
        let text = workflow(&[step("root", ""), step("left", "root"), step("right", "root"), step("join", "right, left")].concat());
        let (w, report) = check(&text);
        assert!(report.is_valid(), "{:?}", report.errors);
        let plan = plan(&w.unwrap(), &Bindings::new()).unwrap();
        let names: Vec<Vec<&str>> = plan.stages.iter().map(|s| s.steps.iter().map(|x| x.name.as_str()).collect()).collect();
        assert_eq!(names, vec![vec!["root"], vec!["left", "right"], vec!["join"]]);
        assert_eq!(plan.stages[2].steps[0].depends_on, vec!["right", "left"]);
        assert_eq!((plan.mutating_steps, plan.human_waits), (0, 0));
    }

    #[test]
    fn plans_are_deterministic() {
        let text = workflow(&(0..12).map(|i| step(&format!("s{i}"), if i > 0 { "s0" } else { "" })).collect::<String>());
        let (w, _) = check(&text);
        let w = w.unwrap();
        let first = serde_json::to_string(&plan(&w, &Bindings::new()).unwrap()).unwrap();
        for _ in 0..5 {
            assert_eq!(serde_json::to_string(&plan(&w, &Bindings::new()).unwrap()).unwrap(), first);
        }
    }

    #[test]
    fn a_cycle_is_reported_once_with_its_path_and_blocks_planning() {
        let text = workflow(&[step("a", "b"), step("b", "a"), step("c", "")].concat());
        let (w, report) = check(&text);
        assert_eq!(report.errors.len(), 1);
        assert_eq!(
            report.errors[0].to_string(),
            "7:7: dependency cycle: a -> b -> a (each step depends on the next); remove one of these dependencies"
        );
        assert!(matches!(plan(&w.unwrap(), &Bindings::new()), Err(PlanError::Invalid(e)) if e.len() == 1));
    }

    #[test]
    fn kro_conditions_and_iterations_are_noted_and_status_cel_is_checked() {
        let text = "apiVersion: kro.run/v1alpha1
kind: ResourceGraphDefinition
metadata:
  name: t
spec:
  schema:
    apiVersion: v1alpha1
    kind: Web
    spec:
      regions: '[]string | default=[\"eu\"]'
      monitoring: boolean | default=false
    status:
      ready: ${deployment.status.readyReplicas > 0}
      missing: ${deploymnt.status.x}
  resources:
    - id: deployment
      template:
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: web
    - id: monitor
      includeWhen:
        - ${schema.spec.monitoring}
      forEach:
        - region: ${schema.spec.regions}
      template:
        apiVersion: monitoring.coreos.com/v1
        kind: ServiceMonitor
        metadata:
          name: ${deployment.metadata.name + '-' + region}
";
        let (_, report) = check(text);
        assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
        assert!(report.errors[0].to_string().starts_with("14:16: `${deploymnt.status.x}` names `deploymnt`"), "{}", report.errors[0]);
        let fixed = text.replace("      missing: ${deploymnt.status.x}\n", "");
        let (w, report) = check(&fixed);
        assert!(report.is_valid(), "{:?}", report.errors);
        let plan = plan(&w.unwrap(), &Bindings::new()).unwrap();
        let monitor = &plan.stages[1].steps[0];
        assert_eq!(monitor.name, "monitor");
        assert_eq!(monitor.depends_on, vec!["deployment"]);
        assert_eq!(monitor.include_when, vec!["${schema.spec.monitoring}"]);
        assert_eq!(monitor.for_each["region"], "${schema.spec.regions}");
        assert_eq!(plan.parameters["regions"], serde_json::json!(["eu"]));
    }

    #[test]
    fn fills_parameters_by_kind_of_step() {
        let bound: Bindings = [("name".to_string(), serde_json::json!("web")), ("n".to_string(), serde_json::json!(3))].into();
        assert_eq!(fill(&Value::from("{{.name}}-{{ .n }}"), false, &bound), Value::from("web-3"));
        assert_eq!(fill(&Value::from("${schema.spec.n}"), true, &bound), serde_json::json!(3));
        assert_eq!(fill(&Value::from("${schema.spec.name}-svc"), true, &bound), Value::from("web-svc"));
        assert_eq!(fill(&Value::from("{{.name}}"), true, &bound), Value::from("{{.name}}"), "kro templates keep Go templates");
    }
}
