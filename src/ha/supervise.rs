//! Supervision of the failover unit: the commands a leader runs (e.g. `airflow scheduler` and
//! `airflow dag-processor`), each in its own process group behind a *guard* process, their
//! output in the controller's log, restarts with backoff, and health checks.
//!
//! The guard (`dagfs failover-guard`, one per command) is what enforces the lease: it holds
//! the lease deadline the controller last sent it and stops its command's process group
//! (SIGTERM, SIGKILL after the grace) when the deadline passes or the controller goes away
//! (its stdin closes). It runs as a separate process so that a controller that is paused
//! (SIGSTOP, a long stall) or killed (SIGKILL) still has its commands stopped on time: a
//! thread of the controller would be paused with it, and the commands' own process groups
//! keep them out of reach of signals meant for the controller.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustix::process::{kill_process, kill_process_group, Pid, Signal};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::election::Clock;

/// How often a guard compares its lease deadline with the clock; also bounds how late it
/// notices a deadline after the host was suspended (its timers do not count suspend time).
pub const GUARD_TICK: Duration = Duration::from_millis(100);

/// How often a stopping guard looks whether its command's process group is empty yet.
const GROUP_POLL: Duration = Duration::from_millis(50);

/// Extra time, beyond the kill grace, that stopping a unit waits for its guards.
const STOP_SLACK: Duration = Duration::from_secs(5);

/// The shell that runs each command line.
const SHELL: &str = "/bin/sh";

fn signal_group(pid: u32, signal: Signal) {
    if let Some(pid) = Pid::from_raw(pid as i32) {
        // ESRCH: the group is already gone, which is what we want.
        let _ = kill_process_group(pid, signal);
    }
}

/// A line on the guard's stderr. Never `eprintln!`: once the controller is gone the pipe is
/// broken, `eprintln!` would panic and the guard would die without stopping its command.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Exit code of a process as a shell reports it: its code, or 128 + the signal.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Why a guard stopped its command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopReason {
    LeaseExpired,
    Asked,
    ControllerGone,
    Signalled,
    Deposed,
}

impl StopReason {
    fn describe(self) -> &'static str {
        match self {
            StopReason::LeaseExpired => "the leadership lease expired (fencing)",
            StopReason::Asked => "the controller asked",
            StopReason::ControllerGone => "the controller is gone",
            StopReason::Signalled => "the guard was signalled",
            StopReason::Deposed => "another candidate took over (killing at once)",
        }
    }
}

/// The body of `dagfs failover-guard`: runs `command` in its own process group until it exits
/// or must be stopped; returns the exit code to leave with.
///
/// Its stdin is the controller's channel: `lease <nanoseconds of CLOCK_BOOTTIME>` moves the
/// deadline, `stop` stops the command (SIGKILL after the grace, and never later than the
/// lease's end plus the grace), `kill` kills it at once, end of input (the controller died)
/// stops it at once as `stop` does.
pub async fn guard(command: &str, kill_grace: Duration, lease_until: Option<Clock>) -> i32 {
    // Orphans of the command (double forks, daemons) become the guard's children instead of
    // init's, so nothing the command started can leave the guard's reach.
    if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        say!("dagfs failover-guard: cannot become a child subreaper: {e}");
        return 1;
    }
    let mut child = match Command::new(SHELL)
        .arg("-c")
        .arg(command)
        .process_group(0)
        .stdin(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            say!("dagfs failover-guard: cannot run {SHELL} -c {command:?}: {e}");
            return 127;
        }
    };
    let pid = child.id().unwrap_or_default();
    say!("{GUARD_STARTED}{pid}");
    let mut lease_until = lease_until;
    let mut control = BufReader::new(tokio::io::stdin()).lines();
    let (mut term, mut int) = match (
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        _ => {
            let deadline = kill_deadline(Clock::now(), lease_until, kill_grace);
            stop_unit(&mut child, pid, deadline).await;
            return 1;
        }
    };
    let mut tick = tokio::time::interval(GUARD_TICK);
    let reason = loop {
        tokio::select! {
            status = child.wait() => {
                // The command is done; nothing it started may outlive it.
                let code = status.map(exit_code).unwrap_or(1);
                kill_descendants(pid).await;
                return code;
            }
            line = control.next_line() => match line {
                Ok(Some(line)) => match line.trim().split_once(' ') {
                    Some(("lease", nanos)) => match nanos.parse::<u64>() {
                        Ok(nanos) => lease_until = Some(Clock(Duration::from_nanos(nanos))),
                        Err(_) => say!("dagfs failover-guard: ignoring {line:?}"),
                    },
                    _ if line.trim() == "stop" => break StopReason::Asked,
                    _ if line.trim() == "kill" => break StopReason::Deposed,
                    _ => say!("dagfs failover-guard: ignoring {line:?}"),
                },
                _ => break StopReason::ControllerGone,
            },
            _ = tick.tick() => {
                if lease_until.is_some_and(|until| Clock::now() >= until) {
                    break StopReason::LeaseExpired;
                }
            }
            _ = term.recv() => break StopReason::Signalled,
            _ = int.recv() => break StopReason::Signalled,
        }
    };
    let now = Clock::now();
    let deadline = match reason {
        StopReason::Deposed => now,
        _ => kill_deadline(now, lease_until, kill_grace),
    };
    say!(
        "dagfs failover-guard: stopping pid {pid}: {}",
        reason.describe()
    );
    stop_unit(&mut child, pid, deadline).await
}

