//! `dagfs sync`: runs the sync daemon in the foreground until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::commands::StoreArg;
use crate::config::Config;
use crate::publish::PublishOptions;
use crate::sync::{self, SyncMetrics, SyncOptions};

/// Arguments of `dagfs sync`.
#[derive(Debug, Args)]
#[command(
    after_help = "Runs in the foreground (systemd Type=notify: READY after the initial push, \
WATCHDOG pings when WatchdogSec= is set). SIGTERM/SIGINT finish or abandon the publish in \
flight and exit 0. `dagfs status` shows what it is doing; [sync] in the config tunes it."
)]
pub struct SyncArgs {
    /// The DAG folder to watch and publish.
    dir: PathBuf,
    #[command(flatten)]
    store: StoreArg,
    /// Publish the folder as this subtree of the store; other subtrees are left alone.
    #[arg(long, value_name = "PATH")]
    prefix: Option<String>,
    /// Message recorded with each generation [default: "dagfs sync of DIR"].
    #[arg(short, long)]
    message: Option<String>,
    /// Serve Prometheus metrics and /healthz on this address [default: sync.metrics].
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Do not update the plain mirror.
    #[arg(long, conflicts_with = "mirror")]
    no_mirror: bool,
    /// Update the plain mirror (start one if the store has none) [default: publish.mirror,
    /// else only if the store has a mirror].
    #[arg(long)]
    mirror: bool,
}

/// `dagfs sync`.
pub async fn sync(args: SyncArgs, config: &Config) -> Result<()> {
    // Handlers first: from here on SIGTERM means "stop cleanly", never "die".
    let shutdown = super::shutdown_signal()?;

    let dir = std::fs::canonicalize(&args.dir)
        .with_context(|| format!("cannot watch {}; check the path", args.dir.display()))?;
    if !dir.is_dir() {
        bail!(
            "cannot watch {}: not a directory; pass the DAG folder",
            args.dir.display()
        );
    }
    if let Some(prefix) = &args.prefix {
        crate::format::check_path(prefix.trim_matches('/'))
            .with_context(|| format!("invalid --prefix {prefix:?}"))?;
    }
    let store = args.store.open(config).await?;
    let (sync_metrics, health, server) = super::start_metrics(
        args.metrics,
        config.sync.metrics.as_deref(),
        SyncMetrics::register,
    )?;
    let message = args
        .message
        .unwrap_or_else(|| format!("dagfs sync of {}", dir.display()));
    let mut options = sync_options(dir, message, config);
    options.publish.prefix = args.prefix;
    let setting = super::commands::mirror_setting(config, args.mirror, args.no_mirror);
    options.mirror = crate::mirror::wanted(&*store, setting).await;
    options.publish.index_dir = crate::objects::index_dir(store.url());
    options.metrics_addr = server.as_ref().map(|s| s.addr().to_string());
    sync::run(store, options, sync_metrics, health, shutdown).await?;
    Ok(())
}

/// The daemon's options for folder `dir` from the configuration (`dagfs sync`, `dagfs run`).
pub(super) fn sync_options(dir: PathBuf, message: String, config: &Config) -> SyncOptions {
    let sync = &config.sync;
    SyncOptions {
        quiet_window: sync.quiet_window,
        max_delay: sync.max_delay,
        rescan_interval: sync.rescan_interval,
        backoff_initial: sync.backoff_initial,
        backoff_max: sync.backoff_max,
        shutdown_grace: sync.shutdown_grace,
        scan: config.scan.options(),
        publish: PublishOptions {
            message,
            concurrency: config.publish.concurrency,
            ..PublishOptions::default()
        },
        // Decided against the store by the caller (`mirror::wanted`).
        mirror: false,
        metrics_addr: None,
        dir,
    }
}
