//! Where an object of a store lives and how to read it (docs/DESIGN.md "Format 2: packs"):
//! in a pack under `packs/` (found through the packs' indexes, read by range), as a loose
//! object under `objects/` (format 1, and objects too large to pack), or, while a gc run
//! has it moved aside, in the trash.
//!
//! [`Objects`] keeps the indexes of the packs of its last listing in memory (until
//! [`Objects::forget`]) and optionally as local copies of the packs' tails (immutable and
//! content-named, so a copy never goes stale). Callers hash every object they read: an
//! index says where to look, never what the bytes are.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::format::{object_key, Digest};
use crate::pack::{pack_key, Footer, PackIndex, Span, PACKS_DIR, TAIL_GUESS};
use crate::store::{
    list_if_exists, EntryInfo, EntryKind, ErrorKind, Store, StoreError, StoreResult,
};

/// Where one object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packed {
    /// The pack's name.
    pub pack: Digest,
    /// The object's bytes in it.
    pub span: Span,
}

/// Most bytes one batched read fetches.
const MAX_BATCH: u64 = 1 << 20;
/// Largest gap between two objects a batched read reads through.
const MAX_GAP: u64 = 64 << 10;

/// Neighbouring objects of one pack, fetched with one range read.
#[derive(Clone, Debug)]
pub struct Batch {
    pack: Digest,
    span: Span,
    members: Vec<(Digest, Span)>,
}

/// A pack of a listing of `packs/`.
#[derive(Clone, Debug)]
pub struct ListedPack {
    /// What the listing says.
    pub info: EntryInfo,
    /// Its name.
    pub name: Digest,
    /// Its index; `None` if the tail is damaged (logged).
    pub index: Option<Arc<PackIndex>>,
}

/// A pack in a gc run's trash.
#[derive(Clone, Debug)]
pub struct TrashedPack {
    /// Its name.
    pub name: Digest,
    /// Its index.
    pub index: Arc<PackIndex>,
}

/// The objects of a store's packs, as far as the last [`Objects::refresh`] saw them.
#[derive(Debug, Default)]
pub struct Objects {
    /// Directory of local copies of pack tails (`<dir>/<pack hex>`), if any.
    local: Option<PathBuf>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The indexes of the packs of the last listing (and of trashed packs read since), by
    /// pack name.
    indexes: HashMap<Digest, Arc<PackIndex>>,
    /// The objects of the packs of the last listing.
    located: Arc<HashMap<Digest, Packed>>,
}

