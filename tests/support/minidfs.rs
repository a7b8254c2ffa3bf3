//! Rust side of the MiniDFS test bed: starts the launcher in `tests/minidfs/`, waits until the
//! cluster is active, sends it fault commands, and shuts it down with the test.
//!
//! The JVM exits when its stdin closes, so a test process that dies (even by SIGKILL) takes
//! its cluster with it: no JVM outlives the test.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use dagfs::store::HdfsOptions;

/// How long a cluster may take to come up (the first start on a machine also compiles).
const START_DEADLINE: Duration = Duration::from_secs(300);
/// How long one command (a NameNode restart, say) may take.
const COMMAND_DEADLINE: Duration = Duration::from_secs(180);

/// What kind of cluster to start.
#[derive(Clone, Copy, Debug)]
pub struct MiniDfsOptions {
    /// Number of DataNodes.
    pub datanodes: usize,
    /// Two NameNodes behind a nameservice (`hdfs://dagfs-ha`), NameNode 0 active.
    pub ha: bool,
    /// Kerberos: an in-process KDC, Kerberos RPC and SASL on block transfers.
    pub secure: bool,
    /// With `secure`: the block transfers' `dfs.data.transfer.protection`
    /// (`authentication`, `integrity`; `privacy` when `None`).
    pub protection: Option<&'static str>,
    /// With `secure`: the longest ticket the KDC issues, in seconds (a day when `None`).
    pub ticket_lifetime: Option<u32>,
}

impl Default for MiniDfsOptions {
    fn default() -> Self {
        MiniDfsOptions {
            datanodes: 1,
            ha: false,
            secure: false,
            protection: None,
            ticket_lifetime: None,
        }
    }
}

/// The Kerberos side of a secure cluster: the files the launcher wrote next to the client
/// configuration.
#[derive(Clone, Debug)]
pub struct Kerberos {
    /// The MIT `krb5.conf` for clients (`KRB5_CONFIG`).
    pub krb5_conf: PathBuf,
    /// The client principal, `dagfs@EXAMPLE.COM`: an HDFS superuser.
    pub principal: String,
    /// A keytab (mode 0600) holding the client principal.
    pub keytab: PathBuf,
}

impl Kerberos {
    fn read(conf_dir: &Path) -> Kerberos {
        let env = std::fs::read_to_string(conf_dir.join("kerberos.env")).expect("kerberos.env");
        let value = |key: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("{key} missing from kerberos.env:\n{env}"))
                .to_string()
        };
        Kerberos {
            krb5_conf: value("KRB5_CONFIG").into(),
            principal: value("DAGFS_KERBEROS_PRINCIPAL"),
            keytab: value("DAGFS_KERBEROS_KEYTAB").into(),
        }
    }

    /// Points `command` (a `dagfs` process) at this KDC and logs it in with the keytab; its
    /// ticket cache is a private, empty one, never the machine's.
    pub fn login_with_keytab(&self, command: &mut Command, private: &Path) {
        command
            .env("KRB5_CONFIG", &self.krb5_conf)
            .env(
                "KRB5CCNAME",
                format!("FILE:{}", private.join("unused-ccache").display()),
            )
            .env_remove("DAGFS_STORE_USER")
            .env("DAGFS_STORE_KERBEROS_PRINCIPAL", &self.principal)
            .env("DAGFS_STORE_KERBEROS_KEYTAB", &self.keytab);
    }

    /// Points `command` at this KDC and the ticket cache `ccache` (filled by [`Kerberos::kinit`]).
    pub fn login_with_cache(&self, command: &mut Command, ccache: &Path) {
        command
            .env("KRB5_CONFIG", &self.krb5_conf)
            .env("KRB5CCNAME", format!("FILE:{}", ccache.display()))
            .env_remove("DAGFS_STORE_USER")
            .env_remove("DAGFS_STORE_KERBEROS_PRINCIPAL")
            .env_remove("DAGFS_STORE_KERBEROS_KEYTAB");
    }

    /// `kinit -k -t KEYTAB [-l LIFETIME] PRINCIPAL` into `ccache`, as a person would.
    pub fn kinit(&self, ccache: &Path, lifetime: Option<&str>) {
        super::run(
            Command::new("kinit")
                .args(lifetime.map(|l| ["-l", l]).into_iter().flatten())
                .arg("-k")
                .arg("-t")
                .arg(&self.keytab)
                .arg(&self.principal)
                .env("KRB5_CONFIG", &self.krb5_conf)
                .env("KRB5CCNAME", format!("FILE:{}", ccache.display())),
        );
    }

    /// Whether `ccache` holds a ticket that has not expired (`klist -s`).
    pub fn ticket_valid(&self, ccache: &Path) -> bool {
        Command::new("klist")
            .arg("-s")
            .env("KRB5_CONFIG", &self.krb5_conf)
            .env("KRB5CCNAME", format!("FILE:{}", ccache.display()))
            .status()
            .expect("run klist")
            .success()
    }
}

