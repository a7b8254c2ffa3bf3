//! Integrity checks by content hash: a local folder or a mount against a generation, and the
//! store against itself (manifests, objects, the mirror).
//!
//! A check either completes with a [`Report`] (its findings are the differences) or fails
//! with [`VerifyError`] when it could not check at all (store unreachable, manifest corrupt).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use futures::stream::{self, StreamExt, TryStreamExt};
use serde::Serialize;

use crate::format::{Digest, Entry, Manifest};
use crate::generations::{self, diff, Change, GenerationError};
use crate::mirror::MIRROR_DIR;
use crate::mount::state::{StateDir, StateError};
use crate::objects::Objects;
use crate::scan::{scan_cached, ScanError, ScanOptions};
use crate::store::{files_under, ErrorKind, Store, StoreError};

/// Objects checked at once.
const CONCURRENCY: usize = 16;

/// A check that could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A generation could not be read.
    #[error(transparent)]
    Generation(#[from] GenerationError),
    /// The local folder could not be scanned.
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// The mount's state could not be read (not running, exited).
    #[error(transparent)]
    Mount(#[from] StateError),
}

/// One difference found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What kind of difference.
    pub kind: FindingKind,
    /// The DAG path (or object key) it is about.
    pub path: String,
    /// Details for people.
    pub detail: String,
}

/// Kinds of differences.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// In the folder, not in the generation.
    Added,
    /// In both, with other content or metadata.
    Changed,
    /// In the generation, not in the folder.
    Removed,
    /// An object a generation references is not in the store.
    MissingObject,
    /// An object has the wrong size or (deep) the wrong bytes.
    CorruptObject,
    /// The mirror lacks a file of the head, or holds other bytes.
    MirrorDiffers,
    /// The mirror holds a file the head does not have.
    MirrorExtra,
    /// A mount serves another generation than expected (or than the head).
    WrongGeneration,
}

/// What a check found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// The generation checked against (the head unless one was named).
    pub generation: u64,
    /// Its tree id.
    pub tree_id: String,
    /// Generations whose manifests were checked.
    pub generations_checked: Vec<u64>,
    /// Files or objects compared.
    pub checked: usize,
    /// Bytes hashed.
    pub bytes_hashed: u64,
    /// The differences; empty means identical.
    pub findings: Vec<Finding>,
    /// Objects no checked generation references (normal between `gc` runs).
    pub orphans: usize,
}

impl Report {
    /// The report of files (a folder's or a mount's, all hashed) checked against `manifest`.
    fn of_files(manifest: &Manifest, files: &[Entry], findings: Vec<Finding>) -> Report {
        Report {
            generation: manifest.generation,
            tree_id: manifest.tree_id.to_string(),
            generations_checked: vec![manifest.generation],
            checked: files.len(),
            bytes_hashed: files.iter().map(|e| e.size).sum(),
            findings,
            orphans: 0,
        }
    }
}

async fn target(store: &dyn Store, generation: Option<u64>) -> Result<Manifest, VerifyError> {
    let generation = generations::given_or_head(store, generation).await?;
    Ok(generations::load(store, generation).await?)
}

/// The folder `dir` against generation `generation` (the head by default), with the same
/// ignore rules as `push`: what the next push would publish.
pub async fn verify_local(
    store: &dyn Store,
    dir: &Path,
    generation: Option<u64>,
    options: &ScanOptions,
) -> Result<Report, VerifyError> {
    let manifest = target(store, generation).await?;
    let (dir, options) = (dir.to_path_buf(), options.clone());
    let files = match tokio::task::spawn_blocking(move || scan_cached(&dir, &options)).await {
        Ok(files) => files?,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    };
    let local: Vec<Entry> = files.iter().map(|f| f.entry.clone()).collect();
    let findings = tree_findings(&manifest.entries, &local, "the folder");
    Ok(Report::of_files(&manifest, &local, findings))
}

/// The differences between the generation's entries and what a folder or mount (`place`)
/// holds.
fn tree_findings(expected: &[Entry], actual: &[Entry], place: &str) -> Vec<Finding> {
    diff(expected, actual)
        .into_iter()
        .map(|change| match change {
            Change::Added(e) => finding(FindingKind::Added, &e.path, "not in the generation"),
            Change::Removed(e) => {
                finding(FindingKind::Removed, &e.path, &format!("not in {place}"))
            }
            Change::Changed(old, new) => finding(
                FindingKind::Changed,
                &new.path,
                &describe_change(&old, &new),
            ),
        })
        .collect()
}

