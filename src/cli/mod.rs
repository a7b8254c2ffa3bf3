//! The `dagfs` command line: argument parsing, configuration, logging, dispatch.
//!
//! Errors end here: the library returns typed errors, this module turns them into one line
//! on stderr and an exit code (see [`ExitCode`]).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;
mod failover;
mod mount;
mod run;
mod status;
mod sync;

use crate::config::{Config, ConfigError, ConfigSource, LogFormat};

/// Exit code for bad usage, bad configuration, or a command this build does not have.
pub const EXIT_USAGE: u8 = 2;

/// Exit code for a command that ran and failed.
pub const EXIT_FAILURE: u8 = 1;

/// dagfs keeps Apache Airflow DAG folders highly available on HDFS.
///
/// Authoring hosts publish DAG folders as atomic, numbered generations (`push`, `sync`);
/// scheduler hosts serve the committed generation from a verified local cache (`mount`) and
/// run exactly one scheduler across hosts (`failover`).
#[derive(Debug, Parser)]
#[command(name = "dagfs", version, about, long_about, max_term_width = 100)]
pub struct Cli {
    /// Configuration file [default: /etc/dagfs/dagfs.toml, if it exists].
    #[arg(long, global = true, env = "DAGFS_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Override one configuration key, e.g. `--set store.timeout=10s` (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    overrides: Vec<String>,

    /// Log line format [default: text, or log.format from the config].
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,

    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,

    /// Less log output (-q warnings only, -qq errors only).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    quiet: u8,

    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Watch a DAG folder and publish every change as a new generation.
    Sync(sync::SyncArgs),
    /// Publish a DAG folder once as a new generation (if anything changed).
    Push(commands::PushArgs),
    /// Import a plain DAG folder (e.g. the NFS-gateway one on HDFS) as a new generation.
    Import(commands::ImportArgs),
    /// Serve the committed generation as a read-only FUSE mount.
    Mount(mount::MountArgs),
    /// Check a local folder, the store and mounts against each other by content hash.
    Verify(commands::VerifyArgs),
    /// Run exactly one Airflow scheduler across hosts, fenced and restarted.
    Failover(failover::FailoverArgs),
    /// Internal: the guard `dagfs failover` runs around each command.
    #[command(hide = true)]
    FailoverGuard(failover::GuardArgs),
    /// List the generations in a store, newest first.
    Log(commands::LogArgs),
    /// Show what changed between two generations.
    Diff(commands::DiffArgs),
    /// Publish an earlier generation's content as the new head.
    Rollback(commands::RollbackArgs),
    /// Delete old generations and the objects only they used.
    Gc(commands::GcArgs),
    /// Materialise one generation as a local directory (for Airflow workers).
    Checkout(mount::CheckoutArgs),
    /// Show what sync, mount and failover are doing on this host.
    Status(status::StatusArgs),
    /// Try dagfs on one machine: sync a DAG folder and mount it in one process.
    Run(run::RunArgs),
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::Sync(_) => "sync",
            Command::Push(_) => "push",
            Command::Import(_) => "import",
            Command::Mount(_) => "mount",
            Command::Verify(_) => "verify",
            Command::Failover(_) => "failover",
            Command::FailoverGuard(_) => "failover-guard",
            Command::Log(_) => "log",
            Command::Diff(_) => "diff",
            Command::Rollback(_) => "rollback",
            Command::Gc(_) => "gc",
            Command::Checkout(_) => "checkout",
            Command::Status(_) => "status",
            Command::Run(_) => "run",
        }
    }
}

