//! `/healthz` of a real `dagfs failover` process (issue 14, bug 5): 503 while the controller
//! cannot reach its coordinator (the store's heartbeat directory) for `fence_after`, 200
//! again once it can. A local store is enough for the condition: its root replaced by a
//! file makes every coordinator call fail, as an unreachable NameNode does.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::host::{free_addr, Daemon, DEADLINE};
use support::http_get;

/// `dagfs failover` on the local store `store`, serving metrics on `metrics`.
fn controller(dir: &Path, store: &Path, metrics: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dagfs"));
    command
        .args(["failover", "--single-active", "--store"])
        .arg(store)
        .arg("--mount")
        .arg(dir.join("mnt"))
        .args(["--run", "sleep 600", "--metrics", metrics])
        .env_remove("DAGFS_CONFIG")
        .env("DAGFS_RUNTIME_DIR", dir.join("run"))
        .env("XDG_CACHE_HOME", dir.join("xdg-cache"))
        // No metadata database: not this machine's ~/airflow.
        .env("AIRFLOW_HOME", dir.join("no-airflow"))
        .env_remove("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
        .env("DAGFS_FAILOVER_INTERVAL", "1s")
        .env("DAGFS_FAILOVER_FENCE_AFTER", "5s")
        .env("DAGFS_FAILOVER_KILL_GRACE", "1s")
        .env("DAGFS_FAILOVER_SAFETY_MARGIN", "1s")
        .env("DAGFS_FAILOVER_TAKEOVER_AFTER", "7s");
    command
}

#[test]
fn healthz_is_503_while_the_coordinator_is_unreachable_and_200_after() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let metrics = free_addr();
    let mut failover = Daemon::start(
        controller(dir.path(), &store, &metrics),
        dir.path().join("failover.log"),
    );
    let healthz = |failover: &mut Daemon, what: &str, wanted: &dyn Fn(u16, &str) -> bool| {
        let end = Instant::now() + DEADLINE;
        loop {
            failover.assert_running();
            let answer = http_get(&metrics, "/healthz");
            if answer
                .as_ref()
                .is_some_and(|(code, body)| wanted(*code, body))
            {
                return;
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}; /healthz: {answer:?}; log:\n{}",
                failover.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    healthz(&mut failover, "a healthy controller (200)", &|code, _| {
        code == 200
    });

    // The coordinator becomes unreachable: every call on the store fails.
    let away = dir.path().join("store.away");
    std::fs::rename(&store, &away).unwrap();
    std::fs::write(&store, "not a store").unwrap();
    healthz(
        &mut failover,
        "503 naming the coordinator after fence_after (5 s)",
        &|code, body| code == 503 && body.contains("the coordinator has not answered"),
    );

    // Reachable again.
    std::fs::remove_file(&store).unwrap();
    std::fs::rename(&away, &store).unwrap();
    healthz(
        &mut failover,
        "200 again once the coordinator answers",
        &|code, _| code == 200,
    );
}
