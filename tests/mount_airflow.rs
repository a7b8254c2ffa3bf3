//! Real Airflow (from PyPI, `scripts/airflow-venv`) parsing DAGs through a dagfs mount of a
//! real HDFS: it must find the same DAGs and the same import errors as on a local copy.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use support::airflow::{airflow_command, import_errors, json_of, make_dags, sorted_ids, venv_bin};
use support::mount::{push, Folders, Mount};
use support::run;

/// `airflow ARGS` with `dags_folder` set, returning parsed JSON stdout.
fn airflow_json(bin: &Path, home: &Path, dags: &Path, args: &[&str]) -> Value {
    json_of(airflow(bin, home, dags).args(args))
}

fn airflow(bin: &Path, home: &Path, dags: &Path) -> Command {
    let mut command = airflow_command(bin, home);
    command.env("AIRFLOW__CORE__DAGS_FOLDER", dags);
    command
}

/// (dag ids, import errors as (relative path, last line of the error)) of `dags`, parsed
/// as Airflow's DAG processor parses its bundle: `--bundle-name dags-folder` (the default
/// bundle, `dags_folder`) puts the folder on `sys.path`, so DAGs import their shared helpers
/// from it as they do in production; plain `dags list -l` does not (Airflow 3.3), and no
/// `PYTHONPATH` is set.
fn parsed(bin: &Path, home: &Path, dags: &Path) -> (Vec<String>, Vec<(String, String)>) {
    let listed = airflow_json(
        bin,
        home,
        dags,
        &[
            "dags",
            "list",
            "-l",
            "--bundle-name",
            "dags-folder",
            "-o",
            "json",
            "--columns",
            "dag_id",
        ],
    );
    let ids = sorted_ids(&listed, "dag_id");
    let errors = airflow_json(
        bin,
        home,
        dags,
        &[
            "dags",
            "list-import-errors",
            "-l",
            "--bundle-name",
            "dags-folder",
            "-o",
            "json",
        ],
    );
    (ids, import_errors(&errors, dags))
}

#[test]
fn airflow_parses_the_mount_like_a_local_copy() {
    let bin = venv_bin();
    let (cluster, url, folders) = Folders::on_shared_cluster("mount-airflow");
    let (dags, mnt, runtime, home) = folders.paths();
    make_dags(&dags, 60);
    push(cluster, &runtime, &dags, &url);
    let mut mount = Mount::start(cluster, &runtime, &url, &mnt, &folders.cache());
    mount.serving(1);

    run(airflow(&bin, &home, &dags).args(["db", "migrate"]));

    let (local_ids, local_errors) = parsed(&bin, &home, &dags);
    let (mount_ids, mount_errors) = parsed(&bin, &home, &mnt);
    assert_eq!(local_ids.len(), 60, "{local_ids:?}");
    assert_eq!(local_errors.len(), 2, "{local_errors:?}");
    assert_eq!(mount_ids, local_ids);
    assert_eq!(mount_errors, local_errors);

    // A DAG file rewritten with the same size and mtime (two saves in one second, a build
    // pinning mtimes): Airflow, with the bytecode cache operators set, must parse the new one.
    let probe = dags.join("probe.py");
    let pinned = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600);
    for (generation, dag_id) in [(2, "probe_a"), (3, "probe_b")] {
        std::fs::write(
            &probe,
            format!(
                "import pendulum\nfrom airflow import DAG\n\nwith DAG({dag_id:?}, \
                 start_date=pendulum.datetime(2026, 1, 1), schedule=None):\n    pass\n"
            ),
        )
        .unwrap();
        support::set_mtime(&probe, pinned);
        push(cluster, &runtime, &dags, &url);
        mount.serving(generation);
        let (ids, _) = parsed(&bin, &home, &mnt);
        let probes: Vec<&String> = ids.iter().filter(|id| id.starts_with("probe_")).collect();
        assert_eq!(
            probes,
            [dag_id],
            "generation {generation}: Airflow parsed another version of probe.py"
        );
    }
    mount.stop();
}
