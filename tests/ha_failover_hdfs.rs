//! NameNode HA failover during every protocol step, with real processes: `dagfs sync`
//! publishes edits (objects, staged manifest, commit, mirror), `dagfs gc` runs race them, a
//! mount follows (polls, fetches) and a failover controller renews its lease, while the NameNodes of an HA MiniDFS
//! swap roles (`transitionToStandby` / `transitionToActive`) at seeded random points.
//!
//! Between failovers the cluster stays up for 1.5-3 s (a failover storm longer than
//! `failover.fence_after` is an outage, after which the unit restarts by design).
//!
//! Afterwards: the generations are numbered without a gap and each one's parent is the one
//! before; every edit was introduced by exactly one generation and is in the head; every
//! generation is complete (`dagfs verify --deep`: each manifest valid, each object present
//! with its bytes); the mount serves the head; the failover unit started once. Commits whose
//! answer was lost in a failover are read back (DESIGN, publish step 6): the count seen is
//! printed, and a duplicate or lost edit would fail the accounting above.
//!
//! `DAGFS_HA_FAILOVERS` sets the number of failovers (20 by default), `DAGFS_HA_SEED`
//! replays a run (the seed is printed).

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dagfs::generations;
use support::host::{until, write, Host};
use support::minidfs::{MiniDfs, MiniDfsOptions};
use support::mount::{dagfs, Folders};

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
    })
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

    // Each round: an edit (a new file, sometimes a change of base.py too), then a failover
    // after a random delay: during the edit's scan, object upload, staged manifest, commit
    // or mirror update, the mount's poll or fetch, or the controller's renewal.
    // In a quarter of the rounds a gc run races the publishes and the failover: it keeps
    // every generation but moves unreferenced objects aside with no grace period, which is
    // safe by construction (DESIGN, garbage collection) even when an answer is lost.
    let gc = |run_dir: &std::path::Path| {
        let mut command = dagfs(
            &cluster,
            run_dir,
            &[
                "gc", "--store", &url, "--keep", "1000", "--grace", "0s", "-q",
            ],
        );
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        command
    };
    let mut gcs = Vec::new();
    let started = Instant::now();
    let mut active = 0;
    for i in 0..failovers {
        write(
            &dags,
            &format!("edits/e{i:03}.py"),
            &format!("print({i})\n"),
        );
        if rng.bool() {
            write(&dags, "base.py", &format!("print('base', {i})\n"));
        }
        if rng.u8(0..4) == 0 {
            gcs.push(gc(&run_dir).spawn().unwrap());
        }
        // Where the failover lands in the protocol; a delay that injects, not one that waits.
        std::thread::sleep(Duration::from_millis(rng.u64(0..1500)));
        cluster.transition_to_standby(active);
        active = 1 - active;
        cluster.transition_to_active(active);
        // Failovers are rare events: a storm of them for longer than failover.fence_after is
        // an outage, after which the unit restarts by design (DESIGN, failover table).
        std::thread::sleep(Duration::from_millis(rng.u64(1500..3000)));
    }
    println!(
        "{failovers} failovers in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The pipeline still runs: a last edit reaches the mount.
    host.edit_and_see("final.py", "print('final')\n");
    // The racing gc runs end (some may have failed on a failover: that is allowed, they put
    // back what they moved or leave it to the next run), and one more run with a stable
    // cluster must succeed.
    let gc_failures = gcs
        .into_iter()
        .map(|child| child.wait_with_output().unwrap())
        .filter(|out| !out.status.success())
        .count();
    let out = gc(&run_dir).output().unwrap();
    assert!(
        out.status.success(),
        "gc: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let options = cluster.options(None, Duration::from_secs(30));
    let store = runtime
        .block_on(dagfs::store::open(&url, &options))
        .unwrap();
    let numbers = runtime.block_on(generations::list(store.as_ref())).unwrap();
    let head = *numbers.last().unwrap();
    assert_eq!(
        numbers,
        (1..=head).collect::<Vec<_>>(),
        "a gap in the generations"
    );
    // path -> content digest, per generation.
    let mut trees: Vec<BTreeMap<String, String>> = vec![BTreeMap::new()];
    for &g in &numbers {
        let manifest = runtime
            .block_on(generations::load(store.as_ref(), g))
            .unwrap();
        assert_eq!(manifest.parent, (g > 1).then(|| g - 1), "generation {g}");
        trees.push(
            manifest
                .entries
                .iter()
                .map(|e| (e.path.clone(), e.blake3.to_string()))
                .collect(),
        );
    }
    for i in 0..failovers {
        let path = format!("edits/e{i:03}.py");
        let introduced: Vec<usize> = (1..trees.len())
            .filter(|&g| trees[g].contains_key(&path) && !trees[g - 1].contains_key(&path))
            .collect();
        assert_eq!(
            introduced.len(),
            1,
            "{path} introduced by generations {introduced:?}"
        );
        assert!(trees[head as usize].contains_key(&path), "{path} lost");
    }
    // Every generation complete: manifests valid, every object present with its bytes; and
    // the mirror, updated in the background after each commit, catches up with the head.
    let end = Instant::now() + support::host::DEADLINE;
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
    assert_eq!(host.unit_starts(), 1, "{}", host.failover.log());
    let ambiguous = host.sync.log().matches("commit outcome unknown").count();
    println!(
        "{head} generations; {ambiguous} commit(s) with a lost answer, read back; \
         {gc_failures} racing gc run(s) failed"
    );
}
