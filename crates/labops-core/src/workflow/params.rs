//! Parameters: declared by a kro `spec.schema.spec` in SimpleSchema (`string | default=foo`) or
//! used as `{{.name}}` placeholders, and bound to values at plan time.
//!
//! A parameter without a default must be given a value when planning; a missing one is an error
//! that names it. Values given as text (`--set replicas=3`) are converted to the declared type.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::{Diagnostic, Pos, suggest, yaml};


/// Values for parameters, by name.
pub type Bindings = BTreeMap<String, Value>;

/// A workflow parameter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Parameter {
    /// The name (`{{.name}}`, `${schema.spec.name}`).
    pub name: String,
    /// The SimpleSchema type (`string` for placeholders).
    pub type_name: String,
    /// The default from `default=`, typed.
    pub default: Option<Value>,
    /// `description=` from the schema.
    pub description: Option<String>,
    /// Where it is declared, or first used when it is only a placeholder.
    pub pos: Pos,
}

/// SimpleSchema's scalar and collection types.
const TYPES: &[&str] = &["string", "integer", "boolean", "number", "float", "object", "array"];

/// Parses a SimpleSchema field such as `integer | default=1 description="replicas"` into its type
/// name, its typed default and its description.
pub fn simple_schema(text: &str) -> Result<(String, Option<Value>, Option<String>), String> {
    let (ty, markers) = match text.split_once('|') {
        Some((t, m)) => (t.trim(), m.trim()),
        None => (text.trim(), ""),
    };
    let known = TYPES.contains(&ty) || ty.starts_with("[]") || ty.starts_with("map[");
    if !known {
        if let Some((first, _)) = ty.split_once(char::is_whitespace) {
            return Err(format!("`{ty}` is not a SimpleSchema type; markers come after `|`, as in `{first} | default=...`"));
        }
        let near = super::nearest(ty, TYPES.iter().copied());
        let hint = if near.is_empty() { String::new() } else { format!(" (did you mean {}?)", near.join(" or ")) };
        return Err(format!("unknown SimpleSchema type `{ty}`{hint}; types are {}, []T and map[K]V", TYPES.join(", ")));
    }
    let mut default = None;
    let mut description = None;
    for (key, raw, quoted) in markers_of(markers)? {
        match key.as_str() {
            "default" => default = Some(typed(ty, &raw, quoted).map_err(|e| format!("default={raw}: {e}"))?),
            "description" => description = Some(raw),
            _ => {} // required, enum, minimum, maximum, pattern, immutable: checked by kro itself
        }
    }
    Ok((ty.to_string(), default, description))
}

/// Splits `a=1 b="two words"` into (key, value, was quoted).
fn markers_of(s: &str) -> Result<Vec<(String, String, bool)>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        if chars.next() != Some('=') {
            return Err(format!("marker `{key}` has no value; write {key}=VALUE"));
        }
        let (value, quoted) = if chars.peek() == Some(&'"') {
            chars.next();
            let mut v = String::new();
            loop {
                match chars.next() {
                    Some('\\') => v.extend(chars.next()),
                    Some('"') => break,
                    Some(c) => v.push(c),
                    None => return Err(format!("marker `{key}` has an unterminated quoted value")),
                }
            }
            (v, true)
        } else {
            (std::iter::from_fn(|| chars.next_if(|c| !c.is_whitespace())).collect(), false)
        };
        out.push((key, value, quoted));
    }
}

/// Converts `raw` text to a value of SimpleSchema type `ty`.
fn typed(ty: &str, raw: &str, quoted: bool) -> Result<Value, String> {
    match ty {
        "integer" => raw.parse::<i64>().map(Value::from).map_err(|_| format!("{raw:?} is not an integer")),
        "number" | "float" => raw
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("{raw:?} is not a number")),
        "boolean" => match raw {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(format!("{raw:?} is not a boolean (true or false)")),
        },
        "string" => Ok(Value::String(raw.to_string())),
        _ if quoted => Ok(Value::String(raw.to_string())),
        _ => serde_json::from_str(raw).map_err(|_| format!("{raw:?} is not a JSON {ty}")),
    }
}

