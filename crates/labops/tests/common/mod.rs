//! Shared test harness: a real fakepve on loopback, labops configs, and the labops binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// `../shared` beside the repository.
pub fn shared() -> PathBuf {
    std::env::var_os("LABOPS_TEST_SHARED").map(PathBuf::from).unwrap_or_else(|| root().join("../shared"))
}

/// The Python that has fakepve installed (`LABOPS_TEST_PYTHON`, else `python3`).
pub fn python() -> String {
    std::env::var("LABOPS_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The labops binary under test.
pub fn labops() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_labops"));
    c.env_remove("LABOPS_CONFIG").env_remove("LABOPS_TOKEN").env("RUST_LOG", "warn,kube_client=off");
    c
}

/// A fakepve process serving a lab, with its fault-injection channel.
pub struct FakePve {
    child: Child,
    pub url: String,
    pub cafile: PathBuf,
    pub control: String,
    pub dir: tempfile::TempDir,
}

impl FakePve {
    /// The reference homelab (`shared/reference/homelab/fakepve-lab.json`).
    pub fn reference() -> Self {
        let lab = shared().join("reference/homelab/fakepve-lab.json");
        Self::start(&["--guests", lab.to_str().unwrap(), "--token", "root@pam!labops=token-secret-for-tests"])
    }

    /// Starts `testkit/fakepve_lab.py` with these arguments.
    pub fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(python())
            .arg(root().join("testkit/fakepve_lab.py"))
            .args(["--dir", dir.path().join("pve").to_str().unwrap()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start fakepve with {}: {e}; install it: pip install 'fakepve[crypto]'", python()));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("fakepve did not start ({e}): {line:?}; is fakepve installed for {}?", python()));
        Self {
            child,
            url: v["url"].as_str().unwrap().into(),
            cafile: v["cafile"].as_str().unwrap().into(),
            control: v["control"].as_str().unwrap().into(),
            dir,
        }
    }

    /// Runs one of fakepve's scenario methods.
    pub fn call(&self, method: &str, args: Value) {
        let body = serde_json::json!({"method": method, "args": args});
        let r = ureq_post(&format!("{}/call", self.control), &body);
        assert_eq!(r["ok"], true, "fakepve {method}: {r}");
    }

    /// Clears injected failures.
    pub fn reset(&self) {
        ureq_post(&format!("{}/reset", self.control), &serde_json::json!({}));
    }

    /// A config for this fakepve, with ticket login.
    pub fn config(&self, dir: &Path, extra: &str) -> PathBuf {
        std::fs::write(dir.join("pve-password"), "secret\n").unwrap();
        // A copy, so the config outlives this fakepve.
        std::fs::copy(&self.cafile, dir.join("pve-ca.pem")).unwrap();
        let path = dir.join("labops.toml");
        std::fs::write(
            &path,
            format!(
                "[lab]\nname = \"test lab\"\n\n[state]\ndata_dir = \"{data}\"\n\n[proxmox]\nurl = \"{url}\"\nuser = \"root@pam\"\npassword_file = \"{pw}\"\nca_file = \"{ca}\"\nrefresh_seconds = 1\ntimeout_seconds = 2\n\n[[hosts]]\nname = \"nas\"\naddress = \"192.168.4.10\"\n{extra}",
                data = dir.join("state").display(),
                url = self.url,
                pw = dir.join("pve-password").display(),
                ca = dir.join("pve-ca.pem").display(),
            ),
        )
        .unwrap();
        path
    }
}

impl Drop for FakePve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal blocking JSON POST over plain HTTP to the loopback control channel.
fn ureq_post(url: &str, body: &Value) -> Value {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (hostport, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap();
    let mut s = std::net::TcpStream::connect(hostport).unwrap();
    let b = body.to_string();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
        b.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|_| panic!("control answer: {out}"))
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
        let port = free_port();
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
