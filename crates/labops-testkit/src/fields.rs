//! Patches and field ownership: JSON merge patch, JSON patch, and a simplified server-side
//! apply that keeps `metadata.managedFields` in the real `FieldsV1` shape.
//!
//! The simplification against the real structured-merge-diff: every list is atomic (applying
//! a list replaces it whole and one manager owns it), where the real server merges lists such
//! as `containers` by key. Maps merge field by field, a manager that stops applying a field it
//! owned alone removes it, and applying a different value to a field another manager owns is
//! a conflict unless `force` is set. Non-apply writes record an `Update` entry for the fields
//! they changed and take those fields from other managers, as the real server does.

use serde_json::{json, Map, Value};

/// A path of field names from the object root.
pub(crate) type Path = Vec<String>;

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The main resource; `status` is excluded when the resource has a status subresource.
    Main {
        /// The resource has a `/status` subresource.
        status_subresource: bool,
    },
    /// The `/status` subresource: only `status`.
    Status,
}

/// Metadata fields the server owns; no manager tracks them and patches cannot set them.
pub(crate) const SERVER_METADATA: [&str; 10] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// RFC 7386 JSON merge patch; `null` removes a field, lists and scalars replace.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn pointer_tokens(ptr: &str) -> Result<Vec<String>, String> {
    if ptr.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = ptr.strip_prefix('/') else {
        return Err(format!("invalid JSON pointer {ptr:?}"));
    };
    Ok(rest.split('/').map(|t| t.replace("~1", "/").replace("~0", "~")).collect())
}

fn navigate<'a>(doc: &'a mut Value, tokens: &[String]) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for t in tokens {
        cur = match cur {
            Value::Object(m) => m.get_mut(t).ok_or_else(|| format!("missing path element {t:?}"))?,
            Value::Array(a) => {
                let i: usize = t.parse().map_err(|_| format!("invalid array index {t:?}"))?;
                a.get_mut(i).ok_or_else(|| format!("array index {i} out of bounds"))?
            }
            _ => return Err(format!("cannot descend into a scalar at {t:?}")),
        };
    }
    Ok(cur)
}

fn pointer_remove(doc: &mut Value, ptr: &str) -> Result<Value, String> {
    let tokens = pointer_tokens(ptr)?;
    let Some((last, parent)) = tokens.split_last() else {
        return Err("cannot remove the document root".into());
    };
    match navigate(doc, parent)? {
        Value::Object(m) => m.remove(last).ok_or_else(|| format!("no field {last:?} to remove")),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| format!("invalid array index {last:?}"))?;
            if i < a.len() { Ok(a.remove(i)) } else { Err(format!("array index {i} out of bounds")) }
        }
        _ => Err("cannot remove from a scalar".into()),
    }
}

fn pointer_add(doc: &mut Value, ptr: &str, value: Value, replace: bool) -> Result<(), String> {
    let tokens = pointer_tokens(ptr)?;
    let Some((last, parent)) = tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    match navigate(doc, parent)? {
        Value::Object(m) => {
            if replace && !m.contains_key(last) {
                return Err(format!("no field {last:?} to replace"));
            }
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            if last == "-" && !replace {
                a.push(value);
                return Ok(());
            }
            let i: usize = last.parse().map_err(|_| format!("invalid array index {last:?}"))?;
            if replace {
                let slot = a.get_mut(i).ok_or_else(|| format!("array index {i} out of bounds"))?;
                *slot = value;
            } else if i <= a.len() {
                a.insert(i, value);
            } else {
                return Err(format!("array index {i} out of bounds"));
            }
            Ok(())
        }
        _ => Err("cannot add to a scalar".into()),
    }
}

/// RFC 6902 JSON patch (`add`, `remove`, `replace`, `move`, `copy`, `test`).
pub(crate) fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops.as_array().ok_or("a JSON patch must be an array of operations")?;
    for op in ops {
        let name = op.get("op").and_then(Value::as_str).ok_or("operation without \"op\"")?;
        let path = op.get("path").and_then(Value::as_str).ok_or("operation without \"path\"")?;
        let value = || op.get("value").cloned().ok_or_else(|| format!("{name} without \"value\""));
        let from = || op.get("from").and_then(Value::as_str).ok_or_else(|| format!("{name} without \"from\""));
        match name {
            "add" => pointer_add(doc, path, value()?, false)?,
            "replace" => pointer_add(doc, path, value()?, true)?,
            "remove" => {
                pointer_remove(doc, path)?;
            }
            "move" => {
                let v = pointer_remove(doc, from()?)?;
                pointer_add(doc, path, v, false)?;
            }
            "copy" => {
                let v = doc.pointer(from()?).cloned().ok_or("copy from a missing path")?;
                pointer_add(doc, path, v, false)?;
            }
            "test" => {
                if doc.pointer(path) != Some(&value()?) {
                    return Err(format!("test failed at {path}"));
                }
            }
            other => return Err(format!("unknown JSON patch operation {other:?}")),
        }
    }
    Ok(())
}

