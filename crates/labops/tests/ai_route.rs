//! `labops ai route`: the privacy-first decision through the binary, with the local model server
//! probed over HTTP (a loopback server answering Ollama's model list), a cloud that cannot be
//! reached, and the inventory's names (from fakepve, stored by `labops status`) treated as
//! internal. No model is called.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;

use common::{FakePve, free_port, labops};
use serde_json::Value;

/// A loopback server that answers `200 {"models": []}` to every request, like Ollama's
/// `/api/tags`; returns its port and the paths it was asked for.
fn ollama_like() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut buf = [0u8; 4096];
            let n = c.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            log.lock().unwrap().push(head.split_whitespace().nth(1).unwrap_or("").to_string());
            let body = r#"{"models": []}"#;
            let _ = write!(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    (port, seen)
}

fn route(cfg: &std::path::Path, args: &[&str]) -> Value {
    let out = labops().arg("--config").arg(cfg).args(["ai", "route", "--json"]).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn requests_are_routed_by_privacy_first_then_by_what_answers() {
    let fake = FakePve::reference();
    let dir = tempfile::tempdir().unwrap();
    let (port, seen) = ollama_like();
    std::fs::write(dir.path().join("anthropic-key"), "sk-ant-api03-canary-0000000000000000000001\n").unwrap();
    let ai = format!(
        "\n[ai]\nsensitive_values = [\"SN-8841-CANARY\"]\n[ai.local]\nprovider = \"ollama\"\nurl = \"http://127.0.0.1:{port}\"\nmodel = \"qwen2.5:7b\"\n[ai.cloud]\nprovider = \"anthropic\"\nmodel = \"claude-sonnet-4-5\"\napi_key_file = \"{}\"\nurl = \"http://127.0.0.1:{}\"\n",
        dir.path().join("anthropic-key").display(),
        free_port()
    );
    let cfg = fake.config(dir.path(), &ai);
    // Store the inventory, whose names are internal.
    assert!(labops().arg("--config").arg(&cfg).arg("status").output().unwrap().status.success());

    let d = route(&cfg, &["why is still-fawn slow today?"]);
    assert_eq!((d["route"].as_str(), d["privacy"].as_str(), d["provider"].as_str()), (Some("local"), Some("sensitive"), Some("ollama/qwen2.5:7b")), "{d}");
    assert!(d["reasons"][0].as_str().unwrap().contains("configured as sensitive"), "an inventory name is internal: {d}");
    assert!(seen.lock().unwrap().iter().any(|p| p == "/api/tags"), "the local server was probed");

    let d = route(&cfg, &["--hard", "compare Longhorn and Ceph for a small cluster: trade-offs?"]);
    assert_eq!((d["route"].as_str(), d["privacy"].as_str(), d["purpose"].as_str()), (Some("local"), Some("public"), Some("architecture")), "{d}");
    assert!(d["reason"].as_str().unwrap().contains("unreachable"), "the cloud is down, so the local model serves: {d}");

    let canary = "ghp_canaryCANARYcanaryCANARYcanary0001";
    let out = labops().arg("--config").arg(&cfg).args(["ai", "route", "--json", &format!("is my token {canary} for serial SN-8841-CANARY still valid?")]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains(canary) && !text.contains("SN-8841-CANARY"), "the explanation never repeats a secret: {text}");
    let d: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(d["privacy"], "sensitive");
    assert_eq!(d["would_redact"].as_array().unwrap().len(), 2, "{d}");

    // The local model down: a sensitive request is refused, never sent to the cloud.
    let down = std::fs::read_to_string(&cfg).unwrap().replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{}", free_port()));
    std::fs::write(&cfg, down).unwrap();
    let d = route(&cfg, &["--purpose", "security", "review the firewall rules"]);
    assert_eq!(d["route"], "refused", "{d}");
    assert!(d["reason"].as_str().unwrap().contains("never sends a sensitive request off the machine"), "{d}");

    let out = labops().arg("--config").arg(&cfg).args(["ai", "route", "--purpose", "gossip", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a purpose"));
}
