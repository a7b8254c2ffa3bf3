//! The coordinator in Airflow's metadata database: one row of the table
//! `dagfs_failover_lease` per failover group (the store URL the candidates share).
//!
//! ```sql
//! CREATE TABLE dagfs_failover_lease (
//!     group_key  VARCHAR(255) NOT NULL PRIMARY KEY, -- the store URL (blake3 of a longer one)
//!     seq        BIGINT       NOT NULL,             -- Version::seq
//!     tag        BIGINT       NOT NULL,             -- Version::tag: random, drawn per write
//!     beat       TEXT         NOT NULL,             -- the Beat, as JSON
//!     written_at TIMESTAMP    NOT NULL DEFAULT CURRENT_TIMESTAMP -- for operators only
//! )
//! ```
//!
//! A claim is one autocommitted statement: `UPDATE ... SET seq, tag, beat WHERE group_key = ?
//! AND seq = <expected seq> AND tag = <expected tag>` (an `INSERT` over an empty register,
//! which the primary key lets exactly one claimant win). The database's row lock makes it a
//! compare-and-swap: of racing claims from one version exactly one matches the row. A claim
//! that matched nothing reads the row: if it holds a write of this same process and term at
//! the claimed sequence number, an earlier attempt committed and lost its reply
//! ([`Claimed::Landed`]), as the store coordinator resolves the same ambiguity. Tags are
//! random (63 bits), so a row deleted and written again never matches a stale expectation.
//!
//! [`LeaseTable`] is the SQL side; the simulation in `tests/failover_sim.rs` implements it
//! over a row in memory (with lost replies, late statements and server-side timeouts) and
//! drives this same [`DatabaseCoordinator`].

use async_trait::async_trait;

use super::coordinator::{Beat, Claimed, Coordinator, CoordinatorError, Snapshot, Version};
use crate::metadb::{on_pool, MetaDb, MetadbError};

/// The table's name.
pub const LEASE_TABLE: &str = "dagfs_failover_lease";

/// The DDL creating the table (the same text on PostgreSQL and MySQL/MariaDB).
pub const LEASE_TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS dagfs_failover_lease (\
group_key VARCHAR(255) NOT NULL PRIMARY KEY, \
seq BIGINT NOT NULL, \
tag BIGINT NOT NULL, \
beat TEXT NOT NULL, \
written_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)";

/// One failover group's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRow {
    /// The register's sequence number.
    pub seq: u64,
    /// The write's random tag.
    pub tag: u64,
    /// The leadership record, as JSON.
    pub beat: String,
}

/// One failover group's row in a table: read, inserted and replaced by compare-and-swap,
/// each in one statement.
#[async_trait]
pub trait LeaseTable: Send + Sync + std::fmt::Debug {
    /// Where the table lives, for messages (no password).
    fn url(&self) -> &str;

    /// The row, if any.
    async fn select(&self) -> Result<Option<LeaseRow>, CoordinatorError>;

    /// Inserts `row` unless the group has one; whether it did.
    async fn insert(&self, row: &LeaseRow) -> Result<bool, CoordinatorError>;

    /// Replaces the row by `row` if it is at `expected`; whether it did.
    async fn update(&self, expected: Version, row: &LeaseRow) -> Result<bool, CoordinatorError>;
}

/// The [`Coordinator`] on a [`LeaseTable`].
#[derive(Debug)]
pub struct DatabaseCoordinator<T> {
    table: T,
}

impl<T: LeaseTable> DatabaseCoordinator<T> {
    /// The coordinator on `table`.
    pub fn new(table: T) -> Self {
        DatabaseCoordinator { table }
    }
}

/// A fresh tag: random, positive as a signed 64-bit number (the column is `BIGINT`).
fn fresh_tag() -> u64 {
    fastrand::u64(1..=i64::MAX as u64)
}

fn parse(beat: &str) -> Option<Beat> {
    serde_json::from_str(beat).ok()
}

/// Whether `found` was written by the process and term that wrote `ours`.
fn same_writer(found: &Beat, ours: &Beat) -> bool {
    found.owner == ours.owner
        && found.pid == ours.pid
        && found.instance == ours.instance
        && found.epoch == ours.epoch
}

#[async_trait]
impl<T: LeaseTable> Coordinator for DatabaseCoordinator<T> {
    fn url(&self) -> &str {
        self.table.url()
    }

    async fn read(&self) -> Result<Snapshot, CoordinatorError> {
        let row = self.table.select().await?;
        Ok(match row {
            None => Snapshot {
                version: None,
                marker: 0,
                beat: None,
            },
            Some(row) => Snapshot {
                version: Some(Version {
                    seq: row.seq,
                    tag: row.tag,
                }),
                // The row is the whole register: its version is every change.
                marker: row.tag,
                beat: parse(&row.beat),
            },
        })
    }

    async fn claim(
        &self,
        expected: Option<Version>,
        seq: u64,
        beat: &Beat,
    ) -> Result<Claimed, CoordinatorError> {
        let row = LeaseRow {
            seq,
            tag: fresh_tag(),
            beat: serde_json::to_string(beat).expect("a beat serialises"),
        };
        let applied = match expected {
            None => self.table.insert(&row).await?,
            Some(expected) => self.table.update(expected, &row).await?,
        };
        if applied {
            return Ok(Claimed::Won(Version { seq, tag: row.tag }));
        }
        // Nothing matched: another claim moved the row, or an earlier attempt of ours did
        // and its reply was lost (it could only have matched the same expected version).
        let Some(found) = self.table.select().await? else {
            return Ok(Claimed::Lost(None));
        };
        let found_beat = parse(&found.beat);
        match found_beat {
            Some(b) if found.seq == seq && same_writer(&b, beat) => Ok(Claimed::Landed(Version {
                seq: found.seq,
                tag: found.tag,
            })),
            other => Ok(Claimed::Lost(other)),
        }
    }

