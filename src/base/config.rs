//! The dagfs configuration: one TOML file, overridable key by key.
//!
//! Layers, later ones winning: built-in defaults, the file (`/etc/dagfs/dagfs.toml` unless
//! `--config` names another), `DAGFS_<SECTION>_<KEY>` environment variables
//! (`DAGFS_STORE_TIMEOUT=10s`), then `--set section.key=value` flags and the dedicated flags of
//! each command. `packaging/dagfs.toml.example` documents every key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::scan::{IgnoreFilter, ScanOptions};
use crate::store::HdfsOptions;

/// Where the configuration file is looked for when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/dagfs/dagfs.toml";

/// A configuration that could not be loaded: one line naming the key, the value and what was
/// expected, or the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file given with `--config` does not exist or cannot be read.
    #[error("config file {}: {reason}; fix the path given with --config (or DAGFS_CONFIG), or create the file from packaging/dagfs.toml.example", .path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        reason: String,
    },
    /// A key has a value of the wrong type, an unknown key, or bad TOML syntax.
    #[error("invalid config: {0}")]
    Invalid(String),
    /// A `--set` flag is not of the form `section.key=value`.
    #[error("invalid --set '{0}': expected section.key=value, e.g. --set store.timeout=10s")]
    BadOverride(String),
}

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the generations live and how to reach them.
    pub store: StoreConfig,
    /// What a scan of a DAG folder publishes.
    pub scan: ScanConfig,
    /// How generations are published.
    pub publish: PublishConfig,
    /// How `dagfs mount` serves generations.
    pub mount: MountConfig,
    /// The `dagfs sync` daemon.
    pub sync: SyncConfig,
    /// Logging.
    pub log: LogConfig,
    /// Scheduler failover: election timing, supervision, the identity gate.
    pub failover: FailoverConfig,
    /// Airflow's metadata database (the database coordinator of `dagfs failover`).
    pub database: DatabaseConfig,
}

/// The `[database]` section: where Airflow's metadata database is. Every key is optional:
/// unset, the connection is Airflow's own (`AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`, its `_CMD`
/// variant, else `sql_alchemy_conn` in `airflow.cfg`); see [`crate::metadb::resolve`].
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// The connection: a SQLAlchemy URL as in `airflow.cfg` (`postgresql+psycopg2://...`,
    /// `mysql+mysqldb://...`) or a driver URL (`postgres://...`, `mysql://...`).
    pub url: Option<String>,
    /// Airflow's configuration file; unset: `$AIRFLOW_HOME/airflow.cfg` (`~/airflow`).
    pub airflow_config: Option<PathBuf>,
    /// Upper bound on opening a connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            airflow_config: None,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Where `dagfs failover` keeps its leadership lease.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CoordinatorKind {
    /// A chain of heartbeat files in the store: needs nothing but the store, and fences
    /// every leader while the store is unreachable. The default: hosts that mixed the two
    /// would hold two independent elections, so a changed default would make a rolling
    /// upgrade unsafe (docs/OPERATIONS.md: switching coordinators).
    #[default]
    Store,
    /// One row in Airflow's metadata database (`[database]`): leadership survives store
    /// outages, and is lost only when the scheduler could not work anyway.
    Database,
}

