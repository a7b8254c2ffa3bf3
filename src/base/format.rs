//! The on-store format: content-addressed objects and numbered generation manifests
//! (specified in `docs/DESIGN.md`, "Format (version 1)" and "Format 2: packs"; where
//! objects live is in [`crate::objects`]).
//!
//! A [`Manifest`] is validated whole when built and when parsed: paths normalised and
//! unique, no file/directory clash, and two blake3 digests that must match what they cover
//! (the [`TreeId`] over the entries, the manifest id over the header and the tree id). A
//! manifest failing any check is [`FormatError`], never half-used.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::store::relative_path_problem;

/// The format version this build writes: 2, objects may be in packs. A format-1 binary
/// refuses such a manifest with "upgrade dagfs" instead of looking for loose objects.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format version this build reads (1: loose objects only).
pub const OLDEST_FORMAT_VERSION: u32 = 1;

/// Store directory of content-addressed objects: `objects/<first two hex digits>/<hash>`.
pub const OBJECTS_DIR: &str = "objects";

/// Store directory of generation manifests: `generations/<20-digit number>`.
pub const GENERATIONS_DIR: &str = "generations";

/// A manifest or path that breaks the format's rules.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// A path in the tree is not a normalised relative path.
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The offending path.
        path: String,
        /// What rule it breaks.
        reason: &'static str,
    },
    /// Two entries share a path.
    #[error("duplicate path {0:?}")]
    DuplicatePath(String),
    /// A path is both a file and a directory (`a` and `a/b`).
    #[error("path {file:?} is a file and also the parent directory of {child:?}")]
    FileDirClash {
        /// The file.
        file: String,
        /// An entry below it.
        child: String,
    },
    /// The bytes are not a manifest of a format this build reads.
    #[error("corrupt manifest: {0}")]
    Corrupt(String),
    /// A digest does not match what it covers.
    #[error("corrupt manifest: {what} is {stored} but the content hashes to {computed}")]
    DigestMismatch {
        /// `tree id` or `manifest id`.
        what: &'static str,
        /// The digest the manifest carries.
        stored: Digest,
        /// The digest of its content.
        computed: Digest,
    },
    /// A format version this build does not know.
    #[error("manifest format {0} is newer than this dagfs understands ({FORMAT_VERSION}); upgrade dagfs")]
    UnsupportedVersion(u32),
}

/// A blake3 digest, written as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The blake3 digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<blake3::Hash> for Digest {
    fn from(hash: blake3::Hash) -> Digest {
        Digest(*hash.as_bytes())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(blake3::Hash::from_bytes(self.0).to_hex().as_str())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl From<[u8; 32]> for Digest {
    fn from(bytes: [u8; 32]) -> Digest {
        Digest(bytes)
    }
}

impl FromStr for Digest {
    type Err = FormatError;

    fn from_str(s: &str) -> Result<Digest, FormatError> {
        // blake3 also accepts upper case; the format is lower case only, so there is exactly
        // one spelling of every digest.
        if s.len() != 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(FormatError::Corrupt(format!(
                "{s:?} is not 64 lowercase hex digits"
            )));
        }
        blake3::Hash::from_hex(s)
            .map(Digest::from)
            .map_err(|e| FormatError::Corrupt(e.to_string()))
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Digest, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The identity of a tree: blake3 over the canonical encoding of its sorted entries. Two
/// manifests with the same tree id describe byte-identical files with identical metadata.
pub type TreeId = Digest;

/// One file of a generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Path relative to the DAG folder, `/`-separated, normalised.
    pub path: String,
    /// Unix permission bits (`0o644`, `0o755`).
    pub mode: u32,
    /// Length in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// blake3 of the content; also the object's key.
    pub blake3: Digest,
}

/// An immutable, numbered generation: who published what, when, on top of which parent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version ([`FORMAT_VERSION`]).
    pub format: u32,
    /// Generation number, from 1.
    pub generation: u64,
    /// The generation this one was built on; `None` for the first.
    pub parent: Option<u64>,
    /// Publication time, UTC, RFC 3339.
    pub created: String,
    /// `user@host` of the publisher.
    pub author: String,
    /// Free-form message; empty when none was given.
    pub message: String,
    /// Digest of the entries.
    pub tree_id: TreeId,
    /// Digest of the header fields above and the tree id.
    pub manifest_id: Digest,
    /// Files sorted by path.
    pub entries: Vec<Entry>,
}

