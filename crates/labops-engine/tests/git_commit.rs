//! The `git-commit` executor against real temporary git repositories: one commit per step with
//! its trailer, found again by `verify` and by a repeated `execute`; only the listed files are
//! committed; reverts that happen once; paths and repositories a workflow may not use.

use std::path::{Path, PathBuf};
use std::process::Command;

use labops_engine::runs::git::{GitCommit, GitSettings};
use labops_engine::runs::{Compensation, Executor, RunStep, Started, StepCx, Verified};
use serde_json::{Value, json};

/// Runs git in `dir` and returns its trimmed stdout, failing the test when git fails.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=Tester", "-c", "user.email=tester@example.org"])
        .args(args)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A repository on `main` with one commit holding `docs/storage.md`, `old.txt` and `other.txt`.
fn repo() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("homelab");
    std::fs::create_dir_all(dir.join("docs")).unwrap();
    git(&dir, &["init", "-q", "-b", "main"]);
    std::fs::write(dir.join("docs/storage.md"), "# Storage\n").unwrap();
    std::fs::write(dir.join("old.txt"), "obsolete\n").unwrap();
    std::fs::write(dir.join("other.txt"), "untouched\n").unwrap();
    git(&dir, &["add", "."]);
    git(&dir, &["commit", "-q", "-m", "initial"]);
    (tmp, dir)
}

fn commits(dir: &Path) -> usize {
    git(dir, &["rev-list", "--count", "HEAD"]).parse().unwrap()
}

fn step(fields: Value) -> RunStep {
    RunStep {
        name: "documentation-update".into(),
        step_type: "git-commit".into(),
        depends_on: Vec::new(),
        waits_for_human: false,
        mutates: true,
        fields: serde_json::from_value(fields).unwrap(),
    }
}

fn cx(fields: Value) -> StepCx {
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    StepCx::new(7, step(fields), 1, tx)
}

fn executor(dir: &Path) -> GitCommit {
    GitCommit::new(GitSettings { repository: dir.to_path_buf(), author_name: "labops".into(), author_email: "labops@lab.example".into() })
}

fn done(s: Started) -> Value {
    match s {
        Started::Done(v) => v,
        other => panic!("expected Done, got {other:?}"),
    }
}

#[tokio::test]
async fn commits_the_listed_files_once_with_the_trailer() {
    let (_tmp, dir) = repo();
    let exec = executor(&dir);
    let cx = cx(json!({
        "files_to_update": ["docs/storage.md", "docs/new.md", "old.txt"],
        "message": "Storage grew to 4 TiB",
    }));
    assert_eq!(exec.check(&cx.step), Vec::<String>::new());
    assert_eq!(exec.targets(&cx.step), vec![format!("git:{}", dir.canonicalize().unwrap().display())]);

    std::fs::write(dir.join("docs/storage.md"), "# Storage\n4 TiB\n").unwrap();
    std::fs::write(dir.join("docs/new.md"), "new\n").unwrap();
    std::fs::remove_file(dir.join("old.txt")).unwrap();
    // A human's staged change to another file must stay out of the commit, and staged.
    std::fs::write(dir.join("other.txt"), "work in progress\n").unwrap();
    git(&dir, &["add", "other.txt"]);

    let intent = exec.prepare(&cx).await.unwrap();
    assert_eq!(intent["branch"], json!("main"));
    assert_eq!(intent["head"], json!(git(&dir, &["rev-parse", "HEAD"])));
    assert_eq!(exec.verify(&cx, &intent).await, Verified::NotDone, "nothing committed yet");

    let outcome = done(exec.execute(&cx, &intent).await.unwrap());
    let sha = outcome["commit"].as_str().unwrap().to_string();
    assert_eq!(sha, git(&dir, &["rev-parse", "HEAD"]));
    assert_eq!(commits(&dir), 2);
    assert_eq!(git(&dir, &["log", "-1", "--format=%B"]), "Storage grew to 4 TiB\n\nLabops-Step: run-7/documentation-update");
    assert_eq!(git(&dir, &["log", "-1", "--format=%an <%ae>"]), "labops <labops@lab.example>");
    assert_eq!(git(&dir, &["show", "--name-status", "--format=", "HEAD"]), "A\tdocs/new.md\nM\tdocs/storage.md\nD\told.txt");
    assert_eq!(git(&dir, &["diff", "--cached", "--name-only"]), "other.txt", "the human's staged change is still staged");

    // verify finds the commit by its trailer; a repeated execute does not commit again.
    assert_eq!(exec.verify(&cx, &intent).await, Verified::Done(outcome.clone()));
    std::fs::write(dir.join("docs/storage.md"), "# Storage\n4 TiB, edited again\n").unwrap();
    let again = done(exec.execute(&cx, &intent).await.unwrap());
    assert_eq!(again["commit"], json!(sha));
    assert_eq!(commits(&dir), 2);

    // Another step of the same run has its own key: verify does not mistake this commit for it.
    let other = {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        StepCx::new(7, RunStep { name: "documentation".into(), ..cx.step.clone() }, 1, tx)
    };
    assert_eq!(exec.verify(&other, &intent).await, Verified::NotDone);
}

