//! Every request the Proxmox client can send exists in the PVE 9.1.3 API schema, with valid
//! parameters and valid fixed values.

use labops_integrations::proxmox::{ApiCall, CALLS, LXC, QEMU};
use serde_json::Value;

fn schema() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/reference/proxmox/pve-api-schema.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_json::from_str(&text).expect("schema is JSON")
}

fn find<'a>(nodes: &'a Value, path: &str) -> Option<&'a Value> {
    for n in nodes.as_array()? {
        let p = n["path"].as_str()?;
        if p == path {
            return Some(n);
        }
        if path.starts_with(&format!("{p}/"))
            && let Some(found) = n.get("children").and_then(|c| find(c, path)) {
                return Some(found);
            }
    }
    None
}

fn valid_value(spec: &Value, v: &str) -> bool {
    if let Some(e) = spec.get("enum").and_then(Value::as_array) {
        return e.iter().any(|x| x.as_str() == Some(v));
    }
    match spec["type"].as_str() {
        Some("boolean") => matches!(v, "0" | "1" | "true" | "false"),
        Some("integer") => v.parse::<i64>().is_ok(),
        Some("number") => v.parse::<f64>().is_ok(),
        _ => true,
    }
}

fn check(schema: &Value, call: &ApiCall) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(node) = find(schema, call.path) else {
        return vec![format!("{} {}: path not in the schema", call.method, call.path)];
    };
    let Some(method) = node["info"].get(call.method) else {
        return vec![format!("{} {}: method not in the schema", call.method, call.path)];
    };
    let props = &method["parameters"]["properties"];
    let path_params: Vec<&str> =
        call.path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')).collect();
    for p in &path_params {
        if props.get(*p).is_none() {
            errors.push(format!("{} {}: path parameter {p} not declared", call.method, call.path));
        }
    }
    for (name, value) in call.params {
        match props.get(*name) {
            None => errors.push(format!("{} {}: parameter {name} not in the schema", call.method, call.path)),
            Some(spec) => {
                if let Some(v) = value
                    && !valid_value(spec, v) {
                        errors.push(format!("{} {}: {name}={v} is not valid for {spec}", call.method, call.path));
                    }
            }
        }
    }
    // Every required parameter must be sent.
    if let Some(obj) = props.as_object() {
        for (name, spec) in obj {
            let optional = spec.get("optional").and_then(Value::as_i64) == Some(1);
            let sent = path_params.contains(&name.as_str()) || call.params.iter().any(|(n, _)| n == name);
            if !optional && !sent {
                errors.push(format!("{} {}: required parameter {name} is not sent", call.method, call.path));
            }
        }
    }
    errors
}

#[test]
fn every_client_call_is_in_the_pve_schema() {
    let schema = schema();
    assert!(!CALLS.is_empty());
    let errors: Vec<String> = CALLS.iter().flat_map(|c| check(&schema, c)).collect();
    assert!(errors.is_empty(), "calls that do not match the PVE schema:\n{}", errors.join("\n"));
}

#[test]
fn the_guest_actions_are_in_the_call_list() {
    // The executor of `proxmox-task` sends these; each must be in CALLS so the test above checks
    // its method, path and parameters.
    let wanted = [
        ("GET", "/nodes/{node}/tasks/{upid}/status"),
        ("POST", "/nodes/{node}/qemu"),
        ("POST", "/nodes/{node}/lxc"),
        ("POST", "/nodes/{node}/qemu/{vmid}/clone"),
        ("DELETE", "/nodes/{node}/qemu/{vmid}"),
        ("DELETE", "/nodes/{node}/lxc/{vmid}"),
        ("GET", "/nodes/{node}/qemu/{vmid}/status/current"),
        ("POST", "/nodes/{node}/qemu/{vmid}/status/start"),
        ("POST", "/nodes/{node}/qemu/{vmid}/status/stop"),
        ("POST", "/nodes/{node}/lxc/{vmid}/status/start"),
        ("POST", "/nodes/{node}/lxc/{vmid}/status/stop"),
        ("GET", "/nodes/{node}/qemu/{vmid}/pending"),
        ("PUT", "/nodes/{node}/qemu/{vmid}/config"),
        ("PUT", "/nodes/{node}/lxc/{vmid}/config"),
        ("GET", "/nodes/{node}/qemu/{vmid}/snapshot"),
        ("POST", "/nodes/{node}/qemu/{vmid}/snapshot"),
        ("DELETE", "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}"),
        ("POST", "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/rollback"),
        ("PUT", "/nodes/{node}/qemu/{vmid}/resize"),
        ("POST", "/nodes/{node}/qemu/{vmid}/migrate"),
        ("POST", "/nodes/{node}/lxc/{vmid}/migrate"),
    ];
    for (method, path) in wanted {
        assert!(CALLS.iter().any(|c| c.method == method && c.path == path), "{method} {path} is not in CALLS");
    }
    // Indexed families are declared as the schema names them.
    assert!(QEMU.set_config.params.iter().any(|(n, _)| *n == "net[n]"));
    assert_eq!(QEMU.set_config.param("net0"), Some(None));
    assert_eq!(QEMU.set_config.param("net"), None);
    assert_eq!(LXC.create.param("ostemplate"), Some(None));
}

#[test]
fn the_checker_rejects_what_is_not_in_the_schema() {
    let schema = schema();
    let bad = [
        ApiCall { method: "GET", path: "/cluster/resourcez", params: &[] },
        ApiCall { method: "DELETE", path: "/version", params: &[] },
        ApiCall { method: "GET", path: "/cluster/resources", params: &[("type", Some("pods"))] },
        ApiCall { method: "GET", path: "/cluster/resources", params: &[("kind", None)] },
        ApiCall { method: "POST", path: "/access/ticket", params: &[("username", None)] },
        // Write calls: a missing required parameter, a made-up one, a bad fixed value, the wrong
        // method, and an indexed family spelled without its index.
        ApiCall { method: "POST", path: "/nodes/{node}/qemu/{vmid}/snapshot", params: &[("description", None)] },
        ApiCall { method: "PUT", path: "/nodes/{node}/qemu/{vmid}/resize", params: &[("disk", None), ("grow", None)] },
        ApiCall { method: "DELETE", path: "/nodes/{node}/qemu/{vmid}", params: &[("purge", Some("yes"))] },
        ApiCall { method: "PUT", path: "/nodes/{node}/qemu/{vmid}/migrate", params: &[("target", None)] },
        ApiCall { method: "PUT", path: "/nodes/{node}/qemu/{vmid}/config", params: &[("net", None)] },
        ApiCall { method: "POST", path: "/nodes/{node}/lxc", params: &[("vmid", None)] },
    ];
    for call in &bad {
        assert!(!check(&schema, call).is_empty(), "{call:?} should be rejected");
    }
}
