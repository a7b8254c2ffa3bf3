//! `dagfs mount --mode link` for real: generation directories and a symlink swapped
//! atomically, served by the real binary, read by real processes, attacked with readers
//! racing switches, `kill -9` during switches and writers of another user and of the same.
//! The local store drives the mechanism; one test runs on MiniDFS.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dagfs::format::Digest;

use support::generations::{content, rel, write_generation};
use support::minidfs::MiniDfs;
use support::served::Bed;

/// Rewrites `dir` as generation `generation`: `files` files, plus one file that exists only
/// in odd generations (a mix would show it with an even generation's files).
fn write_generation_with_odd(dir: &Path, generation: u64, files: usize) {
    write_generation(dir, generation, files);
    let odd = dir.join("odd_only.py");
    if generation % 2 == 1 {
        std::fs::write(&odd, content(generation, 999)).unwrap();
    } else {
        let _ = std::fs::remove_file(&odd);
    }
}

/// The generation a whole directory shows, checking that every file is whole and of that
/// one generation and that the file set is that generation's; `Err` says what is wrong.
fn check_tree(dir: &Path, files: usize) -> Result<u64, String> {
    let mut seen = BTreeMap::new();
    for entry in walkdir::WalkDir::new(dir).follow_links(false) {
        let entry = entry.map_err(|e| format!("walk {}: {e}", dir.display()))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let text = std::fs::read_to_string(entry.path())
            .map_err(|e| format!("read {}: {e}", entry.path().display()))?;
        let (generation, i) =
            header(&text).ok_or_else(|| format!("{}: no header", entry.path().display()))?;
        if text != content(generation, i) {
            return Err(format!("{} is partial or damaged", entry.path().display()));
        }
        seen.insert(entry.path().to_path_buf(), generation);
    }
    let generations: std::collections::BTreeSet<u64> = seen.values().copied().collect();
    let [generation] = generations.iter().copied().collect::<Vec<_>>()[..] else {
        return Err(format!(
            "{} mixes generations {generations:?}",
            dir.display()
        ));
    };
    let expected = files + usize::from(generation % 2 == 1);
    if seen.len() != expected {
        return Err(format!(
            "{} has {} files, generation {generation} has {expected}",
            dir.display(),
            seen.len()
        ));
    }
    Ok(generation)
}

fn header(text: &str) -> Option<(u64, usize)> {
    let line = text.lines().next()?;
    let rest = line.strip_prefix("# gen=")?;
    let (generation, file) = rest.split_once(" file=")?;
    Some((generation.parse().ok()?, file.parse().ok()?))
}

/// One test's directories and the `dagfs` commands run against its store.
/// The status code of `GET /healthz` at `addr`.
fn healthz(addr: &str) -> u16 {
    support::http_get(addr, "/healthz").expect("GET /healthz").0
}

/// Names of half-built or half-removed things a switch can leave.
fn leftovers(served: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for dir in [served.to_path_buf(), served.join(".dagfs/generations")] {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".current-")
                || name.contains(".tmp-")
                || name.contains(".removing-")
            {
                found.push(name);
            }
        }
    }
    found
}

