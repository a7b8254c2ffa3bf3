//! The plain mirror: the head generation as ordinary files under `mirror/` of the store root,
//! so `hadoop fs -ls/-cat` and HDFS NFS gateway readers keep working during a migration.
//!
//! The mirror is a convenience for legacy readers, not the source of truth: schedulers read
//! generations. It is updated after each commit, file by file (so it is briefly a mix of two
//! generations while it changes), by one updater at a time, and it always converges:
//!
//! - an updater holds `mirror.lock` (an atomic put without overwrite) and rewrites it every
//!   [`HEARTBEAT`]; one that finds it held leaves the work to the holder, which re-reads the
//!   head before it lets go. A lock not rewritten for [`STALE_LOCK_AFTER`] (by the store's
//!   clock), or held by a process of this host that no longer exists, is from a crashed
//!   updater and is broken;
//! - `mirror.state` records the generation the mirror shows and, while an update runs, the
//!   paths it may have touched, so an update interrupted by a crash is finished by the next.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::format::{object_key, Digest, Entry};
use crate::generations::{self, diff, GenerationError};
use crate::store::{files_under, EntryKind, ErrorKind, Overwrite, Store, StoreError, STAGING_DIR};

/// Directory of the mirror under the store root.
pub const MIRROR_DIR: &str = "mirror";
/// Which generation the mirror shows, and what an unfinished update may have touched.
const STATE_KEY: &str = "mirror.state";
/// Held by the one updater at work.
const LOCK_KEY: &str = "mirror.lock";
/// How often the holder rewrites the lock to show it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(20);
/// A lock not rewritten for this long (by the store's clock) belongs to a crashed updater.
pub const STALE_LOCK_AFTER: Duration = Duration::from_secs(120);
/// Files written or deleted at once.
const CONCURRENCY: usize = 16;

/// A mirror update that could not finish; the next one will.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The store failed.
    #[error("mirror update: {0}")]
    Store(#[from] StoreError),
    /// A generation could not be read.
    #[error("mirror update: {0}")]
    Generation(#[from] GenerationError),
    /// `mirror.state` is not readable JSON.
    #[error("mirror update: {STATE_KEY} is damaged ({0}); delete it and the next update rebuilds the mirror")]
    State(String),
}

/// What an update did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum MirrorOutcome {
    /// The mirror now shows `generation`.
    Updated {
        /// The generation shown.
        generation: Option<u64>,
        /// Files written.
        written: usize,
        /// Files deleted.
        deleted: usize,
    },
    /// Another updater holds the lock and will bring the mirror to the head.
    Busy,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct MirrorState {
    generation: Option<u64>,
    pending: BTreeSet<String>,
}

/// Whether a publish should update the mirror: `setting` when given (`publish.mirror`,
/// `--mirror`, `--no-mirror`); unset, only a store that already has one (its
/// `mirror.state`, written by every update): the mirror is opt-in for new stores and kept up
/// to date for stores whose readers rely on it. A store that cannot be asked counts as
/// having one, so a flaky call never leaves an existing mirror behind.
pub async fn wanted(store: &dyn Store, setting: Option<bool>) -> bool {
    match setting {
        Some(wanted) => wanted,
        None => match store.stat(STATE_KEY).await {
            Ok(_) => true,
            Err(e) => e.kind() != ErrorKind::NotFound,
        },
    }
}

/// Brings the mirror to the head generation. `index_dir` keeps local copies of the store's
/// pack indexes (see [`crate::objects::index_dir`]; `None`: every update reads the tail of
/// every pack).
pub async fn update(
    store: &dyn Store,
    index_dir: Option<&std::path::Path>,
) -> Result<MirrorOutcome, MirrorError> {
    // Up to date already (the common case for an unchanged push): no lock, no writes.
    let state = read_state(store).await?;
    if state.pending.is_empty()
        && state.generation.is_some()
        && state.generation == generations::head(store).await?
    {
        return Ok(MirrorOutcome::Updated {
            generation: state.generation,
            written: 0,
            deleted: 0,
        });
    }
    // Liveness on this host: a local state file whose lock this process holds while it
    // updates; the store's lock names it.
    let local = crate::runtime::runtime_dir()
        .join(format!("mirror-{}.json", uuid::Uuid::new_v4().simple()));
    let held = match crate::runtime::StateFile::<()>::claim(&local) {
        Ok(held) => Some(held),
        Err(e) => {
            tracing::debug!(error = %e, "no local liveness lock for the mirror update; a crash is noticed after {}", humantime::format_duration(STALE_LOCK_AFTER));
            None
        }
    };
    let owner = lock_owner(held.as_ref().map(|h| h.path()));
    if !acquire(store, &owner).await? {
        release_local(held);
        return Ok(MirrorOutcome::Busy);
    }
    let work = update_locked(store, index_dir);
    tokio::pin!(work);
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.tick().await; // the first tick is immediate; the lock was just written
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            _ = heartbeat.tick() => {
                if let Err(e) = store.put(LOCK_KEY, owner.clone(), Overwrite::Allow).await {
                    tracing::warn!(error = %e, "could not refresh {LOCK_KEY}");
                }
            }
        }
    };
    if let Err(e) = store.delete(LOCK_KEY, false).await {
        tracing::warn!(error = %e, "could not release {LOCK_KEY}; it will be broken after {}", humantime::format_duration(STALE_LOCK_AFTER));
    }
    release_local(held);
    result
}

