//! Importing a plain DAG folder (the HDFS NFS-gateway setup: ordinary files in some HDFS
//! directory) as a generation of a dagfs store, so a team can move over without downtime.
//!
//! The source is only ever read: its readers (NFS gateway clients, `hadoop fs`) are untouched.
//! It is taken as one consistent state, never a mix of two (docs/DESIGN.md, "Import"):
//!
//! 1. list the folder recursively, applying the same ignore rules as `push`
//!    ([`IgnoreFilter`]: built-in debris patterns, `scan.exclude` and `.dagfsignore` files);
//! 2. stream every listed file through blake3, reading to the end of the file: a file whose
//!    length differs from its listing is being written;
//! 3. list again: any file added, removed, or with another size, mtime or mode means the
//!    folder moved during the import, and the attempt starts over (a few times, then gives
//!    up, naming the file);
//! 4. publish the listed state with [`publish::publish`], which reads each missing object
//!    from the source once more and checks its digest on the way, so a file rewritten after
//!    the second listing fails the attempt instead of publishing it.
//!
//! Each entry records the source's permission bits and modification time (HDFS keeps
//! milliseconds), exactly what `push` records from a local file, so an import and a push of
//! the same files with the same modes and mtimes have the same tree id.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use futures::stream::{self, StreamExt, TryStreamExt};

use crate::format::{check_path, Digest, Entry, FormatError};
use crate::publish::{self, Desired, Outcome, PublishError, PublishOptions, Source};
use crate::scan::{IgnoreError, IgnoreFilter, ScanOptions, DAGFSIGNORE};
use crate::store::{EntryInfo, EntryKind, ErrorKind, Store, StoreError, StoreLocation};

/// Bytes read from the source per call while hashing.
const CHUNK: u64 = 8 << 20;

/// An import that did not happen; nothing is published when any of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The source folder does not exist.
    #[error("source {url} does not exist; pass the URL of the plain DAG folder (check it with `hadoop fs -ls`)")]
    SourceMissing {
        /// The source URL.
        url: String,
    },
    /// The source is a file.
    #[error("source {url} is a file, not a folder; pass the DAG folder that holds it")]
    SourceNotFolder {
        /// The source URL.
        url: String,
    },
    /// The source and the target store are the same directory, or one lies inside the other.
    #[error("source {source_url} and target {target_url} overlap; the store would write into the DAG folder its readers see (or read its own files): choose a store root outside the folder, e.g. a sibling directory")]
    Overlap {
        /// The source URL.
        source_url: String,
        /// The target URL.
        target_url: String,
    },
    /// Nothing in the source is a DAG file.
    #[error("source {url} holds no files to import (after the ignore rules); check the path")]
    Empty {
        /// The source URL.
        url: String,
    },
    /// The source kept changing while it was being read.
    #[error("source {url} kept changing during {attempts} import attempts (last: {path}: {what}); nothing was published, import again when writers are quiet")]
    Unstable {
        /// The source URL.
        url: String,
        /// Attempts made.
        attempts: usize,
        /// A file that changed in the last attempt.
        path: String,
        /// How.
        what: String,
    },
    /// A file of the source cannot be read or listed.
    #[error("cannot read source {url}: {source}")]
    Source {
        /// The source URL.
        url: String,
        /// Why.
        source: StoreError,
    },
    /// A source path the format does not accept.
    #[error("source {url}: {source}")]
    Format {
        /// The source URL.
        url: String,
        /// Why.
        source: FormatError,
    },
    /// A `.dagfsignore` of the source (or `scan.exclude`) has an invalid pattern.
    #[error("source {url}: {source}")]
    Ignore {
        /// The source URL.
        url: String,
        /// Which pattern.
        source: IgnoreError,
    },
    /// Publishing to the target failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// How to import.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Ignore rules (the same as `push`'s).
    pub scan: ScanOptions,
    /// How to publish; `concurrency` also bounds the files hashed at once.
    pub publish: PublishOptions,
    /// Attempts before a folder that keeps changing is refused.
    pub attempts: usize,
    /// Pause between attempts, doubled each time (writers usually come in bursts).
    pub backoff: Duration,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            scan: ScanOptions::default(),
            publish: PublishOptions::default(),
            attempts: 3,
            backoff: Duration::from_secs(1),
        }
    }
}

