//! Watching a DAG folder: a recursive `notify` watcher (inotify on Linux) and the debouncer
//! that turns its events into "scan now" decisions.
//!
//! The watcher reports which paths changed, not what they contain: the daemon
//! ([`crate::sync`]) always re-scans the folder (stat calls only for unchanged files, thanks
//! to the hash cache), so a missed, reordered or coalesced event can delay a publish but never
//! make it wrong. Events the watcher cannot account for become [`WatchEvent::Rescan`] (inotify
//! queue overflow) or [`WatchEvent::WatchLimit`] (a watch that could not be added: the daemon
//! then rescans often).
//!
//! The [`Debouncer`] decides when a batch of changes is due: once the tree has been quiet
//! for the quiet window, or at the latest the maximum delay after the batch's first event.
//! It also tracks files open for writing (modified, not yet closed): the daemon holds such
//! files back so a slowly written file is never published half-written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::scan::is_builtin_ignored;

/// How long a file counts as being written after its last modification without a close:
/// a writer that keeps a file open but idle longer than this is treated as done.
pub const WRITING_TIMEOUT: Duration = Duration::from_secs(30);

/// The folder cannot be watched at all.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {}: {detail}", .path.display())]
pub struct WatchError {
    /// The folder.
    path: PathBuf,
    /// Why.
    detail: String,
}

/// What the watcher saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// A path was created, written, renamed or removed.
    Changed {
        /// The path (absolute, under the watched folder).
        path: PathBuf,
        /// Whether this event shows the file is being written (`Some(true)`: modified;
        /// `Some(false)`: closed after writing; `None`: neither).
        writing: Option<bool>,
    },
    /// Events were lost (queue overflow, a watch that could not be added): everything under
    /// `subtree` must be re-scanned.
    Rescan {
        /// The affected subtree (the watched folder when unknown).
        subtree: PathBuf,
        /// What happened, for the log.
        reason: String,
    },
    /// The inotify watch limit is reached: directories added from now on (or, at start,
    /// some of the folder) are not watched; only rescans see their changes.
    WatchLimit {
        /// What happened, for the log.
        reason: String,
    },
}

/// A recursive watch on one folder. New subdirectories are watched as they appear (notify
/// adds their watches); files created in them before that are found by the scan the
/// directory's own creation event triggers.
pub struct Watcher {
    _inner: RecommendedWatcher,
    events: mpsc::UnboundedReceiver<(WatchEvent, Instant)>,
}

impl Watcher {
    /// Starts watching `root` recursively.
    pub fn new(root: &Path) -> Result<Watcher, WatchError> {
        let (tx, events) = mpsc::unbounded_channel::<(WatchEvent, Instant)>();
        let limit_tx = tx.clone();
        let root_owned = root.to_path_buf();
        let handler = move |result: notify::Result<notify::Event>| {
            let at = Instant::now();
            for event in translate(&root_owned, result) {
                // The receiver is gone only when the daemon is shutting down.
                let _ = tx.send((event, at));
            }
        };
        let error = |e: notify::Error| WatchError {
            path: root.to_path_buf(),
            detail: describe(&e),
        };
        let mut inner = notify::recommended_watcher(handler).map_err(error)?;
        match inner.watch(root, RecursiveMode::Recursive) {
            Ok(()) => {}
            // The watches added so far work; the rest of the folder is left to rescans.
            Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
                let _ = limit_tx.send((
                    WatchEvent::WatchLimit {
                        reason: describe(&e),
                    },
                    Instant::now(),
                ));
            }
            Err(e) => return Err(error(e)),
        }
        Ok(Watcher {
            _inner: inner,
            events,
        })
    }

    /// The next event and when it was seen (the daemon may be busy when it arrives); `None`
    /// only if the watcher thread died.
    pub async fn next(&mut self) -> Option<(WatchEvent, Instant)> {
        self.events.recv().await
    }

    /// An event already queued, without waiting.
    pub fn try_next(&mut self) -> Option<(WatchEvent, Instant)> {
        self.events.try_recv().ok()
    }
}

fn describe(error: &notify::Error) -> String {
    match error.kind {
        notify::ErrorKind::MaxFilesWatch => "the inotify watch limit is reached; raise it (sysctl fs.inotify.max_user_watches) or watch a smaller folder".into(),
        _ => error.to_string(),
    }
}

