//! Pack files (format 2, docs/DESIGN.md "Format 2: packs"): many objects in one immutable
//! store file named by the blake3 of its bytes, with their index in the file's tail.
//!
//! ```text
//! "DAGFSPAK" u32 version                       header, HEADER_LEN bytes
//! object bytes, back to back
//! index: u64 count, count x (digest[32], offset u64, length u64), sorted by digest
//! footer: u64 index offset, u64 index length, checksum[32], u32 version, "DGPK"
//!         (checksum: blake3 over the index and the two u64s before it)
//! ```
//!
//! [`PackIndex::from_tail`] checks everything it reads before using it: a damaged or
//! truncated tail is a [`PackError`], never a panic or an allocation sized by the input.
//! Object bytes are not covered by the index: readers hash every object they read.

use bytes::Bytes;

use crate::format::Digest;
use crate::store::{ErrorKind, Overwrite, Store, StoreResult};

/// Store directory of pack files: `packs/<64 hex>` (flat: one listing finds them all).
pub const PACKS_DIR: &str = "packs";
/// The pack version this build writes and reads.
pub const PACK_VERSION: u32 = 1;
/// A publish starts a new pack before one would hold more object bytes than this.
pub const MAX_PACK_BYTES: u64 = 64 << 20;
/// ... or more objects than this (an index of at most 3 MiB).
pub const MAX_PACK_OBJECTS: usize = 65_536;
/// Objects larger than this are not packed: they stay loose objects in `objects/`.
pub const MAX_PACKED_OBJECT: u64 = 16 << 20;
/// Length of the header.
pub const HEADER_LEN: u64 = 12;
/// Length of the footer.
pub const FOOTER_LEN: u64 = 56;
/// How much of a pack's end a reader fetches at first: the footer and, usually, the whole
/// index (1,300 objects).
pub const TAIL_GUESS: u64 = 64 << 10;

const HEADER_MAGIC: &[u8; 8] = b"DAGFSPAK";
const FOOTER_MAGIC: &[u8; 4] = b"DGPK";
const INDEX_ENTRY_LEN: u64 = 48;
const MAX_INDEX_LEN: u64 = 8 + INDEX_ENTRY_LEN * MAX_PACK_OBJECTS as u64;

/// A pack whose bytes break the format.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PackError {
    /// The bytes are not a pack index of this format.
    #[error("corrupt pack index: {0}")]
    Corrupt(String),
    /// A pack version this build does not know.
    #[error(
        "pack version {0} is newer than this dagfs understands ({PACK_VERSION}); upgrade dagfs"
    )]
    UnsupportedVersion(u32),
}

fn corrupt(reason: impl Into<String>) -> PackError {
    PackError::Corrupt(reason.into())
}

/// Where an object's bytes are in its pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Offset from the start of the pack.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// The footer: where the index is and what it hashes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footer {
    /// Offset of the index from the start of the pack.
    pub index_offset: u64,
    /// Length of the index.
    pub index_len: u64,
    checksum: [u8; 32],
}

impl Footer {
    /// Parses the last [`FOOTER_LEN`] bytes of `tail` (the end of a pack).
    pub fn parse(tail: &[u8]) -> Result<Footer, PackError> {
        let start = tail.len().checked_sub(FOOTER_LEN as usize).ok_or_else(|| {
            corrupt(format!(
                "{} bytes is shorter than a footer ({FOOTER_LEN})",
                tail.len()
            ))
        })?;
        let f = &tail[start..];
        if &f[52..56] != FOOTER_MAGIC {
            return Err(corrupt("no pack footer at the end of the file"));
        }
        let version = u32::from_le_bytes(f[48..52].try_into().expect("4 bytes"));
        if version != PACK_VERSION {
            return Err(if version > PACK_VERSION {
                PackError::UnsupportedVersion(version)
            } else {
                corrupt(format!("unknown pack version {version}"))
            });
        }
        let footer = Footer {
            index_offset: u64::from_le_bytes(f[0..8].try_into().expect("8 bytes")),
            index_len: u64::from_le_bytes(f[8..16].try_into().expect("8 bytes")),
            checksum: f[16..48].try_into().expect("32 bytes"),
        };
        if footer.index_len > MAX_INDEX_LEN || footer.index_len < 8 {
            return Err(corrupt(format!(
                "index length {} is outside 8..={MAX_INDEX_LEN}",
                footer.index_len
            )));
        }
        if footer.index_offset < HEADER_LEN {
            return Err(corrupt(format!(
                "index offset {} is inside the header",
                footer.index_offset
            )));
        }
        Ok(footer)
    }

