//! `dagfs checkout`: one generation materialised as a plain local directory, for Airflow
//! workers that must run exactly the code a DAG run was created with.
//!
//! The tree is built beside the target (`.NAME.dagfs-tmp-<uuid>` in the same parent), its
//! files copied from the verified cache (`std::fs::copy` uses `copy_file_range`, which
//! reflinks on copy-on-write filesystems such as XFS and Btrfs; hard links are not used
//! because a checkout file's mode and mtime differ per generation and a writable hard link
//! would let a worker damage the cache), re-hashed and checked against the manifest's tree
//! id, and only then renamed into place. Files never get write permission for group or
//! others, whatever the manifest says. An existing checkout is re-hashed every time it is
//! asked for, and replaced if its files no longer match. A checkout is therefore either absent or complete,
//! and concurrent checkouts of the same generation agree: the first rename wins, the others
//! find the same tree there.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic::hidden_sibling;
use crate::cache::{Cache, CacheError};
use crate::format::{tree_id, Manifest};
use crate::generations::{self, GenerationError};
use crate::store::{Store, StoreError};

/// The marker file inside a checkout naming its generation and tree; `push` and `verify`
/// ignore it.
pub const MARKER: &str = ".dagfs-checkout.json";

/// Why a checkout failed; nothing is left at the target path.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    /// The cache or the store failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The generation could not be read.
    #[error(transparent)]
    Generation(#[from] GenerationError),
    /// Some files cannot be served: corrupt bytes in the store, or a content whose length is
    /// not the one the generation records.
    #[error("generation {generation} cannot be checked out: {}; `dagfs verify --store URL --deep` checks every object", .files.join("; "))]
    Corrupt {
        /// The generation.
        generation: u64,
        /// The files.
        files: Vec<String>,
    },
    /// The target exists and is not a checkout of this generation.
    #[error("{path} exists and is not a checkout of generation {generation} (tree {tree}); remove it or choose another directory")]
    Occupied {
        /// The target.
        path: PathBuf,
        /// The generation asked for.
        generation: u64,
        /// Its tree id.
        tree: String,
    },
    /// What was written could not be read back.
    #[error(transparent)]
    Scan(#[from] crate::scan::ScanError),
    /// Local disk trouble.
    #[error("checkout into {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// What was written does not hash to the generation's tree id.
    #[error("the files written to {path} do not match generation {generation}'s tree id; the local disk or cache is damaged (delete the cache directory and retry)")]
    Mismatch {
        /// The temporary directory (removed).
        path: PathBuf,
        /// The generation.
        generation: u64,
    },
}

/// What the marker says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkout {
    /// The generation.
    pub generation: u64,
    /// Its tree id (hex).
    pub tree_id: String,
    /// Its manifest id (hex).
    pub manifest_id: String,
    /// The store it came from.
    pub store: String,
    /// Files in it.
    pub files: usize,
}

