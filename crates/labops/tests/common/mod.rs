//! Shared test harness: a real fakepve on loopback (from `labops_testkit::fakepve`), labops
//! configs, and the labops binary.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use labops_testkit::fakepve::{FakePve, python, root, shared};

/// The labops binary under test.
pub fn labops() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_labops"));
    c.env_remove("LABOPS_CONFIG").env_remove("LABOPS_TOKEN").env("RUST_LOG", "warn,kube_client=off");
    c
}

/// A `labops serve` process.
pub struct Served {
    child: Child,
    pub base: String,
    pub token: String,
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Served {
    /// Starts `labops serve` on a free port and waits until it answers.
    pub fn start(config: &Path) -> Self {
        Self::start_on(config, free_port())
    }

    /// Starts `labops serve` on `port` and waits until it answers.
    pub fn start_on(config: &Path, port: u16) -> Self {
        let token = "test-token-0123456789abcdef".to_string();
        let child = labops()
            .args(["--config", config.to_str().unwrap(), "serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("LABOPS_TOKEN", &token)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "labops serve did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, base, token }
    }

    /// The process.
    pub fn child(&self) -> &Child {
        &self.child
    }

    /// Sends SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `labops incidents --json [--all]` with this config.
pub fn incidents(cfg: &Path, all: bool) -> Vec<serde_json::Value> {
    let mut args = vec!["--config", cfg.to_str().unwrap(), "incidents", "--json"];
    if all {
        args.push("--all");
    }
    let out = labops().args(&args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A blocking HTTP client for the tests.
pub fn http() -> reqwest::blocking::Client {
    labops_integrations::install_crypto_provider();
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(20)).build().unwrap()
}

/// Polls `f` until it returns `Some`, or panics with `what` after `secs`.
pub fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs git in `dir` (as a test author); its stdout, trimmed. Panics with git's stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=test", "-c", "user.email=test@localhost"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A GitOps repository for a test: a bare `dir/remote.git` and its clone `dir/gitops` on `main`,
/// with one commit "Start" holding `seed` (path, content) and pushed. Returns the `[gitops]`
/// section of a labops config for it.
pub fn gitops_repo(dir: &Path, seed: &[(&str, &str)]) -> String {
    let remote = dir.join("remote.git");
    git(dir, &["init", "--quiet", "--bare", "-b", "main", remote.to_str().unwrap()]);
    let work = dir.join("gitops");
    git(dir, &["clone", "--quiet", remote.to_str().unwrap(), work.to_str().unwrap()]);
    git(&work, &["checkout", "--quiet", "-b", "main"]);
    for (path, content) in seed {
        let file = work.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, content).unwrap();
    }
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "--quiet", "--allow-empty", "-m", "Start"]);
    git(&work, &["push", "--quiet", "origin", "main"]);
    format!("\n[gitops]\npath = \"{}\"\nremote = \"origin\"\nbranch = \"main\"\n", work.display())
}

/// A loopback HTTP endpoint for the tests: answers every request with `respond(path)` (status,
/// JSON body) and keeps each request's path and JSON body.
pub fn endpoint(respond: impl Fn(&str) -> (u16, String) + Send + Sync + 'static) -> (String, std::sync::Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let mut req = None;
            loop {
                let n = s.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let len: usize = head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())).and_then(|v| v.parse().ok()).unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        let n = s.read(&mut chunk).unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    req = Some((path, buf[end + 4..].to_vec()));
                    break;
                }
            }
            let Some((path, body)) = req else { continue };
            g.lock().unwrap().push((path.clone(), serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null)));
            let (status, text) = respond(&path);
            let _ = s.write_all(format!("HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}", text.len()).as_bytes());
        }
    });
    (base, got)
}
