//! Trees: what one generation looks like to the filesystem, with inode numbers.
//!
//! A [`Snapshot`] is immutable. Inode numbers come from an [`InodeTable`] that lives as long as
//! the mount and never reuses a number: while a tree in use has it, a directory keeps its
//! number for its path (and tree, for the per-generation views), a file for its (path,
//! content, mode, size, mtime, mtime shown), so a file inode's attributes and bytes never
//! change. The table only remembers the numbers of the trees in use ([`InodeTable::retain`]);
//! old inodes the kernel still holds are kept alive by the filesystem, not by the table.
//!
//! The mtime a served file shows is its manifest mtime, except that a file new at its path
//! (added, changed, or first served by this process) shows at least the second after the
//! served trees' mtime floor: at one path of the served tree, two different files never show
//! the same mtime second, so Python's bytecode cache, which trusts a matching source mtime
//! second and size, never runs an earlier file's code ("Mount semantics" in DESIGN.md).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// An inode number.
pub type Ino = u64;

/// The root directory's inode number (FUSE's fixed root).
pub const ROOT_INO: Ino = 1;

/// `MOUNT/.dagfs`: the hidden directory of per-generation views (not listed in the root).
pub const DAGFS_DIR_INO: Ino = 2;

/// `MOUNT/.dagfs/generations`: one directory per generation the mount can show.
pub const GENERATIONS_DIR_INO: Ino = 3;

/// The first number the table hands out (the ones above are fixed).
const FIRST_FREE_INO: Ino = 4;

/// The identity of a file's bytes (the dagfs crate uses the blake3 digest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentId(pub [u8; 32]);

/// One file of a tree, as the manifest describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSpec {
    /// Relative path with `/` separators, no `.`/`..`/empty components.
    pub path: String,
    /// Permission bits (`0o644`, `0o755`...).
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Which bytes.
    pub content: ContentId,
}

/// What a tree is, for logs and status: the dagfs generation and its tree id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TreeLabel {
    /// Generation number (0 = the empty tree of an empty store).
    pub generation: u64,
    /// Tree id, hex.
    pub tree_id: String,
}

/// Attributes of a file or directory, independent of `fuser`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: Ino,
    /// Directory or regular file.
    pub is_dir: bool,
    /// Permission bits.
    pub mode: u32,
    /// Size in bytes (directories: number of entries).
    pub size: u64,
    /// Modification (and change) time.
    pub mtime: SystemTime,
    /// Link count: 1 for files, 2 + subdirectories for directories.
    pub nlink: u32,
}

/// A regular file: immutable once allocated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileNode {
    /// Its attributes (the mtime shown, which may be later than the manifest's).
    pub attr: Attr,
    /// Its bytes.
    pub content: ContentId,
    /// The manifest's mtime, nanoseconds since the epoch.
    pub source_mtime_ns: i64,
}

impl FileNode {
    /// Whether this is the file `spec` describes (content, mode, size, manifest mtime).
    pub fn is(&self, spec: &FileSpec) -> bool {
        self.content == spec.content
            && self.attr.mode == spec.mode & 0o7777
            && self.attr.size == spec.size
            && self.source_mtime_ns == spec.mtime_ns
    }
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// File name.
    pub name: String,
    /// Inode number.
    pub ino: Ino,
    /// Whether it is a directory.
    pub is_dir: bool,
}

/// A directory of one snapshot.
#[derive(Debug)]
pub struct DirNode {
    /// Its attributes in this snapshot.
    pub attr: Attr,
    /// Parent directory (the root is its own parent).
    pub parent: Ino,
    /// Entries sorted by name (a listing handle keeps this `Arc`, so offsets stay stable).
    pub entries: Arc<Vec<DirEntry>>,
    index: HashMap<String, usize>,
}

impl DirNode {
    /// The entry called `name`.
    pub fn entry(&self, name: &str) -> Option<&DirEntry> {
        self.index.get(name).map(|&i| &self.entries[i])
    }
}

