//! The filesystem mounted for real (FUSE, in this process): the kernel returns its inode
//! references with `forget` after switches invalidate them, so what the filesystem tracks
//! stays bounded; the views are reachable by path and absent from listings.
//!
//! Needs /dev/fuse and the right to mount (root, or fusermount3).

mod common;

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dagfs_fuse::fuse::{mount, FuseOptions, Mounted};
use dagfs_fuse::{ContentId, ContentSource, DagFs, FileSpec, MountOptions};

use common::label;

/// Content `i` is the file `<dir>/<i>` holding the decimal number i.
struct Numbers(tempfile::TempDir);

impl Numbers {
    fn new(count: u64) -> Numbers {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..count {
            std::fs::write(dir.path().join(i.to_string()), i.to_string()).unwrap();
        }
        Numbers(dir)
    }
}

impl ContentSource for Numbers {
    fn open(&self, content: &ContentId, _size: u64) -> io::Result<File> {
        let i = u64::from_le_bytes(content.0[..8].try_into().unwrap());
        File::open(self.0.path().join(i.to_string()))
    }

    fn record_shown(&self, _: &dagfs_fuse::Shown) -> io::Result<()> {
        Ok(())
    }
}

const FILES: u64 = 50;

/// Generation `g`: every file holds a number that changes with g.
fn tree(g: u64) -> Vec<FileSpec> {
    (0..FILES)
        .map(|i| {
            let n = g * FILES + i;
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&n.to_le_bytes());
            FileSpec {
                path: format!("d{}/f{i}.py", i % 5),
                mode: 0o644,
                size: n.to_string().len() as u64,
                mtime_ns: g as i64 * 1_000_000_000,
                content: ContentId(id),
            }
        })
        .collect()
}