struct Control {
    stdin: ChildStdin,
    replies: Receiver<String>,
}

/// A running MiniDFSCluster.
pub struct MiniDfs {
    child: Mutex<Child>,
    control: Mutex<Control>,
    url: String,
    conf_dir: PathBuf,
    log: PathBuf,
    kerberos: Option<Kerberos>,
    _dir: tempfile::TempDir,
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The launcher's classpath, built once per test process by `scripts/minidfs classpath`.
fn classpath() -> &'static str {
    static CLASSPATH: OnceLock<String> = OnceLock::new();
    CLASSPATH.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/minidfs"))
            .arg("classpath")
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/minidfs classpath");
        assert!(out.status.success(), "scripts/minidfs classpath failed");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
}

impl MiniDfs {
    /// Starts a new cluster, blocking until it is active.
    pub fn start(options: MiniDfsOptions) -> MiniDfs {
        let dir = tempfile::Builder::new()
            .prefix("dagfs-minidfs-")
            .tempdir()
            .unwrap();
        let conf_dir = dir.path().join("conf");
        let log_dir = repo_root().join("target/minidfs-logs");
        std::fs::create_dir_all(&log_dir).unwrap();
        let log = log_dir.join(format!(
            "{}-{}.log",
            std::process::id(),
            dir.path().file_name().unwrap().to_string_lossy()
        ));
        let mut command = Command::new("java");
        command
            .arg("-Xmx768m")
            .arg("-cp")
            .arg(classpath())
            .arg("dagfs.minidfs.Main")
            .arg("--conf-dir")
            .arg(&conf_dir)
            .arg("--base-dir")
            .arg(dir.path().join("data"))
            .arg("--datanodes")
            .arg(options.datanodes.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        if options.ha {
            command.arg("--ha");
        }
        if options.secure {
            command.arg("--secure");
        }
        if let Some(protection) = options.protection {
            command.args(["--protection", protection]);
        }
        if let Some(lifetime) = options.ticket_lifetime {
            command.args(["--ticket-lifetime", &lifetime.to_string()]);
        }
        let mut child = command.spawn().expect("start java (is a JDK installed?)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = match replies.recv_timeout(START_DEADLINE) {
            Ok(line) => line,
            Err(e) => {
                let _ = child.kill();
                panic!(
                    "MiniDFS did not start ({e:?}); log: {}\n{}",
                    log.display(),
                    super::tail(&log, 40)
                );
            }
        };
        let url = ready
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("unexpected launcher line {ready:?}; log: {}", log.display()))
            .to_string();
        MiniDfs {
            child: Mutex::new(child),
            control: Mutex::new(Control { stdin, replies }),
            url,
            kerberos: options.secure.then(|| Kerberos::read(&conf_dir)),
            conf_dir,
            log,
            _dir: dir,
        }
    }

