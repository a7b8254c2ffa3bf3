//! The mount's local verified cache: manifests and objects of the generations it serves,
//! content-addressed on local disk like the store, every object checked with blake3 when it
//! is fetched. Reads never go to the store; a switch first makes every object of the new
//! generation present here, so the mount keeps serving while HDFS is down.
//!
//! Layout under the cache root: `objects/xx/<blake3 hex>`, `generations/<20 digits>` (manifest
//! copies), `packs/<hex>` (copies of the store's pack indexes). A file is written as
//! `.part-*` beside its final name and renamed into place once verified.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{self, StreamExt, TryStreamExt};

use crate::format::{manifest_key, object_key, parse_manifest_name, Digest, FormatError, Manifest};
use crate::generations::{self, GenerationError};
use crate::objects::Objects;
use crate::store::{Store, StoreError};

/// Why the cache could not do something.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Local disk trouble.
    #[error("cache {path}: {source}; check the disk and the cache directory's permissions")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A generation could not be read from the store.
    #[error(transparent)]
    Generation(#[from] GenerationError),
    /// The store serves bytes that do not match their digest, twice in a row.
    #[error("object {digest} in {url} is corrupt ({key}: {detail}); it is not served. put the right bytes back with `hadoop fs -put -f FILE {url}/{}` (readers use that copy when a packed one is damaged), then check with `dagfs verify --store {url} --deep`", object_key(.digest))]
    Corrupt {
        /// The object's digest.
        digest: Digest,
        /// The store.
        url: String,
        /// Where it was read: its pack and range, or its loose key.
        key: String,
        /// What was wrong.
        detail: String,
    },
    /// A cached manifest is damaged.
    #[error("cached manifest {path} is damaged ({source}); delete it, it is fetched again")]
    Manifest {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: FormatError,
    },
}

/// A generation made present in the cache.
#[derive(Clone, Debug)]
pub struct CachedGeneration {
    /// Its manifest.
    pub manifest: Manifest,
    /// Files that cannot be served, as `path: why` (the store serves corrupt bytes for
    /// them, or their content is not as long as the manifest says): read as EIO.
    pub corrupt: Vec<String>,
}

/// The cache directory.
#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
    /// Objects whose bytes this process has checked against their names (fetched and
    /// verified, or re-hashed once after a restart: a power loss can leave a right-sized
    /// file of garbage).
    verified: Arc<Mutex<HashSet<Digest>>>,
    /// The store's packs, with local copies of their indexes under `packs/`.
    objects: Arc<Objects>,
    /// Objects were written with [`Durability::Deferred`] since the last [`Cache::sync`].
    unsynced: Arc<AtomicBool>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// When a file written to the cache must be on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Durability {
    /// Before the write returns: the file and then its directory are fsynced.
    Now,
    /// At the next [`Cache::sync`], one `syncfs` for every object of a generation, which
    /// the mount runs after it switched, so the disk is not on the path to serving. A power loss
    /// before it can leave such a file empty or garbage, which the first check in the
    /// next process finds ([`Cache::has_object`]) and fetches again.
    Deferred,
}

/// Prefix of the temporary file an object or manifest is written to, beside its final name.
const PART_PREFIX: &str = ".part-";
/// A temporary file older than this is what a crashed writer left; [`Cache::evict`]
/// deletes it.
const STALE_PART: Duration = Duration::from_secs(3600);

/// Writes `bytes` to `path` atomically: a temporary file beside it renamed into place, so a
/// reader sees nothing or all of the bytes; with [`Durability::Now`] the file and its
/// directory are fsynced, so that holds after a power loss too. The temporary file is in
/// the same directory, not a shared `tmp/`: 16 writers creating in one directory and renaming
/// across directories (a filesystem-wide lock) made a cold start of 10,000 files 2.4x
/// slower on ext4 (BENCHMARKS.md).
async fn write_atomically(
    path: &Path,
    bytes: Vec<u8>,
    durability: Durability,
) -> Result<(), CacheError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let options = crate::atomic::Options {
            durable: durability == Durability::Now,
            world_readable: false,
            temp_prefix: PART_PREFIX,
        };
        crate::atomic::write(&path, &bytes, options).map_err(io_error(&path))
    })
    .await
    .expect("cache writer does not panic")
}

