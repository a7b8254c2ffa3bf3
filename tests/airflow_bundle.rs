//! The dagfs DAG bundle (packaging/airflow) in a real Airflow 3 (from PyPI) over a real HDFS
//! (MiniDFS) and a real mount: what the DAG processor parses is the generation it records,
//! until its next refresh; a run executes the code, task list and shared helper modules of
//! the generation it was created from, also after newer ones are published and while the
//! NameNode is down; workers without a mount keep a bounded checkout cache.

mod support;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use support::airflow::{repo, sorted_ids, venv_bin};
use support::minidfs::{superuser, MiniDfs, MiniDfsOptions};
use support::mount::{push, Mount};
use support::{free_port, outage, run_stdout};

/// Everything Airflow and the bundle need, as environment variables.
#[derive(Clone)]
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
            // What the bundle requires (packaging/airflow/README.md): no rate limit on
            // serialized DAGs, so a run never gets a version before its tasks.
            (
                "AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL",
                "0".into(),
            ),
            (
                "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST",
                bundle.to_string(),
            ),
            (
                "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH",
                s(&tmp.join("bundles")),
            ),
            // Airflow's default refresh interval: the test never waits for a refresh.
            ("AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL", "300".into()),
            (
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL",
                "3".into(),
            ),
            (
                "AIRFLOW__API_AUTH__JWT_SECRET",
                "dagfs-test-jwt-secret".into(),
            ),
            ("AIRFLOW__API__SECRET_KEY", "dagfs-test-secret-key".into()),
            ("AIRFLOW__API__PORT", port.to_string()),
            (
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
                format!("http://127.0.0.1:{port}/execution/"),
            ),
            ("PYTHONPYCACHEPREFIX", s(&tmp.join("pycache"))),
            // Bytecode written as in production (empty: Python's "not set").
            ("PYTHONDONTWRITEBYTECODE", String::new()),
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

    /// The same settings with `key` set to `value`.
    fn with(&self, key: &str, value: &str) -> Env {
        let mut env = self.clone();
        env.vars.retain(|(k, _)| k != key);
        env.vars.push((key.to_string(), value.to_string()));
        env
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .env("PATH", &self.path);
        command
    }

    /// Runs `python -c script` in the venv; its standard output.
    fn python(&self, script: &str) -> String {
        run_stdout(self.command("python").args(["-c", script]))
    }

    fn airflow(&self, args: &[&str]) -> String {
        run_stdout(self.command("airflow").args(args))
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

    /// The `bundle_version` Airflow recorded on DAG run `run` (its database: the CLI does
    /// not show it).
    fn run_bundle_version(&self, run: &str) -> String {
        let db = self.vars.iter().find(|(k, _)| k == "AIRFLOW_HOME").unwrap();
        let script = format!(
            "import sqlite3\nc = sqlite3.connect({:?})\n\
             print(c.execute('select bundle_version from dag_run where run_id = ?', ({run:?},)).fetchone()[0])\n",
            format!("{}/airflow.db", db.1)
        );
        self.python(&script).trim().to_string()
    }

    /// The rows `query` returns from Airflow's database, one per line (for failure messages).
    fn db_rows(&self, query: &str) -> String {
        let db = self.vars.iter().find(|(k, _)| k == "AIRFLOW_HOME").unwrap();
        let script = format!(
            "import sqlite3\nc = sqlite3.connect({:?})\n\
             for row in c.execute({query:?}):\n    print(row)\n",
            format!("{}/airflow.db", db.1)
        );
        self.python(&script)
    }

    /// (job type, seconds since its last heartbeat) of each job type's newest running job,
    /// from Airflow's database.
    fn heartbeat_ages(&self) -> Vec<(String, f64)> {
        let db = self.vars.iter().find(|(k, _)| k == "AIRFLOW_HOME").unwrap();
        let script = format!(
            "import sqlite3\nc = sqlite3.connect({:?})\n\
             for t, age in c.execute(\"select job_type, (julianday('now') - \
             julianday(max(latest_heartbeat))) * 86400 from job where state = 'running' \
             group by job_type\"):\n    print(t, age)\n",
            format!("{}/airflow.db", db.1)
        );
        self.python(&script)
            .lines()
            .filter_map(|l| {
                let (job, age) = l.split_once(' ')?;
                Some((job.to_string(), age.parse().ok()?))
            })
            .collect()
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

/// One Airflow command (`airflow scheduler`, `dag-processor`, `api-server`) in its own process
/// group, logging to a file; stopped on drop.
struct Component {
    child: Child,
    log: std::path::PathBuf,
}

impl Component {
    fn start(env: &Env, tmp: &Path, what: &str) -> Component {
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, Ordering::SeqCst);
        let path = tmp.join(format!("{what}-{n}.log"));
        let log = std::fs::File::create(&path).unwrap();
        let child = env
            .command("airflow")
            .arg(what)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        Component { child, log: path }
    }

    /// Its log from byte `from` on.
    fn log_since(&self, from: usize) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(bytes.get(from..).unwrap_or_default()).into_owned()
    }

    fn log_len(&self) -> usize {
        std::fs::metadata(&self.log).map_or(0, |m| m.len() as usize)
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        let group = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && self.child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        let _ = self.child.wait();
    }
}

