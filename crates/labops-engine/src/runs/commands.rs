//! Allowlisted shell commands, run locally or on a host over SSH, and [`NodeCommands`], the
//! executor of `proxmox-task` steps written as `commands`.
//!
//! A command line goes through three stages:
//!
//! 1. [`Allowlist::parse`] reads it without a shell. A small quote-aware scanner splits it into
//!    pipeline stages on unquoted `|` and refuses every other shell operator (`;`, `&&`, `||`,
//!    `&`, `>`, `<`, backticks, `$(`, `$VAR`, subshells, wildcards, comments, newlines); `shlex`
//!    then splits each stage into words. Every stage must match an [`AllowedCommand`] of the
//!    list: program name, subcommand, options and operands are all checked. The result is a
//!    [`Pipeline`], the only thing a [`CommandRunner`] accepts.
//! 2. [`CommandRunner::run`] runs a pipeline on a [`Target`]: locally, connecting the processes'
//!    pipes itself (no `sh -c`), or over SSH with the system `ssh` binary, sending the pipeline
//!    with every word shell-quoted so the remote shell sees exactly the words that were checked.
//! 3. Output is captured up to [`Limits::max_output`] per stream (the rest is drained and
//!    counted), and the pipeline is killed after [`Limits::timeout`].
//!
//! Two lists ship: [`READ_ONLY`] for `system-check` (commands that only read) and
//! [`NODE_COMMANDS`] for `proxmox-task` `commands` (commands that change a node, each with its
//! [`Undo`]). Tests may extend a list with [`Allowlist::with`]; the shipped lists never contain
//! general-purpose file tools.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use labops_core::inventory::EntityKind;
use labops_core::workflow::StepType;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::process::{Child, Command};

use super::executor::{Compensation, Executor, Ground, RetryPolicy, RunStep, Started, StepCx, StepError, Verified};

/// What can go wrong checking or running a command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The command line is not allowed: a shell operator, a command off the list, a refused
    /// option or operand. The message names the command and says what is accepted.
    #[error("{0}")]
    NotAllowed(String),
    /// The host name cannot be used as an SSH destination.
    #[error("`{host}` is not a usable host name: {reason}")]
    BadHost {
        /// The name as written.
        host: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A process could not be started (program missing, no permission).
    #[error("cannot start `{program}` {place}: {source}; {hint}")]
    Spawn {
        /// The program.
        program: String,
        /// `on this machine` or `to reach <host>`.
        place: String,
        /// What to do about it.
        hint: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Reading a process's output or waiting for it failed.
    #[error("running `{command}` failed: {source}")]
    Io {
        /// The command line.
        command: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------------
// Settings and targets
// ---------------------------------------------------------------------------------------------

/// How `ssh` checks the host key of the host it connects to (its `StrictHostKeyChecking`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyChecking {
    /// Connect only to hosts whose key is already in the known-hosts file.
    #[default]
    Yes,
    /// Trust a host's key on first connection and record it; refuse a changed key.
    AcceptNew,
    /// Do not check host keys at all (open to man-in-the-middle; for throwaway labs only).
    No,
}

impl HostKeyChecking {
    fn as_ssh_value(self) -> &'static str {
        match self {
            Self::Yes => "yes",
            Self::AcceptNew => "accept-new",
            Self::No => "no",
        }
    }
}

/// How labops reaches hosts over SSH to run allowlisted commands. Commands always run with
/// `BatchMode=yes`: ssh never asks for a password or passphrase, so the key must be usable
/// without one (or loaded in an agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshSettings {
    /// The user to log in as; unset: ssh's default (the `User` of `~/.ssh/config`, else the
    /// user labops runs as). Proxmox nodes usually need `root` for `zpool` and `qm`.
    #[serde(default)]
    pub user: Option<String>,
    /// The SSH port; unset: ssh's default (the `Port` of `~/.ssh/config`, else 22).
    #[serde(default)]
    pub port: Option<u16>,
    /// The private key to authenticate with (passed as `-i`, with `IdentitiesOnly=yes`);
    /// unset: ssh's default keys and agent.
    #[serde(default)]
    pub identity_file: Option<PathBuf>,
    /// The known-hosts file holding the hosts' keys (`UserKnownHostsFile`); unset:
    /// `~/.ssh/known_hosts` of the user labops runs as.
    #[serde(default)]
    pub known_hosts_file: Option<PathBuf>,
    /// Host key checking: `yes` (default: the host's key must already be known), `accept-new`
    /// (trust on first use) or `no`.
    #[serde(default)]
    pub strict_host_key_checking: HostKeyChecking,
    /// Seconds to wait for the TCP connection and SSH handshake (`ConnectTimeout`).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_seconds: u64,
    /// Addresses of hosts whose names do not resolve from where labops runs, by host name as
    /// steps write it (`pve1 = "192.168.1.10"`). Other names are passed to ssh as written.
    #[serde(default)]
    pub hosts: BTreeMap<String, String>,
}

fn default_connect_timeout() -> u64 {
    10
}

impl Default for SshSettings {
    fn default() -> Self {
        Self {
            user: None,
            port: None,
            identity_file: None,
            known_hosts_file: None,
            strict_host_key_checking: HostKeyChecking::default(),
            connect_timeout_seconds: default_connect_timeout(),
            hosts: BTreeMap::new(),
        }
    }
}

/// Where a command runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// On the machine labops runs on.
    Local,
    /// On a host over SSH.
    Ssh {
        /// The host's name as the step wrote it.
        host: String,
        /// What ssh connects to: the address from [`SshSettings::hosts`], else the name.
        address: String,
    },
}

impl Target {
    /// `this machine` or `<host>`, for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Local => "this machine".to_string(),
            Self::Ssh { host, .. } => host.clone(),
        }
    }
}

impl SshSettings {
    /// Where a step's `host` (or `node`) runs: absent or `localhost` is this machine; any other
    /// name is reached over SSH, through [`SshSettings::hosts`] when listed there.
    pub fn target(&self, host: Option<&str>) -> Result<Target> {
        let Some(host) = host.map(str::trim).filter(|h| !h.is_empty()) else { return Ok(Target::Local) };
        if host == "localhost" {
            return Ok(Target::Local);
        }
        let address = self.hosts.get(host).map_or(host, String::as_str).trim();
        let bad = |reason| Err(Error::BadHost { host: host.to_string(), reason });
        if address.starts_with('-') {
            return bad("it starts with `-`, which ssh would read as an option");
        }
        if address.is_empty() || address.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("it contains spaces or control characters; write a host name or address, or map the name in the `hosts` table of the SSH settings");
        }
        Ok(Target::Ssh { host: host.to_string(), address: address.to_string() })
    }

    /// The `ssh` arguments before the remote command: options, then `--` and the address.
    fn ssh_args(&self, address: &str) -> Vec<String> {
        let mut args: Vec<String> = ["-T", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"].map(String::from).to_vec();
        args.push("-o".into());
        args.push(format!("ConnectTimeout={}", self.connect_timeout_seconds.max(1)));
        args.push("-o".into());
        args.push(format!("StrictHostKeyChecking={}", self.strict_host_key_checking.as_ssh_value()));
        if let Some(file) = &self.known_hosts_file {
            args.push("-o".into());
            args.push(format!("UserKnownHostsFile={}", file.display()));
        }
        if let Some(key) = &self.identity_file {
            args.extend(["-o".into(), "IdentitiesOnly=yes".into(), "-i".into(), key.display().to_string()]);
        }
        if let Some(port) = self.port {
            args.extend(["-p".into(), port.to_string()]);
        }
        if let Some(user) = &self.user {
            args.extend(["-l".into(), user.clone()]);
        }
        args.extend(["--".into(), address.to_string()]);
        args
    }

    /// What to do about an SSH failure, from ssh's own message.
    fn hint(&self, stderr: &str) -> String {
        let port = self.port.unwrap_or(22);
        let known = self.known_hosts_file.as_ref().map_or("~/.ssh/known_hosts".to_string(), |p| p.display().to_string());
        if stderr.contains("Host key verification failed") || stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
            format!(
                "the host's key is not in {known} (or has changed): check it, then add it with `ssh-keyscan -p {port} <host> >> {known}`, or set strict_host_key_checking = \"accept-new\""
            )
        } else if stderr.contains("Permission denied") {
            let key = self.identity_file.as_ref().map_or("labops's SSH key".to_string(), |p| format!("the public key of {}", p.display()));
            let user = self.user.as_deref().unwrap_or("the login user");
            format!("add {key} to ~/.ssh/authorized_keys of {user} on the host")
        } else {
            format!("check that the host is up, that sshd listens on port {port}, and that its name resolves from here (or map it in the `hosts` table of the SSH settings)")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Allowlists
// ---------------------------------------------------------------------------------------------

/// What a command's operands (its non-option arguments, subcommand excluded) may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operands {
    /// Anything.
    Any,
    /// None at all (an operand would change something, like `hostname NAME`).
    Forbidden,
    /// Files under `/proc/` or `/sys/` only (or `-` for standard input), at most `max` of them.
    /// With `pattern_first`, the first operand is a pattern rather than a file, unless an
    /// option in `pattern_options` gave it (`grep -e PATTERN`).
    KernelFiles {
        /// The first operand is a pattern (grep).
        pattern_first: bool,
        /// At most this many files (`uniq IN OUT` would write `OUT`).
        max: Option<usize>,
    },
    /// The first operand is a Proxmox VE API path matching one of these patterns, where `*`
    /// stands for one path segment (a node, a VMID, a storage); later operands are the values of
    /// API parameters (`pvesh get /nodes/*/storage/*/content --content backup`).
    ApiPaths(&'static [&'static str]),
    /// Debian package names only (`prometheus-node-exporter`): no file paths, no `pkg=version`
    /// or `pkg/release`, and not the `pkg-`/`pkg+` forms with which `apt-get` removes or installs
    /// a package other than the command says.
    Packages,
}

/// How a command from [`NODE_COMMANDS`] is undone when its run is rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undo {
    /// Nothing to undo (read-only commands, `systemctl restart`).
    Nothing,
    /// Undone by another allowlisted command built from this one: in `template`, `{N}` is the
    /// command's N-th operand after the subcommand (`zpool offline {1} {2}` undoes
    /// `zpool online tank sdb`), and `{*}` all of them in order (`apt-get remove --yes {*}`
    /// undoes `apt-get install a b --yes`). With `options_allowed: false` the template applies
    /// only to the plain form of the command (an option such as `zfs snapshot -r` changes what it
    /// acts on); with `true`, options may follow the operands (Proxmox tools:
    /// `qm stop 100 --skiplock 1`).
    Command {
        /// The undoing command, with `{N}` and `{*}` placeholders.
        template: &'static str,
        /// Whether options after the operands keep the template valid.
        options_allowed: bool,
    },
    /// Undoing needs a value known only before the command ran (the previous property, the old
    /// config): irreversible unless the step gives its own `rollback`. The text says what.
    NeedsPrevious(&'static str),
    /// Cannot be undone; the text says why. The engine asks a human before running it.
    Irreversible(&'static str),
}

/// One allowlisted command (a program, or a program and some of its subcommands) and the
/// rules its arguments must follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowedCommand {
    /// The program, as written in commands (a bare name: paths are refused).
    pub program: &'static str,
    /// Accepted subcommands (the first operand); empty: the command takes none.
    pub subcommands: &'static [&'static str],
    /// When not empty: the operand after the subcommand, if any, must be one of these
    /// (`ip addr show`, not `ip addr add`).
    pub verbs: &'static [&'static str],
    /// Options that take their value in the next argument, so it is not read as an operand.
    pub value_options: &'static [&'static str],
    /// When not empty, the only options accepted (numeric options such as `-5` always are).
    pub only_options: &'static [&'static str],
    /// Options refused because they change state, write files or never end.
    pub refused_options: &'static [&'static str],
    /// Options are whole words after one dash (`ip -br`), not clusters of letters.
    pub single_dash_long: bool,
    /// What the operands may be.
    pub operands: Operands,
    /// How the command is undone.
    pub undo: Undo,
}

