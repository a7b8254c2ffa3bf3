//! Running `dagfs push` and `dagfs mount` as processes against a MiniDFS cluster (logged in
//! with the client keytab when the cluster is secure).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dagfs::mount::state::{MountState, StateDir};

use super::minidfs::{superuser, MiniDfs};
use super::run;

/// `dagfs ARGS` against `cluster`, with state files in `runtime`.
pub fn dagfs(cluster: &MiniDfs, runtime: &Path, args: &[&str]) -> Command {
    let mut command = super::dagfs_command(args);
    command
        .env("DAGFS_STORE_HADOOP_CONF_DIR", cluster.conf_dir())
        .env("DAGFS_STORE_USER", superuser())
        .env("DAGFS_STORE_TIMEOUT", "3s")
        .env("DAGFS_RUNTIME_DIR", runtime)
        .env("XDG_CACHE_HOME", runtime.join("xdg-cache"))
        // No metadata database unless a test names one: not this machine's ~/airflow.
        .env("AIRFLOW_HOME", runtime.join("no-airflow"))
        .env_remove("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN");
    if let Some(kerberos) = cluster.kerberos() {
        kerberos.login_with_keytab(&mut command, runtime);
    }
    command
}

pub fn push(cluster: &MiniDfs, runtime: &Path, dir: &Path, url: &str) {
    run(dagfs(cluster, runtime, &["push", "-q", "--no-mirror"])
        .arg(dir)
        .args(["--to", url]));
}

/// A running `dagfs mount`, killed and unmounted on drop.
/// One test's folders under a temporary directory: `root/dags` (the DAG folder), `root/mnt`
/// (the mountpoint), `root/run` (the runtime directory), `root/home` (an Airflow home).
pub struct Folders {
    _tmp: tempfile::TempDir,
    /// The temporary directory.
    pub root: PathBuf,
}

impl Folders {
    /// A new, empty temporary directory.
    pub fn new() -> Folders {
        let tmp = tempfile::tempdir().unwrap();
        Folders {
            root: tmp.path().to_path_buf(),
            _tmp: tmp,
        }
    }

    /// A test's folders, and a root of its own (`name`, made unique) on the shared cluster:
    /// (cluster, store URL, folders).
    pub fn on_shared_cluster(name: &str) -> (&'static MiniDfs, String, Folders) {
        let cluster = MiniDfs::shared();
        (cluster, cluster.unique_root(name), Folders::new())
    }

    /// The mount's cache directory.
    pub fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// [`Mount::start_with`] at this test's mountpoint, runtime and cache directories.
    pub fn mount(&self, cluster: &MiniDfs, url: &str, extra: &[&str]) -> Mount {
        let (_, mnt, runtime, _) = self.paths();
        Mount::start_with(cluster, &runtime, url, &mnt, &self.cache(), extra)
    }

    /// (dags, mnt, run, home).
    pub fn paths(&self) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
        let at = |name| self.root.join(name);
        (at("dags"), at("mnt"), at("run"), at("home"))
    }
}

pub struct Mount {
    child: Child,
    mountpoint: PathBuf,
    states: StateDir,
}

impl Mount {
    pub fn start(
        cluster: &MiniDfs,
        runtime: &Path,
        url: &str,
        mountpoint: &Path,
        cache: &Path,
    ) -> Mount {
        Mount::start_with(cluster, runtime, url, mountpoint, cache, &[])
    }

    /// Starts `dagfs mount` with `extra` arguments (`--pin G`...).
    pub fn start_with(
        cluster: &MiniDfs,
        runtime: &Path,
        url: &str,
        mountpoint: &Path,
        cache: &Path,
        extra: &[&str],
    ) -> Mount {
        // A poll of 200 ms unless `extra` sets one.
        let poll = (!extra.contains(&"--poll")).then_some(["--poll", "200ms"]);
        let mut command = dagfs(cluster, runtime, &["mount"]);
        command
            .args(poll.iter().flatten())
            .arg(url)
            .arg(mountpoint)
            .arg("--cache-dir")
            .arg(cache)
            .args(extra);
        Mount::spawn(command, runtime, mountpoint)
    }

    /// Starts `command`, a whole `dagfs mount` command line for `mountpoint` with its
    /// environment (as [`dagfs`] makes it), its log in `runtime`.
    pub fn spawn(mut command: Command, runtime: &Path, mountpoint: &Path) -> Mount {
        // A dead mount left by a killed process exists but cannot be stat'ed: leave it.
        if let Err(e) = std::fs::create_dir_all(mountpoint) {
            assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
        }
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        std::fs::create_dir_all(runtime).unwrap();
        let n = STARTED.fetch_add(1, Ordering::SeqCst);
        let log = std::fs::File::create(runtime.join(format!("mount-{n}.log"))).unwrap();
        let child = command.stdout(Stdio::null()).stderr(log).spawn().unwrap();
        Mount {
            child,
            mountpoint: mountpoint.to_path_buf(),
            states: StateDir::at(runtime),
        }
    }

    /// Waits until the mount's state satisfies `ready`.
    pub fn wait_for(&mut self, what: &str, ready: impl Fn(&MountState) -> bool) -> MountState {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(state) = self.states.read(&self.mountpoint) {
                if ready(&state) {
                    return state;
                }
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("dagfs mount exited with {status} while waiting for {what}");
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn serving(&mut self, generation: u64) -> MountState {
        self.wait_for(&format!("generation {generation}"), |s| {
            s.generation == Some(generation)
        })
    }

    /// Waits for the process to exit on its own, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "dagfs mount did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`: the kernel mount stays behind, dead.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then wait: the mount must unmount and exit 0.
    pub fn stop(mut self) {
        super::send(self.child.id(), rustix::process::Signal::TERM);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "dagfs mount exited with {status}");
        assert!(!is_mounted(&self.mountpoint), "still mounted after SIGTERM");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !is_mounted(&self.mountpoint) {
            return;
        }
        let detached = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&self.mountpoint)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !detached {
            // Without fusermount3 (root mounts with mount(2)): a failed test must not leave
            // a dead mount behind.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .stderr(Stdio::null())
                .status();
        }
    }
}

pub fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let path = path.to_str().unwrap();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(path))
}