/// One immutable tree.
#[derive(Debug)]
pub struct Snapshot {
    /// Which generation this is.
    pub label: TreeLabel,
    /// Its root directory: [`ROOT_INO`] for the served tree, another for a view.
    pub root: Ino,
    /// Directories by inode.
    pub dirs: HashMap<Ino, DirNode>,
    /// Files by inode.
    pub files: HashMap<Ino, Arc<FileNode>>,
    /// Total bytes of all files (for `statfs`).
    pub total_bytes: u64,
    /// Nanoseconds since the epoch: no file of this tree, nor of the served trees before it
    /// (of this process and, through the floor it started from, of earlier ones), showed a
    /// later mtime. Files new in the next served tree show a later second.
    pub mtime_floor_ns: i64,
    /// The files showing another mtime than their manifest's: path and mtime shown.
    pub moved: Vec<(String, i64)>,
}

impl Snapshot {
    /// Whether `ino` is part of this snapshot.
    pub fn contains(&self, ino: Ino) -> bool {
        self.dirs.contains_key(&ino) || self.files.contains_key(&ino)
    }

    /// What this tree shows that its manifest does not say, to be recorded.
    pub fn shown(&self) -> crate::fs::Shown {
        crate::fs::Shown {
            label: self.label.clone(),
            mtime_floor_ns: self.mtime_floor_ns,
            moved: self.moved.clone(),
        }
    }

    /// The file at `path`, if this snapshot has one there.
    pub fn file_at(&self, path: &str) -> Option<&Arc<FileNode>> {
        let mut dir = self.dirs.get(&self.root)?;
        let mut names = path.split('/').peekable();
        while let Some(name) = names.next() {
            let entry = dir.entry(name)?;
            if names.peek().is_none() {
                return self.files.get(&entry.ino);
            }
            dir = self.dirs.get(&entry.ino)?;
        }
        None
    }

    /// Attributes of `ino` if it is part of this snapshot.
    pub fn attr(&self, ino: Ino) -> Option<Attr> {
        self.dirs
            .get(&ino)
            .map(|d| d.attr)
            .or_else(|| self.files.get(&ino).map(|f| f.attr))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum InodeKey {
    /// A directory of the served tree, by path.
    Dir(String),
    /// A directory of the view of one tree (generation and tree id), by path.
    ViewDir {
        generation: u64,
        tree_id: String,
        path: String,
    },
    File {
        path: String,
        content: ContentId,
        mode: u32,
        size: u64,
        mtime_ns: i64,
        shown_mtime_ns: i64,
    },
}

/// Allocates inode numbers for the life of the mount (never reused) and remembers which
/// key has which number while a tree in use needs it.
#[derive(Debug)]
pub struct InodeTable {
    numbers: HashMap<InodeKey, Ino>,
    next: Ino,
}

impl Default for InodeTable {
    fn default() -> Self {
        let mut numbers = HashMap::new();
        numbers.insert(InodeKey::Dir(String::new()), ROOT_INO);
        InodeTable {
            numbers,
            next: FIRST_FREE_INO,
        }
    }
}

impl InodeTable {
    fn number(&mut self, key: InodeKey) -> Ino {
        let next = &mut self.next;
        *self.numbers.entry(key).or_insert_with(|| {
            let ino = *next;
            *next += 1;
            ino
        })
    }

    /// Forgets the keys of every number `in_use` rejects (the root stays). A key forgotten
    /// and met again later gets a new number.
    pub fn retain(&mut self, in_use: impl Fn(Ino) -> bool) {
        self.numbers
            .retain(|_, &mut ino| ino == ROOT_INO || in_use(ino));
    }

    /// How many keys the table remembers.
    pub fn len(&self) -> usize {
        self.numbers.len()
    }

    /// Whether it remembers none (never: the root is always there).
    pub fn is_empty(&self) -> bool {
        self.numbers.is_empty()
    }
}

/// Which tree a snapshot is: the served one (root [`ROOT_INO`]) or the view of one
/// generation under `.dagfs/generations/` (its own directory inodes).
#[derive(Clone, Copy)]
pub enum Kind<'a> {
    /// The tree at the mount's root. A file the tree before showed keeps the mtime it showed;
    /// any other shows [`new_file_mtime_ns`].
    Served {
        /// No served file showed a later mtime before this tree (nanoseconds since the
        /// epoch): the previous served tree's [`Snapshot::mtime_floor_ns`], or for the first
        /// one the floor an earlier process recorded.
        mtime_floor_ns: i64,
        /// The mtime the served tree before this one showed for this very file (same path,
        /// content, mode, size and manifest mtime), if it had it.
        shown_before: &'a dyn Fn(&FileSpec) -> Option<i64>,
    },
    /// A per-generation view: its path names the generation, so its files show their
    /// manifest mtimes.
    View,
}

/// The mtime (nanoseconds since the epoch) a served file new at its path shows: its manifest
/// mtime, or the first nanosecond of the second after the floor if that is later. Link mode
/// applies the same rule to its files.
pub fn new_file_mtime_ns(manifest_mtime_ns: i64, mtime_floor_ns: i64) -> i64 {
    const SECOND: i64 = 1_000_000_000;
    let next_second = mtime_floor_ns
        .div_euclid(SECOND)
        .saturating_add(1)
        .saturating_mul(SECOND);
    manifest_mtime_ns.max(next_second)
}

/// Why a list of files is not a tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TreeError(pub String);

/// Nanoseconds since the epoch of `time` (saturating far outside ±292 years).
pub fn ns_of(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_nanos()).map_or(i64::MIN, |ns| -ns),
    }
}

