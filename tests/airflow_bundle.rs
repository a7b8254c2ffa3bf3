//! The dagfs DAG bundle (packaging/airflow) in a real Airflow 3 (from PyPI) over a real HDFS
//! (MiniDFS) and a real mount: DAG runs record the generation they were parsed from, and a
//! task of a run created at generation N runs N's code after N+1 is published.

mod support;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use support::airflow::{make_dags, repo, venv_bin};
use support::minidfs::{superuser, MiniDfs};
use support::mount::{push, Mount};

/// Everything Airflow and the bundle need, as environment variables.
struct Env {
    vars: Vec<(String, String)>,
    path: String,
}

impl Env {
    fn new(bin: &Path, cluster: &MiniDfs, tmp: &Path, url: &str, mnt: &Path, port: u16) -> Env {
        let bundle = serde_json::json!([{
            "name": "dags",
            "classpath": "dagfs_airflow.DagfsBundle",
            "kwargs": {
                "store_url": url,
                "mount": mnt,
                "dagfs": env!("CARGO_BIN_EXE_dagfs"),
                "cache_dir": tmp.join("worker-cache"),
            },
        }]);
        let s = |p: &Path| p.display().to_string();
        let vars = vec![
            ("AIRFLOW_HOME", s(&tmp.join("airflow-home"))),
            ("AIRFLOW__CORE__LOAD_EXAMPLES", "False".into()),
            ("AIRFLOW__CORE__EXECUTOR", "LocalExecutor".into()),
            ("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "True".into()),
            (
                "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST",
                bundle.to_string(),
            ),
            (
                "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH",
                s(&tmp.join("bundles")),
            ),
            ("AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL", "2".into()),
            (
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL",
                "2".into(),
            ),
            ("AIRFLOW__API__PORT", port.to_string()),
            (
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
                format!("http://127.0.0.1:{port}/execution/"),
            ),
            ("PYTHONPYCACHEPREFIX", s(&tmp.join("pycache"))),
            ("DAGFS_WITNESS_DIR", s(&tmp.join("witness"))),
            ("DAGFS_RUNTIME_DIR", s(&tmp.join("run"))),
            ("DAGFS_STORE_HADOOP_CONF_DIR", s(cluster.conf_dir())),
            ("DAGFS_STORE_USER", superuser()),
            ("DAGFS_STORE_TIMEOUT", "3s".into()),
        ];
        let vars = vars.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Env { vars, path }
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .env("PATH", &self.path);
        command
    }

    fn airflow(&self, args: &[&str]) -> String {
        let out = self.command("airflow").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "airflow {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `airflow ... -o json`: the JSON line of its output.
    fn airflow_json(&self, args: &[&str]) -> Value {
        let out = self.airflow(args);
        let line = out
            .lines()
            .rev()
            .find(|l| l.starts_with('[') || l.starts_with('{'))
            .unwrap_or("[]");
        serde_json::from_str(line).unwrap()
    }

    /// Bundle version per DAG id, from Airflow's database.
    fn versions(&self) -> Vec<(String, Option<String>)> {
        let listed = self.airflow_json(&[
            "dags",
            "list",
            "-o",
            "json",
            "--columns",
            "dag_id,bundle_name,bundle_version",
        ]);
        let mut out: Vec<(String, Option<String>)> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["dag_id"].as_str().unwrap().to_string(),
                    d["bundle_version"].as_str().map(String::from),
                )
            })
            .collect();
        out.sort();
        out
    }
}

/// `airflow standalone` (api-server, scheduler, DAG processor, triggerer) in its own process
/// group, stopped on drop.
struct Airflow(Child);

impl Drop for Airflow {
    fn drop(&mut self) {
        let group = rustix::process::Pid::from_child(&self.0);
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && self.0.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        let _ = self.0.wait();
    }
}

fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn pinned_source(version: u32) -> String {
    std::fs::read_to_string(repo().join("tests/airflow/pinned.py.tmpl"))
        .unwrap()
        .replace("@CODE_VERSION@", &version.to_string())
}

