//! `dagfs failover` as real processes against a real HDFS (MiniDFS): several controllers
//! ("hosts", each with its own runtime directory and, where a host is cut off from HDFS, its
//! own uid) supervise a stand-in scheduler that records every start in a witness log and
//! holds an exclusive `flock` while it runs, so two schedulers alive at once are recorded as
//! `OVERLAP` by the kernel's lock, whatever killed the previous one.
//!
//! Timing: interval 1 s, fence_after 3 s, kill_grace 1 s, safety_margin 1 s,
//! takeover_after 5 s.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dagfs::failover::{ControllerState, Role};
use dagfs::mount::state::{MountState, StateDir};
use dagfs::runtime::now_ms;

use support::database::{Kind, Server};
use support::minidfs::{superuser, MiniDfs};
use support::{run, terminate};

const INTERVAL: Duration = Duration::from_secs(1);
const TAKEOVER_AFTER: Duration = Duration::from_secs(5);

/// The tests measure takeover times: one at a time, so they do not compete for the CPU.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A directory every test uid can write.
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("dagfs-failover-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// One test's world: a store root with a published generation, a witness log, the stand-in.
struct World {
    cluster: &'static MiniDfs,
    url: String,
    dir: tempfile::TempDir,
}

impl World {
    fn new(test: &str) -> World {
        let cluster = MiniDfs::shared();
        let world = World {
            cluster,
            url: cluster.unique_root(test),
            dir: shared_dir(),
        };
        let dags = world.dir.path().join("dags");
        std::fs::create_dir_all(&dags).unwrap();
        std::fs::write(dags.join("dag.py"), "# generation 1\n").unwrap();
        world.push(&dags);
        let standin = world.dir.path().join("scheduler.sh");
        std::fs::write(
            &standin,
            r#"#!/bin/sh
# Stand-in scheduler: $1 = host name, $2 = "crash" to fail at once, "shared" to run
# without the exclusive lock (--all-active, where every host runs it).
w="$(dirname "$0")/witness"
echo "start $1 $(date +%s.%N) epoch=$DAGFS_EPOCH" >> "$w"
[ "$2" = crash ] && exit 3
[ "$2" = shared ] && exec sh -c 'while :; do sleep 0.05; done'
# "tick": ignore SIGTERM (only SIGKILL ends it) and record that it executes, every 50 ms.
[ "$2" = tick ] && exec sh -c 'trap "" TERM; while :; do echo "$1 $(date +%s.%N)" >> "$0"; sleep 0.05; done' "$(dirname "$0")/ticks" "$1"
flock -n -E 99 "$(dirname "$0")/alive.lock" sh -c '
  trap "echo stop $1 \$(date +%s.%N) >> \"$0\"; exit 0" TERM
  while :; do sleep 0.05; done' "$w" "$1"
[ $? = 99 ] && echo "OVERLAP $1 $(date +%s.%N)" >> "$w"
"#,
        )
        .unwrap();
        std::fs::set_permissions(&standin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let witness = world.witness_path();
        std::fs::write(&witness, "").unwrap();
        std::fs::set_permissions(&witness, std::fs::Permissions::from_mode(0o666)).unwrap();
        world
    }

    fn push(&self, dags: &Path) {
        run(Command::new(env!("CARGO_BIN_EXE_dagfs"))
            .args(["push", "--no-mirror", "--to", &self.url])
            .arg(dags)
            .env_remove("DAGFS_CONFIG")
            .env("DAGFS_STORE_USER", superuser()));
    }

    fn witness_path(&self) -> PathBuf {
        self.dir.path().join("witness")
    }

    fn witness(&self) -> String {
        std::fs::read_to_string(self.witness_path()).unwrap()
    }

    /// Start events as (host, time), in order.
    fn starts(&self) -> Vec<(String, f64)> {
        self.witness()
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                (words.next() == Some("start")).then(|| {
                    let host = words.next().unwrap().to_string();
                    (host, words.next().unwrap().parse().unwrap())
                })
            })
            .collect()
    }

    /// Every controller's log, for failure messages.
    fn logs(&self) -> String {
        let mut logs = String::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                logs.push_str(&format!("--- {}\n", path.display()));
                for line in tail.into_iter().rev() {
                    logs.push_str(line);
                    logs.push('\n');
                }
            }
        }
        logs
    }

    fn assert_no_overlap(&self) {
        let witness = self.witness();
        assert!(
            !witness.contains("OVERLAP"),
            "two schedulers were alive at once:\n{witness}"
        );
    }

    /// [`World::assert_no_overlap`] every 100 ms for `time`.
    fn watch_no_overlap(&self, time: Duration) {
        let until = Instant::now() + time;
        while Instant::now() < until {
            self.assert_no_overlap();
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A controller for host `name`; `uid` runs it as that user (to cut it off alone).
    fn host(&self, name: &str, uid: Option<u32>, extra: &[(&str, &str)]) -> Host {
        let runtime = self.dir.path().join(format!("run-{name}"));
        std::fs::create_dir_all(&runtime).unwrap();
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o777)).unwrap();
        let mountpoint = self.dir.path().join(format!("mnt-{name}"));
        let host = Host {
            name: name.to_string(),
            runtime,
            mountpoint,
            uid,
            child: None,
            log: self.dir.path().join(format!("{name}.log")),
            extra: extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            all_active: false,
        };
        host.set_mount(Some(1), Some(1));
        host
    }

    fn wait_for(&self, what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
        let until = Instant::now() + deadline;
        while !done() {
            assert!(
                Instant::now() < until,
                "timed out waiting for {what}; witness:\n{}\n{}",
                self.witness(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `host` has started the scheduler `count` times in all; returns the time.
    fn wait_start(&self, host: &str, count: usize, deadline: Duration) -> f64 {
        self.wait_for(&format!("start #{count} on {host}"), deadline, || {
            self.starts().iter().filter(|(h, _)| h == host).count() >= count
        });
        self.starts()
            .iter()
            .filter(|(h, _)| h == host)
            .nth(count - 1)
            .unwrap()
            .1
    }
}

/// The executable under test: this build's, or `DAGFS_TEST_EXE` (to run an attack against
/// another build, e.g. the previous release, and watch it fail).
fn dagfs_exe() -> PathBuf {
    std::env::var_os("DAGFS_TEST_EXE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_dagfs")))
}

impl World {
    /// Starts host `a` and waits until it runs the unit, then starts `b` and waits until it
    /// follows `a`; both run the stand-in with `args`.
    fn lead_then_follow(&self, a: &mut Host, b: &mut Host, args: &[&str]) {
        a.start(self, args);
        self.wait_start(&a.name, 1, Duration::from_secs(60));
        b.start(self, args);
        self.wait_for("b to follow a", Duration::from_secs(30), || {
            b.state()
                .and_then(|s| s.leader)
                .is_some_and(|l| l.id == a.name)
        });
    }

    /// Every stretch of time in which a "tick" stand-in executed, as (host, first tick,
    /// last tick): ticks less than 0.5 s apart belong to one stretch (a stopped process
    /// makes a gap).
    fn stretches(&self) -> Vec<(String, f64, f64)> {
        let text = std::fs::read_to_string(self.dir.path().join("ticks")).unwrap_or_default();
        let mut by_host: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if let (Some(host), Some(Ok(t))) = (words.next(), words.next().map(str::parse)) {
                by_host.entry(host.to_string()).or_default().push(t);
            }
        }
        let mut stretches = Vec::new();
        for (host, mut ticks) in by_host {
            ticks.sort_by(f64::total_cmp);
            let mut start = ticks[0];
            for pair in ticks.windows(2) {
                if pair[1] - pair[0] > 0.5 {
                    stretches.push((host.clone(), start, pair[0]));
                    start = pair[1];
                }
            }
            stretches.push((host, start, *ticks.last().unwrap()));
        }
        stretches
    }

    /// The longest time two hosts' "tick" stand-ins executed at once.
    fn longest_overlap(&self) -> f64 {
        let stretches = self.stretches();
        let mut longest = 0.0f64;
        for (i, (h1, s1, e1)) in stretches.iter().enumerate() {
            for (h2, s2, e2) in &stretches[i + 1..] {
                if h1 != h2 {
                    longest = longest.max(e1.min(*e2) - s1.max(*s2));
                }
            }
        }
        longest
    }
}