/// Waits until the server starts building a generation directory (polling, 10 s at most).
fn until_building(served: &Path) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(10);
    let generations = served.join(".dagfs/generations");
    loop {
        let building = std::fs::read_dir(&generations)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains(".tmp-"));
        if building {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "no generation directory was built"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn seed() -> u64 {
    let seed = std::env::var("DAGFS_LINK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("seed {seed} (replay with DAGFS_LINK_SEED={seed})");
    seed
}

/// Two readers race 12 switches: one resolves `current` once per pass and reads the whole
/// generation there (the bundle's way), one opens every file through `current/` (Airflow's
/// dags_folder walk). The first must see one whole generation per pass, the second whole
/// files and a single cut (never an older generation after a newer one).
#[test]
fn readers_racing_switches_see_whole_generations_and_one_cut() {
    const FILES: usize = 120;
    let bed = Bed::local();
    write_generation_with_odd(&bed.dags(), 1, FILES);
    bed.push();
    let mut server = bed.serve("link", &[]);
    server.serving(1);
    let current = bed.served().join("current");
    assert_eq!(check_tree(&current, FILES), Ok(1));

    let stop = Arc::new(AtomicBool::new(false));
    let resolving = {
        let (stop, served) = (Arc::clone(&stop), bed.served());
        std::thread::spawn(move || {
            let mut passes = BTreeMap::<u64, usize>::new();
            while !stop.load(Ordering::SeqCst) {
                let target = std::fs::read_link(served.join("current")).unwrap();
                let generation = check_tree(&served.join(&target), FILES)
                    .unwrap_or_else(|e| panic!("pass over {}: {e}", target.display()));
                *passes.entry(generation).or_default() += 1;
            }
            passes
        })
    };
    let walking = {
        let (stop, current) = (Arc::clone(&stop), current.clone());
        std::thread::spawn(move || {
            let mut newest = 0;
            let mut reads = 0usize;
            while !stop.load(Ordering::SeqCst) {
                for i in 0..FILES {
                    let text = std::fs::read_to_string(current.join(rel(i))).unwrap();
                    let (generation, file) = header(&text).unwrap();
                    assert_eq!(text, content(generation, file), "{} is partial", rel(i));
                    assert!(
                        generation >= newest,
                        "{} showed generation {generation} after {newest}",
                        rel(i)
                    );
                    newest = generation;
                    reads += 1;
                }
            }
            (newest, reads)
        })
    };
    for generation in 2..=13 {
        write_generation_with_odd(&bed.dags(), generation, FILES);
        bed.push();
        server.serving(generation);
    }
    stop.store(true, Ordering::SeqCst);
    let passes = resolving.join().expect("resolving reader");
    let (newest, reads) = walking.join().expect("walking reader");
    eprintln!("whole passes by generation: {passes:?}; file reads through current/: {reads}");
    assert!(passes.len() >= 2, "the reader saw switches: {passes:?}");
    assert_eq!(newest, 13);
    // Every generation served within mount.keep_for (1 h) is still there; none is partial.
    let state = server.serving(13);
    assert_eq!(state.views.len(), 13, "{:?}", state.views);
    for view in &state.views {
        let dir = bed
            .served()
            .join(".dagfs/generations")
            .join(view.generation.to_string());
        assert_eq!(check_tree(&dir, FILES), Ok(view.generation));
    }
}

/// `kill -9` of the server at seeded random moments while it switches: `current` always
/// names a complete generation, and a restart removes what was half built and serves the
/// head. Kills go on until `MID_SWITCH` of them landed mid-switch (a leftover seen), or the
/// test proves nothing; how many land there depends on the machine's load, so the count of
/// kills is bounded, not fixed.
#[test]
fn kill_9_during_switches_leaves_a_complete_generation_and_a_restart_cleans_up() {
    const FILES: usize = 600;
    const MID_SWITCH: u64 = 4;
    const MAX_KILLS: u64 = 40;
    let mut rng = fastrand::Rng::with_seed(seed());
    let bed = Bed::local();
    write_generation_with_odd(&bed.dags(), 1, FILES);
    bed.push();
    let mut server = bed.serve("link", &[]);
    server.serving(1);
    // How long building a generation takes here: the kills are spread over it.
    write_generation_with_odd(&bed.dags(), 2, FILES);
    bed.push();
    let building = until_building(&bed.served());
    server.serving(2);
    let window = building.elapsed().as_millis() as u64;
    let (mut kills, mut mid_switch) = (0, 0);
    let mut generation = 2;
    while mid_switch < MID_SWITCH && kills < MAX_KILLS {
        generation += 1;
        kills += 1;
        write_generation_with_odd(&bed.dags(), generation, FILES);
        bed.push();
        until_building(&bed.served());
        std::thread::sleep(Duration::from_millis(rng.u64(0..=window / 2)));
        server.kill();
        let current = bed.served().join("current");
        let shown = check_tree(&current, FILES)
            .unwrap_or_else(|e| panic!("after kill -9 at generation {generation}: {e}"));
        assert!(shown == generation || shown == generation - 1, "{shown}");
        if !leftovers(&bed.served()).is_empty() {
            mid_switch += 1;
        }
        server = bed.serve("link", &[]);
        server.serving(generation);
        assert_eq!(check_tree(&current, FILES), Ok(generation));
        assert_eq!(leftovers(&bed.served()), Vec::<String>::new());
    }
    eprintln!(
        "{mid_switch} of {kills} kills left a half-built directory or link (window {window} ms)"
    );
    assert!(
        mid_switch >= MID_SWITCH,
        "only {mid_switch} of {kills} kills landed mid-switch: the test proves too little"
    );
}

/// A reader of another user cannot write, chmod, replace or remove a served file, so the
/// cache behind hard links stays intact; a same-user writer (copies) damages only its copy:
/// the cache and the other generations stay intact and a restart rebuilds the directory.
#[test]
fn a_writer_cannot_corrupt_the_cache() {
    let is_root = rustix::process::geteuid().is_root();
    if !is_root {
        eprintln!("skipped: needs root to run a reader as another user");
        return;
    }
    let bed = Bed::local();
    write_generation_with_odd(&bed.dags(), 1, 3);
    bed.push();
    let original = content(1, 0);
    let digest = Digest::of(original.as_bytes()).to_string();
    let object = bed.cache().join("objects").join(&digest[..2]).join(&digest);

    // Hard links (dagfs runs as root): the cache's inode is served, read-only, root's.
    let mut server = bed.serve("link", &["--set", "mount.link_files=hardlink"]);
    server.serving(1);
    let served = bed.served().join(".dagfs/generations/1").join(rel(0));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&served).unwrap().ino(),
        std::fs::metadata(&object).unwrap().ino(),
        "hard-linked: no bytes copied"
    );
    let as_nobody = |script: &str| {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sh",
                "-c",
                script,
            ])
            .arg("sh")
            .arg(&served)
            .output()
            .unwrap()
    };
    let read = as_nobody("cat \"$1\"");
    assert!(read.status.success(), "a reader can read: {read:?}");
    assert_eq!(String::from_utf8_lossy(&read.stdout), original);
    for attack in [
        "echo evil >> \"$1\"",
        "echo evil > \"$1\"",
        "chmod 666 \"$1\"",
        "rm -f \"$1\"",
        "mv \"$1\" \"$1.x\"",
        "touch \"$(dirname \"$1\")/new.py\"",
        "truncate -s 0 \"$1\"",
    ] {
        let out = as_nobody(attack);
        assert!(
            !out.status.success(),
            "`{attack}` succeeded as another user"
        );
    }
    assert_eq!(std::fs::read_to_string(&object).unwrap(), original);
    assert_eq!(check_tree(&bed.served().join("current"), 3), Ok(1));
    server.kill();

    // Copies: a writer of dagfs's own user (root here) changes its copy only.
    std::fs::remove_dir_all(bed.served()).unwrap();
    let mut server = bed.serve("link", &["--set", "mount.link_files=copy"]);
    server.serving(1);
    assert_ne!(
        std::fs::metadata(&served).unwrap().ino(),
        std::fs::metadata(&object).unwrap().ino()
    );
    std::fs::write(&served, "evil = True\n").unwrap();
    assert_eq!(
        std::fs::read_to_string(&object).unwrap(),
        original,
        "the cache is intact"
    );
    write_generation_with_odd(&bed.dags(), 2, 3);
    bed.push();
    server.serving(2);
    assert_eq!(check_tree(&bed.served().join("current"), 3), Ok(2));
    // A restart re-hashes the kept directories and rebuilds the damaged one.
    server.kill();
    let mut server = bed.serve("link", &["--set", "mount.link_files=copy"]);
    server.serving(2);
    assert_eq!(
        check_tree(&bed.served().join(".dagfs/generations/1"), 3),
        Ok(1)
    );
}

