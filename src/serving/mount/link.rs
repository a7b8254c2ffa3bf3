//! Link mode (`dagfs mount --mode link`): the mount's loop serving generations without FUSE
//! and without privileges, in the manner of git-sync, for containers and pods that cannot
//! have `/dev/fuse`.
//!
//! Layout under the directory `DIR` given as the mountpoint:
//!
//! ```text
//! DIR/current -> .dagfs/generations/N     the generation served (Airflow's dags_folder)
//! DIR/.dagfs/generations/N/               one directory per kept generation (the views)
//! DIR/.dagfs/empty/                       what `current` shows while the store is empty
//! ```
//!
//! A generation directory is built beside its final name (`.N.tmp-<uuid>`), from the
//! verified cache only, re-hashed, and renamed into place: it is absent or complete. The
//! link is switched by creating a new symlink and renaming it over `current` (one
//! `rename(2)`), so `current` always names a complete generation, also after a `kill -9`
//! anywhere. A restart removes half-built directories and re-hashes the others.
//!
//! Files come from the cache as hard links (no bytes copied) only when no reader can write
//! them: hard-linked files are the cache's own inodes, made read-only and owned by dagfs, so
//! a reader of another user cannot write, `chmod` or replace them (the directories are
//! dagfs's and read-only too). A reader running as the same user as dagfs could `chmod` them
//! writable again, so `mount.link_files = "auto"` hard-links only when dagfs runs as root,
//! and copies otherwise (`copy_file_range`: a reflink on XFS/Btrfs, so no bytes are copied
//! there either). A copy a reader changes damages only that directory, never the cache.
//! Generation directories come and go with the cache's kept generations, exactly as the
//! FUSE mount's views do (`mount.keep_generations`, `mount.keep_for`).
//!
//! Mtimes follow the FUSE mount's rule (`dagfs_fuse::tree`): before `current` moves, a file
//! unchanged from the generation served gets the mtime it shows there, any other the later of
//! its manifest mtime and the second after the recorded floor, so a path under `current`
//! never shows two files in one mtime second (Python's bytecode cache trusts that second).
//! Hard-linked files share their inode with every path holding the same object, so an
//! object's mtime is the latest one any of its paths needs: it only ever moves forward.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use dagfs_fuse::tree::{new_file_mtime_ns, ns_of, time_of};

use super::{MountError, Serving, ViewState};
use crate::atomic::hidden_sibling;
use crate::cache::Cache;
use crate::config::LinkFiles;
use crate::format::Manifest;

/// The symlink Airflow's `dags_folder` points at, under the mount's directory.
pub const CURRENT: &str = "current";
/// Where the generation directories are, under the mount's directory (the same paths as the
/// FUSE mount's views, so the Airflow bundle finds them unchanged).
pub const GENERATIONS: &str = ".dagfs/generations";
const EMPTY: &str = ".dagfs/empty";

/// The served tree of link mode.
pub struct LinkTree {
    root: PathBuf,
    generations: PathBuf,
    cache: Cache,
    hard_links: bool,
    /// Generation directories present and verified, with their tree ids.
    built: Mutex<BTreeMap<u64, String>>,
    /// No file under `current` showed a later mtime (nanoseconds since the epoch); recorded
    /// in the cache before it is exceeded.
    mtime_floor: Mutex<i64>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MountError + '_ {
    move |e| MountError::Mountpoint {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// Removes a directory tree built here (its directories are read-only): moved aside first
/// under a dot name, so a half-removed tree is never seen under its name and a restart
/// finishes the job.
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    let hidden = dir
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'));
    let doomed = if hidden {
        dir.to_path_buf()
    } else {
        let aside = hidden_sibling(dir, "removing");
        std::fs::rename(dir, &aside)?;
        aside
    };
    for entry in walkdir::WalkDir::new(&doomed).into_iter().flatten() {
        if entry.file_type().is_dir() {
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o755));
        }
    }
    std::fs::remove_dir_all(&doomed)
}

/// The permission bits a served file gets: readable, executable where the manifest says,
/// never writable.
fn served_mode(mode: u32) -> u32 {
    0o444 | (mode & 0o111)
}

