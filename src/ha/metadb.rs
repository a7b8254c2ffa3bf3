//! Airflow's metadata database: where its connection is configured, and a small pool on it.
//!
//! The connection is looked for where an operator has already put it, first found wins:
//!
//! 1. `[database] url` in the dagfs config (`DAGFS_DATABASE_URL`, `--set database.url=...`);
//! 2. `AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`, then `AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD`
//!    (a shell command printing the URL), as Airflow reads them; `..._SECRET` (a secrets
//!    backend) is refused with a message naming `[database] url`;
//! 3. `sql_alchemy_conn` (then `sql_alchemy_conn_cmd`) in the `[database]` section of
//!    `airflow.cfg`: `[database] airflow_config`, else `$AIRFLOW_HOME/airflow.cfg`, else
//!    `~/airflow/airflow.cfg`.
//!
//! SQLAlchemy URLs (`postgresql+psycopg2://`, `mysql+mysqldb://`...) are translated into the
//! driver's (`postgres://`, `mysql://`), with their TLS and socket parameters renamed. Only
//! PostgreSQL and MySQL/MariaDB are accepted: the databases Airflow supports for several
//! schedulers. The driver is sqlx: one async API over both, without its query macros.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::Executor;

use crate::config::DatabaseConfig;

/// Why the metadata database cannot be used: one line naming the setting and the fix.
#[derive(Debug, thiserror::Error)]
pub enum MetadbError {
    /// Nothing names the database.
    #[error("no metadata database configured: set [database] url in the dagfs config (or DAGFS_DATABASE_URL), or Airflow's AIRFLOW__DATABASE__SQL_ALCHEMY_CONN, or sql_alchemy_conn in the [database] section of {airflow_cfg}")]
    NotConfigured {
        /// The `airflow.cfg` looked at.
        airflow_cfg: String,
    },
    /// The setting found cannot be used as it is.
    #[error("{setting}: {reason}; {fix}")]
    Setting {
        /// Where the connection came from (an environment variable, a file and key).
        setting: String,
        /// What is wrong.
        reason: String,
        /// What to do.
        fix: String,
    },
    /// The database did not accept a connection.
    #[error("metadata database {url} (from {setting}): {reason}; {fix}")]
    Connect {
        /// The URL without its password.
        url: String,
        /// Where it came from.
        setting: String,
        /// What went wrong.
        reason: String,
        /// What to do.
        fix: String,
    },
    /// A statement failed.
    #[error("metadata database {url}: {source}")]
    Query {
        /// The URL without its password.
        url: String,
        /// The driver's error.
        source: sqlx::Error,
    },
}

/// The database server's dialect of SQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL (12 and later, as Airflow requires for several schedulers).
    Postgres,
    /// MySQL 8 and later, or MariaDB.
    MySql,
}

/// A resolved connection: the driver's URL and where it came from.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    /// The server's dialect.
    pub dialect: Dialect,
    /// The driver URL (`postgres://` or `mysql://`); holds the password.
    url: String,
    /// The setting it was read from, for messages (`AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`,
    /// `sql_alchemy_conn in /home/airflow/airflow.cfg`...).
    pub setting: String,
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseUrl")
            .field("url", &self.redacted())
            .field("setting", &self.setting)
            .finish()
    }
}

impl DatabaseUrl {
    /// Translates `url` (SQLAlchemy's or the driver's form) read from `setting`.
    pub fn parse(url: &str, setting: &str) -> Result<DatabaseUrl, MetadbError> {
        let (dialect, url) = translate(url).map_err(|(reason, fix)| MetadbError::Setting {
            setting: setting.to_string(),
            reason,
            fix,
        })?;
        Ok(DatabaseUrl {
            dialect,
            url,
            setting: setting.to_string(),
        })
    }

    /// The driver URL, password included.
    pub fn driver_url(&self) -> &str {
        &self.url
    }

    /// The driver URL with the password replaced by `***`, for messages and logs.
    pub fn redacted(&self) -> String {
        redact(&self.url)
    }
}

fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "(unparseable URL)".to_string(),
    }
}

/// The SQLAlchemy dialects accepted, as (dialect name, driver dialect).
const DIALECTS: &[(&str, Dialect)] = &[
    ("postgresql", Dialect::Postgres),
    ("postgres", Dialect::Postgres),
    ("mysql", Dialect::MySql),
    ("mariadb", Dialect::MySql),
];

/// Query parameters the driver takes under another name, per dialect: (SQLAlchemy's or
/// libpq's, the driver's). Names already in the driver's form pass unchanged.
const PG_PARAMS: &[(&str, &str)] = &[
    ("sslmode", "sslmode"),
    ("sslrootcert", "sslrootcert"),
    ("sslcert", "sslcert"),
    ("sslkey", "sslkey"),
    ("host", "host"),
    ("hostaddr", "hostaddr"),
    ("port", "port"),
    ("dbname", "dbname"),
    ("user", "user"),
    ("password", "password"),
    ("application_name", "application_name"),
    ("options", "options"),
];
const MYSQL_PARAMS: &[(&str, &str)] = &[
    ("ssl_mode", "ssl-mode"),
    ("ssl-mode", "ssl-mode"),
    ("sslmode", "ssl-mode"),
    ("ssl_ca", "ssl-ca"),
    ("ssl-ca", "ssl-ca"),
    ("ssl_cert", "ssl-cert"),
    ("ssl-cert", "ssl-cert"),
    ("ssl_key", "ssl-key"),
    ("ssl-key", "ssl-key"),
    ("charset", "charset"),
    ("collation", "collation"),
    ("unix_socket", "socket"),
    ("socket", "socket"),
];

/// Parameters that tune the Python driver's connection and mean nothing to this one: dropped.
const IGNORED_PARAMS: &[&str] = &[
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "target_session_attrs",
    "client_encoding",
    "binary_prefix",
    "use_unicode",
    "client_flag",
    "local_infile",
    "autocommit",
    "read_timeout",
    "write_timeout",
];

/// Translates a SQLAlchemy URL (or a driver URL) into the driver's; the error is (what is
/// wrong, the fix).
pub fn translate(url: &str) -> Result<(Dialect, String), (String, String)> {
    let fix_url = || {
        "expected e.g. postgresql+psycopg2://user:password@host:5432/airflow or \
         mysql+mysqldb://user:password@host:3306/airflow (percent-encode @ : / in the password)"
            .to_string()
    };
    let url = url.trim();
    let authority = url.split_once("://").map_or("", |(_, rest)| {
        rest.split(['/', '?']).next().unwrap_or_default()
    });
    if authority.contains(',') {
        return Err((
            "several hosts in one URL are not supported".into(),
            "name one host (a proxy or the primary's address)".into(),
        ));
    }
    let mut parsed = url::Url::parse(url).map_err(|e| (format!("not a URL ({e})"), fix_url()))?;
    let scheme = parsed.scheme().to_ascii_lowercase();
    let name = scheme.split('+').next().unwrap_or_default();
    let Some(&(_, dialect)) = DIALECTS.iter().find(|(n, _)| *n == name) else {
        let why = if name == "sqlite" {
            format!("{name} is not supported: several schedulers (and dagfs failover) need PostgreSQL or MySQL/MariaDB, as Airflow 3 does")
        } else {
            format!("the {name} dialect is not supported (only PostgreSQL and MySQL/MariaDB)")
        };
        return Err((
            why,
            "point Airflow and dagfs at a PostgreSQL or MySQL database, or use failover.coordinator = \"store\"".into(),
        ));
    };
    if parsed.cannot_be_a_base() || !url.contains("://") {
        return Err(("not a URL with a host".into(), fix_url()));
    }
    let (driver_scheme, params) = match dialect {
        Dialect::Postgres => ("postgres", PG_PARAMS),
        Dialect::MySql => ("mysql", MYSQL_PARAMS),
    };
    let mut query = Vec::new();
    for (key, value) in parsed.query_pairs() {
        if let Some((_, to)) = params.iter().find(|(from, _)| *from == key) {
            query.push((to.to_string(), value.into_owned()));
        } else if key.starts_with("ssl") || key.starts_with("tls") {
            // A TLS setting silently dropped would weaken the connection: refuse.
            return Err((
                format!("the TLS parameter {key} is not supported"),
                "use sslmode/sslrootcert/sslcert/sslkey (PostgreSQL) or ssl_mode/ssl_ca/ssl_cert/ssl_key (MySQL), or set [database] url in the driver's form".into(),
            ));
        } else if IGNORED_PARAMS.contains(&&*key) {
            tracing::debug!(%key, "ignoring a SQLAlchemy connection parameter");
        } else {
            return Err((
                format!("unknown connection parameter {key}"),
                "remove it, or set [database] url in the dagfs config without it".into(),
            ));
        }
    }
    parsed
        .set_scheme(driver_scheme)
        .map_err(|()| ("cannot rewrite the scheme".to_string(), fix_url()))?;
    parsed.set_query(None);
    if !query.is_empty() {
        parsed.query_pairs_mut().extend_pairs(query);
    }
    let driver = parsed.to_string();
    // The driver must accept what was produced (a port out of range, a bad sslmode value).
    let checked = match dialect {
        Dialect::Postgres => driver.parse::<PgConnectOptions>().map(drop),
        Dialect::MySql => driver.parse::<MySqlConnectOptions>().map(drop),
    };
    checked.map_err(|e| (format!("the driver rejects it: {e}"), fix_url()))?;
    Ok((dialect, driver))
}

