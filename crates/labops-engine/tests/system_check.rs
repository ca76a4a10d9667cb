//! `system-check` and `proxmox-task` `commands`, run for real: locally, and over SSH against an
//! OpenSSH server on loopback (`labops_testkit::sshd`; skipped loudly when sshd is missing).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use labops_engine::runs::commands::{AllowedCommand, Allowlist, CommandRunner, Limits, NodeCommands, SshSettings, Undo};
use labops_engine::runs::system::SystemCheck;
use labops_engine::runs::{Compensation, Executor, RunStep, Started, StepCx, StepError, Verified};
use labops_testkit::sshd::Sshd;
use serde_json::{Value, json};
use tokio::sync::mpsc;

fn step(step_type: &str, fields: Value) -> RunStep {
    let fields: BTreeMap<String, Value> = serde_json::from_value(fields).expect("fields are a mapping");
    RunStep {
        name: "check".into(),
        step_type: step_type.into(),
        depends_on: Vec::new(),
        waits_for_human: false,
        mutates: step_type == "proxmox-task",
        fields,
    }
}

/// A context, and the progress lines it reports.
fn cx(step: RunStep) -> (StepCx, mpsc::UnboundedReceiver<(String, Value)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (StepCx::new(7, step, 1, tx), rx)
}

fn progress(rx: &mut mpsc::UnboundedReceiver<(String, Value)>) -> Vec<String> {
    let mut lines = Vec::new();
    while let Ok((_, detail)) = rx.try_recv() {
        lines.push(detail["message"].as_str().unwrap_or_default().to_string());
    }
    lines
}

async fn run(executor: &dyn Executor, step: RunStep) -> Result<Value, StepError> {
    let problems = executor.check(&step);
    assert!(problems.is_empty(), "check: {problems:?}");
    let (cx, _rx) = cx(step);
    let intent = executor.prepare(&cx).await?;
    match executor.execute(&cx, &intent).await? {
        Started::Done(outcome) => Ok(outcome),
        other => panic!("expected Done, got {other:?}"),
    }
}

/// SSH settings for the loopback server, reached as host `loopback`.
fn ssh_settings(sshd: &Sshd) -> SshSettings {
    SshSettings {
        user: Some(sshd.user().to_string()),
        port: Some(sshd.port()),
        identity_file: Some(sshd.identity_file()),
        known_hosts_file: Some(sshd.known_hosts_file()),
        connect_timeout_seconds: 5,
        hosts: BTreeMap::from([("loopback".to_string(), sshd.address().to_string())]),
        ..SshSettings::default()
    }
}

const CHECKS: [&str; 3] = ["uname -s", "cat /proc/meminfo | grep MemTotal", "echo 'a;b' \"c  d\" '$(x)'"];

fn check_step(host: Option<&str>) -> RunStep {
    step(
        "system-check",
        json!({
            "host": host,
            "validation_commands": CHECKS,
            "success_criteria": [
                "output of uname -s contains Linux",
                "output of cat /proc/meminfo | grep MemTotal matches /^MemTotal:\\s+\\d+ kB$/",
                "output of `echo 'a;b' \"c  d\" '$(x)'` contains \"a;b c  d $(x)\"",
            ],
        }),
    )
}

fn assert_check_outcome(outcome: &Value, host: &str) {
    assert_eq!(outcome["host"], host);
    let commands = outcome["commands"].as_array().expect("commands recorded");
    assert_eq!(commands.len(), 3);
    for (c, line) in commands.iter().zip(CHECKS) {
        assert_eq!(c["command"], line);
        assert_eq!(c["exit_code"], 0, "{c}");
    }
    assert_eq!(commands[0]["stdout"], "Linux\n");
    assert!(commands[1]["stdout"].as_str().unwrap_or_default().starts_with("MemTotal:"), "{}", commands[1]);
    // Quoted words reach the command unchanged: no shell interpreted `;` or `$(`.
    assert_eq!(commands[2]["stdout"], "a;b c  d $(x)\n");
    let criteria = outcome["criteria"].as_array().expect("criteria recorded");
    assert_eq!(criteria.len(), 3);
    assert!(criteria.iter().all(|c| c["passed"] == true), "{criteria:?}");
}

