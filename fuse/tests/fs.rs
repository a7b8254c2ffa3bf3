//! The filesystem logic driven through its API, without FUSE (fast).

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dagfs_fuse::fs::Listed;
use dagfs_fuse::tree::ROOT_INO;
use dagfs_fuse::{
    ContentId, ContentSource, DagFs, FileSpec, FsError, Invalidator, MountOptions, Shown,
    ShownBefore, TreeLabel,
};

use common::{label, NoKernel};

/// Contents in a temporary directory, one file per content id.
struct DirSource {
    dir: tempfile::TempDir,
    known: std::sync::Mutex<HashMap<ContentId, PathBuf>>,
    /// Everything recorded, in order.
    shown: std::sync::Mutex<Vec<Shown>>,
}

impl DirSource {
    fn new() -> Arc<Self> {
        Arc::new(DirSource {
            dir: tempfile::tempdir().unwrap(),
            known: Default::default(),
            shown: Default::default(),
        })
    }

    fn spec(&self, path: &str, bytes: &[u8]) -> FileSpec {
        let mut id = [0u8; 32];
        for (i, b) in bytes.iter().enumerate() {
            id[i % 32] = id[i % 32].wrapping_mul(31).wrapping_add(*b);
        }
        id[31] = bytes.len() as u8;
        let name: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let file = self.dir.path().join(name);
        std::fs::write(&file, bytes).unwrap();
        self.known.lock().unwrap().insert(ContentId(id), file);
        FileSpec {
            path: path.into(),
            mode: 0o644,
            size: bytes.len() as u64,
            mtime_ns: 1_700_000_000_000_000_000,
            content: ContentId(id),
        }
    }
}

impl ContentSource for DirSource {
    fn open(&self, content: &ContentId, _size: u64) -> io::Result<File> {
        match self.known.lock().unwrap().get(content) {
            Some(path) => File::open(path),
            None => Err(io::Error::new(io::ErrorKind::NotFound, "not cached")),
        }
    }

    fn record_shown(&self, shown: &Shown) -> io::Result<()> {
        self.shown.lock().unwrap().push(shown.clone());
        Ok(())
    }
}

/// Records invalidations and checks what a request sees while they happen.
struct Recorder<'a> {
    fs: &'a DagFs<Arc<DirSource>>,
    entries: RefCell<Vec<(u64, String)>>,
    inodes: RefCell<Vec<u64>>,
    old_seen_during_switch: RefCell<Vec<u64>>,
}

impl Invalidator for Recorder<'_> {
    fn inval_entry(&self, parent: u64, name: &str) -> io::Result<()> {
        let view = self.fs.view();
        assert_eq!(
            view.ttl(),
            Duration::ZERO,
            "replies during a switch must not be cached"
        );
        // Until the switch completes, requests still see the old tree.
        if let Ok(attr) = self.fs.lookup(&view, parent, name) {
            self.old_seen_during_switch.borrow_mut().push(attr.ino);
        }
        self.entries.borrow_mut().push((parent, name.to_string()));
        Ok(())
    }

    fn inval_inode(&self, ino: u64) -> io::Result<()> {
        self.inodes.borrow_mut().push(ino);
        Ok(())
    }
}

fn options() -> MountOptions {
    MountOptions {
        ttl: Duration::from_secs(10),
        uid: 0,
        gid: 0,
        shown_before: None,
    }
}

fn resolve(fs: &DagFs<Arc<DirSource>>, path: &str) -> Result<u64, FsError> {
    resolve_from(fs, ROOT_INO, path)
}

fn read_all(fs: &DagFs<Arc<DirSource>>, path: &str) -> Result<Vec<u8>, FsError> {
    fs.read(resolve(fs, path)?, 0, 1 << 20)
}

fn names(fs: &DagFs<Arc<DirSource>>, dir: u64) -> Vec<String> {
    fs.enter(dir);
    let fh = fs.opendir(dir).unwrap();
    let listed: Vec<Listed> = fs.readdir(fh, 0).unwrap();
    fs.release(fh);
    listed.into_iter().map(|l| l.name).collect()
}