    /// The length of the tail [`PackIndex::from_tail`] needs: the index and the footer.
    pub fn tail_len(&self) -> u64 {
        self.index_len + FOOTER_LEN
    }

    /// The length of the whole pack this footer describes (`None`: it does not fit in u64).
    pub fn pack_len(&self) -> Option<u64> {
        self.index_offset.checked_add(self.tail_len())
    }
}

/// The index of one pack: which objects it holds, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackIndex {
    entries: Vec<(Digest, Span)>,
    pack_len: u64,
}

impl PackIndex {
    /// Parses and validates a pack's tail: exactly its index followed by its footer.
    pub fn from_tail(tail: &[u8]) -> Result<PackIndex, PackError> {
        let footer = Footer::parse(tail)?;
        if tail.len() as u64 != footer.tail_len() {
            return Err(corrupt(format!(
                "the tail has {} bytes, the footer says {}",
                tail.len(),
                footer.tail_len()
            )));
        }
        let pack_len = footer
            .pack_len()
            .ok_or_else(|| corrupt("the pack length overflows"))?;
        let index = &tail[..footer.index_len as usize];
        if checksum(index, footer.index_offset) != footer.checksum {
            return Err(corrupt("the index does not match its checksum"));
        }
        let count = u64::from_le_bytes(index[..8].try_into().expect("8 bytes"));
        if Some(footer.index_len) != count.checked_mul(INDEX_ENTRY_LEN).map(|n| n + 8) {
            return Err(corrupt(format!(
                "{count} objects do not fill an index of {} bytes",
                footer.index_len
            )));
        }
        let mut entries: Vec<(Digest, Span)> = Vec::with_capacity(count as usize);
        for raw in index[8..].chunks_exact(INDEX_ENTRY_LEN as usize) {
            let digest = Digest::from(<[u8; 32]>::try_from(&raw[..32]).expect("32 bytes"));
            let span = Span {
                offset: u64::from_le_bytes(raw[32..40].try_into().expect("8 bytes")),
                len: u64::from_le_bytes(raw[40..48].try_into().expect("8 bytes")),
            };
            if entries.last().is_some_and(|(last, _)| *last >= digest) {
                return Err(corrupt("index digests are not strictly increasing"));
            }
            let end = span.offset.checked_add(span.len);
            if span.offset < HEADER_LEN || end.is_none_or(|end| end > footer.index_offset) {
                return Err(corrupt(format!(
                    "object {digest} at {}+{} is outside the object area {HEADER_LEN}..{}",
                    span.offset, span.len, footer.index_offset
                )));
            }
            entries.push((digest, span));
        }
        Ok(PackIndex { entries, pack_len })
    }

    /// Where `digest` is in the pack, if it is there.
    pub fn get(&self, digest: &Digest) -> Option<Span> {
        self.entries
            .binary_search_by(|(d, _)| d.cmp(digest))
            .ok()
            .map(|i| self.entries[i].1)
    }

    /// The objects of the pack, sorted by digest.
    pub fn objects(&self) -> impl Iterator<Item = (&Digest, &Span)> {
        self.entries.iter().map(|(d, s)| (d, s))
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the pack holds no object.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The length of the pack this index belongs to.
    pub fn pack_len(&self) -> u64 {
        self.pack_len
    }
}

/// A finished pack: its name (the blake3 of `bytes`), its bytes and its index.
#[derive(Clone, Debug)]
pub struct Pack {
    /// blake3 of the whole pack; its key is [`pack_key`] of this.
    pub name: Digest,
    /// The whole file.
    pub bytes: Bytes,
    /// What it holds.
    pub index: PackIndex,
}

impl Pack {
    /// Writes the pack under its name (staged and renamed by `put`). A pack of that name
    /// already there holds the same bytes.
    pub async fn upload(self, store: &dyn Store) -> StoreResult<()> {
        match store
            .put(&pack_key(&self.name), self.bytes, Overwrite::Deny)
            .await
        {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
            other => other,
        }
    }
}

/// Builds a pack from objects added one by one.
#[derive(Debug)]
pub struct PackBuilder {
    bytes: Vec<u8>,
    entries: Vec<(Digest, Span)>,
}

impl Default for PackBuilder {
    fn default() -> Self {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(HEADER_MAGIC);
        bytes.extend_from_slice(&PACK_VERSION.to_le_bytes());
        PackBuilder {
            bytes,
            entries: Vec::new(),
        }
    }
}

impl PackBuilder {
    /// Whether an object of `len` bytes fits without passing [`MAX_PACK_BYTES`] or
    /// [`MAX_PACK_OBJECTS`]; always true for an empty pack.
    pub fn fits(&self, len: u64) -> bool {
        self.entries.is_empty()
            || (self.entries.len() < MAX_PACK_OBJECTS
                && self.object_bytes().saturating_add(len) <= MAX_PACK_BYTES)
    }

