//! Scheduling through an HDFS outage, with real Airflow 3 (scheduler, dag-processor and
//! triggerer under `dagfs failover` on two candidate hosts, LocalExecutor, one api-server,
//! a shared PostgreSQL from Debian's `postgresql`), each host with its own mount of a MiniDFS
//! store whose NameNode is stopped for `DAGFS_OUTAGE_SECS` (90 by default; the acceptance
//! figure, 180, by hand).
//!
//! - All-active: both hosts run the unit. Host b's mount polls slowly and is one generation
//!   behind when the NameNode stops: b stops its unit (two hosts never parse different
//!   generations) and stays out for the whole outage, while a's scheduler, killed during the
//!   outage, is restarted on the generation its cache holds. DAG runs are created and their
//!   tasks succeed every minute of the outage. Afterwards b catches up and a new generation
//!   reaches both mounts and the runs.
//! - Single-active with the database coordinator: the leader's controller is killed during
//!   the outage and the standby takes over from its cache; runs go on.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dagfs::failover::{ControllerState, Role};

use support::airflow::{airflow_processes_of, failover, hostname_module, set_candidate, venv_bin};
use support::minidfs::{MiniDfs, MiniDfsOptions};
use support::mount::{push, Mount};
use support::postgres::{psql, Database};
use support::{free_port, outage, run, tail, terminate, wait_for};

/// Airflow's processes of both tests on 2 cores would starve each other: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn dag(version: u32) -> String {
    format!(
        r#"import os
from datetime import datetime, timedelta

from airflow.sdk import DAG, task

VERSION = "{version}"

with DAG(
    "outage_probe",
    start_date=datetime(2026, 1, 1),
    schedule=timedelta(seconds=10),
    catchup=False,
    is_paused_upon_creation=False,
):

    @task
    def record(**context):
        name = context["run_id"].replace("/", "_")
        with open(os.path.join(os.environ["DAGFS_WITNESS_DIR"], name), "w") as f:
            f.write(VERSION)

    record()
"#
    )
}

/// What every Airflow process of the test shares.
struct Shared {
    bin: PathBuf,
    db: Database,
    python: PathBuf,
    witness: PathBuf,
    api_port: u16,
    tmp: PathBuf,
}

impl Shared {
    fn airflow_env(&self, command: &mut Command, home: &Path, dags: &Path, name: &str) {
        command
            .env("PATH", format!("{}:/usr/bin:/bin", self.bin.display()))
            .env("AIRFLOW_HOME", home)
            .env("AIRFLOW__CORE__DAGS_FOLDER", dags)
            .env("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
            .env("AIRFLOW__CORE__EXECUTOR", "LocalExecutor")
            .env("AIRFLOW__CORE__HOSTNAME_CALLABLE", "dagfs_host.name")
            .env("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", self.db.url())
            .env("AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL", "5")
            .env("AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL", "5")
            .env("AIRFLOW__API_AUTH__JWT_SECRET", "dagfs-test-jwt-secret")
            .env("AIRFLOW__API__SECRET_KEY", "dagfs-test-secret-key")
            .env("AIRFLOW__API__PORT", self.api_port.to_string())
            .env(
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
                format!("http://127.0.0.1:{}/execution/", self.api_port),
            )
            .env("PYTHONPATH", &self.python)
            .env("PYTHONPYCACHEPREFIX", home.join("pycache"))
            .env_remove("PYTHONDONTWRITEBYTECODE")
            .env("DAGFS_WITNESS_DIR", &self.witness);
        set_candidate(command, name);
    }

    /// Successful task instances of the probe that ended in [from, to) (database times).
    fn successes_between(&self, from: &str, to: &str) -> u64 {
        psql(
            &self.db.name,
            &format!(
                "SELECT count(*) FROM task_instance WHERE dag_id = 'outage_probe' \
                 AND state = 'success' AND end_date >= TIMESTAMPTZ '{from}' \
                 AND end_date < TIMESTAMPTZ '{to}'"
            ),
        )
        .parse()
        .unwrap()
    }

    /// Successful task instances of the probe in each whole minute from `from` on.
    fn successes_per_minute(&self, from: &str, minutes: u64) -> Vec<u64> {
        (0..minutes)
            .map(|m| {
                let at = |k: u64| {
                    psql(
                        &self.db.name,
                        &format!("SELECT TIMESTAMPTZ '{from}' + interval '{k} minutes'"),
                    )
                };
                self.successes_between(&at(m), &at(m + 1))
            })
            .collect()
    }

    fn now(&self) -> String {
        psql(&self.db.name, "SELECT now()")
    }

    /// The versions the probe's tasks recorded, by run id.
    fn witnessed(&self) -> Vec<(String, String)> {
        let mut runs: Vec<(String, String)> = std::fs::read_dir(&self.witness)
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read_to_string(e.path()).unwrap_or_default(),
                )
            })
            .collect();
        runs.sort();
        runs
    }
}