/// Checks that `source` and `target` (store URLs or paths) do not overlap.
pub fn check_separate(source: &str, target: &str) -> Result<(), ImportError> {
    let overlap = || ImportError::Overlap {
        source_url: source.to_string(),
        target_url: target.to_string(),
    };
    let (Ok(a), Ok(b)) = (StoreLocation::parse(source), StoreLocation::parse(target)) else {
        // Malformed URLs are reported by whoever opens them.
        return Ok(());
    };
    let nested = |a: &str, b: &str| {
        let (a, b) = (a.trim_end_matches('/'), b.trim_end_matches('/'));
        a == b
            || a.is_empty()
            || b.is_empty()
            || a.strip_prefix(b).is_some_and(|rest| rest.starts_with('/'))
            || b.strip_prefix(a).is_some_and(|rest| rest.starts_with('/'))
    };
    let overlaps = match (a, b) {
        (StoreLocation::Local(a), StoreLocation::Local(b)) => {
            let (a, b) = (absolute(&a), absolute(&b));
            nested(&a, &b)
        }
        (
            StoreLocation::Hdfs {
                scheme: sa,
                authority: aa,
                root: ra,
            },
            StoreLocation::Hdfs {
                scheme: sb,
                authority: ab,
                root: rb,
            },
        ) => {
            // An empty authority is fs.defaultFS, which may be the other one: assume it is.
            sa == sb && (aa == ab || aa.is_empty() || ab.is_empty()) && nested(&ra, &rb)
        }
        _ => false,
    };
    if overlaps {
        Err(overlap())
    } else {
        Ok(())
    }
}

/// `path` made absolute with symlinks resolved as far as it exists, as a string.
fn absolute(path: &std::path::Path) -> String {
    let mut existing = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut missing = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_os_string());
                existing = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut resolved = std::fs::canonicalize(&existing).unwrap_or(existing);
    resolved.extend(missing.iter().rev());
    resolved.to_string_lossy().into_owned()
}

/// Imports the plain folder `source` into `target` as its next generation (generation 1 for
/// an empty store), or does nothing if the head already has exactly this content.
pub async fn import(
    source: Arc<dyn Store>,
    target: &dyn Store,
    options: &ImportOptions,
) -> Result<Outcome, ImportError> {
    check_separate(source.url(), target.url())?;
    let url = source.url().to_string();
    match source.stat("").await {
        Ok(info) if info.kind == EntryKind::Dir => {}
        Ok(_) => return Err(ImportError::SourceNotFolder { url }),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(ImportError::SourceMissing { url })
        }
        Err(source) => return Err(ImportError::Source { url, source }),
    }
    let attempts = options.attempts.max(1);
    let mut pause = options.backoff;
    let mut attempt = 1;
    loop {
        let (path, what) = match read_consistent(&source, options).await? {
            Ok(desired) => match publish::publish(target, &desired, &options.publish).await {
                Ok(outcome) => return Ok(outcome),
                Err(PublishError::ChangedDuringPush { path, reason }) => (path, reason),
                Err(e) => return Err(e.into()),
            },
            Err(moved) => moved,
        };
        if attempt == attempts {
            return Err(ImportError::Unstable {
                url,
                attempts,
                path,
                what,
            });
        }
        tracing::warn!(
            source = url,
            attempt,
            path,
            what,
            "the source changed during the import; starting over"
        );
        tokio::time::sleep(pause).await;
        pause *= 2;
        attempt += 1;
    }
}

