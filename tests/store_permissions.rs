//! Permission denied, the same check on both backends: a subtree owned by one user, read-only
//! to others, and a store opened as another user.
//!
//! HDFS runs with permissions on and the store acts as user `mallory`. Locally, root bypasses
//! file modes, so when the suite runs as root the check runs in a re-executed copy of this
//! test binary with the uid and gid of `nobody` (65534).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use dagfs::store::{ErrorKind, LocalStore, Overwrite, Store};

use support::minidfs::MiniDfs;

/// Environment variable handing the prepared local root to the unprivileged child.
const CHILD_ROOT: &str = "DAGFS_TEST_LOCKED_ROOT";
const NOBODY: u32 = 65534;

/// Every write and the read of a file without read permission must fail as PermissionDenied.
async fn check_permission_denied(store: &dyn Store) {
    let denied = |what: &str, kind: Option<ErrorKind>| {
        assert_eq!(kind, Some(ErrorKind::PermissionDenied), "{what}");
    };
    let put = store
        .put("locked/new", Bytes::from_static(b"x"), Overwrite::Allow)
        .await;
    denied("put", put.err().map(|e| e.kind()));
    let create = store.create_exclusive("locked/claim", Bytes::new()).await;
    denied("create_exclusive", create.err().map(|e| e.kind()));
    denied(
        "read",
        store.read("locked/secret").await.err().map(|e| e.kind()),
    );
    denied(
        "mkdirs",
        store.mkdirs("locked/sub").await.err().map(|e| e.kind()),
    );
    denied(
        "delete",
        store
            .delete("locked/secret", false)
            .await
            .err()
            .map(|e| e.kind()),
    );
    let rename = store
        .rename("locked/secret", "locked/moved", Overwrite::Deny)
        .await;
    denied("rename", rename.err().map(|e| e.kind()));
    // Reading metadata of the read-only directory stays allowed.
    assert!(store.stat("locked/secret").await.is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn hdfs_permission_denied() {
    let cluster = tokio::task::spawn_blocking(MiniDfs::shared).await.unwrap();
    let url = cluster.unique_root("permissions");
    let timeout = Duration::from_secs(20);
    let owner = dagfs::store::open(&url, &cluster.options(None, timeout))
        .await
        .unwrap();
    support::put_new(&*owner, "locked/secret", b"s").await;

    cluster
        .set_permission(&format!("{url}/locked"), 0o555)
        .await;
    cluster
        .set_permission(&format!("{url}/locked/secret"), 0o000)
        .await;

    let other = dagfs::store::open(&url, &cluster.options(Some("mallory"), timeout))
        .await
        .unwrap();
    check_permission_denied(&*other).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn local_permission_denied() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let owner = LocalStore::open(root.clone()).await.unwrap();
    support::put_new(&owner, "locked/secret", b"s").await;
    chmod(dir.path(), 0o755);
    chmod(&root, 0o755);
    chmod(&root.join("locked"), 0o555);
    chmod(&root.join("locked/secret"), 0o000);

    if rustix::process::geteuid().is_root() {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "local_permission_denied_as_nobody",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD_ROOT, &root)
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
        assert!(
            stdout.contains("1 passed"),
            "the child ran no check:\n{stdout}"
        );
    } else {
        check_permission_denied(&owner).await;
    }
    chmod(&root.join("locked"), 0o755); // let the temp dir be removed
}

/// The unprivileged half of [`local_permission_denied`]; it needs the root that test
/// prepares, so it only runs when that test starts it.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "run by local_permission_denied as uid 65534"]
async fn local_permission_denied_as_nobody() {
    let root = std::env::var_os(CHILD_ROOT).expect("started by local_permission_denied");
    let store = LocalStore::open(root.into()).await.unwrap();
    check_permission_denied(&store).await;
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}
