//! Workflow runs: the run and step records, the progress events, the driver's lease and the
//! per-entity locks. The engine decides; this module only persists, each transition in one
//! transaction with its event, so the store never holds a state without the event that led to it.

use serde::Serialize;
use serde_json::Value;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use crate::{Error, Result, Store};

/// A run as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRecord {
    /// The run's number.
    pub id: i64,
    /// The workflow's name.
    pub workflow: String,
    /// The plan it runs (a `labops_core::workflow::Plan` as JSON).
    pub plan: Value,
    /// `awaiting_approval`, `running`, `rolling_back`, or a terminal state.
    pub state: String,
    /// Whether a human must approve it before it starts (it has mutating steps).
    pub needs_approval: bool,
    /// Who approved it.
    pub approved_by: Option<String>,
    /// When, Unix milliseconds.
    pub approved_ms: Option<i64>,
    /// Who asked to cancel it, when someone did.
    pub cancel_requested: Option<String>,
    /// The process driving it now.
    pub owner: Option<String>,
    /// That process's last heartbeat.
    pub heartbeat_ms: Option<i64>,
    /// Who started it.
    pub created_by: String,
    /// When it was created.
    pub created_ms: i64,
    /// When it last changed.
    pub updated_ms: i64,
    /// The final report (what ran, what was undone), once it ended.
    pub report: Option<Value>,
    /// The change it executes, when it changes the lab.
    pub change_id: Option<i64>,
}

/// The part of a run that changes while it runs: cheap to read on every turn of the driver.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunHead {
    /// See [`RunRecord::state`].
    pub state: String,
    /// Who asked to cancel it.
    pub cancel_requested: Option<String>,
    /// When it was created.
    pub created_ms: i64,
}

/// One step of a run as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRecord {
    /// The step's name.
    pub name: String,
    /// Its place in the plan.
    pub position: i64,
    /// See the migration for the states.
    pub state: String,
    /// Attempts started so far.
    pub attempt: i64,
    /// The current attempt's idempotency key.
    pub idem_key: Option<String>,
    /// What the executor recorded before acting (what compensation needs).
    pub intent: Option<Value>,
    /// What the step produced.
    pub outcome: Option<Value>,
    /// Why it failed, or why it waits.
    pub error: Option<String>,
    /// Completion order within the run.
    pub done_seq: Option<i64>,
    /// When the current attempt started.
    pub started_ms: Option<i64>,
    /// When it finished.
    pub finished_ms: Option<i64>,
}

/// A progress event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunEvent {
    /// The run.
    pub run_id: i64,
    /// Position in the run's stream, from 1.
    pub seq: i64,
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// The step it is about, if any.
    pub step: Option<String>,
    /// What happened (`step_started`, `step_succeeded`, ...).
    pub kind: String,
    /// Facts about it.
    pub detail: Value,
}

/// An event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The step it is about.
    pub step: Option<String>,
    /// What happened.
    pub kind: &'static str,
    /// Facts.
    pub detail: Value,
}

impl NewEvent {
    /// An event about the run.
    pub fn run(kind: &'static str, detail: Value) -> Self {
        Self { step: None, kind, detail }
    }

    /// An event about one step.
    pub fn step(step: &str, kind: &'static str, detail: Value) -> Self {
        Self { step: Some(step.to_string()), kind, detail }
    }
}

/// States in which a run no longer changes.
pub const TERMINAL: &[&str] = &["succeeded", "failed", "rolled_back", "cancelled"];

fn json(v: &Value) -> String {
    v.to_string()
}

fn opt_json(r: &SqliteRow, col: &str, what: &str) -> Result<Option<Value>> {
    let text: Option<String> = r.try_get(col)?;
    text.map(|t| serde_json::from_str(&t).map_err(|e| Error::Decode { what: what.to_string(), source: e }))
        .transpose()
}

fn run_from(r: &SqliteRow) -> Result<RunRecord> {
    let id: i64 = r.try_get("id")?;
    let plan: String = r.try_get("plan_json")?;
    Ok(RunRecord {
        id,
        workflow: r.try_get("workflow")?,
        plan: serde_json::from_str(&plan).map_err(|e| Error::Decode { what: format!("plan of run {id}"), source: e })?,
        state: r.try_get("state")?,
        needs_approval: r.try_get::<i64, _>("needs_approval")? != 0,
        approved_by: r.try_get("approved_by")?,
        approved_ms: r.try_get("approved_ms")?,
        cancel_requested: r.try_get("cancel_requested")?,
        owner: r.try_get("owner")?,
        heartbeat_ms: r.try_get("heartbeat_ms")?,
        created_by: r.try_get("created_by")?,
        created_ms: r.try_get("created_ms")?,
        updated_ms: r.try_get("updated_ms")?,
        report: opt_json(r, "report_json", "run report")?,
        change_id: r.try_get("change_id")?,
    })
}