fn release_local(held: Option<crate::runtime::StateFile<()>>) {
    if let Some(Err(e)) = held.map(crate::runtime::StateFile::remove) {
        tracing::debug!(error = %e, "could not remove the mirror's local lock file");
    }
}

/// What the lock file says: `host pid author [local state file]`, so a crashed holder on
/// this host is recognised at once by its local lock (see [`crate::runtime::StateFile`]).
fn lock_owner(local: Option<&std::path::Path>) -> Bytes {
    let mut owner = format!(
        "{} {} {}",
        crate::host::host_name(),
        std::process::id(),
        crate::host::author()
    );
    if let Some(local) = local {
        owner.push(' ');
        owner.push_str(&local.display().to_string());
    }
    Bytes::from(owner)
}

/// Whether the lock names a holder on this host whose local lock is no longer held (it
/// died). A lock without a local file, or whose file this user cannot check, is judged by
/// its age alone.
async fn holder_is_gone(store: &dyn Store) -> bool {
    let Ok(content) = store.read(LOCK_KEY).await else {
        return false;
    };
    let content = String::from_utf8_lossy(&content);
    let mut fields = content.splitn(4, ' ');
    let (Some(host), Some(local)) = (fields.next(), fields.nth(2)) else {
        return false;
    };
    host == crate::host::host_name()
        && matches!(
            crate::runtime::owner_alive(std::path::Path::new(local)),
            Ok(false)
        )
}