/// Parses `args`, runs the command, and returns the process exit code.
pub fn main(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = e.print();
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    let config = match load_config(&cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("dagfs: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    init_logging(&config, &cli);
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("dagfs: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    runtime.block_on(run(cli.command, config))
}

async fn run(command: Command, config: Config) -> ExitCode {
    let name = command.name();
    if let Command::Verify(args) = command {
        // verify has its own exit codes: 0 identical, 1 differences, 2 could not check.
        return match commands::verify(args, &config).await {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("dagfs verify: {}", one_line(&e));
                ExitCode::from(EXIT_USAGE)
            }
        };
    }
    if let Command::FailoverGuard(args) = command {
        // Exit here: dropping the runtime would wait for the blocking thread that reads the
        // controller's pipe, and a guard whose unit is gone must exit at once (its exit is
        // how the controller learns it), pipe open or not.
        std::process::exit(i32::from(failover::guard(args).await));
    }
    if let Command::Status(args) = command {
        // status has its own exit codes: 0 all well, 1 something exited or reports an error.
        return match status::status(args) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("dagfs status: {}", one_line(&e));
                ExitCode::from(EXIT_USAGE)
            }
        };
    }
    let result = match command {
        Command::Sync(args) => sync::sync(args, &config).await,
        Command::Push(args) => commands::push(args, &config).await,
        Command::Import(args) => commands::import(args, &config).await,
        Command::Log(args) => commands::log(args, &config).await,
        Command::Diff(args) => commands::diff(args, &config).await,
        Command::Rollback(args) => commands::rollback(args, &config).await,
        Command::Gc(args) => commands::gc(args, &config).await,
        Command::Failover(args) => failover::failover(args, &config).await,
        Command::Mount(args) => mount::mount(args, &config).await,
        Command::Checkout(args) => mount::checkout(args, &config).await,
        Command::Run(args) => run::run(args, &config).await,
        Command::Verify(_) | Command::Status(_) | Command::FailoverGuard(_) => {
            unreachable!("handled above with their own exit codes")
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dagfs {name}: {}", one_line(&e));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Registers SIGTERM and SIGINT handlers now (from then on they mean "stop cleanly", never
/// "die") and returns a future that resolves when either arrives.
/// The metrics endpoint of a long-running command: the command's metrics registered (by
/// `register`) into a new registry, served with a [`Health`] on `flag` or else on the
/// configured address, if either is given. Keep the server alive as long as the command runs.
fn start_metrics<M>(
    flag: Option<std::net::SocketAddr>,
    configured: Option<&str>,
    register: impl FnOnce(&mut crate::metrics::Registry) -> M,
) -> anyhow::Result<(
    M,
    crate::metrics::Health,
    Option<crate::metrics::MetricsServer>,
)> {
    let addr = match (flag, configured) {
        (Some(addr), _) => Some(addr),
        // Validated with the configuration.
        (None, Some(addr)) => Some(addr.parse()?),
        (None, None) => None,
    };
    let mut registry = crate::metrics::Registry::default();
    let metrics = register(&mut registry);
    let health = crate::metrics::Health::default();
    let server = addr
        .map(|addr| crate::metrics::serve(addr, std::sync::Arc::new(registry), health.clone()))
        .transpose()?;
    Ok((metrics, health, server))
}

fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use anyhow::Context;
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
            _ = interrupt.recv() => tracing::info!("SIGINT: stopping"),
        }
    })
}

/// The error and its causes on one line, each cause once: library errors often repeat their
/// source's text in their own message already.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    if let Some(store) = error
        .chain()
        .find_map(|c| c.downcast_ref::<crate::store::StoreError>())
    {
        if store.kind().is_transient() {
            line.push_str(
                "; is the store reachable? check the URL, HADOOP_CONF_DIR and that the NameNode is up",
            );
        }
    }
    line.replace('\n', " ")
}

fn load_config(cli: &Cli) -> Result<Config, ConfigError> {
    let mut flags = Vec::new();
    if let Some(format) = cli.log_format {
        let value = match format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        flags.push(("log.format", toml::Value::String(value.into())));
    }
    Config::load(&ConfigSource {
        file: cli.config.clone(),
        overrides: cli.overrides.clone(),
        flags,
    })
}

/// Sets up `tracing` on stderr: the configured filter, moved by `-v`/`-q`.
fn init_logging(config: &Config, cli: &Cli) {
    let level = match (cli.verbose, cli.quiet) {
        (0, 0) => config.log.level.clone(),
        (1, _) => "debug".to_string(),
        (v, _) if v >= 2 => "trace".to_string(),
        (_, 1) => "warn".to_string(),
        _ => "error".to_string(),
    };
    // The level was validated with the config; a -v/-q level is always valid.
    let filter = tracing_subscriber::EnvFilter::try_new(&level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
