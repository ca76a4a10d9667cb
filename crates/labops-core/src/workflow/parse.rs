//! From YAML nodes to the workflow model, reporting every problem found on the way: document
//! shape, step fields per step type, parameters, and CEL expressions and what they name.

use std::collections::{BTreeMap, BTreeSet};

use marked_yaml::Node;
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};

use super::expr::{self, CEL_TYPE_NAMES};
use super::params::{self, Parameter};
use super::types::{self, COMMON_FIELDS, FieldKind, StepType};
use super::yaml::{self, pos, scalar_pos};
use super::{Form, Named, Pos, Report, Step, Workflow, suggest};

const API_VERSION: &str = "kro.run/v1alpha1";
const KIND: &str = "ResourceGraphDefinition";
const KRO_KEYS: &[&str] = &["id", "template", "externalRef", "readyWhen", "includeWhen", "forEach"];

pub(crate) fn parse(text: &str, report: &mut Report) -> Option<Workflow> {
    let root = match yaml::parse(text) {
        Ok(n) => n,
        Err(d) => {
            report.errors.push(d);
            return None;
        }
    };
    let root = root.as_mapping()?;
    let top = pos_of_map(root);
    expect_scalar(root, "apiVersion", API_VERSION, top, report);
    expect_scalar(root, "kind", KIND, top, report);
    let name = match root.get_mapping("metadata").and_then(|m| m.get_scalar("name")) {
        Some(n) => n.as_str().to_string(),
        None => {
            report.error(top, "`metadata.name` is missing; every workflow needs a name");
            String::new()
        }
    };
    let Some(spec) = root.get_node("spec") else {
        report.error(top, "`spec` is missing; a workflow is `spec.resources`, a list of steps");
        return Some(Workflow { name, form: Form::Owner, parameters: BTreeMap::new(), steps: Vec::new(), errors: Vec::new() });
    };
    let mut parameters = BTreeMap::new();
    let mut has_schema = false;
    let mut resources = None;
    match spec.as_mapping() {
        None => report.error(pos(spec), format!("`spec` must be a mapping, not {}", yaml::kind(spec))),
        Some(spec) => {
            for (k, v) in spec.iter() {
                match k.as_str() {
                    "schema" => {
                        has_schema = true;
                        schema(v, &mut parameters, report);
                    }
                    "resources" => resources = Some(v),
                    other => report.warn(scalar_pos(k), format!("`spec.{other}` is not used; a workflow has `spec.schema` and `spec.resources`")),
                }
            }
            if resources.is_none() {
                report.error(pos_of_map(spec), "`spec.resources` is missing; list the workflow's steps there");
            }
        }
    }
    let items: Vec<&Node> = match resources {
        Some(Node::Sequence(seq)) => {
            if seq.is_empty() {
                report.error(pos(resources.unwrap()), "`spec.resources` is empty; list the workflow's steps there");
            }
            seq.iter().collect()
        }
        Some(other) => {
            report.error(pos(other), format!("`spec.resources` must be a list, not {}", yaml::kind(other)));
            Vec::new()
        }
        None => Vec::new(),
    };
    // Every name first, so that CEL references can be checked against all of them.
    let names: Vec<String> = items
        .iter()
        .filter_map(|n| n.as_mapping())
        .filter_map(|m| m.get_scalar("id").or_else(|| m.get_scalar("name")))
        .map(|s| s.as_str().to_string())
        .collect();
    let lines: Vec<&str> = text.lines().collect();
    let mut ctx = Ctx { names: &names, parameters: &mut parameters, has_schema, lines: &lines, report };
    // kro's `spec.schema.status` holds CEL over the resources: check it, it adds no dependency.
    if let Some(status) = spec.as_mapping().and_then(|m| m.get_mapping("schema")).and_then(|m| m.get_node("status")) {
        yaml::each_scalar(status, &mut |s| ctx.cel_in(s, "", &[], &mut Vec::new()));
    }
    let mut steps = Vec::new();
    let mut kro = false;
    for item in items {
        let Some(map) = item.as_mapping() else {
            ctx.report.error(pos(item), format!("a step must be a mapping, not {}", yaml::kind(item)));
            continue;
        };
        if map.get_node("id").is_some() {
            kro = true;
            steps.push(ctx.kro_resource(map));
        } else {
            steps.push(ctx.owner_step(map));
        }
    }
    let form = if kro { Form::Kro } else { Form::Owner };
    Some(Workflow { name, form, parameters, steps, errors: Vec::new() })
}

