//! Scanning a DAG folder: which files belong to a generation, and their blake3 digests.
//!
//! Everything in the folder is published, as git-sync or a DAG volume would deploy it, except:
//!
//! - build and VCS debris: `__pycache__/`, `*.pyc`, `*.pyo`, `.git/`, `.hg/`, `.svn/`;
//! - editor temporaries: vim (`*.swp`, `*.swo`, `*.swx`, `4913`, `*~`), emacs (`.#*`, `#*#`),
//!   JetBrains (`*___jb_tmp___`, `*___jb_old___`), `.DS_Store`;
//! - the marker of a `dagfs checkout` (`.dagfs-checkout.json`) and a top-level `.dagfs/`
//!   (the name under which a mount shows its generations);
//! - what `.dagfsignore` files exclude: gitignore syntax, each file for its directory and
//!   everything below, deeper files overriding shallower ones, like `.gitignore`; plus the
//!   `scan.exclude` patterns, as if written in a `.dagfsignore` at the root.
//!
//! `.airflowignore` files are published like any file and left to Airflow: they hide files
//! from DAG *parsing*, while DAGs often import helper modules kept under them.
//!
//! The walk (walkdir) follows symlinks, as Airflow's DAG discovery does, publishing the target's
//! content under the link's name; symlink loops and dangling links are errors naming the path.
//! Digests come from a [`HashCache`] when a file's size, mtime, ctime and inode are unchanged,
//! and are computed on all cores otherwise.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use crate::format::{check_path, Digest, Entry};

/// Name of the per-directory file of gitignore patterns that scans leave out.
pub const DAGFSIGNORE: &str = ".dagfsignore";

/// The name a mount shows its generations under (`MOUNT/.dagfs/generations/N`); a top-level
/// entry of that name is never published.
pub const RESERVED_TOP_LEVEL: &str = ".dagfs";

/// Directories never published.
const IGNORED_DIRS: &[&str] = &["__pycache__", ".git", ".hg", ".svn"];

/// File name patterns never published (compiled, non-VCS debris and editor temporaries).
const IGNORED_FILES: &[&str] = &[
    "*.pyc",
    "*.pyo",
    "*.swp",
    "*.swo",
    "*.swx",
    "4913",
    "*~",
    ".#*",
    "#*#",
    "*___jb_tmp___",
    "*___jb_old___",
    ".DS_Store",
    // The marker of a `dagfs checkout`: a checkout pushed again is the same tree.
    ".dagfs-checkout.json",
];

/// How to scan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanOptions {
    /// gitignore patterns applied as if they were a `.dagfsignore` at the folder's root
    /// (`scan.exclude`), for hosts where the folder itself cannot carry the file.
    pub exclude: Vec<String>,
}

