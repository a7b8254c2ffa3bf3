//! The filesystem logic: lookups, attributes, listings and reads over immutable snapshots, and
//! the atomic switch from one snapshot to the next. No `fuser` types here; [`crate::fuse`]
//! adapts this to the kernel.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, SystemTime};

use crate::tree::{
    self, Attr, DirEntry, FileNode, FileSpec, Ino, InodeTable, Snapshot, TreeError, TreeLabel,
};

/// Where file bytes come from: the dagfs crate serves them from its verified local cache.
pub trait ContentSource: Send + Sync + 'static {
    /// Opens the bytes of `content`, `size` bytes long, for reading. Must not block for long:
    /// an error here becomes `EIO` for the process opening the file.
    fn open(&self, content: &tree::ContentId, size: u64) -> io::Result<File>;
}

impl<T: ContentSource> ContentSource for Arc<T> {
    fn open(&self, content: &tree::ContentId, size: u64) -> io::Result<File> {
        (**self).open(content, size)
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
}

/// An open directory: the listing it had when opened.
struct DirHandle {
    snapshot: Arc<Snapshot>,
    entries: Arc<Vec<DirEntry>>,
    parent: Ino,
}

/// What a switch changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwitchReport {
    /// Directory entries the kernel was told to forget.
    pub entries_invalidated: usize,
    /// Directories whose listing or attributes changed.
    pub dirs_invalidated: usize,
}

/// The filesystem: the current snapshot, the inode table, open handles.
pub struct DagFs<S> {
    source: S,
    options: MountOptions,
    state: RwLock<State>,
    inodes: Mutex<InodeTable>,
    /// Files of earlier snapshots, kept so inodes the kernel still holds stay valid.
    retired: RwLock<HashMap<Ino, Arc<FileNode>>>,
    handles: Mutex<HashMap<u64, DirHandle>>,
    next_handle: AtomicU64,
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

impl<S: ContentSource> DagFs<S> {
    /// A filesystem serving `files` as its first tree.
    pub fn new(
        source: S,
        options: MountOptions,
        label: TreeLabel,
        files: &[FileSpec],
    ) -> Result<Self, TreeError> {
        let mut inodes = InodeTable::default();
        let snapshot = tree::build(label, files, &mut inodes, None, SystemTime::now())?;
        Ok(DagFs {
            source,
            options,
            state: RwLock::new(State {
                snapshot: Arc::new(snapshot),
                switching: false,
            }),
            inodes: Mutex::new(inodes),
            retired: RwLock::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
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

    /// Looks up `name` in directory `parent`.
    pub fn lookup(&self, view: &View<'_>, parent: Ino, name: &str) -> FsResult<Attr> {
        let snapshot = view.snapshot();
        let dir = match snapshot.dirs.get(&parent) {
            Some(dir) => dir,
            None if self.file(snapshot, parent).is_some() => return Err(FsError::NotDir),
            None => return Err(FsError::NotFound),
        };
        let entry = dir.entry(name).ok_or(FsError::NotFound)?;
        snapshot.attr(entry.ino).ok_or(FsError::NotFound)
    }

    /// Attributes of `ino`: a directory of the current tree, or any file ever served.
    pub fn getattr(&self, view: &View<'_>, ino: Ino) -> FsResult<Attr> {
        let snapshot = view.snapshot();
        match snapshot.dirs.get(&ino) {
            Some(dir) => Ok(dir.attr),
            None => self
                .file(snapshot, ino)
                .map(|f| f.attr)
                .ok_or(FsError::NotFound),
        }
    }

    fn file(&self, snapshot: &Snapshot, ino: Ino) -> Option<Arc<FileNode>> {
        snapshot.files.get(&ino).cloned().or_else(|| {
            let retired = self.retired.read().unwrap_or_else(|e| e.into_inner());
            retired.get(&ino).cloned()
        })
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
        let snapshot = view.snapshot();
        if snapshot.dirs.contains_key(&ino) {
            return Err(FsError::IsDir);
        }
        let node = self.file(snapshot, ino).ok_or(FsError::NotFound)?;
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

    /// Opens directory `ino`; the handle lists the entries it had at this moment.
    pub fn opendir(&self, ino: Ino) -> FsResult<u64> {
        let view = self.view();
        let snapshot = Arc::clone(view.snapshot());
        drop(view);
        let dir = match snapshot.dirs.get(&ino) {
            Some(dir) => dir,
            None if self.file(&snapshot, ino).is_some() => return Err(FsError::NotDir),
            None => return Err(FsError::NotFound),
        };
        let (entries, parent) = (Arc::clone(&dir.entries), dir.parent);
        Ok(self.add_handle(DirHandle {
            snapshot,
            entries,
            parent,
        }))
    }

    /// Entries of directory handle `fh` from `offset` on: `.`, `..`, then the names, each with
    /// the offset of the next and its attributes. `dir` is the directory's own inode.
    pub fn readdir(&self, fh: u64, dir: Ino, offset: u64) -> FsResult<Vec<Listed>> {
        let handles = self.lock_handles();
        let Some(DirHandle {
            snapshot,
            entries,
            parent,
        }) = handles.get(&fh)
        else {
            return Err(FsError::BadHandle);
        };
        let dots = [(".", dir), ("..", *parent)];
        let listed = dots
            .iter()
            .map(|&(name, ino)| (name.to_string(), ino))
            .chain(entries.iter().map(|e| (e.name.clone(), e.ino)))
            .enumerate()
            .skip(offset as usize)
            .filter_map(|(i, (name, ino))| {
                let attr = snapshot.attr(ino)?;
                Some(Listed {
                    name,
                    attr,
                    next_offset: i as u64 + 1,
                })
            })
            .collect();
        Ok(listed)
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
    ) -> Result<SwitchReport, TreeError> {
        let old = Arc::clone(self.view().snapshot());
        let new = {
            let mut inodes = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
            tree::build(label, files, &mut inodes, Some(&old), SystemTime::now())?
        };
        let (entries, dirs) = tree::changes(&old, &new);
        {
            let mut retired = self.retired.write().unwrap_or_else(|e| e.into_inner());
            for (ino, node) in &old.files {
                if !new.files.contains_key(ino) {
                    retired.insert(*ino, Arc::clone(node));
                }
            }
        }
        self.state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .switching = true;
        for (parent, name) in &entries {
            if let Err(e) = invalidator.inval_entry(*parent, name) {
                // ENOENT: the kernel had not cached it; anything else is bounded by the TTL.
                if e.raw_os_error() != Some(libc::ENOENT) {
                    tracing::warn!(parent, name, error = %e, "cannot invalidate a directory entry");
                }
            }
        }
        for &ino in &dirs {
            if let Err(e) = invalidator.inval_inode(ino) {
                if e.raw_os_error() != Some(libc::ENOENT) {
                    tracing::warn!(ino, error = %e, "cannot invalidate a directory");
                }
            }
        }
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.snapshot = Arc::new(new);
        state.switching = false;
        Ok(SwitchReport {
            entries_invalidated: entries.len(),
            dirs_invalidated: dirs.len(),
        })
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