/// The `[failover]` section: timing of the election and the supervision of the commands.
///
/// Safety rests on `fence_after + kill_grace + safety_margin <= takeover_after`: a leader
/// that last renewed at T has killed its commands by T + fence_after + kill_grace, and no
/// standby starts before it has seen the same heartbeat for takeover_after on its own clock.
/// Across hosts the leader's own fence_after and kill_grace travel in its heartbeats, and a
/// standby waits for them plus its own margin when they exceed its takeover_after.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    /// Whether every host runs the commands (`all-active`, the default) or one leader at a
    /// time (`single-active`).
    pub mode: FailoverMode,
    /// Where the leadership lease lives: `"store"` or `"database"`.
    pub coordinator: CoordinatorKind,
    /// How often the leader renews its heartbeat and standbys look at it.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A leader whose last successful renewal started this long ago stops its commands.
    #[serde(with = "humantime_serde")]
    pub fence_after: Duration,
    /// Time between SIGTERM and SIGKILL when commands are stopped.
    #[serde(with = "humantime_serde")]
    pub kill_grace: Duration,
    /// Slack on top of fence_after + kill_grace before a standby may take over.
    #[serde(with = "humantime_serde")]
    pub safety_margin: Duration,
    /// A standby takes over after the heartbeat has not changed for this long.
    #[serde(with = "humantime_serde")]
    pub takeover_after: Duration,
    /// How long a new leader waits for its mount to serve the head before stepping down
    /// (single-active; all-active hosts wait as long as it takes).
    #[serde(with = "humantime_serde")]
    pub gate_timeout: Duration,
    /// Restarts of the commands allowed within restart_window before stepping down.
    pub restart_limit: u32,
    /// The window restart_limit counts in.
    #[serde(with = "humantime_serde")]
    pub restart_window: Duration,
    /// Delay before the first restart; it doubles with each further restart in the window.
    #[serde(with = "humantime_serde")]
    pub restart_backoff: Duration,
    /// After stepping down for failing commands, the host does not lead again for this long.
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// Shell command checking the commands' health every interval (exit 0 = healthy).
    pub health_command: Option<String>,
    /// Upper bound on one health check.
    #[serde(with = "humantime_serde")]
    pub health_timeout: Duration,
    /// Consecutive failed health checks that count as a crash of the commands.
    pub health_failures: u32,
    /// Address of the Prometheus endpoint (`/metrics`, `/healthz`); unset: none.
    pub metrics: Option<String>,
}

/// How many hosts run the supervised commands.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum FailoverMode {
    /// Every host runs them, gated and supervised, with no election: Airflow 2+ on PostgreSQL
    /// or MySQL runs several schedulers, DAG processors and triggerers at once, and nothing
    /// but the metadata database is needed to keep running.
    #[default]
    AllActive,
    /// One elected leader at a time runs them (Airflow 1, or setups that must not run two).
    SingleActive,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            mode: FailoverMode::AllActive,
            coordinator: CoordinatorKind::default(),
            interval: Duration::from_secs(10),
            fence_after: Duration::from_secs(20),
            kill_grace: Duration::from_secs(5),
            safety_margin: Duration::from_secs(2),
            takeover_after: Duration::from_secs(27),
            gate_timeout: Duration::from_secs(300),
            restart_limit: 3,
            restart_window: Duration::from_secs(600),
            restart_backoff: Duration::from_secs(1),
            cooldown: Duration::from_secs(600),
            health_command: None,
            health_timeout: Duration::from_secs(30),
            health_failures: 3,
            metrics: None,
        }
    }
}

impl FailoverConfig {
    /// Checks the timing inequalities the protocol's safety rests on; the error is one line
    /// naming the keys and a fix.
    pub fn validate(&self) -> Result<(), String> {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        if self.interval.is_zero() || self.kill_grace.is_zero() {
            return Err(
                "failover.interval and failover.kill_grace must be greater than zero".into(),
            );
        }
        if self.fence_after < 2 * self.interval {
            return Err(format!(
                "failover.fence_after = {} is less than 2 x failover.interval ({}): a leader would fence itself after one slow renewal; raise fence_after or lower interval",
                show(self.fence_after),
                show(2 * self.interval)
            ));
        }
        if self.safety_margin < Duration::from_secs(1) {
            return Err(format!(
                "failover.safety_margin = {} is below the minimum of 1s",
                show(self.safety_margin)
            ));
        }
        let needed = self.fence_after + self.kill_grace + self.safety_margin;
        if self.takeover_after < needed {
            return Err(format!(
                "unsafe failover timing: takeover_after = {} must be at least fence_after + kill_grace + safety_margin = {}, or two schedulers could run at once; raise failover.takeover_after to {} or lower the others",
                show(self.takeover_after),
                show(needed),
                show(needed)
            ));
        }
        if self.restart_limit == 0 || self.health_failures == 0 {
            return Err(
                "failover.restart_limit and failover.health_failures must be at least 1".into(),
            );
        }
        Ok(())
    }
}

/// The `[sync]` section: how `dagfs sync` batches changes and survives failures.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// Publish once the folder has been quiet this long.
    #[serde(with = "humantime_serde")]
    pub quiet_window: Duration,
    /// But at the latest this long after the first change of a batch.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Full rescan this often, whatever the watcher reported.
    #[serde(with = "humantime_serde")]
    pub rescan_interval: Duration,
    /// First retry delay after a transient store error.
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Longest retry delay; also the retry delay of errors an administrator must fix.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// On SIGTERM/SIGINT, how long a publish in flight may take before it is abandoned.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Serve Prometheus metrics on this address (`host:port`); unset serves none.
    pub metrics: Option<String>,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            quiet_window: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            rescan_interval: Duration::from_secs(300),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            metrics: None,
        }
    }
}

