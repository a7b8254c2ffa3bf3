//! The metadata database connection against real servers (a private PostgreSQL and
//! MariaDB, Debian's packages): resolved from `airflow.cfg` as Airflow writes it, and the
//! one-line errors for a wrong password, a missing database and a stopped server.

mod support;

use std::time::Duration;

use dagfs::config::DatabaseConfig;
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