/// When a guard that starts stopping its unit at `now` sends SIGKILL to what is left: after
/// the kill grace, but never later than the lease's end plus the grace. A guard that notices
/// an expired lease late (its host was paused) therefore kills at once: the grace counts from
/// the lease, which a standby's wait already covers, not from when the guard noticed.
pub fn kill_deadline(now: Clock, lease_until: Option<Clock>, kill_grace: Duration) -> Clock {
    let by_grace = now.after(kill_grace);
    lease_until.map_or(by_grace, |lease| by_grace.min(lease.after(kill_grace)))
}

/// SIGTERM to the command's group and to every other process descended from the guard;
/// SIGKILL to all that is left once the command has exited and nothing else is left, or at
/// `deadline`; then waits until every descendant is gone. Returns the command's exit code.
///
/// The grace applies to the whole tree, not only to the command: a shell wrapper that dies at
/// once on SIGTERM must not cut short its children's clean shutdown, and processes that left
/// the command's process group (Airflow's DAG processor manager and task runners call
/// `setpgid`) are stopped too. There is no event for "the tree is empty", so it is polled
/// (every [`GROUP_POLL`]).
async fn stop_unit(child: &mut Child, pid: u32, deadline: Clock) -> i32 {
    let guard = std::process::id();
    signal_group(pid, Signal::TERM);
    for process in descendants(guard) {
        signal_process(process, Signal::TERM);
    }
    let mut status = None;
    while Clock::now() < deadline {
        if status.is_none() {
            status = child.try_wait().ok().flatten();
        }
        reap_orphans(guard, pid);
        if status.is_some() && descendants(guard).is_empty() {
            break;
        }
        tokio::time::sleep(GROUP_POLL.min(deadline.since(Clock::now()))).await;
    }
    let status = match status {
        Some(status) => Ok(status),
        None => {
            signal_group(pid, Signal::KILL);
            for process in descendants(guard) {
                signal_process(process, Signal::KILL);
            }
            child.wait().await
        }
    };
    kill_descendants(pid).await;
    status.map(exit_code).unwrap_or(1)
}

/// SIGKILLs the command's group and every descendant of the guard, and waits until none is
/// left (a process in uninterruptible sleep dies when the kernel lets it; the controller
/// does not release leadership until the guard is gone).
async fn kill_descendants(pid: u32) {
    let guard = std::process::id();
    signal_group(pid, Signal::KILL);
    loop {
        reap_orphans(guard, pid);
        let left = descendants(guard);
        if left.is_empty() {
            return;
        }
        for process in left {
            signal_process(process, Signal::KILL);
        }
        tokio::time::sleep(GROUP_POLL).await;
    }
}

