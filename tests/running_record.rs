//! The record of the generations the hosts run (`running::DatabaseRecord`) on a real
//! PostgreSQL (Debian's `postgresql`): hosts creating its table at once, upserts, the floor,
//! and stores kept apart.

mod support;

use dagfs::metadb::{DatabaseUrl, MetaDb, PoolSettings};
use dagfs::running::{DatabaseRecord, Floor, RunningRecord};
use std::time::Duration;

use support::postgres::Database;

async fn open(db: &Database, store: &str) -> DatabaseRecord {
    let url = DatabaseUrl::parse(&db.url(), "test").unwrap();
    let settings = PoolSettings {
        max_connections: 2,
        connect_timeout: Duration::from_secs(10),
        statement_timeout: Duration::from_secs(5),
    };
    let meta = MetaDb::connect(&url, &settings).await.unwrap();
    DatabaseRecord::open(meta, store).await.unwrap()
}

#[tokio::test]
async fn hosts_record_their_generations_and_read_the_newest() {
    let db = Database::create("record");
    // Eight hosts start at once on a database without the table: every one opens it.
    let opens = (0..8).map(|_| open(&db, "hdfs://ns/dags"));
    let records = futures::future::join_all(opens).await;
    let (a, b) = (&records[0], &records[1]);
    assert_eq!(a.floor().await.unwrap(), None);
    a.record("a", 3, "t3").await.unwrap();
    b.record("b", 2, "t2").await.unwrap();
    let floor = |generation, candidate: &str| {
        Some(Floor {
            generation,
            candidate: candidate.into(),
        })
    };
    assert_eq!(b.floor().await.unwrap(), floor(3, "a"));
    b.record("b", 4, "t4").await.unwrap();
    assert_eq!(a.floor().await.unwrap(), floor(4, "b"));
    // Another store's hosts are not counted.
    let other = open(&db, "hdfs://ns/other").await;
    assert_eq!(other.floor().await.unwrap(), None);
    other.record("a", 9, "t9").await.unwrap();
    assert_eq!(a.floor().await.unwrap(), floor(4, "b"));
}