fn sha256(bytes: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(bytes)?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A free TCP port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn dag_runs_record_generations_and_tasks_run_their_generations_code() {
    let bin = venv_bin();
    let cluster = MiniDfs::shared();
    let url = cluster.unique_root("bundle");
    let tmp = tempfile::tempdir().unwrap();
    let (dags, mnt, runtime) = (
        tmp.path().join("dags"),
        tmp.path().join("mnt"),
        tmp.path().join("run"),
    );
    std::fs::create_dir_all(tmp.path().join("witness")).unwrap();
    make_dags(&dags, 20);
    std::fs::write(dags.join("pinned.py"), pinned_source(1)).unwrap();
    push(cluster, &runtime, &dags, &url);
    let mut mount = Mount::start(cluster, &runtime, &url, &mnt, &tmp.path().join("cache"));
    let served = mount.serving(1).generation.unwrap().to_string();

    let env = Env::new(&bin, cluster, tmp.path(), &url, &mnt, free_port());
    env.airflow(&["db", "migrate"]);
    let log = std::fs::File::create(tmp.path().join("standalone.log")).unwrap();
    let child = env
        .command("airflow")
        .arg("standalone")
        // DAGs import their helpers from the folder.
        .env("PYTHONPATH", &mnt)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap();
    let _airflow = Airflow(child);

    // One DAG processor pass: every DAG carries the generation the mount served.
    wait_until("21 DAGs parsed", Duration::from_secs(180), || {
        env.versions().len() == 21
    });
    for (dag, version) in env.versions() {
        assert_eq!(version.as_deref(), Some(served.as_str()), "{dag}");
    }

    // A run created at generation 1 (the DAG is paused, so it waits), then generation 2.
    env.airflow(&["dags", "trigger", "pinned", "-r", "run_at_1"]);
    std::fs::write(dags.join("pinned.py"), pinned_source(2)).unwrap();
    push(cluster, &runtime, &dags, &url);
    mount.serving(2);
    wait_until("generation 2 parsed", Duration::from_secs(120), || {
        env.versions()
            .iter()
            .any(|(dag, v)| dag == "pinned" && v.as_deref() == Some("2"))
    });
    env.airflow(&["dags", "trigger", "pinned", "-r", "run_at_2"]);
    env.airflow(&["dags", "unpause", "pinned"]);
    let witness = tmp.path().join("witness");
    wait_until("both runs' tasks", Duration::from_secs(180), || {
        witness.join("run_at_1").exists() && witness.join("run_at_2").exists()
    });
    for (run, version) in [("run_at_1", 1), ("run_at_2", 2)] {
        let line = std::fs::read_to_string(witness.join(run)).unwrap();
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            fields[1],
            sha256(pinned_source(version).as_bytes()),
            "{run} ran other code: {line}"
        );
        assert_eq!(fields[2], version.to_string(), "{line}");
        assert!(
            fields[0].contains(&format!("/versions/{version}/")),
            "{run} did not run from its checkout: {line}"
        );
    }
    drop(_airflow);
    mount.stop();
}

/// The bundle as a worker would build it, for one version, in the venv's Python.
fn worker_initialize(
    bin: &Path,
    cluster: &MiniDfs,
    url: &str,
    version: &str,
    versions: &Path,
) -> (bool, String) {
    let script = format!(
        "from dagfs_airflow import DagfsBundle, DagfsBundleError\n\
         b = DagfsBundle(name='dags', store_url={url:?}, version={version:?}, dagfs={dagfs:?})\n\
         try:\n    b.initialize()\n    print('OK', b.path)\n\
         except DagfsBundleError as e:\n    print('ERROR', e)\n",
        dagfs = env!("CARGO_BIN_EXE_dagfs"),
    );
    let out = Command::new(bin.join("python"))
        .args(["-c", &script])
        .env("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH", versions)
        .env("AIRFLOW_HOME", versions.join("home"))
        .env("DAGFS_STORE_TIMEOUT", "3s")
        .env("DAGFS_STORE_HADOOP_CONF_DIR", cluster.conf_dir())
        .env("DAGFS_STORE_USER", superuser())
        .env("XDG_CACHE_HOME", versions.join("cache"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (stdout.starts_with("OK"), stdout)
}

#[test]
fn bad_versions_and_stores_fail_clearly_and_leave_no_partial_checkout() {
    let bin = venv_bin();
    let cluster = MiniDfs::shared();
    let url = cluster.unique_root("bundle-bad");
    let tmp = tempfile::tempdir().unwrap();
    let dags = tmp.path().join("dags");
    std::fs::create_dir_all(&dags).unwrap();
    std::fs::write(dags.join("a.py"), "a = 1\n").unwrap();
    std::fs::write(dags.join("b.py"), "b = 1\n").unwrap();
    push(cluster, &tmp.path().join("run"), &dags, &url);
    let versions = tmp.path().join("bundles");

    let (ok, line) = worker_initialize(&bin, cluster, &url, "1", &versions);
    assert!(ok, "{line}");
    let (ok, line) = worker_initialize(&bin, cluster, &url, "7", &versions);
    assert!(
        !ok && line.contains("generation 7 does not exist"),
        "{line}"
    );
    let (ok, line) = worker_initialize(
        &bin,
        cluster,
        "hdfs://127.0.0.1:1/nothing",
        "1",
        &tmp.path().join("other"),
    );
    assert!(!ok && line.contains("reachable"), "{line}");

    // A corrupt object: the checkout is refused, nothing appears at the final path.
    std::fs::write(dags.join("b.py"), "b = 2\n").unwrap();
    push(cluster, &tmp.path().join("run"), &dags, &url);
    support::corrupt_object(cluster, &url, b"b = 2\n", b"b = 9\n");
    let (ok, line) = worker_initialize(&bin, cluster, &url, "2", &versions);
    assert!(!ok && line.contains("corrupt"), "{line}");
    let version_dir = versions.join("dags/versions/2");
    assert!(
        !version_dir.exists(),
        "a partial checkout was left at {}",
        version_dir.display()
    );
}