/// An ignore pattern that cannot be parsed. The scan fails rather than publish what the
/// pattern was meant to keep out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: invalid pattern {pattern:?}: {reason}; fix the line (gitignore syntax)")]
pub struct IgnoreError {
    /// The ignore file (`DIR/.dagfsignore`), or `scan.exclude`.
    pub file: String,
    /// The line.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A folder that cannot be scanned as a whole; nothing is published from a failed scan.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The folder or a file in it cannot be read.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file name is not UTF-8; manifests, HDFS and Python module names need UTF-8.
    #[error("{}: file name is not valid UTF-8; rename it (or add it to .dagfsignore)", .0.display())]
    NonUtf8(PathBuf),
    /// A symlink that points nowhere, or into a loop.
    #[error("{}: {reason}; fix or remove the link", .path.display())]
    BadSymlink {
        /// The link.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A path the format does not accept.
    #[error("{0}")]
    Format(#[from] crate::format::FormatError),
    /// A `.dagfsignore` line that is not a valid pattern.
    #[error(transparent)]
    Ignore(#[from] IgnoreError),
}

/// One file found by a scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannedFile {
    /// Its manifest entry (path relative to the folder, mode, size, mtime, digest).
    pub entry: Entry,
    /// Where it is on disk.
    pub local: PathBuf,
}

/// Scans `root` and returns its files sorted by path, hashing what `cache` does not know.
///
/// An entry's size, mtime and mode always describe the bytes its digest was computed from:
/// a hashed file's metadata comes from the open file it was read through, and its size is
/// the number of bytes hashed (a file rewritten in place between the walk and the read is
/// recorded as it was read, never as the walk saw it).
pub fn scan(
    root: &Path,
    options: &ScanOptions,
    cache: &mut HashCache,
) -> Result<Vec<ScannedFile>, ScanError> {
    let started = SystemTime::now();
    let found = walk(root, options)?;
    let mut files = Vec::with_capacity(found.len());
    let mut to_hash = Vec::new();
    for (index, (rel, local, meta)) in found.into_iter().enumerate() {
        let stamp = FileStamp::of(&meta).map_err(|source| ScanError::Io {
            path: local.clone(),
            source,
        })?;
        let cached = cache.lookup(&rel, &stamp);
        if cached.is_none() {
            to_hash.push(index);
        }
        let mode = meta.mode() & 0o777;
        files.push((rel, local, stamp, mode, cached, true));
    }
    let hashed = hash_all(to_hash.iter().map(|&i| files[i].1.as_path()).collect())?;
    for (index, read) in to_hash.into_iter().zip(hashed) {
        let file = &mut files[index];
        (file.2, file.3, file.4, file.5) = (read.stamp, read.mode, Some(read.digest), read.stable);
    }
    let mut scanned = Vec::with_capacity(files.len());
    for (rel, local, stamp, mode, digest, stable) in files {
        let digest = digest.expect("every file was looked up or hashed");
        if stable {
            cache.remember(&rel, stamp, digest, started);
        } else {
            cache.forget(&rel);
        }
        scanned.push(ScannedFile {
            entry: Entry {
                path: rel,
                mode,
                size: stamp.size,
                mtime_ns: stamp.mtime_ns,
                blake3: digest,
            },
            local,
        });
    }
    cache.retain_only(scanned.iter().map(|f| f.entry.path.as_str()));
    Ok(scanned)
}

/// [`scan`] with the folder's persistent [`HashCache`] (see [`HashCache::default_location`]),
/// saved afterwards. Blocking: call it from a blocking thread.
pub fn scan_cached(root: &Path, options: &ScanOptions) -> Result<Vec<ScannedFile>, ScanError> {
    let mut cache =
        HashCache::default_location(root).map_or_else(HashCache::in_memory, HashCache::load);
    let files = scan(root, options, &mut cache);
    cache.save();
    files
}

/// Walks `root`, applying the ignore rules; returns (relative path, local path, metadata).
fn walk(
    root: &Path,
    options: &ScanOptions,
) -> Result<Vec<(String, PathBuf, fs::Metadata)>, ScanError> {
    let io_err = |path: &Path, source| ScanError::Io {
        path: path.to_path_buf(),
        source,
    };
    let root_meta = fs::metadata(root).map_err(|e| io_err(root, e))?;
    if !root_meta.is_dir() {
        return Err(io_err(
            root,
            io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        ));
    }
    let mut found = Vec::new();
    let mut filter = IgnoreFilter::new(options)?;
    let mut walker = walkdir::WalkDir::new(root)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter();
    while let Some(item) = walker.next() {
        let dirent = item.map_err(|e| walk_error(root, e))?;
        let is_dir = dirent.file_type().is_dir();
        let rel = dirent
            .path()
            .strip_prefix(root)
            .expect("walkdir yields paths under its root")
            .to_str()
            .ok_or_else(|| ScanError::NonUtf8(dirent.path().to_path_buf()))?
            .to_string();
        if dirent.depth() > 0 && filter.ignores(&rel, is_dir) {
            if is_dir {
                walker.skip_current_dir();
            }
            continue;
        }
        if is_dir {
            let ignore_file = dirent.path().join(DAGFSIGNORE);
            if ignore_file.is_file() {
                let text = fs::read_to_string(&ignore_file).map_err(|e| io_err(&ignore_file, e))?;
                filter.add_ignore_file(&rel, &text)?;
            }
            continue;
        }
        check_path(&rel)?;
        let meta = dirent.metadata().map_err(|e| walk_error(root, e))?;
        if meta.is_file() {
            found.push((rel, dirent.path().to_path_buf(), meta));
        }
    }
    Ok(found)
}

fn walk_error(root: &Path, err: walkdir::Error) -> ScanError {
    let path = err.path().unwrap_or(root).to_path_buf();
    if let Some(ancestor) = err.loop_ancestor() {
        return ScanError::BadSymlink {
            path,
            reason: format!("symlink loop back to {}", ancestor.display()),
        };
    }
    let is_link = fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
    match err.into_io_error() {
        Some(e) if is_link && e.kind() == io::ErrorKind::NotFound => ScanError::BadSymlink {
            path,
            reason: "dangling symlink (its target does not exist)".into(),
        },
        Some(source) => ScanError::Io { path, source },
        None => ScanError::Io {
            path,
            source: io::Error::other("walk failed"),
        },
    }
}

/// The ignore rules in force at one point of a depth-first, pre-order walk of a DAG folder
/// (on local disk or in a store), on `/`-separated paths relative to the folder: the
/// built-in debris patterns, `scan.exclude`, and every `.dagfsignore` of the directories
/// above the entry.
pub struct IgnoreFilter {
    /// (depth of the directory holding the ignore file, its rules), outermost first; the
    /// `scan.exclude` patterns come first, at depth 0.
    rules: Vec<(usize, IgnoreRules)>,
}

impl IgnoreFilter {
    /// No `.dagfsignore` read yet; fails on an invalid `scan.exclude` pattern.
    pub fn new(options: &ScanOptions) -> Result<IgnoreFilter, IgnoreError> {
        let mut rules = Vec::new();
        if !options.exclude.is_empty() {
            let patterns = options.exclude.iter().map(String::as_str);
            rules.push((0, IgnoreRules::parse("", "scan.exclude", patterns)?));
        }
        Ok(IgnoreFilter { rules })
    }

    /// Whether the entry `rel` (not the root) is left out; a directory left out is skipped
    /// whole (as in git, nothing below an excluded directory can be re-included). Call it for
    /// every entry in walk order: it also forgets the rules of the directories the walk has
    /// left. As with `.gitignore`, the deepest file with a matching pattern decides, and the
    /// last matching pattern of that file (`!pattern` re-includes).
    pub fn ignores(&mut self, rel: &str, is_dir: bool) -> bool {
        let depth = rel.split('/').count();
        while self.rules.last().is_some_and(|(d, _)| *d >= depth) {
            self.rules.pop();
        }
        let name = rel.rsplit('/').next().unwrap_or(rel);
        if is_builtin_ignored(name, is_dir) || (is_dir && rel == RESERVED_TOP_LEVEL) {
            return true;
        }
        for (_, rules) in self.rules.iter().rev() {
            match rules.matched(rel, is_dir) {
                ignore::Match::Ignore(_) => return true,
                ignore::Match::Whitelist(_) => return false,
                ignore::Match::None => {}
            }
        }
        false
    }

    /// Adds the rules of the `.dagfsignore` (content `text`) of directory `dir` (`""` for
    /// the root), in force for everything below it.
    pub fn add_ignore_file(&mut self, dir: &str, text: &str) -> Result<(), IgnoreError> {
        let depth = if dir.is_empty() {
            0
        } else {
            dir.split('/').count()
        };
        let file = if dir.is_empty() {
            DAGFSIGNORE.to_string()
        } else {
            format!("{dir}/{DAGFSIGNORE}")
        };
        let rules = IgnoreRules::parse(dir, &file, text.lines())?;
        self.rules.push((depth, rules));
        Ok(())
    }
}

/// Whether scans always leave out a file or directory of this name (build and VCS debris,
/// editor temporaries), whatever `.dagfsignore` says.
pub fn is_builtin_ignored(name: &str, is_dir: bool) -> bool {
    static FILE_PATTERNS: OnceLock<GlobSet> = OnceLock::new();
    if is_dir {
        return IGNORED_DIRS.contains(&name);
    }
    FILE_PATTERNS
        .get_or_init(|| {
            let mut builder = GlobSetBuilder::new();
            for pattern in IGNORED_FILES {
                builder.add(Glob::new(pattern).expect("built-in patterns are valid"));
            }
            builder.build().expect("built-in patterns are valid")
        })
        .is_match(name)
}

/// The patterns of one ignore file, matched relative to its directory.
struct IgnoreRules {
    /// The directory holding it, relative to the folder (`""` for the root).
    base: String,
    matcher: ignore::gitignore::Gitignore,
}

impl IgnoreRules {
    /// Parses the lines of ignore file `file` of directory `base`, in gitignore syntax
    /// (`#` comments, `!` negation, `/` anchoring, `**`, trailing `/` for directories).
    fn parse<'a>(
        base: &str,
        file: &str,
        lines: impl Iterator<Item = &'a str>,
    ) -> Result<IgnoreRules, IgnoreError> {
        // Paths are matched relative to `base`, so the builder's root is empty.
        let mut builder = ignore::gitignore::GitignoreBuilder::new("");
        for line in lines {
            builder.add_line(None, line).map_err(|e| IgnoreError {
                file: file.to_string(),
                pattern: line.to_string(),
                reason: e.to_string(),
            })?;
        }
        let matcher = builder.build().map_err(|e| IgnoreError {
            file: file.to_string(),
            pattern: String::new(),
            reason: e.to_string(),
        })?;
        Ok(IgnoreRules {
            base: base.to_string(),
            matcher,
        })
    }

    /// How `rel` (relative to the folder, below `base`) matches.
    fn matched(&self, rel: &str, is_dir: bool) -> ignore::Match<&ignore::gitignore::Glob> {
        let below = if self.base.is_empty() {
            rel
        } else {
            rel.strip_prefix(&self.base)
                .and_then(|rest| rest.strip_prefix('/'))
                .unwrap_or(rel)
        };
        self.matcher.matched(below, is_dir)
    }
}

/// One file as it was read: the digest and length of the bytes read, and the metadata of
/// the open file they were read through.
#[derive(Clone, Copy, Debug)]
pub struct HashedFile {
    /// blake3 of the bytes read.
    pub digest: Digest,
    /// Size (the number of bytes read), mtime, ctime and inode.
    pub stamp: FileStamp,
    /// Permission bits.
    pub mode: u32,
    /// Whether the file stayed the same while it was read (same stamp before and after, and
    /// as many bytes as its size). An unstable read is still self-consistent (size and digest
    /// of the same bytes) but is never remembered in the hash cache.
    pub stable: bool,
}

/// Hashes `paths` on all cores (rayon's pool); results in input order.
fn hash_all(paths: Vec<&Path>) -> Result<Vec<HashedFile>, ScanError> {
    use rayon::prelude::*;
    paths
        .par_iter()
        .map(|path| {
            hash_file(path).map_err(|source| ScanError::Io {
                path: path.to_path_buf(),
                source,
            })
        })
        .collect()
}

/// Every regular file under `root` as a manifest entry (sorted by path), its bytes read and
/// hashed on all cores: what a mount or a checkout really holds.
pub fn hash_tree(root: &Path) -> Result<Vec<Entry>, ScanError> {
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(root) {
        let entry = entry.map_err(|e| ScanError::Io {
            path: root.to_path_buf(),
            source: e.into(),
        })?;
        if entry.file_type().is_file() {
            files.push(entry.into_path());
        }
    }
    let hashed = hash_all(files.iter().map(PathBuf::as_path).collect())?;
    let mut entries = Vec::with_capacity(files.len());
    for (path, read) in files.iter().zip(hashed) {
        let rel = path
            .strip_prefix(root)
            .expect("walkdir yields paths under its root");
        entries.push(Entry {
            path: rel.to_string_lossy().into_owned(),
            mode: read.mode,
            size: read.stamp.size(),
            mtime_ns: read.stamp.mtime_ns(),
            blake3: read.digest,
        });
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(entries)
}

/// Reads a file once through one open descriptor: `fstat`, hash while counting the bytes,
/// `fstat` again. A file that changes during the read (an editor truncating and rewriting it
/// in place) is read again, up to three times; the last read is returned either way, with
/// its own length, so the result never pairs one content's size with another's digest.
pub fn hash_file(path: &Path) -> io::Result<HashedFile> {
    const ATTEMPTS: usize = 3;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut file = fs::File::open(path)?;
        let before = file.metadata()?;
        let mut hasher = blake3::Hasher::new();
        let mut counted = CountingReader {
            inner: &mut file,
            count: 0,
        };
        hasher.update_reader(&mut counted)?;
        let read = counted.count;
        let after = file.metadata()?;
        let (stamp_before, stamp_after) = (FileStamp::of(&before)?, FileStamp::of(&after)?);
        let stable = stamp_before == stamp_after && read == after.len();
        if stable || attempt == ATTEMPTS {
            return Ok(HashedFile {
                digest: hasher.finalize().into(),
                stamp: FileStamp {
                    size: read,
                    ..stamp_after
                },
                mode: after.mode() & 0o777,
                stable,
            });
        }
    }
}

/// Counts the bytes read through it.
struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R: io::Read> io::Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// What identifies an unchanged file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    inode: u64,
}