#[tokio::test]
async fn a_retry_after_a_commit_finds_it_instead_of_committing_again() {
    let (_tmp, dir) = repo();
    let before = git(&dir, &["rev-parse", "HEAD"]);
    let exec = executor(&dir);
    let first = cx(json!({"files_to_update": ["docs/storage.md"]}));
    std::fs::write(dir.join("docs/storage.md"), "changed\n").unwrap();
    let intent = exec.prepare(&first).await.unwrap();
    let sha = done(exec.execute(&first, &intent).await.unwrap())["commit"].clone();

    // Attempt 1 committed, then failed (say, a post-commit hook timed out): the driver retries,
    // and prepares again.
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let retry = StepCx::new(7, first.step.clone(), 2, tx);
    let intent = exec.prepare(&retry).await.unwrap();
    assert_eq!(intent["head"], json!(before), "the HEAD before the step's commit");
    assert!(matches!(exec.verify(&retry, &intent).await, Verified::Done(v) if v["commit"] == sha));
    assert_eq!(done(exec.execute(&retry, &intent).await.unwrap())["commit"], sha);
    assert_eq!(commits(&dir), 2);
}

#[tokio::test]
async fn unchanged_files_commit_nothing_and_need_no_undo() {
    let (_tmp, dir) = repo();
    let exec = executor(&dir);
    let cx = cx(json!({"files_to_update": "docs/storage.md"}));
    let intent = exec.prepare(&cx).await.unwrap();
    let outcome = done(exec.execute(&cx, &intent).await.unwrap());
    assert_eq!(outcome["commit"], Value::Null);
    assert_eq!(outcome["reason"], json!("nothing to commit"));
    assert_eq!(commits(&dir), 1);
    assert_eq!(exec.compensate(&cx, &intent, &outcome).await.unwrap(), Compensation::NothingToUndo);
}

#[tokio::test]
async fn the_default_message_names_the_run_and_step() {
    let (_tmp, dir) = repo();
    let exec = executor(&dir);
    let cx = cx(json!({"files_to_update": ["docs/storage.md"]}));
    std::fs::write(dir.join("docs/storage.md"), "changed\n").unwrap();
    let intent = exec.prepare(&cx).await.unwrap();
    done(exec.execute(&cx, &intent).await.unwrap());
    assert_eq!(
        git(&dir, &["log", "-1", "--format=%B"]),
        "labops run 7, step documentation-update\n\nLabops-Step: run-7/documentation-update"
    );
}

#[tokio::test]
async fn compensation_reverts_once() {
    let (_tmp, dir) = repo();
    let exec = executor(&dir);
    let cx = cx(json!({"files_to_update": ["docs/storage.md"], "branch": "main"}));
    std::fs::write(dir.join("docs/storage.md"), "# Storage\n4 TiB\n").unwrap();
    let intent = exec.prepare(&cx).await.unwrap();
    let outcome = done(exec.execute(&cx, &intent).await.unwrap());
    let sha = outcome["commit"].as_str().unwrap().to_string();

    let undone = exec.compensate(&cx, &intent, &outcome).await.unwrap();
    let revert = git(&dir, &["rev-parse", "HEAD"]);
    assert_eq!(undone, Compensation::Undone(format!("reverted {sha} with {revert}")));
    assert_eq!(std::fs::read_to_string(dir.join("docs/storage.md")).unwrap(), "# Storage\n");
    let body = git(&dir, &["log", "-1", "--format=%B"]);
    assert!(body.contains(&format!("This reverts commit {sha}.")), "{body}");
    assert!(body.ends_with("Labops-Revert: run-7/documentation-update"), "{body}");
    assert_eq!(commits(&dir), 3);

    // Again (a crash after the revert): the same answer, no second revert.
    assert_eq!(exec.compensate(&cx, &intent, &outcome).await.unwrap(), undone);
    assert_eq!(commits(&dir), 3);
    // The revert does not make verify think the step's commit is gone or doubled.
    assert_eq!(exec.verify(&cx, &intent).await, Verified::Done(outcome));
}

