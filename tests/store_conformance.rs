//! The store contract (docs/DESIGN.md, "Store contract"), checked against both backends:
//! every `check_*` function below runs once on a `LocalStore` (module `local`) and once on an
//! `HdfsStore` over a real MiniDFSCluster (module `hdfs`).

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dagfs::store::{EntryKind, ErrorKind, Overwrite, Store, StoreResult, STAGING_DIR};

use support::minidfs::MiniDfs;

/// The timeout the HDFS stores in this suite use.
const TIMEOUT: Duration = Duration::from_secs(20);

type DynStore = Arc<dyn Store>;

/// A store under test and whatever keeps its backing alive.
struct Fixture {
    store: DynStore,
    _dir: Option<tempfile::TempDir>,
}

async fn local_fixture(_test: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = dagfs::store::LocalStore::open(dir.path().join("root"))
        .await
        .unwrap();
    Fixture {
        store: Arc::new(store),
        _dir: Some(dir),
    }
}

async fn hdfs_fixture(test: &str) -> Fixture {
    let cluster = tokio::task::spawn_blocking(MiniDfs::shared).await.unwrap();
    let url = cluster.unique_root(test);
    let store = dagfs::store::open(&url, &cluster.options(None, TIMEOUT))
        .await
        .unwrap();
    store.mkdirs("").await.unwrap();
    Fixture {
        store: Arc::from(store),
        _dir: None,
    }
}

/// Generates module `$backend` with one test per check, each on a fresh `$fixture` store.
macro_rules! backend_tests {
    ($backend:ident, $fixture:path, $($name:ident => $check:ident),*) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let fixture = $fixture(stringify!($name)).await;
                    super::$check(fixture.store.clone()).await;
                    super::assert_no_staged_files(&*fixture.store).await;
                }
            )*
        }
    };
}

/// Generates `local::NAME` and `hdfs::NAME` for every `NAME => check_function`.
macro_rules! conformance {
    ($($name:ident => $check:ident),* $(,)?) => {
        backend_tests!(local, super::local_fixture, $($name => $check),*);
        backend_tests!(hdfs, super::hdfs_fixture, $($name => $check),*);
    };
}

conformance! {
    put_then_read_returns_the_bytes => check_put_then_read,
    put_without_overwrite_is_a_compare_and_swap => check_put_deny,
    racing_puts_without_overwrite_have_one_winner => check_put_race,
    racing_exclusive_creates_have_one_winner => check_create_exclusive_race,
    readers_never_see_a_partial_put => check_put_atomic_for_readers,
    rename_with_and_without_overwrite => check_rename,
    ranged_reads_are_clamped_at_eof => check_read_range,
    stat_list_delete_mkdirs => check_metadata_ops,
    lists_ten_thousand_entries => check_list_10k,
    invalid_keys_are_rejected => check_invalid_keys,
}

fn kind<T: std::fmt::Debug>(result: StoreResult<T>) -> ErrorKind {
    result.expect_err("expected an error").kind()
}

async fn assert_no_staged_files(store: &dyn Store) {
    match store.list(STAGING_DIR).await {
        Ok(entries) => assert!(entries.is_empty(), "staged files left behind: {entries:?}"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::NotFound, "{e}"),
    }
}

