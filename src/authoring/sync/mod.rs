//! `dagfs sync`: the authoring-host daemon. It watches a DAG folder and publishes every
//! change as a new generation (docs/DESIGN.md, "Sync daemon").
//!
//! The loop: the [`Watcher`] feeds a [`Debouncer`]; when a batch is due (quiet window
//! elapsed, or the maximum delay reached) the daemon scans the whole folder (stat calls only
//! for unchanged files, thanks to the [`HashCache`]), keeps back files that are not yet
//! stable, and publishes the rest with [`publish::publish`]. Because every attempt starts from
//! a fresh scan, a failed or abandoned attempt loses nothing: the next one publishes whatever
//! the folder holds then, and a change already committed is never committed again (publish
//! compares with the head).
//!
//! A file is stable when it is not open for writing (modified and not yet closed, per the
//! watcher) and either the watcher saw its writer close it, or its size and mtime have not
//! changed during the last quiet window: its mtime is at least a quiet window old, or the
//! same size and mtime were already seen a quiet window ago (for clocks that disagree with
//! the file system's). Events that arrived during the scan are taken into account before
//! deciding. An unstable file keeps its last published content (or stays unpublished if
//! new) and is looked at again a window later; it holds back the whole batch until the
//! batch's first change is the maximum delay old, then the stable part goes out without it.
//!
//! Failures are classified by what fixes them (see [`Failure`]): transient store errors are
//! retried with capped exponential backoff and jitter, errors an administrator must fix are
//! retried slowly, and errors only a change of the folder can fix wait for one.
//!
//! - [`state`]: the status file and the single-instance lock.

pub mod state;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::watch;

use crate::format::Entry;
use crate::generations::{self, GenerationError};
use crate::metrics::{register_metrics, Health, KindLabels, Registry};
use crate::publish::{self, Desired, Outcome, PublishError, PublishOptions};
use crate::runtime::now_ms;
use crate::scan::{self, HashCache, ScanOptions, ScannedFile};
use crate::store::{ErrorKind, Store};
use crate::watch::{Debouncer, WatchError, WatchEvent, Watcher};
use state::{Phase, StateError, SyncFiles, SyncState};

/// How the daemon runs.
#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// The watched folder, canonical.
    pub dir: PathBuf,
    /// Publish after the tree has been quiet this long.
    pub quiet_window: Duration,
    /// But at the latest this long after the first change of a batch.
    pub max_delay: Duration,
    /// Full rescan this often, whatever the watcher says.
    pub rescan_interval: Duration,
    /// First retry delay after a transient store error.
    pub backoff_initial: Duration,
    /// Longest retry delay (and the delay of errors an administrator must fix).
    pub backoff_max: Duration,
    /// On SIGTERM/SIGINT, how long an in-flight publish may take to finish before it is
    /// abandoned.
    pub shutdown_grace: Duration,
    /// What a scan publishes.
    pub scan: ScanOptions,
    /// How to publish (message, author, prefix, concurrency).
    pub publish: PublishOptions,
    /// Update the plain mirror after each generation.
    pub mirror: bool,
    /// The metrics endpoint, shown in the status file.
    pub metrics_addr: Option<String>,
}

