//! Every request the GitHub client can send exists in GitHub's published REST description
//! (`@octokit/openapi`, pinned in tests/github/package.json): the path and method, the path
//! parameters, each body field as a property of the request body's schema with a valid fixed
//! value, every required body field sent, and each response field the client reads.
//!
//! The description comes from npm: `scripts/test` installs it. Without it these tests fail and
//! say so; they never skip.

use labops_integrations::github::{self, CALLS, Call};
use labops_testkit::github::openapi;
use serde_json::Value;

/// Follows a `$ref` (`#/components/...`) in the description.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    let mut v = v;
    while let Some(r) = v.get("$ref").and_then(Value::as_str) {
        let mut at = doc;
        for part in r.trim_start_matches("#/").split('/') {
            at = &at[part.replace("~1", "/").replace("~0", "~")];
        }
        assert!(!at.is_null(), "dangling $ref {r}");
        v = at;
    }
    v
}

/// The object schemas a value may take: the schema itself and, through `allOf`, `oneOf` and
/// `anyOf`, every branch. `all` holds the ones that always apply (the schema and its `allOf`),
/// `any` the alternatives.
fn branches<'a>(doc: &'a Value, schema: &'a Value, all: &mut Vec<&'a Value>, any: &mut Vec<&'a Value>, always: bool) {
    let s = resolve(doc, schema);
    if always { all.push(s) } else { any.push(s) }
    for b in s["allOf"].as_array().into_iter().flatten() {
        branches(doc, b, all, any, always);
    }
    for key in ["oneOf", "anyOf"] {
        for b in s[key].as_array().into_iter().flatten() {
            branches(doc, b, all, any, false);
        }
    }
}

fn property<'a>(doc: &'a Value, schema: &'a Value, name: &str) -> Option<&'a Value> {
    let (mut all, mut any) = (Vec::new(), Vec::new());
    branches(doc, schema, &mut all, &mut any, true);
    all.iter().chain(any.iter()).find_map(|s| s["properties"].get(name)).map(|p| resolve(doc, p))
}

/// Whether the string `v` is a valid value for property `spec` (its enum, in any branch).
fn valid_value(doc: &Value, spec: &Value, v: &str) -> bool {
    let (mut all, mut any) = (Vec::new(), Vec::new());
    branches(doc, spec, &mut all, &mut any, true);
    let enums: Vec<&Value> = all.iter().chain(any.iter()).filter_map(|s| s.get("enum")).collect();
    let strings = all.iter().chain(any.iter()).any(|s| s["type"] == "string");
    if enums.is_empty() { strings } else { enums.iter().any(|e| e.as_array().is_some_and(|e| e.iter().any(|x| x == v))) }
}

fn operation<'a>(doc: &'a Value, call: &Call) -> Result<&'a Value, String> {
    let item = doc["paths"].get(call.path).ok_or_else(|| format!("{} {}: path not in GitHub's REST description", call.method, call.path))?;
    item.get(call.method.to_ascii_lowercase())
        .ok_or_else(|| format!("{} {}: method not in GitHub's REST description", call.method, call.path))
}

fn check(doc: &Value, call: &Call) -> Vec<String> {
    let mut errors = Vec::new();
    let op = match operation(doc, call) {
        Ok(op) => op,
        Err(e) => return vec![e],
    };
    let id = op["operationId"].as_str().unwrap_or("?");
    let at = format!("{} {} ({id})", call.method, call.path);
    let path_item = &doc["paths"][call.path];
    let params: Vec<&Value> = op["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(path_item["parameters"].as_array().into_iter().flatten())
        .map(|p| resolve(doc, p))
        .collect();
    let in_path: Vec<&str> = call.path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')).collect();
    for p in &in_path {
        if !params.iter().any(|d| d["in"] == "path" && d["name"] == *p) {
            errors.push(format!("{at}: path parameter {p} not declared"));
        }
    }
    for d in &params {
        if d["in"] == "path" && !in_path.contains(&d["name"].as_str().unwrap_or("")) {
            errors.push(format!("{at}: path parameter {} not in the client's path", d["name"]));
        }
    }
    let request = resolve(doc, &op["requestBody"]);
    let schema = &request["content"]["application/json"]["schema"];
    if call.body.is_empty() {
        if request["required"] == true {
            errors.push(format!("{at}: GitHub requires a body and the client sends none"));
        }
        return errors;
    }
    if schema.is_null() {
        return vec![format!("{at}: GitHub's description takes no JSON body, the client sends {:?}", call.body)];
    }
    for (name, fixed) in call.body {
        match property(doc, schema, name) {
            None => errors.push(format!("{at}: body field {name} is not a property of the request body")),
            Some(spec) => {
                if let Some(v) = fixed
                    && !valid_value(doc, spec, v)
                {
                    errors.push(format!("{at}: body field {name}={v} is not a valid value ({spec})"));
                }
            }
        }
    }
    // Every required field is sent: those of the schema and its allOf, and those of at least one
    // alternative when there are alternatives.
    let (mut all, mut any) = (Vec::new(), Vec::new());
    branches(doc, schema, &mut all, &mut any, true);
    let sent = |s: &&Value| s["required"].as_array().into_iter().flatten().filter_map(Value::as_str).all(|r| call.body.iter().any(|(n, _)| *n == r));
    for s in &all {
        for r in s["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if !call.body.iter().any(|(n, _)| *n == r) {
                errors.push(format!("{at}: required body field {r} is not sent"));
            }
        }
    }
    let alternatives: Vec<&&Value> = any.iter().filter(|s| s["type"] == "object" || s.get("properties").is_some()).collect();
    if !alternatives.is_empty() && !alternatives.iter().any(|s| sent(s)) {
        errors.push(format!("{at}: no alternative of the request body has all its required fields sent"));
    }
    errors
}

