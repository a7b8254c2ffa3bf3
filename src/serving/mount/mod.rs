//! `dagfs mount`: serves the committed generation of a store as a read-only FUSE filesystem.
//!
//! The filesystem itself lives in the `dagfs-fuse` crate; this module feeds it: it picks the
//! generation (the head, or a pinned one), makes every object of it present in the verified
//! [`Cache`], mounts, then polls the store and switches atomically whenever a new head is
//! fully cached. Reads are served from the cache only, so the mount keeps serving (and
//! starts, after a reboot) while the store is down. After every poll it writes its
//! [`state`] for `dagfs failover`, `dagfs status` and the Airflow bundle.
//!
//! - [`state`]: the state file other commands read (served generation, head, errors);
//! - [`metrics`]: its Prometheus metrics;
//! - [`link`]: link mode (`mount.mode = "link"`), the same loop serving directories and a
//!   symlink instead of a FUSE filesystem.

pub mod link;
pub mod metrics;
mod shown;
pub mod state;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dagfs_fuse::fuse::{FuseOptions, Mounted};
use dagfs_fuse::{ContentId, ContentSource, DagFs, FileSpec, TreeLabel};

use crate::cache::{Cache, CacheError};
use crate::config::{MountConfig, MountMode};
use crate::format::{Digest, Manifest};
use crate::generations;
use crate::metrics::{Health, KindLabels};
use crate::store::{Store, StoreError};
use metrics::MountMetrics;
use state::{MountState, StateDir, ViewState};

/// Why the mount could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mountpoint is unusable.
    #[error("mountpoint {path}: {detail}")]
    Mountpoint {
        /// The mountpoint.
        path: PathBuf,
        /// What is wrong and what to do.
        detail: String,
    },
    /// Nothing to serve: the store cannot be read and the cache holds no complete generation.
    #[error("cannot serve anything: the store cannot be read ({reason}) and the cache {cache} holds no complete generation; start the mount once while HDFS is readable")]
    NothingToServe {
        /// Why the store failed.
        reason: String,
        /// The cache directory.
        cache: PathBuf,
    },
    /// The store lists no generation although the mount serves one: gc never deletes the
    /// head, so the root was deleted, replaced or is the wrong one. The mount keeps serving.
    #[error("the store lists no generations any more (it served {served}); was its root deleted or replaced? still serving generation {served}")]
    GenerationsVanished {
        /// The generation served.
        served: u64,
    },
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The kernel refused the mount.
    #[error("cannot mount at {path}: {source}; is fuse3 installed (`fusermount3`) and /dev/fuse available?")]
    Fuse {
        /// The mountpoint.
        path: PathBuf,
        /// The kernel's or fusermount3's error.
        source: std::io::Error,
    },
    /// A manifest does not form a tree (files and directories of one name).
    #[error("generation {generation} cannot be mounted: {detail}")]
    Tree {
        /// The generation.
        generation: u64,
        /// Why.
        detail: String,
    },
}

impl MountError {
    /// A short name of what went wrong, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            MountError::Store(e) => e.kind().name(),
            MountError::Cache(CacheError::Store(e)) => e.kind().name(),
            MountError::Cache(CacheError::Corrupt { .. }) => "corrupt",
            MountError::Cache(_) => "cache",
            MountError::Tree { .. } | MountError::GenerationsVanished { .. } => "tree",
            MountError::Mountpoint { .. } | MountError::Fuse { .. } => "mount",
            MountError::NothingToServe { .. } => "unavailable",
        }
    }
}

/// What to mount, where and how.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// The mountpoint.
    pub mountpoint: PathBuf,
    /// The verified cache directory.
    pub cache_dir: PathBuf,
    /// Serve this generation and do not follow the head.
    pub pin: Option<u64>,
    /// Let other users read the mount.
    pub allow_other: bool,
    /// The `[mount]` configuration (poll interval, timeouts...).
    pub config: MountConfig,
    /// Where the state file goes.
    pub state_dir: StateDir,
    /// Where the metrics go (served on `--metrics` when given).
    pub metrics: MountMetrics,
    /// What `/healthz` says (see [`health_problem`]).
    pub health: Health,
}

