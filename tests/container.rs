//! The scheduler image for real: built from `packaging/scheduler-image/Dockerfile` on a
//! debootstrapped base (`scripts/container-base`, `scripts/scheduler-image`), run with
//! `--network host` against MiniDFS and PostgreSQL on this machine, once with FUSE
//! (`--device /dev/fuse --cap-add SYS_ADMIN`) and once in link mode with no device and no
//! added capability. In both, Airflow inside the container parses a published DAG, a
//! triggered run's tasks succeed (one defers to the triggerer), and a second publish reaches
//! the container; `docker stop` hands leadership over. Two scheduler containers in
//! single-active mode never run two units.
//!
//! Needs a Docker daemon (scripts/test starts one) and debootstrap.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::airflow::FAILOVER_TIMING;
use support::minidfs::{superuser, MiniDfs};
use support::mount::push;
use support::postgres::Database;
use support::{free_port, run};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn stdout(command: &mut Command) -> String {
    String::from_utf8(run(command).stdout)
        .unwrap()
        .trim()
        .to_string()
}

fn docker(args: &[&str]) -> Command {
    let mut command = Command::new("docker");
    command.args(args);
    command
}

/// A DAG whose task prints which publish it came from, after a deferrable sensor: the task
/// defers to the triggerer for 3 s, and its run succeeds only when the image's unit runs one.
fn dag(id: &str) -> String {
    format!(
        r#"from datetime import datetime, timedelta

from airflow.sdk import DAG
from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.sensors.time_delta import WaitSensor

with DAG("{id}", start_date=datetime(2026, 1, 1), schedule=None, catchup=False):
    wait = WaitSensor(task_id="deferred", time_to_wait=timedelta(seconds=3), deferrable=True)
    wait >> BashOperator(task_id="hello", bash_command="echo hello from {id}")
"#
    )
}

/// The image, built once per test binary; holding the returned guard runs this binary's
/// tests one at a time (each starts a whole Airflow deployment on a small machine).
fn image() -> (String, std::sync::MutexGuard<'static, ()>) {
    static IMAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    (IMAGE.get_or_init(build_image).clone(), guard)
}

