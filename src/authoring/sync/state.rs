//! The sync daemon's files in the runtime directory ([`runtime_dir`], shared with the mount):
//!
//! - `sync-<id>.json`, the status file `dagfs status` reads: last published generation,
//!   pending changes, last error. Rewritten atomically (write beside, rename) on every change
//!   of state, removed on clean shutdown.
//! - `sync-<id>.lock`, the single-instance guard: an exclusive `flock` held for the daemon's
//!   lifetime, so two daemons on one folder refuse to run together. The kernel drops the lock
//!   when the process dies, even by SIGKILL, so a crash never leaves a stale guard.
//!
//! `<id>` is derived from the folder's canonical path, so `dags` and `./dags/` are one folder.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::runtime::{now_ms, runtime_dir, write_json, ClaimError, StateFile};

/// Prefix of sync status files in the runtime directory.
pub const STATE_PREFIX: &str = "sync-";

/// What the daemon is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Initial scan and push.
    Starting,
    /// Everything seen is published.
    Idle,
    /// Changes are waiting for the quiet window (or for files still being written).
    Pending,
    /// A publish is in flight.
    Publishing,
    /// The last publish failed; retrying at `next_retry_ms`.
    Retrying,
    /// The last publish failed in a way only a local change can fix; waiting for one.
    Blocked,
}

/// What a sync daemon reports about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    /// Process id.
    pub pid: u32,
    /// The watched folder, canonical.
    pub dir: PathBuf,
    /// The store URL.
    pub store: String,
    /// The subtree of the store the folder is published as, if any.
    pub prefix: Option<String>,
    /// What the daemon is doing.
    pub phase: Phase,
    /// The head generation after the last successful publish (or the initial check).
    pub generation: Option<u64>,
    /// Milliseconds since the epoch of the last committed generation by this daemon.
    pub last_published_ms: Option<u64>,
    /// Paths that differ between the folder and the store as of the last scan.
    pub pending_changes: usize,
    /// Of those, paths held back because they are still being written.
    pub held_back: usize,
    /// The last error, one line; cleared by the next successful publish.
    pub last_error: Option<String>,
    /// Its kind (the `kind` label of the error metric).
    pub last_error_kind: Option<String>,
    /// Failed attempts since the last success.
    pub failures: u32,
    /// Milliseconds since the epoch of the next retry, while retrying.
    pub next_retry_ms: Option<u64>,
    /// The Prometheus endpoint, if serving.
    pub metrics: Option<String>,
    /// Milliseconds since the epoch when the daemon started.
    pub started_ms: u64,
    /// Milliseconds since the epoch when this state was written.
    pub updated_ms: u64,
}

impl SyncState {
    /// The state of this process, starting to sync `dir` to `store`.
    pub fn starting(
        dir: PathBuf,
        store: String,
        prefix: Option<String>,
        metrics: Option<String>,
    ) -> SyncState {
        SyncState {
            pid: std::process::id(),
            dir,
            store,
            prefix,
            phase: Phase::Starting,
            generation: None,
            last_published_ms: None,
            pending_changes: 0,
            held_back: 0,
            last_error: None,
            last_error_kind: None,
            failures: 0,
            next_retry_ms: None,
            metrics,
            started_ms: now_ms(),
            updated_ms: now_ms(),
        }
    }
}

/// Status or lock files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Another daemon holds the folder's lock.
    #[error("another dagfs sync{} already watches {}; stop it first (lock {})", .pid.map(|p| format!(" (pid {p})")).unwrap_or_default(), .dir.display(), .lock.display())]
    AlreadyRunning {
        /// The folder.
        dir: PathBuf,
        /// The holder, if it wrote its pid.
        pid: Option<u32>,
        /// The lock file.
        lock: PathBuf,
    },
    /// The runtime directory or a file in it cannot be used.
    #[error("{}: {source}; check the runtime directory (set DAGFS_RUNTIME_DIR to move it)", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The runtime directory as it holds sync files.
#[derive(Clone, Debug)]
pub struct SyncFiles {
    dir: PathBuf,
}

impl Default for SyncFiles {
    /// The host's runtime directory (see [`runtime_dir`]).
    fn default() -> Self {
        SyncFiles { dir: runtime_dir() }
    }
}

impl SyncFiles {
    /// Sync files in `dir` instead of the runtime directory.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        SyncFiles { dir: dir.into() }
    }

    fn stem(&self, folder: &Path) -> String {
        let canonical = std::fs::canonicalize(folder).unwrap_or_else(|_| folder.to_path_buf());
        let hash = blake3::hash(canonical.as_os_str().as_encoded_bytes());
        format!("{STATE_PREFIX}{}", &hash.to_hex()[..16])
    }

    /// The status file of the daemon watching `folder`.
    pub fn state_path(&self, folder: &Path) -> PathBuf {
        self.dir.join(format!("{}.json", self.stem(folder)))
    }

    /// Takes the single-instance lock of `folder` (the lock of its status file, see
    /// [`StateFile`]), or says who holds it.
    pub fn lock(&self, folder: &Path) -> Result<InstanceLock, StateError> {
        let path = self.state_path(folder);
        match StateFile::claim(&path) {
            Ok(file) => Ok(InstanceLock { _file: file }),
            Err(ClaimError::Held { lock, pid }) => Err(StateError::AlreadyRunning {
                dir: folder.to_path_buf(),
                pid,
                lock,
            }),
            Err(ClaimError::Io(e)) => Err(io_error(&crate::runtime::lock_path(&path))(e)),
        }
    }

    /// Writes `state` atomically to its status file.
    pub fn write(&self, state: &SyncState) -> Result<(), StateError> {
        let path = self.state_path(&state.dir);
        write_json(&path, state).map_err(io_error(&path))
    }

    /// Removes the status file of the daemon watching `folder` (on clean shutdown).
    pub fn remove(&self, folder: &Path) -> Result<(), StateError> {
        let path = self.state_path(folder);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error(&path)(e)),
            _ => Ok(()),
        }
    }
}

/// Held for the daemon's lifetime; the kernel releases it when the process exits.
#[derive(Debug)]
pub struct InstanceLock {
    _file: StateFile<SyncState>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_folder_is_refused_until_the_first_is_dropped() {
        let runtime = tempfile::tempdir().unwrap();
        let folder = tempfile::tempdir().unwrap();
        let files = SyncFiles::at(runtime.path());
        let lock = files.lock(folder.path()).unwrap();
        // flock locks belong to open file descriptions: a second open conflicts even in
        // one process, exactly as a second daemon would.
        let refused = files.lock(folder.path()).unwrap_err();
        let message = refused.to_string();
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        assert!(message.contains("stop it first"), "{message}");
        drop(lock);
        files.lock(folder.path()).unwrap();
    }

    #[test]
    fn status_files_round_trip() {
        let runtime = tempfile::tempdir().unwrap();
        let folder = tempfile::tempdir().unwrap();
        let files = SyncFiles::at(runtime.path());
        let mut state = SyncState::starting(
            folder.path().canonicalize().unwrap(),
            "file:///tmp/store".into(),
            None,
            None,
        );
        state.phase = Phase::Idle;
        state.generation = Some(4);
        files.write(&state).unwrap();
        let path = files.state_path(folder.path());
        assert!(path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(STATE_PREFIX));
        let read: SyncState = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(read, state);
        files.remove(folder.path()).unwrap();
        files.remove(folder.path()).unwrap();
        assert!(!path.exists());
    }
}
