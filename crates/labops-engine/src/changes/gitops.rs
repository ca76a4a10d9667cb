//! The GitOps repository: the documentation a change must update, and the commit that closes
//! its issue.
//!
//! Per change labops writes, from the live inventory:
//! - `docs/infrastructure/AREA.md`: a generated table of the area's entities (between markers,
//!   so the owner's own prose around it stays) and a line in its change history;
//! - `INFRASTRUCTURE.md`: the whole lab, regenerated;
//! - `CHANGELOG.md`: an entry linking the issue;
//!
//! then commits them (with the forge's issue mirror) as `<title>` ... `fixes #N` and pushes with
//! the git CLI.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use labops_core::inventory::{Entity, EntityKind, Inventory};
use serde::{Deserialize, Serialize};
use tokio::process::Command;

/// Where the GitOps repository is and where its commits go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitOpsSettings {
    /// The work tree.
    pub path: PathBuf,
    /// The remote pushed to; none keeps the commit local.
    pub remote: Option<String>,
    /// The branch pushed to.
    pub branch: String,
    /// Author and committer name.
    pub author_name: String,
    /// Author and committer email.
    pub author_email: String,
}

/// The documentation areas and the entity kinds each one tabulates.
pub const AREAS: &[(&str, &[EntityKind])] = &[
    ("compute", &[EntityKind::ProxmoxNode, EntityKind::Vm, EntityKind::Lxc]),
    ("storage", &[EntityKind::Storage]),
    ("kubernetes", &[EntityKind::K8sNode, EntityKind::Workload, EntityKind::Service, EntityKind::Ingress]),
    ("hosts", &[EntityKind::Host]),
];

const BEGIN: &str = "<!-- labops:inventory:begin (generated from the live inventory; edits inside are replaced) -->";
const END: &str = "<!-- labops:inventory:end -->";
const HISTORY: &str = "## Change history";
const GIT_TIMEOUT: Duration = Duration::from_secs(120);

/// One change, as the documentation records it.
#[derive(Debug, Clone)]
pub struct DocEntry {
    /// `chg-N`.
    pub change: String,
    /// The issue number.
    pub issue: u64,
    /// Where the issue is read.
    pub issue_link: String,
    /// Title.
    pub title: String,
    /// What and why.
    pub what: String,
    /// Why.
    pub why: String,
    /// Who approved it.
    pub approved_by: String,
    /// The run that executed it.
    pub run: i64,
    /// What validation checked, one line each.
    pub validated: Vec<String>,
    /// When (`YYYY-MM-DD HH:MM UTC`).
    pub when: String,
    /// The documentation area.
    pub area: String,
}

fn kind_title(k: EntityKind) -> &'static str {
    match k {
        EntityKind::ProxmoxNode => "Proxmox nodes",
        EntityKind::Vm => "Virtual machines",
        EntityKind::Lxc => "Containers (LXC)",
        EntityKind::Storage => "Storage pools",
        EntityKind::K8sNode => "Kubernetes nodes",
        EntityKind::Workload => "Workloads",
        EntityKind::Service => "Services",
        EntityKind::Ingress => "Ingresses",
        EntityKind::Host => "Hosts",
        _ => "Other",
    }
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn usage(e: &Entity) -> String {
    match (e.usage.disk, e.usage.maxdisk) {
        (Some(u), Some(t)) if t > 0 => format!("{:.0} / {:.0} GiB ({:.0}%)", u as f64 / 1073741824.0, t as f64 / 1073741824.0, 100.0 * u as f64 / t as f64),
        _ => String::new(),
    }
}

