//! Compatibility: the dagfs DAG bundle on the oldest Airflow 3 minor claimed (3.0, whose
//! bundle API has no structured versions and no `view_url_template`), and the mount parsed by
//! Airflow 2.10 (`airflow dags list --local`), each from its pinned venv
//! (`scripts/airflow-venv 3.0`, `scripts/airflow-venv 2.10`).

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use support::airflow::{
    airflow_command, import_errors, json_of, make_dags, sorted_ids, venv_bin_of,
};
use support::minidfs::superuser;
use support::mount::{push, Folders, Mount};
use support::run_stdout;

/// `bin/airflow ARGS` in `home` with `vars`, its JSON output line.
fn airflow_json(bin: &Path, home: &Path, vars: &[(&str, String)], args: &[&str]) -> Value {
    let vars = vars.iter().map(|(k, v)| (k, v));
    json_of(airflow_command(bin, home).envs(vars).args(args))
}

#[test]
fn the_bundle_works_on_airflow_3_0() {
    let bin = venv_bin_of(Some("3.0"));
    let (cluster, url, folders) = Folders::on_shared_cluster("compat-3-0");
    let (dags, mnt, runtime, home) = folders.paths();
    make_dags(&dags, 5);
    push(cluster, &runtime, &dags, &url);
    let mut mount = Mount::start(cluster, &runtime, &url, &mnt, &folders.cache());
    let tree = mount.serving(1).tree_id.unwrap();
    let version = format!("1-{}", &tree[..16]);
    let dagfs = env!("CARGO_BIN_EXE_dagfs");
    let bundle = serde_json::json!([{
        "name": "dags",
        "classpath": "dagfs_airflow.DagfsBundle",
        "kwargs": {
            "store_url": url, "mount": mnt, "dagfs": dagfs,
            "view_url_template": "https://releases.example/{version}",
        },
    }]);
    let s = |p: &Path| p.display().to_string();
    let vars = [
        (
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST",
            bundle.to_string(),
        ),
        (
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH",
            s(&folders.root.join("bundles")),
        ),
        (
            "AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL",
            "0".into(),
        ),
        ("DAGFS_RUNTIME_DIR", s(&runtime)),
        ("DAGFS_STORE_HADOOP_CONF_DIR", s(cluster.conf_dir())),
        ("DAGFS_STORE_USER", superuser()),
        ("DAGFS_STORE_TIMEOUT", "3s".into()),
    ];
    airflow_json(&bin, &home, &vars, &["db", "migrate"]);
    // One pass of the 3.0 DAG processor: initialize, refresh, parse through the view.
    airflow_json(&bin, &home, &vars, &["dag-processor", "-n", "1"]);
    let listed = airflow_json(
        &bin,
        &home,
        &vars,
        &[
            "dags",
            "list",
            "-o",
            "json",
            "--columns",
            "dag_id,bundle_version",
        ],
    );
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 5, "{listed:?}");
    for dag in listed {
        assert_eq!(
            dag["bundle_version"].as_str(),
            Some(version.as_str()),
            "{dag}"
        );
    }

    // A worker of that version: the mount's view; without a mount, a verified checkout.
    let script = format!(
        "from dagfs_airflow import DagfsBundle\n\
         for mount in ({mnt:?}, '/nonexistent'):\n\
         \x20   b = DagfsBundle(name='dags', store_url={url:?}, mount=mount, dagfs={dagfs:?}, version={version:?}, view_url_template='https://releases.example/{{version}}')\n\
         \x20   b.initialize()\n\
         \x20   print(b.path, (b.path / 'common' / 'helpers.py').exists(), b.view_url())\n",
        mnt = s(&mnt),
    );
    let stdout = run_stdout(
        Command::new(bin.join("python"))
            .args(["-c", &script])
            .env("AIRFLOW_HOME", &home)
            .envs(vars.iter().map(|(k, v)| (k, v))),
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let link = format!("https://releases.example/{version}");
    assert_eq!(
        lines[0],
        format!("{}/.dagfs/generations/1 True {link}", s(&mnt)),
        "{stdout}"
    );
    assert!(
        lines[1].ends_with(&format!("dags/dagfs-checkouts/1 True {link}")),
        "{stdout}"
    );
    mount.stop();
}

/// (dag ids, files with import errors) of `airflow dags list --local` in Airflow 2.10.
fn parsed_2_10(bin: &Path, home: &Path, dags: &Path) -> (Vec<String>, Vec<String>) {
    let vars = [
        ("AIRFLOW__CORE__DAGS_FOLDER", dags.display().to_string()),
        ("AIRFLOW__CORE__DAG_IGNORE_FILE_SYNTAX", "glob".into()),
    ];
    let listed = airflow_json(bin, home, &vars, &["dags", "list", "-o", "json"]);
    let ids = sorted_ids(&listed, "dag_id");
    let errors = airflow_json(
        bin,
        home,
        &vars,
        &["dags", "list-import-errors", "-o", "json"],
    );
    let files = import_errors(&errors, dags)
        .into_iter()
        .map(|(path, _)| path);
    (ids, files.collect())
}

#[test]
fn airflow_2_10_parses_the_mount_like_a_local_copy() {
    let bin = venv_bin_of(Some("2.10"));
    let (cluster, url, folders) = Folders::on_shared_cluster("compat-2-10");
    let (dags, mnt, runtime, home) = folders.paths();
    // The 3.x DAG files import airflow.sdk; Airflow 2 DAGs import airflow.
    make_dags(&dags, 20);
    for entry in walkdir::WalkDir::new(&dags) {
        let entry = entry.unwrap();
        if entry.path().extension().is_some_and(|e| e == "py") {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            let text = text
                .replace("from airflow.sdk import DAG", "from airflow import DAG")
                .replace(
                    "airflow.providers.standard.operators.bash",
                    "airflow.operators.bash",
                )
                .replace(
                    "airflow.providers.standard.operators.python",
                    "airflow.operators.python",
                );
            std::fs::write(entry.path(), text).unwrap();
        }
    }
    push(cluster, &runtime, &dags, &url);
    let mut mount = Mount::start(cluster, &runtime, &url, &mnt, &folders.cache());
    mount.serving(1);
    airflow_json(&bin, &home, &[], &["db", "migrate"]);
    let (local_ids, local_errors) = parsed_2_10(&bin, &home, &dags);
    let (mount_ids, mount_errors) = parsed_2_10(&bin, &home, &mnt);
    assert_eq!(local_ids.len(), 20, "{local_ids:?}");
    assert_eq!(local_errors.len(), 2, "{local_errors:?}");
    assert_eq!((mount_ids, mount_errors), (local_ids, local_errors));
    mount.stop();
}
