//! The filesystem logic: lookups, attributes, listings and reads over immutable snapshots, the
//! atomic switch from one snapshot to the next, the per-generation views under
//! `.dagfs/generations/`, and the lifetime of inodes (the kernel's lookup references). No
//! `fuser` types here; [`crate::fuse`] adapts this to the kernel.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, SystemTime};

use crate::tree::{
    self, Attr, DirEntry, FileNode, FileSpec, Ino, InodeTable, Kind, Snapshot, TreeError,
    TreeLabel, DAGFS_DIR_INO, GENERATIONS_DIR_INO, ROOT_INO,
};

/// The name of the hidden directory at the root (`MOUNT/.dagfs`), never listed.
pub const DAGFS_DIR: &str = ".dagfs";

/// Its one entry, holding a directory per generation (`MOUNT/.dagfs/generations/N`).
pub const GENERATIONS_DIR: &str = "generations";

/// Where file bytes come from: the dagfs crate serves them from its verified local cache.
pub trait ContentSource: Send + Sync + 'static {
    /// Opens the bytes of `content`, `size` bytes long, for reading. Must not block for long:
    /// an error here becomes `EIO` for the process opening the file.
    fn open(&self, content: &tree::ContentId, size: u64) -> io::Result<File>;

    /// Durably records what a served tree shows, before it becomes visible: the next process
    /// serving this mountpoint starts from it ([`MountOptions::shown_before`]). An error
    /// fails the switch, and the tree served before stays.
    fn record_shown(&self, shown: &Shown) -> io::Result<()>;
}

impl<T: ContentSource> ContentSource for Arc<T> {
    fn open(&self, content: &tree::ContentId, size: u64) -> io::Result<File> {
        (**self).open(content, size)
    }

    fn record_shown(&self, shown: &Shown) -> io::Result<()> {
        (**self).record_shown(shown)
    }
}

/// Tells the kernel to forget what it cached (the adapter sends FUSE notifications).
pub trait Invalidator {
    /// Forget the directory entry `name` of `parent`.
    fn inval_entry(&self, parent: Ino, name: &str) -> io::Result<()>;
    /// Forget the attributes and cached pages (or listing) of `ino`.
    fn inval_inode(&self, ino: Ino) -> io::Result<()>;
}

/// How the filesystem presents itself.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// How long the kernel may cache entries and attributes between switches (switches
    /// invalidate what changed at once, so this only bounds the effect of a lost notification).
    pub ttl: Duration,
    /// Owner shown for every file.
    pub uid: u32,
    /// Group shown for every file.
    pub gid: u32,
    /// What the last process serving this mountpoint recorded with
    /// [`ContentSource::record_shown`]; `None` if nothing was (files then show their
    /// manifest mtimes).
    pub shown_before: Option<ShownBefore>,
}

/// What a served tree shows that its manifest does not say: recorded before the tree becomes
/// visible, so that the next process serving the mountpoint carries on from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shown {
    /// The tree.
    pub label: TreeLabel,
    /// No served file showed a later mtime, nanoseconds since the epoch.
    pub mtime_floor_ns: i64,
    /// The files showing another mtime than their manifest's: path and mtime shown.
    pub moved: Vec<(String, i64)>,
}

/// What an earlier process showed at this mountpoint, rebuilt from its last [`Shown`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShownBefore {
    /// No file it served showed a later mtime, nanoseconds since the epoch.
    pub mtime_floor_ns: i64,
    /// The files of the last tree it served, each with the mtime it showed (empty when that
    /// tree is unknown: every file then shows a new mtime).
    pub files: Vec<(FileSpec, i64)>,
}

/// Why a tree could not be served; the tree served before stays.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The files do not form a tree.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// What the tree shows could not be recorded ([`ContentSource::record_shown`]).
    #[error("cannot record the mtimes the mount shows: {0}")]
    Record(#[source] io::Error),
}

