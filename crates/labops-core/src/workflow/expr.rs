//! Expressions inside workflow strings: kro's `${...}` CEL expressions and the owner's form's
//! `{{.name}}` placeholders.
//!
//! CEL is parsed with the `cel` crate that kube re-exports (`kube_core::cel::cel`), with CEL's
//! optional syntax (`a.?b`, `.orValue(x)`) turned on, as kro uses it. Parsing is what "compiles"
//! means there: the library has no type checker, so a well-formed expression with a wrong type
//! is only caught when it runs.

use std::collections::BTreeSet;

use kube_core::cel::cel::common::ast::{EntryExpr, Expr, IdedExpr};
use kube_core::cel::cel::parser::Parser;

/// A `${...}` expression found in a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Embedded {
    /// The CEL text between `${` and `}`.
    pub cel: String,
    /// Whether the expression is the whole string (then its value keeps its type).
    pub whole: bool,
}

/// Finds the `${...}` expressions in `s`. Braces nest and quoted CEL strings may hold braces.
/// An expression without its closing `}` is an error.
pub fn embedded(s: &str) -> Result<Vec<Embedded>, String> {
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] == b'$' && bytes[i + 1] == b'{' {
            let start = i + 2;
            let mut depth = 1;
            let mut quote: Option<u8> = None;
            let mut j = start;
            while j < bytes.len() && depth > 0 {
                let c = bytes[j];
                match quote {
                    Some(_) if c == b'\\' => j += 1,
                    Some(q) if c == q => quote = None,
                    Some(_) => {}
                    None => match c {
                        b'"' | b'\'' => quote = Some(c),
                        b'{' => depth += 1,
                        b'}' => depth -= 1,
                        _ => {}
                    },
                }
                j += 1;
            }
            if depth > 0 {
                return Err(format!("`${{` without its closing `}}` in {s:?}"));
            }
            let cel = s[start..j - 1].to_string();
            out.push(Embedded { whole: i == 0 && j == s.len(), cel });
            i = j;
        } else {
            i += 1;
        }
    }
    Ok(out)
}

/// Finds the `{{.name}}` placeholders in `s` (spaces inside the braces allowed) and returns their
/// names. Anything else between `{{` and `}}` is an error that says what a placeholder looks like.
pub fn placeholders(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            return Err(format!("`{{{{` without its closing `}}}}` in {s:?}"));
        };
        let inner = after[..close].trim();
        match inner.strip_prefix('.') {
            Some(name) if is_identifier(name) => out.push(name.to_string()),
            _ => {
                return Err(format!(
                    "`{{{{{inner}}}}}` is not a parameter placeholder; write `{{{{.name}}}}` with a name of letters, digits and `_`"
                ));
            }
        }
        rest = &after[close + 2..];
    }
    Ok(out)
}

/// Whether `s` is a CEL/parameter identifier: a letter or `_`, then letters, digits or `_`.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A free variable of a CEL expression with the field selections applied to it
/// (`schema.spec.name` is `schema` with `[spec, name]`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Reference {
    /// The variable.
    pub root: String,
    /// The fields selected from it, outermost last, as far as plain `.field` selections go.
    pub path: Vec<String>,
}

