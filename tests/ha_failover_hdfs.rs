//! NameNode HA failover during every protocol step, with real processes: `dagfs sync`
//! publishes edits (objects, staged manifest, commit, mirror), `dagfs gc --keep 2` runs race
//! them, a mount follows (polls, fetches) and a failover controller renews its lease while a
//! second host's controller (its own mount, `--id b`) stands by, while the NameNodes of an
//! HA MiniDFS swap roles (`transitionToStandby` / `transitionToActive`) at seeded random
//! points. In rounds 2, 12, ... the leading controller is paused (SIGSTOP) until the other
//! host takes over, so takeovers and claims land among the NameNode transitions.
//!
//! Between failovers the cluster stays up for 1.5-3 s (a failover storm longer than
//! `failover.fence_after` is an outage, after which the unit restarts by design).
//!
//! gc runs in every round, keeping 2 generations with no grace period, so manifests and
//! packs are really retired while the NameNodes change roles. The test reads every
//! generation before the gc run that could retire it starts (see `record`), so the whole
//! history is checked afterwards: the generations are numbered without a gap, each one's
//! parent is the one before and its tree differs from its parent's in some entry's content,
//! size, mode or mtime (sync never publishes an unchanged tree: a generation repeating its
//! parent is a duplicate publish); every edit was
//! introduced by exactly one generation and is in the head; every generation still there
//! is complete (`dagfs verify --deep`: each manifest valid, each object present with its
//! bytes); the mount serves the head; never two units alive at once (the stand-in units
//! share a lock), every pause ended in a takeover, and the unit started once plus once per
//! takeover (no NameNode failover restarted it). A racing gc run may
//! fail only with a transient store error (`store unavailable`, `timed out`). Commits whose
//! answer was lost are read back (DESIGN, publish step 6); the sync log's
//! `ambiguous commit resolved by reading it back` lines (ours / another's) and
//! `commit outcome unknown` lines (the read-back itself failed; retried) are counted and
//! printed.
//!
//! `DAGFS_HA_FAILOVERS` sets the number of failovers (20 by default), `DAGFS_HA_SEED`
//! replays a run (the seed is printed).

mod support;

use std::collections::{btree_map, BTreeMap};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dagfs::format::Entry;
use dagfs::generations;
use dagfs::store::Store;
use rustix::process::Signal;
use support::host::{failover_command, stand_in_unit, until, write, Daemon, Host, DEADLINE};
use support::minidfs::{MiniDfs, MiniDfsOptions};
use support::mount::{dagfs, Folders, Mount};

/// How long a paused leader may wait for the other host to take over.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(40);

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
    })
}

/// The host whose unit started last: the leader.
fn leader(host: &Host) -> String {
    host.unit_log()
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("start "))
        .expect("a unit started")
        .to_string()
}

/// A committed generation as the test read it.
struct Generation {
    parent: Option<u64>,
    /// path -> entry (digest, size, mode, mtime).
    tree: BTreeMap<String, Entry>,
}