/// Sets its flag when dropped.
struct SetOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
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

/// Generation `version` of the DAG folder: the DAG, and a shared helper module kept out of
/// parsing by `.airflowignore` (published all the same).
fn write_dags(dags: &Path, version: u32) {
    std::fs::create_dir_all(dags.join("common")).unwrap();
    std::fs::write(dags.join(".airflowignore"), "common/\n").unwrap();
    std::fs::write(dags.join("common/__init__.py"), "").unwrap();
    std::fs::write(
        dags.join("common/helper.py"),
        format!("HELPER_VERSION = {version}\n"),
    )
    .unwrap();
    std::fs::write(dags.join("pinned.py"), pinned_source(version)).unwrap();
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

/// The lines of `parses.log` from line `from` on: (parsing process's Airflow command, code
/// version, helper version, file).
fn all_parses(witness: &Path, from: usize) -> Vec<[String; 4]> {
    std::fs::read_to_string(witness.join("parses.log"))
        .unwrap_or_default()
        .lines()
        .skip(from)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            [f[0], f[1], f[2], f[3]].map(String::from)
        })
        .collect()
}

fn parse_count(witness: &Path) -> usize {
    all_parses(witness, 0).len()
}

/// The DAG processor's parses from line `from` of `parses.log` on (a task's parse of its DAG
/// file is not one): (code version, helper version, file).
fn parses(witness: &Path, from: usize) -> Vec<(String, String, String)> {
    all_parses(witness, from)
        .into_iter()
        .filter(|[role, ..]| role == "dag-processor")
        .map(|[_, code, helper, file]| (code, helper, file))
        .collect()
}

/// What task `record` of `run` saw: file, its sha256, code version, helper version, helper
/// file.
fn witnessed(witness: &Path, run: &str) -> Vec<String> {
    let line = std::fs::read_to_string(witness.join(run)).unwrap();
    line.split_whitespace().map(String::from).collect()
}

/// `DagfsBundle.refresh()` in the venv's Python as the DAG processor calls it: (seconds it
/// took, the version it chose).
fn timed_refresh(env: &Env, url: &str, mnt: &Path) -> (f64, String) {
    let script = format!(
        "import time\nfrom dagfs_airflow import DagfsBundle\n\
         b = DagfsBundle(name='probe', store_url={url:?}, mount={mnt:?}, dagfs={dagfs:?})\n\
         b.initialize()\nt = time.monotonic()\nb.refresh()\n\
         print(time.monotonic() - t, b.get_current_version())\n",
        mnt = mnt.display().to_string(),
        dagfs = env!("CARGO_BIN_EXE_dagfs"),
    );
    let text = env.python(&script);
    let line = text.lines().last().unwrap().to_string();
    let (secs, version) = line.split_once(' ').unwrap();
    (secs.parse().unwrap(), version.to_string())
}