#[test]
fn serves_files_directories_and_attributes() {
    let src = DirSource::new();
    let files = vec![
        src.spec("a.py", b"print('a')\n"),
        src.spec("pkg/b.py", b"B"),
        src.spec("pkg/sub/c.sql", b"select 1"),
    ];
    let fs = DagFs::new(src.clone(), options(), label(1), &files).unwrap();
    assert_eq!(read_all(&fs, "a.py").unwrap(), b"print('a')\n");
    assert_eq!(read_all(&fs, "pkg/sub/c.sql").unwrap(), b"select 1");
    assert_eq!(names(&fs, ROOT_INO), [".", "..", "a.py", "pkg"]);
    let pkg = resolve(&fs, "pkg").unwrap();
    assert_eq!(names(&fs, pkg), [".", "..", "b.py", "sub"]);

    let view = fs.view();
    let root = fs.getattr(&view, ROOT_INO).unwrap();
    assert!(root.is_dir);
    assert_eq!(root.nlink, 3, "root has one subdirectory");
    let a = fs.lookup(&view, ROOT_INO, "a.py").unwrap();
    assert_eq!((a.size, a.mode, a.is_dir), (11, 0o644, false));
    // A first tree's directory mtime is the newest mtime below it.
    assert_eq!(root.mtime, a.mtime);
    assert!(matches!(
        fs.lookup(&view, ROOT_INO, "missing"),
        Err(FsError::NotFound)
    ));
    assert!(matches!(fs.lookup(&view, a.ino, "x"), Err(FsError::NotDir)));
    drop(view);

    assert!(matches!(fs.read(pkg, 0, 1), Err(FsError::IsDir)));
    assert!(matches!(fs.opendir(a.ino), Err(FsError::NotDir)));
    assert!(matches!(fs.read(9999, 0, 1), Err(FsError::NotFound)));
    assert!(matches!(fs.readdir(9999, 0), Err(FsError::BadHandle)));
    assert_eq!(
        fs.read(a.ino, 6, 100).unwrap(),
        b"'a')\n",
        "reads at an offset, short at EOF"
    );
    assert_eq!(
        fs.read(a.ino, 100, 10).unwrap(),
        b"",
        "reads past the end are empty"
    );
    assert_eq!(fs.usage(), (11 + 1 + 8, 3 + 3));
}

#[test]
fn a_path_that_is_file_and_directory_is_refused() {
    let src = DirSource::new();
    let files = vec![src.spec("x", b"1"), src.spec("x/y", b"2")];
    let err = DagFs::new(src.clone(), options(), label(1), &files)
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("both a file and a directory"),
        "{err}"
    );
}

#[test]
fn switch_is_atomic_keeps_open_files_and_invalidates_only_changes() {
    let src = DirSource::new();
    let v1 = vec![
        src.spec("same.py", b"unchanged"),
        src.spec("edit.py", b"version 1"),
        src.spec("gone/old.py", b"old"),
        src.spec("deep/x/y.py", b"y"),
    ];
    let fs = DagFs::new(src.clone(), options(), label(1), &v1).unwrap();
    let same = resolve(&fs, "same.py").unwrap();
    let edit_v1 = resolve(&fs, "edit.py").unwrap();
    let deep = resolve(&fs, "deep/x").unwrap();
    let root_mtime = fs.getattr(&fs.view(), ROOT_INO).unwrap().mtime;
    let deep_mtime = fs.getattr(&fs.view(), deep).unwrap().mtime;

    let v2 = vec![
        src.spec("same.py", b"unchanged"),
        src.spec("edit.py", b"version 2, longer"),
        src.spec("new.py", b"new"),
        src.spec("deep/x/y.py", b"y"),
    ];
    let recorder = Recorder {
        fs: &fs,
        entries: Default::default(),
        inodes: Default::default(),
        old_seen_during_switch: Default::default(),
    };
    let report = fs.switch(label(2), &v2, &recorder).unwrap();
    assert_eq!(fs.label(), label(2));
    assert_eq!(fs.view().ttl(), Duration::from_secs(10));

    // Changed or removed names are forgotten by the kernel; unchanged ones are not.
    let mut entries = recorder.entries.borrow().clone();
    entries.sort();
    let mut invalidated: Vec<&str> = entries.iter().map(|(_, n)| n.as_str()).collect();
    invalidated.sort();
    // new.py is added: the kernel may have cached its absence.
    assert_eq!(invalidated, ["edit.py", "gone", "new.py", "old.py"]);
    assert_eq!(report.entries_invalidated, 4);
    // While invalidating, requests still saw the old tree (the old inodes).
    assert!(recorder.old_seen_during_switch.borrow().contains(&edit_v1));
    // The root (listing changed) and the removed directory; not the untouched `deep/x`.
    assert!(recorder.inodes.borrow().contains(&ROOT_INO));
    assert!(!recorder.inodes.borrow().contains(&deep));

    // Same path, same bytes: same inode. Same path, new bytes: new inode.
    assert_eq!(resolve(&fs, "same.py").unwrap(), same);
    let edit_v2 = resolve(&fs, "edit.py").unwrap();
    assert_ne!(edit_v2, edit_v1);
    assert_eq!(read_all(&fs, "edit.py").unwrap(), b"version 2, longer");
    assert_eq!(read_all(&fs, "new.py").unwrap(), b"new");
    assert!(matches!(
        resolve(&fs, "gone/old.py"),
        Err(FsError::NotFound)
    ));
    // A process holding the old inode (opened before the switch) reads what it opened.
    assert_eq!(fs.read(edit_v1, 0, 100).unwrap(), b"version 1");
    assert_eq!(fs.getattr(&fs.view(), edit_v1).unwrap().size, 9);

    // Directory mtimes move forward exactly where the listing changed.
    let view = fs.view();
    assert!(fs.getattr(&view, ROOT_INO).unwrap().mtime > root_mtime);
    assert_eq!(fs.getattr(&view, deep).unwrap().mtime, deep_mtime);
    drop(view);

    // Switching to the same tree again changes nothing.
    let again = fs.switch(label(3), &v2, &NoKernel).unwrap();
    assert_eq!((again.entries_invalidated, again.dirs_invalidated), (0, 0));
}