impl Cache {
    /// Opens (creating) the cache at `root`.
    pub fn open(root: &Path) -> Result<Cache, CacheError> {
        for dir in ["objects", "generations"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).map_err(io_error(&path))?;
        }
        Ok(Cache {
            root: root.to_path_buf(),
            verified: Arc::default(),
            objects: Arc::new(Objects::new(Some(root.join("packs")))),
            unsynced: Arc::default(),
        })
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where object `digest` is kept.
    pub fn object_path(&self, digest: &Digest) -> PathBuf {
        self.root.join(object_key(digest))
    }

    fn manifest_path(&self, generation: u64) -> PathBuf {
        self.root.join(manifest_key(generation))
    }

    fn is_verified(&self, digest: &Digest) -> bool {
        self.verified
            .lock()
            .expect("no panics under the lock")
            .contains(digest)
    }

    fn mark_verified(&self, digest: &Digest) {
        self.verified
            .lock()
            .expect("no panics under the lock")
            .insert(*digest);
    }

    /// Whether object `digest` is present with `size` bytes that hash to its name. The
    /// first check of an object in a process reads and hashes it (a file left by an earlier
    /// run may hold garbage after a power loss; a bad one is deleted); later checks trust
    /// that and only compare the length.
    pub fn has_object(&self, digest: &Digest, size: u64) -> bool {
        let path = self.object_path(digest);
        let Ok(meta) = std::fs::metadata(&path) else {
            return false;
        };
        if self.is_verified(digest) {
            return meta.len() == size;
        }
        match crate::scan::hash_file(&path) {
            Ok(read) if read.digest == *digest => {
                self.mark_verified(digest);
                read.stamp.size() == size
            }
            Ok(read) => {
                tracing::warn!(object = %digest, found = %read.digest, path = %path.display(),
                    "cached object does not hash to its name (a power loss?); deleting it, it is fetched again");
                let _ = std::fs::remove_file(&path);
                false
            }
            Err(_) => false,
        }
    }

    /// Fetches object `digest` from `store` into the cache, verifying its bytes; a mismatch is
    /// fetched once more (a transient bad read) before it is reported as corrupt. Returns
    /// the object's length. An object a running gc has moved aside is read from the trash.
    /// Packed objects are found through the indexes of the last [`Cache::refresh_packs`].
    pub async fn fetch_object(
        &self,
        store: &dyn Store,
        digest: &Digest,
    ) -> Result<u64, CacheError> {
        self.fetch_verified(store, digest, Durability::Now).await
    }

    /// [`Cache::fetch_object`], written with `durability`.
    async fn fetch_verified(
        &self,
        store: &dyn Store,
        digest: &Digest,
        durability: Durability,
    ) -> Result<u64, CacheError> {
        let mut detail = String::new();
        for attempt in 1..=2 {
            let bytes = self.objects.read(store, digest).await?;
            let actual = Digest::of(&bytes);
            if actual == *digest {
                return self.keep_object(digest, &bytes, durability).await;
            }
            detail = format!("its {} bytes hash to {actual}", bytes.len());
            tracing::error!(object = %digest, attempt, %detail, url = store.url(), "store served corrupt object bytes");
        }
        Err(CacheError::Corrupt {
            digest: *digest,
            key: self.objects.key(digest),
            url: store.url().to_string(),
            detail,
        })
    }

