//! `git-commit`: commits the files a workflow changed, with the real `git` binary, in the one
//! repository labops is configured with ([`GitSettings::repository`]).
//!
//! - **Where.** The configured repository, or the step's `repository`: a directory that must be
//!   that repository or inside it (a relative `repository` is taken from the repository's root).
//!   A workflow cannot point git anywhere else.
//! - **What.** `files_to_update`: paths relative to that directory, without `..` or `.git`,
//!   never absolute. Each must exist or be tracked by git (a deletion). Only these paths are
//!   staged and committed (`git add -A -- FILES`, `git commit -- FILES`): changes a human staged
//!   to other files stay staged and out of the commit. When they hold no change the step
//!   succeeds with `{"commit": null, "reason": "nothing to commit"}`. Pathspecs are literal
//!   (`GIT_LITERAL_PATHSPECS`), so `*` or `:/` mean files of that name.
//! - **Branch.** `branch`, when given, must be the branch checked out: the step refuses to run
//!   on another branch rather than switch a working tree someone may be using.
//! - **Message.** The step's `message`, or `labops run N, step NAME`, always ending with the
//!   trailer `Labops-Step: run-N/NAME` (the step's idempotency key). [`Executor::verify`] and a
//!   repeated `execute` look for it on the branch since the HEAD recorded by `prepare`, so a step
//!   never commits twice. `prepare` for a retry (attempt 2 on) that finds the trailer already
//!   on the branch records the HEAD before that commit, so the retry finds it too. (Looking only
//!   after the recorded HEAD keeps an old commit of a same-numbered run, from a previous labops
//!   database, from passing for this one.)
//! - **Undo.** `git revert` of the commit, committed with the trailer `Labops-Revert: run-N/NAME`;
//!   a second compensation finds that commit and does nothing more. A revert staged by a
//!   compensation that crashed before committing is committed on the next try.
//!
//! Every git command runs with a timeout, without a terminal prompt, with labops' author from
//! the settings, and with `GIT_DIR`-style variables from labops' own environment removed.

use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use labops_core::workflow::{StepType, step_type};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::executor::{Compensation, Executor, RunStep, Started, StepCx, StepError, Verified};

/// The trailer that names the step a commit was made by: `Labops-Step: run-N/STEP`.
pub const STEP_TRAILER: &str = "Labops-Step";

/// The trailer that names the step whose commit a revert undoes: `Labops-Revert: run-N/STEP`.
pub const REVERT_TRAILER: &str = "Labops-Revert";

/// How long one git command may take before the attempt fails (and may be retried).
const GIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Where `git-commit` steps commit, and as whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitSettings {
    /// The work tree of the only repository workflows may commit to. A step's `repository`,
    /// when given, must be this directory or a directory inside it.
    pub repository: PathBuf,
    /// Author and committer name of labops' commits.
    #[serde(default = "default_author_name")]
    pub author_name: String,
    /// Author and committer email of labops' commits.
    #[serde(default = "default_author_email")]
    pub author_email: String,
}

fn default_author_name() -> String {
    "labops".to_string()
}

fn default_author_email() -> String {
    "labops@localhost".to_string()
}

impl GitSettings {
    /// Settings for `repository` with the default author (`labops <labops@localhost>`).
    pub fn new(repository: impl Into<PathBuf>) -> Self {
        Self { repository: repository.into(), author_name: default_author_name(), author_email: default_author_email() }
    }
}

/// The `git-commit` executor.
#[derive(Debug, Clone)]
pub struct GitCommit {
    settings: GitSettings,
    timeout: Duration,
}

impl GitCommit {
    /// An executor committing to the repository of `settings`.
    pub fn new(settings: GitSettings) -> Self {
        Self { settings, timeout: GIT_TIMEOUT }
    }

    /// The configured repository, resolved (symlinks and `.` removed).
    fn root(&self) -> Result<PathBuf, String> {
        std::fs::canonicalize(&self.settings.repository).map_err(|e| {
            format!(
                "the configured git repository {} cannot be used ({e}); check the git repository setting",
                self.settings.repository.display()
            )
        })
    }