/// The default cache directory for `url`: one per store under `/var/cache/dagfs` for root,
/// else under the user's cache directory.
pub fn default_cache_dir(url: &str) -> PathBuf {
    let name = format!("mount-{}", &Digest::of(url.as_bytes()).to_string()[..16]);
    let base = if rustix::process::getuid().is_root() {
        Some(PathBuf::from("/var/cache/dagfs"))
    } else {
        crate::host::user_cache_dir()
    };
    base.unwrap_or_else(|| std::env::temp_dir().join("dagfs-cache"))
        .join(name)
}

/// Serves file bytes from the cache; an object missing there (the cache directory was
/// cleaned under a running mount) is fetched again, waiting at most `fetch_timeout`.
struct CacheSource {
    cache: Cache,
    /// Where the mount is (what it showed is recorded per mountpoint).
    mountpoint: PathBuf,
    store: Arc<dyn Store>,
    runtime: tokio::runtime::Handle,
    fetch_timeout: Duration,
    metrics: MountMetrics,
}

impl ContentSource for CacheSource {
    fn open(&self, content: &ContentId, size: u64) -> std::io::Result<File> {
        let digest = Digest::from(content.0);
        let path = self.cache.object_path(&digest);
        self.metrics.cache_reads.inc();
        match File::open(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => return other.and_then(|file| of_length(file, &digest, size)),
        }
        self.metrics.cache_misses.inc();
        tracing::warn!(object = %digest, size, "object missing from the cache; fetching it again");
        let fetch = tokio::time::timeout(
            self.fetch_timeout,
            self.cache.fetch_object(self.store.as_ref(), &digest),
        );
        match self.runtime.block_on(fetch) {
            Ok(Ok(_)) => File::open(&path).and_then(|file| of_length(file, &digest, size)),
            Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "fetching object {digest} took longer than {:?}",
                    self.fetch_timeout
                ),
            )),
        }
    }

    fn record_shown(&self, shown: &dagfs_fuse::Shown) -> std::io::Result<()> {
        shown::record(&self.cache, &self.mountpoint, shown)
    }
}

/// `file` if it has exactly the `size` bytes the manifest promises: a reader must never get
/// a prefix of the content (or a prefix of other bytes) as the whole file.
fn of_length(file: File, digest: &Digest, size: u64) -> std::io::Result<File> {
    let len = file.metadata()?.len();
    if len == size {
        return Ok(file);
    }
    tracing::error!(object = %digest, len, size, "the generation records another size than its content has; reading the file fails (publish it again)");
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("object {digest} has {len} bytes, the generation records {size}"),
    ))
}

fn tree_of(manifest: Option<&Manifest>) -> (TreeLabel, Vec<FileSpec>) {
    let Some(manifest) = manifest else {
        return (TreeLabel::default(), Vec::new());
    };
    let files = manifest
        .entries
        .iter()
        .map(|e| FileSpec {
            path: e.path.clone(),
            mode: e.mode,
            size: e.size,
            mtime_ns: e.mtime_ns,
            content: ContentId(*e.blake3.as_bytes()),
        })
        .collect();
    let label = TreeLabel {
        generation: manifest.generation,
        tree_id: manifest.tree_id.to_string(),
    };
    (label, files)
}