impl FileStamp {
    /// The stamp of `meta`. A modification time that nanoseconds since the epoch cannot
    /// hold in an `i64` (after the year 2262, `touch -d 2300-01-01`) is an error naming the
    /// fix, never an overflow.
    pub fn of(meta: &fs::Metadata) -> io::Result<FileStamp> {
        let ns = |secs: i64, nanos: i64| {
            secs.checked_mul(1_000_000_000)
                .and_then(|ns| ns.checked_add(nanos))
        };
        let mtime_ns = ns(meta.mtime(), meta.mtime_nsec()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "modification time ({} s since the epoch) is out of range (after 2262 or before 1677); fix it with `touch`",
                    meta.mtime()
                ),
            )
        })?;
        Ok(FileStamp {
            size: meta.len(),
            mtime_ns,
            // Only compared for equality: saturating keeps a far-future ctime usable.
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()).unwrap_or(i64::MAX),
            inode: meta.ino(),
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Modification time, nanoseconds since the epoch.
    pub fn mtime_ns(&self) -> i64 {
        self.mtime_ns
    }
}

/// A persistent map from relative path and [`FileStamp`] to digest, so an unchanged tree is
/// re-scanned with `stat` calls only. An entry is used only if every field of the stamp
/// matches, and a file modified less than [`HashCache::RACY_WINDOW`] before the scan began is
/// never cached (its mtime could still change within the clock's granularity).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct HashCache {
    #[serde(skip)]
    file: Option<PathBuf>,
    entries: HashMap<String, (FileStamp, Digest)>,
    #[serde(skip)]
    dirty: bool,
}