impl AllowedCommand {
    /// A command that accepts any arguments and has nothing to undo; set the other fields with
    /// struct update syntax: `AllowedCommand { undo: ..., ..AllowedCommand::new("touch") }`.
    pub const fn new(program: &'static str) -> Self {
        Self {
            program,
            subcommands: &[],
            verbs: &[],
            value_options: &[],
            only_options: &[],
            refused_options: &[],
            single_dash_long: false,
            operands: Operands::Any,
            undo: Undo::Nothing,
        }
    }

    const fn subs(program: &'static str, subcommands: &'static [&'static str], undo: Undo) -> Self {
        Self { subcommands, undo, ..Self::new(program) }
    }

    /// `zpool status`, or `lsblk` for a command without subcommands.
    pub fn describe(&self) -> String {
        match self.subcommands {
            [] => self.program.to_string(),
            subs => format!("{} {}", self.program, subs.join("|")),
        }
    }
}

const fn undo(template: &'static str) -> Undo {
    Undo::Command { template, options_allowed: false }
}

const fn undo_pve(template: &'static str) -> Undo {
    Undo::Command { template, options_allowed: true }
}

/// The `systemctl` options that reach another host or container.
const SYSTEMCTL_ELSEWHERE: &[&str] = &["-H", "--host", "-M", "--machine"];

/// `systemctl` on this host only (`-H`/`-M` would reach another).
const fn systemctl(subcommands: &'static [&'static str], undo: Undo) -> AllowedCommand {
    AllowedCommand {
        value_options: SYSTEMCTL_ELSEWHERE,
        refused_options: SYSTEMCTL_ELSEWHERE,
        ..AllowedCommand::subs("systemctl", subcommands, undo)
    }
}

const KERNEL_FILES: Operands = Operands::KernelFiles { pattern_first: false, max: None };

/// The read-only commands a `system-check` may run, with the arguments each accepts. Every
/// entry only reads: options that write, change settings or never end are refused, and
/// file-reading tools (`cat`, `grep`, `head`, `tail`, `wc`, `sort`, `uniq`) read only
/// `/proc/` and `/sys/` (or the pipe before them), so a check cannot read secrets.
///
/// | command | accepts |
/// |---|---|
/// | `lsblk`, `df`, `uptime`, `uname`, `lspci`, `lsusb`, `echo`, `true`, `test` | any arguments |
/// | `dmesg` | reading options; not `-c`/`-C`/`-D`/`-E`/`-n`/`-w`/`-W`/`-F` |
/// | `smartctl` | `-a -H -i -A -x -c -d -j -n -q --scan` and their long forms (no `-s`, `-t`, `-o`, `-l`) |
/// | `zpool` | `status`, `list` |
/// | `zfs` | `list`, `get` |
/// | `free` | not `-s`/`-c` (repeat forever) |
/// | `ip` | `addr`, `link`, `route` with `show`/`list`/`get` |
/// | `nvidia-smi` | query options only (`-q -L -x -i -d --query-gpu --format ...`) |
/// | `sensors` | not `-s` (sets limits) |
/// | `cat` | files under `/proc/` and `/sys/` |
/// | `hostname` | display options, no new name |
/// | `systemctl` | `status`, `is-active`, `is-enabled`, `is-failed`, `show`, `list-units` |
/// | `journalctl` | reading options (`-u -b -n -p -k --since --until -o -g -r ...`), not `-f` |
/// | `grep`, `head`, `tail`, `wc`, `sort`, `uniq` | standard input, or files under `/proc/` and `/sys/`; not `tail -f`, `sort -o`, `grep -r` |
/// | `pvesh` | `get`, `ls` of the API paths in [`PVE_READ_PATHS`] (status, config and listings; no path that returns secrets or file contents) |
/// | `pvecm` | `status`, `nodes` |
/// | `pveversion` | `-v` |
/// | `timedatectl` | `status`, `show` (not `-H`/`-M`: another host) |
pub const READ_ONLY: &[AllowedCommand] = &[
    AllowedCommand::new("lsblk"),
    AllowedCommand {
        value_options: &["-l", "--level", "-f", "--facility", "-s", "--buffer-size", "--time-format"],
        refused_options: &[
            "-c", "--read-clear", "-C", "--clear", "-D", "--console-off", "-E", "--console-on", "-n", "--console-level", "-w",
            "--follow", "-W", "--follow-new", "-F", "--file",
        ],
        operands: Operands::Forbidden,
        ..AllowedCommand::new("dmesg")
    },
    AllowedCommand {
        value_options: &["-d", "--device", "-n", "--nocheck", "-q", "--quietmode"],
        // Not `-l`: `-l scterc,70,70` and `-l scttempint,N` change the drive's settings.
        only_options: &[
            "-a", "--all", "-H", "--health", "-i", "--info", "-A", "--attributes", "-x", "--xall", "-c", "--capabilities", "-d",
            "--device", "-j", "--json", "-n", "--nocheck", "--scan", "--scan-open", "-q", "--quietmode",
        ],
        ..AllowedCommand::new("smartctl")
    },
    AllowedCommand::subs("zpool", &["status", "list"], Undo::Nothing),
    AllowedCommand { value_options: &["-o", "-s", "-S", "-t", "-d"], ..AllowedCommand::subs("zfs", &["list", "get"], Undo::Nothing) },
    AllowedCommand::new("df"),
    AllowedCommand { refused_options: &["-s", "--seconds", "-c", "--count"], ..AllowedCommand::new("free") },
    AllowedCommand::new("uptime"),
    AllowedCommand {
        verbs: &["show", "list", "ls", "lst", "get"],
        only_options: &[
            "-4", "-6", "-br", "-brief", "-c", "-color", "-d", "-details", "-j", "-json", "-p", "-pretty", "-s", "-stats",
            "-statistics", "-o", "-oneline", "-h", "-human", "-f", "-family",
        ],
        value_options: &["-f", "-family"],
        single_dash_long: true,
        ..AllowedCommand::subs("ip", &["addr", "address", "a", "link", "l", "route", "r", "ro"], Undo::Nothing)
    },
    AllowedCommand { refused_options: &["-w", "--write"], ..AllowedCommand::new("lspci") },
    AllowedCommand::new("lsusb"),
    AllowedCommand {
        value_options: &["-i", "--id", "-d", "--display", "--format"],
        only_options: &[
            "-q", "--query", "-L", "--list-gpus", "-x", "--xml-format", "-i", "--id", "-d", "--display", "--query-gpu",
            "--query-compute-apps", "--format", "-u", "--unit",
        ],
        operands: Operands::Forbidden,
        ..AllowedCommand::new("nvidia-smi")
    },
    AllowedCommand { refused_options: &["-s", "--set", "-c", "--config-file"], ..AllowedCommand::new("sensors") },
    AllowedCommand { operands: KERNEL_FILES, ..AllowedCommand::new("cat") },
    AllowedCommand::new("uname"),
    AllowedCommand {
        only_options: &[
            "-f", "--fqdn", "--long", "-s", "--short", "-i", "--ip-address", "-I", "--all-ip-addresses", "-d", "--domain", "-A",
            "--all-fqdns",
        ],
        operands: Operands::Forbidden,
        ..AllowedCommand::new("hostname")
    },
    AllowedCommand {
        value_options: SYSTEMCTL_ELSEWHERE,
        refused_options: SYSTEMCTL_ELSEWHERE,
        ..AllowedCommand::subs("systemctl", &["status", "is-active", "is-enabled", "is-failed", "show", "list-units"], Undo::Nothing)
    },
    AllowedCommand {
        value_options: &[
            "-u", "--unit", "--user-unit", "-n", "--lines", "-p", "--priority", "-S", "--since", "-U", "--until", "-o",
            "--output", "-g", "--grep", "-t", "--identifier", "-b", "--boot",
        ],
        only_options: &[
            "-u", "--unit", "--user-unit", "-b", "--boot", "-n", "--lines", "-p", "--priority", "-k", "--dmesg", "-S", "--since",
            "-U", "--until", "-o", "--output", "--no-pager", "-r", "--reverse", "-g", "--grep", "--case-sensitive", "-q",
            "--quiet", "-x", "--catalog", "-t", "--identifier", "--utc", "--no-hostname", "-a", "--all", "-l", "--full",
            "--list-boots", "--disk-usage", "-e", "--pager-end",
        ],
        ..AllowedCommand::new("journalctl")
    },
    AllowedCommand {
        value_options: &["-e", "--regexp", "-m", "--max-count", "-A", "--after-context", "-B", "--before-context", "-C", "--context", "--label"],
        refused_options: &["-f", "--file", "-r", "--recursive", "-R", "--dereference-recursive", "-d", "--directories", "-D", "--devices"],
        operands: Operands::KernelFiles { pattern_first: true, max: None },
        ..AllowedCommand::new("grep")
    },
    AllowedCommand { value_options: &["-n", "--lines", "-c", "--bytes"], operands: KERNEL_FILES, ..AllowedCommand::new("head") },
    AllowedCommand {
        value_options: &["-n", "--lines", "-c", "--bytes", "-s", "--sleep-interval", "--pid"],
        refused_options: &["-f", "-F", "--follow", "--retry"],
        operands: KERNEL_FILES,
        ..AllowedCommand::new("tail")
    },
    AllowedCommand { refused_options: &["--files0-from"], operands: KERNEL_FILES, ..AllowedCommand::new("wc") },
    AllowedCommand {
        value_options: &["-k", "--key", "-t", "--field-separator", "-S", "--buffer-size", "--parallel"],
        refused_options: &["-o", "--output", "-T", "--temporary-directory", "--files0-from", "--compress-program"],
        operands: KERNEL_FILES,
        ..AllowedCommand::new("sort")
    },
    AllowedCommand {
        value_options: &["-f", "--skip-fields", "-s", "--skip-chars", "-w", "--check-chars"],
        operands: Operands::KernelFiles { pattern_first: false, max: Some(1) },
        ..AllowedCommand::new("uniq")
    },
    AllowedCommand::new("echo"),
    AllowedCommand::new("true"),
    AllowedCommand::new("test"),
    AllowedCommand {
        value_options: &["--output-format"],
        operands: Operands::ApiPaths(PVE_READ_PATHS),
        ..AllowedCommand::subs("pvesh", &["get", "ls"], Undo::Nothing)
    },
    AllowedCommand { operands: Operands::Forbidden, ..AllowedCommand::subs("pvecm", &["status", "nodes"], Undo::Nothing) },
    AllowedCommand { only_options: &["-v", "--verbose"], operands: Operands::Forbidden, ..AllowedCommand::new("pveversion") },
    AllowedCommand {
        value_options: &["-p", "--property", "-H", "--host", "-M", "--machine"],
        refused_options: &["-H", "--host", "-M", "--machine"],
        operands: Operands::Forbidden,
        ..AllowedCommand::subs("timedatectl", &["status", "show"], Undo::Nothing)
    },
];