#[tokio::test]
async fn a_local_check_runs_its_commands_and_meets_its_criteria() {
    let check = SystemCheck::new(CommandRunner::default());
    let outcome = run(&check, check_step(None)).await.expect("the check passes");
    assert_check_outcome(&outcome, "this machine");
}

#[tokio::test]
async fn a_failing_criterion_is_fatal_names_it_and_shows_the_output() {
    let check = SystemCheck::new(CommandRunner::default());
    let step = step(
        "system-check",
        json!({"validation_commands": ["uname -s", "echo ok"], "success_criteria": ["output of uname -s contains Windows"]}),
    );
    let err = run(&check, step).await.expect_err("Linux is not Windows");
    assert!(!err.retryable, "failing criteria are not retried");
    assert!(err.message.contains("`output of uname -s contains Windows` is not met"), "{}", err.message);
    assert!(err.message.contains("`uname -s` on this machine (exit 0)\nstdout:\nLinux\nstderr: (empty)"), "the output is shown: {}", err.message);
    assert!(!err.message.contains("echo ok"), "passing commands are not blamed: {}", err.message);
}

#[tokio::test]
async fn without_criteria_every_command_must_exit_0() {
    let check = SystemCheck::new(CommandRunner::default());
    let failing = step("system-check", json!({"validation_commands": ["test -e /proc/no-such-file", "true"]}));
    let err = run(&check, failing).await.expect_err("test fails");
    assert!(err.message.contains("`test -e /proc/no-such-file exits 0` is not met"), "{}", err.message);
    assert!(err.message.contains("(exit 1)"), "{}", err.message);

    let passing = step("system-check", json!({"validation_commands": ["true", "uname"]}));
    let outcome = run(&check, passing).await.expect("both succeed");
    assert_eq!(outcome["criteria"][0]["criterion"], "true exits 0");
}

#[tokio::test]
async fn a_criterion_on_one_command_leaves_the_others_to_exit_0() {
    let check = SystemCheck::new(CommandRunner::default());
    let step = step(
        "system-check",
        json!({
            "validation_commands": ["test -e /proc/no-such-file", "uname -s"],
            "success_criteria": ["test -e /proc/no-such-file fails"],
        }),
    );
    let outcome = run(&check, step).await.expect("the failure is expected");
    assert_eq!(outcome["commands"][0]["exit_code"], 1);
}

#[tokio::test]
async fn check_refuses_unknown_commands_operators_and_free_text_criteria() {
    let check = SystemCheck::new(CommandRunner::default());
    let step = step(
        "system-check",
        json!({
            "validation_commands": ["lsblk", "dmesg | grep nvme > /tmp/out", "rm -rf /tmp/x"],
            "success_criteria": ["zpool status healthy"],
        }),
    );
    let problems = check.check(&step);
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].starts_with("validation_commands[1]: `dmesg | grep nvme > /tmp/out` is not allowed") && problems[0].contains("`>`"), "{}", problems[0]);
    assert!(problems[1].contains("`rm` is not on the list; allowed: lsblk, dmesg"), "{}", problems[1]);
    assert!(problems[2].starts_with("success_criteria[0]: `zpool status healthy` is not a criterion"), "{}", problems[2]);
    assert!(problems[2].contains("output of <command> matches /<regex>/"), "{}", problems[2]);
    assert!(check.check(&self::step("system-check", json!({}))).iter().any(|p| p.contains("`validation_commands` lists no command")));
}

#[tokio::test]
async fn output_is_capped_and_slow_commands_are_killed() {
    let runner = CommandRunner::default().with_limits(Limits { timeout: Duration::from_secs(30), max_output: 100, recorded_output: 40 });
    let check = SystemCheck::new(runner);
    let outcome = run(&check, step("system-check", json!({"validation_commands": ["cat /proc/self/maps"]}))).await.expect("cat runs");
    let out = &outcome["commands"][0];
    assert_eq!(out["stdout"].as_str().map(str::len), Some(40), "{out}");
    assert!(out["stdout_bytes"].as_u64().unwrap_or_default() > 100, "the whole output is counted: {out}");

    let runner = CommandRunner::default().with_limits(Limits { timeout: Duration::from_millis(300), ..Limits::default() });
    let check = SystemCheck::with_allowlist(runner, Allowlist::read_only().with(AllowedCommand::new("sleep")));
    let started = std::time::Instant::now();
    let err = run(&check, step("system-check", json!({"validation_commands": ["sleep 30"]}))).await.expect_err("killed");
    assert!(started.elapsed() < Duration::from_secs(10), "not waited for: {:?}", started.elapsed());
    assert!(err.message.contains("`sleep 30` on this machine (timed out after 0."), "{}", err.message);
}

