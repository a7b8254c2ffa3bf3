//! [`LocalStore`]: a store in a local directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use rustix::fs::{renameat_with, RenameFlags, CWD};

use super::key::{check_entry_key, check_key, child};
use super::{
    EntryInfo, EntryKind, ErrorKind, Overwrite, Store, StoreError, StoreResult, STAGING_DIR,
};

/// A store rooted at a local directory: the embedded default, and the fast backend for
/// unit tests. Same contract as [`super::HdfsStore`]; atomicity comes from `rename(2)`
/// (`RENAME_NOREPLACE` for [`Overwrite::Deny`]) and `O_EXCL`, durability from `fsync`.
///
/// Local calls are not bounded by a timeout: a local disk either answers or the host is
/// in worse trouble than dagfs can help with.
#[derive(Clone, Debug)]
pub struct LocalStore {
    root: PathBuf,
    url: String,
}

impl LocalStore {
    /// Opens the store rooted at directory `root`. Nothing is created until something is
    /// written: reading a store that does not exist finds nothing, it does not make one.
    pub async fn open(root: PathBuf) -> StoreResult<LocalStore> {
        let url = root.display().to_string();
        let root = blocking("open", &url, move || std::path::absolute(&root)).await?;
        Ok(LocalStore { root, url })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, op: &'static str, key: &str) -> StoreResult<PathBuf> {
        check_key(op, key)?;
        Ok(if key.is_empty() {
            self.root.clone()
        } else {
            self.root.join(key)
        })
    }
}

/// Runs blocking file system work off the async threads and types its error.
async fn blocking<T, F>(op: &'static str, key: &str, work: F) -> StoreResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(|e| io_error(op, key, e)),
        Err(join) => Err(StoreError::new(ErrorKind::Other, op, key, join.to_string())),
    }
}

fn io_error(op: &'static str, key: &str, err: io::Error) -> StoreError {
    let kind = match err.kind() {
        io::ErrorKind::NotFound => ErrorKind::NotFound,
        io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            ErrorKind::PermissionDenied
        }
        io::ErrorKind::IsADirectory
        | io::ErrorKind::NotADirectory
        | io::ErrorKind::DirectoryNotEmpty
        | io::ErrorKind::InvalidInput => ErrorKind::Invalid,
        io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData => ErrorKind::Corrupt,
        _ => ErrorKind::Other,
    };
    StoreError::new(kind, op, key, err.to_string())
}

fn entry_info(key: String, meta: &fs::Metadata) -> io::Result<EntryInfo> {
    let kind = if meta.is_dir() {
        EntryKind::Dir
    } else {
        EntryKind::File
    };
    Ok(EntryInfo {
        key,
        kind,
        len: if meta.is_dir() { 0 } else { meta.len() },
        modified: meta.modified()?,
        mode: meta.mode() & 0o777,
    })
}

fn rename_file(from: &Path, to: &Path, overwrite: Overwrite) -> io::Result<()> {
    match overwrite {
        Overwrite::Allow => fs::rename(from, to),
        Overwrite::Deny => {
            renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE).map_err(io::Error::from)
        }
    }
}

fn write_synced(file: &mut File, data: &[u8]) -> io::Result<()> {
    file.write_all(data)?;
    file.sync_all()
}

#[async_trait]
impl Store for LocalStore {
    fn url(&self) -> &str {
        &self.url
    }

    async fn put(&self, key: &str, data: Bytes, overwrite: Overwrite) -> StoreResult<()> {
        let dest = self.path("put", key)?;
        check_entry_key("put", key)?;
        let staging_dir = self.root.join(STAGING_DIR);
        blocking("put", key, move || {
            fs::create_dir_all(&staging_dir)?;
            let staged = staging_dir.join(uuid::Uuid::new_v4().to_string());
            let result = (|| {
                write_synced(&mut File::create_new(&staged)?, &data)?;
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent)?;
                }
                rename_file(&staged, &dest, overwrite)
            })();
            if result.is_err() {
                let _ = fs::remove_file(&staged);
            }
            result
        })
        .await
    }

    async fn create_exclusive(&self, key: &str, data: Bytes) -> StoreResult<()> {
        let path = self.path("create_exclusive", key)?;
        blocking("create_exclusive", key, move || {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)?;
            write_synced(&mut file, &data).inspect_err(|_| {
                // A claim that failed half-way must not stand.
                let _ = fs::remove_file(&path);
            })
        })
        .await
    }

    async fn read(&self, key: &str) -> StoreResult<Bytes> {
        let path = self.path("read", key)?;
        blocking("read", key, move || fs::read(path).map(Bytes::from)).await
    }

    async fn read_range(&self, key: &str, offset: u64, len: u64) -> StoreResult<Bytes> {
        let path = self.path("read_range", key)?;
        blocking("read_range", key, move || {
            let mut file = File::open(path)?;
            let size = file.metadata()?.len();
            let want = len.min(size.saturating_sub(offset));
            let mut buf = Vec::with_capacity(want as usize);
            if want > 0 {
                file.seek(SeekFrom::Start(offset))?;
                file.take(want).read_to_end(&mut buf)?;
            }
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn stat(&self, key: &str) -> StoreResult<EntryInfo> {
        let path = self.path("stat", key)?;
        let owned = key.to_string();
        blocking("stat", key, move || entry_info(owned, &fs::metadata(path)?)).await
    }

    async fn list(&self, key: &str) -> StoreResult<Vec<EntryInfo>> {
        let path = self.path("list", key)?;
        let dir = key.to_string();
        blocking("list", key, move || {
            let mut entries = Vec::new();
            for dirent in fs::read_dir(path)? {
                let dirent = dirent?;
                let Ok(name) = dirent.file_name().into_string() else {
                    // Keys are UTF-8; dagfs never writes other names into a store.
                    continue;
                };
                entries.push(entry_info(child(&dir, &name), &dirent.metadata()?)?);
            }
            entries.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(entries)
        })
        .await
    }

    async fn rename(&self, from: &str, to: &str, overwrite: Overwrite) -> StoreResult<()> {
        let src = self.path("rename", from)?;
        let dst = self.path("rename", to)?;
        check_entry_key("rename", from)?;
        check_entry_key("rename", to)?;
        // rename(2) itself fails with ENOENT when the destination's parent is missing.
        blocking("rename", from, move || rename_file(&src, &dst, overwrite)).await
    }

    async fn delete(&self, key: &str, recursive: bool) -> StoreResult<bool> {
        let path = self.path("delete", key)?;
        check_entry_key("delete", key)?;
        blocking("delete", key, move || {
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(e),
            };
            let removed = if !meta.is_dir() {
                fs::remove_file(&path)
            } else if recursive {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_dir(&path)
            };
            match removed {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn mkdirs(&self, key: &str) -> StoreResult<()> {
        let path = self.path("mkdirs", key)?;
        blocking("mkdirs", key, move || {
            fs::create_dir_all(&path)?;
            if fs::metadata(&path)?.is_dir() {
                Ok(())
            } else {
                Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "a file exists at this key",
                ))
            }
        })
        .await
    }
}
