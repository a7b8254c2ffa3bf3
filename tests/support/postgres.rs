//! A PostgreSQL database of its own for a test (Debian's `postgresql`, started if needed):
//! the metadata database Airflow schedulers share.

use std::process::Command;

use super::{run, run_stdout};

/// `psql` as the postgres superuser, stopping at the first error, printing bare values.
pub fn psql_command() -> Command {
    let mut command = Command::new("runuser");
    command.args([
        "-u",
        "postgres",
        "--",
        "psql",
        "-v",
        "ON_ERROR_STOP=1",
        "-tA",
    ]);
    command
}

/// Runs `sql` in `database` on the local cluster as the postgres superuser; its output.
pub fn psql(database: &str, sql: &str) -> String {
    run_stdout(psql_command().args(["-d", database, "-c", sql]))
        .trim()
        .to_string()
}

/// A database of its own on the local PostgreSQL cluster (started if it is not running),
/// dropped on drop.
pub struct Database {
    /// The database's name.
    pub name: String,
}

impl Database {
    /// A new database named `prefix_<pid>_<n>`.
    pub fn create(prefix: &str) -> Database {
        let clusters = run(Command::new("pg_lsclusters").arg("-h"));
        let line = String::from_utf8(clusters.stdout).unwrap();
        let mut words = line.split_whitespace();
        let (version, cluster) = (words.next().unwrap(), words.next().unwrap());
        if !line.contains("online") {
            run(Command::new("pg_ctlcluster").args([version, cluster, "start"]));
        }
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("{prefix}_{}_{n}", std::process::id());
        psql(
            "postgres",
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'dagfs_test') \
             THEN CREATE ROLE dagfs_test LOGIN PASSWORD 'dagfs_test'; END IF; END $$",
        );
        psql(
            "postgres",
            &format!("CREATE DATABASE {name} OWNER dagfs_test"),
        );
        Database { name }
    }

    /// Its SQLAlchemy URL.
    pub fn url(&self) -> String {
        format!(
            "postgresql+psycopg2://dagfs_test:dagfs_test@127.0.0.1:5432/{}",
            self.name
        )
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--", "psql", "-qc"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .status();
    }
}