async fn check_put_then_read(store: DynStore) {
    let data = Bytes::from_static(b"from airflow import DAG\n");
    store
        .put("dags/a/b/etl.py", data.clone(), Overwrite::Deny)
        .await
        .unwrap();
    assert_eq!(store.read("dags/a/b/etl.py").await.unwrap(), data);
    let info = store.stat("dags/a/b/etl.py").await.unwrap();
    assert_eq!(
        (info.kind, info.len, info.name()),
        (EntryKind::File, data.len() as u64, "etl.py")
    );
    assert_eq!(store.stat("dags/a").await.unwrap().kind, EntryKind::Dir);

    // Empty and multi-block objects (the MiniDFS block size is 1 MiB).
    store
        .put("empty", Bytes::new(), Overwrite::Deny)
        .await
        .unwrap();
    assert!(store.read("empty").await.unwrap().is_empty());
    let big: Bytes = (0..5 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
    store
        .put("big", big.clone(), Overwrite::Deny)
        .await
        .unwrap();
    assert_eq!(store.read("big").await.unwrap(), big);

    assert_eq!(kind(store.read("missing").await), ErrorKind::NotFound);
    assert_eq!(
        kind(store.read("dags").await),
        ErrorKind::Invalid,
        "reading a directory"
    );
}

async fn check_put_deny(store: DynStore) {
    support::put_new(&*store, "k", b"one").await;
    let err = store
        .put("k", Bytes::from_static(b"two"), Overwrite::Deny)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    assert_eq!(store.read("k").await.unwrap(), "one");
    store
        .put("k", Bytes::from_static(b"three"), Overwrite::Allow)
        .await
        .unwrap();
    assert_eq!(store.read("k").await.unwrap(), "three");
}

async fn check_put_race(store: DynStore) {
    for round in 0..5 {
        let key = format!("generations/{round:08}");
        let tasks: Vec<_> = (0..4)
            .map(|writer| {
                let store = store.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    let data = Bytes::from(format!("writer {writer}"));
                    (writer, store.put(&key, data, Overwrite::Deny).await)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            let (writer, result) = task.await.unwrap();
            match result {
                Ok(()) => winners.push(writer),
                Err(e) => assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let content = store.read(&key).await.unwrap();
        assert_eq!(
            content,
            format!("writer {}", winners[0]),
            "the winner's bytes stand"
        );
    }
}

async fn check_create_exclusive_race(store: DynStore) {
    for round in 0..5 {
        let key = format!("epochs/{round}");
        let a = tokio::spawn({
            let (store, key) = (store.clone(), key.clone());
            async move { store.create_exclusive(&key, Bytes::from_static(b"a")).await }
        });
        let b = tokio::spawn({
            let (store, key) = (store.clone(), key.clone());
            async move { store.create_exclusive(&key, Bytes::from_static(b"b")).await }
        });
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        let winner = match (&a, &b) {
            (Ok(()), Err(e)) if e.kind() == ErrorKind::AlreadyExists => "a",
            (Err(e), Ok(())) if e.kind() == ErrorKind::AlreadyExists => "b",
            other => panic!("round {round}: expected exactly one winner, got {other:?}"),
        };
        assert_eq!(store.read(&key).await.unwrap(), winner);
    }
    let err = store
        .create_exclusive("epochs/0", Bytes::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
}

async fn check_put_atomic_for_readers(store: DynStore) {
    use std::sync::atomic::{AtomicBool, Ordering};
    // Two versions of a multi-block object; a reader must only ever see one of them whole.
    // The writer keeps replacing the object until the reader has read it 20 times.
    let size = 3 * 1024 * 1024 + 5;
    let versions: Vec<Bytes> = (0..2u8)
        .map(|v| Bytes::from(vec![b'a' + v; size]))
        .collect();
    let enough = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (store, versions, enough) = (store.clone(), versions.clone(), enough.clone());
        async move {
            let mut writes = 0;
            while writes < 4 || !enough.load(Ordering::SeqCst) {
                let version = versions[writes % 2].clone();
                store.put("obj", version, Overwrite::Allow).await.unwrap();
                writes += 1;
            }
            writes
        }
    });
    let (mut seen, mut interrupted) = (0, 0);
    while !writer.is_finished() {
        match store.read("obj").await {
            Ok(bytes) => {
                let whole = versions.contains(&bytes);
                assert!(
                    whole,
                    "a reader saw {} bytes of a mixed or partial object",
                    bytes.len()
                );
                seen += 1;
                enough.store(seen >= 20, Ordering::SeqCst);
            }
            // Only before the first put lands: once the name exists, replacing it is one
            // atomic rename and the name never disappears.
            Err(e) if seen == 0 && e.kind() == ErrorKind::NotFound => {}
            // On HDFS a read that opened the old file can lose its blocks when the file is
            // replaced mid-read: an error, never wrong bytes.
            Err(e) if matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Corrupt) => {
                interrupted += 1
            }
            Err(e) => panic!("read during replacement failed: {e}"),
        }
    }
    let writes = writer.await.unwrap();
    assert!(seen >= 20, "only {seen} reads completed");
    assert!(versions.contains(&store.read("obj").await.unwrap()));
    eprintln!("{seen} whole reads, {interrupted} interrupted, during {writes} replacements");
}

async fn check_rename(store: DynStore) {
    support::put_new(&*store, "a", b"A").await;
    support::put_new(&*store, "b", b"B").await;

    assert_eq!(
        kind(store.rename("a", "b", Overwrite::Deny).await),
        ErrorKind::AlreadyExists
    );
    assert_eq!(store.read("a").await.unwrap(), "A", "source untouched");
    assert_eq!(store.read("b").await.unwrap(), "B", "destination untouched");

    store.rename("a", "b", Overwrite::Allow).await.unwrap();
    assert_eq!(store.read("b").await.unwrap(), "A");
    assert_eq!(kind(store.stat("a").await), ErrorKind::NotFound);

    assert_eq!(
        kind(store.rename("a", "c", Overwrite::Deny).await),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(store.rename("b", "no/such/dir/c", Overwrite::Deny).await),
        ErrorKind::NotFound
    );
    assert_eq!(store.read("b").await.unwrap(), "A");

    store.mkdirs("d1/sub").await.unwrap();
    support::put_new(&*store, "d1/sub/f", b"F").await;
    store.rename("d1", "d2", Overwrite::Deny).await.unwrap();
    assert_eq!(store.read("d2/sub/f").await.unwrap(), "F");
    assert_eq!(kind(store.stat("d1").await), ErrorKind::NotFound);
}

async fn check_read_range(store: DynStore) {
    let data = Bytes::from_static(b"0123456789");
    store.put("r", data.clone(), Overwrite::Deny).await.unwrap();
    let cases: [(u64, u64, &[u8]); 7] = [
        (0, 10, b"0123456789"),
        (2, 3, b"234"),
        (8, 100, b"89"),
        (10, 1, b""),
        (11, 5, b""),
        (u64::MAX - 1, 5, b""),
        (0, 0, b""),
    ];
    for (offset, len, want) in cases {
        let got = store.read_range("r", offset, len).await.unwrap();
        assert_eq!(&got[..], want, "read_range({offset}, {len})");
    }
    store.put("e", Bytes::new(), Overwrite::Deny).await.unwrap();
    assert!(store.read_range("e", 0, 10).await.unwrap().is_empty());
    assert_eq!(
        kind(store.read_range("missing", 0, 1).await),
        ErrorKind::NotFound
    );
}

async fn check_metadata_ops(store: DynStore) {
    store.mkdirs("x/y/z").await.unwrap();
    store.mkdirs("x/y/z").await.unwrap(); // idempotent
    support::put_new(&*store, "x/f1", b"1").await;
    support::put_new(&*store, "x/f2", b"22").await;
    assert_eq!(
        kind(store.mkdirs("x/f1").await),
        ErrorKind::AlreadyExists,
        "mkdirs over a file"
    );

    let listed: Vec<(String, EntryKind, u64)> = store
        .list("x")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.key, e.kind, e.len))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("x/f1".into(), EntryKind::File, 1),
            ("x/f2".into(), EntryKind::File, 2),
            ("x/y".into(), EntryKind::Dir, 0),
        ]
    );
    let root = support::list_keys(&*store, "").await;
    assert!(root.contains(&"x".to_string()), "{root:?}");
    assert_eq!(kind(store.list("missing").await), ErrorKind::NotFound);
    assert_eq!(
        kind(store.list("x/f1").await),
        ErrorKind::Invalid,
        "listing a file"
    );

    assert_eq!(
        kind(store.delete("x", false).await),
        ErrorKind::Invalid,
        "non-empty dir"
    );
    assert!(store.delete("x/f1", false).await.unwrap());
    assert!(
        !store.delete("x/f1", false).await.unwrap(),
        "second delete finds nothing"
    );
    assert!(store.delete("x", true).await.unwrap());
    assert_eq!(kind(store.stat("x/f2").await), ErrorKind::NotFound);
    assert_eq!(
        kind(store.delete("", true).await),
        ErrorKind::Invalid,
        "the root"
    );
}

async fn check_list_10k(store: DynStore) {
    const N: usize = 10_000;
    store.mkdirs("many").await.unwrap();
    let keys: Vec<String> = (0..N).map(|i| format!("many/{i:05}.py")).collect();
    futures::future::try_join_all(keys.chunks(N / 50).map(|chunk| {
        let store = store.clone();
        let chunk = chunk.to_vec();
        async move {
            for key in chunk {
                store.create_exclusive(&key, Bytes::new()).await?;
            }
            StoreResult::Ok(())
        }
    }))
    .await
    .unwrap();
    let listed = support::list_keys(&*store, "many").await;
    assert_eq!(listed, keys, "all {N} entries, sorted");
}

async fn check_invalid_keys(store: DynStore) {
    for key in ["/abs", "a/../b", "a//b", "a/", "nul\0"] {
        assert_eq!(kind(store.read(key).await), ErrorKind::Invalid, "{key:?}");
        assert_eq!(
            kind(store.put(key, Bytes::new(), Overwrite::Allow).await),
            ErrorKind::Invalid,
            "{key:?}"
        );
    }
}