/// A markdown table of the entities of `kind`.
fn table(inv: &Inventory, kind: EntityKind) -> String {
    let mut rows: Vec<&Entity> = inv.of_kind(kind).collect();
    if rows.is_empty() {
        return String::new();
    }
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    let mut s = format!("### {} ({})\n\n", kind_title(kind), rows.len());
    let guest = kind.is_guest();
    let placed = rows.iter().any(|e| e.node.is_some());
    s.push_str(match (guest, placed) {
        (true, _) => "| VMID | Name | Node | Status |\n|---|---|---|---|\n",
        (false, true) => "| Name | Node | Status | Usage |\n|---|---|---|---|\n",
        (false, false) => "| Name | Status | Disk |\n|---|---|---|\n",
    });
    for e in rows {
        let node = e.node.as_deref().unwrap_or("");
        if guest {
            let _ = writeln!(s, "| {} | {} | {} | {} |", e.vmid.map(|v| v.to_string()).unwrap_or_default(), cell(&e.name), cell(node), cell(&e.status));
        } else if placed {
            let _ = writeln!(s, "| {} | {} | {} | {} |", cell(&e.qualified_name()), cell(node), cell(&e.status), usage(e));
        } else {
            let _ = writeln!(s, "| {} | {} | {} |", cell(&e.qualified_name()), cell(&e.status), usage(e));
        }
    }
    s.push('\n');
    s
}

/// The area a change documents: the one whose kinds its targets are, `compute` by default.
pub fn area_of(targets: &[String]) -> &'static str {
    let mut votes: BTreeMap<&'static str, usize> = BTreeMap::new();
    for t in targets {
        let kind = t.split('/').next().and_then(EntityKind::parse);
        if let Some(k) = kind
            && let Some((area, _)) = AREAS.iter().find(|(_, kinds)| kinds.contains(&k))
        {
            *votes.entry(area).or_default() += 1;
        }
    }
    votes.into_iter().max_by_key(|(_, n)| *n).map(|(a, _)| a).unwrap_or("compute")
}

