//! `dagfs failover` and the guard process it runs around each command.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use crate::config::{Config, CoordinatorKind};
use crate::election::{
    Clock, Coordinator, DatabaseCoordinator, SqlCoordinator, SqlLeaseTable, StoreCoordinator,
};
use crate::failover::{self, FailoverMetrics, FailoverOptions};
use crate::metrics::{Health, Registry};
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
    /// Store URL [default: store.url from the config].
    #[arg(long, value_name = "URL")]
    store: Option<String>,
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
    /// No election: run the commands on every host (Airflow 2+ with several schedulers),
    /// still gated on the mount and supervised.
    #[arg(long)]
    all_active: bool,
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
    let store = super::commands::open_store(args.store.as_deref(), config, "--store").await?;
    let metrics_addr = match (args.metrics, &config.failover.metrics) {
        (Some(addr), _) => Some(addr),
        // Validated with the configuration.
        (None, Some(addr)) => Some(addr.parse()?),
        (None, None) => None,
    };
    let mut registry = Registry::default();
    let metrics = FailoverMetrics::register(&mut registry);
    let health = Health::default();
    let _server = metrics_addr
        .map(|addr| crate::metrics::serve(addr, Arc::new(registry), health.clone()))
        .transpose()?;
    let options = FailoverOptions {
        id: args.id.unwrap_or_else(|| {
            rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned()
        }),
        mountpoint: crate::mount::state::absolute_mountpoint(&args.mount),
        commands: args.commands,
        all_active: args.all_active,
        config: config.failover.clone(),
        runtime_dir: runtime_dir(),
        guard_exe: std::env::current_exe().context("cannot find the dagfs executable")?,
        metrics,
        health,
    };
    let coordinator: Box<dyn Coordinator + '_> = match config.failover.coordinator {
        CoordinatorKind::Store => Box::new(StoreCoordinator::new(store.as_ref())),
        CoordinatorKind::Database => Box::new(database_coordinator(config, store.url()).await?),
    };
    failover::run(store.as_ref(), coordinator.as_ref(), options, shutdown).await?;
    Ok(())
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
