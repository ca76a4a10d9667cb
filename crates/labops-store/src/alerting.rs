//! Alerting state: alerts by fingerprint, incidents, their timelines, silences, notifications.
//!
//! [`Store::save_alerting`] writes what one intake changed (rows upserted many at a time, events
//! appended) in one transaction: the intake answers its senders only after it commits. An
//! incident's state only moves forward in the store (open, acknowledged, resolved/merged), so a
//! server writing its view never undoes an acknowledgement a person just made from the CLI.

use labops_aiops::desk::{AlertRecord, Cause, Event, Incident, IncidentState, Matcher, Silence};
use labops_aiops::intake::Status;
use serde::Serialize;
use sqlx::{QueryBuilder, Row, Sqlite};

use crate::{insert_audit, AuditEntry, Error, Result, Store};

/// Rows per multi-row statement (SQLite allows 32,766 bound parameters).
const CHUNK: usize = 500;

/// One notification sent (or attempted).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notification {
    /// The incident.
    pub incident: i64,
    /// When.
    pub at_ms: i64,
    /// Escalation level (1: first notice).
    pub level: u32,
    /// `dashboard`, `home_assistant`, `webhook`, `email`.
    pub channel: String,
    /// `sent`, `failed: ...`.
    pub outcome: String,
    /// What was sent.
    pub detail: serde_json::Value,
}

/// What closed incidents say about one alert name (learning).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleStats {
    /// The alert name.
    pub name: String,
    /// Closed incidents it was part of.
    pub incidents: i64,
    /// Of those, closed by their alerts resolving within the noise window, never acknowledged,
    /// with no fix proposed: it went away by itself.
    pub noise: i64,
    /// Of those, acknowledged by a person.
    pub acknowledged: i64,
    /// It was ever critical.
    pub critical: bool,
    /// Mean minutes from open to resolved.
    pub mean_minutes_to_resolve: f64,
}

/// How a runbook has done (learning).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunbookStats {
    /// The runbook.
    pub runbook: String,
    /// Fixes proposed.
    pub proposed: i64,
    /// Withheld (target on a dead node, a symptom of another cause).
    pub withheld: i64,
    /// Proposals that failed.
    pub failed: i64,
    /// Incidents with a proposed fix whose alerts then resolved by themselves (the fix worked).
    pub fixed: i64,
}

/// Which incidents to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// Open and acknowledged.
    Active,
    /// Everything, newest first.
    All,
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|source| Error::Decode { what: what.to_string(), source })
}

fn encode<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("alerting types serialise")
}

fn incident_from(r: &sqlx::sqlite::SqliteRow) -> Result<Incident> {
    let id: i64 = r.try_get("id")?;
    let state: String = r.try_get("state")?;
    let causes: String = r.try_get("causes_json")?;
    let acked_ms: Option<i64> = r.try_get("acked_ms")?;
    let resolved_ms: Option<i64> = r.try_get("resolved_ms")?;
    Ok(Incident {
        id,
        key: r.try_get("key")?,
        title: r.try_get("title")?,
        severity: r.try_get("severity")?,
        state: IncidentState::parse(&state).unwrap_or(IncidentState::Open),
        root: r.try_get("root_entity")?,
        opened_ms: r.try_get("opened_ms")?,
        updated_ms: r.try_get("updated_ms")?,
        acked: acked_ms.map(|t| (t, r.try_get::<Option<String>, _>("acked_by").ok().flatten().unwrap_or_default())),
        resolved: resolved_ms.map(|t| (t, r.try_get::<Option<String>, _>("resolved_by").ok().flatten().unwrap_or_default())),
        merged_into: r.try_get("merged_into")?,
        notified_ms: r.try_get("notified_ms")?,
        escalation: r.try_get::<i64, _>("escalation")? as u32,
        alerts: Default::default(),
        repeats: r.try_get::<i64, _>("repeats")? as u64,
        causes: decode::<Vec<Cause>>(&format!("causes of incident #{id}"), &causes)?,
        quiet: r.try_get("quiet")?,
    })
}