/// The field set of a value: `{"f:a": {"f:b": {}}}`, an empty map marking a leaf.
fn fieldset_of(v: &Value) -> Value {
    let mut fs = Map::new();
    if let Value::Object(m) = v {
        for (k, child) in m {
            let inner = match child {
                Value::Object(c) if !c.is_empty() => fieldset_of(child),
                _ => json!({}),
            };
            fs.insert(format!("f:{k}"), inner);
        }
    }
    Value::Object(fs)
}

/// The part of `obj` that a write in `scope` may change: no apiVersion/kind, no server-owned
/// metadata, and status only where the scope says.
pub(crate) fn restrict(obj: &Value, scope: Scope) -> Value {
    let mut out = Map::new();
    let Some(m) = obj.as_object() else { return Value::Object(out) };
    for (k, v) in m {
        let keep = match (k.as_str(), scope) {
            ("apiVersion" | "kind", _) => false,
            ("status", Scope::Main { status_subresource }) => !status_subresource,
            ("status", Scope::Status) => true,
            (_, Scope::Status) => false,
            _ => true,
        };
        if !keep {
            continue;
        }
        if k == "metadata" {
            let mut meta = v.as_object().cloned().unwrap_or_default();
            meta.retain(|mk, _| !SERVER_METADATA.contains(&mk.as_str()));
            if !meta.is_empty() {
                out.insert(k.clone(), Value::Object(meta));
            }
        } else {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

/// The field set a write in `scope` would own for `obj`.
fn tracked(obj: &Value, scope: Scope) -> Value {
    fieldset_of(&restrict(obj, scope))
}

fn leaves(fs: &Value) -> Vec<Path> {
    fn walk(fs: &Value, prefix: &mut Path, out: &mut Vec<Path>) {
        let Some(m) = fs.as_object() else { return };
        for (k, child) in m {
            let Some(name) = k.strip_prefix("f:") else { continue };
            prefix.push(name.to_string());
            if child.as_object().is_some_and(|c| !c.is_empty()) {
                walk(child, prefix, out);
            } else {
                out.push(prefix.clone());
            }
            prefix.pop();
        }
    }
    let mut out = Vec::new();
    walk(fs, &mut Vec::new(), &mut out);
    out
}

fn fs_has(fs: &Value, path: &[String]) -> bool {
    let mut cur = fs;
    for p in path {
        match cur.get(format!("f:{p}")) {
            Some(next) => cur = next,
            None => return false,
        }
    }
    true
}

fn fs_insert(fs: &mut Value, path: &[String]) {
    let mut cur = fs;
    for p in path {
        if !cur.is_object() {
            *cur = json!({});
        }
        cur = cur.as_object_mut().expect("object").entry(format!("f:{p}")).or_insert_with(|| json!({}));
    }
}

/// Removes the node at `path` and any parent left empty by it.
fn fs_remove(fs: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else { return };
    let key = format!("f:{first}");
    let Some(m) = fs.as_object_mut() else { return };
    if rest.is_empty() {
        m.remove(&key);
        return;
    }
    if let Some(child) = m.get_mut(&key) {
        let was_interior = child.as_object().is_some_and(|c| !c.is_empty());
        fs_remove(child, rest);
        if was_interior && child.as_object().is_some_and(|c| c.is_empty()) {
            m.remove(&key);
        }
    }
}

fn get_path<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for p in path {
        cur = cur.get(p)?;
    }
    Some(cur)
}

fn remove_path(obj: &mut Value, path: &[String]) {
    let Some((last, parent)) = path.split_last() else { return };
    let mut cur = obj;
    for p in parent {
        match cur.get_mut(p) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

fn entries(obj: &Value) -> Vec<Value> {
    obj.pointer("/metadata/managedFields").and_then(Value::as_array).cloned().unwrap_or_default()
}

fn set_entries(obj: &mut Value, mut list: Vec<Value>) {
    // Drop ownership of fields that no longer exist, then managers that own nothing.
    for e in &mut list {
        if let Some(fs) = e.get_mut("fieldsV1") {
            for leaf in leaves(fs) {
                if get_path(obj, &leaf).is_none() {
                    fs_remove(fs, &leaf);
                }
            }
        }
    }
    list.retain(|e| e.get("fieldsV1").and_then(Value::as_object).is_some_and(|m| !m.is_empty()));
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn same_entry(e: &Value, manager: &str, operation: &str, subresource: Option<&str>) -> bool {
    e.get("manager").and_then(Value::as_str) == Some(manager)
        && e.get("operation").and_then(Value::as_str) == Some(operation)
        && e.get("subresource").and_then(Value::as_str) == subresource
}

fn new_entry(manager: &str, operation: &str, api_version: &str, subresource: Option<&str>, now: &str) -> Value {
    let mut e = json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": now,
        "fieldsType": "FieldsV1",
        "fieldsV1": {},
    });
    if let Some(s) = subresource {
        e["subresource"] = json!(s);
    }
    e
}

/// What a non-apply write records: `manager` (operation `Update`) owns every field it added
/// or changed between `old` and `new`, and other managers lose those fields.
pub(crate) fn record_update(
    new: &mut Value,
    old: Option<&Value>,
    manager: &str,
    scope: Scope,
    subresource: Option<&str>,
    api_version: &str,
    now: &str,
) {
    let mut list = old.map(entries).unwrap_or_default();
    let changed: Vec<Path> = leaves(&tracked(new, scope))
        .into_iter()
        .filter(|p| old.and_then(|o| get_path(o, p)) != get_path(new, p))
        .filter(|p| !get_path(new, p).is_some_and(Value::is_object))
        .collect();
    if !changed.is_empty() {
        for e in list.iter_mut().filter(|e| !same_entry(e, manager, "Update", subresource)) {
            if let Some(fs) = e.get_mut("fieldsV1") {
                for p in &changed {
                    fs_remove(fs, p);
                }
            }
        }
        let idx = match list.iter().position(|e| same_entry(e, manager, "Update", subresource)) {
            Some(i) => i,
            None => {
                list.push(new_entry(manager, "Update", api_version, subresource, now));
                list.len() - 1
            }
        };
        let e = &mut list[idx];
        e["time"] = json!(now);
        e["apiVersion"] = json!(api_version);
        let fs = e.get_mut("fieldsV1").expect("fieldsV1");
        for p in &changed {
            fs_insert(fs, p);
        }
    }
    set_entries(new, list);
}

/// A server-side apply conflict: who owns which field.
#[derive(Debug, Clone)]
pub(crate) struct Conflict {
    /// The manager that owns the field.
    pub manager: String,
    /// The API version that manager used.
    pub api_version: String,
    /// The field, as `.spec.replicas`.
    pub field: String,
}

/// Server-side apply of `applied` by `manager` onto `current` (or onto nothing, to create).
///
/// Returns the new object with its `managedFields`, or the conflicts when another manager
/// owns a field this apply would change and `force` is false.
pub(crate) fn apply(
    current: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    scope: Scope,
    api_version: &str,
    now: &str,
) -> Result<Value, Vec<Conflict>> {
    let new_fs = tracked(applied, scope);
    let mut list = current.map(entries).unwrap_or_default();
    let own = |e: &Value| same_entry(e, manager, "Apply", subresource_of(scope));

    // Conflicts: a field this apply sets to a different value than the object has, owned by
    // another manager. The applier's own entries (any operation) never conflict.
    // Only values count: an applied empty map (`labels: {}`) neither conflicts nor takes
    // fields from anyone.
    let value_leaves: Vec<Path> =
        leaves(&new_fs).into_iter().filter(|p| !get_path(applied, p).is_some_and(Value::is_object)).collect();
    let mut conflicts = Vec::new();
    if let Some(cur) = current {
        for leaf in &value_leaves {
            let (have, want) = (get_path(cur, leaf), get_path(applied, leaf));
            if have.is_none() || have == want {
                continue;
            }
            for e in &list {
                if e.get("manager").and_then(Value::as_str) == Some(manager) {
                    continue;
                }
                if e.get("fieldsV1").is_some_and(|fs| fs_has(fs, leaf)) {
                    conflicts.push(Conflict {
                        manager: e.get("manager").and_then(Value::as_str).unwrap_or_default().to_string(),
                        api_version: e.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string(),
                        field: format!(".{}", leaf.join(".")),
                    });
                }
            }
        }
    }
    if !conflicts.is_empty() {
        if !force {
            return Err(conflicts);
        }
        for leaf in &value_leaves {
            for e in list.iter_mut().filter(|e| e.get("manager").and_then(Value::as_str) != Some(manager)) {
                if let Some(fs) = e.get_mut("fieldsV1") {
                    fs_remove(fs, leaf);
                }
            }
        }
    }

    let mut obj = current.cloned().unwrap_or_else(|| json!({}));
    // Fields this manager applied before and no longer applies go away, unless another
    // manager also owns them.
    if let Some(prev) = list.iter().find(|e| own(e)).and_then(|e| e.get("fieldsV1")).cloned() {
        for leaf in leaves(&prev) {
            if fs_has(&new_fs, &leaf) {
                continue;
            }
            let shared = list.iter().filter(|e| !own(e)).any(|e| e.get("fieldsV1").is_some_and(|fs| fs_has(fs, &leaf)));
            if !shared {
                remove_path(&mut obj, &leaf);
            }
        }
    }
    merge_patch(&mut obj, &restrict(applied, scope));

    let changed = list.iter().find(|e| own(e)).and_then(|e| e.get("fieldsV1")) != Some(&new_fs);
    match list.iter_mut().find(|e| own(e)) {
        Some(e) => {
            if changed {
                e["time"] = json!(now);
            }
            e["apiVersion"] = json!(api_version);
            e["fieldsV1"] = new_fs;
        }
        None => {
            let mut e = new_entry(manager, "Apply", api_version, subresource_of(scope), now);
            e["fieldsV1"] = new_fs;
            list.push(e);
        }
    }
    if obj.get("metadata").is_none() {
        obj["metadata"] = json!({});
    }
    set_entries(&mut obj, list);
    Ok(obj)
}

fn subresource_of(scope: Scope) -> Option<&'static str> {
    match scope {
        Scope::Main { .. } => None,
        Scope::Status => Some("status"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: Scope = Scope::Main { status_subresource: true };

    fn deployment(replicas: i64, labels: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "namespace": "apps", "labels": labels},
               "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "web"}]}}},
               "status": {"readyReplicas": 1}})
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge_patch(&mut doc, &json!({"a": {"b": null, "d": 3}, "l": [3]}));
        assert_eq!(doc, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
    }

    #[test]
    fn json_patch_applies_operations_in_order() {
        let mut doc = json!({"spec": {"replicas": 1, "ports": [80]}});
        json_patch(
            &mut doc,
            &json!([
                {"op": "test", "path": "/spec/replicas", "value": 1},
                {"op": "replace", "path": "/spec/replicas", "value": 3},
                {"op": "add", "path": "/spec/ports/-", "value": 443},
                {"op": "copy", "from": "/spec/replicas", "path": "/spec/copy"},
                {"op": "remove", "path": "/spec/ports/0"}
            ]),
        )
        .unwrap();
        assert_eq!(doc, json!({"spec": {"replicas": 3, "ports": [443], "copy": 3}}));
        assert!(json_patch(&mut doc, &json!([{"op": "test", "path": "/spec/replicas", "value": 1}])).is_err());
    }

    #[test]
    fn apply_owns_fields_removes_dropped_ones_and_detects_conflicts() {
        let first = apply(None, &deployment(2, json!({"a": "1", "b": "2"})), "ops", false, MAIN, "apps/v1", "t1").unwrap();
        assert!(first.get("status").is_none(), "status is not applied through the main resource");
        let fs = &first["metadata"]["managedFields"][0]["fieldsV1"];
        assert!(fs_has(fs, &["spec".into(), "replicas".into()]));
        assert!(fs_has(fs, &["metadata".into(), "labels".into(), "b".into()]));

        // The same manager drops label b: it disappears.
        let second = apply(Some(&first), &deployment(2, json!({"a": "1"})), "ops", false, MAIN, "apps/v1", "t2").unwrap();
        assert_eq!(second["metadata"]["labels"], json!({"a": "1"}));

        // Another manager changing replicas conflicts, unless forced.
        let err = apply(Some(&second), &deployment(5, json!({})), "other", false, MAIN, "apps/v1", "t3").unwrap_err();
        assert_eq!(err[0].manager, "ops");
        assert_eq!(err[0].field, ".spec.replicas");
        let forced = apply(Some(&second), &deployment(5, json!({})), "other", true, MAIN, "apps/v1", "t3").unwrap();
        assert_eq!(forced["spec"]["replicas"], 5);
        let owners: Vec<&str> = forced["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| fs_has(&e["fieldsV1"], &["spec".into(), "replicas".into()]))
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert_eq!(owners, ["other"]);
    }

    #[test]
    fn updates_take_ownership_of_changed_fields() {
        let applied = apply(None, &deployment(2, json!({})), "ops", false, MAIN, "apps/v1", "t1").unwrap();
        let mut updated = applied.clone();
        updated["spec"]["replicas"] = json!(4);
        record_update(&mut updated, Some(&applied), "hpa", MAIN, None, "apps/v1", "t2");
        let err = apply(Some(&updated), &deployment(2, json!({})), "ops", false, MAIN, "apps/v1", "t3").unwrap_err();
        assert_eq!(err[0].manager, "hpa");
    }
}