#[test]
fn a_directory_listing_handle_keeps_its_snapshot() {
    let src = DirSource::new();
    let v1: Vec<FileSpec> = (0..5)
        .map(|i| src.spec(&format!("f{i}.py"), b"x"))
        .collect();
    let fs = DagFs::new(src.clone(), options(), label(1), &v1).unwrap();
    let fh = fs.opendir(ROOT_INO).unwrap();
    let first = fs.readdir(fh, 0).unwrap();
    fs.switch(label(2), &v1[..2], &NoKernel).unwrap();
    // Continuing the listing from an offset gives the rest of the same listing.
    let rest = fs.readdir(fh, 4).unwrap();
    assert_eq!(rest, first[4..]);
    fs.release(fh);
    assert_eq!(names(&fs, ROOT_INO), [".", "..", "f0.py", "f1.py"]);
}

#[test]
fn unreadable_content_is_an_io_error() {
    let src = DirSource::new();
    let mut spec = src.spec("a.py", b"x");
    spec.content = ContentId([7; 32]);
    let fs = DagFs::new(src.clone(), options(), label(1), &[spec]).unwrap();
    let ino = resolve(&fs, "a.py").unwrap();
    assert!(matches!(fs.read(ino, 0, 1), Err(FsError::Io)));
}

/// Looks `path` up from `start` as the kernel would: entering each directory first.
fn resolve_from(fs: &DagFs<Arc<DirSource>>, start: u64, path: &str) -> Result<u64, FsError> {
    let mut ino = start;
    for part in path.split('/') {
        fs.enter(ino);
        ino = fs.lookup(&fs.view(), ino, part)?.ino;
    }
    Ok(ino)
}

/// Records invalidations, nothing more.
#[derive(Default)]
struct Log {
    entries: RefCell<Vec<(u64, String)>>,
    inodes: RefCell<Vec<u64>>,
}

impl Invalidator for Log {
    fn inval_entry(&self, parent: u64, name: &str) -> io::Result<()> {
        self.entries.borrow_mut().push((parent, name.to_string()));
        Ok(())
    }
    fn inval_inode(&self, ino: u64) -> io::Result<()> {
        self.inodes.borrow_mut().push(ino);
        Ok(())
    }
}