impl HashCache {
    /// Files modified this recently before a scan are hashed every time.
    pub const RACY_WINDOW: Duration = Duration::from_secs(2);

    /// A cache that lives only in memory.
    pub fn in_memory() -> HashCache {
        HashCache::default()
    }

    /// Loads the cache kept at `file`; a missing or unreadable cache starts empty (it is only
    /// ever an optimisation).
    pub fn load(file: PathBuf) -> HashCache {
        let mut cache: HashCache = fs::read(&file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        cache.file = Some(file);
        cache
    }

    /// Where the cache for DAG folder `dir` lives: `$XDG_CACHE_HOME/dagfs` (or
    /// `~/.cache/dagfs`), one file per folder.
    pub fn default_location(dir: &Path) -> Option<PathBuf> {
        let base = crate::host::user_cache_dir()?;
        let canonical = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let id = Digest::of(canonical.as_os_str().as_encoded_bytes());
        Some(base.join(format!("hashes-{}.json", &id.to_string()[..16])))
    }

    fn lookup(&self, path: &str, stamp: &FileStamp) -> Option<Digest> {
        self.entries
            .get(path)
            .filter(|(cached, _)| cached == stamp)
            .map(|(_, digest)| *digest)
    }

    fn remember(&mut self, path: &str, stamp: FileStamp, digest: Digest, scan_started: SystemTime) {
        let settled =
            UNIX_EPOCH + Duration::from_nanos(stamp.mtime_ns.max(0) as u64) + Self::RACY_WINDOW;
        if settled > scan_started {
            self.forget(path);
            return;
        }
        if self.entries.get(path) != Some(&(stamp, digest)) {
            self.entries.insert(path.to_string(), (stamp, digest));
            self.dirty = true;
        }
    }

    fn forget(&mut self, path: &str) {
        self.dirty |= self.entries.remove(path).is_some();
    }

    fn retain_only<'a>(&mut self, paths: impl Iterator<Item = &'a str>) {
        let keep: std::collections::HashSet<&str> = paths.collect();
        let before = self.entries.len();
        self.entries.retain(|path, _| keep.contains(path.as_str()));
        self.dirty |= self.entries.len() != before;
    }

