//! What a mount showed that its manifests do not say, kept in the cache directory so a
//! restarted mount carries on from it: the mtime floor and the files showing a later mtime
//! than their manifest's (`dagfs_fuse::tree` has the rule, DESIGN.md "Mount semantics" the
//! reason: Python's bytecode cache).
//!
//! The record is `CACHE/shown/<mountpoint id>.json` (one per mountpoint: two mounts may share
//! a cache, and what one showed says nothing of the other's paths), replaced atomically and
//! fsynced before the tree it describes becomes visible.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use dagfs_fuse::{Shown, ShownBefore};
use serde::{Deserialize, Serialize};

use super::tree_of;
use crate::cache::Cache;

use crate::format::Digest;

/// The record of what the mount at `mountpoint` showed.
fn record_path(cache: &Cache, mountpoint: &Path) -> PathBuf {
    let id = Digest::of(mountpoint.as_os_str().as_encoded_bytes()).to_string();
    cache
        .root()
        .join("shown")
        .join(format!("{}.json", &id[..16]))
}

/// The record on disk.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// The generation served (0: none).
    generation: u64,
    /// Its tree id.
    tree_id: String,
    /// No file served showed a later mtime, nanoseconds since the epoch.
    mtime_floor_ns: i64,
    /// Files showing another mtime than their manifest's: path, mtime shown.
    moved: Vec<(String, i64)>,
}

/// Records in `cache` what the mount at `mountpoint` is about to show, durably.
pub fn record(cache: &Cache, mountpoint: &Path, shown: &Shown) -> std::io::Result<()> {
    let record = Record {
        generation: shown.label.generation,
        tree_id: shown.label.tree_id.clone(),
        mtime_floor_ns: shown.mtime_floor_ns,
        moved: shown.moved.clone(),
    };
    crate::runtime::write_json(&record_path(cache, mountpoint), &record)
}

fn read(cache: &Cache, mountpoint: &Path) -> Option<Record> {
    let path = record_path(cache, mountpoint);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return Some(unreadable(&path, &e.to_string())),
    };
    Some(serde_json::from_slice(&bytes).unwrap_or_else(|e| unreadable(&path, &e.to_string())))
}

/// A record that cannot be read stands for "unknown tree, floor now": every file shows a new
/// mtime, later than any a clock that never went back can have given out.
fn unreadable(path: &Path, detail: &str) -> Record {
    tracing::warn!(path = %path.display(), error = detail, "the record of what the mount showed is unreadable; every file shows a new mtime");
    Record {
        generation: 0,
        tree_id: String::new(),
        mtime_floor_ns: crate::runtime::now_ms() as i64 * 1_000_000,
        moved: Vec::new(),
    }
}

/// What the last mount at `mountpoint` showed, for the FUSE mount's first tree: its floor,
/// and the files of the generation it served (if still cached) with the mtimes they showed.
/// `None` when nothing was recorded: files then show their manifests' mtimes.
pub fn before(cache: &Cache, mountpoint: &Path) -> Option<ShownBefore> {
    let record = read(cache, mountpoint)?;
    let manifest = cache
        .load_manifest(record.generation)
        .ok()
        .flatten()
        .filter(|m| m.tree_id.to_string() == record.tree_id);
    let moved: HashMap<String, i64> = record.moved.into_iter().collect();
    let files = tree_of(manifest.as_ref())
        .1
        .into_iter()
        .map(|file| {
            let shown = moved.get(&file.path).copied().unwrap_or(file.mtime_ns);
            (file, shown)
        })
        .collect();
    Some(ShownBefore {
        mtime_floor_ns: record.mtime_floor_ns,
        files,
    })
}

/// The floor link mode at `dir` starts from: the recorded one, or else the newest mtime of
/// the files `current` shows (left by a mount whose cache is gone).
pub fn link_floor(cache: &Cache, dir: &Path, current: &Path) -> i64 {
    if let Some(record) = read(cache, dir) {
        return record.mtime_floor_ns;
    }
    walkdir::WalkDir::new(current)
        .follow_root_links(true)
        .into_iter()
        .flatten()
        .filter(|entry| entry.file_type().is_file())
        .filter_map(|entry| entry.metadata().ok()?.modified().ok())
        .map(dagfs_fuse::tree::ns_of)
        .max()
        .unwrap_or(i64::MIN)
}
