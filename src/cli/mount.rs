//! `dagfs mount` and `dagfs checkout`: the commands that serve generations on scheduler and
//! worker hosts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use super::commands::{open_store, StoreArg};
use crate::config::Config;
use crate::mount::{self, metrics::MountMetrics, state::StateDir, MountOptions};

/// Arguments of `dagfs mount`.
#[derive(Debug, Args)]
#[command(
    after_help = "Runs in the foreground until SIGTERM/SIGINT (it then unmounts) or until \
someone unmounts it with `fusermount3 -u MOUNTPOINT`. Its state (generation served, head, last \
error) is in a file `dagfs status` and `dagfs failover` read."
)]
#[command(
    override_usage = "dagfs mount [OPTIONS] [--store URL] MOUNTPOINT\n       \
dagfs mount [OPTIONS] URL MOUNTPOINT    (the older spelling)"
)]
pub struct MountArgs {
    /// An existing empty directory to mount on; the older spelling puts the store URL
    /// before it.
    #[arg(value_name = "MOUNTPOINT", num_args = 1..=2, required = true)]
    targets: Vec<String>,
    /// Store URL (hdfs://..., viewfs://..., file:///... or a path) [default: store.url from
    /// the config].
    #[arg(long, value_name = "URL")]
    store: Option<String>,
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
    /// Serve Prometheus metrics and /healthz on this address [default: mount.metrics].
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// `fuse`, or `link`: no FUSE and no privileges, MOUNTPOINT/current is a symlink to
    /// MOUNTPOINT/.dagfs/generations/N, swapped atomically [default: mount.mode, fuse].
    #[arg(long, value_name = "MODE")]
    mode: Option<crate::config::MountMode>,
}

/// `dagfs mount [--store URL] MOUNTPOINT` (or `dagfs mount URL MOUNTPOINT`).
pub async fn mount(args: MountArgs, config: &Config) -> Result<()> {
    let (url, mountpoint) = match (args.targets.as_slice(), &args.store) {
        ([url, _], Some(store)) => anyhow::bail!(
            "two store URLs given ({url} and --store {store}); pass only --store URL MOUNTPOINT"
        ),
        ([url, mountpoint], None) => (Some(url.as_str()), mountpoint),
        ([mountpoint], store) => (store.as_deref(), mountpoint),
        _ => unreachable!("clap takes one or two"),
    };
    let mountpoint = PathBuf::from(mountpoint);
    let store: Arc<dyn crate::store::Store> = Arc::from(open_store(url, config, "--store").await?);
    let mut mount_config = config.mount.clone();
    if let Some(mode) = args.mode {
        mount_config.mode = mode;
    }
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
    let (metrics, health, _server) = super::start_metrics(
        args.metrics,
        config.mount.metrics.as_deref(),
        MountMetrics::register,
    )?;
    let options = MountOptions {
        mountpoint,
        cache_dir,
        pin: args.pin,
        allow_other: args.allow_other,
        config: mount_config,
        state_dir: StateDir::default(),
        metrics,
        health,
    };
    mount::run(store, options, super::shutdown_signal()?).await?;
    Ok(())
}

/// Arguments of `dagfs checkout`.
#[derive(Debug, Args)]
#[command(
    after_help = "Builds the tree beside DIR, verifies it against the generation's tree \
id, then renames it into place: DIR is either absent or complete. Running it again, or \
concurrently, for the same generation and DIR is safe. Prints the generation and tree id."
)]
pub struct CheckoutArgs {
    #[command(flatten)]
    store: StoreArg,
    /// The generation [default: the head].
    #[arg(long, value_name = "G")]
    generation: Option<u64>,
    /// The directory to create.
    dir: PathBuf,
    /// Verified object cache, shared with mounts of the same store [default: as `dagfs mount`].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Afterwards, keep only the newest N cached generations up to this one (and newer
    /// ones) in the cache, deleting the objects only others need: bounds the disk of a
    /// worker's own cache. Never use it on a cache a mount serves from.
    #[arg(long, value_name = "N")]
    keep_cached: Option<usize>,
}

/// `dagfs checkout --generation N DIR`.
pub async fn checkout(args: CheckoutArgs, config: &Config) -> Result<()> {
    let store = args.store.open(config).await?;
    let cache_dir = args
        .cache_dir
        .or_else(|| config.mount.cache_dir.clone())
        .unwrap_or_else(|| mount::default_cache_dir(store.url()));
    let cache = crate::cache::Cache::open(&cache_dir)?;
    let (made, created) = crate::checkout::checkout(
        store.as_ref(),
        &cache,
        &args.dir,
        args.generation,
        config.mount.concurrency,
    )
    .await?;
    if let Some(keep) = args.keep_cached {
        cache.evict(made.generation, keep)?;
    }
    if args.json {
        let mut value = serde_json::to_value(&made)?;
        value["path"] = serde_json::Value::from(args.dir.display().to_string());
        value["created"] = serde_json::Value::from(created);
        println!("{value}");
    } else {
        println!(
            "{} generation {} (tree {}) at {}: {} files",
            if created {
                "checked out"
            } else {
                "already checked out:"
            },
            made.generation,
            &made.tree_id[..12],
            args.dir.display(),
            made.files
        );
    }
    Ok(())
}