/// The daemon could not start, or its watcher died.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The lock or status file.
    #[error(transparent)]
    State(#[from] StateError),
    /// The folder cannot be watched.
    #[error(transparent)]
    Watch(#[from] WatchError),
    /// The watcher thread ended.
    #[error("the file watcher of {} stopped; restart dagfs sync", .0.display())]
    WatcherStopped(PathBuf),
}

/// The sync daemon's metrics, registered in a shared [`Registry`].
#[derive(Clone, Debug)]
pub struct SyncMetrics {
    generations: Counter,
    objects: Counter,
    bytes: Counter,
    publish_seconds: Histogram,
    errors: Family<KindLabels, Counter>,
    pending: Gauge,
    generation: Gauge,
}

impl SyncMetrics {
    /// Creates the metrics and registers them under `dagfs_sync_*`.
    pub fn register(registry: &mut Registry) -> SyncMetrics {
        let metrics = SyncMetrics {
            generations: Counter::default(),
            objects: Counter::default(),
            bytes: Counter::default(),
            // 50 ms .. ~100 s: one small file is ~1 s on HDFS, a first push minutes.
            publish_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.05, 2.0, 12),
            ),
            errors: Family::default(),
            pending: Gauge::default(),
            generation: Gauge::default(),
        };
        register_metrics!(registry, "dagfs_sync",
            "generations_published", "Generations this daemon committed" => metrics.generations;
            "objects_uploaded", "Objects uploaded (content the store did not have)"
                => metrics.objects;
            "bytes_uploaded", "Bytes of objects uploaded" => metrics.bytes;
            "publish_duration_seconds",
                "Time from the start of a publish attempt to its commit (successful attempts)"
                => metrics.publish_seconds;
            "errors", "Failed publish attempts and scans, by kind" => metrics.errors;
            "pending_changes",
                "Paths that differ between the folder and the store as of the last scan"
                => metrics.pending;
            "generation", "Head generation after the last successful publish"
                => metrics.generation;
        );
        metrics
    }
}

/// The longest time between full rescans while some directories cannot be watched.
pub const DEGRADED_RESCAN_INTERVAL: Duration = Duration::from_secs(10);

/// A failed attempt, by what fixes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// The store is unreachable or slow: retry with exponential backoff.
    Transient,
    /// An administrator must act (permissions, a damaged store): retry at the backoff cap.
    NeedsAdmin,
    /// Only a change of the folder can fix it (a conflict, an invalid tree): wait for one.
    NeedsLocalChange,
    /// A file changed under the publish: try again after a quiet window.
    Changed,
}

impl Failure {
    /// The failure class and the `kind` label of a publish error.
    fn of(error: &PublishError) -> (Failure, &'static str) {
        let store_kind = match error {
            PublishError::Store(e) | PublishError::Generation(GenerationError::Store(e)) => {
                Some(e.kind())
            }
            _ => None,
        };
        match (error, store_kind) {
            (_, Some(kind)) if kind.is_transient() => (Failure::Transient, "unavailable"),
            // Stalled past its gc pin: nothing was committed, simply try again.
            (PublishError::PinLost, _) => (Failure::Transient, "unavailable"),
            (_, Some(ErrorKind::PermissionDenied)) => (Failure::NeedsAdmin, "permission"),
            (PublishError::ChangedDuringPush { .. }, _) => (Failure::Changed, "changed"),
            (PublishError::Conflict { .. } | PublishError::TooManyRaces(_), _) => {
                (Failure::NeedsLocalChange, "conflict")
            }
            (PublishError::EmptyTree { .. } | PublishError::Format(_), _) => {
                (Failure::NeedsLocalChange, "invalid")
            }
            _ => (Failure::NeedsAdmin, "store"),
        }
    }
}