/// The Proxmox VE API paths `pvesh get` may read in a `system-check` (`*`: one segment). Every
/// GET in Proxmox VE is read-only, but some return secrets or file contents (the subscription
/// key, ACME plugin credentials, files restored from a backup, `/access`), so only paths of
/// status, configuration and listings are accepted. Guest configs are safe to read: Proxmox
/// masks `cipassword`.
pub const PVE_READ_PATHS: &[&str] = &[
    "/version",
    "/cluster/status",
    "/cluster/resources",
    "/cluster/tasks",
    "/cluster/nextid",
    "/cluster/backup",
    "/cluster/backup/*",
    "/cluster/backup/*/included_volumes",
    "/cluster/backup-info/not-backed-up",
    "/cluster/ha/status/current",
    "/cluster/ha/resources",
    "/cluster/replication",
    "/nodes",
    "/nodes/*/status",
    "/nodes/*/version",
    "/nodes/*/tasks",
    "/nodes/*/tasks/*/status",
    "/nodes/*/qemu",
    "/nodes/*/qemu/*/status/current",
    "/nodes/*/qemu/*/config",
    "/nodes/*/qemu/*/pending",
    "/nodes/*/qemu/*/snapshot",
    "/nodes/*/lxc",
    "/nodes/*/lxc/*/status/current",
    "/nodes/*/lxc/*/config",
    "/nodes/*/lxc/*/pending",
    "/nodes/*/lxc/*/snapshot",
    "/nodes/*/storage",
    "/nodes/*/storage/*/status",
    "/nodes/*/storage/*/content",
    "/nodes/*/disks/list",
    "/nodes/*/disks/zfs",
    "/nodes/*/hardware/pci",
    "/nodes/*/network",
    "/nodes/*/services",
];

/// The commands a `proxmox-task` may run on a node (its `commands` form), each with how it is
/// undone ([`Undo`]). One command per line: no pipes.
///
/// | command | undone by |
/// |---|---|
/// | `zpool add`, `create`, `replace`, `detach` | irreversible |
/// | `zpool online` / `offline` | each other |
/// | `zpool attach POOL DEV NEW` | `zpool detach POOL NEW` |
/// | `zpool scrub POOL` | `zpool scrub -s POOL` |
/// | `zpool clear` | nothing to undo |
/// | `zfs set`, `inherit` | needs the previous value: the step's `rollback` |
/// | `zfs create`, `snapshot` | `zfs destroy` |
/// | `zfs rollback`, `destroy` | irreversible |
/// | `qm`/`pct` `start` / `stop`, `shutdown` | `shutdown` / `start` |
/// | `qm suspend` / `resume` | each other |
/// | `qm`/`pct` `snapshot ID NAME` | `delsnapshot ID NAME` |
/// | `qm`/`pct` `set`, `migrate` | needs the previous value: the step's `rollback` |
/// | `qm`/`pct` `rollback`, `delsnapshot`, `resize` | irreversible |
/// | `qm`/`pct` `reboot`, `systemctl restart`/`reload` | nothing to undo |
/// | `systemctl start`/`stop`, `enable`/`disable` | each other |
/// | `pvesm add TYPE ID ...` | `pvesm remove ID` |
/// | `pvesm set`, `remove` | needs the previous config: the step's `rollback` |
/// | `vzdump` (safe options only: no `--remove`, `--prune-backups`, `--script`, `--dumpdir`, `--stop`) | irreversible |
/// | `pvecm add` (not `--force`) | irreversible |
/// | `apt-get install PKG... --yes` / `remove PKG... --yes` (package names only, safe options only) | each other |
pub const NODE_COMMANDS: &[AllowedCommand] = &[
    AllowedCommand::subs("zpool", &["add"], Undo::Irreversible("a vdev added to a pool cannot be taken out on most pool layouts")),
    AllowedCommand::subs("zpool", &["create"], Undo::Irreversible("undoing it would destroy the new pool and everything written to it")),
    AllowedCommand::subs("zpool", &["replace"], Undo::Irreversible("the old device is detached once the resilver finishes")),
    AllowedCommand::subs("zpool", &["detach"], Undo::Irreversible("re-attaching needs a full resilver and the old device")),
    AllowedCommand::subs("zpool", &["online"], undo("zpool offline {1} {2}")),
    AllowedCommand::subs("zpool", &["offline"], undo("zpool online {1} {2}")),
    AllowedCommand::subs("zpool", &["attach"], undo("zpool detach {1} {3}")),
    AllowedCommand::subs("zpool", &["scrub"], undo("zpool scrub -s {1}")),
    AllowedCommand::subs("zpool", &["clear"], Undo::Nothing),
    AllowedCommand::subs("zfs", &["set", "inherit"], Undo::NeedsPrevious("the previous value of the property is not known")),
    AllowedCommand::subs("zfs", &["create", "snapshot"], undo("zfs destroy {1}")),
    AllowedCommand::subs("zfs", &["rollback"], Undo::Irreversible("it discards everything written after the snapshot")),
    AllowedCommand::subs("zfs", &["destroy"], Undo::Irreversible("destroyed data is gone")),
    AllowedCommand::subs("qm", &["start"], undo_pve("qm shutdown {1}")),
    AllowedCommand::subs("qm", &["stop", "shutdown"], undo_pve("qm start {1}")),
    AllowedCommand::subs("qm", &["suspend"], undo_pve("qm resume {1}")),
    AllowedCommand::subs("qm", &["resume"], undo_pve("qm suspend {1}")),
    AllowedCommand::subs("qm", &["reboot"], Undo::Nothing),
    AllowedCommand::subs("qm", &["snapshot"], undo_pve("qm delsnapshot {1} {2}")),
    AllowedCommand::subs("qm", &["set", "migrate"], Undo::NeedsPrevious("the previous configuration or node is not known")),
    AllowedCommand::subs("qm", &["rollback"], Undo::Irreversible("it discards the guest's state since the snapshot")),
    AllowedCommand::subs("qm", &["delsnapshot"], Undo::Irreversible("a deleted snapshot cannot be restored")),
    AllowedCommand::subs("qm", &["resize"], Undo::Irreversible("disks cannot shrink")),
    AllowedCommand::subs("pct", &["start"], undo_pve("pct shutdown {1}")),
    AllowedCommand::subs("pct", &["stop", "shutdown"], undo_pve("pct start {1}")),
    AllowedCommand::subs("pct", &["reboot"], Undo::Nothing),
    AllowedCommand::subs("pct", &["snapshot"], undo_pve("pct delsnapshot {1} {2}")),
    AllowedCommand::subs("pct", &["set", "migrate"], Undo::NeedsPrevious("the previous configuration or node is not known")),
    AllowedCommand::subs("pct", &["rollback"], Undo::Irreversible("it discards the container's state since the snapshot")),
    AllowedCommand::subs("pct", &["delsnapshot"], Undo::Irreversible("a deleted snapshot cannot be restored")),
    AllowedCommand::subs("pct", &["resize"], Undo::Irreversible("volumes cannot shrink")),
    systemctl(&["start"], undo("systemctl stop {1}")),
    systemctl(&["stop"], undo("systemctl start {1}")),
    systemctl(&["enable"], undo("systemctl disable {1}")),
    systemctl(&["disable"], undo("systemctl enable {1}")),
    systemctl(&["restart", "reload"], Undo::Nothing),
    AllowedCommand::subs("pvesm", &["add"], undo_pve("pvesm remove {2}")),
    AllowedCommand::subs("pvesm", &["set", "remove"], Undo::NeedsPrevious("the previous storage configuration is not known")),
    AllowedCommand {
        value_options: VZDUMP_VALUE_OPTIONS,
        only_options: VZDUMP_OPTIONS,
        undo: Undo::Irreversible("a backup cannot be taken back; the storage's retention policy prunes it"),
        ..AllowedCommand::new("vzdump")
    },
    AllowedCommand {
        refused_options: &["--force"],
        ..AllowedCommand::subs(
            "pvecm",
            &["add"],
            Undo::Irreversible("a node leaves a cluster only by `pvecm delnode` on another node and a reinstall of this one"),
        )
    },
    // Undone by each other. An install is undone by removing the packages even when they were
    // there before the step: a step that may find them installed lists the command in
    // `irreversible`, so a rollback leaves them.
    AllowedCommand {
        only_options: APT_OPTIONS,
        operands: Operands::Packages,
        ..AllowedCommand::subs("apt-get", &["install"], undo_pve("apt-get remove --yes {*}"))
    },
    AllowedCommand {
        only_options: APT_OPTIONS,
        operands: Operands::Packages,
        ..AllowedCommand::subs("apt-get", &["remove"], undo_pve("apt-get install --yes {*}"))
    },
];

/// The `vzdump` options a node command may use: what to back up, where, and how; not those
/// that delete backups (`--remove`, `--prune-backups`, `--maxfiles`), write elsewhere
/// (`--dumpdir`, `--tmpdir`, `--stdout`), run a hook script (`--script`) or stop other backups
/// (`--stop`).
const VZDUMP_OPTIONS: &[&str] = &[
    "--all", "--exclude", "--pool", "--node", "--storage", "--mode", "--compress", "--zstd", "--pigz", "--bwlimit", "--ionice",
    "--lockwait", "--stopwait", "--notes-template", "--protected", "--quiet", "--mailto", "--mailnotification",
    "--notification-mode", "--fleecing", "--performance", "--pbs-change-detection-mode",
];

/// The `vzdump` options that take their value in the next argument.
const VZDUMP_VALUE_OPTIONS: &[&str] = &[
    "--exclude", "--pool", "--node", "--storage", "--mode", "--compress", "--zstd", "--pigz", "--bwlimit", "--ionice", "--lockwait",
    "--stopwait", "--notes-template", "--mailto", "--mailnotification", "--notification-mode", "--fleecing", "--performance",
    "--pbs-change-detection-mode",
];

/// The `apt-get` options a node command may use: answer yes, be quiet, skip recommends. Not
/// `-o` (it sets any apt option, hooks that run commands included) nor the `--allow-*` options
/// that remove essential or held packages or downgrade.
const APT_OPTIONS: &[&str] = &["-y", "--yes", "--assume-yes", "-q", "--quiet", "--no-install-recommends"];

/// A list of allowed commands, and whether lines may pipe them together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowlist {
    name: &'static str,
    entries: Vec<AllowedCommand>,
    pipes: bool,
}

impl Allowlist {
    /// [`READ_ONLY`], pipes allowed: for `system-check`.
    pub fn read_only() -> Self {
        Self { name: "a system check", entries: READ_ONLY.to_vec(), pipes: true }
    }

    /// [`NODE_COMMANDS`], one command per line: for `proxmox-task` `commands`.
    pub fn node() -> Self {
        Self { name: "a node command", entries: NODE_COMMANDS.to_vec(), pipes: false }
    }

    /// This list and one more command (tests use it for harmless commands such as `touch`).
    pub fn with(mut self, extra: AllowedCommand) -> Self {
        self.entries.push(extra);
        self
    }

    /// The allowed commands, for messages: `lsblk, dmesg, zpool status|list, ...`.
    pub fn describe(&self) -> String {
        let mut seen: Vec<String> = Vec::new();
        for e in &self.entries {
            match seen.iter_mut().find(|s| s.split(' ').next() == Some(e.program)) {
                Some(s) if !e.subcommands.is_empty() && s.contains(' ') => {
                    s.push('|');
                    s.push_str(&e.subcommands.join("|"));
                }
                Some(_) => {}
                None => seen.push(e.describe()),
            }
        }
        seen.join(", ")
    }

    /// Reads and checks a command line. The error is a sentence naming what was refused and
    /// what is accepted.
    pub fn parse(&self, line: &str) -> Result<Pipeline> {
        let refuse = |why: String| Error::NotAllowed(format!("`{}` is not allowed as {}: {why}", line.trim(), self.name));
        let texts = split_stages(line).map_err(refuse)?;
        if texts.len() > 1 && !self.pipes {
            return Err(refuse("run one command per line; pipes (`|`) are accepted only in system checks".into()));
        }
        let mut stages = Vec::with_capacity(texts.len());
        for text in texts {
            let words = shlex::split(text).ok_or_else(|| refuse("its quoting is not closed".into()))?;
            if words.is_empty() {
                return Err(refuse(if line.trim().is_empty() {
                    "it is empty".into()
                } else {
                    "a pipe (`|`) needs a command on both sides".into()
                }));
            }
            self.check_words(&words).map_err(refuse)?;
            stages.push(words);
        }
        Ok(Pipeline { line: line.trim().to_string(), stages })
    }

    fn check_words(&self, words: &[String]) -> Result<(), String> {
        self.matching(words).map(|_| ())
    }