#[test]
fn runs_execute_the_generation_they_were_created_from_even_offline() {
    let bin = venv_bin();
    let cluster = MiniDfs::start(MiniDfsOptions::default());
    let url = format!("{}/dags-bundle", cluster.url());
    let tmp = tempfile::tempdir().unwrap();
    let (dags, mnt, runtime) = (
        tmp.path().join("dags"),
        tmp.path().join("mnt"),
        tmp.path().join("run"),
    );
    let witness = tmp.path().join("witness");
    std::fs::create_dir_all(&witness).unwrap();
    write_dags(&dags, 1);
    push(&cluster, &runtime, &dags, &url);
    let mut mount = Mount::start(&cluster, &runtime, &url, &mnt, &tmp.path().join("cache"));
    let tree1 = mount.serving(1).tree_id.unwrap();
    let v1 = format!("1-{}", &tree1[..16]);

    let env = Env::new(&bin, &cluster, tmp.path(), &url, &mnt, free_port());
    env.airflow(&["db", "migrate"]);
    // Airflow's default rate limit on serialized DAGs (30 s) let a run record generation 2
    // with generation 1's tasks (created_dag_version 1, bundle_version 2; three runs of three
    // here): the bundle refuses to parse under it, in one line naming the fix.
    let refused = env
        .with("AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL", "30")
        .command("python")
        .args([
            "-c",
            &format!(
                "from dagfs_airflow import DagfsBundle\n\
                 DagfsBundle(name='dags', store_url={url:?}, mount={:?}).initialize()\n",
                mnt.display().to_string()
            ),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && stderr.contains("min_serialized_dag_update_interval is 30 s")
            && stderr.contains("AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL=0"),
        "{stderr}"
    );
    let _api = Component::start(&env, tmp.path(), "api-server");
    let _scheduler = Component::start(&env, tmp.path(), "scheduler");
    let mut processor = Component::start(&env, tmp.path(), "dag-processor");
    let pinned_version = || {
        env.versions()
            .into_iter()
            .find(|(dag, _)| dag == "pinned")
            .and_then(|(_, v)| v)
    };
    wait_until("generation 1 parsed", Duration::from_secs(180), || {
        pinned_version().as_deref() == Some(v1.as_str())
    });

    // Generation 2 adds a task and changes the shared helper. The mount switches at once; the
    // DAG processor keeps parsing generation 1 until its next refresh (300 s away).
    write_dags(&dags, 2);
    push(&cluster, &runtime, &dags, &url);
    let tree2 = mount.serving(2).tree_id.unwrap();
    let v2 = format!("2-{}", &tree2[..16]);
    let seen = parse_count(&witness);
    wait_until(
        "two parses after the publish",
        Duration::from_secs(120),
        || parses(&witness, seen).len() >= 2,
    );
    for (code, helper, file) in parses(&witness, seen) {
        assert_eq!(
            (code.as_str(), helper.as_str()),
            ("1", "1"),
            "the processor parsed other files than the version it records: {file}"
        );
    }
    assert_eq!(pinned_version().as_deref(), Some(v1.as_str()));
    env.airflow(&["dags", "trigger", "pinned", "-r", "run_a"]);

    // A new DAG processor (a restart refreshes): generation 2 is parsed and recorded.
    drop(processor);
    let restarted_at = parse_count(&witness);
    processor = Component::start(&env, tmp.path(), "dag-processor");
    wait_until("generation 2 parsed", Duration::from_secs(180), || {
        pinned_version().as_deref() == Some(v2.as_str())
    });
    env.airflow(&["dags", "trigger", "pinned", "-r", "run_b"]);
    env.airflow(&["dags", "unpause", "pinned"]);
    wait_until("both runs' tasks", Duration::from_secs(180), || {
        witness.join("run_a").exists() && witness.join("run_b").exists()
    });
    for (run, version, bundle_version) in [("run_a", 1, &v1), ("run_b", 2, &v2)] {
        let w = witnessed(&witness, run);
        let v = version.to_string();
        assert_eq!(
            w[1],
            sha256(pinned_source(version).as_bytes()),
            "{run}: {w:?}"
        );
        assert_eq!((&w[2], &w[3]), (&v, &v), "{run}: {w:?}");
        let view = format!("/.dagfs/generations/{version}/");
        assert!(
            w[0].contains(&view) && w[4].contains(&view),
            "{run} ran outside its view: {w:?}"
        );
        assert_eq!(env.run_bundle_version(run), *bundle_version, "{run}");
    }
    let tasks = |run: &str| -> Vec<String> {
        let states =
            env.airflow_json(&["tasks", "states-for-dag-run", "pinned", run, "-o", "json"]);
        sorted_ids(&states, "task_id")
    };
    assert_eq!(
        tasks("run_a"),
        ["record"],
        "run_a has generation 2's structure"
    );
    assert!(
        tasks("run_b") == ["extra", "record"],
        "run_b lacks generation 2's structure: {:?}\nparses since the restart: {:?}\n\
         dag versions (id, number, bundle version, created, updated):\n{}runs (run, bundle version, \
         created dag version):\n{}",
        tasks("run_b"),
        all_parses(&witness, restarted_at),
        env.db_rows(
            "select id, version_number, bundle_version, created_at, last_updated from dag_version \
             where dag_id = 'pinned'"
        ),
        env.db_rows(
            "select run_id, bundle_version, created_dag_version_id from dag_run \
             where dag_id = 'pinned'"
        ),
    );
    // Every parse since the restart read the code of the generation its file's view holds.
    for [role, code, _, file] in all_parses(&witness, restarted_at) {
        for generation in ["1", "2"] {
            if file.contains(&format!("/.dagfs/generations/{generation}/")) {
                assert_eq!(code, generation, "{role} parsed {file}");
            }
        }
    }

    // The NameNode stops for the outage. The DAG processor now refreshes every 10 s (Airflow
    // refreshes a bundle only once its interval has passed, so one at 300 s would never call
    // refresh() during the outage): each of its refreshes answers from the mount's local
    // state, so it keeps heartbeating and parsing, and new runs are created and executed.
    drop(processor);
    let processor = Component::start(
        &env.with("AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL", "10"),
        tmp.path(),
        "dag-processor",
    );
    let seen = parse_count(&witness);
    wait_until(
        "a parse by the refreshing processor",
        Duration::from_secs(180),
        || !parses(&witness, seen).is_empty(),
    );
    let log_from = processor.log_len();
    cluster.stop_namenode(0);
    let down = Instant::now();
    // Both jobs' heartbeats from the stop until the outage is over (sampled beside the rest):
    // `airflow jobs check` (exit 1 when the newest job's heartbeat is stale) for both, started
    // together every 10 s (each takes seconds of CPU here), and every 2 s the age of each
    // job's last heartbeat in Airflow's database, which `jobs check` compares with the job's
    // threshold.
    let over = std::sync::atomic::AtomicBool::new(false);
    let (seen, checks, ages) = std::thread::scope(|scope| {
        let checks = scope.spawn(|| {
            let mut checks = Vec::new();
            while !over.load(Ordering::SeqCst) {
                let next = Instant::now() + Duration::from_secs(10);
                let running: Vec<_> = ["DagProcessorJob", "SchedulerJob"]
                    .into_iter()
                    .map(|job| {
                        let child = env
                            .command("airflow")
                            .args(["jobs", "check", "--job-type", job])
                            .stdout(Stdio::piped())
                            .stderr(Stdio::null())
                            .spawn()
                            .unwrap();
                        (job, child)
                    })
                    .collect();
                for (job, child) in running {
                    let out = child.wait_with_output().unwrap();
                    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
                    checks.push((down.elapsed().as_secs(), job, out.status.success(), said));
                }
                while !over.load(Ordering::SeqCst) && Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            checks
        });
        let ages = scope.spawn(|| {
            let mut ages = Vec::new();
            while !over.load(Ordering::SeqCst) {
                ages.extend(env.heartbeat_ages());
                std::thread::sleep(Duration::from_secs(2));
            }
            ages
        });
        // Stops both samplers when this closure ends, also by a failed assertion.
        let stop_sampling = SetOnDrop(&over);
        mount.wait_for("the mount to notice the store is down", |s| !s.online);
        let (secs, version) = timed_refresh(&env, &url, &mnt);
        eprintln!("refresh with the NameNode down: {secs:.3} s");
        assert!(secs < 1.0, "refresh took {secs} s with the NameNode down");
        assert!(version.contains(&v2), "{version}");
        let seen = parse_count(&witness);
        env.airflow(&["dags", "trigger", "pinned", "-r", "run_offline"]);
        wait_until(
            "a run while the NameNode is down",
            Duration::from_secs(180),
            || witness.join("run_offline").exists(),
        );
        wait_until("the outage", outage(40) + Duration::from_secs(5), || {
            down.elapsed() >= outage(40)
        });
        drop(stop_sampling);
        (seen, checks.join().unwrap(), ages.join().unwrap())
    });
    let outage_secs = down.elapsed().as_secs();
    for check in &checks {
        eprintln!(
            "jobs check at {} s down: {} alive={} ({})",
            check.0, check.1, check.2, check.3
        );
    }
    let stale: Vec<_> = checks.iter().filter(|c| !c.2).collect();
    // A round of checks takes 5-30 s of a loaded two-core machine; the database samples
    // below cover the time between them.
    let rounds = checks.len() / 2;
    assert!(
        stale.is_empty() && rounds >= 2 && rounds * 60 >= outage(40).as_secs() as usize,
        "stale heartbeats during the outage: {stale:?} of {} checks",
        checks.len()
    );
    // Airflow's thresholds ([dag_processor] heartrate x 2.1, scheduler_health_check_threshold)
    // doubled: on a loaded two-core machine the processor's heartbeat is seen up to 11.0 s
    // old with the store up and down alike (threshold 10.5 s; BENCHMARKS.md); a refresh that
    // waits for the store blocks its loop for the whole outage.
    for (job, threshold) in [("DagProcessorJob", 2.0 * 5.0 * 2.1), ("SchedulerJob", 60.0)] {
        let seen: Vec<f64> = ages.iter().filter(|a| a.0 == job).map(|a| a.1).collect();
        let oldest = seen.iter().cloned().fold(0.0, f64::max);
        eprintln!(
            "{job}: oldest heartbeat {oldest:.1} s over {} samples in {outage_secs} s down",
            seen.len()
        );
        assert!(
            seen.len() * 4 >= outage(40).as_secs() as usize && oldest < threshold,
            "{job}'s heartbeat went {oldest:.1} s old (threshold {threshold} s) down: {seen:?}"
        );
    }
    // The processor's own refreshes during the outage: several, each serving the newest
    // generation the mount holds (the bundle's warning), none failing.
    let log = processor.log_since(log_from);
    let refreshes = log.matches("Refreshing bundle dags").count();
    let offline = log.matches("cannot reach the store").count();
    eprintln!(
        "processor: {refreshes} bundle refreshes, {offline} offline, in {outage_secs} s down"
    );
    assert!(
        !log.contains("Error refreshing bundle"),
        "a refresh failed during the outage:\n{log}"
    );
    assert!(
        refreshes >= 2 && offline >= 2,
        "{refreshes} refreshes ({offline} offline) in {outage_secs} s down:\n{log}"
    );
    let during = all_parses(&witness, seen);
    let by = |role: &str| during.iter().filter(|[r, ..]| r == role).count();
    let (processor_parses, task_parses) = (by("dag-processor"), by("scheduler"));
    eprintln!(
        "parses during the outage: {processor_parses} by the DAG processor, {task_parses} by \
         tasks (LocalExecutor: forked from the scheduler)"
    );
    assert!(
        processor_parses >= 2,
        "the processor stopped parsing: {during:?}"
    );
    assert!(
        task_parses >= 1,
        "run_offline's task did not parse its DAG file: {during:?}"
    );
    assert!(
        during.iter().all(|[_, c, h, _]| c == "2" && h == "2"),
        "{during:?}"
    );
    let (secs, _) = timed_refresh(&env, &url, &mnt);
    eprintln!("refresh after {:?} down: {secs:.3} s", down.elapsed());
    assert!(
        secs < 1.0,
        "refresh took {secs} s after {:?} down",
        down.elapsed()
    );
    let w = witnessed(&witness, "run_offline");
    assert_eq!((w[2].as_str(), w[3].as_str()), ("2", "2"), "{w:?}");
    assert_eq!(env.run_bundle_version("run_offline"), v2);
    cluster.restart_namenode(0);
    drop(processor);
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
    let out = bundle_python(bin, cluster, versions, "3s")
        .args(["-c", &script])
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
    // A version whose tree is not the store's generation (the store was rebuilt).
    let (ok, line) = worker_initialize(&bin, cluster, &url, "1-0123456789abcdef", &versions);
    assert!(!ok && line.contains("rebuilt"), "{line}");
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
    let version_dir = versions.join("dags/dagfs-checkouts/2");
    assert!(
        !version_dir.exists(),
        "a partial checkout was left at {}",
        version_dir.display()
    );
}

#[test]
fn worker_disk_stays_bounded_over_fifty_generations_without_a_mount() {
    let bin = venv_bin();
    let cluster = MiniDfs::shared();
    let url = cluster.unique_root("bundle-disk");
    let tmp = tempfile::tempdir().unwrap();
    let dags = tmp.path().join("dags");
    const GENERATIONS: u64 = 50;
    const KEEP: usize = 5;
    for generation in 1..=GENERATIONS {
        // Every file changes: each generation costs its full size in checkouts and cache.
        for i in 0..10 {
            let body = format!("# generation {generation} file {i}\n").repeat(800);
            std::fs::create_dir_all(dags.join("pkg")).unwrap();
            std::fs::write(dags.join(format!("pkg/m{i}.py")), body).unwrap();
        }
        std::fs::write(dags.join("gen.txt"), format!("{generation}\n")).unwrap();
        push(cluster, &tmp.path().join("run"), &dags, &url);
    }
    let storage = tmp.path().join("bundles");
    let stdout = run_stdout(
        bundle_python(&bin, cluster, &storage, "3s")
            // Outside the storage whose size the script measures.
            .env("AIRFLOW_HOME", tmp.path().join("home"))
            .arg(repo().join("tests/airflow/worker_versions.py"))
            .args([&url, env!("CARGO_BIN_EXE_dagfs"), &KEEP.to_string()])
            .args((1..=GENERATIONS).map(|g| g.to_string())),
    );
    let rows: Vec<(u64, u64, usize)> = stdout
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows.len(), GENERATIONS as usize);
    let at = |g: u64| rows[g as usize - 1];
    eprintln!(
        "bundle storage: {} bytes after {KEEP} generations, {} after {}, {} after {GENERATIONS}",
        at(KEEP as u64).1,
        at(2 * KEEP as u64).1,
        2 * KEEP,
        at(GENERATIONS).1
    );
    assert!(rows.iter().all(|r| r.2 <= KEEP), "{rows:?}");
    // Once the cache is full, the disk use no longer grows with the generations.
    let full = at(2 * KEEP as u64).1;
    assert!(
        at(GENERATIONS).1 <= full + full / 5,
        "disk use grew from {full} to {} bytes: {rows:?}",
        at(GENERATIONS).1
    );
}

/// The venv's Python (at `bin`) as a DAG processor host: bundles under `storage`,
/// `AIRFLOW_HOME` in it, dagfs reaching the cluster with store timeout `timeout`.
fn bundle_python(bin: &Path, cluster: &MiniDfs, storage: &Path, timeout: &str) -> Command {
    let mut command = Command::new(bin.join("python"));
    command
        .env("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH", storage)
        .env("AIRFLOW_HOME", storage.join("home"))
        .env("DAGFS_STORE_TIMEOUT", timeout)
        .env("DAGFS_STORE_HADOOP_CONF_DIR", cluster.conf_dir())
        .env("DAGFS_STORE_USER", superuser());
    command
}

/// A DAG processor's `refresh()` without a mount, in the venv's Python (one process, as the
/// processor keeps one bundle): (seconds it took, the version it chose); its log is printed.
fn checkout_refresh(bin: &Path, cluster: &MiniDfs, url: &str, storage: &Path) -> (f64, String) {
    let script = format!(
        "import logging, time\nfrom dagfs_airflow import DagfsBundle\n\
         logging.basicConfig(level=logging.WARNING)\n\
         b = DagfsBundle(name='dags', store_url={url:?}, dagfs={dagfs:?}, store_timeout={STORE_TIMEOUT})\n\
         t = time.monotonic()\nb.refresh()\n\
         print(time.monotonic() - t, b.get_current_version().version)\n",
        dagfs = env!("CARGO_BIN_EXE_dagfs"),
    );
    // dagfs itself would wait longer for the store: the bundle's own bound must hold.
    let out = bundle_python(bin, cluster, storage, "60s")
        .args(["-c", &script])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "refresh failed: {stdout} {stderr}");
    let line = stdout.lines().last().unwrap_or_default();
    let (secs, version) = line.split_once(' ').unwrap();
    eprintln!("{stderr}");
    (secs.parse().unwrap(), version.to_string())
}