/// Whether any process is left in process group `pgid`.
fn group_alive(pgid: u32) -> bool {
    Pid::from_raw(pgid as i32)
        .is_some_and(|pid| rustix::process::test_kill_process_group(pid).is_ok())
}

fn signal_process(pid: u32, signal: Signal) {
    if let Some(pid) = Pid::from_raw(pid as i32) {
        let _ = kill_process(pid, signal);
    }
}

/// Reaps exited orphans the guard adopted as subreaper (not the command itself, which tokio
/// waits for), so they do not linger as zombies.
fn reap_orphans(guard: u32, command: u32) {
    for process in crate::proc::children(guard) {
        if process.pid != command && process.zombie {
            if let Some(pid) = Pid::from_raw(process.pid as i32) {
                let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG);
            }
        }
    }
}

/// The live (not yet exited) processes descended from `root`, excluding `root`.
fn descendants(root: u32) -> Vec<u32> {
    crate::proc::descendants(root)
        .into_iter()
        .filter(|p| !p.zombie)
        .map(|p| p.pid)
        .collect()
}

/// The processes the controller spawned itself (guards, health checks). Any other child of
/// the controller is an orphan it adopted as child subreaper from a guard that died.
static SPAWNED: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn spawned() -> std::sync::MutexGuard<'static, Vec<u32>> {
    SPAWNED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Spawns `command` and records its pid (under the lock, so [`kill_orphans`] never sees it
/// unrecorded).
fn spawn_registered(command: &mut Command) -> std::io::Result<Child> {
    let mut spawned = spawned();
    let child = command.spawn()?;
    spawned.extend(child.id());
    Ok(child)
}

fn forget_spawned(pid: u32) {
    spawned().retain(|&p| p != pid);
}

/// Forgets a spawned pid when dropped.
struct Registered(u32);

impl Drop for Registered {
    fn drop(&mut self) {
        forget_spawned(self.0);
    }
}

/// Makes this process (the controller) the child subreaper of everything it starts: when a
/// guard is killed by hand, the processes of its unit become the controller's children
/// rather than init's, and [`kill_orphans`] can find them.
pub fn adopt_orphans() -> std::io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    ADOPTING.store(true, Ordering::SeqCst);
    Ok(())
}

/// Whether [`adopt_orphans`] was called: only then are unknown children orphans of guards
/// (a test process has children of its own).
static ADOPTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// SIGKILLs every child of this process that it did not spawn itself, with all their
/// descendants, and waits until they are gone (reaped), at most [`STOP_SLACK`]: a SIGKILLed
/// process dies when it next runs, not when the signal is sent, and its own orphans come
/// to this process only as it exits.
async fn kill_orphans() {
    if !ADOPTING.load(Ordering::SeqCst) {
        return;
    }
    let me = std::process::id();
    let deadline = tokio::time::Instant::now() + STOP_SLACK;
    let mut warned = std::collections::HashSet::new();
    loop {
        let orphans: Vec<_> = {
            let spawned = spawned();
            crate::proc::children(me)
                .into_iter()
                .filter(|p| !spawned.contains(&p.pid))
                .collect()
        };
        if orphans.is_empty() {
            return;
        }
        for orphan in &orphans {
            if !orphan.zombie {
                if warned.insert(orphan.pid) {
                    tracing::warn!(
                        pid = orphan.pid,
                        "killing a process left by a guard that died"
                    );
                }
                for process in crate::proc::descendants(orphan.pid) {
                    signal_process(process.pid, Signal::KILL);
                }
                signal_process(orphan.pid, Signal::KILL);
            }
            if let Some(pid) = Pid::from_raw(orphan.pid as i32) {
                let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                left = orphans.len(),
                "processes left by a guard that died are still exiting"
            );
            return;
        }
        tokio::time::sleep(GROUP_POLL).await;
    }
}

/// How to start a unit.
#[derive(Clone, Debug)]
pub struct UnitSpec {
    /// Shell command lines, started together and stopped together.
    pub commands: Vec<String>,
    /// Time between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// The `dagfs` executable that runs the guards.
    pub guard_exe: PathBuf,
    /// Extra environment for the commands.
    pub env: Vec<(String, String)>,
}

