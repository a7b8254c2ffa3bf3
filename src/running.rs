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
