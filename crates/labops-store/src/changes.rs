//! Change records and the embedded forge's issues. The engine decides what a change may do
//! (`labops_core::change`); this module persists each decision in one transaction with its
//! history row and its audit record, and refuses a write made from a stale state (two
//! processes acting on one change: the second is told, not silently overwritten).

use labops_core::change::{Actor, Change, ChangeState, StandingApproval, Transition};
use serde::Serialize;
use serde_json::Value;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::{AuditEntry, Error, Result, Store, insert_audit};

/// A change as stored: its lifecycle and what it carries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChangeRecord {
    /// Its number (the change's id is `chg-NUMBER`).
    pub number: i64,
    /// Lifecycle, issue, approval and history.
    #[serde(flatten)]
    pub change: Change,
    /// The workflow it runs.
    pub workflow: String,
    /// The plan shown to the approver.
    pub plan: Value,
    /// That plan's digest.
    pub plan_digest: String,
    /// Parameters, analysis, ROI, documentation area.
    pub proposal: Value,
    /// The run executing it.
    pub run_id: Option<i64>,
    /// What validation and documentation produced.
    pub outcome: Option<Value>,
    /// The commit that closed its issue.
    pub commit: Option<String>,
    /// Who proposed it.
    pub created_by: String,
    /// When, Unix milliseconds.
    pub created_ms: i64,
    /// When it last changed.
    pub updated_ms: i64,
}

/// Fields that change with a transition, besides the state and the history; `None` keeps the
/// stored value.
#[derive(Debug, Clone, Default)]
pub struct ChangeUpdate {
    /// A new plan and its digest (a change re-planned before it ran).
    pub plan: Option<(Value, String)>,
    /// A new proposal.
    pub proposal: Option<Value>,
    /// The run executing it.
    pub run_id: Option<i64>,
    /// Validation and documentation results.
    pub outcome: Option<Value>,
    /// The commit.
    pub commit: Option<String>,
}

/// An issue of the embedded forge.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForgeIssue {
    /// Its number: the N of `fixes #N`.
    pub number: u64,
    /// Title.
    pub title: String,
    /// Body (markdown).
    pub body: String,
    /// `open` or `closed`.
    pub state: String,
    /// Labels.
    pub labels: Vec<String>,
    /// When it was opened.
    pub created_ms: i64,
    /// When it was closed.
    pub closed_ms: Option<i64>,
    /// The commit that closed it.
    pub closed_by: Option<String>,
    /// Comments, oldest first.
    pub comments: Vec<ForgeComment>,
}

/// A comment on an issue of the embedded forge.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForgeComment {
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// Who wrote it.
    pub author: String,
    /// Markdown.
    pub body: String,
}

fn decode<T: serde::de::DeserializeOwned>(text: &str, what: impl Into<String>) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::Decode { what: what.into(), source: e })
}

fn change_from(r: &SqliteRow, history: Vec<Transition>) -> Result<ChangeRecord> {
    let number: i64 = r.try_get("id")?;
    let state: String = r.try_get("state")?;
    let state = ChangeState::parse(&state).ok_or_else(|| Error::Decode {
        what: format!("state of change {number}"),
        source: serde::de::Error::custom(format!("unknown state {state:?}")),
    })?;
    let issue: Option<i64> = r.try_get("issue")?;
    let outcome: Option<String> = r.try_get("outcome_json")?;
    Ok(ChangeRecord {
        number,
        change: Change {
            id: format!("chg-{number}"),
            title: r.try_get("title")?,
            issue: issue.map(|n| n as u64),
            state,
            approved_plan: r.try_get("approved_plan")?,
            history,
        },
        workflow: r.try_get("workflow")?,
        plan: decode(&r.try_get::<String, _>("plan_json")?, format!("plan of change {number}"))?,
        plan_digest: r.try_get("plan_digest")?,
        proposal: decode(&r.try_get::<String, _>("proposal_json")?, format!("proposal of change {number}"))?,
        run_id: r.try_get("run_id")?,
        outcome: outcome.map(|o| decode(&o, format!("outcome of change {number}"))).transpose()?,
        commit: r.try_get("commit_sha")?,
        created_by: r.try_get("created_by")?,
        created_ms: r.try_get("created_ms")?,
        updated_ms: r.try_get("updated_ms")?,
    })
}