/// A command of a running unit, as reported in the controller's state.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberInfo {
    /// The command line.
    pub command: String,
    /// Process id of its guard (the command is the guard's only child).
    pub guard_pid: Option<u32>,
    /// When it was started, milliseconds since the Unix epoch.
    pub started_ms: u64,
}

/// A command of the unit that ended.
#[derive(Debug)]
pub struct MemberExit {
    /// The command line.
    pub command: String,
    /// Its exit code (128 + signal for a signal), `None` if it could not be waited for.
    pub code: Option<i32>,
}

struct Member {
    info: MemberInfo,
    control: Option<ChildStdin>,
}

/// The commands of one leadership term, running.
pub struct Unit {
    members: Vec<Member>,
    exits: mpsc::UnboundedReceiver<MemberExit>,
    running: usize,
    kill_grace: Duration,
}

impl Unit {
    /// Starts every command behind its guard, with `epoch` in their environment
    /// (`DAGFS_EPOCH`, and `DAGFS_GENERATION` for the generation the mount serves) and in
    /// every line of their output in the log. On an error the commands already started are
    /// stopped.
    pub async fn start(
        spec: &UnitSpec,
        epoch: u64,
        generation: Option<u64>,
        lease_until: Option<Clock>,
    ) -> std::io::Result<Unit> {
        let (tx, exits) = mpsc::unbounded_channel();
        let mut unit = Unit {
            members: Vec::new(),
            exits,
            running: 0,
            kill_grace: spec.kill_grace,
        };
        for command in &spec.commands {
            let mut guard = Command::new(&spec.guard_exe);
            guard
                .arg("failover-guard")
                .arg("--kill-grace")
                .arg(humantime::format_duration(spec.kill_grace).to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .envs(spec.env.iter().map(|(k, v)| (k, v)))
                .env("DAGFS_EPOCH", epoch.to_string())
                .env(
                    "DAGFS_GENERATION",
                    generation.map_or(String::new(), |g| g.to_string()),
                );
            if let Some(until) = lease_until {
                guard
                    .arg("--lease-until-ns")
                    .arg(until.0.as_nanos().to_string());
            }
            guard.arg("--").arg(command);
            let mut child = match spawn_registered(&mut guard) {
                Ok(child) => child,
                Err(e) => {
                    unit.stop().await;
                    return Err(e);
                }
            };
            let info = MemberInfo {
                command: command.clone(),
                guard_pid: child.id(),
                started_ms: crate::runtime::now_ms(),
            };
            tracing::info!(epoch, command = %command, guard_pid = ?info.guard_pid, "started");
            let control = child.stdin.take();
            let guard_pid = child.id().unwrap_or_default();
            let group = Arc::new(AtomicU32::new(0));
            for (stream, reader) in [
                ("stdout", child.stdout.take().map(|s| Box::new(s) as Box<_>)),
                ("stderr", child.stderr.take().map(|s| Box::new(s) as Box<_>)),
            ] {
                if let Some(reader) = reader {
                    let lines = log_lines(
                        reader,
                        epoch,
                        command.clone(),
                        stream,
                        GroupReport {
                            guard: guard_pid,
                            group: group.clone(),
                        },
                    );
                    tokio::spawn(lines);
                }
            }
            let tx = tx.clone();
            let name = command.clone();
            tokio::spawn(async move {
                let code = child.wait().await.ok().map(exit_code);
                forget_spawned(guard_pid);
                // The guard kills its command's tree before it exits; if the guard itself
                // was killed, the controller does it: the command's group (as the guard
                // reported it), and every orphan of the tree, which the controller adopted
                // as child subreaper.
                let pgid = group.load(Ordering::SeqCst);
                if pgid != 0 {
                    signal_group(pgid, Signal::KILL);
                    // Not a subreaper: the group's processes go to init, which reaps them.
                    let deadline = tokio::time::Instant::now() + STOP_SLACK;
                    while !ADOPTING.load(Ordering::SeqCst)
                        && group_alive(pgid)
                        && tokio::time::Instant::now() < deadline
                    {
                        tokio::time::sleep(GROUP_POLL).await;
                    }
                }
                // As subreaper, the group's processes and their orphans come to the
                // controller as their parents exit: kill and reap them until none is left.
                kill_orphans().await;
                let _ = tx.send(MemberExit {
                    command: name,
                    code,
                });
            });
            unit.members.push(Member { info, control });
            unit.running += 1;
        }
        Ok(unit)
    }

    /// The commands, for the controller's state.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.members.iter().map(|m| m.info.clone()).collect()
    }

