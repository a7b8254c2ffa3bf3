//! The mount's published state: which generation a `dagfs mount` serves, and whether that is
//! the head.
//!
//! The mount process rewrites a small JSON file after every poll (a
//! [`crate::runtime::StateFile`]: atomic, fsynced, and alive exactly while the mount holds
//! its lock). `dagfs failover` reads it to decide whether this host may start the scheduler
//! (the identity gate), `dagfs status` and `dagfs verify --mount` to report it, and the
//! Airflow bundle to record the generation a DAG was parsed from. The file lives in the
//! runtime directory, named after the mountpoint, never inside the mount: the tree the mount
//! shows is exactly the generation, nothing more.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::format::Manifest;
use crate::runtime::{now_ms, runtime_dir, ClaimError, StateFile};

/// What a mount reports about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountState {
    /// Process id of the mount.
    pub pid: u32,
    /// The mountpoint, absolute.
    pub mountpoint: PathBuf,
    /// The store URL the mount reads.
    pub store: String,
    /// The generation served, `None` while the store has none.
    pub generation: Option<u64>,
    /// Tree id (blake3 hex) of the generation served.
    pub tree_id: Option<String>,
    /// Manifest id (blake3 hex) of the generation served.
    pub manifest_id: Option<String>,
    /// The head generation seen by the last successful poll.
    pub head: Option<u64>,
    /// The generation the mount was told to hold (`--pin`), if any.
    pub pinned: Option<u64>,
    /// Whether the last poll succeeded: the store answered and the mount serves what it named.
    pub online: bool,
    /// Milliseconds since the epoch of the last successful poll.
    pub last_poll_ok_ms: Option<u64>,
    /// The last poll or fetch error, one line, cleared by the next success.
    pub last_error: Option<String>,
    /// How often the mount polls, in milliseconds; readers judge freshness by it.
    pub poll_interval_ms: u64,
    /// Milliseconds since the epoch when the mount started.
    pub started_ms: u64,
    /// Milliseconds since the epoch when this state was written.
    pub updated_ms: u64,
    /// Generations readable under `MOUNTPOINT/.dagfs/generations/N`, oldest first.
    #[serde(default)]
    pub views: Vec<ViewState>,
}

/// One generation a mount shows under `.dagfs/generations/`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewState {
    /// The generation number (the directory's name).
    pub generation: u64,
    /// Its tree id (blake3 hex).
    pub tree_id: String,
}

impl MountState {
    /// The state of a mount of `store` at `mountpoint` started now by this process, polling
    /// every `poll_interval`: serving nothing, and offline until a poll succeeds.
    pub fn started(mountpoint: PathBuf, store: String, poll_interval: Duration) -> MountState {
        MountState {
            pid: std::process::id(),
            mountpoint,
            store,
            generation: None,
            tree_id: None,
            manifest_id: None,
            head: None,
            pinned: None,
            online: false,
            last_poll_ok_ms: None,
            last_error: None,
            poll_interval_ms: poll_interval.as_millis() as u64,
            started_ms: now_ms(),
            updated_ms: 0,
            views: Vec::new(),
        }
    }

    /// Records that the mount now serves `manifest`'s generation (or nothing).
    pub fn set_served(&mut self, manifest: Option<&Manifest>) {
        self.generation = manifest.map(|m| m.generation);
        self.tree_id = manifest.map(|m| m.tree_id.to_string());
        self.manifest_id = manifest.map(|m| m.manifest_id.to_string());
    }

    /// Records a poll that reached the store and served what it named.
    pub fn poll_succeeded(&mut self) {
        self.online = true;
        self.last_poll_ok_ms = Some(now_ms());
        self.last_error = None;
    }

    /// Records a failed poll and its one-line reason: the mount counts as behind.
    pub fn poll_failed(&mut self, error: String) {
        self.online = false;
        self.last_error = Some(error);
    }

    /// Whether the mount serves the head generation as of its last successful poll: online,
    /// not pinned elsewhere, and the generation served is the head it saw.
    pub fn is_current(&self) -> bool {
        self.online && self.generation == self.head
    }
}