/// The marker of the checkout at `dir`, if `dir` is one.
pub fn read_marker(dir: &Path) -> Option<Checkout> {
    let text = std::fs::read(dir.join(MARKER)).ok()?;
    serde_json::from_slice(&text).ok()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckoutError + '_ {
    move |source| CheckoutError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The manifest of `generation` (the head if `None`) with every object in `cache`; a
/// generation already complete in the cache needs no store at all.
async fn cached_generation(
    store: &dyn Store,
    cache: &Cache,
    generation: Option<u64>,
    concurrency: usize,
) -> Result<Manifest, CheckoutError> {
    if let Some(g) = generation {
        if let Ok(Some(manifest)) = cache.load_manifest(g) {
            if manifest
                .entries
                .iter()
                .all(|e| cache.has_object(&e.blake3, e.size))
            {
                return Ok(manifest);
            }
        }
    }
    let generation = generations::given_or_head(store, generation).await?;
    let cached = cache
        .fetch_generation(store, generation, concurrency)
        .await?;
    if !cached.corrupt.is_empty() {
        return Err(CheckoutError::Corrupt {
            generation,
            files: cached.corrupt,
        });
    }
    Ok(cached.manifest)
}

/// Materialises `generation` (the head if `None`) of `store` at `dir`, through `cache`.
/// Returns the checkout and whether this call created it (`false`: it was already there).
pub async fn checkout(
    store: &dyn Store,
    cache: &Cache,
    dir: &Path,
    generation: Option<u64>,
    concurrency: usize,
) -> Result<(Checkout, bool), CheckoutError> {
    let manifest = cached_generation(store, cache, generation, concurrency).await?;
    let wanted = Checkout {
        generation: manifest.generation,
        tree_id: manifest.tree_id.to_string(),
        manifest_id: manifest.manifest_id.to_string(),
        store: store.url().to_string(),
        files: manifest.entries.len(),
    };
    let occupied = || CheckoutError::Occupied {
        path: dir.to_path_buf(),
        generation: wanted.generation,
        tree: wanted.tree_id.clone(),
    };
    if dir.exists() {
        let found = match read_marker(dir) {
            Some(found) if found.tree_id == wanted.tree_id => found,
            _ => return Err(occupied()),
        };
        // The marker says what the directory was; check that it still is (a worker may
        // have edited a file, a disk may have lost one).
        let (dir_owned, manifest_owned) = (dir.to_path_buf(), manifest.clone());
        let intact = tokio::task::spawn_blocking(move || matches(&dir_owned, &manifest_owned))
            .await
            .expect("checkout checker does not panic")?;
        if intact {
            return Ok((found, false));
        }
        tracing::warn!(dir = %dir.display(), generation = wanted.generation,
            "the checkout's files no longer match its generation; replacing it");
        set_aside(dir)?;
    }
    let (cache, dir_owned, wanted_owned) = (cache.clone(), dir.to_path_buf(), wanted.clone());
    let built =
        tokio::task::spawn_blocking(move || build(&cache, &manifest, &dir_owned, &wanted_owned))
            .await
            .expect("checkout builder does not panic")?;
    if built {
        return Ok((wanted, true));
    }
    // Another checkout of this directory won the rename: accept it if it is the same tree.
    match read_marker(dir) {
        Some(found) if found.tree_id == wanted.tree_id => Ok((found, false)),
        _ => Err(occupied()),
    }
}

/// The mode a checked-out file gets: the manifest's, without write permission for group and
/// others (a folder imported from an NFS gateway carries 0777, which would let any local
/// user edit the code a worker runs).
fn checkout_mode(mode: u32) -> u32 {
    mode & 0o755
}

/// The manifest's entries as a checkout holds them (modes as [`checkout_mode`] makes them).
fn expected_entries(manifest: &Manifest) -> Vec<crate::format::Entry> {
    manifest
        .entries
        .iter()
        .map(|e| crate::format::Entry {
            mode: checkout_mode(e.mode),
            ..e.clone()
        })
        .collect()
}

/// Whether the files in `dir` (marker aside) are exactly `manifest`'s, re-hashed from disk.
fn matches(dir: &Path, manifest: &Manifest) -> Result<bool, CheckoutError> {
    let mut on_disk = crate::scan::hash_tree(dir)?;
    on_disk.retain(|e| e.path != MARKER);
    Ok(tree_id(&on_disk) == tree_id(&expected_entries(manifest)))
}

/// Moves a damaged checkout out of the way and deletes it (a concurrent checkout may have
/// done so already).
fn set_aside(dir: &Path) -> Result<(), CheckoutError> {
    let aside = hidden_sibling(dir, "dagfs-damaged");
    match std::fs::rename(dir, &aside) {
        Ok(()) => std::fs::remove_dir_all(&aside).map_err(io(&aside)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(dir)(e)),
    }
}

/// Builds the tree beside `dir` and renames it into place; `Ok(false)` if `dir` appeared
/// meanwhile (the temporary tree is removed).
fn build(
    cache: &Cache,
    manifest: &Manifest,
    dir: &Path,
    marker: &Checkout,
) -> Result<bool, CheckoutError> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let tmp = hidden_sibling(dir, "dagfs-tmp");
    let result = fill(cache, manifest, &tmp, marker).and_then(|()| {
        match std::fs::rename(&tmp, dir) {
            Ok(()) => Ok(true),
            // The target appeared (a concurrent checkout): rename(2) refuses a non-empty one.
            Err(e) if dir.exists() => {
                tracing::debug!(error = %e, "a concurrent checkout finished first");
                Ok(false)
            }
            Err(e) => Err(io(dir)(e)),
        }
    });
    if !matches!(result, Ok(true)) {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn fill(
    cache: &Cache,
    manifest: &Manifest,
    tmp: &Path,
    marker: &Checkout,
) -> Result<(), CheckoutError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir(tmp).map_err(io(tmp))?;
    for entry in &manifest.entries {
        let path = tmp.join(&entry.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::copy(cache.object_path(&entry.blake3), &path).map_err(io(&path))?;
        let file = std::fs::File::options()
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        file.set_modified(dagfs_fuse::tree::time_of(entry.mtime_ns))
            .map_err(io(&path))?;
        file.set_permissions(std::fs::Permissions::from_mode(checkout_mode(entry.mode)))
            .map_err(io(&path))?;
    }
    // Verify what is on disk, not what was meant to be written.
    if !matches(tmp, manifest)? {
        return Err(CheckoutError::Mismatch {
            path: tmp.to_path_buf(),
            generation: manifest.generation,
        });
    }
    let marker_path = tmp.join(MARKER);
    let json = serde_json::to_vec_pretty(marker).expect("a checkout marker serialises");
    std::fs::write(&marker_path, json).map_err(io(&marker_path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;
    use crate::testutil::publish_files;

    #[tokio::test]
    async fn checkout_is_complete_idempotent_and_refuses_other_trees() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::open(tmp.path().join("store")).await.unwrap();
        publish_files(&store, tmp.path(), &[("a.py", "A1"), ("pkg/b.py", "B")]).await;
        publish_files(&store, tmp.path(), &[("a.py", "A2"), ("pkg/b.py", "B")]).await;
        let cache = Cache::open(&tmp.path().join("cache")).unwrap();
        let dir = tmp.path().join("versions/1");

        let (made, created) = checkout(&store, &cache, &dir, Some(1), 4).await.unwrap();
        assert!(created);
        assert_eq!(made.generation, 1);
        assert_eq!(std::fs::read_to_string(dir.join("a.py")).unwrap(), "A1");
        assert_eq!(std::fs::read_to_string(dir.join("pkg/b.py")).unwrap(), "B");
        assert_eq!(read_marker(&dir).unwrap(), made);

        // Again: nothing to do. Generation 2 into the same directory: refused, untouched.
        let (again, created) = checkout(&store, &cache, &dir, Some(1), 4).await.unwrap();
        assert!(!created);
        assert_eq!(again, made);
        let err = checkout(&store, &cache, &dir, Some(2), 4)
            .await
            .unwrap_err();
        assert!(matches!(err, CheckoutError::Occupied { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(dir.join("a.py")).unwrap(), "A1");

        // Concurrent checkouts of one generation agree; no temporary trees are left.
        let dir2 = tmp.path().join("versions/2");
        let (x, y) = tokio::join!(
            checkout(&store, &cache, &dir2, Some(2), 4),
            checkout(&store, &cache, &dir2, Some(2), 4)
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(x.0, y.0);
        assert!(x.1 ^ y.1, "exactly one created it");
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path().join("versions"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 2, "{leftovers:?}");

        // Unknown generation: an error, nothing created.
        let dir9 = tmp.path().join("versions/9");
        assert!(checkout(&store, &cache, &dir9, Some(9), 4).await.is_err());
        assert!(!dir9.exists());
    }

    /// Modes that let other users write (an NFS-gateway import's 0777) are not copied, and
    /// a checkout whose files were changed is not reused on its marker alone.
    #[tokio::test]
    async fn checkout_drops_group_and_other_write_and_rechecks_an_existing_one() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::open(tmp.path().join("store")).await.unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("a.py"), "A").unwrap();
        std::fs::set_permissions(src.join("a.py"), std::fs::Permissions::from_mode(0o777)).unwrap();
        let desired = crate::publish::Desired::from_folder(&src, &Default::default()).unwrap();
        assert_eq!(desired.entries[0].mode, 0o777);
        crate::publish::publish(&store, &desired, &Default::default())
            .await
            .unwrap();
        let cache = Cache::open(&tmp.path().join("cache")).unwrap();
        let dir = tmp.path().join("versions/1");
        checkout(&store, &cache, &dir, Some(1), 4).await.unwrap();
        let mode = std::fs::metadata(dir.join("a.py"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o755, "group/other write must not be copied");

        std::fs::write(dir.join("a.py"), "edited by a task").unwrap();
        let (_, created) = checkout(&store, &cache, &dir, Some(1), 4).await.unwrap();
        assert!(created, "a damaged checkout is rebuilt");
        assert_eq!(std::fs::read_to_string(dir.join("a.py")).unwrap(), "A");
    }
}