/// The header of a manifest to be built: everything but the entries and digests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Generation number, from 1.
    pub generation: u64,
    /// The generation this one was built on.
    pub parent: Option<u64>,
    /// Publication time, UTC, RFC 3339.
    pub created: String,
    /// `user@host` of the publisher.
    pub author: String,
    /// Free-form message.
    pub message: String,
}

impl Manifest {
    /// Builds a manifest from a header and entries in any order: sorts and validates the
    /// entries and computes both digests.
    pub fn new(header: Header, mut entries: Vec<Entry>) -> Result<Manifest, FormatError> {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        check_entries(&entries)?;
        let tree_id = tree_id(&entries);
        let mut manifest = Manifest {
            format: FORMAT_VERSION,
            generation: header.generation,
            parent: header.parent,
            created: header.created,
            author: header.author,
            message: header.message,
            tree_id,
            manifest_id: tree_id,
            entries,
        };
        manifest.manifest_id = manifest.header_digest();
        Ok(manifest)
    }

    /// Serialises the manifest (JSON, one entry per line, so `hadoop fs -cat` stays readable).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a manifest always serialises");
        out.push(b'\n');
        out
    }

    /// Parses and validates manifest bytes: format version, paths, order, uniqueness, and
    /// both digests.
    pub fn from_bytes(bytes: &[u8]) -> Result<Manifest, FormatError> {
        #[derive(Deserialize)]
        struct Version {
            format: u32,
        }
        let version: Version =
            serde_json::from_slice(bytes).map_err(|e| FormatError::Corrupt(e.to_string()))?;
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version.format) {
            return Err(if version.format > FORMAT_VERSION {
                FormatError::UnsupportedVersion(version.format)
            } else {
                FormatError::Corrupt(format!("unknown format version {}", version.format))
            });
        }
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| FormatError::Corrupt(e.to_string()))?;
        if manifest.entries.windows(2).any(|w| w[0].path > w[1].path) {
            return Err(FormatError::Corrupt(
                "entries are not sorted by path".into(),
            ));
        }
        check_entries(&manifest.entries)?;
        let computed = tree_id(&manifest.entries);
        if computed != manifest.tree_id {
            return Err(FormatError::DigestMismatch {
                what: "tree id",
                stored: manifest.tree_id,
                computed,
            });
        }
        let computed = manifest.header_digest();
        if computed != manifest.manifest_id {
            return Err(FormatError::DigestMismatch {
                what: "manifest id",
                stored: manifest.manifest_id,
                computed,
            });
        }
        Ok(manifest)
    }

    /// blake3 over the canonical encoding of the header and the tree id.
    fn header_digest(&self) -> Digest {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"dagfs-manifest-v1\0");
        hasher.update(&self.format.to_le_bytes());
        hasher.update(&self.generation.to_le_bytes());
        match self.parent {
            Some(parent) => hasher.update(&[1]).update(&parent.to_le_bytes()),
            None => hasher.update(&[0]),
        };
        for text in [&self.created, &self.author, &self.message] {
            hasher.update(&(text.len() as u64).to_le_bytes());
            hasher.update(text.as_bytes());
        }
        hasher.update(self.tree_id.as_bytes());
        hasher.finalize().into()
    }
}

/// blake3 over the canonical encoding of sorted entries: for each, the path's length and
/// bytes, then mode, size, mtime and content digest, all little-endian.
pub fn tree_id(entries: &[Entry]) -> TreeId {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"dagfs-tree-v1\0");
    hasher.update(&(entries.len() as u64).to_le_bytes());
    for entry in entries {
        hasher.update(&(entry.path.len() as u64).to_le_bytes());
        hasher.update(entry.path.as_bytes());
        hasher.update(&entry.mode.to_le_bytes());
        hasher.update(&entry.size.to_le_bytes());
        hasher.update(&entry.mtime_ns.to_le_bytes());
        hasher.update(entry.blake3.as_bytes());
    }
    hasher.finalize().into()
}