/// The success response's schema of an operation.
fn response_schema<'a>(doc: &'a Value, call: &Call) -> &'a Value {
    let op = operation(doc, call).unwrap_or_else(|e| panic!("{e}"));
    let ok = op["responses"].as_object().and_then(|r| r.iter().find(|(code, _)| code.starts_with('2'))).map(|(_, v)| v);
    let ok = resolve(doc, ok.unwrap_or_else(|| panic!("{} {}: no success response", call.method, call.path)));
    &ok["content"]["application/json"]["schema"]
}

#[test]
fn every_client_call_is_in_githubs_rest_description() {
    let doc = openapi();
    assert!(!CALLS.is_empty());
    let errors: Vec<String> = CALLS.iter().flat_map(|c| check(doc, c)).collect();
    assert!(errors.is_empty(), "calls that do not match GitHub's REST description:\n{}", errors.join("\n"));
}

#[test]
fn the_forge_operations_are_in_the_call_list() {
    let wanted = [
        ("POST", "/repos/{owner}/{repo}/issues", "issues/create"),
        ("POST", "/repos/{owner}/{repo}/issues/{issue_number}/comments", "issues/create-comment"),
        ("POST", "/repos/{owner}/{repo}/issues/{issue_number}/labels", "issues/add-labels"),
        ("PATCH", "/repos/{owner}/{repo}/issues/{issue_number}", "issues/update"),
        ("GET", "/repos/{owner}/{repo}/issues/{issue_number}", "issues/get"),
    ];
    let doc = openapi();
    for (method, path, id) in wanted {
        let call = CALLS.iter().find(|c| c.method == method && c.path == path).unwrap_or_else(|| panic!("{method} {path} is not in CALLS"));
        assert_eq!(operation(doc, call).unwrap()["operationId"], id);
    }
    assert_eq!(CALLS.len(), wanted.len(), "a call was added: list it here and cover it with a replay test");
    assert_eq!(github::CLOSE_ISSUE.body, &[("state", Some("closed")), ("state_reason", Some("completed"))]);
}

#[test]
fn the_fields_the_client_reads_are_in_the_responses() {
    let doc = openapi();
    let issue_fields = ["number", "state", "state_reason", "title", "html_url", "labels", "pull_request"];
    for call in [github::CREATE_ISSUE, github::CLOSE_ISSUE, github::GET_ISSUE] {
        let schema = response_schema(doc, &call);
        for f in issue_fields {
            assert!(property(doc, schema, f).is_some(), "{} {}: the response has no {f}", call.method, call.path);
        }
    }
    let comment = response_schema(doc, &github::CREATE_COMMENT);
    for f in ["id", "body", "html_url"] {
        assert!(property(doc, comment, f).is_some(), "the comment response has no {f}");
    }
    let labels = resolve(doc, response_schema(doc, &github::ADD_LABELS));
    assert_eq!(labels["type"], "array");
    assert!(property(doc, &labels["items"], "name").is_some(), "the add-labels response items have no name");
}

#[test]
fn the_checker_rejects_what_is_not_in_the_description() {
    let doc = openapi();
    let bad = [
        // Unknown path, wrong method, misspelled path parameter.
        Call { method: "POST", path: "/repos/{owner}/{repo}/issue", body: &[("title", None)] },
        Call { method: "PUT", path: "/repos/{owner}/{repo}/issues/{issue_number}", body: &[("state", None)] },
        Call { method: "GET", path: "/repos/{owner}/{repo}/issues/{number}", body: &[] },
        // A made-up field, a bad fixed value, a required field missing, a body where none goes.
        Call { method: "POST", path: "/repos/{owner}/{repo}/issues", body: &[("title", None), ("priority", None)] },
        Call { method: "PATCH", path: "/repos/{owner}/{repo}/issues/{issue_number}", body: &[("state", Some("resolved"))] },
        Call { method: "PATCH", path: "/repos/{owner}/{repo}/issues/{issue_number}", body: &[("state_reason", Some("done"))] },
        Call { method: "POST", path: "/repos/{owner}/{repo}/issues", body: &[("body", None), ("labels", None)] },
        Call { method: "POST", path: "/repos/{owner}/{repo}/issues/{issue_number}/comments", body: &[] },
        Call { method: "POST", path: "/repos/{owner}/{repo}/issues/{issue_number}/labels", body: &[("names", None)] },
        Call { method: "GET", path: "/repos/{owner}/{repo}/issues/{issue_number}", body: &[("state", None)] },
    ];
    for call in &bad {
        assert!(!check(doc, call).is_empty(), "{call:?} should be rejected");
    }
}