/// What a dagfs mount serves against the generation it claims to serve (or `generation`),
/// read through the mount and hashed, plus whether that generation is the store's head.
pub async fn verify_mount(
    store: &dyn Store,
    mountpoint: &Path,
    states: &StateDir,
    generation: Option<u64>,
) -> Result<Report, VerifyError> {
    let state = states.read(mountpoint)?;
    let head = generations::head(store).await?;
    let expected = generations::given_or_head(store, generation.or(state.generation)).await?;
    let expected = generations::load(store, expected).await?;
    let root = mountpoint.to_path_buf();
    let mut served = match tokio::task::spawn_blocking(move || crate::scan::hash_tree(&root)).await
    {
        Ok(served) => served?,
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    };
    // A mount may show a file later than its manifest mtime, never earlier (DESIGN.md, "File
    // mtimes"): a later one is what the generation says.
    let published: HashMap<&str, i64> = expected
        .entries
        .iter()
        .map(|e| (e.path.as_str(), e.mtime_ns))
        .collect();
    for entry in &mut served {
        match published.get(entry.path.as_str()) {
            Some(&mtime_ns) if entry.mtime_ns > mtime_ns => entry.mtime_ns = mtime_ns,
            _ => {}
        }
    }
    let mut findings = tree_findings(&expected.entries, &served, "the mount");
    let shown = mountpoint.display().to_string();
    // Without --generation the check below names the lag against the head.
    if generation.is_some() && state.generation != Some(expected.generation) {
        findings.push(finding(
            FindingKind::WrongGeneration,
            &shown,
            &format!(
                "the mount says it serves generation {:?}, expected {}",
                state.generation, expected.generation
            ),
        ));
    }
    if generation.is_none() && state.generation != head {
        findings.push(finding(
            FindingKind::WrongGeneration,
            &shown,
            &format!(
                "the mount serves generation {:?} but the head is {head:?}{}",
                state.generation,
                state
                    .last_error
                    .as_deref()
                    .map(|e| format!(" (its last error: {e})"))
                    .unwrap_or_default()
            ),
        ));
    }
    Ok(Report::of_files(&expected, &served, findings))
}

fn finding(kind: FindingKind, path: &str, detail: &str) -> Finding {
    Finding {
        kind,
        path: path.to_string(),
        detail: detail.to_string(),
    }
}

fn describe_change(old: &Entry, new: &Entry) -> String {
    if old.blake3 != new.blake3 {
        format!(
            "content differs ({} bytes in the generation, {} here)",
            old.size, new.size
        )
    } else if old.mode != new.mode {
        format!("mode {:o} in the generation, {:o} here", old.mode, new.mode)
    } else {
        "modification time differs".to_string()
    }
}

/// The store against itself: every checked generation's manifest is valid (a corrupt one is
/// an error: exit 2), every object it references exists with the right size (and, `deep`,
/// the right bytes), the mirror matches the head, and unreferenced objects are counted.
pub async fn verify_store(
    store: &dyn Store,
    generation: Option<u64>,
    deep: bool,
) -> Result<Report, VerifyError> {
    let manifest = target(store, generation).await?;
    let numbers = match generation {
        Some(g) => vec![g],
        None => generations::list(store).await?,
    };
    let mut needed: BTreeMap<Digest, (u64, String)> = BTreeMap::new();
    for &number in &numbers {
        let m = if number == manifest.generation {
            manifest.clone()
        } else {
            generations::load(store, number).await?
        };
        for e in m.entries {
            needed.entry(e.blake3).or_insert((e.size, e.path));
        }
    }
    let objects = &Objects::new(None);
    objects.refresh(store).await?;
    let intact = &if deep {
        hash_in_batches(store, objects, needed.keys().copied()).await
    } else {
        HashSet::new()
    };
    let checks = stream::iter(
        needed
            .iter()
            .map(|(digest, (size, path))| (*digest, *size, path.clone())),
    )
    .map(|(digest, size, path)| async move {
        if intact.contains(&(digest, size)) {
            return Ok((None, size));
        }
        check_object(store, objects, digest, size, path, deep).await
    })
    .buffer_unordered(CONCURRENCY)
    .try_collect::<Vec<(Option<Finding>, u64)>>()
    .await?;
    let mut report = Report {
        generation: manifest.generation,
        tree_id: manifest.tree_id.to_string(),
        generations_checked: numbers,
        checked: needed.len(),
        ..Report::default()
    };
    for (found, hashed) in checks {
        report.bytes_hashed += hashed;
        report.findings.extend(found);
    }
    if generation.is_none() {
        report.orphans = count_orphans(store, &needed.keys().copied().collect()).await?;
        if store.stat(MIRROR_DIR).await.is_ok() {
            report
                .findings
                .extend(check_mirror(store, &manifest, deep).await?);
        }
    }
    report.findings.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(report)
}