    /// One cluster shared by every test of this test binary that needs no faults; tests
    /// isolate themselves by path ([`MiniDfs::unique_root`]).
    pub fn shared() -> &'static MiniDfs {
        static SHARED: OnceLock<MiniDfs> = OnceLock::new();
        SHARED.get_or_init(|| MiniDfs::start(MiniDfsOptions::default()))
    }

    /// The default file system URL (`hdfs://127.0.0.1:PORT`, or `hdfs://dagfs-ha` with HA).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Directory holding the client `core-site.xml` and `hdfs-site.xml`.
    pub fn conf_dir(&self) -> &Path {
        &self.conf_dir
    }

    /// The KDC and client credentials of a secure cluster.
    pub fn kerberos(&self) -> Option<&Kerberos> {
        self.kerberos.as_ref()
    }

    /// A fresh store URL under this cluster, named after `test`.
    pub fn unique_root(&self, test: &str) -> String {
        format!("{}/t/{test}-{}", self.url, uuid::Uuid::new_v4().simple())
    }

    /// Client options for this cluster, acting as `user` (the superuser when `None`).
    pub fn options(&self, user: Option<&str>, timeout: Duration) -> HdfsOptions {
        HdfsOptions {
            timeout,
            user: Some(user.map_or_else(superuser, str::to_string)),
            config_dir: Some(self.conf_dir.clone()),
            ..HdfsOptions::default()
        }
    }

    /// `hadoop fs ARGS` (Hadoop's own FsShell) against this cluster, as the superuser.
    pub fn hadoop_fs(&self, args: &[&str]) -> std::process::Output {
        let classpath = format!("{}:{}", self.conf_dir.display(), classpath());
        Command::new("java")
            .args(["-cp", &classpath, "org.apache.hadoop.fs.FsShell"])
            .args(args)
            .env("HADOOP_USER_NAME", superuser())
            .output()
            .expect("run hadoop fs")
    }

    /// Sends a launcher command (`stop-namenode 0`...) and waits for its `OK`.
    pub fn command(&self, command: &str) {
        let mut control = self.control.lock().unwrap();
        writeln!(control.stdin, "{command}").expect("write to launcher");
        control.stdin.flush().unwrap();
        match control.replies.recv_timeout(COMMAND_DEADLINE) {
            Ok(reply) if reply == "OK" => {}
            Ok(reply) => panic!(
                "launcher: '{command}' -> {reply}; log: {}",
                self.log.display()
            ),
            Err(RecvTimeoutError::Timeout) => panic!("launcher: no answer to '{command}'"),
            Err(RecvTimeoutError::Disconnected) => {
                panic!(
                    "launcher died; log: {}\n{}",
                    self.log.display(),
                    super::tail(&self.log, 40)
                )
            }
        }
    }

    /// Stops NameNode `index`.
    pub fn stop_namenode(&self, index: usize) {
        self.command(&format!("stop-namenode {index}"));
    }

    /// Restarts NameNode `index` on its old port and waits until it serves.
    pub fn restart_namenode(&self, index: usize) {
        self.command(&format!("restart-namenode {index}"));
    }

    /// Stops DataNode `index`: its port refuses connections, the NameNode still lists it.
    pub fn stop_datanode(&self, index: usize) {
        self.command(&format!("stop-datanode {index}"));
    }

    /// Restarts the stopped DataNode `index` on its old ports, with its blocks.
    pub fn restart_datanode(&self, index: usize) {
        self.command(&format!("restart-datanode {index}"));
    }

    /// Makes NameNode `index` the active one (HA clusters).
    pub fn transition_to_active(&self, index: usize) {
        self.command(&format!("transition-to-active {index}"));
    }

    /// Makes NameNode `index` a standby (HA clusters).
    pub fn transition_to_standby(&self, index: usize) {
        self.command(&format!("transition-to-standby {index}"));
    }

    /// Sets the permission bits of `url` (a URL under this cluster) as the superuser.
    pub async fn set_permission(&self, url: &str, mode: u32) {
        let path = url
            .strip_prefix(self.url.as_str())
            .unwrap_or_else(|| panic!("{url} is not on this cluster ({})", self.url));
        let client = hdfs_native::ClientBuilder::new()
            .with_url(&self.url)
            .with_config_dir(self.conf_dir.display().to_string())
            .with_user(superuser())
            .build()
            .unwrap();
        client.set_permission(path, mode).await.unwrap();
    }
}

impl Drop for MiniDfs {
    fn drop(&mut self) {
        if let Ok(mut control) = self.control.lock() {
            let _ = writeln!(control.stdin, "shutdown");
            let _ = control.stdin.flush();
        }
        let mut child = self.child.lock().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The user the JVM runs as, which HDFS treats as its superuser.
pub fn superuser() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            let out = Command::new("id").arg("-un").output().expect("id -un");
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        })
}
