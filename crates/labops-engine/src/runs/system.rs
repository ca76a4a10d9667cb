//! `system-check`: read-only allowlisted commands on a host, and success criteria on their
//! results.
//!
//! A step lists `validation_commands` (each checked against [`READ_ONLY`](super::commands::READ_ONLY),
//! pipes allowed), an optional `host` (absent or `localhost`: this machine; otherwise reached
//! over SSH) and optional `success_criteria`, each one sentence of this small language, where
//! `<command>` is one of the step's `validation_commands` written exactly (backticks around it
//! are allowed):
//!
//! | criterion | passes when |
//! |---|---|
//! | `<command> exits <code>` | the command's exit code is `<code>` (for a pipeline, the last stage's) |
//! | `<command> succeeds` | it exits 0 |
//! | `<command> fails` | it exits with a code other than 0 |
//! | `output of <command> contains <text>` | its standard output contains `<text>` |
//! | `output of <command> does not contain <text>` | it does not |
//! | `output of <command> matches /<regex>/` | a line of its standard output matches the regular expression (`^` and `$` match at line ends; `/.../i` ignores case) |
//! | `output of <command> does not match /<regex>/` | no line does |
//!
//! `<text>` may be quoted (`"..."` or `'...'`) to keep spaces at its ends. Without criteria,
//! every command must exit 0; with criteria, each command that no criterion names must still
//! exit 0. Free-text criteria that fit none of these forms fail the step's check with a
//! sentence listing the forms.
//!
//! ```yaml
//! - name: disk-detection
//!   type: system-check
//!   host: pve1
//!   validation_commands: ["lsblk", "dmesg | grep nvme", "smartctl -H /dev/nvme1n1"]
//!   success_criteria:
//!     - "output of lsblk contains nvme1n1"
//!     - "output of smartctl -H /dev/nvme1n1 matches /PASSED|OK/"
//! ```

use std::fmt::Write as _;
use std::time::Duration;

use async_trait::async_trait;
use labops_core::inventory::EntityKind;
use labops_core::workflow::StepType;
use regex::{Regex, RegexBuilder};
use serde_json::{Value, json};

use super::commands::{Allowlist, CommandOutput, CommandRunner, Pipeline, Target, declared};
use super::executor::{Executor, Ground, RetryPolicy, RunStep, Started, StepCx, StepError, Verified};

/// Bytes of each output shown in a failure message.
const SHOWN_OUTPUT: usize = 1024;

/// The criteria forms, for messages.
const FORMS: &str = "`<command> exits <code>`, `<command> succeeds`, `<command> fails`, `output of <command> contains <text>`, \
`output of <command> does not contain <text>`, `output of <command> matches /<regex>/`, `output of <command> does not match /<regex>/`";

/// What a criterion checks.
#[derive(Debug, Clone)]
pub enum Check {
    /// The exit code is this one.
    ExitsWith(i32),
    /// The exit code is not 0.
    Fails,
    /// Standard output contains the text (or, negated, does not).
    Contains {
        /// The text.
        text: String,
        /// `does not contain`.
        negated: bool,
    },
    /// A line of standard output matches (or, negated, none does).
    Matches {
        /// The compiled expression.
        regex: Regex,
        /// `does not match`.
        negated: bool,
    },
}

/// One success criterion of a `system-check`, read from the language described in the
/// [module documentation](self).
#[derive(Debug, Clone)]
pub struct Criterion {
    /// The criterion as written.
    pub text: String,
    /// Which of the step's `validation_commands` it is about (index).
    pub command: usize,
    /// What it checks.
    pub check: Check,
}

/// `command`, or the same in backticks, at the start of `text`: the rest.
fn strip_command<'a>(text: &'a str, command: &str) -> Option<&'a str> {
    let quoted = format!("`{command}`");
    text.strip_prefix(quoted.as_str()).or_else(|| text.strip_prefix(command))
}

/// Removes one pair of matching quotes around `text`.
fn unquote(text: &str) -> &str {
    let t = text.trim();
    for q in ['"', '\'', '`'] {
        if t.len() >= 2 && t.starts_with(q) && t.ends_with(q) {
            return &t[1..t.len() - 1];
        }
    }
    t
}

/// Strips an ASCII prefix, ignoring case.
fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &text[prefix.len()..])
}