/// The base, the .deb of this build, the image.
fn build_image() -> String {
    let base = stdout(&mut Command::new(repo().join("scripts/container-base")));
    run(Command::new(repo().join("scripts/package")).arg("--reuse-debug"));
    let debs: Vec<_> = std::fs::read_dir(repo().join("target/debian-check"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    let started = Instant::now();
    let tag = stdout(
        Command::new(repo().join("scripts/scheduler-image"))
            .arg("--deb")
            .arg(&debs[0])
            .args(["--base", &base, "--tag", "dagfs-scheduler:test"]),
    );
    eprintln!("image {tag} built in {:?}", started.elapsed());
    tag
}

/// A container removed on drop.
struct Container {
    name: String,
}

impl Container {
    fn exec(&self, args: &[&str]) -> Output {
        docker(&["exec", &self.name]).args(args).output().unwrap()
    }

    /// The last 60 lines of the container's output, for failure messages.
    fn logs(&self) -> String {
        self.logs_tail("60")
    }

    /// The container's last `lines` lines of output (`"all"`: all of it).
    fn logs_tail(&self, lines: &str) -> String {
        let out = docker(&["logs", "--tail", lines, &self.name])
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Polls `check` every second until it holds, failing with the logs after `limit`.
    fn until(&self, what: &str, limit: Duration, mut check: impl FnMut(&Container) -> bool) {
        let deadline = Instant::now() + limit;
        while !check(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} in {}:\n{}",
                self.name,
                self.logs()
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Whether Airflow inside lists `dag_id` (parsed by its DAG processor).
    fn lists_dag(&self, dag_id: &str) -> bool {
        let out = self.exec(&["airflow", "dags", "list", "-o", "plain"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.split_whitespace().next() == Some(dag_id))
    }

    /// `docker stop`; how long it took and the exit code.
    fn stop(&self) -> (Duration, i32) {
        let started = Instant::now();
        run(&mut docker(&["stop", "-t", "30", &self.name]));
        let code = stdout(&mut docker(&[
            "inspect",
            "-f",
            "{{.State.ExitCode}}",
            &self.name,
        ]));
        (started.elapsed(), code.parse().unwrap())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.name]).output();
    }
}

/// What every container of one test shares: the image, the store, the database, Airflow's
/// settings.
struct Site {
    image: String,
    env: Vec<(String, String)>,
    conf: String,
    tag: String,
}

impl Site {
    fn new(image: String, cluster: &MiniDfs, url: &str, db: &Database, api_port: u16) -> Site {
        let env = [
            ("DAGFS_STORE_URL", url.to_string()),
            ("DAGFS_STORE_HADOOP_CONF_DIR", "/etc/hadoop/conf".into()),
            ("DAGFS_STORE_USER", superuser()),
            ("DAGFS_STORE_TIMEOUT", "5s".into()),
            ("DAGFS_MOUNT_POLL", "500ms".into()),
            ("DAGFS_FAILOVER_MODE", "single-active".into()),
            ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", db.url()),
            ("AIRFLOW__CORE__EXECUTOR", "LocalExecutor".into()),
            ("AIRFLOW__CORE__LOAD_EXAMPLES", "False".into()),
            ("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "False".into()),
            ("AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL", "5".into()),
            (
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL",
                "5".into(),
            ),
            (
                "AIRFLOW__API_AUTH__JWT_SECRET",
                "dagfs-container-jwt".into(),
            ),
            ("AIRFLOW__API__SECRET_KEY", "dagfs-container-secret".into()),
            ("AIRFLOW__API__PORT", api_port.to_string()),
            // A loaded two-core CI machine: one api-server worker, patient task clients.
            ("AIRFLOW__API__WORKERS", "1".into()),
            ("AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT", "60".into()),
            (
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
                format!("http://127.0.0.1:{api_port}/execution/"),
            ),
        ]
        .into_iter()
        .chain(FAILOVER_TIMING.map(|(k, v)| (k, v.to_string())))
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Site {
            image,
            env,
            conf: format!("{}:/etc/hadoop/conf:ro", cluster.conf_dir().display()),
            tag: uuid::Uuid::new_v4().simple().to_string()[..8].to_string(),
        }
    }

    /// `docker run` of the image with `flags` and `args` (none: a scheduler host).
    fn command(&self, flags: &[&str], args: &[&str]) -> Command {
        let mut command = docker(&["run", "--network", "host", "-v", &self.conf]);
        for (k, v) in &self.env {
            command.arg("-e").arg(format!("{k}={v}"));
        }
        command.args(flags).arg(&self.image).args(args);
        command
    }

    fn start(&self, name: &str, flags: &[&str], args: &[&str]) -> Container {
        let name = format!("dagfs-test-{}-{name}", self.tag);
        let mut all = vec!["-d", "--name", &name];
        all.extend_from_slice(flags);
        run(&mut self.command(&all, args));
        let container = Container { name };
        // `docker run -d` returns once the container started; fail early if it stopped.
        let state = stdout(&mut docker(&[
            "inspect",
            "-f",
            "{{.State.Status}}",
            &container.name,
        ]));
        assert!(
            state == "running",
            "{} is {state}:\n{}",
            container.name,
            container.logs()
        );
        container
    }
}

/// Runs the published DAG `dag_id` in `container` and waits for its task to succeed.
fn run_succeeds(container: &Container, dag_id: &str, run_id: &str) {
    let out = container.exec(&["airflow", "dags", "trigger", dag_id, "-r", run_id]);
    assert!(
        out.status.success(),
        "trigger: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    container.until(
        &format!("{dag_id}/{run_id} to succeed"),
        Duration::from_secs(240),
        |c| {
            let out = c.exec(&["airflow", "dags", "state", dag_id, run_id]);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                !text.contains("failed"),
                "{dag_id}/{run_id} failed:\n{}",
                c.logs()
            );
            text.lines().any(|l| l.trim() == "success")
        },
    );
}

/// A container test's world: a DAG folder with `probe_1` pushed to a root of its own on the
/// shared cluster, a database of its own, and the site's settings naming both.
struct Published {
    cluster: &'static MiniDfs,
    url: String,
    dags: PathBuf,
    site: Site,
    _db: Database,
    tmp: tempfile::TempDir,
}

impl Published {
    /// `name` names the store root and the database; the database gets Airflow's schema, by
    /// the image as a one-off command runner.
    fn new(image: String, name: &str) -> Published {
        let cluster = MiniDfs::shared();
        let url = cluster.unique_root(name);
        let db = Database::create(&format!("airflow_{}", name.replace('-', "_")));
        let tmp = tempfile::tempdir().unwrap();
        let dags = tmp.path().join("dags");
        std::fs::create_dir_all(&dags).unwrap();
        std::fs::write(dags.join("probe_1.py"), dag("probe_1")).unwrap();
        let site = Site::new(image, cluster, &url, &db, free_port());
        let published = Published {
            cluster,
            url,
            dags,
            site,
            _db: db,
            tmp,
        };
        published.push();
        run(&mut published
            .site
            .command(&["--rm"], &["airflow", "db", "migrate"]));
        published
    }

    /// Publishes the DAG folder as it is now.
    fn push(&self) {
        let runtime = self.tmp.path().join("run");
        push(self.cluster, &runtime, &self.dags, &self.url);
    }
}

#[test]
fn the_scheduler_image_serves_published_dags_to_airflow_with_fuse_and_in_link_mode() {
    let (image, _one_at_a_time) = image();
    let published = Published::new(image, "container");
    let site = &published.site;
    let _api = site.start("api", &[], &["airflow", "api-server"]);

    // FUSE as the image's user needs /dev/fuse open to all (0666, the usual); where it is not
    // (this machine's is 0600), the container starts as root and the entrypoint runs the
    // mount as root and Airflow as airflow.
    let open_to_all = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata("/dev/fuse").unwrap().permissions().mode() & 0o006 == 0o006
    };
    let mut fuse = vec!["--device", "/dev/fuse", "--cap-add", "SYS_ADMIN"];
    if !open_to_all {
        fuse.extend(["--user", "0:0"]);
    }
    let link = ["-e", "DAGFS_MOUNT_MODE=link"];
    for (mode, flags, generation) in [("fuse", &fuse[..], 2), ("link", &link[..], 3)] {
        let started = Instant::now();
        let scheduler = site.start(&format!("scheduler-{mode}"), flags, &[]);
        scheduler.until("probe_1 parsed", Duration::from_secs(420), |c| {
            c.lists_dag("probe_1")
        });
        eprintln!("{mode}: probe_1 parsed {:?} after start", started.elapsed());
        run_succeeds(&scheduler, "probe_1", &format!("run_{mode}"));
        // The run's deferrable task needed the triggerer; this also asks Airflow for a live
        // one, with a deadline: on a loaded machine one heartbeat can be late for a sample.
        scheduler.until(
            &format!("{mode}: a live triggerer"),
            Duration::from_secs(120),
            |c| {
                c.exec(&["airflow", "jobs", "check", "--job-type", "TriggererJob"])
                    .status
                    .success()
            },
        );

        // A second publish reaches Airflow in the container.
        let id = format!("probe_{generation}");
        std::fs::write(published.dags.join(format!("{id}.py")), dag(&id)).unwrap();
        published.push();
        let published = Instant::now();
        scheduler.until(&format!("{id} parsed"), Duration::from_secs(180), |c| {
            c.lists_dag(&id)
        });
        eprintln!(
            "{mode}: {id} parsed {:?} after its publish",
            published.elapsed()
        );
        run_succeeds(&scheduler, &id, &format!("run_{mode}"));

        let (took, code) = scheduler.stop();
        eprintln!("{mode}: docker stop took {took:?}, exit code {code}");
        assert!(took < Duration::from_secs(25), "docker stop took {took:?}");
        assert!(
            code == 143 || code == 0,
            "exit code {code}:\n{}",
            scheduler.logs()
        );
        // All of it: Airflow's processes print long tracebacks when they are stopped, which
        // can push the controller's "handing over" out of any fixed tail.
        let logs = scheduler.logs_tail("all");
        assert!(
            logs.contains("handing over") && !logs.contains("could not release"),
            "leadership was not handed over:\n{}",
            scheduler.logs()
        );
    }
}

/// Whether `container` runs `airflow scheduler` right now (its process table).
fn runs_scheduler(container: &Container) -> bool {
    // Airflow's own process: `.../bin/python3 .../bin/airflow scheduler` (the controller
    // and the guards carry "airflow scheduler" as one argument, without the path).
    let script = r"for p in /proc/[0-9]*; do tr '\0' ' ' < $p/cmdline 2>/dev/null; echo; done | grep -E 'bin/airflow scheduler $'";
    let out = container.exec(&["sh", "-c", script]);
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

/// Two scheduler containers (link mode) in single-active mode: sampled every second, never
/// both run `airflow scheduler`; `docker stop` of the leader hands over to the other.
#[test]
fn two_scheduler_containers_never_run_two_units() {
    let (image, _one_at_a_time) = image();
    let published = Published::new(image, "container-pair");
    let site = &published.site;
    let pair: Vec<Container> = ["a", "b"]
        .iter()
        .map(|id| {
            let args = format!("DAGFS_IMAGE_FAILOVER_ARGS=--id {id}");
            site.start(id, &["-e", "DAGFS_MOUNT_MODE=link", "-e", &args], &[])
        })
        .collect();
    let sample = |pair: &[Container]| -> Vec<bool> {
        let running: Vec<bool> = pair.iter().map(runs_scheduler).collect();
        assert!(
            !(running[0] && running[1]),
            "both containers run the scheduler:\n{}\n{}",
            pair[0].logs(),
            pair[1].logs()
        );
        running
    };
    let deadline = Instant::now() + Duration::from_secs(420);
    let leader = loop {
        if let Some(i) = sample(&pair).iter().position(|&r| r) {
            break i;
        }
        assert!(Instant::now() < deadline, "no leader:\n{}", pair[0].logs());
        std::thread::sleep(Duration::from_secs(1));
    };
    for _ in 0..10 {
        sample(&pair);
        std::thread::sleep(Duration::from_secs(1));
    }
    let (took, _) = pair[leader].stop();
    eprintln!("leader {} stopped in {took:?}", pair[leader].name);
    let other = &pair[1 - leader];
    other.until("the standby to take over", Duration::from_secs(120), |c| {
        runs_scheduler(c)
    });
}
