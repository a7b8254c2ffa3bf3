//! The host's runtime directory: where the long-running commands (`mount`, `sync`,
//! `failover`) publish their state for `dagfs status`, for each other and for the Airflow
//! bundle, as small JSON files replaced atomically.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Environment variable that overrides the runtime directory.
pub const RUNTIME_DIR_ENV: &str = "DAGFS_RUNTIME_DIR";

/// The directory holding the state files: `$DAGFS_RUNTIME_DIR`, else `/run/dagfs` for
/// root, else `$XDG_RUNTIME_DIR/dagfs`, else `dagfs-<uid>` in the temporary directory.
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
    std::env::temp_dir().join(format!("dagfs-{}", uid.as_raw()))
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// Writes `value` as JSON to `path` atomically (a temporary file beside it, renamed over it),
/// creating the directory.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    // One write: serde_json writes token by token, a syscall each when unbuffered.
    std::io::Write::write_all(&mut file, &serde_json::to_vec_pretty(value)?)?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}