impl LinkTree {
    /// Opens the tree under `root`: creates its directories, removes what a crash left
    /// half-built, and keeps the generation directories that still hash to their cached
    /// generation (others are removed and built again when needed).
    pub fn open(root: &Path, cache: Cache, files: LinkFiles) -> Result<LinkTree, MountError> {
        let generations = root.join(GENERATIONS);
        for dir in [&generations, &root.join(EMPTY)] {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let hard_links = match files {
            LinkFiles::Auto => rustix::process::geteuid().is_root(),
            LinkFiles::Hardlink => true,
            LinkFiles::Copy => false,
        };
        let tree = LinkTree {
            root: root.to_path_buf(),
            generations,
            mtime_floor: Mutex::new(super::shown::link_floor(&cache, root, &root.join(CURRENT))),
            cache,
            hard_links,
            built: Mutex::default(),
        };
        // Temporary links of a switch that was cut short.
        for entry in std::fs::read_dir(root).map_err(io(root))?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".current-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let entries: Vec<_> = std::fs::read_dir(&tree.generations)
            .map_err(io(&tree.generations))?
            .flatten()
            .collect();
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with('.') {
                tracing::info!(dir = %path.display(), "removing a generation directory left half-built or half-removed");
                remove_tree(&path).map_err(io(&path))?;
                continue;
            }
            let Ok(generation) = name.parse::<u64>() else {
                continue;
            };
            let manifest = match tree.cache.load_manifest(generation) {
                Ok(Some(manifest)) => manifest,
                // Not in the cache: removed once the first switch is done (show_views).
                _ => continue,
            };
            if tree.matches(&path, &manifest) {
                tree.built_dirs()
                    .insert(generation, manifest.tree_id.to_string());
            } else {
                tracing::warn!(dir = %path.display(), "a generation directory no longer matches its generation (written to?); rebuilding it");
                remove_tree(&path).map_err(io(&path))?;
            }
        }
        tracing::info!(dir = %root.display(), hard_links, "link mode: serving generation directories and the symlink {}", root.join(CURRENT).display());
        Ok(tree)
    }