/// Runs the daemon until `shutdown` resolves (or its watcher dies). Takes the folder's
/// single-instance lock, watches it, pushes it once, then publishes every change.
pub async fn run(
    store: Box<dyn Store>,
    options: SyncOptions,
    metrics: SyncMetrics,
    health: Health,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), SyncError> {
    let files = SyncFiles::default();
    let _lock = files.lock(&options.dir)?;
    // Watch before the first scan, so nothing changed during it goes unseen.
    let mut watcher = Watcher::new(&options.dir)?;
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let watchdog = spawn_watchdog();
    let store: Arc<dyn Store> = Arc::from(store);
    let mirror = options
        .mirror
        .then(|| MirrorWorker::spawn(Arc::clone(&store), options.publish.index_dir.clone()));
    let mut daemon = Daemon::new(store, options, metrics, health, files, mirror);
    daemon.save_state();
    tracing::info!(dir = %daemon.options.dir.display(), store = daemon.store.url(), "watching");

    daemon.debouncer.request(Instant::now());
    let mut ready = false;
    let mut stopping = stop.clone();
    loop {
        let wake = daemon.next_wake();
        tokio::select! {
            biased;
            _ = stopping.wait_for(|s| *s) => break,
            event = watcher.next() => match event {
                Some((event, at)) => {
                    if let WatchEvent::WatchLimit { reason } = &event {
                        daemon.degrade(reason);
                    }
                    daemon.debouncer.record(event, at);
                }
                None => return Err(SyncError::WatcherStopped(daemon.options.dir.clone())),
            },
            _ = tokio::time::sleep_until(wake.into()) => {
                let stopped = daemon.wake(&mut watcher, stop.clone()).await;
                if !ready {
                    ready = true;
                    notify_systemd(&[sd_notify::NotifyState::Ready]);
                }
                if stopped {
                    break;
                }
            }
        }
    }
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    if let Some(mirror) = daemon.mirror.take() {
        mirror.stop();
    }
    daemon.save_cache();
    if let Err(e) = daemon.files.remove(&daemon.options.dir) {
        tracing::warn!(error = %e, "could not remove the status file");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Tells systemd, when running under it (`NOTIFY_SOCKET` set); a no-op otherwise.
fn notify_systemd(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// Pings systemd's watchdog at half its interval, when `WatchdogSec=` is set. The pings come
/// from the runtime the daemon runs on, so a wedged runtime stops them; every store call is
/// bounded by `store.timeout`, so a hung HDFS cannot block the loop for longer.
fn spawn_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let interval = sd_notify::watchdog_enabled()? / 2;
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        loop {
            ticks.tick().await;
            notify_systemd(&[sd_notify::NotifyState::Watchdog]);
        }
    }))
}

/// The first and the longest wait before a failed mirror update is tried again.
const MIRROR_RETRY_MIN: Duration = Duration::from_secs(1);
const MIRROR_RETRY_MAX: Duration = Duration::from_secs(60);

/// Updates the plain mirror in the background, so the next generation does not wait for
/// the mirror of the last one. Requests coalesce: one update after several generations.
struct MirrorWorker {
    wanted: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl MirrorWorker {
    fn spawn(store: Arc<dyn Store>, index_dir: Option<std::path::PathBuf>) -> MirrorWorker {
        let (wanted, mut requests) = watch::channel(0);
        // Bring the mirror up to date once at start: the last daemon may have stopped before
        // it did.
        requests.mark_changed();
        let task = tokio::spawn(async move {
            while requests.changed().await.is_ok() {
                // The generation is committed; a failed update (a NameNode failover, a staged
                // file a gc run took) is retried, or the mirror of the last generation would
                // stay stale until the folder changes again.
                let mut retry = MIRROR_RETRY_MIN;
                while let Err(e) = crate::mirror::update(&*store, index_dir.as_deref()).await {
                    tracing::warn!(error = %e, retry_in = ?retry, "mirror not updated; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        // A newer generation: update at once.
                        changed = requests.changed() => if changed.is_err() { return },
                    }
                    retry = (retry * 2).min(MIRROR_RETRY_MAX);
                }
            }
        });
        MirrorWorker { wanted, task }
    }

    /// Asks for the mirror of `generation` (or a later one).
    fn request(&self, generation: u64) {
        self.wanted.send_replace(generation);
    }

    /// Stops at once; an update cut short is finished by the next one (the mirror's own
    /// protocol is crash-safe).
    fn stop(self) {
        self.task.abort();
    }
}

/// A file that changed but is not yet stable, first seen at some instant.
type Observation = ((u64, i64), Instant);

struct Daemon {
    store: Arc<dyn Store>,
    mirror: Option<MirrorWorker>,
    options: SyncOptions,
    metrics: SyncMetrics,
    health: Health,
    files: SyncFiles,
    state: SyncState,
    cache: HashCache,
    debouncer: Debouncer,
    /// The folder's tree (relative to the prefix) as last published or found at the head;
    /// `None` until the head has been read.
    published: Option<Vec<Entry>>,
    /// Changed files not yet stable, with what was seen and when.
    observed: HashMap<String, Observation>,
    /// When to look again at files held back.
    recheck_at: Option<Instant>,
    /// When the oldest change not yet published was first seen.
    pending_since: Option<Instant>,
    /// When to retry after a failure (none while waiting for a local change).
    retry_at: Option<Instant>,
    /// Waiting for a local change before trying again.
    blocked: bool,
    /// How often to rescan everything: the configured interval, shorter when not every
    /// directory can be watched.
    rescan_interval: Duration,
    next_rescan: Instant,
}

impl Daemon {
    fn new(
        store: Arc<dyn Store>,
        options: SyncOptions,
        metrics: SyncMetrics,
        health: Health,
        files: SyncFiles,
        mirror: Option<MirrorWorker>,
    ) -> Daemon {
        let cache = HashCache::default_location(&options.dir)
            .map_or_else(HashCache::in_memory, HashCache::load);
        let state = SyncState::starting(
            options.dir.clone(),
            store.url().to_string(),
            options.publish.prefix.clone(),
            options.metrics_addr.clone(),
        );
        Daemon {
            debouncer: Debouncer::new(options.quiet_window, options.max_delay),
            next_rescan: Instant::now() + options.rescan_interval,
            rescan_interval: options.rescan_interval,
            store,
            mirror,
            options,
            metrics,
            health,
            files,
            state,
            cache,
            published: None,
            observed: HashMap::new(),
            recheck_at: None,
            pending_since: None,
            retry_at: None,
            blocked: false,
        }
    }