#[tokio::test]
async fn a_check_runs_over_ssh() {
    let Some(sshd) = Sshd::start_or_skip("system-check over SSH") else { return };
    let check = SystemCheck::new(CommandRunner::new(ssh_settings(&sshd)));
    let outcome = run(&check, check_step(Some("loopback"))).await.unwrap_or_else(|e| panic!("{e}\nsshd log:\n{}", sshd.log()));
    assert_check_outcome(&outcome, "loopback");
    assert!(sshd.log().contains("Accepted publickey"), "the commands went through sshd: {}", sshd.log());
}

#[tokio::test]
async fn ssh_connection_failures_are_retryable_and_say_what_to_do() {
    let Some(sshd) = Sshd::start_or_skip("system-check over SSH") else { return };
    let step = step("system-check", json!({"host": "loopback", "validation_commands": ["uname"]}));

    // The host key is not known: strict checking refuses to connect.
    let mut settings = ssh_settings(&sshd);
    let empty = sshd.dir().join("empty_known_hosts");
    std::fs::write(&empty, "").expect("write");
    settings.known_hosts_file = Some(empty);
    let err = run(&SystemCheck::new(CommandRunner::new(settings)), step.clone()).await.expect_err("unknown host key");
    assert!(err.retryable, "{err:?}");
    assert!(err.message.contains("could not reach loopback") && err.message.contains("ssh-keyscan"), "{}", err.message);

    // Nothing listens on the port.
    let mut settings = ssh_settings(&sshd);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    settings.port = Some(closed);
    let err = run(&SystemCheck::new(CommandRunner::new(settings)), step).await.expect_err("refused");
    assert!(err.retryable, "{err:?}");
    assert!(err.message.contains(&format!("sshd listens on port {closed}")), "{}", err.message);
}

// ---------------------------------------------------------------------------------------------
// proxmox-task `commands`
// ---------------------------------------------------------------------------------------------

/// Harmless commands for tests only (the shipped list has no file tools).
fn test_allowlist() -> Allowlist {
    Allowlist::node()
        .with(AllowedCommand { undo: Undo::Command { template: "rmdir {1}", options_allowed: false }, ..AllowedCommand::new("mkdir") })
        .with(AllowedCommand { undo: Undo::Command { template: "rm {1}", options_allowed: false }, ..AllowedCommand::new("touch") })
        .with(AllowedCommand::new("rm"))
        .with(AllowedCommand::new("rmdir"))
}

