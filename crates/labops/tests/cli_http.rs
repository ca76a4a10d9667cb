//! The CLI's config handling and the HTTP guard (token, Host, body size), end to end.

mod common;

use common::*;
use serde_json::Value;

#[test]
fn config_validate_reports_every_error_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("labops.toml");
    std::fs::write(&cfg, "[proxmox]\nurl = \"pve:8006\"\nrefresh_seconds = -1\n[server]\nlisten = \"nowhere\"\n[[hosts]]\nnmae = \"x\"\n").unwrap();
    let out = labops().args(["--config", cfg.to_str().unwrap(), "config", "validate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    for want in ["proxmox.refresh_seconds", "hosts[0].nmae", "hosts[0].name"] {
        assert!(text.contains(want), "{want} missing in:\n{text}");
    }
}

#[test]
fn init_writes_a_config_that_validate_explains() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("conf/labops.toml");
    let out = labops().args(["init", cfg.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success());
    assert!(std::fs::read_to_string(&cfg).unwrap().contains("[proxmox]"));
    let again = labops().args(["init", cfg.to_str().unwrap()]).output().unwrap();
    assert!(!again.status.success(), "init must not overwrite without --force");
    let v = labops().args(["--config", cfg.to_str().unwrap(), "config", "validate"]).output().unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).contains("proxmox.token_secret_file"));
}

#[test]
fn environment_overrides_follow_the_file_structure() {
    let pve = FakePve::reference();
    let dir = tempfile::tempdir().unwrap();
    let cfg = pve.config(dir.path(), "");
    // Break the URL in the file; the environment fixes it.
    let text = std::fs::read_to_string(&cfg).unwrap().replace(&pve.url, "https://127.0.0.1:1");
    std::fs::write(&cfg, text).unwrap();
    let out = labops()
        .args(["--config", cfg.to_str().unwrap(), "resolve", "haos"])
        .env("LABOPS_PROXMOX__URL", &pve.url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // LABOPS_CONFIG names the file.
    let out = labops().args(["resolve", "haos"]).env("LABOPS_CONFIG", &cfg).env("LABOPS_PROXMOX__URL", &pve.url).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    // An unknown LABOPS_ key is an error naming it, not silently ignored.
    let out = labops().args(["--config", cfg.to_str().unwrap(), "config", "validate"]).env("LABOPS_PROXMOXX__URL", "x").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("proxmoxx"));
}

#[test]
fn serve_refuses_to_start_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("labops.toml");
    std::fs::write(&cfg, format!("[state]\ndata_dir = \"{}\"\n", dir.path().display())).unwrap();
    let out = labops().args(["--config", cfg.to_str().unwrap(), "serve", "--listen", "127.0.0.1:0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("token"));
}

#[test]
fn http_needs_a_token_a_known_host_and_a_small_body() {
    let pve = FakePve::reference();
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(&pve.config(dir.path(), ""));
    let c = http();
    let url = format!("{}/api/v1/summary", served.base);

    let r = c.get(&url).send().unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("www-authenticate").is_some());
    assert_eq!(c.get(&url).bearer_auth("wrong-token-0123456789").send().unwrap().status(), 401);
    assert_eq!(c.post(format!("{}/mcp", served.base)).body("{}").send().unwrap().status(), 401);

    let r = c.get(&url).bearer_auth(&served.token).header("Host", "evil.example:8080").send().unwrap();
    assert_eq!(r.status(), 403);
    let r = c.post(format!("{}/mcp", served.base)).bearer_auth(&served.token).header("Host", "rebind.attacker.example").body("{}").send().unwrap();
    assert_eq!(r.status(), 403);

    // An oversized body is refused from its Content-Length, before it is read.
    let status = raw_status(
        &served.base,
        &format!(
            "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{{",
            served.token,
            2 * 1024 * 1024
        ),
    );
    assert_eq!(status, 413);
    let status = raw_status(
        &served.base,
        &format!(
            "GET /api/v1/summary HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\nxx",
            served.token,
            5 * 1024 * 1024
        ),
    );
    assert_eq!(status, 413);

    // With all three right, the REST API answers from the same service as MCP.
    let v: Value = eventually(20, "the first refresh", || {
        let v: Value = c.get(&url).bearer_auth(&served.token).send().ok()?.json().ok()?;
        (v["counts"]["vm"] == 5).then_some(v)
    });
    assert_eq!(v["lab"], "test lab");
    let r = c.get(format!("{}/api/v1/impact/still-fawn", served.base)).bearer_auth(&served.token).send().unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    assert!(v["affected"].as_array().unwrap().iter().any(|i| i["id"] == "vm/108" && i["effect"] == "down"));
    let r = c.get(format!("{}/api/v1/entities/still-fawm", served.base)).bearer_auth(&served.token).send().unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["nearest"][0]["id"], "proxmox_node/still-fawn");
    // healthz needs no token and reveals nothing.
    assert_eq!(c.get(format!("{}/healthz", served.base)).send().unwrap().text().unwrap(), "ok\n");
}

/// Sends raw bytes and returns the status code of the answer.
fn raw_status(base: &str, request: &str) -> u16 {
    use std::io::{Read, Write};
    let addr = base.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("answer: {head}"))
}