    /// Some directories are not watched (inotify limit): rescan at least every
    /// [`DEGRADED_RESCAN_INTERVAL`] so their changes still go out.
    fn degrade(&mut self, reason: &str) {
        let interval = self.rescan_interval.min(DEGRADED_RESCAN_INTERVAL);
        if interval < self.rescan_interval {
            tracing::error!(reason, rescan_every = ?interval, "not every directory is watched; rescanning periodically");
        }
        self.rescan_interval = interval;
        self.next_rescan = self.next_rescan.min(Instant::now() + interval);
    }

    /// When the loop must wake up next.
    fn next_wake(&self) -> Instant {
        let batch = match self.retry_at {
            // While backing off, changes wait for the retry.
            Some(retry) => Some(retry),
            None => self.debouncer.due(),
        };
        [batch, self.recheck_at, Some(self.next_rescan)]
            .into_iter()
            .flatten()
            .min()
            .expect("the rescan is always scheduled")
    }

    /// Handles a wake-up: schedules rescans and rechecks, and runs an attempt when a batch is
    /// due. Returns whether shutdown was requested during the attempt.
    async fn wake(&mut self, watcher: &mut Watcher, stop: watch::Receiver<bool>) -> bool {
        let now = Instant::now();
        if now >= self.next_rescan {
            self.next_rescan = now + self.rescan_interval;
            if !self.blocked {
                tracing::debug!("periodic rescan");
                self.debouncer.request(now);
            }
        }
        if self.recheck_at.is_some_and(|at| now >= at) {
            self.recheck_at = None;
            self.debouncer.request(now);
        }
        if let Some(at) = self.retry_at {
            if now < at {
                return false;
            }
            self.retry_at = None;
            self.debouncer.request(now);
        }
        if self.debouncer.due().is_some_and(|due| now >= due) {
            return self.attempt(watcher, stop).await;
        }
        false
    }