#[test]
fn every_view_shows_its_generation_hidden_from_listings() {
    let src = DirSource::new();
    let v1 = vec![
        src.spec("same.py", b"unchanged"),
        src.spec("edit.py", b"version 1"),
        src.spec("common/helper.py", b"helper 1"),
    ];
    let v2 = vec![
        src.spec("same.py", b"unchanged"),
        src.spec("edit.py", b"version 2"),
        src.spec("common/helper.py", b"helper 2"),
        src.spec("new.py", b"new"),
    ];
    let v3 = vec![src.spec("edit.py", b"version 3")];
    let rebuilt = TreeLabel {
        generation: 3,
        tree_id: "other".into(),
    };
    let v3b = vec![src.spec("edit.py", b"rebuilt")];
    let fs = DagFs::new(src.clone(), options(), label(1), &v1).unwrap();
    // Views are built when first entered, from what the loader reads (the mount: its cache).
    let known: HashMap<TreeLabel, Vec<FileSpec>> = [
        (label(1), v1.clone()),
        (label(2), v2.clone()),
        (label(3), v3.clone()),
        (rebuilt.clone(), v3b.clone()),
    ]
    .into_iter()
    .collect();
    let loads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&loads);
    fs.set_view_loader(Box::new(move |l| {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        known.get(l).cloned().ok_or_else(|| "unknown".to_string())
    }));
    let loaded = || loads.load(std::sync::atomic::Ordering::SeqCst);
    fs.switch(label(2), &v2, &NoKernel).unwrap();
    let recorder = Log::default();
    fs.set_views(
        vec![(label(1), v1.clone()), (label(2), v2.clone())],
        &recorder,
    )
    .unwrap();
    assert_eq!(fs.views(), [label(1), label(2)]);
    assert_eq!(loaded(), 0, "views are built when entered, not when shown");

    // Hidden: not in the root's listing, so directory walks never enter it; reachable by path.
    assert_eq!(
        names(&fs, ROOT_INO),
        [".", "..", "common", "edit.py", "new.py", "same.py"]
    );
    let generations = resolve(&fs, ".dagfs/generations").unwrap();
    assert_eq!(names(&fs, generations), [".", "..", "1", "2"]);
    assert_eq!(
        names(&fs, resolve(&fs, ".dagfs").unwrap()),
        [".", "..", "generations"]
    );

    // Each view is exactly its generation, whatever the mount serves.
    assert_eq!(
        read_all(&fs, ".dagfs/generations/1/edit.py").unwrap(),
        b"version 1"
    );
    assert_eq!(loaded(), 1, "entering view 1 built it, and only it");
    assert_eq!(
        read_all(&fs, ".dagfs/generations/1/common/helper.py").unwrap(),
        b"helper 1"
    );
    assert!(matches!(
        read_all(&fs, ".dagfs/generations/1/new.py"),
        Err(FsError::NotFound)
    ));
    assert_eq!(
        read_all(&fs, ".dagfs/generations/2/common/helper.py").unwrap(),
        b"helper 2"
    );
    assert_eq!(read_all(&fs, "edit.py").unwrap(), b"version 2");
    let g1 = resolve(&fs, ".dagfs/generations/1").unwrap();
    assert_eq!(names(&fs, g1), [".", "..", "common", "edit.py", "same.py"]);
    // The same file is the same inode (one page cache); directories are the view's own.
    assert_eq!(
        resolve(&fs, ".dagfs/generations/1/same.py").unwrap(),
        resolve(&fs, "same.py").unwrap()
    );
    assert_ne!(
        resolve(&fs, ".dagfs/generations/2/common").unwrap(),
        resolve(&fs, "common").unwrap()
    );
    fs.enter(g1);
    let fh = fs.opendir(g1).unwrap();
    let dots = fs.readdir(fh, 0).unwrap();
    fs.release(fh);
    assert_eq!(
        (dots[1].name.as_str(), dots[1].attr.ino),
        ("..", generations)
    );
    // Only canonical generation numbers name a view.
    for bad in ["01", "3", "x", "-1"] {
        assert!(
            matches!(resolve_from(&fs, generations, bad), Err(FsError::NotFound)),
            "{bad}"
        );
    }
    assert!(matches!(
        resolve(&fs, ".dagfs/other"),
        Err(FsError::NotFound)
    ));

    // Switching the served tree leaves the views alone.
    fs.switch(label(3), &v3, &NoKernel).unwrap();
    assert_eq!(
        read_all(&fs, ".dagfs/generations/2/new.py").unwrap(),
        b"new"
    );

    // A view that goes away: its name is invalidated in the kernel and no longer resolves.
    let mtime = fs.getattr(&fs.view(), generations).unwrap().mtime;
    recorder.entries.borrow_mut().clear();
    fs.set_views(
        vec![(label(2), v2.clone()), (label(3), v3.clone())],
        &recorder,
    )
    .unwrap();
    let mut changed = recorder.entries.borrow().clone();
    changed.sort();
    assert_eq!(
        changed,
        [(generations, "1".into()), (generations, "3".into())]
    );
    assert!(recorder.inodes.borrow().contains(&generations));
    assert!(matches!(
        resolve(&fs, ".dagfs/generations/1/edit.py"),
        Err(FsError::NotFound)
    ));
    assert!(fs.getattr(&fs.view(), generations).unwrap().mtime > mtime);
    assert_eq!(
        read_all(&fs, ".dagfs/generations/3/edit.py").unwrap(),
        b"version 3"
    );

    // The same generation number with another tree (a store rebuilt) is a new view.
    let old_root = resolve(&fs, ".dagfs/generations/3").unwrap();
    fs.set_views(vec![(rebuilt, v3b)], &NoKernel).unwrap();
    assert_ne!(resolve(&fs, ".dagfs/generations/3").unwrap(), old_root);
    assert_eq!(
        read_all(&fs, ".dagfs/generations/3/edit.py").unwrap(),
        b"rebuilt"
    );
}