/// Checks one path: relative, `/`-separated, no empty, `.` or `..` component, no NUL.
pub fn check_path(path: &str) -> Result<(), FormatError> {
    let problem = if path.is_empty() {
        Some("empty")
    } else {
        relative_path_problem(path)
    };
    match problem {
        None => Ok(()),
        Some(reason) => Err(FormatError::InvalidPath {
            path: path.to_string(),
            reason,
        }),
    }
}

/// Checks sorted entries: every path valid, none repeated, no file that is also a directory,
/// and a byte total that fits in a `u64` (what `statfs` and the mount add up).
fn check_entries(entries: &[Entry]) -> Result<(), FormatError> {
    let mut files = HashSet::with_capacity(entries.len());
    let mut total: u64 = 0;
    for entry in entries {
        check_path(&entry.path)?;
        total = total.checked_add(entry.size).ok_or_else(|| {
            FormatError::Corrupt("the files' sizes add up to more than 2^64 bytes".into())
        })?;
        if !files.insert(entry.path.as_str()) {
            return Err(FormatError::DuplicatePath(entry.path.clone()));
        }
    }
    for entry in entries {
        let mut prefix = entry.path.as_str();
        while let Some((parent, _)) = prefix.rsplit_once('/') {
            if files.contains(parent) {
                return Err(FormatError::FileDirClash {
                    file: parent.to_string(),
                    child: entry.path.clone(),
                });
            }
            prefix = parent;
        }
    }
    Ok(())
}

/// Store key of the object with content digest `digest`.
pub fn object_key(digest: &Digest) -> String {
    let hex = digest.to_string();
    format!("{OBJECTS_DIR}/{}/{hex}", &hex[..2])
}

/// Store key of generation `generation`'s manifest; zero-padded so keys sort numerically.
pub fn manifest_key(generation: u64) -> String {
    format!("{GENERATIONS_DIR}/{generation:020}")
}