/// Resolves the metadata database's connection from the dagfs config, Airflow's
/// environment variables and `airflow.cfg`, in that order (see the module documentation).
pub fn resolve(config: &DatabaseConfig) -> Result<DatabaseUrl, MetadbError> {
    resolve_with(config, &|name| {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    })
}

/// [`resolve`] with the environment given (for tests).
pub fn resolve_with(
    config: &DatabaseConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<DatabaseUrl, MetadbError> {
    if let Some(url) = config.url.as_deref().filter(|u| !u.trim().is_empty()) {
        return DatabaseUrl::parse(url, "[database] url in the dagfs config");
    }
    const VAR: &str = "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN";
    if let Some(url) = env(VAR) {
        return DatabaseUrl::parse(&url, VAR);
    }
    let cmd_var = format!("{VAR}_CMD");
    if let Some(command) = env(&cmd_var) {
        let url = run_command(&command, &cmd_var)?;
        return DatabaseUrl::parse(&url, &format!("the output of {cmd_var}"));
    }
    let secret_var = format!("{VAR}_SECRET");
    if env(&secret_var).is_some() {
        return Err(secrets_backend(&secret_var));
    }
    let cfg = airflow_cfg(config, env);
    let shown = cfg.display().to_string();
    let text = match std::fs::read_to_string(&cfg) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(MetadbError::NotConfigured { airflow_cfg: shown })
        }
        Err(e) => {
            return Err(MetadbError::Setting {
                setting: shown,
                reason: format!("cannot read it: {e}"),
                fix: "make it readable by the dagfs user, or set [database] url".into(),
            })
        }
    };
    let section = ini_section(&text, "database");
    let value = |key: &str| section.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    if let Some(url) = value("sql_alchemy_conn") {
        return DatabaseUrl::parse(url, &format!("sql_alchemy_conn in {shown}"));
    }
    if let Some(command) = value("sql_alchemy_conn_cmd") {
        let setting = format!("sql_alchemy_conn_cmd in {shown}");
        let url = run_command(command, &setting)?;
        return DatabaseUrl::parse(&url, &format!("the output of {setting}"));
    }
    if value("sql_alchemy_conn_secret").is_some() {
        return Err(secrets_backend(&format!(
            "sql_alchemy_conn_secret in {shown}"
        )));
    }
    Err(MetadbError::NotConfigured { airflow_cfg: shown })
}

