//! `dagfs sync` as a real daemon process against a real HDFS (MiniDFS): every kind of change
//! reaches the next generation, editor saves give one generation, a NameNode outage loses
//! nothing, a slowly written file is never published half-written, kill -9 and restart
//! re-uploads nothing unchanged.
//!
//! Every wait is a poll with a deadline on what the test asserts (the head generation, the
//! status file, the metrics), never a fixed sleep.

mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dagfs::generations;
use dagfs::scan::{scan, HashCache, ScanOptions};
use dagfs::store::Store;
use dagfs::sync::state::{Phase, SyncFiles, SyncState};

use support::minidfs::{superuser, MiniDfs, MiniDfsOptions};

/// How long any one expected outcome may take to show up.
const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `check` every 50 ms until it returns `Some`, or panics after `deadline`.
async fn until<T, F: Future<Output = Option<T>>>(
    deadline: Duration,
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `dagfs sync` process with its own folder, runtime directory and hash cache.
struct SyncDaemon {
    child: Option<Child>,
    dir: PathBuf,
    runtime: PathBuf,
    log: PathBuf,
    url: String,
    conf_dir: PathBuf,
    _work: tempfile::TempDir,
}

impl SyncDaemon {
    /// A fresh folder holding `files`, not yet watched.
    fn prepare(cluster: &MiniDfs, test: &str, files: &[(&str, &str)]) -> SyncDaemon {
        let work = tempfile::tempdir().unwrap();
        std::fs::create_dir(work.path().join("dags")).unwrap();
        let dir = work.path().join("dags").canonicalize().unwrap();
        for (rel, content) in files {
            write(&dir, rel, content);
        }
        SyncDaemon {
            child: None,
            runtime: work.path().join("run"),
            log: work.path().join("sync.log"),
            url: cluster.unique_root(test),
            conf_dir: cluster.conf_dir().to_path_buf(),
            dir,
            _work: work,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = support::dagfs_command(args);
        command
            .env("DAGFS_STORE_HADOOP_CONF_DIR", &self.conf_dir)
            .env("DAGFS_STORE_USER", superuser())
            .env("DAGFS_STORE_TIMEOUT", "5s")
            .env("DAGFS_SYNC_BACKOFF_INITIAL", "200ms")
            .env("DAGFS_SYNC_BACKOFF_MAX", "1s")
            .env("DAGFS_RUNTIME_DIR", &self.runtime)
            .env("XDG_CACHE_HOME", self._work.path().join("cache"));
        command
    }

    /// Starts (or restarts) the daemon, its JSON log appended to `self.log`.
    fn start(&mut self, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let dir = self.dir.to_str().unwrap().to_string();
        let mut args = vec!["--log-format", "json", "sync", &dir, "--to", &self.url];
        args.extend_from_slice(extra);
        self.child = Some(
            self.command(&args)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start dagfs sync"),
        );
    }

    /// The daemon's status file, if written.
    fn state(&self) -> Option<SyncState> {
        let path = SyncFiles::at(&self.runtime).state_path(&self.dir);
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// Waits until the daemon is idle with nothing pending, and returns its state.
    async fn idle(&self) -> SyncState {
        until(DEADLINE, "the daemon to be idle", || async {
            self.state()
                .filter(|s| s.phase == Phase::Idle && s.pending_changes == 0)
        })
        .await
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("the daemon was started")
    }

    fn assert_running(&mut self) {
        let exited = self.child().try_wait().unwrap();
        assert!(
            exited.is_none(),
            "dagfs sync exited ({exited:?}); log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// Sends `signal` (by pid, to this process only) and waits for the exit status.
    fn signal(&mut self, signal: &str) -> std::process::ExitStatus {
        let pid = self.child().id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success());
        self.child().wait().unwrap()
    }

    async fn store(&self) -> Box<dyn Store> {
        let options = dagfs::store::HdfsOptions {
            timeout: Duration::from_secs(20),
            user: Some(superuser()),
            config_dir: Some(self.conf_dir.clone()),
            ..Default::default()
        };
        dagfs::store::open(&self.url, &options).await.unwrap()
    }
}

impl Drop for SyncDaemon {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn write(dir: &Path, rel: &str, content: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// The folder as the next generation should hold it: path -> digest.
fn local_tree(dir: &Path) -> BTreeMap<String, String> {
    scan(dir, &ScanOptions::default(), &mut HashCache::in_memory())
        .unwrap()
        .into_iter()
        .map(|f| (f.entry.path, f.entry.blake3.to_string()))
        .collect()
}

/// The head generation's number and tree (path -> digest), `None` if unreadable or empty.
async fn head_tree(store: &dyn Store) -> Option<(u64, BTreeMap<String, String>)> {
    let head = generations::load_head(store).await.ok()??;
    let tree = head
        .entries
        .into_iter()
        .map(|e| (e.path, e.blake3.to_string()))
        .collect();
    Some((head.generation, tree))
}

/// Waits until the head holds exactly what `dir` holds; returns the head's number.
async fn converged(store: &dyn Store, dir: &Path) -> u64 {
    let want = local_tree(dir);
    until(DEADLINE, "the head to match the folder", || async {
        head_tree(store)
            .await
            .filter(|(_, tree)| *tree == want)
            .map(|(g, _)| g)
    })
    .await
}

/// Something done to the watched folder.
type FolderChange = Box<dyn Fn(&Path)>;

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_change_reaches_the_next_generation_and_editor_saves_give_one() {
    let cluster = tokio::task::spawn_blocking(MiniDfs::shared).await.unwrap();
    let mut daemon = SyncDaemon::prepare(
        cluster,
        "sync-changes",
        &[
            ("etl.py", "etl v1"),
            ("team/load.py", "load v1"),
            ("team/old/x.py", "x"),
        ],
    );
    daemon.start(&[]);
    let store = daemon.store().await;
    let dir = daemon.dir.clone();
    converged(&*store, &dir).await;

    // Each change alone, each visible in a later generation.
    let changes: Vec<(&str, FolderChange)> = vec![
        ("edit", Box::new(|d| write(d, "etl.py", "etl v2"))),
        ("create", Box::new(|d| write(d, "new.py", "new"))),
        (
            "delete",
            Box::new(|d| std::fs::remove_file(d.join("new.py")).unwrap()),
        ),
        (
            "rename file",
            Box::new(|d| std::fs::rename(d.join("etl.py"), d.join("etl_renamed.py")).unwrap()),
        ),
        (
            // Files written right after mkdir, before the new directory's watch exists.
            "new directory",
            Box::new(|d| {
                std::fs::create_dir_all(d.join("fresh/deeper")).unwrap();
                write(d, "fresh/deeper/a.py", "a");
                write(d, "fresh/b.py", "b");
            }),
        ),
        (
            "rename directory",
            Box::new(|d| std::fs::rename(d.join("team"), d.join("team2")).unwrap()),
        ),
        (
            "delete directory",
            Box::new(|d| std::fs::remove_dir_all(d.join("team2/old")).unwrap()),
        ),
        (
            "write into a renamed directory",
            Box::new(|d| write(d, "team2/after_rename.py", "watched")),
        ),
    ];
    let mut last = daemon.idle().await.generation.unwrap();
    for (what, change) in &changes {
        change(&dir);
        let generation = converged(&*store, &dir).await;
        assert!(generation > last, "{what}: no new generation");
        last = generation;
    }

    // Editor-style saves: exactly one generation each, with the final content.
    let saves: Vec<(&str, FolderChange)> = vec![
        (
            "write temp + rename",
            Box::new(|d| {
                write(d, ".etl_renamed.py.tmp1234", "saved by rename");
                std::fs::rename(d.join(".etl_renamed.py.tmp1234"), d.join("etl_renamed.py"))
                    .unwrap();
            }),
        ),
        (
            "vim (4913 probe, backup rename, write, .swp)",
            Box::new(|d| {
                write(d, "team2/.load.py.swp", "swap");
                write(d, "team2/4913", "");
                std::fs::remove_file(d.join("team2/4913")).unwrap();
                std::fs::rename(d.join("team2/load.py"), d.join("team2/load.py~")).unwrap();
                write(d, "team2/load.py", "saved by vim");
                std::fs::remove_file(d.join("team2/load.py~")).unwrap();
                std::fs::remove_file(d.join("team2/.load.py.swp")).unwrap();
            }),
        ),
        (
            "emacs (.# lock link, backup)",
            Box::new(|d| {
                std::os::unix::fs::symlink("user@host.1234:1", d.join("fresh/.#b.py")).unwrap();
                write(d, "fresh/b.py", "saved by emacs");
                std::fs::remove_file(d.join("fresh/.#b.py")).unwrap();
            }),
        ),
        (
            "JetBrains (___jb_tmp___ / ___jb_old___)",
            Box::new(|d| {
                write(d, "fresh/deeper/a.py___jb_tmp___", "saved by pycharm");
                std::fs::rename(
                    d.join("fresh/deeper/a.py"),
                    d.join("fresh/deeper/a.py___jb_old___"),
                )
                .unwrap();
                std::fs::rename(
                    d.join("fresh/deeper/a.py___jb_tmp___"),
                    d.join("fresh/deeper/a.py"),
                )
                .unwrap();
                std::fs::remove_file(d.join("fresh/deeper/a.py___jb_old___")).unwrap();
            }),
        ),
    ];
    for (what, save) in &saves {
        let before = daemon.idle().await.generation.unwrap();
        save(&dir);
        let generation = converged(&*store, &dir).await;
        assert_eq!(generation, before + 1, "{what}: not exactly one generation");
        let after = daemon.idle().await.generation.unwrap();
        assert_eq!(after, before + 1, "{what}: a later extra generation");
    }

    // One daemon per folder; the second one says why, on one line.
    let second = daemon
        .command(&["sync", dir.to_str().unwrap(), "--to", &daemon.url])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("already watches"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    // `dagfs status` reports it.
    let status = daemon.command(&["status", "--json"]).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(report["sync"][0]["running"], true, "{report}");
    assert_eq!(report["sync"][0]["generation"], last + saves.len() as u64);
    assert_eq!(status.status.code(), Some(0), "{report}");

    // SIGTERM: clean exit 0, status file gone.
    daemon.assert_running();
    assert_eq!(daemon.signal("-TERM").code(), Some(0));
    assert!(daemon.state().is_none(), "status file left behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_namenode_outage_loses_nothing_and_publishes_everything_once_back() {
    let cluster = tokio::task::spawn_blocking(|| MiniDfs::start(MiniDfsOptions::default()))
        .await
        .unwrap();
    let mut daemon = SyncDaemon::prepare(&cluster, "sync-outage", &[("base.py", "base")]);
    daemon.start(&[]);
    let store = daemon.store().await;
    let dir = daemon.dir.clone();
    converged(&*store, &dir).await;
    let before = daemon.idle().await.generation.unwrap();

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.stop_namenode(0);
        cluster
    })
    .await
    .unwrap();
    for i in 0..20 {
        match i % 4 {
            0 | 1 => write(&dir, &format!("outage/new_{i}.py"), &format!("new {i}")),
            2 => write(&dir, "base.py", &format!("base edited {i}")),
            _ => write(&dir, &format!("outage/new_{}.py", i - 3), "edited again"),
        }
    }
    // The daemon notices, keeps the changes, retries, and stays up.
    let failing = until(DEADLINE, "the daemon to report the outage", || async {
        daemon
            .state()
            .filter(|s| s.phase == Phase::Retrying && s.failures >= 2)
    })
    .await;
    assert_eq!(failing.last_error_kind.as_deref(), Some("unavailable"));
    assert!(failing.pending_changes > 0, "{failing:?}");
    daemon.assert_running();

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.restart_namenode(0);
        cluster
    })
    .await
    .unwrap();
    let generation = converged(&*store, &dir).await;
    assert_eq!(
        generation,
        before + 1,
        "all changes made during the outage go out in one generation"
    );
    let state = daemon.idle().await;
    assert_eq!(state.generation, Some(before + 1));
    assert_eq!(state.last_error, None);
    daemon.assert_running();
    drop(daemon);
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slowly_written_file_is_never_published_half_written() {
    let cluster = tokio::task::spawn_blocking(MiniDfs::shared).await.unwrap();
    let mut daemon = SyncDaemon::prepare(cluster, "sync-slow", &[("busy.py", "0")]);
    daemon.start(&[]);
    let store = daemon.store().await;
    let dir = daemon.dir.clone();
    converged(&*store, &dir).await;

    // 3 s of writing, 60 chunks, while another file changes every 300 ms so the daemon keeps
    // publishing generations during the write.
    let final_content: String = (0..60).map(|i| format!("line_{i} = {i}\n")).collect();
    let mut slow = std::fs::File::create(dir.join("slow.py")).unwrap();
    let started = Instant::now();
    for (i, line) in final_content.lines().enumerate() {
        writeln!(slow, "{line}").unwrap();
        if i % 6 == 0 {
            write(&dir, "busy.py", &i.to_string());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(slow);
    assert!(started.elapsed() >= Duration::from_secs(3));
    let head = converged(&*store, &dir).await;

    let mut with_slow = 0;
    let mut generations_seen = 0;
    for generation in generations::list(&*store).await.unwrap() {
        generations_seen += 1;
        let manifest = generations::load(&*store, generation).await.unwrap();
        if let Some(entry) = manifest.entries.iter().find(|e| e.path == "slow.py") {
            let bytes = support::read_object(&*store, &entry.blake3).await;
            assert_eq!(
                String::from_utf8_lossy(&bytes),
                final_content,
                "generation {generation} holds slow.py half-written"
            );
            with_slow += 1;
        }
    }
    assert!(with_slow >= 1, "slow.py was never published (head {head})");
    assert!(
        generations_seen > 2,
        "the busy file must have been published during the slow write"
    );
}

/// [`support::scrape_metrics`] off the async threads.
async fn scrape(addr: &str) -> BTreeMap<String, f64> {
    let addr = addr.to_string();
    tokio::task::spawn_blocking(move || support::scrape_metrics(&addr))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_and_restart_converges_without_uploading_unchanged_content() {
    let cluster = tokio::task::spawn_blocking(MiniDfs::shared).await.unwrap();
    let files: Vec<(String, String)> = (0..10)
        .map(|i| (format!("dag_{i}.py"), format!("dag {i}\n").repeat(100)))
        .collect();
    let borrowed: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let mut daemon = SyncDaemon::prepare(cluster, "sync-kill9", &borrowed);
    daemon.start(&["--metrics", "127.0.0.1:0"]);
    let store = daemon.store().await;
    let dir = daemon.dir.clone();
    converged(&*store, &dir).await;
    let first = daemon.idle().await;
    let metrics = scrape(first.metrics.as_deref().unwrap()).await;
    assert_eq!(metrics["dagfs_sync_objects_uploaded_total"], 10.0);

    // Killed without warning; the folder changes while it is down.
    assert!(!daemon.signal("-KILL").success());
    write(&dir, "dag_0.py", "changed while down");
    write(&dir, "dag_1.py", "also changed");
    write(&dir, "added.py", "added while down");
    std::fs::remove_file(dir.join("dag_9.py")).unwrap();
    let expected_bytes = ["changed while down", "also changed", "added while down"]
        .iter()
        .map(|c| c.len() as f64)
        .sum::<f64>();

    // The lock died with the process: the restart takes it at once.
    daemon.start(&["--metrics", "127.0.0.1:0"]);
    converged(&*store, &dir).await;
    let state = until(DEADLINE, "the restarted daemon to be idle", || async {
        daemon
            .state()
            .filter(|s| s.pid != first.pid && s.phase == Phase::Idle && s.pending_changes == 0)
    })
    .await;
    let metrics = scrape(state.metrics.as_deref().unwrap()).await;
    assert_eq!(
        metrics["dagfs_sync_objects_uploaded_total"], 3.0,
        "only the 3 new contents are uploaded again"
    );
    assert_eq!(metrics["dagfs_sync_bytes_uploaded_total"], expected_bytes);
    assert_eq!(metrics["dagfs_sync_generations_published_total"], 1.0);
    daemon.assert_running();
}

#[tokio::test(flavor = "multi_thread")]
async fn permission_denied_is_reported_loudly_and_retried_without_exiting() {
    let cluster = tokio::task::spawn_blocking(MiniDfs::shared).await.unwrap();
    let mut daemon = SyncDaemon::prepare(cluster, "sync-denied", &[("a.py", "a")]);
    // The store root exists, owned by the superuser and not writable by others.
    let store = daemon.store().await;
    store.mkdirs("generations").await.unwrap();
    let mut command = daemon.command(&[]);
    let log = std::fs::File::create(&daemon.log).unwrap();
    let dir = daemon.dir.to_str().unwrap().to_string();
    daemon.child = Some(
        command
            .args(["--log-format", "json", "sync", &dir, "--to", &daemon.url])
            .env("DAGFS_STORE_USER", "mallory")
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let state = until(DEADLINE, "a permission error in the status", || async {
        daemon
            .state()
            .filter(|s| s.last_error_kind.as_deref() == Some("permission") && s.failures >= 1)
    })
    .await;
    assert_eq!(state.phase, Phase::Retrying);
    assert!(state.last_error.unwrap().contains("permission denied"));
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("\"level\":\"ERROR\"") && l.contains("permission")),
        "{log}"
    );
    daemon.assert_running();
}