/// `store_timeout` of [`checkout_refresh`]'s bundle, in seconds.
const STORE_TIMEOUT: f64 = 3.0;

#[test]
fn a_refresh_without_a_mount_serves_the_newest_checkout_within_store_timeout_offline() {
    let bin = venv_bin();
    let cluster = MiniDfs::start(MiniDfsOptions::default());
    let url = format!("{}/dags-checkouts", cluster.url());
    let tmp = tempfile::tempdir().unwrap();
    let dags = tmp.path().join("dags");
    let storage = tmp.path().join("bundles");
    std::fs::create_dir_all(&dags).unwrap();
    let mut trees = Vec::new();
    for generation in 1..=2 {
        std::fs::write(dags.join("gen.txt"), format!("{generation}\n")).unwrap();
        push(&cluster, &tmp.path().join("run"), &dags, &url);
        let (secs, version) = checkout_refresh(&bin, &cluster, &url, &storage);
        eprintln!("refresh with the store up: {secs:.2} s, {version}");
        assert!(version.starts_with(&format!("{generation}-")), "{version}");
        trees.push(version);
    }

    cluster.stop_namenode(0);
    let (secs, version) = checkout_refresh(&bin, &cluster, &url, &storage);
    eprintln!("refresh with the NameNode down: {secs:.2} s, {version}");
    assert_eq!(version, trees[1], "not the newest checkout");
    assert!(
        secs < STORE_TIMEOUT + 1.0,
        "refresh took {secs:.2} s with the NameNode down (store_timeout {STORE_TIMEOUT} s)"
    );
    let served = storage.join("dags/dagfs-checkouts/2/gen.txt");
    assert_eq!(std::fs::read_to_string(&served).unwrap(), "2\n");
    cluster.restart_namenode(0);
}