impl Criterion {
    /// Reads `text` against the step's `commands`. The error is a sentence saying which forms
    /// are understood.
    pub fn parse(text: &str, commands: &[String]) -> Result<Self, String> {
        let t = text.trim();
        // Longest command first, so `dmesg | grep nvme` is not read as `dmesg`.
        let mut order: Vec<usize> = (0..commands.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(commands[i].trim().len()));
        let not_understood = || {
            let listed = commands.iter().map(|c| format!("`{}`", c.trim())).collect::<Vec<_>>().join(", ");
            format!("`{t}` is not a criterion labops can check; write one of {FORMS}, where <command> is one of the step's validation_commands ({listed})")
        };
        if let Some(rest) = strip_prefix_ci(t, "output of ") {
            for &i in &order {
                let Some(after) = strip_command(rest.trim_start(), commands[i].trim()) else { continue };
                for (keyword, negated, regex) in [
                    (" does not contain ", true, false),
                    (" contains ", false, false),
                    (" does not match ", true, true),
                    (" matches ", false, true),
                ] {
                    let Some(arg) = strip_prefix_ci(after, keyword) else { continue };
                    let check = if regex { Self::regex(arg, negated)? } else { Self::text(arg, negated)? };
                    return Ok(Self { text: t.to_string(), command: i, check });
                }
            }
            return Err(not_understood());
        }
        for &i in &order {
            let Some(after) = strip_command(t, commands[i].trim()) else { continue };
            let after = after.trim();
            let check = if after.eq_ignore_ascii_case("succeeds") {
                Check::ExitsWith(0)
            } else if after.eq_ignore_ascii_case("fails") {
                Check::Fails
            } else if let Some(code) = strip_prefix_ci(after, "exits ") {
                let code = code.trim().parse::<i32>().map_err(|_| {
                    format!("`{t}`: the exit code must be a whole number, as in `{} exits 0`", commands[i].trim())
                })?;
                Check::ExitsWith(code)
            } else {
                continue;
            };
            return Ok(Self { text: t.to_string(), command: i, check });
        }
        Err(not_understood())
    }

    fn text(arg: &str, negated: bool) -> Result<Check, String> {
        let text = unquote(arg);
        if text.is_empty() {
            return Err("the text to look for is empty; write it after `contains`".into());
        }
        Ok(Check::Contains { text: text.to_string(), negated })
    }

    fn regex(arg: &str, negated: bool) -> Result<Check, String> {
        let arg = arg.trim();
        let (pattern, flags) = match arg.strip_prefix('/').and_then(|a| a.rsplit_once('/')) {
            Some(parts) => parts,
            None => return Err(format!("write the regular expression between slashes, as in `matches /{}/`", arg.trim_matches('/'))),
        };
        if !flags.chars().all(|f| f == 'i') {
            return Err(format!("`/{pattern}/{flags}`: the only flag understood after the closing slash is `i` (ignore case)"));
        }
        let regex = RegexBuilder::new(pattern)
            .case_insensitive(flags.contains('i'))
            .multi_line(true)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| format!("`/{pattern}/` is not a valid regular expression: {e}"))?;
        Ok(Check::Matches { regex, negated })
    }

    /// Whether `output` satisfies the criterion.
    pub fn passes(&self, output: &CommandOutput) -> bool {
        match &self.check {
            Check::ExitsWith(code) => output.exit_code == Some(*code),
            Check::Fails => !output.success(),
            Check::Contains { text, negated } => output.stdout.contains(text.as_str()) != *negated,
            Check::Matches { regex, negated } => regex.is_match(&output.stdout) != *negated,
        }
    }
}

/// A checked `system-check` step.
#[derive(Debug)]
struct CheckPlan {
    target: Target,
    commands: Vec<Pipeline>,
    criteria: Vec<Criterion>,
}

/// The executor of `system-check` steps: runs `validation_commands` through the read-only
/// allowlist on `host` and checks `success_criteria` (see the [module documentation](self)).
///
/// Read-only, so [`Executor::verify`] says "not done" (safe to run again) and there is nothing
/// to compensate. SSH connection failures (ssh's exit code 255) are retried with backoff;
/// failing criteria are not.
#[derive(Debug, Clone)]
pub struct SystemCheck {
    runner: CommandRunner,
    allowlist: Allowlist,
}

