//! HDFS-only behaviour of the store: bounded calls when the NameNode dies or hangs, recovery
//! when it comes back, HA nameservice and viewfs URLs, and `fs.defaultFS` resolution.

mod support;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dagfs::store::{ErrorKind, HdfsOptions, Overwrite, Store};

use support::minidfs::{MiniDfs, MiniDfsOptions};

/// Slack allowed on top of the store timeout for scheduling and connection teardown.
const SLACK: Duration = Duration::from_secs(2);

async fn start(options: MiniDfsOptions) -> MiniDfs {
    tokio::task::spawn_blocking(move || MiniDfs::start(options))
        .await
        .unwrap()
}

/// Runs `call` until it succeeds or `deadline` passes; returns the last result.
async fn until_ok<T>(
    deadline: Duration,
    mut call: impl AsyncFnMut() -> dagfs::store::StoreResult<T>,
) -> T {
    let end = Instant::now() + deadline;
    loop {
        match call().await {
            Ok(value) => return value,
            Err(e) if Instant::now() < end => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("still failing after {deadline:?}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn namenode_stop_is_bounded_and_restart_recovers() {
    let cluster = start(MiniDfsOptions::default()).await;
    let timeout = Duration::from_secs(3);
    let url = format!("{}/dags", cluster.url());
    let store = dagfs::store::open(&url, &cluster.options(None, timeout))
        .await
        .unwrap();
    support::put_new(&*store, "a.py", b"a").await;

    // Calls in flight while the NameNode goes away: each must end within the bound, as a
    // success (before the stop) or as Unavailable/Timeout (after it). The worker keeps
    // calling until it has seen the outage three times (or a generous deadline passes).
    let store = std::sync::Arc::<dyn Store>::from(store);
    let worker = tokio::spawn({
        let store = store.clone();
        async move {
            let mut outcomes = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut failures = 0;
            for i in 0.. {
                if failures >= 3 || Instant::now() > deadline {
                    break;
                }
                let started = Instant::now();
                let result = if i % 2 == 0 {
                    store.read("a.py").await.map(drop)
                } else {
                    store
                        .put(&format!("p{i}"), Bytes::from_static(b"p"), Overwrite::Allow)
                        .await
                };
                failures += usize::from(result.is_err());
                outcomes.push((started.elapsed(), result.map_err(|e| e.kind())));
            }
            outcomes
        }
    });
    tokio::task::block_in_place(|| {
        cluster.stop_namenode(0);
    });
    let outcomes = worker.await.unwrap();
    let mut failures = 0;
    for (elapsed, outcome) in &outcomes {
        assert!(
            *elapsed <= timeout + SLACK,
            "a call took {elapsed:?}: {outcome:?}"
        );
        if let Err(kind) = outcome {
            assert!(
                matches!(kind, ErrorKind::Unavailable | ErrorKind::Timeout),
                "{kind:?}"
            );
            failures += 1;
        }
    }
    assert!(
        failures > 0,
        "the NameNode stop was not observed: {outcomes:?}"
    );

    // Stopped: a fresh call fails within the bound.
    let started = Instant::now();
    let err = store.stat("a.py").await.unwrap_err();
    assert!(err.kind().is_transient(), "{err}");
    assert!(
        started.elapsed() <= timeout + SLACK,
        "{:?}",
        started.elapsed()
    );

    // Restarted on the same port: the same store object works again.
    tokio::task::block_in_place(|| {
        cluster.restart_namenode(0);
    });
    let data = until_ok(Duration::from_secs(60), async || store.read("a.py").await).await;
    assert_eq!(data, "a");
    support::put_new(&*store, "after.py", b"b").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unresponsive_namenode_times_out() {
    // A socket that accepts connections and never answers: a hung NameNode or a black-holed
    // network path. The accepted connections are kept open until the test ends.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    let timeout = Duration::from_secs(1);
    let options = HdfsOptions {
        timeout,
        user: Some("dagfs".into()),
        ..HdfsOptions::default()
    };
    let store = dagfs::store::open(&format!("hdfs://127.0.0.1:{port}/dags"), &options)
        .await
        .unwrap();
    for (op, result) in [
        ("stat", store.stat("x").await.map(drop)),
        ("list", store.list("").await.map(drop)),
        (
            "put",
            store
                .put("x", Bytes::from_static(b"x"), Overwrite::Allow)
                .await,
        ),
    ] {
        let err = result.expect_err(op);
        assert_eq!(err.kind(), ErrorKind::Timeout, "{op}: {err}");
    }
    let started = Instant::now();
    let _ = store.read("x").await.unwrap_err();
    assert!(
        started.elapsed() <= timeout + SLACK,
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_connection_is_unavailable_or_timeout() {
    // Nothing listens on this port once the listener is dropped.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = HdfsOptions {
        timeout: Duration::from_secs(2),
        user: Some("dagfs".into()),
        properties: [(
            "dfs.client.failover.max.attempts".to_string(),
            "0".to_string(),
        )]
        .into(),
        ..HdfsOptions::default()
    };
    let store = dagfs::store::open(&format!("hdfs://127.0.0.1:{port}/dags"), &options)
        .await
        .unwrap();
    let err = store.stat("x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ha_nameservice_follows_a_namenode_failover() {
    let cluster = start(MiniDfsOptions {
        ha: true,
        ..MiniDfsOptions::default()
    })
    .await;
    assert_eq!(cluster.url(), "hdfs://dagfs-ha");
    let options = HdfsOptions {
        properties: [
            (
                "dfs.client.failover.sleep.base.millis".to_string(),
                "50".to_string(),
            ),
            (
                "dfs.client.failover.sleep.max.millis".to_string(),
                "500".to_string(),
            ),
        ]
        .into(),
        ..cluster.options(None, Duration::from_secs(20))
    };
    let store = dagfs::store::open("hdfs://dagfs-ha/airflow/dags", &options)
        .await
        .unwrap();
    support::put_new(&*store, "one.py", b"1").await;

    tokio::task::block_in_place(|| {
        cluster.transition_to_standby(0);
        cluster.transition_to_active(1);
    });
    assert_eq!(store.read("one.py").await.unwrap(), "1");
    support::put_new(&*store, "two.py", b"2").await;
    let names = support::list_keys(&*store, "").await;
    assert!(
        names.contains(&"one.py".into()) && names.contains(&"two.py".into()),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn viewfs_and_default_fs_urls_reach_the_same_files() {
    let cluster = tokio::task::spawn_blocking(MiniDfs::shared).await.unwrap();
    let options = cluster.options(None, Duration::from_secs(20));
    let direct = dagfs::store::open(&format!("{}/airflow/viewfs-test", cluster.url()), &options)
        .await
        .unwrap();
    direct
        .put("dag.py", Bytes::from_static(b"v"), Overwrite::Allow)
        .await
        .unwrap();

    // The launcher's core-site.xml links viewfs://dagfs-view/airflow to hdfs://.../airflow.
    let view = dagfs::store::open("viewfs://dagfs-view/airflow/viewfs-test", &options)
        .await
        .unwrap();
    assert_eq!(view.read("dag.py").await.unwrap(), "v");
    view.put("via-view.py", Bytes::from_static(b"w"), Overwrite::Deny)
        .await
        .unwrap();
    assert_eq!(direct.read("via-view.py").await.unwrap(), "w");

    // hdfs:///path resolves the NameNode from fs.defaultFS.
    let default = dagfs::store::open("hdfs:///airflow/viewfs-test", &options)
        .await
        .unwrap();
    assert_eq!(default.read("dag.py").await.unwrap(), "v");
}

/// A read while the only DataNode holding the file is down (its port refuses; the NameNode
/// still lists it) asks the NameNode again, as Hadoop's client does, until the store timeout:
/// it succeeds once the DataNode is back, and fails as `Unavailable` within the timeout if it
/// stays away. hdfs-native alone gives up on the first refusal.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_outlasts_a_datanode_restart_within_the_timeout() {
    let cluster = start(MiniDfsOptions::default()).await;
    let url = format!("{}/dags", cluster.url());
    let patient: std::sync::Arc<dyn Store> =
        dagfs::store::open(&url, &cluster.options(None, Duration::from_secs(120)))
            .await
            .unwrap()
            .into();
    let short = Duration::from_secs(3);
    let hasty = dagfs::store::open(&url, &cluster.options(None, short))
        .await
        .unwrap();
    let data = Bytes::from((0..9 << 20).map(|i: u32| i as u8).collect::<Vec<u8>>());
    patient
        .put("pack", data.clone(), Overwrite::Deny)
        .await
        .unwrap();

    tokio::task::block_in_place(|| cluster.stop_datanode(0));
    let waiting = tokio::spawn({
        let store = patient.clone();
        async move { store.read("pack").await }
    });
    let started = Instant::now();
    let err = hasty.read("pack").await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(
        took <= short + SLACK,
        "a read took {took:?} past its timeout"
    );
    assert!(
        !waiting.is_finished(),
        "the read gave up while the DataNode was down: {:?}",
        waiting.await.unwrap().map(|d| d.len())
    );

    tokio::task::block_in_place(|| cluster.restart_datanode(0));
    let read = waiting
        .await
        .unwrap()
        .expect("the read outlasts the DataNode's restart");
    assert!(
        read == data,
        "the bytes read back differ from those written"
    );
}