/// A filesystem error, as an errno.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// No such file or directory (`ENOENT`).
    #[error("no such file or directory")]
    NotFound,
    /// Not a directory (`ENOTDIR`).
    #[error("not a directory")]
    NotDir,
    /// Is a directory (`EISDIR`).
    #[error("is a directory")]
    IsDir,
    /// Unknown file handle (`EBADF`).
    #[error("bad file handle")]
    BadHandle,
    /// The bytes could not be read (`EIO`); the cause is logged.
    #[error("input/output error")]
    Io,
}

impl FsError {
    /// The errno the kernel gets.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::BadHandle => libc::EBADF,
            FsError::Io => libc::EIO,
        }
    }
}

/// Result of a filesystem operation.
pub type FsResult<T> = Result<T, FsError>;

struct State {
    snapshot: Arc<Snapshot>,
    /// While a switch invalidates the kernel's caches, replies carry a zero TTL so nothing
    /// from the old snapshot is cached again.
    switching: bool,
    /// The per-generation views, by generation number.
    views: BTreeMap<u64, ViewEntry>,
    /// When the set of views last changed (the mtime of `.dagfs/generations`).
    views_changed: SystemTime,
}

/// One generation shown under `.dagfs/generations/`: its root's attributes always, its tree
/// only once something enters it (a view costs about as much memory as the served tree, and
/// most are never read).
#[derive(Clone)]
struct ViewEntry {
    label: TreeLabel,
    root: Attr,
    tree: Option<Arc<Snapshot>>,
}

impl State {
    /// The trees in use: the served one and the views built so far.
    fn trees(&self) -> impl Iterator<Item = &Arc<Snapshot>> {
        std::iter::once(&self.snapshot).chain(self.views.values().filter_map(|v| v.tree.as_ref()))
    }

    /// Whether a tree in use (the served one, a view, a view's root) has `ino`.
    fn in_use(&self, ino: Ino) -> bool {
        self.trees().any(|t| t.contains(ino)) || self.views.values().any(|v| v.root.ino == ino)
    }

    /// The tree in use holding directory `ino`.
    fn dir(&self, ino: Ino) -> Option<(&Arc<Snapshot>, &tree::DirNode)> {
        self.trees().find_map(|s| s.dirs.get(&ino).map(|d| (s, d)))
    }

    /// The file `ino` of a tree in use.
    fn file(&self, ino: Ino) -> Option<&Arc<FileNode>> {
        self.trees().find_map(|s| s.files.get(&ino))
    }

    /// The view whose root is `ino` and whose tree is not built yet.
    fn unbuilt_view(&self, ino: Ino) -> Option<&ViewEntry> {
        self.views
            .values()
            .find(|v| v.root.ino == ino && v.tree.is_none())
    }
}

/// Reads the files of a generation shown as a view, when something first enters it.
pub type ViewLoader = Box<dyn Fn(&TreeLabel) -> Result<Vec<FileSpec>, String> + Send + Sync>;

/// The inode numbers and the kernel's references to them.
///
/// The kernel takes one reference per entry it is given (a lookup, a `readdirplus` entry)
/// and returns them with `forget`. An inode stays usable while a tree in use has it or the
/// kernel holds a reference; a file the kernel holds that no tree in use has is kept in
/// `retired`. Everything else is dropped, so memory follows the trees in use and what the
/// kernel holds, not the number of switches.
#[derive(Default)]
struct Lifecycle {
    table: InodeTable,
    kernel: HashMap<Ino, u64>,
    retired: HashMap<Ino, Arc<FileNode>>,
}

impl Lifecycle {
    /// After the trees in use changed: files of `gone` that the kernel holds and no tree in
    /// use has are retired; the table forgets numbers no tree uses.
    fn trees_replaced(&mut self, state: &State, gone: &[Arc<Snapshot>]) {
        for snapshot in gone {
            for (ino, node) in &snapshot.files {
                if self.kernel.contains_key(ino) && !state.in_use(*ino) {
                    self.retired.insert(*ino, Arc::clone(node));
                }
            }
        }
        self.table.retain(|ino| state.in_use(ino));
    }
}