fn transition_from(r: &SqliteRow) -> Result<Transition> {
    let state = |col: &str| -> Result<ChangeState> {
        let s: String = r.try_get(col)?;
        ChangeState::parse(&s)
            .ok_or_else(|| Error::Decode { what: "change transition".into(), source: serde::de::Error::custom(format!("unknown state {s:?}")) })
    };
    let actor: String = r.try_get("actor_json")?;
    Ok(Transition {
        from: state("from_state")?,
        to: state("to_state")?,
        actor: decode::<Actor>(&actor, "actor of a change transition")?,
        at_ms: r.try_get("at_ms")?,
        reason: r.try_get("reason")?,
    })
}

async fn insert_transitions(tx: &mut sqlx::SqliteConnection, id: i64, from_seq: usize, history: &[Transition]) -> Result<()> {
    for (i, t) in history.iter().enumerate().skip(from_seq) {
        sqlx::query(
            "INSERT INTO change_transitions (change_id, seq, from_state, to_state, actor_json, at_ms, reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(i as i64 + 1)
        .bind(t.from.as_str())
        .bind(t.to.as_str())
        .bind(serde_json::to_string(&t.actor).expect("actors serialize"))
        .bind(t.at_ms)
        .bind(&t.reason)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

impl Store {
    /// Stores a new change (its state and history as in `change`; its id is assigned here) and
    /// returns its number.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_change(
        &self,
        change: &Change,
        workflow: &str,
        plan: &Value,
        plan_digest: &str,
        proposal: &Value,
        created_by: &str,
        now: i64,
        audit: &AuditEntry,
    ) -> Result<i64> {
        let (_w, mut tx) = self.write_tx().await?;
        let id: i64 = sqlx::query(
            "INSERT INTO changes (title, state, issue, workflow, plan_json, plan_digest, approved_plan, proposal_json, created_by, created_ms, updated_ms)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&change.title)
        .bind(change.state.as_str())
        .bind(change.issue.map(|n| n as i64))
        .bind(workflow)
        .bind(plan.to_string())
        .bind(plan_digest)
        .bind(&change.approved_plan)
        .bind(proposal.to_string())
        .bind(created_by)
        .bind(now)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        insert_transitions(&mut tx, id, 0, &change.history).await?;
        let mut audit = audit.clone();
        audit.target = Some(format!("chg-{id}"));
        insert_audit(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Writes `change` (state, issue, approval, new history rows) and `update`, with `audit`,
    /// in one transaction, only if the stored state is still `expected`. False when it is not
    /// (someone else moved the change first): nothing is written.
    pub async fn save_change(&self, number: i64, expected: ChangeState, change: &Change, update: &ChangeUpdate, now: i64, audit: &AuditEntry) -> Result<bool> {
        let (_w, mut tx) = self.write_tx().await?;
        let stored: i64 = sqlx::query("SELECT COUNT(*) FROM change_transitions WHERE change_id = ?")
            .bind(number)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        let (plan, digest) = match &update.plan {
            Some((p, d)) => (Some(p.to_string()), Some(d.clone())),
            None => (None, None),
        };
        let done = sqlx::query(
            "UPDATE changes SET state = ?, issue = ?, approved_plan = ?, updated_ms = ?,
                 plan_json = COALESCE(?, plan_json), plan_digest = COALESCE(?, plan_digest),
                 proposal_json = COALESCE(?, proposal_json), run_id = COALESCE(?, run_id),
                 outcome_json = COALESCE(?, outcome_json), commit_sha = COALESCE(?, commit_sha)
             WHERE id = ? AND state = ?",
        )
        .bind(change.state.as_str())
        .bind(change.issue.map(|n| n as i64))
        .bind(&change.approved_plan)
        .bind(now)
        .bind(plan)
        .bind(digest)
        .bind(update.proposal.as_ref().map(Value::to_string))
        .bind(update.run_id)
        .bind(update.outcome.as_ref().map(Value::to_string))
        .bind(&update.commit)
        .bind(number)
        .bind(expected.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !done {
            return Ok(false);
        }
        insert_transitions(&mut tx, number, stored as usize, &change.history).await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// One change with its history.
    pub async fn change(&self, number: i64) -> Result<Option<ChangeRecord>> {
        let Some(row) = sqlx::query("SELECT * FROM changes WHERE id = ?").bind(number).fetch_optional(&self.pool).await? else {
            return Ok(None);
        };
        let history = sqlx::query("SELECT * FROM change_transitions WHERE change_id = ? ORDER BY seq")
            .bind(number)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(transition_from)
            .collect::<Result<Vec<_>>>()?;
        change_from(&row, history).map(Some)
    }

    /// The change a run executes, if any.
    pub async fn change_of_run(&self, run: i64) -> Result<Option<ChangeRecord>> {
        let id: Option<i64> = sqlx::query("SELECT change_id FROM runs WHERE id = ?").bind(run).fetch_optional(&self.pool).await?.and_then(|r| r.get(0));
        match id {
            Some(id) => self.change(id).await,
            None => Ok(None),
        }
    }

    /// The newest run created for a change, if any (found again after a crash between creating
    /// the run and recording it on the change).
    pub async fn run_of_change(&self, number: i64) -> Result<Option<i64>> {
        Ok(sqlx::query("SELECT MAX(id) FROM runs WHERE change_id = ?").bind(number).fetch_one(&self.pool).await?.get(0))
    }

    /// The newest `limit` changes, newest first; only those still moving when `open`.
    pub async fn changes(&self, open: bool, limit: u32) -> Result<Vec<ChangeRecord>> {
        let sql = if open {
            "SELECT id FROM changes WHERE state NOT IN ('rejected', 'closed', 'failed', 'rolled_back') ORDER BY id DESC LIMIT ?"
        } else {
            "SELECT id FROM changes ORDER BY id DESC LIMIT ?"
        };
        let ids: Vec<i64> = sqlx::query(sql).bind(limit as i64).fetch_all(&self.pool).await?.iter().map(|r| r.get(0)).collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(c) = self.change(id).await? {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Records a standing approval (its id, uses and revocation are set here); returns it.
    pub async fn add_standing(&self, sa: &StandingApproval, audit: &AuditEntry) -> Result<StandingApproval> {
        let (_w, mut tx) = self.write_tx().await?;
        let id: i64 = sqlx::query(
            "INSERT INTO standing_approvals (approver, reason, workflow, targets_json, max_blast_radius, max_uses, expires_ms, created_ms)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&sa.approver)
        .bind(&sa.reason)
        .bind(&sa.workflow)
        .bind(serde_json::to_string(&sa.targets).expect("strings serialize"))
        .bind(sa.max_blast_radius as i64)
        .bind(sa.max_uses.map(i64::from))
        .bind(sa.expires_ms)
        .bind(sa.created_ms)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        let mut audit = audit.clone();
        audit.target = Some(format!("sa-{id}"));
        insert_audit(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(StandingApproval { id: format!("sa-{id}"), uses: 0, revoked_by: None, ..sa.clone() })
    }

    /// Every standing approval, newest first.
    pub async fn standing(&self) -> Result<Vec<StandingApproval>> {
        let rows = sqlx::query("SELECT * FROM standing_approvals ORDER BY id DESC").fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let id: i64 = r.try_get("id")?;
                Ok(StandingApproval {
                    id: format!("sa-{id}"),
                    approver: r.try_get("approver")?,
                    reason: r.try_get("reason")?,
                    workflow: r.try_get("workflow")?,
                    targets: decode(&r.try_get::<String, _>("targets_json")?, format!("targets of sa-{id}"))?,
                    max_blast_radius: r.try_get::<i64, _>("max_blast_radius")? as usize,
                    max_uses: r.try_get::<Option<i64>, _>("max_uses")?.map(|n| n as u32),
                    uses: r.try_get::<i64, _>("uses")? as u32,
                    expires_ms: r.try_get("expires_ms")?,
                    created_ms: r.try_get("created_ms")?,
                    revoked_by: r.try_get("revoked_by")?,
                })
            })
            .collect()
    }

    /// Counts one use of standing approval `number`, if it still has one left and is not
    /// revoked; false otherwise (nothing written).
    pub async fn use_standing(&self, number: i64) -> Result<bool> {
        let (_w, mut tx) = self.write_tx().await?;
        let done = sqlx::query(
            "UPDATE standing_approvals SET uses = uses + 1 WHERE id = ? AND revoked_by IS NULL AND (max_uses IS NULL OR uses < max_uses)",
        )
        .bind(number)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        tx.commit().await?;
        Ok(done)
    }

    /// Revokes a standing approval; false when there is none or it is already revoked.
    pub async fn revoke_standing(&self, number: i64, audit: &AuditEntry) -> Result<bool> {
        let (_w, mut tx) = self.write_tx().await?;
        let done = sqlx::query("UPDATE standing_approvals SET revoked_by = ? WHERE id = ? AND revoked_by IS NULL")
            .bind(&audit.actor)
            .bind(number)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if done {
            insert_audit(&mut tx, audit).await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Opens an issue on the embedded forge; returns its number.
    pub async fn forge_open(&self, title: &str, body: &str, labels: &[String], now: i64) -> Result<u64> {
        let (_w, mut tx) = self.write_tx().await?;
        let n: i64 = sqlx::query("INSERT INTO forge_issues (title, body, state, labels, created_ms) VALUES (?, ?, 'open', ?, ?) RETURNING number")
            .bind(title)
            .bind(body)
            .bind(serde_json::to_string(labels).expect("strings serialize"))
            .bind(now)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        tx.commit().await?;
        Ok(n as u64)
    }

    /// Adds a comment; false when there is no such issue.
    pub async fn forge_comment(&self, issue: u64, author: &str, body: &str, now: i64) -> Result<bool> {
        let (_w, mut tx) = self.write_tx().await?;
        let done = sqlx::query(
            "INSERT INTO forge_comments (issue, seq, at_ms, author, body)
             SELECT number, (SELECT COUNT(*) FROM forge_comments WHERE issue = ?) + 1, ?, ?, ? FROM forge_issues WHERE number = ?",
        )
        .bind(issue as i64)
        .bind(now)
        .bind(author)
        .bind(body)
        .bind(issue as i64)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        tx.commit().await?;
        Ok(done)
    }

    /// Adds labels an issue does not have yet; false when there is no such issue.
    pub async fn forge_label(&self, issue: u64, labels: &[String]) -> Result<bool> {
        let (_w, mut tx) = self.write_tx().await?;
        let Some(row) = sqlx::query("SELECT labels FROM forge_issues WHERE number = ?").bind(issue as i64).fetch_optional(&mut *tx).await? else {
            return Ok(false);
        };
        let mut have: Vec<String> = decode(&row.get::<String, _>(0), format!("labels of issue {issue}"))?;
        for l in labels {
            if !have.contains(l) {
                have.push(l.clone());
            }
        }
        sqlx::query("UPDATE forge_issues SET labels = ? WHERE number = ?")
            .bind(serde_json::to_string(&have).expect("strings serialize"))
            .bind(issue as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Closes an open issue, naming the commit that closed it; false when it is not open.
    pub async fn forge_close(&self, issue: u64, commit: &str, now: i64) -> Result<bool> {
        let (_w, mut tx) = self.write_tx().await?;
        let done = sqlx::query("UPDATE forge_issues SET state = 'closed', closed_ms = ?, closed_by = ? WHERE number = ? AND state = 'open'")
            .bind(now)
            .bind(commit)
            .bind(issue as i64)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        tx.commit().await?;
        Ok(done)
    }

    /// One issue with its comments.
    pub async fn forge_issue(&self, issue: u64) -> Result<Option<ForgeIssue>> {
        let Some(r) = sqlx::query("SELECT * FROM forge_issues WHERE number = ?").bind(issue as i64).fetch_optional(&self.pool).await? else {
            return Ok(None);
        };
        let comments = sqlx::query("SELECT at_ms, author, body FROM forge_comments WHERE issue = ? ORDER BY seq")
            .bind(issue as i64)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|c| Ok(ForgeComment { at_ms: c.try_get(0)?, author: c.try_get(1)?, body: c.try_get(2)? }))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(ForgeIssue {
            number: issue,
            title: r.try_get("title")?,
            body: r.try_get("body")?,
            state: r.try_get("state")?,
            labels: decode(&r.try_get::<String, _>("labels")?, format!("labels of issue {issue}"))?,
            created_ms: r.try_get("created_ms")?,
            closed_ms: r.try_get("closed_ms")?,
            closed_by: r.try_get("closed_by")?,
            comments,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn audit(action: &str) -> AuditEntry {
        AuditEntry { at_ms: 1, actor: "ann".into(), action: action.into(), target: None, outcome: "ok".into(), detail: Value::Null }
    }

    #[tokio::test]
    async fn a_change_and_its_history_survive_and_stale_writes_are_refused() {
        let s = Store::in_memory().await.unwrap();
        let ann = Actor::Human("ann".into());
        let mut c = Change::new("chg-0", "LXC for Uptime Kuma", ann.clone(), 1);
        c.transition(ChangeState::Analysed, ann.clone(), "analysis given", 2).unwrap();
        let n = s.create_change(&c, "lxc-service", &json!({"stages": []}), "sha256:aa", &json!({"area": "compute"}), "ann", 2, &audit("propose")).await.unwrap();
        let got = s.change(n).await.unwrap().unwrap();
        assert_eq!(got.change.id, format!("chg-{n}"));
        assert_eq!(got.change.history.len(), 2);
        assert_eq!(got.change.state, ChangeState::Analysed);

        let mut c = got.change.clone();
        c.transition(ChangeState::AwaitingApproval, Actor::Engine, "ready", 3).unwrap();
        c.issue = Some(7);
        assert!(s.save_change(n, ChangeState::Analysed, &c, &ChangeUpdate::default(), 3, &audit("x")).await.unwrap());
        // A second writer that still believes the change is `analysed` is refused.
        assert!(!s.save_change(n, ChangeState::Analysed, &c, &ChangeUpdate::default(), 4, &audit("x")).await.unwrap());
        let got = s.change(n).await.unwrap().unwrap();
        assert_eq!(got.change.history.iter().map(|t| t.to.as_str()).collect::<Vec<_>>(), ["proposed", "analysed", "awaiting_approval"]);
        assert_eq!(got.change.issue, Some(7));
        assert_eq!(got.proposal["area"], "compute");
        let actions: Vec<String> = s.audit_recent(10).await.unwrap().into_iter().map(|a| a.action).collect();
        assert_eq!(actions, ["x", "propose"], "the refused write left no audit record");
        assert_eq!(s.changes(true, 10).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn forge_issues_take_comments_labels_and_close_once() {
        let s = Store::in_memory().await.unwrap();
        let n = s.forge_open("t", "b", &["change".into()], 1).await.unwrap();
        assert!(s.forge_comment(n, "labops", "started", 2).await.unwrap());
        assert!(s.forge_comment(n, "labops", "done", 3).await.unwrap());
        assert!(!s.forge_comment(n + 1, "labops", "nobody", 3).await.unwrap());
        assert!(s.forge_label(n, &["change".into(), "executing".into()]).await.unwrap());
        assert!(s.forge_close(n, "abc123", 4).await.unwrap());
        assert!(!s.forge_close(n, "def456", 5).await.unwrap(), "closed once");
        let i = s.forge_issue(n).await.unwrap().unwrap();
        assert_eq!((i.state.as_str(), i.closed_by.as_deref()), ("closed", Some("abc123")));
        assert_eq!(i.labels, ["change", "executing"]);
        assert_eq!(i.comments.iter().map(|c| c.body.as_str()).collect::<Vec<_>>(), ["started", "done"]);
    }
}