impl SystemCheck {
    /// Runs commands from [`READ_ONLY`](super::commands::READ_ONLY) through `runner`.
    pub fn new(runner: CommandRunner) -> Self {
        Self::with_allowlist(runner, Allowlist::read_only())
    }

    /// Runs commands from `allowlist`.
    pub fn with_allowlist(runner: CommandRunner, allowlist: Allowlist) -> Self {
        Self { runner, allowlist }
    }

    fn plan(&self, step: &RunStep) -> Result<CheckPlan, Vec<String>> {
        let mut problems = Vec::new();
        let target = self.runner.target(step.str_field("host")).map_err(|e| problems.push(format!("`host`: {e}"))).ok();
        let lines = step.list_field("validation_commands");
        if lines.is_empty() {
            problems.push("`validation_commands` lists no command; write the read-only commands to run".to_string());
        }
        let mut commands = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            match self.allowlist.parse(line) {
                Ok(p) => commands.push(p),
                Err(e) => problems.push(format!("validation_commands[{i}]: {e}")),
            }
        }
        let mut criteria = Vec::new();
        for (i, text) in step.list_field("success_criteria").iter().enumerate() {
            match Criterion::parse(text, &lines) {
                Ok(c) => criteria.push(c),
                Err(e) => problems.push(format!("success_criteria[{i}]: {e}")),
            }
        }
        match target {
            Some(target) if problems.is_empty() => Ok(CheckPlan { target, commands, criteria }),
            _ => Err(problems),
        }
    }
}