/// Where a mapping starts: its first key (the loader marks block mappings after it).
fn pos_of_map(m: &MarkedMappingNode) -> Pos {
    m.keys()
        .next()
        .map(scalar_pos)
        .or_else(|| m.span().start().map(|m| Pos { line: m.line(), column: m.column() }))
        .unwrap_or(Pos { line: 1, column: 1 })
}

fn expect_scalar(map: &MarkedMappingNode, key: &str, want: &str, at: Pos, report: &mut Report) {
    match map.get_node(key) {
        None => report.error(at, format!("`{key}` is missing; write `{key}: {want}`")),
        Some(Node::Scalar(s)) if s.as_str() == want => {}
        Some(n) => {
            let got = n.as_scalar().map(|s| s.as_str().to_string()).unwrap_or_else(|| yaml::kind(n).into());
            report.error(pos(n), format!("`{key}` is {got:?}; labops reads `{key}: {want}`"));
        }
    }
}

/// `spec.schema`: the kro schema whose `spec` fields are the parameters.
fn schema(node: &Node, parameters: &mut BTreeMap<String, Parameter>, report: &mut Report) {
    let Some(map) = node.as_mapping() else {
        report.error(pos(node), format!("`spec.schema` must be a mapping, not {}", yaml::kind(node)));
        return;
    };
    if let Some(spec) = map.get_node("spec") {
        schema_fields(spec, "", parameters, report);
    }
}

fn schema_fields(node: &Node, prefix: &str, parameters: &mut BTreeMap<String, Parameter>, report: &mut Report) {
    let Some(map) = node.as_mapping() else {
        report.error(pos(node), format!("`spec.schema.spec` must be a mapping of field: type, not {}", yaml::kind(node)));
        return;
    };
    for (k, v) in map.iter() {
        let name = format!("{prefix}{}", k.as_str());
        match v {
            Node::Mapping(_) => schema_fields(v, &format!("{name}."), parameters, report),
            Node::Scalar(s) => match params::simple_schema(s.as_str()) {
                Ok((type_name, default, description)) => {
                    let p = Parameter { name: name.clone(), type_name, default, description, pos: scalar_pos(k) };
                    parameters.insert(name, p);
                }
                Err(e) => report.error(scalar_pos(s), format!("schema field `{name}`: {e}")),
            },
            Node::Sequence(_) => report.error(pos(v), format!("schema field `{name}` must be a SimpleSchema type such as `string | default=x`")),
        }
    }
}

struct Ctx<'a> {
    names: &'a [String],
    parameters: &'a mut BTreeMap<String, Parameter>,
    has_schema: bool,
    /// The source lines, to point at an expression inside a longer string.
    lines: &'a [&'a str],
    report: &'a mut Report,
}