/// `airflow api-server`, stopped on drop.
struct ApiServer(Child);

impl ApiServer {
    fn start(shared: &Shared) -> ApiServer {
        let log = std::fs::File::create(shared.tmp.join("api-server.log")).unwrap();
        let home = shared.tmp.join("home-api");
        let mut command = Command::new(shared.bin.join("airflow"));
        command
            .arg("api-server")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        shared.airflow_env(&mut command, &home, &shared.tmp.join("no-dags"), "api");
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        ApiServer(command.spawn().unwrap())
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let group = rustix::process::Pid::from_child(&self.0);
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        let _ = self.0.wait();
    }
}

/// One scheduler host: its mount, Airflow home and controller.
struct Host {
    name: String,
    runtime: PathBuf,
    mountpoint: PathBuf,
    cache: PathBuf,
    home: PathBuf,
    mount: Option<Mount>,
    controller: Option<Child>,
}

impl Host {
    fn new(tmp: &Path, name: &str) -> Host {
        let at = |what: &str| tmp.join(format!("{what}-{name}"));
        Host {
            name: name.to_string(),
            runtime: at("run"),
            mountpoint: at("mnt"),
            cache: at("cache"),
            home: at("home"),
            mount: None,
            controller: None,
        }
    }

    fn mount(&mut self, cluster: &MiniDfs, url: &str, poll: &str) {
        let mount = Mount::start_with(
            cluster,
            &self.runtime,
            url,
            &self.mountpoint,
            &self.cache,
            &["--poll", poll],
        );
        self.mount = Some(mount);
    }

    fn mount_state(&mut self) -> &mut Mount {
        self.mount.as_mut().expect("mounted")
    }

    fn start(&mut self, cluster: &MiniDfs, url: &str, shared: &Shared, mode: &[&str]) {
        let units = ["scheduler", "dag-processor", "triggerer"];
        let mut command = failover(
            cluster,
            &self.runtime,
            url,
            mode,
            &self.name,
            &self.mountpoint,
            &units,
        );
        shared.airflow_env(&mut command, &self.home, &self.mountpoint, &self.name);
        self.controller = Some(command.spawn().unwrap());
    }

    fn state(&self) -> Option<ControllerState> {
        ControllerState::read_all(&self.runtime)
            .ok()?
            .into_iter()
            .next()
    }

    fn role(&self) -> Option<Role> {
        self.state().map(|s| s.role)
    }

    fn log(&self) -> String {
        tail(&self.runtime.join("failover.log"), 40)
    }

    fn kill_controller(&mut self) {
        let mut child = self.controller.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(child) = self.controller.take() {
            terminate(child);
        }
    }
}

/// The pids of `processes` whose command line contains `what`.
fn pids(processes: Vec<(u32, String)>, what: &str) -> Vec<u32> {
    processes
        .into_iter()
        .filter(|(_, cmdline)| cmdline.contains(what))
        .map(|(pid, _)| pid)
        .collect()
}

/// The bed: a MiniDFS of its own (its NameNode is stopped), generation 1 published, the
/// Airflow database migrated, the api-server running.
struct Bed {
    cluster: MiniDfs,
    url: String,
    dags: PathBuf,
    pusher: PathBuf,
    shared: Shared,
    _api: ApiServer,
    _tmp: tempfile::TempDir,
}