    fn built_dirs(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, String>> {
        self.built
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the files under `dir` are exactly `manifest`'s paths, lengths and bytes,
    /// re-hashed from disk.
    fn matches(&self, dir: &Path, manifest: &Manifest) -> bool {
        let Ok(on_disk) = crate::scan::hash_tree(dir) else {
            return false;
        };
        on_disk.len() == manifest.entries.len()
            && on_disk
                .iter()
                .zip(&manifest.entries)
                .all(|(found, wanted)| {
                    found.path == wanted.path
                        && found.size == wanted.size
                        && found.blake3 == wanted.blake3
                })
    }

    /// Makes sure `DIR/.dagfs/generations/N` holds `manifest`'s generation.
    fn build(&self, manifest: &Manifest) -> Result<(), MountError> {
        let generation = manifest.generation;
        let tree_id = manifest.tree_id.to_string();
        if self.built_dirs().get(&generation) == Some(&tree_id) {
            return Ok(());
        }
        let target = self.generations.join(generation.to_string());
        if target.exists() {
            // Another tree under this number (the store was rebuilt), or never verified.
            remove_tree(&target).map_err(io(&target))?;
        }
        let tmp = hidden_sibling(&target, "tmp");
        let result = self.fill(&tmp, manifest).and_then(|()| {
            std::fs::rename(&tmp, &target).map_err(io(&target))?;
            Ok(())
        });
        if result.is_err() {
            let _ = remove_tree(&tmp);
        }
        result?;
        self.built_dirs().insert(generation, tree_id);
        Ok(())
    }

    fn fill(&self, tmp: &Path, manifest: &Manifest) -> Result<(), MountError> {
        std::fs::create_dir(tmp).map_err(io(tmp))?;
        let mut dirs = vec![tmp.to_path_buf()];
        for entry in &manifest.entries {
            let path = tmp.join(&entry.path);
            let parent = path.parent().expect("entries are under the directory");
            if !parent.exists() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
                let mut dir = parent;
                while dir != tmp && !dirs.iter().any(|d| d == dir) {
                    dirs.push(dir.to_path_buf());
                    dir = dir.parent().expect("under tmp");
                }
            }
            let object = self.cache.object_path(&entry.blake3);
            if !self.hard_links || !self.link(&object, &path, entry.mode)? {
                self.copy(&object, &path, entry)?;
            }
        }
        // Verify what is on disk, not what was meant to be written.
        if !self.matches(tmp, manifest) {
            return Err(MountError::Tree {
                generation: manifest.generation,
                detail: format!(
                    "the files written to {} do not match it; the local disk or the cache {} is damaged",
                    tmp.display(),
                    self.cache.root().display()
                ),
            });
        }
        // Read-only directories: a reader of another user could not write them anyway; a
        // reader of dagfs's own user (copies) gets no `__pycache__` or stray files here.
        for dir in dirs.iter().rev() {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555))
                .map_err(io(dir))?;
        }
        Ok(())
    }

    /// Hard-links the cache object to `path`, making the object read-only first; `false`
    /// when the file system cannot (the cache is on another one): copy instead.
    fn link(&self, object: &Path, path: &Path, mode: u32) -> Result<bool, MountError> {
        let wanted = served_mode(mode);
        let meta = std::fs::metadata(object).map_err(io(object))?;
        if meta.permissions().mode() & 0o7777 != wanted {
            std::fs::set_permissions(object, std::fs::Permissions::from_mode(wanted))
                .map_err(io(object))?;
        }
        match std::fs::hard_link(object, path) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
                tracing::debug!(error = %e, "the cache is on another file system; copying");
                Ok(false)
            }
            Err(e) => Err(io(path)(e)),
        }
    }

    fn copy(
        &self,
        object: &Path,
        path: &Path,
        entry: &crate::format::Entry,
    ) -> Result<(), MountError> {
        std::fs::copy(object, path).map_err(io(path))?;
        let file = std::fs::File::options()
            .write(true)
            .open(path)
            .map_err(io(path))?;
        file.set_modified(time_of(entry.mtime_ns))
            .map_err(io(path))?;
        file.set_permissions(std::fs::Permissions::from_mode(served_mode(entry.mode)))
            .map_err(io(path))
    }

    /// The manifest of the generation `current` points at, if it is a cached one.
    fn served(&self) -> Option<Manifest> {
        let target = std::fs::read_link(self.root.join(CURRENT)).ok()?;
        let generation = target
            .strip_prefix(GENERATIONS)
            .ok()?
            .to_str()?
            .parse()
            .ok()?;
        self.cache.load_manifest(generation).ok().flatten()
    }

    /// Gives the files of `manifest`'s directory the mtimes readers under `current` must see
    /// once it points there (see the module documentation), recording the new floor first.
    fn show_mtimes(&self, manifest: &Manifest) -> Result<(), MountError> {
        let dir = self.generations.join(manifest.generation.to_string());
        let served = self.served();
        let before: HashMap<&str, &crate::format::Entry> = served
            .iter()
            .flat_map(|m| &m.entries)
            .map(|e| (e.path.as_str(), e))
            .collect();
        let mut floor = self
            .mtime_floor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The mtime each file (each object, when hard-linked) must show.
        let mut wanted: HashMap<PathBuf, i64> = HashMap::new();
        for entry in &manifest.entries {
            let unchanged = before.get(entry.path.as_str()).is_some_and(|old| {
                (old.blake3, old.mode, old.size, old.mtime_ns)
                    == (entry.blake3, entry.mode, entry.size, entry.mtime_ns)
            });
            let shown_now = || {
                let path = self.root.join(CURRENT).join(&entry.path);
                std::fs::metadata(path).and_then(|m| m.modified()).ok()
            };
            let mtime_ns = match unchanged.then(shown_now).flatten() {
                Some(shown) => ns_of(shown),
                None => new_file_mtime_ns(entry.mtime_ns, *floor),
            };
            let file = match self.hard_links {
                true => self.cache.object_path(&entry.blake3),
                false => dir.join(&entry.path),
            };
            let slot = wanted.entry(file).or_insert(mtime_ns);
            *slot = (*slot).max(mtime_ns);
        }
        let newest = wanted.values().copied().max().unwrap_or(*floor).max(*floor);
        let shown = dagfs_fuse::Shown {
            label: dagfs_fuse::TreeLabel {
                generation: manifest.generation,
                tree_id: manifest.tree_id.to_string(),
            },
            mtime_floor_ns: newest,
            // Readers see the mtimes on disk; a restart looks at them there.
            moved: Vec::new(),
        };
        super::shown::record(&self.cache, &self.root, &shown).map_err(io(self.cache.root()))?;
        *floor = newest;
        for (file, mtime_ns) in wanted {
            let mtime = time_of(mtime_ns);
            let opened = std::fs::File::open(&file).map_err(io(&file))?;
            if opened.metadata().and_then(|m| m.modified()).ok() != Some(mtime) {
                opened.set_modified(mtime).map_err(io(&file))?;
            }
        }
        Ok(())
    }

    /// Points `DIR/current` at `target` (relative to DIR) in one rename.
    fn point_at(&self, target: &str) -> Result<(), MountError> {
        let staged = self
            .root
            .join(format!(".current-{}", uuid::Uuid::new_v4().simple()));
        std::os::unix::fs::symlink(target, &staged).map_err(io(&staged))?;
        let link = self.root.join(CURRENT);
        std::fs::rename(&staged, &link).map_err(|e| {
            let _ = std::fs::remove_file(&staged);
            io(&link)(e)
        })?;
        // The new name survives a power loss too.
        std::fs::File::open(&self.root)
            .and_then(|dir| dir.sync_all())
            .map_err(io(&self.root))
    }
}