/// Reads every generation of `store` that is not in `seen` yet, retrying through failovers
/// until [`DEADLINE`]. No gc run may be running: it could retire one between the listing
/// and the read.
fn record(
    runtime: &tokio::runtime::Runtime,
    store: &dyn Store,
    seen: &mut BTreeMap<u64, Generation>,
) {
    let end = Instant::now() + DEADLINE;
    loop {
        let read = runtime.block_on(async {
            for g in generations::list(store).await? {
                if let btree_map::Entry::Vacant(slot) = seen.entry(g) {
                    let manifest = generations::load(store, g).await?;
                    let tree = manifest
                        .entries
                        .iter()
                        .map(|e| (e.path.clone(), e.clone()))
                        .collect();
                    slot.insert(Generation {
                        parent: manifest.parent,
                        tree,
                    });
                }
            }
            Ok::<_, Box<dyn std::error::Error>>(())
        });
        match read {
            Ok(()) => return,
            Err(e) => assert!(Instant::now() < end, "cannot read the generations: {e}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What the gc runs did, summed from their `--json` reports.
#[derive(Debug, Default)]
struct Retired {
    runs: usize,
    failed: Vec<String>,
    generations: usize,
    packs: usize,
    objects: usize,
    deferred: usize,
}

impl Retired {
    /// Waits for `child`, a `dagfs gc --json` run, and adds its report; a failure must be a
    /// transient store error (ErrorKind `Unavailable` or `Timeout`).
    fn add(&mut self, child: Child) {
        let out = child.wait_with_output().unwrap();
        self.runs += 1;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            assert!(
                stderr.contains("store unavailable") || stderr.contains("timed out"),
                "gc failed with more than a transient store error:\n{stderr}"
            );
            self.failed.push(stderr.trim().to_string());
            return;
        }
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("gc --json: {e}: {}", String::from_utf8_lossy(&out.stdout)));
        let count = |field: &str| report[field].as_u64().unwrap() as usize;
        self.generations += report["generations"].as_array().unwrap().len();
        self.packs += count("packs");
        self.objects += count("objects");
        self.deferred += count("deferred");
    }
}

#[test]
fn namenode_failovers_at_random_points_lose_and_duplicate_nothing() {
    let seed = env_number("DAGFS_HA_SEED").unwrap_or_else(|| fastrand::u64(..));
    let failovers = env_number("DAGFS_HA_FAILOVERS").unwrap_or(20);
    println!("seed {seed}, {failovers} failovers (replay: DAGFS_HA_SEED={seed})");
    let mut rng = fastrand::Rng::with_seed(seed);

    let cluster = MiniDfs::start(MiniDfsOptions {
        ha: true,
        ..MiniDfsOptions::default()
    });
    let folders = Folders::new();
    let (dags, mnt, run_dir, _) = folders.paths();
    write(&dags, "base.py", "print('base')\n");
    let url = cluster.unique_root("ha");
    // The default timings scaled down 5x (interval 2 s, fence_after 10 s): NameNode failovers
    // are not scaled, and one must stay well below fence_after (DESIGN, failover table).
    let timing = |command: &mut Command| {
        command
            .env("DAGFS_FAILOVER_INTERVAL", "2s")
            .env("DAGFS_FAILOVER_FENCE_AFTER", "10s")
            .env("DAGFS_FAILOVER_KILL_GRACE", "1s")
            .env("DAGFS_FAILOVER_SAFETY_MARGIN", "1s")
            .env("DAGFS_FAILOVER_TAKEOVER_AFTER", "12s");
    };
    let mut host = Host::start(&cluster, &folders, &url, &timing);
    host.edit_and_see("base.py", "print('base', 0)\n");
    host.wait_unit_started();

    // A second host: its own mount, and a controller (`--id b`) standing by for the same
    // unit. Its unit and host a's hold one lock: two alive at once would be logged.
    let run_b = folders.root.join("run-b");
    let mnt_b = folders.root.join("mnt-b");
    let _mount_b = Mount::start(
        &cluster,
        &run_b,
        &url,
        &mnt_b,
        &folders.root.join("cache-b"),
    );
    let unit_b = stand_in_unit(&folders.root, "b");
    let mut standby = failover_command(&cluster, &run_b, &url, &mnt_b, &unit_b, &timing);
    standby.args(["--id", "b"]);
    let mut failover_b = Daemon::start(standby, folders.root.join("failover-b.log"));
    let controller = |name: &str| {
        if name == "a" {
            &host.failover
        } else {
            &failover_b
        }
    };
    // (paused leader, since); (paused leader, whether the other host took over).
    let mut paused: Option<(String, Instant)> = None;
    let mut takeovers: Vec<(String, bool)> = Vec::new();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let options = cluster.options(None, Duration::from_secs(30));
    let store = runtime
        .block_on(dagfs::store::open(&url, &options))
        .unwrap();
    let mut seen = BTreeMap::new();
    // gc keeps the newest 2 generations and moves unreferenced objects and packs aside with
    // no grace period, which is safe by construction (DESIGN, garbage collection) even when
    // an answer is lost.
    let gc = || {
        let mut command = dagfs(
            &cluster,
            &run_dir,
            &[
                "gc", "--store", &url, "--keep", "2", "--grace", "0s", "--json",
            ],
        );
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        command
    };
    let mut racing = Retired::default();
    let started = Instant::now();
    let mut active = 0;
    for i in 0..failovers {
        // Rounds 2, 12, ...: the leading controller is paused (SIGSTOP, the controller
        // alone: its guards still fence its unit when its lease ends) until the other host
        // has started the unit, so the takeover and the claims around it land among
        // NameNode transitions.
        if let Some((who, since)) = paused.take() {
            let moved = leader(&host) != who;
            if moved || since.elapsed() > TAKEOVER_LIMIT {
                controller(&who).signal(Signal::CONT);
                takeovers.push((who, moved));
            } else {
                paused = Some((who, since));
            }
        } else if i % 10 == 2 {
            let who = leader(&host);
            controller(&who).signal(Signal::STOP);
            paused = Some((who, Instant::now()));
        }
        // One gc run per round, racing this round's publish and failover. Before it starts,
        // the previous one has ended and the test has read every generation: a generation
        // committed since is one of the newest 2 when this run lists them (one edit a round,
        // one publish each), so none is retired unread.
        record(&runtime, store.as_ref(), &mut seen);
        let running = gc().spawn().unwrap();
        // An edit: a new file, then a failover after a random delay: during the edit's scan,
        // object upload, staged manifest, commit or mirror update, the gc run's moves, the
        // mount's poll or fetch, or the controller's renewal.
        write(
            &dags,
            &format!("edits/e{i:03}.py"),
            &format!("print({i})\n"),
        );
        // Where the failover lands in the protocol; a delay that injects, not one that waits.
        std::thread::sleep(Duration::from_millis(rng.u64(0..1500)));
        cluster.transition_to_standby(active);
        active = 1 - active;
        cluster.transition_to_active(active);
        // Sometimes a change of base.py alone, just after the failover: a publish whose pack
        // holds only base.py, which the gc runs retire two such changes later.
        if rng.bool() {
            write(&dags, "base.py", &format!("print('base', {i})\n"));
        }
        // Failovers are rare events: a storm of them for longer than failover.fence_after is
        // an outage, after which the unit restarts by design (DESIGN, failover table).
        std::thread::sleep(Duration::from_millis(rng.u64(1500..3000)));
        racing.add(running);
    }
    if let Some((who, since)) = paused {
        let end = since + TAKEOVER_LIMIT;
        while leader(&host) == who && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
        }
        controller(&who).signal(Signal::CONT);
        takeovers.push((who.clone(), leader(&host) != who));
    }
    println!(
        "{failovers} failovers in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The pipeline still runs: a last edit reaches the mount.
    host.edit_and_see("final.py", "print('final')\n");
    // One more gc run with a stable cluster must succeed.
    record(&runtime, store.as_ref(), &mut seen);
    let mut last = Retired::default();
    last.add(gc().spawn().unwrap());
    assert!(last.failed.is_empty(), "gc: {:?}", last.failed);

    // The whole history: every number up to the head, read before any gc could retire it.
    let head = *seen.keys().last().unwrap();
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (1..=head).collect::<Vec<_>>(),
        "a gap in the generations"
    );
    let empty = BTreeMap::new();
    let tree = |g: u64| seen.get(&g).map_or(&empty, |generation| &generation.tree);
    for (&g, generation) in &seen {
        assert_eq!(generation.parent, (g > 1).then(|| g - 1), "generation {g}");
        assert_ne!(
            generation.tree,
            *tree(g - 1),
            "generation {g} repeats its parent's tree: a duplicate publish"
        );
    }
    for i in 0..failovers {
        let path = format!("edits/e{i:03}.py");
        let introduced: Vec<u64> = (1..=head)
            .filter(|&g| tree(g).contains_key(&path) && !tree(g - 1).contains_key(&path))
            .collect();
        assert_eq!(
            introduced.len(),
            1,
            "{path} introduced by generations {introduced:?}"
        );
        assert!(tree(head).contains_key(&path), "{path} lost");
    }
    // gc kept the newest two.
    let remaining = runtime.block_on(generations::list(store.as_ref())).unwrap();
    assert_eq!(remaining, vec![head - 1, head], "after gc --keep 2");
    // Every generation still there complete: manifests valid, every object present with its
    // bytes; and the mirror, updated in the background after each commit, catches up with
    // the head.
    let end = Instant::now() + DEADLINE;
    loop {
        let verify = dagfs(&cluster, &run_dir, &["verify", "--store", &url, "--deep"])
            .output()
            .unwrap();
        if verify.status.success() {
            break;
        }
        assert!(
            Instant::now() < end,
            "verify never passed: {}{}\nsync log:\n{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr),
            host.sync.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The mount serves the head, byte for byte.
    let state = host
        .mount()
        .wait_for("the head", |s| s.generation == Some(head));
    assert!(state.online, "{state:?}");
    let local = dags.clone();
    until("the mount to equal the folder", || {
        let same = walkdir::WalkDir::new(&local)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
            .all(|e| {
                let rel = e.path().strip_prefix(&local).unwrap();
                std::fs::read(e.path()).ok() == std::fs::read(mnt.join(rel)).ok()
            });
        same.then_some(())
    });
    host.sync.assert_running();
    host.failover.assert_running();
    failover_b.assert_running();
    // Never two units alive at once; every takeover happened; and the unit started again
    // only on the other host after a takeover: no NameNode failover restarted it.
    let units = host.unit_log();
    let logs = || format!("a:\n{}\nb:\n{}", host.failover.log(), failover_b.log());
    assert!(
        !units.iter().any(|l| l.starts_with("OVERLAP")),
        "two units alive at once: {units:?}\n{}",
        logs()
    );
    for (who, moved) in &takeovers {
        assert!(
            moved,
            "host {who}'s controller was paused for {TAKEOVER_LIMIT:?} and nobody took over: \
             {units:?}\n{}",
            logs()
        );
    }
    assert!(
        units.windows(2).all(|w| w[0] != w[1]),
        "the unit restarted without a takeover: {units:?}\n{}",
        logs()
    );
    assert_eq!(units.len(), takeovers.len() + 1, "{units:?}\n{}", logs());
    // gc really retired generations while the NameNodes changed roles.
    if failovers >= 4 {
        assert!(racing.generations > 0, "{racing:?}");
    }
    let log = host.sync.log();
    let resolved = "ambiguous commit resolved by reading it back";
    let ours = log
        .lines()
        .filter(|l| l.contains(resolved) && l.contains("ours=true"))
        .count();
    let theirs = log
        .lines()
        .filter(|l| l.contains(resolved) && l.contains("ours=false"))
        .count();
    let unknown = log.matches("commit outcome unknown").count();
    let leaked_pins = log.matches("could not remove the publish pin").count();
    println!(
        "{head} generations; commits with a lost answer, read back: {ours} ours, {theirs} \
         another's; {unknown} read-back(s) failed and retried; {leaked_pins} pin(s) not \
         released"
    );
    println!("unit starts: {units:?} ({} takeovers)", takeovers.len());
    println!(
        "gc during failovers: {} runs, {} failed ({:?}); retired {} generations, {} packs, \
         {} objects; {} deferred",
        racing.runs,
        racing.failed.len(),
        racing.failed,
        racing.generations,
        racing.packs,
        racing.objects,
        racing.deferred
    );
}