impl Bed {
    fn new() -> Bed {
        let tmp = tempfile::tempdir().unwrap();
        let cluster = MiniDfs::start(MiniDfsOptions::default());
        let url = format!("{}/outage", cluster.url());
        let dags = tmp.path().join("dags");
        std::fs::create_dir_all(&dags).unwrap();
        let witness = tmp.path().join("witness");
        std::fs::create_dir_all(&witness).unwrap();
        std::fs::create_dir_all(tmp.path().join("no-dags")).unwrap();
        let shared = Shared {
            bin: venv_bin(),
            db: Database::create("outage"),
            python: hostname_module(tmp.path()),
            witness,
            api_port: free_port(),
            tmp: tmp.path().to_path_buf(),
        };
        let mut migrate = Command::new(shared.bin.join("airflow"));
        migrate.args(["db", "migrate"]);
        shared.airflow_env(&mut migrate, &tmp.path().join("home-api"), &dags, "api");
        run(&mut migrate);
        let api = ApiServer::start(&shared);
        let bed = Bed {
            pusher: tmp.path().join("pusher"),
            cluster,
            url,
            dags,
            shared,
            _api: api,
            _tmp: tmp,
        };
        bed.publish(1);
        bed
    }

    fn publish(&self, version: u32) {
        std::fs::write(self.dags.join("probe.py"), dag(version)).unwrap();
        push(&self.cluster, &self.pusher, &self.dags, &self.url);
    }

    fn host(&self, name: &str) -> Host {
        Host::new(self.shared.tmp.as_path(), name)
    }

    /// Waits until the task of a run not seen before records `version`.
    fn wait_for_runs_of(&self, version: u32, logs: impl Fn() -> String) {
        let before: Vec<String> = self
            .shared
            .witnessed()
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        let version = version.to_string();
        wait_for(
            &format!("a task of a new run to record version {version}"),
            Duration::from_secs(240),
            || {
                self.shared
                    .witnessed()
                    .iter()
                    .any(|(run, v)| *v == version && !before.contains(run))
            },
            logs,
        );
    }

    /// Stops the NameNode for the outage, calling `during` every second; returns when it
    /// stopped and when it restarted (database times).
    fn outage(&self, mut during: impl FnMut()) -> (String, String) {
        self.cluster.stop_namenode(0);
        let from = self.shared.now();
        let down = Instant::now();
        while down.elapsed() < outage(90) {
            during();
            std::thread::sleep(Duration::from_secs(1));
        }
        let to = self.shared.now();
        self.cluster.restart_namenode(0);
        (from, to)
    }
}

#[test]
fn all_active_schedules_through_a_namenode_outage_on_one_generation() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let bed = Bed::new();
    let (mut a, mut b) = (bed.host("a"), bed.host("b"));
    a.mount(&bed.cluster, &bed.url, "1s");
    // b's mount polls slowly: it is one generation behind when the NameNode stops.
    b.mount(&bed.cluster, &bed.url, "30s");
    a.mount_state().serving(1);
    b.mount_state().serving(1);
    let logs = |h: &Host| h.log();
    a.start(&bed.cluster, &bed.url, &bed.shared, &["--all-active"]);
    b.start(&bed.cluster, &bed.url, &bed.shared, &["--all-active"]);
    for host in [&a, &b] {
        wait_for(
            &format!("{}'s unit to run", host.name),
            Duration::from_secs(120),
            || host.role() == Some(Role::Running),
            || logs(host),
        );
    }
    bed.wait_for_runs_of(1, || a.log());

    // Generation 2 right after b's mount polled: a follows within a second, b not for 30 s.
    let polled = b.mount_state().serving(1).last_poll_ok_ms;
    b.mount_state()
        .wait_for("b's next poll", |s| s.last_poll_ok_ms > polled);
    let published = Instant::now();
    bed.publish(2);
    a.mount_state().serving(2);
    wait_for(
        "a to record generation 2",
        Duration::from_secs(20),
        || a.state().and_then(|s| s.generation) == Some(2),
        || a.log(),
    );

    let mut b_ran_during_outage = Vec::new();
    let mut a_restarted = false;
    let mut b_offline_since = None;
    let (from, _) = bed.outage(|| {
        if published.elapsed() < Duration::from_secs(25) {
            assert_eq!(
                b.mount_state().serving(1).generation,
                Some(1),
                "b's mount followed generation 2 before the NameNode stopped: the setup raced"
            );
        }
        // Once b's mount has noticed the outage, its unit must go within a few intervals.
        let b_mount = b.mount_state().wait_for("b's state", |_| true);
        if !b_mount.online && b_offline_since.is_none() {
            b_offline_since = Some(Instant::now());
        }
        if b_offline_since.is_some_and(|t| t.elapsed() > Duration::from_secs(10)) {
            let running = pids(airflow_processes_of("b"), "airflow");
            if !running.is_empty() || b.role() == Some(Role::Running) {
                b_ran_during_outage.push(format!(
                    "b runs generation 1 while a runs 2: {running:?} {:?}",
                    b.state()
                ));
            }
        }
        // Half-way through, a's scheduler dies: a must restart it from its cache.
        if !a_restarted && published.elapsed() > outage(90) / 2 {
            for pid in pids(airflow_processes_of("a"), "scheduler") {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            a_restarted = true;
        }
    });
    assert!(
        b_ran_during_outage.is_empty(),
        "{}\n{}",
        b_ran_during_outage.join("\n"),
        b.log()
    );
    let a_state = a.state().unwrap();
    assert!(
        a_state.restarts >= 1 && a_state.role == Role::Running,
        "a did not restart its unit during the outage: {a_state:?}\n{}",
        a.log()
    );
    let counts = bed
        .shared
        .successes_per_minute(&from, outage(90).as_secs() / 60);
    eprintln!(
        "all-active, outage of {:?}: successful tasks per minute {counts:?}",
        outage(90)
    );
    assert!(
        !counts.is_empty() && counts.iter().all(|&n| n >= 1),
        "a minute of the outage without a successful task: {counts:?}\n{}",
        a.log()
    );

    // HDFS is back: b catches up and runs again; a new generation reaches both and the runs.
    b.mount_state().serving(2);
    wait_for(
        "b's unit to run again",
        Duration::from_secs(120),
        || b.role() == Some(Role::Running),
        || b.log(),
    );
    bed.publish(3);
    a.mount_state().serving(3);
    b.mount_state().serving(3);
    bed.wait_for_runs_of(3, || a.log());
}

