//! What the election needs from shared state: one register of leadership records, read and
//! replaced by compare-and-swap. The store implements it as a chain of heartbeat files
//! ([`super::store::StoreCoordinator`]), Airflow's metadata database as one row
//! ([`super::database::DatabaseCoordinator`]); a test simulation implements both backings in
//! memory, so one election code runs against all of them.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::store::StoreError;

/// The version of the register: the sequence number of the record, and a tag naming the
/// write that produced it (two writes of the same sequence number have different tags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Version {
    /// Sequence number; every successful claim raises it by one.
    pub seq: u64,
    /// Identity of the write (the store: a hash of the file's length and modification time).
    pub tag: u64,
}

/// The content of one leadership record (a heartbeat).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beat {
    /// Fencing token of the writer's term: the sequence number of the claim that started it,
    /// so epochs grow with the register and never repeat while its history is kept.
    pub epoch: u64,
    /// The writer's candidate id (`--id`, the host name by default).
    pub owner: String,
    /// The writer's host name.
    pub host: String,
    /// The writer's process id.
    pub pid: u32,
    /// A random number drawn once per controller process: tells this process's writes from
    /// those of an earlier process with the same id and pid.
    #[serde(default)]
    pub instance: u64,
    /// The writer stopped its commands and gave up leadership: take over at once.
    pub released: bool,
    /// The generation the leader's commands run against, once started.
    pub generation: Option<u64>,
    /// Its tree id.
    pub tree_id: Option<String>,
    /// The writer's `fence_after` in milliseconds: how long after starting this write its
    /// lease may last. Standbys wait at least this plus `kill_grace_ms` plus their own
    /// margin, whatever their own settings say (settings differ during a rolling change).
    #[serde(default)]
    pub lease_ms: Option<u64>,
    /// The writer's `kill_grace` in milliseconds.
    #[serde(default)]
    pub kill_grace_ms: Option<u64>,
}

impl Beat {
    /// How long after this record was written its writer's unit may still be alive:
    /// `fence_after + kill_grace` as the writer advertised them (`None` for a writer of an
    /// older version that did not).
    pub fn advertised_hold(&self) -> Option<Duration> {
        Some(Duration::from_millis(
            self.lease_ms?.saturating_add(self.kill_grace_ms?),
        ))
    }
}

/// What a read of the register found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The newest record's version (`None`: the register is empty).
    pub version: Option<Version>,
    /// Changes whenever anything in the register changed, including a record deleted
    /// behind the protocol's back that made an older version the newest again (the store:
    /// the heartbeat directory's modification time). Standbys restart their wait on any
    /// change of it.
    pub marker: u64,
    /// Its content, `None` when it cannot be parsed (rewritten behind the protocol's back).
    pub beat: Option<Beat>,
}

/// The result of a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claimed {
    /// The register moved from the expected version to ours: a new version.
    Won(Version),
    /// A write of this process at that sequence number landed earlier (its reply was lost);
    /// it is the newest and follows the expected version. Whether it may extend a lease is
    /// the caller's decision: its start time is not known.
    Landed(Version),
    /// Another write holds the register, or it moved on; the record found, if readable.
    Lost(Option<Beat>),
}

/// Why a coordinator call failed. A failed claim may still have taken effect (the reply
/// was lost): callers never treat an error as a success, and resolve it on the next call.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The store failed or timed out.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The metadata database failed (the database coordinator).
    #[error(transparent)]
    Database(#[from] crate::metadb::MetadbError),
    /// The step did not finish within its time bound.
    #[error("{op} on {url} did not finish within {}", humantime::format_duration(*.bound))]
    TimedOut {
        /// What was being done.
        op: &'static str,
        /// The coordinator.
        url: String,
        /// The bound.
        bound: Duration,
    },
}

/// A linearizable register of leadership records.
#[async_trait]
pub trait Coordinator: Send + Sync + std::fmt::Debug {
    /// Where the register lives, for messages.
    fn url(&self) -> &str;

    /// The newest record and its version.
    async fn read(&self) -> Result<Snapshot, CoordinatorError>;

    /// Writes `beat` as version `seq` if and only if the register is at `expected` (`None`:
    /// empty) and `seq` follows it (`expected.seq + 1`, or any number above every sequence
    /// number the caller has seen when empty). Exactly one of several racing claims from the
    /// same version wins.
    async fn claim(
        &self,
        expected: Option<Version>,
        seq: u64,
        beat: &Beat,
    ) -> Result<Claimed, CoordinatorError>;

    /// Best-effort housekeeping after a successful claim at `newest` (the store deletes old
    /// heartbeat files); `full` also sweeps what earlier terms left.
    async fn tidy(&self, newest: Version, full: bool);
}