/// The `[scan]` section.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScanConfig {
    /// gitignore patterns left out of every generation, as if in a `.dagfsignore` at the
    /// folder's root.
    pub exclude: Vec<String>,
    /// Removed: whether `.airflowignore` also decided what was published. Read only to
    /// explain the change (see [`Config::warnings`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub airflowignore: Option<bool>,
    /// Removed with `airflowignore`: the syntax of `.airflowignore`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignore_syntax: Option<String>,
}

/// Why `scan.airflowignore = true` is refused, and what to do instead.
const AIRFLOWIGNORE_REMOVED: &str = "scan.airflowignore was removed: dagfs now publishes the \
files .airflowignore lists (Airflow still skips them when parsing, and DAGs often import \
helper modules kept under it); to keep files out of generations, list them in a \
.dagfsignore (gitignore syntax, one per directory like .gitignore; often `cp .airflowignore \
.dagfsignore` with the glob syntax) or in scan.exclude";

impl ScanConfig {
    /// The scan options this section describes.
    pub fn options(&self) -> ScanOptions {
        ScanOptions {
            exclude: self.exclude.clone(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.airflowignore == Some(true) {
            return Err(ConfigError::Invalid(format!(
                "{AIRFLOWIGNORE_REMOVED}; then remove the key"
            )));
        }
        IgnoreFilter::new(&self.options())
            .map(drop)
            .map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.airflowignore.is_some() {
            warnings.push(format!(
                "{AIRFLOWIGNORE_REMOVED}; scan.airflowignore = false is what dagfs does now: remove the key"
            ));
        }
        if self.ignore_syntax.is_some() {
            warnings.push("scan.ignore_syntax was removed with scan.airflowignore (.dagfsignore is always gitignore syntax): remove the key".into());
        }
        warnings
    }
}

/// The `[publish]` section.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    /// Keep the plain mirror of the head generation under `mirror/`; unset: keep a mirror
    /// the store already has up to date, start none (`mirror::wanted`).
    pub mirror: Option<bool>,
    /// Objects uploaded at once.
    pub concurrency: usize,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            mirror: None,
            concurrency: 16,
        }
    }
}

/// The `[mount]` section.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MountConfig {
    /// Local verified cache of manifests and objects; unset: one per store under
    /// `/var/cache/dagfs` (root) or `$XDG_CACHE_HOME/dagfs`.
    pub cache_dir: Option<PathBuf>,
    /// How often the store is asked for a new head generation (one NameNode call each).
    #[serde(with = "humantime_serde")]
    pub poll: Duration,
    /// The poll interval while the store is changing: for `active_for` after a switch the
    /// mount polls this often instead of every `poll` (never slower than `poll`).
    #[serde(with = "humantime_serde")]
    pub poll_active: Duration,
    /// How long after a switch the mount keeps polling every `poll_active`; `0s` never does.
    #[serde(with = "humantime_serde")]
    pub active_for: Duration,
    /// Upper bound on any wait for the store inside a filesystem call (re-fetching an object
    /// missing from the cache); the call fails with EIO after it.
    #[serde(with = "humantime_serde")]
    pub fetch_timeout: Duration,
    /// How long the kernel caches entries and attributes (switches invalidate at once).
    #[serde(with = "humantime_serde")]
    pub kernel_ttl: Duration,
    /// Generations kept in the cache (the one served and those before it); objects no kept
    /// generation needs are evicted.
    pub keep_generations: usize,
    /// Generations served within this long are kept too (cache and `.dagfs/generations/`
    /// views), so a DAG processor that chose one at its last refresh, and tasks running it,
    /// keep finding it.
    #[serde(with = "humantime_serde")]
    pub keep_for: Duration,
    /// Threads serving kernel requests.
    pub threads: usize,
    /// Objects fetched at once before a switch.
    pub concurrency: usize,
    /// Address of the Prometheus endpoint (`/metrics`, `/healthz`); unset: none.
    pub metrics: Option<String>,
    /// How generations are served: a FUSE filesystem, or directories and a symlink.
    pub mode: MountMode,
    /// In link mode, how a generation directory gets its files from the cache.
    pub link_files: LinkFiles,
}

