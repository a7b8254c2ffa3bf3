//! The metadata database against real servers (a private PostgreSQL and MariaDB, Debian's
//! packages): the connection resolved from `airflow.cfg` as Airflow writes it, the one-line
//! errors for a wrong password, a missing database and a stopped server, and the database
//! coordinator's lease row as a compare-and-swap register.

mod support;

use std::time::Duration;

use dagfs::config::DatabaseConfig;
use dagfs::election::{
    Beat, Claimed, Coordinator, DatabaseCoordinator, SqlCoordinator, SqlLeaseTable, Version,
};
use dagfs::metadb::{self, MetaDb, Pool, PoolSettings};

use support::database::{Kind, Server};

fn settings() -> PoolSettings {
    PoolSettings {
        max_connections: 2,
        connect_timeout: Duration::from_secs(10),
        statement_timeout: Duration::from_secs(2),
    }
}

async fn select_one(db: &MetaDb) -> i64 {
    match &db.pool {
        Pool::Postgres(pool) => sqlx::query_scalar("SELECT 1::bigint")
            .fetch_one(pool)
            .await
            .unwrap(),
        Pool::MySql(pool) => sqlx::query_scalar("SELECT CAST(1 AS SIGNED)")
            .fetch_one(pool)
            .await
            .unwrap(),
    }
}

fn with_url(url: &str) -> DatabaseConfig {
    DatabaseConfig {
        url: Some(url.to_string()),
        ..DatabaseConfig::default()
    }
}