/// The generation number a manifest file name stands for, if it is one.
pub fn parse_manifest_name(name: &str) -> Option<u64> {
    (name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::testutil::entry_for as entry;

    fn header(generation: u64) -> Header {
        Header {
            generation,
            parent: generation.checked_sub(1).filter(|&p| p > 0),
            created: "2026-11-24T17:00:00Z".into(),
            author: "alice@authoring-1".into(),
            message: "add etl".into(),
        }
    }

    #[test]
    fn round_trips_and_sorts() {
        let m = Manifest::new(header(2), vec![entry("b.py", b"b"), entry("a/x.py", b"x")]).unwrap();
        assert_eq!(m.entries[0].path, "a/x.py");
        assert_eq!(Manifest::from_bytes(&m.to_bytes()).unwrap(), m);
    }

    #[test]
    fn tree_id_ignores_header_and_input_order() {
        let a = Manifest::new(header(1), vec![entry("a.py", b"1"), entry("b.py", b"2")]).unwrap();
        let b = Manifest::new(header(7), vec![entry("b.py", b"2"), entry("a.py", b"1")]).unwrap();
        assert_eq!(a.tree_id, b.tree_id);
        assert_ne!(a.manifest_id, b.manifest_id);
        let c = Manifest::new(header(1), vec![entry("a.py", b"1"), entry("b.py", b"3")]).unwrap();
        assert_ne!(a.tree_id, c.tree_id);
    }

    #[test]
    fn rejects_bad_trees() {
        let cases: Vec<(Vec<Entry>, &str)> = vec![
            (vec![entry("../x.py", b"")], "'.' or '..'"),
            (vec![entry("/etc/passwd", b"")], "absolute"),
            (vec![entry("a//b.py", b"")], "empty component"),
            (vec![entry("a/", b"")], "empty component"),
            (vec![entry("a\0b", b"")], "NUL"),
            (vec![entry("a.py", b"1"), entry("a.py", b"2")], "duplicate"),
            (
                vec![
                    entry("a", b"1"),
                    entry("a.py", b""),
                    entry("a/b/c.py", b"2"),
                ],
                "also the parent",
            ),
        ];
        for (entries, want) in cases {
            let err = Manifest::new(header(1), entries).unwrap_err().to_string();
            assert!(err.contains(want), "{err} should mention {want}");
        }
    }

    #[test]
    fn parsing_rejects_tampering() {
        let m = Manifest::new(header(3), vec![entry("a.py", b"1")]).unwrap();
        let text = String::from_utf8(m.to_bytes()).unwrap();
        let tampered = [
            text.replace("\"a.py\"", "\"../a.py\""),
            text.replace("\"a.py\"", "\"b.py\""),
            text.replace("add etl", "add ETL"),
            text.replace("\"generation\": 3", "\"generation\": 4"),
            text.replace("\"format\": 2", "\"format\": 9"),
            text.replace("\"format\": 2", "\"format\": 1"),
            text[..text.len() / 2].to_string(),
            text.replace("\"size\": 1", "\"size\": 1, \"extra\": 0"),
        ];
        for bytes in tampered {
            assert!(
                Manifest::from_bytes(bytes.as_bytes()).is_err(),
                "accepted:\n{bytes}"
            );
        }
    }

    /// A manifest of format 1 (written by an older dagfs) is read, with its digest over
    /// format 1, and keeps its tree id.
    #[test]
    fn a_format_1_manifest_is_still_read() {
        let mut m = Manifest::new(header(3), vec![entry("a.py", b"1")]).unwrap();
        let tree_id = m.tree_id;
        m.format = 1;
        m.manifest_id = m.header_digest();
        let parsed = Manifest::from_bytes(&m.to_bytes()).unwrap();
        assert_eq!((parsed.format, parsed.tree_id), (1, tree_id));
    }

    #[test]
    fn a_byte_total_past_u64_is_rejected() {
        let mut a = entry("a", b"");
        a.size = u64::MAX;
        let mut b = entry("b", b"");
        b.size = 1;
        let err = Manifest::new(header(1), vec![a, b]).unwrap_err();
        assert!(err.to_string().contains("2^64"), "{err}");
    }

    #[test]
    fn keys() {
        let d = Digest::of(b"x");
        assert_eq!(
            object_key(&d),
            format!("objects/{}/{d}", &d.to_string()[..2])
        );
        assert_eq!(manifest_key(42), "generations/00000000000000000042");
        assert_eq!(parse_manifest_name("00000000000000000042"), Some(42));
        assert_eq!(parse_manifest_name("42"), None);
        assert_eq!(parse_manifest_name("0000000000000000004x"), None);
        assert!("ABC".parse::<Digest>().is_err());
        assert!(d.to_string().to_uppercase().parse::<Digest>().is_err());
    }

    proptest! {
        /// Flipping any one byte of a manifest is detected or harmless: the parse either fails
        /// or yields exactly the original manifest (JSON whitespace).
        #[test]
        fn any_byte_flip_is_detected(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let m = Manifest::new(header(5), vec![entry("dags/a.py", b"1"), entry("dags/b.py", b"22")]).unwrap();
            let mut bytes = m.to_bytes();
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            if let Ok(parsed) = Manifest::from_bytes(&bytes) {
                prop_assert_eq!(parsed, m);
            }
        }

        /// Valid trees round-trip whatever their paths and order.
        #[test]
        fn valid_trees_round_trip(names in prop::collection::btree_set("[a-z]{1,8}(/[a-z0-9_.-]{1,8}){0,2}\\.py", 0..20)) {
            let entries: Vec<Entry> = names.iter().map(|n| entry(n, n.as_bytes())).collect();
            if let Ok(m) = Manifest::new(header(1), entries) {
                prop_assert_eq!(Manifest::from_bytes(&m.to_bytes()).unwrap(), m);
            }
        }
    }
}
