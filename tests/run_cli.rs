//! `dagfs run`, the one-machine trial, as a new user runs it: no setup, an edit shows up in
//! the mount, Ctrl-C unmounts and exits 0. Once with the embedded local store, once on HDFS.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::minidfs::{superuser, MiniDfs};
use support::mount::is_mounted;

fn wait_until(what: &str, child: &mut Child, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("dagfs run exited with {status} while waiting for {what}");
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `dagfs run ARGS` in `dir`, edits the example DAG, checks the mount shows the edit,
/// then Ctrl-C.
fn trial(dir: &Path, args: &[&str], env: &[(&str, String)]) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dagfs"))
        .arg("run")
        .args(args)
        .current_dir(dir)
        .env_remove("DAGFS_CONFIG")
        .env("DAGFS_RUNTIME_DIR", dir.join("run"))
        .env("XDG_CACHE_HOME", dir.join("xdg"))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("run.log")).unwrap())
        .spawn()
        .unwrap();
    let (dags, mnt) = (dir.join("dags"), dir.join("mnt"));
    let example = "example_dag.py";
    wait_until("the example DAG in the mount", &mut child, || {
        mnt.join(example).is_file()
    });
    assert_eq!(
        std::fs::read(dags.join(example)).unwrap(),
        std::fs::read(mnt.join(example)).unwrap()
    );

    let mut text = std::fs::read_to_string(dags.join(example)).unwrap();
    text.push_str("# an edit\n");
    std::fs::write(dags.join(example), &text).unwrap();
    wait_until("the edit in the mount", &mut child, || {
        std::fs::read_to_string(mnt.join(example)).is_ok_and(|t| t == text)
    });

    support::send(child.id(), rustix::process::Signal::INT);
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(dir.join("run.log")).unwrap();
    assert!(status.success(), "dagfs run exited with {status}: {log}");
    assert!(!is_mounted(&mnt), "still mounted after Ctrl-C");
    assert!(
        log.contains("dagfs run: publishing"),
        "says what it does: {log}"
    );
    // The history hint it prints works as printed: the first generation and the edit.
    let hint = log
        .lines()
        .filter_map(|line| line.split('`').nth(1))
        .find(|command| command.starts_with("dagfs log --store "))
        .unwrap_or_else(|| panic!("no `dagfs log --store URL` hint: {log}"));
    let words: Vec<&str> = hint.split(' ').skip(1).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_dagfs"))
        .args(&words)
        .arg("--json")
        .current_dir(dir)
        .env_remove("DAGFS_CONFIG")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let generations: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{hint}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        generations.as_array().is_some_and(|g| g.len() >= 2),
        "{hint}: {generations}"
    );
}

#[test]
fn trial_on_the_embedded_store_needs_no_setup() {
    let tmp = tempfile::tempdir().unwrap();
    trial(tmp.path(), &[], &[]);
    assert!(
        tmp.path().join(".dagfs/store/generations").is_dir(),
        "the embedded store"
    );
}

#[test]
fn trial_on_hdfs_with_a_url() {
    let cluster = MiniDfs::shared();
    let url = cluster.unique_root("run");
    let tmp = tempfile::tempdir().unwrap();
    let env = [
        (
            "DAGFS_STORE_HADOOP_CONF_DIR",
            cluster.conf_dir().display().to_string(),
        ),
        ("DAGFS_STORE_USER", superuser()),
    ];
    trial(
        tmp.path(),
        &["--dags", "dags", "--mount", "mnt", "--store", &url],
        &env,
    );
    assert!(
        !tmp.path().join(".dagfs/store").exists(),
        "HDFS, not the embedded store"
    );
}
