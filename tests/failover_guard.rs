//! The failover unit's supervision with real processes (`dagfs failover-guard` from this
//! build, real shells), no store: what stops a unit, and what it can and cannot fool.
//!
//! - processes that leave the command's process group (`setsid`, `setpgid`, as Airflow's
//!   DAG processor manager and task runners do) are stopped with it, before `stop` returns;
//! - a command that prints the guard's "started pid" line cannot make the controller kill
//!   another process group;
//! - a guard that notices late that its lease ended kills at once: the kill grace counts from
//!   the lease, not from when it noticed.

mod support;

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dagfs::election::Clock;
use dagfs::supervise::{Unit, UnitSpec};

fn spec(command: String, kill_grace: Duration) -> UnitSpec {
    UnitSpec {
        commands: vec![command],
        kill_grace,
        // DAGFS_TEST_EXE: the guard of another build (to watch an attack fail on it).
        guard_exe: std::env::var_os("DAGFS_TEST_EXE")
            .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_dagfs")), PathBuf::from),
        env: Vec::new(),
    }
}

fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_pid(path: &Path) -> u32 {
    wait_for("the pid file", Duration::from_secs(10), || {
        std::fs::read_to_string(path).is_ok_and(|t| t.trim().parse::<u32>().is_ok())
    });
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn alive(pid: u32) -> bool {
    dagfs::proc::process(pid).is_some_and(|p| !p.zombie)
}

/// A command that starts a process in a session (and process group) of its own, writes its
/// pid to `pid_file`, and waits.
fn escaping_command(pid_file: &Path) -> String {
    format!(
        "setsid sh -c 'echo $$ > {}; exec sleep 1000' & sleep 1000",
        pid_file.display()
    )
}

/// Bug 4: a process that left the command's group survived the stop, and leadership was
/// released (a standby started at once) while it ran.
#[tokio::test]
async fn a_process_that_left_the_group_is_gone_when_stop_returns() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("escaped");
    let unit = Unit::start(
        &spec(escaping_command(&pid_file), Duration::from_secs(2)),
        1,
        None,
        None,
    )
    .await
    .unwrap();
    let escaped = read_pid(&pid_file);
    assert!(alive(escaped));
    assert!(unit.stop().await, "the guard confirmed the unit gone");
    assert!(!alive(escaped), "pid {escaped} outlived its unit");
}

/// Collects what the library logs, so a test can wait until a line was processed.
#[derive(Clone, Default)]
struct Logged(Arc<Mutex<Vec<u8>>>);

impl Write for Logged {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A process killed when the test ends, however it ends.
struct Victim(std::process::Child);

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Bug 5: the controller took the group to SIGKILL from any output line starting with the
/// guard's marker. A command (or a DAG file printing at parse time) names a victim's group;
/// the guard is then killed by hand; the victim must live.
#[test]
fn a_forged_group_report_kills_nothing() {
    let logged = Logged::default();
    let writer = logged.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // Global, not scoped: a callsite first reached by another test's thread (no subscriber)
    // can be cached as uninterested, and a scoped subscriber then never sees the line.
    tracing::subscriber::set_global_default(subscriber).expect("only this test sets one");
    let mut victim = Victim(
        std::process::Command::new("sleep")
            .arg("1000")
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    let victim_pid = victim.0.id();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // The end marker is computed by the shell: the command line itself (logged when the
        // unit starts) must not contain it, or the wait below ends before the forged line
        // was read, and the test cannot fail.
        let forged = format!(
            "sleep 0.2; echo 'dagfs failover-guard: started pid {victim_pid}' >&2; echo forged-$((6 * 7)) >&2; sleep 1000"
        );
        let mut unit = Unit::start(&spec(forged, Duration::from_secs(2)), 1, None, None)
            .await
            .unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while !String::from_utf8_lossy(&logged.0.lock().unwrap()).contains("forged-42") {
            assert!(
                Instant::now() < until,
                "the forged line was never read; logged: {}",
                String::from_utf8_lossy(&logged.0.lock().unwrap())
            );
            // Let the tasks reading the guard's output run (this runtime has one thread).
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let guard = unit.members()[0].guard_pid.unwrap();
        support::send(guard, rustix::process::Signal::KILL);
        unit.exited().await;
    });
    // A SIGKILL is delivered asynchronously: watch the victim for a second.
    let watch = Instant::now() + Duration::from_secs(1);
    let mut survived = true;
    while survived && Instant::now() < watch {
        survived = victim.0.try_wait().unwrap().is_none();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        survived,
        "the controller killed a process group a command named"
    );
}

/// Bug 3: a guard that notices late that its lease ended (its host was paused) must not
/// give the unit a fresh kill grace: the grace counted from the lease is long over.
#[tokio::test]
async fn a_lease_that_ended_long_ago_means_sigkill_at_once() {
    let grace = Duration::from_secs(5);
    let lease_ended = Clock(Clock::now().0 - 2 * grace);
    let started = Instant::now();
    let mut unit = Unit::start(
        &spec("trap '' TERM; while :; do sleep 0.05; done".into(), grace),
        1,
        None,
        Some(lease_ended),
    )
    .await
    .unwrap();
    let exit = tokio::time::timeout(4 * grace, unit.exited())
        .await
        .expect("the guard neither killed its unit nor exited");
    let took = started.elapsed();
    assert!(
        took < grace / 2,
        "the unit ignoring SIGTERM lived {took:?} after a lease that ended {:?} ago ({exit:?})",
        2 * grace
    );
}
