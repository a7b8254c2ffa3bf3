//! `dagfs import` of a plain DAG folder on a real HDFS (MiniDFS): the generation equals a
//! `push` of the same files, a folder changing under the import never yields a mixed
//! generation, and bad input is one line, a non-zero exit, and nothing published.

mod support;

use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dagfs::format::Digest;
use dagfs::generations;
use dagfs::import::{import, ImportError, ImportOptions};
use dagfs::store::{EntryInfo, Overwrite, Store, StoreResult};

use support::minidfs::{superuser, MiniDfs};

const TIMEOUT: Duration = Duration::from_secs(20);

async fn cluster() -> &'static MiniDfs {
    tokio::task::spawn_blocking(MiniDfs::shared).await.unwrap()
}

async fn open(cluster: &MiniDfs, url: &str) -> Box<dyn Store> {
    dagfs::store::open(url, &cluster.options(None, TIMEOUT))
        .await
        .unwrap()
}

/// `dagfs ARGS` against `cluster` as `user`, configured through the environment.
fn dagfs(cluster: &MiniDfs, user: &str, args: &[&str]) -> Output {
    support::dagfs_command(args)
        .env("DAGFS_STORE_HADOOP_CONF_DIR", cluster.conf_dir())
        .env("DAGFS_STORE_USER", user)
        .env("DAGFS_STORE_TIMEOUT", "20s")
        .env("DAGFS_PUBLISH_MIRROR", "false")
        .env("DAGFS_PUBLISH_CONCURRENCY", "64")
        .env(
            "XDG_CACHE_HOME",
            std::env::temp_dir().join("dagfs-test-cache"),
        )
        .output()
        .expect("run dagfs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The tree id a successful `--json` publish printed.
fn tree_id(out: &Output) -> String {
    assert!(
        out.status.success(),
        "dagfs failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["published"], true, "{summary}");
    summary["tree_id"].as_str().unwrap().to_string()
}

/// `hadoop fs ARGS` on `cluster`; panics with Hadoop's message if it fails.
fn hadoop_fs(cluster: &MiniDfs, args: &[&str]) {
    let out = cluster.hadoop_fs(args);
    assert!(
        out.status.success(),
        "hadoop fs {args:?}: {}",
        text(&out.stderr)
    );
}

/// The tree id of a `dagfs push` of `dir` into a fresh local store at `store`.
fn push_tree_id(cluster: &MiniDfs, dir: &Path, store: &Path) -> String {
    let (dir, store) = (dir.to_str().unwrap(), store.to_str().unwrap());
    tree_id(&dagfs(
        cluster,
        &superuser(),
        &["push", dir, "--to", store, "--json"],
    ))
}

fn write(dir: &Path, rel: &str, content: &[u8], mode: u32, mtime: SystemTime) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    support::set_mtime(&path, mtime);
}

/// The acceptance check: 1,000 DAG files put into a plain HDFS folder with Hadoop's own
/// `hadoop fs -put -p` (which keeps modes and mtimes), imported; the generation's tree id is
/// the one `dagfs push` of the local files gives, and the one of a `hadoop fs -get -p` copy.
///
/// The rule this relies on (docs/DESIGN.md, "Import"): an imported entry records the HDFS
/// permission bits and modification time. HDFS keeps milliseconds, so the local mtimes here
/// are whole milliseconds; a local file with sub-millisecond mtime would differ in mtime
/// after any copy through HDFS, and so in tree id.
#[tokio::test(flavor = "multi_thread")]
async fn import_of_1000_files_matches_a_push_of_the_same_files() {
    let cluster = cluster().await;
    let root = cluster.unique_root("import");
    let local = tempfile::tempdir().unwrap();
    let dags = local.path().join("dags");
    let base = UNIX_EPOCH + Duration::from_secs(1_760_000_000);
    for i in 0..1000u64 {
        let mode = if i % 10 == 0 { 0o755 } else { 0o644 };
        let mtime = base + Duration::from_millis(i * 1_037);
        let body = format!(
            "from airflow import DAG\n# dag {i}\n{}\n",
            "x".repeat(i as usize % 300)
        );
        write(
            &dags,
            &format!("team_{}/dag_{i}.py", i % 25),
            body.as_bytes(),
            mode,
            mtime,
        );
    }
    // Left out by push and import alike: debris, and what .dagfsignore names.
    for rel in [
        "__pycache__/x.cpython-311.pyc",
        "team_0/.dag_0.py.swp",
        "scratch/tmp.py",
    ] {
        write(&dags, rel, b"junk", 0o644, base);
    }
    write(&dags, ".dagfsignore", b"scratch/\n", 0o644, base);

    let path = root.strip_prefix(cluster.url()).unwrap();
    let source = format!("{root}/dags");
    hadoop_fs(cluster, &["-mkdir", "-p", path]);
    hadoop_fs(
        cluster,
        &["-put", "-p", "-t", "16", dags.to_str().unwrap(), path],
    );

    let imported = tree_id(&dagfs(
        cluster,
        &superuser(),
        &[
            "import",
            &source,
            "--to",
            &format!("{root}/store"),
            "--json",
        ],
    ));
    let pushed = push_tree_id(cluster, &dags, &local.path().join("pushed"));
    assert_eq!(imported, pushed);

    let fetched = local.path().join("fetched");
    hadoop_fs(
        cluster,
        &[
            "-get",
            "-p",
            &format!("{path}/dags"),
            fetched.to_str().unwrap(),
        ],
    );
    let pushed_copy = push_tree_id(cluster, &fetched, &local.path().join("pushed-copy"));
    assert_eq!(imported, pushed_copy);

    let store = open(cluster, &format!("{root}/store")).await;
    let head = generations::load_head(&*store).await.unwrap().unwrap();
    assert_eq!((head.generation, head.entries.len()), (1, 1001));
    assert_eq!(head.message, format!("import of {source}"));
    let modes: Vec<u32> = head.entries.iter().map(|e| e.mode).collect();
    assert_eq!(modes.iter().filter(|&&m| m == 0o755).count(), 100);

    // The plain folder is untouched: no store files appeared in it.
    let files = dagfs::store::files_under(&*open(cluster, &root).await, "dags")
        .await
        .unwrap();
    assert_eq!(
        files.len(),
        1000 + 4,
        "the DAGs, the debris and .dagfsignore"
    );
    assert!(
        files
            .iter()
            .all(|f| f == ".dagfsignore" || !f.starts_with(".dagfs")),
        "{files:?}"
    );
}

/// How [`Meddling`] changes the source behind the import's back.
#[derive(Debug, Clone, Copy)]
enum Meddle {
    /// On the first hashing read of `trigger` in each of the first `times` attempts, rewrite
    /// `victims` (one hashed already, so its old digest is in hand; the trigger itself).
    WhileHashing {
        trigger: &'static str,
        victims: &'static [&'static str],
        times: usize,
    },
    /// On the first upload read of `victim`, rewrite it.
    WhileUploading { victim: &'static str },
}

/// The source store, plus a writer that rewrites files at chosen points: a deterministic
/// concurrent writer. It writes through a store rooted one level up, so its staging directory
/// stays out of the folder.
#[derive(Debug)]
struct Meddling {
    inner: Box<dyn Store>,
    writer: Box<dyn Store>,
    folder: String,
    meddle: Meddle,
    rewrites: Mutex<usize>,
}

impl Meddling {
    /// Rewrites `victims` with content of the same length (letter case flipped): only the
    /// mtime and the digest tell the new state from the old.
    async fn rewrite(&self, victims: &[&str]) {
        *self.rewrites.lock().unwrap() += 1;
        for victim in victims {
            let key = format!("{}/{victim}", self.folder);
            let mut content = self.writer.read(&key).await.unwrap().to_vec();
            for byte in &mut content {
                *byte ^= if byte.is_ascii_alphabetic() { 0x20 } else { 0 };
            }
            self.writer
                .put(&key, Bytes::from(content), Overwrite::Allow)
                .await
                .unwrap();
        }
    }
}

#[async_trait::async_trait]
impl Store for Meddling {
    fn url(&self) -> &str {
        self.inner.url()
    }
    async fn put(&self, key: &str, data: Bytes, overwrite: Overwrite) -> StoreResult<()> {
        self.inner.put(key, data, overwrite).await
    }
    async fn create_exclusive(&self, key: &str, data: Bytes) -> StoreResult<()> {
        self.inner.create_exclusive(key, data).await
    }
    async fn read(&self, key: &str) -> StoreResult<Bytes> {
        if let Meddle::WhileUploading { victim } = self.meddle {
            if key == victim && *self.rewrites.lock().unwrap() == 0 {
                self.rewrite(&[victim]).await;
            }
        }
        self.inner.read(key).await
    }
    async fn read_range(&self, key: &str, offset: u64, len: u64) -> StoreResult<Bytes> {
        if let Meddle::WhileHashing {
            trigger,
            victims,
            times,
        } = self.meddle
        {
            if key == trigger && offset == 0 && *self.rewrites.lock().unwrap() < times {
                self.rewrite(victims).await;
            }
        }
        self.inner.read_range(key, offset, len).await
    }
    async fn stat(&self, key: &str) -> StoreResult<EntryInfo> {
        self.inner.stat(key).await
    }
    async fn list(&self, key: &str) -> StoreResult<Vec<EntryInfo>> {
        self.inner.list(key).await
    }
    async fn rename(&self, from: &str, to: &str, overwrite: Overwrite) -> StoreResult<()> {
        self.inner.rename(from, to, overwrite).await
    }
    async fn delete(&self, key: &str, recursive: bool) -> StoreResult<bool> {
        self.inner.delete(key, recursive).await
    }
    async fn mkdirs(&self, key: &str) -> StoreResult<()> {
        self.inner.mkdirs(key).await
    }
}

/// A plain folder of 20 files on HDFS; returns (root URL, a meddling source over it).
async fn meddled_folder(cluster: &MiniDfs, test: &str, meddle: Meddle) -> (String, Meddling) {
    let root = cluster.unique_root(test);
    let writer = open(cluster, &root).await;
    for i in 0..20 {
        writer
            .put(
                &format!("dags/dag_{i:02}.py"),
                Bytes::from(format!("dag {i}")),
                Overwrite::Deny,
            )
            .await
            .unwrap();
    }
    let source = Meddling {
        inner: open(cluster, &format!("{root}/dags")).await,
        writer,
        folder: "dags".into(),
        meddle,
        rewrites: Mutex::new(0),
    };
    (root, source)
}

fn quick() -> ImportOptions {
    ImportOptions {
        backoff: Duration::from_millis(10),
        ..ImportOptions::default()
    }
}

/// The tree of the folder as it is now, by a fresh import into a scratch store.
async fn settled_tree(cluster: &MiniDfs, root: &str) -> Digest {
    let source: Arc<dyn Store> = open(cluster, &format!("{root}/dags")).await.into();
    let scratch = open(cluster, &format!("{root}/settled")).await;
    import(source, &*scratch, &quick()).await.unwrap().tree_id
}

/// A folder rewritten while it is imported yields a generation of one of its states, whole.
///
/// While hashing: `dag_03.py` (hashed already, its old object in the store from an earlier
/// import) and `dag_15.py` (about to be hashed) are rewritten at the same length. Without the
/// second listing the generation would pair the old `dag_03.py` with the new `dag_15.py`.
/// While uploading: the rewritten file no longer has the digest the listing was hashed to.
#[tokio::test(flavor = "multi_thread")]
async fn a_folder_changing_during_the_import_never_yields_a_mixed_generation() {
    let cluster = cluster().await;
    let cases = [
        (
            Meddle::WhileHashing {
                trigger: "dag_15.py",
                victims: &["dag_03.py", "dag_15.py"],
                times: 1,
            },
            true,
        ),
        (
            Meddle::WhileUploading {
                victim: "dag_07.py",
            },
            false,
        ),
    ];
    for (meddle, imported_before) in cases {
        let (root, source) = meddled_folder(cluster, "import-moving", meddle).await;
        let target = open(cluster, &format!("{root}/store")).await;
        if imported_before {
            let plain: Arc<dyn Store> = open(cluster, &format!("{root}/dags")).await.into();
            import(plain, &*target, &quick()).await.unwrap();
        }
        let source: Arc<dyn Store> = Arc::new(source);
        let outcome = import(source, &*target, &quick())
            .await
            .unwrap_or_else(|e| panic!("{meddle:?}: {e}"));
        assert_eq!(
            outcome.tree_id,
            settled_tree(cluster, &root).await,
            "{meddle:?}: the generation is the state after the rewrite"
        );
        let head = generations::load_head(&*target).await.unwrap().unwrap();
        let expected = if imported_before { 2 } else { 1 };
        assert_eq!(head.generation, expected, "{meddle:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_folder_that_never_settles_is_refused_and_nothing_is_published() {
    let cluster = cluster().await;
    let meddle = Meddle::WhileHashing {
        trigger: "dag_10.py",
        victims: &["dag_02.py"],
        times: usize::MAX,
    };
    let (root, source) = meddled_folder(cluster, "import-unstable", meddle).await;
    let target = open(cluster, &format!("{root}/store")).await;
    let err = import(Arc::new(source), &*target, &quick())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImportError::Unstable { attempts: 3, .. }),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains("dag_02.py") && message.contains("nothing was published"),
        "{message}"
    );
    assert_eq!(generations::head(&*target).await.unwrap(), None);
}

/// Bad input on the command line: one line naming the problem, exit 1, nothing published.
#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_one_line_a_failure_exit_and_nothing_published() {
    let cluster = cluster().await;
    let root = cluster.unique_root("import-bad");
    let owner = open(cluster, &root).await;
    for key in ["dags/a.py", "locked/b.py"] {
        support::put_new(&*owner, key, b"x = 1\n").await;
    }
    owner.mkdirs("store").await.unwrap();
    cluster
        .set_permission(&format!("{root}/locked"), 0o700)
        .await;
    cluster
        .set_permission(&format!("{root}/store"), 0o777)
        .await;

    let store = format!("{root}/store");
    let cases: [(&str, String, &str); 5] = [
        ("missing", format!("{root}/nope"), "does not exist"),
        ("a file", format!("{root}/dags/a.py"), "is a file"),
        ("the target", store.clone(), "overlap"),
        ("around the target", root.clone(), "overlap"),
        ("unreadable", format!("{root}/locked"), "permission denied"),
    ];
    for (what, source, expected) in cases {
        let out = dagfs(cluster, "mallory", &["import", &source, "--to", &store]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{what}: {stderr}");
        assert!(
            stderr.starts_with("dagfs import: ") && stderr.contains(expected),
            "{what}: {stderr}"
        );
        assert_eq!(
            generations::head(&*open(cluster, &store).await)
                .await
                .unwrap(),
            None,
            "{what}: nothing published"
        );
    }
}