    /// One row, overwritten in place: nothing to tidy.
    async fn tidy(&self, _newest: Version, _full: bool) {}
}

/// The [`LeaseTable`] in a real database.
#[derive(Debug)]
pub struct SqlLeaseTable {
    db: MetaDb,
    group: String,
    url: String,
}

/// A group key that fits the column: the store URL, or its blake3 hash when longer.
fn group_key(group: &str) -> String {
    if group.len() <= 255 {
        group.to_string()
    } else {
        format!("blake3:{}", blake3::hash(group.as_bytes()).to_hex())
    }
}

/// Whether `e` is a unique-key violation (PostgreSQL 23505, MySQL 1062).
fn duplicate(e: &sqlx::Error) -> bool {
    matches!(
        crate::metadb::error_code(e).as_deref(),
        Some("23505" | "1062")
    )
}

impl SqlLeaseTable {
    /// The row of `group` in `db`; creates the table if it is missing (safe when several
    /// controllers do it at once). The error names the privilege and the DDL to run by hand.
    pub async fn open(db: MetaDb, group: &str) -> Result<SqlLeaseTable, MetadbError> {
        let table = SqlLeaseTable {
            url: db.url.redacted(),
            group: group_key(group),
            db,
        };
        if table.select_row().await.is_ok() {
            return Ok(table);
        }
        let created = on_pool!(&table.db.pool, |pool| {
            sqlx::query(LEASE_TABLE_DDL).execute(pool).await.map(drop)
        });
        // Concurrent creators: PostgreSQL's CREATE TABLE IF NOT EXISTS can still fail
        // with a unique violation on its catalog when another creator wins; what counts is
        // that the table is there now.
        match table.select_row().await {
            Ok(_) => Ok(table),
            Err(select) => Err(MetadbError::Setting {
                setting: format!("the metadata database {}", table.url),
                reason: format!(
                    "cannot create or read the table {LEASE_TABLE}: {}",
                    created.err().unwrap_or(select)
                ),
                fix: format!("grant the dagfs user CREATE on the schema once, or run as an administrator: {LEASE_TABLE_DDL}; then grant it SELECT, INSERT, UPDATE on {LEASE_TABLE}"),
            }),
        }
    }

    async fn select_row(&self) -> Result<Option<LeaseRow>, sqlx::Error> {
        const PG: &str = "SELECT seq, tag, beat FROM dagfs_failover_lease WHERE group_key = $1";
        const MY: &str = "SELECT seq, tag, beat FROM dagfs_failover_lease WHERE group_key = ?";
        let row: Option<(i64, i64, String)> = on_pool!(&self.db.pool, |pool, sql = (PG, MY)| {
            sqlx::query_as(sql)
                .bind(&self.group)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(|(seq, tag, beat)| LeaseRow {
            seq: seq as u64,
            tag: tag as u64,
            beat,
        }))
    }

    fn error(&self, e: sqlx::Error) -> CoordinatorError {
        CoordinatorError::Database(self.db.query_error(e))
    }
}

#[async_trait]
impl LeaseTable for SqlLeaseTable {
    fn url(&self) -> &str {
        &self.url
    }

    async fn select(&self) -> Result<Option<LeaseRow>, CoordinatorError> {
        self.select_row().await.map_err(|e| self.error(e))
    }

    async fn insert(&self, row: &LeaseRow) -> Result<bool, CoordinatorError> {
        const PG: &str =
            "INSERT INTO dagfs_failover_lease (group_key, seq, tag, beat) VALUES ($1, $2, $3, $4)";
        const MY: &str =
            "INSERT INTO dagfs_failover_lease (group_key, seq, tag, beat) VALUES (?, ?, ?, ?)";
        let done = on_pool!(&self.db.pool, |pool, sql = (PG, MY)| {
            sqlx::query(sql)
                .bind(&self.group)
                .bind(row.seq as i64)
                .bind(row.tag as i64)
                .bind(&row.beat)
                .execute(pool)
                .await
                .map(drop)
        });
        match done {
            Ok(()) => Ok(true),
            Err(e) if duplicate(&e) => Ok(false),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn update(&self, expected: Version, row: &LeaseRow) -> Result<bool, CoordinatorError> {
        const PG: &str = "UPDATE dagfs_failover_lease SET seq = $1, tag = $2, beat = $3, \
written_at = CURRENT_TIMESTAMP WHERE group_key = $4 AND seq = $5 AND tag = $6";
        const MY: &str = "UPDATE dagfs_failover_lease SET seq = ?, tag = ?, beat = ?, \
written_at = CURRENT_TIMESTAMP WHERE group_key = ? AND seq = ? AND tag = ?";
        let affected = on_pool!(&self.db.pool, |pool, sql = (PG, MY)| {
            sqlx::query(sql)
                .bind(row.seq as i64)
                .bind(row.tag as i64)
                .bind(&row.beat)
                .bind(&self.group)
                .bind(expected.seq as i64)
                .bind(expected.tag as i64)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        });
        affected.map(|n| n == 1).map_err(|e| self.error(e))
    }
}

/// The coordinator `dagfs failover` runs with `failover.coordinator = "database"`.
pub type SqlCoordinator = DatabaseCoordinator<SqlLeaseTable>;
