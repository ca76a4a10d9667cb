//! Where a change's issue lives. One trait; the embedded local forge is the default, GitHub the
//! other.
//!
//! The local forge numbers issues in the store and mirrors each one as markdown under
//! `issues/N.md` in the GitOps repository, so the issues travel with the repository. As on
//! GitHub, an issue closes when a commit whose message says `fixes #N` (or closes/resolves)
//! reaches the branch.
//!
//! [`GithubForge`] keeps the issues in a GitHub repository through
//! [`labops_integrations::github`]: the issue opens with the analysis, progress arrives as
//! comments and labels, and the commit that lands closes it.

use std::path::PathBuf;
use std::sync::LazyLock;

use async_trait::async_trait;
use labops_integrations::github;
use labops_store::Store;
use labops_store::changes::ForgeIssue;
use regex::Regex;

use crate::lab::now_ms;

/// A forge operation that failed; the message says what to check.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ForgeError(pub String);

impl From<labops_store::Error> for ForgeError {
    fn from(e: labops_store::Error) -> Self {
        ForgeError(e.to_string())
    }
}

/// An issue tracker: GitHub, or the embedded local forge.
#[async_trait]
pub trait Forge: Send + Sync {
    /// `local` or `github`.
    fn kind(&self) -> &'static str;
    /// Opens an issue; returns its number.
    async fn open_issue(&self, title: &str, body: &str, labels: &[String]) -> Result<u64, ForgeError>;
    /// Comments on an issue.
    async fn comment(&self, issue: u64, body: &str) -> Result<(), ForgeError>;
    /// Adds labels.
    async fn label(&self, issue: u64, labels: &[String]) -> Result<(), ForgeError>;
    /// A commit reached the branch: closes every open issue its message closes (`fixes #N`).
    /// Returns the issues it closed.
    async fn commit_landed(&self, sha: &str, message: &str) -> Result<Vec<u64>, ForgeError>;
    /// The issue's state: `open` or `closed`.
    async fn state(&self, issue: u64) -> Result<String, ForgeError>;
    /// Where a human reads the issue.
    fn link(&self, issue: u64) -> String;
}

static CLOSES: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\b(?:close[sd]?|fix(?:e[sd])?|resolve[sd]?):?\s+#(\d+)\b").expect("static regex"));

/// The issue numbers a commit message closes, as GitHub reads them: `fixes #12`, `Closes #3`,
/// `resolved: #7`.
pub fn closed_by_message(message: &str) -> Vec<u64> {
    let mut out: Vec<u64> = CLOSES.captures_iter(message).filter_map(|c| c[1].parse().ok()).collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The embedded forge: issues in the store, mirrored as markdown under `mirror` (the GitOps
/// repository's `issues/` directory) when one is configured.
#[derive(Debug, Clone)]
pub struct LocalForge {
    store: Store,
    mirror: Option<PathBuf>,
}

impl LocalForge {
    /// A forge over `store`, mirroring issues into `mirror` when given.
    pub fn new(store: Store, mirror: Option<PathBuf>) -> Self {
        Self { store, mirror }
    }

    /// The mirror file of an issue.
    pub fn mirror_path(&self, issue: u64) -> Option<PathBuf> {
        self.mirror.as_ref().map(|d| d.join(format!("{issue}.md")))
    }

    async fn write_mirror(&self, issue: u64) -> Result<(), ForgeError> {
        let Some(path) = self.mirror_path(issue) else { return Ok(()) };
        let Some(i) = self.store.forge_issue(issue).await? else { return Ok(()) };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| ForgeError(format!("cannot create {} ({e}); check the [gitops] path", dir.display())))?;
        }
        std::fs::write(&path, render_issue(&i)).map_err(|e| ForgeError(format!("cannot write {} ({e}); check the [gitops] path", path.display())))
    }
}

/// An issue as markdown: a small front matter, the body, then the comments.
pub fn render_issue(i: &ForgeIssue) -> String {
    let mut s = format!("---\nnumber: {}\nstate: {}\nlabels: [{}]\nopened: {}\n", i.number, i.state, i.labels.join(", "), crate::changes::date_time(i.created_ms));
    if let Some(sha) = &i.closed_by {
        s.push_str(&format!("closed_by: {sha}\n"));
    }
    s.push_str(&format!("---\n\n# #{}: {}\n\n{}\n", i.number, i.title, i.body.trim_end()));
    for c in &i.comments {
        s.push_str(&format!("\n---\n\n**{}** commented at {}:\n\n{}\n", c.author, crate::changes::date_time(c.at_ms), c.body.trim_end()));
    }
    s
}

