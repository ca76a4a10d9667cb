//! Durable state for labops: an embedded SQLite database with versioned migrations.
//!
//! The store is the only crate that speaks SQL. It keeps what must survive a restart:
//!
//! - the last good snapshot of each inventory source, so a restarted labops answers at once with
//!   known (and age-marked) data while the sources are fetched again;
//! - the audit log: every action taken through any interface;
//! - workflow runs ([`runs`]): runs, steps, progress events, driver leases and entity locks;
//! - change records and the embedded forge's issues ([`changes`]);
//! - alerting ([`alerting`]): alerts by fingerprint, incidents and their timelines, silences,
//!   notifications;
//! - the AI call log ([`ai`]).
//!
//! Migrations live in `migrations/` and run on [`Store::open`]. Queries use `sqlx::query` with
//! bound parameters (no compile-time database needed).

pub mod ai;
pub mod alerting;
pub mod changes;
pub mod runs;
pub mod wishlist;

use std::path::Path;
use std::str::FromStr;

use labops_core::inventory::Part;
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::Row;

/// What can go wrong with the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database file could not be opened or created.
    #[error("cannot open the state database at {path}: {source}; check that the directory is writable or pass --data-dir")]
    Open {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("cannot migrate the state database: {0}; the file may come from a newer labops")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The lock that serialises migrations between processes could not be taken.
    #[error("cannot lock the state database while opening it: {0}; check that the directory is writable or pass --data-dir")]
    Lock(String),
    /// A query failed.
    #[error("state database error: {0}")]
    Sql(#[from] sqlx::Error),
    /// Stored JSON did not decode.
    #[error("stored data for {what} does not decode: {source}")]
    Decode {
        /// Which record.
        what: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// Result with the store's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A handle on the state database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    /// Readers.
    pool: SqlitePool,
    /// The one connection this process writes through: its page cache stays warm (a write on
    /// another connection of the pool would find its cache stale and read the pages again).
    write_pool: SqlitePool,
    /// Serialises this process's writes: SQLite has one writer at a time, and connections of
    /// one pool competing for it would sleep in SQLite's busy handler instead of queueing.
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// A source snapshot as stored.
#[derive(Debug, Clone)]
pub struct StoredSnapshot {
    /// Source name.
    pub source: String,
    /// Where it came from.
    pub endpoint: String,
    /// When it was taken, Unix milliseconds.
    pub taken_ms: i64,
    /// The data.
    pub part: Part,
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Unix milliseconds.
    pub at_ms: i64,
    /// Who: `cli`, `mcp:stdio`, `mcp:http`, `rest`, or an approver's name.
    pub actor: String,
    /// What: a tool or command name.
    pub action: String,
    /// On what entity, when there is one.
    pub target: Option<String>,
    /// `ok`, `refused`, `error: ...`.
    pub outcome: String,
    /// Arguments and extra facts.
    pub detail: serde_json::Value,
}

/// Audit records per `INSERT` statement: six bound values each, well under SQLite's limit of
/// 32,766 per statement.
pub const AUDIT_ROWS_PER_INSERT: usize = 1000;

/// Appends one audit record inside a transaction, so a state change and its record commit
/// together.
pub(crate) async fn insert_audit(tx: &mut sqlx::SqliteConnection, e: &AuditEntry) -> Result<()> {
    sqlx::query("INSERT INTO audit_log (at_ms, actor, action, target, outcome, detail_json) VALUES (?, ?, ?, ?, ?, ?)")
        .bind(e.at_ms)
        .bind(&e.actor)
        .bind(&e.action)
        .bind(&e.target)
        .bind(&e.outcome)
        .bind(e.detail.to_string())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

impl Store {
    /// Opens (creating when needed) the database file and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        // Two labops processes opening a new database at once would race to create it (switching
        // it to WAL needs an exclusive lock) and to apply the migrations; a lock file beside it
        // makes the second wait until the first is done.
        let lock_path = path.with_extension("open.lock");
        let lock = tokio::task::spawn_blocking(move || {
            let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path)?;
            f.lock()?;
            Ok::<_, std::io::Error>(f)
        })
        .await
        .map_err(|e| Error::Lock(e.to_string()))?
        .map_err(|e| Error::Lock(e.to_string()))?;
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .expect("static URL parses")
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(5));
        // An embedded database's connections do not go stale: no ping before each use (a round
        // trip to the connection's worker thread per transaction otherwise).
        let write_pool = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(opts.clone())
            .await
            .map_err(|source| Error::Open { path: path.display().to_string(), source })?;
        MIGRATOR.run(&write_pool).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(3)
            .test_before_acquire(false)
            .connect_with(opts)
            .await
            .map_err(|source| Error::Open { path: path.display().to_string(), source })?;
        drop(lock);
        Ok(Self { pool, write_pool, writer: Default::default() })
    }

    /// An in-memory database, for tests.
    pub async fn in_memory() -> Result<Self> {
        let opts = SqliteConnectOptions::from_str("sqlite::memory:")?;
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(opts).await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { write_pool: pool.clone(), pool, writer: Default::default() })
    }

    /// A write transaction, holding this process's write turn. `BEGIN IMMEDIATE` takes SQLite's
    /// write lock up front: a deferred transaction that reads and then writes can fail with
    /// SQLITE_BUSY when another process wrote in between.
    pub(crate) async fn write_tx(&self) -> Result<(tokio::sync::OwnedMutexGuard<()>, sqlx::Transaction<'static, sqlx::Sqlite>)> {
        let turn = self.writer.clone().lock_owned().await;
        Ok((turn, self.write_pool.begin_with("BEGIN IMMEDIATE").await?))
    }

    /// The schema version (number of the last applied migration).
    pub async fn schema_version(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Replaces the stored snapshot of one source.
    pub async fn save_snapshot(&self, source: &str, endpoint: &str, taken_ms: i64, part: &Part) -> Result<()> {
        let json = serde_json::to_string(part)
            .map_err(|source_err| Error::Decode { what: source.to_string(), source: source_err })?;
        let (_w, mut tx) = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO source_snapshots (source, endpoint, taken_ms, part_json) VALUES (?, ?, ?, ?)
             ON CONFLICT (source) DO UPDATE SET endpoint = excluded.endpoint,
                 taken_ms = excluded.taken_ms, part_json = excluded.part_json",
        )
        .bind(source)
        .bind(endpoint)
        .bind(taken_ms)
        .bind(json)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every stored snapshot.
    pub async fn load_snapshots(&self) -> Result<Vec<StoredSnapshot>> {
        let rows = sqlx::query("SELECT source, endpoint, taken_ms, part_json FROM source_snapshots ORDER BY source")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                let source: String = r.try_get(0)?;
                let json: String = r.try_get(3)?;
                let part = serde_json::from_str(&json)
                    .map_err(|e| Error::Decode { what: format!("snapshot of {source}"), source: e })?;
                Ok(StoredSnapshot { endpoint: r.try_get(1)?, taken_ms: r.try_get(2)?, source, part })
            })
            .collect()
    }

    /// Appends one record to the audit log.
    pub async fn audit(&self, e: &AuditEntry) -> Result<()> {
        self.audit_batch(std::slice::from_ref(e)).await
    }

    /// Appends records to the audit log, all of them or none. Up to [`AUDIT_ROWS_PER_INSERT`]
    /// records go in as one multi-row `INSERT` (atomic on its own): every statement is a round
    /// trip to the connection's worker thread, and the audit writer runs after every few tool
    /// calls, on the same two cores as the answers.
    pub async fn audit_batch(&self, entries: &[AuditEntry]) -> Result<()> {
        fn insert(rows: &[AuditEntry]) -> sqlx::QueryBuilder<sqlx::Sqlite> {
            let mut q = sqlx::QueryBuilder::new("INSERT INTO audit_log (at_ms, actor, action, target, outcome, detail_json) ");
            q.push_values(rows, |mut b, e| {
                b.push_bind(e.at_ms)
                    .push_bind(&e.actor)
                    .push_bind(&e.action)
                    .push_bind(&e.target)
                    .push_bind(&e.outcome)
                    .push_bind(e.detail.to_string());
            });
            q
        }
        if entries.is_empty() {
            return Ok(());
        }
        if entries.len() <= AUDIT_ROWS_PER_INSERT {
            let _turn = self.writer.lock().await;
            insert(entries).build().persistent(false).execute(&self.write_pool).await?;
            return Ok(());
        }
        let (_w, mut tx) = self.write_tx().await?;
        for rows in entries.chunks(AUDIT_ROWS_PER_INSERT) {
            insert(rows).build().persistent(false).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The newest `limit` audit records, newest first.
    pub async fn audit_recent(&self, limit: u32) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT at_ms, actor, action, target, outcome, detail_json FROM audit_log ORDER BY id DESC LIMIT ?",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let detail: String = r.try_get(5)?;
                Ok(AuditEntry {
                    at_ms: r.try_get(0)?,
                    actor: r.try_get(1)?,
                    action: r.try_get(2)?,
                    target: r.try_get(3)?,
                    outcome: r.try_get(4)?,
                    detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use labops_core::inventory::{Entity, EntityKind};

    #[tokio::test]
    async fn snapshots_and_audit_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/labops.db");
        {
            let store = Store::open(&path).await.unwrap();
            assert_eq!(store.schema_version().await.unwrap(), 7);
            let mut part = Part::default();
            part.entities.push(Entity::new(EntityKind::Vm, "vm/108", "k3s-vm-still-fawn", "running", "proxmox"));
            store.save_snapshot("proxmox", "https://127.0.0.1:8006", 42, &part).await.unwrap();
            part.entities[0].status = "stopped".into();
            store.save_snapshot("proxmox", "https://127.0.0.1:8006", 43, &part).await.unwrap();
            store
                .audit(&AuditEntry {
                    at_ms: 7,
                    actor: "mcp:stdio".into(),
                    action: "resolve".into(),
                    target: Some("vm/108".into()),
                    outcome: "ok".into(),
                    detail: serde_json::json!({"name": "108"}),
                })
                .await
                .unwrap();
        }
        let store = Store::open(&path).await.unwrap();
        let snaps = store.load_snapshots().await.unwrap();
        assert_eq!(snaps.len(), 1);
        assert_eq!(snaps[0].taken_ms, 43);
        assert_eq!(snaps[0].part.entities[0].status, "stopped");
        let audit = store.audit_recent(10).await.unwrap();
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0].detail["name"], "108");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn processes_opening_a_new_database_at_once_all_get_it_migrated() {
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(format!("state-{round}/labops.db"));
            let opens: Vec<_> = (0..8).map(|_| tokio::spawn({
                let path = path.clone();
                async move { Store::open(&path).await.map(|_| ()).map_err(|e| e.to_string()) }
            })).collect();
            for o in opens {
                o.await.unwrap().unwrap();
            }
            assert_eq!(Store::open(&path).await.unwrap().schema_version().await.unwrap(), 7);
        }
    }

    #[tokio::test]
    async fn audit_batches_keep_every_record_and_its_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("labops.db")).await.unwrap();
        let entry = |i: usize| AuditEntry {
            at_ms: i as i64,
            actor: "mcp:stdio".into(),
            action: format!("call{i}"),
            target: (i % 2 == 0).then(|| format!("vm/{i}")),
            outcome: "ok".into(),
            detail: serde_json::json!({"i": i, "quote": "it's \"x\""}),
        };
        // One statement, then more records than one statement takes (a transaction of several).
        store.audit_batch(&(0..3).map(entry).collect::<Vec<_>>()).await.unwrap();
        let many = AUDIT_ROWS_PER_INSERT * 2 + 7;
        store.audit_batch(&(3..3 + many).map(entry).collect::<Vec<_>>()).await.unwrap();
        store.audit_batch(&[]).await.unwrap();
        let got = store.audit_recent(u32::MAX).await.unwrap();
        assert_eq!(got.len(), 3 + many);
        for (k, e) in got.iter().rev().enumerate() {
            let want = entry(k);
            assert_eq!((e.at_ms, &e.action, &e.target, &e.detail), (want.at_ms, &want.action, &want.target, &want.detail));
        }
    }

    #[tokio::test]
    async fn an_unwritable_path_says_what_to_do() {
        let err = Store::open(Path::new("/proc/labops/state.db")).await.unwrap_err().to_string();
        assert!(err.contains("--data-dir"), "{err}");
    }
}
