//! A guard killed by hand leaves no process of its unit behind: the controller, child
//! subreaper of everything it starts, kills the command's group and every orphan it adopted.
//! Alone in its test binary: becoming a subreaper changes the whole test process.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use dagfs::supervise::{Unit, UnitSpec};

/// Bug 4, the other way out of a group: the guard itself is SIGKILLed by hand.
#[tokio::test]
async fn a_guard_killed_by_hand_leaves_no_process_behind() {
    dagfs::supervise::adopt_orphans().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("escaped");
    let spec = UnitSpec {
        commands: vec![format!(
            "setsid sh -c 'echo $$ > {}; exec sleep 1000' & sleep 1000",
            pid_file.display()
        )],
        kill_grace: Duration::from_secs(2),
        guard_exe: PathBuf::from(env!("CARGO_BIN_EXE_dagfs")),
        env: Vec::new(),
    };
    let mut unit = Unit::start(&spec, 1, None, None).await.unwrap();
    let alive = |pid: u32| dagfs::proc::process(pid).is_some_and(|p| !p.zombie);
    let until = Instant::now() + Duration::from_secs(10);
    let escaped = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
        {
            break pid;
        }
        assert!(Instant::now() < until, "the command never wrote its pid");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(alive(escaped));
    let guard = unit.members()[0].guard_pid.unwrap();
    support::send(guard, rustix::process::Signal::KILL);
    unit.exited().await;
    assert!(!alive(escaped), "pid {escaped} outlived its killed guard");
}
