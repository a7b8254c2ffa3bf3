//! `dagfs push` as separate processes against a real HDFS (MiniDFS): concurrent publishers,
//! kill -9 at random points, malformed data in the store, a 200 MB file.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bytes::Bytes;
use dagfs::format::{manifest_key, Digest};
use dagfs::generations;
use dagfs::mirror::MIRROR_DIR;
use dagfs::scan::{scan, HashCache, ScanOptions};
use dagfs::store::{Overwrite, Store};
use serde_json::json;

use support::minidfs::{superuser, MiniDfs};

/// A fresh store root on the shared cluster, and a client for checking it.
async fn store(test: &str) -> (String, Box<dyn Store>, &'static MiniDfs) {
    let cluster = tokio::task::spawn_blocking(MiniDfs::shared).await.unwrap();
    let url = cluster.unique_root(test);
    let store = dagfs::store::open(&url, &cluster.options(None, Duration::from_secs(20)))
        .await
        .unwrap();
    (url, store, cluster)
}

/// `dagfs ARGS` against `cluster`, configured through the environment; `DAGFS_TEST_EXE`
/// runs another build instead (to watch an attack fail on it).
fn dagfs(cluster: &MiniDfs, args: &[&str]) -> Command {
    let exe = std::env::var_os("DAGFS_TEST_EXE")
        .unwrap_or_else(|| std::ffi::OsString::from(env!("CARGO_BIN_EXE_dagfs")));
    let mut command = Command::new(exe);
    command
        .args(args)
        .env_remove("DAGFS_CONFIG")
        .env("DAGFS_STORE_HADOOP_CONF_DIR", cluster.conf_dir())
        .env("DAGFS_STORE_USER", superuser())
        .env("DAGFS_STORE_TIMEOUT", "20s")
        // These tests check the mirror too; it is opt-in.
        .env("DAGFS_PUBLISH_MIRROR", "true")
        .env(
            "XDG_CACHE_HOME",
            std::env::temp_dir().join("dagfs-test-cache"),
        );
    command
}