/// `mount.mode`: how `dagfs mount` serves generations.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MountMode {
    /// A read-only FUSE filesystem at the mountpoint (needs /dev/fuse).
    #[default]
    Fuse,
    /// No FUSE and no privileges: `DIR/.dagfs/generations/N` directories built from the
    /// cache and a symlink `DIR/current` swapped atomically (point `dags_folder` at it).
    Link,
}

/// `mount.link_files`: how link mode places a file of a generation directory.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LinkFiles {
    /// Hard links to the cache when running as root (the files are then root's and
    /// read-only, so no reader can write the cache through them), copies otherwise.
    #[default]
    Auto,
    /// Hard links to the cache, made read-only: only when every reader runs as another user
    /// than dagfs (a reader of the same user could make them writable again).
    Hardlink,
    /// Copies (reflinks on XFS/Btrfs): safe whoever reads.
    Copy,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            cache_dir: None,
            poll: Duration::from_secs(1),
            poll_active: Duration::from_millis(250),
            active_for: Duration::from_secs(600),
            fetch_timeout: Duration::from_secs(2),
            kernel_ttl: Duration::from_secs(10),
            keep_generations: 3,
            keep_for: Duration::from_secs(3600),
            threads: 4,
            concurrency: 16,
            metrics: None,
            mode: MountMode::Fuse,
            link_files: LinkFiles::Auto,
        }
    }
}

/// The `[store]` section.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Store URL: `hdfs://…`, `viewfs://…`, `file:///…` or a plain path.
    pub url: Option<String>,
    /// Upper bound on every HDFS call.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// HDFS user (simple authentication); unset follows `HADOOP_USER_NAME`.
    pub user: Option<String>,
    /// Directory with `core-site.xml`/`hdfs-site.xml`; unset follows `HADOOP_CONF_DIR`.
    pub hadoop_conf_dir: Option<PathBuf>,
    /// Kerberos principal; unset uses the ticket cache's default principal.
    pub kerberos_principal: Option<String>,
    /// Kerberos keytab; unset uses the ticket cache.
    pub kerberos_keytab: Option<PathBuf>,
    /// Hadoop properties overriding the configuration files, e.g.
    /// `"dfs.client.failover.max.attempts" = "3"`.
    pub hadoop: HashMap<String, String>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        let hdfs = HdfsOptions::default();
        StoreConfig {
            url: None,
            timeout: hdfs.timeout,
            user: None,
            hadoop_conf_dir: None,
            kerberos_principal: None,
            kerberos_keytab: None,
            hadoop: HashMap::new(),
        }
    }
}

impl StoreConfig {
    /// The HDFS client options this section describes.
    pub fn hdfs_options(&self) -> HdfsOptions {
        HdfsOptions {
            timeout: self.timeout,
            user: self.user.clone(),
            config_dir: self.hadoop_conf_dir.clone(),
            properties: self.hadoop.clone(),
            kerberos_principal: self.kerberos_principal.clone(),
            kerberos_keytab: self.kerberos_keytab.clone(),
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The `[log]` section.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Line format.
    pub format: LogFormat,
    /// Level or `tracing` filter directives, e.g. `info` or `info,hdfs_native=warn`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_string(),
        }
    }
}

/// Sections that `DAGFS_<SECTION>_<KEY>` variables map into. Other `DAGFS_*` variables (like
/// `DAGFS_CONFIG`) are not configuration keys.
const SECTIONS: &[&str] = &[
    "store", "scan", "publish", "mount", "sync", "log", "failover", "database",
];

/// Which file to read and what to lay over it.
#[derive(Clone, Debug, Default)]
pub struct ConfigSource {
    /// `--config`: a file that must exist. `None` reads [`DEFAULT_CONFIG_PATH`] if present.
    pub file: Option<PathBuf>,
    /// `--set section.key=value` overrides, in order.
    pub overrides: Vec<String>,
    /// Overrides from dedicated flags (`--log-format`...), as `(key, TOML value)`.
    pub flags: Vec<(&'static str, toml::Value)>,
}

impl Config {
    /// Loads the configuration from all layers; see the module documentation.
    pub fn load(source: &ConfigSource) -> Result<Config, ConfigError> {
        Self::load_with_env(source, std::env::vars())
    }