    /// The entry `words` satisfies, with its parsed arguments, or why none does.
    fn matching<'w>(&self, words: &'w [String]) -> Result<(&AllowedCommand, Args<'w>), String> {
        let program = words[0].as_str();
        if program.contains('/') {
            return Err(format!("name the command without a path (`{}`); allowed: {}", program.rsplit('/').next().unwrap_or(program), self.describe()));
        }
        let candidates: Vec<&AllowedCommand> = self.entries.iter().filter(|e| e.program == program).collect();
        if candidates.is_empty() {
            return Err(format!("`{program}` is not on the list; allowed: {}", self.describe()));
        }
        let mut first_error = None;
        for entry in &candidates {
            match check_args(entry, &words[1..]) {
                Ok(args) => return Ok((entry, args)),
                Err(ArgError::WrongSubcommand) => {}
                Err(ArgError::Refused(why)) => {
                    first_error.get_or_insert(why);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| {
            let subs: Vec<&str> = candidates.iter().flat_map(|e| e.subcommands.iter().copied()).collect();
            format!("`{program}` may only run {} here", subs.iter().map(|s| format!("`{program} {s}`")).collect::<Vec<_>>().join(", "))
        }))
    }
}

/// A command line that passed an [`Allowlist`]: one or more stages joined by pipes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    line: String,
    stages: Vec<Vec<String>>,
}

impl Pipeline {
    /// The line as written (trimmed).
    pub fn as_str(&self) -> &str {
        &self.line
    }

    /// Each stage's words, program first.
    pub fn stages(&self) -> &[Vec<String>] {
        &self.stages
    }

    /// The pipeline for a remote shell: every word quoted, stages joined with ` | `.
    pub fn to_shell(&self) -> String {
        self.stages
            .iter()
            .map(|words| {
                // Parsing refused NUL bytes, the only input quoting can fail on.
                words.iter().map(|w| shlex::try_quote(w).map_or_else(|_| "''".into(), |q| q.into_owned())).collect::<Vec<_>>().join(" ")
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

impl std::fmt::Display for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.line)
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// Splits a line on unquoted `|`, refusing every other shell operator with the reason.
fn split_stages(line: &str) -> Result<Vec<&str>, String> {
    #[derive(PartialEq)]
    enum Quote {
        None,
        Single,
        Double,
    }
    let mut quote = Quote::None;
    let mut stages = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    let mut word_start = true;
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let next = chars.peek().map(|&(_, n)| n);
        if c == '\0' {
            return Err("it contains a NUL byte".into());
        }
        if escaped {
            escaped = false;
            word_start = false;
            continue;
        }
        let dollar = |next: Option<char>| -> Result<(), String> {
            match next {
                Some('(') => Err("`$(` substitutes a command's output; write the command as its own line".into()),
                Some(n) if n == '{' || n == '_' || n.is_ascii_alphanumeric() || "?$!#*@-".contains(n) => {
                    Err("`$` expands a variable, and commands run without a shell; write the value itself".into())
                }
                _ => Ok(()),
            }
        };
        match quote {
            Quote::Single => {
                if c == '\'' {
                    quote = Quote::None;
                }
            }
            Quote::Double => match c {
                '"' => quote = Quote::None,
                '\\' => escaped = true,
                '`' => return Err("backticks substitute a command's output; write the command as its own line".into()),
                '$' => dollar(next)?,
                _ => {}
            },
            Quote::None => {
                match c {
                    '\\' => escaped = true,
                    '\'' => quote = Quote::Single,
                    '"' => quote = Quote::Double,
                    '|' if next == Some('|') => return Err("`||` chains commands; only pipes (`|`) between allowlisted commands are accepted".into()),
                    '|' => {
                        stages.push(&line[start..i]);
                        start = i + 1;
                        word_start = true;
                        continue;
                    }
                    ';' => return Err("`;` runs another command; only pipes (`|`) between allowlisted commands are accepted".into()),
                    '&' if next == Some('&') => return Err("`&&` chains commands; only pipes (`|`) between allowlisted commands are accepted".into()),
                    '&' => return Err("`&` runs a command in the background; only pipes (`|`) between allowlisted commands are accepted".into()),
                    '>' => return Err("`>` redirects output to a file; commands may not write files".into()),
                    '<' => return Err("`<` redirects a file into the command; name the file as an argument instead".into()),
                    '`' => return Err("backticks substitute a command's output; write the command as its own line".into()),
                    '$' => dollar(next)?,
                    '(' | ')' => return Err(format!("`{c}` starts or ends a subshell; only pipes (`|`) between allowlisted commands are accepted")),
                    '\n' | '\r' => return Err("a line break starts another command; write one command per list entry".into()),
                    '*' | '?' => {
                        return Err(format!(
                            "`{c}` is a wildcard, and wildcards are not expanded: name the file, or quote the argument if it is a pattern ('...')"
                        ));
                    }
                    '#' if word_start => return Err("`#` starts a comment; quote it if it is part of an argument".into()),
                    _ => {}
                }
                word_start = c.is_whitespace();
                continue;
            }
        }
        word_start = false;
    }
    if quote != Quote::None {
        return Err("a quote is not closed".into());
    }
    if escaped {
        return Err("it ends with a lone backslash".into());
    }
    stages.push(&line[start..]);
    Ok(stages)
}

/// A command's arguments sorted into options and operands.
#[derive(Debug, Default)]
struct Args<'a> {
    /// Whether an option appeared before or among the operands.
    has_options: bool,
    /// The subcommand, when the entry has subcommands.
    subcommand: Option<&'a str>,
    /// Operands after the subcommand, in order.
    operands: Vec<&'a str>,
    /// Operands before the first option (after the subcommand): the target of Proxmox tools.
    leading: Vec<&'a str>,
    /// Whether a pattern came from an option (`grep -e`).
    pattern_given: bool,
}

enum ArgError {
    /// The entry's subcommand does not match: another entry may.
    WrongSubcommand,
    /// This entry matches but refuses the arguments.
    Refused(String),
}

/// Sorts `args` by the entry's rules and checks them.
fn check_args<'a>(entry: &AllowedCommand, args: &'a [String]) -> Result<Args<'a>, ArgError> {
    let program = entry.program;
    let mut out = Args::default();
    // Each option by name (`-a`, `--all`) with the argument it was written in.
    let mut option_names: Vec<(String, &'a str)> = Vec::new();
    let mut all_operands: Vec<&'a str> = Vec::new();
    let mut end_of_options = false;
    let mut i = 0;
    let needs_value = |name: &str| ArgError::Refused(format!("option `{name}` of `{program}` needs a value"));
    while i < args.len() {
        let arg = args[i].as_str();
        i += 1;
        if end_of_options || arg == "-" || !arg.starts_with('-') {
            all_operands.push(arg);
            if !out.has_options {
                out.leading.push(arg);
            }
            continue;
        }
        if arg == "--" {
            end_of_options = true;
            continue;
        }
        out.has_options = true;
        let numeric = arg[1..].bytes().all(|b| b.is_ascii_digit());
        if numeric {
            option_names.push((arg.to_string(), arg));
        } else if let Some(long) = arg.strip_prefix("--") {
            let name = format!("--{}", long.split('=').next().unwrap_or(long));
            if !long.contains('=') && entry.value_options.contains(&name.as_str()) {
                if i >= args.len() {
                    return Err(needs_value(&name));
                }
                i += 1;
            }
            option_names.push((name, arg));
        } else if entry.single_dash_long {
            if entry.value_options.contains(&arg) {
                if i >= args.len() {
                    return Err(needs_value(arg));
                }
                i += 1;
            }
            option_names.push((arg.to_string(), arg));
        } else {
            let letters: Vec<char> = arg[1..].chars().collect();
            for (k, letter) in letters.iter().enumerate() {
                let name = format!("-{letter}");
                let takes_value = entry.value_options.contains(&name.as_str());
                option_names.push((name.clone(), arg));
                if takes_value {
                    if k + 1 == letters.len() {
                        if i >= args.len() {
                            return Err(needs_value(&name));
                        }
                        i += 1;
                    }
                    break;
                }
            }
        }
    }

    // The subcommand is the first operand.
    let mut operands = all_operands.into_iter();
    if !entry.subcommands.is_empty() {
        match operands.next() {
            Some(sub) if entry.subcommands.contains(&sub) => out.subcommand = Some(sub),
            _ => return Err(ArgError::WrongSubcommand),
        }
        if out.leading.first() == out.subcommand.as_ref() {
            out.leading.remove(0);
        }
    }
    out.operands = operands.collect();

    for (name, written) in &option_names {
        let numeric = name.len() > 1 && name[1..].bytes().all(|b| b.is_ascii_digit());
        if name == "-e" || name == "--regexp" {
            out.pattern_given = true;
        }
        if entry.refused_options.contains(&name.as_str()) {
            return Err(ArgError::Refused(format!(
                "option `{name}` of `{program}` changes the system, writes files or never ends; refused for `{program}`: {}",
                entry.refused_options.join(" ")
            )));
        }
        if !entry.only_options.is_empty() && !numeric && !entry.only_options.contains(&name.as_str()) {
            let shown = if name == written { format!("`{name}`") } else { format!("`{name}` (in `{written}`)") };
            return Err(ArgError::Refused(format!(
                "option {shown} is not accepted for `{program}`; accepted: {}",
                entry.only_options.join(" ")
            )));
        }
    }

    if !entry.verbs.is_empty()
        && let Some(verb) = out.operands.first()
        && !entry.verbs.contains(verb)
    {
        return Err(ArgError::Refused(format!(
            "`{program} {} {verb}` is not a read-only form; accepted after `{}`: {}",
            out.subcommand.unwrap_or_default(),
            out.subcommand.unwrap_or_default(),
            entry.verbs.join(", ")
        )));
    }

    match entry.operands {
        Operands::Any => {}
        Operands::Forbidden => {
            if let Some(op) = out.operands.first() {
                return Err(ArgError::Refused(format!("`{program}` takes no operand here (`{op}` was given): only its reading options are accepted")));
            }
        }
        Operands::ApiPaths(patterns) => match out.operands.first() {
            None => {
                return Err(ArgError::Refused(format!("`{program}` needs the API path to read, like `{program} get /cluster/status`")));
            }
            Some(path) if !api_path_allowed(path, patterns) => {
                return Err(ArgError::Refused(format!(
                    "`{path}` is not an API path a check may read (paths that can return secrets or file contents are refused; write the path first, then its parameters); accepted: {}",
                    patterns.join(", ")
                )));
            }
            Some(_) => {}
        },
        Operands::Packages => {
            if let Some(bad) = out.operands.iter().find(|p| !is_package_name(p)) {
                return Err(ArgError::Refused(format!(
                    "`{bad}` is not a Debian package name; `{program}` takes package names only (lowercase letters, digits, `+`, `-`, `.`; no paths, versions, releases, or a trailing `-`/`+`)"
                )));
            }
        }
        Operands::KernelFiles { pattern_first, max } => {
            let skip = usize::from(pattern_first && !out.pattern_given);
            let files = out.operands.get(skip..).unwrap_or_default();
            if let Some(max) = max
                && files.len() > max
            {
                return Err(ArgError::Refused(format!("`{program}` reads at most {max} file here (a second one would be written)")));
            }
            if let Some(bad) = files.iter().find(|f| !is_kernel_file(f)) {
                return Err(ArgError::Refused(format!(
                    "`{program}` may read only files under /proc/ and /sys/ (or its input from a pipe), not `{bad}`"
                )));
            }
        }
    }
    Ok(out)
}

/// Whether `path` matches one of `patterns` segment by segment, `*` matching one segment that is
/// not `.` or `..`.
fn api_path_allowed(path: &str, patterns: &[&str]) -> bool {
    let Some(rest) = path.strip_prefix('/') else { return false };
    let segments: Vec<&str> = if rest.is_empty() { Vec::new() } else { rest.split('/').collect() };
    if segments.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
        return false;
    }
    patterns.iter().any(|pattern| {
        let wanted: Vec<&str> = pattern.trim_start_matches('/').split('/').collect();
        wanted.len() == segments.len() && wanted.iter().zip(&segments).all(|(w, s)| *w == "*" || w == s)
    })
}

