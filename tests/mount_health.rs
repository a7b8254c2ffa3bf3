//! The mount's `/healthz` and its start from the cache, with a real FUSE mount served in
//! process over a local store wrapped in a fault-injecting store (issue 14, bugs 5 and 6).
//!
//! `/healthz` answers 503 while (1) polls fail: the store cannot be listed or read, or lists
//! no generations any more; (2) the served generation has files that read as EIO (corrupt
//! in the store). A mount whose store refuses it at start (PermissionDenied: an expired
//! Kerberos ticket at boot) serves the newest complete generation in its cache.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dagfs::config::MountConfig;
use dagfs::format::{object_key, Digest};
use dagfs::metrics::{Health, Registry};
use dagfs::mount::metrics::MountMetrics;
use dagfs::mount::state::StateDir;
use dagfs::mount::{MountError, MountOptions};
use dagfs::publish::{publish, Desired, PublishOptions};
use dagfs::store::faulty::{FaultyStore, Op, Rule};
use dagfs::store::{ErrorKind, LocalStore, Overwrite, Store};

async fn push(store: &dyn Store, dir: &Path, files: &[(&str, &str)]) {
    let src = dir.join(uuid::Uuid::new_v4().to_string());
    for (path, content) in files {
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join(path), content).unwrap();
    }
    let desired = Desired::from_folder(&src, &Default::default()).unwrap();
    publish(store, &desired, &PublishOptions::default())
        .await
        .unwrap();
}

fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    support::http_get(&addr.to_string(), path).expect("GET")
}

/// Polls `/healthz` until its answer satisfies `check`.
async fn healthz_until(addr: std::net::SocketAddr, what: &str, check: impl Fn(u16, &str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = tokio::task::spawn_blocking(move || get(addr, "/healthz"))
            .await
            .unwrap();
        if check(code, &body) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; /healthz: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: std::thread::JoinHandle<Result<(), MountError>>,
    addr: std::net::SocketAddr,
    _server: dagfs::metrics::MetricsServer,
}

fn start(store: Arc<dyn Store>, dir: &Path, name: &str) -> Running {
    let mountpoint = dir.join(name);
    std::fs::create_dir_all(&mountpoint).unwrap();
    let mut registry = Registry::default();
    let metrics = MountMetrics::register(&mut registry);
    let health = Health::default();
    let server = dagfs::metrics::serve(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(registry),
        health.clone(),
    )
    .unwrap();
    let options = MountOptions {
        mountpoint,
        cache_dir: dir.join("cache"),
        pin: None,
        allow_other: false,
        config: MountConfig {
            poll: Duration::from_millis(100),
            ..MountConfig::default()
        },
        state_dir: StateDir::at(dir.join("run")),
        metrics,
        health,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // The mount runs the way `dagfs mount` runs it: on a runtime of its own, not spawned.
    let task = std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(dagfs::mount::run(store, options, async move {
                let _ = stopped.await;
            }))
    });
    Running {
        stop,
        task,
        addr: server.addr(),
        _server: server,
    }
}

