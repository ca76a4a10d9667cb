//! Label and field selectors as the API server parses and applies them to list and watch.
//!
//! Label selectors take the full syntax of `labels.Parse`: `a=b`, `a==b`, `a!=b`, `a`, `!a`,
//! `a in (x,y)`, `a notin (x)`, `a>1`, `a<1`, joined by commas. Field selectors take
//! `path=value`, `path==value` and `path!=value` on the paths a resource supports.

use serde_json::Value;

use crate::resources::ResourceType;

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Exists,
    DoesNotExist,
    In(Vec<String>),
    NotIn(Vec<String>),
    Gt(i64),
    Lt(i64),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LabelSelector {
    reqs: Vec<(String, Op)>,
}

/// Splits at commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn valid_key(k: &str) -> bool {
    !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl LabelSelector {
    /// Parses `labelSelector`; the error is the message for a 400 answer.
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self { reqs });
        }
        for part in split_top(s) {
            let part = part.trim();
            let bad = || format!("unable to parse requirement: found '{part}', expected: identifier");
            if let Some(key) = part.strip_prefix('!') {
                let key = key.trim();
                if !valid_key(key) {
                    return Err(bad());
                }
                reqs.push((key.to_string(), Op::DoesNotExist));
                continue;
            }
            if let Some(open) = part.find('(') {
                let (head, rest) = part.split_at(open);
                let mut words = head.split_whitespace();
                let (Some(key), Some(op), None) = (words.next(), words.next(), words.next()) else {
                    return Err(bad());
                };
                let Some(inner) = rest.strip_prefix('(').and_then(|r| r.strip_suffix(')')) else {
                    return Err(format!("unable to parse requirement: found '{part}', expected: ')'"));
                };
                let values: Vec<String> =
                    inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect();
                if !valid_key(key) || values.iter().any(|v| !valid_value(v)) {
                    return Err(bad());
                }
                let op = match op {
                    "in" => Op::In(values),
                    "notin" => Op::NotIn(values),
                    _ => return Err(format!("unable to parse requirement: found '{op}', expected: in, notin")),
                };
                reqs.push((key.to_string(), op));
                continue;
            }
            let (key, op) = if let Some((k, v)) = part.split_once("!=") {
                (k, Op::NotIn(vec![v.trim().to_string()]))
            } else if let Some((k, v)) = part.split_once("==") {
                (k, Op::In(vec![v.trim().to_string()]))
            } else if let Some((k, v)) = part.split_once('=') {
                (k, Op::In(vec![v.trim().to_string()]))
            } else if let Some((k, v)) = part.split_once('>') {
                (k, Op::Gt(v.trim().parse().map_err(|_| format!("invalid integer value '{}'", v.trim()))?))
            } else if let Some((k, v)) = part.split_once('<') {
                (k, Op::Lt(v.trim().parse().map_err(|_| format!("invalid integer value '{}'", v.trim()))?))
            } else {
                (part, Op::Exists)
            };
            let key = key.trim();
            let values_ok = match &op {
                Op::In(v) | Op::NotIn(v) => v.iter().all(|v| valid_value(v)),
                _ => true,
            };
            if !valid_key(key) || !values_ok {
                return Err(bad());
            }
            reqs.push((key.to_string(), op));
        }
        Ok(Self { reqs })
    }

    /// True when the object's `metadata.labels` satisfy every requirement.
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.reqs.iter().all(|(k, op)| match op {
            Op::Exists => get(k).is_some(),
            Op::DoesNotExist => get(k).is_none(),
            Op::In(vals) => get(k).is_some_and(|v| vals.iter().any(|x| x == v)),
            Op::NotIn(vals) => get(k).is_none_or(|v| !vals.iter().any(|x| x == v)),
            Op::Gt(n) => get(k).and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v > *n),
            Op::Lt(n) => get(k).and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v < *n),
        })
    }
}

/// A parsed field selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FieldSelector {
    reqs: Vec<(String, bool, String)>,
}

/// Splits at unescaped commas and removes the escapes the API server accepts (`\,`, `\=`, `\\`).
fn split_escaped(s: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                parts.last_mut().expect("non-empty").push('\\');
                parts.last_mut().expect("non-empty").push(n);
            }
        } else if c == sep {
            parts.push(String::new());
        } else {
            parts.last_mut().expect("non-empty").push(c);
        }
    }
    parts
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}

impl FieldSelector {
    /// Parses `fieldSelector` for `rt`; unknown fields are rejected as the real server does.
    pub(crate) fn parse(s: &str, rt: &ResourceType) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self { reqs });
        }
        for part in split_escaped(s, ',') {
            let (field, eq, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!("invalid selector: '{s}'; can't understand '{part}'"));
            };
            let field = field.trim();
            if !rt.selectable(field) {
                return Err(format!("field label not supported: {field}"));
            }
            reqs.push((field.to_string(), eq, unescape(value.trim())));
        }
        Ok(Self { reqs })
    }

    /// True when every field requirement holds; a missing field reads as the empty string.
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        self.reqs.iter().all(|(field, eq, want)| {
            let mut cur = Some(obj);
            for seg in field.split('.') {
                cur = cur.and_then(|c| c.get(seg));
            }
            let have = match cur {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(Value::Bool(false)) if field == "spec.unschedulable" || field == "spec.hostNetwork" => {
                    "false".into()
                }
                Some(v) => v.to_string(),
            };
            (have == *want) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "apps", "labels": labels}, "spec": {"nodeName": "n1"}})
    }

    #[test]
    fn label_selectors_follow_kubernetes_semantics() {
        let p = pod(json!({"app": "web", "tier": "front", "rev": "3"}));
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&p);
        assert!(m(""));
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(!m("app!=web"));
        assert!(m("canary!=yes"), "!= matches objects without the label");
        assert!(m("!canary"));
        assert!(!m("!app"));
        assert!(m("tier in (back, front)"));
        assert!(!m("tier notin (back,front)"));
        assert!(m("app=web,tier in (front),!canary"));
        assert!(m("rev>2") && !m("rev<3"));
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("a b").is_err());
    }

    #[test]
    fn field_selectors_read_paths_and_reject_unknown_fields() {
        let rt = crate::resources::default_resources().into_iter().find(|r| r.plural == "pods").unwrap();
        let p = pod(json!({}));
        let m = |s: &str| FieldSelector::parse(s, &rt).unwrap().matches(&p);
        assert!(m("metadata.name=p"));
        assert!(m("metadata.namespace==apps,spec.nodeName=n1"));
        assert!(!m("spec.nodeName!=n1"));
        assert!(m("status.phase="), "a missing field reads as empty");
        assert!(FieldSelector::parse("spec.containers=x", &rt).is_err());
    }
}