/// Makes sure `mountpoint` can be mounted: a directory, not served by a live dagfs mount; a
/// dead FUSE mount left by a crashed process ("Transport endpoint is not connected") is
/// unmounted first. In link mode the directory is created if missing.
fn prepare_mountpoint(
    mountpoint: &Path,
    states: &StateDir,
    mode: MountMode,
) -> Result<(), MountError> {
    let bad = |detail: String| MountError::Mountpoint {
        path: mountpoint.to_path_buf(),
        detail,
    };
    if let Ok(state) = states.read(mountpoint) {
        return Err(bad(format!(
            "already served by dagfs mount pid {} (generation {:?}); stop it first",
            state.pid, state.generation
        )));
    }
    if mode == MountMode::Link {
        return std::fs::create_dir_all(mountpoint).map_err(|e| bad(e.to_string()));
    }
    match std::fs::metadata(mountpoint) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(bad(
            "not a directory; create an empty directory to mount on".into(),
        )),
        Err(e) if e.raw_os_error() == Some(libc_enotconn()) => {
            tracing::warn!(mountpoint = %mountpoint.display(), "replacing a dead mount left by a crashed process");
            let status = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(mountpoint)
                .status();
            match status {
                Ok(s) if s.success() => Ok(()),
                _ => Err(bad(
                    "a dead FUSE mount is in the way and `fusermount3 -u -z` failed; unmount it by hand (umount -l)".into(),
                )),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(bad(
            "does not exist; create an empty directory to mount on".into(),
        )),
        Err(e) => Err(bad(e.to_string())),
    }
}

/// `ENOTCONN`, the error of every call on a FUSE mount whose process died.
fn libc_enotconn() -> i32 {
    rustix::io::Errno::NOTCONN.raw_os_error()
}

/// The mount's running state between polls.
struct Served {
    manifest: Option<Manifest>,
    /// Files of the served generation that read as EIO, as `path: why`.
    unservable: Vec<String>,
    state: MountState,
    /// When each generation served before stopped being served (for `mount.keep_for`).
    left: BTreeMap<u64, Instant>,
}

impl Served {
    fn generation(&self) -> Option<u64> {
        self.manifest.as_ref().map(|m| m.generation)
    }
}

/// Why `/healthz` answers 503, if it does. The mount is unhealthy while
///
/// 1. its last poll failed (the store cannot be listed or read, a fetch failed, the store
///    lost its generations): it keeps serving the generation it has, which may be behind;
/// 2. the generation it serves has files it cannot serve (corrupt in the store, or a
///    content of another length than recorded), which read as EIO.
pub fn health_problem(
    last_poll: Option<&str>,
    generation: Option<u64>,
    unservable: &[String],
) -> Option<String> {
    let served = generation.map_or_else(|| "nothing".to_string(), |g| format!("generation {g}"));
    if let Some(error) = last_poll {
        return Some(format!("poll failed, still serving {served}: {error}"));
    }
    if let Some(first) = unservable.first() {
        return Some(format!(
            "{served} has {} file(s) that read as EIO, e.g. {first}",
            unservable.len()
        ));
    }
    None
}

/// Whether a failure to reach the head at start should fall back to the cache: the store
/// cannot be read (unreachable, timing out, or refusing us: an expired Kerberos ticket at
/// boot), which is the case the cache exists for.
fn store_unreadable(error: &MountError) -> Option<&StoreError> {
    let store = match error {
        MountError::Store(e)
        | MountError::Cache(CacheError::Store(e))
        | MountError::Cache(CacheError::Generation(crate::generations::GenerationError::Store(
            e,
        ))) => e,
        _ => return None,
    };
    let kind = store.kind();
    (kind.is_transient() || kind == crate::store::ErrorKind::PermissionDenied).then_some(store)
}

/// A generation made present in the cache, and the files of it that read as EIO.
type Fetched = (Manifest, Vec<String>);

/// Picks and caches the first generation: the pinned one, or the head; with the store
/// unreadable, the newest complete generation in the cache.
async fn first_generation(
    store: &dyn Store,
    cache: &Cache,
    options: &MountOptions,
) -> Result<(Option<Fetched>, Option<u64>, Option<String>), MountError> {
    let concurrency = options.config.concurrency;
    let online = async {
        let head = generations::head(store).await?;
        let fetched = match options.pin.or(head) {
            Some(generation) => Some(fetch(cache, store, generation, concurrency).await?),
            None => None,
        };
        Ok::<_, MountError>((fetched, head))
    };
    let error = match online.await {
        Ok((fetched, head)) => return Ok((fetched, head, None)),
        Err(e) => e,
    };
    let Some(cause) = store_unreadable(&error) else {
        return Err(error);
    };
    let cached = match options.pin {
        Some(pin) => cache.load_manifest(pin)?.filter(|m| {
            m.entries
                .iter()
                .all(|e| cache.has_object(&e.blake3, e.size))
        }),
        None => cache.latest_complete()?,
    };
    let Some(manifest) = cached else {
        return Err(MountError::NothingToServe {
            reason: cause.to_string(),
            cache: cache.root().to_path_buf(),
        });
    };
    tracing::warn!(generation = manifest.generation, error = %cause,
        "store unreadable: serving the last known generation from the cache; it switches once the store is back");
    Ok((Some((manifest, Vec::new())), None, Some(cause.to_string())))
}

/// Caches `generation`; files that cannot be served (corrupt in the store, or a content of
/// another length than recorded) are logged loudly and served as EIO (their bytes are
/// fetched and verified again on every open).
async fn fetch(
    cache: &Cache,
    store: &dyn Store,
    generation: u64,
    concurrency: usize,
) -> Result<Fetched, MountError> {
    let cached = cache
        .fetch_generation(store, generation, concurrency)
        .await?;
    if !cached.corrupt.is_empty() {
        tracing::error!(generation, files = ?cached.corrupt,
            "these files cannot be served and read as EIO; `dagfs verify --store URL --deep` names their objects");
    }
    Ok((cached.manifest, cached.corrupt))
}

/// What the poll loop serves generations through: the FUSE filesystem ([`Fuse`]), or link
/// mode's directories and symlink ([`link::LinkTree`]).
trait Serving {
    /// Makes `manifest` (`None`: the store is empty) the generation served; `unservable`
    /// are its files that read as EIO. Blocking.
    fn switch(&self, manifest: Option<&Manifest>, unservable: &[String]) -> Result<(), MountError>;
    /// Shows every complete generation of `cache` under `.dagfs/generations/` and returns
    /// them for the state file. Blocking.
    fn show_views(&self, cache: &Cache) -> Vec<ViewState>;
    /// Whether someone ended it from outside (`fusermount3 -u`).
    fn ended_outside(&self) -> bool;
}

/// The FUSE filesystem and its kernel session.
struct Fuse {
    fs: Arc<DagFs<CacheSource>>,
    mounted: Mounted,
}

impl Serving for Fuse {
    fn switch(
        &self,
        manifest: Option<&Manifest>,
        _unservable: &[String],
    ) -> Result<(), MountError> {
        let (label, files) = tree_of(manifest);
        let generation = label.generation;
        let report = self
            .fs
            .switch(label, &files, &self.mounted.invalidator())
            .map_err(|e| MountError::Tree {
                generation,
                detail: e.to_string(),
            })?;
        tracing::debug!(
            generation,
            entries_invalidated = report.entries_invalidated,
            dirs_invalidated = report.dirs_invalidated,
            "kernel caches invalidated"
        );
        Ok(())
    }

    fn show_views(&self, cache: &Cache) -> Vec<ViewState> {
        show_cached_views(cache, &self.fs, &self.mounted)
    }

    fn ended_outside(&self) -> bool {
        self.mounted.is_finished()
    }
}

/// Runs the mount until `shutdown` resolves or someone unmounts it; then unmounts and removes
/// the state file. In link mode (`mount.mode = "link"`) the tree is left in place.
pub async fn run(
    store: Arc<dyn Store>,
    options: MountOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), MountError> {
    let mountpoint = state::absolute_mountpoint(&options.mountpoint);
    let mode = options.config.mode;
    prepare_mountpoint(&mountpoint, &options.state_dir, mode)?;
    // Own the mountpoint's state file before mounting: a second mount racing this one is
    // refused here rather than stacked on top.
    options
        .state_dir
        .claim(&mountpoint)
        .map_err(|e| MountError::Mountpoint {
            path: mountpoint.clone(),
            detail: format!("{e}; stop the other dagfs mount first"),
        })?;
    let cache = Cache::open(&options.cache_dir)?;
    let (fetched, head, error) = first_generation(store.as_ref(), &cache, &options).await?;
    let (manifest, unservable) = match fetched {
        Some((manifest, unservable)) => (Some(manifest), unservable),
        None => (None, Vec::new()),
    };
    let mut state = MountState::started(
        mountpoint.clone(),
        store.url().to_string(),
        options.config.poll,
    );
    state.set_served(manifest.as_ref());
    state.head = head;
    state.pinned = options.pin;
    match error {
        None => state.poll_succeeded(),
        Some(error) => state.poll_failed(error),
    }
    let first = Served {
        state,
        manifest,
        unservable,
        left: BTreeMap::new(),
    };
    if mode == MountMode::Link {
        let tree = tokio::task::block_in_place(|| {
            let tree = link::LinkTree::open(&mountpoint, cache.clone(), options.config.link_files)?;
            tree.switch(first.manifest.as_ref(), &first.unservable)?;
            Ok::<_, MountError>(tree)
        })?;
        serve(&tree, &store, &cache, &options, first, shutdown).await;
        tracing::info!(dir = %mountpoint.display(), "stopped; the generation directories and the link stay for their readers");
        return Ok(());
    }

    let (label, files) = tree_of(first.manifest.as_ref());
    let source = CacheSource {
        cache: cache.clone(),
        mountpoint: mountpoint.clone(),
        store: Arc::clone(&store),
        runtime: tokio::runtime::Handle::current(),
        fetch_timeout: options.config.fetch_timeout,
        metrics: options.metrics.clone(),
    };
    let fs_options = dagfs_fuse::MountOptions {
        ttl: options.config.kernel_ttl,
        uid: rustix::process::getuid().as_raw(),
        gid: rustix::process::getgid().as_raw(),
        shown_before: shown::before(&cache, &mountpoint),
    };
    let generation = label.generation;
    let fs = DagFs::new(source, fs_options, label, &files).map_err(|e| MountError::Tree {
        generation,
        detail: e.to_string(),
    })?;
    let loader_cache = cache.clone();
    fs.set_view_loader(Box::new(move |label| {
        match loader_cache.load_manifest(label.generation) {
            Ok(Some(manifest)) if manifest.tree_id.to_string() == label.tree_id => {
                Ok(tree_of(Some(&manifest)).1)
            }
            Ok(_) => Err(format!(
                "generation {} (tree {}) is no longer in the cache",
                label.generation, label.tree_id
            )),
            Err(e) => Err(e.to_string()),
        }
    }));
    let fs = Arc::new(fs);
    let fuse_options = FuseOptions {
        allow_other: options.allow_other,
        threads: options.config.threads,
        fs_name: format!("dagfs:{}", store.url()),
    };
    let mounted =
        dagfs_fuse::fuse::mount(Arc::clone(&fs), &mountpoint, &fuse_options).map_err(|source| {
            MountError::Fuse {
                path: mountpoint.clone(),
                source,
            }
        })?;
    let fuse = Fuse { fs, mounted };
    if serve(&fuse, &store, &cache, &options, first, shutdown).await {
        tracing::info!(mountpoint = %mountpoint.display(), "unmounted from outside; exiting");
        return Ok(());
    }
    let mounted = fuse.mounted;
    let unmount = tokio::task::spawn_blocking(move || mounted.unmount());
    match unmount.await.expect("unmount does not panic") {
        Ok(()) => tracing::info!(mountpoint = %mountpoint.display(), "unmounted"),
        Err(e) => {
            // Busy (a process has its cwd or a file open there): detach it lazily.
            tracing::warn!(error = %e, "unmount failed; detaching the mount lazily");
            let _ = std::process::Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&mountpoint)
                .status();
        }
    }
    Ok(())
}