/// Reads the packed objects among `digests` in batches (one range read for neighbours of a
/// pack) and returns those whose bytes hash to their digest, with their lengths. The others
/// (a read that failed, bytes that do not hash right, objects not packed) are left to
/// [`check_object`], which reads them one by one and names what is wrong.
async fn hash_in_batches(
    store: &dyn Store,
    objects: &Objects,
    digests: impl IntoIterator<Item = Digest>,
) -> HashSet<(Digest, u64)> {
    let (batches, _) = objects.batches(digests);
    stream::iter(batches)
        .map(|batch| async move {
            match objects.read_batch(store, &batch).await {
                // Hashed on the blocking pool: on the reactor it would hash one batch at a
                // time and hold back the reads of the others.
                Ok(read) => tokio::task::spawn_blocking(move || {
                    read.into_iter()
                        .filter(|(digest, bytes)| Digest::of(bytes) == *digest)
                        .map(|(digest, bytes)| (digest, bytes.len() as u64))
                        .collect()
                })
                .await
                .expect("hashing does not panic"),
                Err(e) => {
                    tracing::debug!(error = %e, "batched read failed; checking its objects one by one");
                    Vec::new()
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<Vec<(Digest, u64)>>>()
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// One object: exists (in a pack of the listing, or loose), right size, and (deep) right
/// bytes. Returns a finding and bytes hashed.
async fn check_object(
    store: &dyn Store,
    objects: &Objects,
    digest: Digest,
    size: u64,
    path: String,
    deep: bool,
) -> Result<(Option<Finding>, u64), VerifyError> {
    let key = objects.key(&digest);
    let Some(len) = objects.present_len(store, &digest).await? else {
        // A gc run in progress may have it moved aside (and will put it back).
        return match objects.read(store, &digest).await {
            Ok(bytes) if bytes.len() as u64 == size && Digest::of(&bytes) == digest => {
                Ok((None, bytes.len() as u64))
            }
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e.into()),
            _ => Ok((
                Some(finding(
                    FindingKind::MissingObject,
                    &path,
                    &format!("object {key} is missing"),
                )),
                0,
            )),
        };
    };
    if len != size {
        let detail = format!("object {key} has {len} bytes, expected {size}");
        return Ok((Some(finding(FindingKind::CorruptObject, &path, &detail)), 0));
    }
    if !deep {
        return Ok((None, 0));
    }
    let bytes = objects.read(store, &digest).await?;
    let hashed = bytes.len() as u64;
    if Digest::of(&bytes) != digest {
        let detail = format!("object {key} holds other bytes than its name says");
        return Ok((
            Some(finding(FindingKind::CorruptObject, &path, &detail)),
            hashed,
        ));
    }
    Ok((None, hashed))
}

async fn count_orphans(
    store: &dyn Store,
    referenced: &HashSet<Digest>,
) -> Result<usize, VerifyError> {
    let objects = generations::list_objects(store).await?;
    let orphans = objects
        .iter()
        .filter(|o| {
            !o.name()
                .parse::<Digest>()
                .is_ok_and(|d| referenced.contains(&d))
        })
        .count();
    Ok(orphans)
}

/// The mirror against the head: every file present with the head's size (deep: bytes), and
/// nothing else.
async fn check_mirror(
    store: &dyn Store,
    head: &Manifest,
    deep: bool,
) -> Result<Vec<Finding>, VerifyError> {
    let mut findings = Vec::new();
    let present: HashSet<String> = files_under(store, MIRROR_DIR).await?.into_iter().collect();
    let wanted: HashSet<&str> = head.entries.iter().map(|e| e.path.as_str()).collect();
    for path in &present {
        if !wanted.contains(path.as_str()) {
            findings.push(finding(
                FindingKind::MirrorExtra,
                path,
                "in the mirror, not in the head",
            ));
        }
    }
    let results = stream::iter(head.entries.iter().filter(|e| present.contains(&e.path)))
        .map(|entry| async move {
            let key = format!("{MIRROR_DIR}/{}", entry.path);
            let info = store.stat(&key).await?;
            if info.len != entry.size {
                return Ok::<_, VerifyError>(Some(finding(
                    FindingKind::MirrorDiffers,
                    &entry.path,
                    &format!(
                        "{} bytes in the mirror, {} in the head",
                        info.len, entry.size
                    ),
                )));
            }
            if deep && Digest::of(&store.read(&key).await?) != entry.blake3 {
                return Ok(Some(finding(
                    FindingKind::MirrorDiffers,
                    &entry.path,
                    "other bytes in the mirror than in the head",
                )));
            }
            Ok(None)
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    findings.extend(results.into_iter().flatten());
    for entry in &head.entries {
        if !present.contains(&entry.path) {
            findings.push(finding(
                FindingKind::MirrorDiffers,
                &entry.path,
                "missing from the mirror",
            ));
        }
    }
    Ok(findings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mount::state::MountState;
    use crate::publish::Desired;
    use crate::store::{LocalStore, Overwrite};
    use crate::testutil::publish_files;
    use bytes::Bytes;
    use std::time::Duration;

    fn found(report: &Report) -> Vec<(FindingKind, &str)> {
        report
            .findings
            .iter()
            .map(|f| (f.kind, f.path.as_str()))
            .collect()
    }

    /// A mount that serves nothing yet (it started before the first publish, or cannot
    /// fetch) is checked against the head, and found behind: not reported as an empty store
    /// when the store has generations. Only a store that has none is named empty.
    #[tokio::test]
    async fn a_mount_serving_nothing_is_behind_the_head_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("store")).await.unwrap();
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).unwrap();
        let states = StateDir::at(dir.path().join("run"));
        let state = MountState::started(mountpoint.clone(), store.url().into(), Duration::ZERO);
        states.write(&state).unwrap();

        let empty = verify_mount(&store, &mountpoint, &states, None).await;
        let err = empty.unwrap_err().to_string();
        assert!(err.contains("has no generations yet"), "{err}");

        publish_files(&store, dir.path(), &[("a.py", "A")]).await;
        let report = verify_mount(&store, &mountpoint, &states, None)
            .await
            .unwrap();
        assert_eq!(report.generation, 1);
        let shown = mountpoint.display().to_string();
        let expected = [
            (FindingKind::Removed, "a.py"),
            (FindingKind::WrongGeneration, shown.as_str()),
        ];
        assert_eq!(found(&report), expected);
        let lag = &report.findings[1].detail;
        assert!(
            lag.contains("serves generation None but the head is Some(1)"),
            "{lag}"
        );
        states.remove(&mountpoint).unwrap();
    }

    #[tokio::test]
    async fn store_drift_is_found_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let store = LocalStore::open(root.clone()).await.unwrap();
        // a.py in a pack of its own, b.py and c.py in a second one.
        publish_files(&store, dir.path(), &[("a.py", "aaaa")]).await;
        let first_pack = crate::objects::Objects::new(None);
        first_pack.refresh(&store).await.unwrap();
        let a_pack = first_pack.locate(&Digest::of(b"aaaa")).unwrap().pack;
        publish_files(
            &store,
            dir.path(),
            &[("a.py", "aaaa"), ("b.py", "bbbb"), ("c.py", "cccc")],
        )
        .await;
        crate::mirror::update(&store, None).await.unwrap();
        let clean = verify_store(&store, None, true).await.unwrap();
        assert!(clean.findings.is_empty(), "{:?}", clean.findings);
        assert_eq!((clean.checked, clean.bytes_hashed), (3, 12));

        store
            .delete(&crate::pack::pack_key(&a_pack), false)
            .await
            .unwrap();
        crate::testutil::damage_packed(&store, &root, &Digest::of(b"bbbb"), b"BBBB").await;
        store
            .put("mirror/c.py", Bytes::from_static(b"CCCC"), Overwrite::Allow)
            .await
            .unwrap();
        let shallow = verify_store(&store, None, false).await.unwrap();
        let kinds = found(&shallow);
        assert_eq!(
            kinds,
            [(FindingKind::MissingObject, "a.py")],
            "same-size damage needs --deep"
        );
        let deep = verify_store(&store, None, true).await.unwrap();
        let kinds = found(&deep);
        assert_eq!(
            kinds,
            [
                (FindingKind::MissingObject, "a.py"),
                (FindingKind::CorruptObject, "b.py"),
                (FindingKind::MirrorDiffers, "c.py")
            ]
        );
    }

    #[tokio::test]
    async fn local_drift_is_what_the_next_push_would_publish() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("store")).await.unwrap();
        let folder = dir.path().join("dags");
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("a.py"), "1").unwrap();
        std::fs::write(folder.join("b.py"), "2").unwrap();
        let desired = Desired::from_folder(&folder, &ScanOptions::default()).unwrap();
        crate::publish::publish(&store, &desired, &Default::default())
            .await
            .unwrap();
        assert!(verify_local(&store, &folder, None, &ScanOptions::default())
            .await
            .unwrap()
            .findings
            .is_empty());
        std::fs::write(folder.join("a.py"), "one").unwrap();
        std::fs::remove_file(folder.join("b.py")).unwrap();
        std::fs::write(folder.join("c.py"), "3").unwrap();
        let report = verify_local(&store, &folder, Some(1), &ScanOptions::default())
            .await
            .unwrap();
        let kinds = found(&report);
        assert_eq!(
            kinds,
            [
                (FindingKind::Changed, "a.py"),
                (FindingKind::Removed, "b.py"),
                (FindingKind::Added, "c.py")
            ]
        );
        assert!(matches!(
            verify_local(&store, &folder, Some(9), &ScanOptions::default()).await,
            Err(VerifyError::Generation(_))
        ));
    }
}