impl Objects {
    /// An empty view that keeps local copies of the indexes it reads in `local` (created).
    pub fn new(local: Option<PathBuf>) -> Objects {
        if let Some(dir) = &local {
            if let Err(e) = std::fs::create_dir_all(dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot keep local copies of pack indexes");
            }
        }
        Objects {
            local,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("no panics under the lock")
    }

    /// Lists `packs/` (one call) and reads the index of every listed pack not seen before (a
    /// local copy, else the pack's tail). A pack whose tail is damaged is left out with an
    /// error line: its objects read as missing, never as wrong bytes.
    pub async fn refresh(&self, store: &dyn Store) -> StoreResult<()> {
        self.relist(store).await.map(drop)
    }

    /// [`Objects::refresh`], returning the objects of the new listing (a [`Objects::forget`]
    /// meanwhile does not lose them).
    async fn relist(&self, store: &dyn Store) -> StoreResult<Arc<HashMap<Digest, Packed>>> {
        let listed = self.list_packs(store).await?;
        let mut located = HashMap::new();
        for pack in &listed {
            let Some(index) = &pack.index else { continue };
            for (digest, span) in index.objects() {
                located.insert(
                    *digest,
                    Packed {
                        pack: pack.name,
                        span: *span,
                    },
                );
            }
        }
        self.prune_local(&listed);
        let located = Arc::new(located);
        let mut state = self.state();
        state.located = Arc::clone(&located);
        // Packs gc deleted, and trashed packs read meanwhile, are not held any longer.
        state
            .indexes
            .retain(|name, _| listed.iter().any(|pack| pack.name == *name));
        Ok(located)
    }

    /// Drops every index and location held in memory (local copies stay): the next refresh
    /// loads the indexes of the packs it lists again, from the local copies. A long-running
    /// reader (the mount's cache) calls it after each fetch, so its memory never grows
    /// with the number of packs the store holds or has held.
    pub fn forget(&self) {
        *self.state() = State::default();
    }

    /// The packs under `packs/` (one listing), with their indexes (`None`: damaged); the
    /// tails of packs not seen before are read 16 at a time.
    pub async fn list_packs(&self, store: &dyn Store) -> StoreResult<Vec<ListedPack>> {
        let listed = list_if_exists(store, PACKS_DIR)
            .await?
            .into_iter()
            .filter(|info| info.kind == EntryKind::File)
            .filter_map(|info| Some((info.name().parse::<Digest>().ok()?, info)));
        stream::iter(listed)
            .map(|(name, info)| async move {
                let index = self.index(store, &info.key, &name, info.len).await?;
                Ok(ListedPack { info, name, index })
            })
            .buffered(16)
            .try_collect()
            .await
    }

    /// The pack a gc run moved aside as `file` (`<run>/pack-<hex>`), with its index;
    /// `None` for other files and for a pack whose index cannot be read.
    pub async fn trashed_pack(
        &self,
        store: &dyn Store,
        file: &EntryInfo,
    ) -> StoreResult<Option<TrashedPack>> {
        let Some(name) = file
            .name()
            .strip_prefix("pack-")
            .and_then(|hex| hex.parse::<Digest>().ok())
        else {
            return Ok(None);
        };
        let index = self.index(store, &file.key, &name, file.len).await?;
        Ok(index.map(|index| TrashedPack { name, index }))
    }

    /// The index of pack `name` at `key`, of `len` bytes: from memory, a local copy, or the
    /// store. `None` if it is damaged (logged).
    async fn index(
        &self,
        store: &dyn Store,
        key: &str,
        name: &Digest,
        len: u64,
    ) -> StoreResult<Option<Arc<PackIndex>>> {
        if let Some(index) = self.state().indexes.get(name) {
            if index.pack_len() == len {
                return Ok(Some(Arc::clone(index)));
            }
        }
        let local = self.local.as_ref().map(|dir| dir.join(name.to_string()));
        let cached = local.as_ref().and_then(|path| {
            let bytes = std::fs::read(path).ok()?;
            match PackIndex::from_tail(&bytes) {
                Ok(index) if index.pack_len() == len => Some(index),
                _ => {
                    tracing::warn!(path = %path.display(), "local copy of a pack index is damaged; reading it again");
                    let _ = std::fs::remove_file(path);
                    None
                }
            }
        });
        let index = match cached {
            Some(index) => index,
            None => {
                let (tail, parsed) = read_tail(store, key, len).await?;
                match parsed {
                    Ok(index) => {
                        if let Some(path) = &local {
                            self.keep_local(path, &tail);
                        }
                        index
                    }
                    Err(e) => {
                        tracing::error!(pack = key, url = store.url(), error = %e, "pack is damaged; its objects are not used");
                        return Ok(None);
                    }
                }
            }
        };
        let index = Arc::new(index);
        self.state().indexes.insert(*name, Arc::clone(&index));
        Ok(Some(index))
    }

    /// Writes a local copy atomically (a temporary file renamed into place); a failure only
    /// costs a read of the tail next time.
    fn keep_local(&self, path: &std::path::Path, tail: &[u8]) {
        if let Err(e) = crate::atomic::write(path, tail, crate::atomic::Options::SCRATCH) {
            tracing::debug!(path = %path.display(), error = %e, "could not keep a local copy of a pack index");
        }
    }

    /// Deletes local copies of packs that are no longer listed (collected by gc).
    fn prune_local(&self, listed: &[ListedPack]) {
        let Some(dir) = &self.local else { return };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(digest) = name.to_str().and_then(|n| n.parse::<Digest>().ok()) else {
                continue;
            };
            if !listed.iter().any(|pack| pack.name == digest) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// How many pack indexes and object locations are held in memory.
    #[cfg(test)]
    pub(crate) fn held(&self) -> (usize, usize) {
        let state = self.state();
        (state.indexes.len(), state.located.len())
    }

    /// Where `digest` is packed, as of the last refresh.
    pub fn locate(&self, digest: &Digest) -> Option<Packed> {
        self.state().located.get(digest).copied()
    }

    /// The length of object `digest` if the store has it (packed, as of the last refresh, or
    /// loose); `None` if it has not.
    pub async fn present_len(
        &self,
        store: &dyn Store,
        digest: &Digest,
    ) -> StoreResult<Option<u64>> {
        if let Some(packed) = self.locate(digest) {
            return Ok(Some(packed.span.len));
        }
        match store.stat(&object_key(digest)).await {
            Ok(info) => Ok(Some(info.len)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The store key an object is read from, for messages.
    pub fn key(&self, digest: &Digest) -> String {
        match self.locate(digest) {
            Some(packed) => format!(
                "{} (bytes {}..{})",
                pack_key(&packed.pack),
                packed.span.offset,
                packed.span.offset + packed.span.len
            ),
            None => object_key(digest),
        }
    }

    /// Groups `digests` into batches of neighbouring objects of the same pack (at most
    /// 1 MiB, reading through gaps of at most 64 KiB), one range read each; returns the
    /// batches and the digests in no pack of the last refresh.
    pub fn batches(&self, digests: impl IntoIterator<Item = Digest>) -> (Vec<Batch>, Vec<Digest>) {
        let mut by_pack: HashMap<Digest, Vec<(Digest, Span)>> = HashMap::new();
        let mut rest = Vec::new();
        {
            let state = self.state();
            for digest in digests {
                match state.located.get(&digest) {
                    Some(packed) => by_pack
                        .entry(packed.pack)
                        .or_default()
                        .push((digest, packed.span)),
                    None => rest.push(digest),
                }
            }
        }
        let mut batches = Vec::new();
        for (pack, mut members) in by_pack {
            members.sort_by_key(|(_, span)| span.offset);
            let mut current: Option<Batch> = None;
            for (digest, span) in members {
                if let Some(batch) = &mut current {
                    let end = batch.span.offset + batch.span.len;
                    let new_end = end.max(span.offset + span.len);
                    if span.offset <= end.saturating_add(MAX_GAP)
                        && new_end - batch.span.offset <= MAX_BATCH
                    {
                        batch.span.len = new_end - batch.span.offset;
                        batch.members.push((digest, span));
                        continue;
                    }
                }
                batches.extend(current.take());
                current = Some(Batch {
                    pack,
                    span,
                    members: vec![(digest, span)],
                });
            }
            batches.extend(current);
        }
        (batches, rest)
    }

    /// Reads a batch with one range read (from the trash while a gc run has its pack moved
    /// aside) and splits it into its objects (not checked: hash them).
    pub async fn read_batch(
        &self,
        store: &dyn Store,
        batch: &Batch,
    ) -> StoreResult<Vec<(Digest, Bytes)>> {
        let bytes = read_packed(
            store,
            Packed {
                pack: batch.pack,
                span: batch.span,
            },
        )
        .await?;
        Ok(batch
            .members
            .iter()
            .map(|(digest, span)| {
                let start = (span.offset - batch.span.offset) as usize;
                (*digest, bytes.slice(start..start + span.len as usize))
            })
            .collect())
    }

    /// Reads object `digest`: from its pack by range, else loose, else from the trash of a
    /// gc run that moved it (or its pack) aside; an object in none of the packs of the last
    /// refresh is looked for in a fresh listing once. Packed bytes that do not hash to
    /// `digest` are replaced by a loose copy that does, if there is one (the repair for a
    /// damaged pack); otherwise they are returned: callers hash what they get.
    pub async fn read(&self, store: &dyn Store, digest: &Digest) -> StoreResult<Bytes> {
        let mut packed = self.locate(digest);
        if packed.is_none() {
            match read_loose(store, digest).await {
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    packed = self.relist(store).await?.get(digest).copied();
                }
                other => return other,
            }
        }
        let Some(packed) = packed else {
            return match read_loose(store, digest).await {
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    self.read_trashed_pack(store, digest).await?.ok_or(e)
                }
                other => other,
            };
        };
        let bytes = match read_packed(store, packed).await {
            // Its pack was repacked by gc and deleted since the last refresh: the object
            // is in another pack now.
            Err(e) if e.kind() == ErrorKind::NotFound => {
                match self.relist(store).await?.get(digest).copied() {
                    Some(moved) if moved != packed => read_packed(store, moved).await?,
                    _ => return Err(e),
                }
            }
            other => other?,
        };
        if Digest::of(&bytes) != *digest {
            if let Ok(loose) = read_loose(store, digest).await {
                if Digest::of(&loose) == *digest {
                    return Ok(loose);
                }
            }
        }
        Ok(bytes)
    }
}

impl Objects {
    /// Reads object `digest` from a pack a gc run moved aside (and could not put back yet),
    /// if one holds it.
    async fn read_trashed_pack(
        &self,
        store: &dyn Store,
        digest: &Digest,
    ) -> StoreResult<Option<Bytes>> {
        for run in list_if_exists(store, TRASH_DIR).await? {
            for file in list_if_exists(store, &run.key).await? {
                let Some(pack) = self.trashed_pack(store, &file).await? else {
                    continue;
                };
                if let Some(span) = pack.index.get(digest) {
                    match read_span(store, &file.key, span).await {
                        Err(e) if e.kind() == ErrorKind::NotFound => {}
                        other => return other.map(Some),
                    }
                }
            }
        }
        Ok(None)
    }
}

/// Reads a packed object's range: from its pack, else from a gc run's trash (a run puts
/// back what a generation uses), else from its pack again (put back meanwhile).
async fn read_packed(store: &dyn Store, packed: Packed) -> StoreResult<Bytes> {
    let key = pack_key(&packed.pack);
    match read_span(store, &key, packed.span).await {
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        other => return other,
    }
    for run in list_if_exists(store, TRASH_DIR).await? {
        let trashed = trashed_pack_key(&run.key, &packed.pack);
        match read_span(store, &trashed, packed.span).await {
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            other => return other,
        }
    }
    read_span(store, &key, packed.span).await
}

/// Where publishers on this host keep local copies of the pack indexes of the store at
/// `url` (mounts and checkouts keep theirs in their cache):
/// `$XDG_CACHE_HOME/dagfs/packs-<16 hex digits of the URL's blake3>`.
pub fn index_dir(url: &str) -> Option<PathBuf> {
    let id = Digest::of(url.as_bytes()).to_string();
    crate::host::user_cache_dir().map(|dir| dir.join(format!("packs-{}", &id[..16])))
}

/// Reads `span` of `key`; fewer bytes than the span (a damaged or replaced file) is
/// `Corrupt`.
async fn read_span(store: &dyn Store, key: &str, span: Span) -> StoreResult<Bytes> {
    let bytes = store.read_range(key, span.offset, span.len).await?;
    if bytes.len() as u64 != span.len {
        return Err(StoreError::new(
            ErrorKind::Corrupt,
            "read_range",
            key,
            format!(
                "{} bytes at {} where the pack index says {}",
                bytes.len(),
                span.offset,
                span.len
            ),
        ));
    }
    Ok(bytes)
}

/// Reads and parses the tail of the pack at `key` (`len` bytes long, from a listing): one
/// range read, two for an index larger than [`TAIL_GUESS`]. Returns the tail's bytes too.
async fn read_tail(
    store: &dyn Store,
    key: &str,
    len: u64,
) -> StoreResult<(Vec<u8>, Result<PackIndex, crate::pack::PackError>)> {
    let guess = len.min(TAIL_GUESS);
    let end = store.read_range(key, len - guess, guess).await?;
    let footer = match Footer::parse(&end) {
        Ok(footer) => footer,
        Err(e) => return Ok((Vec::new(), Err(e))),
    };
    let tail_len = footer.tail_len();
    let tail = if tail_len <= end.len() as u64 {
        end[end.len() - tail_len as usize..].to_vec()
    } else if tail_len <= len {
        store
            .read_range(key, len - tail_len, tail_len)
            .await?
            .to_vec()
    } else {
        return Ok((
            Vec::new(),
            Err(crate::pack::PackError::Corrupt(format!(
                "the footer describes a tail of {tail_len} bytes in a file of {len}"
            ))),
        ));
    };
    let parsed = PackIndex::from_tail(&tail).and_then(|index| {
        if index.pack_len() == len {
            Ok(index)
        } else {
            Err(crate::pack::PackError::Corrupt(format!(
                "the index describes a pack of {} bytes, the file has {len}",
                index.pack_len()
            )))
        }
    });
    Ok((tail, parsed))
}

/// Directory where gc runs move the objects they are about to delete (objects there are
/// still readable: [`read_loose`], [`Objects::read`]).
pub const TRASH_DIR: &str = ".dagfs-trash";

/// The trash key of `digest` in run directory `run`.
pub fn trash_key(run: &str, digest: &Digest) -> String {
    format!("{run}/{digest}")
}

/// The trash key of pack `name` in run directory `run`.
pub fn trashed_pack_key(run: &str, name: &Digest) -> String {
    format!("{run}/pack-{name}")
}

/// Reads loose object `digest`: from `objects/`, or, while a gc run has it moved aside, from
/// the trash (an object a running gc is about to put back is never unreadable). Packed
/// objects are read through [`Objects`].
pub async fn read_loose(store: &dyn Store, digest: &Digest) -> Result<Bytes, StoreError> {
    let key = object_key(digest);
    match store.read(&key).await {
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        other => return other,
    }
    for run in list_if_exists(store, TRASH_DIR).await? {
        match store.read(&trash_key(&run.key, digest)).await {
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            other => return other,
        }
    }
    // Put back between the two reads?
    store.read(&key).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::PackBuilder;
    use crate::store::{LocalStore, Overwrite};

    /// Writes one pack of `contents` into `store`; returns its name.
    async fn put_pack(store: &LocalStore, contents: &[&[u8]]) -> Digest {
        let mut builder = PackBuilder::default();
        for content in contents {
            builder.add(Digest::of(content), content);
        }
        let pack = builder.finish();
        store
            .put(&pack_key(&pack.name), pack.bytes, Overwrite::Deny)
            .await
            .unwrap();
        pack.name
    }

    /// A pack whose tail is damaged is left out (its objects read as missing, never as
    /// whatever its index claims); the other packs are used.
    #[tokio::test]
    async fn a_pack_with_a_damaged_tail_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let store = LocalStore::open(root.clone()).await.unwrap();
        let mut names = Vec::new();
        for content in [&b"good"[..], b"damaged"] {
            names.push(put_pack(&store, &[content]).await);
        }
        let path = root.join(pack_key(&names[1]));
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 60] ^= 1; // in the index, covered by the checksum
        std::fs::write(&path, bytes).unwrap();
        let objects = Objects::new(None);
        objects.refresh(&store).await.unwrap();
        assert!(objects.locate(&Digest::of(b"good")).is_some());
        assert!(objects.locate(&Digest::of(b"damaged")).is_none());
        let err = objects
            .read(&store, &Digest::of(b"damaged"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    }

    /// A refresh keeps the indexes of the packs of its listing only: a pack gc deleted
    /// (or one read from the trash) is not held for the life of the process.
    #[tokio::test]
    async fn a_refresh_forgets_the_indexes_of_packs_no_longer_listed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let store = LocalStore::open(root.clone()).await.unwrap();
        let objects = Objects::new(Some(dir.path().join("indexes")));
        let mut names = Vec::new();
        for round in 0..10u8 {
            names.push(put_pack(&store, &[&[round]]).await);
            objects.refresh(&store).await.unwrap();
        }
        for name in &names[..9] {
            std::fs::remove_file(root.join(pack_key(name))).unwrap();
        }
        objects.refresh(&store).await.unwrap();
        assert_eq!(
            objects.held(),
            (1, 1),
            "indexes and locations held for one listed pack"
        );
        assert!(objects.locate(&Digest::of(&[9])).is_some());
        assert!(objects.locate(&Digest::of(&[0])).is_none());
    }

    /// Neighbours share a range read; a gap over 64 KiB splits it; what no pack holds is
    /// left for single reads; each object comes back with its own bytes.
    #[tokio::test]
    async fn neighbours_are_read_together_and_split_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("store")).await.unwrap();
        let big = vec![7u8; 100 << 10];
        let contents: [&[u8]; 4] = [b"a = 1\n", b"b = 2\n", &big, b"c = 3\n"];
        let pack = put_pack(&store, &contents).await;
        let objects = Objects::new(Some(dir.path().join("indexes")));
        objects.refresh(&store).await.unwrap();
        let absent = Digest::of(b"absent");
        let wanted = [contents[0], contents[1], contents[3]].map(Digest::of);
        let (batches, rest) = objects.batches(wanted.into_iter().chain([absent]));
        assert_eq!(rest, [absent]);
        assert_eq!(
            batches.len(),
            2,
            "a and b together, c past the 100 KiB object"
        );
        let mut read = Vec::new();
        for batch in &batches {
            read.extend(objects.read_batch(&store, batch).await.unwrap());
        }
        for (digest, bytes) in read {
            assert_eq!(Digest::of(&bytes), digest);
        }
        assert!(
            dir.path().join("indexes").join(pack.to_string()).exists(),
            "a local copy of the index is kept"
        );
    }
}
