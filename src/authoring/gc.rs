//! Garbage collection: drop old generations and the objects no generation references,
//! safe by construction against concurrent publishers, rollbacks and other gc runs.
//!
//! The protocol (the argument is in docs/DESIGN.md, "Garbage collection"):
//!
//! - a publisher holds a **pin** (`.dagfs-pins/<uuid>`, an empty directory) from before it
//!   reads its base and first looks at an object until after its commit ([`pin`]);
//! - gc deletes the manifests it drops only after that wait (below): a publisher that read
//!   its base before gc listed the generations has committed or given up by then, so no
//!   commit can take a number gc deleted;
//! - gc never deletes an object or a pack in place: it **moves** each candidate to
//!   `.dagfs-trash/<run>/<hex>` or `.dagfs-trash/<run>/pack-<hex>` (one rename), *then*
//!   waits until every pin that existed after the moves is released, *then* lists the
//!   generations, puts back every trashed object a generation references (and every pack
//!   holding one), and only then deletes the rest of the trash;
//! - a pack mostly garbage is **repacked** before it is moved: the objects the kept
//!   generations use are copied (checked) into a new pack, and at the end the old pack is
//!   deleted only if every object a generation uses is in a pack this run wrote and that
//!   is still listed under `packs/` ([`GcOptions::max_garbage`]);
//! - a publisher that finds an object missing looks in the trash and renames it, or the
//!   pack holding it, back ([`restore_from_runs`], [`restore_pack_from_runs`]); readers
//!   fall back to the trash the same way ([`read_loose`], [`crate::objects::Objects::read`]),
//!   so an object moved aside for the length of a gc run stays readable.
//!
//! Whatever the interleaving, an object is deleted only after a check that ran *after* it
//! was moved aside found no generation and no publisher that could use it; a publisher
//! that starts after that check finds it gone and uploads or restores it. The grace period
//! only spares recent uploads of crashed publishers.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use crate::format::{object_key, Digest};
use crate::generations::{self, GenerationError};
use crate::objects::{trash_key, trashed_pack_key, ListedPack, Objects, TrashedPack, TRASH_DIR};
use crate::pack::{pack_key, PackBuilder, PackIndex, PACKS_DIR};
use crate::store::{
    list_if_exists, store_now, EntryKind, ErrorKind, Overwrite, Store, StoreError, STAGING_DIR,
};

/// Directory of the pins publishers hold while they publish.
pub const PINS_DIR: &str = ".dagfs-pins";
/// A pin older than this (by the store's clock) belongs to a publisher that crashed: gc
/// deletes it, and a publisher whose pin was deleted does not commit.
pub const PIN_EXPIRY: Duration = Duration::from_secs(3600);
/// How long gc waits by default for publishes in progress before it puts its trash back.
pub const DEFAULT_PUBLISH_WAIT: Duration = Duration::from_secs(120);
/// [`GcOptions::max_garbage`] by default, in percent.
pub const DEFAULT_MAX_GARBAGE: u8 = 50;

/// What to collect.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Keep the newest `keep` generations (at least 1).
    pub keep: usize,
    /// Never delete an unreferenced object or staged file younger than this.
    pub grace: Duration,
    /// Report what would be deleted without deleting it.
    pub dry_run: bool,
    /// How long to wait for publishes in progress (pins) before giving the objects moved
    /// aside back and deleting none of them this time.
    pub publish_wait: Duration,
    /// A pack some kept generation uses is repacked once more than this percentage of its
    /// object bytes is garbage: its live objects go into a new pack and the old one is
    /// deleted, so a store does not keep a 64 MiB pack for one small file still in use.
    /// 100 never repacks.
    pub max_garbage: u8,
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
    /// Objects deleted (loose ones, and those of the packs deleted).
    pub objects: usize,
    /// Packs deleted (those repacked included).
    pub packs: usize,
    /// Packs mostly garbage whose live objects were copied into new packs before they were
    /// deleted.
    pub repacked: usize,
    /// Bytes the deleted objects held.
    pub bytes: u64,
    /// Leftover staged files deleted.
    pub staged: usize,
    /// Unreferenced objects put back because publishes were still running after the wait
    /// (or a generation committed meanwhile uses them); a later gc collects them.
    pub deferred: usize,
    /// Generations not deleted because publishes were still running after the wait; a later
    /// gc deletes them.
    pub deferred_generations: Vec<u64>,
}

/// A publisher's pin: while it exists, gc deletes no object it moved aside.
#[derive(Debug)]
pub struct Pin {
    key: String,
}

/// Takes a pin. Call it before reading the base generation and before looking at any
/// object the publish will reference.
pub async fn pin(store: &dyn Store) -> Result<Pin, StoreError> {
    let key = format!("{PINS_DIR}/{}", uuid::Uuid::new_v4().simple());
    store.mkdirs(&key).await?;
    Ok(Pin { key })
}