async fn connects_from_airflow_cfg_and_explains_bad_settings(kind: Kind) {
    let server = Server::start(kind);
    // Airflow's own file, with the URL under [database] (%% is configparser's %).
    let home = tempfile::tempdir().unwrap();
    let cfg = home.path().join("airflow.cfg");
    std::fs::write(
        &cfg,
        format!(
            "[core]\nexecutor = LocalExecutor\n\n[database]\nsql_alchemy_conn = {}\n",
            server.sqlalchemy_url().replace('%', "%%")
        ),
    )
    .unwrap();
    let config = DatabaseConfig {
        airflow_config: Some(cfg.clone()),
        ..DatabaseConfig::default()
    };
    let url = metadb::resolve_with(&config, &|_| None).unwrap();
    assert!(url.setting.contains("airflow.cfg"), "{url:?}");
    let db = MetaDb::connect(&url, &settings()).await.unwrap();
    assert_eq!(select_one(&db).await, 1);

    // A server-side statement timeout is in force on every connection.
    let started = std::time::Instant::now();
    let slow = match &db.pool {
        Pool::Postgres(pool) => sqlx::query("SELECT pg_sleep(5)")
            .execute(pool)
            .await
            .map(drop),
        Pool::MySql(pool) => sqlx::query("SELECT SLEEP(5) FROM DUAL")
            .execute(pool)
            .await
            .map(drop),
    };
    assert!(
        slow.is_err() && started.elapsed() < Duration::from_secs(4),
        "a 5 s statement ran under a 2 s statement_timeout: {slow:?}"
    );

    let wrong_password = server.sqlalchemy_url().replace("dagfs-pw", "nope");
    let err = MetaDb::connect(
        &metadb::resolve(&with_url(&wrong_password)).unwrap(),
        &settings(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("refused the user or password"), "{err}");
    assert!(err.contains("[database] url in the dagfs config"), "{err}");
    assert!(!err.contains("nope") && !err.contains('\n'), "{err}");

    let missing_db = server.sqlalchemy_url().replace("/airflow", "/nosuchdb");
    let err = MetaDb::connect(
        &metadb::resolve(&with_url(&missing_db)).unwrap(),
        &settings(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("does not exist"), "{err}");

    let url = server.sqlalchemy_url();
    drop(db);
    drop(server);
    let quick = PoolSettings {
        connect_timeout: Duration::from_secs(2),
        ..settings()
    };
    let err = MetaDb::connect(&metadb::resolve(&with_url(&url)).unwrap(), &quick)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("unreachable"), "{err}");
}

#[tokio::test]
async fn postgres_connection_from_airflow_cfg_and_bad_settings() {
    connects_from_airflow_cfg_and_explains_bad_settings(Kind::Postgres).await;
}

#[tokio::test]
async fn mariadb_connection_from_airflow_cfg_and_bad_settings() {
    connects_from_airflow_cfg_and_explains_bad_settings(Kind::MariaDb).await;
}

fn beat(owner: &str, epoch: u64) -> Beat {
    Beat {
        epoch,
        owner: owner.into(),
        host: owner.into(),
        pid: 1,
        instance: 7,
        released: false,
        generation: None,
        tree_id: None,
        lease_ms: Some(3000),
        kill_grace_ms: Some(1000),
    }
}

/// The lease row's SQL on a real server: concurrent creators of the table all succeed; of
/// racing claims from one version exactly one wins; a claim repeated after its reply was
/// lost is recognised as landed; a stale expectation and a row deleted by hand lose.
async fn lease_row_is_a_compare_and_swap_register(kind: Kind) {
    let server = Server::start(kind);
    let url = metadb::resolve(&with_url(&server.sqlalchemy_url())).unwrap();
    let group = "hdfs://ns/airflow/dagfs";
    let opened = futures::future::join_all((0..4).map(|_| {
        let url = url.clone();
        async move {
            let db = MetaDb::connect(&url, &settings()).await.unwrap();
            SqlLeaseTable::open(db, group).await
        }
    }))
    .await;
    let coordinators: Vec<SqlCoordinator> = opened
        .into_iter()
        .map(|t| DatabaseCoordinator::new(t.expect("concurrent creators all succeed")))
        .collect();
    assert_eq!(coordinators[0].read().await.unwrap().version, None);

    let race = |expected: Option<Version>, seq: u64| {
        let coordinators = &coordinators;
        async move {
            let claims = coordinators.iter().enumerate().map(|(i, c)| async move {
                c.claim(expected, seq, &beat(&format!("c{i}"), seq))
                    .await
                    .unwrap()
            });
            futures::future::join_all(claims).await
        }
    };
    let won = |results: &[Claimed]| -> Vec<Version> {
        results
            .iter()
            .filter_map(|r| match r {
                Claimed::Won(v) => Some(*v),
                _ => None,
            })
            .collect()
    };
    let first = race(None, 1).await;
    assert_eq!(won(&first).len(), 1, "{first:?}");
    let v1 = won(&first)[0];
    let second = race(Some(v1), 2).await;
    assert_eq!(won(&second).len(), 1, "{second:?}");
    let v2 = won(&second)[0];
    let winner = second
        .iter()
        .position(|r| matches!(r, Claimed::Won(_)))
        .unwrap();
    for (i, r) in second.iter().enumerate().filter(|(i, _)| *i != winner) {
        assert!(
            matches!(r, Claimed::Lost(Some(b)) if b.owner == format!("c{winner}")),
            "c{i}: {r:?}"
        );
    }
    let snapshot = coordinators[0].read().await.unwrap();
    assert_eq!(snapshot.version, Some(v2));
    assert_eq!(snapshot.beat.unwrap().owner, format!("c{winner}"));

    // The winner's reply was lost: it claims again from the same version.
    let again = coordinators[winner]
        .claim(Some(v1), 2, &beat(&format!("c{winner}"), 2))
        .await
        .unwrap();
    assert_eq!(again, Claimed::Landed(v2));
    // Anyone else with that stale expectation loses.
    let other = (winner + 1) % 4;
    let stale = coordinators[other]
        .claim(Some(v1), 2, &beat(&format!("c{other}"), 2))
        .await
        .unwrap();
    assert!(matches!(stale, Claimed::Lost(Some(_))), "{stale:?}");

    // An operator deletes the row: the old version never matches again; a claim over the
    // empty register wins once.
    server.admin("airflow", "DELETE FROM dagfs_failover_lease");
    assert_eq!(coordinators[0].read().await.unwrap().version, None);
    let lost = coordinators[winner]
        .claim(Some(v2), 3, &beat(&format!("c{winner}"), 2))
        .await
        .unwrap();
    assert_eq!(lost, Claimed::Lost(None));
    let empty = race(None, 10).await;
    assert_eq!(won(&empty).len(), 1, "{empty:?}");
}

#[tokio::test]
async fn postgres_lease_row_is_a_compare_and_swap_register() {
    lease_row_is_a_compare_and_swap_register(Kind::Postgres).await;
}

#[tokio::test]
async fn mariadb_lease_row_is_a_compare_and_swap_register() {
    lease_row_is_a_compare_and_swap_register(Kind::MariaDb).await;
}
