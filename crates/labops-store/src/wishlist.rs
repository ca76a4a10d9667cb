//! Wishlist items and the outcomes the ROI model learns from. Every write is audited.

use labops_core::wishlist::{Item, Outcome};
use sqlx::Row;

use crate::{insert_audit, AuditEntry, Error, Result, Store};

fn status_str(i: &Item) -> String {
    serde_json::to_value(i.status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn decode(id: i64, json: &str) -> Result<Item> {
    serde_json::from_str(json).map_err(|e| Error::Decode { what: format!("wishlist item #{id}"), source: e })
}

impl Store {
    /// Adds an item (its `id` is assigned) as `actor`; returns the id.
    pub async fn add_wish(&self, item: &Item, actor: &str, now_ms: i64) -> Result<i64> {
        let (_w, mut tx) = self.write_tx().await?;
        let id: i64 = sqlx::query("INSERT INTO wishlist_items (status, category, item_json, updated_ms) VALUES (?, ?, '{}', ?) RETURNING id")
            .bind(status_str(item))
            .bind(&item.category)
            .bind(now_ms)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        let mut stored = item.clone();
        stored.id = id;
        sqlx::query("UPDATE wishlist_items SET item_json = ? WHERE id = ?").bind(serde_json::to_string(&stored).unwrap_or_default()).bind(id).execute(&mut *tx).await?;
        insert_audit(&mut tx, &AuditEntry { at_ms: now_ms, actor: actor.into(), action: "wishlist_add".into(), target: Some(format!("wish/{id}")), outcome: "ok".into(), detail: serde_json::json!({"title": item.title, "source": item.source}) }).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Replaces an item (by its id) as `actor`, saying `what` changed.
    pub async fn update_wish(&self, item: &Item, actor: &str, what: &str, now_ms: i64) -> Result<()> {
        let (_w, mut tx) = self.write_tx().await?;
        sqlx::query("UPDATE wishlist_items SET status = ?, category = ?, item_json = ?, updated_ms = ? WHERE id = ?")
            .bind(status_str(item))
            .bind(&item.category)
            .bind(serde_json::to_string(item).unwrap_or_default())
            .bind(now_ms)
            .bind(item.id)
            .execute(&mut *tx)
            .await?;
        insert_audit(&mut tx, &AuditEntry { at_ms: now_ms, actor: actor.into(), action: "wishlist_update".into(), target: Some(format!("wish/{}", item.id)), outcome: "ok".into(), detail: serde_json::json!({"what": what, "status": item.status}) }).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every item, in id order.
    pub async fn wishes(&self) -> Result<Vec<Item>> {
        let rows = sqlx::query("SELECT id, item_json FROM wishlist_items ORDER BY id").fetch_all(&self.pool).await?;
        rows.iter().map(|r| decode(r.try_get(0)?, &r.try_get::<String, _>(1)?)).collect()
    }

    /// One item.
    pub async fn wish(&self, id: i64) -> Result<Option<Item>> {
        match sqlx::query("SELECT item_json FROM wishlist_items WHERE id = ?").bind(id).fetch_optional(&self.pool).await? {
            Some(r) => Ok(Some(decode(id, &r.try_get::<String, _>(0)?)?)),
            None => Ok(None),
        }
    }

    /// Records outcomes and the item's new state in one transaction.
    pub async fn record_outcomes(&self, item: &Item, outcomes: &[Outcome], actor: &str, now_ms: i64) -> Result<()> {
        let (_w, mut tx) = self.write_tx().await?;
        for o in outcomes {
            sqlx::query("INSERT INTO wishlist_outcomes (item_id, category, factor, estimated, predicted, actual, at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)")
                .bind(o.item)
                .bind(&o.category)
                .bind(&o.factor)
                .bind(o.estimated)
                .bind(o.predicted)
                .bind(o.actual)
                .bind(o.at_ms)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE wishlist_items SET status = ?, item_json = ?, updated_ms = ? WHERE id = ?")
            .bind(status_str(item))
            .bind(serde_json::to_string(item).unwrap_or_default())
            .bind(now_ms)
            .bind(item.id)
            .execute(&mut *tx)
            .await?;
        insert_audit(&mut tx, &AuditEntry {
            at_ms: now_ms,
            actor: actor.into(),
            action: "wishlist_outcome".into(),
            target: Some(format!("wish/{}", item.id)),
            outcome: "ok".into(),
            detail: serde_json::json!({"outcomes": outcomes.iter().map(|o| serde_json::json!({"factor": o.factor, "estimated": o.estimated, "actual": o.actual})).collect::<Vec<_>>()}),
        })
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every outcome, oldest first.
    pub async fn wish_outcomes(&self) -> Result<Vec<Outcome>> {
        let rows = sqlx::query("SELECT item_id, category, factor, estimated, predicted, actual, at_ms FROM wishlist_outcomes ORDER BY at_ms, id").fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| Ok(Outcome { item: r.try_get(0)?, category: r.try_get(1)?, factor: r.try_get(2)?, estimated: r.try_get(3)?, predicted: r.try_get(4)?, actual: r.try_get(5)?, at_ms: r.try_get(6)? }))
            .collect()
    }
}
