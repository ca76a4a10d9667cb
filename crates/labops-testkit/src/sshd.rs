//! A real OpenSSH server on loopback for tests of commands run over SSH.
//!
//! [`Sshd::start`] runs the system's `/usr/sbin/sshd` (Debian's `openssh-server`) unprivileged
//! in the foreground on `127.0.0.1` and a free port, with everything in a temporary directory:
//! a fresh host key, a client key pair generated with `ssh-keygen` and authorized for the
//! current user, and a known-hosts file that already holds the host key. The server is killed
//! when the [`Sshd`] is dropped.
//!
//! When sshd is not installed, [`Sshd::start_or_skip`] prints a loud
//! `*** SKIPPED TIER: ... ***` line and returns `None`, so a test can return early
//! (`scripts/test` installs openssh-server where it can).
//!
//! ```no_run
//! let Some(sshd) = labops_testkit::sshd::Sshd::start_or_skip("system-check over SSH") else { return };
//! // ssh -p {port} -i {identity} -o UserKnownHostsFile={known_hosts} {user}@127.0.0.1 ...
//! let (port, identity, known_hosts) = (sshd.port(), sshd.identity_file(), sshd.known_hosts_file());
//! # let _ = (port, identity, known_hosts);
//! ```

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The sshd binary the tests use.
pub const SSHD: &str = "/usr/sbin/sshd";

/// What can go wrong starting the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `/usr/sbin/sshd` does not exist.
    #[error("{SSHD} is not installed (install Debian's openssh-server)")]
    NotInstalled,
    /// Preparing the keys or files failed.
    #[error("sshd for tests: {what}: {source}")]
    Setup {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A helper program (`ssh-keygen`, `id`) failed.
    #[error("sshd for tests: `{command}` failed: {output}")]
    Tool {
        /// The command.
        command: String,
        /// Its stderr.
        output: String,
    },
    /// sshd exited or did not listen in time.
    #[error("sshd for tests did not start: {log}")]
    NotListening {
        /// sshd's log.
        log: String,
    },
}

/// A running sshd on `127.0.0.1`, killed on drop.
#[derive(Debug)]
pub struct Sshd {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    user: String,
}

fn setup(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Setup { what, source }
}

/// Runs a helper program and returns its stdout.
fn tool(program: &str, args: &[&str]) -> Result<String, Error> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program).args(args).stdin(Stdio::null()).output().map_err(setup(format!("running `{command}`")))?;
    if !out.status.success() {
        return Err(Error::Tool { command, output: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn keygen(path: &Path, comment: &str) -> Result<(), Error> {
    let file = path.to_string_lossy();
    tool("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", &file]).map(|_| ())
}

fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(setup("finding a free port"))?;
    Ok(listener.local_addr().map_err(setup("finding a free port"))?.port())
}

impl Sshd {
    /// Starts a server, or prints `*** SKIPPED TIER: <tier> ... ***` and returns `None` when
    /// sshd is not installed.
    ///
    /// # Panics
    /// When sshd is installed but does not start (a broken setup must fail the test).
    pub fn start_or_skip(tier: &str) -> Option<Self> {
        match Self::start() {
            Ok(s) => Some(s),
            Err(Error::NotInstalled) => {
                // Straight to the process's stderr: the test harness captures `eprintln!`.
                let line = format!("\n*** SKIPPED TIER: {tier} ({SSHD} is missing; install openssh-server, as scripts/test does) ***\n");
                let _ = std::io::stderr().write_all(line.as_bytes());
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// Starts a server on a free loopback port and waits until it accepts connections.
    pub fn start() -> Result<Self, Error> {
        if !Path::new(SSHD).exists() {
            return Err(Error::NotInstalled);
        }
        // Run as root (CI), sshd insists on its privilege separation directory.
        if !Path::new("/run/sshd").exists() {
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        let dir = tempfile::Builder::new().prefix("labops-sshd-").tempdir().map_err(setup("creating a temporary directory"))?;
        let user = tool("id", &["-un"])?;
        keygen(&dir.path().join("host_key"), "labops-test-host")?;
        keygen(&dir.path().join("client_key"), "labops-test-client")?;
        std::fs::copy(dir.path().join("client_key.pub"), dir.path().join("authorized_keys")).map_err(setup("writing authorized_keys"))?;

        // The port may be taken between finding and binding it: try a few.
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let config = dir.path().join("sshd_config");
            let d = dir.path().display();
            let text = format!(
                "ListenAddress 127.0.0.1\nPort {port}\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\n\
                 UsePAM no\nStrictModes no\nPubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nAllowTcpForwarding no\nX11Forwarding no\nPrintMotd no\nLogLevel INFO\n"
            );
            std::fs::write(&config, text).map_err(setup("writing sshd_config"))?;
            let log_path = dir.path().join("sshd.log");
            let log = std::fs::File::create(&log_path).map_err(setup("creating sshd.log"))?;
            let mut child = Command::new(SSHD)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(setup(format!("starting {SSHD}")))?;
            let deadline = Instant::now() + Duration::from_secs(10);
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    let host_key = std::fs::read_to_string(dir.path().join("host_key.pub")).map_err(setup("reading the host key"))?;
                    let key: Vec<&str> = host_key.split_whitespace().take(2).collect();
                    std::fs::write(dir.path().join("known_hosts"), format!("[127.0.0.1]:{port} {}\n", key.join(" ")))
                        .map_err(setup("writing known_hosts"))?;
                    return Ok(Self { child, dir, port, user });
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            last_log.clear();
            if let Ok(mut f) = std::fs::File::open(&log_path) {
                let _ = f.read_to_string(&mut last_log);
            }
            if !last_log.contains("Address already in use") {
                break;
            }
        }
        Err(Error::NotListening { log: last_log.trim().to_string() })
    }

    /// The address sshd listens on: `127.0.0.1`.
    pub fn address(&self) -> &'static str {
        "127.0.0.1"
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user to log in as: the current user, whose key is authorized.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The client's private key.
    pub fn identity_file(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    /// A known-hosts file that holds the server's host key for `[127.0.0.1]:port`, for
    /// `StrictHostKeyChecking=yes`.
    pub fn known_hosts_file(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// The temporary directory holding the keys and config (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What sshd logged so far (connections, authentication failures).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
