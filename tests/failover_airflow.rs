//! Real Airflow under `dagfs failover`: `airflow scheduler` + `airflow dag-processor` on two
//! candidates sharing a PostgreSQL metadata database (Debian's `postgresql`), each reading
//! its own dagfs mount of a MiniDFS store. The leader's controller is killed; the other
//! host's unit comes up, Airflow sees its scheduler alive, and the DAG source Airflow stored
//! is the file of the generation the new leader recorded.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use dagfs::failover::{ControllerState, Role};

use support::airflow::{airflow_processes_of, failover, set_candidate};
use support::minidfs::MiniDfs;
use support::mount::{push, Mount};
use support::postgres::{psql, Database};
use support::{run, tail, terminate, wait_for};

const DAG: &str = r#"from datetime import datetime

from airflow.sdk import DAG
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG("failover_probe", start_date=datetime(2026, 1, 1), schedule=None, catchup=False):
    EmptyOperator(task_id="noop")
"#;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn airflow_bin() -> PathBuf {
    let out = run(&mut Command::new(repo().join("scripts/airflow-venv")));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join("bin")
}

/// One scheduler host: its mount, Airflow home and controller.
struct Candidate {
    name: String,
    runtime: PathBuf,
    mountpoint: PathBuf,
    home: PathBuf,
    _mount: Mount,
    controller: Option<Child>,
}

impl Candidate {
    fn airflow_env(&self, command: &mut Command, bin: &Path, db: &Database, python: &Path) {
        command
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .env("AIRFLOW_HOME", &self.home)
            .env("AIRFLOW__CORE__DAGS_FOLDER", &self.mountpoint)
            .env("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
            .env("AIRFLOW__CORE__HOSTNAME_CALLABLE", "dagfs_host.name")
            .env("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", db.url())
            .env("PYTHONPATH", python)
            .env("PYTHONPYCACHEPREFIX", self.home.join("pycache"))
            .env_remove("PYTHONDONTWRITEBYTECODE");
        set_candidate(command, &self.name);
    }

    fn start(&mut self, cluster: &MiniDfs, url: &str, bin: &Path, db: &Database, py: &Path) {
        let mut command = failover(
            cluster,
            &self.runtime,
            url,
            &["--single-active"],
            &self.name,
            &self.mountpoint,
            &["scheduler", "dag-processor"],
        );
        self.airflow_env(&mut command, bin, db, py);
        self.controller = Some(command.spawn().unwrap());
    }

    fn state(&self) -> Option<ControllerState> {
        ControllerState::read_all(&self.runtime)
            .ok()?
            .into_iter()
            .next()
    }

    fn log(&self) -> String {
        tail(&self.runtime.join("failover.log"), 60)
    }

    /// `airflow jobs check --job-type SchedulerJob --hostname NAME` passes.
    fn scheduler_alive(&self, bin: &Path, db: &Database, py: &Path) -> bool {
        let mut check = Command::new(bin.join("airflow"));
        check.args([
            "jobs",
            "check",
            "--job-type",
            "SchedulerJob",
            "--hostname",
            &self.name,
        ]);
        self.airflow_env(&mut check, bin, db, py);
        check.output().is_ok_and(|o| o.status.success())
    }
}

impl Drop for Candidate {
    fn drop(&mut self) {
        if let Some(child) = self.controller.take() {
            terminate(child);
        }
    }
}

#[test]
fn airflow_scheduler_and_dag_processor_fail_over_between_two_hosts() {
    let bin = airflow_bin();
    let db = Database::create("airflow_failover");
    let cluster = MiniDfs::shared();
    let url = cluster.unique_root("failover-airflow");
    let tmp = tempfile::tempdir().unwrap();
    let dags = tmp.path().join("dags");
    std::fs::create_dir_all(&dags).unwrap();
    std::fs::write(dags.join("probe.py"), DAG).unwrap();
    let python = support::airflow::hostname_module(tmp.path());
    push(cluster, &tmp.path().join("pusher"), &dags, &url);

    let mut hosts: Vec<Candidate> = ["a", "b"]
        .iter()
        .map(|name| {
            let runtime = tmp.path().join(format!("run-{name}"));
            let mountpoint = tmp.path().join(format!("mnt-{name}"));
            let cache = tmp.path().join(format!("cache-{name}"));
            let mut mount = Mount::start(cluster, &runtime, &url, &mountpoint, &cache);
            mount.serving(1);
            Candidate {
                name: name.to_string(),
                home: tmp.path().join(format!("home-{name}")),
                runtime,
                mountpoint,
                _mount: mount,
                controller: None,
            }
        })
        .collect();

    let mut migrate = Command::new(bin.join("airflow"));
    migrate.args(["db", "migrate"]);
    hosts[0].airflow_env(&mut migrate, &bin, &db, &python);
    run(&mut migrate);

    hosts[0].start(cluster, &url, &bin, &db, &python);
    wait_for(
        "a's scheduler to be alive",
        Duration::from_secs(180),
        || hosts[0].scheduler_alive(&bin, &db, &python),
        || hosts[0].log(),
    );
    hosts[1].start(cluster, &url, &bin, &db, &python);
    wait_for(
        "b to follow a",
        Duration::from_secs(60),
        || {
            hosts[1]
                .state()
                .and_then(|s| s.leader)
                .is_some_and(|l| l.id == "a")
        },
        || hosts[1].log(),
    );

    // The leader host's controller dies; its guards stop a's Airflow at once.
    let mut a = hosts[0].controller.take().unwrap();
    a.kill().unwrap();
    a.wait().unwrap();
    wait_for(
        "b to run the unit",
        Duration::from_secs(60),
        || hosts[1].state().is_some_and(|s| s.role == Role::Running),
        || hosts[1].log(),
    );
    wait_for(
        "b's scheduler to be alive",
        Duration::from_secs(180),
        || hosts[1].scheduler_alive(&bin, &db, &python),
        || hosts[1].log(),
    );
    let state = hosts[1].state().unwrap();
    // Epochs are the number of the claim that started a term: above the first leader's.
    assert!(state.epoch > Some(1), "{state:?}");
    let generation = state.generation.expect("b recorded its generation");
    assert_eq!(generation, 1);

    // The source Airflow stored is, byte for byte, the file of that generation (b's mount
    // serves it; md5 is what dag_code.source_code_hash holds).
    let served = std::fs::read(hosts[1].mountpoint.join("probe.py")).unwrap();
    let md5 = run(Command::new("md5sum").arg(hosts[1].mountpoint.join("probe.py")));
    let md5 = String::from_utf8(md5.stdout).unwrap()[..32].to_string();
    assert_eq!(served, DAG.as_bytes());
    let mut stored = String::new();
    wait_for(
        "the DAG's source in dag_code",
        Duration::from_secs(120),
        || {
            stored = psql(
                &db.name,
                "SELECT source_code_hash FROM dag_code WHERE dag_id = 'failover_probe' \
                 ORDER BY last_updated DESC LIMIT 1",
            );
            !stored.is_empty()
        },
        || hosts[1].log(),
    );
    assert_eq!(stored, md5);
    // Nothing of a's unit survived its controller (Airflow itself only notices a dead
    // scheduler once its heartbeat is older than scheduler_health_check_threshold).
    assert_eq!(airflow_processes_of("a"), Vec::new());
    assert!(!airflow_processes_of("b").is_empty());
}