/// An alert row: its record, with the columns a repeat updates on their own.
fn alert_from(r: &sqlx::sqlite::SqliteRow) -> Result<AlertRecord> {
    let mut a: AlertRecord = decode("a stored alert", &r.try_get::<String, _>(0)?)?;
    a.last_seen_ms = r.try_get(1)?;
    a.received = r.try_get::<i64, _>(2)? as u64;
    a.incident = r.try_get(3)?;
    a.suppressed = r.try_get(4)?;
    Ok(a)
}

const INCIDENT_COLUMNS: &str = "id, key, title, severity, state, root_entity, opened_ms, updated_ms, acked_ms, acked_by, resolved_ms, resolved_by, merged_into, notified_ms, escalation, causes_json, quiet";

/// An incident row with its repeat count (`FROM incidents LEFT JOIN incident_seen s`).
const INCIDENT_SELECT: &str = "incidents.id AS id, key, title, severity, state, root_entity, opened_ms, updated_ms, acked_ms, acked_by, resolved_ms, resolved_by, merged_into, notified_ms, escalation, causes_json, quiet, COALESCE(s.repeats, 0) AS repeats";

/// The rank of a state in SQL, so the upsert keeps the furthest state.
const RANK: &str = "CASE {} WHEN 'open' THEN 0 WHEN 'acknowledged' THEN 1 ELSE 2 END";

fn rank_of(expr: &str) -> String {
    RANK.replace("{}", expr)
}

