//! Garbage collection: drop old generations and the objects no kept generation references.
//!
//! Safe against a concurrent publish: generations committed while gc runs are read before
//! any object is deleted and their objects kept; objects younger than the grace period (by
//! the store's clock) are never deleted, which covers objects uploaded for a generation not
//! committed yet; and a publisher re-checks, after committing, the objects it reused rather
//! than uploaded (see `publish`), re-uploading any a concurrent gc removed.

use std::collections::HashSet;
use std::time::Duration;

use crate::format::Digest;
use crate::generations::{self, GenerationError};
use crate::mirror::store_now;
use crate::store::{list_if_exists, EntryKind, Store, StoreError, STAGING_DIR};

/// What to collect.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Keep the newest `keep` generations (at least 1).
    pub keep: usize,
    /// Never delete an unreferenced object or staged file younger than this.
    pub grace: Duration,
    /// Report what would be deleted without deleting it.
    pub dry_run: bool,
}

/// A collection that stopped; whatever it deleted was garbage.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A kept generation could not be read: nothing is deleted on the strength of a bad read.
    #[error("{0}; gc deleted no objects")]
    Generation(#[from] GenerationError),
    /// `--keep 0`.
    #[error("--keep must be at least 1 (the head generation is always kept)")]
    KeepNothing,
}

/// What a collection did (or, dry, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcOutcome {
    /// Generations deleted.
    pub generations: Vec<u64>,
    /// Objects deleted.
    pub objects: usize,
    /// Bytes those objects held.
    pub bytes: u64,
    /// Leftover staged files deleted.
    pub staged: usize,
}

/// Collects garbage in `store`.
pub async fn gc(store: &dyn Store, options: &GcOptions) -> Result<GcOutcome, GcError> {
    if options.keep == 0 {
        return Err(GcError::KeepNothing);
    }
    let mut outcome = GcOutcome::default();
    let all = generations::list(store).await?;
    let split = all.len().saturating_sub(options.keep);
    let (doomed, kept) = all.split_at(split);
    let mut referenced = HashSet::new();
    for &generation in kept {
        add_references(store, generation, &mut referenced).await?;
    }
    for &generation in doomed {
        if !options.dry_run {
            store
                .delete(&crate::format::manifest_key(generation), false)
                .await?;
        }
        outcome.generations.push(generation);
    }
    // Generations committed while we worked reference objects too.
    let newest_kept = kept.last().copied().unwrap_or(0);
    for generation in generations::list(store).await? {
        if generation > newest_kept {
            add_references(store, generation, &mut referenced).await?;
        }
    }

    let now = store_now(store).await?;
    let old_enough = |modified| {
        now.duration_since(modified)
            .is_ok_and(|age| age >= options.grace)
    };
    for object in generations::list_objects(store).await? {
        let live = object
            .name()
            .parse::<Digest>()
            .is_ok_and(|d| referenced.contains(&d));
        if live || object.kind != EntryKind::File || !old_enough(object.modified) {
            continue;
        }
        if !options.dry_run && !store.delete(&object.key, false).await? {
            continue;
        }
        outcome.objects += 1;
        outcome.bytes += object.len;
    }
    for staged in list_if_exists(store, STAGING_DIR).await? {
        if old_enough(staged.modified) {
            if !options.dry_run {
                store.delete(&staged.key, true).await?;
            }
            outcome.staged += 1;
        }
    }
    tracing::info!(
        generations = outcome.generations.len(),
        objects = outcome.objects,
        bytes = outcome.bytes,
        dry_run = options.dry_run,
        "gc done"
    );
    Ok(outcome)
}

/// Adds the objects generation `generation` uses to `referenced`.
async fn add_references(
    store: &dyn Store,
    generation: u64,
    referenced: &mut HashSet<Digest>,
) -> Result<(), GcError> {
    let manifest = generations::load(store, generation).await?;
    referenced.extend(manifest.entries.iter().map(|e| e.blake3));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::object_key;
    use crate::store::LocalStore;
    use crate::testutil::publish_files;

    #[tokio::test]
    async fn keeps_what_kept_generations_need_and_young_objects() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("store")).await.unwrap();
        let mut digests = Vec::new();
        for content in ["v1", "v2", "v3"] {
            let files = [("a.py", content), ("shared.py", "shared")];
            publish_files(&store, dir.path(), &files).await;
            digests.push(Digest::of(content.as_bytes()));
        }
        // Young objects survive even when unreferenced.
        let young = gc(
            &store,
            &GcOptions {
                keep: 1,
                grace: Duration::from_secs(3600),
                dry_run: false,
            },
        )
        .await
        .unwrap();
        assert_eq!((young.generations.clone(), young.objects), (vec![1, 2], 0));
        assert!(store.stat(&object_key(&digests[0])).await.is_ok());

        let outcome = gc(
            &store,
            &GcOptions {
                keep: 1,
                grace: Duration::ZERO,
                dry_run: false,
            },
        )
        .await
        .unwrap();
        assert_eq!(outcome.objects, 2, "v1 and v2 go");
        assert!(store.stat(&object_key(&digests[0])).await.is_err());
        assert!(store.stat(&object_key(&digests[2])).await.is_ok());
        assert!(store
            .stat(&object_key(&Digest::of(b"shared")))
            .await
            .is_ok());
        assert_eq!(generations::list(&store).await.unwrap(), [3]);
        assert!(matches!(
            gc(
                &store,
                &GcOptions {
                    keep: 0,
                    grace: Duration::ZERO,
                    dry_run: true
                }
            )
            .await,
            Err(GcError::KeepNothing)
        ));
    }
}
