//! `dagfs mount`: the command line of the FUSE mount.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use super::commands::open_store;
use crate::config::Config;
use crate::mount::{self, state::StateDir, MountOptions};

/// Arguments of `dagfs mount`.
#[derive(Debug, Args)]
#[command(
    after_help = "Runs in the foreground until SIGTERM/SIGINT (it then unmounts) or until \
someone unmounts it with `fusermount3 -u MOUNTPOINT`. Its state (generation served, head, last \
error) is in a file `dagfs status` and `dagfs failover` read."
)]
pub struct MountArgs {
    /// Store URL (hdfs://..., viewfs://..., file:///... or a path).
    url: String,
    /// An existing empty directory to mount on.
    mountpoint: PathBuf,
    /// Local verified cache [default: mount.cache_dir, else one per store under
    /// /var/cache/dagfs (root) or ~/.cache/dagfs].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Serve this generation and do not follow the head.
    #[arg(long, value_name = "G")]
    pin: Option<u64>,
    /// How often to ask the store for a new head [default: mount.poll, 1s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    poll: Option<Duration>,
    /// Let other users (e.g. the airflow user) read the mount; non-root mounts need
    /// `user_allow_other` in /etc/fuse.conf.
    #[arg(long)]
    allow_other: bool,
}

/// Resolves when SIGTERM or SIGINT arrives.
pub(super) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops this");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down"),
    }
}

/// `dagfs mount URL MOUNTPOINT`.
pub async fn mount(args: MountArgs, config: &Config) -> Result<()> {
    let store: Arc<dyn crate::store::Store> =
        Arc::from(open_store(Some(&args.url), config, "URL").await?);
    let mut mount_config = config.mount.clone();
    if let Some(poll) = args.poll {
        anyhow::ensure!(
            !poll.is_zero(),
            "--poll 0s: expected a duration greater than zero, e.g. 1s"
        );
        mount_config.poll = poll;
    }
    let cache_dir = args
        .cache_dir
        .or_else(|| config.mount.cache_dir.clone())
        .unwrap_or_else(|| mount::default_cache_dir(store.url()));
    let options = MountOptions {
        mountpoint: args.mountpoint,
        cache_dir,
        pin: args.pin,
        allow_other: args.allow_other,
        config: mount_config,
        state_dir: StateDir::default(),
    };
    mount::run(store, options, shutdown_signal()).await?;
    Ok(())
}
