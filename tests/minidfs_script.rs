//! `scripts/minidfs` as a person uses it: start a cluster, use it from the Rust client (and,
//! secured with `--secure`, from `dagfs` with the printed exports), stop it, and find no Java
//! process left behind.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use dagfs::store::{HdfsOptions, Overwrite};

use support::run_stdout;

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

/// Runs `scripts/minidfs stop` when dropped: a failing test leaves no cluster behind.
struct StopOnDrop<'a>(&'a Path);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/minidfs"))
            .arg("stop")
            .env("DAGFS_MINIDFS_DIR", self.0)
            .output();
    }
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

/// The URL `scripts/minidfs start` printed.
fn started_url(started: &str) -> String {
    started
        .lines()
        .find_map(|l| l.strip_prefix("MiniDFS is up: "))
        .unwrap_or_else(|| panic!("no URL in:\n{started}"))
        .to_string()
}

/// `scripts/minidfs stop`, then no JVM of that cluster is left.
fn stop_and_check(state: &Path) {
    assert!(
        !java_processes_using(state).is_empty(),
        "the cluster runs in a JVM"
    );
    script(state, &["stop"]);
    assert_eq!(
        java_processes_using(state),
        Vec::<String>::new(),
        "a JVM outlived stop"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn start_use_and_stop_leaves_no_java_behind() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("minidfs");
    let _stop = StopOnDrop(&state);
    let started = script(&state, &["start"]);
    let url = started_url(&started);
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
    stop_and_check(&state);
}

/// `dagfs ARGS` with the environment a person gets from `start`'s `export` lines, nothing
/// from this machine's configuration, and a private, empty ticket cache.
fn dagfs_with_exports(started: &str, scratch: &Path, args: &[&str]) -> String {
    let mut command = support::dagfs_command(args);
    command
        .env_remove("HADOOP_CONF_DIR")
        .env_remove("KRB5_CONFIG")
        .env_remove("DAGFS_STORE_USER")
        .env("DAGFS_RUNTIME_DIR", scratch.join("run"))
        .env("XDG_CACHE_HOME", scratch.join("xdg-cache"))
        .env("AIRFLOW_HOME", scratch.join("no-airflow"))
        .env(
            "KRB5CCNAME",
            format!("FILE:{}", scratch.join("ccache").display()),
        );
    let exports = started
        .lines()
        .filter_map(|l| l.trim().strip_prefix("export "))
        .flat_map(str::split_whitespace);
    for export in exports {
        let (key, value) = export
            .split_once('=')
            .unwrap_or_else(|| panic!("not KEY=VALUE: {export:?} in:\n{started}"));
        command.env(key, value);
    }
    run_stdout(&mut command)
}

#[test]
fn a_secure_start_serves_dagfs_with_the_printed_exports() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("minidfs");
    let _stop = StopOnDrop(&state);
    let started = script(&state, &["start", "--secure"]);
    let url = started_url(&started);
    for export in [
        "KRB5_CONFIG=",
        "DAGFS_STORE_KERBEROS_PRINCIPAL=",
        "DAGFS_STORE_KERBEROS_KEYTAB=",
    ] {
        assert!(started.contains(export), "no {export} in:\n{started}");
    }
    let dags = dir.path().join("dags");
    std::fs::create_dir_all(&dags).unwrap();
    std::fs::write(dags.join("hello.py"), "print(1)\n").unwrap();
    let store = format!("{url}/airflow/dagfs");
    dagfs_with_exports(
        &started,
        dir.path(),
        &[
            "push",
            dags.to_str().unwrap(),
            "--to",
            &store,
            "-m",
            "by hand",
        ],
    );
    let log = dagfs_with_exports(&started, dir.path(), &["log", "--store", &store]);
    assert!(log.contains("by hand"), "{log}");
    stop_and_check(&state);
}
