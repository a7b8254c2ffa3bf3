//! The publish protocol: upload missing objects, then commit the next generation with one
//! atomic compare-and-swap on its name (docs/DESIGN.md, "Publish protocol").
//!
//! 1. Read the head generation `H` and compute the change set: the desired tree (a scanned
//!    folder, optionally under a prefix) against `H` (the prefix's subtree of it).
//! 2. Upload every object the change set needs that the store lacks (in none of its packs,
//!    not loose): into pack files of at most 64 MiB (large files as loose objects), each
//!    staged and renamed into place (`put`); bytes are re-hashed on the way, so a file
//!    edited after the scan fails the push instead of publishing a digest that lies.
//! 3. Commit generation `H+1` by `put(generations/<H+1>, overwrite=Deny)`: staged, then a
//!    `rename2` without overwrite, the NameNode's atomic compare-and-swap. Readers never see
//!    a manifest being written.
//! 4. Lost the race (`AlreadyExists`)? Re-read the new head, re-apply the change set path by
//!    path on top of it (a path the other publisher changed too is a conflict unless
//!    `force`), and commit again. An ambiguous failure (timeout, connection lost) is resolved
//!    by reading the manifest back and comparing manifest ids.
//! 5. Update the plain mirror (see [`crate::mirror`]).
//!
//! Steps 1-4 run under a gc pin ([`crate::gc::pin`]), taken before the head is read: no
//! object they found can be collected before the commit, and no manifest numbered above
//! `H` can be deleted (the no-overwrite commit would then succeed below the head). Nothing
//! after the commit can fail.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::format::{
    check_path, manifest_key, object_key, Digest, Entry, FormatError, Header, Manifest, TreeId,
    OBJECTS_DIR,
};
use crate::generations::{self, apply, diff, Change, GenerationError};
use crate::objects::Objects;
use crate::pack::{PackBuilder, MAX_PACKED_OBJECT};
use crate::scan::{ScanError, ScanOptions, ScannedFile};
use crate::store::{list_if_exists, ErrorKind, Overwrite, Store, StoreError, STAGING_DIR};

/// How many commit races a publish survives before giving up.
const MAX_COMMIT_ROUNDS: usize = 20;
/// How often an ambiguous commit is retried before giving up.
const MAX_AMBIGUOUS_RETRIES: u32 = 5;