#[async_trait]
impl Executor for SystemCheck {
    fn step_type(&self) -> &'static StepType {
        declared("system-check")
    }

    fn check(&self, step: &RunStep) -> Vec<String> {
        self.plan(step).err().unwrap_or_default()
    }

    fn grounding(&self, step: &RunStep) -> Vec<Ground> {
        // A remote host must be a machine the lab knows: a Proxmox node, a guest, a Kubernetes
        // node, or one of `[[hosts]]`; or an IP address.
        // An IP address is written out by the owner, not a name to resolve.
        let host = step
            .str_field("host")
            .map(str::trim)
            .filter(|h| !h.is_empty() && *h != "localhost" && h.parse::<std::net::IpAddr>().is_err());
        let kinds = vec![EntityKind::Host, EntityKind::ProxmoxNode, EntityKind::Vm, EntityKind::Lxc, EntityKind::K8sNode];
        host.map(|h| vec![Ground::Exists { field: "host".into(), name: h.into(), kinds }]).unwrap_or_default()
    }

    fn retry(&self) -> RetryPolicy {
        RetryPolicy { attempts: 3, initial: Duration::from_secs(2), max: Duration::from_secs(10) }
    }

    async fn execute(&self, cx: &StepCx, _intent: &Value) -> Result<Started, StepError> {
        let plan = self.plan(&cx.step).map_err(|p| StepError::fatal(p.join(" ")))?;
        let host = plan.target.describe();
        let total = plan.commands.len();
        let mut outputs = Vec::with_capacity(total);
        for (k, pipeline) in plan.commands.iter().enumerate() {
            cx.progress(Some(k as f64 / total as f64), format!("running `{pipeline}` on {host}"));
            let out = self.runner.run(&plan.target, pipeline).await.map_err(|e| StepError::fatal(format!("System check `{}`: {e}.", cx.step.name)))?;
            if out.ssh_failed() {
                return Err(StepError::transient(format!(
                    "System check `{}` could not reach {host}: {}; {}.",
                    cx.step.name,
                    out.stderr.trim(),
                    self.runner.ssh_hint(&out)
                )));
            }
            outputs.push(out);
        }
        cx.progress(Some(1.0), format!("ran {total} command(s) on {host}"));

        // The criteria, then the implicit `exits 0` of every command no criterion names.
        let mut results = Vec::new();
        let mut failures = Vec::new();
        for criterion in &plan.criteria {
            let out = &outputs[criterion.command];
            let passed = criterion.passes(out);
            results.push(json!({"criterion": criterion.text, "passed": passed}));
            if !passed {
                failures.push((format!("`{}` is not met", criterion.text), criterion.command));
            }
        }
        for (i, out) in outputs.iter().enumerate() {
            if plan.criteria.iter().any(|c| c.command == i) {
                continue;
            }
            let text = format!("{} exits 0", out.command);
            results.push(json!({"criterion": text, "passed": out.success()}));
            if !out.success() {
                failures.push((format!("`{text}` is not met (no criterion names it, so it must succeed)"), i));
            }
        }
        if !failures.is_empty() {
            let mut message = format!("System check `{}` failed on {host}:", cx.step.name);
            for (what, i) in &failures {
                let _ = write!(message, "\n- {what}: {}", outputs[*i].summary(SHOWN_OUTPUT));
            }
            message.push_str("\nFix what the output shows, or the criterion if it expects the wrong thing, then run the workflow again.");
            return Err(StepError::fatal(message));
        }
        let recorded = self.runner.limits().recorded_output;
        Ok(Started::Done(json!({
            "host": host,
            "commands": outputs.iter().map(|o| o.to_json(recorded)).collect::<Vec<_>>(),
            "criteria": results,
        })))
    }

    async fn verify(&self, _cx: &StepCx, _intent: &Value) -> Verified {
        Verified::NotDone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commands() -> Vec<String> {
        ["lsblk", "dmesg | grep nvme", "dmesg", "smartctl -a /dev/nvme1n1"].map(String::from).to_vec()
    }

    fn parse(text: &str) -> Result<Criterion, String> {
        Criterion::parse(text, &commands())
    }

    #[test]
    fn every_form_is_understood() {
        let cases = [
            ("lsblk exits 0", 0),
            ("`dmesg | grep nvme` succeeds", 1),
            ("dmesg | grep nvme fails", 1),
            ("dmesg exits 1", 2),
            ("output of dmesg | grep nvme contains nvme1n1", 1),
            ("Output of `dmesg` does not contain \"I/O error\"", 2),
            ("output of smartctl -a /dev/nvme1n1 matches /PASSED/i", 3),
            ("output of lsblk does not match /^sdz/", 0),
        ];
        for (text, command) in cases {
            let c = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(c.command, command, "{text}");
        }
    }

    #[test]
    fn the_longest_command_wins() {
        let c = parse("output of dmesg | grep nvme contains x").expect("parses");
        assert!(matches!(c.check, Check::Contains { ref text, negated: false } if text == "x"));
        assert_eq!(c.command, 1);
    }

    #[test]
    fn free_text_is_refused_with_the_forms() {
        let e = parse("zpool status healthy").expect_err("free text");
        assert!(e.contains("`zpool status healthy` is not a criterion"), "{e}");
        assert!(e.contains("output of <command> contains <text>") && e.contains("`dmesg | grep nvme`"), "{e}");
        let e = parse("output of zpool status contains ONLINE").expect_err("not a validation command");
        assert!(e.contains("validation_commands"), "{e}");
    }

    #[test]
    fn bad_arguments_say_what_to_write() {
        assert!(parse("lsblk exits zero").expect_err("code").contains("whole number"));
        assert!(parse("output of lsblk matches nvme").expect_err("slashes").contains("between slashes"));
        assert!(parse("output of lsblk matches /(/").expect_err("regex").contains("not a valid regular expression"));
        assert!(parse("output of lsblk matches /x/g").expect_err("flag").contains("`i`"));
        assert!(parse("output of lsblk contains \"\"").expect_err("empty").contains("empty"));
    }

    fn output(code: i32, stdout: &str) -> CommandOutput {
        CommandOutput {
            command: "lsblk".into(),
            target: Target::Local,
            exit_code: Some(code),
            signal: None,
            timed_out: false,
            stdout: stdout.into(),
            stderr: String::new(),
            stdout_bytes: stdout.len() as u64,
            stderr_bytes: 0,
            duration: Duration::ZERO,
        }
    }

    #[test]
    fn criteria_check_exit_codes_and_output() {
        let out = output(0, "NAME\nnvme1n1 259:0\nsda 8:0\n");
        let check = |text: &str| parse(text).expect("parses").passes(&out);
        assert!(check("lsblk exits 0"));
        assert!(!check("lsblk exits 1"));
        assert!(!check("lsblk fails"));
        assert!(check("output of lsblk contains nvme1n1"));
        assert!(!check("output of lsblk contains nvme2n1"));
        assert!(check("output of lsblk does not contain nvme2n1"));
        assert!(check("output of lsblk matches /^sda /"));
        assert!(!check("output of lsblk matches /^SDA /"));
        assert!(check("output of lsblk matches /^SDA /i"));
        assert!(check("output of lsblk does not match /^sdb/"));
    }
}