/// Serves through `serving` from the first generation (`served`) until `shutdown` resolves
/// or the mount is ended from outside (returns whether it was); removes the state file.
async fn serve(
    serving: &impl Serving,
    store: &Arc<dyn Store>,
    cache: &Cache,
    options: &MountOptions,
    mut served: Served,
    shutdown: impl std::future::Future<Output = ()>,
) -> bool {
    served.state.views = tokio::task::block_in_place(|| serving.show_views(cache));
    let files = served.manifest.as_ref().map_or(0, |m| m.entries.len());
    tracing::info!(mountpoint = %served.state.mountpoint.display(), mode = ?options.config.mode,
        generation = ?served.generation(), files, files_cached_in = %cache.root().display(), "mounted");
    write_state(&options.state_dir, &mut served.state);
    report_health(&options.health, &served);
    options
        .metrics
        .set_generations(served.generation(), served.state.head);
    options.metrics.online.set(i64::from(served.state.online));
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    sync_cache(cache).await;

    let ended_outside = poll_loop(store, cache, serving, options, &mut served, shutdown).await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    if let Err(e) = options.state_dir.remove(&served.state.mountpoint) {
        tracing::warn!(error = %e, "cannot remove the mount state file");
    }
    ended_outside
}

/// Puts the objects of the generation just served on disk, after serving it (see
/// [`Cache::sync`]); a failure is logged: the next switch tries again, and after a power
/// loss the next process checks every object before it serves it.
async fn sync_cache(cache: &Cache) {
    if let Err(e) = cache.sync().await {
        tracing::warn!(error = %e, "cannot sync the cache to disk");
    }
}