    /// As [`Config::load`], with the environment given explicitly (for tests).
    pub fn load_with_env(
        source: &ConfigSource,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        let file = match &source.file {
            Some(path) => Some(path.as_path()),
            None => Some(Path::new(DEFAULT_CONFIG_PATH)).filter(|p| p.exists()),
        };
        if let Some(path) = file {
            check_readable(path)?;
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(Layer {
            name: "DAGFS_* environment variables",
            table: env_table(env),
        });
        let mut flags = toml::Table::new();
        for assignment in &source.overrides {
            let (key, value) = parse_override(assignment)?;
            insert_dotted(&mut flags, &key, value);
        }
        for (key, value) in &source.flags {
            insert_dotted(&mut flags, key, value.clone());
        }
        figment = figment.merge(Layer {
            name: "command-line flags",
            table: flags,
        });
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(one_line(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Settings that still load but should be changed (removed keys), one line each; the CLI
    /// logs them once logging is set up.
    pub fn warnings(&self) -> Vec<String> {
        self.scan.warnings()
    }

    /// Checks what types alone cannot.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.publish.concurrency == 0 {
            return Err(ConfigError::Invalid(
                "publish.concurrency = 0: expected at least 1".into(),
            ));
        }
        let mount = &self.mount;
        for (key, value) in [
            ("mount.poll", mount.poll),
            ("mount.poll_active", mount.poll_active),
            ("mount.fetch_timeout", mount.fetch_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Invalid(format!(
                    "{key} = \"0s\": expected a duration greater than zero, e.g. \"1s\""
                )));
            }
        }
        for (key, value) in [
            ("mount.keep_generations", mount.keep_generations),
            ("mount.threads", mount.threads),
            ("mount.concurrency", mount.concurrency),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!(
                    "{key} = 0: expected at least 1"
                )));
            }
        }
        if self.store.timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "store.timeout = \"0s\": expected a duration greater than zero, e.g. \"30s\""
                    .into(),
            ));
        }
        self.failover.validate().map_err(ConfigError::Invalid)?;
        self.sync.validate()?;
        self.scan.validate()?;
        check_metrics_addr("mount.metrics", &self.mount.metrics)?;
        check_metrics_addr("failover.metrics", &self.failover.metrics)?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(ConfigError::Invalid(format!(
                "log.level = {:?}: {e}; expected a level (error, warn, info, debug, trace) or filter directives like \"info,hdfs_native=warn\"",
                self.log.level
            )));
        }
        Ok(())
    }
}

impl SyncConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("quiet_window", self.quiet_window),
            ("rescan_interval", self.rescan_interval),
            ("backoff_initial", self.backoff_initial),
        ];
        for (key, value) in positive {
            if value.is_zero() {
                return Err(ConfigError::Invalid(format!(
                    "sync.{key} = \"0s\": expected a duration greater than zero"
                )));
            }
        }
        let ordered = [
            (
                "max_delay",
                self.max_delay,
                "quiet_window",
                self.quiet_window,
            ),
            (
                "backoff_max",
                self.backoff_max,
                "backoff_initial",
                self.backoff_initial,
            ),
        ];
        for (key, value, lower, bound) in ordered {
            if value < bound {
                return Err(ConfigError::Invalid(format!(
                    "sync.{key} = \"{}\" is shorter than sync.{lower} = \"{}\"; make it at least as long",
                    humantime::format_duration(value),
                    humantime::format_duration(bound)
                )));
            }
        }
        check_metrics_addr("sync.metrics", &self.metrics)
    }
}

/// A `metrics` key holds a socket address, or nothing.
fn check_metrics_addr(key: &str, addr: &Option<String>) -> Result<(), ConfigError> {
    match addr {
        Some(addr) if addr.parse::<std::net::SocketAddr>().is_err() => {
            Err(ConfigError::Invalid(format!(
                "{key} = {addr:?}: expected an address like \"127.0.0.1:9464\" or \"[::]:9464\""
            )))
        }
        _ => Ok(()),
    }
}

fn check_readable(path: &Path) -> Result<(), ConfigError> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| ConfigError::Unreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// One named layer of overrides, so errors can say where a bad value came from.
struct Layer {
    name: &'static str,
    table: toml::Table,
}

impl figment::Provider for Layer {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(self.name)
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Serialized::defaults(&self.table).data()
    }
}

/// Sets `a.b.c = value` in `table`, creating the intermediate tables.
fn insert_dotted(table: &mut toml::Table, key: &str, value: toml::Value) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or(key);
    let mut current = table;
    for part in parts {
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(next) = entry else {
            unreachable!("just made a table");
        };
        current = next;
    }
    current.insert(last.to_string(), value);
}

