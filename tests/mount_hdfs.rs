//! `dagfs mount` for real: a FUSE mount of generations in a real HDFS (MiniDFS), read through
//! the kernel like the DAG processor does.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dagfs::format::Digest;

use support::generations::{content, rel, write_generation};
use support::minidfs::{MiniDfs, MiniDfsOptions};
use support::mount::{push, Folders, Mount};

/// The bound the mount promises for any filesystem call while HDFS is down.
const CALL_BOUND: Duration = Duration::from_secs(2);

/// blake3 of every file under `root`, by relative path.
fn hashes(root: &Path) -> BTreeMap<String, Digest> {
    walkdir::WalkDir::new(root)
        .sort_by_file_name()
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            (rel, Digest::of(&std::fs::read(e.path()).unwrap()))
        })
        .collect()
}

/// [`Folders::on_shared_cluster`] with generation 1 of `files` numbered files pushed.
fn published(name: &str, files: usize) -> (&'static MiniDfs, String, Folders) {
    let (cluster, url, folders) = Folders::on_shared_cluster(name);
    let (dags, _, runtime, _) = folders.paths();
    write_generation(&dags, 1, files);
    push(cluster, &runtime, &dags, &url);
    (cluster, url, folders)
}

#[test]
fn serves_identical_bytes_and_switches_atomically() {
    let (cluster, url, folders) = Folders::on_shared_cluster("mount-atomic");
    let (dags, mnt, runtime, _) = folders.paths();
    const FILES: usize = 100;
    write_generation(&dags, 1, FILES);
    std::fs::write(dags.join("run.sh"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        dags.join("run.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    push(cluster, &runtime, &dags, &url);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let mut mount = folders.mount(cluster, &url, &["--metrics", &metrics]);
    let state = mount.serving(1);
    assert!(state.is_current() && state.online, "{state:?}");
    assert_eq!(
        hashes(&mnt),
        hashes(&dags),
        "mount differs from the published folder"
    );
    let local = std::fs::metadata(dags.join("run.sh")).unwrap();
    let mounted = std::fs::metadata(mnt.join("run.sh")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (mounted.mode() & 0o777, mounted.mtime(), mounted.len()),
        (0o755, local.mtime(), local.len())
    );
    let err = std::fs::write(mnt.join("new.py"), "x").unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(30),
        "writes fail with EROFS: {err}"
    );
    let root_mtime = std::fs::metadata(&mnt).unwrap().modified().unwrap();

    // A reader loops over the tree while generation 2 (every file changed) is published.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, mnt) = (Arc::clone(&stop), mnt.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut passes_after_stop = 0;
            while passes_after_stop < 2 {
                if stop.load(Ordering::SeqCst) {
                    passes_after_stop += 1;
                }
                for i in 0..FILES {
                    let bytes = std::fs::read(mnt.join(rel(i))).unwrap();
                    let generation = if bytes == content(1, i).as_bytes() {
                        1
                    } else if bytes == content(2, i).as_bytes() {
                        2
                    } else {
                        panic!(
                            "{} is neither generation's content ({} bytes)",
                            rel(i),
                            bytes.len()
                        );
                    };
                    seen.push(generation);
                }
            }
            seen
        })
    };
    // Looked up before it exists: the kernel caches its absence; the switch must undo that.
    assert!(!mnt.join("added.py").exists());
    write_generation(&dags, 2, FILES);
    std::fs::write(dags.join("added.py"), "added").unwrap();
    push(cluster, &runtime, &dags, &url);
    mount.serving(2);
    // By path, before any listing (a listing would re-instantiate the entry).
    assert_eq!(std::fs::read(mnt.join("added.py")).unwrap(), b"added");
    stop.store(true, Ordering::SeqCst);
    let seen = reader.join().unwrap();

    // One cut: once any file showed generation 2, no file showed generation 1 again.
    let first_new = seen
        .iter()
        .position(|&g| g == 2)
        .expect("generation 2 was never seen");
    let back = seen[first_new..].iter().filter(|&&g| g == 1).count();
    assert_eq!(
        back, 0,
        "{back} reads went back to generation 1 after generation 2 appeared"
    );
    assert!(seen[seen.len() - FILES..].iter().all(|&g| g == 2));
    assert_eq!(hashes(&mnt), hashes(&dags));
    assert!(
        std::fs::metadata(&mnt).unwrap().modified().unwrap() > root_mtime,
        "root listing changed, so must its mtime"
    );
    mount.stop();
}

#[test]
fn corrupt_object_reads_as_eio_never_wrong_bytes() {
    let (cluster, url, folders) = Folders::on_shared_cluster("mount-corrupt");
    let (dags, mnt, runtime, _) = folders.paths();
    std::fs::create_dir_all(&dags).unwrap();
    std::fs::write(dags.join("good.py"), "good = 1\n").unwrap();
    std::fs::write(dags.join("bad.py"), "bad = 1\n").unwrap();
    push(cluster, &runtime, &dags, &url);

    // Same size, other bytes: only the hash can tell.
    support::corrupt_object(cluster, &url, b"bad = 1\n", b"bad = 2\n");

    let mut mount = Mount::start(cluster, &runtime, &url, &mnt, &folders.cache());
    mount.serving(1);
    assert_eq!(std::fs::read(mnt.join("good.py")).unwrap(), b"good = 1\n");
    let err = std::fs::read(mnt.join("bad.py")).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(5),
        "corrupt content must be EIO: {err}"
    );
    mount.stop();
}