impl Ctx<'_> {
    /// A step of the owner's form: `name`, `type`, `dependencies`, `waitForHuman` and fields.
    fn owner_step(&mut self, map: &MarkedMappingNode) -> Step {
        let at = pos_of_map(map);
        let name = self.scalar(map, "name").unwrap_or_default();
        if map.get_node("name").is_none() {
            self.report.error(at, "a step has no `name` (or `id` for a kro resource); give it one");
        }
        let label = if name.is_empty() { "this step".to_string() } else { format!("step `{name}`") };
        let type_name = self.scalar(map, "type").unwrap_or_default();
        let ty = match map.get_scalar("type") {
            None => {
                self.report.error(at, format!("{label} has no `type`; types are {}", types::owner_type_names().join(", ")));
                None
            }
            Some(s) => {
                let known = types::owner_type_names();
                let found = types::step_type(s.as_str()).filter(|t| known.contains(&t.name));
                if found.is_none() {
                    self.report.error(
                        scalar_pos(s),
                        format!("unknown step type `{}`{}; known types: {}", s.as_str(), near_only(s.as_str(), &known), known.join(", ")),
                    );
                }
                found
            }
        };
        let mut dependencies = Vec::new();
        match map.get_node("dependencies") {
            None => {}
            Some(Node::Sequence(seq)) => {
                for d in seq.iter() {
                    match d.as_scalar() {
                        Some(s) => dependencies.push(Named { name: s.as_str().to_string(), pos: scalar_pos(s) }),
                        None => self.report.error(pos(d), format!("{label}: a dependency is a step name, not {}", yaml::kind(d))),
                    }
                }
            }
            Some(n) => self.report.error(pos(n), format!("{label}: `dependencies` must be a list of step names, like [a, b]")),
        }
        let wait_for_human = match map.get_node("waitForHuman") {
            None => false,
            Some(Node::Scalar(s)) if s.as_bool().is_some() => s.as_bool().unwrap_or(false),
            Some(n) => {
                self.report.error(pos(n), format!("{label}: `waitForHuman` must be true or false"));
                false
            }
        };
        let mut fields = BTreeMap::new();
        for (k, v) in map.iter() {
            if COMMON_FIELDS.iter().any(|f| f.name == k.as_str()) {
                if k.as_str() == "description" {
                    self.placeholders(v);
                    fields.insert("description".to_string(), yaml::to_json(v));
                }
                continue;
            }
            if let Some(ty) = ty {
                self.field(ty, &label, k, v);
            }
            self.placeholders(v);
            fields.insert(k.as_str().to_string(), yaml::to_json(v));
        }
        if let Some(ty) = ty {
            self.required(ty, &label, map, at);
            if ty.name == "kubernetes-task" {
                self.kubernetes_actions(map);
            }
            if ty.name == "kubernetes-deployment" && !fields.contains_key("manifests") {
                self.report.warn(at, format!("{label} has no `manifests`: it validates and plans, but running it needs them"));
            }
        }
        Step {
            name,
            pos: at,
            step_type: type_name,
            dependencies,
            references: Vec::new(),
            wait_for_human,
            fields,
            ready_when: Vec::new(),
            include_when: Vec::new(),
            for_each: BTreeMap::new(),
        }
    }

    /// A kro resource: `id`, `template` or `externalRef`, `readyWhen`, `includeWhen`, `forEach`.
    fn kro_resource(&mut self, map: &MarkedMappingNode) -> Step {
        let at = pos_of_map(map);
        let name = self.scalar(map, "id").unwrap_or_default();
        if let Some(id) = map.get_scalar("id")
            && !expr::is_identifier(id.as_str())
        {
            self.report.error(
                scalar_pos(id),
                format!("resource id `{}` must be a CEL identifier (letters, digits, `_`; lowerCamelCase in kro)", id.as_str()),
            );
        }
        let label = format!("resource `{name}`");
        let (template, external) = (map.get_node("template"), map.get_node("externalRef"));
        let step_type = match (template, external) {
            (Some(_), Some(_)) => {
                self.report.error(at, format!("{label} has both `template` and `externalRef`; keep one"));
                "kubernetes-resource"
            }
            (None, Some(_)) => "kubernetes-external-ref",
            (Some(_), None) => "kubernetes-resource",
            (None, None) => {
                self.report.error(at, format!("{label} needs a `template` (an object to create) or an `externalRef` (one to read)"));
                "kubernetes-resource"
            }
        };
        for (k, _) in map.iter() {
            if !KRO_KEYS.contains(&k.as_str()) {
                self.report.warn(
                    scalar_pos(k),
                    format!("{label}: `{}` is not a kro resource field{}; it is ignored", k.as_str(), suggest(k.as_str(), KRO_KEYS)),
                );
            }
        }
        let mut fields = BTreeMap::new();
        for (key, node) in [("template", template), ("externalRef", external)] {
            let Some(node) = node else { continue };
            match node.as_mapping() {
                Some(m) => {
                    for must in ["apiVersion", "kind"] {
                        if m.get_node(must).is_none() {
                            self.report.error(pos(node), format!("{label}: `{key}` has no `{must}`"));
                        }
                    }
                }
                None => self.report.error(pos(node), format!("{label}: `{key}` must be a Kubernetes object, not {}", yaml::kind(node))),
            }
            fields.insert(key.to_string(), yaml::to_json(node));
        }
        // forEach declares variables the resource's expressions may use.
        let mut for_each = BTreeMap::new();
        if let Some(node) = map.get_node("forEach") {
            let entries: Vec<&Node> = match node {
                Node::Sequence(seq) => seq.iter().collect(),
                _ => vec![node],
            };
            for e in entries {
                match e.as_mapping().filter(|m| m.len() == 1) {
                    Some(m) => {
                        let (k, v) = m.iter().next().expect("one entry");
                        let text = v.as_scalar().map(|s| s.as_str().to_string()).unwrap_or_default();
                        for_each.insert(k.as_str().to_string(), text);
                    }
                    None => self.report.error(pos(e), format!("{label}: each `forEach` entry is `name: ${{expression}}`")),
                }
            }
        }
        let mut step = Step {
            name: name.clone(),
            pos: at,
            step_type: step_type.to_string(),
            dependencies: Vec::new(),
            references: Vec::new(),
            wait_for_human: false,
            fields,
            ready_when: self.conditions(map, "readyWhen", &label),
            include_when: self.conditions(map, "includeWhen", &label),
            for_each,
        };
        let locals: Vec<String> = step.for_each.keys().cloned().collect();
        for key in ["template", "externalRef", "readyWhen", "includeWhen", "forEach"] {
            if let Some(node) = map.get_node(key) {
                yaml::each_scalar(node, &mut |s| self.cel_in(s, &name, &locals, &mut step.references));
            }
        }
        step
    }

    /// `readyWhen` / `includeWhen`: a list of `${...}` expressions.
    fn conditions(&mut self, map: &MarkedMappingNode, key: &str, label: &str) -> Vec<String> {
        let Some(node) = map.get_node(key) else { return Vec::new() };
        let Some(seq) = node.as_sequence() else {
            self.report.error(pos(node), format!("{label}: `{key}` must be a list of `${{...}}` expressions"));
            return Vec::new();
        };
        let mut out = Vec::new();
        for n in seq.iter() {
            match n.as_scalar() {
                Some(s) if expr::embedded(s.as_str()).is_ok_and(|e| e.len() == 1 && e[0].whole) => out.push(s.as_str().to_string()),
                _ => self.report.error(pos(n), format!("{label}: each `{key}` entry is one `${{...}}` expression")),
            }
        }
        out
    }

    /// Compiles the CEL expressions of one string and checks what they name.
    fn cel_in(&mut self, s: &MarkedScalarNode, own: &str, locals: &[String], refs: &mut Vec<Named>) {
        let at = scalar_pos(s);
        let found = match expr::embedded(s.as_str()) {
            Ok(found) => found,
            Err(e) => {
                self.report.error(at, e);
                return;
            }
        };
        for e in found {
            let at = self.expression_pos(at, &e.cel);
            let references = match expr::compile(&e.cel) {
                Ok(r) => r,
                Err(msg) => {
                    self.report.error(at, format!("CEL does not compile: `${{{}}}`: {msg}", e.cel));
                    continue;
                }
            };
            for r in references {
                self.reference(&r, &e.cel, at, own, locals, refs);
            }
        }
    }

    fn reference(&mut self, r: &expr::Reference, cel: &str, at: Pos, own: &str, locals: &[String], refs: &mut Vec<Named>) {
        let root = r.root.as_str();
        if root == "schema" {
            let field = match (r.path.first().map(String::as_str), r.path.get(1)) {
                (Some("spec"), Some(field)) => field,
                _ => return, // schema.metadata, schema.status, or the whole object
            };
            if !self.has_schema {
                self.report.error(at, format!("`${{{cel}}}` names `schema.spec.{field}`, but the workflow has no `spec.schema`"));
                return;
            }
            let declared = self.parameters.keys().any(|p| p == field || p.starts_with(&format!("{field}.")));
            if !declared {
                let names: Vec<&str> = self.parameters.keys().map(String::as_str).collect();
                self.report.error(
                    at,
                    format!("`${{{cel}}}` names `schema.spec.{field}`, which `spec.schema.spec` does not declare{}", suggest(field, &names)),
                );
            }
            return;
        }
        if root == own || locals.iter().any(|l| l == root) || CEL_TYPE_NAMES.contains(&root) {
            return;
        }
        if self.names.iter().any(|n| n == root) {
            if !refs.iter().any(|n| n.name == root) {
                refs.push(Named { name: root.to_string(), pos: at });
            }
            return;
        }
        let mut known: Vec<&str> = self.names.iter().map(String::as_str).collect();
        known.push("schema");
        known.extend(locals.iter().map(String::as_str));
        self.report.error(
            at,
            format!("`${{{cel}}}` names `{root}`, which is not a resource, `schema`, or a forEach variable{}", suggest(root, &known)),
        );
    }

    /// Where `${cel}` is written, when it is on the scalar's first line as is (not folded or
    /// escaped); else the scalar's start.
    fn expression_pos(&self, scalar: Pos, cel: &str) -> Pos {
        let Some(line) = self.lines.get(scalar.line.wrapping_sub(1)) else { return scalar };
        let from = line.char_indices().nth(scalar.column.saturating_sub(1)).map_or(line.len(), |(i, _)| i);
        match line[from..].find(&format!("${{{cel}}}")) {
            Some(off) => Pos { line: scalar.line, column: line[..from + off].chars().count() + 1 },
            None => scalar,
        }
    }

    fn scalar(&mut self, map: &MarkedMappingNode, key: &str) -> Option<String> {
        match map.get_node(key)? {
            Node::Scalar(s) => Some(s.as_str().to_string()),
            n => {
                self.report.error(pos(n), format!("`{key}` must be a plain value, not {}", yaml::kind(n)));
                None
            }
        }
    }

    /// Checks one step-specific field against its type's declaration.
    fn field(&mut self, ty: &StepType, label: &str, k: &MarkedScalarNode, v: &Node) {
        let Some(field) = ty.field(k.as_str()) else {
            let known: Vec<&str> = ty.fields.iter().map(|f| f.name).collect();
            let hint = if known.is_empty() { String::new() } else { suggest(k.as_str(), &known) };
            self.report.warn(scalar_pos(k), format!("{label}: `{}` is not a field {} knows{hint}; it is kept as written", k.as_str(), ty.name));
            return;
        };
        let ok = match field.kind {
            FieldKind::Any => true,
            FieldKind::Scalar => v.as_scalar().is_some(),
            FieldKind::Mapping => v.as_mapping().is_some(),
            FieldKind::List => v.as_sequence().is_some_and(|s| s.iter().all(|n| n.as_scalar().is_some())),
        };
        if !ok {
            let want = match field.kind {
                FieldKind::Scalar => "a plain value",
                FieldKind::Mapping => "a mapping",
                FieldKind::List => "a list of plain values, like [a, b]",
                FieldKind::Any => "anything",
            };
            self.report.error(pos(v), format!("{label}: `{}` must be {want}, not {}", k.as_str(), yaml::kind(v)));
        }
    }

    fn required(&mut self, ty: &StepType, label: &str, map: &MarkedMappingNode, at: Pos) {
        for req in ty.required {
            if req.iter().any(|f| map.get_node(f).is_some()) {
                continue;
            }
            let what = match req {
                [one] => format!("is missing required field `{one}`"),
                many => format!("needs one of {}", many.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(" or ")),
            };
            self.report.error(at, format!("{label} ({}) {what}", ty.name));
        }
    }

    fn kubernetes_actions(&mut self, map: &MarkedMappingNode) {
        let Some(seq) = map.get_sequence("actions") else { return };
        let known: Vec<&str> = types::KUBERNETES_ACTIONS.iter().map(|a| a.name).collect();
        for a in seq.iter().filter_map(Node::as_scalar) {
            if types::kubernetes_action(a.as_str()).is_none() {
                self.report.error(
                    scalar_pos(a),
                    format!("unknown kubernetes-task action `{}`{}; known actions: {}", a.as_str(), near_only(a.as_str(), &known), known.join(", ")),
                );
            }
        }
    }

    /// Records the `{{.name}}` placeholders under `node` as parameters (first use wins).
    fn placeholders(&mut self, node: &Node) {
        let mut found: Vec<(String, Pos)> = Vec::new();
        let mut bad: BTreeSet<(Pos, String)> = BTreeSet::new();
        yaml::each_scalar(node, &mut |s| match expr::placeholders(s.as_str()) {
            Ok(names) => found.extend(names.into_iter().map(|n| (n, scalar_pos(s)))),
            Err(e) => {
                bad.insert((scalar_pos(s), e));
            }
        });
        for (at, e) in bad {
            self.report.error(at, e);
        }
        for (name, at) in found {
            self.parameters.entry(name.clone()).or_insert(Parameter {
                name,
                type_name: "string".into(),
                default: None,
                description: None,
                pos: at,
            });
        }
    }
}

/// `; did you mean x?` when something is close, else nothing (the caller lists all).
fn near_only(wanted: &str, known: &[&str]) -> String {
    let near = super::nearest(wanted, known.iter().copied());
    if near.is_empty() { String::new() } else { format!(" (did you mean {}?)", near.join(" or ")) }
}