/// Sets `/healthz` from the state of the mount (see [`health_problem`]).
fn report_health(health: &Health, served: &Served) {
    match health_problem(
        served.state.last_error.as_deref(),
        served.generation(),
        &served.unservable,
    ) {
        Some(problem) => health.set_unhealthy(problem),
        None => health.set_healthy(),
    }
}

fn write_state(states: &StateDir, state: &mut MountState) {
    state.updated_ms = crate::runtime::now_ms();
    if let Err(e) = states.write(state) {
        tracing::warn!(error = %e, "cannot write the mount state file");
    }
}

/// Polls until shutdown; returns whether the mount ended from outside (`fusermount3 -u`).
async fn poll_loop(
    store: &Arc<dyn Store>,
    cache: &Cache,
    serving: &impl Serving,
    options: &MountOptions,
    served: &mut Served,
    shutdown: impl std::future::Future<Output = ()>,
) -> bool {
    let watchdog = sd_notify::watchdog_enabled();
    tokio::pin!(shutdown);
    let mut next = tokio::time::Instant::now();
    let mut last_switch: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = &mut shutdown => return false,
            _ = tokio::time::sleep_until(next) => {}
        }
        let before = served.generation();
        next = tokio::time::Instant::now() + poll_interval(&options.config, last_switch);
        if serving.ended_outside() {
            return true;
        }
        if watchdog.is_some() {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        }
        let result = poll_once(store.as_ref(), cache, serving, options, served).await;
        if served.generation() != before {
            last_switch = Some(Instant::now());
            next = tokio::time::Instant::now() + poll_interval(&options.config, last_switch);
        }
        let metrics = &options.metrics;
        metrics.set_generations(served.generation(), served.state.head);
        let state = &mut served.state;
        match result {
            Ok(()) => {
                if !state.online {
                    tracing::info!(generation = ?state.generation, "store reachable again");
                }
                state.poll_succeeded();
            }
            Err(e) => {
                let line = e.to_string();
                if state.last_error.as_deref() != Some(&line) {
                    tracing::warn!(error = %line, generation = ?state.generation,
                        "poll failed; still serving the current generation from the cache");
                }
                // Any failed poll: a store that answers but refuses (an expired ticket),
                // lists nothing or serves a corrupt head is no more usable than one that is
                // down, and the failover gate must treat the mount as behind.
                state.poll_failed(line);
                metrics
                    .errors
                    .get_or_create(&KindLabels { kind: e.kind() })
                    .inc();
            }
        }
        metrics.online.set(i64::from(state.online));
        write_state(&options.state_dir, state);
        report_health(&options.health, served);
    }
}