/// A publish that did not happen; nothing half-published is ever visible.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A generation could not be read.
    #[error(transparent)]
    Generation(#[from] GenerationError),
    /// The tree breaks the format (a path, a file/directory clash).
    #[error("{0}")]
    Format(#[from] FormatError),
    /// Another publisher changed the same paths since this change set was computed.
    #[error("conflict: generation {theirs} (by {author}) also changed {}; pull their change, then push again, or push with --force to overwrite it", list(.paths))]
    Conflict {
        /// The other publisher's generation.
        theirs: u64,
        /// Its author.
        author: String,
        /// Paths both changed.
        paths: Vec<String>,
    },
    /// A file changed or vanished between scan and upload.
    #[error("{path}: changed while being published ({reason}); nothing was committed, push again")]
    ChangedDuringPush {
        /// The source file: a local path, or the URL of a file in a source store.
        path: String,
        /// What happened.
        reason: String,
    },
    /// An object a generation needs is not in the store and there is no local copy.
    #[error("object {digest} (for {path}) is missing from the store; push a folder that has this file to upload it again")]
    MissingObject {
        /// The object.
        digest: Digest,
        /// A path that uses it.
        path: String,
    },
    /// The publish was paused so long that gc took its pin for a crashed publisher's.
    #[error("this publish stalled for more than {} and gc may have collected objects it uses; nothing was committed, push again", humantime::format_duration(crate::gc::PIN_EXPIRY))]
    PinLost,
    /// The store holds the largest generation number there is.
    #[error("generation {0} is the last number there is; no generation can follow it")]
    GenerationsExhausted(u64),
    /// Too many publishers raced for the next generation.
    #[error("gave up after losing the commit race {0} times in a row; push again")]
    TooManyRaces(usize),
    /// The folder is empty but the store is not: almost always a wrong path or an unmounted
    /// volume, and publishing it would remove every DAG from every scheduler.
    #[error("refusing to publish an empty folder over {files} files{}: check the path, or pass --allow-empty to really remove them all", .prefix.as_ref().map(|p| format!(" under {p}/")).unwrap_or_default())]
    EmptyTree {
        /// Files the head has (under the prefix).
        files: usize,
        /// The prefix, if any.
        prefix: Option<String>,
    },
}

fn list(paths: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = paths
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if paths.len() > SHOWN {
        text.push_str(&format!(" and {} more", paths.len() - SHOWN));
    }
    text
}

/// Where the bytes of an object can be read for uploading.
#[derive(Clone, Debug)]
pub enum Source {
    /// A local file (of a scanned DAG folder).
    File(PathBuf),
    /// A file in another store (a plain folder being imported, see [`crate::import`]).
    Store {
        /// The source store.
        store: Arc<dyn Store>,
        /// The file's key in it.
        key: String,
    },
}

impl Source {
    /// The file, for messages: a local path or a URL.
    pub fn describe(&self) -> String {
        match self {
            Source::File(path) => path.display().to_string(),
            Source::Store { store, key } => {
                format!("{}/{key}", store.url().trim_end_matches('/'))
            }
        }
    }

    /// Reads the whole file; the error says why in words.
    async fn read(&self) -> Result<Bytes, String> {
        match self {
            Source::File(path) => {
                let path = path.clone();
                match tokio::task::spawn_blocking(move || std::fs::read(path)).await {
                    Ok(Ok(bytes)) => Ok(Bytes::from(bytes)),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
            Source::Store { store, key } => store.read(key).await.map_err(|e| e.to_string()),
        }
    }
}

impl From<PathBuf> for Source {
    fn from(path: PathBuf) -> Source {
        Source::File(path)
    }
}

/// The tree a publisher wants, and where the bytes of its files can be read.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    /// Entries relative to the prefix (or the root).
    pub entries: Vec<Entry>,
    /// Where the content of each digest can be read; digests without a source must already
    /// be in the store (a rollback's).
    pub sources: BTreeMap<Digest, Source>,
}

impl Desired {
    /// The desired tree of a scanned folder.
    pub fn from_scan(files: &[ScannedFile]) -> Desired {
        Desired {
            entries: files.iter().map(|f| f.entry.clone()).collect(),
            sources: files
                .iter()
                .map(|f| (f.entry.blake3, Source::File(f.local.clone())))
                .collect(),
        }
    }

    /// The desired tree of the folder `dir` as it is now: scanned with `options`, every file
    /// hashed (no hash cache).
    pub fn from_folder(dir: &Path, options: &ScanOptions) -> Result<Desired, ScanError> {
        let files = crate::scan::scan(dir, options, &mut crate::scan::HashCache::in_memory())?;
        Ok(Desired::from_scan(&files))
    }

    /// The desired tree of an existing generation: its entries, whose objects are in the store.
    pub fn from_manifest(manifest: &Manifest) -> Desired {
        Desired {
            entries: manifest.entries.clone(),
            sources: BTreeMap::new(),
        }
    }
}

/// How to publish.
#[derive(Clone, Debug)]
pub struct PublishOptions {
    /// Generation message.
    pub message: String,
    /// `user@host` recorded as the author.
    pub author: String,
    /// Publish into this subtree only; other paths of the head are kept as they are.
    pub prefix: Option<String>,
    /// On a conflict, overwrite the other publisher's change instead of failing.
    pub force: bool,
    /// Objects uploaded at once.
    pub concurrency: usize,
    /// Publish an empty tree over a non-empty one (otherwise refused as a likely mistake).
    pub allow_empty: bool,
    /// Where to keep local copies of the store's pack indexes (`None`: in memory, for this
    /// publish only); see [`crate::objects::index_dir`].
    pub index_dir: Option<PathBuf>,
}

impl Default for PublishOptions {
    fn default() -> Self {
        PublishOptions {
            message: String::new(),
            author: crate::host::author(),
            prefix: None,
            force: false,
            concurrency: 16,
            allow_empty: false,
            index_dir: None,
        }
    }
}

/// What a publish did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    /// The generation now at the head (new, or the unchanged head); `None` for an empty store
    /// and an empty tree.
    pub generation: Option<u64>,
    /// Tree id of that generation (of the empty tree for an empty store).
    pub tree_id: TreeId,
    /// Whether a new generation was committed.
    pub published: bool,
    /// Paths added.
    pub added: usize,
    /// Paths whose content or metadata changed.
    pub changed: usize,
    /// Paths removed.
    pub removed: usize,
    /// Objects uploaded (others were already in the store).
    pub objects_uploaded: usize,
    /// Bytes uploaded.
    pub bytes_uploaded: u64,
}

/// Publishes `desired` as the next generation if it differs from the head.
///
/// An error means nothing was committed; once the commit has happened nothing can fail.
pub async fn publish(
    store: &dyn Store,
    desired: &Desired,
    options: &PublishOptions,
) -> Result<Outcome, PublishError> {
    let prefix = match &options.prefix {
        Some(prefix) => {
            let prefix = prefix.trim_matches('/');
            check_path(prefix)?;
            Some(prefix.to_string())
        }
        None => None,
    };
    let wanted: Vec<Entry> = desired
        .entries
        .iter()
        .map(|e| Entry {
            path: match &prefix {
                Some(p) => format!("{p}/{}", e.path),
                None => e.path.clone(),
            },
            ..e.clone()
        })
        .collect();

    // From before the base is read until after the commit, gc deletes no object it moved
    // aside and no manifest numbered above the base (see `gc`): an object found here cannot
    // vanish under the commit, and the number the commit takes cannot have been held by a
    // generation gc deleted (its no-overwrite rename would then succeed below the head).
    let pin = crate::gc::pin(store).await?;
    let result = publish_pinned(store, desired, options, prefix, &wanted, &pin).await;
    pin.release(store).await;
    result
}

/// [`publish`] once `pin` is held: reads the base, diffs, publishes the change set.
async fn publish_pinned(
    store: &dyn Store,
    desired: &Desired,
    options: &PublishOptions,
    prefix: Option<String>,
    wanted: &[Entry],
    pin: &crate::gc::Pin,
) -> Result<Outcome, PublishError> {
    let base = generations::load_head(store).await?;
    let base_tree = base.as_ref().map_or(&[][..], |m| &m.entries[..]);
    let current = subtree(base_tree, prefix.as_deref());
    if wanted.is_empty() && !current.is_empty() && !options.allow_empty {
        return Err(PublishError::EmptyTree {
            files: current.len(),
            prefix,
        });
    }
    let changes = diff(&current, wanted);
    if changes.is_empty() {
        return Ok(unchanged(base.as_ref()));
    }
    publish_changes(store, desired, options, base, &changes, pin).await
}

/// Uploads the objects `changes` need, then commits them on top of `base`, rebasing after
/// lost races; `pin` is checked before every commit.
async fn publish_changes(
    store: &dyn Store,
    desired: &Desired,
    options: &PublishOptions,
    mut base: Option<Manifest>,
    changes: &[Change],
    pin: &crate::gc::Pin,
) -> Result<Outcome, PublishError> {
    let (added, changed, removed) = count(changes);
    // The manifest of the first round is written to the staging area while the objects
    // upload: committing it is then one rename, not a second small-file write in a row.
    let first = next_manifest(base.as_ref(), changes, options)?;
    let (uploaded, staged) = futures::join!(
        upload_objects(store, changes, desired, options),
        stage_manifest(store, first.as_ref()),
    );
    let (objects_uploaded, bytes_uploaded) = match uploaded {
        Ok(uploaded) => uploaded,
        Err(e) => {
            discard(store, staged).await;
            return Err(e);
        }
    };

    let mut prepared = first.map(|manifest| (manifest, staged));
    for _ in 0..MAX_COMMIT_ROUNDS {
        let (manifest, staged) = match prepared.take() {
            Some(prepared) => prepared,
            None => match next_manifest(base.as_ref(), changes, options)? {
                Some(manifest) => (manifest, None),
                // Someone else published exactly this change already.
                None => return Ok(unchanged(base.as_ref())),
            },
        };
        if !pin.held(store).await? {
            discard(store, staged).await;
            return Err(PublishError::PinLost);
        }
        let generation = manifest.generation;
        let base_tree = base.as_ref().map_or(&[][..], |m| &m.entries[..]);
        if commit(store, &manifest, staged).await? {
            tracing::info!(generation, tree_id = %manifest.tree_id, added, changed, removed, objects_uploaded, bytes_uploaded, "published");
            return Ok(Outcome {
                generation: Some(generation),
                tree_id: manifest.tree_id,
                published: true,
                added,
                changed,
                removed,
                objects_uploaded,
                bytes_uploaded,
            });
        }
        // Lost the race: rebase onto the new head.
        let theirs = generations::load_head(store)
            .await?
            .expect("a generation exists after losing a race for one");
        let conflicts: Vec<String> = changes
            .iter()
            .map(Change::path)
            .filter(|path| find(base_tree, path) != find(&theirs.entries, path))
            .map(str::to_string)
            .collect();
        tracing::info!(
            lost_to = theirs.generation,
            conflicts = conflicts.len(),
            "lost the commit race; rebasing"
        );
        if !conflicts.is_empty() && !options.force {
            return Err(PublishError::Conflict {
                theirs: theirs.generation,
                author: theirs.author.clone(),
                paths: conflicts,
            });
        }
        base = Some(theirs);
    }
    Err(PublishError::TooManyRaces(MAX_COMMIT_ROUNDS))
}

fn unchanged(head: Option<&Manifest>) -> Outcome {
    Outcome {
        generation: head.map(|m| m.generation),
        tree_id: head.map_or_else(|| crate::format::tree_id(&[]), |m| m.tree_id),
        published: false,
        added: 0,
        changed: 0,
        removed: 0,
        objects_uploaded: 0,
        bytes_uploaded: 0,
    }
}

fn count(changes: &[Change]) -> (usize, usize, usize) {
    changes
        .iter()
        .fold((0, 0, 0), |(a, c, r), change| match change {
            Change::Added(_) => (a + 1, c, r),
            Change::Changed(..) => (a, c + 1, r),
            Change::Removed(_) => (a, c, r + 1),
        })
}

/// The entries of `tree` under `prefix` (all of them without one).
fn subtree(tree: &[Entry], prefix: Option<&str>) -> Vec<Entry> {
    match prefix {
        None => tree.to_vec(),
        Some(prefix) => tree
            .iter()
            .filter(|e| {
                e.path
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('/'))
            })
            .cloned()
            .collect(),
    }
}