    /// The directory the step commits from: the configured repository or the step's
    /// `repository` inside it.
    fn workdir(&self, step: &RunStep) -> Result<PathBuf, String> {
        let root = self.root()?;
        let Some(field) = step.fields.get("repository") else { return Ok(root) };
        let Some(given) = field.as_str() else {
            return Err(format!("`repository` must be a directory path, not {field}"));
        };
        let path = Path::new(given);
        let joined = if path.is_absolute() { path.to_path_buf() } else { root.join(path) };
        let dir = std::fs::canonicalize(&joined)
            .map_err(|e| format!("`repository` {given:?} cannot be used ({e}); name the configured repository {} or a directory in it", root.display()))?;
        if dir.starts_with(&root) {
            Ok(dir)
        } else {
            Err(format!(
                "`repository` {given:?} is outside the repository labops may commit to ({}); workflows can only commit there",
                root.display()
            ))
        }
    }

    /// Runs git in `dir`, feeding `stdin` when given, within the timeout.
    async fn git(&self, dir: &Path, args: &[&str], stdin: Option<&str>) -> Result<GitOutput, StepError> {
        let mut cmd = Command::new("git");
        cmd.current_dir(dir)
            .arg("-c")
            .arg(format!("user.name={}", self.settings.author_name))
            .arg("-c")
            .arg(format!("user.email={}", self.settings.author_email))
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_LITERAL_PATHSPECS", "1")
            .env("LC_ALL", "C")
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for var in ["GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR", "GIT_NAMESPACE"] {
            cmd.env_remove(var);
        }
        let shown = format!("git {}", args.join(" "));
        let mut child = cmd.spawn().map_err(|e| StepError::fatal(format!("cannot run `{shown}` ({e}); is git installed and on PATH?")))?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            let text = text.to_string();
            // Written from a task so a child that does not read cannot block us past the timeout.
            tokio::spawn(async move {
                let _ = pipe.write_all(text.as_bytes()).await;
            });
        }
        let out = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return Err(StepError::transient(format!("`{shown}` in {} failed to run: {e}", dir.display()))),
            Err(_) => {
                return Err(StepError::transient(format!(
                    "`{shown}` in {} did not finish within {}s (a hook or a lock?); it was stopped",
                    dir.display(),
                    self.timeout.as_secs()
                )));
            }
        };
        Ok(GitOutput {
            shown,
            dir: dir.to_path_buf(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs git and requires success.
    async fn git_ok(&self, dir: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, StepError> {
        self.git(dir, args, stdin).await?.ok()
    }

    /// The checked-out branch; `None` for a detached HEAD.
    async fn current_branch(&self, dir: &Path) -> Result<Option<String>, StepError> {
        let out = self.git(dir, &["symbolic-ref", "--quiet", "--short", "HEAD"], None).await?;
        match out.code {
            Some(0) => Ok(Some(out.stdout.trim().to_string())),
            Some(1) => Ok(None),
            _ => Err(out.failure()),
        }
    }

    /// HEAD's commit; `None` on a branch without commits yet.
    async fn head(&self, dir: &Path) -> Result<Option<String>, StepError> {
        self.rev(dir, "HEAD").await
    }

    async fn rev(&self, dir: &Path, rev: &str) -> Result<Option<String>, StepError> {
        let spec = format!("{rev}^{{commit}}");
        let out = self.git(dir, &["rev-parse", "--verify", "--quiet", &spec], None).await?;
        match out.code {
            Some(0) => Ok(Some(out.stdout.trim().to_string())),
            Some(1) => Ok(None),
            _ => Err(out.failure()),
        }
    }

    /// The branch the step may commit on: the checked-out one, which must be the step's
    /// `branch` when it names one.
    async fn checked_out_branch(&self, dir: &Path, step: &RunStep) -> Result<String, StepError> {
        let current = self.current_branch(dir).await?;
        let Some(current) = current else {
            return Err(StepError::fatal(format!(
                "{} has a detached HEAD; check out the branch to commit on, then retry",
                dir.display()
            )));
        };
        if let Some(want) = step.str_field("branch")
            && want != current
        {
            return Err(StepError::fatal(format!(
                "the step commits on branch `{want}`, but {} has `{current}` checked out; labops does not switch branches \
                 in a working tree: check out `{want}` there, then retry",
                dir.display()
            )));
        }
        Ok(current)
    }

    /// The newest commit on `rev` (after `since`, when given) whose message has the line
    /// `trailer` exactly.
    async fn find_trailer(&self, dir: &Path, rev: &str, since: Option<&str>, trailer: &str) -> Result<Option<String>, StepError> {
        if self.rev(dir, rev).await?.is_none() {
            return Ok(None); // no commits yet
        }
        let range = match since {
            Some(s) if self.rev(dir, s).await?.is_some() => format!("{s}..{rev}"),
            _ => rev.to_string(),
        };
        let grep = format!("--grep={trailer}");
        let out = self.git_ok(dir, &["log", "--fixed-strings", &grep, "--format=%H%x00%B%x1e", &range, "--"], None).await?;
        for record in out.split('\u{1e}') {
            let Some((sha, body)) = record.trim_start().split_once('\0') else { continue };
            if body.lines().any(|l| l.trim_end() == trailer) {
                return Ok(Some(sha.to_string()));
            }
        }
        Ok(None)
    }

    /// What `execute` and `verify` report for a commit.
    fn outcome(dir: &Path, branch: &str, commit: &str, step: &RunStep) -> Value {
        json!({"commit": commit, "branch": branch, "repository": dir, "files": step.list_field("files_to_update")})
    }
}

/// What one git command did.
struct GitOutput {
    shown: String,
    dir: PathBuf,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl GitOutput {
    fn ok(self) -> Result<String, StepError> {
        if self.code == Some(0) { Ok(self.stdout) } else { Err(self.failure()) }
    }

    /// The failure as a step error: a lock held by another git process may clear, the rest
    /// will not.
    fn failure(&self) -> StepError {
        let detail = self.stderr.trim();
        let detail = if detail.is_empty() { self.stdout.trim() } else { detail };
        let code = self.code.map_or_else(|| "a signal".to_string(), |c| format!("exit code {c}"));
        let message = format!("`{}` in {} failed ({code}): {detail}", self.shown, self.dir.display());
        if detail.contains(".lock") { StepError::transient(message) } else { StepError::fatal(message) }
    }
}

/// Why a path may not be committed, if it may not.
fn bad_path(p: &str) -> Option<String> {
    if p.trim().is_empty() {
        return Some("an empty path in `files_to_update`; list files relative to the repository".to_string());
    }
    if p.contains(['\0', '\n', '\r']) {
        return Some(format!("{p:?} in `files_to_update` contains a control character; list plain file paths"));
    }
    let path = Path::new(p);
    if path.is_absolute() || p.starts_with(['/', '\\']) || path.components().any(|c| matches!(c, Component::Prefix(_))) {
        return Some(format!("{p:?} in `files_to_update` is absolute; write it relative to the repository"));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Some(format!("{p:?} in `files_to_update` uses `..`; paths must stay inside the repository"));
    }
    if path.components().any(|c| c.as_os_str() == ".git") {
        return Some(format!("{p:?} in `files_to_update` is inside `.git`; commit work-tree files only"));
    }
    None
}

/// Why a branch name is not one git accepts, if it is not (the common rules of
/// `git check-ref-format`).
fn bad_branch(b: &str) -> Option<String> {
    let bad = b.is_empty()
        || b.starts_with(['-', '/', '.'])
        || b.ends_with(['/', '.'])
        || b.ends_with(".lock")
        || b.contains("..")
        || b.contains("@{")
        || b.contains("//")
        || b.chars().any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c));
    bad.then(|| format!("`branch` {b:?} is not a valid git branch name"))
}

#[async_trait]
impl Executor for GitCommit {
    fn step_type(&self) -> &'static StepType {
        step_type("git-commit").expect("git-commit is a registered step type")
    }

    fn check(&self, step: &RunStep) -> Vec<String> {
        let mut problems = Vec::new();
        let files = step.list_field("files_to_update");
        if files.is_empty() {
            problems.push("`files_to_update` is empty; list the files to commit, relative to the repository".to_string());
        }
        problems.extend(files.iter().filter_map(|f| bad_path(f)));
        if let Err(e) = self.workdir(step) {
            problems.push(e);
        }
        match step.fields.get("branch") {
            None => {}
            Some(Value::String(b)) => problems.extend(bad_branch(b)),
            Some(other) => problems.push(format!("`branch` must be a branch name, not {other}")),
        }
        if let Some(m) = step.fields.get("message").filter(|m| !m.is_string()) {
            problems.push(format!("`message` must be text, not {m}"));
        }
        problems
    }

    fn targets(&self, _step: &RunStep) -> Vec<String> {
        let root = self.root().unwrap_or_else(|_| self.settings.repository.clone());
        vec![format!("git:{}", root.display())]
    }

    async fn prepare(&self, cx: &StepCx) -> Result<Value, StepError> {
        let dir = self.workdir(&cx.step).map_err(StepError::fatal)?;
        let branch = self.checked_out_branch(&dir, &cx.step).await?;
        let mut head = self.head(&dir).await?;
        // A retry prepares again: when an earlier attempt committed before failing, the HEAD
        // before the step is the parent of that commit, so `execute` and `verify` still find it.
        if cx.attempt > 1 {
            let trailer = format!("{STEP_TRAILER}: {}", cx.idem_key);
            if let Some(earlier) = self.find_trailer(&dir, "HEAD", None, &trailer).await? {
                head = self.rev(&dir, &format!("{earlier}^")).await?;
            }
        }
        Ok(json!({"repository": dir, "branch": branch, "head": head}))
    }

    async fn execute(&self, cx: &StepCx, intent: &Value) -> Result<Started, StepError> {
        let step = &cx.step;
        if let Some(problem) = self.check(step).into_iter().next() {
            return Err(StepError::fatal(problem));
        }
        let dir = self.workdir(step).map_err(StepError::fatal)?;
        let branch = self.checked_out_branch(&dir, step).await?;
        let trailer = format!("{STEP_TRAILER}: {}", cx.idem_key);
        let since = intent.get("head").and_then(Value::as_str);
        // An earlier attempt may have committed already: never commit twice.
        if let Some(sha) = self.find_trailer(&dir, "HEAD", since, &trailer).await? {
            return Ok(Started::Done(Self::outcome(&dir, &branch, &sha, step)));
        }
        let files = step.list_field("files_to_update");
        for f in &files {
            let exists = dir.join(f).symlink_metadata().is_ok();
            if !exists {
                let tracked = self.git(&dir, &["ls-files", "--error-unmatch", "--", f], None).await?.code == Some(0);
                if !tracked {
                    return Err(StepError::fatal(format!(
                        "{f:?} does not exist in {} and git does not track it, so there is nothing to commit for it; \
                         check the path in `files_to_update`",
                        dir.display()
                    )));
                }
            }
        }
        let paths: Vec<&str> = files.iter().map(String::as_str).collect();
        let mut add = vec!["add", "-A", "--"];
        add.extend(&paths);
        self.git_ok(&dir, &add, None).await?;
        let mut diff = vec!["diff", "--cached", "--quiet", "--"];
        diff.extend(&paths);
        let staged = self.git(&dir, &diff, None).await?;
        match staged.code {
            Some(0) => {
                cx.progress(Some(1.0), format!("nothing to commit: {} unchanged", files.join(", ")));
                return Ok(Started::Done(json!({"commit": null, "reason": "nothing to commit", "branch": branch, "files": files})));
            }
            Some(1) => {}
            _ => return Err(staged.failure()),
        }
        let body = step
            .str_field("message")
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_owned)
            .unwrap_or_else(|| format!("labops run {}, step {}", cx.run_id, step.name));
        let message = format!("{body}\n\n{trailer}\n");
        let mut commit = vec!["commit", "--quiet", "--file=-", "--"];
        commit.extend(&paths);
        self.git_ok(&dir, &commit, Some(&message)).await?;
        let sha = self.head(&dir).await?.ok_or_else(|| StepError::fatal(format!("{} has no HEAD after committing", dir.display())))?;
        cx.progress(Some(1.0), format!("committed {} on {branch}: {sha}", files.join(", ")));
        Ok(Started::Done(Self::outcome(&dir, &branch, &sha, step)))
    }

    async fn verify(&self, cx: &StepCx, intent: &Value) -> Verified {
        let dir = match intent.get("repository").and_then(Value::as_str) {
            Some(d) => PathBuf::from(d),
            None => match self.workdir(&cx.step) {
                Ok(d) => d,
                Err(e) => return Verified::Unknown(e),
            },
        };
        let branch = intent.get("branch").and_then(Value::as_str).unwrap_or("HEAD");
        let rev = if branch == "HEAD" { "HEAD".to_string() } else { format!("refs/heads/{branch}") };
        let trailer = format!("{STEP_TRAILER}: {}", cx.idem_key);
        match self.find_trailer(&dir, &rev, intent.get("head").and_then(Value::as_str), &trailer).await {
            Ok(Some(sha)) => Verified::Done(Self::outcome(&dir, branch, &sha, &cx.step)),
            Ok(None) => Verified::NotDone,
            Err(e) => Verified::Unknown(format!("cannot read the git log to tell whether the commit happened: {e}")),
        }
    }

    async fn compensate(&self, cx: &StepCx, intent: &Value, outcome: &Value) -> Result<Compensation, StepError> {
        let Some(sha) = outcome.get("commit").and_then(Value::as_str) else {
            return Ok(Compensation::NothingToUndo);
        };
        if sha.len() < 7 || !sha.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(StepError::fatal(format!("the step's outcome names commit {sha:?}, which is not a commit id; revert it by hand")));
        }
        let dir = match outcome.get("repository").or_else(|| intent.get("repository")).and_then(Value::as_str) {
            Some(d) => PathBuf::from(d),
            None => self.workdir(&cx.step).map_err(StepError::fatal)?,
        };
        let branch = outcome.get("branch").and_then(Value::as_str).unwrap_or_default();
        let current = self.current_branch(&dir).await?;
        if current.as_deref() != Some(branch) {
            return Err(StepError::fatal(format!(
                "{sha} was committed on branch `{branch}`, but {} has {} checked out; check out `{branch}` there, then retry the rollback",
                dir.display(),
                current.map_or_else(|| "a detached HEAD".to_string(), |c| format!("`{c}`"))
            )));
        }
        let trailer = format!("{REVERT_TRAILER}: {}", cx.idem_key);
        if let Some(done) = self.find_trailer(&dir, "HEAD", Some(sha), &trailer).await? {
            return Ok(Compensation::Undone(format!("reverted {sha} with {done}")));
        }
        // A compensation that crashed between `revert --no-commit` and `commit` left REVERT_HEAD.
        let resuming = match self.rev(&dir, "REVERT_HEAD").await? {
            Some(r) if r == sha => true,
            Some(other) => {
                return Err(StepError::fatal(format!(
                    "a revert of {other} is in progress in {}; finish it or run `git revert --abort` there, then retry the rollback",
                    dir.display()
                )));
            }
            None => false,
        };
        if !resuming {
            let ancestor = self.git(&dir, &["merge-base", "--is-ancestor", sha, "HEAD"], None).await?;
            match ancestor.code {
                Some(0) => {}
                Some(1) => {
                    return Ok(Compensation::CannotUndo(format!(
                        "commit {sha} is no longer on branch `{branch}` (was the history rewritten?); there is nothing to revert there"
                    )));
                }
                _ => return Err(ancestor.failure()),
            }
            let staged = self.git(&dir, &["diff", "--cached", "--quiet"], None).await?;
            if staged.code != Some(0) {
                return Err(StepError::fatal(format!(
                    "{} has staged changes that a revert commit would include; commit or unstage them, then retry the rollback",
                    dir.display()
                )));
            }
            let revert = self.git(&dir, &["revert", "--no-commit", sha], None).await?;
            if revert.code != Some(0) {
                let _ = self.git(&dir, &["revert", "--abort"], None).await;
                let e = revert.failure();
                return Err(StepError { message: format!("{}; revert {sha} by hand, then mark the rollback done", e.message), ..e });
            }
        }
        let staged = self.git(&dir, &["diff", "--cached", "--quiet"], None).await?;
        if staged.code == Some(0) {
            let _ = self.git(&dir, &["revert", "--quit"], None).await;
            return Ok(Compensation::Undone(format!("the changes of {sha} were already undone on `{branch}`; no revert commit was needed")));
        }
        let subject = self.git_ok(&dir, &["log", "-1", "--format=%s", sha], None).await?;
        let message = format!("Revert \"{}\"\n\nThis reverts commit {sha}.\n\n{trailer}\n", subject.trim());
        self.git_ok(&dir, &["commit", "--quiet", "--file=-"], Some(&message)).await?;
        let new = self.head(&dir).await?.unwrap_or_default();
        cx.progress(Some(1.0), format!("reverted {sha} with {new}"));
        Ok(Compensation::Undone(format!("reverted {sha} with {new}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_stay_relative_and_inside() {
        assert_eq!(bad_path("docs/storage.md"), None);
        assert_eq!(bad_path("./INFRASTRUCTURE.md"), None);
        assert!(bad_path("/etc/passwd").unwrap().contains("is absolute"));
        assert!(bad_path("docs/../../x").unwrap().contains("uses `..`"));
        assert!(bad_path(".git/config").unwrap().contains("inside `.git`"));
        assert!(bad_path(" ").unwrap().contains("empty path"));
    }

    #[test]
    fn branch_names_follow_git_rules() {
        assert_eq!(bad_branch("main"), None);
        assert_eq!(bad_branch("feature/storage-2"), None);
        for b in ["", "-x", "a..b", "a b", "x.lock", "a:b", "refs/", "@{-1}x"] {
            assert!(bad_branch(b).is_some(), "{b:?}");
        }
    }
}
