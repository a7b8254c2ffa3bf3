//! Reference-model test of publish / gc / rollback / mount switch with injected faults
//! (issue 14, point 4; after mountpoint-s3's reftests).
//!
//! proptest generates sequences of steps; each may carry a fault of the
//! [`FaultyStore`]: the Nth call of an operation fails before or after doing its work, or a
//! whole gc (or rollback) runs on the store just before it. The model knows every tree the
//! steps asked for. After every step:
//!
//! - every generation in the store is valid and holds a tree the model knows: the tree of
//!   the generation it had, or, for a new one, the tree this step (or its injected
//!   rollbacks) asked for; a step that returned an error committed nothing; no number is
//!   held by two different manifests, even one deleted meanwhile (injected commits record
//!   theirs);
//! - the head is complete: every object it references is readable with its length and digest
//!   (and sits in `objects/` unless the step's fault hit gc half-way);
//! - what the mount serves is exactly the bytes of the generation it switched to, or a file
//!   it cannot serve (EIO), never other bytes.
//!
//! Cases: `DAGFS_MODEL_CASES` (default 48). A failure prints its seed; replay it with
//! `DAGFS_MODEL_SEED=<hex>`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use dagfs::cache::Cache;
use dagfs::format::{Digest, Manifest};
use dagfs::gc::{gc, GcOptions};
use dagfs::generations;
use dagfs::objects::Objects;
use dagfs::publish::{publish, Desired, PublishOptions};
use dagfs::scan::ScanOptions;
use dagfs::store::faulty::{Action, FaultyStore, Op, Rule};
use dagfs::store::{ErrorKind, LocalStore, Store};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

const PATHS: [&str; 3] = ["a.py", "pkg/b.py", "c.py"];

/// The content of version `v` of path `p`: lengths differ between versions.
fn content(p: usize, v: usize) -> Vec<u8> {
    format!("# {}\n{}", PATHS[p], "x = 1\n".repeat(v + 1)).into_bytes()
}

#[derive(Clone, Debug)]
enum Fault {
    Fail(Op, usize, ErrorKind),
    FailAfter(Op, usize),
    /// A gc (`--keep 1 --grace 0s`) runs whole before the Nth call of the step.
    GcBefore(usize),
    /// A rollback to the generation before the head runs whole before the Nth call.
    RollbackBefore(usize),
    /// Two commits run whole before the Nth call: a rollback to the generation before the
    /// head, then one back to the head's tree (with a `GcBefore` after it, the head the
    /// step read can be two generations and a gc behind).
    CommitsBefore(usize),
}

#[derive(Clone, Debug)]
enum Step {
    /// Publish a folder holding these (path, version) files.
    Push(BTreeMap<usize, usize>),
    /// Roll back to the generation `back` below the head.
    Rollback(usize),
    /// gc with `--keep keep --grace 0s`.
    Gc(usize),
    /// The mount polls: fetch the head into the cache, switch, evict.
    Mount,
}

fn op() -> impl Strategy<Value = Op> {
    prop::sample::select(Op::ALL.to_vec())
}

fn one_fault() -> impl Strategy<Value = Option<Fault>> {
    let kind = prop::sample::select(vec![
        ErrorKind::Unavailable,
        ErrorKind::PermissionDenied,
        ErrorKind::Timeout,
    ]);
    prop_oneof![
        2 => Just(None),
        2 => (op(), 1..6usize, kind).prop_map(|(o, n, k)| Some(Fault::Fail(o, n, k))),
        1 => (op(), 1..6usize).prop_map(|(o, n)| Some(Fault::FailAfter(o, n))),
        1 => (1..30usize).prop_map(|n| Some(Fault::GcBefore(n))),
        1 => (1..30usize).prop_map(|n| Some(Fault::RollbackBefore(n))),
        1 => (1..12usize).prop_map(|n| Some(Fault::CommitsBefore(n))),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => prop::collection::btree_map(0..PATHS.len(), 0..3usize, 1..=3).prop_map(Step::Push),
        2 => (1..3usize).prop_map(Step::Rollback),
        3 => (1..3usize).prop_map(Step::Gc),
        3 => Just(Step::Mount),
    ]
}

