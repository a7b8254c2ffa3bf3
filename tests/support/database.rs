//! Private database servers for the tests: a PostgreSQL (Debian's `postgresql`) or a
//! MariaDB (Debian's `mariadb-server`) in a temporary directory, on a free port of
//! 127.0.0.1, with a user `dagfs` (password `dagfs-pw`) owning a database `airflow`.
//!
//! Each server runs under a shell that stops it when its stdin closes, so a test process
//! that dies (even by SIGKILL) takes its server with it; dropping the handle stops it too.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use super::postgres::psql_command;
use super::run;

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// PostgreSQL.
    Postgres,
    /// MariaDB (the MySQL dialect).
    MariaDb,
}

/// A running private database server.
pub struct Server {
    /// Which kind.
    pub kind: Kind,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
    stdin: Option<ChildStdin>,
}

/// The directory of Debian's PostgreSQL binaries (the newest installed version).
fn pg_bin() -> PathBuf {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: run scripts/install-deps")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    let version = versions.last().expect("no PostgreSQL version installed");
    PathBuf::from(format!("/usr/lib/postgresql/{version}/bin"))
}

impl Server {
    /// Starts a server of `kind` and waits until it accepts the test user.
    pub fn start(kind: Kind) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("dagfs-db-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let port = super::free_port();
        let data = dir.path().join("data");
        // PostgreSQL's fast shutdown is SIGINT (SIGTERM waits for clients); MariaDB's SIGTERM.
        let (owner, script, stop) = match kind {
            Kind::Postgres => {
                let bin = pg_bin();
                let pwfile = dir.path().join("pw");
                std::fs::write(&pwfile, "postgres-pw\n").unwrap();
                std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o644)).unwrap();
                run(Command::new("runuser")
                    .args(["-u", "postgres", "--"])
                    .args([
                        bin.join("initdb").to_str().unwrap(),
                        "-D",
                        data.to_str().unwrap(),
                        "-U",
                        "postgres",
                        "--auth-local=trust",
                        "--auth-host=scram-sha-256",
                        "--pwfile",
                        pwfile.to_str().unwrap(),
                        "-N",
                    ]));
                (
                    "postgres",
                    format!(
                        "{} -D {} -p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                        bin.join("postgres").display(),
                        data.display(),
                        dir.path().display()
                    ),
                    "INT",
                )
            }
            Kind::MariaDb => {
                // A private tmpdir: bootstrap's temporary tables under a shared /tmp were
                // removed behind its back once in CI ("Could not remove temporary table").
                let tmp = dir.path().join("tmp");
                std::fs::create_dir(&tmp).unwrap();
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o777)).unwrap();
                run(Command::new("mariadb-install-db").args([
                    "--no-defaults",
                    "--user=mysql",
                    "--auth-root-authentication-method=socket",
                    "--skip-test-db",
                    &format!("--datadir={}", data.display()),
                    &format!("--tmpdir={}", tmp.display()),
                ]));
                (
                    "mysql",
                    format!(
                        "mariadbd --no-defaults --user=mysql --datadir={} --port={port} \
                         --bind-address=127.0.0.1 --socket={}/mysql.sock --pid-file={}/mysql.pid \
                         --tmpdir={} --skip-log-bin --innodb-flush-log-at-trx-commit=0 \
                         --skip-name-resolve",
                        data.display(),
                        dir.path().display(),
                        dir.path().display(),
                        tmp.display()
                    ),
                    "TERM",
                )
            }
        };
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        // The server stops when this shell's stdin closes (the test ended, however).
        let mut child = Command::new("runuser")
            .args(["-u", owner, "--", "sh", "-c"])
            .arg(format!(
                "{script} & pid=$!; cat >/dev/null; kill -{stop} $pid; wait $pid"
            ))
            .stdin(Stdio::piped())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let server = Server {
            kind,
            port,
            dir,
            child,
            stdin,
        };
        server.wait_ready();
        match kind {
            Kind::Postgres => {
                server.admin("postgres", "CREATE ROLE dagfs LOGIN PASSWORD 'dagfs-pw'");
                server.admin("postgres", "CREATE DATABASE airflow OWNER dagfs");
            }
            Kind::MariaDb => {
                server.admin(
                    "mysql",
                    "CREATE DATABASE airflow; \
                     CREATE USER 'dagfs'@'%' IDENTIFIED BY 'dagfs-pw'; \
                     GRANT ALL ON airflow.* TO 'dagfs'@'%'",
                );
            }
        }
        server
    }

    fn wait_ready(&self) {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = match self.kind {
                Kind::Postgres => Command::new("runuser")
                    .args(["-u", "postgres", "--"])
                    .arg(pg_bin().join("pg_isready"))
                    .args(["-h", self.dir.path().to_str().unwrap()])
                    .args(["-p", &self.port.to_string()])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()),
                Kind::MariaDb => self.try_admin("mysql", "SELECT 1").is_ok(),
            };
            if ok {
                return;
            }
            assert!(
                Instant::now() < until,
                "the {:?} server did not start:\n{}",
                self.kind,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn try_admin(&self, database: &str, sql: &str) -> Result<String, String> {
        let mut command = match self.kind {
            Kind::Postgres => {
                let mut c = psql_command();
                c.args(["-h", self.dir.path().to_str().unwrap()]).args([
                    "-p",
                    &self.port.to_string(),
                    "-d",
                    database,
                    "-c",
                    sql,
                ]);
                c
            }
            Kind::MariaDb => {
                let mut c = Command::new("mariadb");
                c.arg("--no-defaults")
                    .arg(format!("--socket={}/mysql.sock", self.dir.path().display()))
                    .args(["-u", "root", "-N", "-B", database, "-e", sql]);
                c
            }
        };
        let out = command.output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs `sql` in `database` as the server's superuser; panics on error.
    pub fn admin(&self, database: &str, sql: &str) -> String {
        self.try_admin(database, sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The test user's SQLAlchemy URL of the `airflow` database, as in `airflow.cfg`.
    pub fn sqlalchemy_url(&self) -> String {
        match self.kind {
            Kind::Postgres => format!(
                "postgresql+psycopg2://dagfs:dagfs-pw@127.0.0.1:{}/airflow",
                self.port
            ),
            Kind::MariaDb => format!(
                "mysql+mysqldb://dagfs:dagfs-pw@127.0.0.1:{}/airflow",
                self.port
            ),
        }
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The server's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        let _ = self.child.wait();
    }
}