    /// Writes the verified bytes of object `digest` into place; returns their length.
    async fn keep_object(
        &self,
        digest: &Digest,
        bytes: &[u8],
        durability: Durability,
    ) -> Result<u64, CacheError> {
        let path = self.object_path(digest);
        write_atomically(&path, bytes.to_vec(), durability).await?;
        if durability == Durability::Deferred {
            self.unsynced.store(true, Ordering::SeqCst);
        }
        self.mark_verified(digest);
        Ok(bytes.len() as u64)
    }

    /// Fetches the objects of `batch` with one range read; one whose bytes do not hash to
    /// its name is fetched alone ([`Cache::fetch_object`]: read again, then a loose copy).
    /// A failed read fails the whole batch.
    async fn fetch_batch(
        &self,
        store: &dyn Store,
        batch: &crate::objects::Batch,
    ) -> Result<Vec<(Digest, Result<u64, CacheError>)>, CacheError> {
        let mut results = Vec::new();
        for (digest, bytes) in self.objects.read_batch(store, batch).await? {
            let result = if Digest::of(&bytes) == digest {
                Ok(self
                    .keep_object(&digest, &bytes, Durability::Deferred)
                    .await?)
            } else {
                self.fetch_verified(store, &digest, Durability::Deferred)
                    .await
            };
            results.push((digest, result));
        }
        Ok(results)
    }

    /// Puts the objects fetched since the last call on disk, with one `syncfs` of the
    /// cache's filesystem (nothing if none was fetched).
    pub async fn sync(&self) -> Result<(), CacheError> {
        if !self.unsynced.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let root = self.root.clone();
        let synced = tokio::task::spawn_blocking(move || {
            std::fs::File::open(&root)
                .and_then(|dir| rustix::fs::syncfs(&dir).map_err(std::io::Error::from))
                .map_err(io_error(&root))
        })
        .await
        .expect("cache sync does not panic");
        if synced.is_err() {
            self.unsynced.store(true, Ordering::SeqCst);
        }
        synced
    }

    /// Lists the store's packs and reads the indexes not seen before (local copies first).
    pub async fn refresh_packs(&self, store: &dyn Store) -> Result<(), CacheError> {
        Ok(self.objects.refresh(store).await?)
    }

    /// Fetches generation `generation`: its manifest and every object it needs that is not
    /// cached yet, `concurrency` at a time. Objects the store serves corrupt are left out and
    /// named in the result (the mount answers EIO for those files, never wrong bytes); any
    /// other failure is an error and nothing is switched.
    /// The pack indexes read for it are dropped from memory afterwards (their local copies
    /// stay), so a long-running mount holds none between switches.
    pub async fn fetch_generation(
        &self,
        store: &dyn Store,
        generation: u64,
        concurrency: usize,
    ) -> Result<CachedGeneration, CacheError> {
        let fetched = self.fetch_all(store, generation, concurrency).await;
        self.objects.forget();
        fetched
    }

