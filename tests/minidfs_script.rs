//! `scripts/minidfs` as a person uses it: start a cluster, use it from the Rust client, stop
//! it, and find no Java process left behind.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use dagfs::store::{HdfsOptions, Overwrite};

fn script(state: &Path, args: &[&str]) -> String {
    let output = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/minidfs"))
        .args(args)
        .env("DAGFS_MINIDFS_DIR", state)
        .output()
        .expect("run scripts/minidfs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "scripts/minidfs {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn java_processes_using(state: &Path) -> Vec<String> {
    let output = Command::new("pgrep")
        .args(["-af", "java"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.contains(state.to_str().unwrap()))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn start_use_and_stop_leaves_no_java_behind() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("minidfs");
    let started = script(&state, &["start"]);
    let url = started
        .lines()
        .find_map(|l| l.strip_prefix("MiniDFS is up: "))
        .unwrap_or_else(|| panic!("no URL in:\n{started}"))
        .to_string();
    assert!(started.contains(&format!("export HADOOP_CONF_DIR={}/conf", state.display())));

    let options = HdfsOptions {
        timeout: Duration::from_secs(20),
        config_dir: Some(state.join("conf")),
        user: Some(support::minidfs::superuser()),
        ..HdfsOptions::default()
    };
    let store = dagfs::store::open(&format!("{url}/airflow/dags"), &options)
        .await
        .unwrap();
    store
        .put(
            "hello.py",
            Bytes::from_static(b"print(1)\n"),
            Overwrite::Deny,
        )
        .await
        .unwrap();
    assert_eq!(store.read("hello.py").await.unwrap(), "print(1)\n");
    let listing = script(&state, &["fs", "-ls", "/airflow/dags"]);
    assert!(listing.contains("/airflow/dags/hello.py"), "{listing}");
    assert!(script(&state, &["cmd", "ping"]).starts_with("OK"));

    assert!(
        !java_processes_using(&state).is_empty(),
        "the cluster runs in a JVM"
    );
    script(&state, &["stop"]);
    assert_eq!(
        java_processes_using(&state),
        Vec::<String>::new(),
        "a JVM outlived stop"
    );
}