fn secrets_backend(setting: &str) -> MetadbError {
    MetadbError::Setting {
        setting: setting.to_string(),
        reason: "dagfs cannot read Airflow's secrets backends".into(),
        fix: "set [database] url in the dagfs config (or DAGFS_DATABASE_URL, e.g. from the same secret in the service's environment file)".into(),
    }
}

/// `[database] airflow_config`, else `$AIRFLOW_HOME/airflow.cfg`, else `~/airflow/airflow.cfg`.
fn airflow_cfg(config: &DatabaseConfig, env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(path) = &config.airflow_config {
        return path.clone();
    }
    let home = env("AIRFLOW_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join("airflow")))
        .unwrap_or_else(|| PathBuf::from("airflow"));
    home.join("airflow.cfg")
}

/// Runs a `_CMD` setting (`/bin/sh -c`) and returns its first line of output.
fn run_command(command: &str, setting: &str) -> Result<String, MetadbError> {
    let failed = |reason: String| MetadbError::Setting {
        setting: setting.to_string(),
        reason,
        fix: "fix the command, or set [database] url in the dagfs config".into(),
    };
    let out = std::process::Command::new("/bin/sh")
        .args(["-c", command])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| failed(format!("cannot run /bin/sh: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(failed(format!(
            "the command failed ({}): {}",
            out.status,
            stderr.lines().next().unwrap_or("").trim()
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
        .ok_or_else(|| failed("the command printed nothing".into()))
}

/// The `key = value` (or `key: value`) pairs of `[section]` in an INI file as Python's
/// configparser reads `airflow.cfg`: keys lower-cased, `#`/`;` comment lines skipped,
/// indented lines continuing a value, `%%` standing for `%`.
fn ini_section(text: &str, section: &str) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if let Some(name) = trimmed.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            inside = name.trim() == section;
            continue;
        }
        if !inside {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = pairs.last_mut() {
                value.push('\n');
                value.push_str(trimmed);
            }
            continue;
        }
        let split = trimmed.find(['=', ':']);
        if let Some(at) = split {
            let key = trimmed[..at].trim().to_ascii_lowercase();
            let value = trimmed[at + 1..].trim().replace("%%", "%");
            pairs.push((key, value));
        }
    }
    pairs
}

/// How a pool connects and how long a statement may run.
#[derive(Clone, Copy, Debug)]
pub struct PoolSettings {
    /// Connections kept at most.
    pub max_connections: u32,
    /// Upper bound on opening a connection (and on waiting for a free one).
    pub connect_timeout: Duration,
    /// The server aborts any statement (and lock wait) running longer (PostgreSQL
    /// `statement_timeout` and `lock_timeout`; MySQL `max_execution_time` or MariaDB
    /// `max_statement_time`, and `innodb_lock_wait_timeout` rounded up to whole seconds).
    pub statement_timeout: Duration,
}

/// A pool on the metadata database, of either dialect.
#[derive(Clone, Debug)]
pub enum Pool {
    /// On PostgreSQL.
    Postgres(PgPool),
    /// On MySQL or MariaDB.
    MySql(MySqlPool),
}

/// Runs one statement on a [`Pool`] of either dialect: `on_pool!(pool, |p, sql = (PG, MY)|
/// body)` evaluates `body` with `p` the dialect's pool and `sql` its text of the statement;
/// `on_pool!(pool, |p| body)` is for a text both dialects share.
///
/// A macro rather than a generic function: sqlx's query types differ per driver, and the
/// bounds a generic binder needs (`Encode + Type` for every bound value, per driver) would be
/// longer than the two match arms it replaces.
macro_rules! on_pool {
    ($pool:expr, |$p:ident| $body:expr) => {
        match $pool {
            $crate::metadb::Pool::Postgres($p) => $body,
            $crate::metadb::Pool::MySql($p) => $body,
        }
    };
    ($pool:expr, |$p:ident, $sql:ident = ($pg:expr, $my:expr)| $body:expr) => {
        match $pool {
            $crate::metadb::Pool::Postgres($p) => {
                let $sql = $pg;
                $body
            }
            $crate::metadb::Pool::MySql($p) => {
                let $sql = $my;
                $body
            }
        }
    };
}
pub(crate) use on_pool;