fn step_from(r: &SqliteRow) -> Result<StepRecord> {
    Ok(StepRecord {
        name: r.try_get("name")?,
        position: r.try_get("position")?,
        state: r.try_get("state")?,
        attempt: r.try_get("attempt")?,
        idem_key: r.try_get("idem_key")?,
        intent: opt_json(r, "intent_json", "step intent")?,
        outcome: opt_json(r, "outcome_json", "step outcome")?,
        error: r.try_get("error")?,
        done_seq: r.try_get("done_seq")?,
        started_ms: r.try_get("started_ms")?,
        finished_ms: r.try_get("finished_ms")?,
    })
}

async fn append(tx: &mut sqlx::SqliteConnection, run: i64, now: i64, e: &NewEvent) -> Result<i64> {
    // One statement: the seq comes from the run row, and a trigger moves the run's `last_seq`
    // and `updated_ms` along.
    let seq: i64 = sqlx::query(
        "INSERT INTO run_events (run_id, seq, at_ms, step, kind, detail_json)
         SELECT id, last_seq + 1, ?, ?, ?, ? FROM runs WHERE id = ? RETURNING seq",
    )
    .bind(now)
    .bind(&e.step)
    .bind(e.kind)
    .bind(json(&e.detail))
    .bind(run)
    .fetch_one(&mut *tx)
    .await?
    .try_get(0)?;
    Ok(seq)
}

impl Store {