/// `DAGFS_STORE_HADOOP_CONF_DIR=x` -> `store.hadoop_conf_dir = x`.
///
/// Written here rather than with figment's `Env` provider: a key's section is the text up to
/// the first `_` and only known sections count (`DAGFS_CONFIG`, `DAGFS_RUNTIME_DIR` and the
/// like are not keys), and the environment is a parameter, so tests pass one instead of
/// changing the process's (`Env` reads only the process environment).
fn env_table(env: impl IntoIterator<Item = (String, String)>) -> toml::Table {
    let mut table = toml::Table::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("DAGFS_") else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        match rest.split_once('_') {
            Some((section, key)) if SECTIONS.contains(&section) => {
                insert_dotted(&mut table, &format!("{section}.{key}"), parse_value(&value));
            }
            _ => {}
        }
    }
    table
}

/// Environment variables and `--set` values are TOML when they parse as such (`30`,
/// `true`, `"x"`), plain strings otherwise (`30s`, `/etc/hadoop/conf`).
fn parse_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn parse_override(assignment: &str) -> Result<(String, toml::Value), ConfigError> {
    let bad = || ConfigError::BadOverride(assignment.to_string());
    let (key, value) = assignment.split_once('=').ok_or_else(bad)?;
    let key = key.trim();
    if !key.contains('.') || key.split('.').any(str::is_empty) {
        return Err(bad());
    }
    Ok((key.to_string(), parse_value(value.trim())))
}