/// A Debian package name (`[a-z0-9][a-z0-9+.-]*`) that `apt-get` reads as itself: not ending in
/// `-` (remove it) or `+` (install it).
fn is_package_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+.-".contains(&b))
        && !name.ends_with(['-', '+'])
}

/// `-` (standard input), or an absolute path under `/proc/` or `/sys/` without `..`.
fn is_kernel_file(path: &str) -> bool {
    path == "-" || (path.starts_with("/proc/") || path.starts_with("/sys/")) && !path.split('/').any(|c| c == "..")
}

/// The command that undoes `words` according to its entry's [`Undo::Command`] template.
fn render_undo(entry: &AllowedCommand, args: &Args<'_>) -> Option<String> {
    let Undo::Command { template, options_allowed } = entry.undo else { return None };
    if args.has_options && !options_allowed {
        return None;
    }
    let source = if options_allowed { &args.leading } else { &args.operands };
    let mut words = Vec::new();
    for word in template.split_whitespace() {
        if word == "{*}" {
            if source.is_empty() {
                return None;
            }
            words.extend(source.iter().map(|s| s.to_string()));
            continue;
        }
        match word.strip_prefix('{').and_then(|w| w.strip_suffix('}')).and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => words.push(source.get(n.checked_sub(1)?)?.to_string()),
            None => words.push(word.to_string()),
        }
    }
    shlex::try_join(words.iter().map(String::as_str)).ok()
}

// ---------------------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------------------

/// Bounds on running one command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The pipeline is killed after this long (the SSH connection included).
    pub timeout: Duration,
    /// Bytes of stdout, and of stderr, kept per command; the rest is read and counted.
    pub max_output: usize,
    /// Bytes of stdout and of stderr recorded in a step's outcome (the first ones).
    pub recorded_output: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(60), max_output: 64 * 1024, recorded_output: 4 * 1024 }
    }
}

/// How a command line ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// The line as written.
    pub command: String,
    /// Where it ran.
    pub target: Target,
    /// The exit code of the last stage (as a shell reports a pipeline's), `None` when it was
    /// killed by a signal or timed out.
    pub exit_code: Option<i32>,
    /// The signal that ended the last stage, if one did.
    pub signal: Option<i32>,
    /// Whether it was killed after [`Limits::timeout`].
    pub timed_out: bool,
    /// Standard output of the last stage, up to [`Limits::max_output`] bytes (lossy UTF-8).
    pub stdout: String,
    /// Standard error of every stage (and of ssh), up to [`Limits::max_output`] bytes.
    pub stderr: String,
    /// Bytes of stdout the command wrote in all (more than kept when truncated).
    pub stdout_bytes: u64,
    /// Bytes of stderr the command wrote in all.
    pub stderr_bytes: u64,
    /// How long it ran.
    pub duration: Duration,
}

impl CommandOutput {
    /// Exited with code 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// Over SSH, exit code 255: ssh itself failed (no connection, authentication, host key).
    /// The remote command was most likely not run; another attempt may succeed.
    pub fn ssh_failed(&self) -> bool {
        matches!(self.target, Target::Ssh { .. }) && self.exit_code == Some(255)
    }

    /// `exit 0`, `exit 2`, `killed by signal 9`, `timed out after 60.0s`.
    pub fn status(&self) -> String {
        match (self.timed_out, self.exit_code, self.signal) {
            (true, _, _) => format!("timed out after {:.1}s", self.duration.as_secs_f64()),
            (false, Some(code), _) => format!("exit {code}"),
            (false, None, Some(sig)) => format!("killed by signal {sig}"),
            (false, None, None) => "no exit status".to_string(),
        }
    }

    /// The status, and the start of stderr (or of stdout when stderr is empty), on one line.
    pub fn brief(&self, bytes: usize) -> String {
        let text = if self.stderr.trim().is_empty() { &self.stdout } else { &self.stderr };
        let text = head(text.trim(), bytes).replace('\n', " / ");
        if text.is_empty() { self.status() } else { format!("{}: {text}", self.status()) }
    }

    /// The outcome record: status and the first `recorded` bytes of each stream.
    pub fn to_json(&self, recorded: usize) -> Value {
        json!({
            "command": self.command,
            "host": self.target.describe(),
            "exit_code": self.exit_code,
            "signal": self.signal,
            "timed_out": self.timed_out,
            "duration_ms": u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX),
            "stdout": head(&self.stdout, recorded),
            "stdout_bytes": self.stdout_bytes,
            "stderr": head(&self.stderr, recorded),
            "stderr_bytes": self.stderr_bytes,
        })
    }

    /// The command and its status, then the first `bytes` of each stream, for error messages.
    pub fn summary(&self, bytes: usize) -> String {
        format!("`{}` on {} ({})\n{}", self.command, self.target.describe(), self.status(), self.streams(bytes))
    }

    /// The first `bytes` of stdout and of stderr, each under its name.
    pub fn streams(&self, bytes: usize) -> String {
        let mut s = String::new();
        for (name, text, total) in [("stdout", &self.stdout, self.stdout_bytes), ("stderr", &self.stderr, self.stderr_bytes)] {
            let shown = head(text, bytes);
            if !s.is_empty() {
                s.push('\n');
            }
            if shown.trim().is_empty() {
                let _ = write!(s, "{name}: (empty)");
            } else {
                let more = if (shown.len() as u64) < total { format!(" (first {} of {total} bytes)", shown.len()) } else { String::new() };
                let _ = write!(s, "{name}{more}:\n{}", shown.trim_end());
            }
        }
        s
    }
}

/// The first `max` bytes of `text`, cut at a character boundary.
pub(crate) fn head(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Runs checked [`Pipeline`]s locally or over SSH, within [`Limits`].
#[derive(Debug, Clone, Default)]
pub struct CommandRunner {
    ssh: SshSettings,
    limits: Limits,
}

impl CommandRunner {
    /// A runner using these SSH settings and the default [`Limits`].
    pub fn new(ssh: SshSettings) -> Self {
        Self { ssh, limits: Limits::default() }
    }

    /// The same runner with other limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The SSH settings.
    pub fn ssh(&self) -> &SshSettings {
        &self.ssh
    }

    /// The limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Where `host` is: see [`SshSettings::target`].
    pub fn target(&self, host: Option<&str>) -> Result<Target> {
        self.ssh.target(host)
    }

    /// What to do about a failed SSH connection, from ssh's message.
    pub fn ssh_hint(&self, output: &CommandOutput) -> String {
        self.ssh.hint(&output.stderr)
    }

    /// Runs `pipeline` on `target`. A non-zero exit is an [`CommandOutput`], not an error;
    /// errors are processes that could not be started or read.
    pub async fn run(&self, target: &Target, pipeline: &Pipeline) -> Result<CommandOutput> {
        let started = Instant::now();
        let (program, place, hint) = match target {
            Target::Local => (None, "on this machine".to_string(), "install it, or run the check on a host that has it"),
            Target::Ssh { host, .. } => (Some("ssh"), format!("to reach {host}"), "install the OpenSSH client (`ssh`) where labops runs"),
        };
        let mut commands: Vec<Command> = match target {
            Target::Local => pipeline.stages.iter().map(|words| {
                let mut c = Command::new(&words[0]);
                c.args(&words[1..]);
                c
            }).collect(),
            Target::Ssh { address, .. } => {
                let mut c = Command::new("ssh");
                c.args(self.ssh.ssh_args(address)).arg(pipeline.to_shell());
                vec![c]
            }
        };
        let mut children: Vec<Child> = Vec::with_capacity(commands.len());
        let mut stderr_tasks = Vec::with_capacity(commands.len());
        let mut previous_stdout: Option<Stdio> = None;
        let last = commands.len() - 1;
        let cap = self.limits.max_output;
        for (k, command) in commands.iter_mut().enumerate() {
            command
                .stdin(previous_stdout.take().unwrap_or_else(Stdio::null))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            let mut child = command.spawn().map_err(|source| Error::Spawn {
                program: program.unwrap_or(pipeline.stages[k][0].as_str()).to_string(),
                place: place.clone(),
                hint,
                source,
            })?;
            if let Some(err) = child.stderr.take() {
                stderr_tasks.push(tokio::spawn(read_capped(err, cap)));
            }
            if k < last
                && let Some(out) = child.stdout.take()
            {
                let io = |source| Error::Io { command: pipeline.line.clone(), source };
                previous_stdout = Some(out.try_into().map_err(io)?);
            }
            children.push(child);
        }
        let stdout_task = children.last_mut().and_then(|c| c.stdout.take()).map(|out| tokio::spawn(read_capped(out, cap)));

        let waited = tokio::time::timeout(self.limits.timeout, wait_all(&mut children)).await;
        let (status, timed_out) = match waited {
            Ok(Ok(status)) => (Some(status), false),
            Ok(Err(source)) => return Err(Error::Io { command: pipeline.line.clone(), source }),
            Err(_) => {
                for child in &mut children {
                    let _ = child.start_kill();
                }
                for child in &mut children {
                    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                }
                (None, true)
            }
        };
        // Readers end when the pipes close; a grandchild holding one open is not waited for.
        let grace = Duration::from_secs(2);
        let (stdout, stdout_bytes) = match stdout_task {
            Some(task) => collect(task, grace).await,
            None => (Vec::new(), 0),
        };
        let mut stderr = Vec::new();
        let mut stderr_bytes = 0;
        for task in stderr_tasks {
            let (bytes, total) = collect(task, grace).await;
            stderr.extend_from_slice(&bytes[..bytes.len().min(cap.saturating_sub(stderr.len()))]);
            stderr_bytes += total;
        }
        Ok(CommandOutput {
            command: pipeline.line.clone(),
            target: target.clone(),
            exit_code: status.and_then(|s| s.code()),
            signal: status.and_then(|s| s.signal()),
            timed_out,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            stdout_bytes,
            stderr_bytes,
            duration: started.elapsed(),
        })
    }
}

/// Waits for every stage; the pipeline's status is the last stage's.
async fn wait_all(children: &mut [Child]) -> std::io::Result<ExitStatus> {
    let mut last = None;
    for child in children.iter_mut() {
        last = Some(child.wait().await?);
    }
    last.ok_or_else(|| std::io::Error::other("empty pipeline"))
}

/// Reads everything, keeping the first `cap` bytes; returns them and the total.
async fn read_capped<R: AsyncRead + Unpin>(mut reader: R, cap: usize) -> (Vec<u8>, u64) {
    let mut kept = Vec::new();
    let mut total = 0u64;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n as u64;
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    }
    (kept, total)
}

async fn collect(task: tokio::task::JoinHandle<(Vec<u8>, u64)>, grace: Duration) -> (Vec<u8>, u64) {
    let abort = task.abort_handle();
    match tokio::time::timeout(grace, task).await {
        Ok(Ok(read)) => read,
        Ok(Err(_)) => (Vec::new(), 0),
        Err(_) => {
            abort.abort();
            (Vec::new(), 0)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `proxmox-task` commands
// ---------------------------------------------------------------------------------------------

/// How a planned node command is undone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum UndoPlan {
    /// Nothing to undo.
    Nothing,
    /// Undone by running this (allowlisted) command.
    Command {
        /// The command line.
        command: String,
    },
    /// Cannot be undone.
    Irreversible {
        /// Why, for the report.
        why: String,
    },
}

/// One command of a `proxmox-task` step, checked, with how it is undone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedCommand {
    /// The command line as written.
    pub command: String,
    /// How it is undone.
    pub undo: UndoPlan,
    /// Why a human must confirm before it runs: it is irreversible, or labops's list calls it
    /// irreversible even though the step gives a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm: Option<String>,
}

/// A checked `proxmox-task` `commands` step: where it runs and what it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    /// The node as the step names it.
    pub node: String,
    /// The commands in order.
    pub commands: Vec<PlannedCommand>,
}

