//! `dagfs failover` and the guard process it runs around each command.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use super::commands::StoreArg;
use crate::config::{Config, CoordinatorKind, FailoverConfig, FailoverMode};
use crate::election::{
    Clock, Coordinator, DatabaseCoordinator, SqlCoordinator, SqlLeaseTable, StoreCoordinator,
};
use crate::failover::{self, FailoverMetrics, FailoverOptions};
use crate::metadb::{self, MetaDb, MetadbError, PoolSettings};
use crate::running::{DatabaseRecord, RunningRecord};
use crate::runtime::runtime_dir;
use crate::supervise;

/// Arguments of `dagfs failover`.
#[derive(Debug, Args)]
#[command(
    after_help = "Example (Airflow 3, on every scheduler host):\n  dagfs failover --store \
hdfs://prod-ns/airflow/dagfs --mount /srv/airflow/dags \\\n    --run 'airflow scheduler' --run \
'airflow dag-processor'\nTiming, restarts and health checks: the [failover] section of the \
config. State: failover-*.json in the runtime directory (DAGFS_RUNTIME_DIR)."
)]
pub struct FailoverArgs {
    #[command(flatten)]
    store: StoreArg,
    /// The dagfs mount the commands read their DAGs from: they start only when it serves the
    /// head generation.
    #[arg(long, value_name = "MOUNTPOINT")]
    mount: PathBuf,
    /// A command line to supervise (run by /bin/sh); repeat for several commands run as one
    /// unit, e.g. --run 'airflow scheduler' --run 'airflow dag-processor'.
    #[arg(long = "run", value_name = "COMMAND", required = true)]
    commands: Vec<String>,
    /// This candidate's id, unique among the hosts [default: the host name].
    #[arg(long, value_name = "NAME")]
    id: Option<String>,
    /// Run the commands on every host, gated on the mount and supervised, with no election
    /// (Airflow 2+ on PostgreSQL or MySQL) [default: failover.mode, all-active].
    #[arg(long, conflicts_with = "single_active")]
    all_active: bool,
    /// Run the commands on one elected host at a time [default: failover.mode].
    #[arg(long)]
    single_active: bool,
    /// Serve Prometheus metrics and /healthz on this address [default: failover.metrics].
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
}

/// Arguments of the hidden `dagfs failover-guard` (started by `dagfs failover` only).
#[derive(Debug, Args)]
pub struct GuardArgs {
    /// Time between SIGTERM and SIGKILL.
    #[arg(long, value_parser = humantime::parse_duration)]
    kill_grace: Duration,
    /// Initial lease deadline, nanoseconds of CLOCK_BOOTTIME.
    #[arg(long)]
    lease_until_ns: Option<u64>,
    /// The command line.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// `dagfs failover`: runs until SIGTERM or SIGINT, then hands over.
pub async fn failover(args: FailoverArgs, config: &Config) -> Result<()> {
    let shutdown = super::shutdown_signal()?;
    let store = args.store.open(config).await?;
    let (metrics, health, _server) = super::start_metrics(
        args.metrics,
        config.failover.metrics.as_deref(),
        FailoverMetrics::register,
    )?;
    let options = FailoverOptions {
        id: args.id.unwrap_or_else(crate::host::host_name),
        mountpoint: crate::mount::state::absolute_mountpoint(&args.mount),
        commands: args.commands,
        config: FailoverConfig {
            mode: match (args.all_active, args.single_active) {
                (true, _) => FailoverMode::AllActive,
                (_, true) => FailoverMode::SingleActive,
                _ => config.failover.mode,
            },
            ..config.failover.clone()
        },
        runtime_dir: runtime_dir(),
        guard_exe: std::env::current_exe().context("cannot find the dagfs executable")?,
        metrics,
        health,
    };
    let record = running_record(config, &options.config, store.url()).await?;
    let record = record.as_ref().map(|r| r as &dyn RunningRecord);
    let coordinator: Box<dyn Coordinator + '_> = match config.failover.coordinator {
        CoordinatorKind::Store => Box::new(StoreCoordinator::new(store.as_ref())),
        CoordinatorKind::Database => Box::new(database_coordinator(config, store.url()).await?),
    };
    failover::run(
        store.as_ref(),
        coordinator.as_ref(),
        record,
        options,
        shutdown,
    )
    .await?;
    Ok(())
}

/// The record of the generations the hosts run, in Airflow's metadata database. None, with
/// a warning, when no database is configured, or (single-active, where the previous leader's
/// heartbeat also tells the generation) when it cannot be used: units then start only while
/// the store's head can be read. All-active, a database that is configured but unusable is an
/// error: on SQLite it would run several schedulers on a database that supports one.
async fn running_record(
    config: &Config,
    failover: &FailoverConfig,
    store_url: &str,
) -> Result<Option<DatabaseRecord>> {
    let all_active = failover.mode == FailoverMode::AllActive;
    let without = |e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, "no record of the generations the hosts run: while the store's head cannot be read no unit starts here (see \"Which mode\" in OPERATIONS)");
    };
    let url = match metadb::resolve(&config.database) {
        Ok(url) => url,
        Err(e) if !all_active || matches!(e, MetadbError::NotConfigured { .. }) => {
            without(&e);
            return Ok(None);
        }
        Err(e) => {
            return Err(anyhow::anyhow!(
                "{e} (failover.mode = all-active runs a scheduler on every host and keeps them on one generation through Airflow's PostgreSQL or MySQL database; for one scheduler at a time set failover.mode = \"single-active\")"
            ))
        }
    };
    let settings = PoolSettings {
        max_connections: 2,
        connect_timeout: config.database.connect_timeout,
        // A renewal or gate check never waits on the database for longer than an interval.
        statement_timeout: failover.interval,
    };
    let opened = match MetaDb::connect(&url, &settings).await {
        Ok(db) => DatabaseRecord::open(db, store_url)
            .await
            .map_err(anyhow::Error::from),
        Err(e) => Err(e.into()),
    };
    match opened {
        Ok(record) => Ok(Some(record)),
        Err(e) if !all_active => {
            without(&e);
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The lease row of the failover group `group` (the store URL) in Airflow's metadata
/// database: connects at once, so a wrong setting stops the controller with one line.
async fn database_coordinator(config: &Config, group: &str) -> Result<SqlCoordinator> {
    let url = crate::metadb::resolve(&config.database)?;
    let settings = crate::metadb::PoolSettings {
        max_connections: 2,
        connect_timeout: config.database.connect_timeout,
        // A hung statement never outlives the election step that sent it.
        statement_timeout: config.failover.interval,
    };
    let db = crate::metadb::MetaDb::connect(&url, &settings).await?;
    tracing::info!(database = %url.redacted(), from = %url.setting, "failover lease in the metadata database");
    Ok(DatabaseCoordinator::new(
        SqlLeaseTable::open(db, group).await?,
    ))
}

/// `dagfs failover-guard`: the process between the controller and one command.
pub async fn guard(args: GuardArgs) -> u8 {
    let command = args.command.join(" ");
    let lease = args
        .lease_until_ns
        .map(|ns| Clock(Duration::from_nanos(ns)));
    let code = supervise::guard(&command, args.kill_grace, lease).await;
    code.clamp(0, 255) as u8
}