    /// Bytes of objects added so far.
    pub fn object_bytes(&self) -> u64 {
        self.bytes.len() as u64 - HEADER_LEN
    }

    /// Whether no object was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends an object with content digest `digest`.
    pub fn add(&mut self, digest: Digest, content: &[u8]) {
        let span = Span {
            offset: self.bytes.len() as u64,
            len: content.len() as u64,
        };
        self.bytes.extend_from_slice(content);
        self.entries.push((digest, span));
    }

    /// Appends the index and footer; a digest added twice is indexed once.
    pub fn finish(mut self) -> Pack {
        self.entries.sort_by_key(|e| e.0);
        self.entries.dedup_by(|a, b| a.0 == b.0);
        let index_offset = self.bytes.len() as u64;
        let mut index = Vec::with_capacity(8 + self.entries.len() * INDEX_ENTRY_LEN as usize);
        index.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for (digest, span) in &self.entries {
            index.extend_from_slice(digest.as_bytes());
            index.extend_from_slice(&span.offset.to_le_bytes());
            index.extend_from_slice(&span.len.to_le_bytes());
        }
        self.bytes.extend_from_slice(&index);
        self.bytes.extend_from_slice(&index_offset.to_le_bytes());
        self.bytes
            .extend_from_slice(&(index.len() as u64).to_le_bytes());
        self.bytes
            .extend_from_slice(&checksum(&index, index_offset));
        self.bytes.extend_from_slice(&PACK_VERSION.to_le_bytes());
        self.bytes.extend_from_slice(FOOTER_MAGIC);
        let pack_len = self.bytes.len() as u64;
        Pack {
            name: Digest::of(&self.bytes),
            bytes: Bytes::from(self.bytes),
            index: PackIndex {
                entries: self.entries,
                pack_len,
            },
        }
    }
}

/// The footer's checksum: blake3 over the index and the footer's two positions, so a
/// flipped bit anywhere in a tail is caught (the version and magic are checked by value).
fn checksum(index: &[u8], index_offset: u64) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(index);
    hasher.update(&index_offset.to_le_bytes());
    hasher.update(&(index.len() as u64).to_le_bytes());
    *hasher.finalize().as_bytes()
}