/// Turns one notify callback into watch events; ignores what never affects a generation
/// (reads, and names scans always leave out such as editor swap files).
fn translate(root: &Path, result: notify::Result<notify::Event>) -> Vec<WatchEvent> {
    let event = match result {
        Ok(event) => event,
        Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
            return vec![WatchEvent::WatchLimit {
                reason: describe(&e),
            }]
        }
        Err(e) => {
            return vec![WatchEvent::Rescan {
                subtree: e
                    .paths
                    .first()
                    .cloned()
                    .unwrap_or_else(|| root.to_path_buf()),
                reason: describe(&e),
            }]
        }
    };
    if event.need_rescan() {
        return vec![WatchEvent::Rescan {
            subtree: root.to_path_buf(),
            reason: "the watcher lost events (inotify queue overflow)".into(),
        }];
    }
    let writing = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(false),
        EventKind::Modify(ModifyKind::Data(_)) => Some(true),
        // Reads (ours included: every scan opens files) and other accesses change nothing.
        EventKind::Access(_) => return Vec::new(),
        _ => None,
    };
    event
        .paths
        .into_iter()
        .filter(|path| !ignored(root, path))
        .map(|path| WatchEvent::Changed { path, writing })
        .collect()
}

/// Whether `path` is under a directory or has a name that scans always leave out.
fn ignored(root: &Path, path: &Path) -> bool {
    let Ok(rel) = path.strip_prefix(root) else {
        return false;
    };
    let mut parts = rel.components().peekable();
    while let Some(part) = parts.next() {
        let name = part.as_os_str().to_string_lossy();
        let is_last = parts.peek().is_none();
        // The last part may be a file or a directory; a directory name like `__pycache__`
        // is left out either way.
        if is_builtin_ignored(&name, true) || (is_last && is_builtin_ignored(&name, false)) {
            return true;
        }
    }
    false
}

/// Collects watch events into batches: see the module documentation.
#[derive(Debug)]
pub struct Debouncer {
    quiet: Duration,
    max_delay: Duration,
    first: Option<Instant>,
    last: Option<Instant>,
    rescans: Vec<(PathBuf, String)>,
    /// Files modified and not closed since, with the time of their last modification.
    writing: HashMap<PathBuf, Instant>,
    /// Files closed after writing and not modified since, with the time of the close.
    closed: HashMap<PathBuf, Instant>,
}

impl Debouncer {
    /// A debouncer that waits `quiet` without events, at most `max_delay` after the first.
    pub fn new(quiet: Duration, max_delay: Duration) -> Debouncer {
        Debouncer {
            quiet,
            max_delay,
            first: None,
            last: None,
            rescans: Vec::new(),
            writing: HashMap::new(),
            closed: HashMap::new(),
        }
    }

    /// Records an event seen at `now`.
    pub fn record(&mut self, event: WatchEvent, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
        match event {
            WatchEvent::Changed { path, writing } => match writing {
                Some(true) => {
                    self.closed.remove(&path);
                    self.writing.insert(path, now);
                }
                Some(false) => {
                    self.writing.remove(&path);
                    self.closed.insert(path, now);
                }
                None => {}
            },
            WatchEvent::Rescan { subtree, reason } => self.rescans.push((subtree, reason)),
            WatchEvent::WatchLimit { reason } => self.rescans.push((PathBuf::new(), reason)),
        }
    }

    /// Marks a batch as pending without an event (a retry, a periodic rescan), due at once.
    pub fn request(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last.get_or_insert(now - self.quiet);
    }

    /// Whether events are waiting for a batch.
    pub fn is_pending(&self) -> bool {
        self.first.is_some()
    }

    /// When the pending batch is due, if one is pending.
    pub fn due(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        Some((last + self.quiet).min(first + self.max_delay))
    }

    /// Ends the pending batch: returns when its first event came (now if none is pending)
    /// and the lost-event rescans it held (for the log).
    pub fn take(&mut self, now: Instant) -> (Instant, Vec<(PathBuf, String)>) {
        let first = self.first.take().unwrap_or(now);
        self.last = None;
        (first, std::mem::take(&mut self.rescans))
    }

    /// Whether `path` was modified and not closed since, less than [`WRITING_TIMEOUT`] ago.
    pub fn is_writing(&self, path: &Path, now: Instant) -> bool {
        self.writing
            .get(path)
            .is_some_and(|&since| now.duration_since(since) < WRITING_TIMEOUT)
    }

    /// Whether the watcher saw `path` closed after writing, and not modified since: its
    /// writer is done with it.
    pub fn was_closed(&self, path: &Path) -> bool {
        self.closed.contains_key(path)
    }

