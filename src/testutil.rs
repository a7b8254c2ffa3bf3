//! Helpers shared by the unit tests of several modules.

use std::path::Path;

use crate::format::{Digest, Entry};
use crate::publish::{publish, Desired, Outcome, PublishOptions};
use crate::scan::{scan, HashCache};
use crate::store::Store;

/// An entry for `content` at `path` (mode 644, mtime 1 ns).
pub(crate) fn entry_for(path: &str, content: &[u8]) -> Entry {
    Entry {
        path: path.into(),
        mode: 0o644,
        size: content.len() as u64,
        mtime_ns: 1,
        blake3: Digest::of(content),
    }
}

/// Writes `files` into a new folder under `dir`, scans it and publishes it to `store`.
pub(crate) async fn publish_files(
    store: &dyn Store,
    dir: &Path,
    files: &[(&str, &str)],
) -> Outcome {
    let src = dir.join(uuid::Uuid::new_v4().to_string());
    for (path, content) in files {
        let local = src.join(path);
        std::fs::create_dir_all(local.parent().unwrap()).unwrap();
        std::fs::write(&local, content).unwrap();
    }
    let files = scan(&src, &Default::default(), &mut HashCache::in_memory()).unwrap();
    publish(
        store,
        &Desired::from_scan(&files),
        &PublishOptions::default(),
    )
    .await
    .unwrap()
}