/// `INFRASTRUCTURE.md`: the whole lab from the live inventory.
pub fn infrastructure_md(inv: &Inventory, lab: &str, when: &str) -> String {
    let mut s = format!(
        "# Infrastructure of {lab}\n\nGenerated by labops from the live inventory at {when}. Do not edit: labops rewrites this file with every change.\n\n"
    );
    let counts = inv.counts();
    s.push_str("| Kind | Count |\n|---|---|\n");
    for (k, n) in &counts {
        let _ = writeln!(s, "| {} | {n} |", kind_title(*k));
    }
    s.push('\n');
    for (area, kinds) in AREAS {
        let body: String = kinds.iter().map(|k| table(inv, *k)).collect();
        if !body.is_empty() {
            let _ = write!(s, "## {}\n\n{body}", capitalise(area));
        }
    }
    s
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

/// The page of `area` with its generated block replaced and `entry` added to its history.
pub fn area_page(existing: Option<&str>, area: &str, inv: &Inventory, entry: &DocEntry) -> String {
    let kinds = AREAS.iter().find(|(a, _)| *a == area).map(|(_, k)| *k).unwrap_or(&[]);
    let generated: String = kinds.iter().map(|k| table(inv, *k)).collect();
    let block = format!("{BEGIN}\n\n{}{END}", if generated.is_empty() { "Nothing of this area is in the inventory.\n\n".to_string() } else { generated });
    let mut page = match existing {
        Some(text) => match (text.find(BEGIN), text.find(END)) {
            (Some(b), Some(e)) if b < e => format!("{}{block}{}", &text[..b], &text[e + END.len()..]),
            _ => format!("{}\n\n{block}\n", text.trim_end()),
        },
        None => format!("# {}\n\nWhat labops knows of this area of the lab, and the changes made to it.\n\n{block}\n", capitalise(area)),
    };
    if !page.contains(HISTORY) {
        page = format!("{}\n\n{HISTORY}\n\n", page.trim_end());
    }
    let line = format!(
        "- {}: {} ({}, issue [#{}]({}), approved by {})\n",
        entry.when,
        cell(&entry.title),
        entry.change,
        entry.issue,
        relative_from_docs(&entry.issue_link),
        entry.approved_by
    );
    let at = page.find(HISTORY).expect("just ensured") + HISTORY.len();
    let rest = page[at..].trim_start_matches('\n');
    format!("{}\n\n{line}{rest}", &page[..at])
}

fn relative_from_docs(link: &str) -> String {
    if link.contains("://") { link.to_string() } else { format!("../../{link}") }
}

/// `CHANGELOG.md` with `entry` on top.
pub fn changelog(existing: Option<&str>, entry: &DocEntry) -> String {
    const HEAD: &str = "# Changelog\n\nEvery change labops made to the lab, newest first.\n";
    let mut item = format!(
        "\n## {}: {} (#{})\n\n- Change: {} (issue: {})\n- What: {}\n- Why: {}\n- Approved by: {}; executed by run {}\n- Area: docs/infrastructure/{}.md\n",
        entry.when,
        entry.title,
        entry.issue,
        entry.change,
        entry.issue_link,
        entry.what,
        entry.why,
        entry.approved_by,
        entry.run,
        entry.area
    );
    if !entry.validated.is_empty() {
        item.push_str("- Validated:\n");
        for v in &entry.validated {
            let _ = writeln!(item, "  - {v}");
        }
    }
    match existing {
        Some(text) if text.starts_with(HEAD) => format!("{HEAD}{item}{}", &text[HEAD.len()..]),
        Some(text) => format!("{HEAD}{item}\n{text}"),
        None => format!("{HEAD}{item}"),
    }
}

/// The GitOps repository.
#[derive(Debug, Clone)]
pub struct GitOps {
    settings: GitOpsSettings,
}

impl GitOps {
    /// A handle on the repository of `settings`.
    pub fn new(settings: GitOpsSettings) -> Self {
        Self { settings }
    }

    /// Its settings.
    pub fn settings(&self) -> &GitOpsSettings {
        &self.settings
    }

    /// The directory the local forge mirrors issues into.
    pub fn issues_dir(&self) -> PathBuf {
        self.settings.path.join("issues")
    }

    /// Writes the documentation of `entry`; returns the files written, relative to the root.
    pub fn write_docs(&self, inv: &Inventory, lab: &str, entry: &DocEntry) -> Result<Vec<String>, String> {
        let root = &self.settings.path;
        let area_rel = format!("docs/infrastructure/{}.md", entry.area);
        let files = [
            (area_rel.clone(), area_page(read(&root.join(&area_rel)).as_deref(), &entry.area, inv, entry)),
            ("INFRASTRUCTURE.md".to_string(), infrastructure_md(inv, lab, &entry.when)),
            ("CHANGELOG.md".to_string(), changelog(read(&root.join("CHANGELOG.md")).as_deref(), entry)),
        ];
        for (rel, text) in &files {
            let path = root.join(rel);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {} ({e}); check [gitops] path", dir.display()))?;
            }
            std::fs::write(&path, text).map_err(|e| format!("cannot write {} ({e}); check [gitops] path", path.display()))?;
        }
        Ok(files.into_iter().map(|(rel, _)| rel).collect())
    }

    async fn git(&self, args: &[&str]) -> Result<String, String> {
        let s = &self.settings;
        let mut cmd = Command::new("git");
        cmd.current_dir(&s.path)
            .arg("-c")
            .arg(format!("user.name={}", s.author_name))
            .arg("-c")
            .arg(format!("user.email={}", s.author_email))
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .kill_on_drop(true);
        let out = tokio::time::timeout(GIT_TIMEOUT, cmd.output())
            .await
            .map_err(|_| format!("`git {}` did not finish within {}s", args.join(" "), GIT_TIMEOUT.as_secs()))?
            .map_err(|e| format!("cannot run git in {} ({e}); is git installed and [gitops] path a repository?", s.path.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!("`git {}` in {} failed: {}", args.join(" "), s.path.display(), String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    /// The newest commit whose message carries `trailer` (`Labops-Change: chg-N`), if any: a
    /// commit made before a crash is found again instead of made twice.
    pub async fn find_commit(&self, trailer: &str) -> Result<Option<String>, String> {
        let out = self.git(&["log", "-n", "50", "--format=%H%x00%B%x1e"]).await.unwrap_or_default();
        Ok(out
            .split('\u{1e}')
            .filter_map(|rec| rec.trim_start().split_once('\0'))
            .find(|(_, body)| body.lines().any(|l| l.trim() == trailer))
            .map(|(sha, _)| sha.to_string()))
    }

    /// Commits `paths` with `message` and pushes to the configured remote; returns the commit.
    pub async fn commit_and_push(&self, paths: &[String], message: &str) -> Result<String, String> {
        let mut add = vec!["add", "--"];
        add.extend(paths.iter().map(String::as_str));
        self.git(&add).await?;
        self.git(&["commit", "--quiet", "-m", message]).await?;
        let sha = self.git(&["rev-parse", "HEAD"]).await?;
        self.push().await?;
        Ok(sha)
    }

    /// Pushes HEAD to the configured branch of the configured remote (nothing without one).
    pub async fn push(&self) -> Result<(), String> {
        if let Some(remote) = &self.settings.remote {
            let refspec = format!("HEAD:refs/heads/{}", self.settings.branch);
            self.git(&["push", "--quiet", remote, &refspec]).await?;
        }
        Ok(())
    }

    /// The message of a commit.
    pub async fn message(&self, sha: &str) -> Result<String, String> {
        self.git(&["log", "-1", "--format=%B", sha]).await
    }
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use labops_core::inventory::Part;

    fn entry() -> DocEntry {
        DocEntry {
            change: "chg-1".into(),
            issue: 4,
            issue_link: "issues/4.md".into(),
            title: "LXC for Uptime Kuma".into(),
            what: "create CT 240".into(),
            why: "watch the monitors".into(),
            approved_by: "ann".into(),
            run: 2,
            validated: vec!["lxc/240 exists".into()],
            when: "2026-12-05 10:00 UTC".into(),
            area: "compute".into(),
        }
    }

    fn inv() -> Inventory {
        let mut e = Entity::new(EntityKind::Lxc, "lxc/240", "uptime-kuma", "running", "proxmox");
        e.vmid = Some(240);
        e.node = Some("pumped-piglet".into());
        Inventory::build([Part { entities: vec![e], relations: vec![] }])
    }

    #[test]
    fn the_area_page_keeps_the_owners_prose_and_grows_its_history() {
        let first = area_page(None, "compute", &inv(), &entry());
        assert!(first.contains("| 240 | uptime-kuma | pumped-piglet | running |"), "{first}");
        let edited = first.replace("What labops knows", "My own words.\n\nWhat labops knows");
        let mut e2 = entry();
        e2.change = "chg-2".into();
        e2.issue = 5;
        let second = area_page(Some(&edited), "compute", &inv(), &e2);
        assert!(second.contains("My own words."));
        assert_eq!(second.matches(BEGIN).count(), 1, "{second}");
        let history = &second[second.find(HISTORY).unwrap()..];
        assert!(history.find("chg-2").unwrap() < history.find("chg-1").unwrap(), "newest first: {history}");
        assert!(history.contains("[#4](../../issues/4.md)"), "{history}");
    }

    #[test]
    fn the_changelog_puts_the_newest_entry_first() {
        let one = changelog(None, &entry());
        let mut e2 = entry();
        e2.title = "second".into();
        let two = changelog(Some(&one), &e2);
        assert!(two.starts_with("# Changelog"));
        assert!(two.find("second").unwrap() < two.find("LXC for Uptime Kuma").unwrap());
        assert!(two.contains("  - lxc/240 exists"));
    }

    #[test]
    fn areas_follow_the_targets() {
        assert_eq!(area_of(&["storage/pve/tank".into()]), "storage");
        assert_eq!(area_of(&["lxc/240".into(), "proxmox_node/pve".into()]), "compute");
        assert_eq!(area_of(&[]), "compute");
    }
}