/// Why a mount's state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// No state file: no mount ran at this mountpoint on this host (or it never started).
    #[error("no dagfs mount is running at {mountpoint} (no state file {file}); start it with `dagfs mount --store URL {mountpoint}`")]
    NotRunning {
        /// The mountpoint asked about.
        mountpoint: String,
        /// Where the state file was expected.
        file: String,
    },
    /// The state file's owner no longer runs (its lock is not held).
    #[error("the dagfs mount at {mountpoint} is not running (pid {pid} has exited); restart it")]
    Exited {
        /// The mountpoint asked about.
        mountpoint: String,
        /// The process the state names.
        pid: u32,
    },
    /// The state file exists but is not readable state.
    #[error("cannot read mount state {file}: {detail}")]
    Unreadable {
        /// The state file.
        file: String,
        /// What went wrong.
        detail: String,
    },
}

/// The mountpoint made absolute without touching it: a dead FUSE mount fails every `stat`,
/// so the path is not canonicalised.
pub fn absolute_mountpoint(mountpoint: &Path) -> PathBuf {
    std::path::absolute(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf())
}

/// The directory of mount state files, one file per mountpoint. The process that writes a
/// mountpoint's state owns it (holds its lock) until [`StateDir::remove`] or until it exits.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

/// The state files this process owns: ownership belongs to the process, like the lock.
fn owned() -> MutexGuard<'static, HashMap<PathBuf, StateFile<MountState>>> {
    static OWNED: OnceLock<Mutex<HashMap<PathBuf, StateFile<MountState>>>> = OnceLock::new();
    OWNED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Default for StateDir {
    /// The host's runtime directory (see [`crate::runtime::runtime_dir`]).
    fn default() -> Self {
        StateDir::at(runtime_dir())
    }
}

impl StateDir {
    /// State files in `dir` instead of the runtime directory (tests, unusual layouts).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        StateDir { dir: dir.into() }
    }

    /// The state file of the mount at `mountpoint`: `mount-<escaped path>.json`, the path
    /// escaped as `systemd-escape --path` does (`/srv/airflow/dags` -> `srv-airflow-dags`), so
    /// operators and the Airflow bundle find it without dagfs.
    pub fn path(&self, mountpoint: &Path) -> PathBuf {
        let absolute = absolute_mountpoint(mountpoint);
        self.dir
            .join(format!("mount-{}.json", escape_path(&absolute)))
    }

    /// Makes this process the owner of the state file of `mountpoint` (a no-op if it is
    /// already); refused while another live process owns it.
    pub fn claim(&self, mountpoint: &Path) -> Result<(), ClaimError> {
        let path = self.path(mountpoint);
        let mut owned = owned();
        if !owned.contains_key(&path) {
            owned.insert(path.clone(), StateFile::claim(&path)?);
        }
        Ok(())
    }

    /// Writes `state` atomically to its state file, claiming the file first if this
    /// process does not own it yet (refused while another live process owns it).
    pub fn write(&self, state: &MountState) -> std::io::Result<()> {
        self.claim(&state.mountpoint).map_err(|e| match e {
            ClaimError::Io(e) => e,
            held => std::io::Error::new(std::io::ErrorKind::AddrInUse, held.to_string()),
        })?;
        let path = self.path(&state.mountpoint);
        owned()[&path].write(state)
    }

    /// Removes the state file of the mount at `mountpoint` (on clean shutdown) and gives up
    /// owning it.
    pub fn remove(&self, mountpoint: &Path) -> std::io::Result<()> {
        let path = self.path(mountpoint);
        let claimed = owned().remove(&path);
        match claimed {
            Some(claimed) => claimed.remove(),
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        }
    }

    /// Reads the state of the mount at `mountpoint`, checking that its process still runs
    /// (holds the state file's lock; a pid that exists proves nothing after a crash).
    pub fn read(&self, mountpoint: &Path) -> Result<MountState, StateError> {
        let path = self.path(mountpoint);
        let shown = absolute_mountpoint(mountpoint).display().to_string();
        match StateFile::<MountState>::read_live(&path) {
            Ok(Some((state, true))) => Ok(state),
            Ok(Some((state, false))) => Err(StateError::Exited {
                mountpoint: shown,
                pid: state.pid,
            }),
            Ok(None) => Err(StateError::NotRunning {
                mountpoint: shown,
                file: path.display().to_string(),
            }),
            Err(e) => Err(StateError::Unreadable {
                file: path.display().to_string(),
                detail: e.to_string(),
            }),
        }
    }
}