async fn update_locked(
    store: &dyn Store,
    index_dir: Option<&std::path::Path>,
) -> Result<MirrorOutcome, MirrorError> {
    let (mut written, mut deleted) = (0, 0);
    loop {
        let state = read_state(store).await?;
        let head = generations::load_head(store).await?;
        let head_generation = head.as_ref().map(|m| m.generation);
        if state.generation == head_generation && state.pending.is_empty() {
            return Ok(MirrorOutcome::Updated {
                generation: head_generation,
                written,
                deleted,
            });
        }
        let head_entries = head.map(|m| m.entries).unwrap_or_default();
        let shown = match state.generation {
            Some(g) => match generations::load(store, g).await {
                Ok(m) => Some(m.entries),
                Err(GenerationError::Missing { .. }) => None,
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        let mut paths: BTreeSet<String> = state.pending.clone();
        match shown {
            Some(shown) => paths.extend(
                diff(&shown, &head_entries)
                    .iter()
                    .map(|c| c.path().to_string()),
            ),
            // Unknown content: reconcile everything that is there with everything wanted.
            None => {
                paths.extend(files_under(store, MIRROR_DIR).await?);
                paths.extend(head_entries.iter().map(|e| e.path.clone()));
            }
        }
        write_state(
            store,
            &MirrorState {
                generation: state.generation,
                pending: paths.clone(),
            },
        )
        .await?;
        let (w, d) = apply(store, &head_entries, &paths, index_dir).await?;
        written += w;
        deleted += d;
        write_state(
            store,
            &MirrorState {
                generation: head_generation,
                pending: BTreeSet::new(),
            },
        )
        .await?;
        tracing::info!(
            generation = head_generation,
            written = w,
            deleted = d,
            "mirror updated"
        );
    }
}

/// Makes `mirror/<path>` match `head` for each path: deletions first (a file may replace a
/// directory), then writes.
async fn apply(
    store: &dyn Store,
    head: &[Entry],
    paths: &BTreeSet<String>,
    index_dir: Option<&std::path::Path>,
) -> Result<(usize, usize), MirrorError> {
    let wanted = |path: &str| {
        head.binary_search_by(|e| e.path.as_str().cmp(path))
            .ok()
            .map(|i| head[i].clone())
    };
    let removals: Vec<String> = paths
        .iter()
        .filter(|p| wanted(p).is_none())
        .cloned()
        .collect();
    let deleted = stream::iter(removals)
        .map(|path| async move {
            let key = format!("{MIRROR_DIR}/{path}");
            let existed = store.delete(&key, true).await?;
            prune_empty_parents(store, &key).await;
            Ok::<_, StoreError>(usize::from(existed))
        })
        .buffer_unordered(CONCURRENCY)
        .try_fold(0, |n, d| async move { Ok(n + d) })
        .await?;
    let writes: Vec<Entry> = paths.iter().filter_map(|p| wanted(p)).collect();
    let written = writes.len();
    let objects = &crate::objects::Objects::new(index_dir.map(std::path::Path::to_path_buf));
    if !writes.is_empty() {
        objects.refresh(store).await?;
    }
    stream::iter(writes)
        .map(|entry| async move {
            let object = object_key(&entry.blake3);
            let bytes = objects.read(store, &entry.blake3).await?;
            if Digest::of(&bytes) != entry.blake3 {
                // Never copy damaged bytes into the mirror.
                return Err(StoreError::new(
                    ErrorKind::Corrupt,
                    "read",
                    &object,
                    format!(
                        "object bytes do not match their blake3 (it holds {}); put the correct file back at this key with `hadoop fs -put -f`",
                        entry.path
                    ),
                ));
            }
            let key = format!("{MIRROR_DIR}/{}", entry.path);
            // A directory left where a file now goes (an earlier generation had `a/b`).
            if store
                .stat(&key)
                .await
                .is_ok_and(|i| i.kind == EntryKind::Dir)
            {
                store.delete(&key, true).await?;
            }
            store.put(&key, bytes, Overwrite::Allow).await
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok((written, deleted))
}

/// Removes the now-empty directories above a deleted mirror file, up to the mirror root.
async fn prune_empty_parents(store: &dyn Store, key: &str) {
    let mut dir = key;
    while let Some((parent, _)) = dir.rsplit_once('/') {
        if parent == MIRROR_DIR || store.delete(parent, false).await.is_err() {
            break;
        }
        dir = parent;
    }
}

async fn read_state(store: &dyn Store) -> Result<MirrorState, MirrorError> {
    match store.read(STATE_KEY).await {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| MirrorError::State(e.to_string())),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(MirrorState::default()),
        Err(e) => Err(e.into()),
    }
}

async fn write_state(store: &dyn Store, state: &MirrorState) -> Result<(), MirrorError> {
    let bytes = serde_json::to_vec(state).expect("the state always serialises");
    Ok(store
        .put(STATE_KEY, Bytes::from(bytes), Overwrite::Allow)
        .await?)
}

/// Takes the updater lock; breaks it if it is stale. `Ok(false)`: someone else holds it.
async fn acquire(store: &dyn Store, owner: &Bytes) -> Result<bool, MirrorError> {
    for _ in 0..2 {
        // An atomic put, not create_exclusive: the lock must never be seen half-written, or
        // a holder killed while creating it could not be recognised as gone.
        match store.put(LOCK_KEY, owner.clone(), Overwrite::Deny).await {
            Ok(()) => return Ok(true),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.into()),
        }
        let held_since = match store.stat(LOCK_KEY).await {
            Ok(info) => info.modified,
            Err(e) if e.kind() == ErrorKind::NotFound => continue, // released meanwhile
            Err(e) => return Err(e.into()),
        };
        let age = crate::store::store_now(store)
            .await?
            .duration_since(held_since)
            .unwrap_or_default();
        if age < STALE_LOCK_AFTER && !holder_is_gone(store).await {
            return Ok(false);
        }
        tracing::warn!(age = %humantime::format_duration(age), "breaking the {LOCK_KEY} of a crashed updater");
        let aside = format!("{STAGING_DIR}/broken-lock-{}", uuid::Uuid::new_v4());
        store.mkdirs(STAGING_DIR).await?;
        match store.rename(LOCK_KEY, &aside, Overwrite::Deny).await {
            Ok(()) => {
                store.delete(&aside, false).await?;
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;
    use crate::testutil::publish_files;

    async fn mirror_files(store: &LocalStore) -> Vec<(String, String)> {
        let files = files_under(store, MIRROR_DIR).await.unwrap();
        let mut out = Vec::new();
        for f in files {
            let bytes = store.read(&format!("{MIRROR_DIR}/{f}")).await.unwrap();
            out.push((f, String::from_utf8(bytes.to_vec()).unwrap()));
        }
        out
    }

    /// Unset, the mirror is wanted exactly when the store has one, or cannot say.
    #[tokio::test]
    async fn an_unset_mirror_setting_follows_the_store() {
        use crate::store::faulty::{FaultyStore, Op, Rule};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("store")).await.unwrap();
        publish_files(&store, dir.path(), &[("a.py", "1")]).await;
        assert!(!wanted(&store, None).await);
        assert!(wanted(&store, Some(true)).await);
        update(&store, None).await.unwrap();
        assert!(wanted(&store, None).await);
        assert!(!wanted(&store, Some(false)).await);

        let fresh = dir.path().join("fresh");
        let faulty = FaultyStore::new(Arc::new(LocalStore::open(fresh).await.unwrap()));
        faulty.add(Rule::fail(Op::Stat, 1, ErrorKind::Unavailable));
        assert!(
            wanted(&faulty, None).await,
            "a flaky stat dropped the mirror"
        );
        assert!(!wanted(&faulty, None).await);
    }

    #[tokio::test]
    async fn follows_the_head_including_file_dir_swaps() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("store")).await.unwrap();
        publish_files(&store, dir.path(), &[("a.py", "1"), ("x/y.py", "2")]).await;
        assert!(matches!(
            update(&store, None).await.unwrap(),
            MirrorOutcome::Updated {
                generation: Some(1),
                written: 2,
                deleted: 0
            }
        ));
        publish_files(&store, dir.path(), &[("a.py", "1"), ("x", "now a file")]).await;
        update(&store, None).await.unwrap();
        assert_eq!(
            mirror_files(&store).await,
            [
                ("a.py".into(), "1".into()),
                ("x".into(), "now a file".into())
            ]
        );
        assert!(matches!(
            update(&store, None).await.unwrap(),
            MirrorOutcome::Updated {
                written: 0,
                deleted: 0,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn finishes_an_interrupted_update_and_respects_a_live_lock() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("store")).await.unwrap();
        publish_files(&store, dir.path(), &[("a.py", "1"), ("b.py", "1")]).await;
        update(&store, None).await.unwrap();
        publish_files(&store, dir.path(), &[("a.py", "2")]).await;
        // A crashed updater: it recorded its pending paths, changed a.py, and died.
        write_state(
            &store,
            &MirrorState {
                generation: Some(1),
                pending: ["a.py".into(), "b.py".into()].into(),
            },
        )
        .await
        .unwrap();
        store
            .put("mirror/a.py", Bytes::from_static(b"2"), Overwrite::Allow)
            .await
            .unwrap();
        // A lock held by a live updater: this one leaves the work to it.
        store
            .create_exclusive(LOCK_KEY, Bytes::from_static(b"someone"))
            .await
            .unwrap();
        assert_eq!(update(&store, None).await.unwrap(), MirrorOutcome::Busy);
        store.delete(LOCK_KEY, false).await.unwrap();
        update(&store, None).await.unwrap();
        assert_eq!(mirror_files(&store).await, [("a.py".into(), "2".into())]);
    }

    /// The holder crashed and its pid was reused (pid 1 always runs): its local lock is no
    /// longer held, so the lock is broken at once.
    #[tokio::test]
    async fn a_lock_of_a_dead_local_process_is_broken_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("store")).await.unwrap();
        publish_files(&store, dir.path(), &[("a.py", "1")]).await;
        let host = crate::host::host_name();
        let local = dir.path().join("run/mirror-crashed.json");
        drop(crate::runtime::StateFile::<()>::claim(&local).unwrap());
        let dead = format!("{host} 1 someone@{host} {}", local.display());
        store
            .create_exclusive(LOCK_KEY, Bytes::from(dead))
            .await
            .unwrap();
        assert!(matches!(
            update(&store, None).await.unwrap(),
            MirrorOutcome::Updated {
                generation: Some(1),
                ..
            }
        ));
    }

    #[tokio::test]
    async fn a_stale_lock_is_broken() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("store")).await.unwrap();
        publish_files(&store, dir.path(), &[("a.py", "1")]).await;
        store
            .create_exclusive(LOCK_KEY, Bytes::from_static(b"crashed"))
            .await
            .unwrap();
        let old = std::time::SystemTime::now() - STALE_LOCK_AFTER - Duration::from_secs(1);
        std::fs::File::options()
            .write(true)
            .open(store.root().join(LOCK_KEY))
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(matches!(
            update(&store, None).await.unwrap(),
            MirrorOutcome::Updated {
                generation: Some(1),
                ..
            }
        ));
    }
}