    /// One attempt: scan, keep back unstable files, publish the rest. Returns whether
    /// shutdown was requested meanwhile.
    async fn attempt(&mut self, watcher: &mut Watcher, mut stop: watch::Receiver<bool>) -> bool {
        let now = Instant::now();
        let (first, rescans) = self.debouncer.take(now);
        for (subtree, reason) in rescans {
            tracing::warn!(subtree = %subtree.display(), reason, "events were lost; rescanning");
        }
        let pending_since = *self.pending_since.get_or_insert(first);
        self.blocked = false;
        self.debouncer.prune_writers(now);

        let scanned = match self.scan().await {
            Ok(files) => files,
            Err(e) => {
                self.fail(Failure::NeedsLocalChange, "scan", e.to_string());
                return false;
            }
        };
        // What happened while scanning counts: a file rewritten meanwhile is being written.
        while let Some((event, at)) = watcher.try_next() {
            if let WatchEvent::WatchLimit { reason } = &event {
                self.degrade(reason);
            }
            self.debouncer.record(event, at);
        }
        if self.published.is_none() {
            match generations::load_head(&*self.store).await {
                Ok(head) => {
                    self.state.generation = head.as_ref().map(|m| m.generation);
                    self.published = Some(local_tree(
                        head.map(|m| m.entries).unwrap_or_default(),
                        self.options.publish.prefix.as_deref(),
                    ));
                }
                Err(e) => {
                    let error = PublishError::from(e);
                    let (failure, kind) = Failure::of(&error);
                    self.fail(
                        failure,
                        kind,
                        format!("cannot read the head generation: {error}"),
                    );
                    return false;
                }
            }
        }
        let baseline = self.published.clone().unwrap_or_default();
        let (desired, held_back) = self.stable_tree(&baseline, scanned, now);
        let pending = generations::diff(&baseline, &desired.entries).len();
        self.state.pending_changes = pending + held_back;
        self.state.held_back = held_back;
        self.metrics.pending.set((pending + held_back) as i64);
        // Files still being written hold the batch back, up to the maximum delay; after
        // that the stable part goes out without them.
        let wait_for_writers = held_back > 0 && now < pending_since + self.options.max_delay;
        if pending == 0 || wait_for_writers {
            if held_back == 0 {
                self.pending_since = None;
            }
            self.state.phase = if held_back > 0 {
                Phase::Pending
            } else {
                Phase::Idle
            };
            self.save_state();
            return false;
        }

        self.state.phase = Phase::Publishing;
        self.save_state();
        let started = Instant::now();
        let mut stopped = false;
        let result = {
            let publishing = publish::publish(&*self.store, &desired, &self.options.publish);
            tokio::pin!(publishing);
            tokio::select! {
            result = &mut publishing => result,
            _ = stop.wait_for(|s| *s) => {
                stopped = true;
                tracing::info!(grace = ?self.options.shutdown_grace, "stopping: letting the publish in flight finish");
                match tokio::time::timeout(self.options.shutdown_grace, &mut publishing).await {
                    Ok(result) => result,
                    Err(_) => {
                        // Nothing half-published is ever visible: the commit is one atomic
                        // rename, and staged uploads are collected by `dagfs gc`.
                        tracing::warn!("abandoned the publish in flight; the next start publishes the folder");
                        return true;
                    }
                }
            }
            }
        };
        match result {
            Ok(outcome) => self.succeeded(outcome, desired.entries, started),
            Err(e) => {
                let (failure, kind) = Failure::of(&e);
                self.fail(failure, kind, e.to_string());
            }
        }
        stopped
    }

    /// Scans the folder on a blocking thread with the daemon's hash cache.
    async fn scan(&mut self) -> Result<Vec<ScannedFile>, String> {
        let dir = self.options.dir.clone();
        let options = self.options.scan.clone();
        let mut cache = std::mem::take(&mut self.cache);
        let (cache, result) = tokio::task::spawn_blocking(move || {
            let result = scan::scan(&dir, &options, &mut cache);
            (cache, result)
        })
        .await
        .map_err(|e| e.to_string())?;
        self.cache = cache;
        result.map_err(|e| format!("cannot scan: {e}"))
    }