/// Mounts `fs` for real on a new temporary directory, for this user only.
fn mount_in_tempdir<S: ContentSource>(fs: &Arc<DagFs<S>>) -> (tempfile::TempDir, Mounted) {
    let mnt = tempfile::tempdir().unwrap();
    let fuse_options = FuseOptions {
        allow_other: false,
        threads: 2,
        fs_name: "dagfs-test".into(),
    };
    let mounted = mount(Arc::clone(fs), mnt.path(), &fuse_options).unwrap();
    (mnt, mounted)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_kernel_forgets_what_switches_replace_and_views_are_reachable() {
    let switches = 60;
    let source = Numbers::new((switches + 2) * FILES);
    let options = MountOptions {
        ttl: Duration::from_secs(10),
        // SAFETY: getuid and getgid cannot fail.
        uid: unsafe { libc::getuid() },
        gid: unsafe { libc::getgid() },
        shown_before: None,
    };
    let fs = Arc::new(DagFs::new(source, options, label(1), &tree(1)).unwrap());
    fs.set_view_loader(Box::new(|l| Ok(tree(l.generation))));
    let (mnt, mounted) = mount_in_tempdir(&fs);
    let invalidator = mounted.invalidator();
    for g in 2..=switches + 1 {
        fs.switch(label(g), &tree(g), &invalidator).unwrap();
        fs.set_views(
            vec![(label(g - 1), tree(g - 1)), (label(g), tree(g))],
            &invalidator,
        )
        .unwrap();
        for (i, spec) in tree(g).iter().enumerate() {
            let want = (g * FILES + i as u64).to_string();
            assert_eq!(read(&mnt.path().join(&spec.path)), want);
            let old = (((g - 1) * FILES) + i as u64).to_string();
            let view = mnt
                .path()
                .join(format!(".dagfs/generations/{}/{}", g - 1, spec.path));
            assert_eq!(read(&view), old);
        }
    }
    let mut names: Vec<String> = std::fs::read_dir(mnt.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["d0", "d1", "d2", "d3", "d4"],
        ".dagfs is never listed"
    );
    let mut views: Vec<String> = std::fs::read_dir(mnt.path().join(".dagfs/generations"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    views.sort();
    assert_eq!(views, [switches.to_string(), (switches + 1).to_string()]);

    // Every file was replaced at every switch: the kernel must have returned the references
    // of the replaced inodes. What stays: the served tree and the two views, looked up.
    let bound = 3 * (FILES as usize + 6) + 4;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let counts = fs.inode_counts();
        if counts.kernel <= bound && counts.retired == 0 && counts.table <= bound {
            eprintln!("after {switches} switches: {counts:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the kernel still holds {counts:?} after {switches} switches of {FILES} files (bound {bound})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    mounted.unmount().unwrap();
}

/// One file of a hand-made tree: `content` is the number the file holds.
fn spec(path: &str, content: u64, g: u64) -> FileSpec {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&content.to_le_bytes());
    FileSpec {
        path: path.into(),
        mode: 0o644,
        size: content.to_string().len() as u64,
        mtime_ns: g as i64 * 1_000_000_000,
        content: ContentId(id),
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// With a TTL far longer than the test, everything the kernel cached from the old tree (an
/// entry, a cached absence, a file's attributes and pages, a directory's attributes and
/// listing) must be gone the moment `switch` returns: only the switch's invalidations can
/// make that so.
#[test]
fn nothing_cached_before_a_switch_is_served_after_it_whatever_the_ttl() {
    let source = Numbers::new(200);
    let options = MountOptions {
        ttl: Duration::from_secs(24 * 3600),
        // SAFETY: getuid and getgid cannot fail.
        uid: unsafe { libc::getuid() },
        gid: unsafe { libc::getgid() },
        shown_before: None,
    };
    let old = vec![
        spec("d/keep.py", 7, 1),
        spec("d/change.py", 8, 1),
        spec("d/gone.py", 9, 1),
    ];
    let new = vec![
        spec("d/keep.py", 7, 2),
        spec("d/change.py", 123, 2),
        spec("d/new.py", 45, 2),
    ];
    let fs = Arc::new(DagFs::new(source, options, label(1), &old).unwrap());
    let (mnt, mounted) = mount_in_tempdir(&fs);
    let d = mnt.path().join("d");

    // Fill the kernel's caches from the old tree, twice, so the second round is served
    // from them.
    let mut dir_mtime = None;
    for _ in 0..2 {
        assert_eq!(read(&d.join("change.py")), "8");
        assert_eq!(std::fs::metadata(d.join("change.py")).unwrap().len(), 1);
        assert_eq!(read(&d.join("gone.py")), "9");
        assert_eq!(read(&d.join("keep.py")), "7");
        let absent = std::fs::metadata(d.join("new.py")).unwrap_err();
        assert_eq!(absent.kind(), io::ErrorKind::NotFound);
        assert_eq!(listing(&d), ["change.py", "gone.py", "keep.py"]);
        dir_mtime = Some(std::fs::metadata(&d).unwrap().modified().unwrap());
    }

    fs.switch(label(2), &new, &mounted.invalidator()).unwrap();

    assert_eq!(
        read(&d.join("change.py")),
        "123",
        "a changed file's old bytes"
    );
    assert_eq!(
        std::fs::metadata(d.join("change.py")).unwrap().len(),
        3,
        "a changed file's old size"
    );
    assert_eq!(
        read(&d.join("new.py")),
        "45",
        "a cached absence hid a new file"
    );
    let gone = std::fs::metadata(d.join("gone.py")).unwrap_err();
    assert_eq!(
        gone.kind(),
        io::ErrorKind::NotFound,
        "a removed file is served"
    );
    assert_eq!(read(&d.join("keep.py")), "7");
    assert_eq!(
        listing(&d),
        ["change.py", "keep.py", "new.py"],
        "an old listing"
    );
    assert_ne!(
        std::fs::metadata(&d).unwrap().modified().unwrap(),
        dir_mtime.unwrap(),
        "a directory's old mtime (Python would not re-list it)"
    );
    mounted.unmount().unwrap();
}
