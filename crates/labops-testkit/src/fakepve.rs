//! A real fakepve (the Proxmox VE API simulator from PyPI) on loopback, for tests.
//!
//! [`FakePve::start`] runs `testkit/fakepve_lab.py` with the Python named by
//! `LABOPS_TEST_PYTHON` (default `python3`) and waits for the JSON line it prints once it
//! listens. The fake serves the PVE API over TLS with its own CA ([`FakePve::cafile`]) and a
//! plain-HTTP control channel on loopback: [`FakePve::call`] runs one of fakepve's scenario
//! methods (`fail`, `hold_config_lock`, `set_node_offline`, ...), [`FakePve::reset`] clears
//! injected trouble, and [`FakePve::state`] answers the nodes and guests for assertions.
//!
//! ```no_run
//! use labops_testkit::fakepve::FakePve;
//! use serde_json::json;
//!
//! let pve = FakePve::reference();
//! pve.call("set_node_offline", json!(["pve"]));
//! assert!(pve.state()["guests"].as_array().is_some());
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

/// The repository root.
pub fn root() -> PathBuf {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    root.canonicalize().unwrap_or_else(|_| root.to_path_buf())
}

/// `../shared` beside the repository, or `LABOPS_TEST_SHARED`.
pub fn shared() -> PathBuf {
    std::env::var_os("LABOPS_TEST_SHARED").map(PathBuf::from).unwrap_or_else(|| root().join("../shared"))
}

/// The Python that has fakepve installed (`LABOPS_TEST_PYTHON`, else `python3`).
pub fn python() -> String {
    std::env::var("LABOPS_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A fakepve process serving a lab, with its fault-injection channel. Killed when dropped.
#[derive(Debug)]
pub struct FakePve {
    child: Child,
    /// The API's base URL, `https://127.0.0.1:PORT`.
    pub url: String,
    /// The CA certificate (PEM) the API's certificate is signed with.
    pub cafile: PathBuf,
    /// The control channel's base URL, `http://127.0.0.1:PORT`.
    pub control: String,
    /// Where the certificate lives; removed when dropped.
    pub dir: tempfile::TempDir,
}

impl FakePve {
    /// The reference homelab (`shared/reference/homelab/fakepve-lab.json`), ticket login as
    /// `root@pam` with password `secret`, and the API token `root@pam!labops=token-secret-for-tests`.
    pub fn reference() -> Self {
        let lab = shared().join("reference/homelab/fakepve-lab.json");
        Self::start(&["--guests", &lab.to_string_lossy(), "--token", "root@pam!labops=token-secret-for-tests"])
    }

    /// Starts `testkit/fakepve_lab.py` with these arguments.
    ///
    /// # Panics
    ///
    /// When fakepve cannot be started, with what to install.
    pub fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut child = Command::new(python())
            .arg(root().join("testkit/fakepve_lab.py"))
            .arg("--dir")
            .arg(dir.path().join("pve"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start fakepve with {}: {e}; install it: pip install 'fakepve[crypto]'", python()));
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout).read_line(&mut line).expect("fakepve's first line");
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("fakepve did not start ({e}): {line:?}; is fakepve installed for {}?", python()));
        let field = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("no {k} in fakepve's first line: {line}")).to_string();
        Self { url: field("url"), cafile: field("cafile").into(), control: field("control"), dir, child }
    }

    /// Runs one of fakepve's scenario methods with positional arguments (`json!([..])`).
    ///
    /// # Panics
    ///
    /// When the control channel refuses it (an unknown method, bad arguments).
    pub fn call(&self, method: &str, args: Value) {
        self.call_kw(method, args, json!({}));
    }

    /// Runs one of fakepve's scenario methods with positional and keyword arguments.
    ///
    /// # Panics
    ///
    /// When the control channel refuses it.
    pub fn call_kw(&self, method: &str, args: Value, kwargs: Value) {
        let body = json!({"method": method, "args": args, "kwargs": kwargs});
        let r = control_request("POST", &format!("{}/call", self.control), Some(&body));
        assert_eq!(r["ok"], true, "fakepve {method}: {r}");
    }

    /// Clears injected failures, network trouble, lost quorum and offline nodes.
    pub fn reset(&self) {
        control_request("POST", &format!("{}/reset", self.control), Some(&json!({})));
    }

    /// `{"nodes": {...}, "guests": [{"vmid", "name", "node", "status", "type"}], "requests": N}`.
    pub fn state(&self) -> Value {
        control_request("GET", &format!("{}/state", self.control), None)
    }

    /// A labops config for this fakepve, with ticket login, written to `dir/labops.toml`; `extra`
    /// is appended (more sections).
    pub fn config(&self, dir: &Path, extra: &str) -> PathBuf {
        std::fs::write(dir.join("pve-password"), "secret\n").expect("write the password file");
        // A copy, so the config outlives this fakepve.
        std::fs::copy(&self.cafile, dir.join("pve-ca.pem")).expect("copy the CA");
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
        .expect("write labops.toml");
        path
    }
}

impl Drop for FakePve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal blocking JSON request over plain HTTP to the loopback control channel.
fn control_request(method: &str, url: &str, body: Option<&Value>) -> Value {
    let rest = url.strip_prefix("http://").unwrap_or_else(|| panic!("control URL {url} is not http://"));
    let (hostport, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let mut s = std::net::TcpStream::connect(hostport).unwrap_or_else(|e| panic!("connect to fakepve's control {hostport}: {e}"));
    let b = body.map(Value::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
        b.len()
    )
    .expect("send to fakepve's control channel");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read fakepve's control answer");
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|_| panic!("control answer: {out}"))
}