    /// The tree to publish: scanned files that are unchanged or stable, and for unstable ones
    /// their `baseline` entry (if any). Returns it and the number of files held back.
    fn stable_tree(
        &mut self,
        baseline: &[Entry],
        scanned: Vec<ScannedFile>,
        now: Instant,
    ) -> (Desired, usize) {
        let quiet = self.options.quiet_window;
        let known: HashMap<&str, &Entry> = baseline.iter().map(|e| (e.path.as_str(), e)).collect();
        let wall = SystemTime::now();
        let mut kept = Vec::with_capacity(scanned.len());
        let mut held = Vec::new();
        let mut observed = HashMap::new();
        for file in scanned {
            let path = file.entry.path.as_str();
            if known.get(path) == Some(&&file.entry) {
                kept.push(file);
                continue;
            }
            let seen = (file.entry.size, file.entry.mtime_ns);
            let since = match self.observed.get(path) {
                Some((previous, since)) if *previous == seen => *since,
                _ => now,
            };
            let mtime = UNIX_EPOCH + Duration::from_nanos(file.entry.mtime_ns.max(0) as u64);
            let quiet_since_mtime = wall.duration_since(mtime).is_ok_and(|age| age >= quiet);
            let stable = !self.debouncer.is_writing(&file.local, now)
                && (self.debouncer.was_closed(&file.local)
                    || quiet_since_mtime
                    || now.duration_since(since) >= quiet);
            if stable {
                kept.push(file);
            } else {
                observed.insert(path.to_string(), (seen, since));
                held.push(file.entry.path.clone());
            }
        }
        self.observed = observed;
        let mut desired = Desired::from_scan(&kept);
        for path in &held {
            if let Some(old) = known.get(path.as_str()) {
                desired.entries.push((*old).clone());
            }
        }
        desired.entries.sort_by(|a, b| a.path.cmp(&b.path));
        if !held.is_empty() {
            tracing::debug!(held = ?held, "holding back files still being written");
            self.recheck_at = Some(now + quiet);
        }
        (desired, held.len())
    }

    fn succeeded(&mut self, outcome: Outcome, entries: Vec<Entry>, started: Instant) {
        self.published = Some(entries);
        self.pending_since = None;
        self.metrics
            .publish_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.objects.inc_by(outcome.objects_uploaded as u64);
        self.metrics.bytes.inc_by(outcome.bytes_uploaded);
        if let Some(generation) = outcome.generation {
            self.metrics.generation.set(generation as i64);
        }
        if outcome.published {
            self.metrics.generations.inc();
            self.state.last_published_ms = Some(now_ms());
        }
        self.state.generation = outcome.generation;
        self.state.failures = 0;
        self.state.last_error = None;
        self.state.last_error_kind = None;
        self.state.next_retry_ms = None;
        self.state.pending_changes = self.state.held_back;
        self.metrics.pending.set(self.state.held_back as i64);
        self.state.phase = if self.state.held_back > 0 {
            Phase::Pending
        } else {
            Phase::Idle
        };
        self.health.set_healthy();
        self.save_state();
        self.save_cache();
        if let (Some(mirror), Some(generation), true) =
            (&self.mirror, outcome.generation, outcome.published)
        {
            mirror.request(generation);
        }
    }