/// The wait before the next poll: `poll_active` within `active_for` of the last switch (an
/// author is saving: the next change is likely soon), `poll` otherwise, so an idle mount
/// costs one NameNode call per `poll`.
fn poll_interval(config: &MountConfig, last_switch: Option<Instant>) -> Duration {
    match last_switch {
        Some(at) if at.elapsed() < config.active_for => config.poll_active.min(config.poll),
        _ => config.poll,
    }
}

/// One poll: read the head; if the mount should serve another generation, cache all of it,
/// switch, evict what no kept generation needs.
async fn poll_once(
    store: &dyn Store,
    cache: &Cache,
    serving: &impl Serving,
    options: &MountOptions,
    served: &mut Served,
) -> Result<(), MountError> {
    let head = generations::head(store).await?;
    served.state.head = head;
    if let (None, Some(served)) = (head, served.generation()) {
        return Err(MountError::GenerationsVanished { served });
    }
    let target = options.pin.or(head);
    if target == served.generation() {
        if let (Some(generation), false) = (target, served.unservable.is_empty()) {
            // Someone may have put the right bytes back: fetch what is missing again.
            let (_, unservable) =
                fetch(cache, store, generation, options.config.concurrency).await?;
            served.unservable = unservable;
        }
        return Ok(());
    }
    let started = Instant::now();
    let (manifest, unservable) = match target {
        Some(generation) => {
            let (manifest, unservable) =
                fetch(cache, store, generation, options.config.concurrency).await?;
            (Some(manifest), unservable)
        }
        None => (None, Vec::new()),
    };
    let fetched = started.elapsed();
    tokio::task::block_in_place(|| serving.switch(manifest.as_ref(), &unservable))?;
    tracing::info!(
        generation = ?manifest.as_ref().map(|m| m.generation),
        previous = ?served.generation(),
        files = manifest.as_ref().map_or(0, |m| m.entries.len()),
        fetch_ms = fetched.as_millis() as u64,
        switch_ms = (started.elapsed() - fetched).as_millis() as u64,
        "switched to a new generation"
    );
    options.metrics.switches.inc();
    options
        .metrics
        .switch_seconds
        .observe(started.elapsed().as_secs_f64());
    sync_cache(cache).await;
    if let Some(previous) = served.generation() {
        served.left.insert(previous, Instant::now());
    }
    served.state.set_served(manifest.as_ref());
    served.manifest = manifest;
    served.unservable = unservable;
    if let Some(generation) = served.generation() {
        let keep_for = options.config.keep_for;
        served.left.retain(|_, left| left.elapsed() <= keep_for);
        let keep = keep_count(
            cache,
            generation,
            &served.left,
            options.config.keep_generations,
        );
        match cache.evict(generation, keep) {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "evicted objects no kept generation needs"),
            Err(e) => tracing::warn!(error = %e, "cache eviction failed"),
        }
    }
    served.state.views = tokio::task::block_in_place(|| serving.show_views(cache));
    Ok(())
}

