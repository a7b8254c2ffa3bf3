//! `dagfs sync` and `dagfs status` as a user meets them, on a local store: bad input gives
//! one line and the right exit code; status reports running and dead daemons.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn dagfs(runtime: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dagfs"));
    command
        .env_remove("DAGFS_CONFIG")
        .env("DAGFS_RUNTIME_DIR", runtime)
        .env("XDG_CACHE_HOME", runtime.join("cache"));
    command
}

fn run(runtime: &Path, args: &[&str]) -> Output {
    dagfs(runtime).args(args).output().expect("run dagfs")
}

fn one_line_error(output: &Output, code: i32) -> String {
    let text = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(code), "{text}");
    assert_eq!(
        text.trim_end().lines().count(),
        1,
        "one line expected:\n{text}"
    );
    text
}

/// Polls `dagfs status --json` until `check` accepts it.
fn status_until(runtime: &Path, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = run(runtime, &["status", "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        if check(&report) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {report}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_input_is_one_line_and_the_right_exit_code() {
    let work = tempfile::tempdir().unwrap();
    let runtime = work.path();
    let missing = run(runtime, &["sync", "/nonexistent/dags", "--to", "/tmp/x"]);
    assert!(one_line_error(&missing, 1).contains("/nonexistent/dags"));
    let no_store = run(runtime, &["sync", work.path().to_str().unwrap()]);
    assert!(one_line_error(&no_store, 1).contains("--store URL"));
    let bad_prefix = run(
        runtime,
        &["sync", ".", "--to", "/tmp/x", "--prefix", "a/../b"],
    );
    assert!(one_line_error(&bad_prefix, 1).contains("--prefix"));
    let bad_config = run(
        runtime,
        &[
            "--set",
            "sync.max_delay=10ms",
            "sync",
            ".",
            "--to",
            "/tmp/x",
        ],
    );
    assert!(one_line_error(&bad_config, 2).contains("sync.max_delay"));
}

#[test]
fn status_shows_running_and_dead_daemons() {
    let work = tempfile::tempdir().unwrap();
    let runtime = work.path().join("run");
    let empty = run(&runtime, &["status"]);
    assert_eq!(empty.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&empty.stdout).contains("no dagfs sync, mount or failover"));

    let dags = work.path().join("dags");
    std::fs::create_dir(&dags).unwrap();
    std::fs::write(dags.join("a.py"), "a").unwrap();
    let store = work.path().join("store");
    let mut daemon: Child = dagfs(&runtime)
        .args([
            "sync",
            dags.to_str().unwrap(),
            "--to",
            store.to_str().unwrap(),
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    status_until(&runtime, "an idle daemon", |r| {
        r["sync"][0]["phase"] == "idle" && r["sync"][0]["generation"] == 1
    });
    let table = run(&runtime, &["status"]);
    assert_eq!(table.status.code(), Some(0));
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("sync")
            && l.contains("idle")
            && l.contains(&daemon.id().to_string())),
        "{text}"
    );

    // SIGKILL leaves the status file behind: status says the daemon exited, and exits 1.
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let dead = run(&runtime, &["status"]);
    assert_eq!(dead.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&dead.stdout).contains("exited"));
}

#[test]
fn under_systemd_it_notifies_ready_pings_the_watchdog_and_stops_cleanly() {
    let work = tempfile::tempdir().unwrap();
    let runtime = work.path().join("run");
    let dags = work.path().join("dags");
    std::fs::create_dir(&dags).unwrap();
    std::fs::write(dags.join("a.py"), "a").unwrap();
    let socket_path = work.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut daemon = dagfs(&runtime)
        .args(["sync", dags.to_str().unwrap(), "--to"])
        .arg(work.path().join("store"))
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !(seen.iter().any(|m: &String| m.contains("READY=1"))
        && seen.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2)
    {
        let n = socket
            .recv(&mut buffer)
            .unwrap_or_else(|e| panic!("no notification ({e}); got {seen:?}"));
        seen.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
    }

    let pid = daemon.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert_eq!(daemon.wait().unwrap().code(), Some(0));
    // The daemon has exited: everything it sent is queued.
    socket.set_nonblocking(true).unwrap();
    let mut after = Vec::new();
    while let Ok(n) = socket.recv(&mut buffer) {
        after.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
    }
    assert!(
        after.iter().any(|m| m.contains("STOPPING=1")),
        "no STOPPING=1 after {seen:?}: {after:?}"
    );
}

#[test]
fn the_periodic_rescan_publishes_what_the_watcher_cannot_see() {
    // A DAG that is a symlink to a file outside the folder: inotify on the folder never
    // hears about writes to the target, the scan publishes the target's content.
    let work = tempfile::tempdir().unwrap();
    let runtime = work.path().join("run");
    let dags = work.path().join("dags");
    let outside = work.path().join("shared");
    std::fs::create_dir(&dags).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("common.py"), "v1").unwrap();
    std::os::unix::fs::symlink(outside.join("common.py"), dags.join("common.py")).unwrap();
    let store = work.path().join("store");
    let mut daemon = dagfs(&runtime)
        .args([
            "sync",
            dags.to_str().unwrap(),
            "--to",
            store.to_str().unwrap(),
        ])
        .env("DAGFS_SYNC_RESCAN_INTERVAL", "1s")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let in_sync = || {
        run(
            &runtime,
            &[
                "verify",
                "--local",
                dags.to_str().unwrap(),
                "--store",
                store.to_str().unwrap(),
            ],
        )
        .status
        .code()
            == Some(0)
    };
    status_until(&runtime, "the first generation", |r| {
        r["sync"][0]["generation"] == 1
    });
    std::fs::write(outside.join("common.py"), "v2").unwrap();
    assert!(!in_sync(), "verify sees the new content as a difference");
    status_until(&runtime, "the rescan to publish the target", |r| {
        r["sync"][0]["generation"] == 2 && r["sync"][0]["phase"] == "idle"
    });
    assert!(in_sync());
    daemon.kill().unwrap();
    daemon.wait().unwrap();
}