/// How many inodes the filesystem keeps track of (for tests and metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InodeCounts {
    /// Numbers the inode table remembers (those of the trees in use).
    pub table: usize,
    /// Inodes the kernel holds references to.
    pub kernel: usize,
    /// Files the kernel holds that no tree in use has.
    pub retired: usize,
}

/// An open directory: the listing it had when opened, with attributes.
struct DirHandle {
    /// The tree the directory belongs to (none for `.dagfs` and `.dagfs/generations`).
    tree: Option<Arc<Snapshot>>,
    /// `.`, `..`, then the entries.
    listed: Vec<(String, Attr)>,
}

/// What a switch changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwitchReport {
    /// Directory entries the kernel was told to forget.
    pub entries_invalidated: usize,
    /// Directories whose listing or attributes changed.
    pub dirs_invalidated: usize,
}

/// The filesystem: the current snapshot, the views, the inode table, open handles.
pub struct DagFs<S> {
    source: S,
    options: MountOptions,
    state: RwLock<State>,
    lifecycle: Mutex<Lifecycle>,
    /// Serialises switches and view changes (each builds against the table, then swaps).
    changing: Mutex<()>,
    handles: Mutex<HashMap<u64, DirHandle>>,
    next_handle: AtomicU64,
    started: SystemTime,
    view_loader: std::sync::OnceLock<ViewLoader>,
}

/// A consistent view for one request: the snapshot and the TTL to reply with. Hold it until
/// the reply is sent, so a switch cannot start between computing a reply and sending it.
pub struct View<'a> {
    state: RwLockReadGuard<'a, State>,
    ttl: Duration,
}

impl View<'_> {
    /// The TTL for entries and attributes in this reply.
    pub fn ttl(&self) -> Duration {
        if self.state.switching {
            Duration::ZERO
        } else {
            self.ttl
        }
    }

    /// The snapshot being served.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.state.snapshot
    }
}

/// The tree of the view of generation `label`.
fn build_view(
    lifecycle: &mut Lifecycle,
    label: &TreeLabel,
    files: &[FileSpec],
) -> Result<Snapshot, TreeError> {
    let now = SystemTime::now();
    tree::build(
        label.clone(),
        Kind::View,
        files,
        &mut lifecycle.table,
        None,
        now,
    )
}

fn virtual_dir(ino: Ino, mtime: SystemTime, subdirs: usize) -> Attr {
    Attr {
        ino,
        is_dir: true,
        mode: 0o755,
        size: subdirs as u64,
        mtime,
        nlink: 2 + subdirs as u32,
    }
}

impl<S: ContentSource> DagFs<S> {
    /// A filesystem serving `files` as its first tree, with no views.
    pub fn new(
        source: S,
        options: MountOptions,
        label: TreeLabel,
        files: &[FileSpec],
    ) -> Result<Self, ServeError> {
        let mut lifecycle = Lifecycle::default();
        let now = SystemTime::now();
        let before = options.shown_before.clone().unwrap_or(ShownBefore {
            mtime_floor_ns: i64::MIN,
            files: Vec::new(),
        });
        let shown: HashMap<&str, &(FileSpec, i64)> = before
            .files
            .iter()
            .map(|file| (file.0.path.as_str(), file))
            .collect();
        let shown_before = |spec: &FileSpec| {
            let (was, mtime_ns) = shown.get(spec.path.as_str())?;
            (was == spec).then_some(*mtime_ns)
        };
        let served = Kind::Served {
            mtime_floor_ns: before.mtime_floor_ns,
            shown_before: &shown_before,
        };
        let snapshot = tree::build(label, served, files, &mut lifecycle.table, None, now)?;
        source
            .record_shown(&snapshot.shown())
            .map_err(ServeError::Record)?;
        Ok(DagFs {
            source,
            options,
            state: RwLock::new(State {
                snapshot: Arc::new(snapshot),
                switching: false,
                views: BTreeMap::new(),
                views_changed: now,
            }),
            lifecycle: Mutex::new(lifecycle),
            changing: Mutex::new(()),
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            started: now,
            view_loader: std::sync::OnceLock::new(),
        })
    }