#[tokio::test]
async fn a_compensation_interrupted_before_its_commit_is_finished() {
    let (_tmp, dir) = repo();
    let exec = executor(&dir);
    let cx = cx(json!({"files_to_update": ["docs/storage.md"]}));
    std::fs::write(dir.join("docs/storage.md"), "changed\n").unwrap();
    let intent = exec.prepare(&cx).await.unwrap();
    let outcome = done(exec.execute(&cx, &intent).await.unwrap());
    let sha = outcome["commit"].as_str().unwrap().to_string();
    // What a crash between `git revert --no-commit` and `git commit` leaves behind.
    git(&dir, &["revert", "--no-commit", &sha]);

    let undone = exec.compensate(&cx, &intent, &outcome).await.unwrap();
    assert!(matches!(&undone, Compensation::Undone(m) if m.starts_with(&format!("reverted {sha} with "))), "{undone:?}");
    assert!(git(&dir, &["log", "-1", "--format=%B"]).ends_with("Labops-Revert: run-7/documentation-update"));
    assert_eq!(git(&dir, &["status", "--porcelain"]), "", "nothing left staged");
    assert_eq!(commits(&dir), 3);
}

#[tokio::test]
async fn a_step_on_another_branch_is_refused_with_a_sentence() {
    let (_tmp, dir) = repo();
    let exec = executor(&dir);
    let cx = cx(json!({"files_to_update": ["docs/storage.md"], "branch": "release"}));
    assert_eq!(exec.check(&cx.step), Vec::<String>::new(), "a valid branch name; the checkout is checked at run time");
    let err = exec.prepare(&cx).await.unwrap_err();
    assert!(!err.retryable);
    assert!(
        err.message.starts_with("the step commits on branch `release`, but ")
            && err.message.ends_with("has `main` checked out; labops does not switch branches in a working tree: check out `release` there, then retry"),
        "{}",
        err.message
    );
    std::fs::write(dir.join("docs/storage.md"), "changed\n").unwrap();
    assert!(exec.execute(&cx, &Value::Null).await.is_err());
    assert_eq!(commits(&dir), 1);
}

#[tokio::test]
async fn a_missing_untracked_file_fails_the_step() {
    let (_tmp, dir) = repo();
    let exec = executor(&dir);
    let cx = cx(json!({"files_to_update": ["docs/storage.md", "docs/typo.md"]}));
    std::fs::write(dir.join("docs/storage.md"), "changed\n").unwrap();
    let err = exec.execute(&cx, &Value::Null).await.unwrap_err();
    assert!(err.message.starts_with("\"docs/typo.md\" does not exist in "), "{}", err.message);
    assert!(!err.retryable);
    assert_eq!(commits(&dir), 1);
}

#[test]
fn check_rejects_paths_and_repositories_outside_the_configured_one() {
    let (tmp, dir) = repo();
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let exec = executor(&dir);
    let problems = exec.check(&step(json!({
        "files_to_update": ["/etc/passwd", "docs/../../secrets.txt", ".git/config", "docs/ok.md"],
        "repository": elsewhere,
        "branch": "bad name",
    })));
    assert_eq!(problems.len(), 5, "{problems:#?}");
    assert!(problems[0].contains("\"/etc/passwd\" in `files_to_update` is absolute"), "{}", problems[0]);
    assert!(problems[1].contains("uses `..`"), "{}", problems[1]);
    assert!(problems[2].contains("inside `.git`"), "{}", problems[2]);
    assert!(problems[3].contains("is outside the repository labops may commit to"), "{}", problems[3]);
    assert_eq!(problems[4], "`branch` \"bad name\" is not a valid git branch name");

    // `..` in `repository` that climbs out is refused too; a directory inside is fine.
    assert_eq!(exec.check(&step(json!({"files_to_update": ["x"], "repository": "../elsewhere"}))).len(), 1);
    assert_eq!(exec.check(&step(json!({"files_to_update": ["storage.md"], "repository": "docs"}))), Vec::<String>::new());
    let empty = exec.check(&step(json!({"files_to_update": []})));
    assert_eq!(empty, vec!["`files_to_update` is empty; list the files to commit, relative to the repository"]);
}

#[tokio::test]
async fn a_repository_inside_the_configured_one_commits_paths_relative_to_it() {
    let (_tmp, dir) = repo();
    let exec = executor(&dir);
    let cx = cx(json!({"files_to_update": ["storage.md"], "repository": "docs"}));
    std::fs::write(dir.join("docs/storage.md"), "changed\n").unwrap();
    let intent = exec.prepare(&cx).await.unwrap();
    done(exec.execute(&cx, &intent).await.unwrap());
    assert_eq!(git(&dir, &["show", "--name-only", "--format=", "HEAD"]), "docs/storage.md");
}