/// How many cached generations up to `served` to keep: `keep_generations`, or more to cover
/// every generation served within `mount.keep_for` (those still in `left`).
fn keep_count(
    cache: &Cache,
    served: u64,
    left: &BTreeMap<u64, Instant>,
    keep_generations: usize,
) -> usize {
    let Some(&oldest) = left.keys().next() else {
        return keep_generations;
    };
    let cached = cache.generations().unwrap_or_default();
    let recent = cached
        .iter()
        .filter(|&&g| g >= oldest && g <= served)
        .count();
    recent.max(keep_generations)
}

/// Shows every complete generation of the cache under `.dagfs/generations/` and returns them
/// for the state file. A generation whose objects are not all cached is left out (its files
/// could not be read without the store). A generation already shown is not read again: its
/// manifest and objects stay in the cache as long as it is kept.
fn show_cached_views(cache: &Cache, fs: &DagFs<CacheSource>, mounted: &Mounted) -> Vec<ViewState> {
    let shown: BTreeMap<u64, TreeLabel> = fs
        .views()
        .into_iter()
        .map(|label| (label.generation, label))
        .collect();
    let mut trees = Vec::new();
    let generations = cache.generations().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot list the cached generations");
        Vec::new()
    });
    for generation in generations {
        if let Some(label) = shown.get(&generation) {
            // set_views keeps a view shown with the same label without looking at its files.
            trees.push((label.clone(), Vec::new()));
            continue;
        }
        match cache.load_manifest(generation) {
            Ok(Some(manifest))
                if manifest
                    .entries
                    .iter()
                    .all(|e| cache.has_object(&e.blake3, e.size)) =>
            {
                trees.push(tree_of(Some(&manifest)));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(generation, error = %e, "cannot read a cached manifest"),
        }
    }
    let views: Vec<ViewState> = trees
        .iter()
        .map(|(label, _)| ViewState {
            generation: label.generation,
            tree_id: label.tree_id.clone(),
        })
        .collect();
    let invalidator = mounted.invalidator();
    match tokio::task::block_in_place(|| fs.set_views(trees, &invalidator)) {
        Ok(()) => views,
        Err(e) => {
            tracing::error!(error = %e, "cannot show the cached generations under .dagfs/generations");
            fs.views()
                .into_iter()
                .map(|l| ViewState {
                    generation: l.generation,
                    tree_id: l.tree_id,
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle mount polls every `poll` (one NameNode call each); for `active_for` after a
    /// switch it polls every `poll_active`, never slower than `poll`.
    #[test]
    fn a_mount_polls_faster_only_for_a_while_after_a_switch() {
        let config = MountConfig {
            poll: Duration::from_secs(1),
            poll_active: Duration::from_millis(250),
            active_for: Duration::from_secs(60),
            ..MountConfig::default()
        };
        let ms = |d: Duration| d.as_millis();
        assert_eq!(ms(poll_interval(&config, None)), 1000);
        assert_eq!(ms(poll_interval(&config, Some(Instant::now()))), 250);
        let long_ago = Instant::now().checked_sub(Duration::from_secs(61));
        if let Some(long_ago) = long_ago {
            assert_eq!(ms(poll_interval(&config, Some(long_ago))), 1000);
        }
        let never = MountConfig {
            active_for: Duration::ZERO,
            ..config.clone()
        };
        assert_eq!(ms(poll_interval(&never, Some(Instant::now()))), 1000);
        let slow_active = MountConfig {
            poll_active: Duration::from_secs(5),
            ..config
        };
        assert_eq!(ms(poll_interval(&slow_active, Some(Instant::now()))), 1000);
    }

    /// The FUSE `open` path never hands out an object whose length is not the entry's size
    /// (the kernel would serve a prefix, or bytes past the content, as the whole file).
    #[test]
    fn open_refuses_an_object_of_another_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("object");
        std::fs::write(&path, "print('long version')").unwrap();
        let digest = Digest::of(b"print('long version')");
        let open = |size| of_length(File::open(&path).unwrap(), &digest, size);
        assert!(open(21).is_ok());
        let err = open(5).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(
            err.to_string().contains("the generation records 5"),
            "{err}"
        );
    }

    #[test]
    fn health_names_each_unhealthy_condition() {
        assert_eq!(health_problem(None, Some(3), &[]), None);
        let poll = health_problem(Some("store unavailable"), Some(3), &[]).unwrap();
        assert!(
            poll.contains("poll failed") && poll.contains("generation 3"),
            "{poll}"
        );
        let eio = health_problem(None, Some(3), &["b.py: corrupt".into()]).unwrap();
        assert!(eio.contains("EIO") && eio.contains("b.py"), "{eio}");
    }
}
