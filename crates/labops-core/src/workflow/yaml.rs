//! YAML with positions: parsing through `marked-yaml`, positions of nodes, and conversion of
//! nodes to JSON values (plain scalars typed as YAML 1.2's core schema, quoted ones as strings).

use marked_yaml::{LoadError, LoaderOptions, Node};
use serde_json::Value;

use super::{Diagnostic, Pos};

/// Parses `text`, requiring a mapping at the top and unique keys.
pub(crate) fn parse(text: &str) -> Result<Node, Diagnostic> {
    let options = LoaderOptions::default().error_on_duplicate_keys(true).prevent_coercion(true);
    marked_yaml::parse_yaml_with_options(0, text, options).map_err(|e| load_error(&e))
}

fn load_error(e: &LoadError) -> Diagnostic {
    let at = |m: &marked_yaml::Marker| Pos { line: m.line(), column: m.column() };
    match e {
        LoadError::TopLevelMustBeMapping(m) => {
            Diagnostic::new(at(m), "the file must be a YAML mapping (apiVersion, kind, metadata, spec)")
        }
        LoadError::TopLevelMustBeSequence(m) => Diagnostic::new(at(m), "expected a YAML sequence"),
        LoadError::UnexpectedAnchor(m) => {
            Diagnostic::new(at(m), "YAML anchors and aliases are not supported; write the value out")
        }
        LoadError::MappingKeyMustBeScalar(m) => Diagnostic::new(at(m), "mapping keys must be plain scalars"),
        LoadError::UnexpectedTag(m) => Diagnostic::new(at(m), "YAML tags (`!tag`) are not supported"),
        LoadError::DuplicateKey(inner) => {
            let first = inner.prev_key.span().start().map(at).unwrap_or_default();
            let second = inner.key.span().start().map(at).unwrap_or_default();
            Diagnostic::new(
                second,
                format!("duplicate key `{}` (first written at {first}); keep one", inner.key.as_str()),
            )
        }
        LoadError::ScanError(m, se) => {
            // `ScanError`'s Display repeats the position; the description alone reads better.
            #[allow(deprecated)]
            let what = std::error::Error::description(se).to_string();
            Diagnostic::new(at(m), format!("YAML syntax error: {what}"))
        }
        // LoadError is not exhaustive upstream in spirit; keep a readable fallback.
        #[allow(unreachable_patterns)]
        other => Diagnostic::new(Pos { line: 1, column: 1 }, format!("YAML error: {other}")),
    }
}

/// Where a node starts.
pub(crate) fn pos(node: &Node) -> Pos {
    node.span().start().map(|m| Pos { line: m.line(), column: m.column() }).unwrap_or_default()
}

/// Where a scalar starts.
pub(crate) fn scalar_pos(node: &marked_yaml::types::MarkedScalarNode) -> Pos {
    node.span().start().map(|m| Pos { line: m.line(), column: m.column() }).unwrap_or_default()
}

/// The node as a JSON value: mappings keep their keys, plain scalars become null, booleans and
/// numbers where YAML 1.2's core schema says so, everything else a string.
pub(crate) fn to_json(node: &Node) -> Value {
    match node {
        Node::Scalar(s) => {
            let text = s.as_str();
            if !s.may_coerce() {
                return Value::String(text.to_string());
            }
            match text {
                "" | "~" | "null" | "Null" | "NULL" => Value::Null,
                "true" | "True" | "TRUE" => Value::Bool(true),
                "false" | "False" | "FALSE" => Value::Bool(false),
                _ => {
                    if let Ok(i) = text.parse::<i64>() {
                        Value::from(i)
                    } else if let Some(f) = text.parse::<f64>().ok().filter(|_| looks_numeric(text)) {
                        serde_json::Number::from_f64(f).map(Value::Number).unwrap_or_else(|| Value::String(text.into()))
                    } else {
                        Value::String(text.to_string())
                    }
                }
            }
        }
        Node::Sequence(seq) => Value::Array(seq.iter().map(to_json).collect()),
        Node::Mapping(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.as_str().to_string(), to_json(v))).collect())
        }
    }
}

/// Rust parses "inf" and "NaN" as floats; YAML's core schema spells them `.inf` and `.nan`, which
/// we leave as strings.
fn looks_numeric(text: &str) -> bool {
    text.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))
}

/// A short name for the kind of a node, for messages.
pub(crate) fn kind(node: &Node) -> &'static str {
    match node {
        Node::Scalar(_) => "a scalar",
        Node::Sequence(_) => "a list",
        Node::Mapping(_) => "a mapping",
    }
}

/// Calls `f` on every scalar under `node`, depth first in document order.
pub(crate) fn each_scalar<'a>(node: &'a Node, f: &mut impl FnMut(&'a marked_yaml::types::MarkedScalarNode)) {
    match node {
        Node::Scalar(s) => f(s),
        Node::Sequence(seq) => seq.iter().for_each(|n| each_scalar(n, f)),
        Node::Mapping(map) => map.values().for_each(|n| each_scalar(n, f)),
    }
}
