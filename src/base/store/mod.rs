//! Storage backends: the [`Store`] trait and its two implementations.
//!
//! A store is a directory tree addressed by *keys*: `/`-separated paths relative to the
//! store's root URL (`objects/ab/cdef…`, `generations/00000042`). Everything dagfs keeps
//! lives under one root, so isolating two users of one cluster is a matter of roots.
//!
//! - [`HdfsStore`]: `hdfs://host:port/path`, `hdfs://nameservice/path` (HA) and
//!   `viewfs://cluster/path`, on the hdfs-native client.
//! - [`LocalStore`]: a local directory (`file:///path` or a plain path), the embedded default.
//!
//! - [`faulty::FaultyStore`]: a wrapper that injects faults, for tests.
//!
//! Both backends keep one contract, written down in `docs/DESIGN.md` ("Store contract") and checked by
//! the conformance suite in `tests/store_conformance.rs` against both.

mod error;
pub mod faulty;
mod hdfs;
pub mod kerberos;
mod key;
mod local;
mod location;

use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

pub use error::{ErrorKind, StoreError};
pub use hdfs::{HdfsOptions, HdfsStore};
pub use key::{check_key, relative_path_problem};
pub use local::LocalStore;
pub use location::StoreLocation;

/// Result type of every store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// Directory under the store root where [`Store::put`] stages its temporary files.
///
/// Staging outside the destination directory keeps half-written files out of every listing a
/// reader makes of real data; anything left here by a crash is garbage by definition.
pub const STAGING_DIR: &str = ".dagfs-staging";

/// Whether an operation may replace an existing destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overwrite {
    /// Replace an existing file at the destination.
    Allow,
    /// Fail with [`ErrorKind::AlreadyExists`] if the destination exists; the check and the
    /// write are one atomic step (a compare-and-swap on the name).
    Deny,
}

/// What kind of entry a key names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// Metadata of one entry, as returned by [`Store::stat`] and [`Store::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryInfo {
    /// Key of the entry, relative to the store root.
    pub key: String,
    /// File or directory.
    pub kind: EntryKind,
    /// Length in bytes (0 for directories).
    pub len: u64,
    /// Last modification time as the store reports it.
    pub modified: SystemTime,
    /// Unix permission bits (`0o644`; HDFS keeps them too).
    pub mode: u32,
}

impl EntryInfo {
    /// The last component of the key.
    pub fn name(&self) -> &str {
        self.key.rsplit('/').next().unwrap_or(&self.key)
    }
}

/// The storage operations dagfs needs, with the same semantics on every backend.
///
/// Keys are checked with [`check_key`]; the empty key names the root itself (valid for
/// `stat`, `list` and `mkdirs`). Every operation either completes or returns a typed
/// [`StoreError`] within the store's configured timeout: it never hangs.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The URL this store was opened with, for messages.
    fn url(&self) -> &str;

    /// Writes `data` as the whole content of `key`, atomically: the bytes are staged under
    /// [`STAGING_DIR`] and renamed into place, so a reader sees either no file or all of it,
    /// never a prefix. Missing parent directories are created. With [`Overwrite::Deny`] an
    /// existing `key` makes the call fail with `AlreadyExists` and leaves it untouched.
    /// The staged file is removed on every failure path the process survives.
    async fn put(&self, key: &str, data: Bytes, overwrite: Overwrite) -> StoreResult<()>;

    /// Creates `key` with `data` if and only if it does not exist (one atomic step at the
    /// NameNode or the kernel). Unlike [`Store::put`] the file is visible under its final name
    /// while being written, so this is for small claim/lock files whose *existence* matters.
    async fn create_exclusive(&self, key: &str, data: Bytes) -> StoreResult<()>;

    /// Reads the whole content of `key`.
    async fn read(&self, key: &str) -> StoreResult<Bytes>;

    /// Reads up to `len` bytes of `key` from `offset`. A range that runs past the end of the
    /// file is clamped: it returns the bytes that exist, and an empty buffer at or past EOF.
    async fn read_range(&self, key: &str, offset: u64, len: u64) -> StoreResult<Bytes>;

    /// Metadata of `key`; `NotFound` if it does not exist.
    async fn stat(&self, key: &str) -> StoreResult<EntryInfo>;

    /// The direct children of directory `key`, sorted by key. `NotFound` if it does not exist.
    async fn list(&self, key: &str) -> StoreResult<Vec<EntryInfo>>;

    /// Renames `from` to `to` in one atomic step. With [`Overwrite::Deny`] an existing `to`
    /// fails the call with `AlreadyExists`; with [`Overwrite::Allow`] an existing file at `to`
    /// is replaced. The parent of `to` must exist.
    async fn rename(&self, from: &str, to: &str, overwrite: Overwrite) -> StoreResult<()>;

    /// Deletes `key` (a directory only with `recursive`). Returns whether it existed.
    async fn delete(&self, key: &str, recursive: bool) -> StoreResult<bool>;

    /// Creates directory `key` and its missing parents; succeeds if it already exists.
    async fn mkdirs(&self, key: &str) -> StoreResult<()>;
}

/// [`Store::list`], with a missing directory read as empty.
pub async fn list_if_exists(store: &dyn Store, key: &str) -> StoreResult<Vec<EntryInfo>> {
    match store.list(key).await {
        Ok(entries) => Ok(entries),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Every file below directory `dir` (`""`: the root), as paths relative to it, sorted (empty
/// if `dir` is missing).
pub async fn files_under(store: &dyn Store, dir: &str) -> StoreResult<Vec<String>> {
    let prefix = if dir.is_empty() { 0 } else { dir.len() + 1 };
    let mut files = Vec::new();
    let mut pending = vec![dir.to_string()];
    while let Some(current) = pending.pop() {
        for entry in list_if_exists(store, &current).await? {
            match entry.kind {
                EntryKind::Dir => pending.push(entry.key),
                EntryKind::File => files.push(entry.key[prefix..].to_string()),
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Opens the store a URL or path names, with the given HDFS client options.
///
/// `hdfs://` and `viewfs://` open an [`HdfsStore`]; `file://` URLs and plain paths open a
/// [`LocalStore`]. Neither touches the store: its root is created by the first write.
pub async fn open(url: &str, hdfs: &HdfsOptions) -> StoreResult<Box<dyn Store>> {
    match StoreLocation::parse(url)? {
        StoreLocation::Local(root) => Ok(Box::new(LocalStore::open(root).await?)),
        location @ StoreLocation::Hdfs { .. } => {
            Ok(Box::new(HdfsStore::open(&location, hdfs.clone()).await?))
        }
    }
}

/// The store's own idea of "now" (the NameNode's clock on HDFS), read from a file it just
/// created: ages of store files are measured against it, never against this host's clock.
pub async fn store_now(store: &dyn Store) -> Result<std::time::SystemTime, StoreError> {
    let probe = format!("{STAGING_DIR}/clock-{}", uuid::Uuid::new_v4());
    store.create_exclusive(&probe, bytes::Bytes::new()).await?;
    let stat = store.stat(&probe).await;
    store.delete(&probe, false).await?;
    Ok(stat?.modified)
}