    /// Stores a new run with its steps (all `pending`) and its `created` event; returns its id.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_run(
        &self,
        workflow: &str,
        plan: &Value,
        needs_approval: bool,
        change_id: Option<i64>,
        created_by: &str,
        steps: &[String],
        now: i64,
    ) -> Result<i64> {
        let (_w, mut tx) = self.write_tx().await?;
        let state = if needs_approval { "awaiting_approval" } else { "running" };
        let id: i64 = sqlx::query(
            "INSERT INTO runs (workflow, plan_json, state, needs_approval, change_id, created_by, created_ms, updated_ms)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(workflow)
        .bind(json(plan))
        .bind(state)
        .bind(needs_approval as i64)
        .bind(change_id)
        .bind(created_by)
        .bind(now)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        for (i, name) in steps.iter().enumerate() {
            sqlx::query("INSERT INTO run_steps (run_id, name, position, state) VALUES (?, ?, ?, 'pending')")
                .bind(id)
                .bind(name)
                .bind(i as i64)
                .execute(&mut *tx)
                .await?;
        }
        let detail = serde_json::json!({"workflow": workflow, "by": created_by, "state": state, "steps": steps.len()});
        append(&mut tx, id, now, &NewEvent::run("created", detail)).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// One run, or `None` when there is no run with that id.
    pub async fn run(&self, id: i64) -> Result<Option<RunRecord>> {
        let row = sqlx::query("SELECT * FROM runs WHERE id = ?").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(run_from).transpose()
    }

    /// A run's state, cancel request and creation time, without its plan.
    pub async fn run_head(&self, id: i64) -> Result<Option<RunHead>> {
        let row = sqlx::query("SELECT state, cancel_requested, created_ms FROM runs WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok(RunHead { state: r.try_get(0)?, cancel_requested: r.try_get(1)?, created_ms: r.try_get(2)? })).transpose()
    }

    /// A run's steps, in plan order.
    pub async fn run_steps(&self, id: i64) -> Result<Vec<StepRecord>> {
        let rows = sqlx::query("SELECT * FROM run_steps WHERE run_id = ? ORDER BY position")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(step_from).collect()
    }

    /// Runs, newest first: only those not yet ended when `active`.
    pub async fn runs(&self, active: bool, limit: u32) -> Result<Vec<RunRecord>> {
        let sql = if active {
            "SELECT * FROM runs WHERE state NOT IN ('succeeded', 'failed', 'rolled_back', 'cancelled') ORDER BY id DESC LIMIT ?"
        } else {
            "SELECT * FROM runs ORDER BY id DESC LIMIT ?"
        };
        let rows = sqlx::query(sql).bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(run_from).collect()
    }

    /// Writes a step's record and appends its event, in one transaction; returns the event's seq.
    pub async fn save_step(&self, run: i64, s: &StepRecord, now: i64, event: &NewEvent) -> Result<i64> {
        let (_w, mut tx) = self.write_tx().await?;
        sqlx::query(
            "UPDATE run_steps SET state = ?, attempt = ?, idem_key = ?, intent_json = ?, outcome_json = ?,
                 error = ?, done_seq = ?, started_ms = ?, finished_ms = ?
             WHERE run_id = ? AND name = ?",
        )
        .bind(&s.state)
        .bind(s.attempt)
        .bind(&s.idem_key)
        .bind(s.intent.as_ref().map(json))
        .bind(s.outcome.as_ref().map(json))
        .bind(&s.error)
        .bind(s.done_seq)
        .bind(s.started_ms)
        .bind(s.finished_ms)
        .bind(run)
        .bind(&s.name)
        .execute(&mut *tx)
        .await?;
        let seq = append(&mut tx, run, now, event).await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Sets a run's state (and its report, when given) with its event. Entering a terminal state
    /// releases the run's entity locks and its driver in the same transaction.
    pub async fn set_run_state(&self, run: i64, state: &str, report: Option<&Value>, now: i64, event: &NewEvent) -> Result<()> {
        let (_w, mut tx) = self.write_tx().await?;
        sqlx::query("UPDATE runs SET state = ?, report_json = COALESCE(?, report_json) WHERE id = ?")
            .bind(state)
            .bind(report.map(json))
            .bind(run)
            .execute(&mut *tx)
            .await?;
        if TERMINAL.contains(&state) {
            sqlx::query("DELETE FROM entity_locks WHERE run_id = ?").bind(run).execute(&mut *tx).await?;
            sqlx::query("UPDATE runs SET owner = NULL, heartbeat_ms = NULL WHERE id = ?").bind(run).execute(&mut *tx).await?;
        }
        append(&mut tx, run, now, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A human's input on a step: moves it from one of `from` to `to` with an outcome or an
    /// error. False (and nothing written) when the step is not in one of `from`.
    #[allow(clippy::too_many_arguments)]
    pub async fn human_step(
        &self,
        run: i64,
        step: &str,
        from: &[&str],
        to: &str,
        outcome: Option<&Value>,
        error: Option<&str>,
        now: i64,
        event: &NewEvent,
    ) -> Result<bool> {
        let (_w, mut tx) = self.write_tx().await?;
        let current: Option<String> = sqlx::query("SELECT state FROM run_steps WHERE run_id = ? AND name = ?")
            .bind(run)
            .bind(step)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        if !current.is_some_and(|c| from.contains(&c.as_str())) {
            return Ok(false);
        }
        let done_seq: Option<i64> = if to == "succeeded" {
            Some(
                sqlx::query("SELECT COALESCE(MAX(done_seq), 0) + 1 FROM run_steps WHERE run_id = ?")
                    .bind(run)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get(0)?,
            )
        } else {
            None
        };
        let finished = matches!(to, "succeeded" | "failed").then_some(now);
        sqlx::query(
            "UPDATE run_steps SET state = ?, outcome_json = COALESCE(?, outcome_json), error = ?,
                 done_seq = COALESCE(?, done_seq), finished_ms = COALESCE(?, finished_ms)
             WHERE run_id = ? AND name = ?",
        )
        .bind(to)
        .bind(outcome.map(json))
        .bind(error)
        .bind(done_seq)
        .bind(finished)
        .bind(run)
        .bind(step)
        .execute(&mut *tx)
        .await?;
        append(&mut tx, run, now, event).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Appends an event that changes no state (progress, retries).
    pub async fn add_event(&self, run: i64, now: i64, event: &NewEvent) -> Result<i64> {
        let (_w, mut tx) = self.write_tx().await?;
        let seq = append(&mut tx, run, now, event).await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Records a human approval of a run awaiting it; false when it was not awaiting approval.
    pub async fn approve_run(&self, run: i64, approver: &str, now: i64) -> Result<bool> {
        let (_w, mut tx) = self.write_tx().await?;
        let done = sqlx::query(
            "UPDATE runs SET state = 'running', approved_by = ?, approved_ms = ? WHERE id = ? AND state = 'awaiting_approval'",
        )
        .bind(approver)
        .bind(now)
        .bind(run)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if done {
            append(&mut tx, run, now, &NewEvent::run("approved", serde_json::json!({"by": approver}))).await?;
            tx.commit().await?;
        }
        Ok(done)
    }

    /// Asks a run to stop and undo what it did; false when it has already ended.
    pub async fn request_cancel(&self, run: i64, actor: &str, now: i64) -> Result<bool> {
        let (_w, mut tx) = self.write_tx().await?;
        let done = sqlx::query(
            "UPDATE runs SET cancel_requested = ? WHERE id = ? AND cancel_requested IS NULL
                 AND state NOT IN ('succeeded', 'failed', 'rolled_back', 'cancelled')",
        )
        .bind(actor)
        .bind(run)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if done {
            append(&mut tx, run, now, &NewEvent::run("cancel_requested", serde_json::json!({"by": actor}))).await?;
            tx.commit().await?;
        }
        Ok(done)
    }

    /// Takes the run for the driver `owner` when nobody drives it, `owner` already does, or
    /// `stale(current_owner, heartbeat)` says the current driver is gone. False otherwise.
    pub async fn claim_run(&self, run: i64, owner: &str, now: i64, stale: impl Fn(&str, i64) -> bool) -> Result<bool> {
        // Already ours (the usual case when this process drives it again): nothing to write.
        let mine = sqlx::query("SELECT 1 FROM runs WHERE id = ? AND owner = ? AND state NOT IN ('succeeded', 'failed', 'rolled_back', 'cancelled')")
            .bind(run)
            .bind(owner)
            .fetch_optional(&self.pool)
            .await?;
        if mine.is_some() {
            return Ok(true);
        }
        let (_w, mut tx) = self.write_tx().await?;
        let row = sqlx::query("SELECT owner, heartbeat_ms, state FROM runs WHERE id = ?")
            .bind(run)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else { return Ok(false) };
        let current: Option<String> = row.try_get(0)?;
        let beat: Option<i64> = row.try_get(1)?;
        let state: String = row.try_get(2)?;
        if TERMINAL.contains(&state.as_str()) {
            return Ok(false);
        }
        let free = match &current {
            None => true,
            Some(c) if c == owner => true,
            Some(c) => stale(c, beat.unwrap_or(0)),
        };
        if free {
            sqlx::query("UPDATE runs SET owner = ?, heartbeat_ms = ? WHERE id = ?")
                .bind(owner)
                .bind(now)
                .bind(run)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Ok(free)
    }

    /// Every driver of a run that has not ended, with its last heartbeat.
    pub async fn run_owners(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT owner, MAX(COALESCE(heartbeat_ms, 0)) FROM runs WHERE owner IS NOT NULL
                 AND state NOT IN ('succeeded', 'failed', 'rolled_back', 'cancelled') GROUP BY owner",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// Moves every run of the driver `from` (gone) to `to`, in one transaction; how many.
    pub async fn take_over(&self, from: &str, to: &str, now: i64) -> Result<u64> {
        let (_w, mut tx) = self.write_tx().await?;
        let n = sqlx::query("UPDATE runs SET owner = ?, heartbeat_ms = ? WHERE owner = ?")
            .bind(to)
            .bind(now)
            .bind(from)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    /// Refreshes the heartbeat of every run `owner` drives.
    pub async fn heartbeat(&self, owner: &str, now: i64) -> Result<()> {
        let (_w, mut tx) = self.write_tx().await?;
        sqlx::query("UPDATE runs SET heartbeat_ms = ? WHERE owner = ?").bind(now).bind(owner).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Lets go of a run `owner` drives.
    pub async fn release_run(&self, run: i64, owner: &str) -> Result<()> {
        let (_w, mut tx) = self.write_tx().await?;
        sqlx::query("UPDATE runs SET owner = NULL, heartbeat_ms = NULL WHERE id = ? AND owner = ?")
            .bind(run)
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Takes every entity lock in `entities` for `run`, or none: on conflict, the entities held
    /// by other runs, with the run holding each.
    pub async fn lock_entities(&self, run: i64, entities: &[String], now: i64) -> Result<Result<(), Vec<(String, i64)>>> {
        let (_w, mut tx) = self.write_tx().await?;
        let mut held = Vec::new();
        for e in entities {
            let holder: Option<i64> = sqlx::query("SELECT run_id FROM entity_locks WHERE entity = ?")
                .bind(e)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get(0))
                .transpose()?;
            match holder {
                Some(h) if h != run => held.push((e.clone(), h)),
                Some(_) => {}
                None => {
                    sqlx::query("INSERT INTO entity_locks (entity, run_id, taken_ms) VALUES (?, ?, ?)")
                        .bind(e)
                        .bind(run)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        if !held.is_empty() {
            tx.rollback().await?;
            return Ok(Err(held));
        }
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// The entities `run` holds locks on.
    pub async fn run_locks(&self, run: i64) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT entity FROM entity_locks WHERE run_id = ? ORDER BY entity")
            .bind(run)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// A run's events after `after` (0 for all), oldest first, at most `limit`.
    pub async fn run_events(&self, run: i64, after: i64, limit: u32) -> Result<Vec<RunEvent>> {
        let rows = sqlx::query(
            "SELECT run_id, seq, at_ms, step, kind, detail_json FROM run_events
             WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(run)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RunEvent {
                    run_id: r.try_get(0)?,
                    seq: r.try_get(1)?,
                    at_ms: r.try_get(2)?,
                    step: r.try_get(3)?,
                    kind: r.try_get(4)?,
                    detail: opt_json(r, "detail_json", "run event")?.unwrap_or(Value::Null),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.db")).await.unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn a_run_and_its_events_round_trip() {
        let (_d, s) = store().await;
        let id = s.create_run("w", &serde_json::json!({"x": 1}), true, None, "ann", &["a".into(), "b".into()], 10).await.unwrap();
        let run = s.run(id).await.unwrap().unwrap();
        assert_eq!((run.state.as_str(), run.needs_approval), ("awaiting_approval", true));
        assert!(!s.approve_run(id + 1, "bob", 11).await.unwrap(), "no such run");
        assert!(s.approve_run(id, "bob", 11).await.unwrap());
        assert!(!s.approve_run(id, "bob", 12).await.unwrap(), "approving twice changes nothing");
        let mut a = s.run_steps(id).await.unwrap().remove(0);
        a.state = "waiting_human".into();
        s.save_step(id, &a, 13, &NewEvent::step("a", "step_waiting", Value::Null)).await.unwrap();
        let ok = serde_json::json!({"serial": "S1"});
        assert!(!s.human_step(id, "b", &["waiting_human"], "succeeded", Some(&ok), None, 14, &NewEvent::run("x", Value::Null)).await.unwrap());
        assert!(s.human_step(id, "a", &["waiting_human"], "succeeded", Some(&ok), None, 14, &NewEvent::step("a", "step_succeeded", Value::Null)).await.unwrap());
        let steps = s.run_steps(id).await.unwrap();
        assert_eq!((steps[0].state.as_str(), steps[0].done_seq, steps[0].outcome.as_ref()), ("succeeded", Some(1), Some(&ok)));
        let kinds: Vec<String> = s.run_events(id, 0, 100).await.unwrap().into_iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["created", "approved", "step_waiting", "step_succeeded"]);
        assert_eq!(s.run_events(id, 2, 100).await.unwrap()[0].seq, 3);
    }

    #[tokio::test]
    async fn locks_are_all_or_nothing_and_end_with_the_run() {
        let (_d, s) = store().await;
        let one = s.create_run("w", &Value::Null, false, None, "t", &[], 1).await.unwrap();
        let two = s.create_run("w", &Value::Null, false, None, "t", &[], 1).await.unwrap();
        assert_eq!(s.lock_entities(one, &["vm/100".into()], 2).await.unwrap(), Ok(()));
        let clash = s.lock_entities(two, &["vm/101".into(), "vm/100".into()], 3).await.unwrap();
        assert_eq!(clash, Err(vec![("vm/100".to_string(), one)]));
        assert!(s.run_locks(two).await.unwrap().is_empty(), "nothing taken on conflict");
        s.set_run_state(one, "succeeded", None, 4, &NewEvent::run("finished", Value::Null)).await.unwrap();
        assert_eq!(s.lock_entities(two, &["vm/101".into(), "vm/100".into()], 5).await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn a_live_driver_keeps_its_run() {
        let (_d, s) = store().await;
        let id = s.create_run("w", &Value::Null, false, None, "t", &[], 1).await.unwrap();
        assert!(s.claim_run(id, "a", 1, |_, _| false).await.unwrap());
        assert!(!s.claim_run(id, "b", 2, |_, _| false).await.unwrap());
        assert!(s.claim_run(id, "b", 2, |owner, _| owner == "a").await.unwrap(), "a stale driver loses it");
        s.release_run(id, "b").await.unwrap();
        assert!(s.claim_run(id, "c", 3, |_, _| false).await.unwrap());
        assert!(s.request_cancel(id, "ann", 4).await.unwrap());
        assert!(!s.request_cancel(id, "ann", 5).await.unwrap());
    }
}