#[test]
fn inodes_live_while_a_tree_or_the_kernel_holds_them() {
    let src = DirSource::new();
    let v1 = vec![src.spec("a.py", b"a1"), src.spec("d/b.py", b"b1")];
    let v2 = vec![src.spec("a.py", b"a2"), src.spec("d/b.py", b"b1")];
    let fs = DagFs::new(src.clone(), options(), label(1), &v1).unwrap();
    // The kernel looks up a.py (one reference) and keeps it across two switches.
    let a1 = resolve(&fs, "a.py").unwrap();
    fs.switch(label(2), &v2, &NoKernel).unwrap();
    fs.switch(label(3), &v2, &NoKernel).unwrap();
    assert_eq!(
        fs.read(a1, 0, 10).unwrap(),
        b"a1",
        "held by the kernel: still readable"
    );
    assert_eq!(fs.inode_counts().retired, 1);
    // Once it forgets, the old inode is gone for good.
    fs.forget(a1, 1);
    assert!(matches!(fs.read(a1, 0, 10), Err(FsError::NotFound)));
    assert!(matches!(fs.getattr(&fs.view(), a1), Err(FsError::NotFound)));
    assert_eq!(fs.inode_counts().retired, 0);

    // A listing handle opened before a switch gives the kernel entries of the old tree.
    let d = resolve(&fs, "d").unwrap();
    let fh = fs.opendir(ROOT_INO).unwrap();
    fs.switch(label(4), &v1, &NoKernel).unwrap();
    let listed = fs.readdir(fh, 0).unwrap();
    let a2 = listed.iter().find(|l| l.name == "a.py").unwrap().attr.ino;
    fs.listed_to_kernel(&fs.view(), fh, a2);
    fs.release(fh);
    assert_eq!(fs.read(a2, 0, 10).unwrap(), b"a2");
    fs.forget(a2, 1);
    assert!(matches!(fs.read(a2, 0, 10), Err(FsError::NotFound)));

    // Unchanged files and directories keep their numbers while they stay in the tree.
    assert_eq!(resolve(&fs, "d").unwrap(), d);
    // The table holds only what the served tree uses: root, d, a.py, d/b.py.
    let counts = fs.inode_counts();
    assert_eq!(counts.table, 4, "{counts:?}");
}

/// What a served file shows: its mtime in whole seconds (all Python's bytecode cache compares,
/// with the size) and in nanoseconds.
fn shown_mtime(fs: &DagFs<Arc<DirSource>>, path: &str) -> (i64, i64) {
    let attr = fs.getattr(&fs.view(), resolve(fs, path).unwrap()).unwrap();
    let ns = attr
        .mtime
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    (ns.div_euclid(1_000_000_000), ns)
}