/// `systemd-escape --path`: slashes become `-`; bytes other than ASCII letters, digits, `_`
/// and `.` (and a leading `.`) become `\xNN`; the root is `-`.
fn escape_path(path: &Path) -> String {
    let bytes = path.as_os_str().as_encoded_bytes();
    let trimmed: Vec<&[u8]> = bytes
        .split(|&b| b == b'/')
        .filter(|part| !part.is_empty())
        .collect();
    if trimmed.is_empty() {
        return "-".to_string();
    }
    let mut out = String::new();
    for (i, part) in trimmed.iter().enumerate() {
        if i > 0 {
            out.push('-');
        }
        for (j, &b) in part.iter().enumerate() {
            let plain =
                b.is_ascii_alphanumeric() || b == b'_' || (b == b'.' && !(i == 0 && j == 0));
            if plain {
                out.push(b as char);
            } else {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(mountpoint: &Path) -> MountState {
        let store = "file:///tmp/store".to_string();
        let mut state = MountState::started(mountpoint.into(), store, Duration::from_secs(1));
        state.generation = Some(3);
        state.tree_id = Some("ab".repeat(32));
        state.manifest_id = Some("cd".repeat(32));
        state.head = Some(3);
        state.poll_succeeded();
        state.updated_ms = now_ms();
        state.views = vec![ViewState {
            generation: 3,
            tree_id: "ab".repeat(32),
        }];
        state
    }

    #[test]
    fn state_files_are_named_like_systemd_escape_path() {
        let states = StateDir::at("/run/dagfs");
        let name = |p: &str| {
            states
                .path(Path::new(p))
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(name("/srv/airflow/dags"), "mount-srv-airflow-dags.json");
        assert_eq!(name("/srv/my-dags/"), "mount-srv-my\\x2ddags.json");
        assert_eq!(name("/"), "mount--.json");
        assert_eq!(name("/a/.hidden"), "mount-a-.hidden.json");
    }

    #[test]
    fn state_round_trips_and_reports_exited_processes() {
        let runtime = tempfile::tempdir().unwrap();
        let states = StateDir::at(runtime.path());
        let mountpoint = runtime.path().join("mnt");

        let missing = states.read(&mountpoint).unwrap_err();
        assert!(
            matches!(missing, StateError::NotRunning { .. }),
            "{missing}"
        );

        let mut state = sample(&mountpoint);
        states.write(&state).unwrap();
        assert_eq!(states.read(&mountpoint).unwrap(), state);
        assert!(state.is_current());

        state.head = Some(4);
        assert!(!state.is_current(), "a newer head means the mount lags");

        states.remove(&mountpoint).unwrap();
        states.remove(&mountpoint).unwrap();
        assert!(matches!(
            states.read(&mountpoint),
            Err(StateError::NotRunning { .. })
        ));
    }

    /// After a crash the state file stays behind naming a pid the kernel may give to any
    /// process (here pid 1, which always runs): the mount must read as exited.
    #[test]
    fn a_crashed_mount_whose_pid_was_reused_reads_as_exited() {
        let runtime = tempfile::tempdir().unwrap();
        let mountpoint = runtime.path().join("mnt");
        let mut state = sample(&mountpoint);
        state.pid = 1;
        let states = StateDir::at(runtime.path());
        // What a mount killed with SIGKILL leaves: its file, and a lock file nobody holds.
        let crashed = StateFile::<MountState>::claim(&states.path(&mountpoint)).unwrap();
        crashed.write(&state).unwrap();
        drop(crashed);
        let read = states.read(&mountpoint);
        assert!(
            matches!(read, Err(StateError::Exited { pid: 1, .. })),
            "{read:?}"
        );
    }

    /// A restarted mount owns the state file from its claim, long before it has mounted
    /// anything (it first reads the head and fetches, which takes as long as HDFS does): the
    /// crashed mount's "current" state must not read as the new, live mount's, or the
    /// failover gate would start Airflow over an empty mountpoint.
    #[test]
    fn a_new_owner_never_shows_the_crashed_owners_state_as_live() {
        let runtime = tempfile::tempdir().unwrap();
        let mountpoint = runtime.path().join("mnt");
        let states = StateDir::at(runtime.path());
        let crashed = StateFile::<MountState>::claim(&states.path(&mountpoint)).unwrap();
        crashed.write(&sample(&mountpoint)).unwrap();
        drop(crashed);
        states.claim(&mountpoint).unwrap();
        let read = states.read(&mountpoint);
        assert!(
            matches!(read, Err(StateError::NotRunning { .. })),
            "the crashed owner's state reads as the new owner's: {read:?}"
        );
    }
}