/// figment's first error on one line: the key, what was wrong with its value, and the file
/// or variable it came from.
fn one_line(err: figment::Error) -> String {
    let Some(first) = err.into_iter().next() else {
        return "unknown configuration error".to_string();
    };
    let mut line = first.kind.to_string();
    if line.ends_with("expected a duration") {
        line.push_str(" like \"30s\" or \"500ms\"");
    }
    if !first.path.is_empty() {
        line = format!("key '{}': {line}", first.path.join("."));
    }
    if let Some(metadata) = &first.metadata {
        let from = match &metadata.source {
            // figment shortens paths relative to the working directory; say what was given.
            Some(figment::Source::File(path)) => path.display().to_string(),
            Some(source) => source.to_string(),
            None => metadata.name.to_string(),
        };
        line.push_str(&format!(" (from {from})"));
    }
    line.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn load(text: &str, env: &[(&str, &str)], sets: &[&str]) -> Result<Config, ConfigError> {
        let f = file(text);
        let source = ConfigSource {
            file: Some(f.path().to_path_buf()),
            overrides: sets.iter().map(|s| s.to_string()).collect(),
            flags: vec![],
        };
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load_with_env(&source, env)
    }

    #[test]
    fn the_removed_airflowignore_setting_is_explained() {
        let err = load("[scan]\nairflowignore = true\n", &[], &[]).unwrap_err();
        let line = err.to_string();
        assert!(
            line.contains(".dagfsignore") && line.contains("remove the key"),
            "{line}"
        );
        // `false` is what dagfs does now: it loads, with a warning.
        let config = load(
            "[scan]\nairflowignore = false\nignore_syntax = \"glob\"\n",
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(config.warnings().len(), 2, "{:?}", config.warnings());
        assert!(load("", &[], &[]).unwrap().warnings().is_empty());

        let config = load("[scan]\nexclude = [\"data/\", \"*.env\"]\n", &[], &[]).unwrap();
        assert_eq!(config.scan.options().exclude, ["data/", "*.env"]);
        let err = load("[scan]\nexclude = ['x\\']\n", &[], &[]).unwrap_err();
        assert!(err.to_string().contains("scan.exclude"), "{err}");
    }

    #[test]
    fn defaults_when_file_is_empty() {
        let config = load("", &[], &[]).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.store.timeout, Duration::from_secs(30));
    }

    #[test]
    fn layers_file_then_env_then_flags() {
        let text =
            "[store]\nurl = \"hdfs://ns/a\"\ntimeout = \"5s\"\n[store.hadoop]\n\"dfs.x\" = \"1\"\n";
        let config = load(
            text,
            &[("DAGFS_STORE_TIMEOUT", "7s"), ("DAGFS_CONFIG", "/x")],
            &[],
        )
        .unwrap();
        assert_eq!(config.store.url.as_deref(), Some("hdfs://ns/a"));
        assert_eq!(config.store.timeout, Duration::from_secs(7));
        assert_eq!(config.store.hadoop["dfs.x"], "1");
        let config = load(
            text,
            &[("DAGFS_STORE_TIMEOUT", "7s")],
            &["store.timeout=9s", "log.format=json"],
        )
        .unwrap();
        assert_eq!(config.store.timeout, Duration::from_secs(9));
        assert_eq!(config.log.format, LogFormat::Json);
        let config = load(
            text,
            &[("DAGFS_STORE_HADOOP_CONF_DIR", "/etc/hadoop/conf")],
            &[],
        )
        .unwrap();
        assert_eq!(
            config.store.hadoop_conf_dir,
            Some(PathBuf::from("/etc/hadoop/conf"))
        );
    }

    #[test]
    fn wrong_type_names_key_value_and_expectation() {
        let err = load("[store]\ntimeout = 30\n", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("store.timeout"), "{err}");
        assert!(err.contains("30"), "{err}");
        assert!(err.contains("expected"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        // (file, environment, what the one-line error must name)
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: [Case; 6] = [
            ("[store]\ntimout = \"1s\"\n", &[], &["timout"]),
            ("", &[("DAGFS_LOG_FORMAT", "xml")], &["log.format", "xml"]),
            ("[store]\ntimeout = \"0s\"\n", &[], &["store.timeout"]),
            ("[sync]\nmax_delay = \"50ms\"\n", &[], &["sync.max_delay"]),
            (
                "",
                &[("DAGFS_SYNC_METRICS", "localhost")],
                &["sync.metrics"],
            ),
            ("[log]\nlevel = \"loud[\"\n", &[], &["log.level"]),
        ];
        for (file, env, named) in cases {
            let err = load(file, env, &[]).unwrap_err().to_string();
            assert!(named.iter().all(|n| err.contains(n)), "{err}");
        }
        assert!(matches!(
            load("", &[], &["timeout"]),
            Err(ConfigError::BadOverride(_))
        ));
        assert!(matches!(
            load("[store", &[], &[]),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn unsafe_failover_timing_is_refused() {
        let config = load("", &[], &[]).unwrap();
        assert!(config.failover.validate().is_ok());
        let err = load("[failover]\ntakeover_after = \"20s\"\n", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("takeover_after") && err.contains("27s"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
        let err = load("", &[], &["failover.fence_after=15s"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("fence_after"), "{err}");
        let fast = "[failover]\ninterval = \"1s\"\nfence_after = \"3s\"\nkill_grace = \"1s\"\nsafety_margin = \"1s\"\ntakeover_after = \"5s\"\n";
        assert!(load(fast, &[], &[]).is_ok());
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let source = ConfigSource {
            file: Some("/nonexistent/dagfs.toml".into()),
            ..Default::default()
        };
        let err = Config::load_with_env(&source, []).unwrap_err().to_string();
        assert!(
            err.contains("/nonexistent/dagfs.toml") && err.contains("--config"),
            "{err}"
        );
    }

    /// `packaging/dagfs.toml.example` loads once its example lines are uncommented, and
    /// mentions every key the configuration has.
    #[test]
    fn example_file_documents_every_key() {
        let example = include_str!("../../packaging/dagfs.toml.example");
        let uncommented: String = example
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest)
                    if rest
                        .split_once(" = ")
                        .is_some_and(|(k, _)| !k.contains(' ')) =>
                {
                    rest
                }
                _ => line,
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let config = load(&uncommented, &[], &[]).unwrap();
        assert_eq!(
            config.store.url.as_deref(),
            Some("hdfs://prod-ns/airflow/dagfs")
        );
        assert_eq!(config.store.hadoop.len(), 4);

        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for (section, keys) in &defaults {
            assert!(
                example.contains(&format!("[{section}]")),
                "[{section}] undocumented"
            );
            for key in keys.as_table().unwrap().keys() {
                assert!(
                    example.contains(&format!("# {key} = "))
                        || example.contains(&format!("[{section}.{key}]")),
                    "{section}.{key} undocumented"
                );
            }
        }
        for key in [
            "url",
            "user",
            "hadoop_conf_dir",
            "kerberos_principal",
            "kerberos_keytab",
        ] {
            assert!(
                example.contains(&format!("# {key} = ")),
                "store.{key} undocumented"
            );
        }
    }
}