    /// Moves every guard's deadline to `lease_until`.
    pub async fn extend(&mut self, lease_until: Clock) {
        let line = format!("lease {}\n", lease_until.0.as_nanos());
        self.send(&line).await;
    }

    async fn send(&mut self, line: &str) {
        for member in &mut self.members {
            if let Some(control) = &mut member.control {
                // A guard that is gone reports its exit through the channel.
                if control.write_all(line.as_bytes()).await.is_err() {
                    member.control = None;
                }
            }
        }
    }

    /// Waits for the next command to end (immediately noticed: each guard is awaited by a
    /// task, no polling).
    pub async fn exited(&mut self) -> MemberExit {
        match self.exits.recv().await {
            Some(exit) => {
                self.running = self.running.saturating_sub(1);
                exit
            }
            // Unreachable while the unit holds senders through its tasks; wait forever.
            None => std::future::pending().await,
        }
    }

    /// Stops every command (SIGTERM, SIGKILL after the grace) and waits until all are gone.
    /// Returns whether every guard confirmed it (a guard exits only once nothing of its
    /// command's tree is left); only then may leadership be released.
    pub async fn stop(self) -> bool {
        self.finish("stop\n").await
    }

    /// Kills every command at once (SIGKILL, no grace): for a leader that learns it was
    /// deposed, whose successor may already run. Returns as [`Unit::stop`] does.
    pub async fn kill(self) -> bool {
        self.finish("kill\n").await
    }

    async fn finish(mut self, line: &str) -> bool {
        self.send(line).await;
        for member in &mut self.members {
            member.control = None;
        }
        let deadline = tokio::time::Instant::now() + self.kill_grace + STOP_SLACK;
        while self.running > 0 {
            match tokio::time::timeout_at(deadline, self.exits.recv()).await {
                Ok(Some(exit)) => {
                    self.running -= 1;
                    tracing::info!(command = %exit.command, code = ?exit.code, "stopped");
                }
                _ => break,
            }
        }
        if self.running == 0 {
            return true;
        }
        // A guard that did not finish in time (a process of its unit survives SIGKILL, in
        // uninterruptible sleep): kill it, and say so loudly. Its unit may still be alive,
        // so the caller must not release leadership.
        for member in &self.members {
            if let Some(pid) = member.info.guard_pid.and_then(|p| Pid::from_raw(p as i32)) {
                let _ = kill_process(pid, Signal::KILL);
            }
        }
        tracing::error!(
            running = self.running,
            "guards did not stop within kill_grace + 5s; killed them; not releasing leadership"
        );
        false
    }
}

/// The first line a guard writes to stderr: the process (group) id of its command.
const GUARD_STARTED: &str = "dagfs failover-guard: started pid ";

/// Where a guard's report of its command's process group goes.
struct GroupReport {
    /// The guard's pid.
    guard: u32,
    /// The command's process group, once reported (0 before).
    group: Arc<AtomicU32>,
}

impl GroupReport {
    /// Takes `line` as the guard's report if it is the first one and names a process that is
    /// the guard's child and leads its own group. The command shares the guard's output, so
    /// it (or a DAG file printing at parse time) can print the marker too: a forged line names
    /// no such process, or comes after the real one.
    fn note(&self, line: &str) {
        let Some(pid) = line.strip_prefix(GUARD_STARTED) else {
            return;
        };
        let Ok(pid) = pid.trim().parse::<u32>() else {
            return;
        };
        let genuine = pid > 1
            && crate::proc::process(pid).is_some_and(|p| p.ppid == self.guard && p.pgrp == pid);
        if genuine {
            let _ = self
                .group
                .compare_exchange(0, pid, Ordering::SeqCst, Ordering::SeqCst);
        }
    }
}