    /// Writes the cache back if it changed (atomically: temp file + rename). Failing to save
    /// is logged, never fatal.
    pub fn save(&mut self) {
        let Some(file) = self.file.clone().filter(|_| self.dirty) else {
            return;
        };
        let result = serde_json::to_vec(self)
            .map_err(io::Error::from)
            .and_then(|bytes| crate::atomic::write(&file, &bytes, crate::atomic::Options::SCRATCH));
        match result {
            Ok(()) => self.dirty = false,
            Err(e) => {
                tracing::warn!(cache = %file.display(), error = %e, "could not save the hash cache")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn set_mtime(path: &Path, mtime: SystemTime) {
        let file = fs::File::options().write(true).open(path).unwrap();
        file.set_modified(mtime).unwrap();
    }

    /// A temporary directory holding a file `x` at each of `paths`.
    fn files_named(paths: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for path in paths {
            write(dir.path(), path, "x");
        }
        dir
    }

    /// Scans `root` with the default options and a fresh in-memory hash cache.
    fn scan_default(root: &Path) -> Result<Vec<ScannedFile>, ScanError> {
        scan(root, &ScanOptions::default(), &mut HashCache::in_memory())
    }

    /// The paths a default scan of `root` publishes, in order.
    fn paths(root: &Path) -> Vec<String> {
        scan_default(root)
            .unwrap()
            .into_iter()
            .map(|f| f.entry.path)
            .collect()
    }

    #[test]
    fn skips_debris_and_editor_temporaries() {
        let dir = files_named(&[
            "etl.py",
            "sub/load.py",
            "__pycache__/etl.cpython-311.pyc",
            "sub/x.pyc",
            ".git/HEAD",
            ".etl.py.swp",
            "4913",
            "etl.py~",
            ".#etl.py",
            "#etl.py#",
            "etl.py___jb_tmp___",
            "sql/q.sql",
        ]);
        assert_eq!(paths(dir.path()), ["etl.py", "sql/q.sql", "sub/load.py"]);
    }

    #[test]
    fn airflowignore_files_are_published_with_what_they_list() {
        // A common layout: helper modules kept out of Airflow's parsing, imported by DAGs.
        let dir = files_named(&["etl.py", "common/helpers.py", "scratch/wip.py"]);
        write(dir.path(), ".airflowignore", "common/\nscratch\n");
        assert_eq!(
            paths(dir.path()).join(" "),
            ".airflowignore common/helpers.py etl.py scratch/wip.py"
        );
    }

    #[test]
    fn dagfsignore_is_gitignore_per_directory() {
        let dir = files_named(&[
            "a.py",
            "data/big.csv",
            "notes.md",
            "secret.env",
            "sub/keep.py",
            "sub/local.env",
            "sub/deep/x.tmp",
            "sub/deep/y.py",
            "sub/important.env",
            "other/x.tmp",
            "other/readme.md",
        ]);
        // Root rules apply everywhere below; `/notes.md` is anchored to the root only.
        write(
            dir.path(),
            ".dagfsignore",
            "# comment\n/data/\n*.env\n/readme.md\n",
        );
        // A deeper file adds rules and overrides its parents' (`!` re-includes).
        write(dir.path(), "sub/.dagfsignore", "*.tmp\n!important.env\n");
        assert_eq!(
            paths(dir.path()).join(" "),
            ".dagfsignore a.py notes.md other/readme.md other/x.tmp sub/.dagfsignore sub/deep/y.py sub/important.env sub/keep.py"
        );
        // An unparseable pattern fails the scan: publishing what it meant to exclude could
        // leak it.
        write(dir.path(), ".dagfsignore", "*.py\\\n");
        let err = scan_default(dir.path()).unwrap_err();
        assert!(err.to_string().contains(".dagfsignore"), "{err}");
    }

    #[test]
    fn digests_modes_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "real/a.py", "print(1)\n");
        std::os::unix::fs::symlink(dir.path().join("real/a.py"), dir.path().join("link.py"))
            .unwrap();
        let files = scan_default(dir.path()).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].entry.path, "link.py");
        assert_eq!(files[0].entry.blake3, Digest::of(b"print(1)\n"));
        assert_eq!(files[0].entry.blake3, files[1].entry.blake3);
        assert_eq!(files[1].entry.size, 9);