/// Store key of the pack named `name`.
pub fn pack_key(name: &Digest) -> String {
    format!("{PACKS_DIR}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn build(objects: &[Vec<u8>]) -> Pack {
        let mut builder = PackBuilder::default();
        for object in objects {
            builder.add(Digest::of(object), object);
        }
        builder.finish()
    }

    fn tail(pack: &Pack) -> &[u8] {
        let footer = Footer::parse(&pack.bytes).unwrap();
        &pack.bytes[(pack.bytes.len() as u64 - footer.tail_len()) as usize..]
    }

    #[test]
    fn round_trips_and_finds_every_object() {
        let objects = vec![b"a = 1\n".to_vec(), Vec::new(), b"b".repeat(1000)];
        let pack = build(&objects);
        assert_eq!(pack.name, Digest::of(&pack.bytes));
        let index = PackIndex::from_tail(tail(&pack)).unwrap();
        assert_eq!(index, pack.index);
        assert_eq!(index.pack_len(), pack.bytes.len() as u64);
        for object in &objects {
            let span = index.get(&Digest::of(object)).unwrap();
            let range = span.offset as usize..(span.offset + span.len) as usize;
            assert_eq!(&pack.bytes[range], &object[..]);
        }
        assert_eq!(index.get(&Digest::of(b"absent")), None);
    }

    #[test]
    fn a_digest_added_twice_is_indexed_once() {
        let pack = build(&[b"x".to_vec(), b"x".to_vec()]);
        assert_eq!(pack.index.len(), 1);
        assert_eq!(
            PackIndex::from_tail(tail(&pack)).unwrap().len(),
            1,
            "the parser accepts what the builder writes"
        );
    }

    #[test]
    fn bounds_start_a_new_pack() {
        let mut builder = PackBuilder::default();
        assert!(
            builder.fits(MAX_PACK_BYTES * 2),
            "an empty pack takes anything"
        );
        builder.add(Digest::of(b"x"), b"x");
        assert!(builder.fits(MAX_PACK_BYTES - 1));
        assert!(!builder.fits(MAX_PACK_BYTES));
    }

    #[test]
    fn damaged_tails_are_rejected_with_a_reason() {
        let pack = build(&[b"one".to_vec(), b"two".to_vec()]);
        let good = tail(&pack).to_vec();
        let n = good.len();
        let with = |at: usize, value: &[u8]| {
            let mut bytes = good.clone();
            bytes[at..at + value.len()].copy_from_slice(value);
            bytes
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[1..].to_vec(), "the tail has"),
            (good[..n - 1].to_vec(), "no pack footer"),
            (Vec::new(), "shorter than a footer"),
            (with(n - 8, &2u32.to_le_bytes()), "upgrade dagfs"),
            (with(n - 8, &0u32.to_le_bytes()), "unknown pack version"),
            (with(n - 48, &u64::MAX.to_le_bytes()), "index length"),
            (with(n - 56, &0u64.to_le_bytes()), "inside the header"),
            (with(0, &[9]), "checksum"),
        ];
        for (bytes, want) in cases {
            let err = PackIndex::from_tail(&bytes).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should say {want:?}");
        }
    }

    /// Writes an index with a valid checksum around `entries`, so the checks behind the
    /// checksum are reached.
    fn forged(index_offset: u64, entries: &[(Digest, u64, u64)]) -> Vec<u8> {
        let mut index = (entries.len() as u64).to_le_bytes().to_vec();
        for (digest, offset, len) in entries {
            index.extend_from_slice(digest.as_bytes());
            index.extend_from_slice(&offset.to_le_bytes());
            index.extend_from_slice(&len.to_le_bytes());
        }
        let mut tail = index.clone();
        tail.extend_from_slice(&index_offset.to_le_bytes());
        tail.extend_from_slice(&(index.len() as u64).to_le_bytes());
        tail.extend_from_slice(&checksum(&index, index_offset));
        tail.extend_from_slice(&PACK_VERSION.to_le_bytes());
        tail.extend_from_slice(FOOTER_MAGIC);
        tail
    }

    #[test]
    fn forged_indexes_behind_a_valid_checksum_are_rejected() {
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                forged(100, &[(hi, 12, 1), (lo, 13, 1)]),
                "strictly increasing",
            ),
            (
                forged(100, &[(lo, 12, 1), (lo, 13, 1)]),
                "strictly increasing",
            ),
            (forged(100, &[(lo, 0, 1)]), "outside the object area"),
            (forged(100, &[(lo, 90, 11)]), "outside the object area"),
            (forged(100, &[(lo, u64::MAX, 2)]), "outside the object area"),
            (forged(u64::MAX - 10, &[(lo, 12, 1)]), "overflows"),
        ];
        for (bytes, want) in cases {
            let err = PackIndex::from_tail(&bytes).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should say {want:?}");
        }
        // A count that does not match the length (checksum valid).
        let mut bytes = forged(100, &[(lo, 12, 1)]);
        bytes[..8].copy_from_slice(&2u64.to_le_bytes());
        let index_len = 8 + 48;
        let sum = checksum(&bytes[..index_len], 100);
        bytes[index_len + 16..index_len + 48].copy_from_slice(&sum);
        let err = PackIndex::from_tail(&bytes).unwrap_err().to_string();
        assert!(err.contains("do not fill"), "{err}");
    }

    fn objects() -> impl Strategy<Value = Vec<Vec<u8>>> {
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..12)
    }

    proptest! {
        /// Whatever objects go in, the tail parses back to the index the builder made, and
        /// each span holds its object's bytes.
        #[test]
        fn any_pack_round_trips(objects in objects()) {
            let pack = build(&objects);
            let index = PackIndex::from_tail(tail(&pack)).unwrap();
            prop_assert_eq!(&index, &pack.index);
            for object in &objects {
                let span = index.get(&Digest::of(object)).unwrap();
                let range = span.offset as usize..(span.offset + span.len) as usize;
                prop_assert_eq!(&pack.bytes[range], &object[..]);
            }
        }

        /// Any truncation of a tail, from either end, is rejected (never a panic).
        #[test]
        fn any_truncated_tail_is_rejected(objects in objects(), cut in any::<prop::sample::Index>(), front in any::<bool>()) {
            let pack = build(&objects);
            let good = tail(&pack);
            let k = 1 + cut.index(good.len());
            let cut = if front { &good[k..] } else { &good[..good.len() - k] };
            prop_assert!(PackIndex::from_tail(cut).is_err());
        }

        /// Any flipped bit of a tail is rejected or yields exactly the same index.
        #[test]
        fn any_bit_flip_in_a_tail_is_detected(objects in objects(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let pack = build(&objects);
            let mut bytes = tail(&pack).to_vec();
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            if let Ok(index) = PackIndex::from_tail(&bytes) {
                prop_assert_eq!(index, pack.index);
            }
        }

        /// Arbitrary bytes never panic the parser.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = PackIndex::from_tail(&bytes);
        }
    }
}