/// Up to two faults per step (a failure and an interleaved gc, say).
fn faults() -> impl Strategy<Value = Vec<Fault>> {
    prop::collection::vec(one_fault(), 0..=2).prop_map(|f| f.into_iter().flatten().collect())
}

fn steps() -> impl Strategy<Value = Vec<(Step, Vec<Fault>)>> {
    prop::collection::vec((step(), faults()), 1..14)
}

/// A tree as path -> (size, digest).
type Tree = BTreeMap<String, (u64, Digest)>;

fn tree_of(manifest: &Manifest) -> Tree {
    manifest
        .entries
        .iter()
        .map(|e| (e.path.clone(), (e.size, e.blake3)))
        .collect()
}

struct World {
    dir: tempfile::TempDir,
    inner: Arc<dyn Store>,
    store: FaultyStore,
    cache: Cache,
    /// Every generation the model has seen committed.
    committed: BTreeMap<u64, Tree>,
    /// Every content ever published, by digest.
    contents: HashMap<Digest, Vec<u8>>,
    /// The generation the mount serves.
    served: Option<Manifest>,
    /// Generations committed by injected rollbacks, with their trees.
    injected_commits: Arc<std::sync::Mutex<Vec<(u64, Tree)>>>,
}

fn check(condition: bool, message: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if condition {
        Ok(())
    } else {
        Err(TestCaseError::fail(message()))
    }
}

fn gc_options(keep: usize) -> GcOptions {
    GcOptions {
        keep,
        grace: Duration::ZERO,
        dry_run: false,
        publish_wait: Duration::ZERO,
        // Any garbage: every pack a kept generation still uses in part is repacked, so the
        // steps exercise repacking as often as they can.
        max_garbage: 0,
    }
}

/// The desired tree of a rollback `back` generations below the head, if that exists.
async fn rollback_target(store: &dyn Store, back: usize) -> Option<Manifest> {
    let all = generations::list(store).await.ok()?;
    let target = *all.get(all.len().checked_sub(back + 1)?)?;
    generations::load(store, target).await.ok()
}

