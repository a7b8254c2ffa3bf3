//! Which generation each host's unit runs, recorded where every scheduler host can read it
//! while HDFS cannot be reached: in Airflow's metadata database.
//!
//! All-active hosts each parse the DAG folder. If two of them parsed different generations,
//! their DAG processors would overwrite each other's serialized DAGs with old and new code.
//! While the store is readable every host follows its head; while it is not, a host cannot
//! ask for the head, but it can read here the newest generation any host has run (the
//! *floor*) and stay out until its cache holds it. See "Identical DAGs" in docs/DESIGN.md.

use std::sync::Mutex;

use async_trait::async_trait;

use crate::metadb::{on_pool, MetaDb};

/// The newest generation a host recorded running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Floor {
    /// The generation.
    pub generation: u64,
    /// The candidate id of a host that ran it.
    pub candidate: String,
}

/// A record that could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RecordError(pub String);

/// Where hosts record the generation their unit runs.
#[async_trait]
pub trait RunningRecord: Send + Sync {
    /// Records that `candidate`'s unit runs `generation` (of tree `tree_id`).
    async fn record(
        &self,
        candidate: &str,
        generation: u64,
        tree_id: &str,
    ) -> Result<(), RecordError>;

    /// The newest generation any host recorded; `None` before the first record.
    async fn floor(&self) -> Result<Option<Floor>, RecordError>;
}

/// A record in memory, for tests of the rules that use it.
#[derive(Debug, Default)]
pub struct MemoryRecord {
    rows: Mutex<Vec<(String, u64)>>,
}

#[async_trait]
impl RunningRecord for MemoryRecord {
    async fn record(&self, candidate: &str, generation: u64, _: &str) -> Result<(), RecordError> {
        let mut rows = self.rows.lock().expect("not poisoned");
        rows.retain(|(c, _)| c != candidate);
        rows.push((candidate.to_string(), generation));
        Ok(())
    }

    async fn floor(&self) -> Result<Option<Floor>, RecordError> {
        let rows = self.rows.lock().expect("not poisoned");
        Ok(rows
            .iter()
            .max_by_key(|(_, g)| *g)
            .map(|(candidate, generation)| Floor {
                generation: *generation,
                candidate: candidate.clone(),
            }))
    }
}

/// The record in Airflow's metadata database: table `dagfs_running_generation`, one row per
/// store and candidate (created on first use; every host's `CREATE TABLE IF NOT EXISTS` may
/// race, and losing that race is not an error).
pub struct DatabaseRecord {
    db: MetaDb,
    /// blake3 of the store URL, hex: the rows of this store.
    store_key: String,
    store: String,
}

const TABLE: &str = "dagfs_running_generation";

impl DatabaseRecord {
    /// The record of `store_url`'s hosts in `db`, creating its table if missing.
    pub async fn open(db: MetaDb, store_url: &str) -> Result<DatabaseRecord, RecordError> {
        let record = DatabaseRecord {
            store_key: blake3::hash(store_url.as_bytes()).to_hex().to_string(),
            store: store_url.to_string(),
            db,
        };
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (store_key VARCHAR(64) NOT NULL, \
             candidate VARCHAR(255) NOT NULL, store VARCHAR(2048) NOT NULL, \
             generation BIGINT NOT NULL, tree_id VARCHAR(64) NOT NULL, \
             updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, \
             PRIMARY KEY (store_key, candidate))"
        );
        let created = on_pool!(&record.db.pool, |pool| {
            sqlx::query(&ddl).execute(pool).await.map(drop)
        });
        match created {
            Ok(()) => Ok(record),
            // Two PostgreSQL sessions creating the same table at once: one wins, the other
            // fails on the catalog's unique index; the table exists either way.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("23505" | "42P07")) =>
            {
                Ok(record)
            }
            Err(e) => Err(record.error(e)),
        }
    }

    fn error(&self, e: sqlx::Error) -> RecordError {
        RecordError(self.db.query_error(e).to_string())
    }
}

#[async_trait]
impl RunningRecord for DatabaseRecord {
    async fn record(
        &self,
        candidate: &str,
        generation: u64,
        tree_id: &str,
    ) -> Result<(), RecordError> {
        // BIGINT is signed; generation numbers stay far below 2^63 (format::MAX_GENERATION).
        let generation = i64::try_from(generation).map_err(|_| {
            RecordError(format!(
                "generation {generation} does not fit the database's BIGINT"
            ))
        })?;
        let pg = format!(
            "INSERT INTO {TABLE} (store_key, candidate, store, generation, tree_id, updated_at) \
             VALUES ($1, $2, $3, $4, $5, now()) ON CONFLICT (store_key, candidate) DO UPDATE \
             SET store = EXCLUDED.store, generation = EXCLUDED.generation, \
             tree_id = EXCLUDED.tree_id, updated_at = now()"
        );
        let my = format!(
            "INSERT INTO {TABLE} (store_key, candidate, store, generation, tree_id, updated_at) \
             VALUES (?, ?, ?, ?, ?, CURRENT_TIMESTAMP) ON DUPLICATE KEY UPDATE \
             store = VALUES(store), generation = VALUES(generation), \
             tree_id = VALUES(tree_id), updated_at = CURRENT_TIMESTAMP"
        );
        let done = on_pool!(&self.db.pool, |pool, sql = (&pg, &my)| {
            sqlx::query(sql)
                .bind(&self.store_key)
                .bind(candidate)
                .bind(&self.store)
                .bind(generation)
                .bind(tree_id)
                .execute(pool)
                .await
                .map(drop)
        });
        done.map_err(|e| self.error(e))
    }

    async fn floor(&self) -> Result<Option<Floor>, RecordError> {
        let select = |placeholder| {
            format!(
                "SELECT candidate, generation FROM {TABLE} WHERE store_key = {placeholder} \
                 ORDER BY generation DESC, candidate LIMIT 1"
            )
        };
        let (pg, my) = (select("$1"), select("?"));
        let row: Option<(String, i64)> = on_pool!(&self.db.pool, |pool, sql = (&pg, &my)| {
            sqlx::query_as(sql)
                .bind(&self.store_key)
                .fetch_optional(pool)
                .await
        })
        .map_err(|e| self.error(e))?;
        Ok(row.map(|(candidate, generation)| Floor {
            generation: generation.max(0) as u64,
            candidate,
        }))
    }
}