    /// Forgets writers idle and closes older than [`WRITING_TIMEOUT`], and files that no
    /// longer exist.
    pub fn prune_writers(&mut self, now: Instant) {
        for files in [&mut self.writing, &mut self.closed] {
            files.retain(|path, at| now.duration_since(*at) < WRITING_TIMEOUT && path.exists());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(2);

    fn changed(path: &str, writing: Option<bool>) -> WatchEvent {
        WatchEvent::Changed {
            path: PathBuf::from(path),
            writing,
        }
    }

    #[test]
    fn a_batch_is_due_after_the_quiet_window_but_never_later_than_the_max_delay() {
        let start = Instant::now();
        let mut debouncer = Debouncer::new(QUIET, MAX);
        assert_eq!(debouncer.due(), None);
        debouncer.record(changed("/d/a.py", None), start);
        assert_eq!(debouncer.due(), Some(start + QUIET));
        // A steady stream of events every 100 ms pushes the quiet deadline forward...
        let mut now = start;
        for _ in 0..30 {
            now += Duration::from_millis(100);
            debouncer.record(changed("/d/a.py", None), now);
        }
        // ...but the batch is due at most MAX after its first event.
        assert_eq!(debouncer.due(), Some(start + MAX));
        assert_eq!(debouncer.take(now), (start, Vec::new()));
        assert!(!debouncer.is_pending());
        assert_eq!(debouncer.due(), None);
    }

    #[test]
    fn files_are_writing_from_modification_to_close() {
        let now = Instant::now();
        let mut debouncer = Debouncer::new(QUIET, MAX);
        let path = Path::new("/d/slow.py");
        debouncer.record(changed("/d/slow.py", Some(true)), now);
        assert!(debouncer.is_writing(path, now + QUIET));
        assert!(
            !debouncer.is_writing(path, now + WRITING_TIMEOUT),
            "an idle writer stops counting"
        );
        assert!(!debouncer.was_closed(path));
        debouncer.record(changed("/d/slow.py", Some(false)), now);
        assert!(!debouncer.is_writing(path, now));
        assert!(debouncer.was_closed(path));
        debouncer.record(changed("/d/slow.py", Some(true)), now);
        assert!(
            !debouncer.was_closed(path),
            "modified again after the close"
        );
    }

    #[test]
    fn requests_are_due_at_once_and_rescans_are_reported() {
        let now = Instant::now();
        let mut debouncer = Debouncer::new(QUIET, MAX);
        debouncer.request(now);
        assert_eq!(debouncer.due(), Some(now));
        debouncer.record(
            WatchEvent::Rescan {
                subtree: PathBuf::from("/d"),
                reason: "overflow".into(),
            },
            now,
        );
        assert_eq!(
            debouncer.take(now).1,
            vec![(PathBuf::from("/d"), "overflow".to_string())]
        );
    }

    #[test]
    fn reads_and_editor_temporaries_are_not_changes() {
        let root = Path::new("/d");
        let event = |kind, path: &str| {
            translate(
                root,
                Ok(notify::Event::new(kind).add_path(PathBuf::from(path))),
            )
        };
        let read = EventKind::Access(AccessKind::Close(AccessMode::Read));
        let modify = EventKind::Modify(ModifyKind::Data(notify::event::DataChange::Any));
        assert!(event(read, "/d/a.py").is_empty());
        for temporary in [
            "/d/.a.py.swp",
            "/d/4913",
            "/d/.#a.py",
            "/d/a.py___jb_tmp___",
            "/d/__pycache__/a.cpython-312.pyc",
            "/d/__pycache__",
        ] {
            assert!(event(modify, temporary).is_empty(), "{temporary}");
        }
        assert_eq!(
            event(modify, "/d/a.py"),
            vec![changed("/d/a.py", Some(true))]
        );
        let overflow = translate(
            root,
            Ok(notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan)),
        );
        assert!(matches!(&overflow[..], [WatchEvent::Rescan { subtree, .. }] if subtree == root));
        let limit = translate(
            root,
            Err(notify::Error::new(notify::ErrorKind::MaxFilesWatch)),
        );
        assert!(
            matches!(&limit[..], [WatchEvent::WatchLimit { reason }] if reason.contains("max_user_watches"))
        );
    }

    #[tokio::test]
    async fn new_directories_are_watched_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let mut watcher = Watcher::new(&root).unwrap();
        std::fs::create_dir(root.join("team")).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        // Wait until the directory's creation is seen (its watch is added right after).
        loop {
            let event = tokio::time::timeout_at(deadline, watcher.next())
                .await
                .expect("the new directory is reported")
                .unwrap();
            if matches!(&event.0, WatchEvent::Changed { path, .. } if path == &root.join("team")) {
                break;
            }
        }
        let file = root.join("team/dag.py");
        // The watch on the new directory is added asynchronously: write until it reports.
        loop {
            std::fs::write(&file, "x").unwrap();
            match tokio::time::timeout(Duration::from_millis(200), watcher.next()).await {
                Ok(Some((WatchEvent::Changed { path, .. }, _))) if path == file => break,
                Ok(_) | Err(_) => assert!(
                    tokio::time::Instant::now() < deadline,
                    "writes in the new directory are never reported"
                ),
            }
        }
    }
}