#[async_trait]
impl Forge for LocalForge {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn open_issue(&self, title: &str, body: &str, labels: &[String]) -> Result<u64, ForgeError> {
        let n = self.store.forge_open(title, body, labels, now_ms()).await?;
        self.write_mirror(n).await?;
        Ok(n)
    }

    async fn comment(&self, issue: u64, body: &str) -> Result<(), ForgeError> {
        if !self.store.forge_comment(issue, "labops", body, now_ms()).await? {
            return Err(ForgeError(format!("there is no issue #{issue} on the local forge")));
        }
        self.write_mirror(issue).await
    }

    async fn label(&self, issue: u64, labels: &[String]) -> Result<(), ForgeError> {
        if !self.store.forge_label(issue, labels).await? {
            return Err(ForgeError(format!("there is no issue #{issue} on the local forge")));
        }
        self.write_mirror(issue).await
    }

    async fn commit_landed(&self, sha: &str, message: &str) -> Result<Vec<u64>, ForgeError> {
        let mut closed = Vec::new();
        for n in closed_by_message(message) {
            if self.store.forge_close(n, sha, now_ms()).await? {
                closed.push(n);
                // The mirror now says closed; it is committed with the next change.
                self.write_mirror(n).await?;
            }
        }
        Ok(closed)
    }

    async fn state(&self, issue: u64) -> Result<String, ForgeError> {
        match self.store.forge_issue(issue).await? {
            Some(i) => Ok(i.state),
            None => Err(ForgeError(format!("there is no issue #{issue} on the local forge"))),
        }
    }

    fn link(&self, issue: u64) -> String {
        match &self.mirror {
            Some(_) => format!("issues/{issue}.md"),
            None => format!("local issue #{issue}"),
        }
    }
}

/// Issues in a GitHub repository.
///
/// GitHub closes an issue by itself when a commit saying `fixes #N` reaches the default branch;
/// [`Forge::commit_landed`] closes it explicitly too (with a comment naming the commit), so the
/// issue closes whatever branch the GitOps repository pushes to. Closing is idempotent: an issue
/// GitHub already closed is left as it is.
#[derive(Debug)]
pub struct GithubForge {
    client: github::Client,
}

impl GithubForge {
    /// A forge over `client`'s repository.
    pub fn new(client: github::Client) -> Self {
        Self { client }
    }

    /// The client.
    pub fn client(&self) -> &github::Client {
        &self.client
    }
}

impl From<github::Error> for ForgeError {
    fn from(e: github::Error) -> Self {
        ForgeError(e.to_string())
    }
}

#[async_trait]
impl Forge for GithubForge {
    fn kind(&self) -> &'static str {
        "github"
    }

    async fn open_issue(&self, title: &str, body: &str, labels: &[String]) -> Result<u64, ForgeError> {
        Ok(self.client.create_issue(title, body, labels).await?.number)
    }

    async fn comment(&self, issue: u64, body: &str) -> Result<(), ForgeError> {
        self.client.create_comment(issue, body).await?;
        Ok(())
    }

    async fn label(&self, issue: u64, labels: &[String]) -> Result<(), ForgeError> {
        self.client.add_labels(issue, labels).await?;
        Ok(())
    }

    async fn commit_landed(&self, sha: &str, message: &str) -> Result<Vec<u64>, ForgeError> {
        let mut closed = Vec::new();
        for n in closed_by_message(message) {
            let issue = match self.client.issue(n).await {
                Ok(i) => i,
                // Like GitHub, a keyword naming no issue of this repository closes nothing.
                Err(e) if matches!(e.status(), Some(404 | 410)) => {
                    tracing::warn!(issue = n, commit = sha, "the commit names an issue the repository does not have: {e}");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            // GitHub's keywords do not close pull requests, and a closed issue stays as it is
            // (GitHub closes it itself when the commit reaches the default branch).
            if issue.is_pull_request || issue.state == "closed" {
                continue;
            }
            self.client.create_comment(n, &format!("Closed by commit {sha}.")).await?;
            self.client.close_issue(n).await?;
            closed.push(n);
        }
        Ok(closed)
    }

    async fn state(&self, issue: u64) -> Result<String, ForgeError> {
        Ok(self.client.issue(issue).await?.state)
    }

    fn link(&self, issue: u64) -> String {
        self.client.issue_url(issue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_keywords_are_read_as_github_reads_them() {
        assert_eq!(closed_by_message("Add LXC\n\nfixes #12"), [12]);
        assert_eq!(closed_by_message("Closes #3, resolves #4 and Fixed #3"), [3, 4]);
        assert_eq!(closed_by_message("resolved: #7"), [7]);
        assert!(closed_by_message("prefixes #9, see #10, fix#11, issue #12 is related").is_empty());
    }
}