/// Checks `value` against the type of `p`, converting text to the declared type.
fn conform(p: &Parameter, value: &Value) -> Result<Value, String> {
    match (p.type_name.as_str(), value) {
        (_, Value::String(s)) if p.type_name != "string" => typed(&p.type_name, s, false),
        ("string", Value::String(_)) => Ok(value.clone()),
        ("string", Value::Number(_) | Value::Bool(_)) => Ok(Value::String(value.to_string())),
        ("integer", Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(value.clone()),
        ("number" | "float", Value::Number(_)) | ("boolean", Value::Bool(_)) => Ok(value.clone()),
        ("object", Value::Object(_)) | ("array", Value::Array(_)) => Ok(value.clone()),
        (t, _) if t.starts_with("[]") && value.is_array() => Ok(value.clone()),
        (t, _) if t.starts_with("map[") && value.is_object() => Ok(value.clone()),
        (t, v) => Err(format!("{v} is not a {t}")),
    }
}

/// Binds `given` to the declared parameters: every parameter gets its given value or its
/// default. Reports every missing, unknown or mistyped parameter at once.
pub fn bind(params: &BTreeMap<String, Parameter>, given: &Bindings) -> Result<Bindings, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let mut bound = Bindings::new();
    let names: Vec<&str> = params.keys().map(String::as_str).collect();
    for name in given.keys() {
        if !params.contains_key(name) {
            let known = if names.is_empty() { "; this workflow takes no parameters".to_string() } else { suggest(name, &names) };
            errors.push(Diagnostic::new(Pos { line: 1, column: 1 }, format!("unknown parameter `{name}`{known}")));
        }
    }
    for (name, p) in params {
        match (given.get(name), &p.default) {
            (Some(v), _) => match conform(p, v) {
                Ok(v) => {
                    bound.insert(name.clone(), v);
                }
                Err(e) => errors.push(Diagnostic::new(p.pos, format!("parameter `{name}`: {e}"))),
            },
            (None, Some(d)) => {
                bound.insert(name.clone(), d.clone());
            }
            (None, None) => errors.push(Diagnostic::new(
                p.pos,
                format!("missing parameter `{name}` ({}): pass --set {name}=VALUE or put it in a --values file", p.type_name),
            )),
        }
    }
    errors.sort_by_key(|a| a.pos);
    if errors.is_empty() { Ok(bound) } else { Err(errors) }
}

/// Parses a `--values` file: a YAML mapping of parameter names to values.
pub fn parse_values(text: &str) -> Result<Bindings, Diagnostic> {
    let node = yaml::parse(text)?;
    let map = node.as_mapping().ok_or_else(|| Diagnostic::new(yaml::pos(&node), "a values file is a mapping of name: value"))?;
    Ok(map.iter().map(|(k, v)| (k.as_str().to_string(), yaml::to_json(v))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn simple_schema_types_and_defaults() {
        assert_eq!(simple_schema("string").unwrap(), ("string".into(), None, None));
        assert_eq!(simple_schema("string | default=foobar").unwrap().1, Some(json!("foobar")));
        assert_eq!(simple_schema(r#"string | default="nginx:latest""#).unwrap().1, Some(json!("nginx:latest")));
        assert_eq!(simple_schema("integer | default=10").unwrap().1, Some(json!(10)));
        let (_, d, desc) = simple_schema(r#"boolean | default=true description="on or off""#).unwrap();
        assert_eq!((d, desc), (Some(json!(true)), Some("on or off".into())));
        assert!(simple_schema("integer | default=ten").unwrap_err().contains("not an integer"));
        assert!(simple_schema("strng").unwrap_err().contains("did you mean string?"));
        assert!(simple_schema("string default=x").unwrap_err().contains("markers come after `|`"));
    }

    fn param(name: &str, ty: &str, default: Option<Value>) -> (String, Parameter) {
        let p = Parameter { name: name.into(), type_name: ty.into(), default, description: None, pos: Pos { line: 3, column: 5 } };
        (name.into(), p)
    }

    #[test]
    fn binding_converts_and_reports_everything() {
        let params: BTreeMap<_, _> =
            [param("name", "string", None), param("replicas", "integer", Some(json!(1))), param("image", "string", None)].into();
        let given: Bindings = [("name".to_string(), json!("web")), ("replicas".into(), json!("3"))].into();
        let errors = bind(&params, &given).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.starts_with("missing parameter `image`"), "{}", errors[0]);
        let given: Bindings = [("name".to_string(), json!("web")), ("image".into(), json!("nginx")), ("replics".into(), json!("2"))].into();
        let errors = bind(&params, &given).unwrap_err();
        assert!(errors[0].message.contains("unknown parameter `replics`; did you mean replicas?"), "{}", errors[0]);
        let given: Bindings = [("name".to_string(), json!("web")), ("image".into(), json!("nginx")), ("replicas".into(), json!("3"))].into();
        assert_eq!(bind(&params, &given).unwrap()["replicas"], json!(3));
    }

    #[test]
    fn values_files() {
        let v = parse_values("service_name: paperless\nreplicas: 2\n").unwrap();
        assert_eq!(v["service_name"], json!("paperless"));
        assert_eq!(v["replicas"], json!(2));
        assert!(parse_values("a: [").is_err());
    }
}