    async fn fetch_all(
        &self,
        store: &dyn Store,
        generation: u64,
        concurrency: usize,
    ) -> Result<CachedGeneration, CacheError> {
        let manifest = match self.load_manifest(generation) {
            Ok(Some(manifest)) => manifest,
            _ => {
                let manifest = generations::load(store, generation).await?;
                let path = self.manifest_path(generation);
                write_atomically(&path, manifest.to_bytes(), Durability::Now).await?;
                manifest
            }
        };
        let missing: HashSet<&Digest> = manifest
            .entries
            .iter()
            .filter(|e| !self.has_object(&e.blake3, e.size))
            .map(|e| &e.blake3)
            .collect();
        let fetched = missing.len();
        if fetched > 0 {
            self.refresh_packs(store).await?;
        }
        // Neighbouring objects of a pack come with one range read; the others one by one.
        let (batches, single) = self.objects.batches(missing.into_iter().copied());
        let batched: Vec<Vec<(Digest, Result<u64, CacheError>)>> = stream::iter(batches)
            .map(|batch| async move { self.fetch_batch(store, &batch).await })
            .buffer_unordered(concurrency.max(1))
            .try_collect()
            .await?;
        let single: Vec<(Digest, Result<u64, CacheError>)> = stream::iter(single)
            .map(|digest| async move {
                let fetched = self
                    .fetch_verified(store, &digest, Durability::Deferred)
                    .await;
                (digest, fetched)
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        let results = batched.into_iter().flatten().chain(single);
        let mut corrupt = std::collections::HashMap::new();
        for (digest, result) in results {
            match result {
                Ok(_) => {}
                Err(CacheError::Corrupt { detail, .. }) => {
                    corrupt.insert(digest, format!("the store serves corrupt bytes ({detail})"));
                }
                Err(e) => return Err(e),
            }
        }
        let corrupt: Vec<String> = manifest
            .entries
            .iter()
            .filter_map(|e| {
                if let Some(why) = corrupt.get(&e.blake3) {
                    return Some(format!("{}: {why}", e.path));
                }
                // Verified bytes of another length: the manifest pairs this content with the
                // size of other bytes (published by a dagfs that took sizes from the walk).
                let len = std::fs::metadata(self.object_path(&e.blake3)).ok()?.len();
                (len != e.size).then(|| {
                    format!(
                        "{}: the generation records {} bytes but its content has {len}; it was published inconsistently, publish the file again",
                        e.path, e.size
                    )
                })
            })
            .collect();
        tracing::debug!(
            generation,
            fetched,
            corrupt = corrupt.len(),
            "generation cached"
        );
        Ok(CachedGeneration { manifest, corrupt })
    }

    /// The cached manifest of `generation`, if there is one.
    pub fn load_manifest(&self, generation: u64) -> Result<Option<Manifest>, CacheError> {
        let path = self.manifest_path(generation);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(&path)(e)),
        };
        let manifest =
            Manifest::from_bytes(&bytes).map_err(|source| CacheError::Manifest { path, source })?;
        Ok(Some(manifest))
    }

    /// Cached generations, oldest first.
    pub fn generations(&self) -> Result<Vec<u64>, CacheError> {
        let dir = self.root.join("generations");
        let mut found: Vec<u64> = std::fs::read_dir(&dir)
            .map_err(io_error(&dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| parse_manifest_name(e.file_name().to_str()?))
            .collect();
        found.sort_unstable();
        Ok(found)
    }

    /// The newest cached generation whose objects are all present: what a mount serves when
    /// it starts while the store is unreachable.
    pub fn latest_complete(&self) -> Result<Option<Manifest>, CacheError> {
        for generation in self.generations()?.into_iter().rev() {
            if let Ok(Some(manifest)) = self.load_manifest(generation) {
                if manifest
                    .entries
                    .iter()
                    .all(|e| self.has_object(&e.blake3, e.size))
                {
                    return Ok(Some(manifest));
                }
            }
        }
        Ok(None)
    }

    /// Keeps the newest `keep` cached generations up to and including `served` (and `served`
    /// itself); deletes other manifests and every object none of the kept ones needs.
    /// Returns the number of objects deleted. Open files keep their bytes (unlinked inodes).
    /// Only objects still kept stay marked as checked (the set follows the cache, not the
    /// number of generations this process has fetched).
    pub fn evict(&self, served: u64, keep: usize) -> Result<usize, CacheError> {
        let all = self.generations()?;
        let kept: Vec<u64> = all
            .iter()
            .copied()
            .filter(|&g| g <= served)
            .rev()
            .take(keep.max(1))
            .chain(all.iter().copied().filter(|&g| g > served))
            .collect();
        let mut needed = HashSet::new();
        for &generation in &kept {
            if let Some(manifest) = self.load_manifest(generation)? {
                needed.extend(manifest.entries.iter().map(|e| e.blake3));
            }
        }
        for generation in all.iter().filter(|g| !kept.contains(g)) {
            let path = self.manifest_path(*generation);
            std::fs::remove_file(&path).map_err(io_error(&path))?;
        }
        let mut deleted = 0;
        let objects = self.root.join("objects");
        for entry in walkdir::WalkDir::new(&objects).min_depth(2).max_depth(2) {
            let entry = entry.map_err(|e| CacheError::Io {
                path: objects.clone(),
                source: e.into(),
            })?;
            let name = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Digest>().ok());
            if entry.file_type().is_file()
                && !name.is_some_and(|d| needed.contains(&d))
                && !is_fresh_part(&entry)
            {
                std::fs::remove_file(entry.path()).map_err(io_error(entry.path()))?;
                deleted += 1;
            }
        }
        self.verified
            .lock()
            .expect("no panics under the lock")
            .retain(|digest| needed.contains(digest));
        Ok(deleted)
    }
}