/// An open metadata database: its pool and where it came from.
#[derive(Clone, Debug)]
pub struct MetaDb {
    /// The pool.
    pub pool: Pool,
    /// The resolved connection.
    pub url: DatabaseUrl,
}

impl MetaDb {
    /// Opens a pool of at most `settings.max_connections` and makes one connection, so a
    /// database that is unreachable or refuses the credentials is reported at once.
    pub async fn connect(
        url: &DatabaseUrl,
        settings: &PoolSettings,
    ) -> Result<MetaDb, MetadbError> {
        let ms = settings.statement_timeout.as_millis().max(1) as u64;
        let pool = match url.dialect {
            Dialect::Postgres => {
                let options: PgConnectOptions =
                    url.url.parse().map_err(|e| connect_error(url, e))?;
                let options = options.options([
                    ("statement_timeout", ms.to_string()),
                    ("lock_timeout", ms.to_string()),
                    ("idle_in_transaction_session_timeout", ms.to_string()),
                ]);
                let pool = PgPoolOptions::new()
                    .max_connections(settings.max_connections)
                    .min_connections(0)
                    .acquire_timeout(settings.connect_timeout)
                    .connect_with(options);
                Pool::Postgres(bounded(url, settings.connect_timeout, pool).await?)
            }
            Dialect::MySql => {
                let options: MySqlConnectOptions =
                    url.url.parse().map_err(|e| connect_error(url, e))?;
                let pool = MySqlPoolOptions::new()
                    .max_connections(settings.max_connections)
                    .min_connections(0)
                    .acquire_timeout(settings.connect_timeout)
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            let secs = ms.div_ceil(1000);
                            conn.execute(&*format!(
                                "SET SESSION innodb_lock_wait_timeout = {secs}"
                            ))
                            .await?;
                            // MariaDB names it max_statement_time (seconds), MySQL
                            // max_execution_time (milliseconds, SELECT only).
                            let mariadb = conn
                                .execute(&*format!(
                                    "SET SESSION max_statement_time = {}",
                                    ms as f64 / 1000.0
                                ))
                                .await;
                            if mariadb.is_err() {
                                conn.execute(&*format!("SET SESSION max_execution_time = {ms}"))
                                    .await?;
                            }
                            Ok(())
                        })
                    })
                    .connect_with(options);
                Pool::MySql(bounded(url, settings.connect_timeout, pool).await?)
            }
        };
        Ok(MetaDb {
            pool,
            url: url.clone(),
        })
    }

    /// A statement's failure, as an error naming the database.
    pub fn query_error(&self, source: sqlx::Error) -> MetadbError {
        MetadbError::Query {
            url: self.url.redacted(),
            source,
        }
    }
}

async fn bounded<P>(
    url: &DatabaseUrl,
    bound: Duration,
    connect: impl std::future::Future<Output = Result<P, sqlx::Error>>,
) -> Result<P, MetadbError> {
    match tokio::time::timeout(bound, connect).await {
        Ok(result) => result.map_err(|e| connect_error(url, e)),
        Err(_) => Err(connect_error(url, sqlx::Error::PoolTimedOut)),
    }
}

/// A database error's code: MySQL's error number (`1062`), else the SQLSTATE (`23505`).
pub fn error_code(e: &sqlx::Error) -> Option<String> {
    let sqlx::Error::Database(db) = e else {
        return None;
    };
    if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return Some(my.number().to_string());
    }
    db.code().map(|c| c.into_owned())
}