/// One simulated scheduler host.
struct Host {
    name: String,
    runtime: PathBuf,
    mountpoint: PathBuf,
    uid: Option<u32>,
    child: Option<Child>,
    log: PathBuf,
    extra: Vec<(String, String)>,
    all_active: bool,
}

impl Host {
    /// Writes this host's mount state (as `dagfs mount` would), readable by its uid.
    fn set_mount(&self, generation: Option<u64>, head: Option<u64>) {
        let states = StateDir::at(&self.runtime);
        states
            .write(&{
                let poll = Duration::from_secs(1);
                let mut state = MountState::started(self.mountpoint.clone(), "test".into(), poll);
                state.generation = generation;
                state.head = head;
                state.poll_succeeded();
                state.updated_ms = now_ms();
                state
            })
            .unwrap();
        std::fs::set_permissions(
            states.path(&self.mountpoint),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
    }

    fn start(&mut self, world: &World, args: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        std::fs::set_permissions(&self.log, std::fs::Permissions::from_mode(0o666)).unwrap();
        let standin = world.dir.path().join("scheduler.sh");
        let mut command = Command::new(dagfs_exe());
        command
            .args(["failover", "--store", &world.url, "--id", &self.name])
            .arg("--mount")
            .arg(&self.mountpoint)
            .arg("--run")
            .arg(format!(
                "{} {} {}",
                standin.display(),
                self.name,
                args.join(" ")
            ))
            .arg(if self.all_active {
                "--all-active"
            } else {
                "--single-active"
            })
            .env_remove("DAGFS_CONFIG")
            // No metadata database unless a trial names one: not this machine's ~/airflow.
            .env("AIRFLOW_HOME", self.runtime.join("no-airflow"))
            .env_remove("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
            .env("DAGFS_RUNTIME_DIR", &self.runtime)
            .env("DAGFS_STORE_USER", superuser())
            .env("DAGFS_STORE_TIMEOUT", "2s")
            .env("DAGFS_FAILOVER_INTERVAL", "1s")
            .env("DAGFS_FAILOVER_FENCE_AFTER", "3s")
            .env("DAGFS_FAILOVER_KILL_GRACE", "1s")
            .env("DAGFS_FAILOVER_SAFETY_MARGIN", "1s")
            .env("DAGFS_FAILOVER_TAKEOVER_AFTER", "5s")
            .env("DAGFS_LOG_LEVEL", "info,hdfs_native=warn")
            .envs(self.extra.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(uid) = self.uid {
            command.uid(uid).gid(uid);
        }
        self.child = Some(command.spawn().expect("start dagfs failover"));
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Sends `signal` to the controller and every process below it (guards, the unit): the
    /// whole tree, as a frozen host would be.
    fn signal_tree(&self, signal: &str) {
        let root = self.pid() as u32;
        let mut pids = vec![root];
        pids.extend(dagfs::proc::descendants(root).iter().map(|p| p.pid));
        // One kill(1) for all, so they stop and resume together. A short-lived descendant (a
        // health check, the stand-in's `sleep`) may exit between the listing and the signal,
        // which fails kill(1) without harm: only the root must have been signalled.
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .args(pids.iter().map(u32::to_string))
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(
            dagfs::proc::process(root).is_some_and(|p| !p.zombie),
            "the controller {root} is gone"
        );
    }

    fn kill9(&mut self) {
        self.signal("KILL");
        self.child.take().unwrap().wait().unwrap();
    }

    fn state(&self) -> Option<ControllerState> {
        ControllerState::read_all(&self.runtime)
            .ok()?
            .into_iter()
            .find(|s| s.pid == self.pid() as u32)
    }

    fn role(&self) -> Option<Role> {
        self.state().map(|s| s.role)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }
}

/// Cuts processes of one uid off the network (NameNode and DataNode alike) with an nftables
/// rule on the output hook; loopback traffic passes the same hook.
struct Partition {
    table: String,
}

impl Partition {
    fn new(uid: u32) -> Partition {
        let table = format!("dagfs_test_{uid}_{}", std::process::id());
        nft(&["add", "table", "inet", &table]);
        nft(&[
            "add",
            "chain",
            "inet",
            &table,
            "out",
            "{ type filter hook output priority 0; }",
        ]);
        Partition { table }
    }

    /// Drops what `uid` sends: everything, or only what goes to TCP `port`.
    fn cut(&self, uid: u32, port: Option<u16>) {
        let uid = uid.to_string();
        let port = port.map(|p| p.to_string());
        let mut rule = vec![
            "add",
            "rule",
            "inet",
            &self.table,
            "out",
            "meta",
            "skuid",
            &uid,
        ];
        if let Some(port) = &port {
            rule.extend(["tcp", "dport", port]);
        }
        rule.push("drop");
        nft(&rule);
    }

    fn heal(&self) {
        nft(&["flush", "chain", "inet", &self.table, "out"]);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

fn nft(args: &[&str]) {
    // nftables comes from scripts/install-deps; the partition tests run as root.
    run(Command::new("nft").args(args));
}

/// A small deterministic generator for the trials (seeded, printed, reproducible).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn kill_9_of_the_leader_hands_over_within_takeover_plus_one_interval() {
    let _serial = serial();
    let world = World::new("kill9");
    let mut a = world.host("a", None, &[]);
    let mut b = world.host("b", None, &[]);
    world.lead_then_follow(&mut a, &mut b, &[]);
    let killed = now_secs();
    a.kill9();
    let started = world.wait_start("b", 1, Duration::from_secs(30));
    let took = started - killed;
    eprintln!("takeover after kill -9: {took:.2} s");
    assert!(
        took <= (TAKEOVER_AFTER + INTERVAL).as_secs_f64() + 1.0,
        "takeover took {took:.2} s; b's log:\n{}",
        b.log()
    );
    let state = b.state().unwrap();
    assert_eq!(state.role, Role::Running);
    assert!(state.epoch > Some(1), "a new epoch: {state:?}");
    assert_eq!(state.generation, Some(1));
    world.assert_no_overlap();
}

#[test]
fn sigterm_on_the_leader_hands_over_without_waiting_for_the_timeout() {
    let _serial = serial();
    let world = World::new("sigterm");
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (metrics_a, metrics_b) = (port().to_string(), port().to_string());
    let mut a = world.host("a", None, &[("DAGFS_FAILOVER_METRICS", &metrics_a)]);
    let mut b = world.host("b", None, &[("DAGFS_FAILOVER_METRICS", &metrics_b)]);
    world.lead_then_follow(&mut a, &mut b, &[]);
    // Each controller's /metrics parses as Prometheus text and says who leads.
    let (leader, standby) = (
        support::scrape_metrics(&metrics_a),
        support::scrape_metrics(&metrics_b),
    );
    assert_eq!(
        leader.get("dagfs_failover_leader"),
        Some(&1.0),
        "{leader:?}"
    );
    assert_eq!(
        leader.get("dagfs_failover_running"),
        Some(&1.0),
        "{leader:?}"
    );
    assert_eq!(leader.get("dagfs_failover_epoch"), Some(&1.0), "{leader:?}");
    assert_eq!(
        standby.get("dagfs_failover_leader"),
        Some(&0.0),
        "{standby:?}"
    );
    let stopped = now_secs();
    a.signal("TERM");
    let status = a.child.take().unwrap().wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", a.log());
    let started = world.wait_start("b", 1, Duration::from_secs(30));
    // A released chain is taken over at the standby's next look, not after takeover_after.
    assert!(
        started - stopped < TAKEOVER_AFTER.as_secs_f64(),
        "handover took {:.2} s",
        started - stopped
    );
    assert!(world.witness().contains("stop a"), "{}", world.witness());
    world.assert_no_overlap();
}

#[test]
fn a_leader_cut_off_from_hdfs_or_paused_fences_itself_before_a_standby_starts() {
    let _serial = serial();
    let world = World::new("partition");
    let (uid_a, uid_b) = (61_001, 61_002);
    let partition = Partition::new(uid_a);
    let mut hosts = [
        world.host("a", Some(uid_a), &[]),
        world.host("b", Some(uid_b), &[]),
    ];
    hosts[0].start(&world, &[]);
    world.wait_start("a", 1, Duration::from_secs(60));
    hosts[1].start(&world, &[]);
    outage_trials(&world, &hosts, &partition, None, "DAGFS_PARTITION", 20);
    world.assert_no_overlap();
    let moved = world
        .starts()
        .windows(2)
        .filter(|w| w[0].0 != w[1].0)
        .count();
    assert!(moved > 0, "leadership never moved:\n{}", world.witness());
}

#[test]
fn a_scheduler_that_crashes_at_start_moves_leadership_and_its_host_cools_down() {
    let _serial = serial();
    let world = World::new("crash");
    let limits = [
        ("DAGFS_FAILOVER_RESTART_LIMIT", "2"),
        ("DAGFS_FAILOVER_RESTART_BACKOFF", "100ms"),
        ("DAGFS_FAILOVER_COOLDOWN", "60s"),
    ];
    let mut a = world.host("a", None, &limits);
    let mut b = world.host("b", None, &limits);
    a.start(&world, &["crash"]);
    // K = 2 restarts: three starts on a, then a steps down and b (released to) takes over.
    world.wait_start("a", 3, Duration::from_secs(60));
    b.start(&world, &[]);
    world.wait_start("b", 1, Duration::from_secs(30));
    world.wait_for("a to cool down", Duration::from_secs(10), || {
        a.role() == Some(Role::CoolingDown)
    });
    assert_eq!(world.starts().iter().filter(|(h, _)| h == "a").count(), 3);
    assert!(a
        .state()
        .unwrap()
        .last_error
        .unwrap()
        .contains("stepped down"));
    // b dies; a, cooling down, must not take leadership back.
    b.kill9();
    let silent_until = Instant::now() + TAKEOVER_AFTER + 3 * INTERVAL;
    while Instant::now() < silent_until {
        assert_eq!(a.role(), Some(Role::CoolingDown), "{}", a.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(world.starts().iter().filter(|(h, _)| h == "a").count(), 3);
    world.assert_no_overlap();
}

#[test]
fn a_host_whose_mount_lags_does_not_start_the_scheduler() {
    let _serial = serial();
    let world = World::new("gate");
    let dags = world.dir.path().join("dags");
    std::fs::write(dags.join("dag.py"), "# generation 2\n").unwrap();
    world.push(&dags);
    let mut a = world.host("a", None, &[]);
    // The mount still serves generation 1 (it saw 2, but has not switched yet).
    a.set_mount(Some(1), Some(2));
    a.start(&world, &[]);
    world.wait_for("a to stay standby", Duration::from_secs(30), || {
        a.state().is_some_and(|s| {
            s.role == Role::Standby
                && s.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("serves generation 1 but its head is 2"))
        })
    });
    // A mount that says it is current but serves an old head is caught against the store:
    // a takes leadership but waits.
    a.set_mount(Some(1), Some(1));
    world.wait_for(
        "a to lead and wait for its mount",
        Duration::from_secs(30),
        || {
            a.state().is_some_and(|s| {
                s.role == Role::WaitingForMount
                    && s.last_error
                        .as_deref()
                        .is_some_and(|e| e.contains("store's head is 2"))
            })
        },
    );
    std::thread::sleep(3 * INTERVAL);
    assert!(world.starts().is_empty(), "{}", world.witness());
    assert_eq!(a.role(), Some(Role::WaitingForMount));
    // Once the mount serves the head, the scheduler starts, and the generation is recorded.
    a.set_mount(Some(2), Some(2));
    world.wait_start("a", 1, Duration::from_secs(10));
    world.wait_for("a to record generation 2", Duration::from_secs(5), || {
        a.state().is_some_and(|s| s.generation == Some(2))
    });
    // `dagfs status` on that host shows the controller, its role and epoch.
    let status = Command::new(env!("CARGO_BIN_EXE_dagfs"))
        .arg("status")
        .env_remove("DAGFS_CONFIG")
        .env("DAGFS_RUNTIME_DIR", &a.runtime)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(
        shown.contains("failover") && shown.contains("running") && shown.contains("epoch 1"),
        "{shown}{}",
        String::from_utf8_lossy(&status.stderr)
    );
}

#[test]
fn all_active_runs_on_every_host_whose_mount_is_current() {
    let _serial = serial();
    let world = World::new("all-active");
    let mut a = world.host("a", None, &[]);
    let mut b = world.host("b", None, &[]);
    b.set_mount(Some(1), Some(2));
    for host in [&mut a, &mut b] {
        host.all_active = true;
        host.start(&world, &["shared"]);
    }
    world.wait_start("a", 1, Duration::from_secs(60));
    world.wait_for("b to wait for its mount", Duration::from_secs(30), || {
        b.role() == Some(Role::WaitingForMount)
    });
    assert_eq!(
        a.state().unwrap().epoch,
        None,
        "no election in --all-active"
    );
    b.set_mount(Some(1), Some(1));
    world.wait_start("b", 1, Duration::from_secs(30));
    assert_eq!(a.role(), Some(Role::Running));
}

/// `GET path` on 127.0.0.1:`port`, the body; `None` on any failure.
fn http_get(port: u16, path: &str) -> Option<String> {
    support::http_get(&format!("127.0.0.1:{port}"), path).map(|(_, body)| body)
}

/// The NameNode's count of client RPCs processed, from its JMX servlet. The launcher does not
/// print its web port, so every port the MiniDFS JVM (a child of this process) listens on is
/// asked for the NameNode's `RpcActivityForPort<rpc port>` bean.
struct NameNodeRpcs {
    port: u16,
    query: String,
}

impl NameNodeRpcs {
    fn find(cluster: &MiniDfs) -> NameNodeRpcs {
        let rpc_port = cluster.url().rsplit(':').next().unwrap().to_string();
        let query = format!("/jmx?qry=Hadoop:service=NameNode,name=RpcActivityForPort{rpc_port}");
        let out = Command::new("ss").args(["-ltnpH"]).output().expect("ss");
        let me = std::process::id().to_string();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(pid) = line.split("pid=").nth(1).and_then(|p| p.split(',').next()) else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .nth(1);
            if ppid != Some(me.as_str()) {
                continue;
            }
            let Some(port) = line
                .split_whitespace()
                .nth(3)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
            else {
                continue;
            };
            let found = NameNodeRpcs {
                port,
                query: query.clone(),
            };
            if found.count().is_some() {
                return found;
            }
        }
        panic!("no NameNode JMX servlet found among the MiniDFS JVM's ports");
    }

    fn count(&self) -> Option<u64> {
        let body = http_get(self.port, &self.query)?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        json["beans"][0]["RpcProcessingTimeNumOps"].as_u64()
    }

    /// NameNode RPCs per second over `window`.
    fn rate(&self, window: Duration) -> f64 {
        let before = self.count().unwrap();
        std::thread::sleep(window);
        let after = self.count().unwrap();
        (after - before) as f64 / window.as_secs_f64()
    }
}

/// Settings for a 10 s interval (the defaults).
const DEFAULT_TIMING: [(&str, &str); 5] = [
    ("DAGFS_FAILOVER_INTERVAL", "10s"),
    ("DAGFS_FAILOVER_FENCE_AFTER", "20s"),
    ("DAGFS_FAILOVER_KILL_GRACE", "5s"),
    ("DAGFS_FAILOVER_SAFETY_MARGIN", "2s"),
    ("DAGFS_FAILOVER_TAKEOVER_AFTER", "27s"),
];

/// Takeover times after kill -9 and NameNode RPC rates of idle controllers, for
/// BENCHMARKS.md: `cargo test --release --test failover_hdfs -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark (about 6 minutes): run with --ignored --nocapture"]
fn bench_takeover_time_and_idle_rpc_rate() {
    let _serial = serial();
    for (label, timing, rounds, window) in BENCH_TIMINGS {
        let world = World::new("bench");
        let rpcs = NameNodeRpcs::find(world.cluster);
        let rate = |window| rpcs.rate(window);
        let label = format!("NameNode (RPCs), interval {label}");
        bench_takeover(&world, &label, timing, rounds, window, &rate);
    }
}

/// Settings given to the controllers, as environment variables.
type Settings = &'static [(&'static str, &'static str)];

/// The timings the benchmarks run at: label, settings, kill -9 rounds, rate window.
const BENCH_TIMINGS: [(&str, Settings, usize, Duration); 2] = [
    ("1s", &[], 3, Duration::from_secs(20)),
    ("10s", &DEFAULT_TIMING, 2, Duration::from_secs(60)),
];

/// One benchmark round on `world` with `env`: the load (`rate` over a window, per second)
/// an idle leader and an idle standby add, then `rounds` takeovers after kill -9, timed.
fn bench_takeover(
    world: &World,
    label: &str,
    env: &[(&str, &str)],
    rounds: usize,
    window: Duration,
    rate: &dyn Fn(Duration) -> f64,
) {
    let baseline = rate(window);
    let mut hosts = [world.host("a", None, env), world.host("b", None, env)];
    hosts[0].start(world, &[]);
    world.wait_start("a", 1, Duration::from_secs(120));
    let leader_rate = rate(window) - baseline;
    hosts[1].start(world, &[]);
    world.wait_for("b to follow", Duration::from_secs(60), || {
        hosts[1].state().and_then(|s| s.leader).is_some()
    });
    let standby_rate = rate(window) - baseline - leader_rate;
    eprintln!(
        "{label}: per second: baseline {baseline:.2}, leader +{leader_rate:.2}, standby +{standby_rate:.2}"
    );
    let mut leader = 0;
    for round in 0..rounds {
        let standby = 1 - leader;
        let name = hosts[standby].name.clone();
        let before = world.starts().iter().filter(|(h, _)| *h == name).count();
        let killed = now_secs();
        hosts[leader].kill9();
        let started = world.wait_start(&name, before + 1, Duration::from_secs(180));
        eprintln!(
            "{label}: takeover {round}: {:.2} s after kill -9",
            started - killed
        );
        hosts[leader].start(world, &[]);
        world.wait_for(
            "the restarted host to follow",
            Duration::from_secs(60),
            || hosts[leader].state().and_then(|s| s.leader).is_some(),
        );
        leader = standby;
    }
    world.assert_no_overlap();
}

/// Bug 1 of the failover-safety issue, the operator's way: `failover/beats` emptied while a
/// leader runs and a standby follows. The old protocol let the standby win the deleted names
/// and both ran, without end. Now nobody takes over early, the leader cannot renew into a
/// chain it no longer recognises, and one host leads again.
#[test]
fn emptying_the_heartbeats_never_runs_two_units() {
    let _serial = serial();
    let world = World::new("emptied");
    let mut a = world.host("a", None, &[]);
    let mut b = world.host("b", None, &[]);
    world.lead_then_follow(&mut a, &mut b, &[]);
    for round in 0..2 {
        let out = world.cluster.hadoop_fs(&[
            "-rm",
            "-r",
            "-skipTrash",
            &format!("{}/failover/beats", world.url),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let emptied = now_ms();
        // Watch for three takeover timeouts: never two at once, and one leads again.
        world.watch_no_overlap(3 * TAKEOVER_AFTER);
        world.wait_for("one leader again", Duration::from_secs(30), || {
            [&a, &b].iter().any(|h| {
                h.state()
                    .is_some_and(|s| s.role == Role::Running && s.updated_ms > emptied)
            })
        });
        eprintln!("round {round}: witness so far:\n{}", world.witness());
    }
    world.assert_no_overlap();
}

/// Bug 2: settings differ across hosts (a rolling change). The leader renews every 5 s with
/// a 10 s lease; the standby's own takeover_after is 4 s. The old protocol let the standby
/// take over between two renewals; now it waits for the leader's advertised lease + grace +
/// its own margin, and takes over only when the leader really is gone.
#[test]
fn mixed_timings_across_hosts_never_run_two_units() {
    let _serial = serial();
    let world = World::new("mixed");
    let slow = [
        ("DAGFS_FAILOVER_INTERVAL", "5s"),
        ("DAGFS_FAILOVER_FENCE_AFTER", "10s"),
        ("DAGFS_FAILOVER_KILL_GRACE", "1s"),
        ("DAGFS_FAILOVER_SAFETY_MARGIN", "1s"),
        ("DAGFS_FAILOVER_TAKEOVER_AFTER", "12s"),
    ];
    let fast = [
        ("DAGFS_FAILOVER_INTERVAL", "1s"),
        ("DAGFS_FAILOVER_FENCE_AFTER", "2s"),
        ("DAGFS_FAILOVER_KILL_GRACE", "1s"),
        ("DAGFS_FAILOVER_SAFETY_MARGIN", "1s"),
        ("DAGFS_FAILOVER_TAKEOVER_AFTER", "4s"),
    ];
    let mut a = world.host("a", None, &slow);
    let mut b = world.host("b", None, &fast);
    a.start(&world, &[]);
    world.wait_start("a", 1, Duration::from_secs(60));
    b.start(&world, &[]);
    world.watch_no_overlap(Duration::from_secs(25));
    assert!(
        !world.starts().iter().any(|(h, _)| h == "b"),
        "b took over from a healthy leader:\n{}",
        world.witness()
    );
    // The leader really goes: b takes over after a's lease + grace + b's margin (12 s).
    let killed = now_secs();
    a.kill9();
    let started = world.wait_start("b", 1, Duration::from_secs(40));
    eprintln!("takeover with mixed timings: {:.2} s", started - killed);
    world.assert_no_overlap();
}

/// The leader's whole process tree (controller, guards, unit) stopped past takeover_after,
/// as a frozen host would be, then resumed. The unit ignores SIGTERM. The standby takes
/// over meanwhile; on resume the old unit may execute for at most one guard tick before its
/// guard kills it: its kill deadline counts from the lease, not from when the guard noticed
/// (bug 3 gave it a fresh kill_grace while the new leader ran).
#[test]
fn a_leader_stopped_whole_and_resumed_is_killed_within_one_guard_tick() {
    let _serial = serial();
    let world = World::new("sigstop-tree");
    let grace = [
        ("DAGFS_FAILOVER_KILL_GRACE", "3s"),
        ("DAGFS_FAILOVER_TAKEOVER_AFTER", "7s"),
    ];
    let mut a = world.host("a", None, &grace);
    let mut b = world.host("b", None, &grace);
    world.lead_then_follow(&mut a, &mut b, &["tick"]);
    a.signal_tree("STOP");
    world.wait_start("b", 1, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    let resumed = now_secs();
    a.signal_tree("CONT");
    std::thread::sleep(Duration::from_secs(5));
    let overlap = world.longest_overlap();
    eprintln!(
        "stretches: {:?}; longest overlap {overlap:.3} s after resuming at {resumed:.3}",
        world.stretches()
    );
    // One guard tick (0.1 s) plus the stand-in's own tick (0.05 s) and scheduling slack.
    assert!(
        overlap <= 0.5,
        "the resumed unit ran {overlap:.3} s beside the new leader's\n{}",
        world.logs()
    );
    assert!(world
        .stretches()
        .iter()
        .any(|(h, _, end)| h == "b" && *end > resumed + 4.0));
}

/// Issue 16: with `failover.coordinator = "database"` (the lease in a PostgreSQL, as
/// Airflow's metadata database) a leader cut off from HDFS but not from the database keeps
/// its unit alive, and the standby does not take over. With the store coordinator the same
/// cut fences the leader (`a_leader_cut_off_from_hdfs_or_paused_fences_itself_...`);
/// `DAGFS_TEST_COORDINATOR=store` runs this test with it, and watches it fail.
#[test]
fn a_database_coordinated_leader_keeps_its_unit_through_an_hdfs_outage() {
    let _serial = serial();
    let world = World::new("db-hdfs-outage");
    let server = Server::start(Kind::Postgres);
    let url = server.sqlalchemy_url();
    let coordinator = std::env::var("DAGFS_TEST_COORDINATOR").unwrap_or_else(|_| "database".into());
    let env = [
        ("DAGFS_FAILOVER_COORDINATOR", coordinator.as_str()),
        ("DAGFS_DATABASE_URL", url.as_str()),
    ];
    let (uid_a, uid_b) = (61_003, 61_004);
    let partition = Partition::new(uid_a);
    let mut a = world.host("a", Some(uid_a), &env);
    let mut b = world.host("b", Some(uid_b), &env);
    world.lead_then_follow(&mut a, &mut b, &[]);
    assert!(a.log().contains("failover lease in the metadata database") || coordinator == "store");
    // Everything but the database is cut: HDFS is unreachable for the leader.
    nft(&[
        "add",
        "rule",
        "inet",
        &partition.table,
        "out",
        "meta",
        "skuid",
        &uid_a.to_string(),
        "tcp",
        "dport",
        "!=",
        &server.port.to_string(),
        "drop",
    ]);
    let outage = TAKEOVER_AFTER * 3;
    let until = Instant::now() + outage;
    while Instant::now() < until {
        assert_eq!(
            a.role(),
            Some(Role::Running),
            "the leader stopped during an HDFS outage:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    partition.heal();
    let starts = world.starts();
    assert_eq!(starts.len(), 1, "{}", world.witness());
    assert!(!world.witness().contains("stop a"), "{}", world.witness());
    world.assert_no_overlap();
}

/// Statements a PostgreSQL database has run (committed transactions: every statement of the
/// database coordinator autocommits), sampled from `pg_stat_database`.
fn committed(server: &Server) -> f64 {
    // The statistics are flushed by each backend at most once a second.
    server
        .admin(
            "postgres",
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'airflow'",
        )
        .parse()
        .unwrap()
}

fn statement_rate(server: &Server, window: Duration) -> f64 {
    let before = committed(server);
    std::thread::sleep(window);
    (committed(server) - before) / window.as_secs_f64()
}

/// BENCHMARKS.md, the database coordinator on PostgreSQL: takeover after kill -9 at the 1 s
/// and the default timing, and statements per second of an idle leader and standby.
/// `cargo test --release --test failover_hdfs -- --ignored --nocapture bench_database`.
#[test]
#[ignore = "benchmark (about 5 minutes): run with --ignored --nocapture"]
fn bench_database_coordinator_takeover_time_and_idle_query_rate() {
    let _serial = serial();
    for (label, timing, rounds, window) in BENCH_TIMINGS {
        let world = World::new("bench-db");
        let server = Server::start(Kind::Postgres);
        let url = server.sqlalchemy_url();
        let mut env = vec![
            ("DAGFS_FAILOVER_COORDINATOR", "database"),
            ("DAGFS_DATABASE_URL", url.as_str()),
        ];
        env.extend_from_slice(timing);
        let rate = |window| statement_rate(&server, window);
        let label = format!("database (statements), interval {label}");
        bench_takeover(&world, &label, &env, rounds, window, &rate);
    }
}

/// Issue 16, the database coordinator on a real server (`kind`): kill -9 of the leader, then
/// randomized trials cutting the leader's uid off the database port alone (nftables), every
/// fourth pausing its controller (SIGSTOP) instead: never two units alive. Trials:
/// `DAGFS_DB_TRIALS` (default 4; run 20 or more by hand), `DAGFS_DB_SEED` replays.
fn database_coordinator_trials(kind: Kind, uids: [u32; 2]) {
    let _serial = serial();
    let world = World::new(&format!("db-trials-{kind:?}"));
    let server = Server::start(kind);
    let url = server.sqlalchemy_url();
    let env = [
        ("DAGFS_FAILOVER_COORDINATOR", "database"),
        ("DAGFS_DATABASE_URL", url.as_str()),
    ];
    let partition = Partition::new(uids[0]);
    let mut hosts = [
        world.host("a", Some(uids[0]), &env),
        world.host("b", Some(uids[1]), &env),
    ];
    {
        let [a, b] = &mut hosts;
        world.lead_then_follow(a, b, &[]);
    }
    let killed = now_secs();
    hosts[0].kill9();
    let took = world.wait_start("b", 1, Duration::from_secs(30)) - killed;
    eprintln!("{kind:?}: takeover after kill -9: {took:.2} s");
    assert!(
        took <= (TAKEOVER_AFTER + INTERVAL).as_secs_f64() + 1.0,
        "{took:.2} s"
    );
    hosts[0].start(&world, &[]);
    world.wait_for("a to follow b", Duration::from_secs(30), || {
        hosts[0]
            .state()
            .and_then(|s| s.leader)
            .is_some_and(|l| l.id == "b")
    });
    outage_trials(&world, &hosts, &partition, Some(server.port), "DAGFS_DB", 4);
}

/// Randomized trials against the leader of `hosts`, `{env}_TRIALS` of them (else
/// `default_trials`), seeded by `{env}_SEED` (else the clock; printed, so a failure replays):
/// at a random point of the heartbeat cycle the leader's uid is cut off (from everything, or
/// from `port` alone) for 1 to 7 s, or, every fourth trial, its controller is paused
/// (SIGSTOP) instead. Never two units alive, and a leader again after each trial.
fn outage_trials(
    world: &World,
    hosts: &[Host; 2],
    partition: &Partition,
    port: Option<u16>,
    env: &str,
    default_trials: u64,
) {
    let number = |name: String, default: u64| {
        std::env::var(&name).ok().map_or(default, |v| {
            v.parse().unwrap_or_else(|_| panic!("{name} is a number"))
        })
    };
    let trials = number(format!("{env}_TRIALS"), default_trials);
    let seed = number(format!("{env}_SEED"), now_secs() as u64);
    eprintln!("{trials} outage trials, seed {seed} ({env}_SEED={seed} replays)");
    let mut random = Lcg(seed);
    for trial in 0..trials {
        let leader = hosts
            .iter()
            .position(|h| h.role() == Some(Role::Running))
            .unwrap_or_else(|| panic!("no leader before trial {trial}\n{}", world.logs()));
        std::thread::sleep(Duration::from_millis(random.below(1000)));
        let outage = Duration::from_millis(1_000 + random.below(6_000));
        let pause = trial % 4 == 3;
        if pause {
            hosts[leader].signal("STOP");
        } else {
            partition.cut(
                hosts[leader].uid.expect("trial hosts run as their own uid"),
                port,
            );
        }
        std::thread::sleep(outage);
        if pause {
            hosts[leader].signal("CONT");
        } else {
            partition.heal();
        }
        let healed_ms = now_ms();
        world.assert_no_overlap();
        // Someone leads again (the old leader after a short outage, or the standby), as
        // its state written after the outage says.
        world.wait_for("a leader after the outage", Duration::from_secs(30), || {
            hosts.iter().any(|h| {
                h.state()
                    .is_some_and(|s| s.role == Role::Running && s.updated_ms > healed_ms)
            })
        });
        let now_leading = hosts
            .iter()
            .find(|h| h.role() == Some(Role::Running))
            .map_or("?", |h| &h.name);
        eprintln!(
            "trial {trial}: {} {} for {:.1} s, leader now {now_leading}",
            if pause { "paused" } else { "cut off" },
            hosts[leader].name,
            outage.as_secs_f64(),
        );
    }
    world.assert_no_overlap();
}

#[test]
fn database_coordinator_on_postgres_survives_kill_partitions_and_pauses() {
    database_coordinator_trials(Kind::Postgres, [61_005, 61_006]);
}

#[test]
fn database_coordinator_on_mariadb_survives_kill_partitions_and_pauses() {
    database_coordinator_trials(Kind::MariaDb, [61_007, 61_008]);
}