impl World {
    async fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Store> =
            Arc::new(LocalStore::open(dir.path().join("store")).await.unwrap());
        let store = FaultyStore::new(Arc::clone(&inner));
        let cache = Cache::open(&dir.path().join("cache")).unwrap();
        World {
            dir,
            inner,
            store,
            cache,
            committed: BTreeMap::new(),
            contents: HashMap::new(),
            served: None,
            injected_commits: Arc::default(),
        }
    }

    /// A folder with `files`, scanned.
    fn folder(&mut self, files: &BTreeMap<usize, usize>) -> Desired {
        let root = self.dir.path().join(uuid::Uuid::new_v4().to_string());
        for (&p, &v) in files {
            let path = root.join(PATHS[p]);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let bytes = content(p, v);
            self.contents.insert(Digest::of(&bytes), bytes.clone());
            std::fs::write(path, bytes).unwrap();
        }
        Desired::from_folder(&root, &ScanOptions::default()).unwrap()
    }

    /// Arms `faults`; returns the trees injected rollbacks may commit.
    async fn arm(&self, faults: &[Fault]) -> Vec<Tree> {
        let mut rolled_back = Vec::new();
        for fault in faults {
            rolled_back.extend(self.arm_one(fault).await);
        }
        rolled_back
    }

    async fn arm_one(&self, fault: &Fault) -> Vec<Tree> {
        let mut rolled_back = Vec::new();
        match fault {
            Fault::Fail(op, nth, kind) => self.store.add(Rule::fail(*op, *nth, *kind)),
            Fault::FailAfter(op, nth) => {
                self.store
                    .add(Rule::fail_after(*op, *nth, ErrorKind::Timeout))
            }
            Fault::GcBefore(nth) => {
                let action: Action = Arc::new(|store, _| {
                    Box::pin(async move {
                        let _ = gc(&*store, &gc_options(1)).await;
                    })
                });
                self.store.add(Rule::before_any(*nth, action));
            }
            Fault::RollbackBefore(nth) | Fault::CommitsBefore(nth) => {
                // Decided now, so the model knows the trees they may commit.
                let mut targets: Vec<Manifest> =
                    rollback_target(&*self.inner, 1).await.into_iter().collect();
                if matches!(fault, Fault::CommitsBefore(_)) {
                    targets.extend(rollback_target(&*self.inner, 0).await);
                }
                rolled_back = targets.iter().map(tree_of).collect();
                let commits = Arc::clone(&self.injected_commits);
                let action: Action = Arc::new(move |store, _| {
                    let (targets, commits) = (targets.clone(), Arc::clone(&commits));
                    Box::pin(async move {
                        for target in targets {
                            let published = publish(
                                &*store,
                                &Desired::from_manifest(&target),
                                &PublishOptions::default(),
                            )
                            .await;
                            if let Ok(outcome) = published {
                                if let Some(g) = outcome.generation.filter(|_| outcome.published) {
                                    commits.lock().unwrap().push((g, tree_of(&target)));
                                }
                            }
                        }
                    })
                });
                self.store.add(Rule::before_any(*nth, action));
            }
        }
        rolled_back
    }

    async fn run(&mut self, step: &Step, fault: &[Fault]) -> Result<(), TestCaseError> {
        let before = generations::list(&*self.inner).await.unwrap();
        let injected = self.arm(fault).await;
        // (tree asked for, whether the step reported success)
        let mut asked: Option<(Tree, bool)> = None;
        match step {
            Step::Push(files) => {
                let desired = self.folder(files);
                let tree: Tree = desired
                    .entries
                    .iter()
                    .map(|e| (e.path.clone(), (e.size, e.blake3)))
                    .collect();
                let result = publish(&self.store, &desired, &PublishOptions::default()).await;
                asked = Some((tree, result.is_ok()));
            }
            Step::Rollback(back) => {
                if let Some(target) = rollback_target(&*self.inner, *back).await {
                    let result = publish(
                        &self.store,
                        &Desired::from_manifest(&target),
                        &PublishOptions::default(),
                    )
                    .await;
                    asked = Some((tree_of(&target), result.is_ok()));
                }
            }
            Step::Gc(keep) => {
                let _ = gc(&self.store, &gc_options(*keep)).await;
            }
            Step::Mount => {
                if let Ok(Some(head)) = generations::head(&self.store).await {
                    if let Ok(cached) = self.cache.fetch_generation(&self.store, head, 4).await {
                        self.served = Some(cached.manifest);
                        let _ = self.cache.evict(head, 1);
                    }
                }
            }
        }
        self.store.clear();
        self.verify(&before, asked, injected, fault).await
    }

    async fn verify(
        &mut self,
        before: &[u64],
        asked: Option<(Tree, bool)>,
        injected: Vec<Tree>,
        faults: &[Fault],
    ) -> Result<(), TestCaseError> {
        let store = &*self.inner;
        let after = generations::list(store).await.unwrap();
        let newest_before = before.last().copied().unwrap_or(0);
        let mut asked_committed = false;
        // Every number an injected commit took, even if gc deleted it since: no other
        // manifest may hold it (a commit onto a number gc deleted is a lost update).
        let injected_commits = std::mem::take(&mut *self.injected_commits.lock().unwrap());
        for (g, tree) in &injected_commits {
            if let Some(model) = self.committed.get(g) {
                check(model == tree, || {
                    format!("generation {g} was held by two manifests")
                })?;
            }
        }
        let injected_at: HashMap<u64, Tree> = injected_commits.into_iter().collect();
        for &g in &after {
            let manifest = generations::load(store, g).await;
            check(manifest.is_ok(), || {
                format!("generation {g} unreadable: {manifest:?}")
            })?;
            let tree = tree_of(&manifest.unwrap());
            for (path, (size, digest)) in &tree {
                let known = self.contents.get(digest);
                check(known.is_some_and(|c| c.len() as u64 == *size), || {
                    format!("generation {g}: {path} pairs size {size} with content {digest} ({:?} bytes)", known.map(Vec::len))
                })?;
            }
            if let Some(model) = self.committed.get(&g) {
                check(model == &tree, || format!("generation {g} changed"))?;
                continue;
            }
            check(g > newest_before, || {
                format!("generation {g} appeared below the old head")
            })?;
            if let Some(theirs) = injected_at.get(&g) {
                check(theirs == &tree, || {
                    format!("generation {g} was held by two manifests: an injected commit's, then {tree:?}")
                })?;
            }
            let is_asked = asked.as_ref().is_some_and(|(t, _)| t == &tree);
            let is_injected = injected.contains(&tree);
            check(is_asked || is_injected, || {
                format!("generation {g} holds a tree nobody asked for: {tree:?}")
            })?;
            asked_committed |= is_asked && !is_injected;
            self.committed.insert(g, tree);
        }
        if let Some((_, ok)) = &asked {
            check(*ok || !asked_committed, || {
                "the step failed but committed its tree".to_string()
            })?;
        }
        // The head is complete.
        let strict = !faults
            .iter()
            .any(|f| matches!(f, Fault::Fail(..) | Fault::FailAfter(..)));
        if let Some(&head) = after.last() {
            let objects = Objects::new(None);
            objects
                .refresh(store)
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            for (path, (size, digest)) in &self.committed[&head] {
                let bytes = objects.read(store, digest).await;
                check(
                    bytes
                        .as_ref()
                        .is_ok_and(|b| b.len() as u64 == *size && Digest::of(b) == *digest),
                    || format!("head {head}: {path} ({digest}) is not readable: {bytes:?}"),
                )?;
                if strict {
                    let stat = objects.present_len(store, digest).await;
                    check(stat.as_ref().is_ok_and(Option::is_some), || {
                        format!(
                            "head {head}: {path} ({digest}) is not in packs/ or objects/: {stat:?}"
                        )
                    })?;
                }
            }
        }
        // The mount serves exactly its generation's bytes, or nothing for a file.
        if let Some(served) = &self.served {
            let model = self.committed.get(&served.generation);
            check(model == Some(&tree_of(served)), || {
                format!(
                    "the mount serves generation {} with a tree the store never had",
                    served.generation
                )
            })?;
            for entry in &served.entries {
                if let Ok(bytes) = std::fs::read(self.cache.object_path(&entry.blake3)) {
                    check(
                        bytes.len() as u64 == entry.size && Digest::of(&bytes) == entry.blake3,
                        || format!("the mount would serve other bytes for {}", entry.path),
                    )?;
                }
            }
        }
        Ok(())
    }
}

#[test]
fn publish_gc_rollback_and_mount_keep_their_invariants_under_faults() {
    let cases = std::env::var("DAGFS_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    let seed: [u8; 32] = match std::env::var("DAGFS_MODEL_SEED") {
        Ok(hex) => *hex
            .parse::<Digest>()
            .expect("DAGFS_MODEL_SEED is 64 hex digits")
            .as_bytes(),
        Err(_) => *Digest::of(uuid::Uuid::new_v4().as_bytes()).as_bytes(),
    };
    let seed_hex = Digest::from(seed).to_string();
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let result = runner.run(&steps(), |steps| {
        rt.block_on(async {
            let mut world = World::new().await;
            for (i, (step, fault)) in steps.iter().enumerate() {
                world.run(step, fault).await.map_err(|e| {
                    TestCaseError::fail(format!(
                        "step {i} ({step:?}, faults {fault:?}; fired {:?}): {e}",
                        world.store.fired()
                    ))
                })?;
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("model test failed (replay with DAGFS_MODEL_SEED={seed_hex}): {e}");
    }
}