fn node_step(node: &str, commands: &[String], extra: Value) -> RunStep {
    let mut fields = json!({"node": node, "commands": commands});
    if let (Some(f), Value::Object(extra)) = (fields.as_object_mut(), extra) {
        f.extend(extra);
    }
    step("proxmox-task", fields)
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

#[tokio::test]
async fn node_commands_run_over_ssh_and_roll_back_in_reverse() {
    let Some(sshd) = Sshd::start_or_skip("proxmox-task commands over SSH") else { return };
    let work = tempfile::tempdir().expect("tempdir");
    let d = path(work.path(), "d");
    let f = format!("{d}/f");
    let commands = NodeCommands::with_allowlist(CommandRunner::new(ssh_settings(&sshd)), test_allowlist());
    let step = node_step("loopback", &[format!("mkdir {d}"), format!("touch {f}")], json!({}));

    assert!(commands.check(&step).is_empty(), "{:?}", commands.check(&step));
    assert_eq!(commands.confirm_before(&step), None, "both commands can be undone");
    assert_eq!(commands.targets(&step), ["node/loopback"]);
    assert_eq!(commands.retry().attempts, 1, "commands are not idempotent");

    let (cx, mut rx) = cx(step);
    let intent = commands.prepare(&cx).await.expect("prepare");
    assert_eq!(intent["commands"][1]["undo"], json!({"kind": "command", "command": format!("rm {f}")}));
    let outcome = match commands.execute(&cx, &intent).await {
        Ok(Started::Done(outcome)) => outcome,
        other => panic!("{other:?}\nsshd log:\n{}", sshd.log()),
    };
    assert!(Path::new(&f).exists(), "both commands ran on the node");
    let ran: Vec<&str> = outcome["ran"].as_array().expect("ran").iter().filter_map(|r| r["command"].as_str()).collect();
    assert_eq!(ran, [format!("mkdir {d}"), format!("touch {f}")]);
    let lines = progress(&mut rx);
    assert!(lines.iter().any(|l| l == &format!("running `touch {f}` on loopback (2 of 2)")), "{lines:?}");

    // Shell commands cannot be asked whether they ran: a human must look.
    match commands.verify(&cx, &intent).await {
        Verified::Unknown(text) => assert!(text.contains("check on loopback whether `mkdir") && text.contains(&format!("`touch {f}`")), "{text}"),
        other => panic!("expected Unknown, got {other:?}"),
    }

    // `rmdir d` succeeds only after `rm d/f`: the rollbacks ran in reverse order.
    let undone = commands.compensate(&cx, &intent, &outcome).await.expect("compensate");
    assert_eq!(undone, Compensation::Undone(format!("ran on loopback: `rm {f}`, `rmdir {d}`")));
    assert!(!Path::new(&d).exists());
    // Compensating again (after a crash during compensation) does not redo the undo.
    assert_eq!(commands.compensate(&cx, &intent, &outcome).await, Ok(Compensation::NothingToUndo));
}

#[tokio::test]
async fn a_failing_command_stops_the_step_and_undoes_what_ran() {
    let work = tempfile::tempdir().expect("tempdir");
    let d = path(work.path(), "d");
    let never = path(work.path(), "never");
    let commands = NodeCommands::with_allowlist(CommandRunner::default(), test_allowlist());
    let step = node_step("localhost", &[format!("mkdir {d}"), format!("touch {d}/f"), format!("mkdir {d}"), format!("touch {never}")], json!({}));
    let err = run(&commands, step).await.expect_err("the second mkdir fails");
    assert!(!err.retryable);
    let m = &err.message;
    assert!(m.starts_with(&format!("Step `check` stopped: `mkdir {d}` failed on localhost (exit 1).")), "{m}");
    assert!(m.contains(&format!("Output of `mkdir {d}`:\nstdout: (empty)\nstderr:\nmkdir:")) && m.contains("File exists"), "{m}");
    assert!(m.contains(&format!("Ran before it: `mkdir {d}`, `touch {d}/f`; undid them with `rm {d}/f`, `rmdir {d}`")), "{m}");
    assert!(m.contains(&format!("Not run: `touch {never}`")), "{m}");
    assert!(!Path::new(&d).exists(), "the commands that ran were undone");
    assert!(!Path::new(&never).exists(), "nothing ran after the failure");
}

#[tokio::test]
async fn irreversible_commands_need_a_confirmation_and_cannot_be_undone() {
    // The owner's storage expansion: `zpool add` is irreversible, `zfs set` needs the old value.
    let commands = NodeCommands::new(CommandRunner::default());
    let owner = node_step("pve1", &["zpool add tank nvme1n1".into(), "zfs set compression=lz4 tank".into()], json!({}));
    assert!(commands.check(&owner).is_empty(), "{:?}", commands.check(&owner));
    let ask = commands.confirm_before(&owner).expect("a human must confirm");
    assert!(ask.contains("on pve1") && ask.contains("`zpool add tank nvme1n1` (a vdev added"), "{ask}");
    assert!(ask.contains("`zfs set compression=lz4 tank` (the previous value of the property is not known; give `rollback`"), "{ask}");
    let with_rollback = node_step(
        "pve1",
        &["zpool add tank nvme1n1".into(), "zfs set compression=lz4 tank".into()],
        json!({"rollback": {"zfs set compression=lz4 tank": "zfs set compression=off tank"}}),
    );
    let ask = commands.confirm_before(&with_rollback).expect("zpool add still needs it");
    assert!(!ask.contains("zfs set"), "{ask}");

    // A step-declared irreversible command runs, then is reported as impossible to undo.
    let work = tempfile::tempdir().expect("tempdir");
    let (a, b) = (path(work.path(), "a"), path(work.path(), "b"));
    let commands = NodeCommands::with_allowlist(CommandRunner::default(), test_allowlist());
    let step = node_step("localhost", &[format!("touch {a}"), format!("mkdir {b}")], json!({"irreversible": [format!("touch {a}")]}));
    let ask = commands.confirm_before(&step).expect("declared irreversible");
    assert!(ask.contains(&format!("`touch {a}` (the step marks it irreversible)")), "{ask}");
    let (cx, _rx) = cx(step);
    let intent = commands.prepare(&cx).await.expect("prepare");
    let Ok(Started::Done(outcome)) = commands.execute(&cx, &intent).await else { panic!("execute failed") };
    match commands.compensate(&cx, &intent, &outcome).await {
        Ok(Compensation::CannotUndo(text)) => {
            assert!(text.contains(&format!("cannot undo `touch {a}`")) && text.contains(&format!("Undid: `rmdir {b}`")), "{text}")
        }
        other => panic!("expected CannotUndo, got {other:?}"),
    }
    assert!(Path::new(&a).exists() && !Path::new(&b).exists());
}

#[tokio::test]
async fn check_refuses_bad_commands_rollbacks_and_nodes() {
    let commands = NodeCommands::new(CommandRunner::default());
    let cmds = ["zpool add tank nvme1n1".to_string(), "zfs set compression=lz4 tank".to_string()];
    let problems = |extra: Value| commands.check(&node_step("pve1", &cmds, extra));

    let p = problems(json!({"rollback": ["", "rm -rf /tank"]}));
    assert!(p.len() == 1 && p[0].contains("the rollback of `zfs set compression=lz4 tank`") && p[0].contains("`rm` is not on the list"), "{p:?}");
    let p = problems(json!({"rollback": ["zfs set compression=off tank"]}));
    assert!(p.len() == 1 && p[0].contains("lists 1 commands for 2 `commands`"), "{p:?}");
    let p = problems(json!({"rollback": {"zfs set compression=on tank": "zfs set compression=off tank"}}));
    assert!(p.len() == 1 && p[0].contains("not one of the step's commands"), "{p:?}");
    let p = problems(json!({"irreversible": ["zpool remove tank nvme1n1"]}));
    assert!(p.len() == 1 && p[0].contains("`irreversible` names `zpool remove tank nvme1n1`"), "{p:?}");
    assert!(problems(json!({"irreversible": true, "rollback": [null, "zfs set compression=off tank"]})).is_empty());

    let bad = commands.check(&node_step("pve1", &["zpool destroy tank".into(), "zpool add tank sdb; reboot".into()], json!({})));
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(bad[0].starts_with("commands[0]: `zpool destroy tank` is not allowed") && bad[0].contains("`zpool add`"), "{bad:?}");
    assert!(bad[1].contains("`;`"), "{bad:?}");
    let no_node = commands.check(&step("proxmox-task", json!({"commands": cmds})));
    assert!(no_node.iter().any(|p| p.starts_with("`node` must name the node")), "{no_node:?}");
}

#[tokio::test]
async fn verify_knows_nothing_ran_when_there_was_nothing_to_run_only() {
    let commands = NodeCommands::with_allowlist(CommandRunner::default(), test_allowlist());
    let (empty, _rx) = cx(step("proxmox-task", json!({"node": "localhost", "commands": []})));
    assert_eq!(commands.verify(&empty, &Value::Null).await, Verified::NotDone);

    // An execute interrupted (its future dropped) while a command runs: verify names it.
    let slow = NodeCommands::with_allowlist(
        CommandRunner::default(),
        test_allowlist().with(AllowedCommand::new("sleep")),
    );
    let work = tempfile::tempdir().expect("tempdir");
    let d = path(work.path(), "d");
    let (cx, _rx) = cx(node_step("localhost", &[format!("mkdir {d}"), "sleep 30".into()], json!({})));
    let interrupted = tokio::time::timeout(Duration::from_millis(500), slow.execute(&cx, &Value::Null)).await;
    assert!(interrupted.is_err(), "execute was still running");
    match slow.verify(&cx, &Value::Null).await {
        Verified::Unknown(text) => assert!(text.contains(&format!("`mkdir {d}` ran; check on localhost whether `sleep 30` ran")), "{text}"),
        other => panic!("expected Unknown, got {other:?}"),
    }
}