/// One attempt: list, hash, list again. `Ok(Err((path, what)))` when the folder moved.
async fn read_consistent(
    source: &Arc<dyn Store>,
    options: &ImportOptions,
) -> Result<Result<Desired, (String, String)>, ImportError> {
    let url = source.url();
    let before = list(&**source, &options.scan).await?;
    if before.is_empty() {
        return Err(ImportError::Empty {
            url: url.to_string(),
        });
    }
    let digests: Vec<Result<Digest, (String, String)>> = stream::iter(&before)
        .map(|info| hash(&**source, info))
        .buffered(options.publish.concurrency.max(1))
        .try_collect()
        .await?;
    let after = list(&**source, &options.scan).await?;
    if let Some(moved) = difference(&before, &after) {
        return Ok(Err(moved));
    }
    let mut desired = Desired::default();
    for (info, digest) in before.into_iter().zip(digests) {
        let digest = match digest {
            Ok(digest) => digest,
            Err(moved) => return Ok(Err(moved)),
        };
        check_path(&info.key).map_err(|source| ImportError::Format {
            url: url.to_string(),
            source,
        })?;
        let mtime = info.modified.duration_since(UNIX_EPOCH).unwrap_or_default();
        desired.entries.push(Entry {
            mode: info.mode,
            size: info.len,
            mtime_ns: i64::try_from(mtime.as_nanos()).unwrap_or(i64::MAX),
            blake3: digest,
            path: info.key.clone(),
        });
        desired.sources.insert(
            digest,
            Source::Store {
                store: Arc::clone(source),
                key: info.key,
            },
        );
    }
    Ok(Ok(desired))
}

/// The files of the folder after the ignore rules, in walk order (the same for two listings
/// of the same tree).
async fn list(source: &dyn Store, options: &ScanOptions) -> Result<Vec<EntryInfo>, ImportError> {
    let failed = |source_error: StoreError| ImportError::Source {
        url: source.url().to_string(),
        source: source_error,
    };
    let bad_ignore = |ignore_error| ImportError::Ignore {
        url: source.url().to_string(),
        source: ignore_error,
    };
    let mut filter = IgnoreFilter::new(options).map_err(bad_ignore)?;
    let mut files = Vec::new();
    // Depth-first, pre-order, children in name order: the order IgnoreFilter expects.
    let mut pending = vec![(String::new(), EntryKind::Dir, None)];
    while let Some((rel, kind, info)) = pending.pop() {
        if !rel.is_empty() && filter.ignores(&rel, kind == EntryKind::Dir) {
            continue;
        }
        if let Some(info) = info.filter(|_| kind == EntryKind::File) {
            files.push(info);
            continue;
        }
        let children = source.list(&rel).await.map_err(failed)?;
        let ignore_file = children
            .iter()
            .find(|c| c.kind == EntryKind::File && c.name() == DAGFSIGNORE);
        if let Some(ignore_file) = ignore_file {
            let text = source.read(&ignore_file.key).await.map_err(failed)?;
            filter
                .add_ignore_file(&rel, &String::from_utf8_lossy(&text))
                .map_err(bad_ignore)?;
        }
        for child in children.into_iter().rev() {
            pending.push((child.key.clone(), child.kind, Some(child)));
        }
    }
    Ok(files)
}

/// Streams one file through blake3, to its end. `Ok(Err(..))` when its length is not the
/// listed one (a writer is at work).
async fn hash(
    source: &dyn Store,
    info: &EntryInfo,
) -> Result<Result<Digest, (String, String)>, ImportError> {
    let mut hasher = blake3::Hasher::new();
    let mut offset = 0;
    loop {
        let chunk = match source.read_range(&info.key, offset, CHUNK).await {
            Ok(chunk) => chunk,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Ok(Err((info.key.clone(), "removed".into())))
            }
            Err(e) => {
                return Err(ImportError::Source {
                    url: source.url().to_string(),
                    source: e,
                })
            }
        };
        if chunk.is_empty() {
            break;
        }
        hasher.update(&chunk);
        offset += chunk.len() as u64;
    }
    if offset != info.len {
        return Ok(Err((
            info.key.clone(),
            format!("listed with {} bytes, read {offset}", info.len),
        )));
    }
    Ok(Ok(hasher.finalize().into()))
}