/// What [`NodeCommands`] knows, in this process, about an `execute` that did not return (its
/// future was dropped): how many commands started and how many finished.
#[derive(Debug, Clone, Copy, Default)]
struct Journal {
    started: usize,
    finished: usize,
}

/// The executor of `proxmox-task` steps written as `commands`: allowlisted commands run in
/// order on the step's `node` over SSH (or on this machine for `node: localhost`).
///
/// The step may give `rollback` (a list as long as `commands`, `null` or `""` for none, or a
/// mapping from command to its rollback command) and `irreversible` (`true`, or a list of the
/// commands that are). Without them each command is undone as [`NODE_COMMANDS`] says.
/// Commands that cannot be undone make [`Executor::confirm_before`] ask a human first.
///
/// A failing command stops the step; the commands that ran before it are undone at once (in
/// reverse order), and the error says what ran, what was undone and what was not run.
pub struct NodeCommands {
    runner: CommandRunner,
    allowlist: Allowlist,
    journal: Mutex<HashMap<String, Journal>>,
    undone: Mutex<HashMap<String, Vec<usize>>>,
}

impl std::fmt::Debug for NodeCommands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCommands").field("runner", &self.runner).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The declaration of a step type from the core table.
pub(crate) fn declared(name: &str) -> &'static StepType {
    // The core table declares every step type labops runs; a unit test checks each name.
    labops_core::workflow::step_type(name).unwrap_or_else(|| unreachable!("step type `{name}` is not declared in labops-core"))
}

/// Which commands a `rollback` or `irreversible` field refers to.
fn command_index(commands: &[String], key: &str) -> Option<usize> {
    commands.iter().position(|c| c.trim() == key.trim())
}

fn quoted_list(items: &[String]) -> String {
    items.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
}

impl NodeCommands {
    /// Runs commands from [`NODE_COMMANDS`] through `runner`.
    pub fn new(runner: CommandRunner) -> Self {
        Self::with_allowlist(runner, Allowlist::node())
    }

    /// Runs commands from `allowlist` (tests add harmless commands to [`Allowlist::node`]).
    pub fn with_allowlist(runner: CommandRunner, allowlist: Allowlist) -> Self {
        Self { runner, allowlist, journal: Mutex::new(HashMap::new()), undone: Mutex::new(HashMap::new()) }
    }

    /// Checks a step and works out how each command is undone; every problem is a sentence.
    pub fn plan(&self, step: &RunStep) -> Result<NodePlan, Vec<String>> {
        let mut problems = Vec::new();
        let commands = step.list_field("commands");
        if commands.is_empty() {
            problems.push("`commands` lists no command; write the allowlisted commands to run on the node".to_string());
        }
        let node = step.str_field("node").map(str::trim).filter(|n| !n.is_empty());
        match node {
            None => problems.push("`node` must name the node to run `commands` on (a host name, or `localhost` for this machine)".into()),
            Some(node) => {
                if let Err(e) = self.runner.target(Some(node)) {
                    problems.push(format!("`node`: {e}"));
                }
            }
        }
        let mut parsed = Vec::with_capacity(commands.len());
        for (i, line) in commands.iter().enumerate() {
            match self.allowlist.parse(line) {
                Ok(p) => parsed.push(Some(p)),
                Err(e) => {
                    problems.push(format!("commands[{i}]: {e}"));
                    parsed.push(None);
                }
            }
        }
        let rollbacks = self.rollbacks(step, &commands, &mut problems);
        let irreversible = Self::irreversible(step, &commands, &mut problems);
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut planned = Vec::with_capacity(commands.len());
        for (i, pipeline) in parsed.into_iter().enumerate() {
            let Some(pipeline) = pipeline else { continue };
            let words = &pipeline.stages[0];
            let Ok((entry, args)) = self.allowlist.matching(words) else { continue };
            let command = pipeline.line.clone();
            let (undo, confirm) = if irreversible[i] {
                let why = "the step marks it irreversible".to_string();
                (UndoPlan::Irreversible { why: why.clone() }, Some(why))
            } else if let Some(rollback) = &rollbacks[i] {
                let confirm = match entry.undo {
                    Undo::Irreversible(why) => Some(format!("labops treats it as irreversible ({why}); the step's rollback `{rollback}` will be tried")),
                    _ => None,
                };
                (UndoPlan::Command { command: rollback.clone() }, confirm)
            } else {
                let undo = match entry.undo {
                    Undo::Nothing => UndoPlan::Nothing,
                    Undo::Command { .. } => match render_undo(entry, &args).filter(|u| self.allowlist.parse(u).is_ok()) {
                        Some(command) => UndoPlan::Command { command },
                        None => UndoPlan::Irreversible {
                            why: "its default undo applies only to the plain form of the command; give `rollback` for it".into(),
                        },
                    },
                    Undo::NeedsPrevious(why) => UndoPlan::Irreversible { why: format!("{why}; give `rollback` for it to make it undoable") },
                    Undo::Irreversible(why) => UndoPlan::Irreversible { why: why.to_string() },
                };
                let confirm = match &undo {
                    UndoPlan::Irreversible { why } => Some(why.clone()),
                    _ => None,
                };
                (undo, confirm)
            };
            planned.push(PlannedCommand { command, undo, confirm });
        }
        Ok(NodePlan { node: node.unwrap_or_default().to_string(), commands: planned })
    }

    /// The step's `rollback`, one entry per command, each checked against the allowlist.
    fn rollbacks(&self, step: &RunStep, commands: &[String], problems: &mut Vec<String>) -> Vec<Option<String>> {
        let mut out: Vec<Option<String>> = vec![None; commands.len()];
        let text = |v: &Value| match v {
            Value::Null => Ok(None),
            Value::String(s) if s.trim().is_empty() => Ok(None),
            Value::String(s) => Ok(Some(s.trim().to_string())),
            other => Err(other.to_string()),
        };
        match step.fields.get("rollback") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) if list.len() == commands.len() => {
                for (i, v) in list.iter().enumerate() {
                    match text(v) {
                        Ok(r) => out[i] = r,
                        Err(v) => problems.push(format!("rollback[{i}] is {v}; write a command line, or null for none")),
                    }
                }
            }
            Some(Value::Array(list)) => problems.push(format!(
                "`rollback` lists {} commands for {} `commands`: give one per command (null or \"\" for none), or a mapping from command to its rollback",
                list.len(),
                commands.len()
            )),
            Some(Value::String(s)) if commands.len() == 1 => out[0] = text(&Value::String(s.clone())).ok().flatten(),
            Some(Value::Object(map)) => {
                for (key, v) in map {
                    match (command_index(commands, key), text(v)) {
                        (Some(i), Ok(r)) => out[i] = r,
                        (None, _) => problems.push(format!("`rollback` maps `{key}`, which is not one of the step's commands ({})", quoted_list(commands))),
                        (Some(_), Err(v)) => problems.push(format!("the rollback of `{key}` is {v}; write a command line")),
                    }
                }
            }
            Some(other) => problems.push(format!(
                "`rollback` is {other}; write a list with one command per entry of `commands`, or a mapping from command to its rollback"
            )),
        }
        for (i, rollback) in out.iter().enumerate() {
            if let Some(r) = rollback
                && let Err(e) = self.allowlist.parse(r)
            {
                problems.push(format!("the rollback of `{}`: {e}", commands[i]));
            }
        }
        out
    }

    /// The step's `irreversible`: which commands it marks.
    fn irreversible(step: &RunStep, commands: &[String], problems: &mut Vec<String>) -> Vec<bool> {
        match step.fields.get("irreversible") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => vec![false; commands.len()],
            Some(Value::Bool(true)) => vec![true; commands.len()],
            Some(Value::Array(_) | Value::String(_)) => {
                let mut out = vec![false; commands.len()];
                for name in step.list_field("irreversible") {
                    match command_index(commands, &name) {
                        Some(i) => out[i] = true,
                        None => problems.push(format!("`irreversible` names `{name}`, which is not one of the step's commands ({})", quoted_list(commands))),
                    }
                }
                out
            }
            Some(other) => {
                problems.push(format!("`irreversible` is {other}; write true, or a list of the step's commands that cannot be undone"));
                vec![false; commands.len()]
            }
        }
    }

    fn journal(&self, key: &str, update: impl FnOnce(&mut Journal)) {
        update(lock(&self.journal).entry(key.to_string()).or_default());
    }

    /// Undoes `ran` (command, undo) in reverse, skipping those undone before under `key`.
    async fn undo_ran(&self, key: &str, target: &Target, ran: &[(String, UndoPlan)]) -> UndoReport {
        let mut report = UndoReport::default();
        for (i, (command, undo)) in ran.iter().enumerate().rev() {
            if lock(&self.undone).get(key).is_some_and(|done| done.contains(&i)) {
                continue;
            }
            if report.failed.is_some() {
                report.remaining.push(command.clone());
                continue;
            }
            match undo {
                UndoPlan::Nothing => {}
                UndoPlan::Irreversible { why } => report.cannot.push(format!("`{command}` ({why})")),
                UndoPlan::Command { command: rollback } => {
                    let result = match self.allowlist.parse(rollback) {
                        Ok(p) => self.runner.run(target, &p).await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    match result {
                        Ok(out) if out.success() => {
                            report.undone.push(rollback.clone());
                            lock(&self.undone).entry(key.to_string()).or_default().push(i);
                        }
                        Ok(out) => {
                            report.retryable = out.ssh_failed();
                            let hint = if out.ssh_failed() { format!(" ({})", self.runner.ssh_hint(&out)) } else { String::new() };
                            report.failed = Some(format!("undoing `{command}` with `{rollback}` failed ({}){hint}", out.brief(512)));
                            report.remaining.push(command.clone());
                        }
                        Err(e) => {
                            report.failed = Some(format!("undoing `{command}` with `{rollback}` failed: {e}"));
                            report.remaining.push(command.clone());
                        }
                    }
                }
            }
        }
        report
    }
}

/// What undoing a list of commands did.
#[derive(Debug, Default)]
struct UndoReport {
    undone: Vec<String>,
    cannot: Vec<String>,
    failed: Option<String>,
    remaining: Vec<String>,
    retryable: bool,
}

impl UndoReport {
    fn describe(&self, node: &str) -> String {
        let mut parts = Vec::new();
        if !self.undone.is_empty() {
            parts.push(format!("undid them with {}", quoted_list(&self.undone)));
        }
        if !self.cannot.is_empty() {
            parts.push(format!("cannot undo {}: check {node} by hand", self.cannot.join(", ")));
        }
        if let Some(failed) = &self.failed {
            parts.push(failed.clone());
        }
        if !self.remaining.is_empty() {
            parts.push(format!("still to undo by hand on {node}: {}", quoted_list(&self.remaining)));
        }
        parts.join("; ")
    }
}

#[derive(Deserialize)]
struct RanRecord {
    command: String,
    undo: UndoPlan,
}