fn find<'a>(tree: &'a [Entry], path: &str) -> Option<&'a Entry> {
    tree.binary_search_by(|e| e.path.as_str().cmp(path))
        .ok()
        .map(|i| &tree[i])
}

/// Makes every object `changes` need present in the store: objects the store lacks are
/// uploaded into packs (large ones loose), or put back from the gc trash. Returns the
/// number of objects uploaded and their bytes.
async fn upload_objects(
    store: &dyn Store,
    changes: &[Change],
    desired: &Desired,
    options: &PublishOptions,
) -> Result<(usize, u64), PublishError> {
    let concurrency = options.concurrency.max(1);
    // Listed once (after the pin): usually there is no trash at all.
    let runs = &crate::gc::trash_runs(store).await?;
    let objects = &Objects::new(options.index_dir.clone());
    objects.refresh(store).await?;
    // Loose objects (a format-1 store's, large files) are looked for only if there are any.
    let loose = !list_if_exists(store, OBJECTS_DIR).await?.is_empty();
    let mut seen = HashSet::new();
    let needed: Vec<(Entry, Option<Source>)> = changes
        .iter()
        .filter_map(Change::new_entry)
        .filter(|e| seen.insert(e.blake3))
        .map(|e| (e.clone(), desired.sources.get(&e.blake3).cloned()))
        .collect();
    let missing: Vec<(Entry, Source)> = stream::iter(needed)
        .map(|(entry, source)| async move {
            if present(store, objects, loose, &entry, source.is_none(), runs).await? {
                return Ok(None);
            }
            match source {
                Some(source) => Ok(Some((entry, source))),
                None => Err(PublishError::MissingObject {
                    digest: entry.blake3,
                    path: entry.path.clone(),
                }),
            }
        })
        .buffer_unordered(concurrency)
        .try_filter_map(|found| async move { Ok(found) })
        .try_collect()
        .await?;
    let (large, small): (Vec<_>, Vec<_>) = missing
        .into_iter()
        .partition(|(entry, _)| entry.size > MAX_PACKED_OBJECT);
    let count = large.len() + small.len();
    let large_bytes = stream::iter(large)
        .map(|(entry, source)| async move {
            let bytes = read_verified(&source, &entry).await?;
            let len = bytes.len() as u64;
            store
                .put(&object_key(&entry.blake3), bytes, Overwrite::Allow)
                .await?;
            Ok::<_, PublishError>(len)
        })
        .buffer_unordered(concurrency)
        .try_fold(0, |total, len| async move { Ok(total + len) })
        .await?;
    let mut pack = PackBuilder::default();
    let mut small_bytes = 0;
    let mut read = stream::iter(small)
        .map(|(entry, source)| async move {
            let bytes = read_verified(&source, &entry).await?;
            Ok::<_, PublishError>((entry, bytes))
        })
        .buffer_unordered(concurrency);
    while let Some((entry, bytes)) = read.try_next().await? {
        if !pack.fits(bytes.len() as u64) {
            std::mem::take(&mut pack).finish().upload(store).await?;
        }
        small_bytes += bytes.len() as u64;
        pack.add(entry.blake3, &bytes);
    }
    if !pack.is_empty() {
        pack.finish().upload(store).await?;
    }
    Ok((count, large_bytes + small_bytes))
}