    /// The presentation options.
    pub fn options(&self) -> &MountOptions {
        &self.options
    }

    /// A view for one request.
    pub fn view(&self) -> View<'_> {
        View {
            state: self.state.read().unwrap_or_else(|e| e.into_inner()),
            ttl: self.options.ttl,
        }
    }

    /// Which tree is served now.
    pub fn label(&self) -> TreeLabel {
        self.view().snapshot().label.clone()
    }

    /// The generations shown under `.dagfs/generations/`, with their tree ids.
    pub fn views(&self) -> Vec<TreeLabel> {
        let view = self.view();
        view.state.views.values().map(|v| v.label.clone()).collect()
    }

    /// How views get their files when something first enters them (set once; without it,
    /// entering a view finds it empty of names).
    pub fn set_view_loader(&self, loader: ViewLoader) {
        let _ = self.view_loader.set(loader);
    }

    /// Call before a request on directory `ino` (a lookup in it, opening it), outside any
    /// [`View`]: if `ino` is the root of a view not built yet, builds it now.
    pub fn enter(&self, ino: Ino) {
        let label = match self.view().state.unbuilt_view(ino) {
            Some(entry) => entry.label.clone(),
            None => return,
        };
        let Some(loader) = self.view_loader.get() else {
            return;
        };
        let files = match loader(&label) {
            Ok(files) => files,
            Err(e) => {
                tracing::error!(generation = label.generation, error = %e, "cannot read the files of a generation view");
                return;
            }
        };
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        if self.view().state.unbuilt_view(ino).is_none() {
            return; // built meanwhile, or gone
        }
        let built = build_view(&mut self.lock_lifecycle(), &label, &files);
        match built {
            Ok(tree) if tree.root == ino => {
                let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
                if let Some(entry) = state.views.get_mut(&label.generation) {
                    entry.tree = Some(Arc::new(tree));
                }
            }
            Ok(_) => tracing::error!(
                generation = label.generation,
                "a generation view changed its root"
            ),
            Err(e) => {
                tracing::error!(generation = label.generation, error = %e, "cannot build a generation view")
            }
        }
    }

    fn lock_lifecycle(&self) -> std::sync::MutexGuard<'_, Lifecycle> {
        self.lifecycle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many inodes are tracked now.
    pub fn inode_counts(&self) -> InodeCounts {
        let lifecycle = self.lock_lifecycle();
        InodeCounts {
            table: lifecycle.table.len(),
            kernel: lifecycle.kernel.len(),
            retired: lifecycle.retired.len(),
        }
    }

    /// Records that the kernel was given an entry for `ino` (one reference, returned with
    /// [`DagFs::forget`]). `tree` is where the entry came from, for a file no tree in use has
    /// any more (a listing handle opened before a switch).
    fn hold(&self, state: &State, ino: Ino, tree: Option<&Snapshot>) {
        if ino == ROOT_INO || ino == DAGFS_DIR_INO || ino == GENERATIONS_DIR_INO {
            return;
        }
        let mut lifecycle = self.lock_lifecycle();
        *lifecycle.kernel.entry(ino).or_insert(0) += 1;
        if !state.in_use(ino) {
            if let Some(node) = tree.and_then(|t| t.files.get(&ino)) {
                lifecycle.retired.insert(ino, Arc::clone(node));
            }
        }
    }

    /// The kernel returns `nlookup` references to `ino`; an inode neither the kernel nor a
    /// tree in use holds is dropped.
    pub fn forget(&self, ino: Ino, nlookup: u64) {
        let mut lifecycle = self.lock_lifecycle();
        let Some(count) = lifecycle.kernel.get_mut(&ino) else {
            return;
        };
        *count = count.saturating_sub(nlookup);
        if *count == 0 {
            lifecycle.kernel.remove(&ino);
            lifecycle.retired.remove(&ino);
        }
    }

    /// Attributes of `ino` for the request's view: a directory of a tree in use, the two
    /// hidden directories, or a file the kernel may still hold.
    fn attr_of(&self, state: &State, ino: Ino) -> Option<Attr> {
        match ino {
            DAGFS_DIR_INO => Some(virtual_dir(ino, self.started, 1)),
            GENERATIONS_DIR_INO => Some(virtual_dir(ino, state.views_changed, state.views.len())),
            _ => state
                .dir(ino)
                .map(|(_, d)| d.attr)
                .or_else(|| {
                    state
                        .views
                        .values()
                        .find(|v| v.root.ino == ino)
                        .map(|v| v.root)
                })
                .or_else(|| self.file(state, ino).map(|f| f.attr)),
        }
    }

    fn file(&self, state: &State, ino: Ino) -> Option<Arc<FileNode>> {
        state.file(ino).cloned().or_else(|| {
            let lifecycle = self.lock_lifecycle();
            lifecycle.retired.get(&ino).cloned()
        })
    }

    /// The directory `ino` of a tree in use; `NotDir` for a file, `NotFound` for neither.
    fn dir<'s>(
        &self,
        state: &'s State,
        ino: Ino,
    ) -> FsResult<(&'s Arc<Snapshot>, &'s tree::DirNode)> {
        state.dir(ino).ok_or_else(|| {
            if self.file(state, ino).is_some() {
                FsError::NotDir
            } else {
                FsError::NotFound
            }
        })
    }

    /// Looks up `name` in directory `parent`; the kernel takes a reference to the result.
    pub fn lookup(&self, view: &View<'_>, parent: Ino, name: &str) -> FsResult<Attr> {
        let state = &*view.state;
        let attr = match parent {
            ROOT_INO if name == DAGFS_DIR => Some(virtual_dir(DAGFS_DIR_INO, self.started, 1)),
            DAGFS_DIR_INO => (name == GENERATIONS_DIR)
                .then(|| self.attr_of(state, GENERATIONS_DIR_INO))
                .flatten(),
            GENERATIONS_DIR_INO => name
                .parse::<u64>()
                .ok()
                .filter(|g| g.to_string() == name)
                .and_then(|g| state.views.get(&g))
                .map(|v| v.root),
            _ => {
                let (tree, dir) = self.dir(state, parent)?;
                dir.entry(name).and_then(|e| tree.attr(e.ino))
            }
        };
        let attr = attr.ok_or(FsError::NotFound)?;
        self.hold(state, attr.ino, None);
        Ok(attr)
    }

    /// Attributes of `ino`: a directory of a tree in use, or any file the kernel may hold.
    pub fn getattr(&self, view: &View<'_>, ino: Ino) -> FsResult<Attr> {
        self.attr_of(&view.state, ino).ok_or(FsError::NotFound)
    }

    fn add_handle(&self, handle: DirHandle) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.lock_handles().insert(fh, handle);
        fh
    }

    fn lock_handles(&self) -> std::sync::MutexGuard<'_, HashMap<u64, DirHandle>> {
        self.handles.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads up to `size` bytes at `offset` of file `ino`. A file inode's bytes never change,
    /// so a process that opened the file before a switch keeps reading what it opened, and no
    /// per-open state is needed (the adapter lets the kernel skip `open` round trips).
    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let view = self.view();
        let state = &*view.state;
        if state.dir(ino).is_some() || ino == DAGFS_DIR_INO || ino == GENERATIONS_DIR_INO {
            return Err(FsError::IsDir);
        }
        let node = self.file(state, ino).ok_or(FsError::NotFound)?;
        drop(view);
        let io_error = |e: io::Error| {
            tracing::error!(ino, size = node.attr.size, offset, error = %e, "cannot read file content");
            FsError::Io
        };
        let file = self
            .source
            .open(&node.content, node.attr.size)
            .map_err(io_error)?;
        let len = (size as u64).min(node.attr.size.saturating_sub(offset)) as usize;
        let mut buf = vec![0; len];
        let mut filled = 0;
        while filled < len {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(e)),
            }
        }
        if filled < len {
            return Err(io_error(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "cached content is shorter than the manifest says",
            )));
        }
        Ok(buf)
    }

    /// Opens directory `ino`; the handle lists the entries it had at this moment. The root's
    /// listing never shows `.dagfs`, so tools that walk the mount (Airflow's DAG discovery)
    /// never enter the views.
    pub fn opendir(&self, ino: Ino) -> FsResult<u64> {
        let view = self.view();
        let state = &*view.state;
        let dot = |ino| self.attr_of(state, ino).ok_or(FsError::NotFound);
        let (tree, listed) = match ino {
            DAGFS_DIR_INO => {
                let entries = vec![(GENERATIONS_DIR.to_string(), dot(GENERATIONS_DIR_INO)?)];
                (None, (dot(ino)?, dot(ROOT_INO)?, entries))
            }
            GENERATIONS_DIR_INO => {
                let entries = state
                    .views
                    .iter()
                    .map(|(g, v)| (g.to_string(), v.root))
                    .collect();
                (None, (dot(ino)?, dot(DAGFS_DIR_INO)?, entries))
            }
            _ => {
                let (tree, dir) = self.dir(state, ino)?;
                let entries = dir
                    .entries
                    .iter()
                    .filter_map(|e: &DirEntry| Some((e.name.clone(), tree.attr(e.ino)?)))
                    .collect();
                (
                    Some(Arc::clone(tree)),
                    (dir.attr, dot(dir.parent)?, entries),
                )
            }
        };
        drop(view);
        let (own, parent, entries) = listed;
        let mut all = Vec::with_capacity(entries.len() + 2);
        all.push((".".to_string(), own));
        all.push(("..".to_string(), parent));
        all.extend(entries);
        Ok(self.add_handle(DirHandle { tree, listed: all }))
    }

    /// Entries of directory handle `fh` from `offset` on: `.`, `..`, then the names, each with
    /// the offset of the next and its attributes.
    pub fn readdir(&self, fh: u64, offset: u64) -> FsResult<Vec<Listed>> {
        let handles = self.lock_handles();
        let handle = handles.get(&fh).ok_or(FsError::BadHandle)?;
        Ok(handle
            .listed
            .iter()
            .enumerate()
            .skip(offset as usize)
            .map(|(i, (name, attr))| Listed {
                name: name.clone(),
                attr: *attr,
                next_offset: i as u64 + 1,
            })
            .collect())
    }

    /// Records that the kernel was given entry `ino` of listing `fh` with its attributes
    /// (`readdirplus`; not for `.` and `..`): it holds a reference until it forgets it.
    pub fn listed_to_kernel(&self, view: &View<'_>, fh: u64, ino: Ino) {
        let tree = self
            .lock_handles()
            .get(&fh)
            .and_then(|h| h.tree.as_ref().map(Arc::clone));
        self.hold(&view.state, ino, tree.as_deref());
    }

    /// Releases a directory handle.
    pub fn release(&self, fh: u64) {
        self.lock_handles().remove(&fh);
    }

    /// `statfs`: (total bytes, number of inodes) of the current tree.
    pub fn usage(&self) -> (u64, u64) {
        let view = self.view();
        let snapshot = view.snapshot();
        (
            snapshot.total_bytes,
            (snapshot.files.len() + snapshot.dirs.len()) as u64,
        )
    }

    /// Replaces the tree with `files`, atomically for every observer: first the kernel forgets
    /// every cached entry and directory that changes (while replies carry a zero TTL, so
    /// nothing old is cached again), then the new snapshot becomes visible in one step.
    /// Unchanged files keep their inodes and cached pages; open handles keep their bytes.
    pub fn switch(
        &self,
        label: TreeLabel,
        files: &[FileSpec],
        invalidator: &dyn Invalidator,
    ) -> Result<SwitchReport, ServeError> {
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let old = Arc::clone(self.view().snapshot());
        let new = {
            let mut lifecycle = self.lock_lifecycle();
            let shown_before = |spec: &FileSpec| {
                let file = old.file_at(&spec.path).filter(|file| file.is(spec))?;
                Some(tree::ns_of(file.attr.mtime))
            };
            tree::build(
                label,
                Kind::Served {
                    mtime_floor_ns: old.mtime_floor_ns,
                    shown_before: &shown_before,
                },
                files,
                &mut lifecycle.table,
                Some(&old),
                SystemTime::now(),
            )?
        };
        self.source
            .record_shown(&new.shown())
            .map_err(ServeError::Record)?;
        let (entries, dirs) = tree::changes(&old, &new);
        self.state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .switching = true;
        for (parent, name) in &entries {
            invalidate(
                || invalidator.inval_entry(*parent, name),
                "a directory entry",
            );
        }
        for &ino in &dirs {
            invalidate(|| invalidator.inval_inode(ino), "a directory");
        }
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.snapshot = Arc::new(new);
        state.switching = false;
        self.lock_lifecycle().trees_replaced(&state, &[old]);
        Ok(SwitchReport {
            entries_invalidated: entries.len(),
            dirs_invalidated: dirs.len(),
        })
    }

    /// Makes `.dagfs/generations/` show exactly `trees` (one directory per generation, each
    /// exactly that tree, read-only and immutable). A view already shown with the same label
    /// is kept as it is, without looking at its files (callers may pass none); a new one is
    /// built once to know its root and then only when something enters it
    /// ([`DagFs::enter`], through [`DagFs::set_view_loader`]). The kernel forgets the names
    /// that appear or disappear.
    pub fn set_views(
        &self,
        trees: Vec<(TreeLabel, Vec<FileSpec>)>,
        invalidator: &dyn Invalidator,
    ) -> Result<(), TreeError> {
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let current: BTreeMap<u64, ViewEntry> = self.view().state.views.clone();
        let mut next = BTreeMap::new();
        {
            let mut lifecycle = self.lock_lifecycle();
            for (label, files) in trees {
                let generation = label.generation;
                let entry = match current.get(&generation).filter(|v| v.label == label) {
                    Some(kept) => kept.clone(),
                    None => {
                        let tree = build_view(&mut lifecycle, &label, &files)?;
                        let root = tree.attr(tree.root).expect("a tree has its root");
                        ViewEntry {
                            label,
                            root,
                            tree: None,
                        }
                    }
                };
                next.insert(generation, entry);
            }
        }
        let gone: Vec<&ViewEntry> = current
            .iter()
            .filter(|(g, v)| next.get(g).is_none_or(|n| n.label != v.label))
            .map(|(_, v)| v)
            .collect();
        let changed: Vec<u64> = gone
            .iter()
            .map(|v| v.label.generation)
            .chain(next.keys().filter(|g| !current.contains_key(g)).copied())
            .collect();
        let gone_trees: Vec<Arc<Snapshot>> = gone.iter().filter_map(|v| v.tree.clone()).collect();
        {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            state.views = next;
            if !changed.is_empty() {
                let now = SystemTime::now();
                state.views_changed = now.max(state.views_changed + Duration::from_nanos(1));
            }
            // Also forgets the numbers the builds above made for roots only.
            self.lock_lifecycle().trees_replaced(&state, &gone_trees);
        }
        if changed.is_empty() {
            return Ok(());
        }
        for generation in changed {
            let name = generation.to_string();
            invalidate(
                || invalidator.inval_entry(GENERATIONS_DIR_INO, &name),
                "a generation view",
            );
        }
        invalidate(
            || invalidator.inval_inode(GENERATIONS_DIR_INO),
            "the generations directory",
        );
        Ok(())
    }
}

/// Sends one invalidation; `ENOENT` means the kernel had not cached it, anything else is
/// bounded by the TTL and logged.
fn invalidate(send: impl FnOnce() -> io::Result<()>, what: &str) {
    if let Err(e) = send() {
        if e.raw_os_error() != Some(libc::ENOENT) {
            tracing::warn!(error = %e, "cannot invalidate {what}");
        }
    }
}

/// One listed directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Its name (`.` and `..` included).
    pub name: String,
    /// Its attributes.
    pub attr: Attr,
    /// Offset to continue the listing after this entry.
    pub next_offset: u64,
}