fn run(cluster: &MiniDfs, args: &[&str]) -> Output {
    dagfs(cluster, args).output().expect("run dagfs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &Path, rel: &str, content: &[u8]) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// A DAG-like file of 2..20 KB whose content depends on `seed`.
fn dag_source(seed: u64, size: usize) -> Vec<u8> {
    let mut text = format!("# generated {seed}\nfrom airflow import DAG\n");
    while text.len() < size {
        text.push_str(&format!(
            "task_{seed}_{} = 'x' * {}\n",
            text.len(),
            seed % 97
        ));
    }
    text.into_bytes()
}

/// Deterministic pseudo-random numbers (xorshift64*), so a failing trial can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The head is a complete generation (valid manifest, every object present at its size), and
/// the mirror holds only paths some generation had.
async fn assert_consistent(store: &dyn Store) {
    let Some(head) = generations::load_head(store)
        .await
        .expect("the head manifest is valid")
    else {
        return;
    };
    for entry in &head.entries {
        let len = support::stored_len(store, &entry.blake3).await;
        assert_eq!(
            len,
            Some(entry.size),
            "generation {} needs {}",
            head.generation,
            entry.path
        );
    }
    let mut known = HashSet::new();
    for generation in generations::list(store).await.unwrap() {
        let manifest = generations::load(store, generation).await.unwrap();
        known.extend(manifest.entries.into_iter().map(|e| e.path));
    }
    for path in dagfs::store::files_under(store, MIRROR_DIR).await.unwrap() {
        assert!(
            known.contains(&path),
            "mirror holds {path}, which no generation has"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pushes_to_disjoint_prefixes_both_land() {
    let (url, store, cluster) = store("disjoint").await;
    let dir = tempfile::tempdir().unwrap();
    for team in ["team_a", "team_b"] {
        for i in 0..20 {
            write(
                &dir.path().join(team),
                &format!("dag_{i}.py"),
                &dag_source(i, 4000),
            );
        }
    }
    let children: Vec<_> = ["team_a", "team_b"]
        .iter()
        .map(|team| {
            let folder = dir.path().join(team);
            dagfs(
                cluster,
                &[
                    "push",
                    folder.to_str().unwrap(),
                    "--to",
                    &url,
                    "--prefix",
                    team,
                    "-q",
                ],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let head = generations::load_head(&*store).await.unwrap().unwrap();
    assert_eq!(head.generation, 2, "one generation per push");
    assert_eq!(head.entries.len(), 40, "nothing lost");
    assert_consistent(&*store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pushes_of_the_same_file_conflict_or_serialise() {
    let (url, store, cluster) = store("overlap").await;
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("base"), "shared.py", b"base");
    assert!(run(
        cluster,
        &[
            "push",
            dir.path().join("base").to_str().unwrap(),
            "--to",
            &url
        ]
    )
    .status
    .success());
    let mut conflicts = 0;
    for round in 0..5 {
        let children: Vec<_> = ["x", "y"]
            .iter()
            .map(|who| {
                let folder = dir.path().join(format!("{who}{round}"));
                write(&folder, "shared.py", format!("{who} {round}").as_bytes());
                dagfs(
                    cluster,
                    &["push", folder.to_str().unwrap(), "--to", &url, "-q"],
                )
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
            })
            .collect();
        let outputs: Vec<Output> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        for out in &outputs {
            if !out.status.success() {
                let err = text(&out.stderr);
                assert_eq!(out.status.code(), Some(1), "{err}");
                assert!(
                    err.contains("conflict")
                        && err.contains("shared.py")
                        && err.contains("--force"),
                    "{err}"
                );
                assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
                conflicts += 1;
            }
        }
        assert!(
            outputs.iter().any(|o| o.status.success()),
            "one push always lands"
        );
        let head = generations::load_head(&*store).await.unwrap().unwrap();
        let content = support::read_object(&*store, &head.entries[0].blake3).await;
        assert!(
            content == format!("x {round}") || content == format!("y {round}"),
            "{content:?}"
        );
    }
    eprintln!("{conflicts} conflicts in 5 rounds of racing pushes");
    assert_consistent(&*store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_points_never_exposes_a_partial_generation() {
    const TRIALS: usize = 50;
    let (url, store, cluster) = store("crash").await;
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("dags");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..40 {
        write(
            &folder,
            &format!("d{}/dag_{i}.py", i % 4),
            &dag_source(i, 2000 + (i as usize * 450)),
        );
    }
    let mutate = |rng: &mut Rng, round: u64| {
        for _ in 0..8 {
            let i = rng.next() % 40;
            let size = 2000 + (rng.next() % 18000) as usize;
            let path = format!("d{}/dag_{i}.py", i % 4);
            write(&folder, &path, &dag_source(1000 * round + i, size));
        }
    };
    let push = ["push", folder.to_str().unwrap(), "--to", &url, "-q"];
    // How long a push of 8 changed files takes here, so kill points cover all its phases.
    assert!(run(cluster, &push).status.success());
    mutate(&mut rng, 999);
    let started = std::time::Instant::now();
    assert!(run(cluster, &push).status.success());
    let span_ms = (started.elapsed().as_millis() as u64 * 13 / 10).max(50);
    let mut committed = 0;
    for trial in 0..TRIALS {
        mutate(&mut rng, trial as u64);
        let before = generations::head(&*store).await.unwrap();
        let mut child = dagfs(
            cluster,
            &["push", folder.to_str().unwrap(), "--to", &url, "-q"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        // The random point of the kill: anywhere from scanning to the mirror update.
        tokio::time::sleep(Duration::from_millis(rng.next() % span_ms)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert_consistent(&*store).await;
        committed += usize::from(generations::head(&*store).await.unwrap() != before);
    }
    eprintln!(
        "{committed} of {TRIALS} pushes killed within {span_ms} ms had committed their generation"
    );

    // A clean re-run converges: the head is exactly the folder, the mirror exactly the head.
    let out = run(
        cluster,
        &["push", folder.to_str().unwrap(), "--to", &url, "--json"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let local = scan(
        &folder,
        &ScanOptions::default(),
        &mut HashCache::in_memory(),
    )
    .unwrap();
    let local_entries: Vec<_> = local.iter().map(|f| f.entry.clone()).collect();
    let head = generations::load_head(&*store).await.unwrap().unwrap();
    assert_eq!(head.tree_id, dagfs::format::tree_id(&local_entries));
    let head_paths: Vec<String> = head.entries.iter().map(|e| e.path.clone()).collect();
    assert_eq!(
        dagfs::store::files_under(&*store, MIRROR_DIR)
            .await
            .unwrap(),
        head_paths
    );
    for entry in &head.entries {
        let bytes = store
            .read(&format!("{MIRROR_DIR}/{}", entry.path))
            .await
            .unwrap();
        assert_eq!(Digest::of(&bytes), entry.blake3, "mirror/{}", entry.path);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_store_data_is_refused_with_a_clear_error() {
    let (url, store, cluster) = store("malformed").await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.py", b"print('a')\n");
    assert!(run(
        cluster,
        &["push", dir.path().to_str().unwrap(), "--to", &url]
    )
    .status
    .success());
    let good = store.read(&manifest_key(1)).await.unwrap();

    // An object whose bytes do not match its digest: never copied into the mirror.
    support::damage_object(&*store, b"print('a')\n", b"print('b')\n").await;
    store.delete("mirror.state", false).await.unwrap();
    store.delete("mirror/a.py", false).await.unwrap();
    let out = run(
        cluster,
        &["push", dir.path().to_str().unwrap(), "--to", &url],
    );
    assert!(
        text(&out.stderr).contains("do not match their blake3"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        store.stat("mirror/a.py").await.is_err(),
        "damaged bytes reached the mirror"
    );

    // A hand-edited manifest (content changed, digests not): refused whole.
    let edited = String::from_utf8(good.to_vec())
        .unwrap()
        .replace("\"size\": 11", "\"size\": 12");
    store
        .put(&manifest_key(1), Bytes::from(edited), Overwrite::Allow)
        .await
        .unwrap();
    for args in [
        vec!["log", "--store", &url],
        vec!["push", dir.path().to_str().unwrap(), "--to", &url],
    ] {
        let out = run(cluster, &args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("corrupt manifest") && err.contains("generation 1"),
            "{err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    assert_eq!(
        generations::list(&*store).await.unwrap(),
        [1],
        "nothing published on top"
    );

    // A manifest naming a path outside the tree.
    let escaping = String::from_utf8(good.to_vec())
        .unwrap()
        .replace("\"a.py\"", "\"../a.py\"");
    store
        .put(&manifest_key(1), Bytes::from(escaping), Overwrite::Allow)
        .await
        .unwrap();
    let out = run(cluster, &["diff", "1", "1", "--store", &url]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("invalid path \"../a.py\""), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_200_mb_file_is_published_whole() {
    let (url, store, cluster) = store("big").await;
    let dir = tempfile::tempdir().unwrap();
    let size = 200 * 1024 * 1024;
    let content: Vec<u8> = (0..size)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();
    write(dir.path(), "data/model.bin", &content);
    let out = run(
        cluster,
        &[
            "push",
            dir.path().to_str().unwrap(),
            "--to",
            &url,
            "--no-mirror",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let head = generations::load_head(&*store).await.unwrap().unwrap();
    assert_eq!(head.entries[0].size, size as u64);
    assert_eq!(head.entries[0].blake3, Digest::of(&content));
    let stored = support::read_object(&*store, &head.entries[0].blake3).await;
    assert_eq!(Digest::of(&stored), Digest::of(&content));
}

/// A push of 1,000 changed files creates a constant number of files in HDFS (its pack and
/// its manifest; format 1 created one per object), and leaves a complete head.
#[tokio::test(flavor = "multi_thread")]
async fn a_push_of_1000_changed_files_creates_a_constant_number_of_hdfs_files() {
    let (url, store, cluster) = store("packs").await;
    let dir = tempfile::tempdir().unwrap();
    for round in 0..2u64 {
        for i in 0..1000 {
            write(
                dir.path(),
                &format!("dags/dag_{i:04}.py"),
                &dag_source(round * 1000 + i, 2000),
            );
        }
        let before = dagfs::store::files_under(&*store, "").await.unwrap();
        let started = std::time::Instant::now();
        let out = run(
            cluster,
            &[
                "push",
                "-q",
                dir.path().to_str().unwrap(),
                "--to",
                &url,
                "--no-mirror",
            ],
        );
        let took = started.elapsed();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let after = dagfs::store::files_under(&*store, "").await.unwrap();
        let created: Vec<&String> = after.iter().filter(|f| !before.contains(f)).collect();
        eprintln!(
            "round {round}: 1,000 changed files, {} HDFS files created, push took {took:.2?}",
            created.len()
        );
        assert!(
            created.len() <= 2,
            "round {round}: {} files created: {:?}",
            created.len(),
            &created[..created.len().min(5)]
        );
        assert_consistent(&*store).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_keeps_the_newest_generations_and_what_they_use() {
    let (url, store, cluster) = store("gc").await;
    let dir = tempfile::tempdir().unwrap();
    for round in 0..4u64 {
        write(dir.path(), "changing.py", &dag_source(round, 3000));
        write(dir.path(), "stable.py", &dag_source(99, 3000));
        assert!(run(
            cluster,
            &["push", dir.path().to_str().unwrap(), "--to", &url]
        )
        .status
        .success());
    }
    let gc = |max_garbage: &str| {
        let out = run(
            cluster,
            &[
                "gc",
                "--keep",
                "2",
                "--grace",
                "0s",
                "--max-garbage",
                max_garbage,
                "--store",
                &url,
                "--json",
            ],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let summary = gc("100");
    assert_eq!(summary["generations"], json!([1, 2]));
    // One pack per push: round 1's ({changing.py 1}) is dead; round 0's ({changing.py 0,
    // stable.py}) is live through stable.py and, never repacked, kept whole.
    assert_eq!(
        (&summary["packs"], &summary["objects"], &summary["repacked"]),
        (&json!(1), &json!(1), &json!(0)),
        "only round 1's pack goes: {summary}"
    );
    assert_eq!(generations::list(&*store).await.unwrap(), [3, 4]);
    assert_consistent(&*store).await;
    // About half of round 0's pack is garbage: repacked at 40 %, stable.py moves to a new
    // pack, and the old pack with changing.py 0 goes.
    let summary = gc("40");
    assert_eq!(
        (&summary["packs"], &summary["objects"], &summary["repacked"]),
        (&json!(1), &json!(1), &json!(1)),
        "round 0's pack is repacked: {summary}"
    );
    assert_consistent(&*store).await;
    let out = run(cluster, &["verify", "--store", &url, "--deep"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Rolling back to a kept generation still works; to a collected one, a clear error.
    assert!(run(cluster, &["rollback", "3", "--store", &url])
        .status
        .success());
    let out = run(cluster, &["rollback", "1", "--store", &url]);
    assert!(
        text(&out.stderr).contains("generation 1 does not exist"),
        "{}",
        text(&out.stderr)
    );
}