/// The time `ns` nanoseconds after (before, when negative) the epoch.
pub fn time_of(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// Builds the snapshot of `files`. `previous` (the snapshot being replaced) decides directory
/// mtimes: a directory whose entries are unchanged keeps its mtime; one whose entries changed
/// gets `now` (at least 1 ns later than before), so Python's import cache notices. In a first
/// snapshot (and in every view) a directory's mtime is the newest mtime below it. In the
/// served tree a file unchanged from `previous` at its path keeps its inode and mtime; any
/// other shows the later of its manifest mtime and the second after the floor (see [`Kind`]).
/// File inodes are shared by every tree holding the same file with the same mtime shown; a
/// view's directories are its own.
pub fn build(
    label: TreeLabel,
    kind: Kind<'_>,
    files: &[FileSpec],
    inodes: &mut InodeTable,
    previous: Option<&Snapshot>,
    now: SystemTime,
) -> Result<Snapshot, TreeError> {
    let dir_key = |path: &str| match kind {
        Kind::Served { .. } => InodeKey::Dir(path.to_string()),
        Kind::View => InodeKey::ViewDir {
            generation: label.generation,
            tree_id: label.tree_id.clone(),
            path: path.to_string(),
        },
    };
    // Directory path -> (name -> (ino, is_dir)), and the newest mtime below each directory.
    let mut children: BTreeMap<String, BTreeMap<String, (Ino, bool)>> = BTreeMap::new();
    let mut newest: HashMap<String, SystemTime> = HashMap::new();
    children.insert(String::new(), BTreeMap::new());
    let mut file_nodes = HashMap::with_capacity(files.len());
    let mut total_bytes = 0;
    let mut mtime_floor_ns = match kind {
        Kind::Served { mtime_floor_ns, .. } => mtime_floor_ns,
        Kind::View => i64::MIN,
    };
    let mut moved = Vec::new();
    for spec in files {
        let (dir, name) = match spec.path.rsplit_once('/') {
            Some((dir, name)) => (dir, name),
            None => ("", spec.path.as_str()),
        };
        if name.is_empty()
            || spec
                .path
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(TreeError(format!("bad path {:?} in tree", spec.path)));
        }
        let shown_mtime_ns = match kind {
            Kind::View => spec.mtime_ns,
            Kind::Served {
                mtime_floor_ns,
                shown_before,
            } => shown_before(spec)
                .unwrap_or_else(|| new_file_mtime_ns(spec.mtime_ns, mtime_floor_ns)),
        };
        mtime_floor_ns = mtime_floor_ns.max(shown_mtime_ns);
        if shown_mtime_ns != spec.mtime_ns {
            moved.push((spec.path.clone(), shown_mtime_ns));
        }
        let ino = inodes.number(InodeKey::File {
            path: spec.path.clone(),
            content: spec.content,
            mode: spec.mode,
            size: spec.size,
            mtime_ns: spec.mtime_ns,
            shown_mtime_ns,
        });
        let mtime = time_of(shown_mtime_ns);
        // Register the file and every missing ancestor directory.
        let mut child_name = name.to_string();
        let mut child = (ino, false);
        let mut parent = dir.to_string();
        loop {
            let newest_here = newest.entry(parent.clone()).or_insert(mtime);
            *newest_here = (*newest_here).max(mtime);
            let listing = children.entry(parent.clone()).or_default();
            if let Some(existing) = listing.insert(child_name.clone(), child) {
                if existing != child && !(existing.1 && child.1) {
                    return Err(TreeError(format!(
                        "{:?} is both a file and a directory in the tree",
                        join(&parent, &child_name)
                    )));
                }
            }
            if parent.is_empty() {
                break;
            }
            let dir_ino = inodes.number(dir_key(&parent));
            let (grand, name) = match parent.rsplit_once('/') {
                Some((g, n)) => (g.to_string(), n.to_string()),
                None => (String::new(), parent.clone()),
            };
            child_name = name;
            child = (dir_ino, true);
            parent = grand;
        }
        total_bytes += spec.size;
        file_nodes.insert(
            ino,
            Arc::new(FileNode {
                attr: Attr {
                    ino,
                    is_dir: false,
                    mode: spec.mode & 0o7777,
                    size: spec.size,
                    mtime,
                    nlink: 1,
                },
                content: spec.content,
                source_mtime_ns: spec.mtime_ns,
            }),
        );
    }

    let root = inodes.number(dir_key(""));
    let mut dirs = HashMap::with_capacity(children.len());
    for (path, listing) in children {
        let ino = inodes.number(dir_key(&path));
        let parent = match path.rsplit_once('/') {
            _ if path.is_empty() && matches!(kind, Kind::View) => GENERATIONS_DIR_INO,
            _ if path.is_empty() => ROOT_INO,
            Some((grand, _)) => inodes.number(dir_key(grand)),
            None => root,
        };
        let entries: Vec<DirEntry> = listing
            .into_iter()
            .map(|(name, (ino, is_dir))| DirEntry { name, ino, is_dir })
            .collect();
        let old = previous.and_then(|p| p.dirs.get(&ino));
        let mtime = match old {
            Some(old) if *old.entries == entries => old.attr.mtime,
            Some(old) => now.max(old.attr.mtime + Duration::from_nanos(1)),
            None if previous.is_some() => now,
            None => newest.get(&path).copied().unwrap_or(now),
        };
        let subdirs = entries.iter().filter(|e| e.is_dir).count() as u32;
        let index = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), i))
            .collect();
        dirs.insert(
            ino,
            DirNode {
                attr: Attr {
                    ino,
                    is_dir: true,
                    mode: 0o755,
                    size: entries.len() as u64,
                    mtime,
                    nlink: 2 + subdirs,
                },
                parent,
                entries: Arc::new(entries),
                index,
            },
        );
    }
    Ok(Snapshot {
        label,
        root,
        dirs,
        files: file_nodes,
        total_bytes,
        mtime_floor_ns,
        moved,
    })
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// What the kernel must forget when `old` is replaced by `new`: entries `(parent, name)` whose
/// inode changed or vanished, names added to a directory that existed (the kernel may cache
/// their absence), and directories whose listing or attributes changed.
pub fn changes(old: &Snapshot, new: &Snapshot) -> (Vec<(Ino, String)>, Vec<Ino>) {
    let mut entries = Vec::new();
    let mut dirs = Vec::new();
    for (&ino, old_dir) in &old.dirs {
        let new_dir = new.dirs.get(&ino);
        for entry in old_dir.entries.iter() {
            let kept = new_dir.and_then(|d| d.entry(&entry.name)).map(|e| e.ino);
            if kept != Some(entry.ino) {
                entries.push((ino, entry.name.clone()));
            }
        }
        for entry in new_dir.map_or(&[][..], |d| &d.entries[..]) {
            if old_dir.entry(&entry.name).is_none() {
                entries.push((ino, entry.name.clone()));
            }
        }
        if new_dir.is_none_or(|d| d.attr != old_dir.attr) {
            dirs.push(ino);
        }
    }
    entries.sort();
    dirs.sort();
    (entries, dirs)
}