impl Pin {
    /// Whether the pin still exists: a gc that took it for a crashed publisher's (older than
    /// [`PIN_EXPIRY`]) deleted it, and a publisher must then not commit.
    pub async fn held(&self, store: &dyn Store) -> Result<bool, StoreError> {
        match store.stat(&self.key).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes the pin; a failure is logged (gc waits for it until it expires).
    pub async fn release(self, store: &dyn Store) {
        if let Err(e) = store.delete(&self.key, true).await {
            tracing::warn!(pin = self.key, error = %e, "could not remove the publish pin; gc deletes nothing until it expires");
        }
    }
}

/// The trash directories of gc runs (usually none).
pub async fn trash_runs(store: &dyn Store) -> Result<Vec<String>, StoreError> {
    Ok(list_if_exists(store, TRASH_DIR)
        .await?
        .into_iter()
        .filter(|run| run.kind == EntryKind::Dir)
        .map(|run| run.key)
        .collect())
}

/// Puts object `digest` back from the trash of one of `runs` (see [`trash_runs`]).
/// `Ok(true)`: it is in `objects/` now.
pub async fn restore_from_runs(
    store: &dyn Store,
    digest: &Digest,
    runs: &[String],
) -> Result<bool, StoreError> {
    let target = object_key(digest);
    for run in runs {
        let from = trash_key(run, digest);
        if store.stat(&from).await.is_err() {
            continue;
        }
        if let Some((parent, _)) = target.rsplit_once('/') {
            store.mkdirs(parent).await?;
        }
        match store.rename(&from, &target, Overwrite::Deny).await {
            Ok(()) => {
                tracing::info!(object = %digest, "object put back from the gc trash");
                return Ok(true);
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Puts back, from the trash of one of `runs`, a pack whose index holds `digest`.
/// `Ok(true)`: such a pack is in `packs/` now.
pub async fn restore_pack_from_runs(
    store: &dyn Store,
    objects: &Objects,
    digest: &Digest,
    runs: &[String],
) -> Result<bool, StoreError> {
    for run in runs {
        for file in list_if_exists(store, run).await? {
            let Some(pack) = objects.trashed_pack(store, &file).await? else {
                continue;
            };
            if pack.index.get(digest).is_none() {
                continue;
            }
            let target = pack_key(&pack.name);
            store.mkdirs(PACKS_DIR).await?;
            match store.rename(&file.key, &target, Overwrite::Deny).await {
                Ok(()) => {
                    tracing::info!(pack = %pack.name, "pack put back from the gc trash");
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(true),
                // Taken by someone else: put back (then it is there) or deleted.
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    if store.stat(&target).await.is_ok() {
                        return Ok(true);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(false)
}

/// A file moved aside: a loose object, or a pack (named by `digest`, with its index).
struct Trashed {
    digest: Digest,
    key: String,
    len: u64,
    pack: Option<std::sync::Arc<PackIndex>>,
}

impl Trashed {
    /// Whether a generation using `referenced` needs this file: it holds such an object
    /// that no pack in `copies` holds (packs this run wrote and still finds under `packs/`).
    fn needed(&self, referenced: &HashSet<Digest>, copies: &HashSet<Digest>) -> bool {
        match &self.pack {
            None => referenced.contains(&self.digest),
            Some(index) => index
                .objects()
                .any(|(d, _)| referenced.contains(d) && !copies.contains(d)),
        }
    }

    /// Where it goes back to.
    fn home(&self) -> String {
        match self.pack {
            None => object_key(&self.digest),
            Some(_) => pack_key(&self.digest),
        }
    }

    /// Objects deleted with it, and the bytes they held (`copies`: as in [`Trashed::needed`]).
    fn garbage(&self, copies: &HashSet<Digest>) -> (usize, u64) {
        match &self.pack {
            None => (1, self.len),
            Some(index) => {
                let copied: Vec<u64> = index
                    .objects()
                    .filter(|(d, _)| copies.contains(d))
                    .map(|(_, span)| span.len)
                    .collect();
                (
                    index.len() - copied.len(),
                    self.len.saturating_sub(copied.iter().sum()),
                )
            }
        }
    }

    /// Objects it holds.
    fn objects(&self) -> usize {
        self.pack.as_ref().map_or(1, |index| index.len())
    }
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
    if options.dry_run {
        outcome.generations.extend_from_slice(doomed);
    }
    let newest_seen = kept.last().copied().unwrap_or(0);

    let now = store_now(store).await?;
    let old_enough = |modified: SystemTime, limit: Duration| {
        now.duration_since(modified).is_ok_and(|age| age >= limit)
    };
    let run = format!("{TRASH_DIR}/{}", uuid::Uuid::new_v4().simple());
    let objects = Objects::new(None);
    // Trash left by runs that stopped half-way: judged below exactly like this run's own.
    let mut trashed = if options.dry_run {
        Vec::new()
    } else {
        abandoned_trash(store, &run, &objects).await?
    };
    let mut made_run = false;
    // The packs this run writes by repacking: name -> the objects each holds.
    let mut written: Vec<(Digest, std::sync::Arc<PackIndex>)> = Vec::new();
    for object in generations::list_objects(store).await? {
        let Ok(digest) = object.name().parse::<Digest>() else {
            continue;
        };
        if referenced.contains(&digest)
            || object.kind != EntryKind::File
            || !old_enough(object.modified, options.grace)
        {
            continue;
        }
        if options.dry_run {
            outcome.objects += 1;
            outcome.bytes += object.len;
            continue;
        }
        if !made_run {
            store.mkdirs(&run).await?;
            made_run = true;
        }
        let key = trash_key(&run, &digest);
        match store.rename(&object.key, &key, Overwrite::Deny).await {
            Ok(()) => trashed.push(Trashed {
                digest,
                key,
                len: object.len,
                pack: None,
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => {} // another run took it
            Err(e) => {
                put_back(store, &trashed).await;
                return Err(e.into());
            }
        }
    }
    // Packs none of whose objects a kept generation uses, and packs mostly garbage once
    // their live objects are copied out (a pack whose index cannot be read is never moved:
    // what it holds is unknown).
    let mut doomed_packs = Vec::new();
    let mut to_repack = Vec::new();
    for listed in objects.list_packs(store).await? {
        let Some(index) = &listed.index else { continue };
        if !old_enough(listed.info.modified, options.grace) {
            continue;
        }
        let live: u64 = index
            .objects()
            .filter(|(d, _)| referenced.contains(d))
            .map(|(_, span)| span.len)
            .sum();
        let total: u64 = index.objects().map(|(_, span)| span.len).sum();
        if live == 0 {
            doomed_packs.push(listed);
        } else if (total - live) * 100 > u64::from(options.max_garbage) * total {
            to_repack.push(listed);
        }
    }
    if options.dry_run {
        // Counted, not moved.
        for listed in doomed_packs.drain(..) {
            outcome.packs += 1;
            outcome.objects += listed.index.as_ref().map_or(0, |index| index.len());
            outcome.bytes += listed.info.len;
        }
        for listed in &to_repack {
            let Some(index) = &listed.index else { continue };
            let garbage = index.objects().filter(|(d, _)| !referenced.contains(d));
            let (objects, bytes) = garbage.fold((0, 0), |(n, b), (_, span)| (n + 1, b + span.len));
            outcome.packs += 1;
            outcome.objects += objects;
            outcome.bytes += bytes;
        }
        outcome.repacked = to_repack.len();
    } else {
        let (copies, repacked) = match repack(store, &to_repack, &referenced).await {
            Ok(done) => done,
            Err(e) => {
                put_back(store, &trashed).await;
                return Err(e.into());
            }
        };
        written = copies;
        doomed_packs.extend(repacked);
    }
    for listed in doomed_packs {
        let Some(index) = listed.index else { continue };
        if !made_run {
            store.mkdirs(&run).await?;
            made_run = true;
        }
        let key = trashed_pack_key(&run, &listed.name);
        match store.rename(&listed.info.key, &key, Overwrite::Deny).await {
            Ok(()) => trashed.push(Trashed {
                digest: listed.name,
                key,
                len: listed.info.len,
                pack: Some(index),
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => {} // another run took it
            Err(e) => {
                put_back(store, &trashed).await;
                return Err(e.into());
            }
        }
    }
    if !trashed.is_empty() || (!doomed.is_empty() && !options.dry_run) {
        let found = Found {
            newest_seen,
            referenced,
            doomed,
            trashed: &trashed,
            written: &written,
        };
        match settle(store, options, now, found).await {
            Ok(Settled {
                generations,
                deferred_generations,
                objects,
                packs,
                repacked,
                bytes,
                deferred,
            }) => {
                outcome.repacked = repacked;
                outcome.generations = generations;
                outcome.deferred_generations = deferred_generations;
                outcome.objects += objects;
                outcome.packs += packs;
                outcome.bytes += bytes;
                outcome.deferred += deferred;
            }
            Err(e) => {
                put_back(store, &trashed).await;
                return Err(e);
            }
        }
    }
    if made_run {
        // Not recursive: an object that could not be put back stays for the next run.
        if let Err(e) = store.delete(&run, false).await {
            tracing::debug!(run, error = %e, "could not remove the emptied trash directory");
        }
    }
    for staged in list_if_exists(store, STAGING_DIR).await? {
        if old_enough(staged.modified, options.grace) {
            if !options.dry_run {
                store.delete(&staged.key, true).await?;
            }
            outcome.staged += 1;
        }
    }
    tracing::info!(
        generations = outcome.generations.len(),
        objects = outcome.objects,
        packs = outcome.packs,
        repacked = outcome.repacked,
        bytes = outcome.bytes,
        deferred = outcome.deferred,
        dry_run = options.dry_run,
        "gc done"
    );
    Ok(outcome)
}

/// Objects and packs in the trash directories of other runs (a gc that crashed or is paused
/// after moving them); the empty directories of finished runs are removed. A trashed pack
/// whose index cannot be read stays where it is.
async fn abandoned_trash(
    store: &dyn Store,
    own: &str,
    objects: &Objects,
) -> Result<Vec<Trashed>, StoreError> {
    let mut found = Vec::new();
    for run in list_if_exists(store, TRASH_DIR).await? {
        if run.key == own || run.kind != EntryKind::Dir {
            continue;
        }
        let files = list_if_exists(store, &run.key).await?;
        if files.is_empty() {
            let _ = store.delete(&run.key, false).await;
        }
        for file in files {
            if let Ok(digest) = file.name().parse::<Digest>() {
                found.push(Trashed {
                    digest,
                    key: file.key,
                    len: file.len,
                    pack: None,
                });
            } else if let Some(TrashedPack { name, index }) =
                objects.trashed_pack(store, &file).await?
            {
                found.push(Trashed {
                    digest: name,
                    key: file.key,
                    len: file.len,
                    pack: Some(index),
                });
            }
        }
    }
    Ok(found)
}

/// What a run found before its wait: the newest generation of its first listing, the
/// objects of the kept generations, the generations to delete, the files moved aside and
/// the packs it wrote by repacking.
struct Found<'a> {
    newest_seen: u64,
    referenced: HashSet<Digest>,
    doomed: &'a [u64],
    trashed: &'a [Trashed],
    written: &'a [(Digest, std::sync::Arc<PackIndex>)],
}

/// What [`settle`] did.
#[derive(Default)]
struct Settled {
    generations: Vec<u64>,
    deferred_generations: Vec<u64>,
    objects: usize,
    packs: usize,
    repacked: usize,
    bytes: u64,
    deferred: usize,
}

/// After the objects are moved aside: wait until no publisher holds a pin, delete the
/// doomed manifests, list the generations, put back what any of them (or the kept ones)
/// references, delete the rest.
async fn settle(
    store: &dyn Store,
    options: &GcOptions,
    now: SystemTime,
    found: Found<'_>,
) -> Result<Settled, GcError> {
    let Found {
        newest_seen,
        mut referenced,
        doomed,
        trashed,
        written,
    } = found;
    if !wait_for_publishers(store, options.publish_wait, now).await? {
        tracing::info!(
            objects = trashed.len(),
            generations = doomed.len(),
            "publishes still in progress; putting the objects back and keeping the generations, a later gc collects them"
        );
        let deferred = trashed.iter().map(Trashed::objects).sum();
        put_back(store, trashed).await;
        return Ok(Settled {
            deferred_generations: doomed.to_vec(),
            deferred,
            ..Settled::default()
        });
    }
    let mut settled = Settled::default();
    // Only now (G5): every publisher whose pin was listed has committed or given up, and
    // any other read its base after that listing, at or above `newest_seen`; so none can
    // still take a number deleted here (DESIGN, "No generation number is taken twice").
    for &generation in doomed {
        store
            .delete(&crate::format::manifest_key(generation), false)
            .await?;
        settled.generations.push(generation);
    }
    // Every generation committed since the first listing (pins are gone, so no publisher
    // that saw one of these objects before it was moved is still to commit). Trash of
    // other runs is checked against the kept generations too.
    for generation in generations::list(store).await? {
        if generation > newest_seen {
            add_references(store, generation, &mut referenced).await?;
        }
    }
    let copies = copies_in_place(store, written).await?;
    for file in trashed {
        if file.needed(&referenced, &copies) {
            put_back(store, std::slice::from_ref(file)).await;
        } else if store.delete(&file.key, false).await? {
            let (objects, bytes) = file.garbage(&copies);
            settled.objects += objects;
            settled.bytes += bytes;
            settled.packs += usize::from(file.pack.is_some());
            settled.repacked += usize::from(
                file.pack
                    .as_ref()
                    .is_some_and(|index| index.objects().any(|(d, _)| copies.contains(d))),
            );
        }
    }
    Ok(settled)
}

/// Copies the objects of `packs` that `referenced` uses into new packs (each object read
/// and checked against its digest first), uploads them and returns them with the packs
/// whose objects were all copied. A pack whose live bytes do not hash right is left as it
/// is (`dagfs verify` names it; a copy would spread the damage).
async fn repack(
    store: &dyn Store,
    packs: &[ListedPack],
    referenced: &HashSet<Digest>,
) -> Result<(Vec<(Digest, std::sync::Arc<PackIndex>)>, Vec<ListedPack>), StoreError> {
    let mut written = Vec::new();
    let mut emptied = Vec::new();
    let mut builder = PackBuilder::default();
    for listed in packs {
        let Some(index) = &listed.index else { continue };
        let bytes = match store.read(&listed.info.key).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => continue, // another run took it
            Err(e) => return Err(e),
        };
        let live: Option<Vec<(Digest, &[u8])>> = index
            .objects()
            .filter(|(digest, _)| referenced.contains(digest))
            .map(|(digest, span)| {
                let start = usize::try_from(span.offset).ok()?;
                let end = usize::try_from(span.offset.checked_add(span.len)?).ok()?;
                let object = bytes.get(start..end)?;
                (Digest::of(object) == *digest).then_some((*digest, object))
            })
            .collect();
        let Some(live) = live else {
            tracing::warn!(pack = %listed.name, "not repacking a pack whose live objects do not hash right; run dagfs verify --store --deep");
            continue;
        };
        for (digest, object) in live {
            if !builder.fits(object.len() as u64) {
                written.push(upload(store, std::mem::take(&mut builder)).await?);
            }
            builder.add(digest, object);
        }
        emptied.push(listed.clone());
    }
    if !builder.is_empty() {
        written.push(upload(store, builder).await?);
    }
    Ok((written, emptied))
}

/// Finishes and uploads `builder`'s pack; its name and index.
async fn upload(
    store: &dyn Store,
    builder: PackBuilder,
) -> Result<(Digest, std::sync::Arc<PackIndex>), StoreError> {
    let pack = builder.finish();
    let made = (pack.name, std::sync::Arc::new(pack.index.clone()));
    pack.upload(store).await?;
    Ok(made)
}

/// The objects held by the packs of `written` that are still under `packs/` now (a later
/// run may have moved one aside): the copies that let a repacked pack go.
async fn copies_in_place(
    store: &dyn Store,
    written: &[(Digest, std::sync::Arc<PackIndex>)],
) -> Result<HashSet<Digest>, StoreError> {
    if written.is_empty() {
        return Ok(HashSet::new());
    }
    let listed: HashSet<String> = list_if_exists(store, PACKS_DIR)
        .await?
        .into_iter()
        .map(|info| info.key)
        .collect();
    Ok(written
        .iter()
        .filter(|(name, _)| listed.contains(&pack_key(name)))
        .flat_map(|(_, index)| index.objects().map(|(d, _)| *d))
        .collect())
}

/// Waits until every pin that exists now is released (expired ones are deleted), for at
/// most `wait`. Pins taken after this first listing are not waited for: their publishers
/// look at objects only after the objects were moved aside, so they find them missing and
/// put them back themselves. `Ok(false)`: publishers were still at work when the time was up.
async fn wait_for_publishers(
    store: &dyn Store,
    wait: Duration,
    now: SystemTime,
) -> Result<bool, StoreError> {
    let mut waiting: HashSet<String> = HashSet::new();
    for pin in list_if_exists(store, PINS_DIR).await? {
        let expired = now
            .duration_since(pin.modified)
            .is_ok_and(|age| age >= PIN_EXPIRY);
        if expired {
            tracing::warn!(
                pin = pin.key,
                "deleting the pin of a publisher that never finished"
            );
            store.delete(&pin.key, true).await?;
        } else {
            waiting.insert(pin.key);
        }
    }
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(20);
    while !waiting.is_empty() {
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        pause = (pause * 2).min(Duration::from_secs(1));
        let held: HashSet<String> = list_if_exists(store, PINS_DIR)
            .await?
            .into_iter()
            .map(|pin| pin.key)
            .collect();
        waiting.retain(|key| held.contains(key));
    }
    Ok(true)
}

/// Moves trashed objects and packs back to `objects/` and `packs/` (best effort: a failure
/// is logged, and the next gc or a publisher that needs them puts them back).
async fn put_back(store: &dyn Store, trashed: &[Trashed]) {
    for object in trashed {
        let target = object.home();
        let result = async {
            if let Some((parent, _)) = target.rsplit_once('/') {
                store.mkdirs(parent).await?;
            }
            match store.rename(&object.key, &target, Overwrite::Deny).await {
                // Uploaded again meanwhile: the trashed copy is a duplicate.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    store.delete(&object.key, false).await.map(|_| ())
                }
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                other => other,
            }
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(object = %object.digest, error = %e, "could not put a trashed object back; the next gc or publish will");
        }
    }
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
    use crate::store::LocalStore;
    use crate::testutil::{publish_files, stored_len};

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
                publish_wait: Duration::ZERO,
                max_garbage: DEFAULT_MAX_GARBAGE,
            },
        )
        .await
        .unwrap();
        assert_eq!((young.generations.clone(), young.objects), (vec![1, 2], 0));
        assert!(stored_len(&store, &digests[1]).await.is_some());

        let outcome = gc(
            &store,
            &GcOptions {
                keep: 1,
                grace: Duration::ZERO,
                dry_run: false,
                publish_wait: Duration::ZERO,
                max_garbage: DEFAULT_MAX_GARBAGE,
            },
        )
        .await
        .unwrap();
        // Each publish wrote one pack: {v1, shared}, {v2}, {v3}. Only {v2} is dead; {v1,
        // shared} is live through `shared` and kept whole (a quarter of it is garbage, under
        // max_garbage).
        assert_eq!((outcome.packs, outcome.objects), (1, 1), "v2's pack goes");
        assert!(stored_len(&store, &digests[1]).await.is_none());
        assert!(stored_len(&store, &digests[0]).await.is_some());
        assert!(stored_len(&store, &digests[2]).await.is_some());
        assert!(stored_len(&store, &Digest::of(b"shared")).await.is_some());
        assert_eq!(generations::list(&store).await.unwrap(), [3]);
        assert!(matches!(
            gc(
                &store,
                &GcOptions {
                    keep: 0,
                    grace: Duration::ZERO,
                    dry_run: true,
                    publish_wait: Duration::ZERO,
                    max_garbage: DEFAULT_MAX_GARBAGE,
                }
            )
            .await,
            Err(GcError::KeepNothing)
        ));
    }

    use crate::publish::{publish, Desired, PublishOptions};
    use crate::store::faulty::{FaultyStore, Rule};
    use std::sync::Arc;

    fn collect_all() -> GcOptions {
        GcOptions {
            keep: 1,
            grace: Duration::ZERO,
            dry_run: false,
            publish_wait: Duration::ZERO,
            max_garbage: DEFAULT_MAX_GARBAGE,
        }
    }

    /// Every object the head references is in `packs/` or `objects/` with its recorded
    /// length.
    async fn assert_head_complete(store: &dyn Store, context: &str) {
        let head = generations::load_head(store).await.unwrap().unwrap();
        for entry in &head.entries {
            let info = stored_len(store, &entry.blake3).await;
            assert!(
                info == Some(entry.size),
                "{context}: head {} references {} ({}), which is {info:?}",
                head.generation,
                entry.blake3,
                entry.path
            );
        }
    }

    /// Every object the head references is readable (from `objects/` or the trash).
    async fn assert_head_readable(store: &dyn Store, context: &str) {
        let head = generations::load_head(store).await.unwrap().unwrap();
        for entry in &head.entries {
            let bytes = crate::objects::Objects::new(None)
                .read(store, &entry.blake3)
                .await;
            assert!(
                bytes.as_ref().is_ok_and(|b| Digest::of(b) == entry.blake3),
                "{context}: head {} references {} ({}), which is {bytes:?}",
                head.generation,
                entry.blake3,
                entry.path
            );
        }
    }

    /// Generation 1 holds `a.py = OLD` and `b.py = s`, generation 2 `a.py = new` and the
    /// same `b.py`: with `--keep 1` the old object is garbage, until a rollback to
    /// generation 1 reuses it. Generation 1's pack is mostly garbage (`OLD`, 32 bytes) with
    /// one live object (`s`, reused by generation 2), so gc repacks it.
    async fn two_generations(dir: &std::path::Path) -> (Arc<dyn Store>, crate::format::Manifest) {
        let store: Arc<dyn Store> = Arc::new(LocalStore::open(dir.join("store")).await.unwrap());
        publish_files(&*store, dir, &[("a.py", OLD), ("b.py", "s")]).await;
        publish_files(&*store, dir, &[("a.py", "new"), ("b.py", "s")]).await;
        let first = generations::load(&*store, 1).await.unwrap();
        (store, first)
    }

    /// A fresh [`two_generations`] store (its directory, the store, generation 1) and the
    /// same store behind a [`FaultyStore`] that runs a whole gc before its `nth` call.
    async fn gc_before_call(
        nth: usize,
    ) -> (
        tempfile::TempDir,
        Arc<dyn Store>,
        crate::format::Manifest,
        FaultyStore,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (inner, first) = two_generations(dir.path()).await;
        let store = FaultyStore::new(Arc::clone(&inner));
        let collect: crate::store::faulty::Action = Arc::new(move |store, _| {
            Box::pin(async move {
                let _ = gc(&*store, &collect_all()).await;
            })
        });
        store.add(Rule::before_any(nth, collect));
        (dir, inner, first, store)
    }

    /// The old content of `a.py` in [`two_generations`].
    const OLD: &str = "old = 1\nold = 2\nold = 3\nold = 4\n";

    /// A pack mostly garbage is rewritten: its live object moves to a new pack, the old pack
    /// and its garbage go, the head stays complete, and a reader that located the object in
    /// the old pack before gc still reads it. A dry run reports the repack and does nothing.
    #[tokio::test]
    async fn a_pack_mostly_garbage_is_repacked_and_its_live_objects_stay_readable() {
        let dir = tempfile::tempdir().unwrap();
        let (store, first) = two_generations(dir.path()).await;
        let old = Digest::of(OLD.as_bytes());
        let shared = first.entries[1].blake3;
        let reader = Objects::new(None);
        reader.refresh(&*store).await.unwrap();
        let old_pack = reader.locate(&shared).unwrap().pack;
        let dry = gc(
            &*store,
            &GcOptions {
                dry_run: true,
                ..collect_all()
            },
        )
        .await
        .unwrap();
        assert_eq!((dry.repacked, dry.packs, dry.objects), (1, 1, 1), "{dry:?}");
        let old_len = store.stat(&pack_key(&old_pack)).await.unwrap().len;

        let outcome = gc(&*store, &collect_all()).await.unwrap();
        assert!(
            store.stat(&pack_key(&old_pack)).await.is_err(),
            "the pack mostly garbage is still there: {outcome:?}"
        );
        assert_eq!(stored_len(&*store, &old).await, None, "garbage kept");
        assert_head_complete(&*store, "after repacking").await;
        assert_eq!(
            (outcome.repacked, outcome.packs, outcome.objects),
            (1, 1, 1),
            "{outcome:?}"
        );
        assert_eq!(
            outcome.bytes,
            old_len - 1,
            "all but the live byte: {outcome:?}"
        );
        let bytes = reader.read(&*store, &shared).await.unwrap();
        assert_eq!(Digest::of(&bytes), shared, "a reader with the old location");
        let again = gc(&*store, &collect_all()).await.unwrap();
        assert_eq!((again.repacked, again.packs), (0, 0), "{again:?}");
    }

    /// A rollback whose objects are in a pack a paused gc run moved aside puts that pack
    /// back (it has no source to upload from) and commits; readers found the pack in the
    /// trash meanwhile. The rollback needs two objects of that pack and checks them
    /// concurrently, so the check that does not put the pack back may look into the trash
    /// after the other did: 20 rounds, each must commit.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_rollback_puts_back_the_pack_a_paused_gc_moved_aside() {
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let (store, first) = two_generations(dir.path()).await;
            let objects = Objects::new(None);
            objects.refresh(&*store).await.unwrap();
            let old = first.entries[0].blake3;
            let pack = objects.locate(&old).unwrap().pack;
            let run = format!("{TRASH_DIR}/paused");
            store.mkdirs(&run).await.unwrap();
            store
                .rename(
                    &pack_key(&pack),
                    &trashed_pack_key(&run, &pack),
                    Overwrite::Deny,
                )
                .await
                .unwrap();
            let bytes = Objects::new(None).read(&*store, &old).await.unwrap();
            assert_eq!(Digest::of(&bytes), old, "readers look into trashed packs");
            let outcome = publish(
                &*store,
                &Desired::from_manifest(&first),
                &PublishOptions::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!((outcome.generation, outcome.objects_uploaded), (Some(3), 0));
            assert!(store.stat(&pack_key(&pack)).await.is_ok(), "put back");
            assert_head_complete(&*store, "after the rollback").await;
        }
    }

    /// One file, `path` = `content`, under `prefix` (a change that rebases onto any head).
    fn under_prefix(
        dir: &std::path::Path,
        prefix: &str,
        path: &str,
        content: &str,
    ) -> (Desired, PublishOptions) {
        let entry = crate::testutil::entry_for(path, content.as_bytes());
        let src = dir.join(uuid::Uuid::new_v4().to_string());
        std::fs::write(&src, content).unwrap();
        let desired = Desired {
            entries: vec![entry.clone()],
            sources: [(entry.blake3, src.into())].into(),
        };
        let options = PublishOptions {
            prefix: Some(prefix.into()),
            ..PublishOptions::default()
        };
        (desired, options)
    }

    /// A push interleaved at every store call with two other commits and a `gc --keep 1`
    /// (run whole, before that call): whatever the point, the push either committed a
    /// generation that holds its change, under a number nobody else held, with the head
    /// holding its change and theirs, or failed having committed nothing. On the code
    /// before the fix, gc deleted the number the push had read as next, the push's
    /// no-overwrite rename then succeeded below the head and it reported success: a lost
    /// update. The injected gc runs inside the push, so it cannot wait for the push's pin:
    /// `publish_wait` is zero.
    #[tokio::test]
    async fn a_push_racing_commits_and_gc_never_lands_below_the_head() {
        for nth in 1.. {
            let dir = tempfile::tempdir().unwrap();
            let inner: Arc<dyn Store> =
                Arc::new(LocalStore::open(dir.path().join("store")).await.unwrap());
            publish_files(&*inner, dir.path(), &[("a.py", "a")]).await;
            let store = FaultyStore::new(Arc::clone(&inner));
            let work = dir.path().to_path_buf();
            let theirs = Arc::new(std::sync::Mutex::new(Vec::new()));
            let others: crate::store::faulty::Action = Arc::new({
                let theirs = Arc::clone(&theirs);
                move |store, _| {
                    let (work, theirs) = (work.clone(), Arc::clone(&theirs));
                    Box::pin(async move {
                        for c in ["c1", "c2"] {
                            let (desired, options) = under_prefix(&work, "theirs", "c.py", c);
                            let outcome = publish(&*store, &desired, &options).await.unwrap();
                            theirs.lock().unwrap().push(outcome.generation.unwrap());
                        }
                        let _ = gc(&*store, &collect_all()).await;
                    })
                }
            });
            store.add(Rule::before_any(nth, others));
            let (desired, options) = under_prefix(dir.path(), "ours", "b.py", "ours");
            let result = publish(&store, &desired, &options).await;
            if store.fired().is_empty() {
                break; // the push made fewer calls than nth
            }
            let holds_ours =
                |m: &crate::format::Manifest| m.entries.iter().any(|e| e.path == "ours/b.py");
            let head = generations::load_head(&*inner).await.unwrap().unwrap();
            let context = format!(
                "others and gc before push call {nth}: {result:?}, theirs {:?}, head {} = {:?}",
                theirs.lock().unwrap(),
                head.generation,
                head.entries.iter().map(|e| &e.path).collect::<Vec<_>>()
            );
            let theirs_last = head.entries.iter().find(|e| e.path == "theirs/c.py");
            assert_eq!(
                theirs_last.map(|e| e.blake3),
                Some(Digest::of(b"c2")),
                "{context}"
            );
            match &result {
                Ok(outcome) => {
                    let ours = outcome.generation.unwrap();
                    assert!(!theirs.lock().unwrap().contains(&ours), "{context}");
                    assert!(holds_ours(&head), "lost update: {context}");
                    if let Ok(manifest) = generations::load(&*inner, ours).await {
                        assert!(holds_ours(&manifest), "{context}");
                    }
                }
                Err(_) => assert!(!holds_ours(&head), "{context}"),
            }
            assert_head_complete(&*inner, &context).await;
        }
    }

    /// gc and a rollback (which has no local copy to upload again) interleaved at every
    /// store call: the rollback runs whole before gc's Nth call, gc runs whole before the
    /// rollback's Nth call, and another gc run whole before gc's Nth call. The head never references a missing object, and a rollback
    /// that reports an error committed nothing.
    #[tokio::test]
    async fn gc_and_rollbacks_interleaved_at_every_call_never_break_the_head() {
        // Rollback inside gc; then again with gc failing to put the object back (it must
        // stay readable in the trash for the next run, never be deleted).
        for put_back_fails in [false, true] {
            for nth in 1.. {
                let dir = tempfile::tempdir().unwrap();
                let (inner, first) = two_generations(dir.path()).await;
                let store = FaultyStore::new(Arc::clone(&inner));
                if put_back_fails {
                    store.add(
                        Rule::fail(crate::store::faulty::Op::Rename, 1, ErrorKind::Unavailable)
                            .on("packs/"),
                    );
                }
                let rollback: crate::store::faulty::Action = Arc::new(move |store, _| {
                    let first = first.clone();
                    Box::pin(async move {
                        let _ = publish(
                            &*store,
                            &Desired::from_manifest(&first),
                            &PublishOptions::default(),
                        )
                        .await;
                    })
                });
                store.add(Rule::before_any(nth, rollback));
                let result = gc(&store, &collect_all()).await;
                if !store.fired().iter().any(|f| f.contains("Before")) {
                    break; // gc made fewer calls than nth
                }
                let context = format!(
                    "rollback before gc call {nth}, put-back fails: {put_back_fails} ({result:?})"
                );
                if put_back_fails {
                    assert_head_readable(&*inner, &context).await;
                } else {
                    assert_head_complete(&*inner, &context).await;
                }
            }
        }
        // gc inside gc: the inner run finds the outer one's trash (and repacked copies) and
        // judges them like its own.
        for nth in 1.. {
            let (_dir, inner, _, store) = gc_before_call(nth).await;
            let result = gc(&store, &collect_all()).await;
            if store.fired().is_empty() {
                break;
            }
            assert_head_complete(&*inner, &format!("gc before gc call {nth} ({result:?})")).await;
            // The inner run may put back a pack the outer one repacked (it cannot count on
            // copies it did not write): the garbage goes with the next run.
            gc(&*inner, &collect_all()).await.unwrap();
            let old = Digest::of(OLD.as_bytes());
            assert_eq!(
                stored_len(&*inner, &old).await,
                None,
                "gc before gc call {nth}"
            );
            assert_head_complete(&*inner, &format!("gc before gc call {nth}, then gc")).await;
        }
        // gc inside the rollback.
        for nth in 1.. {
            let (_dir, inner, first, store) = gc_before_call(nth).await;
            let result = publish(
                &store,
                &Desired::from_manifest(&first),
                &PublishOptions::default(),
            )
            .await;
            if store.fired().is_empty() {
                break;
            }
            let head = generations::head(&*inner).await.unwrap();
            match &result {
                Ok(outcome) => assert_eq!(outcome.generation, head, "gc before call {nth}"),
                Err(e) => assert_eq!(
                    head,
                    Some(2),
                    "gc before call {nth}: failed ({e}) but committed"
                ),
            }
            assert_head_complete(
                &*inner,
                &format!("gc before rollback call {nth} ({result:?})"),
            )
            .await;
        }
    }
}
