//! Helpers shared by the unit tests of several modules.

use std::path::Path;

use crate::format::{Digest, Entry};
use crate::publish::{publish, Desired, Outcome, PublishOptions};
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
    let desired = Desired::from_folder(&src, &Default::default()).unwrap();
    publish(store, &desired, &PublishOptions::default())
        .await
        .unwrap()
}

/// The length of object `digest` where readers find it without the trash (in a pack under
/// `packs/` or loose under `objects/`), `None` if it is in neither.
pub(crate) async fn stored_len(store: &dyn Store, digest: &Digest) -> Option<u64> {
    let objects = crate::objects::Objects::new(None);
    objects.refresh(store).await.unwrap();
    objects.present_len(store, digest).await.unwrap()
}

/// Overwrites, in place, the bytes of packed object `digest` in the local store at `root`
/// with `bytes` (of the same length): a damaged pack, as a bad disk leaves it.
pub(crate) async fn damage_packed(store: &dyn Store, root: &Path, digest: &Digest, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let objects = crate::objects::Objects::new(None);
    objects.refresh(store).await.unwrap();
    let packed = objects.locate(digest).expect("the object is packed");
    assert_eq!(packed.span.len, bytes.len() as u64);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(root.join(crate::pack::pack_key(&packed.pack)))
        .unwrap();
    file.seek(SeekFrom::Start(packed.span.offset)).unwrap();
    file.write_all(bytes).unwrap();
}