        std::os::unix::fs::symlink(dir.path().join("nowhere"), dir.path().join("dangling.py"))
            .unwrap();
        let err = scan_default(dir.path()).unwrap_err();
        assert!(matches!(err, ScanError::BadSymlink { .. }), "{err}");
        fs::remove_file(dir.path().join("dangling.py")).unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("real/loop")).unwrap();
        let err = scan_default(dir.path()).unwrap_err();
        assert!(err.to_string().contains("loop"), "{err}");
    }

    #[test]
    fn non_utf8_names_are_refused_with_the_path() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let name = std::ffi::OsStr::from_bytes(b"bad\xffname.py");
        fs::write(dir.path().join(name), "x").unwrap();
        let err = scan_default(dir.path()).unwrap_err();
        assert!(matches!(err, ScanError::NonUtf8(_)), "{err}");
        assert!(err.to_string().contains("rename it"), "{err}");
    }

    #[test]
    fn cache_is_used_only_for_unchanged_settled_files() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.py", "one");
        let old = SystemTime::now() - Duration::from_secs(60);
        set_mtime(&dir.path().join("a.py"), old);
        let cache_file = dir.path().join("../cache.json");
        let mut cache = HashCache::load(cache_file.clone());
        scan(dir.path(), &ScanOptions::default(), &mut cache).unwrap();
        cache.save();
        let mut cache = HashCache::load(cache_file);
        assert_eq!(cache.entries.len(), 1, "settled file cached and persisted");

        // Same size, same mtime, new content: the ctime (and so the stamp) moves on.
        fs::write(dir.path().join("a.py"), "two").unwrap();
        set_mtime(&dir.path().join("a.py"), old);
        let files = scan(dir.path(), &ScanOptions::default(), &mut cache).unwrap();
        assert_eq!(files[0].entry.blake3, Digest::of(b"two"));

        // A freshly modified file is not cached.
        write(dir.path(), "b.py", "fresh");
        scan(dir.path(), &ScanOptions::default(), &mut cache).unwrap();
        assert!(!cache.entries.contains_key("b.py"));
    }

    #[test]
    fn a_file_dated_after_2262_fails_the_scan_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "future.py", "x");
        let year_2300 = UNIX_EPOCH + Duration::from_secs(10_413_792_000);
        set_mtime(&dir.path().join("future.py"), year_2300);
        let err = scan_default(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("future.py") && text.contains("touch"),
            "{text}"
        );
    }

    /// The size recorded is the number of bytes hashed, even when the file changes between
    /// the walk and the read (`hash_file` reads through one descriptor and counts).
    #[test]
    fn size_and_digest_describe_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.py", "short");
        let read = hash_file(&dir.path().join("a.py")).unwrap();
        assert_eq!((read.stamp.size(), read.digest), (5, Digest::of(b"short")));
        assert!(read.stable);
    }
}