/// Whether `entry` is a temporary file a writer may still be filling (younger than
/// [`STALE_PART`]).
fn is_fresh_part(entry: &walkdir::DirEntry) -> bool {
    let part = entry
        .file_name()
        .to_str()
        .is_some_and(|name| name.starts_with(PART_PREFIX));
    part && entry
        .metadata()
        .ok()
        .and_then(|meta| meta.modified().ok())
        .and_then(|modified| modified.elapsed().ok())
        .is_some_and(|age| age < STALE_PART)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{LocalStore, Overwrite};
    use crate::testutil::publish_files;

    /// A store with one generation, `a.py` = "AAAA", fetched into a cache under the same
    /// temporary directory.
    async fn one_file_fetched() -> (tempfile::TempDir, LocalStore, Cache, Manifest) {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::open(tmp.path().join("store")).await.unwrap();
        publish_files(&store, tmp.path(), &[("a.py", "AAAA")]).await;
        let cache = Cache::open(&tmp.path().join("cache")).unwrap();
        let g1 = cache.fetch_generation(&store, 1, 4).await.unwrap().manifest;
        (tmp, store, cache, g1)
    }

    #[tokio::test]
    async fn fetches_verifies_serves_offline_and_evicts() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::open(tmp.path().join("store")).await.unwrap();
        publish_files(&store, tmp.path(), &[("a.py", "A1"), ("b.py", "B")]).await;
        publish_files(&store, tmp.path(), &[("a.py", "A2"), ("b.py", "B")]).await;

        let cache = Cache::open(&tmp.path().join("cache")).unwrap();
        let g1 = cache.fetch_generation(&store, 1, 4).await.unwrap().manifest;
        let g2 = cache.fetch_generation(&store, 2, 4).await.unwrap().manifest;
        for e in g1.entries.iter().chain(&g2.entries) {
            assert!(cache.has_object(&e.blake3, e.size), "{}", e.path);
        }
        assert_eq!(cache.latest_complete().unwrap().unwrap().generation, 2);

        // A corrupt object in the store is never cached.
        let a2 = g2.entries.iter().find(|e| e.path == "a.py").unwrap().blake3;
        std::fs::remove_file(cache.object_path(&a2)).unwrap();
        crate::testutil::damage_packed(&store, &tmp.path().join("store"), &a2, b"A3").await;
        let err = cache.fetch_object(&store, &a2).await.unwrap_err();
        assert!(matches!(err, CacheError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("packs/"), "names the pack: {err}");
        assert!(!cache.object_path(&a2).exists());
        // Generation 2 is no longer complete locally: the latest complete one is 1.
        assert_eq!(cache.latest_complete().unwrap().unwrap().generation, 1);
        // Fetching generation 2 again names the corrupt file instead of failing.
        let again = cache.fetch_generation(&store, 2, 4).await.unwrap();
        assert_eq!(again.corrupt.len(), 1);
        assert!(
            again.corrupt[0].starts_with("a.py: the store serves corrupt bytes"),
            "{:?}",
            again.corrupt
        );

        // The repair: a loose copy of the right bytes is used instead of the damaged pack.
        store
            .put(
                &object_key(&a2),
                bytes::Bytes::from_static(b"A2"),
                Overwrite::Deny,
            )
            .await
            .unwrap();
        assert_eq!(cache.fetch_object(&store, &a2).await.unwrap(), 2);
        assert!(cache
            .fetch_generation(&store, 2, 4)
            .await
            .unwrap()
            .corrupt
            .is_empty());

        // Serving 1 keeps newer generations (fetched ahead) and nothing is deleted.
        assert_eq!(cache.evict(1, 1).unwrap(), 0);
        // Serving 2 and keeping one generation drops generation 1 and A1, its own object.
        assert_eq!(cache.evict(2, 1).unwrap(), 1);
        assert_eq!(cache.generations().unwrap(), [2]);
        let b = g1.entries.iter().find(|e| e.path == "b.py").unwrap();
        assert!(
            cache.has_object(&b.blake3, b.size),
            "still needed by generation 2"
        );
    }

    /// A long-running mount's memory follows what it keeps, not how many switches it made:
    /// over many publish/fetch/evict cycles (the store never collected) the set of objects
    /// checked in this process holds only objects the kept generations need, and no pack
    /// index outlives the fetch that read it.
    #[tokio::test]
    async fn memory_follows_the_kept_generations_not_the_switches() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::open(tmp.path().join("store")).await.unwrap();
        let cache = Cache::open(&tmp.path().join("cache")).unwrap();
        let keep = 2;
        for round in 0..40 {
            let a = format!("a = {round}");
            let b = format!("b = {}", round / 3);
            let outcome = publish_files(
                &store,
                tmp.path(),
                &[("a.py", &a), ("b.py", &b), ("c.py", "c")],
            )
            .await;
            let generation = outcome.generation.unwrap();
            cache.fetch_generation(&store, generation, 4).await.unwrap();
            cache.evict(generation, keep).unwrap();
            let mut needed = HashSet::new();
            for kept in cache.generations().unwrap() {
                let manifest = cache.load_manifest(kept).unwrap().unwrap();
                needed.extend(manifest.entries.iter().map(|e| e.blake3));
            }
            let verified = cache.verified.lock().unwrap().clone();
            assert!(
                verified.is_subset(&needed),
                "round {round}: {} objects marked verified, {} needed by the kept generations",
                verified.len(),
                needed.len()
            );
            let (indexes, located) = cache.objects.held();
            assert!(
                indexes == 0 && located == 0,
                "round {round}: {indexes} pack indexes and {located} object locations held after the fetch"
            );
        }
    }

    /// Index reads: a generation already cached costs no store call at all, and after a
    /// restart a new generation reads the tail of its new pack only (the older pack's index
    /// comes from the local copy).
    #[tokio::test]
    async fn local_index_copies_spare_index_reads() {
        use crate::store::faulty::{FaultyStore, Op, Rule};
        use crate::store::ErrorKind;
        let tmp = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Store> =
            Arc::new(LocalStore::open(tmp.path().join("store")).await.unwrap());
        publish_files(&*inner, tmp.path(), &[("a.py", "A1"), ("b.py", "B")]).await;
        let cache = Cache::open(&tmp.path().join("cache")).unwrap();
        cache.fetch_generation(&*inner, 1, 4).await.unwrap();
        let objects = Objects::new(None);
        objects.refresh(&*inner).await.unwrap();
        let first = objects.locate(&Digest::of(b"A1")).unwrap().pack;

        let store = FaultyStore::new(Arc::clone(&inner));
        for op in Op::ALL {
            store.add(Rule::fail(op, 1, ErrorKind::Unavailable));
        }
        cache.fetch_generation(&store, 1, 4).await.unwrap();
        assert!(store.fired().is_empty(), "{:?}", store.fired());

        publish_files(&*inner, tmp.path(), &[("a.py", "A2"), ("b.py", "B")]).await;
        let restarted = Cache::open(&tmp.path().join("cache")).unwrap();
        store.clear();
        store.add(
            Rule::fail(Op::ReadRange, 1, ErrorKind::Unavailable).on(&crate::pack::pack_key(&first)),
        );
        let second = restarted.fetch_generation(&store, 2, 4).await.unwrap();
        assert!(second.corrupt.is_empty());
        assert!(store.fired().is_empty(), "{:?}", store.fired());
    }

    /// After a power loss an object file can have the right size and garbage bytes: it is
    /// not taken for the object (the first check in a process hashes it).
    #[tokio::test]
    async fn a_right_sized_file_of_garbage_is_not_taken_for_the_object() {
        let (tmp, store, cache, g1) = one_file_fetched().await;
        let a = &g1.entries[0];
        std::fs::write(cache.object_path(&a.blake3), "\0\0\0\0").unwrap();
        let restarted = Cache::open(&tmp.path().join("cache")).unwrap();
        assert!(!restarted.has_object(&a.blake3, a.size));
        assert!(restarted.latest_complete().unwrap().is_none());
        let again = restarted.fetch_generation(&store, 1, 4).await.unwrap();
        assert!(again.corrupt.is_empty());
        assert_eq!(
            std::fs::read(restarted.object_path(&a.blake3)).unwrap(),
            b"AAAA"
        );
    }

    /// Eviction runs beside writers (an open re-fetching a missing object): it never
    /// deletes a temporary file a writer may still be filling, and deletes one a crashed
    /// writer left an hour ago.
    #[tokio::test]
    async fn eviction_spares_files_being_written_and_removes_stale_ones() {
        let (_tmp, _store, cache, g1) = one_file_fetched().await;
        let dir = cache.object_path(&g1.entries[0].blake3);
        let dir = dir.parent().unwrap();
        let fresh = dir.join(format!("{PART_PREFIX}being-written"));
        let stale = dir.join(format!("{PART_PREFIX}left-by-a-crash"));
        std::fs::write(&fresh, "half").unwrap();
        std::fs::File::create(&stale)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - STALE_PART * 2)
            .unwrap();
        assert_eq!(cache.evict(1, 1).unwrap(), 1);
        assert!(fresh.exists(), "a file being written was deleted");
        assert!(!stale.exists(), "a crash's leftover was kept");
        assert!(cache.has_object(&g1.entries[0].blake3, g1.entries[0].size));
    }

    /// A generation whose entry records another size than its content has (published by a
    /// dagfs that took sizes from the walk) is not served as a prefix: the file is named
    /// with the real cause.
    #[tokio::test]
    async fn a_content_of_another_length_than_recorded_is_not_served() {
        use crate::format::{Entry, Header};
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::open(tmp.path().join("store")).await.unwrap();
        let content = b"print('the long version')";
        let digest = Digest::of(content);
        store
            .put(
                &object_key(&digest),
                bytes::Bytes::from_static(content),
                Overwrite::Deny,
            )
            .await
            .unwrap();
        let manifest = Manifest::new(
            Header {
                generation: 1,
                parent: None,
                created: "2026-01-01T00:00:00Z".into(),
                author: "x@y".into(),
                message: String::new(),
            },
            vec![Entry {
                path: "dag.py".into(),
                mode: 0o644,
                size: 5,
                mtime_ns: 1,
                blake3: digest,
            }],
        )
        .unwrap();
        store
            .put(
                &manifest_key(1),
                bytes::Bytes::from(manifest.to_bytes()),
                Overwrite::Deny,
            )
            .await
            .unwrap();
        let cache = Cache::open(&tmp.path().join("cache")).unwrap();
        let cached = cache.fetch_generation(&store, 1, 4).await.unwrap();
        assert_eq!(cached.corrupt.len(), 1, "{:?}", cached.corrupt);
        assert!(
            cached.corrupt[0].contains("dag.py") && cached.corrupt[0].contains("records 5 bytes"),
            "{:?}",
            cached.corrupt
        );
    }
}