    fn fail(&mut self, failure: Failure, kind: &'static str, error: String) {
        self.metrics
            .errors
            .get_or_create(&KindLabels { kind })
            .inc();
        let now = Instant::now();
        if failure == Failure::Changed {
            tracing::info!(error, "a file changed while being published; trying again");
            self.recheck_at = Some(now + self.options.quiet_window);
            self.state.phase = Phase::Pending;
            self.save_state();
            return;
        }
        self.state.failures += 1;
        let delay = match failure {
            Failure::Transient => Some(backoff(
                self.state.failures,
                self.options.backoff_initial,
                self.options.backoff_max,
            )),
            Failure::NeedsAdmin => Some(self.options.backoff_max),
            Failure::NeedsLocalChange | Failure::Changed => None,
        };
        self.retry_at = delay.map(|d| now + d);
        self.blocked = delay.is_none();
        self.state.next_retry_ms = delay.map(|d| now_ms() + d.as_millis() as u64);
        self.state.phase = if self.blocked {
            Phase::Blocked
        } else {
            Phase::Retrying
        };
        match delay {
            Some(delay) => {
                tracing::error!(kind, error, failures = self.state.failures, retry_in = ?delay, "publish failed; changes kept, retrying")
            }
            None => tracing::error!(
                kind,
                error,
                "publish failed; fix the folder, the next change retries"
            ),
        }
        self.health
            .set_unhealthy(format!("publish failed ({kind}): {error}"));
        self.state.last_error = Some(error);
        self.state.last_error_kind = Some(kind.to_string());
        self.save_state();
    }

    fn save_state(&mut self) {
        self.state.updated_ms = now_ms();
        if let Err(e) = self.files.write(&self.state) {
            tracing::warn!(error = %e, "could not write the status file");
        }
    }

    fn save_cache(&mut self) {
        self.cache.save();
    }
}

/// `tree` relative to `prefix` (entries outside it dropped), or all of it without one.
fn local_tree(tree: Vec<Entry>, prefix: Option<&str>) -> Vec<Entry> {
    let Some(prefix) = prefix.map(|p| p.trim_matches('/')) else {
        return tree;
    };
    tree.into_iter()
        .filter_map(|e| {
            let rel = e.path.strip_prefix(prefix)?.strip_prefix('/')?.to_string();
            Some(Entry { path: rel, ..e })
        })
        .collect()
}

/// The delay before retry number `failures` (1-based): `initial * 2^(failures-1)`, capped at
/// `max`, then scaled by a random factor in [0.5, 1] ("equal jitter"), so daemons that lost
/// the store together do not return in lockstep.
fn backoff(failures: u32, initial: Duration, max: Duration) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    let delay = initial.saturating_mul(1 << exponent).min(max);
    delay.mul_f64(0.5 + fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let initial = Duration::from_millis(500);
        let max = Duration::from_secs(10);
        for failures in 1..=12 {
            let full = initial.saturating_mul(1 << (failures - 1)).min(max);
            let delay = backoff(failures, initial, max);
            assert!(
                delay >= full / 2 && delay <= full,
                "{failures}: {delay:?} vs {full:?}"
            );
        }
        assert!(backoff(u32::MAX, initial, max) <= max);
    }

    #[test]
    fn failures_are_classified_by_what_fixes_them() {
        use crate::store::StoreError;
        let store = |kind| PublishError::Store(StoreError::new(kind, "put", "k", "d"));
        assert_eq!(
            Failure::of(&store(ErrorKind::Unavailable)),
            (Failure::Transient, "unavailable")
        );
        assert_eq!(
            Failure::of(&store(ErrorKind::Timeout)).0,
            Failure::Transient
        );
        assert_eq!(
            Failure::of(&store(ErrorKind::PermissionDenied)),
            (Failure::NeedsAdmin, "permission")
        );
        let conflict = PublishError::Conflict {
            theirs: 3,
            author: "a@b".into(),
            paths: vec!["x.py".into()],
        };
        assert_eq!(Failure::of(&conflict).0, Failure::NeedsLocalChange);
        let changed = PublishError::ChangedDuringPush {
            path: "x".into(),
            reason: "r".into(),
        };
        assert_eq!(Failure::of(&changed).0, Failure::Changed);
    }

    #[test]
    fn the_local_tree_of_a_prefix_is_relative_to_it() {
        let entry = |path: &str| crate::testutil::entry_for(path, b"x");
        let tree = vec![entry("a/x.py"), entry("ab/y.py"), entry("b/z.py")];
        let local = local_tree(tree.clone(), Some("/a/"));
        assert_eq!(
            local.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
            ["x.py"]
        );
        assert_eq!(local_tree(tree.clone(), None), tree);
    }
}