#[test]
fn single_active_with_the_database_coordinator_takes_over_during_a_namenode_outage() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let bed = Bed::new();
    let (mut a, mut b) = (bed.host("a"), bed.host("b"));
    for host in [&mut a, &mut b] {
        host.mount(&bed.cluster, &bed.url, "1s");
        host.mount_state().serving(1);
    }
    let mode = ["--single-active", "--set", "failover.coordinator=database"];
    a.start(&bed.cluster, &bed.url, &bed.shared, &mode);
    wait_for(
        "a to lead and run",
        Duration::from_secs(120),
        || a.role() == Some(Role::Running),
        || a.log(),
    );
    b.start(&bed.cluster, &bed.url, &bed.shared, &mode);
    bed.wait_for_runs_of(1, || a.log());
    bed.publish(2);
    a.mount_state().serving(2);
    b.mount_state().serving(2);
    wait_for(
        "a to record generation 2",
        Duration::from_secs(20),
        || a.state().and_then(|s| s.generation) == Some(2),
        || a.log(),
    );

    let mut killed = false;
    let mut both = Vec::new();
    let mut took_over = None;
    let (_, to) = bed.outage(|| {
        if !killed && a.mount_state().wait_for("a's state", |_| true).online {
            return;
        }
        // The leader's controller dies with HDFS down: b takes over from its cache.
        if !killed {
            a.kill_controller();
            killed = true;
        }
        let (in_a, in_b) = (
            pids(airflow_processes_of("a"), "scheduler"),
            pids(airflow_processes_of("b"), "scheduler"),
        );
        if !in_a.is_empty() && !in_b.is_empty() {
            both.push(format!("a: {in_a:?}, b: {in_b:?}"));
        }
        if took_over.is_none() && b.role() == Some(Role::Running) {
            took_over = Some(bed.shared.now());
        }
    });
    assert!(both.is_empty(), "two units at once: {both:?}");
    let b_state = b.state().unwrap();
    assert_eq!(b_state.role, Role::Running, "{b_state:?}\n{}", b.log());
    assert_eq!(b_state.generation, Some(2));
    let took_over = took_over.expect("b took over during the outage");
    let after = bed.shared.successes_between(&took_over, &to);
    eprintln!(
        "single-active: {after} successful tasks between b's takeover and the NameNode's return"
    );
    assert!(
        after >= 1,
        "no task succeeded after the takeover\n{}",
        b.log()
    );
    bed.publish(3);
    b.mount_state().serving(3);
    bed.wait_for_runs_of(3, || b.log());
}