/// Compiles `cel` and returns its free variables, or CEL's own error messages.
pub fn compile(cel: &str) -> Result<Vec<Reference>, String> {
    let ast = Parser::new().enable_optional_syntax(true).parse(cel).map_err(|errors| {
        errors
            .errors
            .iter()
            .map(|e| format!("{} (at {}:{} of the expression)", e.msg, e.pos.0, e.pos.1 + 1))
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    let mut refs = BTreeSet::new();
    collect(&ast, &mut Vec::new(), &mut refs);
    Ok(refs.into_iter().collect())
}

/// Walks the AST, recording free identifiers and their select chains; comprehension variables
/// (`x` in `list.all(x, ...)`) are bound, not free.
fn collect(e: &IdedExpr, bound: &mut Vec<String>, out: &mut BTreeSet<Reference>) {
    match &e.expr {
        Expr::Ident(name) => {
            if !name.starts_with('@') && !bound.contains(name) {
                out.insert(Reference { root: name.clone(), path: Vec::new() });
            }
        }
        Expr::Select(sel) => {
            // Follow a chain of plain selections down to an identifier.
            let mut path = vec![sel.field.clone()];
            let mut cur = sel.operand.as_ref();
            loop {
                match &cur.expr {
                    Expr::Select(inner) => {
                        path.push(inner.field.clone());
                        cur = inner.operand.as_ref();
                    }
                    Expr::Ident(name) => {
                        if !name.starts_with('@') && !bound.contains(name) {
                            path.reverse();
                            out.insert(Reference { root: name.clone(), path });
                        }
                        return;
                    }
                    _ => return collect(cur, bound, out),
                }
            }
        }
        Expr::Call(call) => {
            if let Some(t) = &call.target {
                collect(t, bound, out);
            }
            call.args.iter().for_each(|a| collect(a, bound, out));
        }
        Expr::Comprehension(c) => {
            collect(&c.iter_range, bound, out);
            collect(&c.accu_init, bound, out);
            let before = bound.len();
            bound.push(c.iter_var.clone());
            bound.extend(c.iter_var2.clone());
            bound.push(c.accu_var.clone());
            collect(&c.loop_cond, bound, out);
            collect(&c.loop_step, bound, out);
            collect(&c.result, bound, out);
            bound.truncate(before);
        }
        Expr::List(l) => l.elements.iter().for_each(|x| collect(x, bound, out)),
        Expr::Map(m) => m.entries.iter().for_each(|x| entry(&x.expr, bound, out)),
        Expr::Struct(s) => s.entries.iter().for_each(|x| entry(&x.expr, bound, out)),
        Expr::Literal(_) | Expr::Unspecified => {}
    }
}

fn entry(e: &EntryExpr, bound: &mut Vec<String>, out: &mut BTreeSet<Reference>) {
    match e {
        EntryExpr::StructField(f) => collect(&f.value, bound, out),
        EntryExpr::MapEntry(m) => {
            collect(&m.key, bound, out);
            collect(&m.value, bound, out);
        }
    }
}

/// CEL type names that may appear as bare identifiers (`type(x) == int`).
pub const CEL_TYPE_NAMES: &[&str] =
    &["bool", "bytes", "double", "duration", "dyn", "int", "list", "map", "null_type", "string", "timestamp", "type", "uint"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_embedded_expressions() {
        let e = embedded("./overlays/${schema.spec.env}").unwrap();
        assert_eq!(e, vec![Embedded { cel: "schema.spec.env".into(), whole: false }]);
        let e = embedded(r#"${input.?data.X.orValue("}")}"#).unwrap();
        assert_eq!(e[0].cel, r#"input.?data.X.orValue("}")"#);
        assert!(e[0].whole);
        assert!(embedded("${a.b").is_err());
        assert!(embedded("no expressions, $ and { alone").unwrap().is_empty());
    }

    #[test]
    fn finds_placeholders() {
        assert_eq!(placeholders("{{.service_name}}.homelab → IP").unwrap(), vec!["service_name"]);
        assert_eq!(placeholders("{{ .a }}-{{.b_2}}").unwrap(), vec!["a", "b_2"]);
        assert!(placeholders("{{name}}").unwrap_err().contains("{{.name}}"));
        assert!(placeholders("{{.x").is_err());
    }

    #[test]
    fn compiles_kro_optional_syntax() {
        let refs = compile(r#"input.?data.ECHO_VALUE.orValue("not found")"#).unwrap();
        assert_eq!(refs, vec![Reference { root: "input".into(), path: vec![] }]);
    }

    #[test]
    fn the_default_parser_rejects_optional_syntax() {
        // Why `compile` turns optional syntax on: `Program::compile` (what kube-cel's validator
        // uses) parses without it and rejects kro's `a.?b`.
        assert!(kube_core::cel::cel::Program::compile(r#"input.?data.X.orValue("")"#).is_err());
        assert!(compile(r#"input.?data.X.orValue("")"#).is_ok());
    }

    #[test]
    fn references_with_paths_and_bound_variables() {
        let refs = compile("deployment.spec.replicas == svc.status.x && items.all(i, i > limit)").unwrap();
        let roots: Vec<_> = refs.iter().map(|r| (r.root.as_str(), r.path.join("."))).collect();
        assert_eq!(
            roots,
            vec![("deployment", "spec.replicas".into()), ("items", String::new()), ("limit", String::new()), ("svc", "status.x".into())]
        );
    }

    #[test]
    fn reports_syntax_errors() {
        let err = compile("deployment.spec.(").unwrap_err();
        assert!(err.contains("of the expression"), "{err}");
    }
}
