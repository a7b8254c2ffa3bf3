//! Local files replaced atomically: the one way dagfs writes a file that a reader (another
//! process, or this one after a crash) may look at while it changes: state files, the hash
//! cache, cached objects and manifests, local copies of pack indexes, the mount's record.
//!
//! The bytes go to a temporary file beside the target (same directory: same file system,
//! and no shared directory whose lock every writer takes), then one `rename(2)` puts it in
//! place, so a reader sees the old file or all of the new one, never part of it.

use std::io::Write;
use std::path::{Path, PathBuf};

/// How a file is written.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Fsync the file before the rename and the directory after it, so the new file survives
    /// a power loss once the write returns (else the caller syncs later, or can lose it).
    pub durable: bool,
    /// Readable by every user (mode 0644: state files other users' processes read); else
    /// only by the owner (0600, the temporary file's own mode).
    pub world_readable: bool,
    /// How the temporary file's name starts (callers that clean up leftovers look for it).
    pub temp_prefix: &'static str,
}

impl Options {
    /// Durable, world-readable: a state file.
    pub const STATE: Options = Options {
        durable: true,
        world_readable: true,
        temp_prefix: ".tmp",
    };
    /// Neither: a cache that is rebuilt if lost.
    pub const SCRATCH: Options = Options {
        durable: false,
        world_readable: false,
        temp_prefix: ".tmp",
    };
}

/// A fresh hidden name beside `path`, `.NAME.PURPOSE-<uuid>`, for a tree built there before
/// a rename puts it in place, or moved there to be removed: readers skip dot names, and
/// cleanups find leftovers by their PURPOSE.
pub fn hidden_sibling(path: &Path, purpose: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let unique = uuid::Uuid::new_v4().simple();
    path.with_file_name(format!(".{name}.{purpose}-{unique}"))
}

/// Replaces `path` with `bytes` atomically (see the module documentation), creating its
/// directory if needed.
pub fn write(path: &Path, bytes: &[u8], options: Options) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::Builder::new()
        .prefix(options.temp_prefix)
        .tempfile_in(dir)?;
    if options.world_readable {
        file.as_file()
            .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    }
    // One write: callers hand over whole buffers (serde_json writes token by token).
    file.write_all(bytes)?;
    if options.durable {
        file.as_file().sync_all()?;
    }
    file.persist(path).map_err(|e| e.error)?;
    if options.durable {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_the_file_whole_with_the_mode_asked_for_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        write(&path, b"one", Options::STATE).unwrap();
        write(&path, b"two", Options::STATE).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        write(&path, b"three", Options::SCRATCH).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }
}