impl Running {
    async fn stop(self) -> Result<(), MountError> {
        let _ = self.stop.send(());
        tokio::task::spawn_blocking(move || self.task.join().unwrap())
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn healthz_is_503_for_each_unhealthy_condition() {
    let dir = tempfile::tempdir().unwrap();
    let inner: Arc<dyn Store> = Arc::new(LocalStore::open(dir.path().join("store")).await.unwrap());
    push(&*inner, dir.path(), &[("a.py", "A1")]).await;
    let faulty = Arc::new(FaultyStore::new(Arc::clone(&inner)));
    let mount = start(Arc::clone(&faulty) as Arc<dyn Store>, dir.path(), "mnt");
    let states = StateDir::at(dir.path().join("run"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while states
        .read(&dir.path().join("mnt"))
        .map(|s| s.generation)
        .ok()
        != Some(Some(1))
    {
        if mount.task.is_finished() {
            panic!("the mount did not start: {:?}", mount.task.join());
        }
        assert!(
            Instant::now() < deadline,
            "the mount never served generation 1"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    healthz_until(mount.addr, "healthy", |code, _| code == 200).await;

    // 1. The store cannot be listed.
    faulty.add(Rule::fail(Op::List, 1, ErrorKind::Unavailable).times(usize::MAX));
    healthz_until(mount.addr, "503 while polls fail", |code, body| {
        code == 503 && body.contains("poll failed") && body.contains("generation 1")
    })
    .await;
    faulty.clear();
    healthz_until(mount.addr, "healthy again", |code, _| code == 200).await;

    // 2. The new head has a file whose bytes are corrupt in the store (garbage of the
    // right length was there first, and the push reused it).
    let b = object_key(&Digest::of(b"B2"));
    inner
        .put(&b, bytes::Bytes::from_static(b"XX"), Overwrite::Allow)
        .await
        .unwrap();
    push(&*inner, dir.path(), &[("a.py", "A1"), ("b.py", "B2")]).await;
    healthz_until(
        mount.addr,
        "503 for files that read as EIO",
        |code, body| code == 503 && body.contains("EIO") && body.contains("b.py"),
    )
    .await;
    inner
        .put(&b, bytes::Bytes::from_static(b"B2"), Overwrite::Allow)
        .await
        .unwrap();
    healthz_until(mount.addr, "healthy once the bytes are back", |code, _| {
        code == 200
    })
    .await;

    // 3. The store lists no generations any more (a deleted or replaced root).
    inner.delete("generations", true).await.unwrap();
    healthz_until(mount.addr, "503 when generations vanish", |code, body| {
        code == 503 && body.contains("no generations")
    })
    .await;
    let mountpoint = dir.path().join("mnt");
    assert_eq!(
        std::fs::read_to_string(mountpoint.join("b.py")).unwrap(),
        "B2",
        "still serving the last generation"
    );
    mount.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_refusing_the_mount_at_start_serves_the_complete_cache() {
    let dir = tempfile::tempdir().unwrap();
    let inner: Arc<dyn Store> = Arc::new(LocalStore::open(dir.path().join("store")).await.unwrap());
    push(&*inner, dir.path(), &[("a.py", "A1")]).await;
    // A first run fills the cache.
    let first = start(Arc::clone(&inner), dir.path(), "mnt");
    healthz_until(first.addr, "healthy", |code, _| code == 200).await;
    first.stop().await.unwrap();

    // Boot with an expired ticket: every call is refused.
    let faulty = Arc::new(FaultyStore::new(Arc::clone(&inner)));
    for op in Op::ALL {
        faulty.add(Rule::fail(op, 1, ErrorKind::PermissionDenied).times(usize::MAX));
    }
    let mount = start(Arc::clone(&faulty) as Arc<dyn Store>, dir.path(), "mnt");
    let mountpoint = dir.path().join("mnt");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(mountpoint.join("a.py"))
        .ok()
        .as_deref()
        != Some("A1")
    {
        if mount.task.is_finished() {
            panic!("the mount refused to start: {:?}", mount.task.join());
        }
        assert!(
            Instant::now() < deadline,
            "the mount never served the cache"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    healthz_until(mount.addr, "503 while the store refuses", |code, body| {
        code == 503 && body.contains("permission denied")
    })
    .await;
    // A mount the store refuses is offline, also after polls that reached the NameNode and
    // were refused: the failover gate and the identical-DAGs rule stop a unit whose offline
    // mount is behind, and an "online" mount stuck on a refusal would never be stopped.
    let refused_polls = |metrics: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("dagfs_mount_errors_total{kind=\"permission_denied\"} "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = mount.addr;
    let metrics = loop {
        let (_, metrics) = tokio::task::spawn_blocking(move || get(addr, "/metrics"))
            .await
            .unwrap();
        // Two refused polls: the state file was written after at least one of them.
        if refused_polls(&metrics) >= 2 {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "no refused poll counted:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let state = StateDir::at(dir.path().join("run"))
        .read(&mountpoint)
        .unwrap();
    assert!(
        !state.online,
        "a refused mount says it is online: {state:?}"
    );
    assert!(
        metrics.contains("dagfs_mount_online 0"),
        "a refused mount counts as online:\n{metrics}"
    );
    mount.stop().await.unwrap();
}
