//! `dagfs verify` against a real HDFS (MiniDFS) and a real mount: every kind of drift is
//! found and named, exit codes 0 / 1 / 2.

mod support;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use dagfs::format::Digest;
use dagfs::store::{Overwrite, Store};

use support::minidfs::MiniDfs;
use support::mount::{dagfs, push, Mount};
use support::run;

fn verify(cluster: &MiniDfs, runtime: &Path, args: &[&str]) -> (i32, String) {
    let out: Output = dagfs(cluster, runtime, &["verify"])
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Exit 1 and `needle` (a path) named in the output.
fn assert_drift(result: (i32, String), kind: &str, path: &str) {
    let (code, text) = result;
    assert_eq!(code, 1, "{text}");
    assert!(
        text.lines().any(|l| l.contains(kind) && l.contains(path)),
        "expected a {kind} finding for {path}:\n{text}"
    );
}

#[test]
fn finds_every_kind_of_drift_by_hash() {
    let cluster = MiniDfs::shared();
    let url = cluster.unique_root("verify");
    let root = url.trim_start_matches(cluster.url());
    let tmp = tempfile::tempdir().unwrap();
    let (dags, runtime) = (tmp.path().join("dags"), tmp.path().join("run"));
    for (path, text) in [
        ("a.py", "a = 1\n"),
        ("team/b.py", "b = 2\n"),
        ("team/c.sql", "select 1\n"),
    ] {
        std::fs::create_dir_all(dags.join(path).parent().unwrap()).unwrap();
        std::fs::write(dags.join(path), text).unwrap();
    }
    run(dagfs(cluster, &runtime, &["push", "-q", "--mirror"])
        .arg(&dags)
        .args(["--to", &url]));
    let local = dags.to_str().unwrap();

    let (code, text) = verify(
        cluster,
        &runtime,
        &["--local", local, "--store", &url, "--deep"],
    );
    assert_eq!(code, 0, "clean state: {text}");

    // A local edit: what the next push would publish.
    std::fs::write(dags.join("team/b.py"), "b = 3\n").unwrap();
    assert_drift(
        verify(cluster, &runtime, &["--local", local, "--store", &url]),
        "changed",
        "team/b.py",
    );
    std::fs::write(dags.join("team/b.py"), "b = 2\n").unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let store: Box<dyn Store> = rt
        .block_on(dagfs::store::open(
            &url,
            &cluster.options(None, Duration::from_secs(20)),
        ))
        .unwrap();
    let objects = dagfs::objects::Objects::new(None);
    rt.block_on(objects.refresh(&*store)).unwrap();
    let pack = dagfs::pack::pack_key(&objects.locate(&Digest::of(b"a = 1\n")).unwrap().pack);

    // A missing object (its pack moved away).
    rt.block_on(store.rename(&pack, "aside", Overwrite::Deny))
        .unwrap();
    assert_drift(
        verify(cluster, &runtime, &["--store", &url]),
        "missing_object",
        "a.py",
    );
    rt.block_on(store.rename("aside", &pack, Overwrite::Deny))
        .unwrap();
    // A flipped byte (same size: only --deep, which hashes, sees it).
    rt.block_on(support::damage_object(&*store, b"a = 1\n", b"a = 2\n"));
    let (code, text) = verify(cluster, &runtime, &["--store", &url]);
    assert_eq!(code, 0, "sizes match, without --deep: {text}");
    assert_drift(
        verify(cluster, &runtime, &["--store", &url, "--deep"]),
        "corrupt_object",
        "a.py",
    );
    rt.block_on(support::damage_object(&*store, b"a = 1\n", b"a = 1\n"));

    // A mirror file edited by hand with Hadoop's own client.
    let edited = tmp.path().join("edited.sql");
    std::fs::write(&edited, "select 2\n").unwrap();
    let put = cluster.hadoop_fs(&[
        "-put",
        "-f",
        edited.to_str().unwrap(),
        &format!("{root}/mirror/team/c.sql"),
    ]);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    assert_drift(
        verify(cluster, &runtime, &["--store", &url, "--deep"]),
        "mirror_differs",
        "team/c.sql",
    );
    let put = cluster.hadoop_fs(&[
        "-put",
        "-f",
        dags.join("team/c.sql").to_str().unwrap(),
        &format!("{root}/mirror/team/c.sql"),
    ]);
    assert!(put.status.success());
    let (code, text) = verify(cluster, &runtime, &["--store", &url, "--deep"]);
    assert_eq!(code, 0, "repaired: {text}");

    // Mounts: one following the head is identical; one held at an older generation is named.
    std::fs::write(dags.join("a.py"), "a = 10\n").unwrap();
    push(cluster, &runtime, &dags, &url);
    let mut current = Mount::start(
        cluster,
        &runtime,
        &url,
        &tmp.path().join("mnt"),
        &tmp.path().join("cache"),
    );
    current.serving(2);
    let mnt = tmp.path().join("mnt");
    let (code, text) = verify(cluster, &runtime, &["--mount", mnt.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    let held = tmp.path().join("held");
    let mut old = Mount::start_with(
        cluster,
        &runtime,
        &url,
        &held,
        &tmp.path().join("cache2"),
        &["--pin", "1"],
    );
    old.serving(1);
    let (code, text) = verify(
        cluster,
        &runtime,
        &["--mount", held.to_str().unwrap(), "--json"],
    );
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("wrong_generation") && text.contains("head is Some(2)"),
        "{text}"
    );
    // Against generation 2 explicitly, the held mount's content differs in a.py.
    assert_drift(
        verify(
            cluster,
            &runtime,
            &["--mount", held.to_str().unwrap(), "--generation", "2"],
        ),
        "changed",
        "a.py",
    );
    current.stop();
    old.stop();
}

#[test]
fn unreachable_store_is_exit_2_within_the_timeout() {
    let cluster = MiniDfs::shared();
    let tmp = tempfile::tempdir().unwrap();
    // Nothing listens on port 1; a 2 s timeout bounds every call.
    let started = Instant::now();
    let out = dagfs(
        cluster,
        tmp.path(),
        &[
            "verify",
            "--store",
            "hdfs://127.0.0.1:1/dags",
            "--set",
            "store.timeout=2s",
        ],
    )
    .output()
    .unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    // The last line is dagfs's error (the lines before are the HDFS client's warnings).
    let line = stderr.trim().lines().last().unwrap_or_default();
    assert!(line.starts_with("dagfs verify: "), "{stderr}");
    assert!(
        line.contains("127.0.0.1:1") && line.contains("reachable"),
        "names the store and the fix: {line}"
    );
    assert!(
        elapsed < Duration::from_secs(2) + Duration::from_secs(5),
        "took {elapsed:?}"
    );
}