/// Logs a guard's output line by line with the epoch; notes the command's process group.
async fn log_lines(
    reader: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    epoch: u64,
    command: String,
    stream: &'static str,
    report: GroupReport,
) {
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        report.note(&line);
        tracing::info!(target: "dagfs::child", epoch, command = %command, stream, "{line}");
    }
}

/// What to do after the unit failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// Start it again after this delay.
    RestartIn(Duration),
    /// Too many failures in the window: step down.
    GiveUp,
}

/// Restart accounting: at most `limit` restarts within `window`, the delay doubling from
/// `backoff` with each failure in the window.
#[derive(Clone, Debug)]
pub struct RestartPolicy {
    limit: u32,
    window: Duration,
    backoff: Duration,
    failures: VecDeque<Clock>,
}

impl RestartPolicy {
    /// A policy with no failures recorded.
    pub fn new(limit: u32, window: Duration, backoff: Duration) -> Self {
        RestartPolicy {
            limit,
            window,
            backoff,
            failures: VecDeque::new(),
        }
    }

    /// Records a failure at `now` and decides.
    pub fn on_failure(&mut self, now: Clock) -> AfterFailure {
        while self
            .failures
            .front()
            .is_some_and(|&t| now.since(t) >= self.window)
        {
            self.failures.pop_front();
        }
        self.failures.push_back(now);
        let count = self.failures.len() as u32;
        if count > self.limit {
            return AfterFailure::GiveUp;
        }
        AfterFailure::RestartIn(self.backoff.saturating_mul(1 << (count - 1).min(16)))
    }

    /// Restarts used in the current window.
    pub fn restarts(&self) -> u32 {
        self.failures.len() as u32
    }

    /// Forgets all failures (a new term).
    pub fn reset(&mut self) {
        self.failures.clear();
    }
}

/// Runs the health-check command line once; `Err` says why it failed.
pub async fn health_check(command: &str, timeout: Duration) -> Result<(), String> {
    let child = spawn_registered(
        Command::new(SHELL)
            .arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true),
    )
    .map_err(|e| format!("cannot run health command {command:?}: {e}"))?;
    let _registered = Registered(child.id().unwrap_or_default());
    let pid = child.id();
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(format!(
            "health command exited with {}: {}",
            exit_code(out.status),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(Err(e)) => Err(format!("health command: {e}")),
        Err(_) => {
            if let Some(pid) = pid {
                signal_group(pid, Signal::KILL);
            }
            Err(format!(
                "health command did not finish within {}",
                humantime::format_duration(timeout)
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_then_give_up_and_old_failures_expire() {
        let at = |s: u64| Clock(Duration::from_secs(s));
        let mut policy = RestartPolicy::new(2, Duration::from_secs(60), Duration::from_secs(1));
        assert_eq!(
            policy.on_failure(at(0)),
            AfterFailure::RestartIn(Duration::from_secs(1))
        );
        assert_eq!(
            policy.on_failure(at(10)),
            AfterFailure::RestartIn(Duration::from_secs(2))
        );
        assert_eq!(policy.on_failure(at(20)), AfterFailure::GiveUp);
        // A minute later the first two failures no longer count.
        let mut policy = RestartPolicy::new(2, Duration::from_secs(60), Duration::from_secs(1));
        policy.on_failure(at(0));
        policy.on_failure(at(10));
        assert_eq!(
            policy.on_failure(at(65)),
            AfterFailure::RestartIn(Duration::from_secs(2))
        );
        assert_eq!(policy.restarts(), 2);
        policy.reset();
        assert_eq!(policy.restarts(), 0);
    }

    #[tokio::test]
    async fn health_check_reports_failure_and_timeout() {
        assert!(health_check("true", Duration::from_secs(5)).await.is_ok());
        let err = health_check("echo broken >&2; exit 3", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.contains('3') && err.contains("broken"), "{err}");
        let err = health_check("sleep 30", Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(err.contains("did not finish"), "{err}");
    }
}