impl Store {
    /// Writes what an intake (or a notice, an acknowledgement) changed, in one transaction.
    ///
    /// `seen` are alerts only repeated: (fingerprint, last seen, times received); `repeated` are
    /// incidents whose alerts were only repeated: (id, updated, repeats). Only those columns are
    /// written for them.
    pub async fn save_alerting(
        &self,
        alerts: &[&AlertRecord],
        incidents: &[&Incident],
        seen: &[(&str, i64, u64)],
        repeated: &[(i64, i64, u64)],
        events: &[Event],
    ) -> Result<()> {
        let (_w, mut tx) = self.write_tx().await?;
        // Repeats: one fixed statement each (prepared once), the rows as one JSON array.
        if !seen.is_empty() {
            let rows: Vec<(&str, i64, u64)> = seen.to_vec();
            sqlx::query(
                "UPDATE alert_seen SET last_seen_ms = json_extract(j.value, '$[1]'), received = json_extract(j.value, '$[2]')
                 FROM json_each(?) AS j WHERE alert_seen.fingerprint = json_extract(j.value, '$[0]')",
            )
            .bind(encode(&rows))
            .execute(&mut *tx)
            .await?;
        }
        if !repeated.is_empty() {
            let rows: Vec<(i64, i64, u64)> = repeated.to_vec();
            sqlx::query(
                "INSERT INTO incident_seen (id, seen_ms, repeats) SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]')
                 FROM json_each(?) WHERE true ON CONFLICT (id) DO UPDATE SET seen_ms = excluded.seen_ms, repeats = excluded.repeats",
            )
            .bind(encode(&rows))
            .execute(&mut *tx)
            .await?;
        }
        for chunk in incidents.chunks(CHUNK) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(format!("INSERT INTO incidents ({INCIDENT_COLUMNS}) "));
            q.push_values(chunk, |mut b, i| {
                b.push_bind(i.id)
                    .push_bind(&i.key)
                    .push_bind(&i.title)
                    .push_bind(&i.severity)
                    .push_bind(i.state.as_str())
                    .push_bind(&i.root)
                    .push_bind(i.opened_ms)
                    .push_bind(i.updated_ms)
                    .push_bind(i.acked.as_ref().map(|a| a.0))
                    .push_bind(i.acked.as_ref().map(|a| a.1.clone()))
                    .push_bind(i.resolved.as_ref().map(|a| a.0))
                    .push_bind(i.resolved.as_ref().map(|a| a.1.clone()))
                    .push_bind(i.merged_into)
                    .push_bind(i.notified_ms)
                    .push_bind(i.escalation as i64)
                    .push_bind(encode(&i.causes))
                    .push_bind(&i.quiet);
            });
            q.push(format!(
                " ON CONFLICT (id) DO UPDATE SET title = excluded.title, severity = excluded.severity,
                  state = CASE WHEN {new} >= {old} THEN excluded.state ELSE incidents.state END,
                  root_entity = excluded.root_entity, updated_ms = excluded.updated_ms,
                  acked_ms = COALESCE(incidents.acked_ms, excluded.acked_ms),
                  acked_by = COALESCE(incidents.acked_by, excluded.acked_by),
                  resolved_ms = COALESCE(incidents.resolved_ms, excluded.resolved_ms),
                  resolved_by = COALESCE(incidents.resolved_by, excluded.resolved_by),
                  merged_into = COALESCE(incidents.merged_into, excluded.merged_into),
                  notified_ms = COALESCE(incidents.notified_ms, excluded.notified_ms),
                  escalation = MAX(incidents.escalation, excluded.escalation),
                  causes_json = excluded.causes_json, quiet = COALESCE(incidents.quiet, excluded.quiet)",
                new = rank_of("excluded.state"),
                old = rank_of("incidents.state"),
            ));
            q.build().execute(&mut *tx).await?;
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("INSERT INTO incident_seen (id, seen_ms, repeats) ");
            q.push_values(chunk, |mut b, i| {
                b.push_bind(i.id).push_bind(i.updated_ms).push_bind(i.repeats as i64);
            });
            q.push(" ON CONFLICT (id) DO UPDATE SET seen_ms = excluded.seen_ms, repeats = excluded.repeats");
            q.build().execute(&mut *tx).await?;
        }
        for chunk in alerts.chunks(CHUNK) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO alerts (fingerprint, incident_id, source, status, name, severity, entity_id, first_seen_ms, suppressed) ",
            );
            q.push_values(chunk, |mut b, a| {
                b.push_bind(&a.alert.fingerprint)
                    .push_bind(a.incident)
                    .push_bind(labops_aiops::desk::source_name(a.alert.source))
                    .push_bind(if a.alert.status == Status::Firing { "firing" } else { "resolved" })
                    .push_bind(a.alert.name().to_string())
                    .push_bind(a.alert.severity())
                    .push_bind(&a.entity)
                    .push_bind(a.first_seen_ms)
                    .push_bind(&a.suppressed);
            });
            q.push(
                " ON CONFLICT (fingerprint) DO UPDATE SET incident_id = excluded.incident_id, source = excluded.source,
                  status = excluded.status, name = excluded.name, severity = excluded.severity, entity_id = excluded.entity_id,
                  suppressed = excluded.suppressed",
            );
            q.build().execute(&mut *tx).await?;
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("INSERT INTO alert_seen (fingerprint, last_seen_ms, received) ");
            q.push_values(chunk, |mut b, a| {
                b.push_bind(&a.alert.fingerprint).push_bind(a.last_seen_ms).push_bind(a.received as i64);
            });
            q.push(" ON CONFLICT (fingerprint) DO UPDATE SET last_seen_ms = excluded.last_seen_ms, received = excluded.received");
            q.build().execute(&mut *tx).await?;
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("INSERT INTO alert_records (fingerprint, record_json) ");
            q.push_values(chunk, |mut b, a| {
                b.push_bind(&a.alert.fingerprint).push_bind(encode(a));
            });
            q.push(" ON CONFLICT (fingerprint) DO UPDATE SET record_json = excluded.record_json");
            q.build().execute(&mut *tx).await?;
        }
        for chunk in events.chunks(CHUNK) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("INSERT INTO incident_events (incident_id, at_ms, kind, detail_json) ");
            q.push_values(chunk, |mut b, e| {
                b.push_bind(e.incident).push_bind(e.at_ms).push_bind(&e.kind).push_bind(e.detail.to_string());
            });
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// What a desk needs at start: incidents still active or updated since `since_ms`, alerts
    /// seen since then or belonging to an active incident (with each incident's alert set), and
    /// the silences not yet over.
    pub async fn load_alerting(&self, since_ms: i64, now_ms: i64) -> Result<(Vec<AlertRecord>, Vec<Incident>, Vec<Silence>)> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {INCIDENT_SELECT} FROM incidents LEFT JOIN incident_seen s ON s.id = incidents.id
             WHERE state IN ('open', 'acknowledged') OR updated_ms >= ? ORDER BY incidents.id"
        )))
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        let mut incidents: Vec<Incident> = rows.iter().map(incident_from).collect::<Result<_>>()?;
        let rows = sqlx::query(
            "SELECT r.record_json, s.last_seen_ms, s.received, a.incident_id, a.suppressed FROM alerts a
             JOIN alert_records r ON r.fingerprint = a.fingerprint JOIN alert_seen s ON s.fingerprint = a.fingerprint
             LEFT JOIN incidents i ON i.id = a.incident_id
             WHERE s.last_seen_ms >= ? OR i.state IN ('open', 'acknowledged')",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        let mut alerts = Vec::with_capacity(rows.len());
        for r in rows {
            alerts.push(alert_from(&r)?);
        }
        let by_id: std::collections::HashMap<i64, usize> = incidents.iter().enumerate().map(|(n, i)| (i.id, n)).collect();
        for a in &alerts {
            if let Some(&n) = a.incident.and_then(|id| by_id.get(&id)) {
                incidents[n].alerts.insert(a.alert.fingerprint.clone());
            }
        }
        let silences = self.silences(now_ms).await?;
        Ok((alerts, incidents, silences))
    }

    /// Incidents, newest first.
    pub async fn incidents(&self, which: Which, limit: u32) -> Result<Vec<(Incident, i64)>> {
        let filter = match which {
            Which::Active => "WHERE state IN ('open', 'acknowledged')",
            Which::All => "",
        };
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {INCIDENT_SELECT}, (SELECT COUNT(*) FROM alerts a WHERE a.incident_id = incidents.id) AS n
             FROM incidents LEFT JOIN incident_seen s ON s.id = incidents.id {filter} ORDER BY incidents.id DESC LIMIT ?"
        )))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((incident_from(r)?, r.try_get::<i64, _>("n")?))).collect()
    }

    /// One incident, with its alerts and its timeline.
    pub async fn incident(&self, id: i64) -> Result<Option<(Incident, Vec<AlertRecord>, Vec<Event>)>> {
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {INCIDENT_SELECT} FROM incidents LEFT JOIN incident_seen s ON s.id = incidents.id WHERE incidents.id = ?"))).bind(id).fetch_optional(&self.pool).await? else {
            return Ok(None);
        };
        let mut inc = incident_from(&row)?;
        let rows = sqlx::query(
            "SELECT r.record_json, s.last_seen_ms, s.received, a.incident_id, a.suppressed FROM alerts a
             JOIN alert_records r ON r.fingerprint = a.fingerprint JOIN alert_seen s ON s.fingerprint = a.fingerprint
             WHERE a.incident_id = ? ORDER BY a.first_seen_ms, a.fingerprint",
        )
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        let mut alerts = Vec::new();
        for r in rows {
            let a = alert_from(&r)?;
            inc.alerts.insert(a.alert.fingerprint.clone());
            alerts.push(a);
        }
        let rows = sqlx::query("SELECT at_ms, kind, detail_json FROM incident_events WHERE incident_id = ? ORDER BY id").bind(id).fetch_all(&self.pool).await?;
        let mut events = Vec::new();
        for r in rows {
            events.push(Event {
                incident: id,
                at_ms: r.try_get(0)?,
                kind: r.try_get(1)?,
                detail: decode("an incident event", &r.try_get::<String, _>(2)?)?,
            });
        }
        Ok(Some((inc, alerts, events)))
    }

    /// A person acknowledges or resolves an incident (from a process that holds no desk): moves
    /// the state forward only, with a timeline event and an audit record, in one transaction.
    /// Returns the state the incident was in, or `None` when there is no such incident.
    pub async fn set_incident_state(&self, id: i64, to: IncidentState, by: &str, now_ms: i64, actor: &str) -> Result<Option<IncidentState>> {
        let (_w, mut tx) = self.write_tx().await?;
        let Some(row) = sqlx::query("SELECT state FROM incidents WHERE id = ?").bind(id).fetch_optional(&mut *tx).await? else {
            return Ok(None);
        };
        let was = IncidentState::parse(&row.try_get::<String, _>(0)?).unwrap_or(IncidentState::Open);
        if !was.is_active() || to <= was {
            return Ok(Some(was));
        }
        let (col_ms, col_by) = match to {
            IncidentState::Acknowledged => ("acked_ms", "acked_by"),
            _ => ("resolved_ms", "resolved_by"),
        };
        sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE incidents SET state = ?, {col_ms} = ?, {col_by} = ?, updated_ms = ? WHERE id = ?")))
            .bind(to.as_str())
            .bind(now_ms)
            .bind(by)
            .bind(now_ms)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let kind = if to == IncidentState::Acknowledged { "acknowledged" } else { "resolved" };
        sqlx::query("INSERT INTO incident_events (incident_id, at_ms, kind, detail_json) VALUES (?, ?, ?, ?)")
            .bind(id)
            .bind(now_ms)
            .bind(kind)
            .bind(serde_json::json!({"by": by}).to_string())
            .execute(&mut *tx)
            .await?;
        insert_audit(&mut tx, &AuditEntry {
            at_ms: now_ms,
            actor: actor.to_string(),
            action: format!("incident_{kind}"),
            target: Some(format!("incident/{id}")),
            outcome: "ok".into(),
            detail: serde_json::json!({"by": by, "was": was.as_str()}),
        })
        .await?;
        tx.commit().await?;
        Ok(Some(was))
    }

    /// Incidents people acknowledged or resolved since `since_ms` (for a running desk to pick up
    /// what the CLI did): (id, state, by, when).
    pub async fn incident_decisions_since(&self, since_ms: i64) -> Result<Vec<(i64, IncidentState, String, i64)>> {
        let rows = sqlx::query(
            "SELECT id, state, COALESCE(resolved_by, acked_by, ''), COALESCE(resolved_ms, acked_ms, updated_ms) FROM incidents
             WHERE state IN ('acknowledged', 'resolved') AND updated_ms >= ?",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let s: String = r.try_get(1)?;
                Ok((r.try_get(0)?, IncidentState::parse(&s).unwrap_or(IncidentState::Open), r.try_get(2)?, r.try_get(3)?))
            })
            .collect()
    }

    /// Records a silence or maintenance window (with its audit record); returns its number.
    pub async fn add_silence(&self, s: &Silence, now_ms: i64, actor: &str) -> Result<i64> {
        let (_w, mut tx) = self.write_tx().await?;
        let id: i64 = sqlx::query(
            "INSERT INTO silences (matchers_json, entity_id, starts_ms, ends_ms, created_by, comment, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(encode(&s.matchers))
        .bind(&s.entity)
        .bind(s.starts_ms)
        .bind(s.ends_ms)
        .bind(&s.created_by)
        .bind(&s.comment)
        .bind(now_ms)
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        insert_audit(&mut tx, &AuditEntry {
            at_ms: now_ms,
            actor: actor.to_string(),
            action: "silence".into(),
            target: s.entity.clone(),
            outcome: "ok".into(),
            detail: serde_json::json!({"id": id, "matchers": s.matchers.iter().map(ToString::to_string).collect::<Vec<_>>(), "until_ms": s.ends_ms, "by": s.created_by, "comment": s.comment}),
        })
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Ends a silence now. False when there is no such silence or it is already over.
    pub async fn expire_silence(&self, id: i64, now_ms: i64, actor: &str) -> Result<bool> {
        let (_w, mut tx) = self.write_tx().await?;
        let n = sqlx::query("UPDATE silences SET ends_ms = ? WHERE id = ? AND ends_ms > ?").bind(now_ms).bind(id).bind(now_ms).execute(&mut *tx).await?.rows_affected();
        if n > 0 {
            insert_audit(&mut tx, &AuditEntry { at_ms: now_ms, actor: actor.into(), action: "unsilence".into(), target: None, outcome: "ok".into(), detail: serde_json::json!({"id": id}) }).await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Silences not over at `now_ms` (in force or to come).
    pub async fn silences(&self, now_ms: i64) -> Result<Vec<Silence>> {
        let rows = sqlx::query("SELECT id, matchers_json, entity_id, starts_ms, ends_ms, created_by, comment FROM silences WHERE ends_ms > ? ORDER BY id")
            .bind(now_ms)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let id: i64 = r.try_get(0)?;
                let matchers: Vec<Matcher> = decode(&format!("matchers of silence #{id}"), &r.try_get::<String, _>(1)?)?;
                let matchers = matchers
                    .into_iter()
                    .map(|m| m.compiled().map_err(|e| Error::Decode { what: format!("silence #{id}"), source: serde::de::Error::custom(e) }))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Silence {
                    id,
                    matchers,
                    entity: r.try_get(2)?,
                    starts_ms: r.try_get(3)?,
                    ends_ms: r.try_get(4)?,
                    created_by: r.try_get(5)?,
                    comment: r.try_get(6)?,
                })
            })
            .collect()
    }

    /// Records a notification sent or attempted.
    pub async fn record_notification(&self, n: &Notification) -> Result<()> {
        let (_w, mut tx) = self.write_tx().await?;
        sqlx::query("INSERT INTO notifications (incident_id, at_ms, level, channel, outcome, detail_json) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(n.incident)
            .bind(n.at_ms)
            .bind(n.level as i64)
            .bind(&n.channel)
            .bind(&n.outcome)
            .bind(n.detail.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Notifications, newest first; of one incident when given.
    pub async fn notifications(&self, incident: Option<i64>, limit: u32) -> Result<Vec<Notification>> {
        let rows = sqlx::query(
            "SELECT incident_id, at_ms, level, channel, outcome, detail_json FROM notifications WHERE (? IS NULL OR incident_id = ?) ORDER BY id DESC LIMIT ?",
        )
        .bind(incident)
        .bind(incident)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Notification {
                    incident: r.try_get(0)?,
                    at_ms: r.try_get(1)?,
                    level: r.try_get::<i64, _>(2)? as u32,
                    channel: r.try_get(3)?,
                    outcome: r.try_get(4)?,
                    detail: decode("a notification", &r.try_get::<String, _>(5)?)?,
                })
            })
            .collect()
    }

    /// Per alert name, what its closed incidents since `since_ms` say: how many, how many were
    /// noise (resolved by their alerts within `noise_ms`, never acknowledged, no fix proposed).
    pub async fn rule_stats(&self, since_ms: i64, noise_ms: i64) -> Result<Vec<RuleStats>> {
        let rows = sqlx::query(
            "WITH members AS (
                 SELECT DISTINCT e.incident_id AS id, a.name AS name, a.severity AS severity
                 FROM incident_events e JOIN alerts a ON a.fingerprint = json_extract(e.detail_json, '$.alert')
                 WHERE e.kind = 'alert_added' AND e.at_ms >= ?1)
             SELECT m.name, COUNT(*),
                 SUM(CASE WHEN i.resolved_by = 'alerts' AND i.acked_ms IS NULL AND i.resolved_ms - i.opened_ms <= ?2
                          AND NOT EXISTS (SELECT 1 FROM incident_events r WHERE r.incident_id = i.id AND r.kind = 'remedy_proposed')
                     THEN 1 ELSE 0 END),
                 SUM(CASE WHEN i.acked_ms IS NOT NULL THEN 1 ELSE 0 END),
                 MAX(CASE WHEN m.severity IN ('critical', 'page', 'emergency') THEN 1 ELSE 0 END),
                 COALESCE(AVG((i.resolved_ms - i.opened_ms) / 60000.0), 0)
             FROM members m JOIN incidents i ON i.id = m.id
             WHERE i.state = 'resolved'
             GROUP BY m.name ORDER BY COUNT(*) DESC, m.name",
        )
        .bind(since_ms)
        .bind(noise_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RuleStats {
                    name: r.try_get(0)?,
                    incidents: r.try_get(1)?,
                    noise: r.try_get(2)?,
                    acknowledged: r.try_get(3)?,
                    critical: r.try_get::<i64, _>(4)? == 1,
                    mean_minutes_to_resolve: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// Per runbook since `since_ms`: fixes proposed, withheld, failed, and those after which the
    /// incident's alerts resolved.
    pub async fn runbook_stats(&self, since_ms: i64) -> Result<Vec<RunbookStats>> {
        let rows = sqlx::query(
            "SELECT json_extract(e.detail_json, '$.runbook') AS rb,
                 SUM(e.kind = 'remedy_proposed'), SUM(e.kind = 'remedy_withheld'), SUM(e.kind = 'remedy_failed'),
                 SUM(CASE WHEN e.kind = 'remedy_proposed' AND i.state = 'resolved' AND i.resolved_by = 'alerts' THEN 1 ELSE 0 END)
             FROM incident_events e JOIN incidents i ON i.id = e.incident_id
             WHERE e.kind IN ('remedy_proposed', 'remedy_withheld', 'remedy_failed') AND e.at_ms >= ?
             GROUP BY rb ORDER BY rb",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(RunbookStats { runbook: r.try_get::<Option<String>, _>(0)?.unwrap_or_default(), proposed: r.try_get(1)?, withheld: r.try_get(2)?, failed: r.try_get(3)?, fixed: r.try_get(4)? }))
            .collect()
    }

    /// When a firing alert of this name (`Watchdog`) was last received, if ever.
    pub async fn last_seen_named(&self, name: &str) -> Result<Option<i64>> {
        let r = sqlx::query("SELECT MAX(s.last_seen_ms) FROM alerts a JOIN alert_seen s ON s.fingerprint = a.fingerprint WHERE a.name = ? AND a.status = 'firing'")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(r.try_get(0)?)
    }

    /// Alerts received, summed: (distinct fingerprints, total received).
    pub async fn alert_totals(&self) -> Result<(i64, i64)> {
        let r = sqlx::query("SELECT COUNT(*), COALESCE(SUM(received), 0) FROM alert_seen").fetch_one(&self.pool).await?;
        Ok((r.try_get(0)?, r.try_get(1)?))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use labops_aiops::desk::{Desk, Settings};
    use labops_aiops::intake::{fingerprint, Alert, Source};
    use labops_core::inventory::Inventory;

    use super::*;

    fn alert(name: &str) -> Alert {
        let labels = BTreeMap::from([("alertname".to_string(), name.to_string()), ("severity".to_string(), "critical".to_string())]);
        Alert { source: Source::Generic, fingerprint: fingerprint(&labels), status: Status::Firing, labels, annotations: BTreeMap::new(), starts_at_ms: None, ends_at_ms: None, url: None }
    }

    async fn save(store: &Store, desk: &Desk, d: &labops_aiops::desk::Delta) {
        let alerts: Vec<_> = d.alerts.iter().filter_map(|f| desk.alert(f)).collect();
        let incidents: Vec<_> = d.incidents.iter().filter_map(|i| desk.incident(*i)).collect();
        let (ta, ti) = d.only_touched();
        let seen: Vec<_> = ta.iter().filter_map(|f| desk.alert(f)).map(|r| (r.alert.fingerprint.as_str(), r.last_seen_ms, r.received)).collect();
        let rep: Vec<_> = ti.iter().filter_map(|i| desk.incident(*i)).map(|i| (i.id, i.updated_ms, i.repeats)).collect();
        store.save_alerting(&alerts, &incidents, &seen, &rep, &d.events).await.unwrap();
    }

    #[tokio::test]
    async fn a_desk_round_trips_through_the_store_and_people_win_over_stale_writes() {
        let store = Store::in_memory().await.unwrap();
        let inv = Inventory::default();
        let mut desk = Desk::new(Settings::default());
        let d = desk.ingest(vec![alert("A"), alert("B")], &inv, 1000);
        save(&store, &desk, &d).await;
        // Repeats write only their counters.
        let d = desk.ingest(vec![alert("A"), alert("A")], &inv, 2000);
        assert!(d.alerts.is_empty() && !d.touched_alerts.is_empty());
        save(&store, &desk, &d).await;
        let (alerts, incidents, _) = store.load_alerting(0, 3000).await.unwrap();
        let a = alerts.iter().find(|r| r.alert.name() == "A").unwrap();
        assert_eq!((a.received, a.last_seen_ms), (3, 2000));
        let ia = incidents.iter().find(|i| i.alerts.contains(&a.alert.fingerprint)).unwrap();
        assert_eq!(ia.repeats, 2);
        assert_eq!(store.alert_totals().await.unwrap(), (2, 4));
        // A person acknowledges from another process; the desk's stale view does not undo it.
        let id = ia.id;
        assert_eq!(store.set_incident_state(id, IncidentState::Acknowledged, "alice", 4000, "cli").await.unwrap(), Some(IncidentState::Open));
        let d = desk.ingest(vec![alert("C")], &inv, 5000);
        let stale: Vec<&Incident> = vec![desk.incident(id).unwrap()];
        store.save_alerting(&[], &stale, &[], &[], &d.events).await.unwrap();
        let (inc, alerts, events) = store.incident(id).await.unwrap().unwrap();
        assert_eq!(inc.state, IncidentState::Acknowledged);
        assert_eq!(inc.acked.as_ref().unwrap().1, "alice");
        assert_eq!(alerts.len(), 1);
        assert!(events.iter().any(|e| e.kind == "acknowledged"));
        // Resolved cannot be acknowledged again; unknown incidents say so.
        assert_eq!(store.set_incident_state(id, IncidentState::Resolved, "bob", 6000, "cli").await.unwrap(), Some(IncidentState::Acknowledged));
        assert_eq!(store.set_incident_state(id, IncidentState::Acknowledged, "bob", 7000, "cli").await.unwrap(), Some(IncidentState::Resolved));
        assert_eq!(store.set_incident_state(999, IncidentState::Resolved, "bob", 7000, "cli").await.unwrap(), None);
        assert!(store.audit_recent(10).await.unwrap().iter().any(|e| e.action == "incident_acknowledged" && e.actor == "cli"));
        assert_eq!(store.incident_decisions_since(0).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn outcomes_say_which_alerts_are_noise() {
        let store = Store::in_memory().await.unwrap();
        let inv = Inventory::default();
        let mut desk = Desk::new(Settings::default());
        let mut t = 0;
        // "Blip" fires and resolves by itself within a minute, six times; once a person acks it.
        for k in 0..7 {
            t += 3_600_000;
            let d = desk.ingest(vec![alert("Blip")], &inv, t);
            save(&store, &desk, &d).await;
            if k == 6 {
                let id = desk.alert(&alert("Blip").fingerprint).unwrap().incident.unwrap();
                let d = desk.acknowledge(id, "alice", t + 1).unwrap();
                save(&store, &desk, &d).await;
            }
            let mut r = alert("Blip");
            r.status = Status::Resolved;
            let d = desk.ingest(vec![r], &inv, t + 60_000);
            save(&store, &desk, &d).await;
        }
        // "Slow" takes an hour each time.
        for _ in 0..5 {
            t += 7_200_000;
            let d = desk.ingest(vec![alert("Slow")], &inv, t);
            save(&store, &desk, &d).await;
            let mut r = alert("Slow");
            r.status = Status::Resolved;
            let d = desk.ingest(vec![r], &inv, t + 3_600_000);
            save(&store, &desk, &d).await;
        }
        let stats = store.rule_stats(0, 5 * 60_000).await.unwrap();
        let blip = stats.iter().find(|s| s.name == "Blip").unwrap();
        assert_eq!((blip.incidents, blip.noise, blip.acknowledged), (7, 6, 1));
        assert!(blip.critical, "alert() makes critical alerts");
        assert!((blip.mean_minutes_to_resolve - 1.0).abs() < 0.01);
        let slow = stats.iter().find(|s| s.name == "Slow").unwrap();
        assert_eq!((slow.incidents, slow.noise), (5, 0));
        assert!((slow.mean_minutes_to_resolve - 60.0).abs() < 0.01);
    }

    #[tokio::test]
    async fn silences_are_stored_expire_and_keep_their_patterns() {
        let store = Store::in_memory().await.unwrap();
        let s = Silence { id: 0, matchers: vec![Matcher::parse("instance=~\"pve-0[1-3].*\"").unwrap()], entity: None, starts_ms: 0, ends_ms: 10_000, created_by: "alice".into(), comment: "disk swap".into() };
        let id = store.add_silence(&s, 0, "cli").await.unwrap();
        let got = store.silences(5_000).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].matchers, s.matchers);
        assert!(store.expire_silence(id, 6_000, "cli").await.unwrap());
        assert!(!store.expire_silence(id, 7_000, "cli").await.unwrap());
        assert!(store.silences(6_500).await.unwrap().is_empty());
    }
}