/// Whether the store has the object of `entry` with the entry's length: in a pack of the
/// listing, loose (looked for if the store has `loose` objects or the object is too large
/// to pack), or put back from the gc trash (`runs`, listed before; listed again for
/// an object with no source to upload from, `rollback`).
async fn present(
    store: &dyn Store,
    objects: &Objects,
    loose: bool,
    entry: &Entry,
    rollback: bool,
    runs: &[String],
) -> Result<bool, PublishError> {
    if objects
        .locate(&entry.blake3)
        .is_some_and(|packed| packed.span.len == entry.size)
    {
        return Ok(true);
    }
    // Loose objects: a format-1 store's, and large files.
    if loose || entry.size > MAX_PACKED_OBJECT {
        let key = object_key(&entry.blake3);
        match store.stat(&key).await {
            Ok(info) if info.len == entry.size => return Ok(true),
            Ok(info) => {
                tracing::warn!(
                    key,
                    found = info.len,
                    expected = entry.size,
                    "replacing a damaged object"
                );
                return Ok(false);
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    // A run that started after the listing may hold what a rollback needs.
    let fresh;
    let runs = if rollback {
        fresh = crate::gc::trash_runs(store).await?;
        &fresh[..]
    } else {
        runs
    };
    if crate::gc::restore_from_runs(store, &entry.blake3, runs).await?
        || crate::gc::restore_pack_from_runs(store, objects, &entry.blake3, runs).await?
    {
        return Ok(true);
    }
    if rollback {
        // Another object of the same trashed pack may have had it put back between the
        // listing and the look into the trash (this publish checks objects concurrently).
        // A fresh listing is still one made after the pin; an object with a source is
        // simply uploaded again instead.
        objects.refresh(store).await?;
        return Ok(objects
            .locate(&entry.blake3)
            .is_some_and(|packed| packed.span.len == entry.size));
    }
    Ok(false)
}

/// Reads a source file and checks it still has the length and digest the scan found.
async fn read_verified(source: &Source, entry: &Entry) -> Result<Bytes, PublishError> {
    let changed = |reason: String| PublishError::ChangedDuringPush {
        path: source.describe(),
        reason,
    };
    let bytes = source.read().await.map_err(changed)?;
    if bytes.len() as u64 != entry.size {
        return Err(changed(format!(
            "it has {} bytes, the scan recorded {}",
            bytes.len(),
            entry.size
        )));
    }
    if Digest::of(&bytes) != entry.blake3 {
        return Err(changed("its content no longer matches the scan".into()));
    }
    Ok(bytes)
}

/// The manifest that applies `changes` to `base`, as the next generation; `None` if `base`
/// already holds them.
fn next_manifest(
    base: Option<&Manifest>,
    changes: &[Change],
    options: &PublishOptions,
) -> Result<Option<Manifest>, PublishError> {
    let base_tree = base.map_or(&[][..], |m| &m.entries[..]);
    let tree = apply(base_tree, changes);
    if base.is_some_and(|m| m.entries == tree) {
        return Ok(None);
    }
    let generation = match base {
        Some(m) => m
            .generation
            .checked_add(1)
            .ok_or(PublishError::GenerationsExhausted(m.generation))?,
        None => 1,
    };
    let manifest = Manifest::new(
        Header {
            generation,
            parent: base.map(|m| m.generation),
            created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            author: options.author.clone(),
            message: options.message.clone(),
        },
        tree,
    )?;
    Ok(Some(manifest))
}

/// Writes `manifest` under a fresh key of the staging area; `None` when there is nothing to
/// stage or staging failed (the commit then writes the manifest itself).
async fn stage_manifest(store: &dyn Store, manifest: Option<&Manifest>) -> Option<String> {
    let manifest = manifest?;
    let key = format!("{STAGING_DIR}/manifest-{}", uuid::Uuid::new_v4());
    match store
        .put(&key, Bytes::from(manifest.to_bytes()), Overwrite::Deny)
        .await
    {
        Ok(()) => Some(key),
        Err(e) => {
            tracing::debug!(error = %e, "could not stage the manifest; writing it at commit");
            None
        }
    }
}

/// Removes a staged manifest that was not committed (best effort: `gc` collects leftovers).
async fn discard(store: &dyn Store, staged: Option<String>) {
    if let Some(key) = staged {
        if let Err(e) = store.delete(&key, false).await {
            tracing::debug!(key, error = %e, "could not remove a staged manifest");
        }
    }
}

/// Tries to commit `manifest` under its generation number, by renaming its `staged` copy
/// into place or else by writing it there. `Ok(true)`: it is committed (maybe by an earlier
/// attempt whose answer was lost); `Ok(false)`: another manifest holds the number.
async fn commit(
    store: &dyn Store,
    manifest: &Manifest,
    mut staged: Option<String>,
) -> Result<bool, PublishError> {
    let committed = try_commit(store, manifest, &mut staged).await;
    if !matches!(committed, Ok(true)) {
        discard(store, staged).await;
    }
    committed
}

async fn try_commit(
    store: &dyn Store,
    manifest: &Manifest,
    staged: &mut Option<String>,
) -> Result<bool, PublishError> {
    let key = manifest_key(manifest.generation);
    let bytes = Bytes::from(manifest.to_bytes());
    let mut attempt = 0;
    loop {
        let written = match staged.as_deref() {
            Some(from) => match store.rename(from, &key, Overwrite::Deny).await {
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    // No `generations/` yet (the first generation): write it directly.
                    discard(store, staged.take()).await;
                    continue;
                }
                renamed => renamed,
            },
            None => store.put(&key, bytes.clone(), Overwrite::Deny).await,
        };
        let error = match written {
            Ok(()) => return Ok(true),
            Err(e) if e.kind() == ErrorKind::AlreadyExists || e.kind().is_transient() => e,
            Err(e) => return Err(e.into()),
        };
        // Whose manifest holds the name, if any? Read it back and compare ids.
        match generations::load(store, manifest.generation).await {
            Ok(found) => {
                let ours = found.manifest_id == manifest.manifest_id;
                // `AlreadyExists` answered by another manifest on a first attempt is a plain
                // lost race (the caller logs it); anything else here resolved an answer
                // lost on the way (a NameNode failover, a timeout).
                if ours || error.kind().is_transient() || attempt > 0 {
                    tracing::info!(key, ours, attempt, error = %error, "ambiguous commit resolved by reading it back");
                }
                return Ok(ours);
            }
            Err(GenerationError::Missing { .. }) if error.kind() != ErrorKind::AlreadyExists => {}
            Err(GenerationError::Store(e)) if e.kind().is_transient() => {}
            Err(e) => return Err(e.into()),
        }
        attempt += 1;
        if attempt > MAX_AMBIGUOUS_RETRIES {
            return Err(error.into());
        }
        tracing::warn!(key, attempt, error = %error, "commit outcome unknown; retrying");
        tokio::time::sleep(Duration::from_millis(200) * 2u32.pow(attempt)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;

    fn entry(path: &str, content: &str) -> Entry {
        crate::testutil::entry_for(path, content.as_bytes())
    }

    /// A desired tree backed by real files in `dir`.
    fn desired(dir: &std::path::Path, files: &[(&str, &str)]) -> Desired {
        let mut d = Desired::default();
        let dir = dir.join(uuid::Uuid::new_v4().to_string());
        std::fs::create_dir(&dir).unwrap();
        for (path, content) in files {
            let local = dir.join(path.replace('/', "_"));
            std::fs::write(&local, content).unwrap();
            let e = entry(path, content);
            d.sources.insert(e.blake3, local.into());
            d.entries.push(e);
        }
        d
    }

    /// A publish of 1,000 changed files writes a constant number of files (its pack and its
    /// manifest), not one per object: format 1 wrote 1,001.
    #[tokio::test]
    async fn a_publish_of_1000_files_writes_a_constant_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let store = LocalStore::open(root.clone()).await.unwrap();
        let files_in_store = || {
            walkdir::WalkDir::new(&root)
                .into_iter()
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_file())
                .count()
        };
        for round in 0..2 {
            let files: Vec<(String, String)> = (0..1000)
                .map(|i| {
                    (
                        format!("dags/dag_{i:04}.py"),
                        format!("# {round}\nx = {i}\n"),
                    )
                })
                .collect();
            let files: Vec<(&str, &str)> = files
                .iter()
                .map(|(p, c)| (p.as_str(), c.as_str()))
                .collect();
            let before = files_in_store();
            let outcome = publish(
                &store,
                &desired(dir.path(), &files),
                &PublishOptions::default(),
            )
            .await
            .unwrap();
            assert_eq!(outcome.objects_uploaded, 1000);
            let written = files_in_store() - before;
            assert!(
                written <= 2,
                "round {round}: {written} files written for 1,000 changed files"
            );
            let head = generations::load_head(&store).await.unwrap().unwrap();
            let objects = crate::objects::Objects::new(None);
            for entry in &head.entries {
                let bytes = objects.read(&store, &entry.blake3).await.unwrap();
                assert_eq!(Digest::of(&bytes), entry.blake3, "{}", entry.path);
            }
        }
    }

    #[tokio::test]
    async fn publishes_changes_only_and_rebases_disjoint_races() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("store")).await.unwrap();
        let opts = PublishOptions::default();
        let one = desired(dir.path(), &[("a.py", "1"), ("b.py", "2")]);
        let first = publish(&store, &one, &opts).await.unwrap();
        assert_eq!(
            (
                first.generation,
                first.published,
                first.added,
                first.objects_uploaded
            ),
            (Some(1), true, 2, 2)
        );
        let again = publish(&store, &one, &opts).await.unwrap();
        assert_eq!((again.generation, again.published), (Some(1), false));

        // Team x owns prefix x/, team y owns y/: both land, nothing of the other is lost.
        let x = PublishOptions {
            prefix: Some("x".into()),
            ..opts.clone()
        };
        let y = PublishOptions {
            prefix: Some("y".into()),
            ..opts.clone()
        };
        let dx = desired(dir.path(), &[("dag.py", "x")]);
        let dy = desired(dir.path(), &[("dag.py", "y")]);
        let (rx, ry) = tokio::join!(publish(&store, &dx, &x), publish(&store, &dy, &y));
        let (rx, ry) = (rx.unwrap(), ry.unwrap());
        let mut gens = vec![rx.generation.unwrap(), ry.generation.unwrap()];
        gens.sort();
        assert_eq!(gens, [2, 3]);
        let head = generations::load_head(&store).await.unwrap().unwrap();
        let paths: Vec<&str> = head.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a.py", "b.py", "x/dag.py", "y/dag.py"]);
    }

    /// A store that, just before the first manifest commit it sees, lets a competing
    /// publisher commit `rival` first: a deterministic lost race.
    #[derive(Debug)]
    struct RacingStore {
        inner: LocalStore,
        rival: std::sync::Mutex<Option<Desired>>,
    }

    impl RacingStore {
        /// Before the first write of a manifest (put or rename), the rival commits.
        async fn race(&self, key: &str) {
            if !key.starts_with("generations/") {
                return;
            }
            let rival = self.rival.lock().unwrap().take();
            if let Some(rival) = rival {
                publish(
                    &self.inner,
                    &rival,
                    &PublishOptions {
                        author: "bob@other".into(),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            }
        }
    }

    #[async_trait::async_trait]
    impl Store for RacingStore {
        fn url(&self) -> &str {
            self.inner.url()
        }
        async fn put(
            &self,
            key: &str,
            data: Bytes,
            overwrite: Overwrite,
        ) -> crate::store::StoreResult<()> {
            self.race(key).await;
            self.inner.put(key, data, overwrite).await
        }
        async fn create_exclusive(&self, key: &str, data: Bytes) -> crate::store::StoreResult<()> {
            self.inner.create_exclusive(key, data).await
        }
        async fn read(&self, key: &str) -> crate::store::StoreResult<Bytes> {
            self.inner.read(key).await
        }
        async fn read_range(
            &self,
            key: &str,
            offset: u64,
            len: u64,
        ) -> crate::store::StoreResult<Bytes> {
            self.inner.read_range(key, offset, len).await
        }
        async fn stat(&self, key: &str) -> crate::store::StoreResult<crate::store::EntryInfo> {
            self.inner.stat(key).await
        }
        async fn list(&self, key: &str) -> crate::store::StoreResult<Vec<crate::store::EntryInfo>> {
            self.inner.list(key).await
        }
        async fn rename(
            &self,
            from: &str,
            to: &str,
            overwrite: Overwrite,
        ) -> crate::store::StoreResult<()> {
            self.race(to).await;
            self.inner.rename(from, to, overwrite).await
        }
        async fn delete(&self, key: &str, recursive: bool) -> crate::store::StoreResult<bool> {
            self.inner.delete(key, recursive).await
        }
        async fn mkdirs(&self, key: &str) -> crate::store::StoreResult<()> {
            self.inner.mkdirs(key).await
        }
    }

    async fn racing(dir: &std::path::Path, rival: Desired) -> RacingStore {
        let inner = LocalStore::open(dir.join("store")).await.unwrap();
        RacingStore {
            inner,
            rival: std::sync::Mutex::new(Some(rival)),
        }
    }

    #[tokio::test]
    async fn a_lost_race_rebases_disjoint_changes() {
        let dir = tempfile::tempdir().unwrap();
        let base = desired(dir.path(), &[("a.py", "0"), ("b.py", "0")]);
        let store = racing(
            dir.path(),
            desired(dir.path(), &[("a.py", "theirs"), ("b.py", "0")]),
        )
        .await;
        publish(&store.inner, &base, &PublishOptions::default())
            .await
            .unwrap();
        let ours = desired(dir.path(), &[("a.py", "0"), ("b.py", "ours")]);
        let outcome = publish(&store, &ours, &PublishOptions::default())
            .await
            .unwrap();
        assert_eq!(
            outcome.generation,
            Some(3),
            "rival took 2, we rebased onto it"
        );
        let head = generations::load_head(&store.inner).await.unwrap().unwrap();
        assert_eq!(head.parent, Some(2));
        let contents: Vec<(String, Digest)> = head
            .entries
            .iter()
            .map(|e| (e.path.clone(), e.blake3))
            .collect();
        assert_eq!(
            contents,
            [
                ("a.py".into(), Digest::of(b"theirs")),
                ("b.py".into(), Digest::of(b"ours"))
            ]
        );
        let staged = crate::store::list_if_exists(&store.inner, STAGING_DIR)
            .await
            .unwrap();
        assert!(
            staged.is_empty(),
            "staged manifests left behind: {staged:?}"
        );
    }

    #[tokio::test]
    async fn overlapping_changes_conflict_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let base = desired(dir.path(), &[("a.py", "0")]);
        let rival = desired(dir.path(), &[("a.py", "theirs")]);
        let ours = desired(dir.path(), &[("a.py", "ours")]);

        let store = racing(dir.path(), rival.clone()).await;
        publish(&store.inner, &base, &PublishOptions::default())
            .await
            .unwrap();
        let err = publish(&store, &ours, &PublishOptions::default())
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, PublishError::Conflict { theirs: 2, .. }),
            "{text}"
        );
        assert!(
            text.contains("a.py") && text.contains("bob@other") && text.contains("--force"),
            "{text}"
        );
        assert_eq!(
            generations::head(&store.inner).await.unwrap(),
            Some(2),
            "nothing of ours committed"
        );

        *store.rival.lock().unwrap() = Some(desired(dir.path(), &[("a.py", "again")]));
        let forced = PublishOptions {
            force: true,
            ..PublishOptions::default()
        };
        let outcome = publish(&store, &ours, &forced).await.unwrap();
        assert_eq!(outcome.generation, Some(4));
        let head = generations::load_head(&store.inner).await.unwrap().unwrap();
        assert_eq!(head.entries[0].blake3, Digest::of(b"ours"));
    }

    #[tokio::test]
    async fn an_empty_folder_does_not_wipe_the_store_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("store")).await.unwrap();
        publish(
            &store,
            &desired(dir.path(), &[("a.py", "1")]),
            &PublishOptions::default(),
        )
        .await
        .unwrap();
        let err = publish(&store, &Desired::default(), &PublishOptions::default())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("over 1 files") && err.to_string().contains("--allow-empty"),
            "{err}"
        );
        let allowed = PublishOptions {
            allow_empty: true,
            ..PublishOptions::default()
        };
        let outcome = publish(&store, &Desired::default(), &allowed)
            .await
            .unwrap();
        assert_eq!((outcome.generation, outcome.removed), (Some(2), 1));
    }

    #[tokio::test]
    async fn a_file_deleted_or_edited_after_the_scan_fails_the_push() {
        type Edit = fn(&std::path::Path);
        let edits: [(&str, Edit); 3] = [
            ("No such file", |p| std::fs::remove_file(p).unwrap()),
            ("no longer matches", |p| {
                std::fs::write(p, "SCANNED").unwrap()
            }),
            ("it has 6 bytes, the scan recorded 7", |p| {
                std::fs::write(p, "edited").unwrap()
            }),
        ];
        for (reason, edit) in edits {
            let dir = tempfile::tempdir().unwrap();
            let store = LocalStore::open(dir.path().join("store")).await.unwrap();
            let d = desired(dir.path(), &[("a.py", "scanned"), ("b.py", "kept")]);
            let Source::File(scanned) = &d.sources[&Digest::of(b"scanned")] else {
                unreachable!("the test tree is local")
            };
            edit(scanned);
            let err = refused_as_changed(&store, &d).await;
            assert!(err.to_string().contains(reason), "{err}");
        }
    }

    /// Publishes `desired` into the empty `store`: it must fail as changed during the push,
    /// committing nothing.
    async fn refused_as_changed(store: &LocalStore, desired: &Desired) -> PublishError {
        let err = publish(store, desired, &PublishOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, PublishError::ChangedDuringPush { .. }),
            "{err}"
        );
        let head = generations::head(store).await.unwrap();
        assert_eq!(head, None, "nothing committed");
        err
    }

    /// An entry whose size is not the length of its bytes (the digest right) is never
    /// committed: the upload checks the length, not only the digest.
    #[tokio::test]
    async fn an_entry_whose_size_is_not_its_contents_length_is_never_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("store")).await.unwrap();
        let mut d = desired(dir.path(), &[("a.py", "print('a long version')\n")]);
        d.entries[0].size = 5;
        refused_as_changed(&store, &d).await;
    }

    /// Whatever store call fails (before or after doing its work), a publish that returns an
    /// error committed nothing, and one that returns a generation committed exactly that.
    #[tokio::test]
    async fn an_error_means_nothing_was_committed_whichever_call_fails() {
        use crate::store::faulty::{FaultyStore, Op, Rule};
        let faults = [
            (ErrorKind::Unavailable, false),
            (ErrorKind::PermissionDenied, false),
            (ErrorKind::Timeout, true),
        ];
        for op in Op::ALL {
            for (kind, after) in faults {
                for nth in 1..=6 {
                    let dir = tempfile::tempdir().unwrap();
                    let inner: Arc<dyn Store> =
                        Arc::new(LocalStore::open(dir.path().join("store")).await.unwrap());
                    crate::testutil::publish_files(
                        &*inner,
                        dir.path(),
                        &[("a.py", "1"), ("b.py", "2")],
                    )
                    .await;
                    crate::testutil::publish_files(&*inner, dir.path(), &[("a.py", "3")]).await;
                    let first = generations::load(&*inner, 1).await.unwrap();
                    let store = FaultyStore::new(Arc::clone(&inner));
                    store.add(if after {
                        Rule::fail_after(op, nth, kind)
                    } else {
                        Rule::fail(op, nth, kind)
                    });
                    // A rollback (objects reused) and a push (one object uploaded).
                    let rollback = Desired::from_manifest(&first);
                    let push = desired(dir.path(), &[("a.py", "new"), ("b.py", "2")]);
                    for (what, wanted) in [("rollback", rollback), ("push", push)] {
                        let before = generations::head(&*inner).await.unwrap();
                        let result = publish(&store, &wanted, &PublishOptions::default()).await;
                        let head = generations::load_head(&*inner).await.unwrap().unwrap();
                        let context = format!("{what}, {op:?} call {nth} fails ({kind:?}, after: {after}): {result:?}, fired {:?}", store.fired());
                        match &result {
                            Ok(outcome) => {
                                assert_eq!(outcome.generation, Some(head.generation), "{context}");
                                assert_eq!(
                                    head.tree_id,
                                    crate::format::tree_id(&wanted.entries),
                                    "{context}"
                                );
                            }
                            Err(_) => assert_eq!(Some(head.generation), before, "{context}"),
                        }
                        for entry in &head.entries {
                            let info = crate::testutil::stored_len(&*inner, &entry.blake3).await;
                            assert!(
                                info == Some(entry.size),
                                "{context}: {} missing",
                                entry.path
                            );
                        }
                    }
                    if store.fired().is_empty() {
                        break; // fewer calls of this operation than nth
                    }
                }
            }
        }
    }

    /// A head numbered `u64::MAX` (a crafted or damaged store) fails a publish with a
    /// message instead of overflowing.
    #[tokio::test]
    async fn the_last_generation_number_is_an_error_not_an_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("store")).await.unwrap();
        let last = Manifest::new(
            Header {
                generation: u64::MAX,
                parent: None,
                created: "2026-01-01T00:00:00Z".into(),
                author: "x@y".into(),
                message: String::new(),
            },
            vec![],
        )
        .unwrap();
        store
            .put(
                &manifest_key(u64::MAX),
                Bytes::from(last.to_bytes()),
                Overwrite::Deny,
            )
            .await
            .unwrap();
        let err = publish(
            &store,
            &desired(dir.path(), &[("a.py", "1")]),
            &PublishOptions::default(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, PublishError::GenerationsExhausted(u64::MAX)),
            "{err}"
        );
    }
}
