//! The host's runtime directory and its state files: the long-running commands (`mount`,
//! `sync`, `failover`) publish their state there for `dagfs status`, for each other and for
//! the Airflow bundle.
//!
//! A state file is one facility, [`StateFile`]: `<stem>.json` holds the state, replaced
//! atomically and fsynced; `<stem>.lock` is `flock`ed exclusively by the owning process for
//! its whole life. "Is the owner alive?" means "is the lock held?": the kernel drops the lock
//! when the process dies, however it dies, so a crash never leaves a live-looking state, and
//! a reused pid never makes a dead owner look alive (the pid in the file is only shown).
//!
//! The last-resort directory `/tmp/dagfs-<uid>` must belong to this user and be private,
//! so nobody else can plant state there; the others are chosen by the administrator
//! (`DAGFS_RUNTIME_DIR`, `/run/dagfs`, `$XDG_RUNTIME_DIR`).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::marker::PhantomData;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Environment variable that overrides the runtime directory.
pub const RUNTIME_DIR_ENV: &str = "DAGFS_RUNTIME_DIR";

/// The directory holding the state files: `$DAGFS_RUNTIME_DIR`, else `/run/dagfs` for
/// root, else `$XDG_RUNTIME_DIR/dagfs`, else [`fallback_dir`] (used only if it belongs to
/// this user and is private, see [`check_dir`]).
pub fn runtime_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(RUNTIME_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let uid = rustix::process::getuid();
    if uid.is_root() {
        return PathBuf::from("/run/dagfs");
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("dagfs");
    }
    fallback_dir()
}

/// `dagfs-<uid>` in the temporary directory: anyone can create it first.
pub fn fallback_dir() -> PathBuf {
    std::env::temp_dir().join(format!("dagfs-{}", rustix::process::getuid().as_raw()))
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// Creates `dir` if needed (parents included; the [`fallback_dir`] private, mode 700) and,
/// for the fallback, checks that state files in it can be trusted: a real directory (not a
/// symlink), owned by this user, not accessible to group or others. Another user who
/// created `/tmp/dagfs-<uid>` first could otherwise plant state files there.
pub fn check_dir(dir: &Path) -> std::io::Result<()> {
    let private = dir == fallback_dir();
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(if private { 0o700 } else { 0o755 })
            .create(dir)?,
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    if private {
        check_private(dir)
    } else {
        Ok(())
    }
}

/// Checks that `dir` is a directory of this user's that nobody else can use.
fn check_private(dir: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    let me = rustix::process::getuid().as_raw();
    let problem = if !meta.is_dir() {
        Some("is not a directory (a symlink?)".to_string())
    } else if meta.uid() != me {
        Some(format!(
            "belongs to uid {}, not to this user (uid {me})",
            meta.uid()
        ))
    } else if meta.mode() & 0o077 != 0 {
        Some(format!(
            "is open to other users (mode {:o})",
            meta.mode() & 0o7777
        ))
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "runtime directory {} {problem}; state files there cannot be trusted: remove it, or set {RUNTIME_DIR_ENV} to a directory of your own",
                dir.display()
            ),
        )),
    }
}

/// Writes `value` as JSON to `path` atomically and durably (a temporary file beside it,
/// fsynced, renamed over it, the directory fsynced), in a checked directory.
pub fn write_json(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    check_dir(path.parent().unwrap_or(Path::new(".")))?;
    // Readable by every user: a mount running as root is read by the airflow user's
    // controller and DAG bundle. State holds no secrets.
    crate::atomic::write(
        path,
        &serde_json::to_vec_pretty(value)?,
        crate::atomic::Options::STATE,
    )
}

/// The lock file of state file `json`: the same name with `.lock` instead of `.json`.
pub fn lock_path(json: &Path) -> PathBuf {
    json.with_extension("lock")
}

/// A state file could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// A live process owns it.
    #[error("{} is owned by a running process{}", .lock.display(), .pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Held {
        /// The lock file.
        lock: PathBuf,
        /// The owner's pid, as it wrote it.
        pid: Option<u32>,
    },
    /// The runtime directory or the lock file cannot be used.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// How long a claim retries a lock held only for a moment (a reader testing liveness holds a
/// shared lock for microseconds).
const CLAIM_PATIENCE: Duration = Duration::from_millis(300);

/// One process's state file: claimed (its lock held) for as long as the value lives.
#[derive(Debug)]
pub struct StateFile<T> {
    json: PathBuf,
    lock: File,
    _state: PhantomData<fn(&T)>,
}