#[async_trait]
impl Executor for NodeCommands {
    fn step_type(&self) -> &'static StepType {
        declared("proxmox-task")
    }

    fn check(&self, step: &RunStep) -> Vec<String> {
        self.plan(step).err().unwrap_or_default()
    }

    fn targets(&self, step: &RunStep) -> Vec<String> {
        step.str_field("node").map(str::trim).filter(|n| !n.is_empty()).map(|n| vec![format!("node/{n}")]).unwrap_or_default()
    }

    fn grounding(&self, step: &RunStep) -> Vec<Ground> {
        let node = step.str_field("node").map(str::trim).filter(|n| !n.is_empty());
        // A Proxmox node, or a machine declared in `[[hosts]]` that is about to become one.
        let kinds = vec![EntityKind::ProxmoxNode, EntityKind::Host];
        node.map(|n| vec![Ground::Exists { field: "node".into(), name: n.into(), kinds }]).unwrap_or_default()
    }

    fn retry(&self) -> RetryPolicy {
        RetryPolicy::ONCE
    }

    fn confirm_before(&self, step: &RunStep) -> Option<String> {
        let plan = self.plan(step).ok()?;
        let reasons: Vec<String> =
            plan.commands.iter().filter_map(|c| c.confirm.as_ref().map(|why| format!("`{}` ({why})", c.command))).collect();
        if reasons.is_empty() {
            return None;
        }
        Some(format!(
            "Step `{}` runs commands on {} that cannot be undone if the run is rolled back: {}. Confirm to run them, or cancel the run.",
            step.name,
            plan.node,
            reasons.join("; ")
        ))
    }

    async fn prepare(&self, cx: &StepCx) -> Result<Value, StepError> {
        let plan = self.plan(&cx.step).map_err(|p| StepError::fatal(p.join(" ")))?;
        serde_json::to_value(plan).map_err(|e| StepError::fatal(format!("cannot record the plan of step `{}`: {e}", cx.step.name)))
    }

    async fn execute(&self, cx: &StepCx, _intent: &Value) -> Result<Started, StepError> {
        let plan = self.plan(&cx.step).map_err(|p| StepError::fatal(p.join(" ")))?;
        let target = self.runner.target(Some(&plan.node)).map_err(|e| StepError::fatal(e.to_string()))?;
        let node = plan.node.as_str();
        let total = plan.commands.len();
        let recorded = self.runner.limits().recorded_output;
        self.journal(&cx.idem_key, |j| *j = Journal::default());
        lock(&self.undone).remove(&cx.idem_key);
        let mut ran: Vec<(String, UndoPlan)> = Vec::new();
        let mut records = Vec::new();
        for (k, planned) in plan.commands.iter().enumerate() {
            cx.progress(Some(k as f64 / total as f64), format!("running `{}` on {node} ({} of {total})", planned.command, k + 1));
            let pipeline = self.allowlist.parse(&planned.command).map_err(|e| StepError::fatal(e.to_string()))?;
            self.journal(&cx.idem_key, |j| j.started = k + 1);
            let (failure, details) = match self.runner.run(&target, &pipeline).await {
                Ok(out) if out.success() => {
                    tracing::info!(step = %cx.step.name, node, command = %planned.command, "node command ran");
                    records.push(json!({"command": planned.command, "undo": planned.undo, "output": out.to_json(recorded)}));
                    ran.push((planned.command.clone(), planned.undo.clone()));
                    self.journal(&cx.idem_key, |j| j.finished = k + 1);
                    continue;
                }
                Ok(out) if out.ssh_failed() => (
                    format!("ssh could not reach {node} to run `{}` ({}; {})", planned.command, out.stderr.trim(), self.runner.ssh_hint(&out)),
                    String::new(),
                ),
                Ok(out) if out.timed_out => {
                    (format!("`{}` {} on {node}; it may have partly run: check {node}", planned.command, out.status()), out.streams(1024))
                }
                Ok(out) => (format!("`{}` failed on {node} ({})", planned.command, out.status()), out.streams(1024)),
                Err(e) => (e.to_string(), String::new()),
            };
            // A command failed: undo what ran before it, then report.
            let not_run: Vec<String> = plan.commands[k + 1..].iter().map(|c| c.command.clone()).collect();
            let mut message = format!("Step `{}` stopped: {failure}.", cx.step.name);
            if ran.is_empty() {
                message.push_str(" No command had run before it.");
            } else {
                let ran_names: Vec<String> = ran.iter().map(|(c, _)| c.clone()).collect();
                let report = self.undo_ran(&cx.idem_key, &target, &ran).await;
                let _ = write!(message, " Ran before it: {}; {}.", quoted_list(&ran_names), report.describe(node));
            }
            if !not_run.is_empty() {
                let _ = write!(message, " Not run: {}.", quoted_list(&not_run));
            }
            message.push_str(" Fix the cause, then run the workflow again.");
            if !details.is_empty() {
                let _ = write!(message, "\nOutput of `{}`:\n{details}", planned.command);
            }
            lock(&self.journal).remove(&cx.idem_key);
            return Err(StepError::fatal(message));
        }
        cx.progress(Some(1.0), format!("ran {total} command(s) on {node}"));
        lock(&self.journal).remove(&cx.idem_key);
        Ok(Started::Done(json!({"node": node, "ran": records})))
    }

    async fn verify(&self, cx: &StepCx, _intent: &Value) -> Verified {
        let commands = cx.step.list_field("commands");
        let node = cx.step.str_field("node").unwrap_or("the node");
        if commands.is_empty() {
            return Verified::NotDone;
        }
        let known = lock(&self.journal).get(&cx.idem_key).copied();
        match known {
            Some(Journal { started: 0, .. }) => Verified::NotDone,
            Some(Journal { started, finished }) => {
                let done = quoted_list(&commands[..finished.min(commands.len())]);
                let unsure = commands.get(started - 1).filter(|_| started > finished);
                match unsure {
                    Some(cmd) => Verified::Unknown(format!(
                        "Step `{}` was interrupted on {node}: {} ran; check on {node} whether `{cmd}` ran, then mark the step done or failed.",
                        cx.step.name,
                        if done.is_empty() { "no earlier command".to_string() } else { done }
                    )),
                    None => Verified::Unknown(format!(
                        "Step `{}` was interrupted on {node} after {done} ran; check on {node} whether they took effect, then mark the step done or failed.",
                        cx.step.name
                    )),
                }
            }
            None => Verified::Unknown(format!(
                "Shell commands cannot be asked whether they ran: check on {node} whether {} ran, then mark the step done or failed.",
                commands.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", then ")
            )),
        }
    }

    async fn compensate(&self, cx: &StepCx, _intent: &Value, outcome: &Value) -> Result<Compensation, StepError> {
        let node = outcome.get("node").and_then(Value::as_str).or_else(|| cx.step.str_field("node")).unwrap_or_default().to_string();
        let ran: Vec<RanRecord> = match outcome.get("ran") {
            None | Some(Value::Null) => Vec::new(),
            Some(list) => serde_json::from_value(list.clone()).map_err(|e| {
                StepError::fatal(format!("the recorded outcome of step `{}` is unreadable ({e}); undo its commands on {node} by hand", cx.step.name))
            })?,
        };
        if ran.is_empty() {
            return Ok(Compensation::NothingToUndo);
        }
        let target = self.runner.target(Some(&node)).map_err(|e| StepError::fatal(e.to_string()))?;
        let ran: Vec<(String, UndoPlan)> = ran.into_iter().map(|r| (r.command, r.undo)).collect();
        let report = self.undo_ran(&cx.idem_key, &target, &ran).await;
        if report.failed.is_some() {
            let message = format!("Rolling back step `{}` on {node} stopped: {}.", cx.step.name, report.describe(&node));
            return Err(if report.retryable { StepError::transient(message) } else { StepError::fatal(message) });
        }
        if !report.cannot.is_empty() {
            let undone = if report.undone.is_empty() { String::new() } else { format!(" Undid: {}.", quoted_list(&report.undone)) };
            return Ok(Compensation::CannotUndo(format!("On {node}, cannot undo {}.{undone}", report.cannot.join(", "))));
        }
        if report.undone.is_empty() {
            return Ok(Compensation::NothingToUndo);
        }
        Ok(Compensation::Undone(format!("ran on {node}: {}", quoted_list(&report.undone))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_only(line: &str) -> Result<Pipeline> {
        Allowlist::read_only().parse(line)
    }

    fn refusal(line: &str) -> String {
        match read_only(line) {
            Ok(p) => panic!("`{line}` was accepted as {p:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_owners_validation_commands_are_accepted() {
        for line in ["lsblk", "dmesg | grep nvme", "smartctl -a /dev/nvme1n1", "zpool status -x tank", "zfs get -H -o value compression tank"] {
            read_only(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        }
        let p = read_only("dmesg | grep -i 'nvme|ssd' | tail -n 5").expect("pipes of allowlisted commands");
        assert_eq!(p.stages(), [vec!["dmesg"], vec!["grep", "-i", "nvme|ssd"], vec!["tail", "-n", "5"]]);
    }

    #[test]
    fn read_only_forms_are_accepted() {
        for line in [
            "ip -br addr",
            "ip route get 1.1.1.1",
            "ip -4 addr show dev vmbr0",
            "cat /proc/meminfo",
            "cat /sys/class/nvme/nvme0/model",
            "journalctl -u pveproxy -n 50 --no-pager -b -1",
            "systemctl is-active pvedaemon",
            "hostname -f",
            "head -5 /proc/cpuinfo",
            "nvidia-smi --query-gpu=name,memory.used --format=csv",
            "test -e /dev/nvme1n1",
            "echo \"a  b\"",
            "grep -e MemTotal /proc/meminfo",
            "grep 'foo$' /proc/mounts",
        ] {
            read_only(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        }
    }

    #[test]
    fn shell_operators_are_refused_and_named() {
        for (line, named) in [
            ("lsblk; reboot", "`;`"),
            ("lsblk && reboot", "`&&`"),
            ("lsblk || reboot", "`||`"),
            ("lsblk &", "`&`"),
            ("lsblk > /tmp/x", "`>`"),
            ("grep x < /etc/shadow", "`<`"),
            ("echo $(reboot)", "`$(`"),
            ("echo \"$(reboot)\"", "`$(`"),
            ("echo `reboot`", "backticks"),
            ("echo $HOME", "`$`"),
            ("(lsblk)", "subshell"),
            ("lsblk\nreboot", "line break"),
            ("cat /proc/*", "wildcard"),
            ("lsblk #x", "comment"),
            ("echo 'open", "quote"),
            ("lsblk |", "both sides"),
        ] {
            let e = refusal(line);
            assert!(e.contains(named), "`{line}`: {e}");
            assert!(e.starts_with(&format!("`{}` is not allowed", line.trim())), "`{line}`: {e}");
        }
    }

    #[test]
    fn quoted_operators_are_arguments() {
        let p = read_only("echo 'a; b && c > d $(e)' \"|\"").expect("quoted text is literal");
        assert_eq!(p.stages(), [vec!["echo", "a; b && c > d $(e)", "|"]]);
    }

    #[test]
    fn unknown_commands_are_refused_listing_the_allowed_ones() {
        let e = refusal("rm -rf /");
        assert!(e.contains("`rm` is not on the list; allowed: lsblk, dmesg, smartctl, zpool status|list"), "{e}");
        let e = refusal("lsblk | sh");
        assert!(e.contains("`sh` is not on the list"), "{e}");
        let e = refusal("/usr/bin/lsblk");
        assert!(e.contains("without a path"), "{e}");
    }

    #[test]
    fn mutating_forms_of_read_only_commands_are_refused() {
        for (line, named) in [
            ("zpool destroy tank", "`zpool status`, `zpool list`"),
            ("ip addr add 10.0.0.1/24 dev eth0", "`ip addr add` is not a read-only form"),
            ("ip link set eth0 down", "`ip link set` is not a read-only form"),
            ("dmesg -c", "`-c`"),
            ("dmesg -Tc", "`-c`"),
            ("smartctl -t long /dev/sda", "`-t`"),
            ("smartctl -s on /dev/sda", "`-s`"),
            ("smartctl -l scterc,70,70 /dev/sda", "`-l`"),
            ("hostname evil", "takes no operand"),
            ("cat /etc/shadow", "/etc/shadow"),
            ("cat /proc/../etc/shadow", "/proc/../etc/shadow"),
            ("grep root /etc/shadow", "/etc/shadow"),
            ("grep -r x /proc", "`-r`"),
            ("tail -f /proc/kmsg", "`-f`"),
            ("sort -o /etc/passwd", "`-o`"),
            ("uniq /proc/a /proc/b", "at most 1"),
            ("systemctl restart pveproxy", "`systemctl status`"),
            ("journalctl --vacuum-size=1M", "`--vacuum-size`"),
            ("journalctl -f", "`-f`"),
            ("nvidia-smi -pm 1", "`-p`"),
            ("free -s 1", "`-s`"),
        ] {
            let e = refusal(line);
            assert!(e.contains(named), "`{line}`: {e}");
        }
    }

    fn node(line: &str) -> Result<Pipeline> {
        Allowlist::node().parse(line)
    }

    fn undo_of(line: &str) -> (Undo, Option<String>) {
        let list = Allowlist::node();
        let p = list.parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let (entry, args) = list.matching(&p.stages()[0]).expect("matches");
        (entry.undo, render_undo(entry, &args))
    }

    #[test]
    fn node_commands_have_their_undo() {
        assert_eq!(undo_of("zpool offline tank sdb").1.as_deref(), Some("zpool online tank sdb"));
        assert_eq!(undo_of("zfs snapshot tank/vm@before").1.as_deref(), Some("zfs destroy tank/vm@before"));
        assert_eq!(undo_of("qm stop 100 --skiplock 1").1.as_deref(), Some("qm start 100"));
        assert_eq!(undo_of("qm snapshot 100 'pre upgrade'").1.as_deref(), Some("qm delsnapshot 100 'pre upgrade'"));
        assert_eq!(undo_of("pvesm add dir backup --path /mnt/backup").1.as_deref(), Some("pvesm remove backup"));
        // An option can change what the command acts on: no default undo.
        assert_eq!(undo_of("zfs snapshot -r tank@before").1, None);
        assert!(matches!(undo_of("zpool add tank nvme1n1").0, Undo::Irreversible(_)));
        assert!(matches!(undo_of("zfs set compression=lz4 tank").0, Undo::NeedsPrevious(_)));
    }

    #[test]
    fn every_default_undo_is_itself_allowlisted() {
        for entry in NODE_COMMANDS {
            let Undo::Command { template, .. } = entry.undo else { continue };
            let line = template.replace("{1}", "a").replace("{2}", "b").replace("{3}", "c").replace("{*}", "a b");
            node(&line).unwrap_or_else(|e| panic!("the undo of {}: {e}", entry.describe()));
        }
    }

    #[test]
    fn pvesh_reads_status_config_and_listings_only() {
        for line in [
            "pvesh get /cluster/status --output-format json",
            "pvesh get /cluster/backup/labops-nightly --output-format json",
            "pvesh get /nodes/chief-horse/storage/homelab-backup/content --content backup --vmid 116 --output-format json",
            "pvesh get /nodes/pumped-piglet/lxc/103/status/current",
            "pvesh get /nodes/pve/qemu/107/config",
            "pvesh ls /nodes",
        ] {
            read_only(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        }
        for (line, named) in [
            ("pvesh create /cluster/backup --id x", "`pvesh get`, `pvesh ls`"),
            ("pvesh set /nodes/pve/qemu/100/config --memory 1", "`pvesh get`, `pvesh ls`"),
            ("pvesh delete /cluster/backup/x", "`pvesh get`, `pvesh ls`"),
            ("pvesh get /nodes/pve/subscription", "`/nodes/pve/subscription` is not an API path"),
            ("pvesh get /cluster/acme/plugins", "not an API path"),
            ("pvesh get /access/users", "not an API path"),
            ("pvesh get /nodes/pve/storage/pbs/file-restore/download --filepath /etc/shadow", "not an API path"),
            ("pvesh get /nodes/../access/users/status", "not an API path"),
            ("pvesh get /nodes//status", "not an API path"),
            ("pvesh get nodes/pve/status", "not an API path"),
            ("pvesh get --content backup /nodes/pve/storage/local/content", "write the path first"),
            ("pvesh get", "needs the API path"),
        ] {
            let e = refusal(line);
            assert!(e.contains(named), "`{line}`: {e}");
        }
    }

    #[test]
    fn cluster_version_and_clock_reads_are_read_only() {
        for line in ["pvecm status", "pvecm nodes", "pveversion", "pveversion -v", "timedatectl show", "timedatectl status", "timedatectl show -p NTPSynchronized --value"] {
            read_only(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        }
        for (line, named) in [
            ("pvecm add 192.168.4.175", "`pvecm status`, `pvecm nodes`"),
            ("pvecm delnode still-fawn", "`pvecm status`, `pvecm nodes`"),
            ("pvecm expected 1", "`pvecm status`, `pvecm nodes`"),
            ("pvecm status extra", "takes no operand"),
            ("pveversion --help-me", "not accepted"),
            ("timedatectl set-ntp false", "`timedatectl status`, `timedatectl show`"),
            ("timedatectl set-time '2030-01-01'", "`timedatectl status`, `timedatectl show`"),
            ("timedatectl -H other status", "`-H`"),
        ] {
            let e = refusal(line);
            assert!(e.contains(named), "`{line}`: {e}");
        }
        // Reads stay off the node list, and the node list's mutating forms off the read-only one.
        assert!(node("pvecm status").is_err());
        assert!(read_only("vzdump 116 --storage homelab-backup").is_err());
        assert!(read_only("apt-get install --yes htop").is_err());
    }

    #[test]
    fn vzdump_backs_up_without_deleting_and_cannot_be_undone() {
        let (undo, rendered) = undo_of("vzdump 116 --storage homelab-backup --mode snapshot");
        assert!(matches!(undo, Undo::Irreversible(why) if why.contains("retention")), "{undo:?}");
        assert_eq!(rendered, None);
        node("vzdump 105 107 --storage homelab-backup --mode snapshot --compress zstd --notes-template 'first backup'").expect("safe options");
        node("vzdump --all 1 --exclude 9000 --storage homelab-backup").expect("all guests");
        for (line, named) in [
            ("vzdump 116 --remove 1", "`--remove`"),
            ("vzdump 116 --prune-backups keep-last=1", "`--prune-backups`"),
            ("vzdump 116 --script /usr/local/bin/hook", "`--script`"),
            ("vzdump 116 --dumpdir /etc", "`--dumpdir`"),
            ("vzdump 116 --stdout 1", "`--stdout`"),
            ("vzdump --stop 1", "`--stop`"),
        ] {
            let e = node(line).expect_err(line).to_string();
            assert!(e.contains(named) && e.contains("not accepted"), "`{line}`: {e}");
        }
    }

    #[test]
    fn joining_a_cluster_is_irreversible_and_never_forced() {
        let (undo, _) = undo_of("pvecm add 192.168.4.175 --use_ssh 1");
        assert!(matches!(undo, Undo::Irreversible(why) if why.contains("delnode")), "{undo:?}");
        let e = node("pvecm add 192.168.4.175 --force 1").expect_err("force").to_string();
        assert!(e.contains("`--force`"), "{e}");
        let e = node("pvecm delnode still-fawn").expect_err("not allowed").to_string();
        assert!(e.contains("`pvecm add`"), "{e}");
    }

    #[test]
    fn apt_installs_and_removes_packages_undoing_each_other() {
        assert_eq!(
            undo_of("apt-get install prometheus-node-exporter --yes").1.as_deref(),
            Some("apt-get remove --yes prometheus-node-exporter")
        );
        assert_eq!(undo_of("apt-get install htop iotop -y").1.as_deref(), Some("apt-get remove --yes htop iotop"));
        assert_eq!(undo_of("apt-get remove htop --yes").1.as_deref(), Some("apt-get install --yes htop"));
        // Options before the packages hide them from the template: the step gives `rollback`.
        assert_eq!(undo_of("apt-get install -y htop").1, None);
        for (line, named) in [
            ("apt-get install proxmox-ve- --yes", "`proxmox-ve-` is not a Debian package name"),
            ("apt-get install ./evil.deb", "`./evil.deb` is not a Debian package name"),
            ("apt-get install htop=3.2.2-2", "not a Debian package name"),
            ("apt-get install -t bookworm-backports htop", "`-t`"),
            ("apt-get install -o Dpkg::Pre-Invoke::=reboot htop", "`-o`"),
            ("apt-get remove --allow-remove-essential bash", "`--allow-remove-essential`"),
            ("apt-get purge htop", "`apt-get install`, `apt-get remove`"),
            ("apt-get dist-upgrade", "`apt-get install`, `apt-get remove`"),
        ] {
            let e = node(line).expect_err(line).to_string();
            assert!(e.contains(named), "`{line}`: {e}");
        }
    }

    #[test]
    fn node_commands_take_no_pipes_and_no_read_only_tools() {
        assert!(node("zpool add tank nvme1n1").is_ok());
        let e = node("qm list | grep 100").expect_err("pipe").to_string();
        assert!(e.contains("one command per line"), "{e}");
        let e = node("zpool status").expect_err("not a node command").to_string();
        assert!(e.contains("`zpool add`"), "{e}");
        let e = node("systemctl -H other start pveproxy").expect_err("another host").to_string();
        assert!(e.contains("`-H`"), "{e}");
        let e = node("touch /tmp/x").expect_err("not shipped").to_string();
        assert!(e.contains("`touch` is not on the list"), "{e}");
    }

    #[test]
    fn remote_lines_quote_every_word() {
        let p = read_only("echo 'a b' \"$x\"").expect_err("variable").to_string();
        assert!(p.contains("`$`"));
        let p = read_only("grep -i 'nvme|ssd x' /proc/mounts | head -n 2").expect("valid");
        assert_eq!(p.to_shell(), "grep -i 'nvme|ssd x' /proc/mounts | head -n 2");
        let p = read_only("echo \"it's\" ';'").expect("valid");
        assert_eq!(shlex::split(&p.to_shell()).expect("splits back"), ["echo", "it's", ";"]);
    }

    #[test]
    fn targets_resolve_through_the_hosts_table() {
        let mut ssh = SshSettings::default();
        ssh.hosts.insert("pve1".into(), "192.168.1.10".into());
        assert_eq!(ssh.target(None).expect("local"), Target::Local);
        assert_eq!(ssh.target(Some("localhost")).expect("local"), Target::Local);
        assert_eq!(ssh.target(Some("pve1")).expect("mapped"), Target::Ssh { host: "pve1".into(), address: "192.168.1.10".into() });
        assert_eq!(ssh.target(Some("pve2")).expect("as is"), Target::Ssh { host: "pve2".into(), address: "pve2".into() });
        assert!(ssh.target(Some("-oProxyCommand=x")).expect_err("option").to_string().contains("starts with `-`"));
        assert!(ssh.target(Some("a b")).is_err());
    }

    #[test]
    fn ssh_arguments_carry_every_setting() {
        let ssh = SshSettings {
            user: Some("root".into()),
            port: Some(2222),
            identity_file: Some("/keys/id".into()),
            known_hosts_file: Some("/keys/known".into()),
            strict_host_key_checking: HostKeyChecking::AcceptNew,
            connect_timeout_seconds: 3,
            hosts: BTreeMap::new(),
        };
        let args = ssh.ssh_args("10.0.0.1").join(" ");
        for part in [
            "BatchMode=yes",
            "ConnectTimeout=3",
            "StrictHostKeyChecking=accept-new",
            "UserKnownHostsFile=/keys/known",
            "-i /keys/id",
            "IdentitiesOnly=yes",
            "-p 2222",
            "-l root",
        ] {
            assert!(args.contains(part), "{part} missing from {args}");
        }
        assert!(args.ends_with("-- 10.0.0.1"), "{args}");
    }

    #[test]
    fn both_step_types_are_declared() {
        assert_eq!(declared("proxmox-task").name, "proxmox-task");
        assert_eq!(declared("system-check").name, "system-check");
    }

    #[test]
    fn head_cuts_at_a_character_boundary() {
        assert_eq!(head("héllo", 2), "h");
        assert_eq!(head("hello", 10), "hello");
    }
}