#[test]
fn namenode_down_serves_from_cache_restarts_offline_and_recovers() {
    let cluster = MiniDfs::start(MiniDfsOptions::default());
    let url = format!("{}/dags-offline", cluster.url());
    let folders = Folders::new();
    let (dags, mnt, runtime, _) = folders.paths();
    let cache = folders.cache();
    write_generation(&dags, 1, 40);
    push(&cluster, &runtime, &dags, &url);
    let mut mount = Mount::start(&cluster, &runtime, &url, &mnt, &cache);
    mount.serving(1);
    let expected = hashes(&dags);

    cluster.stop_namenode(0);
    mount.wait_for("the mount to notice the store is down", |s| !s.online);
    let check_bounded = |mnt: &Path| {
        let mut slowest = Duration::ZERO;
        for entry in walkdir::WalkDir::new(mnt) {
            let started = Instant::now();
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_file() {
                std::fs::read(entry.path()).unwrap();
            }
            slowest = slowest.max(started.elapsed());
        }
        assert!(
            slowest < CALL_BOUND,
            "a call took {slowest:?} with HDFS down"
        );
        assert_eq!(hashes(mnt), expected);
    };
    check_bounded(&mnt);

    // A host reboot while HDFS is still down: the mount starts from its cache.
    mount.stop();
    let mut mount = Mount::start(&cluster, &runtime, &url, &mnt, &cache);
    let state = mount.serving(1);
    assert!(!state.online && state.last_error.is_some(), "{state:?}");
    check_bounded(&mnt);

    cluster.restart_namenode(0);
    write_generation(&dags, 2, 40);
    push(&cluster, &runtime, &dags, &url);
    let state = mount.serving(2);
    assert!(state.online && state.is_current(), "{state:?}");
    assert_eq!(hashes(&mnt), hashes(&dags));
    mount.stop();
}

#[test]
fn an_operator_unmount_ends_the_mount_and_a_crashed_mount_is_replaced() {
    let (cluster, url, folders) = published("mount-lifecycle", 5);
    let (dags, mnt, runtime, _) = folders.paths();
    let cache = folders.cache();

    // `fusermount3 -u` by an operator: the mount process notices and exits 0.
    let mut mount = Mount::start(cluster, &runtime, &url, &mnt, &cache);
    mount.serving(1);
    let unmounted = Command::new("fusermount3")
        .arg("-u")
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(unmounted.success());
    let status = mount.wait_exit(Duration::from_secs(10));
    assert!(
        status.success(),
        "dagfs mount exited with {status} after an external unmount"
    );

    // kill -9 leaves a dead FUSE mount ("Transport endpoint is not connected"); a new
    // mount on the same directory replaces it.
    let mut crashed = Mount::start(cluster, &runtime, &url, &mnt, &cache);
    crashed.serving(1);
    crashed.kill();
    let err = std::fs::read_dir(&mnt).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(107),
        "a dead mount answers ENOTCONN: {err}"
    );
    let mut replaced = Mount::start(cluster, &runtime, &url, &mnt, &cache);
    replaced.serving(1);
    assert_eq!(hashes(&mnt), hashes(&dags));
    replaced.stop();
}

#[test]
fn every_recently_served_generation_is_readable_under_dagfs_generations() {
    const FILES: usize = 20;
    let (cluster, url, folders) = published("mount-views", FILES);
    let (dags, mnt, runtime, _) = folders.paths();
    let keep_for = Duration::from_secs(4);
    let mut mount = folders.mount(
        cluster,
        &url,
        &[
            "--set",
            "mount.keep_generations=1",
            "--set",
            &format!("mount.keep_for={}s", keep_for.as_secs()),
        ],
    );
    mount.serving(1);
    let started = Instant::now();
    for generation in 2..=3 {
        write_generation(&dags, generation, FILES);
        push(cluster, &runtime, &dags, &url);
        mount.serving(generation);
    }
    let views = |state: &dagfs::mount::state::MountState| -> Vec<u64> {
        state.views.iter().map(|v| v.generation).collect()
    };
    let state = mount.serving(3);
    // Generation 2 stopped being served (at the switch to 3) before this moment.
    let left_2 = Instant::now();
    assert!(started.elapsed() < keep_for, "the test machine is too slow");
    // Served within keep_for: all three stay, each exactly its generation.
    assert_eq!(views(&state), [1, 2, 3], "{state:?}");
    for generation in 1..=3u64 {
        let view = mnt.join(format!(".dagfs/generations/{generation}"));
        for i in 0..FILES {
            assert_eq!(
                std::fs::read_to_string(view.join(rel(i))).unwrap(),
                content(generation, i)
            );
        }
    }
    // Hidden from listings: a walk of the mount sees exactly the served generation.
    let names: Vec<String> = std::fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!names.iter().any(|n| n == ".dagfs"), "{names:?}");

    // Once keep_for has passed since 1 and 2 were left, the next switch keeps
    // keep_generations plus 3 (served until then), and the older views disappear.
    while left_2.elapsed() < keep_for + Duration::from_millis(500) {
        std::thread::sleep(Duration::from_millis(100));
    }
    write_generation(&dags, 4, FILES);
    push(cluster, &runtime, &dags, &url);
    let state = mount.wait_for("views 3 and 4", |s| {
        s.generation == Some(4) && s.views.iter().map(|v| v.generation).eq([3, 4])
    });
    assert_eq!(
        state.views.last().unwrap().tree_id,
        state.tree_id.clone().unwrap()
    );
    let gone = std::fs::metadata(mnt.join(".dagfs/generations/1")).unwrap_err();
    assert_eq!(gone.kind(), std::io::ErrorKind::NotFound);
    mount.stop();
}