proptest::proptest! {
    /// Python reuses cached bytecode for a source whose mtime second and size match what it
    /// compiled, and a served path is the same in every generation. So at one path of the
    /// served tree two different files (same size here, always) must never show the same
    /// mtime second: not after a switch, not after the path was deleted and put back, not
    /// after a restart that starts from what the last process recorded, whatever the
    /// manifests' mtimes (equal, within one second, a day ahead). The model remembers which
    /// content every (path, second) ever showed. What was recorded must be what is shown (the
    /// floor covering every mtime, the moved files exactly those not showing the manifest's),
    /// and the first process, with nothing recorded, shows manifest mtimes.
    #[test]
    fn one_path_never_shows_two_files_in_one_mtime_second(
        steps in proptest::collection::vec(
            (proptest::collection::vec((0..3usize, 0..3u8, 0..3usize), 0..5), proptest::bool::ANY),
            1..12,
        )
    ) {
        const PATHS: [&str; 3] = ["m.py", "pkg/m.py", "pkg/n.py"];
        const MTIMES: [i64; 3] = [
            1_700_000_000_000_000_000,
            1_700_000_000_400_000_000,
            1_700_086_400_000_000_000,
        ];
        let src = DirSource::new();
        let tree = |files: &[(usize, u8, usize)]| {
            let mut specs: Vec<FileSpec> = Vec::new();
            for &(path, content, mtime) in files {
                if specs.iter().any(|s| s.path == PATHS[path]) {
                    continue;
                }
                let mut spec = src.spec(PATHS[path], format!("X = {content}\n").as_bytes());
                spec.mtime_ns = MTIMES[mtime];
                specs.push(spec);
            }
            specs
        };
        let mut seen: HashMap<(String, i64), Vec<u8>> = HashMap::new();
        let mut trees: HashMap<u64, Vec<FileSpec>> = HashMap::new();
        let mut fs: Option<DagFs<Arc<DirSource>>> = None;
        for (generation, (files, restart)) in steps.iter().enumerate() {
            let specs = tree(files);
            let label = label(generation as u64 + 1);
            trees.insert(label.generation, specs.clone());
            match fs.as_ref() {
                Some(running) if !restart => {
                    running.switch(label, &specs, &NoKernel).unwrap();
                }
                _ => {
                    // What a restarted dagfs mount rebuilds from its record and its cache.
                    let shown_before = src.shown.lock().unwrap().last().map(|last| {
                        let moved: HashMap<&String, i64> =
                            last.moved.iter().map(|(p, ns)| (p, *ns)).collect();
                        ShownBefore {
                            mtime_floor_ns: last.mtime_floor_ns,
                            files: trees[&last.label.generation]
                                .iter()
                                .map(|f| (f.clone(), moved.get(&f.path).copied().unwrap_or(f.mtime_ns)))
                                .collect(),
                        }
                    });
                    let first = shown_before.is_none();
                    let options = MountOptions { shown_before, ..options() };
                    let started = DagFs::new(Arc::clone(&src), options, label, &specs).unwrap();
                    if first {
                        for spec in &specs {
                            proptest::prop_assert_eq!(shown_mtime(&started, &spec.path).1, spec.mtime_ns);
                        }
                    }
                    fs = Some(started);
                }
            }
            let fs = fs.as_ref().unwrap();
            let recorded = src.shown.lock().unwrap().last().cloned().unwrap();
            proptest::prop_assert_eq!(&recorded.label, &fs.label());
            for spec in &specs {
                let (second, ns) = shown_mtime(fs, &spec.path);
                let moved = recorded.moved.iter().find(|(p, _)| *p == spec.path).map(|m| m.1);
                proptest::prop_assert_eq!(moved.unwrap_or(spec.mtime_ns), ns, "{} is not recorded as shown", &spec.path);
                proptest::prop_assert!(ns >= spec.mtime_ns, "{} shows an mtime before its manifest's", spec.path);
                proptest::prop_assert!(ns <= recorded.mtime_floor_ns, "{} shows {ns}, past the recorded floor", spec.path);
                let bytes = read_all(fs, &spec.path).unwrap();
                let earlier = seen.entry((spec.path.clone(), second)).or_insert_with(|| bytes.clone());
                proptest::prop_assert_eq!(
                    &*earlier, &bytes,
                    "generation {}: {} shows second {} again with other content",
                    generation + 1, &spec.path, second
                );
            }
        }
    }
}
