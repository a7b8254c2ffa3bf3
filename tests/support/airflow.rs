//! Apache Airflow for the tests: the pinned venv of `scripts/airflow-venv`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::minidfs::MiniDfs;
use super::mount::dagfs;
use super::run;

/// The failover timing of the Airflow tests: a standby takes over 13 s after the leader's
/// last renewal, and a leader cut off fences itself within 6 s.
pub const FAILOVER_TIMING: [(&str, &str); 5] = [
    ("DAGFS_FAILOVER_INTERVAL", "2s"),
    ("DAGFS_FAILOVER_FENCE_AFTER", "6s"),
    ("DAGFS_FAILOVER_KILL_GRACE", "5s"),
    ("DAGFS_FAILOVER_SAFETY_MARGIN", "2s"),
    ("DAGFS_FAILOVER_TAKEOVER_AFTER", "13s"),
];

/// `dagfs failover` (with `mode`'s flags) as candidate `name` on the host of `runtime`,
/// gated on the mount at `mountpoint`, supervising `airflow UNIT` for each of `units`, with
/// [`FAILOVER_TIMING`]; its output goes to `runtime/failover.log`.
pub fn failover(
    cluster: &MiniDfs,
    runtime: &Path,
    url: &str,
    mode: &[&str],
    name: &str,
    mountpoint: &Path,
    units: &[&str],
) -> Command {
    let log = std::fs::File::create(runtime.join("failover.log")).unwrap();
    let mut command = dagfs(cluster, runtime, &["failover", "--store", url]);
    command
        .args(mode)
        .args(["--id", name, "--mount"])
        .arg(mountpoint)
        .args(
            units
                .iter()
                .flat_map(|unit| ["--run".to_string(), format!("airflow {unit}")]),
        )
        .envs(FAILOVER_TIMING)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    command
}

/// `airflow` from the venv at `bin` with `AIRFLOW_HOME` `home`, no example DAGs, and bytecode
/// written as in production: under `home/pycache` (a read-only mount cannot hold
/// `__pycache__`; OPERATIONS.md), whatever a developer's shell says.
pub fn airflow_command(bin: &Path, home: &Path) -> Command {
    let mut command = Command::new(bin.join("airflow"));
    command
        .env("AIRFLOW_HOME", home)
        .env("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
        .env("PYTHONPYCACHEPREFIX", home.join("pycache"))
        .env_remove("PYTHONDONTWRITEBYTECODE");
    command
}

/// Runs an `airflow ... -o json` command: the JSON document it printed, the last line that
/// parses (log lines may come after it, and may start with `[` too). Fails the test unless
/// the command succeeded or printed one (`list-import-errors` exits 1 when it lists errors).
pub fn json_of(command: &mut Command) -> serde_json::Value {
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout
        .lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .filter(|v| !v.is_number())
        })
        .unwrap_or(serde_json::Value::Null);
    assert!(
        out.status.success() || !json.is_null(),
        "{command:?}: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json
}

/// The `field` of every row of an `airflow ... -o json` listing, sorted: `dag_id` of
/// `dags list`, `task_id` of `tasks states-for-dag-run`.
pub fn sorted_ids(rows: &serde_json::Value, field: &str) -> Vec<String> {
    let mut ids: Vec<String> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row[field].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// The import errors of `airflow dags list-import-errors -o json` output, sorted: each as
/// (the file's path relative to `dags`, the last line of its error).
pub fn import_errors(errors: &serde_json::Value, dags: &Path) -> Vec<(String, String)> {
    let prefix = format!("{}/", dags.display());
    let mut errors: Vec<(String, String)> = errors
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let path = e["filepath"].as_str().unwrap().trim_start_matches(&prefix);
            let error = e["error"].as_str().unwrap().trim();
            let last = error.lines().last().unwrap_or("");
            (path.to_string(), last.to_string())
        })
        .collect();
    errors.sort();
    errors
}

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The bin directory of the Airflow venv (created on first use, then reused).
pub fn venv_bin() -> PathBuf {
    venv_bin_of(None)
}

/// The bin directory of the venv of another pinned Airflow
/// (`tests/airflow/requirements-VARIANT.txt`), or the default one.
pub fn venv_bin_of(variant: Option<&str>) -> PathBuf {
    let out = run(Command::new(repo().join("scripts/airflow-venv")).args(variant));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join("bin")
}

/// Writes the generated multi-DAG folder of `tests/airflow/make_dags.py` (`count` DAGs).
pub fn make_dags(dir: &Path, count: usize) {
    let made = Command::new(repo().join("tests/airflow/make_dags.py"))
        .arg(dir)
        .arg(count.to_string())
        .status()
        .unwrap();
    assert!(made.success(), "make_dags.py failed");
}

/// Writes `DIR/python/dagfs_host.py`, whose `name()` is `DAGFS_CANDIDATE` (the candidate id
/// `dagfs failover` puts in its commands' environment), and returns `DIR/python`: with
/// `AIRFLOW__CORE__HOSTNAME_CALLABLE=dagfs_host.name` on that `PYTHONPATH`, each candidate's
/// Airflow jobs on this one machine carry the candidate's name.
pub fn hostname_module(dir: &Path) -> PathBuf {
    let python = dir.join("python");
    std::fs::create_dir_all(&python).unwrap();
    std::fs::write(
        python.join("dagfs_host.py"),
        "import os\nimport socket\n\n\ndef name():\n    return os.environ.get(\"DAGFS_CANDIDATE\") or socket.getfqdn()\n",
    )
    .unwrap();
    python
}

/// Names `command`'s processes candidate `name` of this test process: `DAGFS_CANDIDATE` (what
/// `dagfs_host.name` reports) and `DAGFS_TEST_RUN`, this process's id, so that
/// [`airflow_processes_of`] never counts another test run's candidate of the same name (two
/// runs on one machine, as when a suite and a developer run the same test, once read each
/// other's schedulers as "two units at once").
pub fn set_candidate(command: &mut Command, name: &str) {
    command
        .env("DAGFS_CANDIDATE", name)
        .env("DAGFS_TEST_RUN", std::process::id().to_string());
}

/// The live Airflow processes `dagfs failover` started for candidate `name` of this test
/// process (see [`set_candidate`]), controllers and guards left out: (pid, command line).
pub fn airflow_processes_of(name: &str) -> Vec<(u32, String)> {
    let markers = [
        format!("DAGFS_CANDIDATE={name}"),
        format!("DAGFS_TEST_RUN={}", std::process::id()),
    ];
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let dir = entry.path();
        let (Ok(environ), Ok(cmdline)) = (
            std::fs::read(dir.join("environ")),
            std::fs::read(dir.join("cmdline")),
        ) else {
            continue;
        };
        // The controller and its guards are `dagfs` itself (whatever the path holds).
        let program = cmdline.split(|&b| b == 0).next().unwrap_or_default();
        let is_dagfs = Path::new(&*String::from_utf8_lossy(program))
            .file_name()
            .is_some_and(|n| n == "dagfs");
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let ours = markers
            .iter()
            .all(|m| environ.split(|&b| b == 0).any(|v| v == m.as_bytes()));
        let zombie = dagfs::proc::process(pid).is_none_or(|p| p.zombie);
        if ours && !zombie && !is_dagfs && cmdline.contains("airflow") {
            found.push((pid, cmdline));
        }
    }
    found
}