impl Serving for LinkTree {
    fn switch(&self, manifest: Option<&Manifest>, unservable: &[String]) -> Result<(), MountError> {
        let Some(manifest) = manifest else {
            return self.point_at(EMPTY);
        };
        if !unservable.is_empty() {
            // A directory cannot hold a file that reads as EIO: keep the generation served.
            return Err(MountError::Tree {
                generation: manifest.generation,
                detail: format!(
                    "{} file(s) cannot be served, e.g. {}; still serving the previous generation",
                    unservable.len(),
                    unservable[0]
                ),
            });
        }
        self.build(manifest)?;
        self.show_mtimes(manifest)?;
        self.point_at(&format!("{GENERATIONS}/{}", manifest.generation))
    }

    fn show_views(&self, cache: &Cache) -> Vec<ViewState> {
        let mut views = Vec::new();
        let generations = cache.generations().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot list the cached generations");
            Vec::new()
        });
        for generation in generations {
            let manifest = match cache.load_manifest(generation) {
                Ok(Some(manifest)) => manifest,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(generation, error = %e, "cannot read a cached manifest");
                    continue;
                }
            };
            let tree_id = manifest.tree_id.to_string();
            let built = self.built_dirs().get(&generation) == Some(&tree_id);
            let complete = built
                || manifest
                    .entries
                    .iter()
                    .all(|e| cache.has_object(&e.blake3, e.size));
            if !complete {
                continue;
            }
            match self.build(&manifest) {
                Ok(()) => views.push(ViewState {
                    generation,
                    tree_id,
                }),
                Err(e) => {
                    tracing::error!(generation, error = %e, "cannot build a generation directory")
                }
            }
        }
        // Directories of generations the cache no longer keeps: their readers had
        // `mount.keep_for` (open files stay readable after the removal).
        let served = std::fs::read_link(self.root.join(CURRENT)).ok();
        let entries = std::fs::read_dir(&self.generations)
            .map(|dir| dir.flatten().collect::<Vec<_>>())
            .unwrap_or_default();
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(generation) = name.parse::<u64>() else {
                continue;
            };
            let is_served = served.as_deref() == Some(Path::new(&format!("{GENERATIONS}/{name}")));
            if is_served || views.iter().any(|v| v.generation == generation) {
                continue;
            }
            self.built_dirs().remove(&generation);
            if let Err(e) = remove_tree(&entry.path()) {
                tracing::warn!(generation, error = %e, "cannot remove a generation directory no longer kept");
            }
        }
        views
    }

    fn ended_outside(&self) -> bool {
        false
    }
}