/// On MiniDFS: the state, views and `/healthz` the bundle and the identity gate read, and a
/// switch to a new head.
#[test]
fn link_mode_on_minidfs_serves_the_head_with_the_mounts_state() {
    let cluster = MiniDfs::shared();
    let mut bed = Bed::local();
    bed.cluster = Some(cluster);
    bed.store = cluster.unique_root("link");
    write_generation_with_odd(&bed.dags(), 1, 20);
    bed.push();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut server = bed.serve("link", &["--metrics", &metrics]);
    let state = server.serving(1);
    assert!(state.is_current(), "{state:?}");
    assert_eq!(check_tree(&bed.served().join("current"), 20), Ok(1));
    assert_eq!(healthz(&metrics), 200);
    write_generation_with_odd(&bed.dags(), 2, 20);
    bed.push();
    let state = server.serving(2);
    assert_eq!(check_tree(&bed.served().join("current"), 20), Ok(2));
    let views: Vec<u64> = state.views.iter().map(|v| v.generation).collect();
    assert_eq!(views, [1, 2]);
    // `dagfs status --json` lists it like a mount, with the mountpoint the bundle's `mount`
    // names and the views under it.
    let out = bed.dagfs(&["status", "--json"]).output().unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mount = &status["mount"][0];
    assert_eq!(mount["mountpoint"], bed.served().display().to_string());
    assert_eq!(mount["running"], true);
    assert_eq!(mount["generation"], 2);
}