impl<T: Serialize + DeserializeOwned> StateFile<T> {
    /// Claims the state file `json` for this process: takes the exclusive lock on its lock
    /// file (and writes this pid into it, for messages). Fails with [`ClaimError::Held`] if
    /// a live process owns it.
    pub fn claim(json: &Path) -> Result<StateFile<T>, ClaimError> {
        check_dir(json.parent().unwrap_or(Path::new(".")))?;
        let path = lock_path(json);
        let deadline = Instant::now() + CLAIM_PATIENCE;
        let mut file = loop {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)?;
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    let mut text = String::new();
                    let _ = file.read_to_string(&mut text);
                    return Err(ClaimError::Held {
                        lock: path,
                        pid: text.trim().parse().ok(),
                    });
                }
                Err(e) => return Err(std::io::Error::from(e).into()),
            }
            // A previous owner may have removed the file between our open and our lock: the
            // lock must be on the file that has the name.
            let named = std::fs::metadata(&path).map(|m| m.ino());
            if named.ok() == Some(file.metadata()?.ino()) {
                break file;
            }
        };
        // What a crashed owner left describes that owner: readers would take it for ours
        // (the lock is live now) until our first write.
        match std::fs::remove_file(json) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        Ok(StateFile {
            json: json.to_path_buf(),
            lock: file,
            _state: PhantomData,
        })
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.json
    }

    /// Replaces the state, atomically and durably.
    pub fn write(&self, state: &T) -> std::io::Result<()> {
        write_json(&self.json, state)
    }

    /// Removes the state and lock files (a clean shutdown), then releases the lock.
    pub fn remove(self) -> std::io::Result<()> {
        let gone = |r: std::io::Result<()>| match r {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        gone(std::fs::remove_file(&self.json))?;
        gone(std::fs::remove_file(lock_path(&self.json)))?;
        drop(self.lock);
        Ok(())
    }

    /// Reads the state file `json` and whether its owner is alive; `None` if there is none.
    pub fn read_live(json: &Path) -> std::io::Result<Option<(T, bool)>> {
        check_dir(json.parent().unwrap_or(Path::new(".")))?;
        let bytes = match std::fs::read(json) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let state = serde_json::from_slice(&bytes)?;
        Ok(Some((state, owner_alive(json)?)))
    }
}

/// Whether the owner of state file `json` is alive: whether its lock file is locked. Takes a
/// shared lock for a moment to find out (readers never block each other or the owner).
pub fn owner_alive(json: &Path) -> std::io::Result<bool> {
    let file = match File::open(lock_path(json)) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared) {
        Ok(()) => Ok(false),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct Sample {
        pid: u32,
        n: u32,
    }

    #[test]
    fn liveness_is_the_owners_lock_not_its_pid() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("thing-1.json");
        assert!(StateFile::<Sample>::read_live(&json).unwrap().is_none());

        let owned = StateFile::<Sample>::claim(&json).unwrap();
        owned.write(&Sample { pid: 1, n: 7 }).unwrap();
        let (state, alive) = StateFile::<Sample>::read_live(&json).unwrap().unwrap();
        assert_eq!((state, alive), (Sample { pid: 1, n: 7 }, true));
        // A second owner is refused while the first lives (flock belongs to the open file
        // description, so this conflicts even within one process).
        let held = StateFile::<Sample>::claim(&json).unwrap_err();
        assert!(
            matches!(held, ClaimError::Held { pid: Some(p), .. } if p == std::process::id()),
            "{held}"
        );

        // The owner dies without cleaning up: the file stays, naming a pid that exists
        // (pid 1 always does), and it reads as dead.
        drop(owned);
        let (_, alive) = StateFile::<Sample>::read_live(&json).unwrap().unwrap();
        assert!(!alive, "a dead owner whose pid exists must not look alive");
        let again = StateFile::<Sample>::claim(&json).unwrap();
        again.remove().unwrap();
        assert!(StateFile::<Sample>::read_live(&json).unwrap().is_none());
        assert!(!lock_path(&json).exists());
    }

    #[test]
    fn a_fallback_directory_others_can_use_or_own_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        assert!(fallback_dir().starts_with(std::env::temp_dir()));
        let base = tempfile::tempdir().unwrap();
        let open = base.path().join("dagfs-1000");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_private(&open).unwrap_err();
        assert!(err.to_string().contains("open to other users"), "{err}");

        if rustix::process::getuid().is_root() {
            // Created first by another user (as root we can play one), private to that user,
            // so that only the ownership check can refuse it.
            let planted = base.path().join("dagfs-planted");
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&planted)
                .unwrap();
            std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
            let err = check_private(&planted).unwrap_err();
            assert!(err.to_string().contains("belongs to uid 65534"), "{err}");
        }
        let mine = base.path().join("dagfs-mine");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&mine)
            .unwrap();
        check_private(&mine).unwrap();
    }

    /// A mount running as root is read by the airflow user's controller and bundle: state
    /// files are readable by all (a temporary file starts 0600).
    #[test]
    fn state_files_are_readable_by_other_users() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("thing-1.json");
        write_json(&json, &Sample { pid: 1, n: 2 }).unwrap();
        assert_eq!(std::fs::metadata(&json).unwrap().mode() & 0o777, 0o644);
    }
}