/// Classifies a failure to connect into one line with a fix.
fn connect_error(url: &DatabaseUrl, e: sqlx::Error) -> MetadbError {
    let code = error_code(&e);
    let (reason, fix) = match (&e, code.as_deref()) {
        // PostgreSQL invalid_password / invalid_authorization_specification; MySQL 1045.
        (_, Some("28P01" | "28000" | "1045")) => (
            format!("the server refused the user or password ({e})"),
            "check the user and password in the URL (percent-encoded) and the server's pg_hba.conf or grants".to_string(),
        ),
        // PostgreSQL invalid_catalog_name; MySQL 1049 unknown database, 1044 no grant on
        // it (what MySQL answers for a missing database the user could not see anyway).
        (_, Some("3D000" | "1049" | "1044")) => (
            format!("the database does not exist, or the user has no access to it ({e})"),
            "check the database name at the end of the URL, and the user's grants".to_string(),
        ),
        (sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut, _) => (
            format!("unreachable ({e})"),
            "check the host and port in the URL, that the database runs, and the network between"
                .to_string(),
        ),
        (sqlx::Error::Tls(_), _) => (
            format!("TLS failed ({e})"),
            "check sslmode/ssl_mode and the CA certificate in the URL".to_string(),
        ),
        _ => (
            e.to_string(),
            "check the URL and the database server's log".to_string(),
        ),
    };
    MetadbError::Connect {
        url: url.redacted(),
        setting: url.setting.clone(),
        reason,
        fix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str) -> (Dialect, String) {
        translate(url).unwrap_or_else(|e| panic!("{url}: {e:?}"))
    }

    #[test]
    fn sqlalchemy_urls_become_driver_urls() {
        assert_eq!(
            ok("postgresql+psycopg2://airflow:s%40cret@db.example:5432/airflow"),
            (
                Dialect::Postgres,
                "postgres://airflow:s%40cret@db.example:5432/airflow".into()
            )
        );
        assert_eq!(
            ok("postgresql://a:b@h/airflow?sslmode=verify-full&sslrootcert=/etc/ca.pem"),
            (
                Dialect::Postgres,
                "postgres://a:b@h/airflow?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem".into()
            )
        );
        assert_eq!(
            ok("postgresql+psycopg://a@h/db?connect_timeout=10&options=-csearch_path%3Dairflow").1,
            "postgres://a@h/db?options=-csearch_path%3Dairflow"
        );
        assert_eq!(
            ok("mysql+mysqldb://airflow:pw@db:3306/airflow?charset=utf8mb4&ssl_mode=REQUIRED&ssl_ca=/ca.pem"),
            (
                Dialect::MySql,
                "mysql://airflow:pw@db:3306/airflow?charset=utf8mb4&ssl-mode=REQUIRED&ssl-ca=%2Fca.pem".into()
            )
        );
        assert_eq!(
            ok("mysql+pymysql://u:p@h/airflow").1,
            "mysql://u:p@h/airflow"
        );
        assert_eq!(ok("mariadb+mysqldb://u:p@h/a").0, Dialect::MySql);
        // The driver's own form passes unchanged.
        assert_eq!(ok("postgres://u:p@h:5433/a").1, "postgres://u:p@h:5433/a");
        assert_eq!(
            ok("postgresql:///airflow?host=/var/run/postgresql&user=u").1,
            "postgres:///airflow?host=%2Fvar%2Frun%2Fpostgresql&user=u"
        );
    }

    #[test]
    fn bad_urls_say_what_and_how_to_fix() {
        for (url, needle) in [
            (
                "sqlite:////home/airflow/airflow.db",
                "sqlite is not supported",
            ),
            ("mssql+pyodbc://u:p@h/db", "mssql dialect is not supported"),
            ("not a url", "not a URL"),
            ("postgresql://u:p@h:99999/db", "not a URL"),
            (
                "postgresql://u:p@h/db?sslmode=sometimes",
                "the driver rejects it",
            ),
            ("postgresql://u:p@h/db?sslcrl=/x", "TLS parameter sslcrl"),
            (
                "mysql+pymysql://u:p@h/db?ssl_verify_cert=true",
                "TLS parameter ssl_verify_cert",
            ),
            (
                "postgresql://u:p@h/db?frobnicate=1",
                "unknown connection parameter frobnicate",
            ),
            ("postgresql://u:p@h1:5432,h2:5432/db", "several hosts"),
        ] {
            let err = DatabaseUrl::parse(url, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN").unwrap_err();
            let line = err.to_string();
            assert!(line.contains(needle), "{url}: {line}");
            assert!(
                line.starts_with("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN: "),
                "{line}"
            );
            assert!(!line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        let url = DatabaseUrl::parse("postgresql://airflow:hunter2@h/db", "x").unwrap();
        assert_eq!(url.redacted(), "postgres://airflow:***@h/db");
        assert!(!format!("{url:?}").contains("hunter2"));
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn resolution_order_is_dagfs_config_then_airflow_env_then_airflow_cfg() {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(
            home.path().join("airflow.cfg"),
            "[core]\nsql_alchemy_conn = mysql://wrong/section\n\n[database]\n# a comment\n\
             SQL_ALCHEMY_CONN = postgresql+psycopg2://cfg:p%%40ss@cfghost/airflow\n",
        )
        .unwrap();
        let home_str = home.path().to_str().unwrap();
        let mut config = DatabaseConfig::default();
        let env = env_of(&[
            ("AIRFLOW_HOME", home_str),
            (
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
                "postgresql://env@envhost/a",
            ),
        ]);
        let from_cfg = resolve_with(&config, &env_of(&[("AIRFLOW_HOME", home_str)])).unwrap();
        assert_eq!(
            from_cfg.driver_url(),
            "postgres://cfg:p%40ss@cfghost/airflow"
        );
        assert!(
            from_cfg.setting.starts_with("sql_alchemy_conn in "),
            "{from_cfg:?}"
        );
        let from_env = resolve_with(&config, &env).unwrap();
        assert_eq!(from_env.driver_url(), "postgres://env@envhost/a");
        assert_eq!(from_env.setting, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN");
        config.url = Some("mysql+pymysql://dagfs@own/airflow".into());
        assert_eq!(
            resolve_with(&config, &env).unwrap().driver_url(),
            "mysql://dagfs@own/airflow"
        );
    }

    #[test]
    fn command_variants_run_and_secrets_are_refused() {
        let config = DatabaseConfig::default();
        let env = env_of(&[(
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD",
            "echo; echo postgresql://cmd@h/a",
        )]);
        assert_eq!(
            resolve_with(&config, &env).unwrap().driver_url(),
            "postgres://cmd@h/a"
        );
        let env = env_of(&[("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD", "exit 3")]);
        let err = resolve_with(&config, &env).unwrap_err().to_string();
        assert!(err.contains("the command failed"), "{err}");
        let env = env_of(&[("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_SECRET", "db/conn")]);
        let err = resolve_with(&config, &env).unwrap_err().to_string();
        assert!(
            err.contains("secrets backends") && err.contains("[database] url"),
            "{err}"
        );
        let home = tempfile::tempdir().unwrap();
        let env = env_of(&[("AIRFLOW_HOME", home.path().to_str().unwrap())]);
        let err = resolve_with(&config, &env).unwrap_err().to_string();
        assert!(err.starts_with("no metadata database configured"), "{err}");
        std::fs::write(
            home.path().join("airflow.cfg"),
            "[database]\nsql_alchemy_conn_cmd = echo mysql://c@h/a\n",
        )
        .unwrap();
        assert_eq!(
            resolve_with(&config, &env).unwrap().driver_url(),
            "mysql://c@h/a"
        );
    }

    #[tokio::test]
    async fn an_unreachable_database_is_one_line_naming_the_setting() {
        // A port nothing listens on: bind one, note it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = DatabaseUrl::parse(
            &format!("postgresql://u:secret@127.0.0.1:{port}/airflow"),
            "[database] url in the dagfs config",
        )
        .unwrap();
        let settings = PoolSettings {
            max_connections: 1,
            connect_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(1),
        };
        let err = MetaDb::connect(&url, &settings)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("unreachable"), "{err}");
        assert!(err.contains("[database] url in the dagfs config"), "{err}");
        assert!(!err.contains("secret") && !err.contains('\n'), "{err}");
    }
}