/// The first difference between two listings that matters for a generation, if any.
fn difference(before: &[EntryInfo], after: &[EntryInfo]) -> Option<(String, String)> {
    let mut a = before.iter();
    let mut b = after.iter();
    loop {
        match (a.next(), b.next()) {
            (None, None) => return None,
            (Some(x), None) => return Some((x.key.clone(), "removed".into())),
            (None, Some(y)) => return Some((y.key.clone(), "added".into())),
            (Some(x), Some(y)) if x.key != y.key => {
                let first = x.key.clone().min(y.key.clone());
                return Some((first, "added or removed".into()));
            }
            (Some(x), Some(y)) if (x.len, x.modified, x.mode) != (y.len, y.modified, y.mode) => {
                return Some((x.key.clone(), "size, mtime or mode changed".into()))
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{scan, HashCache};
    use crate::store::LocalStore;

    fn write(root: &std::path::Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn overlapping_locations_are_refused() {
        let refused = |a: &str, b: &str| check_separate(a, b).is_err();
        assert!(refused("hdfs://nn:8020/dags", "hdfs://nn:8020/dags"));
        assert!(refused("hdfs://nn:8020/dags", "hdfs://nn:8020/dags/.dagfs"));
        assert!(refused("hdfs://nn:8020/data/dags", "hdfs://nn:8020/data"));
        assert!(refused("hdfs:///dags", "hdfs://nn:8020/dags/store"));
        assert!(refused("hdfs://nn/", "hdfs://nn/dagfs"));
        assert!(!refused("hdfs://nn:8020/dags", "hdfs://nn:8020/dags-store"));
        assert!(!refused("hdfs://a:8020/dags", "hdfs://b:8020/dags"));
        assert!(!refused("hdfs://nn:8020/dags", "/var/lib/dagfs"));
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        assert!(refused(&format!("{d}/dags"), &format!("file://{d}/dags/x")));
        assert!(!refused(&format!("{d}/dags"), &format!("{d}/store")));
    }

    /// A local plain folder imports with the same entries (hence tree id) as a push, honouring
    /// the same ignore rules, and the source is left exactly as it was.
    #[tokio::test]
    async fn import_matches_push_and_leaves_the_source_alone() {
        let dir = tempfile::tempdir().unwrap();
        let dags = dir.path().join("dags");
        for (rel, text) in [
            ("a.py", "a"),
            ("sub/b.py", "b"),
            ("sub/skip_me.py", "s"),
            ("__pycache__/a.cpython-311.pyc", "c"),
            ("same.py", "a"),
        ] {
            write(&dags, rel, text);
        }
        write(&dags, ".dagfsignore", "skip_*\n");
        let before =
            crate::store::files_under(&LocalStore::open(dir.path().into()).await.unwrap(), "dags")
                .await
                .unwrap();

        let source: Arc<dyn Store> = Arc::new(LocalStore::open(dags.clone()).await.unwrap());
        let target = LocalStore::open(dir.path().join("store")).await.unwrap();
        let outcome = import(source, &target, &ImportOptions::default())
            .await
            .unwrap();
        assert_eq!((outcome.generation, outcome.added), (Some(1), 3 + 1));
        assert_eq!(outcome.objects_uploaded, 3, "same.py shares a.py's object");

        let scanned = scan(&dags, &ScanOptions::default(), &mut HashCache::in_memory()).unwrap();
        let pushed =
            crate::format::tree_id(&scanned.iter().map(|f| f.entry.clone()).collect::<Vec<_>>());
        assert_eq!(outcome.tree_id, pushed);
        let after =
            crate::store::files_under(&LocalStore::open(dir.path().into()).await.unwrap(), "dags")
                .await
                .unwrap();
        assert_eq!(before, after, "the source folder is untouched");
    }

    #[test]
    fn listings_differ_by_path_size_or_mtime() {
        let info = |key: &str, len: u64| EntryInfo {
            key: key.into(),
            kind: EntryKind::File,
            len,
            modified: UNIX_EPOCH,
            mode: 0o644,
        };
        let one = [info("a.py", 1), info("b.py", 1)];
        assert_eq!(difference(&one, &one), None);
        assert_eq!(
            difference(&one, &[info("a.py", 1), info("b.py", 2)])
                .unwrap()
                .0,
            "b.py"
        );
        assert_eq!(difference(&one, &one[..1]).unwrap().1, "removed");
        assert_eq!(
            difference(&one, &[info("a.py", 1), info("a2.py", 1), info("b.py", 1)])
                .unwrap()
                .0,
            "a2.py"
        );
    }
}
