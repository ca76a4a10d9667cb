//! The AI call log: one row per model call, written with its audit record in one transaction.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::{AuditEntry, Result, Store, insert_audit};

/// One model call as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AiCall {
    /// Unix milliseconds.
    pub at_ms: i64,
    /// Who asked (`cli`, `mcp:stdio`, ...).
    pub actor: String,
    /// The task it served, when part of one.
    pub task: Option<String>,
    /// `local`, `cloud`, `sampling` or `refused`.
    pub route: String,
    /// `provider/model`, or `none`.
    pub provider: String,
    /// `sensitive` or `public`.
    pub privacy: String,
    /// The purpose the router saw.
    pub purpose: String,
    /// How many values were replaced by placeholders.
    pub redactions: i64,
    /// Prompt tokens.
    pub input_tokens: i64,
    /// Generated tokens.
    pub output_tokens: i64,
    /// US dollars.
    pub cost_usd: f64,
    /// Wall time.
    pub latency_ms: i64,
    /// `ok`, `refused: ...`, `error: ...`.
    pub outcome: String,
    /// The router's reason, the kinds of what was redacted, fallbacks.
    pub detail: serde_json::Value,
}

/// Calls summed by provider.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AiUsageRow {
    /// `provider/model`.
    pub provider: String,
    /// `local`, `cloud`, `sampling`, `refused`.
    pub route: String,
    /// Calls.
    pub calls: i64,
    /// Calls that failed or were refused.
    pub failed: i64,
    /// Prompt tokens.
    pub input_tokens: i64,
    /// Generated tokens.
    pub output_tokens: i64,
    /// US dollars.
    pub cost_usd: f64,
    /// Mean wall time.
    pub mean_latency_ms: f64,
    /// Values redacted.
    pub redactions: i64,
}

impl Store {
    /// Records a model call, and its audit record in the same transaction.
    pub async fn record_ai_call(&self, c: &AiCall) -> Result<()> {
        let (_w, mut tx) = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO ai_calls (at_ms, actor, task, route, provider, privacy, purpose, redactions, input_tokens, output_tokens, cost_usd, latency_ms, outcome, detail_json)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(c.at_ms)
        .bind(&c.actor)
        .bind(&c.task)
        .bind(&c.route)
        .bind(&c.provider)
        .bind(&c.privacy)
        .bind(&c.purpose)
        .bind(c.redactions)
        .bind(c.input_tokens)
        .bind(c.output_tokens)
        .bind(c.cost_usd)
        .bind(c.latency_ms)
        .bind(&c.outcome)
        .bind(c.detail.to_string())
        .execute(&mut *tx)
        .await?;
        let audit = AuditEntry {
            at_ms: c.at_ms,
            actor: c.actor.clone(),
            action: "ai_call".into(),
            target: Some(c.provider.clone()),
            outcome: c.outcome.clone(),
            detail: serde_json::json!({"route": c.route, "privacy": c.privacy, "redactions": c.redactions, "cost_usd": c.cost_usd, "task": c.task}),
        };
        insert_audit(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(())
    }

    /// US dollars spent on calls that left the machine since `since_ms`.
    pub async fn ai_spent_since(&self, since_ms: i64) -> Result<f64> {
        let row = sqlx::query("SELECT COALESCE(SUM(cost_usd), 0.0) FROM ai_calls WHERE at_ms >= ?")
            .bind(since_ms)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Calls since `since_ms`, summed by provider and route.
    pub async fn ai_usage_since(&self, since_ms: i64) -> Result<Vec<AiUsageRow>> {
        let rows = sqlx::query(
            "SELECT provider, route, COUNT(*), SUM(outcome != 'ok'), SUM(input_tokens), SUM(output_tokens), SUM(cost_usd), AVG(latency_ms), SUM(redactions)
             FROM ai_calls WHERE at_ms >= ? GROUP BY provider, route ORDER BY SUM(cost_usd) DESC, COUNT(*) DESC",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(AiUsageRow {
                    provider: r.try_get(0)?,
                    route: r.try_get(1)?,
                    calls: r.try_get(2)?,
                    failed: r.try_get(3)?,
                    input_tokens: r.try_get(4)?,
                    output_tokens: r.try_get(5)?,
                    cost_usd: r.try_get(6)?,
                    mean_latency_ms: r.try_get(7)?,
                    redactions: r.try_get(8)?,
                })
            })
            .collect()
    }

    /// The newest `limit` calls, newest first.
    pub async fn ai_calls_recent(&self, limit: u32) -> Result<Vec<AiCall>> {
        let rows = sqlx::query(
            "SELECT at_ms, actor, task, route, provider, privacy, purpose, redactions, input_tokens, output_tokens, cost_usd, latency_ms, outcome, detail_json
             FROM ai_calls ORDER BY id DESC LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let detail: String = r.try_get(13)?;
                Ok(AiCall {
                    at_ms: r.try_get(0)?,
                    actor: r.try_get(1)?,
                    task: r.try_get(2)?,
                    route: r.try_get(3)?,
                    provider: r.try_get(4)?,
                    privacy: r.try_get(5)?,
                    purpose: r.try_get(6)?,
                    redactions: r.try_get(7)?,
                    input_tokens: r.try_get(8)?,
                    output_tokens: r.try_get(9)?,
                    cost_usd: r.try_get(10)?,
                    latency_ms: r.try_get(11)?,
                    outcome: r.try_get(12)?,
                    detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(at_ms: i64, provider: &str, route: &str, cost: f64, outcome: &str) -> AiCall {
        AiCall {
            at_ms,
            actor: "cli".into(),
            task: None,
            route: route.into(),
            provider: provider.into(),
            privacy: "public".into(),
            purpose: "research".into(),
            redactions: 2,
            input_tokens: 100,
            output_tokens: 10,
            cost_usd: cost,
            latency_ms: 40,
            outcome: outcome.into(),
            detail: serde_json::json!({}),
        }
    }

    #[tokio::test]
    async fn calls_sum_into_spend_and_usage_and_are_audited() {
        let s = Store::in_memory().await.unwrap();
        s.record_ai_call(&call(1_000, "anthropic/claude", "cloud", 0.25, "ok")).await.unwrap();
        s.record_ai_call(&call(5_000, "anthropic/claude", "cloud", 0.5, "error: 529")).await.unwrap();
        s.record_ai_call(&call(6_000, "ollama/qwen", "local", 0.0, "ok")).await.unwrap();
        assert!((s.ai_spent_since(0).await.unwrap() - 0.75).abs() < 1e-9);
        assert!((s.ai_spent_since(2_000).await.unwrap() - 0.5).abs() < 1e-9, "only calls since the window start count");
        let u = s.ai_usage_since(0).await.unwrap();
        assert_eq!(u.len(), 2);
        assert_eq!((u[0].provider.as_str(), u[0].calls, u[0].failed, u[0].input_tokens), ("anthropic/claude", 2, 1, 200));
        assert_eq!(s.ai_calls_recent(10).await.unwrap()[0].provider, "ollama/qwen");
        let audit = s.audit_recent(10).await.unwrap();
        assert_eq!(audit.iter().filter(|a| a.action == "ai_call").count(), 3, "every call is in the audit log too");
    }
}
