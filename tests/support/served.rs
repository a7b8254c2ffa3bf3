//! A DAG folder on a store and `dagfs mount` serving it, as real processes: the bed of the
//! tests that read a served tree (link mode and the FUSE mount alike).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dagfs::mount::state::{MountState, StateDir};

use super::minidfs::MiniDfs;
use super::run;

/// One test's folders: `root/dags` (pushed), `root/served` (the mountpoint or link
/// directory), `root/served-cache`, `root/run` (runtime directory and logs).
pub struct Bed {
    _tmp: tempfile::TempDir,
    /// The temporary directory holding everything.
    pub root: PathBuf,
    /// The store URL (`file://` under `root` unless a test sets a MiniDFS one).
    pub store: String,
    /// The cluster of `store`, when it is on MiniDFS.
    pub cluster: Option<&'static MiniDfs>,
}

impl Bed {
    pub fn local() -> Bed {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        // Other users (the writer attack) must be able to reach the served tree.
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        for dir in ["dags", "run"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        let store = format!("file://{}", root.join("store").display());
        Bed {
            _tmp: tmp,
            root,
            store,
            cluster: None,
        }
    }

    pub fn dags(&self) -> PathBuf {
        self.root.join("dags")
    }

    pub fn served(&self) -> PathBuf {
        self.root.join("served")
    }

    pub fn cache(&self) -> PathBuf {
        self.root.join("served-cache")
    }

    pub fn dagfs(&self, args: &[&str]) -> Command {
        let runtime = self.root.join("run");
        let mut command = match self.cluster {
            Some(cluster) => super::mount::dagfs(cluster, &runtime, args),
            None => {
                let mut command = super::dagfs_command(args);
                command
                    .env("DAGFS_RUNTIME_DIR", &runtime)
                    .env("XDG_CACHE_HOME", runtime.join("xdg-cache"));
                command
            }
        };
        command.env("DAGFS_LOG", "info");
        command
    }

    pub fn push(&self) {
        run(self
            .dagfs(&["push", "-q", "--no-mirror"])
            .arg(self.dags())
            .args(["--to", &self.store]));
    }

    /// Starts `dagfs mount --mode MODE` (`fuse` or `link`) with `extra` flags.
    pub fn serve(&self, mode: &str, extra: &[&str]) -> Server {
        let log_path = self.root.join(format!("run/{mode}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let child = self
            .dagfs(&["mount", "--mode", mode, "--poll", "100ms"])
            .args(["--store", &self.store])
            .arg(self.served())
            .arg("--cache-dir")
            .arg(self.cache())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Server {
            child,
            fuse: mode == "fuse",
            log: log_path,
            dir: self.served(),
            states: StateDir::at(self.root.join("run")),
        }
    }
}

pub struct Server {
    child: Child,
    fuse: bool,
    log: PathBuf,
    dir: PathBuf,
    states: StateDir,
}

impl Server {
    /// Waits until this server's own state satisfies `ready` (a restarted server owns the
    /// state file before it rewrites the one a killed server left).
    pub fn wait_for(&mut self, what: &str, ready: impl Fn(&MountState) -> bool) -> MountState {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(state) = self.states.read(&self.dir) {
                if state.pid == self.child.id() && ready(&state) {
                    return state;
                }
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!(
                    "dagfs mount exited with {status} while waiting for {what}; its log:\n{log}"
                );
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn serving(&mut self, generation: u64) -> MountState {
        self.wait_for(&format!("generation {generation}"), |s| {
            s.generation == Some(generation)
        })
    }

    /// `kill -9`s the server; a FUSE mountpoint it leaves behind is detached (a restart
    /// would find it "not connected" and mount over it, but the temporary directory must go).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.fuse {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.dir)
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
