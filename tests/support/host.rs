//! One scheduler host as real processes: `dagfs sync` publishing a DAG folder, `dagfs mount`
//! following the store, and `dagfs failover` running a stand-in unit behind that mount.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::minidfs::MiniDfs;
use super::mount::{dagfs, Folders, Mount};

/// How long any one expected outcome may take to show up.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `check` every 100 ms until it returns `Some`, or panics after [`DEADLINE`].
pub fn until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes `content` to `dir/rel`, creating parents.
pub fn write(dir: &Path, rel: &str, content: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// A `dagfs` daemon process with its log, killed on drop.
pub struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts `command`, stdout and stderr to `log`.
    pub fn start(mut command: Command, log: PathBuf) -> Daemon {
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with its log if it exited.
    pub fn assert_running(&mut self) {
        let exited = self.child.try_wait().unwrap();
        assert!(exited.is_none(), "exited ({exited:?}):\n{}", self.log());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Sends `signal` to the process alone (`STOP` pauses it, `CONT` resumes it).
    pub fn signal(&self, signal: rustix::process::Signal) {
        super::send(self.child.id(), signal);
    }
}

/// Writes `root/unit-NAME.sh`, the stand-in unit of host `name`: each start appends
/// `start NAME` to `root/unit-starts`; while it runs it holds `root/unit.lock`, and a start
/// that finds the lock held (two units alive at once, on any host) appends `OVERLAP NAME`.
/// A controller stops it by its process group, lock holder included.
pub fn stand_in_unit(root: &Path, name: &str) -> PathBuf {
    let unit = root.join(format!("unit-{name}.sh"));
    let starts = root.join("unit-starts");
    let lock = root.join("unit.lock");
    std::fs::write(
        &unit,
        format!(
            "#!/bin/sh\necho 'start {name}' >> {starts}\nflock -n -E 99 {lock} sleep 600\n\
             [ $? = 99 ] && echo 'OVERLAP {name}' >> {starts}\n",
            starts = starts.display(),
            lock = lock.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&unit, std::fs::Permissions::from_mode(0o755)).unwrap();
    unit
}

/// `dagfs failover --single-active` running `unit` behind the mount on `mnt`, with fast
/// timings; `login` adjusts the environment last (credentials, other timings).
pub fn failover_command(
    cluster: &MiniDfs,
    run_dir: &Path,
    url: &str,
    mnt: &Path,
    unit: &Path,
    login: &dyn Fn(&mut Command),
) -> Command {
    let mut failover = dagfs(
        cluster,
        run_dir,
        &[
            "failover",
            "--single-active",
            "--store",
            url,
            "--mount",
            mnt.to_str().unwrap(),
            "--run",
            unit.to_str().unwrap(),
        ],
    );
    failover
        .env("DAGFS_FAILOVER_INTERVAL", "1s")
        .env("DAGFS_FAILOVER_FENCE_AFTER", "5s")
        .env("DAGFS_FAILOVER_KILL_GRACE", "1s")
        .env("DAGFS_FAILOVER_SAFETY_MARGIN", "1s")
        .env("DAGFS_FAILOVER_TAKEOVER_AFTER", "7s");
    login(&mut failover);
    failover
}

/// A copy of `command`: program, arguments and environment changes.
fn copy(command: &Command) -> Command {
    let mut copy = Command::new(command.get_program());
    copy.args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => copy.env(key, value),
            None => copy.env_remove(key),
        };
    }
    copy
}

/// A free loopback address for a metrics server.
pub fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// The sync daemon, the mount and a failover controller of one host, publishing the `dags`
/// folder of a [`Folders`] to one store. The unit records each start in `unit-starts`.
pub struct Host {
    /// `dagfs sync` of `dags/`.
    pub sync: Daemon,
    mount: Option<Mount>,
    /// The mount's command line and environment, to start it again.
    mount_command: Command,
    /// `dagfs failover` behind the mount.
    pub failover: Daemon,
    /// The sync daemon's metrics and `/healthz` address.
    pub sync_metrics: String,
    /// The mountpoint.
    pub mnt: PathBuf,
    root: PathBuf,
}

impl Host {
    /// Starts the three daemons; `login` adjusts each command's environment last
    /// (credentials; other failover timings than the fast defaults here).
    pub fn start(
        cluster: &MiniDfs,
        folders: &Folders,
        url: &str,
        login: &dyn Fn(&mut Command),
    ) -> Host {
        let (dags, mnt, run_dir, _) = folders.paths();
        let command = |args: &[&str]| {
            let mut command = dagfs(cluster, &run_dir, args);
            login(&mut command);
            command
        };
        let sync_metrics = free_addr();
        let dags_arg = dags.to_str().unwrap();
        // With the mirror (opt-in): the daemons exercise every publish step.
        let mut sync = command(&[
            "sync",
            dags_arg,
            "--to",
            url,
            "--mirror",
            "--metrics",
            &sync_metrics,
        ]);
        sync.env("DAGFS_SYNC_BACKOFF_INITIAL", "200ms")
            .env("DAGFS_SYNC_BACKOFF_MAX", "1s");
        let sync = Daemon::start(sync, folders.root.join("sync.log"));
        let mut mount_command = command(&["mount", "--poll", "200ms"]);
        mount_command
            .arg(url)
            .arg(&mnt)
            .arg("--cache-dir")
            .arg(folders.root.join("mount-cache"));
        let mount = Mount::spawn(copy(&mount_command), &run_dir, &mnt);
        let unit = stand_in_unit(&folders.root, "a");
        let failover = failover_command(cluster, &run_dir, url, &mnt, &unit, login);
        let failover = Daemon::start(failover, folders.root.join("failover.log"));
        Host {
            sync,
            mount: Some(mount),
            mount_command,
            failover,
            sync_metrics,
            mnt,
            root: folders.root.clone(),
        }
    }

    /// `dagfs mount` on `mnt/`.
    pub fn mount(&mut self) -> &mut Mount {
        self.mount.as_mut().expect("the mount runs")
    }

    /// Stops the mount (SIGTERM: it unmounts and exits 0) and starts it again with the same
    /// cache and environment, as a reboot of the host would.
    pub fn restart_mount(&mut self) {
        if let Some(mount) = self.mount.take() {
            mount.stop();
        }
        self.mount = Some(Mount::spawn(
            copy(&self.mount_command),
            &self.root.join("run"),
            &self.mnt,
        ));
    }

    /// Writes `rel` in the DAG folder and waits until the mount serves it.
    pub fn edit_and_see(&mut self, rel: &str, content: &str) {
        write(&self.root.join("dags"), rel, content);
        let served = self.mnt.join(rel);
        let sync = &mut self.sync;
        until(&format!("the mount to serve {rel} = {content:?}"), || {
            sync.assert_running();
            (std::fs::read_to_string(&served).ok()? == content).then_some(())
        });
    }

    /// How often the unit has started.
    pub fn unit_starts(&self) -> usize {
        self.unit_log()
            .iter()
            .filter(|l| l.starts_with("start "))
            .count()
    }

    /// The units' starts and overlaps, in order ([`stand_in_unit`]): `start NAME`,
    /// `OVERLAP NAME`.
    pub fn unit_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.root.join("unit-starts"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Waits until the unit has started once.
    pub fn wait_unit_started(&mut self) {
        let failover = &mut self.failover;
        let root = self.root.clone();
        until("the failover unit to start", || {
            failover.assert_running();
            std::fs::read_to_string(root.join("unit-starts"))
                .is_ok_and(|s| s.lines().count() >= 1)
                .then_some(())
        });
    }
}
